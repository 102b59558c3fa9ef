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
 *
 * Both kernels share everything but the teacher's side: the row without a
 * target (obs_untargeted), the student's max, argmax and normalisers with
 * the teacher's over the values it has (obs_normalise), the row's CE, KL
 * and loss (obs_write_row) and the student's share of the gradient
 * (obs_dlogit).
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

/* A row without a usable target (-1 or out of range): loss, CE, KL and
 * correct 0 and, in the backward, a zero gradient row, as on the CPU. True
 * when the row is done. */
template <typename T>
__device__ __forceinline__ bool obs_untargeted(int r, int tg, int V, T *drow, int backward, float *row_loss,
                                               float *row_ce, float *row_kl, int32_t *row_correct)
{
    if (tg >= 0 && tg < V) return false;
    if (backward)
        for (int v = threadIdx.x; v < V; v += blockDim.x) drow[v] = from_f<T>(0.f);
    if (threadIdx.x == 0) { row_loss[r] = row_ce[r] = row_kl[r] = 0.f; row_correct[r] = 0; }
    return true;
}

/* The block reductions' scratch (32 entries: one per warp) */
struct obs_shared_t {
    float v[32]; /* obs_block_argmax's values */
    int i[32];   /* and indices */
    float s[32]; /* block_sum's */
};

/* What both objectives know of a row before its KL: the student's max ms and
 * argmax am over V, the teacher's max mt over the values it has (the whole
 * row, or its top k), and the three normalisers: se1 of the untempered
 * student (the CE's), ses of the tempered student, set of the tempered
 * teacher, each a block sum of max-shifted exponentials. */
struct obs_norm_t {
    float ms, mt;
    int am;
    float se1, ses, set;
    float lses, lset; /* logf(ses), logf(set) */
};

/* The shared prologue of both kernels (every thread gets the whole struct):
 * the student's row (V) and the teacher's nt values, tempered by it = 1 / tau.
 * The student and the teacher are read in separate loops, each thread's sums
 * in the same order as one loop over both would make them. */
__device__ __forceinline__ obs_norm_t obs_normalise(const float *row, int V, const float *tval, int nt, float it,
                                                    obs_shared_t &sm)
{
    obs_norm_t s;
    s.ms = -INFINITY;
    s.mt = -INFINITY;
    s.am = 0x7fffffff;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float x = row[v];
        if (x > s.ms) { s.ms = x; s.am = v; }
    }
    for (int i = threadIdx.x; i < nt; i += blockDim.x) s.mt = fmaxf(s.mt, tval[i]);
    obs_block_argmax(s.ms, s.am, sm.v, sm.i);
    int dummy = 0;
    obs_block_argmax(s.mt, dummy, sm.v, sm.i);
    float se1 = 0.f, ses = 0.f, set = 0.f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float ds = row[v] - s.ms;
        se1 += expf(ds);
        ses += expf(ds * it);
    }
    for (int i = threadIdx.x; i < nt; i += blockDim.x) set += expf((tval[i] - s.mt) * it);
    s.se1 = block_sum(se1, sm.s);
    s.ses = block_sum(ses, sm.s);
    s.set = block_sum(set, sm.s);
    s.lses = logf(s.ses);
    s.lset = logf(s.set);
    return s;
}

/* Sums the block's KL terms and writes the row's CE, KL, loss and whether the
 * argmax is the target (thread 0). The target's logit is read before the sum:
 * block_sum's syncs then put every read of the row before the backward's
 * writes into it (dlogits may alias logits; the top-k kernel rewrites it). */
__device__ __forceinline__ void obs_write_row(int r, const float *row, int tg, float kl, const obs_norm_t &s,
                                              float alpha, float tau, obs_shared_t &sm, float *row_loss,
                                              float *row_ce, float *row_kl, int32_t *row_correct)
{
    const float xt = row[tg];
    kl = block_sum(kl, sm.s);
    if (threadIdx.x == 0) {
        const float ce = logf(s.se1) - (xt - s.ms);
        row_ce[r] = ce;
        row_kl[r] = kl;
        row_loss[r] = alpha * ce + (1.f - alpha) * tau * tau * kl;
        row_correct[r] = s.am == tg;
    }
}

/* d row loss / ds_v for a student logit x: alpha (softmax(s)_v - onehot_v) +
 * bcoef (softmax(s / tau)_v - pt), pt the teacher's probability at v (0 in
 * the top-k kernel, which subtracts it at the teacher's ids afterwards);
 * i1 = 1 / se1, is = 1 / ses, bcoef = (1 - alpha) tau. */
__device__ __forceinline__ float obs_dlogit(float x, bool target, const obs_norm_t &s, float it, float i1, float is,
                                            float alpha, float bcoef, float pt)
{
    const float ds = x - s.ms;
    const float p1 = expf(ds) * i1, qs = expf(ds * it) * is;
    return alpha * (target ? p1 - 1.f : p1) + bcoef * (qs - pt);
}

template <typename T>
__global__ void __launch_bounds__(OBS_THREADS)
    observer_kernel(int V, const float *logits, const float *__restrict__ teacher, T *dlogits,
                    const int32_t *__restrict__ targets, float alpha, float tau, float *__restrict__ row_loss,
                    float *__restrict__ row_ce, float *__restrict__ row_kl, int32_t *__restrict__ row_correct,
                    int backward)
{
    __shared__ obs_shared_t sm;
    const int r = blockIdx.x;
    const float *row = logits + (size_t)r * V, *trow = teacher + (size_t)r * V;
    T *drow = dlogits + (size_t)r * V;
    const int tg = targets ? targets[r] : -1;
    if (obs_untargeted(r, tg, V, drow, backward, row_loss, row_ce, row_kl, row_correct)) return;
    const float it = 1.f / tau;
    const obs_norm_t s = obs_normalise(row, V, trow, V, it, sm);
    /* KL(pt || qs) = sum pt (log pt - log qs), with the max shifts inside */
    float kl = 0.f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float lpt = (trow[v] - s.mt) * it - s.lset, lps = (row[v] - s.ms) * it - s.lses;
        kl += expf(lpt) * (lpt - lps);
    }
    obs_write_row(r, row, tg, kl, s, alpha, tau, sm, row_loss, row_ce, row_kl, row_correct);
    if (!backward) return;
    const float i1 = 1.f / s.se1, is = 1.f / s.ses, ist = 1.f / s.set, bcoef = (1.f - alpha) * tau;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float pt = expf((trow[v] - s.mt) * it) * ist;
        drow[v] = from_f<T>(obs_dlogit(row[v], v == tg, s, it, i1, is, alpha, bcoef, pt));
    }
}

template <typename T>
__global__ void __launch_bounds__(OBS_THREADS)
    observer_topk_kernel(int V, int K, float *logits, const float *__restrict__ tk_val,
                         const int32_t *__restrict__ tk_id, T *dlogits, const int32_t *__restrict__ targets,
                         float alpha, float tau, float *__restrict__ row_loss, float *__restrict__ row_ce,
                         float *__restrict__ row_kl, int32_t *__restrict__ row_correct, int backward)
{
    __shared__ obs_shared_t sm;
    const int r = blockIdx.x;
    float *row = logits + (size_t)r * V;
    const float *tv = tk_val + (size_t)r * K;
    const int32_t *ti = tk_id + (size_t)r * K;
    T *drow = dlogits + (size_t)r * V;
    const int tg = targets ? targets[r] : -1;
    if (obs_untargeted(r, tg, V, drow, backward, row_loss, row_ce, row_kl, row_correct)) return;
    const float it = 1.f / tau;
    const obs_norm_t s = obs_normalise(row, V, tv, K, it, sm);
    float kl = 0.f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        const int id = ti[i];
        if (id < 0 || id >= V) continue;
        const float lpt = (tv[i] - s.mt) * it - s.lset, lps = (row[id] - s.ms) * it - s.lses;
        kl += expf(lpt) * (lpt - lps);
    }
    obs_write_row(r, row, tg, kl, s, alpha, tau, sm, row_loss, row_ce, row_kl, row_correct);
    if (!backward) return;
    const float i1 = 1.f / s.se1, is = 1.f / s.ses, bcoef = (1.f - alpha) * tau;
    for (int v = threadIdx.x; v < V; v += blockDim.x)
        row[v] = obs_dlogit(row[v], v == tg, s, it, i1, is, alpha, bcoef, 0.f);
    __syncthreads();
    const float ist = 1.f / s.set;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        const int id = ti[i];
        if (id >= 0 && id < V) atomicAdd(&row[id], -bcoef * expf((tv[i] - s.mt) * it) * ist);
    }
    if ((const void *)drow == (const void *)row) return;
    __syncthreads();
    for (int v = threadIdx.x; v < V; v += blockDim.x) drow[v] = from_f<T>(row[v]);
}

} // namespace st

#endif
