/*
 * floor.h - the measured floor of one CUDA tuning step, for dev_engine_bench
 * (issue #4: "if a target is out of reach, show why: the measured floor
 * (FLOPs and bytes per kernel) and the profile"). Header-only on purpose:
 * every .cu file in kernels/dev is built as its own program, and this is a
 * part of engine_bench.cu's, not one of its own.
 *
 * Three things, all on the card the bench runs on, in the same process:
 *   1. ceilings: the bf16 (or fp32) cuBLAS rate through cublasGemmEx with the
 *      engine's settings (fp32 compute, CUBLAS_DEFAULT_MATH with
 *      DISALLOW_REDUCED_PRECISION_REDUCTION, CUBLAS_GEMM_DEFAULT) on a large
 *      square product and on every product call of the engine's step at its
 *      own m, n, k (forward and dX forms, batched as the engine batches
 *      them); device memory bandwidth by a device-to-device copy and by a
 *      streaming read+write kernel;
 *   2. per operation class of the fine profile (engine_cuda_set_profiling
 *      level 2): FLOPs (products, WKV7), the bytes today's kernels must move
 *      (each tensor they read or write counted once, at its element size:
 *      fl_class_model says which tensors), the measured ms, the achieved
 *      TFLOP/s and TB/s, and the class's floor at the ceilings of 1;
 *   3. four step floors and the tokens/s each allows, beside SPEC section 8's
 *      target: (i) every class at its own floor; (ii) products at the large
 *      square rate, WKV7 at its measured time, no element-wise pass at all
 *      (the best any fusion of the element-wise work into the products could
 *      do with today's WKV7); (iii) as (ii) with WKV7 at SPEC's own kernel
 *      targets where they apply; (iv) as (i) with WKV7 as in (iii): every
 *      class of today's kernels at its floor but WKV7, whose byte floor a
 *      serial chain per head cannot reach at the engine's 96-256 heads, at
 *      its measured time or SPEC's kernel target, whichever is faster.
 *
 * What the floors leave out, on purpose: launch gaps and host work (the
 * bench prints them beside), the optimizer update (a few MB), per-channel
 * parameter vectors (C floats each, read from L2), the scalar per-row
 * outputs (loss, argmax). The byte model is the plain plan's (no recompute)
 * with the bench's default products (r/k/v and the w/a LoRA batched unless
 * STATETUNE_GEMM_BATCH=0); a class whose name the model does not know
 * (renamed or new in engine_cuda.cu) is printed without a floor.
 */
#ifndef ST_DEV_FLOOR_H
#define ST_DEV_FLOOR_H

#include "kernels/cuda/wkv7.cuh"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <string>
#include <vector>

/* The shape of the benched engine, as the byte and FLOP model needs it. */
struct fl_shape {
    int L, C, H, N, F, V, B, T;
    int Dw, Da, Dv, Dg; /* LoRA widths: decay, a, v, gate */
    int head_chunk;     /* rows of logits per head product */
    int es;             /* bytes of an activation / weight element: 2 (bf16) or 4 (fp32) */
    int batched;        /* the engine batches r/k/v and the w/a LoRA (STATETUNE_GEMM_BATCH != 0) */
};

/* One kind of product call in a step: C (m x n) = op(A) (m x k) B (k x n),
 * column-major as cuBLAS sees it; `count` calls of it per step. */
struct fl_gemm {
    const char *cls;  /* the fine profile's class name */
    const char *role; /* what it is */
    int tA;           /* A transposed (CUBLAS_OP_T: the forward of a linear layer, a LoRA's backward) */
    int m, n, k, batch;
    int c_f32;   /* output in fp32 (decay LoRA, logits) */
    int beta1;   /* accumulates into C (C read too) */
    double count;
    float ms; /* measured: ms of one call on its own (fl_measure) */
};

struct fl_ceilings {
    char card[256];
    int sms;
    float sq_ms[2];      /* 8192^3, forward (T,N) and dX (N,N) forms */
    double gemm_tflops;  /* the larger of the two */
    double bw_copy;      /* TB/s, cudaMemcpyAsync device to device, bytes read + written */
    double bw_stream;    /* TB/s, a float4 read + write kernel (the faster of 1 and 4 float4 a thread) */
    double bw;           /* the larger of the two: the floors' bandwidth */
};

/* Every product of the step (engine_cuda.cu: layer_fwd, layer_bwd,
 * run_forward, lora_*): R = B x T rows. Layer 0 has no v LoRA and its
 * backward stops after its WKV (no r/k/v or LoRA dX, no token-shift
 * backward of the time mix); the head runs in chunks of head_chunk rows. */
static std::vector<fl_gemm> fl_products(const fl_shape *s)
{
    const int L = s->L, C = s->C, F = s->F, V = s->V, R = s->B * s->T;
    const int hc = std::min(s->head_chunk, R);
    const double nch = (double)R / hc; /* chunks (a last, smaller chunk counts as a fraction) */
    const int bw = s->batched && s->Dw == s->Da;
    std::vector<fl_gemm> g;
    auto add = [&](const char *cls, const char *role, int tA, int m, int n, int k, int batch, int c_f32, int beta1,
                   double count) {
        if (count > 0 && m > 0 && n > 0 && k > 0) g.push_back({cls, role, tA, m, n, k, batch, c_f32, beta1, count, 0.f});
    };
    /* r, k, v: forward out (R, C) = x (R, C) W^T; dX dinp = dout W */
    if (s->batched) {
        add("gemm r/k/v", "r/k/v fwd x3", 1, C, R, C, 3, 0, 0, L);
        add("gemm r/k/v", "r/k/v dX x3", 0, C, R, C, 3, 0, 0, L - 1);
    } else {
        add("gemm r/k/v", "r/k/v fwd", 1, C, R, C, 1, 0, 0, 3.0 * L);
        add("gemm r/k/v", "r/k dX", 0, C, R, C, 1, 0, 0, 2.0 * (L - 1));
        add("gemm r/k/v", "v dX (+=)", 0, C, R, C, 1, 0, 1, L - 1); /* value's dX adds to the LoRA's */
    }
    /* LoRAs: hid (R, D) = x W1, out (R, C) = act(hid) W2; backward dhid =
     * dout W2^T, dx = dhid W1^T */
    const char *lo = "gemm LoRA (w,a,v,g)";
    /* vbatch (engine_cuda.cu): v's LoRA padded to w's width joins w's and
     * a's products in layers 1 .. L - 1 (layer 0 has none) */
    const int vb = bw && s->Dv > 0 && s->Dv <= s->Dw;
    if (vb) {
        add(lo, "LoRA w,a down fwd x2 (layer 0)", 0, s->Dw, R, C, 2, 0, 0, 1);
        add(lo, "LoRA v,w,a down fwd x3", 0, s->Dw, R, C, 3, 0, 0, L - 1);
        add(lo, "LoRA v,w,a dhid x3", 1, s->Dw, R, C, 3, 0, 0, L - 1);
        add(lo, "LoRA w,a dX x2", 1, C, R, s->Dw, 2, 0, 0, L - 1);
    } else if (bw) {
        add(lo, "LoRA w,a down fwd x2", 0, s->Dw, R, C, 2, 0, 0, L);
        add(lo, "LoRA w,a dhid x2", 1, s->Dw, R, C, 2, 0, 0, L - 1);
        add(lo, "LoRA w,a dX x2", 1, C, R, s->Dw, 2, 0, 0, L - 1);
    } else {
        add(lo, "LoRA w down fwd", 0, s->Dw, R, C, 1, 0, 0, L);
        add(lo, "LoRA a down fwd", 0, s->Da, R, C, 1, 0, 0, L);
        add(lo, "LoRA w dhid", 1, s->Dw, R, C, 1, 0, 0, L - 1);
        add(lo, "LoRA a dhid", 1, s->Da, R, C, 1, 0, 0, L - 1);
        add(lo, "LoRA w dX", 1, C, R, s->Dw, 1, 0, 0, L - 1);
        add(lo, "LoRA a dX", 1, C, R, s->Da, 1, 0, 0, L - 1);
    }
    add(lo, "LoRA w up fwd (fp32 out)", 0, C, R, s->Dw, 1, 1, 0, L);
    if (vb) {
        add(lo, "LoRA a up fwd (layer 0)", 0, C, R, s->Da, 1, 0, 0, 1);
        add(lo, "LoRA v,a up fwd x2", 0, C, R, s->Dw, 2, 0, 0, L - 1);
        add(lo, "LoRA v dX (+=, padded)", 1, C, R, s->Dw, 1, 0, 1, L - 1);
    } else {
        add(lo, "LoRA a up fwd", 0, C, R, s->Da, 1, 0, 0, L);
        add(lo, "LoRA v down fwd", 0, s->Dv, R, C, 1, 0, 0, L - 1);
        add(lo, "LoRA v up fwd", 0, C, R, s->Dv, 1, 0, 0, L - 1);
        add(lo, "LoRA v dhid", 1, s->Dv, R, C, 1, 0, 0, L - 1);
        add(lo, "LoRA v dX (+=)", 1, C, R, s->Dv, 1, 0, s->batched, L - 1);
    }
    add(lo, "LoRA g down fwd", 0, s->Dg, R, C, 1, 0, 0, L);
    add(lo, "LoRA g up fwd", 0, C, R, s->Dg, 1, 0, 0, L);
    add(lo, "LoRA g dhid", 1, s->Dg, R, C, 1, 0, 0, L - 1);
    add(lo, "LoRA g dX", 1, C, R, s->Dg, 1, 0, 0, L - 1);
    add("gemm output", "output fwd", 1, C, R, C, 1, 0, 0, L);
    add("gemm output", "output dX", 0, C, R, C, 1, 0, 0, L);
    add("gemm ffn key", "ffn key fwd", 1, F, R, C, 1, 0, 0, L);
    add("gemm ffn key", "ffn key dX", 0, C, R, F, 1, 0, 0, L);
    add("gemm ffn value", "ffn value fwd", 1, C, R, F, 1, 0, 0, L);
    add("gemm ffn value", "ffn value dX", 0, F, R, C, 1, 0, 0, L);
    add("gemm head", "head fwd (fp32 logits)", 1, V, hc, C, 1, 1, 0, nch);
    add("gemm head", "head dX", 0, C, hc, V, 1, 0, 0, nch);
    return g;
}

static double fl_gemm_flop(const fl_gemm &g) { return 2.0 * g.m * g.n * g.k * g.batch; }
static double fl_gemm_bytes(const fl_gemm &g, int es)
{
    const double c = (double)g.m * g.n * (g.c_f32 ? 4 : es);
    return g.batch * ((double)g.m * g.k * es + (double)g.k * g.n * es + c * (g.beta1 ? 2 : 1));
}

/* WKV7's FLOPs and bytes per step (L forwards and L backwards; the launch
 * rule is wkv7_cuda_auto_algo_prec). FLOPs: the recurrence's 8 N^2 per (b, t,
 * h) forward and about 26 N^2 backward (kernels/dev/wkv7_bench.cu's count;
 * the chunked tensor-core forms do more). Bytes: forward reads r, k, v, a, b
 * (T) and w (fp32), writes y (T) and sa (fp32); backward reads r, k, v, a,
 * b, dy (T), w and sa (fp32), writes dr, dk, dv, da, db (T) and dw (fp32);
 * the fp32 checkpoints (the state every 16 tokens) are written once and read
 * once; the chunk-product backward (the bf16 AUTO) also writes and reads its
 * workspace, dS at every chunk end and dsa (B, T, H, N) fp32; the fp32
 * chunked backward the same with dS every 64 tokens. */
static void fl_wkv(const fl_shape *s, int sms, double *flop, double *bytes)
{
    const int B = s->B, T = s->T, H = s->H, N = s->N, es = s->es;
    const double rows = (double)B * T * H;
    *flop = s->L * rows * 34.0 * N * N;
    const double fwd = rows * N * (5.0 * es + 4 + es + 4), bwd = rows * N * (6.0 * es + 8 + 5.0 * es + 4);
    double ws = 0;
    const int ba = wkv7_cuda_auto_algo_prec(0, es == 2, B, H, sms);
    if (ba >= WKV7_BWD_CPROD)
        ws = 2.0 * 4 * ((double)B * H * ((T + 15) / 16) * N * N + rows * N);
    else if (ba == WKV7_BWD_CHUNKED || ba == WKV7_BWD_CHUNKED_WS)
        ws = 2.0 * 4 * ((double)B * H * ((T + 63) / 64) * N * N + rows * N);
    *bytes = s->L * (fwd + bwd + 2.0 * 4 * wkv7_cuda_ckpt_floats(B, T, H) + ws);
}

/* One class of the fine profile: its name (engine_cuda_profile_class), its
 * FLOPs and bytes per step, and whether it is a product, WKV7 or an
 * element-wise pass. */
enum { FL_GEMM, FL_WKV, FL_EW };
struct fl_class {
    const char *name;
    int kind;
    double flop, bytes;
    double cublas_ms; /* products: the sum of their calls' own times */
};

/* The element-wise classes' bytes per step, from the kernels' arguments in
 * engine_cuda.cu and the kernels/cuda headers, each tensor once at its element size
 * (es for T, 4 for fp32). RC = R x C, RF = R x F, RH = R x H; "layers 1.."
 * are the L - 1 layers whose backward goes past the WKV. */
static std::vector<fl_class> fl_class_model(const fl_shape *s, int sms, const std::vector<fl_gemm> &g)
{
    const double L = s->L, R = (double)s->B * s->T, RC = R * s->C, RF = R * s->F, RH = R * s->H, es = s->es;
    const double V = s->V;
    const double dxt = es == 2 ? es : 0; /* the LayerNorm backwards' T copy of dx (bf16 only) */
    std::vector<fl_class> c;
    for (const char *n : {"gemm r/k/v", "gemm LoRA (w,a,v,g)", "gemm output", "gemm ffn key", "gemm ffn value",
                          "gemm head"}) {
        fl_class k = {n, FL_GEMM, 0, 0, 0};
        for (const fl_gemm &x : g)
            if (!strcmp(x.cls, n)) {
                k.flop += x.count * fl_gemm_flop(x);
                k.bytes += x.count * fl_gemm_bytes(x, s->es);
                k.cublas_ms += x.count * x.ms;
            }
        c.push_back(k);
    }
    fl_class w = {"WKV7", FL_WKV, 0, 0, 0};
    fl_wkv(s, sms, &w.flop, &w.bytes);
    c.push_back(w);
    /* LayerNorms, each but ln0 and ln_out with the token shift after it
     * (ln_shift.cuh; the neighbour rows' second reads are left out: they
     * come from L2). Forward: ln0 in place (fp32 read + write); layer 0's
     * LN1 reads fp32 x and writes six lerps (T); per layer the residual +
     * LN2 reads fp32 x and the T branch, writes the fp32 sum and one lerp;
     * the residual + next LN1 (layers 0..L-2) the same with six lerps, the
     * last layer's residual + ln_out one T output. Backward: ln_out reads
     * fp32 x, T dout, fp32 dx, writes fp32 dx and its T copy; LN2 every
     * layer the same with the one lerp's gradient for dout, LN1 in layers
     * 1.. with the six. 8 bytes of statistics a row each way. */
    const double lnb = (12 + dxt) * RC + 8 * R; /* a backward without its dout */
    c.push_back({"layernorm + shift", FL_EW, 0,
                 8 * RC + (4 + 6 * es) * RC + 8 * R + L * ((8 + 2 * es) * RC + 8 * R) +
                     (L - 1) * ((8 + 7 * es) * RC + 8 * R) + (8 + 2 * es) * RC + 8 * R +
                     (lnb + es * RC) + L * (lnb + es * RC) + (L - 1) * (lnb + 6 * es * RC),
                 0});
    /* GroupNorm + bonus + gate: forward reads y, r, kf, v, g, writes the
     * gated output and two fp32 statistics per (row, head); backward reads
     * the same five, their statistics and dout, writes dy, dbr, dbk, dbv, dg */
    c.push_back({"groupnorm+bonus+g", FL_EW, 0, L * (6 * es * RC + 8 * RH) + L * (11 * es * RC + 8 * RH), 0});
    /* LoRA activations in place on (R, D): tanh (w) and sigmoid (g) forward;
     * backward reads hid and dhid, writes dhid (layers 1..) */
    c.push_back({"LoRA tanh/sigmoid", FL_EW, 0,
                 L * 2 * es * R * (s->Dw + s->Dg) + (L - 1) * 3 * es * R * (s->Dw + s->Dg), 0});
    /* time mix: forward reads wl (fp32), the a LoRA's output and kraw,
     * writes w (fp32), a, kk, kf and the WKV's a and b inputs; backward
     * (layers 1..) reads wl, dw (fp32), a, kk, kraw, dkf, dbk, da, db,
     * writes dwl, dal, dkraw */
    c.push_back({"w/a/kk (timemix)", FL_EW, 0, L * (8 + 7 * es) * RC + (L - 1) * (8 + 10 * es) * RC, 0});
    /* v mix: layer 0 copies vraw to v and to v_first (two device copies);
     * layers 1.. read vs, vraw, v_first and write vs, v; backward reads s,
     * dv, dbv, vraw, v_first and writes dvraw, dvl */
    c.push_back({"v mix / v_first", FL_EW, 0, 4 * es * RC + (L - 1) * 5 * es * RC + (L - 1) * 7 * es * RC, 0});
    /* relu^2: forward kpre -> act; backward reads kpre and dact, writes dact */
    c.push_back({"relu^2", FL_EW, 0, L * 2 * es * RF + L * 3 * es * RF, 0});
    /* residual adds: in the plain plan only the backward's dr += dbr (layers 1..) */
    c.push_back({"residual/add3", FL_EW, 0, (L - 1) * 3 * es * RC, 0});
    /* CE: fp32 logits read, T dlogits written (the second read of a row is
     * left out: it comes from L2 when it can) */
    c.push_back({"CE softmax", FL_EW, 0, R * V * (4 + es), 0});
    /* the backward's dx memset (fp32) */
    c.push_back({"converts/memsets", FL_EW, 0, 4 * RC, 0});
    /* embedding: token ids, their rows (T), x (fp32) written */
    c.push_back({"embedding", FL_EW, 0, (es + 4) * RC + 4 * R, 0});
    return c;
}

/* ---- ceilings ---- */

__global__ void fl_fill_kernel(unsigned short *p, size_t n, unsigned seed)
{
    /* small values of either sign, as bf16 bits (or the high halves of
     * fp32 ones): products of zeros would run at an unrealistic power */
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned x = (unsigned)i * 2654435761u ^ seed;
        x ^= x >> 15;
        x *= 2246822519u;
        x ^= x >> 13;
        p[i] = (unsigned short)(0x3c00 | (x & 0x00ff) | ((x >> 8) & 1) << 15); /* +-(2^-7 .. 2^-6) */
    }
}

/* y = x * 1.0001 over n float4, U of them per thread (a block covers
 * U x blockDim consecutive float4, each load coalesced): U loads in flight
 * per thread before the first store. n must be a multiple of U x blockDim. */
template <int U>
__global__ void fl_stream_kernel(const float4 *__restrict__ x, float4 *__restrict__ y)
{
    const size_t base = (size_t)blockIdx.x * blockDim.x * U + threadIdx.x;
    float4 v[U];
#pragma unroll
    for (int j = 0; j < U; j++) v[j] = x[base + (size_t)j * blockDim.x];
#pragma unroll
    for (int j = 0; j < U; j++) {
        v[j].x *= 1.0001f; v[j].y *= 1.0001f; v[j].z *= 1.0001f; v[j].w *= 1.0001f;
        y[base + (size_t)j * blockDim.x] = v[j];
    }
}

#define FL_CK(call)                                                                                      \
    do {                                                                                                 \
        cudaError_t e_ = (call);                                                                         \
        if (e_ != cudaSuccess) {                                                                         \
            rc = st_fail(err, ST_ECUDA, "floor: %s failed: %s", #call, cudaGetErrorString(e_));         \
            goto done;                                                                                   \
        }                                                                                                \
    } while (0)
#define FL_CB(call)                                                                                      \
    do {                                                                                                 \
        cublasStatus_t s_ = (call);                                                                      \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                               \
            rc = st_fail(err, ST_ECUDA, "floor: %s failed: cuBLAS status %d", #call, (int)s_);           \
            goto done;                                                                                   \
        }                                                                                                \
    } while (0)

/* One product call as engine_cuda.cu's gemm_n makes it with gemm_lt 0
 * (cublasGemmEx / cublasGemmStridedBatchedEx, the brief's ceiling): lda m
 * (A plain) or k (A transposed), ldb k, ldc m; batch operands a whole operand
 * apart. Engines with STATETUNE_GEMM_LT 1 or 2 (2, cuBLASLt's timed choice,
 * is the default since a6422eb) run the same shapes through cuBLASLt and may
 * beat these times by a few per cent. */
static cublasStatus_t fl_gemm_call(cublasHandle_t h, const fl_gemm &g, int es, const void *A, const void *B, void *C)
{
    const float alpha = 1.f, beta = g.beta1 ? 1.f : 0.f;
    const cudaDataType_t t = es == 2 ? CUDA_R_16BF : CUDA_R_32F, tc = g.c_f32 ? CUDA_R_32F : t;
    const cublasOperation_t ta = g.tA ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int lda = g.tA ? g.k : g.m;
    if (g.batch > 1)
        return cublasGemmStridedBatchedEx(h, ta, CUBLAS_OP_N, g.m, g.n, g.k, &alpha, A, t, lda, (long long)g.m * g.k, B,
                                          t, g.k, (long long)g.k * g.n, &beta, C, tc, g.m, (long long)g.m * g.n,
                                          g.batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return cublasGemmEx(h, ta, CUBLAS_OP_N, g.m, g.n, g.k, &alpha, A, t, lda, B, t, g.k, &beta, C, tc, g.m,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

static float fl_median(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.f : v[v.size() / 2];
}

/* Measures the ceilings and each product call's own time (g[i].ms), by
 * `timed` below. Under a second at the largest shape. */
static int fl_measure(const fl_shape *s, std::vector<fl_gemm> &g, fl_ceilings *out, char *err)
{
    const int SQ = 8192, reps = 7;
    int rc = ST_OK, dev = 0;
    cublasHandle_t h = NULL;
    cudaStream_t st = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    void *A = NULL, *B = NULL, *C = NULL;
    size_t na = (size_t)SQ * SQ * s->es, nb = na, nc = (size_t)SQ * SQ * 4, nbw = (size_t)512 << 20;
    cudaDeviceProp prop;
    memset(out, 0, sizeof *out);
    for (const fl_gemm &x : g) {
        na = std::max(na, (size_t)x.batch * x.m * x.k * s->es);
        nb = std::max(nb, (size_t)x.batch * x.k * x.n * s->es);
        nc = std::max(nc, (size_t)x.batch * x.m * x.n * (x.c_f32 ? 4 : s->es));
    }
    nb = std::max(nb, nbw); /* the bandwidth runs reuse A and B */
    na = std::max(na, nbw);
    FL_CK(cudaGetDevice(&dev));
    FL_CK(cudaGetDeviceProperties(&prop, dev));
    snprintf(out->card, sizeof out->card, "%s", prop.name);
    out->sms = prop.multiProcessorCount;
    FL_CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    FL_CK(cudaEventCreate(&e0));
    FL_CK(cudaEventCreate(&e1));
    FL_CK(cudaMalloc(&A, na));
    FL_CK(cudaMalloc(&B, nb));
    FL_CK(cudaMalloc(&C, nc));
    fl_fill_kernel<<<4 * out->sms, 256, 0, st>>>((unsigned short *)A, na / 2, 1u);
    fl_fill_kernel<<<4 * out->sms, 256, 0, st>>>((unsigned short *)B, nb / 2, 2u);
    FL_CK(cudaMemsetAsync(C, 0, nc, st));
    FL_CK(cudaGetLastError());
    FL_CB(cublasCreate(&h));
    FL_CB(cublasSetStream(h, st));
    FL_CB(cublasSetMathMode(h, (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    {
        /* each timed thing: batches of k calls back to back between a pair
         * of events, so that the queue stays full as in a step and the host's
         * launch cost (several us for a cuBLAS call) is hidden as it is
         * there; k makes a batch about 1 ms (3 to 64 calls). A first batch of
         * 3 warms up and gives the estimate; then the median over `reps`
         * batches of the batch's ms / k. */
        auto timed = [&](auto body, float *ms) -> int {
            auto batch = [&](int k, float *x) -> int {
                if (cudaEventRecord(e0, st) != cudaSuccess) return -1;
                for (int j = 0; j < k; j++)
                    if (body()) return -1;
                if (cudaEventRecord(e1, st) != cudaSuccess || cudaEventSynchronize(e1) != cudaSuccess) return -1;
                if (cudaEventElapsedTime(x, e0, e1) != cudaSuccess) return -1;
                *x /= k;
                return 0;
            };
            float est = 0;
            if (batch(3, &est)) return -1;
            const int k = est > 0 ? std::max(3, std::min(64, (int)(1.0f / est))) : 64;
            std::vector<float> t(reps);
            for (int i = 0; i < reps; i++)
                if (batch(k, &t[i])) return -1;
            *ms = fl_median(t);
            return 0;
        };
        for (int f = 0; f < 2; f++) {
            fl_gemm sq = {"", "", 1 - f, SQ, SQ, SQ, 1, 0, 0, 1, 0.f};
            if (timed([&]() { return (int)fl_gemm_call(h, sq, s->es, A, B, C); }, &out->sq_ms[f])) {
                rc = st_fail(err, ST_ECUDA, "floor: the %d^3 product failed", SQ);
                goto done;
            }
            out->gemm_tflops = std::max(out->gemm_tflops, fl_gemm_flop(sq) / (out->sq_ms[f] * 1e-3) / 1e12);
        }
        for (fl_gemm &x : g)
            if (timed([&]() { return (int)fl_gemm_call(h, x, s->es, A, B, C); }, &x.ms)) {
                rc = st_fail(err, ST_ECUDA, "floor: the product '%s' (m %d n %d k %d) failed", x.role, x.m, x.n,
                             x.k);
                goto done;
            }
        float ms = 0;
        if (timed([&]() { return (int)cudaMemcpyAsync(B, A, nbw, cudaMemcpyDeviceToDevice, st); }, &ms)) {
            rc = st_fail(err, ST_ECUDA, "floor: the device-to-device copy failed");
            goto done;
        }
        out->bw_copy = 2.0 * nbw / (ms * 1e-3) / 1e12;
        /* nbw / 16 float4 = 2^25: a multiple of U x 256 for both */
        const unsigned n4 = (unsigned)(nbw / 16);
        float ms1 = 0, ms4 = 0;
        if (timed([&]() {
                fl_stream_kernel<1><<<n4 / 256, 256, 0, st>>>((const float4 *)A, (float4 *)B);
                return (int)cudaGetLastError();
            }, &ms1) ||
            timed([&]() {
                fl_stream_kernel<4><<<n4 / 1024, 256, 0, st>>>((const float4 *)A, (float4 *)B);
                return (int)cudaGetLastError();
            }, &ms4)) {
            rc = st_fail(err, ST_ECUDA, "floor: the streaming kernel failed");
            goto done;
        }
        out->bw_stream = 2.0 * nbw / (std::min(ms1, ms4) * 1e-3) / 1e12;
        out->bw = std::max(out->bw_copy, out->bw_stream);
    }
done:
    if (h) cublasDestroy(h);
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    if (st) cudaStreamDestroy(st);
    return rc;
}

/* SPEC section 8's step target in tokens/s for this shape, or 0 when the
 * shape is not one of its three (batch 8 x ctx 1024, vocab 65536, bf16). */
static double fl_spec_target(const fl_shape *s)
{
    if (s->B != 8 || s->T != 1024 || s->V != 65536 || s->es != 2) return 0;
    if (s->L == 12 && s->C == 768) return 362000;
    if (s->L == 24 && s->C == 1024) return 189000;
    if (s->L == 24 && s->C == 2048) return 82500;
    return 0;
}

/* SPEC section 8's WKV7 kernel targets (forward + backward with s0 and dS0,
 * ms) that apply to one layer's (B, T, H): the exact shape's, or, for the
 * same B and T at fewer heads, that row's as an upper bound (today's kernels
 * run one CTA per head, so a kernel that meets it at more heads meets it at
 * fewer); 0 when none applies. *rate_ms: the same-T row's target scaled by
 * the number of heads (the target's throughput), 0 when no row has this T. */
static double fl_wkv_target(int B, int T, int H, double *rate_ms, const char **why)
{
    static const struct { int B, T, H; double ms; } row[3] = {{8, 4096, 64, 7.0}, {8, 1024, 32, 1.5}, {16, 512, 12, 0.8}};
    *rate_ms = 0;
    *why = "no SPEC WKV7 target applies to this shape";
    double t = 0;
    for (int i = 0; i < 3; i++) {
        if (row[i].T == T && *rate_ms == 0) *rate_ms = row[i].ms * ((double)B * H) / ((double)row[i].B * row[i].H);
        if (row[i].B == B && row[i].T == T && row[i].H == H) {
            *why = "SPEC's target for this exact (B, T, H)";
            return row[i].ms;
        }
        if (row[i].B == B && row[i].T == T && row[i].H > H && t == 0) {
            t = row[i].ms;
            *why = "SPEC's target for the same B, T at more heads, as a bound";
        }
    }
    return t;
}

static void fl_verdict(double target, double tps, const char *label)
{
    if (target <= 0) return;
    printf("    -> SPEC target %.0f tok/s is %s floor %s (%.0f tok/s, %.0f%% of the target)\n", target,
           target > tps ? "BEYOND" : "within", label, tps, 100.0 * tps / target);
}

/* Prints the floor report (after the fine profile). cls_ms / cls_launches:
 * the fine profile's per-class totals over the step (ms summed over the
 * forward, head and backward phases), indexed as engine_cuda_profile_class;
 * busy_ms their sum, wall_ms the eager step by the host's clock. */
static void fl_print(const fl_shape *s, const std::vector<fl_gemm> &g, const fl_ceilings &ce,
                     const std::vector<float> &cls_ms, const std::vector<int> &cls_launches,
                     const char *const *cls_names, float busy_ms, float wall_ms, int recompute)
{
    const double R = (double)s->B * s->T;
    const char *dt = s->es == 2 ? "bf16" : "fp32";
    printf("\n== floor (%s, %d SMs; same process) ==\n", ce.card, ce.sms);
    printf("ceilings: %s cublasGemmEx 8192^3 (fp32 compute, the engine's math mode): fwd form (T,N) %.3f ms = %.0f "
           "TFLOP/s, dX form (N,N) %.3f ms = %.0f TFLOP/s; bandwidth: device copy %.2f TB/s, streaming read+write "
           "kernel %.2f TB/s (bytes read + written; floors use %.0f TFLOP/s and %.2f TB/s)\n",
           dt, ce.sq_ms[0], 2.0 * 8192 * 8192 * 8192 / (ce.sq_ms[0] * 1e-3) / 1e12, ce.sq_ms[1],
           2.0 * 8192 * 8192 * 8192 / (ce.sq_ms[1] * 1e-3) / 1e12, ce.bw_copy, ce.bw_stream, ce.gemm_tflops, ce.bw);
    printf("products alone at the engine's shapes through cublasGemmEx (ms a call: median of 7 batches of 3-64 calls "
           "back to back; m n k as cuBLAS sees them; an engine on cuBLASLt, STATETUNE_GEMM_LT 1 or 2, may be a little "
           "faster):\n");
    printf("  %-26s %6s %6s %6s %5s %7s %9s %8s %8s\n", "role", "m", "n", "k", "batch", "calls", "ms/call", "TFLOP/s",
           "ms/step");
    for (const fl_gemm &x : g)
        printf("  %-26s %6d %6d %6d %5d %7.2f %9.4f %8.0f %8.2f\n", x.role, x.m, x.n, x.k, x.batch, x.count, x.ms,
               fl_gemm_flop(x) / (x.ms * 1e-3) / 1e12, x.count * x.ms);
    if (recompute)
        printf("note: this engine recomputes each layer's forward in the backward; the model below is the plain "
               "plan's (each forward once)\n");
    std::vector<fl_class> model = fl_class_model(s, ce.sms, g);
    printf("per class (fine profile ms; FLOPs and the bytes today's kernels move, each tensor once; floor = "
           "max(FLOP at %.0f TF/s, bytes at %.2f TB/s)):\n", ce.gemm_tflops, ce.bw);
    printf("  %-22s %9s %9s %9s %8s %8s %9s %9s %8s\n", "class", "GFLOP", "GB", "ms", "TFLOP/s", "TB/s", "floor ms",
           "cuBLAS ms", "x floor");
    double f_i = 0, fi_gemm = 0, fi_wkv = 0, fi_ew = 0, gemm_peak = 0, gemm_cublas = 0, wkv_ms = 0, ew_ms = 0, gemm_ms = 0, unmodelled = 0;
    for (size_t i = 0; i < cls_ms.size(); i++) {
        if (!cls_names[i] || cls_launches[i] == 0) continue;
        const fl_class *m = NULL;
        for (const fl_class &k : model)
            if (!strcmp(k.name, cls_names[i])) m = &k;
        const double ms = cls_ms[i];
        if (!m) {
            printf("  %-22s %9s %9s %9.2f   (no byte model: not counted in the floors)\n", cls_names[i], "-", "-", ms);
            unmodelled += ms;
            continue;
        }
        const double tf = m->flop / ce.gemm_tflops / 1e9, tb = m->bytes / ce.bw / 1e9;
        const double fl = std::max(tf, tb);
        f_i += fl;
        char fs[16] = "-", ts[16] = "-", cs[16] = "-";
        if (m->flop > 0) snprintf(fs, sizeof fs, "%.0f", m->flop / (ms * 1e-3) / 1e12);
        if (m->kind == FL_GEMM) snprintf(cs, sizeof cs, "%.2f", m->cublas_ms);
        snprintf(ts, sizeof ts, "%.2f", m->bytes / (ms * 1e-3) / 1e12);
        printf("  %-22s %9.1f %9.2f %9.2f %8s %8s %9.2f %9s %8.1f\n", m->name, m->flop / 1e9, m->bytes / 1e9, ms, fs, ts,
               fl, cs, ms / fl);
        (m->kind == FL_GEMM ? fi_gemm : m->kind == FL_WKV ? fi_wkv : fi_ew) += fl;
        if (m->kind == FL_GEMM) {
            gemm_peak += tf;
            gemm_cublas += m->cublas_ms;
            gemm_ms += ms;
        } else if (m->kind == FL_WKV) {
            wkv_ms += ms;
        } else {
            ew_ms += ms;
        }
    }
    const double target = fl_spec_target(s);
    printf("step floors (B %d x T %d = %.0f tokens a step; measured: fine-profile busy %.2f ms = %.0f tok/s, eager "
           "wall %.2f ms; products %.2f ms, WKV7 %.2f ms, element-wise %.2f ms%s):\n",
           s->B, s->T, R, busy_ms, R / (busy_ms * 1e-3), wall_ms, gemm_ms, wkv_ms, ew_ms,
           unmodelled > 0 ? ", some unmodelled" : "");
    printf("  (every floor is GPU time of the forward, head and backward only: no launch gaps, host copies or "
           "optimizer update)\n");
    if (target > 0)
        printf("  SPEC section 8 target: %.0f tok/s = %.2f ms a step\n", target, R / target * 1e3);
    else
        printf("  no SPEC section 8 target for this shape (they are B 8 x T 1024, V 65536, bf16 at 12x768, 24x1024, "
               "24x2048)\n");
    printf("  (i)   every class at its own floor (today's kernels, each tensor once at %.2f TB/s, products at %.0f "
           "TF/s): products %.2f + WKV7 %.2f + element-wise %.2f = %.2f ms -> %.0f tok/s\n", ce.bw, ce.gemm_tflops, fi_gemm,
           fi_wkv, fi_ew, f_i, R / (f_i * 1e-3));
    fl_verdict(target, R / (f_i * 1e-3), "(i)");
    const double f_ii = gemm_peak + wkv_ms;
    printf("  (ii)  products at the %d^3 rate (%.2f ms) + WKV7 as measured (%.2f ms) + no element-wise pass: %.2f ms "
           "-> %.0f tok/s\n", 8192, gemm_peak, wkv_ms, f_ii, R / (f_ii * 1e-3));
    fl_verdict(target, R / (f_ii * 1e-3), "(ii)");
    const double f_iib = gemm_cublas + wkv_ms;
    printf("  (ii') as (ii) with the products at cuBLAS's own rate on the engine's shapes (%.2f ms): %.2f ms -> %.0f "
           "tok/s\n", gemm_cublas, f_iib, R / (f_iib * 1e-3));
    fl_verdict(target, R / (f_iib * 1e-3), "(ii')");
    std::string beyond, within;
    auto note = [&](double f, const char *label) {
        if (target <= 0) return;
        std::string &o = target > R / (f * 1e-3) ? beyond : within;
        o += o.empty() ? "" : ", ";
        o += label;
    };
    note(f_i, "(i)");
    note(f_ii, "(ii)");
    note(f_iib, "(ii')");
    double rate_ms = 0;
    const char *why = "";
    const double tl = fl_wkv_target(s->B, s->T, s->H, &rate_ms, &why);
    const double wl = wkv_ms / s->L; /* measured per layer */
    const double w3 = s->L * (tl > 0 ? std::min(wl, tl) : wl);
    const double f_iii = gemm_peak + w3;
    printf("  (iii) as (ii) with WKV7 at SPEC's kernel target where it applies ((B, T, H) = (%d, %d, %d): %s%s; "
           "%.3f ms a layer measured -> %.3f): WKV7 %.2f ms, step %.2f ms -> %.0f tok/s\n",
           s->B, s->T, s->H, why, tl > 0 ? (tl >= wl ? ", already met" : "") : "", wl, w3 / s->L, w3, f_iii,
           R / (f_iii * 1e-3));
    fl_verdict(target, R / (f_iii * 1e-3), "(iii)");
    note(f_iii, "(iii)");
    if (rate_ms > 0) {
        const double w4 = s->L * std::min(wl, rate_ms), f4 = gemm_peak + w4;
        printf("  (iii') as (iii) with WKV7 at the same-T target's throughput (%.3f ms a layer: SPEC's ms scaled by "
               "B x H): WKV7 %.2f ms, step %.2f ms -> %.0f tok/s\n", rate_ms, w4, f4, R / (f4 * 1e-3));
        fl_verdict(target, R / (f4 * 1e-3), "(iii')");
        note(f4, "(iii')");
    }
    const double f_iv = fi_gemm + fi_ew + w3;
    printf("  (iv)  as (i) with WKV7 as in (iii): products %.2f + WKV7 %.2f + element-wise %.2f = %.2f ms -> %.0f tok/s\n",
           fi_gemm, w3, fi_ew, f_iv, R / (f_iv * 1e-3));
    fl_verdict(target, R / (f_iv * 1e-3), "(iv)");
    note(f_iv, "(iv)");
    if (target > 0)
        printf("  summary: the SPEC target (%.0f tok/s) is %s%s%s; within %s\n", target,
               beyond.empty() ? "beyond none of the floors" : "beyond floor",
               beyond.empty() ? "" : beyond.find(',') == std::string::npos ? " " : "s ", beyond.c_str(),
               within.empty() ? "none" : within.c_str());
    fflush(stdout);
}

/* Measures the ceilings on this card and prints the report (fl_print). */
static int fl_report(const fl_shape *s, const std::vector<float> &cls_ms, const std::vector<int> &cls_launches,
                     const char *const *cls_names, float busy_ms, float wall_ms, int recompute, char *err)
{
    std::vector<fl_gemm> g = fl_products(s);
    fl_ceilings ce;
    int rc = fl_measure(s, g, &ce, err);
    if (rc) return rc;
    fl_print(s, g, ce, cls_ms, cls_launches, cls_names, busy_ms, wall_ms, recompute);
    return ST_OK;
}

#endif
