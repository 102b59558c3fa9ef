/*
 * test_params.c - the engine's resident tuning parameters (engine.h's
 * engine_params_*) on the CPU backend: a tuning loop through them is
 * bit-identical to the loop that ran engine_run on host arrays with
 * engine/adam.c and engine/dbp_param.c (what tune.c did before), with and
 * without DBP and with clipping active (DBP's Q and R rule included: the
 * engine keeps Q and runs R's rule, engine_params_q / _update_R); a run
 * stopped and restored from the parameters' checkpoint data continues
 * exactly; the resident Q is the sum of engine_run's dbp_q and survives a
 * trip through the host (what a staged all-reduce does); misuse is refused
 * with a sentence; the divergence check finds the tuning loop's element.
 *
 * Fresh random model, tokens and state on every run (seed printed;
 * STATETUNE_SEED replays it). One CPU thread, so the engine's reductions have
 * one order and "identical" means identical bits.
 */
#include "harness.h"

#include "common/st_err.h"
#include "engine/adam.h"
#include "engine/dbp_param.h"
#include "engine/engine.h"
#include "model/model.h"

#include <stdint.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { B = 2, T = 23, MICRO = 2, STEPS = 4 };
#define BETA1 0.9
#define BETA2 0.99
#define EPS 1e-8
#define CLIP 1e-4 /* small enough that every step clips (norms here are about 1e-3) */
#define ETA_R 0.05
#define KAPPA 0.01

static uint64_t s_next(uint64_t *s)
{
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static double s_unif(uint64_t *s) { return (double)(s_next(s) >> 11) / 9007199254740992.0; }

static uint64_t s_seed(void)
{
    const char *env = getenv("STATETUNE_SEED");
    uint64_t seed = env && *env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("seed %llu (STATETUNE_SEED replays it)\n", (unsigned long long)seed);
    return seed;
}

/* A small random model, its data (MICRO micro-batches of B x T per step) and
 * an initial A. */
typedef struct {
    rwkv_model_t *m;
    size_t ns;
    int nblk, N;
    int32_t tok[MICRO][B * T], tgt[MICRO][B * T];
    float *A0;
} fixture_t;

static int s_fixture(fixture_t *f, uint64_t seed)
{
    rwkv_config_t cfg = {.n_layer = 2, .n_embd = 128, .n_head = 2, .head_size = 64, .vocab = 97,
                         .ffn_dim = 256, .d_decay = 16, .d_aaa = 16, .d_mv = 8, .d_gate = 16};
    char err[ST_ERR_LEN];
    f->m = rwkv_model_new_random(&cfg, seed, err);
    if (!f->m) {
        fprintf(stderr, "rwkv_model_new_random: %s\n", err);
        return 1;
    }
    f->nblk = cfg.n_layer * cfg.n_head;
    f->N = cfg.head_size;
    f->ns = (size_t)f->nblk * f->N * f->N;
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int k = 0; k < MICRO; k++)
        for (int i = 0; i < B * T; i++) {
            f->tok[k][i] = (int32_t)(s_next(&s) % 97);
            f->tgt[k][i] = s_next(&s) % 4 == 0 ? -1 : (int32_t)(s_next(&s) % 97);
        }
    f->A0 = malloc(f->ns * sizeof(float));
    if (!f->A0) return 1;
    for (size_t i = 0; i < f->ns; i++) f->A0[i] = (float)(s_unif(&s) - 0.5);
    return 0;
}

static void s_fixture_free(fixture_t *f)
{
    rwkv_model_destroy(&f->m);
    free(f->A0);
}

static engine_t *s_engine(fixture_t *f)
{
    char err[ST_ERR_LEN];
    engine_opts_t o = {.backend = ENGINE_CPU, .precision = ENGINE_FP32, .max_batch = B, .max_ctx = T, .threads = 1};
    engine_t *e = engine_new(f->m, &o, err);
    if (!e) fprintf(stderr, "engine_new: %s\n", err);
    return e;
}

static double s_lr(int step) { return 0.2 / (1 + step); }

/* The reference: what tune.c did before the resident parameters, on host
 * arrays (S0 = A R, engine_run, mean, dA = dS0 R^T, clip, Adam, R's rule). */
static int s_manual(fixture_t *f, int dbp, int steps, float *A_out, float *R_out, float *m_out, float *v_out)
{
    char err[ST_ERR_LEN];
    engine_t *e = s_engine(f);
    size_t n = f->ns;
    float *A = malloc(n * 4), *R = malloc(n * 4), *S0 = malloc(n * 4), *dS = malloc(n * 4), *g = malloc(n * 4);
    double *Q = malloc(n * 8), *scratch = malloc(3 * (size_t)f->N * f->N * 8);
    adam_t *adam = adam_new(n, BETA1, BETA2, EPS, err);
    int rc = !e || !A || !R || !S0 || !dS || !g || !Q || !scratch || !adam;
    if (!rc) {
        memcpy(A, f->A0, n * 4);
        dbp_identity(f->nblk, f->N, R);
    }
    const uint8_t rows[B] = {1, 0};
    for (int step = 0; step < steps && !rc; step++) {
        if (dbp) dbp_state(f->nblk, f->N, A, R, S0);
        else memcpy(S0, A, n * 4);
        memset(dS, 0, n * 4);
        memset(Q, 0, n * 8);
        double ntg = 0, pairs = 0;
        for (int k = 0; k < MICRO && !rc; k++) {
            engine_batch_t b = {.tokens = f->tok[k], .targets = f->tgt[k], .B = B, .T = T, .state0 = S0,
                                .dstate0 = dS, .dbp_rows = dbp ? rows : NULL, .dbp_q = dbp ? Q : NULL};
            rc = engine_run(e, &b, err);
            if (rc) fprintf(stderr, "engine_run: %s\n", err);
            ntg += (double)b.n_targets;
            pairs += dbp ? T : 0;
        }
        if (rc) break;
        for (size_t i = 0; i < n; i++) dS[i] = (float)((double)dS[i] / ntg);
        if (dbp) dbp_grad_A(f->nblk, f->N, dS, R, g);
        else memcpy(g, dS, n * 4);
        adam_clip_grad_norm(g, n, CLIP);
        adam_step(adam, A, g, s_lr(step));
        if (dbp) dbp_update_R(f->nblk, f->N, R, Q, pairs, ETA_R, KAPPA, scratch);
    }
    if (!rc) {
        memcpy(A_out, A, n * 4);
        memcpy(R_out, R, n * 4);
        memcpy(m_out, adam_m(adam), n * 4);
        memcpy(v_out, adam_v(adam), n * 4);
    }
    engine_destroy(&e);
    adam_destroy(&adam);
    free(A), free(R), free(S0), free(dS), free(g), free(Q), free(scratch);
    return rc;
}

/* The same loop through engine_params_* (as tune.c runs it now: Q and R's
 * rule in the engine), steps [from, to); e must have its parameters
 * initialised and set. R receives the engine's R at the end (DBP only). */
static int s_resident(engine_t *e, fixture_t *f, int dbp, int from, int to, float *R, char *err)
{
    int rc = ST_OK;
    const uint8_t rows[B] = {1, 0};
    for (int step = from; step < to && !rc; step++) {
        rc = engine_params_zero_grad(e, err);
        double ntg = 0, pairs = 0;
        for (int k = 0; k < MICRO && !rc; k++) {
            engine_batch_t b = {.tokens = f->tok[k], .targets = f->tgt[k], .B = B, .T = T,
                                .dbp_rows = dbp ? rows : NULL};
            rc = engine_params_run(e, &b, err);
            ntg += (double)b.n_targets;
            pairs += dbp ? T : 0;
        }
        engine_step_info_t info;
        if (!rc) rc = engine_params_step(e, ntg, CLIP, s_lr(step), &info, err);
        if (!rc && !(info.grad_norm > CLIP && info.finite))
            rc = st_fail(err, ST_ENUMERIC, "step %d: norm %g (expected > %g, clipping) finite %d", step,
                         info.grad_norm, CLIP, info.finite);
        if (!rc && dbp) {
            int finite = 0;
            rc = engine_params_update_R(e, pairs, ETA_R, KAPPA, &finite, err);
            if (!rc && !finite) rc = st_fail(err, ST_ENUMERIC, "step %d: R is not finite", step);
        }
    }
    if (!rc && dbp) rc = engine_params_get_R(e, R, err);
    return rc;
}

static int s_same(const char *what, const float *a, const float *b, size_t n)
{
    if (!memcmp(a, b, n * sizeof(float))) return 1;
    size_t i = 0;
    while (i < n && !memcmp(a + i, b + i, sizeof(float))) i++;
    fprintf(stderr, "%s differs first at %zu: %.9g vs %.9g (rel err %.2e over all)\n", what, i, a[i], b[i],
            st_rel_err_ff(a, b, n));
    return 0;
}

static int s_matches_manual(int dbp)
{
    uint64_t seed = s_seed();
    fixture_t f = {0};
    CHECK(s_fixture(&f, seed) == 0);
    size_t n = f.ns;
    float *ref[4], *got[4];
    for (int i = 0; i < 4; i++) {
        ref[i] = malloc(n * 4);
        got[i] = malloc(n * 4);
        CHECK(ref[i] && got[i]);
    }
    CHECK(s_manual(&f, dbp, STEPS, ref[0], ref[1], ref[2], ref[3]) == 0);
    char err[ST_ERR_LEN];
    engine_t *e = s_engine(&f);
    CHECK(e != NULL);
    CHECKF(engine_params_init(e, dbp, BETA1, BETA2, EPS, err) == ST_OK, "%s", err);
    CHECK(engine_params_grad_on_device(e) == 0 && engine_params_grad(e) != NULL);
    dbp_identity(f.nblk, f.N, got[1]);
    CHECKF(engine_params_set(e, f.A0, dbp ? got[1] : NULL, err) == ST_OK, "%s", err);
    CHECKF(s_resident(e, &f, dbp, 0, STEPS, got[1], err) == ST_OK, "%s", err);
    int64_t t = 0;
    CHECKF(engine_params_get(e, got[0], NULL, err) == ST_OK, "%s", err);
    CHECKF(engine_params_get_adam(e, got[2], got[3], &t, err) == ST_OK, "%s", err);
    printf("dbp %s: A[0..2] resident %.9g %.9g %.9g, manual %.9g %.9g %.9g; Adam t %lld\n", dbp ? "on" : "off",
           got[0][0], got[0][1], got[0][2], ref[0][0], ref[0][1], ref[0][2], (long long)t);
    CHECK(t == STEPS);
    CHECK(s_same("A", got[0], ref[0], n));
    CHECK(s_same("R", got[1], ref[1], n));
    CHECK(s_same("adam m", got[2], ref[2], n));
    CHECK(s_same("adam v", got[3], ref[3], n));
    /* S0 = A R, as the manual loop forms it */
    float *S0 = malloc(n * 4), *S0ref = malloc(n * 4);
    CHECK(S0 && S0ref);
    CHECKF(engine_params_get(e, NULL, S0, err) == ST_OK, "%s", err);
    if (dbp) dbp_state(f.nblk, f.N, ref[0], ref[1], S0ref);
    else memcpy(S0ref, ref[0], n * 4);
    CHECK(s_same("S0", S0, S0ref, n));
    free(S0), free(S0ref);
    engine_destroy(&e);
    for (int i = 0; i < 4; i++) free(ref[i]), free(got[i]);
    s_fixture_free(&f);
    return 0;
}

static int test_matches_manual(void) { return s_matches_manual(0); }
static int test_matches_manual_dbp(void) { return s_matches_manual(1); }

/* Stopped after 2 steps, its A, R and Adam state read out and written into a
 * fresh engine, 2 more steps: the same bits as 4 steps in one go (what a
 * checkpoint and resume rely on). */
static int test_resume_exact(void)
{
    uint64_t seed = s_seed();
    fixture_t f = {0};
    CHECK(s_fixture(&f, seed) == 0);
    size_t n = f.ns;
    char err[ST_ERR_LEN];
    float *R1 = malloc(n * 4), *R2 = malloc(n * 4), *A1 = malloc(n * 4), *A2 = malloc(n * 4);
    float *m = malloc(n * 4), *v = malloc(n * 4), *m2 = malloc(n * 4), *v2 = malloc(n * 4);
    CHECK(R1 && R2 && A1 && A2 && m && v && m2 && v2);
    engine_t *e = s_engine(&f);
    CHECK(e != NULL);
    CHECKF(engine_params_init(e, 1, BETA1, BETA2, EPS, err) == ST_OK, "%s", err);
    dbp_identity(f.nblk, f.N, R1);
    CHECKF(engine_params_set(e, f.A0, R1, err) == ST_OK, "%s", err);
    CHECKF(s_resident(e, &f, 1, 0, STEPS, R1, err) == ST_OK, "%s", err);
    CHECKF(engine_params_get(e, A1, NULL, err) == ST_OK, "%s", err);
    CHECKF(engine_params_get_adam(e, m, v, NULL, err) == ST_OK, "%s", err);
    engine_destroy(&e);

    e = s_engine(&f);
    CHECKF(engine_params_init(e, 1, BETA1, BETA2, EPS, err) == ST_OK, "%s", err);
    dbp_identity(f.nblk, f.N, R2);
    CHECKF(engine_params_set(e, f.A0, R2, err) == ST_OK, "%s", err);
    CHECKF(s_resident(e, &f, 1, 0, STEPS / 2, R2, err) == ST_OK, "%s", err);
    int64_t t = 0;
    CHECKF(engine_params_get(e, A2, NULL, err) == ST_OK, "%s", err);
    CHECKF(engine_params_get_adam(e, m2, v2, &t, err) == ST_OK, "%s", err);
    engine_destroy(&e);
    e = s_engine(&f); /* a new process, as after a restart */
    CHECKF(engine_params_init(e, 1, BETA1, BETA2, EPS, err) == ST_OK, "%s", err);
    CHECKF(engine_params_set(e, A2, R2, err) == ST_OK, "%s", err);
    CHECKF(engine_params_set_adam(e, m2, v2, t, err) == ST_OK, "%s", err);
    CHECKF(s_resident(e, &f, 1, STEPS / 2, STEPS, R2, err) == ST_OK, "%s", err);
    CHECKF(engine_params_get(e, A2, NULL, err) == ST_OK, "%s", err);
    CHECKF(engine_params_get_adam(e, m2, v2, &t, err) == ST_OK, "%s", err);
    engine_destroy(&e);
    printf("A[0] uninterrupted %.9g, resumed %.9g; Adam t %lld\n", A1[0], A2[0], (long long)t);
    CHECK(t == STEPS);
    CHECK(s_same("A", A2, A1, n) && s_same("R", R2, R1, n) && s_same("m", m2, m, n) && s_same("v", v2, v, n));
    free(R1), free(R2), free(A1), free(A2), free(m), free(v), free(m2), free(v2);
    s_fixture_free(&f);
    return 0;
}

/* The gradient is the sum over micro-batches of engine_run's dstate0, and a
 * step with a gradient set from the host uses that gradient. */
static int test_grad_accumulates(void)
{
    uint64_t seed = s_seed();
    fixture_t f = {0};
    CHECK(s_fixture(&f, seed) == 0);
    size_t n = f.ns;
    char err[ST_ERR_LEN];
    float *want = calloc(n, 4), *got = malloc(n * 4);
    CHECK(want && got);
    engine_t *e = s_engine(&f);
    CHECK(e != NULL);
    for (int k = 0; k < MICRO; k++) {
        engine_batch_t b = {.tokens = f.tok[k], .targets = f.tgt[k], .B = B, .T = T, .state0 = f.A0, .dstate0 = want};
        CHECKF(engine_run(e, &b, err) == ST_OK, "%s", err);
    }
    CHECKF(engine_params_init(e, 0, BETA1, BETA2, EPS, err) == ST_OK, "%s", err);
    CHECKF(engine_params_set(e, f.A0, NULL, err) == ST_OK, "%s", err);
    CHECKF(engine_params_zero_grad(e, err) == ST_OK, "%s", err);
    for (int k = 0; k < MICRO; k++) {
        engine_batch_t b = {.tokens = f.tok[k], .targets = f.tgt[k], .B = B, .T = T};
        CHECKF(engine_params_run(e, &b, err) == ST_OK, "%s", err);
        CHECK(b.state0 == NULL && b.dstate0 == NULL); /* the batch is left as it was given */
    }
    CHECKF(engine_params_get_grad(e, got, err) == ST_OK, "%s", err);
    CHECK(s_same("gradient", got, want, n));
    /* forward only (no targets): the gradient is untouched */
    engine_batch_t fw = {.tokens = f.tok[0], .B = B, .T = T};
    CHECKF(engine_params_run(e, &fw, err) == ST_OK, "%s", err);
    CHECKF(engine_params_get_grad(e, got, err) == ST_OK, "%s", err);
    CHECK(s_same("gradient after a forward-only run", got, want, n));
    /* a zero gradient set from the host: Adam moves nothing, the norm is 0 */
    memset(got, 0, n * 4);
    CHECKF(engine_params_set_grad(e, got, err) == ST_OK, "%s", err);
    engine_step_info_t info;
    CHECKF(engine_params_step(e, 1.0, 1.0, 0.1, &info, err) == ST_OK, "%s", err);
    CHECK(info.grad_norm == 0 && info.finite);
    CHECKF(engine_params_get(e, got, NULL, err) == ST_OK, "%s", err);
    CHECK(s_same("A after a zero-gradient step", got, f.A0, n));
    engine_destroy(&e);
    free(want), free(got);
    s_fixture_free(&f);
    return 0;
}

/* The resident Q: the sum over micro-batches of engine_run's dbp_q (same
 * bits), zeroed with the gradient, unchanged by a trip through the host
 * (get_q / set_q: the staged all-reduce), a host dbp_q in the batch takes
 * the rows instead; R's rule with no pair leaves R as it was. */
static int test_dbp_q_resident(void)
{
    uint64_t seed = s_seed();
    fixture_t f = {0};
    CHECK(s_fixture(&f, seed) == 0);
    size_t n = f.ns;
    char err[ST_ERR_LEN];
    double *want = calloc(n, 8), *got = malloc(n * 8), *host = calloc(n, 8);
    float *R = malloc(n * 4), *R2 = malloc(n * 4);
    CHECK(want && got && host && R && R2);
    const uint8_t rows[B] = {0, 1};
    engine_t *e = s_engine(&f);
    CHECK(e != NULL);
    for (int k = 0; k < MICRO; k++) {
        engine_batch_t b = {.tokens = f.tok[k], .targets = f.tgt[k], .B = B, .T = T, .state0 = f.A0,
                            .dbp_rows = rows, .dbp_q = want};
        CHECKF(engine_run(e, &b, err) == ST_OK, "%s", err);
    }
    CHECKF(engine_params_init(e, 1, BETA1, BETA2, EPS, err) == ST_OK, "%s", err);
    CHECKF(engine_params_set(e, f.A0, NULL, err) == ST_OK, "%s", err); /* R = I: S0 = A0 */
    CHECK(engine_params_q(e) != NULL);
    CHECKF(engine_params_zero_grad(e, err) == ST_OK, "%s", err);
    for (int k = 0; k < MICRO; k++) {
        engine_batch_t b = {.tokens = f.tok[k], .targets = f.tgt[k], .B = B, .T = T, .dbp_rows = rows};
        CHECKF(engine_params_run(e, &b, err) == ST_OK, "%s", err);
        CHECK(b.dbp_q == NULL); /* the batch is left as it was given */
    }
    CHECKF(engine_params_get_q(e, got, err) == ST_OK, "%s", err);
    CHECK(memcmp(got, want, n * 8) == 0);
    double qmax = 0;
    for (size_t i = 0; i < n; i++) qmax = fmax(qmax, fabs(got[i]));
    printf("resident Q: max |Q| %.6g over %d sampled rows x %d tokens\n", qmax, MICRO, T);
    CHECK(qmax > 0);
    /* a host dbp_q gets the rows; the resident Q is not touched */
    engine_batch_t hb = {.tokens = f.tok[0], .targets = f.tgt[0], .B = B, .T = T, .dbp_rows = rows, .dbp_q = host};
    CHECKF(engine_params_run(e, &hb, err) == ST_OK, "%s", err);
    CHECKF(engine_params_get_q(e, got, err) == ST_OK, "%s", err);
    CHECK(memcmp(got, want, n * 8) == 0);
    qmax = 0;
    for (size_t i = 0; i < n; i++) qmax = fmax(qmax, fabs(host[i]));
    CHECK(qmax > 0);
    /* through the host and back: the same R update as without the trip */
    CHECKF(engine_params_set_q(e, want, err) == ST_OK, "%s", err);
    int finite = 0;
    CHECKF(engine_params_update_R(e, 2.0 * T, ETA_R, KAPPA, &finite, err) == ST_OK && finite, "%s", err);
    CHECKF(engine_params_get_R(e, R, err) == ST_OK, "%s", err);
    double *scratch = malloc(3 * (size_t)f.N * f.N * 8);
    CHECK(scratch != NULL);
    dbp_identity(f.nblk, f.N, R2);
    dbp_update_R(f.nblk, f.N, R2, want, 2.0 * T, ETA_R, KAPPA, scratch);
    CHECK(s_same("R after the rule", R, R2, n));
    free(scratch);
    /* no pair: R unchanged; zero_grad clears Q */
    CHECKF(engine_params_update_R(e, 0, ETA_R, KAPPA, &finite, err) == ST_OK && finite, "%s", err);
    CHECKF(engine_params_get_R(e, R2, err) == ST_OK, "%s", err);
    CHECK(s_same("R after a step without pairs", R2, R, n));
    CHECKF(engine_params_zero_grad(e, err) == ST_OK, "%s", err);
    CHECKF(engine_params_get_q(e, got, err) == ST_OK, "%s", err);
    for (size_t i = 0; i < n; i++) CHECK(got[i] == 0);
    engine_destroy(&e);
    free(want), free(got), free(host), free(R), free(R2);
    s_fixture_free(&f);
    return 0;
}

/* Misuse gets a sentence and an error code, not a crash. */
static int test_refusals(void)
{
    fixture_t f = {0};
    CHECK(s_fixture(&f, 5) == 0);
    char err[ST_ERR_LEN];
    engine_t *e = s_engine(&f);
    CHECK(e != NULL);
    engine_batch_t b = {.tokens = f.tok[0], .targets = f.tgt[0], .B = B, .T = T};
    engine_step_info_t info;
    CHECK(engine_params_run(e, &b, err) == ST_EINVAL && strstr(err, "engine_params_init"));
    CHECK(engine_params_step(e, 1, 1, 0.1, &info, err) == ST_EINVAL);
    CHECK(engine_params_grad(e) == NULL);
    CHECK(engine_params_init(e, 0, 1.0, 0.99, 1e-8, err) == ST_EINVAL && strstr(err, "beta1"));
    CHECKF(engine_params_init(e, 0, BETA1, BETA2, EPS, err) == ST_OK, "%s", err);
    CHECK(engine_params_init(e, 0, BETA1, BETA2, EPS, err) == ST_EINVAL);
    CHECK(engine_params_set_R(e, f.A0, err) == ST_EINVAL && strstr(err, "without DBP"));
    CHECK(engine_params_q(e) == NULL);
    int finite = 0;
    CHECK(engine_params_update_R(e, 10, 0.1, 0.01, &finite, err) == ST_EINVAL && strstr(err, "without DBP"));
    CHECK(engine_params_get_R(e, f.A0, err) == ST_EINVAL && strstr(err, "without DBP"));
    CHECK(engine_params_get_q(e, NULL, err) == ST_EINVAL && strstr(err, "without DBP"));
    CHECK(engine_params_step(e, 0, 1, 0.1, &info, err) == ST_EINVAL && strstr(err, "divisor"));
    b.state0 = f.A0;
    CHECK(engine_params_run(e, &b, err) == ST_EINVAL && strstr(err, "state0"));
    b.state0 = NULL;
    b.tokens = NULL;
    CHECK(engine_params_run(e, &b, err) == ST_EINVAL);
    engine_batch_t plain = {.tokens = f.tok[0], .B = B, .T = T}; /* engine_run still needs its state0 */
    CHECK(engine_run(e, &plain, err) == ST_EINVAL && strstr(err, "state0"));
    engine_destroy(&e);
    s_fixture_free(&f);
    return 0;
}

/* The divergence check: the first NaN or inf when there is one, else the
 * first of the largest |S0|; a NaN gradient takes no step. */
static int test_absmax_rule(void)
{
    fixture_t f = {0};
    CHECK(s_fixture(&f, 7) == 0);
    size_t n = f.ns;
    char err[ST_ERR_LEN];
    engine_t *e = s_engine(&f);
    CHECK(e != NULL);
    CHECKF(engine_params_init(e, 0, BETA1, BETA2, EPS, err) == ST_OK, "%s", err);
    float *A = calloc(n, 4);
    CHECK(A != NULL);
    double big = -1;
    size_t at = 1;
    CHECK(engine_params_state_absmax(e, &big, &at, err) == ST_OK && big == 0 && at == 0);
    A[10] = 3;
    A[n - 5] = -3; /* a tie: the lower index */
    A[7] = 2.5f;
    CHECK(engine_params_set(e, A, NULL, err) == ST_OK);
    CHECK(engine_params_state_absmax(e, &big, &at, err) == ST_OK && big == 3 && at == 10);
    A[n - 2] = NAN;
    A[n - 3] = INFINITY;
    CHECK(engine_params_set(e, A, NULL, err) == ST_OK);
    CHECK(engine_params_state_absmax(e, &big, &at, err) == ST_OK && isinf(big) && at == n - 3);
    A[n - 3] = 0;
    CHECK(engine_params_set(e, A, NULL, err) == ST_OK);
    CHECK(engine_params_state_absmax(e, &big, &at, err) == ST_OK && isnan(big) && at == n - 2);
    /* a NaN in the gradient: no step, the norm says why */
    memset(A, 0, n * 4);
    A[3] = NAN;
    CHECK(engine_params_set_grad(e, A, err) == ST_OK);
    engine_step_info_t info;
    CHECK(engine_params_step(e, 1.0, 1.0, 0.1, &info, err) == ST_OK && isnan(info.grad_norm));
    int64_t t = -1;
    CHECK(engine_params_get_adam(e, NULL, NULL, &t, err) == ST_OK && t == 0);
    engine_destroy(&e);
    free(A);
    s_fixture_free(&f);
    return 0;
}

/* DBP's R update spreads its blocks over the OpenMP team: the same bits
 * whatever the team's size. */
static int test_dbp_update_threads(void)
{
#ifndef _OPENMP
    printf("skipped: built without OpenMP\n");
    return ST_TEST_SKIP;
#else
    const int nblk = 37, N = 64;
    size_t n = (size_t)nblk * N * N;
    float *R1 = malloc(n * 4), *R3 = malloc(n * 4);
    double *Q = malloc(n * 8), *scratch = malloc(3 * (size_t)N * N * 8);
    CHECK(R1 && R3 && Q && scratch);
    uint64_t s = 11;
    for (size_t i = 0; i < n; i++) {
        R1[i] = (i % (N * N)) % (N + 1) == 0 ? 1.0f : (float)((s_unif(&s) - 0.5) * 0.05);
        Q[i] = s_unif(&s);
    }
    memcpy(R3, R1, n * 4);
    float *R0 = malloc(n * 4);
    CHECK(R0 != NULL);
    memcpy(R0, R1, n * 4);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    dbp_update_R(nblk, N, R1, Q, 50, 0.01, 0.01, scratch);
    omp_set_num_threads(3);
    dbp_update_R(nblk, N, R3, Q, 50, 0.01, 0.01, scratch);
    omp_set_num_threads(saved);
    CHECK(s_same("R (1 thread vs 3)", R3, R1, n));
    CHECK(memcmp(R1, R0, n * 4) != 0); /* the update moved R */
    free(R0), free(R1), free(R3), free(Q), free(scratch);
    return 0;
#endif
}

int main(int argc, char **argv)
{
    static const st_test_t tests[] = {
        {"matches_manual", test_matches_manual},
        {"matches_manual_dbp", test_matches_manual_dbp},
        {"resume_exact", test_resume_exact},
        {"grad_accumulates", test_grad_accumulates},
        {"refusals", test_refusals},
        {"absmax_rule", test_absmax_rule},
        {"dbp_update_threads", test_dbp_update_threads},
        {"dbp_q_resident", test_dbp_q_resident},
        {NULL, NULL},
    };
    return st_test_main(argc, argv, tests);
}
