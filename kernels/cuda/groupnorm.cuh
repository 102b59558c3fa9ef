/*
 * groupnorm.cuh - GroupNorm (ln_x, eps 64e-5) + bonus + gate, forward and
 * input-gradient backward, on the GPU; the same math as
 * kernels/cpu/groupnorm.c. Per (row, head), xhat = (y - mean) rstd,
 * u = sum_n r k r_k, pre = xhat ln_w + ln_b + u v, out = pre g:
 *   dg = dout pre; dpre = dout g; dxh = dpre ln_w
 *   dy = rstd (dxh - mean(dxh) - xhat mean(dxh xhat))
 *   dbv = dpre u; du = sum dpre v; dbr = du k r_k; dbk = du r r_k
 * Shapes: (R, C) activations of storage type T, C = H * 64; mean, rstd
 * (R, H) fp32; ln_w, ln_b, r_k fp32 (C). One warp per (row, head), two
 * adjacent channels per lane. The bonus gradients dbr, dbk, dbv are written
 * (not added); the engine adds them to the WKV gradients (dr apart, dk and dv
 * in timemix_bwd / vmix_bwd).
 */
#ifndef ST_KERNELS_CUDA_GROUPNORM_CUH
#define ST_KERNELS_CUDA_GROUPNORM_CUH

#include "kernels/cuda/common.cuh"

namespace st {

constexpr float GN_EPS = 64e-5f;

/* Lane l holds channels 2 l and 2 l + 1 of the head (load2/store2). */
template <typename T>
__global__ void groupnorm_fwd_kernel(int RH, int H, const T *__restrict__ y, const float *__restrict__ ln_w,
                                     const float *__restrict__ ln_b, const T *__restrict__ r,
                                     const T *__restrict__ k, const T *__restrict__ v,
                                     const float *__restrict__ r_k, const T *__restrict__ g,
                                     float *__restrict__ mean, float *__restrict__ rstd, T *__restrict__ out)
{
    const int gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (gw >= RH) return;
    const int c = (gw % H) * 64 + 2 * lane;
    const size_t i = (size_t)gw * 64 + 2 * lane;
    float yv[2], rv[2], kv[2], vv[2], gv[2], rk[2], lw[2], lb[2], o[2];
    load2(y + i, yv);
    load2(r + i, rv);
    load2(k + i, kv);
    load2(v + i, vv);
    load2(g + i, gv);
    load2(r_k + c, rk);
    load2(ln_w + c, lw);
    load2(ln_b + c, lb);
    const float m = warp_sum(yv[0] + yv[1]) * (1.f / 64);
    const float d0 = yv[0] - m, d1 = yv[1] - m;
    const float rs = rsqrtf(warp_sum(d0 * d0 + d1 * d1) * (1.f / 64) + GN_EPS);
    const float u = warp_sum(rv[0] * kv[0] * rk[0] + rv[1] * kv[1] * rk[1]);
    o[0] = (d0 * rs * lw[0] + lb[0] + u * vv[0]) * gv[0];
    o[1] = (d1 * rs * lw[1] + lb[1] + u * vv[1]) * gv[1];
    store2(out + i, o);
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
    const int c = (gw % H) * 64 + 2 * lane;
    const size_t i = (size_t)gw * 64 + 2 * lane;
    const float m = mean[gw], rs = rstd[gw];
    float rr[2], kv[2], vv[2], rk[2], yv[2], gv[2], go[2], lw[2], lb[2], xh[2], dxh[2], dpre[2], o[2];
    load2(r + i, rr);
    load2(k + i, kv);
    load2(v + i, vv);
    load2(r_k + c, rk);
    load2(y + i, yv);
    load2(g + i, gv);
    load2(dout + i, go);
    load2(ln_w + c, lw);
    load2(ln_b + c, lb);
    const float u = warp_sum(rr[0] * kv[0] * rk[0] + rr[1] * kv[1] * rk[1]);
    float sdx = 0.f, sdxx = 0.f, du = 0.f;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        xh[e] = (yv[e] - m) * rs;
        const float pre = xh[e] * lw[e] + lb[e] + u * vv[e];
        dpre[e] = go[e] * gv[e];
        o[e] = go[e] * pre;
        dxh[e] = dpre[e] * lw[e];
        sdx += dxh[e];
        sdxx += dxh[e] * xh[e];
        du += dpre[e] * vv[e];
    }
    store2(dg + i, o);
#pragma unroll
    for (int e = 0; e < 2; e++) o[e] = dpre[e] * u;
    store2(dbv + i, o);
    sdx = warp_sum(sdx) * (1.f / 64);
    sdxx = warp_sum(sdxx) * (1.f / 64);
    du = warp_sum(du);
#pragma unroll
    for (int e = 0; e < 2; e++) o[e] = rs * (dxh[e] - sdx - xh[e] * sdxx);
    store2(dy + i, o);
#pragma unroll
    for (int e = 0; e < 2; e++) o[e] = du * kv[e] * rk[e];
    store2(dbr + i, o);
#pragma unroll
    for (int e = 0; e < 2; e++) o[e] = du * rr[e] * rk[e];
    store2(dbk + i, o);
}

} // namespace st

#endif
