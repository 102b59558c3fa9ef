/*
 * dbp_param.c - S0 = A R, dL/dA and the decorrelation update of R (see
 * dbp_param.h and SPEC section 4).
 *
 * Blocks are 64 x 64: the products go through OpenBLAS (row-major sgemm and
 * dgemm), one call per block. The R update runs in double because Q sums
 * thousands of outer products and C's off-diagonal entries, which drive the
 * update, are small differences of large numbers.
 *
 * The R update's blocks are independent, so they are spread over the
 * OpenMP team (BLAS single-threaded inside each, as the engines set it): on
 * a GPU rank it is the only host arithmetic of a DBP step, and at 24 x 2048
 * its 768 blocks took 112 ms on one core of the development machine. Each
 * block's arithmetic is the same whatever the thread count, so results do
 * not depend on it.
 */
#include "engine/dbp_param.h"
#include "common/st_rng.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

void dbp_state(int nblk, int N, const float *A, const float *R, float *S0)
{
    size_t nn = (size_t)N * N;
    for (int b = 0; b < nblk; b++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, A + b * nn, N, R + b * nn, N, 0.0f,
                    S0 + b * nn, N);
}

void dbp_grad_A(int nblk, int N, const float *dS0, const float *R, float *dA)
{
    size_t nn = (size_t)N * N;
    for (int b = 0; b < nblk; b++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, N, 1.0f, dS0 + b * nn, N, R + b * nn, N, 0.0f,
                    dA + b * nn, N);
}

/* One block's R update; scratch holds 3 N N doubles. */
static void s_update_block(int N, float *Rb, const double *Qb, double n_pairs, double eta, double kappa,
                           double *scratch)
{
    size_t nn = (size_t)N * N;
    double *Rd = scratch;          /* (N, N) R of this block in double */
    double *T = scratch + nn;      /* (N, N) R E[xx^T], then the update matrix */
    double *C = scratch + 2 * nn;  /* (N, N) R E[xx^T] R^T, then M R */
    for (size_t i = 0; i < nn; i++) Rd[i] = Rb[i];
    /* T = R (Q / n), C = T R^T */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0 / n_pairs, Rd, N, Qb, N, 0.0, T, N);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, N, 1.0, T, N, Rd, N, 0.0, C, N);
    /* M = (1 - kappa) offdiag(C) + kappa diag(diag(C) - 1), into T */
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++)
            T[i * N + j] = i == j ? kappa * (C[i * N + i] - 1.0) : (1.0 - kappa) * C[i * N + j];
    /* R <- R - eta M R */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0, T, N, Rd, N, 0.0, C, N);
    for (size_t i = 0; i < nn; i++) Rb[i] = (float)(Rd[i] - eta * C[i]);
}

void dbp_update_R(int nblk, int N, float *R, const double *Q, double n_pairs,
                  double eta, double kappa, double *scratch)
{
    if (!(n_pairs > 0)) return;
    size_t nn = (size_t)N * N;
#ifdef _OPENMP
    /* every thread gets its own scratch; one that cannot (out of memory)
     * uses the caller's, one block at a time */
#pragma omp parallel if (nblk > 1)
    {
        double *own = malloc(3 * nn * sizeof(double));
#pragma omp for schedule(static)
        for (int b = 0; b < nblk; b++) {
            if (own) {
                s_update_block(N, R + b * nn, Q + b * nn, n_pairs, eta, kappa, own);
            } else {
#pragma omp critical(dbp_scratch)
                s_update_block(N, R + b * nn, Q + b * nn, n_pairs, eta, kappa, scratch);
            }
        }
        free(own);
    }
#else
    for (int b = 0; b < nblk; b++) s_update_block(N, R + b * nn, Q + b * nn, n_pairs, eta, kappa, scratch);
#endif
}

void dbp_identity(int nblk, int N, float *R)
{
    size_t nn = (size_t)N * N;
    memset(R, 0, (size_t)nblk * nn * sizeof *R);
    for (int b = 0; b < nblk; b++)
        for (int i = 0; i < N; i++) R[b * nn + (size_t)i * N + i] = 1.0f;
}

int dbp_row_sampled(uint64_t seed, int64_t step, int64_t index, double fraction)
{
    if (fraction >= 1.0) return 1;
    if (!(fraction > 0.0)) return 0;
    uint64_t h = st_mix64(st_mix64(st_mix64(seed ^ 0x44425021ULL) ^ (uint64_t)step) ^ (uint64_t)index);
    double u = (double)(h >> 11) * (1.0 / 9007199254740992.0); /* [0, 1) from 53 bits */
    return u < fraction;
}
