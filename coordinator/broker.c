/*
 * broker.c - the coordinator's ROUTER loop (see broker.h, docs/protocol.md).
 *
 * One thread, one socket, one zmq_poll loop: every message is read whole
 * (identity, JSON frame, optional payload), size-checked, parsed, dispatched
 * to a handler that fills either an ok reply or an error, and every request
 * gets exactly one reply. Nothing a peer sends is asserted on.
 *
 * Worker group liveness (heartbeats both ways, SPEC section 6):
 *
 *            s_on_hello                     s_check_groups
 *   (none) ────────────> ALIVE ──(no message for LIVENESS x interval)──> LOST
 *                        │  ^                                              │
 *                        │  └─ any message from the group (s_touch)        │ its job:
 *                        └─ s_send_heartbeats: one heartbeat per interval   v sched_requeue
 *
 * A lost group is forgotten; if it was only slow and speaks again it gets
 * "unknown_group" and says hello again, and any report it makes on a job that
 * is no longer its own is answered with a cancel.
 */
#include "coordinator/broker.h"
#include "common/st_log.h"

#include "client/statetune_client.h"
#include "common/st_fs.h"
#include "model/model.h"
#include "model/tensorfile.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define POLL_MS 100             /* loop tick: stop flag and heartbeat checks */
#define MAX_FRAMES 3            /* identity + JSON + payload */
#define MAX_GROUPS 4096         /* more hellos than this are refused */
#define GROUP_ID_MAX 128
#define JOBS_LIMIT 500          /* jobs listed unless the request asks for more */

typedef struct {
    char id[GROUP_ID_MAX];      /* group id == its DEALER routing id */
    int ranks;                  /* processes in the group */
    int gpus;                   /* GPUs (cuda) or ranks (cpu) it offers */
    char backend[8];            /* "cpu" or "cuda" */
    int64_t last_seen_ms;       /* last message from it */
} group_t;

struct broker {
    void *sock;                 /* the ROUTER, owned */
    registry_t *reg;            /* borrowed */
    sched_t *sched;             /* borrowed */
    FILE *log;                  /* borrowed */
    int heartbeat_ms;           /* interval, both ways */
    int64_t next_heartbeat_ms;  /* when we next send heartbeats */
    group_t *groups;            /* live groups */
    size_t n_groups, cap_groups;
};

/* One received message. */
typedef struct {
    zmq_msg_t frames[MAX_FRAMES]; /* identity, json, payload */
    int n;                        /* frames received (and initialised) */
    int extra;                    /* frames beyond MAX_FRAMES, discarded */
} inmsg_t;

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_log(broker_t *self, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_log(broker_t *self, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    st_logv(self->log, "coordinator", fmt, ap);
    va_end(ap);
}

broker_t *broker_new(void *ctx, registry_t *reg, sched_t *sched, const broker_opts_t *opts, char *err)
{
    broker_t *self = calloc(1, sizeof *self);
    if (!self) {
        st_fail(err, ST_ENOMEM, "out of memory");
        return NULL;
    }
    self->reg = reg;
    self->sched = sched;
    self->log = opts->log ? opts->log : stderr;
    self->heartbeat_ms = opts->heartbeat_ms > 0 ? opts->heartbeat_ms : ST_PROTO_HEARTBEAT_MS;
    self->sock = zmq_socket(ctx, ZMQ_ROUTER);
    if (!self->sock) {
        st_fail(err, ST_ENET, "zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int one = 1, zero = 0;
    /* SPEC 6: a reply to a peer that is gone is an error we see, not a drop. */
    zmq_setsockopt(self->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    /* A group reconnecting under its id (after a network blip) takes over. */
    zmq_setsockopt(self->sock, ZMQ_ROUTER_HANDOVER, &one, sizeof one);
    zmq_setsockopt(self->sock, ZMQ_LINGER, &zero, sizeof zero);
    /* libzmq drops the connection of a peer sending more than this; anything
     * under it but over our frame limits gets a proper error reply. */
    int64_t maxmsg = (int64_t)ST_PROTO_MAX_PAYLOAD + 2 * (int64_t)ST_PROTO_MAX_JSON;
    zmq_setsockopt(self->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (opts->curve_secret) {
        if (zmq_setsockopt(self->sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
            zmq_setsockopt(self->sock, ZMQ_CURVE_SECRETKEY, opts->curve_secret, ST_CURVE_KEY_LEN + 1)) {
            st_fail(err, ST_ENET, "enabling CURVE: %s", zmq_strerror(errno));
            goto fail;
        }
        /* ZAP requests carry this domain; the handler checks the allow list. */
        zmq_setsockopt(self->sock, ZMQ_ZAP_DOMAIN, "statetune", 9);
    }
    if (zmq_bind(self->sock, opts->bind) != 0) {
        st_fail(err, ST_ENET, "cannot bind '%s': %s", opts->bind, zmq_strerror(errno));
        goto fail;
    }
    self->next_heartbeat_ms = s_now_ms() + self->heartbeat_ms;
    return self;
fail:
    broker_destroy(&self);
    return NULL;
}

void broker_destroy(broker_t **self_p)
{
    if (!self_p || !*self_p) return;
    broker_t *self = *self_p;
    if (self->sock) zmq_close(self->sock);
    free(self->groups);
    free(self);
    *self_p = NULL;
}

/* ---- sending ------------------------------------------------------------ */

/* Sends [identity, json, (payload)] without blocking. A peer that is gone or
 * not reading is logged; it is never waited for. */
static void s_send(broker_t *self, const void *id, size_t idlen, json_t *msg, const void *payload, size_t plen)
{
    json_object_set_new(msg, "v", json_integer(ST_PROTO_VERSION));
    char *text = json_dumps(msg, JSON_COMPACT);
    if (!text) {
        s_log(self, "cannot encode a reply (out of memory)");
        return;
    }
    int rc = zmq_send(self->sock, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc >= 0) rc = zmq_send(self->sock, text, strlen(text), (payload ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
    if (rc >= 0 && payload) rc = zmq_send(self->sock, payload, plen, ZMQ_DONTWAIT);
    if (rc < 0) {
        const char *type = json_string_value(json_object_get(msg, "type"));
        s_log(self, "could not send '%s' to a peer: %s", type ? type : "?", zmq_strerror(errno));
    }
    free(text);
}

static void s_send_group(broker_t *self, const char *group, json_t *msg)
{
    s_send(self, group, strlen(group), msg, NULL, 0);
}

/* ---- groups ------------------------------------------------------------- */

static group_t *s_group(broker_t *self, const char *id)
{
    for (size_t i = 0; i < self->n_groups; i++)
        if (!strcmp(self->groups[i].id, id)) return &self->groups[i];
    return NULL;
}

static void s_group_remove(broker_t *self, const char *id)
{
    for (size_t i = 0; i < self->n_groups; i++)
        if (!strcmp(self->groups[i].id, id)) {
            self->groups[i] = self->groups[--self->n_groups];
            return;
        }
}

static void s_send_cancel(broker_t *self, const char *group, int64_t job)
{
    json_t *m = json_pack("{s:s, s:I}", "type", "cancel", "job", (json_int_t)job);
    if (m) s_send_group(self, group, m);
    json_decref(m);
}

static void s_send_heartbeats(broker_t *self)
{
    for (size_t i = 0; i < self->n_groups; i++) {
        json_t *m = json_pack("{s:s}", "type", "heartbeat");
        if (m) s_send_group(self, self->groups[i].id, m);
        json_decref(m);
        /* A cancel is repeated until the group stops: one lost message must
         * not leave a job running (SPEC: cancel within 5 s). */
        int64_t job = sched_job_of_group(self->sched, self->groups[i].id);
        if (job && sched_cancel_requested(self->sched, job)) s_send_cancel(self, self->groups[i].id, job);
    }
}

static void s_check_groups(broker_t *self, int64_t now)
{
    int64_t limit = (int64_t)ST_PROTO_LIVENESS * self->heartbeat_ms;
    for (size_t i = 0; i < self->n_groups;) {
        group_t *g = &self->groups[i];
        if (now - g->last_seen_ms <= limit) {
            i++;
            continue;
        }
        char err[ST_ERR_LEN];
        int64_t job = sched_job_of_group(self->sched, g->id);
        s_log(self, "group '%s' is lost (no message for %lld ms)", g->id, (long long)(now - g->last_seen_ms));
        if (job) {
            char why[GROUP_ID_MAX + 64];
            snprintf(why, sizeof why, "group '%s' was lost", g->id);
            if (sched_requeue(self->sched, job, why, err))
                s_log(self, "requeueing job %lld failed: %s", (long long)job, err);
            else
                s_log(self, "job %lld goes back to the queue", (long long)job);
        }
        s_group_remove(self, g->id); /* moves the last one here: do not advance */
    }
}

/* ---- field helpers: every field is checked, with its name in the error ---- */

static int s_int_field(json_t *msg, const char *key, int64_t *out, char *err)
{
    json_t *v = json_object_get(msg, key);
    if (!json_is_integer(v)) return st_fail(err, ST_EFORMAT, "field '%s' must be an integer", key);
    *out = json_integer_value(v);
    return ST_OK;
}

static int s_str_field(json_t *msg, const char *key, const char **out, char *err)
{
    json_t *v = json_object_get(msg, key);
    if (!json_is_string(v)) return st_fail(err, ST_EFORMAT, "field '%s' must be a string", key);
    *out = json_string_value(v);
    return ST_OK;
}

static int s_job_field(json_t *msg, int64_t *job, char *err)
{
    int rc = s_int_field(msg, "job", job, err);
    if (rc == ST_OK && *job <= 0) rc = st_fail(err, ST_EINVAL, "field 'job' must be a positive job id");
    return rc;
}

/* ---- client requests ---------------------------------------------------- */

/* Each handler returns ST_OK with the ok reply's fields added to rep (and
 * optionally a payload it allocates), or an error code with err filled. */
typedef struct {
    json_t *rep;       /* reply fields, owned by the dispatcher */
    void *payload;     /* reply payload (malloc'd), or NULL */
    size_t plen;
} reply_t;

static int s_on_ping(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    json_object_set_new(r->rep, "coordinator", json_string("statetune-coordinator 0.1"));
    return ST_OK;
}

static int s_on_submit(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    json_t *spec = json_object_get(msg, "spec");
    if (!json_is_object(spec)) return st_fail(err, ST_EFORMAT, "field 'spec' must be a JSON object (the job)");
    char *text = json_dumps(spec, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text) return st_fail(err, ST_ENOMEM, "out of memory");
    int64_t id = 0;
    int rc = sched_submit(self->sched, text, &id, err);
    free(text);
    if (id > 0) json_object_set_new(r->rep, "job", json_integer(id));
    if (rc) {
        if (id > 0) s_log(self, "job %lld refused at validation: %s", (long long)id, err);
        return rc;
    }
    json_object_set_new(r->rep, "status", json_string("queued"));
    s_log(self, "job %lld queued", (long long)id);
    return ST_OK;
}

/* For a queued job, why it is waiting: no connected group can run it, or
 * every group that can is busy. */
static void s_add_waiting(broker_t *self, int64_t job, json_t *rec)
{
    const char *st = json_string_value(json_object_get(rec, "status"));
    if (!st || strcmp(st, "queued") != 0) return;
    int fit = 0, free_fit = 0;
    for (size_t i = 0; i < self->n_groups; i++) {
        group_t *g = &self->groups[i];
        if (sched_job_fits(self->sched, job, g->gpus, g->backend) != 1) continue;
        fit++;
        if (!sched_job_of_group(self->sched, g->id)) free_fit++;
    }
    char needs[256], text[400];
    if (sched_job_needs(self->sched, job, needs, sizeof needs) != ST_OK) return;
    if (!fit)
        snprintf(text, sizeof text, "no connected worker group can run it: it needs %s", needs);
    else if (!free_fit)
        snprintf(text, sizeof text, "every group that can run it (%d) is busy", fit);
    else
        snprintf(text, sizeof text, "a free group will take it at its next request");
    json_object_set_new(rec, "waiting", json_string(text));
}

static int s_on_status(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    int64_t job = 0;
    int rc = s_job_field(msg, &job, err);
    json_t *rec = NULL;
    if (rc == ST_OK) rc = sched_job_json(self->sched, job, &rec, err);
    if (rc) return rc;
    s_add_waiting(self, job, rec);
    json_object_set_new(r->rep, "job", rec);
    return ST_OK;
}

/* The newest `limit` jobs (default JOBS_LIMIT; 0 = all), with `total`. */
static int s_on_jobs(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    int64_t limit = JOBS_LIMIT;
    if (json_object_get(msg, "limit") && s_int_field(msg, "limit", &limit, err)) return ST_EFORMAT;
    if (limit < 0) return st_fail(err, ST_EINVAL, "field 'limit' must be 0 (all) or a positive count");
    json_t *list = NULL;
    int rc = sched_jobs_json(self->sched, &list, err);
    if (rc) return rc;
    size_t total = json_array_size(list);
    while (limit > 0 && json_array_size(list) > (size_t)limit) json_array_remove(list, json_array_size(list) - 1);
    json_object_set_new(r->rep, "jobs", list);
    json_object_set_new(r->rep, "total", json_integer((json_int_t)total));
    return ST_OK;
}

static int s_on_cancel(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    int64_t job = 0;
    int rc = s_job_field(msg, &job, err);
    char group[128];
    if (rc == ST_OK) rc = sched_cancel(self->sched, job, group, err);
    if (rc) return rc;
    if (group[0]) {
        s_send_cancel(self, group, job);
        s_log(self, "job %lld: cancel sent to group '%s'", (long long)job, group);
    } else {
        s_log(self, "job %lld cancelled", (long long)job);
    }
    json_object_set_new(r->rep, "job", json_integer(job));
    json_object_set_new(r->rep, "status", json_string(group[0] ? "running" : "cancelled"));
    json_object_set_new(r->rep, "cancel_requested", json_boolean(group[0] != 0));
    return ST_OK;
}

static int s_events(broker_t *self, json_t *msg, reply_t *r, int with_job, char *err)
{
    int64_t job = 0, since = 0;
    int rc = s_job_field(msg, &job, err);
    if (rc) return rc;
    if (json_object_get(msg, "since") && s_int_field(msg, "since", &since, err)) return ST_EFORMAT;
    json_t *rec = NULL, *events = NULL;
    rc = sched_job_json(self->sched, job, &rec, err); /* also: unknown job -> not_found */
    if (rc == ST_OK) rc = registry_job_events(self->reg, job, since, &events, err);
    if (rc) {
        json_decref(rec);
        return rc;
    }
    int64_t next = since;
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        int64_t seq = json_integer_value(json_object_get(ev, "seq"));
        if (seq > next) next = seq;
    }
    json_object_set_new(r->rep, "events", events);
    json_object_set_new(r->rep, "next", json_integer(next));
    if (with_job)
        json_object_set_new(r->rep, "job", rec);
    else
        json_decref(rec);
    return ST_OK;
}

static int s_on_events(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    return s_events(self, msg, r, 0, err);
}

static int s_on_watch(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    return s_events(self, msg, r, 1, err);
}

static int s_on_states_list(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    json_t *list = NULL;
    int rc = registry_list_states(self->reg, &list, err);
    if (rc) return rc;
    json_object_set_new(r->rep, "states", list);
    return ST_OK;
}

static int s_on_states_show(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    const char *ref = NULL;
    json_t *st = NULL;
    int rc = s_str_field(msg, "ref", &ref, err);
    if (rc == ST_OK) rc = registry_show_state(self->reg, ref, &st, err);
    if (rc) return rc;
    json_object_set_new(r->rep, "state", st);
    return ST_OK;
}

static int s_on_states_get(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    const char *ref = NULL;
    registry_state_info_t info;
    float *data = NULL, *ks = NULL;
    int rc = s_str_field(msg, "ref", &ref, err);
    /* "kstate": true asks for the kernel-expanded part after S0 (older clients do not) */
    int want_ks = json_is_true(json_object_get(msg, "kstate"));
    if (rc == ST_OK)
        rc = want_ks ? registry_get_state_ks(self->reg, ref, &info, &data, &ks, err)
                     : registry_get_state(self->reg, ref, &info, &data, err);
    if (rc) return rc;
    size_t n = (size_t)info.n_layer * info.n_head * info.head_size * info.head_size;
    size_t nk = ks ? 2 * (size_t)info.n_layer * info.n_head * info.head_size * info.kernel_features : 0;
    if ((n + nk) * sizeof(float) > ST_PROTO_MAX_PAYLOAD) {
        free(data);
        free(ks);
        return st_fail(err, ST_EUNSUPPORTED, "state '%s' is %zu bytes, over the protocol's %u-byte limit", ref,
                       (n + nk) * sizeof(float), ST_PROTO_MAX_PAYLOAD);
    }
    if (ks) { /* one payload: S0 then U0 and the support vectors */
        float *both = realloc(data, (n + nk) * sizeof(float));
        if (!both) {
            free(data);
            free(ks);
            return st_fail(err, ST_ENOMEM, "out of memory for state '%s'", ref);
        }
        memcpy(both + n, ks, nk * sizeof(float));
        free(ks);
        data = both;
        json_object_set_new(r->rep, "kernel_gamma", json_real(info.kernel_gamma));
    }
    json_object_set_new(r->rep, "kstate_floats", json_integer((json_int_t)nk));
    json_object_set_new(r->rep, "name", json_string(info.name));
    json_object_set_new(r->rep, "version", json_integer(info.version));
    json_object_set_new(r->rep, "layers", json_integer(info.n_layer));
    json_object_set_new(r->rep, "heads", json_integer(info.n_head));
    json_object_set_new(r->rep, "head_size", json_integer(info.head_size));
    json_object_set_new(r->rep, "dtype", json_string("f32"));
    json_object_set_new(r->rep, "sha256", json_string(info.blob_sha256));
    json_object_set_new(r->rep, "model_sha256", json_string(info.model_sha256));
    json_object_set_new(r->rep, "kernel_features", json_integer(info.kernel_features));
    r->payload = data;
    r->plen = (n + nk) * sizeof(float);
    return ST_OK;
}

static int s_on_alias(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    const char *name = NULL, *alias = NULL;
    int64_t version = 0;
    int rc = s_str_field(msg, "name", &name, err);
    if (rc == ST_OK) rc = s_str_field(msg, "alias", &alias, err);
    if (rc == ST_OK) rc = s_int_field(msg, "version", &version, err);
    if (rc == ST_OK && (version <= 0 || version > 1000000000))
        rc = st_fail(err, ST_EINVAL, "field 'version' must be a positive version number");
    if (rc == ST_OK) rc = registry_set_alias(self->reg, name, alias, (int)version, err);
    if (rc) return rc;
    json_object_set_new(r->rep, "name", json_string(name));
    json_object_set_new(r->rep, "alias", json_string(alias));
    json_object_set_new(r->rep, "version", json_integer(version));
    s_log(self, "alias %s@%s -> version %lld", name, alias, (long long)version);
    return ST_OK;
}

static int s_on_models_list(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    json_t *list = NULL;
    int rc = registry_list_models(self->reg, &list, err);
    if (rc) return rc;
    json_object_set_new(r->rep, "models", list);
    return ST_OK;
}

/* Registers a model file under a name. The client hashed the file (a 15 GB
 * checkpoint takes the better part of a minute, which the broker's thread
 * cannot spend); here the file must open as a model, and its config is read
 * from the tensor shapes. Workers hash the model again for every result, so
 * a wrong hash cannot go unnoticed in a state's lineage. */
static int s_on_models_register(broker_t *self, json_t *msg, reply_t *r, char *err)
{
    const char *name = NULL, *path = NULL, *sha = NULL;
    int rc = s_str_field(msg, "name", &name, err);
    if (rc == ST_OK) rc = s_str_field(msg, "path", &path, err);
    if (rc == ST_OK) rc = s_str_field(msg, "sha256", &sha, err);
    if (rc) return rc;
    if (path[0] != '/') return st_fail(err, ST_EINVAL, "field 'path' must be an absolute path, got '%s'", path);
    /* a regular file inside the data roots, checked before anything opens it */
    rc = sched_check_path(self->sched, "path", path, 1, err);
    if (rc) return rc;
    if (strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64)
        return st_fail(err, ST_EINVAL, "field 'sha256' must be 64 lowercase hex digits");
    tensorfile_t *tf = tensorfile_open(path, err);
    if (!tf) return ST_EFORMAT;
    rwkv_config_t cfg;
    rc = rwkv_config_from_tensorfile(tf, &cfg, err);
    tensorfile_close(&tf);
    if (rc) return rc;
    json_t *jc = json_pack("{s:i, s:i, s:i, s:i, s:i, s:i}", "n_layer", cfg.n_layer, "n_embd", cfg.n_embd, "n_head",
                           cfg.n_head, "head_size", cfg.head_size, "vocab", cfg.vocab, "ffn_dim", cfg.ffn_dim);
    char *text = jc ? json_dumps(jc, JSON_COMPACT) : NULL;
    rc = text ? registry_register_model(self->reg, name, sha, text, path, err) : st_fail(err, ST_ENOMEM, "out of memory");
    free(text);
    if (rc == ST_OK) {
        json_object_set_new(r->rep, "name", json_string(name));
        json_object_set_new(r->rep, "sha256", json_string(sha));
        json_object_set_new(r->rep, "config", jc);
        s_log(self, "model '%s' registered: %s (%d layers, %d embd, vocab %d)", name, path, cfg.n_layer, cfg.n_embd,
              cfg.vocab);
    } else {
        json_decref(jc);
    }
    return rc;
}

/* ---- worker group requests and notifications ---------------------------- */

/* The group id is the sender's routing id; a message naming another group is
 * refused, so one group can never report for another. */
static int s_group_of(broker_t *self, json_t *msg, const char *ident, group_t **out, char *err)
{
    const char *gid = NULL;
    int rc = s_str_field(msg, "group", &gid, err);
    if (rc) return rc;
    if (strcmp(gid, ident) != 0)
        return st_fail(err, ST_EINVAL, "field 'group' ('%s') must equal the sender's routing id", gid);
    *out = s_group(self, gid);
    if (!*out) return st_fail(err, ST_ENOTFOUND, "group '%s' is not known here: say hello first", gid);
    return ST_OK;
}

static int s_on_hello(broker_t *self, json_t *msg, const char *ident, reply_t *r, char *err)
{
    const char *gid = NULL, *backend = NULL;
    int64_t ranks = 0, gpus = 0;
    int rc = s_str_field(msg, "group", &gid, err);
    if (rc == ST_OK && (strlen(gid) == 0 || strlen(gid) >= GROUP_ID_MAX || strcmp(gid, ident) != 0))
        rc = st_fail(err, ST_EINVAL, "field 'group' must be the sender's routing id, 1 to %d bytes", GROUP_ID_MAX - 1);
    if (rc == ST_OK) rc = s_int_field(msg, "ranks", &ranks, err);
    if (rc == ST_OK) rc = s_int_field(msg, "gpus", &gpus, err);
    if (rc == ST_OK) rc = s_str_field(msg, "backend", &backend, err);
    if (rc == ST_OK && (ranks < 1 || ranks > 100000 || gpus < 0 || gpus > 100000))
        rc = st_fail(err, ST_EINVAL, "fields 'ranks' and 'gpus' must be small positive numbers");
    if (rc == ST_OK && strcmp(backend, "cpu") && strcmp(backend, "cuda"))
        rc = st_fail(err, ST_EINVAL, "field 'backend' must be \"cpu\" or \"cuda\"");
    if (rc) return rc;
    group_t *g = s_group(self, gid);
    if (!g) {
        if (self->n_groups >= MAX_GROUPS) return st_fail(err, ST_EBUSY, "too many worker groups");
        if (self->n_groups == self->cap_groups) {
            size_t cap = self->cap_groups ? 2 * self->cap_groups : 8;
            group_t *p = realloc(self->groups, cap * sizeof *p);
            if (!p) return st_fail(err, ST_ENOMEM, "out of memory");
            self->groups = p;
            self->cap_groups = cap;
        }
        g = &self->groups[self->n_groups++];
        memset(g, 0, sizeof *g);
        snprintf(g->id, sizeof g->id, "%s", gid);
    }
    g->ranks = (int)ranks;
    g->gpus = (int)(gpus > 0 ? gpus : ranks);
    snprintf(g->backend, sizeof g->backend, "%s", backend);
    g->last_seen_ms = s_now_ms();
    json_object_set_new(r->rep, "heartbeat_ms", json_integer(self->heartbeat_ms));
    json_object_set_new(r->rep, "liveness", json_integer(ST_PROTO_LIVENESS));
    s_log(self, "group '%s' says hello: %d ranks, %d %s", g->id, g->ranks, g->gpus,
          strcmp(backend, "cuda") ? "cpu ranks" : "gpus");
    json_t *jj = json_object_get(msg, "job");
    if (json_is_integer(jj) && json_integer_value(jj) > 0) {
        int64_t job = json_integer_value(jj);
        char e2[ST_ERR_LEN];
        if (sched_reclaim(self->sched, job, gid, e2) == ST_OK) {
            s_log(self, "group '%s' carries on with job %lld", gid, (long long)job);
        } else {
            s_log(self, "group '%s' must stop job %lld: %s", gid, (long long)job, e2);
            json_object_set_new(r->rep, "cancel", json_true());
        }
    }
    return ST_OK;
}

static int s_on_job_request(broker_t *self, json_t *msg, const char *ident, reply_t *r, char *err)
{
    group_t *g = NULL;
    int rc = s_group_of(self, msg, ident, &g, err);
    if (rc) return rc;
    int64_t cur = sched_job_of_group(self->sched, g->id);
    if (cur) { /* it forgot its job: a crash between result and reply; requeue */
        char why[GROUP_ID_MAX + 64];
        snprintf(why, sizeof why, "group '%s' asked for new work while running it", g->id);
        sched_requeue(self->sched, cur, why, err);
    }
    sched_assignment_t a;
    rc = sched_assign(self->sched, g->id, g->gpus, g->backend, &a, err);
    if (rc == ST_ENOTFOUND) {
        json_object_set_new(r->rep, "job", json_null());
        return ST_OK;
    }
    if (rc) return rc;
    json_error_t jerr;
    json_t *spec = json_loads(a.spec_json, 0, &jerr);
    json_object_set_new(r->rep, "job", json_integer(a.id));
    json_object_set_new(r->rep, "spec", spec ? spec : json_null());
    json_object_set_new(r->rep, "out_dir", json_string(a.out_dir));
    json_object_set_new(r->rep, "attempt", json_integer(a.attempt));
    s_log(self, "job %lld -> group '%s' (attempt %d)", (long long)a.id, g->id, a.attempt);
    return ST_OK;
}

/* progress, eval, checkpoint: notifications. A report on a job that is no
 * longer the group's gets a cancel back (it was requeued while the group was
 * thought lost). */
static int s_on_report(broker_t *self, json_t *msg, const char *ident, const char *kind, char *err)
{
    group_t *g = NULL;
    int64_t job = 0;
    int rc = s_group_of(self, msg, ident, &g, err);
    if (rc == ST_OK) rc = s_job_field(msg, &job, err);
    if (rc) return rc;
    json_t *data = json_deep_copy(msg);
    if (!data) return st_fail(err, ST_ENOMEM, "out of memory");
    static const char *strip[] = {"v", "type", "group", "job", "rid"};
    for (size_t i = 0; i < sizeof strip / sizeof strip[0]; i++) json_object_del(data, strip[i]);
    rc = sched_event(self->sched, job, g->id, kind, data, err);
    json_decref(data);
    if (rc == ST_EINVAL) {
        s_log(self, "group '%s' reports on job %lld, which is not its own: telling it to stop", g->id,
              (long long)job);
        s_send_cancel(self, g->id, job);
    }
    return rc;
}

static int s_on_result(broker_t *self, json_t *msg, const char *ident, const void *payload, size_t plen,
                       reply_t *r, char *err)
{
    group_t *g = NULL;
    int64_t job = 0, L = 0, H = 0, N = 0;
    int rc = s_group_of(self, msg, ident, &g, err);
    if (rc == ST_OK) rc = s_job_field(msg, &job, err);
    if (rc == ST_OK) rc = s_int_field(msg, "layers", &L, err);
    if (rc == ST_OK) rc = s_int_field(msg, "heads", &H, err);
    if (rc == ST_OK) rc = s_int_field(msg, "head_size", &N, err);
    if (rc) return rc;
    if (L < 1 || L > 4096 || H < 1 || H > 4096 || N < 1 || N > 1024)
        return st_fail(err, ST_EINVAL, "result shape [%lld, %lld, %lld, %lld] is out of range", (long long)L,
                       (long long)H, (long long)N, (long long)N);
    size_t need = (size_t)L * (size_t)H * (size_t)N * (size_t)N * sizeof(float);
    /* a kernel-expanded part (SPEC 4) rides after S0: U0 then the support vectors */
    int64_t M = 0;
    double gamma = 0;
    json_t *jm = json_object_get(msg, "kernel_features");
    if (jm) {
        if (!json_is_integer(jm) || json_integer_value(jm) < 0 || json_integer_value(jm) > 1024)
            return st_fail(err, ST_EINVAL, "field 'kernel_features' must be an integer from 0 to 1024");
        M = json_integer_value(jm);
        gamma = json_number_value(json_object_get(msg, "kernel_gamma"));
        if (M > 0 && !(gamma > 0 && isfinite(gamma)))
            return st_fail(err, ST_EINVAL, "field 'kernel_gamma' must be a positive number");
    }
    size_t kneed = 2 * (size_t)L * (size_t)H * (size_t)N * (size_t)M * sizeof(float);
    if (!payload || plen != need + kneed)
        return st_fail(err, ST_EFORMAT, "result of job %lld: the state payload has %zu bytes, its shape needs %zu",
                       (long long)job, plen, need + kneed);
    json_t *metrics = json_object_get(msg, "metrics");
    if (metrics && !json_is_object(metrics)) return st_fail(err, ST_EFORMAT, "field 'metrics' must be an object");
    const char *sha = json_string_value(json_object_get(msg, "model_sha256"));
    if (!sha || strlen(sha) != 64) return st_fail(err, ST_EFORMAT, "field 'model_sha256' must be 64 hex digits");
    /* The payload frame is not guaranteed float-aligned. */
    float *data = malloc(need + kneed);
    if (!data) return st_fail(err, ST_ENOMEM, "out of memory for a %zu-byte state", need + kneed);
    memcpy(data, payload, need + kneed);
    int version = 0;
    rc = sched_succeed_ks(self->sched, job, g->id, metrics, sha, (int)L, (int)H, (int)N, data, (int)M, (float)gamma,
                          M > 0 ? data + need / sizeof(float) : NULL, &version, err);
    free(data);
    if (rc) {
        s_log(self, "job %lld: result refused: %s", (long long)job, err);
        return rc;
    }
    json_object_set_new(r->rep, "version", json_integer(version));
    s_log(self, "job %lld succeeded: state version %d", (long long)job, version);
    return ST_OK;
}

static int s_on_failed(broker_t *self, json_t *msg, const char *ident, reply_t *r, char *err)
{
    group_t *g = NULL;
    int64_t job = 0;
    const char *why = "the worker group gave no reason";
    int rc = s_group_of(self, msg, ident, &g, err);
    if (rc == ST_OK) rc = s_job_field(msg, &job, err);
    if (rc) return rc;
    json_t *e = json_object_get(msg, "error");
    if (json_is_string(e)) why = json_string_value(e);
    int cancelled = json_is_true(json_object_get(msg, "cancelled"));
    rc = sched_fail(self->sched, job, g->id, why, cancelled, err);
    if (rc) return rc;
    s_log(self, "job %lld %s: %s", (long long)job, cancelled ? "cancelled" : "failed", why);
    return ST_OK;
}

/* ---- dispatch ----------------------------------------------------------- */

static void s_reply_error(broker_t *self, const void *id, size_t idlen, int64_t rid, int code, const char *code_name,
                          const char *text, json_t *extra)
{
    json_t *m = json_pack("{s:s, s:I, s:s, s:s}", "type", "error", "rid", (json_int_t)rid, "code",
                          code_name ? code_name : statetune_code_name(code), "error", text);
    if (!m) return;
    if (extra) json_object_update(m, extra);
    s_send(self, id, idlen, m, NULL, 0);
    json_decref(m);
}

static void s_touch(broker_t *self, const char *ident)
{
    group_t *g = s_group(self, ident);
    if (g) g->last_seen_ms = s_now_ms();
}

static void s_handle(broker_t *self, inmsg_t *in)
{
    const void *id = zmq_msg_data(&in->frames[0]);
    size_t idlen = zmq_msg_size(&in->frames[0]);
    char ident[GROUP_ID_MAX];
    size_t cl = idlen < sizeof ident - 1 ? idlen : sizeof ident - 1;
    memcpy(ident, id, cl);
    ident[cl] = 0;
    if (strlen(ident) != idlen) ident[0] = 0; /* binary (random) ids: never a group */
    s_touch(self, ident);

    if (in->n < 2) return; /* an identity alone: nothing to answer */
    if (in->extra || in->n > 3) {
        s_reply_error(self, id, idlen, 0, ST_EFORMAT, NULL, "a message has one JSON frame and at most one payload frame",
                      NULL);
        return;
    }
    size_t jlen = zmq_msg_size(&in->frames[1]);
    const void *payload = in->n == 3 ? zmq_msg_data(&in->frames[2]) : NULL;
    size_t plen = in->n == 3 ? zmq_msg_size(&in->frames[2]) : 0;
    char err[ST_ERR_LEN];
    if (jlen > ST_PROTO_MAX_JSON) {
        snprintf(err, sizeof err, "the JSON frame has %zu bytes, over the %u-byte limit", jlen, ST_PROTO_MAX_JSON);
        s_reply_error(self, id, idlen, 0, ST_EFORMAT, "too_large", err, NULL);
        return;
    }
    if (plen > ST_PROTO_MAX_PAYLOAD) {
        snprintf(err, sizeof err, "the payload has %zu bytes, over the %u-byte limit", plen, ST_PROTO_MAX_PAYLOAD);
        s_reply_error(self, id, idlen, 0, ST_EFORMAT, "too_large", err, NULL);
        return;
    }
    json_error_t jerr;
    json_t *msg = json_loadb(zmq_msg_data(&in->frames[1]), jlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(msg)) {
        snprintf(err, sizeof err, "the message is not a JSON object (%s)", msg ? "another JSON value" : jerr.text);
        s_reply_error(self, id, idlen, 0, ST_EFORMAT, NULL, err, NULL);
        json_decref(msg);
        return;
    }
    json_t *jrid = json_object_get(msg, "rid");
    int64_t rid = json_is_integer(jrid) ? json_integer_value(jrid) : 0;
    json_t *jv = json_object_get(msg, "v");
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (!json_is_integer(jv) || json_integer_value(jv) != ST_PROTO_VERSION) {
        snprintf(err, sizeof err, "this coordinator speaks protocol version %d; the message says %s", ST_PROTO_VERSION,
                 json_is_integer(jv) ? "another" : "none");
        s_reply_error(self, id, idlen, rid, ST_EFORMAT, "version", err, NULL);
        json_decref(msg);
        return;
    }
    if (!type) {
        s_reply_error(self, id, idlen, rid, ST_EFORMAT, NULL, "field 'type' must be a string", NULL);
        json_decref(msg);
        return;
    }

    /* notifications: no reply unless they are refused */
    int rc = ST_OK;
    int notification = 1;
    if (!strcmp(type, "heartbeat")) {
        if (!s_group(self, ident)) {
            s_reply_error(self, id, idlen, 0, ST_ENOTFOUND, "unknown_group",
                          "this group is not known here (the coordinator restarted, or lost it): say hello again",
                          NULL);
        }
    } else if (!strcmp(type, "progress") || !strcmp(type, "eval") || !strcmp(type, "checkpoint")) {
        rc = s_on_report(self, msg, ident, type, err);
        if (rc == ST_ENOTFOUND && !s_group(self, ident))
            s_reply_error(self, id, idlen, 0, rc, "unknown_group", err, NULL);
        rc = ST_OK; /* reports are best effort: a refusal was logged or answered with cancel */
    } else {
        notification = 0;
    }
    if (notification) {
        json_decref(msg);
        return;
    }

    reply_t r = {json_object(), NULL, 0};
    if (!r.rep) {
        json_decref(msg);
        return;
    }
    if (!rid) {
        rc = st_fail(err, ST_EFORMAT, "a '%s' request needs a nonzero integer 'rid'", type);
    } else if (!strcmp(type, "ping")) {
        rc = s_on_ping(self, msg, &r, err);
    } else if (!strcmp(type, "submit")) {
        rc = s_on_submit(self, msg, &r, err);
    } else if (!strcmp(type, "status")) {
        rc = s_on_status(self, msg, &r, err);
    } else if (!strcmp(type, "jobs")) {
        rc = s_on_jobs(self, msg, &r, err);
    } else if (!strcmp(type, "cancel")) {
        rc = s_on_cancel(self, msg, &r, err);
    } else if (!strcmp(type, "events")) {
        rc = s_on_events(self, msg, &r, err);
    } else if (!strcmp(type, "watch")) {
        rc = s_on_watch(self, msg, &r, err);
    } else if (!strcmp(type, "states_list")) {
        rc = s_on_states_list(self, msg, &r, err);
    } else if (!strcmp(type, "states_show")) {
        rc = s_on_states_show(self, msg, &r, err);
    } else if (!strcmp(type, "states_get")) {
        rc = s_on_states_get(self, msg, &r, err);
    } else if (!strcmp(type, "alias")) {
        rc = s_on_alias(self, msg, &r, err);
    } else if (!strcmp(type, "models_list")) {
        rc = s_on_models_list(self, msg, &r, err);
    } else if (!strcmp(type, "models_register")) {
        rc = s_on_models_register(self, msg, &r, err);
    } else if (!strcmp(type, "hello")) {
        rc = s_on_hello(self, msg, ident, &r, err);
    } else if (!strcmp(type, "job_request")) {
        rc = s_on_job_request(self, msg, ident, &r, err);
    } else if (!strcmp(type, "result")) {
        rc = s_on_result(self, msg, ident, payload, plen, &r, err);
    } else if (!strcmp(type, "failed")) {
        rc = s_on_failed(self, msg, ident, &r, err);
    } else {
        rc = st_fail(err, ST_EFORMAT, "unknown message type '%.64s'", type);
    }
    if (rc == ST_OK) {
        json_object_set_new(r.rep, "type", json_string("ok"));
        json_object_set_new(r.rep, "rid", json_integer(rid));
        s_send(self, id, idlen, r.rep, r.payload, r.plen);
    } else {
        /* the error reply keeps the fields a handler set (submit: the job id) */
        const char *code_name = NULL;
        if (rc == ST_ENOTFOUND && (!strcmp(type, "job_request") || !strcmp(type, "result") || !strcmp(type, "failed")) &&
            !s_group(self, ident))
            code_name = "unknown_group";
        s_reply_error(self, id, idlen, rid, rc, code_name, err, r.rep);
    }
    json_decref(r.rep);
    free(r.payload);
    json_decref(msg);
}

/* Reads one whole message; frames beyond MAX_FRAMES are counted and dropped. */
static int s_recv(broker_t *self, inmsg_t *in)
{
    in->n = 0;
    in->extra = 0;
    int more = 1;
    while (more) {
        zmq_msg_t *f;
        zmq_msg_t spare;
        if (in->n < MAX_FRAMES) {
            f = &in->frames[in->n];
        } else {
            f = &spare;
        }
        zmq_msg_init(f);
        if (zmq_msg_recv(f, self->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(f);
            return -1;
        }
        more = zmq_msg_more(f);
        if (f == &spare) {
            zmq_msg_close(f);
            in->extra++;
        } else {
            in->n++;
        }
    }
    return 0;
}

int broker_run(broker_t *self, volatile sig_atomic_t *stop, char *err)
{
    s_log(self, "serving");
    while (!*stop) {
        zmq_pollitem_t item = {self->sock, 0, ZMQ_POLLIN, 0};
        int64_t now = s_now_ms();
        int wait = (int)(self->next_heartbeat_ms - now);
        if (wait > POLL_MS) wait = POLL_MS;
        if (wait < 0) wait = 0;
        int n = zmq_poll(&item, 1, wait);
        if (n < 0) {
            if (errno == EINTR) continue;
            return st_fail(err, ST_ENET, "zmq_poll: %s", zmq_strerror(errno));
        }
        /* Bounded batch so heartbeats keep their rhythm under load. */
        for (int k = 0; k < 256 && (item.revents & ZMQ_POLLIN); k++) {
            inmsg_t in;
            if (s_recv(self, &in) < 0) break;
            int64_t t0 = s_now_ms();
            s_handle(self, &in);
            for (int i = 0; i < in.n; i++) zmq_msg_close(&in.frames[i]);
            /* A slow handler (validating a large dataset) kept us from
             * hearing anyone meanwhile: that silence is ours, not the
             * groups', so it does not count towards losing them. */
            int64_t spent = s_now_ms() - t0;
            if (spent > self->heartbeat_ms)
                for (size_t g = 0; g < self->n_groups; g++) self->groups[g].last_seen_ms += spent;
        }
        now = s_now_ms();
        if (now >= self->next_heartbeat_ms) {
            s_check_groups(self, now);
            s_send_heartbeats(self);
            self->next_heartbeat_ms = now + self->heartbeat_ms;
        }
    }
    s_log(self, "stopping");
    return ST_OK;
}
