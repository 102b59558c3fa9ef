/*
 * fuzz_data_jsonl.c - libFuzzer entry for the JSONL dataset reader and the
 * batcher behind it (data/dataset.c, data/batcher.c): the first byte picks
 * ctx_len and truncate/split, the rest is the file. Accepted data must keep
 * the sample invariants and batch without error. SPEC section 9. Built and
 * run by tests/fuzz/run_all.sh.
 */
#include "common/st_err.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "data/tokenizer.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int ctx_len = 1 + (data[0] & 31);
    job_long_t mode = (data[0] & 32) ? JOB_SPLIT : JOB_TRUNCATE;
    char err[ST_ERR_LEN];
    tokenizer_t *tok = tokenizer_new_bytes();
    dataset_t *ds = NULL;
    if (tok && dataset_load_buffer("fuzz.jsonl", (const char *)data + 1, size - 1, tok, ctx_len, mode, &ds, err) ==
                   ST_OK) {
        for (int i = 0; i < dataset_count(ds); i++) {
            dataset_sample_t s = dataset_get(ds, i);
            int any = 0;
            if (s.n < 2 || s.n > ctx_len + 1 || s.train[0]) abort();
            for (int t = 1; t < s.n; t++) any |= s.train[t];
            if (!any) abort();
        }
        if (dataset_count(ds) > 0) {
            batcher_t *b = batcher_new(ds, 4, 2, ctx_len, 1, 1, 2, err);
            if (!b) abort();
            for (int step = 0; step < 3; step++) {
                batch_t out;
                if (batcher_next(b, &out, err) != ST_OK || out.n_micro != 1) abort();
            }
            batcher_destroy(&b);
            b = batcher_new_eval(ds, 3, ctx_len, 0, 2, err);
            if (!b) abort();
            for (;;) {
                batch_t out;
                if (batcher_next(b, &out, err) != ST_OK) abort();
                if (out.n_micro == 0) break;
            }
            batcher_destroy(&b);
        }
        dataset_destroy(&ds);
    }
    tokenizer_destroy(&tok);
    return 0;
}
