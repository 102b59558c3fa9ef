/*
 * fuzz_safetensors.c - libFuzzer entry for safetensors files as statetune
 * meets them from outside: a model file (model/safetensors.c through
 * tensorfile, then the config inferred from the tensor shapes and the whole
 * model load with its NaN check, model/model.c) and an imported state file,
 * both the RWKV-PEFT .safetensors and the Ai00 .st (store/state_formats.c).
 * fuzz_model_tensorfile.c covers the container for every model format; this
 * harness goes past the container into what is built from it. SPEC section
 * 9: no input may crash these under ASan/UBSan.
 *
 * Seeds (tests/fuzz/seeds/safetensors/, written by
 * make_safetensors_seeds.py): a complete one-layer model of n_embd 64 and
 * state files in both layouts. Built and run by tests/fuzz/run_all.sh.
 */
#include "common/st_err.h"
#include "model/model.h"
#include "model/tensorfile.h"
#include "store/state_formats.h"
#include "tests/fuzz/fuzz_memfile.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Imports path as a state file of format fmt and, when it is accepted, reads
 * every value the shape claims (ASan catches a buffer shorter than that). */
static void s_state(const char *path, state_format_t fmt)
{
    char err[ST_ERR_LEN];
    state_file_t s = {0};
    if (state_read(path, fmt, &s, err) == ST_OK) {
        volatile float sink = 0;
        size_t n = (size_t)s.n_layer * s.n_head * s.head_size * s.head_size;
        for (size_t i = 0; i < n; i++) sink += s.data[i];
        (void)sink;
    } else if (getenv("STATETUNE_FUZZ_VERBOSE")) {
        fprintf(stderr, "state: %s\n", err);
    }
    state_file_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[ST_ERR_LEN];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;

    tensorfile_t *tf = tensorfile_open(path, err);
    if (tf) {
        rwkv_config_t cfg;
        int ok = rwkv_config_from_tensorfile(tf, &cfg, err) == ST_OK;
        tensorfile_close(&tf);
        /* the whole load: tensorfile_open has checked that every tensor's
         * bytes lie inside the file, so a header cannot claim more memory
         * than the input's size suggests */
        if (ok) {
            rwkv_model_t *m = rwkv_model_load(path, err);
            if (!m && getenv("STATETUNE_FUZZ_VERBOSE")) fprintf(stderr, "model: %s\n", err);
            rwkv_model_destroy(&m);
        }
    } else if (getenv("STATETUNE_FUZZ_VERBOSE")) {
        fprintf(stderr, "tensorfile: %s\n", err);
    }
    s_state(path, STATE_FMT_SAFETENSORS);
    s_state(path, STATE_FMT_ST);
    close(fd);
    return 0;
}
