/*
 * batcher.c - deterministic, length-bucketed batches and their rank slices
 * (see batcher.h for the order; this file is its implementation).
 *
 * The epoch's global-batch order is rebuilt from (seed, epoch) whenever the
 * epoch changes or on seek, so a saved position is two integers and resuming
 * needs no saved permutation. It costs O(N log N) once an epoch.
 *
 * The PRNG is xoshiro256** (Blackman and Vigna) seeded through splitmix64,
 * with Lemire's unbiased bounded draw: rand() is neither portable nor
 * reproducible across libcs, and results must not depend on the machine.
 */
#include "data/batcher.h"
#include "common/st_err.h"
#include "common/st_rng.h"

#include <stdlib.h>
#include <string.h>

struct batcher {
    const dataset_t *ds;   /* borrowed */
    int eval;              /* 1: eval iteration */
    int global_batch;      /* G */
    int micro_batch;       /* samples per micro-batch */
    int ctx_len;           /* largest T */
    uint64_t seed;
    int rank, world;
    int n;                 /* samples in ds */
    int64_t steps_per_epoch;
    int *order;            /* (steps_per_epoch * G) training: the epoch's samples, batch by batch;
                              eval: this rank's slice */
    int n_order;           /* entries in order (eval: slice length) */
    int64_t order_epoch;   /* epoch order was built for, -1 = none */
    batcher_pos_t pos;     /* next batch (eval: pos.index is the next slice offset) */
    int *batch_perm;       /* (steps_per_epoch) scratch for the batch shuffle */
    int *tmp;              /* (steps_per_epoch * G) scratch */
    micro_batch_t *micro;  /* (max_micro) */
    int max_micro;         /* micro-batches of one rank's slice */
    int32_t *tok_buf;      /* (max_micro * micro_batch * ctx_len) */
    int32_t *tgt_buf;      /* same */
    int *row_buf;          /* (max_micro * micro_batch) */
    int64_t eval_targets;  /* eval: targets in the slice */
};

/* ---- PRNG -------------------------------------------------------------------------- */

typedef struct {
    uint64_t s[4];
} s_rng_t;

static void s_rng_seed(s_rng_t *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ull);
    for (int i = 0; i < 4; i++) r->s[i] = st_splitmix64(&x);
}

static uint64_t s_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t s_rng_next(s_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t out = s_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s_rotl(s[3], 45);
    return out;
}

/* Uniform in [0, bound), unbiased (Lemire's multiply-and-reject). */
static uint32_t s_rng_below(s_rng_t *r, uint32_t bound)
{
    uint64_t m = (uint64_t)(uint32_t)(s_rng_next(r) >> 32) * bound;
    uint32_t low = (uint32_t)m;
    if (low < bound) {
        uint32_t thresh = (uint32_t)(-bound) % bound;
        while (low < thresh) {
            m = (uint64_t)(uint32_t)(s_rng_next(r) >> 32) * bound;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

static void s_shuffle(s_rng_t *r, int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)s_rng_below(r, (uint32_t)i + 1);
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ---- epoch order --------------------------------------------------------------------- */

/* Sorting a window by length; ties keep their shuffled order (index in the
 * window breaks them), so the sort is stable and deterministic. */
typedef struct {
    int len;
    int pos;
    int sample;
} s_key_t;

static int s_cmp_key(const void *a, const void *b)
{
    const s_key_t *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int s_build_epoch(batcher_t *self, int64_t epoch)
{
    int G = self->global_batch;
    int total = (int)(self->steps_per_epoch * G);
    s_rng_t rng;
    s_rng_seed(&rng, self->seed, (uint64_t)epoch * 2 + 1);
    for (int i = 0; i < self->n; i++) self->tmp[i] = i;
    s_shuffle(&rng, self->tmp, self->n);
    for (int i = self->n; i < total; i++) self->tmp[i] = self->tmp[(i - self->n) % self->n];

    int wsize = BATCHER_WINDOW * G;
    s_key_t *keys = malloc((size_t)(total < wsize ? total : wsize) * sizeof *keys);
    if (!keys) return ST_ENOMEM;
    for (int w = 0; w < total; w += wsize) {
        int m = total - w < wsize ? total - w : wsize;
        for (int i = 0; i < m; i++) {
            keys[i].sample = self->tmp[w + i];
            keys[i].len = dataset_get(self->ds, keys[i].sample).n;
            keys[i].pos = i;
        }
        qsort(keys, (size_t)m, sizeof *keys, s_cmp_key);
        for (int i = 0; i < m; i++) self->tmp[w + i] = keys[i].sample;
    }
    free(keys);

    s_rng_seed(&rng, self->seed, (uint64_t)epoch * 2 + 2);
    for (int64_t b = 0; b < self->steps_per_epoch; b++) self->batch_perm[b] = (int)b;
    s_shuffle(&rng, self->batch_perm, (int)self->steps_per_epoch);
    for (int64_t b = 0; b < self->steps_per_epoch; b++)
        memcpy(self->order + b * G, self->tmp + (int64_t)self->batch_perm[b] * G, (size_t)G * sizeof(int));
    self->order_epoch = epoch;
    return ST_OK;
}

/* ---- construction ---------------------------------------------------------------------- */

static batcher_t *s_alloc(const dataset_t *ds, int micro_batch, int ctx_len, int rank, int world, int slice,
                          char *err)
{
    batcher_t *self = calloc(1, sizeof *self);
    if (!self) {
        st_fail(err, ST_ENOMEM, "out of memory");
        return NULL;
    }
    self->ds = ds;
    self->micro_batch = micro_batch;
    self->ctx_len = ctx_len;
    self->rank = rank;
    self->world = world;
    self->n = dataset_count(ds);
    self->order_epoch = -1;
    self->max_micro = slice > 0 ? (slice + micro_batch - 1) / micro_batch : 1;
    size_t cells = (size_t)self->max_micro * (size_t)micro_batch * (size_t)ctx_len;
    self->micro = calloc((size_t)self->max_micro, sizeof *self->micro);
    self->tok_buf = malloc(cells * sizeof *self->tok_buf);
    self->tgt_buf = malloc(cells * sizeof *self->tgt_buf);
    self->row_buf = malloc((size_t)self->max_micro * (size_t)micro_batch * sizeof *self->row_buf);
    if (!self->micro || !self->tok_buf || !self->tgt_buf || !self->row_buf) {
        st_fail(err, ST_ENOMEM, "out of memory for %zu batch cells", cells);
        batcher_destroy(&self);
        return NULL;
    }
    return self;
}

static int s_check_args(const dataset_t *ds, int micro_batch, int ctx_len, int rank, int world, char *err)
{
    if (micro_batch < 1 || ctx_len < 1 || world < 1 || rank < 0 || rank >= world)
        return st_fail(err, ST_EINVAL, "batcher: bad arguments (micro_batch %d, ctx_len %d, rank %d of %d)",
                       micro_batch, ctx_len, rank, world);
    for (int i = 0; i < dataset_count(ds); i++)
        if (dataset_get(ds, i).n > ctx_len + 1)
            return st_fail(err, ST_EINVAL, "batcher: sample %d has %d tokens, more than ctx_len %d + 1", i,
                           dataset_get(ds, i).n, ctx_len);
    return ST_OK;
}

batcher_t *batcher_new(const dataset_t *ds, int global_batch, int micro_batch, int ctx_len, uint64_t seed,
                       int rank, int world, char *err)
{
    if (s_check_args(ds, micro_batch, ctx_len, rank, world, err) != ST_OK) return NULL;
    if (global_batch < 1 || global_batch % world != 0) {
        st_fail(err, ST_EINVAL, "global batch %d cannot be shared evenly by %d ranks", global_batch, world);
        return NULL;
    }
    int n = dataset_count(ds);
    if (n < 1) {
        st_fail(err, ST_EINVAL, "the training set has no samples");
        return NULL;
    }
    int64_t steps = ((int64_t)n + global_batch - 1) / global_batch;
    if (steps * global_batch > (1 << 30)) {
        st_fail(err, ST_EINVAL, "the training set is too large for one epoch order (%d samples)", n);
        return NULL;
    }
    batcher_t *self = s_alloc(ds, micro_batch, ctx_len, rank, world, global_batch / world, err);
    if (!self) return NULL;
    self->global_batch = global_batch;
    self->seed = seed;
    self->steps_per_epoch = steps;
    size_t total = (size_t)(steps * global_batch);
    self->order = malloc(total * sizeof *self->order);
    self->tmp = malloc(total * sizeof *self->tmp);
    self->batch_perm = malloc((size_t)steps * sizeof *self->batch_perm);
    if (!self->order || !self->tmp || !self->batch_perm) {
        st_fail(err, ST_ENOMEM, "out of memory");
        batcher_destroy(&self);
    }
    return self;
}

static int s_cmp_len_index(const void *a, const void *b, void *ds)
{
    int x = *(const int *)a, y = *(const int *)b;
    int lx = dataset_get(ds, x).n, ly = dataset_get(ds, y).n;
    if (lx != ly) return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

batcher_t *batcher_new_eval(const dataset_t *ds, int micro_batch, int ctx_len, int rank, int world, char *err)
{
    if (s_check_args(ds, micro_batch, ctx_len, rank, world, err) != ST_OK) return NULL;
    int n = dataset_count(ds);
    int lo = (int)((int64_t)n * rank / world), hi = (int)((int64_t)n * (rank + 1) / world);
    batcher_t *self = s_alloc(ds, micro_batch, ctx_len, rank, world, micro_batch, err);
    if (!self) return NULL;
    self->eval = 1;
    self->n_order = hi - lo;
    self->order = malloc((size_t)(hi - lo + 1) * sizeof *self->order);
    if (!self->order) {
        st_fail(err, ST_ENOMEM, "out of memory");
        batcher_destroy(&self);
        return NULL;
    }
    for (int i = lo; i < hi; i++) {
        self->order[i - lo] = i;
        dataset_sample_t s = dataset_get(ds, i);
        for (int t = 1; t < s.n; t++) self->eval_targets += s.train[t];
    }
    /* by length, so that a micro-batch pads little; ties by index keep it fixed */
    qsort_r(self->order, (size_t)self->n_order, sizeof *self->order, s_cmp_len_index, (void *)ds);
    return self;
}

void batcher_destroy(batcher_t **self_p)
{
    if (!self_p || !*self_p) return;
    batcher_t *self = *self_p;
    free(self->order);
    free(self->tmp);
    free(self->batch_perm);
    free(self->micro);
    free(self->tok_buf);
    free(self->tgt_buf);
    free(self->row_buf);
    free(self);
    *self_p = NULL;
}

/* ---- batches ---------------------------------------------------------------------------- */

/* Fills micro-batch k from the samples rows[0..B). */
static int64_t s_fill(batcher_t *self, int k, const int *rows, int B)
{
    micro_batch_t *m = &self->micro[k];
    size_t base = (size_t)k * (size_t)self->micro_batch;
    int T = 1;
    for (int b = 0; b < B; b++) {
        int n = dataset_get(self->ds, rows[b]).n - 1;
        if (n > T) T = n;
    }
    m->B = B;
    m->T = T;
    m->tokens = self->tok_buf + base * (size_t)self->ctx_len;
    m->targets = self->tgt_buf + base * (size_t)self->ctx_len;
    m->sample = self->row_buf + base;
    m->n_targets = 0;
    for (int b = 0; b < B; b++) {
        dataset_sample_t s = dataset_get(self->ds, rows[b]);
        int32_t *tok = m->tokens + (size_t)b * (size_t)T;
        int32_t *tgt = m->targets + (size_t)b * (size_t)T;
        m->sample[b] = rows[b];
        for (int t = 0; t < T; t++) {
            if (t < s.n - 1) {
                tok[t] = s.tokens[t];
                tgt[t] = s.train[t + 1] ? s.tokens[t + 1] : -1;
                m->n_targets += s.train[t + 1];
            } else {
                tok[t] = 0;
                tgt[t] = -1;
            }
        }
    }
    return m->n_targets;
}

static int64_t s_targets_of(const dataset_t *ds, int i)
{
    dataset_sample_t s = dataset_get(ds, i);
    int64_t c = 0;
    for (int t = 1; t < s.n; t++) c += s.train[t];
    return c;
}

int batcher_next(batcher_t *self, batch_t *out, char *err)
{
    memset(out, 0, sizeof *out);
    if (self->eval) {
        out->micro = self->micro;
        out->index = self->pos.index;
        if (self->pos.index >= self->n_order) return ST_OK; /* exhausted */
        int B = self->n_order - (int)self->pos.index;
        if (B > self->micro_batch) B = self->micro_batch;
        s_fill(self, 0, self->order + self->pos.index, B);
        out->n_micro = 1;
        self->pos.index += B;
        return ST_OK;
    }
    if (self->order_epoch != self->pos.epoch && s_build_epoch(self, self->pos.epoch) != ST_OK)
        return st_fail(err, ST_ENOMEM, "out of memory building the epoch order");
    int G = self->global_batch;
    const int *batch = self->order + self->pos.index * G;
    for (int i = 0; i < G; i++) out->global_targets += s_targets_of(self->ds, batch[i]);
    int slice = G / self->world;
    const int *mine = batch + self->rank * slice;
    int k = 0;
    for (int off = 0; off < slice; off += self->micro_batch, k++) {
        int B = slice - off < self->micro_batch ? slice - off : self->micro_batch;
        s_fill(self, k, mine + off, B);
    }
    out->n_micro = k;
    out->micro = self->micro;
    out->epoch = self->pos.epoch;
    out->index = self->pos.index;
    if (++self->pos.index == self->steps_per_epoch) {
        self->pos.index = 0;
        self->pos.epoch++;
    }
    return ST_OK;
}

batcher_pos_t batcher_position(const batcher_t *self)
{
    return self->pos;
}

int batcher_seek(batcher_t *self, batcher_pos_t pos, char *err)
{
    if (self->eval) {
        self->pos.epoch = 0;
        self->pos.index = 0;
        return ST_OK;
    }
    if (pos.epoch < 0 || pos.index < 0 || pos.index >= self->steps_per_epoch)
        return st_fail(err, ST_EINVAL,
                       "data position (epoch %lld, batch %lld) is outside an epoch of %lld batches: "
                       "the checkpoint does not belong to this data",
                       (long long)pos.epoch, (long long)pos.index, (long long)self->steps_per_epoch);
    self->pos = pos;
    return ST_OK;
}

int64_t batcher_steps_per_epoch(const batcher_t *self)
{
    return self->eval ? 0 : self->steps_per_epoch;
}

int64_t batcher_eval_targets(const batcher_t *self)
{
    return self->eval_targets;
}
