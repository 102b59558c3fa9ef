/*
 * cuda_test.h - what every GPU test program shares beside harness.h: whether
 * a CUDA device is there (without one a test skips, it never fails: CI has no
 * GPU and runs the `gpu` label only to see it skip cleanly), the seed of a
 * run's fresh random inputs (printed; STATETUNE_SEED replays it) and the
 * tests' xorshift* generator.
 */
#ifndef ST_CUDA_TEST_H
#define ST_CUDA_TEST_H

#include <cuda_runtime_api.h>
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

#endif
