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

/* Which of two words v is (0 or 1); -1 after "<who>: <opt> must be <a> or
 * <b>, not '<v>'". */
static int s_one_of_two(const char *who, const char *opt, const char *v, const char *a, const char *b)
{
    if (!strcmp(v, a)) return 0;
    if (!strcmp(v, b)) return 1;
    fprintf(stderr, "%s: %s must be %s or %s, not '%s'\n", who, opt, a, b, v);
    return -1;
}

int cmd_engine_backend(const char *who, const char *v, engine_backend_t *out)
{
    int i = s_one_of_two(who, "--backend", v, "cpu", "cuda");
    if (i >= 0) *out = i ? ENGINE_CUDA : ENGINE_CPU;
    return i < 0 ? -1 : 0;
}

int cmd_engine_precision(const char *who, const char *v, engine_precision_t *out)
{
    int i = s_one_of_two(who, "--precision", v, "fp32", "bf16");
    if (i >= 0) *out = i ? ENGINE_BF16 : ENGINE_FP32;
    return i < 0 ? -1 : 0;
}

dist_t *cmd_dist_new(char *err)
{
    dist_t *dist = dist_new(NULL, NULL, err);
    if (!dist) fprintf(stderr, "statetune-worker: %s\n", err);
    return dist;
}
