/*
 * ggmf.c - indexes rwkv.cpp .bin files. Not yet implemented in this commit:
 * opening one reports that clearly.
 */
#include "model/tensorfile_impl.h"

#include "common/st_err.h"

int tf_open_ggmf(tensorfile_t *self, char *err)
{
    return st_fail(err, ST_EUNSUPPORTED, "rwkv.cpp .bin files are not readable yet");
}
