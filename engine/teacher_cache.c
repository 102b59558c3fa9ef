/*
 * teacher_cache.c - the observer's top-k teacher logits, computed ahead of
 * time, written, read back and handed to the engine per micro-batch (see
 * teacher_cache.h for the file layout).
 *
 * The cache is kept as its file image: building fills the image, writing
 * and broadcasting send it whole, and reading checks every field of it
 * (sizes, offsets, ids, the trailing sha256) before any pointer into it is
 * trusted. Rows are indexed by dataset sample, not by batch, so any split of
 * any global batch over ranks and micro-batches finds its rows: a rank reads
 * only the rows of the samples it was given.
 */
#include "engine/teacher_cache.h"

#include "common/st_err.h"
#include "common/st_fs.h"
#include "common/st_half.h"
#include "data/batcher.h"
#include "data/dataset.h"

#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TC_MAGIC "STTOPK01"
#define TC_VERSION 1u
#define TC_HEADER 176
#define TC_TRAILER 32
#define TC_MAX_BYTES ((size_t)1 << 40)

struct teacher_cache {
    uint8_t *img;            /* the whole file image, owned */
    size_t len;              /* its bytes */
    int k, V, dtype;         /* header fields */
    int64_t n_samples, n_rows;
    double mass;             /* mean top-k probability mass */
    char teacher_id[65], data_id[65];
    const uint64_t *start;   /* (n_samples + 1) into img */
    const int32_t *ids;      /* (n_rows, k) into img */
    const void *val;         /* (n_rows, k) fp16 or fp32 into img */
};

static void s_put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void s_put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t s_get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t s_get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static size_t s_val_size(int dtype) { return dtype == TCACHE_F16 ? 2 : 4; }

/* bytes of a file with these counts, or 0 when it would overflow */
static size_t s_image_bytes(uint64_t n_samples, uint64_t n_rows, uint64_t k, int dtype)
{
    if (n_samples > ((uint64_t)1 << 40) || n_rows > ((uint64_t)1 << 40) || k > ((uint64_t)1 << 24)) return 0;
    double est = TC_HEADER + 8.0 * (n_samples + 1) + (double)n_rows * k * (4 + s_val_size(dtype)) + TC_TRAILER;
    if (est > (double)TC_MAX_BYTES) return 0;
    return TC_HEADER + 8 * (size_t)(n_samples + 1) + (size_t)n_rows * k * (4 + s_val_size(dtype)) + TC_TRAILER;
}

static void s_point(teacher_cache_t *self)
{
    self->start = (const uint64_t *)(self->img + TC_HEADER);
    self->ids = (const int32_t *)(self->img + TC_HEADER + 8 * (size_t)(self->n_samples + 1));
    self->val = (const uint8_t *)self->ids + (size_t)self->n_rows * self->k * 4;
}

int tcache_teacher_id(const char *model_path, const char *state_path, char hex_out[65], char *err)
{
    char m[65], s[65] = "zeros";
    int rc = st_sha256_file(model_path, m, err);
    if (rc) return st_wrap(err, rc, "hashing the teacher: ");
    if (state_path && (rc = st_sha256_file(state_path, s, err))) return st_wrap(err, rc, "hashing the teacher state: ");
    char txt[160];
    int n = snprintf(txt, sizeof txt, "model:%s\nstate:%s\n", m, s);
    st_sha256_hex(txt, (size_t)n, hex_out);
    return ST_OK;
}

void tcache_data_id(const dataset_t *ds, char hex_out[65])
{
    crypto_hash_sha256_state h;
    crypto_hash_sha256_init(&h);
    static const char tag[] = "statetune-topk-data-v1";
    crypto_hash_sha256_update(&h, (const unsigned char *)tag, sizeof tag);
    int64_t n = dataset_count(ds);
    crypto_hash_sha256_update(&h, (const unsigned char *)&n, sizeof n);
    for (int i = 0; i < n; i++) {
        dataset_sample_t s = dataset_get(ds, i);
        crypto_hash_sha256_update(&h, (const unsigned char *)&s.n, sizeof s.n);
        crypto_hash_sha256_update(&h, (const unsigned char *)s.tokens, (size_t)s.n * sizeof(int32_t));
        crypto_hash_sha256_update(&h, s.train, (size_t)s.n);
    }
    unsigned char d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&h, d);
    sodium_bin2hex(hex_out, 65, d, sizeof d);
}

/* a before b in the kept order: larger value, then smaller id */
static int s_better(float va, int32_t ia, float vb, int32_t ib) { return va > vb || (va == vb && ia < ib); }

/* min-heap (by s_better, the worst kept entry on top) of size n */
static void s_sift(float *hv, int32_t *hi, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && s_better(hv[w], hi[w], hv[l], hi[l])) w = l;
        if (r < n && s_better(hv[w], hi[w], hv[r], hi[r])) w = r;
        if (w == i) return;
        float tv = hv[i];
        hv[i] = hv[w];
        hv[w] = tv;
        int32_t ti = hi[i];
        hi[i] = hi[w];
        hi[w] = ti;
        i = w;
    }
}

/* The top k of row (V) into hv/hi, best first. */
static void s_topk(int V, int k, const float *row, float *hv, int32_t *hi)
{
    for (int v = 0; v < k; v++) {
        hv[v] = row[v];
        hi[v] = v;
    }
    for (int i = k / 2 - 1; i >= 0; i--) s_sift(hv, hi, k, i);
    for (int v = k; v < V; v++)
        if (s_better(row[v], v, hv[0], hi[0])) {
            hv[0] = row[v];
            hi[0] = v;
            s_sift(hv, hi, k, 0);
        }
    for (int n = k - 1; n > 0; n--) { /* heap sort: the worst goes to the end */
        float tv = hv[0];
        hv[0] = hv[n];
        hv[n] = tv;
        int32_t ti = hi[0];
        hi[0] = hi[n];
        hi[n] = ti;
        s_sift(hv, hi, n, 0);
    }
}

static void s_seal(teacher_cache_t *self)
{
    crypto_hash_sha256(self->img + self->len - TC_TRAILER, self->img, self->len - TC_TRAILER);
}

teacher_cache_t *tcache_build(observer_t *teacher, const dataset_t *ds, int micro_batch, int ctx_len, int k,
                              tcache_dtype_t dtype, const char teacher_id[65], char *err)
{
    return tcache_build_group(teacher, ds, micro_batch, ctx_len, k, dtype, teacher_id, 0, 1, NULL, NULL, err);
}

#define TC_REDUCE_CHUNK ((size_t)1 << 22) /* floats per gather: 16 MB */

/* Gathers the rows over the group: each sample's rows come from the rank
 * that ran it (mine[s]), zeros from the others, so the float sum is exact. */
static int s_gather(teacher_cache_t *self, const uint8_t *mine, const uint64_t *start, tcache_reduce_fn reduce,
                    void *rctx, char *err)
{
    int k = self->k;
    size_t rows_per = TC_REDUCE_CHUNK / (2 * (size_t)k);
    if (rows_per < 1) rows_per = 1;
    float *buf = malloc(rows_per * 2 * k * sizeof(float));
    uint8_t *row_mine = malloc(self->n_rows ? (size_t)self->n_rows : 1);
    if (!buf || !row_mine) {
        free(buf);
        free(row_mine);
        return st_fail(err, ST_ENOMEM, "out of memory gathering the teacher cache");
    }
    for (int64_t s = 0; s < self->n_samples; s++)
        for (uint64_t r = start[s]; r < start[s + 1]; r++) row_mine[r] = mine[s];
    int32_t *ids = (int32_t *)self->ids;
    float *v32 = (float *)self->val;
    uint16_t *v16 = (uint16_t *)self->val;
    int rc = ST_OK;
    for (size_t r0 = 0; r0 < (size_t)self->n_rows && rc == ST_OK; r0 += rows_per) {
        size_t n = (size_t)self->n_rows - r0 < rows_per ? (size_t)self->n_rows - r0 : rows_per;
        memset(buf, 0, n * 2 * k * sizeof(float));
        for (size_t r = 0; r < n; r++) {
            if (!row_mine[r0 + r]) continue;
            for (int j = 0; j < k; j++) {
                size_t i = (r0 + r) * k + j;
                buf[r * 2 * k + j] = (float)ids[i];
                buf[r * 2 * k + k + j] = self->dtype == TCACHE_F32 ? v32[i] : st_f16_to_f32(v16[i]);
            }
        }
        rc = reduce(rctx, buf, n * 2 * k, err);
        for (size_t r = 0; rc == ST_OK && r < n; r++)
            for (int j = 0; j < k; j++) {
                size_t i = (r0 + r) * k + j;
                ids[i] = (int32_t)buf[r * 2 * k + j];
                if (self->dtype == TCACHE_F32) v32[i] = buf[r * 2 * k + k + j];
                else v16[i] = st_f32_to_f16(buf[r * 2 * k + k + j]);
            }
    }
    free(buf);
    free(row_mine);
    return rc;
}

teacher_cache_t *tcache_build_group(observer_t *teacher, const dataset_t *ds, int micro_batch, int ctx_len, int k,
                                    tcache_dtype_t dtype, const char teacher_id[65], int rank, int world,
                                    tcache_reduce_fn reduce, void *reduce_ctx, char *err)
{
    if (world < 1 || rank < 0 || rank >= world || (world > 1 && !reduce)) {
        st_fail(err, ST_EINVAL, "the teacher cache of rank %d of %d needs a gather", rank, world);
        return NULL;
    }
    int V = observer_vocab(teacher);
    if (k < 1 || k > V) {
        st_fail(err, ST_EINVAL, "observer.top_k %d must be 1 to the vocabulary size %d", k, V);
        return NULL;
    }
    if (dtype != TCACHE_F16 && dtype != TCACHE_F32) {
        st_fail(err, ST_EINVAL, "the teacher cache's values are fp16 or fp32");
        return NULL;
    }
    int64_t ns = dataset_count(ds);
    teacher_cache_t *self = calloc(1, sizeof *self);
    uint64_t *start = calloc((size_t)ns + 1, sizeof *start);
    uint8_t *mine = calloc((size_t)ns + 1, 1); /* samples this rank ran the teacher on */
    batcher_t *bt = batcher_new_eval(ds, micro_batch, ctx_len, 0, 1, err);
    float *hv = malloc((size_t)k * sizeof *hv);
    int32_t *hi = malloc((size_t)k * sizeof *hi);
    if (!bt) goto fail_quiet;
    if (!self || !start || !mine || !hv || !hi) {
        st_fail(err, ST_ENOMEM, "out of memory for the teacher cache");
        goto fail_quiet;
    }
    /* pass 1: trained positions per sample, so each sample's rows are known */
    batch_t b;
    for (;;) {
        if (batcher_next(bt, &b, err)) goto fail_quiet;
        if (b.n_micro == 0) break;
        const micro_batch_t *mi = &b.micro[0];
        for (int r = 0; r < mi->B; r++)
            for (int t = 0; t < mi->T; t++) start[mi->sample[r] + 1] += mi->targets[(size_t)r * mi->T + t] >= 0;
    }
    for (int64_t s = 0; s < ns; s++) start[s + 1] += start[s];
    self->k = k;
    self->V = V;
    self->dtype = dtype;
    self->n_samples = ns;
    self->n_rows = (int64_t)start[ns];
    self->len = s_image_bytes((uint64_t)ns, start[ns], (uint64_t)k, dtype);
    self->img = self->len ? calloc(1, self->len) : NULL;
    if (!self->img) {
        st_fail(err, ST_ENOMEM, "out of memory for a teacher cache of %lld positions x %d", (long long)self->n_rows, k);
        goto fail_quiet;
    }
    memcpy(self->img, TC_MAGIC, 8);
    s_put32(self->img + 8, TC_VERSION);
    s_put32(self->img + 12, (uint32_t)k);
    s_put32(self->img + 16, (uint32_t)V);
    s_put32(self->img + 20, (uint32_t)dtype);
    s_put64(self->img + 24, (uint64_t)ns);
    s_put64(self->img + 32, start[ns]);
    memcpy(self->img + 48, teacher_id, 64);
    tcache_data_id(ds, self->data_id);
    memcpy(self->img + 112, self->data_id, 64);
    memcpy(self->teacher_id, teacher_id, 64);
    memcpy(self->img + TC_HEADER, start, 8 * ((size_t)ns + 1));
    s_point(self);
    int32_t *ids = (int32_t *)self->ids;
    float *v32 = (float *)self->val;
    uint16_t *v16 = (uint16_t *)self->val;
    /* pass 2: the teacher over every sample, its top k at each trained position */
    if (batcher_seek(bt, (batcher_pos_t){0, 0}, err)) goto fail_quiet;
    double mass = 0;
    for (int64_t m = 0;; m++) {
        if (batcher_next(bt, &b, err)) goto fail_quiet;
        if (b.n_micro == 0) break;
        if (m % world != rank) continue; /* another rank's micro-batch */
        const micro_batch_t *mi = &b.micro[0];
        for (int r = 0; r < mi->B; r++) mine[mi->sample[r]] = 1;
        const float *lg;
        if (observer_logits(teacher, mi->tokens, mi->B, mi->T, &lg, err)) goto fail_quiet;
        for (int r = 0; r < mi->B; r++) {
            uint64_t row = start[mi->sample[r]];
            for (int t = 0; t < mi->T; t++) {
                if (mi->targets[(size_t)r * mi->T + t] < 0) continue;
                const float *x = lg + ((size_t)r * mi->T + t) * V;
                double mx = x[0], se = 0;
                for (int v = 1; v < V; v++) mx = x[v] > mx ? x[v] : mx;
                for (int v = 0; v < V; v++) se += exp((double)x[v] - mx);
                if (!isfinite(se) || !isfinite(mx)) {
                    st_fail(err, ST_ENUMERIC, "the teacher's logits are not finite (sample of line %d)",
                            dataset_get(ds, mi->sample[r]).line);
                    goto fail_quiet;
                }
                s_topk(V, k, x, hv, hi);
                double kept = 0;
                for (int j = 0; j < k; j++) {
                    kept += exp((double)hv[j] - mx);
                    ids[row * k + j] = hi[j];
                    if (dtype == TCACHE_F32) v32[row * k + j] = hv[j];
                    else v16[row * k + j] = st_f32_to_f16(hv[j]);
                }
                mass += kept / se;
                row++;
            }
        }
    }
    if (world > 1) { /* every rank gets every row; the mass sums too */
        float fm = (float)mass;
        if (s_gather(self, mine, start, reduce, reduce_ctx, err) || reduce(reduce_ctx, &fm, 1, err)) goto fail_quiet;
        mass = fm;
    }
    self->mass = self->n_rows ? mass / (double)self->n_rows : 1.0;
    memcpy(self->img + 40, &self->mass, 8);
    s_seal(self);
    batcher_destroy(&bt);
    free(start);
    free(mine);
    free(hv);
    free(hi);
    return self;
fail_quiet:
    batcher_destroy(&bt);
    free(start);
    free(mine);
    free(hv);
    free(hi);
    tcache_destroy(&self);
    return NULL;
}

teacher_cache_t *tcache_from_bytes(void *buf, size_t len, const char *what, char *err)
{
    teacher_cache_t *self = calloc(1, sizeof *self);
    if (!self) {
        free(buf);
        st_fail(err, ST_ENOMEM, "out of memory for the teacher cache");
        return NULL;
    }
    self->img = buf;
    self->len = len;
    const uint8_t *p = buf;
    if (len < TC_HEADER + 8 + TC_TRAILER || memcmp(p, TC_MAGIC, 8) != 0) {
        st_fail(err, ST_EFORMAT, "'%s' is not a statetune teacher cache (%s)", what,
                len < TC_HEADER + 8 + TC_TRAILER ? "too short" : "bad magic");
        goto fail;
    }
    if (s_get32(p + 8) != TC_VERSION) {
        st_fail(err, ST_EFORMAT, "teacher cache '%s' has format version %u, this statetune reads %u; rebuild it "
                "(statetune-worker teacher)", what, s_get32(p + 8), TC_VERSION);
        goto fail;
    }
    uint32_t k = s_get32(p + 12), V = s_get32(p + 16), dt = s_get32(p + 20);
    uint64_t ns = s_get64(p + 24), nr = s_get64(p + 32);
    if (V < 1 || V > (1u << 24) || k < 1 || k > V || (dt != TCACHE_F16 && dt != TCACHE_F32)) {
        st_fail(err, ST_EFORMAT, "teacher cache '%s' has an impossible header (k %u, vocab %u, dtype %u)", what, k, V,
                dt);
        goto fail;
    }
    size_t need = s_image_bytes(ns, nr, k, (int)dt);
    if (need == 0 || need != len) {
        st_fail(err, ST_EFORMAT, "teacher cache '%s' has %zu bytes but its header needs %zu (truncated or damaged); "
                "rebuild it", what, len, need);
        goto fail;
    }
    unsigned char sum[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(sum, p, len - TC_TRAILER);
    if (memcmp(sum, p + len - TC_TRAILER, TC_TRAILER) != 0) {
        st_fail(err, ST_EFORMAT, "teacher cache '%s' fails its checksum (damaged); rebuild it", what);
        goto fail;
    }
    self->k = (int)k;
    self->V = (int)V;
    self->dtype = (int)dt;
    self->n_samples = (int64_t)ns;
    self->n_rows = (int64_t)nr;
    memcpy(&self->mass, p + 40, 8);
    memcpy(self->teacher_id, p + 48, 64);
    memcpy(self->data_id, p + 112, 64);
    self->teacher_id[64] = self->data_id[64] = 0;
    s_point(self);
    uint64_t prev = 0;
    for (uint64_t s = 0; s <= ns; s++) {
        uint64_t v = s_get64(p + TC_HEADER + 8 * s);
        if ((s == 0 && v != 0) || v < prev || v > nr || (s == ns && v != nr)) {
            st_fail(err, ST_EFORMAT, "teacher cache '%s': the row index of sample %llu is out of order", what,
                    (unsigned long long)s);
            goto fail;
        }
        prev = v;
    }
    for (size_t i = 0; i < (size_t)nr * k; i++) {
        float x = dt == TCACHE_F32 ? ((const float *)self->val)[i] : st_f16_to_f32(((const uint16_t *)self->val)[i]);
        if (!isfinite(x)) {
            st_fail(err, ST_EFORMAT, "teacher cache '%s': value %zu is not finite", what, i);
            goto fail;
        }
    }
    for (size_t i = 0; i < (size_t)nr * k; i++)
        if (self->ids[i] < 0 || self->ids[i] >= (int32_t)V) {
            st_fail(err, ST_EFORMAT, "teacher cache '%s': token id %d at entry %zu is outside the vocabulary of %u",
                    what, (int)self->ids[i], i, V);
            goto fail;
        }
    return self;
fail:
    tcache_destroy(&self);
    return NULL;
}

teacher_cache_t *tcache_load(const char *path, char *err)
{
    char *buf = NULL;
    size_t len = 0;
    if (st_read_file(path, TC_MAX_BYTES, &buf, &len, err)) return NULL;
    return tcache_from_bytes(buf, len, path, err);
}

void tcache_destroy(teacher_cache_t **self_p)
{
    if (!self_p || !*self_p) return;
    free((*self_p)->img);
    free(*self_p);
    *self_p = NULL;
}

int tcache_write(const teacher_cache_t *self, const char *path, char *err)
{
    return st_write_file_atomic(path, self->img, self->len, err);
}

const void *tcache_bytes(const teacher_cache_t *self, size_t *len_out)
{
    *len_out = self->len;
    return self->img;
}

int tcache_check(const teacher_cache_t *self, const char *what, const char teacher_id[65], const char data_id[65],
                 int64_t n_samples, int k, char *err)
{
    if (strncmp(self->teacher_id, teacher_id, 64) != 0)
        return st_fail(err, ST_EINVAL, "teacher cache '%s' was made with another teacher (model or teacher_state "
                       "changed); delete it or rebuild it with statetune-worker teacher", what);
    if (strncmp(self->data_id, data_id, 64) != 0 || self->n_samples != n_samples)
        return st_fail(err, ST_EINVAL, "teacher cache '%s' was made for other training data (the samples, the "
                       "tokenizer or ctx_len changed); delete it or rebuild it with statetune-worker teacher", what);
    if (self->k != k)
        return st_fail(err, ST_EINVAL, "teacher cache '%s' keeps the top %d logits but the job asks for "
                       "observer.top_k %d; delete it or rebuild it", what, self->k, k);
    return ST_OK;
}

int tcache_k(const teacher_cache_t *self) { return self->k; }
int64_t tcache_rows(const teacher_cache_t *self) { return self->n_rows; }
double tcache_mean_mass(const teacher_cache_t *self) { return self->mass; }

int tcache_fill(const teacher_cache_t *self, const int32_t *targets, const int *sample, int B, int T, float *val,
                int32_t *ids, char *err)
{
    int k = self->k;
    for (int r = 0; r < B; r++) {
        int s = sample[r];
        if (s < 0 || s >= self->n_samples)
            return st_fail(err, ST_EINVAL, "the teacher cache holds %lld samples, not sample %d",
                           (long long)self->n_samples, s);
        uint64_t row = self->start[s], end = self->start[s + 1];
        for (int t = 0; t < T; t++) {
            size_t pos = (size_t)r * T + t;
            if (targets[pos] < 0) continue;
            if (row >= end) break;
            memcpy(ids + pos * k, self->ids + row * k, (size_t)k * sizeof(int32_t));
            if (self->dtype == TCACHE_F32)
                memcpy(val + pos * k, (const float *)self->val + row * k, (size_t)k * sizeof(float));
            else
                for (int j = 0; j < k; j++) val[pos * k + j] = st_f16_to_f32(((const uint16_t *)self->val)[row * k + j]);
            row++;
        }
        int64_t want = 0;
        for (int t = 0; t < T; t++) want += targets[(size_t)r * T + t] >= 0;
        if (want != (int64_t)(end - self->start[s]))
            return st_fail(err, ST_EINVAL, "the teacher cache holds %lld positions for sample %d but the batch trains "
                           "%lld; rebuild the cache", (long long)(end - self->start[s]), s, (long long)want);
    }
    return ST_OK;
}

int tcache_for_job(observer_t *teacher, const jobspec_t *spec, const dataset_t *train, const char *out_dir,
                   int rebuild, int rank, int world, tcache_reduce_fn reduce, void *reduce_ctx, teacher_cache_t **out,
                   char *err)
{
    *out = NULL;
    char tid[65], did[65], path[4200];
    int rc = tcache_teacher_id(spec->observer.teacher_path, spec->observer.teacher_state, tid, err);
    /* a rank that cannot hash the teacher fails alone: every rank reads the
     * same files, so the others fail the same way */
    if (rc) return rc;
    tcache_data_id(train, did);
    snprintf(path, sizeof path, "%s/%s", out_dir, TCACHE_FILE);
    teacher_cache_t *c = NULL;
    float vote[3] = {0, 0, 0}; /* ranks that found no file, a valid one, one they refused */
    if (!rebuild && access(path, F_OK) == 0) { /* a cache made before (a resume, or statetune-worker teacher) */
        c = tcache_load(path, err);
        if (!c) rc = st_wrap(err, ST_EFORMAT, "observer.top_k: ");
        else if ((rc = tcache_check(c, path, tid, did, dataset_count(train), spec->observer.top_k, err)))
            tcache_destroy(&c);
        vote[c ? 1 : 2] = 1;
    } else {
        vote[0] = 1;
    }
    if (world > 1) { /* one decision for the whole group */
        char e2[ST_ERR_LEN];
        int rr = reduce(reduce_ctx, vote, 3, e2);
        if (rr) {
            tcache_destroy(&c);
            return st_fail(err, rr, "%s", e2);
        }
    }
    if (vote[2] > 0) {
        tcache_destroy(&c);
        if (rc) return rc;
        return st_fail(err, ST_EINVAL, "observer.top_k: another rank of the group refused its %s (see its log)", path);
    }
    if (vote[1] == (float)world) {
        *out = c;
        return ST_OK;
    }
    tcache_destroy(&c); /* some rank has no file (another node): build it together */
    c = tcache_build_group(teacher, train, spec->micro_batch, spec->ctx_len, spec->observer.top_k, TCACHE_F32, tid,
                           rank, world, reduce, reduce_ctx, err);
    if (!c) return st_wrap(err, ST_EINVAL, "observer.top_k: computing the teacher's top-k: ");
    if (rank == 0 && (rc = tcache_write(c, path, err))) {
        tcache_destroy(&c);
        return rc;
    }
    *out = c;
    return ST_OK;
}
