/*
 * matmul.c - linear and LoRA products through cblas_sgemm (see matmul.h).
 * Row-major throughout; the transposes are sgemm flags, never copies.
 *
 * LoRA backward: with z = x @ w1, hid = act(z), out = hid @ w2,
 *   dhid = dout @ w2^T, dz = dhid * act'(z) (tanh: 1 - hid^2, sigmoid:
 *   hid (1 - hid)), dx += dz @ w1^T.
 */
/* The build compiles at -O2, where GCC vectorizes only loops whose trip
 * count it knows; these element-wise loops need the full vectorizer. */
#pragma GCC optimize("O3")

#include "kernels/cpu/matmul.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Row-blocked sgemm: C (M, N) = alpha A (M, K) op(B) + beta C, A never
 * transposed. The rows are split over the OpenMP threads and each block goes
 * to a single-threaded OpenBLAS call (engine_cpu_new sets OpenBLAS to one
 * thread), so the element-wise kernels and the products share one thread
 * pool: two pools spin-waiting against each other cost a third of the time
 * on a 2-core machine. Products under 4 MFLOP (one token in RNN mode) stay
 * on one thread: waking a team costs more than they take. */
void sgemm_rows_cpu(int transB, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc)
{
    enum CBLAS_TRANSPOSE tb = transB ? CblasTrans : CblasNoTrans;
    int nt = 1;
#ifdef _OPENMP
    if ((double)M * N * K >= 4e6 && !omp_in_parallel()) nt = omp_get_max_threads();
#endif
    if (nt <= 1) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* One block of rows per thread (or, for short wide products such as a
     * chunk of the head at a large vocabulary, of columns): each block is one
     * OpenBLAS call that packs its operands again, so blocks beyond one per
     * thread buy balance only on a busy machine, where the engine drops to
     * one thread anyway (engine_cpu.c). */
    int by_rows = M >= 64 * nt || N < 64 * nt;
    int len = by_rows ? M : N;
    int per = ((len + nt - 1) / nt + 7) & ~7;
    int nb = (len + per - 1) / per;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int blk = 0; blk < nb; blk++) {
        int i0 = blk * per, i1 = i0 + per < len ? i0 + per : len;
        if (by_rows)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, i1 - i0, N, K, alpha, A + (size_t)i0 * lda,
                        lda, B, ldb, beta, C + (size_t)i0 * ldc, ldc);
        else /* columns i0..i1 of C come from rows (transB) or columns of B */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, M, i1 - i0, K, alpha, A, lda,
                        transB ? B + (size_t)i0 * ldb : B + i0, ldb, beta, C + i0, ldc);
    }
}

void linear_forward_cpu(int R, int IN, int OUT, const float *inp, const float *w, float *out)
{
    sgemm_rows_cpu(1, R, OUT, IN, 1.0f, inp, IN, w, IN, 0.0f, out, OUT);
}

void linear_backward_cpu(int R, int IN, int OUT, const float *dout, const float *w, float *dinp)
{
    sgemm_rows_cpu(0, R, IN, OUT, 1.0f, dout, OUT, w, IN, 1.0f, dinp, IN);
}

void linear_backward_to_cpu(int R, int IN, int OUT, const float *dout, const float *w, float *dinp)
{
    sgemm_rows_cpu(0, R, IN, OUT, 1.0f, dout, OUT, w, IN, 0.0f, dinp, IN);
}

void lora_forward_cpu(int R, int C, int D, const float *x, const float *w1, const float *w2,
                      lora_act_t act, float *hid, float *out)
{
    sgemm_rows_cpu(0, R, D, C, 1.0f, x, C, w1, D, 0.0f, hid, D);
    size_t n = (size_t)R * D;
    if (act == LORA_TANH) {
#pragma omp parallel for schedule(dynamic, 8192) if (n >= 32768)
        for (size_t i = 0; i < n; i++) hid[i] = tanhf(hid[i]);
    } else if (act == LORA_SIGMOID) {
#pragma omp parallel for schedule(dynamic, 8192) if (n >= 32768)
        for (size_t i = 0; i < n; i++) hid[i] = 1.0f / (1.0f + expf(-hid[i]));
    }
    sgemm_rows_cpu(0, R, C, D, 1.0f, hid, D, w2, C, 0.0f, out, C);
}

void lora_backward_cpu(int R, int C, int D, const float *w1, const float *w2, lora_act_t act,
                       const float *hid, const float *dout, float *dhid, float *dx,
                       int accumulate)
{
    sgemm_rows_cpu(1, R, D, C, 1.0f, dout, C, w2, C, 0.0f, dhid, D);
    size_t n = (size_t)R * D;
    if (act == LORA_TANH) {
#pragma omp parallel for schedule(dynamic, 8192) if (n >= 32768)
        for (size_t i = 0; i < n; i++) dhid[i] *= 1.0f - hid[i] * hid[i];
    } else if (act == LORA_SIGMOID) {
#pragma omp parallel for schedule(dynamic, 8192) if (n >= 32768)
        for (size_t i = 0; i < n; i++) dhid[i] *= hid[i] * (1.0f - hid[i]);
    }
    sgemm_rows_cpu(1, R, C, D, 1.0f, dhid, D, w1, D, accumulate ? 1.0f : 0.0f, dx, C);
}
