/*
 * fuzz_protocol_client.c - libFuzzer entry for the other side of the wire:
 * what the client library (client/statetune_client.c, linked by the
 * `statetune` command, worker groups and inference programs) makes of the
 * coordinator's replies. An inference program fetching a state must never
 * crash on a reply, whatever a wrong, old or hostile coordinator sends: a
 * bad reply is an error sentence. SPEC sections 6 and 9.
 *
 * Each input is a sequence of replies (records separated by FF FF; a
 * record's first byte: bit 0 = the rest is split at the first FE FE into a
 * JSON frame and a payload frame, bit 1 = two more empty frames follow).
 * The client runs statetune_client_get_state against a ROUTER on an abstract
 * ipc socket; a thread plays the coordinator: it reads the request, then
 * sends the input's replies, with every `"rid":1` turned into the request's
 * real rid (the client picks it), and finally an error reply with that rid,
 * so that the request always ends. When get_state returns a state, its shape and size must agree and all its floats are
 * read. Then the client's receive path reads whatever is left.
 * Seeds: tests/fuzz/seeds/protocol_client/ (make_protocol_seeds.py).
 * Built and run by tests/fuzz/run_all.sh.
 */
#include "client/statetune_client.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_RECORDS 32

/* Sends one frame to the client, waiting (up to a second) until the
 * client's connection is up: before that, ROUTER_MANDATORY refuses. */
static int s_send(void *router, const void *p, size_t n, int flags)
{
    for (int tries = 0; tries < 1000; tries++) {
        if (zmq_send(router, p, n, flags | ZMQ_DONTWAIT) >= 0) return 0;
        zmq_pollitem_t item = {router, 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, 1);
    }
    return -1;
}

static void s_send_reply(void *router, const uint8_t *json, size_t jlen, const uint8_t *payload, size_t plen,
                         int extra)
{
    if (s_send(router, "fc", 2, ZMQ_SNDMORE)) return;
    int more = payload || extra;
    s_send(router, json, jlen, more ? ZMQ_SNDMORE : 0);
    if (payload) s_send(router, payload, plen, extra ? ZMQ_SNDMORE : 0);
    if (extra) {
        s_send(router, "", 0, ZMQ_SNDMORE);
        s_send(router, "", 0, 0);
    }
}

/* Writes rec into out with every `"rid":1` (not followed by a digit)
 * replaced by the request's real rid; returns the new length. */
static size_t s_subst_rid(const uint8_t *rec, size_t n, uint8_t *out, const char *rid)
{
    static const char tok[] = "\"rid\":1";
    size_t tl = sizeof tok - 1, rl = strlen(rid), o = 0;
    for (size_t i = 0; i < n;) {
        if (i + tl <= n && !memcmp(rec + i, tok, tl) && (i + tl == n || rec[i + tl] < '0' || rec[i + tl] > '9')) {
            memcpy(out + o, "\"rid\":", 6);
            memcpy(out + o + 6, rid, rl);
            o += 6 + rl;
            i += tl;
        } else {
            out[o++] = rec[i++];
        }
    }
    return o;
}

typedef struct {
    void *router;
    const uint8_t *data;
    size_t size;
} server_t;

/* The coordinator's side: reads the client's request, then sends the input's
 * replies (with its rid put in) and the closing error reply. */
static void *s_server(void *arg)
{
    server_t *sv = arg;
    zmq_pollitem_t item = {sv->router, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, 5000) <= 0) return NULL;
    char buf[4096];
    char rid[32] = "0";
    int more = 1, nf = 0;
    while (more) {
        int n = zmq_recv(sv->router, buf, sizeof buf - 1, 0);
        if (n < 0) return NULL;
        if (nf++ == 1) {
            buf[n < (int)sizeof buf - 1 ? n : (int)sizeof buf - 1] = 0;
            json_error_t jerr;
            json_t *req = json_loads(buf, 0, &jerr);
            snprintf(rid, sizeof rid, "%lld", (long long)json_integer_value(json_object_get(req, "rid")));
            json_decref(req);
        }
        size_t sz = sizeof more;
        zmq_getsockopt(sv->router, ZMQ_RCVMORE, &more, &sz);
    }
    uint8_t *tmp = malloc(sv->size * 4 + 256); /* a token of 7 bytes becomes at most 26 */
    if (!tmp) return NULL;
    size_t start = 0, k = 0;
    for (size_t i = 0; i <= sv->size && k < MAX_RECORDS; i++) {
        int end = i == sv->size || (i + 1 < sv->size && sv->data[i] == 0xff && sv->data[i + 1] == 0xff);
        if (!end) continue;
        const uint8_t *rec = sv->data + start;
        size_t n = i - start;
        start = i + 2;
        i++;
        k++;
        if (n == 0) continue;
        uint8_t ctl = rec[0];
        const uint8_t *json = rec + 1, *payload = NULL;
        size_t jlen = n - 1, plen = 0;
        if (ctl & 1) {
            payload = json + jlen;
            for (size_t j = 0; j + 1 < n - 1; j++)
                if (json[j] == 0xfe && json[j + 1] == 0xfe) {
                    payload = json + j + 2;
                    plen = jlen - j - 2;
                    jlen = j;
                    break;
                }
        }
        size_t tl = s_subst_rid(json, jlen, tmp, rid);
        s_send_reply(sv->router, tmp, tl, payload, plen, ctl & 2);
    }
    int m = snprintf((char *)tmp, 256, "{\"v\":1,\"type\":\"error\",\"rid\":%s,\"code\":\"format\",\"error\":\"end\"}", rid);
    s_send_reply(sv->router, tmp, (size_t)m, NULL, 0, 0);
    free(tmp);
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static void *ctx = NULL;
    static unsigned long iter = 0;
    if (!ctx) {
        unsetenv("STATETUNE_CURVE_SECRET"); /* plain mode: no keys */
        unsetenv("STATETUNE_CURVE_PUBLIC");
        unsetenv("STATETUNE_SERVER_KEY");
        ctx = zmq_ctx_new();
    }
    char ep[64], err[ST_ERR_LEN];
    /* the library makes its own ZeroMQ context, so not inproc: a Linux
     * abstract ipc socket (no file to clean up) */
    snprintf(ep, sizeof ep, "ipc://@statetune-fc-%d-%lu", (int)getpid(), iter++);
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    int one = 1, zero = 0;
    zmq_setsockopt(router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(router, ep) != 0) abort();
    statetune_client_opts_t opts = {.identity = "fc"};
    statetune_client_t *c = statetune_client_new(ep, &opts, err);
    if (!c) abort();
    server_t sv = {router, data, size};
    pthread_t th;
    if (pthread_create(&th, NULL, s_server, &sv) != 0) abort();

    statetune_state_t st;
    if (statetune_client_get_state(c, "fuzz@1", &st, err) == ST_OK) {
        if (st.n_floats != (size_t)st.layers * st.heads * st.head_size * st.head_size) abort();
        volatile float sink = 0;
        for (size_t i = 0; i < st.n_floats; i++) sink += st.data[i];
        (void)sink;
        statetune_state_free(&st);
    }
    pthread_join(th, NULL);
    /* whatever is left goes through the plain receive path */
    for (int i = 0; i < MAX_RECORDS + 2; i++) {
        json_t *msg = NULL;
        void *pl = NULL;
        size_t pn = 0;
        int rc = statetune_client_recv(c, 0, &msg, &pl, &pn, err);
        json_decref(msg);
        free(pl);
        if (rc == ST_EBUSY) break;
    }
    statetune_client_destroy(&c);
    zmq_close(router);
    return 0;
}
