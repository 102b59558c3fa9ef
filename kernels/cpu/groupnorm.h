/*
 * groupnorm.h - the time mix's output stage: GroupNorm of the WKV output per
 * head (ln_x, eps 64e-5), plus the "bonus" term, times the gate:
 *
 *   out = (GN(y) + u * v) * g,   u = sum_n r_n k_n r_k[h, n] per head
 *
 * Shapes: y, r, k, v, g, out are (R, C), R = B * T, C = H * N; ln_w, ln_b
 * (C); r_k (H, N); mean, rstd (R, H) saved for the backward pass (may be NULL
 * in forward-only use).
 */
#ifndef ST_KERNELS_CPU_GROUPNORM_H
#define ST_KERNELS_CPU_GROUPNORM_H

#define RWKV_GN_EPS 64e-5f

void groupnorm_forward_cpu(int R, int H, int N, const float *y, const float *ln_w,
                           const float *ln_b, const float *r, const float *k, const float *v,
                           const float *r_k, const float *g, float *mean, float *rstd,
                           float *out);

/* From dout: dy, dg and the bonus term's share of dr, dk, dv, all
 * overwritten (the caller adds the WKV backward pass's share, which needs dy
 * first). */
void groupnorm_backward_cpu(int R, int H, int N, const float *y, const float *ln_w,
                            const float *ln_b, const float *r, const float *k, const float *v,
                            const float *r_k, const float *g, const float *mean,
                            const float *rstd, const float *dout, float *dy, float *dr,
                            float *dk, float *dv, float *dg);

#endif
