/*
 * layernorm.c - LayerNorm forward and input-gradient backward (see
 * layernorm.h). Row statistics are accumulated in double: rows are short
 * (C <= a few thousand) and the extra precision keeps the fp32 result within
 * the fixtures' 1e-4 tolerance without a second pass.
 *
 * Backward, with xhat = (x - mean) * rstd and g = dout * w:
 *   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
 */
/* The build compiles at -O2, where GCC vectorizes only loops whose trip
 * count it knows; these element-wise loops need the full vectorizer. */
#pragma GCC optimize("O3")

#include "kernels/cpu/layernorm.h"

#include <math.h>
#include <stddef.h>

void layernorm_forward_cpu(int R, int C, const float *inp, const float *w, const float *b,
                           float eps, float *out, float *mean, float *rstd)
{
#pragma omp parallel for schedule(dynamic, 16) if (R >= 32)
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * C;
        float *o = out + (size_t)r * C;
        double s = 0, ss = 0;
        for (int c = 0; c < C; c++) s += x[c];
        double m = s / C;
        for (int c = 0; c < C; c++) {
            double d = x[c] - m;
            ss += d * d;
        }
        float rs = (float)(1.0 / sqrt(ss / C + eps));
        float mf = (float)m;
        for (int c = 0; c < C; c++) o[c] = (x[c] - mf) * rs * w[c] + b[c];
        if (mean) mean[r] = mf;
        if (rstd) rstd[r] = rs;
    }
}

void layernorm_backward_cpu(int R, int C, const float *inp, const float *w,
                            const float *mean, const float *rstd,
                            const float *dout, float *dinp)
{
#pragma omp parallel for schedule(dynamic, 16) if (R >= 32)
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * C;
        const float *dy = dout + (size_t)r * C;
        float *dx = dinp + (size_t)r * C;
        float m = mean[r], rs = rstd[r];
        double sg = 0, sgx = 0;
        for (int c = 0; c < C; c++) {
            float g = dy[c] * w[c];
            sg += g;
            sgx += (double)g * (x[c] - m) * rs;
        }
        float mg = (float)(sg / C), mgx = (float)(sgx / C);
        for (int c = 0; c < C; c++) {
            float xhat = (x[c] - m) * rs;
            dx[c] += rs * (dy[c] * w[c] - mg - xhat * mgx);
        }
    }
}
