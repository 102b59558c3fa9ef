/*
 * test_tune.c - the tuning loop's parts: Adam, the schedule, clipping, DBP's
 * S0 = A R parametrisation and R update, checkpoints, and (with the fixture
 * model) the loop itself: tuning lowers eval loss, resume reproduces an
 * uninterrupted run bit for bit, and the exported state gives the same
 * logits in RNN mode as in GPT mode.
 */
#include "harness.h"

#include "common/st_err.h"
#include "common/st_fs.h"
#include "engine/adam.h"
#include "engine/checkpoint.h"
#include "engine/dbp_param.h"
#include "engine/eval.h"
#include "engine/schedule.h"
#include "engine/tune.h"
#include "model/model.h"
#include "store/state_formats.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- small helpers -------------------------------------------------------- */

static uint64_t s_rng = 0x1234567887654321ULL;
static double s_uniform(void) /* xorshift64*, [0, 1) */
{
    s_rng ^= s_rng >> 12;
    s_rng ^= s_rng << 25;
    s_rng ^= s_rng >> 27;
    return (double)((s_rng * 2685821657736338717ULL) >> 11) * (1.0 / 9007199254740992.0);
}
static double s_gauss(void)
{
    double u = s_uniform() + 1e-12, v = s_uniform();
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

/* ---- Adam, schedule, clipping --------------------------------------------- */

static int test_adam_matches_torch(void)
{
    /* Expected values: torch.optim.Adam(lr=0.1, betas=(0.9, 0.99), eps=1e-8)
     * on the same three gradients (torch 1.13), printed to 8 digits. */
    const float grads[3][3] = {{0.5f, 0.25f, -1.0f}, {-1.0f, 0.25f, 3.0f}, {0.1f, 0.0f, -2.0f}};
    const double want[3][3] = {{0.89999998, -2.0999999, 0.10000000},
                               {0.93656075, -2.1999998, 0.050670184},
                               {0.95907331, -2.2774760, 0.052547149}};
    char err[ST_ERR_LEN];
    adam_t *a = adam_new(3, 0.9, 0.99, 1e-8, err);
    CHECKF(a, "%s", err);
    float p[3] = {1.0f, -2.0f, 0.0f};
    for (int s = 0; s < 3; s++) {
        adam_step(a, p, grads[s], 0.1);
        for (int i = 0; i < 3; i++) CHECKF(fabs(p[i] - want[s][i]) < 2e-6, "step %d param %d: %.8f vs %.8f", s, i, p[i], want[s][i]);
    }
    CHECK(adam_t_count(a) == 3);
    adam_destroy(&a);
    CHECK(a == NULL);
    adam_destroy(&a);
    CHECK(adam_new(3, 1.0, 0.99, 1e-8, err) == NULL && strstr(err, "beta1"));
    return 0;
}

static int test_schedule_warmup_cosine(void)
{
    schedule_t s = {.lr_init = 1.0, .lr_final = 0.01, .warmup_steps = 3, .steps = 10};
    /* warmup: 1/3, 2/3, 1; then cosine from 1 (step 3) to 0.01 (step 9);
     * halfway (step 6) is the mean of the two. */
    CHECK(fabs(schedule_lr(&s, 0) - 1.0 / 3) < 1e-12);
    CHECK(fabs(schedule_lr(&s, 1) - 2.0 / 3) < 1e-12);
    CHECK(fabs(schedule_lr(&s, 2) - 1.0) < 1e-12);
    CHECK(fabs(schedule_lr(&s, 3) - 1.0) < 1e-12);
    CHECK(fabs(schedule_lr(&s, 6) - 0.505) < 1e-12);
    CHECK(fabs(schedule_lr(&s, 9) - 0.01) < 1e-12);
    CHECK(fabs(schedule_lr(&s, 50) - 0.01) < 1e-12);
    for (int i = 3; i < 9; i++) CHECK(schedule_lr(&s, i + 1) < schedule_lr(&s, i));
    schedule_t nowarm = {.lr_init = 0.5, .lr_final = 0.5, .warmup_steps = 0, .steps = 4};
    for (int i = 0; i < 4; i++) CHECK(fabs(schedule_lr(&nowarm, i) - 0.5) < 1e-12);
    return 0;
}

static int test_clip_global_norm(void)
{
    float g[2] = {3.0f, 4.0f};
    double n = adam_clip_grad_norm(g, 2, 1.0);
    CHECK(fabs(n - 5.0) < 1e-9);
    CHECK(fabs(g[0] - 0.6) < 1e-6 && fabs(g[1] - 0.8) < 1e-6);
    float h[2] = {0.3f, 0.4f};
    adam_clip_grad_norm(h, 2, 1.0); /* under the limit: untouched */
    CHECK(h[0] == 0.3f && h[1] == 0.4f);
    float k[2] = {30.0f, 40.0f};
    adam_clip_grad_norm(k, 2, 0.0); /* 0 disables */
    CHECK(k[0] == 30.0f);
    float bad[2] = {NAN, 1.0f};
    CHECK(!isfinite(adam_clip_grad_norm(bad, 2, 1.0)));
    return 0;
}

/* ---- DBP ------------------------------------------------------------------ */

/* The rule of SPEC section 4 written out directly, in double, for one block. */
static void s_direct_update(int N, double *R, const double *Q, double n, double eta, double kappa)
{
    double *E = calloc((size_t)N * N, sizeof *E), *C = calloc((size_t)N * N, sizeof *C);
    double *M = calloc((size_t)N * N, sizeof *M), *MR = calloc((size_t)N * N, sizeof *MR);
    for (int i = 0; i < N * N; i++) E[i] = Q[i] / n;
    for (int i = 0; i < N; i++) /* C = R E R^T */
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int p = 0; p < N; p++)
                for (int q = 0; q < N; q++) s += R[i * N + p] * E[p * N + q] * R[j * N + q];
            C[i * N + j] = s;
        }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) M[i * N + j] = i == j ? kappa * (C[i * N + i] - 1) : (1 - kappa) * C[i * N + j];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int p = 0; p < N; p++) s += M[i * N + p] * R[p * N + j];
            MR[i * N + j] = s;
        }
    for (int i = 0; i < N * N; i++) R[i] -= eta * MR[i];
    free(E);
    free(C);
    free(M);
    free(MR);
}

/* Q = sum of x x^T over n random correlated vectors x = W g. */
static void s_random_Q(int N, int n, double *Q)
{
    double *W = malloc(sizeof(double) * N * N), *x = malloc(sizeof(double) * N), *g = malloc(sizeof(double) * N);
    for (int i = 0; i < N * N; i++) W[i] = s_gauss() / sqrt(N) + ((i / N) == (i % N) ? 1.0 : 0.0);
    memset(Q, 0, sizeof(double) * N * N);
    for (int s = 0; s < n; s++) {
        for (int i = 0; i < N; i++) g[i] = s_gauss();
        for (int i = 0; i < N; i++) {
            x[i] = 0;
            for (int j = 0; j < N; j++) x[i] += W[i * N + j] * g[j];
        }
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) Q[i * N + j] += x[i] * x[j];
    }
    free(W);
    free(x);
    free(g);
}

static int test_dbp_update_matches_rule(void)
{
    const int N = 64, nblk = 2, npairs = 300;
    size_t nn = (size_t)N * N;
    double *Q = malloc(sizeof(double) * nn * nblk), *Rd = malloc(sizeof(double) * nn * nblk);
    float *R = malloc(sizeof(float) * nn * nblk);
    double *scratch = malloc(sizeof(double) * 3 * nn);
    for (int b = 0; b < nblk; b++) s_random_Q(N, npairs, Q + b * nn);
    /* start from a non-trivial R so that every product in the rule matters */
    for (size_t i = 0; i < nn * nblk; i++) {
        size_t r = (i % nn) / N, c = i % N;
        R[i] = (float)((r == c ? 1.0 : 0.0) + 0.05 * s_gauss());
        Rd[i] = R[i];
    }
    const double eta = 1e-2, kappa = 0.01;
    dbp_update_R(nblk, N, R, Q, npairs, eta, kappa, scratch);
    for (int b = 0; b < nblk; b++) s_direct_update(N, Rd + b * nn, Q + b * nn, npairs, eta, kappa);
    double num = 0, den = 0, moved = 0;
    for (size_t i = 0; i < nn * nblk; i++) {
        num += (R[i] - Rd[i]) * (R[i] - Rd[i]);
        den += Rd[i] * Rd[i];
    }
    (void)moved;
    CHECKF(sqrt(num / den) < 1e-6, "rel err %.3g", sqrt(num / den));
    /* no sampled pairs: R is left alone */
    float before = R[5];
    dbp_update_R(nblk, N, R, Q, 0, eta, kappa, scratch);
    CHECK(R[5] == before);
    free(Q);
    free(Rd);
    free(R);
    free(scratch);
    return 0;
}

/* The point of the rule: iterating it whitens z = R x (off-diagonal
 * correlation shrinks, the diagonal goes towards 1). */
static int test_dbp_decorrelates(void)
{
    const int N = 64, npairs = 2000;
    size_t nn = (size_t)N * N;
    double *Q = malloc(sizeof(double) * nn), *scratch = malloc(sizeof(double) * 3 * nn);
    float *R = malloc(sizeof(float) * nn);
    s_random_Q(N, npairs, Q);
    dbp_identity(1, N, R);
    double off0 = 0, off1 = 0;
    /* off-diagonal mass of C = R E R^T, via the direct implementation */
    double *Rd = malloc(sizeof(double) * nn), *C = malloc(sizeof(double) * nn);
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < nn; i++) Rd[i] = R[i];
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                double s = 0;
                for (int p = 0; p < N; p++)
                    for (int q = 0; q < N; q++) s += Rd[i * N + p] * Q[p * N + q] / npairs * Rd[j * N + q];
                C[i * N + j] = s;
            }
        double off = 0;
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++)
                if (i != j) off += C[i * N + j] * C[i * N + j];
        if (pass == 0) {
            off0 = off;
            for (int it = 0; it < 200; it++) dbp_update_R(1, N, R, Q, npairs, 0.05, 0.01, scratch);
        } else {
            off1 = off;
        }
    }
    CHECKF(off1 < 0.2 * off0, "off-diagonal mass %.4g -> %.4g", off0, off1);
    free(Q);
    free(scratch);
    free(R);
    free(Rd);
    free(C);
    return 0;
}

/* dL/dA = (dL/dS0) R^T, checked by central differences of a nonlinear loss
 * L(S0) = sum(c S0^2 / 2 + d sin(S0)) with S0 = A R, in double. */
static double s_loss_of_A(int N, const double *A, const double *R, const double *c, const double *d)
{
    double L = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int p = 0; p < N; p++) s += A[i * N + p] * R[p * N + j];
            L += c[i * N + j] * s * s / 2 + d[i * N + j] * sin(s);
        }
    return L;
}

static int test_dbp_grad_identity_fd(void)
{
    const int N = 64;
    size_t nn = (size_t)N * N;
    double *A = malloc(sizeof(double) * nn), *R = malloc(sizeof(double) * nn);
    double *c = malloc(sizeof(double) * nn), *d = malloc(sizeof(double) * nn);
    float *Af = malloc(sizeof(float) * nn), *Rf = malloc(sizeof(float) * nn), *S = malloc(sizeof(float) * nn);
    float *dS = malloc(sizeof(float) * nn), *dA = malloc(sizeof(float) * nn);
    for (size_t i = 0; i < nn; i++) {
        Af[i] = (float)(0.3 * s_gauss());
        Rf[i] = (float)(((i / N) == (i % N) ? 1.0 : 0.0) + 0.1 * s_gauss());
        A[i] = Af[i];
        R[i] = Rf[i];
        c[i] = s_uniform();
        d[i] = s_gauss();
    }
    dbp_state(1, N, Af, Rf, S);
    for (size_t i = 0; i < nn; i++) dS[i] = (float)(c[i] * S[i] + d[i] * cos(S[i]));
    dbp_grad_A(1, N, dS, Rf, dA);
    const int probes[5][2] = {{0, 0}, {3, 17}, {63, 63}, {40, 2}, {10, 55}};
    for (int k = 0; k < 5; k++) {
        size_t idx = (size_t)probes[k][0] * N + probes[k][1];
        double h = 1e-5, keep = A[idx];
        A[idx] = keep + h;
        double lp = s_loss_of_A(N, A, R, c, d);
        A[idx] = keep - h;
        double lm = s_loss_of_A(N, A, R, c, d);
        A[idx] = keep;
        double fd = (lp - lm) / (2 * h);
        CHECKF(fabs(fd - dA[idx]) <= 1e-4 * (1 + fabs(fd)), "dA[%zu] = %.6g, finite differences %.6g", idx, dA[idx], fd);
    }
    /* with R = I the parametrisation is the identity */
    dbp_identity(1, N, Rf);
    dbp_state(1, N, Af, Rf, S);
    CHECK(memcmp(S, Af, sizeof(float) * nn) == 0);
    free(A);
    free(R);
    free(c);
    free(d);
    free(Af);
    free(Rf);
    free(S);
    free(dS);
    free(dA);
    return 0;
}

static int test_dbp_row_sampling(void)
{
    int hits = 0, n = 20000;
    for (int i = 0; i < n; i++) hits += dbp_row_sampled(7, i / 16, i % 16, 0.25);
    CHECKF(fabs(hits / (double)n - 0.25) < 0.02, "sampled %d of %d", hits, n);
    for (int i = 0; i < 100; i++) CHECK(dbp_row_sampled(7, 3, i, 0.25) == dbp_row_sampled(7, 3, i, 0.25));
    int differ = 0;
    for (int i = 0; i < 100; i++) differ += dbp_row_sampled(7, 3, i, 0.5) != dbp_row_sampled(8, 3, i, 0.5);
    CHECK(differ > 10); /* the seed matters */
    CHECK(dbp_row_sampled(1, 1, 1, 1.0) == 1);
    return 0;
}


/* ---- checkpoints ---------------------------------------------------------- */

static int test_checkpoint_round_trip(void)
{
    char err[ST_ERR_LEN], path[512];
    snprintf(path, sizeof path, "%s/ck.bin", st_test_tmpdir());
    checkpoint_t *ck = checkpoint_new(2, 3, 8, err);
    CHECKF(ck, "%s", err);
    size_t n = checkpoint_elems(ck);
    CHECK(n == 2 * 3 * 8 * 8);
    for (size_t i = 0; i < n; i++) {
        ck->A[i] = (float)s_gauss();
        ck->R[i] = (float)s_gauss();
        ck->adam_m[i] = (float)s_gauss();
        ck->adam_v[i] = (float)s_uniform();
    }
    ck->dbp = 1;
    ck->step = 17;
    ck->adam_t = 17;
    ck->rng[0] = 0xdeadbeefcafef00dULL;
    ck->rng[3] = 42;
    memset(ck->spec_sha256, 'a', 64);
    CHECK(checkpoint_set_data_pos(ck, "\x01\x02\x03", 3, err) == ST_OK);
    CHECK(checkpoint_set_metrics(ck, "{\"train_loss_first\": 1.5}", err) == ST_OK);
    CHECKF(checkpoint_write(ck, path, err) == ST_OK, "%s", err);
    checkpoint_t *back = NULL;
    CHECKF(checkpoint_read(path, &back, err) == ST_OK, "%s", err);
    CHECK(back->n_layer == 2 && back->n_head == 3 && back->head_size == 8 && back->dbp == 1);
    CHECK(back->step == 17 && back->adam_t == 17 && back->rng[0] == ck->rng[0] && back->rng[3] == 42);
    CHECK(!strcmp(back->spec_sha256, ck->spec_sha256));
    CHECK(back->data_pos_len == 3 && !memcmp(back->data_pos, "\x01\x02\x03", 3));
    CHECK(back->metrics_json && !strcmp(back->metrics_json, ck->metrics_json));
    CHECK(!memcmp(back->A, ck->A, n * 4) && !memcmp(back->R, ck->R, n * 4));
    CHECK(!memcmp(back->adam_m, ck->adam_m, n * 4) && !memcmp(back->adam_v, ck->adam_v, n * 4));
    checkpoint_destroy(&back);

    /* damaged, truncated, foreign, other version, absent: each refused with a
     * sentence that says so */
    char *data = NULL;
    size_t len = 0;
    CHECK(st_read_file(path, 1 << 24, &data, &len, err) == ST_OK);
    data[200] ^= 1;
    CHECK(st_write_file_atomic(path, data, len, err) == ST_OK);
    CHECK(checkpoint_read(path, &back, err) == ST_EFORMAT && strstr(err, "damaged") && !back);
    data[200] ^= 1;
    CHECK(st_write_file_atomic(path, data, len / 2, err) == ST_OK);
    CHECK(checkpoint_read(path, &back, err) == ST_EFORMAT && !back);
    data[8] = 9; /* version 9 */
    CHECK(st_write_file_atomic(path, data, len, err) == ST_OK);
    CHECK(checkpoint_read(path, &back, err) == ST_EFORMAT && strstr(err, "version 9"));
    CHECK(st_write_file_atomic(path, "hello, world, this is not a checkpoint at all, not at all, no no no no no no", 77, err) == ST_OK);
    CHECK(checkpoint_read(path, &back, err) == ST_EFORMAT && strstr(err, "magic"));
    unlink(path);
    CHECK(checkpoint_read(path, &back, err) == ST_ENOTFOUND);
    free(data);
    checkpoint_destroy(&ck);
    return 0;
}

/* ---- the loop, on the fixture model ------------------------------------------ */

/* Makes a small tabs dataset and a job in a fresh folder; *spec is the
 * parsed and checked job and out the folder its tuning writes to (DIR/out).
 * Returns 0, ST_TEST_SKIP when the fixture or the Python sources are absent,
 * 1 when the job is refused (after printing why). */
static int s_small_job(const char *extra_json, char *out, size_t out_len, jobspec_t **spec)
{
    *spec = NULL;
    const char *model = st_test_fixture("rwkv7/pysrc-rwkv7-5M.pth");
    if (!model) return ST_TEST_SKIP;
    const char *src = getenv("STATETUNE_SOURCE_DIR");
    char cmd[4096], path[4200], err[ST_ERR_LEN], dir_out[512];
    snprintf(dir_out, sizeof dir_out, "%s", st_test_tmpdir());
    snprintf(out, out_len, "%s/out", dir_out);
    /* the script sits beside this file (CMake passes absolute paths) */
    char here[2048];
    snprintf(here, sizeof here, "%s", __FILE__);
    char *slash = strrchr(here, '/');
    if (slash) *slash = 0;
    if (src && *src)
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/make_tabs_data.py %s --train 48 --eval 8 --bytes 80 >/dev/null",
                 src, dir_out);
    else
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/make_tabs_data.py %s --train 48 --eval 8 --bytes 80 >/dev/null",
                 slash ? here : "tests", dir_out);
    if (system(cmd) != 0) {
        printf("skipped: could not make the dataset (%s)\n", cmd);
        return ST_TEST_SKIP;
    }
    snprintf(path, sizeof path, "%s/job.json", dir_out);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        return 1;
    }
    fprintf(f, "{\"name\": \"t\", \"model\": \"%s\", \"train\": \"train.jsonl\", \"eval\": \"eval.jsonl\", "
               "\"ctx_len\": 48, \"micro_batch\": 4, \"global_batch\": 8, \"steps\": 3, \"lr_init\": 1.0, "
               "\"lr_final\": 0.1, \"warmup_steps\": 1, \"eval_every\": 0, \"checkpoint_every\": 0%s%s}\n",
            model, extra_json ? ", " : "", extra_json ? extra_json : "");
    fclose(f);
    if (jobspec_parse_file(path, spec, err) || jobspec_set_model(*spec, NULL, err) ||
        jobspec_check_inputs(*spec, err)) {
        fprintf(stderr, "job: %s\n", err);
        jobspec_destroy(spec);
        return 1;
    }
    return 0;
}

/* Whether DIR/NAME exists. */
static int s_exists(const char *dir, const char *name)
{
    char path[1024];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

static int s_cancel_after_two(void *ctx)
{
    int *calls = ctx;
    return ++*calls > 2;
}

static int test_tune_cancel_writes_nothing(void)
{
    char out[600], err[ST_ERR_LEN];
    jobspec_t *spec;
    int rc = s_small_job(NULL, out, sizeof out, &spec);
    if (rc) return rc;
    int calls = 0;
    tune_callbacks_t cb = {.ctx = &calls, .should_cancel = s_cancel_after_two};
    tune_opts_t opts = {.out_dir = out, .threads = 1};
    tune_result_t res;
    rc = tune_run(spec, &opts, &cb, &res, err);
    CHECKF(rc == ST_ECANCELLED, "rc %d: %s", rc, err);
    CHECK(strstr(err, "cancelled") && res.state == NULL);
    CHECK(!s_exists(out, TUNE_STATE_FILE));
    jobspec_destroy(&spec);
    return 0;
}

static int test_tune_nan_fails_cleanly(void)
{
    char out[600], err[ST_ERR_LEN];
    jobspec_t *spec;
    int rc = s_small_job(NULL, out, sizeof out, &spec);
    if (rc) return rc;
    /* a NaN in the initial state poisons the first step's loss */
    size_t n = 6 * 4 * 64 * 64;
    float *init = calloc(n, sizeof(float));
    init[1234] = NAN;
    tune_opts_t opts = {.out_dir = out, .threads = 1, .init_state = init};
    tune_result_t res;
    rc = tune_run(spec, &opts, NULL, &res, err);
    CHECKF(rc == ST_ENUMERIC, "rc %d: %s", rc, err);
    CHECKF(strstr(err, "NaN") || strstr(err, "nan"), "%s", err);
    CHECK(res.state == NULL);
    CHECK(!s_exists(out, TUNE_STATE_FILE));
    CHECK(!s_exists(out, TUNE_METRICS_FILE));
    free(init);
    jobspec_destroy(&spec);
    return 0;
}

/* The exported state, read back from state.safetensors, drives the model in
 * RNN mode (one token at a time, as an inference client does) to the same
 * logits as the GPT-mode engine. */
static int test_tune_state_rnn_matches_gpt(void)
{
    char out[600], err[ST_ERR_LEN], path[700];
    jobspec_t *spec;
    int rc = s_small_job(NULL, out, sizeof out, &spec);
    if (rc) return rc;
    tune_opts_t opts = {.out_dir = out, .threads = 1};
    tune_result_t res;
    CHECKF(tune_run(spec, &opts, NULL, &res, err) == ST_OK, "%s", err);
    CHECK(res.finished && res.state && res.steps == 3);
    CHECK(isfinite(res.eval_loss_before) && isfinite(res.eval_loss_after) && isfinite(res.train_loss_first));

    state_file_t sf = {0};
    snprintf(path, sizeof path, "%s/%s", out, TUNE_STATE_FILE);
    CHECKF(state_read(path, STATE_FMT_SAFETENSORS, &sf, err) == ST_OK, "%s", err);
    CHECK(sf.n_layer == 6 && sf.n_head == 4 && sf.head_size == 64);
    size_t nS = (size_t)6 * 4 * 64 * 64;
    CHECK(memcmp(sf.data, res.state, nS * sizeof(float)) == 0);
    double mag = 0;
    for (size_t i = 0; i < nS; i++) mag += fabs(sf.data[i]);
    CHECK(mag > 0); /* tuning moved the state away from zeros */

    rwkv_model_t *model = rwkv_model_load(spec->model_path, err);
    CHECKF(model, "%s", err);
    const char *text = "\tdef run(self):\n\t\treturn self.value";
    int T = (int)strlen(text), V = model->cfg.vocab;
    int32_t tokens[64];
    for (int t = 0; t < T; t++) tokens[t] = (unsigned char)text[t];
    float *gpt = malloc(sizeof(float) * (size_t)T * V), *rnn = malloc(sizeof(float) * (size_t)T * V);
    engine_opts_t eo = {.backend = ENGINE_CPU, .max_batch = 1, .max_ctx = T, .threads = 1};
    engine_t *eng = engine_new(model, &eo, err);
    CHECKF(eng, "%s", err);
    engine_batch_t b = {.tokens = tokens, .B = 1, .T = T, .state0 = sf.data, .logits = gpt};
    CHECKF(engine_run(eng, &b, err) == ST_OK, "%s", err);
    rwkv_rnn_t *r = rwkv_rnn_new(model, sf.data, err);
    CHECKF(r, "%s", err);
    for (int t = 0; t < T; t++) CHECKF(rwkv_rnn_step(r, tokens[t], rnn + (size_t)t * V, err) == ST_OK, "%s", err);
    double rel = st_rel_err_ff(rnn, gpt, (size_t)T * V);
    printf("   RNN vs GPT logits from the tuned state: rel err %.3g\n", rel);
    CHECKF(rel < 1e-4, "rel err %.3g", rel);
    /* and greedy generation runs from it */
    int32_t gen[8];
    int ng = 0;
    CHECKF(eval_generate(model, sf.data, tokens, T, 8, gen, &ng, err) == ST_OK && ng == 8, "%s", err);
    rwkv_rnn_destroy(&r);
    engine_destroy(&eng);
    rwkv_model_destroy(&model);
    free(gpt);
    free(rnn);
    state_file_free(&sf);
    tune_result_clear(&res);
    jobspec_destroy(&spec);
    return 0;
}

/* With DBP on, R leaves the identity, the exported state is A R, and
 * training still lowers the loss. */
static int test_tune_dbp_trains_R(void)
{
    char out[600], err[ST_ERR_LEN], path[700];
    jobspec_t *spec;
    int rc = s_small_job("\"dbp\": {\"enabled\": true, \"lr\": 0.01, \"sample_fraction\": 0.5}", out, sizeof out,
                         &spec);
    if (rc) return rc;
    tune_opts_t opts = {.out_dir = out, .threads = 1};
    tune_result_t res;
    CHECKF(tune_run(spec, &opts, NULL, &res, err) == ST_OK, "%s", err);
    checkpoint_t *ck = NULL;
    snprintf(path, sizeof path, "%s/%s", out, TUNE_CHECKPOINT_FILE);
    CHECKF(checkpoint_read(path, &ck, err) == ST_OK, "%s", err);
    CHECK(ck->dbp == 1 && ck->step == 3);
    size_t n = checkpoint_elems(ck);
    float *I = malloc(n * sizeof(float)), *S = malloc(n * sizeof(float));
    dbp_identity(6 * 4, 64, I);
    double moved = 0;
    for (size_t i = 0; i < n; i++) moved += fabs(ck->R[i] - I[i]);
    CHECKF(moved > 1e-3, "R moved by %.3g only", moved);
    dbp_state(6 * 4, 64, ck->A, ck->R, S);
    CHECK(memcmp(S, res.state, n * sizeof(float)) == 0);
    CHECKF(res.eval_loss_after < res.eval_loss_before, "%.4f -> %.4f", res.eval_loss_before, res.eval_loss_after);
    free(I);
    free(S);
    checkpoint_destroy(&ck);
    tune_result_clear(&res);
    jobspec_destroy(&spec);
    return 0;
}

static const st_test_t s_tests[] = {
    {"adam_matches_torch", test_adam_matches_torch},
    {"schedule_warmup_cosine", test_schedule_warmup_cosine},
    {"clip_global_norm", test_clip_global_norm},
    {"dbp_update_matches_rule", test_dbp_update_matches_rule},
    {"dbp_decorrelates", test_dbp_decorrelates},
    {"dbp_grad_identity_fd", test_dbp_grad_identity_fd},
    {"dbp_row_sampling", test_dbp_row_sampling},
    {"checkpoint_round_trip", test_checkpoint_round_trip},
    {"tune_cancel_writes_nothing", test_tune_cancel_writes_nothing},
    {"tune_nan_fails_cleanly", test_tune_nan_fails_cleanly},
    {"tune_state_rnn_matches_gpt", test_tune_state_rnn_matches_gpt},
    {"tune_dbp_trains_R", test_tune_dbp_trains_R},
    {NULL, NULL},
};

int main(int argc, char **argv) { return st_test_main(argc, argv, s_tests); }
