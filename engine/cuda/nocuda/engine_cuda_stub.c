/*
 * engine_cuda_stub.c - the CUDA backend's entry points in a build without CUDA
 * (STATETUNE_CUDA=OFF or no nvcc). engine.c calls engine_cuda_* without any
 * #ifdef; here every call says, in one sentence, that the backend is missing.
 */
#include "engine/engine_cuda.h"

#include "common/st_err.h"

engine_cuda_t *engine_cuda_new(const rwkv_model_t *model, const engine_opts_t *opts, char *err)
{
    (void)model;
    (void)opts;
    st_fail(err, ST_EUNSUPPORTED, "this build of statetune has no CUDA backend (rebuild with nvcc and -DSTATETUNE_CUDA=ON)");
    return NULL;
}

void engine_cuda_destroy(engine_cuda_t **self_p)
{
    if (self_p) *self_p = NULL;
}

int engine_cuda_run(engine_cuda_t *self, engine_batch_t *batch, char *err)
{
    (void)self;
    (void)batch;
    return st_fail(err, ST_EUNSUPPORTED, "this build of statetune has no CUDA backend");
}

size_t engine_cuda_peak_mem_bytes(const engine_cuda_t *self)
{
    (void)self;
    return 0;
}

int engine_cuda_set_profiling(engine_cuda_t *self, int on, char *err)
{
    (void)self;
    (void)on;
    return st_fail(err, ST_EUNSUPPORTED, "this build of statetune has no CUDA backend");
}

void engine_cuda_last_profile(const engine_cuda_t *self, engine_cuda_profile_t *out)
{
    (void)self;
    if (out) *out = (engine_cuda_profile_t){0};
}

const char *engine_cuda_profile_class(int i)
{
    (void)i;
    return NULL;
}

void engine_cuda_set_graphs(engine_cuda_t *self, int on)
{
    (void)self;
    (void)on;
}

long engine_cuda_graph_replays(const engine_cuda_t *self)
{
    (void)self;
    return 0;
}

int engine_cuda_set_head_chunk(engine_cuda_t *self, int rows, char *err)
{
    (void)self;
    (void)rows;
    return st_fail(err, ST_EUNSUPPORTED, "this build of statetune has no CUDA backend");
}

int engine_cuda_head_chunk(const engine_cuda_t *self)
{
    (void)self;
    return 0;
}

engine_cuda_t *engine_cuda_new_mode(const rwkv_model_t *model, const engine_opts_t *opts, int recompute,
                                    char *err)
{
    (void)recompute;
    return engine_cuda_new(model, opts, err);
}

int engine_cuda_recomputes(const engine_cuda_t *self)
{
    (void)self;
    return 0;
}

int engine_cuda_teacher_forward(engine_cuda_t *self, const int32_t *tokens, int B, int T, const float *state0,
                                char *err)
{
    (void)self;
    (void)tokens;
    (void)B;
    (void)T;
    (void)state0;
    return st_fail(err, ST_EUNSUPPORTED, "this build of statetune has no CUDA backend");
}

/* ---- resident parameters: never made without CUDA (engine_cuda_new fails
 * first), so these only answer misuse ---- */

int engine_cuda_run_resident(engine_cuda_t *self, engine_batch_t *batch, const float *state0_dev, float *ds0_dev,
                             char *err)
{
    (void)self;
    (void)batch;
    (void)state0_dev;
    (void)ds0_dev;
    return st_fail(err, ST_EUNSUPPORTED, "this build of statetune has no CUDA backend");
}

int engine_cuda_device(const engine_cuda_t *self)
{
    (void)self;
    return 0;
}

void *engine_cuda_stream(const engine_cuda_t *self)
{
    (void)self;
    return NULL;
}

engine_cuda_params_t *engine_cuda_params_new(engine_cuda_t *eng, int nblk, int N, int dbp, double beta1,
                                             double beta2, double eps, char *err)
{
    (void)eng, (void)nblk, (void)N, (void)dbp, (void)beta1, (void)beta2, (void)eps;
    st_fail(err, ST_EUNSUPPORTED, "this build of statetune has no CUDA backend");
    return NULL;
}

void engine_cuda_params_destroy(engine_cuda_params_t **self_p)
{
    if (self_p) *self_p = NULL;
}

static int s_none(char *err) { return st_fail(err, ST_EUNSUPPORTED, "this build of statetune has no CUDA backend"); }

int engine_cuda_params_set(engine_cuda_params_t *self, const float *A, const float *R, char *err)
{
    (void)self, (void)A, (void)R;
    return s_none(err);
}

int engine_cuda_params_get(engine_cuda_params_t *self, float *A, float *S0, char *err)
{
    (void)self, (void)A, (void)S0;
    return s_none(err);
}

int engine_cuda_params_set_adam(engine_cuda_params_t *self, const float *m, const float *v, int64_t t, char *err)
{
    (void)self, (void)m, (void)v, (void)t;
    return s_none(err);
}

int engine_cuda_params_get_adam(engine_cuda_params_t *self, float *m, float *v, int64_t *t, char *err)
{
    (void)self, (void)m, (void)v, (void)t;
    return s_none(err);
}

int engine_cuda_params_zero_grad(engine_cuda_params_t *self, char *err)
{
    (void)self;
    return s_none(err);
}

int engine_cuda_params_get_grad(engine_cuda_params_t *self, float *grad, char *err)
{
    (void)self, (void)grad;
    return s_none(err);
}

int engine_cuda_params_set_grad(engine_cuda_params_t *self, const float *grad, char *err)
{
    (void)self, (void)grad;
    return s_none(err);
}

float *engine_cuda_params_grad(engine_cuda_params_t *self)
{
    (void)self;
    return NULL;
}

int engine_cuda_params_run(engine_cuda_params_t *self, engine_batch_t *batch, char *err)
{
    (void)self, (void)batch;
    return s_none(err);
}

int engine_cuda_params_step(engine_cuda_params_t *self, double grad_div, double max_norm, double lr,
                            engine_step_info_t *info, char *err)
{
    (void)self, (void)grad_div, (void)max_norm, (void)lr, (void)info;
    return s_none(err);
}

int engine_cuda_params_state_absmax(engine_cuda_params_t *self, double *absmax, size_t *at, char *err)
{
    (void)self, (void)absmax, (void)at;
    return s_none(err);
}

int engine_cuda_run_resident_q(engine_cuda_t *self, engine_batch_t *batch, const float *state0_dev, float *ds0_dev,
                               double *q_dev, char *err)
{
    (void)self, (void)batch, (void)state0_dev, (void)ds0_dev, (void)q_dev;
    return s_none(err);
}

double *engine_cuda_params_q(engine_cuda_params_t *self)
{
    (void)self;
    return NULL;
}

int engine_cuda_params_get_q(engine_cuda_params_t *self, double *Q, char *err)
{
    (void)self, (void)Q;
    return s_none(err);
}

int engine_cuda_params_set_q(engine_cuda_params_t *self, const double *Q, char *err)
{
    (void)self, (void)Q;
    return s_none(err);
}

int engine_cuda_params_get_R(engine_cuda_params_t *self, float *R, char *err)
{
    (void)self, (void)R;
    return s_none(err);
}

int engine_cuda_params_update_R(engine_cuda_params_t *self, double n_pairs, double eta, double kappa, int *finite,
                                char *err)
{
    (void)self, (void)n_pairs, (void)eta, (void)kappa, (void)finite;
    return s_none(err);
}
