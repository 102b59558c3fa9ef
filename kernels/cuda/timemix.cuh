/*
 * timemix.cuh - the element-wise parts of RWKV-7's time mix on the GPU, the
 * same math as kernels/cpu/tokenshift.c, timemix.c and matmul.c's LoRA
 * activations (see those files for the gradient formulas):
 *
 *   token shift:  out_m,t = h_t + (h_{t-1} - h_t) mix_m   (h_{-1} = 0;
 *                 in ln_shift.cuh, fused with the LayerNorm that makes h)
 *   decay:        w = exp(-0.606531 sigmoid(w0 + wl))
 *   in-context lr a = sigmoid(a0 + al)
 *   kk = normalize(kraw * k_k) per head (eps 1e-12), kf = kraw (1 + (a-1) k_a)
 *   WKV inputs    wa = -kk, wb = kk * a
 *   value mix     s = sigmoid(v0 + vl), v = vraw + (v_first - vraw) s
 *
 * Shapes: rows R = B * T, width C = H * N, N = 64; every activation is (R, C)
 * of storage type T (float or bf16), except the decay w, its LoRA output wl
 * and the gradient dw, always fp32 (kernels/cuda/wkv7.cuh says why);
 * parameter vectors are fp32 (C). Per-head reductions use one warp per (row,
 * head), two adjacent channels per lane. Outputs are overwritten unless a
 * comment says +=.
 */
#ifndef ST_KERNELS_CUDA_TIMEMIX_CUH
#define ST_KERNELS_CUDA_TIMEMIX_CUH

#include "kernels/cuda/common.cuh"

namespace st {

constexpr float DECAY_SCALE = 0.6065306597126334f; /* exp(-0.5) */
constexpr float KK_EPS = 1e-12f;

struct mix6_t { const float *m[6]; };
template <typename T> struct ptr6_t { T *p[6]; };

/* The token shift's lerps and their gradients: ln_shift.cuh, fused with
 * the LayerNorm each one follows (mix6_t / ptr6_t hold its NMIX weight
 * vectors and outputs: kernel parameters, so that the loops over them
 * unroll without copying the tables to local memory). */

enum { ACT_TANH = 1, ACT_SIGMOID = 2 };

/* The LoRA activations, eight per thread, over one or two segments, each
 * with its own activation: w's tanh and g's sigmoid in one launch, since
 * each alone is too small to fill the GPU (R x 64 and R x 128 elements)
 * and two launches cost twice the latency. Any n: the last thread of a
 * segment takes its tail one by one, since n = R * D need not be a
 * multiple of 8; launch with grid_for8(act_seg_span(s1) + act_seg_span(s2)),
 * s2.n = 0 for one segment. */
__device__ __forceinline__ float lora_act_f(int act, float z) { return act == ACT_TANH ? tanhf(z) : sigmoidf_(z); }
__device__ __forceinline__ float lora_act_d(int act, float h) { return act == ACT_TANH ? 1.f - h * h : h * (1.f - h); }

/* forward: x in place; backward: x is dhid (*= act'), h the stored activation */
template <typename T> struct act_seg_t {
    size_t n;
    int act;
    const T *h;
    T *x;
};
template <typename T> inline size_t act_seg_span(const act_seg_t<T> &s) { return (s.n + 7) & ~(size_t)7; }

/* The segment and the offset in it of the thread's first element. */
template <typename T>
__device__ __forceinline__ act_seg_t<T> act_seg_at(const act_seg_t<T> &s1, const act_seg_t<T> &s2, size_t &i)
{
    i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    const size_t n1 = (s1.n + 7) & ~(size_t)7;
    if (i < n1) return s1;
    i -= n1;
    return s2;
}

template <typename T>
__global__ void lora_act_fwd_kernel(act_seg_t<T> s1, act_seg_t<T> s2)
{
    size_t i;
    const act_seg_t<T> s = act_seg_at(s1, s2, i);
    if (i >= s.n) return;
    T *__restrict__ hid = s.x;
    if (i + 8 > s.n) {
        for (; i < s.n; i++) hid[i] = from_f<T>(lora_act_f(s.act, to_f(hid[i])));
        return;
    }
    float z[8];
    load8(hid + i, z);
#pragma unroll
    for (int k = 0; k < 8; k++) z[k] = lora_act_f(s.act, z[k]);
    store8(hid + i, z);
}

/* dhid *= act'(z), from the stored activation hid (same layout as above) */
template <typename T>
__global__ void lora_act_bwd_kernel(act_seg_t<T> s1, act_seg_t<T> s2)
{
    size_t i;
    const act_seg_t<T> s = act_seg_at(s1, s2, i);
    if (i >= s.n) return;
    const T *__restrict__ hid = s.h;
    T *__restrict__ dhid = s.x;
    if (i + 8 > s.n) {
        for (; i < s.n; i++) dhid[i] = from_f<T>(to_f(dhid[i]) * lora_act_d(s.act, to_f(hid[i])));
        return;
    }
    float hv[8], d[8];
    load8(hid + i, hv);
    load8(dhid + i, d);
#pragma unroll
    for (int k = 0; k < 8; k++) d[k] *= lora_act_d(s.act, hv[k]);
    store8(dhid + i, d);
}

/* 1 / max(||kraw k_k||, eps) over a head, from a lane's share ss of the
 * squared norm (every lane gets it); clamped when eps won, where the
 * backward's gradient has no projection term. */
__device__ __forceinline__ float kk_inv_norm(float ss, bool &clamped)
{
    const float nrm = sqrtf(warp_sum(ss));
    clamped = !(nrm > KK_EPS);
    return 1.f / (nrm > KK_EPS ? nrm : KK_EPS);
}

/* One warp per (row, head). */
template <typename T>
__global__ void timemix_fwd_kernel(int RH, int H, const float *__restrict__ wl, const T *__restrict__ al,
                                   const T *__restrict__ kraw, const float *__restrict__ w0,
                                   const float *__restrict__ a0, const float *__restrict__ k_k,
                                   const float *__restrict__ k_a, float *__restrict__ w, T *__restrict__ a,
                                   T *__restrict__ kk, T *__restrict__ kf, T *__restrict__ wa,
                                   T *__restrict__ wb)
{
    head_pair_t p;
    if (!head_pair(RH, H, p)) return;
    const int c = p.c;
    const size_t i = p.i;
    float wlv[2], alv[2], kr[2], w0v[2], a0v[2], kkv[2], kav[2], wv[2], av[2], u[2], o[2];
    load2(wl + i, wlv);
    load2(al + i, alv);
    load2(kraw + i, kr);
    load2(w0 + c, w0v);
    load2(a0 + c, a0v);
    load2(k_k + c, kkv);
    load2(k_a + c, kav);
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        wv[e] = expf(-DECAY_SCALE * sigmoidf_(w0v[e] + wlv[e]));
        av[e] = sigmoidf_(a0v[e] + alv[e]);
        u[e] = kr[e] * kkv[e];
        ss += u[e] * u[e];
    }
    store2(w + i, wv);
    store2(a + i, av);
    bool clamped;
    const float inv = kk_inv_norm(ss, clamped);
    float qs[2], as[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
        /* wa and wb from the stored (rounded) kk and a; the engine keeps
         * them per layer for the WKV backward, which steps the state back
         * with exactly the forward's inputs */
        qs[e] = to_f(from_f<T>(u[e] * inv));
        as[e] = to_f(from_f<T>(av[e]));
        o[e] = kr[e] * (1.f + (av[e] - 1.f) * kav[e]);
    }
    store2(kk + i, qs);
    store2(kf + i, o);
#pragma unroll
    for (int e = 0; e < 2; e++) o[e] = -qs[e];
    store2(wa + i, o);
#pragma unroll
    for (int e = 0; e < 2; e++) o[e] = qs[e] * as[e];
    store2(wb + i, o);
}

/* One warp per (row, head); see kernels/cpu/timemix.c for the formulas. */
template <typename T>
__global__ void timemix_bwd_kernel(int RH, int H, const float *__restrict__ wl, const float *__restrict__ w0,
                                   const T *__restrict__ a, const T *__restrict__ kk,
                                   const T *__restrict__ kraw, const float *__restrict__ k_k,
                                   const float *__restrict__ k_a, const float *__restrict__ dw,
                                   const T *__restrict__ dkf, const T *__restrict__ dbk, const T *__restrict__ dwa,
                                   const T *__restrict__ dwb, T *__restrict__ dwl, T *__restrict__ dal,
                                   T *__restrict__ dkraw)
{
    head_pair_t p;
    if (!head_pair(RH, H, p)) return;
    const int c = p.c;
    const size_t i = p.i;
    float w0v[2], wlv[2], dwv[2], kr[2], kkv[2], kav[2], dwav[2], dwbv[2], av[2], q[2], g[2], gb[2], o[2];
    load2(w0 + c, w0v);
    load2(wl + i, wlv);
    load2(dw + i, dwv);
    load2(kraw + i, kr);
    load2(k_k + c, kkv);
    load2(k_a + c, kav);
    load2(dwa + i, dwav);
    load2(dwb + i, dwbv);
    load2(a + i, av);
    load2(kk + i, q);
    load2(dkf + i, g);
    load2(dbk + i, gb);
    float ss = 0.f, dot = 0.f, dkk[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
        const float sg = sigmoidf_(w0v[e] + wlv[e]);
        const float wv = expf(-DECAY_SCALE * sg);
        o[e] = dwv[e] * wv * (-DECAY_SCALE) * sg * (1.f - sg);
        const float u = kr[e] * kkv[e];
        ss += u * u;
        dkk[e] = -dwav[e] + dwbv[e] * av[e];
        dot += dkk[e] * q[e];
    }
    store2(dwl + i, o);
    bool clamped;
    const float inv = kk_inv_norm(ss, clamped);
    dot = warp_sum(dot);
    float dkr[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
        /* dkf + dbk (the WKV's and the GroupNorm bonus's shares of dL/dkf),
         * rounded to T as the separate add kernel that this replaces did */
        const float gg = to_f(from_f<T>(g[e] + gb[e]));
        const float du = clamped ? dkk[e] * inv : (dkk[e] - q[e] * dot) * inv;
        const float da = dwbv[e] * q[e] + gg * kr[e] * kav[e];
        o[e] = da * av[e] * (1.f - av[e]);
        dkr[e] = gg * (1.f + (av[e] - 1.f) * kav[e]) + du * kkv[e];
    }
    store2(dal + i, o);
    store2(dkraw + i, dkr);
}

/* vs: in the LoRA output vl, out s = sigmoid(v0 + vl); v = vraw + (v_first - vraw) s;
 * eight per thread (grid_for8). */
template <typename T>
__global__ void vmix_fwd_kernel(size_t n, int C, const T *__restrict__ vraw, const T *__restrict__ vfirst,
                                const float *__restrict__ v0, T *__restrict__ vs, T *__restrict__ v)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float z[8], vr[8], vf[8], b0[8], o[8];
    load8(vs + i, z);
    load8(vraw + i, vr);
    load8(vfirst + i, vf);
    load8(v0 + i % C, b0);
#pragma unroll
    for (int k = 0; k < 8; k++) {
        z[k] = sigmoidf_(b0[k] + z[k]);
        o[k] = vr[k] + (vf[k] - vr[k]) * z[k];
    }
    store8(vs + i, z);
    store8(v + i, o);
}

/* g = dv + dbv (the WKV's and the GroupNorm bonus's shares, rounded to T);
 * dvraw = g (1 - s), dvl = g (v_first - vraw) s (1 - s); d v_first is not
 * needed (nothing that feeds v_first depends on a state). Eight per thread. */
template <typename T>
__global__ void vmix_bwd_kernel(size_t n, const T *__restrict__ vraw, const T *__restrict__ vfirst,
                                const T *__restrict__ s, const T *__restrict__ dv, const T *__restrict__ dbv,
                                T *__restrict__ dvraw, T *__restrict__ dvl)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float sv[8], g[8], gb[8], vr[8], vf[8], o[8];
    load8(s + i, sv);
    load8(dv + i, g);
    load8(dbv + i, gb);
    load8(vraw + i, vr);
    load8(vfirst + i, vf);
#pragma unroll
    for (int k = 0; k < 8; k++) g[k] = to_f(from_f<T>(g[k] + gb[k]));
#pragma unroll
    for (int k = 0; k < 8; k++) o[k] = g[k] * (1.f - sv[k]);
    store8(dvraw + i, o);
#pragma unroll
    for (int k = 0; k < 8; k++) o[k] = g[k] * (vf[k] - vr[k]) * sv[k] * (1.f - sv[k]);
    store8(dvl + i, o);
}

} // namespace st

#endif
