/*
 * eval.h - evaluating a state on a held-out set (SPEC section 5's metrics):
 * eval loss, perplexity, next-token accuracy and, for prompt/completion
 * samples, exact match by greedy generation in RNN mode.
 *
 * Evaluation is split across the ranks of a worker group the way training is:
 * rank r of w takes samples r, r + w, r + 2w, ... of the eval set (in the
 * set's fixed order) and returns sums (eval_sums_t); the caller all-reduces
 * the sums (they are plain doubles, one buffer) and turns them into means
 * with eval_finish. A single process passes rank 0 of 1.
 *
 * Definitions:
 *   loss        mean cross-entropy over every trained target (completion
 *               tokens for prompt/completion data, every token for text)
 *   perplexity  exp(loss)
 *   accuracy    share of those targets where the argmax is the target
 *   exact match share of prompt/completion samples where greedy generation
 *               from the state, after feeding the prompt, decodes to exactly
 *               the completion text (at most as many tokens as the
 *               completion has; it stops once the text is as long as the
 *               completion). A sample takes part when its trained targets
 *               are one contiguous block that runs to its end and at least
 *               two prompt tokens precede it, which is what a prompt/
 *               completion line gives; plain text samples do not. At most
 *               EVAL_MAX_GENERATE samples of a set are generated.
 */
#ifndef ST_ENGINE_EVAL_H
#define ST_ENGINE_EVAL_H

#include "data/dataset.h"
#include "data/tokenizer.h"
#include "engine/engine.h"

#include <stdint.h>

#define EVAL_MAX_GENERATE 256

/* Sums over this rank's share; EVAL_SUMS doubles, reduced as one buffer. */
typedef struct {
    double loss_sum;    /* summed CE */
    double n_targets;   /* trained targets */
    double n_correct;   /* argmax == target */
    double n_samples;   /* samples evaluated */
    double exact_total; /* samples generated */
    double exact_hits;  /* generations equal to the completion */
} eval_sums_t;
#define EVAL_SUMS 6

typedef struct {
    double loss;        /* mean CE per target (NaN without targets) */
    double perplexity;  /* exp(loss) */
    double accuracy;    /* in [0, 1] */
    double exact_match; /* in [0, 1], or NaN when no sample qualifies */
    int64_t n_targets;  /* targets evaluated */
    int64_t n_samples;  /* samples evaluated */
    int64_t n_exact;    /* samples generated for exact match */
} eval_result_t;

/* Runs this rank's share of ds from state0 (L, H, N, N) in micro-batches of
 * at most micro_batch samples (B <= the engine's max_batch) and, when
 * generate is nonzero, greedy generation for exact match (model and tok
 * must then be given). Fills *sums. */
int eval_run(engine_t *engine, const rwkv_model_t *model, const tokenizer_t *tok, const dataset_t *ds,
             const float *state0, int micro_batch, int rank, int world, int generate, eval_sums_t *sums,
             char *err);

/* Means from (all-reduced) sums. */
void eval_finish(const eval_sums_t *sums, eval_result_t *out);

/* Greedy generation: feeds prompt (n_prompt >= 1 tokens) to a fresh RNN from
 * state0, then appends up to max_new argmax tokens to out (max_new ints).
 * *n_out is the number generated. */
int eval_generate(const rwkv_model_t *model, const float *state0, const int32_t *prompt, int n_prompt,
                  int max_new, int32_t *out, int *n_out, char *err);
/* The same with a kernel-expanded state (engine.h; NULL = none). */
int eval_generate_ks(const rwkv_model_t *model, const float *state0, const engine_kstate_t *ks,
                     const int32_t *prompt, int n_prompt, int max_new, int32_t *out, int *n_out, char *err);

#endif
