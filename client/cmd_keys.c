/*
 * cmd_keys.c - `statetune keys gen DIR/NAME`: makes a CURVE key pair for a
 * coordinator, a client or a worker group (SPEC section 6).
 *
 * NAME.key holds the secret key (mode 0600, never overwritten) and NAME.pub
 * the public key; both are one Z85 line. Give the coordinator its NAME.key
 * with --curve-secret and copy every client's and group's NAME.pub into its
 * --allow directory; give clients and groups the coordinator's NAME.pub with
 * --server-key. DIR is created (mode 0700) when missing.
 */
#include "client/cmd_service.h"

#include "common/st_fs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const s_usage =
    "usage: statetune keys gen DIR/NAME\n"
    "Writes DIR/NAME.key (secret key, mode 0600) and DIR/NAME.pub (public key).\n";

int cmd_keys(int argc, char **argv, const char *endpoint)
{
    (void)endpoint;
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(s_usage, stdout);
        return 0;
    }
    if (argc != 3 || strcmp(argv[1], "gen") != 0) {
        fputs(s_usage, stderr);
        return 2;
    }
    const char *prefix = argv[2];
    char err[ST_ERR_LEN];
    const char *slash = strrchr(prefix, '/');
    if (!prefix[0] || (slash && !slash[1])) { /* no NAME after the folder */
        fputs(s_usage, stderr);
        return 2;
    }
    if (slash && slash != prefix) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - prefix), prefix);
        struct stat st;
        if (stat(dir, &st) != 0) {
            if (st_mkdirs(dir, err)) {
                fprintf(stderr, "statetune: %s\n", err);
                return 1;
            }
            chmod(dir, 0700);
        }
    }
    if (statetune_keys_generate(prefix, err)) {
        fprintf(stderr, "statetune: %s\n", err);
        return 1;
    }
    printf("%s.key\n%s.pub\n", prefix, prefix);
    return cmd_finish(0);
}
