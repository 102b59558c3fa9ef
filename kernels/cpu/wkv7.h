/*
 * wkv7.h - the WKV7 recurrence on the CPU (the reference the CUDA kernel is
 * checked against). SPEC section 4:
 *
 *   S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T,   y_t = S_t r_t
 *
 * per batch row and head, S is N x N with row = value index i, column = key
 * index j (official layout S[h][i][j]). With the official model a = -kk and
 * b = kk * a. w is the decay factor itself, in (0, 1): exp(-exp(w_raw)).
 *
 * Shapes: B batch, T time, H heads, N = 64; every activation is (B, T, H, N)
 * contiguous, i.e. (B, T, C) with C = H * N. The initial state s0 (H, N, N) is
 * shared by every batch row (the tuned state).
 *
 * Conventions: outputs are overwritten, except ds0 which is accumulated (+=)
 * because it sums over batch rows, micro-batches and (by the caller) ranks.
 */
#ifndef ST_KERNELS_CPU_WKV7_H
#define ST_KERNELS_CPU_WKV7_H

#include <stddef.h>

/* Largest ckpt_every the CPU backward pass accepts: it recomputes one block
 * of states on the stack ((ckpt_every + 1) * 16 KB). */
#define WKV7_CPU_MAX_CKPT 16

/* Forward. s_ckpt, when not NULL, receives the state before every block of
 * ckpt_every steps: (B, ceil(T / ckpt_every), H, N, N), which the backward pass
 * recomputes from. s_final, when not NULL, receives S_T: (B, H, N, N). */
void wkv7_forward_cpu(int B, int T, int H,
                      const float *r, const float *w, const float *k,
                      const float *v, const float *a, const float *b,
                      const float *s0,     /* (H, N, N) */
                      float *y,            /* (B, T, H, N) out */
                      float *s_final,      /* (B, H, N, N) out, optional */
                      float *s_ckpt,       /* (B, nck, H, N, N) out, optional */
                      int ckpt_every);

/* Backward through the recurrence given dy = dL/dy. Writes dr, dw, dk, dv, da,
 * db (each (B, T, H, N), overwritten) and accumulates ds0 (H, N, N) +=.
 * Needs the checkpoints written by the forward pass with the same ckpt_every. */
void wkv7_backward_cpu(int B, int T, int H,
                       const float *r, const float *w, const float *k,
                       const float *v, const float *a, const float *b,
                       const float *s_ckpt, int ckpt_every,
                       const float *dy,
                       float *dr, float *dw, float *dk, float *dv,
                       float *da, float *db,
                       float *ds0);

#endif
