/*
 * dist.h - the worker group: every MPI (and, on GPUs, NCCL) call of statetune
 * lives behind this one type (SPEC section 7; STYLE section 5, worker/).
 *
 * A dist_t is the group a rank belongs to. Under mpirun (detected from the
 * launcher's environment, OMPI_COMM_WORLD_SIZE or PMI_SIZE) it initialises
 * MPI and speaks MPI_COMM_WORLD; a plain process uses no MPI at all and every
 * collective is a single-rank no-op, so the tuning loop calls the same
 * functions either way and has no #ifdef. A NULL dist_t * is accepted
 * everywhere and means "a single process".
 *
 * Failure policy: MPI errors are returned (MPI_ERRORS_RETURN), never fatal
 * inside MPI. A rank that dies makes mpirun end the group; a rank that hangs
 * (stopped, stuck in a driver, a peer that vanished without the launcher
 * noticing) is caught by a watchdog thread: when one collective takes longer
 * than the timeout (STATETUNE_DIST_TIMEOUT_S, default 30 s; dist_set_timeout)
 * it says so on stderr and calls MPI_Abort, which ends every rank. A group
 * therefore fails with a clear error instead of hanging.
 *
 * Collectives must be called by every rank in the same order, as in MPI.
 */
#ifndef ST_WORKER_DIST_H
#define ST_WORKER_DIST_H

#include <stddef.h>

typedef struct dist dist_t;

/* Joins the group. Under a launcher this calls MPI_Init_thread (which may
 * consume MPI's own arguments from argc/argv); otherwise it only records a
 * single rank. Returns NULL and fills err when MPI fails to start. */
dist_t *dist_new(int *argc, char ***argv, char *err);

/* Leaves the group (MPI_Finalize when MPI was started). Accepts NULL. */
void dist_destroy(dist_t **self_p);

int dist_rank(const dist_t *self);       /* 0 .. size-1 */
int dist_size(const dist_t *self);       /* ranks in the group */
int dist_local_rank(const dist_t *self); /* rank among this node's ranks: picks the GPU */
int dist_local_size(const dist_t *self);  /* ranks on this node: shares its cores */
int dist_is_root(const dist_t *self);    /* rank 0: talks, prints, writes files */
int dist_uses_mpi(const dist_t *self);   /* whether MPI was started */

/* The watchdog's limit for one collective, in seconds (<= 0 disables it). */
void dist_set_timeout(dist_t *self, double seconds);

/* Broadcasts len bytes of buf from rank 0 to every rank. */
int dist_bcast(dist_t *self, void *buf, size_t len, char *err);

/* Broadcasts a NUL-terminated string from rank 0: on rank 0 *str is the input
 * (NULL means "rank 0 failed": every rank then returns ST_ECANCELLED so that
 * the group stops together); on the other ranks *str receives a malloc'd
 * copy the caller frees. */
int dist_bcast_string(dist_t *self, char **str, char *err);

/* dist_bcast_string for a group idling between jobs: ranks other than 0
 * sleep poll_ms between checks (MPI_Ibcast + MPI_Test) instead of spinning
 * in MPI's progress loop, which would take a core from real work. Every
 * rank must call this one (not dist_bcast_string) for the same broadcast. */
int dist_bcast_string_idle(dist_t *self, char **str, int poll_ms, char *err);

/* In-place sums over every rank of n values (the gradient all-reduce: one
 * buffer per step holds dS0, the DBP statistics and the loss sums). */
int dist_allreduce_sum_f64(dist_t *self, double *buf, size_t n, char *err);
int dist_allreduce_sum_f32(dist_t *self, float *buf, size_t n, char *err);

/* Waits until every rank has arrived. */
int dist_barrier(dist_t *self, char *err);

/* Ends every rank of the group with exit status code after writing msg on
 * stderr (rank-tagged). Under MPI it does not return (MPI_Abort); in a single
 * process it returns, and the caller reports and exits as usual. */
void dist_abort(dist_t *self, int code, const char *msg);

/* ---- NCCL (GPU groups) -------------------------------------------------
 * A GPU group sums its step buffer with NCCL instead of MPI (SPEC section 7;
 * llm.c's zero.cuh). dist_init_nccl makes the communicator: rank 0 creates
 * the ncclUniqueId and sends it with dist_bcast, every rank selects the GPU
 * of its node-local rank (cudaSetDevice(local_rank)) and joins with
 * ncclCommInitRank; collectives then run on a dedicated communication stream.
 * It is a collective: every rank calls it, or none.
 *
 * Builds without CUDA or NCCL keep the same API: dist_init_nccl returns
 * ST_OK without a communicator (dist_has_nccl says 0), dist_allreduce_step_f64
 * falls back to MPI, and dist_allreduce_sum_device refuses with
 * ST_EUNSUPPORTED (it has no host buffer to fall back to). A single process
 * never makes a communicator: there is nothing to sum.
 *
 * The watchdog covers the NCCL calls too: ncclCommInitRank and every
 * all-reduce wait at most the group's timeout, then the group is ended. */

/* Joins the group's GPUs through NCCL (see above). No-op for one rank or a
 * build without NCCL. Fills err and returns ST_ECUDA when CUDA or NCCL fails
 * (no device for the local rank, NCCL cannot connect the ranks). */
int dist_init_nccl(dist_t *self, char *err);

/* 1 when dist_init_nccl made a communicator. */
int dist_has_nccl(const dist_t *self);

/* The step all-reduce of a host buffer (the tuning loop's [dS0 | Q | dU0 |
 * loss sums]): with a communicator, the first n - n_exact values travel as
 * fp32 and the last n_exact (counts, loss sums: they must stay exact) as
 * doubles, through pinned and device staging buffers, summed in place by
 * ncclAllReduce in one NCCL group on the communication stream;
 * without one this is dist_allreduce_sum_f64 over MPI, all in double. Same
 * results up to reduction order and the fp32 rounding of the body. */
int dist_allreduce_step_f64(dist_t *self, double *buf, size_t n, size_t n_exact, char *err);

/* The step all-reduce of a gradient kept on the GPU (engine_params_grad):
 * ng fp32 values of device_grad summed in place, and the host buffer buf of
 * n values summed as dist_allreduce_step_f64 does (fp32 body, the last
 * n_exact as doubles, staged), all in one NCCL group on the communication
 * stream; returns when every sum is in place. The caller's writes to
 * device_grad must be complete. One rank: no-op. Without a communicator in
 * a group of several ranks: ST_EUNSUPPORTED (stage the gradient through a
 * host buffer and dist_allreduce_step_f64 instead). */
int dist_allreduce_step_device(dist_t *self, float *device_grad, size_t ng, double *buf, size_t n, size_t n_exact,
                               char *err);
/* The same with DBP's Q kept on the GPU (engine_params_q): nq doubles of
 * device_q summed in place, as doubles, in the same NCCL group (device_q
 * NULL: none). */
int dist_allreduce_step_device_q(dist_t *self, float *device_grad, size_t ng, double *device_q, size_t nq,
                                 double *buf, size_t n, size_t n_exact, char *err);

/* Sums n floats of a device buffer in place over every rank (ncclAllReduce
 * in one NCCL group, on the communication stream; returns when the sum is in
 * buf). The caller's writes to buf must be complete (its stream
 * synchronized). One rank: no-op. Needs dist_init_nccl with size > 1. */
int dist_allreduce_sum_device(dist_t *self, float *device_buf, size_t n, char *err);

/* Where the time of the last dist_allreduce_step_f64 through NCCL went, in
 * ms: copies (host to pinned to device and back) and the NCCL all-reduce
 * itself (CUDA events on the communication stream). Zeros without NCCL. */
void dist_last_allreduce_ms(const dist_t *self, double *copy_ms, double *nccl_ms);

/* Checks and times the device all-reduce (bench, tests/gpu_multi.sh): every
 * rank fills n device floats with rank + 1, one dist_allreduce_sum_device
 * must give size (size + 1) / 2 everywhere (ST_ENUMERIC otherwise), then
 * iters more are timed; *ms is their mean wall time. What the step
 * all-reduce would cost if the engine's gradient stayed on the GPU. One
 * rank: *ms = 0. Needs dist_init_nccl with size > 1 (else ST_EUNSUPPORTED). */
int dist_device_allreduce_check(dist_t *self, size_t n, int iters, double *ms, char *err);

#endif
