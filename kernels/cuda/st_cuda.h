/*
 * st_cuda.h - the cudaCheck of statetune: every CUDA / cuBLAS call in
 * kernels/cuda and engine/cuda goes through these macros, which record
 * file:line, the call and the library's message into the caller's err buffer
 * (ST_ERR_LEN) and RETURN ST_ECUDA. Nothing here prints or exits (STYLE.md:
 * only the boundary turns the detail into the sentence a user sees).
 *
 * The macros expect a `char *err` in scope and a function returning int.
 */
#ifndef ST_KERNELS_CUDA_ST_CUDA_H
#define ST_KERNELS_CUDA_ST_CUDA_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "common/st_err.h"
#ifdef __cplusplus
}
#endif

#define ST_CUDA_CHECK(call)                                                            \
    do {                                                                               \
        cudaError_t st_e_ = (call);                                                    \
        if (st_e_ != cudaSuccess)                                                      \
            return st_fail(err, ST_ECUDA, "%s:%d: %s failed: %s", __FILE__, __LINE__, \
                           #call, cudaGetErrorString(st_e_));                          \
    } while (0)

/* After a kernel launch: catches bad launch configurations at once (errors
 * raised while the kernel runs surface at the next synchronising call). */
#define ST_CUDA_CHECK_LAUNCH(what)                                                     \
    do {                                                                               \
        cudaError_t st_e_ = cudaGetLastError();                                        \
        if (st_e_ != cudaSuccess)                                                      \
            return st_fail(err, ST_ECUDA, "%s:%d: launching %s failed: %s", __FILE__,  \
                           __LINE__, what, cudaGetErrorString(st_e_));                 \
    } while (0)

/* A cuBLAS call (cublasStatus_t), with the library's own status string. */
#define ST_CUBLAS_CHECK(call)                                                          \
    do {                                                                               \
        cublasStatus_t st_s_ = (call);                                                 \
        if (st_s_ != CUBLAS_STATUS_SUCCESS)                                            \
            return st_fail(err, ST_ECUDA, "%s:%d: %s failed: %s", __FILE__, __LINE__, \
                           #call, cublasGetStatusString(st_s_));                       \
    } while (0)

#endif
