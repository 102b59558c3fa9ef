/*
 * layernorm.h - LayerNorm over the last dimension, fp32 (the model's ln0, ln1,
 * ln2 and ln_out; eps 1e-5 as in the official model).
 *
 * Shapes: inp and out are (R, C) with R = B * T rows; mean and rstd are (R),
 * saved by the forward pass for the backward pass. Only the input gradient is
 * computed: state tuning never needs weight gradients (SPEC section 4).
 */
#ifndef ST_KERNELS_CPU_LAYERNORM_H
#define ST_KERNELS_CPU_LAYERNORM_H

#define RWKV_LN_EPS 1e-5f

/* out = (inp - mean) * rstd * w + b per row. mean/rstd (R) may be NULL when
 * no backward pass follows (RNN mode). out may alias inp. */
void layernorm_forward_cpu(int R, int C, const float *inp, const float *w, const float *b,
                           float eps, float *out, float *mean, float *rstd);

/* dinp (R, C) += d out / d inp applied to dout (R, C); accumulated because
 * every LayerNorm here sits on a residual branch. */
void layernorm_backward_cpu(int R, int C, const float *inp, const float *w,
                            const float *mean, const float *rstd,
                            const float *dout, float *dinp);

#endif
