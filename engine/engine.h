/*
 * engine.h - one backend-neutral entry to the model's forward and backward
 * passes (SPEC section 4).
 *
 * An engine_t holds a frozen model on a backend (CPU today, CUDA when built)
 * and its activation memory for batches up to max_batch x max_ctx. engine_run
 * runs a batch of sequences, every one starting from the same initial WKV
 * state S0 (one per layer: the tuned state), and returns the summed
 * cross-entropy; when asked it also returns d(sum CE)/dS0, the logits, the
 * final states and the DBP correlation Q of the effective queries.
 *
 * Conventions:
 *   - tokens and targets are (B, T) int32; a target of -1 means "no loss at
 *     this position" (padding, prompt tokens). Token-shift states start at 0.
 *   - The loss is a sum, not a mean, and dstate0 is the gradient of that sum,
 *     accumulated (+=): the caller divides by the number of targets of the
 *     global batch, so results do not depend on how the batch is split into
 *     micro-batches or ranks.
 *   - All state tensors are fp32 in the official layout (L, H, N, N),
 *     S[h][i_value][j_key].
 * The engine knows nothing of files, sockets or ranks.
 */
#ifndef ST_ENGINE_H
#define ST_ENGINE_H

#include "model/model.h"

#include <stdint.h>

typedef enum { ENGINE_CPU = 0, ENGINE_CUDA = 1 } engine_backend_t;
typedef enum { ENGINE_FP32 = 0, ENGINE_BF16 = 1 } engine_precision_t;

typedef struct {
    engine_backend_t backend;
    engine_precision_t precision; /* CPU supports FP32 only */
    int max_batch;                /* largest B engine_run will see */
    int max_ctx;                  /* largest T engine_run will see */
    int device;                   /* CUDA device ordinal */
    int threads;                  /* CPU threads; 0 = automatic: all cores, or one when
                                   * timing shows the machine is shared (engine_cpu.c) */
} engine_opts_t;

/* The kernel-expanded state (SPEC section 4; kernels/cpu/rbf.h, engine/kstate.h):
 * per layer and head y_t += d_t U0 phi(r_t / |r_t|). Borrowed by the engine. */
typedef struct {
    int M;                    /* support vectors per head, 1..1024 */
    float gamma;              /* RBF width, > 0 */
    const float *U0;          /* (L, H, N, M) trained */
    const float *support;     /* (L, H, M, N) fixed unit vectors */
} engine_kstate_t;

typedef struct {
    /* in */
    const int32_t *tokens;    /* (B, T) */
    const int32_t *targets;   /* (B, T), -1 = no loss here; NULL = no loss at all */
    int B, T;
    const float *state0;      /* (L, H, N, N) shared by all B sequences */
    const uint8_t *dbp_rows;  /* (B) nonzero rows contribute to dbp_q; NULL = none */
    /* optional methods of SPEC section 4 (both backends) */
    const float *teacher_logits; /* (B, T, V) observer: the frozen teacher's logits; NULL = plain CE */
    float obs_alpha;          /* observer: weight of CE (1 = plain CE) */
    float obs_temperature;    /* observer: tau > 0 */
    /* observer with the teacher's top-k computed ahead of time (engine/teacher_cache.h,
     * kernels/cpu/observer_topk.h, kernels/cuda/observer.cuh); used instead of teacher_logits when set */
    const float *teacher_topk;       /* (B, T, K) the teacher's kept logits at each target position */
    const int32_t *teacher_topk_ids; /* (B, T, K) their token ids */
    int teacher_k;                   /* K, 1..V */
    const struct engine *teacher; /* observer on CUDA: a teacher engine (same device, precision and vocabulary) that
                                   * just ran engine_teacher_forward on these tokens; the head computes the teacher's
                                   * logits from it on the device, used instead of teacher_logits. CUDA only */
    const engine_kstate_t *kstate; /* kernel-expanded state; NULL = the engine's default (engine_set_kstate) */
    float *dU0;               /* (L, H, N, M) += d(loss_sum)/dU0 when kstate is on and dstate0 is set */
    float *receptance;        /* (L, B, T, C) out: every layer's r (k-means support vectors) */
    /* out, each optional (NULL = not wanted) */
    float *logits;            /* (B, T, V) */
    float *final_state;       /* (B, L, H, N, N) WKV state after the last token */
    float *dstate0;           /* (L, H, N, N) += d(loss_sum)/dS0; NULL = forward only */
    double *dbp_q;            /* (L, H, N, N) += sum over dbp_rows and t of x_t x_t^T */
    /* out, always */
    double loss_sum;          /* sum of CE over targets >= 0 */
    int64_t n_targets;        /* number of targets >= 0 */
    int64_t n_correct;        /* targets where argmax(logits) == target */
    double ce_sum;            /* observer on: the CE part alone (else = loss_sum) */
    double kl_sum;            /* observer on: summed KL(teacher || student), unscaled */
} engine_batch_t;

typedef struct engine engine_t;

/* Places the model on the backend and plans activation memory. Returns NULL
 * and fills err when the backend is missing or the plan does not fit (the
 * sentence says needed vs free). The model must outlive the engine. */
engine_t *engine_new(const rwkv_model_t *model, const engine_opts_t *opts, char *err);
void engine_destroy(engine_t **self_p);

/* Runs one batch (see engine_batch_t). B <= max_batch, T <= max_ctx. */
int engine_run(engine_t *self, engine_batch_t *batch, char *err);

/* A kernel-expanded state used by every later engine_run whose batch names
 * none (evaluation runs through code that knows nothing of it); borrowed,
 * NULL turns it off. */
void engine_set_kstate(engine_t *self, const engine_kstate_t *ks);
const engine_kstate_t *engine_kstate(const engine_t *self); /* that default, or NULL */

/* Observer with the teacher on the GPU (CUDA backend only; ST_EUNSUPPORTED on
 * the CPU, which takes teacher_logits): runs self, the teacher, forward on
 * tokens (B, T) from its state0 up to its final LayerNorm and keeps that on
 * the device until self's next run, for one student engine_run whose batch
 * names self in engine_batch_t.teacher. No logits leave the device. */
int engine_teacher_forward(engine_t *self, const int32_t *tokens, int B, int T, const float *state0, char *err);

/* Bytes of memory the engine planned (weights on device + activations). */
size_t engine_peak_mem_bytes(const engine_t *self);

const rwkv_config_t *engine_config(const engine_t *self);

/* ---- resident tuning parameters (engine_params_*) ---------------------------
 * The tuned state, its gradient and Adam's moments kept where the engine
 * runs: host memory on the CPU backend, device memory on CUDA, so that a
 * GPU tuning step moves no state over PCIe (the tuning loop, tune.c, has one
 * code path for both). Per layer and head the state is S0 = A R: A is what
 * Adam trains, R is DBP's decorrelation factor (SPEC section 4), the
 * identity when DBP is off (then S0 = A and R is never stored). DBP's
 * statistics Q and R's rule live here too (engine_params_q, _update_R: on
 * the device on CUDA), so that a DBP step moves nothing over PCIe either.
 *
 * A step: engine_params_zero_grad (the gradient and, under DBP, Q);
 * engine_params_run for each micro-batch (uses the resident S0, accumulates
 * d(loss_sum)/dS0 into the resident gradient and, for the rows flagged in
 * batch->dbp_rows, x x^T into the resident Q); sum the gradient and Q over
 * the ranks in place (engine_params_grad, engine_params_q: device pointers
 * when engine_params_grad_on_device says so, for an NCCL all-reduce);
 * engine_params_step (divide by the global number of targets, dL/dA =
 * dS0 R^T, global-norm clip, Adam: the formulas of engine/adam.h, the same
 * on every backend); under DBP, engine_params_update_R with the global
 * number of sampled pairs. Nothing here synchronises with other ranks.
 *
 * Arrays passed in or out are host memory, nS = L H N N floats in the
 * official layout, unless said otherwise. */
typedef struct {
    double grad_norm; /* global L2 norm of dL/dA before clipping (NaN/inf: the step was not taken) */
    int finite;       /* 1 when every element of A is finite after the step */
} engine_step_info_t;

/* Allocates the resident parameters: A = 0, R = I, zero gradient and
 * moments, Adam's step count 0. dbp 1 = S0 = A R. Betas in [0, 1), eps > 0
 * (engine/adam.h). Call once per engine; a second call fails. */
int engine_params_init(engine_t *self, int dbp, double beta1, double beta2, double eps, char *err);
/* A (nS) and, when R is not NULL, DBP's R (nS; refused when dbp is off). */
int engine_params_set(engine_t *self, const float *A, const float *R, char *err);
int engine_params_set_R(engine_t *self, const float *R, char *err);
/* Copies A and/or S0 = A R out (either may be NULL). */
int engine_params_get(engine_t *self, float *A, float *S0, char *err);
/* Adam's moments (nS each) and step count, for checkpoints. */
int engine_params_set_adam(engine_t *self, const float *m, const float *v, int64_t t, char *err);
int engine_params_get_adam(engine_t *self, float *m, float *v, int64_t *t, char *err);
/* The gradient: zeroed, read (nS to host), written (from host). */
int engine_params_zero_grad(engine_t *self, char *err);
int engine_params_get_grad(engine_t *self, float *grad, char *err);
int engine_params_set_grad(engine_t *self, const float *grad, char *err);
/* The gradient buffer itself (nS floats, owned by the engine): device
 * memory when engine_params_grad_on_device is 1. Complete (no kernel still
 * writing it) whenever an engine_params_* or engine_run call has returned. */
float *engine_params_grad(engine_t *self);
int engine_params_grad_on_device(const engine_t *self);
/* engine_run with state0 = the resident S0 and, when the batch has
 * targets, dstate0 = the resident gradient (+=). batch->state0 and
 * batch->dstate0 must be NULL. Under DBP, rows flagged in batch->dbp_rows
 * add their x x^T to the resident Q when batch->dbp_q is NULL (a host
 * dbp_q gets them instead, as engine_run does). Every other field as in
 * engine_run. */
int engine_params_run(engine_t *self, engine_batch_t *batch, char *err);
/* grad = (float)(grad / grad_div) (the summed gradient to the mean:
 * grad_div is the global number of targets, or 1 when the caller divided),
 * then dL/dA (= dS0 R^T under DBP, else dS0), clipping to max_norm (<= 0:
 * none) and one Adam step at rate lr on A. When the norm is NaN or inf
 * nothing is updated and info says so. */
int engine_params_step(engine_t *self, double grad_div, double max_norm, double lr, engine_step_info_t *info,
                       char *err);
/* The largest |S0| element and its index (the first NaN or inf when there
 * is one: then *absmax is that value). */
int engine_params_state_absmax(engine_t *self, double *absmax, size_t *at, char *err);
/* DBP's Q (nS doubles: the step's sum of x x^T over the sampled rows, zeroed
 * by engine_params_zero_grad) owned by the engine: device memory when
 * engine_params_grad_on_device is 1, complete whenever an engine_params_*
 * call has returned; NULL without DBP. _get_q / _set_q copy it from / to
 * host memory (a group that stages its all-reduce through the host). */
double *engine_params_q(engine_t *self);
int engine_params_get_q(engine_t *self, double *Q, char *err);
int engine_params_set_q(engine_t *self, const double *Q, char *err);
/* R (nS) to host memory, for checkpoints. Refused without DBP. */
int engine_params_get_R(engine_t *self, float *R, char *err);
/* DBP's rule on R from the resident Q over n_pairs sampled (sequence, t)
 * pairs (engine/dbp_param.h: eta, kappa; n_pairs <= 0 leaves R unchanged),
 * in double: dbp_update_R on the CPU, batched DGEMMs on the device on CUDA
 * (the same arithmetic up to summation order). *finite = 1 when every
 * element of R is finite afterwards. Refused without DBP. */
int engine_params_update_R(engine_t *self, double n_pairs, double eta, double kappa, int *finite, char *err);

/* ---- RNN mode: one token at a time with the state carried (generation) ----
 * The same math as engine_run with T = 1, and the code an inference client
 * uses with a tuned state. */
typedef struct rwkv_rnn rwkv_rnn_t;

/* A fresh recurrent state starting from state0 (L, H, N, N), or zeros when
 * state0 is NULL; token-shift states start at zero. */
rwkv_rnn_t *rwkv_rnn_new(const rwkv_model_t *model, const float *state0, char *err);
void rwkv_rnn_destroy(rwkv_rnn_t **self_p);

/* Feeds one token; writes the next-token logits (V) when logits is not NULL. */
int rwkv_rnn_step(rwkv_rnn_t *self, int32_t token, float *logits, char *err);

/* Adds a kernel-expanded state's term (borrowed; NULL removes it), so that
 * generation matches engine_run with the same kstate. Call before the first
 * step: the running decay products restart at 1. */
int rwkv_rnn_set_kstate(rwkv_rnn_t *self, const engine_kstate_t *ks, char *err);

/* The current WKV state (L, H, N, N), borrowed. */
const float *rwkv_rnn_wkv_state(const rwkv_rnn_t *self);

#endif
