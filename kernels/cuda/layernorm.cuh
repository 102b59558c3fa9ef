/*
 * layernorm.cuh - embedding lookup and LayerNorm forward / input-gradient
 * backward on the GPU; the same math as kernels/cpu/layernorm.c:
 *
 *   out = (x - mean) * rstd * w + b,   rstd = 1 / sqrt(var + eps)
 *   dx += rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dout * w
 *
 * Shapes: rows R = B * T, width C; x is the fp32 residual stream; out, dout
 * are of storage type T (float or bf16); mean, rstd (R) fp32; dx (R, C) fp32
 * accumulated (+=), optionally also written rounded to T. One block per row,
 * one thread per 8 channels holding them in registers (ln_threads); the
 * statistics are block sums in fp32, the variance a second pass over the
 * registers.
 */
#ifndef ST_KERNELS_CUDA_LAYERNORM_CUH
#define ST_KERNELS_CUDA_LAYERNORM_CUH

#include "kernels/cuda/common.cuh"

#include <stdint.h>

namespace st {

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

/* One block per row, one thread per 8 channels (C % 8 == 0, C <= 8192):
 * each thread keeps its 8 values in registers, so the row is read from
 * memory once, with 16-byte accesses, whatever the passes over it. The
 * block is C / 8 threads rounded up to a warp; the rest hold zeros. */
static inline unsigned ln_threads(int C) { return (unsigned)((C / 8 + 31) / 32 * 32); }
constexpr int LN_MAX_THREADS = 1024;

/* The rest of a LayerNorm forward once each thread holds its 8 values x of
 * row r (zeros past C): the row's mean and rstd (block sums in fp32, the
 * variance a second pass over the registers), out = (x - mean) rstd w + b
 * from channel c, and the statistics when mean is not NULL. Shared by the
 * two kernels below. */
template <typename Tout>
__device__ __forceinline__ void ln_row_fwd(int C, int r, int c, bool on, float *x, const float *__restrict__ w,
                                           const float *__restrict__ b, float eps, Tout *out, float *__restrict__ mean,
                                           float *__restrict__ rstd, float *sh)
{
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < 8; k++) s += x[k];
    const float m = block_sum(s, sh) / C;
    float ss = 0.f;
    if (on)
#pragma unroll
        for (int k = 0; k < 8; k++) ss += (x[k] - m) * (x[k] - m);
    const float rs = rsqrtf(block_sum(ss, sh) / C + eps);
    if (on) {
        float wv[8], bv[8];
        load8(w + c, wv);
        load8(b + c, bv);
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] = (x[k] - m) * rs * wv[k] + bv[k];
        store8(out + (size_t)r * C + c, x);
    }
    if (threadIdx.x == 0 && mean) { mean[r] = m; rstd[r] = rs; }
}

/* in may equal out (ln0 runs in place on the residual stream: every thread
 * has read its values before the first block_sum's barrier). */
template <typename Tin, typename Tout>
__global__ void __launch_bounds__(LN_MAX_THREADS) layernorm_fwd_kernel(
    int C, const Tin *in, const float *__restrict__ w, const float *__restrict__ b, float eps,
    Tout *out, float *__restrict__ mean, float *__restrict__ rstd)
{
    __shared__ float sh[32];
    const int r = blockIdx.x, c = threadIdx.x * 8;
    const bool on = c < C;
    float x[8];
    if (on) load8(in + (size_t)r * C + c, x);
    else
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] = 0.f;
    ln_row_fwd(C, r, c, on, x, w, b, eps, out, mean, rstd, sh);
}

/* The residual add and the LayerNorm after it in one pass over the row:
 * xsum = a + b (the fp32 residual stream, stored), then out = LN(xsum). */
template <typename Tb, typename Tout>
__global__ void __launch_bounds__(LN_MAX_THREADS) residual_layernorm_fwd_kernel(
    int C, const float *__restrict__ a, const Tb *__restrict__ b, float *__restrict__ xsum,
    const float *__restrict__ w, const float *__restrict__ bias, float eps, Tout *__restrict__ out,
    float *__restrict__ mean, float *__restrict__ rstd)
{
    __shared__ float sh[32];
    const int r = blockIdx.x, c = threadIdx.x * 8;
    const bool on = c < C;
    const size_t o = (size_t)r * C + c;
    float x[8], y[8];
    if (on) {
        load8(a + o, x);
        load8(b + o, y);
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] += y[k];
        store8(xsum + o, x);
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] = 0.f;
    }
    ln_row_fwd(C, r, c, on, x, w, bias, eps, out, mean, rstd, sh);
}

/* The end of a LayerNorm backward, once a thread holds g = dout w and xhat
 * for its 8 channels at o and the block has mean(g) and mean(g xhat): dx +=
 * the input gradient; dxt, when not NULL, gets the updated dx rounded to Td
 * as well: the copy the next matrix product reads, which a separate
 * conversion pass over dx made before (the same rounding, one read of the
 * row fewer). Shared with ln_shift.cuh's shift_ln_bwd_kernel. */
template <typename Td>
__device__ __forceinline__ void ln_bwd_update(float *__restrict__ dx, Td *__restrict__ dxt, size_t o, float rs,
                                              const float *g, const float *xh, float mg, float mgx)
{
    float d[8];
    load8(dx + o, d);
#pragma unroll
    for (int k = 0; k < 8; k++) d[k] += rs * (g[k] - mg - xh[k] * mgx);
    store8(dx + o, d);
    if (dxt) store8(dxt + o, d);
}

template <typename Td>
__global__ void __launch_bounds__(LN_MAX_THREADS) layernorm_bwd_kernel(
    int C, const float *__restrict__ xin, const float *__restrict__ w, const float *__restrict__ mean,
    const float *__restrict__ rstd, const Td *__restrict__ dout, float *__restrict__ dx, Td *__restrict__ dxt)
{
    __shared__ float sh[32];
    const int r = blockIdx.x, c = threadIdx.x * 8;
    const bool on = c < C;
    const size_t o = (size_t)r * C + c;
    const float m = mean[r], rs = rstd[r];
    float xh[8], g[8];
    float sg = 0.f, sgx = 0.f;
    if (on) {
        float wv[8];
        load8(xin + o, xh);
        load8(dout + o, g);
        load8(w + c, wv);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            xh[k] = (xh[k] - m) * rs;
            g[k] *= wv[k];
            sg += g[k];
            sgx += g[k] * xh[k];
        }
    }
    const float mg = block_sum(sg, sh) / C;
    const float mgx = block_sum(sgx, sh) / C;
    if (on) ln_bwd_update(dx, dxt, o, rs, g, xh, mg, mgx);
}

} // namespace st

#endif
