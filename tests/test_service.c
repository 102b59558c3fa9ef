/*
 * test_service.c - the coordinator's wire protocol against a real
 * statetune-coordinator process (docs/protocol.md, SPEC sections 6 and 9):
 * every malformed or oversized message gets an error reply and the
 * coordinator keeps serving; requests are answered exactly once; many
 * clients at once are all served; jobs that fail validation are refused with
 * the key's name and recorded; CURVE lets in only allowed keys and logs the
 * refusals.
 *
 * The scheduler (coordinator/sched.c) is also driven in-process: priority
 * and FIFO order, matching by gpus and backend, every transition of the job
 * state machine and recovery after a restart.
 *
 * The multi-process scenarios with worker groups (submit to registered
 * state, priorities, cancel, SIGKILL of a group or of the coordinator) are in
 * tests/test_service.sh.
 */
#include "client/statetune_client.h"
#include "coordinator/sched.h"
#include "harness.h"
#include "store/registry.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

extern char **environ;

typedef struct {
    pid_t pid;
    char dir[256];
    char endpoint[300];
    char log[300];
} coord_t;

static const char *s_build_dir(void)
{
    const char *b = getenv("STATETUNE_BUILD_DIR");
    return b && *b ? b : ".";
}

/* The extra arguments of a coordinator without CURVE. */
static const char *const s_insecure[] = {"--insecure", NULL};

/* Starts a coordinator in a fresh folder; extra are more arguments. Returns
 * 0 when it answers a ping within 10 s. */
static int s_coord_start(coord_t *c, const char *const *extra)
{
    snprintf(c->dir, sizeof c->dir, "%s", st_test_tmpdir());
    snprintf(c->endpoint, sizeof c->endpoint, "ipc://%s/c.sock", c->dir);
    snprintf(c->log, sizeof c->log, "%s/coordinator.log", c->dir);
    char exe[512], db[300];
    snprintf(exe, sizeof exe, "%s/coordinator/statetune-coordinator", s_build_dir());
    snprintf(db, sizeof db, "%s/registry.db", c->dir);
    const char *argv[16] = {exe, "--bind", c->endpoint, "--db", db, "--heartbeat-ms", "200"};
    int n = 7;
    for (int i = 0; extra && extra[i] && n < 15; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, c->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = posix_spawn(&c->pid, exe, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc) {
        fprintf(stderr, "cannot start %s: %s\n", exe, strerror(rc));
        return 1;
    }
    /* the socket file appears once it is bound */
    char sock[300];
    snprintf(sock, sizeof sock, "%s/c.sock", c->dir);
    for (int i = 0; i < 100; i++) {
        struct stat st;
        if (stat(sock, &st) == 0) return 0;
        usleep(100000);
    }
    fprintf(stderr, "the coordinator did not bind %s within 10 s\n", c->endpoint);
    return 1;
}

static void s_coord_stop(coord_t *c)
{
    if (c->pid > 0) {
        kill(c->pid, SIGTERM);
        waitpid(c->pid, NULL, 0);
        c->pid = 0;
    }
}

/* Whether the coordinator is still alive. */
static int s_coord_alive(coord_t *c)
{
    return c->pid > 0 && waitpid(c->pid, NULL, WNOHANG) == 0;
}

static int s_log_contains(coord_t *c, const char *needle)
{
    char *text = NULL;
    FILE *f = fopen(c->log, "rb");
    if (!f) return 0;
    text = calloc(1, 1 << 20);
    size_t n = fread(text, 1, (1 << 20) - 1, f);
    fclose(f);
    text[n] = 0;
    int found = strstr(text, needle) != NULL;
    free(text);
    return found;
}

/* A raw DEALER for sending what a well-behaved client never would. */
typedef struct {
    void *ctx, *sock;
} raw_t;

static int s_raw_open(raw_t *r, const char *endpoint)
{
    r->ctx = zmq_ctx_new();
    r->sock = zmq_socket(r->ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(r->sock, ZMQ_LINGER, &zero, sizeof zero);
    return zmq_connect(r->sock, endpoint);
}

static void s_raw_close(raw_t *r)
{
    zmq_close(r->sock);
    zmq_ctx_term(r->ctx);
}

/* Receives one reply (first frame as JSON) within 5 s; NULL on timeout. */
static json_t *s_raw_reply(raw_t *r)
{
    zmq_pollitem_t it = {r->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 5000) <= 0) return NULL;
    zmq_msg_t m;
    zmq_msg_init(&m);
    zmq_msg_recv(&m, r->sock, 0);
    json_error_t jerr;
    json_t *doc = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, &jerr);
    int more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    while (more) {
        zmq_msg_init(&m);
        zmq_msg_recv(&m, r->sock, 0);
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    return doc;
}

static int s_is_error(json_t *rep, const char *code)
{
    const char *type = json_string_value(json_object_get(rep, "type"));
    const char *c = json_string_value(json_object_get(rep, "code"));
    const char *e = json_string_value(json_object_get(rep, "error"));
    if (rep) printf("   reply: %s / %s: %s\n", type ? type : "?", c ? c : "-", e ? e : "-");
    return type && !strcmp(type, "error") && (!code || (c && !strcmp(c, code))) && e && strlen(e) > 10;
}

/* Sends text as one frame and returns 1 when the reply is an error with code
 * (any code when NULL); the reply goes to *out when out is not NULL (the
 * caller frees it), else it is freed here. */
static int s_refused(raw_t *r, const char *text, const char *code, json_t **out)
{
    zmq_send(r->sock, text, strlen(text), 0);
    json_t *rep = s_raw_reply(r);
    int ok = s_is_error(rep, code);
    if (out) *out = rep;
    else json_decref(rep);
    return ok;
}

static int s_ping(const char *endpoint, const statetune_client_opts_t *opts, int timeout_ms, char *err)
{
    statetune_client_t *c = statetune_client_new(endpoint, opts, err);
    if (!c) return ST_ENET;
    json_t *req = json_pack("{s:s}", "type", "ping"), *rep = NULL;
    int rc = statetune_client_request(c, req, NULL, 0, timeout_ms, &rep, NULL, NULL, err);
    json_decref(req);
    json_decref(rep);
    statetune_client_destroy(&c);
    return rc;
}

/* ---- tests --------------------------------------------------------------- */

static int test_malformed_messages(void)
{
    coord_t c = {0};
    CHECK(s_coord_start(&c, s_insecure) == 0);
    raw_t r;
    CHECK(s_raw_open(&r, c.endpoint) == 0);
    json_t *rep;

    /* not JSON at all */
    CHECK(s_refused(&r, "\x01\x02{garbage", "format", NULL));
    /* JSON, but not an object */
    CHECK(s_refused(&r, "[1,2,3]", "format", NULL));
    /* an object without the protocol version */
    CHECK(s_refused(&r, "{\"type\":\"ping\",\"rid\":5}", "version", &rep));
    CHECK(json_integer_value(json_object_get(rep, "rid")) == 5); /* the reply names the request */
    json_decref(rep);
    /* unknown type, and a request without rid */
    CHECK(s_refused(&r, "{\"v\":1,\"type\":\"rm -rf\",\"rid\":6}", "format", NULL));
    CHECK(s_refused(&r, "{\"v\":1,\"type\":\"jobs\"}", "format", NULL));
    /* wrong field types */
    CHECK(s_refused(&r, "{\"v\":1,\"type\":\"status\",\"rid\":7,\"job\":\"seven\"}", "format", NULL));
    CHECK(s_refused(&r, "{\"v\":1,\"type\":\"status\",\"rid\":8,\"job\":424242}", "not_found", NULL));

    /* three frames after the identity */
    zmq_send(r.sock, "{}", 2, ZMQ_SNDMORE);
    zmq_send(r.sock, "a", 1, ZMQ_SNDMORE);
    zmq_send(r.sock, "b", 1, 0);
    rep = s_raw_reply(&r);
    CHECK(s_is_error(rep, "format"));
    json_decref(rep);

    /* an oversized JSON frame (2 MiB, over the 1 MiB limit) */
    size_t big = 2u << 20;
    char *buf = malloc(big);
    memset(buf, ' ', big);
    memcpy(buf, "{\"v\":1,\"type\":\"ping\",\"rid\":9,\"pad\":\"", 37);
    buf[big - 2] = '"';
    buf[big - 1] = '}';
    zmq_send(r.sock, buf, big, 0);
    free(buf);
    rep = s_raw_reply(&r);
    CHECK(s_is_error(rep, "too_large"));
    json_decref(rep);

    /* a worker-only message from a stranger */
    CHECK(s_refused(&r, "{\"v\":1,\"type\":\"result\",\"rid\":10,\"group\":\"nobody\",\"job\":1}", NULL, NULL));
    s_raw_close(&r);

    /* still serving, and still alive */
    char err[ST_ERR_LEN];
    CHECKF(s_ping(c.endpoint, NULL, 5000, err) == ST_OK, "%s", err);
    CHECK(s_coord_alive(&c));
    s_coord_stop(&c);
    return 0;
}

/* Hundreds of requests from many clients at once, each answered once. */
static int test_many_clients(void)
{
    coord_t c = {0};
    CHECK(s_coord_start(&c, s_insecure) == 0);
    enum { CLIENTS = 100, EACH = 4 };
    statetune_client_t *cl[CLIENTS];
    char err[ST_ERR_LEN];
    for (int i = 0; i < CLIENTS; i++) {
        cl[i] = statetune_client_new(c.endpoint, NULL, err);
        CHECKF(cl[i], "%s", err);
    }
    /* send everything first, then collect: the coordinator sees them all queued */
    for (int k = 0; k < EACH; k++)
        for (int i = 0; i < CLIENTS; i++) {
            json_t *m = json_pack("{s:s, s:I}", "type", k % 2 ? "jobs" : "states_list", "rid", (json_int_t)(k + 1));
            CHECK(statetune_client_send(cl[i], m, NULL, 0, err) == ST_OK);
            json_decref(m);
        }
    int got = 0;
    for (int i = 0; i < CLIENTS; i++) {
        int seen[EACH] = {0};
        for (int k = 0; k < EACH; k++) {
            json_t *m = NULL;
            int rc = statetune_client_recv(cl[i], 5000, &m, NULL, NULL, err);
            CHECKF(rc == ST_OK, "client %d reply %d: %s", i, k, err);
            CHECK(!strcmp(json_string_value(json_object_get(m, "type")), "ok"));
            int rid = (int)json_integer_value(json_object_get(m, "rid"));
            CHECK(rid >= 1 && rid <= EACH && !seen[rid - 1]);
            seen[rid - 1] = 1;
            got++;
            json_decref(m);
        }
        statetune_client_destroy(&cl[i]);
    }
    printf("   %d requests from %d clients, all answered once\n", got, CLIENTS);
    CHECK(got == CLIENTS * EACH);
    s_coord_stop(&c);
    return 0;
}

/* A job that cannot run is refused at submit, with the key's name, and the
 * refusal is on record. */
static int test_submit_refused(void)
{
    const char *model = st_test_fixture("rwkv7/tiny.pth");
    if (!model) return ST_TEST_SKIP;
    coord_t c = {0};
    CHECK(s_coord_start(&c, s_insecure) == 0);
    char err[ST_ERR_LEN], train[400];
    snprintf(train, sizeof train, "%s/train.jsonl", c.dir);
    FILE *f = fopen(train, "w");
    fputs("{\"text\": \"hello\"}\n{\"text\": broken line\n", f);
    fclose(f);
    statetune_client_t *cl = statetune_client_new(c.endpoint, NULL, err);
    CHECK(cl);
    /* a bad line in the data: named by number */
    json_t *req = json_pack("{s:s, s:{s:s, s:s, s:s, s:i}}", "type", "submit", "spec", "name", "x", "model", model,
                            "train", train, "steps", 3),
           *rep = NULL;
    int rc = statetune_client_request(cl, req, NULL, 0, 10000, &rep, NULL, NULL, err);
    json_decref(req);
    printf("   refused: %s\n", err);
    CHECK(rc != ST_OK && strstr(err, "line 2"));
    /* an unknown key: named */
    req = json_pack("{s:s, s:{s:s, s:s, s:s, s:f}}", "type", "submit", "spec", "name", "x", "model", model, "train",
                    train, "lr", 0.5);
    rc = statetune_client_request(cl, req, NULL, 0, 10000, &rep, NULL, NULL, err);
    json_decref(req);
    printf("   refused: %s\n", err);
    CHECK(rc != ST_OK && strstr(err, "'lr'"));
    /* both are recorded as failed jobs */
    req = json_pack("{s:s}", "type", "jobs");
    rc = statetune_client_request(cl, req, NULL, 0, 5000, &rep, NULL, NULL, err);
    json_decref(req);
    CHECK(rc == ST_OK);
    json_t *jobs = json_object_get(rep, "jobs");
    CHECK(json_array_size(jobs) == 2);
    for (size_t i = 0; i < 2; i++)
        CHECK(!strcmp(json_string_value(json_object_get(json_array_get(jobs, i), "status")), "failed"));
    json_decref(rep);
    statetune_client_destroy(&cl);
    s_coord_stop(&c);
    return 0;
}

/* CURVE: a client whose key is not allowed gets nothing (a timeout that says
 * so) and the refusal is logged; with an allowed key it is served. */
static int test_curve(void)
{
    char err[ST_ERR_LEN];
    const char *dir = st_test_tmpdir();
    char allow[300], server[300], good[300], bad[300], path[400];
    snprintf(allow, sizeof allow, "%s/allow", dir);
    mkdir(allow, 0700);
    snprintf(server, sizeof server, "%s/server", dir);
    snprintf(good, sizeof good, "%s/allow/alice", dir); /* alice.pub lands in the allow folder */
    snprintf(bad, sizeof bad, "%s/mallory", dir);
    CHECKF(statetune_keys_generate(server, err) == ST_OK, "%s", err);
    CHECKF(statetune_keys_generate(good, err) == ST_OK, "%s", err);
    CHECKF(statetune_keys_generate(bad, err) == ST_OK, "%s", err);
    /* the secret key file is private */
    struct stat st;
    snprintf(path, sizeof path, "%s.key", good);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    /* and a second gen never overwrites it */
    CHECK(statetune_keys_generate(good, err) != ST_OK);

    coord_t c = {0};
    char sec[400];
    snprintf(sec, sizeof sec, "%s.key", server);
    const char *extra[] = {"--curve-secret", sec, "--allow", allow, NULL};
    CHECK(s_coord_start(&c, extra) == 0);
    char spub[400], gsec[400], bsec[400];
    snprintf(spub, sizeof spub, "%s.pub", server);
    snprintf(gsec, sizeof gsec, "%s.key", good);
    snprintf(bsec, sizeof bsec, "%s.key", bad);

    /* no keys at all: plain text to a CURVE server */
    int rc = s_ping(c.endpoint, NULL, 1500, err);
    printf("   without keys: %s\n", err);
    CHECK(rc == ST_ENET && strstr(err, "did not answer"));
    /* a key that is not allowed */
    statetune_client_opts_t o = {.curve_secret = bsec, .server_key = spub};
    rc = s_ping(c.endpoint, &o, 1500, err);
    printf("   mallory: %s\n", err);
    CHECK(rc == ST_ENET && strstr(err, "key"));
    CHECK(s_log_contains(&c, "refused"));
    /* an allowed key */
    o.curve_secret = gsec;
    rc = s_ping(c.endpoint, &o, 5000, err);
    CHECKF(rc == ST_OK, "%s", err);
    /* the wrong server key (a valid key, not the server's): no answer either */
    char bpub[400];
    snprintf(bpub, sizeof bpub, "%s.pub", bad);
    o.server_key = bpub;
    rc = s_ping(c.endpoint, &o, 1500, err);
    CHECK(rc == ST_ENET);
    CHECK(s_coord_alive(&c));
    s_coord_stop(&c);
    /* no secret, no allow: the coordinator refuses to start in the clear */
    char exe[512];
    snprintf(exe, sizeof exe, "%s/coordinator/statetune-coordinator --bind ipc://%s/x.sock --db %s/x.db 2>/dev/null",
             s_build_dir(), dir, dir);
    CHECK(WEXITSTATUS(system(exe)) == 2);
    return 0;
}

static int test_key_files(void)
{
    char err[ST_ERR_LEN], z[ST_CURVE_KEY_LEN + 1];
    const char *dir = st_test_tmpdir();
    char p[400];
    snprintf(p, sizeof p, "%s/short.pub", dir);
    FILE *f = fopen(p, "w");
    fputs("tooshort\n", f);
    fclose(f);
    CHECK(statetune_key_read(p, z, err) == ST_EFORMAT);
    printf("   %s\n", err);
    snprintf(p, sizeof p, "%s/missing.pub", dir);
    CHECK(statetune_key_read(p, z, err) == ST_EIO);
    /* a client with a bad key file is refused before connecting */
    statetune_client_opts_t o = {.curve_secret = p, .server_key = p};
    CHECK(statetune_client_new("ipc:///nonexistent", &o, err) == NULL);
    printf("   %s\n", err);
    return 0;
}


/* ---- the scheduler in-process ------------------------------------------------ */

typedef struct {
    const char *model; /* the tiny.pth fixture every job names */
    registry_t *reg;
    sched_t *sched;
    char dir[256];
    char db[300];
    char train[300];
} sched_env_t;

/* A registry and scheduler in a fresh folder with a small train.jsonl;
 * returns 0, ST_TEST_SKIP when the fixture model is absent, 1 on failure. */
static int s_sched_env(sched_env_t *e)
{
    memset(e, 0, sizeof *e);
    e->model = st_test_fixture("rwkv7/tiny.pth");
    if (!e->model) return ST_TEST_SKIP;
    snprintf(e->dir, sizeof e->dir, "%s", st_test_tmpdir());
    snprintf(e->db, sizeof e->db, "%s/registry.db", e->dir);
    snprintf(e->train, sizeof e->train, "%s/train.jsonl", e->dir);
    FILE *f = fopen(e->train, "w");
    if (!f) return 1;
    for (int i = 0; i < 8; i++) fprintf(f, "{\"text\": \"sample %d\\tindented\"}\n", i);
    fclose(f);
    char err[ST_ERR_LEN], jobs[400];
    e->reg = registry_open(e->db, 0, err);
    if (!e->reg) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    snprintf(jobs, sizeof jobs, "%s/jobs", e->dir);
    e->sched = sched_new(e->reg, jobs, err);
    if (!e->sched) fprintf(stderr, "%s\n", err);
    return e->sched ? 0 : 1;
}

static void s_sched_env_free(sched_env_t *e)
{
    sched_destroy(&e->sched);
    registry_close(&e->reg);
}

static int64_t s_submit(sched_env_t *e, const char *name, int priority, int gpus, const char *backend)
{
    char spec[2048], err[ST_ERR_LEN];
    snprintf(spec, sizeof spec,
             "{\"name\":\"%s\",\"model\":\"%s\",\"train\":\"%s\",\"steps\":2,\"ctx_len\":16,\"micro_batch\":1,"
             "\"global_batch\":4,\"priority\":%d,\"gpus\":%d,\"backend\":\"%s\"}",
             name, e->model, e->train, priority, gpus, backend);
    int64_t id = 0;
    int rc = sched_submit(e->sched, spec, &id, err);
    if (rc) fprintf(stderr, "submit %s: %s\n", name, err);
    return rc ? -1 : id;
}

static const char *s_status(sched_env_t *e, int64_t id, char *buf)
{
    json_t *rec = NULL;
    char err[ST_ERR_LEN];
    buf[0] = 0;
    if (sched_job_json(e->sched, id, &rec, err) == ST_OK)
        snprintf(buf, 32, "%s", json_string_value(json_object_get(rec, "status")));
    json_decref(rec);
    return buf;
}

static int test_sched_order(void)
{
    sched_env_t e;
    int rc = s_sched_env(&e);
    if (rc) return rc;
    int64_t low = s_submit(&e, "low", 1, 1, "cpu");
    int64_t hi1 = s_submit(&e, "hi1", 3, 1, "cpu");
    int64_t hi2 = s_submit(&e, "hi2", 3, 1, "cpu");
    int64_t big = s_submit(&e, "big", 9, 4, "cpu");
    int64_t gpu = s_submit(&e, "gpu", 9, 1, "cuda");
    CHECK(low > 0 && hi1 > 0 && hi2 > 0 && big > 0 && gpu > 0);
    char err[ST_ERR_LEN], st[32];
    sched_assignment_t a;
    /* a 2-rank CPU group: the 4-GPU job and the CUDA job are not for it */
    CHECK(sched_assign(e.sched, "g2", 2, "cpu", &a, err) == ST_OK && a.id == hi1); /* priority, then FIFO */
    CHECK(a.attempt == 1 && strstr(a.out_dir, "/jobs/") && strstr(a.spec_json, "\"hi1\""));
    CHECK(sched_assign(e.sched, "g2b", 2, "cpu", &a, err) == ST_OK && a.id == hi2);
    CHECK(sched_assign(e.sched, "g2c", 2, "cpu", &a, err) == ST_OK && a.id == low);
    CHECK(sched_assign(e.sched, "g2d", 2, "cpu", &a, err) == ST_ENOTFOUND);
    CHECK(sched_assign(e.sched, "g4", 4, "cpu", &a, err) == ST_OK && a.id == big);
    CHECK(sched_assign(e.sched, "gc", 1, "cuda", &a, err) == ST_OK && a.id == gpu);
    /* a 3-rank group cannot split a global batch of 4 evenly */
    int64_t odd = s_submit(&e, "odd", 0, 1, "cpu");
    CHECK(sched_assign(e.sched, "g3", 3, "cpu", &a, err) == ST_ENOTFOUND);
    CHECK(sched_assign(e.sched, "g1", 1, "cpu", &a, err) == ST_OK && a.id == odd);
    CHECK(!strcmp(s_status(&e, hi1, st), "running"));
    CHECK(sched_job_of_group(e.sched, "g2") == hi1);
    s_sched_env_free(&e);
    return 0;
}

static int test_sched_transitions(void)
{
    sched_env_t e;
    int rc = s_sched_env(&e);
    if (rc) return rc;
    char err[ST_ERR_LEN], st[32], group[128];
    sched_assignment_t a;
    int64_t j1 = s_submit(&e, "one", 0, 1, "cpu");
    int64_t j2 = s_submit(&e, "two", 0, 1, "cpu");
    CHECK(j1 > 0 && j2 > 0);
    /* queued -> cancelled at once */
    CHECK(sched_cancel(e.sched, j2, group, err) == ST_OK && group[0] == 0);
    CHECK(!strcmp(s_status(&e, j2, st), "cancelled"));
    CHECK(sched_cancel(e.sched, j2, group, err) == ST_EINVAL); /* already ended */
    /* running: only its own group may report */
    CHECK(sched_assign(e.sched, "ga", 1, "cpu", &a, err) == ST_OK && a.id == j1);
    json_t *prog = json_pack("{s:i, s:i, s:f}", "step", 1, "steps", 2, "loss", 3.5);
    CHECK(sched_event(e.sched, j1, "intruder", "progress", prog, err) == ST_EINVAL);
    CHECK(sched_event(e.sched, j1, "ga", "progress", prog, err) == ST_OK);
    json_decref(prog);
    /* the group is lost: back to the queue, and the next run is attempt 2 */
    CHECK(sched_requeue(e.sched, j1, "group 'ga' was lost", err) == ST_OK);
    CHECK(!strcmp(s_status(&e, j1, st), "queued"));
    CHECK(sched_assign(e.sched, "gb", 1, "cpu", &a, err) == ST_OK && a.id == j1 && a.attempt == 2);
    /* a result from the old group is refused; from the new one it registers */
    float state[2 * 2 * 64 * 64];
    for (size_t i = 0; i < sizeof state / sizeof state[0]; i++) state[i] = (float)i * 1e-4f;
    json_t *metrics = json_pack("{s:f, s:f, s:i}", "eval_loss_before", 2.0, "eval_loss_after", 1.5, "steps", 2);
    int version = 0;
    const char *sha = "798f0836d36dedad2ef8a238349600a54ab6d36c4f25f61569a0a0ea8330ed60";
    CHECK(sched_succeed(e.sched, j1, "ga", metrics, sha, 2, 2, 64, state, &version, err) == ST_EINVAL);
    /* a state that does not fit the job's model (2 layers x 2 heads) is refused */
    float *big = calloc((size_t)40 * 4 * 64 * 64, sizeof(float));
    CHECK(sched_succeed(e.sched, j1, "gb", metrics, sha, 40, 4, 64, big, &version, err) == ST_EINVAL);
    printf("   %s\n", err);
    free(big);
    CHECK(sched_succeed(e.sched, j1, "gb", metrics, sha, 2, 2, 64, state, &version, err) == ST_OK && version == 1);
    CHECK(!strcmp(s_status(&e, j1, st), "succeeded"));
    /* a repeated result (the reply was lost) answers the same version */
    version = 0;
    CHECK(sched_succeed(e.sched, j1, "gb", metrics, sha, 2, 2, 64, state, &version, err) == ST_OK && version == 1);
    json_decref(metrics);
    /* the state is on record with its metric beside the baseline and the alias moved */
    json_t *show = NULL;
    CHECKF(registry_show_state(e.reg, "one@latest", &show, err) == ST_OK, "%s", err);
    int found = 0;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(show, "metrics"), i, m)
    {
        if (!strcmp(json_string_value(json_object_get(m, "name")), "eval_loss"))
            found = json_number_value(json_object_get(m, "value")) == 1.5 &&
                    json_number_value(json_object_get(m, "baseline")) == 2.0;
    }
    json_decref(show);
    CHECK(found);
    /* running -> cancel requested -> the group stops -> cancelled */
    int64_t j3 = s_submit(&e, "three", 0, 1, "cpu");
    CHECK(sched_assign(e.sched, "gb", 1, "cpu", &a, err) == ST_OK && a.id == j3);
    CHECK(sched_cancel(e.sched, j3, group, err) == ST_OK && !strcmp(group, "gb"));
    CHECK(sched_cancel_requested(e.sched, j3));
    CHECK(!strcmp(s_status(&e, j3, st), "running"));
    CHECK(sched_fail(e.sched, j3, "gb", "cancelled", 1, err) == ST_OK);
    CHECK(!strcmp(s_status(&e, j3, st), "cancelled"));
    /* running -> failed with the group's reason */
    int64_t j4 = s_submit(&e, "four", 0, 1, "cpu");
    CHECK(sched_assign(e.sched, "gb", 1, "cpu", &a, err) == ST_OK && a.id == j4);
    CHECK(sched_fail(e.sched, j4, "gb", "NaN in the loss at step 3", 0, err) == ST_OK);
    json_t *rec = NULL;
    CHECK(sched_job_json(e.sched, j4, &rec, err) == ST_OK);
    CHECK(!strcmp(json_string_value(json_object_get(rec, "status")), "failed"));
    CHECK(strstr(json_string_value(json_object_get(rec, "error")), "NaN"));
    json_decref(rec);
    s_sched_env_free(&e);
    return 0;
}

static int test_sched_recovery(void)
{
    sched_env_t e;
    int rc = s_sched_env(&e);
    if (rc) return rc;
    char err[ST_ERR_LEN], st[32], jobs[400];
    sched_assignment_t a;
    int64_t run = s_submit(&e, "run", 5, 1, "cpu");
    int64_t wait1 = s_submit(&e, "wait1", 1, 1, "cpu");
    int64_t wait2 = s_submit(&e, "wait2", 2, 1, "cpu");
    CHECK(sched_assign(e.sched, "ga", 1, "cpu", &a, err) == ST_OK && a.id == run);
    /* the coordinator dies: a new scheduler over the same registry */
    sched_destroy(&e.sched);
    snprintf(jobs, sizeof jobs, "%s/jobs", e.dir);
    e.sched = sched_new(e.reg, jobs, err);
    CHECKF(e.sched, "%s", err);
    CHECK(!strcmp(s_status(&e, run, st), "queued"));
    CHECK(!strcmp(s_status(&e, wait1, st), "queued") && !strcmp(s_status(&e, wait2, st), "queued"));
    /* the running job is held for its group; others get the rest, in order */
    CHECK(sched_assign(e.sched, "gx", 1, "cpu", &a, err) == ST_OK && a.id == wait2);
    CHECK(sched_reclaim(e.sched, run, "ga", err) == ST_OK);
    CHECK(!strcmp(s_status(&e, run, st), "running"));
    CHECK(sched_reclaim(e.sched, run, "gy", err) == ST_EBUSY); /* it is ga's */
    CHECK(sched_assign(e.sched, "gz", 1, "cpu", &a, err) == ST_OK && a.id == wait1);
    s_sched_env_free(&e);
    return 0;
}

/* Paths a job reads: regular files only (a FIFO would block the
 * coordinator's thread in open()), inside the data roots when set. */
static int test_sched_paths(void)
{
    sched_env_t e;
    int rc = s_sched_env(&e);
    if (rc) return rc;
    char err[ST_ERR_LEN], fifo[400], root[400], inside[450], outside[450], link[450];
    snprintf(fifo, sizeof fifo, "%s/pipe.jsonl", e.dir);
    CHECK(mkfifo(fifo, 0600) == 0);
    CHECK(sched_check_path(e.sched, "train", fifo, 1, err) == ST_EINVAL && strstr(err, "not a regular file"));
    CHECK(sched_check_path(e.sched, "model", "/dev/zero", 1, err) == ST_EINVAL);
    CHECK(sched_check_path(e.sched, "train", e.train, 1, err) == ST_OK); /* no roots: anything regular */
    /* a job naming the FIFO is refused at once, with the key */
    char spec[1024];
    snprintf(spec, sizeof spec, "{\"name\":\"f\",\"model\":\"%s\",\"train\":\"%s\",\"steps\":1}", e.model, fifo);
    int64_t id = 0;
    CHECK(sched_submit(e.sched, spec, &id, err) == ST_EINVAL && strstr(err, "'train'"));
    /* with a root: inside passes; outside, '..' out of it and a symlink out are refused */
    snprintf(root, sizeof root, "%s/root", e.dir);
    CHECK(mkdir(root, 0700) == 0);
    snprintf(inside, sizeof inside, "%s/in.jsonl", root);
    FILE *f = fopen(inside, "w");
    fputs("{\"text\": \"x\"}\n", f);
    fclose(f);
    snprintf(link, sizeof link, "%s/link.jsonl", root);
    CHECK(symlink(e.train, link) == 0);
    snprintf(outside, sizeof outside, "%s/../train.jsonl", root);
    const char *roots[] = {root};
    CHECK(sched_set_data_roots(e.sched, roots, 1, err) == ST_OK);
    CHECK(sched_check_path(e.sched, "train", inside, 1, err) == ST_OK);
    CHECK(sched_check_path(e.sched, "train", e.train, 1, err) == ST_EINVAL && strstr(err, "outside the data roots"));
    CHECK(sched_check_path(e.sched, "train", outside, 1, err) == ST_EINVAL);
    CHECK(sched_check_path(e.sched, "train", link, 1, err) == ST_EINVAL);
    CHECK(sched_check_path(e.sched, "model", e.train, 0, err) == ST_OK); /* not confined: a registered model */
    s_sched_env_free(&e);
    return 0;
}

/* One coordinator per registry: a second one on the same database refuses
 * to start, naming the first. */
static int test_one_coordinator(void)
{
    coord_t c = {0};
    CHECK(s_coord_start(&c, s_insecure) == 0);
    char cmd[2048], out[290];
    snprintf(out, sizeof out, "%.270s/second.log", c.dir);
    snprintf(cmd, sizeof cmd,
             "%s/coordinator/statetune-coordinator --bind ipc://%s/second.sock --db %s/registry.db --insecure 2>%s",
             s_build_dir(), c.dir, c.dir, out);
    int st = system(cmd);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    coord_t second = {.pid = 0};
    memcpy(second.log, out, sizeof out);
    CHECK(s_log_contains(&second, "another coordinator"));
    CHECK(s_coord_alive(&c));
    s_coord_stop(&c);
    return 0;
}

/* A coordinator that lies: the client library checks a state reply against
 * the shape it claims and never returns a short or absurd buffer. */
typedef struct {
    char endpoint[300];
    int replies; /* how many requests to answer */
} fake_t;

static void *s_fake_coordinator(void *arg)
{
    fake_t *f = arg;
    void *ctx = zmq_ctx_new(), *sock = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_bind(sock, f->endpoint);
    for (int k = 0; k < f->replies; k++) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 5000) <= 0) break;
        zmq_msg_recv(&id, sock, 0);
        zmq_msg_recv(&body, sock, 0);
        json_error_t jerr;
        json_t *req = json_loadb(zmq_msg_data(&body), zmq_msg_size(&body), 0, &jerr);
        long long rid = (long long)json_integer_value(json_object_get(req, "rid"));
        json_decref(req);
        json_t *lie;
        if (k % 3 == 0) /* payload too short for its shape */
            lie = json_pack("{s:i, s:s, s:I, s:s, s:i, s:i, s:i, s:i}", "v", 1, "type", "ok", "rid", (json_int_t)rid,
                            "name", "x", "version", 1, "layers", 2, "heads", 2, "head_size", 64);
        else if (k % 3 == 1) /* absurd shape */
            lie = json_pack("{s:i, s:s, s:I, s:s, s:i, s:i, s:i, s:i}", "v", 1, "type", "ok", "rid", (json_int_t)rid,
                            "name", "x", "version", 1, "layers", 100000, "heads", 99999, "head_size", 64);
        else /* no shape at all */
            lie = json_pack("{s:i, s:s, s:I}", "v", 1, "type", "ok", "rid", (json_int_t)rid);
        char *text = json_dumps(lie, JSON_COMPACT);
        json_decref(lie);
        zmq_send(sock, zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE);
        zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
        zmq_send(sock, "0123456789", 10, 0);
        free(text);
        zmq_msg_close(&id);
        zmq_msg_close(&body);
    }
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return NULL;
}

static int test_client_distrusts_replies(void)
{
    fake_t f = {.replies = 3};
    snprintf(f.endpoint, sizeof f.endpoint, "ipc://%s/fake.sock", st_test_tmpdir());
    pthread_t th;
    CHECK(pthread_create(&th, NULL, s_fake_coordinator, &f) == 0);
    char err[ST_ERR_LEN];
    statetune_client_t *c = statetune_client_new(f.endpoint, NULL, err);
    CHECK(c);
    for (int k = 0; k < 3; k++) {
        statetune_state_t st;
        int rc = statetune_client_get_state(c, "x@latest", &st, err);
        printf("   lie %d: %s\n", k, err);
        CHECK(rc == ST_EFORMAT && st.data == NULL);
    }
    statetune_client_destroy(&c);
    pthread_join(th, NULL);
    return 0;
}

static const st_test_t tests[] = {
    {"malformed_messages", test_malformed_messages},
    {"many_clients", test_many_clients},
    {"submit_refused", test_submit_refused},
    {"curve", test_curve},
    {"key_files", test_key_files},
    {"sched_order", test_sched_order},
    {"sched_transitions", test_sched_transitions},
    {"sched_recovery", test_sched_recovery},
    {"sched_paths", test_sched_paths},
    {"one_coordinator", test_one_coordinator},
    {"client_distrusts_replies", test_client_distrusts_replies},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return st_test_main(argc, argv, tests);
}
