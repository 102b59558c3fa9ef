/*
 * cmd_tune.c - statetune-worker tune JOB.json --local --out DIR (SPEC 2.1):
 * one job on this machine, without a coordinator, also under mpirun.
 *
 *   statetune-worker tune JOB.json --local --out DIR [--backend cpu|cuda]
 *                         [--resume | --fresh] [--threads N] [--max-steps N]
 *
 * Rank 0 reads and validates the job (jobspec_check_inputs: no compute
 * happens before every input checks out), then broadcasts its canonical JSON
 * so that every rank tunes exactly the same spec. Rank 0 alone prints and
 * writes: a progress line per step on stderr (rewritten in place with \r when
 * stderr is a terminal, one line per step otherwise, so logs stay readable),
 * and DIR/state.safetensors + DIR/metrics.json at the end.
 *
 * Rerunning with the same --out resumes from DIR's checkpoint; --resume
 * insists on one, --fresh ignores it. Ctrl-C (SIGINT) or SIGTERM stops at the
 * next step boundary and leaves a checkpoint there. --max-steps stops early with a
 * checkpoint (as if interrupted), for tests and for splitting long jobs.
 *
 * Errors: one sentence on stderr and exit 1 (2 for usage). Under mpirun an
 * error that only one rank can see (a failed allocation, an engine error)
 * ends the whole group through dist_abort, so no rank is left waiting.
 */
#include "worker/cmd.h"

#include "common/st_err.h"
#include "data/jobspec.h"
#include "engine/tune.h"
#include "worker/dist.h"

#include <cblas.h>   /* defines: openblas_set_num_threads (GPU ranks' host threads) */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>     /* defines: omp_set_num_threads */
#endif

static const char s_usage[] =
    "usage: statetune-worker tune JOB.json --local --out DIR [--backend cpu|cuda] [--resume | --fresh]\n"
    "                             [--threads N] [--max-steps N]\n"
    "  --local        run without a coordinator (required; also under mpirun -np N)\n"
    "  --out DIR      where state.safetensors, metrics.json and the checkpoint go\n"
    "  --backend B    cpu or cuda (default: the job's \"backend\")\n"
    "  --resume       continue from DIR's checkpoint, failing if there is none\n"
    "                 (without it a checkpoint of the same job is resumed when present)\n"
    "  --fresh        start at step 0 even if DIR holds a checkpoint\n"
    "  --threads N    CPU threads per rank (default: all cores)\n"
    "  --max-steps N  stop after N steps with a checkpoint, as if interrupted\n"
    "Ctrl-C stops at the next step with a checkpoint; rerun with the same --out to continue.\n";

/* Set by SIGINT/SIGTERM: the loop stops at the next step boundary. */
static volatile sig_atomic_t s_stop_requested = 0;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop_requested = 1;
}

typedef struct {
    int tty;          /* stderr is a terminal: rewrite one line */
    int line_open;    /* a \r line is on screen without its newline */
} s_view_t;

static void s_fmt_time(double s, char *buf, size_t n)
{
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else
        snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static void s_progress(void *ctx, int64_t step, int64_t steps, double loss, double tps, double eta_s, double lr)
{
    s_view_t *v = ctx;
    char eta[32];
    s_fmt_time(eta_s, eta, sizeof eta);
    fprintf(stderr, "%sstep %lld/%lld  loss %.4f  %.0f tok/s  ETA %s  lr %.4g%s", v->tty ? "\r" : "",
            (long long)step, (long long)steps, loss, tps, eta, lr, v->tty ? "\033[K" : "\n");
    v->line_open = v->tty;
    fflush(stderr);
}

static void s_num(char *buf, size_t n, int digits, double x)
{
    if (isfinite(x))
        snprintf(buf, n, "%.*f", digits, x);
    else
        snprintf(buf, n, "-");
}

/* A number of a JSON object, NaN when absent or null. */
static double s_get(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static void s_eval(void *ctx, int64_t step, const char *json)
{
    s_view_t *v = ctx;
    /* the event is JSON for machines; people get the numbers that matter */
    json_t *o = json_loads(json, 0, NULL);
    char l[32], b[32], a[32], e[32];
    s_num(l, sizeof l, 4, s_get(o, "eval_loss"));
    s_num(b, sizeof b, 4, s_get(json_object_get(o, "baseline"), "eval_loss"));
    s_num(a, sizeof a, 3, s_get(o, "accuracy"));
    s_num(e, sizeof e, 3, s_get(o, "exact_match"));
    json_decref(o);
    fprintf(stderr, "%seval @ step %lld: loss %s (untuned %s)  accuracy %s  exact match %s\n",
            v->line_open ? "\n" : "", (long long)step, l, b, a, e);
    v->line_open = 0;
    fflush(stderr);
}

static int s_should_cancel(void *ctx)
{
    (void)ctx;
    return s_stop_requested;
}

/* Rank 0: read, resolve and validate the job; returns its canonical JSON or
 * NULL with err filled. */
static char *s_load_job(const char *path, char *err)
{
    jobspec_t *spec = NULL;
    if (jobspec_parse_file(path, &spec, err)) return NULL;
    char *json = NULL;
    if (spec->model_path && jobspec_set_model(spec, NULL, err)) goto out;
    if (!spec->model_path) {
        st_fail(err, ST_EINVAL, "job '%s' names the registered model '%s': --local needs a model file path",
                path, spec->model_name ? spec->model_name : "?");
        goto out;
    }
    if (jobspec_check_inputs(spec, err)) goto out;
    json = jobspec_to_json(spec);
    if (!json) st_fail(err, ST_ENOMEM, "out of memory");
out:
    jobspec_destroy(&spec);
    return json;
}

int cmd_tune(int argc, char **argv)
{
    const char *job = NULL, *out_dir = NULL, *backend = NULL;
    int local = 0, threads = 0;
    long long max_steps = 0;
    tune_resume_t resume = TUNE_RESUME_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cmd_help(a, s_usage)) return 0;
        if (!strcmp(a, "--local")) {
            local = 1;
        } else if (!strcmp(a, "--resume")) {
            resume = TUNE_RESUME_REQUIRE;
        } else if (!strcmp(a, "--fresh")) {
            resume = TUNE_RESUME_NEVER;
        } else if ((!strcmp(a, "--out") || !strcmp(a, "--backend") || !strcmp(a, "--threads") ||
                    !strcmp(a, "--max-steps")) && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(a, "--out")) {
                out_dir = v;
            } else if (!strcmp(a, "--backend")) {
                backend = v;
            } else {
                char *end;
                long long x = strtoll(v, &end, 10);
                if (*end || x < 0 || x > 1000000000) {
                    fprintf(stderr, "statetune-worker tune: %s wants a non-negative integer, got '%s'\n", a, v);
                    return 2;
                }
                if (!strcmp(a, "--threads"))
                    threads = (int)x;
                else
                    max_steps = x;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "statetune-worker tune: unknown or incomplete option '%s'\n%s", a, s_usage);
            return 2;
        } else if (!job) {
            job = a;
        } else {
            fprintf(stderr, "statetune-worker tune: one job file only ('%s' and '%s')\n%s", job, a, s_usage);
            return 2;
        }
    }
    if (!job || !out_dir || !local) {
        fprintf(stderr, "statetune-worker tune: %s\n%s",
                !job ? "no job file given" : !out_dir ? "--out DIR is required"
                                                      : "--local is required (the coordinator mode is "
                                                        "'statetune-worker --coordinator ENDPOINT')",
                s_usage);
        return 2;
    }
    if (backend && !cmd_backend_ok("statetune-worker tune", backend)) return 2;

    char err[ST_ERR_LEN] = "";
    dist_t *dist = cmd_dist_new(err);
    if (!dist) return 1;
    int root = dist_is_root(dist);
    int collective = 1; /* until the loop starts, every rank fails together */
    jobspec_t *spec = NULL;
    char *json = root ? s_load_job(job, err) : NULL;
    int rc = root && !json ? ST_EINVAL : ST_OK;
    int brc = dist_bcast_string(dist, &json, rc ? NULL : err);
    if (!rc) rc = brc;
    if (!rc) rc = jobspec_parse_string(json, NULL, &spec, err);
    free(json);
    if (!rc) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = s_on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);

        s_view_t view = {isatty(STDERR_FILENO), 0};
        tune_callbacks_t cb = {.ctx = &view, .on_progress = s_progress, .on_eval = s_eval,
                               .should_cancel = s_should_cancel};
        /* ranks sharing a node share its cores: one BLAS/OpenMP team each,
         * sized so that together they do not oversubscribe the machine */
        if (threads == 0 && dist_local_size(dist) > 1) {
            long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
            threads = ncpu > dist_local_size(dist) ? (int)(ncpu / dist_local_size(dist)) : 1;
        }
        engine_backend_t be = !strcmp(backend ? backend : spec->backend, "cuda") ? ENGINE_CUDA : ENGINE_CPU;
        if (be == ENGINE_CUDA) {
            /* a GPU rank's host work is small (DBP's 64 x 64 products of R,
             * the step's scalars): one OpenBLAS thread, since the products
             * are too small to split and every rank of the node would start
             * a pool of one thread per core; OpenMP gets the rank's share */
            openblas_set_num_threads(1);
#ifdef _OPENMP
            if (threads > 0) omp_set_num_threads(threads);
#endif
        }
        tune_opts_t opts = {.out_dir = out_dir,
                            .dist = dist,
                            .backend = be,
                            .resume = resume,
                            .threads = threads,
                            .max_steps = max_steps};
        tune_result_t res;
        collective = 0;
        rc = tune_run(spec, &opts, &cb, &res, err);
        if (view.line_open) fputc('\n', stderr);
        /* the loop's own stops (NaN, cancel) are seen by every rank alike */
        if (rc == ST_ENUMERIC || rc == ST_ECANCELLED) collective = 1;
        if (!rc && root) {
            if (res.finished) {
                printf("tuned '%s': %lld steps, eval loss %.4f -> %.4f (%+.1f%%), %.0f tokens/s\n", spec->name,
                       (long long)res.steps, res.eval_loss_before, res.eval_loss_after,
                       100.0 * (res.eval_loss_after - res.eval_loss_before) / res.eval_loss_before, res.tokens_per_s);
                printf("wrote %s/%s and %s/%s\n", out_dir, TUNE_STATE_FILE, out_dir, TUNE_METRICS_FILE);
            } else {
                printf("stopped after step %lld of the job, as asked; rerun with the same --out to continue\n",
                       (long long)res.steps);
            }
            if (fflush(stdout) != 0) rc = st_fail(err, ST_EIO, "could not write to stdout");
        }
        tune_result_clear(&res);
    }
    jobspec_destroy(&spec);
    if (rc) {
        /* other ranks stop with "rank 0 failed": only rank 0 has the reason */
        if (root || !collective) {
            if (dist_size(dist) > 1 && !root)
                fprintf(stderr, "statetune-worker: rank %d: %s\n", dist_rank(dist), err);
            else
                fprintf(stderr, "statetune-worker: %s\n", err);
        }
        if (!collective) dist_abort(dist, 1, NULL);
        dist_destroy(&dist);
        return 1;
    }
    dist_destroy(&dist);
    return 0;
}
