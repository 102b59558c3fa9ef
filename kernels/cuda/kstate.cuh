/*
 * kstate.cuh - the kernel-expanded state's output term (SPEC section 4,
 * "Kernel-expanded state") and its backward pass on the GPU; the same math
 * as kernels/cpu/rbf.c, which is the readable reference (its header has the
 * derivation). Per layer and head:
 *
 *   rn_t   = r_t / |r_t|                          (head slice, N = 64)
 *   phi_m  = exp(-gamma |rn_t - u_m|^2) = exp(-gamma (2 - 2 rn_t.u_m))
 *   d_t    = prod_{s <= t} mean_j w_s[j]          (the head's mean decay)
 *   y_t   += d_t U0 phi_t                         U0 is N x M
 *
 * Backward, with g_t = dL/dy_t and G_t = d_t g_t:
 *   dU0    += sum_t G_t phi_t^T
 *   dphi_t  = U0^T G_t,  q_t = dphi_t . phi_t  (= dL/dd_t * d_t)
 *   dc_m    = 2 gamma phi_m dphi_m,  drn = sum_m dc_m u_m
 *   dr_t   += (drn - rn (rn.drn)) / |r_t|     (nothing when r_t = 0)
 *   dw_s[j]+= (sum_{t >= s} q_t) / mean_j w_s / N
 *
 * How it maps onto the GPU. The four products over the M features (rn u^T,
 * phi U0^T, G^T phi, G U0, dc u) are cuBLAS fp32 products batched over the
 * heads (strided: a head's slice of an (R, C) activation is an (R, 64)
 * matrix with leading dimension C); the rest is small kernels: one warp per
 * (row, head) for the norms, feature sums and the dr projection, one thread
 * (forward) or warp (backward) per (sequence, head) for the running product
 * d_t and the suffix sum into dw, in the CPU's order, so the products match
 * it closely. Features are recomputed in the backward (nothing is kept
 * between the passes but U0 and the support vectors).
 *
 * Precision: U0, the support vectors, features, d_t and every buffer here
 * are fp32 whatever the engine's storage type T; r, y, dy, dr are T; w, dw
 * fp32 (the engine keeps the decay fp32).
 *
 * Shapes: R = B * T rows; r, y, dy, dr (R, C) of T; w, dw (R, C) fp32;
 * U0, dU0 (H, N, M) row-major; sv (H, M, N). Buffers (rbf_cuda_bufs_t):
 * rn, z (R, C) fp32; inv, mdec, d, q (R, H) fp32; phi, dphi (H, R, M) fp32.
 * Conventions: the forward adds into y; the backward adds into dr, dw and
 * (when not NULL) dU0. The cuBLAS handle must already be bound to stream.
 */
#ifndef ST_KERNELS_CUDA_KSTATE_CUH
#define ST_KERNELS_CUDA_KSTATE_CUH

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/st_cuda.h"

#include <cublas_v2.h>

namespace st {

constexpr int RBF_N = 64;
constexpr int RBF_MAX_M = 1024; /* engine.c refuses more */

struct rbf_cuda_bufs_t {
    float *rn, *z;               /* (R, C): normalised r; z, then d dy, then drn */
    float *inv, *mdec, *d, *q;   /* (R, H): 1/|r| (0 when r = 0), mean decay, d_t, q_t */
    float *phi, *dphi;           /* (H, R, M): features (first rn.u), their gradient then dc */
};

/* Floats the buffers need for maxR rows, H heads and M features. */
static inline size_t rbf_cuda_buf_floats(size_t maxR, int H, int M)
{
    return 2 * maxR * H * RBF_N + 4 * maxR * H + 2 * maxR * H * (size_t)M;
}

/* One warp per (row, head): rn, 1/|r| and the mean decay. */
template <typename T>
__global__ void rbf_prep_kernel(int RH, const T *__restrict__ r, const float *__restrict__ w,
                                float *__restrict__ rn, float *__restrict__ inv, float *__restrict__ mdec)
{
    const int gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (gw >= RH) return;
    const size_t i0 = (size_t)gw * RBF_N + lane, i1 = i0 + 32;
    const float r0 = to_f(r[i0]), r1 = to_f(r[i1]);
    const float ss = warp_sum(r0 * r0 + r1 * r1);
    const float iv = ss > 0.f ? 1.f / sqrtf(ss) : 0.f;
    rn[i0] = r0 * iv;
    rn[i1] = r1 * iv;
    const float ms = warp_sum(w[i0] + w[i1]);
    if (lane == 0) {
        inv[gw] = iv;
        mdec[gw] = ms * (1.f / RBF_N);
    }
}

/* One thread per (sequence, head): d_t, the running product, in time order. */
__global__ void rbf_decay_kernel(int B, int Tn, int H, const float *__restrict__ mdec, float *__restrict__ d)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B * H) return;
    const int b = i / H, h = i % H;
    float p = 1.f;
    for (int t = 0; t < Tn; t++) {
        const size_t o = ((size_t)b * Tn + t) * H + h;
        p *= mdec[o];
        d[o] = p;
    }
}

/* phi (H, R, M) holds rn.u on entry, the features on exit. */
__global__ void rbf_phi_kernel(size_t n, int R, int M, int H, float gamma, const float *__restrict__ inv,
                               float *__restrict__ phi)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const size_t RM = (size_t)R * M;
    const int h = (int)(i / RM), row = (int)((i % RM) / M);
    /* |rn - u|^2 = 2 - 2 rn.u for unit vectors; r = 0 (rn = 0) gives |u|^2 = 1 */
    const float dist2 = inv[(size_t)row * H + h] > 0.f ? 2.f - 2.f * phi[i] : 1.f;
    phi[i] = expf(-gamma * dist2);
}

/* y (R, C) += d_t z; C = H * 64. */
template <typename T>
__global__ void rbf_add_kernel(size_t n, const float *__restrict__ d, const float *__restrict__ z, T *y)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const size_t rh = i / RBF_N; /* (row, head) index: C = H * 64 */
    y[i] = from_f<T>(to_f(y[i]) + d[rh] * z[i]);
}

/* G = d_t dy into gd (R, C) fp32. */
template <typename T>
__global__ void rbf_gd_kernel(size_t n, const float *__restrict__ d, const T *__restrict__ dy, float *__restrict__ gd)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    gd[i] = d[i / RBF_N] * to_f(dy[i]);
}

/* One warp per (row, head): q_t = dphi.phi, and dphi <- 2 gamma phi dphi (dc). */
__global__ void rbf_dphi_kernel(int RH, int R, int H, int M, float gamma, const float *__restrict__ phi,
                                float *__restrict__ dphi, float *__restrict__ q)
{
    const int gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (gw >= RH) return;
    const int row = gw / H, h = gw % H;
    const size_t base = ((size_t)h * R + row) * M;
    float s = 0.f;
    for (int m = lane; m < M; m += 32) {
        const float p = phi[base + m], dp = dphi[base + m];
        s += dp * p;
        dphi[base + m] = 2.f * gamma * p * dp;
    }
    s = warp_sum(s);
    if (lane == 0) q[gw] = s;
}

/* One warp per (row, head): dr += (drn - rn (rn.drn)) / |r|. */
template <typename T>
__global__ void rbf_dr_kernel(int RH, const float *__restrict__ rn, const float *__restrict__ inv,
                              const float *__restrict__ drn, T *dr)
{
    const int gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (gw >= RH) return;
    const float iv = inv[gw];
    if (iv == 0.f) return; /* r = 0: phi does not depend on r here (uniform over the warp) */
    const size_t i0 = (size_t)gw * RBF_N + lane, i1 = i0 + 32;
    const float p = warp_sum(rn[i0] * drn[i0] + rn[i1] * drn[i1]);
    dr[i0] = from_f<T>(to_f(dr[i0]) + (drn[i0] - rn[i0] * p) * iv);
    dr[i1] = from_f<T>(to_f(dr[i1]) + (drn[i1] - rn[i1] * p) * iv);
}

/* One warp per (sequence, head): dL/dm_s = sum_{t >= s} q_t / m_s, shared
 * evenly by the N decays of the head, summed from the end as on the CPU. */
__global__ void rbf_dw_kernel(int B, int Tn, int H, const float *__restrict__ q, const float *__restrict__ mdec,
                              float *dw)
{
    const int gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (gw >= B * H) return;
    const int b = gw / H, h = gw % H;
    float acc = 0.f;
    for (int t = Tn - 1; t >= 0; t--) {
        const size_t o = ((size_t)b * Tn + t) * H + h;
        acc += q[o];
        const float dm = acc / mdec[o] / RBF_N;
        dw[o * RBF_N + lane] += dm;
        dw[o * RBF_N + lane + 32] += dm;
    }
}

} // namespace st

/* ---- launchers ---------------------------------------------------------- */

/* The features of one layer's r (R rows): bf->rn, inv, mdec, d and phi. */
template <typename T>
static int rbf_features_cuda(cublasHandle_t blas, cudaStream_t st, int B, int Tn, int H, int M, float gamma,
                             const T *r, const float *w, const float *sv, const st::rbf_cuda_bufs_t *bf, char *err)
{
    const int R = B * Tn, RH = R * H, C = H * st::RBF_N;
    st::rbf_prep_kernel<T><<<(RH + 7) / 8, 256, 0, st>>>(RH, r, w, bf->rn, bf->inv, bf->mdec);
    ST_CUDA_CHECK_LAUNCH("rbf_prep_kernel");
    st::rbf_decay_kernel<<<(B * H + 127) / 128, 128, 0, st>>>(B, Tn, H, bf->mdec, bf->d);
    ST_CUDA_CHECK_LAUNCH("rbf_decay_kernel");
    /* per head: phi (R x M) = rn_h (R x N, ld C) sv_h^T (sv_h is M x N) */
    const float one = 1.f, zero = 0.f;
    ST_CUBLAS_CHECK(cublasSgemmStridedBatched(blas, CUBLAS_OP_T, CUBLAS_OP_N, M, R, st::RBF_N, &one, sv, st::RBF_N,
                                               (long long)M * st::RBF_N, bf->rn, C, st::RBF_N, &zero, bf->phi, M,
                                               (long long)R * M, H));
    const size_t n = (size_t)H * R * M;
    st::rbf_phi_kernel<<<st::grid_for(n), 256, 0, st>>>(n, R, M, H, gamma, bf->inv, bf->phi);
    ST_CUDA_CHECK_LAUNCH("rbf_phi_kernel");
    return ST_OK;
}

/* y (R, C) += d_t U0 phi(r_t / |r_t|) for one layer. */
template <typename T>
static int rbf_forward_cuda(cublasHandle_t blas, cudaStream_t st, int B, int Tn, int H, int M, float gamma,
                            const T *r, const float *w, const float *U0, const float *sv, T *y,
                            const st::rbf_cuda_bufs_t *bf, char *err)
{
    if (M < 1 || M > st::RBF_MAX_M) return st_fail(err, ST_EINVAL, "the kernel-expanded state has %d features", M);
    int rc = rbf_features_cuda<T>(blas, st, B, Tn, H, M, gamma, r, w, sv, bf, err);
    if (rc) return rc;
    const int R = B * Tn, C = H * st::RBF_N;
    /* per head: z (R x N, ld C) = phi (R x M) U0_h^T (U0_h is N x M) */
    const float one = 1.f, zero = 0.f;
    ST_CUBLAS_CHECK(cublasSgemmStridedBatched(blas, CUBLAS_OP_T, CUBLAS_OP_N, st::RBF_N, R, M, &one, U0, M,
                                               (long long)st::RBF_N * M, bf->phi, M, (long long)R * M, &zero, bf->z,
                                               C, st::RBF_N, H));
    const size_t n = (size_t)R * C;
    st::rbf_add_kernel<T><<<st::grid_for(n), 256, 0, st>>>(n, bf->d, bf->z, y);
    ST_CUDA_CHECK_LAUNCH("rbf_add_kernel");
    return ST_OK;
}

/* Given dy: dU0 += sum_t d_t dy_t phi_t^T (dU0 may be NULL) and the term's
 * shares of dr (T) and dw (fp32) added, for one layer. */
template <typename T>
static int rbf_backward_cuda(cublasHandle_t blas, cudaStream_t st, int B, int Tn, int H, int M, float gamma,
                             const T *r, const float *w, const float *U0, const float *sv, const T *dy, T *dr,
                             float *dw, float *dU0, const st::rbf_cuda_bufs_t *bf, char *err)
{
    if (M < 1 || M > st::RBF_MAX_M) return st_fail(err, ST_EINVAL, "the kernel-expanded state has %d features", M);
    int rc = rbf_features_cuda<T>(blas, st, B, Tn, H, M, gamma, r, w, sv, bf, err);
    if (rc) return rc;
    const int R = B * Tn, RH = R * H, C = H * st::RBF_N;
    const size_t n = (size_t)R * C;
    st::rbf_gd_kernel<T><<<st::grid_for(n), 256, 0, st>>>(n, bf->d, dy, bf->z);
    ST_CUDA_CHECK_LAUNCH("rbf_gd_kernel");
    const float one = 1.f, zero = 0.f;
    if (dU0) /* per head: dU0_h (N x M) += G_h^T (N x R) phi_h (R x M) */
        ST_CUBLAS_CHECK(cublasSgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_T, M, st::RBF_N, R, &one, bf->phi, M,
                                                   (long long)R * M, bf->z, C, st::RBF_N, &one, dU0, M,
                                                   (long long)st::RBF_N * M, H));
    /* per head: dphi (R x M) = G_h (R x N, ld C) U0_h (N x M) */
    ST_CUBLAS_CHECK(cublasSgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_N, M, R, st::RBF_N, &one, U0, M,
                                               (long long)st::RBF_N * M, bf->z, C, st::RBF_N, &zero, bf->dphi, M,
                                               (long long)R * M, H));
    st::rbf_dphi_kernel<<<(RH + 7) / 8, 256, 0, st>>>(RH, R, H, M, gamma, bf->phi, bf->dphi, bf->q);
    ST_CUDA_CHECK_LAUNCH("rbf_dphi_kernel");
    /* per head: drn (R x N, ld C) = dc (R x M) sv_h (M x N); z is dead, it takes drn */
    ST_CUBLAS_CHECK(cublasSgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_N, st::RBF_N, R, M, &one, sv, st::RBF_N,
                                               (long long)M * st::RBF_N, bf->dphi, M, (long long)R * M, &zero, bf->z,
                                               C, st::RBF_N, H));
    st::rbf_dr_kernel<T><<<(RH + 7) / 8, 256, 0, st>>>(RH, bf->rn, bf->inv, bf->z, dr);
    ST_CUDA_CHECK_LAUNCH("rbf_dr_kernel");
    st::rbf_dw_kernel<<<(B * H + 7) / 8, 256, 0, st>>>(B, Tn, H, bf->q, bf->mdec, dw);
    ST_CUDA_CHECK_LAUNCH("rbf_dw_kernel");
    return ST_OK;
}

#endif
