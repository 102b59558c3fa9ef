/*
 * dbp.h - the input correlation Q of decorrelated backpropagation on the
 * state (SPEC section 4): per layer and head, Q = sum_t x_t x_t^T with the
 * effective query x_t = P_t r_t, P_t = G_1 ... G_t, G_t = diag(w_t) + a_t b_t^T,
 * computed without forming x_t by the backward recursion
 *
 *   M_T = r_T r_T^T,  M_t = r_t r_t^T + G_{t+1} M_{t+1} G_{t+1}^T,  Q = G_1 M_1 G_1^T
 *
 * in O(N^2) per step. Shapes: r, w, a, b are the WKV inputs (B, T, H, N);
 * rows (B) flags the sampled sequences (NULL = all); q (H, N, N) is
 * accumulated (+=) in double, summed over the flagged rows.
 */
#ifndef ST_KERNELS_CPU_DBP_H
#define ST_KERNELS_CPU_DBP_H

#include <stdint.h>

void dbp_q_cpu(int B, int T, int H, const float *r, const float *w, const float *a,
               const float *b, const uint8_t *rows, double *q);

#endif
