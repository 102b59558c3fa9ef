/*
 * groupnorm.c - GroupNorm + bonus + gate, forward and backward (see
 * groupnorm.h). Per (row, head), with xhat = (y - mean) * rstd,
 * pre = xhat * ln_w + ln_b + u * v and out = pre * g:
 *   dg = dout * pre;  dpre = dout * g
 *   dy = rstd * (dxh - mean(dxh) - xhat * mean(dxh * xhat)),  dxh = dpre * ln_w
 *   dv = dpre * u;  du = sum dpre * v;  dr = du * k * r_k;  dk = du * r * r_k
 * (the bonus term's share only; see groupnorm.h)
 */
/* The build compiles at -O2, where GCC vectorizes only loops whose trip
 * count it knows; these element-wise loops need the full vectorizer. */
#pragma GCC optimize("O3")

#include "kernels/cpu/groupnorm.h"

#include <math.h>
#include <stddef.h>

void groupnorm_forward_cpu(int R, int H, int N, const float *y, const float *ln_w,
                           const float *ln_b, const float *r, const float *k, const float *v,
                           const float *r_k, const float *g, float *mean, float *rstd,
                           float *out)
{
    int C = H * N;
#pragma omp parallel for schedule(dynamic, 16) if (R >= 32)
    for (int row = 0; row < R; row++) {
        for (int h = 0; h < H; h++) {
            size_t p = (size_t)row * C + (size_t)h * N;
            double s = 0, ss = 0, u = 0;
            for (int n = 0; n < N; n++) s += y[p + n];
            double m = s / N;
            for (int n = 0; n < N; n++) {
                double d = y[p + n] - m;
                ss += d * d;
                u += (double)r[p + n] * k[p + n] * r_k[h * N + n];
            }
            float rs = (float)(1.0 / sqrt(ss / N + RWKV_GN_EPS));
            float mf = (float)m, uf = (float)u;
            for (int n = 0; n < N; n++) {
                int c = h * N + n;
                float pre = (y[p + n] - mf) * rs * ln_w[c] + ln_b[c] + uf * v[p + n];
                out[p + n] = pre * g[p + n];
            }
            if (mean) mean[(size_t)row * H + h] = mf;
            if (rstd) rstd[(size_t)row * H + h] = rs;
        }
    }
}

void groupnorm_backward_cpu(int R, int H, int N, const float *y, const float *ln_w,
                            const float *ln_b, const float *r, const float *k, const float *v,
                            const float *r_k, const float *g, const float *mean,
                            const float *rstd, const float *dout, float *dy, float *dr,
                            float *dk, float *dv, float *dg)
{
    int C = H * N;
#pragma omp parallel for schedule(dynamic, 16) if (R >= 32)
    for (int row = 0; row < R; row++) {
        for (int h = 0; h < H; h++) {
            size_t p = (size_t)row * C + (size_t)h * N;
            float mf = mean[(size_t)row * H + h], rs = rstd[(size_t)row * H + h];
            double u = 0;
            for (int n = 0; n < N; n++) u += (double)r[p + n] * k[p + n] * r_k[h * N + n];
            float uf = (float)u;
            double sdx = 0, sdxx = 0, du = 0;
            for (int n = 0; n < N; n++) {
                int c = h * N + n;
                float xh = (y[p + n] - mf) * rs;
                float pre = xh * ln_w[c] + ln_b[c] + uf * v[p + n];
                float dpre = dout[p + n] * g[p + n];
                dg[p + n] = dout[p + n] * pre;
                float dxh = dpre * ln_w[c];
                sdx += dxh;
                sdxx += (double)dxh * xh;
                du += (double)dpre * v[p + n];
                dv[p + n] = dpre * uf;
            }
            float mdx = (float)(sdx / N), mdxx = (float)(sdxx / N), duf = (float)du;
            for (int n = 0; n < N; n++) {
                int c = h * N + n;
                float xh = (y[p + n] - mf) * rs;
                float dxh = dout[p + n] * g[p + n] * ln_w[c];
                dy[p + n] = rs * (dxh - mdx - xh * mdxx);
                dr[p + n] = duf * k[p + n] * r_k[c];
                dk[p + n] = duf * r[p + n] * r_k[c];
            }
        }
    }
}
