/*
 * safetensors.c - indexes a safetensors file: an 8-byte little-endian header
 * length, a JSON header, then raw tensor data.
 *
 * The JSON header maps each tensor name to {"dtype", "shape", "data_offsets"}
 * (offsets relative to the first byte after the header); "__metadata__" holds
 * free-form strings and is ignored. Names are kept as they are: model files
 * use the official state-dict names, and reference dumps (*.ref.safetensors)
 * use their own (`tokens`, `logits`, ...).
 *
 * The file is already mapped; this reader only checks and records. Checks,
 * because the header is untrusted: the header fits in the file and in 100 MB,
 * it parses as one JSON object without duplicate keys, every dtype is one we
 * convert, every shape is sane, and every tensor's byte range lies inside the
 * data area and has exactly shape x dtype-size bytes. Overlapping ranges are
 * allowed (the format does not forbid aliasing and reading them is harmless).
 */
#include "model/tensorfile_impl.h"

#include "common/st_err.h"

#include <jansson.h>
#include <string.h>

/* A header larger than this is not a model's: refuse before parsing it. */
#define ST_SAFETENSORS_MAX_HEADER ((uint64_t)100 << 20)

static int s_dtype(const char *s, tf_dtype_t *dt)
{
    static const struct { const char *name; tf_dtype_t dt; } map[] = {
        {"F32", TF_F32}, {"F16", TF_F16}, {"BF16", TF_BF16},
        {"F64", TF_F64}, {"I64", TF_I64}, {"I32", TF_I32},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(s, map[i].name) == 0) {
            *dt = map[i].dt;
            return 1;
        }
    return 0;
}

static int s_add_tensor(tensorfile_t *self, const char *name, json_t *v, uint64_t data_start,
                        char *err)
{
    if (!json_is_object(v))
        return st_fail(err, ST_EFORMAT, "header entry '%s' is not an object", name);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return st_fail(err, ST_EFORMAT, "tensor '%s' has no \"dtype\" string", name);
    tf_dtype_t dt;
    if (!s_dtype(json_string_value(jd), &dt))
        return st_fail(err, ST_EFORMAT,
                       "tensor '%s' has dtype '%.32s', which is not supported "
                       "(F32, F16, BF16, F64, I64, I32 are)", name, json_string_value(jd));
    if (!json_is_array(js))
        return st_fail(err, ST_EFORMAT, "tensor '%s' has no \"shape\" array", name);
    size_t ndim = json_array_size(js);
    if (ndim > TF_MAX_DIMS)
        return st_fail(err, ST_EFORMAT, "tensor '%s' has %zu dimensions (at most %d are supported)",
                       name, ndim, TF_MAX_DIMS);
    int64_t shape[TF_MAX_DIMS];
    for (size_t i = 0; i < ndim; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return st_fail(err, ST_EFORMAT, "tensor '%s': shape[%zu] is not a non-negative integer",
                           name, i);
        shape[i] = (int64_t)json_integer_value(d);
    }
    int64_t numel = tf_shape_numel((int)ndim, shape);
    if (numel < 0)
        return st_fail(err, ST_EFORMAT, "tensor '%s' has more than 2^40 elements", name);
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1)))
        return st_fail(err, ST_EFORMAT, "tensor '%s' has no \"data_offsets\" pair of integers",
                       name);
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t e = json_integer_value(json_array_get(jo, 1));
    uint64_t data_len = self->map_len - data_start;
    if (b < 0 || e < b || (uint64_t)e > data_len)
        return st_fail(err, ST_EFORMAT,
                       "tensor '%s': data_offsets [%lld, %lld] fall outside the %llu data bytes",
                       name, (long long)b, (long long)e, (unsigned long long)data_len);
    uint64_t want = (uint64_t)numel * tf_dtype_size(dt);
    if ((uint64_t)(e - b) != want)
        return st_fail(err, ST_EFORMAT,
                       "tensor '%s': data_offsets span %lld bytes but shape and dtype need %llu",
                       name, (long long)(e - b), (unsigned long long)want);
    return tf_add_entry(self, name, dt, (int)ndim, shape, TF_LAYOUT_PLAIN,
                        data_start + (uint64_t)b, -1, err);
}

int tf_open_safetensors(tensorfile_t *self, char *err)
{
    if (self->map_len < 8)
        return st_fail(err, ST_EFORMAT, "safetensors file is shorter than its 8-byte header length");
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | self->map[i];
    if (n > self->map_len - 8 || n > ST_SAFETENSORS_MAX_HEADER)
        return st_fail(err, ST_EFORMAT,
                       "safetensors header claims %llu bytes but the file has %zu (and at most "
                       "100 MB are accepted)", (unsigned long long)n, self->map_len);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)self->map + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return st_fail(err, ST_EFORMAT, "safetensors header is not valid JSON: %s (line %d)",
                       jerr.text, jerr.line);
    int rc = ST_OK;
    if (!json_is_object(root)) {
        rc = st_fail(err, ST_EFORMAT, "safetensors header is not a JSON object");
        goto done;
    }
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v) {
        if (strcmp(name, "__metadata__") == 0) continue;
        rc = s_add_tensor(self, name, v, 8 + n, err);
        if (rc) goto done;
    }
done:
    json_decref(root);
    return rc;
}
