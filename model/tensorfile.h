/*
 * tensorfile.h - a read-only directory of named tensors in a model file.
 *
 * One API over the three model formats of SPEC section 3:
 *   - the official PyTorch `.pth` (a zip written by torch.save holding a pickle
 *     of a state dict; read with libzip and a safe pickle subset that executes
 *     nothing and refuses anything a state dict does not need),
 *   - safetensors (JSON header + raw data),
 *   - rwkv.cpp `.bin` (ggmf version 101, FP32 / FP16).
 * The format is detected from the file's first bytes, never its name.
 *
 * Tensor data is not copied whole into memory: safetensors and .bin files are
 * memory-mapped; .pth storages are streamed out of the zip one at a time when
 * a tensor is read. Names are normalised to the official RWKV-7 state-dict
 * names (`blocks.0.att.x_r`, `emb.weight`, ...), and shapes to the official
 * ones, whatever the container (rwkv.cpp's reversed dimensions, transposed LoRA
 * matrices and concatenated x_rwkvag are undone here).
 *
 * Every byte of the file is untrusted: a corrupt, truncated or hostile file
 * gives ST_EFORMAT with one clear sentence in err, never a crash.
 *
 * A tensorfile is used by one thread at a time (reads of a .pth share one
 * libzip handle); open the file once per thread to read in parallel.
 */
#ifndef ST_TENSORFILE_H
#define ST_TENSORFILE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TF_F32 = 0,
    TF_F16 = 1,
    TF_BF16 = 2,
    TF_F64 = 3,
    TF_I64 = 4,
    TF_I32 = 5,
} tf_dtype_t;

typedef enum {
    TF_FORMAT_PTH = 0,
    TF_FORMAT_SAFETENSORS = 1,
    TF_FORMAT_GGMF = 2,
} tf_format_t;

#define TF_MAX_DIMS 6

typedef struct {
    const char *name;           /* normalised official name */
    tf_dtype_t dtype;           /* element type as stored */
    int ndim;                   /* number of dimensions, 0..TF_MAX_DIMS */
    int64_t shape[TF_MAX_DIMS]; /* official shape (row-major, last dim fastest) */
    int64_t numel;              /* product of shape */
} tf_tensor_info_t;

typedef struct tensorfile tensorfile_t;

/* Opens and indexes a model or tensor file. Returns NULL and fills err on
 * failure (missing file, unknown format, malformed or hostile content). */
tensorfile_t *tensorfile_open(const char *path, char *err);

/* Closes the file and frees everything. Accepts NULL; sets *self_p to NULL. */
void tensorfile_close(tensorfile_t **self_p);

tf_format_t tensorfile_format(const tensorfile_t *self);

/* Number of tensors, and the i-th one's description (borrowed). */
int tensorfile_count(const tensorfile_t *self);
const tf_tensor_info_t *tensorfile_info(const tensorfile_t *self, int i);

/* The tensor with this normalised name, or NULL. */
const tf_tensor_info_t *tensorfile_find(const tensorfile_t *self, const char *name);

/* Reads a tensor converted to fp32 into out (numel floats), undoing any layout
 * change of the container. F32/F16/BF16/F64 convert; integer tensors refuse. */
int tensorfile_read_f32(tensorfile_t *self, const tf_tensor_info_t *t, float *out, char *err);

/* Reads a tensor converted to fp64 (for reference dumps). */
int tensorfile_read_f64(tensorfile_t *self, const tf_tensor_info_t *t, double *out, char *err);

/* Reads an integer tensor (I64 or I32) as int64. */
int tensorfile_read_i64(tensorfile_t *self, const tf_tensor_info_t *t, int64_t *out, char *err);

/* Name of a dtype ("F32", "BF16", ...). */
const char *tf_dtype_name(tf_dtype_t d);
size_t tf_dtype_size(tf_dtype_t d);

#endif
