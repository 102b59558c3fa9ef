/*
 * lora.cuh - one fused kernel per LoRA of the time mix (bf16 engines): the
 * down product, the activation and the up product in one pass over a tile of
 * rows, instead of two thin cuBLAS products and an element-wise kernel
 * (issue #4: the three launches moved (R, D) through memory twice and the
 * first product, (R x C) @ (C x D) with D = 32..256, filled half the GPU).
 * Header-only (llm.c style): the kernel, then the launchers.
 *
 * Shapes and layouts (row-major, the model's; SPEC section 4, fixtures'
 * README): x (R, C), W1 [C][D], hid (R, D), W2 [D][C], out (R, C).
 *
 *   forward:   hid = act(x W1),  out = hid W2
 *   backward:  dhid = (dout W2^T) * act'(hid),  dx = beta dx + dhid W1^T
 *
 * act is none, tanh (the decay LoRA) or sigmoid (the gate LoRA); the backward
 * reads the forward's stored activation hid (timemix.cuh's lora_act_d). The
 * weights are frozen: no weight gradients.
 *
 * Rounding points: the same as the cuBLAS path it replaces (engine_cuda.cu's
 * lora_fwd / lora_bwd), so that the engine's results move only by the order
 * of fp32 accumulation: the first product is rounded to bf16 (cuBLAS's bf16
 * output), the activation computed in fp32 from that and rounded to bf16
 * again; the second product accumulates in fp32 and is rounded once into out
 * (bf16, or fp32 for the decay LoRA's wl). Backward: dhid rounded to bf16,
 * times act'(hid) rounded again, then dx = beta dx + dhid W1^T in fp32 and
 * rounded once (dx is read only when beta != 0, as cuBLAS does).
 *
 * How: one CTA of 8 warps per 64 rows (R = 8192: 128 CTAs, one wave on 132
 * SMs). Stage 1 streams x's (64, C) rows and W1 in 64-wide k chunks through
 * a 3- or 4-deep cp.async ring and accumulates the (64, D) hidden layer in
 * registers (mma.sync m16n8k16 bf16 -> fp32; warp (wm, wn) owns rows 16 wm..
 * and columns wn D/2..); the activation then puts it in shared memory (and
 * into hid when the backward will need it); stage 2 streams W2 in 64-column
 * chunks through the same ring (its first chunks load while stage 1 still
 * computes: the weights do not depend on the hidden layer) and writes each
 * (64, 64) piece of out, through shared memory in whole lines where out is
 * bf16. In the backward with beta != 0, dx's old tile rides in the ring with
 * W1's (a plain load in the epilogue cost 14 us of 42 at 768 x 64). x is
 * read once and out written once; the weights come from L2, each CTA
 * starting at its own chunk. The backward is the same kernel with the roles
 * of the weights swapped: stage 1 multiplies by W2^T (W2 as stored is W2^T's
 * [n][k] layout: plain ldmatrix) and stage 2 by W1^T (likewise); the forward
 * reads W1 and W2 as [k][n] through ldmatrix.trans, so no transposed copies
 * exist.
 *
 * Status (H100, 2026-11-27, docs/performance.md 2.8): correct (test_cuda_lora,
 * the engine tests and verify pass with it), but not faster than the cuBLAS
 * path it replaces: 19-33 us a launch at C = 768 (1.0-1.6 TB/s, about
 * 1 us per 64-wide chunk whatever the bytes), where cuBLAS's batched w/a
 * products take 7 us each and its backward products 10 us; a step is 0.9 ms
 * slower at 12 x 768. So the engine keeps it off by default
 * (STATETUNE_LORA_FUSED). Only the v LoRA's forward (D = 32: 19.5 vs 28.5
 * us) wins alone.
 *
 * Supported: C a multiple of 64, D in LORA_FUSED_WIDTHS (every width
 * RWKV-7's formula gives up to C = 4096 and the fixtures' 16..64), bf16
 * operands, 16-byte aligned x, W1, W2, out and dx (hid 4-byte aligned).
 * lora_fused_supported() says whether a shape is; the engine keeps the
 * cuBLAS path for anything else (tiny's D = 8, fp32 engines).
 */
#ifndef ST_KERNELS_CUDA_LORA_CUH
#define ST_KERNELS_CUDA_LORA_CUH

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/st_cuda.h"
#include "kernels/cuda/timemix.cuh" /* defines: ACT_TANH, ACT_SIGMOID, lora_act_f, lora_act_d */

#include <cuda_bf16.h>
#include <stdint.h>

namespace st {

const int LF_BK = 64; /* stage 1: k (C) chunk */
const int LF_BN = 64; /* stage 2: n (C) chunk */
const int LF_PAD = 8; /* bf16 per shared-memory row past its width: ldmatrix rows fall on distinct banks */
const int LF_XLD = LF_BK + LF_PAD;
const int LF_BM = 64;         /* rows per CTA */
const int LF_THREADS = 256;   /* 8 warps: 4 along rows x 2 along columns */
const int LF_SLD = LF_BN + 4; /* fp32 staging row of out's tile (COAL) */

/* The widths the kernel is instantiated for (lora_fused_supported) */
const int LORA_FUSED_WIDTHS[] = {16, 32, 64, 96, 128, 160, 192, 256};

/* The ring's depth (4 up to D = 128, 3 above, where a slot is larger), and
 * whether out's tile goes through shared memory (COAL: each warp store then
 * writes whole 128-byte lines, 16 bytes a lane, instead of 4 bytes a lane in
 * eight rows): for bf16 outputs (out, dx), not for the decay LoRA's fp32 wl,
 * where 8-byte stores fill whole sectors already and the staging measured
 * slower (docs/performance.md 2.8 compares these and three other variants:
 * 32-row CTAs, deeper rings, no start offsets). */
template <int D, bool OUTF32> struct lf_config_t {
    static const int STAGES = D <= 128 ? 4 : 3;
    static const bool COAL = !OUTF32;
};

/* Shared memory of one instantiation, in bf16 elements: STAGES ring slots
 * (at most about 172 KB in all, D = 256), each the larger of a stage 1
 * chunk (x's tile + W1's / W2^T's tile) and a stage 2 chunk (W2's / W1^T's
 * tile; in the backward also dx's tile, read when beta != 0), then the
 * hidden layer. */
template <int D, bool BWD, bool OUTF32> struct lf_smem_t {
    typedef lf_config_t<D, OUTF32> VT;
    static const int STAGES = VT::STAGES;
    static const int B1 = BWD ? D * LF_XLD : LF_BK * (D + LF_PAD);                  /* stage 1 weight tile */
    static const int B2 = BWD ? LF_BN * (D + LF_PAD) + LF_BM * LF_XLD : D * LF_XLD; /* stage 2 tile (+ dx) */
    static const int S1 = LF_BM * LF_XLD + B1;
    static const int SLOT = S1 > B2 ? S1 : B2;
    static const int HID = LF_BM * (D + LF_PAD);
    static const size_t BYTES = (size_t)(STAGES * SLOT + HID) * 2 + (VT::COAL ? (size_t)LF_BM * LF_SLD * 4 : 0);
};

__device__ __forceinline__ uint32_t lf_sptr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16 bytes global -> shared, zero-filled when !ok (rows past R) */
__device__ __forceinline__ void lf_cp16(void *dst, const void *src, bool ok)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(lf_sptr(dst)), "l"(src), "r"(ok ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void lf_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void lf_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void lf_ldsm4(uint32_t *r, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(lf_sptr(p))
                 : "memory");
}
__device__ __forceinline__ void lf_ldsm4t(uint32_t *r, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(lf_sptr(p))
                 : "memory");
}
__device__ __forceinline__ void lf_ldsm2(uint32_t *r, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(lf_sptr(p))
                 : "memory");
}
__device__ __forceinline__ void lf_ldsm2t(uint32_t *r, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(lf_sptr(p))
                 : "memory");
}

/* c (16 x 8, fp32) += a (16 x 16, row) b (16 x 8, col) */
__device__ __forceinline__ void lf_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* The A fragment (16 x 16) at rows m0.., columns k0.. of a row-major tile */
__device__ __forceinline__ void lf_lda(uint32_t *a, const __nv_bfloat16 *s, int ld, int m0, int k0, int lane)
{
    lf_ldsm4(a, s + (m0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8);
}

/* B fragments of two n8 tiles (k0..k0+15, n0..n0+15): b[0], b[1] for n0,
 * b[2], b[3] for n0 + 8. TRANS: the tile is stored [k][n] (ldmatrix.trans
 * hands each lane its k pair); else [n][k]. */
template <bool TRANS>
__device__ __forceinline__ void lf_ldb2(uint32_t *b, const __nv_bfloat16 *s, int ld, int k0, int n0, int lane)
{
    if (TRANS) lf_ldsm4t(b, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
    else lf_ldsm4(b, s + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
}
/* ... and of one n8 tile (lanes 16..31 repeat 0..15's addresses, unused) */
template <bool TRANS>
__device__ __forceinline__ void lf_ldb1(uint32_t *b, const __nv_bfloat16 *s, int ld, int k0, int n0, int lane)
{
    if (TRANS) lf_ldsm2t(b, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0);
    else lf_ldsm2(b, s + (n0 + (lane & 7)) * ld + k0 + ((lane >> 3) & 1) * 8);
}

__device__ __forceinline__ float lf_round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

/* Copies a rows x (8 cols) block of 16-byte pieces: global row r at
 * g + r gld, shared row r at s + r sld. */
template <int ROWS, int PIECES, int THREADS>
__device__ __forceinline__ void lf_copy(__nv_bfloat16 *s, int sld, const __nv_bfloat16 *g, size_t gld, int tid)
{
    for (int i = tid; i < ROWS * PIECES; i += THREADS) {
        const int r = i / PIECES, p = i % PIECES;
        lf_cp16(s + r * sld + p * 8, g + (size_t)r * gld + p * 8, true);
    }
}

/* Rows row0 .. row0 + ROWS - 1 of a (R, C) tensor, columns c0 .. c0 + 63,
 * into a [ROWS][LF_XLD] tile; rows past R zero-filled. */
template <int ROWS, int THREADS>
__device__ __forceinline__ void lf_copy_rows(__nv_bfloat16 *s, const __nv_bfloat16 *g, int R, int C, int row0, int c0,
                                             int tid)
{
    for (int i = tid; i < ROWS * 8; i += THREADS) {
        const int r = i >> 3, p = i & 7, row = row0 + r;
        const bool ok = row < R;
        lf_cp16(s + r * LF_XLD + p * 8, g + (size_t)(ok ? row : 0) * C + c0 + p * 8, ok);
    }
}

/*
 * One CTA: rows row0 .. row0 + 63 (fewer at the end; rows past R are zero in
 * shared memory and never stored). Forward (BWD false): a = x, B1 = W1
 * [C][D] ([k][n]), B2 = W2 [D][C] ([k][n]); out fp32 when OUTF32, else bf16;
 * hid_out (may be NULL) gets the activation. Backward: a = dout, B1 = W2
 * [D][C] (W2^T's [n][k]), B2 = W1 [C][D] (W1^T's [n][k]); hid_in is read
 * when act != 0; out is dx (bf16), read when beta != 0.
 */
template <int D, bool BWD, bool OUTF32>
__global__ void __launch_bounds__(LF_THREADS) lora_fused_kernel(int R, int C, const __nv_bfloat16 *__restrict__ a,
                                                                const __nv_bfloat16 *__restrict__ b1,
                                                                const __nv_bfloat16 *__restrict__ b2, int act,
                                                                const __nv_bfloat16 *__restrict__ hid_in,
                                                                __nv_bfloat16 *__restrict__ hid_out, void *out,
                                                                float beta)
{
    typedef lf_smem_t<D, BWD, OUTF32> SM;
    typedef lf_config_t<D, OUTF32> VT;
    const int BM = LF_BM, THREADS = LF_THREADS, WM = BM / 16; /* warps along rows */
    const bool TR = !BWD; /* the forward's weight tiles are [k][n] */
    const int B1LD = BWD ? LF_XLD : D + LF_PAD, B2LD = BWD ? D + LF_PAD : LF_XLD, HLD = D + LF_PAD;
    const int NT1 = D / 16; /* n8 tiles of a warp in stage 1 (D / 2 columns) */
    extern __shared__ __align__(16) unsigned char lf_raw[];
    __nv_bfloat16 *ring = reinterpret_cast<__nv_bfloat16 *>(lf_raw);
    __nv_bfloat16 *hs = ring + SM::STAGES * SM::SLOT;
    float *stg = reinterpret_cast<float *>(hs + SM::HID); /* COAL: out's tile in fp32 */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp % WM, wn = warp / WM;
    const int g = lane >> 2, tg = lane & 3;
    const int row0 = blockIdx.x * BM;
    const int nK = C / LF_BK, nN = C / LF_BN, nT = nK + nN;
    /* each CTA starts its k and n chunks at an offset of its own: the CTAs
     * of a wave then read different pieces of W1 and W2 from L2 at a time
     * and write different columns of out, instead of all the same lines */
    const int rotk = (int)(blockIdx.x % nK), rotn = (int)(blockIdx.x % nN);
    const bool with_dx = BWD && beta != 0.f; /* dx's old values come through the ring with W1's tile */

    /* tile t of the ring: t < nK stage 1's k chunk (t + rotk) % nK, else
     * stage 2's n chunk (t - nK + rotn) % nN */
    auto issue = [&](int t) {
        __nv_bfloat16 *slot = ring + (t % SM::STAGES) * SM::SLOT;
        if (t < nK) {
            const int k0 = ((t + rotk) % nK) * LF_BK;
            lf_copy_rows<BM, THREADS>(slot, a, R, C, row0, k0, tid);
            __nv_bfloat16 *bs = slot + BM * LF_XLD;
            if (TR) lf_copy<LF_BK, D / 8, THREADS>(bs, B1LD, b1 + (size_t)k0 * D, D, tid); /* W1 rows k0.. */
            else lf_copy<D, LF_BK / 8, THREADS>(bs, B1LD, b1 + k0, C, tid);                /* W2 columns k0.. */
        } else {
            const int n0 = ((t - nK + rotn) % nN) * LF_BN;
            if (TR) lf_copy<D, LF_BN / 8, THREADS>(slot, B2LD, b2 + n0, C, tid);          /* W2 columns n0.. */
            else lf_copy<LF_BN, D / 8, THREADS>(slot, B2LD, b2 + (size_t)n0 * D, D, tid); /* W1 rows n0.. */
            if (with_dx)
                lf_copy_rows<BM, THREADS>(slot + LF_BN * (D + LF_PAD), (const __nv_bfloat16 *)out, R, C, row0, n0,
                                          tid);
        }
    };

    float acc1[NT1][4];
#pragma unroll
    for (int j = 0; j < NT1; j++) acc1[j][0] = acc1[j][1] = acc1[j][2] = acc1[j][3] = 0.f;

    for (int p = 0; p < SM::STAGES - 1; p++) {
        if (p < nT) issue(p);
        lf_commit();
    }
    for (int t = 0; t < nT; t++) {
        if (t + SM::STAGES - 1 < nT) issue(t + SM::STAGES - 1); /* the slot read in t - 1, freed by its barrier */
        lf_commit();
        lf_wait<SM::STAGES - 1>(); /* tile t has landed (this thread's copies) */
        __syncthreads();          /* ... everyone's */
        const __nv_bfloat16 *slot = ring + (t % SM::STAGES) * SM::SLOT;
        if (t < nK) {
            const __nv_bfloat16 *bs = slot + BM * LF_XLD;
#pragma unroll
            for (int ks = 0; ks < LF_BK / 16; ks++) {
                uint32_t af[4], bf[4];
                lf_lda(af, slot, LF_XLD, wm * 16, ks * 16, lane);
#pragma unroll
                for (int j = 0; j + 1 < NT1; j += 2) {
                    lf_ldb2<TR>(bf, bs, B1LD, ks * 16, wn * (D / 2) + j * 8, lane);
                    lf_mma(acc1[j], af, bf[0], bf[1]);
                    lf_mma(acc1[j + 1], af, bf[2], bf[3]);
                }
                if (NT1 & 1) {
                    lf_ldb1<TR>(bf, bs, B1LD, ks * 16, wn * (D / 2) + (NT1 - 1) * 8, lane);
                    lf_mma(acc1[NT1 - 1], af, bf[0], bf[1]);
                }
            }
            if (t == nK - 1) {
                /* the hidden layer: rounded as cuBLAS's bf16 output, then the
                 * activation (forward) or times its derivative (backward) */
#pragma unroll
                for (int j = 0; j < NT1; j++) {
                    const int col = wn * (D / 2) + j * 8 + tg * 2;
#pragma unroll
                    for (int hh = 0; hh < 2; hh++) {
                        const int m = wm * 16 + g + hh * 8, row = row0 + m;
                        float v0 = lf_round(acc1[j][2 * hh]), v1 = lf_round(acc1[j][2 * hh + 1]);
                        if (!BWD && act) {
                            v0 = lora_act_f(act, v0);
                            v1 = lora_act_f(act, v1);
                        } else if (BWD && act && row < R) {
                            const float2 h = __bfloat1622float2(
                                *reinterpret_cast<const __nv_bfloat162 *>(hid_in + (size_t)row * D + col));
                            v0 *= lora_act_d(act, h.x);
                            v1 *= lora_act_d(act, h.y);
                        }
                        const __nv_bfloat162 hv = __floats2bfloat162_rn(v0, v1);
                        *reinterpret_cast<__nv_bfloat162 *>(hs + m * HLD + col) = hv;
                        if (!BWD && hid_out && row < R)
                            *reinterpret_cast<__nv_bfloat162 *>(hid_out + (size_t)row * D + col) = hv;
                    }
                }
            }
        } else {
            const int n0 = ((t - nK + rotn) % nN) * LF_BN;
            const __nv_bfloat16 *dxs = slot + LF_BN * (D + LF_PAD); /* with_dx: dx's tile */
            float acc2[4][4];
#pragma unroll
            for (int j = 0; j < 4; j++) acc2[j][0] = acc2[j][1] = acc2[j][2] = acc2[j][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < D / 16; ks++) {
                uint32_t af[4], bf[4];
                lf_lda(af, hs, HLD, wm * 16, ks * 16, lane);
#pragma unroll
                for (int j = 0; j < 4; j += 2) {
                    lf_ldb2<TR>(bf, slot, B2LD, ks * 16, wn * 32 + j * 8, lane);
                    lf_mma(acc2[j], af, bf[0], bf[1]);
                    lf_mma(acc2[j + 1], af, bf[2], bf[3]);
                }
            }
            if (VT::COAL) {
                /* bf16 out or dx: the tile through shared memory, then each
                 * lane writes 8 consecutive elements (16 bytes) of a row */
#pragma unroll
                for (int j = 0; j < 4; j++)
#pragma unroll
                    for (int hh = 0; hh < 2; hh++)
                        *reinterpret_cast<float2 *>(stg + (wm * 16 + g + hh * 8) * LF_SLD + wn * 32 + j * 8 + tg * 2) =
                            make_float2(acc2[j][2 * hh], acc2[j][2 * hh + 1]);
                __syncthreads();
                for (int i = tid; i < BM * (LF_BN / 8); i += THREADS) {
                    const int m = i >> 3, c8 = (i & 7) * 8, row = row0 + m;
                    if (row >= R) continue;
                    float v[8];
                    const float4 lo = *reinterpret_cast<const float4 *>(stg + m * LF_SLD + c8);
                    const float4 hi = *reinterpret_cast<const float4 *>(stg + m * LF_SLD + c8 + 4);
                    v[0] = lo.x; v[1] = lo.y; v[2] = lo.z; v[3] = lo.w;
                    v[4] = hi.x; v[5] = hi.y; v[6] = hi.z; v[7] = hi.w;
                    if (with_dx) {
                        float old[8];
                        load8(dxs + m * LF_XLD + c8, old);
#pragma unroll
                        for (int q = 0; q < 8; q++) v[q] = beta * old[q] + v[q];
                    }
                    store8((__nv_bfloat16 *)out + (size_t)row * C + n0 + c8, v);
                }
            } else {
                /* fp32 out (the decay LoRA's wl): a lane's pair straight
                 * from the accumulators, 8 bytes, whole 32-byte sectors */
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int col = n0 + wn * 32 + j * 8 + tg * 2;
#pragma unroll
                    for (int hh = 0; hh < 2; hh++) {
                        const int row = row0 + wm * 16 + g + hh * 8;
                        if (row < R)
                            *reinterpret_cast<float2 *>((float *)out + (size_t)row * C + col) =
                                make_float2(acc2[j][2 * hh], acc2[j][2 * hh + 1]);
                    }
                }
            }
        }
        __syncthreads(); /* slot t is refilled at t + 1 (and COAL's staging rewritten) */
    }
}

/* ---- launchers ---- */

/* Whether the fused kernels take a LoRA of input width C and width D */
inline bool lora_fused_supported(int C, int D)
{
    if (C < 64 || C % 64) return false;
    for (size_t i = 0; i < sizeof LORA_FUSED_WIDTHS / sizeof LORA_FUSED_WIDTHS[0]; i++)
        if (LORA_FUSED_WIDTHS[i] == D) return true;
    return false;
}

inline bool lf_aligned(const void *p, uintptr_t al) { return ((uintptr_t)p % al) == 0; }

template <int D, bool BWD, bool OUTF32>
int lf_launch(int R, int C, const __nv_bfloat16 *a, const __nv_bfloat16 *b1, const __nv_bfloat16 *b2, int act,
              const __nv_bfloat16 *hid_in, __nv_bfloat16 *hid_out, void *out, float beta, cudaStream_t stream,
              char *err)
{
    const size_t smem = lf_smem_t<D, BWD, OUTF32>::BYTES;
    ST_CUDA_CHECK(cudaFuncSetAttribute(lora_fused_kernel<D, BWD, OUTF32>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)smem));
    lora_fused_kernel<D, BWD, OUTF32><<<(R + LF_BM - 1) / LF_BM, LF_THREADS, smem, stream>>>(
        R, C, a, b1, b2, act, hid_in, hid_out, out, beta);
    ST_CUDA_CHECK_LAUNCH("lora_fused_kernel");
    return ST_OK;
}

template <bool BWD, bool OUTF32>
int lf_dispatch(int R, int C, int D, const __nv_bfloat16 *a, const __nv_bfloat16 *b1, const __nv_bfloat16 *b2,
                int act, const __nv_bfloat16 *hid_in, __nv_bfloat16 *hid_out, void *out, float beta,
                cudaStream_t stream, char *err)
{
#define LF_CASE(d) \
    case d: return lf_launch<d, BWD, OUTF32>(R, C, a, b1, b2, act, hid_in, hid_out, out, beta, stream, err)
    switch (D) {
        LF_CASE(16);
        LF_CASE(32);
        LF_CASE(64);
        LF_CASE(96);
        LF_CASE(128);
        LF_CASE(160);
        LF_CASE(192);
        LF_CASE(256);
    }
#undef LF_CASE
    return st_fail(err, ST_EINVAL, "the fused LoRA kernel has no instance for width %d", D);
}

/* out (R, C) = act(x W1) W2; hid (R, D) gets act(x W1) unless NULL. out is
 * fp32 when out_f32, else bf16. ST_EINVAL (nothing launched) for a shape
 * lora_fused_supported refuses or misaligned pointers. */
inline int lora_forward_fused(int R, int C, int D, const __nv_bfloat16 *x, const __nv_bfloat16 *w1,
                              const __nv_bfloat16 *w2, int act, __nv_bfloat16 *hid, void *out, bool out_f32,
                              cudaStream_t stream, char *err)
{
    if (R < 0 || !lora_fused_supported(C, D))
        return st_fail(err, ST_EINVAL, "the fused LoRA kernel does not take R %d, C %d, D %d", R, C, D);
    if (act != 0 && act != ACT_TANH && act != ACT_SIGMOID)
        return st_fail(err, ST_EINVAL, "the fused LoRA kernel has no activation %d", act);
    if (!lf_aligned(x, 16) || !lf_aligned(w1, 16) || !lf_aligned(w2, 16) || !lf_aligned(hid, 4) ||
        !lf_aligned(out, 16))
        return st_fail(err, ST_EINVAL, "the fused LoRA kernel needs 16-byte aligned x, W1, W2 and out");
    if (R == 0) return ST_OK;
    return out_f32 ? lf_dispatch<false, true>(R, C, D, x, w1, w2, act, NULL, hid, out, 0.f, stream, err)
                   : lf_dispatch<false, false>(R, C, D, x, w1, w2, act, NULL, hid, out, 0.f, stream, err);
}

/* dx (R, C) = beta dx + ((dout W2^T) * act'(hid)) W1^T, all bf16; hid is
 * the forward's activation (read only when act != 0). */
inline int lora_backward_fused(int R, int C, int D, const __nv_bfloat16 *w1, const __nv_bfloat16 *w2, int act,
                               const __nv_bfloat16 *hid, const __nv_bfloat16 *dout, __nv_bfloat16 *dx, float beta,
                               cudaStream_t stream, char *err)
{
    if (R < 0 || !lora_fused_supported(C, D))
        return st_fail(err, ST_EINVAL, "the fused LoRA kernel does not take R %d, C %d, D %d", R, C, D);
    if (act != 0 && act != ACT_TANH && act != ACT_SIGMOID)
        return st_fail(err, ST_EINVAL, "the fused LoRA kernel has no activation %d", act);
    if (act && !hid) return st_fail(err, ST_EINVAL, "the fused LoRA backward needs the forward's activation");
    if (!lf_aligned(dout, 16) || !lf_aligned(w1, 16) || !lf_aligned(w2, 16) || !lf_aligned(hid, 4) ||
        !lf_aligned(dx, 16))
        return st_fail(err, ST_EINVAL, "the fused LoRA kernel needs 16-byte aligned dout, W1, W2 and dx");
    if (R == 0) return ST_OK;
    return lf_dispatch<true, false>(R, C, D, dout, w2, w1, act, hid, NULL, dx, beta, stream, err);
}

} // namespace st

#endif
