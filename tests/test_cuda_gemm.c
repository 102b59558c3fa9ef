/*
 * test_cuda_gemm.c - the CUDA engine's product variants (docs/performance.md
 * 2.4): STATETUNE_GEMM_BATCH (r/k/v and the w/a LoRAs as strided-batched
 * products, forward and dX) and STATETUNE_GEMM_LT (cuBLASLt with a workspace:
 * the heuristic's first algorithm, or the fastest of its first few timed on
 * first use) must compute the same step as the plain one-call-per-product
 * engine (BATCH 0, LT 0): the same operands, fp32 accumulation, only the
 * order of the sums inside a product and of the two terms that meet in
 * lerp 3's gradient may differ. So the loss and dS0 agree to rounding: 1e-5
 * and 1e-4 relative in fp32, 1e-3 and 2e-2 in bf16 (products rounded to
 * bf16 in a different order; a product that read the wrong operand or wrote
 * the wrong buffer misses by orders of magnitude more). Three model shapes:
 * w and a LoRAs of one width (batched together), of two (apart), and of one
 * width with a narrower v LoRA (stored zero-padded and batched with them:
 * the engine's vbatch, which exact zeros must leave at the same step). Each
 * variant also runs the step three times through CUDA graphs (eager,
 * capture, replay) and the replay must give the eager run's loss exactly.
 *
 * Reproducibility of the timed choice (lt2_engines_agree_*): under LT 2
 * every engine of a process must compute the same bits as the first one on
 * the same model, whether it lives beside the first or is made after the
 * first is gone: the same loss (every step: eager, captured, replayed), the
 * same logits and final states, and dS0 to 1e-5 relative (a sum over the
 * batch made with atomic adds, whose order varies from run to run whatever
 * the products). With a choice timed per engine, two engines pick different
 * algorithms for products whose candidates run within noise of each other,
 * and their logits differ in the last bits; the process-wide choice
 * (engine_cuda_lt_choices) makes every later engine reuse the first's.
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
#include <string.h>

enum { B = 3, T = 77 }; /* T not a multiple of the WKV chunk */

typedef struct {
    double loss[3]; /* three runs of the same batch: eager, captured, replayed */
    float *ds0;     /* the first run's */
} result_t;

/* An engine made with the given variant, three steps of one batch. */
static int s_run(const rwkv_model_t *m, engine_precision_t prec, const char *batch, const char *lt,
                 const int32_t *tok, const int32_t *tgt, const float *s0, size_t ns, result_t *r)
{
    char err[ST_ERR_LEN];
    setenv("STATETUNE_GEMM_BATCH", batch, 1);
    setenv("STATETUNE_GEMM_LT", lt, 1);
    engine_opts_t opts = {.backend = ENGINE_CUDA, .precision = prec, .max_batch = B + 1, .max_ctx = T + 3};
    engine_cuda_t *e = engine_cuda_new(m, &opts, err);
    unsetenv("STATETUNE_GEMM_BATCH");
    unsetenv("STATETUNE_GEMM_LT");
    if (!e) {
        fprintf(stderr, "engine_cuda_new (batch %s, lt %s): %s\n", batch, lt, err);
        return 1;
    }
    r->ds0 = calloc(ns, sizeof(float));
    float *scratch = calloc(ns, sizeof(float));
    int rc = r->ds0 && scratch ? 0 : 1;
    for (int k = 0; k < 3 && !rc; k++) {
        engine_batch_t bt = {.tokens = tok, .targets = tgt, .B = B, .T = T, .state0 = s0,
                             .dstate0 = k == 0 ? r->ds0 : scratch};
        rc = engine_cuda_run(e, &bt, err);
        if (rc) fprintf(stderr, "engine_cuda_run (batch %s, lt %s): %s\n", batch, lt, err);
        r->loss[k] = bt.loss_sum;
    }
    if (!rc && engine_cuda_graph_replays(e) == 0) {
        fprintf(stderr, "batch %s, lt %s: no part was replayed from a graph\n", batch, lt);
        rc = 1;
    }
    free(scratch);
    engine_cuda_destroy(&e);
    return rc;
}

/* d_aaa != 32: the w and a LoRAs are not batched; d_mv < 32: v's LoRA is
 * stored zero-padded to w's width and batched with w's and a's (the
 * engine's vbatch), against the unbatched, unpadded products of batch 0 */
static int s_variants(engine_precision_t prec, int d_aaa, int d_mv)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    rwkv_config_t cfg = {3, 128, 2, 64, 300, 512, 32, d_aaa, d_mv, 64};
    rwkv_model_t *m = rwkv_model_new_random(&cfg, 11, err);
    CHECKF(m != NULL, "%s", err);
    const size_t ns = (size_t)cfg.n_layer * rwkv_state_layer_size(&cfg);
    int32_t tok[B * T], tgt[B * T];
    float *s0 = malloc(ns * sizeof(float));
    CHECK(s0 != NULL);
    uint64_t s = 99;
    st_test_tokens(&s, B * T, cfg.vocab, 0, tok, tgt);
    st_test_centered(&s, s0, ns);
    const int bf = prec == ENGINE_BF16;
    const double tol_loss = bf ? 1e-3 : 1e-5, tol_ds0 = bf ? 2e-2 : 1e-4;
    result_t ref = {{0}, NULL};
    int fail = s_run(m, prec, "0", "0", tok, tgt, s0, ns, &ref);
    const char *vars[][2] = {{"1", "0"}, {"0", "1"}, {"1", "1"}, {"1", "2"}, {"0", "2"}};
    for (size_t v = 0; v < sizeof vars / sizeof vars[0] && !fail; v++) {
        result_t r = {{0}, NULL};
        fail = s_run(m, prec, vars[v][0], vars[v][1], tok, tgt, s0, ns, &r);
        if (!fail) {
            const double el = fabs(r.loss[0] - ref.loss[0]) / fabs(ref.loss[0]);
            const double eg = st_rel_err_ff(r.ds0, ref.ds0, ns);
            printf("    %s batch %s lt %s: loss %.9g vs %.9g (rel %.2e), dS0 rel %.2e; replay %.9g\n",
                   bf ? "bf16" : "fp32", vars[v][0], vars[v][1], r.loss[0], ref.loss[0], el, eg, r.loss[2]);
            if (el > tol_loss || eg > tol_ds0 || !(eg == eg)) {
                fprintf(stderr, "batch %s lt %s: the step differs from the plain products beyond rounding\n",
                        vars[v][0], vars[v][1]);
                fail = 1;
            }
            if (r.loss[2] != r.loss[0]) {
                fprintf(stderr, "batch %s lt %s: the graph's replay differs from the eager run\n", vars[v][0],
                        vars[v][1]);
                fail = 1;
            }
        }
        free(r.ds0);
    }
    free(ref.ds0);
    free(s0);
    rwkv_model_destroy(&m);
    return fail;
}

enum { AB = 4, AT = 70 }; /* lt2_engines_agree's batch */

typedef struct {
    double loss[3];                /* three training steps of one batch: eager, captured, replayed */
    double fwd_loss;               /* the forward-only run that returns logits */
    float *ds0, *logits, *final_s; /* the first step's dS0; the forward run's (B, T, V) and (B, L, H, N, N) */
} agree_t;

static void s_agree_free(agree_t *a)
{
    free(a->ds0);
    free(a->logits);
    free(a->final_s);
}

/* Three training steps and a forward run with logits on engine e. */
static int s_agree_run(engine_cuda_t *e, const rwkv_config_t *cfg, const int32_t *tok, const int32_t *tgt,
                       const float *s0, agree_t *a)
{
    char err[ST_ERR_LEN];
    const size_t ns = (size_t)cfg->n_layer * rwkv_state_layer_size(cfg);
    a->ds0 = calloc(ns, sizeof(float));
    a->logits = malloc((size_t)AB * AT * cfg->vocab * sizeof(float));
    a->final_s = malloc((size_t)AB * ns * sizeof(float));
    float *scratch = calloc(ns, sizeof(float));
    int rc = a->ds0 && a->logits && a->final_s && scratch ? 0 : 1;
    for (int k = 0; k < 4 && !rc; k++) {
        engine_batch_t bt = {.tokens = tok, .targets = tgt, .B = AB, .T = AT, .state0 = s0};
        if (k < 3) {
            bt.dstate0 = k == 0 ? a->ds0 : scratch;
        } else {
            bt.logits = a->logits;
            bt.final_state = a->final_s;
        }
        rc = engine_cuda_run(e, &bt, err);
        if (rc) fprintf(stderr, "engine_cuda_run: %s\n", err);
        if (k < 3) a->loss[k] = bt.loss_sum;
        else a->fwd_loss = bt.loss_sum;
    }
    free(scratch);
    return rc;
}

/* 0 when b computed the same as a (see the file comment), else 1 and why. */
static int s_agree_cmp(const agree_t *a, const agree_t *b, const rwkv_config_t *cfg, const char *what)
{
    const size_t ns = (size_t)cfg->n_layer * rwkv_state_layer_size(cfg);
    const size_t nl = (size_t)AB * AT * cfg->vocab, nf = (size_t)AB * ns;
    size_t dl = 0, df = 0;
    for (size_t i = 0; i < nl; i++) dl += memcmp(&a->logits[i], &b->logits[i], sizeof(float)) != 0;
    for (size_t i = 0; i < nf; i++) df += memcmp(&a->final_s[i], &b->final_s[i], sizeof(float)) != 0;
    const double eg = st_rel_err_ff(b->ds0, a->ds0, ns);
    int same_loss = a->fwd_loss == b->fwd_loss;
    for (int k = 0; k < 3; k++) same_loss &= a->loss[k] == b->loss[k];
    printf("    %s: loss %.17g vs %.17g, logits differing %zu of %zu, final states differing %zu of %zu, dS0 rel "
           "%.2e\n",
           what, b->loss[0], a->loss[0], dl, nl, df, nf, eg);
    if (!same_loss || dl || df || !(eg <= 1e-5)) {
        fprintf(stderr, "%s computes other bits than the first engine on the same model\n", what);
        return 1;
    }
    return 0;
}

/* Under LT 2: engine 0; engine 1 beside it; engine 2 after both are gone.
 * The later engines must compute engine 0's bits and make no choice of
 * their own (every product they meet was chosen by engine 0). */
static int s_lt2_agree(engine_precision_t prec)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    /* products large enough that several of cuBLASLt's candidates are close */
    rwkv_config_t cfg = {2, 512, 8, 64, 2048, 2048, 64, 64, 32, 128};
    rwkv_model_t *m = rwkv_model_new_random(&cfg, 5, err);
    CHECKF(m != NULL, "%s", err);
    const size_t ns = (size_t)cfg.n_layer * rwkv_state_layer_size(&cfg);
    int32_t tok[AB * AT], tgt[AB * AT];
    float *s0 = malloc(ns * sizeof(float));
    CHECK(s0 != NULL);
    uint64_t s = 7;
    st_test_tokens(&s, AB * AT, cfg.vocab, 0, tok, tgt);
    st_test_centered(&s, s0, ns);
    engine_opts_t opts = {.backend = ENGINE_CUDA, .precision = prec, .max_batch = AB, .max_ctx = AT};
    agree_t r[3];
    memset(r, 0, sizeof r);
    engine_cuda_t *e[2] = {NULL, NULL};
    int fail = 0, made = 0, chosen = 0;
    setenv("STATETUNE_GEMM_LT", "2", 1);
    const int before = engine_cuda_lt_choices(NULL, 0);
    for (int i = 0; i < 3 && !fail; i++) {
        if (i == 2) { /* the third after the first two are gone */
            engine_cuda_destroy(&e[0]);
            engine_cuda_destroy(&e[1]);
        }
        engine_cuda_t **ep = &e[i < 2 ? i : 0];
        *ep = engine_cuda_new(m, &opts, err);
        if (!*ep) {
            fprintf(stderr, "engine_cuda_new: %s\n", err);
            fail = 1;
            break;
        }
        fail = s_agree_run(*ep, &cfg, tok, tgt, s0, &r[i]);
        const int now = engine_cuda_lt_choices(NULL, 0);
        if (i == 0) {
            chosen = now;
        } else if (!fail && now != chosen) {
            fprintf(stderr, "engine %d made %d cuBLASLt choices of its own instead of reusing engine 0's\n", i,
                    now - chosen);
            fail = 1;
        }
        made = now - before;
    }
    unsetenv("STATETUNE_GEMM_LT");
    engine_cuda_destroy(&e[0]);
    engine_cuda_destroy(&e[1]);
    if (!fail) {
        printf("    %s: %d cuBLASLt choices made by engine 0 and reused\n", prec == ENGINE_BF16 ? "bf16" : "fp32",
               made);
        fail |= s_agree_cmp(&r[0], &r[1], &cfg, "engine 1 (beside engine 0)");
        fail |= s_agree_cmp(&r[0], &r[2], &cfg, "engine 2 (after engines 0 and 1 were destroyed)");
        if (r[0].loss[2] != r[0].loss[0]) {
            fprintf(stderr, "engine 0's graph replay differs from its eager run\n");
            fail = 1;
        }
    }
    for (int i = 0; i < 3; i++) s_agree_free(&r[i]);
    free(s0);
    rwkv_model_destroy(&m);
    return fail;
}

static int lt2_engines_agree_fp32(void) { return s_lt2_agree(ENGINE_FP32); }
static int lt2_engines_agree_bf16(void) { return s_lt2_agree(ENGINE_BF16); }

static int fp32_variants(void) { return s_variants(ENGINE_FP32, 32, 32); }
static int bf16_variants(void) { return s_variants(ENGINE_BF16, 32, 32); }
static int bf16_variants_lora_widths_differ(void) { return s_variants(ENGINE_BF16, 16, 32); }
static int fp32_variants_v_padded(void) { return s_variants(ENGINE_FP32, 32, 16); }
static int bf16_variants_v_padded(void) { return s_variants(ENGINE_BF16, 32, 16); }

int main(int argc, char **argv)
{
    static const st_test_t tests[] = {
        {"fp32_variants", fp32_variants},
        {"bf16_variants", bf16_variants},
        {"bf16_variants_lora_widths_differ", bf16_variants_lora_widths_differ},
        {"fp32_variants_v_padded", fp32_variants_v_padded},
        {"bf16_variants_v_padded", bf16_variants_v_padded},
        {"lt2_engines_agree_fp32", lt2_engines_agree_fp32},
        {"lt2_engines_agree_bf16", lt2_engines_agree_bf16},
        {NULL, NULL},
    };
    return st_test_main(argc, argv, tests);
}
