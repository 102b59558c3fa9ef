/*
 * head.cuh - softmax cross-entropy over one chunk of logit rows, in place, on
 * the GPU (kernels/cpu/head.c does the same on the CPU):
 *
 *   loss_r = logsumexp(logits_r) - logits_r[target_r]
 *   correct_r = argmax(logits_r) == target_r (first index among ties)
 *   backward: logits_r <- softmax(logits_r) - onehot(target_r)
 *
 * Rows with target -1 (or out of range) get loss 0, correct 0 and, in the
 * backward, a zero row. logits: (rows, V) fp32, one chunk of rows (never the
 * whole batch); dlogits: the gradient in the storage type T, which may alias
 * logits when T is float. One block of CE_THREADS per row.
 */
#ifndef ST_KERNELS_CUDA_HEAD_CUH
#define ST_KERNELS_CUDA_HEAD_CUH

#include "kernels/cuda/common.cuh"

#include <stdint.h>

namespace st {

constexpr int CE_THREADS = 512;

template <typename T>
__global__ void __launch_bounds__(CE_THREADS) ce_kernel(int V, const float *logits, T *dlogits,
                                                        const int32_t *__restrict__ targets,
                                                        float *__restrict__ row_loss,
                                                        int32_t *__restrict__ row_correct, int backward)
{
    __shared__ float shv[32];
    __shared__ int shi[32];
    __shared__ float sh[32];
    const int r = blockIdx.x, lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const float *row = logits + (size_t)r * V;
    T *drow = dlogits + (size_t)r * V; /* may alias row (fp32 mode): same thread, same index */
    const int tg = targets ? targets[r] : -1;
    if (tg < 0 || tg >= V) {
        if (backward)
            for (int v = threadIdx.x; v < V; v += blockDim.x) drow[v] = from_f<T>(0.f);
        if (threadIdx.x == 0) { row_loss[r] = 0.f; row_correct[r] = 0; }
        return;
    }
    /* max and its first index */
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float x = row[v];
        if (x > best) { best = x; bi = v; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ob > best || (ob == best && oi < bi)) { best = ob; bi = oi; }
    }
    if (lane == 0) { shv[wid] = best; shi[wid] = bi; }
    __syncthreads();
    if (wid == 0) {
        best = lane < nw ? shv[lane] : -INFINITY;
        bi = lane < nw ? shi[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ob = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ob > best || (ob == best && oi < bi)) { best = ob; bi = oi; }
        }
        if (lane == 0) { shv[0] = best; shi[0] = bi; }
    }
    __syncthreads();
    const float mx = shv[0];
    const int am = shi[0];
    float se = 0.f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) se += expf(row[v] - mx);
    se = block_sum(se, sh);
    const float xt = row[tg];
    __syncthreads(); /* everyone has read row[tg] before it is overwritten */
    if (threadIdx.x == 0) {
        row_loss[r] = mx + logf(se) - xt;
        row_correct[r] = am == tg;
    }
    if (backward) {
        const float inv = 1.f / se;
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            float p = expf(row[v] - mx) * inv;
            drow[v] = from_f<T>(v == tg ? p - 1.f : p);
        }
    }
}

} // namespace st

#endif
