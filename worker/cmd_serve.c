/*
 * cmd_serve.c - worker-group mode (SPEC sections 2.1, 6, 7; docs/protocol.md):
 *
 *   mpirun -np N statetune-worker --coordinator ENDPOINT [--backend cpu|cuda]
 *          [--curve-public FILE --curve-secret FILE --server-key FILE]
 *          [--coordinator-timeout S] [--threads N]
 *
 * Every rank runs the same loop. Rank 0 decides what the group does next and
 * broadcasts it as one small JSON command (dist_bcast_string):
 *
 *   {"op":"idle"}                        nothing to do; ask again
 *   {"op":"job", "job":id, "spec":..., "out_dir":...}   every rank runs tune_run
 *   {"op":"exit", "error":...}           the coordinator is gone: stop
 *
 * Rank 0 keeps every wait short (a request times out after a few seconds and
 * the group goes round again), so no rank sits in one collective longer than
 * the dist watchdog allows, and a coordinator restart is ridden out.
 *
 * Rank 0 talks to the coordinator through serve_link (a thread that owns the
 * socket and keeps heartbeats going while tune_run computes). Its tune_run
 * callbacks forward progress, evaluations and checkpoints as notifications
 * and poll the link's cancel flag once per step, so a cancelled job stops
 * within a step or two (SPEC: 5 s). The result (the state's fp32 bytes and
 * metrics.json; for a kernel-expanded state also U0 and its support vectors
 * from DIR/kstate.safetensors, after S0 in the same payload) or the failure
 * is then sent until the coordinator answers.
 *
 * Checkpoints go to the directory the coordinator names for the job
 * (<jobs dir>/<id>); tune_run resumes from the checkpoint it finds there, so
 * a job that another group had to give up continues where it stopped. All
 * groups must therefore see that directory at the same path (a shared
 * filesystem; docs/protocol.md).
 */
#include "worker/cmd.h"
#include "common/st_log.h"

#include "common/st_err.h"
#include "common/st_fs.h"
#include "data/jobspec.h"
#include "engine/tune.h"
#include "store/state_formats.h"
#include "worker/dist.h"
#include "worker/serve_link.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_MS 5000        /* one request's wait; then the group goes round again */
#define IDLE_US 500000         /* pause between asks for work */
#define DEFAULT_TIMEOUT_S 60.0 /* coordinator silence that ends the group */
#define IDLE_POLL_MS 20        /* how often idle ranks look for rank 0's next command */

static const char s_usage[] =
    "usage: mpirun -np N statetune-worker --coordinator ENDPOINT [--backend cpu|cuda]\n"
    "                        [--curve-public FILE --curve-secret FILE --server-key FILE]\n"
    "                        [--coordinator-timeout S] [--threads N]\n"
    "  --coordinator E          the coordinator's endpoint, e.g. tcp://10.0.0.5:5555\n"
    "  --backend B              cpu or cuda (default cpu); jobs asking for the other are not taken\n"
    "  --curve-public FILE      this group's public key (default: derived from the secret)\n"
    "  --curve-secret FILE      this group's secret key (statetune keys gen DIR/NAME)\n"
    "  --server-key FILE        the coordinator's public key\n"
    "  --coordinator-timeout S  give up after S seconds without a word from the coordinator (default 60)\n"
    "  --threads N              CPU threads per rank (default: all cores)\n"
    "Keys may also come from STATETUNE_CURVE_PUBLIC, STATETUNE_CURVE_SECRET and STATETUNE_SERVER_KEY.\n";

/* Rank 0's view of the job in progress (the callbacks' context). */
typedef struct {
    serve_link_t *link;    /* the line to the coordinator */
    int64_t job;           /* the job running */
} s_job_ctx_t;

/* A report that must reach the coordinator (result or failure), kept until
 * it does. */
typedef struct {
    json_t *msg;           /* the request, or NULL when nothing is pending */
    void *payload;         /* state bytes of a result, owned */
    size_t plen;
} s_pending_t;

static void s_log(const char *group, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_log(const char *group, const char *fmt, ...)
{
    char who[160];
    snprintf(who, sizeof who, "statetune-worker %s", group);
    va_list ap;
    va_start(ap, fmt);
    st_logv(stderr, who, fmt, ap);
    va_end(ap);
}

/* ---- callbacks (rank 0) ------------------------------------------------------ */

static void s_on_progress(void *ctx, int64_t step, int64_t steps, double loss, double tps, double eta_s, double lr)
{
    s_job_ctx_t *c = ctx;
    json_t *m = json_pack("{s:s, s:I, s:I, s:I, s:f, s:f, s:f, s:f}", "type", "progress", "job", (json_int_t)c->job,
                          "step", (json_int_t)step, "steps", (json_int_t)steps, "loss", loss, "tokens_per_s", tps,
                          "eta_s", eta_s, "lr", lr);
    char err[ST_ERR_LEN];
    if (m) serve_link_notify(c->link, m, err);
    json_decref(m);
}

static void s_on_eval(void *ctx, int64_t step, const char *eval_json)
{
    s_job_ctx_t *c = ctx;
    json_error_t jerr;
    json_t *metrics = json_loads(eval_json, 0, &jerr);
    json_t *m = json_pack("{s:s, s:I, s:I, s:o}", "type", "eval", "job", (json_int_t)c->job, "step",
                          (json_int_t)step, "metrics", metrics ? metrics : json_null());
    char err[ST_ERR_LEN];
    if (m) serve_link_notify(c->link, m, err);
    json_decref(m);
}

static void s_on_checkpoint(void *ctx, int64_t step, const char *path)
{
    s_job_ctx_t *c = ctx;
    json_t *m = json_pack("{s:s, s:I, s:I, s:s}", "type", "checkpoint", "job", (json_int_t)c->job, "step",
                          (json_int_t)step, "path", path);
    char err[ST_ERR_LEN];
    if (m) serve_link_notify(c->link, m, err);
    json_decref(m);
}

static int s_should_cancel(void *ctx)
{
    s_job_ctx_t *c = ctx;
    return serve_link_cancelled(c->link) || serve_link_lost(c->link);
}

/* ---- rank 0: deciding the next command ------------------------------------- */

static void s_pending_clear(s_pending_t *p)
{
    json_decref(p->msg);
    free(p->payload);
    memset(p, 0, sizeof *p);
}

/* Tries once to deliver the pending report; it is dropped when the
 * coordinator answers (ok, or a refusal, which is logged). */
static void s_pending_try(serve_link_t *link, const char *group, s_pending_t *p)
{
    json_t *rep = NULL;
    char err[ST_ERR_LEN];
    json_t *req = json_deep_copy(p->msg);
    if (!req) return;
    int rc = serve_link_request(link, req, p->payload, p->plen, REQUEST_MS, &rep, err);
    json_decref(req);
    if (rc == ST_EBUSY) { /* no answer yet: try again next round */
        usleep(IDLE_US / 2);
        return;
    }
    const char *type = json_string_value(json_object_get(p->msg, "type"));
    json_int_t job = json_integer_value(json_object_get(p->msg, "job"));
    if (rc == ST_OK && !strcmp(type, "result"))
        s_log(group, "job %lld: result registered as version %lld", (long long)job,
              (long long)json_integer_value(json_object_get(rep, "version")));
    else if (rc)
        s_log(group, "job %lld: the coordinator refused our %s: %s", (long long)job, type, err);
    json_decref(rep);
    s_pending_clear(p);
    /* Only now is the job no longer ours: until its report is in, a renewed
     * hello (after a coordinator restart) names it, so that the restarted
     * coordinator gives it back to us and accepts the report. */
    serve_link_set_job(link, 0);
}

/* Returns the command for the group (malloc'd JSON text). */
static char *s_next_command(serve_link_t *link, const char *group, const char *endpoint, double timeout_s,
                            s_pending_t *pending)
{
    json_t *cmd = NULL;
    if (serve_link_lost(link)) {
        char text[512];
        snprintf(text, sizeof text, "the coordinator at '%s' has not answered for %.0f s; giving up", endpoint,
                 timeout_s);
        cmd = json_pack("{s:s, s:s}", "op", "exit", "error", text);
    } else if (!serve_link_ready(link)) {
        usleep(IDLE_US / 2); /* the link is (re)introducing the group */
    } else if (pending->msg) {
        s_pending_try(link, group, pending);
    } else {
        json_t *req = json_pack("{s:s}", "type", "job_request"), *rep = NULL;
        char err[ST_ERR_LEN];
        int rc = serve_link_request(link, req, NULL, 0, REQUEST_MS, &rep, err);
        json_decref(req);
        json_t *job = json_object_get(rep, "job");
        if (rc == ST_OK && json_is_integer(job)) {
            json_t *spec = json_object_get(rep, "spec");
            const char *out_dir = json_string_value(json_object_get(rep, "out_dir"));
            char *spec_text = json_dumps(spec, JSON_COMPACT);
            if (spec_text && out_dir && json_is_object(spec))
                cmd = json_pack("{s:s, s:O, s:s, s:s, s:O}", "op", "job", "job", job, "spec", spec_text, "out_dir",
                                out_dir, "attempt", json_object_get(rep, "attempt"));
            free(spec_text);
            if (!cmd) s_log(group, "the coordinator's assignment is malformed: ignored");
        } else {
            if (rc && rc != ST_EBUSY) s_log(group, "asking for work: %s", err);
            usleep(IDLE_US);
        }
        json_decref(rep);
    }
    if (!cmd) cmd = json_pack("{s:s}", "op", "idle");
    char *text = cmd ? json_dumps(cmd, JSON_COMPACT) : NULL;
    json_decref(cmd);
    return text;
}

/* ---- every rank: running a job --------------------------------------------- */

/* Runs one job on every rank; on rank 0 fills *pending with what to report.
 * Returns nonzero when the group must end (a failure only some ranks saw, or
 * the coordinator being gone). */
static int s_run_job(dist_t *dist, serve_link_t *link, const char *group, json_t *cmd, int threads,
                     engine_backend_t backend, s_pending_t *pending)
{
    int root = dist_is_root(dist);
    int64_t job = json_integer_value(json_object_get(cmd, "job"));
    const char *spec_text = json_string_value(json_object_get(cmd, "spec"));
    const char *out_dir = json_string_value(json_object_get(cmd, "out_dir"));
    char err[ST_ERR_LEN] = "";
    jobspec_t *spec = NULL;
    char model_sha[65] = "";
    int rc = jobspec_parse_string(spec_text ? spec_text : "", "/", &spec, err);
    if (rc == ST_OK && !spec->model_path)
        rc = st_fail(err, ST_EINVAL, "job %lld names no model file (the coordinator should have resolved it)",
                     (long long)job);
    if (rc == ST_OK && !out_dir) rc = st_fail(err, ST_EFORMAT, "job %lld: the assignment names no out_dir", (long long)job);
    /* Every rank checks the inputs it is about to read (the coordinator did,
     * on its own filesystem; a node may lack a mount), and the group agrees
     * before computing. A failure here is the whole group's, so it is
     * reported and the group serves on; a failure inside tune_run that only
     * some ranks see can only end the group (below). */
    if (rc == ST_OK) rc = jobspec_check_inputs(spec, err);
    if (rc && !root) fprintf(stderr, "statetune-worker: rank %d: job %lld: %s\n", dist_rank(dist), (long long)job, err);
    double n_bad = rc ? 1.0 : 0.0;
    char aerr[ST_ERR_LEN];
    int arc = dist_allreduce_sum_f64(dist, &n_bad, 1, aerr);
    if (arc) {
        rc = arc;
        snprintf(err, sizeof err, "%s", aerr);
    } else if (rc == ST_OK && n_bad > 0) {
        rc = st_fail(err, ST_EIO, "job %lld: %.0f of the group's %d ranks could not read the job's inputs (is the "
                     "shared filesystem mounted on every node?); see their logs", (long long)job, n_bad,
                     dist_size(dist));
    }

    tune_result_t res;
    memset(&res, 0, sizeof res);
    int collective = 1;
    if (rc == ST_OK) {
        if (root) {
            s_log(group, "job %lld: starting (%s, %lld steps, out %s)", (long long)job, spec->name,
                  (long long)spec->steps, out_dir);
            serve_link_set_job(link, job);
        }
        s_job_ctx_t ctx = {link, job};
        tune_callbacks_t cb = {.ctx = &ctx,
                               .on_progress = s_on_progress,
                               .on_eval = s_on_eval,
                               .on_checkpoint = s_on_checkpoint,
                               .should_cancel = s_should_cancel};
        /* A first attempt starts afresh even if the folder holds a
         * checkpoint (left by a job of the same id in an older registry);
         * any later attempt resumes from what the earlier ones left. */
        json_int_t attempt = json_integer_value(json_object_get(cmd, "attempt"));
        tune_opts_t opts = {.out_dir = out_dir,
                            .dist = dist,
                            .backend = backend,
                            .resume = attempt > 1 ? TUNE_RESUME_AUTO : TUNE_RESUME_NEVER,
                            .threads = threads};
        collective = 0;
        rc = tune_run(spec, &opts, root ? &cb : NULL, &res, err);
        if (rc == ST_OK || rc == ST_ENUMERIC || rc == ST_ECANCELLED) collective = 1;
    }
    int end_group = 0;
    if (root) {
        int lost = serve_link_lost(link);
        /* The model's identity for the registry, hashed (streamed) after the
         * run: a 15 GB checkpoint takes a while, and the other ranks now wait
         * in the idle broadcast, which has no watchdog. */
        if (rc == ST_OK && res.state) rc = st_sha256_file(spec->model_path, model_sha, err);
        state_kstate_t ks = {0}; /* the kernel-expanded part, which goes into the registry too */
        if (rc == ST_OK && res.state && spec->kernel_state.features > 0) {
            char kp[4200];
            snprintf(kp, sizeof kp, "%s/kstate.safetensors", out_dir);
            rc = state_kstate_read(kp, res.n_layer, res.n_head, res.head_size, &ks, err);
            if (rc) st_wrap(err, rc, "job %lld: its kernel-expanded part: ", (long long)job);
        }
        if (rc == ST_OK && res.state) {
            size_t n = (size_t)res.n_layer * res.n_head * res.head_size * res.head_size;
            size_t nk = 2 * (size_t)res.n_layer * res.n_head * res.head_size * ks.M;
            json_error_t jerr;
            json_t *metrics = res.metrics_json ? json_loads(res.metrics_json, 0, &jerr) : NULL;
            pending->msg = json_pack("{s:s, s:I, s:i, s:i, s:i, s:s, s:o}", "type", "result", "job", (json_int_t)job,
                                     "layers", res.n_layer, "heads", res.n_head, "head_size", res.head_size,
                                     "model_sha256", model_sha, "metrics", metrics ? metrics : json_object());
            if (pending->msg && ks.M > 0) {
                json_object_set_new(pending->msg, "kernel_features", json_integer(ks.M));
                json_object_set_new(pending->msg, "kernel_gamma", json_real(ks.gamma));
            }
            pending->payload = malloc((n + nk) * sizeof(float));
            if (pending->payload) {
                memcpy(pending->payload, res.state, n * sizeof(float));
                if (nk) { /* S0, then U0 (L, H, N, M), then the support vectors (L, H, M, N) */
                    memcpy((float *)pending->payload + n, ks.u0, nk / 2 * sizeof(float));
                    memcpy((float *)pending->payload + n + nk / 2, ks.support, nk / 2 * sizeof(float));
                }
            }
            pending->plen = (n + nk) * sizeof(float);
            s_log(group, "job %lld: done, eval loss %.4f -> %.4f", (long long)job, res.eval_loss_before,
                  res.eval_loss_after);
            if (!pending->msg || !pending->payload) {
                s_pending_clear(pending);
                rc = st_fail(err, ST_ENOMEM, "out of memory for the result");
            }
        }
        state_kstate_free(&ks);
        if (rc == ST_ECANCELLED && lost) {
            end_group = 1; /* nobody to report to; the next round says why */
            serve_link_set_job(link, 0);
        } else if (rc) {
            int cancelled = rc == ST_ECANCELLED;
            s_log(group, "job %lld: %s%s", (long long)job, cancelled ? "cancelled" : "failed: ", cancelled ? "" : err);
            pending->msg = json_pack("{s:s, s:I, s:s, s:b}", "type", "failed", "job", (json_int_t)job, "error",
                                     cancelled ? "cancelled" : err, "cancelled", cancelled);
        }
        if (rc && !collective && dist_size(dist) > 1) {
            /* the other ranks may be waiting in a collective: report, then end all */
            if (pending->msg) s_pending_try(link, group, pending);
            end_group = 2;
        }
    } else if (rc && !collective) {
        fprintf(stderr, "statetune-worker: rank %d: job %lld: %s\n", dist_rank(dist), (long long)job, err);
        end_group = 2;
    }
    tune_result_clear(&res);
    jobspec_destroy(&spec);
    if (end_group == 2) dist_abort(dist, 1, "a rank failed outside the collective steps; the group ends");
    return end_group;
}

/* ---- the command ----------------------------------------------------------- */

int cmd_serve(int argc, char **argv)
{
    const char *endpoint = NULL, *backend = "cpu";
    statetune_client_opts_t curve = {0};
    double timeout_s = DEFAULT_TIMEOUT_S;
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cmd_help(a, s_usage)) return 0;
        if (i + 1 >= argc) {
            fprintf(stderr, "statetune-worker: unknown or incomplete option '%s'\n%s", a, s_usage);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--coordinator")) {
            endpoint = v;
        } else if (!strcmp(a, "--backend")) {
            backend = v;
        } else if (!strcmp(a, "--curve-public")) {
            curve.curve_public = v;
        } else if (!strcmp(a, "--curve-secret")) {
            curve.curve_secret = v;
        } else if (!strcmp(a, "--server-key")) {
            curve.server_key = v;
        } else if (!strcmp(a, "--coordinator-timeout")) {
            timeout_s = strtod(v, NULL);
            if (!(timeout_s >= 1 && timeout_s <= 86400)) {
                fprintf(stderr, "statetune-worker: --coordinator-timeout must be 1 to 86400 seconds\n");
                return 2;
            }
        } else if (!strcmp(a, "--threads")) {
            threads = atoi(v);
        } else {
            fprintf(stderr, "statetune-worker: unknown option '%s'\n%s", a, s_usage);
            return 2;
        }
    }
    if (!endpoint) {
        fprintf(stderr, "statetune-worker: --coordinator ENDPOINT is required\n%s", s_usage);
        return 2;
    }
    if (!cmd_backend_ok("statetune-worker", backend)) return 2;

    char err[ST_ERR_LEN] = "";
    dist_t *dist = cmd_dist_new(err);
    if (!dist) return 1;
    int root = dist_is_root(dist);
    char group[128] = "";
    serve_link_t *link = NULL;
    int status = 0;
    if (root) {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = 0;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(group, sizeof group, "%s-%d-%04lx", host, (int)getpid(), (unsigned long)(ts.tv_nsec & 0xffff));
        serve_link_opts_t lo = {.endpoint = endpoint,
                                .curve = curve,
                                .group = group,
                                .ranks = dist_size(dist),
                                .gpus = dist_size(dist),
                                .backend = backend,
                                .coordinator_timeout_s = timeout_s};
        link = serve_link_new(&lo, err);
        if (!link) {
            fprintf(stderr, "statetune-worker: %s\n", err);
            status = 1;
        } else {
            s_log(group, "%d rank%s (%s) serving %s", dist_size(dist), dist_size(dist) > 1 ? "s" : "", backend,
                  endpoint);
        }
    }
    s_pending_t pending = {0};
    engine_backend_t eb = !strcmp(backend, "cuda") ? ENGINE_CUDA : ENGINE_CPU;
    for (;;) {
        char *text = root ? (link ? s_next_command(link, group, endpoint, timeout_s, &pending) : NULL) : NULL;
        if (dist_bcast_string_idle(dist, &text, IDLE_POLL_MS, err)) { /* rank 0 failed to start: every rank stops */
            if (!root) status = 1;
            free(text);
            break;
        }
        json_error_t jerr;
        json_t *cmd = json_loads(text, 0, &jerr);
        free(text);
        const char *op = json_string_value(json_object_get(cmd, "op"));
        if (!op || !strcmp(op, "exit")) {
            const char *e = json_string_value(json_object_get(cmd, "error"));
            if (root) fprintf(stderr, "statetune-worker: %s\n", e ? e : "stopping");
            status = 1;
            json_decref(cmd);
            break;
        }
        if (!strcmp(op, "job") && s_run_job(dist, link, group, cmd, threads, eb, &pending)) {
            /* the coordinator went away mid-job: the next round says so and ends the group */
        }
        json_decref(cmd);
    }
    s_pending_clear(&pending);
    serve_link_destroy(&link);
    dist_destroy(&dist);
    return status;
}
