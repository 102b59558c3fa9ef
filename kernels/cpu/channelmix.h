/*
 * channelmix.h - RWKV-7's channel mix (the FFN), official RWKV_CMix_x070:
 *
 *   xk = h + (shift(h) - h) * x_k;  out = relu(xk key^T)^2 value^T
 *
 * Shapes: h, out (B, T, C); prev (B, C) the carried shift state or NULL for
 * zeros; key (F, C), value (C, F) as nn.Linear weights; kpre (R, F) with
 * R = B * T is kept for the backward pass; xk (R, C) and act (R, F) are
 * scratch.
 */
#ifndef ST_KERNELS_CPU_CHANNELMIX_H
#define ST_KERNELS_CPU_CHANNELMIX_H

void channelmix_forward_cpu(int B, int T, int C, int F, const float *h, const float *prev,
                            const float *x_k, const float *key, const float *value,
                            float *xk, float *kpre, float *act, float *out);

/* dh (B, T, C) += d out / d h applied to dout. dact (R, F) and dxk (R, C)
 * are scratch. */
void channelmix_backward_cpu(int B, int T, int C, int F, const float *x_k, const float *key,
                             const float *value, const float *kpre, const float *dout,
                             float *dact, float *dxk, float *dh);

#endif
