/*
 * ggmf.c - indexes rwkv.cpp's own model file (`.bin`, docs/FILE_FORMAT.md of
 * rwkv.cpp): a header of six int32 (magic 0x67676d66 "ggmf", version, n_vocab,
 * n_embed, n_layer, data type), then parameters until the end of the file,
 * each {int32 dim_count, int32 key_length, int32 data_type, int32
 * dims[dim_count], key bytes, data}, packed without alignment.
 *
 * rwkv.cpp's RWKV-7 converter changes three things that we undo here so that
 * callers see the official state dict (shared/fixtures/README.md):
 *   - dimensions are written in ggml order, i.e. reversed: [C, V] on disk is
 *     the official [V, C];
 *   - the LoRA matrices w1,w2,a1,a2,v1,v2,g1,g2 are transposed: the dims as
 *     written are the official shape and the bytes are its transpose;
 *   - the six token-shift vectors are concatenated into `att.x_rwkvag`
 *     [6, 1, C] in the order r, w, k, v, a, g, exposed here as the six
 *     official tensors x_r .. x_g of shape [1, 1, C].
 * FP32 (type 0) and FP16 (type 1) parameters are read; rwkv.cpp's quantized
 * types are refused by name. Versions 100 and 101 differ only in the
 * quantized formats, so both are accepted.
 */
#include "model/tensorfile_impl.h"

#include "common/st_err.h"

#include <stdio.h>
#include <string.h>

#define GGMF_MAGIC 0x67676d66u
#define GGMF_MAX_KEY 1024

static int32_t s_i32(const uint8_t *p)
{
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    int32_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static const char *s_type_name(int32_t t)
{
    static const char *names[] = {"FP32", "FP16", "Q4_0", "Q4_1", "Q4_1_O", "Q4_2", "Q4_3",
                                  "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K",
                                  "Q5_K", "Q6_K", "Q8_K"};
    if (t >= 0 && t < (int32_t)(sizeof names / sizeof names[0])) return names[t];
    return NULL;
}

/* blocks.N.att.{w,a,v,g}{1,2}: rwkv.cpp stores these transposed. */
static int s_is_lora(const char *key)
{
    const char *att = strstr(key, ".att.");
    if (strncmp(key, "blocks.", 7) != 0 || !att) return 0;
    const char *leaf = att + 5;
    return strlen(leaf) == 2 && strchr("wavg", leaf[0]) && (leaf[1] == '1' || leaf[1] == '2');
}

static int s_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int tf_open_ggmf(tensorfile_t *self, char *err)
{
    const uint8_t *p = self->map;
    size_t len = self->map_len;
    if (len < 24) return st_fail(err, ST_EFORMAT, "rwkv.cpp file is shorter than its 24-byte header");
    if ((uint32_t)s_i32(p) != GGMF_MAGIC)
        return st_fail(err, ST_EFORMAT, "not a rwkv.cpp file: wrong magic 0x%08x (expected 0x%08x)",
                       (unsigned)s_i32(p), GGMF_MAGIC);
    int32_t version = s_i32(p + 4);
    if (version != 100 && version != 101)
        return st_fail(err, ST_EFORMAT,
                       "rwkv.cpp file version %d is not supported (100 and 101 are)", version);
    for (int i = 2; i < 5; i++)
        if (s_i32(p + 4 * i) <= 0)
            return st_fail(err, ST_EFORMAT, "rwkv.cpp header has a non-positive size (%d)",
                           s_i32(p + 4 * i));
    size_t pos = 24;
    int index = 0;
    while (pos < len) {
        if (len - pos < 12)
            return st_fail(err, ST_EFORMAT, "parameter %d: header cut short at byte %zu", index, pos);
        int32_t ndim = s_i32(p + pos), key_len = s_i32(p + pos + 4), type = s_i32(p + pos + 8);
        pos += 12;
        if (ndim < 1 || ndim > TF_MAX_DIMS)
            return st_fail(err, ST_EFORMAT, "parameter %d has %d dimensions", index, ndim);
        if (key_len < 1 || key_len > GGMF_MAX_KEY)
            return st_fail(err, ST_EFORMAT, "parameter %d has a name of %d bytes", index, key_len);
        if (type != 0 && type != 1) {
            const char *tn = s_type_name(type);
            if (tn)
                return st_fail(err, ST_EUNSUPPORTED,
                               "parameter %d is quantized (%s); only FP32 and FP16 files are "
                               "supported", index, tn);
            return st_fail(err, ST_EFORMAT, "parameter %d has unknown data type %d", index, type);
        }
        if (len - pos < (size_t)ndim * 4 + (size_t)key_len)
            return st_fail(err, ST_EFORMAT, "parameter %d: dimensions or name cut short", index);
        int64_t dims[TF_MAX_DIMS];
        for (int d = 0; d < ndim; d++) {
            dims[d] = s_i32(p + pos + 4 * (size_t)d);
            if (dims[d] < 1)
                return st_fail(err, ST_EFORMAT, "parameter %d has dimension %lld", index,
                               (long long)dims[d]);
        }
        pos += (size_t)ndim * 4;
        char key[GGMF_MAX_KEY + 1];
        memcpy(key, p + pos, (size_t)key_len);
        key[key_len] = 0;
        pos += (size_t)key_len;
        if (strlen(key) != (size_t)key_len)
            return st_fail(err, ST_EFORMAT, "parameter %d has a NUL byte in its name", index);
        tf_dtype_t dt = type == 0 ? TF_F32 : TF_F16;
        int64_t numel = tf_shape_numel(ndim, dims);
        if (numel < 0)
            return st_fail(err, ST_EFORMAT, "parameter '%s' has more than 2^40 elements", key);
        uint64_t bytes = (uint64_t)numel * tf_dtype_size(dt);
        if (bytes > len - pos)
            return st_fail(err, ST_EFORMAT,
                           "parameter '%s' needs %llu bytes but only %zu remain in the file", key,
                           (unsigned long long)bytes, len - pos);
        int64_t shape[TF_MAX_DIMS];
        for (int d = 0; d < ndim; d++) shape[d] = dims[ndim - 1 - d];
        int rc;
        if (s_ends_with(key, ".att.x_rwkvag")) {
            if (shape[0] != 6 || numel % 6)
                return st_fail(err, ST_EFORMAT, "parameter '%s' does not hold six vectors", key);
            int64_t c = numel / 6;
            int64_t sub[3] = {1, 1, c};
            size_t stem = strlen(key) - strlen("x_rwkvag");
            static const char parts[] = "rwkvag";
            for (int i = 0; i < 6; i++) {
                char name[GGMF_MAX_KEY + 8];
                snprintf(name, sizeof name, "%.*sx_%c", (int)stem, key, parts[i]);
                rc = tf_add_entry(self, name, dt, 3, sub, TF_LAYOUT_PLAIN,
                                  pos + (uint64_t)i * (uint64_t)c * tf_dtype_size(dt), -1, err);
                if (rc) return rc;
            }
        } else if (s_is_lora(key) && ndim == 2) {
            rc = tf_add_entry(self, key, dt, 2, dims, TF_LAYOUT_TRANSPOSE, pos, -1, err);
            if (rc) return rc;
        } else {
            rc = tf_add_entry(self, key, dt, ndim, shape, TF_LAYOUT_PLAIN, pos, -1, err);
            if (rc) return rc;
        }
        pos += bytes;
        index++;
    }
    return ST_OK;
}
