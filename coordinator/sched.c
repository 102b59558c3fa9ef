/*
 * sched.c - the job state machine, the queue and job-to-group matching (see
 * sched.h). The registry holds the truth; the array here mirrors the jobs
 * that are not finished, so choosing the next job is a scan in memory.
 *
 * Job states (SPEC section 5) and the function making each transition:
 *
 *                 sched_submit            sched_submit
 *   (new) ───────────────> VALIDATING ─────────────────> QUEUED <──────────────┐
 *                              │ sched_submit              │  │                 │ sched_requeue
 *                              │ (inputs refused)          │  │ sched_assign    │ (group lost; or
 *                              v                           │  v sched_reclaim   │  sched_new on a
 *                           FAILED <───── sched_fail ───── │ RUNNING ───────────┘  restart)
 *                                                          │  │   │
 *                               sched_cancel (queued)      │  │   │ sched_succeed
 *                  CANCELLED <─────────────────────────────┘  │   └────────────> SUCCEEDED
 *                      ^                                      │
 *                      └── sched_fail (cancel requested, ─────┘
 *                          or the group reports it cancelled)
 *
 * Invariants:
 *   1. A job is in the in-memory array iff its registry status is validating,
 *      queued or running; every transition writes the registry first and
 *      changes memory only when that write succeeded.
 *   2. A running job has exactly one group (its `group`), and a group runs at
 *      most one job; reports from any other group are refused.
 *   3. Cancelling a running job only sets cancel_requested: the job ends
 *      (cancelled) when its group stops and says so, or when the group is lost.
 *   4. Requeued jobs keep their id, spec and output directory, so the next
 *      group resumes from the checkpoints already there (shared filesystem).
 *   5. After a restart, a job that was running is held back from other groups
 *      for RECLAIM_GRACE_MS, so the group still running it can reclaim it
 *      (sched_reclaim) before anyone else starts it a second time.
 *
 * Validation runs in the broker's thread: it opens the model header and reads
 * the datasets, which for realistic sizes takes well under a second; the cost
 * is that the broker answers nothing meanwhile (heartbeats have 3 s of slack).
 */
#include "coordinator/sched.h"

#include "common/st_err.h"
#include "common/st_fs.h"
#include "data/jobspec.h"

#include "model/model.h"
#include "model/tensorfile.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define JOB_GROW 16
/* After a restart, a job that was running stays reserved this long for the
 * group that was running it (it reclaims it with its next hello, within a
 * heartbeat or two), so the job is not started twice. */
#define RECLAIM_GRACE_MS 5000
#define PROGRESS_SAVE_MS 250 /* at most ~4 progress events a second per job on record */

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef enum { JOB_VALIDATING, JOB_QUEUED, JOB_RUNNING } job_status_t;

typedef struct {
    int64_t id;            /* registry job id; also FIFO order */
    job_status_t status;   /* one of the three live states */
    char name[128];        /* state name the job produces */
    char alias[128];       /* alias moved to its state ("" = none) */
    char backend[8];       /* "cpu" or "cuda" */
    int priority;          /* higher runs first */
    int gpus;              /* ranks/GPUs it asks for */
    int global_batch;      /* samples per step: must split evenly over a group's ranks */
    int attempt;           /* times it became running */
    int cancel_requested;  /* a cancel arrived while running */
    char group[128];       /* group running it ("" unless running) */
    char *spec_json;       /* canonical spec, owned */
    char *out_dir;         /* <jobs_dir>/<id>, owned */
    json_t *progress;      /* latest progress notification, owned (NULL = none) */
    int64_t hold_until_ms; /* not assigned before this (its old group may reclaim it) */
    int64_t progress_saved_ms; /* when a progress event of it was last written */
    int model_layers;      /* the model's L and H, for checking a result (0 = unknown) */
    int model_heads;
} job_t;

#define MAX_DATA_ROOTS 16

struct sched {
    registry_t *reg;       /* borrowed */
    char *roots[MAX_DATA_ROOTS]; /* --data-root folders, resolved (realpath), owned */
    int n_roots;           /* 0 = paths are not confined */
    char *jobs_dir;        /* parent of every job's directory, owned */
    job_t *jobs;           /* live jobs (invariant 1) */
    size_t n_jobs, cap_jobs;
};

static job_t *s_find(sched_t *self, int64_t id)
{
    for (size_t i = 0; i < self->n_jobs; i++)
        if (self->jobs[i].id == id) return &self->jobs[i];
    return NULL;
}

/* The matching rule: enough ranks, the same backend, and a global batch
 * that splits evenly over the group's ranks. */
static int s_fits(const job_t *j, int group_gpus, const char *backend)
{
    return j->gpus <= group_gpus && !strcmp(j->backend, backend) &&
           (j->global_batch <= 0 || j->global_batch % group_gpus == 0);
}

static void s_remove(sched_t *self, int64_t id)
{
    for (size_t i = 0; i < self->n_jobs; i++) {
        if (self->jobs[i].id != id) continue;
        free(self->jobs[i].spec_json);
        free(self->jobs[i].out_dir);
        json_decref(self->jobs[i].progress);
        self->jobs[i] = self->jobs[--self->n_jobs];
        return;
    }
}

/* The layers and heads of a model file (its state's shape), read from the
 * tensor shapes without loading weights; zeros when it cannot be read (a
 * result is then not checked against it). */
static void s_model_shape(const char *path, int *layers, int *heads)
{
    char err[ST_ERR_LEN];
    *layers = *heads = 0;
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return; /* never open a FIFO */
    tensorfile_t *tf = tensorfile_open(path, err);
    rwkv_config_t cfg;
    if (tf && rwkv_config_from_tensorfile(tf, &cfg, err) == ST_OK) {
        *layers = cfg.n_layer;
        *heads = cfg.n_head;
    }
    tensorfile_close(&tf);
}

/* Adds a live job from its canonical spec; the spec's fields that scheduling
 * needs are read once here. */
static job_t *s_add(sched_t *self, int64_t id, const char *spec_json, job_status_t status, int attempt, char *err)
{
    json_error_t jerr;
    json_t *spec = json_loads(spec_json, 0, &jerr);
    if (!json_is_object(spec)) {
        json_decref(spec);
        st_fail(err, ST_EFORMAT, "job %lld: its stored spec is not a JSON object", (long long)id);
        return NULL;
    }
    if (self->n_jobs == self->cap_jobs) {
        size_t cap = self->cap_jobs + JOB_GROW;
        job_t *p = realloc(self->jobs, cap * sizeof *p);
        if (!p) {
            json_decref(spec);
            st_fail(err, ST_ENOMEM, "out of memory");
            return NULL;
        }
        self->jobs = p;
        self->cap_jobs = cap;
    }
    job_t *j = &self->jobs[self->n_jobs];
    memset(j, 0, sizeof *j);
    j->id = id;
    j->status = status;
    j->attempt = attempt;
    const char *s = json_string_value(json_object_get(spec, "name"));
    snprintf(j->name, sizeof j->name, "%s", s ? s : "");
    s = json_string_value(json_object_get(spec, "alias"));
    snprintf(j->alias, sizeof j->alias, "%s", s ? s : "");
    s = json_string_value(json_object_get(spec, "backend"));
    snprintf(j->backend, sizeof j->backend, "%s", s ? s : "cpu");
    json_t *v = json_object_get(spec, "priority");
    j->priority = json_is_integer(v) ? (int)json_integer_value(v) : 0;
    v = json_object_get(spec, "gpus");
    j->gpus = json_is_integer(v) ? (int)json_integer_value(v) : 1;
    v = json_object_get(spec, "global_batch");
    j->global_batch = json_is_integer(v) ? (int)json_integer_value(v) : 0;
    s = json_string_value(json_object_get(spec, "model"));
    if (s) s_model_shape(s, &j->model_layers, &j->model_heads);
    json_decref(spec);
    j->spec_json = strdup(spec_json);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%lld", self->jobs_dir, (long long)id);
    j->out_dir = strdup(dir);
    if (!j->spec_json || !j->out_dir) {
        free(j->spec_json);
        free(j->out_dir);
        st_fail(err, ST_ENOMEM, "out of memory");
        return NULL;
    }
    self->n_jobs++;
    return j;
}

int sched_check_path(sched_t *self, const char *key, const char *path, int confine, char *err)
{
    struct stat st;
    if (!path || !*path) return st_fail(err, ST_EINVAL, "job spec: '%s' names no file", key);
    if (stat(path, &st) != 0) return st_fail(err, ST_ENOTFOUND, "job spec: '%s' ('%s'): %s", key, path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return st_fail(err, ST_EINVAL, "job spec: '%s' ('%s') is not a regular file (a FIFO, device or folder)", key,
                       path);
    if (!confine || self->n_roots == 0) return ST_OK;
    char real[PATH_MAX];
    if (!realpath(path, real)) return st_fail(err, ST_EINVAL, "job spec: '%s' ('%s'): %s", key, path, strerror(errno));
    for (int i = 0; i < self->n_roots; i++) {
        size_t n = strlen(self->roots[i]);
        if (!strncmp(real, self->roots[i], n) && (real[n] == '/' || real[n] == 0 || (n == 1 && real[0] == '/')))
            return ST_OK;
    }
    char roots[ST_ERR_LEN / 2] = "";
    for (int i = 0; i < self->n_roots; i++) {
        size_t len = strlen(roots);
        snprintf(roots + len, sizeof roots - len, "%s'%s'", i ? ", " : "", self->roots[i]);
    }
    return st_fail(err, ST_EINVAL, "job spec: '%s' ('%s', resolving to '%s') is outside the data roots %.200s: not allowed",
                   key, path, real, roots);
}

int sched_set_data_roots(sched_t *self, const char *const *roots, int n, char *err)
{
    if (n > MAX_DATA_ROOTS) return st_fail(err, ST_EINVAL, "at most %d data roots", MAX_DATA_ROOTS);
    for (int i = 0; i < n; i++) {
        char real[PATH_MAX];
        struct stat st;
        if (!realpath(roots[i], real) || stat(real, &st) != 0 || !S_ISDIR(st.st_mode))
            return st_fail(err, ST_EINVAL, "data root '%s' is not a folder", roots[i]);
        self->roots[self->n_roots] = strdup(real);
        if (!self->roots[self->n_roots]) return st_fail(err, ST_ENOMEM, "out of memory");
        self->n_roots++;
    }
    return ST_OK;
}

/* Parses and checks an untrusted spec (every key, then the inputs: the model
 * opens, the tokenizer fits it, every dataset line parses) and returns the
 * canonical JSON the workers will get (caller frees). */
static int s_validate(sched_t *self, const char *spec_json, char **canon_out, char *err)
{
    *canon_out = NULL;
    jobspec_t *spec = NULL;
    /* The client resolved every path to an absolute one before sending;
     * anything relative is taken relative to the root, never to our cwd. */
    int rc = jobspec_parse_string(spec_json, "/", &spec, err);
    if (rc) return rc;
    /* Before anything opens a file: every path is a regular file (open() on
     * a FIFO would block this thread, and with it the whole coordinator)
     * inside the data roots, when there are any. */
    if (spec->model_path) rc = sched_check_path(self, "model", spec->model_path, 1, err);
    if (rc == ST_OK && spec->tokenizer && strcmp(spec->tokenizer, "bytes") != 0)
        rc = sched_check_path(self, "tokenizer", spec->tokenizer, 1, err);
    if (rc == ST_OK) rc = sched_check_path(self, "train", spec->train, 1, err);
    if (rc == ST_OK && spec->eval) rc = sched_check_path(self, "eval", spec->eval, 1, err);
    if (rc == ST_OK && spec->observer.teacher_path)
        rc = sched_check_path(self, "observer.teacher", spec->observer.teacher_path, 1, err);
    if (rc == ST_OK && spec->observer.teacher_state)
        rc = sched_check_path(self, "observer.teacher_state", spec->observer.teacher_state, 1, err);
    if (rc == ST_OK && spec->model_name) { /* a registered model: its file is on record here */
        json_t *model = NULL;
        rc = registry_find_model(self->reg, spec->model_name, &model, err);
        const char *path = json_string_value(json_object_get(model, "path"));
        if (rc == ST_OK && !path)
            rc = st_fail(err, ST_ENOTFOUND, "registered model '%s' has no file path", spec->model_name);
        /* registered by the operator: not confined, but still a regular file */
        if (rc == ST_OK) rc = sched_check_path(self, "model", path, 0, err);
        if (rc == ST_OK) rc = jobspec_set_model(spec, path, err);
        json_decref(model);
    } else if (rc == ST_OK && !spec->tokenizer) {
        rc = jobspec_set_model(spec, NULL, err);
    }
    if (rc == ST_OK) rc = jobspec_check_inputs(spec, err);
    if (rc == ST_OK) {
        *canon_out = jobspec_to_json(spec);
        if (!*canon_out) rc = st_fail(err, ST_ENOMEM, "cannot encode the job spec");
    }
    jobspec_destroy(&spec);
    return rc;
}

/* validating -> queued | failed, for a job already recorded as validating. */
static int s_validate_job(sched_t *self, int64_t id, const char *spec_json, char *err)
{
    char *canon = NULL;
    int rc = s_validate(self, spec_json, &canon, err);
    char e2[ST_ERR_LEN];
    if (rc) {
        char why[ST_ERR_LEN];
        snprintf(why, sizeof why, "%s", err);
        if (registry_job_set_status(self->reg, id, "failed", NULL, why, e2))
            st_wrap(err, rc, "job %lld (its failure could not be recorded: %.200s): ", (long long)id, e2);
        return rc;
    }
    rc = registry_job_set_status(self->reg, id, "queued", NULL, NULL, err);
    if (rc == ST_OK && !s_add(self, id, canon, JOB_QUEUED, 0, err)) rc = ST_ENOMEM;
    free(canon);
    return rc;
}

static int s_spec_from_record(json_t *rec, char **out)
{
    json_t *spec = json_object_get(rec, "spec");
    if (json_is_string(spec))
        *out = strdup(json_string_value(spec));
    else if (json_is_object(spec))
        *out = json_dumps(spec, JSON_COMPACT | JSON_SORT_KEYS);
    else
        *out = NULL;
    return *out ? ST_OK : ST_EFORMAT;
}

/* Brings back the live jobs after a (re)start: SPEC section 9, a killed
 * coordinator loses no job. */
static int s_recover(sched_t *self, char *err)
{
    static const char *statuses[] = {"queued", "running", "validating"};
    /* A crash between registering a job's state and recording the job's end
     * (two transactions) leaves a running job whose state is on record:
     * finish it instead of running it again (which would make a second
     * version). */
    json_t *states = NULL;
    int rc0 = registry_list_states(self->reg, &states, err);
    if (rc0) return rc0;
    for (size_t k = 0; k < 3; k++) {
        json_t *list = NULL;
        int rc = registry_job_list(self->reg, statuses[k], &list, err);
        if (rc) return rc;
        /* newest first in the registry; oldest first here keeps FIFO order */
        for (size_t i = json_array_size(list); i-- > 0;) {
            json_t *rec = json_array_get(list, i);
            int64_t id = json_integer_value(json_object_get(rec, "id"));
            int attempt = (int)json_integer_value(json_object_get(rec, "attempt"));
            char *spec = NULL;
            if (s_spec_from_record(rec, &spec)) {
                char e2[ST_ERR_LEN];
                registry_job_set_status(self->reg, id, "failed", NULL, "its stored spec is unreadable", e2);
                continue;
            }
            int has_state = 0;
            size_t si;
            json_t *st;
            json_array_foreach(states, si, st) has_state |= json_integer_value(json_object_get(st, "job_id")) == id;
            if (has_state && k == 1) {
                rc = registry_job_set_status(self->reg, id, "succeeded", NULL, NULL, err);
            } else if (k == 2) {
                char e2[ST_ERR_LEN];
                s_validate_job(self, id, spec, e2); /* a refusal is recorded on the job */
            } else {
                if (k == 1) {
                    rc = registry_job_set_status(self->reg, id, "queued", NULL, NULL, err);
                    if (rc == ST_OK) {
                        json_t *ev = json_pack("{s:s}", "message", "requeued: the coordinator restarted");
                        char *t = json_dumps(ev, JSON_COMPACT);
                        registry_job_add_event(self->reg, id, "message", t, NULL, err);
                        free(t);
                        json_decref(ev);
                    }
                }
                job_t *j = rc == ST_OK ? s_add(self, id, spec, JOB_QUEUED, attempt, err) : NULL;
                if (rc == ST_OK && !j) rc = ST_ENOMEM;
                if (j && k == 1) j->hold_until_ms = s_now_ms() + RECLAIM_GRACE_MS;
            }
            free(spec);
            if (rc) {
                json_decref(list);
                json_decref(states);
                return rc;
            }
        }
        json_decref(list);
    }
    json_decref(states);
    return ST_OK;
}

sched_t *sched_new(registry_t *reg, const char *jobs_dir, char *err)
{
    sched_t *self = calloc(1, sizeof *self);
    if (!self) {
        st_fail(err, ST_ENOMEM, "out of memory");
        return NULL;
    }
    self->reg = reg;
    self->jobs_dir = strdup(jobs_dir);
    if (!self->jobs_dir || st_mkdirs(jobs_dir, err) || s_recover(self, err)) {
        if (!self->jobs_dir) st_fail(err, ST_ENOMEM, "out of memory");
        sched_destroy(&self);
        return NULL;
    }
    return self;
}

void sched_destroy(sched_t **self_p)
{
    if (!self_p || !*self_p) return;
    sched_t *self = *self_p;
    for (size_t i = 0; i < self->n_jobs; i++) {
        free(self->jobs[i].spec_json);
        free(self->jobs[i].out_dir);
        json_decref(self->jobs[i].progress);
    }
    free(self->jobs);
    free(self->jobs_dir);
    for (int i = 0; i < self->n_roots; i++) free(self->roots[i]);
    free(self);
    *self_p = NULL;
}

int sched_submit(sched_t *self, const char *spec_json, int64_t *id_out, char *err)
{
    *id_out = 0;
    /* The job is recorded with its canonical spec (every default filled, the
     * registered model resolved to its file), so what a group gets after any
     * restart is exactly what was validated. A refused spec is recorded as
     * sent, with the reason. */
    char *canon = NULL;
    char verr[ST_ERR_LEN];
    int vrc = s_validate(self, spec_json, &canon, verr);
    const char *stored = vrc ? spec_json : canon;
    json_error_t jerr;
    json_t *spec = json_loads(stored, 0, &jerr);
    const char *name = json_string_value(json_object_get(spec, "name"));
    json_t *jp = json_object_get(spec, "priority"), *jg = json_object_get(spec, "gpus");
    int priority = json_is_integer(jp) ? (int)json_integer_value(jp) : 0;
    int gpus = json_is_integer(jg) ? (int)json_integer_value(jg) : 1;
    int64_t id = 0;
    int rc = registry_job_create(self->reg, name ? name : "", stored, priority, gpus, "validating", &id, err);
    json_decref(spec);
    if (rc == ST_OK) {
        *id_out = id;
        rc = registry_job_set_status(self->reg, id, vrc ? "failed" : "queued", NULL, vrc ? verr : NULL, err);
    }
    if (rc == ST_OK && vrc) rc = st_fail(err, vrc, "%s", verr);
    if (rc == ST_OK && !s_add(self, id, canon, JOB_QUEUED, 0, err)) rc = ST_ENOMEM;
    free(canon);
    return rc;
}

int sched_assign(sched_t *self, const char *group, int group_gpus, const char *backend, sched_assignment_t *out,
                 char *err)
{
    job_t *best = NULL;
    for (size_t i = 0; i < self->n_jobs; i++) {
        job_t *j = &self->jobs[i];
        /* a larger group runs the same global batch, split over more ranks
         * (SPEC 7: same result), which needs an even split (s_fits) */
        if (j->status != JOB_QUEUED || !s_fits(j, group_gpus, backend)) continue;
        if (j->hold_until_ms && s_now_ms() < j->hold_until_ms) continue;
        if (!best || j->priority > best->priority || (j->priority == best->priority && j->id < best->id)) best = j;
    }
    if (!best) return st_fail(err, ST_ENOTFOUND, "no queued job fits group '%s'", group);
    int rc = registry_job_set_status(self->reg, best->id, "running", group, NULL, err);
    if (rc) return rc;
    best->status = JOB_RUNNING;
    best->attempt++;
    best->cancel_requested = 0;
    snprintf(best->group, sizeof best->group, "%s", group);
    out->id = best->id;
    out->spec_json = best->spec_json;
    out->out_dir = best->out_dir;
    out->attempt = best->attempt;
    return ST_OK;
}

int sched_reclaim(sched_t *self, int64_t job, const char *group, char *err)
{
    job_t *j = s_find(self, job);
    if (j && j->status == JOB_RUNNING && !strcmp(j->group, group)) return ST_OK;
    if (!j || j->status != JOB_QUEUED)
        return st_fail(err, ST_EBUSY, "job %lld is no longer group '%s''s to run", (long long)job, group);
    int rc = registry_job_set_status(self->reg, job, "running", group, NULL, err);
    if (rc) return rc;
    j->status = JOB_RUNNING;
    j->attempt++;
    snprintf(j->group, sizeof j->group, "%s", group);
    return ST_OK;
}

static void s_message_event(sched_t *self, int64_t job, const char *text)
{
    json_t *ev = json_pack("{s:s}", "message", text);
    char *t = json_dumps(ev, JSON_COMPACT);
    char e2[ST_ERR_LEN];
    if (t) registry_job_add_event(self->reg, job, "message", t, NULL, e2);
    free(t);
    json_decref(ev);
}

int sched_requeue(sched_t *self, int64_t job, const char *why, char *err)
{
    job_t *j = s_find(self, job);
    if (!j || j->status != JOB_RUNNING) return st_fail(err, ST_EINVAL, "job %lld is not running", (long long)job);
    if (j->cancel_requested) /* invariant 3: nobody will report it now */
        return sched_fail(self, job, j->group, why, 1, err);
    int rc = registry_job_set_status(self->reg, job, "queued", NULL, NULL, err);
    if (rc) return rc;
    j->status = JOB_QUEUED;
    j->group[0] = 0;
    char text[ST_ERR_LEN + 32];
    snprintf(text, sizeof text, "requeued: %s", why);
    s_message_event(self, job, text);
    return ST_OK;
}

int sched_cancel(sched_t *self, int64_t job, char group_out[128], char *err)
{
    group_out[0] = 0;
    job_t *j = s_find(self, job);
    if (!j) {
        json_t *rec = NULL;
        int rc = registry_job_get(self->reg, job, &rec, err);
        if (rc) return rc;
        const char *st = json_string_value(json_object_get(rec, "status"));
        rc = st_fail(err, ST_EINVAL, "job %lld has already ended (%s)", (long long)job, st ? st : "?");
        json_decref(rec);
        return rc;
    }
    if (j->status == JOB_RUNNING) {
        j->cancel_requested = 1;
        snprintf(group_out, 128, "%s", j->group);
        s_message_event(self, job, "cancel requested");
        return ST_OK;
    }
    int rc = registry_job_set_status(self->reg, job, "cancelled", NULL, "cancelled by request", err);
    if (rc) return rc;
    s_remove(self, job);
    return ST_OK;
}

static int s_check_group(job_t *j, int64_t job, const char *group, char *err)
{
    if (!j || j->status != JOB_RUNNING)
        return st_fail(err, ST_EINVAL, "job %lld is not running", (long long)job);
    if (strcmp(j->group, group) != 0)
        return st_fail(err, ST_EINVAL, "job %lld runs on group '%s', not '%s'", (long long)job, j->group, group);
    return ST_OK;
}

/* The metrics of a finished job as registry metrics: every "<m>_after" with
 * a "<m>_before" beside it becomes metric <m> with its untuned baseline; the
 * other numbers (steps, tokens_per_s, train losses...) are kept without one.
 * names must hold one 128-byte slot per entry. */
static int s_metrics(json_t *metrics, registry_metric_t **out, char (**names)[128], int *n_out)
{
    size_t cap = json_object_size(metrics) + 1;
    registry_metric_t *m = calloc(cap, sizeof *m);
    char(*nm)[128] = calloc(cap, sizeof *nm);
    if (!m || !nm) {
        free(m);
        free(nm);
        return ST_ENOMEM;
    }
    int n = 0;
    const char *key;
    json_t *val;
    json_object_foreach(metrics, key, val)
    {
        if (!json_is_number(val)) continue;
        size_t len = strlen(key);
        if (len > 7 && !strcmp(key + len - 7, "_before")) continue; /* paired with _after */
        snprintf(nm[n], sizeof nm[n], "%s", key);
        m[n].value = json_number_value(val);
        if (len > 6 && len < 120 && !strcmp(key + len - 6, "_after")) {
            char base[128];
            snprintf(base, sizeof base, "%.*s_before", (int)(len - 6), key);
            json_t *b = json_object_get(metrics, base);
            if (json_is_number(b)) {
                m[n].baseline = json_number_value(b);
                m[n].has_baseline = 1;
                nm[n][len - 6] = 0; /* "eval_loss_after" is stored as "eval_loss" */
            }
        }
        m[n].name = nm[n];
        n++;
    }
    *out = m;
    *names = nm;
    *n_out = n;
    return ST_OK;
}

int sched_succeed(sched_t *self, int64_t job, const char *group, json_t *metrics, const char *model_sha256,
                  int layers, int heads, int head_size, const float *data, int *version_out, char *err)
{
    return sched_succeed_ks(self, job, group, metrics, model_sha256, layers, heads, head_size, data, 0, 0, NULL,
                            version_out, err);
}

int sched_succeed_ks(sched_t *self, int64_t job, const char *group, json_t *metrics, const char *model_sha256,
                     int layers, int heads, int head_size, const float *data, int features, float gamma,
                     const float *kstate, int *version_out, char *err)
{
    *version_out = 0;
    job_t *j = s_find(self, job);
    if (!j) { /* a repeated result: answer with the version already made */
        json_t *rec = NULL;
        int rc = registry_job_get(self->reg, job, &rec, err);
        if (rc) return rc;
        const char *st = json_string_value(json_object_get(rec, "status"));
        if (st && !strcmp(st, "succeeded")) {
            json_t *list = NULL;
            if (registry_list_states(self->reg, &list, err) == ST_OK) {
                size_t i;
                json_t *s;
                json_array_foreach(list, i, s)
                {
                    if (json_integer_value(json_object_get(s, "job_id")) == job)
                        *version_out = (int)json_integer_value(json_object_get(s, "version"));
                }
            }
            json_decref(list);
            json_decref(rec);
            return ST_OK;
        }
        rc = st_fail(err, ST_EINVAL, "job %lld has already ended (%s)", (long long)job, st ? st : "?");
        json_decref(rec);
        return rc;
    }
    int rc = s_check_group(j, job, group, err);
    if (rc) return rc;
    /* A result must fit the job's model: a state of another shape would
     * break every inference client that trusts the lineage. */
    if (head_size != 64 || (j->model_layers && (layers != j->model_layers || heads != j->model_heads)))
        return st_fail(err, ST_EINVAL, "job %lld: the result's state is [%d, %d, %d, %d], the model's is [%d, %d, 64, 64]",
                       (long long)job, layers, heads, head_size, head_size, j->model_layers, j->model_heads);
    registry_metric_t *m = NULL;
    char(*names)[128] = NULL;
    int n_m = 0;
    if (json_is_object(metrics) && s_metrics(metrics, &m, &names, &n_m))
        return st_fail(err, ST_ENOMEM, "out of memory");
    registry_new_state_t ns = {
        .name = j->name,
        .model_sha256 = model_sha256,
        .job_id = job,
        .n_layer = layers,
        .n_head = heads,
        .head_size = head_size,
        .data = data,
        .metrics = m,
        .n_metrics = n_m,
        .alias = j->alias[0] ? j->alias : NULL,
    };
    /* a kernel-expanded state (SPEC 4): the registry marks it, so exports to
     * standard formats refuse it (the worker's metrics say; untrusted, so bounded) */
    json_int_t kf = json_integer_value(json_object_get(metrics, "kernel_features"));
    ns.kernel_features = kf > 0 && kf <= 1 << 16 ? (int)kf : 0;
    if (kstate) { /* U0 and its support vectors came with the result: stored with S0 */
        ns.kernel_features = features;
        ns.kernel_gamma = gamma;
        ns.kstate = kstate;
    }
    rc = registry_add_state(self->reg, &ns, version_out, err);
    free(m);
    free(names);
    if (rc) return rc;
    rc = registry_job_set_status(self->reg, job, "succeeded", NULL, NULL, err);
    if (rc) return rc;
    json_t *ev = json_pack("{s:s, s:i, s:O*}", "name", j->name, "version", *version_out, "metrics", metrics);
    char *t = json_dumps(ev, JSON_COMPACT);
    char e2[ST_ERR_LEN];
    if (t) registry_job_add_event(self->reg, job, "result", t, NULL, e2);
    free(t);
    json_decref(ev);
    s_remove(self, job);
    return ST_OK;
}

int sched_fail(sched_t *self, int64_t job, const char *group, const char *error, int cancelled, char *err)
{
    job_t *j = s_find(self, job);
    int rc = s_check_group(j, job, group, err);
    if (rc) return rc;
    int as_cancel = cancelled || j->cancel_requested;
    rc = registry_job_set_status(self->reg, job, as_cancel ? "cancelled" : "failed", NULL,
                                 as_cancel ? "cancelled by request" : error, err);
    if (rc) return rc;
    s_remove(self, job);
    return ST_OK;
}

int sched_event(sched_t *self, int64_t job, const char *group, const char *kind, json_t *data, char *err)
{
    job_t *j = s_find(self, job);
    int rc = s_check_group(j, job, group, err);
    if (rc) return rc;
    if (!strcmp(kind, "progress")) {
        json_decref(j->progress);
        j->progress = json_incref(data);
        /* Memory always has the latest step (status, watch); the registry
         * gets at most PROGRESS_SAVE_MS worth of them, and the last step, so
         * a fast job does not turn into one SQLite transaction per step. */
        int64_t now = s_now_ms();
        json_t *step = json_object_get(data, "step"), *steps = json_object_get(data, "steps");
        int last = json_is_integer(step) && json_is_integer(steps) &&
                   json_integer_value(step) >= json_integer_value(steps);
        if (!last && now - j->progress_saved_ms < PROGRESS_SAVE_MS) return ST_OK;
        j->progress_saved_ms = now;
    }
    char *t = json_dumps(data, JSON_COMPACT);
    if (!t) return st_fail(err, ST_ENOMEM, "out of memory");
    rc = registry_job_add_event(self->reg, job, kind, t, NULL, err);
    free(t);
    if (rc == ST_OK && !strcmp(kind, "checkpoint")) {
        json_t *step = json_object_get(data, "step"), *path = json_object_get(data, "path");
        if (json_is_integer(step) && json_is_string(path))
            rc = registry_checkpoint_add(self->reg, job, json_integer_value(step), json_string_value(path), err);
    }
    return rc;
}

/* Adds what only memory knows (cancel requested, latest progress) to a record. */
static void s_decorate(sched_t *self, json_t *rec)
{
    json_object_del(rec, "spec"); /* large and not what a listing is for */
    int64_t id = json_integer_value(json_object_get(rec, "id"));
    job_t *j = s_find(self, id);
    json_object_set_new(rec, "cancel_requested", json_boolean(j && j->cancel_requested));
    if (j && j->progress) {
        static const char *keys[] = {"step", "steps", "loss", "tokens_per_s", "eta_s", "lr"};
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            json_t *v = json_object_get(j->progress, keys[k]);
            if (v) json_object_set(rec, keys[k], v);
        }
    }
    if (j) json_object_set_new(rec, "out_dir", json_string(j->out_dir));
}

int sched_job_json(sched_t *self, int64_t job, json_t **out, char *err)
{
    int rc = registry_job_get(self->reg, job, out, err);
    if (rc) return rc;
    s_decorate(self, *out);
    return ST_OK;
}

int sched_jobs_json(sched_t *self, json_t **out, char *err)
{
    int rc = registry_job_list(self->reg, NULL, out, err);
    if (rc) return rc;
    size_t i;
    json_t *rec;
    json_array_foreach(*out, i, rec) s_decorate(self, rec);
    return ST_OK;
}

int64_t sched_job_of_group(sched_t *self, const char *group)
{
    for (size_t i = 0; i < self->n_jobs; i++)
        if (self->jobs[i].status == JOB_RUNNING && !strcmp(self->jobs[i].group, group)) return self->jobs[i].id;
    return 0;
}

int sched_job_fits(sched_t *self, int64_t job, int group_gpus, const char *backend)
{
    job_t *j = s_find(self, job);
    if (!j || j->status != JOB_QUEUED || group_gpus < 1) return -1;
    return s_fits(j, group_gpus, backend);
}

int sched_job_needs(sched_t *self, int64_t job, char *buf, size_t len)
{
    job_t *j = s_find(self, job);
    if (!j) return ST_ENOTFOUND;
    snprintf(buf, len, "a %s group of at least %d %s whose rank count divides the global batch of %d", j->backend,
             j->gpus, strcmp(j->backend, "cuda") ? (j->gpus == 1 ? "rank" : "ranks") : (j->gpus == 1 ? "GPU" : "GPUs"),
             j->global_batch);
    return ST_OK;
}

int sched_cancel_requested(sched_t *self, int64_t job)
{
    job_t *j = s_find(self, job);
    return j && j->cancel_requested;
}
