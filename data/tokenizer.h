/*
 * tokenizer.h - text to token ids and back (SPEC section 3).
 *
 * Two tokenizers:
 *   - the RWKV "World" vocabulary (rwkv_vocab_v20230424.txt: lines
 *     `<id> <python literal> <byte length>`, ids 1..65529, vocab size 65536,
 *     id 0 the document separator). Encoding is greedy longest match over the
 *     UTF-8 bytes with a trie, exactly as the official rwkv_tokenizer.py
 *     (TRIE_TOKENIZER) does: at each position take the longest vocabulary
 *     entry that is a prefix of the remaining bytes. Every single byte is in
 *     the vocabulary, so any byte string encodes.
 *   - plain bytes for vocab-256 models: id = byte value.
 *
 * decode(encode(x)) == x for every byte string x. Decoding id 0 (the document
 * separator) gives no bytes; an id outside the vocabulary is refused.
 */
#ifndef ST_TOKENIZER_H
#define ST_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define TOKENIZER_WORLD_VOCAB 65536

typedef struct tokenizer tokenizer_t;

/* Loads a World vocabulary file. Returns NULL and fills err on failure; a
 * malformed line is named by its line number. */
tokenizer_t *tokenizer_new_world(const char *vocab_path, char *err);

/* The byte tokenizer (vocab 256). Returns NULL only when out of memory. */
tokenizer_t *tokenizer_new_bytes(void);

/* "bytes" gives the byte tokenizer, anything else is a vocabulary path. */
tokenizer_t *tokenizer_new(const char *spec, char *err);

/* Accepts NULL; sets *self_p to NULL. */
void tokenizer_destroy(tokenizer_t **self_p);

/* Encodes len bytes. *ids_out is malloc'd (caller frees; never NULL on
 * success, even for len 0) and holds *n_out ids. */
int tokenizer_encode(const tokenizer_t *self, const char *bytes, size_t len,
                     int32_t **ids_out, size_t *n_out, char *err);

/* Decodes n ids into a malloc'd, NUL-terminated buffer of *len_out bytes
 * (caller frees). An id outside the vocabulary gives ST_EINVAL. */
int tokenizer_decode(const tokenizer_t *self, const int32_t *ids, size_t n,
                     char **bytes_out, size_t *len_out, char *err);

/* 65536 for World, 256 for bytes: the model's head must have this many rows. */
int tokenizer_vocab_size(const tokenizer_t *self);

/* 1 for the byte tokenizer, 0 for World. */
int tokenizer_is_bytes(const tokenizer_t *self);

/* The bytes of one token (borrowed) and their count, or NULL for an id with
 * no bytes (0, or unused). */
const char *tokenizer_token(const tokenizer_t *self, int32_t id, size_t *len_out);

#endif
