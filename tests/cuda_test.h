/*
 * cuda_test.h - what every GPU test program shares beside harness.h: whether
 * a CUDA device is there (without one a test skips, it never fails: CI has no
 * GPU and runs the `gpu` label only to see it skip cleanly), the seed of a
 * run's fresh random inputs (printed; STATETUNE_SEED replays it), the tests'
 * xorshift* generator and the inputs the engine tests draw from it (tokens,
 * targets, an S0), and the relative error of double results.
 */
#ifndef ST_CUDA_TEST_H
#define ST_CUDA_TEST_H

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline int st_test_have_gpu(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("skipped: no CUDA device\n");
        return 0;
    }
    return 1;
}

/* The seed of this run: STATETUNE_SEED when set, else the clock, printed so
 * that a failure can be replayed. */
static inline uint64_t st_test_seed(void)
{
    const char *env = getenv("STATETUNE_SEED");
    uint64_t seed = env && *env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("seed %llu (STATETUNE_SEED replays it)\n", (unsigned long long)seed);
    return seed;
}

/* xorshift64*: s must start non-zero */
static inline uint64_t st_test_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* uniform in [0, 1), from the top 53 bits */
static inline double st_test_unit(uint64_t *s) { return (double)(st_test_next(s) >> 11) / 9007199254740992.0; }

/* n floats uniform in [-0.5, 0.5): a random S0 (or A) */
static inline void st_test_centered(uint64_t *s, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = (float)(st_test_unit(s) - 0.5);
}

/* n tokens below vocab and, when tgt is not NULL, n targets, one in
 * mask_one_in of them (on average) -1, none when mask_one_in is 0 */
static inline void st_test_tokens(uint64_t *s, size_t n, int vocab, int mask_one_in, int32_t *tok, int32_t *tgt)
{
    for (size_t i = 0; i < n; i++) {
        tok[i] = (int32_t)(st_test_next(s) % (uint64_t)vocab);
        if (tgt)
            tgt[i] = mask_one_in && st_test_next(s) % (uint64_t)mask_one_in == 0
                         ? -1
                         : (int32_t)(st_test_next(s) % (uint64_t)vocab);
    }
}

/* ||a - b|| / ||b|| over n doubles (||a - b|| when b is 0): harness.h's
 * st_rel_err_ff for results kept in double (DBP's Q) */
static inline double st_rel_err_dd(const double *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

#endif
