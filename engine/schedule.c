/*
 * schedule.c - linear warmup then cosine decay (see schedule.h).
 */
#include "engine/schedule.h"

#include <math.h>

double schedule_lr(const schedule_t *s, int64_t step)
{
    if (step < 0) step = 0;
    int64_t warm = s->warmup_steps > 0 ? s->warmup_steps : 0;
    if (warm > s->steps) warm = s->steps;
    if (step < warm) return s->lr_init * (double)(step + 1) / (double)warm;
    /* Cosine over the steps after warmup: the first of them runs at lr_init,
     * the last (steps - 1) at lr_final. */
    int64_t span = s->steps - warm - 1;
    if (span <= 0) return s->lr_init; /* a single step after warmup */
    double p = (double)(step - warm) / (double)span;
    if (p > 1) p = 1;
    return s->lr_final + 0.5 * (s->lr_init - s->lr_final) * (1.0 + cos(M_PI * p));
}
