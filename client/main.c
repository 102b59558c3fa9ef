/*
 * main.c - the statetune client (its commands arrive with issues #6 and #7).
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: statetune [--endpoint ENDPOINT | --db FILE] COMMAND ...\n");
        return 0;
    }
    fprintf(stderr, "statetune: the client commands are not available yet (they arrive with issues #6 and #7)\n");
    return 1;
}
