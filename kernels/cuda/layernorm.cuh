/*
 * layernorm.cuh - embedding lookup and LayerNorm forward / input-gradient
 * backward on the GPU; the same math as kernels/cpu/layernorm.c:
 *
 *   out = (x - mean) * rstd * w + b,   rstd = 1 / sqrt(var + eps)
 *   dx += rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dout * w
 *
 * Shapes: rows R = B * T, width C; x is the fp32 residual stream; out, dout
 * are of storage type T (float or bf16); mean, rstd (R) fp32; dx (R, C) fp32
 * accumulated (+=), optionally also written rounded to T. One block of 256
 * threads per row; statistics in two fp32 passes over the row (it stays in
 * L1/L2: C <= a few thousand).
 */
#ifndef ST_KERNELS_CUDA_LAYERNORM_CUH
#define ST_KERNELS_CUDA_LAYERNORM_CUH

#include "kernels/cuda/common.cuh"

#include <stdint.h>

namespace st {

constexpr int LN_THREADS = 256;

/* x0[r] = emb[tokens[r]] (token ids already validated by engine.c). */
template <typename T>
__global__ void embed_kernel(int C, const int32_t *__restrict__ tokens, const T *__restrict__ emb,
                             float *__restrict__ x0)
{
    const int r = blockIdx.x;
    const T *e = emb + (size_t)tokens[r] * C;
    float *o = x0 + (size_t)r * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = to_f(e[c]);
}

/* in may equal out (ln0 runs in place on the residual stream). */
template <typename Tin, typename Tout>
__global__ void __launch_bounds__(LN_THREADS) layernorm_fwd_kernel(
    int C, const Tin *in, const float *__restrict__ w, const float *__restrict__ b, float eps,
    Tout *out, float *__restrict__ mean, float *__restrict__ rstd)
{
    __shared__ float sh[32];
    const int r = blockIdx.x;
    const Tin *x = in + (size_t)r * C;
    float s = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += to_f(x[c]);
    const float m = block_sum(s, sh) / C;
    float ss = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float d = to_f(x[c]) - m;
        ss += d * d;
    }
    const float rs = rsqrtf(block_sum(ss, sh) / C + eps);
    Tout *o = out + (size_t)r * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = from_f<Tout>((to_f(x[c]) - m) * rs * w[c] + b[c]);
    if (threadIdx.x == 0 && mean) { mean[r] = m; rstd[r] = rs; }
}

/* The residual add and the LayerNorm after it in one pass over the row:
 * xsum = a + b (the fp32 residual stream, stored), then out = LN(xsum). The
 * same arithmetic as residual_add_kernel followed by layernorm_fwd_kernel
 * (bit-identical), minus one launch and one read of the row from memory. */
template <typename Tb, typename Tout>
__global__ void __launch_bounds__(LN_THREADS) residual_layernorm_fwd_kernel(
    int C, const float *__restrict__ a, const Tb *__restrict__ b, float *__restrict__ xsum,
    const float *__restrict__ w, const float *__restrict__ bias, float eps, Tout *__restrict__ out,
    float *__restrict__ mean, float *__restrict__ rstd)
{
    __shared__ float sh[32];
    const int r = blockIdx.x;
    const float *x0 = a + (size_t)r * C;
    const Tb *x1 = b + (size_t)r * C;
    float *x = xsum + (size_t)r * C;
    float s = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const float v = x0[c] + to_f(x1[c]);
        x[c] = v; /* read back below by this same thread only */
        s += v;
    }
    const float m = block_sum(s, sh) / C;
    float ss = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float d = x[c] - m;
        ss += d * d;
    }
    const float rs = rsqrtf(block_sum(ss, sh) / C + eps);
    Tout *o = out + (size_t)r * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = from_f<Tout>((x[c] - m) * rs * w[c] + bias[c]);
    if (threadIdx.x == 0 && mean) { mean[r] = m; rstd[r] = rs; }
}

/* dxt, when not NULL, gets the updated dx rounded to Td as well: the copy the
 * next matrix product reads, which a separate conversion pass over dx made
 * before (the same rounding, one read of the row fewer). */
template <typename Td>
__global__ void __launch_bounds__(LN_THREADS) layernorm_bwd_kernel(
    int C, const float *__restrict__ xin, const float *__restrict__ w, const float *__restrict__ mean,
    const float *__restrict__ rstd, const Td *__restrict__ dout, float *__restrict__ dx, Td *__restrict__ dxt)
{
    __shared__ float sh[32];
    const int r = blockIdx.x;
    const float *x = xin + (size_t)r * C;
    const Td *dy = dout + (size_t)r * C;
    float *d = dx + (size_t)r * C;
    const float m = mean[r], rs = rstd[r];
    float sg = 0.f, sgx = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float g = to_f(dy[c]) * w[c];
        sg += g;
        sgx += g * (x[c] - m) * rs;
    }
    const float mg = block_sum(sg, sh) / C;
    const float mgx = block_sum(sgx, sh) / C;
    Td *dt = dxt ? dxt + (size_t)r * C : NULL;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float xhat = (x[c] - m) * rs;
        const float nv = d[c] + rs * (to_f(dy[c]) * w[c] - mg - xhat * mgx);
        d[c] = nv;
        if (dt) dt[c] = from_f<Td>(nv);
    }
}

} // namespace st

#endif
