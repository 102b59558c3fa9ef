/*
 * serve_link.c - rank 0's link to the coordinator (see serve_link.h).
 *
 * Threads and sockets:
 *   main thread  -- pipe_main (PAIR) ==inproc== pipe_link (PAIR) -- link thread -- DEALER --> coordinator
 * The DEALER and pipe_link are used by the link thread only; pipe_main by the
 * main thread only. Shared state is a handful of atomics.
 *
 * Request ids: the link thread's own requests (hello) count from 1; the main
 * thread's from LINK_MAIN_RID0, so the link thread knows which replies to
 * keep and which to pass on.
 *
 * Session with the coordinator:
 *
 *   s_send_hello                     ok reply to hello
 *   ───────────> HELLO_SENT ──────────────────────────> READY
 *                  ^   │ no reply in HELLO_RETRY_MS          │ error "unknown_group"
 *                  │   └─> s_send_hello again                │ (the coordinator restarted)
 *                  └─────────────────────────────────────────┘
 *
 * A hello names the job the group is running, so a restarted coordinator
 * gives it back to the group instead of to another one; if it cannot, the
 * hello reply carries cancel: true and the job is stopped here.
 */
#include "worker/serve_link.h"
#include "common/st_time.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define LINK_POLL_MS 50
#define LINK_MAIN_RID0 ((int64_t)1 << 40)
#define HELLO_RETRY_MS 3000

struct serve_link {
    statetune_client_t *client; /* the DEALER, link thread only */
    void *pipe_ctx;             /* context of the inproc pipe, owned */
    void *pipe_main;            /* main thread's PAIR */
    void *pipe_link;            /* link thread's PAIR */
    pthread_t thread;           /* the link thread */
    int started;                /* thread running */
    char group[128];            /* group id */
    int ranks, gpus;            /* what hello offers */
    char backend[8];
    int64_t timeout_ms;         /* coordinator silence limit */
    int64_t next_main_rid;      /* main thread's request ids */
    atomic_int stop;            /* set by destroy */
    atomic_int ready;           /* hello answered */
    atomic_int cancel;          /* cancel requested for the current job */
    atomic_int lost;            /* coordinator silent too long */
    atomic_llong job;           /* current job id, 0 = idle */
    atomic_llong heartbeat_ms;  /* interval told by the coordinator */
};

/* ---- link thread ----------------------------------------------------------- */

static int64_t s_send_hello(serve_link_t *self, int64_t rid)
{
    int64_t job = atomic_load(&self->job);
    json_t *m = json_pack("{s:s, s:I, s:s, s:i, s:i, s:s, s:o}", "type", "hello", "rid", (json_int_t)rid, "group",
                          self->group, "ranks", self->ranks, "gpus", self->gpus, "backend", self->backend, "job",
                          job > 0 ? json_integer(job) : json_null());
    char err[ST_ERR_LEN];
    if (m) statetune_client_send(self->client, m, NULL, 0, err);
    json_decref(m);
    return st_mono_ms();
}

/* Forwards one message from the main thread's pipe to the coordinator.
 * While the coordinator is away the DEALER's queue may fill: the message is
 * then dropped rather than waited for (progress is superseded by the next
 * one; requests are retried by the main thread after their timeout), so this
 * thread never blocks and keeps watching the coordinator's silence. */
static void s_forward_out(serve_link_t *self)
{
    void *dealer = statetune_client_socket(self->client);
    int more = 1, dropping = 0;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, self->pipe_link, 0) < 0) {
            zmq_msg_close(&m);
            return;
        }
        more = zmq_msg_more(&m);
        if (!dropping && zmq_msg_send(&m, dealer, (more ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0)
            dropping = 1; /* only the first frame can fail: the rest then follow it */
        zmq_msg_close(&m);
    }
}

/* Passes a reply on to the main thread (JSON re-encoded, payload as is). */
static void s_forward_in(serve_link_t *self, json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    if (!text) return;
    zmq_send(self->pipe_link, text, strlen(text), ZMQ_DONTWAIT);
    free(text);
}

static void *s_thread(void *arg)
{
    serve_link_t *self = arg;
    int64_t hello_rid = 1, hello_sent = s_send_hello(self, hello_rid);
    int awaiting_hello = 1;
    int64_t now = st_mono_ms(), last_heard = now, next_hb = now + atomic_load(&self->heartbeat_ms);
    while (!atomic_load(&self->stop)) {
        zmq_pollitem_t items[2] = {{statetune_client_socket(self->client), 0, ZMQ_POLLIN, 0},
                                   {self->pipe_link, 0, ZMQ_POLLIN, 0}};
        int n = zmq_poll(items, 2, LINK_POLL_MS);
        if (n < 0 && errno != EINTR) break;
        now = st_mono_ms();
        if (n > 0 && (items[1].revents & ZMQ_POLLIN)) s_forward_out(self);
        while (n > 0 && (items[0].revents & ZMQ_POLLIN)) {
            json_t *msg = NULL;
            char err[ST_ERR_LEN];
            int rc = statetune_client_recv(self->client, 0, &msg, NULL, NULL, err);
            if (rc == ST_EBUSY) break;
            last_heard = now;
            if (rc) continue;
            const char *type = json_string_value(json_object_get(msg, "type"));
            json_t *jr = json_object_get(msg, "rid");
            int64_t rid = json_is_integer(jr) ? json_integer_value(jr) : 0;
            const char *code = json_string_value(json_object_get(msg, "code"));
            if (!type) {
                /* ignore */
            } else if (!strcmp(type, "cancel")) {
                int64_t job = json_integer_value(json_object_get(msg, "job"));
                if (job > 0 && job == atomic_load(&self->job)) atomic_store(&self->cancel, 1);
            } else if (!strcmp(type, "heartbeat")) {
                /* a sign of life is all it is */
            } else if (rid == hello_rid && awaiting_hello) {
                awaiting_hello = 0;
                if (!strcmp(type, "ok")) {
                    json_t *hb = json_object_get(msg, "heartbeat_ms");
                    if (json_is_integer(hb) && json_integer_value(hb) >= 10)
                        atomic_store(&self->heartbeat_ms, json_integer_value(hb));
                    if (json_is_true(json_object_get(msg, "cancel"))) atomic_store(&self->cancel, 1);
                    atomic_store(&self->ready, 1);
                } else {
                    const char *e = json_string_value(json_object_get(msg, "error"));
                    fprintf(stderr, "statetune-worker: the coordinator refused our hello: %s\n", e ? e : "?");
                    hello_sent = now - HELLO_RETRY_MS + 1000; /* try again in a second */
                    awaiting_hello = 1;
                }
            } else if (!strcmp(type, "error") && code && !strcmp(code, "unknown_group")) {
                /* the coordinator restarted (or thought us lost): introduce again */
                atomic_store(&self->ready, 0);
                if (!awaiting_hello) {
                    hello_sent = s_send_hello(self, ++hello_rid);
                    awaiting_hello = 1;
                }
                if (rid >= LINK_MAIN_RID0) s_forward_in(self, msg); /* the main thread's request failed */
            } else if (rid >= LINK_MAIN_RID0) {
                s_forward_in(self, msg);
            }
            json_decref(msg);
        }
        if (awaiting_hello && now - hello_sent >= HELLO_RETRY_MS) {
            hello_sent = s_send_hello(self, ++hello_rid);
        }
        if (now >= next_hb) {
            json_t *m = json_pack("{s:s, s:s}", "type", "heartbeat", "group", self->group);
            char err[ST_ERR_LEN];
            if (m) statetune_client_send(self->client, m, NULL, 0, err);
            json_decref(m);
            next_hb = now + atomic_load(&self->heartbeat_ms);
        }
        atomic_store(&self->lost, now - last_heard > self->timeout_ms);
    }
    return NULL;
}

/* ---- main thread ----------------------------------------------------------- */

serve_link_t *serve_link_new(const serve_link_opts_t *opts, char *err)
{
    serve_link_t *self = calloc(1, sizeof *self);
    if (!self) {
        st_fail(err, ST_ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(self->group, sizeof self->group, "%s", opts->group);
    snprintf(self->backend, sizeof self->backend, "%s", opts->backend);
    self->ranks = opts->ranks;
    self->gpus = opts->gpus;
    self->timeout_ms = (int64_t)(opts->coordinator_timeout_s * 1000);
    self->next_main_rid = LINK_MAIN_RID0;
    atomic_init(&self->stop, 0);
    atomic_init(&self->ready, 0);
    atomic_init(&self->cancel, 0);
    atomic_init(&self->lost, 0);
    atomic_init(&self->job, 0);
    atomic_init(&self->heartbeat_ms, ST_PROTO_HEARTBEAT_MS);
    statetune_client_opts_t copts = opts->curve;
    copts.identity = opts->group;
    self->client = statetune_client_new(opts->endpoint, &copts, err);
    if (!self->client) goto fail;
    self->pipe_ctx = zmq_ctx_new();
    if (!self->pipe_ctx) {
        st_fail(err, ST_ENET, "zmq_ctx_new failed");
        goto fail;
    }
    self->pipe_main = zmq_socket(self->pipe_ctx, ZMQ_PAIR);
    self->pipe_link = zmq_socket(self->pipe_ctx, ZMQ_PAIR);
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://serve-link-%p", (void *)self);
    if (!self->pipe_main || !self->pipe_link || zmq_bind(self->pipe_link, ep) || zmq_connect(self->pipe_main, ep)) {
        st_fail(err, ST_ENET, "cannot make the link's pipe: %s", zmq_strerror(errno));
        goto fail;
    }
    int zero = 0;
    zmq_setsockopt(self->pipe_main, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(self->pipe_link, ZMQ_LINGER, &zero, sizeof zero);
    if (pthread_create(&self->thread, NULL, s_thread, self) != 0) {
        st_fail(err, ST_ENET, "cannot start the link thread");
        goto fail;
    }
    self->started = 1;
    return self;
fail:
    serve_link_destroy(&self);
    return NULL;
}

void serve_link_destroy(serve_link_t **self_p)
{
    if (!self_p || !*self_p) return;
    serve_link_t *self = *self_p;
    if (self->started) {
        atomic_store(&self->stop, 1);
        pthread_join(self->thread, NULL);
    }
    if (self->pipe_main) zmq_close(self->pipe_main);
    if (self->pipe_link) zmq_close(self->pipe_link);
    if (self->pipe_ctx) zmq_ctx_term(self->pipe_ctx);
    statetune_client_destroy(&self->client);
    free(self);
    *self_p = NULL;
}

static int s_pipe_send(serve_link_t *self, json_t *msg, const void *payload, size_t plen, char *err)
{
    json_object_set_new(msg, "v", json_integer(ST_PROTO_VERSION));
    json_object_set_new(msg, "group", json_string(self->group));
    char *text = json_dumps(msg, JSON_COMPACT);
    if (!text) return st_fail(err, ST_ENOMEM, "out of memory");
    /* the link thread reads the pipe constantly; should it ever lag, a
     * notification is dropped rather than stalling the tuning loop */
    int rc = zmq_send(self->pipe_main, text, strlen(text), (payload ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
    free(text);
    if (rc < 0 && errno == EAGAIN) return st_fail(err, ST_EBUSY, "the link to the coordinator is backed up");
    if (rc >= 0 && payload) rc = zmq_send(self->pipe_main, payload, plen, 0);
    if (rc < 0) return st_fail(err, ST_ENET, "link pipe: %s", zmq_strerror(errno));
    return ST_OK;
}

int serve_link_notify(serve_link_t *self, json_t *msg, char *err)
{
    return s_pipe_send(self, msg, NULL, 0, err);
}

int serve_link_request(serve_link_t *self, json_t *req, const void *payload, size_t plen, int timeout_ms,
                       json_t **rep, char *err)
{
    *rep = NULL;
    int64_t rid = ++self->next_main_rid;
    json_object_set_new(req, "rid", json_integer(rid));
    int rc = s_pipe_send(self, req, payload, plen, err);
    if (rc) return rc;
    int64_t deadline = st_mono_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - st_mono_ms();
        if (left <= 0) return st_fail(err, ST_EBUSY, "no reply from the coordinator within %d ms", timeout_ms);
        zmq_pollitem_t item = {self->pipe_main, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&item, 1, (long)left);
        if (n < 0 && errno != EINTR) return st_fail(err, ST_ENET, "link pipe: %s", zmq_strerror(errno));
        if (n <= 0) continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, self->pipe_main, 0) < 0) {
            zmq_msg_close(&m);
            continue;
        }
        json_error_t jerr;
        json_t *msg = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, &jerr);
        zmq_msg_close(&m);
        if (!msg) continue;
        if (json_integer_value(json_object_get(msg, "rid")) != rid) { /* a late reply to an earlier try */
            json_decref(msg);
            continue;
        }
        const char *type = json_string_value(json_object_get(msg, "type"));
        if (type && !strcmp(type, "ok")) {
            *rep = msg;
            return ST_OK;
        }
        const char *e = json_string_value(json_object_get(msg, "error"));
        const char *cname = json_string_value(json_object_get(msg, "code"));
        /* "unknown_group": the coordinator restarted and the link is saying
         * hello again; the caller retries like after a timeout. */
        int code = cname && !strcmp(cname, "unknown_group") ? ST_EBUSY : statetune_code_from_name(cname);
        st_fail(err, code, "%s", e ? e : "the coordinator refused the request without a reason");
        json_decref(msg);
        return code;
    }
}

void serve_link_set_job(serve_link_t *self, int64_t job)
{
    atomic_store(&self->job, job);
    atomic_store(&self->cancel, 0);
}

int serve_link_cancelled(serve_link_t *self)
{
    return atomic_load(&self->cancel);
}

int serve_link_lost(serve_link_t *self)
{
    return atomic_load(&self->lost);
}

int serve_link_ready(serve_link_t *self)
{
    return atomic_load(&self->ready);
}
