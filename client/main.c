/*
 * main.c - `statetune`, the client command line (SPEC section 2.1).
 *
 * As git's front end does, one table lists every command with what it needs:
 * a coordinator endpoint (remote), a registry file (local, through --db), or
 * either. main() parses the global options (--endpoint ENDPOINT, default
 * $STATETUNE_ENDPOINT or tcp://127.0.0.1:5555; --db FILE), finds the command,
 * runs it and turns its result into the exit status: 0 success, 1 failure,
 * 2 usage error. --help output is generated from the table's usage strings.
 * Before exiting, stdout is flushed and closed and a write error (full disk,
 * closed pipe) turns success into failure, so no truncated output exits 0.
 *
 * A command whose remote side is not written yet says which issue brings it
 * and exits 1; to add one, fill in its `remote` function in s_commands.
 */
#include "client/client.h"
#include "client/cmd_service.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Every command that talks to the coordinator also takes these (cmd_service.h). */
#define CURVE_OPTS " [--curve-public F --curve-secret F --server-key F] [--timeout-ms MS]"
static const char *const s_submit_usage[] = {"[--endpoint ENDPOINT] submit JOB.json" CURVE_OPTS, NULL};
static const char *const s_status_usage[] = {"[--endpoint ENDPOINT] status JOB [--json]" CURVE_OPTS, NULL};
static const char *const s_wait_usage[] = {"[--endpoint ENDPOINT] wait JOB [--timeout S]" CURVE_OPTS, NULL};
static const char *const s_watch_usage[] = {"[--endpoint ENDPOINT] watch JOB" CURVE_OPTS, NULL};
static const char *const s_cancel_usage[] = {"[--endpoint ENDPOINT] cancel JOB" CURVE_OPTS, NULL};
static const char *const s_jobs_usage[] = {"[--endpoint ENDPOINT] jobs [--json] [--all]" CURVE_OPTS, NULL};
static const char *const s_events_usage[] = {"[--endpoint ENDPOINT] events JOB [--json] [--since N]" CURVE_OPTS, NULL};
static const char *const s_keys_usage[] = {"keys gen DIR/NAME", NULL};
static const char *const s_report_usage[] = {"[--endpoint ENDPOINT | --db FILE] report JOB -o FILE.html" CURVE_OPTS, NULL};

/* cmd_report.c: an HTML page of a job's charts, metrics and lineage */
int cmd_report_remote(int argc, char **argv, const char *endpoint);
int cmd_report_local(int argc, char **argv, const char *db);

static const client_cmd_t s_commands[] = {
    {"submit", cmd_submit, NULL, s_submit_usage, "submit a tuning job; prints its id", "#7"},
    {"status", cmd_status, NULL, s_status_usage, "show a job's status", "#7"},
    {"wait", cmd_wait, NULL, s_wait_usage, "wait for a job; exit 0 when it succeeded", "#7"},
    {"watch", cmd_watch, NULL, s_watch_usage, "follow a job with a live progress bar", "#7"},
    {"cancel", cmd_cancel, NULL, s_cancel_usage, "cancel a job", "#7"},
    {"jobs", cmd_jobs, NULL, s_jobs_usage, "list jobs", "#7"},
    {"events", cmd_events, NULL, s_events_usage, "list a job's events", "#7"},
    {"states", cmd_states_remote, cmd_states_local, cmd_states_usage, "list, show, fetch and alias tuned states", "#7"},
    {"models", cmd_models_remote, cmd_models_local, cmd_models_usage, "list registered models", "#7"},
    {"keys", cmd_keys, NULL, s_keys_usage, "generate CURVE key pairs", "#7"},
    {"report", cmd_report_remote, cmd_report_local, s_report_usage, "write a job's HTML report (charts, metrics)", "#9"},
    {NULL, NULL, NULL, NULL, NULL, NULL},
};

static const char s_global_usage[] = "[--endpoint ENDPOINT | --db FILE] COMMAND [ARGS]";

static void s_help(FILE *f)
{
    fprintf(f, "usage: statetune %s\n\n", s_global_usage);
    fprintf(f, "State tuning of RWKV-7 models as a service: jobs, tuned states and their registry.\n\n");
    fprintf(f, "global options:\n");
    fprintf(f, "  --endpoint ENDPOINT  coordinator to talk to (default $STATETUNE_ENDPOINT or %s)\n",
            CLIENT_DEFAULT_ENDPOINT);
    fprintf(f, "  --db FILE            read a registry file directly instead (states, models)\n");
    fprintf(f, "  -h, --help           this help; `statetune COMMAND --help` for one command\n\n");
    fprintf(f, "commands:\n");
    for (const client_cmd_t *c = s_commands; c->name; c++) fprintf(f, "  %-8s %s\n", c->name, c->summary);
    fprintf(f, "\n");
    for (const client_cmd_t *c = s_commands; c->name; c++)
        for (int i = 0; c->usage[i]; i++) fprintf(f, "  statetune %s\n", c->usage[i]);
}

static const client_cmd_t *s_find(const char *name)
{
    for (const client_cmd_t *c = s_commands; c->name; c++)
        if (!strcmp(c->name, name)) return c;
    return NULL;
}

/* Takes "--opt VALUE" or "--opt=VALUE" at argv[*i]. 1 taken, 0 not this
 * option, -1 value missing. */
static int s_option(const char *opt, int argc, char **argv, int *i, const char **value)
{
    size_t n = strlen(opt);
    if (strncmp(argv[*i], opt, n)) return 0;
    if (argv[*i][n] == '=') {
        *value = argv[*i] + n + 1;
        return 1;
    }
    if (argv[*i][n] != '\0') return 0;
    if (*i + 1 >= argc) return -1;
    *value = argv[++*i];
    return 1;
}

static int s_run(int argc, char **argv)
{
    const char *endpoint = NULL, *db = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        int r;
        if (client_is_help(argv[i])) {
            s_help(stdout);
            return CLIENT_OK;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("statetune 0.1.0\n");
            return CLIENT_OK;
        }
        if ((r = s_option("--endpoint", argc, argv, &i, &endpoint)) ||
            (r = s_option("--db", argc, argv, &i, &db))) {
            if (r < 0) return client_usage_error(s_global_usage, "'%s' needs a value", argv[i]);
            continue;
        }
        return client_usage_error(s_global_usage, "unknown option '%s'", argv[i]);
    }
    if (endpoint && db) return client_usage_error(s_global_usage, "give --endpoint or --db, not both");
    if (i >= argc) {
        s_help(stderr);
        return CLIENT_USAGE;
    }
    if (!strcmp(argv[i], "help")) {
        const client_cmd_t *c = i + 1 < argc ? s_find(argv[i + 1]) : NULL;
        if (c) client_print_usage(stdout, c->usage);
        else s_help(stdout);
        return CLIENT_OK;
    }
    const client_cmd_t *cmd = s_find(argv[i]);
    if (!cmd) {
        client_error("'%s' is not a statetune command; see 'statetune --help'", argv[i]);
        return CLIENT_USAGE;
    }
    int cargc = argc - i;
    char **cargv = argv + i;
    /* `statetune CMD --help`, and any --help of a command that has no code
     * on this side yet, print the usage from the table. */
    for (int a = 1; a < cargc; a++)
        if (client_is_help(cargv[a]) && (a == 1 || (db ? !cmd->local : !cmd->remote))) {
            client_print_usage(stdout, cmd->usage);
            return CLIENT_OK;
        }
    if (db) {
        if (!cmd->local)
            return client_usage_error(NULL, "'%s' needs the coordinator (--endpoint), not a registry file (--db)",
                                      cmd->name);
        return cmd->local(cargc, cargv, db);
    }
    if (!endpoint) endpoint = getenv("STATETUNE_ENDPOINT");
    if (!endpoint || !*endpoint) endpoint = CLIENT_DEFAULT_ENDPOINT;
    if (cmd->remote) return cmd->remote(cargc, cargv, endpoint);
    if (cmd->local)
        return client_error("'%s' over the endpoint arrives with issue %s; meanwhile read a registry file with "
                            "'statetune --db FILE %s ...'",
                            cmd->name, cmd->issue, cmd->name);
    return client_error("'%s' arrives with issue %s", cmd->name, cmd->issue);
}

int main(int argc, char **argv)
{
    int status = s_run(argc, argv);
    /* A result that did not reach its reader is a failure (git's run_builtin). */
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "statetune: error: writing the output failed: %s\n", strerror(errno));
        return CLIENT_FAIL;
    }
    if (fclose(stdout) != 0) {
        fprintf(stderr, "statetune: error: closing the output failed: %s\n", strerror(errno));
        return CLIENT_FAIL;
    }
    return status;
}
