/*
 * test_cuda_methods.c - the observer objective and the kernel-expanded state
 * (SPEC section 4) on the CUDA engine against the CPU engine, the fp32
 * reference (engine/engine_cpu.c, kernels/cpu/observer.c, rbf.c), on a fresh
 * random model, batch, state0, teacher logits, U0 and support vectors on
 * every run (seed printed; STATETUNE_SEED replays it). T is not a multiple of
 * the WKV chunk and a fifth of the targets are masked (-1). Logits and final
 * states are poisoned with NaN before each run, so an element left unwritten
 * fails; dS0 and dU0 start at zero (they are accumulated, +=).
 *
 * Checked: loss, its CE and KL parts, dS0, dU0, logits and final states
 * (fp32: loss 1e-5 per target, gradients 1e-4 relative; bf16: the tolerances
 * of test_cuda_engine.c), in plain and in recompute mode (the kernel-state
 * term must join y in the recomputed forward too), with full teacher rows
 * and with the teacher's top-k (kernels/cpu/observer_topk.c's objective;
 * rows without a target hold NaN values and invalid ids, which must not be
 * read); that top-k with k = V is the full-row objective on the GPU; that
 * alpha = 1 is plain tuning and U0 = 0 is the original model on the GPU;
 * that the receptances the k-means support vectors are computed from match
 * the CPU's.
 *
 * CTest label `gpu`: needs a CUDA device; without one every test skips.
 */
#include "harness.h"
#include "cuda_test.h"

#include "common/st_err.h"
#include "engine/engine.h"
#include "engine/engine_cuda.h"
#include "model/model.h"

#include <cuda_runtime_api.h>
#include <stdint.h>
#include <time.h>

enum { METH_OBS = 1, METH_KS = 2, METH_TOPK = 4 };
enum { TOPK_K = 16 }; /* the teacher's kept logits per row in the random problem (vocab 300) */

typedef struct problem problem_t;
static void s_topk_of(const problem_t *p, int K, float *val, int32_t *id);

/* One random problem: model, batch, state0, teacher logits, kernel state. */
struct problem {
    rwkv_model_t *m;
    int B, T, M;
    int32_t *tok, *tgt;
    float *s0, *teacher, *U0, *sv;
    float *tk_val;   /* (R, TOPK_K) the teacher's top-k per row, best first; NaN where no target */
    int32_t *tk_id;  /* (R, TOPK_K) their ids; -7 where no target */
    engine_kstate_t ks;
    size_t R, ns, nU, nl, nf;
};

/* The teacher's K largest logits of every row with a target, best first
 * (ties: smaller id, as engine/teacher_cache.c keeps them) by selection;
 * rows without a target get NaN and an invalid id (the engine must not read
 * them: the cache holds no row there). */
static void s_topk_of(const problem_t *p, int K, float *val, int32_t *id)
{
    const int V = p->m->cfg.vocab;
    unsigned char *used = malloc((size_t)V);
    for (size_t r = 0; r < p->R; r++) {
        float *vr = val + r * K;
        int32_t *ir = id + r * K;
        if (p->tgt[r] < 0 || !used) {
            for (int i = 0; i < K; i++) { vr[i] = NAN; ir[i] = -7; }
            continue;
        }
        const float *t = p->teacher + r * V;
        memset(used, 0, (size_t)V);
        for (int i = 0; i < K; i++) {
            int b = -1;
            for (int v = 0; v < V; v++)
                if (!used[v] && (b < 0 || t[v] > t[b])) b = v;
            used[b] = 1;
            vr[i] = t[b];
            ir[i] = b;
        }
    }
    free(used);
}

static int s_problem(problem_t *p, uint64_t seed, int M)
{
    rwkv_config_t cfg = {.n_layer = 3, .n_embd = 128, .n_head = 2, .head_size = 64, .vocab = 300,
                         .ffn_dim = 448, .d_decay = 16, .d_aaa = 16, .d_mv = 8, .d_gate = 32};
    char err[ST_ERR_LEN];
    memset(p, 0, sizeof *p);
    p->m = rwkv_model_new_random(&cfg, seed, err);
    if (!p->m) {
        fprintf(stderr, "rwkv_model_new_random: %s\n", err);
        return 1;
    }
    const rwkv_config_t *c = &p->m->cfg;
    p->B = 2;
    p->T = 37;
    p->M = M;
    p->R = (size_t)p->B * p->T;
    p->ns = (size_t)c->n_layer * rwkv_state_layer_size(c);
    p->nU = (size_t)c->n_layer * c->n_head * c->head_size * M;
    p->nl = p->R * c->vocab;
    p->nf = (size_t)p->B * p->ns;
    p->tok = malloc(p->R * 4);
    p->tgt = malloc(p->R * 4);
    p->s0 = malloc(p->ns * 4);
    p->teacher = malloc(p->nl * 4);
    p->U0 = malloc(p->nU * 4);
    p->sv = malloc(p->nU * 4);
    p->tk_val = malloc(p->R * TOPK_K * 4);
    p->tk_id = malloc(p->R * TOPK_K * 4);
    if (!p->tok || !p->tgt || !p->s0 || !p->teacher || !p->U0 || !p->sv || !p->tk_val || !p->tk_id) return 1;
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 11;
    st_test_tokens(&s, p->R, c->vocab, 5, p->tok, p->tgt);
    st_test_centered(&s, p->s0, p->ns);
    for (size_t i = 0; i < p->nl; i++) p->teacher[i] = (float)(6.0 * st_test_unit(&s) - 3.0);
    /* U0 of order one, so that the term moves y visibly while d_t is large */
    for (size_t i = 0; i < p->nU; i++) p->U0[i] = (float)(2.0 * st_test_unit(&s) - 1.0);
    /* unit support vectors, each a random direction */
    for (size_t v = 0; v < p->nU / 64; v++) {
        float *u = p->sv + v * 64;
        double n2 = 0;
        for (int i = 0; i < 64; i++) {
            u[i] = (float)(st_test_unit(&s) - 0.5);
            n2 += (double)u[i] * u[i];
        }
        for (int i = 0; i < 64; i++) u[i] = (float)(u[i] / sqrt(n2));
    }
    p->ks = (engine_kstate_t){.M = M, .gamma = 1.5f, .U0 = p->U0, .support = p->sv};
    s_topk_of(p, TOPK_K, p->tk_val, p->tk_id);
    return 0;
}

static void s_problem_free(problem_t *p)
{
    free(p->tok);
    free(p->tgt);
    free(p->s0);
    free(p->teacher);
    free(p->U0);
    free(p->sv);
    free(p->tk_val);
    free(p->tk_id);
    rwkv_model_destroy(&p->m);
}

typedef struct {
    float *logits, *final_state, *ds0, *dU0;
    double loss, ce, kl;
    int64_t n_targets, n_correct;
} out_t;

static void s_out_free(out_t *o)
{
    free(o->logits);
    free(o->final_state);
    free(o->ds0);
    free(o->dU0);
}

/* Runs the problem with the given methods on the CPU (backend cpu) or on the
 * GPU (precision prec; mode as engine_cuda_new_mode: -1 auto, 1 recompute). */
static int s_run(const problem_t *p, engine_backend_t be, engine_precision_t prec, int mode, int meth, float alpha,
                 const engine_kstate_t *ks, out_t *o)
{
    char err[ST_ERR_LEN];
    memset(o, 0, sizeof *o);
    o->logits = malloc(p->nl * 4);
    o->final_state = malloc(p->nf * 4);
    o->ds0 = calloc(p->ns, 4);
    o->dU0 = calloc(p->nU, 4);
    if (!o->logits || !o->final_state || !o->ds0 || !o->dU0) return 1;
    for (size_t i = 0; i < p->nl; i++) o->logits[i] = NAN;
    for (size_t i = 0; i < p->nf; i++) o->final_state[i] = NAN;
    engine_batch_t bt = {.tokens = p->tok, .targets = p->tgt, .B = p->B, .T = p->T, .state0 = p->s0,
                         .logits = o->logits, .final_state = o->final_state, .dstate0 = o->ds0};
    if (meth & METH_OBS) {
        bt.teacher_logits = p->teacher;
        bt.obs_alpha = alpha;
        bt.obs_temperature = 2.0f;
    }
    if (meth & METH_TOPK) { /* the teacher known only by its top-k */
        bt.teacher_topk = p->tk_val;
        bt.teacher_topk_ids = p->tk_id;
        bt.teacher_k = TOPK_K;
        bt.obs_alpha = alpha;
        bt.obs_temperature = 2.0f;
    }
    if (meth & METH_KS) {
        bt.kstate = ks;
        bt.dU0 = o->dU0;
    }
    engine_opts_t opts = {.backend = be, .precision = prec, .max_batch = p->B, .max_ctx = p->T + 3};
    int rc;
    if (be == ENGINE_CPU) {
        engine_t *eng = engine_new(p->m, &opts, err);
        if (!eng) {
            fprintf(stderr, "engine_new: %s\n", err);
            return 1;
        }
        rc = engine_run(eng, &bt, err);
        engine_destroy(&eng);
    } else {
        engine_cuda_t *eng = engine_cuda_new_mode(p->m, &opts, mode, err);
        if (!eng) {
            fprintf(stderr, "engine_cuda_new_mode: %s\n", err);
            return 1;
        }
        rc = engine_cuda_run(eng, &bt, err);
        if (!rc) printf("    cuda peak memory %.1f MB (methods' buffers included)\n", engine_cuda_peak_mem_bytes(eng) / 1e6);
        engine_cuda_destroy(&eng);
    }
    if (rc) {
        fprintf(stderr, "engine run: %s\n", err);
        return 1;
    }
    o->loss = bt.loss_sum;
    o->ce = bt.ce_sum;
    o->kl = bt.kl_sum;
    o->n_targets = bt.n_targets;
    o->n_correct = bt.n_correct;
    return 0;
}

static int s_check(const char *what, double e, double tol)
{
    if (e <= tol) return 0;
    fprintf(stderr, "%s: error %.3e over the tolerance %.1e\n", what, e, tol);
    return 1;
}

/* CUDA (prec, mode) against the CPU with the methods meth. tg is the gradient
 * tolerance (dS0 and dU0, relative), tl the logits', tloss the loss's (per
 * target, absolute, for loss, CE and KL alike). */
static int s_compare(int meth, engine_precision_t prec, int mode, double tl, double tloss, double tg)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    problem_t p;
    uint64_t seed = st_test_seed();
    CHECK(s_problem(&p, seed, 24) == 0);
    const float alpha = 0.3f;
    out_t cpu, gpu;
    int rc = s_run(&p, ENGINE_CPU, ENGINE_FP32, -1, meth, alpha, &p.ks, &cpu);
    if (!rc) rc = s_run(&p, ENGINE_CUDA, prec, mode, meth, alpha, &p.ks, &gpu);
    if (rc) goto done;
    double n = cpu.n_targets ? (double)cpu.n_targets : 1;
    double el = st_rel_err_ff(gpu.logits, cpu.logits, p.nl), eg = st_rel_err_ff(gpu.ds0, cpu.ds0, p.ns);
    double es = st_rel_err_ff(gpu.final_state, cpu.final_state, p.nf);
    double eu = (meth & METH_KS) ? st_rel_err_ff(gpu.dU0, cpu.dU0, p.nU) : 0;
    double eloss = fabs(gpu.loss - cpu.loss) / n, ece = fabs(gpu.ce - cpu.ce) / n, ekl = fabs(gpu.kl - cpu.kl) / n;
    printf("%s%s%s%s%s:\n", prec ? "bf16" : "fp32", mode == 1 ? " recompute" : "", meth & METH_OBS ? " observer" : "",
           meth & METH_TOPK ? " observer top-k" : "", meth & METH_KS ? " kstate" : "");
    printf("    mean loss cuda %.6f cpu %.6f; CE %.6f vs %.6f; KL %.6f vs %.6f (%lld targets); correct %lld vs %lld\n",
           gpu.loss / n, cpu.loss / n, gpu.ce / n, cpu.ce / n, gpu.kl / n, cpu.kl / n, (long long)cpu.n_targets,
           (long long)gpu.n_correct, (long long)cpu.n_correct);
    printf("    dstate0 cuda % .3e % .3e   cpu % .3e % .3e\n", gpu.ds0[0], gpu.ds0[1], cpu.ds0[0], cpu.ds0[1]);
    if (meth & METH_KS)
        printf("    dU0     cuda % .3e % .3e   cpu % .3e % .3e\n", gpu.dU0[0], gpu.dU0[1], cpu.dU0[0], cpu.dU0[1]);
    printf("    rel err: logits %.2e  dS0 %.2e  dU0 %.2e  final_state %.2e; per target abs: loss %.2e CE %.2e "
           "KL %.2e\n", el, eg, eu, es, eloss, ece, ekl);
    rc |= s_check("logits", el, tl);
    rc |= s_check("dS0", eg, tg);
    rc |= s_check("final_state", es, tl);
    rc |= s_check("loss", eloss, tloss);
    rc |= s_check("CE part", ece, tloss);
    rc |= s_check("KL part", ekl, tloss);
    if (meth & METH_KS) {
        rc |= s_check("dU0", eu, tg);
        /* the term must move the model visibly: far above fp32's CPU/GPU differences (~1e-7) */
        out_t plain;
        if (s_run(&p, ENGINE_CPU, ENGINE_FP32, -1, meth & ~METH_KS, alpha, NULL, &plain) == 0) {
            double moved = st_rel_err_ff(cpu.logits, plain.logits, p.nl);
            printf("    the kernel state moves the CPU's logits by %.2e (relative)\n", moved);
            if (!(moved > 1e-5)) {
                fprintf(stderr, "the kernel-expanded term barely changes the model: the test would prove little\n");
                rc = 1;
            }
        } else {
            rc = 1;
        }
        s_out_free(&plain);
        double nu = 0;
        for (size_t i = 0; i < p.nU; i++) nu += fabs(cpu.dU0[i]);
        if (!(nu > 0)) {
            fprintf(stderr, "the CPU's dU0 is zero: the test would prove nothing\n");
            rc = 1;
        }
    }
    if (meth & (METH_OBS | METH_TOPK) && !(cpu.kl > 0)) {
        fprintf(stderr, "the KL is zero: the test would prove nothing\n");
        rc = 1;
    }
    if (gpu.n_targets != cpu.n_targets) {
        fprintf(stderr, "target counts differ\n");
        rc = 1;
    }
    s_out_free(&gpu);
done:
    s_out_free(&cpu);
    s_problem_free(&p);
    return rc;
}

/* fp32: loss 1e-5 per target, gradients 1e-4 relative, logits as test_cuda_engine */
static int test_fp32_observer(void) { return s_compare(METH_OBS, ENGINE_FP32, -1, 1e-4, 1e-5, 1e-4); }
static int test_fp32_kstate(void) { return s_compare(METH_KS, ENGINE_FP32, -1, 1e-4, 1e-5, 1e-4); }
static int test_fp32_both_recompute(void) { return s_compare(METH_OBS | METH_KS, ENGINE_FP32, 1, 1e-4, 1e-5, 1e-4); }
/* bf16: test_cuda_engine.c's tolerances (logits 3e-2, loss 3e-2, gradient 5e-2) */
static int test_bf16_observer(void) { return s_compare(METH_OBS, ENGINE_BF16, -1, 3e-2, 3e-2, 5e-2); }
static int test_bf16_kstate(void) { return s_compare(METH_KS, ENGINE_BF16, -1, 3e-2, 3e-2, 5e-2); }
static int test_bf16_both_recompute(void) { return s_compare(METH_OBS | METH_KS, ENGINE_BF16, 1, 3e-2, 3e-2, 5e-2); }
/* the teacher's top-k (issue #8): the same tolerances against the CPU's observer_topk */
static int test_fp32_topk(void) { return s_compare(METH_TOPK, ENGINE_FP32, -1, 1e-4, 1e-5, 1e-4); }
static int test_bf16_topk(void) { return s_compare(METH_TOPK, ENGINE_BF16, -1, 3e-2, 3e-2, 5e-2); }
static int test_fp32_topk_kstate_recompute(void)
{
    return s_compare(METH_TOPK | METH_KS, ENGINE_FP32, 1, 1e-4, 1e-5, 1e-4);
}

/* On the GPU, the top-k objective with k = V is the full-row objective: the
 * loss, its KL and dS0 of a run with all V of the teacher's logits as its
 * "top-k" (best first) against the same run with teacher_logits, fp32 and
 * bf16 (only the order of the teacher's sums differs: fp32 rounding, which
 * bf16's stored gradient can round a step either way). Ids outside the
 * vocabulary are refused on CUDA as on the CPU. */
static int test_topk_full_k_equals_full_rows(void)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    problem_t p;
    CHECK(s_problem(&p, st_test_seed(), 8) == 0);
    const int V = p.m->cfg.vocab;
    float *val = malloc(p.R * V * 4);
    int32_t *id = malloc(p.R * V * 4);
    CHECK(val && id);
    s_topk_of(&p, V, val, id);
    char err[ST_ERR_LEN];
    int rc = 0;
    const double tol_loss[2] = {1e-6, 1e-5}, tol_g[2] = {1e-5, 2e-3};
    for (int prec = 0; prec < 2 && !rc; prec++) {
        engine_opts_t opts = {.backend = ENGINE_CUDA, .precision = prec ? ENGINE_BF16 : ENGINE_FP32,
                              .max_batch = p.B, .max_ctx = p.T};
        engine_t *e = engine_new(p.m, &opts, err);
        CHECKF(e != NULL, "%s", err);
        out_t o[2];
        memset(o, 0, sizeof o);
        for (int k = 0; k < 2 && !rc; k++) {
            o[k].ds0 = calloc(p.ns, 4);
            engine_batch_t bt = {.tokens = p.tok, .targets = p.tgt, .B = p.B, .T = p.T, .state0 = p.s0,
                                 .dstate0 = o[k].ds0, .obs_alpha = 0.3f, .obs_temperature = 2.0f};
            if (k == 0) {
                bt.teacher_logits = p.teacher;
            } else {
                bt.teacher_topk = val;
                bt.teacher_topk_ids = id;
                bt.teacher_k = V;
            }
            rc = o[k].ds0 ? engine_run(e, &bt, err) : ST_ENOMEM;
            if (rc) fprintf(stderr, "%s\n", err);
            o[k].loss = bt.loss_sum;
            o[k].kl = bt.kl_sum;
            o[k].n_targets = bt.n_targets;
        }
        if (!rc) {
            double n = o[0].n_targets ? (double)o[0].n_targets : 1;
            double el = fabs(o[1].loss - o[0].loss) / n, ek = fabs(o[1].kl - o[0].kl) / n;
            double eg = st_rel_err_ff(o[1].ds0, o[0].ds0, p.ns);
            printf("%s top-k with k = V vs full rows: loss %.9g vs %.9g, KL %.9g vs %.9g; dS0 rel err %.2e\n",
                   prec ? "bf16" : "fp32", o[1].loss / n, o[0].loss / n, o[1].kl / n, o[0].kl / n, eg);
            rc |= s_check("loss", el, tol_loss[prec]);
            rc |= s_check("KL", ek, tol_loss[prec]);
            rc |= s_check("dS0", eg, tol_g[prec]);
            if (!(o[0].kl > 0)) {
                fprintf(stderr, "the KL is zero: the test would prove nothing\n");
                rc = 1;
            }
            /* an id outside the vocabulary at a trained row is refused, not read */
            size_t r = 0;
            while (p.tgt[r] < 0) r++;
            int32_t keep = p.tk_id[r * TOPK_K + 3];
            p.tk_id[r * TOPK_K + 3] = V;
            engine_batch_t bad = {.tokens = p.tok, .targets = p.tgt, .B = p.B, .T = p.T, .state0 = p.s0,
                                  .teacher_topk = p.tk_val, .teacher_topk_ids = p.tk_id, .teacher_k = TOPK_K,
                                  .obs_alpha = 0.3f, .obs_temperature = 2.0f};
            int rb = engine_run(e, &bad, err);
            printf("    id %d at a trained row: %s\n", V, rb ? err : "accepted");
            p.tk_id[r * TOPK_K + 3] = keep;
            if (rb != ST_EINVAL) {
                fprintf(stderr, "a top-k id outside the vocabulary was not refused\n");
                rc = 1;
            }
        }
        for (int k = 0; k < 2; k++) free(o[k].ds0);
        engine_destroy(&e);
    }
    free(val);
    free(id);
    s_problem_free(&p);
    return rc;
}

/* On the GPU, alpha = 1 with teacher logits or top-k is plain tuning, and U0 = 0 is
 * the original model (loss, logits, final states bit for bit; dS0 to the
 * last bits its atomics may change), in both precisions. */
static int test_neutral_settings_are_plain(void)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    problem_t p;
    CHECK(s_problem(&p, st_test_seed(), 8) == 0);
    float *zeros = calloc(p.nU, 4);
    CHECK(zeros != NULL);
    engine_kstate_t ks0 = p.ks;
    ks0.U0 = zeros;
    int rc = 0;
    for (int prec = 0; prec < 2 && !rc; prec++) {
        engine_precision_t pr = prec ? ENGINE_BF16 : ENGINE_FP32;
        out_t plain, a1, u0, k1;
        rc = s_run(&p, ENGINE_CUDA, pr, -1, 0, 1.0f, NULL, &plain);
        if (!rc) rc = s_run(&p, ENGINE_CUDA, pr, -1, METH_OBS, 1.0f, NULL, &a1);
        if (!rc) rc = s_run(&p, ENGINE_CUDA, pr, -1, METH_KS, 1.0f, &ks0, &u0);
        if (!rc) rc = s_run(&p, ENGINE_CUDA, pr, -1, METH_TOPK, 1.0f, NULL, &k1);
        if (rc) break;
        const out_t *o[3] = {&a1, &u0, &k1};
        const char *name[3] = {"alpha = 1", "U0 = 0", "alpha = 1 top-k"};
        for (int k = 0; k < 3; k++) {
            double el = st_rel_err_ff(o[k]->logits, plain.logits, p.nl);
            double es = st_rel_err_ff(o[k]->final_state, plain.final_state, p.nf);
            double eg = st_rel_err_ff(o[k]->ds0, plain.ds0, p.ns);
            printf("%s %s vs plain: loss %.9g vs %.9g, CE sum %.9g; logits %.2e final_state %.2e dS0 %.2e\n",
                   prec ? "bf16" : "fp32", name[k], o[k]->loss, plain.loss, o[k]->ce, el, es, eg);
            if (!(o[k]->loss == plain.loss && o[k]->ce == plain.loss && el == 0 && es == 0 && eg <= 1e-6 &&
                  o[k]->n_correct == plain.n_correct)) {
                fprintf(stderr, "%s %s differs from plain tuning\n", prec ? "bf16" : "fp32", name[k]);
                rc = 1;
            }
        }
        /* U0 = 0 still has a gradient: tuning can move it */
        double nu = 0;
        for (size_t i = 0; i < p.nU; i++) nu += fabs(u0.dU0[i]);
        printf("    |dU0| at U0 = 0: %.3e\n", nu);
        if (!(nu > 0 && isfinite(nu))) {
            fprintf(stderr, "dU0 at U0 = 0 is %g\n", nu);
            rc = 1;
        }
        s_out_free(&plain);
        s_out_free(&a1);
        s_out_free(&u0);
        s_out_free(&k1);
    }
    free(zeros);
    s_problem_free(&p);
    return rc;
}

/* The receptances kstate_support_init's k-means reads (engine_batch_t.receptance). */
static int test_receptance_matches_cpu(void)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    problem_t p;
    CHECK(s_problem(&p, st_test_seed(), 8) == 0);
    const rwkv_config_t *c = &p.m->cfg;
    size_t n = (size_t)c->n_layer * p.R * c->n_embd;
    float *rc_cpu = malloc(n * 4), *rc_gpu = malloc(n * 4);
    CHECK(rc_cpu && rc_gpu);
    char err[ST_ERR_LEN];
    int rc = 0;
    const double tol[2] = {1e-5, 3e-2}; /* bf16: test_cuda_engine.c's logits tolerance */
    for (int k = 0; k < 3 && !rc; k++) { /* CPU, then CUDA fp32 and bf16 */
        float *dst = k ? rc_gpu : rc_cpu;
        for (size_t i = 0; i < n; i++) dst[i] = NAN;
        engine_opts_t opts = {.backend = k ? ENGINE_CUDA : ENGINE_CPU, .precision = k == 2 ? ENGINE_BF16 : ENGINE_FP32,
                              .max_batch = p.B, .max_ctx = p.T};
        engine_t *eng = engine_new(p.m, &opts, err);
        CHECKF(eng != NULL, "%s", err);
        engine_batch_t bt = {.tokens = p.tok, .B = p.B, .T = p.T, .state0 = p.s0, .receptance = dst};
        rc = engine_run(eng, &bt, err);
        engine_destroy(&eng);
        if (rc) {
            fprintf(stderr, "engine_run: %s\n", err);
            break;
        }
        if (k) {
            double e = st_rel_err_ff(rc_gpu, rc_cpu, n);
            printf("%s receptance: cuda % .6f % .6f cpu % .6f % .6f rel err %.2e\n", k == 2 ? "bf16" : "fp32",
                   rc_gpu[0], rc_gpu[n - 1], rc_cpu[0], rc_cpu[n - 1], e);
            rc = s_check("receptance", e, tol[k - 1]);
        }
    }
    free(rc_cpu);
    free(rc_gpu);
    s_problem_free(&p);
    return rc;
}

/* The observer with the teacher on the device (engine_teacher_forward and
 * engine_batch_t.teacher: its logits computed in the student's head, never
 * leaving the GPU) gives what the host path gives with the same teacher's
 * downloaded logits, in fp32 and bf16; the teacher is a different, wider
 * random model (3 heads, 2 layers). Misuse is refused with a sentence. */
static int test_device_teacher_matches_host_logits(void)
{
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    problem_t p;
    uint64_t seed = st_test_seed();
    CHECK(s_problem(&p, seed, 8) == 0);
    rwkv_config_t tc = {.n_layer = 2, .n_embd = 192, .n_head = 3, .head_size = 64, .vocab = 300,
                        .ffn_dim = 640, .d_decay = 16, .d_aaa = 16, .d_mv = 8, .d_gate = 32};
    char err[ST_ERR_LEN];
    rwkv_model_t *tm = rwkv_model_new_random(&tc, seed + 99, err);
    CHECKF(tm != NULL, "%s", err);
    size_t tns = (size_t)tc.n_layer * rwkv_state_layer_size(&tc);
    float *ts0 = calloc(tns, 4), *tl = malloc(p.nl * 4);
    CHECK(ts0 && tl);
    for (size_t i = 0; i < tns; i++) ts0[i] = (float)(0.3 * sin((double)i));
    int rc = 0;
    for (int prec = 0; prec < 2 && !rc; prec++) {
        engine_opts_t opts = {.backend = ENGINE_CUDA, .precision = prec ? ENGINE_BF16 : ENGINE_FP32,
                              .max_batch = p.B, .max_ctx = p.T + 3};
        engine_t *te = engine_new(tm, &opts, err), *se = engine_new(p.m, &opts, err);
        CHECKF(te && se, "%s", err);
        /* host path: the teacher's logits downloaded, then uploaded by the student */
        engine_batch_t tb = {.tokens = p.tok, .B = p.B, .T = p.T, .state0 = ts0, .logits = tl};
        rc = engine_run(te, &tb, err);
        out_t o[2];
        for (int k = 0; k < 2 && !rc; k++) {
            memset(&o[k], 0, sizeof o[k]);
            o[k].ds0 = calloc(p.ns, 4);
            engine_batch_t bt = {.tokens = p.tok, .targets = p.tgt, .B = p.B, .T = p.T, .state0 = p.s0,
                                 .dstate0 = o[k].ds0, .obs_alpha = 0.3f, .obs_temperature = 2.0f};
            if (k == 0) {
                bt.teacher_logits = tl;
            } else {
                rc = engine_teacher_forward(te, p.tok, p.B, p.T, ts0, err);
                if (rc) break;
                bt.teacher = te;
            }
            rc = engine_run(se, &bt, err);
            o[k].loss = bt.loss_sum;
            o[k].ce = bt.ce_sum;
            o[k].kl = bt.kl_sum;
            o[k].n_targets = bt.n_targets;
        }
        if (rc) {
            fprintf(stderr, "%s\n", err);
        } else {
            double n = o[0].n_targets ? (double)o[0].n_targets : 1;
            double el = fabs(o[1].loss - o[0].loss) / n, ek = fabs(o[1].kl - o[0].kl) / n;
            double eg = st_rel_err_ff(o[1].ds0, o[0].ds0, p.ns);
            printf("%s teacher on the device vs host logits: loss %.9g vs %.9g, KL %.9g vs %.9g; dS0 rel err %.2e\n",
                   prec ? "bf16" : "fp32", o[1].loss / n, o[0].loss / n, o[1].kl / n, o[0].kl / n, eg);
            rc |= s_check("loss", el, 1e-6);
            rc |= s_check("KL", ek, 1e-6);
            rc |= s_check("dS0", eg, 1e-5);
            if (!(o[0].kl > 0)) {
                fprintf(stderr, "the KL is zero: the test would prove nothing\n");
                rc = 1;
            }
            /* the teacher's kept head input ends with its next run; a teacher is another engine */
            engine_batch_t tb2 = {.tokens = p.tok, .B = p.B, .T = p.T, .state0 = ts0};
            engine_batch_t bt = {.tokens = p.tok, .targets = p.tgt, .B = p.B, .T = p.T, .state0 = p.s0,
                                 .obs_alpha = 0.3f, .obs_temperature = 2.0f, .teacher = te};
            int r1 = engine_run(te, &tb2, err) == ST_OK ? engine_run(se, &bt, err) : ST_OK;
            printf("    stale teacher: %s\n", err);
            bt.teacher = se;
            int r2 = engine_run(se, &bt, err);
            printf("    itself as teacher: %s\n", err);
            if (r1 == ST_OK || r2 == ST_OK) {
                fprintf(stderr, "a stale teacher or the student itself was accepted\n");
                rc = 1;
            }
        }
        for (int k = 0; k < 2; k++) free(o[k].ds0);
        engine_destroy(&te);
        engine_destroy(&se);
    }
    /* the CPU backend takes teacher_logits */
    engine_opts_t co = {.backend = ENGINE_CPU, .precision = ENGINE_FP32, .max_batch = p.B, .max_ctx = p.T};
    engine_t *ce = engine_new(p.m, &co, err), *ce2 = engine_new(p.m, &co, err);
    CHECKF(ce && ce2, "%s", err);
    engine_batch_t cb = {.tokens = p.tok, .targets = p.tgt, .B = p.B, .T = p.T, .state0 = p.s0, .obs_alpha = 0.3f,
                         .obs_temperature = 2.0f, .teacher = ce2};
    int r3 = engine_run(ce, &cb, err);
    printf("cpu with a device teacher: %s\n", err);
    int r4 = engine_teacher_forward(ce2, p.tok, p.B, p.T, p.s0, err);
    printf("cpu teacher forward: %s\n", err);
    if (r3 != ST_EUNSUPPORTED || r4 != ST_EUNSUPPORTED) {
        fprintf(stderr, "the CPU backend did not refuse the device teacher\n");
        rc = 1;
    }
    engine_destroy(&ce);
    engine_destroy(&ce2);
    free(ts0);
    free(tl);
    rwkv_model_destroy(&tm);
    s_problem_free(&p);
    return rc;
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Diagnostics, not a check (skips unless STATETUNE_METHODS_BENCH=1): the
 * cost of each method on one training step of SPEC section 8's smallest
 * shape (12 x 768, vocab 65536, batch 8 x ctx 1024, bf16; STATETUNE_METHODS_SHAPE
 * "L,C,B,T" and STATETUNE_METHODS_FP32=1 change it): plain, observer with
 * host teacher logits (uploaded chunk by chunk), the teacher's own forward
 * with its logits downloaded (what that path adds per micro-batch), the
 * kernel-expanded state with 64 features, the observer with the teacher's
 * top-64 per row (what a job with a teacher cache runs: no teacher pass), and
 * the observer with the teacher on the device (its forward included).
 * Median of 3 timed runs after one warm-up, in tokens/s. */
static int test_speed(void)
{
    const char *on = getenv("STATETUNE_METHODS_BENCH");
    if (!on || strcmp(on, "1") != 0) {
        printf("skipped: set STATETUNE_METHODS_BENCH=1 to time the methods\n");
        return ST_TEST_SKIP;
    }
    if (!st_test_have_gpu()) return ST_TEST_SKIP;
    int L = 12, C = 768, B = 8, T = 1024, M = 64;
    const char *shape = getenv("STATETUNE_METHODS_SHAPE");
    if (shape && *shape) sscanf(shape, "%d,%d,%d,%d", &L, &C, &B, &T);
    const char *f32 = getenv("STATETUNE_METHODS_FP32");
    engine_precision_t prec = f32 && !strcmp(f32, "1") ? ENGINE_FP32 : ENGINE_BF16;
    rwkv_config_t cfg = {.n_layer = L, .n_embd = C, .n_head = C / 64, .head_size = 64, .vocab = 65536,
                         .ffn_dim = 4 * C, .d_decay = 64, .d_aaa = 64, .d_mv = 32, .d_gate = 128};
    char err[ST_ERR_LEN];
    rwkv_model_t *m = rwkv_model_new_random(&cfg, 7, err);
    CHECKF(m != NULL, "%s", err);
    size_t R = (size_t)B * T, ns = (size_t)L * rwkv_state_layer_size(&cfg), nl = R * cfg.vocab;
    size_t nU = (size_t)L * cfg.n_head * 64 * M;
    int32_t *tok = malloc(R * 4), *tgt = malloc(R * 4);
    float *s0 = calloc(ns, 4), *ds0 = calloc(ns, 4), *teacher = malloc(nl * 4);
    float *U0 = calloc(nU, 4), *sv = malloc(nU * 4), *dU0 = calloc(nU, 4);
    CHECK(tok && tgt && s0 && ds0 && teacher && U0 && sv && dU0);
    uint64_t s = 12345;
    st_test_tokens(&s, R, cfg.vocab, 0, tok, tgt);
    for (size_t i = 0; i < nl; i++) teacher[i] = (float)((i * 2654435761u) % 1000) * 0.004f - 2.0f;
    for (size_t i = 0; i < nU; i++) sv[i] = 0.125f; /* unit: 64 x 0.125^2 = 1 */
    engine_kstate_t ks = {.M = M, .gamma = 1.0f, .U0 = U0, .support = sv};
    engine_opts_t opts = {.backend = ENGINE_CUDA, .precision = prec, .max_batch = B, .max_ctx = T};
    engine_cuda_t *e = engine_cuda_new(m, &opts, err);
    CHECKF(e != NULL, "%s", err);
    /* the teacher's top-64 per row (distinct ids, values best first), as a cache gives them */
    const int K = 64;
    float *tkv = malloc(R * K * 4);
    int32_t *tki = malloc(R * K * 4);
    CHECK(tkv && tki);
    for (size_t i = 0; i < R; i++)
        for (int j = 0; j < K; j++) {
            tkv[i * K + j] = 5.0f - 0.05f * j;
            tki[i * K + j] = (int32_t)((i * 7919u + (size_t)j * 1021u) % (size_t)cfg.vocab);
        }
    const char *name[5] = {"plain", "observer (host teacher logits)", "teacher forward + logits download",
                           "kernel state M=64", "observer, teacher top-64 (cache)"};
    double tps[5] = {0};
    int rc = 0;
    for (int k = 0; k < 5 && !rc; k++) {
        double ts[3];
        for (int it = 0; it < 4 && !rc; it++) {
            engine_batch_t bt = {.tokens = tok, .targets = tgt, .B = B, .T = T, .state0 = s0, .dstate0 = ds0};
            if (k == 1) {
                bt.teacher_logits = teacher;
                bt.obs_alpha = 0.5f;
                bt.obs_temperature = 1.0f;
            } else if (k == 2) {
                bt.targets = NULL;
                bt.dstate0 = NULL;
                bt.logits = teacher;
            } else if (k == 3) {
                bt.kstate = &ks;
                bt.dU0 = dU0;
            } else if (k == 4) {
                bt.teacher_topk = tkv;
                bt.teacher_topk_ids = tki;
                bt.teacher_k = K;
                bt.obs_alpha = 0.5f;
                bt.obs_temperature = 1.0f;
            }
            double t0 = s_now();
            rc = engine_cuda_run(e, &bt, err);
            if (rc) fprintf(stderr, "%s: %s\n", name[k], err);
            if (it > 0) ts[it - 1] = s_now() - t0;
        }
        if (rc) break;
        for (int i = 0; i < 3; i++) /* median of three */
            for (int j = i + 1; j < 3; j++)
                if (ts[j] < ts[i]) { double x = ts[i]; ts[i] = ts[j]; ts[j] = x; }
        tps[k] = R / ts[1];
        printf("%-36s %8.1f ms  %10.0f tokens/s\n", name[k], ts[1] * 1e3, tps[k]);
    }
    if (!rc) printf("shape %d x %d, vocab 65536, batch %d x ctx %d, %s; peak %.2f GB\n", L, C, B, T,
                    prec ? "bf16" : "fp32", engine_cuda_peak_mem_bytes(e) / 1e9);
    engine_cuda_destroy(&e);
    /* the observer with the teacher on the device (what tune does on CUDA): the
     * teacher's forward to its head input, then the student's step whose head
     * computes the teacher's logits; the teacher is a second engine of the same model */
    double tdev = 0;
    engine_t *te = NULL, *se = NULL;
    if (!rc) {
        te = engine_new(m, &opts, err);
        se = te ? engine_new(m, &opts, err) : NULL;
        if (!se) {
            fprintf(stderr, "engine_new: %s\n", err);
            rc = 1;
        }
    }
    double ts[3];
    for (int it = 0; it < 4 && !rc; it++) {
        double t0 = s_now();
        rc = engine_teacher_forward(te, tok, B, T, s0, err);
        engine_batch_t bt = {.tokens = tok, .targets = tgt, .B = B, .T = T, .state0 = s0, .dstate0 = ds0,
                             .teacher = te, .obs_alpha = 0.5f, .obs_temperature = 1.0f};
        if (!rc) rc = engine_run(se, &bt, err);
        if (rc) fprintf(stderr, "observer on the device: %s\n", err);
        if (it > 0) ts[it - 1] = s_now() - t0;
    }
    if (!rc) {
        for (int i = 0; i < 3; i++)
            for (int j = i + 1; j < 3; j++)
                if (ts[j] < ts[i]) { double x = ts[i]; ts[i] = ts[j]; ts[j] = x; }
        tdev = R / ts[1];
        printf("%-36s %8.1f ms  %10.0f tokens/s\n", "observer, teacher on the device", ts[1] * 1e3, tdev);
        printf("cost against plain: observer with host logits %.2fx (%.2fx with the teacher's forward and download), "
               "teacher on the device %.2fx (its forward included); teacher top-64 %.2fx; kernel state %.2fx\n",
               tps[0] / tps[1], tps[0] / tps[1] + tps[0] / tps[2], tps[0] / tdev, tps[0] / tps[4], tps[0] / tps[3]);
    }
    engine_destroy(&se);
    engine_destroy(&te);
    free(tok);
    free(tgt);
    free(s0);
    free(ds0);
    free(teacher);
    free(U0);
    free(sv);
    free(dU0);
    free(tkv);
    free(tki);
    rwkv_model_destroy(&m);
    return rc;
}

int main(int argc, char **argv)
{
    static const st_test_t tests[] = {
        {"fp32_observer", test_fp32_observer},
        {"fp32_kstate", test_fp32_kstate},
        {"fp32_both_recompute", test_fp32_both_recompute},
        {"bf16_observer", test_bf16_observer},
        {"bf16_kstate", test_bf16_kstate},
        {"bf16_both_recompute", test_bf16_both_recompute},
        {"fp32_topk", test_fp32_topk},
        {"bf16_topk", test_bf16_topk},
        {"fp32_topk_kstate_recompute", test_fp32_topk_kstate_recompute},
        {"topk_full_k_equals_full_rows", test_topk_full_k_equals_full_rows},
        {"neutral_settings_are_plain", test_neutral_settings_are_plain},
        {"receptance_matches_cpu", test_receptance_matches_cpu},
        {"device_teacher_matches_host_logits", test_device_teacher_matches_host_logits},
        {"speed", test_speed},
        {NULL, NULL},
    };
    return st_test_main(argc, argv, tests);
}
