/*
 * engine_cuda_params.cu - the resident tuning parameters of the CUDA backend
 * (engine.h's engine_params_*, engine_cuda.h): A, DBP's R, S0 = A R, the
 * gradient dS0, dL/dA and Adam's moments live on the engine's device, so a
 * tuning step moves nothing of the state over PCIe: the engine reads S0 and
 * accumulates dS0 in place (engine_cuda_run_resident), the group sums dS0 in
 * place with NCCL (worker/dist.h), and the step below runs on the device.
 *
 * Why: with host buffers every step uploaded S0, downloaded dS0, staged it
 * again for NCCL and ran clipping and Adam single-threaded on the host: 6,
 * 17 and 36 ms per step at 12 x 768, 24 x 1024 and 24 x 2048
 * (docs/performance.md section 2.1), against about 0.1 ms of device work.
 *
 * Layout: one cudaMalloc carved into A, S0, grad, m, v (n floats each), R
 * and gA (n each, DBP only), the reduction partials and a few result slots;
 * small results come back through one pinned struct. Everything runs on the
 * engine's stream, so it is ordered with the engine's kernels; each call
 * returns with its work complete (a synchronisation of that stream), which
 * is what lets the caller hand the gradient buffer to NCCL's stream.
 *
 * The step (kernels/cuda/adam.cuh has the formulas): grad /= div; under DBP
 * gA = grad R^T, one strided-batched cuBLAS sgemm over the L H blocks (fp32,
 * no TF32); the global norm (deterministic double tree); Adam with the
 * clipping scale applied inside the kernel. The bias corrections
 * 1 - beta^t are computed here in double with pow, as engine/adam.c does.
 * S0 = A R is formed lazily (one batched sgemm, or a copy of A without
 * DBP) when a run, a read or the divergence check needs it after A or R
 * changed.
 *
 * DBP (SPEC section 4; engine/dbp_param.h): Q (n doubles) lives here too.
 * A run with sampled rows hands it to the engine, whose Q kernel adds the
 * rows' x x^T to it in place (engine_cuda_run_resident_q); zero_grad clears
 * it; the group sums it in place with NCCL beside dS0 (worker/dist.h); and
 * the R rule runs here (engine_cuda_params_update_R): three strided-batched
 * DGEMMs over the L H blocks and the element-wise kernels of
 * kernels/cuda/dbp.cuh, in double like the host rule, so R never crosses
 * PCIe during tuning. Before, a sampled step downloaded Q (25 MB at 24 x
 * 2048) per micro-batch, staged it through the host all-reduce buffer, ran
 * the rule on the host (112 ms on one core at 24 x 2048) and uploaded R.
 * Why double and not fp32: E's off-diagonal entries, which drive the rule,
 * are small differences of large sums; on the H100 the 768 blocks' DGEMMs
 * at 24 x 2048 are a fraction of a millisecond anyway.
 */
extern "C" {
#include "engine/engine_cuda.h"
#include "engine/adam.h"
#include "common/st_err.h"
#include "engine/dbp_param.h"
}
#include "kernels/cuda/adam.cuh"
#include "kernels/cuda/dbp.cuh"
#include "kernels/cuda/st_cuda.h"

#include <cublas_v2.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

namespace {
const uint32_t PARAMS_TAG = 0x50415241u; /* "PARA" */

/* What one synchronisation brings back (pinned). */
struct params_out_t {
    double norm;         /* the last step's gradient norm */
    int bad;             /* the last step left a non-finite element in A */
    st::absmax_t amax;   /* the last divergence check */
    int rbad;            /* the last R rule left a non-finite element in R */
};
} // namespace

struct engine_cuda_params {
    uint32_t tag;
    engine_cuda_t *eng;     /* borrowed: the engine these parameters feed */
    int device;             /* its device */
    cudaStream_t stream;    /* its stream */
    cublasHandle_t blas;    /* our own handle, on that stream */
    int nblk, N, dbp;       /* L H blocks of N x N; S0 = A R */
    size_t n;               /* nblk N N */
    double beta1, beta2, eps;
    int64_t t;              /* Adam steps taken */
    int s0_stale;           /* A or R changed since S0 was formed */
    char *mem;              /* the one device allocation */
    float *A, *R, *S0, *grad, *gA, *m, *v; /* (n) each; R and gA NULL without DBP */
    double *Q;              /* (n) DBP's summed x x^T of the step (NULL without DBP) */
    double *Rd, *T1, *T2;   /* (n) each: the R rule's scratch in double (NULL without DBP) */
    double *partial;        /* (ADAM_RED_BLOCKS) norm partials */
    st::absmax_t *apartial; /* (ADAM_RED_BLOCKS) absmax partials */
    params_out_t *dout;     /* device result slots */
    params_out_t *hout;     /* pinned host copy */
};

static void *s_carve(char *base, size_t *off, size_t bytes)
{
    size_t o = (*off + 255) & ~(size_t)255;
    *off = o + bytes;
    return base ? base + o : NULL;
}

static void s_plan(engine_cuda_params_t *p, char *base, size_t *off)
{
    size_t fb = p->n * sizeof(float);
    p->A = (float *)s_carve(base, off, fb);
    p->S0 = (float *)s_carve(base, off, fb);
    p->grad = (float *)s_carve(base, off, fb);
    p->m = (float *)s_carve(base, off, fb);
    p->v = (float *)s_carve(base, off, fb);
    p->R = p->dbp ? (float *)s_carve(base, off, fb) : NULL;
    p->gA = p->dbp ? (float *)s_carve(base, off, fb) : NULL;
    size_t db = p->n * sizeof(double);
    p->Q = p->dbp ? (double *)s_carve(base, off, db) : NULL;
    p->Rd = p->dbp ? (double *)s_carve(base, off, db) : NULL;
    p->T1 = p->dbp ? (double *)s_carve(base, off, db) : NULL;
    p->T2 = p->dbp ? (double *)s_carve(base, off, db) : NULL;
    p->partial = (double *)s_carve(base, off, st::ADAM_RED_BLOCKS * sizeof(double));
    p->apartial = (st::absmax_t *)s_carve(base, off, st::ADAM_RED_BLOCKS * sizeof(st::absmax_t));
    p->dout = (params_out_t *)s_carve(base, off, sizeof(params_out_t));
}

static int s_sync(engine_cuda_params_t *p, char *err)
{
    ST_CUDA_CHECK(cudaStreamSynchronize(p->stream));
    return ST_OK;
}

static int s_use(engine_cuda_params_t *p, char *err)
{
    if (!p || p->tag != PARAMS_TAG)
        return st_fail(err, ST_EINVAL, "engine_cuda_params_* was given something that is not a parameter set");
    ST_CUDA_CHECK(cudaSetDevice(p->device));
    return ST_OK;
}

/* Copies n host floats to the device buffer dst on the stream and waits (the
 * host buffer is the caller's and pageable). */
static int s_up(engine_cuda_params_t *p, float *dst, const float *src, char *err)
{
    ST_CUDA_CHECK(cudaMemcpyAsync(dst, src, p->n * sizeof(float), cudaMemcpyHostToDevice, p->stream));
    return s_sync(p, err);
}

static int s_down(engine_cuda_params_t *p, float *dst, const float *src, char *err)
{
    ST_CUDA_CHECK(cudaMemcpyAsync(dst, src, p->n * sizeof(float), cudaMemcpyDeviceToHost, p->stream));
    return s_sync(p, err);
}

/* S0 = A R (row-major blocks; cuBLAS is column-major, where a row-major X is
 * X^T: (A R)^T = R^T A^T is the column-major product of R's and A's buffers). */
static int s_form_state(engine_cuda_params_t *p, char *err)
{
    if (!p->s0_stale) return ST_OK;
    if (p->dbp) {
        const float one = 1.f, zero = 0.f;
        const long long nn = (long long)p->N * p->N;
        ST_CUBLAS_CHECK(cublasSgemmStridedBatched(p->blas, CUBLAS_OP_N, CUBLAS_OP_N, p->N, p->N, p->N, &one, p->R,
                                                p->N, nn, p->A, p->N, nn, &zero, p->S0, p->N, nn, p->nblk));
    } else {
        ST_CUDA_CHECK(cudaMemcpyAsync(p->S0, p->A, p->n * sizeof(float), cudaMemcpyDeviceToDevice, p->stream));
    }
    p->s0_stale = 0;
    return ST_OK;
}

extern "C" void engine_cuda_params_destroy(engine_cuda_params_t **self_p)
{
    if (!self_p || !*self_p) return;
    engine_cuda_params_t *p = *self_p;
    cudaSetDevice(p->device);
    if (p->stream) cudaStreamSynchronize(p->stream);
    if (p->blas) cublasDestroy(p->blas);
    cudaFree(p->mem);
    cudaFreeHost(p->hout);
    p->tag = 0;
    free(p);
    *self_p = NULL;
}

static int s_init(engine_cuda_params_t *p, char *err)
{
    ST_CUDA_CHECK(cudaSetDevice(p->device));
    ST_CUBLAS_CHECK(cublasCreate(&p->blas));
    ST_CUBLAS_CHECK(cublasSetStream(p->blas, p->stream));
    /* fp32 products stay fp32 (no TF32): R is near the identity and A R must
     * be the state the CPU path forms */
    ST_CUBLAS_CHECK(cublasSetMathMode(p->blas, CUBLAS_DEFAULT_MATH));
    size_t bytes = 0;
    s_plan(p, NULL, &bytes);
    size_t freeb = 0, totalb = 0;
    ST_CUDA_CHECK(cudaMemGetInfo(&freeb, &totalb));
    if (bytes > freeb)
        return st_fail(err, ST_ENOMEM, "the tuning parameters need %.2f GB on the GPU but it has %.2f GB free",
                       bytes / 1e9, freeb / 1e9);
    ST_CUDA_CHECK(cudaMalloc((void **)&p->mem, bytes));
    ST_CUDA_CHECK(cudaMallocHost((void **)&p->hout, sizeof(params_out_t)));
    size_t off = 0;
    s_plan(p, p->mem, &off);
    ST_CUDA_CHECK(cudaMemsetAsync(p->mem, 0, bytes, p->stream));
    if (p->dbp) {
        float *I = (float *)malloc(p->n * sizeof(float));
        if (!I) return st_fail(err, ST_ENOMEM, "out of host memory for DBP's initial R");
        dbp_identity(p->nblk, p->N, I);
        int rc = s_up(p, p->R, I, err);
        free(I);
        if (rc) return rc;
    }
    return s_sync(p, err);
}

extern "C" engine_cuda_params_t *engine_cuda_params_new(engine_cuda_t *eng, int nblk, int N, int dbp,
                                                        double beta1, double beta2, double eps, char *err)
{
    if (adam_check_settings(beta1, beta2, eps, err) != ST_OK) return NULL;
    engine_cuda_params_t *p = (engine_cuda_params_t *)calloc(1, sizeof *p);
    if (!p) {
        st_fail(err, ST_ENOMEM, "out of memory for the tuning parameters");
        return NULL;
    }
    p->tag = PARAMS_TAG;
    p->eng = eng;
    p->device = engine_cuda_device(eng);
    p->stream = (cudaStream_t)engine_cuda_stream(eng);
    p->nblk = nblk;
    p->N = N;
    p->n = (size_t)nblk * N * N;
    p->dbp = dbp != 0;
    p->beta1 = beta1;
    p->beta2 = beta2;
    p->eps = eps;
    p->s0_stale = 1;
    if (s_init(p, err) != ST_OK) engine_cuda_params_destroy(&p);
    return p;
}

extern "C" int engine_cuda_params_set(engine_cuda_params_t *p, const float *A, const float *R, char *err)
{
    int rc = s_use(p, err);
    if (rc) return rc;
    if (R && !p->dbp) return st_fail(err, ST_EINVAL, "DBP's R was given but the parameters were made without DBP");
    if (A && (rc = s_up(p, p->A, A, err))) return rc;
    if (R && (rc = s_up(p, p->R, R, err))) return rc;
    p->s0_stale = 1;
    return ST_OK;
}

extern "C" int engine_cuda_params_get(engine_cuda_params_t *p, float *A, float *S0, char *err)
{
    int rc = s_use(p, err);
    if (rc) return rc;
    if (A && (rc = s_down(p, A, p->A, err))) return rc;
    if (S0) {
        if ((rc = s_form_state(p, err))) return rc;
        if ((rc = s_down(p, S0, p->S0, err))) return rc;
    }
    return ST_OK;
}

extern "C" int engine_cuda_params_set_adam(engine_cuda_params_t *p, const float *m, const float *v, int64_t t,
                                           char *err)
{
    int rc = s_use(p, err);
    if (rc) return rc;
    if ((rc = s_up(p, p->m, m, err)) || (rc = s_up(p, p->v, v, err))) return rc;
    p->t = t;
    return ST_OK;
}

extern "C" int engine_cuda_params_get_adam(engine_cuda_params_t *p, float *m, float *v, int64_t *t, char *err)
{
    int rc = s_use(p, err);
    if (rc) return rc;
    if (m && (rc = s_down(p, m, p->m, err))) return rc;
    if (v && (rc = s_down(p, v, p->v, err))) return rc;
    if (t) *t = p->t;
    return ST_OK;
}

extern "C" int engine_cuda_params_zero_grad(engine_cuda_params_t *p, char *err)
{
    int rc = s_use(p, err);
    if (rc) return rc;
    /* no wait: the engine's run is queued behind these on the same stream */
    ST_CUDA_CHECK(cudaMemsetAsync(p->grad, 0, p->n * sizeof(float), p->stream));
    if (p->Q) ST_CUDA_CHECK(cudaMemsetAsync(p->Q, 0, p->n * sizeof(double), p->stream));
    return ST_OK;
}

extern "C" double *engine_cuda_params_q(engine_cuda_params_t *p) { return p ? p->Q : NULL; }

extern "C" int engine_cuda_params_get_q(engine_cuda_params_t *p, double *Q, char *err)
{
    int rc = s_use(p, err);
    if (rc) return rc;
    if (!p->Q) return st_fail(err, ST_EINVAL, "DBP's Q was asked for but the parameters were made without DBP");
    ST_CUDA_CHECK(cudaMemcpyAsync(Q, p->Q, p->n * sizeof(double), cudaMemcpyDeviceToHost, p->stream));
    return s_sync(p, err);
}

extern "C" int engine_cuda_params_set_q(engine_cuda_params_t *p, const double *Q, char *err)
{
    int rc = s_use(p, err);
    if (rc) return rc;
    if (!p->Q) return st_fail(err, ST_EINVAL, "DBP's Q was given but the parameters were made without DBP");
    ST_CUDA_CHECK(cudaMemcpyAsync(p->Q, Q, p->n * sizeof(double), cudaMemcpyHostToDevice, p->stream));
    return s_sync(p, err);
}

extern "C" int engine_cuda_params_get_R(engine_cuda_params_t *p, float *R, char *err)
{
    int rc = s_use(p, err);
    if (rc) return rc;
    if (!p->R) return st_fail(err, ST_EINVAL, "DBP's R was asked for but the parameters were made without DBP");
    return s_down(p, R, p->R, err);
}

/* The R rule (dbp_param.c's s_update_block, every block at once; see the
 * file comment). Row-major blocks in column-major cuBLAS: a row-major X is
 * the column-major X^T, so the row-major X Y is the column-major product of
 * Y's buffer by X's, and X Y^T that of Y's buffer transposed by X's. */
extern "C" int engine_cuda_params_update_R(engine_cuda_params_t *p, double n_pairs, double eta, double kappa,
                                           int *finite, char *err)
{
    int rc = s_use(p, err);
    if (rc) return rc;
    if (!p->dbp) return st_fail(err, ST_EINVAL, "DBP's R rule was asked for but the parameters were made without DBP");
    const int TH = st::ADAM_THREADS;
    int eb = (int)((p->n + TH - 1) / TH);
    if (eb > 4 * st::ADAM_RED_BLOCKS) eb = 4 * st::ADAM_RED_BLOCKS;
    if (eb < 1) eb = 1;
    cudaStream_t s = p->stream;
    ST_CUDA_CHECK(cudaMemsetAsync(&p->dout->rbad, 0, sizeof(int), s));
    if (n_pairs > 0) {
        const int N = p->N;
        const long long nn = (long long)N * N;
        const double inv = 1.0 / n_pairs, one = 1.0, zero = 0.0;
        st::dbp_r_to_f64_kernel<float><<<eb, TH, 0, s>>>(p->n, p->R, p->Rd);
        ST_CUDA_CHECK_LAUNCH("dbp_r_to_f64_kernel");
        /* T1 = R Q / n (as the host: 1/n applied inside the product) */
        ST_CUBLAS_CHECK(cublasDgemmStridedBatched(p->blas, CUBLAS_OP_N, CUBLAS_OP_N, N, N, N, &inv, p->Q, N, nn, p->Rd,
                                                N, nn, &zero, p->T1, N, nn, p->nblk));
        /* T2 = E = T1 R^T */
        ST_CUBLAS_CHECK(cublasDgemmStridedBatched(p->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, N, N, &one, p->Rd, N, nn, p->T1,
                                                N, nn, &zero, p->T2, N, nn, p->nblk));
        st::dbp_rule_matrix_kernel<double><<<eb, TH, 0, s>>>(p->n, N, p->T2, kappa); /* E -> M */
        ST_CUDA_CHECK_LAUNCH("dbp_rule_matrix_kernel");
        /* T1 = M R */
        ST_CUBLAS_CHECK(cublasDgemmStridedBatched(p->blas, CUBLAS_OP_N, CUBLAS_OP_N, N, N, N, &one, p->Rd, N, nn, p->T2,
                                                N, nn, &zero, p->T1, N, nn, p->nblk));
        st::dbp_r_update_kernel<float><<<eb, TH, 0, s>>>(p->n, p->R, p->Rd, p->T1, eta, &p->dout->rbad);
        ST_CUDA_CHECK_LAUNCH("dbp_r_update_kernel");
        p->s0_stale = 1;
    } else {
        st::dbp_r_check_kernel<float><<<eb, TH, 0, s>>>(p->n, p->R, &p->dout->rbad);
        ST_CUDA_CHECK_LAUNCH("dbp_r_check_kernel");
    }
    ST_CUDA_CHECK(cudaMemcpyAsync(&p->hout->rbad, &p->dout->rbad, sizeof(int), cudaMemcpyDeviceToHost, s));
    if ((rc = s_sync(p, err))) return rc;
    *finite = p->hout->rbad == 0;
    return ST_OK;
}

extern "C" int engine_cuda_params_get_grad(engine_cuda_params_t *p, float *grad, char *err)
{
    int rc = s_use(p, err);
    return rc ? rc : s_down(p, grad, p->grad, err);
}

extern "C" int engine_cuda_params_set_grad(engine_cuda_params_t *p, const float *grad, char *err)
{
    int rc = s_use(p, err);
    return rc ? rc : s_up(p, p->grad, grad, err);
}

extern "C" float *engine_cuda_params_grad(engine_cuda_params_t *p) { return p ? p->grad : NULL; }

extern "C" int engine_cuda_params_run(engine_cuda_params_t *p, engine_batch_t *batch, char *err)
{
    int rc = s_use(p, err);
    if (!rc) rc = s_form_state(p, err);
    if (rc) return rc;
    /* sampled rows without a host Q: the engine adds them to the resident Q */
    double *q = p->Q && batch->dbp_rows && !batch->dbp_q ? p->Q : NULL;
    return engine_cuda_run_resident_q(p->eng, batch, p->S0, batch->targets ? p->grad : NULL, q, err);
}

extern "C" int engine_cuda_params_step(engine_cuda_params_t *p, double grad_div, double max_norm, double lr,
                                       engine_step_info_t *info, char *err)
{
    int rc = s_use(p, err);
    if (rc) return rc;
    const int TH = st::ADAM_THREADS, NB = st::ADAM_RED_BLOCKS;
    int eb = (int)((p->n + TH - 1) / TH); /* element-wise grid */
    if (eb > 4 * NB) eb = 4 * NB;
    if (eb < 1) eb = 1;
    cudaStream_t s = p->stream;
    st::grad_div_kernel<<<eb, TH, 0, s>>>(p->n, p->grad, grad_div);
    ST_CUDA_CHECK_LAUNCH("grad_div_kernel");
    const float *g = p->grad;
    if (p->dbp) { /* dA = dS0 R^T: (dS0 R^T)^T = R dS0^T, R's buffer transposed in column-major terms */
        const float one = 1.f, zero = 0.f;
        const long long nn = (long long)p->N * p->N;
        ST_CUBLAS_CHECK(cublasSgemmStridedBatched(p->blas, CUBLAS_OP_T, CUBLAS_OP_N, p->N, p->N, p->N, &one, p->R,
                                                p->N, nn, p->grad, p->N, nn, &zero, p->gA, p->N, nn, p->nblk));
        g = p->gA;
    }
    st::sumsq_partial_kernel<<<NB, TH, 0, s>>>(p->n, g, p->partial);
    ST_CUDA_CHECK_LAUNCH("sumsq_partial_kernel");
    st::sumsq_finish_kernel<<<1, TH, 0, s>>>(NB, p->partial, &p->dout->norm);
    ST_CUDA_CHECK_LAUNCH("sumsq_finish_kernel");
    ST_CUDA_CHECK(cudaMemsetAsync(&p->dout->bad, 0, sizeof(int), s));
    const int64_t t1 = p->t + 1;
    const double c1 = 1.0 - pow(p->beta1, (double)t1), c2 = 1.0 - pow(p->beta2, (double)t1);
    st::adam_kernel<<<eb, TH, 0, s>>>(p->n, p->A, p->m, p->v, g, &p->dout->norm, max_norm, lr, p->beta1, p->beta2,
                                      c1, c2, p->eps, &p->dout->bad);
    ST_CUDA_CHECK_LAUNCH("adam_kernel");
    ST_CUDA_CHECK(cudaMemcpyAsync(p->hout, p->dout, sizeof(params_out_t), cudaMemcpyDeviceToHost, s));
    if ((rc = s_sync(p, err))) return rc;
    info->grad_norm = p->hout->norm;
    info->finite = 1;
    if (!isfinite(info->grad_norm)) return ST_OK; /* the kernel left A and the moments alone */
    p->t = t1;
    p->s0_stale = 1;
    info->finite = p->hout->bad == 0;
    return ST_OK;
}

extern "C" int engine_cuda_params_state_absmax(engine_cuda_params_t *p, double *absmax, size_t *at, char *err)
{
    int rc = s_use(p, err);
    if (!rc) rc = s_form_state(p, err);
    if (rc) return rc;
    const int TH = st::ADAM_THREADS, NB = st::ADAM_RED_BLOCKS;
    st::absmax_partial_kernel<<<NB, TH, 0, p->stream>>>(p->n, p->S0, p->apartial);
    ST_CUDA_CHECK_LAUNCH("absmax_partial_kernel");
    st::absmax_finish_kernel<<<1, TH, 0, p->stream>>>(NB, p->apartial, &p->dout->amax);
    ST_CUDA_CHECK_LAUNCH("absmax_finish_kernel");
    ST_CUDA_CHECK(cudaMemcpyAsync(p->hout, p->dout, sizeof(params_out_t), cudaMemcpyDeviceToHost, p->stream));
    if ((rc = s_sync(p, err))) return rc;
    *absmax = p->hout->amax.val;
    *at = (size_t)p->hout->amax.idx;
    return ST_OK;
}
