/*
 * rbf.h - the kernel-expanded state (SPEC section 4, "Kernel-expanded state"):
 * an extra output term per layer and head, added to the WKV output y_t
 * before GroupNorm:
 *
 *   rn_t   = r_t / |r_t|                           (head slice, N = 64)
 *   phi_m  = exp(-gamma |rn_t - u_m|^2)            m = 1..M, |u_m| = 1
 *   d_t    = prod_{s <= t} mean_j w_s[j]           (the head's mean decay)
 *   y_t   += d_t * U0 phi_t                        U0 is N x M
 *
 * With U0 = 0 the term is exactly zero, so the model is the original one.
 * Because |rn| = |u| = 1, |rn - u|^2 = 2 - 2 rn.u: phi needs one N x M product.
 *
 * Shapes: r, w, y, dy, dr, dw are (B, T, H, N) (i.e. (B, T, C)); U0 is
 * (H, N, M) row-major (U0[h][i][m]); sv (the support vectors) is (H, M, N).
 *
 * Conventions: the forward pass adds into y (+=); the backward pass adds
 * into dr, dw (+=, they already hold the WKV backward's share) and dU0
 * (+=, summed over batch rows and, by the caller, micro-batches and ranks).
 * |r_t| = 0 (never seen in practice) counts as rn = 0 with no gradient.
 */
#ifndef ST_KERNELS_CPU_RBF_H
#define ST_KERNELS_CPU_RBF_H

/* y (B, T, H, N) += d_t U0 phi(r_t / |r_t|). */
void rbf_forward_cpu(int B, int T, int H, int M, float gamma,
                     const float *r, const float *w,
                     const float *U0,  /* (H, N, M) */
                     const float *sv,  /* (H, M, N) */
                     float *y);

/* Given dy = dL/dy_t: dU0 += sum_t d_t dy_t phi_t^T, and the term's share of
 * dL/dr (through phi and the normalisation) and dL/dw (through d_t) is added
 * to dr and dw. dU0 may be NULL (the r and w shares are still added).
 * scratch holds B * H * T floats. */
void rbf_backward_cpu(int B, int T, int H, int M, float gamma,
                      const float *r, const float *w,
                      const float *U0, const float *sv,
                      const float *dy,
                      float *dr, float *dw, float *dU0,
                      float *scratch);

/* One step of RNN mode (B = T = 1): d (H) carries each head's running decay
 * product (1 before the first token) and is updated; y (H, N) += d U0 phi. */
void rbf_step_cpu(int H, int M, float gamma, const float *r, const float *w, const float *U0, const float *sv,
                  float *d, float *y);

/* The features phi (M) of one head-slice query r (N = 64), and 1 / |r|
 * (0 when r = 0); rn (N) receives r / |r|. Shared with the RNN path. */
float rbf_features_cpu(int M, float gamma, const float *r, const float *sv, float *rn, float *phi);

#endif
