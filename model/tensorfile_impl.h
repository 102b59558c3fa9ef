/*
 * tensorfile_impl.h - what the format readers of model/ share, and nobody else.
 *
 * tensorfile.c owns the struct, the file mapping and the conversions; each
 * container format has one file that fills the entry table from untrusted
 * bytes (safetensors.c, pth.c with pickle.c, ggmf.c). A reader only records
 * where each tensor's bytes are and how the container's layout differs from
 * the official one; no tensor data is touched until tensorfile_read_* asks.
 */
#ifndef ST_TENSORFILE_IMPL_H
#define ST_TENSORFILE_IMPL_H

#include "model/tensorfile.h"

#include <zip.h>

/* Largest number of elements we accept in one tensor (2^40, about 4 TB of
 * fp32): anything larger is a corrupt or hostile header, not a model. */
#define TF_MAX_NUMEL ((int64_t)1 << 40)

/* How a container stores a tensor relative to its official row-major layout. */
typedef enum {
    TF_LAYOUT_PLAIN = 0,     /* bytes are the official layout */
    TF_LAYOUT_TRANSPOSE = 1, /* 2-D official [A, B] stored as [B, A] (rwkv.cpp LoRA) */
} tf_layout_t;

typedef struct {
    tf_tensor_info_t info; /* info.name points at name */
    char *name;            /* owned copy of the normalised name */
    tf_layout_t layout;    /* see above */
    uint64_t offset;       /* byte offset of element 0: in the map, or in the zip entry */
    int64_t zip_index;     /* .pth: index of the storage's zip entry; else -1 */
} tf_entry_t;

struct tensorfile {
    tf_format_t format;    /* detected from the first bytes */
    char *path;            /* for messages */
    tf_entry_t *entries;   /* sorted by name once the reader is done */
    int n_entries;         /* used */
    int cap_entries;       /* allocated */
    const uint8_t *map;    /* safetensors and .bin: the whole file, read-only */
    size_t map_len;        /* its length in bytes */
    zip_t *zip;            /* .pth: the open archive */
};

/* Appends an entry after checking what every format must satisfy: a name that
 * is non-empty, at most TF_MAX_DIMS non-negative dimensions, and at most
 * TF_MAX_NUMEL elements (products are checked for overflow). */
int tf_add_entry(tensorfile_t *self, const char *name, tf_dtype_t dtype, int ndim,
                 const int64_t *shape, tf_layout_t layout, uint64_t offset, int64_t zip_index,
                 char *err);

/* numel of a shape, or -1 when a dimension is negative or the product exceeds
 * TF_MAX_NUMEL. */
int64_t tf_shape_numel(int ndim, const int64_t *shape);

/* The format readers. Each is called on a half-built tensorfile (path set; map
 * set for safetensors and ggmf) and returns ST_OK or an error with err filled. */
int tf_open_safetensors(tensorfile_t *self, char *err);
int tf_open_ggmf(tensorfile_t *self, char *err);
int tf_open_pth(tensorfile_t *self, int fd, char *err); /* takes fd, even on failure */

/* Streams a plain-layout tensor out of the zip: calls sink with consecutive
 * chunks of raw bytes (whole elements) until numel elements were delivered. */
typedef int (*tf_sink_fn)(void *ctx, const uint8_t *bytes, size_t n_elems, size_t first_elem,
                          char *err);
int tf_pth_stream(tensorfile_t *self, const tf_entry_t *e, tf_sink_fn sink, void *ctx, char *err);

#endif
