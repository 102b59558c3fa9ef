/*
 * wkv7.c - WKV7 forward and backward on the CPU, fp32 (see wkv7.h; SPEC
 * section 4). One (batch row, head) pair is one independent recurrence, so
 * the pairs are spread over OpenMP threads; inside a pair the state S (N x N,
 * 16 KB) stays in L1/L2 and every step is one fused pass over its rows.
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
#include <string.h>

#define N 64

/* One step of the recurrence on S in place; writes y (N). */
static void s_step(float *restrict S, const float *restrict r, const float *restrict w,
                   const float *restrict k, const float *restrict v, const float *restrict a,
                   const float *restrict b, float *restrict y)
{
    for (int i = 0; i < N; i++) {
        float *Si = S + i * N;
        float sa = 0;
        for (int j = 0; j < N; j++) sa += Si[j] * a[j];
        float vi = v[i], yi = 0;
        for (int j = 0; j < N; j++) {
            float s = Si[j] * w[j] + sa * b[j] + vi * k[j];
            Si[j] = s;
            yi += s * r[j];
        }
        if (y) y[i] = yi;
    }
}

void wkv7_forward_cpu(int B, int T, int H,
                      const float *r, const float *w, const float *k,
                      const float *v, const float *a, const float *b,
                      const float *s0, float *y, float *s_final, float *s_ckpt, int ckpt_every)
{
    int C = H * N;
    int nck = s_ckpt ? (T + ckpt_every - 1) / ckpt_every : 0;
#pragma omp parallel for collapse(2) schedule(static)
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
#pragma omp parallel for collapse(2) schedule(static)
    for (int bb = 0; bb < B; bb++) {
        for (int h = 0; h < H; h++) {
            /* states[s] = state before step t0 + s; states[n] = after the last */
            float states[(WKV7_CPU_MAX_CKPT + 1) * N * N];
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
                    memcpy(Sn, Sn - N * N, sizeof(float) * N * N);
                    s_step(Sn, r + o, w + o, k + o, v + o, a + o, b + o, NULL);
                }
                for (int t = t1 - 1; t >= t0; t--) {
                    size_t o = ((size_t)bb * T + t) * C + (size_t)h * N;
                    const float *St = states + (size_t)(t - t0 + 1) * N * N;
                    const float *P = St - N * N;
                    const float *rt = r + o, *wt = w + o, *kt = k + o, *vt = v + o;
                    const float *at = a + o, *bt = b + o, *dyt = dy + o;
                    float drt[N], dkt[N], dwt[N], dbt[N], dat[N];
                    for (int j = 0; j < N; j++) drt[j] = dkt[j] = dwt[j] = dbt[j] = dat[j] = 0;
                    for (int i = 0; i < N; i++) {
                        float *dSi = dS + i * N;
                        const float *Sti = St + i * N, *Pi = P + i * N;
                        float dyi = dyt[i], vi = vt[i];
                        float dvi = 0, sa = 0, dsa = 0;
                        for (int j = 0; j < N; j++) {
                            float g = dSi[j] + dyi * rt[j];
                            dSi[j] = g;
                            drt[j] += Sti[j] * dyi;
                            dvi += g * kt[j];
                            dkt[j] += g * vi;
                            dwt[j] += g * Pi[j];
                            sa += Pi[j] * at[j];
                            dsa += g * bt[j];
                        }
                        for (int j = 0; j < N; j++) {
                            dbt[j] += dSi[j] * sa;
                            dat[j] += Pi[j] * dsa;
                            dSi[j] = dSi[j] * wt[j] + dsa * at[j];
                        }
                        dv[o + i] = dvi;
                    }
                    memcpy(dr + o, drt, sizeof drt);
                    memcpy(dk + o, dkt, sizeof dkt);
                    memcpy(dw + o, dwt, sizeof dwt);
                    memcpy(db + o, dbt, sizeof dbt);
                    memcpy(da + o, dat, sizeof dat);
                }
            }
            float *d0 = ds0 + (size_t)h * N * N;
#pragma omp critical(wkv7_ds0)
            for (int e = 0; e < N * N; e++) d0[e] += dS[e];
        }
    }
}
