/*
 * fuzz_model_pickle.c - libFuzzer entry for the safe pickle subset
 * (model/pickle.c) on its own: inside a zip, most mutations would only trip
 * the CRC check. The input is a data.pkl. Built and run by
 * tests/fuzz/run_all.sh.
 */
#include "common/st_err.h"
#include "model/pickle.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int s_on_tensor(void *ctx, const pickle_tensor_t *t, char *err)
{
    (void)err;
    /* touch every field, so a dangling string or bad count is noticed */
    size_t *n = ctx;
    for (const char *p = t->name; *p; p++) (*n)++;
    for (const char *p = t->storage_key; *p; p++) (*n)++;
    for (int d = 0; d < t->ndim; d++) *n += (size_t)t->size[d] + (size_t)t->stride[d];
    return ST_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ST_ERR_LEN];
    size_t n = 0;
    pickle_state_dict(data, size, s_on_tensor, &n, err);
    return 0;
}
