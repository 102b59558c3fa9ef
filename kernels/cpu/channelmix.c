/*
 * channelmix.c - channel mix forward and input-gradient backward (see
 * channelmix.h). Backward: dact = dout value; dkpre = dact * 2 relu(kpre);
 * dxk = dkpre key; then through the token-shift lerp into dh.
 */
/* The build compiles at -O2, where GCC vectorizes only loops whose trip
 * count it knows; these element-wise loops need the full vectorizer. */
#pragma GCC optimize("O3")

#include "kernels/cpu/channelmix.h"

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/tokenshift.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* max(x, 0) without a branch or a libm call, so the loops vectorize: clear
 * the value when its sign bit is set (a comparison would need
 * -fno-trapping-math to be if-converted). */
static inline float s_relu(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u &= (uint32_t)((int32_t)~u >> 31);
    memcpy(&x, &u, sizeof x);
    return x;
}

void channelmix_forward_cpu(int B, int T, int C, int F, const float *h, const float *prev,
                            const float *x_k, const float *key, const float *value,
                            float *xk, float *kpre, float *act, float *out)
{
    int R = B * T;
    const float *mix[1] = {x_k};
    float *outs[1] = {xk};
    tokenshift_forward_cpu(B, T, C, h, prev, 1, mix, outs);
    linear_forward_cpu(R, C, F, xk, key, kpre);
    size_t n = (size_t)R * F;
#pragma omp parallel for schedule(dynamic, 8192) if (n >= 32768)
    for (size_t i = 0; i < n; i++) {
        float z = s_relu(kpre[i]);
        act[i] = z * z;
    }
    linear_forward_cpu(R, F, C, act, value, out);
}

void channelmix_backward_cpu(int B, int T, int C, int F, const float *x_k, const float *key,
                             const float *value, const float *kpre, const float *dout,
                             float *dact, float *dxk, float *dh)
{
    int R = B * T;
    sgemm_rows_cpu(0, R, F, C, 1.0f, dout, C, value, F, 0.0f, dact, F);
    size_t n = (size_t)R * F;
#pragma omp parallel for schedule(dynamic, 8192) if (n >= 32768)
    for (size_t i = 0; i < n; i++) dact[i] *= 2.0f * s_relu(kpre[i]);
    sgemm_rows_cpu(0, R, C, F, 1.0f, dact, F, key, C, 0.0f, dxk, C);
    const float *mix[1] = {x_k};
    const float *douts[1] = {dxk};
    tokenshift_backward_cpu(B, T, C, 1, mix, douts, dh);
}
