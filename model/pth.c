/*
 * pth.c - indexes the official PyTorch checkpoint (a torch.save zip). Not yet
 * implemented in this commit: opening one reports that clearly.
 */
#include "model/tensorfile_impl.h"

#include "common/st_err.h"

int tf_open_pth(tensorfile_t *self, char *err)
{
    return st_fail(err, ST_EUNSUPPORTED, ".pth files are not readable yet");
}

int tf_pth_stream(tensorfile_t *self, const tf_entry_t *e, tf_sink_fn sink, void *ctx, char *err)
{
    return st_fail(err, ST_EUNSUPPORTED, ".pth files are not readable yet");
}
