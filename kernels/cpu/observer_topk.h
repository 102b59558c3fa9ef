/*
 * observer_topk.h - the observer objective of SPEC section 4 against a
 * teacher known only by its top-k logits per position (computed ahead of
 * time, engine/teacher_cache.h), fused with the head like observer.h:
 *
 *   p_i   = softmax over the k kept ids of (teacher_i / tau)     (renormalised)
 *   row loss = alpha * CE(student, target)
 *            + (1 - alpha) * tau^2 * sum_i p_i (log p_i - log softmax(student / tau)[id_i])
 *   d row loss / d student_v = alpha (softmax(student)_v - onehot(target)_v)
 *                            + (1 - alpha) * tau * (softmax(student / tau)_v - p(v))
 * with p(v) = p_i when v = id_i and 0 for every id outside the top-k.
 *
 * Tail treatment: the teacher's mass outside its top-k is dropped and the
 * kept k are renormalised, i.e. the teacher is taken to put probability 0 on
 * the tail. The student's log-softmax is over the full vocabulary, so the
 * student's own tail mass is pushed down (its gradient is tau * q_v there).
 * With k = V this is exactly observer_head_cpu's objective. Implemented in
 * observer.c beside it (one row pass each, one shared head loop).
 *
 * Shapes: x (R, C); head (V, C); tk_val (R, K) the teacher's kept logits,
 * tk_id (R, K) int32 their ids (rows without a target are not read);
 * targets (R) int32, -1 = no loss; logits_out (R, V) optional; dx (R, C)
 * overwritten with d loss_sum / dx, or NULL for forward only; scratch holds
 * chunk * V floats. Ids outside [0, V) are skipped (the engine checks them).
 */
#ifndef ST_KERNELS_CPU_OBSERVER_TOPK_H
#define ST_KERNELS_CPU_OBSERVER_TOPK_H

#include "kernels/cpu/observer.h"

#include <stdint.h>

/* One row: CE and top-k KL of student logits s (V) against the target and
 * the teacher's K kept logits tv with ids ti; ds (V), when not NULL, gets the
 * gradient of alpha CE + (1 - alpha) tau^2 KL. ds may alias s. */
void observer_topk_row_cpu(int V, int K, const float *s, const float *tv, const int32_t *ti, int32_t target,
                           float alpha, float tau, double *ce, double *kl, float *ds);

void observer_topk_head_cpu(int R, int C, int V, int K, const float *x, const float *head, const float *tk_val,
                            const int32_t *tk_id, const int32_t *targets, float alpha, float tau,
                            float *logits_out, float *dx, float *scratch, int chunk, observer_result_t *res);

#endif
