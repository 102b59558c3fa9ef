/*
 * serve_link.h - rank 0's line to the coordinator in worker-group mode
 * (docs/protocol.md). A thread owns the DEALER socket: it says hello (and
 * again whenever the coordinator has forgotten the group), sends a heartbeat
 * every interval, notes every message as a sign of life, turns a cancel for
 * the current job into a flag, and passes replies to the main thread, which
 * is busy in tune_run most of the time. The main thread talks to the thread
 * through an inproc PAIR, so no ZeroMQ socket is ever shared.
 */
#ifndef ST_WORKER_SERVE_LINK_H
#define ST_WORKER_SERVE_LINK_H

#include "client/statetune_client.h"

#include <jansson.h>
#include <stdint.h>

typedef struct {
    const char *endpoint;            /* coordinator */
    statetune_client_opts_t curve;   /* key files (NULL fields: environment) */
    const char *group;               /* group id, also the routing id */
    int ranks;                       /* processes in the group */
    int gpus;                        /* GPUs (cuda) or ranks (cpu) offered */
    const char *backend;             /* "cpu" or "cuda" */
    double coordinator_timeout_s;    /* silence after which the coordinator is gone */
} serve_link_opts_t;

typedef struct serve_link serve_link_t;

/* Connects and starts the thread (which says hello). NULL + err on failure. */
serve_link_t *serve_link_new(const serve_link_opts_t *opts, char *err);
void serve_link_destroy(serve_link_t **self_p);

/* A request from the main thread: sends req (with optional payload), waits up
 * to timeout_ms for its reply. ST_OK with *rep (caller decrefs) for an ok
 * reply; the error's code and sentence for an error reply; ST_EBUSY on
 * timeout and when the coordinator does not know the group yet (it restarted:
 * the link is saying hello again), so the caller simply retries. */
int serve_link_request(serve_link_t *self, json_t *req, const void *payload, size_t plen, int timeout_ms,
                       json_t **rep, char *err);

/* A notification from the main thread (progress, eval, checkpoint). */
int serve_link_notify(serve_link_t *self, json_t *msg, char *err);

/* The job the group runs now (0 = none): named in a renewed hello, and the
 * one a cancel must name to count. Clears the cancel flag. */
void serve_link_set_job(serve_link_t *self, int64_t job);

/* Whether the coordinator asked to cancel the current job. */
int serve_link_cancelled(serve_link_t *self);

/* Whether the coordinator has been silent longer than the timeout. */
int serve_link_lost(serve_link_t *self);

/* Whether the coordinator has answered our hello (since the last restart). */
int serve_link_ready(serve_link_t *self);

#endif
