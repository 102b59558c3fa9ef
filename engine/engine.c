/*
 * engine.c - the backend dispatch of engine.h: an engine_t holds exactly one
 * backend (CPU in engine_cpu.c, CUDA in engine/cuda/ behind engine_cuda.h)
 * and forwards every call to it. Builds without nvcc link the CUDA stub, so
 * there is no #ifdef here: asking for CUDA there gives its one-sentence error.
 * Batch arguments are validated here once, for both backends, because tokens
 * and targets come from user data.
 *
 * The resident tuning parameters (engine_params_*, engine.h) live here for
 * the CPU backend (host_params_t: plain arrays, engine/adam.c and
 * engine/dbp_param.c) and in engine/cuda/engine_cuda_params.cu for CUDA
 * (device memory). Both compute the same formulas in the same order:
 * grad / div rounded to fp32, dL/dA, the clip, Adam in double, DBP's R rule
 * in double; so a CPU run through these calls is bit-identical to the loop
 * that used those functions on host arrays directly (tests/test_params.c
 * checks it).
 */
#include "engine/engine.h"

#include "common/st_err.h"
#include "engine/adam.h"
#include "engine/dbp_param.h"
#include "engine/engine_cpu.h"
#include "engine/engine_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The CPU backend's resident parameters (see the file comment). */
typedef struct {
    size_t n;        /* L H N N */
    int nblk, N;     /* L H blocks of N x N */
    int dbp;         /* S0 = A R; else S0 = A and R is not stored */
    int s0_stale;    /* A or R changed since S0 was last formed */
    float *A;        /* (n) trained by Adam */
    float *R;        /* (n) DBP's factor, NULL without DBP */
    float *S0;       /* (n) A R, formed on demand */
    float *grad;     /* (n) d(loss)/dS0, accumulated by engine_params_run */
    float *gA;       /* (n) dL/dA of the last step (clipped) */
    double *Q;       /* (n) DBP's summed x x^T of the step, NULL without DBP */
    double *scratch; /* (3 N N) dbp_update_R's scratch, NULL without DBP */
    adam_t *adam;    /* moments and step count */
} host_params_t;

struct engine {
    engine_backend_t backend;
    const rwkv_model_t *model;
    int max_batch, max_ctx;
    engine_cpu_t *cpu;
    engine_cuda_t *cuda;
    const engine_kstate_t *kstate; /* default kernel-expanded state (engine_set_kstate), borrowed */
    host_params_t *hp;             /* resident parameters, CPU backend (engine_params_init) */
    engine_cuda_params_t *cp;      /* resident parameters, CUDA backend */
};

static void s_host_params_free(host_params_t **p)
{
    if (!*p) return;
    free((*p)->A);
    free((*p)->R);
    free((*p)->S0);
    free((*p)->grad);
    free((*p)->gA);
    free((*p)->Q);
    free((*p)->scratch);
    adam_destroy(&(*p)->adam);
    free(*p);
    *p = NULL;
}

engine_t *engine_new(const rwkv_model_t *model, const engine_opts_t *opts, char *err)
{
    if (!model || !opts) {
        st_fail(err, ST_EINVAL, "engine_new needs a model and options");
        return NULL;
    }
    if (opts->max_batch < 1 || opts->max_ctx < 1) {
        st_fail(err, ST_EINVAL, "the engine needs max_batch >= 1 and max_ctx >= 1 (got %d and %d)",
                opts->max_batch, opts->max_ctx);
        return NULL;
    }
    engine_t *self = calloc(1, sizeof *self);
    if (!self) {
        st_fail(err, ST_ENOMEM, "out of memory creating the engine");
        return NULL;
    }
    self->backend = opts->backend;
    self->model = model;
    self->max_batch = opts->max_batch;
    self->max_ctx = opts->max_ctx;
    if (opts->backend == ENGINE_CPU) {
        self->cpu = engine_cpu_new(model, opts, err);
        if (!self->cpu) goto fail;
    } else if (opts->backend == ENGINE_CUDA) {
        self->cuda = engine_cuda_new(model, opts, err);
        if (!self->cuda) goto fail;
    } else {
        st_fail(err, ST_EINVAL, "unknown engine backend %d", (int)opts->backend);
        goto fail;
    }
    return self;
fail:
    free(self);
    return NULL;
}

void engine_destroy(engine_t **self_p)
{
    if (!self_p || !*self_p) return;
    engine_t *self = *self_p;
    s_host_params_free(&self->hp);
    engine_cuda_params_destroy(&self->cp);
    engine_cpu_destroy(&self->cpu);
    engine_cuda_destroy(&self->cuda);
    free(self);
    *self_p = NULL;
}

/* What both engine_run and engine_params_run check: shape, ids, methods. */
static int s_check_batch(engine_t *self, engine_batch_t *batch, char *err)
{
    const rwkv_config_t *c = &self->model->cfg;
    if (batch->B < 1 || batch->T < 1 || batch->B > self->max_batch || batch->T > self->max_ctx)
        return st_fail(err, ST_EINVAL,
                       "a batch of %d x %d does not fit the engine's plan of %d x %d sequences x tokens",
                       batch->B, batch->T, self->max_batch, self->max_ctx);
    if (!batch->tokens) return st_fail(err, ST_EINVAL, "engine_run needs tokens");
    size_t n = (size_t)batch->B * batch->T;
    for (size_t i = 0; i < n; i++) {
        if (batch->tokens[i] < 0 || batch->tokens[i] >= c->vocab)
            return st_fail(err, ST_EINVAL, "token id %d at position %zu is outside the vocabulary of %d",
                           (int)batch->tokens[i], i, c->vocab);
        if (batch->targets && (batch->targets[i] < -1 || batch->targets[i] >= c->vocab))
            return st_fail(err, ST_EINVAL, "target id %d at position %zu is outside the vocabulary of %d",
                           (int)batch->targets[i], i, c->vocab);
    }
    /* the optional methods of SPEC section 4 (observer, kernel-expanded state) */
    const engine_kstate_t *ks_saved = batch->kstate;
    if (!batch->kstate) batch->kstate = self->kstate;
    int obs = (batch->teacher_logits != NULL || batch->teacher_topk != NULL || batch->teacher != NULL) &&
              batch->obs_alpha < 1.0f;
    if (obs && batch->teacher && (!self->cuda || !batch->teacher->cuda || batch->teacher == self)) {
        batch->kstate = ks_saved;
        return st_fail(err, ST_EUNSUPPORTED, "a teacher engine on the device is a CUDA path for another engine (the "
                       "CPU backend takes teacher_logits)");
    }
    if (obs && batch->teacher_topk) { /* top-k teacher (engine/teacher_cache.h), both backends: ids checked */
        batch->kstate = ks_saved; /* restored below when the checks pass */
        if (!batch->teacher_topk_ids || batch->teacher_k < 1 || batch->teacher_k > c->vocab)
            return st_fail(err, ST_EINVAL, "top-k teacher logits need ids and 1 <= k <= %d (got k = %d)", c->vocab,
                           batch->teacher_k);
        for (size_t i = 0; batch->targets && i < n; i++) {
            if (batch->targets[i] < 0) continue;
            const int32_t *id = batch->teacher_topk_ids + i * (size_t)batch->teacher_k;
            for (int j = 0; j < batch->teacher_k; j++)
                if (id[j] < 0 || id[j] >= c->vocab)
                    return st_fail(err, ST_EINVAL, "top-k teacher id %d at position %zu is outside the vocabulary "
                                   "of %d", (int)id[j], i, c->vocab);
        }
        if (!batch->kstate) batch->kstate = self->kstate;
    }
    if (obs && !(batch->obs_alpha >= 0.0f && batch->obs_temperature > 0.0f))
        return st_fail(err, ST_EINVAL, "the observer needs alpha in [0, 1] and a positive temperature (got %g and %g)",
                       (double)batch->obs_alpha, (double)batch->obs_temperature);
    if (batch->kstate && (batch->kstate->M < 1 || batch->kstate->M > 1024 || !(batch->kstate->gamma > 0) ||
                          !batch->kstate->U0 || !batch->kstate->support)) {
        batch->kstate = ks_saved;
        return st_fail(err, ST_EINVAL, "a kernel-expanded state needs 1 to 1024 features, gamma > 0, U0 and support vectors");
    }
    batch->kstate = ks_saved;
    return ST_OK;
}

int engine_run(engine_t *self, engine_batch_t *batch, char *err)
{
    if (!batch->state0) return st_fail(err, ST_EINVAL, "engine_run needs state0");
    int rc = s_check_batch(self, batch, err);
    if (rc) return rc;
    const engine_kstate_t *ks_saved = batch->kstate;
    if (!batch->kstate) batch->kstate = self->kstate;
    batch->loss_sum = 0;
    batch->n_targets = 0;
    batch->n_correct = 0;
    batch->ce_sum = 0;
    batch->kl_sum = 0;
    if (self->cpu) {
        rc = engine_cpu_run(self->cpu, batch, err);
        batch->kstate = ks_saved;
        return rc;
    }
    rc = engine_cuda_run(self->cuda, batch, err);
    batch->kstate = ks_saved;
    return rc;
}

int engine_teacher_forward(engine_t *self, const int32_t *tokens, int B, int T, const float *state0, char *err)
{
    if (!self->cuda)
        return st_fail(err, ST_EUNSUPPORTED, "the teacher's forward on the device needs the CUDA backend");
    if (B < 1 || T < 1 || B > self->max_batch || T > self->max_ctx)
        return st_fail(err, ST_EINVAL, "a batch of %d x %d does not fit the teacher engine's plan of %d x %d", B, T,
                       self->max_batch, self->max_ctx);
    if (!tokens || !state0) return st_fail(err, ST_EINVAL, "engine_teacher_forward needs tokens and state0");
    for (size_t i = 0; i < (size_t)B * T; i++) /* user data */
        if (tokens[i] < 0 || tokens[i] >= self->model->cfg.vocab)
            return st_fail(err, ST_EINVAL, "token id %d at position %zu is outside the teacher's vocabulary of %d",
                           (int)tokens[i], i, self->model->cfg.vocab);
    return engine_cuda_teacher_forward(self->cuda, tokens, B, T, state0, err);
}

engine_cuda_t *engine_cuda_of(const engine_t *engine) { return engine ? engine->cuda : NULL; }

void engine_set_kstate(engine_t *self, const engine_kstate_t *ks) { self->kstate = ks; }
const engine_kstate_t *engine_kstate(const engine_t *self) { return self->kstate; }

size_t engine_peak_mem_bytes(const engine_t *self)
{
    if (self->cpu) return engine_cpu_peak_mem_bytes(self->cpu);
    return engine_cuda_peak_mem_bytes(self->cuda);
}

const rwkv_config_t *engine_config(const engine_t *self) { return &self->model->cfg; }

/* ---- resident tuning parameters ------------------------------------------ */

int engine_params_init(engine_t *self, int dbp, double beta1, double beta2, double eps, char *err)
{
    if (self->hp || self->cp) return st_fail(err, ST_EINVAL, "the engine's tuning parameters exist already");
    const rwkv_config_t *c = &self->model->cfg;
    int nblk = c->n_layer * c->n_head, N = c->head_size;
    if (self->cuda) {
        self->cp = engine_cuda_params_new(self->cuda, nblk, N, dbp, beta1, beta2, eps, err);
        return self->cp ? ST_OK : ST_ECUDA;
    }
    host_params_t *p = calloc(1, sizeof *p);
    if (!p) return st_fail(err, ST_ENOMEM, "out of memory for the tuning parameters");
    p->nblk = nblk;
    p->N = N;
    p->n = (size_t)nblk * N * N;
    p->dbp = dbp != 0;
    p->s0_stale = 1;
    p->adam = adam_new(p->n, beta1, beta2, eps, err);
    if (!p->adam) {
        s_host_params_free(&p);
        return ST_EINVAL;
    }
    p->A = calloc(p->n, sizeof(float));
    p->S0 = calloc(p->n, sizeof(float));
    p->grad = calloc(p->n, sizeof(float));
    p->gA = calloc(p->n, sizeof(float));
    if (p->dbp) {
        p->R = calloc(p->n, sizeof(float));
        p->Q = calloc(p->n, sizeof(double));
        p->scratch = calloc(3 * (size_t)N * N, sizeof(double));
    }
    if (!p->A || !p->S0 || !p->grad || !p->gA || (p->dbp && (!p->R || !p->Q || !p->scratch))) {
        s_host_params_free(&p);
        return st_fail(err, ST_ENOMEM, "out of memory for the tuning parameters");
    }
    if (p->R) dbp_identity(p->nblk, p->N, p->R);
    self->hp = p;
    return ST_OK;
}

/* The CPU parameters, or the sentence saying engine_params_init is missing. */
static int s_params(engine_t *self, char *err)
{
    if (!self->hp && !self->cp) return st_fail(err, ST_EINVAL, "engine_params_init was not called");
    return ST_OK;
}

static const float *s_host_state(host_params_t *p)
{
    if (p->s0_stale) {
        if (p->dbp) dbp_state(p->nblk, p->N, p->A, p->R, p->S0);
        else memcpy(p->S0, p->A, p->n * sizeof(float));
        p->s0_stale = 0;
    }
    return p->S0;
}

int engine_params_set(engine_t *self, const float *A, const float *R, char *err)
{
    int rc = s_params(self, err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_set(self->cp, A, R, err);
    host_params_t *p = self->hp;
    if (R && !p->dbp) return st_fail(err, ST_EINVAL, "DBP's R was given but the parameters were made without DBP");
    if (A) memcpy(p->A, A, p->n * sizeof(float));
    if (R) memcpy(p->R, R, p->n * sizeof(float));
    p->s0_stale = 1;
    return ST_OK;
}

int engine_params_set_R(engine_t *self, const float *R, char *err)
{
    if (!R) return st_fail(err, ST_EINVAL, "engine_params_set_R needs R");
    return engine_params_set(self, NULL, R, err);
}

int engine_params_get(engine_t *self, float *A, float *S0, char *err)
{
    int rc = s_params(self, err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_get(self->cp, A, S0, err);
    host_params_t *p = self->hp;
    if (A) memcpy(A, p->A, p->n * sizeof(float));
    if (S0) memcpy(S0, s_host_state(p), p->n * sizeof(float));
    return ST_OK;
}

int engine_params_set_adam(engine_t *self, const float *m, const float *v, int64_t t, char *err)
{
    int rc = s_params(self, err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_set_adam(self->cp, m, v, t, err);
    host_params_t *p = self->hp;
    memcpy(adam_m(p->adam), m, p->n * sizeof(float));
    memcpy(adam_v(p->adam), v, p->n * sizeof(float));
    adam_set_t_count(p->adam, t);
    return ST_OK;
}

int engine_params_get_adam(engine_t *self, float *m, float *v, int64_t *t, char *err)
{
    int rc = s_params(self, err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_get_adam(self->cp, m, v, t, err);
    host_params_t *p = self->hp;
    if (m) memcpy(m, adam_m(p->adam), p->n * sizeof(float));
    if (v) memcpy(v, adam_v(p->adam), p->n * sizeof(float));
    if (t) *t = adam_t_count(p->adam);
    return ST_OK;
}

int engine_params_zero_grad(engine_t *self, char *err)
{
    int rc = s_params(self, err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_zero_grad(self->cp, err);
    memset(self->hp->grad, 0, self->hp->n * sizeof(float));
    if (self->hp->Q) memset(self->hp->Q, 0, self->hp->n * sizeof(double));
    return ST_OK;
}

int engine_params_get_grad(engine_t *self, float *grad, char *err)
{
    int rc = s_params(self, err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_get_grad(self->cp, grad, err);
    memcpy(grad, self->hp->grad, self->hp->n * sizeof(float));
    return ST_OK;
}

int engine_params_set_grad(engine_t *self, const float *grad, char *err)
{
    int rc = s_params(self, err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_set_grad(self->cp, grad, err);
    memcpy(self->hp->grad, grad, self->hp->n * sizeof(float));
    return ST_OK;
}

float *engine_params_grad(engine_t *self)
{
    if (self->cp) return engine_cuda_params_grad(self->cp);
    return self->hp ? self->hp->grad : NULL;
}

int engine_params_grad_on_device(const engine_t *self) { return self->cp != NULL; }

int engine_params_run(engine_t *self, engine_batch_t *batch, char *err)
{
    int rc = s_params(self, err);
    if (rc) return rc;
    if (batch->state0 || batch->dstate0)
        return st_fail(err, ST_EINVAL, "engine_params_run uses the resident state and gradient: the batch must not "
                       "name state0 or dstate0");
    if (self->cp) {
        rc = s_check_batch(self, batch, err);
        if (rc) return rc;
        batch->loss_sum = 0;
        batch->n_targets = 0;
        batch->n_correct = 0;
        batch->ce_sum = 0;
        batch->kl_sum = 0;
        const engine_kstate_t *ks_saved = batch->kstate; /* the default kernel-expanded state, as engine_run */
        if (!batch->kstate) batch->kstate = self->kstate;
        rc = engine_cuda_params_run(self->cp, batch, err);
        batch->kstate = ks_saved;
        return rc;
    }
    host_params_t *p = self->hp;
    int own_q = p->Q && batch->dbp_rows && !batch->dbp_q; /* the resident Q gets the sampled rows */
    batch->state0 = s_host_state(p);
    batch->dstate0 = batch->targets ? p->grad : NULL;
    if (own_q) batch->dbp_q = p->Q;
    rc = engine_run(self, batch, err);
    batch->state0 = NULL;
    batch->dstate0 = NULL;
    if (own_q) batch->dbp_q = NULL;
    return rc;
}

int engine_params_step(engine_t *self, double grad_div, double max_norm, double lr, engine_step_info_t *info,
                       char *err)
{
    int rc = s_params(self, err);
    if (rc) return rc;
    if (!(grad_div > 0) || !isfinite(grad_div))
        return st_fail(err, ST_EINVAL, "the gradient divisor must be a positive number, got %g", grad_div);
    if (self->cp) return engine_cuda_params_step(self->cp, grad_div, max_norm, lr, info, err);
    host_params_t *p = self->hp;
    for (size_t i = 0; i < p->n; i++) p->grad[i] = (float)(p->grad[i] / grad_div);
    if (p->dbp) dbp_grad_A(p->nblk, p->N, p->grad, p->R, p->gA);
    else memcpy(p->gA, p->grad, p->n * sizeof(float));
    info->grad_norm = adam_clip_grad_norm(p->gA, p->n, max_norm);
    info->finite = 1;
    if (!isfinite(info->grad_norm)) return ST_OK;
    adam_step(p->adam, p->A, p->gA, lr);
    p->s0_stale = 1;
    for (size_t i = 0; i < p->n; i++)
        if (!isfinite(p->A[i])) {
            info->finite = 0;
            break;
        }
    return ST_OK;
}

int engine_params_state_absmax(engine_t *self, double *absmax, size_t *at, char *err)
{
    int rc = s_params(self, err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_state_absmax(self->cp, absmax, at, err);
    host_params_t *p = self->hp;
    const float *S0 = s_host_state(p);
    /* the first non-finite element, else the first of the largest */
    float big = 0;
    size_t worst = 0;
    for (size_t i = 0; i < p->n; i++) {
        float a = fabsf(S0[i]);
        if (!(a <= big)) {
            big = a;
            worst = i;
            if (!isfinite(a)) break;
        }
    }
    *absmax = big;
    *at = worst;
    return ST_OK;
}

double *engine_params_q(engine_t *self)
{
    if (self->cp) return engine_cuda_params_q(self->cp);
    return self->hp ? self->hp->Q : NULL;
}

/* The CPU parameters with DBP, or the sentence saying why not. */
static int s_params_dbp(engine_t *self, const char *what, char *err)
{
    int rc = s_params(self, err);
    if (rc) return rc;
    if (self->hp && !self->hp->dbp)
        return st_fail(err, ST_EINVAL, "DBP's %s was asked for but the parameters were made without DBP", what);
    return ST_OK;
}

int engine_params_get_q(engine_t *self, double *Q, char *err)
{
    int rc = s_params_dbp(self, "Q", err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_get_q(self->cp, Q, err);
    memcpy(Q, self->hp->Q, self->hp->n * sizeof(double));
    return ST_OK;
}

int engine_params_set_q(engine_t *self, const double *Q, char *err)
{
    int rc = s_params_dbp(self, "Q", err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_set_q(self->cp, Q, err);
    memcpy(self->hp->Q, Q, self->hp->n * sizeof(double));
    return ST_OK;
}

int engine_params_get_R(engine_t *self, float *R, char *err)
{
    int rc = s_params_dbp(self, "R", err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_get_R(self->cp, R, err);
    memcpy(R, self->hp->R, self->hp->n * sizeof(float));
    return ST_OK;
}

int engine_params_update_R(engine_t *self, double n_pairs, double eta, double kappa, int *finite, char *err)
{
    int rc = s_params_dbp(self, "R rule", err);
    if (rc) return rc;
    if (self->cp) return engine_cuda_params_update_R(self->cp, n_pairs, eta, kappa, finite, err);
    host_params_t *p = self->hp;
    if (n_pairs > 0) {
        dbp_update_R(p->nblk, p->N, p->R, p->Q, n_pairs, eta, kappa, p->scratch);
        p->s0_stale = 1;
    }
    *finite = 1;
    for (size_t i = 0; i < p->n; i++)
        if (!isfinite(p->R[i])) {
            *finite = 0;
            break;
        }
    return ST_OK;
}
