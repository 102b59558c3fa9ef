/*
 * wkv7.c - WKV7 forward and backward on the CPU, fp32 (see wkv7.h; SPEC
 * section 4). One (batch row, head) pair is one independent recurrence, so
 * the pairs are spread over OpenMP threads; inside a pair the state S (N x N,
 * 16 KB) stays in L1/L2: a forward step is one fused pass over its rows, an
 * adjoint step two passes per block of 16 rows (s_back_step).
 *
 * Forward, row i of S (value index), j the key index:
 *   sa_i = sum_j S_ij a_j;  S_ij = S_ij w_j + sa_i b_j + v_i k_j;  y_i = sum_j S_ij r_j
 *
 * Backward (the adjoint recursion of SPEC section 4), with dS = dL/dS_t
 * carried from the future and P = S_{t-1}:
 *   dS += dy r^T;  dr = S_t^T dy
 *   dv = dS k;  dk = dS^T v;  dw_j = sum_i dS_ij P_ij
 *   sa = P a;  db = dS^T sa;  dsa = dS b;  da = P^T dsa
 *   dS_{t-1} = dS G_t^T = dS diag(w) + dsa a^T
 * and after t = 1, dS is d/dS0 for this pair, added into ds0.
 *
 * The states inside a checkpoint block are recomputed from the block's
 * checkpoint into a stack buffer of (ckpt_every + 1) states, so ckpt_every is
 * limited to WKV7_CPU_MAX_CKPT (a programmer error otherwise: asserted).
 */
#include "kernels/cpu/wkv7.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define N 64

/* The two hot loops are written with GCC vector extensions (a v16 is 16
 * floats; the compiler maps it to one AVX-512 register, two AVX2 ones or four
 * SSE ones), so that the row reductions stay in registers instead of going
 * through a scalar loop, and they are compiled for AVX-512, AVX2+FMA and
 * baseline x86-64 and picked at load time (GCC function multiversioning),
 * since the build itself targets plain x86-64. fp-contract lets a * b + c
 * become one FMA (-std=c11 turns contraction off). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define WKV_CLONES                                                                     \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"),      \
                   optimize("fp-contract=fast")))
#else
#define WKV_CLONES
#endif

typedef float v16 __attribute__((vector_size(64)));
/* The helpers below pass v16 by value; they are static and always inlined,
 * so the warning about the ABI of 64-byte vectors in calls does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
#define NV (N / 16) /* v16 per row */

static inline __attribute__((always_inline)) v16 s_ld(const float *p)
{
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) void s_st(float *p, v16 v) { memcpy(p, &v, sizeof v); }

static inline __attribute__((always_inline)) v16 s_splat(float x) { return (v16){0} + x; }

static inline __attribute__((always_inline)) float s_hsum(v16 v)
{
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
    v += __builtin_shufflevector(v, v, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0);
    return v[0];
}

/* One step of the recurrence on S in place; writes y (N) when not NULL. */
WKV_CLONES static void s_step(float *restrict S, const float *restrict r, const float *restrict w,
                              const float *restrict k, const float *restrict v,
                              const float *restrict a, const float *restrict b, float *restrict y)
{
    v16 rv[NV], wv[NV], kv[NV], av[NV], bv[NV];
    for (int q = 0; q < NV; q++) {
        rv[q] = s_ld(r + 16 * q), wv[q] = s_ld(w + 16 * q), kv[q] = s_ld(k + 16 * q);
        av[q] = s_ld(a + 16 * q), bv[q] = s_ld(b + 16 * q);
    }
    for (int i = 0; i < N; i++) {
        float *Si = S + i * N;
        v16 s[NV], acc = {0};
        for (int q = 0; q < NV; q++) s[q] = s_ld(Si + 16 * q), acc += s[q] * av[q];
        v16 sa = s_splat(s_hsum(acc)), vi = s_splat(v[i]), yacc = {0};
        for (int q = 0; q < NV; q++) {
            s[q] = s[q] * wv[q] + sa * bv[q] + vi * kv[q];
            s_st(Si + 16 * q, s[q]);
            yacc += s[q] * rv[q];
        }
        if (y) y[i] = s_hsum(yacc);
    }
}

/* The same step out of place and without the output, for the backward
 * pass's recomputation: S_out = S_in G + v k^T (saves a copy of the state);
 * also keeps sa = S_in a (N), which the adjoint step needs again. */
WKV_CLONES static void s_step_to(const float *restrict Sin, float *restrict Sout,
                                 const float *restrict w, const float *restrict k,
                                 const float *restrict v, const float *restrict a,
                                 const float *restrict b, float *restrict sa_out)
{
    v16 wv[NV], kv[NV], av[NV], bv[NV];
    for (int q = 0; q < NV; q++) {
        wv[q] = s_ld(w + 16 * q), kv[q] = s_ld(k + 16 * q);
        av[q] = s_ld(a + 16 * q), bv[q] = s_ld(b + 16 * q);
    }
    for (int i = 0; i < N; i++) {
        const float *Si = Sin + i * N;
        v16 s[NV], acc = {0};
        for (int q = 0; q < NV; q++) s[q] = s_ld(Si + 16 * q), acc += s[q] * av[q];
        float sai = s_hsum(acc);
        sa_out[i] = sai;
        v16 sa = s_splat(sai), vi = s_splat(v[i]);
        for (int q = 0; q < NV; q++) s_st(Sout + i * N + 16 * q, s[q] * wv[q] + sa * bv[q] + vi * kv[q]);
    }
}

/* Sixteen row sums at once: lane i of the result is the sum of the lanes of
 * p[i] (a transpose-and-add tree, 45 vector operations instead of 16
 * separate horizontal sums of 8 each). */
static inline __attribute__((always_inline)) v16 s_hsum16(const v16 *p)
{
    v16 u[8], x[4], y[2];
    for (int k = 0; k < 8; k++)
        u[k] = __builtin_shufflevector(p[2 * k], p[2 * k + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18,
                                       19, 20, 21, 22, 23) +
               __builtin_shufflevector(p[2 * k], p[2 * k + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24,
                                       25, 26, 27, 28, 29, 30, 31);
    for (int k = 0; k < 4; k++)
        x[k] = __builtin_shufflevector(u[2 * k], u[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17,
                                       18, 19, 24, 25, 26, 27) +
               __builtin_shufflevector(u[2 * k], u[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21,
                                       22, 23, 28, 29, 30, 31);
    for (int k = 0; k < 2; k++)
        y[k] = __builtin_shufflevector(x[2 * k], x[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17,
                                       20, 21, 24, 25, 28, 29) +
               __builtin_shufflevector(x[2 * k], x[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19,
                                       22, 23, 26, 27, 30, 31);
    return __builtin_shufflevector(y[0], y[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                   28, 30) +
           __builtin_shufflevector(y[0], y[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                                   29, 31);
}

/* One step of the adjoint recursion (see the top of the file): dS holds
 * dL/dS_t without step t's output term on entry and dL/dS_{t-1} on exit;
 * sa = S_{t-1} a comes from the recomputation. Rows go in blocks of 16: a
 * first pass forms g = dS + dy r^T (stored in place) and everything that
 * needs only g, and keeps the row partial sums of g.k and g.b as vectors; one
 * transpose-and-add per block gives dv and dsa; a second pass uses dsa. */
WKV_CLONES static void s_back_step(float *restrict dS, const float *restrict St,
                                   const float *restrict P, const float *restrict rt,
                                   const float *restrict wt, const float *restrict kt,
                                   const float *restrict vt, const float *restrict at,
                                   const float *restrict bt, const float *restrict dyt,
                                   const float *restrict sat, float *restrict dr,
                                   float *restrict dw, float *restrict dk, float *restrict dv,
                                   float *restrict da, float *restrict db)
{
    v16 drv[NV] = {{0}}, dkv[NV] = {{0}}, dwv[NV] = {{0}}, dbv[NV] = {{0}}, dav[NV] = {{0}};
    for (int i0 = 0; i0 < N; i0 += 16) {
        v16 pdv[16], pdsa[16];
        for (int ii = 0; ii < 16; ii++) {
            int i = i0 + ii;
            float *dSi = dS + i * N;
            const float *Sti = St + i * N, *Pi = P + i * N;
            v16 dyi = s_splat(dyt[i]), vi = s_splat(vt[i]), sa = s_splat(sat[i]);
            v16 a_dv = {0}, a_dsa = {0};
            for (int q = 0; q < NV; q++) {
                v16 g = s_ld(dSi + 16 * q) + dyi * s_ld(rt + 16 * q);
                s_st(dSi + 16 * q, g);
                drv[q] += s_ld(Sti + 16 * q) * dyi;
                a_dv += g * s_ld(kt + 16 * q);
                dkv[q] += g * vi;
                dwv[q] += g * s_ld(Pi + 16 * q);
                a_dsa += g * s_ld(bt + 16 * q);
                dbv[q] += g * sa;
            }
            pdv[ii] = a_dv;
            pdsa[ii] = a_dsa;
        }
        s_st(dv + i0, s_hsum16(pdv));
        float dsa[16];
        s_st(dsa, s_hsum16(pdsa));
        for (int ii = 0; ii < 16; ii++) {
            int i = i0 + ii;
            float *dSi = dS + i * N;
            const float *Pi = P + i * N;
            v16 d = s_splat(dsa[ii]);
            for (int q = 0; q < NV; q++) {
                dav[q] += s_ld(Pi + 16 * q) * d;
                s_st(dSi + 16 * q, s_ld(dSi + 16 * q) * s_ld(wt + 16 * q) + d * s_ld(at + 16 * q));
            }
        }
    }
    for (int q = 0; q < NV; q++) {
        s_st(dr + 16 * q, drv[q]), s_st(dk + 16 * q, dkv[q]), s_st(dw + 16 * q, dwv[q]);
        s_st(db + 16 * q, dbv[q]), s_st(da + 16 * q, dav[q]);
    }
}

void wkv7_forward_cpu(int B, int T, int H,
                      const float *r, const float *w, const float *k,
                      const float *v, const float *a, const float *b,
                      const float *s0, float *y, float *s_final, float *s_ckpt, int ckpt_every)
{
    int C = H * N;
    int nck = s_ckpt ? (T + ckpt_every - 1) / ckpt_every : 0;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (B * H * T >= 256)
    for (int bb = 0; bb < B; bb++) {
        for (int h = 0; h < H; h++) {
            float S[N * N];
            memcpy(S, s0 + (size_t)h * N * N, sizeof S);
            for (int t = 0; t < T; t++) {
                if (s_ckpt && t % ckpt_every == 0)
                    memcpy(s_ckpt + (((size_t)bb * nck + t / ckpt_every) * H + h) * N * N, S,
                           sizeof S);
                size_t o = ((size_t)bb * T + t) * C + (size_t)h * N;
                s_step(S, r + o, w + o, k + o, v + o, a + o, b + o, y ? y + o : NULL);
            }
            if (s_final) memcpy(s_final + ((size_t)bb * H + h) * N * N, S, sizeof S);
        }
    }
}

void wkv7_backward_cpu(int B, int T, int H,
                       const float *r, const float *w, const float *k,
                       const float *v, const float *a, const float *b,
                       const float *s_ckpt, int ckpt_every,
                       const float *dy,
                       float *dr, float *dw, float *dk, float *dv,
                       float *da, float *db,
                       float *ds0)
{
    assert(ckpt_every >= 1 && ckpt_every <= WKV7_CPU_MAX_CKPT);
    int C = H * N;
    int nck = (T + ckpt_every - 1) / ckpt_every;
    /* Each (row, head) leaves its dS_0 in its own slot, summed over rows in a
     * fixed order afterwards: adding in the order threads finish made ds0, and
     * so a whole tuning run, differ from run to run with more than one thread
     * (resume must reproduce the uninterrupted run exactly). Without memory
     * for the slots we fall back to one thread, which is just as exact. */
    float *slots = malloc(sizeof(float) * (size_t)B * H * N * N);
    int par = slots != NULL && B * H * T >= 256;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (par)
    for (int bb = 0; bb < B; bb++) {
        for (int h = 0; h < H; h++) {
            /* states[s] = state before step t0 + s; states[n] = after the last */
            float states[(WKV7_CPU_MAX_CKPT + 1) * N * N];
            float sas[WKV7_CPU_MAX_CKPT * N]; /* S_{t-1} a for each step of the block */
            float dS[N * N];
            memset(dS, 0, sizeof dS);
            for (int c = nck - 1; c >= 0; c--) {
                int t0 = c * ckpt_every;
                int t1 = t0 + ckpt_every < T ? t0 + ckpt_every : T;
                memcpy(states, s_ckpt + (((size_t)bb * nck + c) * H + h) * N * N,
                       sizeof(float) * N * N);
                for (int t = t0; t < t1; t++) {
                    size_t o = ((size_t)bb * T + t) * C + (size_t)h * N;
                    float *Sn = states + (size_t)(t - t0 + 1) * N * N;
                    s_step_to(Sn - N * N, Sn, w + o, k + o, v + o, a + o, b + o,
                              sas + (size_t)(t - t0) * N);
                }
                for (int t = t1 - 1; t >= t0; t--) {
                    size_t o = ((size_t)bb * T + t) * C + (size_t)h * N;
                    const float *St = states + (size_t)(t - t0 + 1) * N * N;
                    const float *P = St - N * N;
                    s_back_step(dS, St, P, r + o, w + o, k + o, v + o, a + o, b + o, dy + o,
                                sas + (size_t)(t - t0) * N, dr + o, dw + o, dk + o, dv + o,
                                da + o, db + o);
                }
            }
            if (slots) {
                memcpy(slots + ((size_t)bb * H + h) * N * N, dS, sizeof dS);
            } else { /* serial fallback (par == 0): the order is fixed */
                float *d0 = ds0 + (size_t)h * N * N;
                for (int e = 0; e < N * N; e++) d0[e] += dS[e];
            }
        }
    }
    if (slots) {
#pragma omp parallel for schedule(static) if (par)
        for (int h = 0; h < H; h++) {
            float *d0 = ds0 + (size_t)h * N * N;
            for (int bb = 0; bb < B; bb++) {
                const float *sl = slots + ((size_t)bb * H + h) * N * N;
                for (int e = 0; e < N * N; e++) d0[e] += sl[e];
            }
        }
        free(slots);
    }
}
