/*
 * test_store.c - the registry (schema, versions, blobs, aliases, jobs) and
 * the state file formats, including the properties a user relies on when
 * several processes share the database: no reader ever sees SQLITE_BUSY or a
 * torn state, and killing the writer at any instant leaves no half-written
 * version.
 *
 * STORE_STRESS_SECONDS sets how long concurrent_readers runs (default 5; the
 * `slow` suite runs it for 30 s as the issue asks).
 */
#include "common/st_err.h"
#include "common/st_fs.h"
#include "common/st_half.h"
#include "store/registry.h"
#include "store/state_formats.h"
#include "tests/harness.h"

#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define L_ 2
#define H_ 2
#define N_ 64
#define NUMEL (L_ * H_ * N_ * N_)

static const char s_model[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/* Deterministic pseudo-random state data; seed picks the content. */
static void s_fill(float *d, size_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        d[i] = ((float)(x & 0xffffff) / (float)0x1000000 - 0.5f) * 4.0f;
    }
}

static char *s_path(const char *name)
{
    static char buf[4][1024];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 1024, "%s/%s", st_test_tmpdir(), name);
    return p;
}

static int s_add(registry_t *r, const char *name, uint32_t seed, const char *alias, int *version, char *err)
{
    float *d = malloc(NUMEL * sizeof(float));
    s_fill(d, NUMEL, seed);
    registry_metric_t m[3] = {
        {"eval_loss", 1.5 + seed % 7, 3.0, 1}, {"perplexity", 4.5, 20.0, 1}, {"token_accuracy", 0.6, 0, 0}};
    registry_new_state_t s = {.name = name, .model_sha256 = s_model, .n_layer = L_, .n_head = H_, .head_size = N_,
                              .data = d, .metrics = m, .n_metrics = 3, .alias = alias};
    int rc = registry_add_state(r, &s, version, err);
    free(d);
    return rc;
}

static int s_sql_int(const char *db, const char *sql)
{
    sqlite3 *h;
    int v = -1;
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK) {
            if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int(st, 0);
            sqlite3_finalize(st);
        }
    }
    sqlite3_close(h);
    return v;
}

static int test_schema_migrations(void)
{
    char err[ST_ERR_LEN];
    const char *db = s_path("schema.db");
    registry_t *r = registry_open(db, 0, err);
    CHECKF(r != NULL, "%s", err);
    int latest = registry_schema_version(r);
    CHECK(latest >= 3);
    int v = 0;
    CHECKF(s_add(r, "keep", 1, "latest", &v, err) == ST_OK, "%s", err);
    registry_close(&r);
    CHECK(r == NULL);
    registry_close(&r); /* NULL is fine */
    struct stat sb;
    CHECK(stat(db, &sb) == 0);
    CHECKF((sb.st_mode & 0777) == 0600, "registry mode %o", sb.st_mode & 0777);

    /* Opening again applies nothing and keeps the data. */
    r = registry_open(db, 0, err);
    CHECKF(r != NULL, "%s", err);
    CHECK(registry_schema_version(r) == latest);
    registry_close(&r);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM states") == 1);

    /* A database left at version 1 is brought up to date on open. */
    sqlite3 *h;
    CHECK(sqlite3_open(db, &h) == SQLITE_OK);
    CHECK(sqlite3_exec(h, "DROP INDEX states_by_model; DROP INDEX alias_history_by_name; DROP TABLE state_kstates;"
                          " PRAGMA user_version = 1;",
                       NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(h);
    /* ...but a reader refuses it instead of guessing. */
    r = registry_open(db, 1, err);
    CHECK(r == NULL && strstr(err, "migrate") != NULL);
    r = registry_open(db, 0, err);
    CHECKF(r != NULL, "%s", err);
    CHECK(registry_schema_version(r) == latest);
    registry_close(&r);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'states_by_model'") == 1);
    CHECK(s_sql_int(db, "PRAGMA user_version") == latest);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM states") == 1);

    /* Read-only opening: missing file and non-database file are clear errors. */
    CHECK(registry_open(s_path("missing.db"), 1, err) == NULL);
    CHECK(strstr(err, "does not exist") != NULL);
    const char *junk = s_path("junk.db");
    FILE *f = fopen(junk, "w");
    fputs("this is not a database, just text long enough to fill a header page ........................", f);
    fclose(f);
    CHECK(registry_open(junk, 1, err) == NULL);
    CHECKF(strstr(err, "not a statetune registry") != NULL, "%s", err);
    r = registry_open(db, 1, err);
    CHECKF(r != NULL, "%s", err);
    CHECK(s_add(r, "keep", 2, NULL, &v, err) == ST_EINVAL && strstr(err, "read-only"));
    registry_close(&r);
    return 0;
}

static int test_versions_count_up(void)
{
    char err[ST_ERR_LEN];
    registry_t *r = registry_open(s_path("versions.db"), 0, err);
    CHECKF(r != NULL, "%s", err);
    for (int i = 1; i <= 3; i++) {
        int v = 0;
        CHECKF(s_add(r, "alpha", (uint32_t)i, NULL, &v, err) == ST_OK, "%s", err);
        CHECK(v == i);
    }
    int v = 0;
    CHECK(s_add(r, "beta", 9, NULL, &v, err) == ST_OK && v == 1);
    CHECK(s_add(r, "alpha", 4, NULL, &v, err) == ST_OK && v == 4);
    json_t *list = NULL;
    CHECKF(registry_list_states(r, &list, err) == ST_OK, "%s", err);
    CHECK(json_array_size(list) == 5);
    json_t *first = json_array_get(list, 0);
    CHECK(!strcmp(json_string_value(json_object_get(first, "name")), "alpha"));
    CHECK(json_integer_value(json_array_get(json_object_get(first, "shape"), 3)) == N_);
    json_decref(list);

    /* Bad input is refused with the reason, and stores nothing. */
    float bad[NUMEL];
    s_fill(bad, NUMEL, 3);
    bad[77] = NAN;
    registry_new_state_t s = {.name = "alpha", .model_sha256 = s_model, .n_layer = L_, .n_head = H_,
                              .head_size = N_, .data = bad};
    CHECK(registry_add_state(r, &s, &v, err) == ST_ENUMERIC && strstr(err, "NaN"));
    bad[77] = 0;
    s.name = "has space";
    CHECK(registry_add_state(r, &s, &v, err) == ST_EINVAL && strstr(err, "has space"));
    s.name = "alpha";
    s.job_id = 12345;
    CHECK(registry_add_state(r, &s, &v, err) == ST_ENOTFOUND && strstr(err, "12345"));
    registry_state_info_t in;
    CHECK(registry_resolve(r, "alpha", &in, err) == ST_OK && in.version == 4);
    registry_close(&r);
    return 0;
}

static int test_blob_dedup(void)
{
    char err[ST_ERR_LEN];
    const char *db = s_path("dedup.db");
    registry_t *r = registry_open(db, 0, err);
    CHECKF(r != NULL, "%s", err);
    int v;
    CHECK(s_add(r, "one", 42, NULL, &v, err) == ST_OK);
    CHECK(s_add(r, "two", 42, NULL, &v, err) == ST_OK);
    CHECK(s_add(r, "one", 42, NULL, &v, err) == ST_OK && v == 2);
    CHECK(s_add(r, "one", 43, NULL, &v, err) == ST_OK && v == 3);
    registry_state_info_t a, b, c;
    CHECK(registry_resolve(r, "one@1", &a, err) == ST_OK);
    CHECK(registry_resolve(r, "two", &b, err) == ST_OK);
    CHECK(registry_resolve(r, "one@3", &c, err) == ST_OK);
    registry_close(&r);
    CHECK(!strcmp(a.blob_sha256, b.blob_sha256));
    CHECK(strcmp(a.blob_sha256, c.blob_sha256) != 0);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM states") == 4);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM state_blobs") == 2);
    return 0;
}

static int test_alias_history(void)
{
    char err[ST_ERR_LEN];
    registry_t *r = registry_open(s_path("alias.db"), 0, err);
    CHECKF(r != NULL, "%s", err);
    int v;
    CHECK(s_add(r, "s", 1, "latest", &v, err) == ST_OK && v == 1);
    CHECK(s_add(r, "s", 2, "latest", &v, err) == ST_OK && v == 2);
    CHECK(s_add(r, "s", 3, NULL, &v, err) == ST_OK && v == 3);
    CHECKF(registry_set_alias(r, "s", "prod", 1, err) == ST_OK, "%s", err);
    CHECK(registry_set_alias(r, "s", "prod", 3, err) == ST_OK);
    CHECK(registry_set_alias(r, "s", "prod", 3, err) == ST_OK); /* no move, no history */
    CHECK(registry_set_alias(r, "s", "prod", 4, err) == ST_ENOTFOUND && strstr(err, "no version 4"));
    CHECK(registry_set_alias(r, "nope", "prod", 1, err) == ST_ENOTFOUND && strstr(err, "nope"));
    CHECK(registry_set_alias(r, "s", "2nd", 1, err) == ST_EINVAL && strstr(err, "digit"));

    registry_state_info_t in;
    CHECK(registry_resolve(r, "s@prod", &in, err) == ST_OK && in.version == 3);
    CHECK(registry_resolve(r, "s@latest", &in, err) == ST_OK && in.version == 2);

    json_t *h = NULL;
    CHECKF(registry_alias_history(r, "s", &h, err) == ST_OK, "%s", err);
    CHECKF(json_array_size(h) == 4, "%zu history rows", json_array_size(h));
    const struct { const char *alias; int old, new_; } want[4] = {
        {"latest", 0, 1}, {"latest", 1, 2}, {"prod", 0, 1}, {"prod", 1, 3}};
    for (int i = 0; i < 4; i++) {
        json_t *e = json_array_get(h, (size_t)i);
        CHECK(!strcmp(json_string_value(json_object_get(e, "alias")), want[i].alias));
        json_t *old = json_object_get(e, "old_version");
        CHECK(want[i].old ? json_integer_value(old) == want[i].old : json_is_null(old));
        CHECK(json_integer_value(json_object_get(e, "new_version")) == want[i].new_);
        CHECK(json_real_value(json_object_get(e, "time")) > 1.7e9);
    }
    json_decref(h);

    json_t *show = NULL;
    CHECKF(registry_show_state(r, "s@prod", &show, err) == ST_OK, "%s", err);
    CHECK(json_integer_value(json_object_get(show, "version")) == 3);
    CHECK(json_array_size(json_object_get(show, "aliases")) == 1);
    CHECK(json_array_size(json_object_get(show, "alias_history")) == 4);
    json_decref(show);
    registry_close(&r);
    return 0;
}

static int test_resolve_forms(void)
{
    char err[ST_ERR_LEN];
    registry_t *r = registry_open(s_path("resolve.db"), 0, err);
    CHECKF(r != NULL, "%s", err);
    int v;
    CHECK(s_add(r, "style.v1-x_y", 10, "stable", &v, err) == ST_OK);
    CHECK(s_add(r, "style.v1-x_y", 11, NULL, &v, err) == ST_OK);
    float want1[NUMEL], want2[NUMEL];
    s_fill(want1, NUMEL, 10);
    s_fill(want2, NUMEL, 11);
    const struct { const char *ref; int version; const float *data; } cases[] = {
        {"style.v1-x_y", 2, want2}, {"style.v1-x_y@1", 1, want1}, {"style.v1-x_y@2", 2, want2},
        {"style.v1-x_y@stable", 1, want1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        registry_state_info_t in;
        float *d = NULL;
        CHECKF(registry_get_state(r, cases[i].ref, &in, &d, err) == ST_OK, "%s: %s", cases[i].ref, err);
        CHECK(in.version == cases[i].version);
        CHECK(in.n_layer == L_ && in.n_head == H_ && in.head_size == N_ && !strcmp(in.dtype, "F32"));
        CHECK(!strcmp(in.model_sha256, s_model));
        CHECK(!memcmp(d, cases[i].data, sizeof want1));
        free(d);
    }
    registry_close(&r);
    return 0;
}

static int test_unknown_names(void)
{
    char err[ST_ERR_LEN];
    registry_t *r = registry_open(s_path("unknown.db"), 0, err);
    CHECKF(r != NULL, "%s", err);
    int v;
    CHECK(s_add(r, "known", 1, "latest", &v, err) == ST_OK);
    registry_state_info_t in;
    const struct { const char *ref; int code; const char *says; } cases[] = {
        {"ghost", ST_ENOTFOUND, "no state named 'ghost'"},
        {"known@7", ST_ENOTFOUND, "no version 7"},
        {"known@prod", ST_ENOTFOUND, "no alias 'prod'"},
        {"known@", ST_EINVAL, "ends with '@'"},
        {"@latest", ST_EINVAL, "names no state"},
        {"known@0", ST_EINVAL, "not a valid version"},
        {"bad name", ST_EINVAL, "bad name"},
        {"known@1x", ST_EINVAL, "not a valid version"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = registry_resolve(r, cases[i].ref, &in, err);
        CHECKF(rc == cases[i].code && strstr(err, cases[i].says), "%s -> %d: %s", cases[i].ref, rc, err);
    }
    json_t *j = NULL;
    CHECK(registry_show_state(r, "ghost@2", &j, err) == ST_ENOTFOUND && j == NULL);
    registry_close(&r);
    return 0;
}

static int test_jobs_and_lineage(void)
{
    char err[ST_ERR_LEN];
    registry_t *r = registry_open(s_path("jobs.db"), 0, err);
    CHECKF(r != NULL, "%s", err);
    CHECKF(registry_register_model(r, "tiny", s_model, "{\"n_layer\":2}", "/m/tiny.pth", err) == ST_OK, "%s", err);
    CHECK(registry_register_model(r, "tiny", s_model, "{\"n_layer\":2}", "/m/tiny.pth", err) == ST_OK);
    CHECK(registry_register_model(r, "other", s_model, NULL, NULL, err) == ST_EINVAL && strstr(err, "'tiny'"));
    int64_t id = 0, seq = 0;
    CHECKF(registry_job_create(r, "style", "{\"name\":\"style\",\"steps\":10}", 5, 1, NULL, &id, err) == ST_OK, "%s",
           err);
    CHECK(id > 0);
    CHECK(registry_job_set_status(r, id, "sleeping", NULL, NULL, err) == ST_EINVAL && strstr(err, "sleeping"));
    CHECK(registry_job_set_status(r, id + 100, "queued", NULL, NULL, err) == ST_ENOTFOUND);
    CHECK(registry_job_set_status(r, id, "queued", NULL, NULL, err) == ST_OK);
    CHECK(registry_job_set_status(r, id, "running", "group-a", NULL, err) == ST_OK);
    CHECK(registry_job_set_status(r, id, "queued", NULL, NULL, err) == ST_OK); /* group lost */
    CHECK(registry_job_set_status(r, id, "running", "group-b", NULL, err) == ST_OK);
    CHECK(registry_job_add_event(r, id, "progress", "{\"step\":1}", &seq, err) == ST_OK && seq == 1);
    CHECK(registry_job_add_event(r, id, "progress", "{\"step\":2}", &seq, err) == ST_OK && seq == 2);
    CHECK(registry_job_add_event(r, id + 100, "progress", "{}", &seq, err) == ST_ENOTFOUND);
    CHECK(registry_checkpoint_add(r, id, 5, "/c/5.ckpt", err) == ST_OK);
    CHECK(registry_checkpoint_add(r, id, 10, "/c/10.ckpt", err) == ST_OK);
    int64_t step = 0;
    char *path = NULL;
    CHECK(registry_checkpoint_latest(r, id, &step, &path, err) == ST_OK && step == 10 && !strcmp(path, "/c/10.ckpt"));
    free(path);
    CHECK(registry_checkpoint_latest(r, id + 1, &step, &path, err) == ST_ENOTFOUND && path == NULL);

    float d[NUMEL];
    s_fill(d, NUMEL, 5);
    registry_metric_t m[2] = {{"eval_loss", 1.25, 2.5, 1}, {"exact_match", 0.5, 0.0, 1}};
    registry_new_state_t s = {.name = "style", .model_sha256 = s_model, .job_id = id, .n_layer = L_, .n_head = H_,
                              .head_size = N_, .data = d, .metrics = m, .n_metrics = 2, .alias = "latest"};
    int v = 0;
    registry_state_info_t in;
    CHECK(registry_state_of_job(r, id, &in, err) == ST_ENOTFOUND);
    s.finish_job = 1;
    CHECKF(registry_add_state(r, &s, &v, err) == ST_OK, "%s", err);
    CHECK(v == 1);
    /* The same result delivered again (e.g. after a coordinator restart)
     * writes nothing and answers with the version already made. */
    s_fill(d, NUMEL, 6);
    int v2 = 0;
    CHECK(registry_add_state(r, &s, &v2, err) == ST_OK && v2 == 1);
    CHECK(registry_resolve(r, "style", &in, err) == ST_OK && in.version == 1);
    CHECK(registry_state_of_job(r, id, &in, err) == ST_OK && in.version == 1 && in.job_id == id);

    json_t *job = NULL, *events = NULL, *show = NULL, *list = NULL;
    CHECK(registry_job_get(r, id, &job, err) == ST_OK);
    CHECK(!strcmp(json_string_value(json_object_get(job, "status")), "succeeded"));
    CHECK(json_integer_value(json_object_get(job, "attempt")) == 2);
    CHECK(!strcmp(json_string_value(json_object_get(job, "worker_group")), "group-b"));
    CHECK(json_real_value(json_object_get(job, "finished")) >= json_real_value(json_object_get(job, "started")));
    CHECK(json_integer_value(json_object_get(json_object_get(job, "spec"), "steps")) == 10);
    CHECK(registry_job_events(r, id, 1, &events, err) == ST_OK && json_array_size(events) == 1);
    CHECK(json_integer_value(json_object_get(json_object_get(json_array_get(events, 0), "data"), "step")) == 2);
    CHECK(registry_job_list(r, "succeeded", &list, err) == ST_OK && json_array_size(list) == 1);
    json_decref(list);
    CHECK(registry_job_list(r, "queued", &list, err) == ST_OK && json_array_size(list) == 0);
    json_decref(list);
    CHECK(registry_show_state(r, "style@latest", &show, err) == ST_OK);
    CHECK(json_integer_value(json_object_get(json_object_get(show, "job"), "id")) == id);
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(show, "model"), "name")), "tiny"));
    json_t *ms = json_object_get(show, "metrics");
    CHECK(json_array_size(ms) == 2);
    json_t *el = json_array_get(ms, 0);
    CHECK(!strcmp(json_string_value(json_object_get(el, "name")), "eval_loss"));
    CHECK(json_real_value(json_object_get(el, "value")) == 1.25 && json_real_value(json_object_get(el, "baseline")) == 2.5);
    json_decref(job);
    json_decref(events);
    json_decref(show);
    CHECK(registry_list_models(r, &list, err) == ST_OK && json_array_size(list) == 1);
    json_decref(list);
    CHECK(registry_find_model(r, "ghost", &list, err) == ST_ENOTFOUND);
    registry_close(&r);
    return 0;
}

/* ---- formats --------------------------------------------------------------- */

static int s_roundtrip(state_format_t fmt, const char *file, int fp16)
{
    char err[ST_ERR_LEN];
    float d[NUMEL];
    s_fill(d, NUMEL, 77);
    d[5] = 1e-30f;      /* subnormal in fp16: flushes, stays deterministic */
    const char *path = s_path(file);
    if (fp16) {
        /* A value fp16 cannot hold is refused, not written as inf. */
        d[6] = -3.0e38f;
        CHECK(state_write(path, fmt, L_, H_, N_, d, 0, err) == ST_EINVAL);
        CHECKF(strstr(err, "fp16") != NULL && strstr(err, "layer 0") != NULL, "%s", err);
        CHECK(access(path, F_OK) != 0); /* nothing half-written left behind */
        d[6] = -65504.0f;   /* the largest fp16 magnitude is fine */
    } else {
        d[6] = -3.0e38f;    /* fp32 extremes survive fp32 formats */
    }
    CHECKF(state_write(path, fmt, L_, H_, N_, d, 0, err) == ST_OK, "%s", err);
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    state_file_t s;
    int rc = state_read(path, fmt, &s, err);
    if (rc == ST_EUNSUPPORTED) {
        printf("skipped: the project's reader cannot read %s yet: %s\n", state_format_name(fmt), err);
        return ST_TEST_SKIP;
    }
    CHECKF(rc == ST_OK, "%s", err);
    CHECK(s.n_layer == L_ && s.n_head == H_ && s.head_size == N_);
    for (size_t i = 0; i < NUMEL; i++) {
        float want = fp16 ? st_f16_to_f32(st_f32_to_f16(d[i])) : d[i];
        CHECKF(memcmp(&s.data[i], &want, 4) == 0, "element %zu: %g vs %g", i, (double)s.data[i], (double)want);
    }
    state_file_free(&s);
    /* The same state always gives the same bytes. */
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    CHECK(st_read_file(path, 1 << 26, &a, &na, err) == ST_OK);
    CHECK(state_write(path, fmt, L_, H_, N_, d, 0, err) == ST_OK);
    CHECK(st_read_file(path, 1 << 26, &b, &nb, err) == ST_OK);
    CHECK(na == nb && !memcmp(a, b, na));
    free(a);
    free(b);
    /* Kernel-expanded states refuse standard formats. */
    CHECK(state_write(s_path("k.safetensors"), fmt, L_, H_, N_, d, 16, err) == ST_EUNSUPPORTED);
    CHECK(strstr(err, "U0") != NULL);
    return 0;
}

static int test_export_safetensors(void) { return s_roundtrip(STATE_FMT_SAFETENSORS, "s.safetensors", 0); }
static int test_export_st(void) { return s_roundtrip(STATE_FMT_ST, "s.st", 1); }
static int test_export_pth(void) { return s_roundtrip(STATE_FMT_PTH, "s.pth", 0); }

static int test_st_layout(void)
{
    /* The .st file holds F16 [H, key, value]: check one element by hand. */
    char err[ST_ERR_LEN];
    float d[NUMEL] = {0};
    size_t v = 3, k = 17, h = 1, l = 1;
    d[((l * H_ + h) * N_ + v) * N_ + k] = 0.5f;
    const char *path = s_path("layout.st");
    CHECK(state_write(path, STATE_FMT_AUTO, L_, H_, N_, d, 0, err) == ST_OK);
    char *buf = NULL;
    size_t n = 0;
    CHECK(st_read_file(path, 1 << 26, &buf, &n, err) == ST_OK);
    uint64_t hlen = 0;
    memcpy(&hlen, buf, 8);
    CHECK(hlen % 8 == 0 && 8 + hlen + (size_t)NUMEL * 2 == n);
    CHECK(strstr(buf + 8, "\"F16\"") != NULL && strstr(buf + 8, "blocks.1.att.time_state") != NULL);
    const uint8_t *data = (const uint8_t *)buf + 8 + hlen;
    size_t at = ((l * H_ + h) * N_ + k) * N_ + v;
    uint16_t x;
    memcpy(&x, data + 2 * at, 2);
    CHECK(x == st_f32_to_f16(0.5f));
    free(buf);
    /* A name without a known extension needs --format. */
    state_format_t f;
    CHECK(state_format_from_path("x.bin", &f, err) == ST_EINVAL && strstr(err, "--format"));
    CHECK(state_format_parse("gguf", &f, err) == ST_EINVAL && strstr(err, "gguf"));
    state_file_t s;
    CHECK(state_read(s_path("absent.st"), STATE_FMT_AUTO, &s, err) == ST_ENOTFOUND);
    return 0;
}

/* Imports read untrusted files: truncated or bit-flipped exports give an
 * error sentence or (when the damage hit only data bytes) a state, never a
 * crash (run under ASan/UBSan with -DSTATETUNE_SANITIZE=ON). */
static int test_import_hostile(void)
{
    char err[ST_ERR_LEN];
    float d[NUMEL];
    s_fill(d, NUMEL, 5);
    const char *files[3] = {"h.safetensors", "h.pth", "h.st"};
    uint32_t x = 12345;
    int refused = 0, read_ok = 0;
    for (int f = 0; f < 3; f++) {
        const char *src = s_path(files[f]);
        CHECK(state_write(src, STATE_FMT_AUTO, L_, H_, N_, d, 0, err) == ST_OK);
        char *orig = NULL;
        size_t n = 0;
        CHECK(st_read_file(src, 1 << 26, &orig, &n, err) == ST_OK);
        char *buf = malloc(n);
        char mutant[1100];
        snprintf(mutant, sizeof mutant, "%s.mut%s", src, strrchr(files[f], '.'));
        for (int round = 0; round < 150; round++) {
            memcpy(buf, orig, n);
            size_t len = n;
            x = x * 1664525u + 1013904223u;
            if (round % 3 == 0) {
                len = x % n; /* truncated */
            } else {
                /* flip bytes, mostly in the header/pickle where parsing happens */
                int flips = 1 + (int)(x >> 28);
                for (int k = 0; k < flips; k++) {
                    x = x * 1664525u + 1013904223u;
                    size_t at = (x >> 8) % (n < 4096 || (x & 1) ? n : 4096);
                    buf[at] = (char)(buf[at] ^ (1 << (x % 8)));
                }
            }
            FILE *fp = fopen(mutant, "wb"); /* no fsync: 450 of them cost seconds */
            CHECK(fp && fwrite(buf, 1, len, fp) == len && fclose(fp) == 0);
            state_file_t sf;
            int rc = state_read(mutant, STATE_FMT_AUTO, &sf, err);
            if (rc == ST_OK) {
                CHECK(sf.data && sf.n_layer >= 1);
                state_file_free(&sf);
                read_ok++;
            } else {
                CHECKF(err[0] != '\0' && sf.data == NULL, "%s round %d: empty error", files[f], round);
                refused++;
            }
        }
        free(buf);
        free(orig);
    }
    printf("import_hostile: %d mutants refused with a sentence, %d read (damage in data only)\n", refused, read_ok);
    CHECK(refused > 100);
    return 0;
}

/* ---- many processes -------------------------------------------------------- */

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Writes versions of three names until the deadline. */
static int s_writer(const char *db, double seconds)
{
    char err[ST_ERR_LEN];
    registry_t *r = registry_open(db, 0, err);
    if (!r) {
        fprintf(stderr, "writer: %s\n", err);
        return 1;
    }
    double end = s_now() + seconds;
    uint32_t i = 0;
    while (s_now() < end) {
        int v;
        const char *names[3] = {"a", "b", "c"};
        int rc = s_add(r, names[i % 3], 1000 + i, (i & 1) ? "latest" : NULL, &v, err);
        if (rc) {
            fprintf(stderr, "writer: %s\n", err);
            registry_close(&r);
            return 1;
        }
        i++;
    }
    registry_close(&r);
    printf("writer: %u versions in %.0f s\n", i, seconds);
    fflush(stdout);
    return 0;
}

/* Reads until the deadline: every list has contiguous versions, every state
 * read back hashes to its record (checked inside registry_get_state) and no
 * call fails - in particular no SQLITE_BUSY reaches us. */
static int s_reader(const char *db, double seconds, int id)
{
    char err[ST_ERR_LEN];
    registry_t *r = registry_open(db, 1, err);
    if (!r) {
        fprintf(stderr, "reader %d: %s\n", id, err);
        return 1;
    }
    double end = s_now() + seconds;
    long reads = 0;
    int seen_latest = 0;
    while (s_now() < end) {
        json_t *list = NULL;
        int rc = registry_list_states(r, &list, err);
        if (rc) goto fail;
        const char *prev = "";
        int prev_v = 0;
        size_t i;
        json_t *e;
        json_array_foreach(list, i, e) {
            const char *n = json_string_value(json_object_get(e, "name"));
            int v = (int)json_integer_value(json_object_get(e, "version"));
            if (strcmp(n, prev)) prev_v = 0;
            if (v != prev_v + 1) {
                snprintf(err, sizeof err, "versions of '%s' jump from %d to %d", n, prev_v, v);
                json_decref(list);
                goto fail;
            }
            prev = n;
            prev_v = v;
        }
        json_decref(list);
        const char *refs[4] = {"a", "b@latest", "c", "a@1"};
        registry_state_info_t in;
        float *d = NULL;
        rc = registry_get_state(r, refs[reads % 4], &in, &d, err);
        if (rc == ST_ENOTFOUND) { /* not written yet */
            reads++;
            continue;
        }
        if (rc) goto fail;
        free(d);
        if (!strcmp(refs[reads % 4], "a")) {
            if (in.version < seen_latest) {
                snprintf(err, sizeof err, "latest of 'a' went back from %d to %d", seen_latest, in.version);
                goto fail;
            }
            seen_latest = in.version;
        }
        reads++;
    }
    registry_close(&r);
    printf("reader %d: %ld reads, no error\n", id, reads);
    fflush(stdout);
    return 0;
fail:
    fprintf(stderr, "reader %d after %ld reads: %s\n", id, reads, err);
    registry_close(&r);
    return 1;
}

static int test_concurrent_readers(void)
{
    const char *env = getenv("STORE_STRESS_SECONDS");
    double seconds = env ? atof(env) : 5.0;
    if (seconds <= 0) seconds = 5.0;
    char err[ST_ERR_LEN];
    const char *db = s_path("stress.db");
    registry_t *r = registry_open(db, 0, err);
    CHECKF(r != NULL, "%s", err);
    registry_close(&r);
    enum { READERS = 8 };
    pid_t pids[READERS + 1];
    for (int i = 0; i <= READERS; i++) {
        fflush(NULL);
        pid_t p = fork();
        CHECK(p >= 0);
        if (p == 0) _exit(i == 0 ? s_writer(db, seconds) : s_reader(db, seconds, i));
        pids[i] = p;
    }
    int failed = 0;
    for (int i = 0; i <= READERS; i++) {
        int status = 0;
        waitpid(pids[i], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed++;
    }
    CHECKF(failed == 0, "%d of %d processes failed", failed, READERS + 1);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM states") > 3);
    return 0;
}

/* Two writers at once (the coordinator is the only writer in production,
 * but a migration or an admin tool may overlap it): both finish without an
 * error, each waiting its turn, and versions stay contiguous. */
static int test_two_writers(void)
{
    const char *db = s_path("writers.db");
    char err[ST_ERR_LEN];
    registry_t *r = registry_open(db, 0, err);
    CHECKF(r != NULL, "%s", err);
    registry_close(&r);
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        fflush(NULL);
        pids[i] = fork();
        CHECK(pids[i] >= 0);
        if (pids[i] == 0) _exit(s_writer(db, 2.0));
    }
    for (int i = 0; i < 2; i++) {
        int status = 0;
        waitpid(pids[i], &status, 0);
        CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer %d failed", i);
    }
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM (SELECT name FROM states GROUP BY name"
                        " HAVING MAX(version) != COUNT(*))") == 0);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM states") > 10);
    return 0;
}

static int test_concurrent_readers_30s(void)
{
    setenv("STORE_STRESS_SECONDS", "30", 0);
    return test_concurrent_readers();
}

/* Kills a writer with SIGKILL at random instants, 20 times, then checks the
 * database: integrity ok, every version has its blob (hash matching) and all
 * its metrics, versions are contiguous, every alias points at a real version. */
static int test_kill_writer(void)
{
    char err[ST_ERR_LEN];
    const char *db = s_path("kill.db");
    registry_t *r = registry_open(db, 0, err);
    CHECKF(r != NULL, "%s", err);
    registry_close(&r);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    for (int round = 0; round < 20; round++) {
        fflush(NULL);
        pid_t p = fork();
        CHECK(p >= 0);
        if (p == 0) {
            registry_t *w = registry_open(db, 0, err);
            if (!w) _exit(1);
            for (uint32_t i = 0;; i++) {
                int v;
                if (s_add(w, (i & 1) ? "k1" : "k2", i + 31u * (uint32_t)round, "latest", &v, err)) _exit(1);
            }
        }
        usleep(20000 + (useconds_t)(rand() % 80000));
        kill(p, SIGKILL);
        int status = 0;
        waitpid(p, &status, 0);
        CHECKF(WIFSIGNALED(status), "writer exited by itself (status %d) in round %d", status, round);
    }
    sqlite3 *h;
    CHECK(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
    sqlite3_stmt *st;
    CHECK(sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(st) == SQLITE_ROW);
    CHECKF(!strcmp((const char *)sqlite3_column_text(st, 0), "ok"), "%s", sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(h);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM states s WHERE NOT EXISTS"
                        " (SELECT 1 FROM state_blobs b WHERE b.sha256 = s.blob_sha256)") == 0);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM states s WHERE (SELECT COUNT(*) FROM state_metrics m"
                        " WHERE m.state = s.id) != 3") == 0);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM aliases a WHERE NOT EXISTS (SELECT 1 FROM states s"
                        " WHERE s.name = a.name AND s.version = a.version)") == 0);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM (SELECT name FROM states GROUP BY name"
                        " HAVING MAX(version) != COUNT(*))") == 0);
    int total = s_sql_int(db, "SELECT COUNT(*) FROM states");
    CHECKF(total >= 20, "only %d versions were written in 20 rounds", total);
    /* And every version reads back with a matching hash. */
    r = registry_open(db, 1, err);
    CHECKF(r != NULL, "%s", err);
    json_t *list = NULL;
    CHECK(registry_list_states(r, &list, err) == ST_OK);
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e) {
        char ref[160];
        snprintf(ref, sizeof ref, "%s@%d", json_string_value(json_object_get(e, "name")),
                 (int)json_integer_value(json_object_get(e, "version")));
        registry_state_info_t in;
        float *d = NULL;
        CHECKF(registry_get_state(r, ref, &in, &d, err) == ST_OK, "%s", err);
        free(d);
    }
    json_decref(list);
    registry_close(&r);
    printf("kill_writer: %d versions survived 20 SIGKILLs intact\n", total);
    return 0;
}

#ifdef STORE_TEST_ENGINE
#include "engine/engine.h"
#include "model/model.h"

/* Runs the model in RNN mode from state0 over text; logits (T, V) out. */
static int s_rnn_logits(const rwkv_model_t *m, const float *state0, const char *text, float *logits, char *err)
{
    rwkv_rnn_t *rnn = rwkv_rnn_new(m, state0, err);
    if (!rnn) return ST_EINVAL;
    int rc = ST_OK;
    for (size_t t = 0; text[t] && rc == ST_OK; t++)
        rc = rwkv_rnn_step(rnn, (unsigned char)text[t], logits + t * (size_t)m->cfg.vocab, err);
    rwkv_rnn_destroy(&rnn);
    return rc;
}

/* SPEC section 5: a state loaded back from any export gives the same logits.
 * fp32 formats give bit-identical logits; .st (fp16) gives exactly the
 * logits of the fp16-rounded state. The model is pysrc-rwkv7-5M, whose output
 * depends strongly on its state, so an export that lost or scrambled the
 * state (a wrong transpose, a swapped layer) cannot pass. */
static int test_export_logits(void)
{
    const char *mp = st_test_fixture("rwkv7/pysrc-rwkv7-5M.pth");
    if (!mp) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    rwkv_model_t *m = rwkv_model_load(mp, err);
    CHECKF(m != NULL, "%s", err);
    const int L = m->cfg.n_layer, H = m->cfg.n_head, N = m->cfg.head_size, V = m->cfg.vocab;
    const size_t n = (size_t)L * H * N * N;
    static const char text[] = "def f(x):\n\treturn x";
    const size_t T = sizeof text - 1;
    float *state = malloc(n * sizeof(float)), *half = malloc(n * sizeof(float));
    float *want = malloc(T * V * sizeof(float)), *want16 = malloc(T * V * sizeof(float));
    float *got = malloc(T * V * sizeof(float)), *zero = malloc(T * V * sizeof(float));
    s_fill(state, n, 31337);
    for (size_t i = 0; i < n; i++) half[i] = st_f16_to_f32(st_f32_to_f16(state[i]));
    CHECKF(s_rnn_logits(m, state, text, want, err) == ST_OK, "%s", err);
    CHECKF(s_rnn_logits(m, half, text, want16, err) == ST_OK, "%s", err);
    CHECKF(s_rnn_logits(m, NULL, text, zero, err) == ST_OK, "%s", err);
    double moved = st_rel_err_ff(zero, want, T * V);
    CHECKF(moved > 1e-2, "the state barely changes the logits (%g); the test could not see a broken export", moved);

    registry_t *r = registry_open(s_path("logits.db"), 0, err);
    CHECKF(r != NULL, "%s", err);
    registry_new_state_t ns = {.name = "pysrc", .model_sha256 = m->sha256, .n_layer = L, .n_head = H,
                               .head_size = N, .data = state};
    int v;
    CHECKF(registry_add_state(r, &ns, &v, err) == ST_OK, "%s", err);
    registry_state_info_t in;
    float *stored = NULL;
    CHECKF(registry_get_state(r, "pysrc", &in, &stored, err) == ST_OK, "%s", err);
    registry_close(&r);
    const state_format_t fmts[3] = {STATE_FMT_SAFETENSORS, STATE_FMT_PTH, STATE_FMT_ST};
    const char *files[3] = {"l.safetensors", "l.pth", "l.st"};
    for (int f = 0; f < 3; f++) {
        const char *path = s_path(files[f]);
        CHECKF(state_write(path, fmts[f], in.n_layer, in.n_head, in.head_size, stored, 0, err) == ST_OK, "%s", err);
        state_file_t sf;
        CHECKF(state_read(path, STATE_FMT_AUTO, &sf, err) == ST_OK, "%s", err);
        CHECK(sf.n_layer == L && sf.n_head == H && sf.head_size == N);
        CHECKF(s_rnn_logits(m, sf.data, text, got, err) == ST_OK, "%s", err);
        state_file_free(&sf);
        const float *ref = fmts[f] == STATE_FMT_ST ? want16 : want;
        double rel = st_rel_err_ff(got, want, T * V);
        printf("%-11s logits vs the registry's state: rel err %.3g%s\n", state_format_name(fmts[f]), rel,
               fmts[f] == STATE_FMT_ST ? " (fp16 state)" : "");
        CHECKF(!memcmp(got, ref, T * V * sizeof(float)), "%s: logits differ from the %s state's", files[f],
               fmts[f] == STATE_FMT_ST ? "fp16-rounded" : "original");
    }
    free(stored);
    free(state);
    free(half);
    free(want);
    free(want16);
    free(got);
    free(zero);
    rwkv_model_destroy(&m);
    return 0;
}
#endif

/* The kernel-expanded part of a state (SPEC 4, schema 3): stored as one
 * content-addressed blob beside S0, read back byte for byte in the same
 * snapshot, shown, deduplicated; standard exports refuse it with one
 * sentence while --format statetune carries it, and reads back identical. */
#define KS_M 16
#define KS_N (2 * L_ * H_ * N_ * KS_M)
static int test_kstate_round_trip(void)
{
    char err[ST_ERR_LEN], dir[512], db[700], path[700];
    snprintf(dir, sizeof dir, "%s", st_test_tmpdir()); /* one folder: s_path makes a new one per call */
#define KS_PATH(name) (snprintf(path, sizeof path, "%s/%s", dir, name), path)
    snprintf(db, sizeof db, "%s/kstate.db", dir);
    registry_t *r = registry_open(db, 0, err);
    CHECKF(r != NULL, "%s", err);
    float *d = malloc(NUMEL * sizeof(float)), *k = malloc(KS_N * sizeof(float));
    s_fill(d, NUMEL, 31);
    s_fill(k, KS_N, 32);
    registry_new_state_t s = {.name = "ks", .model_sha256 = s_model, .n_layer = L_, .n_head = H_, .head_size = N_,
                              .data = d, .kernel_features = KS_M, .kernel_gamma = 1.5f, .kstate = k};
    int v1 = 0, v2 = 0, v3 = 0;
    CHECKF(registry_add_state(r, &s, &v1, err) == ST_OK, "%s", err);
    CHECKF(registry_add_state(r, &s, &v2, err) == ST_OK, "%s", err); /* same content: blobs shared */
    /* kernel_features without a stored U0 (as registered before schema 3) */
    registry_new_state_t old = s;
    old.kstate = NULL;
    CHECKF(registry_add_state(r, &old, &v3, err) == ST_OK, "%s", err);
    /* refused: NaN in U0, impossible gamma */
    float keep = k[7];
    k[7] = NAN;
    CHECK(registry_add_state(r, &s, NULL, err) == ST_ENUMERIC && strstr(err, "kernel-expanded"));
    k[7] = keep;
    s.kernel_gamma = 0;
    CHECK(registry_add_state(r, &s, NULL, err) == ST_EINVAL && strstr(err, "gamma"));
    registry_close(&r);
    CHECK(v1 == 1 && v2 == 2 && v3 == 3);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM state_blobs") == 2);
    CHECK(s_sql_int(db, "SELECT COUNT(*) FROM state_kstates") == 2);

    r = registry_open(db, 1, err);
    CHECKF(r != NULL, "%s", err);
    registry_state_info_t in;
    float *d2 = NULL, *k2 = NULL;
    CHECKF(registry_get_state_ks(r, "ks@1", &in, &d2, &k2, err) == ST_OK, "%s", err);
    CHECK(d2 && k2 && memcmp(d2, d, NUMEL * sizeof(float)) == 0 && memcmp(k2, k, KS_N * sizeof(float)) == 0);
    CHECK(in.kernel_features == KS_M && in.kernel_gamma == 1.5f && strlen(in.kstate_sha256) == 64);
    printf("ks@1: M %d, gamma %g, U0 blob %.12s, bytes identical\n", in.kernel_features, (double)in.kernel_gamma,
           in.kstate_sha256);
    free(d2), free(k2);
    CHECKF(registry_get_state_ks(r, "ks@3", &in, &d2, &k2, err) == ST_OK, "%s", err);
    CHECK(d2 && !k2 && in.kernel_features == KS_M && in.kstate_sha256[0] == 0);
    free(d2);
    json_t *o = NULL;
    CHECKF(registry_show_state(r, "ks@2", &o, err) == ST_OK, "%s", err);
    CHECK(json_integer_value(json_object_get(o, "kernel_features")) == KS_M);
    CHECK(json_number_value(json_object_get(o, "kernel_gamma")) == 1.5);
    CHECK(json_is_string(json_object_get(o, "kstate_sha256")));
    json_decref(o);
    registry_close(&r);

    /* a damaged kernel-expanded blob is reported, never returned */
    sqlite3 *h;
    CHECK(sqlite3_open(db, &h) == SQLITE_OK);
    CHECK(sqlite3_exec(h, "UPDATE state_blobs SET data = zeroblob(length(data)) WHERE sha256 IN"
                          " (SELECT blob_sha256 FROM state_kstates)", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(h);
    r = registry_open(db, 1, err);
    CHECKF(r != NULL, "%s", err);
    CHECK(registry_get_state_ks(r, "ks@1", &in, &d2, &k2, err) == ST_EFORMAT && !d2 && !k2);
    printf("damaged: %s\n", err);
    CHECK(strstr(err, "kernel-expanded"));
    registry_close(&r);

    /* files: every standard format refuses; statetune's own carries it, read back identical */
    const char *files[3] = {"k.safetensors", "k.pth", "k.st"};
    for (int f = 0; f < 3; f++) {
        CHECK(state_write(KS_PATH(files[f]), STATE_FMT_AUTO, L_, H_, N_, d, KS_M, err) == ST_EUNSUPPORTED);
        CHECK(strstr(err, "M=16") && strstr(err, "--format statetune"));
        CHECK(access(KS_PATH(files[f]), F_OK) != 0);
    }
    printf("refused: %s\n", err);
    size_t nk = (size_t)L_ * H_ * N_ * KS_M;
    state_kstate_t ks = {KS_M, 1.5f, k, k + nk}, back;
    state_file_t sf;
    char p[700];
    snprintf(p, sizeof p, "%s/k.statetune.safetensors", dir);
    CHECKF(state_write_statetune(p, L_, H_, N_, d, &ks, err) == ST_OK, "%s", err);
    CHECKF(state_read_statetune(p, &sf, &back, err) == ST_OK, "%s", err);
    CHECK(sf.n_layer == L_ && sf.n_head == H_ && sf.head_size == N_ && memcmp(sf.data, d, NUMEL * sizeof(float)) == 0);
    CHECK(back.M == KS_M && back.gamma == 1.5f && memcmp(back.u0, k, nk * sizeof(float)) == 0 &&
          memcmp(back.support, k + nk, nk * sizeof(float)) == 0);
    state_kstate_free(&back);
    state_file_free(&sf);
    /* the same file read as a plain state gives S0 (what other tools see) */
    CHECKF(state_read(p, STATE_FMT_AUTO, &sf, err) == ST_OK, "%s", err);
    CHECK(memcmp(sf.data, d, NUMEL * sizeof(float)) == 0);
    state_file_free(&sf);
    /* a plain state through the statetune reader has no kernel part; a kstate file alone is checked */
    CHECK(state_write(KS_PATH("plain.safetensors"), STATE_FMT_AUTO, L_, H_, N_, d, 0, err) == ST_OK);
    CHECKF(state_read_statetune(KS_PATH("plain.safetensors"), &sf, &back, err) == ST_OK && back.M == 0, "%s", err);
    state_file_free(&sf);
    CHECK(state_kstate_read(KS_PATH("plain.safetensors"), L_, H_, N_, &back, err) == ST_EFORMAT);
    CHECK(state_kstate_read(p, L_ + 1, H_, N_, &back, err) == ST_EFORMAT); /* wrong shape for this model */
    /* truncated statetune files are refused */
    char *img = NULL;
    size_t n = 0;
    CHECK(st_read_file(p, 1 << 26, &img, &n, err) == ST_OK);
    CHECK(st_write_file_atomic(KS_PATH("cut.safetensors"), img, n - 1000, err) == ST_OK);
    CHECK(state_read_statetune(KS_PATH("cut.safetensors"), &sf, &back, err) != ST_OK);
    free(img);
    free(d), free(k);
    return 0;
#undef KS_PATH
}

static const st_test_t tests[] = {
#ifdef STORE_TEST_ENGINE
    {"export_logits", test_export_logits},
#endif
    {"schema_migrations", test_schema_migrations},
    {"versions_count_up", test_versions_count_up},
    {"blob_dedup", test_blob_dedup},
    {"alias_history", test_alias_history},
    {"resolve_forms", test_resolve_forms},
    {"unknown_names", test_unknown_names},
    {"jobs_and_lineage", test_jobs_and_lineage},
    {"export_safetensors", test_export_safetensors},
    {"export_st", test_export_st},
    {"export_pth", test_export_pth},
    {"st_layout", test_st_layout},
    {"import_hostile", test_import_hostile},
    {"concurrent_readers", test_concurrent_readers},
    {"concurrent_readers_30s", test_concurrent_readers_30s},
    {"two_writers", test_two_writers},
    {"kill_writer", test_kill_writer},
    {"kstate_round_trip", test_kstate_round_trip},
    {NULL, NULL},
};

/* Helpers for tests/store_torch.py, which checks our files with real torch:
 *   test_store --write-exports DIR   writes DIR/state.{pth,safetensors,st} and
 *                                    DIR/state.f32 (the raw expected data);
 *   test_store --check-import FILE RAW L H N   reads FILE with state_read and
 *                                    compares it bit for bit with RAW. */
static int s_write_exports(const char *dir)
{
    char err[ST_ERR_LEN], path[1024];
    float *d = malloc(NUMEL * sizeof(float));
    s_fill(d, NUMEL, 2024);
    const char *ext[3] = {"pth", "safetensors", "st"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/state.%s", dir, ext[i]);
        if (state_write(path, STATE_FMT_AUTO, L_, H_, N_, d, 0, err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
    }
    snprintf(path, sizeof path, "%s/state.f32", dir);
    int rc = st_write_file_atomic(path, d, NUMEL * sizeof(float), err);
    free(d);
    if (rc) fprintf(stderr, "%s\n", err);
    printf("%d %d %d\n", L_, H_, N_);
    return rc ? 1 : 0;
}

static int s_check_import(const char *file, const char *raw, int L, int H, int N)
{
    char err[ST_ERR_LEN];
    state_file_t s;
    char *want = NULL;
    size_t n = 0;
    if (state_read(file, STATE_FMT_AUTO, &s, err) || st_read_file(raw, 1u << 30, &want, &n, err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int ok = s.n_layer == L && s.n_head == H && s.head_size == N && n == (size_t)L * H * N * N * 4 &&
             !memcmp(s.data, want, n);
    fprintf(ok ? stdout : stderr, "%s: [%d, %d, %d, %d] %s\n", file, s.n_layer, s.n_head, s.head_size, s.head_size,
            ok ? "matches" : "DIFFERS");
    state_file_free(&s);
    free(want);
    return ok ? 0 : 1;
}

/* test_store --make-db FILE: a small registry for tests/store_cli.sh - model
 * "tiny", job 1 "style" (succeeded), style@1..3 with metrics, aliases
 * latest -> 3 and prod -> 1 -> 2, and "plain" (imported, no metrics). */
static int s_make_db(const char *db)
{
    char err[ST_ERR_LEN];
    registry_t *r = registry_open(db, 0, err);
    int64_t job = 0;
    int v, rc = r ? ST_OK : ST_EIO;
    if (!rc) rc = registry_register_model(r, "tiny", s_model, "{\"n_layer\":2,\"n_embd\":128,\"vocab\":256}",
                                          "/models/tiny.pth", err);
    if (!rc) rc = registry_job_create(r, "style", "{\"name\":\"style\",\"train\":\"train.jsonl\",\"steps\":60}", 0, 1,
                                      "running", &job, err);
    for (int i = 1; i <= 3 && !rc; i++) {
        registry_metric_t m[2] = {{"eval_loss", 2.0 - 0.25 * i, 2.5, 1}, {"token_accuracy", 0.5 + 0.1 * i, 0.4, 1}};
        float d[NUMEL];
        s_fill(d, NUMEL, (uint32_t)i);
        registry_new_state_t s = {.name = "style", .model_sha256 = s_model, .job_id = job, .n_layer = L_,
                                  .n_head = H_, .head_size = N_, .data = d, .metrics = m, .n_metrics = 2,
                                  .alias = "latest"};
        rc = registry_add_state(r, &s, &v, err);
    }
    if (!rc) rc = registry_set_alias(r, "style", "prod", 1, err);
    if (!rc) rc = registry_set_alias(r, "style", "prod", 2, err);
    if (!rc) rc = registry_job_set_status(r, job, "succeeded", "group-1", NULL, err);
    if (!rc) {
        float d[NUMEL];
        s_fill(d, NUMEL, 99);
        registry_new_state_t s = {.name = "plain", .model_sha256 = s_model, .n_layer = L_, .n_head = H_,
                                  .head_size = N_, .data = d};
        rc = registry_add_state(r, &s, &v, err);
    }
    if (!rc) {
        float d[NUMEL];
        s_fill(d, NUMEL, 7);
        registry_new_state_t s = {.name = "kernel", .model_sha256 = s_model, .n_layer = L_, .n_head = H_,
                                  .head_size = N_, .data = d, .kernel_features = 16};
        rc = registry_add_state(r, &s, &v, err);
    }
    if (!rc) { /* kernel-expanded with its U0 stored (schema 3) */
        float d[NUMEL], *k = malloc(KS_N * sizeof(float));
        s_fill(d, NUMEL, 8);
        s_fill(k, KS_N, 9);
        registry_new_state_t s = {.name = "kstate", .model_sha256 = s_model, .n_layer = L_, .n_head = H_,
                                  .head_size = N_, .data = d, .kernel_features = KS_M, .kernel_gamma = 2.0f,
                                  .kstate = k};
        rc = k ? registry_add_state(r, &s, &v, err) : ST_ENOMEM;
        free(k);
    }
    registry_close(&r);
    if (rc) fprintf(stderr, "%s\n", err);
    /* the expected data of style@2, for byte comparisons */
    char path[1024];
    float d[NUMEL];
    s_fill(d, NUMEL, 2);
    snprintf(path, sizeof path, "%s.style2.f32", db);
    if (!rc) rc = st_write_file_atomic(path, d, sizeof d, err);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--make-db")) return s_make_db(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "--write-exports")) return s_write_exports(argv[2]);
    if (argc == 7 && !strcmp(argv[1], "--check-import"))
        return s_check_import(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
    return st_test_main(argc, argv, tests);
}
