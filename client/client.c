/*
 * client.c - the helpers every `statetune` command shares (see client.h):
 * error and usage sentences, subcommand dispatch, JSON output, times, and
 * aligned tables.
 */
#include "client/client.h"
#include "common/st_err.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The one "statetune: error: <sentence>" line both error printers write. */
__attribute__((format(printf, 1, 0))) static void s_verror(const char *fmt, va_list ap)
{
    fputs("statetune: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int client_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_verror(fmt, ap);
    va_end(ap);
    return CLIENT_FAIL;
}

int client_usage_error(const char *usage, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_verror(fmt, ap);
    va_end(ap);
    if (usage) fprintf(stderr, "usage: statetune %s\n", usage);
    return CLIENT_USAGE;
}

void client_print_usage(FILE *f, const char *const *lines)
{
    for (int i = 0; lines && lines[i]; i++) fprintf(f, "%s statetune %s\n", i ? "   or:" : "usage:", lines[i]);
}

int client_is_help(const char *arg)
{
    return arg && (!strcmp(arg, "-h") || !strcmp(arg, "--help"));
}

static void s_sub_usage(FILE *f, const char *cmd, const client_subcmd_t *subs)
{
    for (int i = 0; subs[i].name; i++)
        fprintf(f, "%s statetune %s\n", i ? "   or:" : "usage:", subs[i].usage);
    fprintf(f, "\n");
    for (int i = 0; subs[i].name; i++) fprintf(f, "  %-8s %s\n", subs[i].name, subs[i].summary);
    (void)cmd;
}

int client_dispatch_sub(const char *cmd, const client_subcmd_t *subs, int argc, char **argv, const char *db)
{
    if (argc < 2 || client_is_help(argv[1])) {
        s_sub_usage(argc < 2 ? stderr : stdout, cmd, subs);
        return argc < 2 ? CLIENT_USAGE : CLIENT_OK;
    }
    for (int i = 0; subs[i].name; i++)
        if (!strcmp(argv[1], subs[i].name)) {
            for (int a = 2; a < argc; a++)
                if (client_is_help(argv[a])) {
                    printf("usage: statetune %s\n", subs[i].usage);
                    return CLIENT_OK;
                }
            if (!subs[i].fn) /* the registry file is opened read-only: writes go through the coordinator */
                return client_error("'%s %s' changes the registry, which only the coordinator does; "
                                    "run it with --endpoint ENDPOINT instead of --db", cmd, subs[i].name);
            return subs[i].fn(argc - 1, argv + 1, db);
        }
    client_error("'%s %s' is not a command", cmd, argv[1]);
    s_sub_usage(stderr, cmd, subs);
    return CLIENT_USAGE;
}

registry_t *client_registry_open(const char *db)
{
    char err[ST_ERR_LEN];
    registry_t *r = registry_open(db, 1, err);
    if (!r) client_error("%s", err);
    return r;
}

int client_registry_list(int argc, char **argv, const char *usage, const char *db,
                         int (*fn)(registry_t *r, json_t **out, char *err), json_t **list)
{
    *list = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else return client_usage_error(usage, "unexpected argument '%s'", argv[i]);
    }
    registry_t *r = client_registry_open(db);
    if (!r) return CLIENT_FAIL;
    char err[ST_ERR_LEN];
    json_t *l = NULL;
    int rc = fn(r, &l, err);
    registry_close(&r);
    if (rc) return client_error("%s", err);
    if (json) {
        client_print_json(l);
        json_decref(l);
        return CLIENT_OK;
    }
    *list = l ? l : json_array(); /* an empty table when the store gave nothing */
    return CLIENT_OK;
}

void client_print_json(json_t *doc)
{
    json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
}

void client_format_time(double t, char *buf, size_t n)
{
    if (t <= 0) {
        snprintf(buf, n, "-");
        return;
    }
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm);
}

void client_format_json_time(json_t *v, char *buf, size_t n)
{
    if (json_is_string(v)) snprintf(buf, n, "%s", json_string_value(v));
    else client_format_time(json_is_number(v) ? json_number_value(v) : 0, buf, n);
}

/* ---- tables -------------------------------------------------------------- */

struct client_table {
    int n_cols;    /* columns */
    int n_rows;    /* rows, the header being row 0 */
    int cap;       /* allocated rows */
    char **cells;  /* n_rows * n_cols strings, row-major */
};

client_table_t *client_table_new(int n_cols, const char *const *titles)
{
    client_table_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->n_cols = n_cols;
    if (client_table_add(self, titles)) client_table_destroy(&self);
    return self;
}

void client_table_destroy(client_table_t **self_p)
{
    if (!self_p || !*self_p) return;
    client_table_t *self = *self_p;
    for (int i = 0; i < self->n_rows * self->n_cols; i++) free(self->cells[i]);
    free(self->cells);
    free(self);
    *self_p = NULL;
}

int client_table_add(client_table_t *self, const char *const *cells)
{
    if (self->n_rows == self->cap) {
        int cap = self->cap ? self->cap * 2 : 16;
        char **p = realloc(self->cells, (size_t)cap * self->n_cols * sizeof *p);
        if (!p) return -1;
        self->cells = p;
        self->cap = cap;
    }
    char **row = self->cells + (size_t)self->n_rows * self->n_cols;
    for (int c = 0; c < self->n_cols; c++) {
        row[c] = strdup(cells[c] ? cells[c] : "");
        if (!row[c]) {
            while (c-- > 0) free(row[c]);
            return -1;
        }
    }
    self->n_rows++;
    return 0;
}

void client_table_print(client_table_t *self, FILE *f)
{
    int *w = calloc((size_t)self->n_cols, sizeof *w);
    if (!w) return;
    for (int r = 0; r < self->n_rows; r++)
        for (int c = 0; c < self->n_cols; c++) {
            int n = (int)strlen(self->cells[(size_t)r * self->n_cols + c]);
            if (n > w[c]) w[c] = n;
        }
    for (int r = 0; r < self->n_rows; r++) {
        for (int c = 0; c < self->n_cols; c++) {
            const char *s = self->cells[(size_t)r * self->n_cols + c];
            if (c == self->n_cols - 1) fputs(s, f); /* no trailing blanks */
            else fprintf(f, "%-*s  ", w[c], s);
        }
        fputc('\n', f);
    }
    free(w);
}
