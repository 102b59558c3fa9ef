/*
 * cmd_service.h - the client commands that talk to a coordinator (issue #7):
 * submit (cmd_submit.c), status / wait / watch / cancel / jobs / events
 * (cmd_jobs.c), keys (cmd_keys.c) and the --endpoint side of `states`
 * (cmd_service.c). main.c finds them through its command table.
 *
 * Each command gets argv with argv[0] its own name and the endpoint main.c
 * settled on (--endpoint, else $STATETUNE_ENDPOINT, else the default; NULL
 * means the same fallback). It parses its own options, prints results on
 * stdout and one sentence on stderr for an error, and returns the exit
 * status: 0 success, 1 failure, 2 usage error.
 *
 * Every command that connects also takes --curve-public FILE, --curve-secret
 * FILE and --server-key FILE (or STATETUNE_CURVE_PUBLIC, _SECRET,
 * STATETUNE_SERVER_KEY) and --timeout-ms MS for one request (default 10000).
 */
#ifndef ST_CLIENT_CMD_SERVICE_H
#define ST_CLIENT_CMD_SERVICE_H

#include "client/client.h"
#include "client/statetune_client.h"

int cmd_submit(int argc, char **argv, const char *endpoint); /* submit JOB.json [--json] */
int cmd_status(int argc, char **argv, const char *endpoint); /* status JOB [--json] */
int cmd_wait(int argc, char **argv, const char *endpoint);   /* wait JOB [--timeout S] */
int cmd_watch(int argc, char **argv, const char *endpoint);  /* watch JOB */
int cmd_cancel(int argc, char **argv, const char *endpoint); /* cancel JOB */
int cmd_jobs(int argc, char **argv, const char *endpoint);   /* jobs [--json] */
int cmd_events(int argc, char **argv, const char *endpoint); /* events JOB [--json] [--since N] */
int cmd_keys(int argc, char **argv, const char *endpoint);   /* keys gen DIR/NAME */

/* states list|show|get|alias answered by the coordinator from its registry;
 * argv[0] is "states", argv[1] the subcommand. */
int cmd_states_remote(int argc, char **argv, const char *endpoint);

/* models list|register over the endpoint (register hashes the file here and
 * the coordinator checks it opens as a model). */
int cmd_models_remote(int argc, char **argv, const char *endpoint);

/* ---- shared by the commands above (cmd_service.c) ---- */

/* Options every connecting command accepts. */
typedef struct {
    statetune_client_opts_t curve; /* key files (NULL: environment) */
    int timeout_ms;                /* one request */
    int json;                      /* --json */
} cmd_conn_opts_t;

/* Consumes a connection option at argv[*i] (advancing *i past its value).
 * Returns 1 when it was one, 0 when not, -1 when its value is missing or bad
 * (a sentence is printed). */
int cmd_conn_option(cmd_conn_opts_t *o, int argc, char **argv, int *i);

/* Connects; prints the error and returns NULL on failure. */
statetune_client_t *cmd_connect(const char *endpoint, const cmd_conn_opts_t *o);

/* One request; on failure prints "statetune: <sentence>" and returns the code. */
int cmd_request(statetune_client_t *c, const cmd_conn_opts_t *o, json_t *req, json_t **rep, void **payload,
                size_t *plen);

/* Parses a job id argument; prints and returns -1 when it is not one. */
int64_t cmd_job_id(const char *s);

/* Flushes and checks stdout (a full disk or closed pipe is an error). */
int cmd_finish(int status);

#endif
