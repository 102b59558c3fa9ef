/*
 * test_cuda_lora.cu - the fused LoRA kernels of kernels/cuda/lora.cuh alone
 * (issue #4), against a float64 loop of the formula they document:
 *
 *   forward:   hid = act(x W1),  out = hid W2           (out bf16 or fp32)
 *   backward:  dx = beta dx + ((dout W2^T) * act'(hid)) W1^T
 *
 * for act none / tanh / sigmoid, beta 0 and 1, at the (C, D) pairs of SPEC
 * section 8's shapes (768 and 1024: 32, 64, 128; 2048: 64, 96, 256), the
 * fixtures' (64..256 with 16..64) and row counts that are not multiples of the
 * kernel's 64-row tile (rows past R must be neither read nor written), plus
 * the shapes the engine must send to cuBLAS instead (lora_fused_supported);
 * and (lora_fused_timing) each launch's time at SPEC section 8's shapes.
 *
 * Every run draws fresh random inputs (the seed is printed; STATETUNE_SEED
 * replays it). Outputs are poisoned with NaN (all bytes 0xFF) before the
 * launch, so an element the kernel forgets fails; dx with beta 1 starts from
 * random values instead. The reference is computed in double from exactly
 * the bf16 inputs the kernel saw, with no intermediate rounding; the kernel
 * rounds on the way (the file comment of lora.cuh lists where: the first
 * product, the activation, the output; in the backward dhid, dhid act', dx),
 * so the bound is the number of those roundings k times bf16's unit 2^-8
 * (one rounding to nearest moves a value by at most 2^-8 relative, and a
 * relative perturbation of every term of a sum moves the sum by at most as
 * much in L2 when the terms do not cancel, which random weights ensure on
 * average), plus one unit for sigmoid, whose relative sensitivity to its
 * input, |z| (1 - sigmoid(z)), reaches about 2 for the |z| <= 2 these inputs
 * give, plus 1e-5 for fp32 accumulation. A wrong fragment, a lost k chunk or
 * a misplaced row gives errors of order 1.
 *
 * CTest label `gpu`: needs a CUDA device; without one every test skips.
 */
extern "C" {
#include "harness.h"
#include "cuda_test.h"

#include "common/st_half.h"
}

#include "kernels/cuda/lora.cuh"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>

#include <vector>

typedef __nv_bfloat16 bf16;

static const double BF16_U = 1.0 / 256; /* 2^-8: relative bound of one rounding to bf16 */
static const double TOL_ACC = 1e-5;     /* fp32 accumulation */

#define CU(call)                                                                                          \
    do {                                                                                                  \
        cudaError_t e_ = (call);                                                                          \
        if (e_ != cudaSuccess) {                                                                          \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            return 1;                                                                                     \
        }                                                                                                 \
    } while (0)

struct shape_t {
    int R, C, D;
};
/* SPEC section 8's LoRA widths (worker bench: 64/64/32/128 at 768 and 1024,
 * 96/96/64/256 at 2048), the fixtures' (tiny 128: 16, 32; small and pysrc
 * 256: 16..64; 834K 64: 32) and a width of RWKV-7's formula between (160) */
static const shape_t SHAPES[] = {{300, 768, 64},  {129, 768, 32},  {65, 768, 128}, {100, 1024, 160},
                                 {70, 1024, 64},  {96, 2048, 96},  {80, 2048, 256}, {64, 2048, 64},
                                 {1, 128, 16},    {37, 128, 32},   {200, 256, 16},  {130, 256, 64},
                                 {77, 64, 32}};

/* Shapes the engine sends to cuBLAS (the kernel has no instance): tiny's
 * v LoRA (D 8), widths no formula gives, C not a multiple of 64 */
static const shape_t FALLBACK[] = {{64, 128, 8}, {64, 768, 48}, {64, 768, 320}, {64, 96, 32}, {64, 32, 16}};

/* Device buffers of one test, freed together. */
struct arena_t {
    std::vector<void *> p;
    ~arena_t()
    {
        for (void *q : p) cudaFree(q);
    }
    void *alloc(size_t bytes)
    {
        void *d = NULL;
        if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess) return NULL;
        p.push_back(d);
        return d;
    }
    void *poison(size_t bytes)
    {
        void *d = alloc(bytes);
        if (d && cudaMemset(d, 0xFF, bytes) != cudaSuccess) return NULL;
        return d;
    }
    bf16 *up(const std::vector<uint16_t> &h)
    {
        void *d = alloc(h.size() * 2);
        if (d && cudaMemcpy(d, h.data(), h.size() * 2, cudaMemcpyHostToDevice) != cudaSuccess) return NULL;
        return (bf16 *)d;
    }
};

/* n bf16 uniform in [lo, hi): the bits and their exact values */
static void s_rand(uint64_t *s, size_t n, double lo, double hi, std::vector<uint16_t> &bits, std::vector<double> &val)
{
    bits.resize(n);
    val.resize(n);
    for (size_t i = 0; i < n; i++) {
        bits[i] = st_f32_to_bf16((float)(lo + (hi - lo) * st_test_unit(s)));
        val[i] = st_bf16_to_f32(bits[i]);
    }
}

static std::vector<float> s_down_bf16(const void *d, size_t n)
{
    std::vector<uint16_t> b(n);
    std::vector<float> h(n, NAN);
    if (cudaMemcpy(b.data(), d, n * 2, cudaMemcpyDeviceToHost) != cudaSuccess) return h;
    for (size_t i = 0; i < n; i++) h[i] = st_bf16_to_f32(b[i]);
    return h;
}

static std::vector<float> s_down_f32(const void *d, size_t n)
{
    std::vector<float> h(n, NAN);
    if (cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost) != cudaSuccess) return std::vector<float>(n, NAN);
    return h;
}

/* 0 when every element is finite (the poison overwritten) and the relative
 * L2 error is within tol; prints the figure either way. */
static int s_cmp(const char *what, const shape_t &sh, const std::vector<float> &got, const std::vector<double> &ref,
                 double tol)
{
    size_t n = ref.size(), bad = 0;
    double num = 0, den = 0, maxd = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) {
            if (!bad) fprintf(stderr, "%s: element %zu (row %zu) is %g (unwritten or non-finite)\n", what, i,
                              i / (n / sh.R), got[i]);
            bad++;
            continue;
        }
        const double d = got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
        if (fabs(d) > maxd) maxd = fabs(d);
    }
    if (bad) {
        fprintf(stderr, "%s R %d C %d D %d: %zu of %zu outputs not finite\n", what, sh.R, sh.C, sh.D, bad, n);
        return 1;
    }
    const double e = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("  %-22s R %4d C %4d D %3d: rel L2 err %.2e (tol %.2e), max |diff| %.2e\n", what, sh.R, sh.C, sh.D, e, tol,
           maxd);
    if (!(e <= tol)) {
        fprintf(stderr, "%s R %d C %d D %d: relative L2 error %.3e exceeds %.3e\n", what, sh.R, sh.C, sh.D, e, tol);
        return 1;
    }
    return 0;
}

static double s_act(int act, double z) { return act == st::ACT_TANH ? tanh(z) : act == st::ACT_SIGMOID ? 1.0 / (1.0 + exp(-z)) : z; }
static double s_actd(int act, double h) { return act == st::ACT_TANH ? 1.0 - h * h : act == st::ACT_SIGMOID ? h * (1.0 - h) : 1.0; }
static const char *s_actname(int act) { return act == st::ACT_TANH ? "tanh" : act == st::ACT_SIGMOID ? "sigmoid" : "none"; }

/* o (R, N) = a (R, K) b, b (K, N) row-major; or b^T when bt (b stored (N, K)) */
static void s_mm(int R, int K, int N, const double *a, const double *b, bool bt, double *o)
{
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += a[(size_t)r * K + k] * (bt ? b[(size_t)n * K + k] : b[(size_t)k * N + n]);
            o[(size_t)r * N + n] = s;
        }
}

/* The weights: x W1 of order 1 (|z| <= about 2), out of order 1 */
static void s_weights(uint64_t *s, const shape_t &sh, std::vector<uint16_t> &w1b, std::vector<double> &w1,
                      std::vector<uint16_t> &w2b, std::vector<double> &w2)
{
    const double a1 = 2.0 / sqrt((double)sh.C), a2 = 2.0 / sqrt((double)sh.D);
    s_rand(s, (size_t)sh.C * sh.D, -a1, a1, w1b, w1);
    s_rand(s, (size_t)sh.D * sh.C, -a2, a2, w2b, w2);
}

/* Every shape and case: a failure is counted and the rest still run. */
static int test_lora_fused_fwd(void)
{
    uint64_t seed = st_test_seed(), *s = &seed;
    int fails = 0;
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    for (const shape_t &sh : SHAPES) {
        CHECKF(st::lora_fused_supported(sh.C, sh.D), "C %d D %d is not supported", sh.C, sh.D);
        const size_t RC = (size_t)sh.R * sh.C, RD = (size_t)sh.R * sh.D;
        std::vector<uint16_t> xb, w1b, w2b;
        std::vector<double> x, w1, w2;
        s_rand(s, RC, -1, 1, xb, x);
        s_weights(s, sh, w1b, w1, w2b, w2);
        std::vector<double> z(RD), h(RD), out(RC);
        s_mm(sh.R, sh.C, sh.D, x.data(), w1.data(), false, z.data());
        arena_t ar;
        bf16 *dx = ar.up(xb), *dw1 = ar.up(w1b), *dw2 = ar.up(w2b);
        CHECK(dx && dw1 && dw2);
        for (int act = 0; act <= st::ACT_SIGMOID; act++) {
            for (size_t i = 0; i < RD; i++) h[i] = s_act(act, z[i]);
            s_mm(sh.R, sh.D, sh.C, h.data(), w2.data(), false, out.data());
            for (int f32 = 0; f32 <= 1; f32++) {
                bf16 *dh = (bf16 *)ar.poison(RD * 2);
                void *dout = ar.poison(RC * (f32 ? 4 : 2));
                CHECK(dh && dout);
                int rc = st::lora_forward_fused(sh.R, sh.C, sh.D, dx, dw1, dw2, act, dh, dout, f32 != 0, 0, err);
                CHECKF(rc == ST_OK, "lora_forward_fused: %s", err);
                CU(cudaDeviceSynchronize());
                /* roundings: z, act (when there is one), out (bf16); sigmoid one more */
                const int kh = 1 + (act != 0) + (act == st::ACT_SIGMOID);
                char what[64];
                snprintf(what, sizeof what, "fwd %s out %s", s_actname(act), f32 ? "fp32" : "bf16");
                fails += s_cmp(what, sh, f32 ? s_down_f32(dout, RC) : s_down_bf16(dout, RC), out,
                               (kh + !f32) * BF16_U + TOL_ACC);
                if (!f32) {
                    snprintf(what, sizeof what, "fwd %s hid", s_actname(act));
                    fails += s_cmp(what, sh, s_down_bf16(dh, RD), h, kh * BF16_U + TOL_ACC);
                }
            }
        }
        /* without a hid buffer: the same out, nothing else written */
        void *dout = ar.poison(RC * 2);
        CHECK(dout);
        CHECKF(st::lora_forward_fused(sh.R, sh.C, sh.D, dx, dw1, dw2, st::ACT_TANH, NULL, dout, false, 0, err) == ST_OK,
               "lora_forward_fused without hid: %s", err);
        CU(cudaDeviceSynchronize());
        for (size_t i = 0; i < RD; i++) h[i] = tanh(z[i]);
        s_mm(sh.R, sh.D, sh.C, h.data(), w2.data(), false, out.data());
        fails += s_cmp("fwd tanh, no hid", sh, s_down_bf16(dout, RC), out, 3 * BF16_U + TOL_ACC);
    }
    return fails ? 1 : 0;
}

static int test_lora_fused_bwd(void)
{
    uint64_t seed = st_test_seed(), *s = &seed;
    int fails = 0;
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    for (const shape_t &sh : SHAPES) {
        const size_t RC = (size_t)sh.R * sh.C, RD = (size_t)sh.R * sh.D;
        std::vector<uint16_t> gb, w1b, w2b, x0b;
        std::vector<double> g, w1, w2, x0;
        s_rand(s, RC, -1, 1, gb, g);
        s_rand(s, RC, -1, 1, x0b, x0); /* dx before a beta 1 product */
        s_weights(s, sh, w1b, w1, w2b, w2);
        std::vector<double> dh0(RD), dh(RD), dx(RC);
        s_mm(sh.R, sh.C, sh.D, g.data(), w2.data(), true, dh0.data()); /* dout W2^T: W2 is (D, C) */
        arena_t ar;
        bf16 *dg = ar.up(gb), *dw1 = ar.up(w1b), *dw2 = ar.up(w2b);
        CHECK(dg && dw1 && dw2);
        for (int act = 0; act <= st::ACT_SIGMOID; act++) {
            /* the forward's activation: tanh in (-1, 1), sigmoid in (0, 1) */
            std::vector<uint16_t> hb;
            std::vector<double> hv;
            s_rand(s, RD, act == st::ACT_SIGMOID ? 0.02 : -0.98, 0.98, hb, hv);
            bf16 *dhid = act ? ar.up(hb) : NULL;
            CHECK(!act || dhid);
            for (size_t i = 0; i < RD; i++) dh[i] = dh0[i] * s_actd(act, hv[i]);
            for (int beta = 0; beta <= 1; beta++) {
                s_mm(sh.R, sh.D, sh.C, dh.data(), w1.data(), true, dx.data()); /* dhid W1^T: W1 is (C, D) */
                if (beta)
                    for (size_t i = 0; i < RC; i++) dx[i] += x0[i];
                bf16 *ddx = beta ? ar.up(x0b) : (bf16 *)ar.poison(RC * 2);
                CHECK(ddx);
                int rc = st::lora_backward_fused(sh.R, sh.C, sh.D, dw1, dw2, act, dhid, dg, ddx, (float)beta, 0, err);
                CHECKF(rc == ST_OK, "lora_backward_fused: %s", err);
                CU(cudaDeviceSynchronize());
                /* roundings: dhid, dhid act' (when there is an act), dx */
                const int k = 2 + (act != 0);
                char what[64];
                snprintf(what, sizeof what, "bwd %s beta %d", s_actname(act), beta);
                fails += s_cmp(what, sh, s_down_bf16(ddx, RC), dx, k * BF16_U + TOL_ACC);
            }
        }
    }
    return fails ? 1 : 0;
}

/* The shapes the kernel has no instance for are refused before anything is
 * launched (the engine's cuBLAS path takes them), and every (C, D) of the
 * SPEC shapes and the fixtures is taken. */
static int test_lora_fused_fallback(void)
{
    static const int TAKEN[][2] = {{768, 64}, {768, 32}, {768, 128}, {1024, 64}, {1024, 32}, {1024, 128},
                                   {2048, 96}, {2048, 64}, {2048, 256}, {128, 16}, {128, 32}, {256, 32},
                                   {256, 16}, {256, 64}, {64, 32}};
    for (const auto &t : TAKEN) CHECKF(st::lora_fused_supported(t[0], t[1]), "C %d D %d should be taken", t[0], t[1]);
    for (const shape_t &sh : FALLBACK)
        CHECKF(!st::lora_fused_supported(sh.C, sh.D), "C %d D %d should fall back", sh.C, sh.D);
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    arena_t ar;
    const size_t n = 64 * 1024;
    bf16 *buf = (bf16 *)ar.poison(n * 2), *outp = (bf16 *)ar.poison(n * 2);
    CHECK(buf && outp);
    for (const shape_t &sh : FALLBACK) {
        err[0] = 0;
        CHECK(st::lora_forward_fused(sh.R, sh.C, sh.D, buf, buf, buf, 0, NULL, outp, false, 0, err) == ST_EINVAL);
        CHECKF(err[0], "no sentence for C %d D %d", sh.C, sh.D);
        CHECK(st::lora_backward_fused(sh.R, sh.C, sh.D, buf, buf, 0, NULL, buf, outp, 0.f, 0, err) == ST_EINVAL);
    }
    /* misaligned operands and an unknown activation are refused too */
    CHECK(st::lora_forward_fused(64, 768, 64, buf + 1, buf, buf, 0, NULL, outp, false, 0, err) == ST_EINVAL);
    CHECK(st::lora_forward_fused(64, 768, 64, buf, buf, buf, 7, NULL, outp, false, 0, err) == ST_EINVAL);
    CHECK(st::lora_backward_fused(64, 768, 64, buf, buf, st::ACT_TANH, NULL, buf, outp, 0.f, 0, err) == ST_EINVAL);
    CHECK(st::lora_forward_fused(64, 768, 64, buf, buf, buf, 0, NULL, outp + 1, false, 0, err) == ST_EINVAL);
    CU(cudaDeviceSynchronize());
    std::vector<float> o = s_down_bf16(outp, n);
    for (size_t i = 0; i < n; i++) CHECKF(isnan(o[i]), "a refused launch wrote element %zu", i);
    printf("  %zu shapes refused, nothing written\n", sizeof FALLBACK / sizeof FALLBACK[0]);
    return 0;
}

/* The time of one launch at SPEC section 8's shapes (R = 8192: batch 8 x
 * ctx 1024; the (C, D) of the three bench shapes), printed for
 * docs/performance.md beside the bytes the launch must move through DRAM
 * (x or dout read once, out or dx written once, hid when read or written;
 * weights come from L2) as GB/s. Checks that every output is finite. */
static int test_lora_fused_timing(void)
{
    static const int CD[][2] = {{768, 64}, {768, 32}, {768, 128}, {1024, 64}, {1024, 32}, {1024, 128},
                                {2048, 96}, {2048, 64}, {2048, 256}};
    const int R = 8192, REPS = 10;
    uint64_t seed = st_test_seed(), *s = &seed;
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    cudaEvent_t ev[2];
    CU(cudaEventCreate(&ev[0]));
    CU(cudaEventCreate(&ev[1]));
    int rc = 0;
    for (const auto &cd : CD) {
        const int C = cd[0], D = cd[1];
        const size_t RC = (size_t)R * C, RD = (size_t)R * D;
        std::vector<uint16_t> xb, w1b, w2b, hb;
        std::vector<double> x, w1, w2, hv;
        const shape_t sh = {R, C, D};
        s_rand(s, RC, -1, 1, xb, x);
        s_rand(s, RD, -0.9, 0.9, hb, hv);
        s_weights(s, sh, w1b, w1, w2b, w2);
        arena_t ar;
        bf16 *dx = ar.up(xb), *dw1 = ar.up(w1b), *dw2 = ar.up(w2b), *dh = ar.up(hb), *dxo = ar.up(xb);
        void *dout = ar.poison(RC * 4);
        CHECK(dx && dw1 && dw2 && dh && dxo && dout);
        for (int kind = 0; kind < 4; kind++) {
            /* 0: the decay LoRA's forward (tanh, fp32 out, hid kept); 1: a's
             * or v's (none, bf16 out); 2: the decay's backward (tanh, beta
             * 0); 3: v's (none, beta 1) */
            static const char *const NAMES[4] = {"fwd tanh f32+hid", "fwd none bf16", "bwd tanh beta 0",
                                                 "bwd none beta 1"};
            double bytes = 0;
            for (int r = -2; r < REPS; r++) {
                if (r == 0) CU(cudaEventRecord(ev[0]));
                int lrc = ST_OK;
                switch (kind) {
                case 0:
                    lrc = st::lora_forward_fused(R, C, D, dx, dw1, dw2, st::ACT_TANH, dh, dout, true, 0, err);
                    bytes = RC * 2.0 + RC * 4.0 + RD * 2.0;
                    break;
                case 1:
                    lrc = st::lora_forward_fused(R, C, D, dx, dw1, dw2, 0, NULL, dout, false, 0, err);
                    bytes = RC * 2.0 + RC * 2.0;
                    break;
                case 2:
                    lrc = st::lora_backward_fused(R, C, D, dw1, dw2, st::ACT_TANH, dh, dx, (bf16 *)dout, 0.f, 0, err);
                    bytes = RC * 2.0 + RC * 2.0 + RD * 2.0;
                    break;
                default:
                    lrc = st::lora_backward_fused(R, C, D, dw1, dw2, 0, NULL, dx, dxo, 1.f, 0, err);
                    bytes = RC * 2.0 + RC * 4.0;
                    break;
                }
                CHECKF(lrc == ST_OK, "%s", err);
            }
            CU(cudaEventRecord(ev[1]));
            CU(cudaEventSynchronize(ev[1]));
            float ms = 0;
            CU(cudaEventElapsedTime(&ms, ev[0], ev[1]));
            const double us = 1000.0 * ms / REPS;
            const std::vector<float> o = kind == 0 ? s_down_f32(dout, RC) : s_down_bf16(kind == 3 ? (void *)dxo : dout, RC);
            size_t bad = 0;
            for (float v : o) bad += !isfinite(v);
            printf("  timing R %d C %4d D %3d %-17s %7.2f us  %6.0f GB/s%s\n", R, C, D, NAMES[kind], us,
                   bytes / (us * 1e3), bad ? "  NOT FINITE" : "");
            if (bad) rc = 1;
        }
    }
    cudaEventDestroy(ev[0]);
    cudaEventDestroy(ev[1]);
    return rc;
}

int main(int argc, char **argv)
{
    static const st_test_t tests[] = {
        {"lora_fused_fwd", test_lora_fused_fwd},
        {"lora_fused_bwd", test_lora_fused_bwd},
        {"lora_fused_fallback", test_lora_fused_fallback},
        {"lora_fused_timing", test_lora_fused_timing},
        {NULL, NULL},
    };
    return st_test_main(argc, argv, tests);
}
