/*
 * wkv7_chunk.cuh - internal interface between the WKV7 launchers (wkv7.cu)
 * and the tensor-core chunked kernels (wkv7_chunk.cu). Not part of the public
 * API: callers use wkv7.cuh, whose tensor-core algorithm ids (WKV7_FWD_TC*,
 * WKV7_BWD_CHUNKED*, WKV7_BWD_CPROD*) route here unchanged. Same arguments,
 * layouts and conventions as wkv7.cuh; pointers are device pointers, shapes
 * were checked by the caller.
 */
#ifndef ST_KERNELS_CUDA_WKV7_CHUNK_CUH
#define ST_KERNELS_CUDA_WKV7_CHUNK_CUH

#include "kernels/cuda/wkv7.cuh" /* WKV7_CUDA_N */

#include <cuda_runtime_api.h>

namespace wkv7tc {

/* ckpt_every (both passes): WKV7_CUDA_CHUNK, or WKV7_CUDA_CKPT_PAIR for the
 * warp-specialized forwards and CPROD1WSSA (wkv7.cuh; ST_EINVAL for the
 * others); the same interval in both, as the checkpoints' layout and the
 * s0 copy behind them depend on it.
 *
 * Forward on tensor cores; algo is a wkv7.cuh id: WKV7_FWD_TC (every
 * product in 3xTF32: each fp32 operand as a tf32 pair, three products;
 * about fp32), WKV7_FWD_TCWS (the same arithmetic, warp-specialized:
 * producer warps build the next chunk's tiles while the state warps
 * compute), WKV7_FWD_TCWS1 (TCWS with one tf32 product), WKV7_FWD_TCWSB
 * (TCWS with bf16 operands in the state warps). Any other id: ST_EINVAL. */
template <typename F>
int forward(int algo, int B, int T, int H, const F *r, const float *w, const F *k, const F *v, const F *a,
            const F *b, const float *s0, F *y, float *s_final, float *ckpt, int ckpt_every, float *sa,
            cudaStream_t stream, char *err);

/* The current device's SM count (*sms): AUTO's choices and the
 * warp-specialized kernels' one-CTA-per-SM shape depend on it. */
int sm_count(int *sms, char *err);

/* Backward; algo is a wkv7.cuh id. WKV7_BWD_CHUNKED: two passes, the
 * chunked dS recursion on tensor cores (3xTF32), which stores dS at the end
 * of every segment of `seg` chunks, writes dv and dsa and adds dS0, then the
 * column half of the recurrent per-token backward (dr, dw, dk, da, db) for
 * every segment in parallel, seeded with that segment's dS and the
 * forward's checkpoints and sa; WKV7_BWD_CHUNKED_WS: the same with pass 1
 * warp-specialized. The chunk-product backwards (no step-back; chunk 0's
 * start state is the s0 copy behind the checkpoints; seg is ignored): pass
 * 1 with one chunk per segment, then one CTA per (b, h, chunk).
 * WKV7_BWD_CPROD: 3xTF32 in both passes; WKV7_BWD_CPROD1WSSA: one tf32
 * product, pass 1 warp-specialized, pass 2 in 75 KB of shared memory with
 * its fp32 loads by cp.async. Any other id: ST_EINVAL. */
template <typename F>
int backward(int algo, int seg, int B, int T, int H, const F *r, const float *w, const F *k, const F *v, const F *a,
             const F *b, const float *ckpt, int ckpt_every, const float *sa, const F *dy, F *dr, float *dw,
             F *dk, F *dv, F *da, F *db, float *ds0, cudaStream_t stream, char *err);

#ifdef __CUDACC__
/* One token of the per-token step-back's column half, shared by the
 * CHUNKED backward's column pass (wkv7_chunk.cu) and the split backward's
 * (wkv7.cu): a lane pair holds state column j and dS's column j, this lane
 * rows i0 .. i0 + 31 of both (S: the state after the token, G: dS there).
 * v4, d4, s4, g4 are the token's v, dy, sa, dsa at rows i0.. (shared
 * memory, float4); rj .. bj its key-j inputs. Steps S and G back over the
 * token (S_{t-1} = (S_t - v k^T - sa b^T) diag(1/w), dS_{t-1} = dS_t diag(w)
 * + dsa a^T, after dS_t += dy r^T) and returns the column gradients of r, k,
 * b, w, a, summed over the lane pair. */
__device__ __forceinline__ void col_step_back(float *S, float *G, const float4 *v4, const float4 *d4, const float4 *s4,
                                              const float4 *g4, float rj, float wj, float kj, float aj, float bj,
                                              float &gr, float &gk, float &gb, float &gw, float &ga)
{
    const float iw = 1.f / wj;
    gr = 0.f; gk = 0.f; gb = 0.f; gw = 0.f; ga = 0.f;
#pragma unroll
    for (int q = 0; q < WKV7_CUDA_N / 2; q += 4) {
        const float4 vv = v4[q / 4], dd = d4[q / 4], ss = s4[q / 4], gg = g4[q / 4];
        const float vx[4] = {vv.x, vv.y, vv.z, vv.w}, dx[4] = {dd.x, dd.y, dd.z, dd.w};
        const float sx[4] = {ss.x, ss.y, ss.z, ss.w}, gx[4] = {gg.x, gg.y, gg.z, gg.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float &s = S[q + e], &d = G[q + e];
            gr = fmaf(s, dx[e], gr);                    /* dr = S_t^T dy */
            d = fmaf(dx[e], rj, d);                     /* dS_t += dy r^T */
            s = (s - fmaf(vx[e], kj, sx[e] * bj)) * iw; /* S_{t-1} */
            gk = fmaf(d, vx[e], gk);
            gb = fmaf(d, sx[e], gb);
            gw = fmaf(d, s, gw);
            ga = fmaf(gx[e], s, ga);
            d = fmaf(d, wj, gx[e] * aj);                /* dS_{t-1} column */
        }
    }
    gr += __shfl_xor_sync(0xffffffffu, gr, 1);
    gk += __shfl_xor_sync(0xffffffffu, gk, 1);
    gb += __shfl_xor_sync(0xffffffffu, gb, 1);
    gw += __shfl_xor_sync(0xffffffffu, gw, 1);
    ga += __shfl_xor_sync(0xffffffffu, ga, 1);
}
#endif

} // namespace wkv7tc

#endif
