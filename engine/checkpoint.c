/*
 * checkpoint.c - writing and reading tuning checkpoints (see checkpoint.h).
 *
 * The whole file is built in memory and handed to st_write_file_atomic: the
 * state of even a 7B model is a few MB per array, and one buffer makes the
 * trailing sha256 (which catches torn or edited files on reading) trivial.
 * Reading treats the file as untrusted: every length is checked against what
 * is left before it is used.
 */
#include "engine/checkpoint.h"

#include "common/st_err.h"
#include "common/st_fs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char s_magic[8] = {'S', 'T', 'C', 'K', 'P', 'T', '\r', '\n'};
#define CHECKPOINT_MAX_BYTES ((size_t)1 << 36)
#define CHECKPOINT_MAX_DIM 4096

checkpoint_t *checkpoint_new(int n_layer, int n_head, int head_size, char *err)
{
    if (n_layer <= 0 || n_head <= 0 || head_size <= 0 || n_layer > CHECKPOINT_MAX_DIM ||
        n_head > CHECKPOINT_MAX_DIM || head_size > CHECKPOINT_MAX_DIM) {
        st_fail(err, ST_EINVAL, "checkpoint: impossible state shape %d x %d x %d", n_layer, n_head, head_size);
        return NULL;
    }
    checkpoint_t *self = calloc(1, sizeof *self);
    if (!self) goto oom;
    self->n_layer = n_layer;
    self->n_head = n_head;
    self->head_size = head_size;
    size_t n = checkpoint_elems(self);
    self->A = calloc(n, sizeof(float));
    self->R = calloc(n, sizeof(float));
    self->adam_m = calloc(n, sizeof(float));
    self->adam_v = calloc(n, sizeof(float));
    if (!self->A || !self->R || !self->adam_m || !self->adam_v) goto oom;
    return self;
oom:
    checkpoint_destroy(&self);
    st_fail(err, ST_ENOMEM, "checkpoint: out of memory");
    return NULL;
}

void checkpoint_destroy(checkpoint_t **self_p)
{
    if (!self_p || !*self_p) return;
    checkpoint_t *self = *self_p;
    free(self->A);
    free(self->R);
    free(self->adam_m);
    free(self->adam_v);
    free(self->data_pos);
    free(self->metrics_json);
    free(self);
    *self_p = NULL;
}

size_t checkpoint_elems(const checkpoint_t *self)
{
    return (size_t)self->n_layer * self->n_head * self->head_size * self->head_size;
}

int checkpoint_set_data_pos(checkpoint_t *self, const void *bytes, size_t len, char *err)
{
    uint8_t *copy = NULL;
    if (len) {
        copy = malloc(len);
        if (!copy) return st_fail(err, ST_ENOMEM, "checkpoint: out of memory");
        memcpy(copy, bytes, len);
    }
    free(self->data_pos);
    self->data_pos = copy;
    self->data_pos_len = len;
    return ST_OK;
}

int checkpoint_set_metrics(checkpoint_t *self, const char *json, char *err)
{
    char *copy = NULL;
    if (json) {
        copy = strdup(json);
        if (!copy) return st_fail(err, ST_ENOMEM, "checkpoint: out of memory");
    }
    free(self->metrics_json);
    self->metrics_json = copy;
    return ST_OK;
}

/* ---- writing ------------------------------------------------------------ */

typedef struct {
    uint8_t *p;   /* buffer */
    size_t len;   /* bytes used */
} s_buf_t;

static void s_put(s_buf_t *b, const void *data, size_t n)
{
    memcpy(b->p + b->len, data, n);
    b->len += n;
}
static void s_put_u32(s_buf_t *b, uint32_t x)
{
    uint8_t t[4] = {(uint8_t)x, (uint8_t)(x >> 8), (uint8_t)(x >> 16), (uint8_t)(x >> 24)};
    s_put(b, t, 4);
}
static void s_put_u64(s_buf_t *b, uint64_t x)
{
    s_put_u32(b, (uint32_t)x);
    s_put_u32(b, (uint32_t)(x >> 32));
}
static void s_put_f32s(s_buf_t *b, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        s_put_u32(b, u);
    }
}

int checkpoint_write(const checkpoint_t *self, const char *path, char *err)
{
    size_t n = checkpoint_elems(self);
    size_t json_len = self->metrics_json ? strlen(self->metrics_json) : 0;
    size_t total = 8 + 4 * 2 + 4 * 4 + 8 * 2 + 8 * 4 + 64 + 8 + self->data_pos_len + 8 + json_len + 4 * 4 * n + 64;
    s_buf_t b = {malloc(total), 0};
    if (!b.p) return st_fail(err, ST_ENOMEM, "checkpoint '%s': out of memory for %zu bytes", path, total);
    s_put(&b, s_magic, 8);
    s_put_u32(&b, CHECKPOINT_VERSION);
    s_put_u32(&b, 0);
    s_put_u32(&b, (uint32_t)self->n_layer);
    s_put_u32(&b, (uint32_t)self->n_head);
    s_put_u32(&b, (uint32_t)self->head_size);
    s_put_u32(&b, (uint32_t)(self->dbp != 0));
    s_put_u64(&b, (uint64_t)self->step);
    s_put_u64(&b, (uint64_t)self->adam_t);
    for (int i = 0; i < 4; i++) s_put_u64(&b, self->rng[i]);
    char hash[64];
    memset(hash, '0', sizeof hash);
    memcpy(hash, self->spec_sha256, strnlen(self->spec_sha256, 64));
    s_put(&b, hash, 64);
    s_put_u64(&b, self->data_pos_len);
    if (self->data_pos_len) s_put(&b, self->data_pos, self->data_pos_len);
    s_put_u64(&b, json_len);
    if (json_len) s_put(&b, self->metrics_json, json_len);
    s_put_f32s(&b, self->A, n);
    s_put_f32s(&b, self->R, n);
    s_put_f32s(&b, self->adam_m, n);
    s_put_f32s(&b, self->adam_v, n);
    char sum[65];
    st_sha256_hex(b.p, b.len, sum);
    s_put(&b, sum, 64);
    int rc = st_write_file_atomic(path, b.p, b.len, err);
    free(b.p);
    if (rc) return st_wrap(err, rc, "writing checkpoint: ");
    return ST_OK;
}

/* ---- reading ------------------------------------------------------------ */

typedef struct {
    const uint8_t *p; /* file bytes */
    size_t len;       /* total */
    size_t off;       /* read position */
} s_rd_t;

static int s_take(s_rd_t *r, size_t n, const uint8_t **out)
{
    if (n > r->len - r->off) return -1;
    *out = r->p + r->off;
    r->off += n;
    return 0;
}
static int s_u32(s_rd_t *r, uint32_t *x)
{
    const uint8_t *t;
    if (s_take(r, 4, &t)) return -1;
    *x = (uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 | (uint32_t)t[3] << 24;
    return 0;
}
static int s_u64(s_rd_t *r, uint64_t *x)
{
    uint32_t lo, hi;
    if (s_u32(r, &lo) || s_u32(r, &hi)) return -1;
    *x = (uint64_t)lo | (uint64_t)hi << 32;
    return 0;
}
static int s_f32s(s_rd_t *r, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        if (s_u32(r, &u)) return -1;
        memcpy(&x[i], &u, 4);
    }
    return 0;
}

int checkpoint_read(const char *path, checkpoint_t **out, char *err)
{
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT)
        return st_fail(err, ST_ENOTFOUND, "checkpoint '%s' does not exist", path);
    char *data = NULL;
    size_t len = 0;
    int rc = st_read_file(path, CHECKPOINT_MAX_BYTES, &data, &len, err);
    if (rc) return rc;
    checkpoint_t *ck = NULL;
    s_rd_t r = {(const uint8_t *)data, len, 0};
    const uint8_t *t;
    uint32_t version, reserved, L, H, N, dbp;
    uint64_t step, adam_t, rng[4], pos_len, json_len;
    rc = ST_EFORMAT;
    if (len < 8 + 64 || memcmp(data, s_magic, 8) != 0) {
        st_fail(err, rc, "'%s' is not a statetune checkpoint (bad magic)", path);
        goto out;
    }
    r.off = 8;
    if (s_u32(&r, &version) || s_u32(&r, &reserved)) goto truncated;
    if (version != CHECKPOINT_VERSION) {
        st_fail(err, rc, "checkpoint '%s' has format version %u but this build reads version %d: delete it to "
                "restart the job from step 0, or resume with the build that wrote it", path, version, CHECKPOINT_VERSION);
        goto out;
    }
    char sum[65];
    st_sha256_hex(data, len - 64, sum);
    if (memcmp(sum, data + len - 64, 64) != 0) {
        st_fail(err, rc, "checkpoint '%s' is damaged (its sha256 does not match its contents): delete it to restart "
                "the job from step 0", path);
        goto out;
    }
    r.len = len - 64;
    if (s_u32(&r, &L) || s_u32(&r, &H) || s_u32(&r, &N) || s_u32(&r, &dbp)) goto truncated;
    if (L == 0 || H == 0 || N == 0 || L > CHECKPOINT_MAX_DIM || H > CHECKPOINT_MAX_DIM || N > CHECKPOINT_MAX_DIM) {
        st_fail(err, rc, "checkpoint '%s' claims an impossible state shape %u x %u x %u", path, L, H, N);
        goto out;
    }
    if (s_u64(&r, &step) || s_u64(&r, &adam_t)) goto truncated;
    for (int i = 0; i < 4; i++)
        if (s_u64(&r, &rng[i])) goto truncated;
    if (step > INT64_MAX || adam_t > INT64_MAX) {
        st_fail(err, rc, "checkpoint '%s' holds a negative step count", path);
        goto out;
    }
    ck = checkpoint_new((int)L, (int)H, (int)N, err);
    if (!ck) {
        rc = ST_ENOMEM;
        goto out;
    }
    ck->dbp = dbp != 0;
    ck->step = (int64_t)step;
    ck->adam_t = (int64_t)adam_t;
    memcpy(ck->rng, rng, sizeof rng);
    if (s_take(&r, 64, &t)) goto truncated;
    memcpy(ck->spec_sha256, t, 64);
    ck->spec_sha256[64] = 0;
    if (s_u64(&r, &pos_len) || pos_len > r.len - r.off || s_take(&r, pos_len, &t)) goto truncated;
    if (checkpoint_set_data_pos(ck, t, pos_len, err)) {
        rc = ST_ENOMEM;
        goto out;
    }
    if (s_u64(&r, &json_len) || json_len > r.len - r.off || s_take(&r, json_len, &t)) goto truncated;
    if (json_len) {
        ck->metrics_json = malloc(json_len + 1);
        if (!ck->metrics_json) {
            rc = st_fail(err, ST_ENOMEM, "checkpoint: out of memory");
            goto out;
        }
        memcpy(ck->metrics_json, t, json_len);
        ck->metrics_json[json_len] = 0;
    }
    size_t n = checkpoint_elems(ck);
    if (s_f32s(&r, ck->A, n) || s_f32s(&r, ck->R, n) || s_f32s(&r, ck->adam_m, n) || s_f32s(&r, ck->adam_v, n))
        goto truncated;
    if (r.off != r.len) {
        st_fail(err, rc, "checkpoint '%s' has %zu unexpected bytes after its arrays", path, r.len - r.off);
        goto out;
    }
    *out = ck;
    ck = NULL;
    rc = ST_OK;
    goto out;
truncated:
    rc = st_fail(err, ST_EFORMAT, "checkpoint '%s' is truncated (%zu bytes)", path, len);
out:
    checkpoint_destroy(&ck);
    free(data);
    return rc;
}
