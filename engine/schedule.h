/*
 * schedule.h - the learning-rate schedule of a tuning job (SPEC section 2.2).
 *
 * Linear warmup from lr_init / warmup_steps to lr_init over the first
 * warmup_steps steps, then cosine decay from lr_init to lr_final over the
 * remaining steps, so the last step runs at exactly lr_final. Steps count
 * from 0. State tuning wants a very high initial rate (1.0) that decays by
 * two orders of magnitude; the warmup keeps the first, largest gradients of a
 * zero state from throwing it far off.
 */
#ifndef ST_ENGINE_SCHEDULE_H
#define ST_ENGINE_SCHEDULE_H

#include <stdint.h>

typedef struct {
    double lr_init;      /* peak rate, reached at the end of warmup */
    double lr_final;     /* rate of the last step */
    int64_t warmup_steps;/* 0 = no warmup */
    int64_t steps;       /* total steps of the job */
} schedule_t;

/* The learning rate of step (0-based). Steps past the end get lr_final. */
double schedule_lr(const schedule_t *s, int64_t step);

#endif
