/*
 * test_cuda_bf16_logits.c - the bf16 CUDA engine's plain cross-entropy on
 * bf16 logits (STATETUNE_BF16_LOGITS, issue #4: the head product writes bf16
 * logits into the gradient's buffer and ce_kernel turns them into the
 * gradient in place) against the CPU engine, the fp32 reference, and against
 * the same engine with fp32 logits. The other engine tests ask for the host
 * logits (which keeps the fp32 path) or run the observer, so this is where
 * the bf16 path meets a reference.
 *
 * Runs with no host logits, as a tuning step does: the loss and dS0 must
 * meet shared/fixtures/README.md's GPU bf16 tolerances (mean loss 3e-2
 * absolute, grad_state0 5e-2 relative) with the switch on and off, and the
 * two must differ (else the switch never reached the head). Models: a fresh
 * random one (vocab 300: rows not a multiple of 8, ce_kernel's scalar path)
 * on random tokens, and where the fixtures are present the trained
 * tiny-rwkv7-834K and pysrc-rwkv7-5M (vocab 256: the 16-byte path) on a
 * Python snippet, whose confident predictions give the large logits that
 * bf16 rounds hardest. Fresh random state0 and seed on every run
 * (STATETUNE_SEED replays it).
 *
 * CTest label `gpu`: needs a CUDA device; without one every test skips.
 */
#include "harness.h"
#include "cuda_test.h"

#include "common/st_err.h"
#include "engine/engine.h"
#include "model/model.h"

#include <cuda_runtime_api.h>
#include <stdint.h>
#include <time.h>

static const double TOL_LOSS = 3e-2, TOL_GRAD = 5e-2; /* fixtures README: GPU bf16 */

/* A byte-level model's input: code like pysrc-rwkv7-5M's training data. */
static const char TEXT[] =
    "def read_config(path, defaults=None):\n"
    "    \"\"\"Read a key = value file into a dict.\"\"\"\n"
    "    result = dict(defaults or {})\n"
    "    with open(path, encoding='utf-8') as f:\n"
    "        for line in f:\n"
    "            line = line.strip()\n"
    "            if not line or line.startswith('#'):\n"
    "                continue\n"
    "            key, _, value = line.partition('=')\n"
    "            result[key.strip()] = value.strip()\n"
    "    return result\n";

/* One step (no host logits) on a fresh engine; bf16_logits NULL: the CPU
 * engine in fp32, else the CUDA engine in bf16 with STATETUNE_BF16_LOGITS
 * set to it for the engine's creation. */
static int s_run(rwkv_model_t *m, const char *bf16_logits, int B, int T, const int32_t *tok, const int32_t *tgt,
                 const float *s0, float *ds0, double *loss, int64_t *ntg)
{
    char err[ST_ERR_LEN];
    engine_opts_t opts = {.backend = bf16_logits ? ENGINE_CUDA : ENGINE_CPU,
                          .precision = bf16_logits ? ENGINE_BF16 : ENGINE_FP32, .max_batch = B, .max_ctx = T};
    if (bf16_logits) setenv("STATETUNE_BF16_LOGITS", bf16_logits, 1);
    engine_t *eng = engine_new(m, &opts, err);
    unsetenv("STATETUNE_BF16_LOGITS"); /* read at creation only */
    CHECKF(eng != NULL, "engine_new: %s", err);
    memset(ds0, 0, (size_t)m->cfg.n_layer * rwkv_state_layer_size(&m->cfg) * sizeof(float)); /* accumulated */
    engine_batch_t bt = {.tokens = tok, .targets = tgt, .B = B, .T = T, .state0 = s0, .dstate0 = ds0};
    int rc = engine_run(eng, &bt, err);
    if (rc) fprintf(stderr, "engine_run: %s\n", err);
    *loss = bt.loss_sum;
    *ntg = bt.n_targets;
    engine_destroy(&eng);
    return rc != 0;
}

/* fixture NULL: a fresh random model on random tokens; else that model on
 * TEXT's bytes (targets: the next byte). */
static int s_compare(const char *fixture)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    const uint64_t seed = st_test_seed();
    char err[ST_ERR_LEN];
    rwkv_model_t *m;
    if (fixture) {
        const char *path = st_test_fixture(fixture);
        if (!path) return ST_TEST_SKIP;
        m = rwkv_model_load(path, err);
    } else {
        rwkv_config_t cfg = {.n_layer = 3, .n_embd = 128, .n_head = 2, .head_size = 64, .vocab = 300,
                             .ffn_dim = 448, .d_decay = 16, .d_aaa = 16, .d_mv = 8, .d_gate = 32};
        m = rwkv_model_new_random(&cfg, seed, err);
    }
    CHECKF(m != NULL, "%s", err);
    const rwkv_config_t *c = &m->cfg;
    const int B = 2, T = 96, R = B * T;
    const size_t ns = (size_t)c->n_layer * rwkv_state_layer_size(c);
    int32_t tok[2 * 96], tgt[2 * 96];
    float *s0 = malloc(ns * sizeof(float)), *g[3] = {malloc(ns * 4), malloc(ns * 4), malloc(ns * 4)};
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 11;
    const int tl = (int)sizeof TEXT - 1;
    for (int i = 0; i < R; i++) {
        if (fixture) { /* row b starts b * 37 bytes in: two different windows */
            const int b = i / T, t = i % T, o = (b * 37 + t) % (tl - 1);
            tok[i] = (unsigned char)TEXT[o];
            tgt[i] = (unsigned char)TEXT[o + 1];
        } else {
            tok[i] = (int32_t)(st_test_next(&s) % (uint64_t)c->vocab);
            tgt[i] = st_test_next(&s) % 5 == 0 ? -1 : (int32_t)(st_test_next(&s) % (uint64_t)c->vocab);
        }
    }
    /* a small state: a tuned state's scale, and the trained models' own
     * predictions stay in charge */
    for (size_t i = 0; i < ns; i++) s0[i] = 0.1f * (float)(st_test_unit(&s) - 0.5);
    double loss[3];
    int64_t ntg[3];
    const char *sw[3] = {NULL, "0", "1"}, *name[3] = {"cpu fp32", "cuda bf16, fp32 logits", "cuda bf16, bf16 logits"};
    int rc = 0;
    for (int k = 0; k < 3 && !rc; k++) rc = s_run(m, sw[k], B, T, tok, tgt, s0, g[k], &loss[k], &ntg[k]);
    if (!rc) {
        const double n = ntg[0] ? (double)ntg[0] : 1.0;
        printf("%s: %lld targets, vocab %d\n", fixture ? fixture : "random model", (long long)ntg[0], c->vocab);
        for (int k = 0; k < 3; k++) {
            const double el = fabs(loss[k] - loss[0]) / n, eg = st_rel_err_ff(g[k], g[0], ns);
            printf("  %-24s mean loss %.7f  vs cpu: loss abs %.2e  grad_state0 rel %.2e\n", name[k], loss[k] / n, el,
                   eg);
            if (k == 0) continue;
            if (!(el <= TOL_LOSS)) { fprintf(stderr, "%s: loss abs err %.3e > %.1e\n", name[k], el, TOL_LOSS); rc = 1; }
            if (!(eg <= TOL_GRAD)) { fprintf(stderr, "%s: grad_state0 rel err %.3e > %.1e\n", name[k], eg, TOL_GRAD); rc = 1; }
            if (ntg[k] != ntg[0]) { fprintf(stderr, "%s: target counts differ\n", name[k]); rc = 1; }
        }
        const double dl = fabs(loss[2] - loss[1]) / n, dg = st_rel_err_ff(g[2], g[1], ns);
        printf("  bf16 vs fp32 logits: mean loss %.2e apart, grad_state0 rel %.2e\n", dl, dg);
        if (dl == 0 && dg == 0) {
            fprintf(stderr, "STATETUNE_BF16_LOGITS=1 gave the same bits as =0: the switch did not reach the head\n");
            rc = 1;
        }
    }
    free(s0);
    for (int k = 0; k < 3; k++) free(g[k]);
    rwkv_model_destroy(&m);
    return rc;
}

static int test_random_model(void) { return s_compare(NULL); }
static int test_trained_834k(void) { return s_compare("rwkv7/tiny-rwkv7-834K.safetensors"); }
static int test_trained_5m(void) { return s_compare("rwkv7/pysrc-rwkv7-5M.pth"); }

int main(int argc, char **argv)
{
    static const st_test_t tests[] = {
        {"random_model", test_random_model},
        {"trained_834k", test_trained_834k},
        {"trained_5m", test_trained_5m},
        {NULL, NULL},
    };
    return st_test_main(argc, argv, tests);
}
