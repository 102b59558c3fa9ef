/*
 * engine_cuda.cu - the CUDA backend of engine.h (see engine/engine_cuda.h).
 *
 * First piece: the entry points exist and refuse cleanly, so engine.c can
 * dispatch to them while the GPU step is being written.
 */
extern "C" {
#include "engine/engine_cuda.h"
#include "common/st_err.h"
}

extern "C" engine_cuda_t *engine_cuda_new(const rwkv_model_t *model, const engine_opts_t *opts, char *err)
{
    (void)model;
    (void)opts;
    st_fail(err, ST_EUNSUPPORTED, "the CUDA engine is not finished yet (only the WKV7 kernels are)");
    return NULL;
}

extern "C" void engine_cuda_destroy(engine_cuda_t **self_p)
{
    if (self_p) *self_p = NULL;
}

extern "C" int engine_cuda_run(engine_cuda_t *self, engine_batch_t *batch, char *err)
{
    (void)self;
    (void)batch;
    return st_fail(err, ST_EUNSUPPORTED, "the CUDA engine is not finished yet");
}

extern "C" size_t engine_cuda_peak_mem_bytes(const engine_cuda_t *self)
{
    (void)self;
    return 0;
}
