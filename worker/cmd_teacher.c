/*
 * cmd_teacher.c - statetune-worker teacher JOB.json --out FILE: the
 * observer's teacher logits ahead of time (SPEC section 4; the file format is
 * in engine/teacher_cache.h).
 *
 *   statetune-worker teacher JOB.json --out FILE [--dtype fp32|fp16] [--threads N]
 *
 * Runs the job's frozen teacher (observer.teacher, from observer.teacher_state)
 * once over the job's training samples, exactly as tuning cuts them, and
 * writes the top observer.top_k logits and their token ids of every trained
 * position. A tuning job with top_k > 0 does the same at its start on its own;
 * this command lets the cache be made once, elsewhere or earlier: written to
 * DIR/teacher_topk.stk, `statetune-worker tune JOB --local --out DIR` uses it
 * instead of running the teacher (and refuses it if the teacher, the data or
 * k have changed since). --dtype fp16 halves the values' bytes (the ids stay
 * int32); the default fp32 keeps the teacher's logits exactly.
 */
#include "worker/cmd.h"

#include "common/st_err.h"
#include "data/dataset.h"
#include "data/jobspec.h"
#include "data/tokenizer.h"
#include "engine/observer.h"
#include "engine/teacher_cache.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char s_usage[] =
    "usage: statetune-worker teacher JOB.json --out FILE [--dtype fp32|fp16] [--threads N]\n"
    "  --out FILE     the cache to write (DIR/teacher_topk.stk is what `tune --out DIR` reads)\n"
    "  --dtype T      fp32 (default, exact) or fp16 values; ids are int32 either way\n"
    "  --threads N    CPU threads (default: all cores)\n";

int cmd_teacher(int argc, char **argv)
{
    const char *job = NULL, *out = NULL, *dtype = "fp32";
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cmd_help(a, s_usage)) return 0;
        if (!strcmp(a, "--out") && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(a, "--dtype") && i + 1 < argc) {
            dtype = argv[++i];
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (a[0] != '-' && !job) {
            job = a;
        } else {
            fprintf(stderr, "statetune-worker teacher: unknown or incomplete option '%s'\n%s", a, s_usage);
            return 2;
        }
    }
    if (!job || !out) {
        fprintf(stderr, "statetune-worker teacher: JOB.json and --out FILE are required\n%s", s_usage);
        return 2;
    }
    if (strcmp(dtype, "fp32") != 0 && strcmp(dtype, "fp16") != 0) {
        fprintf(stderr, "statetune-worker teacher: --dtype must be fp32 or fp16, got '%s'\n", dtype);
        return 2;
    }
    char err[ST_ERR_LEN] = "";
    jobspec_t *spec = NULL;
    tokenizer_t *tok = NULL;
    dataset_t *train = NULL, *eval = NULL;
    observer_t *obs = NULL;
    teacher_cache_t *tc = NULL;
    int rc = jobspec_parse_file(job, &spec, err);
    if (!rc && spec->model_path) rc = jobspec_set_model(spec, NULL, err);
    if (!rc && !spec->observer.teacher_path)
        rc = st_fail(err, ST_EINVAL, "job '%s' has no observer.teacher file (a registered teacher name must be "
                     "resolved by the coordinator)", job);
    if (!rc && spec->observer.top_k < 1)
        rc = st_fail(err, ST_EINVAL, "job '%s' has observer.top_k 0 (the teacher on the fly): there is nothing to "
                     "compute ahead of time", job);
    if (!rc) rc = jobspec_check_inputs(spec, err);
    if (!rc) {
        tok = tokenizer_new(spec->tokenizer ? spec->tokenizer : "bytes", err);
        if (!tok) rc = ST_EFORMAT;
    }
    if (!rc) rc = dataset_load_job(spec, tok, &train, &eval, err);
    if (!rc) {
        engine_opts_t eo = {.backend = ENGINE_CPU, .max_batch = spec->micro_batch, .max_ctx = spec->ctx_len,
                            .threads = threads};
        obs = observer_new(spec->observer.teacher_path, spec->observer.teacher_state, &eo,
                           tokenizer_vocab_size(tok), err);
        if (!obs) rc = ST_EINVAL;
    }
    char tid[65];
    if (!rc) rc = tcache_teacher_id(spec->observer.teacher_path, spec->observer.teacher_state, tid, err);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!rc) {
        tc = tcache_build(obs, train, spec->micro_batch, spec->ctx_len, spec->observer.top_k,
                          strcmp(dtype, "fp16") ? TCACHE_F32 : TCACHE_F16, tid, err);
        if (!tc) rc = ST_EINVAL;
    }
    if (!rc) rc = tcache_write(tc, out, err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!rc) {
        size_t len;
        tcache_bytes(tc, &len);
        printf("teacher top-%d of %lld positions (%d samples) -> %s: %.1f MB, teacher mass kept %.4f, %.1f s\n",
               tcache_k(tc), (long long)tcache_rows(tc), dataset_count(train), out, len / 1e6, tcache_mean_mass(tc),
               (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
    } else {
        fprintf(stderr, "statetune-worker teacher: %s\n", err);
    }
    tcache_destroy(&tc);
    observer_destroy(&obs);
    dataset_destroy(&train);
    dataset_destroy(&eval);
    tokenizer_destroy(&tok);
    jobspec_destroy(&spec);
    if (!rc && fflush(stdout) != 0) return 1;
    return rc ? 1 : 0;
}
