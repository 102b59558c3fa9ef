/*
 * tune.h - the state-tuning loop (SPEC sections 2.1, 4 and 7): one job from
 * its validated spec to DIR/state.safetensors and DIR/metrics.json.
 *
 * Every rank of a worker group calls tune_run with the same spec; each
 * computes its slice of every global batch, and one all-reduce per step sums
 * dS0, the DBP statistics and the loss sums (one buffer, dist.h). Rank 0
 * writes checkpoints and outputs and is the one whose callbacks fire; the
 * others run silently. A single process passes dist NULL.
 *
 * Per step, everything on the state kept where the engine runs (engine.h's
 * engine_params_*: device memory on CUDA, so the state never crosses PCIe
 * during tuning): each micro-batch through engine_params_run from the
 * resident S0 = A R (R = I without DBP), adding dS0 to the resident
 * gradient and, for the rows DBP sampled, their x x^T to the resident Q ->
 * one all-reduce of dS0, Q and the loss sums (a GPU group sums dS0 and Q in
 * place with NCCL) -> engine_params_step: divide by the global number of
 * targets, dL/dA = dS0 R^T, global-norm clip, Adam on A at the scheduled
 * rate -> engine_params_update_R: DBP's R rule in double (on the GPU for
 * CUDA) when rows were sampled. A, R and S0 come to the host only for
 * evaluation, checkpoints and the result. NaN or inf in the loss, the
 * gradient, A or R fails the job with ST_ENUMERIC and writes no state.
 *
 * Evaluation (engine/eval.h) runs before the first step (the untuned
 * baseline, S0 = the initial state), every eval_every steps and at the end.
 * Checkpoints (engine/checkpoint.h) are written every checkpoint_every steps
 * and at the end to DIR/checkpoint.stck; a later call with the same out dir
 * resumes from it and, on the CPU, reproduces the uninterrupted run exactly.
 *
 * Callbacks let a caller forward events (the worker-group mode sends them to
 * the coordinator over ZeroMQ); each may be NULL, and none is called on
 * ranks other than 0. should_cancel is polled once per step; a nonzero
 * answer stops every rank together with ST_ECANCELLED (no state written).
 */
#ifndef ST_ENGINE_TUNE_H
#define ST_ENGINE_TUNE_H

#include "data/jobspec.h"
#include "engine/engine.h"

#include <stdint.h>

typedef struct dist dist_t; /* worker/dist.h: the group; NULL = one process */

typedef enum {
    TUNE_RESUME_AUTO = 0,    /* resume when DIR holds a checkpoint of this job */
    TUNE_RESUME_REQUIRE = 1, /* resume; fail when there is no checkpoint */
    TUNE_RESUME_NEVER = 2,   /* start at step 0 and overwrite any checkpoint */
} tune_resume_t;

typedef struct {
    const char *out_dir;       /* created if missing; outputs and checkpoint go here */
    dist_t *dist;              /* NULL = a single process */
    engine_backend_t backend;  /* where the engine runs */
    tune_resume_t resume;      /* what to do with an existing checkpoint */
    int threads;               /* CPU threads, 0 = all cores */
    const float *init_state;   /* (L, H, N, N) initial state, or NULL = zeros */
    int64_t max_steps;         /* > 0: stop (with a checkpoint) after this many steps
                                  in this call, as if interrupted; 0 = run to the end */
} tune_opts_t;

typedef struct {
    void *ctx; /* passed back to every callback */
    /* after every step: step done (1-based), total steps, train loss of the
     * step, tokens per second since this call began, seconds left, rate */
    void (*on_progress)(void *ctx, int64_t step, int64_t steps, double loss, double tokens_per_s,
                        double eta_s, double lr);
    /* after every evaluation, with one JSON object (step, eval_loss,
     * perplexity, accuracy, exact_match or null, and "baseline" beside it) */
    void (*on_eval)(void *ctx, int64_t step, const char *eval_json);
    /* after every checkpoint, with its path */
    void (*on_checkpoint)(void *ctx, int64_t step, const char *path);
    /* polled once per step: nonzero cancels the job */
    int (*should_cancel)(void *ctx);
} tune_callbacks_t;

typedef struct {
    int64_t steps;            /* steps done in total (including resumed ones) */
    int64_t start_step;       /* step this call started from (0 unless resumed) */
    int finished;             /* all steps done and the outputs written */
    double eval_loss_before;  /* baseline, S0 = the initial state */
    double eval_loss_after;
    double train_loss_first;
    double train_loss_last;
    double tokens_per_s;      /* over this call's steps, all ranks together */
    int n_layer, n_head, head_size; /* shape of state */
    float *state;             /* (L, H, N, N) the tuned S0 = A R (caller frees with tune_result_clear) */
    char *metrics_json;       /* the text of metrics.json (idem) */
} tune_result_t;

/* Runs (or resumes) a job; spec must have passed jobspec_check_inputs and
 * have its model resolved (model_path set). On success out holds the
 * result; on failure err holds one sentence and out->state is NULL. */
int tune_run(const jobspec_t *spec, const tune_opts_t *opts, const tune_callbacks_t *cb, tune_result_t *out,
             char *err);

/* Frees what tune_run put in a result; accepts a zeroed one. */
void tune_result_clear(tune_result_t *r);

/* File names inside the out dir. */
#define TUNE_STATE_FILE "state.safetensors"
#define TUNE_METRICS_FILE "metrics.json"
#define TUNE_CHECKPOINT_FILE "checkpoint.stck"

#endif
