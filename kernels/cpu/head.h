/*
 * head.h - the language-model head and softmax cross-entropy, fused and
 * chunked over rows so that the (B * T, V) fp32 logits never need to exist
 * at once (at vocab 65536 they would dwarf everything else):
 *
 *   logits = x head^T;  loss = sum over rows with target >= 0 of
 *   logsumexp(logits) - logits[target];  dlogits = softmax - onehot
 *
 * Shapes: x (R, C) is ln_out's output; head (V, C); targets (R) int32 with
 * -1 = no loss, or NULL (no loss anywhere); logits_out (R, V) optional;
 * dx (R, C) overwritten with d loss_sum / dx, or NULL for forward only;
 * scratch holds chunk * V floats.
 */
#ifndef ST_KERNELS_CPU_HEAD_H
#define ST_KERNELS_CPU_HEAD_H

#include <stdint.h>

typedef struct {
    double loss_sum;   /* summed CE over targets >= 0 */
    int64_t n_targets; /* targets >= 0 */
    int64_t n_correct; /* of those, where argmax(logits) == target */
} head_result_t;

void head_ce_cpu(int R, int C, int V, const float *x, const float *head, const int32_t *targets,
                 float *logits_out, float *dx, float *scratch, int chunk, head_result_t *res);

#endif
