/*
 * test_data.c - the input side of a job: World tokenizer, job files, JSONL
 * datasets and the batcher (data/).
 *
 * The tokenizer is checked against the ids the official rwkv_tokenizer.py
 * produced for the five strings of the fixtures (tok0..tok4 in the reference
 * dumps); everything else is checked against what a user relies on: refusals
 * that name the key or the line, loss masks on the right tokens, batches that
 * are the same for the same seed, rank slices that partition the global batch
 * and a saved position that continues exactly.
 */
#include "harness.h"

#include "common/st_err.h"
#include "data/tokenizer.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------ */

/* Reads an I64 tensor from a safetensors file. A small local reader, kept
 * until the project's tensorfile reader handles safetensors. Returns a
 * malloc'd array or NULL. */
static int64_t *s_read_i64_tensor(const char *path, const char *name, size_t *n_out)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    uint8_t h8[8];
    int64_t *out = NULL;
    char *hdr = NULL;
    json_t *root = NULL;
    if (fread(h8, 1, 8, fp) != 8) goto done;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | h8[i];
    if (hlen > (1u << 24)) goto done;
    hdr = malloc(hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, fp) != hlen) goto done;
    hdr[hlen] = 0;
    root = json_loads(hdr, 0, NULL);
    json_t *t = root ? json_object_get(root, name) : NULL;
    if (!t || strcmp(json_string_value(json_object_get(t, "dtype")), "I64") != 0) goto done;
    json_t *offs = json_object_get(t, "data_offsets");
    uint64_t a = (uint64_t)json_integer_value(json_array_get(offs, 0));
    uint64_t b = (uint64_t)json_integer_value(json_array_get(offs, 1));
    size_t n = (size_t)((b - a) / 8);
    out = malloc((n + 1) * sizeof *out);
    if (!out || fseek(fp, (long)(8 + hlen + a), SEEK_SET) != 0) goto done;
    uint8_t *raw = malloc(n * 8 + 1);
    if (!raw || fread(raw, 1, n * 8, fp) != n * 8) {
        free(raw);
        free(out);
        out = NULL;
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0;
        for (int k = 7; k >= 0; k--) v = v << 8 | raw[i * 8 + (size_t)k];
        out[i] = (int64_t)v;
    }
    free(raw);
    *n_out = n;
done:
    json_decref(root);
    free(hdr);
    fclose(fp);
    return out;
}

static int s_write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, fp) == n;
    return fclose(fp) == 0 && ok ? 0 : -1;
}

/* ---- tokenizer ---------------------------------------------------------------- */

/* The ids of the five fixture strings equal the official tokenizer's. */
static int s_check_fixture_ids(const tokenizer_t *tok, const char *json_name, const char *ref_name)
{
    char jpath[4096], rpath[4096];
    const char *p = st_test_fixture(json_name);
    if (!p) return ST_TEST_SKIP;
    snprintf(jpath, sizeof jpath, "%s", p);
    p = st_test_fixture(ref_name);
    if (!p) return ST_TEST_SKIP;
    snprintf(rpath, sizeof rpath, "%s", p);

    json_error_t jerr;
    json_t *cfg = json_load_file(jpath, JSON_ALLOW_NUL, &jerr);
    CHECKF(cfg, "%s: %s", jpath, jerr.text);
    json_t *texts = json_object_get(cfg, "texts");
    CHECK(json_array_size(texts) == 5);
    char err[ST_ERR_LEN];
    for (size_t i = 0; i < 5; i++) {
        const char *s = json_string_value(json_array_get(texts, i));
        size_t len = json_string_length(json_array_get(texts, i));
        char name[16];
        snprintf(name, sizeof name, "tok%zu", i);
        size_t n_ref = 0;
        int64_t *ref = s_read_i64_tensor(rpath, name, &n_ref);
        CHECKF(ref, "%s: no I64 tensor '%s'", rpath, name);
        int32_t *ids = NULL;
        size_t n = 0;
        CHECKF(tokenizer_encode(tok, s, len, &ids, &n, err) == ST_OK, "%s", err);
        CHECKF(n == n_ref, "text %zu: %zu ids, reference has %zu", i, n, n_ref);
        for (size_t k = 0; k < n; k++)
            CHECKF(ids[k] == ref[k], "text %zu id %zu: got %d, reference %lld", i, k, (int)ids[k],
                   (long long)ref[k]);
        char *back = NULL;
        size_t back_len = 0;
        CHECKF(tokenizer_decode(tok, ids, n, &back, &back_len, err) == ST_OK, "%s", err);
        CHECK(back_len == len && memcmp(back, s, len) == 0);
        free(back);
        free(ids);
        free(ref);
    }
    json_decref(cfg);
    return 0;
}

static int test_tokenizer_world_fixtures(void)
{
    const char *vp = st_test_fixture("rwkv_vocab_v20230424.txt");
    if (!vp) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    tokenizer_t *tok = tokenizer_new_world(vp, err);
    CHECKF(tok, "%s", err);
    CHECK(tokenizer_vocab_size(tok) == 65536);
    CHECK(!tokenizer_is_bytes(tok));
    int rc = s_check_fixture_ids(tok, "rwkv7/tiny.json", "rwkv7/tiny.ref.safetensors");
    if (rc == 0) rc = s_check_fixture_ids(tok, "rwkv7/small.json", "rwkv7/small.ref.safetensors");
    tokenizer_destroy(&tok);
    CHECK(tok == NULL);
    tokenizer_destroy(&tok); /* NULL is fine */
    return rc;
}

/* Every token decodes to its own bytes and encodes back to itself or to a
 * sequence of the same bytes; random byte strings (invalid UTF-8 included)
 * round-trip. */
static int test_tokenizer_round_trip(void)
{
    const char *vp = st_test_fixture("rwkv_vocab_v20230424.txt");
    if (!vp) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    tokenizer_t *tok = tokenizer_new_world(vp, err);
    CHECKF(tok, "%s", err);
    /* the longest match of a whole token is that token (unless a later line
     * repeats its bytes, which the official vocabulary never does) */
    for (int32_t id = 1; id < 65530; id++) {
        size_t len = 0;
        const char *b = tokenizer_token(tok, id, &len);
        CHECKF(b && len > 0, "id %d has no bytes", (int)id);
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(tokenizer_encode(tok, b, len, &ids, &n, err) == ST_OK);
        CHECKF(n == 1 && ids[0] == id, "token %d encodes to %zu ids (first %d)", (int)id, n, (int)ids[0]);
        free(ids);
    }
    uint64_t x = 12345;
    for (int round = 0; round < 200; round++) {
        char buf[300];
        size_t len = (size_t)(round * 7 % 300);
        for (size_t i = 0; i < len; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            /* mix ASCII words with arbitrary bytes */
            buf[i] = (x >> 60) < 10 ? "the cat. \n"[(x >> 40) % 10] : (char)((x >> 33) & 0xff);
        }
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(tokenizer_encode(tok, buf, len, &ids, &n, err) == ST_OK);
        CHECK(n <= len);
        char *back = NULL;
        size_t back_len = 0;
        CHECKF(tokenizer_decode(tok, ids, n, &back, &back_len, err) == ST_OK, "%s", err);
        CHECK(back_len == len && memcmp(back, buf, len) == 0);
        free(back);
        free(ids);
    }
    /* id 0 is the document separator: no bytes; ids past the vocabulary are refused */
    int32_t sep[3] = {0, 1, 0};
    char *out = NULL;
    size_t out_len = 0;
    CHECK(tokenizer_decode(tok, sep, 3, &out, &out_len, err) == ST_OK);
    CHECK(out_len == 1 && out[0] == 0);
    free(out);
    int32_t bad[2] = {65535, 70000};
    CHECK(tokenizer_decode(tok, bad, 1, &out, &out_len, err) == ST_EINVAL);
    CHECK(strstr(err, "65535"));
    CHECK(tokenizer_decode(tok, bad + 1, 1, &out, &out_len, err) == ST_EINVAL);
    tokenizer_destroy(&tok);
    return 0;
}

static int test_tokenizer_bytes(void)
{
    char err[ST_ERR_LEN];
    tokenizer_t *tok = tokenizer_new("bytes", err);
    CHECK(tok);
    CHECK(tokenizer_vocab_size(tok) == 256);
    CHECK(tokenizer_is_bytes(tok));
    const char s[] = "a\0\xff\n";
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(tokenizer_encode(tok, s, 4, &ids, &n, err) == ST_OK);
    CHECK(n == 4 && ids[0] == 'a' && ids[1] == 0 && ids[2] == 255 && ids[3] == 10);
    char *back = NULL;
    size_t len = 0;
    CHECK(tokenizer_decode(tok, ids, n, &back, &len, err) == ST_OK);
    CHECK(len == 4 && memcmp(back, s, 4) == 0);
    free(back);
    free(ids);
    CHECK(tokenizer_encode(tok, "", 0, &ids, &n, err) == ST_OK && n == 0 && ids);
    free(ids);
    int32_t bad = 256;
    CHECK(tokenizer_decode(tok, &bad, 1, &back, &len, err) == ST_EINVAL);
    tokenizer_destroy(&tok);
    return 0;
}

/* A small hand-written vocabulary: longest match, Python escapes, and the
 * line number of a malformed line. */
static int test_tokenizer_vocab_file(void)
{
    const char *dir = st_test_tmpdir();
    char path[512], err[ST_ERR_LEN];
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    /* all 256 single bytes, then multi-byte tokens using every literal form */
    size_t cap = 1 << 16, k = 0;
    char *v = malloc(cap);
    CHECK(v);
    for (int b = 0; b < 256; b++)
        k += (size_t)snprintf(v + k, cap - k, "%d b'\\x%02x' 1\n", b + 1, b);
    k += (size_t)snprintf(v + k, cap - k, "%s",
                          "257 'ab' 2\n"
                          "258 'abc' 3\n"
                          "259 \"it's\" 4\n"
                          "260 '\\u4f60\\u597d' 6\n"
                          "261 '\\\\n\\t' 3\n"
                          "262 b'\\xe4\\xbd' 2\n"
                          "263 '  ' 2\n"
                          "264 '\\'x' 2\n");
    CHECK(s_write_file(path, v) == 0);
    tokenizer_t *tok = tokenizer_new_world(path, err);
    CHECKF(tok, "%s", err);
    const char *text = "abcab it's\\n\t\xe4\xbd\xa0\xe5\xa5\xbd  'x";
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(tokenizer_encode(tok, text, strlen(text), &ids, &n, err) == ST_OK);
    int32_t want[] = {258, 257, ' ' + 1, 259, 261, 260, 263, 264};
    CHECKF(n == sizeof want / sizeof want[0], "%zu ids", n);
    for (size_t i = 0; i < n; i++) CHECKF(ids[i] == want[i], "id %zu: %d vs %d", i, (int)ids[i], (int)want[i]);
    free(ids);
    /* "\xe4\xbd" then a byte that continues no token: the 2-byte token, then single bytes */
    CHECK(tokenizer_encode(tok, "\xe4\xbd\x01", 3, &ids, &n, err) == ST_OK);
    CHECK(n == 2 && ids[0] == 262 && ids[1] == 2);
    free(ids);
    tokenizer_destroy(&tok);

    /* malformed lines are named by number */
    const char *bad[] = {
        "1 'a' 1\n2 'bc' 3\n",          /* wrong byte length */
        "1 'a' 1\n\n2 'b 1\n",          /* unclosed literal (line 3) */
        "1 'a' 1\nx 'b' 1\n",           /* id not a number */
        "1 'a' 1\n2 r'b' 1\n",          /* raw string prefix */
        "1 'a' 1\n1 'b' 1\n",           /* duplicate id */
        "1 'a' 1\n2 '\\ud800' 3\n",     /* lone surrogate */
        "1 'a' 1\n2 'b'\n",             /* no byte length */
    };
    const int line[] = {2, 3, 2, 2, 2, 2, 2};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(s_write_file(path, bad[i]) == 0);
        tok = tokenizer_new_world(path, err);
        CHECKF(!tok, "bad vocabulary %zu accepted", i);
        char want_line[32];
        snprintf(want_line, sizeof want_line, "line %d", line[i]);
        CHECKF(strstr(err, want_line), "vocabulary %zu: '%s' does not say %s", i, err, want_line);
    }
    CHECK(!tokenizer_new_world("/nonexistent/vocab.txt", err));
    free(v);
    return 0;
}

static const st_test_t tests[] = {
    {"tokenizer_world_fixtures", test_tokenizer_world_fixtures},
    {"tokenizer_round_trip", test_tokenizer_round_trip},
    {"tokenizer_bytes", test_tokenizer_bytes},
    {"tokenizer_vocab_file", test_tokenizer_vocab_file},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return st_test_main(argc, argv, tests);
}
