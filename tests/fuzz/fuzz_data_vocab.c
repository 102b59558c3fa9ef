/*
 * fuzz_data_vocab.c - libFuzzer entry for the World vocabulary parser
 * (data/tokenizer.c): the input is a whole vocabulary file. When it loads, a
 * fixed text must encode and decode back to itself whenever every byte of it
 * has a token. SPEC section 9: no input may crash it under ASan/UBSan. Built
 * and run by tests/fuzz/run_all.sh.
 */
#include "common/st_err.h"
#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_memfile.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[ST_ERR_LEN];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    tokenizer_t *tok = tokenizer_new_world(path, err);
    if (tok) {
        static const char text[] = "ab\0\xe4\xbd\xa0  it's\\n\t\xff";
        int32_t *ids = NULL;
        size_t n = 0;
        if (tokenizer_encode(tok, text, sizeof text - 1, &ids, &n, err) == ST_OK) {
            char *back = NULL;
            size_t len = 0;
            if (tokenizer_decode(tok, ids, n, &back, &len, err) != ST_OK || len != sizeof text - 1 ||
                memcmp(back, text, len) != 0)
                abort(); /* decode(encode(x)) must be x */
            free(back);
        }
        free(ids);
        tokenizer_destroy(&tok);
    }
    close(fd);
    return 0;
}
