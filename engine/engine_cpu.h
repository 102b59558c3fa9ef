/*
 * engine_cpu.h - the CPU backend of engine.h (fp32, OpenBLAS + OpenMP), held
 * by engine.c the way it holds the CUDA backend (engine_cuda.h). Semantics are
 * exactly engine.h's: loss as a sum, dstate0 accumulated (+=), states fp32 in
 * the official layout (L, H, N, N).
 */
#ifndef ST_ENGINE_CPU_H
#define ST_ENGINE_CPU_H

#include "engine/engine.h"

#include <stddef.h>

typedef struct engine_cpu engine_cpu_t;

/* Plans and allocates the activation memory for opts->max_batch x
 * opts->max_ctx in one allocation. NULL and err when the precision is not
 * fp32 or the memory is not there (the sentence says how much was needed). */
engine_cpu_t *engine_cpu_new(const rwkv_model_t *model, const engine_opts_t *opts, char *err);
void engine_cpu_destroy(engine_cpu_t **self_p);
int engine_cpu_run(engine_cpu_t *self, engine_batch_t *batch, char *err);

/* Weights (the model's arena, used in place) + the activation plan. */
size_t engine_cpu_peak_mem_bytes(const engine_cpu_t *self);

#endif
