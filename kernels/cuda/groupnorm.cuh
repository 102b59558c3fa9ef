/*
 * groupnorm.cuh - GroupNorm (ln_x, eps 64e-5) + bonus + gate, forward and
 * input-gradient backward, on the GPU; the same math as
 * kernels/cpu/groupnorm.c. Per (row, head), xhat = (y - mean) rstd,
 * u = sum_n r k r_k, pre = xhat ln_w + ln_b + u v, out = pre g:
 *   dg = dout pre; dpre = dout g; dxh = dpre ln_w
 *   dy = rstd (dxh - mean(dxh) - xhat mean(dxh xhat))
 *   dbv = dpre u; du = sum dpre v; dbr = du k r_k; dbk = du r r_k
 * Shapes: (R, C) activations of storage type T, C = H * 64; mean, rstd
 * (R, H) fp32; ln_w, ln_b, r_k fp32 (C). One warp per (row, head). The bonus
 * gradients dbr, dbk, dbv are written (not added); the caller adds them to the
 * WKV gradients.
 */
#ifndef ST_KERNELS_CUDA_GROUPNORM_CUH
#define ST_KERNELS_CUDA_GROUPNORM_CUH

#include "kernels/cuda/common.cuh"

namespace st {

constexpr float GN_EPS = 64e-5f;

template <typename T>
__global__ void groupnorm_fwd_kernel(int RH, int H, const T *__restrict__ y, const float *__restrict__ ln_w,
                                     const float *__restrict__ ln_b, const T *__restrict__ r,
                                     const T *__restrict__ k, const T *__restrict__ v,
                                     const float *__restrict__ r_k, const T *__restrict__ g,
                                     float *__restrict__ mean, float *__restrict__ rstd, T *__restrict__ out)
{
    const int gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (gw >= RH) return;
    const int h = gw % H;
    const size_t base = (size_t)gw * 64;
    const size_t i0 = base + lane, i1 = base + lane + 32;
    const int c0 = h * 64 + lane, c1 = c0 + 32;
    const float y0 = to_f(y[i0]), y1 = to_f(y[i1]);
    const float m = warp_sum(y0 + y1) * (1.f / 64);
    const float d0 = y0 - m, d1 = y1 - m;
    const float rs = rsqrtf(warp_sum(d0 * d0 + d1 * d1) * (1.f / 64) + GN_EPS);
    const float u = warp_sum(to_f(r[i0]) * to_f(k[i0]) * r_k[c0] + to_f(r[i1]) * to_f(k[i1]) * r_k[c1]);
    out[i0] = from_f<T>((d0 * rs * ln_w[c0] + ln_b[c0] + u * to_f(v[i0])) * to_f(g[i0]));
    out[i1] = from_f<T>((d1 * rs * ln_w[c1] + ln_b[c1] + u * to_f(v[i1])) * to_f(g[i1]));
    if (lane == 0) { mean[gw] = m; rstd[gw] = rs; }
}

template <typename T>
__global__ void groupnorm_bwd_kernel(int RH, int H, const T *__restrict__ y, const float *__restrict__ ln_w,
                                     const float *__restrict__ ln_b, const T *__restrict__ r,
                                     const T *__restrict__ k, const T *__restrict__ v,
                                     const float *__restrict__ r_k, const T *__restrict__ g,
                                     const float *__restrict__ mean, const float *__restrict__ rstd,
                                     const T *__restrict__ dout, T *__restrict__ dy, T *__restrict__ dbr,
                                     T *__restrict__ dbk, T *__restrict__ dbv, T *__restrict__ dg)
{
    const int gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (gw >= RH) return;
    const int h = gw % H;
    const size_t base = (size_t)gw * 64;
    const float m = mean[gw], rs = rstd[gw];
    float rr[2], kv[2], vv[2], rk[2], xh[2], dxh[2], dpre[2];
    float u = 0.f;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        const size_t i = base + lane + 32 * e;
        const int c = h * 64 + lane + 32 * e;
        rr[e] = to_f(r[i]); kv[e] = to_f(k[i]); vv[e] = to_f(v[i]); rk[e] = r_k[c];
        u += rr[e] * kv[e] * rk[e];
    }
    u = warp_sum(u);
    float sdx = 0.f, sdxx = 0.f, du = 0.f;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        const size_t i = base + lane + 32 * e;
        const int c = h * 64 + lane + 32 * e;
        xh[e] = (to_f(y[i]) - m) * rs;
        const float pre = xh[e] * ln_w[c] + ln_b[c] + u * vv[e];
        const float go = to_f(dout[i]);
        dpre[e] = go * to_f(g[i]);
        dg[i] = from_f<T>(go * pre);
        dxh[e] = dpre[e] * ln_w[c];
        sdx += dxh[e];
        sdxx += dxh[e] * xh[e];
        du += dpre[e] * vv[e];
        dbv[i] = from_f<T>(dpre[e] * u);
    }
    sdx = warp_sum(sdx) * (1.f / 64);
    sdxx = warp_sum(sdxx) * (1.f / 64);
    du = warp_sum(du);
#pragma unroll
    for (int e = 0; e < 2; e++) {
        const size_t i = base + lane + 32 * e;
        dy[i] = from_f<T>(rs * (dxh[e] - sdx - xh[e] * sdxx));
        dbr[i] = from_f<T>(du * kv[e] * rk[e]);
        dbk[i] = from_f<T>(du * rr[e] * rk[e]);
    }
}

} // namespace st

#endif
