/*
 * wkv7.cu - WKV7 forward and backward (with the gradient of the initial state)
 * on the GPU. The math, shapes, algorithm and conventions are in wkv7.cuh;
 * this file holds the kernels first, then the host launchers.
 *
 * Two algorithms per pass. The recurrent pair is the official kernel's
 * (shared/notes/wkv7-kernels.md section 2): exact in fp32 up to rounding,
 * small enough to check line by line, and still the fastest when B x H fills
 * the GPU several times over. The chunked forward (notes section 3.1, on CUDA
 * cores) and the split backward (rows and columns of dS on different warps)
 * are faster when the grid is small, as in the engine's steps (8 x 12 heads
 * at 12 x 768); the launchers pick by grid size (resolve_algo, measured in
 * docs/performance.md). The tensor-core kernels (chunked forwards, the two-
 * pass chunked and chunk-product backwards) are in wkv7_chunk.cu; the
 * launchers here check the algorithm id (an unknown or removed one is
 * ST_EINVAL with a sentence, before anything is enqueued) and route to them.
 *
 * Register budget: forward 64 fp32 state + staging; backward 3 x 64 fp32
 * (S column, dS column, dS row). Every register array is indexed with
 * compile-time constants only (fully unrolled loops), so nothing spills to
 * local memory on sm_90 (check with -Xptxas -v).
 */
#include "kernels/cuda/wkv7.cuh"
#include "kernels/cuda/st_cuda.h"
#include "kernels/cuda/wkv7_chunk.cuh"

#include <cuda_bf16.h>

namespace {

constexpr int N = WKV7_CUDA_N;
constexpr int CH = WKV7_CUDA_CHUNK;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename F> __device__ __forceinline__ F from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

/* One block per (h, b); thread i owns value row i of S. */
template <typename F, typename FW>
__global__ void __launch_bounds__(N) wkv7_fwd_kernel(
    int T, int H, int nck,
    const F *__restrict__ r, const FW *__restrict__ w, const F *__restrict__ k,
    const F *__restrict__ v, const F *__restrict__ a, const F *__restrict__ b,
    const float *__restrict__ s0,   /* (H, N, N) */
    F *__restrict__ y,              /* (B, T, H, N) */
    float *__restrict__ s_final,    /* (B, H, N, N) or NULL */
    float *__restrict__ ckpt,       /* (B, H, nck, N, N) transposed */
    float *__restrict__ sa_out)     /* (B, T, H, N) */
{
    const int h = blockIdx.x, bb = blockIdx.y, i = threadIdx.x;
    __shared__ __align__(16) float sr[CH][N], sw[CH][N], sk[CH][N], sv[CH][N], sa_[CH][N], sb[CH][N];

    float S[N];
    const float *s0row = s0 + ((size_t)h * N + i) * N;
#pragma unroll
    for (int j = 0; j < N; j += 4) {
        float4 q = *reinterpret_cast<const float4 *>(s0row + j);
        S[j] = q.x; S[j + 1] = q.y; S[j + 2] = q.z; S[j + 3] = q.w;
    }
    float *ck = ckpt + (size_t)(bb * H + h) * nck * N * N;

    for (int c = 0; c < nck; c++) {
        const int t0 = c * CH;
        const int n = min(CH, T - t0);
        __syncthreads(); /* everyone is done reading the previous chunk */
        for (int u = 0; u < n; u++) {
            size_t idx = (((size_t)bb * T + t0 + u) * H + h) * N + i;
            sr[u][i] = to_f(r[idx]); sw[u][i] = to_f(w[idx]); sk[u][i] = to_f(k[idx]);
            sv[u][i] = to_f(v[idx]); sa_[u][i] = to_f(a[idx]); sb[u][i] = to_f(b[idx]);
        }
        __syncthreads();
        for (int u = 0; u < n; u++) {
            size_t idx = (((size_t)bb * T + t0 + u) * H + h) * N + i;
            const float4 *a4 = reinterpret_cast<const float4 *>(sa_[u]);
            const float4 *w4 = reinterpret_cast<const float4 *>(sw[u]);
            const float4 *k4 = reinterpret_cast<const float4 *>(sk[u]);
            const float4 *b4 = reinterpret_cast<const float4 *>(sb[u]);
            const float4 *r4 = reinterpret_cast<const float4 *>(sr[u]);
            /* four partial sums: the dot product is the serial chain per token */
            float p0 = 0.f, p1 = 0.f, p2 = 0.f, p3 = 0.f;
#pragma unroll
            for (int j = 0; j < N; j += 4) {
                float4 q = a4[j / 4];
                p0 = fmaf(S[j], q.x, p0); p1 = fmaf(S[j + 1], q.y, p1);
                p2 = fmaf(S[j + 2], q.z, p2); p3 = fmaf(S[j + 3], q.w, p3);
            }
            const float sa = (p0 + p1) + (p2 + p3);
            const float vi = sv[u][i];
            float y0 = 0.f, y1 = 0.f, y2 = 0.f, y3 = 0.f;
#pragma unroll
            for (int j = 0; j < N; j += 4) {
                float4 ww = w4[j / 4], kk = k4[j / 4], bv = b4[j / 4], rr = r4[j / 4];
                S[j] = fmaf(S[j], ww.x, fmaf(sa, bv.x, vi * kk.x));
                S[j + 1] = fmaf(S[j + 1], ww.y, fmaf(sa, bv.y, vi * kk.y));
                S[j + 2] = fmaf(S[j + 2], ww.z, fmaf(sa, bv.z, vi * kk.z));
                S[j + 3] = fmaf(S[j + 3], ww.w, fmaf(sa, bv.w, vi * kk.w));
                y0 = fmaf(S[j], rr.x, y0); y1 = fmaf(S[j + 1], rr.y, y1);
                y2 = fmaf(S[j + 2], rr.z, y2); y3 = fmaf(S[j + 3], rr.w, y3);
            }
            y[idx] = from_f<F>((y0 + y1) + (y2 + y3));
            sa_out[idx] = sa;
        }
        /* checkpoint: the state after this chunk, transposed so that the
         * backward's thread j reads its column contiguously */
        float *ckc = ck + (size_t)c * N * N;
#pragma unroll
        for (int j = 0; j < N; j++) ckc[j * N + i] = S[j];
    }
    if (s_final) {
        float *sf = s_final + ((size_t)(bb * H + h) * N + i) * N;
#pragma unroll
        for (int j = 0; j < N; j += 4)
            *reinterpret_cast<float4 *>(sf + j) = make_float4(S[j], S[j + 1], S[j + 2], S[j + 3]);
    }
}

/* ---- chunked forward (shared/notes/wkv7-kernels.md section 3.1) ----------
 *
 * The recurrent forward above issues one token after another: 64 threads per
 * head, each with a chain of about 320 dependent-ish FMAs per token, which is
 * why it is latency bound (docs/performance.md section 1). Here a block of 256
 * threads handles one (b, h) and a whole chunk of CH = 16 tokens at a time.
 * With p_t the running product of w inside the chunk (p_0 = 1, per key j) and
 * the rescaled rows
 *   q~_t = r_t p_t,  a~_t = a_t p_{t-1},  k^_t = k_t / p_t,  b^_t = b_t / p_t,
 * the chunk from its start state S (value row i, key column j) is
 *   u_t = S a~_t + sum_{s<t} (a~_t.b^_s) u_s + (a~_t.k^_s) v_s      (u_t = sa_t)
 *   y_t = S q~_t + sum_{s<=t} (q~_t.b^_s) u_s + (q~_t.k^_s) v_s
 *   S  <- S diag(p_L) + sum_s u_s (b^_s p_L)^T + v_s (k^_s p_L)^T
 * so the serial work per chunk is a 16-step triangular solve on 64 threads;
 * everything else is small dense products spread over the block (fp32 CUDA
 * cores: exact to fp32 rounding; tensor cores are the next step). Tokens past
 * T are identity tokens (w = 1, the rest 0). w >= 0.545 keeps 1/p_t <= 1.6e4.
 *
 * It writes the same outputs as the recurrent kernel (y, sa, the transposed
 * checkpoint after every chunk, s_final), computed in a different order: the
 * backward steps the state back from these checkpoints, which amplifies the
 * difference of rounding by up to 1/p_16 within a chunk (dr, dw, da; measured
 * in docs/performance.md). */
constexpr int CT = 256;    /* threads of the chunked forward */
constexpr int LD = N + 4;  /* padded row of a CH x N tile: conflict-free float4 rows */

__device__ __forceinline__ float dot4(float4 x, float4 y, float acc)
{
    return fmaf(x.w, y.w, fmaf(x.z, y.z, fmaf(x.y, y.y, fmaf(x.x, y.x, acc))));
}

template <typename F, typename FW>
__global__ void __launch_bounds__(CT, 3) wkv7_fwd_chunked_kernel(
    int T, int H, int nck,
    const F *__restrict__ r, const FW *__restrict__ w, const F *__restrict__ k,
    const F *__restrict__ v, const F *__restrict__ a, const F *__restrict__ b,
    const float *__restrict__ s0, F *__restrict__ y, float *__restrict__ s_final,
    float *__restrict__ ckpt, float *__restrict__ sa_out)
{
    const int h = blockIdx.x, bb = blockIdx.y, tid = threadIdx.x;
    __shared__ __align__(16) float ST[N * N]; /* the state transposed: ST[j * N + i] = S_ij */
    __shared__ __align__(16) float tq[CH * LD], tk[CH * LD], tv[CH * LD], ta[CH * LD], tb[CH * LD];
    __shared__ __align__(16) float gAB[CH * CH], gAK[CH * CH], gQB[CH * CH], gQK[CH * CH];
    __shared__ __align__(16) float U[CH * N];
    __shared__ __align__(16) float pL[N];

    const float *s0h = s0 + (size_t)h * N * N;
    for (int e = tid; e < N * N; e += CT) ST[(e & (N - 1)) * N + (e >> 6)] = s0h[e];
    float *ck = ckpt + (size_t)(bb * H + h) * nck * N * N;
    const int i = tid & (N - 1), q4 = tid >> 6; /* value row i; rows t = q4 + 4m; keys 4(q4 + 4m).. */
    const size_t HN = (size_t)H * N;

    for (int c = 0; c < nck; c++) {
        const int t0 = c * CH;
        const int n = min(CH, T - t0);
        const size_t base = (((size_t)bb * T + t0) * H + h) * N;
        __syncthreads(); /* the previous chunk is done with every tile */
        for (int e = tid; e < CH * N; e += CT) {
            const int u = e >> 6, j = e & (N - 1);
            float rr = 0.f, kk = 0.f, vv = 0.f, aa = 0.f, bv = 0.f;
            if (u < n) {
                const size_t idx = base + u * HN + j;
                rr = to_f(r[idx]); kk = to_f(k[idx]); vv = to_f(v[idx]); aa = to_f(a[idx]); bv = to_f(b[idx]);
            }
            tq[u * LD + j] = rr; tk[u * LD + j] = kk; tv[u * LD + j] = vv; ta[u * LD + j] = aa; tb[u * LD + j] = bv;
        }
        float wr[CH]; /* the decays of key tid, loaded while the tiles land */
        if (tid < N) {
#pragma unroll
            for (int u = 0; u < CH; u++) wr[u] = u < n ? to_f(w[base + u * HN + tid]) : 1.f;
        }
        __syncthreads();
        if (tid < N) {
            float p = 1.f;
#pragma unroll
            for (int u = 0; u < CH; u++) {
                ta[u * LD + tid] *= p;
                p *= wr[u];
                const float ip = 1.f / p;
                tq[u * LD + tid] *= p;
                tk[u * LD + tid] *= ip;
                tb[u * LD + tid] *= ip;
            }
            pL[tid] = p;
        }
        __syncthreads();
        /* the four 16 x 16 products, causal parts only (select, never multiply) */
        {
            const int t = tid >> 4, s = tid & 15;
            const float4 *A4 = reinterpret_cast<const float4 *>(ta + t * LD);
            const float4 *Q4 = reinterpret_cast<const float4 *>(tq + t * LD);
            const float4 *B4 = reinterpret_cast<const float4 *>(tb + s * LD);
            const float4 *K4 = reinterpret_cast<const float4 *>(tk + s * LD);
            float ab = 0.f, ak = 0.f, qb = 0.f, qk = 0.f;
#pragma unroll 4
            for (int j4 = 0; j4 < N / 4; j4++) {
                const float4 x = A4[j4], q = Q4[j4], bq = B4[j4], kq = K4[j4];
                ab = dot4(x, bq, ab); ak = dot4(x, kq, ak); qb = dot4(q, bq, qb); qk = dot4(q, kq, qk);
            }
            gAB[t * CH + s] = s < t ? ab : 0.f;
            gAK[t * CH + s] = s < t ? ak : 0.f;
            gQB[t * CH + s] = s <= t ? qb : 0.f;
            gQK[t * CH + s] = s <= t ? qk : 0.f;
        }
        /* X = A~ S^T and Yb = Q~ S^T for rows t = q4 + 4m, value i */
        float xa[4] = {0.f, 0.f, 0.f, 0.f}, xq[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 2
        for (int j = 0; j < N; j += 4) {
            const float s0v = ST[j * N + i], s1v = ST[(j + 1) * N + i], s2v = ST[(j + 2) * N + i],
                        s3v = ST[(j + 3) * N + i];
            const float4 sv = make_float4(s0v, s1v, s2v, s3v);
#pragma unroll
            for (int m = 0; m < 4; m++) {
                const int t = q4 + 4 * m;
                xa[m] = dot4(*reinterpret_cast<const float4 *>(ta + t * LD + j), sv, xa[m]);
                xq[m] = dot4(*reinterpret_cast<const float4 *>(tq + t * LD + j), sv, xq[m]);
            }
        }
        __syncthreads(); /* the Gram matrices are complete */
        float vcol[CH];
#pragma unroll
        for (int s = 0; s < CH; s++) vcol[s] = tv[s * LD + i];
#pragma unroll
        for (int m = 0; m < 4; m++) {
            const int t = q4 + 4 * m;
            float rhs = xa[m], yy = xq[m];
#pragma unroll
            for (int s = 0; s < CH; s++) {
                rhs = fmaf(gAK[t * CH + s], vcol[s], rhs);
                yy = fmaf(gQK[t * CH + s], vcol[s], yy);
            }
            U[t * N + i] = rhs;
            xq[m] = yy;
        }
        __syncthreads();
        if (tid < N) {
            /* (I - AB) U = rhs, forward substitution down the chunk */
            float uu[CH];
#pragma unroll
            for (int t = 0; t < CH; t++) {
                float acc = U[t * N + tid];
#pragma unroll
                for (int s = 0; s < t; s++) acc = fmaf(gAB[t * CH + s], uu[s], acc);
                uu[t] = acc;
                U[t * N + tid] = acc;
                if (t < n) sa_out[base + t * HN + tid] = acc;
            }
        } else {
            /* meanwhile: k^ p_L and b^ p_L for the state update */
            for (int e = tid - N; e < CH * N; e += CT - N) {
                const int u = e >> 6, j = e & (N - 1);
                tk[u * LD + j] *= pL[j];
                tb[u * LD + j] *= pL[j];
            }
        }
        __syncthreads();
        float ucol[CH];
#pragma unroll
        for (int s = 0; s < CH; s++) ucol[s] = U[s * N + i];
#pragma unroll
        for (int m = 0; m < 4; m++) {
            const int t = q4 + 4 * m;
            float yy = xq[m];
#pragma unroll
            for (int s = 0; s < CH; s++) yy = fmaf(gQB[t * CH + s], ucol[s], yy);
            if (t < n) y[base + t * HN + i] = from_f<F>(yy);
        }
        /* the state: this thread's keys j = 4g..4g+3, g = q4 + 4m; then the
         * checkpoint (the state after this chunk, [j][i] like ST) */
        float *ckc = ck + (size_t)c * N * N;
#pragma unroll
        for (int m = 0; m < 4; m++) {
            const int j = 4 * (q4 + 4 * m);
            const float4 p4 = *reinterpret_cast<const float4 *>(pL + j);
            float s_0 = ST[j * N + i] * p4.x, s_1 = ST[(j + 1) * N + i] * p4.y;
            float s_2 = ST[(j + 2) * N + i] * p4.z, s_3 = ST[(j + 3) * N + i] * p4.w;
#pragma unroll
            for (int s = 0; s < CH; s++) {
                const float4 kq = *reinterpret_cast<const float4 *>(tk + s * LD + j);
                const float4 bq = *reinterpret_cast<const float4 *>(tb + s * LD + j);
                s_0 = fmaf(vcol[s], kq.x, fmaf(ucol[s], bq.x, s_0));
                s_1 = fmaf(vcol[s], kq.y, fmaf(ucol[s], bq.y, s_1));
                s_2 = fmaf(vcol[s], kq.z, fmaf(ucol[s], bq.z, s_2));
                s_3 = fmaf(vcol[s], kq.w, fmaf(ucol[s], bq.w, s_3));
            }
            ST[j * N + i] = s_0; ST[(j + 1) * N + i] = s_1; ST[(j + 2) * N + i] = s_2; ST[(j + 3) * N + i] = s_3;
            ckc[j * N + i] = s_0; ckc[(j + 1) * N + i] = s_1; ckc[(j + 2) * N + i] = s_2; ckc[(j + 3) * N + i] = s_3;
        }
    }
    if (s_final) {
        __syncthreads();
        float *sf = s_final + (size_t)(bb * H + h) * N * N;
        for (int e = tid; e < N * N; e += CT) sf[e] = ST[(e & (N - 1)) * N + (e >> 6)];
    }
}

/* One block per (h, b); thread j owns key column j of S and of dS, and value
 * row j of dS. See wkv7.cuh for the per-token algebra. */
template <typename F, typename FW>
__global__ void __launch_bounds__(N) wkv7_bwd_kernel(
    int T, int H, int nck,
    const F *__restrict__ r, const FW *__restrict__ w, const F *__restrict__ k,
    const F *__restrict__ v, const F *__restrict__ a, const F *__restrict__ b,
    const float *__restrict__ ckpt, const float *__restrict__ sa_in,
    const F *__restrict__ dy,
    F *__restrict__ dr, FW *__restrict__ dw, F *__restrict__ dk, F *__restrict__ dv,
    F *__restrict__ da, F *__restrict__ db,
    float *__restrict__ ds0)        /* (H, N, N) += */
{
    const int h = blockIdx.x, bb = blockIdx.y, j = threadIdx.x;
    __shared__ __align__(16) float sr[CH][N], sw[CH][N], sk[CH][N], sv[CH][N];
    __shared__ __align__(16) float sa_[CH][N], sb[CH][N], sdy[CH][N], ssa[CH][N];
    __shared__ __align__(16) float sdsa[2][N];

    float Sc[N], dSc[N], dSr[N];
#pragma unroll
    for (int i = 0; i < N; i++) { dSc[i] = 0.f; dSr[i] = 0.f; }
    const float *ck = ckpt + (size_t)(bb * H + h) * nck * N * N;

    for (int c = nck - 1; c >= 0; c--) {
        const int t0 = c * CH;
        const int n = min(CH, T - t0);
        const float *col = ck + (size_t)c * N * N + (size_t)j * N;
#pragma unroll
        for (int i = 0; i < N; i += 4) {
            float4 q = *reinterpret_cast<const float4 *>(col + i);
            Sc[i] = q.x; Sc[i + 1] = q.y; Sc[i + 2] = q.z; Sc[i + 3] = q.w;
        }
        __syncthreads();
        for (int u = 0; u < n; u++) {
            size_t idx = (((size_t)bb * T + t0 + u) * H + h) * N + j;
            sr[u][j] = to_f(r[idx]); sw[u][j] = to_f(w[idx]); sk[u][j] = to_f(k[idx]);
            sv[u][j] = to_f(v[idx]); sa_[u][j] = to_f(a[idx]); sb[u][j] = to_f(b[idx]);
            sdy[u][j] = to_f(dy[idx]); ssa[u][j] = sa_in[idx];
        }
        __syncthreads();
        for (int u = n - 1; u >= 0; u--) {
            const size_t idx = (((size_t)bb * T + t0 + u) * H + h) * N + j;
            const int p = (t0 + u) & 1;
            const float rj = sr[u][j], wj = sw[u][j], kj = sk[u][j], aj = sa_[u][j], bj = sb[u][j];
            const float dyj = sdy[u][j];
            const float4 *dy4 = reinterpret_cast<const float4 *>(sdy[u]);
            const float4 *r4 = reinterpret_cast<const float4 *>(sr[u]);
            const float4 *k4 = reinterpret_cast<const float4 *>(sk[u]);
            const float4 *b4 = reinterpret_cast<const float4 *>(sb[u]);
            /* y_t = S_t r_t: dr = S_t^T dy, dS_t += dy r^T (both copies);
             * then the row sums dv = dS_t k and dsa = dS_t b */
            float gr = 0.f, gv = 0.f, gsa = 0.f;
#pragma unroll
            for (int i = 0; i < N; i += 4) {
                float4 d = dy4[i / 4], rr = r4[i / 4], kk = k4[i / 4], bv = b4[i / 4];
                gr = fmaf(Sc[i], d.x, gr); gr = fmaf(Sc[i + 1], d.y, gr);
                gr = fmaf(Sc[i + 2], d.z, gr); gr = fmaf(Sc[i + 3], d.w, gr);
                dSc[i] = fmaf(d.x, rj, dSc[i]); dSc[i + 1] = fmaf(d.y, rj, dSc[i + 1]);
                dSc[i + 2] = fmaf(d.z, rj, dSc[i + 2]); dSc[i + 3] = fmaf(d.w, rj, dSc[i + 3]);
                dSr[i] = fmaf(dyj, rr.x, dSr[i]); dSr[i + 1] = fmaf(dyj, rr.y, dSr[i + 1]);
                dSr[i + 2] = fmaf(dyj, rr.z, dSr[i + 2]); dSr[i + 3] = fmaf(dyj, rr.w, dSr[i + 3]);
                gv = fmaf(dSr[i], kk.x, gv); gv = fmaf(dSr[i + 1], kk.y, gv);
                gv = fmaf(dSr[i + 2], kk.z, gv); gv = fmaf(dSr[i + 3], kk.w, gv);
                gsa = fmaf(dSr[i], bv.x, gsa); gsa = fmaf(dSr[i + 1], bv.y, gsa);
                gsa = fmaf(dSr[i + 2], bv.z, gsa); gsa = fmaf(dSr[i + 3], bv.w, gsa);
            }
            sdsa[p][j] = gsa;
            __syncthreads();
            /* step back: S_{t-1} = (S_t - v k^T - sa b^T) diag(1/w); then the
             * column sums dk, db, dw, da and dS_{t-1} = dS_t diag(w) + dsa a^T */
            const float iw = 1.f / wj;
            const float4 *v4 = reinterpret_cast<const float4 *>(sv[u]);
            const float4 *sa4 = reinterpret_cast<const float4 *>(ssa[u]);
            const float4 *ds4 = reinterpret_cast<const float4 *>(sdsa[p]);
            const float4 *w4 = reinterpret_cast<const float4 *>(sw[u]);
            const float4 *a4 = reinterpret_cast<const float4 *>(sa_[u]);
            float gk = 0.f, gb = 0.f, gw = 0.f, ga = 0.f;
#pragma unroll
            for (int i = 0; i < N; i += 4) {
                float4 vv = v4[i / 4], ss = sa4[i / 4], dd = ds4[i / 4], ww = w4[i / 4], aa = a4[i / 4];
                float vx[4] = {vv.x, vv.y, vv.z, vv.w}, sx[4] = {ss.x, ss.y, ss.z, ss.w};
                float dx[4] = {dd.x, dd.y, dd.z, dd.w}, wx[4] = {ww.x, ww.y, ww.z, ww.w};
                float ax[4] = {aa.x, aa.y, aa.z, aa.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    Sc[i + e] = (Sc[i + e] - fmaf(vx[e], kj, sx[e] * bj)) * iw;
                    gk = fmaf(dSc[i + e], vx[e], gk);
                    gb = fmaf(dSc[i + e], sx[e], gb);
                    gw = fmaf(dSc[i + e], Sc[i + e], gw);
                    ga = fmaf(dx[e], Sc[i + e], ga);
                    dSc[i + e] = fmaf(dSc[i + e], wj, dx[e] * aj);
                    dSr[i + e] = fmaf(dSr[i + e], wx[e], gsa * ax[e]);
                }
            }
            dr[idx] = from_f<F>(gr); dw[idx] = from_f<FW>(gw); dk[idx] = from_f<F>(gk);
            dv[idx] = from_f<F>(gv); da[idx] = from_f<F>(ga); db[idx] = from_f<F>(gb);
        }
    }
    /* dS is now dS_0, shared by every batch row: accumulate row j */
    float *ds0row = ds0 + ((size_t)h * N + j) * N;
#pragma unroll
    for (int i = 0; i < N; i++) atomicAdd(ds0row + i, dSr[i]);
}

/* ---- split backward ------------------------------------------------------
 *
 * The recurrent backward above keeps, per thread j, column j of S and of dS
 * and row j of dS, and exchanges dsa = dS b through shared memory with a
 * barrier every token. The rows of dS need nothing from S or from the
 * columns (dS_{t-1} = dS_t diag(w) + dsa a^T after dS_t += dy r^T, and
 * dsa = dS_t b is a row sum), so here the two halves run on different warps:
 *   row group (64 threads, one dS row each): dv, dsa for every token of a
 *     chunk, dsa into shared memory; at the end its rows are dS0;
 *   column group (128 threads, half a column each): steps S back from the
 *     checkpoint and carries the dS column, using the row group's dsa; its
 *     five column sums (dr, dk, db, dw, da) are outputs, off the recurrence,
 *     so the two halves meet with one shuffle.
 * The row group works on chunk c while the column group works on chunk c + 1
 * (tiles double-buffered by chunk parity), with two barriers per chunk
 * instead of one per token. Arithmetic per element is the recurrent kernel's
 * (the step-back, the dS updates); only the order of the sums differs. */
constexpr int BT = 3 * N;          /* threads of the split backward */
constexpr int NT = 9;              /* tiles per chunk: r w k v a b dy sa dsa */
constexpr size_t BWD_SMEM = (size_t)2 * NT * CH * N * sizeof(float);
#define BTILE(p, q) (smem + ((p) * NT + (q)) * (CH * N))

template <typename F, typename FW>
__global__ void __launch_bounds__(BT) wkv7_bwd_split_kernel(
    int T, int H, int nck,
    const F *__restrict__ r, const FW *__restrict__ w, const F *__restrict__ k,
    const F *__restrict__ v, const F *__restrict__ a, const F *__restrict__ b,
    const float *__restrict__ ckpt, const float *__restrict__ sa_in,
    const F *__restrict__ dy,
    F *__restrict__ dr, FW *__restrict__ dw, F *__restrict__ dk, F *__restrict__ dv,
    F *__restrict__ da, F *__restrict__ db,
    float *__restrict__ ds0)
{
    extern __shared__ __align__(16) float smem[];
    const int h = blockIdx.x, bb = blockIdx.y, tid = threadIdx.x;
    const size_t HN = (size_t)H * N;
    const float *ck = ckpt + (size_t)(bb * H + h) * nck * N * N;
    const bool colgrp = tid < 2 * N;
    /* column group: X[0..31] = S column j rows i0.., X[32..63] = dS column
     * j rows i0..; row group: X = dS row j */
    float X[N];
#pragma unroll
    for (int q = 0; q < N; q++) X[q] = 0.f;
    const int j = colgrp ? tid >> 1 : tid - 2 * N;
    const int i0 = colgrp ? (tid & 1) * (N / 2) : 0;

    for (int it = 0; it <= nck; it++) {
        const int cB = nck - 1 - it, cA = nck - it;
        if (cB >= 0) {
            const int t0 = cB * CH, n = min(CH, T - t0);
            const size_t base = (((size_t)bb * T + t0) * H + h) * N;
            float *tl = BTILE(cB & 1, 0);
            for (int e = tid; e < n * N; e += BT) {
                const size_t idx = base + (e >> 6) * HN + (e & (N - 1));
                tl[0 * CH * N + e] = to_f(r[idx]); tl[1 * CH * N + e] = to_f(w[idx]);
                tl[2 * CH * N + e] = to_f(k[idx]); tl[3 * CH * N + e] = to_f(v[idx]);
                tl[4 * CH * N + e] = to_f(a[idx]); tl[5 * CH * N + e] = to_f(b[idx]);
                tl[6 * CH * N + e] = to_f(dy[idx]); tl[7 * CH * N + e] = sa_in[idx];
            }
        }
        __syncthreads();
        if (!colgrp && cB >= 0) {
            const int t0 = cB * CH, n = min(CH, T - t0), p = cB & 1;
            const size_t base = (((size_t)bb * T + t0) * H + h) * N;
            for (int u = n - 1; u >= 0; u--) {
                const float4 *r4 = reinterpret_cast<const float4 *>(BTILE(p, 0) + u * N);
                const float4 *w4 = reinterpret_cast<const float4 *>(BTILE(p, 1) + u * N);
                const float4 *k4 = reinterpret_cast<const float4 *>(BTILE(p, 2) + u * N);
                const float4 *a4 = reinterpret_cast<const float4 *>(BTILE(p, 4) + u * N);
                const float4 *b4 = reinterpret_cast<const float4 *>(BTILE(p, 5) + u * N);
                const float dyj = BTILE(p, 6)[u * N + j];
                /* dS_t += dy r^T (row j), then dv = dS_t k and dsa = dS_t b */
                float gv0 = 0.f, gv1 = 0.f, gs0 = 0.f, gs1 = 0.f;
#pragma unroll
                for (int i = 0; i < N; i += 4) {
                    const float4 rr = r4[i / 4], kk = k4[i / 4], bv = b4[i / 4];
                    X[i] = fmaf(dyj, rr.x, X[i]); X[i + 1] = fmaf(dyj, rr.y, X[i + 1]);
                    X[i + 2] = fmaf(dyj, rr.z, X[i + 2]); X[i + 3] = fmaf(dyj, rr.w, X[i + 3]);
                    gv0 = fmaf(X[i], kk.x, gv0); gv1 = fmaf(X[i + 1], kk.y, gv1);
                    gv0 = fmaf(X[i + 2], kk.z, gv0); gv1 = fmaf(X[i + 3], kk.w, gv1);
                    gs0 = fmaf(X[i], bv.x, gs0); gs1 = fmaf(X[i + 1], bv.y, gs1);
                    gs0 = fmaf(X[i + 2], bv.z, gs0); gs1 = fmaf(X[i + 3], bv.w, gs1);
                }
                const float gsa = gs0 + gs1;
                BTILE(p, 8)[u * N + j] = gsa;
                dv[base + u * HN + j] = from_f<F>(gv0 + gv1);
                /* dS_{t-1} rows: dS_t diag(w) + dsa a^T */
#pragma unroll
                for (int i = 0; i < N; i += 4) {
                    const float4 ww = w4[i / 4], aa = a4[i / 4];
                    X[i] = fmaf(X[i], ww.x, gsa * aa.x); X[i + 1] = fmaf(X[i + 1], ww.y, gsa * aa.y);
                    X[i + 2] = fmaf(X[i + 2], ww.z, gsa * aa.z); X[i + 3] = fmaf(X[i + 3], ww.w, gsa * aa.w);
                }
            }
        }
        if (colgrp && cA < nck) {
            const int t0 = cA * CH, n = min(CH, T - t0), p = cA & 1;
            const size_t base = (((size_t)bb * T + t0) * H + h) * N;
            const float *col = ck + (size_t)cA * N * N + (size_t)j * N + i0;
#pragma unroll
            for (int i = 0; i < N / 2; i += 4) {
                const float4 q = *reinterpret_cast<const float4 *>(col + i);
                X[i] = q.x; X[i + 1] = q.y; X[i + 2] = q.z; X[i + 3] = q.w;
            }
            for (int u = n - 1; u >= 0; u--) {
                const float rj = BTILE(p, 0)[u * N + j], wj = BTILE(p, 1)[u * N + j];
                const float kj = BTILE(p, 2)[u * N + j], aj = BTILE(p, 4)[u * N + j];
                const float bj = BTILE(p, 5)[u * N + j];
                const float4 *v4 = reinterpret_cast<const float4 *>(BTILE(p, 3) + u * N + i0);
                const float4 *d4 = reinterpret_cast<const float4 *>(BTILE(p, 6) + u * N + i0);
                const float4 *s4 = reinterpret_cast<const float4 *>(BTILE(p, 7) + u * N + i0);
                const float4 *g4 = reinterpret_cast<const float4 *>(BTILE(p, 8) + u * N + i0);
                float gr, gk, gb, gw, ga;
                wkv7tc::col_step_back(X, X + N / 2, v4, d4, s4, g4, rj, wj, kj, aj, bj, gr, gk, gb, gw, ga);
                if (i0 == 0) {
                    const size_t idx = base + u * HN + j;
                    dr[idx] = from_f<F>(gr); dw[idx] = from_f<FW>(gw); dk[idx] = from_f<F>(gk);
                    da[idx] = from_f<F>(ga); db[idx] = from_f<F>(gb);
                }
            }
        }
        __syncthreads();
    }
    if (!colgrp) {
        float *ds0row = ds0 + ((size_t)h * N + j) * N;
#pragma unroll
        for (int i = 0; i < N; i++) atomicAdd(ds0row + i, X[i]);
    }
}
#undef BTILE

int check_shapes(int B, int T, int H, int ckpt_every, char *err)
{
    if (B <= 0 || T <= 0 || H <= 0)
        return st_fail(err, ST_EINVAL, "wkv7 (cuda): B, T and H must be positive (got %d, %d, %d)", B, T, H);
    if (B > 65535 || H > 65535)
        return st_fail(err, ST_EINVAL, "wkv7 (cuda): B and H must be at most 65535 (got %d, %d)", B, H);
    if (ckpt_every != CH && ckpt_every != WKV7_CUDA_CKPT_PAIR)
        return st_fail(err, ST_EINVAL, "wkv7 (cuda): ckpt_every must be %d or %d (got %d)", CH, WKV7_CUDA_CKPT_PAIR,
                       ckpt_every);
    return ST_OK;
}

/* Which resolved pairs take a checkpoint every two chunks (wkv7.cuh): the
 * warp-specialized forwards (one kernel) and the CPROD1WSSA backward; every
 * other kernel reads or writes one per chunk. */
bool pair_ok(int forward, int algo)
{
    return forward ? algo == WKV7_FWD_TCWS || algo == WKV7_FWD_TCWS1 || algo == WKV7_FWD_TCWSB
                   : algo == WKV7_BWD_CPROD1WSSA;
}

/* AUTO: the measured choice (docs/performance.md sections 1.1 and 1.2, H100,
 * 132 SMs). Since 2026-11-27 (1.2): the warp-specialized tensor-core forward
 * at every grid (0.36 vs 0.72 ms at 96 blocks, 0.60 vs 0.93 at 256, 4.76 vs
 * 4.85 at 512); the chunked backward up to 1.5 blocks per SM (0.89 vs 1.12
 * ms at 96, 0.98 vs 1.13 at 128, 0.65 vs 0.71 at 192), the split one up to
 * 2 (even at 256: 1.43 vs 1.42), the recurrent one beyond (9.2 vs 10.5 at
 * 512). The 2026-11-26 reasoning (1.1): both new kernels win when the grid
 * of B x H blocks is small,
 * where the recurrent kernels leave SMs idle or hold one block each, and lose
 * when it is large: the chunked forward does about 1.5x the recurrent
 * arithmetic on CUDA cores, and the split backward's 192-thread blocks (126
 * registers) fit two per SM, so 512 of them take two waves. Forward: chunked
 * 0.73 vs 0.85 ms at 96 blocks, even at 256, 1.5% slower at 192 and 49% at
 * 512; backward: split faster by 20% at 96, 4% at 192, 8% at 256, 21% slower
 * at 512. */
int resolve_algo(int forward, int bf16, int algo, int B, int H, int *out, char *err)
{
    if (algo != WKV7_ALGO_AUTO) {
        *out = algo;
        return ST_OK;
    }
    int sms = 0;
    const int rc = wkv7tc::sm_count(&sms, err);
    if (rc != ST_OK) return rc;
    *out = wkv7_cuda_auto_algo_prec(forward, bf16, B, H, sms);
    return ST_OK;
}

template <typename F, typename FW>
int launch_fwd(int algo, int B, int T, int H, const F *r, const FW *w, const F *k, const F *v, const F *a,
               const F *b, const float *s0, F *y, float *s_final, float *s_ckpt, int ckpt_every,
               float *sa, cudaStream_t stream, char *err)
{
    int rc = check_shapes(B, T, H, ckpt_every, err);
    if (rc) return rc;
    if (!r || !w || !k || !v || !a || !b || !s0 || !y || !s_ckpt || !sa)
        return st_fail(err, ST_EINVAL, "wkv7_forward_cuda: a required pointer is NULL");
    const int nck = (T + CH - 1) / CH;
    rc = resolve_algo(1, sizeof(F) == 2, algo, B, H, &algo, err);
    if (rc) return rc;
    const bool tc = algo == WKV7_FWD_TC || algo == WKV7_FWD_TCWS || algo == WKV7_FWD_TCWS1 || algo == WKV7_FWD_TCWSB;
    if (!tc && algo != WKV7_FWD_CHUNKED && algo != WKV7_FWD_RECURRENT)
        return st_fail(err, ST_EINVAL,
                       "wkv7_forward_cuda: unknown forward algorithm %d (wkv7.cuh lists the WKV7_FWD_ ids; "
                       "3, 7 and 8 were removed)", algo);
    if (ckpt_every != CH && !pair_ok(1, algo))
        return st_fail(err, ST_EINVAL,
                       "wkv7_forward_cuda: ckpt_every %d (a checkpoint every two chunks) needs a warp-specialized "
                       "tensor-core forward (TCWS, TCWS1, TCWSB); algorithm %d checkpoints every %d tokens",
                       ckpt_every, algo, CH);
    /* s0 behind the checkpoints, for the chunk-product backward (wkv7.cuh) */
    const size_t nckpt = (size_t)((T + ckpt_every - 1) / ckpt_every);
    ST_CUDA_CHECK(cudaMemcpyAsync(s_ckpt + (size_t)B * H * nckpt * N * N, s0, sizeof(float) * H * N * N,
                                  cudaMemcpyDeviceToDevice, stream));
    if (tc) {
        return wkv7tc::forward<F>(algo, B, T, H, r, w, k, v, a, b, s0, y, s_final, s_ckpt, ckpt_every, sa, stream,
                                  err);
    } else if (algo == WKV7_FWD_CHUNKED) {
        wkv7_fwd_chunked_kernel<F, FW><<<dim3(H, B), CT, 0, stream>>>(T, H, nck, r, w, k, v, a, b, s0, y, s_final,
                                                                      s_ckpt, sa);
        ST_CUDA_CHECK_LAUNCH("wkv7_fwd_chunked_kernel");
    } else {
        wkv7_fwd_kernel<F, FW><<<dim3(H, B), N, 0, stream>>>(T, H, nck, r, w, k, v, a, b, s0, y, s_final, s_ckpt,
                                                             sa);
        ST_CUDA_CHECK_LAUNCH("wkv7_fwd_kernel");
    }
    return ST_OK;
}

template <typename F, typename FW>
int launch_bwd(int algo, int B, int T, int H, const F *r, const FW *w, const F *k, const F *v, const F *a,
               const F *b, const float *s_ckpt, int ckpt_every, const float *sa, const F *dy,
               F *dr, FW *dw, F *dk, F *dv, F *da, F *db, float *ds0, cudaStream_t stream, char *err)
{
    int rc = check_shapes(B, T, H, ckpt_every, err);
    if (rc) return rc;
    if (!r || !w || !k || !v || !a || !b || !s_ckpt || !sa || !dy || !dr || !dw || !dk || !dv ||
        !da || !db || !ds0)
        return st_fail(err, ST_EINVAL, "wkv7_backward_cuda: a required pointer is NULL");
    const int nck = (T + CH - 1) / CH;
    rc = resolve_algo(0, sizeof(F) == 2, algo, B, H, &algo, err);
    if (rc) return rc;
    const bool seg = algo > 16 && algo <= 16 + 4096; /* WKV7_BWD_CHUNKED_SEG(s) */
    const bool known = seg || algo == WKV7_BWD_CHUNKED || algo == WKV7_BWD_CHUNKED_WS || algo == WKV7_BWD_CPROD ||
                       algo == WKV7_BWD_CPROD1WSSA || algo == WKV7_BWD_SPLIT || algo == WKV7_BWD_RECURRENT;
    if (known && ckpt_every != CH && !pair_ok(0, algo))
        return st_fail(err, ST_EINVAL,
                       "wkv7_backward_cuda: ckpt_every %d (a checkpoint every two chunks) needs the CPROD1WSSA "
                       "backward (algorithm %d); algorithm %d reads one every %d tokens",
                       ckpt_every, WKV7_BWD_CPROD1WSSA, algo, CH);
    if (seg || algo == WKV7_BWD_CHUNKED || algo == WKV7_BWD_CHUNKED_WS || algo == WKV7_BWD_CPROD ||
        algo == WKV7_BWD_CPROD1WSSA) {
        /* CHUNKED: segments of 4 chunks (docs/performance.md 1.2) */
        return wkv7tc::backward<F>(seg ? WKV7_BWD_CHUNKED : algo, seg ? algo - 16 : 4, B, T, H, r, w, k, v, a, b,
                                   s_ckpt, ckpt_every, sa, dy, dr, dw, dk, dv, da, db, ds0, stream, err);
    } else if (algo == WKV7_BWD_SPLIT) {
        /* 72 KB of tiles: above the 48 KB a launch gets without asking */
        ST_CUDA_CHECK(cudaFuncSetAttribute(wkv7_bwd_split_kernel<F, FW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)BWD_SMEM));
        wkv7_bwd_split_kernel<F, FW><<<dim3(H, B), BT, BWD_SMEM, stream>>>(T, H, nck, r, w, k, v, a, b, s_ckpt, sa,
                                                                           dy, dr, dw, dk, dv, da, db, ds0);
        ST_CUDA_CHECK_LAUNCH("wkv7_bwd_split_kernel");
    } else if (algo == WKV7_BWD_RECURRENT) {
        wkv7_bwd_kernel<F, FW><<<dim3(H, B), N, 0, stream>>>(T, H, nck, r, w, k, v, a, b, s_ckpt, sa, dy,
                                                             dr, dw, dk, dv, da, db, ds0);
        ST_CUDA_CHECK_LAUNCH("wkv7_bwd_kernel");
    } else {
        return st_fail(err, ST_EINVAL,
                       "wkv7_backward_cuda: unknown backward algorithm %d (wkv7.cuh lists the WKV7_BWD_ ids; "
                       "3, 6 to 12, 14 and 15 were removed)", algo);
    }
    return ST_OK;
}

} // namespace

extern "C" int wkv7_cuda_auto_algo(int forward, int B, int H, int sms)
{
    const long blocks = (long)B * H;
    if (forward) return WKV7_FWD_TCWS;
    if (2 * blocks <= 3L * sms) return WKV7_BWD_CHUNKED;
    return blocks <= 2L * sms ? WKV7_BWD_SPLIT : WKV7_BWD_RECURRENT;
}

/* bf16 (since 2026-11-27, docs/performance.md 1.3, H100): the one-product
 * tf32 class at every grid, the TCWS1 forward (2.56 vs 4.78 ms for TCWS at
 * 512 heads, 0.34 vs 0.60 at 256, 0.18 vs 0.32 at 192, 0.27 vs 0.37 at 96)
 * and the chunk-product backward, then CPROD1WSS (7.67 vs 9.20 recurrent at
 * 512 heads, 1.00 vs 1.40 split at 256, 0.48 vs 0.65 chunked at 192, 0.56
 * vs 0.87 at 96); the pair must stay together (a step-back backward
 * amplifies TCWS1's rounding by up to 1/p_16: dr, dw, da wrong by 0.7 to 1.3
 * with every w near 0.545). Its error (3e-4 relative on s_final and dS0,
 * 1.3e-3 on dw) is far inside the bf16 engine's fixture tolerances (3e-2 /
 * 5e-2; verify's bf16 figures moved by under 2%). Since 1.4 (H100, one
 * call, 2026-11-27 02:18 UTC) the backward is CPROD1WSSA, CPROD1WSS with
 * pass 2's fp32 loads by cp.async: bit-identical and 3-4% faster (8.19 vs
 * 8.44 ms at 512 heads, 0.540 vs 0.564 at 96, 0.603 vs 0.631 at 128; 1.09
 * vs 1.07 at 256, within the noise). The variants that lost to this pair
 * (CPROD1, CPROD1WS, CPROD1S, CPROD1WSS, the value-row splits) were removed
 * afterwards (wkv7.cuh). -DWKV7_AUTO_V12 keeps the 1.2 rule (baseline
 * builds for benchmarks). fp32: the accurate rule above. */
#ifdef WKV7_AUTO_V13
#error "WKV7_AUTO_V13 (section 1.3's CPROD1WSS) is gone: CPROD1WSSA, the AUTO now, computes the same bits"
#endif
extern "C" int wkv7_cuda_auto_algo_prec(int forward, int bf16, int B, int H, int sms)
{
#ifndef WKV7_AUTO_V12
    if (bf16) return forward ? WKV7_FWD_TCWS1 : WKV7_BWD_CPROD1WSSA;
#endif
    return wkv7_cuda_auto_algo(forward, B, H, sms);
}

extern "C" size_t wkv7_cuda_ckpt_floats_every(int B, int T, int H, int ckpt_every)
{
    if (ckpt_every < CH) ckpt_every = CH; /* (the launchers refuse other intervals) */
    return (size_t)B * H * ((T + ckpt_every - 1) / ckpt_every) * N * N + (size_t)H * N * N;
}

extern "C" size_t wkv7_cuda_ckpt_floats(int B, int T, int H)
{
    return wkv7_cuda_ckpt_floats_every(B, T, H, CH);
}

/* WKV7_CKPT_BF16_DEFAULT (wkv7.cuh), where both bf16 defaults take it: a
 * baseline build with another default (-DWKV7_FWD_BF16_DEFAULT=0,
 * -DWKV7_AUTO_V12) gets 16. */
extern "C" int wkv7_cuda_ckpt_every(int bf16)
{
#ifndef WKV7_AUTO_V12
    const int fwd = WKV7_FWD_BF16_DEFAULT, bwd = WKV7_BWD_BF16_DEFAULT;
    if (bf16 && WKV7_CKPT_BF16_DEFAULT == WKV7_CUDA_CKPT_PAIR && (fwd == WKV7_ALGO_AUTO || pair_ok(1, fwd)) &&
        (bwd == WKV7_ALGO_AUTO || pair_ok(0, bwd)))
        return WKV7_CUDA_CKPT_PAIR;
#endif
    (void)bf16;
    return CH;
}

extern "C" size_t wkv7_cuda_sa_floats(int B, int T, int H)
{
    return (size_t)B * T * H * N;
}

extern "C" int wkv7_forward_cuda(int B, int T, int H, const float *r, const float *w, const float *k,
                                 const float *v, const float *a, const float *b, const float *s0,
                                 float *y, float *s_final, float *s_ckpt, int ckpt_every, float *sa,
                                 cudaStream_t stream, char *err)
{
    return launch_fwd<float, float>(WKV7_FWD_FP32_DEFAULT, B, T, H, r, w, k, v, a, b, s0, y, s_final, s_ckpt,
                                    ckpt_every, sa, stream, err);
}

extern "C" int wkv7_backward_cuda(int B, int T, int H, const float *r, const float *w, const float *k,
                                  const float *v, const float *a, const float *b, const float *s_ckpt,
                                  int ckpt_every, const float *sa, const float *dy, float *dr,
                                  float *dw, float *dk, float *dv, float *da, float *db, float *ds0,
                                  cudaStream_t stream, char *err)
{
    return launch_bwd<float, float>(WKV7_BWD_FP32_DEFAULT, B, T, H, r, w, k, v, a, b, s_ckpt, ckpt_every, sa, dy, dr, dw, dk, dv,
                             da, db, ds0, stream, err);
}

extern "C" int wkv7_forward_cuda_bf16(int B, int T, int H, const wkv_bf16_t *r, const float *w,
                                      const wkv_bf16_t *k, const wkv_bf16_t *v, const wkv_bf16_t *a,
                                      const wkv_bf16_t *b, const float *s0, wkv_bf16_t *y,
                                      float *s_final, float *s_ckpt, int ckpt_every, float *sa,
                                      cudaStream_t stream, char *err)
{
    return launch_fwd<__nv_bfloat16, float>(WKV7_FWD_BF16_DEFAULT, B, T, H, r, w, k, v, a, b, s0, y, s_final,
                                            s_ckpt, ckpt_every, sa, stream, err);
}

extern "C" int wkv7_forward_cuda_algo(int algo, int bf16, int B, int T, int H, const void *r, const float *w,
                                      const void *k, const void *v, const void *a, const void *b,
                                      const float *s0, void *y, float *s_final, float *s_ckpt, int ckpt_every,
                                      float *sa, cudaStream_t stream, char *err)
{
    typedef __nv_bfloat16 bf;
    if (bf16)
        return launch_fwd<bf, float>(algo, B, T, H, (const bf *)r, w, (const bf *)k, (const bf *)v, (const bf *)a,
                                     (const bf *)b, s0, (bf *)y, s_final, s_ckpt, ckpt_every, sa, stream, err);
    return launch_fwd<float, float>(algo, B, T, H, (const float *)r, w, (const float *)k, (const float *)v,
                                    (const float *)a, (const float *)b, s0, (float *)y, s_final, s_ckpt,
                                    ckpt_every, sa, stream, err);
}

extern "C" int wkv7_backward_cuda_bf16(int B, int T, int H, const wkv_bf16_t *r, const float *w,
                                       const wkv_bf16_t *k, const wkv_bf16_t *v, const wkv_bf16_t *a,
                                       const wkv_bf16_t *b, const float *s_ckpt, int ckpt_every,
                                       const float *sa, const wkv_bf16_t *dy, wkv_bf16_t *dr,
                                       float *dw, wkv_bf16_t *dk, wkv_bf16_t *dv,
                                       wkv_bf16_t *da, wkv_bf16_t *db, float *ds0,
                                       cudaStream_t stream, char *err)
{
    return launch_bwd<__nv_bfloat16, float>(WKV7_BWD_BF16_DEFAULT, B, T, H, r, w, k, v, a, b, s_ckpt, ckpt_every, sa, dy, dr, dw,
                                     dk, dv, da, db, ds0, stream, err);
}

extern "C" int wkv7_backward_cuda_algo(int algo, int bf16, int B, int T, int H, const void *r, const float *w,
                                       const void *k, const void *v, const void *a, const void *b,
                                       const float *s_ckpt, int ckpt_every, const float *sa, const void *dy,
                                       void *dr, float *dw, void *dk, void *dv, void *da, void *db, float *ds0,
                                       cudaStream_t stream, char *err)
{
    typedef __nv_bfloat16 bf;
    if (bf16)
        return launch_bwd<bf, float>(algo, B, T, H, (const bf *)r, w, (const bf *)k, (const bf *)v, (const bf *)a,
                                     (const bf *)b, s_ckpt, ckpt_every, sa, (const bf *)dy, (bf *)dr, dw, (bf *)dk,
                                     (bf *)dv, (bf *)da, (bf *)db, ds0, stream, err);
    return launch_bwd<float, float>(algo, B, T, H, (const float *)r, w, (const float *)k, (const float *)v,
                                    (const float *)a, (const float *)b, s_ckpt, ckpt_every, sa, (const float *)dy,
                                    (float *)dr, dw, (float *)dk, (float *)dv, (float *)da, (float *)db, ds0,
                                    stream, err);
}
