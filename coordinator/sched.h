/*
 * sched.h - the coordinator's jobs: the state machine, the priority queue and
 * the matching of jobs to worker groups (SPEC sections 5-7). The registry is
 * the record (every transition is written there first); sched_t keeps the
 * jobs that are not finished in memory so that scheduling needs no SQL.
 *
 * The state diagram and the function of each transition are at the top of
 * sched.c.
 */
#ifndef ST_COORD_SCHED_H
#define ST_COORD_SCHED_H

#include "store/registry.h"

#include <jansson.h>
#include <stdint.h>

typedef struct sched sched_t;

/* A job handed to a group (sched_assign fills it; strings owned by sched and
 * valid until the next call). */
typedef struct {
    int64_t id;
    const char *spec_json; /* canonical job spec */
    const char *out_dir;   /* output and checkpoint directory of the job */
    int attempt;           /* 1 for the first run, +1 per requeue */
} sched_assignment_t;

/* Creates the scheduler over an open registry (borrowed) and recovers its
 * state: queued jobs stay queued, running ones go back to queued (their groups
 * may be gone; a group still running one claims it back with hello), jobs
 * caught validating are validated again. jobs_dir is where each job's output
 * and checkpoint directory is made (<jobs_dir>/<id>). */
sched_t *sched_new(registry_t *reg, const char *jobs_dir, char *err);
void sched_destroy(sched_t **self_p);

/* Confines every path a submitted job reads (model, tokenizer, train, eval,
 * observer.teacher) to these folders, symlinks and '..' resolved (SPEC 9).
 * Without a call, paths are not confined. */
int sched_set_data_roots(sched_t *self, const char *const *roots, int n, char *err);

/* Checks that path (the value of key in a job) is a regular file - never a
 * FIFO or device, whose open() could block the coordinator - and, when
 * confine is nonzero and data roots are set, that it lies inside one. */
int sched_check_path(sched_t *self, const char *key, const char *path, int confine, char *err);

/* validating -> queued | failed. spec_json is untrusted. On success *id_out is
 * the new job's id. A job whose inputs fail validation is recorded as failed
 * and the call returns the validation error (with *id_out set, >0). */
int sched_submit(sched_t *self, const char *spec_json, int64_t *id_out, char *err);

/* Picks the best queued job a group can run (highest priority, then oldest;
 * the job's gpus <= the group's, same backend, and its global batch splits
 * evenly over the group's ranks) and moves it to running on that group.
 * ST_ENOTFOUND when there is nothing for it. */
int sched_assign(sched_t *self, const char *group, int group_gpus, const char *backend,
                 sched_assignment_t *out, char *err);

/* A group that says hello after a coordinator restart still running job:
 * queued -> running on that group, if the job is still queued. ST_EBUSY when
 * the job is no longer this group's to run (it should stop). */
int sched_reclaim(sched_t *self, int64_t job, const char *group, char *err);

/* running -> queued: the group running it was lost. */
int sched_requeue(sched_t *self, int64_t job, const char *why, char *err);

/* Cancels: queued -> cancelled at once; running -> cancel requested (the
 * caller tells the group; *group_out gets its id, "" when none). */
int sched_cancel(sched_t *self, int64_t job, char group_out[128], char *err);

/* running -> succeeded: registers the state with its metrics and baseline and
 * moves the job's alias (one registry transaction), then records the job's
 * end. data is [layers, heads, head_size, head_size]. A repeated result for a
 * job already succeeded returns its version again. */
int sched_succeed(sched_t *self, int64_t job, const char *group, json_t *metrics, const char *model_sha256,
                  int layers, int heads, int head_size, const float *data, int *version_out, char *err);

/* sched_succeed for a state with a kernel-expanded part (SPEC section 4):
 * kstate holds U0 (L, H, N, M) then the support vectors (L, H, M, N), stored
 * in the registry beside S0 in the same transaction; features M and gamma
 * describe it. kstate NULL is sched_succeed. */
int sched_succeed_ks(sched_t *self, int64_t job, const char *group, json_t *metrics, const char *model_sha256,
                     int layers, int heads, int head_size, const float *data, int features, float gamma,
                     const float *kstate, int *version_out, char *err);

/* running -> failed, or -> cancelled when cancelled is nonzero or a cancel was
 * requested. */
int sched_fail(sched_t *self, int64_t job, const char *group, const char *error, int cancelled, char *err);

/* Records a progress/eval/checkpoint notification of a running job as an
 * event (and keeps the latest progress for status). Only the group running
 * the job may report on it (ST_EINVAL otherwise). */
int sched_event(sched_t *self, int64_t job, const char *group, const char *kind, json_t *data, char *err);

/* The job record for replies (registry row plus live progress); caller
 * decrefs. */
int sched_job_json(sched_t *self, int64_t job, json_t **out, char *err);

/* All jobs, newest first. */
int sched_jobs_json(sched_t *self, json_t **out, char *err);

/* The id of the job a group is running, or 0. */
int64_t sched_job_of_group(sched_t *self, const char *group);

/* Whether a group of group_gpus ranks on backend could run a queued job
 * (the matching rule of sched_assign, without the hold after a restart).
 * -1 when the job is not queued. */
int sched_job_fits(sched_t *self, int64_t job, int group_gpus, const char *backend);

/* What a queued job needs, in words ("a cpu group of at least 2 ranks that
 * divide its global batch of 16"), for status replies. */
int sched_job_needs(sched_t *self, int64_t job, char *buf, size_t len);

/* Whether a cancel was requested for a running job. */
int sched_cancel_requested(sched_t *self, int64_t job);

#endif
