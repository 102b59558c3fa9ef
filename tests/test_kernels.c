/*
 * test_kernels.c - every CPU op's backward pass against finite differences on
 * small random inputs, the WKV7 forward against a plain double-precision
 * recurrence, checkpoint-size invariance, the head's chunking invariance and
 * the DBP correlation Q against the brute-force sum of x_t x_t^T.
 *
 * Gradient checks are directional: for a random direction d over a whole
 * input tensor, the central difference of the scalar L = sum(out * proj) along
 * d must match sum(grad * d). Summing over every element averages the fp32
 * rounding noise down, so one check covers a tensor with a tight tolerance.
 */
#include "harness.h"

#include "kernels/cpu/channelmix.h"
#include "kernels/cpu/dbp.h"
#include "kernels/cpu/groupnorm.h"
#include "kernels/cpu/head.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/timemix.h"
#include "kernels/cpu/tokenshift.h"
#include "kernels/cpu/wkv7.h"

#include <stdint.h>

#define NH 64

static float *s_randn(st_rng_t *g, size_t n, float scale)
{
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = st_rng_normal(g) * scale;
    return p;
}

static float *s_rand_range(st_rng_t *g, size_t n, float lo, float hi)
{
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * (float)st_rng_uniform(g);
    return p;
}

static double s_dot(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* A forward pass that returns sum(out * proj) for the current inputs. */
typedef double (*loss_fn_t)(void *ctx);

/* Directional central difference of fn along a random direction over x (n
 * floats) against the analytic gradient; step h, relative tolerance tol. */
static int s_check_dir(const char *what, void *ctx, loss_fn_t fn, float *x, size_t n,
                       const float *grad, float h, double tol, st_rng_t *g)
{
    float *d = s_randn(g, n, 1.0f);
    float *x0 = malloc(n * sizeof(float));
    memcpy(x0, x, n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = x0[i] + h * d[i];
    double lp = fn(ctx);
    for (size_t i = 0; i < n; i++) x[i] = x0[i] - h * d[i];
    double lm = fn(ctx);
    memcpy(x, x0, n * sizeof(float));
    double fd = (lp - lm) / (2.0 * h);
    double an = s_dot(grad, d, n);
    double gn = sqrt(s_dot(grad, grad, n) + 1e-30);
    double err = fabs(fd - an) / (fabs(an) + 1e-3 * gn + 1e-12);
    printf("  %-14s analytic % .6e  numeric % .6e  rel %.2e\n", what, an, fd, err);
    free(d);
    free(x0);
    if (!(err <= tol)) {
        fprintf(stderr, "gradient of %s disagrees with finite differences (rel %.3e > %.1e)\n",
                what, err, tol);
        return 1;
    }
    return 0;
}

/* ---- layernorm ------------------------------------------------------------ */

typedef struct {
    int R, C;
    float *x, *w, *b, *out, *proj;
} ln_ctx_t;

static double s_ln_loss(void *p)
{
    ln_ctx_t *c = p;
    layernorm_forward_cpu(c->R, c->C, c->x, c->w, c->b, RWKV_LN_EPS, c->out, NULL, NULL);
    return s_dot(c->out, c->proj, (size_t)c->R * c->C);
}

static int test_layernorm(void)
{
    st_rng_t g = {11};
    ln_ctx_t c = {.R = 7, .C = 96};
    size_t n = (size_t)c.R * c.C;
    c.x = s_randn(&g, n, 2.0f);
    c.w = s_randn(&g, c.C, 1.0f);
    c.b = s_randn(&g, c.C, 1.0f);
    c.proj = s_randn(&g, n, 1.0f);
    c.out = malloc(n * sizeof(float));
    float *mean = malloc(c.R * sizeof(float)), *rstd = malloc(c.R * sizeof(float));
    float *dx = calloc(n, sizeof(float));
    layernorm_forward_cpu(c.R, c.C, c.x, c.w, c.b, RWKV_LN_EPS, c.out, mean, rstd);
    /* the normalised rows have zero mean and unit variance before the affine */
    double m0 = 0;
    for (int i = 0; i < c.C; i++) m0 += (c.out[i] - c.b[i]) / c.w[i];
    CHECKF(fabs(m0 / c.C) < 1e-4, "row mean %g", m0 / c.C);
    layernorm_backward_cpu(c.R, c.C, c.x, c.w, mean, rstd, c.proj, dx);
    int rc = s_check_dir("dx", &c, s_ln_loss, c.x, n, dx, 1e-2f, 2e-3, &g);
    free(c.x), free(c.w), free(c.b), free(c.proj), free(c.out), free(mean), free(rstd), free(dx);
    return rc;
}

/* ---- token shift ---------------------------------------------------------- */

typedef struct {
    int B, T, C;
    float *h, *mix[3], *out[3], *proj[3];
} ts_ctx_t;

static double s_ts_loss(void *p)
{
    ts_ctx_t *c = p;
    tokenshift_forward_cpu(c->B, c->T, c->C, c->h, NULL, 3, (const float *const *)c->mix, c->out);
    size_t n = (size_t)c->B * c->T * c->C;
    return s_dot(c->out[0], c->proj[0], n) + s_dot(c->out[1], c->proj[1], n) +
           s_dot(c->out[2], c->proj[2], n);
}

static int test_tokenshift(void)
{
    st_rng_t g = {12};
    ts_ctx_t c = {.B = 2, .T = 5, .C = 8};
    size_t n = (size_t)c.B * c.T * c.C;
    c.h = s_randn(&g, n, 1.0f);
    for (int m = 0; m < 3; m++) {
        c.mix[m] = s_rand_range(&g, c.C, 0, 1);
        c.out[m] = malloc(n * sizeof(float));
        c.proj[m] = s_randn(&g, n, 1.0f);
    }
    s_ts_loss(&c);
    /* out at t = 0 sees a zero previous token; at t = 1 it sees h_0 */
    CHECK(fabsf(c.out[0][0] - c.h[0] * (1 - c.mix[0][0])) < 1e-6f);
    CHECK(fabsf(c.out[0][c.C] - (c.h[c.C] + (c.h[0] - c.h[c.C]) * c.mix[0][0])) < 1e-6f);
    float *dh = calloc(n, sizeof(float));
    tokenshift_backward_cpu(c.B, c.T, c.C, 3, (const float *const *)c.mix,
                            (const float *const *)c.proj, dh);
    int rc = s_check_dir("dh", &c, s_ts_loss, c.h, n, dh, 1e-2f, 1e-3, &g);
    free(c.h), free(dh);
    for (int m = 0; m < 3; m++) free(c.mix[m]), free(c.out[m]), free(c.proj[m]);
    return rc;
}

/* ---- LoRA ----------------------------------------------------------------- */

typedef struct {
    int R, C, D;
    lora_act_t act;
    float *x, *w1, *w2, *hid, *out, *proj;
} lora_ctx_t;

static double s_lora_loss(void *p)
{
    lora_ctx_t *c = p;
    lora_forward_cpu(c->R, c->C, c->D, c->x, c->w1, c->w2, c->act, c->hid, c->out);
    return s_dot(c->out, c->proj, (size_t)c->R * c->C);
}

static int test_lora(void)
{
    st_rng_t g = {13};
    for (int act = 0; act < 3; act++) {
        lora_ctx_t c = {.R = 9, .C = 64, .D = 16, .act = (lora_act_t)act};
        size_t n = (size_t)c.R * c.C;
        c.x = s_randn(&g, n, 1.0f);
        c.w1 = s_randn(&g, (size_t)c.C * c.D, 0.2f);
        c.w2 = s_randn(&g, (size_t)c.D * c.C, 0.2f);
        c.hid = malloc((size_t)c.R * c.D * sizeof(float));
        c.out = malloc(n * sizeof(float));
        c.proj = s_randn(&g, n, 1.0f);
        float *dhid = malloc((size_t)c.R * c.D * sizeof(float));
        float *dx = calloc(n, sizeof(float));
        s_lora_loss(&c);
        lora_backward_cpu(c.R, c.C, c.D, c.w1, c.w2, c.act, c.hid, c.proj, dhid, dx, 1);
        const char *names[3] = {"dx (none)", "dx (tanh)", "dx (sigmoid)"};
        int rc = s_check_dir(names[act], &c, s_lora_loss, c.x, n, dx, 1e-2f, 2e-3, &g);
        free(c.x), free(c.w1), free(c.w2), free(c.hid), free(c.out), free(c.proj), free(dhid),
            free(dx);
        if (rc) return rc;
    }
    /* linear: forward against a plain loop, backward as an adjoint */
    st_rng_t g2 = {14};
    int R = 5, IN = 12, OUT = 7;
    float *x = s_randn(&g2, (size_t)R * IN, 1), *w = s_randn(&g2, (size_t)OUT * IN, 1);
    float *y = malloc((size_t)R * OUT * sizeof(float)), *dy = s_randn(&g2, (size_t)R * OUT, 1);
    float *dx = calloc((size_t)R * IN, sizeof(float));
    linear_forward_cpu(R, IN, OUT, x, w, y);
    double ref = 0;
    for (int k = 0; k < IN; k++) ref += (double)x[2 * IN + k] * w[3 * IN + k];
    CHECK(fabs(y[2 * OUT + 3] - ref) < 1e-5);
    linear_backward_cpu(R, IN, OUT, dy, w, dx);
    /* <dy, W x> == <W^T dy, x> */
    CHECK(fabs(s_dot(dy, y, (size_t)R * OUT) - s_dot(dx, x, (size_t)R * IN)) < 1e-3);
    free(x), free(w), free(y), free(dy), free(dx);
    return 0;
}

/* ---- time mix element-wise ------------------------------------------------ */

typedef struct {
    int R, H;
    float *wl, *al, *kraw, *w0, *a0, *k_k, *k_a;
    float *w, *a, *kk, *kf, *wa, *wb;
    float *pw, *pkf, *pwa, *pwb;
} tm_ctx_t;

static double s_tm_loss(void *p)
{
    tm_ctx_t *c = p;
    timemix_forward_cpu(c->R, c->H, NH, c->wl, c->al, c->kraw, c->w0, c->a0, c->k_k, c->k_a, c->w,
                        c->a, c->kk, c->kf, c->wa, c->wb);
    size_t n = (size_t)c->R * c->H * NH;
    return s_dot(c->w, c->pw, n) + s_dot(c->kf, c->pkf, n) + s_dot(c->wa, c->pwa, n) +
           s_dot(c->wb, c->pwb, n);
}

static int test_timemix(void)
{
    st_rng_t g = {15};
    tm_ctx_t c = {.R = 3, .H = 2};
    int C = c.H * NH;
    size_t n = (size_t)c.R * C;
    c.wl = s_randn(&g, n, 1), c.al = s_randn(&g, n, 1), c.kraw = s_randn(&g, n, 1);
    c.w0 = s_randn(&g, C, 1), c.a0 = s_randn(&g, C, 1);
    c.k_k = s_rand_range(&g, C, 0.5f, 1.5f), c.k_a = s_rand_range(&g, C, 0, 1);
    float **outs[6] = {&c.w, &c.a, &c.kk, &c.kf, &c.wa, &c.wb};
    for (int i = 0; i < 6; i++) *outs[i] = malloc(n * sizeof(float));
    c.pw = s_randn(&g, n, 1), c.pkf = s_randn(&g, n, 1), c.pwa = s_randn(&g, n, 1),
    c.pwb = s_randn(&g, n, 1);
    s_tm_loss(&c);
    /* kk has unit norm per head, w lies in (exp(-0.6065), 1) */
    double nn = 0;
    for (int i = 0; i < NH; i++) nn += (double)c.kk[NH + i] * c.kk[NH + i];
    CHECKF(fabs(nn - 1) < 1e-5, "|kk|^2 = %g", nn);
    for (size_t i = 0; i < n; i++) CHECK(c.w[i] > 0.545f && c.w[i] < 1.0f);
    float *dwl = malloc(n * 4), *dal = malloc(n * 4), *dk = malloc(n * 4);
    timemix_backward_cpu(c.R, c.H, NH, c.wl, c.w0, c.w, c.a, c.kk, c.kraw, c.k_k, c.k_a, c.pw, c.pkf,
                         c.pwa, c.pwb, dwl, dal, dk);
    int rc = s_check_dir("dwl", &c, s_tm_loss, c.wl, n, dwl, 1e-2f, 2e-3, &g);
    rc = rc ? rc : s_check_dir("dal", &c, s_tm_loss, c.al, n, dal, 1e-2f, 2e-3, &g);
    rc = rc ? rc : s_check_dir("dkraw", &c, s_tm_loss, c.kraw, n, dk, 1e-2f, 2e-3, &g);

    /* vmix */
    float *vraw = s_randn(&g, n, 1), *vf = s_randn(&g, n, 1), *v0 = s_randn(&g, C, 1);
    float *vl = s_randn(&g, n, 1), *s = malloc(n * 4), *v = malloc(n * 4);
    memcpy(s, vl, n * 4);
    vmix_forward_cpu(c.R, C, vraw, vf, v0, s, v);
    float *dv = s_randn(&g, n, 1), *dvraw = malloc(n * 4), *dvf = calloc(n, 4),
          *dvl = malloc(n * 4);
    vmix_backward_cpu(c.R, C, vraw, vf, s, dv, dvraw, dvf, dvl);
    /* element 5: compare with a central difference of each input */
    int e = 5;
    float hh = 1e-2f;
    float sp = 1 / (1 + expf(-(v0[e] + vl[e] + hh))), sm = 1 / (1 + expf(-(v0[e] + vl[e] - hh)));
    double fd = ((vraw[e] + (vf[e] - vraw[e]) * sp) - (vraw[e] + (vf[e] - vraw[e]) * sm)) / (2 * hh);
    CHECKF(fabs(fd * dv[e] - dvl[e]) < 1e-3 * (1 + fabs(dvl[e])), "dvl %g vs %g", dvl[e],
           fd * dv[e]);
    CHECK(fabsf(dvraw[e] + dvf[e] - dv[e]) < 1e-6f);
    free(vraw), free(vf), free(v0), free(vl), free(s), free(v), free(dv), free(dvraw), free(dvf),
        free(dvl);
    free(c.wl), free(c.al), free(c.kraw), free(c.w0), free(c.a0), free(c.k_k), free(c.k_a);
    for (int i = 0; i < 6; i++) free(*outs[i]);
    free(c.pw), free(c.pkf), free(c.pwa), free(c.pwb), free(dwl), free(dal), free(dk);
    return rc;
}

/* ---- WKV7 ----------------------------------------------------------------- */

typedef struct {
    int B, T, H;
    float *r, *w, *k, *v, *a, *b, *s0, *y, *sf, *py, *psf;
} wkv_ctx_t;

/* Random WKV inputs shaped like the model's: a = -kk, b = kk * alpha with kk
 * unit per head, so that G stays a contraction. */
static void s_wkv_inputs(wkv_ctx_t *c, st_rng_t *g)
{
    int C = c->H * NH;
    size_t n = (size_t)c->B * c->T * C;
    c->r = s_randn(g, n, 0.5f), c->k = s_randn(g, n, 0.3f), c->v = s_randn(g, n, 1.0f);
    c->w = s_rand_range(g, n, 0.55f, 0.999f);
    c->a = malloc(n * 4), c->b = malloc(n * 4);
    for (size_t row = 0; row < n / NH; row++) {
        double ss = 0;
        float kk[NH];
        for (int i = 0; i < NH; i++) kk[i] = st_rng_normal(g), ss += (double)kk[i] * kk[i];
        for (int i = 0; i < NH; i++) {
            kk[i] /= (float)sqrt(ss);
            c->a[row * NH + i] = -kk[i];
            c->b[row * NH + i] = kk[i] * (float)st_rng_uniform(g);
        }
    }
    c->s0 = s_randn(g, (size_t)c->H * NH * NH, 0.3f);
    c->y = malloc(n * 4);
    c->sf = malloc((size_t)c->B * c->H * NH * NH * 4);
    c->py = s_randn(g, n, 1.0f);
    c->psf = s_randn(g, (size_t)c->B * c->H * NH * NH, 0.1f);
}

static void s_wkv_free(wkv_ctx_t *c)
{
    free(c->r), free(c->w), free(c->k), free(c->v), free(c->a), free(c->b), free(c->s0);
    free(c->y), free(c->sf), free(c->py), free(c->psf);
}

static double s_wkv_loss(void *p)
{
    wkv_ctx_t *c = p;
    wkv7_forward_cpu(c->B, c->T, c->H, c->r, c->w, c->k, c->v, c->a, c->b, c->s0, c->y, NULL,
                     NULL, 4);
    return s_dot(c->y, c->py, (size_t)c->B * c->T * c->H * NH);
}

static int test_wkv7_forward(void)
{
    st_rng_t g = {21};
    wkv_ctx_t c = {.B = 2, .T = 7, .H = 2};
    s_wkv_inputs(&c, &g);
    int C = c.H * NH;
    wkv7_forward_cpu(c.B, c.T, c.H, c.r, c.w, c.k, c.v, c.a, c.b, c.s0, c.y, c.sf, NULL, 4);
    /* plain double recurrence with explicit matrices: S = S G + v k^T */
    double maxerr = 0, maxs = 0;
    for (int b = 0; b < c.B; b++)
        for (int h = 0; h < c.H; h++) {
            static double S[NH * NH], Sn[NH * NH];
            for (int e = 0; e < NH * NH; e++) S[e] = c.s0[(size_t)h * NH * NH + e];
            for (int t = 0; t < c.T; t++) {
                size_t o = ((size_t)b * c.T + t) * C + (size_t)h * NH;
                for (int i = 0; i < NH; i++)
                    for (int j = 0; j < NH; j++) {
                        double s = 0;
                        for (int m = 0; m < NH; m++) {
                            double G = (m == j ? c.w[o + m] : 0) + (double)c.a[o + m] * c.b[o + j];
                            s += S[i * NH + m] * G;
                        }
                        Sn[i * NH + j] = s + (double)c.v[o + i] * c.k[o + j];
                    }
                memcpy(S, Sn, sizeof S);
                for (int i = 0; i < NH; i++) {
                    double y = 0;
                    for (int j = 0; j < NH; j++) y += S[i * NH + j] * c.r[o + j];
                    double e = fabs(y - c.y[o + i]);
                    if (e > maxerr) maxerr = e;
                }
            }
            for (int e = 0; e < NH * NH; e++) {
                double d = fabs(S[e] - c.sf[((size_t)b * c.H + h) * NH * NH + e]);
                if (d > maxs) maxs = d;
            }
        }
    printf("  max |y - y_ref| %.2e, max |S_T - ref| %.2e\n", maxerr, maxs);
    CHECK(maxerr < 1e-4 && maxs < 1e-4);
    s_wkv_free(&c);
    return 0;
}

static int test_wkv7_backward(void)
{
    st_rng_t g = {22};
    wkv_ctx_t c = {.B = 2, .T = 19, .H = 2};
    s_wkv_inputs(&c, &g);
    int C = c.H * NH;
    size_t n = (size_t)c.B * c.T * C, ns = (size_t)c.H * NH * NH;
    int ck = 4, nck = (c.T + ck - 1) / ck;
    float *ckpt = malloc((size_t)c.B * nck * ns * 4);
    wkv7_forward_cpu(c.B, c.T, c.H, c.r, c.w, c.k, c.v, c.a, c.b, c.s0, c.y, NULL, ckpt, ck);
    float *d[6];
    for (int i = 0; i < 6; i++) d[i] = malloc(n * 4);
    float *ds0 = calloc(ns, 4);
    wkv7_backward_cpu(c.B, c.T, c.H, c.r, c.w, c.k, c.v, c.a, c.b, ckpt, ck, c.py, d[0], d[1],
                      d[2], d[3], d[4], d[5], ds0);
    float *ins[6] = {c.r, c.w, c.k, c.v, c.a, c.b};
    const char *names[6] = {"dr", "dw", "dk", "dv", "da", "db"};
    int rc = 0;
    for (int i = 0; i < 6 && !rc; i++)
        rc = s_check_dir(names[i], &c, s_wkv_loss, ins[i], n, d[i], 1e-3f, 2e-3, &g);
    if (!rc) rc = s_check_dir("ds0", &c, s_wkv_loss, c.s0, ns, ds0, 1e-3f, 2e-3, &g);
    /* checkpoint spacing must not change anything: ckpt_every 1 and 16 */
    for (int ce = 1; ce <= 16 && !rc; ce += 15) {
        int nc2 = (c.T + ce - 1) / ce;
        float *ck2 = malloc((size_t)c.B * nc2 * ns * 4);
        wkv7_forward_cpu(c.B, c.T, c.H, c.r, c.w, c.k, c.v, c.a, c.b, c.s0, c.y, NULL, ck2, ce);
        float *e[6], *ds2 = calloc(ns, 4);
        for (int i = 0; i < 6; i++) e[i] = malloc(n * 4);
        wkv7_backward_cpu(c.B, c.T, c.H, c.r, c.w, c.k, c.v, c.a, c.b, ck2, ce, c.py, e[0], e[1],
                          e[2], e[3], e[4], e[5], ds2);
        for (int i = 0; i < 6; i++) CHECK(st_rel_err_ff(e[i], d[i], n) < 1e-6);
        CHECK(st_rel_err_ff(ds2, ds0, ns) < 1e-6);
        for (int i = 0; i < 6; i++) free(e[i]);
        free(ds2), free(ck2);
    }
    for (int i = 0; i < 6; i++) free(d[i]);
    free(ds0), free(ckpt);
    s_wkv_free(&c);
    return rc;
}

/* ---- GroupNorm + bonus + gate --------------------------------------------- */

typedef struct {
    int R, H;
    float *y, *lw, *lb, *r, *k, *v, *rk, *g, *out, *proj;
} gn_ctx_t;

static double s_gn_loss(void *p)
{
    gn_ctx_t *c = p;
    groupnorm_forward_cpu(c->R, c->H, NH, c->y, c->lw, c->lb, c->r, c->k, c->v, c->rk, c->g, NULL,
                          NULL, c->out);
    return s_dot(c->out, c->proj, (size_t)c->R * c->H * NH);
}

static int test_groupnorm(void)
{
    st_rng_t gg = {31};
    gn_ctx_t c = {.R = 5, .H = 2};
    int C = c.H * NH;
    size_t n = (size_t)c.R * C;
    c.y = s_randn(&gg, n, 2), c.lw = s_randn(&gg, C, 1), c.lb = s_randn(&gg, C, 1);
    c.r = s_randn(&gg, n, 1), c.k = s_randn(&gg, n, 1), c.v = s_randn(&gg, n, 1);
    c.rk = s_randn(&gg, C, 1), c.g = s_randn(&gg, n, 1), c.out = malloc(n * 4);
    c.proj = s_randn(&gg, n, 1);
    float *mean = malloc((size_t)c.R * c.H * 4), *rstd = malloc((size_t)c.R * c.H * 4);
    groupnorm_forward_cpu(c.R, c.H, NH, c.y, c.lw, c.lb, c.r, c.k, c.v, c.rk, c.g, mean, rstd,
                          c.out);
    float *dy = malloc(n * 4), *dr = calloc(n, 4), *dk = calloc(n, 4), *dv = calloc(n, 4),
          *dg = malloc(n * 4);
    groupnorm_backward_cpu(c.R, c.H, NH, c.y, c.lw, c.lb, c.r, c.k, c.v, c.rk, c.g, mean, rstd,
                           c.proj, dy, dr, dk, dv, dg);
    float *ins[5] = {c.y, c.r, c.k, c.v, c.g}, *gr[5] = {dy, dr, dk, dv, dg};
    const char *names[5] = {"dy", "dr", "dk", "dv", "dg"};
    int rc = 0;
    for (int i = 0; i < 5 && !rc; i++)
        rc = s_check_dir(names[i], &c, s_gn_loss, ins[i], n, gr[i], 1e-2f, 2e-3, &gg);
    free(c.y), free(c.lw), free(c.lb), free(c.r), free(c.k), free(c.v), free(c.rk), free(c.g),
        free(c.out), free(c.proj), free(mean), free(rstd);
    free(dy), free(dr), free(dk), free(dv), free(dg);
    return rc;
}

/* ---- channel mix ---------------------------------------------------------- */

typedef struct {
    int B, T, C, F;
    float *h, *xk_mix, *key, *value, *xk, *kpre, *act, *out, *proj;
} cm_ctx_t;

static double s_cm_loss(void *p)
{
    cm_ctx_t *c = p;
    channelmix_forward_cpu(c->B, c->T, c->C, c->F, c->h, NULL, c->xk_mix, c->key, c->value, c->xk,
                           c->kpre, c->act, c->out);
    return s_dot(c->out, c->proj, (size_t)c->B * c->T * c->C);
}

static int test_channelmix(void)
{
    st_rng_t g = {41};
    cm_ctx_t c = {.B = 2, .T = 4, .C = 32, .F = 128};
    size_t n = (size_t)c.B * c.T * c.C, nf = (size_t)c.B * c.T * c.F;
    c.h = s_randn(&g, n, 1), c.xk_mix = s_rand_range(&g, c.C, 0, 1);
    c.key = s_randn(&g, (size_t)c.F * c.C, 0.2f), c.value = s_randn(&g, (size_t)c.C * c.F, 0.1f);
    c.xk = malloc(n * 4), c.kpre = malloc(nf * 4), c.act = malloc(nf * 4), c.out = malloc(n * 4);
    c.proj = s_randn(&g, n, 1);
    s_cm_loss(&c);
    float *dact = malloc(nf * 4), *dxk = malloc(n * 4), *dh = calloc(n, 4);
    channelmix_backward_cpu(c.B, c.T, c.C, c.F, c.xk_mix, c.key, c.value, c.kpre, c.proj, dact,
                            dxk, dh);
    int rc = s_check_dir("dh", &c, s_cm_loss, c.h, n, dh, 1e-3f, 5e-3, &g);
    free(c.h), free(c.xk_mix), free(c.key), free(c.value), free(c.xk), free(c.kpre), free(c.act),
        free(c.out), free(c.proj), free(dact), free(dxk), free(dh);
    return rc;
}

/* ---- head + cross-entropy ------------------------------------------------- */

typedef struct {
    int R, C, V;
    float *x, *head, *scratch;
    int32_t *tg;
} hd_ctx_t;

static double s_hd_loss(void *p)
{
    hd_ctx_t *c = p;
    head_result_t res;
    head_ce_cpu(c->R, c->C, c->V, c->x, c->head, c->tg, NULL, NULL, c->scratch, 4, &res);
    return res.loss_sum;
}

static int test_head(void)
{
    st_rng_t g = {51};
    hd_ctx_t c = {.R = 11, .C = 32, .V = 50};
    size_t n = (size_t)c.R * c.C;
    c.x = s_randn(&g, n, 1), c.head = s_randn(&g, (size_t)c.V * c.C, 0.3f);
    c.scratch = malloc((size_t)c.R * c.V * 4);
    c.tg = malloc(c.R * sizeof(int32_t));
    for (int i = 0; i < c.R; i++) c.tg[i] = i == 3 ? -1 : (int32_t)(st_rng_uniform(&g) * c.V);
    float *logits = malloc((size_t)c.R * c.V * 4), *dx = malloc(n * 4), *dx2 = malloc(n * 4);
    head_result_t r1, r2;
    head_ce_cpu(c.R, c.C, c.V, c.x, c.head, c.tg, logits, dx, c.scratch, 4, &r1);
    head_ce_cpu(c.R, c.C, c.V, c.x, c.head, c.tg, NULL, dx2, c.scratch, c.R, &r2);
    CHECK(r1.n_targets == c.R - 1 && r2.n_targets == r1.n_targets);
    CHECK(fabs(r1.loss_sum - r2.loss_sum) < 1e-9 * (1 + fabs(r1.loss_sum)));
    CHECK(r1.n_correct == r2.n_correct);
    CHECK(st_rel_err_ff(dx, dx2, n) < 1e-6);
    /* the loss is the plain log-softmax of the returned logits */
    double ref = 0;
    int64_t cor = 0;
    for (int i = 0; i < c.R; i++) {
        if (c.tg[i] < 0) continue;
        const float *row = logits + (size_t)i * c.V;
        double mx = row[0], se = 0;
        int am = 0;
        for (int v = 1; v < c.V; v++)
            if (row[v] > mx) mx = row[v], am = v;
        for (int v = 0; v < c.V; v++) se += exp(row[v] - mx);
        ref += mx + log(se) - row[c.tg[i]];
        cor += am == c.tg[i];
    }
    CHECKF(fabs(ref - r1.loss_sum) < 1e-5 * fabs(ref), "loss %g vs %g", r1.loss_sum, ref);
    CHECK(cor == r1.n_correct);
    int rc = s_check_dir("dx", &c, s_hd_loss, c.x, n, dx, 1e-2f, 2e-3, &g);
    free(c.x), free(c.head), free(c.scratch), free(c.tg), free(logits), free(dx), free(dx2);
    return rc;
}

/* ---- DBP correlation ------------------------------------------------------ */

static int test_dbp_q(void)
{
    st_rng_t g = {61};
    wkv_ctx_t c = {.B = 3, .T = 9, .H = 2};
    s_wkv_inputs(&c, &g);
    int C = c.H * NH;
    size_t ns = (size_t)c.H * NH * NH;
    uint8_t rows[3] = {1, 0, 1};
    double *q = calloc(ns, sizeof(double)), *qref = calloc(ns, sizeof(double));
    dbp_q_cpu(c.B, c.T, c.H, c.r, c.w, c.a, c.b, rows, q);
    /* brute force: x_t = G_1 (G_2 (... (G_t r_t))) applied right to left */
    for (int b = 0; b < c.B; b++) {
        if (!rows[b]) continue;
        for (int h = 0; h < c.H; h++)
            for (int t = 0; t < c.T; t++) {
                double x[NH], xn[NH];
                size_t o = ((size_t)b * c.T + t) * C + (size_t)h * NH;
                for (int j = 0; j < NH; j++) x[j] = c.r[o + j];
                for (int s = t; s >= 0; s--) {
                    size_t os = ((size_t)b * c.T + s) * C + (size_t)h * NH;
                    double bx = 0;
                    for (int j = 0; j < NH; j++) bx += c.b[os + j] * x[j];
                    for (int j = 0; j < NH; j++) xn[j] = c.w[os + j] * x[j] + c.a[os + j] * bx;
                    memcpy(x, xn, sizeof x);
                }
                for (int i = 0; i < NH; i++)
                    for (int j = 0; j < NH; j++) qref[(size_t)h * NH * NH + i * NH + j] += x[i] * x[j];
            }
    }
    double num = 0, den = 0;
    for (size_t e = 0; e < ns; e++) num += (q[e] - qref[e]) * (q[e] - qref[e]), den += qref[e] * qref[e];
    printf("  rel err of Q %.2e\n", sqrt(num / den));
    CHECK(sqrt(num / den) < 1e-6);
    /* Q is also what the gradient sees: dL/dS0 = sum_t g_t x_t^T */
    free(q), free(qref);
    s_wkv_free(&c);
    return 0;
}


/* ---- row/column-blocked sgemm ------------------------------------------- */

static int test_sgemm_blocks(void)
{
    st_rng_t g = {71};
    /* tall (split by rows) and short-wide (split by columns), both op(B) */
    int shapes[2][3] = {{700, 40, 160}, {9, 1000, 480}};
    for (int sh = 0; sh < 2; sh++)
        for (int tb = 0; tb < 2; tb++) {
            int M = shapes[sh][0], N = shapes[sh][1], K = shapes[sh][2];
            float *A = s_randn(&g, (size_t)M * K, 1), *Bm = s_randn(&g, (size_t)N * K, 1);
            float *Cm = s_randn(&g, (size_t)M * N, 1), *C0 = malloc((size_t)M * N * 4);
            memcpy(C0, Cm, (size_t)M * N * 4);
            sgemm_rows_cpu(tb, M, N, K, 0.5f, A, K, Bm, tb ? K : N, 2.0f, Cm, N);
            double worst = 0;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double ref = 2.0 * C0[(size_t)i * N + j];
                    for (int k = 0; k < K; k++)
                        ref += 0.5 * A[(size_t)i * K + k] *
                               (tb ? Bm[(size_t)j * K + k] : Bm[(size_t)k * N + j]);
                    double e = fabs(ref - Cm[(size_t)i * N + j]);
                    if (e > worst) worst = e;
                }
            CHECKF(worst < 1e-4, "M %d N %d K %d transB %d: max error %g", M, N, K, tb, worst);
            free(A), free(Bm), free(Cm), free(C0);
        }
    return 0;
}

static const st_test_t s_tests[] = {
    {"layernorm", test_layernorm},
    {"tokenshift", test_tokenshift},
    {"lora", test_lora},
    {"timemix", test_timemix},
    {"wkv7_forward", test_wkv7_forward},
    {"wkv7_backward", test_wkv7_backward},
    {"groupnorm", test_groupnorm},
    {"channelmix", test_channelmix},
    {"head", test_head},
    {"dbp_q", test_dbp_q},
    {"sgemm_blocks", test_sgemm_blocks},
    {NULL, NULL},
};

int main(int argc, char **argv) { return st_test_main(argc, argv, s_tests); }
