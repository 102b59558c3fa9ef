/*
 * pickle.h - a safe interpreter for the subset of Python's pickle that
 * torch.save uses for a state dict (protocols 2 to 5).
 *
 * It executes nothing: the only globals it accepts are collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2 / _rebuild_tensor and the typed storage
 * classes, and "calling" them only builds plain records. Anything else (a
 * global such as os.system, an opcode outside the subset, a malformed or
 * oversized stream) is refused with ST_EFORMAT and one sentence. Memo size,
 * stack depth, string lengths and the number of objects are bounded.
 */
#ifndef ST_PICKLE_H
#define ST_PICKLE_H

#include "model/tensorfile.h"

#include <stddef.h>
#include <stdint.h>

/* One tensor of the state dict, as the pickle describes it. Strings are
 * borrowed and valid only during the callback. */
typedef struct {
    const char *name;           /* key in the state dict */
    const char *storage_key;    /* the storage's key: its bytes are the zip entry data/<key> */
    tf_dtype_t dtype;           /* from the storage class (torch.BFloat16Storage -> BF16) */
    int64_t storage_numel;      /* elements the storage holds, as the pickle claims */
    int64_t offset;             /* storage offset of element 0, in elements */
    int ndim;                   /* 0..TF_MAX_DIMS */
    int64_t size[TF_MAX_DIMS];  /* shape */
    int64_t stride[TF_MAX_DIMS];/* strides in elements */
} pickle_tensor_t;

typedef int (*pickle_tensor_fn)(void *ctx, const pickle_tensor_t *t, char *err);

/* Interprets a data.pkl whose result must be a dict of tensors, calling fn
 * once per entry in the dict's order. Returns ST_OK, fn's error, or
 * ST_EFORMAT/ST_ENOMEM with err filled. */
int pickle_state_dict(const uint8_t *data, size_t len, pickle_tensor_fn fn, void *ctx, char *err);

#endif
