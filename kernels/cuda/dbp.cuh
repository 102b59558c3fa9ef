/*
 * dbp.cuh - the DBP input correlation Q on the GPU (SPEC section 4), the same
 * recursion and precision as kernels/cpu/dbp.c:
 *
 *   M_{T-1} = r r^T,  M_t = r_t r_t^T + G_{t+1} M_{t+1} G_{t+1}^T,
 *   Q = G_0 M_0 G_0^T,   G_t = diag(w_t) + a_t b_t^T (the WKV's a and b)
 *
 * summed (+=) over the sampled batch rows into q (H, N, N), in double because M
 * sums T outer products whose entries span many orders of magnitude. M is
 * symmetric, so thread j keeps row j (= column j) and the sandwich
 * G M G^T = P diag(w) + d a^T, P = diag(w) M + a c^T, c = M b, d = P b needs one
 * exchange per token (c, double-buffered in shared memory). Inputs are staged
 * DBP_CHUNK tokens at a time, as in wkv7.cu, converted to double once when
 * staged (each value is read by all 64 threads: converting it at every use
 * cost as much issue as the products themselves). The two dot products per
 * token (c_j and d_j) are summed as four interleaved partial sums, so the
 * dependent chain is 16 multiply-adds long instead of 64: the kernel is
 * latency-bound (two warps per block, one sequential pass over T). One
 * block of 64 threads per (h, b); blocks of unsampled rows return at once.
 *
 * Shapes: r, a, b (B, T, H, N) of storage type T; w (B, T, H, N) fp32;
 * rows (B) nonzero = sampled; q (H, N, N) double, accumulated with atomics.
 *
 * The R rule (engine/dbp_param.h, engine/cuda/engine_cuda_params.cu): per
 * block of N x N, in double as dbp_update_R does on the host,
 *
 *   E = R Q R^T / n,  M = (1 - kappa) offdiag(E) + kappa diag(diag(E) - 1),
 *   R <- (float)(R - eta M R)
 *
 * The three products are strided-batched cuBLAS DGEMMs in the caller; the
 * element-wise parts are the kernels below, each over all nblk blocks (n =
 * nblk N N values): R to double, E to M in place, and the update, which also
 * flags a non-finite R (the tuning loop's divergence check). They are
 * templates (R is float, E double) only so that every file including this
 * header may define them. Each double
 * operation is an explicit round-to-nearest intrinsic, as in adam.cuh, so the
 * element-wise parts round as the host's do; the products differ from
 * OpenBLAS's only in summation order.
 */
#ifndef ST_KERNELS_CUDA_DBP_CUH
#define ST_KERNELS_CUDA_DBP_CUH

#include "kernels/cuda/common.cuh"

#include <stdint.h>

namespace st {

constexpr int DBP_N = 64;
constexpr int DBP_CHUNK = 16;

template <typename T>
__global__ void __launch_bounds__(DBP_N) dbp_q_kernel(int Tlen, int H, const T *__restrict__ r,
                                                      const float *__restrict__ w, const T *__restrict__ a,
                                                      const T *__restrict__ b, const uint8_t *__restrict__ rows,
                                                      double *__restrict__ q)
{
    const int h = blockIdx.x, bb = blockIdx.y, j = threadIdx.x;
    if (!rows[bb]) return; /* uniform over the block */
    __shared__ double sr[DBP_CHUNK][DBP_N], sw[DBP_CHUNK][DBP_N], sa[DBP_CHUNK][DBP_N], sb[DBP_CHUNK][DBP_N];
    __shared__ double sc[2][DBP_N];
    double M[DBP_N];
#pragma unroll
    for (int l = 0; l < DBP_N; l++) M[l] = 0.0;
    const int nck = (Tlen + DBP_CHUNK - 1) / DBP_CHUNK;
    for (int c = nck - 1; c >= 0; c--) {
        const int t0 = c * DBP_CHUNK, n = min(DBP_CHUNK, Tlen - t0);
        __syncthreads();
        for (int u = 0; u < n; u++) {
            size_t idx = (((size_t)bb * Tlen + t0 + u) * H + h) * DBP_N + j;
            sr[u][j] = (double)to_f(r[idx]);
            sw[u][j] = (double)w[idx];
            sa[u][j] = (double)to_f(a[idx]);
            sb[u][j] = (double)to_f(b[idx]);
        }
        __syncthreads();
        for (int u = n - 1; u >= 0; u--) {
            const int p = (t0 + u) & 1;
            const double rj = sr[u][j];
            double c4[4] = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
            for (int l = 0; l < DBP_N; l++) {
                M[l] += rj * sr[u][l];
                c4[l & 3] += M[l] * sb[u][l];
            }
            sc[p][j] = (c4[0] + c4[1]) + (c4[2] + c4[3]);
            __syncthreads();
            const double wj = sw[u][j], aj = sa[u][j];
            double d4[4] = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
            for (int l = 0; l < DBP_N; l++) {
                M[l] = wj * M[l] + aj * sc[p][l];
                d4[l & 3] += M[l] * sb[u][l];
            }
            const double d = (d4[0] + d4[1]) + (d4[2] + d4[3]);
#pragma unroll
            for (int l = 0; l < DBP_N; l++) M[l] = M[l] * sw[u][l] + d * sa[u][l];
        }
    }
    double *qrow = q + ((size_t)h * DBP_N + j) * DBP_N;
#pragma unroll
    for (int l = 0; l < DBP_N; l++) atomicAdd(qrow + l, M[l]);
}

/* Rd = (double)R over n values. */
template <typename TR>
__global__ void dbp_r_to_f64_kernel(size_t n, const TR *__restrict__ R, double *__restrict__ Rd)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        Rd[i] = R[i];
}

/* E (nblk blocks of N x N, row-major) to M in place: (1 - kappa) E off the
 * diagonal, kappa (E - 1) on it (dbp_param.c's s_update_block). */
template <typename TD>
__global__ void dbp_rule_matrix_kernel(size_t n, int N, TD *__restrict__ E, TD kappa)
{
    const TD off = __dadd_rn(1.0, -kappa);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t in = i % ((size_t)N * N);
        const bool diag = in / N == in % N;
        E[i] = diag ? __dmul_rn(kappa, __dadd_rn(E[i], -1.0)) : __dmul_rn(off, E[i]);
    }
}

/* R = (float)(Rd - eta MR) over n values; *bad = 1 when an element of the new
 * R is not finite (bad is zeroed by the caller). */
template <typename TR>
__global__ void dbp_r_update_kernel(size_t n, TR *__restrict__ R, const double *__restrict__ Rd,
                                    const double *__restrict__ MR, double eta, int *bad)
{
    int mine = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const TR r = (TR)__dadd_rn(Rd[i], -__dmul_rn(eta, MR[i]));
        R[i] = r;
        mine |= !isfinite(r);
    }
    if (mine) *bad = 1;
}

/* *bad = 1 when an element of R is not finite (R left unchanged). */
template <typename TR>
__global__ void dbp_r_check_kernel(size_t n, const TR *__restrict__ R, int *bad)
{
    int mine = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        mine |= !isfinite(R[i]);
    if (mine) *bad = 1;
}

} // namespace st

#endif
