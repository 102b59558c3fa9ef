/*
 * test_engine.c - the CPU engine end to end on small random models built
 * here: d(loss)/d(state0) against central finite differences (directional
 * over every layer's state, and entry by entry on the largest entries, each
 * difference double-checked at two step sizes), RNN mode against GPT mode,
 * micro-batch invariance of the summed loss and gradient, DBP's Q against
 * its definition through the engine, and the refusals a user can trigger.
 * The full model against the PyTorch fixtures is `statetune-worker verify`
 * (tests/verify.sh).
 */
#include "harness.h"

#include "common/st_err.h"
#include "engine/engine.h"

#include <stdint.h>

/* ---- a random model, carved from one arena like model.c's ------------------ */

typedef struct {
    float *base;
    size_t off, cap;
    st_rng_t g;
} arena_t;

static float *s_take(arena_t *a, size_t n)
{
    float *p = a->base + a->off;
    a->off += n;
    if (a->off > a->cap) abort();
    return p;
}

static float *s_randn(arena_t *a, size_t n, float mean, float sd)
{
    float *p = s_take(a, n);
    for (size_t i = 0; i < n; i++) p[i] = mean + sd * st_rng_normal(&a->g);
    return p;
}

static float *s_unif(arena_t *a, size_t n, float lo, float hi)
{
    float *p = s_take(a, n);
    for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * (float)st_rng_uniform(&a->g);
    return p;
}

static rwkv_model_t *s_model(int L, int C, int V, uint64_t seed)
{
    rwkv_model_t *m = calloc(1, sizeof *m);
    rwkv_config_t *c = &m->cfg;
    c->n_layer = L, c->n_embd = C, c->n_head = C / 64, c->head_size = 64, c->vocab = V;
    c->ffn_dim = 4 * C, c->d_decay = 16, c->d_aaa = 16, c->d_mv = 8, c->d_gate = 32;
    size_t F = c->ffn_dim;
    size_t per = 30 * (size_t)C + 2 * (size_t)C * (16 + 16 + 8 + 32) + 4 * (size_t)C * C + 2 * F * C;
    size_t total = 2 * (size_t)V * C + 4 * (size_t)C + L * per;
    arena_t a = {calloc(total, sizeof(float)), 0, total, {seed}};
    m->arena = a.base;
    m->arena_floats = total;
    float sc = 1.0f / sqrtf((float)C);
    m->emb = s_randn(&a, (size_t)V * C, 0, 1);
    m->ln_out_w = s_randn(&a, C, 1, 0.1f), m->ln_out_b = s_randn(&a, C, 0, 0.1f);
    m->head = s_randn(&a, (size_t)V * C, 0, 2 * sc);
    m->layers = calloc(L, sizeof(rwkv_layer_t));
    for (int l = 0; l < L; l++) {
        rwkv_layer_t *p = &m->layers[l];
        if (l == 0) p->ln0_w = s_randn(&a, C, 1, 0.1f), p->ln0_b = s_randn(&a, C, 0, 0.1f);
        p->ln1_w = s_randn(&a, C, 1, 0.1f), p->ln1_b = s_randn(&a, C, 0, 0.1f);
        p->ln2_w = s_randn(&a, C, 1, 0.1f), p->ln2_b = s_randn(&a, C, 0, 0.1f);
        p->x_r = s_unif(&a, C, 0, 1), p->x_w = s_unif(&a, C, 0, 1), p->x_k = s_unif(&a, C, 0, 1);
        p->x_v = s_unif(&a, C, 0, 1), p->x_a = s_unif(&a, C, 0, 1), p->x_g = s_unif(&a, C, 0, 1);
        p->w0 = s_unif(&a, C, -2, 1);
        p->w1 = s_randn(&a, (size_t)C * 16, 0, 0.1f), p->w2 = s_randn(&a, 16 * (size_t)C, 0, 0.1f);
        p->a0 = s_randn(&a, C, 0, 0.5f);
        p->a1 = s_randn(&a, (size_t)C * 16, 0, 0.1f), p->a2 = s_randn(&a, 16 * (size_t)C, 0, 0.1f);
        if (l > 0) {
            p->v0 = s_randn(&a, C, 0, 0.5f);
            p->v1 = s_randn(&a, (size_t)C * 8, 0, 0.1f), p->v2 = s_randn(&a, 8 * (size_t)C, 0, 0.1f);
        }
        p->g1 = s_randn(&a, (size_t)C * 32, 0, 0.1f), p->g2 = s_randn(&a, 32 * (size_t)C, 0, 0.1f);
        p->k_k = s_unif(&a, C, 0.5f, 1.0f), p->k_a = s_unif(&a, C, 0, 1);
        p->r_k = s_randn(&a, C, 0, 0.3f);
        p->receptance = s_randn(&a, (size_t)C * C, 0, sc);
        p->key = s_randn(&a, (size_t)C * C, 0, sc);
        p->value = s_randn(&a, (size_t)C * C, 0, sc);
        p->output = s_randn(&a, (size_t)C * C, 0, sc);
        p->ln_x_w = s_randn(&a, C, 1, 0.1f), p->ln_x_b = s_randn(&a, C, 0, 0.1f);
        p->ffn_x_k = s_unif(&a, C, 0, 1);
        p->ffn_key = s_randn(&a, F * C, 0, sc);
        p->ffn_value = s_randn(&a, (size_t)C * F, 0, 1.0f / sqrtf((float)F));
    }
    return m;
}

static void s_model_free(rwkv_model_t **m)
{
    free((*m)->arena);
    free((*m)->layers);
    free(*m);
    *m = NULL;
}

typedef struct {
    rwkv_model_t *m;
    engine_t *e;
    int B, T;
    int32_t *tok, *tgt;
    float *s0;
    size_t ns;
} fixture_t;

static int s_setup(fixture_t *f, int L, int C, int V, int B, int T, uint64_t seed)
{
    char err[ST_ERR_LEN];
    f->m = s_model(L, C, V, seed);
    engine_opts_t o = {.backend = ENGINE_CPU, .precision = ENGINE_FP32, .max_batch = B, .max_ctx = T};
    f->e = engine_new(f->m, &o, err);
    if (!f->e) {
        fprintf(stderr, "engine_new: %s\n", err);
        return 1;
    }
    f->B = B, f->T = T;
    f->tok = malloc((size_t)B * T * 4), f->tgt = malloc((size_t)B * T * 4);
    st_rng_t g = {seed + 7};
    for (int i = 0; i < B * T; i++) f->tok[i] = (int32_t)(st_rng_uniform(&g) * V);
    for (int i = 0; i < B * T; i++) f->tgt[i] = (i % T == T - 1) ? -1 : f->tok[i + 1];
    f->ns = (size_t)L * rwkv_state_layer_size(&f->m->cfg);
    f->s0 = malloc(f->ns * 4);
    for (size_t i = 0; i < f->ns; i++) f->s0[i] = 0.5f * st_rng_normal(&g);
    return 0;
}

static void s_teardown(fixture_t *f)
{
    engine_destroy(&f->e);
    s_model_free(&f->m);
    free(f->tok), free(f->tgt), free(f->s0);
}

static double s_loss(fixture_t *f, const float *s0)
{
    char err[ST_ERR_LEN];
    engine_batch_t b = {.tokens = f->tok, .targets = f->tgt, .B = f->B, .T = f->T, .state0 = s0};
    if (engine_run(f->e, &b, err) != ST_OK) {
        fprintf(stderr, "engine_run: %s\n", err);
        return NAN;
    }
    return b.loss_sum;
}

/* ---- tests ---------------------------------------------------------------- */

static int test_state_grad_fd(void)
{
    fixture_t f;
    if (s_setup(&f, 3, 128, 64, 2, 21, 1)) return 1;
    char err[ST_ERR_LEN];
    float *ds = calloc(f.ns, 4);
    engine_batch_t b = {.tokens = f.tok, .targets = f.tgt, .B = f.B, .T = f.T, .state0 = f.s0,
                        .dstate0 = ds};
    CHECKF(engine_run(f.e, &b, err) == ST_OK, "%s", err);
    CHECK(b.n_targets == f.B * (f.T - 1));
    printf("  loss_sum %.6f over %lld targets\n", b.loss_sum, (long long)b.n_targets);
    float *sp = malloc(f.ns * 4);
    size_t S = rwkv_state_layer_size(&f.m->cfg);
    st_rng_t g = {99};
    int L = f.m->cfg.n_layer;
    for (int l = 0; l < L; l++) {
        /* directional, over the whole layer state */
        float *d = malloc(S * 4);
        for (size_t i = 0; i < S; i++) d[i] = st_rng_normal(&g);
        double an = 0;
        for (size_t i = 0; i < S; i++) an += (double)ds[l * S + i] * d[i];
        double fd[2];
        for (int k = 0; k < 2; k++) {
            float h = k ? 5e-3f : 1e-2f;
            memcpy(sp, f.s0, f.ns * 4);
            for (size_t i = 0; i < S; i++) sp[l * S + i] = f.s0[l * S + i] + h * d[i];
            double lp = s_loss(&f, sp);
            for (size_t i = 0; i < S; i++) sp[l * S + i] = f.s0[l * S + i] - h * d[i];
            double lm = s_loss(&f, sp);
            fd[k] = (lp - lm) / (2.0 * h);
        }
        printf("  layer %d direction: analytic % .6e  fd(h) % .6e  fd(h/2) % .6e\n", l, an, fd[0],
               fd[1]);
        CHECKF(fabs(fd[0] - fd[1]) < 1e-2 * fabs(fd[0]) + 1e-4, "the differences disagree");
        CHECKF(fabs(an - fd[1]) < 5e-3 * fabs(an) + 1e-4, "layer %d: %g vs %g", l, an, fd[1]);
        free(d);
        /* entry by entry: the three largest gradient entries of the layer */
        size_t top[3] = {0, 0, 0};
        for (int rep = 0; rep < 3; rep++) {
            float bv = -1;
            for (size_t i = 0; i < S; i++) {
                float v = fabsf(ds[l * S + i]);
                int taken = 0;
                for (int q = 0; q < rep; q++) taken |= top[q] == i;
                if (!taken && v > bv) bv = v, top[rep] = i;
            }
            size_t idx = l * S + top[rep];
            double e2[2];
            for (int k = 0; k < 2; k++) {
                float h = k ? 5e-3f : 1e-2f;
                memcpy(sp, f.s0, f.ns * 4);
                sp[idx] += h;
                double lp = s_loss(&f, sp);
                sp[idx] -= 2 * h;
                double lm = s_loss(&f, sp);
                e2[k] = (lp - lm) / (2.0 * h);
            }
            double a1 = ds[idx];
            printf("    entry %zu: analytic % .6e  fd % .6e / % .6e\n", top[rep], a1, e2[0], e2[1]);
            CHECKF(fabs(e2[0] - e2[1]) < 2e-2 * fabs(e2[0]) + 1e-3, "the differences disagree");
            CHECKF(fabs(a1 - e2[1]) < 2e-2 * fabs(a1) + 1e-3, "entry %zu: %g vs %g", top[rep], a1,
                   e2[1]);
        }
    }
    free(sp), free(ds);
    s_teardown(&f);
    return 0;
}

static int test_rnn_matches_gpt(void)
{
    fixture_t f;
    if (s_setup(&f, 2, 128, 64, 1, 13, 2)) return 1;
    char err[ST_ERR_LEN];
    int V = f.m->cfg.vocab, L = f.m->cfg.n_layer;
    size_t S = rwkv_state_layer_size(&f.m->cfg);
    float *lg = malloc((size_t)f.T * V * 4), *fs = malloc((size_t)L * S * 4);
    engine_batch_t b = {.tokens = f.tok, .targets = f.tgt, .B = 1, .T = f.T, .state0 = f.s0,
                        .logits = lg, .final_state = fs};
    f.tgt[4] = -1; /* a masked position in the middle */
    CHECKF(engine_run(f.e, &b, err) == ST_OK, "%s", err);
    /* the loss, target count and accuracy agree with the returned logits */
    double ref = 0;
    int64_t nt = 0, nc = 0;
    for (int t = 0; t < f.T; t++) {
        if (f.tgt[t] < 0) continue;
        const float *row = lg + (size_t)t * V;
        double mx = row[0], se = 0;
        int am = 0;
        for (int v = 1; v < V; v++)
            if (row[v] > mx) mx = row[v], am = v;
        for (int v = 0; v < V; v++) se += exp(row[v] - mx);
        ref += mx + log(se) - row[f.tgt[t]];
        nt++, nc += am == f.tgt[t];
    }
    CHECK(b.n_targets == nt && nt == f.T - 2);
    CHECK(b.n_correct == nc);
    CHECKF(fabs(b.loss_sum - ref) < 1e-5 * fabs(ref), "loss %g vs %g", b.loss_sum, ref);
    rwkv_rnn_t *r = rwkv_rnn_new(f.m, f.s0, err);
    CHECKF(r, "%s", err);
    float *out = malloc((size_t)V * 4);
    double worst = 0;
    for (int t = 0; t < f.T; t++) {
        CHECKF(rwkv_rnn_step(r, f.tok[t], out, err) == ST_OK, "%s", err);
        double e = st_rel_err_ff(out, lg + (size_t)t * V, V);
        if (e > worst) worst = e;
    }
    double es = st_rel_err_ff(rwkv_rnn_wkv_state(r), fs, (size_t)L * S);
    printf("  worst logits rel err %.2e, final state rel err %.2e\n", worst, es);
    CHECK(worst < 1e-5 && es < 1e-5);
    CHECK(rwkv_rnn_step(r, -1, out, err) == ST_EINVAL);
    rwkv_rnn_destroy(&r);
    CHECK(r == NULL);
    free(lg), free(fs), free(out);
    s_teardown(&f);
    return 0;
}

static int test_microbatch_invariance(void)
{
    fixture_t f;
    if (s_setup(&f, 2, 128, 64, 3, 17, 3)) return 1;
    char err[ST_ERR_LEN];
    float *d_all = calloc(f.ns, 4), *d_split = calloc(f.ns, 4);
    engine_batch_t b = {.tokens = f.tok, .targets = f.tgt, .B = 3, .T = f.T, .state0 = f.s0,
                        .dstate0 = d_all};
    CHECKF(engine_run(f.e, &b, err) == ST_OK, "%s", err);
    double sum = 0;
    int64_t nt = 0;
    for (int i = 0; i < 3; i++) {
        engine_batch_t bi = {.tokens = f.tok + i * f.T, .targets = f.tgt + i * f.T, .B = 1,
                             .T = f.T, .state0 = f.s0, .dstate0 = d_split};
        CHECKF(engine_run(f.e, &bi, err) == ST_OK, "%s", err);
        sum += bi.loss_sum;
        nt += bi.n_targets;
    }
    double e = st_rel_err_ff(d_split, d_all, f.ns);
    printf("  loss %.6f vs %.6f, dstate0 rel err %.2e\n", b.loss_sum, sum, e);
    CHECK(nt == b.n_targets);
    CHECK(fabs(sum - b.loss_sum) < 1e-5 * fabs(sum));
    CHECK(e < 1e-5);
    /* forward only gives the same loss and leaves no gradient */
    engine_batch_t bf = {.tokens = f.tok, .targets = f.tgt, .B = 3, .T = f.T, .state0 = f.s0};
    CHECKF(engine_run(f.e, &bf, err) == ST_OK, "%s", err);
    /* (not bit for bit: the engine may change its thread count between runs,
     * which changes the summation order) */
    CHECKF(fabs(bf.loss_sum - b.loss_sum) < 1e-6 * fabs(sum), "%.9f vs %.9f", bf.loss_sum,
           b.loss_sum);
    /* a shorter batch than planned works too */
    engine_batch_t bs = {.tokens = f.tok, .targets = f.tgt, .B = 1, .T = 5, .state0 = f.s0};
    CHECKF(engine_run(f.e, &bs, err) == ST_OK, "%s", err);
    CHECK(bs.n_targets == 5);
    free(d_all), free(d_split);
    s_teardown(&f);
    return 0;
}

/* With a fixed thread count, the same batch gives bit-identical loss, dS0 and
 * Q every time: resuming a job must reproduce the uninterrupted run exactly,
 * whichever thread finishes first. */
static int test_deterministic_threads(void)
{
    fixture_t f;
    if (s_setup(&f, 2, 128, 64, 6, 40, 11)) return 1;
    char err[ST_ERR_LEN];
    engine_opts_t o = {.backend = ENGINE_CPU, .precision = ENGINE_FP32, .max_batch = f.B,
                       .max_ctx = f.T, .threads = 2};
    engine_t *e2 = engine_new(f.m, &o, err);
    CHECKF(e2 != NULL, "%s", err);
    float *d_first = calloc(f.ns, 4), *d = calloc(f.ns, 4);
    double *q_first = calloc(f.ns, 8), *q = calloc(f.ns, 8);
    uint8_t rows[6] = {1, 0, 1, 1, 0, 1};
    double loss_first = 0;
    for (int rep = 0; rep < 6; rep++) {
        memset(d, 0, f.ns * 4);
        memset(q, 0, f.ns * 8);
        engine_batch_t b = {.tokens = f.tok, .targets = f.tgt, .B = f.B, .T = f.T, .state0 = f.s0,
                            .dstate0 = d, .dbp_q = q, .dbp_rows = rows};
        CHECKF(engine_run(e2, &b, err) == ST_OK, "%s", err);
        if (rep == 0) {
            memcpy(d_first, d, f.ns * 4);
            memcpy(q_first, q, f.ns * 8);
            loss_first = b.loss_sum;
            continue;
        }
        CHECKF(memcmp(&b.loss_sum, &loss_first, sizeof loss_first) == 0, "run %d: loss %.17g vs %.17g",
               rep, b.loss_sum, loss_first);
        CHECKF(memcmp(d, d_first, f.ns * 4) == 0, "run %d: dS0 differs bitwise", rep);
        CHECKF(memcmp(q, q_first, f.ns * 8) == 0, "run %d: Q differs bitwise", rep);
    }
    free(d_first), free(d), free(q_first), free(q);
    engine_destroy(&e2);
    s_teardown(&f);
    return 0;
}

static int test_dbp_q_definition(void)
{
    /* Q = sum_t x_t x_t^T with x_t = P_t r_t is exactly what makes
     * dL/dS0 = sum_t g_t x_t^T: check that the engine's Q is symmetric,
     * positive on the diagonal, only counts flagged rows, and adds up over
     * rows like a sum. */
    fixture_t f;
    if (s_setup(&f, 2, 128, 64, 2, 9, 4)) return 1;
    char err[ST_ERR_LEN];
    double *q01 = calloc(f.ns, 8), *q0 = calloc(f.ns, 8), *q1 = calloc(f.ns, 8);
    uint8_t both[2] = {1, 1}, first[2] = {1, 0}, second[2] = {0, 1};
    engine_batch_t b = {.tokens = f.tok, .targets = f.tgt, .B = 2, .T = f.T, .state0 = f.s0,
                        .dbp_rows = both, .dbp_q = q01};
    CHECKF(engine_run(f.e, &b, err) == ST_OK, "%s", err);
    b.dbp_rows = first, b.dbp_q = q0;
    CHECKF(engine_run(f.e, &b, err) == ST_OK, "%s", err);
    b.dbp_rows = second, b.dbp_q = q1;
    CHECKF(engine_run(f.e, &b, err) == ST_OK, "%s", err);
    double num = 0, den = 0, asym = 0;
    for (size_t i = 0; i < f.ns; i++) {
        double d = q0[i] + q1[i] - q01[i];
        num += d * d, den += q01[i] * q01[i];
    }
    for (int i = 0; i < 64; i++) {
        CHECK(q01[i * 64 + i] > 0);
        for (int j = 0; j < 64; j++) asym += fabs(q01[i * 64 + j] - q01[j * 64 + i]);
    }
    CHECK(sqrt(num / den) < 1e-9);
    CHECK(asym < 1e-9 * sqrt(den));
    free(q01), free(q0), free(q1);
    s_teardown(&f);
    return 0;
}

static int test_refusals(void)
{
    fixture_t f;
    if (s_setup(&f, 1, 64, 32, 2, 8, 5)) return 1;
    char err[ST_ERR_LEN];
    CHECK(engine_peak_mem_bytes(f.e) > f.m->arena_floats * 4);
    CHECK(engine_config(f.e)->n_layer == 1);
    f.tok[3] = 32;
    engine_batch_t b = {.tokens = f.tok, .targets = f.tgt, .B = 2, .T = 8, .state0 = f.s0};
    CHECK(engine_run(f.e, &b, err) == ST_EINVAL);
    printf("  %s\n", err);
    f.tok[3] = 0;
    b.B = 3;
    CHECK(engine_run(f.e, &b, err) == ST_EINVAL);
    printf("  %s\n", err);
    engine_opts_t o = {.backend = ENGINE_CPU, .precision = ENGINE_BF16, .max_batch = 1, .max_ctx = 1};
    engine_t *e2 = engine_new(f.m, &o, err);
    CHECK(e2 == NULL);
    printf("  %s\n", err);
    engine_destroy(&e2);
    s_teardown(&f);
    return 0;
}

static const st_test_t s_tests[] = {
    {"state_grad_fd", test_state_grad_fd},
    {"rnn_matches_gpt", test_rnn_matches_gpt},
    {"microbatch_invariance", test_microbatch_invariance},
    {"deterministic_threads", test_deterministic_threads},
    {"dbp_q_definition", test_dbp_q_definition},
    {"refusals", test_refusals},
    {NULL, NULL},
};

int main(int argc, char **argv) { return st_test_main(argc, argv, s_tests); }
