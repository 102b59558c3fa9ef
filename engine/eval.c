/*
 * eval.c - eval loss, perplexity, accuracy and exact match (see eval.h).
 *
 * Loss and accuracy come from engine_run in forward-only mode (dstate0 NULL),
 * micro-batch by micro-batch, each padded to its longest sample with target
 * -1 on the padding, so that padding changes nothing. Exact match runs the
 * model one token at a time (rwkv_rnn_*), which is how an inference client
 * would use the tuned state: it also checks the state end to end in the
 * other execution mode.
 */
#include "engine/eval.h"

#include "common/st_err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Prompt length of a sample that qualifies for exact match, else 0. */
static int s_prompt_len(const dataset_sample_t *s)
{
    int p = 1;
    while (p < s->n && !s->train[p]) p++;
    if (p >= s->n || p < 2) return 0;
    for (int i = p; i < s->n; i++)
        if (!s->train[i]) return 0;
    return p;
}

int eval_generate(const rwkv_model_t *model, const float *state0, const int32_t *prompt, int n_prompt,
                  int max_new, int32_t *out, int *n_out, char *err)
{
    return eval_generate_ks(model, state0, NULL, prompt, n_prompt, max_new, out, n_out, err);
}

int eval_generate_ks(const rwkv_model_t *model, const float *state0, const engine_kstate_t *ks,
                     const int32_t *prompt, int n_prompt, int max_new, int32_t *out, int *n_out, char *err)
{
    *n_out = 0;
    if (n_prompt < 1) return st_fail(err, ST_EINVAL, "generation needs at least one prompt token");
    int V = model->cfg.vocab;
    float *logits = malloc(sizeof(float) * (size_t)V);
    if (!logits) return st_fail(err, ST_ENOMEM, "out of memory for %d logits", V);
    rwkv_rnn_t *rnn = rwkv_rnn_new(model, state0, err);
    int rc = rnn ? ST_OK : ST_ENOMEM;
    if (rc == ST_OK && ks) rc = rwkv_rnn_set_kstate(rnn, ks, err);
    for (int i = 0; rc == ST_OK && i < n_prompt; i++)
        rc = rwkv_rnn_step(rnn, prompt[i], i == n_prompt - 1 ? logits : NULL, err);
    for (int g = 0; rc == ST_OK && g < max_new; g++) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best]) best = v;
        out[(*n_out)++] = best;
        if (g + 1 < max_new) rc = rwkv_rnn_step(rnn, best, logits, err);
    }
    rwkv_rnn_destroy(&rnn);
    free(logits);
    return rc;
}

/* Exact match of one sample: generate, decode, compare with the completion. */
static int s_exact(const rwkv_model_t *model, const tokenizer_t *tok, const float *state0,
                   const engine_kstate_t *ks, const dataset_sample_t *s, int p, int *hit, char *err)
{
    int ncomp = s->n - p;
    char *want = NULL, *got = NULL;
    size_t want_len = 0, got_len = 0;
    int32_t *gen = malloc(sizeof(int32_t) * (size_t)ncomp);
    if (!gen) return st_fail(err, ST_ENOMEM, "out of memory for generation");
    int n = 0;
    int rc = tokenizer_decode(tok, s->tokens + p, (size_t)ncomp, &want, &want_len, err);
    if (rc == ST_OK) rc = eval_generate_ks(model, state0, ks, s->tokens, p, ncomp, gen, &n, err);
    if (rc == ST_OK) rc = tokenizer_decode(tok, gen, (size_t)n, &got, &got_len, err);
    /* A different tokenisation of the same text still counts; text past the
     * completion's length does not (the model did not stop). */
    if (rc == ST_OK) *hit = got_len == want_len && memcmp(got, want, want_len) == 0;
    free(want);
    free(got);
    free(gen);
    return rc;
}

int eval_run(engine_t *engine, const rwkv_model_t *model, const tokenizer_t *tok, const dataset_t *ds,
             const float *state0, int micro_batch, int rank, int world, int generate, eval_sums_t *sums,
             char *err)
{
    memset(sums, 0, sizeof *sums);
    int count = dataset_count(ds);
    if (micro_batch < 1 || world < 1 || rank < 0 || rank >= world)
        return st_fail(err, ST_EINVAL, "eval: bad split (micro_batch %d, rank %d of %d)", micro_batch, rank, world);
    int maxlen = 2;
    for (int i = rank; i < count; i += world) {
        dataset_sample_t s = dataset_get(ds, i);
        if (s.n > maxlen) maxlen = s.n;
    }
    size_t cap = (size_t)micro_batch * (size_t)(maxlen - 1);
    int32_t *tokens = malloc(sizeof(int32_t) * cap), *targets = malloc(sizeof(int32_t) * cap);
    if (!tokens || !targets) {
        free(tokens);
        free(targets);
        return st_fail(err, ST_ENOMEM, "eval: out of memory for a %d x %d batch", micro_batch, maxlen - 1);
    }
    int rc = ST_OK;
    int i = rank;
    while (rc == ST_OK && i < count) {
        /* gather up to micro_batch samples of this rank's share */
        int idx[64], B = 0, T = 1;
        int mb = micro_batch < 64 ? micro_batch : 64;
        for (; B < mb && i < count; i += world) {
            idx[B++] = i;
            dataset_sample_t s = dataset_get(ds, i);
            if (s.n - 1 > T) T = s.n - 1;
        }
        for (int b = 0; b < B; b++) {
            dataset_sample_t s = dataset_get(ds, idx[b]);
            for (int t = 0; t < T; t++) {
                int in = t < s.n - 1;
                tokens[b * T + t] = in ? s.tokens[t] : 0;
                targets[b * T + t] = in && s.train[t + 1] ? s.tokens[t + 1] : -1;
            }
        }
        engine_batch_t batch = {.tokens = tokens, .targets = targets, .B = B, .T = T, .state0 = state0};
        rc = engine_run(engine, &batch, err);
        if (rc) break;
        sums->loss_sum += batch.loss_sum;
        sums->n_targets += (double)batch.n_targets;
        sums->n_correct += (double)batch.n_correct;
        sums->n_samples += B;
    }
    free(tokens);
    free(targets);
    if (rc || !generate) return rc;

    /* exact match: this rank's share of the first EVAL_MAX_GENERATE
     * qualifying samples, so the set generated is the same for any world */
    int qualified = 0;
    for (int j = 0; rc == ST_OK && j < count && qualified < EVAL_MAX_GENERATE; j++) {
        dataset_sample_t s = dataset_get(ds, j);
        int p = s_prompt_len(&s);
        if (!p) continue;
        if (qualified++ % world != rank) continue;
        int hit = 0;
        rc = s_exact(model, tok, state0, engine_kstate(engine), &s, p, &hit, err);
        sums->exact_total += 1;
        sums->exact_hits += hit;
    }
    return rc;
}

void eval_finish(const eval_sums_t *sums, eval_result_t *out)
{
    memset(out, 0, sizeof *out);
    out->n_targets = (int64_t)sums->n_targets;
    out->n_samples = (int64_t)sums->n_samples;
    out->n_exact = (int64_t)sums->exact_total;
    out->loss = sums->n_targets > 0 ? sums->loss_sum / sums->n_targets : NAN;
    out->perplexity = exp(out->loss);
    out->accuracy = sums->n_targets > 0 ? sums->n_correct / sums->n_targets : NAN;
    out->exact_match = sums->exact_total > 0 ? sums->exact_hits / sums->exact_total : NAN;
}
