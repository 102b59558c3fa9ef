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
 * DBP_CHUNK tokens at a time, as in wkv7.cu. One block of 64 threads per
 * (h, b); blocks of unsampled rows return at once.
 *
 * Shapes: r, a, b (B, T, H, N) of storage type T; w (B, T, H, N) fp32;
 * rows (B) nonzero = sampled; q (H, N, N) double, accumulated with atomics.
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
    __shared__ float sr[DBP_CHUNK][DBP_N], sw[DBP_CHUNK][DBP_N], sa[DBP_CHUNK][DBP_N], sb[DBP_CHUNK][DBP_N];
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
            sr[u][j] = to_f(r[idx]);
            sw[u][j] = w[idx];
            sa[u][j] = to_f(a[idx]);
            sb[u][j] = to_f(b[idx]);
        }
        __syncthreads();
        for (int u = n - 1; u >= 0; u--) {
            const int p = (t0 + u) & 1;
            const double rj = sr[u][j];
            double cj = 0.0;
#pragma unroll
            for (int l = 0; l < DBP_N; l++) {
                M[l] += rj * (double)sr[u][l];
                cj += M[l] * (double)sb[u][l];
            }
            sc[p][j] = cj;
            __syncthreads();
            const double wj = sw[u][j], aj = sa[u][j];
            double d = 0.0;
#pragma unroll
            for (int l = 0; l < DBP_N; l++) {
                M[l] = wj * M[l] + aj * sc[p][l];
                d += M[l] * (double)sb[u][l];
            }
#pragma unroll
            for (int l = 0; l < DBP_N; l++) M[l] = M[l] * (double)sw[u][l] + d * (double)sa[u][l];
        }
    }
    double *qrow = q + ((size_t)h * DBP_N + j) * DBP_N;
#pragma unroll
    for (int l = 0; l < DBP_N; l++) atomicAdd(qrow + l, M[l]);
}

} // namespace st

#endif
