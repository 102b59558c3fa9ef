/*
 * engine.c - the backend dispatch of engine.h: an engine_t holds exactly one
 * backend (CPU in engine_cpu.c, CUDA in engine/cuda/ behind engine_cuda.h)
 * and forwards every call to it. Builds without nvcc link the CUDA stub, so
 * there is no #ifdef here: asking for CUDA there gives its one-sentence error.
 * Batch arguments are validated here once, for both backends, because tokens
 * and targets come from user data.
 */
#include "engine/engine.h"

#include "common/st_err.h"
#include "engine/engine_cpu.h"
#include "engine/engine_cuda.h"

#include <stdlib.h>

struct engine {
    engine_backend_t backend;
    const rwkv_model_t *model;
    int max_batch, max_ctx;
    engine_cpu_t *cpu;
    engine_cuda_t *cuda;
    const engine_kstate_t *kstate; /* default kernel-expanded state (engine_set_kstate), borrowed */
};

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
    engine_cpu_destroy(&self->cpu);
    engine_cuda_destroy(&self->cuda);
    free(self);
    *self_p = NULL;
}

int engine_run(engine_t *self, engine_batch_t *batch, char *err)
{
    const rwkv_config_t *c = &self->model->cfg;
    if (batch->B < 1 || batch->T < 1 || batch->B > self->max_batch || batch->T > self->max_ctx)
        return st_fail(err, ST_EINVAL,
                       "a batch of %d x %d does not fit the engine's plan of %d x %d sequences x tokens",
                       batch->B, batch->T, self->max_batch, self->max_ctx);
    if (!batch->tokens || !batch->state0)
        return st_fail(err, ST_EINVAL, "engine_run needs tokens and state0");
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
    int obs = (batch->teacher_logits != NULL || batch->teacher_topk != NULL) && batch->obs_alpha < 1.0f;
    if (obs && batch->teacher_topk) { /* top-k teacher (engine/teacher_cache.h): CPU only, ids checked */
        batch->kstate = ks_saved; /* restored below when the checks pass */
        if (self->cuda)
            return st_fail(err, ST_EUNSUPPORTED, "the CUDA backend does not implement the observer with top-k "
                           "teacher logits (use --backend cpu, or observer.top_k 0 for the teacher on the fly)");
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
    batch->loss_sum = 0;
    batch->n_targets = 0;
    batch->n_correct = 0;
    batch->ce_sum = 0;
    batch->kl_sum = 0;
    if (self->cpu) {
        int rc = engine_cpu_run(self->cpu, batch, err);
        batch->kstate = ks_saved;
        return rc;
    }
    int rc = engine_cuda_run(self->cuda, batch, err);
    batch->kstate = ks_saved;
    return rc;
}

void engine_set_kstate(engine_t *self, const engine_kstate_t *ks) { self->kstate = ks; }
const engine_kstate_t *engine_kstate(const engine_t *self) { return self->kstate; }

size_t engine_peak_mem_bytes(const engine_t *self)
{
    if (self->cpu) return engine_cpu_peak_mem_bytes(self->cpu);
    return engine_cuda_peak_mem_bytes(self->cuda);
}

const rwkv_config_t *engine_config(const engine_t *self) { return &self->model->cfg; }
