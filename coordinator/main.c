/*
 * main.c - statetune-coordinator (SPEC sections 2 and 6): the long-running
 * broker. It opens the registry (its only writer), recovers the jobs that
 * were queued or running when it last stopped, starts the ZAP handler when
 * CURVE is on (the default), binds the ROUTER endpoint and serves until
 * SIGINT or SIGTERM.
 *
 *   statetune-coordinator --bind ENDPOINT --db FILE [--insecure | --curve-secret FILE --allow DIR]
 *                         [--jobs-dir DIR] [--heartbeat-ms MS] [--data-root DIR]...
 */
#include "client/statetune_client.h"
#include "coordinator/broker.h"
#include "coordinator/sched.h"
#include "coordinator/zap.h"
#include "store/registry.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>
#include <zmq.h>

/* The one global the style allows: set by the signal handler. */
static volatile sig_atomic_t s_stop = 0;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static const char *const s_usage =
    "usage: statetune-coordinator --bind ENDPOINT --db FILE [--insecure | --curve-secret FILE --allow DIR]\n"
    "                             [--jobs-dir DIR] [--heartbeat-ms MS] [--data-root DIR]...\n"
    "\n"
    "  --bind ENDPOINT      ZeroMQ endpoint to serve, e.g. tcp://0.0.0.0:5555\n"
    "  --db FILE            the SQLite registry (created when missing)\n"
    "  --curve-secret FILE  the coordinator's secret key (statetune keys gen DIR/NAME writes NAME.key)\n"
    "  --allow DIR          only peers whose public key is a *.pub file in DIR may connect\n"
    "  --insecure           no encryption or authentication: local tests only\n"
    "  --jobs-dir DIR       where each job's checkpoints live (default FILE.jobs); worker groups\n"
    "                       must see it at the same path (a shared filesystem)\n"
    "  --heartbeat-ms MS    heartbeat interval to worker groups (default 1000)\n"
    "  --data-root DIR      (repeatable) jobs may only read files inside these folders (symlinks and\n"
    "                       '..' resolved); without it any regular file the coordinator can read\n";

int main(int argc, char **argv)
{
    const char *bind = NULL, *db = NULL, *secret_file = NULL, *allow = NULL, *jobs_dir = NULL;
    const char *roots[16];
    int n_roots = 0;
    int insecure = 0, heartbeat_ms = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_val = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(s_usage, stdout);
            return 0;
        } else if (!strcmp(a, "--insecure")) {
            insecure = 1;
        } else if (has_val && !strcmp(a, "--bind")) {
            bind = argv[++i];
        } else if (has_val && !strcmp(a, "--db")) {
            db = argv[++i];
        } else if (has_val && !strcmp(a, "--curve-secret")) {
            secret_file = argv[++i];
        } else if (has_val && !strcmp(a, "--allow")) {
            allow = argv[++i];
        } else if (has_val && !strcmp(a, "--jobs-dir")) {
            jobs_dir = argv[++i];
        } else if (has_val && !strcmp(a, "--data-root")) {
            if (n_roots == (int)(sizeof roots / sizeof roots[0])) {
                fprintf(stderr, "statetune-coordinator: at most %d --data-root folders\n", n_roots);
                return 2;
            }
            roots[n_roots++] = argv[++i];
        } else if (has_val && !strcmp(a, "--heartbeat-ms")) {
            heartbeat_ms = atoi(argv[++i]);
            if (heartbeat_ms < 10 || heartbeat_ms > 600000) {
                fprintf(stderr, "statetune-coordinator: --heartbeat-ms must be between 10 and 600000\n");
                return 2;
            }
        } else {
            fprintf(stderr, "statetune-coordinator: unknown or incomplete option '%s'\n%s", a, s_usage);
            return 2;
        }
    }
    if (!bind || !db) {
        fprintf(stderr, "statetune-coordinator: --bind and --db are required\n%s", s_usage);
        return 2;
    }
    if (insecure && (secret_file || allow)) {
        fprintf(stderr, "statetune-coordinator: --insecure cannot be combined with --curve-secret or --allow\n");
        return 2;
    }
    if (!insecure && (!secret_file || !allow)) {
        fprintf(stderr, "statetune-coordinator: CURVE is on by default: give --curve-secret FILE and --allow DIR "
                        "(or --insecure for local tests)\n");
        return 2;
    }

    char err[ST_ERR_LEN] = "";
    char secret[ST_CURVE_KEY_LEN + 1];
    char jobs_buf[4096];
    int status = 1;
    registry_t *reg = NULL;
    sched_t *sched = NULL;
    zap_t *zap = NULL;
    broker_t *broker = NULL;
    void *ctx = NULL;
    int lock_fd = -1;
    if (secret_file && statetune_key_read(secret_file, secret, err)) goto done;
    if (!jobs_dir) {
        snprintf(jobs_buf, sizeof jobs_buf, "%s.jobs", db);
        jobs_dir = jobs_buf;
    }
    /* One coordinator per registry (SPEC 5: its only writer): a second one
     * would run every queued job twice. The lock dies with the process, so
     * a SIGKILLed coordinator restarts at once. */
    char lock_path[4096];
    snprintf(lock_path, sizeof lock_path, "%s.coordinator.lock", db);
    lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd < 0) {
        st_fail(err, ST_EIO, "cannot open the lock file '%s': %s", lock_path, strerror(errno));
        goto done;
    }
    if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
        char other[32] = "";
        ssize_t n = pread(lock_fd, other, sizeof other - 1, 0);
        other[n > 0 ? n : 0] = 0;
        other[strcspn(other, "\n")] = 0;
        st_fail(err, ST_EBUSY, "another coordinator (pid %s) already serves the registry '%s'", other[0] ? other : "?",
                db);
        goto done;
    }
    char pid[32];
    int plen = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (ftruncate(lock_fd, 0) != 0 || pwrite(lock_fd, pid, (size_t)plen, 0) != plen) {
        /* the pid is only for the message above; the lock itself holds */
    }
    reg = registry_open(db, 0, err);
    if (!reg) goto done;
    sched = sched_new(reg, jobs_dir, err);
    if (!sched || sched_set_data_roots(sched, roots, n_roots, err)) goto done;
    ctx = zmq_ctx_new();
    if (!ctx) {
        st_fail(err, ST_ENET, "zmq_ctx_new failed");
        goto done;
    }
    if (!insecure) {
        zap = zap_new(ctx, allow, stderr, err);
        if (!zap) goto done;
    }
    broker_opts_t opts = {
        .bind = bind,
        .curve_secret = insecure ? NULL : secret,
        .heartbeat_ms = heartbeat_ms,
        .log = stderr,
    };
    broker = broker_new(ctx, reg, sched, &opts, err);
    if (!broker) goto done;
    if (!insecure) {
        char pub[ST_CURVE_KEY_LEN + 1];
        if (zmq_curve_public(pub, secret) == 0)
            fprintf(stderr, "statetune-coordinator: CURVE on, server public key %s, allow list '%s'\n", pub, allow);
    } else {
        fprintf(stderr, "statetune-coordinator: WARNING: --insecure: no encryption, no authentication\n");
    }
    fprintf(stderr, "statetune-coordinator: listening on %s, registry '%s', jobs in '%s'\n", bind, db, jobs_dir);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (broker_run(broker, &s_stop, err) == ST_OK) status = 0;
done:
    if (status && err[0]) fprintf(stderr, "statetune-coordinator: %s\n", err);
    broker_destroy(&broker);
    zap_destroy(&zap);
    if (ctx) zmq_ctx_term(ctx);
    sched_destroy(&sched);
    registry_close(&reg);
    if (lock_fd >= 0) close(lock_fd);
    return status;
}
