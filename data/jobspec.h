/*
 * jobspec.h - the job file of SPEC section 2.2: parsed, validated, with every
 * default filled in, and written back as canonical JSON.
 *
 * The coordinator parses a submitted job file, stores jobspec_to_json() of
 * it (absolute paths, every key present) and sends that text to the worker
 * group, which parses it again: parse(to_json(x)) == x. Validation refuses
 * unknown keys, wrong types and impossible values with one sentence that
 * names the key ("job file 'x.json': 'ctx_len' must be a positive integer,
 * got -3"). jobspec_check_inputs then checks, still before any GPU time, that
 * the model, tokenizer and data files exist and agree with each other.
 *
 * Paths: relative paths in the file are relative to the job file's folder
 * and are stored absolute. "model" (and "observer.teacher") may instead be
 * the name of a registered model: a string with no '/' that names no file
 * beside the job file. Then model_path is NULL and model_name holds the name;
 * the coordinator resolves it with jobspec_set_model.
 *
 * The record is a plain struct: its fields are what the worker reads. Strings
 * are owned by the record; jobspec_destroy frees them.
 */
#ifndef ST_JOBSPEC_H
#define ST_JOBSPEC_H

#include <stdint.h>

#define JOBSPEC_NAME_MAX 64

typedef enum { JOB_TRUNCATE = 0, JOB_SPLIT = 1 } job_long_t;

typedef struct {
    char *name;          /* state name in the registry, [A-Za-z0-9._-]{1,64} */
    char *model_path;    /* absolute model file, or NULL when model_name is set */
    char *model_name;    /* registered model name, or NULL */
    char *tokenizer;     /* "bytes", an absolute vocabulary path, or NULL: "bytes" if the
                            model's vocab is 256 (resolved by jobspec_set_model) */
    char *train;         /* absolute JSONL path */
    char *eval;          /* absolute JSONL path, or NULL: hold out eval_fraction of train */
    int ctx_len;         /* tokens a sample trains on (longer samples: see truncate) */
    int micro_batch;     /* samples per forward/backward on one rank */
    int global_batch;    /* samples per optimizer step over all ranks */
    int64_t steps;       /* optimizer steps, or 0 when epochs is set */
    int64_t epochs;      /* passes over train, or 0 when steps is set; 1 when the
                            job gives neither */
    double lr_init;      /* Adam learning rate after warmup */
    double lr_final;     /* learning rate at the last step (<= lr_init) */
    int warmup_steps;    /* linear warmup from 0 */
    double grad_clip;    /* global gradient norm clip, 0 = off */
    double beta1, beta2, eps; /* Adam */
    double eval_fraction;/* held-out share of train when eval is NULL, in (0,1) */
    struct {
        int enabled;     /* parametrise S0 = A R (SPEC section 4) */
        double lr;       /* eta_R */
        double kappa;    /* weight of the diagonal term */
        double sample_fraction; /* share of sequences feeding Q, in (0,1] */
    } dbp;
    struct {
        char *teacher_path; /* absolute teacher model, or NULL */
        char *teacher_name; /* registered teacher model, or NULL */
        double alpha;       /* weight of CE against targets, in [0,1] */
        double temperature; /* > 0 */
        int top_k;          /* teacher logits kept per position (ahead of time); 0 = full rows on the fly */
        char *teacher_state;/* absolute state file the teacher starts from, or NULL = zeros */
    } observer;
    struct {
        int features;    /* M support vectors, 0 = off */
        double gamma;    /* RBF width, > 0 */
        char *support;   /* "kmeans" or "random" */
    } kernel_state;
    int eval_every;      /* steps between evaluations, 0 = only before and after */
    int checkpoint_every;/* steps between checkpoints, 0 = none */
    uint64_t seed;       /* data order, held-out split, DBP sampling */
    int priority;        /* higher runs first */
    int gpus;            /* ranks of the worker group */
    char *backend;       /* "cpu" or "cuda" */
    char *precision;     /* "fp32" or "bf16" */
    char *alias;         /* alias set on the new state version */
    job_long_t truncate; /* samples longer than ctx_len + 1 tokens: cut, or split in pieces */
} jobspec_t;

/* Parses and validates a job file. On success *out is a new record (caller
 * destroys). On failure *out is NULL and err names the file and the key. */
int jobspec_parse_file(const char *path, jobspec_t **out, char *err);

/* The same from text. base is the job file's path or its folder (relative
 * paths resolve against it; NULL = the current directory). */
int jobspec_parse_string(const char *json, const char *base, jobspec_t **out, char *err);

/* Canonical JSON of the record: every key, defaults filled, absolute paths,
 * keys in a fixed order. Caller frees; NULL only when out of memory. */
char *jobspec_to_json(const jobspec_t *self);

/* Sets the model file (the coordinator's resolution of model_name) and, when
 * the job gave no tokenizer, picks "bytes" for a vocab-256 model. Refuses a
 * missing tokenizer for any other vocab. model_path NULL keeps the current
 * one. */
int jobspec_set_model(jobspec_t *self, const char *model_path, char *err);

/* Everything checkable before GPU time: the model opens and its vocab agrees
 * with the tokenizer (bytes: 256, World: 65536), the teacher's too, and the
 * train/eval data parse (bad lines named by number) and yield samples. */
int jobspec_check_inputs(const jobspec_t *self, char *err);

/* jobspec_check_inputs, and on success a JSON report for the registry
 * (caller frees; report_out may be NULL):
 *   {"model_vocab": V, "tokenizer": "bytes" | path,
 *    "datasets": [{"role": "train" | "eval", "path": ..., "sha256": ...,
 *                  "held_out": bool, "counts": {"lines", "samples", "tokens",
 *                  "targets", "truncated", "split", "dropped", "max_len"}}]}
 * held_out marks an eval set taken from the train file (same path and hash;
 * the counts are each side's). */
int jobspec_check_inputs_report(const jobspec_t *self, char **report_out, char *err);

/* Vocabulary size of a model file (its whole configuration is checked). */
int jobspec_model_vocab(const char *model_path, int *vocab_out, char *err);

/* 1 when s is a valid registry name: [A-Za-z0-9._-]{1,64}. */
int jobspec_valid_name(const char *s);

/* Deep equality of two records (for tests and for resubmission checks). */
int jobspec_equal(const jobspec_t *a, const jobspec_t *b);

/* Accepts NULL; sets *self_p to NULL. */
void jobspec_destroy(jobspec_t **self_p);

#endif
