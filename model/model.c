/*
 * model.c - an RWKV-7 model in memory (model.h): loading any model file
 * through tensorfile, inferring the configuration from tensor shapes, and
 * building random models for benchmarks and tests.
 *
 * One table drives everything (s_plan): for a configuration it lists every
 * weight with its official name, its shape and the model field that points at
 * it. Loading walks the table to find, check and convert each tensor; the
 * arena size, the pointer carving and the parameter count come from the same
 * table, so they cannot drift apart. Layer 0's v0/v1/v2 are not in the table:
 * the first layer never uses them (its v becomes v_first) and released
 * checkpoints omit them, so they stay NULL whatever the file holds.
 *
 * Shapes are compared after dropping leading dimensions of size 1, because
 * the official checkpoint stores vectors as [1, 1, C] while other writers use
 * [C]; r_k is [H, N] either way.
 */
#include "model/model.h"

#include "common/st_err.h"
#include "common/st_fs.h"
#include "common/st_rng.h"
#include "model/tensorfile.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_MAX_LAYERS 1024   /* far beyond any RWKV-7 release (the 14B has 61) */
#define MODEL_ALIGN_FLOATS 16   /* each tensor starts on a 64-byte boundary */
#define MODEL_NAME_LEN 96

typedef struct {
    char name[MODEL_NAME_LEN]; /* official state-dict name */
    float **dst;               /* field to point at the tensor; NULL when only planning */
    int ndim;                  /* 1 or 2 */
    int64_t shape[2];          /* official shape with leading 1s dropped */
} slot_t;

typedef struct {
    slot_t *slots;
    int n, cap;
} plan_t;

/* Adds one weight: layer < 0 names a top-level tensor, else blocks.<layer>.<leaf>. */
static int s_slot(plan_t *p, float **dst, int64_t d0, int64_t d1, int layer, const char *leaf)
{
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 256;
        slot_t *grown = realloc(p->slots, (size_t)cap * sizeof *grown);
        if (!grown) return ST_ENOMEM;
        p->slots = grown;
        p->cap = cap;
    }
    slot_t *s = &p->slots[p->n++];
    if (layer < 0) snprintf(s->name, sizeof s->name, "%s", leaf);
    else snprintf(s->name, sizeof s->name, "blocks.%d.%s", layer, leaf);
    s->dst = dst;
    s->ndim = d1 ? 2 : 1;
    s->shape[0] = d0;
    s->shape[1] = d1;
    return ST_OK;
}

/* Lists every weight of a model of configuration c; m may be NULL (count only). */
static int s_plan(const rwkv_config_t *c, rwkv_model_t *m, plan_t *p)
{
    int64_t C = c->n_embd, V = c->vocab, F = c->ffn_dim, H = c->n_head, N = c->head_size;
#define F_(field) (m ? &(field) : NULL)
#define TOP(field, name, d0, d1) \
    if (s_slot(p, F_(m->field), d0, d1, -1, name)) return ST_ENOMEM
    TOP(emb, "emb.weight", V, C);
    TOP(ln_out_w, "ln_out.weight", C, 0);
    TOP(ln_out_b, "ln_out.bias", C, 0);
    TOP(head, "head.weight", V, C);
    for (int l = 0; l < c->n_layer; l++) {
        rwkv_layer_t *ly = m ? &m->layers[l] : NULL;
#define LAY(field, leaf, d0, d1) \
    if (s_slot(p, ly ? &ly->field : NULL, d0, d1, l, leaf)) return ST_ENOMEM
        if (l == 0) {
            LAY(ln0_w, "ln0.weight", C, 0);
            LAY(ln0_b, "ln0.bias", C, 0);
        }
        LAY(ln1_w, "ln1.weight", C, 0);
        LAY(ln1_b, "ln1.bias", C, 0);
        LAY(ln2_w, "ln2.weight", C, 0);
        LAY(ln2_b, "ln2.bias", C, 0);
        LAY(x_r, "att.x_r", C, 0);
        LAY(x_w, "att.x_w", C, 0);
        LAY(x_k, "att.x_k", C, 0);
        LAY(x_v, "att.x_v", C, 0);
        LAY(x_a, "att.x_a", C, 0);
        LAY(x_g, "att.x_g", C, 0);
        LAY(w0, "att.w0", C, 0);
        LAY(w1, "att.w1", C, c->d_decay);
        LAY(w2, "att.w2", c->d_decay, C);
        LAY(a0, "att.a0", C, 0);
        LAY(a1, "att.a1", C, c->d_aaa);
        LAY(a2, "att.a2", c->d_aaa, C);
        if (l > 0) {
            LAY(v0, "att.v0", C, 0);
            LAY(v1, "att.v1", C, c->d_mv);
            LAY(v2, "att.v2", c->d_mv, C);
        }
        LAY(g1, "att.g1", C, c->d_gate);
        LAY(g2, "att.g2", c->d_gate, C);
        LAY(k_k, "att.k_k", C, 0);
        LAY(k_a, "att.k_a", C, 0);
        LAY(r_k, "att.r_k", H, N);
        LAY(receptance, "att.receptance.weight", C, C);
        LAY(key, "att.key.weight", C, C);
        LAY(value, "att.value.weight", C, C);
        LAY(output, "att.output.weight", C, C);
        LAY(ln_x_w, "att.ln_x.weight", C, 0);
        LAY(ln_x_b, "att.ln_x.bias", C, 0);
        LAY(ffn_x_k, "ffn.x_k", C, 0);
        LAY(ffn_key, "ffn.key.weight", F, C);
        LAY(ffn_value, "ffn.value.weight", C, F);
#undef LAY
    }
#undef TOP
#undef F_
    return ST_OK;
}

static int64_t s_slot_numel(const slot_t *s) { return s->ndim == 2 ? s->shape[0] * s->shape[1] : s->shape[0]; }

static int s_check_config(const rwkv_config_t *c, char *err)
{
    if (c->n_layer < 1 || c->n_layer > MODEL_MAX_LAYERS)
        return st_fail(err, ST_EINVAL, "n_layer %d is outside 1..%d", c->n_layer, MODEL_MAX_LAYERS);
    if (c->n_embd < RWKV_HEAD_SIZE || c->n_embd % RWKV_HEAD_SIZE)
        return st_fail(err, ST_EINVAL, "n_embd %d is not a positive multiple of the head size %d",
                       c->n_embd, RWKV_HEAD_SIZE);
    if (c->vocab < 1) return st_fail(err, ST_EINVAL, "vocab %d is not positive", c->vocab);
    if (c->ffn_dim < 1) return st_fail(err, ST_EINVAL, "ffn_dim %d is not positive", c->ffn_dim);
    if (c->d_decay < 1 || c->d_aaa < 1 || c->d_gate < 1 || (c->n_layer > 1 && c->d_mv < 1))
        return st_fail(err, ST_EINVAL, "LoRA widths %d/%d/%d/%d must be positive", c->d_decay,
                       c->d_aaa, c->d_mv, c->d_gate);
    return ST_OK;
}

/* ---- configuration from shapes ------------------------------------------------ */

/* The size of dimension dim of a 2-D tensor, or an error naming it. */
static int s_dim(const tensorfile_t *tf, const char *name, int dim, int *out, char *err)
{
    const tf_tensor_info_t *t = tensorfile_find(tf, name);
    if (!t) return st_fail(err, ST_EFORMAT, "tensor '%s' is missing", name);
    if (t->ndim != 2)
        return st_fail(err, ST_EFORMAT, "tensor '%s' has %d dimensions, expected 2", name, t->ndim);
    if (t->shape[dim] < 1 || t->shape[dim] > (1 << 24))
        return st_fail(err, ST_EFORMAT, "tensor '%s' has an implausible size %lld", name,
                       (long long)t->shape[dim]);
    *out = (int)t->shape[dim];
    return ST_OK;
}

int rwkv_config_from_tensorfile(tensorfile_t *tf, rwkv_config_t *cfg, char *err)
{
    rwkv_config_t c;
    memset(&c, 0, sizeof c);
    int rc = s_dim(tf, "emb.weight", 0, &c.vocab, err);
    if (!rc) rc = s_dim(tf, "emb.weight", 1, &c.n_embd, err);
    if (rc) return rc;
    if (c.n_embd % RWKV_HEAD_SIZE)
        return st_fail(err, ST_EFORMAT, "n_embd %d (from emb.weight) is not a multiple of the head "
                       "size %d", c.n_embd, RWKV_HEAD_SIZE);
    /* n_layer: one more than the highest block index */
    int max_block = -1;
    for (int i = 0; i < tensorfile_count(tf); i++) {
        const char *name = tensorfile_info(tf, i)->name;
        if (strncmp(name, "blocks.", 7) != 0) continue;
        const char *p = name + 7;
        long b = 0;
        int digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 6) b = b * 10 + (*p++ - '0'), digits++;
        if (!digits || *p != '.') continue;
        if (b >= MODEL_MAX_LAYERS)
            return st_fail(err, ST_EFORMAT, "tensor '%s' names layer %ld (at most %d layers)", name,
                           b, MODEL_MAX_LAYERS);
        if (b > max_block) max_block = (int)b;
    }
    if (max_block < 0) return st_fail(err, ST_EFORMAT, "the file has no 'blocks.N.' tensors");
    c.n_layer = max_block + 1;
    c.head_size = RWKV_HEAD_SIZE;
    c.n_head = c.n_embd / RWKV_HEAD_SIZE;
    if ((rc = s_dim(tf, "blocks.0.att.w1", 1, &c.d_decay, err))) return rc;
    if ((rc = s_dim(tf, "blocks.0.att.a1", 1, &c.d_aaa, err))) return rc;
    if ((rc = s_dim(tf, "blocks.0.att.g1", 1, &c.d_gate, err))) return rc;
    if ((rc = s_dim(tf, "blocks.0.ffn.key.weight", 0, &c.ffn_dim, err))) return rc;
    if (c.n_layer > 1) {
        if ((rc = s_dim(tf, "blocks.1.att.v1", 1, &c.d_mv, err))) return rc;
    } else if (tensorfile_find(tf, "blocks.0.att.v1")) {
        if ((rc = s_dim(tf, "blocks.0.att.v1", 1, &c.d_mv, err))) return rc;
    }
    *cfg = c;
    return ST_OK;
}

/* ---- allocation --------------------------------------------------------------- */

void rwkv_model_destroy(rwkv_model_t **self_p)
{
    if (!self_p || !*self_p) return;
    rwkv_model_t *self = *self_p;
    free(self->arena);
    free(self->layers);
    free(self->path);
    free(self);
    *self_p = NULL;
}

/* A model with every pointer carved out of one zeroed arena; the plan is
 * returned for the caller to fill. */
static rwkv_model_t *s_alloc(const rwkv_config_t *cfg, plan_t *plan, char *err)
{
    rwkv_model_t *m = calloc(1, sizeof *m);
    if (!m) goto oom;
    m->cfg = *cfg;
    m->layers = calloc((size_t)cfg->n_layer, sizeof *m->layers);
    if (!m->layers) goto oom;
    if (s_plan(cfg, m, plan)) goto oom;
    size_t total = 0;
    for (int i = 0; i < plan->n; i++) {
        size_t n = (size_t)s_slot_numel(&plan->slots[i]);
        total += (n + MODEL_ALIGN_FLOATS - 1) / MODEL_ALIGN_FLOATS * MODEL_ALIGN_FLOATS;
    }
    m->arena = aligned_alloc(64, total * sizeof(float) + 64);
    if (!m->arena) {
        st_fail(err, ST_ENOMEM, "cannot allocate %zu MB for the model's weights",
                total * sizeof(float) >> 20);
        rwkv_model_destroy(&m);
        return NULL;
    }
    memset(m->arena, 0, total * sizeof(float));
    m->arena_floats = total;
    float *p = m->arena;
    for (int i = 0; i < plan->n; i++) {
        size_t n = (size_t)s_slot_numel(&plan->slots[i]);
        *plan->slots[i].dst = p;
        p += (n + MODEL_ALIGN_FLOATS - 1) / MODEL_ALIGN_FLOATS * MODEL_ALIGN_FLOATS;
    }
    return m;
oom:
    st_fail(err, ST_ENOMEM, "out of memory allocating a model");
    rwkv_model_destroy(&m);
    return NULL;
}

int64_t rwkv_model_param_count(const rwkv_model_t *self)
{
    plan_t plan = {0};
    int64_t n = 0;
    if (s_plan(&self->cfg, NULL, &plan) == ST_OK)
        for (int i = 0; i < plan.n; i++) n += s_slot_numel(&plan.slots[i]);
    free(plan.slots);
    return n;
}

/* ---- loading ------------------------------------------------------------------ */

/* Official and stored shapes agree once leading 1s are dropped from both. */
static int s_shape_ok(const tf_tensor_info_t *t, const slot_t *s)
{
    int skip = 0;
    while (skip < t->ndim - 1 && t->shape[skip] == 1 && t->ndim - skip > s->ndim) skip++;
    if (t->ndim - skip != s->ndim) return 0;
    for (int d = 0; d < s->ndim; d++)
        if (t->shape[skip + d] != s->shape[d]) return 0;
    return 1;
}

static void s_shape_str(const int64_t *shape, int ndim, char *buf, size_t len)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (o < len) snprintf(buf + o, len - o, "]");
}

/* The file's sha256 is computed on a second thread while the weights are
 * converted: hashing a large checkpoint streams the whole file and takes as
 * long as the conversion, so doing both at once nearly halves a load. */
typedef struct {
    const char *path;
    char hex[65];
    char err[ST_ERR_LEN];
    int rc;
} hash_job_t;

static void *s_hash_main(void *arg)
{
    hash_job_t *j = arg;
    j->rc = st_sha256_file(j->path, j->hex, j->err);
    return NULL;
}

rwkv_model_t *rwkv_model_load(const char *path, char *err)
{
    rwkv_model_t *m = NULL;
    plan_t plan = {0};
    int rc = ST_OK;
    tensorfile_t *tf = tensorfile_open(path, err);
    if (!tf) return NULL; /* err names the file already */
    hash_job_t hash = {.path = path};
    pthread_t hasher;
    int hashing = pthread_create(&hasher, NULL, s_hash_main, &hash) == 0;
    rwkv_config_t cfg;
    rc = rwkv_config_from_tensorfile(tf, &cfg, err);
    if (!rc) rc = s_check_config(&cfg, err);
    if (rc) goto fail;
    m = s_alloc(&cfg, &plan, err);
    if (!m) {
        rc = ST_ENOMEM;
        goto fail;
    }
    int64_t by_dtype[8] = {0};
    for (int i = 0; i < plan.n; i++) {
        const slot_t *s = &plan.slots[i];
        const tf_tensor_info_t *t = tensorfile_find(tf, s->name);
        if (!t) {
            rc = st_fail(err, ST_EFORMAT, "tensor '%s' is missing", s->name);
            goto fail;
        }
        if (!s_shape_ok(t, s)) {
            char got[96], want[96];
            s_shape_str(t->shape, t->ndim, got, sizeof got);
            s_shape_str(s->shape, s->ndim, want, sizeof want);
            rc = st_fail(err, ST_EFORMAT, "tensor '%s' has shape %s, expected %s", s->name, got,
                         want);
            goto fail;
        }
        rc = tensorfile_read_f32(tf, t, *s->dst, err);
        if (rc) goto fail;
        const float *x = *s->dst;
        for (int64_t k = 0; k < t->numel; k++)
            if (!isfinite(x[k])) {
                rc = st_fail(err, ST_ENUMERIC, "tensor '%s' holds NaN or inf at element %lld",
                             s->name, (long long)k);
                goto fail;
            }
        if ((unsigned)t->dtype < 8) by_dtype[t->dtype] += t->numel;
    }
    int best = 0;
    for (int d = 1; d < 8; d++)
        if (by_dtype[d] > by_dtype[best]) best = d;
    m->source_dtype = best;
    if (hashing) {
        pthread_join(hasher, NULL);
        hashing = 0;
    } else {
        s_hash_main(&hash); /* no thread to be had: hash here */
    }
    if (hash.rc) {
        rc = st_fail(err, hash.rc, "%s", hash.err);
        goto fail;
    }
    memcpy(m->sha256, hash.hex, sizeof m->sha256);
    m->path = strdup(path);
    if (!m->path) {
        rc = st_fail(err, ST_ENOMEM, "out of memory");
        goto fail;
    }
    free(plan.slots);
    tensorfile_close(&tf);
    return m;
fail:
    if (hashing) pthread_join(hasher, NULL); /* it reads path; wait before returning */
    free(plan.slots);
    tensorfile_close(&tf);
    rwkv_model_destroy(&m);
    st_wrap(err, rc, "model '%s': ", path);
    return NULL;
}

/* ---- random models ------------------------------------------------------------ */

/* Fills x with values uniform in [-lim, lim), two per 64-bit draw: the fill
 * of a 1.5B-parameter benchmark model must take seconds, not minutes. */
static void s_fill_uniform(float *x, size_t n, double lim, uint64_t *s)
{
    const float scale = (float)(2.0 * lim * 0x1p-24), shift = (float)lim;
    size_t i = 0;
    for (; i + 1 < n; i += 2) {
        uint64_t r = st_splitmix64(s);
        x[i] = (float)(uint32_t)(r >> 40) * scale - shift;
        x[i + 1] = (float)(uint32_t)((r >> 8) & 0xffffffu) * scale - shift;
    }
    if (i < n) x[i] = (float)(uint32_t)(st_splitmix64(s) >> 40) * scale - shift;
}

/* Zero-mean noise of standard deviation std. Uniform rather than Gaussian
 * (the scale is what matters for a random model, and it is several times
 * cheaper): uniform on [-a, a] has std a / sqrt(3). */
static void s_fill_noise(float *x, size_t n, double std, uint64_t *s)
{
    s_fill_uniform(x, n, std * 1.7320508075688772, s);
}

static void s_fill_const(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++) x[i] = v;
}

rwkv_model_t *rwkv_model_new_random(const rwkv_config_t *cfg_in, uint64_t seed, char *err)
{
    rwkv_config_t cfg = *cfg_in;
    cfg.head_size = RWKV_HEAD_SIZE;
    cfg.n_head = cfg.n_embd / RWKV_HEAD_SIZE;
    if (cfg.ffn_dim <= 0) cfg.ffn_dim = 4 * cfg.n_embd;
    if (s_check_config(&cfg, err)) return NULL;
    plan_t plan = {0};
    rwkv_model_t *m = s_alloc(&cfg, &plan, err);
    free(plan.slots);
    if (!m) return NULL;
    int L = cfg.n_layer, C = cfg.n_embd, V = cfg.vocab, F = cfg.ffn_dim, N = cfg.head_size;
    size_t CC = (size_t)C * C;
    uint64_t s = seed;
    double rc = 1.0 / sqrt((double)C);
    /* The official initialisation (RWKV-LM, RWKV-v7/train_temp/src/model.py)
     * with one change: weights it sets to zero (w1, a1, v1, g1, att.output,
     * ffn.value) get small random values here, and the embedding unit
     * variance instead of +-1e-4 (with which LayerNorm's eps would dominate). A frozen model initialised officially would
     * pass the residual stream through untouched, leaving the state with no
     * effect on the logits and benchmarks and gradient tests with nothing to
     * measure. */
    s_fill_noise(m->emb, (size_t)V * C, 1.0, &s);
    s_fill_const(m->ln_out_w, (size_t)C, 1.0f);
    s_fill_noise(m->head, (size_t)V * C, 0.5 * rc, &s); /* orthogonal, gain 0.5 sqrt(V/C) */
    for (int l = 0; l < L; l++) {
        rwkv_layer_t *y = &m->layers[l];
        double r01 = L > 1 ? (double)l / (L - 1) : 0.0; /* 0 to 1 */
        double r10 = 1.0 - (double)l / L;              /* 1 to almost 0 */
        if (l == 0) s_fill_const(y->ln0_w, (size_t)C, 1.0f);
        s_fill_const(y->ln1_w, (size_t)C, 1.0f);
        s_fill_const(y->ln2_w, (size_t)C, 1.0f);
        for (int i = 0; i < C; i++) {
            double ddd = (double)i / C;
            double lin = (double)i / (C - 1) - 0.5;
            double zz = ((i % N) - (N - 1) / 2.0) / ((N - 1) / 2.0);
            zz = zz * fabs(zz);
            double www = -6.0 + 6.0 * pow((double)i / (C - 1), 1.0 + pow(r01, 0.3));
            y->x_r[i] = (float)(1.0 - pow(ddd, 0.2 * r10));
            y->x_w[i] = (float)(1.0 - pow(ddd, 0.9 * r10));
            y->x_k[i] = (float)(1.0 - pow(ddd, 0.7 * r10));
            y->x_v[i] = (float)(1.0 - pow(ddd, 0.7 * r10));
            y->x_a[i] = (float)(1.0 - pow(ddd, 0.9 * r10));
            y->x_g[i] = (float)(1.0 - pow(ddd, 0.2 * r10));
            y->w0[i] = (float)(www + 0.5 + zz * 2.5);
            y->a0[i] = (float)(-0.19 + zz * 0.3 + lin * 0.4);
            if (y->v0) y->v0[i] = (float)(0.73 - lin * 0.4);
            y->k_k[i] = (float)(0.71 - lin * 0.1);
            y->k_a[i] = 1.02f;
            y->ln_x_w[i] = (float)pow((1.0 + l) / L, 0.7);
            y->ffn_x_k[i] = (float)(1.0 - pow(ddd, pow(r10, 4)));
        }
        /* LoRA: down projections small, up projections "orthogonal" with
         * gain 0.1, i.e. entries of std 0.1/sqrt(C) */
        s_fill_uniform(y->w1, (size_t)C * cfg.d_decay, 0.5 * rc, &s);
        s_fill_noise(y->w2, (size_t)cfg.d_decay * C, 0.1 * rc, &s);
        s_fill_uniform(y->a1, (size_t)C * cfg.d_aaa, 0.5 * rc, &s);
        s_fill_noise(y->a2, (size_t)cfg.d_aaa * C, 0.1 * rc, &s);
        if (y->v1) {
            s_fill_uniform(y->v1, (size_t)C * cfg.d_mv, 0.5 * rc, &s);
            s_fill_noise(y->v2, (size_t)cfg.d_mv * C, 0.1 * rc, &s);
        }
        s_fill_uniform(y->g1, (size_t)C * cfg.d_gate, 0.5 * rc, &s);
        s_fill_noise(y->g2, (size_t)cfg.d_gate * C, 0.1 * rc, &s);
        s_fill_const(y->r_k, (size_t)C, -0.04f);
        s_fill_uniform(y->receptance, CC, 0.5 * rc, &s);
        s_fill_uniform(y->key, CC, 0.05 * rc, &s);
        s_fill_uniform(y->value, CC, 0.5 * rc, &s);
        s_fill_uniform(y->output, CC, 0.5 * rc, &s);
        s_fill_uniform(y->ffn_key, (size_t)F * C, 0.5 * rc, &s);
        s_fill_uniform(y->ffn_value, (size_t)C * F, 0.5 / sqrt((double)F), &s);
    }
    m->source_dtype = TF_F32;
    /* identity: a hash of what determines the weights, so equal random models
     * are the same model to the registry */
    char desc[256];
    int n = snprintf(desc, sizeof desc, "statetune-random-v1 L%d C%d V%d F%d D%d/%d/%d/%d seed %llu",
                     L, C, V, F, cfg.d_decay, cfg.d_aaa, cfg.d_mv, cfg.d_gate,
                     (unsigned long long)seed);
    st_sha256_hex(desc, (size_t)n, m->sha256);
    m->path = strdup("random");
    if (!m->path) {
        st_fail(err, ST_ENOMEM, "out of memory");
        rwkv_model_destroy(&m);
    }
    return m;
}
