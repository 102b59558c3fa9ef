/*
 * cmd_serve.c - statetune-worker serve (arrives with issue #7).
 */
#include "worker/cmd.h"

#include <stdio.h>

int cmd_serve(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "statetune-worker: 'serve' is not available yet (it arrives with issue #7)\n");
    return 1;
}
