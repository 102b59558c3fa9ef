/*
 * tune.c - the state-tuning loop (see tune.h for the contract).
 *
 * Design notes:
 *   - Parameters. A (L, H, N, N) is what Adam trains; R is DBP's
 *     decorrelation factor (the identity, never updated, when DBP is off, so
 *     S0 = A R = A). Every rank holds A, R and Adam's moments in full and
 *     applies the same update to the same all-reduced gradient, so the ranks
 *     never drift apart and no parameter broadcast is needed after step 0.
 *     A, R, S0, the gradient, DBP's Q and Adam's moments live in the engine
 *     (engine_params_*: device memory on a GPU, so a step moves no state
 *     over PCIe), and so does R's rule (engine_params_update_R: in double,
 *     on the host for the CPU engine, on the device for CUDA). The host
 *     copies of A and R are only the initial values and what checkpoints
 *     read and write.
 *   - A step: every micro-batch runs through engine_params_run, which adds
 *     dS0 to the resident gradient and the sampled rows' x x^T to the
 *     resident Q; one all-reduce; engine_params_step (mean, dL/dA = dS0 R^T,
 *     clip, Adam on A); under DBP engine_params_update_R with the global
 *     number of sampled pairs (R unchanged when none was sampled).
 *   - One all-reduce per step. Its buffer (doubles) is
 *       [ dS0 (nS) | Q (nS, DBP only) | dU0 | loss_sum n_targets n_correct
 *         n_tokens n_pairs cancel ]
 *     except that a GPU group sums dS0 and Q where the engine keeps them,
 *     in place on the device (dS0 in fp32, Q in double), in the same NCCL
 *     group as the rest of the buffer (dist_allreduce_step_device_q); the
 *     CPU, MPI and no-NCCL paths stage both through the buffer as before,
 *     so their results are unchanged.
 *     dS0 and Q are sums, the loss is a sum: after the reduction everything
 *     is divided by the global number of targets, so the result does not
 *     depend on how the global batch was cut into ranks and micro-batches.
 *     Rank 0's cancel request rides in the same buffer, so cancelling costs
 *     no extra collective and every rank stops after the same step.
 *   - Data: in a group, rank 0 reads the JSONL files and broadcasts their
 *     bytes, so only the model (and a World vocabulary) must exist on every
 *     node. Data order comes from data/batcher.h: a seeded, length-bucketed order
 *     that every rank computes alike, each rank taking a contiguous slice of
 *     every global batch. Its position goes into the checkpoint. Which rows
 *     feed DBP's Q is a hash of (seed, step, dataset index of the row), so
 *     the choice does not depend on how the batch was split.
 *   - Determinism. Nothing here depends on time or thread timing; with the
 *     CPU engine's fixed reduction order a resumed run is bit-identical to
 *     an uninterrupted one (the test checks it).
 *   - Outputs. Rank 0 writes DIR/state.safetensors (A R, official names) and
 *     DIR/metrics.json only after the last step and the final evaluation, and
 *     the checkpoint after it, each atomically. A failed or cancelled job
 *     writes no state.
 */
#include "engine/tune.h"

#include "common/st_err.h"
#include "common/st_fs.h"
#include "common/st_rng.h"
#include "common/st_time.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "engine/adam.h"
#include "engine/checkpoint.h"
#include "engine/dbp_param.h"
#include "engine/eval.h"
#include "engine/kstate.h"
#include "engine/observer.h"
#include "engine/schedule.h"
#include "engine/teacher_cache.h"
#include "model/model.h"
#include "store/state_formats.h"
#include "worker/dist.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { RED_LOSS, RED_TARGETS, RED_CORRECT, RED_TOKENS, RED_PAIRS, RED_CANCEL, RED_SCALARS };

typedef struct {
    const jobspec_t *spec;
    const tune_opts_t *opts;
    const tune_callbacks_t *cb;
    dist_t *dist;
    int rank, world, root;
    char path_ckpt[4096], path_state[4096], path_metrics[4096];

    rwkv_model_t *model;
    tokenizer_t *tok;
    dataset_t *train, *eval;
    engine_t *engine;

    int L, H, N;       /* state shape */
    size_t nS;         /* L * H * N * N */
    int nblk;          /* L * H */
    int64_t steps;     /* total optimizer steps */
    int dbp;           /* DBP on */
    float *A;          /* (nS) trained factor: initial value, checkpoint staging (the engine holds the live one) */
    float *R;          /* (nS) DBP factor: initial value, checkpoint staging (the engine holds the live one) */
    float *S0;         /* (nS) A R, read from the engine for evaluation and outputs */
    float *dS;         /* (nS) host staging of the gradient for MPI / no-NCCL all-reduces */
    double *red;       /* all-reduce buffer */
    size_t nred;       /* its length */
    schedule_t sched;
    /* SPEC 4's other methods (engine/observer.h, engine/kstate.h); NULL = off */
    observer_t *obs;   /* the frozen teacher (on the fly: observer.top_k 0) */
    teacher_cache_t *tc; /* its top-k, computed ahead of time (top_k > 0); obs is then freed */
    float *tk_val;     /* (micro_batch, ctx_len, k) one micro-batch's teacher values */
    int32_t *tk_ids;   /* (micro_batch, ctx_len, k) their ids */
    kstate_t *ks;      /* U0 and support vectors; the engine's default kstate */
    adam_t *adam_u;    /* Adam on U0 */
    float *dU, *gU;    /* (nU) float accumulator, gradient for Adam */
    size_t nU;         /* L H N M, 0 = off */
    int64_t ks_ckpt_step; /* step of the newest DIR/kstate.STEP.ckpt written or resumed, -1 = none */

    /* data */
    batcher_t *batcher;/* this rank's training batches */
    uint8_t rows[256]; /* DBP-sampled rows of one micro-batch */

    /* metrics */
    json_t *metrics;   /* train_loss[], evals[], baseline, train_loss_first */
    eval_result_t base;
    double train_loss_first, train_loss_last;
    uint64_t rng[4];   /* the loop's RNG (seeded; kept in checkpoints) */
    double prior_tokens, prior_seconds; /* training done by earlier calls (resume) */
    double call_tokens, call_t0;        /* this call's tokens and start time */
    double call_eval_s;                 /* seconds of evaluation inside this call's loop */
} tune_t;

static json_t *s_num(double x) { return isfinite(x) ? json_real(x) : json_null(); }

/* ---- evaluation ------------------------------------------------------------ */

static int s_evaluate(tune_t *t, const float *state, eval_result_t *res, char *err)
{
    eval_sums_t sums;
    double t0 = st_mono_s();
    int rc = eval_run(t->engine, t->model, t->tok, t->eval, state, t->spec->micro_batch, t->rank, t->world, 1,
                      &sums, err);
    if (rc) return st_wrap(err, rc, "evaluating: ");
    double buf[EVAL_SUMS];
    memcpy(buf, &sums, sizeof buf);
    rc = dist_allreduce_sum_f64(t->dist, buf, EVAL_SUMS, err);
    if (rc) return rc;
    memcpy(&sums, buf, sizeof buf);
    eval_finish(&sums, res);
    if (t->call_t0 > 0) t->call_eval_s += st_mono_s() - t0; /* training speed leaves evaluation out */
    return ST_OK;
}

static json_t *s_eval_json(int64_t step, const eval_result_t *e)
{
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer(step));
    json_object_set_new(o, "eval_loss", s_num(e->loss));
    json_object_set_new(o, "perplexity", s_num(e->perplexity));
    json_object_set_new(o, "accuracy", s_num(e->accuracy));
    json_object_set_new(o, "exact_match", s_num(e->exact_match));
    json_object_set_new(o, "targets", json_integer(e->n_targets));
    return o;
}

/* Records an evaluation in the metrics and tells the caller. */
static void s_report_eval(tune_t *t, int64_t step, const eval_result_t *e)
{
    json_t *o = s_eval_json(step, e);
    json_array_append(json_object_get(t->metrics, "evals"), o);
    if (t->root && t->cb && t->cb->on_eval) {
        json_t *withbase = json_deep_copy(o);
        json_object_set_new(withbase, "baseline", s_eval_json(0, &t->base));
        char *txt = json_dumps(withbase, JSON_COMPACT);
        if (txt) t->cb->on_eval(t->cb->ctx, step, txt);
        free(txt);
        json_decref(withbase);
    }
    json_decref(o);
}

/* ---- state, checkpoints, outputs ----------------------------------------- */

/* t->S0 = the engine's current A R. */
static int s_make_state(tune_t *t, char *err)
{
    return engine_params_get(t->engine, NULL, t->S0, err);
}

/* Largest |S0| a sane tuned state reaches: fp16's largest finite value, so
 * that every export format (Ai00's .st is fp16) can hold the state. States
 * tuned at sensible rates stay orders of magnitude below it; a state beyond
 * it comes from a runaway learning rate (lr_init 1e30 still gives finite
 * fp32 numbers, and GroupNorm hides their scale from the loss), and storing
 * it would store garbage (SPEC section 9). */
#define TUNE_STATE_MAX 65504.0

static int s_check_state(tune_t *t, int64_t step, char *err)
{
    size_t worst = 0;
    double big = 0;
    int rc = engine_params_state_absmax(t->engine, &big, &worst, err); /* the first NaN/inf, else the largest */
    if (rc) return rc;
    if (isfinite(big) && big <= TUNE_STATE_MAX) return ST_OK;
    size_t per_layer = t->nS / (size_t)t->L, per_head = (size_t)t->N * t->N;
    char when[64];
    if (step == 0)
        snprintf(when, sizeof when, "the initial state holds");
    else
        snprintf(when, sizeof when, "after step %lld the state diverged:", (long long)step);
    return st_fail(err, ST_ENUMERIC, "%s |S0| = %g at layer %zu head %zu (NaN, inf or beyond %g, the largest value "
                   "fp16 formats hold); stopping without writing a state (lower lr_init)",
                   when, (double)big, worst / per_layer, (worst % per_layer) / per_head, TUNE_STATE_MAX);
}

static int s_spec_hash(const jobspec_t *spec, char hex[65], char *err)
{
    char *json = jobspec_to_json(spec);
    if (!json) return st_fail(err, ST_ENOMEM, "out of memory for the job spec");
    st_sha256_hex(json, strlen(json), hex);
    free(json);
    return ST_OK;
}

/* Tokens trained and seconds spent over every call of this job. */
static void s_totals(tune_t *t, double *tokens, double *seconds)
{
    *tokens = t->prior_tokens + t->call_tokens;
    *seconds = t->prior_seconds + (st_mono_s() - t->call_t0 - t->call_eval_s);
}

static int s_write_checkpoint(tune_t *t, int64_t step, char *err)
{
    if (!t->root) return ST_OK;
    double tok, sec;
    s_totals(t, &tok, &sec);
    json_object_set_new(t->metrics, "train_tokens_total", json_real(tok));
    json_object_set_new(t->metrics, "train_seconds_total", json_real(sec));
    checkpoint_t *ck = checkpoint_new(t->L, t->H, t->N, err);
    if (!ck) return ST_ENOMEM;
    int rc = s_spec_hash(t->spec, ck->spec_sha256, err);
    char kpath[4200], kprev[4200];
    if (!rc && t->ks) { /* U0 and its moments go first, named by step, so the checkpoint never names a missing one */
        snprintf(kpath, sizeof kpath, "%s/kstate.%lld.ckpt", t->opts->out_dir, (long long)step);
        rc = kstate_ckpt_write(t->ks, kpath, step, adam_m(t->adam_u), adam_v(t->adam_u), adam_t_count(t->adam_u),
                               err);
    }
    if (!rc) rc = engine_params_get(t->engine, ck->A, NULL, err);
    if (t->dbp && !rc) rc = engine_params_get_R(t->engine, ck->R, err);
    else memcpy(ck->R, t->R, t->nS * sizeof(float)); /* the identity */
    if (!rc) rc = engine_params_get_adam(t->engine, ck->adam_m, ck->adam_v, &ck->adam_t, err);
    ck->step = step;
    ck->dbp = t->dbp;
    memcpy(ck->rng, t->rng, sizeof t->rng);
    batcher_pos_t pos = batcher_position(t->batcher);
    int64_t raw[2] = {pos.epoch, pos.index};
    if (!rc) rc = checkpoint_set_data_pos(ck, raw, sizeof raw, err);
    char *mj = json_dumps(t->metrics, JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (!rc && !mj) rc = st_fail(err, ST_ENOMEM, "out of memory for the metrics");
    if (!rc) rc = checkpoint_set_metrics(ck, mj, err);
    free(mj);
    if (!rc) rc = checkpoint_write(ck, t->path_ckpt, err);
    checkpoint_destroy(&ck);
    if (!rc && t->ks && t->ks_ckpt_step >= 0 && t->ks_ckpt_step != step) { /* the one the old checkpoint named */
        snprintf(kprev, sizeof kprev, "%s/kstate.%lld.ckpt", t->opts->out_dir, (long long)t->ks_ckpt_step);
        remove(kprev);
    }
    if (!rc && t->ks) t->ks_ckpt_step = step;
    if (!rc && t->cb && t->cb->on_checkpoint) t->cb->on_checkpoint(t->cb->ctx, step, t->path_ckpt);
    return rc;
}

/* Header of a resumed checkpoint, broadcast from rank 0. */
typedef struct {
    int64_t found;    /* 1 = resume, 0 = fresh start, < 0 = error on rank 0 */
    int64_t step;
    int64_t adam_t;
    int64_t json_len;
    int64_t pos[2];   /* batcher position: epoch, index */
    uint64_t rng[4];
} s_resume_hdr_t;

/* Loads the checkpoint on rank 0 and hands it to every rank. Returns the
 * step to start from in *start. */
static int s_resume(tune_t *t, int64_t *start, char *err)
{
    *start = 0;
    s_resume_hdr_t h = {0};
    checkpoint_t *ck = NULL;
    char *mj = NULL;
    float *am = NULL, *av = NULL; /* Adam's moments on their way to the engine */
    int rc = ST_OK;
    if (t->root && t->opts->resume != TUNE_RESUME_NEVER) {
        rc = checkpoint_read(t->path_ckpt, &ck, err);
        if (rc == ST_ENOTFOUND) {
            if (t->opts->resume == TUNE_RESUME_REQUIRE)
                st_fail(err, ST_ENOTFOUND, "cannot resume: '%s' holds no checkpoint", t->opts->out_dir);
            else
                rc = ST_OK;
        } else if (rc == ST_OK) {
            char hex[65];
            rc = s_spec_hash(t->spec, hex, err);
            if (!rc && strcmp(hex, ck->spec_sha256) != 0)
                rc = st_fail(err, ST_EINVAL, "'%s' holds a checkpoint of a different job (its spec differs): "
                             "use another --out directory, or --fresh to start over", t->path_ckpt);
            else if (!rc && (ck->n_layer != t->L || ck->n_head != t->H || ck->head_size != t->N))
                rc = st_fail(err, ST_EINVAL, "checkpoint '%s' is for a state of %d x %d x %d, the model needs %d x %d x %d",
                             t->path_ckpt, ck->n_layer, ck->n_head, ck->head_size, t->L, t->H, t->N);
            else if (!rc && ck->data_pos_len != sizeof h.pos)
                rc = st_fail(err, ST_EFORMAT, "checkpoint '%s' holds a data position of %zu bytes, expected %zu",
                             t->path_ckpt, ck->data_pos_len, sizeof h.pos);
            else if (!rc && ck->step > t->steps)
                rc = st_fail(err, ST_EINVAL, "checkpoint '%s' is at step %lld, past the job's %lld steps",
                             t->path_ckpt, (long long)ck->step, (long long)t->steps);
        }
        if (rc == ST_OK && ck) {
            h.found = 1;
            h.step = ck->step;
            h.adam_t = ck->adam_t;
            memcpy(h.rng, ck->rng, sizeof h.rng);
            memcpy(h.pos, ck->data_pos, sizeof h.pos);
            h.json_len = ck->metrics_json ? (int64_t)strlen(ck->metrics_json) : 0;
        }
        if (rc) h.found = -1;
    }
    int brc = dist_bcast(t->dist, &h, sizeof h, err);
    if (brc) rc = brc;
    if (!rc && h.found < 0) rc = st_fail(err, ST_ECANCELLED, "rank 0 could not read the checkpoint");
    if (!rc && h.found == 1) {
        am = malloc(t->nS * sizeof(float));
        av = malloc(t->nS * sizeof(float));
        if (t->root) {
            memcpy(t->A, ck->A, t->nS * sizeof(float));
            memcpy(t->R, ck->R, t->nS * sizeof(float));
            if (am && av) {
                memcpy(am, ck->adam_m, t->nS * sizeof(float));
                memcpy(av, ck->adam_v, t->nS * sizeof(float));
            }
            mj = ck->metrics_json ? strdup(ck->metrics_json) : strdup("{}");
        } else {
            mj = calloc((size_t)h.json_len + 1, 1);
        }
        if (!mj || !am || !av) rc = st_fail(err, ST_ENOMEM, "out of memory reading the checkpoint");
        if (!rc) rc = dist_bcast(t->dist, t->A, t->nS * sizeof(float), err);
        if (!rc) rc = dist_bcast(t->dist, t->R, t->nS * sizeof(float), err);
        if (!rc) rc = dist_bcast(t->dist, am, t->nS * sizeof(float), err);
        if (!rc) rc = dist_bcast(t->dist, av, t->nS * sizeof(float), err);
        if (!rc) rc = engine_params_set(t->engine, t->A, t->dbp ? t->R : NULL, err);
        if (!rc) rc = engine_params_set_adam(t->engine, am, av, h.adam_t, err);
        if (!rc && h.json_len) rc = dist_bcast(t->dist, mj, (size_t)h.json_len, err);
        if (!rc) {
            json_error_t je;
            json_t *m = json_loads(mj, 0, &je);
            if (!m || !json_is_object(m) || !json_is_array(json_object_get(m, "evals")) ||
                !json_is_array(json_object_get(m, "train_loss"))) {
                json_decref(m);
                rc = st_fail(err, ST_EFORMAT, "checkpoint '%s' holds unreadable metrics (%s)", t->path_ckpt, je.text);
            } else {
                json_decref(t->metrics);
                t->metrics = m;
                json_t *b = json_object_get(m, "baseline");
                t->base.loss = json_number_value(json_object_get(b, "eval_loss"));
                t->base.perplexity = json_number_value(json_object_get(b, "perplexity"));
                t->base.accuracy = json_number_value(json_object_get(b, "accuracy"));
                json_t *em = json_object_get(b, "exact_match");
                t->base.exact_match = json_is_number(em) ? json_number_value(em) : NAN;
                t->base.n_targets = json_integer_value(json_object_get(b, "targets"));
                json_t *tl = json_object_get(m, "train_loss");
                size_t n = json_array_size(tl);
                t->train_loss_first = n ? json_number_value(json_array_get(tl, 0)) : NAN;
                t->train_loss_last = n ? json_number_value(json_array_get(tl, n - 1)) : NAN;
                t->prior_tokens = json_number_value(json_object_get(m, "train_tokens_total"));
                t->prior_seconds = json_number_value(json_object_get(m, "train_seconds_total"));
                rc = batcher_seek(t->batcher, (batcher_pos_t){h.pos[0], h.pos[1]}, err);
                memcpy(t->rng, h.rng, sizeof t->rng);
                *start = h.step;
            }
        }
    }
    free(mj);
    free(am);
    free(av);
    checkpoint_destroy(&ck);
    return rc;
}

static int s_write_outputs(tune_t *t, const eval_result_t *fin, double tokens_per_s, double wall_s,
                           int64_t start, tune_result_t *out, char *err)
{
    /* summary first, histories last, so the file reads top-down */
    json_t *m = json_object();
    if (!m) return st_fail(err, ST_ENOMEM, "out of memory for metrics.json");
    json_object_set_new(m, "name", json_string(t->spec->name));
    json_object_set_new(m, "steps", json_integer(t->steps));
    json_object_set_new(m, "resumed_from_step", json_integer(start));
    json_object_set_new(m, "eval_loss_before", s_num(t->base.loss));
    json_object_set_new(m, "eval_loss_after", s_num(fin->loss));
    json_object_set_new(m, "perplexity_before", s_num(t->base.perplexity));
    json_object_set_new(m, "perplexity_after", s_num(fin->perplexity));
    json_object_set_new(m, "accuracy_before", s_num(t->base.accuracy));
    json_object_set_new(m, "accuracy_after", s_num(fin->accuracy));
    json_object_set_new(m, "exact_match_before", s_num(t->base.exact_match));
    json_object_set_new(m, "exact_match_after", s_num(fin->exact_match));
    json_object_set_new(m, "train_loss_first", s_num(t->train_loss_first));
    json_object_set_new(m, "train_loss_last", s_num(t->train_loss_last));
    json_object_set_new(m, "tokens_per_s", s_num(tokens_per_s));
    json_object_set_new(m, "train_seconds", s_num(wall_s));
    json_object_set_new(m, "train_samples", json_integer(dataset_count(t->train)));
    json_object_set_new(m, "eval_samples", json_integer(dataset_count(t->eval)));
    json_object_set_new(m, "eval_targets", json_integer(fin->n_targets));
    json_object_set_new(m, "ranks", json_integer(t->world));
    json_object_set_new(m, "dbp", json_boolean(t->dbp));
    json_object_set_new(m, "observer", json_boolean(t->obs != NULL || t->tc != NULL));
    if (t->tc) json_object_set_new(m, "observer_top_k", json_integer(tcache_k(t->tc)));
    json_object_set_new(m, "kernel_features", json_integer(t->ks ? kstate_features(t->ks) : 0));
    json_object_set_new(m, "model_sha256", json_string(t->model->sha256));
    json_object_set(m, "baseline", json_object_get(t->metrics, "baseline"));
    json_object_set(m, "evals", json_object_get(t->metrics, "evals"));
    json_object_set(m, "train_loss", json_object_get(t->metrics, "train_loss"));
    char *txt = json_dumps(m, JSON_INDENT(1) | JSON_REAL_PRECISION(10));
    json_decref(m);
    if (!txt) return st_fail(err, ST_ENOMEM, "out of memory for metrics.json");
    int rc = ST_OK;
    if (t->root) {
        rc = state_write(t->path_state, STATE_FMT_SAFETENSORS, t->L, t->H, t->N, t->S0, 0, err);
        if (!rc && t->ks) { /* U0 beside S0: state.safetensors alone is the state without the kernel term */
            char kp[4200];
            snprintf(kp, sizeof kp, "%s/kstate.safetensors", t->opts->out_dir);
            rc = kstate_write(t->ks, kp, err);
        }
        if (!rc) rc = st_write_file_atomic(t->path_metrics, txt, strlen(txt), err);
    }
    if (rc) {
        free(txt);
        return rc;
    }
    out->metrics_json = txt;
    out->state = malloc(t->nS * sizeof(float));
    if (!out->state) return st_fail(err, ST_ENOMEM, "out of memory for the result");
    memcpy(out->state, t->S0, t->nS * sizeof(float));
    return ST_OK;
}

/* ---- data ------------------------------------------------------------------ */

#define TUNE_MAX_DATA_BYTES ((size_t)1 << 34) /* 16 GB of JSONL */

/* Rank 0 reads one data file and sends its bytes to every rank (SPEC section
 * 7: the data goes out by MPI, so other nodes need no copy of it). A failed
 * read on rank 0 is sent as length -1, so the other ranks stop too. */
static int s_bcast_file(tune_t *t, const char *path, char **data, size_t *len, char *err)
{
    *data = NULL;
    *len = 0;
    int64_t n = -1;
    int rc = ST_OK;
    if (t->root) {
        rc = st_read_file(path, TUNE_MAX_DATA_BYTES, data, len, err);
        if (!rc) n = (int64_t)*len;
    }
    int brc = dist_bcast(t->dist, &n, sizeof n, rc ? NULL : err);
    if (rc) return rc;
    if (brc) return brc;
    if (n < 0) return st_fail(err, ST_ECANCELLED, "rank 0 could not read '%s'", path);
    if (!t->root) {
        *data = malloc((size_t)n + 1);
        if (!*data) return st_fail(err, ST_ENOMEM, "out of memory for %lld bytes of '%s'", (long long)n, path);
        *len = (size_t)n;
    }
    rc = dist_bcast(t->dist, *data, (size_t)n, err);
    if (rc) {
        free(*data);
        *data = NULL;
    }
    return rc;
}

/* The job's train and eval sets: read from the files in a single process,
 * sent by rank 0 to the others in a group (the same code as
 * dataset_load_job, over buffers). */
static int s_load_data(tune_t *t, char *err)
{
    const jobspec_t *spec = t->spec;
    if (t->world == 1) return dataset_load_job(spec, t->tok, &t->train, &t->eval, err);
    char *data = NULL;
    size_t len = 0;
    dataset_t *all = NULL;
    int rc = s_bcast_file(t, spec->train, &data, &len, err);
    if (!rc) rc = dataset_load_buffer(spec->train, data, len, t->tok, spec->ctx_len, spec->truncate, &all, err);
    free(data);
    if (rc) return rc;
    if (spec->eval) {
        rc = s_bcast_file(t, spec->eval, &data, &len, err);
        if (!rc) rc = dataset_load_buffer(spec->eval, data, len, t->tok, spec->ctx_len, spec->truncate, &t->eval, err);
        free(data);
        if (rc) {
            dataset_destroy(&all);
            return rc;
        }
        t->train = all;
        return ST_OK;
    }
    rc = dataset_split(all, spec->eval_fraction, spec->seed, &t->train, &t->eval, err);
    if (rc) st_wrap(err, rc, "data '%s': ", spec->train);
    dataset_destroy(&all);
    return rc;
}

/* ---- setup and teardown ------------------------------------------------- */

static void s_teardown(tune_t *t)
{
    observer_destroy(&t->obs);
    tcache_destroy(&t->tc);
    free(t->tk_val);
    free(t->tk_ids);
    kstate_destroy(&t->ks);
    adam_destroy(&t->adam_u);
    free(t->dU);
    free(t->gU);
    engine_destroy(&t->engine);
    dataset_destroy(&t->train);
    dataset_destroy(&t->eval);
    tokenizer_destroy(&t->tok);
    rwkv_model_destroy(&t->model);
    free(t->A);
    free(t->R);
    free(t->S0);
    free(t->dS);
    free(t->red);
    batcher_destroy(&t->batcher);
    json_decref(t->metrics);
}

/* The teacher cache's gather over the group (engine/teacher_cache.h). */
static int s_tcache_reduce(void *ctx, float *buf, size_t n, char *err)
{
    return dist_allreduce_sum_f32(((tune_t *)ctx)->dist, buf, n, err);
}

static int s_setup(tune_t *t, char *err)
{
    const jobspec_t *spec = t->spec;
    int rc;
    if (!spec->model_path)
        return st_fail(err, ST_EINVAL, "job '%s' names the registered model '%s', which must be resolved to a file first",
                       spec->name, spec->model_name ? spec->model_name : "?");
    if (spec->observer.teacher_name && !spec->observer.teacher_path)
        return st_fail(err, ST_EINVAL, "job '%s' names the registered teacher '%s', which must be resolved to a file "
                       "first", spec->name, spec->observer.teacher_name);
    if (spec->kernel_state.features > KSTATE_MAX_FEATURES)
        return st_fail(err, ST_EUNSUPPORTED, "kernel_state.features %d is over the %d this build supports",
                       spec->kernel_state.features, KSTATE_MAX_FEATURES);
    if (spec->global_batch % t->world != 0)
        return st_fail(err, ST_EINVAL, "global_batch %d does not split evenly over %d ranks", spec->global_batch,
                       t->world);
    if (spec->micro_batch > 256) return st_fail(err, ST_EINVAL, "micro_batch %d is over 256", spec->micro_batch);
    rc = st_mkdirs(t->opts->out_dir, err);
    if (rc) return rc;
    snprintf(t->path_ckpt, sizeof t->path_ckpt, "%s/%s", t->opts->out_dir, TUNE_CHECKPOINT_FILE);
    snprintf(t->path_state, sizeof t->path_state, "%s/%s", t->opts->out_dir, TUNE_STATE_FILE);
    snprintf(t->path_metrics, sizeof t->path_metrics, "%s/%s", t->opts->out_dir, TUNE_METRICS_FILE);

    t->model = rwkv_model_load(spec->model_path, err);
    if (!t->model) return ST_EFORMAT;
    t->tok = tokenizer_new(spec->tokenizer ? spec->tokenizer : "bytes", err);
    if (!t->tok) return ST_EFORMAT;
    if (tokenizer_vocab_size(t->tok) != t->model->cfg.vocab)
        return st_fail(err, ST_EINVAL, "the tokenizer has %d tokens but the model's vocabulary is %d",
                       tokenizer_vocab_size(t->tok), t->model->cfg.vocab);
    rc = s_load_data(t, err);
    if (rc) return rc;
    if (dataset_count(t->train) < 1) return st_fail(err, ST_EINVAL, "the training set has no usable sample");
    if (dataset_count(t->eval) < 1) return st_fail(err, ST_EINVAL, "the eval set has no usable sample");

    const rwkv_config_t *c = &t->model->cfg;
    t->L = c->n_layer;
    t->H = c->n_head;
    t->N = c->head_size;
    t->nblk = t->L * t->H;
    t->nS = (size_t)t->nblk * t->N * t->N;
    t->dbp = spec->dbp.enabled;
    t->batcher = batcher_new(t->train, spec->global_batch, spec->micro_batch, spec->ctx_len, spec->seed, t->rank,
                             t->world, err);
    if (!t->batcher) return ST_EINVAL;
    int64_t per_epoch = batcher_steps_per_epoch(t->batcher);
    t->steps = spec->steps > 0 ? spec->steps : spec->epochs * per_epoch;
    if (t->steps < 1) return st_fail(err, ST_EINVAL, "the job has no step to run");
    t->sched = (schedule_t){spec->lr_init, spec->lr_final, spec->warmup_steps, t->steps};

    engine_opts_t eo = {.backend = t->opts->backend,
                        .precision = spec->precision && !strcmp(spec->precision, "bf16") ? ENGINE_BF16 : ENGINE_FP32,
                        .max_batch = spec->micro_batch,
                        .max_ctx = spec->ctx_len,
                        .device = dist_local_rank(t->dist),
                        .threads = t->opts->threads};
    if (eo.backend == ENGINE_CPU && eo.precision == ENGINE_BF16) eo.precision = ENGINE_FP32; /* CPU is fp32 only */
    if (eo.backend == ENGINE_CUDA) { /* a GPU group sums its steps with NCCL (no-op for one rank); made
                                      * before the engine so that its memory plan sees NCCL's buffers */
        rc = dist_init_nccl(t->dist, err);
        if (rc) return rc;
    }
    t->engine = engine_new(t->model, &eo, err);
    if (!t->engine) return ST_EUNSUPPORTED;

    t->A = calloc(t->nS, sizeof(float));
    t->R = calloc(t->nS, sizeof(float));
    t->S0 = calloc(t->nS, sizeof(float));
    t->dS = calloc(t->nS, sizeof(float));
    if (spec->kernel_state.features > 0)
        t->nU = (size_t)t->nblk * t->N * spec->kernel_state.features;
    t->nred = (t->dbp ? 2 : 1) * t->nS + t->nU + RED_SCALARS; /* [dS0 | Q | dU0 | scalars] */
    t->red = calloc(t->nred, sizeof(double));
    t->metrics = json_object();
    if (!t->A || !t->R || !t->S0 || !t->dS || !t->red || !t->metrics)
        return st_fail(err, ST_ENOMEM, "out of memory for the tuning state");
    json_object_set_new(t->metrics, "train_loss", json_array());
    json_object_set_new(t->metrics, "evals", json_array());
    rc = engine_params_init(t->engine, t->dbp, spec->beta1, spec->beta2, spec->eps, err);
    if (rc) return rc;
    if (t->opts->init_state) memcpy(t->A, t->opts->init_state, t->nS * sizeof(float));
    dbp_identity(t->nblk, t->N, t->R);
    rc = engine_params_set(t->engine, t->A, t->dbp ? t->R : NULL, err);
    if (rc) return rc;
    if (spec->observer.teacher_path) {
        t->obs = observer_new(spec->observer.teacher_path, spec->observer.teacher_state, &eo, c->vocab, err);
        if (!t->obs) return ST_EINVAL;
    }
    if (t->obs && spec->observer.top_k > 0 && spec->observer.alpha < 1) { /* top-k ahead of time */
        rc = tcache_for_job(t->obs, spec, t->train, t->opts->out_dir, t->opts->resume == TUNE_RESUME_NEVER, t->rank,
                            t->world, s_tcache_reduce, t, &t->tc, err);
        if (rc) return rc;
        size_t n = (size_t)spec->micro_batch * spec->ctx_len * tcache_k(t->tc);
        t->tk_val = malloc(n * sizeof(float));
        t->tk_ids = malloc(n * sizeof(int32_t));
        if (!t->tk_val || !t->tk_ids) return st_fail(err, ST_ENOMEM, "out of memory for the teacher's top-k");
        observer_destroy(&t->obs); /* training runs no teacher now */
    }
    if (t->nU) { /* U0 = 0; support vectors from the initial state's receptances (every rank alike) */
        t->ks = kstate_new(t->L, t->H, t->N, spec->kernel_state.features, (float)spec->kernel_state.gamma, err);
        t->dU = calloc(t->nU, sizeof(float));
        t->gU = calloc(t->nU, sizeof(float));
        t->adam_u = adam_new(t->nU, spec->beta1, spec->beta2, spec->eps, err);
        if (!t->ks || !t->dU || !t->gU || !t->adam_u)
            return st_fail(err, ST_ENOMEM, "out of memory for the kernel-expanded state");
        rc = s_make_state(t, err);
        if (rc) return rc;
        rc = kstate_support_init(t->ks, spec->kernel_state.support, t->engine, t->train, spec->micro_batch,
                                 spec->ctx_len, t->S0, spec->seed, err);
        if (rc) return st_wrap(err, rc, "kernel_state: ");
        engine_set_kstate(t->engine, kstate_view(t->ks)); /* evaluation sees U0 too */
    }
    uint64_t sd = spec->seed;
    for (int i = 0; i < 4; i++) t->rng[i] = st_splitmix64(&sd);
    return ST_OK;
}

/* ---- the loop ------------------------------------------------------------- */

/* One optimizer step. Returns ST_ECANCELLED when rank 0 asked to stop. */
static int s_step(tune_t *t, int64_t step, double *loss_out, double *tokens_out, char *err)
{
    int rc = s_check_state(t, step, err);
    if (!rc) rc = engine_params_zero_grad(t->engine, err);
    if (rc) return rc;
    if (t->nU) memset(t->dU, 0, t->nU * sizeof(float));
    /* only the scalars: every other slot of the buffer is written whole
     * before the all-reduce reads it (or not used at all when the gradient is
     * summed on the device); clearing all of it cost 2.5 ms a step at
     * 24 x 2048 (3.1 M doubles) */
    double *sc = t->red + t->nred - RED_SCALARS;
    memset(sc, 0, RED_SCALARS * sizeof(double));
    if (t->root && t->cb && t->cb->should_cancel && t->cb->should_cancel(t->cb->ctx)) {
        if (t->world == 1) return st_fail(err, ST_ECANCELLED, "the job was cancelled at step %lld", (long long)step);
        sc[RED_CANCEL] = 1;
    }
    batch_t batch;
    batcher_pos_t before = batcher_position(t->batcher); /* restored if this step is cancelled */
    rc = batcher_next(t->batcher, &batch, err);
    if (rc) return st_wrap(err, rc, "step %lld: ", (long long)step + 1);
    for (int m = 0; m < batch.n_micro; m++) {
        micro_batch_t *mi = &batch.micro[m];
        if (mi->B > (int)sizeof t->rows) return st_fail(err, ST_EINVAL, "micro-batch of %d rows is over 256", mi->B);
        int n_sampled = 0;
        for (int b = 0; b < mi->B; b++) {
            t->rows[b] = t->dbp && dbp_row_sampled(t->spec->seed, step, mi->sample[b], t->spec->dbp.sample_fraction);
            n_sampled += t->rows[b];
            int n = dataset_get(t->train, mi->sample[b]).n - 1;
            sc[RED_TOKENS] += n < mi->T ? n : mi->T;
        }
        engine_batch_t b = {.tokens = mi->tokens,
                            .targets = mi->targets,
                            .B = mi->B,
                            .T = mi->T,
                            .dbp_rows = n_sampled ? t->rows : NULL, /* into the engine's Q */
                            .dU0 = t->dU};
        if (t->tc) {
            rc = tcache_fill(t->tc, mi->targets, mi->sample, mi->B, mi->T, t->tk_val, t->tk_ids, err);
            if (rc) return st_wrap(err, rc, "step %lld: ", (long long)step + 1);
            b.teacher_topk = t->tk_val;
            b.teacher_topk_ids = t->tk_ids;
            b.teacher_k = tcache_k(t->tc);
            b.obs_alpha = (float)t->spec->observer.alpha;
            b.obs_temperature = (float)t->spec->observer.temperature;
        } else if (t->obs) {
            /* on CUDA the teacher's logits never leave the GPU (engine_batch_t.teacher) */
            if (t->opts->backend == ENGINE_CUDA)
                rc = observer_forward_device(t->obs, mi->tokens, mi->B, mi->T, &b.teacher, err);
            else
                rc = observer_logits(t->obs, mi->tokens, mi->B, mi->T, &b.teacher_logits, err);
            if (rc) return st_wrap(err, rc, "step %lld: ", (long long)step + 1);
            b.obs_alpha = (float)t->spec->observer.alpha;
            b.obs_temperature = (float)t->spec->observer.temperature;
        }
        rc = engine_params_run(t->engine, &b, err);
        if (rc) return st_wrap(err, rc, "step %lld: ", (long long)step + 1);
        sc[RED_LOSS] += b.loss_sum;
        sc[RED_TARGETS] += (double)b.n_targets;
        sc[RED_CORRECT] += (double)b.n_correct;
        /* Q sums x x^T over every position of a flagged row, padding
         * included, so the pairs counted are B_sampled * T */
        sc[RED_PAIRS] += (double)n_sampled * mi->T;
    }
    double *redU = t->red + (t->dbp ? 2 : 1) * t->nS;
    for (size_t i = 0; i < t->nU; i++) redU[i] = t->dU[i];
    /* A gradient and Q on the GPU are summed there in place by NCCL, beside
     * the rest of the buffer (the scalars exactly). Otherwise they are
     * staged through the buffer's doubles: MPI for CPU ranks, and a GPU
     * group without NCCL. */
    float *grad = engine_params_grad(t->engine);
    int on_device = engine_params_grad_on_device(t->engine);
    int device_sum = on_device && (t->world == 1 || dist_has_nccl(t->dist));
    if (device_sum) {
        size_t off = (t->dbp ? 2 : 1) * t->nS; /* the buffer's Q slot is not used */
        rc = dist_allreduce_step_device_q(t->dist, grad, t->nS, t->dbp ? engine_params_q(t->engine) : NULL, t->nS,
                                          t->red + off, t->nred - off, RED_SCALARS, err);
    } else {
        const float *g = grad;
        if (on_device) {
            rc = engine_params_get_grad(t->engine, t->dS, err);
            g = t->dS;
        }
        for (size_t i = 0; !rc && i < t->nS; i++) t->red[i] = g[i];
        if (!rc && t->dbp) rc = engine_params_get_q(t->engine, t->red + t->nS, err);
        if (!rc) rc = dist_allreduce_step_f64(t->dist, t->red, t->nred, RED_SCALARS, err);
        if (!rc && t->dbp) rc = engine_params_set_q(t->engine, t->red + t->nS, err);
    }
    if (rc) return rc;
    if (sc[RED_CANCEL] > 0) {
        /* the step is dropped whole: its batch comes again after a resume */
        rc = batcher_seek(t->batcher, before, err);
        if (rc) return rc;
        return st_fail(err, ST_ECANCELLED, "the job was cancelled at step %lld", (long long)step);
    }
    double ntg = sc[RED_TARGETS];
    if (ntg <= 0) return st_fail(err, ST_EINVAL, "step %lld: the global batch has no trained target", (long long)step + 1);
    double loss = sc[RED_LOSS] / ntg;
    if (!isfinite(loss))
        return st_fail(err, ST_ENUMERIC, "step %lld: the training loss is %g; stopping without writing a state "
                       "(lower lr_init or check the data)", (long long)step + 1, loss);
    /* the mean gradient: divided by the global target count in the step
     * (device sum), or here, as the host path always did */
    double grad_div = ntg;
    if (!device_sum) {
        for (size_t i = 0; i < t->nS; i++) t->dS[i] = (float)(t->red[i] / ntg);
        rc = engine_params_set_grad(t->engine, t->dS, err);
        if (rc) return rc;
        grad_div = 1;
    }
    /* dL/dA = dS0 R^T, global-norm clip, Adam on A: in the engine */
    engine_step_info_t info;
    rc = engine_params_step(t->engine, grad_div, t->spec->grad_clip, schedule_lr(&t->sched, step), &info, err);
    if (rc) return st_wrap(err, rc, "step %lld: ", (long long)step + 1);
    if (!isfinite(info.grad_norm))
        return st_fail(err, ST_ENUMERIC, "step %lld: the state gradient holds NaN or inf; stopping without "
                       "writing a state (lower lr_init or check the data)", (long long)step + 1);
    if (t->nU) { /* U0: its own global-norm clip and Adam moments, the same schedule */
        float *u0 = kstate_u0(t->ks);
        for (size_t i = 0; i < t->nU; i++) t->gU[i] = (float)(redU[i] / ntg);
        if (!isfinite(adam_clip_grad_norm(t->gU, t->nU, t->spec->grad_clip)))
            return st_fail(err, ST_ENUMERIC, "step %lld: the U0 gradient holds NaN or inf; stopping without writing "
                           "a state (lower lr_init or check the data)", (long long)step + 1);
        adam_step(t->adam_u, u0, t->gU, schedule_lr(&t->sched, step));
    }
    int finite = info.finite;
    if (t->dbp) { /* R's rule where the engine is; R unchanged when no row was sampled */
        int r_finite = 1;
        rc = engine_params_update_R(t->engine, sc[RED_PAIRS], t->spec->dbp.lr, t->spec->dbp.kappa, &r_finite, err);
        if (rc) return st_wrap(err, rc, "step %lld: ", (long long)step + 1);
        finite = finite && r_finite;
    }
    if (!finite)
            return st_fail(err, ST_ENUMERIC, "step %lld: the state became NaN or inf; stopping without writing "
                           "a state (lower lr_init%s)", (long long)step + 1, t->dbp ? " or dbp.lr" : "");
    *loss_out = loss;
    *tokens_out = sc[RED_TOKENS];
    return ST_OK;
}

/* U0 and its Adam moments from DIR/kstate.START.ckpt (rank 0 reads, every
 * rank receives; the support vectors are recomputed alike on every rank). */
static int s_resume_kstate(tune_t *t, int64_t start, char *err)
{
    int64_t hdr[2] = {0, 0}; /* rank 0's result, Adam's step count */
    if (t->root) {
        char path[4200];
        snprintf(path, sizeof path, "%s/kstate.%lld.ckpt", t->opts->out_dir, (long long)start);
        int64_t step = -1;
        int rc = kstate_ckpt_read(t->ks, path, &step, adam_m(t->adam_u), adam_v(t->adam_u), &hdr[1], err);
        if (!rc && step != start)
            rc = st_fail(err, ST_EFORMAT, "kernel-state checkpoint '%s' holds step %lld, not %lld: rerun with --fresh",
                         path, (long long)step, (long long)start);
        if (rc == ST_ENOTFOUND)
            st_wrap(err, rc, "the checkpoint at step %lld has no kernel-state U0 beside it (rerun with --fresh): ",
                    (long long)start);
        hdr[0] = rc;
    }
    int rc = dist_bcast(t->dist, hdr, sizeof hdr, err);
    if (rc) return rc;
    if (hdr[0]) return t->root ? (int)hdr[0] : st_fail(err, ST_ECANCELLED, "rank 0 could not read the kernel-state checkpoint");
    rc = dist_bcast(t->dist, kstate_u0(t->ks), t->nU * sizeof(float), err);
    if (!rc) rc = dist_bcast(t->dist, adam_m(t->adam_u), t->nU * sizeof(float), err);
    if (!rc) rc = dist_bcast(t->dist, adam_v(t->adam_u), t->nU * sizeof(float), err);
    if (rc) return rc;
    adam_set_t_count(t->adam_u, hdr[1]);
    t->ks_ckpt_step = start;
    return ST_OK;
}

int tune_run(const jobspec_t *spec, const tune_opts_t *opts, const tune_callbacks_t *cb, tune_result_t *out,
             char *err)
{
    memset(out, 0, sizeof *out);
    tune_t t = {0};
    t.spec = spec;
    t.opts = opts;
    t.cb = cb;
    t.dist = opts->dist;
    t.rank = dist_rank(t.dist);
    t.world = dist_size(t.dist);
    t.root = t.rank == 0;
    if (!opts->out_dir) return st_fail(err, ST_EINVAL, "tune: no output directory given");
    int rc = s_setup(&t, err);
    int64_t start = 0;
    if (!rc) rc = s_resume(&t, &start, err);
    t.ks_ckpt_step = -1;
    if (!rc && start > 0 && t.ks) rc = s_resume_kstate(&t, start, err);
    if (rc) goto done;
    out->n_layer = t.L;
    out->n_head = t.H;
    out->head_size = t.N;
    out->start_step = start;

    if (start == 0) { /* the untuned baseline, S0 = the initial state */
        rc = s_make_state(&t, err);
        if (!rc) rc = s_evaluate(&t, t.S0, &t.base, err);
        if (rc) goto done;
        json_object_set_new(t.metrics, "baseline", s_eval_json(0, &t.base));
        s_report_eval(&t, 0, &t.base);
    }

    t.call_t0 = st_mono_s();
    int64_t stop = t.steps;
    if (opts->max_steps > 0 && start + opts->max_steps < stop) stop = start + opts->max_steps;
    json_t *tl = json_object_get(t.metrics, "train_loss");
    int64_t last_ckpt = start;
    for (int64_t step = start; step < stop; step++) {
        double loss = 0, ntok = 0;
        rc = s_step(&t, step, &loss, &ntok, err);
        if (rc == ST_ECANCELLED && step > last_ckpt) {
            /* keep the work done so far: a rerun with the same out dir
             * continues from here (the cancelled step left no trace) */
            char err2[ST_ERR_LEN];
            if (s_write_checkpoint(&t, step, err2) == ST_OK)
                st_fail(err, rc, "the job was cancelled after step %lld; its checkpoint lets a rerun with the same "
                        "out dir continue from there", (long long)step);
        }
        if (rc) goto done;
        t.call_tokens += ntok;
        json_array_append_new(tl, json_real(loss));
        if (step == 0) t.train_loss_first = loss;
        t.train_loss_last = loss;
        int64_t done = step + 1;
        if (t.root && cb && cb->on_progress) {
            double el = st_mono_s() - t.call_t0 - t.call_eval_s;
            double per = el / (double)(done - start);
            cb->on_progress(cb->ctx, done, t.steps, loss, el > 0 ? t.call_tokens / el : 0, per * (double)(t.steps - done),
                            schedule_lr(&t.sched, step));
        }
        if (spec->eval_every > 0 && done % spec->eval_every == 0 && done < t.steps) {
            eval_result_t e;
            rc = s_make_state(&t, err);
            if (!rc) rc = s_evaluate(&t, t.S0, &e, err);
            if (rc) goto done;
            s_report_eval(&t, done, &e);
        }
        if ((spec->checkpoint_every > 0 && done % spec->checkpoint_every == 0 && done < t.steps) ||
            (done == stop && stop < t.steps)) {
            rc = s_write_checkpoint(&t, done, err);
            if (rc) goto done;
            last_ckpt = done;
        }
    }
    double tot_tokens, wall;
    s_totals(&t, &tot_tokens, &wall);
    out->steps = stop;
    out->tokens_per_s = wall > 0 ? tot_tokens / wall : 0;
    out->train_loss_first = t.train_loss_first;
    out->train_loss_last = t.train_loss_last;
    out->eval_loss_before = t.base.loss;
    if (stop < t.steps) goto done; /* interrupted on purpose (max_steps) */

    eval_result_t fin;
    rc = s_check_state(&t, t.steps, err);
    if (!rc) rc = s_make_state(&t, err);
    if (!rc) rc = s_evaluate(&t, t.S0, &fin, err);
    if (rc) goto done;
    s_report_eval(&t, t.steps, &fin);
    out->eval_loss_after = fin.loss;
    rc = s_write_outputs(&t, &fin, out->tokens_per_s, wall, start, out, err);
    if (!rc) rc = s_write_checkpoint(&t, t.steps, err);
    if (!rc) out->finished = 1;
done:
    if (rc) tune_result_clear(out);
    s_teardown(&t);
    return rc;
}

void tune_result_clear(tune_result_t *r)
{
    if (!r) return;
    free(r->state);
    free(r->metrics_json);
    r->state = NULL;
    r->metrics_json = NULL;
}
