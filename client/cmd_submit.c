/*
 * cmd_submit.c - `statetune [--endpoint E] submit JOB.json [--json]`: sends a
 * job to the coordinator and prints its id on stdout (SPEC section 2.1).
 *
 * The job file is parsed here first (jobspec_parse_file), so a typo is
 * reported against the file the user wrote, with the key's name, before
 * anything is sent; and its relative paths are resolved here, against the job
 * file's folder, into the absolute paths of the canonical spec
 * (jobspec_to_json) - the coordinator and the worker groups cannot know where
 * the user's shell was. The coordinator validates the spec again (it trusts
 * no client) and checks the inputs before queueing the job.
 */
#include "client/cmd_service.h"

#include "data/jobspec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const s_usage =
    "usage: statetune [--endpoint E] submit JOB.json [--json]\n"
    "       [--curve-public F --curve-secret F --server-key F] [--timeout-ms MS]\n"
    "Sends the job to the coordinator and prints its id.\n";

int cmd_submit(int argc, char **argv, const char *endpoint)
{
    cmd_conn_opts_t o = {0};
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        int r = cmd_conn_option(&o, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(s_usage, stdout);
            return 0;
        }
        if (argv[i][0] == '-' || path) {
            fprintf(stderr, "statetune: submit: unexpected argument '%s'\n%s", argv[i], s_usage);
            return 2;
        }
        path = argv[i];
    }
    if (!path) {
        fputs(s_usage, stderr);
        return 2;
    }
    char err[ST_ERR_LEN];
    jobspec_t *spec = NULL;
    if (jobspec_parse_file(path, &spec, err)) {
        fprintf(stderr, "statetune: %s\n", err);
        return 1;
    }
    char *canon = jobspec_to_json(spec);
    jobspec_destroy(&spec);
    json_error_t jerr;
    json_t *jspec = canon ? json_loads(canon, 0, &jerr) : NULL;
    free(canon);
    if (!jspec) {
        fprintf(stderr, "statetune: cannot encode the job from '%s'\n", path);
        return 1;
    }
    statetune_client_t *c = cmd_connect(endpoint, &o);
    if (!c) {
        json_decref(jspec);
        return 1;
    }
    /* Validation on the coordinator reads every dataset line, so the submit
     * itself may take a while; a ping first tells an absent coordinator
     * apart quickly. */
    cmd_conn_opts_t quick = o;
    if (!quick.timeout_ms) quick.timeout_ms = 5000;
    json_t *ping = json_pack("{s:s}", "type", "ping"), *pong = NULL;
    int prc = cmd_request(c, &quick, ping, &pong, NULL, NULL);
    json_decref(ping);
    json_decref(pong);
    if (prc) {
        json_decref(jspec);
        statetune_client_destroy(&c);
        return 1;
    }
    if (!o.timeout_ms) o.timeout_ms = 60000;
    json_t *req = json_pack("{s:s, s:o}", "type", "submit", "spec", jspec), *rep = NULL;
    int rc = cmd_request(c, &o, req, &rep, NULL, NULL);
    json_decref(req);
    statetune_client_destroy(&c);
    if (rc) return 1;
    json_int_t id = json_integer_value(json_object_get(rep, "job"));
    if (o.json)
        client_print_json(rep);
    else
        printf("%" JSON_INTEGER_FORMAT "\n", id);
    json_decref(rep);
    return cmd_finish(0);
}
