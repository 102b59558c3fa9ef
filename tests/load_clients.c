/*
 * load_clients.c - many concurrent clients against a live coordinator (SPEC
 * section 9: "hundreds of concurrent requests are served without errors").
 * Driven by tests/load_service.sh, which starts the coordinator and a worker
 * group running a job, and samples the coordinator's memory meanwhile.
 *
 *   load_clients setup ENDPOINT SPEC.json LAYERS HEADS
 *       Registers a big state to fetch: acts as a worker group ("loadgen"),
 *       submits the job in SPEC.json, takes it with job_request and returns
 *       a result of [LAYERS, HEADS, 64, 64] fp32 (40 x 4 = 10.5 MB; the
 *       coordinator refuses a shape that does not fit the job's model, so
 *       SPEC.json names a model of that shape). Prints the state's
 *       name@version.
 *   load_clients run ENDPOINT CLIENTS REQUESTS JOB STATE_REF
 *       CLIENTS threads, each with its own DEALER, send REQUESTS requests in
 *       all, mixed: 45% status of JOB, 45% listings (states_list and jobs in
 *       turn), 10% states_get of STATE_REF (the payload is checked for size).
 *       Prints one JSON line: counts, errors, latency p50/p99/max (ms) per
 *       kind and overall, wall time and requests per second. Exit 0 only
 *       when every request got an ok reply.
 *
 * Each thread uses statetune_client_request (one outstanding request per
 * client, as the command line does), so latency is the round trip a user sees.
 */
#include "client/statetune_client.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REQ_TIMEOUT_MS 120000 /* a request waits this long before it is an error */

enum { K_STATUS, K_LIST, K_GET, N_KINDS };
static const char *const s_kind_names[N_KINDS] = {"status", "list", "get"};

typedef struct {
    const char *endpoint;
    int64_t job;
    const char *ref;
    size_t want_bytes;      /* payload size of a states_get */
    int n;                  /* requests this thread sends */
    unsigned seed;
    double *lat_ms;         /* [n] latency per request */
    int *kind;              /* [n] kind per request */
    int errors;
    char first_err[ST_ERR_LEN];
} worker_t;

static double s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void *s_thread(void *arg)
{
    worker_t *w = arg;
    char err[ST_ERR_LEN];
    statetune_client_t *c = statetune_client_new(w->endpoint, NULL, err);
    if (!c) {
        w->errors = w->n;
        snprintf(w->first_err, sizeof w->first_err, "%s", err);
        return NULL;
    }
    for (int i = 0; i < w->n; i++) {
        unsigned r = (unsigned)rand_r(&w->seed) % 100;
        int k = r < 45 ? K_STATUS : r < 90 ? K_LIST : K_GET;
        json_t *req = NULL;
        if (k == K_STATUS)
            req = json_pack("{s:s, s:I}", "type", "status", "job", (json_int_t)w->job);
        else if (k == K_LIST)
            req = json_pack("{s:s}", "type", i % 2 ? "jobs" : "states_list");
        else
            req = json_pack("{s:s, s:s}", "type", "states_get", "ref", w->ref);
        json_t *rep = NULL;
        void *payload = NULL;
        size_t plen = 0;
        double t0 = s_now_ms();
        int rc = req ? statetune_client_request(c, req, NULL, 0, REQ_TIMEOUT_MS, &rep, &payload, &plen, err)
                     : st_fail(err, ST_ENOMEM, "out of memory");
        w->lat_ms[i] = s_now_ms() - t0;
        w->kind[i] = k;
        if (rc == ST_OK && k == K_GET && plen != w->want_bytes)
            rc = st_fail(err, ST_EFORMAT, "states_get returned %zu bytes, want %zu", plen, w->want_bytes);
        if (rc != ST_OK) {
            if (!w->errors) snprintf(w->first_err, sizeof w->first_err, "%s", err);
            w->errors++;
        }
        json_decref(req);
        json_decref(rep);
        free(payload);
    }
    statetune_client_destroy(&c);
    return NULL;
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double s_pct(double *v, size_t n, double p)
{
    if (!n) return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

static int s_run(const char *endpoint, int clients, int requests, int64_t job, const char *ref)
{
    char err[ST_ERR_LEN];
    /* the state's size, for the payload check */
    statetune_client_t *c = statetune_client_new(endpoint, NULL, err);
    statetune_state_t st;
    if (!c || statetune_client_get_state(c, ref, &st, err) != ST_OK) {
        fprintf(stderr, "load_clients: cannot fetch '%s' before the run: %s\n", ref, err);
        statetune_client_destroy(&c);
        return 1;
    }
    size_t want = st.n_floats * sizeof(float);
    statetune_state_free(&st);
    statetune_client_destroy(&c);

    worker_t *w = calloc((size_t)clients, sizeof *w);
    pthread_t *th = calloc((size_t)clients, sizeof *th);
    double *lat = calloc((size_t)requests, sizeof *lat);
    int *kind = calloc((size_t)requests, sizeof *kind);
    if (!w || !th || !lat || !kind) {
        fprintf(stderr, "load_clients: out of memory\n");
        return 1;
    }
    int off = 0;
    for (int i = 0; i < clients; i++) {
        w[i].endpoint = endpoint;
        w[i].job = job;
        w[i].ref = ref;
        w[i].want_bytes = want;
        w[i].n = requests / clients + (i < requests % clients);
        w[i].seed = 1234u + (unsigned)i;
        w[i].lat_ms = lat + off;
        w[i].kind = kind + off;
        off += w[i].n;
    }
    double t0 = s_now_ms();
    int started = 0;
    for (int i = 0; i < clients; i++) {
        if (pthread_create(&th[i], NULL, s_thread, &w[i]) != 0) {
            fprintf(stderr, "load_clients: cannot start thread %d\n", i);
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    double wall = (s_now_ms() - t0) / 1e3;

    int errors = 0;
    const char *first = NULL;
    for (int i = 0; i < clients; i++) {
        errors += w[i].errors;
        if (w[i].errors && !first) first = w[i].first_err;
    }
    if (started < clients) errors += requests - off; /* never sent */
    printf("{\"clients\": %d, \"requests\": %d, \"errors\": %d, \"wall_s\": %.2f, \"req_per_s\": %.1f", clients,
           requests, errors, wall, requests / wall);
    double *by = malloc((size_t)requests * sizeof *by);
    for (int k = -1; k < N_KINDS && by; k++) {
        size_t n = 0;
        for (int i = 0; i < off; i++)
            if (k < 0 || kind[i] == k) by[n++] = lat[i];
        qsort(by, n, sizeof *by, s_cmp);
        printf(", \"%s\": {\"n\": %zu, \"p50_ms\": %.2f, \"p99_ms\": %.2f, \"max_ms\": %.2f}",
               k < 0 ? "all" : s_kind_names[k], n, s_pct(by, n, 0.5), s_pct(by, n, 0.99), n ? by[n - 1] : 0.0);
    }
    printf("}\n");
    if (first) fprintf(stderr, "load_clients: %d errors; the first: %s\n", errors, first);
    free(by);
    free(w);
    free(th);
    free(lat);
    free(kind);
    return errors ? 1 : 0;
}

/* Reads a whole small file (the job spec). */
static char *s_slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf) buf[n] = 0;
    return buf;
}

static int s_setup(const char *endpoint, const char *spec_path, int layers, int heads)
{
    char err[ST_ERR_LEN];
    statetune_client_opts_t opts = {.identity = "loadgen"};
    statetune_client_t *g = statetune_client_new(endpoint, &opts, err);
    statetune_client_t *c = statetune_client_new(endpoint, NULL, err);
    char *text = s_slurp(spec_path);
    json_error_t jerr;
    json_t *spec = text ? json_loads(text, 0, &jerr) : NULL;
    free(text);
    if (!g || !c || !spec) {
        fprintf(stderr, "load_clients: setup: %s\n", !spec ? "cannot read the job spec" : err);
        return 1;
    }
    json_t *rep = NULL;
    int rc = statetune_client_request(
        g, json_pack("{s:s, s:s, s:i, s:i, s:s, s:n, s:i}", "type", "hello", "group", "loadgen", "ranks", 1, "gpus", 1,
                     "backend", "cpu", "job", "heartbeat_ms", 1000),
        NULL, 0, 10000, &rep, NULL, NULL, err);
    json_decref(rep);
    rep = NULL;
    json_t *sub = json_pack("{s:s, s:O}", "type", "submit", "spec", spec);
    if (rc == ST_OK) rc = statetune_client_request(c, sub, NULL, 0, 30000, &rep, NULL, NULL, err);
    json_decref(sub);
    json_decref(rep);
    rep = NULL;
    json_t *jr = json_pack("{s:s, s:s}", "type", "job_request", "group", "loadgen");
    if (rc == ST_OK) rc = statetune_client_request(g, jr, NULL, 0, 10000, &rep, NULL, NULL, err);
    json_decref(jr);
    int64_t job = rep ? json_integer_value(json_object_get(rep, "job")) : 0;
    json_decref(rep);
    rep = NULL;
    if (rc == ST_OK && job <= 0) rc = st_fail(err, ST_EINVAL, "job_request gave no job");
    size_t n = (size_t)layers * heads * 64 * 64;
    float *data = malloc(n * sizeof *data);
    if (rc == ST_OK && !data) rc = st_fail(err, ST_ENOMEM, "out of memory");
    for (size_t i = 0; data && i < n; i++) data[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    json_t *res = json_pack("{s:s, s:s, s:I, s:i, s:i, s:i, s:s, s:{s:f, s:f}}", "type", "result", "group", "loadgen",
                            "job", (json_int_t)job, "layers", layers, "heads", heads, "head_size", 64, "model_sha256",
                            "0000000000000000000000000000000000000000000000000000000000000000", "metrics",
                            "eval_loss_before", 5.0, "eval_loss_after", 4.0);
    if (rc == ST_OK) rc = statetune_client_request(g, res, data, n * sizeof *data, 60000, &rep, NULL, NULL, err);
    json_decref(res);
    free(data);
    if (rc == ST_OK)
        printf("%s@%lld\n", json_string_value(json_object_get(spec, "name")),
               (long long)json_integer_value(json_object_get(rep, "version")));
    else
        fprintf(stderr, "load_clients: setup: %s\n", err);
    json_decref(rep);
    json_decref(spec);
    statetune_client_destroy(&g);
    statetune_client_destroy(&c);
    return rc == ST_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 6 && !strcmp(argv[1], "setup")) return s_setup(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    if (argc == 7 && !strcmp(argv[1], "run")) {
        int clients = atoi(argv[3]), requests = atoi(argv[4]);
        if (clients < 1 || requests < clients) {
            fprintf(stderr, "load_clients: CLIENTS must be >= 1 and REQUESTS >= CLIENTS\n");
            return 2;
        }
        return s_run(argv[2], clients, requests, atoll(argv[5]), argv[6]);
    }
    fprintf(stderr, "usage: load_clients setup ENDPOINT SPEC.json LAYERS HEADS\n"
                    "       load_clients run ENDPOINT CLIENTS REQUESTS JOB STATE_REF\n");
    return 2;
}
