/*
 * engine_cuda.h - the CUDA backend of engine.h, behind a small vtable-free API.
 *
 * engine.c owns engine_t and, when opts->backend == ENGINE_CUDA, holds one
 * engine_cuda_t made by engine_cuda_new and forwards engine_run /
 * engine_peak_mem_bytes / engine_destroy to the functions below. The semantics
 * are exactly engine.h's (loss as a sum, dstate0 accumulated +=, states fp32 in
 * the official layout (L, H, N, N)); inputs and outputs are host pointers, the
 * backend copies them to and from the device itself.
 *
 * Precision (SPEC section 8, shared/fixtures/README.md tolerances):
 *   ENGINE_FP32 - fp32 weights and activations everywhere;
 *   ENGINE_BF16 - bf16 weights and activations, fp32 WKV state, fp32
 *                 accumulators and fp32 dstate0.
 *
 * Builds without CUDA link a stub (engine/cuda/nocuda/) whose engine_cuda_new
 * returns NULL with "this build has no CUDA backend", so engine.c calls these
 * functions without any #ifdef.
 */
#ifndef ST_ENGINE_CUDA_H
#define ST_ENGINE_CUDA_H

#include "engine/engine.h"

#include <stddef.h>

typedef struct engine_cuda engine_cuda_t;

/* Uploads the model to opts->device (converted to opts->precision) and
 * allocates the activation plan for opts->max_batch x opts->max_ctx in one
 * allocation. Returns NULL and fills err when there is no device, the plan
 * does not fit (the sentence says needed vs free) or the build has no CUDA.
 * The model must outlive the engine. Caller owns the result. */
engine_cuda_t *engine_cuda_new(const rwkv_model_t *model, const engine_opts_t *opts, char *err);

/* The same with the memory mode chosen: recompute 0 keeps every layer's
 * activations, 1 keeps only each layer's input and recomputes the layer's
 * forward in the backward (about one more forward per step, a fraction of the
 * memory), -1 (what engine_cuda_new does) picks 0 when it fits the free device
 * memory, else 1. */
engine_cuda_t *engine_cuda_new_mode(const rwkv_model_t *model, const engine_opts_t *opts, int recompute,
                                    char *err);

/* 1 when the engine recomputes each layer's forward in the backward. */
int engine_cuda_recomputes(const engine_cuda_t *self);

/* Frees device memory, streams and handles; accepts NULL; sets *self_p NULL. */
void engine_cuda_destroy(engine_cuda_t **self_p);

/* engine_run on the GPU (see engine_batch_t in engine.h). Returns ST_OK or a
 * negative st_err code; ST_EUNSUPPORTED for outputs this backend does not
 * produce yet (the sentence names them). */
int engine_cuda_run(engine_cuda_t *self, engine_batch_t *batch, char *err);

/* Bytes of device memory planned: weights + activations + workspace. */
size_t engine_cuda_peak_mem_bytes(const engine_cuda_t *self);

/* Where the time of the last engine_cuda_run went, in ms, when profiling is
 * on (CUDA events around each phase; off by default because the events add
 * synchronisation). For kernels/dev/engine_bench.cu and docs/performance.md. */
typedef struct {
    float forward_ms;     /* embedding and every layer's forward, WKV included */
    float wkv_forward_ms; /* of which the WKV7 forward kernels */
    float head_ms;        /* ln_out, head products, cross-entropy, head backward */
    float backward_ms;    /* every layer's backward, WKV included */
    float wkv_backward_ms;/* of which the WKV7 backward kernels */
} engine_cuda_profile_t;

int engine_cuda_set_profiling(engine_cuda_t *self, int on, char *err);
void engine_cuda_last_profile(const engine_cuda_t *self, engine_cuda_profile_t *out);

#endif
