/*
 * head.c - head projection + softmax cross-entropy + its input gradient, one
 * chunk of rows at a time (see head.h). Each chunk's logits go through sgemm,
 * then a row pass computes the max, log-sum-exp (in double), the loss and the
 * argmax, and turns the row into dlogits in place; one more sgemm gives dx.
 * Out-of-range targets (>= V) are the caller's to refuse; here they count as
 * no loss, so a bad id can never index past the row.
 */
/* The build compiles at -O2, where GCC vectorizes only loops whose trip
 * count it knows; these element-wise loops need the full vectorizer. */
#pragma GCC optimize("O3")

#include "kernels/cpu/head.h"

#include "kernels/cpu/matmul.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

void head_ce_cpu(int R, int C, int V, const float *x, const float *head, const int32_t *targets,
                 float *logits_out, float *dx, float *scratch, int chunk, head_result_t *res)
{
    double loss = 0;
    int64_t nt = 0, nc = 0;
    for (int r0 = 0; r0 < R; r0 += chunk) {
        int n = R - r0 < chunk ? R - r0 : chunk;
        float *lg = scratch;
        sgemm_rows_cpu(1, n, V, C, 1.0f, x + (size_t)r0 * C, C, head, C, 0.0f, lg, V);
        if (logits_out) memcpy(logits_out + (size_t)r0 * V, lg, (size_t)n * V * sizeof(float));
        double closs = 0;
        int64_t cnt = 0, ccor = 0;
        /* Row losses are summed in row order after the loop: an OpenMP
         * reduction adds the threads' partial sums in whatever order they
         * finish, and the loss would then differ from run to run. */
        double *row_loss = malloc(sizeof(double) * (size_t)n);
#pragma omp parallel for schedule(dynamic, 16) if (n >= 32 && row_loss != NULL) reduction(+ : closs, cnt, ccor)
        for (int i = 0; i < n; i++) {
            if (row_loss) row_loss[i] = 0;
            float *row = lg + (size_t)i * V;
            int32_t tg = targets ? targets[r0 + i] : -1;
            int valid = tg >= 0 && tg < V;
            if (!valid) {
                if (dx) memset(row, 0, (size_t)V * sizeof(float));
                continue;
            }
            float mx = row[0];
            int am = 0;
            for (int v = 1; v < V; v++)
                if (row[v] > mx) {
                    mx = row[v];
                    am = v;
                }
            double se = 0;
            for (int v = 0; v < V; v++) se += exp((double)(row[v] - mx));
            double lse = mx + log(se);
            if (row_loss) row_loss[i] = lse - row[tg];
            else closs += lse - row[tg]; /* serial: the order is fixed */
            cnt++;
            ccor += am == tg;
            if (dx) {
                float inv = (float)(1.0 / se);
                for (int v = 0; v < V; v++) row[v] = expf(row[v] - mx) * inv;
                row[tg] -= 1.0f;
            }
        }
        if (row_loss) {
            for (int i = 0; i < n; i++) closs += row_loss[i];
            free(row_loss);
        }
        loss += closs;
        nt += cnt;
        nc += ccor;
        if (dx)
            sgemm_rows_cpu(0, n, C, V, 1.0f, lg, V, head, C, 0.0f, dx + (size_t)r0 * C, C);
    }
    res->loss_sum = loss;
    res->n_targets = nt;
    res->n_correct = nc;
}
