/*
 * rnn.c - RNN mode (engine.h's rwkv_rnn_*): one token at a time with the
 * recurrent state carried, the way an inference client uses a tuned state.
 * It calls the same CPU kernels as the GPT-mode engine with B = T = 1; the
 * only difference is that token shift reads the carried previous token
 * (att and ffn shift states per layer) instead of zeros, so a sequence fed
 * here gives the logits engine_run gives for it from the same S0.
 *
 * State per layer: WKV (H, N, N), att shift (C), ffn shift (C); all fp32.
 */
#include "engine/engine.h"

#include "common/st_err.h"
#include "kernels/cpu/channelmix.h"
#include "kernels/cpu/groupnorm.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/rbf.h"
#include "kernels/cpu/timemix.h"
#include "kernels/cpu/tokenshift.h"
#include "kernels/cpu/wkv7.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

struct rwkv_rnn {
    const rwkv_model_t *m;
    float *wkv;         /* (L, H, N, N) */
    float *att_shift;   /* (L, C) */
    float *ffn_shift;   /* (L, C) */
    /* one token's scratch, (C) each unless noted */
    float *x, *h, *lerp[6], *r, *w, *wl, *kraw, *kf, *kk, *a, *al, *v, *vraw, *vs, *g, *y;
    float *wa, *wb, *oin, *tmp, *xmid, *vfirst, *xk;
    float *hid;         /* (Dmax) */
    float *kpre, *act;  /* (F) */
    float *mem;
    const engine_kstate_t *ks; /* kernel-expanded state (rwkv_rnn_set_kstate), borrowed, or NULL */
    float *kdecay;             /* (L, H) its running decay products */
};

rwkv_rnn_t *rwkv_rnn_new(const rwkv_model_t *model, const float *state0, char *err)
{
    const rwkv_config_t *c = &model->cfg;
    if (c->head_size != 64) {
        st_fail(err, ST_EUNSUPPORTED, "RNN mode needs head size 64 (model has %d)", c->head_size);
        return NULL;
    }
    rwkv_rnn_t *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->m = model;
    size_t C = c->n_embd, L = c->n_layer, F = c->ffn_dim, S = rwkv_state_layer_size(c);
    size_t D = c->d_decay;
    if ((size_t)c->d_aaa > D) D = c->d_aaa;
    if ((size_t)c->d_mv > D) D = c->d_mv;
    if ((size_t)c->d_gate > D) D = c->d_gate;
    size_t nvec = 29; /* the (C) scratch vectors below */
    size_t total = L * S + 2 * L * C + nvec * C + D + 2 * F;
    s->mem = calloc(total, sizeof(float));
    if (!s->mem) goto oom;
    float *p = s->mem;
    s->wkv = p, p += L * S;
    s->att_shift = p, p += L * C;
    s->ffn_shift = p, p += L * C;
    float **vecs[] = {&s->x, &s->h, &s->lerp[0], &s->lerp[1], &s->lerp[2], &s->lerp[3],
                      &s->lerp[4], &s->lerp[5], &s->r, &s->w, &s->wl, &s->kraw, &s->kf, &s->kk,
                      &s->a, &s->al, &s->v, &s->vraw, &s->vs, &s->g, &s->y, &s->wa, &s->wb,
                      &s->oin, &s->tmp, &s->xmid, &s->vfirst, &s->xk, NULL};
    size_t nv = 0;
    for (float ***q = vecs; *q; q++, nv++) **q = p, p += C;
    if (nv > nvec) abort(); /* programmer error: nvec too small */
    p += (nvec - nv) * C;
    s->hid = p, p += D;
    s->kpre = p, p += F;
    s->act = p;
    if (state0) memcpy(s->wkv, state0, L * S * sizeof(float));
    /* one token's products are too small for OpenBLAS's own threads, which
     * would only spin (the CPU engine sets the same, engine_cpu.c) */
    openblas_set_num_threads(1);
    return s;
oom:
    if (s) free(s->mem);
    free(s);
    st_fail(err, ST_ENOMEM, "out of memory creating an RNN state");
    return NULL;
}

void rwkv_rnn_destroy(rwkv_rnn_t **self_p)
{
    if (!self_p || !*self_p) return;
    free((*self_p)->mem);
    free((*self_p)->kdecay);
    free(*self_p);
    *self_p = NULL;
}

const float *rwkv_rnn_wkv_state(const rwkv_rnn_t *self) { return self->wkv; }

int rwkv_rnn_set_kstate(rwkv_rnn_t *self, const engine_kstate_t *ks, char *err)
{
    const rwkv_config_t *c = &self->m->cfg;
    free(self->kdecay);
    self->kdecay = NULL;
    self->ks = NULL;
    if (!ks) return ST_OK;
    if (ks->M < 1 || ks->M > 1024 || !(ks->gamma > 0) || !ks->U0 || !ks->support)
        return st_fail(err, ST_EINVAL, "a kernel-expanded state needs 1 to 1024 features, gamma > 0, U0 and support vectors");
    self->kdecay = malloc((size_t)c->n_layer * c->n_head * sizeof(float));
    if (!self->kdecay) return st_fail(err, ST_ENOMEM, "out of memory for the kernel-expanded state's decays");
    for (int i = 0; i < c->n_layer * c->n_head; i++) self->kdecay[i] = 1.0f;
    self->ks = ks;
    return ST_OK;
}

int rwkv_rnn_step(rwkv_rnn_t *s, int32_t token, float *logits, char *err)
{
    const rwkv_model_t *m = s->m;
    const rwkv_config_t *c = &m->cfg;
    int C = c->n_embd, H = c->n_head, N = c->head_size, F = c->ffn_dim, L = c->n_layer;
    if (token < 0 || token >= c->vocab)
        return st_fail(err, ST_EINVAL, "token id %d is outside the vocabulary of %d", (int)token,
                       c->vocab);
    size_t S = rwkv_state_layer_size(c);
    const float *e = m->emb + (size_t)token * C;
    if (m->layers[0].ln0_w)
        layernorm_forward_cpu(1, C, e, m->layers[0].ln0_w, m->layers[0].ln0_b, RWKV_LN_EPS, s->x,
                              NULL, NULL);
    else
        memcpy(s->x, e, C * sizeof(float));
    for (int l = 0; l < L; l++) {
        const rwkv_layer_t *p = &m->layers[l];
        float *ash = s->att_shift + (size_t)l * C, *fsh = s->ffn_shift + (size_t)l * C;
        layernorm_forward_cpu(1, C, s->x, p->ln1_w, p->ln1_b, RWKV_LN_EPS, s->h, NULL, NULL);
        const float *mix[6] = {p->x_r, p->x_w, p->x_k, p->x_v, p->x_a, p->x_g};
        tokenshift_forward_cpu(1, 1, C, s->h, ash, 6, mix, s->lerp);
        memcpy(ash, s->h, C * sizeof(float));
        linear_forward_cpu(1, C, C, s->lerp[0], p->receptance, s->r);
        linear_forward_cpu(1, C, C, s->lerp[2], p->key, s->kraw);
        linear_forward_cpu(1, C, C, s->lerp[3], p->value, s->vraw);
        lora_forward_cpu(1, C, c->d_decay, s->lerp[1], p->w1, p->w2, LORA_TANH, s->hid, s->wl);
        lora_forward_cpu(1, C, c->d_aaa, s->lerp[4], p->a1, p->a2, LORA_NONE, s->hid, s->al);
        timemix_forward_cpu(1, H, N, s->wl, s->al, s->kraw, p->w0, p->a0, p->k_k, p->k_a, s->w,
                            s->a, s->kk, s->kf, s->wa, s->wb);
        if (l == 0) {
            memcpy(s->v, s->vraw, C * sizeof(float));
            memcpy(s->vfirst, s->v, C * sizeof(float));
        } else {
            lora_forward_cpu(1, C, c->d_mv, s->lerp[3], p->v1, p->v2, LORA_NONE, s->hid, s->vs);
            vmix_forward_cpu(1, C, s->vraw, s->vfirst, p->v0, s->vs, s->v);
        }
        lora_forward_cpu(1, C, c->d_gate, s->lerp[5], p->g1, p->g2, LORA_SIGMOID, s->hid, s->g);
        float *st = s->wkv + (size_t)l * S;
        wkv7_forward_cpu(1, 1, H, s->r, s->w, s->kf, s->v, s->wa, s->wb, st, s->y, st, NULL, 1);
        if (s->ks) {
            size_t HNM = (size_t)H * N * s->ks->M;
            rbf_step_cpu(H, s->ks->M, s->ks->gamma, s->r, s->w, s->ks->U0 + l * HNM, s->ks->support + l * HNM,
                         s->kdecay + (size_t)l * H, s->y);
        }
        groupnorm_forward_cpu(1, H, N, s->y, p->ln_x_w, p->ln_x_b, s->r, s->kf, s->v, p->r_k, s->g,
                              NULL, NULL, s->oin);
        linear_forward_cpu(1, C, C, s->oin, p->output, s->tmp);
        for (int i = 0; i < C; i++) s->xmid[i] = s->x[i] + s->tmp[i];
        layernorm_forward_cpu(1, C, s->xmid, p->ln2_w, p->ln2_b, RWKV_LN_EPS, s->h, NULL, NULL);
        channelmix_forward_cpu(1, 1, C, F, s->h, fsh, p->ffn_x_k, p->ffn_key, p->ffn_value, s->xk,
                               s->kpre, s->act, s->tmp);
        memcpy(fsh, s->h, C * sizeof(float));
        for (int i = 0; i < C; i++) s->x[i] = s->xmid[i] + s->tmp[i];
    }
    if (logits) {
        layernorm_forward_cpu(1, C, s->x, m->ln_out_w, m->ln_out_b, RWKV_LN_EPS, s->h, NULL, NULL);
        linear_forward_cpu(1, C, c->vocab, s->h, m->head, logits);
    }
    return ST_OK;
}
