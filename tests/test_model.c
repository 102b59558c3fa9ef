/*
 * test_model.c - model files and the model in memory (model/): every fixture
 * model loads from every format it is stored in with the right configuration,
 * the same tensor read from different containers is the same, reference dumps
 * read back, and hostile or broken files are refused with a sentence that
 * names the problem instead of crashing.
 */
#include "common/st_err.h"
#include "model/model.h"
#include "model/pickle.h"
#include "model/tensorfile.h"
#include "tests/harness.h"

#include <jansson.h>
#include <sodium.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

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

/* The whole of a file in a malloc'd buffer (its size in *len), or NULL. */
static unsigned char *s_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *data = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0)
        data = malloc((size_t)n + 1);
    if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    if (data) *len = (size_t)n;
    return data;
}

/* Copies a fixture's path into out (st_test_fixture's buffer is reused by
 * the next call); ST_TEST_SKIP when it is absent. */
static int s_fixture_copy(const char *rel, char *out, size_t out_len)
{
    const char *p = st_test_fixture(rel);
    if (!p) return ST_TEST_SKIP;
    snprintf(out, out_len, "%s", p);
    return 0;
}

/* data.pkl of torch.save({'x': t}) where t views FloatStorage '0' of 4
 * floats; view is the pickled (storage offset, size, stride) of t. */
#define S_PKL_X(view)                                                                                  \
    "\x80\x02}q\x00(X\x01\x00\x00\x00x" "ctorch._utils\n_rebuild_tensor_v2\n"                          \
    "((X\x07\x00\x00\x00storage" "ctorch\nFloatStorage\n" "X\x01\x00\x00\x00" "0"                      \
    "X\x03\x00\x00\x00" "cpu" "K\x04tQ" view "\x89" "ccollections\nOrderedDict\n" ")RtRu" "."

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


/* Opens two files and checks they hold the same tensors (names, official
 * shapes) with values that agree bit for bit (max_rel 0) or within max_rel of
 * the larger magnitude (fp16 rounding). Returns the number compared. */
static int s_compare_files(const char *pa, const char *pb, double max_rel, int *n_compared)
{
    char err[ST_ERR_LEN];
    tensorfile_t *a = tensorfile_open(pa, err);
    CHECKF(a != NULL, "%s", err);
    tensorfile_t *b = tensorfile_open(pb, err);
    CHECKF(b != NULL, "%s", err);
    CHECKF(tensorfile_count(a) == tensorfile_count(b), "%d vs %d tensors", tensorfile_count(a),
           tensorfile_count(b));
    *n_compared = 0;
    for (int i = 0; i < tensorfile_count(a); i++) {
        const tf_tensor_info_t *ta = tensorfile_info(a, i);
        const tf_tensor_info_t *tb = tensorfile_find(b, ta->name);
        CHECKF(tb != NULL, "'%s' missing from %s", ta->name, pb);
        CHECKF(ta->ndim == tb->ndim, "'%s': %d vs %d dims", ta->name, ta->ndim, tb->ndim);
        for (int d = 0; d < ta->ndim; d++)
            CHECKF(ta->shape[d] == tb->shape[d], "'%s' dim %d: %lld vs %lld", ta->name, d,
                   (long long)ta->shape[d], (long long)tb->shape[d]);
        float *xa = malloc((size_t)ta->numel * sizeof *xa + 4);
        float *xb = malloc((size_t)tb->numel * sizeof *xb + 4);
        CHECK(xa && xb);
        CHECKF(tensorfile_read_f32(a, ta, xa, err) == ST_OK, "%s", err);
        CHECKF(tensorfile_read_f32(b, tb, xb, err) == ST_OK, "%s", err);
        for (int64_t k = 0; k < ta->numel; k++) {
            if (max_rel == 0)
                CHECKF(memcmp(&xa[k], &xb[k], 4) == 0, "'%s'[%lld]: %.9g vs %.9g", ta->name,
                       (long long)k, (double)xa[k], (double)xb[k]);
            else
                CHECKF(fabsf(xa[k] - xb[k]) <= max_rel * fmaxf(fabsf(xa[k]), 0x1p-14f) /* fp16 normal range */,
                       "'%s'[%lld]: %.9g vs %.9g", ta->name, (long long)k, (double)xa[k],
                       (double)xb[k]);
        }
        free(xa);
        free(xb);
        (*n_compared)++;
    }
    tensorfile_close(&a);
    tensorfile_close(&b);
    return 0;
}

/* A zip holding the given (name, bytes, len) entries, like torch.save's. */
typedef struct {
    const char *name;
    const void *data;
    size_t len;
} zip_item_t;

static const char *s_write_zip(const char *name, const zip_item_t *items, int n)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", st_test_tmpdir(), name);
    int zerr;
    zip_t *z = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &zerr);
    if (!z) return NULL;
    for (int i = 0; i < n; i++) {
        zip_source_t *src = zip_source_buffer(z, items[i].data, items[i].len, 0);
        if (!src || zip_file_add(z, items[i].name, src, ZIP_FL_OVERWRITE) < 0) {
            zip_discard(z);
            return NULL;
        }
    }
    if (zip_close(z) != 0) return NULL;
    return path;
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
    /* each header is refused with a message naming what is wrong */
    static const struct {
        const char *file, *header;
        size_t data_len;
        const char *want;
    } bad[] = {
        {"dtype.safetensors", "{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, "dtype"},
        {"range.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "'x'"},
        {"size.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16, "'x'"},
        {"neg.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", 16, "'x'"},
        {"huge.safetensors",
         "{\"x\":{\"dtype\":\"F32\",\"shape\":[1048576,1048576,1048576],\"data_offsets\":[0,16]}}", 16, "'x'"},
        {"json.safetensors", "{\"x\":{\"dtype\":", 16, "JSON"},
        {"dup.safetensors",
         "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         4, "JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        rc |= s_expect_refusal(s_write_safetensors(bad[i].file, bad[i].header, bad[i].data_len), bad[i].want);
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


/* ---- .pth ------------------------------------------------------------------- */

static int test_pth_matches_safetensors(void)
{
    const char *pairs[][2] = {
        {"rwkv7/tiny.pth", "rwkv7/tiny.safetensors"},
        {"rwkv7/tiny-rwkv7-834K.pth", "rwkv7/tiny-rwkv7-834K.safetensors"},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        char a[2048], b[2048];
        int rc = s_fixture_copy(pairs[i][0], a, sizeof a);
        if (rc || (rc = s_fixture_copy(pairs[i][1], b, sizeof b))) return rc;
        char err[ST_ERR_LEN];
        tensorfile_t *tf = tensorfile_open(a, err);
        CHECKF(tf != NULL, "%s", err);
        CHECK(tensorfile_format(tf) == TF_FORMAT_PTH);
        const tf_tensor_info_t *emb = tensorfile_find(tf, "emb.weight");
        CHECK(emb && emb->ndim == 2);
        tensorfile_close(&tf);
        int n = 0;
        if (s_compare_files(a, b, 0, &n)) return 1;
        printf("   %s: %d tensors bit-identical to the safetensors copy\n", pairs[i][0], n);
        CHECK(n > 20);
    }
    return 0;
}

/* torch.save with pickle protocols 2 and 4 (FRAME, MEMOIZE, STACK_GLOBAL),
 * an OrderedDict with _metadata (BUILD), a tensor at a storage offset, a 0-d
 * tensor and every dtype; written by torch 1.13 into tests/fuzz/seeds. */
static int test_pth_protocols(void)
{
    const char *src = getenv("STATETUNE_SOURCE_DIR");
    if (!src) {
        printf("skipped: STATETUNE_SOURCE_DIR is not set\n");
        return ST_TEST_SKIP;
    }
    for (int proto = 2; proto <= 4; proto += 2) {
        char path[2048], err[ST_ERR_LEN];
        snprintf(path, sizeof path, "%s/tests/fuzz/seeds/model_tensorfile/p%d.pth", src, proto);
        tensorfile_t *tf = tensorfile_open(path, err);
        CHECKF(tf != NULL, "%s", err);
        CHECK(tensorfile_count(tf) == 8);
        const tf_tensor_info_t *t = tensorfile_find(tf, "slice");
        CHECK(t && t->dtype == TF_F32 && t->ndim == 1 && t->numel == 4);
        float f[6];
        CHECKF(tensorfile_read_f32(tf, t, f, err) == ST_OK, "%s", err);
        for (int i = 0; i < 4; i++) CHECK(f[i] == (float)(i + 2)); /* arange(8)[2:6] */
        t = tensorfile_find(tf, "half");
        CHECK(t && t->dtype == TF_F16 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3);
        CHECKF(tensorfile_read_f32(tf, t, f, err) == ST_OK, "%s", err);
        for (int i = 0; i < 6; i++) CHECK(f[i] == (float)i);
        int64_t iv[3];
        t = tensorfile_find(tf, "steps");
        CHECK(t && t->dtype == TF_I64);
        CHECKF(tensorfile_read_i64(tf, t, iv, err) == ST_OK, "%s", err);
        CHECK(iv[0] == 5 && iv[1] == -7);
        t = tensorfile_find(tf, "i32");
        CHECK(t && t->dtype == TF_I32);
        CHECKF(tensorfile_read_i64(tf, t, iv, err) == ST_OK, "%s", err);
        CHECK(iv[0] == 1 && iv[1] == 2 && iv[2] == 3);
        double d;
        t = tensorfile_find(tf, "f64");
        CHECK(t && t->dtype == TF_F64);
        CHECKF(tensorfile_read_f64(tf, t, &d, err) == ST_OK, "%s", err);
        CHECK(d == 0.5);
        t = tensorfile_find(tf, "scalar");
        CHECK(t && t->ndim == 0 && t->numel == 1);
        CHECKF(tensorfile_read_f32(tf, t, f, err) == ST_OK, "%s", err);
        CHECK(f[0] == 3.0f);
        t = tensorfile_find(tf, "lin.weight");
        CHECK(t && t->dtype == TF_BF16 && t->shape[0] == 3 && t->shape[1] == 4);
        tensorfile_close(&tf);
    }
    return 0;
}

static int test_pth_hostile(void)
{
    int rc = 0;
    /* pickle.loads of this would run os.system("echo pwned") */
    static const unsigned char evil[] = "\x80\x02" "cos\nsystem\n" "\x8c\x0a" "echo pwned"
                                        "\x85" "R" ".";
    zip_item_t items[] = {{"evil/data.pkl", evil, sizeof evil - 1},
                          {"evil/byteorder", "little", 6}};
    rc |= s_expect_refusal(s_write_zip("evil.pth", items, 2), "refusing pickle global 'os system'");
    /* the same through STACK_GLOBAL with builtins.eval */
    static const unsigned char evil2[] = "\x80\x04" "\x8c\x08" "builtins" "\x8c\x04" "eval"
                                         "\x93" "\x8c\x01" "1" "\x85" "R" ".";
    zip_item_t items2[] = {{"e2/data.pkl", evil2, sizeof evil2 - 1}};
    rc |= s_expect_refusal(s_write_zip("evil2.pth", items2, 1), "refusing pickle global 'builtins eval'");
    /* an opcode outside the subset (INST) */
    static const unsigned char inst[] = "\x80\x02" "(" "ios\nsystem\n" ".";
    zip_item_t items3[] = {{"e3/data.pkl", inst, sizeof inst - 1}};
    rc |= s_expect_refusal(s_write_zip("inst.pth", items3, 1), "outside the state-dict subset");
    /* torch's own escape hatch for old storages runs pickle.loads: refused */
    static const unsigned char lfb[] = "\x80\x02" "ctorch.storage\n_load_from_bytes\n" "C\x01x" "\x85R.";
    zip_item_t items_lfb[] = {{"l/data.pkl", lfb, sizeof lfb - 1}};
    rc |= s_expect_refusal(s_write_zip("lfb.pth", items_lfb, 1),
                           "refusing pickle global 'torch.storage _load_from_bytes'");
    /* resource bombs: a memo index of 2^32-1, and a million nested MARKs */
    static const unsigned char memo[] = "\x80\x02}r\xff\xff\xff\xff.";
    zip_item_t items_memo[] = {{"b/data.pkl", memo, sizeof memo - 1}};
    rc |= s_expect_refusal(s_write_zip("memo.pth", items_memo, 1), "memo index");
    size_t nmarks = (size_t)1 << 21;
    unsigned char *marks = malloc(nmarks + 3);
    CHECK(marks);
    marks[0] = 0x80, marks[1] = 2;
    memset(marks + 2, '(', nmarks);
    marks[nmarks + 2] = '.';
    zip_item_t items_marks[] = {{"k/data.pkl", marks, nmarks + 3}};
    rc |= s_expect_refusal(s_write_zip("marks.pth", items_marks, 1), "stack");
    free(marks);
    /* a pickle cut short */
    zip_item_t items4[] = {{"e4/data.pkl", evil, 5}};
    rc |= s_expect_refusal(s_write_zip("short.pth", items4, 1), "pickle");
    /* a tensor whose storage entry is shorter than the pickle claims */
    static const unsigned char one[] = S_PKL_X("K\x00K\x04\x85K\x01\x85"); /* offset 0, (4,), (1,) */
    float four[4] = {1, 2, 3, 4};
    zip_item_t items5[] = {{"m/data.pkl", one, sizeof one - 1}, {"m/data/0", four, 12}};
    rc |= s_expect_refusal(s_write_zip("storage.pth", items5, 2), "holds 12 bytes");
    /* ...and with the right size it loads and reads back */
    zip_item_t items6[] = {{"m/data.pkl", one, sizeof one - 1}, {"m/data/0", four, 16}};
    char err[ST_ERR_LEN];
    tensorfile_t *tf = tensorfile_open(s_write_zip("ok.pth", items6, 2), err);
    CHECKF(tf != NULL, "%s", err);
    const tf_tensor_info_t *x = tensorfile_find(tf, "x");
    CHECK(x && x->numel == 4 && x->dtype == TF_F32);
    float got[4];
    CHECKF(tensorfile_read_f32(tf, x, got, err) == ST_OK, "%s", err);
    CHECK(memcmp(got, four, sizeof four) == 0);
    tensorfile_close(&tf);
    /* a tensor at storage offset 2 in a deflated entry (libzip's default, unlike
     * torch's stored entries): the reader cannot seek and skips by reading */
    static const unsigned char off2[] = S_PKL_X("K\x02K\x02\x85K\x01\x85"); /* offset 2, (2,), (1,) */
    zip_item_t items8[] = {{"o/data.pkl", off2, sizeof off2 - 1}, {"o/data/0", four, 16}};
    tf = tensorfile_open(s_write_zip("offset.pth", items8, 2), err);
    CHECKF(tf != NULL, "%s", err);
    x = tensorfile_find(tf, "x");
    CHECK(x && x->numel == 2);
    CHECKF(tensorfile_read_f32(tf, x, got, err) == ST_OK, "%s", err);
    CHECK(got[0] == 3 && got[1] == 4);
    tensorfile_close(&tf);
    /* a transposed view (strides 1, 2): we read bytes straight through, so refuse */
    static const unsigned char tr[] = S_PKL_X("K\x00K\x02K\x02\x86K\x01K\x02\x86"); /* offset 0, (2,2), (1,2) */
    zip_item_t items7[] = {{"t/data.pkl", tr, sizeof tr - 1}, {"t/data/0", four, 16}};
    rc |= s_expect_refusal(s_write_zip("strided.pth", items7, 2), "not stored contiguously");
    /* a checkpoint cut in half: the zip directory is gone */
    const char *src = st_test_fixture("rwkv7/tiny.pth");
    if (src) {
        size_t len = 0;
        unsigned char *data = s_read_file(src, &len);
        CHECK(data);
        rc |= s_expect_refusal(s_write_tmp("half.pth", data, len / 2), "zip");
        free(data);
    }
    return rc;
}

/* ---- rwkv.cpp .bin ------------------------------------------------------------- */

static int test_ggmf_matches_pth(void)
{
    char pth[2048], b32[2048], b16[2048];
    int rc = s_fixture_copy("rwkv7/tiny-rwkv7-834K.pth", pth, sizeof pth);
    if (rc || (rc = s_fixture_copy("rwkv7/tiny-rwkv7-834K-FP32.bin", b32, sizeof b32)) ||
        (rc = s_fixture_copy("rwkv7/tiny-rwkv7-834K-FP16.bin", b16, sizeof b16)))
        return rc;
    char err[ST_ERR_LEN];
    tensorfile_t *tf = tensorfile_open(b32, err);
    CHECKF(tf != NULL, "%s", err);
    CHECK(tensorfile_format(tf) == TF_FORMAT_GGMF);
    /* the concatenated x_rwkvag is exposed as the six official vectors */
    CHECK(tensorfile_find(tf, "blocks.3.att.x_rwkvag") == NULL);
    const tf_tensor_info_t *xa = tensorfile_find(tf, "blocks.3.att.x_a");
    CHECK(xa && xa->ndim == 3 && xa->shape[0] == 1 && xa->shape[2] == 64);
    /* reversed dims and transposed LoRA are undone */
    const tf_tensor_info_t *emb = tensorfile_find(tf, "emb.weight");
    CHECK(emb && emb->shape[0] == 256 && emb->shape[1] == 64);
    const tf_tensor_info_t *w1 = tensorfile_find(tf, "blocks.0.att.w1");
    CHECK(w1 && w1->shape[0] == 64 && w1->shape[1] == 32);
    tensorfile_close(&tf);
    int n = 0;
    if (s_compare_files(b32, pth, 0, &n)) return 1;
    printf("   FP32 .bin: %d tensors bit-identical to the .pth\n", n);
    if (s_compare_files(b16, pth, (1.0 / 2048) * 1.001, &n)) return 1;
    printf("   FP16 .bin: %d tensors within fp16 rounding of the .pth\n", n);
    return 0;
}

static void s_put_i32(unsigned char *p, int32_t v)
{
    uint32_t u = (uint32_t)v;
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(u >> (8 * i));
}

static int test_ggmf_hostile(void)
{
    const char *src = st_test_fixture("rwkv7/tiny-rwkv7-834K-FP32.bin");
    if (!src) return ST_TEST_SKIP;
    size_t len = 0;
    unsigned char *data = s_read_file(src, &len), *copy = malloc(len + 1);
    CHECK(data && copy);
    int rc = 0;
    memcpy(copy, data, len);
    copy[0] = 'g'; /* "gmgg": no longer a ggmf magic, nor anything else */
    rc |= s_expect_refusal(s_write_tmp("magic.bin", copy, len), "not a model file");
    memcpy(copy, data, len);
    s_put_i32(copy + 4, 7);
    rc |= s_expect_refusal(s_write_tmp("version.bin", copy, len), "version 7");
    memcpy(copy, "GGUF", 4);
    rc |= s_expect_refusal(s_write_tmp("gguf.bin", copy, len), "magic 'GGUF'");
    rc |= s_expect_refusal(s_write_tmp("cut.bin", data, len / 2), "remain in the file");
    rc |= s_expect_refusal(s_write_tmp("cut2.bin", data, 30), "cut short");
    memcpy(copy, data, len);
    s_put_i32(copy + 24 + 8, 2); /* first parameter claims Q4_0 */
    rc |= s_expect_refusal(s_write_tmp("q4.bin", copy, len), "Q4_0");
    memcpy(copy, data, len);
    s_put_i32(copy + 24 + 12, 1 << 30); /* absurd dimension */
    s_put_i32(copy + 24 + 16, 1 << 30);
    rc |= s_expect_refusal(s_write_tmp("dims.bin", copy, len), "emb.weight");
    memcpy(copy, data, len);
    s_put_i32(copy + 24 + 4, -5); /* negative name length */
    rc |= s_expect_refusal(s_write_tmp("key.bin", copy, len), "name of -5 bytes");
    free(data);
    free(copy);
    return rc;
}

/* ---- the model in memory ---------------------------------------------------- */

/* Expected configuration from a fixture's .json (n_layer, n_embd, vocab, lora). */
static int s_expected_config(const char *json_rel, rwkv_config_t *c)
{
    const char *p = st_test_fixture(json_rel);
    if (!p) return ST_TEST_SKIP;
    json_error_t je;
    json_t *j = json_load_file(p, JSON_ALLOW_NUL, &je);
    CHECKF(j != NULL, "%s", je.text);
    json_t *lora = json_object_get(j, "lora");
    memset(c, 0, sizeof *c);
    c->n_layer = (int)json_integer_value(json_object_get(j, "n_layer"));
    c->n_embd = (int)json_integer_value(json_object_get(j, "n_embd"));
    json_t *v = json_object_get(j, "vocab_size");
    c->vocab = (int)json_integer_value(v ? v : json_object_get(j, "vocab"));
    c->d_decay = (int)json_integer_value(json_object_get(lora, "decay"));
    c->d_aaa = (int)json_integer_value(json_object_get(lora, "aaa"));
    c->d_mv = (int)json_integer_value(json_object_get(lora, "mv"));
    c->d_gate = (int)json_integer_value(json_object_get(lora, "gate"));
    json_decref(j);
    CHECK(c->n_layer > 0 && c->n_embd > 0 && c->vocab > 0 && c->d_gate > 0);
    return 0;
}

static int s_config_equal(const rwkv_config_t *got, const rwkv_config_t *want, const char *what)
{
    CHECKF(got->n_layer == want->n_layer && got->n_embd == want->n_embd &&
               got->vocab == want->vocab && got->d_decay == want->d_decay &&
               got->d_aaa == want->d_aaa && got->d_mv == want->d_mv &&
               got->d_gate == want->d_gate,
           "%s: got L%d C%d V%d lora %d/%d/%d/%d, expected L%d C%d V%d lora %d/%d/%d/%d", what,
           got->n_layer, got->n_embd, got->vocab, got->d_decay, got->d_aaa, got->d_mv, got->d_gate,
           want->n_layer, want->n_embd, want->vocab, want->d_decay, want->d_aaa, want->d_mv,
           want->d_gate);
    CHECK(got->n_head == got->n_embd / 64 && got->head_size == 64);
    CHECK(got->ffn_dim == 4 * got->n_embd);
    return 0;
}

/* The parameters in the file, less the ones RWKV-7 never uses: layer 0's
 * v0/v1/v2 and ln0 of later layers (the random fixtures carry both). */
static int64_t s_file_params(const char *path)
{
    char err[ST_ERR_LEN];
    tensorfile_t *tf = tensorfile_open(path, err);
    if (!tf) return -1;
    int64_t n = 0;
    for (int i = 0; i < tensorfile_count(tf); i++) {
        const tf_tensor_info_t *t = tensorfile_info(tf, i);
        if (!strcmp(t->name, "blocks.0.att.v0") || !strcmp(t->name, "blocks.0.att.v1") ||
            !strcmp(t->name, "blocks.0.att.v2"))
            continue;
        if (strstr(t->name, ".ln0.") && strncmp(t->name, "blocks.0.", 9) != 0) continue;
        n += t->numel;
    }
    tensorfile_close(&tf);
    return n;
}

/* Loads path, checks its config, its parameter count, that layer 0 has no
 * v0/v1/v2 and others do, and that its identity is the file's sha256. */
static int s_check_load(const char *rel, const rwkv_config_t *want, rwkv_model_t **out)
{
    char path[2048], err[ST_ERR_LEN];
    int rc = s_fixture_copy(rel, path, sizeof path);
    if (rc) return rc;
    rwkv_model_t *m = rwkv_model_load(path, err);
    CHECKF(m != NULL, "%s", err);
    if (s_config_equal(&m->cfg, want, rel)) return 1;
    CHECK(m->layers[0].v0 == NULL && m->layers[0].v1 == NULL && m->layers[0].v2 == NULL);
    CHECK(m->layers[0].ln0_w != NULL && (m->cfg.n_layer < 2 || m->layers[1].ln0_w == NULL));
    for (int l = 1; l < m->cfg.n_layer; l++) CHECK(m->layers[l].v1 != NULL);
    CHECK(m->emb && m->head && m->layers[m->cfg.n_layer - 1].ffn_value);
    int64_t np = rwkv_model_param_count(m);
    CHECKF(np == s_file_params(path), "%lld params, file has %lld", (long long)np,
           (long long)s_file_params(path));
    /* identity: sha256 of the file's bytes, computed here independently */
    FILE *f = fopen(path, "rb");
    CHECK(f);
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    unsigned char buf[65536];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) crypto_hash_sha256_update(&st, buf, got);
    fclose(f);
    unsigned char h[32];
    crypto_hash_sha256_final(&st, h);
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, h, sizeof h);
    CHECKF(strcmp(hex, m->sha256) == 0, "sha256 %s, file %s", m->sha256, hex);
    CHECK(m->path && strcmp(m->path, path) == 0);
    printf("   %s: L%d C%d V%d, %lld params, %s weights\n", rel, m->cfg.n_layer, m->cfg.n_embd,
           m->cfg.vocab, (long long)np, tf_dtype_name((tf_dtype_t)m->source_dtype));
    if (out) *out = m;
    else rwkv_model_destroy(&m);
    return 0;
}

static int test_model_load_random_fixtures(void)
{
    rwkv_config_t tiny, small;
    int rc = s_expected_config("rwkv7/tiny.json", &tiny);
    if (rc) return rc;
    if ((rc = s_expected_config("rwkv7/small.json", &small))) return rc;
    rwkv_model_t *a = NULL, *b = NULL;
    if ((rc = s_check_load("rwkv7/tiny.pth", &tiny, &a))) return rc;
    if ((rc = s_check_load("rwkv7/tiny.safetensors", &tiny, &b))) return rc;
    CHECK(a->source_dtype == TF_BF16);
    /* the two containers give the same weights, bit for bit */
    CHECK(a->arena_floats == b->arena_floats);
    CHECK(memcmp(a->arena, b->arena, a->arena_floats * sizeof(float)) == 0);
    CHECK(strcmp(a->sha256, b->sha256) != 0);
    rwkv_model_destroy(&a);
    rwkv_model_destroy(&b);
    CHECK(a == NULL);
    rwkv_model_destroy(&a);
    return s_check_load("rwkv7/small.safetensors", &small, NULL);
}

static int test_model_load_834k_all_formats(void)
{
    /* shared/fixtures/README.md: 12 layers, n_embd 64, vocab 256, LoRA 32 */
    rwkv_config_t want = {.n_layer = 12, .n_embd = 64, .vocab = 256,
                          .d_decay = 32, .d_aaa = 32, .d_mv = 32, .d_gate = 32};
    const char *files[] = {"rwkv7/tiny-rwkv7-834K.pth", "rwkv7/tiny-rwkv7-834K.safetensors",
                           "rwkv7/tiny-rwkv7-834K-FP32.bin", "rwkv7/tiny-rwkv7-834K-FP16.bin"};
    rwkv_model_t *m[4] = {0};
    for (int i = 0; i < 4; i++) {
        int rc = s_check_load(files[i], &want, &m[i]);
        if (rc) return rc;
    }
    size_t n = m[0]->arena_floats;
    for (int i = 1; i < 3; i++) {
        CHECK(m[i]->arena_floats == n);
        CHECKF(memcmp(m[0]->arena, m[i]->arena, n * sizeof(float)) == 0,
               "%s differs from the .pth", files[i]);
    }
    CHECK(m[3]->source_dtype == TF_F16 && m[0]->source_dtype == TF_F32);
    double worst = 0;
    for (size_t k = 0; k < n; k++) {
        float a = m[0]->arena[k], b = m[3]->arena[k];
        double tol = fmax(fabs(a), 0x1p-14) / 2048.0 * 1.001;
        CHECKF(fabs(a - b) <= tol, "FP16 weight %zu: %g vs %g", k, (double)b, (double)a);
        if (fabs(a) >= 0x1p-14) worst = fmax(worst, fabs(a - b) / fabs(a));
    }
    printf("   FP16 .bin weights in the fp16 normal range within %.2e relative of the fp32 ones\n", worst);
    for (int i = 0; i < 4; i++) rwkv_model_destroy(&m[i]);
    return 0;
}

static int test_model_load_pysrc_5m(void)
{
    rwkv_config_t want;
    int rc = s_expected_config("rwkv7/pysrc-rwkv7-5M.json", &want);
    if (rc) return rc;
    CHECK(want.n_layer == 6 && want.n_embd == 256);
    return s_check_load("rwkv7/pysrc-rwkv7-5M.pth", &want, NULL);
}

static int test_model_config_only(void)
{
    const char *p = st_test_fixture("rwkv7/small.safetensors");
    if (!p) return ST_TEST_SKIP;
    rwkv_config_t want;
    int rc = s_expected_config("rwkv7/small.json", &want);
    if (rc) return rc;
    p = st_test_fixture("rwkv7/small.safetensors");
    char err[ST_ERR_LEN];
    tensorfile_t *tf = tensorfile_open(p, err);
    CHECKF(tf != NULL, "%s", err);
    rwkv_config_t c;
    CHECKF(rwkv_config_from_tensorfile(tf, &c, err) == ST_OK, "%s", err);
    tensorfile_close(&tf);
    return s_config_equal(&c, &want, "small.safetensors");
}

/* A copy of tiny.safetensors with one edit to its JSON header (same length). */
static const char *s_edited_tiny(const char *name, const char *from, const char *to)
{
    const char *src = st_test_fixture("rwkv7/tiny.safetensors");
    if (!src || strlen(from) != strlen(to)) return NULL;
    size_t len = 0;
    char *data = (char *)s_read_file(src, &len);
    if (!data) return NULL;
    data[len] = 0;
    char *hit = memmem(data, len, from, strlen(from));
    const char *path = NULL;
    if (hit) {
        memcpy(hit, to, strlen(to));
        path = s_write_tmp(name, data, len);
    }
    free(data);
    return path;
}

static int s_expect_model_refusal(const char *path, const char *want)
{
    CHECK(path != NULL);
    char err[ST_ERR_LEN] = "";
    rwkv_model_t *m = rwkv_model_load(path, err);
    CHECKF(m == NULL, "'%s' was accepted", path);
    CHECKF(strstr(err, want) != NULL, "message '%s' does not mention '%s'", err, want);
    CHECKF(strstr(err, path) != NULL, "message '%s' does not name the file", err);
    printf("   refused as expected: %s\n", err);
    return 0;
}

static int test_model_errors(void)
{
    if (!st_test_fixture("rwkv7/tiny.safetensors")) return ST_TEST_SKIP;
    int rc = 0;
    rc |= s_expect_model_refusal(
        s_edited_tiny("missing.safetensors", "\"blocks.1.att.key.weight\"", "\"blocks.1.att.kez.weight\""),
        "tensor 'blocks.1.att.key.weight' is missing");
    rc |= s_expect_model_refusal(
        s_edited_tiny("shape.safetensors", "\"blocks.1.att.a1\":{\"dtype\":\"BF16\",\"shape\":[128,16]",
                      "\"blocks.1.att.a1\":{\"dtype\":\"BF16\",\"shape\":[16,128]"),
        "tensor 'blocks.1.att.a1' has shape [16, 128], expected [128, 16]");
    rc |= s_expect_model_refusal(
        s_edited_tiny("noemb.safetensors", "\"emb.weight\"", "\"emb.weigh_\""),
        "'emb.weight' is missing");
    /* a reference dump is a tensor file but not a model */
    const char *ref = st_test_fixture("rwkv7/tiny.ref.safetensors");
    if (ref) rc |= s_expect_model_refusal(ref, "emb.weight");
    rc |= s_expect_model_refusal(s_write_tmp("empty.pth", "", 0), "empty");
    return rc;
}

static int test_model_random(void)
{
    rwkv_config_t c = {.n_layer = 3, .n_embd = 128, .vocab = 300, .ffn_dim = 512,
                       .d_decay = 16, .d_aaa = 16, .d_mv = 8, .d_gate = 32};
    char err[ST_ERR_LEN];
    rwkv_model_t *a = rwkv_model_new_random(&c, 42, err);
    CHECKF(a != NULL, "%s", err);
    rwkv_model_t *b = rwkv_model_new_random(&c, 42, err);
    rwkv_model_t *d = rwkv_model_new_random(&c, 43, err);
    CHECK(b && d);
    CHECK(a->cfg.n_head == 2 && a->cfg.head_size == 64);
    /* deterministic in the seed, different across seeds */
    CHECK(memcmp(a->arena, b->arena, a->arena_floats * sizeof(float)) == 0);
    CHECK(memcmp(a->arena, d->arena, a->arena_floats * sizeof(float)) != 0);
    CHECK(strcmp(a->sha256, b->sha256) == 0 && strcmp(a->sha256, d->sha256) != 0);
    for (size_t k = 0; k < a->arena_floats; k++) CHECK(isfinite(a->arena[k]));
    CHECK(a->layers[0].v1 == NULL && a->layers[1].v1 != NULL);
    /* the count the 4P FLOP figure uses: every weight once */
    int64_t C = 128, V = 300, F = 512, L = 3;
    int64_t per_layer = 4 * C + 6 * C + 4 * C + 2 * C * 16 + 2 * C * 16 + 2 * C * 32 + C +
                        4 * C * C + 2 * C + C + 2 * F * C;
    int64_t want = 2 * V * C + 2 * C + 2 * C + L * per_layer + (L - 1) * (C + 2 * C * 8);
    CHECKF(rwkv_model_param_count(a) == want, "%lld vs %lld", (long long)rwkv_model_param_count(a),
           (long long)want);
    /* the official initialisation's shapes: token-shift ramps in [0, 1],
     * decay speeds from fast to slow across channels, unit layer norms */
    const rwkv_layer_t *y = &a->layers[1];
    for (int i = 0; i < C; i++) CHECK(y->x_r[i] >= 0 && y->x_r[i] <= 1 && y->ln1_w[i] == 1);
    CHECK(y->w0[0] < y->w0[C - 1]);
    /* logits through embedding, ln_out and head alone are finite and not flat */
    float x[128], mu = 0, var = 0;
    for (int i = 0; i < C; i++) mu += (x[i] = a->emb[65 * C + i]) / C;
    for (int i = 0; i < C; i++) var += (x[i] - mu) * (x[i] - mu) / C;
    double lo = 1e30, hi = -1e30;
    for (int v = 0; v < V; v++) {
        double s = 0;
        for (int i = 0; i < C; i++) s += a->head[v * C + i] * (x[i] - mu) / sqrt(var + 1e-5);
        CHECK(isfinite(s));
        lo = fmin(lo, s), hi = fmax(hi, s);
    }
    CHECKF(hi - lo > 0.5 && hi - lo < 50, "logit range %g", hi - lo);
    rwkv_model_destroy(&a);
    rwkv_model_destroy(&b);
    rwkv_model_destroy(&d);
    /* impossible shapes are refused */
    c.n_embd = 100;
    CHECK(rwkv_model_new_random(&c, 1, err) == NULL && strstr(err, "n_embd"));
    return 0;
}

/* ---- mutation smoke test ------------------------------------------------------ */

/* Opens a file and, when it opens, reads every tensor: must never crash. */
static int s_open_and_read_all(const char *path)
{
    char err[ST_ERR_LEN];
    tensorfile_t *tf = tensorfile_open(path, err);
    if (!tf) return 0;
    for (int i = 0; i < tensorfile_count(tf); i++) {
        const tf_tensor_info_t *t = tensorfile_info(tf, i);
        if (t->numel > (1 << 20)) continue; /* a valid but huge claim; reading is checked elsewhere */
        void *buf = malloc((size_t)t->numel * 8 + 8);
        if (!buf) continue;
        if (t->dtype == TF_I64 || t->dtype == TF_I32) tensorfile_read_i64(tf, t, buf, err);
        else tensorfile_read_f64(tf, t, buf, err);
        free(buf);
    }
    tensorfile_close(&tf);
    return 1;
}

/* A small valid rwkv.cpp file: emb [V=8, C=4], x_rwkvag, a transposed w1. */
static size_t s_small_ggmf(unsigned char *out)
{
    size_t o = 0;
    int32_t hdr[6] = {0x67676d66, 101, 8, 4, 1, 0};
    for (int i = 0; i < 6; i++, o += 4) s_put_i32(out + o, hdr[i]);
    struct { const char *name; int nd; int32_t dims[3]; int type; } p[] = {
        {"emb.weight", 2, {4, 8}, 0}, {"blocks.0.att.x_rwkvag", 3, {4, 1, 6}, 0},
        {"blocks.0.att.w1", 2, {4, 2}, 1}};
    for (int k = 0; k < 3; k++) {
        s_put_i32(out + o, p[k].nd);
        s_put_i32(out + o + 4, (int32_t)strlen(p[k].name));
        s_put_i32(out + o + 8, p[k].type);
        o += 12;
        int n = 1;
        for (int d = 0; d < p[k].nd; d++, o += 4) {
            s_put_i32(out + o, p[k].dims[d]);
            n *= p[k].dims[d];
        }
        memcpy(out + o, p[k].name, strlen(p[k].name));
        o += strlen(p[k].name);
        for (int e = 0; e < n * (p[k].type ? 2 : 4); e++) out[o++] = (unsigned char)(e * 7 + k);
    }
    return o;
}

static int test_mutated_files(void)
{
    /* three small valid files, one per format */
    unsigned char seeds[3][2048];
    size_t lens[3];
    const char *st = s_write_safetensors(
        "seed.safetensors",
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"emb.weight\":{\"dtype\":\"BF16\",\"shape\":[2,4],\"data_offsets\":[0,16]},"
        "\"tokens\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[16,32]},"
        "\"loss\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[32,40]}}", 40);
    CHECK(st);
    FILE *f = fopen(st, "rb");
    CHECK(f);
    lens[0] = fread(seeds[0], 1, sizeof seeds[0], f);
    fclose(f);
    static const unsigned char one[] = S_PKL_X("K\x00K\x04\x85K\x01\x85"); /* offset 0, (4,), (1,) */
    float four[4] = {1, 2, 3, 4};
    zip_item_t items[] = {{"m/data.pkl", one, sizeof one - 1}, {"m/data/0", four, 16}};
    const char *zp = s_write_zip("seed.pth", items, 2);
    CHECK(zp);
    f = fopen(zp, "rb");
    CHECK(f);
    lens[1] = fread(seeds[1], 1, sizeof seeds[1], f);
    fclose(f);
    lens[2] = s_small_ggmf(seeds[2]);
    char path[1024];
    snprintf(path, sizeof path, "%s/mutant", st_test_tmpdir());
    for (int k = 0; k < 3; k++) {
        FILE *w = fopen(path, "wb");
        CHECK(w && fwrite(seeds[k], 1, lens[k], w) == lens[k]);
        fclose(w);
        CHECKF(s_open_and_read_all(path), "seed %d does not open", k);
    }
    /* flips, overwrites with extreme bytes and truncations, from a fixed seed */
    uint64_t x = 0x243f6a8885a308d3ull;
    int opened = 0, total = 0;
    for (int it = 0; it < 1500; it++) {
        int k = it % 3;
        unsigned char buf[2048];
        size_t len = lens[k];
        memcpy(buf, seeds[k], len);
        int edits = 1 + (int)(x % 4);
        for (int e = 0; e < edits; e++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = (size_t)(x >> 16) % len;
            switch ((x >> 8) % 4) {
            case 0: buf[at] ^= (unsigned char)(1u << (x % 8)); break;
            case 1: buf[at] = 0xff; break;
            case 2: buf[at] = 0x00; break;
            default: len = at + 1; break;
            }
        }
        FILE *w = fopen(path, "wb");
        CHECK(w && fwrite(buf, 1, len, w) == len);
        fclose(w);
        opened += s_open_and_read_all(path);
        total++;
    }
    printf("   %d mutated files, %d still opened, none crashed\n", total, opened);
    return 0;
}

static int s_count_tensor(void *ctx, const pickle_tensor_t *t, char *err)
{
    (*(int *)ctx)++;
    return ST_OK;
}

/* The pickle interpreter alone (inside a zip, mutations mostly trip the CRC):
 * a real state dict's data.pkl with bytes flipped, zeroed, set and cut. */
static int test_mutated_pickles(void)
{
    const char *src = st_test_fixture("rwkv7/tiny.pth");
    if (!src) return ST_TEST_SKIP;
    int zerr;
    zip_t *z = zip_open(src, ZIP_RDONLY, &zerr);
    CHECK(z);
    zip_stat_t zs;
    CHECK(zip_stat(z, "tiny/data.pkl", 0, &zs) == 0);
    unsigned char *orig = malloc(zs.size), *buf = malloc(zs.size);
    CHECK(orig && buf);
    zip_file_t *zf = zip_fopen(z, "tiny/data.pkl", 0);
    CHECK(zf && zip_fread(zf, orig, zs.size) == (zip_int64_t)zs.size);
    zip_fclose(zf);
    zip_close(z);
    char err[ST_ERR_LEN];
    int n = 0;
    CHECKF(pickle_state_dict(orig, zs.size, s_count_tensor, &n, err) == ST_OK, "%s", err);
    CHECK(n == 74);
    uint64_t x = 0x13198a2e03707344ull;
    int accepted = 0, total = 3000;
    for (int it = 0; it < total; it++) {
        size_t len = zs.size;
        memcpy(buf, orig, len);
        int edits = 1 + (int)(x % 3);
        for (int e = 0; e < edits; e++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = (size_t)(x >> 16) % len;
            switch ((x >> 8) % 5) {
            case 0: buf[at] ^= (unsigned char)(1u << (x % 8)); break;
            case 1: buf[at] = 0xff; break;
            case 2: buf[at] = (unsigned char)"(tuRQbch.q"[x % 10]; break; /* opcodes */
            case 3: buf[at] = 0x00; break;
            default: len = at + 1; break;
            }
        }
        n = 0;
        if (pickle_state_dict(buf, len, s_count_tensor, &n, err) == ST_OK) accepted++;
        else CHECK(err[0] != 0);
    }
    printf("   %d mutated pickles, %d still a state dict, none crashed\n", total, accepted);
    free(orig);
    free(buf);
    return 0;
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
    static const unsigned char legacy[] = "\x80\x02\x8a\x0al\xfc\x9c" "F\xf9 j\xa8P\x19.";
    rc |= s_expect_refusal(s_write_tmp("legacy.pth", legacy, sizeof legacy - 1), "legacy");
    char err[ST_ERR_LEN];
    CHECK(tensorfile_open("/nonexistent/model.pth", err) == NULL);
    CHECK(strstr(err, "/nonexistent/model.pth") != NULL);
    /* A FIFO is refused at once instead of blocking open() for a writer. */
    char fifo[600];
    snprintf(fifo, sizeof fifo, "%s/model.fifo", st_test_tmpdir());
    CHECK(mkfifo(fifo, 0600) == 0);
    CHECK(tensorfile_open(fifo, err) == NULL);
    CHECK(strstr(err, "not a regular file") != NULL);
    unlink(fifo);
    return rc;
}

static const st_test_t tests[] = {
    {"safetensors_ref_dump", test_safetensors_ref_dump},
    {"safetensors_hostile", test_safetensors_hostile},
    {"pth_matches_safetensors", test_pth_matches_safetensors},
    {"pth_protocols", test_pth_protocols},
    {"pth_hostile", test_pth_hostile},
    {"ggmf_matches_pth", test_ggmf_matches_pth},
    {"ggmf_hostile", test_ggmf_hostile},
    {"not_a_model", test_not_a_model},
    {"model_load_random_fixtures", test_model_load_random_fixtures},
    {"model_load_834k_all_formats", test_model_load_834k_all_formats},
    {"model_load_pysrc_5m", test_model_load_pysrc_5m},
    {"model_config_only", test_model_config_only},
    {"model_errors", test_model_errors},
    {"model_random", test_model_random},
    {"mutated_files", test_mutated_files},
    {"mutated_pickles", test_mutated_pickles},
    {NULL, NULL},
};

int main(int argc, char **argv) { return st_test_main(argc, argv, tests); }
