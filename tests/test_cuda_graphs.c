/*
 * test_cuda_graphs.c - the CUDA engine's graphs (engine_cuda_set_graphs):
 * a step replayed from a CUDA graph must give the same bits as the same step
 * run eagerly, for new tokens, targets and S0 on every replay (the graph
 * reads the engine's device buffers, which the host copies refill before
 * each replay), with DBP's Q, forward-only runs between training steps (their
 * own graphs), resident S0 / dS0 (the dS0 address is part of the key), and in
 * recompute mode. The reference is a second engine on the same model with
 * graphs off; both use the same kernels, so the loss and the counts are
 * equal bit for bit. dS0 and DBP's Q are sums over the batch made with
 * atomic adds, whose order varies from run to run even without graphs, so
 * they are compared to 1e-5 (fp32) and 1e-12 (double) relative: a replay
 * that read stale inputs or wrote another buffer misses by orders of
 * magnitude more.
 *
 * A run of a shape goes eager the first time, is captured the second and
 * replayed from then on, so each check runs a key at least three times.
 *
 * CTest label `gpu`: needs a CUDA device; without one every test skips.
 */
#include "harness.h"
#include "cuda_test.h"

#include "common/st_err.h"
#include "engine/engine_cuda.h"
#include "model/model.h"

#include <cuda_runtime_api.h>
#include <stdint.h>

enum { B = 3, T = 77, NB = 3 }; /* T not a multiple of the WKV chunk; NB different batches */

typedef struct {
    int32_t tok[NB][B * T], tgt[NB][B * T];
    uint8_t rows[B];
    float *s0[NB]; /* (L, H, N, N) */
    size_t ns;
} batches_t;

static void s_batches(batches_t *b, const rwkv_config_t *c, uint64_t seed)
{
    uint64_t s = seed;
    b->ns = (size_t)c->n_layer * rwkv_state_layer_size(c);
    for (int k = 0; k < NB; k++) {
        for (int i = 0; i < B * T; i++) {
            b->tok[k][i] = (int32_t)(st_test_next(&s) % (uint64_t)c->vocab);
            b->tgt[k][i] = st_test_next(&s) % 7 == 0 ? -1 : (int32_t)(st_test_next(&s) % (uint64_t)c->vocab);
        }
        b->s0[k] = malloc(b->ns * sizeof(float));
        for (size_t i = 0; i < b->ns; i++) b->s0[k][i] = (float)((double)(st_test_next(&s) >> 11) / 9007199254740992.0 - 0.5);
    }
    for (int i = 0; i < B; i++) b->rows[i] = i != 1;
}

static void s_free(batches_t *b)
{
    for (int k = 0; k < NB; k++) free(b->s0[k]);
}

typedef struct {
    double loss;
    int64_t n_targets, n_correct;
    float *ds0;
    double *q;
} result_t;

/* One step of batch k (backward when ds0 is wanted, DBP when dbp). */
static int s_step(engine_cuda_t *e, const batches_t *b, int k, int backward, int dbp, result_t *r)
{
    char err[ST_ERR_LEN];
    r->ds0 = backward ? calloc(b->ns, sizeof(float)) : NULL;
    r->q = dbp ? calloc(b->ns, sizeof(double)) : NULL;
    engine_batch_t bt = {.tokens = b->tok[k], .targets = b->tgt[k], .B = B, .T = T, .state0 = b->s0[k],
                         .dstate0 = r->ds0, .dbp_rows = dbp ? b->rows : NULL, .dbp_q = r->q};
    int rc = engine_cuda_run(e, &bt, err);
    if (rc) fprintf(stderr, "engine_cuda_run: %s\n", err);
    r->loss = bt.loss_sum;
    r->n_targets = bt.n_targets;
    r->n_correct = bt.n_correct;
    return rc;
}

static double s_rel_d(const double *a, const double *b, size_t n)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d += (a[i] - b[i]) * (a[i] - b[i]);
        r += b[i] * b[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

static int s_same(const result_t *a, const result_t *b, size_t ns, const char *what)
{
    const double eg = a->ds0 && b->ds0 ? st_rel_err_ff(a->ds0, b->ds0, ns) : 0;
    const double eq = a->q && b->q ? s_rel_d(a->q, b->q, ns) : 0;
    const int same = a->loss == b->loss && a->n_targets == b->n_targets && a->n_correct == b->n_correct &&
                     eg <= 1e-5 && eq <= 1e-12;
    printf("    %s: loss %.9g vs %.9g, dS0 rel %.2e, Q rel %.2e\n", what, a->loss, b->loss, eg, eq);
    if (!same) fprintf(stderr, "%s: the graph's run differs from the eager run\n", what);
    return same;
}

static void s_release(result_t *r)
{
    free(r->ds0);
    free(r->q);
    r->ds0 = NULL;
    r->q = NULL;
}

/* The sequence a tuning job makes: training steps on new batches, a
 * forward-only evaluation in between, DBP on some steps. */
static int s_sequence(engine_precision_t prec, int recompute)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    rwkv_config_t cfg = {3, 128, 2, 64, 300, 512, 32, 32, 32, 64};
    rwkv_model_t *m = rwkv_model_new_random(&cfg, 7, err);
    CHECKF(m != NULL, "%s", err);
    batches_t b;
    s_batches(&b, &cfg, 42);
    engine_opts_t opts = {.backend = ENGINE_CUDA, .precision = prec, .max_batch = B + 1, .max_ctx = T + 3};
    engine_cuda_t *ref = engine_cuda_new_mode(m, &opts, 0, err);
    CHECKF(ref != NULL, "%s", err);
    engine_cuda_set_graphs(ref, 0);
    engine_cuda_t *g = engine_cuda_new_mode(m, &opts, recompute, err);
    CHECKF(g != NULL, "%s", err);
    /* step i: batch, backward, dbp */
    static const int plan[][3] = {{0, 1, 0}, {1, 1, 0}, {2, 0, 0}, {2, 1, 0}, {0, 0, 0}, {1, 1, 0},
                                  {0, 1, 1}, {1, 1, 1}, {2, 0, 0}, {2, 1, 1}, {0, 1, 0}, {1, 0, 0}};
    int ok = 1;
    for (size_t i = 0; i < sizeof plan / sizeof plan[0] && ok; i++) {
        result_t want = {0}, got = {0};
        char what[64];
        snprintf(what, sizeof what, "step %zu (batch %d, backward %d, dbp %d)", i, plan[i][0], plan[i][1], plan[i][2]);
        ok = !s_step(ref, &b, plan[i][0], plan[i][1], plan[i][2], &want) &&
             !s_step(g, &b, plan[i][0], plan[i][1], plan[i][2], &got) && s_same(&got, &want, b.ns, what);
        s_release(&want);
        s_release(&got);
    }
    const long replays = engine_cuda_graph_replays(g);
    engine_cuda_destroy(&g);
    engine_cuda_destroy(&ref);
    s_free(&b);
    rwkv_model_destroy(&m);
    CHECK(ok);
    CHECKF(replays >= 8, "only %ld parts came from graphs: the captures failed", replays);
    printf("    12 steps with graphs equal the eager engine (%ld parts replayed)\n", replays);
    return 0;
}

static int t_fp32(void) { return s_sequence(ENGINE_FP32, 0); }
static int t_bf16(void) { return s_sequence(ENGINE_BF16, 0); }
static int t_bf16_recompute(void) { return s_sequence(ENGINE_BF16, 1); }

/* Resident S0 / dS0 on the device (engine_cuda_run_resident): two dS0
 * buffers in turn, so a graph captured for one address must not write the
 * other. */
static int t_resident(void)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    rwkv_config_t cfg = {2, 128, 2, 64, 300, 512, 32, 32, 32, 64};
    rwkv_model_t *m = rwkv_model_new_random(&cfg, 9, err);
    CHECKF(m != NULL, "%s", err);
    batches_t b;
    s_batches(&b, &cfg, 43);
    engine_opts_t opts = {.backend = ENGINE_CUDA, .precision = ENGINE_BF16, .max_batch = B, .max_ctx = T};
    engine_cuda_t *ref = engine_cuda_new(m, &opts, err);
    CHECKF(ref != NULL, "%s", err);
    engine_cuda_set_graphs(ref, 0);
    engine_cuda_t *g = engine_cuda_new(m, &opts, err);
    CHECKF(g != NULL, "%s", err);
    const size_t bytes = b.ns * sizeof(float);
    float *s0d = NULL, *dsd[2] = {NULL, NULL};
    CHECK(cudaMalloc((void **)&s0d, bytes) == cudaSuccess);
    CHECK(cudaMalloc((void **)&dsd[0], bytes) == cudaSuccess);
    CHECK(cudaMalloc((void **)&dsd[1], bytes) == cudaSuccess);
    float *want = malloc(bytes), *got = malloc(bytes);
    int ok = 1;
    for (int i = 0; i < 8 && ok; i++) {
        const int k = i % NB, which = (i / 2) % 2;
        CHECK(cudaMemcpy(s0d, b.s0[k], bytes, cudaMemcpyHostToDevice) == cudaSuccess);
        engine_batch_t b1 = {.tokens = b.tok[k], .targets = b.tgt[k], .B = B, .T = T};
        engine_batch_t b2 = b1;
        CHECK(cudaMemset(dsd[which], 0, bytes) == cudaSuccess);
        CHECKF(!engine_cuda_run_resident(ref, &b1, s0d, dsd[which], err), "%s", err);
        CHECK(cudaMemcpy(want, dsd[which], bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
        CHECK(cudaMemset(dsd[which], 0, bytes) == cudaSuccess);
        CHECK(cudaMemset(dsd[1 - which], 0, bytes) == cudaSuccess);
        CHECKF(!engine_cuda_run_resident(g, &b2, s0d, dsd[which], err), "%s", err);
        CHECK(cudaMemcpy(got, dsd[which], bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
        const double eg = st_rel_err_ff(got, want, b.ns);
        printf("    resident step %d: loss %.9g vs %.9g, dS0 rel %.2e\n", i, b2.loss_sum, b1.loss_sum, eg);
        ok = b1.loss_sum == b2.loss_sum && eg <= 1e-5;
        if (!ok) fprintf(stderr, "resident step %d: the graph's dS0 or loss differs from the eager run\n", i);
        /* the other buffer stays untouched */
        CHECK(cudaMemcpy(got, dsd[1 - which], bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
        for (size_t j = 0; j < b.ns && ok; j++)
            if (got[j] != 0.f) {
                fprintf(stderr, "resident step %d: a graph wrote into the other dS0 buffer\n", i);
                ok = 0;
            }
    }
    free(want);
    free(got);
    cudaFree(s0d);
    cudaFree(dsd[0]);
    cudaFree(dsd[1]);
    const long replays = engine_cuda_graph_replays(g);
    engine_cuda_destroy(&g);
    engine_cuda_destroy(&ref);
    s_free(&b);
    rwkv_model_destroy(&m);
    CHECK(ok);
    CHECKF(replays >= 6, "only %ld parts came from graphs: the captures failed", replays);
    printf("    8 resident steps with graphs equal the eager engine (%ld parts replayed)\n", replays);
    return 0;
}

int main(int argc, char **argv)
{
    static const st_test_t tests[] = {{"fp32_sequence", t_fp32},
                                      {"bf16_sequence", t_bf16},
                                      {"bf16_recompute_sequence", t_bf16_recompute},
                                      {"resident", t_resident},
                                      {NULL, NULL}};
    return st_test_main(argc, argv, tests);
}
