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
        st_test_tokens(&s, B * T, c->vocab, 7, b->tok[k], b->tgt[k]);
        b->s0[k] = malloc(b->ns * sizeof(float));
        st_test_centered(&s, b->s0[k], b->ns);
    }
    for (int i = 0; i < B; i++) b->rows[i] = i != 1;
}

/* What each test compares: a random model (seed), NB batches for it
 * (seed2), the reference engine (graphs off) and the engine under test
 * (graphs on, the given recompute mode), both planned for max_batch x
 * max_ctx. */
typedef struct {
    rwkv_model_t *m;
    batches_t b;
    engine_cuda_t *ref, *g;
} pair_t;

static int s_pair(pair_t *p, int n_layer, uint64_t seed, uint64_t seed2, engine_precision_t prec, int max_batch,
                  int max_ctx, int recompute)
{
    char err[ST_ERR_LEN];
    rwkv_config_t cfg = {n_layer, 128, 2, 64, 300, 512, 32, 32, 32, 64};
    p->m = rwkv_model_new_random(&cfg, seed, err);
    if (!p->m) {
        fprintf(stderr, "rwkv_model_new_random: %s\n", err);
        return 1;
    }
    s_batches(&p->b, &cfg, seed2);
    engine_opts_t opts = {.backend = ENGINE_CUDA, .precision = prec, .max_batch = max_batch, .max_ctx = max_ctx};
    p->ref = engine_cuda_new_mode(p->m, &opts, 0, err);
    if (p->ref) p->g = engine_cuda_new_mode(p->m, &opts, recompute, err);
    if (!p->ref || !p->g) {
        fprintf(stderr, "engine_cuda_new_mode: %s\n", err);
        return 1;
    }
    engine_cuda_set_graphs(p->ref, 0);
    return 0;
}

/* The end of a test: everything freed; it passes when ok and at least
 * min_replays parts of the runs came from graphs. */
static int s_pair_end(pair_t *p, int ok, long min_replays, const char *what)
{
    const long replays = p->g ? engine_cuda_graph_replays(p->g) : 0;
    engine_cuda_destroy(&p->g);
    engine_cuda_destroy(&p->ref);
    for (int k = 0; k < NB; k++) free(p->b.s0[k]);
    rwkv_model_destroy(&p->m);
    CHECK(ok);
    CHECKF(replays >= min_replays, "only %ld parts came from graphs: the captures failed", replays);
    printf("    %s with graphs equal the eager engine (%ld parts replayed)\n", what, replays);
    return 0;
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

static int s_same(const result_t *a, const result_t *b, size_t ns, const char *what)
{
    const double eg = a->ds0 && b->ds0 ? st_rel_err_ff(a->ds0, b->ds0, ns) : 0;
    const double eq = a->q && b->q ? st_rel_err_dd(a->q, b->q, ns) : 0;
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
    pair_t p = {0};
    CHECK(s_pair(&p, 3, 7, 42, prec, B + 1, T + 3, recompute) == 0);
    /* step i: batch, backward, dbp */
    static const int plan[][3] = {{0, 1, 0}, {1, 1, 0}, {2, 0, 0}, {2, 1, 0}, {0, 0, 0}, {1, 1, 0},
                                  {0, 1, 1}, {1, 1, 1}, {2, 0, 0}, {2, 1, 1}, {0, 1, 0}, {1, 0, 0}};
    int ok = 1;
    for (size_t i = 0; i < sizeof plan / sizeof plan[0] && ok; i++) {
        result_t want = {0}, got = {0};
        char what[64];
        snprintf(what, sizeof what, "step %zu (batch %d, backward %d, dbp %d)", i, plan[i][0], plan[i][1], plan[i][2]);
        ok = !s_step(p.ref, &p.b, plan[i][0], plan[i][1], plan[i][2], &want) &&
             !s_step(p.g, &p.b, plan[i][0], plan[i][1], plan[i][2], &got) && s_same(&got, &want, p.b.ns, what);
        s_release(&want);
        s_release(&got);
    }
    return s_pair_end(&p, ok, 8, "12 steps");
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
    pair_t p = {0};
    CHECK(s_pair(&p, 2, 9, 43, ENGINE_BF16, B, T, 0) == 0);
    const batches_t *b = &p.b;
    const size_t bytes = b->ns * sizeof(float);
    float *s0d = NULL, *dsd[2] = {NULL, NULL};
    CHECK(cudaMalloc((void **)&s0d, bytes) == cudaSuccess);
    CHECK(cudaMalloc((void **)&dsd[0], bytes) == cudaSuccess);
    CHECK(cudaMalloc((void **)&dsd[1], bytes) == cudaSuccess);
    float *want = malloc(bytes), *got = malloc(bytes);
    int ok = 1;
    for (int i = 0; i < 8 && ok; i++) {
        const int k = i % NB, which = (i / 2) % 2;
        CHECK(cudaMemcpy(s0d, b->s0[k], bytes, cudaMemcpyHostToDevice) == cudaSuccess);
        engine_batch_t b1 = {.tokens = b->tok[k], .targets = b->tgt[k], .B = B, .T = T};
        engine_batch_t b2 = b1;
        CHECK(cudaMemset(dsd[which], 0, bytes) == cudaSuccess);
        CHECKF(!engine_cuda_run_resident(p.ref, &b1, s0d, dsd[which], err), "%s", err);
        CHECK(cudaMemcpy(want, dsd[which], bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
        CHECK(cudaMemset(dsd[which], 0, bytes) == cudaSuccess);
        CHECK(cudaMemset(dsd[1 - which], 0, bytes) == cudaSuccess);
        CHECKF(!engine_cuda_run_resident(p.g, &b2, s0d, dsd[which], err), "%s", err);
        CHECK(cudaMemcpy(got, dsd[which], bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
        const double eg = st_rel_err_ff(got, want, b->ns);
        printf("    resident step %d: loss %.9g vs %.9g, dS0 rel %.2e\n", i, b2.loss_sum, b1.loss_sum, eg);
        ok = b1.loss_sum == b2.loss_sum && eg <= 1e-5;
        if (!ok) fprintf(stderr, "resident step %d: the graph's dS0 or loss differs from the eager run\n", i);
        /* the other buffer stays untouched */
        CHECK(cudaMemcpy(got, dsd[1 - which], bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
        for (size_t j = 0; j < b->ns && ok; j++)
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
    return s_pair_end(&p, ok, 6, "8 resident steps");
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
