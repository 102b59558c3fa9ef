/*
 * harness.c - runner, fixtures lookup and comparison helpers (see harness.h).
 */
#include "harness.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef STATETUNE_DEFAULT_FIXTURES
#define STATETUNE_DEFAULT_FIXTURES "../shared/fixtures"
#endif

const char *st_test_fixtures(void)
{
    const char *env = getenv("STATETUNE_FIXTURES");
    const char *dir = (env && *env) ? env : STATETUNE_DEFAULT_FIXTURES;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return NULL;
    return dir;
}

const char *st_test_fixture(const char *relpath)
{
    static char buf[4096];
    const char *dir = st_test_fixtures();
    if (!dir) {
        printf("skipped: fixtures folder not found (set STATETUNE_FIXTURES or place shared/fixtures beside the checkout)\n");
        return NULL;
    }
    snprintf(buf, sizeof buf, "%s/%s", dir, relpath);
    struct stat st;
    if (stat(buf, &st) != 0) {
        printf("skipped: fixture '%s' not found\n", buf);
        return NULL;
    }
    return buf;
}

const char *st_test_tmpdir(void)
{
    static char buf[256];
    const char *base = getenv("TMPDIR");
    snprintf(buf, sizeof buf, "%s/statetune-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(buf)) return "/tmp";
    return buf;
}

double st_rel_err(const float *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

double st_rel_err_ff(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

double st_rng_uniform(st_rng_t *g)
{
    g->s ^= g->s << 13;
    g->s ^= g->s >> 7;
    g->s ^= g->s << 17;
    return (double)(g->s >> 11) / 9007199254740992.0;
}

float st_rng_normal(st_rng_t *g)
{
    double u1 = st_rng_uniform(g) + 1e-12, u2 = st_rng_uniform(g);
    return (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
}

int st_test_main(int argc, char **argv, const st_test_t *tests)
{
    int failed = 0, ran = 0, skipped = 0;
    for (const st_test_t *t = tests; t->name; t++) {
        if (argc > 1 && strcmp(argv[1], t->name) != 0) continue;
        int rc = t->fn();
        ran++;
        if (rc == ST_TEST_SKIP) {
            skipped++;
            printf(" * %s: skipped\n", t->name);
        } else if (rc != 0) {
            failed++;
            printf(" * %s: FAILED\n", t->name);
        } else {
            printf(" * %s: OK\n", t->name);
        }
    }
    if (ran == 0) {
        fprintf(stderr, "no test named '%s'\n", argc > 1 ? argv[1] : "");
        return 2;
    }
    if (failed) return 1;
    if (argc > 1 && skipped == ran) return ST_TEST_SKIP;
    return 0;
}
