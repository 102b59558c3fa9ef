/*
 * test_common.c - the shared helpers: half-float conversions, atomic files,
 * hashing.
 */
#include "common/st_err.h"
#include "common/st_fs.h"
#include "common/st_half.h"
#include "tests/harness.h"

#include <sys/stat.h>
#include <unistd.h>

static int test_half_round_trip(void)
{
    /* Every finite fp16 value survives fp16 -> fp32 -> fp16. */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        if ((h & 0x7c00u) == 0x7c00u) continue; /* inf/NaN */
        float f = st_f16_to_f32((uint16_t)h);
        CHECKF(st_f32_to_f16(f) == h, "fp16 0x%04x -> %g -> 0x%04x", h, (double)f, st_f32_to_f16(f));
    }
    /* bf16 rounds to nearest even like torch. */
    CHECK(st_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(st_bf16_to_f32(st_f32_to_bf16(3.140625f)) == 3.140625f);
    CHECK(st_f32_to_bf16(1.00390625f) == 0x3f80); /* halfway, rounds to even */
    CHECK(st_f32_to_f16(65520.0f) == 0x7c00);      /* overflows to inf */
    CHECK(st_f32_to_f16(1e-8f) == 0x0000 || st_f32_to_f16(1e-8f) == 0x0000);
    CHECK(st_f16_to_f32(st_f32_to_f16(5.9604645e-8f)) == 5.9604645e-8f); /* smallest subnormal */
    return 0;
}

static int test_atomic_file(void)
{
    char err[ST_ERR_LEN];
    char path[512];
    snprintf(path, sizeof path, "%s/a.bin", st_test_tmpdir());
    CHECK(st_write_file_atomic(path, "old", 3, err) == ST_OK);
    /* An abandoned write leaves the old content and no temporary. */
    st_atomic_file_t *f = st_atomic_file_new(path, err);
    CHECK(f != NULL);
    fputs("half-written", st_atomic_file_stream(f));
    st_atomic_file_destroy(&f);
    CHECK(f == NULL);
    char *data = NULL;
    size_t n = 0;
    CHECK(st_read_file(path, 100, &data, &n, err) == ST_OK);
    CHECK(n == 3 && !memcmp(data, "old", 3));
    free(data);
    CHECK(st_write_file_atomic(path, "new!", 4, err) == ST_OK);
    CHECK(st_read_file(path, 100, &data, &n, err) == ST_OK);
    CHECK(n == 4 && !memcmp(data, "new!", 4));
    free(data);
    /* Refusals name the problem. */
    CHECK(st_read_file(path, 2, &data, &n, err) == ST_EINVAL);
    CHECK(strstr(err, "more than") != NULL);
    CHECK(st_read_file("/nonexistent/x", 2, &data, &n, err) == ST_ENOTFOUND);
    return 0;
}

static int test_sha256(void)
{
    char err[ST_ERR_LEN], hex[65], hex2[65];
    char path[512];
    snprintf(path, sizeof path, "%s/h.txt", st_test_tmpdir());
    CHECK(st_write_file_atomic(path, "abc", 3, err) == ST_OK);
    CHECK(st_sha256_file(path, hex, err) == ST_OK);
    CHECK(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    st_sha256_hex("abc", 3, hex2);
    CHECK(!strcmp(hex, hex2));
    return 0;
}

/* A FIFO named where a file is expected must be refused at once: opening one
 * for reading blocks until a writer comes, which once hung the coordinator. */
static int test_fifo_refused(void)
{
    char err[ST_ERR_LEN], hex[65];
    char path[512];
    snprintf(path, sizeof path, "%s/fifo", st_test_tmpdir());
    CHECK(mkfifo(path, 0600) == 0);
    char *data = NULL;
    size_t n = 0;
    CHECK(st_read_file(path, 100, &data, &n, err) == ST_EIO);
    CHECK(strstr(err, "not a regular file") != NULL);
    CHECK(st_sha256_file(path, hex, err) == ST_EIO);
    CHECK(st_open_regular(path, err) == ST_EIO);
    CHECK(st_open_regular("/", err) == ST_EIO);
    unlink(path);
    return 0;
}

static int test_wrap(void)
{
    char err[ST_ERR_LEN];
    st_fail(err, ST_EFORMAT, "bad byte at %d", 7);
    CHECK(st_wrap(err, ST_EFORMAT, "loading '%s': ", "m.pth") == ST_EFORMAT);
    CHECK(!strcmp(err, "loading 'm.pth': bad byte at 7"));
    return 0;
}

int main(int argc, char **argv)
{
    static const st_test_t tests[] = {
        {"half_round_trip", test_half_round_trip},
        {"atomic_file", test_atomic_file},
        {"sha256", test_sha256},
        {"wrap", test_wrap},
        {"fifo_refused", test_fifo_refused},
        {NULL, NULL},
    };
    return st_test_main(argc, argv, tests);
}
