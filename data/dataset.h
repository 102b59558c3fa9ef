/*
 * dataset.h - a JSON Lines training or eval set, tokenized, with loss masks
 * (SPEC section 3).
 *
 * One sample a line, in one of three forms:
 *   {"text": "..."}                        loss on every token
 *   {"prompt": "...", "completion": "..."} loss on the completion's tokens only
 *   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
 *       rendered with the RWKV chat template: "System: ...\n\n",
 *       "User: ...\n\n", "Assistant: ...\n\n"; loss on the assistant turns only
 *       (their content and the "\n\n" that ends them, so the model learns to
 *       stop; the "Assistant:" prefix itself is not trained).
 * Each part (prompt, completion, a turn's prefix, a turn's content) is
 * tokenized on its own and the ids are concatenated, so the boundary between
 * masked and trained tokens is exact.
 *
 * A sample is its tokens and, per token, whether that token is a trained
 * target (predicted from the tokens before it; token 0 never is, as nothing
 * precedes it). Samples are never packed together: each starts from the tuned
 * state. Tokens after the last trained one are dropped (a causal model's loss
 * does not depend on them). A sample longer than ctx_len + 1 tokens (ctx_len
 * inputs) is cut, or split into pieces of ctx_len + 1 tokens that overlap
 * by one token so that every target is trained exactly once. Samples (or
 * pieces) with no trained target are dropped and counted.
 *
 * Blank lines are skipped. A bad line (invalid JSON, missing or mistyped
 * fields, empty text) fails the whole load with ST_EFORMAT naming the file
 * and the line number: a job fails at validation, before any GPU time.
 */
#ifndef ST_DATASET_H
#define ST_DATASET_H

#include "data/jobspec.h"
#include "data/tokenizer.h"

#include <stdint.h>

typedef struct dataset dataset_t;

typedef struct {
    const int32_t *tokens; /* (n) token ids */
    const uint8_t *train;  /* (n) 1 where token i is a trained target */
    int n;                 /* number of tokens, 2..ctx_len+1 */
    int line;              /* 1-based line of the file it came from */
    int piece;             /* 0-based piece of that line (split mode) */
} dataset_sample_t;

typedef struct {
    int64_t lines;         /* non-blank lines read */
    int64_t samples;       /* samples kept (pieces count one each) */
    int64_t tokens;        /* tokens in kept samples */
    int64_t targets;       /* trained targets in kept samples */
    int64_t truncated;     /* lines cut at ctx_len + 1 tokens (truncate mode) */
    int64_t split;         /* lines split into more than one piece (split mode) */
    int64_t dropped;       /* samples or pieces dropped for having no trained target */
    int max_len;           /* longest kept sample, in tokens */
    char sha256[65];       /* sha256 of the file, hex */
} dataset_stats_t;

/* Reads, validates and tokenizes a JSONL file. On failure *out is NULL and
 * err names the file and the line. */
int dataset_load(const char *path, const tokenizer_t *tok, int ctx_len, job_long_t mode,
                 dataset_t **out, char *err);

/* The same from a buffer (name is used in messages and as the file name). */
int dataset_load_buffer(const char *name, const char *data, size_t len, const tokenizer_t *tok,
                        int ctx_len, job_long_t mode, dataset_t **out, char *err);

/* Holds out about eval_fraction of the source lines (at least one, leaving
 * at least one for training), chosen by a hash of (seed, line): the same for
 * the same seed and file. All pieces of a line go to the same side. */
int dataset_split(const dataset_t *all, double eval_fraction, uint64_t seed, dataset_t **train_out,
                  dataset_t **eval_out, char *err);

/* Loads what a job trains and evaluates on: train and eval files, or train
 * with a held-out share when the spec names no eval file. */
int dataset_load_job(const jobspec_t *spec, const tokenizer_t *tok, dataset_t **train_out,
                     dataset_t **eval_out, char *err);

int dataset_count(const dataset_t *self);

/* The i-th sample (borrowed; valid while the dataset lives). */
dataset_sample_t dataset_get(const dataset_t *self, int i);

/* Counts and hash; for a split, counts are the side's, sha256 the file's. */
const dataset_stats_t *dataset_stats(const dataset_t *self);

/* Accepts NULL; sets *self_p to NULL. */
void dataset_destroy(dataset_t **self_p);

#endif
