/*
 * harness.h - the small test harness every test program shares.
 *
 * Each test file defines a table of {name, function} and calls
 * st_test_main(argc, argv, table): with no argument it runs every test, with a
 * name it runs that one (CTest registers each test by name, see
 * tests/CMakeLists.txt). A test returns 0 on success, ST_TEST_SKIP (77) when
 * something it needs is absent (it says what), anything else on failure.
 * CHECK prints the failed condition with file:line and fails the test.
 */
#ifndef ST_TEST_HARNESS_H
#define ST_TEST_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ST_TEST_SKIP 77

typedef struct {
    const char *name;
    int (*fn)(void);
} st_test_t;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            return 1;                                                            \
        }                                                                        \
    } while (0)

#define CHECKF(cond, ...)                                                        \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
            return 1;                                                            \
        }                                                                        \
    } while (0)

/* The fixtures folder (STATETUNE_FIXTURES, else ../shared/fixtures beside the
 * source tree), or NULL when it is absent. */
const char *st_test_fixtures(void);

/* Path of a file under the fixtures folder in a static buffer, or NULL (and a
 * "skipped: ..." line on stdout) when the fixtures are absent. */
const char *st_test_fixture(const char *relpath);

/* A fresh temporary directory for this test (removed by the OS later). */
const char *st_test_tmpdir(void);

/* ||a - b|| / ||b|| over n elements, in double. */
double st_rel_err(const float *a, const double *b, size_t n);
double st_rel_err_ff(const float *a, const float *b, size_t n);

/* A seeded xorshift64 generator for test inputs: the same numbers on every
 * run and machine, so a failure can be replayed. Seed s with any non-zero
 * value ({.s = 11}). */
typedef struct {
    uint64_t s;
} st_rng_t;

/* Uniform in [0, 1), 53 bits. */
double st_rng_uniform(st_rng_t *g);

/* Standard normal (Box-Muller over two uniforms). */
float st_rng_normal(st_rng_t *g);

int st_test_main(int argc, char **argv, const st_test_t *tests);

#endif
