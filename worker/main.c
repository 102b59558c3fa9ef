/*
 * main.c - statetune-worker: one process per rank (SPEC section 2).
 *
 *   statetune-worker --coordinator ENDPOINT [...]      serve jobs as a worker group
 *   statetune-worker tune JOB.json --local --out DIR   tune without a coordinator
 *   statetune-worker verify MODEL REF.safetensors      check the model against a reference dump
 *   statetune-worker bench --layers L --embd C ...     time a full tuning step
 *   statetune-worker teacher JOB.json --out FILE       the observer's top-k teacher logits ahead of time
 *
 * The command table below is the only dispatch; each command parses its own
 * options in its own file.
 */
#include "worker/cmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} worker_command_t;

static const worker_command_t s_commands[] = {
    {"tune", cmd_tune, "tune JOB.json --local --out DIR: tune one job on this machine (also under mpirun)"},
    {"verify", cmd_verify, "verify MODEL REF.safetensors [--backend cpu|cuda] [--precision fp32|bf16]: compare with a reference dump"},
    {"bench", cmd_bench, "bench --layers L --embd C --vocab V --batch B --ctx T [--backend cpu|cuda] [--steps S]: time a tuning step"},
    {"teacher", cmd_teacher, "teacher JOB.json --out FILE [--dtype fp32|fp16]: the observer's top-k teacher logits ahead of time"},
    {NULL, NULL, NULL},
};

static void s_usage(FILE *out)
{
    fprintf(out, "usage: statetune-worker --coordinator ENDPOINT [--backend cpu|cuda] "
                 "[--curve-public FILE --curve-secret FILE --server-key FILE]\n");
    for (const worker_command_t *c = s_commands; c->name; c++)
        fprintf(out, "       statetune-worker %s\n", c->summary);
}

/* OpenMP threads spin at every barrier by default. On a machine whose cores
 * are shared (other ranks, other jobs) that made 2 threads three times slower
 * than one; a passive wait costs nothing when the cores are free. libgomp
 * reads the setting when it is loaded, before main, so the process runs itself
 * again once with it set. A user's own setting wins. */
static void s_passive_openmp(char **argv)
{
    if (getenv("OMP_WAIT_POLICY")) return;
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc): run on with the default policy */
}

int main(int argc, char **argv)
{
    s_passive_openmp(argv);
    if (argc < 2) {
        s_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        s_usage(stdout);
        return 0;
    }
    for (const worker_command_t *c = s_commands; c->name; c++)
        if (!strcmp(argv[1], c->name)) return c->fn(argc - 1, argv + 1);
    if (argv[1][0] == '-') return cmd_serve(argc, argv);
    fprintf(stderr, "statetune-worker: unknown command '%s' (see --help)\n", argv[1]);
    return 2;
}
