/*
 * test_methods.c - the observer objective and the kernel-expanded state (SPEC
 * section 4; kernels/cpu/observer.c, kernels/cpu/rbf.c, engine/kstate.c, the
 * CPU engine's use of them):
 *   - U0 = 0 gives the base model exactly (logits, loss, dS0);
 *   - alpha = 1 is plain tuning exactly, and the fused observer head at
 *     alpha = 1 agrees with the plain head;
 *   - gradients against central finite differences (directional, in a
 *     random direction): the observer loss wrt logits, dU0, and dS0 with both
 *     methods on (which checks the kernel term's share of dr and dw, since
 *     layer 0's state reaches layer 1's r and w);
 *   - k-means support vectors are unit vectors and deterministic in the seed;
 *   - the observer against a top-k teacher (kernels/cpu/observer_topk.c,
 *     engine/teacher_cache.c): with k = V it equals the full observer to 1e-6
 *     (loss and dS0, also through a cache built by the teacher and read
 *     back), its gradients against finite differences (row and dS0), and the
 *     cache file refuses another teacher, other data and damaged bytes;
 *   - a kernel-expanded state taken from a job folder (state.safetensors +
 *     kstate.safetensors) into the registry and back out (and through
 *     --format statetune) gives the RNN exactly the job folder's logits.
 * Model: the random tiny fixture (2 layers, 2 heads, vocab 256). Random
 * inputs are seeded per test (METHODS_SEED varies them when exploring).
 */
#include "harness.h"

#include "common/st_err.h"
#include "common/st_fs.h"
#include "engine/engine.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "engine/kstate.h"
#include "engine/observer.h"
#include "engine/teacher_cache.h"
#include "kernels/cpu/head.h"
#include "kernels/cpu/observer.h"
#include "kernels/cpu/observer_topk.h"
#include "store/registry.h"
#include "store/state_formats.h"
#include "kernels/cpu/rbf.h"
#include "model/model.h"

#include <sodium.h>
#include <stdint.h>

static uint64_t s_x = 88172645463325252ULL;
static double s_u(void)
{
    s_x ^= s_x << 13;
    s_x ^= s_x >> 7;
    s_x ^= s_x << 17;
    return (double)(s_x >> 11) / 9007199254740992.0;
}
static float s_n(void) { return (float)(sqrt(-2 * log(s_u() + 1e-12)) * cos(6.283185307179586 * s_u())); }

typedef struct {
    rwkv_model_t *m;
    engine_t *e;
    int L, H, N, V, B, T;
    size_t nS;
    int32_t tok[2 * 24], tgt[2 * 24];
    float *s0;
} fx_t;

static int s_fx(fx_t *f)
{
    memset(f, 0, sizeof *f);
    s_x = 88172645463325252ULL ^ (uint64_t)(getenv("METHODS_SEED") ? atoll(getenv("METHODS_SEED")) : 0);
    const char *path = st_test_fixture("rwkv7/tiny.safetensors");
    if (!path) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    f->m = rwkv_model_load(path, err);
    if (!f->m) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const rwkv_config_t *c = &f->m->cfg;
    f->L = c->n_layer, f->H = c->n_head, f->N = c->head_size, f->V = c->vocab;
    f->B = 2, f->T = 24;
    engine_opts_t o = {.backend = ENGINE_CPU, .max_batch = f->B, .max_ctx = f->T, .threads = 1};
    f->e = engine_new(f->m, &o, err);
    if (!f->e) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    f->nS = (size_t)f->L * f->H * f->N * f->N;
    f->s0 = malloc(f->nS * sizeof(float));
    for (size_t i = 0; i < f->nS; i++) f->s0[i] = 0.3f * s_n();
    for (int i = 0; i < f->B * f->T; i++) {
        f->tok[i] = (int32_t)(s_u() * f->V);
        f->tgt[i] = i % 5 == 0 ? -1 : (int32_t)(s_u() * f->V);
    }
    return 0;
}

static void s_fx_free(fx_t *f)
{
    engine_destroy(&f->e);
    rwkv_model_destroy(&f->m);
    free(f->s0);
}

static kstate_t *s_kstate(fx_t *f, int M, float gamma, float u0_scale)
{
    char err[ST_ERR_LEN];
    kstate_t *ks = kstate_new(f->L, f->H, f->N, M, gamma, err);
    if (!ks) return NULL;
    kstate_support_random(ks, 7);
    float *u = kstate_u0(ks);
    for (size_t i = 0; i < kstate_u0_size(ks); i++) u[i] = u0_scale * s_n();
    return ks;
}

/* one run; returns loss_sum (NaN on error) */
static double s_run(fx_t *f, const float *s0, const engine_kstate_t *ks, const float *teacher, float alpha,
                    float *logits, float *ds0, float *du0)
{
    char err[ST_ERR_LEN];
    engine_batch_t b = {.tokens = f->tok, .targets = f->tgt, .B = f->B, .T = f->T, .state0 = s0,
                        .logits = logits, .dstate0 = ds0, .kstate = ks, .dU0 = du0,
                        .teacher_logits = teacher, .obs_alpha = alpha, .obs_temperature = 2.0f};
    if (engine_run(f->e, &b, err)) {
        fprintf(stderr, "engine_run: %s\n", err);
        return NAN;
    }
    return b.loss_sum;
}

static int t_u0_zero_is_base(void)
{
    fx_t f;
    int rc = s_fx(&f);
    if (rc) return rc;
    size_t nl = (size_t)f.B * f.T * f.V;
    float *l0 = malloc(nl * 4), *l1 = malloc(nl * 4), *d0 = calloc(f.nS, 4), *d1 = calloc(f.nS, 4);
    kstate_t *ks = s_kstate(&f, 16, 1.0f, 0.0f);
    CHECK(ks);
    float *du = calloc(kstate_u0_size(ks), 4);
    double a = s_run(&f, f.s0, NULL, NULL, 1, l0, d0, NULL);
    double b = s_run(&f, f.s0, kstate_view(ks), NULL, 1, l1, d1, du);
    CHECK(isfinite(a) && isfinite(b));
    double mx = 0, dmx = 0;
    for (size_t i = 0; i < nl; i++) mx = fmax(mx, fabs(l0[i] - l1[i]));
    for (size_t i = 0; i < f.nS; i++) dmx = fmax(dmx, fabs(d0[i] - d1[i]));
    printf("U0 = 0: max |logit diff| %.3g, loss %.9g vs %.9g, max |dS0 diff| %.3g\n", mx, a, b, dmx);
    CHECKF(mx <= 1e-7 && a == b && dmx <= 1e-7, "the kernel-expanded state with U0 = 0 changed the model");
    /* and U0 != 0 really changes it (the test can fail) */
    float *u = kstate_u0(ks);
    for (size_t i = 0; i < kstate_u0_size(ks); i++) u[i] = 0.5f * s_n();
    double c = s_run(&f, f.s0, kstate_view(ks), NULL, 1, l1, NULL, NULL);
    CHECKF(fabs(c - a) > 1e-5 * fabs(a), "U0 != 0 left the loss at %.9g", c);
    free(l0), free(l1), free(d0), free(d1), free(du);
    kstate_destroy(&ks);
    s_fx_free(&f);
    return 0;
}

static int t_alpha_one_is_plain(void)
{
    fx_t f;
    int rc = s_fx(&f);
    if (rc) return rc;
    size_t nl = (size_t)f.B * f.T * f.V;
    float *teach = malloc(nl * 4), *d0 = calloc(f.nS, 4), *d1 = calloc(f.nS, 4);
    for (size_t i = 0; i < nl; i++) teach[i] = 3.0f * s_n();
    double a = s_run(&f, f.s0, NULL, NULL, 1, NULL, d0, NULL);
    double b = s_run(&f, f.s0, NULL, teach, 1.0f, NULL, d1, NULL);
    CHECK(isfinite(a) && a == b);
    CHECK(memcmp(d0, d1, f.nS * 4) == 0);
    /* alpha < 1 does change the objective */
    double c = s_run(&f, f.s0, NULL, teach, 0.5f, NULL, NULL, NULL);
    CHECK(fabs(c - a) > 1e-3 * a);
    /* the fused observer head at alpha = 1 agrees with the plain head */
    int R = 40, C = 32, V = 50;
    float *x = malloc(R * C * 4), *hd = malloc(V * C * 4), *tl = malloc(R * V * 4), *sc = malloc(R * V * 4);
    float *dx0 = malloc(R * C * 4), *dx1 = malloc(R * C * 4);
    int32_t tg[40];
    for (int i = 0; i < R * C; i++) x[i] = s_n();
    for (int i = 0; i < V * C; i++) hd[i] = 0.3f * s_n();
    for (int i = 0; i < R * V; i++) tl[i] = s_n();
    for (int i = 0; i < R; i++) tg[i] = i % 7 == 3 ? -1 : (int32_t)(s_u() * V);
    head_result_t hr;
    observer_result_t orr;
    head_ce_cpu(R, C, V, x, hd, tg, NULL, dx0, sc, 16, &hr);
    observer_head_cpu(R, C, V, x, hd, tl, tg, 1.0f, 2.0f, NULL, dx1, sc, 16, &orr);
    CHECK(hr.n_targets == orr.n_targets && hr.n_correct == orr.n_correct);
    CHECKF(fabs(hr.loss_sum - orr.loss_sum) <= 1e-6 * hr.loss_sum, "%.9g vs %.9g", hr.loss_sum, orr.loss_sum);
    CHECK(st_rel_err_ff(dx1, dx0, (size_t)R * C) < 1e-6);
    free(x), free(hd), free(tl), free(sc), free(dx0), free(dx1);
    free(teach), free(d0), free(d1);
    s_fx_free(&f);
    return 0;
}

static int t_observer_grad_logits(void)
{
    int V = 60;
    float s[60], t[60], ds[60], sp[60], sm[60];
    for (int trial = 0; trial < 4; trial++) {
        float alpha = trial * 0.3f, tau = 0.5f + trial;
        for (int v = 0; v < V; v++) s[v] = 2 * s_n(), t[v] = 2 * s_n();
        int tg = (int)(s_u() * V);
        double ce, kl;
        observer_row_cpu(V, s, t, tg, alpha, tau, &ce, &kl, ds);
        CHECK(kl >= 0 && ce > 0);
        /* KL of a distribution with itself is zero */
        double ce2, kl2;
        observer_row_cpu(V, s, s, tg, alpha, tau, &ce2, &kl2, NULL);
        CHECK(fabs(kl2) < 1e-6);
        double eps = 1e-2, dir = 0, fd;
        float D[60];
        for (int v = 0; v < V; v++) D[v] = s_n(), dir += (double)ds[v] * D[v];
        for (int v = 0; v < V; v++) sp[v] = s[v] + (float)eps * D[v], sm[v] = s[v] - (float)eps * D[v];
        double cp, kp, cm, km;
        observer_row_cpu(V, sp, t, tg, alpha, tau, &cp, &kp, NULL);
        observer_row_cpu(V, sm, t, tg, alpha, tau, &cm, &km, NULL);
        double sc = (1 - alpha) * (double)tau * tau;
        fd = ((alpha * cp + sc * kp) - (alpha * cm + sc * km)) / (2 * eps);
        printf("observer d/dlogits: alpha %.1f tau %.1f analytic %.6f finite-diff %.6f\n", alpha, tau, dir, fd);
        CHECKF(fabs(fd - dir) <= 1e-3 * fmax(1, fabs(dir)), "%g vs %g", dir, fd);
    }
    return 0;
}

/* directional finite difference of loss_sum in S0 and in U0 with both methods on */
static int t_fd_u0_s0(void)
{
    fx_t f;
    int rc = s_fx(&f);
    if (rc) return rc;
    kstate_t *ks = s_kstate(&f, 12, 2.0f, 3.0f);
    CHECK(ks);
    size_t nU = kstate_u0_size(ks), nl = (size_t)f.B * f.T * f.V;
    float *teach = malloc(nl * 4);
    for (size_t i = 0; i < nl; i++) teach[i] = 2.0f * s_n();
    float *ds = calloc(f.nS, 4), *du = calloc(nU, 4), *DS = malloc(f.nS * 4), *DU = malloc(nU * 4);
    float *s0p = malloc(f.nS * 4), *u0 = kstate_u0(ks), *u0c = malloc(nU * 4);
    memcpy(u0c, u0, nU * 4);
    double l = s_run(&f, f.s0, kstate_view(ks), teach, 0.4f, NULL, ds, du);
    CHECK(isfinite(l));
    /* S0: only layer 0 moves, so its effect on layer 1 goes through layer 1's r and w */
    double dirS = 0, dirU = 0;
    for (size_t i = 0; i < f.nS; i++) DS[i] = i < f.nS / f.L ? s_n() : 0, dirS += (double)ds[i] * DS[i];
    for (size_t i = 0; i < nU; i++) DU[i] = s_n(), dirU += (double)du[i] * DU[i];
    double eps = 3e-3, epsU = 0.05, lp, lm;
    for (size_t i = 0; i < f.nS; i++) s0p[i] = f.s0[i] + (float)eps * DS[i];
    lp = s_run(&f, s0p, kstate_view(ks), teach, 0.4f, NULL, NULL, NULL);
    for (size_t i = 0; i < f.nS; i++) s0p[i] = f.s0[i] - (float)eps * DS[i];
    lm = s_run(&f, s0p, kstate_view(ks), teach, 0.4f, NULL, NULL, NULL);
    double fdS = (lp - lm) / (2 * eps);
    /* U0's effect on the loss is small (d_t fades fast in this random model),
     * so its step is larger; rbf_grad checks dU0 tightly at the kernel level */
    for (size_t i = 0; i < nU; i++) u0[i] = u0c[i] + (float)epsU * DU[i];
    lp = s_run(&f, f.s0, kstate_view(ks), teach, 0.4f, NULL, NULL, NULL);
    for (size_t i = 0; i < nU; i++) u0[i] = u0c[i] - (float)epsU * DU[i];
    lm = s_run(&f, f.s0, kstate_view(ks), teach, 0.4f, NULL, NULL, NULL);
    double fdU = (lp - lm) / (2 * epsU);
    memcpy(u0, u0c, nU * 4);
    /* the same S0 direction without the kernel term's share in dr, dw would differ */
    printf("dS0 . D: analytic %.6f finite-diff %.6f; dU0 . D: analytic %.6f finite-diff %.6f\n", dirS, fdS,
           dirU, fdU);
    CHECKF(fabs(fdS - dirS) <= 2e-3 * fmax(1, fabs(dirS)), "dS0 %g vs %g", dirS, fdS);
    CHECKF(fabs(fdU - dirU) <= 1e-2 * fabs(dirU), "dU0 %g vs %g", dirU, fdU);
    free(teach), free(ds), free(du), free(DS), free(DU), free(s0p), free(u0c);
    kstate_destroy(&ks);
    s_fx_free(&f);
    return 0;
}

/* RNN mode with the same kernel-expanded state gives engine_run's logits
 * (exact match in evaluation generates in RNN mode) */
static int t_rnn_matches_engine(void)
{
    fx_t f;
    int rc = s_fx(&f);
    if (rc) return rc;
    kstate_t *ks = s_kstate(&f, 10, 1.0f, 3.0f);
    CHECK(ks);
    size_t nl = (size_t)f.B * f.T * f.V;
    float *lg = malloc(nl * 4), *one = malloc(f.V * 4);
    CHECK(isfinite(s_run(&f, f.s0, kstate_view(ks), NULL, 1, lg, NULL, NULL)));
    char err[ST_ERR_LEN];
    rwkv_rnn_t *rnn = rwkv_rnn_new(f.m, f.s0, err);
    CHECK(rnn && rwkv_rnn_set_kstate(rnn, kstate_view(ks), err) == ST_OK);
    double num = 0, den = 0, off = 0;
    for (int t = 0; t < f.T; t++) { /* batch row 1 */
        CHECK(rwkv_rnn_step(rnn, f.tok[f.T + t], one, err) == ST_OK);
        const float *ref = lg + ((size_t)f.T + t) * f.V;
        for (int v = 0; v < f.V; v++) num += (one[v] - ref[v]) * (double)(one[v] - ref[v]), den += (double)ref[v] * ref[v];
    }
    rwkv_rnn_destroy(&rnn);
    /* without the kstate the RNN is measurably off the same logits */
    rnn = rwkv_rnn_new(f.m, f.s0, err);
    for (int t = 0; t < f.T; t++) {
        CHECK(rwkv_rnn_step(rnn, f.tok[f.T + t], one, err) == ST_OK);
        const float *ref = lg + ((size_t)f.T + t) * f.V;
        for (int v = 0; v < f.V; v++) off += (one[v] - ref[v]) * (double)(one[v] - ref[v]);
    }
    rwkv_rnn_destroy(&rnn);
    printf("RNN vs engine with U0: rel err %.3g (without U0 in the RNN: %.3g)\n", sqrt(num / den), sqrt(off / den));
    CHECK(sqrt(num / den) < 1e-5 && sqrt(off / den) > 10 * sqrt(num / den));
    free(lg), free(one);
    kstate_destroy(&ks);
    s_fx_free(&f);
    return 0;
}

/* the RBF kernel alone, with decays near 1 so that d_t stays large: loss =
 * sum(y . G) for a random G; directional differences in r, w and U0 */
static int t_rbf_grad(void)
{
    int B = 2, T = 10, H = 2, N = 64, M = 9;
    float gamma = 1.5f;
    size_t n = (size_t)B * T * H * N, nU = (size_t)H * N * M;
    float *r = malloc(n * 4), *w = malloc(n * 4), *G = malloc(n * 4), *y = malloc(n * 4);
    float *U = malloc(nU * 4), *sv = malloc(nU * 4), *dr = calloc(n, 4), *dw = calloc(n, 4), *dU = calloc(nU, 4);
    float *sc = malloc((size_t)B * H * T * 4), *rp = malloc(n * 4), *wp = malloc(n * 4), *Up = malloc(nU * 4);
    float *Dr = malloc(n * 4), *Dw = malloc(n * 4), *DU = malloc(nU * 4);
    for (size_t i = 0; i < n; i++) r[i] = s_n(), w[i] = 0.9f + 0.1f * (float)s_u(), G[i] = s_n();
    for (size_t i = 0; i < nU; i++) U[i] = s_n(), sv[i] = s_n();
    for (int v = 0; v < H * M; v++) {
        double ss = 0;
        for (int i = 0; i < N; i++) ss += (double)sv[v * N + i] * sv[v * N + i];
        for (int i = 0; i < N; i++) sv[v * N + i] /= (float)sqrt(ss);
    }
    for (size_t i = 0; i < n; i++) Dr[i] = s_n(), Dw[i] = s_n();
    for (size_t i = 0; i < nU; i++) DU[i] = s_n();
    rbf_backward_cpu(B, T, H, M, gamma, r, w, U, sv, G, dr, dw, dU, sc);
    const float *D[3] = {Dr, Dw, DU};
    float *g[3] = {dr, dw, dU};
    size_t len[3] = {n, n, nU};
    const char *name[3] = {"r", "w", "U0"};
    for (int k = 0; k < 3; k++) {
        double dir = 0, lp = 0, lm = 0, eps = 1e-2;
        for (size_t i = 0; i < len[k]; i++) dir += (double)g[k][i] * D[k][i];
        for (int sgn = -1; sgn <= 1; sgn += 2) {
            memcpy(rp, r, n * 4), memcpy(wp, w, n * 4), memcpy(Up, U, nU * 4);
            float *p = k == 0 ? rp : k == 1 ? wp : Up;
            for (size_t i = 0; i < len[k]; i++) p[i] += sgn * (float)eps * D[k][i];
            memset(y, 0, n * 4);
            rbf_forward_cpu(B, T, H, M, gamma, rp, wp, Up, sv, y);
            double l = 0;
            for (size_t i = 0; i < n; i++) l += (double)y[i] * G[i];
            if (sgn < 0) lm = l; else lp = l;
        }
        double fd = (lp - lm) / (2 * eps);
        printf("rbf d/d%s: analytic %.6f finite-diff %.6f\n", name[k], dir, fd);
        CHECKF(fabs(fd - dir) <= 2e-3 * fabs(dir), "d/d%s %g vs %g", name[k], dir, fd);
    }
    free(r), free(w), free(G), free(y), free(U), free(sv), free(dr), free(dw), free(dU), free(sc);
    free(rp), free(wp), free(Up), free(Dr), free(Dw), free(DU);
    return 0;
}

static int t_kmeans_deterministic(void)
{
    int L = 2, H = 2, N = 64, M = 8;
    size_t rows = 300;
    float *r = malloc((size_t)L * rows * H * N * 4);
    for (size_t i = 0; i < (size_t)L * rows * H * N; i++) r[i] = s_n() + (i % 3 ? 0.5f : 0);
    char err[ST_ERR_LEN];
    kstate_t *a = kstate_new(L, H, N, M, 1.0f, err), *b = kstate_new(L, H, N, M, 1.0f, err),
             *c = kstate_new(L, H, N, M, 1.0f, err);
    CHECK(a && b && c);
    CHECK(kstate_support_kmeans(a, r, rows, 5, 10, err) == ST_OK);
    CHECK(kstate_support_kmeans(b, r, rows, 5, 10, err) == ST_OK);
    CHECK(kstate_support_kmeans(c, r, rows, 6, 10, err) == ST_OK);
    size_t n = (size_t)L * H * M * N;
    CHECK(memcmp(kstate_support(a), kstate_support(b), n * 4) == 0);
    CHECK(memcmp(kstate_support(a), kstate_support(c), n * 4) != 0);
    for (size_t v = 0; v < (size_t)L * H * M; v++) {
        double ss = 0;
        for (int i = 0; i < N; i++) ss += (double)kstate_support(a)[v * N + i] * kstate_support(a)[v * N + i];
        CHECK(fabs(ss - 1) < 1e-5);
    }
    /* U0 starts at zero */
    for (size_t i = 0; i < kstate_u0_size(a); i++) CHECK(kstate_u0(a)[i] == 0);
    /* too few points for the features: one sentence, no crash */
    CHECK(kstate_support_kmeans(a, r, 4, 5, 10, err) == ST_EINVAL && strstr(err, "usable"));
    kstate_support_random(a, 9);
    kstate_support_random(b, 9);
    CHECK(memcmp(kstate_support(a), kstate_support(b), n * 4) == 0);
    kstate_destroy(&a), kstate_destroy(&b), kstate_destroy(&c);
    kstate_destroy(&a);
    free(r);
    return 0;
}

/* ---- the observer against a top-k teacher --------------------------------- */

typedef struct {
    const float *row;
} s_sort_ctx_t;

static int s_by_value(const void *a, const void *b, void *ctx)
{
    const float *row = ((s_sort_ctx_t *)ctx)->row;
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    return row[i] > row[j] ? -1 : row[i] < row[j] ? 1 : (i > j) - (i < j);
}

/* the top k of every row of teacher (R, V), by sorting */
static void s_topk_rows(int R, int V, int k, const float *teacher, float *val, int32_t *ids)
{
    int32_t *ord = malloc((size_t)V * sizeof *ord);
    for (int r = 0; r < R; r++) {
        s_sort_ctx_t c = {teacher + (size_t)r * V};
        for (int v = 0; v < V; v++) ord[v] = v;
        qsort_r(ord, (size_t)V, sizeof *ord, s_by_value, &c);
        for (int j = 0; j < k; j++) {
            ids[(size_t)r * k + j] = ord[j];
            val[(size_t)r * k + j] = c.row[ord[j]];
        }
    }
    free(ord);
}

static double s_run_topk(fx_t *f, const float *s0, const float *val, const int32_t *ids, int k, float alpha,
                         float *ds0)
{
    char err[ST_ERR_LEN];
    engine_batch_t b = {.tokens = f->tok, .targets = f->tgt, .B = f->B, .T = f->T, .state0 = s0, .dstate0 = ds0,
                        .teacher_topk = val, .teacher_topk_ids = ids, .teacher_k = k, .obs_alpha = alpha,
                        .obs_temperature = 2.0f};
    if (engine_run(f->e, &b, err)) {
        fprintf(stderr, "engine_run: %s\n", err);
        return NAN;
    }
    return b.loss_sum;
}

/* k = V: the top-k objective is the full one (loss and dS0 to 1e-6); k < V is not */
static int t_topk_full_k_equals_on_the_fly(void)
{
    fx_t f;
    int rc = s_fx(&f);
    if (rc) return rc;
    int R = f.B * f.T, V = f.V;
    float *teach = malloc((size_t)R * V * 4), *val = malloc((size_t)R * V * 4);
    int32_t *ids = malloc((size_t)R * V * 4);
    float *d0 = calloc(f.nS, 4), *d1 = calloc(f.nS, 4);
    for (size_t i = 0; i < (size_t)R * V; i++) teach[i] = 3.0f * s_n();
    s_topk_rows(R, V, V, teach, val, ids);
    double a = s_run(&f, f.s0, NULL, teach, 0.3f, NULL, d0, NULL);
    double b = s_run_topk(&f, f.s0, val, ids, V, 0.3f, d1);
    double rel = st_rel_err_ff(d1, d0, f.nS);
    printf("k = V: loss %.12g (on the fly) vs %.12g (top-k), dS0 relative error %.3g\n", a, b, rel);
    CHECK(isfinite(a) && isfinite(b));
    CHECKF(fabs(a - b) <= 1e-6 * fabs(a), "loss %.12g vs %.12g", a, b);
    CHECKF(rel <= 1e-6, "dS0 differs by %.3g", rel);
    /* k = 8 keeps only part of the teacher: the objective changes */
    s_topk_rows(R, V, 8, teach, val, ids);
    double c = s_run_topk(&f, f.s0, val, ids, 8, 0.3f, NULL);
    printf("k = 8: loss %.9g\n", c);
    CHECKF(isfinite(c) && fabs(c - a) > 1e-4 * fabs(a), "k = 8 gave the full loss %.9g", c);
    /* an id outside the vocabulary is refused, not read */
    ids[1 * 8 + 3] = V + 5;
    char err[ST_ERR_LEN];
    engine_batch_t bb = {.tokens = f.tok, .targets = f.tgt, .B = f.B, .T = f.T, .state0 = f.s0,
                         .teacher_topk = val, .teacher_topk_ids = ids, .teacher_k = 8, .obs_alpha = 0.3f,
                         .obs_temperature = 2.0f};
    CHECK(engine_run(f.e, &bb, err) == ST_EINVAL && strstr(err, "outside the vocabulary"));
    free(teach), free(val), free(ids), free(d0), free(d1);
    s_fx_free(&f);
    return 0;
}

/* gradients of the top-k objective: per row wrt the logits, and dS0 through the model */
static int t_topk_fd(void)
{
    int V = 60, K = 7;
    float s[60], t[60], ds[60], sp[60], sm[60], tv[60];
    int32_t ti[60];
    for (int trial = 0; trial < 4; trial++) {
        float alpha = trial * 0.3f, tau = 0.5f + trial;
        for (int v = 0; v < V; v++) s[v] = 2 * s_n(), t[v] = 2 * s_n();
        s_topk_rows(1, V, K, t, tv, ti);
        int tg = (int)(s_u() * V);
        double ce, kl, cp, kp, cm, km, dir = 0;
        observer_topk_row_cpu(V, K, s, tv, ti, tg, alpha, tau, &ce, &kl, ds);
        float D[60];
        for (int v = 0; v < V; v++) D[v] = s_n(), dir += (double)ds[v] * D[v];
        double eps = 1e-2;
        for (int v = 0; v < V; v++) sp[v] = s[v] + (float)eps * D[v], sm[v] = s[v] - (float)eps * D[v];
        observer_topk_row_cpu(V, K, sp, tv, ti, tg, alpha, tau, &cp, &kp, NULL);
        observer_topk_row_cpu(V, K, sm, tv, ti, tg, alpha, tau, &cm, &km, NULL);
        double sc = (1 - alpha) * (double)tau * tau;
        double fd = ((alpha * cp + sc * kp) - (alpha * cm + sc * km)) / (2 * eps);
        printf("top-k row d/dlogits: alpha %.1f tau %.1f analytic %.6f finite-diff %.6f\n", alpha, tau, dir, fd);
        CHECKF(fabs(fd - dir) <= 1e-3 * fmax(1, fabs(dir)), "%g vs %g", dir, fd);
    }
    fx_t f;
    int rc = s_fx(&f);
    if (rc) return rc;
    int R = f.B * f.T, k = 16;
    float *teach = malloc((size_t)R * f.V * 4), *val = malloc((size_t)R * k * 4);
    int32_t *ids = malloc((size_t)R * k * 4);
    for (size_t i = 0; i < (size_t)R * f.V; i++) teach[i] = 3.0f * s_n();
    s_topk_rows(R, f.V, k, teach, val, ids);
    float *ds0 = calloc(f.nS, 4), *DS = malloc(f.nS * 4), *s0p = malloc(f.nS * 4);
    double l = s_run_topk(&f, f.s0, val, ids, k, 0.4f, ds0);
    CHECK(isfinite(l));
    double dir = 0, eps = 3e-3;
    for (size_t i = 0; i < f.nS; i++) DS[i] = i < f.nS / f.L ? s_n() : 0, dir += (double)ds0[i] * DS[i];
    for (size_t i = 0; i < f.nS; i++) s0p[i] = f.s0[i] + (float)eps * DS[i];
    double lp = s_run_topk(&f, s0p, val, ids, k, 0.4f, NULL);
    for (size_t i = 0; i < f.nS; i++) s0p[i] = f.s0[i] - (float)eps * DS[i];
    double lm = s_run_topk(&f, s0p, val, ids, k, 0.4f, NULL);
    double fd = (lp - lm) / (2 * eps);
    printf("top-k (k = %d) dS0 . D: analytic %.6f finite-diff %.6f\n", k, dir, fd);
    CHECKF(fabs(fd - dir) <= 2e-3 * fmax(1, fabs(dir)), "dS0 %g vs %g", dir, fd);
    free(teach), free(val), free(ids), free(ds0), free(DS), free(s0p);
    s_fx_free(&f);
    return 0;
}

/* a small byte-level dataset of text samples */
static dataset_t *s_dataset(const char *text_extra, int ctx, char *err)
{
    tokenizer_t *tok = tokenizer_new("bytes", err);
    if (!tok) return NULL;
    char buf[4096];
    int n = snprintf(buf, sizeof buf,
                     "{\"text\": \"def f(x):\\n\\treturn x + 1\\n\"}\n{\"text\": \"import os\\nprint(os.sep)\"}\n"
                     "{\"prompt\": \"# file: a.py\\n\", \"completion\": \"# MIT licence\\n\"}\n"
                     "{\"text\": \"for i in range(3):\\n\\tprint(i)\"}\n{\"text\": \"%s\"}\n",
                     text_extra);
    dataset_t *ds = NULL;
    if (dataset_load_buffer("topk.jsonl", buf, (size_t)n, tok, ctx, JOB_TRUNCATE, &ds, err)) ds = NULL;
    tokenizer_destroy(&tok);
    return ds;
}

/* The cache built by running the teacher: k = V through the cache equals the
 * teacher on the fly; a stale cache (other teacher, other data, other k) and
 * a damaged or truncated file are refused with one sentence. */
static int t_topk_cache(void)
{
    const char *model = st_test_fixture("rwkv7/tiny.safetensors");
    if (!model) return ST_TEST_SKIP;
    char err[ST_ERR_LEN], path[1024], spath[1024];
    fx_t f;
    int rc = s_fx(&f);
    if (rc) return rc;
    int mb = 2, ctx = f.T;
    dataset_t *ds = s_dataset("x = [1, 2, 3]", ctx, err), *ds2 = s_dataset("y = 4", ctx, err);
    CHECKF(ds && ds2, "%s", err);
    engine_opts_t eo = {.backend = ENGINE_CPU, .max_batch = mb, .max_ctx = ctx, .threads = 1};
    /* the teacher: the same model starting from a state file */
    snprintf(spath, sizeof spath, "%s/teacher_state.safetensors", st_test_tmpdir());
    CHECKF(state_write(spath, STATE_FMT_SAFETENSORS, f.L, f.H, f.N, f.s0, 0, err) == ST_OK, "%s", err);
    observer_t *obs = observer_new(model, spath, &eo, f.V, err);
    CHECKF(obs, "%s", err);
    char tid[65], tid0[65], did[65], did2[65];
    CHECK(tcache_teacher_id(model, spath, tid, err) == ST_OK && tcache_teacher_id(model, NULL, tid0, err) == ST_OK);
    CHECK(strcmp(tid, tid0) != 0);
    tcache_data_id(ds, did);
    tcache_data_id(ds2, did2);
    CHECK(strcmp(did, did2) != 0);
    teacher_cache_t *tc = tcache_build(obs, ds, mb, ctx, f.V, TCACHE_F32, tid, err);
    CHECKF(tc, "%s", err);
    snprintf(path, sizeof path, "%s/%s", st_test_tmpdir(), TCACHE_FILE);
    CHECKF(tcache_write(tc, path, err) == ST_OK, "%s", err);
    tcache_destroy(&tc);
    tc = tcache_load(path, err);
    CHECKF(tc, "%s", err);
    CHECKF(tcache_check(tc, path, tid, did, dataset_count(ds), f.V, err) == ST_OK, "%s", err);
    printf("cache: %lld positions x k = %d, teacher mass kept %.6f\n", (long long)tcache_rows(tc), tcache_k(tc),
           tcache_mean_mass(tc));
    CHECK(fabs(tcache_mean_mass(tc) - 1) < 1e-9);
    /* stale: another teacher, other data, another k */
    CHECK(tcache_check(tc, path, tid0, did, dataset_count(ds), f.V, err) == ST_EINVAL && strstr(err, "another teacher"));
    printf("refused: %s\n", err);
    CHECK(tcache_check(tc, path, tid, did2, dataset_count(ds2), f.V, err) == ST_EINVAL && strstr(err, "other training data"));
    printf("refused: %s\n", err);
    CHECK(tcache_check(tc, path, tid, did, dataset_count(ds), 64, err) == ST_EINVAL && strstr(err, "top_k 64"));

    /* every micro-batch of the data: the cache's rows give the loss and dS0 of the teacher on the fly */
    batcher_t *bt = batcher_new_eval(ds, mb, ctx, 0, 1, err);
    CHECKF(bt, "%s", err);
    engine_t *e = engine_new(f.m, &eo, err);
    CHECKF(e, "%s", err);
    float *val = malloc((size_t)mb * ctx * f.V * 4), *d0 = calloc(f.nS, 4), *d1 = calloc(f.nS, 4);
    int32_t *ids = malloc((size_t)mb * ctx * f.V * 4);
    double la = 0, lb = 0;
    batch_t b;
    int n_micro = 0;
    while (batcher_next(bt, &b, err) == ST_OK && b.n_micro > 0) {
        micro_batch_t *mi = &b.micro[0];
        const float *tl;
        CHECKF(observer_logits(obs, mi->tokens, mi->B, mi->T, &tl, err) == ST_OK, "%s", err);
        engine_batch_t x = {.tokens = mi->tokens, .targets = mi->targets, .B = mi->B, .T = mi->T, .state0 = f.s0,
                            .dstate0 = d0, .teacher_logits = tl, .obs_alpha = 0.25f, .obs_temperature = 1.5f};
        CHECKF(engine_run(e, &x, err) == ST_OK, "%s", err);
        la += x.loss_sum;
        CHECKF(tcache_fill(tc, mi->targets, mi->sample, mi->B, mi->T, val, ids, err) == ST_OK, "%s", err);
        engine_batch_t y = {.tokens = mi->tokens, .targets = mi->targets, .B = mi->B, .T = mi->T, .state0 = f.s0,
                            .dstate0 = d1, .teacher_topk = val, .teacher_topk_ids = ids, .teacher_k = f.V,
                            .obs_alpha = 0.25f, .obs_temperature = 1.5f};
        CHECKF(engine_run(e, &y, err) == ST_OK, "%s", err);
        lb += y.loss_sum;
        n_micro++;
    }
    double rel = st_rel_err_ff(d1, d0, f.nS);
    printf("through the cache, %d micro-batches: loss %.12g vs %.12g on the fly, dS0 relative error %.3g\n", n_micro,
           lb, la, rel);
    CHECK(n_micro >= 3);
    CHECKF(fabs(la - lb) <= 1e-6 * fabs(la) && rel <= 1e-6, "the cache's k = V objective differs");
    tcache_destroy(&tc);

    /* damaged files: truncated, one byte changed, not a cache */
    char *img = NULL;
    size_t len = 0;
    CHECK(st_read_file(path, (size_t)1 << 30, &img, &len, err) == ST_OK);
    char bad[1100];
    snprintf(bad, sizeof bad, "%s/bad.stk", st_test_tmpdir());
    CHECK(st_write_file_atomic(bad, img, len - 100, err) == ST_OK);
    tc = tcache_load(bad, err);
    CHECK(!tc && strstr(err, "truncated"));
    printf("refused: %s\n", err);
    img[len / 2] ^= 1;
    CHECK(st_write_file_atomic(bad, img, len, err) == ST_OK);
    tc = tcache_load(bad, err);
    CHECK(!tc && strstr(err, "checksum"));
    printf("refused: %s\n", err);
    CHECK(st_write_file_atomic(bad, "hello", 5, err) == ST_OK);
    tc = tcache_load(bad, err);
    CHECK(!tc && strstr(err, "not a statetune teacher cache"));
    img[len / 2] ^= 1;
    /* hostile files with a valid checksum: every field is still checked */
    struct {
        size_t at;      /* byte to overwrite */
        uint32_t value; /* with this u32 */
        const char *why;
    } hostile[] = {
        {8, 2, "format version"},                    /* version */
        {12, 0, "impossible header"},                /* k = 0 */
        {12, 100000, "impossible header"},           /* k > V */
        {20, 7, "impossible header"},                /* dtype */
        {24, 0xffffff, "truncated or damaged"},      /* n_samples */
        {176 + 8, 0xfffffff, "out of order"},        /* row_start[1] */
        {len - 32 - 4 * 1, 0x7fc00000, "not finite"}, /* a value: NaN */
        {len - 32 - 4 * 2, 0x41200000, NULL},        /* a value: 10.0, fine */
    };
    size_t ids_at = 176 + 8 * ((size_t)dataset_count(ds) + 1);
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0] + 1; i++) {
        char *h = malloc(len);
        memcpy(h, img, len);
        uint32_t v = i < sizeof hostile / sizeof hostile[0] ? hostile[i].value : 999; /* last: an id >= V */
        memcpy(h + (i < sizeof hostile / sizeof hostile[0] ? hostile[i].at : ids_at + 4 * 5), &v, 4);
        crypto_hash_sha256((unsigned char *)h + len - 32, (unsigned char *)h, len - 32);
        tc = tcache_from_bytes(h, len, "hostile", err);
        const char *why = i < sizeof hostile / sizeof hostile[0] ? hostile[i].why : "outside the vocabulary";
        if (why) CHECKF(!tc && strstr(err, why), "hostile case %zu: %s", i, tc ? "accepted" : err);
        else CHECKF(tc, "hostile case %zu refused: %s", i, err);
        tcache_destroy(&tc);
    }
    free(img);

    /* fp16 values with k = 8: smaller, and still close to the fp32 values */
    teacher_cache_t *h = tcache_build(obs, ds, mb, ctx, 8, TCACHE_F16, tid, err);
    CHECKF(h, "%s", err);
    size_t hl;
    tcache_bytes(h, &hl);
    CHECK(hl < len / 8);
    CHECK(tcache_mean_mass(h) > 0 && tcache_mean_mass(h) < 1);
    tcache_destroy(&h);

    free(val), free(ids), free(d0), free(d1);
    engine_destroy(&e);
    batcher_destroy(&bt);
    observer_destroy(&obs);
    dataset_destroy(&ds);
    dataset_destroy(&ds2);
    s_fx_free(&f);
    return 0;
}

/* RNN logits of greedy generation over a token row: job folder vs registry */
static int s_rnn_logits(fx_t *f, const float *s0, const engine_kstate_t *ks, float *out)
{
    char err[ST_ERR_LEN];
    rwkv_rnn_t *rnn = rwkv_rnn_new(f->m, s0, err);
    if (!rnn || (ks && rwkv_rnn_set_kstate(rnn, ks, err) != ST_OK)) {
        fprintf(stderr, "%s\n", err);
        rwkv_rnn_destroy(&rnn);
        return 1;
    }
    for (int t = 0; t < f->T; t++)
        if (rwkv_rnn_step(rnn, f->tok[t], out + (size_t)t * f->V, err) != ST_OK) {
            fprintf(stderr, "%s\n", err);
            rwkv_rnn_destroy(&rnn);
            return 1;
        }
    rwkv_rnn_destroy(&rnn);
    return 0;
}

static int t_kstate_registry_rnn(void)
{
    fx_t f;
    int rc = s_fx(&f);
    if (rc) return rc;
    char err[ST_ERR_LEN], dir[512], sp[700], kp[700], db[700], ep[700];
    snprintf(dir, sizeof dir, "%s", st_test_tmpdir());
    snprintf(sp, sizeof sp, "%s/state.safetensors", dir);
    snprintf(kp, sizeof kp, "%s/kstate.safetensors", dir);
    snprintf(db, sizeof db, "%s/registry.db", dir);
    snprintf(ep, sizeof ep, "%s/export.safetensors", dir);
    /* the job folder, as tune writes it */
    kstate_t *ks = s_kstate(&f, 12, 1.5f, 3.0f);
    CHECK(ks);
    CHECKF(state_write(sp, STATE_FMT_SAFETENSORS, f.L, f.H, f.N, f.s0, 0, err) == ST_OK, "%s", err);
    CHECKF(kstate_write(ks, kp, err) == ST_OK, "%s", err);
    /* what the worker reads and sends, and the coordinator stores */
    state_file_t sf;
    state_kstate_t kj;
    CHECKF(state_read(sp, STATE_FMT_AUTO, &sf, err) == ST_OK, "%s", err);
    CHECKF(state_kstate_read(kp, f.L, f.H, f.N, &kj, err) == ST_OK, "%s", err);
    size_t nU = kstate_u0_size(ks);
    CHECK(kj.M == 12 && kj.gamma == 1.5f && memcmp(kj.u0, kstate_u0(ks), nU * 4) == 0 &&
          memcmp(kj.support, kstate_support(ks), nU * 4) == 0);
    float *both = malloc(2 * nU * 4);
    memcpy(both, kj.u0, nU * 4);
    memcpy(both + nU, kj.support, nU * 4);
    registry_t *r = registry_open(db, 0, err);
    CHECKF(r, "%s", err);
    registry_new_state_t ns = {.name = "ks", .model_sha256 = f.m->sha256, .n_layer = f.L, .n_head = f.H,
                               .head_size = f.N, .data = sf.data, .kernel_features = kj.M,
                               .kernel_gamma = kj.gamma, .kstate = both};
    int v = 0;
    CHECKF(registry_add_state(r, &ns, &v, err) == ST_OK, "%s", err);
    registry_close(&r);
    r = registry_open(db, 1, err);
    CHECKF(r, "%s", err);
    registry_state_info_t in;
    float *s0r = NULL, *kr = NULL;
    CHECKF(registry_get_state_ks(r, "ks", &in, &s0r, &kr, err) == ST_OK, "%s", err);
    registry_close(&r);
    CHECK(kr && memcmp(kr, kstate_u0(ks), nU * 4) == 0 && memcmp(s0r, f.s0, f.nS * 4) == 0);
    /* the registry copy exported in statetune's own format and read back */
    state_kstate_t ke = {in.kernel_features, in.kernel_gamma, kr, kr + nU}, kb;
    state_file_t sb;
    CHECKF(state_write_statetune(ep, f.L, f.H, f.N, s0r, &ke, err) == ST_OK, "%s", err);
    CHECKF(state_read_statetune(ep, &sb, &kb, err) == ST_OK, "%s", err);

    size_t nl = (size_t)f.T * f.V;
    float *lj = malloc(nl * 4), *lr = malloc(nl * 4), *le = malloc(nl * 4), *l0 = malloc(nl * 4);
    engine_kstate_t vj = {kj.M, kj.gamma, kj.u0, kj.support};
    engine_kstate_t vr = {in.kernel_features, in.kernel_gamma, kr, kr + nU};
    engine_kstate_t vb = {kb.M, kb.gamma, kb.u0, kb.support};
    CHECK(s_rnn_logits(&f, sf.data, &vj, lj) == 0);
    CHECK(s_rnn_logits(&f, s0r, &vr, lr) == 0);
    CHECK(s_rnn_logits(&f, sb.data, &vb, le) == 0);
    CHECK(s_rnn_logits(&f, s0r, NULL, l0) == 0);
    double off = 0;
    for (size_t i = 0; i < nl; i++) off = fmax(off, fabs(l0[i] - lj[i]));
    printf("RNN logits over %d tokens: registry copy %s, statetune export %s the job folder's; without U0 max "
           "|diff| %.3g\n", f.T, memcmp(lj, lr, nl * 4) ? "differs from" : "equals",
           memcmp(lj, le, nl * 4) ? "differs from" : "equals", off);
    CHECK(memcmp(lj, lr, nl * 4) == 0 && memcmp(lj, le, nl * 4) == 0);
    CHECKF(off > 1e-4, "the kernel term changed nothing (%.3g): the comparison would prove nothing", off);
    free(lj), free(lr), free(le), free(l0), free(both), free(s0r), free(kr);
    state_file_free(&sf);
    state_file_free(&sb);
    state_kstate_free(&kj);
    state_kstate_free(&kb);
    kstate_destroy(&ks);
    s_fx_free(&f);
    return 0;
}

static const st_test_t tests[] = {
    {"u0_zero_is_base", t_u0_zero_is_base},
    {"alpha_one_is_plain", t_alpha_one_is_plain},
    {"observer_grad_logits", t_observer_grad_logits},
    {"fd_u0_s0", t_fd_u0_s0},
    {"rbf_grad", t_rbf_grad},
    {"rnn_matches_engine", t_rnn_matches_engine},
    {"kmeans_deterministic", t_kmeans_deterministic},
    {"topk_full_k_equals_on_the_fly", t_topk_full_k_equals_on_the_fly},
    {"topk_fd", t_topk_fd},
    {"topk_cache", t_topk_cache},
    {"kstate_registry_rnn", t_kstate_registry_rnn},
    {NULL, NULL},
};

int main(int argc, char **argv) { return st_test_main(argc, argv, tests); }
