/*
 * state_formats.c - writing tuned states as safetensors, torch .pth and Ai00
 * .st files, and reading such files back (see state_formats.h for the three
 * layouts). No SQL here: the registry hands over plain float arrays.
 *
 * The .pth writer builds exactly what torch.save produces for a state dict,
 * using only pickle opcodes that torch's weights_only unpickler and our own
 * safe pickle reader (model/pth.c) accept: PROTO 2, GLOBAL for
 * collections.OrderedDict, torch._utils._rebuild_tensor_v2 and
 * torch.FloatStorage, MARK/TUPLE, BINPERSID for the storage keys, BININT*,
 * BINUNICODE, NEWFALSE, REDUCE, SETITEMS and STOP; no memo is needed. The
 * zip is assembled in memory by libzip with stored (uncompressed) entries
 * and a fixed timestamp, so the same state always gives the same bytes, and
 * is then written atomically.
 */
#include "store/state_formats.h"
#include "common/st_err.h"
#include "common/st_fs.h"
#include "common/st_half.h"
#include "model/tensorfile.h"

#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <unistd.h>
#include <zip.h>

#define STATE_MAX_LAYERS 4096

const char *state_format_name(state_format_t fmt)
{
    switch (fmt) {
    case STATE_FMT_SAFETENSORS: return "safetensors";
    case STATE_FMT_PTH: return "pth";
    case STATE_FMT_ST: return "st";
    case STATE_FMT_STATETUNE: return "statetune";
    default: return "auto";
    }
}

int state_format_parse(const char *name, state_format_t *out, char *err)
{
    if (name && !strcmp(name, "safetensors")) *out = STATE_FMT_SAFETENSORS;
    else if (name && (!strcmp(name, "pth") || !strcmp(name, "pt"))) *out = STATE_FMT_PTH;
    else if (name && !strcmp(name, "st")) *out = STATE_FMT_ST;
    else if (name && !strcmp(name, "statetune")) *out = STATE_FMT_STATETUNE;
    else return st_fail(err, ST_EINVAL, "unknown state format '%s' (use safetensors, pth, st or statetune)",
                        name ? name : "");
    return ST_OK;
}

static int s_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

int state_format_from_path(const char *path, state_format_t *out, char *err)
{
    if (s_ends_with(path, ".safetensors")) *out = STATE_FMT_SAFETENSORS;
    else if (s_ends_with(path, ".pth") || s_ends_with(path, ".pt")) *out = STATE_FMT_PTH;
    else if (s_ends_with(path, ".st")) *out = STATE_FMT_ST;
    else
        return st_fail(err, ST_EINVAL,
                       "cannot tell the format of '%s' from its extension; use .safetensors, .pth or .st, or --format",
                       path);
    return ST_OK;
}

/* ---- a growable byte buffer -------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int oom;
} s_buf;

static void s_put(s_buf *b, const void *data, size_t n)
{
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void s_put_u8(s_buf *b, uint8_t v) { s_put(b, &v, 1); }

static void s_put_le(s_buf *b, uint64_t v, int bytes)
{
    uint8_t t[8];
    for (int i = 0; i < bytes; i++) t[i] = (uint8_t)(v >> (8 * i));
    s_put(b, t, (size_t)bytes);
}

/* ---- safetensors and .st ---------------------------------------------- */

/* Writes the safetensors container. f16_transposed selects the .st layout. */
static int s_write_safetensors(const char *path, int L, int H, int N, const float *data, int f16_transposed,
                               const state_kstate_t *ks, char *err)
{
    size_t per = (size_t)H * N * N, esize = f16_transposed ? 2 : 4;
    if (f16_transposed) {
        /* fp16 holds at most 65504: a larger value would be written as inf
         * and the engine would load a state that is not the tuned one. */
        for (size_t i = 0; i < (size_t)L * per; i++)
            if (!(fabsf(data[i]) <= 65504.0f)) {
                size_t l = i / per, h = (i % per) / ((size_t)N * N);
                return st_fail(err, ST_EINVAL,
                               "the state holds %g at layer %zu head %zu, beyond fp16's range (65504): "
                               "export it as safetensors or pth instead of .st",
                               (double)data[i], l, h);
            }
    }
    json_t *hdr = json_object();
    json_object_set_new(hdr, "__metadata__", json_pack("{s:s}", "format", ks ? "statetune" : "pt"));
    for (int l = 0; l < L; l++) {
        char name[64];
        snprintf(name, sizeof name, "blocks.%d.att.time_state", l);
        json_object_set_new(hdr, name,
                            json_pack("{s:s, s:[i,i,i], s:[I,I]}", "dtype", f16_transposed ? "F16" : "F32", "shape", H,
                                      N, N, "data_offsets", (json_int_t)(l * per * esize),
                                      (json_int_t)((l + 1) * per * esize)));
    }
    size_t kper = ks ? (size_t)H * N * ks->M : 0, base = (size_t)L * per * 4;
    if (ks) { /* statetune's own format: U0 of every layer, then the support vectors */
        char txt[32];
        json_t *meta = json_object_get(hdr, "__metadata__");
        snprintf(txt, sizeof txt, "%d", ks->M);
        json_object_set_new(meta, "kernel_features", json_string(txt));
        snprintf(txt, sizeof txt, "%.9g", (double)ks->gamma);
        json_object_set_new(meta, "gamma", json_string(txt));
        for (int which = 0; which < 2; which++)
            for (int l = 0; l < L; l++) {
                char name[64];
                snprintf(name, sizeof name, "blocks.%d.att.%s", l, which ? "kstate_support" : "kstate_u0");
                size_t off = base + ((size_t)which * L + l) * kper * 4;
                json_object_set_new(hdr, name,
                                    json_pack("{s:s, s:[i,i,i], s:[I,I]}", "dtype", "F32", "shape", H,
                                              which ? ks->M : N, which ? N : ks->M, "data_offsets", (json_int_t)off,
                                              (json_int_t)(off + kper * 4)));
            }
    }
    char *text = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    if (!text) return st_fail(err, ST_ENOMEM, "out of memory writing '%s'", path);
    /* The header is padded with spaces to 8 bytes so the data is aligned. */
    size_t hlen = strlen(text), padded = (hlen + 7) & ~(size_t)7;
    s_buf b = {0};
    s_put_le(&b, padded, 8);
    s_put(&b, text, hlen);
    for (size_t i = hlen; i < padded; i++) s_put_u8(&b, ' ');
    free(text);
    if (!f16_transposed) {
        for (size_t i = 0; i < (size_t)L * per; i++) {
            uint32_t u;
            memcpy(&u, &data[i], 4);
            s_put_le(&b, u, 4);
        }
    } else {
        /* out[l][h][k][v] = in[l][h][v][k], rounded to nearest-even fp16. */
        for (int l = 0; l < L; l++)
            for (int h = 0; h < H; h++) {
                const float *S = data + ((size_t)l * H + h) * N * N;
                for (int k = 0; k < N; k++)
                    for (int v = 0; v < N; v++) s_put_le(&b, st_f32_to_f16(S[(size_t)v * N + k]), 2);
            }
    }
    for (int which = 0; ks && which < 2; which++) {
        const float *src = which ? ks->support : ks->u0;
        for (size_t i = 0; i < (size_t)L * kper; i++) {
            uint32_t u;
            memcpy(&u, &src[i], 4);
            s_put_le(&b, u, 4);
        }
    }
    int rc = b.oom ? st_fail(err, ST_ENOMEM, "out of memory writing '%s'", path)
                   : st_write_file_atomic(path, b.p, b.n, err);
    free(b.p);
    return rc;
}

/* ---- pickle for .pth ----------------------------------------------------- */

enum {
    P_MARK = '(', P_STOP = '.', P_BININT = 'J', P_BININT1 = 'K', P_BININT2 = 'M', P_BINPERSID = 'Q',
    P_REDUCE = 'R', P_BINUNICODE = 'X', P_GLOBAL = 'c', P_SETITEMS = 'u', P_TUPLE = 't', P_EMPTY_TUPLE = ')',
    P_PROTO = 0x80, P_NEWFALSE = 0x89, P_LONG1 = 0x8a,
};

static void s_pk_int(s_buf *b, int64_t v)
{
    if (v >= 0 && v < 256) {
        s_put_u8(b, P_BININT1);
        s_put_u8(b, (uint8_t)v);
    } else if (v >= 0 && v < 65536) {
        s_put_u8(b, P_BININT2);
        s_put_le(b, (uint64_t)v, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        s_put_u8(b, P_BININT);
        s_put_le(b, (uint64_t)(uint32_t)(int32_t)v, 4);
    } else { /* two's complement little-endian, 8 bytes is always enough */
        s_put_u8(b, P_LONG1);
        s_put_u8(b, 8);
        s_put_le(b, (uint64_t)v, 8);
    }
}

static void s_pk_str(s_buf *b, const char *s)
{
    size_t n = strlen(s);
    s_put_u8(b, P_BINUNICODE);
    s_put_le(b, n, 4);
    s_put(b, s, n);
}

static void s_pk_global(s_buf *b, const char *module, const char *name)
{
    s_put_u8(b, P_GLOBAL);
    s_put(b, module, strlen(module));
    s_put_u8(b, '\n');
    s_put(b, name, strlen(name));
    s_put_u8(b, '\n');
}

static void s_pk_ordered_dict(s_buf *b)
{
    s_pk_global(b, "collections", "OrderedDict");
    s_put_u8(b, P_EMPTY_TUPLE);
    s_put_u8(b, P_REDUCE);
}

/* The pickle of OrderedDict{blocks.{l}.att.time_state: tensor [H,N,N] F32
 * on storage key "l"}, as torch.save writes it. */
static void s_pickle_state_dict(s_buf *b, int L, int H, int N)
{
    s_put_u8(b, P_PROTO);
    s_put_u8(b, 2);
    s_pk_ordered_dict(b);
    s_put_u8(b, P_MARK);
    for (int l = 0; l < L; l++) {
        char name[64], key[16];
        snprintf(name, sizeof name, "blocks.%d.att.time_state", l);
        snprintf(key, sizeof key, "%d", l);
        s_pk_str(b, name);
        s_pk_global(b, "torch._utils", "_rebuild_tensor_v2");
        s_put_u8(b, P_MARK); /* args of _rebuild_tensor_v2 */
        s_put_u8(b, P_MARK); /* persistent id ('storage', FloatStorage, key, 'cpu', numel) */
        s_pk_str(b, "storage");
        s_pk_global(b, "torch", "FloatStorage");
        s_pk_str(b, key);
        s_pk_str(b, "cpu");
        s_pk_int(b, (int64_t)H * N * N);
        s_put_u8(b, P_TUPLE);
        s_put_u8(b, P_BINPERSID);
        s_pk_int(b, 0); /* storage offset */
        s_put_u8(b, P_MARK);
        s_pk_int(b, H);
        s_pk_int(b, N);
        s_pk_int(b, N);
        s_put_u8(b, P_TUPLE); /* size */
        s_put_u8(b, P_MARK);
        s_pk_int(b, (int64_t)N * N);
        s_pk_int(b, N);
        s_pk_int(b, 1);
        s_put_u8(b, P_TUPLE); /* stride */
        s_put_u8(b, P_NEWFALSE); /* requires_grad */
        s_pk_ordered_dict(b);    /* backward hooks */
        s_put_u8(b, P_TUPLE);
        s_put_u8(b, P_REDUCE);
    }
    s_put_u8(b, P_SETITEMS);
    s_put_u8(b, P_STOP);
}

static int s_zip_add(zip_t *za, const char *name, const void *data, size_t len, const char *path, char *err)
{
    zip_source_t *src = zip_source_buffer(za, data, len, 0);
    zip_int64_t idx = src ? zip_file_add(za, name, src, ZIP_FL_ENC_UTF_8 | ZIP_FL_OVERWRITE) : -1;
    if (idx < 0) {
        if (src) zip_source_free(src);
        return st_fail(err, ST_EIO, "writing '%s': adding %s to the zip: %s", path, name, zip_strerror(za));
    }
    /* Stored, as torch.save does, with a fixed 1980-01-01 timestamp. */
    if (zip_set_file_compression(za, (zip_uint64_t)idx, ZIP_CM_STORE, 0) < 0 ||
        zip_file_set_dostime(za, (zip_uint64_t)idx, 0, (1 << 5) | 1, 0) < 0)
        return st_fail(err, ST_EIO, "writing '%s': %s", path, zip_strerror(za));
    return ST_OK;
}

static int s_write_pth(const char *path, int L, int H, int N, const float *data, char *err)
{
    s_buf pk = {0};
    s_pickle_state_dict(&pk, L, H, N);
    if (pk.oom) return st_fail(err, ST_ENOMEM, "out of memory writing '%s'", path);

    int rc = ST_OK;
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *mem = zip_source_buffer_create(NULL, 0, 0, &ze);
    zip_t *za = mem ? zip_open_from_source(mem, ZIP_TRUNCATE, &ze) : NULL;
    uint8_t *out = NULL;
    if (!za) {
        rc = st_fail(err, ST_EIO, "writing '%s': %s", path, zip_error_strerror(&ze));
        if (mem) zip_source_free(mem);
        mem = NULL;
        goto done;
    }
    zip_source_keep(mem); /* we read the archive back after zip_close */
    static const char version[] = "3\n", byteorder[] = "little";
    if ((rc = s_zip_add(za, "archive/data.pkl", pk.p, pk.n, path, err))) goto done;
    if ((rc = s_zip_add(za, "archive/byteorder", byteorder, strlen(byteorder), path, err))) goto done;
    size_t per = (size_t)H * N * N * sizeof(float);
    for (int l = 0; l < L && rc == ST_OK; l++) {
        char name[64];
        snprintf(name, sizeof name, "archive/data/%d", l);
        rc = s_zip_add(za, name, (const uint8_t *)data + l * per, per, path, err);
    }
    if (rc) goto done;
    if ((rc = s_zip_add(za, "archive/version", version, strlen(version), path, err))) goto done;
    if (zip_close(za) < 0) {
        rc = st_fail(err, ST_EIO, "writing '%s': %s", path, zip_strerror(za));
        goto done;
    }
    za = NULL;
    zip_stat_t zs;
    if (zip_source_stat(mem, &zs) < 0 || zip_source_open(mem) < 0) {
        rc = st_fail(err, ST_EIO, "writing '%s': reading the zip back: %s", path,
                     zip_error_strerror(zip_source_error(mem)));
        goto done;
    }
    out = malloc(zs.size ? zs.size : 1);
    zip_int64_t got = out ? zip_source_read(mem, out, zs.size) : -1;
    zip_source_close(mem);
    if (got < 0 || (zip_uint64_t)got != zs.size) {
        rc = st_fail(err, out ? ST_EIO : ST_ENOMEM, "writing '%s': could not read the zip back", path);
        goto done;
    }
    rc = st_write_file_atomic(path, out, zs.size, err);
done:
    if (za) zip_discard(za);
    if (mem) zip_source_free(mem);
    free(out);
    free(pk.p);
    return rc;
}

/* ---- entry points -------------------------------------------------------- */

int state_write(const char *path, state_format_t fmt, int n_layer, int n_head, int head_size, const float *data,
                int kernel_features, char *err)
{
    int rc;
    if (fmt == STATE_FMT_AUTO && (rc = state_format_from_path(path, &fmt, err))) return rc;
    if (kernel_features > 0)
        return st_fail(err, ST_EUNSUPPORTED,
                       "it has a kernel-expanded part (U0 with M=%d) that standard %s files cannot hold; use --format "
                       "statetune",
                       kernel_features, state_format_name(fmt));
    if (n_layer < 1 || n_layer > STATE_MAX_LAYERS || n_head < 1 || head_size < 1 || !data)
        return st_fail(err, ST_EINVAL, "cannot write a state of shape [%d, %d, %d, %d]", n_layer, n_head, head_size,
                       head_size);
    switch (fmt) {
    case STATE_FMT_SAFETENSORS: return s_write_safetensors(path, n_layer, n_head, head_size, data, 0, NULL, err);
    case STATE_FMT_ST: return s_write_safetensors(path, n_layer, n_head, head_size, data, 1, NULL, err);
    case STATE_FMT_STATETUNE: return state_write_statetune(path, n_layer, n_head, head_size, data, NULL, err);
    case STATE_FMT_PTH: return s_write_pth(path, n_layer, n_head, head_size, data, err);
    default: return st_fail(err, ST_EINVAL, "unknown state format %d", (int)fmt);
    }
}

void state_file_free(state_file_t *s)
{
    if (!s) return;
    free(s->data);
    memset(s, 0, sizeof *s);
}

int state_read(const char *path, state_format_t fmt, state_file_t *out, char *err)
{
    memset(out, 0, sizeof *out);
    if (fmt == STATE_FMT_AUTO && state_format_from_path(path, &fmt, NULL) != ST_OK)
        fmt = STATE_FMT_SAFETENSORS; /* any other name: the content decides, official layout */
    if (access(path, R_OK) != 0) return st_fail(err, ST_ENOTFOUND, "cannot read state file '%s': %s", path, strerror(errno));
    tensorfile_t *tf = tensorfile_open(path, err);
    if (!tf) return st_wrap(err, ST_EFORMAT, "reading state '%s': ", path);
    int rc = ST_OK, L = 0;
    /* Count layers 0..L-1; a time_state beyond a gap is an error. */
    int nt = tensorfile_count(tf), n_state = 0;
    for (int i = 0; i < nt; i++)
        if (strstr(tensorfile_info(tf, i)->name, ".att.time_state")) n_state++;
    for (;; L++) {
        char name[64];
        snprintf(name, sizeof name, "blocks.%d.att.time_state", L);
        if (!tensorfile_find(tf, name)) break;
    }
    if (n_state == 0) {
        rc = st_fail(err, ST_EFORMAT, "'%s' holds no blocks.N.att.time_state tensor; is it a state file?", path);
        goto done;
    }
    if (L != n_state) {
        rc = st_fail(err, ST_EFORMAT, "'%s': time_state tensors are not numbered 0..%d without gaps (blocks.%d is missing)",
                     path, n_state - 1, L);
        goto done;
    }
    const tf_tensor_info_t *t0 = tensorfile_find(tf, "blocks.0.att.time_state");
    if (t0->ndim != 3 || t0->shape[1] != t0->shape[2] || t0->shape[0] < 1 || t0->shape[1] < 1 ||
        t0->shape[0] > 4096 || t0->shape[1] > 1024) {
        rc = st_fail(err, ST_EFORMAT, "'%s': blocks.0.att.time_state is not [H, N, N]", path);
        goto done;
    }
    int H = (int)t0->shape[0], N = (int)t0->shape[1];
    size_t per = (size_t)H * N * N;
    float *data = malloc((size_t)L * per * sizeof(float));
    float *tmp = fmt == STATE_FMT_ST ? malloc(per * sizeof(float)) : NULL;
    if (!data || (fmt == STATE_FMT_ST && !tmp)) {
        free(data);
        free(tmp);
        rc = st_fail(err, ST_ENOMEM, "out of memory reading '%s'", path);
        goto done;
    }
    for (int l = 0; l < L && rc == ST_OK; l++) {
        char name[64];
        snprintf(name, sizeof name, "blocks.%d.att.time_state", l);
        const tf_tensor_info_t *t = tensorfile_find(tf, name);
        if (t->ndim != 3 || t->shape[0] != H || t->shape[1] != N || t->shape[2] != N) {
            rc = st_fail(err, ST_EFORMAT, "'%s': %s is not [%d, %d, %d] like layer 0", path, name, H, N, N);
            break;
        }
        float *dst = data + l * per;
        rc = tensorfile_read_f32(tf, t, fmt == STATE_FMT_ST ? tmp : dst, err);
        if (rc == ST_OK && fmt == STATE_FMT_ST) /* [h][k][v] back to [h][v][k] */
            for (int h = 0; h < H; h++)
                for (int v = 0; v < N; v++)
                    for (int k = 0; k < N; k++)
                        dst[((size_t)h * N + v) * N + k] = tmp[((size_t)h * N + k) * N + v];
    }
    free(tmp);
    if (rc) {
        free(data);
        st_wrap(err, rc, "reading state '%s': ", path);
        goto done;
    }
    out->n_layer = L;
    out->n_head = H;
    out->head_size = N;
    out->data = data;
done:
    tensorfile_close(&tf);
    return rc;
}

/* ---- statetune's own format: the kernel-expanded part ------------------- */

int state_write_statetune(const char *path, int n_layer, int n_head, int head_size, const float *data,
                          const state_kstate_t *ks, char *err)
{
    if (n_layer < 1 || n_layer > STATE_MAX_LAYERS || n_head < 1 || head_size < 1 || !data)
        return st_fail(err, ST_EINVAL, "cannot write a state of shape [%d, %d, %d, %d]", n_layer, n_head, head_size,
                       head_size);
    if (ks && ks->M > 0) {
        if (ks->M > STATE_MAX_FEATURES || !(ks->gamma > 0) || !isfinite(ks->gamma) || !ks->u0 || !ks->support)
            return st_fail(err, ST_EINVAL, "cannot write a kernel-expanded part of %d features and gamma %g", ks->M,
                           (double)ks->gamma);
        return s_write_safetensors(path, n_layer, n_head, head_size, data, 0, ks, err);
    }
    return s_write_safetensors(path, n_layer, n_head, head_size, data, 0, NULL, err);
}

void state_kstate_free(state_kstate_t *ks)
{
    if (!ks) return;
    free(ks->u0);
    free(ks->support);
    memset(ks, 0, sizeof *ks);
}

/* A string of the safetensors header's __metadata__ (jansson over the
 * header; tensorfile.h does not keep the metadata). *out is malloc'd, NULL
 * when the key is absent. */
static int s_st_meta(const char *path, const char *key, char **out, char *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return st_fail(err, ST_EIO, "cannot open '%s': %s", path, strerror(errno));
    unsigned char n8[8];
    int rc = ST_OK;
    char *hdr = NULL;
    if (fread(n8, 1, 8, f) != 8) {
        rc = st_fail(err, ST_EFORMAT, "'%s' is too short for a safetensors file", path);
        goto done;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | n8[i];
    if (n < 2 || n > ((uint64_t)100 << 20)) {
        rc = st_fail(err, ST_EFORMAT, "'%s' has a safetensors header of %llu bytes", path, (unsigned long long)n);
        goto done;
    }
    hdr = malloc((size_t)n);
    if (!hdr || fread(hdr, 1, (size_t)n, f) != (size_t)n) {
        rc = st_fail(err, hdr ? ST_EFORMAT : ST_ENOMEM, "cannot read the header of '%s'", path);
        goto done;
    }
    json_error_t je;
    json_t *h = json_loadb(hdr, (size_t)n, 0, &je);
    if (!h) {
        rc = st_fail(err, ST_EFORMAT, "'%s': the safetensors header is not JSON (%s)", path, je.text);
        goto done;
    }
    const char *v = json_string_value(json_object_get(json_object_get(h, "__metadata__"), key));
    if (v && !(*out = strdup(v))) rc = st_fail(err, ST_ENOMEM, "out of memory");
    json_decref(h);
done:
    free(hdr);
    fclose(f);
    return rc;
}

/* The kstate tensors of a file: none at all (ks->M = 0), or every layer's
 * U0 and support of one shape; L, H, N from the state. */
static int s_read_kstate(const char *path, int L, int H, int N, state_kstate_t *ks, char *err)
{
    memset(ks, 0, sizeof *ks);
    tensorfile_t *tf = tensorfile_open(path, err);
    if (!tf) return st_wrap(err, ST_EFORMAT, "reading the kernel-expanded part of '%s': ", path);
    int rc = ST_OK;
    char name[80];
    const tf_tensor_info_t *u = tensorfile_find(tf, "blocks.0.att.kstate_u0");
    if (!u) goto done; /* a state without a kernel-expanded part */
    if (u->ndim != 3 || u->shape[0] != H || u->shape[1] != N || u->shape[2] < 1 || u->shape[2] > STATE_MAX_FEATURES) {
        rc = st_fail(err, ST_EFORMAT, "'%s': blocks.0.att.kstate_u0 is not [%d, %d, M] with 1 <= M <= %d", path, H, N,
                     STATE_MAX_FEATURES);
        goto done;
    }
    int M = (int)u->shape[2];
    size_t per = (size_t)H * N * M;
    ks->u0 = malloc((size_t)L * per * sizeof(float));
    ks->support = malloc((size_t)L * per * sizeof(float));
    if (!ks->u0 || !ks->support) {
        rc = st_fail(err, ST_ENOMEM, "out of memory reading '%s'", path);
        goto done;
    }
    for (int l = 0; l < L && rc == ST_OK; l++)
        for (int which = 0; which < 2 && rc == ST_OK; which++) {
            snprintf(name, sizeof name, "blocks.%d.att.%s", l, which ? "kstate_support" : "kstate_u0");
            const tf_tensor_info_t *t = tensorfile_find(tf, name);
            int64_t d1 = which ? M : N, d2 = which ? N : M;
            if (!t || t->ndim != 3 || t->shape[0] != H || t->shape[1] != d1 || t->shape[2] != d2) {
                rc = st_fail(err, ST_EFORMAT, "'%s': %s is %s, the kernel-expanded part needs [%d, %lld, %lld]", path,
                             name, t ? "of another shape" : "missing", H, (long long)d1, (long long)d2);
                break;
            }
            float *dst = (which ? ks->support : ks->u0) + (size_t)l * per;
            rc = tensorfile_read_f32(tf, t, dst, err);
            for (size_t i = 0; rc == ST_OK && i < per; i++)
                if (!isfinite(dst[i])) rc = st_fail(err, ST_ENUMERIC, "'%s': %s holds NaN or inf", path, name);
        }
    if (rc) goto done;
    char *g = NULL;
    if ((rc = s_st_meta(path, "gamma", &g, err))) goto done;
    char *end = NULL;
    double gamma = g ? strtod(g, &end) : 0;
    if (!g || *end || !(gamma > 0) || !isfinite(gamma))
        rc = st_fail(err, ST_EFORMAT, "'%s': the metadata's gamma ('%s') is not a positive number", path, g ? g : "");
    free(g);
    if (rc) goto done;
    ks->M = M;
    ks->gamma = (float)gamma;
done:
    if (rc) state_kstate_free(ks);
    tensorfile_close(&tf);
    return rc;
}

int state_read_statetune(const char *path, state_file_t *out, state_kstate_t *ks_out, char *err)
{
    memset(ks_out, 0, sizeof *ks_out);
    int rc = state_read(path, STATE_FMT_SAFETENSORS, out, err);
    if (rc) return rc;
    rc = s_read_kstate(path, out->n_layer, out->n_head, out->head_size, ks_out, err);
    if (rc) state_file_free(out);
    return rc;
}

int state_kstate_read(const char *path, int n_layer, int n_head, int head_size, state_kstate_t *out, char *err)
{
    int rc = s_read_kstate(path, n_layer, n_head, head_size, out, err);
    if (rc == ST_OK && out->M == 0)
        rc = st_fail(err, ST_EFORMAT, "'%s' holds no blocks.0.att.kstate_u0 tensor; is it a kstate.safetensors?", path);
    return rc;
}
