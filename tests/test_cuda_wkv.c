/*
 * test_cuda_wkv.c - the CUDA WKV7 kernels (kernels/cuda/wkv7.cuh) against an
 * independent float64 reference (kernels/dev/wkv7_ref.h), which is itself
 * checked against finite differences of the forward first.
 *
 * Every run draws fresh random inputs (the seed is printed; STATETUNE_SEED
 * replays it), shaped like the model's (w in [0.545, 1), a = -kk, b = kk*icl),
 * in three regimes (typical, half of the w near 1, all w near 0.545), with T
 * not a multiple of the 16-token chunk and T below it. Every output buffer is
 * poisoned with NaN before the call, so an element the kernel forgets to
 * write fails the comparison. Tolerances are by precision: fp32 inputs, and
 * bf16 inputs (the reference sees the same bf16-rounded inputs; the kernel's
 * outputs are bf16 too, except the decay w and its gradient, fp32 in both).
 *
 * CTest label `gpu`: needs a CUDA device; without one every test skips.
 */
#include "harness.h"
#include "cuda_test.h"

#include "common/st_err.h"
#include "common/st_half.h"
#include "kernels/cuda/wkv7.cuh"
#include "kernels/dev/wkv7_ref.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

#define N WKV7_REF_N

/* ---- the reference, checked against finite differences ----------------- */

static double s_objective(int T, const float *r, const float *w, const float *k, const float *v,
                          const float *a, const float *b, const float *s0, const float *dy,
                          double *ybuf)
{
    wkv7_ref_forward(1, T, 1, r, w, k, v, a, b, s0, ybuf, NULL);
    double sum = 0;
    for (int i = 0; i < T * N; i++) sum += ybuf[i] * dy[i];
    return sum;
}

/* The reference's adjoint against central differences of sum(y * dy), in
 * double on float inputs (perturbations of 1e-3 on O(1) values). */
static int test_reference_gradients(void)
{
    const int T = 6;
    size_t n = (size_t)T * N;
    float *in[8];
    for (int i = 0; i < 8; i++) in[i] = malloc(sizeof(float) * (i == 6 ? N * N : n));
    float *r = in[0], *w = in[1], *k = in[2], *v = in[3], *a = in[4], *b = in[5], *s0 = in[6], *dy = in[7];
    uint64_t seed = st_test_seed();
    wkv7_ref_random_inputs(1, T, 1, seed, 0, r, w, k, v, a, b, s0, dy);
    double *g[7], *ybuf = malloc(sizeof(double) * n);
    for (int i = 0; i < 7; i++) g[i] = malloc(sizeof(double) * (i == 6 ? N * N : n));
    wkv7_ref_backward(1, T, 1, r, w, k, v, a, b, s0, dy, g[0], g[1], g[2], g[3], g[4], g[5], g[6]);
    const char *names[7] = {"r", "w", "k", "v", "a", "b", "s0"};
    uint64_t s = seed + 17;
    double worst = 0;
    for (int which = 0; which < 7; which++) {
        size_t len = which == 6 ? N * N : n;
        for (int rep = 0; rep < 6; rep++) {
            size_t idx = (size_t)(wkv7_ref_uniform(&s) * len);
            float keep = in[which][idx];
            const float eps = 1e-2f;
            in[which][idx] = keep + eps;
            double fp = s_objective(T, r, w, k, v, a, b, s0, dy, ybuf);
            in[which][idx] = keep - eps;
            double fm = s_objective(T, r, w, k, v, a, b, s0, dy, ybuf);
            in[which][idx] = keep;
            double fd = (fp - fm) / ((double)(keep + eps) - (double)(keep - eps));
            double an = g[which][idx];
            double e = fabs(fd - an) / (fabs(an) + 1e-3);
            if (e > worst) worst = e;
            CHECKF(e < 1e-3, "d/d%s[%zu]: adjoint %.9g vs finite difference %.9g", names[which], idx, an, fd);
        }
    }
    printf("reference adjoint vs finite differences: worst relative gap %.2e\n", worst);
    for (int i = 0; i < 8; i++) free(in[i]);
    for (int i = 0; i < 7; i++) free(g[i]);
    free(ybuf);
    return 0;
}

/* ---- CUDA against the reference ---------------------------------------- */

typedef struct {
    double y, s_final, grad[6], ds0;
} errs_t;

/* Runs both passes of one precision on fresh inputs, with a checkpoint
 * every `every` tokens, and fills e; returns nonzero on a CUDA failure
 * (reported). */
static int s_compare(int algo, int balgo, int B, int T, int H, int regime, int bf16, int every, uint64_t seed,
                     errs_t *e)
{
    size_t n = (size_t)B * T * H * N, ns = (size_t)H * N * N, nf = (size_t)B * H * N * N;
    float *h_in[8];
    for (int i = 0; i < 8; i++) h_in[i] = malloc(sizeof(float) * (i == 6 ? ns : n));
    wkv7_ref_random_inputs(B, T, H, seed, regime, h_in[0], h_in[1], h_in[2], h_in[3], h_in[4],
                           h_in[5], h_in[6], h_in[7]);
    if (bf16) /* the reference sees exactly what the kernel sees (w stays fp32) */
        for (int i = 0; i < 8; i++)
            if (i != 6 && i != 1)
                for (size_t x = 0; x < n; x++) h_in[i][x] = st_bf16_to_f32(st_f32_to_bf16(h_in[i][x]));

    double *ry = malloc(sizeof(double) * n), *rsf = malloc(sizeof(double) * nf);
    double *rg[7];
    for (int i = 0; i < 7; i++) rg[i] = malloc(sizeof(double) * (i == 6 ? ns : n));
    wkv7_ref_forward(B, T, H, h_in[0], h_in[1], h_in[2], h_in[3], h_in[4], h_in[5], h_in[6], ry, rsf);
    wkv7_ref_backward(B, T, H, h_in[0], h_in[1], h_in[2], h_in[3], h_in[4], h_in[5], h_in[6], h_in[7],
                      rg[0], rg[1], rg[2], rg[3], rg[4], rg[5], rg[6]);

    /* device buffers: 7 activation inputs (r w k v a b dy), y, 6 grads */
    /* element size of device buffer i: inputs r w k v a b dy, y, dr dw dk dv da db */
#define ESZ(i) ((bf16 && (i) != 1 && (i) != 9) ? 2 : 4)
    size_t esz = 4;
    void *d_act[14];
    float *d_s0, *d_sf, *d_ck, *d_sa, *d_ds0;
    int rc = 0;
    char err[ST_ERR_LEN];
    for (int i = 0; i < 14; i++) cudaMalloc(&d_act[i], ESZ(i) * n);
    cudaMalloc((void **)&d_s0, 4 * ns);
    cudaMalloc((void **)&d_sf, 4 * nf);
    cudaMalloc((void **)&d_ck, 4 * wkv7_cuda_ckpt_floats_every(B, T, H, every));
    cudaMalloc((void **)&d_sa, 4 * wkv7_cuda_sa_floats(B, T, H));
    cudaMalloc((void **)&d_ds0, 4 * ns);
    void *stage = malloc(esz * n);
    const int src[7] = {0, 1, 2, 3, 4, 5, 7};
    for (int i = 0; i < 7; i++) {
        if (ESZ(i) == 2) {
            uint16_t *p = stage;
            for (size_t x = 0; x < n; x++) p[x] = st_f32_to_bf16(h_in[src[i]][x]);
        } else {
            memcpy(stage, h_in[src[i]], 4 * n);
        }
        cudaMemcpy(d_act[i], stage, ESZ(i) * n, cudaMemcpyHostToDevice);
    }
    cudaMemcpy(d_s0, h_in[6], 4 * ns, cudaMemcpyHostToDevice);
    /* poison: all-ones bits are NaN in fp32 and in bf16 */
    for (int i = 7; i < 14; i++) cudaMemset(d_act[i], 0xff, ESZ(i) * n);
    cudaMemset(d_sf, 0xff, 4 * nf);
    cudaMemset(d_ck, 0xff, 4 * wkv7_cuda_ckpt_floats_every(B, T, H, every));
    cudaMemset(d_sa, 0xff, 4 * wkv7_cuda_sa_floats(B, T, H));
    cudaMemset(d_ds0, 0, 4 * ns); /* accumulated: starts at zero by contract */

    void **A = d_act;
    if (bf16) {
        rc = algo < 0 ? wkv7_forward_cuda_bf16(B, T, H, A[0], A[1], A[2], A[3], A[4], A[5], d_s0, A[7], d_sf,
                                               d_ck, every, d_sa, 0, err)
                      : wkv7_forward_cuda_algo(algo, 1, B, T, H, A[0], A[1], A[2], A[3], A[4], A[5], d_s0, A[7],
                                               d_sf, d_ck, every, d_sa, 0, err);
        if (!rc && balgo < 0)
            rc = wkv7_backward_cuda_bf16(B, T, H, A[0], A[1], A[2], A[3], A[4], A[5], d_ck,
                                         every, d_sa, A[6], A[8], A[9], A[10], A[11],
                                         A[12], A[13], d_ds0, 0, err);
        else if (!rc)
            rc = wkv7_backward_cuda_algo(balgo, 1, B, T, H, A[0], A[1], A[2], A[3], A[4], A[5], d_ck,
                                         every, d_sa, A[6], A[8], A[9], A[10], A[11],
                                         A[12], A[13], d_ds0, 0, err);
    } else {
        rc = algo < 0 ? wkv7_forward_cuda(B, T, H, A[0], A[1], A[2], A[3], A[4], A[5], d_s0, A[7], d_sf, d_ck,
                                          every, d_sa, 0, err)
                      : wkv7_forward_cuda_algo(algo, 0, B, T, H, A[0], A[1], A[2], A[3], A[4], A[5], d_s0, A[7],
                                               d_sf, d_ck, every, d_sa, 0, err);
        if (!rc && balgo < 0)
            rc = wkv7_backward_cuda(B, T, H, A[0], A[1], A[2], A[3], A[4], A[5], d_ck,
                                    every, d_sa, A[6], A[8], A[9], A[10], A[11], A[12],
                                    A[13], d_ds0, 0, err);
        else if (!rc)
            rc = wkv7_backward_cuda_algo(balgo, 0, B, T, H, A[0], A[1], A[2], A[3], A[4], A[5], d_ck,
                                         every, d_sa, A[6], A[8], A[9], A[10], A[11], A[12],
                                         A[13], d_ds0, 0, err);
    }
    cudaError_t ce = cudaDeviceSynchronize();
    if (rc || ce != cudaSuccess) {
        fprintf(stderr, "cuda wkv7 failed: %s\n", rc ? err : cudaGetErrorString(ce));
        rc = 1;
        goto cleanup;
    }
    float *got = malloc(sizeof(float) * (nf > n ? nf : n));
#define FETCH(i)                                                                         \
    do {                                                                                 \
        cudaMemcpy(stage, d_act[i], ESZ(i) * n, cudaMemcpyDeviceToHost);                 \
        for (size_t x = 0; x < n; x++)                                                   \
            got[x] = ESZ(i) == 2 ? st_bf16_to_f32(((uint16_t *)stage)[x]) : ((float *)stage)[x]; \
    } while (0)
    FETCH(7);
    e->y = wkv7_ref_rel(got, ry, n);
    printf("    y first values  cuda % .6f % .6f % .6f   ref % .6f % .6f % .6f\n", got[0], got[1],
           got[2], ry[0], ry[1], ry[2]);
    for (int g = 0; g < 6; g++) {
        FETCH(8 + g);
        e->grad[g] = wkv7_ref_rel(got, rg[g], n);
        if (g == 1)
            printf("    dw first values cuda % .6f % .6f % .6f   ref % .6f % .6f % .6f\n", got[0],
                   got[1], got[2], rg[1][0], rg[1][1], rg[1][2]);
    }
    cudaMemcpy(got, d_sf, 4 * nf, cudaMemcpyDeviceToHost);
    e->s_final = wkv7_ref_rel(got, rsf, nf);
    cudaMemcpy(got, d_ds0, 4 * ns, cudaMemcpyDeviceToHost);
    e->ds0 = wkv7_ref_rel(got, rg[6], ns);
    printf("    ds0 first values cuda % .6f % .6f % .6f   ref % .6f % .6f % .6f\n", got[0], got[1],
           got[2], rg[6][0], rg[6][1], rg[6][2]);
    double maxabs = 0;
    for (size_t x = 0; x < ns; x++) {
        double d = fabs(got[x] - rg[6][x]);
        if (!(d <= maxabs)) maxabs = d;
    }
    printf("    ds0 max abs error %.3e\n", maxabs);
    free(got);
#undef FETCH
#undef ESZ
cleanup:
    for (int i = 0; i < 14; i++) cudaFree(d_act[i]);
    cudaFree(d_s0); cudaFree(d_sf); cudaFree(d_ck); cudaFree(d_sa); cudaFree(d_ds0);
    free(stage); free(ry); free(rsf);
    for (int i = 0; i < 7; i++) free(rg[i]);
    for (int i = 0; i < 8; i++) free(h_in[i]);
    return rc;
}

/* Bounds per output: y, s_final, ds0, then dr dw dk dv da db. */
typedef struct {
    double y, s_final, ds0, grad[6];
} tols_t;

/* With a checkpoint every `every` tokens; the pair interval adds chunk
 * counts the per-chunk cases miss: 2 (a pair whose second chunk is one
 * token), 3 (T = 48, a multiple of 16 but not of 32) and exactly one pair;
 * the others have 3, 1, 4 and 13 chunks (odd counts: a last pair of one
 * chunk). B 16 x H 12 = 192 heads is past an H100's 132 SMs with a last
 * wave under 7/8 full, so the warp-specialized forward and pass 1 run their
 * two-CTA-per-SM kernels there (wkv7_chunk.cu's one_cta_per_sm); every
 * smaller case runs the one-CTA-per-SM ones. */
static int s_run_tols_every(int algo, int balgo, int bf16, int every, const tols_t *tol)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    const uint64_t seed = st_test_seed();
    const struct { int B, T, H, regime; } cases[] = {
        {2, 37, 3, 0}, {2, 37, 3, 1}, {2, 37, 3, 2}, {1, 5, 1, 0}, {3, 64, 2, 0}, {1, 200, 2, 2}, {16, 37, 12, 1},
        {2, 17, 2, 2}, {2, 48, 3, 0}, {1, 32, 2, 1},
    };
    const size_t ncase = sizeof cases / sizeof cases[0] - (every == WKV7_CUDA_CHUNK ? 3 : 0);
    const char *gname[6] = {"dr", "dw", "dk", "dv", "da", "db"};
    for (size_t c = 0; c < ncase; c++) {
        errs_t e = {0};
        printf("%s B=%d T=%d H=%d regime %d, a checkpoint every %d tokens:\n", bf16 ? "bf16" : "fp32", cases[c].B,
               cases[c].T, cases[c].H, cases[c].regime, every);
        if (s_compare(algo, balgo, cases[c].B, cases[c].T, cases[c].H, cases[c].regime, bf16, every, seed + c, &e))
            return 1;
        printf("    rel err: y %.2e  s_final %.2e  ds0 %.2e  dr %.2e dw %.2e dk %.2e dv %.2e da %.2e db %.2e\n",
               e.y, e.s_final, e.ds0, e.grad[0], e.grad[1], e.grad[2], e.grad[3], e.grad[4], e.grad[5]);
        CHECKF(e.y <= tol->y, "y rel err %.3e > %.1e", e.y, tol->y);
        CHECKF(e.s_final <= tol->s_final, "s_final rel err %.3e > %.1e", e.s_final, tol->s_final);
        CHECKF(e.ds0 <= tol->ds0, "ds0 rel err %.3e > %.1e", e.ds0, tol->ds0);
        for (int g = 0; g < 6; g++)
            CHECKF(e.grad[g] <= tol->grad[g], "%s rel err %.3e > %.1e", gname[g], e.grad[g], tol->grad[g]);
    }
    return 0;
}

static int s_run_tols(int algo, int balgo, int bf16, const tols_t *tol)
{
    return s_run_tols_every(algo, balgo, bf16, WKV7_CUDA_CHUNK, tol);
}

/* Tolerances, set from the first measurement on an H100 (2026-11-26) and
 * never loosened: tol_exact for what does not depend on the stepped-back
 * state (y, s_final, ds0, dk, dv, db), tol_back for dr, dw, da, which do.
 * y and the grads are bf16 outputs in the bf16 variant: their own rounding
 * (2^-9) sets the floor there (5e-3); dw is fp32 (but its inputs dy, S carry
 * bf16 rounding): 1e-3. */
static int s_run_cases(int algo, int balgo, int bf16, double tol_exact, double tol_back)
{
    const double tol_out = bf16 ? 5e-3 : tol_exact;
    tols_t t = {tol_out, tol_exact, tol_exact, {tol_back, bf16 ? 1e-3 : tol_back, tol_out, tol_out, tol_back, tol_out}};
    return s_run_tols(algo, balgo, bf16, &t);
}

/* fp32 in and out: rounding only, measured 1e-7 (y, s_final, ds0, dk, dv,
 * db) and 4e-6 typical / 3e-4 with every w near 0.545 (dr, dw, da: the
 * step-back S_{t-1} = (S_t - ...) / w amplifies rounding by up to 1.83^15
 * within a 16-token chunk, as in the official kernel). */
static int test_fp32(void) { return s_run_cases(-1, -1, 0, 1e-5, 1e-3); }

/* The bf16 launchers' default (AUTO: the one-product tf32 pair TCWS1 +
 * CPROD1WSSA since 2026-11-27, wkv7_cuda_auto_algo_prec) against the bounds of
 * that class (s_tf32_bf16 below); the accurate class's bf16 bounds (1e-5 on
 * the fp32 s_final and dS0) stay with the accurate algorithms (bf16_tcws,
 * bf16_tcws_cprod, ...). */
static const tols_t s_tf32_bf16 = {5e-3, 1e-3, 1e-3, {5e-3, 4e-3, 5e-3, 5e-3, 5e-3, 5e-3}};
/* at the interval the default launchers are meant to get (wkv7_cuda_ckpt_every) */
static int test_bf16(void) { return s_run_tols_every(-1, -1, 1, wkv7_cuda_ckpt_every(1), &s_tf32_bf16); }
/* AUTO at the pair interval, whichever the default */
static int test_bf16_ckpt_pair(void) { return s_run_tols_every(-1, -1, 1, WKV7_CUDA_CKPT_PAIR, &s_tf32_bf16); }

/* The algorithms by name, whichever the launchers above default to
 * (wkv7.cuh): the official pair (recurrent forward and backward) and the new
 * pair (chunked forward, split backward), same tolerances, so that any of
 * them can be the default. */
static int test_fp32_recurrent(void) { return s_run_cases(WKV7_FWD_RECURRENT, WKV7_BWD_RECURRENT, 0, 1e-5, 1e-3); }
static int test_bf16_recurrent(void) { return s_run_cases(WKV7_FWD_RECURRENT, WKV7_BWD_RECURRENT, 1, 1e-5, 5e-3); }
static int test_bf16_chunked(void) { return s_run_cases(WKV7_FWD_CHUNKED, WKV7_BWD_SPLIT, 1, 1e-5, 5e-3); }
static int test_fp32_chunked(void) { return s_run_cases(WKV7_FWD_CHUNKED, WKV7_BWD_SPLIT, 0, 1e-5, 1e-3); }
/* The tensor-core pair (3xTF32 forward, two-pass chunked backward), same
 * tolerances; then each half beside a recurrent partner (the checkpoints and
 * sa are shared formats), and the backward with segments of 1 and 3 chunks
 * (T = 200 has 13 chunks: a short last segment). Measured margins (H100,
 * 2026-11-27): after the tensor-core forward, regime 2 (every w near 0.545)
 * gives dr, dw, da up to 9e-4 in fp32 against 1e-3 and dw up to 7.6e-4 in
 * bf16 against 1e-3 (the step-back amplifies the forward's 3xTF32 rounding
 * by up to 1/p_16); that is why the fp32 launchers keep the recurrent
 * forward (wkv7.cuh). In fp32 that pairing is outside the fp32 class: a
 * fresh seed (1795750534, regime 2) gave da 1.025e-3 on 2026-11-27. So in
 * fp32 a tensor-core forward is tested with the chunk-product backward (no
 * step-back; the pair an fp32 user of a tensor-core forward should run),
 * and the step-back backwards after the recurrent forward, as the fp32
 * launchers pair them; bf16 keeps both pairings (its bounds are the bf16
 * outputs' own rounding). */
static int test_bf16_tc(void) { return s_run_cases(WKV7_FWD_TC, WKV7_BWD_CHUNKED, 1, 1e-5, 5e-3); }
static int test_fp32_tc_cprod(void) { return s_run_cases(WKV7_FWD_TC, WKV7_BWD_CPROD, 0, 1e-5, 1e-3); }
static int test_bf16_tc_fwd_recurrent_bwd(void)
{
    return s_run_cases(WKV7_FWD_TC, WKV7_BWD_RECURRENT, 1, 1e-5, 5e-3);
}
static int test_fp32_recurrent_fwd_chunked_bwd(void)
{
    return s_run_cases(WKV7_FWD_RECURRENT, WKV7_BWD_CHUNKED, 0, 1e-5, 1e-3);
}
/* The warp-specialized pair. */
static int test_bf16_tcws(void) { return s_run_cases(WKV7_FWD_TCWS, WKV7_BWD_CHUNKED_WS, 1, 1e-5, 5e-3); }
static int test_fp32_recurrent_fwd_chunked_ws_bwd(void)
{
    return s_run_cases(WKV7_FWD_RECURRENT, WKV7_BWD_CHUNKED_WS, 0, 1e-5, 1e-3);
}
static int test_bf16_chunked_bwd_segments(void)
{
    int rc = s_run_cases(WKV7_FWD_RECURRENT, WKV7_BWD_CHUNKED_SEG(1), 1, 1e-5, 5e-3);
    return rc ? rc : s_run_cases(WKV7_FWD_RECURRENT, WKV7_BWD_CHUNKED_SEG(3), 1, 1e-5, 5e-3);
}

/* The chunk-product backward (CPROD: no step-back, 3xTF32 products) keeps
 * the existing tolerances of its precision after any forward, including the
 * tensor-core one whose checkpoints the step-back amplified (above). */
static int test_fp32_tcws_cprod(void) { return s_run_cases(WKV7_FWD_TCWS, WKV7_BWD_CPROD, 0, 1e-5, 1e-3); }
static int test_bf16_tcws_cprod(void) { return s_run_cases(WKV7_FWD_TCWS, WKV7_BWD_CPROD, 1, 1e-5, 5e-3); }
static int test_fp32_recurrent_cprod(void) { return s_run_cases(WKV7_FWD_RECURRENT, WKV7_BWD_CPROD, 0, 1e-5, 1e-3); }
/* Reduced-precision classes, each with its own bounds (never the ones
 * above), set from the first measurement (H100, 2026-11-27 01:51 UTC, six
 * cases per class, docs/performance.md 1.3) with a margin of about 2.5x.
 * One tf32 product (TCWS1 + CPROD1, then CPROD1WSS, then CPROD1WSSA: the
 * same bits as CPROD1WSS, 1.4; notes 3.5 predicted 4e-4 on y and 2.5e-4 on
 * ds0): measured fp32 y 4.1e-4, s_final 2.8e-4, ds0 3.1e-4, dr/dk/dv
 * 4.2e-4, da/db 6.3e-4, dw 1.3e-3 (every w near 0.545); TCWS1 + CPROD1WSSA
 * (1.4, 02:18 UTC) fp32 y 4.0e-4, s_final 2.8e-4, ds0 2.9e-4, dr 4.1e-4,
 * dw 1.3e-3, dk 4.7e-4, dv 4.0e-4, da 6.3e-4, db 6.4e-4. In bf16 the bf16
 * outputs' own rounding (1.7e-3) dominates, so those keep 5e-3. These are
 * the bf16 launchers' AUTO pair by name (test_bf16 runs it through AUTO). */
static const tols_t s_tf32_fp32 = {1e-3, 1e-3, 1e-3, {1e-3, 4e-3, 1e-3, 1e-3, 2e-3, 2e-3}};
static int test_fp32_tf32_class(void) { return s_run_tols(WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, 0, &s_tf32_fp32); }
static int test_bf16_tf32_class(void) { return s_run_tols(WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, 1, &s_tf32_bf16); }
/* The same pair with a checkpoint every two chunks (WKV7_CUDA_CKPT_PAIR):
 * pass 2 recomputes every other start state and end gradient, so the
 * rounding differs from the per-chunk form; the class's bounds, unchanged. */
static int test_fp32_tf32_class_ckpt_pair(void)
{
    return s_run_tols_every(WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, 0, WKV7_CUDA_CKPT_PAIR, &s_tf32_fp32);
}
static int test_bf16_tf32_class_ckpt_pair(void)
{
    return s_run_tols_every(WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, 1, WKV7_CUDA_CKPT_PAIR, &s_tf32_bf16);
}

/* The bf16-operand forward (TCWSB; notes 3.5: about 3e-3 on y; notes
 * section 4 bounds such a kernel at 1e-2 on y and ds0). Not in AUTO: 3%
 * faster than TCWS1 in the forward and about 8x less accurate
 * (docs/performance.md 1.3). Its bf16-operand backward (CPRODB) was
 * removed (slower than the tf32 ones), so it is checked after the
 * chunk-product backwards, which do not step back (after a step-back
 * backward its dr, dw, da are off by 5e-2 to 11). */
/* The bf16-operand forward with the accurate chunk-product backward:
 * measured y 3.0e-3, s_final 1.7e-3, ds0 5e-7, dw 1.0e-3, db 3.4e-3. */
static int test_bf16_bf16ops_fwd_cprod(void)
{
    const tols_t t = {1e-2, 5e-3, 1e-5, {1e-2, 5e-3, 1e-2, 1e-2, 1e-2, 1e-2}};
    return s_run_tols(WKV7_FWD_TCWSB, WKV7_BWD_CPROD, 1, &t);
}
/* The same forward with the bf16 launchers' AUTO backward (CPROD1WSSA, one
 * tf32 product): the forward's bounds above, dw that of the tf32 class
 * (the backward's 1.3e-3 after TCWS1, 1.0e-3 after TCWSB with CPROD). Not
 * measured on a GPU yet: the bounds are the two classes' own. */
static const tols_t s_bf16ops_tf32 = {1e-2, 5e-3, 1e-3, {1e-2, 4e-3, 1e-2, 1e-2, 1e-2, 1e-2}};
static int test_bf16_bf16ops_fwd_cprod1wssa(void)
{
    return s_run_tols(WKV7_FWD_TCWSB, WKV7_BWD_CPROD1WSSA, 1, &s_bf16ops_tf32);
}
/* ... and with a checkpoint every two chunks (the same forward kernel) */
static int test_bf16_bf16ops_fwd_cprod1wssa_ckpt_pair(void)
{
    return s_run_tols_every(WKV7_FWD_TCWSB, WKV7_BWD_CPROD1WSSA, 1, WKV7_CUDA_CKPT_PAIR, &s_bf16ops_tf32);
}

/* The automatic choice (no GPU needed), as measured on an H100 (132 SMs,
 * docs/performance.md 1.2): the tensor-core forward everywhere; the
 * recurrent backward where the grid is large (SPEC's (8, 4096, 64): 512
 * heads), the split one at (8, 1024, 32) (256), the chunked one at the
 * engine's shapes (8 x 12 and 8 x 16 heads) and at (16, 512, 12); and more
 * SMs never turn a newer backward into an older one (recurrent < split <
 * chunked). */
static int s_bwd_rank(int algo)
{
    return algo == WKV7_BWD_CHUNKED ? 2 : algo == WKV7_BWD_SPLIT ? 1 : 0;
}
static int test_auto_rule(void)
{
    CHECK(wkv7_cuda_auto_algo(1, 8, 64, 132) == WKV7_FWD_TCWS);
    CHECK(wkv7_cuda_auto_algo(1, 8, 12, 132) == WKV7_FWD_TCWS);
    CHECK(wkv7_cuda_auto_algo(0, 8, 64, 132) == WKV7_BWD_RECURRENT);
    CHECK(wkv7_cuda_auto_algo(0, 8, 32, 132) == WKV7_BWD_SPLIT);
    CHECK(wkv7_cuda_auto_algo(0, 16, 12, 132) == WKV7_BWD_CHUNKED);
    CHECK(wkv7_cuda_auto_algo(0, 8, 12, 132) == WKV7_BWD_CHUNKED);
    CHECK(wkv7_cuda_auto_algo(0, 8, 16, 132) == WKV7_BWD_CHUNKED);
    /* by precision: fp32 as above; bf16 the tf32 pair everywhere (a TCWS1
     * forward must never meet a step-back backward) */
    CHECK(wkv7_cuda_auto_algo_prec(1, 0, 8, 12, 132) == wkv7_cuda_auto_algo(1, 8, 12, 132));
    CHECK(wkv7_cuda_auto_algo_prec(0, 0, 8, 64, 132) == WKV7_BWD_RECURRENT);
    /* since 1.4 with pass 2 by cp.async (bit-identical to 1.3's CPROD1WSS,
     * docs/performance.md 1.4) */
    for (int bh = 1; bh <= 1024; bh *= 2) {
        CHECK(wkv7_cuda_auto_algo_prec(1, 1, 1, bh, 132) == WKV7_FWD_TCWS1);
        CHECK(wkv7_cuda_auto_algo_prec(0, 1, 1, bh, 132) == WKV7_BWD_CPROD1WSSA);
    }
    for (int bh = 1; bh <= 1024; bh *= 2)
        for (int sms = 16; sms < 256; sms += 16)
            CHECK(s_bwd_rank(wkv7_cuda_auto_algo(0, 1, bh, sms + 16)) >= s_bwd_rank(wkv7_cuda_auto_algo(0, 1, bh, sms)));
    return 0;
}

/* Bad shapes come back as ST_EINVAL with a sentence, never a launch. */
static int test_refuses_bad_shapes(void)
{
    char err[ST_ERR_LEN] = "";
    float dummy = 0;
    int rc = wkv7_forward_cuda(1, 0, 1, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy,
                               &dummy, NULL, &dummy, WKV7_CUDA_CHUNK, &dummy, 0, err);
    CHECK(rc == ST_EINVAL);
    CHECK(strstr(err, "positive") != NULL);
    rc = wkv7_forward_cuda(1, 4, 1, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy,
                           NULL, &dummy, 8, &dummy, 0, err);
    CHECK(rc == ST_EINVAL);
    CHECK(strstr(err, "ckpt_every") != NULL);
    return 0;
}

/* The ids of the removed variants (and ids never defined) come back as
 * ST_EINVAL with a sentence naming the id, before anything is enqueued:
 * the pointers here are host dummies, so a launch or copy would fail with
 * another code (no GPU needed). The kept ids are all still accepted by
 * wkv7_cuda_auto_algo_prec's picks (auto_rule). */
/* The two ways the warp-specialized forward and pass 1 stage their inputs,
 * TMA (the default for 16-byte aligned operands) and per-thread cp.async
 * (STATETUNE_WKV7_TMA=0, or unaligned operands), must give the same bits
 * (docs/performance.md 1.5). T = 100 is not a multiple of 16: the last
 * chunk's TMA boxes read past T into the next batch row, and past the
 * tensor's end for the last row (zero-filled); both must stay unused. Every
 * output is compared bit for bit except dS0, which pass 1 sums over batch
 * rows with atomics in either order (1e-6 relative). */
/* out_off: dr, dk, da and db start that many elements into their
 * allocations (1: not 16-byte aligned, which pass 2's vector stores need) */
/* every: the checkpoint interval. Output bytes: y, dr .. db, s_final, the
 * checkpoints (with the s0 copy), sa. */
static int s_stage_run(int algo, int balgo, int bf16, int tma, int out_off, int every, int B, int T, int H,
                       uint64_t seed, unsigned char **bytes, size_t *nbytes, float **ds0)
{
    setenv("STATETUNE_WKV7_TMA", tma ? "1" : "0", 1);
    const size_t n = (size_t)B * T * H * N, ns = (size_t)H * N * N, nf = (size_t)B * H * N * N;
    const size_t nck = wkv7_cuda_ckpt_floats_every(B, T, H, every), nsa = wkv7_cuda_sa_floats(B, T, H);
    float *h_in[8];
    for (int i = 0; i < 8; i++) h_in[i] = malloc(sizeof(float) * (i == 6 ? ns : n));
    wkv7_ref_random_inputs(B, T, H, seed, 2, h_in[0], h_in[1], h_in[2], h_in[3], h_in[4], h_in[5], h_in[6],
                           h_in[7]);
#define ESZ(i) ((bf16 && (i) != 1 && (i) != 9) ? 2 : 4)
#define OFF(i) (((i) == 8 || (i) == 10 || (i) == 12 || (i) == 13) ? (size_t)out_off * ESZ(i) : 0)
    void *d[14], *alloc[14];
    float *d_s0, *d_sf, *d_ck, *d_sa, *d_ds0;
    for (int i = 0; i < 14; i++) {
        cudaMalloc(&alloc[i], ESZ(i) * (n + 8));
        d[i] = (char *)alloc[i] + OFF(i);
    }
    cudaMalloc((void **)&d_s0, 4 * ns);
    cudaMalloc((void **)&d_sf, 4 * nf);
    cudaMalloc((void **)&d_ck, 4 * nck);
    cudaMalloc((void **)&d_sa, 4 * nsa);
    cudaMalloc((void **)&d_ds0, 4 * ns);
    void *stage = malloc(4 * n);
    const int src[7] = {0, 1, 2, 3, 4, 5, 7};
    for (int i = 0; i < 7; i++) {
        if (ESZ(i) == 2)
            for (size_t x = 0; x < n; x++) ((uint16_t *)stage)[x] = st_f32_to_bf16(h_in[src[i]][x]);
        else
            memcpy(stage, h_in[src[i]], 4 * n);
        cudaMemcpy(d[i], stage, ESZ(i) * n, cudaMemcpyHostToDevice);
    }
    cudaMemcpy(d_s0, h_in[6], 4 * ns, cudaMemcpyHostToDevice);
    for (int i = 7; i < 14; i++) cudaMemset(d[i], 0xff, ESZ(i) * n);
    cudaMemset(d_sf, 0xff, 4 * nf);
    cudaMemset(d_ck, 0xff, 4 * nck);
    cudaMemset(d_sa, 0xff, 4 * nsa);
    cudaMemset(d_ds0, 0, 4 * ns);
    char err[ST_ERR_LEN];
    int rc = wkv7_forward_cuda_algo(algo, bf16, B, T, H, d[0], d[1], d[2], d[3], d[4], d[5], d_s0, d[7], d_sf, d_ck,
                                    every, d_sa, 0, err);
    if (!rc)
        rc = wkv7_backward_cuda_algo(balgo, bf16, B, T, H, d[0], d[1], d[2], d[3], d[4], d[5], d_ck,
                                     every, d_sa, d[6], d[8], d[9], d[10], d[11], d[12], d[13], d_ds0, 0,
                                     err);
    cudaError_t ce = cudaDeviceSynchronize();
    unsetenv("STATETUNE_WKV7_TMA");
    if (rc || ce != cudaSuccess) {
        fprintf(stderr, "cuda wkv7 failed: %s\n", rc ? err : cudaGetErrorString(ce));
        rc = 1;
    } else {
        size_t tot = 4 * (nf + nck + nsa);
        for (int i = 7; i < 14; i++) tot += ESZ(i) * n;
        unsigned char *out = malloc(tot), *o = out;
        for (int i = 7; i < 14; i++, o += ESZ(i - 1) * n) cudaMemcpy(o, d[i], ESZ(i) * n, cudaMemcpyDeviceToHost);
        cudaMemcpy(o, d_sf, 4 * nf, cudaMemcpyDeviceToHost);
        cudaMemcpy(o + 4 * nf, d_ck, 4 * nck, cudaMemcpyDeviceToHost);
        cudaMemcpy(o + 4 * (nf + nck), d_sa, 4 * nsa, cudaMemcpyDeviceToHost);
        *ds0 = malloc(4 * ns);
        cudaMemcpy(*ds0, d_ds0, 4 * ns, cudaMemcpyDeviceToHost);
        *bytes = out;
        *nbytes = tot;
    }
#undef OFF
#undef ESZ
    for (int i = 0; i < 14; i++) cudaFree(alloc[i]);
    cudaFree(d_s0); cudaFree(d_sf); cudaFree(d_ck); cudaFree(d_sa); cudaFree(d_ds0);
    for (int i = 0; i < 8; i++) free(h_in[i]);
    free(stage);
    return rc;
}

/* Two runs of the same inputs that must give the same bits: run 1 with
 * (tma1, unaligned1), run 0 with (tma0, unaligned0); what names the switch
 * in the messages. dS0 is summed with atomics, so it is compared to 1e-6. */
static int s_runs_same(int algo, int balgo, int bf16, int tma1, int unal1, int tma0, int unal0, int every,
                       const char *what)
{
    const int B = 2, T = 100, H = 3;
    const uint64_t seed = st_test_seed();
    unsigned char *b1 = NULL, *b0 = NULL;
    float *g1 = NULL, *g0 = NULL;
    size_t n1 = 0, n0 = 0;
    if (s_stage_run(algo, balgo, bf16, tma1, unal1, every, B, T, H, seed, &b1, &n1, &g1)) return 1;
    if (s_stage_run(algo, balgo, bf16, tma0, unal0, every, B, T, H, seed, &b0, &n0, &g0)) return 1;
    size_t diff = 0;
    for (size_t i = 0; i < n1 && n1 == n0; i++) diff += b1[i] != b0[i];
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)H * N * N; i++) {
        num += ((double)g1[i] - g0[i]) * ((double)g1[i] - g0[i]);
        den += (double)g0[i] * g0[i];
    }
    const double rel = sqrt(num / (den > 0 ? den : 1));
    printf("%s, a checkpoint every %d tokens: %zu of %zu output bytes differ between %s; dS0 relative %.2e\n",
           bf16 ? "bf16" : "fp32", every, diff, n1, what, rel);
    free(b1); free(b0); free(g1); free(g0);
    CHECKF(n1 == n0 && diff == 0, "%s differ in %zu bytes", what, diff);
    CHECKF(rel <= 1e-6, "dS0 differs by %.2e between %s", rel, what);
    return 0;
}

/* One pair of runs of s_runs_same: run 1 with (tma1, unal1), run 0 with
 * (tma0, unal0) */
typedef struct {
    int algo, balgo, bf16, tma1, unal1, tma0, unal0, every;
} same_case_t;

/* Every case in turn, stopping at the first that differs */
static int s_cases_same(const same_case_t *c, int n, const char *what)
{
    for (int i = 0; i < n; i++)
        if (s_runs_same(c[i].algo, c[i].balgo, c[i].bf16, c[i].tma1, c[i].unal1, c[i].tma0, c[i].unal0, c[i].every,
                        what))
            return 1;
    return 0;
}

/* AUTO in bf16 (TCWS1 + CPROD1WSSA) at both checkpoint intervals, and the
 * accurate warp-specialized pair in fp32 */
static int test_tma_staging_identical(void)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    static const same_case_t cases[] = {
        {WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, 1, 1, 0, 0, 0, WKV7_CUDA_CHUNK},
        {WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, 1, 1, 0, 0, 0, WKV7_CUDA_CKPT_PAIR},
        {WKV7_FWD_TCWS, WKV7_BWD_CHUNKED_WS, 0, 1, 0, 0, 0, WKV7_CUDA_CHUNK},
    };
    return s_cases_same(cases, 3, "TMA and cp.async staging");
}

/* Pass 2 of CPROD1WSSA stages dr, da, dk, db in shared memory and writes
 * them as 16-byte vectors when all four are 16-byte aligned, element by
 * element otherwise: both must give the same bits (outputs one element off
 * alignment here; the forward and pass 1 see the same aligned inputs). */
static int test_unaligned_outputs_identical(void)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    static const same_case_t cases[] = {
        {WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, 1, 1, 1, 1, 0, WKV7_CUDA_CHUNK},
        {WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, 1, 1, 1, 1, 0, WKV7_CUDA_CKPT_PAIR},
        {WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, 0, 1, 1, 1, 0, WKV7_CUDA_CHUNK},
    };
    return s_cases_same(cases, 3, "unaligned and aligned gradient buffers");
}

/* The pair interval against the per-chunk form on the same inputs (fp32,
 * every w near 0.545, 7 chunks: three pairs and a last chunk alone): the
 * forward's y, sa and s_final and pass 1's dv do not depend on where the
 * checkpoints are stored, so they are the same bits; checkpoint q of the
 * pair form is checkpoint min(2q + 1, last) of the per-chunk form, bit for
 * bit, and the s0 copy follows them; dS0 is pass 1's, summed with atomics
 * (1e-6); dr, dw, dk, da, db come from the recomputed states and
 * gradients: they must agree within the class's bounds (s_tf32_fp32).
 * Measured (H100, 2026-11-27): 0 for all five, the same bits (the
 * recomputation repeats the forward's and pass 1's products in their
 * order); the bound is the class's, not equality, since the tensor cores'
 * summation inside one product is not specified. It also compares pass 2's
 * two load paths: the per-chunk form loads in two groups and starts its
 * first products before the second lands, the pair form in one group
 * (wkv7_chunk.cu; measured the same bits, 2026-11-27 08:41 UTC). */
static int test_ckpt_pair_matches_per_chunk(void)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    const int B = 2, T = 100, H = 3, nck = (T + WKV7_CUDA_CHUNK - 1) / WKV7_CUDA_CHUNK;
    const uint64_t seed = st_test_seed();
    unsigned char *b1 = NULL, *b2 = NULL;
    float *g1 = NULL, *g2 = NULL;
    size_t n1 = 0, n2 = 0;
    if (s_stage_run(WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, 0, 1, 0, WKV7_CUDA_CHUNK, B, T, H, seed, &b1, &n1, &g1))
        return 1;
    if (s_stage_run(WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, 0, 1, 0, WKV7_CUDA_CKPT_PAIR, B, T, H, seed, &b2, &n2, &g2))
        return 1;
    const size_t n = (size_t)B * T * H * N, nf = (size_t)B * H * N * N, nn = (size_t)N * N;
    const size_t ck1 = wkv7_cuda_ckpt_floats_every(B, T, H, WKV7_CUDA_CHUNK);
    const size_t ck2 = wkv7_cuda_ckpt_floats_every(B, T, H, WKV7_CUDA_CKPT_PAIR);
    CHECK(n1 == 4 * (8 * n + nf + ck1) && n2 == 4 * (8 * n + nf + ck2));
    const float *o1 = (const float *)b1, *o2 = (const float *)b2; /* y dr dw dk dv da db, s_final, ckpt, sa */
    CHECKF(!memcmp(o1, o2, 4 * n), "y differs between the checkpoint intervals");
    CHECKF(!memcmp(o1 + 4 * n, o2 + 4 * n, 4 * n), "dv differs between the checkpoint intervals");
    CHECKF(!memcmp(o1 + 7 * n, o2 + 7 * n, 4 * nf), "s_final differs between the checkpoint intervals");
    CHECKF(!memcmp(o1 + 7 * n + nf + ck1, o2 + 7 * n + nf + ck2, 4 * n), "sa differs between the intervals");
    const int npair = (nck + 1) / 2;
    size_t ckdiff = 0;
    for (int bh = 0; bh < B * H; bh++)
        for (int q = 0; q < npair; q++) {
            const int c = 2 * q + 1 < nck ? 2 * q + 1 : nck - 1;
            ckdiff += memcmp(o1 + 7 * n + nf + ((size_t)bh * nck + c) * nn,
                             o2 + 7 * n + nf + ((size_t)bh * npair + q) * nn, 4 * nn) != 0;
        }
    CHECKF(ckdiff == 0, "%zu checkpoints of the pair form differ from the per-chunk form's", ckdiff);
    CHECKF(!memcmp(o1 + 7 * n + nf + (size_t)B * H * nck * nn, o2 + 7 * n + nf + (size_t)B * H * npair * nn,
                   4 * (size_t)H * nn),
           "the s0 copy behind the checkpoints differs");
    const char *gname[5] = {"dr", "dw", "dk", "da", "db"};
    const int gi[5] = {1, 2, 3, 5, 6};
    const double tol[5] = {s_tf32_fp32.grad[0], s_tf32_fp32.grad[1], s_tf32_fp32.grad[2], s_tf32_fp32.grad[4],
                           s_tf32_fp32.grad[5]};
    for (int q = 0; q < 5; q++) {
        double num = 0, den = 0, big = 0;
        const float *x = o2 + gi[q] * n, *ref = o1 + gi[q] * n;
        for (size_t i = 0; i < n; i++) {
            const double d = (double)x[i] - ref[i];
            num += d * d;
            den += (double)ref[i] * ref[i];
            if (!(fabs(d) <= big)) big = fabs(d);
        }
        const double rel = sqrt(num / (den > 0 ? den : 1));
        printf("%s: pair form against the per-chunk form: relative %.2e (bound %.0e), max abs %.2e\n", gname[q], rel,
               tol[q], big);
        CHECKF(rel <= tol[q], "%s differs by %.2e relative between the checkpoint intervals", gname[q], rel);
    }
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)H * nn; i++) {
        num += ((double)g2[i] - g1[i]) * ((double)g2[i] - g1[i]);
        den += (double)g1[i] * g1[i];
    }
    const double rel = sqrt(num / (den > 0 ? den : 1));
    printf("ds0: relative %.2e between the intervals\n", rel);
    CHECKF(rel <= 1e-6, "dS0 differs by %.2e between the checkpoint intervals", rel);
    free(b1); free(b2); free(g1); free(g2);
    return 0;
}

/* The pair interval is taken only where wkv7.cuh says; anything else is
 * ST_EINVAL with a sentence naming ckpt_every, before anything is enqueued
 * (host dummies: no GPU needed). And the sizes and the defaults' interval. */
static int test_ckpt_pair_refusals(void)
{
    char err[ST_ERR_LEN] = "";
    float d = 0;
    const int fwd_no[] = {WKV7_FWD_RECURRENT, WKV7_FWD_CHUNKED, WKV7_FWD_TC};
    const int bwd_no[] = {WKV7_BWD_RECURRENT, WKV7_BWD_SPLIT, WKV7_BWD_CHUNKED, WKV7_BWD_CHUNKED_WS,
                          WKV7_BWD_CPROD, WKV7_BWD_CHUNKED_SEG(2)};
    for (int bf16 = 0; bf16 <= 1; bf16++) {
        for (size_t i = 0; i < sizeof fwd_no / sizeof fwd_no[0]; i++) {
            err[0] = 0;
            int rc = wkv7_forward_cuda_algo(fwd_no[i], bf16, 1, 4, 1, &d, &d, &d, &d, &d, &d, &d, &d, NULL, &d,
                                            WKV7_CUDA_CKPT_PAIR, &d, 0, err);
            CHECKF(rc == ST_EINVAL && strstr(err, "ckpt_every"), "forward %d: rc %d, err \"%s\"", fwd_no[i], rc, err);
        }
        for (size_t i = 0; i < sizeof bwd_no / sizeof bwd_no[0]; i++) {
            err[0] = 0;
            int rc = wkv7_backward_cuda_algo(bwd_no[i], bf16, 1, 4, 1, &d, &d, &d, &d, &d, &d, &d,
                                             WKV7_CUDA_CKPT_PAIR, &d, &d, &d, &d, &d, &d, &d, &d, &d, 0, err);
            CHECKF(rc == ST_EINVAL && strstr(err, "ckpt_every"), "backward %d: rc %d, err \"%s\"", bwd_no[i], rc,
                   err);
        }
        err[0] = 0;
        int rc = wkv7_forward_cuda_algo(WKV7_FWD_TCWS1, bf16, 1, 4, 1, &d, &d, &d, &d, &d, &d, &d, &d, NULL, &d, 48,
                                        &d, 0, err);
        CHECKF(rc == ST_EINVAL && strstr(err, "ckpt_every"), "ckpt_every 48: rc %d, err \"%s\"", rc, err);
    }
    printf("last refusal: %s\n", err);
    const size_t nn = (size_t)N * N;
    CHECK(wkv7_cuda_ckpt_floats_every(2, 100, 3, WKV7_CUDA_CKPT_PAIR) == 2 * 3 * 4 * nn + 3 * nn);
    CHECK(wkv7_cuda_ckpt_floats_every(2, 100, 3, WKV7_CUDA_CHUNK) == 2 * 3 * 7 * nn + 3 * nn);
    CHECK(wkv7_cuda_ckpt_floats(2, 100, 3) == wkv7_cuda_ckpt_floats_every(2, 100, 3, WKV7_CUDA_CHUNK));
    CHECK(wkv7_cuda_ckpt_floats_every(1, 32, 1, WKV7_CUDA_CKPT_PAIR) == 2 * nn);
    /* the defaults: bf16 AUTO (TCWS1 + CPROD1WSSA, auto_rule) takes either interval and gets the measured
     * faster one, WKV7_CKPT_BF16_DEFAULT; fp32 keeps the recurrent forward, which takes only 16 */
    CHECK(wkv7_cuda_ckpt_every(1) == WKV7_CKPT_BF16_DEFAULT);
    CHECK(wkv7_cuda_ckpt_every(0) == WKV7_CUDA_CHUNK);
    return 0;
}

static int test_refuses_removed_algorithms(void)
{
    char err[ST_ERR_LEN] = "";
    float d = 0;
    const int fwd[] = {3, 7, 8, 9, 99, -2};
    const int bwd[] = {3, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 16 + 4097, -2}; /* 17..16 + 4096: CHUNKED_SEG */
    for (int bf16 = 0; bf16 <= 1; bf16++) {
        for (size_t i = 0; i < sizeof fwd / sizeof fwd[0]; i++) {
            err[0] = 0;
            int rc = wkv7_forward_cuda_algo(fwd[i], bf16, 1, 4, 1, &d, &d, &d, &d, &d, &d, &d, &d, NULL, &d,
                                            WKV7_CUDA_CHUNK, &d, 0, err);
            char want[32];
            snprintf(want, sizeof want, "algorithm %d ", fwd[i]);
            CHECKF(rc == ST_EINVAL && strstr(err, want), "forward id %d: rc %d, err \"%s\"", fwd[i], rc, err);
        }
        for (size_t i = 0; i < sizeof bwd / sizeof bwd[0]; i++) {
            err[0] = 0;
            int rc = wkv7_backward_cuda_algo(bwd[i], bf16, 1, 4, 1, &d, &d, &d, &d, &d, &d, &d, WKV7_CUDA_CHUNK,
                                             &d, &d, &d, &d, &d, &d, &d, &d, &d, 0, err);
            char want[32];
            snprintf(want, sizeof want, "algorithm %d ", bwd[i]);
            CHECKF(rc == ST_EINVAL && strstr(err, want), "backward id %d: rc %d, err \"%s\"", bwd[i], rc, err);
        }
    }
    printf("last refusal: %s\n", err);
    return 0;
}

int main(int argc, char **argv)
{
    static const st_test_t tests[] = {
        {"reference_gradients", test_reference_gradients},
        {"fp32", test_fp32},
        {"bf16", test_bf16},
        {"bf16_ckpt_pair", test_bf16_ckpt_pair},
        {"fp32_recurrent", test_fp32_recurrent},
        {"bf16_recurrent", test_bf16_recurrent},
        {"bf16_chunked", test_bf16_chunked},
        {"fp32_chunked", test_fp32_chunked},
        {"bf16_tc", test_bf16_tc},
        {"fp32_tc_cprod", test_fp32_tc_cprod},
        {"bf16_tc_fwd_recurrent_bwd", test_bf16_tc_fwd_recurrent_bwd},
        {"fp32_recurrent_fwd_chunked_bwd", test_fp32_recurrent_fwd_chunked_bwd},
        {"bf16_chunked_bwd_segments", test_bf16_chunked_bwd_segments},
        {"bf16_tcws", test_bf16_tcws},
        {"fp32_recurrent_fwd_chunked_ws_bwd", test_fp32_recurrent_fwd_chunked_ws_bwd},
        {"fp32_tcws_cprod", test_fp32_tcws_cprod},
        {"bf16_tcws_cprod", test_bf16_tcws_cprod},
        {"fp32_recurrent_cprod", test_fp32_recurrent_cprod},
        {"fp32_tf32_class", test_fp32_tf32_class},
        {"bf16_tf32_class", test_bf16_tf32_class},
        {"fp32_tf32_class_ckpt_pair", test_fp32_tf32_class_ckpt_pair},
        {"bf16_tf32_class_ckpt_pair", test_bf16_tf32_class_ckpt_pair},
        {"ckpt_pair_matches_per_chunk", test_ckpt_pair_matches_per_chunk},
        {"ckpt_pair_refusals", test_ckpt_pair_refusals},
        {"bf16_bf16ops_fwd_cprod", test_bf16_bf16ops_fwd_cprod},
        {"bf16_bf16ops_fwd_cprod1wssa", test_bf16_bf16ops_fwd_cprod1wssa},
        {"bf16_bf16ops_fwd_cprod1wssa_ckpt_pair", test_bf16_bf16ops_fwd_cprod1wssa_ckpt_pair},
        {"refuses_bad_shapes", test_refuses_bad_shapes},
        {"refuses_removed_algorithms", test_refuses_removed_algorithms},
        {"tma_staging_identical", test_tma_staging_identical},
        {"unaligned_outputs_identical", test_unaligned_outputs_identical},
        {"auto_rule", test_auto_rule},
        {NULL, NULL},
    };
    return st_test_main(argc, argv, tests);
}
