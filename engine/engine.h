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
    /* optional methods of SPEC section 4 (CPU backend; CUDA refuses them) */
    const float *teacher_logits; /* (B, T, V) observer: the frozen teacher's logits; NULL = plain CE */
    float obs_alpha;          /* observer: weight of CE (1 = plain CE) */
    float obs_temperature;    /* observer: tau > 0 */
    /* observer with the teacher's top-k computed ahead of time (engine/teacher_cache.h,
     * kernels/cpu/observer_topk.h); used instead of teacher_logits when set. CPU only. */
    const float *teacher_topk;       /* (B, T, K) the teacher's kept logits at each target position */
    const int32_t *teacher_topk_ids; /* (B, T, K) their token ids */
    int teacher_k;                   /* K, 1..V */
    const engine_kstate_t *kstate; /* kernel-expanded state; NULL = the engine's default (engine_set_kstate) */
    float *dU0;               /* (L, H, N, M) += d(loss_sum)/dU0 when kstate is on and dstate0 is set */
    float *receptance;        /* (L, B, T, C) out: every layer's r (k-means support vectors); CPU only */
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
 * NULL turns it off. CPU only: the CUDA backend refuses such batches. */
void engine_set_kstate(engine_t *self, const engine_kstate_t *ks);
const engine_kstate_t *engine_kstate(const engine_t *self); /* that default, or NULL */

/* Bytes of memory the engine planned (weights on device + activations). */
size_t engine_peak_mem_bytes(const engine_t *self);

const rwkv_config_t *engine_config(const engine_t *self);

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
