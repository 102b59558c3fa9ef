/*
 * wkv7_chunk.cuh - internal interface between the WKV7 launchers (wkv7.cu)
 * and the tensor-core chunked kernels (wkv7_chunk.cu). Not part of the public
 * API: callers use wkv7.cuh, whose algorithm ids (WKV7_FWD_TC, WKV7_BWD_CHUNKED)
 * route here. Same arguments, layouts and conventions as wkv7.cuh; pointers
 * are device pointers, shapes were checked by the caller.
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

/* Backward in two passes: the chunked dS recursion on tensor cores (3xTF32),
 * storing dS at the end of every segment of `seg` chunks and adding dS0; then
 * per-token gradients for every segment in parallel, seeded with that
 * segment's dS and the forward's checkpoints and sa. mode 0: the recurrent
 * kernel's per-token backward (rows and columns of dS); mode 1: pass 1 also
 * writes dv and dsa, and pass 2 is the column half alone; mode 2: mode 1
 * with pass 1 warp-specialized. Modes 3-8 are the chunk-product backward
 * (no step-back; chunk 0's start state is the s0 copy behind the
 * checkpoints): pass 1 with one chunk per segment, then one CTA per (b, h,
 * chunk). 3: 3xTF32 in both passes; 4: one tf32 product; 5: pass 2 with bf16
 * operands; 6: mode 4 with pass 1 warp-specialized; 7 and 8: modes 6 and 4
 * with pass 2 in 74 KB of shared memory (three CTAs per SM); 9 and 10: mode 7
 * with pass 1's value rows over 2 or 4 CTAs per head; 11: mode 7 with pass
 * 2's fp32 loads by cp.async; 12, 13: 9 and 10 with that pass 2. */
template <typename F>
int backward(int mode, int seg, int B, int T, int H, const F *r, const float *w, const F *k, const F *v, const F *a,
             const F *b, const float *ckpt, const float *sa, const F *dy, F *dr, float *dw, F *dk, F *dv,
             F *da, F *db, float *ds0, cudaStream_t stream, char *err);

} // namespace wkv7tc

#endif
