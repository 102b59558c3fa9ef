/*
 * tensorfile.c - one read-only directory of named tensors over the three model
 * formats (see tensorfile.h).
 *
 * This file owns what the formats share: detecting the format from the first
 * bytes (never the file name), mapping the file, the entry table (sorted by
 * name so lookups are a binary search and duplicate names are caught once),
 * and turning stored elements into fp32, fp64 or int64 while undoing the
 * container's layout. The per-format readers (safetensors.c, pth.c, ggmf.c)
 * only fill the table.
 *
 * Nothing here trusts the file: the readers have already checked that every
 * entry's bytes lie inside the map or the zip entry, so the conversions below
 * can index freely. Stored bytes may be unaligned (rwkv.cpp packs tensors
 * back to back), so elements are loaded with memcpy.
 */
#include "model/tensorfile_impl.h"

#include "common/st_err.h"
#include "common/st_fs.h"
#include "common/st_half.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

const char *tf_dtype_name(tf_dtype_t d)
{
    switch (d) {
    case TF_F32: return "F32";
    case TF_F16: return "F16";
    case TF_BF16: return "BF16";
    case TF_F64: return "F64";
    case TF_I64: return "I64";
    case TF_I32: return "I32";
    }
    return "?";
}

size_t tf_dtype_size(tf_dtype_t d)
{
    switch (d) {
    case TF_F32: return 4;
    case TF_F16: return 2;
    case TF_BF16: return 2;
    case TF_F64: return 8;
    case TF_I64: return 8;
    case TF_I32: return 4;
    }
    return 0;
}

int64_t tf_shape_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] == 0) n = 0;
        else if (n > TF_MAX_NUMEL / shape[i]) return -1;
        else n *= shape[i];
    }
    return n;
}

int tf_add_entry(tensorfile_t *self, const char *name, tf_dtype_t dtype, int ndim,
                 const int64_t *shape, tf_layout_t layout, uint64_t offset, int64_t zip_index,
                 char *err)
{
    if (!name[0]) return st_fail(err, ST_EFORMAT, "a tensor has an empty name");
    if (ndim < 0 || ndim > TF_MAX_DIMS)
        return st_fail(err, ST_EFORMAT, "tensor '%s' has %d dimensions (at most %d are supported)",
                       name, ndim, TF_MAX_DIMS);
    int64_t numel = tf_shape_numel(ndim, shape);
    if (numel < 0)
        return st_fail(err, ST_EFORMAT,
                       "tensor '%s' has a negative dimension or more than 2^40 elements", name);
    if (self->n_entries == self->cap_entries) {
        int cap = self->cap_entries ? self->cap_entries * 2 : 64;
        tf_entry_t *grown = realloc(self->entries, (size_t)cap * sizeof *grown);
        if (!grown) return st_fail(err, ST_ENOMEM, "out of memory indexing tensors");
        self->entries = grown;
        self->cap_entries = cap;
    }
    tf_entry_t *e = &self->entries[self->n_entries];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) return st_fail(err, ST_ENOMEM, "out of memory indexing tensors");
    e->info.name = e->name;
    e->info.dtype = dtype;
    e->info.ndim = ndim;
    for (int i = 0; i < ndim; i++) e->info.shape[i] = shape[i];
    e->info.numel = numel;
    e->layout = layout;
    e->offset = offset;
    e->zip_index = zip_index;
    self->n_entries++;
    return ST_OK;
}

static int s_entry_cmp(const void *a, const void *b)
{
    return strcmp(((const tf_entry_t *)a)->name, ((const tf_entry_t *)b)->name);
}

/* Which reader a file's first bytes call for. */
static int s_detect(const uint8_t *head, size_t n, size_t file_len, tf_format_t *fmt, char *err)
{
    if (n >= 4 && head[0] == 'P' && head[1] == 'K' &&
        ((head[2] == 3 && head[3] == 4) || (head[2] == 5 && head[3] == 6))) {
        *fmt = TF_FORMAT_PTH;
        return ST_OK;
    }
    /* rwkv.cpp writes the int32 0x67676d66 in machine (little-endian) order */
    if (n >= 4 && head[0] == 'f' && head[1] == 'm' && head[2] == 'g' && head[3] == 'g') {
        *fmt = TF_FORMAT_GGMF;
        return ST_OK;
    }
    if (n >= 9 && head[8] == '{') {
        *fmt = TF_FORMAT_SAFETENSORS;
        return ST_OK;
    }
    if (file_len == 0) return st_fail(err, ST_EFORMAT, "the file is empty");
    /* other ggml-family files: say what they are rather than "not a model" */
    if (n >= 4 && (memcmp(head, "GGUF", 4) == 0 || memcmp(head, "lmgg", 4) == 0 ||
                   memcmp(head, "tjgg", 4) == 0 || memcmp(head, "algg", 4) == 0))
        return st_fail(err, ST_EUNSUPPORTED,
                       "this is a ggml-family file with magic '%.4s', not rwkv.cpp's own .bin "
                       "(magic 'fmgg'); convert the model with rwkv.cpp or use the .pth",
                       (const char *)head);
    /* torch.save before PyTorch 1.6 wrote a bare pickle starting with a magic long */
    if (n >= 4 && head[0] == 0x80 && head[1] == 2 && head[2] == 0x8a && head[3] == 10)
        return st_fail(err, ST_EUNSUPPORTED,
                       "this is the legacy (pre-1.6) torch.save format; load and save it again "
                       "with a current PyTorch to get the zip format");
    return st_fail(err, ST_EFORMAT,
                   "not a model file: it is neither a zip (.pth), a rwkv.cpp .bin nor safetensors");
}

tensorfile_t *tensorfile_open(const char *path, char *err)
{
    tensorfile_t *self = calloc(1, sizeof *self);
    if (!self) {
        st_fail(err, ST_ENOMEM, "out of memory opening '%s'", path);
        return NULL;
    }
    int rc = ST_OK;
    int fd = -1;
    self->path = strdup(path);
    if (!self->path) {
        rc = st_fail(err, ST_ENOMEM, "out of memory opening '%s'", path);
        goto fail;
    }
    fd = st_open_regular(path, err); /* a FIFO must not block us in open() */
    if (fd < 0) {
        rc = fd;
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        rc = st_fail(err, ST_EIO, "cannot stat '%s': %s", path, strerror(errno));
        goto fail;
    }
    uint8_t head[16];
    ssize_t got = pread(fd, head, sizeof head, 0);
    if (got < 0) {
        rc = st_fail(err, ST_EIO, "cannot read '%s': %s", path, strerror(errno));
        goto fail;
    }
    rc = s_detect(head, (size_t)got, (size_t)sb.st_size, &self->format, err);
    if (rc) goto fail;

    if (self->format == TF_FORMAT_PTH) {
        rc = tf_open_pth(self, fd, err); /* libzip owns fd from here */
        fd = -1;
    } else {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            rc = st_fail(err, ST_EIO, "cannot map '%s': %s", path, strerror(errno));
            goto fail;
        }
        self->map = m;
        self->map_len = (size_t)sb.st_size;
        close(fd);
        fd = -1;
        rc = self->format == TF_FORMAT_GGMF ? tf_open_ggmf(self, err)
                                            : tf_open_safetensors(self, err);
    }
    if (rc) goto fail;

    if (self->n_entries > 1) /* entries is NULL for a file without tensors */
        qsort(self->entries, (size_t)self->n_entries, sizeof *self->entries, s_entry_cmp);
    for (int i = 0; i < self->n_entries; i++) self->entries[i].info.name = self->entries[i].name;
    for (int i = 1; i < self->n_entries; i++)
        if (strcmp(self->entries[i - 1].name, self->entries[i].name) == 0) {
            rc = st_fail(err, ST_EFORMAT, "tensor '%s' appears more than once",
                         self->entries[i].name);
            goto fail;
        }
    return self;

fail:
    if (fd >= 0) close(fd);
    st_wrap(err, rc, "'%s': ", path);
    tensorfile_close(&self);
    return NULL;
}

void tensorfile_close(tensorfile_t **self_p)
{
    if (!self_p || !*self_p) return;
    tensorfile_t *self = *self_p;
    for (int i = 0; i < self->n_entries; i++) free(self->entries[i].name);
    free(self->entries);
    if (self->map) munmap((void *)self->map, self->map_len);
    if (self->zip) zip_discard(self->zip);
    free(self->path);
    free(self);
    *self_p = NULL;
}

tf_format_t tensorfile_format(const tensorfile_t *self) { return self->format; }

int tensorfile_count(const tensorfile_t *self) { return self->n_entries; }

const tf_tensor_info_t *tensorfile_info(const tensorfile_t *self, int i)
{
    if (i < 0 || i >= self->n_entries) return NULL;
    return &self->entries[i].info;
}

const tf_tensor_info_t *tensorfile_find(const tensorfile_t *self, const char *name)
{
    int lo = 0, hi = self->n_entries - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(self->entries[mid].name, name);
        if (c == 0) return &self->entries[mid].info;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

/* ---- conversions ------------------------------------------------------------ */

typedef enum { OUT_F32, OUT_F64, OUT_I64 } out_kind_t;

static double s_load_float(const uint8_t *p, tf_dtype_t dt)
{
    switch (dt) {
    case TF_F32: { float f; memcpy(&f, p, 4); return f; }
    case TF_F64: { double d; memcpy(&d, p, 8); return d; }
    case TF_F16: { uint16_t h; memcpy(&h, p, 2); return st_f16_to_f32(h); }
    case TF_BF16: { uint16_t h; memcpy(&h, p, 2); return st_bf16_to_f32(h); }
    default: return 0.0;
    }
}

static int64_t s_load_int(const uint8_t *p, tf_dtype_t dt)
{
    if (dt == TF_I32) { int32_t v; memcpy(&v, p, 4); return v; }
    int64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Converts n stored elements to out[first .. first+n), plain layout. */
static void s_convert(const uint8_t *src, tf_dtype_t dt, size_t n, void *out, out_kind_t kind,
                      size_t first)
{
    size_t es = tf_dtype_size(dt);
    if (kind == OUT_F32) {
        float *o = (float *)out + first;
        /* one loop per dtype, so the hot path of a 15 GB load has no branch */
        if (dt == TF_F32) {
            memcpy(o, src, n * 4); /* bit-exact, and fast */
        } else if (dt == TF_BF16) {
            for (size_t i = 0; i < n; i++) {
                uint16_t h;
                memcpy(&h, src + 2 * i, 2);
                o[i] = st_bf16_to_f32(h);
            }
        } else if (dt == TF_F16) {
            for (size_t i = 0; i < n; i++) {
                uint16_t h;
                memcpy(&h, src + 2 * i, 2);
                o[i] = st_f16_to_f32(h);
            }
        } else {
            for (size_t i = 0; i < n; i++) o[i] = (float)s_load_float(src + i * es, dt);
        }
    } else if (kind == OUT_F64) {
        double *o = (double *)out + first;
        for (size_t i = 0; i < n; i++) o[i] = s_load_float(src + i * es, dt);
    } else {
        int64_t *o = (int64_t *)out + first;
        for (size_t i = 0; i < n; i++) o[i] = s_load_int(src + i * es, dt);
    }
}

/* Transposed layout: official [A, B] is stored as [B, A]. */
static void s_convert_transposed(const uint8_t *src, tf_dtype_t dt, int64_t A, int64_t B,
                                 void *out, out_kind_t kind)
{
    size_t es = tf_dtype_size(dt);
    for (int64_t a = 0; a < A; a++)
        for (int64_t b = 0; b < B; b++) {
            const uint8_t *p = src + (size_t)(b * A + a) * es;
            size_t o = (size_t)(a * B + b);
            if (kind == OUT_F32) ((float *)out)[o] = (float)s_load_float(p, dt);
            else if (kind == OUT_F64) ((double *)out)[o] = s_load_float(p, dt);
            else ((int64_t *)out)[o] = s_load_int(p, dt);
        }
}

typedef struct {
    tf_dtype_t dtype;
    void *out;
    out_kind_t kind;
} sink_ctx_t;

static int s_sink(void *ctx, const uint8_t *bytes, size_t n_elems, size_t first_elem, char *err)
{
    sink_ctx_t *c = ctx;
    s_convert(bytes, c->dtype, n_elems, c->out, c->kind, first_elem);
    return ST_OK;
}

static const tf_entry_t *s_entry_of(const tensorfile_t *self, const tf_tensor_info_t *t)
{
    /* info structs live inside the entries, so the entry is found by address;
     * a pointer from elsewhere is a caller's mistake, reported, not trusted */
    uintptr_t p = (uintptr_t)t, lo = (uintptr_t)self->entries;
    uintptr_t hi = lo + (size_t)self->n_entries * sizeof *self->entries;
    if (!t || p < lo || p >= hi) return NULL;
    const tf_entry_t *e = &self->entries[(p - lo) / sizeof *self->entries];
    return &e->info == t ? e : NULL;
}

static int s_read(tensorfile_t *self, const tf_tensor_info_t *t, void *out, out_kind_t kind,
                  char *err)
{
    const tf_entry_t *e = s_entry_of(self, t);
    if (!e) return st_fail(err, ST_EINVAL, "tensor info does not belong to '%s'", self->path);
    int is_int = t->dtype == TF_I64 || t->dtype == TF_I32;
    if (kind == OUT_I64 && !is_int)
        return st_fail(err, ST_EINVAL, "tensor '%s' is %s, not an integer tensor", t->name,
                       tf_dtype_name(t->dtype));
    if (kind != OUT_I64 && is_int)
        return st_fail(err, ST_EINVAL, "tensor '%s' is %s, not a float tensor", t->name,
                       tf_dtype_name(t->dtype));
    if (t->numel == 0) return ST_OK;
    if (self->zip) {
        sink_ctx_t c = {t->dtype, out, kind};
        return tf_pth_stream(self, e, s_sink, &c, err); /* messages name the tensor */
    }
    const uint8_t *src = self->map + e->offset;
    if (e->layout == TF_LAYOUT_TRANSPOSE)
        s_convert_transposed(src, t->dtype, t->shape[0], t->shape[1], out, kind);
    else
        s_convert(src, t->dtype, (size_t)t->numel, out, kind, 0);
    return ST_OK;
}

int tensorfile_read_f32(tensorfile_t *self, const tf_tensor_info_t *t, float *out, char *err)
{
    return s_read(self, t, out, OUT_F32, err);
}

int tensorfile_read_f64(tensorfile_t *self, const tf_tensor_info_t *t, double *out, char *err)
{
    return s_read(self, t, out, OUT_F64, err);
}

int tensorfile_read_i64(tensorfile_t *self, const tf_tensor_info_t *t, int64_t *out, char *err)
{
    return s_read(self, t, out, OUT_I64, err);
}
