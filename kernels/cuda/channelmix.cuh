/*
 * channelmix.cuh - the element-wise part of RWKV-7's channel mix on the GPU
 * (kernels/cpu/channelmix.c): act = relu(kpre)^2 and its gradient
 * dact *= 2 relu(kpre). The token shift and the two matrix products are the
 * engine's (ln_shift.cuh's token shift, cuBLAS). Shapes (R, F), storage T.
 */
#ifndef ST_KERNELS_CUDA_CHANNELMIX_CUH
#define ST_KERNELS_CUDA_CHANNELMIX_CUH

#include "kernels/cuda/common.cuh"

namespace st {

/* One thread per 8 elements (n % 8 == 0, launch with grid_for8). */
template <typename T>
__global__ void relu2_fwd_kernel(size_t n, const T *__restrict__ kpre, T *__restrict__ act)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float z[8];
    load8(kpre + i, z);
#pragma unroll
    for (int k = 0; k < 8; k++) {
        float r = fmaxf(z[k], 0.f);
        z[k] = r * r;
    }
    store8(act + i, z);
}

template <typename T>
__global__ void relu2_bwd_kernel(size_t n, const T *__restrict__ kpre, T *__restrict__ dact)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float z[8], g[8];
    load8(kpre + i, z);
    load8(dact + i, g);
#pragma unroll
    for (int k = 0; k < 8; k++) g[k] = z[k] > 0.f ? g[k] * 2.f * z[k] : 0.f;
    store8(dact + i, g);
}

} // namespace st

#endif
