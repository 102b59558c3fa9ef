/*
 * timemix.c - element-wise time-mix math and its gradient (see timemix.h).
 *
 * Gradients, with sigma = sigmoid(w0 + wl) and u = kraw * k_k, n = |u| per head:
 *   dwl  = dw * w * (-0.606531) * sigma (1 - sigma)
 *   dkk  = -dwa + dwb * a
 *   da   = dwb * kk + dkf * kraw * k_a,  dal = da * a (1 - a)
 *   du   = (dkk - kk (kk . dkk)) / n   (n > eps; else dkk / eps, F.normalize's
 *                                       clamp makes it linear there)
 *   dkraw = dkf * (1 + (a - 1) k_a) + du * k_k
 */
/* The build compiles at -O2, where GCC vectorizes only loops whose trip
 * count it knows; these element-wise loops need the full vectorizer. */
#pragma GCC optimize("O3")

#include "kernels/cpu/timemix.h"

#include <math.h>
#include <stddef.h>

static inline float s_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

void timemix_forward_cpu(int R, int H, int N, const float *wl, const float *al,
                         const float *kraw, const float *w0, const float *a0,
                         const float *k_k, const float *k_a,
                         float *w, float *a, float *kk, float *kf, float *wa, float *wb)
{
    int C = H * N;
#pragma omp parallel for schedule(dynamic, 16) if (R >= 32)
    for (int r = 0; r < R; r++) {
        size_t o = (size_t)r * C;
        for (int c = 0; c < C; c++) {
            w[o + c] = expf(-RWKV_DECAY_SCALE * s_sigmoid(w0[c] + wl[o + c]));
            a[o + c] = s_sigmoid(a0[c] + al[o + c]);
        }
        for (int h = 0; h < H; h++) {
            size_t p = o + (size_t)h * N;
            double ss = 0;
            for (int n = 0; n < N; n++) {
                float u = kraw[p + n] * k_k[h * N + n];
                ss += (double)u * u;
            }
            float nrm = (float)sqrt(ss);
            float inv = 1.0f / (nrm > RWKV_KK_EPS ? nrm : RWKV_KK_EPS);
            for (int n = 0; n < N; n++) {
                int c = h * N + n;
                float q = kraw[p + n] * k_k[c] * inv;
                kk[p + n] = q;
                kf[p + n] = kraw[p + n] * (1.0f + (a[p + n] - 1.0f) * k_a[c]);
                wa[p + n] = -q;
                wb[p + n] = q * a[p + n];
            }
        }
    }
}

void timemix_backward_cpu(int R, int H, int N, const float *wl, const float *w0,
                          const float *w, const float *a, const float *kk, const float *kraw,
                          const float *k_k, const float *k_a,
                          const float *dw, const float *dkf, const float *dwa, const float *dwb,
                          float *dwl, float *dal, float *dkraw)
{
    int C = H * N;
#pragma omp parallel for schedule(dynamic, 16) if (R >= 32)
    for (int r = 0; r < R; r++) {
        size_t o = (size_t)r * C;
        for (int c = 0; c < C; c++) {
            float sg = s_sigmoid(w0[c] + wl[o + c]);
            dwl[o + c] = dw[o + c] * w[o + c] * (-RWKV_DECAY_SCALE) * sg * (1.0f - sg);
        }
        for (int h = 0; h < H; h++) {
            size_t p = o + (size_t)h * N;
            double ss = 0, dot = 0;
            for (int n = 0; n < N; n++) {
                float u = kraw[p + n] * k_k[h * N + n];
                ss += (double)u * u;
                float dkk = -dwa[p + n] + dwb[p + n] * a[p + n];
                dot += (double)dkk * kk[p + n];
            }
            float nrm = (float)sqrt(ss);
            int clamped = !(nrm > RWKV_KK_EPS);
            float inv = 1.0f / (clamped ? RWKV_KK_EPS : nrm);
            for (int n = 0; n < N; n++) {
                int c = h * N + n;
                float av = a[p + n];
                float dkk = -dwa[p + n] + dwb[p + n] * av;
                float du = clamped ? dkk * inv : (dkk - kk[p + n] * (float)dot) * inv;
                float da = dwb[p + n] * kk[p + n] + dkf[p + n] * kraw[p + n] * k_a[c];
                dal[p + n] = da * av * (1.0f - av);
                dkraw[p + n] = dkf[p + n] * (1.0f + (av - 1.0f) * k_a[c]) + du * k_k[c];
            }
        }
    }
}

void vmix_forward_cpu(int R, int C, const float *vraw, const float *v_first, const float *v0,
                      float *vl_to_s, float *v)
{
#pragma omp parallel for schedule(dynamic, 16) if (R >= 32)
    for (int r = 0; r < R; r++) {
        size_t o = (size_t)r * C;
        for (int c = 0; c < C; c++) {
            float s = s_sigmoid(v0[c] + vl_to_s[o + c]);
            vl_to_s[o + c] = s;
            v[o + c] = vraw[o + c] + (v_first[o + c] - vraw[o + c]) * s;
        }
    }
}

void vmix_backward_cpu(int R, int C, const float *vraw, const float *v_first, const float *s,
                       const float *dv, float *dvraw, float *dv_first, float *dvl)
{
    size_t n = (size_t)R * C;
#pragma omp parallel for schedule(dynamic, 8192) if (n >= 32768)
    for (size_t i = 0; i < n; i++) {
        float sv = s[i], g = dv[i];
        dvraw[i] = g * (1.0f - sv);
        dv_first[i] += g * sv;
        dvl[i] = g * (v_first[i] - vraw[i]) * sv * (1.0f - sv);
    }
}
