/*
 * schema.c - opening the registry database: the schema and its migrations,
 * the connection settings, the transaction runner with busy retries, and the
 * one table that turns SQLite result codes into st_err codes and sentences.
 *
 * Settings (SPEC section 5): WAL, so that readers never block the writer nor
 * the writer the readers; synchronous FULL, so that a state the coordinator
 * has reported registered survives a crash of the machine too; foreign keys
 * on; a busy timeout of REG_BUSY_TIMEOUT_MS. The file is created 0600: it
 * holds job specs and every tuned state.
 *
 * Migrations: s_migrations[i] brings the schema from version i to i+1
 * (PRAGMA user_version). Each step runs in its own BEGIN IMMEDIATE
 * transaction that re-reads the version first, so two processes opening a
 * fresh file at once apply each step exactly once, and a crash in the middle
 * of a step leaves the previous version intact. Steps are append-only: a
 * released step is never edited, a change is a new step.
 */
#include "store/registry_internal.h"
#include "common/st_err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *const s_migrations[] = {
    /* 0 -> 1: the records of SPEC section 5. */
    "CREATE TABLE models("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  sha256 TEXT NOT NULL UNIQUE,"
    "  config TEXT NOT NULL DEFAULT '{}',"
    "  path TEXT,"
    "  created REAL NOT NULL);"
    "CREATE TABLE datasets("
    "  sha256 TEXT PRIMARY KEY,"
    "  path TEXT,"
    "  counts TEXT NOT NULL DEFAULT '{}',"
    "  created REAL NOT NULL);"
    "CREATE TABLE jobs("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name TEXT NOT NULL,"
    "  spec TEXT NOT NULL,"
    "  status TEXT NOT NULL CHECK(status IN"
    "    ('validating','queued','running','succeeded','failed','cancelled')),"
    "  priority INTEGER NOT NULL DEFAULT 0,"
    "  gpus INTEGER NOT NULL DEFAULT 1,"
    "  created REAL NOT NULL,"
    "  started REAL,"
    "  finished REAL,"
    "  worker_group TEXT,"
    "  error TEXT,"
    "  attempt INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX jobs_by_status ON jobs(status, priority DESC, id);"
    "CREATE TABLE job_events("
    "  job INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    "  seq INTEGER NOT NULL,"
    "  time REAL NOT NULL,"
    "  kind TEXT NOT NULL,"
    "  data TEXT NOT NULL DEFAULT '{}',"
    "  PRIMARY KEY(job, seq)) WITHOUT ROWID;"
    "CREATE TABLE checkpoints("
    "  id INTEGER PRIMARY KEY,"
    "  job INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    "  step INTEGER NOT NULL,"
    "  path TEXT NOT NULL,"
    "  created REAL NOT NULL,"
    "  UNIQUE(job, step));"
    /* Content addressed: identical states share one blob. */
    "CREATE TABLE state_blobs("
    "  sha256 TEXT PRIMARY KEY,"
    "  bytes INTEGER NOT NULL,"
    "  dtype TEXT NOT NULL,"
    "  shape TEXT NOT NULL,"
    "  data BLOB NOT NULL);"
    "CREATE TABLE states("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  version INTEGER NOT NULL CHECK(version >= 1),"
    "  model_sha256 TEXT NOT NULL,"
    "  job_id INTEGER REFERENCES jobs(id),"
    "  n_layer INTEGER NOT NULL,"
    "  n_head INTEGER NOT NULL,"
    "  head_size INTEGER NOT NULL,"
    "  dtype TEXT NOT NULL,"
    "  blob_sha256 TEXT NOT NULL REFERENCES state_blobs(sha256),"
    "  kernel_features INTEGER NOT NULL DEFAULT 0,"
    "  created REAL NOT NULL,"
    "  UNIQUE(name, version));"
    "CREATE TABLE state_metrics("
    "  state INTEGER NOT NULL REFERENCES states(id) ON DELETE CASCADE,"
    "  name TEXT NOT NULL,"
    "  value REAL NOT NULL,"
    "  baseline REAL,"
    "  PRIMARY KEY(state, name));"
    "CREATE TABLE aliases("
    "  name TEXT NOT NULL,"
    "  alias TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  PRIMARY KEY(name, alias),"
    "  FOREIGN KEY(name, version) REFERENCES states(name, version));"
    "CREATE TABLE alias_history("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  alias TEXT NOT NULL,"
    "  old_version INTEGER,"
    "  new_version INTEGER NOT NULL,"
    "  time REAL NOT NULL);",
    /* 1 -> 2: inference clients look states up by model. */
    "CREATE INDEX states_by_model ON states(model_sha256, name, version);"
    "CREATE INDEX alias_history_by_name ON alias_history(name, id);",
    /* 2 -> 3: the kernel-expanded part of a state (SPEC section 4): U0 and
     * its support vectors as one content-addressed blob, and gamma. A table
     * of its own, so that older rows (kernel_features set, U0 never stored)
     * simply have none. */
    "CREATE TABLE state_kstates("
    "  state INTEGER PRIMARY KEY REFERENCES states(id),"
    "  features INTEGER NOT NULL CHECK(features >= 1),"
    "  gamma REAL NOT NULL CHECK(gamma > 0),"
    "  blob_sha256 TEXT NOT NULL REFERENCES state_blobs(sha256));",
};
#define N_MIGRATIONS ((int)(sizeof s_migrations / sizeof s_migrations[0]))

double reg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double s_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

const char *reg_text(sqlite3_stmt *stmt, int col)
{
    const unsigned char *z = sqlite3_column_text(stmt, col);
    return z ? (const char *)z : "";
}

/* The one place where SQLite codes become ours. Busy and locked mean "retry"
 * to reg_txn; the rest are reported with SQLite's own message. */
int reg_sql_fail(registry_t *self, int rc, const char *what, char *err)
{
    int code;
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: code = ST_EBUSY; break;
    case SQLITE_NOMEM: code = ST_ENOMEM; break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: code = ST_EFORMAT; break;
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_PERM:
    case SQLITE_READONLY: code = ST_EIO; break;
    case SQLITE_CONSTRAINT: code = ST_EINVAL; break;
    default: code = ST_ESQL; break;
    }
    const char *msg = self && self->db ? sqlite3_errmsg(self->db) : sqlite3_errstr(rc);
    return st_fail(err, code, "%s: %s (registry '%s')", what, msg,
                   self && self->path ? self->path : "?");
}

int reg_prepare(registry_t *self, const char *sql, sqlite3_stmt **stmt, char *err)
{
    int rc = sqlite3_prepare_v2(self->db, sql, -1, stmt, NULL);
    if (rc != SQLITE_OK) {
        *stmt = NULL;
        return reg_sql_fail(self, rc, "preparing a registry query", err);
    }
    return ST_OK;
}

int reg_step(registry_t *self, sqlite3_stmt *stmt, const char *what, char *err)
{
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) return 1;
    if (rc == SQLITE_DONE) return 0;
    return reg_sql_fail(self, rc, what, err);
}

static int s_exec(registry_t *self, const char *sql, const char *what, char *err)
{
    int rc = sqlite3_exec(self->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? ST_OK : reg_sql_fail(self, rc, what, err);
}

/* Sleeps a short, jittered time so that retrying processes do not collide in
 * lock step. */
static void s_backoff(int attempt)
{
    unsigned us = 1000u << (attempt < 5 ? attempt : 5);
    us += (unsigned)(rand() % 1000);
    usleep(us);
}

int reg_txn(registry_t *self, int write, reg_txn_fn fn, void *ctx, char *err)
{
    if (write && self->readonly)
        return st_fail(err, ST_EINVAL, "registry '%s' is open read-only", self->path);
    double deadline = s_monotonic_ms() + REG_BUSY_TIMEOUT_MS;
    for (int attempt = 0;; attempt++) {
        int rc = s_exec(self, write ? "BEGIN IMMEDIATE" : "BEGIN", "starting a transaction", err);
        if (rc == ST_OK) {
            rc = fn(self, ctx, err);
            if (rc == ST_OK) rc = s_exec(self, "COMMIT", "committing", err);
            if (rc != ST_OK && !sqlite3_get_autocommit(self->db))
                sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        }
        if (rc != ST_EBUSY) return rc;
        if (s_monotonic_ms() > deadline)
            return st_fail(err, ST_EBUSY, "registry '%s' stayed busy for %d s; is another writer holding it?",
                           self->path, REG_BUSY_TIMEOUT_MS / 1000);
        s_backoff(attempt);
    }
}

static int s_user_version(registry_t *self, int *version, char *err)
{
    sqlite3_stmt *st;
    int rc = reg_prepare(self, "PRAGMA user_version", &st, err);
    if (rc) return rc;
    rc = reg_step(self, st, "reading the schema version", err);
    if (rc == 1) {
        *version = sqlite3_column_int(st, 0);
        rc = ST_OK;
    } else if (rc == 0) {
        rc = st_fail(err, ST_ESQL, "reading the schema version: no row");
    }
    sqlite3_finalize(st);
    return rc;
}

/* One migration step, inside its BEGIN IMMEDIATE transaction. */
static int s_migrate_step(registry_t *self, void *ctx, char *err)
{
    int target = *(int *)ctx, version;
    int rc = s_user_version(self, &version, err);
    if (rc) return rc;
    if (version >= target) return ST_OK; /* someone else applied it meanwhile */
    rc = s_exec(self, s_migrations[target - 1], "migrating the registry schema", err);
    if (rc) return rc;
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", target);
    return s_exec(self, sql, "recording the schema version", err);
}

static int s_read_version(registry_t *self, void *ctx, char *err)
{
    return s_user_version(self, (int *)ctx, err);
}

int registry_schema_version(registry_t *self)
{
    return self ? self->version : 0;
}

registry_t *registry_open(const char *path, int readonly, char *err)
{
    registry_t *self = calloc(1, sizeof *self);
    if (!self || !(self->path = strdup(path))) {
        free(self);
        st_fail(err, ST_ENOMEM, "out of memory");
        return NULL;
    }
    self->tag = REG_TAG;
    self->readonly = readonly;
    int rc = ST_OK, flags;
    if (readonly) {
        if (access(path, F_OK) != 0) {
            st_fail(err, ST_ENOTFOUND, "registry '%s' does not exist", path);
            goto fail;
        }
        flags = SQLITE_OPEN_READONLY;
    } else {
        /* Create the file ourselves so that it is born 0600 (SQLite would
         * use the umask); its -wal and -shm files inherit the mode. */
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            st_fail(err, ST_EIO, "cannot create registry '%s': %s", path, strerror(errno));
            goto fail;
        }
        close(fd);
        flags = SQLITE_OPEN_READWRITE;
    }
    int src = sqlite3_open_v2(path, &self->db, flags | SQLITE_OPEN_NOMUTEX, NULL);
    if (src != SQLITE_OK) {
        reg_sql_fail(self, src, "opening the registry", err);
        goto fail;
    }
    sqlite3_extended_result_codes(self->db, 1);
    sqlite3_busy_timeout(self->db, REG_BUSY_TIMEOUT_MS);
    if ((rc = s_exec(self, "PRAGMA foreign_keys = ON", "enabling foreign keys", err))) goto fail;
    if (!readonly) {
        /* journal_mode needs a moment without other connections' locks; the
         * busy timeout covers it. Keep the WAL file between connections so
         * that read-only openers always find it. */
        if ((rc = s_exec(self, "PRAGMA journal_mode = WAL", "switching the registry to WAL", err))) goto fail;
        if ((rc = s_exec(self, "PRAGMA synchronous = FULL", "setting synchronous", err))) goto fail;
        /* A WAL that once held a big state shrinks back after a checkpoint. */
        if ((rc = s_exec(self, "PRAGMA journal_size_limit = 67108864", "limiting the WAL", err))) goto fail;
        int persist = 1;
        sqlite3_file_control(self->db, "main", SQLITE_FCNTL_PERSIST_WAL, &persist);
        for (int target = 1; target <= N_MIGRATIONS; target++) {
            rc = reg_txn(self, 1, s_migrate_step, &target, err);
            if (rc) {
                st_wrap(err, rc, "migrating registry '%s' to schema version %d: ", path, target);
                goto fail;
            }
        }
    }
    if ((rc = reg_txn(self, 0, s_read_version, &self->version, err))) {
        if (rc == ST_EFORMAT || rc == ST_ESQL) st_fail(err, ST_EFORMAT, "'%s' is not a statetune registry (not an SQLite database)", path);
        goto fail;
    }
    if (self->version == 0) {
        st_fail(err, ST_EFORMAT, "'%s' is not a statetune registry (it has no schema; the coordinator creates it)", path);
        goto fail;
    }
    if (self->version > N_MIGRATIONS) {
        st_fail(err, ST_EUNSUPPORTED, "registry '%s' has schema version %d, newer than this statetune knows (%d); upgrade statetune",
                path, self->version, N_MIGRATIONS);
        goto fail;
    }
    if (self->version < N_MIGRATIONS) {
        st_fail(err, ST_EUNSUPPORTED, "registry '%s' has the old schema version %d (this statetune needs %d); start the coordinator once to migrate it",
                path, self->version, N_MIGRATIONS);
        goto fail;
    }
    return self;
fail:
    registry_close(&self);
    return NULL;
}

void registry_close(registry_t **self_p)
{
    if (!self_p || !*self_p) return;
    registry_t *self = *self_p;
    if (self->db) sqlite3_close_v2(self->db);
    free(self->path);
    self->tag = 0xdeadbeef;
    free(self);
    *self_p = NULL;
}
