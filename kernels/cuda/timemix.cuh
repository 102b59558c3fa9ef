/*
 * timemix.cuh - the element-wise parts of RWKV-7's time mix on the GPU, the
 * same math as kernels/cpu/tokenshift.c, timemix.c and matmul.c's LoRA
 * activations (see those files for the gradient formulas):
 *
 *   token shift:  out_m,t = h_t + (h_{t-1} - h_t) mix_m   (h_{-1} = 0)
 *   decay:        w = exp(-0.606531 sigmoid(w0 + wl))
 *   in-context lr a = sigmoid(a0 + al)
 *   kk = normalize(kraw * k_k) per head (eps 1e-12), kf = kraw (1 + (a-1) k_a)
 *   WKV inputs    wa = -kk, wb = kk * a
 *   value mix     s = sigmoid(v0 + vl), v = vraw + (v_first - vraw) s
 *
 * Shapes: rows R = B * T, width C = H * N, N = 64; every activation is (R, C)
 * of storage type T (float or bf16), except the decay w, its LoRA output wl
 * and the gradient dw, always fp32 (kernels/cuda/wkv7.cuh says why); parameter vectors are fp32 (C). Per-head
 * reductions use one warp per (row, head), two channels per lane. Outputs are
 * overwritten unless a comment says +=.
 */
#ifndef ST_KERNELS_CUDA_TIMEMIX_CUH
#define ST_KERNELS_CUDA_TIMEMIX_CUH

#include "kernels/cuda/common.cuh"

namespace st {

constexpr float DECAY_SCALE = 0.6065306597126334f; /* exp(-0.5) */
constexpr float KK_EPS = 1e-12f;

struct mix6_t { const float *m[6]; };
template <typename T> struct ptr6_t { T *p[6]; };

/* One thread per 8 channels of one row (C % 8 == 0, launch with grid_for8).
 * NMIX (6 for the time mix, 1 for the channel mix) is a template argument so
 * that the loop over outputs unrolls: indexing the pointer tables of the
 * kernel's parameters with a run-time index made the compiler copy them to
 * local memory and serialised the six stores behind it. */
template <typename T, int NMIX>
__global__ void tokenshift_fwd_kernel(size_t n, int Tlen, int C, const T *__restrict__ h, mix6_t mix,
                                      ptr6_t<T> out)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    const int c = (int)(i % C);
    const int t = (int)((i / C) % Tlen);
    float x[8], xp[8], mm[8], o[8];
    load8(h + i, x);
    if (t > 0) load8(h + i - C, xp);
    else
#pragma unroll
        for (int k = 0; k < 8; k++) xp[k] = 0.f;
#pragma unroll
    for (int m = 0; m < NMIX; m++) {
        load8(mix.m[m] + c, mm);
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = x[k] + (xp[k] - x[k]) * mm[k];
        store8(out.p[m] + i, o);
    }
}

/* dh (overwritten) = sum_m dout_m,t (1 - mix_m) + dout_m,t+1 mix_m; one
 * thread per 8 channels (grid_for8), NMIX unrolled as above. */
template <typename T, int NMIX>
__global__ void tokenshift_bwd_kernel(size_t n, int Tlen, int C, mix6_t mix, ptr6_t<T> dout, T *__restrict__ dh)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    const int c = (int)(i % C);
    const int t = (int)((i / C) % Tlen);
    const bool next = t + 1 < Tlen;
    float d[8], g[8], mm[8];
#pragma unroll
    for (int k = 0; k < 8; k++) d[k] = 0.f;
#pragma unroll
    for (int m = 0; m < NMIX; m++) {
        load8(mix.m[m] + c, mm);
        load8(dout.p[m] + i, g);
#pragma unroll
        for (int k = 0; k < 8; k++) d[k] += g[k] * (1.f - mm[k]);
        if (next) {
            load8(dout.p[m] + i + C, g);
#pragma unroll
            for (int k = 0; k < 8; k++) d[k] += g[k] * mm[k];
        }
    }
    store8(dh + i, d);
}

enum { ACT_TANH = 1, ACT_SIGMOID = 2 };

/* The LoRA activations in place, eight per thread (any n: the last thread
 * takes the tail one by one, since n = R * D need not be a multiple of 8;
 * launch with grid_for8((n + 7) & ~7)). */
__device__ __forceinline__ float lora_act_f(int act, float z) { return act == ACT_TANH ? tanhf(z) : sigmoidf_(z); }
__device__ __forceinline__ float lora_act_d(int act, float h) { return act == ACT_TANH ? 1.f - h * h : h * (1.f - h); }

template <typename T>
__global__ void lora_act_fwd_kernel(size_t n, int act, T *__restrict__ hid)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (i + 8 > n) {
        for (; i < n; i++) hid[i] = from_f<T>(lora_act_f(act, to_f(hid[i])));
        return;
    }
    float z[8];
    load8(hid + i, z);
#pragma unroll
    for (int k = 0; k < 8; k++) z[k] = lora_act_f(act, z[k]);
    store8(hid + i, z);
}

/* dhid *= act'(z), from the stored activation hid (same layout as above) */
template <typename T>
__global__ void lora_act_bwd_kernel(size_t n, int act, const T *__restrict__ hid, T *__restrict__ dhid)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (i + 8 > n) {
        for (; i < n; i++) dhid[i] = from_f<T>(to_f(dhid[i]) * lora_act_d(act, to_f(hid[i])));
        return;
    }
    float hv[8], d[8];
    load8(hid + i, hv);
    load8(dhid + i, d);
#pragma unroll
    for (int k = 0; k < 8; k++) d[k] *= lora_act_d(act, hv[k]);
    store8(dhid + i, d);
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
    const int gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (gw >= RH) return;
    const int h = gw % H;
    const size_t base = (size_t)gw * 64; /* (row * H + h) * N */
    float u[2], av[2], kr[2];
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        const int n = lane + 32 * e, c = h * 64 + n;
        const size_t i = base + n;
        w[i] = expf(-DECAY_SCALE * sigmoidf_(w0[c] + wl[i]));
        av[e] = sigmoidf_(a0[c] + to_f(al[i]));
        a[i] = from_f<T>(av[e]);
        kr[e] = to_f(kraw[i]);
        u[e] = kr[e] * k_k[c];
        ss += u[e] * u[e];
    }
    const float nrm = sqrtf(warp_sum(ss));
    const float inv = 1.f / (nrm > KK_EPS ? nrm : KK_EPS);
#pragma unroll
    for (int e = 0; e < 2; e++) {
        const int n = lane + 32 * e, c = h * 64 + n;
        const size_t i = base + n;
        const T qs = from_f<T>(u[e] * inv), as = from_f<T>(av[e]);
        kk[i] = qs;
        kf[i] = from_f<T>(kr[e] * (1.f + (av[e] - 1.f) * k_a[c]));
        /* wa and wb from the stored (rounded) kk and a, exactly as
         * wkv_ab_kernel rebuilds them for the backward: the WKV backward
         * steps the state back with them and needs bit-identical inputs */
        wa[i] = from_f<T>(-to_f(qs));
        wb[i] = from_f<T>(to_f(qs) * to_f(as));
    }
}

/* The WKV kernel's a and b inputs again, for the backward (wa = -kk, wb = kk a);
 * eight per thread (grid_for8). */
template <typename T>
__global__ void wkv_ab_kernel(size_t n, const T *__restrict__ kk, const T *__restrict__ a,
                              T *__restrict__ wa, T *__restrict__ wb)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    float q[8], av[8], o[8];
    load8(kk + i, q);
    load8(a + i, av);
#pragma unroll
    for (int k = 0; k < 8; k++) o[k] = -q[k];
    store8(wa + i, o);
#pragma unroll
    for (int k = 0; k < 8; k++) o[k] = q[k] * av[k];
    store8(wb + i, o);
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
    const int gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (gw >= RH) return;
    const int h = gw % H;
    const size_t base = (size_t)gw * 64;
    float ss = 0.f, dot = 0.f, dkk[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
        const int n = lane + 32 * e, c = h * 64 + n;
        const size_t i = base + n;
        const float sg = sigmoidf_(w0[c] + wl[i]);
        const float wv = expf(-DECAY_SCALE * sg);
        dwl[i] = from_f<T>(dw[i] * wv * (-DECAY_SCALE) * sg * (1.f - sg));
        const float u = to_f(kraw[i]) * k_k[c];
        ss += u * u;
        dkk[e] = -to_f(dwa[i]) + to_f(dwb[i]) * to_f(a[i]);
        dot += dkk[e] * to_f(kk[i]);
    }
    ss = warp_sum(ss);
    dot = warp_sum(dot);
    const float nrm = sqrtf(ss);
    const bool clamped = !(nrm > KK_EPS);
    const float inv = 1.f / (clamped ? KK_EPS : nrm);
#pragma unroll
    for (int e = 0; e < 2; e++) {
        const int n = lane + 32 * e, c = h * 64 + n;
        const size_t i = base + n;
        /* dkf + dbk (the WKV's and the GroupNorm bonus's shares of dL/dkf),
         * rounded to T as the separate add kernel that this replaces did */
        const float g = to_f(from_f<T>(to_f(dkf[i]) + to_f(dbk[i])));
        const float av = to_f(a[i]), q = to_f(kk[i]), kr = to_f(kraw[i]);
        const float du = clamped ? dkk[e] * inv : (dkk[e] - q * dot) * inv;
        const float da = to_f(dwb[i]) * q + g * kr * k_a[c];
        dal[i] = from_f<T>(da * av * (1.f - av));
        dkraw[i] = from_f<T>(g * (1.f + (av - 1.f) * k_a[c]) + du * k_k[c]);
    }
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
