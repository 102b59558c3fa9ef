/*
 * jobs.c - the registry's records of models, datasets, jobs, job events and
 * checkpoints (SPEC section 5).
 *
 * The job state machine itself belongs to the coordinator (it decides when a
 * job is validated, queued, run, requeued or ended); the registry only keeps
 * the record and stamps times in one place:
 *
 *     validating -> queued -> running -> succeeded | failed | cancelled
 *                     ^          |
 *                     +----------+  (worker group lost: back to the queue)
 *
 *   - becoming "running" sets started and counts one more attempt;
 *   - becoming succeeded, failed or cancelled sets finished;
 *   - becoming "queued" again clears the worker group.
 * Event sequence numbers count up per job from 1 without gaps (max + 1 under
 * the write lock), so a watcher can ask for "everything after seq N".
 */
#include "store/registry_internal.h"
#include "common/st_err.h"

#include <stdlib.h>
#include <string.h>

/* ---- models and datasets ------------------------------------------------- */

static int s_hex64(const char *s)
{
    if (!s || strlen(s) != 64) return 0;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

typedef struct {
    const char *name, *sha, *config, *path;
} s_model_ctx;

static int s_register_model_txn(registry_t *self, void *vctx, char *err)
{
    s_model_ctx *c = vctx;
    sqlite3_stmt *st;
    int rc = reg_prepare(self, "SELECT name, sha256 FROM models WHERE name = ?1 OR sha256 = ?2", &st, err);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, c->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->sha, -1, SQLITE_STATIC);
    int same = 0;
    while ((rc = reg_step(self, st, "looking up a model", err)) == 1) {
        const char *n = reg_text(st, 0), *h = reg_text(st, 1);
        if (!strcmp(n, c->name) && !strcmp(h, c->sha)) same = 1;
        else if (!strcmp(n, c->name))
            rc = st_fail(err, ST_EINVAL, "model name '%s' is already registered for another file (sha256 %.12s)", n, h);
        else
            rc = st_fail(err, ST_EINVAL, "this model file (sha256 %.12s) is already registered as '%s'", h, n);
        if (rc < 0) break;
    }
    sqlite3_finalize(st);
    if (rc < 0 || same) return rc < 0 ? rc : ST_OK;
    if ((rc = reg_prepare(self, "INSERT INTO models(name, sha256, config, path, created) VALUES(?1, ?2, ?3, ?4, ?5)",
                          &st, err)))
        return rc;
    sqlite3_bind_text(st, 1, c->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->sha, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, c->config ? c->config : "{}", -1, SQLITE_STATIC);
    if (c->path) sqlite3_bind_text(st, 4, c->path, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, 4);
    sqlite3_bind_double(st, 5, reg_now());
    rc = reg_step(self, st, "registering a model", err);
    sqlite3_finalize(st);
    return rc < 0 ? rc : ST_OK;
}

int registry_register_model(registry_t *self, const char *name, const char *sha256, const char *config_json,
                            const char *path, char *err)
{
    int rc = registry_check_name("model name", name, 0, err);
    if (rc) return rc;
    if (!s_hex64(sha256)) return st_fail(err, ST_EINVAL, "model '%s': sha256 must be 64 lowercase hex characters", name);
    if (config_json) {
        json_t *j = json_loads(config_json, 0, NULL);
        int ok = j && json_is_object(j);
        json_decref(j);
        if (!ok) return st_fail(err, ST_EINVAL, "model '%s': config is not a JSON object", name);
    }
    s_model_ctx c = {name, sha256, config_json, path};
    return reg_txn(self, 1, s_register_model_txn, &c, err);
}

static json_t *s_model_row(sqlite3_stmt *st)
{
    json_t *cfg = json_loads(reg_text(st, 2), 0, NULL);
    json_t *o = json_pack("{s:s, s:s, s:o, s:s, s:f}", "name", reg_text(st, 0), "sha256", reg_text(st, 1), "config",
                          cfg ? cfg : json_object(), "path", reg_text(st, 3), "created", sqlite3_column_double(st, 4));
    return o;
}

typedef struct {
    const char *key; /* NULL: list all */
    json_t **out;
} s_models_ctx;

static int s_models_txn(registry_t *self, void *vctx, char *err)
{
    s_models_ctx *c = vctx;
    sqlite3_stmt *st;
    int rc = reg_prepare(self,
                         c->key ? "SELECT name, sha256, config, path, created FROM models WHERE name = ?1 OR sha256 = ?1"
                                : "SELECT name, sha256, config, path, created FROM models ORDER BY name",
                         &st, err);
    if (rc) return rc;
    if (c->key) sqlite3_bind_text(st, 1, c->key, -1, SQLITE_STATIC);
    json_t *arr = json_array();
    while ((rc = reg_step(self, st, "listing models", err)) == 1) json_array_append_new(arr, s_model_row(st));
    sqlite3_finalize(st);
    if (rc < 0) {
        json_decref(arr);
        return rc;
    }
    if (c->key) {
        if (json_array_size(arr) == 0) {
            json_decref(arr);
            return st_fail(err, ST_ENOTFOUND, "no model named '%s' in the registry", c->key);
        }
        json_t *one = json_incref(json_array_get(arr, 0));
        json_decref(arr);
        arr = one;
    }
    json_decref(*c->out);
    *c->out = arr;
    return ST_OK;
}

int registry_list_models(registry_t *self, json_t **out, char *err)
{
    *out = NULL;
    s_models_ctx c = {NULL, out};
    return reg_txn(self, 0, s_models_txn, &c, err);
}

int registry_find_model(registry_t *self, const char *name_or_sha, json_t **out, char *err)
{
    *out = NULL;
    s_models_ctx c = {name_or_sha, out};
    return reg_txn(self, 0, s_models_txn, &c, err);
}

typedef struct {
    const char *sha, *path, *counts;
} s_dataset_ctx;

static int s_dataset_txn(registry_t *self, void *vctx, char *err)
{
    s_dataset_ctx *c = vctx;
    sqlite3_stmt *st;
    int rc = reg_prepare(self,
                         "INSERT INTO datasets(sha256, path, counts, created) VALUES(?1, ?2, ?3, ?4)"
                         " ON CONFLICT(sha256) DO UPDATE SET path = excluded.path, counts = excluded.counts",
                         &st, err);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, c->sha, -1, SQLITE_STATIC);
    if (c->path) sqlite3_bind_text(st, 2, c->path, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, 2);
    sqlite3_bind_text(st, 3, c->counts ? c->counts : "{}", -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 4, reg_now());
    rc = reg_step(self, st, "recording a dataset", err);
    sqlite3_finalize(st);
    return rc < 0 ? rc : ST_OK;
}

int registry_record_dataset(registry_t *self, const char *sha256, const char *path, const char *counts_json,
                            char *err)
{
    if (!s_hex64(sha256)) return st_fail(err, ST_EINVAL, "dataset sha256 must be 64 lowercase hex characters");
    s_dataset_ctx c = {sha256, path, counts_json};
    return reg_txn(self, 1, s_dataset_txn, &c, err);
}

/* ---- jobs ---------------------------------------------------------------- */

static int s_valid_status(const char *s)
{
    static const char *const all[] = {"validating", "queued", "running", "succeeded", "failed", "cancelled"};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (s && !strcmp(s, all[i])) return 1;
    return 0;
}

typedef struct {
    const char *name, *spec, *status;
    int priority, gpus;
    int64_t *id;
    int64_t job;
    const char *group, *error;
    const char *kind, *json;
    int64_t *seq;
    int64_t step;
    const char *path;
} s_job_ctx;

static int s_job_create_txn(registry_t *self, void *vctx, char *err)
{
    s_job_ctx *c = vctx;
    sqlite3_stmt *st;
    int rc = reg_prepare(self,
                         "INSERT INTO jobs(name, spec, status, priority, gpus, created) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                         &st, err);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, c->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->spec, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, c->status, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, c->priority);
    sqlite3_bind_int(st, 5, c->gpus);
    sqlite3_bind_double(st, 6, reg_now());
    rc = reg_step(self, st, "creating a job", err);
    sqlite3_finalize(st);
    if (rc < 0) return rc;
    *c->id = sqlite3_last_insert_rowid(self->db);
    return ST_OK;
}

int registry_job_create(registry_t *self, const char *name, const char *spec_json, int priority, int gpus,
                        const char *status, int64_t *id_out, char *err)
{
    if (!status) status = "validating";
    if (!s_valid_status(status))
        return st_fail(err, ST_EINVAL, "'%s' is not a job status (%s)", status, REGISTRY_JOB_STATUSES);
    if (!name || !*name) return st_fail(err, ST_EINVAL, "a job needs a name");
    if (!spec_json) return st_fail(err, ST_EINVAL, "job '%s' has no spec", name);
    s_job_ctx c = {.name = name, .spec = spec_json, .status = status, .priority = priority, .gpus = gpus, .id = id_out};
    return reg_txn(self, 1, s_job_create_txn, &c, err);
}

static int s_job_status_txn(registry_t *self, void *vctx, char *err)
{
    s_job_ctx *c = vctx;
    const char *s = c->status;
    int running = !strcmp(s, "running"), queued = !strcmp(s, "queued");
    int ended = !strcmp(s, "succeeded") || !strcmp(s, "failed") || !strcmp(s, "cancelled");
    sqlite3_stmt *st;
    int rc = reg_prepare(self,
                         "UPDATE jobs SET status = ?2,"
                         " worker_group = CASE WHEN ?6 THEN NULL ELSE COALESCE(?3, worker_group) END,"
                         " error = COALESCE(?4, error),"
                         " started = CASE WHEN ?5 THEN ?8 ELSE started END,"
                         " attempt = attempt + ?5,"
                         " finished = CASE WHEN ?7 THEN ?8 ELSE finished END"
                         " WHERE id = ?1",
                         &st, err);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, c->job);
    sqlite3_bind_text(st, 2, s, -1, SQLITE_STATIC);
    if (c->group) sqlite3_bind_text(st, 3, c->group, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, 3);
    if (c->error) sqlite3_bind_text(st, 4, c->error, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, 4);
    sqlite3_bind_int(st, 5, running);
    sqlite3_bind_int(st, 6, queued && !c->group);
    sqlite3_bind_int(st, 7, ended);
    sqlite3_bind_double(st, 8, reg_now());
    rc = reg_step(self, st, "updating a job", err);
    sqlite3_finalize(st);
    if (rc < 0) return rc;
    if (sqlite3_changes(self->db) == 0) return st_fail(err, ST_ENOTFOUND, "no job %lld in the registry", (long long)c->job);
    return ST_OK;
}

int registry_job_set_status(registry_t *self, int64_t job, const char *status, const char *worker_group,
                            const char *error, char *err)
{
    if (!s_valid_status(status))
        return st_fail(err, ST_EINVAL, "'%s' is not a job status (%s)", status ? status : "(null)",
                       REGISTRY_JOB_STATUSES);
    s_job_ctx c = {.job = job, .status = status, .group = worker_group, .error = error};
    return reg_txn(self, 1, s_job_status_txn, &c, err);
}

static int s_job_event_txn(registry_t *self, void *vctx, char *err)
{
    s_job_ctx *c = vctx;
    sqlite3_stmt *st;
    int rc = reg_prepare(self,
                         "INSERT INTO job_events(job, seq, time, kind, data)"
                         " SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4 FROM job_events WHERE job = ?1"
                         " RETURNING seq",
                         &st, err);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, c->job);
    sqlite3_bind_double(st, 2, reg_now());
    sqlite3_bind_text(st, 3, c->kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, c->json ? c->json : "{}", -1, SQLITE_STATIC);
    int64_t seq = 0;
    rc = reg_step(self, st, "recording a job event", err);
    if (rc == 1) {
        seq = sqlite3_column_int64(st, 0);
        rc = reg_step(self, st, "recording a job event", err);
    }
    sqlite3_finalize(st);
    if (rc == ST_EINVAL) return st_fail(err, ST_ENOTFOUND, "no job %lld in the registry", (long long)c->job);
    if (rc < 0) return rc;
    if (c->seq) *c->seq = seq;
    return ST_OK;
}

int registry_job_add_event(registry_t *self, int64_t job, const char *kind, const char *json, int64_t *seq_out,
                           char *err)
{
    if (!kind || !*kind) return st_fail(err, ST_EINVAL, "a job event needs a kind");
    s_job_ctx c = {.job = job, .kind = kind, .json = json, .seq = seq_out};
    return reg_txn(self, 1, s_job_event_txn, &c, err);
}

#define JOB_COLS "id, name, spec, status, priority, gpus, created, started, finished, worker_group, error, attempt"

static json_t *s_opt_real(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL ? json_null() : json_real(sqlite3_column_double(st, col));
}

static json_t *s_opt_text(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL ? json_null() : json_string(reg_text(st, col));
}

static json_t *s_job_row(sqlite3_stmt *st)
{
    json_t *spec = json_loads(reg_text(st, 2), 0, NULL);
    json_t *o = json_pack("{s:I, s:s, s:o, s:s, s:i, s:i, s:f, s:i}", "id", (json_int_t)sqlite3_column_int64(st, 0),
                          "name", reg_text(st, 1), "spec", spec ? spec : json_string(reg_text(st, 2)), "status",
                          reg_text(st, 3), "priority", sqlite3_column_int(st, 4), "gpus", sqlite3_column_int(st, 5),
                          "created", sqlite3_column_double(st, 6), "attempt", sqlite3_column_int(st, 11));
    json_object_set_new(o, "started", s_opt_real(st, 7));
    json_object_set_new(o, "finished", s_opt_real(st, 8));
    json_object_set_new(o, "worker_group", s_opt_text(st, 9));
    json_object_set_new(o, "error", s_opt_text(st, 10));
    return o;
}

typedef struct {
    int64_t job;       /* > 0: one job */
    const char *filter;
    int64_t after;
    json_t **out;
} s_jobq_ctx;

static int s_job_query_txn(registry_t *self, void *vctx, char *err)
{
    s_jobq_ctx *c = vctx;
    sqlite3_stmt *st;
    const char *sql = c->job > 0      ? "SELECT " JOB_COLS " FROM jobs WHERE id = ?1"
                      : c->filter ? "SELECT " JOB_COLS " FROM jobs WHERE status = ?2 ORDER BY id DESC"
                                  : "SELECT " JOB_COLS " FROM jobs ORDER BY id DESC";
    int rc = reg_prepare(self, sql, &st, err);
    if (rc) return rc;
    if (c->job > 0) sqlite3_bind_int64(st, 1, c->job);
    if (c->filter) sqlite3_bind_text(st, 2, c->filter, -1, SQLITE_STATIC);
    json_t *arr = json_array();
    while ((rc = reg_step(self, st, "reading jobs", err)) == 1) json_array_append_new(arr, s_job_row(st));
    sqlite3_finalize(st);
    if (rc < 0) {
        json_decref(arr);
        return rc;
    }
    if (c->job > 0) {
        if (!json_array_size(arr)) {
            json_decref(arr);
            return st_fail(err, ST_ENOTFOUND, "no job %lld in the registry", (long long)c->job);
        }
        json_t *one = json_incref(json_array_get(arr, 0));
        json_decref(arr);
        arr = one;
    }
    json_decref(*c->out);
    *c->out = arr;
    return ST_OK;
}

int registry_job_get(registry_t *self, int64_t job, json_t **out, char *err)
{
    *out = NULL;
    if (job <= 0) return st_fail(err, ST_ENOTFOUND, "no job %lld in the registry", (long long)job);
    s_jobq_ctx c = {.job = job, .out = out};
    return reg_txn(self, 0, s_job_query_txn, &c, err);
}

int registry_job_list(registry_t *self, const char *status_filter, json_t **out, char *err)
{
    *out = NULL;
    if (status_filter && !s_valid_status(status_filter))
        return st_fail(err, ST_EINVAL, "'%s' is not a job status (%s)", status_filter, REGISTRY_JOB_STATUSES);
    s_jobq_ctx c = {.filter = status_filter, .out = out};
    return reg_txn(self, 0, s_job_query_txn, &c, err);
}

static int s_events_txn(registry_t *self, void *vctx, char *err)
{
    s_jobq_ctx *c = vctx;
    sqlite3_stmt *st;
    int rc = reg_prepare(self, "SELECT 1 FROM jobs WHERE id = ?1", &st, err);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, c->job);
    rc = reg_step(self, st, "reading a job", err);
    sqlite3_finalize(st);
    if (rc < 0) return rc;
    if (rc == 0) return st_fail(err, ST_ENOTFOUND, "no job %lld in the registry", (long long)c->job);
    if ((rc = reg_prepare(self, "SELECT seq, time, kind, data FROM job_events WHERE job = ?1 AND seq > ?2 ORDER BY seq",
                          &st, err)))
        return rc;
    sqlite3_bind_int64(st, 1, c->job);
    sqlite3_bind_int64(st, 2, c->after);
    json_t *arr = json_array();
    while ((rc = reg_step(self, st, "reading job events", err)) == 1) {
        json_t *data = json_loads(reg_text(st, 3), 0, NULL);
        json_array_append_new(arr, json_pack("{s:I, s:f, s:s, s:o}", "seq", (json_int_t)sqlite3_column_int64(st, 0),
                                             "time", sqlite3_column_double(st, 1), "kind", reg_text(st, 2), "data",
                                             data ? data : json_string(reg_text(st, 3))));
    }
    sqlite3_finalize(st);
    if (rc < 0) {
        json_decref(arr);
        return rc;
    }
    json_decref(*c->out);
    *c->out = arr;
    return ST_OK;
}

int registry_job_events(registry_t *self, int64_t job, int64_t after_seq, json_t **out, char *err)
{
    *out = NULL;
    s_jobq_ctx c = {.job = job, .after = after_seq, .out = out};
    return reg_txn(self, 0, s_events_txn, &c, err);
}

/* ---- checkpoints --------------------------------------------------------- */

static int s_ckpt_add_txn(registry_t *self, void *vctx, char *err)
{
    s_job_ctx *c = vctx;
    sqlite3_stmt *st;
    int rc = reg_prepare(self,
                         "INSERT INTO checkpoints(job, step, path, created) VALUES(?1, ?2, ?3, ?4)"
                         " ON CONFLICT(job, step) DO UPDATE SET path = excluded.path, created = excluded.created",
                         &st, err);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, c->job);
    sqlite3_bind_int64(st, 2, c->step);
    sqlite3_bind_text(st, 3, c->path, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 4, reg_now());
    rc = reg_step(self, st, "recording a checkpoint", err);
    sqlite3_finalize(st);
    if (rc == ST_EINVAL) return st_fail(err, ST_ENOTFOUND, "no job %lld in the registry", (long long)c->job);
    return rc < 0 ? rc : ST_OK;
}

int registry_checkpoint_add(registry_t *self, int64_t job, int64_t step, const char *path, char *err)
{
    if (!path || !*path) return st_fail(err, ST_EINVAL, "a checkpoint needs a path");
    s_job_ctx c = {.job = job, .step = step, .path = path};
    return reg_txn(self, 1, s_ckpt_add_txn, &c, err);
}

typedef struct {
    int64_t job, *step;
    char **path;
} s_ckpt_ctx;

static int s_ckpt_latest_txn(registry_t *self, void *vctx, char *err)
{
    s_ckpt_ctx *c = vctx;
    sqlite3_stmt *st;
    int rc = reg_prepare(self, "SELECT step, path FROM checkpoints WHERE job = ?1 ORDER BY step DESC LIMIT 1", &st, err);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, c->job);
    rc = reg_step(self, st, "reading checkpoints", err);
    if (rc == 1) {
        *c->step = sqlite3_column_int64(st, 0);
        free(*c->path);
        *c->path = strdup(reg_text(st, 1));
        rc = *c->path ? ST_OK : st_fail(err, ST_ENOMEM, "out of memory");
    } else if (rc == 0) {
        rc = st_fail(err, ST_ENOTFOUND, "job %lld has no checkpoint", (long long)c->job);
    }
    sqlite3_finalize(st);
    return rc;
}

int registry_checkpoint_latest(registry_t *self, int64_t job, int64_t *step_out, char **path_out, char *err)
{
    *path_out = NULL;
    s_ckpt_ctx c = {job, step_out, path_out};
    return reg_txn(self, 0, s_ckpt_latest_txn, &c, err);
}
