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
#include "common/st_fs.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "data/jobspec.h"
#include "data/tokenizer.h"
#include "model/tensorfile.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------ */

/* Reads an I64 tensor of a reference dump with the project's tensor file
 * reader. Returns a malloc'd array or NULL (with the reason on stderr). */
static int64_t *s_read_i64_tensor(const char *path, const char *name, size_t *n_out)
{
    char err[ST_ERR_LEN];
    tensorfile_t *tf = tensorfile_open(path, err);
    if (!tf) {
        fprintf(stderr, "%s\n", err);
        return NULL;
    }
    int64_t *out = NULL;
    const tf_tensor_info_t *t = tensorfile_find(tf, name);
    if (t && t->dtype == TF_I64 && (out = malloc((size_t)(t->numel + 1) * sizeof *out))) {
        if (tensorfile_read_i64(tf, t, out, err) != ST_OK) {
            fprintf(stderr, "%s\n", err);
            free(out);
            out = NULL;
        } else {
            *n_out = (size_t)t->numel;
        }
    }
    tensorfile_close(&tf);
    return out;
}

static int s_write_file(const char *path, const char *text)
{
    unlink(path); /* see test_fuzz_parsers: rewriting in place is slow on ext4 */
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

/* An independent greedy longest match: every token in a sorted table, and at
 * each position the longest length (down from 128 bytes) found by binary
 * search. Slow but obviously right; the trie must agree with it. */
typedef struct {
    const char *b;
    size_t n;
    int32_t id;
} s_tok_t;

static int s_cmp_tok(const void *x, const void *y)
{
    const s_tok_t *a = x, *b = y;
    size_t n = a->n < b->n ? a->n : b->n;
    int c = memcmp(a->b, b->b, n);
    if (c) return c;
    return a->n < b->n ? -1 : a->n > b->n;
}

static int test_tokenizer_brute_force(void)
{
    const char *vp = st_test_fixture("rwkv_vocab_v20230424.txt");
    if (!vp) return ST_TEST_SKIP;
    char err[ST_ERR_LEN], rp[4096];
    tokenizer_t *tok = tokenizer_new_world(vp, err);
    CHECKF(tok, "%s", err);
    const char *p = st_test_fixture("README.md");
    if (!p) return ST_TEST_SKIP;
    snprintf(rp, sizeof rp, "%s", p);
    char *text = NULL;
    size_t len = 0;
    CHECKF(st_read_file(rp, 1 << 20, &text, &len, err) == ST_OK, "%s", err);
    s_tok_t *table = malloc(65536 * sizeof *table);
    CHECK(table);
    size_t nt = 0;
    for (int32_t id = 1; id < 65536; id++) {
        size_t n = 0;
        const char *b = tokenizer_token(tok, id, &n);
        if (b) table[nt++] = (s_tok_t){b, n, id};
    }
    qsort(table, nt, sizeof *table, s_cmp_tok);
    /* the README, then 20000 random tokens back to back: their joins make
     * the longest matches cross token boundaries in every way */
    size_t cap = len + 20000 * 128 + 1;
    char *grown = realloc(text, cap);
    CHECK(grown);
    text = grown;
    uint64_t x = 7;
    for (int i = 0; i < 20000; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        size_t n = 0;
        const char *b = tokenizer_token(tok, 1 + (int32_t)((x >> 33) % 65529), &n);
        CHECK(b);
        memcpy(text + len, b, n);
        len += n;
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    CHECK(tokenizer_encode(tok, text, len, &ids, &n_ids, err) == ST_OK);
    size_t pos = 0, k = 0;
    while (pos < len) {
        int32_t want = -1;
        size_t step = 0;
        for (size_t l = len - pos < 128 ? len - pos : 128; l >= 1 && want < 0; l--) {
            s_tok_t key = {text + pos, l, 0};
            s_tok_t *hit = bsearch(&key, table, nt, sizeof *table, s_cmp_tok);
            if (hit) {
                want = hit->id;
                step = l;
            }
        }
        CHECK(want >= 0 && k < n_ids);
        CHECKF(ids[k] == want, "at byte %zu: trie gives %d, brute force %d", pos, (int)ids[k], (int)want);
        k++;
        pos += step;
    }
    CHECK(k == n_ids);
    printf("%zu bytes -> %zu tokens, same as brute force\n", len, n_ids);
    free(ids);
    free(table);
    free(text);
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

/* ---- job files ------------------------------------------------------------------ */

/* A job file in a fresh folder; returns its path (static buffer). */
static const char *s_job_file(const char *dir, const char *name, const char *json)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return s_write_file(path, json) == 0 ? path : NULL;
}

static int test_jobspec_defaults(void)
{
    const char *dir = st_test_tmpdir();
    const char *path = s_job_file(dir, "job.json", "{\"name\": \"support-style\", \"model\": \"models/m.pth\", "
                                                   "\"train\": \"data/train.jsonl\"}");
    CHECK(path);
    char err[ST_ERR_LEN];
    jobspec_t *j = NULL;
    CHECKF(jobspec_parse_file(path, &j, err) == ST_OK, "%s", err);
    CHECK(strcmp(j->name, "support-style") == 0);
    /* relative paths are relative to the job file, stored absolute */
    char want[700];
    snprintf(want, sizeof want, "%s/models/m.pth", dir);
    CHECKF(j->model_path && strcmp(j->model_path, want) == 0, "model_path %s", j->model_path);
    CHECK(j->model_name == NULL);
    snprintf(want, sizeof want, "%s/data/train.jsonl", dir);
    CHECK(strcmp(j->train, want) == 0);
    CHECK(j->eval == NULL && j->tokenizer == NULL);
    CHECK(j->ctx_len == 512 && j->micro_batch == 4 && j->global_batch == 16);
    CHECK(j->steps == 0 && j->epochs == 1);
    CHECK(j->lr_init == 1.0 && j->lr_final == 0.01 && j->warmup_steps == 10 && j->grad_clip == 1.0);
    CHECK(j->beta1 == 0.9 && j->beta2 == 0.99 && j->eps == 1e-8 && j->eval_fraction == 0.1);
    CHECK(!j->dbp.enabled && j->dbp.lr == 1e-3 && j->dbp.kappa == 0.01 && j->dbp.sample_fraction == 0.25);
    CHECK(!j->observer.teacher_path && !j->observer.teacher_name && j->observer.alpha == 0.5 &&
          j->observer.temperature == 1.0 && j->observer.top_k == 64);
    CHECK(j->kernel_state.features == 0 && j->kernel_state.gamma == 1.0 &&
          strcmp(j->kernel_state.support, "kmeans") == 0);
    CHECK(j->eval_every == 50 && j->checkpoint_every == 50 && j->seed == 1 && j->priority == 0 && j->gpus == 1);
    CHECK(strcmp(j->backend, "cpu") == 0 && strcmp(j->precision, "fp32") == 0 && strcmp(j->alias, "latest") == 0);
    CHECK(j->truncate == JOB_TRUNCATE);

    /* canonical JSON holds every key and parses back to the same record */
    char *text = jobspec_to_json(j);
    CHECK(text);
    CHECK(strstr(text, "\"lr_init\"") && strstr(text, "\"sample_fraction\"") && strstr(text, "\"truncate\""));
    CHECKF(strstr(text, "\"beta1\": 0.9,"), "%s", text); /* written as people write it */
    jobspec_t *k = NULL;
    CHECKF(jobspec_parse_string(text, NULL, &k, err) == ST_OK, "%s\n%s", err, text);
    CHECK(jobspec_equal(j, k));
    char *text2 = jobspec_to_json(k);
    CHECK(text2 && strcmp(text, text2) == 0);
    free(text);
    free(text2);
    jobspec_destroy(&j);
    jobspec_destroy(&k);
    CHECK(j == NULL);
    jobspec_destroy(&j);
    return 0;
}

static int test_jobspec_round_trip(void)
{
    const char *dir = st_test_tmpdir();
    const char *json =
        "{\"name\": \"a.b-c_1\", \"model\": \"/abs/model.safetensors\", \"tokenizer\": \"vocab.txt\","
        " \"train\": \"t.jsonl\", \"eval\": \"e.jsonl\", \"ctx_len\": 1024, \"micro_batch\": 2,"
        " \"global_batch\": 8, \"steps\": 200, \"lr_init\": 0.12345678901234567, \"lr_final\": 0.0, \"warmup_steps\": 0,"
        " \"grad_clip\": 0, \"beta1\": 0.8, \"beta2\": 0.999, \"eps\": 1e-6, \"eval_fraction\": 0.3,"
        " \"dbp\": {\"enabled\": true, \"lr\": 0.002, \"kappa\": 0.5, \"sample_fraction\": 1},"
        " \"observer\": {\"teacher\": \"rwkv7-2.9b\", \"alpha\": 0.25, \"temperature\": 2, \"top_k\": 32},"
        " \"kernel_state\": {\"features\": 16, \"gamma\": 0.5, \"support\": \"random\"},"
        " \"eval_every\": 0, \"checkpoint_every\": 7, \"seed\": 1234567890123, \"priority\": -3, \"gpus\": 4,"
        " \"backend\": \"cuda\", \"precision\": \"bf16\", \"alias\": \"prod\", \"truncate\": \"split\"}";
    char err[ST_ERR_LEN];
    jobspec_t *j = NULL, *k = NULL;
    CHECKF(jobspec_parse_string(json, dir, &j, err) == ST_OK, "%s", err);
    CHECK(strcmp(j->model_path, "/abs/model.safetensors") == 0);
    CHECK(j->observer.teacher_name && strcmp(j->observer.teacher_name, "rwkv7-2.9b") == 0);
    CHECK(j->tokenizer[0] == '/' && strstr(j->tokenizer, "/vocab.txt"));
    CHECK(j->steps == 200 && j->epochs == 0 && j->dbp.enabled && j->seed == 1234567890123ull);
    CHECK(j->priority == -3 && j->gpus == 4 && j->truncate == JOB_SPLIT && j->eps == 1e-6);
    char *text = jobspec_to_json(j);
    CHECK(text);
    CHECKF(jobspec_parse_string(text, "/elsewhere/job.json", &k, err) == ST_OK, "%s", err);
    CHECK(jobspec_equal(j, k));
    free(text);
    jobspec_destroy(&j);
    jobspec_destroy(&k);
    return 0;
}

/* Every kind of refusal names its key. */
static int test_jobspec_refusals(void)
{
    static const struct {
        const char *extra; /* added to a valid minimal job */
        const char *want;  /* must appear in the message */
    } cases[] = {
        {"\"ctx_len\": -3", "'ctx_len' must be a positive integer, got -3"},
        {"\"ctx_len\": \"512\"", "'ctx_len' must be a positive integer, got \"512\""},
        {"\"ctx_len\": 512.5", "'ctx_len'"},
        {"\"lr\": 1", "unknown key 'lr'"},
        {"\"global_batch\": 10", "'global_batch' (10) must be a multiple of 'micro_batch' (4)"},
        {"\"lr_init\": 0.1, \"lr_final\": 0.5", "'lr_final'"},
        {"\"lr_init\": 0", "'lr_init'"},
        {"\"eval_fraction\": 0", "'eval_fraction'"},
        {"\"eval_fraction\": 1.5", "'eval_fraction'"},
        {"\"beta2\": 1", "'beta2'"},
        {"\"eps\": -1", "'eps'"},
        {"\"dbp\": {\"sample_fraction\": 0}", "'dbp.sample_fraction'"},
        {"\"dbp\": {\"enabled\": \"yes\"}", "'dbp.enabled' must be true or false"},
        {"\"dbp\": {\"foo\": 1}", "unknown key 'dbp.foo'"},
        {"\"dbp\": 3", "'dbp' must be an object"},
        {"\"observer\": {\"top_k\": -1}", "'observer.top_k'"},
        {"\"observer\": {\"alpha\": 1.5}", "'observer.alpha'"},
        {"\"kernel_state\": {\"support\": \"pca\"}", "'kernel_state.support' must be one of \"kmeans\", \"random\""},
        {"\"kernel_state\": {\"features\": -1}", "'kernel_state.features'"},
        {"\"steps\": 10, \"epochs\": 1", "'steps' or 'epochs', not both"},
        {"\"steps\": 0", "'steps'"},
        {"\"epochs\": 10000000", "'epochs'"},
        {"\"backend\": \"tpu\"", "'backend'"},
        {"\"precision\": \"bf16\"", "'precision'"},
        {"\"truncate\": \"cut\"", "'truncate'"},
        {"\"alias\": \"\"", "'alias'"},
        {"\"alias\": \"no spaces\"", "'alias'"},
        {"\"gpus\": 3", "'gpus'"},
        {"\"gpus\": 0", "'gpus'"},
        {"\"seed\": -1", "'seed'"},
        {"\"eval\": 5", "'eval'"},
        {"\"tokenizer\": \"\"", "'tokenizer'"},
        {"\"name\": \"x\"", "invalid JSON"}, /* duplicate key */
    };
    char err[ST_ERR_LEN], json[1024];
    const char *dir = st_test_tmpdir();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(json, sizeof json, "{\"name\": \"s\", \"model\": \"/m.pth\", \"train\": \"t.jsonl\", %s}",
                 cases[i].extra);
        const char *path = s_job_file(dir, "x.json", json);
        CHECK(path);
        jobspec_t *j = NULL;
        err[0] = 0;
        int rc = jobspec_parse_file(path, &j, err);
        CHECKF(rc != ST_OK && j == NULL, "accepted: %s", cases[i].extra);
        CHECKF(strstr(err, cases[i].want), "%s: message '%s' lacks '%s'", cases[i].extra, err, cases[i].want);
        CHECKF(strstr(err, "x.json"), "message '%s' does not name the file", err);
    }
    static const struct {
        const char *json;
        const char *want;
    } whole[] = {
        {"{\"model\": \"/m.pth\", \"train\": \"t.jsonl\"}", "'name' is required"},
        {"{\"name\": \"s\", \"train\": \"t.jsonl\"}", "'model' is required"},
        {"{\"name\": \"s\", \"model\": \"/m.pth\"}", "'train' is required"},
        {"{\"name\": \"bad name!\", \"model\": \"/m.pth\", \"train\": \"t\"}", "'name'"},
        {"{\"name\": \"s\", \"model\": \"no such model!\", \"train\": \"t\"}", "model 'no such model!'"},
        {"[1, 2]", "JSON object"},
        {"{\"name\": ", "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) {
        jobspec_t *j = NULL;
        CHECKF(jobspec_parse_string(whole[i].json, NULL, &j, err) != ST_OK, "accepted: %s", whole[i].json);
        CHECKF(strstr(err, whole[i].want), "%s: message '%s' lacks '%s'", whole[i].json, err, whole[i].want);
    }
    jobspec_t *j = NULL;
    CHECK(jobspec_parse_file("/nonexistent/job.json", &j, err) != ST_OK && strstr(err, "/nonexistent/job.json"));
    return 0;
}

/* "model" as a file beside the job, as a path, or as a registered name. */
static int test_jobspec_model_names(void)
{
    const char *dir = st_test_tmpdir();
    char path[600], err[ST_ERR_LEN];
    snprintf(path, sizeof path, "%s/local.pth", dir);
    CHECK(s_write_file(path, "x") == 0);
    jobspec_t *j = NULL;
    const char *job = s_job_file(dir, "j.json", "{\"name\": \"s\", \"model\": \"local.pth\", \"train\": \"t\"}");
    CHECKF(jobspec_parse_file(job, &j, err) == ST_OK, "%s", err);
    CHECK(j->model_path && strcmp(j->model_path, path) == 0 && !j->model_name);
    jobspec_destroy(&j);
    job = s_job_file(dir, "j.json", "{\"name\": \"s\", \"model\": \"rwkv7-1.5b\", \"train\": \"t\"}");
    CHECKF(jobspec_parse_file(job, &j, err) == ST_OK, "%s", err);
    CHECK(!j->model_path && j->model_name && strcmp(j->model_name, "rwkv7-1.5b") == 0);
    char *text = jobspec_to_json(j);
    CHECK(text && strstr(text, "\"model\": \"rwkv7-1.5b\""));
    free(text);
    /* inputs cannot be checked before the coordinator resolves the name */
    CHECK(jobspec_check_inputs(j, err) == ST_ENOTFOUND && strstr(err, "rwkv7-1.5b"));
    jobspec_destroy(&j);
    /* a missing file named like a model is a path, so its error says so */
    job = s_job_file(dir, "j.json", "{\"name\": \"s\", \"model\": \"missing.pth\", \"train\": \"t\"}");
    CHECKF(jobspec_parse_file(job, &j, err) == ST_OK, "%s", err);
    CHECK(j->model_path && !j->model_name && strstr(j->model_path, "/missing.pth"));
    CHECK(jobspec_check_inputs(j, err) != ST_OK && strstr(err, "missing.pth"));
    jobspec_destroy(&j);
    return 0;
}

/* Everything checkable before GPU time, against the fixture models. */
static int test_jobspec_check_inputs(void)
{
    const char *fx = st_test_fixture("rwkv7/tiny.safetensors");
    if (!fx) return ST_TEST_SKIP;
    char tiny[4096], small[4096], vocab[4096];
    snprintf(tiny, sizeof tiny, "%s", fx);
    if (!(fx = st_test_fixture("rwkv7/small.safetensors"))) return ST_TEST_SKIP;
    snprintf(small, sizeof small, "%s", fx);
    if (!(fx = st_test_fixture("rwkv_vocab_v20230424.txt"))) return ST_TEST_SKIP;
    snprintf(vocab, sizeof vocab, "%s", fx);
    const char *dir = st_test_tmpdir();
    char path[600], json[16384], err[ST_ERR_LEN];
    snprintf(path, sizeof path, "%s/train.jsonl", dir);
    CHECK(s_write_file(path, "{\"text\": \"hello world\"}\n{\"text\": \"goodbye\"}\n\n{\"prompt\": \"a\", "
                             "\"completion\": \"b\"}\n") == 0);

    /* vocab-256 model, no tokenizer: bytes */
    snprintf(json, sizeof json, "{\"name\": \"s\", \"model\": \"%s\", \"train\": \"train.jsonl\", \"ctx_len\": 8}",
             tiny);
    jobspec_t *j = NULL;
    CHECKF(jobspec_parse_file(s_job_file(dir, "job.json", json), &j, err) == ST_OK, "%s", err);
    char *report = NULL;
    CHECKF(jobspec_check_inputs_report(j, &report, err) == ST_OK, "%s", err);
    json_t *rep = json_loads(report, 0, NULL);
    CHECKF(rep, "%s", report);
    CHECK(json_integer_value(json_object_get(rep, "model_vocab")) == 256);
    json_t *sets = json_object_get(rep, "datasets");
    CHECK(json_array_size(sets) == 2);
    char hex[65];
    CHECK(st_sha256_file(path, hex, err) == ST_OK);
    json_int_t samples = 0;
    for (size_t i = 0; i < 2; i++) {
        json_t *d = json_array_get(sets, i);
        CHECK(strcmp(json_string_value(json_object_get(d, "sha256")), hex) == 0);
        CHECK(json_is_true(json_object_get(d, "held_out")) == (i == 1)); /* no eval file: held out of train */
        samples += json_integer_value(json_object_get(json_object_get(d, "counts"), "samples"));
    }
    CHECKF(samples == 3, "%s", report); /* three lines, one held out */
    json_decref(rep);
    free(report);
    CHECKF(jobspec_set_model(j, NULL, err) == ST_OK, "%s", err);
    CHECK(j->tokenizer && strcmp(j->tokenizer, "bytes") == 0);
    jobspec_destroy(&j);

    /* World tokenizer with a vocab-256 model: refused, naming both */
    snprintf(json, sizeof json, "{\"name\": \"s\", \"model\": \"%s\", \"tokenizer\": \"%s\", \"train\": \"train.jsonl\"}",
             tiny, vocab);
    CHECKF(jobspec_parse_file(s_job_file(dir, "job.json", json), &j, err) == ST_OK, "%s", err);
    CHECK(jobspec_check_inputs(j, err) == ST_EINVAL);
    CHECKF(strstr(err, "'tokenizer'") && strstr(err, "256"), "%s", err);
    jobspec_destroy(&j);

    /* vocab-1024 model without a tokenizer: refused */
    snprintf(json, sizeof json, "{\"name\": \"s\", \"model\": \"%s\", \"train\": \"train.jsonl\"}", small);
    CHECKF(jobspec_parse_file(s_job_file(dir, "job.json", json), &j, err) == ST_OK, "%s", err);
    CHECK(jobspec_check_inputs(j, err) == ST_EINVAL && strstr(err, "'tokenizer' is required"));
    CHECK(jobspec_set_model(j, NULL, err) == ST_EINVAL);
    jobspec_destroy(&j);

    /* a bad data line fails validation with its line number */
    CHECK(s_write_file(path, "{\"text\": \"ok\"}\n\n{\"text\": 5}\n") == 0);
    snprintf(json, sizeof json, "{\"name\": \"s\", \"model\": \"%s\", \"train\": \"train.jsonl\"}", tiny);
    CHECKF(jobspec_parse_file(s_job_file(dir, "job.json", json), &j, err) == ST_OK, "%s", err);
    CHECK(jobspec_check_inputs(j, err) == ST_EFORMAT);
    CHECKF(strstr(err, "line 3") && strstr(err, "train.jsonl"), "%s", err);
    jobspec_destroy(&j);

    /* a missing model file is named */
    snprintf(json, sizeof json, "{\"name\": \"s\", \"model\": \"gone/m.pth\", \"train\": \"train.jsonl\"}");
    CHECKF(jobspec_parse_file(s_job_file(dir, "job.json", json), &j, err) == ST_OK, "%s", err);
    CHECK(jobspec_check_inputs(j, err) != ST_OK && strstr(err, "gone/m.pth"));
    jobspec_destroy(&j);
    return 0;
}

/* ---- datasets ------------------------------------------------------------------- */

static dataset_t *s_load(const char *text, int ctx_len, job_long_t mode, char *err)
{
    tokenizer_t *tok = tokenizer_new_bytes();
    dataset_t *ds = NULL;
    if (tok) dataset_load_buffer("mem.jsonl", text, strlen(text), tok, ctx_len, mode, &ds, err);
    tokenizer_destroy(&tok);
    return ds;
}

/* The sample as text, with trained bytes upper-cased by a marker: '[' ... ']'
 * around each trained run, for readable comparisons. */
static void s_render_mask(dataset_sample_t s, char *out, size_t n)
{
    size_t k = 0;
    int in = 0;
    for (int i = 0; i < s.n && k + 3 < n; i++) {
        if (s.train[i] && !in) out[k++] = '[';
        if (!s.train[i] && in) out[k++] = ']';
        in = s.train[i];
        out[k++] = (char)s.tokens[i];
    }
    if (in && k + 1 < n) out[k++] = ']';
    out[k] = 0;
}

static int test_dataset_formats(void)
{
    char err[ST_ERR_LEN], got[512];
    const char *text =
        "{\"text\": \"hello\"}\n"
        "\n"
        "   \n"
        "{\"prompt\": \"Q: 2+2?\", \"completion\": \" 4\", \"id\": 7}\n"
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
        " {\"role\": \"user\", \"content\": \"Hi\\r\\n\\r\\n\\r\\nthere \"},"
        " {\"role\": \"assistant\", \"content\": \"Hello!\"},"
        " {\"role\": \"user\", \"content\": \"Bye\"},"
        " {\"role\": \"assistant\", \"content\": \"See\\n\\nyou\"},"
        " {\"role\": \"user\", \"content\": \"trailing turns train nothing and are cut\"}]}\n"
        "{\"text\": \"a\\u0000b\"}";
    dataset_t *ds = s_load(text, 512, JOB_TRUNCATE, err);
    CHECKF(ds, "%s", err);
    CHECK(dataset_count(ds) == 4);
    const dataset_stats_t *st = dataset_stats(ds);
    CHECK(st->lines == 4 && st->samples == 4 && st->truncated == 0 && st->dropped == 0);

    dataset_sample_t s = dataset_get(ds, 0);
    s_render_mask(s, got, sizeof got);
    CHECKF(strcmp(got, "h[ello]") == 0, "%s", got); /* every token but the first is a target */
    CHECK(s.line == 1);

    s = dataset_get(ds, 1);
    s_render_mask(s, got, sizeof got);
    CHECKF(strcmp(got, "Q: 2+2?[ 4]") == 0, "%s", got);
    CHECK(s.line == 4);

    s = dataset_get(ds, 2);
    s_render_mask(s, got, sizeof got);
    CHECKF(strcmp(got, "System: Be brief.\n\nUser: Hi\nthere\n\nAssistant:[ Hello!\n\n]User: Bye\n\n"
                       "Assistant:[ See\nyou\n\n]") == 0,
           "%s", got);

    s = dataset_get(ds, 3); /* NUL inside text is a byte like any other */
    CHECK(s.n == 3 && s.tokens[1] == 0);
    int64_t targets = 0;
    for (int i = 0; i < dataset_count(ds); i++) {
        dataset_sample_t x = dataset_get(ds, i);
        CHECK(x.train[0] == 0);
        for (int t = 0; t < x.n; t++) targets += x.train[t];
    }
    CHECK(targets == st->targets);
    char hex[65];
    st_sha256_hex(text, strlen(text), hex);
    CHECK(strcmp(hex, st->sha256) == 0);
    dataset_destroy(&ds);
    CHECK(ds == NULL);

    /* a file: the hash is the file's */
    const char *dir = st_test_tmpdir();
    char path[600];
    snprintf(path, sizeof path, "%s/d.jsonl", dir);
    CHECK(s_write_file(path, text) == 0);
    tokenizer_t *tok = tokenizer_new_bytes();
    CHECK(dataset_load(path, tok, 512, JOB_TRUNCATE, &ds, err) == ST_OK);
    char fhex[65];
    CHECK(st_sha256_file(path, fhex, err) == ST_OK);
    CHECK(strcmp(fhex, dataset_stats(ds)->sha256) == 0);
    dataset_destroy(&ds);
    CHECK(dataset_load("/nonexistent.jsonl", tok, 512, JOB_TRUNCATE, &ds, err) != ST_OK && !ds);
    tokenizer_destroy(&tok);
    return 0;
}

/* With the World tokenizer, prompt and completion are tokenized apart: the
 * ids are the concatenation, and the mask covers the completion's ids. */
static int test_dataset_world_segments(void)
{
    const char *vp = st_test_fixture("rwkv_vocab_v20230424.txt");
    if (!vp) return ST_TEST_SKIP;
    char err[ST_ERR_LEN];
    tokenizer_t *tok = tokenizer_new_world(vp, err);
    CHECKF(tok, "%s", err);
    const char *line = "{\"prompt\": \"The Eiffel tower is in\", \"completion\": \" the city of Paris\"}\n";
    dataset_t *ds = NULL;
    CHECKF(dataset_load_buffer("w.jsonl", line, strlen(line), tok, 512, JOB_TRUNCATE, &ds, err) == ST_OK, "%s", err);
    int32_t *p = NULL, *c = NULL;
    size_t np = 0, nc = 0;
    CHECK(tokenizer_encode(tok, "The Eiffel tower is in", 22, &p, &np, err) == ST_OK);
    CHECK(tokenizer_encode(tok, " the city of Paris", 18, &c, &nc, err) == ST_OK);
    dataset_sample_t s = dataset_get(ds, 0);
    CHECK((size_t)s.n == np + nc);
    for (size_t i = 0; i < np; i++) CHECK(s.tokens[i] == p[i] && s.train[i] == 0);
    for (size_t i = 0; i < nc; i++) CHECK(s.tokens[np + i] == c[i] && s.train[np + i] == 1);
    free(p);
    free(c);
    dataset_destroy(&ds);
    tokenizer_destroy(&tok);
    return 0;
}

static int test_dataset_bad_lines(void)
{
    static const struct {
        const char *line;
        const char *want;
    } cases[] = {
        {"{\"text\": \"unterminated}", "invalid JSON"},
        {"[\"text\"]", "JSON object"},
        {"{\"txt\": \"typo\"}", "expected \"text\""},
        {"{\"text\": 5}", "'text' must be a string"},
        {"{\"text\": \"\"}", "'text' is empty"},
        {"{\"text\": \"a\", \"prompt\": \"b\", \"completion\": \"c\"}", "only one"},
        {"{\"prompt\": \"a\"}", "'completion' is missing"},
        {"{\"prompt\": \"a\", \"completion\": \"\"}", "'completion' is empty"},
        {"{\"completion\": \"a\"}", "'prompt' is missing"},
        {"{\"messages\": \"hi\"}", "'messages' must be a non-empty array"},
        {"{\"messages\": []}", "'messages' must be a non-empty array"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", "no assistant turn"},
        {"{\"messages\": [{\"role\": \"bot\", \"content\": \"hi\"}]}", "messages[0].role must be"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\"}]}",
         "'messages[1].content' is missing"},
        {"{\"messages\": [1]}", "messages[0] must be an object"},
        {"{\"text\": \"a\", \"text\": \"b\"}", "invalid JSON"},
    };
    char err[ST_ERR_LEN], text[512];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(text, sizeof text, "{\"text\": \"fine\"}\n\n%s\n{\"text\": \"fine\"}\n", cases[i].line);
        dataset_t *ds = s_load(text, 64, JOB_TRUNCATE, err);
        CHECKF(!ds, "accepted: %s", cases[i].line);
        CHECKF(strstr(err, "line 3") && strstr(err, "mem.jsonl"), "%s: '%s' lacks the line", cases[i].line, err);
        CHECKF(strstr(err, cases[i].want), "%s: '%s' lacks '%s'", cases[i].line, err, cases[i].want);
    }
    return 0;
}

static int test_dataset_truncate_split(void)
{
    char err[ST_ERR_LEN], text[512], body[128];
    for (int i = 0; i < 100; i++) body[i] = (char)('a' + i % 26);
    body[100] = 0;
    snprintf(text, sizeof text, "{\"text\": \"%s\"}\n{\"prompt\": \"%s\", \"completion\": \"late\"}\n", body, body);

    dataset_t *ds = s_load(text, 16, JOB_TRUNCATE, err);
    CHECKF(ds, "%s", err);
    /* the text is cut to ctx_len + 1 tokens; the completion falls past the cut: dropped */
    CHECK(dataset_count(ds) == 1);
    CHECK(dataset_get(ds, 0).n == 17 && memcmp(body, "abcdefghijklmnopq", 17) == 0);
    for (int t = 0; t < 17; t++) CHECK(dataset_get(ds, 0).tokens[t] == body[t]);
    CHECK(dataset_stats(ds)->truncated == 2 && dataset_stats(ds)->dropped == 1);
    dataset_destroy(&ds);

    ds = s_load(text, 16, JOB_SPLIT, err);
    CHECKF(ds, "%s", err);
    /* text: pieces start every 16 tokens and overlap by one; every target once */
    char back[128];
    int targets = 0, n_text = 0, k = 0;
    for (int i = 0; i < dataset_count(ds); i++) {
        dataset_sample_t s = dataset_get(ds, i);
        CHECK(s.n <= 17 && s.n >= 2 && s.train[0] == 0);
        if (s.line != 1) continue;
        CHECK(s.piece == n_text);
        n_text++;
        for (int t = 0; t < s.n; t++) {
            if (t > 0 || i == 0) back[k++] = (char)s.tokens[t];
            targets += s.train[t];
        }
    }
    back[k] = 0;
    CHECK(n_text == 7);
    CHECKF(targets == 99, "%d targets", targets);
    CHECK(strcmp(back, body) == 0);
    /* prompt/completion: the pieces holding only prompt tokens are dropped */
    int completion_pieces = 0;
    for (int i = 0; i < dataset_count(ds); i++)
        if (dataset_get(ds, i).line == 2) completion_pieces++;
    CHECK(completion_pieces == 1);
    CHECK(dataset_stats(ds)->split == 2 && dataset_stats(ds)->dropped == 6);
    dataset_destroy(&ds);
    return 0;
}

static int test_dataset_eval_split(void)
{
    char err[ST_ERR_LEN];
    size_t cap = 1 << 16, k = 0;
    char *text = malloc(cap);
    CHECK(text);
    for (int i = 0; i < 100; i++) k += (size_t)snprintf(text + k, cap - k, "{\"text\": \"sample %d\"}\n", i);
    dataset_t *all = s_load(text, 64, JOB_TRUNCATE, err);
    CHECKF(all, "%s", err);
    dataset_t *tr = NULL, *ev = NULL, *tr2 = NULL, *ev2 = NULL, *tr3 = NULL, *ev3 = NULL;
    CHECKF(dataset_split(all, 0.1, 7, &tr, &ev, err) == ST_OK, "%s", err);
    CHECK(dataset_count(ev) == 10 && dataset_count(tr) == 90);
    CHECK(dataset_stats(ev)->lines == 10 && dataset_stats(tr)->lines == 90);
    CHECK(strcmp(dataset_stats(ev)->sha256, dataset_stats(all)->sha256) == 0);
    /* disjoint and complete */
    int seen[101] = {0};
    for (int i = 0; i < dataset_count(tr); i++) seen[dataset_get(tr, i).line]++;
    for (int i = 0; i < dataset_count(ev); i++) seen[dataset_get(ev, i).line]++;
    for (int i = 1; i <= 100; i++) CHECK(seen[i] == 1);
    /* the same seed gives the same split; another seed another one */
    CHECK(dataset_split(all, 0.1, 7, &tr2, &ev2, err) == ST_OK);
    CHECK(dataset_split(all, 0.1, 8, &tr3, &ev3, err) == ST_OK);
    int same2 = 1, same3 = 1;
    for (int i = 0; i < 10; i++) {
        same2 &= dataset_get(ev, i).line == dataset_get(ev2, i).line;
        same3 &= dataset_get(ev, i).line == dataset_get(ev3, i).line;
    }
    CHECK(same2 && !same3);
    /* the held-out lines are spread over the file, not its tail */
    int first_half = 0;
    for (int i = 0; i < 10; i++) first_half += dataset_get(ev, i).line <= 50;
    CHECK(first_half > 0 && first_half < 10);
    dataset_destroy(&tr);
    dataset_destroy(&ev);
    dataset_destroy(&tr2);
    dataset_destroy(&ev2);
    dataset_destroy(&tr3);
    dataset_destroy(&ev3);
    dataset_destroy(&all);
    /* one line cannot be split */
    all = s_load("{\"text\": \"only\"}\n", 64, JOB_TRUNCATE, err);
    CHECK(all);
    CHECK(dataset_split(all, 0.1, 1, &tr, &ev, err) == ST_EINVAL && strstr(err, "'eval'"));
    dataset_destroy(&all);
    free(text);
    return 0;
}

/* ---- batcher -------------------------------------------------------------------- */

/* n texts of pseudo-random lengths in [2, maxlen] (bytes). */
static dataset_t *s_random_dataset(int n, int maxlen, uint64_t seed)
{
    size_t cap = (size_t)n * ((size_t)maxlen + 20) + 1, k = 0;
    char *text = malloc(cap);
    if (!text) return NULL;
    uint64_t x = seed;
    for (int i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int len = 2 + (int)((x >> 33) % (uint64_t)(maxlen - 1));
        k += (size_t)snprintf(text + k, cap - k, "{\"text\": \"");
        for (int t = 0; t < len; t++) text[k++] = (char)('a' + (i + t) % 26);
        k += (size_t)snprintf(text + k, cap - k, "\"}\n");
    }
    text[k] = 0;
    char err[ST_ERR_LEN];
    dataset_t *ds = s_load(text, maxlen, JOB_TRUNCATE, err);
    free(text);
    return ds;
}

/* The samples of one global step on one rank, in order, plus a checksum of
 * the token and target arrays. */
static int s_step(batcher_t *b, int *rows, int *n_rows, uint64_t *sum, int64_t *global_targets, int64_t *mine)
{
    char err[ST_ERR_LEN];
    batch_t out;
    if (batcher_next(b, &out, err) != ST_OK) return -1;
    *n_rows = 0;
    *global_targets = out.global_targets;
    *mine = 0;
    uint64_t h = 1469598103934665603ull;
    for (int m = 0; m < out.n_micro; m++) {
        micro_batch_t *mb = &out.micro[m];
        for (int i = 0; i < mb->B; i++) rows[(*n_rows)++] = mb->sample[i];
        for (int i = 0; i < mb->B * mb->T; i++) {
            h = (h ^ (uint64_t)(uint32_t)mb->tokens[i]) * 1099511628211ull;
            h = (h ^ (uint64_t)(uint32_t)mb->targets[i]) * 1099511628211ull;
        }
        *mine += mb->n_targets;
    }
    *sum = h;
    return 0;
}

static int test_batcher_deterministic(void)
{
    dataset_t *ds = s_random_dataset(200, 60, 3);
    CHECK(ds);
    char err[ST_ERR_LEN];
    batcher_t *a = batcher_new(ds, 16, 4, 60, 42, 0, 1, err);
    batcher_t *b = batcher_new(ds, 16, 4, 60, 42, 0, 1, err);
    batcher_t *c = batcher_new(ds, 16, 4, 60, 43, 0, 1, err);
    CHECKF(a && b && c, "%s", err);
    int64_t spe = batcher_steps_per_epoch(a);
    CHECK(spe == 13); /* ceil(200 / 16) */
    int rows_a[16], rows_b[16], rows_c[16], na, nb, nc, differ = 0;
    int count[200] = {0};
    for (int step = 0; step < 2 * spe; step++) {
        uint64_t ha, hb, hc;
        int64_t ga, gb, gc, ma, mb2, mc;
        CHECK(s_step(a, rows_a, &na, &ha, &ga, &ma) == 0);
        CHECK(s_step(b, rows_b, &nb, &hb, &gb, &mb2) == 0);
        CHECK(s_step(c, rows_c, &nc, &hc, &gc, &mc) == 0);
        CHECK(na == 16 && nb == 16 && nc == 16);
        CHECK(memcmp(rows_a, rows_b, sizeof rows_a) == 0 && ha == hb && ga == gb);
        differ |= memcmp(rows_a, rows_c, sizeof rows_a) != 0;
        CHECK(ga == ma); /* one rank holds the whole global batch */
        if (step < spe)
            for (int i = 0; i < 16; i++) count[rows_a[i]]++;
    }
    CHECK(differ);
    /* one epoch covers every sample, 8 of them twice to fill the last batch */
    int twice = 0;
    for (int i = 0; i < 200; i++) {
        CHECK(count[i] >= 1 && count[i] <= 2);
        twice += count[i] == 2;
    }
    CHECK(twice == 13 * 16 - 200);
    CHECK(batcher_position(a).epoch == 2 && batcher_position(a).index == 0);

    /* tokens and targets: inputs are tokens[0..n-2], targets the next token, -1 past the end */
    batch_t out;
    CHECK(batcher_next(a, &out, err) == ST_OK);
    for (int m = 0; m < out.n_micro; m++) {
        micro_batch_t *mb = &out.micro[m];
        CHECK(mb->B <= 4 && mb->T <= 60);
        for (int i = 0; i < mb->B; i++) {
            dataset_sample_t s = dataset_get(ds, mb->sample[i]);
            CHECK(s.n - 1 <= mb->T);
            for (int t = 0; t < mb->T; t++) {
                int32_t tok = mb->tokens[i * mb->T + t], tgt = mb->targets[i * mb->T + t];
                if (t < s.n - 1) {
                    CHECK(tok == s.tokens[t] && tgt == s.tokens[t + 1]);
                } else {
                    CHECK(tgt == -1);
                }
            }
        }
    }
    batcher_destroy(&a);
    batcher_destroy(&b);
    batcher_destroy(&c);
    CHECK(a == NULL);
    dataset_destroy(&ds);
    return 0;
}

/* Ranks' slices partition the global batch exactly, in order, and every rank
 * knows the global target count. */
static int test_batcher_ranks(void)
{
    dataset_t *ds = s_random_dataset(150, 40, 5);
    CHECK(ds);
    char err[ST_ERR_LEN];
    batcher_t *one = batcher_new(ds, 16, 2, 40, 9, 0, 1, err);
    CHECKF(one, "%s", err);
    batcher_t *r4[4];
    for (int r = 0; r < 4; r++) {
        r4[r] = batcher_new(ds, 16, 2, 40, 9, r, 4, err);
        CHECKF(r4[r], "%s", err);
    }
    for (int step = 0; step < 25; step++) {
        int all[16], n_all, part[16], n_part, k = 0;
        uint64_t h;
        int64_t g1, m1, sum_mine = 0;
        CHECK(s_step(one, all, &n_all, &h, &g1, &m1) == 0);
        for (int r = 0; r < 4; r++) {
            int64_t g, m;
            CHECK(s_step(r4[r], part, &n_part, &h, &g, &m) == 0);
            CHECK(n_part == 4 && g == g1);
            for (int i = 0; i < n_part; i++) CHECK(part[i] == all[k++]);
            sum_mine += m;
        }
        CHECK(k == 16 && sum_mine == g1);
    }
    for (int r = 0; r < 4; r++) batcher_destroy(&r4[r]);
    batcher_destroy(&one);
    CHECK(!batcher_new(ds, 16, 2, 40, 9, 0, 3, err)); /* 16 samples cannot go evenly to 3 ranks */
    CHECK(!batcher_new(ds, 16, 2, 20, 9, 0, 1, err)); /* samples longer than ctx_len */
    dataset_destroy(&ds);
    return 0;
}

/* A saved position continues with exactly the batches that would have come. */
static int test_batcher_seek(void)
{
    dataset_t *ds = s_random_dataset(50, 30, 11);
    CHECK(ds);
    char err[ST_ERR_LEN];
    batcher_t *a = batcher_new(ds, 8, 4, 30, 5, 1, 2, err);
    CHECKF(a, "%s", err);
    int rows[8], n;
    uint64_t h, want[12];
    int64_t g, m;
    for (int i = 0; i < 5; i++) CHECK(s_step(a, rows, &n, &h, &g, &m) == 0);
    batcher_pos_t pos = batcher_position(a);
    CHECK(pos.epoch == 0 && pos.index == 5);
    for (int i = 0; i < 12; i++) CHECK(s_step(a, rows, &n, &want[i], &g, &m) == 0); /* crosses into epoch 2 */
    batcher_t *b = batcher_new(ds, 8, 4, 30, 5, 1, 2, err);
    CHECK(b);
    CHECK(batcher_seek(b, pos, err) == ST_OK);
    for (int i = 0; i < 12; i++) {
        CHECK(s_step(b, rows, &n, &h, &g, &m) == 0);
        CHECKF(h == want[i], "step %d after seek differs", i);
    }
    CHECK(batcher_position(a).epoch == batcher_position(b).epoch &&
          batcher_position(a).index == batcher_position(b).index);
    batcher_pos_t bad = {0, 7}; /* an epoch of 50 samples has 7 batches of 8 */
    CHECK(batcher_seek(b, bad, err) == ST_EINVAL && strstr(err, "7"));
    batcher_destroy(&a);
    batcher_destroy(&b);
    dataset_destroy(&ds);
    return 0;
}

/* Bucketing keeps padding small: far below batches drawn in plain shuffled order. */
static int test_batcher_padding(void)
{
    dataset_t *ds = s_random_dataset(2000, 200, 17);
    CHECK(ds);
    char err[ST_ERR_LEN];
    batcher_t *b = batcher_new(ds, 16, 4, 200, 1, 0, 1, err);
    CHECKF(b, "%s", err);
    int64_t cells = 0, real = 0;
    for (int64_t step = 0; step < batcher_steps_per_epoch(b); step++) {
        batch_t out;
        CHECK(batcher_next(b, &out, err) == ST_OK);
        for (int m = 0; m < out.n_micro; m++) {
            cells += (int64_t)out.micro[m].B * out.micro[m].T;
            for (int i = 0; i < out.micro[m].B; i++) real += dataset_get(ds, out.micro[m].sample[i]).n - 1;
        }
    }
    /* the same samples in groups of 4 as they come in the file (random lengths) */
    int64_t naive_cells = 0, naive_real = 0;
    for (int i = 0; i + 4 <= dataset_count(ds); i += 4) {
        int T = 0;
        for (int k = 0; k < 4; k++) {
            int len = dataset_get(ds, i + k).n - 1;
            T = len > T ? len : T;
            naive_real += len;
        }
        naive_cells += 4 * T;
    }
    double pad = 1.0 - (double)real / (double)cells;
    double naive = 1.0 - (double)naive_real / (double)naive_cells;
    printf("padding: %.2f%% bucketed, %.2f%% unbucketed\n", 100 * pad, 100 * naive);
    CHECKF(pad < 0.05 && pad < naive / 5, "padding %.3f (unbucketed %.3f)", pad, naive);
    batcher_destroy(&b);
    dataset_destroy(&ds);
    return 0;
}

/* Eval: a fixed order, every sample exactly once across ranks. */
static int test_batcher_eval(void)
{
    dataset_t *ds = s_random_dataset(37, 30, 23);
    CHECK(ds);
    char err[ST_ERR_LEN];
    int seen[37] = {0};
    int64_t targets = 0, total = 0;
    for (int i = 0; i < 37; i++) total += dataset_get(ds, i).n - 1;
    for (int r = 0; r < 3; r++) {
        batcher_t *b = batcher_new_eval(ds, 4, 30, r, 3, err);
        CHECKF(b, "%s", err);
        for (int pass = 0; pass < 2; pass++) {
            uint64_t h = 0;
            for (;;) {
                batch_t out;
                CHECK(batcher_next(b, &out, err) == ST_OK);
                if (out.n_micro == 0) break;
                micro_batch_t *mb = &out.micro[0];
                for (int i = 0; i < mb->B; i++) {
                    if (pass == 0) seen[mb->sample[i]]++;
                    h = h * 31 + (uint64_t)mb->sample[i];
                }
                if (pass == 0) targets += mb->n_targets;
            }
            CHECK(batcher_seek(b, batcher_position(b), err) == ST_OK); /* rewinds */
            (void)h;
        }
        batcher_destroy(&b);
    }
    for (int i = 0; i < 37; i++) CHECK(seen[i] == 1);
    CHECK(targets == total);
    dataset_destroy(&ds);
    return 0;
}

/* ---- fuzzing ---------------------------------------------------------------------- */

/* One random edit of buf (len bytes, capacity cap): flip, insert, delete,
 * duplicate a span or truncate. */
static size_t s_mutate(char *buf, size_t len, size_t cap, uint64_t *x)
{
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t r = *x >> 16;
    size_t pos = len ? (size_t)(r % len) : 0;
    static const char interesting[] = "\"\\'{}[]:,0-9.eEbxu \n\r\t\x80\xff";
    switch ((r >> 40) % 6) {
    case 0: /* replace with a byte that matters to the grammar */
        if (len) buf[pos] = interesting[(r >> 20) % (sizeof interesting - 1)];
        break;
    case 1: /* random byte */
        if (len) buf[pos] = (char)(r >> 24);
        break;
    case 2: /* insert */
        if (len + 1 < cap) {
            memmove(buf + pos + 1, buf + pos, len - pos);
            buf[pos] = interesting[(r >> 20) % (sizeof interesting - 1)];
            len++;
        }
        break;
    case 3: /* delete */
        if (len) {
            memmove(buf + pos, buf + pos + 1, len - pos - 1);
            len--;
        }
        break;
    case 4: { /* duplicate a span */
        size_t n = (size_t)((r >> 8) % 16);
        if (pos + n <= len && len + n < cap) {
            memmove(buf + pos + n, buf + pos, len - pos);
            len += n;
        }
        break;
    }
    default: /* truncate */
        len = pos;
    }
    buf[len] = 0;
    return len;
}

/* The parsers of untrusted input (vocabulary, job file, JSONL) under random
 * edits: errors are fine, crashes are not (run under ASan/UBSan with
 * -DSTATETUNE_SANITIZE=ON), and whatever is accepted keeps its invariants. */
static int test_fuzz_parsers(void)
{
    char err[ST_ERR_LEN];
    const char *dir = st_test_tmpdir();
    char path[600];
    snprintf(path, sizeof path, "%s/v.txt", dir);
    static const char vocab[] = "1 '\\x00' 1\n2 'a' 1\n3 'b' 1\n4 'ab' 2\n5 b'\\xe4\\xbd' 2\n6 '\\u4f60' 3\n"
                                "7 \"it's\" 4\n8 '\\\\n\\t' 3\n9 '\\101\\n' 2\n10 '  ' 2\n";
    static const char job[] =
        "{\"name\": \"s\", \"model\": \"/m.pth\", \"train\": \"t.jsonl\", \"ctx_len\": 64, \"steps\": 3,"
        " \"dbp\": {\"enabled\": true, \"kappa\": 0.5}, \"observer\": {\"teacher\": null, \"top_k\": 8},"
        " \"kernel_state\": {\"features\": 4}, \"backend\": \"cuda\", \"precision\": \"bf16\", \"truncate\": \"split\"}";
    static const char jsonl[] =
        "{\"text\": \"hello\\u0000 w\\u00f6rld\"}\n\n{\"prompt\": \"Q\", \"completion\": \"A\"}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\\n\\n\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n";
    char buf[1024];
    uint64_t x = 99;
    tokenizer_t *bytes = tokenizer_new_bytes();
    CHECK(bytes);
    int accepted[3] = {0, 0, 0};
    /* STATETUNE_FUZZ_ITERS runs longer campaigns (e.g. under ASan) */
    const char *env = getenv("STATETUNE_FUZZ_ITERS");
    int iters = env && atoi(env) > 0 ? atoi(env) : 3000;
    for (int iter = 0; iter < iters; iter++) {
        int which = iter % 3;
        const char *base = which == 0 ? vocab : which == 1 ? job : jsonl;
        size_t len = strlen(base);
        memcpy(buf, base, len + 1);
        int edits = 1 + (int)((x >> 50) % 4);
        for (int e = 0; e < edits; e++) len = s_mutate(buf, len, sizeof buf, &x);
        if (which == 0) {
            /* a fresh file each time: rewriting a truncated file makes ext4
             * flush it on close (auto_da_alloc), which costs milliseconds */
            unlink(path);
            FILE *fp = fopen(path, "wb");
            CHECK(fp);
            CHECK(fwrite(buf, 1, len, fp) == len);
            CHECK(fclose(fp) == 0);
            tokenizer_t *tok = tokenizer_new_world(path, err);
            if (!tok) continue;
            accepted[0]++;
            int32_t *ids = NULL;
            size_t n = 0;
            if (tokenizer_encode(tok, "ab\x00\xe4\xbd\xa0  it's", 12, &ids, &n, err) == ST_OK) {
                char *back = NULL;
                size_t blen = 0;
                CHECK(tokenizer_decode(tok, ids, n, &back, &blen, err) == ST_OK);
                CHECK(blen == 12 && memcmp(back, "ab\x00\xe4\xbd\xa0  it's", 12) == 0);
                free(back);
            }
            free(ids);
            tokenizer_destroy(&tok);
        } else if (which == 1) {
            jobspec_t *j = NULL, *k = NULL;
            if (jobspec_parse_string(buf, "/tmp/fuzz/job.json", &j, err) != ST_OK) continue;
            accepted[1]++;
            char *text = jobspec_to_json(j);
            CHECK(text);
            CHECKF(jobspec_parse_string(text, NULL, &k, err) == ST_OK, "%s\n%s", err, text);
            CHECK(jobspec_equal(j, k));
            free(text);
            jobspec_destroy(&j);
            jobspec_destroy(&k);
        } else {
            dataset_t *ds = NULL;
            if (dataset_load_buffer("f.jsonl", buf, len, bytes, 8, (job_long_t)(iter & 1), &ds, err) != ST_OK)
                continue;
            accepted[2]++;
            for (int i = 0; i < dataset_count(ds); i++) {
                dataset_sample_t s = dataset_get(ds, i);
                int any = 0;
                CHECK(s.n >= 2 && s.n <= 9 && s.train[0] == 0);
                for (int t = 1; t < s.n; t++) any |= s.train[t];
                CHECK(any);
            }
            dataset_destroy(&ds);
        }
    }
    printf("fuzz: accepted %d vocabularies, %d job files, %d datasets of %d each\n", accepted[0], accepted[1],
           accepted[2], iters / 3);
    tokenizer_destroy(&bytes);
    return 0;
}

static const st_test_t tests[] = {
    {"tokenizer_world_fixtures", test_tokenizer_world_fixtures},
    {"tokenizer_round_trip", test_tokenizer_round_trip},
    {"tokenizer_brute_force", test_tokenizer_brute_force},
    {"tokenizer_bytes", test_tokenizer_bytes},
    {"tokenizer_vocab_file", test_tokenizer_vocab_file},
    {"jobspec_defaults", test_jobspec_defaults},
    {"jobspec_round_trip", test_jobspec_round_trip},
    {"jobspec_refusals", test_jobspec_refusals},
    {"jobspec_model_names", test_jobspec_model_names},
    {"jobspec_check_inputs", test_jobspec_check_inputs},
    {"dataset_formats", test_dataset_formats},
    {"dataset_world_segments", test_dataset_world_segments},
    {"dataset_bad_lines", test_dataset_bad_lines},
    {"dataset_truncate_split", test_dataset_truncate_split},
    {"dataset_eval_split", test_dataset_eval_split},
    {"batcher_deterministic", test_batcher_deterministic},
    {"batcher_ranks", test_batcher_ranks},
    {"batcher_seek", test_batcher_seek},
    {"batcher_padding", test_batcher_padding},
    {"batcher_eval", test_batcher_eval},
    {"fuzz_parsers", test_fuzz_parsers},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    return st_test_main(argc, argv, tests);
}
