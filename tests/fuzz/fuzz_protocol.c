/*
 * fuzz_protocol.c - libFuzzer entry for the coordinator's message handling
 * (coordinator/broker.c: framing, size limits, JSON decoding and every
 * handler down to the scheduler and the registry). SPEC section 6/9: no
 * input a peer sends may crash the coordinator, and every request gets
 * exactly one reply.
 *
 * The decoder is not a separable function (s_recv and s_handle are static),
 * so this file includes broker.c itself, the way llm.c's tests include the
 * training program: the code under test is the real one, not a copy. Each
 * input is a whole conversation, run against a fresh coordinator (a new
 * registry in a temporary folder, a ROUTER bound on inproc and three DEALER
 * peers), so that any crash reproduces from its input alone.
 *
 * Input format: records separated by the two bytes FF FF. A record's first
 * byte says who sends it and how:
 *   bits 0-1  sender: 0 = DEALER "fuzz-g1", 1 = DEALER "fuzz-g2",
 *             2 = DEALER with a random binary routing id,
 *             3 = a routing id with no connection behind it (the reply
 *                 cannot be delivered: ROUTER_MANDATORY's error path)
 *   bit 2     the rest is split at the first FE FE: JSON frame, payload frame
 *   bit 3     two more empty frames follow (too many frames)
 *   bit 4     before this record, let 10 heartbeat intervals pass (groups
 *             are lost, their jobs requeued) and send heartbeats
 *   bit 5     send the JSON frame empty, the record going to the payload
 *   bit 6     pad the JSON frame with spaces to one byte over the 1 MiB
 *             limit: the sender must get exactly one "too_large" error
 * The rest of the record is the JSON frame.
 *
 * Oracle besides the sanitizers: a well-formed request (a JSON object with
 * v 1, a string type that is not a notification, a nonzero integer rid, at
 * most two frames) from a connected peer gets exactly one reply, and it
 * carries the request's rid. Every reply is a JSON object with type "ok" or
 * "error". A violation aborts (a finding).
 *
 * The submit handler validates job inputs: at start-up the harness copies a
 * small model (STATETUNE_FUZZ_MODEL; run_all.sh makes a one-layer, one-head
 * random one, whose [1, 1, 64, 64] state the seeds' results carry) and
 * writes a dataset under /tmp/statetune-fuzz-proto/, which the seeds' job
 * specs name, so that submit, job_request, progress and result reach the
 * registry.
 * Built and run by tests/fuzz/run_all.sh.
 */
#include "coordinator/broker.c"

#include <ftw.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_DIR "/tmp/statetune-fuzz-proto"
#define N_PEERS 3
#define MAX_RECORDS 64

static const char *const s_peer_ids[N_PEERS] = {"fuzz-g1", "fuzz-g2", NULL};

static int s_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void s_rm_rf(const char *path)
{
    nftw(path, s_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Copies the model named by STATETUNE_FUZZ_MODEL and writes a dataset, once. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    mkdir(FUZZ_DIR, 0700);
    FILE *f = fopen(FUZZ_DIR "/train.jsonl", "w");
    if (f) {
        for (int i = 0; i < 8; i++) fprintf(f, "{\"text\": \"def f%d(x):\\n\\treturn x + %d\\n\"}\n", i, i);
        fclose(f);
    }
    const char *model = getenv("STATETUNE_FUZZ_MODEL");
    if (model) {
        FILE *in = fopen(model, "rb"), *out = fopen(FUZZ_DIR "/model.pth", "wb");
        char buf[65536];
        size_t n;
        while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
        if (in) fclose(in);
        if (out) fclose(out);
    }
    return 0;
}

/* Where each record of the input starts and ends. */
typedef struct {
    const uint8_t *p;
    size_t n;
} span_t;

static size_t s_split(const uint8_t *data, size_t size, span_t *out, size_t max)
{
    size_t k = 0, start = 0;
    for (size_t i = 0; i + 1 < size && k + 1 < max; i++) {
        if (data[i] == 0xff && data[i + 1] == 0xff) {
            out[k++] = (span_t){data + start, i - start};
            start = i + 2;
            i++;
        }
    }
    out[k++] = (span_t){data + start, size - start};
    return k;
}

/* Whether the protocol promises exactly one reply with this rid. */
static int s_expects_reply(const void *json, size_t n, int n_frames, int64_t *rid)
{
    if (n_frames > 2 || n > ST_PROTO_MAX_JSON) return 0;
    json_error_t jerr;
    json_t *m = json_loadb(json, n, JSON_REJECT_DUPLICATES, &jerr);
    int yes = 0;
    if (json_is_object(m)) {
        json_t *v = json_object_get(m, "v"), *r = json_object_get(m, "rid");
        const char *type = json_string_value(json_object_get(m, "type"));
        yes = json_is_integer(v) && json_integer_value(v) == ST_PROTO_VERSION && type && json_is_integer(r) &&
              json_integer_value(r) != 0 && strcmp(type, "heartbeat") && strcmp(type, "progress") &&
              strcmp(type, "eval") && strcmp(type, "checkpoint");
        if (yes) *rid = json_integer_value(r);
    }
    json_decref(m);
    return yes;
}

/* Reads every reply waiting on a peer; checks each is a well-formed reply.
 * Returns how many carried rid; *too_large (if not NULL) counts the errors
 * with code "too_large". */
static int s_drain(void *peer, int64_t rid, int *too_large)
{
    int hits = 0;
    for (;;) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, peer, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f);
            return hits;
        }
        int more = zmq_msg_more(&f);
        json_error_t jerr;
        json_t *m = json_loadb(zmq_msg_data(&f), zmq_msg_size(&f), 0, &jerr);
        const char *type = json_string_value(json_object_get(m, "type"));
        if (getenv("STATETUNE_FUZZ_VERBOSE"))
            fprintf(stderr, "reply: %.*s\n", (int)zmq_msg_size(&f), (const char *)zmq_msg_data(&f));
        if (!json_is_object(m) || !type) {
            fprintf(stderr, "fuzz_protocol: a reply is not a JSON object with a type: %.*s\n",
                    (int)zmq_msg_size(&f), (const char *)zmq_msg_data(&f));
            abort();
        }
        /* the coordinator's own notifications to groups */
        int note = !strcmp(type, "heartbeat") || !strcmp(type, "cancel");
        if (!note && strcmp(type, "ok") && strcmp(type, "error")) {
            fprintf(stderr, "fuzz_protocol: a reply has type '%s'\n", type);
            abort();
        }
        if (!note && rid && json_integer_value(json_object_get(m, "rid")) == rid) hits++;
        const char *code = json_string_value(json_object_get(m, "code"));
        if (too_large && code && !strcmp(code, "too_large")) (*too_large)++;
        json_decref(m);
        zmq_msg_close(&f);
        while (more) { /* the payload frame of a states_get reply */
            zmq_msg_init(&f);
            if (zmq_msg_recv(&f, peer, 0) < 0) {
                zmq_msg_close(&f);
                return hits;
            }
            more = zmq_msg_more(&f);
            zmq_msg_close(&f);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned long s_iter = 0; /* unique inproc names: a closed endpoint may linger */
    char err[ST_ERR_LEN];
    char dir[128], db[160], jobs[160], ep[64];
    /* the registry on tmpfs when there is one: fsyncs on disk would make
     * each input cost tens of milliseconds */
    struct stat st;
    snprintf(dir, sizeof dir, "%s/statetune-fuzz-proto-%d", stat("/dev/shm", &st) == 0 ? "/dev/shm" : "/tmp",
             (int)getpid());
    snprintf(db, sizeof db, "%s/registry.db", dir);
    snprintf(jobs, sizeof jobs, "%s/jobs", dir);
    snprintf(ep, sizeof ep, "inproc://fuzz-%lu", s_iter++);
    s_rm_rf(dir);
    mkdir(dir, 0700);

    /* one context for the whole run: a context starts I/O threads, which
     * would cost more than the input itself */
    static void *ctx = NULL;
    if (!ctx) ctx = zmq_ctx_new();
    FILE *log = fopen("/dev/null", "w");
    registry_t *reg = registry_open(db, 0, err);
    sched_t *sched = reg ? sched_new(reg, jobs, err) : NULL;
    broker_opts_t opts = {.bind = ep, .curve_secret = NULL, .heartbeat_ms = 50, .log = log};
    broker_t *b = sched ? broker_new(ctx, reg, sched, &opts, err) : NULL;
    if (!b) {
        fprintf(stderr, "fuzz_protocol: cannot start a coordinator: %s\n", err);
        abort();
    }
    void *peers[N_PEERS];
    int zero = 0;
    for (int i = 0; i < N_PEERS; i++) {
        peers[i] = zmq_socket(ctx, ZMQ_DEALER);
        zmq_setsockopt(peers[i], ZMQ_LINGER, &zero, sizeof zero);
        if (s_peer_ids[i]) zmq_setsockopt(peers[i], ZMQ_ROUTING_ID, s_peer_ids[i], strlen(s_peer_ids[i]));
        zmq_connect(peers[i], ep);
    }

    span_t rec[MAX_RECORDS];
    size_t n_rec = s_split(data, size, rec, MAX_RECORDS);
    for (size_t k = 0; k < n_rec; k++) {
        if (rec[k].n == 0) continue;
        uint8_t ctl = rec[k].p[0];
        const uint8_t *body = rec[k].p + 1;
        size_t blen = rec[k].n - 1;
        const uint8_t *json = body, *payload = NULL;
        size_t jlen = blen, plen = 0;
        if (ctl & 4) {
            for (size_t i = 0; i + 1 < blen; i++)
                if (body[i] == 0xfe && body[i + 1] == 0xfe) {
                    jlen = i;
                    payload = body + i + 2;
                    plen = blen - i - 2;
                    break;
                }
            if (!payload) payload = body + blen; /* an empty payload frame */
        }
        if (ctl & 32) {
            payload = json;
            plen = jlen;
            jlen = 0;
        }
        int n_frames = 1 + (payload != NULL) + ((ctl & 8) ? 2 : 0);
        uint8_t *big = NULL;
        if ((ctl & 64) && (big = malloc(ST_PROTO_MAX_JSON + 1))) {
            size_t keep = jlen < ST_PROTO_MAX_JSON ? jlen : ST_PROTO_MAX_JSON;
            memcpy(big, json, keep);
            memset(big + keep, ' ', ST_PROTO_MAX_JSON + 1 - keep);
            json = big;
            jlen = ST_PROTO_MAX_JSON + 1;
        }
        if (ctl & 16) {
            int64_t later = s_now_ms() + 10 * (int64_t)b->heartbeat_ms;
            s_check_groups(b, later);
            s_send_heartbeats(b);
        }
        int who = ctl & 3;
        int64_t rid = 0;
        int expect = s_expects_reply(json, jlen, n_frames, &rid);
        inmsg_t in;
        if (who == 3) {
            /* a peer that is gone: build the message the ROUTER would read */
            zmq_msg_init_size(&in.frames[0], 5);
            memcpy(zmq_msg_data(&in.frames[0]), "ghost", 5);
            zmq_msg_init_size(&in.frames[1], jlen);
            if (jlen) memcpy(zmq_msg_data(&in.frames[1]), json, jlen);
            in.n = 2;
            in.extra = (ctl & 8) ? 2 : 0;
            if (payload) {
                zmq_msg_init_size(&in.frames[2], plen);
                if (plen) memcpy(zmq_msg_data(&in.frames[2]), payload, plen);
                in.n = 3;
            }
            s_handle(b, &in);
            for (int i = 0; i < in.n; i++) zmq_msg_close(&in.frames[i]);
            free(big);
            continue;
        }
        void *peer = peers[who];
        int more_after_json = payload || (ctl & 8);
        zmq_send(peer, json, jlen, more_after_json ? ZMQ_SNDMORE : 0);
        if (payload) zmq_send(peer, payload, plen, (ctl & 8) ? ZMQ_SNDMORE : 0);
        if (ctl & 8) {
            zmq_send(peer, "", 0, ZMQ_SNDMORE);
            zmq_send(peer, "", 0, 0);
        }
        /* the real read path: wait until the ROUTER has the whole message */
        int got = -1;
        for (int tries = 0; tries < 2000 && got < 0; tries++) {
            got = s_recv(b, &in);
            if (got < 0) {
                zmq_pollitem_t item = {b->sock, 0, ZMQ_POLLIN, 0};
                zmq_poll(&item, 1, 5);
            }
        }
        if (got < 0) {
            fprintf(stderr, "fuzz_protocol: the coordinator never received a message\n");
            abort();
        }
        s_handle(b, &in);
        for (int i = 0; i < in.n; i++) zmq_msg_close(&in.frames[i]);
        int hits = 0, too_large = 0;
        for (int i = 0; i < N_PEERS; i++)
            hits += s_drain(peers[i], peers[i] == peer ? rid : 0, peers[i] == peer ? &too_large : NULL);
        if (expect && hits != 1) {
            fprintf(stderr, "fuzz_protocol: request with rid %lld got %d replies (want exactly one): %.*s\n",
                    (long long)rid, hits, (int)(jlen < 400 ? jlen : 400), (const char *)json);
            abort();
        }
        if (big && !(ctl & 8) && too_large != 1) {
            fprintf(stderr, "fuzz_protocol: an oversized JSON frame got %d too_large errors (want one)\n", too_large);
            abort();
        }
        free(big);
    }
    s_send_heartbeats(b);
    for (int i = 0; i < N_PEERS; i++) {
        s_drain(peers[i], 0, NULL);
        zmq_close(peers[i]);
    }
    broker_destroy(&b);
    sched_destroy(&sched);
    registry_close(&reg);
    fclose(log);
    s_rm_rf(dir);
    return 0;
}
