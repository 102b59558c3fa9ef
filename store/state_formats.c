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
    default: return "auto";
    }
}

int state_format_parse(const char *name, state_format_t *out, char *err)
{
    if (name && !strcmp(name, "safetensors")) *out = STATE_FMT_SAFETENSORS;
    else if (name && (!strcmp(name, "pth") || !strcmp(name, "pt"))) *out = STATE_FMT_PTH;
    else if (name && !strcmp(name, "st")) *out = STATE_FMT_ST;
    else return st_fail(err, ST_EINVAL, "unknown state format '%s' (use safetensors, pth or st)", name ? name : "");
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
                               char *err)
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
    json_object_set_new(hdr, "__metadata__", json_pack("{s:s}", "format", "pt"));
    for (int l = 0; l < L; l++) {
        char name[64];
        snprintf(name, sizeof name, "blocks.%d.att.time_state", l);
        json_object_set_new(hdr, name,
                            json_pack("{s:s, s:[i,i,i], s:[I,I]}", "dtype", f16_transposed ? "F16" : "F32", "shape", H,
                                      N, N, "data_offsets", (json_int_t)(l * per * esize),
                                      (json_int_t)((l + 1) * per * esize)));
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
                       "this state carries a kernel-expanded U0 (%d features) that %s files cannot hold; "
                       "only statetune itself can evaluate it",
                       kernel_features, state_format_name(fmt));
    if (n_layer < 1 || n_layer > STATE_MAX_LAYERS || n_head < 1 || head_size < 1 || !data)
        return st_fail(err, ST_EINVAL, "cannot write a state of shape [%d, %d, %d, %d]", n_layer, n_head, head_size,
                       head_size);
    switch (fmt) {
    case STATE_FMT_SAFETENSORS: return s_write_safetensors(path, n_layer, n_head, head_size, data, 0, err);
    case STATE_FMT_ST: return s_write_safetensors(path, n_layer, n_head, head_size, data, 1, err);
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
