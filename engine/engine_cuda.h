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

/* Observer with the teacher on the device (engine.h: engine_teacher_forward):
 * runs self's forward on tokens (B, T) from state0 (L, H, N, N), host
 * memory) up to the final LayerNorm and keeps that head input on the device
 * until self's next run, so that a student engine on the same device whose
 * batch names self as its teacher computes the teacher's logits chunk by
 * chunk. */
int engine_cuda_teacher_forward(engine_cuda_t *self, const int32_t *tokens, int B, int T, const float *state0,
                                char *err);

/* The CUDA backend of an engine_t, or NULL (defined in engine.c, which owns
 * engine_t): how a batch's teacher engine reaches the CUDA code. */
engine_cuda_t *engine_cuda_of(const engine_t *engine);

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
 * synchronisation). For kernels/dev/engine_bench.cu and docs/performance.md.
 * Level 2 also brackets every operation with a pair of events and sums them
 * by class over the step (the fine fields; class names from
 * engine_cuda_profile_class): their total is the GPU's busy time, and the
 * step minus that total is what launch gaps cost. */
enum { ENGINE_CUDA_PROF_CLASSES = 24 };
typedef struct {
    float forward_ms;     /* embedding and every layer's forward, WKV included */
    float wkv_forward_ms; /* of which the WKV7 forward kernels */
    float head_ms;        /* ln_out, head products, cross-entropy, head backward */
    float backward_ms;    /* every layer's backward, WKV included */
    float wkv_backward_ms;/* of which the WKV7 backward kernels */
    /* level 2 only: [phase: 0 forward, 1 head, 2 backward][class] */
    float class_ms[3][ENGINE_CUDA_PROF_CLASSES];
    int class_launches[3][ENGINE_CUDA_PROF_CLASSES]; /* kernel launches and cuBLAS calls */
    int fine_dropped;     /* operations not timed (the event pool ran out) */
} engine_cuda_profile_t;

/* on: 0 off, 1 per phase, 2 per phase and per operation class. */
int engine_cuda_set_profiling(engine_cuda_t *self, int on, char *err);
/* The name of fine profiling class i, or NULL past the last one. */
const char *engine_cuda_profile_class(int i);

/* CUDA graphs (on by default): the forward + head and the backward between
 * the host copies of a step are captured once per shape (B, T and the run's
 * switches) and replayed, which removes the launch gaps of a few thousand
 * small launches. Runs that copy to the host mid-step (logits, final states,
 * receptances, the observer, the kernel-expanded state) or profile run
 * eagerly; a capture that fails turns graphs off for the engine and the run
 * goes on eagerly. */
void engine_cuda_set_graphs(engine_cuda_t *self, int on);
/* How many step parts this engine has replayed from graphs so far (0 when
 * graphs are off or every capture failed). */
long engine_cuda_graph_replays(const engine_cuda_t *self);

/* Rows of logits per head chunk (kernels/dev/engine_bench.cu's sweep): at
 * most what the plan made room for (256 MB of fp32 logits), and not once an
 * observer's teacher buffer (sized by the chunk) exists. */
int engine_cuda_set_head_chunk(engine_cuda_t *self, int rows, char *err);
int engine_cuda_head_chunk(const engine_cuda_t *self);
void engine_cuda_last_profile(const engine_cuda_t *self, engine_cuda_profile_t *out);

/* cuBLASLt's timed algorithm choices (STATETUNE_GEMM_LT=2; engine_cuda.cu's
 * lt_cache and lt_choose): one entry per distinct product (shape, strides,
 * types, accumulation, operand alignments, device) met in this process, in
 * the order they were made. The choice is process-wide: the first engine
 * that meets a product times cuBLASLt's first candidates and every later
 * engine on that device takes the same algorithm, so two engines on one
 * model compute the same bits. For kernels/dev/engine_bench.cu --variants
 * and docs/performance.md. */
typedef struct {
    int device;             /* CUDA ordinal */
    int m, n, k, batch;     /* cuBLAS's column-major C (m, n) = op(A) (m, k) op(B) (k, n), batch products */
    char ta, tb;            /* 'N' or 'T' */
    char types[12];         /* operands > output, e.g. "bf16>f32" */
    int accumulate;         /* beta != 0 (timed on a scratch output, never on C) */
    int candidates;         /* algorithms the heuristic offered (at most 8) */
    int timed;              /* 0: the heuristic's first was kept untimed, see why */
    int chosen, fastest;    /* candidate indices (0 = the heuristic's first); chosen is fastest unless that
                               wins by less than 3% over the first */
    float first_ms, chosen_ms, fastest_ms; /* median ms of one product (0 when not timed) */
    const char *why;        /* static text: why it was not timed, NULL when it was */
} engine_cuda_lt_choice_t;

/* Copies the first max choices (in the order they were made) into out
 * (which may be NULL when max is 0) and returns how many the process
 * holds; safe from any thread, while engines run. */
int engine_cuda_lt_choices(engine_cuda_lt_choice_t *out, int max);

/* ---- resident tuning parameters (engine.h's engine_params_*, on the GPU) ----
 * engine_cuda_run with S0 read from, and dS0 accumulated (+=) into, device
 * memory: batch->state0 and batch->dstate0 must be NULL; state0_dev is
 * (L, H, N, N) on this engine's device, ds0_dev (same shape) may be NULL
 * (forward only). The backward is queued before the loss is checked, so
 * when a run fails with ST_ENUMERIC (a non-finite loss) ds0_dev has
 * received that step's non-finite share: the caller must treat the
 * accumulated gradient as lost (tuning stops on that error). */
int engine_cuda_run_resident(engine_cuda_t *self, engine_batch_t *batch, const float *state0_dev, float *ds0_dev,
                             char *err);
/* The same with DBP's Q resident too: when q_dev (L, H, N, N doubles on the
 * device) is not NULL and the batch has dbp_rows (and no host dbp_q), the
 * sampled rows' x x^T are added (+=) to q_dev in place: no zeroing, no
 * copy to the host (engine_cuda_params_update_R reads it there). */
int engine_cuda_run_resident_q(engine_cuda_t *self, engine_batch_t *batch, const float *state0_dev, float *ds0_dev,
                               double *q_dev, char *err);

/* The engine's device ordinal and its compute stream (a cudaStream_t), so
 * that the parameter kernels run in order with the engine's. */
int engine_cuda_device(const engine_cuda_t *self);
void *engine_cuda_stream(const engine_cuda_t *self);

/* The parameters themselves (engine/cuda/engine_cuda_params.cu): A, R, S0,
 * the gradient, dL/dA, Adam's moments and DBP's Q in one device allocation,
 * on the engine's device and stream; R stays in fp32 on the device and its
 * rule runs there (in double). Semantics of each call: engine.h's
 * engine_params_* of the same name. */
typedef struct engine_cuda_params engine_cuda_params_t;

engine_cuda_params_t *engine_cuda_params_new(engine_cuda_t *eng, int nblk, int N, int dbp, double beta1,
                                             double beta2, double eps, char *err);
void engine_cuda_params_destroy(engine_cuda_params_t **self_p);
int engine_cuda_params_set(engine_cuda_params_t *self, const float *A, const float *R, char *err);
int engine_cuda_params_get(engine_cuda_params_t *self, float *A, float *S0, char *err);
int engine_cuda_params_set_adam(engine_cuda_params_t *self, const float *m, const float *v, int64_t t, char *err);
int engine_cuda_params_get_adam(engine_cuda_params_t *self, float *m, float *v, int64_t *t, char *err);
int engine_cuda_params_zero_grad(engine_cuda_params_t *self, char *err);
int engine_cuda_params_get_grad(engine_cuda_params_t *self, float *grad, char *err);
int engine_cuda_params_set_grad(engine_cuda_params_t *self, const float *grad, char *err);
float *engine_cuda_params_grad(engine_cuda_params_t *self); /* device pointer */
int engine_cuda_params_run(engine_cuda_params_t *self, engine_batch_t *batch, char *err);
int engine_cuda_params_step(engine_cuda_params_t *self, double grad_div, double max_norm, double lr,
                            engine_step_info_t *info, char *err);
int engine_cuda_params_state_absmax(engine_cuda_params_t *self, double *absmax, size_t *at, char *err);
/* DBP on the device (engine.h's engine_params_q, _get_q, _set_q, _get_R,
 * _update_R): Q is a device pointer, the R rule runs on the device. */
double *engine_cuda_params_q(engine_cuda_params_t *self);
int engine_cuda_params_get_q(engine_cuda_params_t *self, double *Q, char *err);
int engine_cuda_params_set_q(engine_cuda_params_t *self, const double *Q, char *err);
int engine_cuda_params_get_R(engine_cuda_params_t *self, float *R, char *err);
int engine_cuda_params_update_R(engine_cuda_params_t *self, double n_pairs, double eta, double kappa, int *finite,
                                char *err);

#endif
