/*
 * test_cuda_engine.c - the CUDA engine (engine/engine_cuda.h, through
 * engine.h) against the CPU engine, the fp32 reference, on a fresh random
 * model and fresh random tokens, targets (some masked with -1) and state0 on
 * every run (seed printed; STATETUNE_SEED replays it). T is not a multiple of
 * the WKV chunk. Every output buffer is poisoned with NaN before the run, so
 * an element left unwritten fails. Tolerances are shared/fixtures/README.md's
 * for GPU fp32 and GPU bf16 (the CPU engine itself meets the fp32 ones against
 * the float64 fixtures; `statetune-worker verify --backend cuda` checks the
 * CUDA engine against those fixtures directly, see tests/gpu.sh).
 *
 * CTest label `gpu`: needs a CUDA device; without one every test skips.
 */
#include "harness.h"

#include "common/st_err.h"
#include "engine/engine.h"
#include "engine/engine_cuda.h"
#include "model/model.h"

#include <cuda_runtime_api.h>
#include <stdint.h>
#include <time.h>

static uint64_t s_next(uint64_t *s)
{
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static int s_have_gpu(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("skipped: no CUDA device\n");
        return 0;
    }
    return 1;
}

typedef struct {
    float *logits, *final_state, *dstate0;
    double loss;
    int64_t n_targets, n_correct;
} outputs_t;

static int s_run(rwkv_model_t *m, engine_backend_t be, engine_precision_t prec, int B, int T,
                 const int32_t *tok, const int32_t *tgt, const float *s0, outputs_t *o)
{
    const rwkv_config_t *c = &m->cfg;
    char err[ST_ERR_LEN];
    engine_opts_t opts = {.backend = be, .precision = prec, .max_batch = B, .max_ctx = T + 3};
    engine_t *eng = engine_new(m, &opts, err);
    if (!eng) {
        fprintf(stderr, "engine_new: %s\n", err);
        return 1;
    }
    size_t nl = (size_t)B * T * c->vocab, nf = (size_t)B * c->n_layer * rwkv_state_layer_size(c);
    size_t ns = (size_t)c->n_layer * rwkv_state_layer_size(c);
    o->logits = malloc(nl * sizeof(float));
    o->final_state = malloc(nf * sizeof(float));
    o->dstate0 = malloc(ns * sizeof(float));
    for (size_t i = 0; i < nl; i++) o->logits[i] = NAN;
    for (size_t i = 0; i < nf; i++) o->final_state[i] = NAN;
    memset(o->dstate0, 0, ns * sizeof(float)); /* accumulated (+=) by contract */
    engine_batch_t bt = {.tokens = tok, .targets = tgt, .B = B, .T = T, .state0 = s0,
                         .logits = o->logits, .final_state = o->final_state, .dstate0 = o->dstate0};
    int rc = engine_run(eng, &bt, err);
    if (rc) fprintf(stderr, "engine_run: %s\n", err);
    if (!rc && be == ENGINE_CUDA) printf("    cuda peak memory %.1f MB\n", engine_peak_mem_bytes(eng) / 1e6);
    o->loss = bt.loss_sum;
    o->n_targets = bt.n_targets;
    o->n_correct = bt.n_correct;
    engine_destroy(&eng);
    return rc != 0;
}

static void s_free(outputs_t *o)
{
    free(o->logits);
    free(o->final_state);
    free(o->dstate0);
}

/* Compares the CUDA engine at precision prec with the CPU engine on model m
 * (a fresh random one when fixture is NULL). */
static int s_compare_model(const char *fixture, engine_precision_t prec, double tl, double tloss, double tg,
                           double ts)
{
    if (!s_have_gpu()) return ST_TEST_SKIP;
    const char *env = getenv("STATETUNE_SEED");
    uint64_t seed = env && *env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("seed %llu (STATETUNE_SEED replays it)\n", (unsigned long long)seed);
    rwkv_config_t cfg0 = {.n_layer = 3, .n_embd = 128, .n_head = 2, .head_size = 64, .vocab = 300,
                          .ffn_dim = 448, .d_decay = 16, .d_aaa = 16, .d_mv = 8, .d_gate = 32};
    char err[ST_ERR_LEN];
    rwkv_model_t *m = NULL;
    if (fixture) {
        const char *path = st_test_fixture(fixture);
        if (!path) return ST_TEST_SKIP;
        m = rwkv_model_load(path, err);
    } else {
        const char *shape = getenv("STATETUNE_TEST_RANDOM_SHAPE"); /* diagnostics: "L,C,V,F" */
        if (shape && *shape) {
            sscanf(shape, "%d,%d,%d,%d", &cfg0.n_layer, &cfg0.n_embd, &cfg0.vocab, &cfg0.ffn_dim);
            cfg0.n_head = cfg0.n_embd / 64;
        }
        m = rwkv_model_new_random(&cfg0, seed, err);
    }
    CHECKF(m != NULL, "%s", err);
    const rwkv_config_t cfg = m->cfg;
    int B = 2, T = fixture ? 64 : 37;
    /* diagnostics: STATETUNE_TEST_BT="B,T" overrides the shape */
    const char *bt_env = getenv("STATETUNE_TEST_BT");
    if (bt_env && *bt_env) sscanf(bt_env, "%d,%d", &B, &T);
    size_t R = (size_t)B * T, ns = (size_t)cfg.n_layer * rwkv_state_layer_size(&cfg);
    int32_t *tok = malloc(R * 4), *tgt = malloc(R * 4);
    float *s0 = malloc(ns * sizeof(float));
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
    for (size_t i = 0; i < R; i++) {
        tok[i] = (int32_t)(s_next(&s) % (uint64_t)cfg.vocab);
        tgt[i] = (s_next(&s) % 5 == 0) ? -1 : (int32_t)(s_next(&s) % (uint64_t)cfg.vocab);
    }
    for (size_t i = 0; i < ns; i++) s0[i] = (float)((double)(s_next(&s) >> 11) / 9007199254740992.0 - 0.5);

    outputs_t cpu = {0}, gpu = {0};
    int rc = s_run(m, ENGINE_CPU, ENGINE_FP32, B, T, tok, tgt, s0, &cpu);
    if (!rc) rc = s_run(m, ENGINE_CUDA, prec, B, T, tok, tgt, s0, &gpu);
    if (rc) goto done;
    size_t nl = R * cfg.vocab, nf = (size_t)B * ns;
    double el = st_rel_err_ff(gpu.logits, cpu.logits, nl);
    double eg = st_rel_err_ff(gpu.dstate0, cpu.dstate0, ns);
    double es = st_rel_err_ff(gpu.final_state, cpu.final_state, nf);
    double eloss = fabs(gpu.loss - cpu.loss) / (double)(cpu.n_targets ? cpu.n_targets : 1);
    printf("%s: logits   cuda % .6f % .6f % .6f   cpu % .6f % .6f % .6f\n", prec ? "bf16" : "fp32",
           gpu.logits[0], gpu.logits[1], gpu.logits[2], cpu.logits[0], cpu.logits[1], cpu.logits[2]);
    printf("      dstate0  cuda % .3e % .3e % .3e   cpu % .3e % .3e % .3e\n", gpu.dstate0[0],
           gpu.dstate0[1], gpu.dstate0[2], cpu.dstate0[0], cpu.dstate0[1], cpu.dstate0[2]);
    printf("      mean loss cuda %.6f cpu %.6f (%lld targets); correct %lld vs %lld\n",
           gpu.loss / cpu.n_targets, cpu.loss / cpu.n_targets, (long long)cpu.n_targets,
           (long long)gpu.n_correct, (long long)cpu.n_correct);
    printf("      rel err: logits %.2e  grad_state0 %.2e  final_state %.2e; loss abs %.2e\n", el, eg, es,
           eloss);
    if (!(el <= tl)) { fprintf(stderr, "logits rel err %.3e > %.1e\n", el, tl); rc = 1; }
    if (!(eg <= tg)) { fprintf(stderr, "grad_state0 rel err %.3e > %.1e\n", eg, tg); rc = 1; }
    if (!(es <= ts)) { fprintf(stderr, "final_state rel err %.3e > %.1e\n", es, ts); rc = 1; }
    if (!(eloss <= tloss)) { fprintf(stderr, "loss abs err %.3e > %.1e\n", eloss, tloss); rc = 1; }
    if (gpu.n_targets != cpu.n_targets) { fprintf(stderr, "target counts differ\n"); rc = 1; }
    size_t hnn = rwkv_state_layer_size(&cfg);
    printf("      grad_state0 rel err by layer:");
    for (int l = 0; l < cfg.n_layer; l++)
        printf(" %.2e", st_rel_err_ff(gpu.dstate0 + l * hnn, cpu.dstate0 + l * hnn, hnn));
    printf("\n");
done:
    s_free(&cpu);
    s_free(&gpu);
    free(tok);
    free(tgt);
    free(s0);
    rwkv_model_destroy(&m);
    return rc;
}

/* shared/fixtures/README.md: GPU fp32 1e-4 / 1e-4 / 1e-3 / 1e-4 */
static int test_fp32_matches_cpu(void) { return s_compare_model(NULL, ENGINE_FP32, 1e-4, 1e-4, 1e-3, 1e-4); }

/* GPU bf16 weights and activations, fp32 state: 3e-2 / 3e-2 / 5e-2 / 3e-2 */
static int test_bf16_matches_cpu(void) { return s_compare_model(NULL, ENGINE_BF16, 3e-2, 3e-2, 5e-2, 3e-2); }

/* The same on the fixtures' random 4 x 256 model (bf16 weights), fresh inputs. */
static int test_bf16_small_fixture(void)
{
    return s_compare_model("rwkv7/small.safetensors", ENGINE_BF16, 3e-2, 3e-2, 5e-2, 3e-2);
}

/* The DBP correlation Q (engine_batch_t.dbp_q) from the CUDA engine against
 * the CPU engine's, on sampled rows only, fp32 and bf16. */
static int s_dbp_run(rwkv_model_t *m, engine_backend_t be, engine_precision_t prec, int B, int T,
                     const int32_t *tok, const float *s0, const uint8_t *rows, double *q)
{
    char err[ST_ERR_LEN];
    engine_opts_t opts = {.backend = be, .precision = prec, .max_batch = B, .max_ctx = T};
    engine_t *eng = engine_new(m, &opts, err);
    if (!eng) {
        fprintf(stderr, "engine_new: %s\n", err);
        return 1;
    }
    engine_batch_t bt = {.tokens = tok, .B = B, .T = T, .state0 = s0, .dbp_rows = rows, .dbp_q = q};
    int rc = engine_run(eng, &bt, err);
    if (rc) fprintf(stderr, "engine_run: %s\n", err);
    engine_destroy(&eng);
    return rc != 0;
}

static int test_dbp_matches_cpu(void)
{
    if (!s_have_gpu()) return ST_TEST_SKIP;
    const char *env = getenv("STATETUNE_SEED");
    uint64_t seed = env && *env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("seed %llu (STATETUNE_SEED replays it)\n", (unsigned long long)seed);
    rwkv_config_t cfg = {.n_layer = 2, .n_embd = 128, .n_head = 2, .head_size = 64, .vocab = 300,
                         .ffn_dim = 448, .d_decay = 16, .d_aaa = 16, .d_mv = 8, .d_gate = 32};
    char err[ST_ERR_LEN];
    rwkv_model_t *m = rwkv_model_new_random(&cfg, seed, err);
    CHECKF(m != NULL, "%s", err);
    const int B = 3, T = 37;
    const uint8_t rows[3] = {1, 0, 1};
    size_t R = (size_t)B * T, ns = (size_t)cfg.n_layer * rwkv_state_layer_size(&cfg);
    int32_t *tok = malloc(R * 4);
    float *s0 = calloc(ns, sizeof(float));
    double *qc = calloc(ns, sizeof(double)), *qg = malloc(ns * sizeof(double));
    uint64_t s = seed | 1;
    for (size_t i = 0; i < R; i++) tok[i] = (int32_t)(s_next(&s) % (uint64_t)cfg.vocab);
    int rc = s_dbp_run(m, ENGINE_CPU, ENGINE_FP32, B, T, tok, s0, rows, qc);
    const double tol[2] = {1e-5, 5e-2};
    for (int prec = 0; prec < 2 && !rc; prec++) {
        for (size_t i = 0; i < ns; i++) qg[i] = 0; /* accumulated (+=) by contract */
        rc = s_dbp_run(m, ENGINE_CUDA, prec ? ENGINE_BF16 : ENGINE_FP32, B, T, tok, s0, rows, qg);
        if (rc) break;
        double num = 0, den = 0;
        for (size_t i = 0; i < ns; i++) {
            num += (qg[i] - qc[i]) * (qg[i] - qc[i]);
            den += qc[i] * qc[i];
        }
        double e = sqrt(num / den);
        printf("%s dbp_q: cuda % .6e % .6e   cpu % .6e % .6e   rel err %.2e\n", prec ? "bf16" : "fp32", qg[0],
               qg[65], qc[0], qc[65], e);
        if (!(e <= tol[prec])) {
            fprintf(stderr, "dbp_q rel err %.3e > %.1e\n", e, tol[prec]);
            rc = 1;
        }
    }
    free(tok);
    free(s0);
    free(qc);
    free(qg);
    rwkv_model_destroy(&m);
    return rc;
}

/* Recompute mode (one slot of per-layer activations, each layer's forward
 * run again in the backward) gives the plain mode's results: the recomputed
 * forward is the same kernels on the same inputs. Only dS0, summed with
 * atomics, may differ in the last bits. */
static int test_recompute_matches_plain(void)
{
    if (!s_have_gpu()) return ST_TEST_SKIP;
    rwkv_config_t cfg = {.n_layer = 3, .n_embd = 128, .n_head = 2, .head_size = 64, .vocab = 300,
                         .ffn_dim = 448, .d_decay = 16, .d_aaa = 16, .d_mv = 8, .d_gate = 32};
    char err[ST_ERR_LEN];
    uint64_t seed = (uint64_t)time(NULL);
    rwkv_model_t *m = rwkv_model_new_random(&cfg, seed, err);
    CHECKF(m != NULL, "%s", err);
    const int B = 2, T = 37;
    size_t R = (size_t)B * T, ns = (size_t)cfg.n_layer * rwkv_state_layer_size(&cfg);
    size_t nl = R * cfg.vocab, nf = (size_t)B * ns;
    int32_t *tok = malloc(R * 4), *tgt = malloc(R * 4);
    float *s0 = malloc(ns * 4);
    float *out[2][3];
    double loss[2] = {0, 0};
    uint64_t s = seed | 1;
    for (size_t i = 0; i < R; i++) {
        tok[i] = (int32_t)(s_next(&s) % (uint64_t)cfg.vocab);
        tgt[i] = (int32_t)(s_next(&s) % (uint64_t)cfg.vocab);
    }
    for (size_t i = 0; i < ns; i++) s0[i] = (float)((double)(s_next(&s) >> 11) / 9007199254740992.0 - 0.5);
    int rc = 0;
    for (int prec = 0; prec < 2 && !rc; prec++) {
        for (int mode = 0; mode < 2 && !rc; mode++) {
            engine_opts_t opts = {.backend = ENGINE_CUDA, .precision = prec ? ENGINE_BF16 : ENGINE_FP32,
                                  .max_batch = B, .max_ctx = T};
            engine_cuda_t *e = engine_cuda_new_mode(m, &opts, mode, err);
            CHECKF(e != NULL, "%s", err);
            CHECK(engine_cuda_recomputes(e) == mode);
            out[mode][0] = malloc(nl * 4);
            out[mode][1] = calloc(ns, 4);
            out[mode][2] = malloc(nf * 4);
            engine_batch_t bt = {.tokens = tok, .targets = tgt, .B = B, .T = T, .state0 = s0,
                                 .logits = out[mode][0], .dstate0 = out[mode][1], .final_state = out[mode][2]};
            rc = engine_cuda_run(e, &bt, err);
            if (rc) fprintf(stderr, "engine_cuda_run: %s\n", err);
            if (!rc) printf("%s %s: loss %.6f, peak %.2f MB\n", prec ? "bf16" : "fp32", mode ? "recompute" : "plain",
                            bt.loss_sum, engine_cuda_peak_mem_bytes(e) / 1e6);
            loss[mode] = bt.loss_sum;
            engine_cuda_destroy(&e);
        }
        if (!rc) {
            double el = st_rel_err_ff(out[1][0], out[0][0], nl), eg = st_rel_err_ff(out[1][1], out[0][1], ns);
            double es = st_rel_err_ff(out[1][2], out[0][2], nf);
            printf("    recompute vs plain: logits %.2e grad_state0 %.2e final_state %.2e loss %.2e\n", el, eg, es,
                   fabs(loss[1] - loss[0]));
            if (!(el == 0 && es == 0 && eg <= 1e-6 && loss[1] == loss[0])) {
                fprintf(stderr, "recompute mode differs from plain mode\n");
                rc = 1;
            }
        }
        for (int mode = 0; mode < 2; mode++)
            for (int k = 0; k < 3; k++) free(out[mode][k]);
    }
    free(tok);
    free(tgt);
    free(s0);
    rwkv_model_destroy(&m);
    return rc;
}

/* A batch larger than the plan is refused with a sentence, not a crash. */
static int test_refuses_oversized_batch(void)
{
    if (!s_have_gpu()) return ST_TEST_SKIP;
    rwkv_config_t cfg = {.n_layer = 1, .n_embd = 64, .n_head = 1, .head_size = 64, .vocab = 50,
                         .ffn_dim = 128, .d_decay = 8, .d_aaa = 8, .d_mv = 8, .d_gate = 8};
    char err[ST_ERR_LEN];
    rwkv_model_t *m = rwkv_model_new_random(&cfg, 1, err);
    CHECKF(m != NULL, "%s", err);
    engine_opts_t opts = {.backend = ENGINE_CUDA, .precision = ENGINE_FP32, .max_batch = 1, .max_ctx = 4};
    engine_t *eng = engine_new(m, &opts, err);
    CHECKF(eng != NULL, "%s", err);
    int32_t tok[10] = {0};
    float s0[64 * 64] = {0};
    engine_batch_t bt = {.tokens = tok, .B = 1, .T = 10, .state0 = s0};
    int rc = engine_run(eng, &bt, err);
    engine_destroy(&eng);
    rwkv_model_destroy(&m);
    CHECK(rc == ST_EINVAL);
    CHECK(eng == NULL);
    printf("refused: %s\n", err);
    return 0;
}

int main(int argc, char **argv)
{
    static const st_test_t tests[] = {
        {"fp32_matches_cpu", test_fp32_matches_cpu},
        {"bf16_matches_cpu", test_bf16_matches_cpu},
        {"bf16_small_fixture", test_bf16_small_fixture},
        {"dbp_matches_cpu", test_dbp_matches_cpu},
        {"recompute_matches_plain", test_recompute_matches_plain},
        {"refuses_oversized_batch", test_refuses_oversized_batch},
        {NULL, NULL},
    };
    return st_test_main(argc, argv, tests);
}
