/*
 * cmd_verify.c - statetune-worker verify (arrives with issue #2).
 */
#include "worker/cmd.h"

#include <stdio.h>

int cmd_verify(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "statetune-worker: 'verify' is not available yet (it arrives with issue #2)\n");
    return 1;
}
