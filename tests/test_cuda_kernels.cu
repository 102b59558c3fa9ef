/*
 * test_cuda_kernels.cu - every element-wise CUDA kernel that the engine
 * (engine/cuda/engine_cuda.cu, engine_cuda_params.cu) launches, alone,
 * against a float64 loop of the formula it documents, itself checked against
 * the fp32 CPU kernel of kernels/cpu where one exists on its own (issue #4);
 * the observer kernels directly against kernels/cpu's per-row functions. The
 * WKV7 kernels have their own test (test_cuda_wkv.c); the kstate (RBF)
 * launchers against kernels/cpu/rbf.c, DBP's Q against kernels/cpu/dbp.c.
 *
 * This is a .cu file, not a .c file: the kernels are header-only templates
 * (kernels/cuda/NAME.cuh, llm.c style) with no C launcher, so the test must be
 * compiled by nvcc to launch them with the engine's own launch shapes.
 *
 * Every run draws fresh random inputs (the seed is printed; STATETUNE_SEED
 * replays it). Every output buffer that is not updated in place is poisoned
 * with NaN (all bytes 0xFF) before the launch, so an element a kernel
 * forgets to write fails the check. Each output is compared by relative L2
 * error ||got - ref|| / ||ref||, the reference in double from the very inputs
 * the kernel saw (bf16 inputs are rounded to bf16 on the host first):
 *   fp32: TOL_FP32 = 1e-5 (fp32 arithmetic and the fast intrinsics);
 *   bf16: k * 2^-8 + 1e-5, k = the number of roundings to bf16 on the path to
 *         that output (its own store plus any rounded intermediate the
 *         kernel documents, e.g. timemix's wb = round(round(kk) round(a))):
 *         one rounding to nearest moves a value by at most 2^-8 relative.
 * Sizes: T = 1 and B = 1 cases, and widths C that are multiples of 8 but not
 * of 64 where the kernel allows it. Preconditions the kernels do not check
 * (they are raw kernels, not launchers that could refuse): the 8-wide
 * kernels need C % 8 == 0 and 16-byte aligned rows, the per-head kernels
 * C = H * 64, LayerNorm C <= 8192; the engine guarantees all three (C is
 * H * 64). lora_act takes any n; ce_kernel any V (a scalar path when
 * V % 4 != 0, V % 8 != 0 for bf16 logits).
 *
 * CTest label `gpu`: needs a CUDA device; without one every test skips.
 */
extern "C" {
#include "harness.h"
#include "cuda_test.h"

#include "common/st_half.h"
#include "kernels/cpu/dbp.h"
#include "kernels/cpu/groupnorm.h"
#include "kernels/cpu/head.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/observer.h"
#include "kernels/cpu/observer_topk.h"
#include "kernels/cpu/rbf.h"
#include "kernels/cpu/timemix.h"
#include "kernels/cpu/tokenshift.h"
}

#include "kernels/cuda/adam.cuh"
#include "kernels/cuda/channelmix.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dbp.cuh"
#include "kernels/cuda/groupnorm.cuh"
#include "kernels/cuda/head.cuh"
#include "kernels/cuda/kstate.cuh"
#include "kernels/cuda/layernorm.cuh"
#include "kernels/cuda/ln_shift.cuh"
#include "kernels/cuda/observer.cuh"
#include "kernels/cuda/timemix.cuh"

#include <cuda_runtime_api.h>
#include <stdint.h>
#include <time.h>

#include <vector>

static const double TOL_FP32 = 1e-5;
static const double BF16_U = 1.0 / 256; /* 2^-8: relative bound of one rounding to bf16 */
static const int EW = 256;              /* the engine's EW_THREADS */

typedef __nv_bfloat16 bf16;

#define CU(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)

/* After a launch: the launch error, then the run's. */
#define LAUNCHED() do { CU(cudaGetLastError()); CU(cudaDeviceSynchronize()); } while (0)

/* ---- host helpers ------------------------------------------------------- */

static double s_unif(uint64_t *s) /* splitmix64, [0, 1) */
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static std::vector<float> s_rand(size_t n, uint64_t *s, double lo, double hi)
{
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) v[i] = (float)(lo + (hi - lo) * s_unif(s));
    return v;
}

template <typename T> static const char *s_pname(void);
template <> const char *s_pname<float>(void) { return "fp32"; }
template <> const char *s_pname<bf16>(void) { return "bf16"; }

/* The tolerance of an output reached through k roundings to T (see the file
 * comment). */
template <typename T> static double s_tol(int k);
template <> double s_tol<float>(int k) { (void)k; return TOL_FP32; }
template <> double s_tol<bf16>(int k) { return k * BF16_U + TOL_FP32; }

/* The host copy becomes exactly what a T buffer holds. */
template <typename T> static void s_round(std::vector<float> &v);
template <> void s_round<float>(std::vector<float> &v) { (void)v; }
template <> void s_round<bf16>(std::vector<float> &v)
{
    for (float &x : v) x = st_bf16_to_f32(st_f32_to_bf16(x));
}

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
    /* n elements of T, every byte 0xFF: NaN in fp32, bf16 and double, -1 in int32 */
    template <typename T> T *poison(size_t n)
    {
        void *d = alloc(n * sizeof(T));
        if (d && cudaMemset(d, 0xFF, n * sizeof(T)) != cudaSuccess) return NULL;
        return (T *)d;
    }
    /* the host floats, converted to T */
    template <typename T> T *up(const std::vector<float> &h)
    {
        void *d = alloc(h.size() * sizeof(T));
        if (!d) return NULL;
        cudaError_t e;
        if (sizeof(T) == 4) {
            e = cudaMemcpy(d, h.data(), h.size() * 4, cudaMemcpyHostToDevice);
        } else {
            std::vector<uint16_t> b(h.size());
            for (size_t i = 0; i < h.size(); i++) b[i] = st_f32_to_bf16(h[i]);
            e = cudaMemcpy(d, b.data(), b.size() * 2, cudaMemcpyHostToDevice);
        }
        return e == cudaSuccess ? (T *)d : NULL;
    }
};

/* The n elements of a T buffer, as floats. */
template <typename T> static std::vector<float> s_down(const T *d, size_t n)
{
    std::vector<float> h(n, NAN);
    if (sizeof(T) == 4) {
        if (cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost) != cudaSuccess) return std::vector<float>(n, NAN);
    } else {
        std::vector<uint16_t> b(n);
        if (cudaMemcpy(b.data(), d, n * 2, cudaMemcpyDeviceToHost) != cudaSuccess) return h;
        for (size_t i = 0; i < n; i++) h[i] = st_bf16_to_f32(b[i]);
    }
    return h;
}

/* 0 when every element is finite (the poison overwritten) and the relative
 * L2 error is within tol; prints the figure either way. */
static int s_cmp(const char *what, const char *prec, const std::vector<float> &got, const std::vector<double> &ref,
                 double tol)
{
    size_t n = ref.size(), bad = 0;
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) {
            if (!bad) fprintf(stderr, "%s %s: element %zu is %g (unwritten or non-finite)\n", what, prec, i, got[i]);
            bad++;
            continue;
        }
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    if (bad) {
        fprintf(stderr, "%s %s: %zu of %zu outputs not finite\n", what, prec, bad, n);
        return 1;
    }
    double e = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("  %-26s %s n=%-8zu rel L2 err %.2e (tol %.2e)\n", what, prec, n, e, tol);
    if (!(e <= tol)) {
        fprintf(stderr, "%s %s: relative L2 error %.3e exceeds %.3e\n", what, prec, e, tol);
        return 1;
    }
    return 0;
}

/* The fp32 CPU kernel (kernels/cpu) against the same float64 reference: this
 * part needs no device, so it also checks the references themselves on a
 * machine without one (the test then reports skipped for the GPU part). */
static int s_cpu(const char *what, const std::vector<float> &cpu, const std::vector<double> &ref)
{
    return s_cmp(what, "cpu ", cpu, ref, TOL_FP32);
}

static double sig(double x) { return 1.0 / (1.0 + exp(-x)); }

/* ---- LayerNorm ---------------------------------------------------------- */

static const int LN_C[] = {8, 200, 1000, 8192};
static const int LN_R[] = {1, 7, 5, 2};

/* layernorm_fwd_kernel<float, T> (ln1 / ln2 / ln_out into T; ln0 in place
 * in fp32) and residual_layernorm_fwd_kernel<T, T>. */
template <typename T> static int s_layernorm_fwd(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    for (int q = 0; q < 4; q++) {
        const int C = LN_C[q], R = LN_R[q];
        const size_t n = (size_t)R * C;
        const float eps = 1e-5f;
        /* x centred away from 0, so that the means checked are not near 0 */
        std::vector<float> x = s_rand(n, s, -1, 3), w = s_rand(C, s, 0.5, 1.5), b = s_rand(C, s, -0.5, 0.5);
        std::vector<float> bres = s_rand(n, s, -1, 1);
        s_round<T>(bres);
        for (int fused = 0; fused < 2; fused++) {
            /* the reference: xs = x (+ bres), out = LN(xs) */
            std::vector<double> rx(n), rout(n), rmean(R), rrstd(R);
            for (size_t i = 0; i < n; i++) rx[i] = (double)x[i] + (fused ? (double)bres[i] : 0.0);
            for (int r = 0; r < R; r++) {
                double m = 0, v = 0;
                for (int c = 0; c < C; c++) m += rx[(size_t)r * C + c];
                m /= C;
                for (int c = 0; c < C; c++) v += (rx[(size_t)r * C + c] - m) * (rx[(size_t)r * C + c] - m);
                double rs = 1.0 / sqrt(v / C + eps);
                rmean[r] = m;
                rrstd[r] = rs;
                for (int c = 0; c < C; c++)
                    rout[(size_t)r * C + c] = (rx[(size_t)r * C + c] - m) * rs * w[c] + b[c];
            }
            if (!fused && sizeof(T) == 4) {
                std::vector<float> co(n), cm(R), cr(R);
                layernorm_forward_cpu(R, C, x.data(), w.data(), b.data(), eps, co.data(), cm.data(), cr.data());
                if (s_cpu("LN fwd out", co, rout) || s_cpu("LN fwd mean", cm, rmean) || s_cpu("LN fwd rstd", cr, rrstd))
                    return 1;
            }
            if (!gpu) continue;
            arena_t a;
            float *dx = a.up<float>(x), *dw = a.up<float>(w), *db = a.up<float>(b);
            T *dout = a.poison<T>(n), *dbres = a.up<T>(bres);
            float *dm = a.poison<float>(R), *drs = a.poison<float>(R), *dxs = a.poison<float>(n);
            CHECK(dx && dw && db && dout && dbres && dm && drs && dxs);
            if (fused)
                st::residual_layernorm_fwd_kernel<T, T><<<R, st::ln_threads(C)>>>(C, dx, dbres, dxs, dw, db, eps, dout,
                                                                                  dm, drs);
            else
                st::layernorm_fwd_kernel<float, T><<<R, st::ln_threads(C)>>>(C, dx, dw, db, eps, dout, dm, drs);
            LAUNCHED();
            char what[64];
            snprintf(what, sizeof what, "%s C=%d R=%d", fused ? "resid+LN fwd" : "LN fwd", C, R);
            printf("%s\n", what);
            if (s_cmp("out", P, s_down(dout, n), rout, s_tol<T>(1))) return 1;
            if (s_cmp("mean", P, s_down(dm, R), rmean, TOL_FP32)) return 1;
            if (s_cmp("rstd", P, s_down(drs, R), rrstd, TOL_FP32)) return 1;
            if (fused && s_cmp("xsum", P, s_down(dxs, n), rx, TOL_FP32)) return 1;
            if (!fused && sizeof(T) == 4) { /* ln0: in place on the residual stream, no statistics */
                st::layernorm_fwd_kernel<float, float><<<R, st::ln_threads(C)>>>(C, dx, dw, db, eps, dx, NULL, NULL);
                LAUNCHED();
                if (s_cmp("out (in place)", P, s_down(dx, n), rout, TOL_FP32)) return 1;
            }
        }
    }
    return 0;
}

/* The LayerNorm backward in double: ref = dx0 + the input gradient of the
 * rows of x (with the fp32 statistics the forward stored) for dout = dh. */
static void s_ln_bwd_ref(int R, int C, const std::vector<float> &x, const std::vector<float> &w,
                         const std::vector<float> &mean, const std::vector<float> &rstd, const std::vector<double> &dh,
                         const std::vector<float> &dx0, std::vector<double> &ref)
{
    ref.resize((size_t)R * C);
    for (int r = 0; r < R; r++) {
        double mg = 0, mgx = 0;
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)r * C + c;
            double xh = ((double)x[i] - mean[r]) * rstd[r], g = dh[i] * w[c];
            mg += g;
            mgx += g * xh;
        }
        mg /= C;
        mgx /= C;
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)r * C + c;
            double xh = ((double)x[i] - mean[r]) * rstd[r], g = dh[i] * w[c];
            ref[i] = dx0[i] + rstd[r] * (g - mg - xh * mgx);
        }
    }
}

/* layernorm_bwd_kernel<T>: dx (fp32) += the input gradient, dxt = dx in T. */
template <typename T> static int s_layernorm_bwd(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    for (int q = 0; q < 4; q++) {
        const int C = LN_C[q], R = LN_R[q];
        const size_t n = (size_t)R * C;
        std::vector<float> x = s_rand(n, s, -1.5, 2.5), w = s_rand(C, s, 0.5, 1.5), go = s_rand(n, s, -1, 1);
        std::vector<float> dx0 = s_rand(n, s, -0.3, 0.3), mean(R), rstd(R);
        s_round<T>(go);
        for (int r = 0; r < R; r++) { /* the statistics the forward stored (fp32) */
            double m = 0, v = 0;
            for (int c = 0; c < C; c++) m += x[(size_t)r * C + c];
            m /= C;
            for (int c = 0; c < C; c++) v += (x[(size_t)r * C + c] - m) * (x[(size_t)r * C + c] - m);
            mean[r] = (float)m;
            rstd[r] = (float)(1.0 / sqrt(v / C + 1e-5));
        }
        std::vector<double> ref;
        s_ln_bwd_ref(R, C, x, w, mean, rstd, std::vector<double>(go.begin(), go.end()), dx0, ref);
        if (sizeof(T) == 4) {
            std::vector<float> cd = dx0;
            layernorm_backward_cpu(R, C, x.data(), w.data(), mean.data(), rstd.data(), go.data(), cd.data());
            if (s_cpu("LN bwd dx (+=)", cd, ref)) return 1;
        }
        for (int with_t = 0; with_t < 2 && gpu; with_t++) {
            arena_t a;
            float *dxin = a.up<float>(x), *dw = a.up<float>(w), *dm = a.up<float>(mean), *drs = a.up<float>(rstd);
            float *ddx = a.up<float>(dx0);
            T *dgo = a.up<T>(go), *dxt = with_t ? a.poison<T>(n) : NULL;
            CHECK(dxin && dw && dm && drs && ddx && dgo && (dxt || !with_t));
            st::layernorm_bwd_kernel<T><<<R, st::ln_threads(C)>>>(C, dxin, dw, dm, drs, dgo, ddx, dxt);
            LAUNCHED();
            printf("LN bwd C=%d R=%d%s\n", C, R, with_t ? " (+dxt)" : "");
            if (s_cmp("dx (+=)", P, s_down(ddx, n), ref, TOL_FP32)) return 1;
            if (with_t && s_cmp("dxt", P, s_down(dxt, n), ref, s_tol<T>(1))) return 1;
        }
    }
    return 0;
}

/* ---- token shift, LoRA activations, v mix, relu^2, adds ----------------- */

struct bt_shape { int B, Tn, C; };
static const bt_shape EW_SHAPES[] = {{3, 5, 200}, {1, 1, 64}, {2, 1, 24}, {1, 7, 8}};

/* ln_shift_fwd_kernel / shift_ln_bwd_kernel: a LayerNorm and the token
 * shift after it, each way. The reference rounds h and dh to T where the
 * kernels do (ln_shift.cuh), so an output is within one rounding of it plus
 * the one that h or dh may take the other way near a rounding boundary. With
 * resid, xs = a + b (b of type T) and xsum must hold it. */
template <typename T, int NMIX> static int s_ln_shift_one(uint64_t *s, bt_shape sh, bool resid, int gpu)
{
    const char *P = s_pname<T>();
    const int B = sh.B, Tn = sh.Tn, C = sh.C, R = B * Tn;
    const size_t n = (size_t)R * C;
    const float eps = 1e-5f;
    std::vector<float> x = s_rand(n, s, -1, 3), bres = s_rand(n, s, -1, 1), w = s_rand(C, s, 0.5, 1.5);
    std::vector<float> bias = s_rand(C, s, -0.5, 0.5), dx0 = s_rand(n, s, -0.3, 0.3), mixv[NMIX], go[NMIX];
    s_round<T>(bres);
    for (int m = 0; m < NMIX; m++) {
        mixv[m] = s_rand(C, s, 0, 1);
        go[m] = s_rand(n, s, -1, 1);
        s_round<T>(go[m]);
    }
    printf("LN + token shift NMIX=%d B=%d T=%d C=%d%s\n", NMIX, B, Tn, C, resid ? " (+res)" : "");
    auto tround = [](double v) { /* what a T buffer holds of the fp32 value */
        return sizeof(T) == 4 ? (double)(float)v : (double)st_bf16_to_f32(st_f32_to_bf16((float)v));
    };
    /* forward: xs, the statistics (fp32, as stored), h rounded, the lerps */
    std::vector<double> xs(n), h(n), ro[NMIX], rmean(R), rrstd(R);
    std::vector<float> mean(R), rstd(R), xsf(n);
    for (size_t i = 0; i < n; i++) {
        xsf[i] = x[i] + (resid ? bres[i] : 0.f); /* the fp32 stream the kernel stores */
        xs[i] = (double)x[i] + (resid ? (double)bres[i] : 0.0);
    }
    for (int r = 0; r < R; r++) {
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += xs[(size_t)r * C + c];
        m /= C;
        for (int c = 0; c < C; c++) v += (xs[(size_t)r * C + c] - m) * (xs[(size_t)r * C + c] - m);
        rmean[r] = m;
        rrstd[r] = 1.0 / sqrt(v / C + eps);
        mean[r] = (float)m;
        rstd[r] = (float)rrstd[r];
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)r * C + c;
            h[i] = tround((xs[i] - m) * rrstd[r] * w[c] + bias[c]);
        }
    }
    for (int m = 0; m < NMIX; m++) {
        ro[m].resize(n);
        for (size_t i = 0; i < n; i++) {
            const int t = (int)(i / C) % Tn, c = (int)(i % C);
            const double hp = t > 0 ? h[i - C] : 0.0;
            ro[m][i] = h[i] + (hp - h[i]) * mixv[m][c];
        }
    }
    /* backward from the fp32 statistics the forward stores */
    std::vector<double> dh(n, 0.0), rdx;
    for (size_t i = 0; i < n; i++) {
        const int t = (int)(i / C) % Tn, c = (int)(i % C);
        for (int m = 0; m < NMIX; m++)
            dh[i] += go[m][i] * (1.0 - mixv[m][c]) + (t + 1 < Tn ? go[m][i + C] * (double)mixv[m][c] : 0.0);
    }
    for (size_t i = 0; i < n; i++) dh[i] = tround(dh[i]);
    s_ln_bwd_ref(R, C, xsf, w, mean, rstd, dh, dx0, rdx);
    if (sizeof(T) == 4) { /* the CPU path's two kernels in a row agree with the reference */
        std::vector<float> ch(n), cm(R), cr(R), co[NMIX], cd(n, 0.f), cdx = dx0;
        const float *cmix[NMIX], *cg[NMIX];
        float *cop[NMIX];
        for (int m = 0; m < NMIX; m++) {
            co[m].resize(n);
            cop[m] = co[m].data();
            cmix[m] = mixv[m].data();
            cg[m] = go[m].data();
        }
        layernorm_forward_cpu(R, C, xsf.data(), w.data(), bias.data(), eps, ch.data(), cm.data(), cr.data());
        tokenshift_forward_cpu(B, Tn, C, ch.data(), NULL, NMIX, cmix, cop);
        tokenshift_backward_cpu(B, Tn, C, NMIX, cmix, cg, cd.data());
        layernorm_backward_cpu(R, C, xsf.data(), w.data(), mean.data(), rstd.data(), cd.data(), cdx.data());
        for (int m = 0; m < NMIX; m++)
            if (s_cpu("LN + shift fwd", co[m], ro[m])) return 1;
        if (s_cpu("shift + LN bwd dx (+=)", cdx, rdx)) return 1;
    }
    if (!gpu) return 0;
    for (int with_t = 0; with_t < 2; with_t++) {
        arena_t a;
        st::mix6_t mix = {};
        st::ptr6_t<T> outs = {}, douts = {};
        for (int m = 0; m < NMIX; m++) {
            mix.m[m] = a.up<float>(mixv[m]);
            outs.p[m] = a.poison<T>(n);
            douts.p[m] = a.up<T>(go[m]);
            CHECK(mix.m[m] && outs.p[m] && douts.p[m]);
        }
        float *dxin = a.up<float>(x), *dw = a.up<float>(w), *db = a.up<float>(bias), *ddx = a.up<float>(dx0);
        float *dm = a.poison<float>(R), *drs = a.poison<float>(R), *dxs = resid ? a.poison<float>(n) : NULL;
        T *dbres = a.up<T>(bres), *dxt = with_t ? a.poison<T>(n) : NULL;
        CHECK(dxin && dw && db && ddx && dm && drs && dbres && (dxs || !resid) && (dxt || !with_t));
        st::ln_shift_fwd_kernel<T, T, NMIX><<<R, st::ln_threads(C)>>>(C, Tn, dxin, resid ? dbres : NULL, dxs, dw, db,
                                                                       eps, mix, outs, dm, drs);
        LAUNCHED();
        for (int m = 0; m < NMIX; m++) {
            char what[32];
            snprintf(what, sizeof what, "fwd out[%d]", m);
            if (s_cmp(what, P, s_down(outs.p[m], n), ro[m], s_tol<T>(2))) return 1;
        }
        if (s_cmp("mean", P, s_down(dm, R), rmean, TOL_FP32) || s_cmp("rstd", P, s_down(drs, R), rrstd, TOL_FP32))
            return 1;
        if (resid) {
            std::vector<double> rxs(xsf.begin(), xsf.end());
            if (s_cmp("xsum", P, s_down(dxs, n), rxs, TOL_FP32)) return 1;
        }
        /* the backward reads the residual stream the forward stored (xsf) */
        float *dxsf = a.up<float>(xsf), *dmean = a.up<float>(mean), *drstd = a.up<float>(rstd);
        CHECK(dxsf && dmean && drstd);
        st::shift_ln_bwd_kernel<T, NMIX><<<R, st::ln_threads(C)>>>(C, Tn, dxsf, dw, dmean, drstd, mix, douts, ddx,
                                                                   dxt);
        LAUNCHED();
        if (s_cmp("bwd dx (+=)", P, s_down(ddx, n), rdx, s_tol<T>(1))) return 1;
        if (with_t && s_cmp("bwd dxt", P, s_down(dxt, n), rdx, s_tol<T>(2))) return 1;
    }
    return 0;
}

static const bt_shape LN_SHIFT_SHAPES[] = {{3, 5, 200}, {1, 1, 64}, {2, 3, 1000}, {1, 2, 8192}, {2, 1, 24}};

template <typename T> static int s_ln_shift(uint64_t *s, int gpu)
{
    for (const bt_shape &sh : LN_SHIFT_SHAPES)
        for (int resid = 0; resid < 2; resid++)
            if (s_ln_shift_one<T, 6>(s, sh, resid, gpu) || s_ln_shift_one<T, 1>(s, sh, resid, gpu)) return 1;
    return 0;
}

/* lora_act_fwd/bwd_kernel (in place; any n, the tail one by one), over one
 * segment or two with different activations and lengths (the second
 * starting where the first's last group of 8 ends). */
struct act_case { size_t n1, n2; };
template <typename T> static int s_lora_act(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    const act_case cases[] = {{91, 0}, {4099, 0}, {8, 0}, {5, 0}, {91, 4099}, {8, 5}, {4096, 8192}, {3, 1}};
    for (const act_case &cs : cases)
        for (int act = st::ACT_TANH; act <= st::ACT_SIGMOID; act++) {
            const size_t ns[2] = {cs.n1, cs.n2};
            const int acts[2] = {act, act == st::ACT_TANH ? st::ACT_SIGMOID : st::ACT_TANH};
            std::vector<float> z[2], d[2], hst[2]; /* hst: the stored activation, as the backward reads it */
            std::vector<double> rh[2], rdh[2];
            for (int g = 0; g < 2; g++) {
                const size_t n = ns[g];
                z[g] = s_rand(n, s, -3, 3);
                d[g] = s_rand(n, s, -1, 1);
                s_round<T>(z[g]);
                s_round<T>(d[g]);
                rh[g].resize(n);
                rdh[g].resize(n);
                hst[g].resize(n);
                for (size_t i = 0; i < n; i++) {
                    rh[g][i] = acts[g] == st::ACT_TANH ? tanh((double)z[g][i]) : sig(z[g][i]);
                    hst[g][i] = (float)rh[g][i];
                }
                s_round<T>(hst[g]);
                for (size_t i = 0; i < n; i++) {
                    double hv = hst[g][i];
                    rdh[g][i] = d[g][i] * (acts[g] == st::ACT_TANH ? 1.0 - hv * hv : hv * (1.0 - hv));
                }
            }
            if (!gpu) continue;
            arena_t a;
            st::act_seg_t<T> f[2] = {}, b[2] = {};
            for (int g = 0; g < 2; g++) {
                if (!ns[g]) continue;
                T *dz = a.up<T>(z[g]), *dhs = a.up<T>(hst[g]), *dd = a.up<T>(d[g]);
                CHECK(dz && dhs && dd);
                f[g] = {ns[g], acts[g], NULL, dz};
                b[g] = {ns[g], acts[g], dhs, dd};
            }
            const size_t span = st::act_seg_span(f[0]) + st::act_seg_span(f[1]);
            st::lora_act_fwd_kernel<T><<<st::grid_for8(span), EW>>>(f[0], f[1]);
            LAUNCHED();
            st::lora_act_bwd_kernel<T><<<st::grid_for8(span), EW>>>(b[0], b[1]);
            LAUNCHED();
            for (int g = 0; g < 2; g++) {
                if (!ns[g]) continue;
                printf("lora act segment %d of %s: %s n=%zu\n", g + 1, cs.n2 ? "two" : "one",
                       acts[g] == st::ACT_TANH ? "tanh" : "sigmoid", ns[g]);
                if (s_cmp("fwd (in place)", P, s_down(f[g].x, ns[g]), rh[g], s_tol<T>(1))) return 1;
                if (s_cmp("bwd (in place)", P, s_down(b[g].x, ns[g]), rdh[g], s_tol<T>(1))) return 1;
            }
        }
    return 0;
}

/* vmix_fwd_kernel (vs in place: vl in, s out) and vmix_bwd_kernel. */
template <typename T> static int s_vmix(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    for (const bt_shape &sh : EW_SHAPES) {
        const int C = sh.C;
        const size_t n = (size_t)sh.B * sh.Tn * C;
        std::vector<float> vl = s_rand(n, s, -2, 2), vr = s_rand(n, s, -1, 1), vf = s_rand(n, s, -1, 1);
        std::vector<float> v0 = s_rand(C, s, -1, 1), sv = s_rand(n, s, 0.05, 0.95), dv = s_rand(n, s, -1, 1),
                           dbv = s_rand(n, s, -1, 1);
        for (auto *v : {&vl, &vr, &vf, &sv, &dv, &dbv}) s_round<T>(*v);
        std::vector<double> rs(n), rv(n), rdvr(n), rdvl(n);
        for (size_t i = 0; i < n; i++) {
            double z = sig((double)v0[i % C] + vl[i]);
            rs[i] = z;
            rv[i] = vr[i] + ((double)vf[i] - vr[i]) * z;
            double g = (double)dv[i] + dbv[i];
            rdvr[i] = g * (1.0 - sv[i]);
            rdvl[i] = g * ((double)vf[i] - vr[i]) * sv[i] * (1.0 - sv[i]);
        }
        if (sizeof(T) == 4) { /* the CPU's dv is the sum of both shares */
            const int R = sh.B * sh.Tn;
            std::vector<float> cs = vl, cv(n), cg(n), cdvr(n), cdf(n, 0.f), cdvl(n);
            for (size_t i = 0; i < n; i++) cg[i] = dv[i] + dbv[i];
            vmix_forward_cpu(R, C, vr.data(), vf.data(), v0.data(), cs.data(), cv.data());
            vmix_backward_cpu(R, C, vr.data(), vf.data(), sv.data(), cg.data(), cdvr.data(), cdf.data(), cdvl.data());
            if (s_cpu("vmix fwd s", cs, rs) || s_cpu("vmix fwd v", cv, rv) || s_cpu("vmix bwd dvraw", cdvr, rdvr) ||
                s_cpu("vmix bwd dvl", cdvl, rdvl))
                return 1;
        }
        if (!gpu) continue;
        arena_t a;
        T *dvl = a.up<T>(vl), *dvr = a.up<T>(vr), *dvf = a.up<T>(vf), *dsv = a.up<T>(sv), *ddv = a.up<T>(dv);
        T *ddbv = a.up<T>(dbv), *dvout = a.poison<T>(n), *ddvr = a.poison<T>(n), *ddvl = a.poison<T>(n);
        float *dv0 = a.up<float>(v0);
        CHECK(dvl && dvr && dvf && dsv && ddv && ddbv && dvout && ddvr && ddvl && dv0);
        st::vmix_fwd_kernel<T><<<st::grid_for8(n), EW>>>(n, C, dvr, dvf, dv0, dvl, dvout);
        LAUNCHED();
        st::vmix_bwd_kernel<T><<<st::grid_for8(n), EW>>>(n, dvr, dvf, dsv, ddv, ddbv, ddvr, ddvl);
        LAUNCHED();
        printf("v mix B=%d T=%d C=%d\n", sh.B, sh.Tn, C);
        if (s_cmp("fwd s (in place)", P, s_down(dvl, n), rs, s_tol<T>(1))) return 1;
        if (s_cmp("fwd v", P, s_down(dvout, n), rv, s_tol<T>(1))) return 1;
        /* g = dv + dbv is rounded to T before use: two roundings */
        if (s_cmp("bwd dvraw", P, s_down(ddvr, n), rdvr, s_tol<T>(2))) return 1;
        if (s_cmp("bwd dvl", P, s_down(ddvl, n), rdvl, s_tol<T>(2))) return 1;
    }
    return 0;
}

/* relu2_fwd/bwd_kernel (the channel mix's activation; bwd in place). */
template <typename T> static int s_relu2(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    for (const bt_shape &sh : EW_SHAPES) {
        const size_t n = (size_t)sh.B * sh.Tn * sh.C * 4; /* F = 4 C */
        std::vector<float> k = s_rand(n, s, -2, 2), g = s_rand(n, s, -1, 1);
        s_round<T>(k);
        s_round<T>(g);
        std::vector<double> ra(n), rg(n);
        for (size_t i = 0; i < n; i++) {
            double r = k[i] > 0 ? (double)k[i] : 0.0;
            ra[i] = r * r;
            rg[i] = k[i] > 0 ? g[i] * 2.0 * k[i] : 0.0;
        }
        if (!gpu) continue;
        arena_t a;
        T *dk = a.up<T>(k), *dact = a.poison<T>(n), *dg = a.up<T>(g);
        CHECK(dk && dact && dg);
        st::relu2_fwd_kernel<T><<<st::grid_for8(n), EW>>>(n, dk, dact);
        LAUNCHED();
        st::relu2_bwd_kernel<T><<<st::grid_for8(n), EW>>>(n, dk, dg);
        LAUNCHED();
        printf("relu^2 n=%zu\n", n);
        if (s_cmp("fwd act", P, s_down(dact, n), ra, s_tol<T>(1))) return 1;
        if (s_cmp("bwd dact (in place)", P, s_down(dg, n), rg, s_tol<T>(1))) return 1;
    }
    return 0;
}

/* residual_add_kernel (also out == a), add_kernel, add3_kernel,
 * convert_kernel<float, T>, embed_kernel. */
template <typename T> static int s_adds(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    for (const bt_shape &sh : EW_SHAPES) {
        const size_t n = (size_t)sh.B * sh.Tn * sh.C;
        std::vector<float> x = s_rand(n, s, -2, 2), y[3], z[3];
        for (int q = 0; q < 3; q++) {
            y[q] = s_rand(n, s, -1, 1);
            z[q] = s_rand(n, s, -1, 1);
            s_round<T>(y[q]);
            s_round<T>(z[q]);
        }
        if (!gpu) continue;
        arena_t a;
        float *dx = a.up<float>(x), *dout = a.poison<float>(n), *dconv = a.poison<float>(n);
        T *dy[3], *dz[3];
        for (int q = 0; q < 3; q++) {
            dy[q] = a.up<T>(y[q]);
            dz[q] = a.up<T>(z[q]);
            CHECK(dy[q] && dz[q]);
        }
        T *dsingle = a.up<T>(y[0]);
        CHECK(dx && dout && dconv && dsingle);
        std::vector<double> rres(n), rsum[3], rconv(n);
        for (size_t i = 0; i < n; i++) {
            rres[i] = (double)x[i] + y[0][i];
            rconv[i] = y[0][i];
        }
        for (int q = 0; q < 3; q++) {
            rsum[q].resize(n);
            for (size_t i = 0; i < n; i++) rsum[q][i] = (double)y[q][i] + z[q][i];
        }
        printf("adds B=%d T=%d C=%d\n", sh.B, sh.Tn, sh.C);
        st::residual_add_kernel<T><<<st::grid_for8(n), EW>>>(n, dx, dy[0], dout);
        LAUNCHED();
        if (s_cmp("residual add", P, s_down(dout, n), rres, TOL_FP32)) return 1;
        st::convert_kernel<float, T><<<st::grid_for8(n), EW>>>(n, dy[0], dconv);
        LAUNCHED();
        if (s_cmp("convert to fp32", P, s_down(dconv, n), rconv, TOL_FP32)) return 1;
        st::residual_add_kernel<T><<<st::grid_for8(n), EW>>>(n, dx, dy[0], dx); /* out aliases a */
        LAUNCHED();
        if (s_cmp("residual add (in place)", P, s_down(dx, n), rres, TOL_FP32)) return 1;
        st::add_kernel<T><<<st::grid_for8(n), EW>>>(n, dsingle, dz[0]);
        LAUNCHED();
        if (s_cmp("add (in place)", P, s_down(dsingle, n), rsum[0], s_tol<T>(1))) return 1;
        st::add3_kernel<T><<<st::grid_for8(n), EW>>>(n, dy[0], dz[0], dy[1], dz[1], dy[2], dz[2]);
        LAUNCHED();
        for (int q = 0; q < 3; q++)
            if (s_cmp(q == 0 ? "add3 x0" : q == 1 ? "add3 x1" : "add3 x2", P, s_down(dy[q], n), rsum[q], s_tol<T>(1)))
                return 1;
    }
    /* embed_kernel: any C (a strided loop), tokens anywhere in the vocabulary */
    const int V = 50, C = 203, R = 9; /* C odd: embed_kernel takes any width */
    std::vector<float> emb = s_rand((size_t)V * C, s, -1, 1);
    s_round<T>(emb);
    std::vector<int32_t> tok(R);
    for (int r = 0; r < R; r++) tok[r] = r == 0 ? V - 1 : (int32_t)(s_unif(s) * V);
    std::vector<double> ref((size_t)R * C);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) ref[(size_t)r * C + c] = emb[(size_t)tok[r] * C + c];
    if (!gpu) return 0;
    arena_t a;
    T *demb = a.up<T>(emb);
    float *dx0 = a.poison<float>((size_t)R * C);
    int32_t *dtok = (int32_t *)a.alloc(R * sizeof(int32_t));
    CHECK(demb && dx0 && dtok);
    CU(cudaMemcpy(dtok, tok.data(), R * sizeof(int32_t), cudaMemcpyHostToDevice));
    st::embed_kernel<T><<<R, 256>>>(C, dtok, demb, dx0);
    LAUNCHED();
    return s_cmp("embed", P, s_down(dx0, (size_t)R * C), ref, 0.0); /* a copy: exact */
}

/* ---- per-head kernels: time mix and GroupNorm (C = H * 64) -------------- */

struct rh_shape { int R, H; };
static const rh_shape RH_SHAPES[] = {{5, 3}, {1, 1}, {17, 2}};

/* Two comparisons of one output: elements [0, m) and [m, n), the latter the
 * head whose kk norm clamps (its dkraw is of order 1e12, which would hide any
 * error in the rest). */
static int s_cmp_split(const char *what, const char *prec, const std::vector<float> &got,
                       const std::vector<double> &ref, size_t m, double tol)
{
    std::vector<float> g0(got.begin(), got.begin() + m), g1(got.begin() + m, got.end());
    std::vector<double> r0(ref.begin(), ref.begin() + m), r1(ref.begin() + m, ref.end());
    char w1[64];
    snprintf(w1, sizeof w1, "%s (clamped head)", what);
    if (s_cmp(what, prec, g0, r0, tol)) return 1;
    return r1.empty() ? 0 : s_cmp(w1, prec, g1, r1, tol);
}

template <typename T> static int s_timemix(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    const double DS = 0.6065306597126334;
    for (const rh_shape &sh : RH_SHAPES) {
        const int R = sh.R, H = sh.H, C = H * 64, RH = R * H;
        const size_t n = (size_t)R * C;
        std::vector<float> wl = s_rand(n, s, -2, 2), al = s_rand(n, s, -2, 2), kraw = s_rand(n, s, -1, 1);
        std::vector<float> w0 = s_rand(C, s, -2, 1), a0 = s_rand(C, s, -1, 1), k_k = s_rand(C, s, 0.5, 1.5),
                           k_a = s_rand(C, s, 0, 1);
        /* the last (row, head), when there are several: kraw = 0, so the norm
         * clamps at KK_EPS (compared apart, see s_cmp_split) */
        const size_t m = RH > 1 ? n - 64 : n;
        for (size_t i = m; i < n; i++) kraw[i] = 0.f;
        s_round<T>(al);
        s_round<T>(kraw);
        printf("time mix R=%d H=%d\n", R, H);
        /* forward reference; kk and a as stored (rounded), for the backward's inputs */
        std::vector<double> rw(n), ra(n), rkk(n), rkf(n), rwa(n), rwb(n);
        std::vector<float> a_st(n), kk_st(n);
        for (int g = 0; g < RH; g++) {
            const int h = g % H;
            double ss = 0;
            for (int e = 0; e < 64; e++) {
                size_t i = (size_t)g * 64 + e;
                int c = h * 64 + e;
                double u = (double)kraw[i] * k_k[c];
                ss += u * u;
            }
            double nrm = sqrt(ss), inv = 1.0 / (nrm > 1e-12 ? nrm : 1e-12);
            for (int e = 0; e < 64; e++) {
                size_t i = (size_t)g * 64 + e;
                int c = h * 64 + e;
                rw[i] = exp(-DS * sig((double)w0[c] + wl[i]));
                ra[i] = sig((double)a0[c] + al[i]);
                rkk[i] = (double)kraw[i] * k_k[c] * inv;
                rkf[i] = kraw[i] * (1.0 + (ra[i] - 1.0) * k_a[c]);
                rwa[i] = -rkk[i];
                rwb[i] = rkk[i] * ra[i];
                a_st[i] = (float)ra[i];
                kk_st[i] = (float)rkk[i];
            }
        }
        s_round<T>(a_st);
        s_round<T>(kk_st);

        /* backward: the gradients of the WKV inputs and of kf (+ the bonus's dbk) */
        std::vector<float> gw = s_rand(n, s, -1, 1), gkf = s_rand(n, s, -1, 1), gbk = s_rand(n, s, -1, 1);
        std::vector<float> gwa = s_rand(n, s, -1, 1), gwb = s_rand(n, s, -1, 1);
        for (auto *v : {&gkf, &gbk, &gwa, &gwb}) s_round<T>(*v);
        std::vector<double> rdwl(n), rdal(n), rdkr(n);
        for (int g = 0; g < RH; g++) {
            const int h = g % H;
            double ss = 0, dot = 0;
            for (int e = 0; e < 64; e++) {
                size_t i = (size_t)g * 64 + e;
                int c = h * 64 + e;
                double u = (double)kraw[i] * k_k[c];
                ss += u * u;
                dot += (-(double)gwa[i] + (double)gwb[i] * a_st[i]) * kk_st[i];
            }
            double nrm = sqrt(ss);
            bool clamped = !(nrm > 1e-12);
            double inv = 1.0 / (clamped ? 1e-12 : nrm);
            for (int e = 0; e < 64; e++) {
                size_t i = (size_t)g * 64 + e;
                int c = h * 64 + e;
                double sg = sig((double)w0[c] + wl[i]), wv = exp(-DS * sg);
                rdwl[i] = gw[i] * wv * (-DS) * sg * (1.0 - sg);
                double av = a_st[i], q = kk_st[i], kr = kraw[i];
                double dkkv = -(double)gwa[i] + (double)gwb[i] * av;
                double gg = (double)gkf[i] + gbk[i];
                double du = clamped ? dkkv * inv : (dkkv - q * dot) * inv;
                double dav = (double)gwb[i] * q + gg * kr * k_a[c];
                rdal[i] = dav * av * (1.0 - av);
                rdkr[i] = gg * (1.0 + (av - 1.0) * k_a[c]) + du * k_k[c];
            }
        }
        if (sizeof(T) == 4) { /* the CPU's dkf is the sum of both shares */
            std::vector<float> cw(n), ca(n), ckk(n), ckf(n), cwa(n), cwb(n), cdkf(n), cdwl(n), cdal(n), cdkr(n);
            timemix_forward_cpu(R, H, 64, wl.data(), al.data(), kraw.data(), w0.data(), a0.data(), k_k.data(),
                                k_a.data(), cw.data(), ca.data(), ckk.data(), ckf.data(), cwa.data(), cwb.data());
            if (s_cpu("timemix fwd w", cw, rw) || s_cpu("timemix fwd a", ca, ra) || s_cpu("timemix fwd kk", ckk, rkk) ||
                s_cpu("timemix fwd kf", ckf, rkf) || s_cpu("timemix fwd wa", cwa, rwa) || s_cpu("timemix fwd wb", cwb, rwb))
                return 1;
            for (size_t i = 0; i < n; i++) cdkf[i] = gkf[i] + gbk[i];
            timemix_backward_cpu(R, H, 64, wl.data(), w0.data(), cw.data(), a_st.data(), kk_st.data(), kraw.data(),
                                 k_k.data(), k_a.data(), gw.data(), cdkf.data(), gwa.data(), gwb.data(), cdwl.data(),
                                 cdal.data(), cdkr.data());
            if (s_cpu("timemix bwd dwl", cdwl, rdwl) || s_cpu("timemix bwd dal", cdal, rdal) ||
                s_cmp_split("timemix bwd dkraw", "cpu ", cdkr, rdkr, m, TOL_FP32))
                return 1;
        }
        if (!gpu) continue;

        arena_t a;
        float *dwl = a.up<float>(wl), *dw0 = a.up<float>(w0), *da0 = a.up<float>(a0), *dkk_ = a.up<float>(k_k);
        float *dka = a.up<float>(k_a), *dw = a.poison<float>(n);
        T *dal = a.up<T>(al), *dkraw = a.up<T>(kraw), *da = a.poison<T>(n), *dkk = a.poison<T>(n);
        T *dkf = a.poison<T>(n), *dwa = a.poison<T>(n), *dwb = a.poison<T>(n);
        CHECK(dwl && dw0 && da0 && dkk_ && dka && dw && dal && dkraw && da && dkk && dkf && dwa && dwb);
        st::timemix_fwd_kernel<T><<<(RH + 7) / 8, 256>>>(RH, H, dwl, dal, dkraw, dw0, da0, dkk_, dka, dw, da, dkk, dkf,
                                                         dwa, dwb);
        LAUNCHED();
        if (s_cmp("fwd w (fp32)", P, s_down(dw, n), rw, TOL_FP32)) return 1;
        if (s_cmp("fwd a", P, s_down(da, n), ra, s_tol<T>(1))) return 1;
        if (s_cmp("fwd kk", P, s_down(dkk, n), rkk, s_tol<T>(1))) return 1;
        if (s_cmp("fwd kf", P, s_down(dkf, n), rkf, s_tol<T>(1))) return 1;
        if (s_cmp("fwd wa", P, s_down(dwa, n), rwa, s_tol<T>(1))) return 1;
        /* wb = round(round(kk) round(a)): three roundings */
        if (s_cmp("fwd wb", P, s_down(dwb, n), rwb, s_tol<T>(3))) return 1;

        T *da_st = a.up<T>(a_st), *dkk_st = a.up<T>(kk_st), *dgkf = a.up<T>(gkf), *dgbk = a.up<T>(gbk);
        T *dgwa = a.up<T>(gwa), *dgwb = a.up<T>(gwb), *ddwl = a.poison<T>(n), *ddal = a.poison<T>(n),
          *ddkr = a.poison<T>(n);
        float *dgw = a.up<float>(gw);
        CHECK(da_st && dkk_st && dgkf && dgbk && dgwa && dgwb && ddwl && ddal && ddkr && dgw);
        st::timemix_bwd_kernel<T><<<(RH + 7) / 8, 256>>>(RH, H, dwl, dw0, da_st, dkk_st, dkraw, dkk_, dka, dgw, dgkf,
                                                         dgbk, dgwa, dgwb, ddwl, ddal, ddkr);
        LAUNCHED();
        if (s_cmp("bwd dwl", P, s_down(ddwl, n), rdwl, s_tol<T>(1))) return 1;
        /* gg = dkf + dbk is rounded to T before use: two roundings */
        if (s_cmp("bwd dal", P, s_down(ddal, n), rdal, s_tol<T>(2))) return 1;
        if (s_cmp_split("bwd dkraw", P, s_down(ddkr, n), rdkr, m, s_tol<T>(2))) return 1;
    }
    return 0;
}

template <typename T> static int s_groupnorm(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    const double eps = 64e-5;
    for (const rh_shape &sh : RH_SHAPES) {
        const int R = sh.R, H = sh.H, C = H * 64, RH = R * H;
        const size_t n = (size_t)R * C;
        /* y centred away from 0, so that the means checked are not near 0;
         * r, k, r_k and v, g, dout positive, so that the per-head sums u and
         * du, which scale whole outputs (dbv, dbr, dbk), are not the
         * cancellation of 64 terms (with one head, an fp32 sum near 0 would
         * have a relative error no tolerance tied to the precision covers) */
        std::vector<float> y = s_rand(n, s, 0, 2), r = s_rand(n, s, 0.2, 1.2), k = s_rand(n, s, 0.2, 1.2),
                           v = s_rand(n, s, 0.2, 1.2), g = s_rand(n, s, 0.2, 1.2), go = s_rand(n, s, 0.2, 1.2);
        std::vector<float> lw = s_rand(C, s, 0.5, 1.5), lb = s_rand(C, s, -0.5, 0.5), rk = s_rand(C, s, 0.2, 1.2);
        for (auto *q : {&y, &r, &k, &v, &g, &go}) s_round<T>(*q);
        std::vector<double> rout(n), rmean(RH), rrstd(RH), rdy(n), rdbr(n), rdbk(n), rdbv(n), rdg(n);
        std::vector<float> mean_st(RH), rstd_st(RH);
        for (int gi = 0; gi < RH; gi++) {
            const int h = gi % H;
            const size_t o = (size_t)gi * 64;
            double m = 0, var = 0, u = 0;
            for (int e = 0; e < 64; e++) {
                m += y[o + e];
                u += (double)r[o + e] * k[o + e] * rk[h * 64 + e];
            }
            m /= 64;
            for (int e = 0; e < 64; e++) var += (y[o + e] - m) * (y[o + e] - m);
            double rs = 1.0 / sqrt(var / 64 + eps);
            rmean[gi] = m;
            rrstd[gi] = rs;
            mean_st[gi] = (float)m;
            rstd_st[gi] = (float)rs;
            for (int e = 0; e < 64; e++) {
                int c = h * 64 + e;
                rout[o + e] = ((y[o + e] - m) * rs * lw[c] + lb[c] + u * v[o + e]) * g[o + e];
            }
            /* backward from the stored (fp32) statistics */
            double ms = mean_st[gi], rss = rstd_st[gi], sdx = 0, sdxx = 0, du = 0;
            std::vector<double> xh(64), dxh(64), dpre(64);
            for (int e = 0; e < 64; e++) {
                int c = h * 64 + e;
                xh[e] = (y[o + e] - ms) * rss;
                double pre = xh[e] * lw[c] + lb[c] + u * v[o + e];
                dpre[e] = (double)go[o + e] * g[o + e];
                rdg[o + e] = go[o + e] * pre;
                rdbv[o + e] = dpre[e] * u;
                dxh[e] = dpre[e] * lw[c];
                sdx += dxh[e];
                sdxx += dxh[e] * xh[e];
                du += dpre[e] * v[o + e];
            }
            sdx /= 64;
            sdxx /= 64;
            for (int e = 0; e < 64; e++) {
                int c = h * 64 + e;
                rdy[o + e] = rss * (dxh[e] - sdx - xh[e] * sdxx);
                rdbr[o + e] = du * k[o + e] * rk[c];
                rdbk[o + e] = du * r[o + e] * rk[c];
            }
        }
        if (sizeof(T) == 4) {
            std::vector<float> cm(RH), cr(RH), co(n), cdy(n), cdr(n), cdk(n), cdv(n), cdg(n);
            groupnorm_forward_cpu(R, H, 64, y.data(), lw.data(), lb.data(), r.data(), k.data(), v.data(), rk.data(),
                                  g.data(), cm.data(), cr.data(), co.data());
            groupnorm_backward_cpu(R, H, 64, y.data(), lw.data(), lb.data(), r.data(), k.data(), v.data(), rk.data(),
                                   g.data(), mean_st.data(), rstd_st.data(), go.data(), cdy.data(), cdr.data(),
                                   cdk.data(), cdv.data(), cdg.data());
            if (s_cpu("GN fwd out", co, rout) || s_cpu("GN fwd mean", cm, rmean) || s_cpu("GN fwd rstd", cr, rrstd) ||
                s_cpu("GN bwd dy", cdy, rdy) || s_cpu("GN bwd dbr", cdr, rdbr) || s_cpu("GN bwd dbk", cdk, rdbk) ||
                s_cpu("GN bwd dbv", cdv, rdbv) || s_cpu("GN bwd dg", cdg, rdg))
                return 1;
        }
        if (!gpu) continue;
        arena_t a;
        T *dy = a.up<T>(y), *dr = a.up<T>(r), *dk = a.up<T>(k), *dv = a.up<T>(v), *dg = a.up<T>(g), *dgo = a.up<T>(go);
        float *dlw = a.up<float>(lw), *dlb = a.up<float>(lb), *drk = a.up<float>(rk);
        float *dm = a.poison<float>(RH), *drs = a.poison<float>(RH), *dms = a.up<float>(mean_st),
              *drss = a.up<float>(rstd_st);
        T *dout = a.poison<T>(n), *ddy = a.poison<T>(n), *ddbr = a.poison<T>(n), *ddbk = a.poison<T>(n),
          *ddbv = a.poison<T>(n), *ddg = a.poison<T>(n);
        CHECK(dy && dr && dk && dv && dg && dgo && dlw && dlb && drk && dm && drs && dms && drss && dout && ddy &&
              ddbr && ddbk && ddbv && ddg);
        st::groupnorm_fwd_kernel<T><<<(RH + 7) / 8, 256>>>(RH, H, dy, dlw, dlb, dr, dk, dv, drk, dg, dm, drs, dout);
        LAUNCHED();
        st::groupnorm_bwd_kernel<T><<<(RH + 7) / 8, 256>>>(RH, H, dy, dlw, dlb, dr, dk, dv, drk, dg, dms, drss, dgo,
                                                           ddy, ddbr, ddbk, ddbv, ddg);
        LAUNCHED();
        printf("GroupNorm+bonus+gate R=%d H=%d\n", R, H);
        if (s_cmp("fwd out", P, s_down(dout, n), rout, s_tol<T>(1))) return 1;
        if (s_cmp("fwd mean", P, s_down(dm, RH), rmean, TOL_FP32)) return 1;
        if (s_cmp("fwd rstd", P, s_down(drs, RH), rrstd, TOL_FP32)) return 1;
        if (s_cmp("bwd dy", P, s_down(ddy, n), rdy, s_tol<T>(1))) return 1;
        if (s_cmp("bwd dbr", P, s_down(ddbr, n), rdbr, s_tol<T>(1))) return 1;
        if (s_cmp("bwd dbk", P, s_down(ddbk, n), rdbk, s_tol<T>(1))) return 1;
        if (s_cmp("bwd dbv", P, s_down(ddbv, n), rdbv, s_tol<T>(1))) return 1;
        if (s_cmp("bwd dg", P, s_down(ddg, n), rdg, s_tol<T>(1))) return 1;
    }
    return 0;
}

/* ---- the cross-entropy head --------------------------------------------- */

/* The float64 cross-entropy of rows x (rows, V): loss, argmax == target
 * (first index among ties) and softmax - onehot; rows with target -1 or
 * >= V zero. */
static void s_ce_ref(int rows, int V, const std::vector<float> &x, const std::vector<int32_t> &tg,
                     std::vector<double> &rloss, std::vector<int> &rcorr, std::vector<double> &rgrad)
{
    rloss.assign(rows, 0.0);
    rcorr.assign(rows, 0);
    rgrad.assign((size_t)rows * V, 0.0);
    for (int r = 0; r < rows; r++) {
        const float *row = &x[(size_t)r * V];
        if (tg[r] < 0 || tg[r] >= V) continue;
        double m = row[0];
        int am = 0;
        for (int v = 1; v < V; v++)
            if (row[v] > m) { m = row[v]; am = v; }
        double se = 0;
        for (int v = 0; v < V; v++) se += exp(row[v] - m);
        rloss[r] = m + log(se) - row[tg[r]];
        rcorr[r] = am == tg[r];
        for (int v = 0; v < V; v++) rgrad[(size_t)r * V + v] = exp(row[v] - m) / se - (v == tg[r] ? 1.0 : 0.0);
    }
}

/* ce_kernel<T>: loss and argmax (forward), softmax - onehot (backward), rows
 * with target -1 or >= V zero; V % 4 == 0 (16-byte path; V % 8 == 0 for
 * bf16 logits) and not; the gradient in a separate poisoned buffer, and in
 * place where the logits have the gradient's type. With fp32 logits (every
 * T), and for T = bf16 also with bf16 logits (the engine's plain
 * cross-entropy in bf16 mode: ce_kernel<bf16> on bf16 rows, in place). */
template <typename T> static int s_ce(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    const int Vs[] = {1003, 4100, 65536};
    const int rows = 9;
    for (int V : Vs) {
        const size_t n = (size_t)rows * V;
        std::vector<float> x = s_rand(n, s, -6, 6);
        std::vector<int32_t> tg(rows);
        for (int r = 0; r < rows; r++) tg[r] = (int32_t)(s_unif(s) * V);
        tg[1] = -1;
        tg[2] = V; /* out of range: ignored like -1 */
        /* row 3: the target is the (unique) max; row 4: a tie for the max at
         * 5 and 9, target 9 (the first index wins: not correct); row 5: the
         * same tie, target 5 (correct); 8 is exact in bf16, so these hold
         * for bf16 logits too */
        x[(size_t)3 * V + tg[3]] = 8.f;
        x[(size_t)4 * V + 5] = x[(size_t)4 * V + 9] = 8.f;
        tg[4] = 9;
        x[(size_t)5 * V + 5] = x[(size_t)5 * V + 9] = 8.f;
        tg[5] = 5;
        std::vector<double> rloss, rgrad;
        std::vector<int> rcorr;
        s_ce_ref(rows, V, x, tg, rloss, rcorr, rgrad);
        CHECK(rcorr[3] == 1 && rcorr[4] == 0 && rcorr[5] == 1);
        if (sizeof(T) == 4 && V < 2048) {
            /* the CPU head with an identity matrix (C = V): its logits are x
             * exactly and its dx is the gradient of the logits; it takes -1
             * for "no target" (the range check is the engine's) */
            std::vector<float> eye((size_t)V * V, 0.f), cdx(n), scratch((size_t)4 * V);
            for (int v = 0; v < V; v++) eye[(size_t)v * V + v] = 1.f;
            std::vector<int32_t> ctg = tg;
            double lsum = 0;
            int64_t ncorr = 0, ntg = 0;
            for (int r = 0; r < rows; r++) {
                if (ctg[r] >= V) ctg[r] = -1;
                lsum += rloss[r];
                ncorr += rcorr[r];
                ntg += ctg[r] >= 0;
            }
            head_result_t res;
            head_ce_cpu(rows, V, V, x.data(), eye.data(), ctg.data(), NULL, cdx.data(), scratch.data(), 4, &res);
            printf("CE head V=%d: cpu loss sum %.9g (reference %.9g), correct %lld of %lld (reference %lld)\n", V,
                   res.loss_sum, lsum, (long long)res.n_correct, (long long)res.n_targets, (long long)ncorr);
            CHECKF(fabs(res.loss_sum - lsum) <= TOL_FP32 * fabs(lsum), "cpu loss sum %.9g vs %.9g", res.loss_sum, lsum);
            CHECKF(res.n_correct == ncorr && res.n_targets == ntg, "cpu correct %lld of %lld",
                   (long long)res.n_correct, (long long)res.n_targets);
            if (s_cpu("CE grad", cdx, rgrad)) return 1;
        }
        /* bf16 logits: the kernel sees x rounded to bf16, so the reference is
         * computed from exactly those values and the bounds stay those of
         * fp32 logits (the loss accumulates in fp32: TOL_FP32; the gradient
         * is one rounding to bf16: s_tol<bf16>(1)). Rounding may create new
         * ties for a row's max; both sides keep the first index. */
        std::vector<float> xb = x;
        s_round<bf16>(xb);
        std::vector<double> bloss, bgrad;
        std::vector<int> bcorr;
        s_ce_ref(rows, V, xb, tg, bloss, bcorr, bgrad);
        CHECK(bcorr[3] == 1 && bcorr[4] == 0 && bcorr[5] == 1);
        /* and what the rounding itself costs against the exact logits: each
         * logit moves by at most |x| 2^-8 (BF16_U, round to nearest), so the
         * logsumexp moves by at most max|x| 2^-8 and the target's logit by
         * |x_t| 2^-8: a row's loss by at most 2 max|x| 2^-8 (1/16 here,
         * max|x| = 8); the figure printed is the largest seen */
        double dmax = 0;
        for (int r = 0; r < rows; r++) {
            double xm = 0;
            for (int v = 0; v < V; v++) xm = fmax(xm, fabs(x[(size_t)r * V + v]));
            const double d = fabs(bloss[r] - rloss[r]);
            dmax = fmax(dmax, d);
            CHECKF(d <= 2 * BF16_U * xm, "V %d row %d: bf16 rounding moved the loss by %.3e > %.3e", V, r, d,
                   2 * BF16_U * xm);
        }
        printf("CE head V=%d: rounding the logits to bf16 moves a row's loss by up to %.2e\n", V, dmax);
        /* 0 forward, 1 backward, 2 backward in place (fp32 logits, T = fp32);
         * 3, 4, 5: the same with bf16 logits (T = bf16 only) */
        for (int mode = 0; mode < 6 && gpu; mode++) {
            const bool lb = mode >= 3, inplace = mode % 3 == 2, bwd = mode % 3 > 0;
            if (lb ? sizeof(T) != 2 : inplace && sizeof(T) != 4) continue;
            arena_t a;
            float *dx = lb ? NULL : a.up<float>(x), *dloss = a.poison<float>(rows);
            bf16 *dxb = lb ? a.up<bf16>(xb) : NULL;
            int32_t *dcorr = a.poison<int32_t>(rows), *dtg = (int32_t *)a.alloc(rows * sizeof(int32_t));
            T *dgrad = inplace ? (lb ? (T *)dxb : (T *)dx) : a.poison<T>(n);
            CHECK((dx || dxb) && dloss && dcorr && dtg && dgrad);
            CU(cudaMemcpy(dtg, tg.data(), rows * sizeof(int32_t), cudaMemcpyHostToDevice));
            if (lb)
                st::ce_kernel<T><<<rows, st::CE_THREADS>>>(V, dxb, dgrad, dtg, dloss, dcorr, bwd);
            else
                st::ce_kernel<T><<<rows, st::CE_THREADS>>>(V, dx, dgrad, dtg, dloss, dcorr, bwd);
            LAUNCHED();
            printf("CE head V=%d rows=%d %s logits, %s\n", V, rows, lb ? "bf16" : "fp32",
                   !bwd ? "forward" : inplace ? "backward in place" : "backward");
            const std::vector<double> &eloss = lb ? bloss : rloss, &egrad = lb ? bgrad : rgrad;
            const std::vector<int> &ecorr = lb ? bcorr : rcorr;
            if (s_cmp("loss", P, s_down(dloss, rows), eloss, TOL_FP32)) return 1;
            std::vector<int32_t> corr(rows);
            CU(cudaMemcpy(corr.data(), dcorr, rows * sizeof(int32_t), cudaMemcpyDeviceToHost));
            for (int r = 0; r < rows; r++)
                CHECKF(corr[r] == ecorr[r], "V %d row %d: correct %d, expected %d (target %d)", V, r, corr[r], ecorr[r],
                       tg[r]);
            if (!bwd) { /* the forward leaves the gradient buffer alone */
                std::vector<float> gd = s_down(dgrad, n);
                for (size_t i = 0; i < n; i++) CHECKF(isnan(gd[i]), "forward-only wrote dlogits[%zu]", i);
                continue;
            }
            /* one rounding of a probability - onehot */
            if (s_cmp("grad", P, s_down(dgrad, n), egrad, s_tol<T>(1))) return 1;
        }
    }
    return 0;
}

/* ---- the observer objective -------------------------------------------- */

/* observer_kernel<T> (full teacher rows) and observer_topk_kernel<T> (the
 * teacher's top-k), against kernels/cpu's per-row observer_row_cpu and
 * observer_topk_row_cpu: row loss, CE, KL, argmax, gradient; rows with
 * target -1 or >= V zero; forward only leaves the gradient alone; the
 * gradient in a poisoned buffer, and for fp32 also in place. The top-k ids
 * of one row hold a repeated id and one out of range (the CPU's rules:
 * subtracted twice, skipped). */
template <typename T> static int s_observer(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    const int Vs[] = {1003, 4100};
    const int rows = 7, K = 16;
    const float alpha = 0.3f, tau = 2.f;
    for (int topk = 0; topk < 2; topk++)
        for (int V : Vs) {
            const size_t n = (size_t)rows * V;
            std::vector<float> x = s_rand(n, s, -6, 6), t = s_rand(n, s, -6, 6), tv = s_rand((size_t)rows * K, s, 0, 8);
            std::vector<int32_t> tg(rows), ti((size_t)rows * K);
            for (int r = 0; r < rows; r++) {
                tg[r] = (int32_t)(s_unif(s) * V);
                for (int i = 0; i < K; i++) ti[(size_t)r * K + i] = (int32_t)(s_unif(s) * V);
            }
            tg[1] = -1;
            tg[2] = V;
            ti[(size_t)3 * K + 1] = ti[(size_t)3 * K]; /* a repeated id */
            ti[(size_t)3 * K + 2] = V + 5;             /* an id out of range */
            std::vector<double> rloss(rows, 0.0), rce(rows, 0.0), rkl(rows, 0.0), rgrad(n, 0.0);
            std::vector<int> rcorr(rows, 0);
            for (int r = 0; r < rows; r++) {
                if (tg[r] < 0 || tg[r] >= V) continue;
                const float *row = &x[(size_t)r * V];
                int am = 0;
                for (int v = 1; v < V; v++)
                    if (row[v] > row[am]) am = v;
                rcorr[r] = am == tg[r];
                std::vector<float> ds(V);
                double ce, kl;
                if (topk)
                    observer_topk_row_cpu(V, K, row, &tv[(size_t)r * K], &ti[(size_t)r * K], tg[r], alpha, tau, &ce,
                                          &kl, ds.data());
                else
                    observer_row_cpu(V, row, &t[(size_t)r * V], tg[r], alpha, tau, &ce, &kl, ds.data());
                rce[r] = ce;
                rkl[r] = kl;
                rloss[r] = alpha * ce + (1.0 - alpha) * (double)tau * tau * kl;
                for (int v = 0; v < V; v++) rgrad[(size_t)r * V + v] = ds[v];
            }
            for (int mode = 0; mode < 3 && gpu; mode++) { /* forward, backward, backward in place (fp32) */
                if (mode == 2 && sizeof(T) != 4) continue;
                arena_t a;
                float *dx = a.up<float>(x), *dt = a.up<float>(t), *dtv = a.up<float>(tv);
                float *dloss = a.poison<float>(rows), *dce = a.poison<float>(rows), *dkl = a.poison<float>(rows);
                int32_t *dcorr = a.poison<int32_t>(rows), *dtg = (int32_t *)a.alloc(rows * sizeof(int32_t)),
                        *dti = (int32_t *)a.alloc(ti.size() * sizeof(int32_t));
                T *dgrad = mode == 2 ? (T *)dx : a.poison<T>(n);
                CHECK(dx && dt && dtv && dloss && dce && dkl && dcorr && dtg && dti && dgrad);
                CU(cudaMemcpy(dtg, tg.data(), rows * sizeof(int32_t), cudaMemcpyHostToDevice));
                CU(cudaMemcpy(dti, ti.data(), ti.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
                if (topk)
                    st::observer_topk_kernel<T><<<rows, st::OBS_THREADS>>>(V, K, dx, dtv, dti, dgrad, dtg, alpha, tau,
                                                                           dloss, dce, dkl, dcorr, mode > 0);
                else
                    st::observer_kernel<T><<<rows, st::OBS_THREADS>>>(V, dx, dt, dgrad, dtg, alpha, tau, dloss, dce, dkl,
                                                                      dcorr, mode > 0);
                LAUNCHED();
                printf("observer%s V=%d rows=%d %s\n", topk ? " top-k" : "", V, rows,
                       mode == 0 ? "forward" : mode == 1 ? "backward" : "backward in place");
                if (s_cmp("row loss", P, s_down(dloss, rows), rloss, TOL_FP32)) return 1;
                if (s_cmp("row CE", P, s_down(dce, rows), rce, TOL_FP32)) return 1;
                if (s_cmp("row KL", P, s_down(dkl, rows), rkl, TOL_FP32)) return 1;
                std::vector<int32_t> corr(rows);
                CU(cudaMemcpy(corr.data(), dcorr, rows * sizeof(int32_t), cudaMemcpyDeviceToHost));
                for (int r = 0; r < rows; r++)
                    CHECKF(corr[r] == rcorr[r], "V %d row %d: correct %d, expected %d", V, r, corr[r], rcorr[r]);
                if (mode == 0) {
                    std::vector<float> gd = s_down(dgrad, n);
                    for (size_t i = 0; i < n; i++) CHECKF(isnan(gd[i]), "forward-only wrote dlogits[%zu]", i);
                    continue;
                }
                if (s_cmp("grad", P, s_down(dgrad, n), rgrad, s_tol<T>(1))) return 1;
            }
        }
    return 0;
}

/* ---- the kernel-expanded state (kstate.cuh's launchers) ----------------- */

/* rbf_forward_cuda / rbf_backward_cuda (their kernels and cuBLAS products,
 * on a fresh handle in its default fp32 math mode, scratch buffers poisoned)
 * against kernels/cpu/rbf.c on the same inputs. Both add into their outputs,
 * which start at small random values (a store in place of an add fails).
 * One (row, head) of r is zero when there are several rows (rn = 0, no
 * gradient: rbf.h's rule). Tolerance 1e-4 in fp32, not 1e-5: here the
 * reference is itself fp32 (OpenBLAS), not float64, and every output comes
 * out of sums of M or 64 signed terms taken in other orders on both sides
 * (the features' dot products, U0 phi, dphi, q, the suffix sums), whose
 * fp32 errors add up; an indexing or accumulation bug is O(1). bf16 adds one
 * rounding of y and dr. */
template <typename T> static int s_kstate(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    struct { int B, Tn, H, M; } shapes[] = {{2, 5, 2, 40}, {1, 1, 1, 1}, {3, 7, 1, 130}};
    const float gamma = 1.5f;
    const double TOL_KS = 1e-4;
    /* the launchers refuse a feature count outside [1, RBF_MAX_M] before any
     * device work (so this part runs without a device too) */
    for (int badM : {0, st::RBF_MAX_M + 1}) {
        char err[ST_ERR_LEN] = "";
        int rc1 = rbf_forward_cuda<T>(NULL, 0, 1, 1, 1, badM, gamma, NULL, NULL, NULL, NULL, NULL, NULL, err);
        CHECKF(rc1 == ST_EINVAL && err[0], "rbf_forward_cuda with M = %d: rc %d", badM, rc1);
        err[0] = 0;
        int rc2 = rbf_backward_cuda<T>(NULL, 0, 1, 1, 1, badM, gamma, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                       NULL, err);
        CHECKF(rc2 == ST_EINVAL && err[0], "rbf_backward_cuda with M = %d: rc %d", badM, rc2);
        printf("kstate M=%d refused: %s\n", badM, err);
    }
    for (const auto &sh : shapes) {
        const int B = sh.B, Tn = sh.Tn, H = sh.H, M = sh.M, R = B * Tn, C = H * 64;
        const size_t n = (size_t)R * C, nU = (size_t)H * 64 * M;
        std::vector<float> r = s_rand(n, s, -1, 1), w = s_rand(n, s, 0.55, 1.0), U0 = s_rand(nU, s, -0.5, 0.5),
                           sv = s_rand(nU, s, -1, 1), y0 = s_rand(n, s, -0.01, 0.01), dy = s_rand(n, s, -1, 1),
                           dr0 = s_rand(n, s, -0.01, 0.01), dw0 = s_rand(n, s, -0.01, 0.01),
                           dU00 = s_rand(nU, s, -0.01, 0.01);
        if (R > 1)
            for (int e = 0; e < 64; e++) r[(size_t)(R - 1) * C + e] = 0.f;
        for (size_t hm = 0; hm < (size_t)H * M; hm++) { /* unit support vectors */
            double nn = 0;
            for (int e = 0; e < 64; e++) nn += (double)sv[hm * 64 + e] * sv[hm * 64 + e];
            for (int e = 0; e < 64; e++) sv[hm * 64 + e] = (float)(sv[hm * 64 + e] / sqrt(nn));
        }
        for (auto *v : {&r, &y0, &dy, &dr0}) s_round<T>(*v);
        std::vector<float> cy = y0, cdr = dr0, cdw = dw0, cdU0 = dU00, scratch((size_t)B * H * Tn);
        rbf_forward_cpu(B, Tn, H, M, gamma, r.data(), w.data(), U0.data(), sv.data(), cy.data());
        rbf_backward_cpu(B, Tn, H, M, gamma, r.data(), w.data(), U0.data(), sv.data(), dy.data(), cdr.data(),
                         cdw.data(), cdU0.data(), scratch.data());
        if (!gpu) continue;
        std::vector<double> ry(cy.begin(), cy.end()), rdr(cdr.begin(), cdr.end()), rdw(cdw.begin(), cdw.end()),
            rdU0(cdU0.begin(), cdU0.end());
        arena_t a;
        T *d_r = a.up<T>(r), *d_y = a.up<T>(y0), *d_dy = a.up<T>(dy), *d_dr = a.up<T>(dr0);
        float *d_w = a.up<float>(w), *d_U0 = a.up<float>(U0), *d_sv = a.up<float>(sv), *d_dw = a.up<float>(dw0),
              *d_dU0 = a.up<float>(dU00);
        float *scr = a.poison<float>(st::rbf_cuda_buf_floats(R, H, M));
        CHECK(d_r && d_y && d_dy && d_dr && d_w && d_U0 && d_sv && d_dw && d_dU0 && scr);
        st::rbf_cuda_bufs_t bf;
        float *p = scr;
        bf.rn = p; p += (size_t)R * C;
        bf.z = p; p += (size_t)R * C;
        bf.inv = p; p += (size_t)R * H;
        bf.mdec = p; p += (size_t)R * H;
        bf.d = p; p += (size_t)R * H;
        bf.q = p; p += (size_t)R * H;
        bf.phi = p; p += (size_t)R * H * M;
        bf.dphi = p;
        cublasHandle_t blas;
        CHECK(cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS);
        char err[ST_ERR_LEN];
        int rc = rbf_forward_cuda<T>(blas, 0, B, Tn, H, M, gamma, d_r, d_w, d_U0, d_sv, d_y, &bf, err);
        if (!rc) rc = rbf_backward_cuda<T>(blas, 0, B, Tn, H, M, gamma, d_r, d_w, d_U0, d_sv, d_dy, d_dr, d_dw, d_dU0,
                                           &bf, err);
        cudaError_t ce = cudaDeviceSynchronize();
        cublasDestroy(blas);
        CHECKF(rc == 0, "%s", err);
        CU(ce);
        printf("kstate B=%d T=%d H=%d M=%d\n", B, Tn, H, M);
        const double tol_t = s_tol<T>(1) - TOL_FP32 + TOL_KS; /* TOL_KS, plus a rounding in bf16 */
        if (s_cmp("fwd y (+=)", P, s_down(d_y, n), ry, tol_t)) return 1;
        if (s_cmp("bwd dr (+=)", P, s_down(d_dr, n), rdr, tol_t)) return 1;
        if (s_cmp("bwd dw (+=, fp32)", P, s_down(d_dw, n), rdw, TOL_KS)) return 1;
        if (s_cmp("bwd dU0 (+=, fp32)", P, s_down(d_dU0, nU), rdU0, TOL_KS)) return 1;
    }
    return 0;
}

/* ---- DBP ---------------------------------------------------------------- */

/* dbp_q_kernel<T> against kernels/cpu/dbp.c's dbp_q_cpu on WKV-shaped inputs
 * (w in [0.545, 1), a = -kk, b = kk icl, kk unit per head), one batch row
 * not sampled, T past, at and below the 16-token chunk. q accumulates: it
 * starts at the CPU's Q and must end at twice it (a store in place of the
 * atomic add fails). Both sides work in double from the same inputs and
 * differ only in summation order: tolerance 1e-9. */
template <typename T> static int s_dbp_q(uint64_t *s, int gpu)
{
    const char *P = s_pname<T>();
    struct { int B, Tn, H; } shapes[] = {{3, 37, 2}, {1, 1, 1}, {2, 16, 1}};
    for (const auto &sh : shapes) {
        const int B = sh.B, Tn = sh.Tn, H = sh.H;
        const size_t n = (size_t)B * Tn * H * 64, nq = (size_t)H * 64 * 64;
        std::vector<float> r = s_rand(n, s, -1, 1), w = s_rand(n, s, 0.545, 1.0), a(n), b(n);
        for (size_t g = 0; g < n / 64; g++) {
            std::vector<double> kk(64);
            double nn = 0;
            for (int e = 0; e < 64; e++) {
                kk[e] = 2 * s_unif(s) - 1;
                nn += kk[e] * kk[e];
            }
            for (int e = 0; e < 64; e++) {
                a[g * 64 + e] = (float)(-kk[e] / sqrt(nn));
                b[g * 64 + e] = (float)(kk[e] / sqrt(nn) * s_unif(s));
            }
        }
        for (auto *v : {&r, &a, &b}) s_round<T>(*v);
        std::vector<uint8_t> rows(B, 1);
        if (B > 1) rows[1] = 0;
        std::vector<double> q(nq, 0.0);
        dbp_q_cpu(B, Tn, H, r.data(), w.data(), a.data(), b.data(), rows.data(), q.data());
        if (!gpu) continue;
        arena_t ar;
        T *d_r = ar.up<T>(r), *d_a = ar.up<T>(a), *d_b = ar.up<T>(b);
        float *d_w = ar.up<float>(w);
        uint8_t *d_rows = (uint8_t *)ar.alloc(B);
        double *d_q = (double *)ar.alloc(nq * sizeof(double));
        CHECK(d_r && d_a && d_b && d_w && d_rows && d_q);
        CU(cudaMemcpy(d_rows, rows.data(), B, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(d_q, q.data(), nq * sizeof(double), cudaMemcpyHostToDevice));
        st::dbp_q_kernel<T><<<dim3(H, B), st::DBP_N>>>(Tn, H, d_r, d_w, d_a, d_b, d_rows, d_q);
        LAUNCHED();
        std::vector<double> got(nq), ref(nq);
        CU(cudaMemcpy(got.data(), d_q, nq * sizeof(double), cudaMemcpyDeviceToHost));
        double num = 0, den = 0;
        size_t bad = 0;
        for (size_t i = 0; i < nq; i++) {
            ref[i] = 2 * q[i];
            bad += !isfinite(got[i]);
            num += (got[i] - ref[i]) * (got[i] - ref[i]);
            den += ref[i] * ref[i];
        }
        const double e = sqrt(num / den);
        printf("DBP Q B=%d T=%d H=%d: %s rel L2 err %.2e (tol 1e-9)\n", B, Tn, H, P, e);
        CHECKF(bad == 0 && e <= 1e-9, "DBP Q: %zu non-finite, relative L2 error %.3e", bad, e);
    }
    return 0;
}

/* The R rule's element-wise kernels (fp32 R, double E): R to double, E to M
 * in place, the update with its non-finite flag, the check alone. */
static int s_dbp_rule(uint64_t *s, int gpu)
{
    const int N = 64, nblk = 3;
    const size_t n = (size_t)nblk * N * N;
    const double kappa = 0.3, eta = 0.05;
    std::vector<float> R = s_rand(n, s, -1, 1), Ef = s_rand(n, s, -2, 2), MRf = s_rand(n, s, -1, 1);
    std::vector<double> E(Ef.begin(), Ef.end()), MR(MRf.begin(), MRf.end()), rM(n), rRd(n), rR(n);
    for (size_t i = 0; i < n; i++) {
        const size_t in = i % ((size_t)N * N);
        rM[i] = in / N == in % N ? kappa * (E[i] - 1.0) : (1.0 - kappa) * E[i];
        rRd[i] = R[i];
        rR[i] = (float)(rRd[i] - eta * MR[i]);
    }
    if (!gpu) return 0;
    arena_t a;
    float *dR = a.up<float>(R);
    double *dRd = a.poison<double>(n), *dE = (double *)a.alloc(n * 8), *dMR = (double *)a.alloc(n * 8);
    int *dbad = a.poison<int>(1);
    CHECK(dR && dRd && dE && dMR && dbad);
    CU(cudaMemcpy(dE, E.data(), n * 8, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(dMR, MR.data(), n * 8, cudaMemcpyHostToDevice));
    const int eb = (int)((n + 255) / 256);
    st::dbp_r_to_f64_kernel<float><<<eb, 256>>>(n, dR, dRd);
    LAUNCHED();
    st::dbp_rule_matrix_kernel<double><<<eb, 256>>>(n, N, dE, kappa);
    LAUNCHED();
    CU(cudaMemset(dbad, 0, sizeof(int)));
    st::dbp_r_update_kernel<float><<<eb, 256>>>(n, dR, dRd, dMR, eta, dbad);
    LAUNCHED();
    std::vector<double> gRd(n), gM(n);
    int bad = -1;
    CU(cudaMemcpy(gRd.data(), dRd, n * 8, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(gM.data(), dE, n * 8, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(&bad, dbad, sizeof(int), cudaMemcpyDeviceToHost));
    printf("DBP rule n=%zu\n", n);
    for (size_t i = 0; i < n; i++) {
        CHECKF(gRd[i] == rRd[i], "Rd[%zu] %.17g, expected %.17g", i, gRd[i], rRd[i]);
        CHECKF(gM[i] == rM[i], "M[%zu] %.17g, expected %.17g (explicit double roundings: exact)", i, gM[i], rM[i]);
    }
    if (s_cmp("R update", "fp32", s_down(dR, n), rR, 0.0)) return 1; /* one double op chain, then (float): exact */
    CHECKF(bad == 0, "the update flagged a finite R");
    /* a non-finite R: the check alone, then the update, both flag it */
    R[n / 3] = INFINITY;
    CU(cudaMemcpy(dR, R.data(), n * 4, cudaMemcpyHostToDevice));
    CU(cudaMemset(dbad, 0, sizeof(int)));
    st::dbp_r_check_kernel<float><<<eb, 256>>>(n, dR, dbad);
    LAUNCHED();
    CU(cudaMemcpy(&bad, dbad, sizeof(int), cudaMemcpyDeviceToHost));
    CHECKF(bad == 1, "dbp_r_check_kernel missed an infinite R");
    CU(cudaMemset(dbad, 0, sizeof(int)));
    st::dbp_r_to_f64_kernel<float><<<eb, 256>>>(n, dR, dRd);
    st::dbp_r_update_kernel<float><<<eb, 256>>>(n, dR, dRd, dMR, eta, dbad);
    LAUNCHED();
    CU(cudaMemcpy(&bad, dbad, sizeof(int), cudaMemcpyDeviceToHost));
    CHECKF(bad == 1, "dbp_r_update_kernel missed an infinite R");
    return 0;
}

/* ---- the optimizer step ------------------------------------------------- */

/* grad_div, sumsq_partial/finish, adam_kernel with the engine's launch
 * shapes, against the same formulas in double on the host (engine/adam.c's
 * order of roundings); with clipping, without, and a non-finite gradient
 * (no update at all). */
static int s_adam(uint64_t *s, int gpu)
{
    const int TH = st::ADAM_THREADS, NB = st::ADAM_RED_BLOCKS;
    const size_t ns[] = {10007, 64, 1};
    for (size_t n : ns)
        for (int mode = 0; mode < 3; mode++) { /* 0 clipped, 1 not clipped, 2 a NaN in the gradient */
            std::vector<float> g = s_rand(n, s, -1, 1), p = s_rand(n, s, -1, 1), m = s_rand(n, s, -0.1, 0.1),
                               v = s_rand(n, s, 0, 0.01);
            if (mode == 2) g[n / 2] = NAN;
            const double div = 3.0, lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8;
            const double c1 = 1.0 - pow(b1, 3.0), c2 = 1.0 - pow(b2, 3.0);
            std::vector<float> gd(n);
            double ss = 0;
            for (size_t i = 0; i < n; i++) {
                gd[i] = (float)((double)g[i] / div);
                ss += (double)gd[i] * gd[i];
            }
            const double norm = sqrt(ss);
            const double max_norm = mode == 0 ? norm / 2 : norm * 2 + 1;
            const bool clip = max_norm > 0 && norm > max_norm;
            const double scale = clip ? max_norm / (norm + 1e-6) : 1.0;
            std::vector<double> rp(n), rm(n), rv(n), rg(n);
            for (size_t i = 0; i < n; i++) {
                rg[i] = gd[i];
                if (mode == 2) { rp[i] = p[i]; rm[i] = m[i]; rv[i] = v[i]; continue; }
                float gf = clip ? (float)((double)gd[i] * scale) : gd[i];
                double mm = b1 * m[i] + (1.0 - b1) * gf, vv = b2 * v[i] + (1.0 - b2) * gf * (double)gf;
                rm[i] = (float)mm;
                rv[i] = (float)vv;
                rp[i] = (float)((double)p[i] - lr * (mm / c1) / (sqrt(vv / c2) + eps));
            }
            if (!gpu) continue;
            arena_t a;
            float *dg = a.up<float>(g), *dp = a.up<float>(p), *dm = a.up<float>(m), *dv = a.up<float>(v);
            double *dpart = a.poison<double>(NB), *dnorm = a.poison<double>(1);
            int *dbad = a.poison<int>(1);
            CHECK(dg && dp && dm && dv && dpart && dnorm && dbad);
            int eb = (int)((n + TH - 1) / TH);
            if (eb > 4 * NB) eb = 4 * NB;
            st::grad_div_kernel<<<eb, TH>>>(n, dg, div);
            LAUNCHED();
            st::sumsq_partial_kernel<<<NB, TH>>>(n, dg, dpart);
            LAUNCHED();
            st::sumsq_finish_kernel<<<1, TH>>>(NB, dpart, dnorm);
            LAUNCHED();
            CU(cudaMemset(dbad, 0, sizeof(int)));
            st::adam_kernel<<<eb, TH>>>(n, dp, dm, dv, dg, dnorm, max_norm, lr, b1, b2, c1, c2, eps, dbad);
            LAUNCHED();
            double hnorm;
            int hbad;
            CU(cudaMemcpy(&hnorm, dnorm, sizeof(double), cudaMemcpyDeviceToHost));
            CU(cudaMemcpy(&hbad, dbad, sizeof(int), cudaMemcpyDeviceToHost));
            printf("adam n=%zu %s: norm %.9g (host %.9g)\n", n, mode == 0 ? "clipped" : mode == 1 ? "not clipped" : "NaN gradient",
                   hnorm, norm);
            CHECKF(hbad == 0, "adam flagged a non-finite parameter");
            if (mode == 2) {
                CHECKF(!isfinite(hnorm), "a NaN in the gradient gave the finite norm %g", hnorm);
            } else {
                /* both sums in double, in different orders: n u (u = 2^-53) bounds the gap */
                CHECKF(fabs(hnorm - norm) <= 1e-10 * norm, "norm %.17g vs %.17g", hnorm, norm);
                if (s_cmp("g / div", "fp32", s_down(dg, n), rg, TOL_FP32)) return 1;
            }
            if (s_cmp("p", "fp32", s_down(dp, n), rp, mode == 2 ? 0.0 : TOL_FP32)) return 1;
            if (s_cmp("m", "fp32", s_down(dm, n), rm, mode == 2 ? 0.0 : TOL_FP32)) return 1;
            if (s_cmp("v", "fp32", s_down(dv, n), rv, mode == 2 ? 0.0 : TOL_FP32)) return 1;
        }
    return 0;
}

/* absmax_partial/finish: the largest |x| and its first index; the first
 * non-finite element wins over any finite one. */
static int s_absmax(uint64_t *s, int gpu)
{
    const int TH = st::ADAM_THREADS, NB = st::ADAM_RED_BLOCKS;
    const size_t ns[] = {100003, 300, 1};
    for (size_t n : ns)
        for (int mode = 0; mode < 3; mode++) { /* 0 finite, 1 a tie for the max, 2 an inf and a NaN */
            std::vector<float> x = s_rand(n, s, -1, 1);
            size_t want = (size_t)(s_unif(s) * n);
            x[want] = -2.f;
            if (mode == 1 && n > 2) {
                size_t other = (want + n / 2) % n, lo = other < want ? other : want;
                x[other] = 2.f;
                want = lo;
            }
            if (mode == 2 && n > 2) {
                size_t i1 = (want + 1) % n, i2 = (want + 2) % n; /* the lower of the two non-finite ones wins */
                x[i1] = INFINITY;
                x[i2] = NAN;
                want = i1 < i2 ? i1 : i2;
            }
            if (!gpu) continue;
            arena_t a;
            float *dx = a.up<float>(x);
            st::absmax_t *dpart = a.poison<st::absmax_t>(NB), *dout = a.poison<st::absmax_t>(1);
            CHECK(dx && dpart && dout);
            st::absmax_partial_kernel<<<NB, TH>>>(n, dx, dpart);
            LAUNCHED();
            st::absmax_finish_kernel<<<1, TH>>>(NB, dpart, dout);
            LAUNCHED();
            st::absmax_t got;
            CU(cudaMemcpy(&got, dout, sizeof got, cudaMemcpyDeviceToHost));
            printf("absmax n=%zu mode %d: index %llu (expected %zu)\n", n, mode, got.idx, want);
            CHECKF(got.idx == want, "absmax index %llu, expected %zu", got.idx, want);
            if (mode < 2 || n <= 2) CHECKF(got.rank == 1 && got.val == 2.f, "absmax rank %d value %g", got.rank, got.val);
            else CHECKF(got.rank == 2, "absmax rank %d for a non-finite element", got.rank);
        }
    return 0;
}

/* ---- the table ---------------------------------------------------------- */

/* Each test runs its host part (references, CPU kernels) even without a
 * device, then skips; with one, fp32 first, then bf16, from one seed. */
static int s_gpu(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define BOTH(fn)                                                     \
    static int test_##fn(void)                                       \
    {                                                                \
        const int gpu = s_gpu();                                     \
        uint64_t seed = st_test_seed();                                    \
        if (s_##fn<float>(&seed, gpu) || s_##fn<bf16>(&seed, gpu))   \
            return 1;                                                \
        return gpu ? 0 : (st_test_have_gpu(), ST_TEST_SKIP);               \
    }
BOTH(layernorm_fwd)
BOTH(layernorm_bwd)
BOTH(ln_shift)
BOTH(lora_act)
BOTH(vmix)
BOTH(relu2)
BOTH(adds)
BOTH(timemix)
BOTH(groupnorm)
BOTH(ce)
BOTH(observer)
BOTH(kstate)
BOTH(dbp_q)

static int test_adam(void)
{
    const int gpu = s_gpu();
    uint64_t seed = st_test_seed();
    if (s_adam(&seed, gpu)) return 1;
    return gpu ? 0 : (st_test_have_gpu(), ST_TEST_SKIP);
}

static int test_dbp_rule(void)
{
    const int gpu = s_gpu();
    uint64_t seed = st_test_seed();
    if (s_dbp_rule(&seed, gpu)) return 1;
    return gpu ? 0 : (st_test_have_gpu(), ST_TEST_SKIP);
}

static int test_absmax(void)
{
    const int gpu = s_gpu();
    uint64_t seed = st_test_seed();
    if (s_absmax(&seed, gpu)) return 1;
    return gpu ? 0 : (st_test_have_gpu(), ST_TEST_SKIP);
}

int main(int argc, char **argv)
{
    static const st_test_t tests[] = {
        {"layernorm_fwd", test_layernorm_fwd}, {"layernorm_bwd", test_layernorm_bwd}, {"ln_shift", test_ln_shift},
        {"lora_act", test_lora_act},           {"vmix", test_vmix},                   {"relu2", test_relu2},
        {"adds", test_adds},                   {"timemix", test_timemix},             {"groupnorm", test_groupnorm},
        {"ce_head", test_ce},                  {"observer", test_observer},
        {"kstate", test_kstate},               {"dbp_q", test_dbp_q},                 {"dbp_rule", test_dbp_rule},                  {"adam", test_adam},                   {"absmax", test_absmax},
        {NULL, NULL},
    };
    return st_test_main(argc, argv, tests);
}
