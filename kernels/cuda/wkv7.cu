/*
 * wkv7.cu - WKV7 forward and backward (with the gradient of the initial state)
 * on the GPU. The math, shapes, algorithm and conventions are in wkv7.cuh;
 * this file holds the kernels first, then the host launchers.
 *
 * Why this algorithm first (shared/notes/wkv7-kernels.md): it is the official
 * kernel's, exact in fp32 up to rounding, and small enough to be checked line
 * by line against the float64 reference; the chunked tensor-core formulation
 * (notes section 3) is the path below the official kernel's time and would
 * replace these kernels behind the same launchers.
 *
 * Register budget: forward 64 fp32 state + staging; backward 3 x 64 fp32
 * (S column, dS column, dS row). Every register array is indexed with
 * compile-time constants only (fully unrolled loops), so nothing spills to
 * local memory on sm_90 (check with -Xptxas -v).
 */
#include "kernels/cuda/wkv7.cuh"
#include "kernels/cuda/st_cuda.h"

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

int check_shapes(int B, int T, int H, int ckpt_every, char *err)
{
    if (B <= 0 || T <= 0 || H <= 0)
        return st_fail(err, ST_EINVAL, "wkv7 (cuda): B, T and H must be positive (got %d, %d, %d)", B, T, H);
    if (B > 65535 || H > 65535)
        return st_fail(err, ST_EINVAL, "wkv7 (cuda): B and H must be at most 65535 (got %d, %d)", B, H);
    if (ckpt_every != CH)
        return st_fail(err, ST_EINVAL, "wkv7 (cuda): ckpt_every must be %d (got %d)", CH, ckpt_every);
    return ST_OK;
}

template <typename F, typename FW>
int launch_fwd(int B, int T, int H, const F *r, const FW *w, const F *k, const F *v, const F *a,
               const F *b, const float *s0, F *y, float *s_final, float *s_ckpt, int ckpt_every,
               float *sa, cudaStream_t stream, char *err)
{
    int rc = check_shapes(B, T, H, ckpt_every, err);
    if (rc) return rc;
    if (!r || !w || !k || !v || !a || !b || !s0 || !y || !s_ckpt || !sa)
        return st_fail(err, ST_EINVAL, "wkv7_forward_cuda: a required pointer is NULL");
    const int nck = (T + CH - 1) / CH;
    wkv7_fwd_kernel<F, FW><<<dim3(H, B), N, 0, stream>>>(T, H, nck, r, w, k, v, a, b, s0, y, s_final, s_ckpt, sa);
    ST_CUDA_CHECK_LAUNCH("wkv7_fwd_kernel");
    return ST_OK;
}

template <typename F, typename FW>
int launch_bwd(int B, int T, int H, const F *r, const FW *w, const F *k, const F *v, const F *a,
               const F *b, const float *s_ckpt, int ckpt_every, const float *sa, const F *dy,
               F *dr, FW *dw, F *dk, F *dv, F *da, F *db, float *ds0, cudaStream_t stream, char *err)
{
    int rc = check_shapes(B, T, H, ckpt_every, err);
    if (rc) return rc;
    if (!r || !w || !k || !v || !a || !b || !s_ckpt || !sa || !dy || !dr || !dw || !dk || !dv ||
        !da || !db || !ds0)
        return st_fail(err, ST_EINVAL, "wkv7_backward_cuda: a required pointer is NULL");
    const int nck = (T + CH - 1) / CH;
    wkv7_bwd_kernel<F, FW><<<dim3(H, B), N, 0, stream>>>(T, H, nck, r, w, k, v, a, b, s_ckpt, sa, dy,
                                                     dr, dw, dk, dv, da, db, ds0);
    ST_CUDA_CHECK_LAUNCH("wkv7_bwd_kernel");
    return ST_OK;
}

} // namespace

extern "C" size_t wkv7_cuda_ckpt_floats(int B, int T, int H)
{
    return (size_t)B * H * ((T + CH - 1) / CH) * N * N;
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
    return launch_fwd<float, float>(B, T, H, r, w, k, v, a, b, s0, y, s_final, s_ckpt, ckpt_every, sa, stream, err);
}

extern "C" int wkv7_backward_cuda(int B, int T, int H, const float *r, const float *w, const float *k,
                                  const float *v, const float *a, const float *b, const float *s_ckpt,
                                  int ckpt_every, const float *sa, const float *dy, float *dr,
                                  float *dw, float *dk, float *dv, float *da, float *db, float *ds0,
                                  cudaStream_t stream, char *err)
{
    return launch_bwd<float, float>(B, T, H, r, w, k, v, a, b, s_ckpt, ckpt_every, sa, dy, dr, dw, dk, dv,
                             da, db, ds0, stream, err);
}

extern "C" int wkv7_forward_cuda_bf16(int B, int T, int H, const wkv_bf16_t *r, const float *w,
                                      const wkv_bf16_t *k, const wkv_bf16_t *v, const wkv_bf16_t *a,
                                      const wkv_bf16_t *b, const float *s0, wkv_bf16_t *y,
                                      float *s_final, float *s_ckpt, int ckpt_every, float *sa,
                                      cudaStream_t stream, char *err)
{
    return launch_fwd<__nv_bfloat16, float>(B, T, H, r, w, k, v, a, b, s0, y, s_final, s_ckpt, ckpt_every,
                                     sa, stream, err);
}

extern "C" int wkv7_backward_cuda_bf16(int B, int T, int H, const wkv_bf16_t *r, const float *w,
                                       const wkv_bf16_t *k, const wkv_bf16_t *v, const wkv_bf16_t *a,
                                       const wkv_bf16_t *b, const float *s_ckpt, int ckpt_every,
                                       const float *sa, const wkv_bf16_t *dy, wkv_bf16_t *dr,
                                       float *dw, wkv_bf16_t *dk, wkv_bf16_t *dv,
                                       wkv_bf16_t *da, wkv_bf16_t *db, float *ds0,
                                       cudaStream_t stream, char *err)
{
    return launch_bwd<__nv_bfloat16, float>(B, T, H, r, w, k, v, a, b, s_ckpt, ckpt_every, sa, dy, dr, dw,
                                     dk, dv, da, db, ds0, stream, err);
}
