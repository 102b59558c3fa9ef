/*
 * cmd_tune.c - statetune-worker tune (arrives with issue #3).
 */
#include "worker/cmd.h"

#include <stdio.h>

int cmd_tune(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "statetune-worker: 'tune' is not available yet (it arrives with issue #3)\n");
    return 1;
}
