/*
 * observer.c - the observer objective fused with the head (see observer.h):
 * each chunk of rows goes through sgemm, then a row pass computes the CE, the
 * tempered KL against the teacher's row (log-sum-exps in double) and turns
 * the row into d(objective)/d(logits) in place; one more sgemm gives dx.
 * Out-of-range targets count as no loss, as in head.c.
 *
 * The top-k form (observer_topk.h) lives here too: the same row pass over the
 * teacher's kept ids and the same head loop, so the two agree to rounding at
 * k = V.
 */
#include "kernels/cpu/observer.h"
#include "kernels/cpu/observer_topk.h"

#include "kernels/cpu/matmul.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

/* log-sum-exp of x / tau in double, and the max of x */
static double s_lse(int V, const float *x, double tau, float *mx_out)
{
    float mx = x[0];
    for (int v = 1; v < V; v++)
        if (x[v] > mx) mx = x[v];
    double se = 0;
    for (int v = 0; v < V; v++) se += exp(((double)x[v] - mx) / tau);
    *mx_out = mx;
    return mx / tau + log(se);
}

void observer_row_cpu(int V, const float *s, const float *t, int32_t target, float alpha, float tau,
                      double *ce, double *kl, float *ds)
{
    float ms, mt, ms1;
    double lse1 = s_lse(V, s, 1.0, &ms1);   /* untempered student, for the CE */
    double lses = s_lse(V, s, tau, &ms);    /* tempered student */
    double lset = s_lse(V, t, tau, &mt);    /* tempered teacher */
    *ce = lse1 - s[target];
    double k = 0;
    for (int v = 0; v < V; v++) {
        double lpt = t[v] / (double)tau - lset, lps = s[v] / (double)tau - lses;
        k += exp(lpt) * (lpt - lps);
    }
    *kl = k;
    if (!ds) return;
    double a = alpha, b = (1.0 - alpha) * tau;
    for (int v = 0; v < V; v++) {
        double p1 = exp((double)s[v] - lse1);
        double qs = exp(s[v] / (double)tau - lses), pt = exp(t[v] / (double)tau - lset);
        ds[v] = (float)(a * (p1 - (v == target)) + b * (qs - pt));
    }
}

void observer_topk_row_cpu(int V, int K, const float *s, const float *tv, const int32_t *ti, int32_t target,
                           float alpha, float tau, double *ce, double *kl, float *ds)
{
    float m_;
    double lse1 = s_lse(V, s, 1.0, &m_); /* untempered student, for the CE */
    double lses = s_lse(V, s, tau, &m_); /* tempered student, full vocabulary */
    double lset = s_lse(K, tv, tau, &m_); /* tempered teacher over its kept ids */
    *ce = lse1 - s[target];
    double k = 0;
    for (int i = 0; i < K; i++) {
        if (ti[i] < 0 || ti[i] >= V) continue;
        double lpt = tv[i] / (double)tau - lset, lps = s[ti[i]] / (double)tau - lses;
        k += exp(lpt) * (lpt - lps);
    }
    *kl = k;
    if (!ds) return;
    double a = alpha, b = (1.0 - alpha) * tau;
    /* the teacher's p must be read before ds (which may alias s) changes */
    for (int v = 0; v < V; v++) {
        double p1 = exp((double)s[v] - lse1), qs = exp(s[v] / (double)tau - lses);
        ds[v] = (float)(a * (p1 - (v == target)) + b * qs);
    }
    for (int i = 0; i < K; i++) {
        if (ti[i] < 0 || ti[i] >= V) continue;
        ds[ti[i]] -= (float)(b * exp(tv[i] / (double)tau - lset));
    }
}

/* The head loop both teacher forms share: teacher holds full rows (V per
 * row) when K is 0, else tk_val / tk_id hold K kept logits and ids per row. */
static void s_head(int R, int C, int V, const float *x, const float *head, const float *teacher, int K,
                   const float *tk_val, const int32_t *tk_id, const int32_t *targets, float alpha, float tau,
                   float *logits_out, float *dx, float *scratch, int chunk, observer_result_t *res)
{
    double loss = 0, ce = 0, kl = 0;
    int64_t nt = 0, nc = 0;
    double scale = (1.0 - alpha) * (double)tau * tau;
    for (int r0 = 0; r0 < R; r0 += chunk) {
        int n = R - r0 < chunk ? R - r0 : chunk;
        float *lg = scratch;
        sgemm_rows_cpu(1, n, V, C, 1.0f, x + (size_t)r0 * C, C, head, C, 0.0f, lg, V);
        if (logits_out) memcpy(logits_out + (size_t)r0 * V, lg, (size_t)n * V * sizeof(float));
        double closs = 0, cce = 0, ckl = 0;
        int64_t cnt = 0, ccor = 0;
#pragma omp parallel for schedule(dynamic, 16) if (n >= 32) reduction(+ : closs, cce, ckl, cnt, ccor)
        for (int i = 0; i < n; i++) {
            float *row = lg + (size_t)i * V;
            int32_t tg = targets ? targets[r0 + i] : -1;
            if (!(tg >= 0 && tg < V)) {
                if (dx) memset(row, 0, (size_t)V * sizeof(float));
                continue;
            }
            int am = 0;
            for (int v = 1; v < V; v++)
                if (row[v] > row[am]) am = v;
            double rce, rkl;
            if (K) {
                size_t o = (size_t)(r0 + i) * K;
                observer_topk_row_cpu(V, K, row, tk_val + o, tk_id + o, tg, alpha, tau, &rce, &rkl, dx ? row : NULL);
            } else {
                observer_row_cpu(V, row, teacher + (size_t)(r0 + i) * V, tg, alpha, tau, &rce, &rkl,
                                 dx ? row : NULL);
            }
            closs += alpha * rce + scale * rkl;
            cce += rce;
            ckl += rkl;
            cnt++;
            ccor += am == tg;
        }
        loss += closs;
        ce += cce;
        kl += ckl;
        nt += cnt;
        nc += ccor;
        if (dx) sgemm_rows_cpu(0, n, C, V, 1.0f, lg, V, head, C, 0.0f, dx + (size_t)r0 * C, C);
    }
    res->loss_sum = loss;
    res->ce_sum = ce;
    res->kl_sum = kl;
    res->n_targets = nt;
    res->n_correct = nc;
}

void observer_head_cpu(int R, int C, int V, const float *x, const float *head, const float *teacher,
                       const int32_t *targets, float alpha, float tau, float *logits_out, float *dx,
                       float *scratch, int chunk, observer_result_t *res)
{
    s_head(R, C, V, x, head, teacher, 0, NULL, NULL, targets, alpha, tau, logits_out, dx, scratch, chunk, res);
}

void observer_topk_head_cpu(int R, int C, int V, int K, const float *x, const float *head, const float *tk_val,
                            const int32_t *tk_id, const int32_t *targets, float alpha, float tau,
                            float *logits_out, float *dx, float *scratch, int chunk, observer_result_t *res)
{
    s_head(R, C, V, x, head, NULL, K, tk_val, tk_id, targets, alpha, tau, logits_out, dx, scratch, chunk, res);
}
