/*
 * dbp.c - the DBP correlation Q by the backward recursion (see dbp.h), in
 * double because M sums T outer products whose entries span many orders of
 * magnitude as the decays multiply.
 *
 * G M G^T for G = diag(w) + a b^T and symmetric M, in O(N^2):
 *   c = M b (= M^T b);  P = diag(w) M + a c^T;  d = P b
 *   G M G^T = P diag(w) + d a^T
 */
#include "kernels/cpu/dbp.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define N 64

/* M <- G M G^T in place. */
static void s_sandwich(double *M, const float *w, const float *a, const float *b)
{
    double c[N], d[N];
    for (int l = 0; l < N; l++) c[l] = 0;
    for (int j = 0; j < N; j++) {
        double bj = b[j];
        for (int l = 0; l < N; l++) c[l] += bj * M[j * N + l];
    }
    for (int j = 0; j < N; j++) {
        double wj = w[j], aj = a[j], dj = 0;
        double *Mj = M + j * N;
        for (int l = 0; l < N; l++) {
            Mj[l] = wj * Mj[l] + aj * c[l];
            dj += Mj[l] * b[l];
        }
        d[j] = dj;
    }
    for (int j = 0; j < N; j++) {
        double *Mj = M + j * N;
        for (int l = 0; l < N; l++) Mj[l] = Mj[l] * w[l] + d[j] * a[l];
    }
}

void dbp_q_cpu(int B, int T, int H, const float *r, const float *w, const float *a,
               const float *b, const uint8_t *rows, double *q)
{
    int C = H * N;
    /* Per-(row, head) slots summed in row order afterwards, so that Q does not
     * depend on which thread finished first (see wkv7_backward_cpu). */
    double *slots = malloc(sizeof(double) * (size_t)B * H * N * N);
#pragma omp parallel for collapse(2) schedule(dynamic) if (slots != NULL)
    for (int bb = 0; bb < B; bb++) {
        for (int h = 0; h < H; h++) {
            if ((rows && !rows[bb]) || T <= 0) continue;
            double M[N * N];
            memset(M, 0, sizeof M);
            for (int t = T - 1; t >= 0; t--) {
                size_t o = ((size_t)bb * T + t) * C + (size_t)h * N;
                /* M_t = r_t r_t^T + G_{t+1} M_{t+1} G_{t+1}^T: the sandwich by
                 * step t+1's G was applied at the end of the previous pass. */
                const float *rt = r + o;
                for (int j = 0; j < N; j++)
                    for (int l = 0; l < N; l++) M[j * N + l] += (double)rt[j] * rt[l];
                s_sandwich(M, w + o, a + o, b + o);
            }
            if (slots) {
                memcpy(slots + ((size_t)bb * H + h) * N * N, M, sizeof M);
            } else { /* serial fallback: the order is fixed */
                double *qh = q + (size_t)h * N * N;
                for (int e = 0; e < N * N; e++) qh[e] += M[e];
            }
        }
    }
    if (slots) {
#pragma omp parallel for schedule(static)
        for (int h = 0; h < H; h++) {
            double *qh = q + (size_t)h * N * N;
            for (int bb = 0; bb < B; bb++) {
                if ((rows && !rows[bb]) || T <= 0) continue;
                const double *sl = slots + ((size_t)bb * H + h) * N * N;
                for (int e = 0; e < N * N; e++) qh[e] += sl[e];
            }
        }
        free(slots);
    }
}
