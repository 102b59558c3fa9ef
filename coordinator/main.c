/*
 * main.c - statetune-coordinator (arrives with issue #7).
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: statetune-coordinator --bind ENDPOINT --db FILE [--insecure | --curve-secret FILE --allow DIR]\n");
        return 0;
    }
    fprintf(stderr, "statetune-coordinator: the coordinator is not available yet (it arrives with issue #7)\n");
    return 1;
}
