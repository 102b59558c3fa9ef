/*
 * channelmix.cuh - the element-wise part of RWKV-7's channel mix on the GPU
 * (kernels/cpu/channelmix.c): act = relu(kpre)^2 and its gradient
 * dact *= 2 relu(kpre). The token shift and the two matrix products are the
 * engine's (timemix.cuh's token shift, cuBLAS). Shapes (R, F), storage T.
 */
#ifndef ST_KERNELS_CUDA_CHANNELMIX_CUH
#define ST_KERNELS_CUDA_CHANNELMIX_CUH

#include "kernels/cuda/common.cuh"

namespace st {

template <typename T>
__global__ void relu2_fwd_kernel(size_t n, const T *__restrict__ kpre, T *__restrict__ act)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float z = fmaxf(to_f(kpre[i]), 0.f);
    act[i] = from_f<T>(z * z);
}

template <typename T>
__global__ void relu2_bwd_kernel(size_t n, const T *__restrict__ kpre, T *__restrict__ dact)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float z = to_f(kpre[i]);
    dact[i] = from_f<T>(z > 0.f ? to_f(dact[i]) * 2.f * z : 0.f);
}

} // namespace st

#endif
