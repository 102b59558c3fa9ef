/*
 * registry_internal.h - what the registry's files share and nobody else sees:
 * the connection struct, the transaction runner and the one place where
 * SQLite result codes become st_err codes and sentences (schema.c).
 *
 * Convention inside store/: a function that talks to SQLite returns ST_OK or a
 * negative st_err; ST_EBUSY means "the database was busy, run the whole
 * transaction again" and never leaves the registry (reg_txn retries it until
 * the busy timeout runs out, then reports it as one sentence).
 */
#ifndef ST_REGISTRY_INTERNAL_H
#define ST_REGISTRY_INTERNAL_H

#include "store/registry.h"

#include <sqlite3.h>

#define REG_TAG 0x52454731u       /* "REG1": catches wrong or freed handles */
#define REG_BUSY_TIMEOUT_MS 10000 /* how long a call waits for a busy database */

struct registry {
    uint32_t tag;  /* REG_TAG while alive */
    sqlite3 *db;   /* the connection */
    int readonly;  /* opened for reading only */
    int version;   /* schema version after open */
    char *path;    /* database file, for messages */
};

/* The work of one transaction: returns ST_OK, ST_EBUSY (retry) or an error. */
typedef int (*reg_txn_fn)(registry_t *self, void *ctx, char *err);

/* Runs fn inside BEGIN IMMEDIATE (write != 0) or BEGIN (a read snapshot) and
 * commits, retrying the whole transaction while SQLite reports busy, up to
 * REG_BUSY_TIMEOUT_MS. On any error the transaction is rolled back. */
int reg_txn(registry_t *self, int write, reg_txn_fn fn, void *ctx, char *err);

/* Turns a SQLite result code into an st_err with "what: sqlite message". */
int reg_sql_fail(registry_t *self, int rc, const char *what, char *err);

/* Prepares sql; on failure fills err and returns the st_err. */
int reg_prepare(registry_t *self, const char *sql, sqlite3_stmt **stmt, char *err);

/* Steps stmt: 1 for a row, 0 when done, or a negative st_err (ST_EBUSY to retry). */
int reg_step(registry_t *self, sqlite3_stmt *stmt, const char *what, char *err);

/* Current time as unix seconds (double) - one clock for every table. */
double reg_now(void);

/* Column text as a C string ("" for NULL). */
const char *reg_text(sqlite3_stmt *stmt, int col);

#endif
