/*
 * states.c - tuned states in the registry: content-addressed blobs, versions
 * counting up per name, metrics beside the untuned baseline, aliases with
 * their history, and the reads that inference clients make.
 *
 * Invariants (each writer below keeps them inside one transaction):
 *   1. Every states row names a state_blobs row whose data hashes to it, and
 *      all of that version's metrics rows exist: registry_add_state writes the
 *      blob, the row, the metrics and the alias move in one BEGIN IMMEDIATE
 *      transaction, so a crash leaves all of them or none.
 *   2. Versions of a name are 1..max without gaps: the next version is
 *      max + 1 read under the write lock, and versions are never deleted.
 *   3. A blob is stored once per content (INSERT OR IGNORE on its sha256).
 *   4. Every alias move appends one alias_history row (old -> new, time).
 * Readers resolve a reference and read its blob in one read transaction (a
 * WAL snapshot), and check the blob's sha256 against the record, so a torn or
 * corrupted read is reported, never returned.
 *
 * Blobs hold little-endian fp32 (the only byte order we run on; the dtype and
 * shape are stored with the blob for other readers).
 */
#include "store/registry_internal.h"
#include "common/st_err.h"
#include "common/st_fs.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int registry_check_name(const char *what, const char *name, int is_alias, char *err)
{
    if (!name || !*name) return st_fail(err, ST_EINVAL, "the %s is empty", what);
    size_t n = strlen(name);
    if (n >= REGISTRY_NAME_MAX)
        return st_fail(err, ST_EINVAL, "the %s '%.40s...' is longer than %d bytes", what, name,
                       REGISTRY_NAME_MAX - 1);
    if (!(isalnum((unsigned char)name[0]) || name[0] == '_'))
        return st_fail(err, ST_EINVAL, "the %s '%s' must start with a letter, digit or '_'", what, name);
    if (is_alias && isdigit((unsigned char)name[0]))
        return st_fail(err, ST_EINVAL,
                       "the alias '%s' starts with a digit, which would read as a version number", name);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!(isalnum(c) || c == '_' || c == '-' || c == '.'))
            return st_fail(err, ST_EINVAL, "the %s '%s' holds '%c'; use letters, digits, '_', '-' and '.'",
                           what, name, isprint(c) ? c : '?');
    }
    return ST_OK;
}

/* ---- reading rows ------------------------------------------------------- */

#define STATE_COLS                                                                  \
    "s.id, s.name, s.version, s.model_sha256, s.job_id, s.n_layer, s.n_head,"       \
    " s.head_size, s.dtype, s.blob_sha256, s.kernel_features, s.created,"                 \
    " (SELECT k.gamma FROM state_kstates k WHERE k.state = s.id),"                         \
    " (SELECT k.blob_sha256 FROM state_kstates k WHERE k.state = s.id)"

static void s_row_info(sqlite3_stmt *st, registry_state_info_t *out)
{
    memset(out, 0, sizeof *out);
    out->id = sqlite3_column_int64(st, 0);
    snprintf(out->name, sizeof out->name, "%s", reg_text(st, 1));
    out->version = sqlite3_column_int(st, 2);
    snprintf(out->model_sha256, sizeof out->model_sha256, "%s", reg_text(st, 3));
    out->job_id = sqlite3_column_int64(st, 4);
    out->n_layer = sqlite3_column_int(st, 5);
    out->n_head = sqlite3_column_int(st, 6);
    out->head_size = sqlite3_column_int(st, 7);
    snprintf(out->dtype, sizeof out->dtype, "%s", reg_text(st, 8));
    snprintf(out->blob_sha256, sizeof out->blob_sha256, "%s", reg_text(st, 9));
    out->kernel_features = sqlite3_column_int(st, 10);
    out->created = (int64_t)sqlite3_column_double(st, 11);
    out->kernel_gamma = (float)sqlite3_column_double(st, 12);
    snprintf(out->kstate_sha256, sizeof out->kstate_sha256, "%s", reg_text(st, 13));
}

static json_t *s_info_json(const registry_state_info_t *s)
{
    json_t *o = json_pack("{s:s, s:i, s:s, s:[i,i,i,i], s:s, s:s, s:I, s:i}", "name", s->name, "version",
                          s->version, "model_sha256", s->model_sha256, "shape", s->n_layer, s->n_head,
                          s->head_size, s->head_size, "dtype", s->dtype, "blob_sha256", s->blob_sha256,
                          "created", (json_int_t)s->created, "kernel_features", s->kernel_features);
    if (o) json_object_set_new(o, "job_id", s->job_id ? json_integer(s->job_id) : json_null());
    if (o && s->kernel_features > 0) { /* the kernel-expanded part (SPEC 4), when its U0 is stored */
        json_object_set_new(o, "kernel_gamma", s->kstate_sha256[0] ? json_real(s->kernel_gamma) : json_null());
        json_object_set_new(o, "kstate_sha256", s->kstate_sha256[0] ? json_string(s->kstate_sha256) : json_null());
    }
    return o;
}

/* A version count of a name (0 when it does not exist), for error sentences. */
static int s_latest_version(registry_t *self, const char *name, int *latest, char *err)
{
    sqlite3_stmt *st;
    int rc = reg_prepare(self, "SELECT COALESCE(MAX(version), 0) FROM states WHERE name = ?1", &st, err);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    rc = reg_step(self, st, "reading the latest version", err);
    if (rc == 1) {
        *latest = sqlite3_column_int(st, 0);
        rc = ST_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Resolves inside the caller's transaction. */
static int s_resolve(registry_t *self, const char *ref, registry_state_info_t *out, char *err)
{
    char name[REGISTRY_NAME_MAX];
    const char *at = strchr(ref, '@');
    size_t n = at ? (size_t)(at - ref) : strlen(ref);
    if (n == 0) return st_fail(err, ST_EINVAL, "'%s' names no state; use NAME, NAME@VERSION or NAME@ALIAS", ref);
    if (n >= sizeof name) return st_fail(err, ST_EINVAL, "the state name in '%.40s...' is too long", ref);
    memcpy(name, ref, n);
    name[n] = '\0';
    int rc = registry_check_name("state name", name, 0, err);
    if (rc) return rc;

    int latest = 0;
    if ((rc = s_latest_version(self, name, &latest, err))) return rc;
    if (latest == 0) return st_fail(err, ST_ENOTFOUND, "no state named '%s' in the registry", name);

    int version = latest;
    if (at) {
        const char *sel = at + 1;
        if (!*sel) return st_fail(err, ST_EINVAL, "'%s' ends with '@'; give a version or an alias", ref);
        if (isdigit((unsigned char)*sel)) {
            char *end;
            long v = strtol(sel, &end, 10);
            if (*end || v < 1 || v > 1000000000L)
                return st_fail(err, ST_EINVAL, "'%s' is not a valid version number", sel);
            version = (int)v;
            if (version > latest)
                return st_fail(err, ST_ENOTFOUND, "state '%s' has no version %d (versions 1 to %d exist)", name,
                               version, latest);
        } else {
            if ((rc = registry_check_name("alias", sel, 1, err))) return rc;
            sqlite3_stmt *st;
            if ((rc = reg_prepare(self, "SELECT version FROM aliases WHERE name = ?1 AND alias = ?2", &st, err)))
                return rc;
            sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, sel, -1, SQLITE_STATIC);
            rc = reg_step(self, st, "resolving an alias", err);
            if (rc == 1) version = sqlite3_column_int(st, 0);
            sqlite3_finalize(st);
            if (rc < 0) return rc;
            if (rc == 0) return st_fail(err, ST_ENOTFOUND, "state '%s' has no alias '%s'", name, sel);
        }
    }
    sqlite3_stmt *st;
    if ((rc = reg_prepare(self, "SELECT " STATE_COLS " FROM states s WHERE s.name = ?1 AND s.version = ?2", &st, err)))
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, version);
    rc = reg_step(self, st, "reading a state", err);
    if (rc == 1) s_row_info(st, out);
    sqlite3_finalize(st);
    if (rc < 0) return rc;
    if (rc == 0) return st_fail(err, ST_ENOTFOUND, "state '%s' has no version %d", name, version);
    return ST_OK;
}

typedef struct {
    const char *ref;
    registry_state_info_t *info;
    float **data; /* NULL: metadata only */
    float **kstate; /* NULL: not wanted */
} s_get_ctx;

/* Reads the blob sha (checked) of want floats into a fresh *out. */
static int s_read_blob(registry_t *self, const registry_state_info_t *in, const char *sha, size_t want,
                       const char *what, float **out, char *err)
{
    sqlite3_stmt *st;
    int rc = reg_prepare(self, "SELECT data FROM state_blobs WHERE sha256 = ?1", &st, err);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
    rc = reg_step(self, st, "reading a state blob", err);
    if (rc == 0)
        rc = st_fail(err, ST_EFORMAT, "state '%s@%d' has lost its %s blob %.12s", in->name, in->version, what, sha);
    if (rc == 1) {
        const void *blob = sqlite3_column_blob(st, 0);
        size_t bytes = (size_t)sqlite3_column_bytes(st, 0);
        char hex[65];
        st_sha256_hex(blob, bytes, hex);
        if (bytes != want * sizeof(float))
            rc = st_fail(err, ST_EFORMAT, "state '%s@%d': its %s blob holds %zu bytes, the shape needs %zu F32 values",
                         in->name, in->version, what, bytes, want);
        else if (strcmp(hex, sha))
            rc = st_fail(err, ST_EFORMAT, "state '%s@%d': %s blob sha256 %.12s does not match the recorded %.12s",
                         in->name, in->version, what, hex, sha);
        else {
            float *d = malloc(bytes ? bytes : 1);
            if (!d) rc = st_fail(err, ST_ENOMEM, "out of memory reading state '%s'", in->name);
            else {
                memcpy(d, blob, bytes);
                free(*out); /* a retried transaction may have set it */
                *out = d;
                rc = ST_OK;
            }
        }
    }
    sqlite3_finalize(st);
    return rc;
}

static int s_get_txn(registry_t *self, void *vctx, char *err)
{
    s_get_ctx *c = vctx;
    int rc = s_resolve(self, c->ref, c->info, err);
    if (rc || !c->data) return rc;
    registry_state_info_t *in = c->info;
    sqlite3_stmt *st;
    if ((rc = reg_prepare(self, "SELECT data FROM state_blobs WHERE sha256 = ?1", &st, err))) return rc;
    sqlite3_bind_text(st, 1, in->blob_sha256, -1, SQLITE_STATIC);
    rc = reg_step(self, st, "reading a state blob", err);
    if (rc == 0) rc = st_fail(err, ST_EFORMAT, "state '%s@%d' has lost its data blob %.12s", in->name, in->version,
                              in->blob_sha256);
    if (rc == 1) {
        size_t want = (size_t)in->n_layer * in->n_head * in->head_size * in->head_size;
        const void *blob = sqlite3_column_blob(st, 0);
        size_t bytes = (size_t)sqlite3_column_bytes(st, 0);
        char hex[65];
        st_sha256_hex(blob, bytes, hex);
        if (strcmp(in->dtype, "F32") || bytes != want * sizeof(float))
            rc = st_fail(err, ST_EFORMAT, "state '%s@%d': blob holds %zu bytes, the shape needs %zu F32 values",
                         in->name, in->version, bytes, want);
        else if (strcmp(hex, in->blob_sha256))
            rc = st_fail(err, ST_EFORMAT, "state '%s@%d': blob sha256 %.12s does not match the recorded %.12s",
                         in->name, in->version, hex, in->blob_sha256);
        else {
            float *d = malloc(bytes ? bytes : 1);
            if (!d) rc = st_fail(err, ST_ENOMEM, "out of memory reading state '%s'", in->name);
            else {
                memcpy(d, blob, bytes);
                free(*c->data); /* a retried transaction may have set it */
                *c->data = d;
                rc = ST_OK;
            }
        }
    }
    sqlite3_finalize(st);
    if (rc == ST_OK && c->kstate && in->kstate_sha256[0]) {
        size_t nk = 2 * (size_t)in->n_layer * in->n_head * in->head_size * in->kernel_features;
        rc = s_read_blob(self, in, in->kstate_sha256, nk, "kernel-expanded", c->kstate, err);
    }
    return rc;
}

int registry_resolve(registry_t *self, const char *ref, registry_state_info_t *out, char *err)
{
    s_get_ctx c = {ref, out, NULL, NULL};
    return reg_txn(self, 0, s_get_txn, &c, err);
}

int registry_get_state(registry_t *self, const char *ref, registry_state_info_t *info_out, float **data_out,
                       char *err)
{
    *data_out = NULL;
    s_get_ctx c = {ref, info_out, data_out, NULL};
    int rc = reg_txn(self, 0, s_get_txn, &c, err);
    if (rc) {
        free(*data_out);
        *data_out = NULL;
    }
    return rc;
}

int registry_get_state_ks(registry_t *self, const char *ref, registry_state_info_t *info_out, float **data_out,
                          float **kstate_out, char *err)
{
    *data_out = NULL;
    *kstate_out = NULL;
    s_get_ctx c = {ref, info_out, data_out, kstate_out};
    int rc = reg_txn(self, 0, s_get_txn, &c, err);
    if (rc) {
        free(*data_out);
        free(*kstate_out);
        *data_out = NULL;
        *kstate_out = NULL;
    }
    return rc;
}

/* ---- lists and details --------------------------------------------------- */

static int s_aliases_of(registry_t *self, const char *name, int version, json_t *arr, char *err)
{
    sqlite3_stmt *st;
    int rc = reg_prepare(self, "SELECT alias FROM aliases WHERE name = ?1 AND version = ?2 ORDER BY alias", &st, err);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, version);
    while ((rc = reg_step(self, st, "listing aliases", err)) == 1)
        json_array_append_new(arr, json_string(reg_text(st, 0)));
    sqlite3_finalize(st);
    return rc;
}

static int s_list_txn(registry_t *self, void *vctx, char *err)
{
    json_t **out = vctx;
    json_t *arr = json_array();
    sqlite3_stmt *st;
    /* One statement: aliases come as "a,b" (',' cannot occur in an alias). */
    int rc = reg_prepare(self,
                         "SELECT " STATE_COLS ", (SELECT group_concat(alias, ',') FROM"
                         " (SELECT alias FROM aliases a WHERE a.name = s.name AND a.version = s.version"
                         " ORDER BY alias)) FROM states s ORDER BY s.name, s.version",
                         &st, err);
    if (rc) {
        json_decref(arr);
        return rc;
    }
    while ((rc = reg_step(self, st, "listing states", err)) == 1) {
        registry_state_info_t in;
        s_row_info(st, &in);
        json_t *o = s_info_json(&in), *al = json_array();
        json_object_set_new(o, "aliases", al);
        json_array_append_new(arr, o);
        const char *list = reg_text(st, 14);
        while (*list) {
            size_t n = strcspn(list, ",");
            json_array_append_new(al, json_stringn(list, n));
            list += n + (list[n] == ',');
        }
    }
    sqlite3_finalize(st);
    if (rc) {
        json_decref(arr);
        return rc;
    }
    json_decref(*out);
    *out = arr;
    return ST_OK;
}

int registry_list_states(registry_t *self, json_t **out, char *err)
{
    *out = NULL;
    return reg_txn(self, 0, s_list_txn, out, err);
}

static int s_history_txn(registry_t *self, const char *name, json_t *arr, char *err)
{
    sqlite3_stmt *st;
    int rc = reg_prepare(self,
                         "SELECT alias, old_version, new_version, time FROM alias_history WHERE name = ?1 ORDER BY id",
                         &st, err);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    while ((rc = reg_step(self, st, "reading the alias history", err)) == 1) {
        json_t *o = json_pack("{s:s, s:i, s:f}", "alias", reg_text(st, 0), "new_version", sqlite3_column_int(st, 2),
                              "time", sqlite3_column_double(st, 3));
        json_object_set_new(o, "old_version",
                            sqlite3_column_type(st, 1) == SQLITE_NULL ? json_null()
                                                                       : json_integer(sqlite3_column_int(st, 1)));
        json_array_append_new(arr, o);
    }
    sqlite3_finalize(st);
    return rc;
}

typedef struct {
    const char *name;
    json_t **out;
} s_hist_ctx;

static int s_alias_history_txn(registry_t *self, void *vctx, char *err)
{
    s_hist_ctx *c = vctx;
    json_t *arr = json_array();
    int rc = s_history_txn(self, c->name, arr, err);
    if (rc) {
        json_decref(arr);
        return rc;
    }
    json_decref(*c->out);
    *c->out = arr;
    return ST_OK;
}

int registry_alias_history(registry_t *self, const char *name, json_t **out, char *err)
{
    *out = NULL;
    int rc = registry_check_name("state name", name, 0, err);
    if (rc) return rc;
    s_hist_ctx c = {name, out};
    return reg_txn(self, 0, s_alias_history_txn, &c, err);
}

typedef struct {
    const char *ref;
    json_t **out;
} s_show_ctx;

static int s_show_txn(registry_t *self, void *vctx, char *err)
{
    s_show_ctx *c = vctx;
    registry_state_info_t in;
    int rc = s_resolve(self, c->ref, &in, err);
    if (rc) return rc;
    json_t *o = s_info_json(&in), *aliases = json_array(), *metrics = json_array(), *hist = json_array();
    json_object_set_new(o, "aliases", aliases);
    json_object_set_new(o, "metrics", metrics);
    json_object_set_new(o, "alias_history", hist);
    int latest = 0;
    if ((rc = s_latest_version(self, in.name, &latest, err))) goto done;
    json_object_set_new(o, "latest_version", json_integer(latest));
    json_object_set_new(o, "bytes", json_integer((json_int_t)in.n_layer * in.n_head * in.head_size * in.head_size * 4));
    if ((rc = s_aliases_of(self, in.name, in.version, aliases, err))) goto done;
    if ((rc = s_history_txn(self, in.name, hist, err))) goto done;

    sqlite3_stmt *st;
    if ((rc = reg_prepare(self, "SELECT name, value, baseline FROM state_metrics WHERE state = ?1 ORDER BY name", &st,
                          err)))
        goto done;
    sqlite3_bind_int64(st, 1, in.id);
    while ((rc = reg_step(self, st, "reading metrics", err)) == 1) {
        json_t *m = json_pack("{s:s, s:f}", "name", reg_text(st, 0), "value", sqlite3_column_double(st, 1));
        json_object_set_new(m, "baseline", sqlite3_column_type(st, 2) == SQLITE_NULL
                                               ? json_null()
                                               : json_real(sqlite3_column_double(st, 2)));
        json_array_append_new(metrics, m);
    }
    sqlite3_finalize(st);
    if (rc) goto done;

    /* Lineage: the job that produced it and the model it belongs to. */
    json_t *job = json_null(), *model = json_null();
    if (in.job_id) {
        if ((rc = reg_prepare(self, "SELECT id, name, status, created, finished, spec FROM jobs WHERE id = ?1", &st, err)))
            goto done;
        sqlite3_bind_int64(st, 1, in.job_id);
        if ((rc = reg_step(self, st, "reading the job of a state", err)) == 1) {
            json_decref(job);
            job = json_pack("{s:I, s:s, s:s, s:f}", "id", (json_int_t)sqlite3_column_int64(st, 0), "name",
                            reg_text(st, 1), "status", reg_text(st, 2), "created", sqlite3_column_double(st, 3));
            json_t *spec = json_loads(reg_text(st, 5), 0, NULL);
            json_object_set_new(job, "spec", spec ? spec : json_null());
            json_object_set_new(job, "finished", sqlite3_column_type(st, 4) == SQLITE_NULL
                                                     ? json_null()
                                                     : json_real(sqlite3_column_double(st, 4)));
        }
        sqlite3_finalize(st);
    }
    json_object_set_new(o, "job", job);
    if (rc < 0) goto done;
    if ((rc = reg_prepare(self, "SELECT name, path FROM models WHERE sha256 = ?1", &st, err))) goto done;
    sqlite3_bind_text(st, 1, in.model_sha256, -1, SQLITE_STATIC);
    if ((rc = reg_step(self, st, "reading the model of a state", err)) == 1) {
        json_decref(model);
        model = json_pack("{s:s, s:s}", "name", reg_text(st, 0), "path", reg_text(st, 1));
    }
    sqlite3_finalize(st);
    json_object_set_new(o, "model", model);
    if (rc < 0) goto done;
    rc = ST_OK;
done:
    if (rc) {
        json_decref(o);
        return rc;
    }
    json_decref(*c->out);
    *c->out = o;
    return ST_OK;
}

int registry_show_state(registry_t *self, const char *ref, json_t **out, char *err)
{
    *out = NULL;
    s_show_ctx c = {ref, out};
    return reg_txn(self, 0, s_show_txn, &c, err);
}

/* ---- writers ------------------------------------------------------------- */

/* Moves name@alias to version inside the caller's write transaction. */
static int s_move_alias(registry_t *self, const char *name, const char *alias, int version, char *err)
{
    sqlite3_stmt *st;
    int rc = reg_prepare(self, "SELECT version FROM aliases WHERE name = ?1 AND alias = ?2", &st, err);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, alias, -1, SQLITE_STATIC);
    int old = 0;
    rc = reg_step(self, st, "reading an alias", err);
    if (rc == 1) old = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (rc < 0) return rc;
    if (old == version) return ST_OK;
    if ((rc = reg_prepare(self, "INSERT OR REPLACE INTO aliases(name, alias, version) VALUES(?1, ?2, ?3)", &st, err)))
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, alias, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, version);
    rc = reg_step(self, st, "moving an alias", err);
    sqlite3_finalize(st);
    if (rc < 0) return rc;
    if ((rc = reg_prepare(self,
                          "INSERT INTO alias_history(name, alias, old_version, new_version, time)"
                          " VALUES(?1, ?2, ?3, ?4, ?5)",
                          &st, err)))
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, alias, -1, SQLITE_STATIC);
    if (old) sqlite3_bind_int(st, 3, old);
    else sqlite3_bind_null(st, 3);
    sqlite3_bind_int(st, 4, version);
    sqlite3_bind_double(st, 5, reg_now());
    rc = reg_step(self, st, "recording the alias history", err);
    sqlite3_finalize(st);
    return rc < 0 ? rc : ST_OK;
}

typedef struct {
    const registry_new_state_t *s;
    const char *sha;
    size_t bytes;
    int *version;
    const char *ksha; /* the kernel-expanded blob's sha256, or NULL */
    size_t kbytes;
} s_add_ctx;

/* The version job_id produced, inside the caller's transaction: 1 found, 0 none. */
static int s_job_state(registry_t *self, int64_t job_id, registry_state_info_t *out, char *err)
{
    sqlite3_stmt *st;
    int rc = reg_prepare(self, "SELECT " STATE_COLS " FROM states s WHERE s.job_id = ?1 ORDER BY s.id LIMIT 1", &st, err);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, job_id);
    rc = reg_step(self, st, "looking up the state of a job", err);
    if (rc == 1) s_row_info(st, out);
    sqlite3_finalize(st);
    return rc;
}

typedef struct {
    int64_t job;
    registry_state_info_t *out;
} s_job_state_ctx;

static int s_state_of_job_txn(registry_t *self, void *vctx, char *err)
{
    s_job_state_ctx *c = vctx;
    int rc = s_job_state(self, c->job, c->out, err);
    if (rc == 0) return st_fail(err, ST_ENOTFOUND, "job %lld has produced no state", (long long)c->job);
    return rc < 0 ? rc : ST_OK;
}

int registry_state_of_job(registry_t *self, int64_t job_id, registry_state_info_t *out, char *err)
{
    s_job_state_ctx c = {job_id, out};
    return reg_txn(self, 0, s_state_of_job_txn, &c, err);
}

static int s_add_txn(registry_t *self, void *vctx, char *err)
{
    s_add_ctx *c = vctx;
    const registry_new_state_t *s = c->s;
    sqlite3_stmt *st;
    char shape[96];
    if (s->finish_job && s->job_id) {
        registry_state_info_t prev;
        int found = s_job_state(self, s->job_id, &prev, err);
        if (found < 0) return found;
        if (found) { /* delivered before: keep exactly one version per job */
            *c->version = prev.version;
            return ST_OK;
        }
    }
    snprintf(shape, sizeof shape, "[%d,%d,%d,%d]", s->n_layer, s->n_head, s->head_size, s->head_size);
    int rc = reg_prepare(self,
                         "INSERT OR IGNORE INTO state_blobs(sha256, bytes, dtype, shape, data)"
                         " VALUES(?1, ?2, 'F32', ?3, ?4)",
                         &st, err);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, c->sha, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)c->bytes);
    sqlite3_bind_text(st, 3, shape, -1, SQLITE_STATIC);
    sqlite3_bind_blob64(st, 4, s->data, c->bytes, SQLITE_STATIC);
    rc = reg_step(self, st, "storing the state blob", err);
    sqlite3_finalize(st);
    if (rc < 0) return rc;

    int latest = 0;
    if ((rc = s_latest_version(self, s->name, &latest, err))) return rc;
    int version = latest + 1;
    if ((rc = reg_prepare(self,
                          "INSERT INTO states(name, version, model_sha256, job_id, n_layer, n_head, head_size,"
                          " dtype, blob_sha256, kernel_features, created)"
                          " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, 'F32', ?8, ?9, ?10)",
                          &st, err)))
        return rc;
    sqlite3_bind_text(st, 1, s->name, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, version);
    sqlite3_bind_text(st, 3, s->model_sha256, -1, SQLITE_STATIC);
    if (s->job_id) sqlite3_bind_int64(st, 4, s->job_id);
    else sqlite3_bind_null(st, 4);
    sqlite3_bind_int(st, 5, s->n_layer);
    sqlite3_bind_int(st, 6, s->n_head);
    sqlite3_bind_int(st, 7, s->head_size);
    sqlite3_bind_text(st, 8, c->sha, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 9, s->kernel_features);
    sqlite3_bind_double(st, 10, reg_now());
    rc = reg_step(self, st, "recording the state version", err);
    sqlite3_finalize(st);
    if (rc == ST_EINVAL && s->job_id)
        return st_fail(err, ST_ENOTFOUND, "state '%s' names job %lld, which the registry does not know", s->name,
                       (long long)s->job_id);
    if (rc < 0) return rc;
    int64_t id = sqlite3_last_insert_rowid(self->db);

    if (c->ksha) { /* the kernel-expanded part: its blob and its row */
        char kshape[160];
        snprintf(kshape, sizeof kshape, "[%d,%d,%d,%d]+[%d,%d,%d,%d]", s->n_layer, s->n_head, s->head_size,
                 s->kernel_features, s->n_layer, s->n_head, s->kernel_features, s->head_size);
        if ((rc = reg_prepare(self,
                              "INSERT OR IGNORE INTO state_blobs(sha256, bytes, dtype, shape, data)"
                              " VALUES(?1, ?2, 'F32', ?3, ?4)",
                              &st, err)))
            return rc;
        sqlite3_bind_text(st, 1, c->ksha, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)c->kbytes);
        sqlite3_bind_text(st, 3, kshape, -1, SQLITE_STATIC);
        sqlite3_bind_blob64(st, 4, s->kstate, c->kbytes, SQLITE_STATIC);
        rc = reg_step(self, st, "storing the kernel-expanded blob", err);
        sqlite3_finalize(st);
        if (rc < 0) return rc;
        if ((rc = reg_prepare(self, "INSERT INTO state_kstates(state, features, gamma, blob_sha256) VALUES(?1, ?2, ?3, ?4)",
                              &st, err)))
            return rc;
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int(st, 2, s->kernel_features);
        sqlite3_bind_double(st, 3, s->kernel_gamma);
        sqlite3_bind_text(st, 4, c->ksha, -1, SQLITE_STATIC);
        rc = reg_step(self, st, "recording the kernel-expanded part", err);
        sqlite3_finalize(st);
        if (rc < 0) return rc;
    }

    if (s->n_metrics > 0) {
        if ((rc = reg_prepare(self, "INSERT INTO state_metrics(state, name, value, baseline) VALUES(?1, ?2, ?3, ?4)",
                              &st, err)))
            return rc;
        for (int i = 0; i < s->n_metrics && rc >= 0; i++) {
            const registry_metric_t *m = &s->metrics[i];
            sqlite3_reset(st);
            sqlite3_bind_int64(st, 1, id);
            sqlite3_bind_text(st, 2, m->name, -1, SQLITE_STATIC);
            sqlite3_bind_double(st, 3, m->value);
            if (m->has_baseline) sqlite3_bind_double(st, 4, m->baseline);
            else sqlite3_bind_null(st, 4);
            rc = reg_step(self, st, "recording a metric", err);
            if (rc == ST_EINVAL) rc = st_fail(err, ST_EINVAL, "metric '%s' is given twice", m->name);
        }
        sqlite3_finalize(st);
        if (rc < 0) return rc;
    }
    if (s->alias && (rc = s_move_alias(self, s->name, s->alias, version, err))) return rc;
    if (s->finish_job && s->job_id) {
        if ((rc = reg_prepare(self, "UPDATE jobs SET status = 'succeeded', finished = ?2 WHERE id = ?1", &st, err)))
            return rc;
        sqlite3_bind_int64(st, 1, s->job_id);
        sqlite3_bind_double(st, 2, reg_now());
        rc = reg_step(self, st, "marking the job succeeded", err);
        sqlite3_finalize(st);
        if (rc < 0) return rc;
    }
    *c->version = version;
    return ST_OK;
}

int registry_add_state(registry_t *self, const registry_new_state_t *s, int *version_out, char *err)
{
    int rc = registry_check_name("state name", s->name, 0, err);
    if (rc) return rc;
    if (s->alias && (rc = registry_check_name("alias", s->alias, 1, err))) return rc;
    if (!s->model_sha256 || strlen(s->model_sha256) != 64)
        return st_fail(err, ST_EINVAL, "state '%s' needs the sha256 of its model (64 hex characters)", s->name);
    if (s->n_layer < 1 || s->n_layer > 4096 || s->n_head < 1 || s->n_head > 4096 || s->head_size < 1 ||
        s->head_size > 1024 || !s->data)
        return st_fail(err, ST_EINVAL, "state '%s' has an impossible shape [%d, %d, %d, %d]", s->name, s->n_layer,
                       s->n_head, s->head_size, s->head_size);
    if (s->n_metrics < 0 || (s->n_metrics > 0 && !s->metrics))
        return st_fail(err, ST_EINVAL, "state '%s': metrics missing", s->name);
    for (int i = 0; i < s->n_metrics; i++) {
        if (!s->metrics[i].name || !*s->metrics[i].name)
            return st_fail(err, ST_EINVAL, "state '%s': metric %d has no name", s->name, i);
        if (!isfinite(s->metrics[i].value) || (s->metrics[i].has_baseline && !isfinite(s->metrics[i].baseline)))
            return st_fail(err, ST_ENUMERIC, "state '%s': metric '%s' is not a finite number", s->name,
                           s->metrics[i].name);
    }
    size_t n = (size_t)s->n_layer * s->n_head * s->head_size * s->head_size;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(s->data[i]))
            return st_fail(err, ST_ENUMERIC, "state '%s' holds NaN or inf (element %zu); refusing to store it",
                           s->name, i);
    char sha[65], ksha[65];
    st_sha256_hex(s->data, n * sizeof(float), sha);
    size_t nk = 0;
    if (s->kstate) { /* the kernel-expanded part (SPEC 4) */
        if (s->kernel_features < 1 || s->kernel_features > 1024 || !(s->kernel_gamma > 0) || !isfinite(s->kernel_gamma))
            return st_fail(err, ST_EINVAL, "state '%s': a kernel-expanded part needs 1 to 1024 features and gamma > 0 "
                           "(got %d and %g)", s->name, s->kernel_features, (double)s->kernel_gamma);
        nk = 2 * (size_t)s->n_layer * s->n_head * s->head_size * s->kernel_features;
        for (size_t i = 0; i < nk; i++)
            if (!isfinite(s->kstate[i]))
                return st_fail(err, ST_ENUMERIC, "state '%s': its kernel-expanded part holds NaN or inf (element %zu); "
                               "refusing to store it", s->name, i);
        st_sha256_hex(s->kstate, nk * sizeof(float), ksha);
    }
    int version = 0;
    s_add_ctx c = {s, sha, n * sizeof(float), &version, s->kstate ? ksha : NULL, nk * sizeof(float)};
    rc = reg_txn(self, 1, s_add_txn, &c, err);
    if (rc == ST_OK && version_out) *version_out = version;
    return rc;
}

typedef struct {
    const char *name, *alias;
    int version;
} s_alias_ctx;

static int s_set_alias_txn(registry_t *self, void *vctx, char *err)
{
    s_alias_ctx *c = vctx;
    int latest = 0;
    int rc = s_latest_version(self, c->name, &latest, err);
    if (rc) return rc;
    if (latest == 0) return st_fail(err, ST_ENOTFOUND, "no state named '%s' in the registry", c->name);
    if (c->version < 1 || c->version > latest)
        return st_fail(err, ST_ENOTFOUND, "state '%s' has no version %d (versions 1 to %d exist)", c->name,
                       c->version, latest);
    return s_move_alias(self, c->name, c->alias, c->version, err);
}

int registry_set_alias(registry_t *self, const char *name, const char *alias, int version, char *err)
{
    int rc = registry_check_name("state name", name, 0, err);
    if (rc) return rc;
    if ((rc = registry_check_name("alias", alias, 1, err))) return rc;
    s_alias_ctx c = {name, alias, version};
    return reg_txn(self, 1, s_set_alias_txn, &c, err);
}
