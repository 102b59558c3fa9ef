/*
 * test_model.c - model files and the model in memory (model/): every fixture
 * model loads from every format it is stored in with the right configuration,
 * the same tensor read from different containers is the same, reference dumps
 * read back, and hostile or broken files are refused with a sentence that
 * names the problem instead of crashing.
 */
#include "common/st_err.h"
#include "model/tensorfile.h"
#include "tests/harness.h"

#include <stdint.h>

/* ---- helpers ------------------------------------------------------------- */

/* Writes len bytes to a fresh file in a temporary folder; returns its path in
 * a static buffer. */
static const char *s_write_tmp(const char *name, const void *data, size_t len)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", st_test_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    if (!f) return NULL;
    if (len && fwrite(data, 1, len, f) != len) {
        fclose(f);
        return NULL;
    }
    fclose(f);
    return path;
}

/* A safetensors file with the given JSON header and data_len zero bytes. */
static const char *s_write_safetensors(const char *name, const char *json, size_t data_len)
{
    size_t n = strlen(json);
    size_t total = 8 + n + data_len;
    unsigned char *buf = calloc(1, total);
    if (!buf) return NULL;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, json, n);
    const char *p = s_write_tmp(name, buf, total);
    free(buf);
    return p;
}

/* Opening path must fail with ST_EFORMAT and a message containing want. */
static int s_expect_refusal(const char *path, const char *want)
{
    char err[ST_ERR_LEN] = "";
    tensorfile_t *tf = tensorfile_open(path, err);
    CHECKF(tf == NULL, "'%s' was accepted", path);
    CHECKF(strstr(err, want) != NULL, "message '%s' does not mention '%s'", err, want);
    printf("   refused as expected: %s\n", err);
    return 0;
}

/* ---- safetensors ------------------------------------------------------------ */

static int test_safetensors_ref_dump(void)
{
    const char *path = st_test_fixture("rwkv7/tiny.ref.safetensors");
    if (!path) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    tensorfile_t *tf = tensorfile_open(path, err);
    CHECKF(tf != NULL, "%s", err);
    CHECK(tensorfile_format(tf) == TF_FORMAT_SAFETENSORS);
    const tf_tensor_info_t *tok = tensorfile_find(tf, "tokens");
    const tf_tensor_info_t *tgt = tensorfile_find(tf, "targets");
    const tf_tensor_info_t *lg = tensorfile_find(tf, "logits");
    const tf_tensor_info_t *loss = tensorfile_find(tf, "loss");
    CHECK(tok && tgt && lg && loss);
    CHECK(tok->dtype == TF_I64 && lg->dtype == TF_F64);
    CHECK(tok->ndim == 2 && lg->ndim == 3);
    CHECK(lg->shape[0] == tok->shape[0] && lg->shape[1] == tok->shape[1]);
    CHECK(tensorfile_find(tf, "no_such_tensor") == NULL);

    int64_t B = tok->shape[0], T = tok->shape[1], V = lg->shape[2];
    int64_t *tokens = malloc((size_t)(B * T) * sizeof *tokens);
    int64_t *targets = malloc((size_t)(B * T) * sizeof *targets);
    double *logits = malloc((size_t)lg->numel * sizeof *logits);
    CHECK(tokens && targets && logits);
    CHECKF(tensorfile_read_i64(tf, tok, tokens, err) == ST_OK, "%s", err);
    CHECKF(tensorfile_read_i64(tf, tgt, targets, err) == ST_OK, "%s", err);
    CHECKF(tensorfile_read_f64(tf, lg, logits, err) == ST_OK, "%s", err);
    /* targets are tokens shifted by one; ids are in the vocabulary */
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t + 1 < T; t++)
            CHECK(targets[b * T + t] == tokens[b * T + t + 1]);
    for (int64_t i = 0; i < B * T; i++) CHECK(tokens[i] >= 0 && tokens[i] < V);
    /* the loss recomputed from the stored logits equals the stored loss */
    double ce = 0;
    for (int64_t i = 0; i < B * T; i++) {
        const double *row = logits + i * V;
        double mx = row[0], s = 0;
        for (int64_t v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
        for (int64_t v = 0; v < V; v++) s += exp(row[v] - mx);
        ce += mx + log(s) - row[targets[i]];
    }
    ce /= (double)(B * T);
    double stored;
    CHECKF(tensorfile_read_f64(tf, loss, &stored, err) == ST_OK, "%s", err);
    CHECKF(fabs(ce - stored) < 1e-9, "recomputed %.12f stored %.12f", ce, stored);
    /* the same logits as fp32 are the fp64 ones rounded */
    float *lf = malloc((size_t)lg->numel * sizeof *lf);
    CHECK(lf);
    CHECKF(tensorfile_read_f32(tf, lg, lf, err) == ST_OK, "%s", err);
    for (int64_t i = 0; i < lg->numel; i++) CHECK(lf[i] == (float)logits[i]);
    /* type confusion is refused, not reinterpreted */
    CHECK(tensorfile_read_f32(tf, tok, lf, err) != ST_OK);
    CHECK(tensorfile_read_i64(tf, lg, tokens, err) != ST_OK);
    free(lf);
    free(tokens);
    free(targets);
    free(logits);
    tensorfile_close(&tf);
    CHECK(tf == NULL);
    tensorfile_close(&tf); /* NULL is fine */
    return 0;
}

static int test_safetensors_hostile(void)
{
    int rc = 0;
    /* a header length of 2^40: "header claims ... bytes but the file has ..." */
    unsigned char big[16] = {0, 0, 0, 0, 0, 1, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    rc |= s_expect_refusal(s_write_tmp("big.safetensors", big, sizeof big), "header claims");
    rc |= s_expect_refusal(
        s_write_safetensors("dtype.safetensors",
                            "{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4),
        "dtype");
    rc |= s_expect_refusal(
        s_write_safetensors("range.safetensors",
                            "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8),
        "'x'");
    rc |= s_expect_refusal(
        s_write_safetensors("size.safetensors",
                            "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16),
        "'x'");
    rc |= s_expect_refusal(
        s_write_safetensors("neg.safetensors",
                            "{\"x\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", 16),
        "'x'");
    rc |= s_expect_refusal(
        s_write_safetensors("huge.safetensors",
                            "{\"x\":{\"dtype\":\"F32\",\"shape\":[1048576,1048576,1048576],"
                            "\"data_offsets\":[0,16]}}", 16),
        "'x'");
    rc |= s_expect_refusal(s_write_safetensors("json.safetensors", "{\"x\":{\"dtype\":", 16),
                           "JSON");
    rc |= s_expect_refusal(
        s_write_safetensors("dup.safetensors",
                            "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                            "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
        "JSON");
    /* a valid small file with metadata and overlapping tensors is fine */
    const char *ok = s_write_safetensors(
        "ok.safetensors",
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
        "\"e\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[8,8]}}", 8);
    char err[ST_ERR_LEN];
    tensorfile_t *tf = tensorfile_open(ok, err);
    CHECKF(tf != NULL, "%s", err);
    CHECK(tensorfile_count(tf) == 3);
    tensorfile_close(&tf);
    return rc;
}

static int test_not_a_model(void)
{
    int rc = 0;
    rc |= s_expect_refusal(s_write_tmp("empty.bin", "", 0), "empty");
    unsigned char junk[4096];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < sizeof junk; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        junk[i] = (unsigned char)x;
    }
    junk[8] = 'x'; /* make sure it does not look like safetensors by chance */
    rc |= s_expect_refusal(s_write_tmp("junk.bin", junk, sizeof junk), "not a model file");
    char err[ST_ERR_LEN];
    CHECK(tensorfile_open("/nonexistent/model.pth", err) == NULL);
    CHECK(strstr(err, "/nonexistent/model.pth") != NULL);
    return rc;
}

static const st_test_t tests[] = {
    {"safetensors_ref_dump", test_safetensors_ref_dump},
    {"safetensors_hostile", test_safetensors_hostile},
    {"not_a_model", test_not_a_model},
    {NULL, NULL},
};

int main(int argc, char **argv) { return st_test_main(argc, argv, tests); }
