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

#include <cuda_runtime_api.h>

namespace wkv7tc {

/* Forward on tensor cores; algo is a wkv7.cuh id: WKV7_FWD_TC (every
 * product in 3xTF32: each fp32 operand as a tf32 pair, three products;
 * about fp32), WKV7_FWD_TCWS (the same arithmetic, warp-specialized:
 * producer warps build the next chunk's tiles while the state warps
 * compute), WKV7_FWD_TCWS1 (TCWS with one tf32 product), WKV7_FWD_TCWSB
 * (TCWS with bf16 operands in the state warps). Any other id: ST_EINVAL. */
template <typename F>
int forward(int algo, int B, int T, int H, const F *r, const float *w, const F *k, const F *v, const F *a,
            const F *b, const float *s0, F *y, float *s_final, float *ckpt, float *sa, cudaStream_t stream,
            char *err);

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
             const F *b, const float *ckpt, const float *sa, const F *dy, F *dr, float *dw, F *dk, F *dv,
             F *da, F *db, float *ds0, cudaStream_t stream, char *err);

} // namespace wkv7tc

#endif
