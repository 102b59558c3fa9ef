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
 * A non-finite loss is refused (ST_ENUMERIC) before any dS0 reaches the
 * caller, although the backward is queued before the losses are read.
 *
 * The resident tuning parameters (engine_params_*): one optimizer step on
 * the GPU against the CPU's (bit-identical Adam without clipping), and a
 * short tuning loop with DBP against the CPU loop. DBP on the device
 * (engine_params_q, engine_params_update_R): R's rule on the GPU against the
 * host rule on the same Q, a 4-step DBP loop with Q and R resident on both
 * backends, and a loop stopped after 2 steps and restored into a fresh
 * engine (what a checkpoint carries) against the uninterrupted one.
 *
 * CTest label `gpu`: needs a CUDA device; without one every test skips.
 */
#include "harness.h"
#include "cuda_test.h"

#include "common/st_err.h"
#include "engine/dbp_param.h"
#include "engine/engine.h"
#include "engine/engine_cuda.h"
#include "model/model.h"

#include <cuda_runtime_api.h>
#include <stdint.h>

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

/* The small random model most tests run: n_layer x 128 (2 heads), vocab 300. */
static rwkv_config_t s_small_config(int n_layer)
{
    rwkv_config_t c = {.n_layer = n_layer, .n_embd = 128, .n_head = 2, .head_size = 64, .vocab = 300,
                       .ffn_dim = 448, .d_decay = 16, .d_aaa = 16, .d_mv = 8, .d_gate = 32};
    return c;
}

/* Compares the CUDA engine at precision prec with the CPU engine on model m
 * (a fresh random one when fixture is NULL). */
static int s_compare_model(const char *fixture, engine_precision_t prec, double tl, double tloss, double tg,
                           double ts)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    const uint64_t seed = st_test_seed();
    rwkv_config_t cfg0 = s_small_config(3);
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
    st_test_tokens(&s, R, cfg.vocab, 5, tok, tgt);
    st_test_centered(&s, s0, ns);

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
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    const uint64_t seed = st_test_seed();
    rwkv_config_t cfg = s_small_config(2);
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
    st_test_tokens(&s, R, cfg.vocab, 0, tok, NULL);
    int rc = s_dbp_run(m, ENGINE_CPU, ENGINE_FP32, B, T, tok, s0, rows, qc);
    const double tol[2] = {1e-5, 5e-2};
    for (int prec = 0; prec < 2 && !rc; prec++) {
        for (size_t i = 0; i < ns; i++) qg[i] = 0; /* accumulated (+=) by contract */
        rc = s_dbp_run(m, ENGINE_CUDA, prec ? ENGINE_BF16 : ENGINE_FP32, B, T, tok, s0, rows, qg);
        if (rc) break;
        double e = st_rel_err_dd(qg, qc, ns);
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
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    rwkv_config_t cfg = s_small_config(3);
    char err[ST_ERR_LEN];
    const uint64_t seed = st_test_seed();
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
    st_test_tokens(&s, R, cfg.vocab, 0, tok, tgt);
    st_test_centered(&s, s0, ns);
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
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
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

/* A non-finite loss is refused with ST_ENUMERIC and leaves the caller's dS0
 * untouched, although the engine queues the backward before it reads the
 * losses; eager, captured and replayed runs alike (three runs of one key),
 * and the engine trains normally afterwards. */
static int test_refuses_nonfinite_loss(void)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    enum { NB = 2, NT = 20 };
    rwkv_config_t cfg = s_small_config(2);
    char err[ST_ERR_LEN];
    rwkv_model_t *m = rwkv_model_new_random(&cfg, 3, err);
    CHECKF(m != NULL, "%s", err);
    const size_t ns = (size_t)cfg.n_layer * rwkv_state_layer_size(&cfg);
    int32_t tok[NB * NT], tgt[NB * NT];
    float *s0 = malloc(ns * sizeof(float)), *ds0 = malloc(ns * sizeof(float));
    CHECK(s0 && ds0);
    uint64_t s = st_test_seed();
    st_test_tokens(&s, NB * NT, cfg.vocab, 0, tok, tgt);
    int ok = 1;
    for (int prec = 0; prec < 2 && ok; prec++) {
        engine_opts_t opts = {.backend = ENGINE_CUDA, .precision = prec ? ENGINE_BF16 : ENGINE_FP32,
                              .max_batch = NB, .max_ctx = NT};
        engine_cuda_t *e = engine_cuda_new(m, &opts, err);
        CHECKF(e != NULL, "%s", err);
        for (int run = 0; run < 4 && ok; run++) {
            const int bad = run < 3; /* three refused runs of one graph key, then a good one */
            st_test_centered(&s, s0, ns);
            if (bad) s0[5] = NAN; /* layer 0, head 0: every row's loss turns NaN */
            /* refused runs: any write shows against 7; the good run adds its
             * gradient to 0, where even a tiny one shows */
            const float fill = bad ? 7.0f : 0.0f;
            for (size_t i = 0; i < ns; i++) ds0[i] = fill;
            engine_batch_t bt = {.tokens = tok, .targets = tgt, .B = NB, .T = NT, .state0 = s0, .dstate0 = ds0};
            const int rc = engine_cuda_run(e, &bt, err);
            size_t touched = 0;
            for (size_t i = 0; i < ns; i++) touched += !(ds0[i] == fill);
            printf("    %s run %d: rc %d, loss %g, %zu of %zu dS0 elements changed%s%s\n", prec ? "bf16" : "fp32", run,
                   rc, bt.loss_sum, touched, ns, rc ? ": " : "", rc ? err : "");
            if (bad) {
                ok = rc == ST_ENUMERIC && touched == 0;
                if (!ok) fprintf(stderr, "a non-finite loss was not refused, or dS0 was written\n");
            } else {
                ok = rc == ST_OK && isfinite(bt.loss_sum) && touched > ns / 2;
                if (!ok) fprintf(stderr, "the engine did not train normally after refusing non-finite losses\n");
            }
        }
        engine_cuda_destroy(&e);
    }
    free(s0);
    free(ds0);
    rwkv_model_destroy(&m);
    CHECK(ok);
    return 0;
}

/* ---- resident tuning parameters (engine_params_*) on the GPU ----------------
 * The CUDA parameters (engine/cuda/engine_cuda_params.cu) against the CPU
 * ones (engine.c), which test_params.c ties bit for bit to the host loop. */

/* What every resident test starts from: a small random model, tokens,
 * targets (one in five masked), an initial A and the identity (DBP's first
 * R), drawn from the run's printed seed. */
typedef struct {
    uint64_t seed;
    rwkv_model_t *m;
    size_t ns;
    int nblk, N, B, T;
    int32_t *tok, *tgt;
    float *A0, *I;
} rfix_t;

static void s_rfix_free(rfix_t *f)
{
    rwkv_model_destroy(&f->m);
    free(f->tok), free(f->tgt), free(f->A0), free(f->I);
}

/* The fixture for a B x T batch: 0, ST_TEST_SKIP without a GPU, 1 (said
 * on stderr, nothing left allocated) when it cannot be built. */
static int s_rfix(rfix_t *f, int B, int T)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    f->seed = st_test_seed();
    rwkv_config_t cfg = s_small_config(3);
    char err[ST_ERR_LEN];
    f->m = rwkv_model_new_random(&cfg, f->seed, err);
    if (!f->m) {
        fprintf(stderr, "rwkv_model_new_random: %s\n", err);
        return 1;
    }
    f->B = B;
    f->T = T;
    f->nblk = cfg.n_layer * cfg.n_head;
    f->N = cfg.head_size;
    f->ns = (size_t)f->nblk * f->N * f->N;
    f->tok = malloc((size_t)B * T * 4);
    f->tgt = malloc((size_t)B * T * 4);
    f->A0 = malloc(f->ns * 4);
    f->I = malloc(f->ns * 4);
    if (!f->tok || !f->tgt || !f->A0 || !f->I) {
        fprintf(stderr, "out of memory for the fixture\n");
        s_rfix_free(f);
        return 1;
    }
    uint64_t s = f->seed * 0x9E3779B97F4A7C15ull + 3;
    st_test_tokens(&s, (size_t)B * T, cfg.vocab, 5, f->tok, f->tgt);
    st_test_centered(&s, f->A0, f->ns);
    dbp_identity(f->nblk, f->N, f->I);
    return 0;
}

/* An fp32 engine on the CUDA (cuda 1) or the CPU backend with resident
 * parameters (DBP when dbp), set to A and R when A is not NULL; NULL (said on
 * stderr) on failure. */
static engine_t *s_reng(rfix_t *f, int cuda, int dbp, const float *A, const float *R)
{
    char err[ST_ERR_LEN];
    engine_opts_t o = {.backend = cuda ? ENGINE_CUDA : ENGINE_CPU, .precision = ENGINE_FP32, .max_batch = f->B,
                       .max_ctx = f->T, .threads = 1};
    engine_t *e = engine_new(f->m, &o, err);
    if (!e) {
        fprintf(stderr, "engine_new: %s\n", err);
        return NULL;
    }
    if (engine_params_init(e, dbp, 0.9, 0.99, 1e-8, err) != ST_OK ||
        (A && engine_params_set(e, A, R, err) != ST_OK)) {
        fprintf(stderr, "the resident parameters: %s\n", err);
        engine_destroy(&e);
    }
    return e;
}

/* The resident A and R of e, into host buffers of ns. */
static int s_get_ar(engine_t *e, float *A, float *R, char *err)
{
    int rc = engine_params_get(e, A, NULL, err);
    return rc ? rc : engine_params_get_R(e, R, err);
}

/* One N x N block of R near the identity: I + uniform(-0.05, 0.05). */
static void s_near_identity(uint64_t *s, int N, float *Rb)
{
    for (int i = 0; i < N * N; i++) Rb[i] = (i / N == i % N ? 1.0f : 0.0f) + (float)((st_test_unit(s) - 0.5) * 0.1);
}

/* ||a - b|| / ||b - base|| (how far apart two updates of base landed). */
static double s_rel_update(const float *a, const float *b, const float *base, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += ((double)b[i] - base[i]) * ((double)b[i] - base[i]);
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* One optimizer step from the same A, moments and gradient (set from the
 * host) on both backends. Without clipping and DBP, Adam's arithmetic is the
 * same double operations in the same order (kernels/cuda/adam.cuh), so A
 * and the moments must come out bit for bit; with clipping the norm is a
 * different summation order (1e-6 allowed); with DBP, S0 = A R and
 * dA = dS0 R^T are cuBLAS products (1e-5 allowed). The divergence check
 * finds the same element. */
static int test_resident_step_exact(void)
{
    rfix_t f = {0};
    int rc = s_rfix(&f, 2, 16);
    if (rc) return rc;
    size_t n = f.ns;
    char err[ST_ERR_LEN];
    float *g = malloc(n * 4), *m = malloc(n * 4), *v = malloc(n * 4), *R = malloc(n * 4);
    float *out[2][4];
    CHECK(g && m && v && R);
    uint64_t s = f.seed | 1;
    for (size_t i = 0; i < n; i++) {
        g[i] = (float)((st_test_unit(&s) - 0.5) * 1e-2);
        m[i] = (float)((st_test_unit(&s) - 0.5) * 1e-3);
        v[i] = (float)(st_test_unit(&s) * 1e-5);
    }
    for (int b = 0; b < f.nblk; b++) s_near_identity(&s, f.N, R + (size_t)b * f.N * f.N);
    /* case: 0 plain, 1 clipped, 2 DBP (clipped) */
    const double tol[3] = {0, 1e-6, 1e-5};
    const double max_norm[3] = {0, 0.05, 0.05};
    for (int c = 0; c < 3 && !rc; c++) {
        int dbp = c == 2;
        double norm[2] = {0, 0};
        for (int be = 0; be < 2; be++) {
            engine_t *e = s_reng(&f, be, dbp, f.A0, dbp ? R : NULL);
            CHECK(e != NULL);
            CHECK(engine_params_grad_on_device(e) == be);
            for (int k = 0; k < 4; k++) out[be][k] = malloc(n * 4);
            CHECKF(engine_params_set_adam(e, m, v, 41, err) == ST_OK, "%s", err);
            CHECKF(engine_params_get(e, NULL, out[be][3], err) == ST_OK, "%s", err); /* S0 before the step */
            CHECKF(engine_params_set_grad(e, g, err) == ST_OK, "%s", err);
            engine_step_info_t info;
            CHECKF(engine_params_step(e, 3.0, max_norm[c], 0.01, &info, err) == ST_OK, "%s", err);
            CHECK(info.finite);
            norm[be] = info.grad_norm;
            int64_t t = 0;
            CHECKF(engine_params_get(e, out[be][0], NULL, err) == ST_OK, "%s", err);
            CHECKF(engine_params_get_adam(e, out[be][1], out[be][2], &t, err) == ST_OK, "%s", err);
            CHECK(t == 42);
            engine_destroy(&e);
        }
        double ea = s_rel_update(out[1][0], out[0][0], f.A0, n), em = st_rel_err_ff(out[1][1], out[0][1], n);
        double ev = st_rel_err_ff(out[1][2], out[0][2], n), es = st_rel_err_ff(out[1][3], out[0][3], n);
        printf("%-7s norm cuda %.12g cpu %.12g; A update rel err %.2e, m %.2e, v %.2e, S0 %.2e\n",
               c == 0 ? "plain" : c == 1 ? "clipped" : "dbp", norm[1], norm[0], ea, em, ev, es);
        if (c == 0 && (memcmp(out[1][0], out[0][0], n * 4) || memcmp(out[1][1], out[0][1], n * 4) ||
                       memcmp(out[1][2], out[0][2], n * 4))) {
            fprintf(stderr, "plain Adam: the CUDA step is not bit-identical to the CPU step\n");
            rc = 1;
        }
        /* a double sum of the same floats, in another order; under DBP
         * the floats themselves come from different sgemm orders */
        if (!(fabs(norm[1] - norm[0]) <= (dbp ? 1e-5 : 1e-12) * norm[0])) {
            fprintf(stderr, "gradient norms differ: %.12g vs %.12g\n", norm[1], norm[0]);
            rc = 1;
        }
        if (!(ea <= tol[c] && em <= tol[c] && ev <= tol[c] && es <= (dbp ? 1e-6 : 0))) {
            fprintf(stderr, "%s step differs beyond %.0e\n", c == 1 ? "clipped" : "dbp", tol[c]);
            rc = 1;
        }
        for (int be = 0; be < 2; be++)
            for (int k = 0; k < 4; k++) free(out[be][k]);
    }
    /* the divergence check on the device: the first non-finite element, else the largest */
    for (int be = 0; be < 2 && !rc; be++) {
        float *A = malloc(n * 4);
        memcpy(A, f.A0, n * 4);
        A[n / 2] = 7;
        A[n - 1] = -7;
        engine_t *e = s_reng(&f, be, 0, A, NULL);
        CHECK(e != NULL);
        double big = 0;
        size_t at = 0;
        CHECK(engine_params_state_absmax(e, &big, &at, err) == ST_OK);
        printf("%s absmax %g at %zu\n", be ? "cuda" : "cpu", big, at);
        CHECK(big == 7 && at == n / 2);
        A[n - 3] = NAN;
        A[n - 2] = -INFINITY;
        CHECK(engine_params_set(e, A, NULL, err) == ST_OK);
        CHECK(engine_params_state_absmax(e, &big, &at, err) == ST_OK);
        printf("%s absmax %g at %zu\n", be ? "cuda" : "cpu", big, at);
        CHECK(isnan(big) && at == n - 3);
        /* a NaN gradient: no step, A untouched */
        CHECK(engine_params_set_grad(e, A, err) == ST_OK);
        engine_step_info_t info;
        CHECK(engine_params_step(e, 1.0, 1.0, 0.1, &info, err) == ST_OK && isnan(info.grad_norm));
        float *A2 = malloc(n * 4);
        CHECK(engine_params_get(e, A2, NULL, err) == ST_OK);
        CHECK(memcmp(A, A2, n * 4) == 0 || (A2[n - 3] != A2[n - 3] && !memcmp(A, A2, (n - 3) * 4)));
        free(A), free(A2);
        engine_destroy(&e);
    }
    free(g), free(m), free(v), free(R);
    s_rfix_free(&f);
    return rc;
}

/* The two sides of a resident comparison: the CPU engine (0) and the CUDA
 * engine (1), both with DBP, A = A0 and R = I, and host buffers of ns for
 * each side's A, R (starting as I) and Q. */
typedef struct {
    engine_t *e[2];
    float *A[2], *R[2];
    double *Q[2];
} rpair_t;

static void s_rpair_free(rpair_t *p)
{
    for (int be = 0; be < 2; be++) {
        engine_destroy(&p->e[be]);
        free(p->A[be]), free(p->R[be]), free(p->Q[be]);
    }
}

static int s_rpair(rpair_t *p, rfix_t *f)
{
    for (int be = 0; be < 2; be++) {
        p->e[be] = s_reng(f, be, 1, f->A0, f->I);
        p->A[be] = malloc(f->ns * 4), p->R[be] = malloc(f->ns * 4), p->Q[be] = calloc(f->ns, 8);
        if (!p->e[be] || !p->A[be] || !p->R[be] || !p->Q[be]) return 1;
        memcpy(p->R[be], f->I, f->ns * 4);
    }
    return 0;
}

/* The end of a resident comparison: A and R of both sides read back, the
 * CUDA side's within 1e-2 of how far the CPU side's moved. */
static int s_rpair_final(rpair_t *p, const rfix_t *f, int steps)
{
    char err[ST_ERR_LEN];
    for (int be = 0; be < 2; be++)
        if (s_get_ar(p->e[be], p->A[be], p->R[be], err) != ST_OK) {
            fprintf(stderr, "reading back A and R: %s\n", err);
            return 1;
        }
    double ea = s_rel_update(p->A[1], p->A[0], f->A0, f->ns), er = s_rel_update(p->R[1], p->R[0], f->I, f->ns);
    printf("after %d steps: A cuda % .6f % .6f cpu % .6f % .6f, R cuda %.8f cpu %.8f; update rel err A %.2e R %.2e\n",
           steps, p->A[1][0], p->A[1][1], p->A[0][0], p->A[0][1], p->R[1][1], p->R[0][1], ea, er);
    if (!(ea <= 1e-2 && er <= 1e-2)) {
        fprintf(stderr, "after %d steps A (%.2e) or R (%.2e) differs beyond 1e-2 of its update\n", steps, ea, er);
        return 1;
    }
    return 0;
}

/* A short tuning loop through the resident parameters (two micro-batches per
 * step, DBP's R updated from Q and handed back, clipping on) on the GPU in
 * fp32 against the same loop on the CPU engine: the summed gradient of
 * every step within the fixtures' GPU fp32 tolerance for grad_state0
 * (1e-3), and where A and R end up within 1e-2 of how far they moved. */
static int test_resident_matches_cpu(void)
{
    rfix_t f = {0};
    rpair_t p = {0};
    int rc = s_rfix(&f, 2, 37);
    if (rc) return rc;
    size_t n = f.ns;
    char err[ST_ERR_LEN];
    float *grad[2] = {malloc(n * 4), malloc(n * 4)};
    double *scratch = malloc(3 * (size_t)f.N * f.N * 8);
    CHECK(s_rpair(&p, &f) == 0 && grad[0] && grad[1] && scratch);
    const uint8_t rows[2] = {1, 1};
    for (int step = 0; step < 4 && !rc; step++) {
        double norm[2];
        for (int be = 0; be < 2 && !rc; be++) {
            CHECKF(engine_params_zero_grad(p.e[be], err) == ST_OK, "%s", err);
            memset(p.Q[be], 0, n * 8);
            double ntg = 0;
            for (int k = 0; k < 2; k++) { /* the same micro-batch twice: the gradient accumulates */
                engine_batch_t b = {.tokens = f.tok, .targets = f.tgt, .B = f.B, .T = f.T, .dbp_rows = rows,
                                    .dbp_q = p.Q[be]};
                CHECKF(engine_params_run(p.e[be], &b, err) == ST_OK, "%s", err);
                ntg += (double)b.n_targets;
            }
            CHECKF(engine_params_get_grad(p.e[be], grad[be], err) == ST_OK, "%s", err);
            engine_step_info_t info;
            CHECKF(engine_params_step(p.e[be], ntg, 1e-3, 0.02, &info, err) == ST_OK, "%s", err);
            CHECK(info.finite);
            norm[be] = info.grad_norm;
            dbp_update_R(f.nblk, f.N, p.R[be], p.Q[be], 2.0 * f.B * f.T, 1e-3, 0.01, scratch);
            CHECKF(engine_params_set_R(p.e[be], p.R[be], err) == ST_OK, "%s", err);
        }
        double eg = st_rel_err_ff(grad[1], grad[0], n);
        printf("step %d: summed dS0 rel err %.2e, norm cuda %.6g cpu %.6g\n", step, eg, norm[1], norm[0]);
        if (!(eg <= 1e-3)) {
            fprintf(stderr, "step %d: the resident gradient differs by %.2e > 1e-3\n", step, eg);
            rc = 1;
        }
    }
    if (!rc) rc = s_rpair_final(&p, &f, 4);
    s_rpair_free(&p);
    free(grad[0]), free(grad[1]), free(scratch);
    s_rfix_free(&f);
    return rc;
}

/* ---- DBP on the device: Q resident, R's rule on the GPU ------------------- */

/* R near the identity and a Q like the engine's: P outer products of
 * vectors whose components span two orders of magnitude (so E is far from
 * the identity and the rule has work to do). */
static void s_rule_inputs(const rfix_t *f, int P, float *R, double *Q)
{
    uint64_t s = f->seed * 0x2545F4914F6CDD1Dull + 7;
    const int N = f->N;
    double *x = malloc((size_t)N * sizeof *x);
    for (int b = 0; b < f->nblk; b++) {
        double *Qb = Q + (size_t)b * N * N;
        s_near_identity(&s, N, R + (size_t)b * N * N);
        for (int i = 0; i < N * N; i++) Qb[i] = 0;
        for (int p = 0; p < P; p++) {
            for (int j = 0; j < N; j++)
                x[j] = (st_test_unit(&s) - 0.5) * 2 * exp(-j / 14.0) + 0.3 * (st_test_unit(&s) - 0.5);
            for (int i = 0; i < N; i++)
                for (int j = 0; j < N; j++) Qb[i * N + j] += x[i] * x[j];
        }
    }
    free(x);
}

/* R's rule on the GPU (three batched DGEMMs and dbp.cuh's kernels) against
 * dbp_update_R on the host, from the same R and Q: both in double, so R
 * agrees to float rounding (relative 1e-6 over R, 1e-5 over the update
 * itself); Q survives the trip to the device and back; no pair leaves R
 * alone; a NaN in Q is reported as a non-finite R by both. */
static int test_dbp_rule_device(void)
{
    rfix_t f = {0};
    int rc = s_rfix(&f, 2, 16);
    if (rc) return rc;
    size_t n = f.ns;
    char err[ST_ERR_LEN];
    const int P = 300;
    const double eta = 0.05, kappa = 0.01;
    float *R0 = malloc(n * 4), *Rout[2], *S0 = malloc(n * 4), *S0ref = malloc(n * 4);
    double *Q = malloc(n * 8), *Qback = malloc(n * 8);
    CHECK(R0 && S0 && S0ref && Q && Qback);
    s_rule_inputs(&f, P, R0, Q);
    for (int be = 0; be < 2; be++) {
        Rout[be] = malloc(n * 4);
        CHECK(Rout[be] != NULL);
        engine_t *e = s_reng(&f, be, 1, f.A0, R0);
        CHECK(e != NULL);
        CHECKF(engine_params_set_q(e, Q, err) == ST_OK, "%s", err);
        CHECKF(engine_params_get_q(e, Qback, err) == ST_OK, "%s", err);
        CHECK(memcmp(Qback, Q, n * 8) == 0);
        int finite = 0;
        CHECKF(engine_params_update_R(e, P, eta, kappa, &finite, err) == ST_OK, "%s", err);
        CHECK(finite == 1);
        CHECKF(engine_params_get_R(e, Rout[be], err) == ST_OK, "%s", err);
        if (be) { /* S0 = A R follows the new R */
            CHECKF(engine_params_get(e, NULL, S0, err) == ST_OK, "%s", err);
            dbp_state(f.nblk, f.N, f.A0, Rout[be], S0ref);
            double es = st_rel_err_ff(S0, S0ref, n);
            printf("S0 = A R after the device rule: rel err %.2e\n", es);
            if (!(es <= 1e-6)) rc = 1;
        }
        /* no pair: R as it was */
        float *Rsame = malloc(n * 4);
        CHECK(Rsame != NULL);
        CHECKF(engine_params_update_R(e, 0, eta, kappa, &finite, err) == ST_OK && finite == 1, "%s", err);
        CHECKF(engine_params_get_R(e, Rsame, err) == ST_OK, "%s", err);
        CHECK(memcmp(Rsame, Rout[be], n * 4) == 0);
        free(Rsame);
        /* a NaN in Q: R is not finite, and the caller hears it */
        Qback[n / 3] = NAN;
        CHECKF(engine_params_set_q(e, Qback, err) == ST_OK, "%s", err);
        CHECKF(engine_params_update_R(e, P, eta, kappa, &finite, err) == ST_OK, "%s", err);
        printf("%s: a NaN in Q gives finite %d\n", be ? "cuda" : "cpu", finite);
        CHECK(finite == 0);
        engine_destroy(&e);
    }
    double er = st_rel_err_ff(Rout[1], Rout[0], n), eu = s_rel_update(Rout[1], Rout[0], R0, n);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += Rout[1][i] != Rout[0][i];
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)Rout[0][i] - R0[i]) * ((double)Rout[0][i] - R0[i]);
        den += (double)R0[i] * R0[i];
    }
    printf("R rule, fp64 on the device vs the host: R rel err %.2e, update rel err %.2e (%zu of %zu elements "
           "differ, by rounding); the rule moved R by %.2e of its norm\n",
           er, eu, differ, n, sqrt(num / den));
    if (!(er <= 1e-6 && eu <= 1e-5)) {
        fprintf(stderr, "the device R rule differs from the host rule: R %.2e > 1e-6 or update %.2e > 1e-5\n", er, eu);
        rc = 1;
    }
    if (!(num > 0)) {
        fprintf(stderr, "the rule did not move R: the test proves nothing\n");
        rc = 1;
    }
    for (int be = 0; be < 2; be++) free(Rout[be]);
    free(R0), free(S0), free(S0ref), free(Q), free(Qback);
    s_rfix_free(&f);
    return rc;
}

/* steps [from, to) of a tuning loop with DBP as tune.c runs it: Q and R's
 * rule in the engine, clipping on, two micro-batches per step (the same one
 * twice), rows sampled as given. Q of the last step to Qout when not NULL. */
static int s_dbp_loop(engine_t *e, const rfix_t *f, const uint8_t *rows, int from, int to, double *Qout, char *err)
{
    for (int step = from; step < to; step++) {
        int rc = engine_params_zero_grad(e, err);
        double ntg = 0, pairs = 0;
        for (int k = 0; k < 2 && !rc; k++) {
            engine_batch_t b = {.tokens = f->tok, .targets = f->tgt, .B = f->B, .T = f->T, .dbp_rows = rows};
            rc = engine_params_run(e, &b, err);
            ntg += (double)b.n_targets;
            for (int i = 0; i < f->B; i++) pairs += rows[i] ? f->T : 0;
        }
        if (!rc && Qout) rc = engine_params_get_q(e, Qout, err);
        engine_step_info_t info;
        if (!rc) rc = engine_params_step(e, ntg, 1e-3, 0.02 / (1 + step), &info, err);
        if (!rc && !info.finite) rc = st_fail(err, ST_ENUMERIC, "step %d: A is not finite", step);
        int finite = 0;
        if (!rc) rc = engine_params_update_R(e, pairs, 0.05, 0.01, &finite, err);
        if (!rc && !finite) rc = st_fail(err, ST_ENUMERIC, "step %d: R is not finite", step);
        if (rc) return rc;
    }
    return ST_OK;
}

/* A 4-step DBP loop with Q and R resident on the GPU (fp32) against the
 * same loop on the CPU engine: Q of every step within 1e-4 (the engine's
 * Q, fp32 tolerance 1e-5, from states that drift apart by the gradient's
 * rounding), and A and R after 4 steps within 1e-2 of how far they moved. */
static int test_resident_dbp_matches_cpu(void)
{
    rfix_t f = {0};
    rpair_t p = {0};
    int rc = s_rfix(&f, 2, 37);
    if (rc) return rc;
    char err[ST_ERR_LEN];
    CHECK(s_rpair(&p, &f) == 0);
    const uint8_t rows[2] = {1, 1};
    for (int step = 0; step < 4 && !rc; step++) {
        for (int be = 0; be < 2; be++)
            CHECKF(s_dbp_loop(p.e[be], &f, rows, step, step + 1, p.Q[be], err) == ST_OK, "%s", err);
        double eq = st_rel_err_dd(p.Q[1], p.Q[0], f.ns);
        printf("step %d: resident Q rel err %.2e (Q[0] cuda %.6e cpu %.6e)\n", step, eq, p.Q[1][0], p.Q[0][0]);
        if (!(eq <= 1e-4)) {
            fprintf(stderr, "step %d: the resident Q differs by %.2e > 1e-4\n", step, eq);
            rc = 1;
        }
    }
    if (!rc) rc = s_rpair_final(&p, &f, 4);
    s_rpair_free(&p);
    s_rfix_free(&f);
    return rc;
}

/* DBP on the GPU, stopped after 2 steps: A, R, Adam's moments and step
 * count read out (what tune.c's checkpoint holds), written into a fresh
 * engine (read back bit for bit), 2 more steps; against 4 steps in one go.
 * The GPU sums dS0 and Q with atomics, so two uninterrupted runs differ in
 * the last bits already: the resumed run must land as close to the
 * uninterrupted one as a second uninterrupted run does (within 1e-5 of the
 * update, or 10 times that run-to-run spread). */
static int test_resident_dbp_resume(void)
{
    rfix_t f = {0};
    int rc = s_rfix(&f, 2, 37);
    if (rc) return rc;
    size_t n = f.ns;
    char err[ST_ERR_LEN];
    const uint8_t rows[2] = {1, 0};
    float *A[3], *R[3], *m = malloc(n * 4), *v = malloc(n * 4), *chk = malloc(n * 4);
    CHECK(m && v && chk);
    for (int k = 0; k < 3; k++) {
        A[k] = malloc(n * 4), R[k] = malloc(n * 4);
        CHECK(A[k] && R[k]);
    }
    /* 0, 1: uninterrupted twice (the run-to-run spread); 2: resumed */
    for (int k = 0; k < 2; k++) {
        engine_t *e = s_reng(&f, 1, 1, f.A0, f.I);
        CHECK(e != NULL);
        CHECKF(s_dbp_loop(e, &f, rows, 0, 4, NULL, err) == ST_OK, "%s", err);
        CHECKF(s_get_ar(e, A[k], R[k], err) == ST_OK, "%s", err);
        engine_destroy(&e);
    }
    engine_t *e = s_reng(&f, 1, 1, f.A0, f.I);
    CHECK(e != NULL);
    CHECKF(s_dbp_loop(e, &f, rows, 0, 2, NULL, err) == ST_OK, "%s", err);
    int64_t t = 0;
    CHECKF(s_get_ar(e, A[2], R[2], err) == ST_OK, "%s", err);
    CHECKF(engine_params_get_adam(e, m, v, &t, err) == ST_OK, "%s", err);
    engine_destroy(&e);
    CHECK(t == 2);
    e = s_reng(&f, 1, 1, A[2], R[2]); /* a new process, as after a restart */
    CHECK(e != NULL);
    CHECKF(engine_params_set_adam(e, m, v, t, err) == ST_OK, "%s", err);
    CHECKF(engine_params_get_R(e, chk, err) == ST_OK, "%s", err);
    CHECK(memcmp(chk, R[2], n * 4) == 0);
    CHECKF(engine_params_get(e, chk, NULL, err) == ST_OK, "%s", err);
    CHECK(memcmp(chk, A[2], n * 4) == 0);
    CHECKF(s_dbp_loop(e, &f, rows, 2, 4, NULL, err) == ST_OK, "%s", err);
    CHECKF(s_get_ar(e, A[2], R[2], err) == ST_OK, "%s", err);
    CHECKF(engine_params_get_adam(e, NULL, NULL, &t, err) == ST_OK, "%s", err);
    engine_destroy(&e);
    CHECK(t == 4);
    double sa = s_rel_update(A[1], A[0], f.A0, n), sr = s_rel_update(R[1], R[0], f.I, n);
    double ra = s_rel_update(A[2], A[0], f.A0, n), rr = s_rel_update(R[2], R[0], f.I, n);
    int same = !memcmp(A[2], A[0], n * 4) && !memcmp(R[2], R[0], n * 4);
    printf("DBP on the GPU, 4 steps: resumed vs uninterrupted A %.2e R %.2e of the update (%s); two "
           "uninterrupted runs A %.2e R %.2e\n", ra, rr, same ? "identical bits" : "not bit-identical", sa, sr);
    if (!(ra <= fmax(1e-5, 10 * sa) && rr <= fmax(1e-5, 10 * sr))) {
        fprintf(stderr, "the resumed DBP run differs from the uninterrupted one beyond its run-to-run spread\n");
        rc = 1;
    }
    for (int k = 0; k < 3; k++) free(A[k]), free(R[k]);
    free(m), free(v), free(chk);
    s_rfix_free(&f);
    return rc;
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
        {"refuses_nonfinite_loss", test_refuses_nonfinite_loss},
        {"resident_step_exact", test_resident_step_exact},
        {"resident_matches_cpu", test_resident_matches_cpu},
        {"dbp_rule_device", test_dbp_rule_device},
        {"resident_dbp_matches_cpu", test_resident_dbp_matches_cpu},
        {"resident_dbp_resume", test_resident_dbp_resume},
        {NULL, NULL},
    };
    return st_test_main(argc, argv, tests);
}
