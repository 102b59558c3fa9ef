/*
 * fuzz_data_jobspec.c - libFuzzer entry for the job-file parser
 * (data/jobspec.c): the input is the job file's text. Whatever is accepted
 * must survive its canonical JSON: parse(to_json(x)) == x. SPEC section 9.
 * Built and run by tests/fuzz/run_all.sh.
 */
#include "common/st_err.h"
#include "data/jobspec.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    char err[ST_ERR_LEN];
    jobspec_t *j = NULL, *k = NULL;
    if (jobspec_parse_string(text, "/nonexistent-fuzz/job.json", &j, err) == ST_OK) {
        char *canon = jobspec_to_json(j);
        if (!canon || jobspec_parse_string(canon, NULL, &k, err) != ST_OK || !jobspec_equal(j, k)) abort();
        free(canon);
        jobspec_destroy(&k);
        jobspec_destroy(&j);
    }
    free(text);
    return 0;
}
