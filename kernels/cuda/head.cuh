/*
 * head.cuh - softmax cross-entropy over one chunk of logit rows, in place, on
 * the GPU (kernels/cpu/head.c does the same on the CPU):
 *
 *   loss_r = logsumexp(logits_r) - logits_r[target_r]
 *   correct_r = argmax(logits_r) == target_r (first index among ties)
 *   backward: logits_r <- softmax(logits_r) - onehot(target_r)
 *
 * Rows with target -1 (or out of range) get loss 0, correct 0 and, in the
 * backward, a zero row. logits: (rows, V) in TL, one chunk of rows (never
 * the whole batch): fp32 (the exact products), or bf16 (the engine's plain
 * cross-entropy in bf16 mode: half the bytes to write and read twice, issue
 * #4); dlogits: the gradient in the storage type T, which may alias logits
 * when T is TL (the same thread reads and writes the same index). Whatever
 * TL, every value is widened to fp32 on load and the max, the sum of
 * exponentials and the loss accumulate in fp32. One block of CE_THREADS per
 * row; the max, its index and the sum of exponentials come from one online
 * pass over the row, the gradient from a second (the row is 128 or 256 KB at
 * V 65536, past L1, so each pass is a read from L2 or memory).
 */
#ifndef ST_KERNELS_CUDA_HEAD_CUH
#define ST_KERNELS_CUDA_HEAD_CUH

#include "kernels/cuda/common.cuh"

#include <stdint.h>

namespace st {

constexpr int CE_THREADS = 512;

/* Online softmax statistics (Milakov and Gimelshein, 2018): the running max
 * m, the sum s of exp(x - m) and the first index of the max, updated one
 * value at a time, so one pass over the row gives all three (the row is read
 * twice in all: here and for the gradient). */
struct ce_stat_t {
    float m, s;
    int i;
};

__device__ __forceinline__ void ce_push(ce_stat_t &a, float x, int v)
{
    if (x > a.m) {
        a.s = a.s * expf(a.m - x) + 1.f; /* 0 * exp(-inf) = 0 on the first value */
        a.m = x;
        a.i = v;
    } else {
        a.s += expf(x - a.m);
    }
}

/* Merges b into a; an empty side (s == 0, m == -inf) leaves the other as is,
 * ties in the max keep the smaller index. */
__device__ __forceinline__ void ce_merge(ce_stat_t &a, const ce_stat_t &b)
{
    if (b.s == 0.f) return;
    if (a.s == 0.f) {
        a = b;
        return;
    }
    const float m = fmaxf(a.m, b.m);
    const int i = b.m > a.m || (b.m == a.m && b.i < a.i) ? b.i : a.i;
    a.s = a.s * expf(a.m - m) + b.s * expf(b.m - m);
    a.m = m;
    a.i = i;
}

/* One 16-byte load of a row: 4 fp32 or 8 bf16 values, widened to fp32 (the
 * caller's array holds 16 / sizeof(TL) of them). */
__device__ __forceinline__ void ce_load(const float *p, float *f)
{
    const float4 x = *reinterpret_cast<const float4 *>(p);
    f[0] = x.x; f[1] = x.y; f[2] = x.z; f[3] = x.w;
}
__device__ __forceinline__ void ce_load(const __nv_bfloat16 *p, float *f) { load8(p, f); }

__device__ __forceinline__ void ce_store4(float *p, float4 v) { *reinterpret_cast<float4 *>(p) = v; }
__device__ __forceinline__ void ce_store4(__nv_bfloat16 *p, float4 v)
{
    __nv_bfloat162 h[2] = {__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
    *reinterpret_cast<uint2 *>(p) = *reinterpret_cast<const uint2 *>(h);
}

/* W gradient values (the W of one ce_load) into T. */
template <int W, typename T> __device__ __forceinline__ void ce_store(T *p, const float *f)
{
    if (W == 8) store8(p, f);
    else ce_store4(p, make_float4(f[0], f[1], f[2], f[3]));
}

/* T: the gradient's type; TL: the logits' (deduced from the argument, so
 * ce_kernel<T> with fp32 logits reads as before). */
template <typename T, typename TL>
__global__ void __launch_bounds__(CE_THREADS) ce_kernel(int V, const TL *logits, T *dlogits,
                                                        const int32_t *__restrict__ targets,
                                                        float *__restrict__ row_loss,
                                                        int32_t *__restrict__ row_correct, int backward)
{
    constexpr int W = 16 / sizeof(TL); /* values per 16-byte load */
    __shared__ ce_stat_t shs[32];
    const int r = blockIdx.x, lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const TL *row = logits + (size_t)r * V;
    T *drow = dlogits + (size_t)r * V; /* may alias row: same thread, same index */
    const int tg = targets ? targets[r] : -1;
    if (tg < 0 || tg >= V) {
        if (backward)
            for (int v = threadIdx.x; v < V; v += blockDim.x) drow[v] = from_f<T>(0.f);
        if (threadIdx.x == 0) { row_loss[r] = 0.f; row_correct[r] = 0; }
        return;
    }
    /* 16-byte loads when rows are 16-byte aligned (V % W == 0: every real
     * vocabulary), else one value at a time */
    const bool vec = V % W == 0;
    ce_stat_t st = {-INFINITY, 0.f, 0x7fffffff};
    if (vec) {
        for (int q = threadIdx.x; q < V / W; q += blockDim.x) {
            float x[W];
            ce_load(row + (size_t)W * q, x);
#pragma unroll
            for (int k = 0; k < W; k++) ce_push(st, x[k], W * q + k);
        }
    } else {
        for (int v = threadIdx.x; v < V; v += blockDim.x) ce_push(st, to_f(row[v]), v);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        ce_stat_t ob = {__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o),
                        __shfl_xor_sync(0xffffffffu, st.i, o)};
        ce_merge(st, ob);
    }
    if (lane == 0) shs[wid] = st;
    __syncthreads();
    if (wid == 0) {
        st = lane < nw ? shs[lane] : ce_stat_t{-INFINITY, 0.f, 0x7fffffff};
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            ce_stat_t ob = {__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o),
                            __shfl_xor_sync(0xffffffffu, st.i, o)};
            ce_merge(st, ob);
        }
        if (lane == 0) shs[0] = st;
    }
    __syncthreads();
    const float mx = shs[0].m, se = shs[0].s;
    const float xt = to_f(row[tg]);
    __syncthreads(); /* everyone has read row[tg] before it is overwritten */
    if (threadIdx.x == 0) {
        row_loss[r] = mx + logf(se) - xt;
        row_correct[r] = shs[0].i == tg;
    }
    if (!backward) return;
    const float inv = 1.f / se;
    if (vec) {
        for (int q = threadIdx.x; q < V / W; q += blockDim.x) {
            const int v = W * q;
            float p[W];
            ce_load(row + v, p);
#pragma unroll
            for (int k = 0; k < W; k++) p[k] = expf(p[k] - mx) * inv - (v + k == tg ? 1.f : 0.f);
            ce_store<W>(drow + v, p);
        }
    } else {
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            float p = expf(to_f(row[v]) - mx) * inv;
            drow[v] = from_f<T>(v == tg ? p - 1.f : p);
        }
    }
}

} // namespace st

#endif
