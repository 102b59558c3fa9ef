/*
 * tokenshift.h - RWKV's token shift with the per-channel lerps that feed the
 * time mix (x_r, x_w, x_k, x_v, x_a, x_g) and the channel mix (x_k):
 *
 *   xx_t = h_{t-1} - h_t   (h_{-1} = prev, the carried shift state, or 0)
 *   out_m,t = h_t + xx_t * mix_m
 *
 * Shapes: h (B, T, C); prev (B, C) or NULL for zeros; nmix outputs, each
 * (B, T, C), with coefficient vectors mix[m] (C). Up to TOKENSHIFT_MAX_MIX.
 */
#ifndef ST_KERNELS_CPU_TOKENSHIFT_H
#define ST_KERNELS_CPU_TOKENSHIFT_H

#define TOKENSHIFT_MAX_MIX 6

void tokenshift_forward_cpu(int B, int T, int C, const float *h, const float *prev,
                            int nmix, const float *const *mix, float *const *out);

/* dh (B, T, C) += gradient through every lerp from dout[m] (B, T, C). The
 * gradient to prev is not needed (GPT mode starts from zeros). */
void tokenshift_backward_cpu(int B, int T, int C, int nmix, const float *const *mix,
                             const float *const *dout, float *dh);

#endif
