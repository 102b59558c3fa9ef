/*
 * pth.c - indexes the official PyTorch checkpoint: the zip that torch.save
 * writes (zip64 for large models, hence libzip), holding `<prefix>/data.pkl`
 * (a pickle of the state dict, read by the safe subset in pickle.c) and one
 * entry `<prefix>/data/<key>` of raw little-endian bytes per storage.
 *
 * Opening checks everything the pickle claims against the archive: each
 * storage entry exists and holds exactly numel x dtype-size bytes, each tensor
 * is contiguous row-major (we read bytes straight through) and lies inside its
 * storage. Reading a tensor streams its bytes out of the zip entry in 1 MB
 * chunks (skipping to its offset), so a 15 GB checkpoint is never held whole.
 */
#include "model/tensorfile_impl.h"

#include "common/st_err.h"
#include "model/pickle.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PTH_MAX_PICKLE ((zip_uint64_t)64 << 20) /* a 14B state dict's data.pkl is ~100 KB */
#define PTH_CHUNK ((size_t)1 << 20)

typedef struct {
    tensorfile_t *tf;
    char *prefix; /* "archive/" */
} pth_ctx_t;

static int s_zip_error(zip_t *za, char *err, const char *what)
{
    return st_fail(err, ST_EFORMAT, "%s: %s", what, zip_strerror(za));
}

/* Contiguous row-major: the last dimension is dense and each stride is the
 * product of the sizes after it (dimensions of size 1 may carry any stride). */
static int s_contiguous(const pickle_tensor_t *t)
{
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->size[d] != 1 && t->stride[d] != expect) return 0;
        expect *= t->size[d];
    }
    return 1;
}

static int s_on_tensor(void *vctx, const pickle_tensor_t *t, char *err)
{
    pth_ctx_t *c = vctx;
    zip_t *za = c->tf->zip;
    int64_t numel = tf_shape_numel(t->ndim, t->size);
    if (numel < 0)
        return st_fail(err, ST_EFORMAT, "tensor '%s' has a negative dimension or more than 2^40 "
                       "elements", t->name);
    if (numel > 0 && !s_contiguous(t))
        return st_fail(err, ST_EFORMAT,
                       "tensor '%s' is not stored contiguously (strided views are not supported; "
                       "save it with .contiguous())", t->name);
    if (t->offset < 0 || t->storage_numel > TF_MAX_NUMEL || t->offset > t->storage_numel ||
        numel > t->storage_numel - t->offset)
        return st_fail(err, ST_EFORMAT,
                       "tensor '%s' (offset %lld, %lld elements) does not fit in its storage '%s' "
                       "of %lld elements", t->name, (long long)t->offset, (long long)numel,
                       t->storage_key, (long long)t->storage_numel);
    char entry[1024];
    if ((size_t)snprintf(entry, sizeof entry, "%sdata/%s", c->prefix, t->storage_key) >= sizeof entry)
        return st_fail(err, ST_EFORMAT, "storage key of tensor '%s' is too long", t->name);
    zip_int64_t idx = zip_name_locate(za, entry, 0);
    if (idx < 0)
        return st_fail(err, ST_EFORMAT, "tensor '%s': storage entry '%s' is missing from the zip",
                       t->name, entry);
    zip_stat_t zs;
    if (zip_stat_index(za, (zip_uint64_t)idx, 0, &zs) != 0 || !(zs.valid & ZIP_STAT_SIZE))
        return s_zip_error(za, err, "cannot stat a storage entry");
    uint64_t want = (uint64_t)t->storage_numel * tf_dtype_size(t->dtype);
    if (zs.size != want)
        return st_fail(err, ST_EFORMAT,
                       "storage '%s' holds %llu bytes but the pickle says %lld elements of %s "
                       "(%llu bytes)", entry, (unsigned long long)zs.size,
                       (long long)t->storage_numel, tf_dtype_name(t->dtype),
                       (unsigned long long)want);
    return tf_add_entry(c->tf, t->name, t->dtype, t->ndim, t->size, TF_LAYOUT_PLAIN,
                        (uint64_t)t->offset * tf_dtype_size(t->dtype), idx, err);
}

/* Reads a whole (small) entry into a malloc'd buffer. */
static int s_read_entry(zip_t *za, zip_uint64_t idx, zip_uint64_t max, uint8_t **out,
                        size_t *len, char *err)
{
    zip_stat_t zs;
    if (zip_stat_index(za, idx, 0, &zs) != 0 || !(zs.valid & ZIP_STAT_SIZE))
        return s_zip_error(za, err, "cannot stat a zip entry");
    if (zs.size > max)
        return st_fail(err, ST_EFORMAT, "zip entry '%s' is %llu bytes, more than the %llu allowed",
                       zs.name ? zs.name : "?", (unsigned long long)zs.size,
                       (unsigned long long)max);
    uint8_t *buf = malloc(zs.size ? (size_t)zs.size : 1);
    if (!buf) return st_fail(err, ST_ENOMEM, "out of memory reading a zip entry");
    zip_file_t *zf = zip_fopen_index(za, idx, 0);
    if (!zf) {
        free(buf);
        return s_zip_error(za, err, "cannot open a zip entry");
    }
    zip_int64_t got = zip_fread(zf, buf, zs.size);
    zip_fclose(zf);
    if (got < 0 || (zip_uint64_t)got != zs.size) {
        free(buf);
        return st_fail(err, ST_EFORMAT, "zip entry '%s' is truncated or corrupt",
                       zs.name ? zs.name : "?");
    }
    *out = buf;
    *len = (size_t)zs.size;
    return ST_OK;
}

int tf_open_pth(tensorfile_t *self, int fd, char *err)
{
    int zerr = 0;
    /* From the descriptor tensorfile_open checked to be a regular file, not by
     * name again: the path could have been swapped for a FIFO in between. */
    self->zip = zip_fdopen(fd, ZIP_RDONLY, &zerr);
    if (!self->zip) {
        close(fd);
        zip_error_t ze;
        zip_error_init_with_code(&ze, zerr);
        int rc = st_fail(err, ST_EFORMAT, "not a readable zip archive (truncated or corrupt?): %s",
                         zip_error_strerror(&ze));
        zip_error_fini(&ze);
        return rc;
    }
    zip_t *za = self->zip;
    /* torch.save writes "<prefix>/data.pkl" with one folder level */
    zip_int64_t n = zip_get_num_entries(za, 0);
    zip_int64_t pkl = -1;
    const char *pkl_name = NULL;
    for (zip_int64_t i = 0; i < n; i++) {
        const char *name = zip_get_name(za, (zip_uint64_t)i, 0);
        if (!name) continue;
        const char *slash = strchr(name, '/');
        if (slash && strcmp(slash + 1, "data.pkl") == 0) {
            pkl = i;
            pkl_name = name;
            break;
        }
    }
    if (pkl < 0)
        return st_fail(err, ST_EFORMAT,
                       "zip has no '<name>/data.pkl' entry, so it is not a torch.save checkpoint");
    pth_ctx_t ctx = {self, NULL};
    size_t plen = strlen(pkl_name) - strlen("data.pkl");
    ctx.prefix = strndup(pkl_name, plen);
    if (!ctx.prefix) return st_fail(err, ST_ENOMEM, "out of memory opening a zip");

    int rc = ST_OK;
    uint8_t *data = NULL;
    size_t len = 0;
    /* storages are raw little-endian bytes; a big-endian checkpoint would need swapping */
    char bo_name[1024];
    snprintf(bo_name, sizeof bo_name, "%sbyteorder", ctx.prefix);
    zip_int64_t bo = zip_name_locate(za, bo_name, 0);
    if (bo >= 0) {
        rc = s_read_entry(za, (zip_uint64_t)bo, 16, &data, &len, err);
        if (rc) goto done;
        if (len != 6 || memcmp(data, "little", 6) != 0) {
            rc = st_fail(err, ST_EUNSUPPORTED, "checkpoint was saved big-endian, which is not supported");
            goto done;
        }
        free(data);
        data = NULL;
    }
    rc = s_read_entry(za, (zip_uint64_t)pkl, PTH_MAX_PICKLE, &data, &len, err);
    if (rc) goto done;
    rc = pickle_state_dict(data, len, s_on_tensor, &ctx, err);
done:
    free(data);
    free(ctx.prefix);
    return rc;
}

int tf_pth_stream(tensorfile_t *self, const tf_entry_t *e, tf_sink_fn sink, void *ctx, char *err)
{
    size_t es = tf_dtype_size(e->info.dtype);
    zip_file_t *zf = zip_fopen_index(self->zip, (zip_uint64_t)e->zip_index, 0);
    if (!zf) return s_zip_error(self->zip, err, "cannot open a storage entry");
    uint8_t *buf = malloc(PTH_CHUNK);
    int rc = ST_OK;
    if (!buf) {
        rc = st_fail(err, ST_ENOMEM, "out of memory reading tensor '%s'", e->name);
        goto done;
    }
    /* torch stores entries uncompressed, so seeking works; otherwise skip by
     * reading (on a handle opened afresh: a failed seek leaves an error on it) */
    if (e->offset && zip_fseek(zf, (zip_int64_t)e->offset, SEEK_SET) != 0) {
        zip_fclose(zf);
        zf = zip_fopen_index(self->zip, (zip_uint64_t)e->zip_index, 0);
        if (!zf) {
            free(buf);
            return s_zip_error(self->zip, err, "cannot open a storage entry");
        }
        uint64_t left = e->offset;
        while (left) {
            size_t want = left < PTH_CHUNK ? (size_t)left : PTH_CHUNK;
            zip_int64_t got = zip_fread(zf, buf, want);
            if (got <= 0) {
                rc = st_fail(err, ST_EFORMAT, "storage of tensor '%s' ends early", e->name);
                goto done;
            }
            left -= (uint64_t)got;
        }
    }
    size_t per = PTH_CHUNK / es; /* whole elements per chunk */
    size_t done_elems = 0, total = (size_t)e->info.numel;
    while (done_elems < total) {
        size_t n = total - done_elems < per ? total - done_elems : per;
        size_t want = n * es, have = 0;
        while (have < want) {
            zip_int64_t got = zip_fread(zf, buf + have, want - have);
            if (got <= 0) {
                rc = st_fail(err, ST_EFORMAT, "storage of tensor '%s' ends early or is corrupt",
                             e->name);
                goto done;
            }
            have += (size_t)got;
        }
        rc = sink(ctx, buf, n, done_elems, err);
        if (rc) goto done;
        done_elems += n;
    }
done:
    free(buf);
    zip_fclose(zf);
    return rc;
}
