/*
 * checkpoint.h - the tuning job's checkpoint: everything needed to continue a
 * job exactly where it stopped (SPEC section 7).
 *
 * A checkpoint holds the trained factor A, DBP's R, Adam's moments and step
 * counter, the number of steps done, the data position (the batcher's opaque
 * bytes), the RNG state, the sha256 of the canonical job spec (a checkpoint
 * of another job is refused) and a JSON text of the metrics gathered so far
 * (baseline eval, first train loss), so that a resumed run reports what an
 * uninterrupted one would.
 *
 * File layout (little-endian), written atomically (common/st_fs.h):
 *   "STCKPT\r\n" magic, u32 version, u32 reserved,
 *   u32 L, H, N, dbp; i64 step; i64 adam_t; u64 rng[4];
 *   char spec_sha256[64];
 *   u64 data_pos_len, bytes; u64 json_len, bytes;
 *   f32 A, R, m, v (each L*H*N*N);
 *   char sha256[64] of everything before it.
 * Every field is checked on reading; a wrong version says what to do.
 */
#ifndef ST_ENGINE_CHECKPOINT_H
#define ST_ENGINE_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#define CHECKPOINT_VERSION 1

typedef struct {
    int n_layer, n_head, head_size; /* L, H, N */
    int dbp;                 /* R is trained (else it is the identity) */
    int64_t step;            /* optimizer steps completed */
    int64_t adam_t;          /* Adam's step counter */
    uint64_t rng[4];         /* the loop's RNG state */
    char spec_sha256[65];    /* hex sha256 of the canonical job spec */
    uint8_t *data_pos;       /* the batcher's position, opaque */
    size_t data_pos_len;     /* its length in bytes */
    char *metrics_json;      /* metrics so far (NUL-terminated), may be NULL */
    float *A, *R, *adam_m, *adam_v; /* (L, H, N, N) each */
} checkpoint_t;

/* A zeroed checkpoint with the four arrays allocated for the given shape.
 * Returns NULL and fills err when out of memory. */
checkpoint_t *checkpoint_new(int n_layer, int n_head, int head_size, char *err);
void checkpoint_destroy(checkpoint_t **self_p);

/* Elements of each array: L * H * N * N. */
size_t checkpoint_elems(const checkpoint_t *self);

/* Sets the data position (copied) and the metrics text (copied; NULL clears). */
int checkpoint_set_data_pos(checkpoint_t *self, const void *bytes, size_t len, char *err);
int checkpoint_set_metrics(checkpoint_t *self, const char *json, char *err);

/* Writes the checkpoint to path atomically: a reader sees the old file or
 * the new one, never a torn one. */
int checkpoint_write(const checkpoint_t *self, const char *path, char *err);

/* Reads and verifies a checkpoint. ST_ENOTFOUND when the file does not
 * exist; ST_EFORMAT with a sentence for a damaged or foreign file. */
int checkpoint_read(const char *path, checkpoint_t **out, char *err);

#endif
