/*
 * observer.c - the teacher of the observer objective (see observer.h): its
 * model, its fixed state, an engine and a logits buffer, run forward only.
 * The host logits buffer, (B, T, V) floats (2 GB at 8 x 1024 x 65536), is
 * made on the first observer_logits call only: the CUDA path
 * (observer_forward_device) never needs it.
 */
#include "engine/observer.h"

#include "common/st_err.h"
#include "model/model.h"
#include "store/state_formats.h"

#include <stdlib.h>
#include <string.h>

struct observer {
    rwkv_model_t *model;
    engine_t *engine;
    float *state;  /* (L, H, N, N) the teacher's fixed state */
    float *logits; /* (max_batch, max_ctx, V), allocated by the first observer_logits */
    size_t n_logits; /* its floats */
};

observer_t *observer_new(const char *model_path, const char *state_path, const engine_opts_t *opts,
                         int student_vocab, char *err)
{
    observer_t *self = calloc(1, sizeof *self);
    if (!self) {
        st_fail(err, ST_ENOMEM, "out of memory for the observer's teacher");
        return NULL;
    }
    self->model = rwkv_model_load(model_path, err);
    if (!self->model) {
        st_wrap(err, ST_EFORMAT, "observer.teacher: ");
        goto fail;
    }
    const rwkv_config_t *c = &self->model->cfg;
    if (c->vocab != student_vocab) {
        st_fail(err, ST_EINVAL, "observer.teacher '%s' has vocab %d but the student has %d", model_path, c->vocab,
                student_vocab);
        goto fail;
    }
    size_t nS = (size_t)c->n_layer * rwkv_state_layer_size(c);
    self->state = calloc(nS, sizeof(float));
    self->n_logits = (size_t)opts->max_batch * opts->max_ctx * c->vocab;
    if (!self->state) {
        st_fail(err, ST_ENOMEM, "out of memory for the teacher's state");
        goto fail;
    }
    if (state_path) {
        state_file_t sf = {0};
        if (state_read(state_path, STATE_FMT_AUTO, &sf, err) != ST_OK) {
            st_wrap(err, ST_EFORMAT, "observer.teacher_state: ");
            goto fail;
        }
        int ok = sf.n_layer == c->n_layer && sf.n_head == c->n_head && sf.head_size == c->head_size;
        if (ok) memcpy(self->state, sf.data, nS * sizeof(float));
        else
            st_fail(err, ST_EINVAL, "observer.teacher_state '%s' is a %d x %d x %d state but the teacher needs %d x %d x %d",
                    state_path, sf.n_layer, sf.n_head, sf.head_size, c->n_layer, c->n_head, c->head_size);
        state_file_free(&sf);
        if (!ok) goto fail;
    }
    self->engine = engine_new(self->model, opts, err);
    if (!self->engine) goto fail;
    return self;
fail:
    observer_destroy(&self);
    return NULL;
}

void observer_destroy(observer_t **self_p)
{
    if (!self_p || !*self_p) return;
    observer_t *self = *self_p;
    engine_destroy(&self->engine);
    rwkv_model_destroy(&self->model);
    free(self->state);
    free(self->logits);
    free(self);
    *self_p = NULL;
}

int observer_logits(observer_t *self, const int32_t *tokens, int B, int T, const float **logits, char *err)
{
    if (!self->logits) { /* first use: only the host-logits paths get here */
        self->logits = malloc(self->n_logits * sizeof(float));
        if (!self->logits)
            return st_fail(err, ST_ENOMEM, "out of memory for the teacher's logits (%.2f GB)",
                           self->n_logits * sizeof(float) / 1e9);
    }
    engine_batch_t b = {.tokens = tokens, .B = B, .T = T, .state0 = self->state, .logits = self->logits};
    int rc = engine_run(self->engine, &b, err);
    if (rc) return st_wrap(err, rc, "the observer's teacher: ");
    *logits = self->logits;
    return ST_OK;
}

int observer_forward_device(observer_t *self, const int32_t *tokens, int B, int T, const engine_t **teacher,
                            char *err)
{
    int rc = engine_teacher_forward(self->engine, tokens, B, T, self->state, err);
    if (rc) return st_wrap(err, rc, "the observer's teacher: ");
    *teacher = self->engine;
    return ST_OK;
}

int observer_vocab(const observer_t *self) { return self->model->cfg.vocab; }
