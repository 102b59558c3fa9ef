/*
 * client.h - what the `statetune` command line's files share: the command
 * table entry, exit codes, error and usage printing, aligned tables and JSON
 * output (SPEC section 2.1).
 *
 * Conventions (git's builtins): results go to stdout, one error sentence goes
 * to stderr as "statetune: error: ...", and a command returns its exit
 * status: 0 success, 1 failure, 2 usage error. Usage text is data (arrays of
 * strings beside each command), so --help is generated from it and cannot
 * drift from what the parser accepts.
 */
#ifndef ST_CLIENT_H
#define ST_CLIENT_H

#include "store/registry_read.h"

#include <jansson.h>
#include <stdio.h>

enum { CLIENT_OK = 0, CLIENT_FAIL = 1, CLIENT_USAGE = 2 };

#define CLIENT_DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"

/* A command runs over the coordinator's endpoint (remote), on a registry file
 * named by --db (local), or either; argv[0] is the command's own name. */
typedef int (*client_remote_fn)(int argc, char **argv, const char *endpoint);
typedef int (*client_local_fn)(int argc, char **argv, const char *db);

typedef struct {
    const char *name;            /* first word on the command line */
    client_remote_fn remote;     /* NULL: not available over the endpoint (yet) */
    client_local_fn local;       /* NULL: needs the coordinator, --db cannot serve it */
    const char *const *usage;    /* NULL-terminated usage lines, without "statetune " */
    const char *summary;         /* one line for the command list */
    const char *issue;           /* when remote is NULL: the issue it arrives with, e.g. "#7" */
} client_cmd_t;

/* A subcommand inside one command's file (states list|show|get|alias). */
typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv, const char *db); /* argv[0] is the subcommand; NULL: a write that
                                                         only the coordinator does (--db refuses it) */
    const char *usage;                                /* one usage line */
    const char *summary;
} client_subcmd_t;

/* Prints "statetune: error: <sentence>" on stderr; returns CLIENT_FAIL. */
int client_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints the error and "usage: statetune <usage>"; returns CLIENT_USAGE. */
int client_usage_error(const char *usage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints usage lines ("usage: statetune ..." then "   or: ...") to f. */
void client_print_usage(FILE *f, const char *const *lines);

/* True for -h / --help. */
int client_is_help(const char *arg);

/* Dispatches argv[1] to a subcommand of the table (NULL-terminated);
 * "--help" or no subcommand prints the table's usage. */
int client_dispatch_sub(const char *cmd, const client_subcmd_t *subs, int argc, char **argv, const char *db);

/* Opens the registry file read-only; NULL (the error printed) on failure. */
registry_t *client_registry_open(const char *db);

/* What `models list` and `states list` over --db share: the arguments (only
 * --json; argv[0] is the subcommand), the registry's list from fn, and with
 * --json that list printed. Returns CLIENT_OK with *list for the caller's
 * table (NULL when printed as JSON already), or the failure's exit status
 * (the sentence printed). */
int client_registry_list(int argc, char **argv, const char *usage, const char *db,
                         int (*fn)(registry_t *r, json_t **out, char *err), json_t **list);

/* Prints one JSON document (indented) followed by a newline on stdout. */
void client_print_json(json_t *doc);

/* "2026-11-26 22:31:05" (UTC) for unix seconds; "-" for 0. */
void client_format_time(double t, char *buf, size_t n);

/* A time from a JSON reply: unix seconds as above, a string as it is, "-"
 * for anything else (absent, null, 0). */
void client_format_json_time(json_t *v, char *buf, size_t n);

/* ---- aligned tables ----------------------------------------------------- */

typedef struct client_table client_table_t;

/* A table with n_cols columns headed by the given titles. NULL on OOM. */
client_table_t *client_table_new(int n_cols, const char *const *titles);
void client_table_destroy(client_table_t **self_p);

/* Appends a row of n_cols cells (copied). */
int client_table_add(client_table_t *self, const char *const *cells);

/* Prints the header and rows, columns padded to their widest cell. */
void client_table_print(client_table_t *self, FILE *f);

/* ---- commands (one file each) -------------------------------------------- */

int cmd_states_local(int argc, char **argv, const char *db); /* cmd_states.c */
int cmd_models_local(int argc, char **argv, const char *db); /* cmd_models.c */
extern const char *const cmd_states_usage[];
extern const char *const cmd_models_usage[];

#endif
