/*
 * teacher_cache.h - the observer's teacher logits computed ahead of time as
 * top-k per trained position (SPEC section 4: "ahead of time as top-k
 * (k = 64 default) per position, stored with the job").
 *
 * The frozen teacher runs once over every training sample, exactly as the
 * student sees it (the batcher's rows: same tokens, same cut at ctx_len), and
 * for every position that has a target keeps the k largest logits and their
 * token ids, sorted by value (ties: smaller id first). The loss then uses
 * them through kernels/cpu/observer_topk.h (engine_batch_t.teacher_topk).
 *
 * File (little-endian, versioned; DIR/teacher_topk.stk inside a job's folder):
 *   0    magic "STTOPK01"
 *   8    u32 version (1), u32 k, u32 vocab V, u32 dtype (1 = fp16, 2 = fp32)
 *   24   u64 n_samples, u64 n_rows (trained positions of all samples)
 *   40   f64 mean teacher probability mass kept by the top-k (tau = 1)
 *   48   char[64] teacher id: sha256 of the teacher model file and its state
 *   112  char[64] data id: sha256 of the training samples' tokens and targets
 *   176  u64 row_start[n_samples + 1]: sample s owns rows row_start[s] ..
 *        row_start[s+1] - 1, one per trained position in order
 *        i32 ids[n_rows][k], then values[n_rows][k] (fp16 or fp32)
 *   end  32 bytes: sha256 of everything before
 * Every byte is checked on reading (a truncated or altered file is refused
 * with one sentence), and tcache_check refuses a cache made for another
 * teacher, other data or another k, saying what to do.
 */
#ifndef ST_ENGINE_TEACHER_CACHE_H
#define ST_ENGINE_TEACHER_CACHE_H

#include "data/jobspec.h"
#include "engine/observer.h"

#include <stddef.h>
#include <stdint.h>

#define TCACHE_FILE "teacher_topk.stk" /* inside a job's out dir */

typedef enum { TCACHE_F16 = 1, TCACHE_F32 = 2 } tcache_dtype_t;

typedef struct teacher_cache teacher_cache_t;
struct dataset;

/* The teacher's identity: sha256 over the model file's sha256 and the state
 * file's (or "zeros" when state_path is NULL). */
int tcache_teacher_id(const char *model_path, const char *state_path, char hex_out[65], char *err);

/* The data's identity: sha256 over every sample's tokens and trained flags. */
void tcache_data_id(const struct dataset *ds, char hex_out[65]);

/* Runs the teacher over every sample of ds (micro-batches of micro_batch,
 * samples cut at ctx_len as the batcher cuts them) and keeps the top k of
 * every trained position. NULL + err on failure. */
teacher_cache_t *tcache_build(observer_t *teacher, const struct dataset *ds, int micro_batch, int ctx_len, int k,
                              tcache_dtype_t dtype, const char teacher_id[65], char *err);

/* A float sum over every rank of a group, in place (dist_allreduce_sum_f32
 * in a worker group); every rank calls it with the same n. */
typedef int (*tcache_reduce_fn)(void *ctx, float *buf, size_t n, char *err);

/* tcache_build split over a group: rank r of world runs the teacher on
 * every world-th micro-batch only (round robin over the length-sorted
 * order, so the ranks' shares are alike), and reduce gathers the rows on
 * every rank (ids and values travel as floats, exact: ids < 2^24). Every
 * rank gets the same cache. world 1 needs no reduce. */
teacher_cache_t *tcache_build_group(observer_t *teacher, const struct dataset *ds, int micro_batch, int ctx_len,
                                    int k, tcache_dtype_t dtype, const char teacher_id[65], int rank, int world,
                                    tcache_reduce_fn reduce, void *reduce_ctx, char *err);

/* Reads and checks a cache file (what names it in sentences). */
teacher_cache_t *tcache_load(const char *path, char *err);

/* The same from a file image in memory; takes ownership of buf (malloc'd)
 * even on failure. */
teacher_cache_t *tcache_from_bytes(void *buf, size_t len, const char *what, char *err);

void tcache_destroy(teacher_cache_t **self_p);

/* Writes the file atomically. */
int tcache_write(const teacher_cache_t *self, const char *path, char *err);

/* The file image (for broadcasting to the ranks of a group); borrowed. */
const void *tcache_bytes(const teacher_cache_t *self, size_t *len_out);

/* Refuses (ST_EINVAL, one sentence naming what, i.e. the file) a cache of
 * another teacher, other data, another sample count or another k. */
int tcache_check(const teacher_cache_t *self, const char *what, const char teacher_id[65], const char data_id[65],
                 int64_t n_samples, int k, char *err);

int tcache_k(const teacher_cache_t *self);
int64_t tcache_rows(const teacher_cache_t *self);
double tcache_mean_mass(const teacher_cache_t *self); /* share of the teacher's probability kept */

/* The cache a tuning job trains with (observer on, alpha < 1, top_k > 0):
 * DIR/teacher_topk.stk when it exists and matches the teacher, the training
 * data and top_k; otherwise (or when rebuild is set: a fresh start) the
 * teacher runs over the data now, split over the group's ranks
 * (tcache_build_group), and rank 0 writes the file. An existing file that
 * is damaged or made for another teacher or other data is refused with one
 * sentence unless rebuild is set. In a group every rank calls it; the ranks
 * agree (through reduce) on using the file only when every one of them read
 * it and found it valid, and fail together when one refused it. */
int tcache_for_job(observer_t *teacher, const jobspec_t *spec, const struct dataset *train, const char *out_dir,
                   int rebuild, int rank, int world, tcache_reduce_fn reduce, void *reduce_ctx, teacher_cache_t **out,
                   char *err);

/* The teacher's top-k of a micro-batch: for every row b (dataset sample
 * sample[b]) and every t with targets[b T + t] >= 0, writes k values to
 * val[(b T + t) k ..] and their ids to ids[..]; other positions are left as
 * they are. Fails when a sample's trained positions do not match its rows. */
int tcache_fill(const teacher_cache_t *self, const int32_t *targets, const int *sample, int B, int T, float *val,
                int32_t *ids, char *err);

#endif
