/*
 * adam.h - the Adam optimizer on one flat fp32 parameter vector, and global
 * gradient-norm clipping (SPEC section 2.2: beta1 0.9, beta2 0.99, eps 1e-8).
 *
 * State tuning has one parameter tensor (every layer's initial state, or the
 * A factor of S0 = A R under DBP), so the optimizer works on a single vector
 * of n floats. The moments are kept in fp32, as PyTorch's Adam does; the step
 * itself is computed in double so that the result does not depend on the
 * compiler's contraction choices more than necessary.
 *
 * Update (Kingma & Ba, with bias correction; t counts from 1):
 *   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
 *   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 */
#ifndef ST_ENGINE_ADAM_H
#define ST_ENGINE_ADAM_H

#include <stddef.h>
#include <stdint.h>

typedef struct adam adam_t;

/* An optimizer for n parameters with zeroed moments and t = 0. Returns NULL
 * and fills err when the hyper-parameters are out of range (betas in [0, 1),
 * eps > 0) or memory runs out. */
adam_t *adam_new(size_t n, double beta1, double beta2, double eps, char *err);
/* ST_OK when beta1, beta2 lie in [0, 1) and eps is a positive finite
 * number; else ST_EINVAL and one sentence (every Adam, CPU or CUDA, checks
 * its settings here). */
int adam_check_settings(double beta1, double beta2, double eps, char *err);
void adam_destroy(adam_t **self_p);

/* One step: t += 1, then the update above with learning rate lr on param
 * (n floats) from grad (n floats). */
void adam_step(adam_t *self, float *param, const float *grad, double lr);

/* Accessors for checkpoints: the moments (n floats each, owned by the
 * optimizer, writable so that a checkpoint can be restored into them) and the
 * step counter. */
size_t adam_size(const adam_t *self);
float *adam_m(adam_t *self);
float *adam_v(adam_t *self);
int64_t adam_t_count(const adam_t *self);
void adam_set_t_count(adam_t *self, int64_t t);

/* Global-norm clipping (torch.nn.utils.clip_grad_norm_): when the L2 norm of
 * grad exceeds max_norm > 0, scales grad by max_norm / norm. max_norm <= 0
 * disables clipping. Returns the norm before clipping (NaN or inf when the
 * gradient holds them; the caller fails the job on that). */
double adam_clip_grad_norm(float *grad, size_t n, double max_norm);

#endif
