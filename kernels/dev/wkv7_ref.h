/*
 * wkv7_ref.h - an independent float64 WKV7 reference (forward, backward to
 * every input and to s0) and a generator of realistic random inputs, shared
 * by kernels/dev/wkv7_bench.cu and tests/test_cuda_wkv.c (header-only so that
 * both C and CUDA programs can use it; not linked into the product).
 *
 * Math (SPEC section 4), per batch row b and head h, S N x N (row = value i,
 * column = key j):  sa_t = S_{t-1} a_t,  S_t = S_{t-1} diag(w_t) + sa_t b_t^T +
 * v_t k_t^T,  y_t = S_t r_t.  The backward keeps every S_t (so it is plain
 * and slow, O(T N^2) memory per head: small shapes only) and applies the
 * adjoint recursion dS_{t-1} = dS_t G_t^T + dy_{t-1} r_{t-1}^T with dS_T = 0.
 * Its correctness does not rest on the CUDA kernels' algebra: the test checks
 * it against finite differences of the forward.
 *
 * Shapes: activations (B, T, H, N) float; s0 and ds0 (H, N, N). Outputs in
 * double; ds0 is overwritten (the sum over b).
 */
#ifndef ST_KERNELS_DEV_WKV7_REF_H
#define ST_KERNELS_DEV_WKV7_REF_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WKV7_REF_N 64

/* xorshift64* and a Box-Muller normal; the state is the caller's. */
static inline double wkv7_ref_uniform(uint64_t *s)
{
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return (double)((*s * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}

static inline double wkv7_ref_normal(uint64_t *s)
{
    double u1 = wkv7_ref_uniform(s), u2 = wkv7_ref_uniform(s);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Inputs shaped like the model's (shared/fixtures/README.md): w =
 * exp(-0.606531 sigmoid(z)) in [0.545, 1); kk a unit vector per head,
 * a = -kk, b = kk * a_icl with a_icl in (0, 1); r, k, v of unit scale; s0 of
 * modest norm. `regime` 1 pushes half of the channels' w towards 1 (z ~ -8),
 * 2 pushes every w towards 0.545 (z ~ +8). */
static inline void wkv7_ref_random_inputs(int B, int T, int H, uint64_t seed, int regime,
                                          float *r, float *w, float *k, float *v, float *a,
                                          float *b, float *s0, float *dy)
{
    const int N = WKV7_REF_N;
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int bb = 0; bb < B; bb++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                size_t base = (((size_t)bb * T + t) * H + h) * N;
                double kk[WKV7_REF_N], norm = 0;
                for (int n = 0; n < N; n++) { kk[n] = wkv7_ref_normal(&s); norm += kk[n] * kk[n]; }
                norm = sqrt(norm);
                for (int n = 0; n < N; n++) {
                    size_t i = base + n;
                    double z = wkv7_ref_normal(&s);
                    if (regime == 1 && (n & 1)) z = -8.0 + 0.5 * z;
                    if (regime == 2) z = 8.0 + 0.5 * z;
                    double icl = 1.0 / (1.0 + exp(-wkv7_ref_normal(&s)));
                    w[i] = (float)exp(-0.606531 / (1.0 + exp(-z)));
                    r[i] = (float)(wkv7_ref_uniform(&s) * 2 - 1);
                    k[i] = (float)((wkv7_ref_uniform(&s) * 2 - 1) * 0.5);
                    v[i] = (float)(wkv7_ref_uniform(&s) * 2 - 1);
                    a[i] = (float)(-kk[n] / norm);
                    b[i] = (float)(kk[n] / norm * icl);
                    if (dy) dy[i] = (float)(wkv7_ref_uniform(&s) * 2 - 1);
                }
            }
    if (s0)
        for (size_t i = 0; i < (size_t)H * N * N; i++) s0[i] = (float)(0.3 * wkv7_ref_normal(&s));
}

/* Forward in double: y (B, T, H, N), s_final (B, H, N, N) optional. */
static inline void wkv7_ref_forward(int B, int T, int H, const float *r, const float *w,
                                    const float *k, const float *v, const float *a, const float *b,
                                    const float *s0, double *y, double *s_final)
{
    const int N = WKV7_REF_N;
    double *S = (double *)malloc(sizeof(double) * N * N);
    for (int bb = 0; bb < B; bb++)
        for (int h = 0; h < H; h++) {
            for (int e = 0; e < N * N; e++) S[e] = s0[(size_t)h * N * N + e];
            for (int t = 0; t < T; t++) {
                size_t o = (((size_t)bb * T + t) * H + h) * N;
                for (int i = 0; i < N; i++) {
                    double sa = 0;
                    for (int j = 0; j < N; j++) sa += S[i * N + j] * a[o + j];
                    double yi = 0;
                    for (int j = 0; j < N; j++) {
                        S[i * N + j] = S[i * N + j] * w[o + j] + sa * b[o + j] + (double)v[o + i] * k[o + j];
                        yi += S[i * N + j] * r[o + j];
                    }
                    y[o + i] = yi;
                }
            }
            if (s_final)
                for (int e = 0; e < N * N; e++) s_final[((size_t)bb * H + h) * N * N + e] = S[e];
        }
    free(S);
}

/* Backward in double: gradients of sum(y * dy) to r, w, k, v, a, b ((B, T, H, N))
 * and to s0 ((H, N, N), summed over b, overwritten). */
static inline void wkv7_ref_backward(int B, int T, int H, const float *r, const float *w,
                                     const float *k, const float *v, const float *a, const float *b,
                                     const float *s0, const float *dy, double *dr, double *dw,
                                     double *dk, double *dv, double *da, double *db, double *ds0)
{
    const int N = WKV7_REF_N;
    double *St = (double *)malloc(sizeof(double) * (size_t)(T + 1) * N * N);
    double *SA = (double *)malloc(sizeof(double) * (size_t)T * N);
    double *dS = (double *)malloc(sizeof(double) * N * N);
    double dsa[WKV7_REF_N];
    memset(ds0, 0, sizeof(double) * (size_t)H * N * N);
    for (int bb = 0; bb < B; bb++)
        for (int h = 0; h < H; h++) {
            for (int e = 0; e < N * N; e++) St[e] = s0[(size_t)h * N * N + e];
            for (int t = 0; t < T; t++) {
                size_t o = (((size_t)bb * T + t) * H + h) * N;
                const double *P = St + (size_t)t * N * N;
                double *S = St + (size_t)(t + 1) * N * N;
                for (int i = 0; i < N; i++) {
                    double sa = 0;
                    for (int j = 0; j < N; j++) sa += P[i * N + j] * a[o + j];
                    SA[(size_t)t * N + i] = sa;
                    for (int j = 0; j < N; j++)
                        S[i * N + j] = P[i * N + j] * w[o + j] + sa * b[o + j] + (double)v[o + i] * k[o + j];
                }
            }
            memset(dS, 0, sizeof(double) * N * N);
            for (int t = T - 1; t >= 0; t--) {
                size_t o = (((size_t)bb * T + t) * H + h) * N;
                const double *P = St + (size_t)t * N * N;
                const double *S = St + (size_t)(t + 1) * N * N;
                const double *sa = SA + (size_t)t * N;
                for (int i = 0; i < N; i++)
                    for (int j = 0; j < N; j++) dS[i * N + j] += (double)dy[o + i] * r[o + j];
                for (int j = 0; j < N; j++) {
                    double gr = 0, gk = 0, gb = 0, gw = 0;
                    for (int i = 0; i < N; i++) {
                        gr += S[i * N + j] * dy[o + i];
                        gk += dS[i * N + j] * v[o + i];
                        gb += dS[i * N + j] * sa[i];
                        gw += dS[i * N + j] * P[i * N + j];
                    }
                    dr[o + j] = gr; dk[o + j] = gk; db[o + j] = gb; dw[o + j] = gw;
                }
                for (int i = 0; i < N; i++) {
                    double gv = 0, gs = 0;
                    for (int j = 0; j < N; j++) { gv += dS[i * N + j] * k[o + j]; gs += dS[i * N + j] * b[o + j]; }
                    dv[o + i] = gv;
                    dsa[i] = gs;
                }
                for (int j = 0; j < N; j++) {
                    double ga = 0;
                    for (int i = 0; i < N; i++) ga += dsa[i] * P[i * N + j];
                    da[o + j] = ga;
                }
                for (int i = 0; i < N; i++)
                    for (int j = 0; j < N; j++) dS[i * N + j] = dS[i * N + j] * w[o + j] + dsa[i] * a[o + j];
            }
            for (int e = 0; e < N * N; e++) ds0[(size_t)h * N * N + e] += dS[e];
        }
    free(St); free(SA); free(dS);
}

/* ||got - ref|| / ||ref|| with got in float. */
static inline double wkv7_ref_rel(const float *got, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    if (!(num == num)) return INFINITY; /* NaN anywhere fails */
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

#endif
