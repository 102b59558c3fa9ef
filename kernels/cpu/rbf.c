/*
 * rbf.c - the kernel-expanded state's output term and its backward pass on
 * the CPU (see rbf.h for the math and shapes). fp32 with the feature map
 * recomputed in the backward pass (one N x M product per position and head,
 * about what the WKV step itself costs), so the forward pass stores nothing.
 *
 * Gradient of the decay product: d_t = prod_{s<=t} m_s with m_s the mean
 * decay of step s, so dL/dm_s = sum_{t>=s} (dL/dd_t) d_t / m_s. The backward
 * pass stores q_t = (dL/dd_t) d_t per position in scratch and sums it from
 * the end (m_s >= exp(-0.607) for RWKV-7's decay, so the division is safe).
 */
#include "kernels/cpu/rbf.h"

#include <math.h>
#include <stddef.h>

#define N 64
#define RBF_MAX_M 1024 /* the caller refuses more features (engine/kstate.h) */

float rbf_features_cpu(int M, float gamma, const float *r, const float *sv, float *rn, float *phi)
{
    double ss = 0;
    for (int i = 0; i < N; i++) ss += (double)r[i] * r[i];
    float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
    for (int i = 0; i < N; i++) rn[i] = r[i] * inv;
    for (int m = 0; m < M; m++) {
        const float *u = sv + (size_t)m * N;
        float c = 0;
        for (int i = 0; i < N; i++) c += rn[i] * u[i];
        /* |rn - u|^2 = 2 - 2 c for unit vectors; rn = 0 gives |u|^2 = 1 */
        float dist2 = inv > 0 ? 2.0f - 2.0f * c : 1.0f;
        phi[m] = expf(-gamma * dist2);
    }
    return inv;
}

static float s_mean_decay(const float *w)
{
    float s = 0;
    for (int j = 0; j < N; j++) s += w[j];
    return s / N;
}

void rbf_forward_cpu(int B, int T, int H, int M, float gamma, const float *r, const float *w,
                     const float *U0, const float *sv, float *y)
{
    if (M < 1 || M > RBF_MAX_M) return;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            float rn[N], phi[RBF_MAX_M];
            const float *U = U0 + (size_t)h * N * M, *S = sv + (size_t)h * M * N;
            float d = 1.0f;
            for (int t = 0; t < T; t++) {
                size_t o = (((size_t)b * T + t) * H + h) * N;
                d *= s_mean_decay(w + o);
                rbf_features_cpu(M, gamma, r + o, S, rn, phi);
                for (int i = 0; i < N; i++) {
                    const float *Ui = U + (size_t)i * M;
                    float z = 0;
                    for (int m = 0; m < M; m++) z += Ui[m] * phi[m];
                    y[o + i] += d * z;
                }
            }
        }
}

void rbf_backward_cpu(int B, int T, int H, int M, float gamma, const float *r, const float *w,
                      const float *U0, const float *sv, const float *dy, float *dr, float *dw,
                      float *dU0, float *scratch)
{
    if (M < 1 || M > RBF_MAX_M) return;
    /* one thread per head: dU0[h] is then written by one thread only */
#pragma omp parallel for schedule(static)
    for (int h = 0; h < H; h++) {
        float rn[N], phi[RBF_MAX_M], dphi[RBF_MAX_M], drn[N];
        const float *U = U0 + (size_t)h * N * M, *S = sv + (size_t)h * M * N;
        float *dU = dU0 ? dU0 + (size_t)h * N * M : NULL;
        for (int b = 0; b < B; b++) {
            float *q = scratch + ((size_t)b * H + h) * T;
            float d = 1.0f;
            for (int t = 0; t < T; t++) {
                size_t o = (((size_t)b * T + t) * H + h) * N;
                d *= s_mean_decay(w + o);
                float inv = rbf_features_cpu(M, gamma, r + o, S, rn, phi);
                const float *g = dy + o;
                /* q_t = d g.(U phi); dU += d g phi^T; dphi = d U^T g */
                float gz = 0;
                for (int m = 0; m < M; m++) dphi[m] = 0;
                for (int i = 0; i < N; i++) {
                    const float *Ui = U + (size_t)i * M;
                    float gi = g[i], z = 0, dg = d * gi;
                    for (int m = 0; m < M; m++) {
                        z += Ui[m] * phi[m];
                        dphi[m] += Ui[m] * gi;
                    }
                    if (dU)
                        for (int m = 0; m < M; m++) dU[(size_t)i * M + m] += dg * phi[m];
                    gz += gi * z;
                }
                q[t] = d * gz;
                if (inv == 0) continue; /* r = 0: phi does not depend on r here */
                /* phi_m = exp(-2 gamma (1 - rn.u_m)): dphi/d(rn.u_m) = 2 gamma phi_m */
                for (int i = 0; i < N; i++) drn[i] = 0;
                for (int m = 0; m < M; m++) {
                    float dc = d * dphi[m] * 2.0f * gamma * phi[m];
                    const float *u = S + (size_t)m * N;
                    for (int i = 0; i < N; i++) drn[i] += dc * u[i];
                }
                /* rn = r / |r|: dr = (drn - rn (rn.drn)) / |r| */
                float p = 0;
                for (int i = 0; i < N; i++) p += rn[i] * drn[i];
                for (int i = 0; i < N; i++) dr[o + i] += (drn[i] - rn[i] * p) * inv;
            }
            /* dL/dm_s = sum_{t>=s} q_t / m_s, shared evenly by the N decays */
            float acc = 0;
            for (int t = T - 1; t >= 0; t--) {
                size_t o = (((size_t)b * T + t) * H + h) * N;
                acc += q[t];
                float dm = acc / s_mean_decay(w + o) / N;
                for (int j = 0; j < N; j++) dw[o + j] += dm;
            }
        }
    }
}

void rbf_step_cpu(int H, int M, float gamma, const float *r, const float *w, const float *U0, const float *sv,
                  float *d, float *y)
{
    if (M < 1 || M > RBF_MAX_M) return;
    for (int h = 0; h < H; h++) {
        float rn[N], phi[RBF_MAX_M];
        const float *U = U0 + (size_t)h * N * M;
        d[h] *= s_mean_decay(w + (size_t)h * N);
        rbf_features_cpu(M, gamma, r + (size_t)h * N, sv + (size_t)h * M * N, rn, phi);
        for (int i = 0; i < N; i++) {
            float z = 0;
            for (int m = 0; m < M; m++) z += U[(size_t)i * M + m] * phi[m];
            y[(size_t)h * N + i] += d[h] * z;
        }
    }
}
