/*
 * wkv7_chunk.cu - the WKV7 forward and backward as chunked products on tensor
 * cores (shared/notes/wkv7-kernels.md sections 3.1-3.3); wkv7.cuh has the
 * math, shapes and conventions, wkv7.cu the launchers that route here
 * (WKV7_FWD_TC*, WKV7_BWD_CHUNKED*, WKV7_BWD_CPROD*).
 *
 * Notation (per batch row and head): S is N x N, row = value i, column = key
 * j. A chunk is L = 16 tokens from start state S; p_t = w_0 ... w_t inside the
 * chunk (per key, inclusive), pL = p_15; rescaled rows
 *   q~_t = r_t p_t, a~_t = a_t p_{t-1}, k^_t = k_t / p_t, b^_t = b_t / p_t,
 *   K'_t = k_t pL / p_t, B'_t = b_t pL / p_t (suffix products of w),
 * Gram matrices AB[t][s] = a~_t.b^_s, AK = a~.k^ (s < t), QB, QK (s <= t),
 * T = (I - AB)^-1. Forward, tokens x values:
 *   U = T (A~ S^T + AK V)        (u_t = sa_t = S_{t-1} a_t)
 *   Y = Q~ S^T + QK V + QB U
 *   S <- S diag(pL) + V^T K' + U^T B'
 * Backward, D = dL/d(state at the chunk end) from later chunks:
 *   Z^T = (D B'^T + dY^T QB) T    (z_t = dsa_t = e_t . b_t)
 *   D  <- D diag(pL) + dY^T Q~ + Z^T A~
 * (the adjoint of the forward over the chunk; after chunk 0, D is dS0). The
 * derivation is the forward's with time reversed: each value row of dS
 * evolves alone, d_{t-1} = d_t diag(w_t) + (d_t.b_t) a_t + dy_{t-1} r_{t-1}.
 *
 * Layout: one CTA of 4 warps per (b, h); warp w owns value rows 16w..16w+15
 * of the state (or of D) as mma accumulators, 32 fp32 registers per thread,
 * and never exchanges them: every product with S is local to the warp. The
 * key-side tiles and the four Gram matrices are shared through shared memory,
 * 4 barriers per chunk. mma.sync m16n8k8 tf32 -> fp32; the k index inside
 * each 8-wide step is permuted (physical k = t4 -> logical 2 t4, t4 + 4 ->
 * 2 t4 + 1), which makes an accumulator fragment (row g, columns 2 t4, 2 t4 + 1)
 * directly usable as an A fragment: no shuffles between products.
 *
 * Precision: the fp32 tolerances of test_cuda_wkv (1e-5 on s_final and dS0)
 * rule out bf16 or plain tf32 operands (notes 3.5: 2e-3 and 2e-4). So each
 * operand is split into a tf32 pair hi + lo and every product is
 * hi*lo + lo*hi + hi*hi (3xTF32, about fp32 accuracy); SPLIT = 1 keeps only
 * hi*hi (the one-product tf32 class: TCWS1, CPROD1WSSA); SPLIT = 16 is the
 * forward's bf16-operand state warps (TCWSB). State, p, T,
 * accumulators: fp32. w >= 0.545 keeps 1/p_t <= 1.6e4 (fine in fp32).
 *
 * The backward's second pass is the column half of the recurrent kernel's
 * exact per-token step-back (wkv7.cu), run for every segment of `seg` chunks
 * in parallel instead of one head at a time: the first pass stores D at
 * every segment's end and writes dv and dsa. The serial chain per head drops
 * from T tokens to 16 seg tokens, but pass 2 still does about 8 N^2 fp32
 * FMAs per token on CUDA cores: it is what keeps (8, 4096, 64) at the
 * recurrent kernel's speed (docs/performance.md 1.2).
 *
 * All gradients from chunk products (no step-back; WKV7_BWD_CPROD*, built
 * 2026-11-27 as wkv7_bwd_cprod_kernel and its 75 KB form
 * wkv7_bwd_cprod_small_kernel, after pass 1 with one chunk per segment).
 * Per chunk, with S its start state (checkpoint c - 1, or s0) and D, Z, U,
 * X as above (tokens x values unless noted), masks strict for AB, AK and
 * inclusive for QB, QK:
 *   dV = AK^T Z + QK^T dY + K' D^T          (pass 1 computes this already)
 *   dAB = mask(Z U^T), dAK = mask(Z V^T), dQB = mask(dY U^T), dQK = mask(dY V^T)
 *   dA~ = Z S + dAB B^ + dAK K^,  dQ~ = dY S + dQB B^ + dQK K^   (tokens x keys)
 *   dB^ = dAB^T A~ + dQB^T Q~,    dK^ = dAK^T A~ + dQK^T Q~
 *   dK' = V D, dB' = U D, dpL = colsum(S .* D)
 *   dr = dQ~ p_t, da = dA~ p_{t-1}, dk = (dK^ + dK' pL) / p_t, db = (dB^ + dB' pL) / p_t
 *   dP_t = dQ~ q~ - dK^ k^ - dB^ b^ - dK' K' - dB' B' + dA~_{t+1} a~_{t+1},
 *   dP_15 += sum_t (dK' K' + dB' B') + dpL pL,  dw_u = (sum_{t >= u} dP_t) / w_u
 * (per key, elementwise). Checked in float64 against autograd of the
 * per-token recurrence (N = 8, T = 37: agreement to 2e-14; again with this
 * file's index conventions, 6e-16, before the kernels were written). U is
 * the forward's sa and Z pass 1's dsa, so pass 2 needs no Gram matrix of its
 * own and no triangular solve; every chunk of every head runs at once.
 * Precision classes (docs/performance.md 1.3): 3xTF32 products (CPROD,
 * about fp32 and, without the step-back, 1e-6 on dr, dw, da where the
 * step-back reached 9e-4), one tf32 product (CPROD1WSSA, about 3e-4; the
 * bf16 launchers' AUTO with the TCWS1 forward).
 *
 * A checkpoint every two chunks (ckpt_every = WKV7_CUDA_CKPT_PAIR, 2026-11-27,
 * docs/performance.md 1.8): the warp-specialized forward stores the state
 * after every odd chunk and the last, pass 1 stores D at the same places
 * (its segments of 2 chunks), and pass 2, still one CTA per chunk, rebuilds
 * what its chunk lacks from the neighbour's tiles: an odd chunk advances
 * the pair's start state over chunk c - 1,
 *   S_mid = S diag(pL) + V^T K' + U^T B'       (the forward's update),
 * an even chunk with a successor steps the pair's end gradient back over
 * chunk c + 1,
 *   D_mid = D diag(pL) + dY^T Q~ + Z^T A~      (pass 1's update),
 * with the same tiles (K', B', Q~, A~, pL by the same products in the same
 * order) and one tf32 product: measured the same bits as the stored
 * matrices (dev_wkv7_bench --hash: every output but the atomics' dS0
 * identical to the per-chunk form's, T up to 4096, both precisions). Per
 * chunk of 16 tokens that drops the forward's and pass 1's stores of every
 * other 16 KB matrix and pass 2's separate reads of them (the two CTAs of
 * a pair read the same S and D, the second from L2); the neighbour's tiles
 * (about 14 KB) mostly come from L2 too, read by the neighbour's own CTA
 * at about the same time. Measured on an H100 (docs/performance.md 1.8,
 * ncu at (8, 4096, 64)): the forward 1.97 -> 1.88 ms and pass 2's DRAM
 * reads 7.5 -> 5.4 GB, but pass 2 is bound by its instruction issue as
 * much as by DRAM (0.49 warp instructions per scheduler and cycle at 37.5%
 * occupancy, 81% of DRAM bandwidth), and the recomputation adds about 21%
 * to its instructions: 3.36 -> 3.82 ms, so the pair is 5% slower in all
 * (7.86 against 7.49 ms) and no default uses it; it halves the checkpoint
 * memory at that price.
 *
 * The warp-specialized forward and pass 1 at 512 heads (docs/performance.md
 * 1.10, ncu on an H100): the state warps waited at the stage barrier for
 * half their time, so the producers' per-key prep was the chain; its
 * reciprocals were 16 branch regions in a row (one per __frcp_rn) and its
 * loads selects. Now the reciprocals run unconditionally (rcp_prefix16),
 * full chunks take a prep without selects, and in the one-product class
 * (SPLIT 1) every tile is rounded to tf32 once, where it is written, instead
 * of 3-instruction conversions in each of the four state warps that read it
 * (pre_tf32, frag_ap, frag_bp). The same bits (dev_wkv7_bench --hash).
 *
 * Removed on 2026-11-27 (docs/performance.md 1.2-1.4 has their
 * measurements; git history has the code): TC1 (TC with one tf32
 * product), CHUNKED_REC (pass 2 as the whole recurrent per-token backward
 * per segment, wkv7_bwd_seg_kernel, after a pass 1 without dv and dsa), the
 * value-row splits of the warp-specialized forward and pass 1 (template NC:
 * each head's rows over 2 or 4 CTAs; no faster at any grid, since a split
 * does not shorten a head's serial chain per chunk), and the chunk-product
 * forms that CPROD1WSSA beats: CPROD1 and CPRODB (plain pass 1 and the 103
 * KB pass 2 with one tf32 product or bf16 operands), CPROD1WS, CPROD1S and
 * CPROD1WSS (pass 2's loads through registers).
 */
#include "kernels/cuda/wkv7_chunk.cuh"
#include "kernels/cuda/wkv7.cuh"
#include "kernels/cuda/st_cuda.h"

#include <cuda.h> /* CUtensorMap (header only: the encoder comes from the runtime's driver entry point) */
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

namespace {

constexpr int N = WKV7_CUDA_N;
constexpr int L = WKV7_CUDA_CHUNK; /* tokens per chunk = per checkpoint */
constexpr int NTH = 128;           /* 4 warps, 16 value rows each */
/* Row strides (floats) of the shared tiles, chosen so that each fragment
 * load is free of bank conflicts: float2 loads at row (8 nt + g), column
 * 8 ks + 2 t4 need stride = 8 (mod 32); scalar loads at row 2 t4, column g
 * need stride = 4 (mod 32). */
constexpr int LDK = N + 8;  /* [token][key] tiles */
constexpr int LDT = L + 8;  /* [key][token] tiles */
constexpr int LDV = N + 4;  /* [token][value] tiles */
constexpr int LDG = L + 8;  /* 16 x 16 matrices */

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename F> __device__ __forceinline__ F from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

/* ---- 3xTF32 fragments ---------------------------------------------------- */

struct FragA { uint32_t h[4], l[4]; };
struct FragB { uint32_t h[2], l[2]; };

template <int SPLIT>
__device__ __forceinline__ void split_tf32(float x, uint32_t &hi, uint32_t &lo)
{
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(hi) : "f"(x));
    if (SPLIT == 3) {
        const float rest = x - __uint_as_float(hi);
        asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(lo) : "f"(rest));
    } else {
        lo = 0;
    }
}

/* a0 = (row g, k 2t4), a1 = (g + 8, 2t4), a2 = (g, 2t4 + 1), a3 = (g + 8, 2t4 + 1) */
template <int SPLIT>
__device__ __forceinline__ FragA frag_a(float a0, float a1, float a2, float a3)
{
    FragA f;
    split_tf32<SPLIT>(a0, f.h[0], f.l[0]);
    split_tf32<SPLIT>(a1, f.h[1], f.l[1]);
    split_tf32<SPLIT>(a2, f.h[2], f.l[2]);
    split_tf32<SPLIT>(a3, f.h[3], f.l[3]);
    return f;
}
/* An accumulator (c0 = (g, 2t4), c1 = (g, 2t4 + 1), c2 = (g + 8, 2t4),
 * c3 = (g + 8, 2t4 + 1)) as an A operand under the permuted k. */
template <int SPLIT>
__device__ __forceinline__ FragA frag_a_acc(const float c[4])
{
    return frag_a<SPLIT>(c[0], c[2], c[1], c[3]);
}
/* b0 = (k 2t4, col g), b1 = (k 2t4 + 1, col g): one float2 from a tile
 * stored [n][k]. */
template <int SPLIT>
__device__ __forceinline__ FragB frag_b(const float *p)
{
    const float2 x = *reinterpret_cast<const float2 *>(p);
    FragB f;
    split_tf32<SPLIT>(x.x, f.h[0], f.l[0]);
    split_tf32<SPLIT>(x.y, f.h[1], f.l[1]);
    return f;
}

/* Operands rounded to tf32 once, by the thread that writes them to shared
 * memory (PRE: the one-product class, SPLIT 1, in the warp-specialized
 * forward and pass 1). cvt.rna of a tf32 value is that value, so a reader
 * takes the bits as they are and every product is unchanged; each
 * conversion is 3 instructions on sm_90, and the four state warps used to
 * convert every tile element they read (4 times each). */
__device__ __forceinline__ float round_tf32(float x)
{
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return __uint_as_float(r);
}
template <bool PRE> __device__ __forceinline__ float pre_tf32(float x) { return PRE ? round_tf32(x) : x; }
template <int SPLIT, bool PRE>
__device__ __forceinline__ FragA frag_ap(float a0, float a1, float a2, float a3)
{
    if constexpr (PRE) {
        static_assert(SPLIT == 1, "pre-rounded operands are the one-product class");
        FragA f;
        f.h[0] = __float_as_uint(a0); f.h[1] = __float_as_uint(a1);
        f.h[2] = __float_as_uint(a2); f.h[3] = __float_as_uint(a3);
        f.l[0] = f.l[1] = f.l[2] = f.l[3] = 0;
        return f;
    } else {
        return frag_a<SPLIT>(a0, a1, a2, a3);
    }
}
template <int SPLIT, bool PRE>
__device__ __forceinline__ FragB frag_bp(const float *p)
{
    if constexpr (PRE) {
        static_assert(SPLIT == 1, "pre-rounded operands are the one-product class");
        const float2 x = *reinterpret_cast<const float2 *>(p);
        FragB f;
        f.h[0] = __float_as_uint(x.x); f.h[1] = __float_as_uint(x.y);
        f.l[0] = f.l[1] = 0;
        return f;
    } else {
        return frag_b<SPLIT>(p);
    }
}

__device__ __forceinline__ void mma1(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* c += A B: the small cross terms first */
template <int SPLIT>
__device__ __forceinline__ void mma(float c[4], const FragA &a, const FragB &b)
{
    if (SPLIT == 3) {
        mma1(c, a.l, b.h);
        mma1(c, a.h, b.l);
    }
    mma1(c, a.h, b.h);
}

/* c += A B with the hi*hi product in c and the two cross terms in cc: two
 * dependency chains instead of one three times as long (sum c + cc at the
 * end). */
template <int SPLIT>
__device__ __forceinline__ void mma2(float c[4], float cc[4], const FragA &a, const FragB &b)
{
    if (SPLIT == 3) {
        mma1(cc, a.l, b.h);
        mma1(cc, a.h, b.l);
    }
    mma1(c, a.h, b.h);
}

/* ---- bf16 operands (m16n8k16 bf16 -> fp32): one mma per 16 k instead of
 * 3xTF32's three per 8 k. Fragments: a0 = (row g, k 2t4 and 2t4 + 1), a1 =
 * (g + 8, same k), a2 = (g, k 2t4 + 8, + 9), a3 = (g + 8, those); b0 = (k 2t4,
 * 2t4 + 1; col g), b1 = (k 2t4 + 8, + 9; col g); the lower k in the low half.
 * Two accumulator tiles side by side (keys 8 nt .. 8 nt + 15) are exactly one
 * A fragment (the flash-attention register reuse), so no permutation is
 * needed. Only operands are rounded: accumulators, state, p and T stay fp32
 * (notes 3.5's "bf16 operands" class). */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
struct FragA16 { uint32_t x[4]; };
struct FragB16 { uint32_t x[2]; };
/* accumulator tiles c0 (keys 16 ks ..) and c1 (16 ks + 8 ..) as an A operand */
__device__ __forceinline__ FragA16 frag_a16_acc(const float c0[4], const float c1[4])
{
    FragA16 f;
    f.x[0] = pack_bf16(c0[0], c0[1]);
    f.x[1] = pack_bf16(c0[2], c0[3]);
    f.x[2] = pack_bf16(c1[0], c1[1]);
    f.x[3] = pack_bf16(c1[2], c1[3]);
    return f;
}
/* B from a tile stored [n][k]: p points at (n = row of this lane's g, k0) */
__device__ __forceinline__ FragB16 frag_b16(const float *p, int t4)
{
    const float2 x = *reinterpret_cast<const float2 *>(p + 2 * t4);
    const float2 z = *reinterpret_cast<const float2 *>(p + 2 * t4 + 8);
    FragB16 f;
    f.x[0] = pack_bf16(x.x, x.y);
    f.x[1] = pack_bf16(z.x, z.y);
    return f;
}
__device__ __forceinline__ void mma16(float c[4], const FragA16 &a, const FragB16 &b)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
}

/* Generic warp product for the chunk-product backward: c (16 x 8, the
 * accumulator layout) += A (16 x K) B (K x 8), operands read element by
 * element through strides, A(m, k) = A[m am + k ak], B(k, n) = B[k bk + n bn]
 * (no fragment reuse: every product there is shared memory to registers).
 * OP 3: 3xTF32 m16n8k8; 1: one tf32 product. K is a multiple of 8. */
template <int OP>
__device__ __forceinline__ void smm(float c[4], const float *A, int am, int ak, const float *B, int bk, int bn,
                                    int K, int g, int t4)
{
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 8) {
        const int ka = k0 + t4;
        const FragA fa = frag_a<OP>(A[g * am + ka * ak], A[(g + 8) * am + ka * ak], A[g * am + (ka + 4) * ak],
                                    A[(g + 8) * am + (ka + 4) * ak]);
        FragB fb;
        split_tf32<OP>(B[ka * bk + g * bn], fb.h[0], fb.l[0]);
        split_tf32<OP>(B[(ka + 4) * bk + g * bn], fb.h[1], fb.l[1]);
        mma<OP>(c, fa, fb);
    }
}

/* ---- staging: the next chunk's raw inputs land in shared memory by
 * cp.async while the current chunk computes (one global latency per kernel
 * instead of one or more per chunk). NF activation tiles of type F (rows of
 * N contiguous in (B, T, H, N)), then w (fp32). Rows past T are not copied;
 * readers select identity values for them. */
template <typename F, int NF>
struct Raw {
    F x[NF][L * N];
    float w[L * N];
};

__device__ __forceinline__ void cp_async16(void *dst, const void *src)
{
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_1() { asm volatile("cp.async.wait_group 1;\n" ::); }
__device__ __forceinline__ void cp_async_wait_0() { asm volatile("cp.async.wait_group 0;\n" ::); }

/* Named barriers between warp groups (id 0 is __syncthreads): sync waits
 * until `count` threads have arrived or synced; arrive does not wait. */
template <int ID>
__device__ __forceinline__ void bar_sync_id(int count)
{
    asm volatile("bar.sync %0, %1;\n" ::"n"(ID), "r"(count) : "memory");
}
template <int ID>
__device__ __forceinline__ void bar_arrive_id(int count)
{
    asm volatile("bar.arrive %0, %1;\n" ::"n"(ID), "r"(count) : "memory");
}
/* ids as immediates (a register id makes ptxas reserve all 16 barriers) */
__device__ __forceinline__ void bar_sync(int id, int count)
{
    switch (id) {
    case 1: bar_sync_id<1>(count); break;
    case 2: bar_sync_id<2>(count); break;
    case 3: bar_sync_id<3>(count); break;
    case 4: bar_sync_id<4>(count); break;
    case 5: bar_sync_id<5>(count); break;
    case 6: bar_sync_id<6>(count); break;
    case 7: bar_sync_id<7>(count); break;
    case 8: bar_sync_id<8>(count); break;
    case 9: bar_sync_id<9>(count); break;
    default: bar_sync_id<10>(count); break;
    }
}
__device__ __forceinline__ void bar_arrive(int id, int count)
{
    switch (id) {
    case 1: bar_arrive_id<1>(count); break;
    case 2: bar_arrive_id<2>(count); break;
    case 3: bar_arrive_id<3>(count); break;
    case 4: bar_arrive_id<4>(count); break;
    case 5: bar_arrive_id<5>(count); break;
    case 6: bar_arrive_id<6>(count); break;
    case 7: bar_arrive_id<7>(count); break;
    default: bar_arrive_id<8>(count); break;
    }
}
/* A hand-off: this thread's shared-memory accesses so far are performed
 * (fence.cta) before its arrival is signalled, so the waiting group may read
 * what it wrote, or overwrite what it read. */
__device__ __forceinline__ void bar_release(int id, int count)
{
    __threadfence_block();
    bar_arrive(id, count);
}

/* ---- staging by the tensor memory accelerator (Hopper) -------------------
 * The same raw stage filled by six 2-D bulk tensor copies (one 16 x 64 box
 * per input, rows t0.. of head h) that one thread issues, completing on an
 * mbarrier. Measured on an H100 (docs/performance.md 1.5): the per-thread
 * cp.async issue cost the forward's producers about 1,800 cycles a chunk and
 * slowed the state warps' shared-memory reads beside it; without loads the
 * forward ran 22-33% faster. Rows past T inside the box are read (the next
 * batch row's tokens, or zeros past the tensor) and never used: the readers
 * select identity values for u >= n as before. */
struct TmaMaps {
    CUtensorMap m[6]; /* r k v a b (type F), then w (fp32); rows B T, width H N */
};

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint64_t *bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
/* makes the initialised barriers visible to the async proxy (the TMA unit) */
__device__ __forceinline__ void mbar_fence_init()
{
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t *bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t *bar, uint32_t parity)
{
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(smem_u32(bar)), "r"(parity)
                     : "memory");
}
__device__ __forceinline__ void tma_load_2d(void *dst, const CUtensorMap *map, int x, int y, uint64_t *bar)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
                 "[%4];\n" ::"r"(smem_u32(dst)),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(smem_u32(bar))
                 : "memory");
}
/* One thread: chunk rows t0.. of head h, batch row bb, into st; bar counts
 * the bytes. Generic-proxy reads of st (the previous chunk's prep) were
 * ordered before this by a barrier; the proxy fence orders them before the
 * copy's writes. */
template <typename F>
__device__ __forceinline__ void stage_tma(Raw<F, 5> *st, const TmaMaps &maps, int h, int row0, uint64_t *bar)
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    mbar_expect_tx(bar, (uint32_t)sizeof(Raw<F, 5>));
#pragma unroll
    for (int i = 0; i < 5; i++) tma_load_2d(st->x[i], &maps.m[i], h * N, row0, bar);
    tma_load_2d(st->w, &maps.m[5], h * N, row0, bar);
}

template <typename F, int NF>
__device__ __forceinline__ void stage_issue(Raw<F, NF> *st, const F *const src[NF], const float *w, size_t base,
                                            size_t HN, int n, int tid)
{
    constexpr int CPR = N * (int)sizeof(F) / 16; /* 16-byte pieces per row */
    constexpr int EPC = 16 / (int)sizeof(F);     /* elements per piece */
#pragma unroll
    for (int arr = 0; arr < NF; arr++)
        for (int e = tid; e < L * CPR; e += NTH) {
            const int u = e / CPR, q = e % CPR;
            if (u < n) cp_async16(&st->x[arr][u * N + q * EPC], src[arr] + base + u * HN + q * EPC);
        }
#pragma unroll
    for (int e = tid; e < L * (N / 4); e += NTH) {
        const int u = e / (N / 4), q = e % (N / 4);
        if (u < n) cp_async16(&st->w[u * N + q * 4], w + base + u * HN + q * 4);
    }
}

/* One 16 x 16 Gram matrix G[t][s] = X_t . Y_s over the N keys (X, Y: [token]
 * [key] tiles), causal part only (s < t, or s <= t when inclusive; select,
 * never multiply), written to G[t * LDG + s], or transposed when `trans`. */
template <int SPLIT, bool PRE = false>
__device__ __forceinline__ void gram(const float *X, const float *Y, float *G, bool inclusive, bool trans, int g,
                                     int t4, bool round_out = false)
{
    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    float cor[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int ks = 0; ks < N / 8; ks++) {
        const float2 x0 = *reinterpret_cast<const float2 *>(X + g * LDK + 8 * ks + 2 * t4);
        const float2 x1 = *reinterpret_cast<const float2 *>(X + (g + 8) * LDK + 8 * ks + 2 * t4);
        const FragA A = frag_ap<SPLIT, PRE>(x0.x, x1.x, x0.y, x1.y);
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
            mma2<SPLIT>(acc[nt], cor[nt], A, frag_bp<SPLIT, PRE>(Y + (8 * nt + g) * LDK + 8 * ks + 2 * t4));
    }
#pragma unroll
    for (int nt = 0; nt < 2; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[nt][e] += cor[nt][e];
#pragma unroll
    for (int nt = 0; nt < 2; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int t = g + (e >= 2 ? 8 : 0), s = 8 * nt + 2 * t4 + (e & 1);
            const bool keep = inclusive ? s <= t : s < t;
            const float x = round_out ? round_tf32(acc[nt][e]) : acc[nt][e]; /* an operand only: rounded once */
            G[trans ? s * LDG + t : t * LDG + s] = keep ? x : 0.f;
        }
}

/* C += X M^T over 16 x 16: X (tokens x tokens) held as two accumulator tiles
 * and used as the A operand, M a 16 x 16 shared matrix stored [n][k] with
 * stride LDG (U^T = X^T T^T in the forwards, Z^T = R^T T in pass 1). */
template <int SPLIT, bool PRE = false>
__device__ __forceinline__ void mma_acc16(float C[2][4], const float X[2][4], const float *M, int g, int t4)
{
#pragma unroll
    for (int ks = 0; ks < 2; ks++) {
        const FragA Ax = frag_a_acc<SPLIT>(X[ks]);
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
            mma<SPLIT>(C[nt], Ax, frag_bp<SPLIT, PRE>(M + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
    }
}

/* T = (I - AB)^-1 by columns (AB strictly lower, so T is unit lower): lane
 * cc < 16 of one warp computes column cc and writes it to Tm[t][cc], or to
 * Tm[cc][t] when `trans`. */
__device__ __forceinline__ void invert_unit_lower(const float *AB, float *Tm, bool trans, int cc, bool round_out = false)
{
    float col[L];
#pragma unroll
    for (int t = 0; t < L; t++) {
        float acc = t == cc ? 1.f : 0.f;
#pragma unroll
        for (int s = 0; s < t; s++) acc = fmaf(AB[t * LDG + s], col[s], acc);
        col[t] = acc;
    }
#pragma unroll
    for (int t = 0; t < L; t++) Tm[trans ? cc * LDG + t : t * LDG + cc] = round_out ? round_tf32(col[t]) : col[t];
}

/* ---- the forwards' and pass 1's stores (the plain and the warp-specialized
 * kernels, every operand class): one copy of each index pattern ------------
 * Two (tokens, values) tiles of a chunk, held as transposed accumulators
 * (UT[nt][e]: token 8 nt + 2 t4 + (e & 1), value row i0 + g, + 8 for e >= 2),
 * to an fp32 array and an F one: the forwards' U and Y to sa and y, pass 1's
 * Z and dV to dsa and dv; tokens past n are not written. */
template <typename F>
__device__ __forceinline__ void store_sa_y(const float UT[2][4], const float YT[2][4], float *sa_out, F *y,
                                           size_t base, size_t HN, int n, int i0, int g, int t4)
{
#pragma unroll
    for (int nt = 0; nt < 2; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int tok = 8 * nt + 2 * t4 + (e & 1), i = i0 + g + (e >= 2 ? 8 : 0);
            if (tok < n) {
                sa_out[base + tok * HN + i] = UT[nt][e];
                y[base + tok * HN + i] = from_f<F>(YT[nt][e]);
            }
        }
}
/* State columns 8 nt .. 8 nt + 7 of this warp's rows (an accumulator tile)
 * to the checkpoint ckc, stored transposed ([j][i]) */
__device__ __forceinline__ void store_ckpt_cols(float *ckc, const float s[4], int nt, int i0, int g, int t4)
{
    const int j = 8 * nt + 2 * t4;
    ckc[j * N + i0 + g] = s[0];
    ckc[(j + 1) * N + i0 + g] = s[1];
    ckc[j * N + i0 + g + 8] = s[2];
    ckc[(j + 1) * N + i0 + g + 8] = s[3];
}
/* This warp's rows of the state to sf ([i][j], as s0) */
__device__ __forceinline__ void store_state(float *sf, const float S[N / 8][4], int i0, int g, int t4)
{
#pragma unroll
    for (int nt = 0; nt < N / 8; nt++) {
        *reinterpret_cast<float2 *>(sf + (i0 + g) * N + 8 * nt + 2 * t4) = make_float2(S[nt][0], S[nt][1]);
        *reinterpret_cast<float2 *>(sf + (i0 + g + 8) * N + 8 * nt + 2 * t4) = make_float2(S[nt][2], S[nt][3]);
    }
}

/* ---- forward ---------------------------------------------------------------
 * Per chunk: (prep) key thread j < 64 loads its column of r, w, k, a, b over
 * the chunk and writes the rescaled tiles, threads 64.. load v; (grams) warp
 * w computes one Gram matrix while every warp starts A~ S^T and Q~ S^T;
 * (solve) one warp inverts I - AB while the others add AK V and QK V; then
 * U, sa, Y, y, the state update and the checkpoint, each warp on its own rows.
 * Outputs as the recurrent kernel's (wkv7.cu): y, sa, the transposed
 * checkpoint after every chunk, s_final. */
template <typename F, int SPLIT>
__global__ void __launch_bounds__(NTH) wkv7_fwd_tc_kernel(
    int T, int H, int nck,
    const F *__restrict__ r, const float *__restrict__ w, const F *__restrict__ k,
    const F *__restrict__ v, const F *__restrict__ a, const F *__restrict__ b,
    const float *__restrict__ s0, F *__restrict__ y, float *__restrict__ s_final,
    float *__restrict__ ckpt, float *__restrict__ sa_out)
{
    __shared__ __align__(16) float tq[L * LDK], ta[L * LDK], tb[L * LDK], tk[L * LDK]; /* Q~ A~ B^ K^ */
    __shared__ __align__(16) float tKt[N * LDT], tBt[N * LDT];                         /* K'^T B'^T */
    __shared__ __align__(16) float tv[L * LDV];
    __shared__ __align__(16) float gAB[L * LDG], gAK[L * LDG], gQB[L * LDG], gQK[L * LDG], gT[L * LDG];
    __shared__ __align__(16) float pL[N];

    const int h = blockIdx.x, bb = blockIdx.y, tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int i0 = 16 * warp; /* this warp's value rows */
    const size_t HN = (size_t)H * N;

    /* the state slab: S[nt] = rows i0 + g (+8), keys 8 nt + 2 t4 (+1) */
    float S[N / 8][4];
    {
        const float *s0h = s0 + (size_t)h * N * N;
#pragma unroll
        for (int nt = 0; nt < N / 8; nt++) {
            const float2 lo = *reinterpret_cast<const float2 *>(s0h + (i0 + g) * N + 8 * nt + 2 * t4);
            const float2 hi = *reinterpret_cast<const float2 *>(s0h + (i0 + g + 8) * N + 8 * nt + 2 * t4);
            S[nt][0] = lo.x; S[nt][1] = lo.y; S[nt][2] = hi.x; S[nt][3] = hi.y;
        }
    }
    float *ck = ckpt + (size_t)(bb * H + h) * nck * N * N;
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    Raw<F, 5> *stg = reinterpret_cast<Raw<F, 5> *>(dyn_smem); /* two stages: r k v a b, w */
    const F *const srcs[5] = {r, k, v, a, b};
    stage_issue<F, 5>(&stg[0], srcs, w, (((size_t)bb * T) * H + h) * N, HN, min(L, T), tid);
    cp_async_commit();

    for (int c = 0; c < nck; c++) {
        const int t0 = c * L, n = min(L, T - t0);
        const size_t base = (((size_t)bb * T + t0) * H + h) * N;
        /* the next chunk's inputs into the other stage, whose last reader
         * (the prep of chunk c - 1) finished before that chunk's barriers */
        if (c + 1 < nck)
            stage_issue<F, 5>(&stg[(c + 1) & 1], srcs, w, base + (size_t)L * HN, HN, min(L, T - t0 - L), tid);
        cp_async_commit();
        cp_async_wait_1();
        __syncthreads(); /* chunk c's stage has landed; the previous chunk is done with every tile */
        const Raw<F, 5> *st = &stg[c & 1];
        if (tid < N) {
            const int j = tid;
            float kr[L], br[L], wr[L];
            float p = 1.f;
#pragma unroll
            for (int u = 0; u < L; u++) {
                const bool ok = u < n; /* select, never multiply: rows past T are garbage */
                const float rr = ok ? to_f(st->x[0][u * N + j]) : 0.f, ww = ok ? st->w[u * N + j] : 1.f;
                const float aa = ok ? to_f(st->x[3][u * N + j]) : 0.f;
                kr[u] = ok ? to_f(st->x[1][u * N + j]) : 0.f;
                br[u] = ok ? to_f(st->x[4][u * N + j]) : 0.f;
                wr[u] = ww;
                ta[u * LDK + j] = aa * p; /* p_{u-1} */
                p *= ww;
                const float ip = __frcp_rn(p);
                tq[u * LDK + j] = rr * p;
                tk[u * LDK + j] = kr[u] * ip;
                tb[u * LDK + j] = br[u] * ip;
            }
            pL[j] = p;
            float sfx = 1.f; /* pL / p_u as the product of the later decays */
#pragma unroll
            for (int u = L - 1; u >= 0; u--) {
                tKt[j * LDT + u] = kr[u] * sfx;
                tBt[j * LDT + u] = br[u] * sfx;
                sfx *= wr[u];
            }
        } else {
            const int i = tid - N;
#pragma unroll
            for (int u = 0; u < L; u++) tv[u * LDV + i] = u < n ? to_f(st->x[2][u * N + i]) : 0.f;
        }
        __syncthreads();
        gram<SPLIT>(warp < 2 ? ta : tq, (warp & 1) ? tk : tb,
                    warp == 0 ? gAB : warp == 1 ? gAK : warp == 2 ? gQB : gQK, warp >= 2, false, g, t4);
        /* X^T = S A~^T and Y^T = S Q~^T (values x tokens), K = the 64 keys */
        float XT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        float YT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        {
            float XC[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            float YC[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
            for (int ks = 0; ks < N / 8; ks++) {
                const FragA As = frag_a_acc<SPLIT>(S[ks]);
#pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    mma2<SPLIT>(XT[nt], XC[nt], As, frag_b<SPLIT>(ta + (8 * nt + g) * LDK + 8 * ks + 2 * t4));
                    mma2<SPLIT>(YT[nt], YC[nt], As, frag_b<SPLIT>(tq + (8 * nt + g) * LDK + 8 * ks + 2 * t4));
                }
            }
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) { XT[nt][e] += XC[nt][e]; YT[nt][e] += YC[nt][e]; }
        }
        __syncthreads(); /* Gram matrices complete */
        if (warp == 0 && lane < L) invert_unit_lower(gAB, gT, false, lane);
        __syncwarp(); /* mma.sync needs the whole warp converged */
        /* + V^T AK^T and V^T QK^T; A = V^T [value][token] from tv */
        FragA Av[2];
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            const float *v0 = tv + (8 * ks + 2 * t4) * LDV + i0 + g;
            Av[ks] = frag_a<SPLIT>(v0[0], v0[8], v0[LDV], v0[LDV + 8]);
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                mma<SPLIT>(XT[nt], Av[ks], frag_b<SPLIT>(gAK + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
                mma<SPLIT>(YT[nt], Av[ks], frag_b<SPLIT>(gQK + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
            }
        }
        __syncthreads(); /* T complete */
        /* U^T = X^T T^T: B[s][t] = T[t][s] */
        float UT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        mma_acc16<SPLIT>(UT, XT, gT, g, t4);
        FragA Au[2];
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            Au[ks] = frag_a_acc<SPLIT>(UT[ks]);
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
                mma<SPLIT>(YT[nt], Au[ks], frag_b<SPLIT>(gQB + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
        }
        store_sa_y<F>(UT, YT, sa_out, y, base, HN, n, i0, g, t4);
        /* S <- S diag(pL) + V^T K' + U^T B', then the checkpoint ([j][i]) */
        float *ckc = ck + (size_t)c * N * N;
#pragma unroll
        for (int nt = 0; nt < N / 8; nt++) {
            const float2 p2 = *reinterpret_cast<const float2 *>(pL + 8 * nt + 2 * t4);
            S[nt][0] *= p2.x; S[nt][1] *= p2.y; S[nt][2] *= p2.x; S[nt][3] *= p2.y;
#pragma unroll
            for (int ks = 0; ks < 2; ks++) {
                mma<SPLIT>(S[nt], Av[ks], frag_b<SPLIT>(tKt + (8 * nt + g) * LDT + 8 * ks + 2 * t4));
                mma<SPLIT>(S[nt], Au[ks], frag_b<SPLIT>(tBt + (8 * nt + g) * LDT + 8 * ks + 2 * t4));
            }
            store_ckpt_cols(ckc, S[nt], nt, i0, g, t4);
        }
    }
    if (s_final) store_state(s_final + (size_t)(bb * H + h) * N * N, S, i0, g, t4);
}

/* ---- forward, warp-specialized ---------------------------------------------
 * The same arithmetic as wkv7_fwd_tc_kernel, with the state-independent work
 * moved off the serial chain: 4 producer warps build chunk c + 1's tiles
 * (loads, p, the rescaled tiles, the four Gram matrices, T) while the 4
 * consumer warps, which hold the state, run chunk c's products. Two stages
 * of tiles; named barriers FULL[s] (ids 1, 2: producers arrive, consumers
 * wait) and EMPTY[s] (ids 3, 4: consumers arrive, producers wait); id 5 is
 * the producers' own barrier. (notes section 3.2) */
struct FwdStage {
    float tq[L * LDK], ta[L * LDK]; /* Q~ A~ [token][key] */
    float tKt[N * LDT], tBt[N * LDT]; /* K'^T B'^T [key][token] */
    float tv[L * LDV];
    float gAK[L * LDG], gQK[L * LDG], gQB[L * LDG], gT[L * LDG];
    float pL[N];
};
struct FwdScratch {
    float tb[L * LDK], tk[L * LDK], gAB[L * LDG];
};
/* NST stages, NPG producer groups (FwdWs below) */
template <typename F, int NST, int NPG>
struct FwdSmem {
    FwdStage st[NST];
    FwdScratch scr[NPG]; /* each producer group's own */
    Raw<F, 5> raw[NST]; /* chunk c's raw inputs in raw[c % NST], loaded NST chunks ahead */
    uint64_t mbar[NST]; /* raw[i] landed (TMA staging) */
};
/* The forward's shape: ONE (one CTA per SM) runs two producer groups of 4
 * warps over 4 stages, group g preparing chunks c = g mod 2; else one group
 * over 2 stages. fp32 inputs: one group (4 stages of their raw inputs are
 * past the 227 KB a CTA may have). */
/* The named barrier ids of a warp-specialized kernel's ring of NST stages
 * fed by NPG producer groups: stage st full, stage st free, a group's own.
 * The forward's FwdWs and pass 1 (one group, two stages) take them here. */
template <int NST, int NPG> struct WsBars {
    static constexpr int FULL0 = 1, FREE0 = 1 + NST, GRP0 = 1 + 2 * NST;
};
template <typename F, bool ONE> struct FwdWs {
    static constexpr int NPG = ONE && sizeof(F) == 2 ? 2 : 1, NST = 2 * NPG, THREADS = (1 + NPG) * NTH;
    using Bars = WsBars<NST, NPG>;
};

/* Key j's w over the chunk (1 past T: rows there are garbage), for both
 * halves of a prep. FULL (n == L, every chunk but a short last one): no
 * selects, so the loads go out unpredicated and back to back. */
template <typename F, bool FULL>
__device__ __forceinline__ void prep_w(const Raw<F, 5> &raw, int n, int j, float wr[L])
{
#pragma unroll
    for (int u = 0; u < L; u++) wr[u] = FULL || u < n ? raw.w[u * N + j] : 1.f;
}

/* ip[u] = __frcp_rn(p_u), p_u = w_0 ... w_u, bit for bit, without its
 * per-call branch. __frcp_rn is MUFU.RCP and one Newton step,
 *   r = rcp.approx(x), r += r (-(r x - 1)),
 * for x whose exponent is in range, else a slow call; compiled one by one,
 * each sat in its own branch region behind the previous product (measured:
 * the reciprocal side was the producers' longest chain, docs/performance.md
 * 1.10). Here the 16 fast paths run unconditionally and one test covers
 * them all (p_u lies in [0.545^16, 1] for valid w; anything else is redone
 * by __frcp_rn itself). r x - 1 is exact in the fma and never subnormal (0
 * or at least 2^-48 in size), so __frcp_rn's flush of it changes nothing. */
__device__ __forceinline__ void rcp_prefix16(const float wr[L], float ip[L])
{
    bool fast = true;
    float p = 1.f;
#pragma unroll
    for (int u = 0; u < L; u++) {
        p *= wr[u];
        fast &= ((__float_as_uint(p) + 0x1800000u) & 0x7f800000u) > 0x1ffffffu;
        float r;
        asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(p));
        ip[u] = fmaf(r, -fmaf(r, p, -1.f), r);
    }
    if (!fast) {
        p = 1.f;
#pragma unroll
        for (int u = 0; u < L; u++) {
            p *= wr[u];
            ip[u] = __frcp_rn(p);
        }
    }
}

/* The reciprocal side of a prep, the same in the forward and pass 1: key
 * j's k and b (raw inputs ik, ib) into kr, br (0 past T), and K^ = k / p_u,
 * B^ = b / p_u into tk, tb ([token][key]). */
template <typename F, bool PRE, bool FULL>
__device__ __forceinline__ void prep_recip(const Raw<F, 5> &raw, int ik, int ib, const float wr[L], int n, int j,
                                           float kr[L], float br[L], float *tk, float *tb)
{
    float ip[L];
    rcp_prefix16(wr, ip);
#pragma unroll
    for (int u = 0; u < L; u++) {
        const bool ok = FULL || u < n; /* select, never multiply: rows past T are garbage */
        kr[u] = ok ? to_f(raw.x[ik][u * N + j]) : 0.f;
        br[u] = ok ? to_f(raw.x[ib][u * N + j]) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < L; u++) {
        tk[u * LDK + j] = pre_tf32<PRE>(kr[u] * ip[u]);
        tb[u * LDK + j] = pre_tf32<PRE>(br[u] * ip[u]);
    }
}

/* The producers' element-wise prep of one chunk, spread over all 128
 * producer threads so that no thread walks a long dependent chain alone (the
 * chain per chunk is what bounds the forward at the engine's 96-256 heads):
 * key thread j < 64 builds the prefix side (A~ = a p_{u-1}, Q~ = r p_u) and
 * v's column j; thread 64 + j the reciprocal side (K^ = k / p_u, B^ = b /
 * p_u) and the suffix side (K'^T, B'^T, stored as float4 rows). Both compute
 * p_u by the same sequence of products, so the tiles are bit for bit those
 * of one thread doing everything. Every load is issued before any store:
 * the compiler cannot tell the raw stage and the tiles apart in shared
 * memory, so interleaving them serialised each step behind its stores.
 * PRE: every tile rounded to tf32 as it is stored (pre_tf32, the
 * one-product class). FULL: a chunk of L tokens, no selects (the caller
 * picks it when n == L). This prep is the forward's serial chain: ncu at
 * (8, 4096, 64) put the state warps at the stage barrier half their time,
 * waiting for it (docs/performance.md 1.10). */
template <typename F, bool PRE, bool FULL>
__device__ __forceinline__ void fwd_prep(const Raw<F, 5> &raw, FwdStage &S_, float *tk, float *tb, int n, int ptid)
{
    const int j = ptid & (N - 1);
    float wr[L];
    prep_w<F, FULL>(raw, n, j, wr);
    if (ptid < N) {
        float rr[L], aa[L], vv[L];
#pragma unroll
        for (int u = 0; u < L; u++) {
            const bool ok = FULL || u < n; /* select, never multiply: rows past T are garbage */
            rr[u] = ok ? to_f(raw.x[0][u * N + j]) : 0.f;
            aa[u] = ok ? to_f(raw.x[3][u * N + j]) : 0.f;
            vv[u] = ok ? to_f(raw.x[2][u * N + j]) : 0.f;
        }
        float p = 1.f;
#pragma unroll
        for (int u = 0; u < L; u++) {
            S_.ta[u * LDK + j] = pre_tf32<PRE>(aa[u] * p); /* p_{u-1} */
            p *= wr[u];
            S_.tq[u * LDK + j] = pre_tf32<PRE>(rr[u] * p);
            S_.tv[u * LDV + j] = pre_tf32<PRE>(vv[u]);
        }
        S_.pL[j] = p;
    } else {
        float kr[L], br[L];
        prep_recip<F, PRE, FULL>(raw, 1, 4, wr, n, j, kr, br, tk, tb); /* the forward's stage: r k v a b */
        float kt[L], bt[L], sfx = 1.f;
#pragma unroll
        for (int u = L - 1; u >= 0; u--) {
            kt[u] = pre_tf32<PRE>(kr[u] * sfx);
            bt[u] = pre_tf32<PRE>(br[u] * sfx);
            sfx *= wr[u];
        }
        static_assert(L % 4 == 0 && LDT % 4 == 0, "K'^T rows are stored as float4");
#pragma unroll
        for (int q = 0; q < L / 4; q++) {
            *reinterpret_cast<float4 *>(S_.tKt + j * LDT + 4 * q) = make_float4(kt[4 * q], kt[4 * q + 1], kt[4 * q + 2], kt[4 * q + 3]);
            *reinterpret_cast<float4 *>(S_.tBt + j * LDT + 4 * q) = make_float4(bt[4 * q], bt[4 * q + 1], bt[4 * q + 2], bt[4 * q + 3]);
        }
    }
}

/* Threads 0..127 are the 4 state warps, then one or two groups of 4
 * producer warps (FwdWs). ONE: one CTA per SM (one_cta_per_sm: the engine's
 * 96-128 heads, and grids whose last wave is nearly full). At 96-128 heads
 * a chunk's period was producer warp 0's chain (clock64 trace at (8, 1024, 16),
 * docs/performance.md 1.11: prep 1,240 cycles, Gram product 660, the
 * inversion of I - AB 710 and the six TMA copies of chunk c + 2 900, of
 * 4,550 cycles; the other producers waited for it at the next chunk's
 * barrier, the state warps half the chunk). A chunk's preparation does not
 * depend on the one before, so two groups prepare alternate chunks into 4
 * stages, and lane 0 of a group's warp 1 issues its copies. With two CTAs
 * per SM (128 registers, 104 KB) one group over 2 stages. */
template <typename F, int SPLIT, bool ONE>
__global__ void __launch_bounds__(FwdWs<F, ONE>::THREADS, ONE ? 1 : 2) wkv7_fwd_tcws_kernel(
    int T, int H, int nck,
    const F *__restrict__ r, const float *__restrict__ w, const F *__restrict__ k,
    const F *__restrict__ v, const F *__restrict__ a, const F *__restrict__ b,
    const float *__restrict__ s0, F *__restrict__ y, float *__restrict__ s_final,
    float *__restrict__ ckpt, float *__restrict__ sa_out, const __grid_constant__ TmaMaps maps, int use_tma,
    int pair)
{
    extern __shared__ __align__(128) unsigned char dyn_smem[];
    using Ws = FwdWs<F, ONE>;
    using Bars = typename Ws::Bars;
    constexpr int NST = Ws::NST, NPG = Ws::NPG;
    FwdSmem<F, NST, NPG> &sm = *reinterpret_cast<FwdSmem<F, NST, NPG> *>(dyn_smem);
    const int h = blockIdx.x, bb = blockIdx.y, tid = threadIdx.x;
    const size_t HN = (size_t)H * N;
    const size_t head0 = (((size_t)bb * T) * H + h) * N;
    const bool tma = use_tma && (smem_u32(sm.raw) & 127) == 0; /* the copies' destination alignment */
    if (tma && tid == NTH) {
        for (int i = 0; i < NST; i++) mbar_init(&sm.mbar[i], 1);
        mbar_fence_init();
    }
    __syncthreads(); /* the mbarriers are initialised before anyone waits on them */

    /* SPLIT 16: bf16 operands in the state warps, one tf32 product for the
     * Gram matrices (off the serial chain, and well inside bf16's class) */
    constexpr int GS = SPLIT == 16 ? 1 : SPLIT;
    /* the one-product class: every tile rounded to tf32 where it is written
     * (not TCWSB's, whose state warps round the fp32 tiles to bf16) */
    constexpr bool PRE = SPLIT == 1;
    if (tid >= NTH) { /* ---- producers ---- */
        const int grp = NPG > 1 ? (tid - NTH) / NTH : 0, ptid = NPG > 1 ? (tid - NTH) % NTH : tid - NTH;
        const int pw = ptid >> 5, lane = ptid & 31, g = lane >> 2, t4 = lane & 3;
        const F *const srcs[5] = {r, k, v, a, b};
        FwdScratch &X = sm.scr[grp];
        /* raw inputs NST chunks ahead (the group's first two here, chunk
         * c + NST after chunk c): issuing them while the stage's tile stores
         * were still draining stalled the issuing warps for thousands of
         * cycles, so chunk c + NST's loads go out after chunk c's hand-off
         * and have a whole chunk to land */
        const auto issue = [&](int c) {
            if (c >= nck) {
                if (!tma) cp_async_commit(); /* an empty group keeps the count */
                return;
            }
            if (tma) {
                if (ptid == (ONE ? 32 : 0)) stage_tma(&sm.raw[c % NST], maps, h, bb * T + c * L, &sm.mbar[c % NST]);
            } else {
                stage_issue<F, 5>(&sm.raw[c % NST], srcs, w, head0 + (size_t)c * L * HN, HN, min(L, T - c * L), ptid);
                cp_async_commit();
            }
        };
        issue(grp);
        issue(grp + NPG);
        for (int c = grp; c < nck; c += NPG) {
            const int st = c % NST, t0 = c * L, n = min(L, T - t0);
            FwdStage &S_ = sm.st[st];
            if (c >= NST) bar_sync(Bars::FREE0 + st, 2 * NTH); /* consumers are done with chunk c - NST */
            if (tma)
                mbar_wait(&sm.mbar[st], (c / NST) & 1); /* the (c / NST)-th use of raw[st] */
            else
                cp_async_wait_1(); /* chunk c landed; the group's next may be in flight */
            bar_sync(Bars::GRP0 + grp, NTH); /* chunk c's raw inputs landed for the whole group; scratch free */
            if (n == L)
                fwd_prep<F, PRE, true>(sm.raw[st], S_, X.tk, X.tb, n, ptid);
            else
                fwd_prep<F, PRE, false>(sm.raw[st], S_, X.tk, X.tb, n, ptid);
            bar_sync(Bars::GRP0 + grp, NTH); /* tiles ready, raw[st] consumed */
            gram<GS, PRE>(pw < 2 ? S_.ta : S_.tq, (pw & 1) ? X.tk : X.tb,
                          pw == 0 ? X.gAB : pw == 1 ? S_.gAK : pw == 2 ? S_.gQB : S_.gQK, pw >= 2, false, g, t4,
                          PRE && pw != 0); /* AB stays fp32: the inversion reads it */
            __syncwarp();
            if (pw == 0 && lane < L) invert_unit_lower(X.gAB, S_.gT, false, lane, PRE); /* AB is warp 0's own */
            __syncwarp();
            bar_release(Bars::FULL0 + st, 2 * NTH); /* stage st is full */
            issue(c + NST);
        }
        cp_async_wait_0();
        return;
    }

    /* ---- consumers: the state ---- */
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int i0 = 16 * warp;
    float S[N / 8][4];
    {
        const float *s0h = s0 + (size_t)h * N * N;
#pragma unroll
        for (int nt = 0; nt < N / 8; nt++) {
            const float2 lo = *reinterpret_cast<const float2 *>(s0h + (i0 + g) * N + 8 * nt + 2 * t4);
            const float2 hi = *reinterpret_cast<const float2 *>(s0h + (i0 + g + 8) * N + 8 * nt + 2 * t4);
            S[nt][0] = lo.x; S[nt][1] = lo.y; S[nt][2] = hi.x; S[nt][3] = hi.y;
        }
    }
    /* pair: a checkpoint after every odd chunk and the last one, entry c / 2
     * (wkv7_cuda_ckpt_floats_every); the chunk-product backward recomputes
     * the states between them */
    float *ck = ckpt + (size_t)(bb * H + h) * (pair ? (nck + 1) / 2 : nck) * N * N;
    for (int c = 0; c < nck; c++) {
        const int st = c % NST, t0 = c * L, n = min(L, T - t0);
        const size_t base = head0 + (size_t)t0 * HN;
        const FwdStage &S_ = sm.st[st];
        const bool keep = !pair || (c & 1) || c == nck - 1;
        float *ckc = ck + (size_t)(pair ? c >> 1 : c) * N * N;
        bar_sync(Bars::FULL0 + st, 2 * NTH); /* stage st holds chunk c */
        if constexpr (SPLIT == 16) {
            /* X^T = S A~^T, Y^T = S Q~^T (values x tokens) over the 64 keys */
            float XT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            float YT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
            for (int ks = 0; ks < N / 16; ks++) {
                const FragA16 As = frag_a16_acc(S[2 * ks], S[2 * ks + 1]);
#pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    mma16(XT[nt], As, frag_b16(S_.ta + (8 * nt + g) * LDK + 16 * ks, t4));
                    mma16(YT[nt], As, frag_b16(S_.tq + (8 * nt + g) * LDK + 16 * ks, t4));
                }
            }
            /* + V^T AK^T, V^T QK^T: A = V^T (value rows, k = token) */
            FragA16 Av;
            {
                const float *v0 = S_.tv + (2 * t4) * LDV + i0 + g;
                Av.x[0] = pack_bf16(v0[0], v0[LDV]);
                Av.x[1] = pack_bf16(v0[8], v0[LDV + 8]);
                Av.x[2] = pack_bf16(v0[8 * LDV], v0[9 * LDV]);
                Av.x[3] = pack_bf16(v0[8 * LDV + 8], v0[9 * LDV + 8]);
            }
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                mma16(XT[nt], Av, frag_b16(S_.gAK + (8 * nt + g) * LDG, t4));
                mma16(YT[nt], Av, frag_b16(S_.gQK + (8 * nt + g) * LDG, t4));
            }
            /* U^T = X^T T^T, then Y^T += U^T QB^T */
            float UT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            const FragA16 Ax = frag_a16_acc(XT[0], XT[1]);
#pragma unroll
            for (int nt = 0; nt < 2; nt++) mma16(UT[nt], Ax, frag_b16(S_.gT + (8 * nt + g) * LDG, t4));
            const FragA16 Au = frag_a16_acc(UT[0], UT[1]);
#pragma unroll
            for (int nt = 0; nt < 2; nt++) mma16(YT[nt], Au, frag_b16(S_.gQB + (8 * nt + g) * LDG, t4));
            store_sa_y<F>(UT, YT, sa_out, y, base, HN, n, i0, g, t4);
            /* S <- S diag(pL) + V^T K' + U^T B' (pL in fp32), the checkpoint */
#pragma unroll
            for (int nt = 0; nt < N / 8; nt++) {
                const float2 p2 = *reinterpret_cast<const float2 *>(S_.pL + 8 * nt + 2 * t4);
                S[nt][0] *= p2.x; S[nt][1] *= p2.y; S[nt][2] *= p2.x; S[nt][3] *= p2.y;
                mma16(S[nt], Av, frag_b16(S_.tKt + (8 * nt + g) * LDT, t4));
                mma16(S[nt], Au, frag_b16(S_.tBt + (8 * nt + g) * LDT, t4));
                if (keep) store_ckpt_cols(ckc, S[nt], nt, i0, g, t4);
            }
        } else {
            float XT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            float YT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            {
                float XC[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
                float YC[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    #pragma unroll
                for (int ks = 0; ks < N / 8; ks++) {
                    const FragA As = frag_a_acc<SPLIT>(S[ks]);
    #pragma unroll
                    for (int nt = 0; nt < 2; nt++) {
                        mma2<SPLIT>(XT[nt], XC[nt], As, frag_bp<SPLIT, PRE>(S_.ta + (8 * nt + g) * LDK + 8 * ks + 2 * t4));
                        mma2<SPLIT>(YT[nt], YC[nt], As, frag_bp<SPLIT, PRE>(S_.tq + (8 * nt + g) * LDK + 8 * ks + 2 * t4));
                    }
                }
    #pragma unroll
                for (int nt = 0; nt < 2; nt++)
    #pragma unroll
                    for (int e = 0; e < 4; e++) { XT[nt][e] += XC[nt][e]; YT[nt][e] += YC[nt][e]; }
            }
            FragA Av[2];
    #pragma unroll
            for (int ks = 0; ks < 2; ks++) {
                const float *v0 = S_.tv + (8 * ks + 2 * t4) * LDV + i0 + g;
                Av[ks] = frag_ap<SPLIT, PRE>(v0[0], v0[8], v0[LDV], v0[LDV + 8]);
    #pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    mma<SPLIT>(XT[nt], Av[ks], frag_bp<SPLIT, PRE>(S_.gAK + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
                    mma<SPLIT>(YT[nt], Av[ks], frag_bp<SPLIT, PRE>(S_.gQK + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
                }
            }
            float UT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            mma_acc16<SPLIT, PRE>(UT, XT, S_.gT, g, t4);
            FragA Au[2];
    #pragma unroll
            for (int ks = 0; ks < 2; ks++) {
                Au[ks] = frag_a_acc<SPLIT>(UT[ks]);
    #pragma unroll
                for (int nt = 0; nt < 2; nt++)
                    mma<SPLIT>(YT[nt], Au[ks], frag_bp<SPLIT, PRE>(S_.gQB + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
            }
            store_sa_y<F>(UT, YT, sa_out, y, base, HN, n, i0, g, t4);
    #pragma unroll
            for (int nt = 0; nt < N / 8; nt++) {
                const float2 p2 = *reinterpret_cast<const float2 *>(S_.pL + 8 * nt + 2 * t4);
                S[nt][0] *= p2.x; S[nt][1] *= p2.y; S[nt][2] *= p2.x; S[nt][3] *= p2.y;
    #pragma unroll
                for (int ks = 0; ks < 2; ks++) {
                    mma<SPLIT>(S[nt], Av[ks], frag_bp<SPLIT, PRE>(S_.tKt + (8 * nt + g) * LDT + 8 * ks + 2 * t4));
                    mma<SPLIT>(S[nt], Au[ks], frag_bp<SPLIT, PRE>(S_.tBt + (8 * nt + g) * LDT + 8 * ks + 2 * t4));
                }
                if (keep) store_ckpt_cols(ckc, S[nt], nt, i0, g, t4);
            }
        }
        if (c + NST < nck) bar_release(Bars::FREE0 + st, 2 * NTH); /* stage st is free for chunk c + NST */
    }
    if (s_final) store_state(s_final + (size_t)(bb * H + h) * N * N, S, i0, g, t4);
}

/* ---- backward, pass 1: the dS recursion ------------------------------------
 * Same decomposition as the forward, chunks in reverse, D (the gradient at
 * the chunk end) in the accumulators. Needs only r, w, a, b and dy. Before
 * chunk c it stores D when c ends a segment (c + 1 = 0 mod seg, or the last
 * chunk), as dstore[b][h][c / seg][i][j]; after chunk 0 it adds D to dS0.
 * Also the value side of the per-token gradients, which needs k too:
 * dsa_t = z_t (fp32, into dsa_out) and dv, with
 *   dV^T = Z^T AK + dY^T QK + D K'^T   (values x tokens, D before the update);
 * the column pass then needs no exchange between threads. */
template <typename F, int SPLIT>
__global__ void __launch_bounds__(NTH) wkv7_bwd_tc_dstate_kernel(
    int T, int H, int nck, int seg,
    const F *__restrict__ r, const float *__restrict__ w, const F *__restrict__ a,
    const F *__restrict__ b, const F *__restrict__ dy, const F *__restrict__ k,
    float *__restrict__ dstore, float *__restrict__ ds0, float *__restrict__ dsa_out, F *__restrict__ dv)
{
    __shared__ __align__(16) float tq[L * LDK], ta[L * LDK], tb[L * LDK], tBp[L * LDK]; /* Q~ A~ B^ B' */
    __shared__ __align__(16) float tQt[N * LDT], tAt[N * LDT];                          /* Q~^T A~^T */
    __shared__ __align__(16) float tdy[L * LDV];
    __shared__ __align__(16) float gAB[L * LDG], gQBt[L * LDG], gTt[L * LDG];
    __shared__ __align__(16) float pL[N];

    const int h = blockIdx.x, bb = blockIdx.y, tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int i0 = 16 * warp;
    const size_t HN = (size_t)H * N;
    const int nseg = (nck + seg - 1) / seg;

    float D[N / 8][4];
#pragma unroll
    for (int nt = 0; nt < N / 8; nt++) D[nt][0] = D[nt][1] = D[nt][2] = D[nt][3] = 0.f;
    constexpr int NF = 5;
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    Raw<F, NF> *stg = reinterpret_cast<Raw<F, NF> *>(dyn_smem); /* two stages: r a b dy (k), w */
    /* tiles after the stages: K^ and K' [token][key], AK^T and QK^T */
    float *tk = reinterpret_cast<float *>(dyn_smem + 2 * sizeof(Raw<F, NF>));
    float *tKp = tk + L * LDK, *gAKt = tKp + L * LDK, *gQKt = gAKt + L * LDG;
    const F *const srcs[5] = {r, a, b, dy, k};
    stage_issue<F, NF>(&stg[(nck - 1) & 1], srcs, w, (((size_t)bb * T + (nck - 1) * L) * H + h) * N, HN,
                       T - (nck - 1) * L, tid);
    cp_async_commit();

    for (int c = nck - 1; c >= 0; c--) {
        const int t0 = c * L, n = min(L, T - t0);
        const size_t base = (((size_t)bb * T + t0) * H + h) * N;
        if (c > 0) stage_issue<F, NF>(&stg[(c - 1) & 1], srcs, w, base - (size_t)L * HN, HN, L, tid);
        cp_async_commit();
        cp_async_wait_1();
        if (c == nck - 1 || (c + 1) % seg == 0) {
            float *ds = dstore + ((size_t)(bb * H + h) * nseg + c / seg) * N * N;
#pragma unroll
            for (int nt = 0; nt < N / 8; nt++) {
                *reinterpret_cast<float2 *>(ds + (i0 + g) * N + 8 * nt + 2 * t4) = make_float2(D[nt][0], D[nt][1]);
                *reinterpret_cast<float2 *>(ds + (i0 + g + 8) * N + 8 * nt + 2 * t4) =
                    make_float2(D[nt][2], D[nt][3]);
            }
        }
        __syncthreads(); /* chunk c's stage has landed; the previous chunk is done with every tile */
        const Raw<F, NF> *st = &stg[c & 1];
        if (tid < N) {
            const int j = tid;
            float br[L], wr[L], kr[L];
            float p = 1.f;
#pragma unroll
            for (int u = 0; u < L; u++) {
                const bool ok = u < n;
                const float rr = ok ? to_f(st->x[0][u * N + j]) : 0.f, ww = ok ? st->w[u * N + j] : 1.f;
                const float aa = ok ? to_f(st->x[1][u * N + j]) : 0.f;
                br[u] = ok ? to_f(st->x[2][u * N + j]) : 0.f;
                kr[u] = ok ? to_f(st->x[NF - 1][u * N + j]) : 0.f;
                wr[u] = ww;
                const float at = aa * p;
                ta[u * LDK + j] = at;
                tAt[j * LDT + u] = at;
                p *= ww;
                const float qt = rr * p;
                tq[u * LDK + j] = qt;
                tQt[j * LDT + u] = qt;
                const float ip = __frcp_rn(p);
                tb[u * LDK + j] = br[u] * ip;
                tk[u * LDK + j] = kr[u] * ip;
            }
            pL[j] = p;
            float sfx = 1.f;
#pragma unroll
            for (int u = L - 1; u >= 0; u--) {
                tBp[u * LDK + j] = br[u] * sfx;
                tKp[u * LDK + j] = kr[u] * sfx;
                sfx *= wr[u];
            }
        } else {
            const int i = tid - N;
#pragma unroll
            for (int u = 0; u < L; u++) tdy[u * LDV + i] = u < n ? to_f(st->x[3][u * N + i]) : 0.f;
        }
        __syncthreads();
        if (warp == 0) gram<SPLIT>(ta, tb, gAB, false, false, g, t4);
        else if (warp == 1) gram<SPLIT>(tq, tb, gQBt, true, true, g, t4);
        else if (warp == 2) gram<SPLIT>(ta, tk, gAKt, false, true, g, t4);
        else gram<SPLIT>(tq, tk, gQKt, true, true, g, t4);
        /* R^T = D B'^T (values x tokens) */
        float RT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        {
            float RC[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
            for (int ks = 0; ks < N / 8; ks++) {
                const FragA Ad = frag_a_acc<SPLIT>(D[ks]);
#pragma unroll
                for (int nt = 0; nt < 2; nt++)
                    mma2<SPLIT>(RT[nt], RC[nt], Ad, frag_b<SPLIT>(tBp + (8 * nt + g) * LDK + 8 * ks + 2 * t4));
            }
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) RT[nt][e] += RC[nt][e];
        }
        __syncthreads(); /* AB and QB complete */
        if (warp == 0 && lane < L) invert_unit_lower(gAB, gTt, true, lane);
        __syncwarp();
        /* + dY^T QB: B[s][t] = QB[s][t], stored as gQBt[t][s] */
        FragA Ay[2];
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            const float *d0 = tdy + (8 * ks + 2 * t4) * LDV + i0 + g;
            Ay[ks] = frag_a<SPLIT>(d0[0], d0[8], d0[LDV], d0[LDV + 8]);
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
                mma<SPLIT>(RT[nt], Ay[ks], frag_b<SPLIT>(gQBt + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
        }
        __syncthreads(); /* T complete */
        /* Z^T = R^T T: B[s][t] = T[s][t], stored as gTt[t][s] */
        float ZT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        mma_acc16<SPLIT>(ZT, RT, gTt, g, t4);
        FragA Az[2];
#pragma unroll
        for (int ks = 0; ks < 2; ks++) Az[ks] = frag_a_acc<SPLIT>(ZT[ks]);
        {
            /* dV^T = Z^T AK + dY^T QK + D K'^T; B[s][t] = AK[s][t] = gAKt[t][s] */
            float VT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            float VC[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
            for (int ks = 0; ks < 2; ks++)
#pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    mma<SPLIT>(VT[nt], Az[ks], frag_b<SPLIT>(gAKt + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
                    mma<SPLIT>(VT[nt], Ay[ks], frag_b<SPLIT>(gQKt + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
                }
#pragma unroll
            for (int ks = 0; ks < N / 8; ks++) {
                const FragA Ad = frag_a_acc<SPLIT>(D[ks]);
#pragma unroll
                for (int nt = 0; nt < 2; nt++)
                    mma2<SPLIT>(VT[nt], VC[nt], Ad, frag_b<SPLIT>(tKp + (8 * nt + g) * LDK + 8 * ks + 2 * t4));
            }
            float DV[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) DV[nt][e] = VT[nt][e] + VC[nt][e];
            store_sa_y<F>(ZT, DV, dsa_out, dv, base, HN, n, i0, g, t4);
        }
        /* D <- D diag(pL) + dY^T Q~ + Z^T A~ */
#pragma unroll
        for (int nt = 0; nt < N / 8; nt++) {
            const float2 p2 = *reinterpret_cast<const float2 *>(pL + 8 * nt + 2 * t4);
            D[nt][0] *= p2.x; D[nt][1] *= p2.y; D[nt][2] *= p2.x; D[nt][3] *= p2.y;
#pragma unroll
            for (int ks = 0; ks < 2; ks++) {
                mma<SPLIT>(D[nt], Ay[ks], frag_b<SPLIT>(tQt + (8 * nt + g) * LDT + 8 * ks + 2 * t4));
                mma<SPLIT>(D[nt], Az[ks], frag_b<SPLIT>(tAt + (8 * nt + g) * LDT + 8 * ks + 2 * t4));
            }
        }
    }
    /* D is dS0 of this batch row; the batch shares s0 */
    float *d0 = ds0 + (size_t)h * N * N;
#pragma unroll
    for (int nt = 0; nt < N / 8; nt++) {
        const int j = 8 * nt + 2 * t4;
        atomicAdd(d0 + (i0 + g) * N + j, D[nt][0]);
        atomicAdd(d0 + (i0 + g) * N + j + 1, D[nt][1]);
        atomicAdd(d0 + (i0 + g + 8) * N + j, D[nt][2]);
        atomicAdd(d0 + (i0 + g + 8) * N + j + 1, D[nt][3]);
    }
}

/* ---- backward, pass 1, warp-specialized --------------------------------------
 * wkv7_bwd_tc_dstate_kernel with the state-independent work
 * (loads, p, tiles, the four Gram matrices, T) on 4 producer warps one chunk
 * ahead, as in wkv7_fwd_tcws_kernel (same barrier ids and protocol). */
struct BwdStage {
    float tQt[N * LDT], tAt[N * LDT]; /* Q~^T A~^T [key][token] */
    float tBp[L * LDK], tKp[L * LDK]; /* B' K' [token][key] */
    float tdy[L * LDV];
    float gQBt[L * LDG], gAKt[L * LDG], gQKt[L * LDG], gTt[L * LDG];
    float pL[N];
};
template <typename F>
struct BwdSmem {
    BwdStage st[2];
    float tq[L * LDK], ta[L * LDK], tb[L * LDK], tk[L * LDK], gAB[L * LDG]; /* producer scratch */
    Raw<F, 5> raw[2]; /* r a b dy k, w of chunk c in raw[(nck - 1 - c) & 1], two chunks ahead */
    uint64_t mbar[2]; /* raw[i] landed (TMA staging) */
};

/* The backward pass 1's producer prep, spread over all 128 producer threads
 * as fwd_prep is: key thread j < 64 the prefix side (A~ and Q~, both also
 * transposed, pL) and dy's column j; thread 64 + j the reciprocal side (B^,
 * K^) and the suffix side (B', K'). Bit for bit the tiles of one thread
 * doing everything. PRE and FULL as in fwd_prep; pass 1 takes FULL only
 * when it runs one CTA per SM (ONE, below). */
template <typename F, bool PRE, bool FULL>
__device__ __forceinline__ void bwd_prep(const Raw<F, 5> &raw, BwdStage &S_, float *ta, float *tq, float *tb,
                                         float *tk, int n, int ptid)
{
    const int j = ptid & (N - 1);
    float wr[L];
    prep_w<F, FULL>(raw, n, j, wr);
    if (ptid < N) {
        float rr[L], aa[L], dd[L];
#pragma unroll
        for (int u = 0; u < L; u++) {
            const bool ok = FULL || u < n;
            rr[u] = ok ? to_f(raw.x[0][u * N + j]) : 0.f;
            aa[u] = ok ? to_f(raw.x[1][u * N + j]) : 0.f;
            dd[u] = ok ? to_f(raw.x[3][u * N + j]) : 0.f;
        }
        float at[L], qt[L], p = 1.f;
#pragma unroll
        for (int u = 0; u < L; u++) {
            at[u] = pre_tf32<PRE>(aa[u] * p);
            ta[u * LDK + j] = at[u];
            p *= wr[u];
            qt[u] = pre_tf32<PRE>(rr[u] * p);
            tq[u * LDK + j] = qt[u];
            S_.tdy[u * LDV + j] = pre_tf32<PRE>(dd[u]);
        }
        S_.pL[j] = p;
        static_assert(L % 4 == 0 && LDT % 4 == 0, "A~^T rows are stored as float4");
#pragma unroll
        for (int q = 0; q < L / 4; q++) {
            *reinterpret_cast<float4 *>(S_.tAt + j * LDT + 4 * q) = make_float4(at[4 * q], at[4 * q + 1], at[4 * q + 2], at[4 * q + 3]);
            *reinterpret_cast<float4 *>(S_.tQt + j * LDT + 4 * q) = make_float4(qt[4 * q], qt[4 * q + 1], qt[4 * q + 2], qt[4 * q + 3]);
        }
    } else {
        float kr[L], br[L];
        prep_recip<F, PRE, FULL>(raw, 4, 2, wr, n, j, kr, br, tk, tb); /* pass 1's stage: r a b dy k */
        float sfx = 1.f;
#pragma unroll
        for (int u = L - 1; u >= 0; u--) {
            S_.tBp[u * LDK + j] = pre_tf32<PRE>(br[u] * sfx);
            S_.tKp[u * LDK + j] = pre_tf32<PRE>(kr[u] * sfx);
            sfx *= wr[u];
        }
    }
}

/* Threads 0..127 hold D (4 warps), 128..255 are the producers. ONE: the
 * grid has no more CTAs than the GPU has SMs (the engine's 96-128 heads), so
 * the kernel may take a whole SM's registers, and the prep of full chunks
 * drops its selects (bwd_prep's FULL). Under the two-CTA bound that prep
 * spills (88 bytes at 128 registers, bf16) and measured no faster at 256 and
 * 512 heads (docs/performance.md 1.10); at 96-128 heads it made the backward
 * 7-8% faster even with the spill (1.10, section 0). Same bits either way. */
template <typename F, int SPLIT, bool ONE = false>
__global__ void __launch_bounds__(2 * NTH, ONE ? 1 : 2) wkv7_bwd_tcws_dstate_kernel(
    int T, int H, int nck, int seg,
    const F *__restrict__ r, const float *__restrict__ w, const F *__restrict__ a,
    const F *__restrict__ b, const F *__restrict__ dy, const F *__restrict__ k,
    float *__restrict__ dstore, float *__restrict__ ds0, float *__restrict__ dsa_out, F *__restrict__ dv,
    const __grid_constant__ TmaMaps maps, int use_tma)
{
    extern __shared__ __align__(128) unsigned char dyn_smem[];
    BwdSmem<F> &sm = *reinterpret_cast<BwdSmem<F> *>(dyn_smem);
    const int h = blockIdx.x, bb = blockIdx.y, tid = threadIdx.x;
    const size_t HN = (size_t)H * N;
    const size_t head0 = (((size_t)bb * T) * H + h) * N;
    const int nseg = (nck + seg - 1) / seg;
    constexpr bool PRE = SPLIT == 1; /* tiles rounded to tf32 where written, as in the forward */
    using Bars = WsBars<2, 1>;

    if (tid >= NTH) { /* ---- producers ---- */
        const int ptid = tid - NTH, pw = ptid >> 5, lane = ptid & 31, g = lane >> 2, t4 = lane & 3;
        const F *const srcs[5] = {r, a, b, dy, k};
        /* raw inputs two chunks ahead, as in the forward (by TMA when the
         * maps exist, else cp.async groups G(it)) */
        const bool tma = use_tma && (smem_u32(sm.raw) & 127) == 0;
        if (tma) {
            if (ptid == 0) {
                mbar_init(&sm.mbar[0], 1);
                mbar_init(&sm.mbar[1], 1);
                mbar_fence_init();
                stage_tma(&sm.raw[0], maps, h, bb * T + (nck - 1) * L, &sm.mbar[0]);
                if (nck > 1) stage_tma(&sm.raw[1], maps, h, bb * T + (nck - 2) * L, &sm.mbar[1]);
            }
        } else {
            stage_issue<F, 5>(&sm.raw[0], srcs, w, head0 + (size_t)(nck - 1) * L * HN, HN, T - (nck - 1) * L, ptid);
            cp_async_commit();
            if (nck > 1) stage_issue<F, 5>(&sm.raw[1], srcs, w, head0 + (size_t)(nck - 2) * L * HN, HN, L, ptid);
            cp_async_commit();
        }
        bar_sync(Bars::GRP0, NTH); /* the barriers are initialised before anyone waits on them */
        for (int it = 0; it < nck; it++) {
            const int c = nck - 1 - it, s = it & 1, t0 = c * L, n = min(L, T - t0);
            BwdStage &S_ = sm.st[s];
            if (it >= 2) bar_sync(Bars::FREE0 + s, 2 * NTH);
            if (tma)
                mbar_wait(&sm.mbar[s], (it >> 1) & 1);
            else
                cp_async_wait_1();
            bar_sync(Bars::GRP0, NTH);
            if (ONE && n == L)
                bwd_prep<F, PRE, true>(sm.raw[s], S_, sm.ta, sm.tq, sm.tb, sm.tk, n, ptid);
            else
                bwd_prep<F, PRE, false>(sm.raw[s], S_, sm.ta, sm.tq, sm.tb, sm.tk, n, ptid);
            bar_sync(Bars::GRP0, NTH); /* tiles ready, raw[s] consumed */
            if (pw == 0) gram<SPLIT, PRE>(sm.ta, sm.tb, sm.gAB, false, false, g, t4); /* fp32: the inversion reads it */
            else if (pw == 1) gram<SPLIT, PRE>(sm.tq, sm.tb, S_.gQBt, true, true, g, t4, PRE);
            else if (pw == 2) gram<SPLIT, PRE>(sm.ta, sm.tk, S_.gAKt, false, true, g, t4, PRE);
            else gram<SPLIT, PRE>(sm.tq, sm.tk, S_.gQKt, true, true, g, t4, PRE);
            __syncwarp();
            if (pw == 0 && lane < L) invert_unit_lower(sm.gAB, S_.gTt, true, lane, PRE);
            __syncwarp();
            bar_release(Bars::FULL0 + s, 2 * NTH);
            if (tma) {
                if (ptid == 0 && c >= 2) stage_tma(&sm.raw[s], maps, h, bb * T + (c - 2) * L, &sm.mbar[s]);
            } else {
                if (c >= 2) stage_issue<F, 5>(&sm.raw[s], srcs, w, head0 + (size_t)(t0 - 2 * L) * HN, HN, L, ptid);
                cp_async_commit();
            }
        }
        cp_async_wait_0();
        return;
    }

    /* ---- consumers: D ---- */
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int i0 = 16 * warp;
    float D[N / 8][4];
#pragma unroll
    for (int nt = 0; nt < N / 8; nt++) D[nt][0] = D[nt][1] = D[nt][2] = D[nt][3] = 0.f;
    for (int it = 0; it < nck; it++) {
        const int c = nck - 1 - it, s = it & 1, t0 = c * L, n = min(L, T - t0);
        const size_t base = head0 + (size_t)t0 * HN;
        if (c == nck - 1 || (c + 1) % seg == 0) {
            float *ds = dstore + ((size_t)(bb * H + h) * nseg + c / seg) * N * N;
#pragma unroll
            for (int nt = 0; nt < N / 8; nt++) {
                *reinterpret_cast<float2 *>(ds + (i0 + g) * N + 8 * nt + 2 * t4) = make_float2(D[nt][0], D[nt][1]);
                *reinterpret_cast<float2 *>(ds + (i0 + g + 8) * N + 8 * nt + 2 * t4) =
                    make_float2(D[nt][2], D[nt][3]);
            }
        }
        const BwdStage &S_ = sm.st[s];
        bar_sync(Bars::FULL0 + s, 2 * NTH);
        /* R^T = D B'^T + dY^T QB */
        float RT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int ks = 0; ks < N / 8; ks++) {
            const FragA Ad = frag_a_acc<SPLIT>(D[ks]);
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
                mma<SPLIT>(RT[nt], Ad, frag_bp<SPLIT, PRE>(S_.tBp + (8 * nt + g) * LDK + 8 * ks + 2 * t4));
        }
        FragA Ay[2];
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            const float *d0 = S_.tdy + (8 * ks + 2 * t4) * LDV + i0 + g;
            Ay[ks] = frag_ap<SPLIT, PRE>(d0[0], d0[8], d0[LDV], d0[LDV + 8]);
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
                mma<SPLIT>(RT[nt], Ay[ks], frag_bp<SPLIT, PRE>(S_.gQBt + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
        }
        /* Z^T = R^T T */
        float ZT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        mma_acc16<SPLIT, PRE>(ZT, RT, S_.gTt, g, t4);
        FragA Az[2];
#pragma unroll
        for (int ks = 0; ks < 2; ks++) Az[ks] = frag_a_acc<SPLIT>(ZT[ks]);
        {
            /* dV^T = Z^T AK + dY^T QK + D K'^T */
            float VT[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
            for (int ks = 0; ks < 2; ks++)
#pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    mma<SPLIT>(VT[nt], Az[ks], frag_bp<SPLIT, PRE>(S_.gAKt + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
                    mma<SPLIT>(VT[nt], Ay[ks], frag_bp<SPLIT, PRE>(S_.gQKt + (8 * nt + g) * LDG + 8 * ks + 2 * t4));
                }
#pragma unroll
            for (int ks = 0; ks < N / 8; ks++) {
                const FragA Ad = frag_a_acc<SPLIT>(D[ks]);
#pragma unroll
                for (int nt = 0; nt < 2; nt++)
                    mma<SPLIT>(VT[nt], Ad, frag_bp<SPLIT, PRE>(S_.tKp + (8 * nt + g) * LDK + 8 * ks + 2 * t4));
            }
            store_sa_y<F>(ZT, VT, dsa_out, dv, base, HN, n, i0, g, t4);
        }
        /* D <- D diag(pL) + dY^T Q~ + Z^T A~ */
#pragma unroll
        for (int nt = 0; nt < N / 8; nt++) {
            const float2 p2 = *reinterpret_cast<const float2 *>(S_.pL + 8 * nt + 2 * t4);
            D[nt][0] *= p2.x; D[nt][1] *= p2.y; D[nt][2] *= p2.x; D[nt][3] *= p2.y;
#pragma unroll
            for (int ks = 0; ks < 2; ks++) {
                mma<SPLIT>(D[nt], Ay[ks], frag_bp<SPLIT, PRE>(S_.tQt + (8 * nt + g) * LDT + 8 * ks + 2 * t4));
                mma<SPLIT>(D[nt], Az[ks], frag_bp<SPLIT, PRE>(S_.tAt + (8 * nt + g) * LDT + 8 * ks + 2 * t4));
            }
        }
        if (it + 2 < nck) bar_release(Bars::FREE0 + s, 2 * NTH);
    }
    float *d0 = ds0 + (size_t)h * N * N;
#pragma unroll
    for (int nt = 0; nt < N / 8; nt++) {
        const int j = 8 * nt + 2 * t4;
        atomicAdd(d0 + (i0 + g) * N + j, D[nt][0]);
        atomicAdd(d0 + (i0 + g) * N + j + 1, D[nt][1]);
        atomicAdd(d0 + (i0 + g + 8) * N + j, D[nt][2]);
        atomicAdd(d0 + (i0 + g + 8) * N + j + 1, D[nt][3]);
    }
}

/* ---- backward, pass 2 (column form): dr, dw, dk, da, db -------------------
 * Pass 1 already wrote dv and dsa_t = z_t for every token, so what is
 * left are the column sums of the recurrent backward: two threads per key
 * column j (32 value rows each) step S back from the checkpoints and carry
 * the dS column, seeded per segment with pass 1's D; with dsa given, no
 * thread needs another's result (one shuffle pairs the halves), so there is
 * no barrier per token and every segment of every head runs at once. Same
 * per-element arithmetic as the split backward's column group (wkv7.cu). */
template <typename F>
__global__ void __launch_bounds__(2 * N) wkv7_bwd_col_kernel(
    int T, int H, int nck, int seg,
    const F *__restrict__ r, const float *__restrict__ w, const F *__restrict__ k,
    const F *__restrict__ v, const F *__restrict__ a, const F *__restrict__ b,
    const float *__restrict__ ckpt, const float *__restrict__ sa_in, const float *__restrict__ dsa_in,
    const F *__restrict__ dy, const float *__restrict__ dstore,
    F *__restrict__ dr, float *__restrict__ dw, F *__restrict__ dk, F *__restrict__ da, F *__restrict__ db)
{
    __shared__ __align__(16) float tl[9][L * N]; /* r w k v a b dy sa dsa */
    const int h = blockIdx.x, bb = blockIdx.y, sg = blockIdx.z, tid = threadIdx.x;
    const int j = tid >> 1, i0 = (tid & 1) * (N / 2);
    const size_t HN = (size_t)H * N;
    const int nseg = (nck + seg - 1) / seg;
    const float *Dst = dstore + ((size_t)(bb * H + h) * nseg + sg) * N * N;
    const float *ck = ckpt + (size_t)(bb * H + h) * nck * N * N;
    float X[N / 2], dS[N / 2]; /* S and dS, column j, rows i0.. */
#pragma unroll
    for (int q = 0; q < N / 2; q++) dS[q] = Dst[(i0 + q) * N + j];
    const int c_end = min((sg + 1) * seg, nck);

    for (int c = c_end - 1; c >= sg * seg; c--) {
        const int t0 = c * L, n = min(L, T - t0);
        const size_t base = (((size_t)bb * T + t0) * H + h) * N;
        const float *col = ck + (size_t)c * N * N + (size_t)j * N + i0;
#pragma unroll
        for (int q = 0; q < N / 2; q += 4) {
            const float4 x4 = *reinterpret_cast<const float4 *>(col + q);
            X[q] = x4.x; X[q + 1] = x4.y; X[q + 2] = x4.z; X[q + 3] = x4.w;
        }
        __syncthreads(); /* the previous chunk is done with the tiles */
#pragma unroll
        for (int q = 0; q < L * N / (2 * N); q++) {
            const int e = tid + q * 2 * N, u = e >> 6;
            const bool ok = u < n;
            const size_t idx = base + (size_t)(ok ? u : 0) * HN + (e & (N - 1));
            tl[0][e] = ok ? to_f(r[idx]) : 0.f; tl[1][e] = ok ? w[idx] : 1.f;
            tl[2][e] = ok ? to_f(k[idx]) : 0.f; tl[3][e] = ok ? to_f(v[idx]) : 0.f;
            tl[4][e] = ok ? to_f(a[idx]) : 0.f; tl[5][e] = ok ? to_f(b[idx]) : 0.f;
            tl[6][e] = ok ? to_f(dy[idx]) : 0.f; tl[7][e] = ok ? sa_in[idx] : 0.f;
            tl[8][e] = ok ? dsa_in[idx] : 0.f;
        }
        __syncthreads();
        for (int u = n - 1; u >= 0; u--) {
            const float rj = tl[0][u * N + j], wj = tl[1][u * N + j], kj = tl[2][u * N + j];
            const float aj = tl[4][u * N + j], bj = tl[5][u * N + j];
            const float4 *v4 = reinterpret_cast<const float4 *>(tl[3] + u * N + i0);
            const float4 *d4 = reinterpret_cast<const float4 *>(tl[6] + u * N + i0);
            const float4 *s4 = reinterpret_cast<const float4 *>(tl[7] + u * N + i0);
            const float4 *g4 = reinterpret_cast<const float4 *>(tl[8] + u * N + i0);
            float gr, gk, gb, gw, ga;
            wkv7tc::col_step_back(X, dS, v4, d4, s4, g4, rj, wj, kj, aj, bj, gr, gk, gb, gw, ga);
            if (i0 == 0) {
                const size_t idx = base + u * HN + j;
                dr[idx] = from_f<F>(gr); dw[idx] = gw; dk[idx] = from_f<F>(gk);
                da[idx] = from_f<F>(ga); db[idx] = from_f<F>(gb);
            }
        }
    }
}

/* ---- backward, pass 2 from chunk products (CPROD) --------------------------
 * The chain rule of this file's header, one CTA of 8 warps per (b, h, chunk),
 * all chunks of all heads at once: no step-back, so nothing amplifies the
 * forward's rounding (the step-back multiplies checkpoint errors by up to
 * 1/p_16). Inputs: the chunk's start state S (the previous checkpoint, or
 * s0), D = dS at its end (pass 1 with one chunk per segment), U = sa from
 * the forward, Z = dsa from pass 1 (which also wrote dv and dS0), and the
 * chunk's r, w, k, v, a, b, dy. Then
 *   dAB, dAK (strict), dQB, dQK (inclusive) = Z U^T, Z V^T, dY U^T, dY V^T;
 *   dA~ = Z S + dAB B^ + dAK K^,  dQ~ = dY S + dQB B^ + dQK K^,
 *   dB^ = dAB^T A~ + dQB^T Q~,    dK^ = dAK^T A~ + dQK^T Q~,
 *   dK' = V D, dB' = U D, dpL = colsum(S .* D),
 * warp w taking keys 8w .. 8w + 7 of every tokens x keys product (and one
 * 16 x 8 tile of the four 16 x 16 ones), then the elementwise tail (dr, da,
 * dk, db) and a reverse scan per key for dw. Products by smm<OP>: 3xTF32
 * (OP 3), one tf32 product (1) or bf16 operands (16). Shared tiles in fp32;
 * strides 68 (= 4 mod 32) for tiles read as [row][k], 72 (= 8 mod 32) for
 * tiles read as [k][n], so the scalar fragment loads avoid bank conflicts. */
constexpr int CLA = N + 4;  /* [token][value] tiles and S^T [key][value] */
constexpr int CLB = N + 8;  /* [token][key] tiles and D [value][key] */
constexpr int CLG = L + 4;  /* 16 x 16 */
struct CpSmem {
    float St[N * CLA], D[N * CLB];
    float z[L * CLA], dy[L * CLA], v[L * CLA], u[L * CLA];
    float at[L * CLB], qt[L * CLB], bh[L * CLB], kh[L * CLB];
    float p[L * N], pp[L * N], w[L * N];
    float gAB[L * CLG], gAK[L * CLG], gQB[L * CLG], gQK[L * CLG];
    float pL[N], dpl[4][N];
    float eP[L * N], eA[L * N], eE[L * N];
};

template <typename F, int OP>
__global__ void __launch_bounds__(256, 2) wkv7_bwd_cprod_kernel(
    int T, int H, int nck,
    const F *__restrict__ r, const float *__restrict__ w, const F *__restrict__ k,
    const F *__restrict__ v, const F *__restrict__ a, const F *__restrict__ b,
    const float *__restrict__ s0, const float *__restrict__ ckpt, const float *__restrict__ sa_in,
    const float *__restrict__ dsa_in, const F *__restrict__ dy, const float *__restrict__ dstore,
    F *__restrict__ dr, float *__restrict__ dw, F *__restrict__ dk, F *__restrict__ da, F *__restrict__ db)
{
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    CpSmem &sm = *reinterpret_cast<CpSmem *>(dyn_smem);
    const int c = blockIdx.x, h = blockIdx.y, bb = blockIdx.z, tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const size_t HN = (size_t)H * N;
    const int t0 = c * L, n = min(L, T - t0);
    const size_t base = (((size_t)bb * T + t0) * H + h) * N;

    /* S^T [j][i]: checkpoint c - 1 is stored [j][i] already; s0 is [i][j] */
    if (c > 0) {
        const float *src = ckpt + ((size_t)(bb * H + h) * nck + c - 1) * N * N;
        for (int e = tid; e < N * N / 4; e += 256) {
            const float4 x = reinterpret_cast<const float4 *>(src)[e];
            const int j = (4 * e) / N, i = (4 * e) % N;
            *reinterpret_cast<float4 *>(&sm.St[j * CLA + i]) = x;
        }
    } else {
        const float *src = s0 + (size_t)h * N * N;
        for (int e = tid; e < N * N; e += 256) sm.St[(e % N) * CLA + e / N] = src[e];
    }
    {
        const float *src = dstore + ((size_t)(bb * H + h) * nck + c) * N * N;
        for (int e = tid; e < N * N / 4; e += 256) {
            const float4 x = reinterpret_cast<const float4 *>(src)[e];
            const int i = (4 * e) / N, j = (4 * e) % N;
            *reinterpret_cast<float4 *>(&sm.D[i * CLB + j]) = x;
        }
    }
    /* token tiles; rows past T are identity tokens (w = 1, the rest 0) */
    for (int e = tid; e < L * N; e += 256) {
        const int uu = e / N, x = e % N;
        const bool ok = uu < n;
        const size_t idx = base + (size_t)(ok ? uu : 0) * HN + x;
        sm.z[uu * CLA + x] = ok ? dsa_in[idx] : 0.f;
        sm.u[uu * CLA + x] = ok ? sa_in[idx] : 0.f;
        sm.dy[uu * CLA + x] = ok ? to_f(dy[idx]) : 0.f;
        sm.v[uu * CLA + x] = ok ? to_f(v[idx]) : 0.f;
        sm.qt[uu * CLB + x] = ok ? to_f(r[idx]) : 0.f; /* raw, rescaled below */
        sm.kh[uu * CLB + x] = ok ? to_f(k[idx]) : 0.f;
        sm.at[uu * CLB + x] = ok ? to_f(a[idx]) : 0.f;
        sm.bh[uu * CLB + x] = ok ? to_f(b[idx]) : 0.f;
        sm.w[e] = ok ? w[idx] : 1.f;
    }
    __syncthreads();
    if (tid < N) { /* the prefix products and the rescaled tiles, as the forward's */
        const int j = tid;
        float p = 1.f;
#pragma unroll
        for (int uu = 0; uu < L; uu++) {
            sm.pp[uu * N + j] = p;
            sm.at[uu * CLB + j] *= p; /* a~ = a p_{t-1} */
            p *= sm.w[uu * N + j];
            sm.p[uu * N + j] = p;
            const float ip = __frcp_rn(p);
            sm.qt[uu * CLB + j] *= p;
            sm.kh[uu * CLB + j] *= ip;
            sm.bh[uu * CLB + j] *= ip;
        }
        sm.pL[j] = p;
    }
    { /* dpL partial sums: column j, rows 16 q .. 16 q + 15 (S and D are ready) */
        const int j = tid & (N - 1), q = tid >> 6;
        float acc = 0.f;
#pragma unroll
        for (int i = 16 * q; i < 16 * q + 16; i++) acc = fmaf(sm.St[j * CLA + i], sm.D[i * CLB + j], acc);
        sm.dpl[q][j] = acc;
    }
    /* products from the raw tiles: dA~ = Z S, dQ~ = dY S, dK' = V D, dB' = U D
     * (keys j0 .. j0 + 7), while the rescaling above completes */
    const int j0 = 8 * warp;
    float cA[4] = {0.f, 0.f, 0.f, 0.f}, cQ[4] = {0.f, 0.f, 0.f, 0.f};
    float cKp[4] = {0.f, 0.f, 0.f, 0.f}, cBp[4] = {0.f, 0.f, 0.f, 0.f};
    float cKh[4] = {0.f, 0.f, 0.f, 0.f}, cBh[4] = {0.f, 0.f, 0.f, 0.f};
    smm<OP>(cA, sm.z, CLA, 1, sm.St + j0 * CLA, 1, CLA, N, g, t4);
    smm<OP>(cQ, sm.dy, CLA, 1, sm.St + j0 * CLA, 1, CLA, N, g, t4);
    smm<OP>(cKp, sm.v, CLA, 1, sm.D + j0, CLB, 1, N, g, t4);
    smm<OP>(cBp, sm.u, CLA, 1, sm.D + j0, CLB, 1, N, g, t4);
    { /* the 16 x 16 gradients: warp w -> matrix w / 2, tokens s in 8 (w & 1) .. */
        const int mat = warp >> 1, s0c = 8 * (warp & 1);
        const float *Am = mat < 2 ? sm.z : sm.dy;
        const float *Bm = (mat & 1) ? sm.v : sm.u;
        float cg[4] = {0.f, 0.f, 0.f, 0.f};
        smm<OP>(cg, Am, CLA, 1, Bm + s0c * CLA, 1, CLA, N, g, t4);
        float *G = mat == 0 ? sm.gAB : mat == 1 ? sm.gAK : mat == 2 ? sm.gQB : sm.gQK;
        const bool incl = mat >= 2;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int t = g + (e >= 2 ? 8 : 0), s = s0c + 2 * t4 + (e & 1);
            G[t * CLG + s] = (incl ? s <= t : s < t) ? cg[e] : 0.f; /* select, never multiply */
        }
    }
    __syncthreads(); /* the 16 x 16 gradients and the rescaled tiles are complete */
    smm<OP>(cA, sm.gAB, CLG, 1, sm.bh + j0, CLB, 1, L, g, t4);
    smm<OP>(cA, sm.gAK, CLG, 1, sm.kh + j0, CLB, 1, L, g, t4);
    smm<OP>(cQ, sm.gQB, CLG, 1, sm.bh + j0, CLB, 1, L, g, t4);
    smm<OP>(cQ, sm.gQK, CLG, 1, sm.kh + j0, CLB, 1, L, g, t4);
    smm<OP>(cBh, sm.gAB, 1, CLG, sm.at + j0, CLB, 1, L, g, t4); /* A(s, t) = dAB[t][s] */
    smm<OP>(cBh, sm.gQB, 1, CLG, sm.qt + j0, CLB, 1, L, g, t4);
    smm<OP>(cKh, sm.gAK, 1, CLG, sm.at + j0, CLB, 1, L, g, t4);
    smm<OP>(cKh, sm.gQK, 1, CLG, sm.qt + j0, CLB, 1, L, g, t4);
    /* the elementwise tail; dP parts for the scan */
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int t = g + (e >= 2 ? 8 : 0), j = j0 + 2 * t4 + (e & 1);
        const float pt = sm.p[t * N + j], pl = sm.pL[j];
        const float kh_ = sm.kh[t * CLB + j], bh_ = sm.bh[t * CLB + j];
        const float ipt = 1.f / pt;
        if (t < n) {
            const size_t idx = base + (size_t)t * HN + j;
            dr[idx] = from_f<F>(cQ[e] * pt);
            da[idx] = from_f<F>(cA[e] * sm.pp[t * N + j]);
            dk[idx] = from_f<F>(fmaf(cKp[e], pl, cKh[e]) * ipt);
            db[idx] = from_f<F>(fmaf(cBp[e], pl, cBh[e]) * ipt);
        }
        const float ee = (cKp[e] * kh_ + cBp[e] * bh_) * pl; /* dK' K' + dB' B' */
        sm.eP[t * N + j] = cQ[e] * sm.qt[t * CLB + j] - cKh[e] * kh_ - cBh[e] * bh_ - ee;
        sm.eE[t * N + j] = ee;
        sm.eA[t * N + j] = cA[e] * sm.at[t * CLB + j];
    }
    __syncthreads();
    if (tid < N) { /* dw_u = sum_{t >= u} dP_t / w_u, per key */
        const int j = tid;
        float extra = (sm.dpl[0][j] + sm.dpl[1][j] + sm.dpl[2][j] + sm.dpl[3][j]) * sm.pL[j];
#pragma unroll
        for (int t = 0; t < L; t++) extra += sm.eE[t * N + j];
        float acc = extra;
#pragma unroll
        for (int t = L - 1; t >= 0; t--) {
            acc += sm.eP[t * N + j] + (t + 1 < L ? sm.eA[(t + 1) * N + j] : 0.f);
            if (t < n) dw[base + (size_t)t * HN + j] = acc / sm.w[t * N + j];
        }
    }
}

/* four consecutive activations as floats (8-byte bf16 or 16-byte fp32 loads) */
__device__ __forceinline__ float4 load4(const float *p) { return *reinterpret_cast<const float4 *>(p); }
__device__ __forceinline__ float4 load4(const __nv_bfloat16 *p)
{
    const uint2 x = *reinterpret_cast<const uint2 *>(p);
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&x.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&x.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}

/* ---- CPROD pass 2 in 75 KB (three CTAs per SM instead of two) ------------
 * wkv7_bwd_cprod_kernel's arithmetic (one tf32 product: CPROD1WSSA) with its
 * shared memory cut from 103 to 75 KB: S and D die after the first
 * products, so the 16 x 16 gradients, dpL's partial sums, the dP parts and
 * the scan's exchange reuse their space; p_{t-1} and w_t are read as
 * p[t - 1] and p_t / p_{t-1} instead of tiles of their own. More resident
 * CTAs overlap one chunk's loads with another's products.
 *
 * The 1.4 form of this kernel was bound by the shared-memory pipe (ncu at
 * (8, 4096, 64), docs/performance.md 1.7: L1 95% busy, 38% of its shared
 * load wavefronts and 67% of its store wavefronts bank conflicts, 2-byte
 * output stores over 8 rows per instruction; DRAM 50%). So every access
 * pattern here is chosen for its wavefronts and instructions, with the
 * arithmetic of every output unchanged (the same operations in the same
 * order; docs/performance.md 1.7 has the bit-for-bit comparison):
 * - strides 68 floats (4 mod 32) for tiles read as mma A operands or as B
 *   stored [n][k] (z, dy, v, u, S^T, the 16 x 16 gradients: 20); 72 (8 mod
 *   32) for tiles read as B stored [k][n] (D, a~, q~, b^, k^), for p and
 *   for the dP parts, which the tail reads and writes as float2 pairs;
 * - the operands that only ever enter products (z, dy, v, u and the 16 x 16
 *   gradients, which eight warps read each) are rounded to tf32 once, when
 *   written, and read by ldmatrix: one instruction per fragment instead of
 *   four loads and four conversions (rounding a tf32 value again is the
 *   identity, so the products see the same bits); the transposed gradients
 *   get a copy of their own;
 * - products that share a B operand (Z S and dY S, V D and U D, the pairs of
 *   16 x 16 products) load and convert it once;
 * - the per-key passes (prefix products, dw's reverse scan) give a warp 32
 *   consecutive keys of one token group, so their column accesses are
 *   conflict-free; the groups' totals meet through shared memory instead of
 *   shuffles (two barriers more), and dpL's partial sums read S^T as float4;
 * - dr, da, dk, db are staged in shared memory (in the dead z..u tiles) and
 *   written as 16-byte vectors, not as 2-byte stores over 8 rows each. */
constexpr int CSD = N * CLA + N * CLB; /* S^T and D, then the gradients, dpl, the scan's exchange, dP parts */
struct CpSmallSmem {
    float sd[CSD];
    float z[L * CLA], dy[L * CLA], v[L * CLA], u[L * CLA]; /* then the four staged outputs */
    float at[L * CLB], qt[L * CLB], bh[L * CLB], kh[L * CLB];
    float p[L * CLB];
    float pL[N];
};
/* three CTAs, with the 1 KB each reserves, in an SM's 228 KB */
static_assert(3 * (sizeof(CpSmallSmem) + 1024) <= 233472, "pass 2 must keep three CTAs per SM");
static_assert(8 * L * CLG + 4 * N * 3 + 3 * L * CLB <= CSD, "pass 2's reused region is too small");

__device__ __forceinline__ float4 round_tf32(float4 x)
{
    return make_float4(round_tf32(x.x), round_tf32(x.y), round_tf32(x.z), round_tf32(x.w));
}

/* ldmatrix on 32-bit data: block i (8 rows x 4 floats, its row addresses
 * from lanes 8i .. 8i + 7) lands in register i as element (row lane / 4,
 * column lane % 4): a tf32 mma fragment when the data are tf32 already. */
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const float *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
}
__device__ __forceinline__ void ldsm_x2(uint32_t r[2], const float *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(p))
                 : "memory");
}

/* c0 += A0 B and c1 += A1 B (16 x 8, one tf32 product, smm's operation
 * order): A0, A1 are 16 x K, tf32 already, row-major with stride lda, read
 * by ldmatrix (a0 = (g, t4), a1 = (g + 8, t4), a2 = (g, t4 + 4), a3 = (g + 8,
 * t4 + 4), as frag_a); B(k, n) = B[k bk + n bn], rounded here, once for both. */
__device__ __forceinline__ void smm_pair_r(float c0[4], const float *A0, float c1[4], const float *A1, int lda,
                                           const float *B, int bk, int bn, int K, int g, int t4, int lane)
{
    const int ar = (lane & 7) + 8 * ((lane >> 3) & 1), ac = 4 * (lane >> 4); /* this lane's ldmatrix row */
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 8) {
        const int ka = k0 + t4;
        uint32_t b[2], a[4];
        b[0] = __float_as_uint(round_tf32(B[ka * bk + g * bn]));
        b[1] = __float_as_uint(round_tf32(B[(ka + 4) * bk + g * bn]));
        ldsm_x4(a, A0 + ar * lda + k0 + ac);
        mma1(c0, a, b);
        ldsm_x4(a, A1 + ar * lda + k0 + ac);
        mma1(c1, a, b);
    }
}
/* c += A B with both tf32 already: A as in smm_pair_r, B stored [n][k]
 * (B(k, n) = Bn[n ldb + k]), by ldmatrix too. */
__device__ __forceinline__ void smm_rr(float c[4], const float *A, int lda, const float *Bn, int ldb, int K, int lane)
{
    const int ar = (lane & 7) + 8 * ((lane >> 3) & 1), ac = 4 * (lane >> 4);
    const int br = lane & 7, bc = 4 * ((lane >> 3) & 1);
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 8) {
        uint32_t b[2], a[4];
        ldsm_x2(b, Bn + br * ldb + k0 + bc);
        ldsm_x4(a, A + ar * lda + k0 + ac);
        mma1(c, a, b);
    }
}

/* two adjacent outputs as one 4- (bf16) or 8-byte (fp32) store */
__device__ __forceinline__ void store2(__nv_bfloat16 *p, float x0, float x1)
{
    *reinterpret_cast<__nv_bfloat162 *>(p) = __halves2bfloat162(from_f<__nv_bfloat16>(x0), from_f<__nv_bfloat16>(x1));
}
__device__ __forceinline__ void store2(float *p, float x0, float x1) { *reinterpret_cast<float2 *>(p) = make_float2(x0, x1); }

/* One thread's four elements of one side of a chunk's token tiles (pass 2's
 * load_tiles split in two: the loads into registers, then the stores into
 * shared memory, with the same conversions and tf32 rounding, so the tiles
 * hold the same bits). Side 0: dy, r, a (type F), dsa; side 1: v, k, b, sa;
 * then w. Rows past T: zeros, w = 1. */
template <typename F> struct Raw4T { typedef float4 type; };
template <> struct Raw4T<__nv_bfloat16> { typedef uint2 type; };
template <typename F> struct Held4 {
    typename Raw4T<F>::type x0, x1, x2; /* dy r a, or v k b: raw */
    float4 f0, f1;                      /* dsa or sa; w */
};
__device__ __forceinline__ float4 raw4(const float *p) { return *reinterpret_cast<const float4 *>(p); }
__device__ __forceinline__ uint2 raw4(const __nv_bfloat16 *p) { return *reinterpret_cast<const uint2 *>(p); }
__device__ __forceinline__ float4 cvt4(float4 x) { return x; }
__device__ __forceinline__ float4 cvt4(uint2 x)
{
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&x.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&x.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}
template <typename F>
__device__ __forceinline__ void hold_fetch(Held4<F> &hd, int side, int cc, int T, int H, int bb, int h, int uu, int x4,
                                           const F *r, const float *w, const F *k, const F *v, const F *a,
                                           const F *b, const float *sa, const float *dsa, const F *dy)
{
    const bool ok = uu < min(L, T - cc * L);
    const typename Raw4T<F>::type z{}; /* bf16 and fp32 zeros are all-zero bits */
    hd.x0 = hd.x1 = hd.x2 = z;
    hd.f0 = make_float4(0.f, 0.f, 0.f, 0.f);
    hd.f1 = make_float4(1.f, 1.f, 1.f, 1.f);
    if (!ok) return;
    const size_t idx = (((size_t)bb * T + cc * L + uu) * H + h) * N + x4;
    hd.x0 = raw4((side ? v : dy) + idx);
    hd.x1 = raw4((side ? k : r) + idx);
    hd.x2 = raw4((side ? b : a) + idx);
    hd.f0 = raw4((side ? sa : dsa) + idx);
    hd.f1 = raw4(w + idx);
}
template <typename F>
__device__ __forceinline__ void hold_put(const Held4<F> &hd, int side, CpSmallSmem &sm, int o, int ob)
{
    *reinterpret_cast<float4 *>(side ? &sm.v[o] : &sm.dy[o]) = round_tf32(cvt4(hd.x0));
    *reinterpret_cast<float4 *>(side ? &sm.kh[ob] : &sm.qt[ob]) = cvt4(hd.x1);
    *reinterpret_cast<float4 *>(side ? &sm.bh[ob] : &sm.at[ob]) = cvt4(hd.x2);
    *reinterpret_cast<float4 *>(side ? &sm.u[o] : &sm.z[o]) = round_tf32(hd.f0);
    *reinterpret_cast<float4 *>(&sm.p[ob]) = hd.f1;
}

/* Pass 2's recomputation with a checkpoint every two chunks, in place
 * (ADVS: S_mid = S diag(pL) + V^T K' + U^T B', St holding S^T; else D_mid
 * = D diag(pL) + dY^T Q~ + Z^T A~, Dm holding D), warp w on value rows 16
 * (w % 4) .. and keys 32 (w / 4) ..: every operand is tf32 in shared
 * memory already, so a fragment is plain loads, and a warp's A fragments
 * serve its four 8-key tiles (pass 2 is bound by its instruction issue;
 * docs/performance.md 1.8). The products in the forward's and pass 1's
 * order (V then U, per 8 tokens): the same bits as theirs. */
template <bool ADVS>
__device__ __forceinline__ void pair_update(float *Mx, const CpSmallSmem &sm, int warp, int g, int t4)
{
    constexpr int MI = ADVS ? 1 : CLB, MJ = ADVS ? CLA : 1; /* element (i, j) at Mx[i MI + j MJ] */
    const float *A0 = ADVS ? sm.v : sm.dy, *A1 = ADVS ? sm.u : sm.z;   /* [t][i], stride CLA */
    const float *B0 = ADVS ? sm.kh : sm.qt, *B1 = ADVS ? sm.bh : sm.at; /* [t][j], stride CLB */
    const int i = 16 * (warp & 3) + g, jb = 32 * (warp >> 2);
    float cc[4][4];
#pragma unroll
    for (int nt = 0; nt < 4; nt++) {
        const int j = jb + 8 * nt + 2 * t4;
        const float pj0 = sm.pL[j], pj1 = sm.pL[j + 1];
        cc[nt][0] = Mx[i * MI + j * MJ] * pj0;
        cc[nt][1] = Mx[i * MI + (j + 1) * MJ] * pj1;
        cc[nt][2] = Mx[(i + 8) * MI + j * MJ] * pj0;
        cc[nt][3] = Mx[(i + 8) * MI + (j + 1) * MJ] * pj1;
    }
#pragma unroll
    for (int k0 = 0; k0 < L; k0 += 8) {
        const int ta = k0 + t4;
        uint32_t a0[4], a1[4];
        a0[0] = __float_as_uint(A0[ta * CLA + i]);
        a0[1] = __float_as_uint(A0[ta * CLA + i + 8]);
        a0[2] = __float_as_uint(A0[(ta + 4) * CLA + i]);
        a0[3] = __float_as_uint(A0[(ta + 4) * CLA + i + 8]);
        a1[0] = __float_as_uint(A1[ta * CLA + i]);
        a1[1] = __float_as_uint(A1[ta * CLA + i + 8]);
        a1[2] = __float_as_uint(A1[(ta + 4) * CLA + i]);
        a1[3] = __float_as_uint(A1[(ta + 4) * CLA + i + 8]);
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            const int jj = jb + 8 * nt + g;
            const uint32_t b0[2] = {__float_as_uint(B0[ta * CLB + jj]), __float_as_uint(B0[(ta + 4) * CLB + jj])};
            const uint32_t b1[2] = {__float_as_uint(B1[ta * CLB + jj]), __float_as_uint(B1[(ta + 4) * CLB + jj])};
            mma1(cc[nt], a0, b0);
            mma1(cc[nt], a1, b1);
        }
    }
#pragma unroll
    for (int nt = 0; nt < 4; nt++) {
        const int j = jb + 8 * nt + 2 * t4;
        Mx[i * MI + j * MJ] = cc[nt][0];
        Mx[i * MI + (j + 1) * MJ] = cc[nt][1];
        Mx[(i + 8) * MI + j * MJ] = cc[nt][2];
        Mx[(i + 8) * MI + (j + 1) * MJ] = cc[nt][3];
    }
}

/* S, D and the fp32 token tiles (dsa, sa, w) are copied by cp.async, in
 * flight while the bf16 tiles are loaded and converted, instead of through
 * registers: 3-4% of the backward (docs/performance.md 1.4). (1-D bulk
 * copies, one per 256-byte row, were 5% slower: docs/performance.md 1.7.)
 *
 * With a checkpoint every chunk the loads go in two groups (split): S, z,
 * w and dy, r, a first, then D, u and v, k, b. The prefix products and
 * dA~ = Z S, dQ~ = dY S need only the first group, so they run while the
 * second lands; dpL, the k^ and b^ rescale and the products with V, U and
 * D follow one barrier later. Each output is the same operations in the
 * same order (the same bits; test_cuda_wkv's ckpt_pair_matches_per_chunk
 * compares this path with the pair path, which loads in one group). ncu
 * at (8, 4096, 64) had this kernel wait on its loads for 57% of its warp
 * samples, at 81% of DRAM bandwidth; the split took it to 86% and 3.35 ->
 * 3.17 ms (docs/performance.md 1.9). The pair path (advS, advD) keeps one
 * group: its neighbour's tiles are needed first. */
template <typename F, int OP>
__global__ void __launch_bounds__(256, 3) wkv7_bwd_cprod_small_kernel(
    int T, int H, int nck,
    const F *__restrict__ r, const float *__restrict__ w, const F *__restrict__ k,
    const F *__restrict__ v, const F *__restrict__ a, const F *__restrict__ b,
    const float *__restrict__ s0, const float *__restrict__ ckpt, const float *__restrict__ sa_in,
    const float *__restrict__ dsa_in, const F *__restrict__ dy, const float *__restrict__ dstore,
    F *__restrict__ dr, float *__restrict__ dw, F *__restrict__ dk, F *__restrict__ da, F *__restrict__ db, int pair)
{
    static_assert(OP == 1, "the 75 KB pass 2 is the one-tf32-product class (CPROD1WSSA)");
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    CpSmallSmem &sm = *reinterpret_cast<CpSmallSmem *>(dyn_smem);
    float *St = sm.sd, *Dm = sm.sd + N * CLA;
    /* after the first products: the 16 x 16 gradients [t][s] and transposed */
    float *gAB = sm.sd, *gAK = gAB + L * CLG, *gQB = gAK + L * CLG, *gQK = gQB + L * CLG;
    float *gABt = gQK + L * CLG, *gAKt = gABt + L * CLG, *gQBt = gAKt + L * CLG, *gQKt = gQBt + L * CLG;
    float *dpl = gQKt + L * CLG;                    /* [4][N] */
    float *xtot = dpl + 4 * N, *xee = xtot + 4 * N; /* [4][N]: the scan's group totals */
    float *eP = xee + 4 * N, *eA = eP + L * CLB, *eE = eA + L * CLB; /* [t][j], stride CLB */
    /* the staged outputs dr, da, dk, db: one z-sized tile each, rows of SO
     * elements (bf16: 36 words = 4 mod 8, so a warp's pair stores hit 32
     * banks; fp32: 68) */
    constexpr int SO = sizeof(F) == 2 ? N + 8 : N + 4;
    F *const so = reinterpret_cast<F *>(sm.z);
    constexpr int SOT = L * CLA * 4 / (int)sizeof(F); /* elements between staged tiles */
    const int c = blockIdx.x, h = blockIdx.y, bb = blockIdx.z, tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const size_t HN = (size_t)H * N;
    const int t0 = c * L, n = min(L, T - t0);
    const size_t base = (((size_t)bb * T + t0) * H + h) * N;

    /* pair (a checkpoint every two chunks): chunk c belongs to pair q = c / 2,
     * whose start state (entry q - 1, or s0) and end gradient (D at the end
     * of chunk min(2q + 1, nck - 1), entry q) are stored. An odd chunk first
     * advances the state over chunk c - 1 (S_mid), an even chunk with a
     * successor steps D back over chunk c + 1 (D_mid), each from the
     * neighbour's tiles, with the forward's and pass 1's own per-chunk
     * updates (this file's header). Otherwise entry c - 1 and entry c. */
    const int q = pair ? c >> 1 : c, nsv = pair ? (nck + 1) >> 1 : nck;
    const bool advS = pair && (c & 1), advD = pair && !(c & 1) && c + 1 < nck;
    if (q > 0) {
        const float *src = ckpt + ((size_t)(bb * H + h) * nsv + q - 1) * N * N; /* S^T, [j][i] */
#pragma unroll
        for (int m = 0; m < N * N / 4 / 256; m++) { /* rows tid / 16 + 16 m, columns 4 (tid % 16) .. */
            const int j = tid / 16 + 16 * m, i = 4 * (tid % 16);
            cp_async16(&St[j * CLA + i], src + j * N + i);
        }
    } else {
        const float *src = s0 + (size_t)h * N * N;
        for (int e = tid; e < N * N; e += 256) St[(e % N) * CLA + e / N] = src[e];
    }
    auto load_d = [&]() {
        const float *src = dstore + ((size_t)(bb * H + h) * nsv + q) * N * N; /* D, [i][j] */
#pragma unroll
        for (int m = 0; m < N * N / 4 / 256; m++) {
            const int i = tid / 16 + 16 * m, j = 4 * (tid % 16);
            cp_async16(&Dm[i * CLB + j], src + i * N + j);
        }
    };
    /* one chunk per checkpoint: the loads in two groups, so that the first
     * products run while the second lands (split, below) */
    const bool split = !pair;
    if (!split) load_d();
    /* token tiles, four consecutive elements per thread (one pass) of chunk
     * cc: side 0 the gradient side (z = dsa, dy, r into q~, a into a~),
     * side 1 the value side (v, u = sa, k into k^, b into b^), w into p */
    const int e4 = 4 * tid, uu = e4 / N, x4 = e4 % N;
    const int o = uu * CLA + x4, ob = uu * CLB + x4;
    auto load_tiles = [&](int cc, bool side0, bool side1, bool with_w) {
        const int ncc = min(L, T - cc * L);
        const bool ok = uu < ncc;
        const size_t idx = (((size_t)bb * T + cc * L + (ok ? uu : 0)) * H + h) * N + x4;
        const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
        if (ok) {
            if (side0) cp_async16(&sm.z[o], dsa_in + idx);
            if (side1) cp_async16(&sm.u[o], sa_in + idx);
            if (with_w) cp_async16(&sm.p[ob], w + idx);
            cp_async_commit();
        } else { /* identity tokens past T */
            if (side0) *reinterpret_cast<float4 *>(&sm.z[o]) = zero;
            if (side1) *reinterpret_cast<float4 *>(&sm.u[o]) = zero;
            if (with_w) *reinterpret_cast<float4 *>(&sm.p[ob]) = make_float4(1.f, 1.f, 1.f, 1.f);
        }
        if (side0) {
            *reinterpret_cast<float4 *>(&sm.dy[o]) = ok ? round_tf32(load4(dy + idx)) : zero;
            *reinterpret_cast<float4 *>(&sm.qt[ob]) = ok ? load4(r + idx) : zero;
            *reinterpret_cast<float4 *>(&sm.at[ob]) = ok ? load4(a + idx) : zero;
        }
        if (side1) {
            *reinterpret_cast<float4 *>(&sm.v[o]) = ok ? round_tf32(load4(v + idx)) : zero;
            *reinterpret_cast<float4 *>(&sm.kh[ob]) = ok ? load4(k + idx) : zero;
            *reinterpret_cast<float4 *>(&sm.bh[ob]) = ok ? load4(b + idx) : zero;
        }
    };
    /* this thread's own copies have landed: round z and u (products only) */
    auto land = [&](bool side0, bool side1) {
        cp_async_commit(); /* harmless when this thread issued nothing more */
        cp_async_wait_0();
        float4 *z4 = reinterpret_cast<float4 *>(&sm.z[o]), *u4 = reinterpret_cast<float4 *>(&sm.u[o]);
        if (side0) *z4 = round_tf32(*z4);
        if (side1) *u4 = round_tf32(*u4);
    };
    if (advS || advD) {
        /* this chunk's half that the neighbour's tiles displace (and w)
         * into registers first, in flight through the recomputation and
         * stored after it (the first form loaded it after the
         * recomputation: a DRAM round trip more on each CTA's path); then
         * the neighbour's half and w, and this chunk's other half, into
         * shared memory */
        const int dside = advS ? 1 : 0;
        Held4<F> hd;
        hold_fetch<F>(hd, dside, c, T, H, bb, h, uu, x4, r, w, k, v, a, b, sa_in, dsa_in, dy);
        load_tiles(advS ? c - 1 : c + 1, advD, advS, true);
        load_tiles(c, advS, advD, false);
        land(true, true);
        __syncthreads();
        if (tid < N) { /* per key: the forward's (advS) or pass 1's (advD) prep, same products in the same order */
            const int j = tid;
            float wr[L];
#pragma unroll
            for (int u = 0; u < L; u++) wr[u] = sm.p[u * CLB + j];
            float pl = 1.f;
            /* the products' B operands, rounded to tf32 once here (as the
             * products would: the same bits) */
            if (advS) { /* K' = k pL / p_t, B' likewise (suffix products) */
#pragma unroll
                for (int u = 0; u < L; u++) pl *= wr[u];
                float sfx = 1.f;
#pragma unroll
                for (int u = L - 1; u >= 0; u--) {
                    sm.kh[u * CLB + j] = round_tf32(sm.kh[u * CLB + j] * sfx);
                    sm.bh[u * CLB + j] = round_tf32(sm.bh[u * CLB + j] * sfx);
                    sfx *= wr[u];
                }
            } else { /* A~ = a p_{t-1}, Q~ = r p_t */
#pragma unroll
                for (int u = 0; u < L; u++) {
                    sm.at[u * CLB + j] = round_tf32(sm.at[u * CLB + j] * pl);
                    pl *= wr[u];
                    sm.qt[u * CLB + j] = round_tf32(sm.qt[u * CLB + j] * pl);
                }
            }
            sm.pL[j] = pl;
        }
        __syncthreads();
        if (advS)
            pair_update<true>(St, sm, warp, g, t4);
        else
            pair_update<false>(Dm, sm, warp, g, t4);
        __syncthreads(); /* the neighbour's tiles are dead */
        hold_put<F>(hd, dside, sm, o, ob);
    } else if (!split) {
        load_tiles(c, true, true, true);
        land(true, true);
    }
    /* split: group 1 = S (above), z, w and the gradient side's bf16 tiles
     * (dy, r, a, through registers); group 2 = D, u and the value side's
     * (v, k, b, held in registers until the first products are issued) */
    typename Raw4T<F>::type xv{}, xk{}, xb{}; /* zero bits: rows past T */
    if (split) {
        const bool ok = uu < n;
        const size_t idx = (((size_t)bb * T + c * L + (ok ? uu : 0)) * H + h) * N + x4;
        const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
        typename Raw4T<F>::type xdy{}, xr{}, xa{};
        if (ok) {
            cp_async16(&sm.z[o], dsa_in + idx);
            cp_async16(&sm.p[ob], w + idx);
            xdy = raw4(dy + idx);
            xr = raw4(r + idx);
            xa = raw4(a + idx);
        } else {
            *reinterpret_cast<float4 *>(&sm.z[o]) = zero;
            *reinterpret_cast<float4 *>(&sm.p[ob]) = make_float4(1.f, 1.f, 1.f, 1.f);
        }
        cp_async_commit();
        load_d();
        if (ok) {
            cp_async16(&sm.u[o], sa_in + idx);
            xv = raw4(v + idx);
            xk = raw4(k + idx);
            xb = raw4(b + idx);
        } else {
            *reinterpret_cast<float4 *>(&sm.u[o]) = zero;
        }
        cp_async_commit();
        *reinterpret_cast<float4 *>(&sm.dy[o]) = round_tf32(cvt4(xdy));
        *reinterpret_cast<float4 *>(&sm.qt[ob]) = cvt4(xr);
        *reinterpret_cast<float4 *>(&sm.at[ob]) = cvt4(xa);
        cp_async_wait_1(); /* group 1 */
        float4 *z4 = reinterpret_cast<float4 *>(&sm.z[o]);
        *z4 = round_tf32(*z4);
    }
    __syncthreads();
    /* per-key passes: key j = tid % 64, token group q = tid / 64 (tokens
     * 4q .. 4q + 3), uniform over a warp */
    const int kj = tid & (N - 1), kq = tid >> 6;
    float pre, xo, lp[4];
    { /* prefix products: the group's local products, and the earlier
       * groups' totals x_0 .. x_{q-1}, each as ((w w) w) w, multiplied in
       * the order the 1.4 kernel's shuffles used (x_{q-1} x_{q-2}) x_{q-3} */
        float xg[3] = {1.f, 1.f, 1.f};
#pragma unroll
        for (int gq = 0; gq < 4; gq++) {
            if (gq <= kq) {
                float x = 1.f;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    x *= sm.p[(4 * gq + i) * CLB + kj];
                    if (gq == kq) lp[i] = x;
                }
                if (gq < 3) xg[gq] = x;
                if (gq == kq) xo = x;
            }
        }
        const float g1 = kq == 1 ? xg[0] : kq == 2 ? xg[1] : xg[2]; /* x_{q-1} */
        const float g2 = kq == 2 ? xg[0] : xg[1];                   /* x_{q-2} */
        const float g3 = xg[0];                                     /* x_{q-3} */
        pre = (kq >= 1 ? g1 : 1.f) * (kq >= 2 ? g2 : 1.f) * (kq >= 3 ? g3 : 1.f);
    }
    float dplv = 0.f;
    /* dpL partial sums: column kj of S .* D, rows 16 kq .. 16 kq + 15, S^T
     * read as float4 rows (conflict-free), the same fma chain */
    auto dpl_partial = [&]() {
#pragma unroll
        for (int m = 0; m < 4; m++) {
            const int i = 16 * kq + 4 * m;
            const float4 s4 = *reinterpret_cast<const float4 *>(&St[kj * CLA + i]);
            dplv = fmaf(s4.x, Dm[i * CLB + kj], dplv);
            dplv = fmaf(s4.y, Dm[(i + 1) * CLB + kj], dplv);
            dplv = fmaf(s4.z, Dm[(i + 2) * CLB + kj], dplv);
            dplv = fmaf(s4.w, Dm[(i + 3) * CLB + kj], dplv);
        }
    };
    /* products from the raw tiles: dA~ = Z S, dQ~ = dY S, dK' = V D, dB' = U D
     * (keys j0 .. j0 + 7), and one 16 x 8 tile of the 16 x 16 gradients */
    const int j0 = 8 * warp;
    float cA[4] = {0.f, 0.f, 0.f, 0.f}, cQ[4] = {0.f, 0.f, 0.f, 0.f};
    float cKp[4] = {0.f, 0.f, 0.f, 0.f}, cBp[4] = {0.f, 0.f, 0.f, 0.f};
    float cKh[4] = {0.f, 0.f, 0.f, 0.f}, cBh[4] = {0.f, 0.f, 0.f, 0.f};
    if (split) {
        smm_pair_r(cA, sm.z, cQ, sm.dy, CLA, St + j0 * CLA, 1, CLA, N, g, t4, lane);
    } else {
        dpl_partial();
    }
    __syncthreads(); /* every group has read the w it needs; p may be overwritten */
    {
        float pprev = pre;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int t = 4 * kq + i, o = t * CLB + kj;
            const float pt = pre * lp[i];
            sm.at[o] *= pprev;
            sm.qt[o] *= pt;
            if (!split) {
                const float ip = __frcp_rn(pt);
                sm.kh[o] *= ip;
                sm.bh[o] *= ip;
            }
            sm.p[o] = pt;
            pprev = pt;
        }
        if (kq == 3) sm.pL[kj] = pre * xo;
    }
    if (split) { /* group 2: the value side, then D's products */
        *reinterpret_cast<float4 *>(&sm.v[o]) = round_tf32(cvt4(xv));
        *reinterpret_cast<float4 *>(&sm.kh[ob]) = cvt4(xk);
        *reinterpret_cast<float4 *>(&sm.bh[ob]) = cvt4(xb);
        cp_async_wait_0();
        float4 *u4 = reinterpret_cast<float4 *>(&sm.u[o]);
        *u4 = round_tf32(*u4);
        __syncthreads();
        dpl_partial();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int o = (4 * kq + i) * CLB + kj;
            const float ip = __frcp_rn(pre * lp[i]);
            sm.kh[o] *= ip;
            sm.bh[o] *= ip;
        }
    } else {
        smm_pair_r(cA, sm.z, cQ, sm.dy, CLA, St + j0 * CLA, 1, CLA, N, g, t4, lane);
    }
    smm_pair_r(cKp, sm.v, cBp, sm.u, CLA, Dm + j0, CLB, 1, N, g, t4, lane);
    const int mat = warp >> 1, s0c = 8 * (warp & 1);
    float cg[4] = {0.f, 0.f, 0.f, 0.f};
    smm_rr(cg, mat < 2 ? sm.z : sm.dy, CLA, ((mat & 1) ? sm.v : sm.u) + s0c * CLA, CLA, N, lane);
    __syncthreads(); /* S and D are dead; the rescaled tiles are complete */
    { /* the gradients, rounded to tf32 (products only), and transposed */
        const int off = mat * L * CLG;
        const bool incl = mat >= 2;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int t = g + (e >= 2 ? 8 : 0), s = s0c + 2 * t4 + (e & 1);
            const float x = (incl ? s <= t : s < t) ? round_tf32(cg[e]) : 0.f; /* select, never multiply */
            gAB[off + t * CLG + s] = x;
            gABt[off + s * CLG + t] = x;
        }
        dpl[kq * N + kj] = dplv;
    }
    __syncthreads();
    smm_pair_r(cA, gAB, cQ, gQB, CLG, sm.bh + j0, CLB, 1, L, g, t4, lane);
    smm_pair_r(cA, gAK, cQ, gQK, CLG, sm.kh + j0, CLB, 1, L, g, t4, lane);
    smm_pair_r(cBh, gABt, cKh, gAKt, CLG, sm.at + j0, CLB, 1, L, g, t4, lane); /* A(s, t) = dAB[t][s] */
    smm_pair_r(cBh, gQBt, cKh, gQKt, CLG, sm.qt + j0, CLB, 1, L, g, t4, lane);
    /* the elementwise tail, two adjacent keys per thread and row (float2
     * reads and writes); the outputs go to the staging tiles */
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int t = g + 8 * hf, j = j0 + 2 * t4;
        const float2 pt2 = *reinterpret_cast<const float2 *>(&sm.p[t * CLB + j]);
        const float2 pp2 = t > 0 ? *reinterpret_cast<const float2 *>(&sm.p[(t - 1) * CLB + j]) : make_float2(1.f, 1.f);
        const float2 pl2 = *reinterpret_cast<const float2 *>(&sm.pL[j]);
        const float2 kh2 = *reinterpret_cast<const float2 *>(&sm.kh[t * CLB + j]);
        const float2 bh2 = *reinterpret_cast<const float2 *>(&sm.bh[t * CLB + j]);
        const float2 qt2 = *reinterpret_cast<const float2 *>(&sm.qt[t * CLB + j]);
        const float2 at2 = *reinterpret_cast<const float2 *>(&sm.at[t * CLB + j]);
        float vr[2], va[2], vk[2], vb[2], vp[2], ve[2], vA[2];
#pragma unroll
        for (int cc = 0; cc < 2; cc++) {
            const int e = 2 * hf + cc;
            const float pt = cc ? pt2.y : pt2.x, pl = cc ? pl2.y : pl2.x, pprev = cc ? pp2.y : pp2.x;
            const float kh_ = cc ? kh2.y : kh2.x, bh_ = cc ? bh2.y : bh2.x;
            const float ipt = 1.f / pt;
            vr[cc] = cQ[e] * pt;
            va[cc] = cA[e] * pprev;
            vk[cc] = fmaf(cKp[e], pl, cKh[e]) * ipt;
            vb[cc] = fmaf(cBp[e], pl, cBh[e]) * ipt;
            const float ee = (cKp[e] * kh_ + cBp[e] * bh_) * pl; /* dK' K' + dB' B' */
            vp[cc] = cQ[e] * (cc ? qt2.y : qt2.x) - cKh[e] * kh_ - cBh[e] * bh_ - ee;
            ve[cc] = ee;
            vA[cc] = cA[e] * (cc ? at2.y : at2.x);
        }
        store2(so + t * SO + j, vr[0], vr[1]);
        store2(so + SOT + t * SO + j, va[0], va[1]);
        store2(so + 2 * SOT + t * SO + j, vk[0], vk[1]);
        store2(so + 3 * SOT + t * SO + j, vb[0], vb[1]);
        *reinterpret_cast<float2 *>(&eP[t * CLB + j]) = make_float2(vp[0], vp[1]);
        *reinterpret_cast<float2 *>(&eE[t * CLB + j]) = make_float2(ve[0], ve[1]);
        *reinterpret_cast<float2 *>(&eA[t * CLB + j]) = make_float2(vA[0], vA[1]);
    }
    __syncthreads();
    /* dw_u = sum_{t >= u} dP_t / w_u, per key: the group's own sums first */
    float dP[4], ee = 0.f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int t = 4 * kq + i;
        dP[i] = eP[t * CLB + kj] + (t + 1 < L ? eA[(t + 1) * CLB + kj] : 0.f);
        ee += eE[t * CLB + kj];
    }
    const float tot = dP[0] + dP[1] + dP[2] + dP[3];
    xtot[kq * N + kj] = tot;
    xee[kq * N + kj] = ee;
    { /* the staged outputs as 16-byte rows (rows past T are not written);
       * element by element when an output is not 16-byte aligned */
        constexpr int VPR = N * (int)sizeof(F) / 16, EPV = 16 / (int)sizeof(F); /* vectors per row, elements each */
        const bool vec = ((reinterpret_cast<uintptr_t>(dr) | reinterpret_cast<uintptr_t>(da) |
                           reinterpret_cast<uintptr_t>(dk) | reinterpret_cast<uintptr_t>(db)) & 15) == 0;
        static_assert(4 * L * VPR % 256 == 0, "pass 2's staged outputs: whole passes of 256 threads");
#pragma unroll
        for (int m = 0; m < 4 * L * VPR / 256; m++) {
            const int e = tid + 256 * m, oi = e / (L * VPR), t = (e / VPR) % L, cv = e % VPR;
            if (t >= n) continue;
            const F *src = so + oi * SOT + t * SO + cv * EPV;
            F *const out = oi == 0 ? dr : oi == 1 ? da : oi == 2 ? dk : db; /* selects, not a local array */
            F *dst = out + base + (size_t)t * HN + cv * EPV;
            if (vec) {
                *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(src);
            } else {
#pragma unroll
                for (int x = 0; x < EPV; x++) dst[x] = src[x];
            }
        }
    }
    __syncthreads(); /* the groups' totals are complete */
    {
        /* the 1.4 kernel's shuffle sums, in the same order: (ee_0 + ee_1) +
         * (ee_2 + ee_3) for every group, then the later groups' totals */
        const float eet = (xee[kj] + xee[N + kj]) + (xee[2 * N + kj] + xee[3 * N + kj]);
        const float l1 = kq <= 2 ? xtot[(kq + 1) * N + kj] : 0.f;
        const float l2 = kq <= 1 ? xtot[(kq + 2) * N + kj] : 0.f;
        const float l3 = kq == 0 ? xtot[3 * N + kj] : 0.f;
        float acc = eet + (dpl[kj] + dpl[N + kj] + dpl[2 * N + kj] + dpl[3 * N + kj]) * sm.pL[kj] + l1 + l2 + l3;
#pragma unroll
        for (int i = 3; i >= 0; i--) {
            const int t = 4 * kq + i;
            acc += dP[i];
            /* dw = acc / w_t with w_t = p_t / p_{t-1} */
            const float pprev = t > 0 ? sm.p[(t - 1) * CLB + kj] : 1.f;
            if (t < n) dw[base + (size_t)t * HN + kj] = acc * pprev / sm.p[t * CLB + kj];
        }
    }
}

} // namespace

namespace wkv7tc {

/* The forward's tensor maps (TmaMaps): each input as a 2-D tensor of B T
 * rows by H N elements, 16 x 64 boxes. Returns 1 when every map was made,
 * 0 when the TMA path must not be used (no driver entry point, an operand
 * not 16-byte aligned, STATETUNE_WKV7_TMA=0); the kernels then stage by
 * cp.async, with the same results bit for bit. */
template <typename F>
static int tma_maps(TmaMaps *m, int B, int T, int H, const F *const x[5], const float *w)
{
    static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
        void *fn = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) !=
                cudaSuccess ||
            q != cudaDriverEntryPointSuccess)
            fn = NULL;
        (void)cudaGetLastError();
        return (PFN_cuTensorMapEncodeTiled_v12000)fn;
    }();
    const char *env = getenv("STATETUNE_WKV7_TMA");
    if (!encode || (env && env[0] == '0')) return 0;
    const void *src[6] = {x[0], x[1], x[2], x[3], x[4], w};
    for (int i = 0; i < 6; i++) {
        const bool f32 = i == 5 || sizeof(F) == 4;
        const size_t es = f32 ? 4 : 2;
        const cuuint64_t dims[2] = {(cuuint64_t)H * N, (cuuint64_t)B * T};
        const cuuint64_t strides[1] = {(cuuint64_t)H * N * es};
        const cuuint32_t box[2] = {N, L}, estr[2] = {1, 1};
        if ((uintptr_t)src[i] % 16 ||
            encode(&m->m[i], f32 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
                   const_cast<void *>(src[i]), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                   CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                   CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
            return 0;
    }
    return 1;
}

/* wkv7_chunk.cuh */
int sm_count(int *sms, char *err)
{
    int dev = 0;
    ST_CUDA_CHECK(cudaGetDevice(&dev));
    ST_CUDA_CHECK(cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev));
    return ST_OK;
}

/* Whether the warp-specialized forward runs one CTA per SM (ONE) for nb
 * heads: where its waves lose nothing to quantization, i.e. the grid fits
 * the SMs or its last wave is at least 7/8 full. Measured on an H100
 * (docs/performance.md 1.11): at 256 and 512 heads (last waves of 124 and
 * 116 CTAs on 132 SMs) 3% faster than two CTAs per SM, at 192 (60) 4-11%
 * slower. */
static bool one_cta_per_sm(long nb, int sms)
{
    return nb <= sms || nb % sms == 0 || nb % sms >= sms - sms / 8;
}

/* The warp-specialized forward, one CTA per SM (ONE) or two. */
template <typename F, int SPLIT>
int launch_fwd_tcws(bool one, cudaStream_t stream, int B, int T, int H, int nck, const F *r,
                    const float *w, const F *k, const F *v, const F *a, const F *b, const float *s0, F *y,
                    float *s_final, float *ckpt, float *sa, const TmaMaps &maps, int use_tma, int pair, char *err)
{
    const auto kern = one ? wkv7_fwd_tcws_kernel<F, SPLIT, true> : wkv7_fwd_tcws_kernel<F, SPLIT, false>;
    using W1 = FwdWs<F, true>;
    using W2 = FwdWs<F, false>;
    const int smem = (int)(one ? sizeof(FwdSmem<F, W1::NST, W1::NPG>) : sizeof(FwdSmem<F, W2::NST, W2::NPG>));
    ST_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    kern<<<dim3(H, B), one ? W1::THREADS : W2::THREADS, smem, stream>>>(T, H, nck, r, w, k, v, a, b, s0, y, s_final,
                                                                        ckpt, sa, maps, use_tma, pair);
    ST_CUDA_CHECK_LAUNCH("wkv7_fwd_tcws_kernel");
    return ST_OK;
}

template <typename F>
int forward(int algo, int B, int T, int H, const F *r, const float *w, const F *k, const F *v, const F *a,
            const F *b, const float *s0, F *y, float *s_final, float *ckpt, int ckpt_every, float *sa,
            cudaStream_t stream, char *err)
{
    const int nck = (T + L - 1) / L;
    const int pair = ckpt_every == 2 * L; /* a checkpoint every two chunks (the launchers checked which forward) */
    if (pair && algo != WKV7_FWD_TCWS && algo != WKV7_FWD_TCWS1 && algo != WKV7_FWD_TCWSB)
        return st_fail(err, ST_EINVAL, "wkv7 tensor-core forward: algorithm %d has no checkpoint every %d tokens",
                       algo, ckpt_every);
    /* The warp-specialized kernels come first on purpose: the first kernel
     * instantiated fixes dyn_smem's alignment for the whole file (128, theirs,
     * which lets the compiler fold their TMA alignment check; nvcc warns
     * about the later __align__(16) declarations). */
    if (algo == WKV7_FWD_TCWS || algo == WKV7_FWD_TCWS1 || algo == WKV7_FWD_TCWSB) {
        /* 3xTF32 (TCWS), one tf32 product (TCWS1), bf16 operands in the
         * state warps (TCWSB) */
        TmaMaps maps;
        memset(&maps, 0, sizeof maps);
        const F *const x[5] = {r, k, v, a, b}; /* the forward's stage order */
        const int use_tma = tma_maps<F>(&maps, B, T, H, x, w);
        int sms = 0;
        const int rc = sm_count(&sms, err);
        if (rc != ST_OK) return rc;
        const bool one = one_cta_per_sm((long)B * H, sms); /* ONE above */
        if (algo == WKV7_FWD_TCWS)
            return launch_fwd_tcws<F, 3>(one, stream, B, T, H, nck, r, w, k, v, a, b, s0, y, s_final, ckpt, sa,
                                         maps, use_tma, pair, err);
        if (algo == WKV7_FWD_TCWS1)
            return launch_fwd_tcws<F, 1>(one, stream, B, T, H, nck, r, w, k, v, a, b, s0, y, s_final, ckpt, sa,
                                         maps, use_tma, pair, err);
        return launch_fwd_tcws<F, 16>(one, stream, B, T, H, nck, r, w, k, v, a, b, s0, y, s_final, ckpt, sa,
                                      maps, use_tma, pair, err);
    }
    if (algo != WKV7_FWD_TC)
        return st_fail(err, ST_EINVAL, "wkv7 tensor-core forward: unknown algorithm %d", algo);
    const int smem = (int)(2 * sizeof(Raw<F, 5>)); /* beside about 42 KB of static tiles */
    ST_CUDA_CHECK(cudaFuncSetAttribute(wkv7_fwd_tc_kernel<F, 3>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       smem));
    wkv7_fwd_tc_kernel<F, 3><<<dim3(H, B), NTH, smem, stream>>>(T, H, nck, r, w, k, v, a, b, s0, y, s_final, ckpt,
                                                                sa);
    ST_CUDA_CHECK_LAUNCH("wkv7_fwd_tc_kernel");
    return ST_OK;
}

/* The chunk-product backward: pass 1 (products of precision OP: 3xTF32 for
 * 3, one tf32 product for 1) with one chunk per segment, then pass 2 over
 * every chunk of every head. CPROD: the plain pass 1 and
 * wkv7_bwd_cprod_kernel; CPROD1WSSA: the warp-specialized pass 1 (WS) and
 * the 75 KB pass 2 by cp.async (SMALL). Workspace: D per chunk (B H nck N^2)
 * and dsa (B T H N) floats from the stream's pool. */
template <typename F, int OP, bool WS, bool SMALL>
int backward_cprod(int B, int T, int H, const F *r, const float *w, const F *k, const F *v, const F *a,
                   const F *b, const float *s0, const float *ckpt, const float *sa, const F *dy, F *dr, float *dw,
                   F *dk, F *dv, F *da, F *db, float *ds0, int pair, cudaStream_t stream, char *err)
{
    const int nck = (T + L - 1) / L;
    if (B > 65535 || H > 65535) /* grid (nck, H, B) */
        return st_fail(err, ST_EINVAL, "wkv7 chunk-product backward: B = %d or H = %d is above 65535", B, H);
    if (pair && !SMALL)
        return st_fail(err, ST_EINVAL, "wkv7 chunk-product backward: only CPROD1WSSA reads a checkpoint every "
                       "two chunks");
    /* pass 1 stores D at the end of every chunk, or of every pair of chunks
     * (and of the last chunk) when the forward checkpointed every pair */
    const int seg = pair ? 2 : 1;
    const size_t nstore = (size_t)B * H * ((nck + seg - 1) / seg) * N * N, ndsa = (size_t)B * T * H * N;
    int sms = 0; /* asked before the workspace is taken, so that failing here leaks nothing */
    const int rc = sm_count(&sms, err);
    if (rc != ST_OK) return rc;
    float *ws = NULL;
    ST_CUDA_CHECK(cudaMallocAsync((void **)&ws, (nstore + ndsa) * sizeof(float), stream));
    float *dstore = ws, *dsa = ws + nstore;
    cudaError_t e1 = cudaSuccess;
    if constexpr (WS) { /* pass 1 warp-specialized (producers two chunks ahead) */
        const int smem1 = (int)sizeof(BwdSmem<F>);
        TmaMaps maps;
        memset(&maps, 0, sizeof maps);
        const F *const x[5] = {r, a, b, dy, k}; /* pass 1's stage order */
        const int use_tma = tma_maps<F>(&maps, B, T, H, x, w);
        /* one CTA per SM: ONE above */
        const auto pass1 = (long)B * H <= sms ? wkv7_bwd_tcws_dstate_kernel<F, OP, true>
                                              : wkv7_bwd_tcws_dstate_kernel<F, OP, false>;
        e1 = cudaFuncSetAttribute(pass1, cudaFuncAttributeMaxDynamicSharedMemorySize, smem1);
        if (e1 == cudaSuccess) {
            pass1<<<dim3(H, B), 2 * NTH, smem1, stream>>>(T, H, nck, seg, r, w, a, b, dy, k, dstore, ds0, dsa, dv,
                                                          maps, use_tma);
            e1 = cudaGetLastError();
        }
    } else {
        const int smem1 = (int)(2 * sizeof(Raw<F, 5>) + (2 * L * LDK + 2 * L * LDG) * sizeof(float));
        e1 = cudaFuncSetAttribute(wkv7_bwd_tc_dstate_kernel<F, OP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  smem1);
        if (e1 == cudaSuccess) {
            wkv7_bwd_tc_dstate_kernel<F, OP><<<dim3(H, B), NTH, smem1, stream>>>(T, H, nck, 1, r, w, a, b, dy, k,
                                                                                 dstore, ds0, dsa, dv);
            e1 = cudaGetLastError();
        }
    }
    if constexpr (SMALL) {
        const int smem2 = (int)sizeof(CpSmallSmem);
        if (e1 == cudaSuccess)
            e1 = cudaFuncSetAttribute(wkv7_bwd_cprod_small_kernel<F, OP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      smem2);
        if (e1 == cudaSuccess) {
            wkv7_bwd_cprod_small_kernel<F, OP><<<dim3(nck, H, B), 256, smem2, stream>>>(
                T, H, nck, r, w, k, v, a, b, s0, ckpt, sa, dsa, dy, dstore, dr, dw, dk, da, db, pair);
            e1 = cudaGetLastError();
        }
    } else {
        const int smem2 = (int)sizeof(CpSmem);
        if (e1 == cudaSuccess)
            e1 = cudaFuncSetAttribute(wkv7_bwd_cprod_kernel<F, OP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      smem2);
        if (e1 == cudaSuccess) {
            wkv7_bwd_cprod_kernel<F, OP><<<dim3(nck, H, B), 256, smem2, stream>>>(T, H, nck, r, w, k, v, a, b, s0,
                                                                                  ckpt, sa, dsa, dy, dstore, dr, dw,
                                                                                  dk, da, db);
            e1 = cudaGetLastError();
        }
    }
    const cudaError_t e3 = cudaFreeAsync(ws, stream);
    if (e1 != cudaSuccess)
        return st_fail(err, ST_ECUDA, "wkv7 chunk-product backward: launch failed: %s", cudaGetErrorString(e1));
    if (e3 != cudaSuccess)
        return st_fail(err, ST_ECUDA, "freeing the wkv7 backward workspace failed: %s", cudaGetErrorString(e3));
    return ST_OK;
}

template <typename F>
int backward(int algo, int seg, int B, int T, int H, const F *r, const float *w, const F *k, const F *v,
             const F *a, const F *b, const float *ckpt, int ckpt_every, const float *sa, const F *dy, F *dr,
             float *dw, F *dk, F *dv, F *da, F *db, float *ds0, cudaStream_t stream, char *err)
{
    const int pair = ckpt_every == 2 * L;
    if (pair && algo != WKV7_BWD_CPROD1WSSA)
        return st_fail(err, ST_EINVAL, "wkv7 tensor-core backward: algorithm %d reads no checkpoint every %d tokens",
                       algo, ckpt_every);
    if (algo == WKV7_BWD_CPROD || algo == WKV7_BWD_CPROD1WSSA) {
        /* chunk 0 starts from s0, which every forward copies behind the
         * checkpoints (wkv7_cuda_ckpt_floats_every) */
        const float *s0 = ckpt + (size_t)B * H * ((T + ckpt_every - 1) / ckpt_every) * N * N;
        if (algo == WKV7_BWD_CPROD)
            return backward_cprod<F, 3, false, false>(B, T, H, r, w, k, v, a, b, s0, ckpt, sa, dy, dr, dw, dk, dv,
                                                      da, db, ds0, 0, stream, err);
        return backward_cprod<F, 1, true, true>(B, T, H, r, w, k, v, a, b, s0, ckpt, sa, dy, dr, dw, dk, dv, da, db,
                                                ds0, pair, stream, err);
    }
    if (algo != WKV7_BWD_CHUNKED && algo != WKV7_BWD_CHUNKED_WS)
        return st_fail(err, ST_EINVAL, "wkv7 tensor-core backward: unknown algorithm %d", algo);
    const int nck = (T + L - 1) / L;
    if (seg < 1) seg = 1;
    if (seg > nck) seg = nck;
    const int nseg = (nck + seg - 1) / seg;
    if (nseg > 65535)
        return st_fail(err, ST_EINVAL, "wkv7 (cuda): T = %d gives %d segments of %d chunks, more than 65535", T,
                       nseg, seg);
    /* workspace: the segment-end gradients and dsa, from the stream's memory
     * pool, freed in stream order once the passes are enqueued (the launcher
     * API has no workspace argument) */
    const size_t nstore = (size_t)B * H * nseg * N * N, ndsa = (size_t)B * T * H * N;
    float *ws = NULL;
    ST_CUDA_CHECK(cudaMallocAsync((void **)&ws, (nstore + ndsa) * sizeof(float), stream));
    float *dstore = ws, *dsa = ws + nstore;
    cudaError_t e1 = cudaSuccess;
    if (algo == WKV7_BWD_CHUNKED_WS) { /* warp-specialized pass 1 */
        const int smem = (int)sizeof(BwdSmem<F>);
        TmaMaps maps;
        memset(&maps, 0, sizeof maps);
        const F *const x[5] = {r, a, b, dy, k};
        const int use_tma = tma_maps<F>(&maps, B, T, H, x, w);
        e1 = cudaFuncSetAttribute(wkv7_bwd_tcws_dstate_kernel<F, 3>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  smem);
        if (e1 == cudaSuccess) {
            wkv7_bwd_tcws_dstate_kernel<F, 3><<<dim3(H, B), 2 * NTH, smem, stream>>>(T, H, nck, seg, r, w, a, b, dy, k,
                                                                                     dstore, ds0, dsa, dv, maps,
                                                                                     use_tma);
            e1 = cudaGetLastError();
        }
    } else {
        const int smem = (int)(2 * sizeof(Raw<F, 5>) + (2 * L * LDK + 2 * L * LDG) * sizeof(float));
        e1 = cudaFuncSetAttribute(wkv7_bwd_tc_dstate_kernel<F, 3>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  smem);
        if (e1 == cudaSuccess) {
            wkv7_bwd_tc_dstate_kernel<F, 3><<<dim3(H, B), NTH, smem, stream>>>(T, H, nck, seg, r, w, a, b, dy, k,
                                                                               dstore, ds0, dsa, dv);
            e1 = cudaGetLastError();
        }
    }
    if (e1 == cudaSuccess) { /* then the column pass over every segment */
        wkv7_bwd_col_kernel<F><<<dim3(H, B, nseg), 2 * N, 0, stream>>>(T, H, nck, seg, r, w, k, v, a, b, ckpt, sa,
                                                                       dsa, dy, dstore, dr, dw, dk, da, db);
        e1 = cudaGetLastError();
    }
    const cudaError_t e3 = cudaFreeAsync(ws, stream);
    if (e1 != cudaSuccess)
        return st_fail(err, ST_ECUDA, "wkv7 chunked backward: launch failed: %s", cudaGetErrorString(e1));
    if (e3 != cudaSuccess)
        return st_fail(err, ST_ECUDA, "freeing the wkv7 backward workspace failed: %s", cudaGetErrorString(e3));
    return ST_OK;
}

template int forward<float>(int, int, int, int, const float *, const float *, const float *, const float *,
                            const float *, const float *, const float *, float *, float *, float *, int, float *,
                            cudaStream_t, char *);
template int forward<__nv_bfloat16>(int, int, int, int, const __nv_bfloat16 *, const float *,
                                    const __nv_bfloat16 *, const __nv_bfloat16 *, const __nv_bfloat16 *,
                                    const __nv_bfloat16 *, const float *, __nv_bfloat16 *, float *, float *, int,
                                    float *, cudaStream_t, char *);
template int backward<float>(int, int, int, int, int, const float *, const float *, const float *, const float *,
                             const float *, const float *, const float *, int, const float *, const float *,
                             float *, float *, float *, float *, float *, float *, float *, cudaStream_t, char *);
template int backward<__nv_bfloat16>(int, int, int, int, int, const __nv_bfloat16 *, const float *,
                                     const __nv_bfloat16 *, const __nv_bfloat16 *, const __nv_bfloat16 *,
                                     const __nv_bfloat16 *, const float *, int, const float *,
                                     const __nv_bfloat16 *, __nv_bfloat16 *, float *, __nv_bfloat16 *,
                                     __nv_bfloat16 *, __nv_bfloat16 *, __nv_bfloat16 *, float *, cudaStream_t,
                                     char *);

} // namespace wkv7tc

