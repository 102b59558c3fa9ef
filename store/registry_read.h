/*
 * registry_read.h - the read-only side of the statetune registry, the small C
 * library that inference clients link to pull a tuned state by name.
 *
 * A state is addressed as NAME (its latest version), NAME@VERSION (a number)
 * or NAME@ALIAS (an alias such as "latest" or "prod"; alias names never start
 * with a digit, so the two forms cannot be confused). Its data is L layers of
 * [H, N, N] fp32 in the official layout S[h][value][key] (SPEC section 4),
 * stored once per distinct content (a sha256-addressed blob).
 *
 * Readers open the database read-only; every read runs inside one SQLite read
 * transaction, so a state's row, its blob and its metrics come from the same
 * snapshot and a concurrent writer can never show a half-written version. A
 * busy database is waited for (up to the busy timeout) and retried here: a
 * caller never sees SQLITE_BUSY. Every function returns ST_OK or a negative
 * st_err code with one sentence in err (ST_ERR_LEN bytes). A registry_t
 * belongs to one thread at a time (open one per thread).
 *
 * An inference program pulls a state in a few lines:
 *
 *     char err[ST_ERR_LEN];
 *     registry_t *r = registry_open("/srv/statetune/registry.db", 1, err);
 *     registry_state_info_t info;
 *     float *s0 = NULL;
 *     if (r && registry_get_state(r, "support-style@prod", &info, &s0, err) == ST_OK) {
 *         ... s0 is [info.n_layer, info.n_head, 64, 64], e.g. rwkv_rnn_new(model, s0, err) ...
 *         free(s0);
 *     }
 *
 * A state with a kernel-expanded part (info.kernel_features > 0) also needs
 * its U0 and support vectors: registry_get_state_ks returns them, for
 * rwkv_rnn_set_kstate (engine/engine.h). Without them the RNN runs the state
 * without its kernel term, which is not the tuned model.
 *     registry_close(&r);
 */
#ifndef ST_REGISTRY_READ_H
#define ST_REGISTRY_READ_H

#include <jansson.h>
#include <stdint.h>

#define REGISTRY_NAME_MAX 128 /* longest state, model or alias name, in bytes */

typedef struct registry registry_t;

/* A state version as recorded (no data). */
typedef struct {
    int64_t id;                     /* row id, stable */
    char name[REGISTRY_NAME_MAX];   /* state name */
    int version;                    /* 1, 2, ... per name */
    char model_sha256[65];          /* the model it was tuned for */
    int64_t job_id;                 /* lineage: the job that produced it, 0 if imported */
    int n_layer, n_head, head_size; /* shape [L, H, N, N] */
    char dtype[8];                  /* "F32" */
    char blob_sha256[65];           /* sha256 of the data bytes (little-endian fp32) */
    int kernel_features;            /* M > 0: a kernel-expanded U0 goes with it (no standard export) */
    float kernel_gamma;             /* its RBF width (0 when no U0 is stored) */
    char kstate_sha256[65];         /* blob of U0 and the support vectors, "" when none is stored
                                       (states registered before schema 3 have only kernel_features) */
    int64_t created;                /* unix seconds */
} registry_state_info_t;

/* Opens (and for a writer creates and migrates) the registry at path.
 * readonly != 0 opens it for reading only; that needs the file to exist.
 * Returns NULL and fills err on failure. */
registry_t *registry_open(const char *path, int readonly, char *err);

/* Closes the database. Accepts NULL; sets *self_p to NULL. */
void registry_close(registry_t **self_p);

/* Schema version of the open database (PRAGMA user_version). */
int registry_schema_version(registry_t *self);

/* Resolves NAME, NAME@VERSION or NAME@ALIAS. ST_ENOTFOUND with a sentence
 * naming what is missing (the name, the version or the alias). */
int registry_resolve(registry_t *self, const char *ref, registry_state_info_t *out, char *err);

/* Resolves ref and reads its data in the same snapshot: *data_out gets
 * n_layer*n_head*head_size*head_size floats (caller frees). The blob's sha256
 * is checked against the record; a mismatch is ST_EFORMAT. */
int registry_get_state(registry_t *self, const char *ref, registry_state_info_t *info_out,
                       float **data_out, char *err);

/* registry_get_state, and in the same snapshot the kernel-expanded part:
 * *kstate_out gets U0 (L, H, N, M) followed by the support vectors
 * (L, H, M, N), 2 L H N M floats (caller frees), or NULL when the version
 * has none stored (info_out->kstate_sha256 is then ""). Its blob's sha256 is
 * checked too. An inference program hands them to rwkv_rnn_set_kstate
 * (engine/engine.h) as {M, gamma, U0, support}. */
int registry_get_state_ks(registry_t *self, const char *ref, registry_state_info_t *info_out, float **data_out,
                          float **kstate_out, char *err);

/* Every state version, oldest first, as a JSON array of objects
 * {name, version, model_sha256, job_id, shape, dtype, blob_sha256, created,
 * aliases: [...]}. Caller owns *out (json_decref). */
int registry_list_states(registry_t *self, json_t **out, char *err);

/* Everything about one version: the list fields plus metrics
 * [{name, value, baseline}] and the alias history of its name. */
int registry_show_state(registry_t *self, const char *ref, json_t **out, char *err);

/* Registered models as a JSON array {name, sha256, config, path, created}. */
int registry_list_models(registry_t *self, json_t **out, char *err);

#endif
