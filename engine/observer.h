/*
 * observer.h - the frozen teacher of the observer objective (SPEC section 4):
 * a second RWKV-7 model with the same vocabulary, on its own engine, starting
 * from its own fixed state (zeros, or a state file: the fixtures hold no
 * larger model, so a teacher can be the same model holding a state tuned on
 * more data), whose full logits feed the student's loss on the fly
 * (engine_batch_t.teacher_logits; kernels/cpu/observer.h has the math).
 *
 * Two ways to use it (docs/methods.md): with observer.top_k 0 the full
 * teacher rows are computed on the fly for every micro-batch (the KL is
 * exact; one teacher forward pass per micro-batch and (B, T, V) floats);
 * with top_k > 0 (the SPEC's default, 64) the teacher runs once over the
 * training data at job start and its top-k per position is cached
 * (engine/teacher_cache.h), so training runs no teacher at all.
 */
#ifndef ST_ENGINE_OBSERVER_H
#define ST_ENGINE_OBSERVER_H

#include "engine/engine.h"

typedef struct observer observer_t;

/* Loads the teacher model (and state_path when not NULL) and plans an engine
 * for max_batch x max_ctx. Fails (NULL, err) when the files cannot be read,
 * the state does not fit the teacher, or the vocabulary differs from
 * student_vocab. */
observer_t *observer_new(const char *model_path, const char *state_path, const engine_opts_t *opts,
                         int student_vocab, char *err);
void observer_destroy(observer_t **self_p);

/* The teacher's vocabulary (= the student's). */
int observer_vocab(const observer_t *self);

/* Runs the teacher forward on tokens (B, T); *logits (B, T, V) is borrowed
 * and valid until the next call. The host buffer behind it (max_batch x
 * max_ctx x V floats) is allocated on the first call, so a teacher used only
 * through observer_forward_device never holds it. */
int observer_logits(observer_t *self, const int32_t *tokens, int B, int T, const float **logits, char *err);

/* The same on the CUDA backend without the logits leaving the GPU: runs the
 * teacher forward on tokens (B, T) up to its head input, kept on the device
 * (engine_teacher_forward), and sets *teacher to the engine a student batch
 * names in engine_batch_t.teacher; valid until the next call. */
int observer_forward_device(observer_t *self, const int32_t *tokens, int B, int T, const engine_t **teacher,
                            char *err);

#endif
