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

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

/* ---- small element-wise kernels over n elements ---- */

/* out (fp32) = a (fp32) + b (T): the residual adds. out may alias a. */
template <typename T>
__global__ void residual_add_kernel(size_t n, const float *a, const T *__restrict__ b, float *out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + to_f(b[i]);
}

/* x_i += y_i for three pairs at once (the GroupNorm bonus into the WKV grads). */
template <typename T>
__global__ void add3_kernel(size_t n, T *x0, const T *__restrict__ y0, T *x1, const T *__restrict__ y1,
                            T *x2, const T *__restrict__ y2)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    x0[i] = from_f<T>(to_f(x0[i]) + to_f(y0[i]));
    x1[i] = from_f<T>(to_f(x1[i]) + to_f(y1[i]));
    x2[i] = from_f<T>(to_f(x2[i]) + to_f(y2[i]));
}

template <typename Tout, typename Tin>
__global__ void convert_kernel(size_t n, const Tin *__restrict__ in, Tout *__restrict__ out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f<Tout>(to_f(in[i]));
}

/* Blocks of 256 threads covering n elements. */
static inline unsigned grid_for(size_t n, unsigned threads = 256)
{
    return (unsigned)((n + threads - 1) / threads);
}

} // namespace st

#endif
