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
