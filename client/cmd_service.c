/*
 * cmd_service.c - what the coordinator-facing commands share (connection
 * options, one request with its error printed, job ids, checked stdout), and the
 * --endpoint side of `states`: list, show, get and alias answered by the
 * coordinator from its registry (see cmd_service.h).
 */
#include "client/cmd_service.h"

#include "common/st_fs.h"
#include "store/state_formats.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DEFAULT_TIMEOUT_MS 10000

int cmd_conn_option(cmd_conn_opts_t *o, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    const char **slot = NULL;
    if (!strcmp(a, "--json")) {
        o->json = 1;
        return 1;
    }
    if (!strcmp(a, "--curve-public")) slot = &o->curve.curve_public;
    if (!strcmp(a, "--curve-secret")) slot = &o->curve.curve_secret;
    if (!strcmp(a, "--server-key")) slot = &o->curve.server_key;
    int is_timeout = !strcmp(a, "--timeout-ms");
    if (!slot && !is_timeout) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "statetune: option '%s' needs a value\n", a);
        return -1;
    }
    const char *v = argv[++*i];
    if (slot) {
        *slot = v;
        return 1;
    }
    char *end;
    long ms = strtol(v, &end, 10);
    if (*end || ms < 1 || ms > 86400000) {
        fprintf(stderr, "statetune: --timeout-ms must be a positive number of milliseconds, got '%s'\n", v);
        return -1;
    }
    o->timeout_ms = (int)ms;
    return 1;
}

statetune_client_t *cmd_connect(const char *endpoint, const cmd_conn_opts_t *o)
{
    char err[ST_ERR_LEN];
    statetune_client_t *c = statetune_client_new(endpoint, &o->curve, err);
    if (!c) fprintf(stderr, "statetune: %s\n", err);
    return c;
}

int cmd_request(statetune_client_t *c, const cmd_conn_opts_t *o, json_t *req, json_t **rep, void **payload,
                size_t *plen)
{
    char err[ST_ERR_LEN];
    int timeout = o->timeout_ms > 0 ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
    int rc = statetune_client_request(c, req, NULL, 0, timeout, rep, payload, plen, err);
    if (rc) fprintf(stderr, "statetune: %s\n", err);
    return rc;
}

int64_t cmd_job_id(const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v <= 0) {
        fprintf(stderr, "statetune: '%s' is not a job id (a positive number, as submit printed)\n", s);
        return -1;
    }
    return (int64_t)v;
}

int cmd_finish(int status)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "statetune: cannot write the output: %s\n", strerror(errno));
        return 1;
    }
    return status;
}

/* ---- states over the endpoint -------------------------------------------- */

/* A value as short text for a table cell. */
static void s_cell(json_t *v, char *buf, size_t n)
{
    if (!v || json_is_null(v))
        snprintf(buf, n, "-");
    else if (json_is_string(v))
        snprintf(buf, n, "%s", json_string_value(v));
    else if (json_is_integer(v))
        snprintf(buf, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, n, "%.6g", json_real_value(v));
    else if (json_is_true(v) || json_is_false(v))
        snprintf(buf, n, "%s", json_is_true(v) ? "yes" : "no");
    else {
        char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        snprintf(buf, n, "%s", t ? t : "?");
        free(t);
    }
}

static int s_states_list(statetune_client_t *c, const cmd_conn_opts_t *o)
{
    json_t *req = json_pack("{s:s}", "type", "states_list"), *rep = NULL;
    int rc = cmd_request(c, o, req, &rep, NULL, NULL);
    json_decref(req);
    if (rc) return 1;
    json_t *states = json_object_get(rep, "states");
    if (o->json) {
        client_print_json(states);
    } else {
        printf("%-32s %7s  %-12s %6s  %-14s %-19s %s\n", "NAME", "VERSION", "MODEL", "JOB", "SHAPE", "CREATED",
               "ALIASES");
        size_t i;
        json_t *s;
        json_array_foreach(states, i, s)
        {
            char ver[32], job[32], shape[64], created[32], aliases[256] = "";
            s_cell(json_object_get(s, "version"), ver, sizeof ver);
            s_cell(json_object_get(s, "job_id"), job, sizeof job);
            s_cell(json_object_get(s, "shape"), shape, sizeof shape);
            client_format_json_time(json_object_get(s, "created"), created, sizeof created);
            const char *model = json_string_value(json_object_get(s, "model_sha256"));
            size_t k;
            json_t *a;
            json_array_foreach(json_object_get(s, "aliases"), k, a)
            {
                char one[128];
                s_cell(a, one, sizeof one);
                size_t len = strlen(aliases);
                snprintf(aliases + len, sizeof aliases - len, "%s%s", len ? "," : "", one);
            }
            printf("%-32s %7s  %-12.12s %6s  %-14s %-19s %s\n", json_string_value(json_object_get(s, "name")), ver,
                   model ? model : "-", job, shape, created, aliases[0] ? aliases : "-");
        }
    }
    json_decref(rep);
    return 0;
}

static int s_states_show(statetune_client_t *c, const cmd_conn_opts_t *o, const char *ref)
{
    json_t *req = json_pack("{s:s, s:s}", "type", "states_show", "ref", ref), *rep = NULL;
    int rc = cmd_request(c, o, req, &rep, NULL, NULL);
    json_decref(req);
    if (rc) return 1;
    json_t *st = json_object_get(rep, "state");
    if (o->json) {
        client_print_json(st);
        json_decref(rep);
        return 0;
    }
    const char *key;
    json_t *v;
    json_object_foreach(st, key, v)
    {
        if (json_is_array(v) || json_is_object(v)) continue; /* tables below */
        char cell[256];
        if (!strcmp(key, "created"))
            client_format_json_time(v, cell, sizeof cell);
        else
            s_cell(v, cell, sizeof cell);
        printf("%-14s %s\n", key, cell);
    }
    json_object_foreach(st, key, v)
    {
        if (!strcmp(key, "metrics") && json_is_array(v)) {
            printf("\n%-24s %14s %14s\n", "METRIC", "VALUE", "BASELINE");
            size_t i;
            json_t *m;
            json_array_foreach(v, i, m)
            {
                char val[64], base[64];
                s_cell(json_object_get(m, "value"), val, sizeof val);
                s_cell(json_object_get(m, "baseline"), base, sizeof base);
                printf("%-24s %14s %14s\n", json_string_value(json_object_get(m, "name")), val, base);
            }
        } else if (!strcmp(key, "job") && json_is_object(v)) { /* lineage: the job, not its whole spec */
            char cell[64];
            s_cell(json_object_get(v, "id"), cell, sizeof cell);
            printf("%-14s %s (%s)\n", key, cell, json_string_value(json_object_get(v, "status")));
        } else if (json_is_array(v) || json_is_object(v)) {
            char *t = json_dumps(v, JSON_COMPACT);
            printf("%-14s %s\n", key, t ? t : "?");
            free(t);
        }
    }
    json_decref(rep);
    return 0;
}

static int s_states_get(statetune_client_t *c, const char *ref, const char *out, const char *format)
{
    char err[ST_ERR_LEN];
    state_format_t fmt;
    int rc = format ? state_format_parse(format, &fmt, err) : state_format_from_path(out, &fmt, err);
    if (rc) {
        fprintf(stderr, "statetune: %s\n", err);
        return 2;
    }
    statetune_state_t st;
    rc = statetune_client_get_state(c, ref, &st, err);
    if (rc == ST_OK && fmt == STATE_FMT_STATETUNE) { /* with the kernel-expanded part, when there is one */
        size_t nk = (size_t)st.layers * st.heads * st.head_size * st.kernel_features;
        state_kstate_t ks = {st.kernel_features, st.kernel_gamma, (float *)st.kstate,
                             st.kstate ? (float *)st.kstate + nk : NULL};
        if (st.kernel_features > 0 && !st.kstate)
            rc = st_fail(err, ST_ENOTFOUND, "cannot export '%s@%d': it is kernel-expanded (M=%d) but the registry "
                         "never stored its U0 (registered before schema 3)", st.name, st.version, st.kernel_features);
        else
            rc = state_write_statetune(out, st.layers, st.heads, st.head_size, st.data, st.kstate ? &ks : NULL, err);
    } else if (rc == ST_OK) {
        rc = state_write(out, fmt, st.layers, st.heads, st.head_size, st.data, st.kernel_features, err);
        if (rc) st_wrap(err, rc, "cannot export '%s@%d': ", st.name, st.version);
    }
    if (rc) {
        fprintf(stderr, "statetune: %s\n", err);
        statetune_state_free(&st);
        return 1;
    }
    fprintf(stderr, "statetune: wrote %s@%d [%d, %d, %d, %d] to '%s' (%s)\n", st.name, st.version, st.layers,
            st.heads, st.head_size, st.head_size, out, state_format_name(fmt));
    statetune_state_free(&st);
    return 0;
}

static int s_states_alias(statetune_client_t *c, const cmd_conn_opts_t *o, const char *name_alias,
                          const char *version)
{
    const char *at = strchr(name_alias, '@');
    char *end;
    long v = strtol(version, &end, 10);
    if (!at || at == name_alias || !at[1] || *end || v <= 0) {
        fprintf(stderr, "statetune: usage: states alias NAME@ALIAS VERSION (a positive version number)\n");
        return 2;
    }
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)(at - name_alias), name_alias);
    json_t *req = json_pack("{s:s, s:s, s:s, s:i}", "type", "alias", "name", name, "alias", at + 1, "version", (int)v),
           *rep = NULL;
    int rc = cmd_request(c, o, req, &rep, NULL, NULL);
    json_decref(req);
    if (rc) return 1;
    printf("%s@%s -> %ld\n", name, at + 1, v);
    json_decref(rep);
    return 0;
}

static const char *const s_states_usage =
    "usage: statetune [--endpoint E] states list [--json]\n"
    "       statetune [--endpoint E] states show NAME[@VERSION|@ALIAS] [--json]\n"
    "       statetune [--endpoint E] states get NAME[@VERSION|@ALIAS] -o FILE [--format safetensors|pth|st|statetune]\n"
    "       statetune [--endpoint E] states alias NAME@ALIAS VERSION\n"
    "  with [--curve-public F --curve-secret F --server-key F] [--timeout-ms MS]\n";

int cmd_states_remote(int argc, char **argv, const char *endpoint)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(s_states_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    cmd_conn_opts_t o = {0};
    const char *pos[2] = {NULL, NULL}, *out = NULL, *format = NULL;
    int npos = 0;
    for (int i = 2; i < argc; i++) {
        int r = cmd_conn_option(&o, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--output")) && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(argv[i], "--format") && i + 1 < argc) {
            format = argv[++i];
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(s_states_usage, stdout);
            return 0;
        } else if (argv[i][0] != '-' && npos < 2) {
            pos[npos++] = argv[i];
        } else {
            fprintf(stderr, "statetune: states %s: unexpected argument '%s'\n%s", sub, argv[i], s_states_usage);
            return 2;
        }
    }
    int need = !strcmp(sub, "list") ? 0 : !strcmp(sub, "alias") ? 2 : 1;
    if (strcmp(sub, "list") && strcmp(sub, "show") && strcmp(sub, "get") && strcmp(sub, "alias")) {
        fprintf(stderr, "statetune: unknown states command '%s'\n%s", sub, s_states_usage);
        return 2;
    }
    if (npos != need || (!strcmp(sub, "get") && !out)) {
        fprintf(stderr, "statetune: states %s: wrong arguments\n%s", sub, s_states_usage);
        return 2;
    }
    statetune_client_t *c = cmd_connect(endpoint, &o);
    if (!c) return 1;
    int status;
    if (!strcmp(sub, "list"))
        status = s_states_list(c, &o);
    else if (!strcmp(sub, "show"))
        status = s_states_show(c, &o, pos[0]);
    else if (!strcmp(sub, "get"))
        status = s_states_get(c, pos[0], out, format);
    else
        status = s_states_alias(c, &o, pos[0], pos[1]);
    statetune_client_destroy(&c);
    return cmd_finish(status);
}

/* ---- models over the endpoint ---------------------------------------------- */

static const char *const s_models_usage =
    "usage: statetune [--endpoint E] models list [--json]\n"
    "       statetune [--endpoint E] models register NAME MODEL_FILE\n"
    "  with [--curve-public F --curve-secret F --server-key F] [--timeout-ms MS]\n"
    "A registered model's name can stand for its file in a job's \"model\".\n";

int cmd_models_remote(int argc, char **argv, const char *endpoint)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(s_models_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    cmd_conn_opts_t o = {0};
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    for (int i = 2; i < argc; i++) {
        int r = cmd_conn_option(&o, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        if (argv[i][0] == '-' || npos >= 2) {
            fprintf(stderr, "statetune: models %s: unexpected argument '%s'\n%s", sub, argv[i], s_models_usage);
            return 2;
        }
        pos[npos++] = argv[i];
    }
    int is_list = !strcmp(sub, "list"), is_reg = !strcmp(sub, "register");
    if ((!is_list && !is_reg) || npos != (is_list ? 0 : 2)) {
        fprintf(stderr, "statetune: models: wrong arguments\n%s", s_models_usage);
        return 2;
    }
    json_t *req;
    if (is_reg) {
        char abs[4096], sha[65], err[ST_ERR_LEN];
        struct stat st;
        if (!realpath(pos[1], abs) || stat(abs, &st) != 0) {
            fprintf(stderr, "statetune: model file '%s': %s\n", pos[1], strerror(errno));
            return 1;
        }
        if (!S_ISREG(st.st_mode)) { /* hashing a FIFO would wait forever */
            fprintf(stderr, "statetune: model file '%s' is not a regular file\n", pos[1]);
            return 1;
        }
        if (st_sha256_file(abs, sha, err)) { /* streamed: fine for a 15 GB checkpoint */
            fprintf(stderr, "statetune: %s\n", err);
            return 1;
        }
        req = json_pack("{s:s, s:s, s:s, s:s}", "type", "models_register", "name", pos[0], "path", abs, "sha256", sha);
    } else {
        req = json_pack("{s:s}", "type", "models_list");
    }
    statetune_client_t *c = cmd_connect(endpoint, &o);
    if (!c) {
        json_decref(req);
        return 1;
    }
    json_t *rep = NULL;
    int rc = cmd_request(c, &o, req, &rep, NULL, NULL);
    json_decref(req);
    statetune_client_destroy(&c);
    if (rc) return 1;
    if (is_reg) {
        printf("%s %s\n", json_string_value(json_object_get(rep, "name")), json_string_value(json_object_get(rep, "sha256")));
    } else if (o.json) {
        client_print_json(json_object_get(rep, "models"));
    } else {
        printf("%-24s %-12s %6s %6s %6s  %s\n", "NAME", "SHA256", "LAYERS", "EMBD", "VOCAB", "PATH");
        size_t i;
        json_t *m;
        json_array_foreach(json_object_get(rep, "models"), i, m)
        {
            json_t *cfg = json_object_get(m, "config");
            if (json_is_string(cfg)) { /* stored as text */
                json_error_t jerr;
                cfg = json_loads(json_string_value(cfg), 0, &jerr);
                json_object_set_new(m, "config", cfg ? cfg : json_null());
            }
            const char *sha = json_string_value(json_object_get(m, "sha256"));
            printf("%-24s %-12.12s %6" JSON_INTEGER_FORMAT " %6" JSON_INTEGER_FORMAT " %6" JSON_INTEGER_FORMAT "  %s\n",
                   json_string_value(json_object_get(m, "name")), sha ? sha : "-",
                   json_integer_value(json_object_get(cfg, "n_layer")), json_integer_value(json_object_get(cfg, "n_embd")),
                   json_integer_value(json_object_get(cfg, "vocab")), json_string_value(json_object_get(m, "path")));
        }
    }
    json_decref(rep);
    return cmd_finish(0);
}
