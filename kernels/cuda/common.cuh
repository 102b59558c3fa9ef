/*
 * common.cuh - device helpers every statetune kernel shares: conversions
 * between the storage type of activations (float or bf16) and the fp32 they
 * are computed in, and warp/block reductions. Header-only (llm.c style), for
 * the translation units in kernels/cuda and engine/cuda.
 *
 * Conventions of the element-wise kernels built on it: storage type T is
 * float (ENGINE_FP32) or __nv_bfloat16 (ENGINE_BF16); arithmetic is always
 * fp32; statistics (LayerNorm, GroupNorm, softmax) are reduced in fp32.
 */
#ifndef ST_KERNELS_CUDA_COMMON_CUH
#define ST_KERNELS_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace st {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every
 * thread gets the total. sh must hold 32 floats; the function syncs, so it
 * may be called repeatedly with the same sh. */
__device__ __forceinline__ float block_sum(float v, float *sh)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : 0.f;
    return warp_sum(t);
}

/* Two block sums at once (the statistics of two rows, or two sums of one):
 * each component goes through block_sum's shuffles in block_sum's order, so
 * each has block_sum's bits, for one pair of barriers instead of two. */
__device__ __forceinline__ float2 block_sum2(float2 v, float2 *sh)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v.x = warp_sum(v.x);
    v.y = warp_sum(v.y);
    __syncthreads(); /* sh may still be read from a previous call */
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    const float2 t = lane < nw ? sh[lane] : make_float2(0.f, 0.f);
    return make_float2(warp_sum(t.x), warp_sum(t.y));
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

/* Eight consecutive elements as fp32, in one 16-byte access for bf16 (two
 * for fp32): the element-wise kernels are memory-bound and scalar 2-byte
 * accesses leave most of a memory transaction unused. p must be 16-byte
 * aligned (every tensor of the engine's plan is; rows are multiples of 64). */
__device__ __forceinline__ void load8(const float *p, float *f)
{
    float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}
__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float *f)
{
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 t = __bfloat1622float2(h[k]);
        f[2 * k] = t.x; f[2 * k + 1] = t.y;
    }
}
__device__ __forceinline__ void store8(float *p, const float *f)
{
    reinterpret_cast<float4 *>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4 *>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
}
__device__ __forceinline__ void store8(__nv_bfloat16 *p, const float *f)
{
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
}

/* Two consecutive elements as fp32 (4 bytes for bf16, 8 for fp32; p aligned
 * to that): the warp-per-(row, head) kernels give each lane a pair, so a
 * warp's access is one 128- or 256-byte run instead of two 64- or 128-byte
 * halves. */
__device__ __forceinline__ void load2(const float *p, float *f)
{
    const float2 v = *reinterpret_cast<const float2 *>(p);
    f[0] = v.x; f[1] = v.y;
}
__device__ __forceinline__ void load2(const __nv_bfloat16 *p, float *f)
{
    const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(p));
    f[0] = v.x; f[1] = v.y;
}
__device__ __forceinline__ void store2(float *p, const float *f)
{
    *reinterpret_cast<float2 *>(p) = make_float2(f[0], f[1]);
}
__device__ __forceinline__ void store2(__nv_bfloat16 *p, const float *f)
{
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(f[0], f[1]);
}

/* Where a lane of the warp-per-(row, head) kernels (groupnorm.cuh,
 * timemix.cuh) works: warp gw of the grid takes (row, head) gw = row H + h
 * of the RH pairs, and its lane holds channels 2 lane and 2 lane + 1 of the
 * head (load2 / store2): element i of the (R, C) activations, channel c of
 * the (C) parameter vectors. False for the warps past RH (the grid's tail),
 * which return. */
struct head_pair_t {
    int gw, lane, c;
    size_t i;
};

__device__ __forceinline__ bool head_pair(int RH, int H, head_pair_t &p)
{
    p.gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    p.lane = threadIdx.x & 31;
    if (p.gw >= RH) return false;
    p.c = (p.gw % H) * 64 + 2 * p.lane;
    p.i = (size_t)p.gw * 64 + 2 * p.lane;
    return true;
}

/* ---- small element-wise kernels over n elements (n a multiple of 8; one
 * thread per 8 elements) ---- */

/* out (fp32) = a (fp32) + b (T): the residual adds. out may alias a. */
template <typename T>
__global__ void residual_add_kernel(size_t n, const float *a, const T *__restrict__ b, float *out)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float x[8], y[8];
    load8(a + i, x);
    load8(b + i, y);
#pragma unroll
    for (int k = 0; k < 8; k++) x[k] += y[k];
    store8(out + i, x);
}

/* x_i += y_i for three pairs at once (the GroupNorm bonus into the WKV grads). */
template <typename T>
__global__ void add3_kernel(size_t n, T *x0, const T *__restrict__ y0, T *x1, const T *__restrict__ y1,
                            T *x2, const T *__restrict__ y2)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float a[8], b[8];
    T *xs[3] = {x0, x1, x2};
    const T *ys[3] = {y0, y1, y2};
#pragma unroll
    for (int q = 0; q < 3; q++) {
        load8(xs[q] + i, a);
        load8(ys[q] + i, b);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] += b[k];
        store8(xs[q] + i, a);
    }
}

/* x += y (the GroupNorm bonus into the WKV's dr; dk and dv take theirs in
 * the kernels that read them). */
template <typename T>
__global__ void add_kernel(size_t n, T *x, const T *__restrict__ y)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float a[8], b[8];
    load8(x + i, a);
    load8(y + i, b);
#pragma unroll
    for (int k = 0; k < 8; k++) a[k] += b[k];
    store8(x + i, a);
}

template <typename Tout, typename Tin>
__global__ void convert_kernel(size_t n, const Tin *__restrict__ in, Tout *__restrict__ out)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float f[8];
    load8(in + i, f);
    store8(out + i, f);
}

/* Blocks of 256 threads covering n elements, one per thread. */
static inline unsigned grid_for(size_t n, unsigned threads = 256)
{
    return (unsigned)((n + threads - 1) / threads);
}

/* Blocks of 256 threads covering n elements, eight per thread (n % 8 == 0). */
static inline unsigned grid_for8(size_t n, unsigned threads = 256)
{
    return grid_for(n / 8, threads);
}

} // namespace st

#endif
