/*
 * fuzz_model_tensorfile.c - libFuzzer entry for the model-file readers
 * (model/tensorfile.c and the safetensors, .pth and rwkv.cpp readers behind
 * it): the input is a whole file; when it opens, every tensor is read too.
 * SPEC section 9: no input may crash them under ASan/UBSan. Built and run by
 * tests/fuzz/run_all.sh.
 */
#include "common/st_err.h"
#include "model/tensorfile.h"
#include "tests/fuzz/fuzz_memfile.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[ST_ERR_LEN];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    tensorfile_t *tf = tensorfile_open(path, err);
    if (tf) {
        for (int i = 0; i < tensorfile_count(tf); i++) {
            const tf_tensor_info_t *t = tensorfile_info(tf, i);
            if (t->numel > (1 << 22)) continue;
            void *buf = malloc((size_t)t->numel * 8 + 8);
            if (!buf) continue;
            if (t->dtype == TF_I64 || t->dtype == TF_I32) tensorfile_read_i64(tf, t, buf, err);
            else tensorfile_read_f32(tf, t, buf, err);
            free(buf);
        }
        tensorfile_close(&tf);
    }
    close(fd);
    return 0;
}
