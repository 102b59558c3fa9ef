/*
 * cmd_common.c - what statetune-worker's commands share (see cmd.h): the
 * answer to --help, the --backend check of the two commands that run jobs
 * (serve and tune), the engine's backend and precision of bench and verify,
 * and starting the rank's group with the sentence a user reads when that
 * fails. Each sentence is the one its commands printed before (serve and
 * tune say "got", bench and verify "not"): users and tests read them.
 */
#include "worker/cmd.h"

#include <stdio.h>
#include <string.h>

int cmd_help(const char *arg, const char *usage)
{
    if (strcmp(arg, "--help") && strcmp(arg, "-h")) return 0;
    fputs(usage, stdout);
    return 1;
}

int cmd_backend_ok(const char *who, const char *backend)
{
    if (!strcmp(backend, "cpu") || !strcmp(backend, "cuda")) return 1;
    fprintf(stderr, "%s: --backend must be cpu or cuda, got '%s'\n", who, backend);
    return 0;
}

int cmd_engine_backend(const char *who, const char *v, engine_backend_t *out)
{
    if (!strcmp(v, "cpu")) *out = ENGINE_CPU;
    else if (!strcmp(v, "cuda")) *out = ENGINE_CUDA;
    else {
        fprintf(stderr, "%s: --backend must be cpu or cuda, not '%s'\n", who, v);
        return -1;
    }
    return 0;
}

int cmd_engine_precision(const char *who, const char *v, engine_precision_t *out)
{
    if (!strcmp(v, "fp32")) *out = ENGINE_FP32;
    else if (!strcmp(v, "bf16")) *out = ENGINE_BF16;
    else {
        fprintf(stderr, "%s: --precision must be fp32 or bf16, not '%s'\n", who, v);
        return -1;
    }
    return 0;
}

dist_t *cmd_dist_new(char *err)
{
    dist_t *dist = dist_new(NULL, NULL, err);
    if (!dist) fprintf(stderr, "statetune-worker: %s\n", err);
    return dist;
}
