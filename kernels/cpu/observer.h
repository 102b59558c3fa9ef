/*
 * observer.h - the observer (teacher-student) objective of SPEC section 4,
 * fused with the language-model head like head.h:
 *
 *   row loss = alpha * CE(student, target)
 *            + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))
 *   d row loss / d student = alpha (softmax(student) - onehot(target))
 *                          + (1 - alpha) * T * (softmax(student / T) - softmax(teacher / T))
 *
 * over the rows that have a target (target >= 0), the positions plain tuning
 * trains on. The teacher's logits are full rows (V), computed on the fly by a
 * second engine on the frozen teacher; with alpha = 1 every number equals
 * head_ce_cpu's. T is the temperature, written tau below to keep T for time.
 *
 * Shapes: x (R, C) is ln_out's output; head (V, C); teacher (R, V); targets (R)
 * int32, -1 = no loss; logits_out (R, V) optional; dx (R, C) overwritten with
 * d loss_sum / dx, or NULL for forward only; scratch holds chunk * V floats.
 */
#ifndef ST_KERNELS_CPU_OBSERVER_H
#define ST_KERNELS_CPU_OBSERVER_H

#include <stdint.h>

typedef struct {
    double loss_sum;   /* summed objective (alpha CE + (1 - alpha) tau^2 KL) */
    double ce_sum;     /* summed CE alone */
    double kl_sum;     /* summed KL alone (not scaled) */
    int64_t n_targets; /* rows with target >= 0 */
    int64_t n_correct; /* of those, where argmax(student) == target */
} observer_result_t;

/* One row: returns the CE and KL of student logits s (V) against the target
 * and the teacher logits t (V); ds (V), when not NULL, receives the gradient
 * of alpha CE + (1 - alpha) tau^2 KL with respect to s. ds may alias s. */
void observer_row_cpu(int V, const float *s, const float *t, int32_t target, float alpha, float tau,
                      double *ce, double *kl, float *ds);

void observer_head_cpu(int R, int C, int V, const float *x, const float *head, const float *teacher,
                       const int32_t *targets, float alpha, float tau, float *logits_out, float *dx,
                       float *scratch, int chunk, observer_result_t *res);

#endif
