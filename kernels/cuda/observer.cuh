/*
 * observer.cuh - the observer (teacher-student) objective of SPEC section 4
 * over one chunk of logit rows on the GPU, fused like head.cuh's
 * cross-entropy; kernels/cpu/observer.c is the readable reference:
 *
 *   row loss = alpha CE(s, target) + (1 - alpha) tau^2 KL(softmax(t / tau) || softmax(s / tau))
 *   d row loss / ds = alpha (softmax(s) - onehot(target))
 *                   + (1 - alpha) tau (softmax(s / tau) - softmax(t / tau))
 *
 * s is the student's row (fp32 out of the head product), t the teacher's row
 * (fp32, uploaded chunk by chunk by the engine: the (B*T, V) logits of either
 * model never sit on the device at once). Rows with target -1 (or out of
 * range) get loss, CE, KL and correct 0 and, in the backward, a zero row, as
 * on the CPU. The CE, the KL (unscaled) and the row loss are written per row;
 * the host sums them in double. All arithmetic fp32 with max-shifted
 * exponentials (the CPU sums its log-sum-exps in double; the difference is
 * far inside the fp32 tolerance of tests/test_cuda_methods.c).
 *
 * Shapes: logits, teacher (rows, V) fp32; dlogits (rows, V) of the storage
 * type T, may alias logits when T is float (each thread reads an element
 * before it writes the same one, after every reduction that reads the row);
 * targets, row_* (rows). One block of OBS_THREADS per row.
 *
 * observer_topk_kernel is the same objective against a teacher known only by
 * its top-k logits per row (computed ahead of time, engine/teacher_cache.h;
 * kernels/cpu/observer_topk.c is the reference, docs/methods.md the tail
 * treatment): the teacher's probabilities are the softmax of its k kept
 * values / tau (renormalised: probability 0 on the tail), the student's
 * tempered log-softmax runs over the whole vocabulary, so
 *
 *   KL_k = sum_i p_i (log p_i - log softmax(s / tau)[id_i])
 *   d row loss / ds_v = alpha (softmax(s)_v - onehot(target)_v)
 *                     + (1 - alpha) tau (softmax(s / tau)_v - p(v)),  p(v) = 0 off the k ids.
 * Shapes: tk_val, tk_id (rows, K) (rows without a target are not read). The
 * gradient is first built in fp32 in the logits row itself (each thread
 * rewrites the elements it read, after every reduction that reads the row),
 * then the teacher's p_i are subtracted at its ids (atomically: ids are data,
 * a repeated one subtracts twice, as on the CPU), then the row is stored in
 * T when dlogits is another buffer. Ids outside [0, V) are skipped as on the
 * CPU (the engine refuses them beforehand).
 */
#ifndef ST_KERNELS_CUDA_OBSERVER_CUH
#define ST_KERNELS_CUDA_OBSERVER_CUH

#include "kernels/cuda/common.cuh"

#include <stdint.h>

namespace st {

constexpr int OBS_THREADS = 512;

/* Max over the block with its first index (ties to the lower index, as
 * head.cuh's argmax); every thread gets both. shv/shi hold 32 entries. */
__device__ __forceinline__ void obs_block_argmax(float &best, int &bi, float *shv, int *shi)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ob > best || (ob == best && oi < bi)) { best = ob; bi = oi; }
    }
    __syncthreads(); /* shv/shi may still be read from a previous call */
    if (lane == 0) { shv[wid] = best; shi[wid] = bi; }
    __syncthreads();
    best = lane < nw ? shv[lane] : -INFINITY;
    bi = lane < nw ? shi[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ob > best || (ob == best && oi < bi)) { best = ob; bi = oi; }
    }
}

template <typename T>
__global__ void __launch_bounds__(OBS_THREADS)
    observer_kernel(int V, const float *logits, const float *__restrict__ teacher, T *dlogits,
                    const int32_t *__restrict__ targets, float alpha, float tau, float *__restrict__ row_loss,
                    float *__restrict__ row_ce, float *__restrict__ row_kl, int32_t *__restrict__ row_correct,
                    int backward)
{
    __shared__ float shv[32];
    __shared__ int shi[32];
    __shared__ float sh[32];
    const int r = blockIdx.x;
    const float *row = logits + (size_t)r * V, *trow = teacher + (size_t)r * V;
    T *drow = dlogits + (size_t)r * V;
    const int tg = targets ? targets[r] : -1;
    if (tg < 0 || tg >= V) {
        if (backward)
            for (int v = threadIdx.x; v < V; v += blockDim.x) drow[v] = from_f<T>(0.f);
        if (threadIdx.x == 0) { row_loss[r] = row_ce[r] = row_kl[r] = 0.f; row_correct[r] = 0; }
        return;
    }
    /* the student's max and argmax, the teacher's max */
    float ms = -INFINITY, mt = -INFINITY;
    int am = 0x7fffffff;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float x = row[v];
        if (x > ms) { ms = x; am = v; }
        mt = fmaxf(mt, trow[v]);
    }
    obs_block_argmax(ms, am, shv, shi);
    int dummy = 0;
    obs_block_argmax(mt, dummy, shv, shi);
    /* the three normalisers: untempered student (CE), tempered student and teacher */
    const float it = 1.f / tau;
    float se1 = 0.f, ses = 0.f, set = 0.f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float ds = row[v] - ms;
        se1 += expf(ds);
        ses += expf(ds * it);
        set += expf((trow[v] - mt) * it);
    }
    se1 = block_sum(se1, sh);
    ses = block_sum(ses, sh);
    set = block_sum(set, sh);
    const float lses = logf(ses), lset = logf(set);
    /* KL(pt || qs) = sum pt (log pt - log qs), with the max shifts inside */
    float kl = 0.f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float lpt = (trow[v] - mt) * it - lset, lps = (row[v] - ms) * it - lses;
        kl += expf(lpt) * (lpt - lps);
    }
    const float xt = row[tg];
    kl = block_sum(kl, sh); /* its syncs: every read of row is done before the writes below */
    if (threadIdx.x == 0) {
        const float ce = logf(se1) - (xt - ms);
        row_ce[r] = ce;
        row_kl[r] = kl;
        row_loss[r] = alpha * ce + (1.f - alpha) * tau * tau * kl;
        row_correct[r] = am == tg;
    }
    if (backward) {
        const float i1 = 1.f / se1, is = 1.f / ses, ist = 1.f / set, bcoef = (1.f - alpha) * tau;
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            const float ds = row[v] - ms;
            const float p1 = expf(ds) * i1, qs = expf(ds * it) * is, pt = expf((trow[v] - mt) * it) * ist;
            drow[v] = from_f<T>(alpha * (v == tg ? p1 - 1.f : p1) + bcoef * (qs - pt));
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(OBS_THREADS)
    observer_topk_kernel(int V, int K, float *logits, const float *__restrict__ tk_val,
                         const int32_t *__restrict__ tk_id, T *dlogits, const int32_t *__restrict__ targets,
                         float alpha, float tau, float *__restrict__ row_loss, float *__restrict__ row_ce,
                         float *__restrict__ row_kl, int32_t *__restrict__ row_correct, int backward)
{
    __shared__ float shv[32];
    __shared__ int shi[32];
    __shared__ float sh[32];
    const int r = blockIdx.x;
    float *row = logits + (size_t)r * V;
    const float *tv = tk_val + (size_t)r * K;
    const int32_t *ti = tk_id + (size_t)r * K;
    T *drow = dlogits + (size_t)r * V;
    const int tg = targets ? targets[r] : -1;
    if (tg < 0 || tg >= V) {
        if (backward)
            for (int v = threadIdx.x; v < V; v += blockDim.x) drow[v] = from_f<T>(0.f);
        if (threadIdx.x == 0) { row_loss[r] = row_ce[r] = row_kl[r] = 0.f; row_correct[r] = 0; }
        return;
    }
    /* the student's max and argmax over V, the teacher's max over its k */
    float ms = -INFINITY, mt = -INFINITY;
    int am = 0x7fffffff;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float x = row[v];
        if (x > ms) { ms = x; am = v; }
    }
    for (int i = threadIdx.x; i < K; i += blockDim.x) mt = fmaxf(mt, tv[i]);
    obs_block_argmax(ms, am, shv, shi);
    int dummy = 0;
    obs_block_argmax(mt, dummy, shv, shi);
    /* normalisers: untempered and tempered student over V, tempered teacher over its k */
    const float it = 1.f / tau;
    float se1 = 0.f, ses = 0.f, set = 0.f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float ds = row[v] - ms;
        se1 += expf(ds);
        ses += expf(ds * it);
    }
    for (int i = threadIdx.x; i < K; i += blockDim.x) set += expf((tv[i] - mt) * it);
    se1 = block_sum(se1, sh);
    ses = block_sum(ses, sh);
    set = block_sum(set, sh);
    const float lses = logf(ses), lset = logf(set);
    float kl = 0.f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        const int id = ti[i];
        if (id < 0 || id >= V) continue;
        const float lpt = (tv[i] - mt) * it - lset, lps = (row[id] - ms) * it - lses;
        kl += expf(lpt) * (lpt - lps);
    }
    const float xt = row[tg];
    kl = block_sum(kl, sh); /* its syncs: every read of row is done before the writes below */
    if (threadIdx.x == 0) {
        const float ce = logf(se1) - (xt - ms);
        row_ce[r] = ce;
        row_kl[r] = kl;
        row_loss[r] = alpha * ce + (1.f - alpha) * tau * tau * kl;
        row_correct[r] = am == tg;
    }
    if (!backward) return;
    const float i1 = 1.f / se1, is = 1.f / ses, bcoef = (1.f - alpha) * tau;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float ds = row[v] - ms;
        const float p1 = expf(ds) * i1, qs = expf(ds * it) * is;
        row[v] = alpha * (v == tg ? p1 - 1.f : p1) + bcoef * qs;
    }
    __syncthreads();
    const float ist = 1.f / set;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        const int id = ti[i];
        if (id >= 0 && id < V) atomicAdd(&row[id], -bcoef * expf((tv[i] - mt) * it) * ist);
    }
    if ((const void *)drow == (const void *)row) return;
    __syncthreads();
    for (int v = threadIdx.x; v < V; v += blockDim.x) drow[v] = from_f<T>(row[v]);
}

} // namespace st

#endif
