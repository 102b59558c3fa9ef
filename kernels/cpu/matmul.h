/*
 * matmul.h - the model's matrix products, all through OpenBLAS cblas_sgemm:
 * the nn.Linear projections (receptance, key, value, output, ffn key/value,
 * head; weight [OUT, IN], y = x W^T) and the LoRA pairs of the time mix
 * (w1 [C, D] then w2 [D, C], applied as act(x @ w1) @ w2).
 *
 * Shapes: R = B * T rows. Backward passes give input gradients only (state
 * tuning freezes the weights) and accumulate into dinp (+=), because each
 * input feeds several products.
 */
#ifndef ST_KERNELS_CPU_MATMUL_H
#define ST_KERNELS_CPU_MATMUL_H

typedef enum { LORA_NONE = 0, LORA_TANH = 1, LORA_SIGMOID = 2 } lora_act_t;

/* C (M, N) = alpha A (M, K) op(B) + beta C, row-major, op(B) = B^T when
 * transB (B is (N, K)) else B (K, N). Rows are split over the OpenMP threads,
 * each block one OpenBLAS call; expects OpenBLAS set to one thread. */
void sgemm_rows_cpu(int transB, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc);

/* out (R, OUT) = inp (R, IN) @ w^T, w (OUT, IN). */
void linear_forward_cpu(int R, int IN, int OUT, const float *inp, const float *w, float *out);

/* dinp (R, IN) += dout (R, OUT) @ w. */
void linear_backward_cpu(int R, int IN, int OUT, const float *dout, const float *w, float *dinp);

/* dinp (R, IN) = dout (R, OUT) @ w: the first contribution, overwriting. */
void linear_backward_to_cpu(int R, int IN, int OUT, const float *dout, const float *w, float *dinp);

/* hid (R, D) = act(x (R, C) @ w1 (C, D)); out (R, C) = hid @ w2 (D, C).
 * hid is kept for the backward pass. */
void lora_forward_cpu(int R, int C, int D, const float *x, const float *w1, const float *w2,
                      lora_act_t act, float *hid, float *out);

/* dx (R, C) += d out / d x applied to dout (R, C), or = when accumulate is
 * 0 (the first contribution). dhid (R, D) is scratch. */
void lora_backward_cpu(int R, int C, int D, const float *w1, const float *w2, lora_act_t act,
                       const float *hid, const float *dout, float *dhid, float *dx,
                       int accumulate);

#endif
