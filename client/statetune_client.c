/*
 * statetune_client.c - a DEALER peer of the coordinator (see
 * statetune_client.h and docs/protocol.md): framing with size limits, request
 * ids, timeouts, CURVE key files, and fetching a state.
 *
 * Every byte received is untrusted (a compromised coordinator must not crash
 * an inference program): frames are size-checked before they are parsed, and
 * a state payload is checked against the shape its reply claims.
 */
#include "client/statetune_client.h"
#include "common/st_time.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define STATE_TIMEOUT_MS 30000  /* states_get: a large state on a slow link */

struct statetune_client {
    void *ctx;                 /* the ZeroMQ context, owned */
    void *sock;                /* the DEALER socket, owned */
    char endpoint[256];        /* where we connected */
    int64_t next_rid;          /* request ids count up from a random start */
};

static const char *s_env(const char *name)
{
    const char *v = getenv(name);
    return (v && *v) ? v : NULL;
}

int statetune_key_read(const char *path, char z85_out[ST_CURVE_KEY_LEN + 1], char *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return st_fail(err, ST_EIO, "cannot open key file '%s': %s", path, strerror(errno));
    char buf[128];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) buf[--n] = 0;
    if (n != ST_CURVE_KEY_LEN)
        return st_fail(err, ST_EFORMAT, "key file '%s' must hold one %d-character Z85 key, found %zu characters",
                       path, ST_CURVE_KEY_LEN, n);
    uint8_t raw[32];
    if (!zmq_z85_decode(raw, buf))
        return st_fail(err, ST_EFORMAT, "key file '%s' does not hold a valid Z85 key", path);
    memcpy(z85_out, buf, ST_CURVE_KEY_LEN + 1);
    return ST_OK;
}

static int s_write_key(const char *path, const char *z85, mode_t mode, char *err)
{
    /* O_EXCL: never overwrite a key someone relies on. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0) return st_fail(err, ST_EIO, "cannot create key file '%s': %s", path, strerror(errno));
    if (fchmod(fd, mode) != 0) { /* whatever the umask said */
        close(fd);
        return st_fail(err, ST_EIO, "chmod '%s': %s", path, strerror(errno));
    }
    char line[ST_CURVE_KEY_LEN + 2];
    snprintf(line, sizeof line, "%s\n", z85);
    ssize_t w = write(fd, line, strlen(line));
    int rc = (w == (ssize_t)strlen(line) && fsync(fd) == 0) ? 0 : -1;
    close(fd);
    if (rc) return st_fail(err, ST_EIO, "write '%s': %s", path, strerror(errno));
    return ST_OK;
}

int statetune_keys_generate(const char *prefix, char *err)
{
    char pub[ST_CURVE_KEY_LEN + 1], sec[ST_CURVE_KEY_LEN + 1];
    if (zmq_curve_keypair(pub, sec) != 0)
        return st_fail(err, ST_EUNSUPPORTED, "zmq_curve_keypair: %s (is libzmq built with CURVE?)", zmq_strerror(errno));
    char path[4096];
    snprintf(path, sizeof path, "%s.key", prefix);
    int rc = s_write_key(path, sec, 0600, err);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s.pub", prefix);
    return s_write_key(path, pub, 0644, err);
}

static const struct {
    int code;
    const char *name;
} s_codes[] = {
    {ST_EIO, "io"},           {ST_EFORMAT, "format"},   {ST_ENOMEM, "no_memory"},  {ST_EINVAL, "invalid"},
    {ST_EUNSUPPORTED, "unsupported"}, {ST_ENOTFOUND, "not_found"}, {ST_ECUDA, "cuda"}, {ST_EMPI, "mpi"},
    {ST_ESQL, "sql"},         {ST_ENET, "net"},         {ST_ECANCELLED, "cancelled"}, {ST_ENUMERIC, "numeric"},
    {ST_EBUSY, "busy"},
};

const char *statetune_code_name(int code)
{
    for (size_t i = 0; i < sizeof s_codes / sizeof s_codes[0]; i++)
        if (s_codes[i].code == code) return s_codes[i].name;
    return "error";
}

int statetune_code_from_name(const char *name)
{
    if (!name) return ST_ENET;
    for (size_t i = 0; i < sizeof s_codes / sizeof s_codes[0]; i++)
        if (!strcmp(s_codes[i].name, name)) return s_codes[i].code;
    if (!strcmp(name, "too_large") || !strcmp(name, "version")) return ST_EFORMAT;
    return ST_EINVAL;
}

statetune_client_t *statetune_client_new(const char *endpoint, const statetune_client_opts_t *opts, char *err)
{
    statetune_client_opts_t none = {0};
    if (!opts) opts = &none;
    if (!endpoint) endpoint = s_env("STATETUNE_ENDPOINT");
    if (!endpoint) endpoint = ST_PROTO_DEFAULT_ENDPOINT;
    const char *pub_file = opts->curve_public ? opts->curve_public : s_env("STATETUNE_CURVE_PUBLIC");
    const char *sec_file = opts->curve_secret ? opts->curve_secret : s_env("STATETUNE_CURVE_SECRET");
    const char *srv_file = opts->server_key ? opts->server_key : s_env("STATETUNE_SERVER_KEY");

    statetune_client_t *self = calloc(1, sizeof *self);
    if (!self) {
        st_fail(err, ST_ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(self->endpoint, sizeof self->endpoint, "%s", endpoint);
    self->next_rid = (int64_t)(st_mono_ms() % 1000000) * 1000 + (getpid() % 1000);
    self->ctx = zmq_ctx_new();
    if (!self->ctx) {
        st_fail(err, ST_ENET, "zmq_ctx_new: %s", zmq_strerror(errno));
        goto fail;
    }
    self->sock = zmq_socket(self->ctx, ZMQ_DEALER);
    if (!self->sock) {
        st_fail(err, ST_ENET, "zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    /* Our own receive limit: a reply is at most one JSON frame plus one state. */
    int64_t maxmsg = 2 * (int64_t)ST_PROTO_MAX_PAYLOAD;
    zmq_setsockopt(self->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (opts->identity) zmq_setsockopt(self->sock, ZMQ_ROUTING_ID, opts->identity, strlen(opts->identity));

    if (sec_file || pub_file || srv_file) {
        char sec[ST_CURVE_KEY_LEN + 1], pub[ST_CURVE_KEY_LEN + 1], srv[ST_CURVE_KEY_LEN + 1];
        if (!sec_file) {
            st_fail(err, ST_EINVAL, "CURVE needs our secret key file (--curve-secret or STATETUNE_CURVE_SECRET)");
            goto fail;
        }
        if (!srv_file) {
            st_fail(err, ST_EINVAL, "CURVE needs the coordinator's public key file (--server-key or STATETUNE_SERVER_KEY)");
            goto fail;
        }
        if (statetune_key_read(sec_file, sec, err) || statetune_key_read(srv_file, srv, err)) goto fail;
        if (pub_file) {
            if (statetune_key_read(pub_file, pub, err)) goto fail;
        } else if (zmq_curve_public(pub, sec) != 0) {
            st_fail(err, ST_EFORMAT, "cannot derive the public key from '%s'", sec_file);
            goto fail;
        }
        if (zmq_setsockopt(self->sock, ZMQ_CURVE_SERVERKEY, srv, ST_CURVE_KEY_LEN + 1) ||
            zmq_setsockopt(self->sock, ZMQ_CURVE_PUBLICKEY, pub, ST_CURVE_KEY_LEN + 1) ||
            zmq_setsockopt(self->sock, ZMQ_CURVE_SECRETKEY, sec, ST_CURVE_KEY_LEN + 1)) {
            st_fail(err, ST_ENET, "setting CURVE keys: %s", zmq_strerror(errno));
            goto fail;
        }
    }
    if (zmq_connect(self->sock, endpoint) != 0) {
        st_fail(err, ST_ENET, "cannot connect to '%s': %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    return self;
fail:
    statetune_client_destroy(&self);
    return NULL;
}

void statetune_client_destroy(statetune_client_t **self_p)
{
    if (!self_p || !*self_p) return;
    statetune_client_t *self = *self_p;
    /* Every request is confirmed by its reply, so nothing unsent is worth
     * waiting for: a client of an unreachable coordinator exits at once. */
    int zero = 0;
    if (self->sock) zmq_setsockopt(self->sock, ZMQ_LINGER, &zero, sizeof zero);
    if (self->sock) zmq_close(self->sock);
    if (self->ctx) zmq_ctx_term(self->ctx);
    free(self);
    *self_p = NULL;
}

const char *statetune_client_endpoint(const statetune_client_t *self)
{
    return self->endpoint;
}

void *statetune_client_socket(statetune_client_t *self)
{
    return self->sock;
}

int statetune_client_send(statetune_client_t *self, json_t *msg, const void *payload, size_t payload_len, char *err)
{
    json_object_set_new(msg, "v", json_integer(ST_PROTO_VERSION));
    char *text = json_dumps(msg, JSON_COMPACT);
    if (!text) return st_fail(err, ST_ENOMEM, "cannot encode a message");
    size_t n = strlen(text);
    /* Never block: while the coordinator is away messages queue up to the
     * high-water mark, and a caller that must notice the outage (a worker's
     * link thread) cannot wait on a full queue. */
    int rc = zmq_send(self->sock, text, n, (payload ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
    free(text);
    if (rc < 0 && errno == EAGAIN)
        return st_fail(err, ST_EBUSY, "the queue to '%s' is full (the coordinator is not reading)", self->endpoint);
    if (rc < 0) return st_fail(err, ST_ENET, "send to '%s': %s", self->endpoint, zmq_strerror(errno));
    /* the first frame is queued, so the rest goes in the same message */
    if (payload && zmq_send(self->sock, payload, payload_len, 0) < 0)
        return st_fail(err, ST_ENET, "send to '%s': %s", self->endpoint, zmq_strerror(errno));
    return ST_OK;
}

/* Reads the remaining frames of a message after the first, so that a
 * malformed multi-frame message never leaves parts behind. */
static void s_drain(void *sock)
{
    int more = 0;
    size_t sz = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        zmq_msg_recv(&m, sock, 0);
        zmq_msg_close(&m);
        sz = sizeof more;
    }
}

int statetune_client_recv(statetune_client_t *self, int timeout_ms, json_t **msg, void **payload_out,
                          size_t *payload_len_out, char *err)
{
    *msg = NULL;
    if (payload_out) *payload_out = NULL;
    if (payload_len_out) *payload_len_out = 0;
    zmq_pollitem_t item = {self->sock, 0, ZMQ_POLLIN, 0};
    int n = zmq_poll(&item, 1, timeout_ms);
    if (n < 0) return st_fail(err, ST_ENET, "zmq_poll: %s", zmq_strerror(errno));
    if (n == 0) return st_fail(err, ST_EBUSY, "nothing received within %d ms", timeout_ms);

    zmq_msg_t frame;
    zmq_msg_init(&frame);
    if (zmq_msg_recv(&frame, self->sock, 0) < 0) {
        zmq_msg_close(&frame);
        return st_fail(err, ST_ENET, "receive: %s", zmq_strerror(errno));
    }
    size_t len = zmq_msg_size(&frame);
    /* Replies may be long (a job list, a long job's events): the limit on
     * what the coordinator accepts (1 MiB) does not apply to what it sends,
     * only libzmq's cap on the whole message does. */
    if (len > ST_PROTO_MAX_PAYLOAD) {
        zmq_msg_close(&frame);
        s_drain(self->sock);
        return st_fail(err, ST_EFORMAT, "a message of %zu bytes exceeds the %u-byte limit", len, ST_PROTO_MAX_PAYLOAD);
    }
    json_error_t jerr;
    json_t *doc = json_loadb(zmq_msg_data(&frame), len, 0, &jerr);
    zmq_msg_close(&frame);
    int more = 0;
    size_t sz = sizeof more;
    zmq_getsockopt(self->sock, ZMQ_RCVMORE, &more, &sz);
    void *payload = NULL;
    size_t plen = 0;
    if (more) {
        zmq_msg_t pf;
        zmq_msg_init(&pf);
        if (zmq_msg_recv(&pf, self->sock, 0) >= 0) {
            plen = zmq_msg_size(&pf);
            payload = malloc(plen ? plen : 1);
            if (payload) memcpy(payload, zmq_msg_data(&pf), plen);
        }
        zmq_msg_close(&pf);
        s_drain(self->sock);
        if (!payload) {
            json_decref(doc);
            return st_fail(err, ST_ENOMEM, "out of memory receiving %zu bytes", plen);
        }
    }
    if (!doc || !json_is_object(doc)) {
        json_decref(doc);
        free(payload);
        return st_fail(err, ST_EFORMAT, "received a message that is not a JSON object");
    }
    *msg = doc;
    if (payload_out)
        *payload_out = payload;
    else
        free(payload);
    if (payload_len_out) *payload_len_out = plen;
    return ST_OK;
}

int statetune_client_request(statetune_client_t *self, json_t *req, const void *payload, size_t payload_len,
                             int timeout_ms, json_t **reply, void **payload_out, size_t *payload_len_out, char *err)
{
    *reply = NULL;
    if (payload_out) *payload_out = NULL;
    if (payload_len_out) *payload_len_out = 0;
    int64_t rid = ++self->next_rid;
    json_object_set_new(req, "rid", json_integer(rid));
    int rc = statetune_client_send(self, req, payload, payload_len, err);
    if (rc) return rc;
    int64_t deadline = st_mono_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - st_mono_ms();
        if (left <= 0)
            return st_fail(err, ST_ENET,
                           "the coordinator at '%s' did not answer within %d s (is it running, and with CURVE on, "
                           "is this client's key allowed?)",
                           self->endpoint, (timeout_ms + 999) / 1000);
        json_t *msg = NULL;
        void *pl = NULL;
        size_t pn = 0;
        rc = statetune_client_recv(self, (int)left, &msg, &pl, &pn, err);
        if (rc == ST_EBUSY) continue;
        if (rc == ST_EFORMAT) continue; /* a bad message is not our reply */
        if (rc) return rc;
        json_t *jr = json_object_get(msg, "rid");
        if (!json_is_integer(jr) || json_integer_value(jr) != rid) { /* stale or a notification */
            json_decref(msg);
            free(pl);
            continue;
        }
        const char *type = json_string_value(json_object_get(msg, "type"));
        if (type && !strcmp(type, "ok")) {
            *reply = msg;
            if (payload_out)
                *payload_out = pl;
            else
                free(pl);
            if (payload_len_out) *payload_len_out = pn;
            return ST_OK;
        }
        const char *text = json_string_value(json_object_get(msg, "error"));
        int code = statetune_code_from_name(json_string_value(json_object_get(msg, "code")));
        st_fail(err, code, "%s", text ? text : "the coordinator answered with an error it did not explain");
        json_decref(msg);
        free(pl);
        return code;
    }
}

void statetune_state_free(statetune_state_t *st)
{
    if (!st) return;
    free(st->data);
    memset(st, 0, sizeof *st);
}

int statetune_client_get_state(statetune_client_t *self, const char *ref, statetune_state_t *out, char *err)
{
    memset(out, 0, sizeof *out);
    json_t *req = json_pack("{s:s, s:s, s:b}", "type", "states_get", "ref", ref, "kstate", 1);
    json_t *rep = NULL;
    void *pl = NULL;
    size_t pn = 0;
    int rc = statetune_client_request(self, req, NULL, 0, STATE_TIMEOUT_MS, &rep, &pl, &pn, err);
    json_decref(req);
    if (rc) return rc;
    json_int_t L = json_integer_value(json_object_get(rep, "layers"));
    json_int_t H = json_integer_value(json_object_get(rep, "heads"));
    json_int_t N = json_integer_value(json_object_get(rep, "head_size"));
    const char *name = json_string_value(json_object_get(rep, "name"));
    const char *sha = json_string_value(json_object_get(rep, "sha256"));
    if (L <= 0 || H <= 0 || N <= 0 || L > 4096 || H > 4096 || N > 1024 || !name) {
        rc = st_fail(err, ST_EFORMAT, "the coordinator's reply for '%s' has no valid shape", ref);
        goto done;
    }
    size_t nf = (size_t)L * (size_t)H * (size_t)N * (size_t)N;
    /* a kernel-expanded part rides after S0: U0 and the support vectors */
    json_int_t M = json_integer_value(json_object_get(rep, "kernel_features"));
    json_int_t nk = json_integer_value(json_object_get(rep, "kstate_floats"));
    double gamma = json_number_value(json_object_get(rep, "kernel_gamma"));
    if (M < 0 || M > 1024 || (nk != 0 && (nk != 2 * (json_int_t)((size_t)L * H * N) * M || !(gamma > 0)))) {
        rc = st_fail(err, ST_EFORMAT, "the coordinator's reply for '%s' has an invalid kernel-expanded part", ref);
        goto done;
    }
    if (!pl || pn != (nf + (size_t)nk) * sizeof(float)) {
        rc = st_fail(err, ST_EFORMAT, "state '%s': expected %zu bytes for [%d, %d, %d, %d]%s, received %zu", ref,
                     (nf + (size_t)nk) * sizeof(float), (int)L, (int)H, (int)N, (int)N,
                     nk ? " and its kernel-expanded part" : "", pn);
        goto done;
    }
    out->kernel_features = (int)M;
    if (nk) {
        out->kernel_gamma = (float)gamma;
        out->kstate = (const float *)pl + nf;
    }
    snprintf(out->name, sizeof out->name, "%s", name);
    if (sha) snprintf(out->sha256, sizeof out->sha256, "%s", sha);
    out->version = (int)json_integer_value(json_object_get(rep, "version"));
    out->layers = (int)L;
    out->heads = (int)H;
    out->head_size = (int)N;
    out->n_floats = nf;
    out->data = pl; /* little-endian fp32 is our only target's layout */
    pl = NULL;
done:
    free(pl);
    json_decref(rep);
    return rc;
}
