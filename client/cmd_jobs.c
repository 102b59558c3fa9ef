/*
 * cmd_jobs.c - the job commands of the client (SPEC section 2.1):
 *
 *   statetune [--endpoint E] status JOB [--json]
 *   statetune [--endpoint E] wait JOB [--timeout S]   exit 0 succeeded, 1 failed or cancelled
 *   statetune [--endpoint E] watch JOB                live progress bar (plain lines when not a tty)
 *   statetune [--endpoint E] cancel JOB
 *   statetune [--endpoint E] jobs [--json]
 *   statetune [--endpoint E] events JOB [--json] [--since N]
 *
 * wait and watch poll the coordinator twice a second; the coordinator keeps
 * no per-client state, so any number of watchers cost one request each per
 * poll and survive a coordinator restart shorter than the request timeout.
 */
#include "client/cmd_service.h"
#include "common/st_time.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POLL_US 500000   /* wait/watch poll interval */
#define BAR_WIDTH 24     /* progress bar cells */

/* Parses the options every job command shares; positional arguments land in
 * pos (at most npos_max). Returns -1 on a usage error (printed), 1 for
 * --help (printed), 0 otherwise. extra handles command-specific options. */
static int s_parse(int argc, char **argv, const char *usage, cmd_conn_opts_t *o, const char **pos, int npos_max,
                   int *npos, double *timeout_s, int64_t *since)
{
    *npos = 0;
    for (int i = 1; i < argc; i++) {
        int r = cmd_conn_option(o, argc, argv, &i);
        if (r < 0) return -1;
        if (r) continue;
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 1;
        }
        if (timeout_s && !strcmp(a, "--timeout") && i + 1 < argc) {
            char *end;
            *timeout_s = strtod(argv[++i], &end);
            if (*end || !(*timeout_s > 0)) {
                fprintf(stderr, "statetune: --timeout must be a positive number of seconds, got '%s'\n", argv[i]);
                return -1;
            }
            continue;
        }
        if (since && !strcmp(a, "--since") && i + 1 < argc) {
            *since = strtoll(argv[++i], NULL, 10);
            continue;
        }
        if (a[0] == '-' || *npos >= npos_max) {
            fprintf(stderr, "statetune: %s: unexpected argument '%s'\n%s", argv[0], a, usage);
            return -1;
        }
        pos[(*npos)++] = a;
    }
    return 0;
}

/* What every command on one job starts with: its options (s_parse), JOB as
 * the one positional argument, and the connection. Returns 1 with *id and
 * *c set; 0 when the command ends here with *exit_status (--help: 0; a usage
 * error: 2; no connection: 1; the sentence printed). */
static int s_job_start(int argc, char **argv, const char *usage, const char *endpoint, cmd_conn_opts_t *o,
                       double *timeout_s, int64_t *since, int64_t *id, statetune_client_t **c, int *exit_status)
{
    const char *pos[1];
    int npos, r = s_parse(argc, argv, usage, o, pos, 1, &npos, timeout_s, since);
    *exit_status = r < 0 ? 2 : 0;
    if (r) return 0;
    *exit_status = 2;
    if (npos != 1) {
        fputs(usage, stderr);
        return 0;
    }
    if ((*id = cmd_job_id(pos[0])) < 0) return 0;
    *exit_status = 1;
    *c = cmd_connect(endpoint, o);
    return *c != NULL;
}

static void s_fmt_eta(double s, char *buf, size_t n)
{
    if (!(s >= 0) || s > 1e7) {
        snprintf(buf, n, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else
        snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static const char *s_str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

static int s_terminal(const char *status)
{
    return !strcmp(status, "succeeded") || !strcmp(status, "failed") || !strcmp(status, "cancelled");
}

/* Fetches one job record; NULL (error printed) on failure. */
static json_t *s_get_job(statetune_client_t *c, const cmd_conn_opts_t *o, int64_t id)
{
    json_t *req = json_pack("{s:s, s:I}", "type", "status", "job", (json_int_t)id), *rep = NULL;
    int rc = cmd_request(c, o, req, &rep, NULL, NULL);
    json_decref(req);
    if (rc) return NULL;
    json_t *job = json_incref(json_object_get(rep, "job"));
    json_decref(rep);
    if (!json_is_object(job)) {
        json_decref(job);
        fprintf(stderr, "statetune: the coordinator's reply has no job record\n");
        return NULL;
    }
    return job;
}

/* One poll of wait/watch. A coordinator that does not answer (restarting,
 * say) is retried for up to OUTAGE_S before giving up; each poll waits only
 * POLL_REQUEST_MS, as a request sent just before a restart is lost for good.
 * Returns ST_OK with *rep, ST_EBUSY for "poll again", else the error
 * (printed). */
#define OUTAGE_S 60.0
#define POLL_REQUEST_MS 3000

static int s_poll(statetune_client_t *c, const cmd_conn_opts_t *o, json_t *req, json_t **rep, double *outage_t0)
{
    char err[ST_ERR_LEN];
    int timeout = o->timeout_ms > 0 ? o->timeout_ms : POLL_REQUEST_MS;
    int rc = statetune_client_request(c, req, NULL, 0, timeout, rep, NULL, NULL, err);
    if (rc == ST_OK) {
        if (*outage_t0 > 0) fprintf(stderr, "statetune: the coordinator answers again\n");
        *outage_t0 = 0;
        return ST_OK;
    }
    if (rc != ST_ENET) {
        fprintf(stderr, "statetune: %s\n", err);
        return rc;
    }
    double now = st_mono_s();
    if (*outage_t0 == 0) {
        *outage_t0 = now;
        fprintf(stderr, "statetune: the coordinator does not answer; retrying for up to %.0f s\n", OUTAGE_S);
    }
    if (now - *outage_t0 >= OUTAGE_S) {
        fprintf(stderr, "statetune: %s\n", err);
        return rc;
    }
    return ST_EBUSY;
}

/* ---- status --------------------------------------------------------------- */

static const char *const s_status_usage = "usage: statetune [--endpoint E] status JOB [--json]\n";

int cmd_status(int argc, char **argv, const char *endpoint)
{
    cmd_conn_opts_t o = {0};
    int64_t id;
    statetune_client_t *c;
    int exit_status;
    if (!s_job_start(argc, argv, s_status_usage, endpoint, &o, NULL, NULL, &id, &c, &exit_status)) return exit_status;
    json_t *job = s_get_job(c, &o, id);
    statetune_client_destroy(&c);
    if (!job) return 1;
    if (o.json) {
        client_print_json(job);
    } else {
        char created[32], started[32], finished[32];
        client_format_json_time(json_object_get(job, "created"), created, sizeof created);
        client_format_json_time(json_object_get(job, "started"), started, sizeof started);
        client_format_json_time(json_object_get(job, "finished"), finished, sizeof finished);
        printf("job       %" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(job, "id")));
        printf("name      %s\n", s_str(job, "name"));
        printf("status    %s%s\n", s_str(job, "status"),
               json_is_true(json_object_get(job, "cancel_requested")) ? " (cancel requested)" : "");
        printf("priority  %" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(job, "priority")));
        printf("gpus      %" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(job, "gpus")));
        printf("group     %s\n", s_str(job, "worker_group"));
        printf("attempt   %" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(job, "attempt")));
        printf("created   %s\nstarted   %s\nfinished  %s\n", created, started, finished);
        if (json_object_get(job, "step")) {
            char eta[32];
            s_fmt_eta(json_number_value(json_object_get(job, "eta_s")), eta, sizeof eta);
            printf("progress  step %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT ", loss %.4f, %.0f tokens/s, ETA %s\n",
                   json_integer_value(json_object_get(job, "step")), json_integer_value(json_object_get(job, "steps")),
                   json_number_value(json_object_get(job, "loss")),
                   json_number_value(json_object_get(job, "tokens_per_s")), eta);
        }
        const char *e = json_string_value(json_object_get(job, "error"));
        if (e && *e) printf("error     %s\n", e);
        const char *w = json_string_value(json_object_get(job, "waiting"));
        if (w) printf("waiting   %s\n", w);
    }
    json_decref(job);
    return cmd_finish(0);
}

/* ---- wait ----------------------------------------------------------------- */

static const char *const s_wait_usage =
    "usage: statetune [--endpoint E] wait JOB [--timeout S]\n"
    "Waits until the job ends: exit 0 when it succeeded, 1 when it failed or was cancelled (or on timeout).\n";

/* Exit status for a finished job, with its end reported on stderr. */
static int s_final(json_t *job)
{
    const char *st = s_str(job, "status");
    json_int_t id = json_integer_value(json_object_get(job, "id"));
    if (!strcmp(st, "succeeded")) return 0;
    const char *e = json_string_value(json_object_get(job, "error"));
    fprintf(stderr, "statetune: job %" JSON_INTEGER_FORMAT " %s%s%s\n", id, st, e && *e ? ": " : "", e && *e ? e : "");
    return 1;
}

int cmd_wait(int argc, char **argv, const char *endpoint)
{
    cmd_conn_opts_t o = {0};
    double timeout = 0;
    int64_t id;
    statetune_client_t *c;
    int exit_status;
    if (!s_job_start(argc, argv, s_wait_usage, endpoint, &o, &timeout, NULL, &id, &c, &exit_status)) return exit_status;
    double t0 = st_mono_s(), outage = 0;
    int status = 1;
    for (;;) {
        json_t *req = json_pack("{s:s, s:I}", "type", "status", "job", (json_int_t)id), *rep = NULL;
        int rc = s_poll(c, &o, req, &rep, &outage);
        json_decref(req);
        if (rc != ST_OK && rc != ST_EBUSY) break;
        if (rc == ST_EBUSY) {
            if (timeout > 0 && st_mono_s() - t0 >= timeout) {
                fprintf(stderr, "statetune: job %" PRId64 " did not end within %.0f s\n", id, timeout);
                break;
            }
            usleep(POLL_US);
            continue;
        }
        json_t *job = json_incref(json_object_get(rep, "job"));
        json_decref(rep);
        if (!json_is_object(job)) {
            json_decref(job);
            fprintf(stderr, "statetune: the coordinator's reply has no job record\n");
            break;
        }
        char st[32];
        snprintf(st, sizeof st, "%s", s_str(job, "status"));
        if (s_terminal(st)) {
            status = s_final(job);
            if (status == 0) printf("%" PRId64 " succeeded\n", id);
            json_decref(job);
            break;
        }
        json_decref(job);
        if (timeout > 0 && st_mono_s() - t0 >= timeout) {
            fprintf(stderr, "statetune: job %" PRId64 " is still %s after %.0f s\n", id, st, timeout);
            break;
        }
        usleep(POLL_US);
    }
    statetune_client_destroy(&c);
    return cmd_finish(status);
}

/* ---- watch ---------------------------------------------------------------- */

static const char *const s_watch_usage =
    "usage: statetune [--endpoint E] watch JOB\n"
    "Shows the job's progress (step, loss, tokens/s, ETA) until it ends; exit status as for wait.\n";

static void s_show_event(json_t *ev, int tty, int *bar_shown)
{
    const char *kind = s_str(ev, "kind");
    json_t *d = json_object_get(ev, "data");
    if (json_is_string(d)) { /* stored as text: decode for display */
        json_error_t jerr;
        json_t *p = json_loads(json_string_value(d), 0, &jerr);
        if (p) {
            json_object_set_new(ev, "data", p);
            d = p;
        }
    }
    if (!strcmp(kind, "progress")) {
        json_int_t step = json_integer_value(json_object_get(d, "step"));
        json_int_t steps = json_integer_value(json_object_get(d, "steps"));
        double loss = json_number_value(json_object_get(d, "loss"));
        double tps = json_number_value(json_object_get(d, "tokens_per_s"));
        char eta[32];
        s_fmt_eta(json_number_value(json_object_get(d, "eta_s")), eta, sizeof eta);
        if (tty) {
            int fill = steps > 0 ? (int)(BAR_WIDTH * step / steps) : 0;
            char bar[BAR_WIDTH + 1];
            for (int i = 0; i < BAR_WIDTH; i++) bar[i] = i < fill ? '#' : '.';
            bar[BAR_WIDTH] = 0;
            printf("\r[%s] step %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT "  loss %.4f  %.0f tok/s  ETA %s   ",
                   bar, step, steps, loss, tps, eta);
            *bar_shown = 1;
        } else {
            printf("step %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT " loss %.4f tokens/s %.0f eta %s\n", step,
                   steps, loss, tps, eta);
        }
        fflush(stdout);
        return;
    }
    if (*bar_shown) {
        putchar('\n');
        *bar_shown = 0;
    }
    json_int_t step = json_integer_value(json_object_get(d, "step"));
    if (!strcmp(kind, "message") && json_is_string(json_object_get(d, "message"))) {
        printf("%s\n", json_string_value(json_object_get(d, "message")));
    } else if (!strcmp(kind, "eval")) {
        json_t *m = json_object_get(d, "metrics"), *b = json_object_get(m, "baseline");
        printf("eval @ step %" JSON_INTEGER_FORMAT ": loss %.4f (untuned %.4f), accuracy %.3f\n", step,
               json_number_value(json_object_get(m, "eval_loss")), json_number_value(json_object_get(b, "eval_loss")),
               json_number_value(json_object_get(m, "accuracy")));
    } else if (!strcmp(kind, "checkpoint")) {
        printf("checkpoint @ step %" JSON_INTEGER_FORMAT "\n", step);
    } else if (!strcmp(kind, "result")) {
        printf("registered %s@%" JSON_INTEGER_FORMAT "\n", s_str(d, "name"),
               json_integer_value(json_object_get(d, "version")));
    } else {
        char *t = json_dumps(d, JSON_COMPACT);
        printf("%s %s\n", kind, t ? t : "");
        free(t);
    }
    fflush(stdout);
}

int cmd_watch(int argc, char **argv, const char *endpoint)
{
    cmd_conn_opts_t o = {0};
    int64_t id;
    statetune_client_t *c;
    int exit_status;
    if (!s_job_start(argc, argv, s_watch_usage, endpoint, &o, NULL, NULL, &id, &c, &exit_status)) return exit_status;
    int tty = isatty(STDOUT_FILENO);
    int bar = 0, status = 1;
    int64_t since = 0;
    const char *last_status = "";
    char last_buf[32] = "";
    double outage = 0;
    for (;;) {
        json_t *req = json_pack("{s:s, s:I, s:I}", "type", "watch", "job", (json_int_t)id, "since", (json_int_t)since);
        json_t *rep = NULL;
        int rc = s_poll(c, &o, req, &rep, &outage);
        json_decref(req);
        if (rc == ST_EBUSY) {
            usleep(POLL_US);
            continue;
        }
        if (rc) break;
        size_t i;
        json_t *ev;
        json_array_foreach(json_object_get(rep, "events"), i, ev) s_show_event(ev, tty, &bar);
        json_t *n = json_object_get(rep, "next");
        if (json_is_integer(n)) since = json_integer_value(n);
        json_t *job = json_object_get(rep, "job");
        const char *st = s_str(job, "status");
        if (strcmp(st, last_status) != 0) {
            if (bar) {
                putchar('\n');
                bar = 0;
            }
            printf("job %" PRId64 ": %s\n", id, st);
            snprintf(last_buf, sizeof last_buf, "%s", st);
            last_status = last_buf;
        }
        if (s_terminal(st)) {
            status = s_final(job);
            json_decref(rep);
            break;
        }
        json_decref(rep);
        fflush(stdout);
        usleep(POLL_US);
    }
    if (bar) putchar('\n');
    statetune_client_destroy(&c);
    return cmd_finish(status);
}

/* ---- cancel --------------------------------------------------------------- */

static const char *const s_cancel_usage = "usage: statetune [--endpoint E] cancel JOB\n";

int cmd_cancel(int argc, char **argv, const char *endpoint)
{
    cmd_conn_opts_t o = {0};
    int64_t id;
    statetune_client_t *c;
    int exit_status;
    if (!s_job_start(argc, argv, s_cancel_usage, endpoint, &o, NULL, NULL, &id, &c, &exit_status)) return exit_status;
    json_t *req = json_pack("{s:s, s:I}", "type", "cancel", "job", (json_int_t)id), *rep = NULL;
    int rc = cmd_request(c, &o, req, &rep, NULL, NULL);
    json_decref(req);
    statetune_client_destroy(&c);
    if (rc) return 1;
    if (o.json)
        client_print_json(rep);
    else if (json_is_true(json_object_get(rep, "cancel_requested")))
        printf("%" PRId64 " cancelling (its worker group stops within a few seconds)\n", id);
    else
        printf("%" PRId64 " cancelled\n", id);
    json_decref(rep);
    return cmd_finish(0);
}

/* ---- jobs ----------------------------------------------------------------- */

static const char *const s_jobs_usage =
    "usage: statetune [--endpoint E] jobs [--json] [--all]\n"
    "Lists the newest 500 jobs (--all: every job).\n";

int cmd_jobs(int argc, char **argv, const char *endpoint)
{
    cmd_conn_opts_t o = {0};
    const char *pos[1];
    int all = 0;
    for (int i = 1; i < argc; i++) /* --all is this command's own; s_parse sees the rest */
        if (!strcmp(argv[i], "--all")) {
            all = 1;
            for (int k = i; k + 1 < argc; k++) argv[k] = argv[k + 1];
            argc--;
            i--;
        }
    int npos, r = s_parse(argc, argv, s_jobs_usage, &o, pos, 0, &npos, NULL, NULL);
    if (r) return r < 0 ? 2 : 0;
    statetune_client_t *c = cmd_connect(endpoint, &o);
    if (!c) return 1;
    json_t *req = json_pack("{s:s, s:i}", "type", "jobs", "limit", all ? 0 : 500), *rep = NULL;
    int rc = cmd_request(c, &o, req, &rep, NULL, NULL);
    json_decref(req);
    statetune_client_destroy(&c);
    if (rc) return 1;
    json_t *jobs = json_object_get(rep, "jobs");
    if (o.json) {
        client_print_json(jobs);
    } else {
        printf("%6s  %-10s %4s %4s  %-24s %-19s %-11s %s\n", "ID", "STATUS", "PRI", "GPUS", "NAME", "CREATED", "STEP",
               "GROUP");
        size_t i;
        json_t *j;
        json_array_foreach(jobs, i, j)
        {
            char created[32], step[32] = "-";
            client_format_json_time(json_object_get(j, "created"), created, sizeof created);
            if (json_object_get(j, "step"))
                snprintf(step, sizeof step, "%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
                         json_integer_value(json_object_get(j, "step")), json_integer_value(json_object_get(j, "steps")));
            printf("%6" JSON_INTEGER_FORMAT "  %-10s %4" JSON_INTEGER_FORMAT " %4" JSON_INTEGER_FORMAT
                   "  %-24s %-19s %-11s %s\n",
                   json_integer_value(json_object_get(j, "id")), s_str(j, "status"),
                   json_integer_value(json_object_get(j, "priority")), json_integer_value(json_object_get(j, "gpus")),
                   s_str(j, "name"), created, step, s_str(j, "worker_group"));
        }
    }
    json_decref(rep);
    return cmd_finish(0);
}

/* ---- events --------------------------------------------------------------- */

static const char *const s_events_usage = "usage: statetune [--endpoint E] events JOB [--json] [--since N]\n";

int cmd_events(int argc, char **argv, const char *endpoint)
{
    cmd_conn_opts_t o = {0};
    int64_t since = 0;
    int64_t id;
    statetune_client_t *c;
    int exit_status;
    if (!s_job_start(argc, argv, s_events_usage, endpoint, &o, NULL, &since, &id, &c, &exit_status)) return exit_status;
    json_t *req = json_pack("{s:s, s:I, s:I}", "type", "events", "job", (json_int_t)id, "since", (json_int_t)since);
    json_t *rep = NULL;
    int rc = cmd_request(c, &o, req, &rep, NULL, NULL);
    json_decref(req);
    statetune_client_destroy(&c);
    if (rc) return 1;
    json_t *events = json_object_get(rep, "events");
    if (o.json) {
        client_print_json(events);
    } else {
        size_t i;
        json_t *ev;
        json_array_foreach(events, i, ev)
        {
            char t[32];
            client_format_json_time(json_object_get(ev, "time"), t, sizeof t);
            json_t *d = json_object_get(ev, "data");
            char *text = json_is_string(d) ? strdup(json_string_value(d)) : json_dumps(d, JSON_COMPACT);
            printf("%5" JSON_INTEGER_FORMAT "  %-19s %-10s %s\n", json_integer_value(json_object_get(ev, "seq")), t,
                   s_str(ev, "kind"), text ? text : "");
            free(text);
        }
    }
    json_decref(rep);
    return cmd_finish(0);
}
