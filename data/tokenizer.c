/*
 * tokenizer.c - the RWKV World tokenizer and the byte tokenizer.
 *
 * The World vocabulary file is a list of Python literals, one token a line.
 * rwkv_tokenizer.py eval()s them; we must never execute anything, so this file
 * holds a small parser for exactly the two literal forms a token can take:
 * str literals ('...' or "..." with Python's escapes, encoded to UTF-8) and
 * bytes literals (b'...', taken raw). Anything else is refused with the line
 * number.
 *
 * The trie: nodes are numbered, node 0 is the root, and every edge
 * (parent, byte) -> child sits in one open-addressing hash table. That keeps a
 * 65k-token vocabulary in a few MB (a 256-way array per node, as the Python
 * code uses, would take hundreds of MB in C) while a step stays O(1).
 *
 * Encoding matches TRIE_TOKENIZER.encodeBytes: from each position walk the
 * trie as far as the bytes allow and emit the id of the deepest node passed
 * that ends a token; when two lines hold the same bytes, the later line's id
 * wins, as in the Python dict it builds.
 */
#include "data/tokenizer.h"
#include "common/st_err.h"
#include "common/st_fs.h"

#include <stdlib.h>
#include <string.h>

#define VOCAB_MAX_FILE_BYTES (64u << 20) /* the real file is ~1 MB */
#define TRIE_MAX_NODES (1u << 24)        /* node index shares a word with the byte */

struct tokenizer {
    int is_bytes;          /* 1: id = byte value */
    int vocab;             /* vocab size: 256 or 65536 */
    char *blob;            /* every token's bytes back to back */
    uint32_t *tok_off;     /* (vocab) offset of each id's bytes in blob */
    uint32_t *tok_len;     /* (vocab) byte count of each id, 0 = unused id */
    int32_t *node_id;      /* (n_nodes) token id that ends at this node, or -1 */
    uint32_t n_nodes;      /* trie nodes including the root */
    uint32_t cap_nodes;    /* allocated node_id entries */
    uint32_t *edge_key;    /* (edge_cap) parent << 8 | byte, or UINT32_MAX = empty */
    uint32_t *edge_child;  /* (edge_cap) child node of that edge */
    uint32_t edge_cap;     /* power of two */
    uint32_t n_edges;      /* edges in the table */
};

/* ---- trie ------------------------------------------------------------------ */

static uint32_t s_hash(uint32_t key)
{
    /* murmur3's finaliser: keys differ in few bits, so mix them well */
    key ^= key >> 16;
    key *= 0x85ebca6bu;
    key ^= key >> 13;
    key *= 0xc2b2ae35u;
    key ^= key >> 16;
    return key;
}

static int64_t s_child(const tokenizer_t *self, uint32_t node, uint8_t byte)
{
    uint32_t key = node << 8 | byte;
    uint32_t mask = self->edge_cap - 1;
    for (uint32_t i = s_hash(key) & mask;; i = (i + 1) & mask) {
        if (self->edge_key[i] == key) return self->edge_child[i];
        if (self->edge_key[i] == UINT32_MAX) return -1;
    }
}

static int s_edges_grow(tokenizer_t *self)
{
    uint32_t cap = self->edge_cap ? self->edge_cap * 2 : 1u << 16;
    uint32_t *keys = malloc((size_t)cap * sizeof *keys);
    uint32_t *kids = malloc((size_t)cap * sizeof *kids);
    if (!keys || !kids) {
        free(keys);
        free(kids);
        return -1;
    }
    memset(keys, 0xff, (size_t)cap * sizeof *keys);
    for (uint32_t j = 0; j < self->edge_cap; j++) {
        if (self->edge_key[j] == UINT32_MAX) continue;
        uint32_t i = s_hash(self->edge_key[j]) & (cap - 1);
        while (keys[i] != UINT32_MAX) i = (i + 1) & (cap - 1);
        keys[i] = self->edge_key[j];
        kids[i] = self->edge_child[j];
    }
    free(self->edge_key);
    free(self->edge_child);
    self->edge_key = keys;
    self->edge_child = kids;
    self->edge_cap = cap;
    return 0;
}

static int64_t s_new_node(tokenizer_t *self)
{
    if (self->n_nodes >= TRIE_MAX_NODES) return -1;
    if (self->n_nodes == self->cap_nodes) {
        uint32_t cap = self->cap_nodes ? self->cap_nodes * 2 : 1u << 16;
        int32_t *p = realloc(self->node_id, (size_t)cap * sizeof *p);
        if (!p) return -1;
        self->node_id = p;
        self->cap_nodes = cap;
    }
    self->node_id[self->n_nodes] = -1;
    return self->n_nodes++;
}

/* Adds a token's bytes under id; a later duplicate replaces the id. */
static int s_trie_add(tokenizer_t *self, const uint8_t *bytes, size_t len, int32_t id)
{
    uint32_t node = 0;
    for (size_t k = 0; k < len; k++) {
        int64_t child = s_child(self, node, bytes[k]);
        if (child < 0) {
            /* keep the load factor under one half so probes stay short */
            if ((self->n_edges + 1) * 2 > self->edge_cap && s_edges_grow(self) != 0) return -1;
            child = s_new_node(self);
            if (child < 0) return -1;
            uint32_t key = node << 8 | bytes[k];
            uint32_t mask = self->edge_cap - 1;
            uint32_t i = s_hash(key) & mask;
            while (self->edge_key[i] != UINT32_MAX) i = (i + 1) & mask;
            self->edge_key[i] = key;
            self->edge_child[i] = (uint32_t)child;
            self->n_edges++;
        }
        node = (uint32_t)child;
    }
    self->node_id[node] = id;
    return 0;
}

/* ---- Python literals --------------------------------------------------------- */

static int s_hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Appends code point cp as UTF-8; returns bytes written or -1 when it cannot
 * be encoded (a lone surrogate or beyond U+10FFFF, which Python's
 * str.encode("utf-8") also refuses). */
static int s_put_utf8(uint8_t *out, uint32_t cp)
{
    if (cp >= 0xd800 && cp <= 0xdfff) return -1;
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xc0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xe0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    if (cp <= 0x10ffff) {
        out[0] = (uint8_t)(0xf0 | cp >> 18);
        out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
        out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        out[3] = (uint8_t)(0x80 | (cp & 0x3f));
        return 4;
    }
    return -1;
}

/* Decodes one Python str or bytes literal s[0..n) into out (at least n bytes:
 * no escape makes its value longer than its source except \u/\U and octal
 * escapes, whose UTF-8 never exceeds the escape's own length). Returns the
 * byte count, or -1 with *why set. */
static long s_parse_literal(const char *s, size_t n, uint8_t *out, const char **why)
{
    size_t i = 0;
    int is_bytes = 0;
    if (i < n && (s[i] == 'b' || s[i] == 'B')) {
        is_bytes = 1;
        i++;
    } else if (i < n && (s[i] == 'u' || s[i] == 'U')) {
        i++;
    }
    if (i >= n || (s[i] != '\'' && s[i] != '"')) {
        *why = "expected a quoted Python str or bytes literal";
        return -1;
    }
    char quote = s[i++];
    if (n < i + 1 || s[n - 1] != quote) {
        *why = "the literal is not closed by its quote";
        return -1;
    }
    size_t end = n - 1;
    long len = 0;
    while (i < end) {
        unsigned char c = (unsigned char)s[i];
        if (c == (unsigned char)quote) {
            *why = "unescaped quote inside the literal";
            return -1;
        }
        if (c != '\\') {
            if (is_bytes && c >= 0x80) {
                *why = "bytes literal holds a non-ASCII character";
                return -1;
            }
            out[len++] = c;
            i++;
            continue;
        }
        if (i + 1 >= end) {
            *why = "the literal ends in a lone backslash";
            return -1;
        }
        char e = s[i + 1];
        i += 2;
        switch (e) {
        case '\\': out[len++] = '\\'; break;
        case '\'': out[len++] = '\''; break;
        case '"': out[len++] = '"'; break;
        case 'a': out[len++] = 7; break;
        case 'b': out[len++] = 8; break;
        case 'f': out[len++] = 12; break;
        case 'n': out[len++] = 10; break;
        case 'r': out[len++] = 13; break;
        case 't': out[len++] = 9; break;
        case 'v': out[len++] = 11; break;
        case 'x': {
            int hi = i < end ? s_hexval(s[i]) : -1;
            int lo = i + 1 < end ? s_hexval(s[i + 1]) : -1;
            if (hi < 0 || lo < 0) {
                *why = "\\x must be followed by two hex digits";
                return -1;
            }
            i += 2;
            uint32_t v = (uint32_t)(hi << 4 | lo);
            if (is_bytes) {
                out[len++] = (uint8_t)v;
            } else {
                len += s_put_utf8(out + len, v); /* a code point below 256 */
            }
            break;
        }
        case 'u':
        case 'U':
        case 'N':
            if (is_bytes) { /* not escapes in a bytes literal: kept as written */
                out[len++] = '\\';
                out[len++] = (uint8_t)e;
                break;
            }
            if (e == 'N') {
                *why = "\\N{...} named escapes are not supported";
                return -1;
            } else {
                int digits = e == 'u' ? 4 : 8;
                uint32_t cp = 0;
                for (int k = 0; k < digits; k++) {
                    int h = i < end ? s_hexval(s[i]) : -1;
                    if (h < 0) {
                        *why = e == 'u' ? "\\u must be followed by four hex digits"
                                        : "\\U must be followed by eight hex digits";
                        return -1;
                    }
                    cp = cp << 4 | (uint32_t)h;
                    i++;
                }
                int w = s_put_utf8(out + len, cp);
                if (w < 0) {
                    *why = "the literal holds a code point that UTF-8 cannot encode";
                    return -1;
                }
                len += w;
            }
            break;
        default:
            if (e >= '0' && e <= '7') {
                uint32_t v = (uint32_t)(e - '0');
                for (int k = 0; k < 2 && i < end && s[i] >= '0' && s[i] <= '7'; k++)
                    v = v * 8 + (uint32_t)(s[i++] - '0');
                if (is_bytes) {
                    if (v > 0xff) {
                        *why = "octal escape above \\377 in a bytes literal";
                        return -1;
                    }
                    out[len++] = (uint8_t)v;
                } else {
                    len += s_put_utf8(out + len, v);
                }
            } else {
                /* Python keeps unknown escapes as written, backslash included */
                out[len++] = '\\';
                i--;
            }
        }
    }
    return len;
}

/* ---- construction -------------------------------------------------------------- */

static tokenizer_t *s_alloc(int vocab)
{
    tokenizer_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->vocab = vocab;
    self->tok_off = calloc((size_t)vocab, sizeof *self->tok_off);
    self->tok_len = calloc((size_t)vocab, sizeof *self->tok_len);
    if (!self->tok_off || !self->tok_len || s_new_node(self) < 0 || s_edges_grow(self) != 0) {
        tokenizer_destroy(&self);
        return NULL;
    }
    return self;
}

tokenizer_t *tokenizer_new_bytes(void)
{
    tokenizer_t *self = s_alloc(256);
    if (!self) return NULL;
    self->is_bytes = 1;
    self->blob = malloc(256);
    if (!self->blob) {
        tokenizer_destroy(&self);
        return NULL;
    }
    for (int b = 0; b < 256; b++) {
        self->blob[b] = (char)b;
        self->tok_off[b] = (uint32_t)b;
        self->tok_len[b] = 1;
    }
    return self;
}

/* Parses an unsigned decimal field; -1 when it is not one. */
static long s_parse_uint(const char *s, size_t n)
{
    if (n == 0 || n > 9) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

tokenizer_t *tokenizer_new_world(const char *vocab_path, char *err)
{
    char *text = NULL;
    size_t text_len = 0;
    tokenizer_t *self = NULL;
    int rc = st_read_file(vocab_path, VOCAB_MAX_FILE_BYTES, &text, &text_len, err);
    if (rc != ST_OK) return NULL;

    self = s_alloc(TOKENIZER_WORLD_VOCAB);
    /* a token's bytes are never longer than its literal, so text_len bounds the blob */
    if (self) self->blob = malloc(text_len + 1);
    if (!self || !self->blob) {
        st_fail(err, ST_ENOMEM, "out of memory loading vocabulary '%s'", vocab_path);
        goto fail;
    }

    size_t used = 0;
    long lineno = 0, n_tokens = 0;
    const char *p = text, *stop = text + text_len;
    while (p < stop) {
        const char *nl = memchr(p, '\n', (size_t)(stop - p));
        const char *line = p, *eol = nl ? nl : stop;
        p = nl ? nl + 1 : stop;
        lineno++;
        size_t len = (size_t)(eol - line);
        if (len > 0 && line[len - 1] == '\r') len--;
        if (len == 0) continue; /* blank line */
        eol = line + len;
        const char *sp1 = memchr(line, ' ', len);
        const char *sp2 = line + len;
        while (sp2 > line && sp2[-1] != ' ') sp2--;
        sp2 = sp2 > line ? sp2 - 1 : NULL;
        if (!sp1 || sp2 == sp1) {
            st_fail(err, ST_EFORMAT, "vocabulary '%s' line %ld: expected '<id> <literal> <byte length>'",
                    vocab_path, lineno);
            goto fail;
        }
        long id = s_parse_uint(line, (size_t)(sp1 - line));
        long want = s_parse_uint(sp2 + 1, (size_t)(eol - sp2 - 1));
        if (id < 1 || id >= TOKENIZER_WORLD_VOCAB) {
            st_fail(err, ST_EFORMAT, "vocabulary '%s' line %ld: token id '%.*s' is not in 1..%d",
                    vocab_path, lineno, (int)(sp1 - line) > 20 ? 20 : (int)(sp1 - line), line,
                    TOKENIZER_WORLD_VOCAB - 1);
            goto fail;
        }
        if (want < 1) {
            st_fail(err, ST_EFORMAT, "vocabulary '%s' line %ld: the byte length is not a positive integer",
                    vocab_path, lineno);
            goto fail;
        }
        if (self->tok_len[id]) {
            st_fail(err, ST_EFORMAT, "vocabulary '%s' line %ld: token id %ld appears twice", vocab_path,
                    lineno, id);
            goto fail;
        }
        /* the literal sits between the first and the last space (eval strips blanks) */
        const char *lit = sp1 + 1, *lit_end = sp2;
        while (lit < lit_end && (*lit == ' ' || *lit == '\t')) lit++;
        while (lit_end > lit && (lit_end[-1] == ' ' || lit_end[-1] == '\t')) lit_end--;
        const char *why = NULL;
        long got = s_parse_literal(lit, (size_t)(lit_end - lit), (uint8_t *)self->blob + used, &why);
        if (got < 0) {
            st_fail(err, ST_EFORMAT, "vocabulary '%s' line %ld: %s", vocab_path, lineno, why);
            goto fail;
        }
        if (got != want) {
            st_fail(err, ST_EFORMAT, "vocabulary '%s' line %ld: the token has %ld bytes but the line says %ld",
                    vocab_path, lineno, got, want);
            goto fail;
        }
        self->tok_off[id] = (uint32_t)used;
        self->tok_len[id] = (uint32_t)got;
        if (s_trie_add(self, (const uint8_t *)self->blob + used, (size_t)got, (int32_t)id) != 0) {
            st_fail(err, ST_ENOMEM, "vocabulary '%s' line %ld: out of memory building the trie", vocab_path,
                    lineno);
            goto fail;
        }
        used += (size_t)got;
        n_tokens++;
    }
    if (n_tokens == 0) {
        st_fail(err, ST_EFORMAT, "vocabulary '%s' holds no tokens", vocab_path);
        goto fail;
    }
    free(text);
    return self;
fail:
    free(text);
    tokenizer_destroy(&self);
    return NULL;
}

tokenizer_t *tokenizer_new(const char *spec, char *err)
{
    if (strcmp(spec, "bytes") == 0) {
        tokenizer_t *self = tokenizer_new_bytes();
        if (!self) st_fail(err, ST_ENOMEM, "out of memory");
        return self;
    }
    return tokenizer_new_world(spec, err);
}

void tokenizer_destroy(tokenizer_t **self_p)
{
    if (!self_p || !*self_p) return;
    tokenizer_t *self = *self_p;
    free(self->blob);
    free(self->tok_off);
    free(self->tok_len);
    free(self->node_id);
    free(self->edge_key);
    free(self->edge_child);
    free(self);
    *self_p = NULL;
}

/* ---- encode / decode ----------------------------------------------------------- */

int tokenizer_encode(const tokenizer_t *self, const char *bytes, size_t len, int32_t **ids_out,
                     size_t *n_out, char *err)
{
    *ids_out = NULL;
    *n_out = 0;
    /* never more ids than bytes; +1 so that len 0 still allocates */
    int32_t *ids = malloc((len + 1) * sizeof *ids);
    if (!ids) return st_fail(err, ST_ENOMEM, "out of memory encoding %zu bytes", len);
    const uint8_t *b = (const uint8_t *)bytes;
    size_t n = 0;
    if (self->is_bytes) {
        for (size_t i = 0; i < len; i++) ids[i] = b[i];
        n = len;
    } else {
        size_t pos = 0;
        while (pos < len) {
            uint32_t node = 0;
            size_t best_len = 0;
            int32_t best_id = -1;
            for (size_t i = pos; i < len; i++) {
                int64_t child = s_child(self, node, b[i]);
                if (child < 0) break;
                node = (uint32_t)child;
                if (self->node_id[node] >= 0) {
                    best_id = self->node_id[node];
                    best_len = i + 1 - pos;
                }
            }
            if (best_id < 0) {
                free(ids);
                return st_fail(err, ST_EINVAL, "byte 0x%02x at offset %zu has no token in the vocabulary",
                               b[pos], pos);
            }
            ids[n++] = best_id;
            pos += best_len;
        }
    }
    *ids_out = ids;
    *n_out = n;
    return ST_OK;
}

int tokenizer_decode(const tokenizer_t *self, const int32_t *ids, size_t n, char **bytes_out,
                     size_t *len_out, char *err)
{
    *bytes_out = NULL;
    *len_out = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        /* World's id 0 is the document separator: valid, and no bytes */
        if (id < 0 || id >= self->vocab || (id != 0 && self->tok_len[id] == 0)) {
            return st_fail(err, ST_EINVAL, "token id %d at position %zu is not in the vocabulary", (int)id, i);
        }
        total += self->tok_len[id];
    }
    char *out = malloc(total + 1);
    if (!out) return st_fail(err, ST_ENOMEM, "out of memory decoding %zu tokens", n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t l = self->tok_len[ids[i]];
        memcpy(out + k, self->blob + self->tok_off[ids[i]], l);
        k += l;
    }
    out[k] = 0;
    *bytes_out = out;
    *len_out = k;
    return ST_OK;
}

int tokenizer_vocab_size(const tokenizer_t *self)
{
    return self->vocab;
}

int tokenizer_is_bytes(const tokenizer_t *self)
{
    return self->is_bytes;
}

const char *tokenizer_token(const tokenizer_t *self, int32_t id, size_t *len_out)
{
    *len_out = 0;
    if (id < 0 || id >= self->vocab || self->tok_len[id] == 0) return NULL;
    *len_out = self->tok_len[id];
    return self->blob + self->tok_off[id];
}
