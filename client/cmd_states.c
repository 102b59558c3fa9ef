/*
 * cmd_states.c - `statetune --db FILE states list|show|get|alias`: tuned
 * states read straight from a registry file (opened read-only; the
 * coordinator stays its only writer).
 *
 *   states list [--json]                       every version, aliases beside it
 *   states show NAME[@VERSION|@ALIAS] [--json] metadata, lineage, metrics
 *                                              beside the untuned baseline,
 *                                              alias history
 *   states get NAME[@VERSION|@ALIAS] -o FILE [--format safetensors|pth|st|statetune]
 *                                              export (format from the
 *                                              extension unless given;
 *                                              statetune: with the
 *                                              kernel-expanded part)
 *   states alias NAME@ALIAS VERSION            a write: only through the
 *                                              coordinator (--endpoint)
 */
#include "client/client.h"
#include "common/st_err.h"
#include "store/registry_read.h"
#include "store/state_formats.h"

#include <stdlib.h>
#include <string.h>

static int s_list(int argc, char **argv, const char *db);
static int s_show(int argc, char **argv, const char *db);
static int s_get(int argc, char **argv, const char *db);

static const client_subcmd_t s_subs[] = {
    {"list", s_list, "[--endpoint ENDPOINT | --db FILE] states list [--json]", "every state version"},
    {"show", s_show, "[--endpoint ENDPOINT | --db FILE] states show NAME[@VERSION|@ALIAS] [--json]",
     "one version: lineage, metrics against the baseline, alias history"},
    {"get", s_get,
     "[--endpoint ENDPOINT | --db FILE] states get NAME[@VERSION|@ALIAS] -o FILE [--format safetensors|pth|st|statetune]",
     "write a version to a file other RWKV tools load (statetune: with its kernel-expanded part)"},
    {"export", s_get, "[--endpoint ENDPOINT | --db FILE] states export NAME[@VERSION|@ALIAS] -o FILE [--format F]",
     "the same as get"},
    {"alias", NULL, "[--endpoint ENDPOINT] states alias NAME@ALIAS VERSION", "point an alias at a version"},
    {NULL, NULL, NULL, NULL},
};

const char *const cmd_states_usage[] = {
    "[--endpoint ENDPOINT | --db FILE] states list [--json]",
    "[--endpoint ENDPOINT | --db FILE] states show NAME[@VERSION|@ALIAS] [--json]",
    "[--endpoint ENDPOINT | --db FILE] states get NAME[@VERSION|@ALIAS] -o FILE [--format safetensors|pth|st|statetune]",
    "[--endpoint ENDPOINT] states alias NAME@ALIAS VERSION",
    NULL,
};

int cmd_states_local(int argc, char **argv, const char *db)
{
    return client_dispatch_sub("states", s_subs, argc, argv, db);
}

static const char *s_str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static void s_shape(json_t *o, char *buf, size_t n)
{
    json_t *sh = json_object_get(o, "shape");
    snprintf(buf, n, "[%lld, %lld, %lld, %lld]", (long long)json_integer_value(json_array_get(sh, 0)),
             (long long)json_integer_value(json_array_get(sh, 1)), (long long)json_integer_value(json_array_get(sh, 2)),
             (long long)json_integer_value(json_array_get(sh, 3)));
}

static void s_join_aliases(json_t *arr, char *buf, size_t n)
{
    size_t at = 0, i;
    json_t *a;
    buf[0] = '\0';
    json_array_foreach(arr, i, a) {
        int w = snprintf(buf + at, n - at, "%s%s", i ? ", " : "", json_string_value(a));
        if (w < 0 || (size_t)w >= n - at) break;
        at += (size_t)w;
    }
}

static int s_list(int argc, char **argv, const char *db)
{
    json_t *list;
    int rc = client_registry_list(argc, argv, s_subs[0].usage, db, registry_list_states, &list);
    if (rc || !list) return rc;
    static const char *const titles[] = {"NAME", "VERSION", "ALIASES", "SHAPE", "MODEL", "JOB", "CREATED (UTC)"};
    client_table_t *t = client_table_new(7, titles);
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e) {
        char ver[16], shape[80], aliases[512], model[16], job[24], created[32];
        snprintf(ver, sizeof ver, "%lld", (long long)json_integer_value(json_object_get(e, "version")));
        s_shape(e, shape, sizeof shape);
        s_join_aliases(json_object_get(e, "aliases"), aliases, sizeof aliases);
        snprintf(model, sizeof model, "%.12s", s_str(e, "model_sha256"));
        json_t *jid = json_object_get(e, "job_id");
        if (json_is_integer(jid)) snprintf(job, sizeof job, "%lld", (long long)json_integer_value(jid));
        else snprintf(job, sizeof job, "-");
        client_format_time((double)json_integer_value(json_object_get(e, "created")), created, sizeof created);
        const char *row[7] = {s_str(e, "name"), ver, aliases[0] ? aliases : "-", shape, model, job, created};
        client_table_add(t, row);
    }
    if (json_array_size(list) == 0) printf("no states in the registry yet\n");
    else client_table_print(t, stdout);
    client_table_destroy(&t);
    json_decref(list);
    return CLIENT_OK;
}

static void s_print_show(json_t *o)
{
    char shape[80], aliases[512], when[32];
    s_shape(o, shape, sizeof shape);
    s_join_aliases(json_object_get(o, "aliases"), aliases, sizeof aliases);
    printf("state:      %s@%lld (latest version %lld)\n", s_str(o, "name"),
           (long long)json_integer_value(json_object_get(o, "version")),
           (long long)json_integer_value(json_object_get(o, "latest_version")));
    printf("aliases:    %s\n", aliases[0] ? aliases : "-");
    printf("shape:      %s %s, %lld bytes\n", shape, s_str(o, "dtype"),
           (long long)json_integer_value(json_object_get(o, "bytes")));
    printf("blob:       sha256 %s\n", s_str(o, "blob_sha256"));
    json_t *model = json_object_get(o, "model");
    if (json_is_object(model))
        printf("model:      %s (sha256 %s, %s)\n", s_str(model, "name"), s_str(o, "model_sha256"), s_str(model, "path"));
    else printf("model:      sha256 %s (not registered)\n", s_str(o, "model_sha256"));
    json_t *job = json_object_get(o, "job");
    if (json_is_object(job)) {
        client_format_time(json_real_value(json_object_get(job, "finished")), when, sizeof when);
        printf("job:        %lld '%s', %s, finished %s\n", (long long)json_integer_value(json_object_get(job, "id")),
               s_str(job, "name"), s_str(job, "status"), when);
        json_t *spec = json_object_get(job, "spec");
        const char *keys[] = {"train", "eval", "steps", "epochs", "lr_init", "ctx_len"};
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            json_t *v = json_object_get(spec, keys[k]);
            if (!v) continue;
            char *txt = json_dumps(v, JSON_ENCODE_ANY);
            printf("  %-9s %s\n", keys[k], txt ? txt : "?");
            free(txt);
        }
    } else {
        printf("job:        - (imported)\n");
    }
    if (json_integer_value(json_object_get(o, "kernel_features")) > 0) {
        long long M = (long long)json_integer_value(json_object_get(o, "kernel_features"));
        json_t *ksha = json_object_get(o, "kstate_sha256");
        if (json_is_string(ksha))
            printf("kernel:     kernel-expanded (M=%lld, gamma %g): U0 and support vectors stored (blob sha256 %s); "
                   "export with --format statetune\n",
                   M, json_number_value(json_object_get(o, "kernel_gamma")), json_string_value(ksha));
        else
            printf("kernel:     kernel-expanded (M=%lld), but its U0 was not stored (registered before schema 3); "
                   "no export carries it\n", M);
    }
    client_format_time((double)json_integer_value(json_object_get(o, "created")), when, sizeof when);
    printf("created:    %s UTC\n", when);

    json_t *metrics = json_object_get(o, "metrics");
    printf("\nmetrics:\n");
    if (json_array_size(metrics) == 0) printf("  (none recorded)\n");
    else {
        static const char *const titles[] = {"  METRIC", "TUNED", "BASELINE", "CHANGE"};
        client_table_t *t = client_table_new(4, titles);
        size_t i;
        json_t *m;
        json_array_foreach(metrics, i, m) {
            char name[160], val[32], base[32], change[32];
            snprintf(name, sizeof name, "  %s", s_str(m, "name"));
            double v = json_number_value(json_object_get(m, "value"));
            json_t *b = json_object_get(m, "baseline");
            snprintf(val, sizeof val, "%.4f", v);
            if (json_is_number(b)) {
                double bv = json_number_value(b);
                snprintf(base, sizeof base, "%.4f", bv);
                if (bv != 0) snprintf(change, sizeof change, "%+.1f%%", 100.0 * (v - bv) / (bv < 0 ? -bv : bv));
                else snprintf(change, sizeof change, "%+.4f", v - bv);
            } else {
                snprintf(base, sizeof base, "-");
                snprintf(change, sizeof change, "-");
            }
            const char *row[4] = {name, val, base, change};
            client_table_add(t, row);
        }
        client_table_print(t, stdout);
        client_table_destroy(&t);
    }
    json_t *hist = json_object_get(o, "alias_history");
    printf("\nalias history of '%s':\n", s_str(o, "name"));
    if (json_array_size(hist) == 0) printf("  (no aliases yet)\n");
    else {
        static const char *const titles[] = {"  TIME (UTC)", "ALIAS", "FROM", "TO"};
        client_table_t *t = client_table_new(4, titles);
        size_t i;
        json_t *h;
        json_array_foreach(hist, i, h) {
            char time[40], from[16], to[16];
            client_format_time(json_real_value(json_object_get(h, "time")), when, sizeof when);
            snprintf(time, sizeof time, "  %s", when);
            json_t *ov = json_object_get(h, "old_version");
            if (json_is_integer(ov)) snprintf(from, sizeof from, "%lld", (long long)json_integer_value(ov));
            else snprintf(from, sizeof from, "-");
            snprintf(to, sizeof to, "%lld", (long long)json_integer_value(json_object_get(h, "new_version")));
            const char *row[4] = {time, s_str(h, "alias"), from, to};
            client_table_add(t, row);
        }
        client_table_print(t, stdout);
        client_table_destroy(&t);
    }
}

static int s_show(int argc, char **argv, const char *db)
{
    int json = 0;
    const char *ref = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (argv[i][0] == '-' || ref) return client_usage_error(s_subs[1].usage, "unexpected argument '%s'", argv[i]);
        else ref = argv[i];
    }
    if (!ref) return client_usage_error(s_subs[1].usage, "which state? give NAME, NAME@VERSION or NAME@ALIAS");
    registry_t *r = client_registry_open(db);
    if (!r) return CLIENT_FAIL;
    char err[ST_ERR_LEN];
    json_t *o = NULL;
    int rc = registry_show_state(r, ref, &o, err);
    registry_close(&r);
    if (rc) return client_error("%s", err);
    if (json) client_print_json(o);
    else s_print_show(o);
    json_decref(o);
    return CLIENT_OK;
}

static int s_get(int argc, char **argv, const char *db)
{
    const char *ref = NULL, *out = NULL, *fmt_name = NULL, *usage = s_subs[2].usage;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--output")) {
            if (++i >= argc) return client_usage_error(usage, "'%s' needs a file name", argv[i - 1]);
            out = argv[i];
        } else if (!strncmp(argv[i], "--format=", 9)) {
            fmt_name = argv[i] + 9;
        } else if (!strcmp(argv[i], "--format")) {
            if (++i >= argc) return client_usage_error(usage, "'--format' needs safetensors, pth, st or statetune");
            fmt_name = argv[i];
        } else if (argv[i][0] == '-' || ref) {
            return client_usage_error(usage, "unexpected argument '%s'", argv[i]);
        } else {
            ref = argv[i];
        }
    }
    if (!ref) return client_usage_error(usage, "which state? give NAME, NAME@VERSION or NAME@ALIAS");
    if (!out) return client_usage_error(usage, "where to? give -o FILE");
    char err[ST_ERR_LEN];
    state_format_t fmt;
    if (fmt_name ? state_format_parse(fmt_name, &fmt, err) : state_format_from_path(out, &fmt, err))
        return client_usage_error(usage, "%s", err);
    registry_t *r = client_registry_open(db);
    if (!r) return CLIENT_FAIL;
    registry_state_info_t in;
    float *data = NULL, *kst = NULL;
    int rc = registry_get_state_ks(r, ref, &in, &data, &kst, err);
    registry_close(&r);
    if (rc) return client_error("%s", err);
    if (fmt == STATE_FMT_STATETUNE) { /* S0 and, when there is one, the kernel-expanded part */
        size_t nk = (size_t)in.n_layer * in.n_head * in.head_size * in.kernel_features;
        state_kstate_t ks = {in.kernel_features, in.kernel_gamma, kst, kst ? kst + nk : NULL};
        if (in.kernel_features > 0 && !kst)
            rc = st_fail(err, ST_ENOTFOUND, "it is kernel-expanded (M=%d) but the registry never stored its U0 "
                         "(registered before schema 3); its job folder's kstate.safetensors holds it",
                         in.kernel_features);
        else
            rc = state_write_statetune(out, in.n_layer, in.n_head, in.head_size, data, kst ? &ks : NULL, err);
    } else {
        rc = state_write(out, fmt, in.n_layer, in.n_head, in.head_size, data, in.kernel_features, err);
    }
    free(data);
    free(kst);
    if (rc) return client_error("cannot export '%s@%d': %s", in.name, in.version, err);
    printf("wrote %s@%d ([%d, %d, %d, %d] as %s) to %s\n", in.name, in.version, in.n_layer, in.n_head, in.head_size,
           in.head_size, state_format_name(fmt), out);
    return CLIENT_OK;
}
