/*
 * kstate.c - U0 and the support vectors of the kernel-expanded state (see
 * kstate.h). Everything here is deterministic in its seed: the RNG is
 * splitmix64, k-means seeds from a seeded partial Fisher-Yates shuffle of the
 * usable rows and its assignment ties go to the lower index.
 */
#include "engine/kstate.h"

#include "common/st_err.h"
#include "common/st_fs.h"
#include "common/st_rng.h"
#include "data/dataset.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kstate {
    int L, H, N, M;
    float gamma;
    float *u0;      /* (L, H, N, M) */
    float *support; /* (L, H, M, N) */
    engine_kstate_t view;
};

static double s_unit(uint64_t *x) { return ((st_splitmix64(x) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static void s_normalise(int n, float *v)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)v[i] * v[i];
    float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
    for (int i = 0; i < n; i++) v[i] *= inv;
}

kstate_t *kstate_new(int n_layer, int n_head, int head_size, int features, float gamma, char *err)
{
    if (n_layer < 1 || n_head < 1 || head_size != 64 || features < 1 || features > KSTATE_MAX_FEATURES ||
        !(gamma > 0)) {
        st_fail(err, ST_EINVAL, "a kernel-expanded state needs head size 64, 1 to %d features and gamma > 0 "
                "(got %d features, gamma %g)", KSTATE_MAX_FEATURES, features, (double)gamma);
        return NULL;
    }
    kstate_t *self = calloc(1, sizeof *self);
    size_t n = (size_t)n_layer * n_head * head_size * features;
    if (self) {
        self->u0 = calloc(n, sizeof(float));
        self->support = calloc(n, sizeof(float));
    }
    if (!self || !self->u0 || !self->support) {
        st_fail(err, ST_ENOMEM, "out of memory for a kernel-expanded state of %zu values", 2 * n);
        kstate_destroy(&self);
        return NULL;
    }
    self->L = n_layer;
    self->H = n_head;
    self->N = head_size;
    self->M = features;
    self->gamma = gamma;
    self->view = (engine_kstate_t){features, gamma, self->u0, self->support};
    return self;
}

void kstate_destroy(kstate_t **self_p)
{
    if (!self_p || !*self_p) return;
    free((*self_p)->u0);
    free((*self_p)->support);
    free(*self_p);
    *self_p = NULL;
}

void kstate_support_random(kstate_t *self, uint64_t seed)
{
    uint64_t x = seed ^ 0x6b73746174650000ULL; /* "kstate" */
    size_t nv = (size_t)self->L * self->H * self->M;
    for (size_t v = 0; v < nv; v++) {
        float *u = self->support + v * self->N;
        for (int i = 0; i < self->N; i += 2) { /* Box-Muller, two normals at a time */
            double a = s_unit(&x), b = s_unit(&x), rad = sqrt(-2.0 * log(a));
            u[i] = (float)(rad * cos(6.283185307179586 * b));
            if (i + 1 < self->N) u[i + 1] = (float)(rad * sin(6.283185307179586 * b));
        }
        s_normalise(self->N, u);
    }
}

int kstate_support_kmeans(kstate_t *self, const float *r, size_t n_rows, uint64_t seed, int iters, char *err)
{
    int N = self->N, M = self->M, H = self->H, C = H * N;
    float *pts = malloc(n_rows * N * sizeof(float));
    size_t *idx = malloc(n_rows * sizeof(size_t));
    int *asg = malloc(n_rows * sizeof(int));
    double *sum = malloc((size_t)M * N * sizeof(double));
    int *cnt = malloc((size_t)M * sizeof(int));
    int rc = ST_OK;
    if (!pts || !idx || !asg || !sum || !cnt) {
        rc = st_fail(err, ST_ENOMEM, "out of memory for k-means on %zu receptances", n_rows);
        goto done;
    }
    for (int l = 0; l < self->L && !rc; l++)
        for (int h = 0; h < H && !rc; h++) {
            /* the usable points of this head: r / |r| with |r| > 0 */
            size_t n = 0;
            for (size_t q = 0; q < n_rows; q++) {
                const float *src = r + ((size_t)l * n_rows + q) * C + (size_t)h * N;
                float *p = pts + n * N;
                memcpy(p, src, N * sizeof(float));
                s_normalise(N, p);
                double ss = 0;
                for (int i = 0; i < N; i++) ss += (double)p[i] * p[i];
                if (ss > 0.5) n++;
            }
            if (n < (size_t)M) {
                rc = st_fail(err, ST_EINVAL, "k-means for %d support vectors found only %zu usable receptances "
                             "in layer %d head %d (use more data or support \"random\")", M, n, l, h);
                break;
            }
            uint64_t x = seed ^ ((uint64_t)(l * H + h) << 32) ^ 0x6b6d65616e730000ULL;
            for (size_t q = 0; q < n; q++) idx[q] = q;
            float *cen = self->support + ((size_t)l * H + h) * M * N;
            for (int m = 0; m < M; m++) { /* partial Fisher-Yates: M distinct points */
                size_t j = (size_t)m + (size_t)(s_unit(&x) * (double)(n - (size_t)m));
                if (j >= n) j = n - 1;
                size_t tmp = idx[m];
                idx[m] = idx[j];
                idx[j] = tmp;
                memcpy(cen + (size_t)m * N, pts + idx[m] * N, N * sizeof(float));
            }
            for (int it = 0; it < iters; it++) {
                memset(sum, 0, (size_t)M * N * sizeof(double));
                memset(cnt, 0, (size_t)M * sizeof(int));
                for (size_t q = 0; q < n; q++) {
                    const float *p = pts + q * N;
                    int best = 0;
                    float bc = -2;
                    for (int m = 0; m < M; m++) {
                        const float *u = cen + (size_t)m * N;
                        float c = 0;
                        for (int i = 0; i < N; i++) c += p[i] * u[i];
                        if (c > bc) {
                            bc = c;
                            best = m;
                        }
                    }
                    asg[q] = best;
                    cnt[best]++;
                    for (int i = 0; i < N; i++) sum[(size_t)best * N + i] += p[i];
                }
                for (int m = 0; m < M; m++) {
                    if (!cnt[m]) continue; /* an empty cluster keeps its centre */
                    float *u = cen + (size_t)m * N;
                    for (int i = 0; i < N; i++) u[i] = (float)sum[(size_t)m * N + i];
                    s_normalise(N, u);
                }
            }
        }
done:
    free(pts);
    free(idx);
    free(asg);
    free(sum);
    free(cnt);
    return rc;
}

const engine_kstate_t *kstate_view(const kstate_t *self) { return &self->view; }
float *kstate_u0(kstate_t *self) { return self->u0; }
const float *kstate_support(const kstate_t *self) { return self->support; }
size_t kstate_u0_size(const kstate_t *self) { return (size_t)self->L * self->H * self->N * self->M; }
int kstate_features(const kstate_t *self) { return self->M; }

int kstate_write(const kstate_t *self, const char *path, char *err)
{
    size_t per = (size_t)self->H * self->N * self->M * sizeof(float);
    json_t *hdr = json_object();
    json_t *meta = json_object();
    char gam[32], key[96];
    snprintf(gam, sizeof gam, "%.9g", (double)self->gamma);
    json_object_set_new(meta, "format", json_string("statetune-kstate"));
    json_object_set_new(meta, "gamma", json_string(gam));
    json_object_set_new(hdr, "__metadata__", meta);
    size_t off = 0;
    for (int l = 0; l < self->L; l++)
        for (int which = 0; which < 2; which++) {
            snprintf(key, sizeof key, "blocks.%d.att.%s", l, which ? "kstate_support" : "kstate_u0");
            json_t *t = json_object();
            json_object_set_new(t, "dtype", json_string("F32"));
            json_object_set_new(t, "shape", json_pack("[iii]", self->H, which ? self->M : self->N,
                                                      which ? self->N : self->M));
            json_object_set_new(t, "data_offsets", json_pack("[II]", (json_int_t)off, (json_int_t)(off + per)));
            json_object_set_new(hdr, key, t);
            off += per;
        }
    char *h = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(hdr);
    if (!h) return st_fail(err, ST_ENOMEM, "out of memory writing '%s'", path);
    size_t hl = strlen(h), pad = (8 - hl % 8) % 8, total = 8 + hl + pad + off;
    unsigned char *buf = malloc(total);
    if (!buf) {
        free(h);
        return st_fail(err, ST_ENOMEM, "out of memory writing '%s'", path);
    }
    uint64_t n8 = hl + pad;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(n8 >> (8 * i));
    memcpy(buf + 8, h, hl);
    memset(buf + 8 + hl, ' ', pad);
    unsigned char *p = buf + 8 + n8;
    for (int l = 0; l < self->L; l++) {
        memcpy(p, self->u0 + (size_t)l * per / sizeof(float), per);
        memcpy(p + per, self->support + (size_t)l * per / sizeof(float), per);
        p += 2 * per;
    }
    free(h);
    int rc = st_write_file_atomic(path, buf, total, err);
    free(buf);
    return rc;
}

int kstate_support_init(kstate_t *self, const char *support, engine_t *engine, const dataset_t *ds, int max_b,
                        int ctx, const float *state0, uint64_t seed, char *err)
{
    if (!support || !strcmp(support, "random")) {
        kstate_support_random(self, seed);
        return ST_OK;
    }
    if (strcmp(support, "kmeans") != 0)
        return st_fail(err, ST_EINVAL, "unknown kernel_state.support '%s' (use kmeans or random)", support);
    /* the first max_b samples, all cut to the shortest of them (no padding) */
    int B = dataset_count(ds) < max_b ? dataset_count(ds) : max_b, T = ctx;
    for (int b = 0; b < B; b++) {
        int n = dataset_get(ds, b).n;
        if (n < T) T = n;
    }
    if (B < 1 || T < 1) return st_fail(err, ST_EINVAL, "k-means support vectors need at least one sample");
    int C = self->H * self->N;
    int32_t *tok = malloc((size_t)B * T * sizeof(int32_t));
    float *r = malloc((size_t)self->L * B * T * C * sizeof(float));
    int rc = ST_OK;
    if (!tok || !r) rc = st_fail(err, ST_ENOMEM, "out of memory for the k-means sample");
    for (int b = 0; b < B && !rc; b++) memcpy(tok + (size_t)b * T, dataset_get(ds, b).tokens, T * sizeof(int32_t));
    if (!rc) {
        engine_batch_t bt = {.tokens = tok, .B = B, .T = T, .state0 = state0, .receptance = r};
        rc = engine_run(engine, &bt, err);
        if (rc) st_wrap(err, rc, "computing receptances for k-means: ");
    }
    if (!rc) rc = kstate_support_kmeans(self, r, (size_t)B * T, seed, 12, err);
    free(tok);
    free(r);
    return rc;
}

#define CKPT_MAGIC "STKSCKP1"

int kstate_ckpt_write(const kstate_t *self, const char *path, int64_t step, const float *m, const float *v,
                      int64_t t, char *err)
{
    size_t n = kstate_u0_size(self), body = 8 + 4 * 4 + 2 * 8 + 4 * n * sizeof(float);
    unsigned char *buf = malloc(body + 32);
    if (!buf) return st_fail(err, ST_ENOMEM, "out of memory writing '%s'", path);
    unsigned char *p = buf;
    int32_t shape[4] = {self->L, self->H, self->N, self->M};
    memcpy(p, CKPT_MAGIC, 8), p += 8;
    memcpy(p, shape, sizeof shape), p += sizeof shape;
    memcpy(p, &step, 8), p += 8;
    memcpy(p, &t, 8), p += 8;
    memcpy(p, self->u0, n * sizeof(float)), p += n * sizeof(float);
    memcpy(p, m, n * sizeof(float)), p += n * sizeof(float);
    memcpy(p, v, n * sizeof(float)), p += n * sizeof(float);
    memcpy(p, self->support, n * sizeof(float)), p += n * sizeof(float);
    char hex[65];
    st_sha256_hex(buf, body, hex);
    for (int i = 0; i < 32; i++) { /* the digest as 32 raw bytes */
        unsigned int byte;
        sscanf(hex + 2 * i, "%2x", &byte);
        p[i] = (unsigned char)byte;
    }
    int rc = st_write_file_atomic(path, buf, body + 32, err);
    free(buf);
    return rc;
}

int kstate_ckpt_read(kstate_t *self, const char *path, int64_t *step, float *m, float *v, int64_t *t, char *err)
{
    size_t n = kstate_u0_size(self), body = 8 + 4 * 4 + 2 * 8 + 4 * n * sizeof(float);
    FILE *f = fopen(path, "rb");
    if (!f) return st_fail(err, ST_ENOTFOUND, "cannot open the kernel-state checkpoint '%s'", path);
    unsigned char *buf = malloc(body + 33);
    int rc = ST_OK;
    size_t got = buf ? fread(buf, 1, body + 33, f) : 0;
    fclose(f);
    if (!buf) return st_fail(err, ST_ENOMEM, "out of memory reading '%s'", path);
    char hex[65], want[65];
    if (got != body + 32) {
        rc = st_fail(err, ST_EFORMAT, "kernel-state checkpoint '%s' has %zu bytes where this job's shape needs %zu",
                     path, got, body + 32);
        goto done;
    }
    if (memcmp(buf, CKPT_MAGIC, 8) != 0) {
        rc = st_fail(err, ST_EFORMAT, "'%s' is not a kernel-state checkpoint (bad magic)", path);
        goto done;
    }
    st_sha256_hex(buf, body, hex);
    for (int i = 0; i < 32; i++) snprintf(want + 2 * i, 3, "%02x", buf[body + i]);
    if (strcmp(hex, want) != 0) {
        rc = st_fail(err, ST_EFORMAT, "kernel-state checkpoint '%s' is damaged (its checksum does not match)", path);
        goto done;
    }
    int32_t shape[4];
    memcpy(shape, buf + 8, sizeof shape);
    if (shape[0] != self->L || shape[1] != self->H || shape[2] != self->N || shape[3] != self->M) {
        rc = st_fail(err, ST_EFORMAT, "kernel-state checkpoint '%s' is for %d x %d x %d x %d, the job needs %d x %d x %d x %d",
                     path, shape[0], shape[1], shape[2], shape[3], self->L, self->H, self->N, self->M);
        goto done;
    }
    const unsigned char *p = buf + 8 + sizeof shape;
    memcpy(step, p, 8), p += 8;
    memcpy(t, p, 8), p += 8;
    memcpy(self->u0, p, n * sizeof(float)), p += n * sizeof(float);
    memcpy(m, p, n * sizeof(float)), p += n * sizeof(float);
    memcpy(v, p, n * sizeof(float)), p += n * sizeof(float);
    memcpy(self->support, p, n * sizeof(float));
done:
    free(buf);
    return rc;
}
