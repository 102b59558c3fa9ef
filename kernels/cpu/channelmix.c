/*
 * channelmix.c - channel mix forward and input-gradient backward (see
 * channelmix.h). Backward: dact = dout value; dkpre = dact * 2 relu(kpre);
 * dxk = dkpre key; then through the token-shift lerp into dh.
 */
#include "kernels/cpu/channelmix.h"

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/tokenshift.h"

#include <stddef.h>
#include <string.h>

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
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float z = kpre[i] > 0.0f ? kpre[i] : 0.0f;
        act[i] = z * z;
    }
    linear_forward_cpu(R, F, C, act, value, out);
}

void channelmix_backward_cpu(int B, int T, int C, int F, const float *x_k, const float *key,
                             const float *value, const float *kpre, const float *dout,
                             float *dact, float *dxk, float *dh)
{
    int R = B * T;
    memset(dact, 0, (size_t)R * F * sizeof(float));
    linear_backward_cpu(R, F, C, dout, value, dact);
    size_t n = (size_t)R * F;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dact[i] *= kpre[i] > 0.0f ? 2.0f * kpre[i] : 0.0f;
    memset(dxk, 0, (size_t)R * C * sizeof(float));
    linear_backward_cpu(R, C, F, dact, key, dxk);
    const float *mix[1] = {x_k};
    const float *douts[1] = {dxk};
    tokenshift_backward_cpu(B, T, C, 1, mix, douts, dh);
}
