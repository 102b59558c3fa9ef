/*
 * cmd_bench.c - statetune-worker bench (arrives with issue #4).
 */
#include "worker/cmd.h"

#include <stdio.h>

int cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "statetune-worker: 'bench' is not available yet (it arrives with issue #4)\n");
    return 1;
}
