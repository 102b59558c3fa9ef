/*
 * dataset.c - JSON Lines datasets: validation, chat template, tokenization,
 * loss masks, truncation or splitting, and the held-out eval split.
 *
 * All samples of a dataset share two growing arrays (token ids and their
 * trained flags); a sample is an offset and a length into them, so a dataset
 * of a million short lines is three allocations, not three million.
 *
 * The chat template is the one RWKV chat models are trained with (ChatRWKV):
 * turns are separated by a blank line, so inside a turn's content "\r\n"
 * becomes "\n", runs of blank lines collapse to one newline and the content
 * is stripped of surrounding white space; an assistant turn is rendered as
 * "Assistant:" (not trained) followed by " <content>\n\n" (trained), which
 * keeps the usual space-word tokens of the World vocabulary.
 */
#include "data/dataset.h"
#include "common/st_err.h"
#include "common/st_fs.h"
#include "common/st_rng.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define DATASET_MAX_FILE_BYTES ((size_t)4 << 30)

typedef struct {
    int64_t off;   /* first token in the shared arrays */
    int n;         /* tokens */
    int line;      /* 1-based source line */
    int piece;     /* piece of that line */
} s_sample_t;

struct dataset {
    int32_t *tokens;       /* (n_tok) ids of every sample, back to back */
    uint8_t *train;        /* (n_tok) 1 where that token is a trained target */
    int64_t n_tok;         /* used */
    int64_t cap_tok;       /* allocated */
    s_sample_t *samples;   /* (n_samples) */
    int n_samples;         /* used */
    int cap_samples;       /* allocated */
    dataset_stats_t stats; /* counts and file hash */
};

static dataset_t *s_new(void)
{
    return calloc(1, sizeof(dataset_t));
}

void dataset_destroy(dataset_t **self_p)
{
    if (!self_p || !*self_p) return;
    dataset_t *self = *self_p;
    free(self->tokens);
    free(self->train);
    free(self->samples);
    free(self);
    *self_p = NULL;
}

/* Appends one sample; the caller has checked it has a trained target. */
static int s_push(dataset_t *self, const int32_t *ids, const uint8_t *train, int n, int line, int piece)
{
    if (self->n_tok + n > self->cap_tok) {
        int64_t cap = self->cap_tok ? self->cap_tok : 4096;
        while (cap < self->n_tok + n) cap *= 2;
        int32_t *t = realloc(self->tokens, (size_t)cap * sizeof *t);
        if (!t) return ST_ENOMEM;
        self->tokens = t;
        uint8_t *m = realloc(self->train, (size_t)cap);
        if (!m) return ST_ENOMEM;
        self->train = m;
        self->cap_tok = cap;
    }
    if (self->n_samples == self->cap_samples) {
        if (self->cap_samples > (1 << 29)) return ST_ENOMEM;
        int cap = self->cap_samples ? self->cap_samples * 2 : 256;
        s_sample_t *s = realloc(self->samples, (size_t)cap * sizeof *s);
        if (!s) return ST_ENOMEM;
        self->samples = s;
        self->cap_samples = cap;
    }
    memcpy(self->tokens + self->n_tok, ids, (size_t)n * sizeof *ids);
    memcpy(self->train + self->n_tok, train, (size_t)n);
    s_sample_t *s = &self->samples[self->n_samples++];
    s->off = self->n_tok;
    s->n = n;
    s->line = line;
    s->piece = piece;
    self->n_tok += n;
    self->stats.samples++;
    self->stats.tokens += n;
    for (int i = 0; i < n; i++) self->stats.targets += train[i];
    if (n > self->stats.max_len) self->stats.max_len = n;
    return ST_OK;
}

/* ---- one line to tokens --------------------------------------------------------- */

/* A growing text buffer and a growing (ids, trained) sequence. */
typedef struct {
    char *text;
    size_t len, cap;
    int32_t *ids;
    uint8_t *train;
    size_t n, n_cap;
} s_build_t;

static int s_text_add(s_build_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *t = realloc(b->text, cap);
        if (!t) return ST_ENOMEM;
        b->text = t;
        b->cap = cap;
    }
    memcpy(b->text + b->len, s, n);
    b->len += n;
    b->text[b->len] = 0;
    return ST_OK;
}

/* Chat content as the template wants it: CRLF -> LF, blank-line runs -> one
 * newline, surrounding white space stripped. */
static int s_text_add_content(s_build_t *b, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    while (n > i && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    for (; i < n; i++) {
        char ch = s[i];
        if (ch == '\r' && i + 1 < n && s[i + 1] == '\n') continue;
        if (ch == '\n' && b->len > 0 && b->text[b->len - 1] == '\n') continue;
        if (s_text_add(b, &ch, 1) != ST_OK) return ST_ENOMEM;
    }
    return ST_OK;
}

/* Tokenizes the pending text as one segment with the given trained flag. */
static int s_flush(s_build_t *b, const tokenizer_t *tok, int trained, char *err)
{
    if (b->len == 0) return ST_OK;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenizer_encode(tok, b->text, b->len, &ids, &n, err);
    if (rc != ST_OK) return rc;
    if (b->n + n > b->n_cap) {
        size_t cap = b->n_cap ? b->n_cap : 256;
        while (cap < b->n + n) cap *= 2;
        int32_t *t = realloc(b->ids, cap * sizeof *t);
        uint8_t *m = t ? realloc(b->train, cap) : NULL;
        if (t) b->ids = t;
        if (!t || !m) {
            free(ids);
            return st_fail(err, ST_ENOMEM, "out of memory");
        }
        b->train = m;
        b->n_cap = cap;
    }
    memcpy(b->ids + b->n, ids, n * sizeof *ids);
    memset(b->train + b->n, trained ? 1 : 0, n);
    b->n += n;
    b->len = 0;
    free(ids);
    return ST_OK;
}

/* A string field: NULL with *why set when absent, mistyped or (if !allow_empty) empty. */
static const char *s_field(const json_t *obj, const char *key, int allow_empty, size_t *len, char *why, size_t wn,
                           const char *shown_key)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        snprintf(why, wn, "'%s' is missing", shown_key);
        return NULL;
    }
    if (!json_is_string(v)) {
        snprintf(why, wn, "'%s' must be a string", shown_key);
        return NULL;
    }
    *len = json_string_length(v);
    if (*len == 0 && !allow_empty) {
        snprintf(why, wn, "'%s' is empty", shown_key);
        return NULL;
    }
    return json_string_value(v);
}

/* Renders one parsed line into b's ids and flags, or fills why. */
static int s_render(const json_t *obj, const tokenizer_t *tok, s_build_t *b, char *why, size_t wn, char *err)
{
    int has_text = json_object_get(obj, "text") != NULL;
    int has_pc = json_object_get(obj, "prompt") || json_object_get(obj, "completion");
    int has_msg = json_object_get(obj, "messages") != NULL;
    if (has_text + has_pc + has_msg != 1) {
        snprintf(why, wn, "%s", has_text + has_pc + has_msg == 0
                                     ? "expected \"text\", \"prompt\" and \"completion\", or \"messages\""
                                     : "give only one of \"text\", \"prompt\"/\"completion\" and \"messages\"");
        return ST_EFORMAT;
    }
    size_t n = 0;
    const char *s;
    int rc;
    if (has_text) {
        if (!(s = s_field(obj, "text", 0, &n, why, wn, "text"))) return ST_EFORMAT;
        if ((rc = s_text_add(b, s, n)) != ST_OK || (rc = s_flush(b, tok, 1, err)) != ST_OK) return rc;
        return ST_OK;
    }
    if (has_pc) {
        if (!(s = s_field(obj, "prompt", 1, &n, why, wn, "prompt"))) return ST_EFORMAT;
        if ((rc = s_text_add(b, s, n)) != ST_OK || (rc = s_flush(b, tok, 0, err)) != ST_OK) return rc;
        if (!(s = s_field(obj, "completion", 0, &n, why, wn, "completion"))) return ST_EFORMAT;
        if ((rc = s_text_add(b, s, n)) != ST_OK || (rc = s_flush(b, tok, 1, err)) != ST_OK) return rc;
        return ST_OK;
    }
    json_t *msgs = json_object_get(obj, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        snprintf(why, wn, "'messages' must be a non-empty array");
        return ST_EFORMAT;
    }
    int n_assistant = 0;
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        char key[64];
        if (!json_is_object(m)) {
            snprintf(why, wn, "messages[%zu] must be an object with \"role\" and \"content\"", i);
            return ST_EFORMAT;
        }
        snprintf(key, sizeof key, "messages[%zu].role", i);
        const char *role = s_field(m, "role", 0, &n, why, wn, key);
        if (!role) return ST_EFORMAT;
        snprintf(key, sizeof key, "messages[%zu].content", i);
        const char *content = s_field(m, "content", 0, &n, why, wn, key);
        if (!content) return ST_EFORMAT;
        if (strcmp(role, "assistant") == 0) {
            if ((rc = s_text_add(b, "Assistant:", 10)) != ST_OK || (rc = s_flush(b, tok, 0, err)) != ST_OK ||
                (rc = s_text_add(b, " ", 1)) != ST_OK || (rc = s_text_add_content(b, content, n)) != ST_OK ||
                (rc = s_text_add(b, "\n\n", 2)) != ST_OK || (rc = s_flush(b, tok, 1, err)) != ST_OK)
                return rc;
            n_assistant++;
        } else if (strcmp(role, "user") == 0 || strcmp(role, "system") == 0) {
            const char *prefix = role[0] == 'u' ? "User: " : "System: ";
            if ((rc = s_text_add(b, prefix, strlen(prefix))) != ST_OK ||
                (rc = s_text_add_content(b, content, n)) != ST_OK || (rc = s_text_add(b, "\n\n", 2)) != ST_OK)
                return rc;
        } else {
            snprintf(why, wn, "messages[%zu].role must be \"system\", \"user\" or \"assistant\", got \"%.32s\"", i,
                     role);
            return ST_EFORMAT;
        }
    }
    if (n_assistant == 0) {
        snprintf(why, wn, "'messages' has no assistant turn to train on");
        return ST_EFORMAT;
    }
    return s_flush(b, tok, 0, err);
}

/* Cuts or splits one rendered line into samples of at most ctx_len + 1 tokens. */
static int s_add_line(dataset_t *self, s_build_t *b, int ctx_len, job_long_t mode, int line)
{
    size_t n = b->n;
    size_t max = (size_t)ctx_len + 1;
    b->train[0] = 0; /* nothing precedes the first token */
    /* tokens after the last trained one change no loss (the model is causal):
     * a chat ending in a user turn does not pay for it */
    while (n > 0 && !b->train[n - 1]) n--;
    if (n == 0) {
        self->stats.dropped++;
        return ST_OK;
    }
    if (n > max) {
        if (mode == JOB_TRUNCATE) {
            n = max;
            self->stats.truncated++;
        } else {
            self->stats.split++;
        }
    }
    int piece = 0;
    /* pieces start every ctx_len tokens: each repeats the previous piece's
     * last token as its first input, so every target is trained once */
    for (size_t start = 0; start + 1 < n; start += (size_t)ctx_len) {
        size_t len = n - start < max ? n - start : max;
        uint8_t first = b->train[start];
        b->train[start] = 0;
        int any = 0;
        for (size_t k = 1; k < len; k++) any |= b->train[start + k];
        int rc = ST_OK;
        if (any) rc = s_push(self, b->ids + start, b->train + start, (int)len, line, piece);
        else self->stats.dropped++;
        b->train[start] = first;
        if (rc != ST_OK) return rc;
        piece++;
        if (mode == JOB_TRUNCATE) break;
    }
    return ST_OK;
}

int dataset_load_buffer(const char *name, const char *data, size_t len, const tokenizer_t *tok, int ctx_len,
                        job_long_t mode, dataset_t **out, char *err)
{
    *out = NULL;
    if (ctx_len < 1) return st_fail(err, ST_EINVAL, "ctx_len must be positive, got %d", ctx_len);
    dataset_t *self = s_new();
    s_build_t b = {0};
    int rc = ST_OK;
    if (!self) return st_fail(err, ST_ENOMEM, "out of memory");
    st_sha256_hex(data, len, self->stats.sha256);
    const char *p = data, *stop = data + len;
    long lineno = 0;
    while (p < stop) {
        const char *nl = memchr(p, '\n', (size_t)(stop - p));
        const char *line = p, *eol = nl ? nl : stop;
        p = nl ? nl + 1 : stop;
        lineno++;
        if (lineno > (1L << 30)) {
            rc = st_fail(err, ST_EFORMAT, "data '%s': more than 2^30 lines", name);
            goto fail;
        }
        const char *q = line;
        while (q < eol && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        if (q == eol) continue; /* blank line */
        self->stats.lines++;
        json_error_t jerr;
        json_t *obj = json_loadb(line, (size_t)(eol - line), JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
        if (!obj) {
            rc = st_fail(err, ST_EFORMAT, "data '%s' line %ld: invalid JSON at column %d: %s", name, lineno,
                         jerr.column, jerr.text);
            goto fail;
        }
        char why[256] = "";
        b.n = 0;
        b.len = 0;
        if (!json_is_object(obj)) {
            snprintf(why, sizeof why, "expected a JSON object");
            rc = ST_EFORMAT;
        } else {
            rc = s_render(obj, tok, &b, why, sizeof why, err);
        }
        json_decref(obj);
        if (rc == ST_EFORMAT && why[0]) {
            rc = st_fail(err, ST_EFORMAT, "data '%s' line %ld: %s", name, lineno, why);
            goto fail;
        }
        if (rc == ST_ENOMEM) {
            st_fail(err, rc, "data '%s' line %ld: out of memory", name, lineno);
            goto fail;
        }
        if (rc != ST_OK) {
            st_wrap(err, rc, "data '%s' line %ld: ", name, lineno);
            goto fail;
        }
        if (b.n == 0) {
            rc = st_fail(err, ST_EFORMAT, "data '%s' line %ld: the sample has no tokens", name, lineno);
            goto fail;
        }
        rc = s_add_line(self, &b, ctx_len, mode, (int)lineno);
        if (rc != ST_OK) {
            st_fail(err, rc, "data '%s' line %ld: out of memory", name, lineno);
            goto fail;
        }
    }
    free(b.text);
    free(b.ids);
    free(b.train);
    *out = self;
    return ST_OK;
fail:
    free(b.text);
    free(b.ids);
    free(b.train);
    dataset_destroy(&self);
    return rc;
}

int dataset_load(const char *path, const tokenizer_t *tok, int ctx_len, job_long_t mode, dataset_t **out,
                 char *err)
{
    *out = NULL;
    char *data = NULL;
    size_t len = 0;
    int rc = st_read_file(path, DATASET_MAX_FILE_BYTES, &data, &len, err);
    if (rc != ST_OK) return st_wrap(err, rc, "data: ");
    rc = dataset_load_buffer(path, data, len, tok, ctx_len, mode, out, err);
    free(data);
    return rc;
}

/* ---- held-out split -------------------------------------------------------------- */

typedef struct {
    uint64_t h;
    int line;
} s_line_hash_t;

static int s_cmp_hash(const void *a, const void *b)
{
    const s_line_hash_t *x = a, *y = b;
    if (x->h != y->h) return x->h < y->h ? -1 : 1;
    return x->line < y->line ? -1 : x->line > y->line;
}

static int s_cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return x < y ? -1 : x > y;
}

int dataset_split(const dataset_t *all, double eval_fraction, uint64_t seed, dataset_t **train_out,
                  dataset_t **eval_out, char *err)
{
    *train_out = *eval_out = NULL;
    /* distinct source lines, in order (samples are stored in line order) */
    int n_lines = 0;
    for (int i = 0; i < all->n_samples; i++)
        if (i == 0 || all->samples[i].line != all->samples[i - 1].line) n_lines++;
    if (n_lines < 2)
        return st_fail(err, ST_EINVAL,
                       "train data has %d usable line(s): too few to hold out an eval share; give an 'eval' file",
                       n_lines);
    if (!(eval_fraction > 0 && eval_fraction < 1))
        return st_fail(err, ST_EINVAL, "eval_fraction must be in (0, 1), got %g", eval_fraction);
    long n_eval = (long)(eval_fraction * n_lines + 0.5);
    if (n_eval < 1) n_eval = 1;
    if (n_eval > n_lines - 1) n_eval = n_lines - 1;

    s_line_hash_t *lh = malloc((size_t)n_lines * sizeof *lh);
    int *eval_lines = malloc((size_t)n_eval * sizeof *eval_lines);
    dataset_t *tr = s_new(), *ev = s_new();
    int rc = ST_OK;
    if (!lh || !eval_lines || !tr || !ev) {
        rc = st_fail(err, ST_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0, k = 0; i < all->n_samples; i++) {
        if (i > 0 && all->samples[i].line == all->samples[i - 1].line) continue;
        lh[k].line = all->samples[i].line;
        lh[k].h = st_mix64(st_mix64(seed) ^ (uint64_t)lh[k].line);
        k++;
    }
    qsort(lh, (size_t)n_lines, sizeof *lh, s_cmp_hash);
    for (long k = 0; k < n_eval; k++) eval_lines[k] = lh[k].line;
    qsort(eval_lines, (size_t)n_eval, sizeof *eval_lines, s_cmp_int);
    for (int i = 0; i < all->n_samples && rc == ST_OK; i++) {
        const s_sample_t *s = &all->samples[i];
        int is_eval = bsearch(&s->line, eval_lines, (size_t)n_eval, sizeof *eval_lines, s_cmp_int) != NULL;
        dataset_t *to = is_eval ? ev : tr;
        if (i == 0 || s->line != all->samples[i - 1].line) to->stats.lines++;
        if (s_push(to, all->tokens + s->off, all->train + s->off, s->n, s->line, s->piece) != ST_OK)
            rc = st_fail(err, ST_ENOMEM, "out of memory");
    }
    if (rc == ST_OK) {
        dataset_t *sides[2] = {tr, ev};
        for (int k = 0; k < 2; k++) {
            memcpy(sides[k]->stats.sha256, all->stats.sha256, sizeof all->stats.sha256);
            sides[k]->stats.truncated = all->stats.truncated;
            sides[k]->stats.split = all->stats.split;
            sides[k]->stats.dropped = all->stats.dropped;
        }
    }
done:
    free(lh);
    free(eval_lines);
    if (rc != ST_OK) {
        dataset_destroy(&tr);
        dataset_destroy(&ev);
        return rc;
    }
    *train_out = tr;
    *eval_out = ev;
    return ST_OK;
}

int dataset_load_job(const jobspec_t *spec, const tokenizer_t *tok, dataset_t **train_out, dataset_t **eval_out,
                     char *err)
{
    *train_out = *eval_out = NULL;
    dataset_t *all = NULL;
    int rc = dataset_load(spec->train, tok, spec->ctx_len, spec->truncate, &all, err);
    if (rc != ST_OK) return rc;
    if (spec->eval) {
        rc = dataset_load(spec->eval, tok, spec->ctx_len, spec->truncate, eval_out, err);
        if (rc != ST_OK) {
            dataset_destroy(&all);
            return rc;
        }
        *train_out = all;
        return ST_OK;
    }
    rc = dataset_split(all, spec->eval_fraction, spec->seed, train_out, eval_out, err);
    if (rc != ST_OK) st_wrap(err, rc, "data '%s': ", spec->train);
    dataset_destroy(&all);
    return rc;
}

/* ---- access ------------------------------------------------------------------------- */

int dataset_count(const dataset_t *self)
{
    return self->n_samples;
}

dataset_sample_t dataset_get(const dataset_t *self, int i)
{
    const s_sample_t *s = &self->samples[i];
    dataset_sample_t out = {self->tokens + s->off, self->train + s->off, s->n, s->line, s->piece};
    return out;
}

const dataset_stats_t *dataset_stats(const dataset_t *self)
{
    return &self->stats;
}
