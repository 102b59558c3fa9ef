/*
 * state_formats.h - tuned states as files other RWKV tools read (SPEC
 * section 5), and the import of such files.
 *
 * A state is L layers of [H, N, N] fp32 (N = head size, 64), in the official
 * layout S[h][value][key]. Three formats:
 *   - safetensors: `blocks.{i}.att.time_state` F32 [H, N, N], official layout,
 *     exactly what RWKV-PEFT writes for a state-tuned model;
 *   - pth: a torch.save zip (archive/data.pkl, a protocol-2 pickle of an
 *     OrderedDict of tensors rebuilt by torch._utils._rebuild_tensor_v2 with
 *     persistent ids; archive/data/<n>; archive/version; archive/byteorder),
 *     written from C with libzip, loadable by torch.load(weights_only=True),
 *     RWKV-Runner and the rwkv pip package;
 *   - st: the Ai00 / web-rwkv state file: safetensors with the same names but
 *     F16 and the last two dimensions transposed ([H, key, value]), which is
 *     what web-rwkv's read_state loads (load_matrix_f16 then a transpose).
 * And statetune's own (STATE_FMT_STATETUNE): the safetensors layout above
 * plus, for a state with a kernel-expanded part (SPEC section 4), per layer
 * `blocks.{i}.att.kstate_u0` F32 [H, N, M] and `blocks.{i}.att.kstate_support`
 * F32 [H, M, N], with "format": "statetune", "kernel_features" and "gamma" in
 * the metadata. Standard tools that look up time_state by name still read
 * its S0; only statetune evaluates the kernel term. The standard formats
 * refuse a state with such a part rather than silently dropping it.
 * Every write is atomic (temporary file, fsync, rename: common/st_fs.h).
 * Reads go through model/tensorfile.h, which treats the file as untrusted.
 */
#ifndef ST_STATE_FORMATS_H
#define ST_STATE_FORMATS_H

#include <stddef.h>

typedef enum {
    STATE_FMT_AUTO = -1,       /* from the file name's extension (reads: also content) */
    STATE_FMT_SAFETENSORS = 0, /* .safetensors */
    STATE_FMT_PTH = 1,         /* .pth / .pt */
    STATE_FMT_ST = 2,          /* .st (Ai00 / web-rwkv) */
    STATE_FMT_STATETUNE = 3,   /* --format statetune: safetensors + the kernel-expanded part */
} state_format_t;

/* "safetensors", "pth", "st" or "statetune". */
const char *state_format_name(state_format_t fmt);

/* Parses a --format value; ST_EINVAL naming the accepted values otherwise. */
int state_format_parse(const char *name, state_format_t *out, char *err);

/* The format a file name's extension asks for; ST_EINVAL when it has none of
 * .safetensors, .pth, .pt or .st (the sentence suggests --format). */
int state_format_from_path(const char *path, state_format_t *out, char *err);

/* A state in memory, as read from a file. */
typedef struct {
    int n_layer, n_head, head_size; /* shape [L, H, N, N] */
    float *data;                    /* L*H*N*N floats, official layout; owned */
} state_file_t;

/* The kernel-expanded part of a state: U0 and the fixed support vectors of
 * every layer and head, and the RBF width (engine/kstate.h has the math). */
typedef struct {
    int M;          /* support vectors per head, 1..STATE_MAX_FEATURES; 0 = none */
    float gamma;    /* RBF width, > 0 */
    float *u0;      /* (L, H, N, M), owned when read */
    float *support; /* (L, H, M, N), owned when read */
} state_kstate_t;
#define STATE_MAX_FEATURES 1024

/* Writes data ([L, H, N, N] fp32, official layout) to path in fmt
 * (STATE_FMT_AUTO: from the extension). kernel_features > 0 marks a state
 * with a kernel-expanded U0, which no standard format can hold: refused with
 * ST_EUNSUPPORTED and a sentence saying so (use state_write_statetune). */
int state_write(const char *path, state_format_t fmt, int n_layer, int n_head, int head_size, const float *data,
                int kernel_features, char *err);

/* Reads a state file (RWKV-PEFT .pth or .safetensors, or an Ai00 .st; fmt
 * STATE_FMT_AUTO decides by extension, .st meaning transposed F16). Layers
 * must run 0..L-1 without gaps and share one [H, N, N] shape. On success out
 * owns its data (state_file_free). */
int state_read(const char *path, state_format_t fmt, state_file_t *out, char *err);

/* Frees the data of a state read by state_read; accepts a zeroed struct. */
void state_file_free(state_file_t *s);

/* statetune's own format: S0 and, when ks is not NULL and ks->M > 0, its
 * kernel-expanded part (the caller's arrays, borrowed). Atomic. */
int state_write_statetune(const char *path, int n_layer, int n_head, int head_size, const float *data,
                          const state_kstate_t *ks, char *err);

/* Reads any state file as state_read does, and its kernel-expanded part
 * when it holds one (ks_out->M = 0 when not): every kstate tensor of every
 * layer must be there with one [H, N, M] / [H, M, N] shape, and gamma in the
 * metadata must be a positive number. On success ks_out owns its arrays. */
int state_read_statetune(const char *path, state_file_t *out, state_kstate_t *ks_out, char *err);

/* The kernel-expanded part alone, from a job folder's kstate.safetensors
 * (engine/kstate.c writes it), checked against the state's shape L, H, N. */
int state_kstate_read(const char *path, int n_layer, int n_head, int head_size, state_kstate_t *out, char *err);

/* Frees what a read put in ks; accepts a zeroed struct. */
void state_kstate_free(state_kstate_t *ks);

#endif
