/*
 * registry.h - the statetune registry (SPEC section 5): one SQLite database
 * holding models, datasets, jobs and their events, checkpoints, and every
 * tuned state, versioned per name, with its metrics and aliases.
 *
 * The coordinator is the only writer; everything else opens it read-only
 * through registry_read.h (included here). Each writer call is one
 * BEGIN IMMEDIATE transaction, retried as a whole when the database is busy,
 * so a caller never sees SQLITE_BUSY and a crash at any instant leaves either
 * all of a call's rows or none of them.
 *
 * Lists and records that go straight into JSON replies are returned as jansson
 * objects (caller owns them, json_decref); everything else is plain C.
 */
#ifndef ST_REGISTRY_H
#define ST_REGISTRY_H

#include "store/registry_read.h"

#include <stdint.h>

/* ---- models and datasets ------------------------------------------------- */

/* Records a model file under a name. The sha256 identifies the model: the same
 * file registered again under the same name is a no-op; a name already used
 * by another file, or a file already registered under another name, is
 * ST_EINVAL. config_json is the inferred configuration (a JSON object text). */
int registry_register_model(registry_t *self, const char *name, const char *sha256,
                            const char *config_json, const char *path, char *err);

/* Finds a model by name or sha256; *out is {name, sha256, config, path, created}. */
int registry_find_model(registry_t *self, const char *name_or_sha, json_t **out, char *err);

/* Records a dataset (idempotent per sha256); counts_json e.g. {"samples":..,"tokens":..}. */
int registry_record_dataset(registry_t *self, const char *sha256, const char *path,
                            const char *counts_json, char *err);

/* ---- jobs ---------------------------------------------------------------- */

/* The job states of SPEC section 5. The coordinator owns the state machine;
 * the registry records it and stamps the times (started when a job becomes
 * running, which also counts an attempt; finished when it ends). */
#define REGISTRY_JOB_STATUSES "validating|queued|running|succeeded|failed|cancelled"

/* Creates a job in status "validating" (or the given status) and returns its id. */
int registry_job_create(registry_t *self, const char *name, const char *spec_json, int priority,
                        int gpus, const char *status, int64_t *id_out, char *err);

/* Moves a job to status; worker_group and error may be NULL (kept as they were).
 * An unknown status is ST_EINVAL; an unknown job ST_ENOTFOUND. */
int registry_job_set_status(registry_t *self, int64_t job, const char *status,
                            const char *worker_group, const char *error, char *err);

/* Appends an event (kind e.g. "progress", "metrics", "message"; data a JSON
 * object text) with the next sequence number for that job. */
int registry_job_add_event(registry_t *self, int64_t job, const char *kind, const char *json,
                           int64_t *seq_out, char *err);

/* One job as {id, name, spec, status, priority, gpus, created, started,
 * finished, worker_group, error, attempt}. */
int registry_job_get(registry_t *self, int64_t job, json_t **out, char *err);

/* Jobs, newest first; status_filter NULL for all, else one status. */
int registry_job_list(registry_t *self, const char *status_filter, json_t **out, char *err);

/* Events of a job with seq > after_seq, in order, as [{seq, time, kind, data}]. */
int registry_job_events(registry_t *self, int64_t job, int64_t after_seq, json_t **out, char *err);

/* Records a checkpoint file written (atomically) for a job at a step. */
int registry_checkpoint_add(registry_t *self, int64_t job, int64_t step, const char *path, char *err);

/* The latest checkpoint of a job: ST_ENOTFOUND when there is none. path_out
 * gets a malloc'd copy (caller frees). */
int registry_checkpoint_latest(registry_t *self, int64_t job, int64_t *step_out, char **path_out,
                               char *err);

/* ---- states -------------------------------------------------------------- */

/* One evaluation metric of a new state version, beside the untuned baseline. */
typedef struct {
    const char *name;   /* "eval_loss", "perplexity", "token_accuracy", "exact_match", ... */
    double value;       /* tuned */
    double baseline;    /* untuned, same eval set */
    int has_baseline;   /* 0 when no baseline was measured */
} registry_metric_t;

/* A state to add. data holds n_layer * n_head * head_size^2 floats. */
typedef struct {
    const char *name;                 /* state name ([A-Za-z0-9._-], not starting with '.') */
    const char *model_sha256;         /* model it belongs to */
    int64_t job_id;                   /* producing job, 0 for an import */
    int n_layer, n_head, head_size;   /* shape */
    const float *data;                /* [L, H, N, N], official layout */
    int kernel_features;              /* 0, or M of a kernel-expanded U0 (refuses export) */
    const float *kstate;              /* with kernel_features: U0 (L, H, N, M) then the support
                                         vectors (L, H, M, N), stored as one blob; NULL = not stored */
    float kernel_gamma;               /* with kstate: the RBF width, > 0 */
    const registry_metric_t *metrics; /* n_metrics entries, may be NULL */
    int n_metrics;
    const char *alias;                /* alias to move to the new version, or NULL */
    int finish_job;                   /* 1: also mark job_id succeeded, in the same transaction */
} registry_new_state_t;

/* Adds the next version of a state in ONE transaction: the blob (stored once
 * per content), the version row (max + 1 for the name), its metrics and the
 * alias move with its history. *version_out gets the new version.
 *
 * With finish_job and a job_id, the same transaction marks the job succeeded,
 * and the call is idempotent per job: when that job has already produced a
 * version (a result delivered twice, or again after a coordinator crash),
 * nothing is written and *version_out gets the existing version. */
int registry_add_state(registry_t *self, const registry_new_state_t *s, int *version_out, char *err);

/* The state version a job produced; ST_ENOTFOUND when it produced none. */
int registry_state_of_job(registry_t *self, int64_t job_id, registry_state_info_t *out, char *err);

/* Points NAME@alias at an existing version, recording the move in the alias
 * history (a move to the version it already names records nothing). */
int registry_set_alias(registry_t *self, const char *name, const char *alias, int version, char *err);

/* The alias history of a name, oldest first: [{alias, old_version (null when
 * new), new_version, time}]. */
int registry_alias_history(registry_t *self, const char *name, json_t **out, char *err);

/* Checks a state/alias name: [A-Za-z0-9._-]{1,127}, first character a letter,
 * digit or '_'; aliases additionally must not start with a digit. */
int registry_check_name(const char *what, const char *name, int is_alias, char *err);

#endif
