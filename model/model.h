/*
 * model.h - an RWKV-7 model in memory: configuration and frozen fp32 weights.
 *
 * The configuration is inferred from tensor shapes (SPEC section 3; head size
 * is always 64): n_embd from emb.weight, vocab from head.weight, n_layer from
 * the highest block index, n_head = n_embd / 64, the four LoRA widths from
 * w1/a1/v1/g1 and the channel-mix width from ffn.key.weight.
 *
 * Weight layouts are the official state dict's (see shared/fixtures/README.md):
 * nn.Linear weights are [out, in]; LoRA matrices w1,a1,v1,g1 are [C, D] and
 * w2,a2,v2,g2 are [D, C], applied as x @ w1; vectors x_*, w0, a0, v0, k_k, k_a
 * are [C]; r_k is [H, N]. Layer 0's v0/v1/v2 are never used and may be NULL
 * (released checkpoints omit them); ln0 exists only in layer 0.
 *
 * All weights live in one allocation (the arena), carved into the pointers
 * below, so that a backend can upload or convert them in one pass.
 */
#ifndef ST_MODEL_H
#define ST_MODEL_H

#include "model/tensorfile.h"

#include <stddef.h>
#include <stdint.h>

#define RWKV_HEAD_SIZE 64

typedef struct {
    int n_layer;  /* L */
    int n_embd;   /* C */
    int n_head;   /* H = C / 64 */
    int head_size;/* N = 64 */
    int vocab;    /* V */
    int ffn_dim;  /* F, usually 4C */
    int d_decay;  /* LoRA width of w1/w2 */
    int d_aaa;    /* LoRA width of a1/a2 */
    int d_mv;     /* LoRA width of v1/v2 */
    int d_gate;   /* LoRA width of g1/g2 */
} rwkv_config_t;

typedef struct {
    float *ln0_w, *ln0_b;          /* (C) layer 0 only, else NULL */
    float *ln1_w, *ln1_b;          /* (C) */
    float *ln2_w, *ln2_b;          /* (C) */
    float *x_r, *x_w, *x_k, *x_v, *x_a, *x_g; /* (C) token-shift lerps */
    float *w0;                     /* (C) */
    float *w1;                     /* (C, Dw) */
    float *w2;                     /* (Dw, C) */
    float *a0;                     /* (C) */
    float *a1;                     /* (C, Da) */
    float *a2;                     /* (Da, C) */
    float *v0;                     /* (C) NULL in layer 0 */
    float *v1;                     /* (C, Dv) NULL in layer 0 */
    float *v2;                     /* (Dv, C) NULL in layer 0 */
    float *g1;                     /* (C, Dg) */
    float *g2;                     /* (Dg, C) */
    float *k_k, *k_a;              /* (C) */
    float *r_k;                    /* (H, N) */
    float *receptance;             /* (C, C) [out, in] */
    float *key;                    /* (C, C) */
    float *value;                  /* (C, C) */
    float *output;                 /* (C, C) */
    float *ln_x_w, *ln_x_b;        /* (C) GroupNorm, eps 64e-5 */
    float *ffn_x_k;                /* (C) */
    float *ffn_key;                /* (F, C) */
    float *ffn_value;              /* (C, F) */
} rwkv_layer_t;

typedef struct {
    rwkv_config_t cfg;
    float *emb;                    /* (V, C) */
    float *ln_out_w, *ln_out_b;    /* (C) */
    float *head;                   /* (V, C) */
    rwkv_layer_t *layers;          /* n_layer entries */
    char sha256[65];               /* identity: sha256 of the model file, hex */
    char *path;                    /* file it was loaded from */
    float *arena;                  /* the one allocation behind every pointer */
    size_t arena_floats;           /* its size in floats */
    int source_dtype;              /* tf_dtype_t of most weights in the file */
} rwkv_model_t;

/* Loads a model file in any supported format (see tensorfile.h), infers the
 * configuration, converts weights to fp32 and hashes the file. Returns NULL and
 * fills err on failure: missing tensors and inconsistent shapes name the
 * tensor. */
rwkv_model_t *rwkv_model_load(const char *path, char *err);

/* Builds a random model with the official initialisation's scales, for
 * benchmarks, tests and the demo. Deterministic in seed. */
rwkv_model_t *rwkv_model_new_random(const rwkv_config_t *cfg, uint64_t seed, char *err);

void rwkv_model_destroy(rwkv_model_t **self_p);

/* The configuration of the model in an open tensor file, from tensor shapes
 * alone (no weights are read): cheap enough for validating a job. Fails with
 * a sentence naming the tensor that is missing or has an unusable shape. */
int rwkv_config_from_tensorfile(tensorfile_t *tf, rwkv_config_t *cfg, char *err);

/* Number of frozen parameters (P, for the 4P FLOP/token count). */
int64_t rwkv_model_param_count(const rwkv_model_t *self);

/* Elements of one layer's initial WKV state: H * N * N. */
static inline size_t rwkv_state_layer_size(const rwkv_config_t *c)
{
    return (size_t)c->n_head * c->head_size * c->head_size;
}

#endif
