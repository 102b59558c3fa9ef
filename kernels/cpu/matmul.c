/*
 * matmul.c - linear and LoRA products through cblas_sgemm (see matmul.h).
 * Row-major throughout; the transposes are sgemm flags, never copies.
 *
 * LoRA backward: with z = x @ w1, hid = act(z), out = hid @ w2,
 *   dhid = dout @ w2^T, dz = dhid * act'(z) (tanh: 1 - hid^2, sigmoid:
 *   hid (1 - hid)), dx += dz @ w1^T.
 */
#include "kernels/cpu/matmul.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>

void linear_forward_cpu(int R, int IN, int OUT, const float *inp, const float *w, float *out)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, OUT, IN, 1.0f, inp, IN, w, IN,
                0.0f, out, OUT);
}

void linear_backward_cpu(int R, int IN, int OUT, const float *dout, const float *w, float *dinp)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, IN, OUT, 1.0f, dout, OUT, w, IN,
                1.0f, dinp, IN);
}

void lora_forward_cpu(int R, int C, int D, const float *x, const float *w1, const float *w2,
                      lora_act_t act, float *hid, float *out)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, D, C, 1.0f, x, C, w1, D, 0.0f,
                hid, D);
    size_t n = (size_t)R * D;
    if (act == LORA_TANH) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) hid[i] = tanhf(hid[i]);
    } else if (act == LORA_SIGMOID) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) hid[i] = 1.0f / (1.0f + expf(-hid[i]));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, C, D, 1.0f, hid, D, w2, C, 0.0f,
                out, C);
}

void lora_backward_cpu(int R, int C, int D, const float *w1, const float *w2, lora_act_t act,
                       const float *hid, const float *dout, float *dhid, float *dx)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, D, C, 1.0f, dout, C, w2, C, 0.0f,
                dhid, D);
    size_t n = (size_t)R * D;
    if (act == LORA_TANH) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) dhid[i] *= 1.0f - hid[i] * hid[i];
    } else if (act == LORA_SIGMOID) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) dhid[i] *= hid[i] * (1.0f - hid[i]);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, C, D, 1.0f, dhid, D, w1, D, 1.0f,
                dx, C);
}
