/*
 * wkv7.cuh - the WKV7 recurrence on the GPU: plain C launchers, callable from
 * C (tests) and from CUDA (the engine). SPEC section 4, same math and argument
 * order as kernels/cpu/wkv7.h, plus a stream, an err buffer and a workspace:
 *
 *   S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T,   y_t = S_t r_t
 *
 * per batch row and head; S is N x N, row = value index i, column = key index
 * j (official layout). Shapes: B batch, T time, H heads, N = 64; activations
 * are (B, T, H, N) contiguous; s0 and ds0 are (H, N, N), shared by the batch.
 *
 * Algorithms: the recurrent pair described here; a chunked forward and a
 * split backward on CUDA cores (wkv7.cu); a chunked forward and a two-pass
 * chunked backward on tensor cores (wkv7_chunk.cu), and a backward whose
 * gradients all come from chunk products (CPROD, no step-back). Same inputs,
 * outputs and workspaces (the chunked backwards add their own, from the
 * stream's memory pool), chosen per call by grid size and precision
 * (WKV7_ALGO_AUTO below). Precision classes: about fp32 (recurrent, chunked,
 * 3xTF32 tensor-core kernels), one tf32 product (TCWS1, CPROD1WSSA: about
 * 3e-4 relative; the bf16 launchers' AUTO), bf16 operands in the forward's
 * state warps (TCWSB: about 3e-3); docs/performance.md 1.3 says which
 * bounds apply. Variants measured slower than these and reachable from no
 * default were removed on 2026-11-27 (their ids stay unused, listed below,
 * so that older bench logs still read; the launchers refuse them).
 *
 * Recurrent (the official RWKV-7 CUDA kernel's, BlinkDL/RWKV-CUDA; see
 * shared/notes/wkv7-kernels.md section 2): one block of 64 threads per (b, h).
 * Forward: thread i holds value row i of S in 64 fp32 registers; the block
 * stages WKV7_CUDA_CHUNK tokens of r, w, k, v, a, b in shared memory at a time
 * (one barrier pair per chunk, since rows never talk to each other), writes
 * y, sa_t = S_{t-1} a_t (fp32, for the backward) and, at the end of every
 * chunk, the fp32 state transposed (the checkpoint). Backward: thread j holds
 * key column j of S and both column j and row j of dS (192 registers), so
 * every gradient is a register-local sum; it walks the tokens in reverse,
 * reloading the checkpoint at each chunk end and stepping the state back
 * exactly: S_{t-1} = (S_t - v k^T - sa b^T) diag(1/w). One barrier per token
 * (dsa = dS b, double-buffered, is the only vector exchanged).
 *
 * Preconditions the caller guarantees (not checked on the device): the
 * backward gets bit-identical r, w, k, v, a, b to the forward's (the step-back
 * undoes the forward's arithmetic: a b rebuilt with different rounding is
 * amplified by up to 1/w^15 -- seen as a 20% dS0 error on the small fixture
 * in bf16 until the engine rebuilt b exactly); w in
 * [0.5, 1]; the model's w = exp(-0.606531 sigmoid(.)) is >= 0.545, which keeps
 * the step-back's error growth within a chunk under 1.83^15 (the official
 * kernel's clamp). dS_T is zero (state tuning: nothing flows into the final
 * state).
 *
 * Conventions: y, sa, checkpoints, s_final and dr..db are overwritten; ds0 is
 * accumulated (+=, fp32 atomics) because it sums over batch rows, micro-batches
 * and ranks. Precisions: the fp32 launchers take fp32 everywhere; the _bf16
 * launchers take r, k, v, a, b, dy as bf16 and write y, dr, dk, dv, da, db as
 * bf16, with the decay w and its gradient dw, the state, sa, checkpoints, s0,
 * s_final and ds0 in fp32. Why w stays fp32: a trained model's decays sit
 * near 1 (w = 0.999 remembers ~1000 tokens) where bf16's spacing is 2^-8, so
 * a bf16 w turns 0.999 into 0.996 or 1.0 and the state drifts; measured on
 * the fixtures (2026-11-26, H100) the bf16-w engine missed the bf16
 * tolerances on final_state (9%) and grad_state0 (13%).
 *
 * All pointers are device pointers; launchers only enqueue on `stream`, check
 * shapes, and return ST_OK or a negative st_err code with the detail in err.
 */
#ifndef ST_KERNELS_CUDA_WKV7_CUH
#define ST_KERNELS_CUDA_WKV7_CUH

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __CUDACC__
#include <cuda_bf16.h>
typedef __nv_bfloat16 wkv_bf16_t;
#else
typedef uint16_t wkv_bf16_t; /* bf16 bit pattern; same size and ABI as __nv_bfloat16 */
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define WKV7_CUDA_N 64
/* Tokens per chunk, and per checkpoint: every launcher takes ckpt_every =
 * WKV7_CUDA_CHUNK. */
#define WKV7_CUDA_CHUNK 16
/* A checkpoint every two chunks (32 tokens), an option: taken only by the
 * warp-specialized tensor-core forwards (TCWS, TCWS1, TCWSB: one kernel)
 * and the CPROD1WSSA backward, the bf16 AUTO pair; the launchers refuse it
 * for every other algorithm with a sentence, and any interval but these
 * two. The forward then stores the state after every odd chunk (and the
 * last), pass 1 the gradient there, and pass 2 recomputes the states and
 * gradients between them from the neighbouring chunk's tiles
 * (wkv7_chunk.cu): half the checkpoint memory (and of pass 1's gradient
 * store) and about 32 KB less DRAM traffic per chunk of 16 tokens, at the
 * price of about 21% more instructions in pass 2, which is bound by its
 * instruction issue as much as by DRAM: measured slower on an H100
 * (docs/performance.md 1.8: (8, 4096, 64) 7.86 against 7.49 ms, 3-5% at
 * the engine's shapes, even at (16, 512, 12)), so no default uses it
 * (WKV7_CKPT_BF16_DEFAULT); it trades that time for memory. The results
 * are the per-chunk form's (the same bits on the tests' and the bench's
 * inputs, dS0's atomics aside): the one-product tf32 class. */
#define WKV7_CUDA_CKPT_PAIR (2 * WKV7_CUDA_CHUNK)
/* The interval wkv7_cuda_ckpt_every gives the bf16 default launchers:
 * WKV7_CUDA_CHUNK (measured faster, above); -DWKV7_CKPT_BF16_DEFAULT=32
 * builds the pair interval in (benchmarks). */
#ifndef WKV7_CKPT_BF16_DEFAULT
#define WKV7_CKPT_BF16_DEFAULT WKV7_CUDA_CHUNK
#endif

/* Forward algorithms. RECURRENT: the official kernel's, one token after
 * another (above). CHUNKED: 16 tokens at a time as small dense products and a
 * 16-step triangular solve, 256 threads per head (wkv7.cu says how); same
 * outputs, different rounding order. AUTO (either pass): the faster one for
 * this grid of B x H blocks on this device, by the measured rule of
 * wkv7_cuda_auto_algo. The _DEFAULT macros are what wkv7_forward_cuda(_bf16)
 * and wkv7_backward_cuda(_bf16) use; docs/performance.md has the
 * measurements behind them. */
#define WKV7_ALGO_AUTO (-1)
#define WKV7_FWD_RECURRENT 0
#define WKV7_FWD_CHUNKED 1
/* TC: the chunked forward on tensor cores (wkv7_chunk.cu; 128 threads per
 * head, the state as mma accumulators split by value rows over 4 warps),
 * every product in 3xTF32, accurate to about fp32. (3 was TC1, TC with one
 * tf32 product: a benchmark of what the split costs, removed.) */
#define WKV7_FWD_TC 2
/* TCWS: TC's arithmetic, warp-specialized: 4 producer warps build the next
 * chunk's tiles, Gram matrices and (I - AB)^-1 while the 4 state warps run
 * the current chunk (256 threads per head). */
#define WKV7_FWD_TCWS 4
/* TCWS1: TCWS with one tf32 product per product (about 3e-4 relative);
 * TCWSB: TCWS with bf16 operands on m16n8k16 in the state warps (one mma
 * per 16 k against 3xTF32's three per 8 k) and one-product tf32 Gram
 * matrices; state, p, T and accumulators fp32 (notes 3.5: about 3e-3
 * relative; 3% faster than TCWS1, kept out of AUTO by its precision,
 * docs/performance.md 1.3). Their own precision classes: the step-back
 * backwards (RECURRENT, SPLIT, CHUNKED*) amplify a forward's rounding by up
 * to 1/p_16 and must not follow them; the chunk-product backwards (CPROD*)
 * do not step back. Tolerances per class: tests/test_cuda_wkv.c and
 * docs/performance.md 1.3. (7 and 8 were TCWS1V2 / TCWS1V4, TCWS1 with each
 * head's value rows over 2 or 4 CTAs: no faster at any grid, 1.4; removed.) */
#define WKV7_FWD_TCWS1 5
#define WKV7_FWD_TCWSB 6
/* fp32 keeps the recurrent forward: after the tensor-core forward, the
 * backward's step-back reaches 9e-4 relative on dr, dw, da with every w near
 * 0.545 (fp32 tolerance 1e-3; recurrent 3e-4; docs/performance.md 1.2) */
#ifndef WKV7_FWD_FP32_DEFAULT
#define WKV7_FWD_FP32_DEFAULT WKV7_FWD_RECURRENT
#endif
#ifndef WKV7_FWD_BF16_DEFAULT /* -D ..._DEFAULT=0 builds a baseline for benchmarks */
#define WKV7_FWD_BF16_DEFAULT WKV7_ALGO_AUTO
#endif

/* Backward algorithms. RECURRENT: one block of 64 threads per head, a
 * barrier per token (above). SPLIT: the rows of dS (dv, dsa, dS0) and the
 * columns of S and dS (dr, dw, dk, da, db) on different warps, a chunk apart,
 * two barriers per chunk (wkv7.cu). Same arithmetic per element. */
#define WKV7_BWD_RECURRENT 0
#define WKV7_BWD_SPLIT 1
/* CHUNKED: two passes (wkv7_chunk.cu): the dS recursion chunk by chunk on
 * tensor cores (3xTF32), which yields dS0, dv and dsa = dS_t b_t for every
 * token, and stores dS at the end of every segment of 4 chunks (64 tokens);
 * then the column half of the recurrent backward (dr, dw, dk, da, db; the
 * exact step-back from the checkpoints) over all segments of all heads in
 * parallel, with no exchange between threads. Needs a workspace of
 * B x H x ceil(T/64) x N x N + B x T x H x N floats, taken from the stream's
 * memory pool (cudaMallocAsync) per call. WKV7_BWD_CHUNKED_SEG(s): CHUNKED
 * with s chunks per segment (benchmarks). (3 was CHUNKED_REC, pass 2 as the
 * whole recurrent per-token backward per segment: the first version,
 * slower everywhere, 1.2; removed.) */
#define WKV7_BWD_CHUNKED 2
/* CHUNKED_WS: CHUNKED with pass 1 warp-specialized as WKV7_FWD_TCWS
 * (within 2% of CHUNKED at 96-128 heads, 4-10% slower at 192-256, 1.2; its
 * pass 1 kernel is also CPROD1WSSA's). */
#define WKV7_BWD_CHUNKED_WS 4
#define WKV7_BWD_CHUNKED_SEG(s) (16 + (s))
/* CPROD: every gradient from chunk products (wkv7_chunk.cu's header), no
 * step-back: pass 1 (3xTF32) stores dS at every chunk end and writes dv, dsa
 * and dS0; pass 2 runs one CTA per (b, h, chunk), all at once, from the
 * checkpointed start state, the forward's sa and pass 1's dsa; 3xTF32
 * products (about fp32). Workspace: B x H x ceil(T/16) x N x N + B x T x H
 * x N floats from the stream's pool. */
#define WKV7_BWD_CPROD 5
/* CPROD1WSSA: the one-tf32-product class (both passes), pass 1
 * warp-specialized (as CHUNKED_WS), pass 2 in 75 KB of shared memory (three
 * CTAs per SM instead of two) with its fp32 loads (S, D, sa, dsa, w) issued
 * as cp.async, in flight while the bf16 tiles load, and its access patterns
 * laid out for the shared-memory pipe (1.6x faster since 1.7, same bits);
 * the bf16 launchers' AUTO since 1.4. Removed on 2026-11-27, each slower than CPROD1WSSA
 * (docs/performance.md 1.3, 1.4): 6 CPROD1 (plain pass 1, 103 KB pass 2),
 * 7 CPRODB (CPROD1 with bf16 operands in pass 2: 7-20% slower than CPROD1,
 * dw 1.1e-2), 8 CPROD1WS, 9 CPROD1S and 10 CPROD1WSS (the steps toward
 * CPROD1WSSA, which gives CPROD1WSS's bits), 11 and 12 CPROD1WSSV2 / V4
 * and 14 and 15 their cp.async forms (pass 1's value rows over 2 or 4 CTAs
 * per head). */
#define WKV7_BWD_CPROD1WSSA 13
#ifndef WKV7_BWD_FP32_DEFAULT
#define WKV7_BWD_FP32_DEFAULT WKV7_ALGO_AUTO
#endif
#ifndef WKV7_BWD_BF16_DEFAULT
#define WKV7_BWD_BF16_DEFAULT WKV7_ALGO_AUTO
#endif

/* The algorithm AUTO picks for one pass (forward nonzero: a WKV7_FWD_ value,
 * else a WKV7_BWD_ value) over B x H heads on a device of `sms`
 * multiprocessors (measured on an H100, docs/performance.md section 1.2):
 * the warp-specialized tensor-core forward at every grid (bf16 launchers;
 * the fp32 ones default to the recurrent forward, above); the chunked
 * backward while B x H <= 1.5 x sms, the split backward up to 2 x sms, the
 * recurrent backward beyond. */
int wkv7_cuda_auto_algo(int forward, int B, int H, int sms);
/* What the launchers' AUTO picks, by precision (bf16 nonzero: the _bf16
 * launchers): fp32 as wkv7_cuda_auto_algo (the accurate class); bf16 the
 * one-product tf32 pair, TCWS1 forward and CPROD1WSSA backward, at every
 * grid (docs/performance.md 1.3 and 1.4; the error class is in
 * tests/test_cuda_wkv.c). -DWKV7_AUTO_V12 builds 1.2's rule (the fp32 one
 * for both precisions). */
int wkv7_cuda_auto_algo_prec(int forward, int bf16, int B, int H, int sms);

/* Floats of the checkpoint workspace for a checkpoint every ckpt_every
 * tokens (WKV7_CUDA_CHUNK or WKV7_CUDA_CKPT_PAIR): (B, H, ceil(T /
 * ckpt_every), N, N); entry c is the state after token min((c + 1)
 * ckpt_every, T), transposed ([j][i]); then a copy of s0 (H, N, N) that
 * every forward makes, for the chunk-product backward (the backward
 * launchers take no s0). The forward and the backward must be given the
 * same interval. This layout is the CUDA kernels' own (the CPU's
 * checkpoints hold the state before each chunk). */
size_t wkv7_cuda_ckpt_floats_every(int B, int T, int H, int ckpt_every);
/* The same for a checkpoint every chunk: enough for either interval. */
size_t wkv7_cuda_ckpt_floats(int B, int T, int H);
/* The interval to give the default launchers (wkv7_forward_cuda(_bf16),
 * wkv7_backward_cuda(_bf16)), by precision (bf16 nonzero: the _bf16 ones):
 * WKV7_CKPT_BF16_DEFAULT for bf16 where both defaults resolve to a pair
 * that takes it (TCWS1 + CPROD1WSSA), else WKV7_CUDA_CHUNK (fp32: the
 * recurrent forward). A caller that sizes its checkpoints with
 * wkv7_cuda_ckpt_floats_every(B, T, H, wkv7_cuda_ckpt_every(bf16)) and
 * passes the same value follows the default. */
int wkv7_cuda_ckpt_every(int bf16);
/* Floats of the sa workspace: (B, T, H, N). */
size_t wkv7_cuda_sa_floats(int B, int T, int H);

int wkv7_forward_cuda(int B, int T, int H,
                      const float *r, const float *w, const float *k,
                      const float *v, const float *a, const float *b,
                      const float *s0,      /* (H, N, N) */
                      float *y,             /* (B, T, H, N) out */
                      float *s_final,       /* (B, H, N, N) out, optional */
                      float *s_ckpt,        /* wkv7_cuda_ckpt_floats_every out */
                      int ckpt_every,       /* WKV7_CUDA_CHUNK, or WKV7_CUDA_CKPT_PAIR (above) */
                      float *sa,            /* (B, T, H, N) out */
                      cudaStream_t stream, char *err);

int wkv7_backward_cuda(int B, int T, int H,
                       const float *r, const float *w, const float *k,
                       const float *v, const float *a, const float *b,
                       const float *s_ckpt, int ckpt_every,
                       const float *sa,     /* from the forward */
                       const float *dy,     /* (B, T, H, N) */
                       float *dr, float *dw, float *dk, float *dv,
                       float *da, float *db, /* (B, T, H, N) out */
                       float *ds0,           /* (H, N, N) += */
                       cudaStream_t stream, char *err);

int wkv7_forward_cuda_bf16(int B, int T, int H,
                           const wkv_bf16_t *r, const float *w, const wkv_bf16_t *k,
                           const wkv_bf16_t *v, const wkv_bf16_t *a, const wkv_bf16_t *b,
                           const float *s0, wkv_bf16_t *y, float *s_final,
                           float *s_ckpt, int ckpt_every, float *sa,
                           cudaStream_t stream, char *err);

/* Either forward by name (benchmarks, tests): bf16 nonzero means r, k, v,
 * a, b, y are bf16 as in wkv7_forward_cuda_bf16, else fp32. */
int wkv7_forward_cuda_algo(int algo, int bf16, int B, int T, int H,
                           const void *r, const float *w, const void *k,
                           const void *v, const void *a, const void *b,
                           const float *s0, void *y, float *s_final,
                           float *s_ckpt, int ckpt_every, float *sa,
                           cudaStream_t stream, char *err);

int wkv7_backward_cuda_bf16(int B, int T, int H,
                            const wkv_bf16_t *r, const float *w, const wkv_bf16_t *k,
                            const wkv_bf16_t *v, const wkv_bf16_t *a, const wkv_bf16_t *b,
                            const float *s_ckpt, int ckpt_every, const float *sa,
                            const wkv_bf16_t *dy,
                            wkv_bf16_t *dr, float *dw, wkv_bf16_t *dk, wkv_bf16_t *dv,
                            wkv_bf16_t *da, wkv_bf16_t *db,
                            float *ds0, cudaStream_t stream, char *err);

/* Either backward by name; bf16 as in wkv7_forward_cuda_algo. */
int wkv7_backward_cuda_algo(int algo, int bf16, int B, int T, int H,
                            const void *r, const float *w, const void *k,
                            const void *v, const void *a, const void *b,
                            const float *s_ckpt, int ckpt_every, const float *sa,
                            const void *dy, void *dr, float *dw, void *dk, void *dv,
                            void *da, void *db, float *ds0, cudaStream_t stream, char *err);

#ifdef __cplusplus
}
#endif

#endif
