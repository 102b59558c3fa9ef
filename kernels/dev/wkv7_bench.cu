/*
 * wkv7_bench.cu - dev program for the WKV7 kernels (llm.c's dev/cuda style):
 * checks every variant against the float64 reference on fresh random inputs,
 * then times forward and backward at SPEC section 8's shapes and the
 * engine's: the recurrent pair, the CUDA-core chunked forward with the split
 * backward, the tensor-core variants (TC, TCWS forwards; CHUNKED, CHUNKED_WS
 * and segment lengths; the chunk-product CPROD backward; the one-product
 * tf32 class TCWS1 + CPROD1WSSA and the bf16-operand forward TCWSB, each
 * against its own bounds), and what the launchers pick (WKV7_ALGO_AUTO), in
 * bf16, then a few in fp32. All pairs are checked; the bf16 AUTO pair by
 * name, the recurrent pair and AUTO are timed (docs/performance.md 1.2-1.4
 * timed the rest, and the variants removed since).
 *
 *   dev_wkv7_bench [--seed S] [--reps R] [--check-only] [--one FWD BWD B T H] [--hash]
 *
 * --hash runs the bf16 AUTO pair (TCWS1 + CPROD1WSSA) and a pair of every
 * other kernel family, in both precisions, on the check inputs and prints a
 * hash of every output's bytes: two builds given the same --seed must print
 * the same lines when a change keeps the arithmetic (diff the two outputs on
 * the GPU machine; dS0 is summed with atomics in pass 1, so its hash may
 * differ from run to run).
 *
 * --one times a single pair of algorithm ids (wkv7.cuh) at one shape, no
 * checks: for profilers (ncu --launch-skip 3 --launch-count 1 ...).
 *
 * Targets (SPEC section 8; bf16 inputs, fp32 state, with s0 and its gradient,
 * one H100): (B, T, H) = (8, 4096, 64) <= 7 ms, (8, 1024, 32) <= 1.5 ms,
 * (16, 512, 12) <= 0.8 ms for forward + backward; the official CUDA kernel
 * takes 14.4 / 2.91 / 1.45 ms, fla's Triton 25.6 / 3.33 / 2.39 ms.
 *
 * Napkin math per (b, t, h) row of N = 64 (shared/notes/wkv7-kernels.md):
 *   bytes  fwd: 6 inputs (w fp32, the rest bf16) + bf16 y + fp32 sa = 20 B/elem, plus the fp32
 *          checkpoint (16 KB per head every 16 tokens = 16 B/elem);
 *          bwd: 7 inputs + fp32 sa + 6 grads (dw fp32) = 34 B/elem + 16 B/elem
 *          checkpoint read. Total about 80 B/elem: (8,4096,64) moves 10.7 GB,
 *          3.6 ms at 3.0 TB/s.
 *   flops  fwd 4 FMA per state element (sa, decay+2 rank-1, y) = 8 N^2;
 *          bwd about 13 FMA per state element = 26 N^2 (plus the divides):
 *          (8,4096,64): 2^21 rows x 34 x 4096 = 292 GFLOP, 4.4 ms at the fp32
 *          FMA peak (67 TF/s) -- this recurrent algorithm cannot reach 7 ms
 *          at that shape without tensor cores (notes section 1).
 * Timing: CUDA events. The headline of each bench line (and its target
 * met / not met) is the GPU's own time: --reps forwards launched back to
 * back, then --reps backwards, one event pair around each run, the mean
 * per rep. The second line is the median of --reps runs (after 3 warm-ups)
 * that each sync, whose intervals also hold the host's launch preparation
 * (tensor maps, attributes, AUTO's device query; docs/performance.md 0).
 * Every line names its checkpoint interval (ckpt 16, or 32 for a
 * checkpoint every two chunks, WKV7_CUDA_CKPT_PAIR, docs/performance.md
 * 1.8); AUTO runs at wkv7_cuda_ckpt_every's interval, the one the engine
 * gives the default launchers. --one takes --ckpt E (default 16).
 */
#include "kernels/cuda/st_cuda.h"
#include "kernels/cuda/wkv7.cuh"
#include "kernels/dev/wkv7_ref.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vector>

#define CK(call)                                                                          \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)
#define CKST(call)                                                                        \
    do {                                                                                  \
        int rc_ = (call);                                                                 \
        if (rc_) { fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, err); exit(1); }    \
    } while (0)

static const int N = WKV7_REF_N;

static uint16_t f2bf(float f) { __nv_bfloat16 b = __float2bfloat16_rn(f); uint16_t u; memcpy(&u, &b, 2); return u; }
static float bf2f(uint16_t u) { uint32_t x = (uint32_t)u << 16; float f; memcpy(&f, &x, 4); return f; }

static const char *algo_name(int algo)
{
    return algo == WKV7_ALGO_AUTO ? "auto" : algo == WKV7_FWD_CHUNKED ? "chunked" : algo == WKV7_FWD_TC ? "tc"
         : algo == WKV7_FWD_TCWS ? "tcws" : algo == WKV7_FWD_TCWS1 ? "tcws1" : algo == WKV7_FWD_TCWSB ? "tcwsb"
         : "recurrent";
}
static const char *balgo_name(int algo)
{
    static const char *seg[] = {"seg0", "seg1", "seg2", "seg3", "seg4", "seg5", "seg6", "seg7", "seg8"};
    if (algo > 16 && algo <= 24) return seg[algo - 16];
    return algo == WKV7_ALGO_AUTO ? "auto" : algo == WKV7_BWD_SPLIT ? "split" : algo == WKV7_BWD_CHUNKED ? "chunked"
         : algo == WKV7_BWD_CHUNKED_WS ? "chunkws" : algo == WKV7_BWD_CPROD ? "cprod"
         : algo == WKV7_BWD_CPROD1WSSA ? "cprod1wssa" : "recurrent";
}

/* Precision class of a pair (tests/test_cuda_wkv.c has the same bounds):
 * 0 about fp32 (3xTF32 or fp32 FMAs), 1 one tf32 product (TCWS1,
 * CPROD1WSSA), 2 bf16 operands (TCWSB); a class-0 pair's step-back rule
 * applies to dr, dw, da. */
static int pair_class(int algo, int balgo)
{
    if (algo == WKV7_FWD_TCWSB) return 2;
    if (algo == WKV7_FWD_TCWS1 || balgo == WKV7_BWD_CPROD1WSSA) return 1;
    return 0;
}

/* FNV-1a over a device buffer's bytes */
static unsigned long long hash_dev(const void *p, size_t bytes)
{
    std::vector<unsigned char> h(bytes);
    CK(cudaMemcpy(h.data(), p, bytes, cudaMemcpyDeviceToHost));
    unsigned long long x = 1469598103934665603ull;
    for (unsigned char c : h) x = (x ^ c) * 1099511628211ull;
    return x;
}

/* One precision's check on fresh inputs; returns the worst relative error.
 * print_hash: also print a hash of every output (--hash). */
static double check(int algo, int balgo, int B, int T, int H, int regime, bool bf16, uint64_t seed,
                    bool print_hash = false, int every = WKV7_CUDA_CHUNK)
{
    char err[ST_ERR_LEN];
    size_t n = (size_t)B * T * H * N, ns = (size_t)H * N * N, nf = (size_t)B * H * N * N;
    std::vector<std::vector<float>> in(8);
    for (int i = 0; i < 8; i++) in[i].resize(i == 6 ? ns : n);
    wkv7_ref_random_inputs(B, T, H, seed, regime, in[0].data(), in[1].data(), in[2].data(), in[3].data(),
                           in[4].data(), in[5].data(), in[6].data(), in[7].data());
    if (bf16) /* the reference sees what the kernel sees; w stays fp32 (wkv7.cuh) */
        for (int i = 0; i < 8; i++)
            if (i != 6 && i != 1) for (auto &x : in[i]) x = bf2f(f2bf(x));
    std::vector<double> ry(n), rsf(nf);
    std::vector<std::vector<double>> rg(7);
    for (int i = 0; i < 7; i++) rg[i].resize(i == 6 ? ns : n);
    if (!print_hash) { /* (hashes need no reference) */
        wkv7_ref_forward(B, T, H, in[0].data(), in[1].data(), in[2].data(), in[3].data(), in[4].data(),
                         in[5].data(), in[6].data(), ry.data(), rsf.data());
        wkv7_ref_backward(B, T, H, in[0].data(), in[1].data(), in[2].data(), in[3].data(), in[4].data(),
                          in[5].data(), in[6].data(), in[7].data(), rg[0].data(), rg[1].data(), rg[2].data(),
                          rg[3].data(), rg[4].data(), rg[5].data(), rg[6].data());
    }
    /* device buffers: r w k v a b dy, y, dr dw dk dv da db; w and dw are fp32 always */
    auto esz_of = [&](int i) -> size_t { return (bf16 && i != 1 && i != 9) ? 2 : 4; };
    void *d[14];
    float *s0, *sf, *ck, *sa, *ds0;
    for (int i = 0; i < 14; i++) CK(cudaMalloc(&d[i], esz_of(i) * n));
    CK(cudaMalloc(&s0, 4 * ns)); CK(cudaMalloc(&sf, 4 * nf)); CK(cudaMalloc(&ds0, 4 * ns));
    CK(cudaMalloc(&ck, 4 * wkv7_cuda_ckpt_floats_every(B, T, H, every)));
    CK(cudaMalloc(&sa, 4 * wkv7_cuda_sa_floats(B, T, H)));
    const int src[7] = {0, 1, 2, 3, 4, 5, 7};
    std::vector<uint16_t> hb(n);
    for (int i = 0; i < 7; i++) {
        if (esz_of(i) == 2) {
            for (size_t x = 0; x < n; x++) hb[x] = f2bf(in[src[i]][x]);
            CK(cudaMemcpy(d[i], hb.data(), 2 * n, cudaMemcpyHostToDevice));
        } else {
            CK(cudaMemcpy(d[i], in[src[i]].data(), 4 * n, cudaMemcpyHostToDevice));
        }
    }
    CK(cudaMemcpy(s0, in[6].data(), 4 * ns, cudaMemcpyHostToDevice));
    for (int i = 7; i < 14; i++) CK(cudaMemset(d[i], 0xff, esz_of(i) * n)); /* NaN poison */
    CK(cudaMemset(sf, 0xff, 4 * nf));
    CK(cudaMemset(ds0, 0, 4 * ns));
    if (bf16) {
        typedef __nv_bfloat16 bf;
        CKST(wkv7_forward_cuda_algo(algo, 1, B, T, H, d[0], (float *)d[1], d[2], d[3], d[4], d[5], s0, d[7], sf, ck,
                                    every, sa, 0, err));
        CKST(wkv7_backward_cuda_algo(balgo, 1, B, T, H, d[0], (float *)d[1], d[2], d[3], d[4], d[5], ck,
                                     every, sa, d[6], d[8], (float *)d[9], d[10], d[11], d[12], d[13], ds0,
                                     0, err));
    } else {
        typedef float fl;
        CKST(wkv7_forward_cuda_algo(algo, 0, B, T, H, d[0], (float *)d[1], d[2], d[3], d[4], d[5], s0, d[7], sf, ck,
                                    every, sa, 0, err));
        CKST(wkv7_backward_cuda_algo(balgo, 0, B, T, H, d[0], (float *)d[1], d[2], d[3], d[4], d[5], ck,
                                     every, sa, d[6], d[8], (float *)d[9], d[10], d[11], d[12], d[13], ds0,
                                     0, err));
    }
    CK(cudaDeviceSynchronize());
    if (print_hash) {
        const char *hn[8] = {"y", "dr", "dw", "dk", "dv", "da", "db", "ds0"};
        printf("hash %s fwd %s bwd %s ckpt %d (%d,%d,%d) regime %d:", bf16 ? "bf16" : "fp32", algo_name(algo),
               balgo_name(balgo), every, B, T, H, regime);
        for (int i = 0; i < 7; i++) printf(" %s %016llx", hn[i], hash_dev(d[7 + i], esz_of(7 + i) * n));
        printf(" %s %016llx\n", hn[7], hash_dev(ds0, 4 * ns));
        for (int i = 0; i < 14; i++) CK(cudaFree(d[i]));
        CK(cudaFree(s0)); CK(cudaFree(sf)); CK(cudaFree(ds0)); CK(cudaFree(ck)); CK(cudaFree(sa));
        return 0;
    }
    std::vector<float> got(std::max(n, nf));
    auto fetch = [&](int i) {
        void *p = d[i];
        if (esz_of(i) == 2) {
            CK(cudaMemcpy(hb.data(), p, 2 * n, cudaMemcpyDeviceToHost));
            for (size_t x = 0; x < n; x++) got[x] = bf2f(hb[x]);
        } else {
            CK(cudaMemcpy(got.data(), p, 4 * n, cudaMemcpyDeviceToHost));
        }
    };
    const char *names[9] = {"y", "dr", "dw", "dk", "dv", "da", "db", "s_final", "ds0"};
    double e[9];
    fetch(7); e[0] = wkv7_ref_rel(got.data(), ry.data(), n);
    for (int g = 0; g < 6; g++) { fetch(8 + g); e[1 + g] = wkv7_ref_rel(got.data(), rg[g].data(), n); }
    CK(cudaMemcpy(got.data(), sf, 4 * nf, cudaMemcpyDeviceToHost)); e[7] = wkv7_ref_rel(got.data(), rsf.data(), nf);
    CK(cudaMemcpy(got.data(), ds0, 4 * ns, cudaMemcpyDeviceToHost)); e[8] = wkv7_ref_rel(got.data(), rg[6].data(), ns);
    /* tolerances as in tests/test_cuda_wkv.c: dr, dw, da depend on the
     * stepped-back state; bf16 outputs carry their own rounding */
    double tol_exact = 1e-5, tol_out = bf16 ? 5e-3 : 1e-5, tol_back = bf16 ? 5e-3 : 1e-3;
    double tol_dw = bf16 ? 1e-3 : tol_back; /* dw is fp32 in both */
    const int cls = pair_class(algo, balgo);
    if (cls == 1) { tol_exact = 1e-3; tol_out = bf16 ? 5e-3 : 1e-3; tol_back = bf16 ? 5e-3 : 2e-3; tol_dw = 4e-3; }
    if (cls == 2) { tol_out = tol_back = 1e-2; tol_exact = 5e-3; tol_dw = 3e-2; }
    const double tol[9] = {tol_out, tol_back, tol_dw, tol_out, tol_out, tol_back, tol_out, tol_exact, tol_exact};
    double worst = 0; /* worst error / tolerance */
    printf("check %s fwd %s bwd %s ckpt %d (%d,%d,%d) regime %d:", bf16 ? "bf16" : "fp32", algo_name(algo),
           balgo_name(balgo), every, B, T, H, regime);
    for (int i = 0; i < 9; i++) { printf(" %s %.1e", names[i], e[i]); worst = std::max(worst, e[i] / tol[i]); }
    if (!(worst <= 1)) worst = 2;
    printf("%s\n", worst <= 1 ? "" : "  <- over tolerance");
    for (int i = 0; i < 14; i++) CK(cudaFree(d[i]));
    CK(cudaFree(s0)); CK(cudaFree(sf)); CK(cudaFree(ds0)); CK(cudaFree(ck)); CK(cudaFree(sa));
    return worst;
}

static float median(std::vector<float> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

/* Times bf16 forward and backward at one shape; inputs are a random pool of
 * 256 tokens tiled over T (random, never zeros). */
static void bench(int algo, int balgo, int B, int T, int H, int reps, uint64_t seed, double target_ms, double official_ms,
                  bool fp32 = false, int every = WKV7_CUDA_CHUNK)
{
    char err[ST_ERR_LEN];
    typedef __nv_bfloat16 bf;
    const int es = fp32 ? 4 : 2; /* element size of r k v a b dy y dr dk dv da db */
    size_t n = (size_t)B * T * H * N, ns = (size_t)H * N * N;
    const int PT = 256;
    size_t np = (size_t)PT * H * N;
    std::vector<std::vector<float>> in(8);
    for (int i = 0; i < 8; i++) in[i].resize(i == 6 ? ns : np);
    wkv7_ref_random_inputs(1, PT, H, seed, 0, in[0].data(), in[1].data(), in[2].data(), in[3].data(),
                           in[4].data(), in[5].data(), in[6].data(), in[7].data());
    bf *d[14]; /* r w k v a b dy, y, dr dw dk dv da db; d[1] (w) and d[9] (dw) hold fp32 */
    float *s0, *ck, *sa, *ds0;
    for (int i = 0; i < 14; i++) CK(cudaMalloc(&d[i], (i == 1 || i == 9 ? 4 : es) * n));
    CK(cudaMalloc(&s0, 4 * ns)); CK(cudaMalloc(&ds0, 4 * ns));
    CK(cudaMalloc(&ck, 4 * wkv7_cuda_ckpt_floats_every(B, T, H, every)));
    CK(cudaMalloc(&sa, 4 * wkv7_cuda_sa_floats(B, T, H)));
    const int src[7] = {0, 1, 2, 3, 4, 5, 7};
    std::vector<uint16_t> hb(np);
    for (int i = 0; i < 7; i++) {
        const bool f32 = i == 1 || fp32;
        for (size_t x = 0; x < np; x++) hb[x] = f2bf(in[src[i]][x]);
        for (size_t off = 0; off < n; off += np)
            CK(cudaMemcpy((char *)d[i] + (f32 ? 4 : 2) * off, f32 ? (void *)in[src[i]].data() : (void *)hb.data(),
                          (f32 ? 4 : 2) * std::min(np, n - off), cudaMemcpyHostToDevice));
    }
    CK(cudaMemcpy(s0, in[6].data(), 4 * ns, cudaMemcpyHostToDevice));
    CK(cudaMemset(ds0, 0, 4 * ns));
    cudaEvent_t e0, e1, e2;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1)); CK(cudaEventCreate(&e2));
    std::vector<float> tf, tb, tt;
    for (int it = 0; it < reps + 3; it++) {
        CK(cudaEventRecord(e0));
        CKST(wkv7_forward_cuda_algo(algo, !fp32, B, T, H, d[0], (float *)d[1], d[2], d[3], d[4], d[5], s0, d[7], NULL,
                                    ck, every, sa, 0, err));
        CK(cudaEventRecord(e1));
        CKST(wkv7_backward_cuda_algo(balgo, !fp32, B, T, H, d[0], (float *)d[1], d[2], d[3], d[4], d[5], ck,
                                     every, sa, d[6], d[8], (float *)d[9], d[10], d[11], d[12], d[13], ds0,
                                     0, err));
        CK(cudaEventRecord(e2));
        CK(cudaEventSynchronize(e2));
        float a, b2;
        CK(cudaEventElapsedTime(&a, e0, e1));
        CK(cudaEventElapsedTime(&b2, e1, e2));
        if (it >= 3) { tf.push_back(a); tb.push_back(b2); tt.push_back(a + b2); }
    }
    /* The same launches back to back, one event pair around all reps of
     * each: the GPU's own time. The loop above syncs after every rep and
     * records its first event on an idle GPU, so each of its intervals
     * also holds the host's preparation of the launch (tensor maps,
     * attributes, AUTO's device query): docs/performance.md section 0. */
    float bf_ms = 0, bb_ms = 0;
    CK(cudaEventRecord(e0));
    for (int it = 0; it < reps; it++)
        CKST(wkv7_forward_cuda_algo(algo, !fp32, B, T, H, d[0], (float *)d[1], d[2], d[3], d[4], d[5], s0, d[7], NULL,
                                    ck, every, sa, 0, err));
    CK(cudaEventRecord(e1));
    for (int it = 0; it < reps; it++)
        CKST(wkv7_backward_cuda_algo(balgo, !fp32, B, T, H, d[0], (float *)d[1], d[2], d[3], d[4], d[5], ck,
                                     every, sa, d[6], d[8], (float *)d[9], d[10], d[11], d[12], d[13], ds0,
                                     0, err));
    CK(cudaEventRecord(e2));
    CK(cudaEventSynchronize(e2));
    CK(cudaEventElapsedTime(&bf_ms, e0, e1));
    CK(cudaEventElapsedTime(&bb_ms, e1, e2));
    double rows = (double)B * T * H;
    /* napkin bytes: the checkpoints written and read (pass 1's D as many again is not counted) */
    double bytes = rows * N * (20 + 34) + 2.0 * wkv7_cuda_ckpt_floats_every(B, T, H, every) * 4;
    double flops = rows * 34.0 * N * N;
    /* the headline is the GPU's own time (launches back to back); targets
     * are judged on it */
    const double gt = (bf_ms + bb_ms) / reps;
    char verdict[96] = "";
    if (target_ms > 0)
        snprintf(verdict, sizeof verdict, " | target %.2f ms %s, official %.2f ms", target_ms,
                 gt <= target_ms ? "met" : "not met", official_ms);
    printf("bench %s fwd %-9s bwd %-10s ckpt %d (%2d,%4d,%2d): fwd %7.3f ms  bwd %7.3f ms  total %7.3f ms "
           "(GPU time, back to back, mean of %d) | %5.2f TB/s %5.1f TFLOP/s%s\n",
           fp32 ? "fp32" : "bf16", algo_name(algo), balgo_name(balgo), every, B, T, H, bf_ms / reps, bb_ms / reps, gt,
           reps, bytes / (gt * 1e-3) / 1e12, flops / (gt * 1e-3) / 1e12, verdict);
    printf("      per rep, median of %d, with the host's launch preparation: fwd %7.3f ms  bwd %7.3f ms  total %7.3f ms\n",
           reps, median(tf), median(tb), median(tt));
    for (int i = 0; i < 14; i++) CK(cudaFree(d[i]));
    CK(cudaFree(s0)); CK(cudaFree(ds0)); CK(cudaFree(ck)); CK(cudaFree(sa));
}

int main(int argc, char **argv)
{
    uint64_t seed = (uint64_t)time(NULL);
    int reps = 20;
    bool check_only = false, have_one = false, hash = false;
    int one[5] = {0, 0, 0, 0, 0}, one_every = WKV7_CUDA_CHUNK;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--check-only")) check_only = true;
        else if (!strcmp(argv[i], "--hash")) hash = true;
        else if (!strcmp(argv[i], "--ckpt") && i + 1 < argc) one_every = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--one") && i + 5 < argc) {
            for (int q = 0; q < 5; q++) one[q] = atoi(argv[i + 1 + q]);
            have_one = true;
            i += 5;
        } else {
            fprintf(stderr, "usage: %s [--seed S] [--reps R] [--check-only] [--one FWD BWD B T H [--ckpt E]] [--hash]\n",
                    argv[0]);
            return 2;
        }
    }
    if (reps < 1 || reps > 100000) {
        fprintf(stderr, "%s: --reps must be 1 .. 100000 (got %d)\n", argv[0], reps);
        return 2;
    }
    if (have_one) {
        bench(one[0], one[1], one[2], one[3], one[4], reps, seed, 0, 0, false, one_every);
        return 0;
    }
    if (hash) { /* T not a multiple of 16, several heads and batch rows, every regime */
        const struct { int B, T, H, regime; } hs[] = {{2, 100, 4, 0}, {2, 100, 4, 1}, {2, 100, 4, 2}, {1, 300, 2, 0},
                                                      {3, 1000, 5, 0}, {2, 4096, 3, 1}};
        const int hp[6][2] = {{WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA}, {WKV7_FWD_RECURRENT, WKV7_BWD_SPLIT},
                              {WKV7_FWD_TC, WKV7_BWD_CHUNKED}, {WKV7_FWD_TCWS, WKV7_BWD_CHUNKED_WS},
                              {WKV7_FWD_TCWSB, WKV7_BWD_CPROD}, {WKV7_FWD_CHUNKED, WKV7_BWD_RECURRENT}};
        for (auto &pr : hp)
            for (auto &c : hs) {
                check(pr[0], pr[1], c.B, c.T, c.H, c.regime, true, seed, true);
                check(pr[0], pr[1], c.B, c.T, c.H, c.regime, false, seed, true);
            }
        for (auto &c : hs) { /* the AUTO pair with a checkpoint every two chunks */
            check(WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, c.B, c.T, c.H, c.regime, true, seed, true, WKV7_CUDA_CKPT_PAIR);
            check(WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, c.B, c.T, c.H, c.regime, false, seed, true, WKV7_CUDA_CKPT_PAIR);
        }
        return 0;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs; seed %llu\n", prop.name, prop.multiProcessorCount, (unsigned long long)seed);
    /* every pair of algorithms the launchers can pick, in both precisions;
     * failures are reported, and the timings still run unless --check-only,
     * so that one run on the GPU machine says everything */
    bool ok = true;
    const struct { int B, T, H, regime; } cs[] = {{2, 100, 4, 0}, {2, 100, 4, 1}, {2, 100, 4, 2}, {1, 300, 2, 0}};
    /* the last pair is informational: TCWSB with the step-back CHUNKED
     * backward shows why the bf16-operand forward needs a chunk-product
     * backward; its errors are printed, not counted */
    const int pairs[14][2] = {{WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA}, {WKV7_FWD_RECURRENT, WKV7_BWD_RECURRENT},
                              {WKV7_FWD_RECURRENT, WKV7_BWD_SPLIT}, {WKV7_FWD_CHUNKED, WKV7_BWD_SPLIT},
                              {WKV7_FWD_TC, WKV7_BWD_CHUNKED}, {WKV7_FWD_TC, WKV7_BWD_RECURRENT},
                              {WKV7_FWD_RECURRENT, WKV7_BWD_CHUNKED_SEG(1)}, {WKV7_FWD_TCWS, WKV7_BWD_CHUNKED_WS},
                              {WKV7_FWD_TCWS, WKV7_BWD_SPLIT}, {WKV7_FWD_TCWS, WKV7_BWD_CPROD},
                              {WKV7_FWD_RECURRENT, WKV7_BWD_CPROD}, {WKV7_FWD_TCWSB, WKV7_BWD_CPROD},
                              {WKV7_FWD_TCWSB, WKV7_BWD_CPROD1WSSA}, {WKV7_FWD_TCWSB, WKV7_BWD_CHUNKED}};
    for (auto &pr : pairs)
        for (auto &c : cs) {
            const bool counts = !(pr[0] == WKV7_FWD_TCWSB && pr[1] == WKV7_BWD_CHUNKED);
            if (check(pr[0], pr[1], c.B, c.T, c.H, c.regime, false, seed) > 1 && counts) ok = false;
            if (check(pr[0], pr[1], c.B, c.T, c.H, c.regime, true, seed) > 1 && counts) ok = false;
        }
    /* a checkpoint every two chunks (WKV7_CUDA_CKPT_PAIR): the pairs that
     * take it, at the same bounds; odd and even chunk counts, T not a
     * multiple of 32 */
    const struct { int B, T, H, regime; } cp[] = {{2, 100, 4, 0}, {2, 100, 4, 2}, {1, 300, 2, 1}, {3, 48, 2, 0},
                                                  {1, 64, 3, 2}, {2, 17, 2, 0}};
    const int ppairs[2][2] = {{WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA}, {WKV7_FWD_TCWSB, WKV7_BWD_CPROD1WSSA}};
    for (auto &pr : ppairs)
        for (auto &c : cp) {
            if (check(pr[0], pr[1], c.B, c.T, c.H, c.regime, false, seed, false, WKV7_CUDA_CKPT_PAIR) > 1) ok = false;
            if (check(pr[0], pr[1], c.B, c.T, c.H, c.regime, true, seed, false, WKV7_CUDA_CKPT_PAIR) > 1) ok = false;
        }
    printf("checks: %s\n", ok ? "PASS" : "FAIL");
    if (check_only) return ok ? 0 : 1;
    /* forward and backward are timed apart, so each row also times its
     * backward against the others' */
    /* the bf16 AUTO pair by name, the official pair, then what the
     * launchers pick; sections 1.2-1.4 timed the other pairs */
    /* the pair with a checkpoint every chunk and every two chunks, the
     * official pair, then what the launchers pick (AUTO, at the interval
     * wkv7_cuda_ckpt_every gives the default launchers) */
    const int timed[4][3] = {{WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, WKV7_CUDA_CHUNK},
                             {WKV7_FWD_TCWS1, WKV7_BWD_CPROD1WSSA, WKV7_CUDA_CKPT_PAIR},
                             {WKV7_FWD_RECURRENT, WKV7_BWD_RECURRENT, WKV7_CUDA_CHUNK},
                             {WKV7_ALGO_AUTO, WKV7_ALGO_AUTO, wkv7_cuda_ckpt_every(1)}};
    for (auto &tp : timed) {
        bench(tp[0], tp[1], 8, 4096, 64, reps, seed, 7.0, 14.4, false, tp[2]);
        bench(tp[0], tp[1], 8, 1024, 32, reps, seed, 1.5, 2.91, false, tp[2]);
        bench(tp[0], tp[1], 16, 512, 12, reps, seed, 0.8, 1.45, false, tp[2]);
        bench(tp[0], tp[1], 8, 1024, 12, reps, seed, 0, 0, false, tp[2]); /* one layer of the 12 x 768 engine */
        bench(tp[0], tp[1], 8, 1024, 16, reps, seed, 0, 0, false, tp[2]); /* one layer of the 24 x 1024 engine */
        bench(tp[0], tp[1], 4, 1024, 16, reps, seed, 0, 0, false, tp[2]); /* 64 heads: fewer heads than SMs */
    }
    /* fp32 (the engine's fp32 mode): the old pairs against the tensor-core
     * ones at the engine's shapes and SPEC's middle one */
    const int timed32[4][2] = {{WKV7_FWD_RECURRENT, WKV7_BWD_RECURRENT}, {WKV7_FWD_TCWS, WKV7_BWD_CHUNKED},
                               {WKV7_FWD_TCWS, WKV7_BWD_CPROD}, {WKV7_ALGO_AUTO, WKV7_ALGO_AUTO}};
    for (auto &tp : timed32) {
        const int ev = tp[0] == WKV7_ALGO_AUTO ? wkv7_cuda_ckpt_every(0) : WKV7_CUDA_CHUNK;
        bench(tp[0], tp[1], 8, 1024, 32, reps, seed, 0, 0, true, ev);
        bench(tp[0], tp[1], 8, 1024, 12, reps, seed, 0, 0, true, ev);
    }
    return ok ? 0 : 1;
}
