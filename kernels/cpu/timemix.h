/*
 * timemix.h - the element-wise part of RWKV-7's time mix that turns the
 * projections into the WKV7 inputs (official RWKV_Tmix_x070), and its
 * backward pass. Shapes: every array is (R, C) with R = B * T rows and
 * C = H * N, N = 64; k_k, k_a, w0, a0, v0 are (C).
 *
 *   w  = exp(-0.606531 * sigmoid(w0 + wl))          wl = tanh(x_w w1) w2
 *   a  = sigmoid(a0 + al)                           al = (x_a a1) a2
 *   kk = normalize(kraw * k_k) per head (L2, eps 1e-12)
 *   kf = kraw * (1 + (a - 1) * k_a)
 *   wkv "a" = -kk, wkv "b" = kk * a
 *   v  = vraw + (v_first - vraw) * s,  s = sigmoid(v0 + vl)   (layers >= 1)
 */
#ifndef ST_KERNELS_CPU_TIMEMIX_H
#define ST_KERNELS_CPU_TIMEMIX_H

#define RWKV_DECAY_SCALE 0.6065306597126334f /* exp(-0.5) */
#define RWKV_KK_EPS 1e-12f

/* Writes w, a, kk, kf, wa (= -kk) and wb (= kk * a); wl, al, kraw are read. */
void timemix_forward_cpu(int R, int H, int N, const float *wl, const float *al,
                         const float *kraw, const float *w0, const float *a0,
                         const float *k_k, const float *k_a,
                         float *w, float *a, float *kk, float *kf, float *wa, float *wb);

/* From the gradients of the WKV inputs (dw, dkf, dwa, dwb) writes dwl, dal
 * and dkraw (all overwritten). Needs wl, w, a, kk, kraw from the forward
 * pass. */
void timemix_backward_cpu(int R, int H, int N, const float *wl, const float *w0,
                          const float *w, const float *a, const float *kk, const float *kraw,
                          const float *k_k, const float *k_a,
                          const float *dw, const float *dkf, const float *dwa, const float *dwb,
                          float *dwl, float *dal, float *dkraw);

/* v (R, C) = vraw + (v_first - vraw) * s with s = sigmoid(v0 + vl); vl is
 * overwritten with s, which the backward pass needs. */
void vmix_forward_cpu(int R, int C, const float *vraw, const float *v_first, const float *v0,
                      float *vl_to_s, float *v);

/* From dv: dvraw and dvl overwritten, dv_first accumulated (+=). */
void vmix_backward_cpu(int R, int C, const float *vraw, const float *v_first, const float *s,
                       const float *dv, float *dvraw, float *dv_first, float *dvl);

#endif
