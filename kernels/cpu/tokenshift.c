/*
 * tokenshift.c - token shift and lerps (see tokenshift.h).
 *
 * out_m,t = h_t (1 - mix_m) + h_{t-1} mix_m, so
 *   dh_t += sum_m dout_m,t (1 - mix_m) + dout_m,t+1 mix_m.
 */
/* The build compiles at -O2, where GCC vectorizes only loops whose trip
 * count it knows; these element-wise loops need the full vectorizer. */
#pragma GCC optimize("O3")

#include "kernels/cpu/tokenshift.h"

#include <stddef.h>

void tokenshift_forward_cpu(int B, int T, int C, const float *h, const float *prev,
                            int nmix, const float *const *mix, float *const *out)
{
#pragma omp parallel for collapse(2) schedule(dynamic, 8) if (B * T >= 32)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            size_t o = ((size_t)b * T + t) * C;
            const float *x = h + o;
            const float *xp = t > 0 ? x - C : (prev ? prev + (size_t)b * C : NULL);
            for (int m = 0; m < nmix; m++) {
                const float *mm = mix[m];
                float *y = out[m] + o;
                if (xp) {
                    for (int c = 0; c < C; c++) y[c] = x[c] + (xp[c] - x[c]) * mm[c];
                } else {
                    for (int c = 0; c < C; c++) y[c] = x[c] - x[c] * mm[c];
                }
            }
        }
    }
}

void tokenshift_backward_cpu(int B, int T, int C, int nmix, const float *const *mix,
                             const float *const *dout, float *dh)
{
#pragma omp parallel for collapse(2) schedule(dynamic, 8) if (B * T >= 32)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            size_t o = ((size_t)b * T + t) * C;
            float *d = dh + o;
            for (int m = 0; m < nmix; m++) {
                const float *mm = mix[m];
                const float *g = dout[m] + o;
                for (int c = 0; c < C; c++) d[c] += g[c] * (1.0f - mm[c]);
                if (t + 1 < T) {
                    const float *gn = g + C;
                    for (int c = 0; c < C; c++) d[c] += gn[c] * mm[c];
                }
            }
        }
    }
}
