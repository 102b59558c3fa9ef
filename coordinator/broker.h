/*
 * broker.h - the coordinator's one ROUTER endpoint (docs/protocol.md): it
 * answers clients, keeps worker groups alive with heartbeats both ways, hands
 * them jobs from the scheduler and records what they report.
 */
#ifndef ST_COORD_BROKER_H
#define ST_COORD_BROKER_H

#include "coordinator/sched.h"
#include "store/registry.h"

#include <signal.h>
#include <stdio.h>

typedef struct {
    const char *bind;          /* endpoint to bind, e.g. tcp://0.0.0.0:5555 */
    const char *curve_secret;  /* our Z85 secret key, NULL = plain (--insecure) */
    int heartbeat_ms;          /* heartbeat interval to groups (0 = default) */
    FILE *log;                 /* where the broker logs (stderr when NULL) */
} broker_opts_t;

typedef struct broker broker_t;

/* Binds the endpoint on ctx (a ZeroMQ context that outlives the broker; with
 * CURVE, its ZAP handler must already be running). reg and sched are
 * borrowed. Returns NULL and fills err on failure. */
broker_t *broker_new(void *ctx, registry_t *reg, sched_t *sched, const broker_opts_t *opts, char *err);
void broker_destroy(broker_t **self_p);

/* Serves until *stop becomes nonzero (a signal handler sets it). Returns
 * ST_OK after a stop, or an error when the socket itself fails. */
int broker_run(broker_t *self, volatile sig_atomic_t *stop, char *err);

#endif
