/*
 * engine_cpu.c - the CPU backend: RWKV-7 forward, loss, and backward to every
 * layer's initial WKV state (SPEC section 4), fp32, matrix products through
 * OpenBLAS and element-wise loops through OpenMP (kernels/cpu/).
 *
 * Memory plan. Everything the passes touch lives in one allocation carved by
 * s_plan's table of {name, elements}: per-layer activations that the backward
 * pass needs (residual stream, LayerNorm statistics, r, w, k, v, a, gates,
 * WKV output and state checkpoints, the FFN pre-activation), then scratch
 * shared by all layers. Backward scratch aliases forward scratch that is dead
 * by then (the lerp outputs become their gradients, the LoRA hidden becomes
 * its gradient). engine_peak_mem_bytes reports weights + this plan.
 *
 * Backward, per layer from the top (input gradients only; weights frozen):
 *   ffn:  dx += LN2'(CMix'(dx))
 *   att:  d(o) = dx Wo;  GroupNorm/bonus/gate' -> dy, dg, bonus parts of dr dk dv
 *         WKV7' -> dr dw dk dv da db and dS0 += (the adjoint recursion)
 *         time-mix' -> LoRA' and linear' -> the six lerp inputs -> token
 *         shift' -> LN1' -> dx +=
 * Layer 0 stops after its WKV backward: nothing below it (its v, which is
 * v_first, included) depends on any S0, so the later layers' share of
 * d v_first is summed (dvfirst) but never needs to go further.
 *
 * Optional methods (SPEC section 4): with teacher logits and alpha < 1 the
 * observer head (kernels/cpu/observer.c) replaces head_ce; a kernel-expanded
 * state adds rbf_forward_cpu's term into y right after the WKV forward (so
 * GroupNorm sees it) and rbf_backward_cpu's shares into dr, dw and dU0 right
 * after the WKV backward (tmp is its scratch there).
 */
#include "engine/engine_cpu.h"

#include "common/st_err.h"
#include "common/st_time.h"
#include "kernels/cpu/channelmix.h"
#include "kernels/cpu/dbp.h"
#include "kernels/cpu/groupnorm.h"
#include "kernels/cpu/head.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/observer.h"
#include "kernels/cpu/observer_topk.h"
#include "kernels/cpu/rbf.h"
#include "kernels/cpu/timemix.h"
#include "kernels/cpu/tokenshift.h"
#include "kernels/cpu/wkv7.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define CKPT_EVERY 16
#define HEAD_CHUNK_FLOATS (4u << 20) /* 16 MB of logits per head chunk */

/* Thread-count probing (opts->threads == 0 and no OMP_NUM_THREADS): on a
 * quiet machine all cores win, but on a shared one (CI, a laptop, the
 * development box with other builds running) OpenMP threads spin at every
 * barrier waiting for a sibling that the OS has descheduled, and one thread
 * was measured 3x faster than two. So the engine times itself: every
 * PROBE_EVERY training runs it times two runs with all threads and two with
 * a single thread, alternating (per token, wall clock), and uses the faster
 * until the next probe. The very first run is never timed (page faults on
 * fresh memory). */
#define PROBE_EVERY 64

struct engine_cpu {
    const rwkv_model_t *m;
    int maxB, maxT, nck, head_chunk;
    int auto_threads, max_threads, threads_now; /* see PROBE_EVERY */
    int64_t runs, first_probe;                  /* no probe before run first_probe */
    double probe_s_per_tok[2];                  /* summed: [0] all threads, [1] one */
    float *mem;
    size_t mem_floats;
    /* per layer, [L] blocks of the sizes in s_plan */
    float *x_res, *x_mid;                          /* (L+1, R, C), (L, R, C) */
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd; /* (L, R) */
    float *r, *w, *wl, *kraw, *kf, *kk, *a, *v, *vraw, *vs, *g, *y; /* (L, R, C) */
    float *whid, *ghid;                            /* (L, R, Dw), (L, R, Dg) */
    float *gn_mean, *gn_rstd;                      /* (L, R, H) */
    float *kpre;                                   /* (L, R, F) */
    float *ckpt;                                   /* (L, B, nck, H, N, N) */
    /* scratch */
    float *h, *lerp[6];                            /* (R, C); lerp outputs, then their grads */
    float *hid;                                    /* (R, Dmax) LoRA hidden / its grad */
    float *wa, *wb, *oin, *tmp;                    /* (R, C) */
    float *act;                                    /* (R, F) FFN activation / its grad */
    float *sfin;                                   /* (B, H, N, N) */
    float *lnout, *lnout_mean, *lnout_rstd;        /* (R, C), (R), (R) */
    float *head_scratch;                           /* (chunk, V) */
    float *dx, *dh, *dr, *dw, *dk, *dv, *da, *db, *dy, *dg, *dbr, *dbk, *dbv; /* (R, C) */
    float *dwl, *dal, *dkraw, *dvraw, *dvl, *dvfirst, *dxh; /* (R, C) */
};

typedef struct {
    const char *name;
    float **ptr;
    size_t elements;
} plan_entry_t;

#define PLAN_MAX 64

/* The activation plan for B x T: fills tab and returns its length. One pure
 * function of the shapes, so peak memory is known before any allocation. */
static int s_plan(engine_cpu_t *e, const rwkv_config_t *c, int B, int T, int nck,
                  int head_chunk, plan_entry_t *tab)
{
    size_t R = (size_t)B * T, C = c->n_embd, L = c->n_layer, H = c->n_head, F = c->ffn_dim;
    size_t NN = (size_t)c->head_size * c->head_size;
    size_t D = c->d_decay;
    if ((size_t)c->d_aaa > D) D = c->d_aaa;
    if ((size_t)c->d_mv > D) D = c->d_mv;
    if ((size_t)c->d_gate > D) D = c->d_gate;
    int n = 0;
#define P(nm, field, cnt) tab[n++] = (plan_entry_t){nm, &e->field, (cnt)}
    P("layer.x_res", x_res, (L + 1) * R * C);
    P("layer.x_mid", x_mid, L * R * C);
    P("layer.ln1_mean", ln1_mean, L * R);
    P("layer.ln1_rstd", ln1_rstd, L * R);
    P("layer.ln2_mean", ln2_mean, L * R);
    P("layer.ln2_rstd", ln2_rstd, L * R);
    P("layer.r", r, L * R * C);
    P("layer.w", w, L * R * C);
    P("layer.wl", wl, L * R * C);
    P("layer.kraw", kraw, L * R * C);
    P("layer.kf", kf, L * R * C);
    P("layer.kk", kk, L * R * C);
    P("layer.a", a, L * R * C);
    P("layer.v", v, L * R * C);
    P("layer.vraw", vraw, L * R * C);
    P("layer.vs", vs, L * R * C);
    P("layer.g", g, L * R * C);
    P("layer.y", y, L * R * C);
    P("layer.whid", whid, L * R * c->d_decay);
    P("layer.ghid", ghid, L * R * c->d_gate);
    P("layer.gn_mean", gn_mean, L * R * H);
    P("layer.gn_rstd", gn_rstd, L * R * H);
    P("layer.kpre", kpre, L * R * F);
    P("layer.ckpt", ckpt, L * B * nck * H * NN);
    P("h", h, R * C);
    P("lerp.r", lerp[0], R * C);
    P("lerp.w", lerp[1], R * C);
    P("lerp.k", lerp[2], R * C);
    P("lerp.v", lerp[3], R * C);
    P("lerp.a", lerp[4], R * C);
    P("lerp.g", lerp[5], R * C);
    P("hid", hid, R * D);
    P("wa", wa, R * C);
    P("wb", wb, R * C);
    P("oin", oin, R * C);
    P("tmp", tmp, R * C);
    P("act", act, R * F);
    P("sfin", sfin, B * H * NN);
    P("lnout", lnout, R * C);
    P("lnout_mean", lnout_mean, R);
    P("lnout_rstd", lnout_rstd, R);
    P("head_scratch", head_scratch, (size_t)head_chunk * c->vocab);
    P("dx", dx, R * C);
    P("dh", dh, R * C);
    P("dr", dr, R * C);
    P("dw", dw, R * C);
    P("dk", dk, R * C);
    P("dv", dv, R * C);
    P("da", da, R * C);
    P("db", db, R * C);
    P("dy", dy, R * C);
    P("dg", dg, R * C);
    P("dbr", dbr, R * C);
    P("dbk", dbk, R * C);
    P("dbv", dbv, R * C);
    P("dwl", dwl, R * C);
    P("dal", dal, R * C);
    P("dkraw", dkraw, R * C);
    P("dvraw", dvraw, R * C);
    P("dvl", dvl, R * C);
    P("dvfirst", dvfirst, R * C);
    P("dxh", dxh, R * C);
#undef P
    return n;
}

/* MemAvailable of /proc/meminfo in MB, or 0 when it cannot be read (then
 * only the allocation itself can refuse the plan). */
static double s_available_mb(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    double kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
    fclose(f);
    return kb / 1e3;
}

engine_cpu_t *engine_cpu_new(const rwkv_model_t *model, const engine_opts_t *opts, char *err)
{
    const rwkv_config_t *c = &model->cfg;
    if (opts->precision != ENGINE_FP32) {
        st_fail(err, ST_EUNSUPPORTED, "the CPU backend computes in fp32 only (use --precision fp32)");
        return NULL;
    }
    if (c->head_size != 64 || c->n_embd != c->n_head * 64) {
        st_fail(err, ST_EUNSUPPORTED, "the CPU backend needs head size 64 (model has %d)", c->head_size);
        return NULL;
    }
    engine_cpu_t *e = calloc(1, sizeof *e);
    if (!e) {
        st_fail(err, ST_ENOMEM, "out of memory creating the CPU engine");
        return NULL;
    }
    e->m = model;
    e->maxB = opts->max_batch;
    e->maxT = opts->max_ctx;
    e->nck = (opts->max_ctx + CKPT_EVERY - 1) / CKPT_EVERY;
    size_t R = (size_t)e->maxB * e->maxT;
    size_t chunk = HEAD_CHUNK_FLOATS / (size_t)c->vocab;
    if (chunk < 1) chunk = 1;
    if (chunk > R) chunk = R;
    e->head_chunk = (int)chunk;
    plan_entry_t tab[PLAN_MAX];
    int n = s_plan(e, c, e->maxB, e->maxT, e->nck, e->head_chunk, tab);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (tab[i].elements + 15) & ~(size_t)15; /* 64-byte aligned */
    e->mem_floats = total;
    double need_mb = total * 4.0 / 1e6, avail_mb = s_available_mb();
    if (avail_mb > 0 && need_mb > avail_mb) {
        st_fail(err, ST_ENOMEM,
                "the CPU engine needs %.0f MB of activation memory for %d x %d tokens but only %.0f MB "
                "are available (use a smaller batch or context)",
                need_mb, e->maxB, e->maxT, avail_mb);
        free(e);
        return NULL;
    }
    if (posix_memalign((void **)&e->mem, 64, total * sizeof(float)) != 0) {
        st_fail(err, ST_ENOMEM,
                "the CPU engine needs %.1f MB of activation memory for %d x %d tokens and could not get it",
                total * 4.0 / 1e6, e->maxB, e->maxT);
        free(e);
        return NULL;
    }
    memset(e->mem, 0, total * sizeof(float));
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        *tab[i].ptr = e->mem + off;
        off += (tab[i].elements + 15) & ~(size_t)15;
    }
    /* One thread pool: OpenMP splits the work (sgemm_rows_cpu hands each
     * thread a block of rows) and OpenBLAS runs single-threaded inside it,
     * so two pools never spin against each other. Both settings are
     * process-wide, as the libraries define them. */
    openblas_set_num_threads(1);
#ifdef _OPENMP
    if (opts->threads > 0) omp_set_num_threads(opts->threads);
    e->max_threads = omp_get_max_threads();
    const char *env = getenv("OMP_NUM_THREADS");
    e->auto_threads = opts->threads == 0 && !(env && *env) && e->max_threads > 1;
#else
    e->max_threads = 1;
#endif
    e->threads_now = e->max_threads;
#ifdef _OPENMP
    /* A machine already busy when the engine starts (1-minute load average
     * at or above the number of cores) starts on one thread and probes only
     * after PROBE_EVERY runs: a short job would otherwise spend most of its
     * runs probing. */
    double load[1];
    if (e->auto_threads && getloadavg(load, 1) == 1 && load[0] >= omp_get_num_procs()) {
        e->threads_now = 1;
        e->first_probe = PROBE_EVERY;
    }
#endif
    return e;
}

void engine_cpu_destroy(engine_cpu_t **self_p)
{
    if (!self_p || !*self_p) return;
    free((*self_p)->mem);
    free(*self_p);
    *self_p = NULL;
}

size_t engine_cpu_peak_mem_bytes(const engine_cpu_t *self)
{
    return (self->mem_floats + self->m->arena_floats) * sizeof(float);
}

/* Layer l's slices of the per-layer activation blocks, which are laid out
 * for the planned R = maxB * maxT tokens: what the forward pass writes and
 * the backward pass reads back, so both take them from here. */
typedef struct {
    float *xin, *xmid, *xout;                         /* x_res[l], x_mid[l], x_res[l + 1] */
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd; /* (R) */
    float *r, *w, *wl, *kraw, *kf, *kk, *a, *v, *vraw, *vs, *g, *y; /* (R, C) */
    float *whid, *ghid;                               /* (R, Dw), (R, Dg) */
    float *gnm, *gnr;                                 /* GroupNorm mean, rstd (R, H) */
    float *kpre;                                      /* (R, F) */
    float *ckpt;                                      /* (B, nck, H, N, N) */
} layer_acts_t;

static layer_acts_t s_layer_acts(const engine_cpu_t *e, int l)
{
    const rwkv_config_t *c = &e->m->cfg;
    size_t H = c->n_head, NN = (size_t)c->head_size * c->head_size;
    size_t Rp = (size_t)e->maxB * e->maxT, RCp = Rp * c->n_embd;
    layer_acts_t la = {
        .xin = e->x_res + l * RCp, .xmid = e->x_mid + l * RCp, .xout = e->x_res + (l + 1) * RCp,
        .ln1_mean = e->ln1_mean + l * Rp, .ln1_rstd = e->ln1_rstd + l * Rp,
        .ln2_mean = e->ln2_mean + l * Rp, .ln2_rstd = e->ln2_rstd + l * Rp,
        .r = e->r + l * RCp, .w = e->w + l * RCp, .wl = e->wl + l * RCp,
        .kraw = e->kraw + l * RCp, .kf = e->kf + l * RCp, .kk = e->kk + l * RCp,
        .a = e->a + l * RCp, .v = e->v + l * RCp, .vraw = e->vraw + l * RCp,
        .vs = e->vs + l * RCp, .g = e->g + l * RCp, .y = e->y + l * RCp,
        .whid = e->whid + l * Rp * c->d_decay, .ghid = e->ghid + l * Rp * c->d_gate,
        .gnm = e->gn_mean + l * Rp * H, .gnr = e->gn_rstd + l * Rp * H,
        .kpre = e->kpre + l * Rp * c->ffn_dim,
        .ckpt = e->ckpt + (size_t)l * e->maxB * e->nck * H * NN,
    };
    return la;
}

/* Forward through layer l; x_res[l] in, x_res[l+1] out. The WKV state
 * checkpoints are written only when a backward pass follows. */
static void s_layer_forward(engine_cpu_t *e, int l, int B, int T, const float *s0,
                            float *final_state, int backward, const engine_kstate_t *ks)
{
    const rwkv_config_t *c = &e->m->cfg;
    const rwkv_layer_t *p = &e->m->layers[l];
    int C = c->n_embd, H = c->n_head, F = c->ffn_dim, L = c->n_layer;
    int R = B * T;
    size_t RC = (size_t)R * C, NN = (size_t)c->head_size * c->head_size;
    layer_acts_t la = s_layer_acts(e, l);

    layernorm_forward_cpu(R, C, la.xin, p->ln1_w, p->ln1_b, RWKV_LN_EPS, e->h, la.ln1_mean, la.ln1_rstd);
    const float *mix[6] = {p->x_r, p->x_w, p->x_k, p->x_v, p->x_a, p->x_g};
    tokenshift_forward_cpu(B, T, C, e->h, NULL, 6, mix, e->lerp);
    linear_forward_cpu(R, C, C, e->lerp[0], p->receptance, la.r);
    linear_forward_cpu(R, C, C, e->lerp[2], p->key, la.kraw);
    linear_forward_cpu(R, C, C, e->lerp[3], p->value, la.vraw);
    lora_forward_cpu(R, C, c->d_decay, e->lerp[1], p->w1, p->w2, LORA_TANH, la.whid, la.wl);
    lora_forward_cpu(R, C, c->d_aaa, e->lerp[4], p->a1, p->a2, LORA_NONE, e->hid, e->tmp);
    timemix_forward_cpu(R, H, c->head_size, la.wl, e->tmp, la.kraw, p->w0, p->a0, p->k_k, p->k_a, la.w, la.a,
                        la.kk, la.kf, e->wa, e->wb);
    if (l == 0) {
        memcpy(la.v, la.vraw, RC * sizeof(float));
    } else {
        lora_forward_cpu(R, C, c->d_mv, e->lerp[3], p->v1, p->v2, LORA_NONE, e->hid, la.vs);
        vmix_forward_cpu(R, C, la.vraw, e->v /* layer 0's v is v_first */, p->v0, la.vs, la.v);
    }
    lora_forward_cpu(R, C, c->d_gate, e->lerp[5], p->g1, p->g2, LORA_SIGMOID, la.ghid, la.g);
    wkv7_forward_cpu(B, T, H, la.r, la.w, la.kf, la.v, e->wa, e->wb, s0, la.y, final_state ? e->sfin : NULL,
                     backward ? la.ckpt : NULL, CKPT_EVERY);
    if (ks) { /* the kernel-expanded state's term joins y before GroupNorm */
        size_t HNM = (size_t)H * c->head_size * ks->M;
        rbf_forward_cpu(B, T, H, ks->M, ks->gamma, la.r, la.w, ks->U0 + l * HNM, ks->support + l * HNM, la.y);
    }
    if (final_state) {
        size_t HNN = (size_t)H * NN;
        for (int b = 0; b < B; b++)
            memcpy(final_state + ((size_t)b * L + l) * HNN, e->sfin + (size_t)b * HNN,
                   HNN * sizeof(float));
    }
    groupnorm_forward_cpu(R, H, c->head_size, la.y, p->ln_x_w, p->ln_x_b, la.r, la.kf, la.v, p->r_k, la.g, la.gnm,
                          la.gnr, e->oin);
    linear_forward_cpu(R, C, C, e->oin, p->output, e->tmp);
#pragma omp parallel for schedule(dynamic, 8192) if (RC >= 32768)
    for (size_t i = 0; i < RC; i++) la.xmid[i] = la.xin[i] + e->tmp[i];
    layernorm_forward_cpu(R, C, la.xmid, p->ln2_w, p->ln2_b, RWKV_LN_EPS, e->h, la.ln2_mean, la.ln2_rstd);
    channelmix_forward_cpu(B, T, C, F, e->h, NULL, p->ffn_x_k, p->ffn_key, p->ffn_value, e->tmp,
                           la.kpre, e->act, e->oin);
#pragma omp parallel for schedule(dynamic, 8192) if (RC >= 32768)
    for (size_t i = 0; i < RC; i++) la.xout[i] = la.xmid[i] + e->oin[i];
}

/* Backward through layer l: e->dx holds dL/dx_res[l+1] on entry and
 * dL/dx_res[l] on exit (not computed for layer 0). ds0 (H, N, N) +=. */
static void s_layer_backward(engine_cpu_t *e, int l, int B, int T, float *ds0, const engine_kstate_t *ks,
                             float *dU0)
{
    const rwkv_config_t *c = &e->m->cfg;
    const rwkv_layer_t *p = &e->m->layers[l];
    int C = c->n_embd, H = c->n_head, F = c->ffn_dim, N = c->head_size;
    int R = B * T;
    size_t RC = (size_t)R * C;
    layer_acts_t la = s_layer_acts(e, l);
    float *dx = e->dx;

    /* channel mix: dx += LN2'(CMix'(dx)) */
    memset(e->dh, 0, RC * sizeof(float));
    channelmix_backward_cpu(B, T, C, F, p->ffn_x_k, p->ffn_key, p->ffn_value, la.kpre, dx, e->act,
                            e->tmp, e->dh);
    layernorm_backward_cpu(R, C, la.xmid, p->ln2_w, la.ln2_mean, la.ln2_rstd, e->dh, dx);

    /* output projection, then GroupNorm + bonus + gate (its bonus share of
     * dr, dk, dv goes to dbr, dbk, dbv: the WKV backward needs dy first) */
    linear_backward_to_cpu(R, C, C, dx, p->output, e->oin);
    groupnorm_backward_cpu(R, H, N, la.y, p->ln_x_w, p->ln_x_b, la.r, la.kf, la.v, p->r_k, la.g, la.gnm, la.gnr,
                           e->oin, e->dy, e->dbr, e->dbk, e->dbv, e->dg);

    /* WKV7: the wkv "a" and "b" inputs are recomputed from kk and a */
#pragma omp parallel for schedule(dynamic, 8192) if (RC >= 32768)
    for (size_t i = 0; i < RC; i++) {
        e->wa[i] = -la.kk[i];
        e->wb[i] = la.kk[i] * la.a[i];
    }
    wkv7_backward_cpu(B, T, H, la.r, la.w, la.kf, la.v, e->wa, e->wb, la.ckpt, CKPT_EVERY, e->dy, e->dr, e->dw,
                      e->dk, e->dv, e->da, e->db, ds0);
    if (ks) { /* its share of dr and dw keeps the lower layers' dS0 exact; tmp is dead here */
        size_t HNM = (size_t)H * N * ks->M;
        rbf_backward_cpu(B, T, H, ks->M, ks->gamma, la.r, la.w, ks->U0 + l * HNM, ks->support + l * HNM, e->dy,
                         e->dr, e->dw, dU0 ? dU0 + l * HNM : NULL, e->tmp);
    }
    if (l == 0) return; /* nothing below layer 0's WKV depends on S0 */
#pragma omp parallel for schedule(dynamic, 8192) if (RC >= 32768)
    for (size_t i = 0; i < RC; i++) {
        e->dr[i] += e->dbr[i];
        e->dk[i] += e->dbk[i];
        e->dv[i] += e->dbv[i];
    }

    /* back to the six lerp outputs (each gradient overwrites its input; the
     * first product into each overwrites, the others add) */
    float **dl = e->lerp;
    lora_backward_cpu(R, C, c->d_gate, p->g1, p->g2, LORA_SIGMOID, la.ghid, e->dg, e->hid, dl[5], 0);
    linear_backward_to_cpu(R, C, C, e->dr, p->receptance, dl[0]);
    timemix_backward_cpu(R, H, N, la.wl, p->w0, la.w, la.a, la.kk, la.kraw, p->k_k, p->k_a, e->dw, e->dk, e->da,
                         e->db, e->dwl, e->dal, e->dkraw);
    lora_backward_cpu(R, C, c->d_decay, p->w1, p->w2, LORA_TANH, la.whid, e->dwl, e->hid, dl[1], 0);
    lora_backward_cpu(R, C, c->d_aaa, p->a1, p->a2, LORA_NONE, NULL, e->dal, e->hid, dl[4], 0);
    linear_backward_to_cpu(R, C, C, e->dkraw, p->key, dl[2]);
    vmix_backward_cpu(R, C, la.vraw, e->v, la.vs, e->dv, e->dvraw, e->dvfirst, e->dvl);
    linear_backward_to_cpu(R, C, C, e->dvraw, p->value, dl[3]);
    lora_backward_cpu(R, C, c->d_mv, p->v1, p->v2, LORA_NONE, NULL, e->dvl, e->hid, dl[3], 1);
    const float *mix[6] = {p->x_r, p->x_w, p->x_k, p->x_v, p->x_a, p->x_g};
    memset(e->dh, 0, RC * sizeof(float));
    tokenshift_backward_cpu(B, T, C, 6, mix, (const float *const *)dl, e->dh);
    layernorm_backward_cpu(R, C, la.xin, p->ln1_w, la.ln1_mean, la.ln1_rstd, e->dh, dx);
}

static int s_run(engine_cpu_t *e, engine_batch_t *bt, char *err);

int engine_cpu_run(engine_cpu_t *e, engine_batch_t *bt, char *err)
{
    if (!e->auto_threads) return s_run(e, bt, err);
    /* only training runs (forward + backward) are timed and counted, so
     * that a forward-only evaluation batch is never compared with one */
    int train = bt->dstate0 != NULL && bt->targets != NULL;
    int64_t phase = e->runs % PROBE_EVERY;
    /* phases 1..4 alternate all threads and one thread */
    int probe = train && e->runs > e->first_probe && phase >= 1 && phase <= 4 ? (int)phase : 0;
    int all = probe & 1;
    int n = probe ? (all ? e->max_threads : 1) : e->threads_now;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    double t0 = st_mono_s();
    int rc = s_run(e, bt, err);
    double per_tok = (st_mono_s() - t0) / ((double)bt->B * bt->T);
    if (probe == 1) e->probe_s_per_tok[0] = e->probe_s_per_tok[1] = 0;
    if (probe) e->probe_s_per_tok[all ? 0 : 1] += per_tok;
    /* all threads must win by 10%: a tie on a busy machine goes to the
     * configuration that leaves the neighbours a core */
    if (probe == 4)
        e->threads_now = e->probe_s_per_tok[0] < 0.9 * e->probe_s_per_tok[1] ? e->max_threads : 1;
    if (train) e->runs++;
    return rc;
}

static int s_run(engine_cpu_t *e, engine_batch_t *bt, char *err)
{
    const rwkv_model_t *m = e->m;
    const rwkv_config_t *c = &m->cfg;
    int B = bt->B, T = bt->T, C = c->n_embd, L = c->n_layer, V = c->vocab;
    int R = B * T;
    size_t RC = (size_t)R * C, HNN = rwkv_state_layer_size(c);

    int backward = bt->dstate0 != NULL && bt->targets != NULL;

    /* embedding, then ln0 (layer 0 only) into the residual stream */
    float *x0 = e->x_res;
#pragma omp parallel for schedule(dynamic, 64)
    for (int i = 0; i < R; i++)
        memcpy(x0 + (size_t)i * C, m->emb + (size_t)bt->tokens[i] * C, C * sizeof(float));
    if (m->layers[0].ln0_w) /* every official checkpoint has it; tolerate its absence */
        layernorm_forward_cpu(R, C, x0, m->layers[0].ln0_w, m->layers[0].ln0_b, RWKV_LN_EPS, x0,
                              NULL, NULL);
    for (int l = 0; l < L; l++)
        s_layer_forward(e, l, B, T, bt->state0 + (size_t)l * HNN, bt->final_state, backward, bt->kstate);

    size_t RCp = (size_t)e->maxB * e->maxT * C;
    if (bt->receptance)
        for (int l = 0; l < L; l++)
            memcpy(bt->receptance + (size_t)l * RC, e->r + (size_t)l * RCp, RC * sizeof(float));
    float *xL = e->x_res + (size_t)L * RCp;
    layernorm_forward_cpu(R, C, xL, m->ln_out_w, m->ln_out_b, RWKV_LN_EPS, e->lnout, e->lnout_mean,
                          e->lnout_rstd);
    head_result_t hr;
    if (bt->teacher_topk && bt->obs_alpha < 1.0f) { /* the observer against a top-k teacher */
        observer_result_t orr;
        observer_topk_head_cpu(R, C, V, bt->teacher_k, e->lnout, m->head, bt->teacher_topk, bt->teacher_topk_ids,
                               bt->targets, bt->obs_alpha, bt->obs_temperature, bt->logits,
                               backward ? e->dxh : NULL, e->head_scratch, e->head_chunk, &orr);
        hr = (head_result_t){orr.loss_sum, orr.n_targets, orr.n_correct};
        bt->ce_sum = orr.ce_sum;
        bt->kl_sum = orr.kl_sum;
    } else if (bt->teacher_logits && bt->obs_alpha < 1.0f) { /* the observer objective (alpha 1 is plain CE) */
        observer_result_t orr;
        observer_head_cpu(R, C, V, e->lnout, m->head, bt->teacher_logits, bt->targets, bt->obs_alpha,
                          bt->obs_temperature, bt->logits, backward ? e->dxh : NULL, e->head_scratch,
                          e->head_chunk, &orr);
        hr = (head_result_t){orr.loss_sum, orr.n_targets, orr.n_correct};
        bt->ce_sum = orr.ce_sum;
        bt->kl_sum = orr.kl_sum;
    } else {
        head_ce_cpu(R, C, V, e->lnout, m->head, bt->targets, bt->logits, backward ? e->dxh : NULL,
                    e->head_scratch, e->head_chunk, &hr);
        bt->ce_sum = hr.loss_sum;
    }
    bt->loss_sum = hr.loss_sum;
    bt->n_targets = hr.n_targets;
    bt->n_correct = hr.n_correct;

    if (bt->dbp_q && bt->dbp_rows) {
        size_t RCl = RCp;
        for (int l = 0; l < L; l++) {
            const float *kk = e->kk + l * RCl, *a = e->a + l * RCl;
            for (size_t i = 0; i < RC; i++) {
                e->wa[i] = -kk[i];
                e->wb[i] = kk[i] * a[i];
            }
            dbp_q_cpu(B, T, c->n_head, e->r + l * RCl, e->w + l * RCl, e->wa, e->wb, bt->dbp_rows,
                      bt->dbp_q + (size_t)l * HNN);
        }
    }
    if (!backward) return ST_OK;
    if (!isfinite(hr.loss_sum))
        return st_fail(err, ST_ENUMERIC,
                       "the loss is not finite: the model or the state holds NaN or infinite values");

    memset(e->dx, 0, RC * sizeof(float));
    layernorm_backward_cpu(R, C, xL, m->ln_out_w, e->lnout_mean, e->lnout_rstd, e->dxh, e->dx);
    memset(e->dvfirst, 0, RC * sizeof(float));
    /* Layer 0's v is v_first; the later layers' share of its gradient
     * (dvfirst) would join layer 0's dv, but nothing of layer 0 below its WKV
     * depends on S0, so s_layer_backward stops there and dvfirst is unused. */
    for (int l = L - 1; l >= 0; l--)
        s_layer_backward(e, l, B, T, bt->dstate0 + (size_t)l * HNN, bt->kstate, bt->dU0);
    return ST_OK;
}
