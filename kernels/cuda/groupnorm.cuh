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
 * adjacent channels per lane (head_pair in common.cuh); the forward and the
 * backward read their inputs (gn_load) and form pre (gn_pre) through the
 * same helpers, so the backward recomputes exactly the forward's pre. The
 * bonus gradients dbr, dbk, dbv are written (not added); the engine adds
 * them to the WKV gradients (dr apart, dk and dv in timemix_bwd / vmix_bwd).
 */
#ifndef ST_KERNELS_CUDA_GROUPNORM_CUH
#define ST_KERNELS_CUDA_GROUPNORM_CUH

#include "kernels/cuda/common.cuh"

namespace st {

constexpr float GN_EPS = 64e-5f;

/* What the forward and the backward read at a lane's two channels (head_pair,
 * common.cuh): the GroupNorm input y, the bonus's r, k, v and r_k, the gate
 * g, the affine ln_w and ln_b; u (gn_bonus) is the bonus weight. */
struct gn_in_t {
    float y[2], r[2], k[2], v[2], g[2], rk[2], lw[2], lb[2];
    float u;
};

template <typename T>
__device__ __forceinline__ void gn_load(const head_pair_t &p, const T *__restrict__ y, const float *__restrict__ ln_w,
                                        const float *__restrict__ ln_b, const T *__restrict__ r,
                                        const T *__restrict__ k, const T *__restrict__ v,
                                        const float *__restrict__ r_k, const T *__restrict__ g, gn_in_t &x)
{
    load2(y + p.i, x.y);
    load2(r + p.i, x.r);
    load2(k + p.i, x.k);
    load2(v + p.i, x.v);
    load2(g + p.i, x.g);
    load2(r_k + p.c, x.rk);
    load2(ln_w + p.c, x.lw);
    load2(ln_b + p.c, x.lb);
}

/* u = sum_n r k r_k over the head (every lane gets it) */
__device__ __forceinline__ float gn_bonus(const gn_in_t &x)
{
    return warp_sum(x.r[0] * x.k[0] * x.rk[0] + x.r[1] * x.k[1] * x.rk[1]);
}

/* pre = xhat ln_w + ln_b + u v at channel e of the pair (before the gate) */
__device__ __forceinline__ float gn_pre(const gn_in_t &x, int e, float xhat)
{
    return xhat * x.lw[e] + x.lb[e] + x.u * x.v[e];
}

template <typename T>
__global__ void groupnorm_fwd_kernel(int RH, int H, const T *__restrict__ y, const float *__restrict__ ln_w,
                                     const float *__restrict__ ln_b, const T *__restrict__ r,
                                     const T *__restrict__ k, const T *__restrict__ v,
                                     const float *__restrict__ r_k, const T *__restrict__ g,
                                     float *__restrict__ mean, float *__restrict__ rstd, T *__restrict__ out)
{
    head_pair_t p;
    if (!head_pair(RH, H, p)) return;
    gn_in_t x;
    gn_load(p, y, ln_w, ln_b, r, k, v, r_k, g, x);
    const float m = warp_sum(x.y[0] + x.y[1]) * (1.f / 64);
    const float d0 = x.y[0] - m, d1 = x.y[1] - m;
    const float rs = rsqrtf(warp_sum(d0 * d0 + d1 * d1) * (1.f / 64) + GN_EPS);
    x.u = gn_bonus(x);
    float o[2];
    o[0] = gn_pre(x, 0, d0 * rs) * x.g[0];
    o[1] = gn_pre(x, 1, d1 * rs) * x.g[1];
    store2(out + p.i, o);
    if (p.lane == 0) { mean[p.gw] = m; rstd[p.gw] = rs; }
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
    head_pair_t p;
    if (!head_pair(RH, H, p)) return;
    const float m = mean[p.gw], rs = rstd[p.gw];
    gn_in_t x;
    gn_load(p, y, ln_w, ln_b, r, k, v, r_k, g, x);
    float go[2], xh[2], dxh[2], dpre[2], o[2];
    load2(dout + p.i, go);
    x.u = gn_bonus(x);
    float sdx = 0.f, sdxx = 0.f, du = 0.f;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        xh[e] = (x.y[e] - m) * rs;
        const float pre = gn_pre(x, e, xh[e]);
        dpre[e] = go[e] * x.g[e];
        o[e] = go[e] * pre;
        dxh[e] = dpre[e] * x.lw[e];
        sdx += dxh[e];
        sdxx += dxh[e] * xh[e];
        du += dpre[e] * x.v[e];
    }
    store2(dg + p.i, o);
#pragma unroll
    for (int e = 0; e < 2; e++) o[e] = dpre[e] * x.u;
    store2(dbv + p.i, o);
    sdx = warp_sum(sdx) * (1.f / 64);
    sdxx = warp_sum(sdxx) * (1.f / 64);
    du = warp_sum(du);
#pragma unroll
    for (int e = 0; e < 2; e++) o[e] = rs * (dxh[e] - sdx - xh[e] * sdxx);
    store2(dy + p.i, o);
#pragma unroll
    for (int e = 0; e < 2; e++) o[e] = du * x.k[e] * x.rk[e];
    store2(dbr + p.i, o);
#pragma unroll
    for (int e = 0; e < 2; e++) o[e] = du * x.r[e] * x.rk[e];
    store2(dbk + p.i, o);
}

} // namespace st

#endif
