/*
 * ln_shift.cuh - a LayerNorm and the token shift that reads its output, in
 * one pass each way; the same math as kernels/cpu/layernorm.c followed by
 * kernels/cpu/tokenshift.c:
 *
 *   forward   xs = a (+ b),  h = LN(xs) rounded to T,
 *             out_m,t = h_t + (h_{t-1} - h_t) mix_m   (h_{-1} = 0)
 *   backward  dh_t = sum_m dout_m,t (1 - mix_m) + dout_m,t+1 mix_m, rounded to T,
 *             dx += rstd (g - mean(g) - xhat mean(g xhat)),  g = dh w
 *
 * Why fused: every LayerNorm of a layer feeds a token shift alone (LN1 the
 * time mix's six lerps, LN2 the channel mix's one), and the backward of a
 * LayerNorm needs only dh. Apart, the LayerNorm wrote h (R x C of T) and the
 * shift read it back, and the shift's backward wrote dh for the LayerNorm's
 * backward to read: 2 R C elements of T a LayerNorm each way, about a sixth
 * of what the pair moves at the time mix. Fused, h and dh stay in registers.
 * The price: the block of row t also normalises row t - 1 in the forward
 * (its read mostly comes from L2, where the block of row t - 1 just read
 * it), and reads row t + 1's output gradients in the backward.
 *
 * h and dh are rounded to T exactly where the separate kernels stored them,
 * so the results are those of layernorm_fwd_kernel /
 * residual_layernorm_fwd_kernel + a token shift, and of a token shift's
 * backward + layernorm_bwd_kernel, bit for bit.
 *
 * Shapes as layernorm.cuh (one block of ln_threads(C) per row, 8 channels a
 * thread, C % 8 == 0) and timemix.cuh (rows t of Tlen tokens per sequence,
 * NMIX lerps: 6 for the time mix, 1 for the channel mix).
 */
#ifndef ST_KERNELS_CUDA_LN_SHIFT_CUH
#define ST_KERNELS_CUDA_LN_SHIFT_CUH

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/layernorm.cuh"
#include "kernels/cuda/timemix.cuh"

namespace st {

/* xs of row r into x: a (+ b); zeros for the threads past C. */
template <typename Tb>
__device__ __forceinline__ void ln_shift_row(const float *__restrict__ a, const Tb *__restrict__ b, size_t o,
                                             bool on, float *x)
{
    if (!on) {
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] = 0.f;
        return;
    }
    load8(a + o, x);
    if (b) {
        float y[8];
        load8(b + o, y);
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] += y[k];
    }
}

/* b (the branch added to a, of type Tb) may be NULL: then xs = a. xsum, when
 * given, gets xs of row r (the fp32 residual stream after the add). mean and
 * rstd get row r's statistics. */
template <typename Tb, typename T, int NMIX>
__global__ void __launch_bounds__(LN_MAX_THREADS) ln_shift_fwd_kernel(
    int C, int Tlen, const float *__restrict__ a, const Tb *__restrict__ b, float *__restrict__ xsum,
    const float *__restrict__ w, const float *__restrict__ bias, float eps, mix6_t mix, ptr6_t<T> out,
    float *__restrict__ mean, float *__restrict__ rstd)
{
    __shared__ float2 sh[32];
    const int r = blockIdx.x, c = threadIdx.x * 8;
    const bool on = c < C, prev = r % Tlen > 0;
    const size_t o = (size_t)r * C + c;
    float x[8], xp[8];
    ln_shift_row(a, b, o, on, x);
    if (on && xsum) store8(xsum + o, x);
    ln_shift_row(a, b, o - C, on && prev, xp); /* o - C is not read at t = 0 */
    float2 s = make_float2(0.f, 0.f);
#pragma unroll
    for (int k = 0; k < 8; k++) s.x += x[k], s.y += xp[k];
    s = block_sum2(s, sh);
    const float m = s.x / C, mp = s.y / C;
    float2 ss = make_float2(0.f, 0.f);
    if (on)
#pragma unroll
        for (int k = 0; k < 8; k++) ss.x += (x[k] - m) * (x[k] - m), ss.y += (xp[k] - mp) * (xp[k] - mp);
    ss = block_sum2(ss, sh);
    const float rs = rsqrtf(ss.x / C + eps), rsp = rsqrtf(ss.y / C + eps);
    if (on) {
        float wv[8], bv[8], mm[8], y[8];
        load8(w + c, wv);
        load8(bias + c, bv);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            x[k] = to_f(from_f<T>((x[k] - m) * rs * wv[k] + bv[k]));
            xp[k] = prev ? to_f(from_f<T>((xp[k] - mp) * rsp * wv[k] + bv[k])) : 0.f;
        }
#pragma unroll
        for (int q = 0; q < NMIX; q++) {
            load8(mix.m[q] + c, mm);
#pragma unroll
            for (int k = 0; k < 8; k++) y[k] = x[k] + (xp[k] - x[k]) * mm[k];
            store8(out.p[q] + o, y);
        }
    }
    if (threadIdx.x == 0 && mean) { mean[r] = m; rstd[r] = rs; }
}

/* dout: the NMIX lerps' gradients (T); dx (fp32) +=, and dxt, when not
 * NULL, gets the updated dx rounded to T (as layernorm_bwd_kernel). */
template <typename T, int NMIX>
__global__ void __launch_bounds__(LN_MAX_THREADS) shift_ln_bwd_kernel(
    int C, int Tlen, const float *__restrict__ xin, const float *__restrict__ w, const float *__restrict__ mean,
    const float *__restrict__ rstd, mix6_t mix, ptr6_t<T> dout, float *__restrict__ dx, T *__restrict__ dxt)
{
    __shared__ float2 sh[32];
    const int r = blockIdx.x, c = threadIdx.x * 8;
    const bool on = c < C, next = r % Tlen + 1 < Tlen;
    const size_t o = (size_t)r * C + c;
    const float m = mean[r], rs = rstd[r];
    float xh[8], g[8];
    float2 s = make_float2(0.f, 0.f);
    if (on) {
        float wv[8], mm[8], d[8];
#pragma unroll
        for (int k = 0; k < 8; k++) g[k] = 0.f;
#pragma unroll
        for (int q = 0; q < NMIX; q++) {
            load8(mix.m[q] + c, mm);
            load8(dout.p[q] + o, d);
#pragma unroll
            for (int k = 0; k < 8; k++) g[k] += d[k] * (1.f - mm[k]);
            if (next) {
                load8(dout.p[q] + o + C, d);
#pragma unroll
                for (int k = 0; k < 8; k++) g[k] += d[k] * mm[k];
            }
        }
        load8(xin + o, xh);
        load8(w + c, wv);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            xh[k] = (xh[k] - m) * rs;
            g[k] = to_f(from_f<T>(g[k])) * wv[k];
            s.x += g[k];
            s.y += g[k] * xh[k];
        }
    }
    s = block_sum2(s, sh);
    if (on) ln_bwd_update(dx, dxt, o, rs, g, xh, s.x / C, s.y / C);
}

} // namespace st

#endif
