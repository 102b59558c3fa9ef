/*
 * dbp_param.h - Decorrelated Backpropagation on the state (SPEC section 4):
 * the parametrisation S0 = A R and the update of R.
 *
 * Per layer and head (LH blocks of N x N, official layout S[h][i_value][j_key]):
 *
 *   S0 = A R                       R starts at the identity, A at the initial state
 *   dL/dA = (dL/dS0) R^T           what the optimizer sees instead of dL/dS0
 *   C = R E[x x^T] R^T             the correlation of z = R x, E[x x^T] = Q / n
 *   R <- R - eta ((1 - kappa) offdiag(C) + kappa diag(diag(C) - 1)) R
 *
 * where x_t = P_t r_t is the effective query the state acts on and Q = sum of
 * x_t x_t^T over the sampled (sequence, t) pairs, which the engine computes
 * inside the backward pass (engine_batch_t.dbp_q, kernels/cpu/dbp.c) for the
 * rows flagged in dbp_rows. n is the number of those pairs, all-reduced with
 * Q. Whitening the effective queries makes the state's gradient better
 * conditioned, which is the point of DBP; the exported state is always the
 * product A R, so inference engines need nothing new.
 *
 * Which rows are sampled is a pure function of (seed, step, index of the
 * sample in the global batch): every rank and every rerun picks the same ones.
 */
#ifndef ST_ENGINE_DBP_PARAM_H
#define ST_ENGINE_DBP_PARAM_H

#include <stddef.h>
#include <stdint.h>

/* S0 = A R for each of nblk blocks of N x N (nblk = L * H). */
void dbp_state(int nblk, int N, const float *A, const float *R, float *S0);

/* dA = dS0 R^T for each block (what Adam steps A with). */
void dbp_grad_A(int nblk, int N, const float *dS0, const float *R, float *dA);

/* The decorrelation step on R (nblk blocks) from Q (summed x x^T per block,
 * in double) over n_pairs sampled (sequence, t) pairs. n_pairs <= 0 leaves R
 * unchanged (no rows were sampled this step). The update is done in double;
 * scratch needs 3 * N * N doubles. */
void dbp_update_R(int nblk, int N, float *R, const double *Q, double n_pairs,
                  double eta, double kappa, double *scratch);

/* Sets each of nblk blocks to the N x N identity. */
void dbp_identity(int nblk, int N, float *R);

/* Whether the sample at index (0-based position in the global batch) of the
 * given step contributes to Q, with probability fraction. Deterministic. */
int dbp_row_sampled(uint64_t seed, int64_t step, int64_t index, double fraction);

#endif
