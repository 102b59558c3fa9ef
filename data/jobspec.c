/*
 * jobspec.c - parse, validate and write back the job file (SPEC section 2.2).
 *
 * Every key is read through one of a few typed getters (s_int, s_num, s_str,
 * s_bool, s_choice) that fill the default when the key is absent and refuse
 * a wrong type or an out-of-range value with a sentence naming the key;
 * nested keys are named with a dot ("dbp.kappa"). Unknown keys are refused
 * by checking each object's keys against its table below, so a typo such as
 * "lr" never silently leaves the default in place.
 *
 * The defaults are what works for state tuning in practice (SPEC section 3):
 * Adam with a very high learning rate, 1.0 decaying to 0.01.
 */
#include "data/jobspec.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "common/st_err.h"
#include "common/st_fs.h"
#include "model/model.h"
#include "model/tensorfile.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JOBSPEC_MAX_FILE_BYTES (1u << 20) /* a job file is a few hundred bytes */

static const char *const s_top_keys[] = {
    "name", "model", "tokenizer", "train", "eval", "ctx_len", "micro_batch", "global_batch",
    "steps", "epochs", "lr_init", "lr_final", "warmup_steps", "grad_clip", "beta1", "beta2",
    "eps", "eval_fraction", "dbp", "observer", "kernel_state", "eval_every", "checkpoint_every",
    "seed", "priority", "gpus", "backend", "precision", "alias", "truncate", NULL};
static const char *const s_dbp_keys[] = {"enabled", "lr", "kappa", "sample_fraction", NULL};
static const char *const s_observer_keys[] = {"teacher", "alpha", "temperature", "top_k", "teacher_state", NULL};
static const char *const s_kernel_keys[] = {"features", "gamma", "support", NULL};
static const char *const s_backends[] = {"cpu", "cuda", NULL};
static const char *const s_precisions[] = {"fp32", "bf16", NULL};
static const char *const s_supports[] = {"kmeans", "random", NULL};
static const char *const s_truncates[] = {"truncate", "split", NULL};

/* What every getter needs: where to write the sentence and how to name the file. */
typedef struct {
    char *err;
    const char *label;  /* "job file 'x.json'" */
    const char *dir;    /* absolute folder relative paths resolve against */
} s_ctx_t;

/* A JSON value as it appeared, shortened, for "got ..." in messages. */
static void s_show(const json_t *v, char *buf, size_t n)
{
    char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    if (!s) {
        snprintf(buf, n, "nothing");
        return;
    }
    if (strlen(s) > 40) snprintf(buf, n, "%.37s...", s);
    else snprintf(buf, n, "%s", s);
    free(s);
}

static int s_bad(const s_ctx_t *c, const char *key, const char *must, const json_t *got)
{
    char shown[64];
    s_show(got, shown, sizeof shown);
    return st_fail(c->err, ST_EINVAL, "%s: '%s' must be %s, got %s", c->label, key, must, shown);
}

static int s_check_keys(const s_ctx_t *c, const json_t *obj, const char *prefix, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        int known = 0;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, key) == 0) known = 1;
        if (!known)
            return st_fail(c->err, ST_EINVAL, "%s: unknown key '%s%s%s'", c->label, prefix,
                           *prefix ? "." : "", key);
    }
    return ST_OK;
}

/* Integer key in [lo, hi]; must describes the range for the message. */
static int s_int(const s_ctx_t *c, const json_t *obj, const char *key, const char *full, long long lo,
                 long long hi, long long def, const char *must, long long *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        *out = def;
        return ST_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return s_bad(c, full, must, v);
    *out = json_integer_value(v);
    return ST_OK;
}

static int s_int32(const s_ctx_t *c, const json_t *obj, const char *key, const char *full, long long lo,
                   long long hi, long long def, const char *must, int *out)
{
    long long v = 0;
    int rc = s_int(c, obj, key, full, lo, hi, def, must, &v);
    if (rc == ST_OK) *out = (int)v;
    return rc;
}

/* Number key; lo_open/hi_open make the bound exclusive. */
static int s_num(const s_ctx_t *c, const json_t *obj, const char *key, const char *full, double lo, int lo_open,
                 double hi, int hi_open, double def, const char *must, double *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        *out = def;
        return ST_OK;
    }
    if (!json_is_number(v)) return s_bad(c, full, must, v);
    double x = json_number_value(v);
    if (!isfinite(x) || (lo_open ? x <= lo : x < lo) || (hi_open ? x >= hi : x > hi))
        return s_bad(c, full, must, v);
    *out = x;
    return ST_OK;
}

static int s_bool(const s_ctx_t *c, const json_t *obj, const char *key, const char *full, int def, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        *out = def;
        return ST_OK;
    }
    if (!json_is_boolean(v)) return s_bad(c, full, "true or false", v);
    *out = json_is_true(v);
    return ST_OK;
}

/* String key, copied. required: absent is an error; allow_null: null -> NULL. */
static int s_str(const s_ctx_t *c, const json_t *obj, const char *key, const char *full, int required,
                 int allow_null, const char *def, char **out)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v && required) return st_fail(c->err, ST_EINVAL, "%s: '%s' is required", c->label, full);
    if (!v || (allow_null && json_is_null(v))) {
        if (def && !(*out = strdup(def))) return st_fail(c->err, ST_ENOMEM, "out of memory");
        return ST_OK;
    }
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        strlen(json_string_value(v)) != json_string_length(v))
        return s_bad(c, full, "a non-empty string", v);
    if (!(*out = strdup(json_string_value(v)))) return st_fail(c->err, ST_ENOMEM, "out of memory");
    return ST_OK;
}

static int s_choice(const s_ctx_t *c, const json_t *obj, const char *key, const char *full,
                    const char *const *choices, char **out)
{
    json_t *v = json_object_get(obj, key);
    const char *s = v ? json_string_value(v) : choices[0];
    for (const char *const *ch = choices; s && *ch; ch++) {
        if (strcmp(*ch, s) == 0) {
            if (!(*out = strdup(*ch))) return st_fail(c->err, ST_ENOMEM, "out of memory");
            return ST_OK;
        }
    }
    char must[128];
    size_t k = (size_t)snprintf(must, sizeof must, "one of");
    for (const char *const *ch = choices; *ch && k < sizeof must; ch++)
        k += (size_t)snprintf(must + k, sizeof must - k, "%s \"%s\"", ch == choices ? "" : ",", *ch);
    return s_bad(c, full, must, v);
}

/* Resolves a path against the job file's folder; absolute stays as is. */
static char *s_resolve(const s_ctx_t *c, const char *path)
{
    if (path[0] == '/') return strdup(path);
    while (path[0] == '.' && path[1] == '/') path += 2;
    size_t n = strlen(c->dir) + strlen(path) + 16;
    char *base = malloc(n);
    if (!base) return NULL;
    /* st_path_relative_to takes a file; any name inside the folder does */
    snprintf(base, n, "%s/job.json", c->dir);
    char *out = st_path_relative_to(base, path);
    free(base);
    return out;
}

/* A path key (required, or optional and null-able), resolved against the
 * job file's folder; *out stays NULL when an optional one is absent. */
static int s_path(const s_ctx_t *c, const json_t *obj, const char *key, const char *full, int required, char **out)
{
    char *given = NULL;
    int rc = s_str(c, obj, key, full, required, !required, NULL, &given);
    if (rc != ST_OK || !given) return rc;
    *out = s_resolve(c, given);
    free(given);
    return *out ? ST_OK : st_fail(c->err, ST_ENOMEM, "out of memory");
}

/* A nested object ("dbp", "observer", "kernel_state"): *out is NULL when it
 * is absent (its getters then fill the defaults); anything but an object,
 * or an unknown key inside it, is refused. */
static int s_section(const s_ctx_t *c, const json_t *root, const char *key, const char *const *allowed,
                     const json_t **out)
{
    const json_t *o = *out = json_object_get(root, key);
    if (!o) return ST_OK;
    if (!json_is_object(o)) return s_bad(c, key, "an object", o);
    return s_check_keys(c, o, key, allowed);
}

static int s_is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* A name ending like a model file is a path even when the file is missing,
 * so that a typo reports "cannot open" rather than "no such registered model". */
static int s_has_model_ext(const char *s)
{
    static const char *const exts[] = {".pth", ".safetensors", ".bin", NULL};
    size_t n = strlen(s);
    for (const char *const *e = exts; *e; e++) {
        size_t k = strlen(*e);
        if (n > k && strcmp(s + n - k, *e) == 0) return 1;
    }
    return 0;
}

/* A model reference: a path (resolved), or a registered name (no '/', no
 * model-file extension and no such file beside the job file). */
static int s_model_ref(const s_ctx_t *c, const char *given, char **path_out, char **name_out)
{
    *path_out = *name_out = NULL;
    char *abs = s_resolve(c, given);
    if (!abs) return st_fail(c->err, ST_ENOMEM, "out of memory");
    if (!strchr(given, '/') && !s_is_file(abs) && !s_has_model_ext(given)) {
        free(abs);
        if (!jobspec_valid_name(given))
            return st_fail(c->err, ST_EINVAL,
                           "%s: model '%s' is neither a file nor a valid registered model name", c->label, given);
        if (!(*name_out = strdup(given))) return st_fail(c->err, ST_ENOMEM, "out of memory");
        return ST_OK;
    }
    *path_out = abs;
    return ST_OK;
}

int jobspec_valid_name(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char ch = s[n];
        int ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                 ch == '_' || ch == '-';
        if (!ok || n >= JOBSPEC_NAME_MAX) return 0;
    }
    return n >= 1;
}

static int s_parse(const s_ctx_t *c, const json_t *root, jobspec_t *j)
{
    int rc;
    long long ll;
    char *tmp = NULL;
#define TRY(x)                                                                                                      \
    do {                                                                                                          \
        if ((rc = (x)) != ST_OK) goto done;                                                                       \
    } while (0)
    if (!json_is_object(root))
        return st_fail(c->err, ST_EFORMAT, "%s: the job must be a JSON object", c->label);
    TRY(s_check_keys(c, root, "", s_top_keys));

    TRY(s_str(c, root, "name", "name", 1, 0, NULL, &j->name));
    if (!jobspec_valid_name(j->name)) {
        rc = s_bad(c, "name", "1 to 64 of A-Z a-z 0-9 . _ -", json_object_get(root, "name"));
        goto done;
    }
    TRY(s_str(c, root, "model", "model", 1, 0, NULL, &tmp));
    TRY(s_model_ref(c, tmp, &j->model_path, &j->model_name));
    free(tmp);
    tmp = NULL;

    TRY(s_str(c, root, "tokenizer", "tokenizer", 0, 1, NULL, &tmp));
    if (tmp && strcmp(tmp, "bytes") != 0) {
        if (!(j->tokenizer = s_resolve(c, tmp))) {
            rc = st_fail(c->err, ST_ENOMEM, "out of memory");
            goto done;
        }
        free(tmp);
    } else {
        j->tokenizer = tmp;
    }
    tmp = NULL;

    TRY(s_path(c, root, "train", "train", 1, &j->train));
    TRY(s_path(c, root, "eval", "eval", 0, &j->eval));

    TRY(s_int32(c, root, "ctx_len", "ctx_len", 1, 1 << 20, 512, "a positive integer", &j->ctx_len));
    TRY(s_int32(c, root, "micro_batch", "micro_batch", 1, 1 << 16, 4, "a positive integer", &j->micro_batch));
    TRY(s_int32(c, root, "global_batch", "global_batch", 1, 1 << 24, 16, "a positive integer", &j->global_batch));
    if (j->global_batch % j->micro_batch != 0) {
        rc = st_fail(c->err, ST_EINVAL, "%s: 'global_batch' (%d) must be a multiple of 'micro_batch' (%d)", c->label,
                     j->global_batch, j->micro_batch);
        goto done;
    }
    if (json_object_get(root, "steps") && json_object_get(root, "epochs")) {
        rc = st_fail(c->err, ST_EINVAL, "%s: give 'steps' or 'epochs', not both", c->label);
        goto done;
    }
    /* bounds far beyond any real job keep steps * samples within int64 downstream */
    TRY(s_int(c, root, "steps", "steps", 1, 1000000000000LL, 0, "a positive integer up to 10^12", &ll));
    j->steps = ll;
    TRY(s_int(c, root, "epochs", "epochs", 1, 1000000, j->steps ? 0 : 1, "a positive integer up to 10^6", &ll));
    j->epochs = ll;

    TRY(s_num(c, root, "lr_init", "lr_init", 0, 1, INFINITY, 0, 1.0, "a positive number", &j->lr_init));
    TRY(s_num(c, root, "lr_final", "lr_final", 0, 0, INFINITY, 0, 0.01, "a number >= 0", &j->lr_final));
    if (j->lr_final > j->lr_init) {
        rc = st_fail(c->err, ST_EINVAL, "%s: 'lr_final' (%g) must not exceed 'lr_init' (%g)", c->label, j->lr_final,
                     j->lr_init);
        goto done;
    }
    TRY(s_int32(c, root, "warmup_steps", "warmup_steps", 0, INT_MAX, 10, "an integer >= 0", &j->warmup_steps));
    TRY(s_num(c, root, "grad_clip", "grad_clip", 0, 0, INFINITY, 0, 1.0, "a number >= 0 (0 turns clipping off)",
              &j->grad_clip));
    TRY(s_num(c, root, "beta1", "beta1", 0, 0, 1, 1, 0.9, "a number in [0, 1)", &j->beta1));
    TRY(s_num(c, root, "beta2", "beta2", 0, 0, 1, 1, 0.99, "a number in [0, 1)", &j->beta2));
    TRY(s_num(c, root, "eps", "eps", 0, 1, INFINITY, 0, 1e-8, "a positive number", &j->eps));
    TRY(s_num(c, root, "eval_fraction", "eval_fraction", 0, 1, 1, 1, 0.1, "a number in (0, 1)", &j->eval_fraction));

    const json_t *o;
    TRY(s_section(c, root, "dbp", s_dbp_keys, &o));
    TRY(s_bool(c, o, "enabled", "dbp.enabled", 0, &j->dbp.enabled));
    TRY(s_num(c, o, "lr", "dbp.lr", 0, 1, INFINITY, 0, 1e-3, "a positive number", &j->dbp.lr));
    TRY(s_num(c, o, "kappa", "dbp.kappa", 0, 0, 1, 0, 0.01, "a number in [0, 1]", &j->dbp.kappa));
    TRY(s_num(c, o, "sample_fraction", "dbp.sample_fraction", 0, 1, 1, 0, 0.25, "a number in (0, 1]",
              &j->dbp.sample_fraction));

    TRY(s_section(c, root, "observer", s_observer_keys, &o));
    TRY(s_str(c, o, "teacher", "observer.teacher", 0, 1, NULL, &tmp));
    if (tmp) {
        TRY(s_model_ref(c, tmp, &j->observer.teacher_path, &j->observer.teacher_name));
        free(tmp);
        tmp = NULL;
    }
    TRY(s_num(c, o, "alpha", "observer.alpha", 0, 0, 1, 0, 0.5, "a number in [0, 1]", &j->observer.alpha));
    TRY(s_num(c, o, "temperature", "observer.temperature", 0, 1, INFINITY, 0, 1.0, "a positive number",
              &j->observer.temperature));
    TRY(s_int32(c, o, "top_k", "observer.top_k", 0, 1 << 20, 64, "0 (the teacher on the fly) or a positive integer",
                &j->observer.top_k));
    TRY(s_path(c, o, "teacher_state", "observer.teacher_state", 0, &j->observer.teacher_state));

    TRY(s_section(c, root, "kernel_state", s_kernel_keys, &o));
    TRY(s_int32(c, o, "features", "kernel_state.features", 0, 1 << 16, 0, "an integer >= 0",
                &j->kernel_state.features));
    TRY(s_num(c, o, "gamma", "kernel_state.gamma", 0, 1, INFINITY, 0, 1.0, "a positive number",
              &j->kernel_state.gamma));
    TRY(s_choice(c, o, "support", "kernel_state.support", s_supports, &j->kernel_state.support));

    TRY(s_int32(c, root, "eval_every", "eval_every", 0, INT_MAX, 50, "an integer >= 0", &j->eval_every));
    TRY(s_int32(c, root, "checkpoint_every", "checkpoint_every", 0, INT_MAX, 50, "an integer >= 0",
                &j->checkpoint_every));
    TRY(s_int(c, root, "seed", "seed", 0, LLONG_MAX, 1, "an integer >= 0", &ll));
    j->seed = (uint64_t)ll;
    TRY(s_int32(c, root, "priority", "priority", INT_MIN, INT_MAX, 0, "an integer", &j->priority));
    TRY(s_int32(c, root, "gpus", "gpus", 1, 4096, 1, "a positive integer", &j->gpus));
    if (j->global_batch % j->gpus != 0) {
        rc = st_fail(c->err, ST_EINVAL, "%s: 'global_batch' (%d) must be a multiple of 'gpus' (%d) so that every rank "
                     "gets the same number of samples", c->label, j->global_batch, j->gpus);
        goto done;
    }
    TRY(s_choice(c, root, "backend", "backend", s_backends, &j->backend));
    TRY(s_choice(c, root, "precision", "precision", s_precisions, &j->precision));
    if (strcmp(j->backend, "cpu") == 0 && strcmp(j->precision, "bf16") == 0) {
        rc = st_fail(c->err, ST_EINVAL, "%s: 'precision' \"bf16\" needs 'backend' \"cuda\" (the CPU path is fp32)",
                     c->label);
        goto done;
    }
    TRY(s_str(c, root, "alias", "alias", 0, 0, "latest", &j->alias));
    if (!jobspec_valid_name(j->alias)) {
        rc = s_bad(c, "alias", "1 to 64 of A-Z a-z 0-9 . _ -", json_object_get(root, "alias"));
        goto done;
    }
    TRY(s_choice(c, root, "truncate", "truncate", s_truncates, &tmp));
    j->truncate = strcmp(tmp, "split") == 0 ? JOB_SPLIT : JOB_TRUNCATE;
    rc = ST_OK;
done:
    free(tmp);
    return rc;
#undef TRY
}

/* The absolute folder of base (a file, a folder, or NULL = cwd). */
static char *s_base_dir(const char *base)
{
    char *dir = NULL;
    struct stat st;
    if (!base) {
        dir = strdup(".");
    } else if (stat(base, &st) == 0 && S_ISDIR(st.st_mode)) {
        dir = strdup(base);
    } else {
        const char *slash = strrchr(base, '/');
        dir = slash ? strndup(base, slash == base ? 1 : (size_t)(slash - base)) : strdup(".");
    }
    if (!dir) return NULL;
    char *real = realpath(dir, NULL);
    if (real) {
        free(dir);
        return real;
    }
    if (dir[0] == '/') return dir;
    /* the folder does not exist (yet): make it absolute by hand */
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return dir;
    size_t n = strlen(cwd) + strlen(dir) + 2;
    char *abs = malloc(n);
    if (abs) snprintf(abs, n, "%s/%s", cwd, dir);
    free(dir);
    return abs;
}

int jobspec_parse_string(const char *json, const char *base, jobspec_t **out, char *err)
{
    *out = NULL;
    char label[600];
    struct stat st;
    if (base && !(stat(base, &st) == 0 && S_ISDIR(st.st_mode)))
        snprintf(label, sizeof label, "job file '%s'", base);
    else
        snprintf(label, sizeof label, "job spec");
    json_error_t jerr;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return st_fail(err, ST_EFORMAT, "%s: invalid JSON at line %d column %d: %s", label, jerr.line, jerr.column,
                       jerr.text);
    jobspec_t *j = calloc(1, sizeof *j);
    char *dir = s_base_dir(base);
    int rc;
    if (!j || !dir) {
        rc = st_fail(err, ST_ENOMEM, "out of memory");
    } else {
        s_ctx_t c = {err, label, dir};
        rc = s_parse(&c, root, j);
    }
    free(dir);
    json_decref(root);
    if (rc != ST_OK) {
        jobspec_destroy(&j);
        return rc;
    }
    *out = j;
    return ST_OK;
}

int jobspec_parse_file(const char *path, jobspec_t **out, char *err)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = st_read_file(path, JOBSPEC_MAX_FILE_BYTES, &text, &len, err);
    if (rc != ST_OK) return st_wrap(err, rc, "job file '%s': ", path);
    if (strlen(text) != len) {
        free(text);
        return st_fail(err, ST_EFORMAT, "job file '%s': holds a NUL byte", path);
    }
    rc = jobspec_parse_string(text, path, out, err);
    free(text);
    return rc;
}

/* ---- canonical JSON ------------------------------------------------------------ */

static json_t *s_jstr(const char *s)
{
    return s ? json_string(s) : json_null();
}

char *jobspec_to_json(const jobspec_t *j)
{
    json_t *r = json_object();
    json_t *dbp = json_object(), *obs = json_object(), *ks = json_object();
    if (!r || !dbp || !obs || !ks) {
        json_decref(r);
        json_decref(dbp);
        json_decref(obs);
        json_decref(ks);
        return NULL;
    }
    json_object_set_new(r, "name", json_string(j->name));
    json_object_set_new(r, "model", json_string(j->model_path ? j->model_path : j->model_name));
    json_object_set_new(r, "tokenizer", s_jstr(j->tokenizer));
    json_object_set_new(r, "train", json_string(j->train));
    json_object_set_new(r, "eval", s_jstr(j->eval));
    json_object_set_new(r, "ctx_len", json_integer(j->ctx_len));
    json_object_set_new(r, "micro_batch", json_integer(j->micro_batch));
    json_object_set_new(r, "global_batch", json_integer(j->global_batch));
    if (j->steps) json_object_set_new(r, "steps", json_integer(j->steps));
    else json_object_set_new(r, "epochs", json_integer(j->epochs));
    json_object_set_new(r, "lr_init", json_real(j->lr_init));
    json_object_set_new(r, "lr_final", json_real(j->lr_final));
    json_object_set_new(r, "warmup_steps", json_integer(j->warmup_steps));
    json_object_set_new(r, "grad_clip", json_real(j->grad_clip));
    json_object_set_new(r, "beta1", json_real(j->beta1));
    json_object_set_new(r, "beta2", json_real(j->beta2));
    json_object_set_new(r, "eps", json_real(j->eps));
    json_object_set_new(r, "eval_fraction", json_real(j->eval_fraction));
    json_object_set_new(dbp, "enabled", json_boolean(j->dbp.enabled));
    json_object_set_new(dbp, "lr", json_real(j->dbp.lr));
    json_object_set_new(dbp, "kappa", json_real(j->dbp.kappa));
    json_object_set_new(dbp, "sample_fraction", json_real(j->dbp.sample_fraction));
    json_object_set_new(r, "dbp", dbp);
    json_object_set_new(obs, "teacher",
                        s_jstr(j->observer.teacher_path ? j->observer.teacher_path : j->observer.teacher_name));
    json_object_set_new(obs, "alpha", json_real(j->observer.alpha));
    json_object_set_new(obs, "temperature", json_real(j->observer.temperature));
    json_object_set_new(obs, "top_k", json_integer(j->observer.top_k));
    if (j->observer.teacher_state) json_object_set_new(obs, "teacher_state", json_string(j->observer.teacher_state));
    json_object_set_new(r, "observer", obs);
    json_object_set_new(ks, "features", json_integer(j->kernel_state.features));
    json_object_set_new(ks, "gamma", json_real(j->kernel_state.gamma));
    json_object_set_new(ks, "support", json_string(j->kernel_state.support));
    json_object_set_new(r, "kernel_state", ks);
    json_object_set_new(r, "eval_every", json_integer(j->eval_every));
    json_object_set_new(r, "checkpoint_every", json_integer(j->checkpoint_every));
    json_object_set_new(r, "seed", json_integer((json_int_t)j->seed));
    json_object_set_new(r, "priority", json_integer(j->priority));
    json_object_set_new(r, "gpus", json_integer(j->gpus));
    json_object_set_new(r, "backend", json_string(j->backend));
    json_object_set_new(r, "precision", json_string(j->precision));
    json_object_set_new(r, "alias", json_string(j->alias));
    json_object_set_new(r, "truncate", json_string(j->truncate == JOB_SPLIT ? "split" : "truncate"));
    /* 15 significant digits print what people write (0.9, not
     * 0.90000000000000002); fall back to 17, which always round-trips, when
     * some value needs it, so that parse(to_json(x)) == x holds */
    const double reals[] = {j->lr_init, j->lr_final, j->grad_clip, j->beta1, j->beta2, j->eps, j->eval_fraction,
                            j->dbp.lr, j->dbp.kappa, j->dbp.sample_fraction, j->observer.alpha,
                            j->observer.temperature, j->kernel_state.gamma};
    int precision = 15;
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%.15g", reals[i]);
        if (strtod(buf, NULL) != reals[i]) precision = 17;
    }
    char *s = json_dumps(r, JSON_PRESERVE_ORDER | JSON_INDENT(2) | JSON_REAL_PRECISION(precision));
    json_decref(r);
    return s;
}

/* ---- equality, destroy ----------------------------------------------------------- */

static int s_streq(const char *a, const char *b)
{
    if (!a || !b) return a == b;
    return strcmp(a, b) == 0;
}

int jobspec_equal(const jobspec_t *a, const jobspec_t *b)
{
    return s_streq(a->name, b->name) && s_streq(a->model_path, b->model_path) &&
           s_streq(a->model_name, b->model_name) && s_streq(a->tokenizer, b->tokenizer) &&
           s_streq(a->train, b->train) && s_streq(a->eval, b->eval) && a->ctx_len == b->ctx_len &&
           a->micro_batch == b->micro_batch && a->global_batch == b->global_batch && a->steps == b->steps &&
           a->epochs == b->epochs && a->lr_init == b->lr_init && a->lr_final == b->lr_final &&
           a->warmup_steps == b->warmup_steps && a->grad_clip == b->grad_clip && a->beta1 == b->beta1 &&
           a->beta2 == b->beta2 && a->eps == b->eps && a->eval_fraction == b->eval_fraction &&
           a->dbp.enabled == b->dbp.enabled && a->dbp.lr == b->dbp.lr && a->dbp.kappa == b->dbp.kappa &&
           a->dbp.sample_fraction == b->dbp.sample_fraction &&
           s_streq(a->observer.teacher_path, b->observer.teacher_path) &&
           s_streq(a->observer.teacher_name, b->observer.teacher_name) && a->observer.alpha == b->observer.alpha &&
           a->observer.temperature == b->observer.temperature && a->observer.top_k == b->observer.top_k &&
           s_streq(a->observer.teacher_state, b->observer.teacher_state) &&
           a->kernel_state.features == b->kernel_state.features && a->kernel_state.gamma == b->kernel_state.gamma &&
           s_streq(a->kernel_state.support, b->kernel_state.support) && a->eval_every == b->eval_every &&
           a->checkpoint_every == b->checkpoint_every && a->seed == b->seed && a->priority == b->priority &&
           a->gpus == b->gpus && s_streq(a->backend, b->backend) && s_streq(a->precision, b->precision) &&
           s_streq(a->alias, b->alias) && a->truncate == b->truncate;
}

void jobspec_destroy(jobspec_t **self_p)
{
    if (!self_p || !*self_p) return;
    jobspec_t *j = *self_p;
    free(j->name);
    free(j->model_path);
    free(j->model_name);
    free(j->tokenizer);
    free(j->train);
    free(j->eval);
    free(j->observer.teacher_path);
    free(j->observer.teacher_name);
    free(j->observer.teacher_state);
    free(j->kernel_state.support);
    free(j->backend);
    free(j->precision);
    free(j->alias);
    free(j);
    *self_p = NULL;
}

/* ---- inputs ------------------------------------------------------------------------ */

int jobspec_model_vocab(const char *model_path, int *vocab_out, char *err)
{
    *vocab_out = 0;
    tensorfile_t *tf = tensorfile_open(model_path, err);
    if (!tf) return st_wrap(err, ST_EFORMAT, "model '%s': ", model_path);
    /* the whole configuration from shapes: a model that would fail to load
     * on the workers fails here, before the job is queued */
    rwkv_config_t cfg;
    int rc = rwkv_config_from_tensorfile(tf, &cfg, err);
    if (rc != ST_OK) st_wrap(err, rc, "model '%s': ", model_path);
    else *vocab_out = cfg.vocab;
    tensorfile_close(&tf);
    return rc;
}

/* Reads the vocab of the job's model (resolved to a file) into *vocab and
 * checks that the job's tokenizer gives that many token ids; a job naming
 * none takes bytes, which only a vocab-256 model fits. */
static int s_model_fits_tokenizer(const jobspec_t *self, int *vocab_out, char *err)
{
    int rc = jobspec_model_vocab(self->model_path, vocab_out, err);
    if (rc != ST_OK) return rc;
    const char *given = self->tokenizer, *model = self->model_path;
    int vocab = *vocab_out;
    if (!given) {
        if (vocab == 256) return ST_OK;
        return st_fail(err, ST_EINVAL,
                       "'tokenizer' is required: model '%s' has vocab %d (only vocab-256 models default to bytes)",
                       model, vocab);
    }
    int want = strcmp(given, "bytes") == 0 ? 256 : TOKENIZER_WORLD_VOCAB;
    if (vocab != want)
        return st_fail(err, ST_EINVAL, "'tokenizer' %s gives %d token ids but model '%s' has vocab %d",
                       strcmp(given, "bytes") == 0 ? "\"bytes\"" : "(World vocabulary)", want, model, vocab);
    return ST_OK;
}

int jobspec_set_model(jobspec_t *self, const char *model_path, char *err)
{
    if (model_path) {
        char *p = strdup(model_path);
        if (!p) return st_fail(err, ST_ENOMEM, "out of memory");
        free(self->model_path);
        self->model_path = p;
    }
    if (!self->model_path)
        return st_fail(err, ST_ENOTFOUND, "model '%s' is not resolved to a file",
                       self->model_name ? self->model_name : "?");
    int vocab = 0;
    int rc = s_model_fits_tokenizer(self, &vocab, err);
    if (rc != ST_OK) return rc;
    if (!self->tokenizer && !(self->tokenizer = strdup("bytes"))) return st_fail(err, ST_ENOMEM, "out of memory");
    return ST_OK;
}

static json_t *s_dataset_json(const char *role, const char *path, int held_out, const dataset_t *ds)
{
    const dataset_stats_t *st = dataset_stats(ds);
    json_t *counts = json_pack("{sI sI sI sI sI sI sI si}", "lines", (json_int_t)st->lines, "samples",
                               (json_int_t)st->samples, "tokens", (json_int_t)st->tokens, "targets",
                               (json_int_t)st->targets, "truncated", (json_int_t)st->truncated, "split",
                               (json_int_t)st->split, "dropped", (json_int_t)st->dropped, "max_len", st->max_len);
    if (!counts) return NULL;
    return json_pack("{ss ss ss sb so}", "role", role, "path", path, "sha256", st->sha256, "held_out", held_out,
                     "counts", counts);
}

int jobspec_check_inputs_report(const jobspec_t *self, char **report_out, char *err)
{
    if (report_out) *report_out = NULL;
    if (!self->model_path)
        return st_fail(err, ST_ENOTFOUND, "model '%s' must be resolved to a file before the inputs are checked",
                       self->model_name ? self->model_name : "?");
    int vocab = 0;
    int rc = s_model_fits_tokenizer(self, &vocab, err);
    if (rc != ST_OK) return rc;
    if (self->observer.teacher_path) {
        int tv = 0;
        rc = jobspec_model_vocab(self->observer.teacher_path, &tv, err);
        if (rc != ST_OK) return st_wrap(err, rc, "observer.teacher: ");
        if (tv != vocab)
            return st_fail(err, ST_EINVAL, "observer.teacher '%s' has vocab %d but the model has %d",
                           self->observer.teacher_path, tv, vocab);
    }
    if (self->observer.top_k > vocab)
        return st_fail(err, ST_EINVAL, "'observer.top_k' (%d) exceeds the model's vocab (%d)", self->observer.top_k,
                       vocab);

    const char *tok_spec = self->tokenizer ? self->tokenizer : "bytes";
    tokenizer_t *tok = tokenizer_new(tok_spec, err);
    if (!tok) return st_wrap(err, ST_EFORMAT, "tokenizer: ");
    dataset_t *train = NULL, *eval = NULL;
    rc = dataset_load_job(self, tok, &train, &eval, err);
    if (rc == ST_OK && dataset_count(train) < 1)
        rc = st_fail(err, ST_EINVAL, "train data '%s' yields no sample to train on", self->train);
    if (rc == ST_OK && dataset_count(eval) < 1)
        rc = st_fail(err, ST_EINVAL, "eval data yields no sample to evaluate on");
    if (rc == ST_OK && report_out) {
        json_t *sets = json_array();
        json_t *r = sets ? json_pack("{si ss so}", "model_vocab", vocab, "tokenizer", tok_spec, "datasets", sets)
                         : NULL;
        if (!r || json_array_append_new(sets, s_dataset_json("train", self->train, 0, train)) != 0 ||
            json_array_append_new(sets, s_dataset_json("eval", self->eval ? self->eval : self->train, !self->eval,
                                                       eval)) != 0 ||
            !(*report_out = json_dumps(r, JSON_COMPACT | JSON_PRESERVE_ORDER)))
            rc = st_fail(err, ST_ENOMEM, "out of memory");
        json_decref(r);
    }
    dataset_destroy(&train);
    dataset_destroy(&eval);
    tokenizer_destroy(&tok);
    return rc;
}

int jobspec_check_inputs(const jobspec_t *self, char *err)
{
    return jobspec_check_inputs_report(self, NULL, err);
}
