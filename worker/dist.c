/*
 * dist.c - the worker group over MPI, with a watchdog against hangs (see
 * dist.h). This is the only file of statetune that includes mpi.h.
 *
 * Design notes:
 *   - A process not started by a launcher never calls MPI_Init: a plain
 *     `statetune-worker tune` must work on machines where MPI is installed
 *     but not configured (and MPI_Init alone can take a second).
 *   - Every collective goes through s_enter/s_leave, which arm and disarm the
 *     watchdog. The watchdog thread sleeps on a condition variable with the
 *     armed deadline; if the deadline passes while still armed, the collective
 *     is stuck (a peer died or hangs), so it prints which collective timed out
 *     and calls MPI_Abort. If even that does not end the process within a few
 *     seconds, it _exits, and the launcher ends the rest of the group.
 *   - MPI counts are int: buffers are sent in chunks of at most 2^30 elements.
 */
#include "worker/dist.h"

#include "common/st_err.h"

#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef STATETUNE_HAVE_NCCL
#include <cuda_runtime.h> /* defines: cudaSetDevice, streams, events, pinned memory */
#include <nccl.h>         /* defines: ncclCommInitRank, ncclAllReduce */
#endif
#ifdef _OPENMP
#include <omp.h>          /* defines: omp_get_num_procs (the staging copies) */
#endif

#define DIST_DEFAULT_TIMEOUT_S 30.0
#define DIST_CHUNK ((size_t)1 << 30)

struct dist {
    int rank;             /* in MPI_COMM_WORLD */
    int size;             /* ranks in the group */
    int local_rank;       /* rank on this node */
    int local_size;       /* ranks on this node */
    int mpi;              /* MPI was initialised by us */
    double timeout_s;     /* watchdog limit per collective, <= 0 = off */
    /* watchdog */
    pthread_t thread;     /* the watchdog thread (when mpi) */
    int thread_started;   /* thread is running */
    pthread_mutex_t mu;   /* guards the fields below */
    pthread_cond_t cv;    /* signalled on arm, disarm and stop */
    int armed;            /* a collective is in progress */
    int stop;             /* destroy asks the thread to leave */
    struct timespec deadline; /* CLOCK_MONOTONIC time the collective must end by */
    const char *what;     /* name of the collective in progress */
    struct dist_nccl *nccl; /* GPU communicator (NCCL section below), NULL = none */
};

static void s_nccl_free(dist_t *self); /* NCCL section below */

static int s_env_int(const char *name, int fallback)
{
    const char *v = getenv(name);
    if (!v || !*v) return fallback;
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < 0 || x > INT_MAX) return fallback;
    return (int)x;
}

static int s_mpi_fail(char *err, int rc, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "code %d", rc);
    return st_fail(err, ST_EMPI, "%s failed: %s (a rank of the group was probably lost)", what, msg);
}

/* ---- watchdog ----------------------------------------------------------- */

static void *s_watchdog(void *arg)
{
    dist_t *self = arg;
    pthread_mutex_lock(&self->mu);
    while (!self->stop) {
        if (!self->armed) {
            pthread_cond_wait(&self->cv, &self->mu);
            continue;
        }
        struct timespec deadline = self->deadline;
        int rc = pthread_cond_timedwait(&self->cv, &self->mu, &deadline);
        if (rc == ETIMEDOUT && self->armed && !self->stop) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec > self->deadline.tv_sec ||
                (now.tv_sec == self->deadline.tv_sec && now.tv_nsec >= self->deadline.tv_nsec)) {
                fprintf(stderr, "statetune-worker: rank %d: %s took longer than %.0f s: another rank of the group "
                                "died or hangs; ending the group\n", self->rank, self->what, self->timeout_s);
                fflush(stderr);
                pthread_mutex_unlock(&self->mu);
                MPI_Abort(MPI_COMM_WORLD, 1);
                sleep(5); /* MPI_Abort should not return; if it hangs, leave anyway */
                _exit(1);
            }
        }
    }
    pthread_mutex_unlock(&self->mu);
    return NULL;
}

static void s_enter(dist_t *self, const char *what)
{
    if (!self->thread_started || self->timeout_s <= 0) return;
    pthread_mutex_lock(&self->mu);
    clock_gettime(CLOCK_MONOTONIC, &self->deadline);
    double whole = (double)(int64_t)self->timeout_s;
    self->deadline.tv_sec += (time_t)whole;
    self->deadline.tv_nsec += (long)((self->timeout_s - whole) * 1e9);
    if (self->deadline.tv_nsec >= 1000000000L) {
        self->deadline.tv_sec++;
        self->deadline.tv_nsec -= 1000000000L;
    }
    self->what = what;
    self->armed = 1;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
}

static void s_leave(dist_t *self)
{
    if (!self->thread_started) return;
    pthread_mutex_lock(&self->mu);
    self->armed = 0;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
}

/* ---- lifecycle ---------------------------------------------------------- */

dist_t *dist_new(int *argc, char ***argv, char *err)
{
    dist_t *self = calloc(1, sizeof *self);
    if (!self) {
        st_fail(err, ST_ENOMEM, "out of memory for the worker group");
        return NULL;
    }
    self->size = 1;
    self->local_size = 1;
    self->timeout_s = DIST_DEFAULT_TIMEOUT_S;
    const char *t = getenv("STATETUNE_DIST_TIMEOUT_S");
    if (t && *t) {
        char *end;
        double x = strtod(t, &end);
        if (!*end) self->timeout_s = x;
    }
    int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
    if (!launched) return self;

    int provided = 0;
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) {
        st_fail(err, ST_EMPI, "MPI_Init_thread failed (code %d): is this process started by mpirun?", rc);
        free(self);
        return NULL;
    }
    self->mpi = 1;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &self->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &self->size);
    self->local_rank = s_env_int("OMPI_COMM_WORLD_LOCAL_RANK", s_env_int("MPI_LOCALRANKID", 0));
    self->local_size = s_env_int("OMPI_COMM_WORLD_LOCAL_SIZE", s_env_int("MPI_LOCALNRANKS", 1));
    if (self->local_size < 1) self->local_size = 1;

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (self->size > 1 && pthread_create(&self->thread, NULL, s_watchdog, self) == 0) self->thread_started = 1;
    return self;
}

void dist_destroy(dist_t **self_p)
{
    if (!self_p || !*self_p) return;
    dist_t *self = *self_p;
    if (self->thread_started) {
        pthread_mutex_lock(&self->mu);
        self->stop = 1;
        pthread_cond_signal(&self->cv);
        pthread_mutex_unlock(&self->mu);
        pthread_join(self->thread, NULL);
    }
    s_nccl_free(self);
    if (self->mpi) {
        pthread_cond_destroy(&self->cv);
        pthread_mutex_destroy(&self->mu);
        MPI_Finalize();
    }
    free(self);
    *self_p = NULL;
}

int dist_rank(const dist_t *self) { return self ? self->rank : 0; }
int dist_size(const dist_t *self) { return self ? self->size : 1; }
int dist_local_rank(const dist_t *self) { return self ? self->local_rank : 0; }
int dist_local_size(const dist_t *self) { return self ? self->local_size : 1; }
int dist_is_root(const dist_t *self) { return dist_rank(self) == 0; }
int dist_uses_mpi(const dist_t *self) { return self ? self->mpi : 0; }

void dist_set_timeout(dist_t *self, double seconds)
{
    if (self) self->timeout_s = seconds;
}

/* ---- collectives -------------------------------------------------------- */

int dist_bcast(dist_t *self, void *buf, size_t len, char *err)
{
    if (!self || !self->mpi || self->size == 1) return ST_OK;
    s_enter(self, "MPI_Bcast");
    for (size_t off = 0; off < len; off += DIST_CHUNK) {
        size_t n = len - off < DIST_CHUNK ? len - off : DIST_CHUNK;
        int rc = MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) {
            s_leave(self);
            return s_mpi_fail(err, rc, "MPI_Bcast");
        }
    }
    s_leave(self);
    return ST_OK;
}

/* The string's bytes once every rank knows its length (-1: rank 0 had no
 * job to send): rank 0 sends *str, the others receive into a new one. */
static int s_bcast_string_body(dist_t *self, int root, int64_t len, char **str, char *err)
{
    if (len < 0) return st_fail(err, ST_ECANCELLED, "rank 0 failed before sending the job");
    if (root) return dist_bcast(self, *str, (size_t)len, err);
    char *s = malloc((size_t)len + 1);
    if (!s) return st_fail(err, ST_ENOMEM, "out of memory for a %lld-byte broadcast", (long long)len);
    int rc = dist_bcast(self, s, (size_t)len, err);
    if (rc) {
        free(s);
        return rc;
    }
    s[len] = 0;
    *str = s;
    return ST_OK;
}

int dist_bcast_string(dist_t *self, char **str, char *err)
{
    int root = dist_is_root(self);
    if (!self || !self->mpi || self->size == 1) {
        if (root && !*str) return st_fail(err, ST_ECANCELLED, "rank 0 failed before sending the job");
        return ST_OK;
    }
    int64_t len = -1;
    if (root && *str) len = (int64_t)strlen(*str);
    int rc = dist_bcast(self, &len, sizeof len, err);
    if (rc) return rc;
    return s_bcast_string_body(self, root, len, str, err);
}

int dist_bcast_string_idle(dist_t *self, char **str, int poll_ms, char *err)
{
    int root = dist_is_root(self);
    if (!self || !self->mpi || self->size == 1) return dist_bcast_string(self, str, err);
    /* Only the length is waited for without spinning: once it arrives rank 0
     * is sending, and the rest is an ordinary broadcast. Every rank uses the
     * nonblocking call for it (blocking and nonblocking collectives never
     * match each other in MPI). */
    int64_t len = -1;
    if (root && *str) len = (int64_t)strlen(*str);
    MPI_Request req;
    /* No watchdog here: a group may idle for hours between jobs; a lost
     * peer shows up as an MPI error or is ended by the launcher. */
    int rc = MPI_Ibcast(&len, (int)sizeof len, MPI_BYTE, 0, MPI_COMM_WORLD, &req);
    int done = 0;
    while (rc == MPI_SUCCESS && !done) {
        rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (rc == MPI_SUCCESS && !done) {
            struct timespec ts = {poll_ms / 1000, (long)(poll_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    if (rc != MPI_SUCCESS) return s_mpi_fail(err, rc, "MPI_Ibcast");
    return s_bcast_string_body(self, root, len, str, err);
}

static int s_allreduce(dist_t *self, void *buf, size_t n, size_t elem, MPI_Datatype type, char *err)
{
    if (!self || !self->mpi || self->size == 1) return ST_OK;
    s_enter(self, "MPI_Allreduce");
    for (size_t off = 0; off < n; off += DIST_CHUNK) {
        size_t c = n - off < DIST_CHUNK ? n - off : DIST_CHUNK;
        int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + off * elem, (int)c, type, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) {
            s_leave(self);
            return s_mpi_fail(err, rc, "MPI_Allreduce");
        }
    }
    s_leave(self);
    return ST_OK;
}

int dist_allreduce_sum_f64(dist_t *self, double *buf, size_t n, char *err)
{
    return s_allreduce(self, buf, n, sizeof(double), MPI_DOUBLE, err);
}

int dist_allreduce_sum_f32(dist_t *self, float *buf, size_t n, char *err)
{
    return s_allreduce(self, buf, n, sizeof(float), MPI_FLOAT, err);
}

int dist_barrier(dist_t *self, char *err)
{
    if (!self || !self->mpi || self->size == 1) return ST_OK;
    s_enter(self, "MPI_Barrier");
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    s_leave(self);
    if (rc != MPI_SUCCESS) return s_mpi_fail(err, rc, "MPI_Barrier");
    return ST_OK;
}

/* ---- NCCL (GPU groups) ---------------------------------------------------
 * See dist.h. Compiled with NCCL only when the worker is built with CUDA and
 * NCCL was found (STATETUNE_HAVE_NCCL, worker/CMakeLists.txt); otherwise the
 * same functions fall back to MPI or say there is no NCCL.
 *
 * Design notes:
 *   - The tuning loop's gradient stays on the GPU (engine.h's
 *     engine_params_*): dist_allreduce_step_device sums it in place in fp32,
 *     and dist_allreduce_step_device_q DBP's Q too, in place in double, in
 *     the same NCCL group as the small host part of the step buffer (the
 *     loss and count sums), which is staged as below. Measured first
 *     (docs/performance.md section 4): the staged gradient cost 2 to 7 ms of
 *     copies per step on 4 GPUs, its device all-reduce 0.06 to 0.15 ms.
 *   - A host step buffer (dist_allreduce_step_f64: CPU engines, tests) is
 *     staged:
 *     the body (dS0, Q, dU0) is converted to fp32 into pinned memory by a few
 *     threads, the exact tail (loss and count sums) copied as doubles; one
 *     H2D copy; two ncclAllReduce in place in one NCCL group (fp32 body,
 *     fp64 tail); one D2H copy; converted back. The staging buffers grow to
 *     the largest step buffer seen and are kept for the group's life, so a
 *     step allocates nothing. dist_last_allreduce_ms says what the copies
 *     cost beside the all-reduce itself (docs/performance.md, scaling).
 *   - Why fp32 on the wire: the first 4-GPU run (all doubles, one thread
 *     copying) spent 11.4 of its 13.2 ms per step at 24 x 2048 in the host
 *     copies, while the all-reduce of the same gradient in fp32 on the
 *     device took 0.15 ms. The engine's gradients are fp32 already, so
 *     summing a handful of ranks in fp32 loses nothing that matters; counts
 *     and loss sums stay double so they stay exact.
 *     STATETUNE_NCCL_STEP_F64=1 sends the body as doubles (for comparison).
 *   - Every rank checks its GPU first and the group agrees on the outcome
 *     (an MPI all-reduce of a failure count) before anyone enters
 *     ncclCommInitRank, so a rank without a GPU fails the whole group with a
 *     sentence instead of leaving the others inside NCCL until the watchdog.
 *   - NCCL waits are armed with the watchdog like the MPI collectives: a peer
 *     that hangs inside a step makes cudaStreamSynchronize spin forever, and
 *     the watchdog ends the group after the timeout.
 */

#ifdef STATETUNE_HAVE_NCCL

struct dist_nccl {
    ncclComm_t comm;       /* the group's communicator */
    cudaStream_t stream;   /* dedicated communication stream */
    cudaEvent_t ev[2];     /* around the all-reduce: its device time */
    int device;            /* CUDA ordinal = local rank */
    void *dbuf;            /* device staging buffer */
    size_t dbytes;         /* its size */
    void *hbuf;            /* pinned host staging buffer */
    size_t hbytes;         /* its size */
    int copy_threads;      /* threads for the staging conversions */
    int body_f64;          /* send the body as doubles (STATETUNE_NCCL_STEP_F64) */
    double copy_ms;        /* last step all-reduce: staging copies */
    double nccl_ms;        /* last step all-reduce: ncclAllReduce (events) */
};

#define DIST_CUDA(call)                                                                                      \
    do {                                                                                                     \
        cudaError_t ce_ = (call);                                                                            \
        if (ce_ != cudaSuccess)                                                                              \
            return st_fail(err, ST_ECUDA, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__,               \
                           cudaGetErrorString(ce_));                                                         \
    } while (0)

static int s_nccl_fail(char *err, ncclResult_t r, const char *what, int line)
{
    return st_fail(err, ST_ECUDA, "%s failed at %s:%d: %s (a GPU or a rank of the group was probably lost)", what,
                   __FILE__, line, ncclGetErrorString(r));
}

#define DIST_NCCL(call)                                                                                      \
    do {                                                                                                     \
        ncclResult_t nr_ = (call);                                                                           \
        if (nr_ != ncclSuccess) return s_nccl_fail(err, nr_, #call, __LINE__);                               \
    } while (0)

static double s_ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void s_nccl_free(dist_t *self)
{
    struct dist_nccl *nc = self->nccl;
    if (!nc) return;
    cudaSetDevice(nc->device);
    if (nc->stream) cudaStreamSynchronize(nc->stream);
    if (nc->comm) ncclCommDestroy(nc->comm);
    if (nc->ev[0]) cudaEventDestroy(nc->ev[0]);
    if (nc->ev[1]) cudaEventDestroy(nc->ev[1]);
    if (nc->stream) cudaStreamDestroy(nc->stream);
    if (nc->dbuf) cudaFree(nc->dbuf);
    if (nc->hbuf) cudaFreeHost(nc->hbuf);
    free(nc);
    self->nccl = NULL;
}

/* This rank's half of the set-up before the group agrees: the GPU, the
 * stream and the events. */
static int s_nccl_local(dist_t *self, struct dist_nccl *nc, char *err)
{
    int ndev = 0;
    cudaError_t ce = cudaGetDeviceCount(&ndev);
    if (ce != cudaSuccess)
        return st_fail(err, ST_ECUDA, "rank %d sees no CUDA device (%s)", self->rank, cudaGetErrorString(ce));
    if (nc->device >= ndev)
        return st_fail(err, ST_ECUDA, "rank %d is local rank %d but this node has %d GPU%s: start at most one rank "
                       "per GPU", self->rank, nc->device, ndev, ndev == 1 ? "" : "s");
    DIST_CUDA(cudaSetDevice(nc->device));
    DIST_CUDA(cudaStreamCreateWithFlags(&nc->stream, cudaStreamNonBlocking));
    DIST_CUDA(cudaEventCreate(&nc->ev[0]));
    DIST_CUDA(cudaEventCreate(&nc->ev[1]));
    return ST_OK;
}

int dist_init_nccl(dist_t *self, char *err)
{
    if (!self || !self->mpi || self->size == 1 || self->nccl) return ST_OK;
    struct dist_nccl *nc = calloc(1, sizeof *nc);
    if (!nc) return st_fail(err, ST_ENOMEM, "out of memory for the NCCL communicator");
    self->nccl = nc; /* s_nccl_free cleans up whatever part gets made */
    nc->device = self->local_rank;
    nc->body_f64 = s_env_int("STATETUNE_NCCL_STEP_F64", 0) > 0;
    nc->copy_threads = 1;
#ifdef _OPENMP
    /* a few of this rank's share of the cores: the copies are memory-bound */
    nc->copy_threads = omp_get_num_procs() / (self->local_size > 0 ? self->local_size : 1);
    if (nc->copy_threads > 8) nc->copy_threads = 8;
    if (nc->copy_threads < 1) nc->copy_threads = 1;
#endif
    char local_err[ST_ERR_LEN] = "";
    double bad = s_nccl_local(self, nc, local_err) ? 1 : 0;
    int rc = dist_allreduce_sum_f64(self, &bad, 1, err);
    if (rc) goto fail;
    if (bad > 0) {
        if (local_err[0]) rc = st_fail(err, ST_ECUDA, "%s", local_err);
        else rc = st_fail(err, ST_ECUDA, "%.0f rank%s of the group could not set up its GPU; see its message",
                          bad, bad == 1 ? "" : "s");
        goto fail;
    }
    /* rank 0 makes the id; a failure travels as ok = 0 so nobody waits in NCCL */
    struct {
        int32_t ok;
        ncclUniqueId id;
    } hello;
    memset(&hello, 0, sizeof hello);
    if (self->rank == 0) {
        ncclResult_t nr = ncclGetUniqueId(&hello.id);
        hello.ok = nr == ncclSuccess;
        if (!hello.ok) s_nccl_fail(local_err, nr, "ncclGetUniqueId", __LINE__);
    }
    rc = dist_bcast(self, &hello, sizeof hello, err);
    if (rc) goto fail;
    if (!hello.ok) {
        rc = st_fail(err, ST_ECUDA, "rank 0 could not make the NCCL id%s%s", local_err[0] ? ": " : "", local_err);
        goto fail;
    }
    s_enter(self, "ncclCommInitRank");
    ncclResult_t nr = ncclCommInitRank(&nc->comm, self->size, hello.id, self->rank);
    s_leave(self);
    if (nr != ncclSuccess) {
        nc->comm = NULL;
        rc = s_nccl_fail(err, nr, "ncclCommInitRank", __LINE__);
        goto fail;
    }
    return ST_OK;
fail:
    s_nccl_free(self);
    return rc;
}

int dist_has_nccl(const dist_t *self) { return self && self->nccl; }

/* Grows the staging buffers to bytes (never shrinks them). */
static int s_nccl_staging(struct dist_nccl *nc, size_t bytes, char *err)
{
    if (nc->dbytes < bytes) {
        if (nc->dbuf) cudaFree(nc->dbuf);
        nc->dbuf = NULL;
        nc->dbytes = 0;
        DIST_CUDA(cudaMalloc(&nc->dbuf, bytes));
        nc->dbytes = bytes;
    }
    if (nc->hbytes < bytes) {
        if (nc->hbuf) cudaFreeHost(nc->hbuf);
        nc->hbuf = NULL;
        nc->hbytes = 0;
        DIST_CUDA(cudaMallocHost(&nc->hbuf, bytes));
        nc->hbytes = bytes;
    }
    return ST_OK;
}

/* ncclAllReduce in place on the communication stream, then waits for it;
 * the events around it time the all-reduce alone. */
static int s_nccl_sum(dist_t *self, void *dbuf, size_t n, ncclDataType_t type, char *err)
{
    struct dist_nccl *nc = self->nccl;
    DIST_CUDA(cudaEventRecord(nc->ev[0], nc->stream));
    DIST_NCCL(ncclGroupStart());
    DIST_NCCL(ncclAllReduce(dbuf, dbuf, n, type, ncclSum, nc->comm, nc->stream));
    DIST_NCCL(ncclGroupEnd());
    DIST_CUDA(cudaEventRecord(nc->ev[1], nc->stream));
    return ST_OK;
}

/* The step's sums, ng floats at g (the device gradient), nq doubles at q
 * (DBP's device Q), nf floats at f and nd doubles at d (each may be empty),
 * in one NCCL group, timed by the events. */
static int s_nccl_sum3(dist_t *self, float *g, size_t ng, double *q, size_t nq, void *f, size_t nf, void *d,
                       size_t nd, char *err)
{
    struct dist_nccl *nc = self->nccl;
    DIST_CUDA(cudaEventRecord(nc->ev[0], nc->stream));
    DIST_NCCL(ncclGroupStart());
    if (ng) DIST_NCCL(ncclAllReduce(g, g, ng, ncclFloat, ncclSum, nc->comm, nc->stream));
    if (nq) DIST_NCCL(ncclAllReduce(q, q, nq, ncclDouble, ncclSum, nc->comm, nc->stream));
    if (nf) DIST_NCCL(ncclAllReduce(f, f, nf, ncclFloat, ncclSum, nc->comm, nc->stream));
    if (nd) DIST_NCCL(ncclAllReduce(d, d, nd, ncclDouble, ncclSum, nc->comm, nc->stream));
    DIST_NCCL(ncclGroupEnd());
    DIST_CUDA(cudaEventRecord(nc->ev[1], nc->stream));
    return ST_OK;
}

/* Small buffers (the step's scalars beside a device gradient) convert on
 * this thread: waking a team costs more than the copy, and its threads would
 * spin on cores the other ranks of the node share. */
#define DIST_COPY_SERIAL ((size_t)1 << 16)

static void s_to_f32(float *dst, const double *src, size_t n, int threads)
{
    if (n < DIST_COPY_SERIAL) threads = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
    for (size_t i = 0; i < n; i++) dst[i] = (float)src[i];
    (void)threads;
}

static void s_to_f64(double *dst, const float *src, size_t n, int threads)
{
    if (n < DIST_COPY_SERIAL) threads = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
    for (size_t i = 0; i < n; i++) dst[i] = src[i];
    (void)threads;
}

/* The step all-reduce through NCCL: buf staged (see the design notes) and,
 * when ng > 0 (nq > 0), the device gradient g (DBP's device Q) summed in
 * place, in one group. */
static int s_nccl_step(dist_t *self, float *g, size_t ng, double *q, size_t nq, double *buf, size_t n,
                       size_t n_exact, char *err)
{
    struct dist_nccl *nc = self->nccl;
    if (n_exact > n || nc->body_f64) n_exact = n;
    size_t nb = n - n_exact;                             /* fp32 body */
    size_t off = (nb * sizeof(float) + 15) & ~(size_t)15; /* the double tail, aligned */
    size_t bytes = off + n_exact * sizeof(double);
    int rc = s_nccl_staging(nc, bytes > 0 ? bytes : 16, err);
    if (rc) return rc;
    double t0 = s_ms_now();
    s_to_f32(nc->hbuf, buf, nb, nc->copy_threads);
    memcpy((char *)nc->hbuf + off, buf + nb, n_exact * sizeof(double));
    if (bytes) DIST_CUDA(cudaMemcpyAsync(nc->dbuf, nc->hbuf, bytes, cudaMemcpyHostToDevice, nc->stream));
    s_enter(self, "ncclAllReduce");
    rc = s_nccl_sum3(self, g, ng, q, nq, nc->dbuf, nb, (char *)nc->dbuf + off, n_exact, err);
    cudaError_t ce = rc || !bytes ? cudaSuccess
                                  : cudaMemcpyAsync(nc->hbuf, nc->dbuf, bytes, cudaMemcpyDeviceToHost, nc->stream);
    if (!rc && ce == cudaSuccess) ce = cudaStreamSynchronize(nc->stream);
    s_leave(self);
    if (rc) return rc;
    if (ce != cudaSuccess)
        return st_fail(err, ST_ECUDA, "the NCCL step all-reduce failed: %s", cudaGetErrorString(ce));
    s_to_f64(buf, nc->hbuf, nb, nc->copy_threads);
    memcpy(buf + nb, (char *)nc->hbuf + off, n_exact * sizeof(double));
    float ms = 0;
    if (cudaEventElapsedTime(&ms, nc->ev[0], nc->ev[1]) != cudaSuccess) ms = 0;
    nc->nccl_ms = ms;
    nc->copy_ms = s_ms_now() - t0 - ms;
    if (nc->copy_ms < 0) nc->copy_ms = 0;
    return ST_OK;
}

int dist_allreduce_step_f64(dist_t *self, double *buf, size_t n, size_t n_exact, char *err)
{
    if (!self || !self->nccl) return dist_allreduce_sum_f64(self, buf, n, err);
    return s_nccl_step(self, NULL, 0, NULL, 0, buf, n, n_exact, err);
}

int dist_allreduce_step_device(dist_t *self, float *device_grad, size_t ng, double *buf, size_t n, size_t n_exact,
                               char *err)
{
    return dist_allreduce_step_device_q(self, device_grad, ng, NULL, 0, buf, n, n_exact, err);
}

int dist_allreduce_step_device_q(dist_t *self, float *device_grad, size_t ng, double *device_q, size_t nq,
                                 double *buf, size_t n, size_t n_exact, char *err)
{
    if (!self || self->size == 1) return ST_OK;
    if (!self->nccl)
        return st_fail(err, ST_EUNSUPPORTED, "a device gradient all-reduce needs the NCCL communicator "
                       "(dist_init_nccl)");
    return s_nccl_step(self, device_grad, ng, device_q, device_q ? nq : 0, buf, n, n_exact, err);
}

int dist_allreduce_sum_device(dist_t *self, float *device_buf, size_t n, char *err)
{
    if (!self || self->size == 1) return ST_OK;
    if (!self->nccl)
        return st_fail(err, ST_EUNSUPPORTED, "a device all-reduce needs the NCCL communicator (dist_init_nccl)");
    s_enter(self, "ncclAllReduce");
    int rc = s_nccl_sum(self, device_buf, n, ncclFloat, err);
    cudaError_t ce = rc ? cudaSuccess : cudaStreamSynchronize(self->nccl->stream);
    s_leave(self);
    if (rc) return rc;
    if (ce != cudaSuccess)
        return st_fail(err, ST_ECUDA, "the NCCL device all-reduce failed: %s", cudaGetErrorString(ce));
    return ST_OK;
}

void dist_last_allreduce_ms(const dist_t *self, double *copy_ms, double *nccl_ms)
{
    *copy_ms = self && self->nccl ? self->nccl->copy_ms : 0;
    *nccl_ms = self && self->nccl ? self->nccl->nccl_ms : 0;
}

int dist_device_allreduce_check(dist_t *self, size_t n, int iters, double *ms, char *err)
{
    *ms = 0;
    if (!self || self->size == 1) return ST_OK;
    if (!self->nccl)
        return st_fail(err, ST_EUNSUPPORTED, "a device all-reduce needs the NCCL communicator (dist_init_nccl)");
    float *h = malloc(n * sizeof *h);
    float *d = NULL;
    if (!h) return st_fail(err, ST_ENOMEM, "out of memory for %zu floats", n);
    int rc = ST_OK;
    cudaError_t ce = cudaMalloc((void **)&d, n * sizeof *d);
    for (size_t i = 0; i < n; i++) h[i] = (float)(self->rank + 1);
    if (ce == cudaSuccess) ce = cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice);
    if (ce != cudaSuccess) {
        rc = st_fail(err, ST_ECUDA, "device all-reduce check: %s", cudaGetErrorString(ce));
        goto done;
    }
    rc = dist_allreduce_sum_device(self, d, n, err);
    if (rc) goto done;
    ce = cudaMemcpy(h, d, n * sizeof *d, cudaMemcpyDeviceToHost);
    if (ce != cudaSuccess) {
        rc = st_fail(err, ST_ECUDA, "device all-reduce check: %s", cudaGetErrorString(ce));
        goto done;
    }
    float want = (float)self->size * (float)(self->size + 1) / 2;
    for (size_t i = 0; i < n; i++)
        if (h[i] != want) {
            rc = st_fail(err, ST_ENUMERIC, "the NCCL device all-reduce gave %g at element %zu of %zu on rank %d, "
                         "not %g", h[i], i, n, self->rank, want);
            goto done;
        }
    double t0 = s_ms_now();
    for (int it = 0; it < iters && !rc; it++) rc = dist_allreduce_sum_device(self, d, n, err);
    if (!rc && iters > 0) *ms = (s_ms_now() - t0) / iters;
done:
    if (d) cudaFree(d);
    free(h);
    return rc;
}

#else /* no NCCL in this build: the same API over MPI, or a refusal */

static void s_nccl_free(dist_t *self) { (void)self; }

int dist_init_nccl(dist_t *self, char *err)
{
    (void)self;
    (void)err;
    return ST_OK;
}

int dist_has_nccl(const dist_t *self)
{
    (void)self;
    return 0;
}

int dist_allreduce_step_f64(dist_t *self, double *buf, size_t n, size_t n_exact, char *err)
{
    (void)n_exact;
    return dist_allreduce_sum_f64(self, buf, n, err);
}

int dist_allreduce_step_device(dist_t *self, float *device_grad, size_t ng, double *buf, size_t n, size_t n_exact,
                               char *err)
{
    return dist_allreduce_step_device_q(self, device_grad, ng, NULL, 0, buf, n, n_exact, err);
}

int dist_allreduce_step_device_q(dist_t *self, float *device_grad, size_t ng, double *device_q, size_t nq,
                                 double *buf, size_t n, size_t n_exact, char *err)
{
    (void)device_grad, (void)ng, (void)device_q, (void)nq, (void)buf, (void)n, (void)n_exact;
    if (!self || self->size == 1) return ST_OK;
    return st_fail(err, ST_EUNSUPPORTED, "this build has no NCCL, so a GPU group cannot sum device buffers");
}

int dist_allreduce_sum_device(dist_t *self, float *device_buf, size_t n, char *err)
{
    (void)device_buf;
    (void)n;
    if (!self || self->size == 1) return ST_OK;
    return st_fail(err, ST_EUNSUPPORTED, "this build has no NCCL, so a GPU group cannot sum device buffers");
}

void dist_last_allreduce_ms(const dist_t *self, double *copy_ms, double *nccl_ms)
{
    (void)self;
    *copy_ms = 0;
    *nccl_ms = 0;
}

int dist_device_allreduce_check(dist_t *self, size_t n, int iters, double *ms, char *err)
{
    (void)n;
    (void)iters;
    *ms = 0;
    if (!self || self->size == 1) return ST_OK;
    return st_fail(err, ST_EUNSUPPORTED, "this build has no NCCL, so a GPU group cannot sum device buffers");
}

#endif /* STATETUNE_HAVE_NCCL */

void dist_abort(dist_t *self, int code, const char *msg)
{
    if (!self || !self->mpi || self->size == 1) return;
    if (msg && *msg) fprintf(stderr, "statetune-worker: rank %d: %s\n", self->rank, msg);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
    _exit(code ? code : 1);
}
