/*
 * adam.c - Adam on a flat fp32 vector and global-norm clipping (see adam.h).
 */
#include "engine/adam.h"

#include "common/st_err.h"

#include <math.h>
#include <stdlib.h>

struct adam {
    size_t n;        /* number of parameters */
    double beta1;    /* first-moment decay */
    double beta2;    /* second-moment decay */
    double eps;      /* added to the denominator */
    int64_t t;       /* steps taken so far */
    float *m;        /* (n) first moment */
    float *v;        /* (n) second moment */
};

int adam_check_settings(double beta1, double beta2, double eps, char *err)
{
    if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1))
        return st_fail(err, ST_EINVAL, "adam: beta1 and beta2 must be in [0, 1), got %g and %g", beta1, beta2);
    if (!(eps > 0) || !isfinite(eps))
        return st_fail(err, ST_EINVAL, "adam: eps must be a positive number, got %g", eps);
    return ST_OK;
}

adam_t *adam_new(size_t n, double beta1, double beta2, double eps, char *err)
{
    if (n == 0) {
        st_fail(err, ST_EINVAL, "adam: the parameter vector is empty");
        return NULL;
    }
    if (adam_check_settings(beta1, beta2, eps, err) != ST_OK) return NULL;
    adam_t *self = calloc(1, sizeof *self);
    if (!self) goto oom;
    self->n = n;
    self->beta1 = beta1;
    self->beta2 = beta2;
    self->eps = eps;
    self->m = calloc(n, sizeof(float));
    self->v = calloc(n, sizeof(float));
    if (!self->m || !self->v) goto oom;
    return self;
oom:
    adam_destroy(&self);
    st_fail(err, ST_ENOMEM, "adam: out of memory for %zu parameters", n);
    return NULL;
}

void adam_destroy(adam_t **self_p)
{
    if (!self_p || !*self_p) return;
    adam_t *self = *self_p;
    free(self->m);
    free(self->v);
    free(self);
    *self_p = NULL;
}

void adam_step(adam_t *self, float *param, const float *grad, double lr)
{
    self->t++;
    const double b1 = self->beta1, b2 = self->beta2;
    const double c1 = 1.0 - pow(b1, (double)self->t); /* bias corrections */
    const double c2 = 1.0 - pow(b2, (double)self->t);
    for (size_t i = 0; i < self->n; i++) {
        double g = grad[i];
        double m = b1 * self->m[i] + (1.0 - b1) * g;
        double v = b2 * self->v[i] + (1.0 - b2) * g * g;
        self->m[i] = (float)m;
        self->v[i] = (float)v;
        param[i] = (float)(param[i] - lr * (m / c1) / (sqrt(v / c2) + self->eps));
    }
}

size_t adam_size(const adam_t *self) { return self->n; }
float *adam_m(adam_t *self) { return self->m; }
float *adam_v(adam_t *self) { return self->v; }
int64_t adam_t_count(const adam_t *self) { return self->t; }
void adam_set_t_count(adam_t *self, int64_t t) { self->t = t; }

double adam_clip_grad_norm(float *grad, size_t n, double max_norm)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)grad[i] * grad[i];
    double norm = sqrt(ss);
    if (!isfinite(norm)) return norm;
    if (max_norm > 0 && norm > max_norm) {
        /* torch adds 1e-6 to the norm here; so do we, so that clipped runs
         * match a PyTorch reference step for step. */
        double scale = max_norm / (norm + 1e-6);
        for (size_t i = 0; i < n; i++) grad[i] = (float)(grad[i] * scale);
    }
    return norm;
}
