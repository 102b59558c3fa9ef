/*
 * batcher.h - the order in which samples are trained, cut into (B, T)
 * batches for one rank (SPEC sections 3 and 7).
 *
 * Training order, per epoch, is a pure function of (seed, epoch):
 *   1. shuffle all samples (xoshiro256**, seeded through splitmix64);
 *   2. if the count is not a multiple of global_batch, repeat the first
 *      samples of that order to fill the last global batch, so every step has
 *      exactly global_batch samples and an epoch is ceil(N / global_batch) steps;
 *   3. cut the order into windows of BATCHER_WINDOW global batches and sort
 *      each window by length, so that a global batch holds samples of similar
 *      length and padding stays small;
 *   4. cut into global batches and shuffle the order of the global batches,
 *      so that steps do not run from short to long.
 * Rank r of a group of n takes the contiguous slice [r G/n, (r+1) G/n) of each
 * global batch and cuts it into micro-batches of micro_batch samples (the
 * last may be smaller). Every rank computes the same order, so each also
 * knows the number of targets in the whole global batch: the divisor of the
 * mean loss, whatever the number of ranks.
 *
 * A micro-batch is (B, T) int32 tokens and targets, right-padded: inputs are
 * a sample's tokens[0..n-2], targets[t] = tokens[t+1] where that token is
 * trained, else -1 (padding and prompt positions are -1 too).
 *
 * The position (epoch, index of the next global batch) goes into checkpoints;
 * batcher_seek to it continues with exactly the batches that would have come.
 *
 * Eval iteration (batcher_new_eval): the eval set in a fixed order, each rank
 * a contiguous slice sorted by length, one micro-batch per call.
 */
#ifndef ST_BATCHER_H
#define ST_BATCHER_H

#include "data/dataset.h"

#include <stdint.h>

#define BATCHER_WINDOW 50 /* global batches sorted by length together */

typedef struct {
    int B;              /* sequences */
    int T;              /* padded length: the longest input of the B */
    int32_t *tokens;    /* (B, T) inputs, 0 past a sequence's end */
    int32_t *targets;   /* (B, T) next token where trained, else -1 */
    int64_t n_targets;  /* targets >= 0 here */
    int *sample;        /* (B) dataset index of each row */
} micro_batch_t;

typedef struct {
    int n_micro;            /* micro-batches of this rank (0: eval set exhausted) */
    micro_batch_t *micro;   /* (n_micro) owned by the batcher, valid until the next call */
    int64_t global_targets; /* targets in the whole global batch, all ranks */
    int64_t epoch;          /* position this batch came from */
    int64_t index;          /* global batch index within the epoch */
} batch_t;

typedef struct {
    int64_t epoch;          /* 0-based epoch of the next global batch */
    int64_t index;          /* its index within the epoch */
} batcher_pos_t;

typedef struct batcher batcher_t;

/* Training batches. global_batch must be a multiple of world; every sample
 * must fit ctx_len inputs. Returns NULL and fills err on failure. The dataset
 * must outlive the batcher. */
batcher_t *batcher_new(const dataset_t *ds, int global_batch, int micro_batch, int ctx_len, uint64_t seed,
                       int rank, int world, char *err);

/* Eval batches: this rank's slice of ds in a fixed order. */
batcher_t *batcher_new_eval(const dataset_t *ds, int micro_batch, int ctx_len, int rank, int world, char *err);

void batcher_destroy(batcher_t **self_p);

/* Training: the micro-batches of this rank for the next global step, then
 * advances the position (wrapping into the next epoch). Eval: the next
 * micro-batch of this rank's slice in out->micro[0], or n_micro 0 at the end. */
int batcher_next(batcher_t *self, batch_t *out, char *err);

/* Where the next batch comes from (training); save it in a checkpoint. */
batcher_pos_t batcher_position(const batcher_t *self);

/* Continues from a saved position. Eval: rewinds to the start (pos ignored). */
int batcher_seek(batcher_t *self, batcher_pos_t pos, char *err);

/* Global steps in one epoch: ceil(samples / global_batch). */
int64_t batcher_steps_per_epoch(const batcher_t *self);

/* Eval: targets in this rank's slice (sum across ranks for the total). */
int64_t batcher_eval_targets(const batcher_t *self);

#endif
