/*
 * adam.cuh - the optimizer step of state tuning on the GPU: the gradient to
 * its mean, its global L2 norm, clipping and Adam, plus the largest |S0|
 * (the tuning loop's divergence check). The formulas and the order of every
 * rounding are engine/adam.c's and engine/engine.c's (the CPU backend of
 * engine_params_step), so that the CUDA resident parameters follow the CPU
 * path step for step:
 *
 *   g      = (float)(grad / div)                      (div: the global number of targets)
 *   norm   = sqrt(sum g^2)      in double              (adam_clip_grad_norm)
 *   scale  = norm > max_norm > 0 ? max_norm / (norm + 1e-6) : 1; g = (float)(g * scale)
 *   m      = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g g   in double, stored fp32
 *   p     -= lr (m / c1) / (sqrt(v / c2) + eps)            c1 = 1 - b1^t, c2 = 1 - b2^t (host)
 *
 * Every double operation is an explicit round-to-nearest intrinsic so nvcc
 * does not contract a multiply and an add into an FMA the host code (x86-64
 * without -mfma) does not have: the update is then bit-identical to adam.c
 * for the same gradient. The norm is a tree sum in double (fixed grid, fixed
 * order: deterministic run to run; not the CPU's sequential order, so it can
 * differ from it in the last bits).
 *
 * Shapes: every vector is n fp32 values (n = L H N N). Reductions use a
 * fixed grid of ADAM_RED_BLOCKS x ADAM_THREADS and a partials buffer of
 * ADAM_RED_BLOCKS entries, finished by a one-block kernel; the norm stays in
 * device memory, so the Adam kernel reads it without a round trip to the
 * host (a non-finite norm makes it skip the update, as the CPU path does).
 */
#ifndef ST_KERNELS_CUDA_ADAM_CUH
#define ST_KERNELS_CUDA_ADAM_CUH

#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

namespace st {

constexpr int ADAM_THREADS = 256;
constexpr int ADAM_RED_BLOCKS = 264; /* two per SM on an H100; fixed, so sums come out the same every run */

/* g = (float)((double)g / div) in place. */
__global__ void grad_div_kernel(size_t n, float *g, double div)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        g[i] = (float)__ddiv_rn((double)g[i], div);
}

/* The block's values reduced in a fixed tree (the same order every run);
 * every thread gets the result. op(left, right) combines two entries; sh
 * holds blockDim.x of them. The norm's double sum and the divergence
 * check's largest |x| below are this one reduction with two operators. */
template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, V *sh, Op op)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] = op(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    V r = sh[0];
    __syncthreads();
    return r;
}

/* a + b rounded to nearest (no contraction with a neighbouring multiply) */
struct dsum_op {
    __device__ double operator()(double a, double b) const { return __dadd_rn(a, b); }
};

/* partial[block] = sum over the block's grid-stride slice of g^2, in double
 * (grid ADAM_RED_BLOCKS, block ADAM_THREADS). */
__global__ void sumsq_partial_kernel(size_t n, const float *g, double *partial)
{
    __shared__ double sh[ADAM_THREADS];
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double x = g[i];
        s = __dadd_rn(s, __dmul_rn(x, x));
    }
    s = block_reduce(s, sh, dsum_op());
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* *norm = sqrt(sum of the np partials) (one block of ADAM_THREADS). */
__global__ void sumsq_finish_kernel(int np, const double *partial, double *norm)
{
    __shared__ double sh[ADAM_THREADS];
    double s = 0;
    for (int i = threadIdx.x; i < np; i += blockDim.x) s = __dadd_rn(s, partial[i]);
    s = block_reduce(s, sh, dsum_op());
    if (threadIdx.x == 0) *norm = __dsqrt_rn(s);
}

/* One Adam step on p (n) from g (n), clipped by the norm in *norm (see the
 * file comment). Sets *bad = 1 when an updated parameter is not finite;
 * does nothing when the norm is not finite. */
__global__ void adam_kernel(size_t n, float *p, float *m, float *v, const float *g, const double *norm,
                            double max_norm, double lr, double b1, double b2, double c1, double c2, double eps,
                            int *bad)
{
    const double nrm = *norm;
    if (!isfinite(nrm)) return;
    const bool clip = max_norm > 0 && nrm > max_norm;
    const double scale = clip ? __ddiv_rn(max_norm, __dadd_rn(nrm, 1e-6)) : 1.0;
    const double ob1 = __dadd_rn(1.0, -b1), ob2 = __dadd_rn(1.0, -b2);
    int any_bad = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gf = g[i];
        if (clip) gf = (float)__dmul_rn((double)gf, scale);
        const double gd = gf;
        const double mm = __dadd_rn(__dmul_rn(b1, (double)m[i]), __dmul_rn(ob1, gd));
        const double vv = __dadd_rn(__dmul_rn(b2, (double)v[i]), __dmul_rn(__dmul_rn(ob2, gd), gd));
        m[i] = (float)mm;
        v[i] = (float)vv;
        const double den = __dadd_rn(__dsqrt_rn(__ddiv_rn(vv, c2)), eps);
        const double upd = __ddiv_rn(__dmul_rn(lr, __ddiv_rn(mm, c1)), den);
        const float np_ = (float)__dadd_rn((double)p[i], -upd);
        p[i] = np_;
        any_bad |= !isfinite(np_);
    }
    if (any_bad) *bad = 1;
}

/* The largest |x| and its index, with the tuning loop's rule: the first
 * non-finite element wins, else the largest value, ties to the lower index.
 * A candidate is (rank, value, index), rank 2 = non-finite, 1 = finite. */
struct absmax_t {
    int rank;
    float val;
    unsigned long long idx;
};

__device__ __forceinline__ bool absmax_better(const absmax_t &a, const absmax_t &b)
{
    if (a.rank != b.rank) return a.rank > b.rank;
    if (a.rank == 1 && a.val != b.val) return a.val > b.val;
    return a.idx < b.idx;
}

/* the better of two candidates; the left one (lower indices) on a tie */
struct absmax_op {
    __device__ absmax_t operator()(const absmax_t &a, const absmax_t &b) const { return absmax_better(b, a) ? b : a; }
};

/* partial[block]: the block's best candidate over its grid-stride slice. */
__global__ void absmax_partial_kernel(size_t n, const float *x, absmax_t *partial)
{
    __shared__ absmax_t sh[ADAM_THREADS];
    absmax_t best = {0, 0.f, ~0ull};
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float a = fabsf(x[i]);
        absmax_t c = {isfinite(a) ? 1 : 2, a, (unsigned long long)i};
        if (absmax_better(c, best)) best = c;
    }
    best = block_reduce(best, sh, absmax_op());
    if (threadIdx.x == 0) partial[blockIdx.x] = best;
}

/* out[0]: the best of np partials (one block of ADAM_THREADS). */
__global__ void absmax_finish_kernel(int np, const absmax_t *partial, absmax_t *out)
{
    __shared__ absmax_t sh[ADAM_THREADS];
    absmax_t best = {0, 0.f, ~0ull};
    for (int i = threadIdx.x; i < np; i += blockDim.x)
        if (absmax_better(partial[i], best)) best = partial[i];
    best = block_reduce(best, sh, absmax_op());
    if (threadIdx.x == 0) *out = best;
}

} // namespace st

#endif
