/*
 * cmd_report.c - `statetune [--endpoint E | --db FILE] report JOB -o FILE`:
 * one self-contained HTML page about a tuning job, for a person to read or
 * attach to a ticket (issue #9).
 *
 * The page holds inline CSS and inline SVG charts drawn here (no scripts, no
 * external resources, so it opens offline and in mail clients): train loss,
 * eval loss beside the untuned baseline, learning rate and tokens/s per step
 * (from the job's progress and eval events), the Frobenius norm of each
 * layer's tuned state (from the state the job registered), the metrics table
 * (tuned against baseline) and the job's spec and lineage.
 *
 * The data comes the same way in both modes: the job record and its events,
 * then the state named by the job's "result" event. Over the endpoint that is
 * the status, events, states_show and states_get requests; with --db the
 * registry file is read directly (read-only). Everything read is rendered
 * through one function, so both modes give the same page. Progress events are
 * thinned by the coordinator (a few a second), so the learning-rate and
 * tokens/s charts show the steps on record; the train loss of every step
 * comes from the result's metrics once the job has one. Every text that came
 * from the registry or the network is HTML-escaped. The file is written
 * atomically.
 */
#include "client/client.h"
#include "client/cmd_service.h"
#include "common/st_err.h"
#include "common/st_fs.h"
#include "store/registry.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const s_usage_line = "[--endpoint ENDPOINT | --db FILE] report JOB -o FILE.html";

/* main.c's command table names these. */
int cmd_report_remote(int argc, char **argv, const char *endpoint);
int cmd_report_local(int argc, char **argv, const char *db);

/* Everything the page shows; the JSON parts are borrowed from the reply or
 * registry objects and owned here (decref'd by s_data_free). */
typedef struct {
    int64_t id;
    json_t *job;    /* the job record */
    json_t *spec;   /* the job spec, or NULL when the source does not have it */
    json_t *events; /* [{seq, time, kind, data}] */
    json_t *state;  /* states_show of the job's state, or NULL */
    float *data;    /* the state, [L, H, N, N], or NULL */
    int layers, heads, head_size;
    char why_no_state[256]; /* shown when data is NULL */
} report_data_t;

static void s_data_free(report_data_t *d)
{
    json_decref(d->job);
    json_decref(d->spec);
    json_decref(d->events);
    json_decref(d->state);
    free(d->data);
    memset(d, 0, sizeof *d);
}

/* The data object of an event (stored as text when it was not JSON). */
static json_t *s_ev_data(json_t *ev)
{
    json_t *d = json_object_get(ev, "data");
    return json_is_object(d) ? d : NULL;
}

/* The registered state the job's result event names: "name@version", or 0. */
static int s_result_ref(json_t *events, char *ref, size_t n)
{
    size_t i;
    json_t *ev;
    int found = 0;
    json_array_foreach(events, i, ev)
    {
        const char *kind = json_string_value(json_object_get(ev, "kind"));
        json_t *d = s_ev_data(ev);
        if (!kind || strcmp(kind, "result") || !d) continue;
        const char *name = json_string_value(json_object_get(d, "name"));
        json_t *v = json_object_get(d, "version");
        if (!name || !json_is_integer(v)) continue;
        snprintf(ref, n, "%s@%lld", name, (long long)json_integer_value(v));
        found = 1;
    }
    return found;
}

/* ---- HTML helpers ---------------------------------------------------------- */

static void s_esc(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* Any JSON value as escaped text (strings without quotes). */
static void s_esc_json(FILE *f, json_t *v)
{
    if (!v || json_is_null(v)) {
        fputs("-", f);
        return;
    }
    if (json_is_string(v)) {
        s_esc(f, json_string_value(v));
        return;
    }
    char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    s_esc(f, t ? t : "?");
    free(t);
}

static void s_time_cell(FILE *f, json_t *v)
{
    char buf[40];
    double t = json_is_number(v) ? json_number_value(v) : 0;
    client_format_time(t, buf, sizeof buf);
    fprintf(f, "%s%s", buf, t > 0 ? " UTC" : "");
}

/* A tick label: short, no trailing zeros, readable for losses, rates and
 * tokens/s alike. */
static void s_fmt_tick(double v, double step, char *buf, size_t n)
{
    if (fabs(v) < step * 1e-6) v = 0;
    double a = fabs(v);
    if (a != 0 && (a >= 1e6 || a < 1e-3)) snprintf(buf, n, "%.2g", v);
    else if (step >= 1) snprintf(buf, n, "%.0f", v);
    else {
        int dec = (int)ceil(-log10(step) - 1e-9);
        if (dec > 6) dec = 6;
        snprintf(buf, n, "%.*f", dec, v);
    }
}

/* Nice tick spacing (1, 2 or 5 times a power of ten) for about 5 ticks. */
static double s_nice_step(double span)
{
    if (!(span > 0)) return 1;
    double raw = span / 5, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

/* ---- charts ----------------------------------------------------------------- */

#define CW 560
#define CH 300
#define ML 70
#define MR 20
#define MT 34
#define MB 48

typedef struct {
    const char *id, *title, *xlabel, *ylabel;
    const double *x, *y;
    int n;
    double baseline;      /* drawn as a dashed line when finite */
    const char *baseline_label;
    int bars;             /* 1: one bar per x (layers), else a polyline */
} chart_t;

static void s_chart(FILE *f, const chart_t *c)
{
    fprintf(f, "<figure class=\"chart\" id=\"%s\">\n", c->id);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "role=\"img\" aria-label=\"",
            CW, CH, CW, CH);
    s_esc(f, c->title);
    fputs("\">\n", f);
    fprintf(f, "<text class=\"title\" x=\"%d\" y=\"20\">", CW / 2);
    s_esc(f, c->title);
    fputs("</text>\n", f);
    int n_ok = 0;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int i = 0; i < c->n; i++) {
        if (!isfinite(c->x[i]) || !isfinite(c->y[i])) continue;
        n_ok++;
        x0 = fmin(x0, c->x[i]), x1 = fmax(x1, c->x[i]);
        y0 = fmin(y0, c->y[i]), y1 = fmax(y1, c->y[i]);
    }
    if (n_ok == 0) {
        fprintf(f, "<text class=\"empty\" x=\"%d\" y=\"%d\">no data recorded</text>\n</svg></figure>\n", CW / 2,
                CH / 2);
        return;
    }
    if (isfinite(c->baseline)) y0 = fmin(y0, c->baseline), y1 = fmax(y1, c->baseline);
    if (c->bars) {
        x0 -= 0.5, x1 += 0.5;
        y0 = fmin(y0, 0);
    }
    if (x1 - x0 <= 0) x0 -= 1, x1 += 1;
    if (y1 - y0 <= 0) {
        double pad = fabs(y0) > 0 ? fabs(y0) * 0.1 : 1;
        y0 -= pad, y1 += pad;
    }
    double ys = s_nice_step(y1 - y0);
    y0 = floor(y0 / ys) * ys, y1 = ceil(y1 / ys) * ys;
    double xs = c->bars ? fmax(1, s_nice_step(x1 - x0)) : s_nice_step(x1 - x0);
    if (!c->bars && xs < 1 && x1 - x0 >= 1) xs = 1; /* steps are integers */
    const double pw = CW - ML - MR, ph = CH - MT - MB;
#define PX(v) (ML + ((v) - x0) / (x1 - x0) * pw)
#define PY(v) (MT + ph - ((v) - y0) / (y1 - y0) * ph)
    char lab[48];
    fputs("<g class=\"grid\">\n", f);
    for (double v = y0; v <= y1 + ys * 1e-6; v += ys) {
        s_fmt_tick(v, ys, lab, sizeof lab);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\"/><text class=\"ytick\" x=\"%d\" y=\"%.1f\">%s</text>\n",
                ML, PY(v), CW - MR + 0.0, PY(v), ML - 6, PY(v) + 4, lab);
    }
    for (double v = ceil(x0 / xs) * xs; v <= x1 + xs * 1e-6; v += xs) {
        s_fmt_tick(v, xs, lab, sizeof lab);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.0f\"/><text class=\"xtick\" x=\"%.1f\" y=\"%.0f\">%s</text>\n",
                PX(v), MT, PX(v), MT + ph, PX(v), MT + ph + 16, lab);
    }
    fputs("</g>\n", f);
    fprintf(f, "<rect class=\"frame\" x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\"/>\n", ML, MT, pw, ph);
    fprintf(f, "<text class=\"xlabel\" x=\"%.0f\" y=\"%d\">", ML + pw / 2, CH - 8);
    s_esc(f, c->xlabel);
    fprintf(f, "</text>\n<text class=\"ylabel\" transform=\"translate(16 %.0f) rotate(-90)\">", MT + ph / 2);
    s_esc(f, c->ylabel);
    fputs("</text>\n", f);
    if (c->bars) {
        double bw = fmin(pw / (x1 - x0) * 0.7, 48); /* two layers should not look like a wall */
        for (int i = 0; i < c->n; i++) {
            if (!isfinite(c->x[i]) || !isfinite(c->y[i])) continue;
            double top = PY(c->y[i]), bottom = PY(fmax(y0, 0));
            fprintf(f, "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"><title>layer %.0f: %.6g</title></rect>\n",
                    PX(c->x[i]) - bw / 2, fmin(top, bottom), bw, fabs(bottom - top), c->x[i], c->y[i]);
        }
    } else {
        fprintf(f, "<polyline class=\"series\" data-points=\"%d\" points=\"", n_ok);
        for (int i = 0, k = 0; i < c->n; i++) {
            if (!isfinite(c->x[i]) || !isfinite(c->y[i])) continue;
            fprintf(f, "%s%.1f,%.1f", k++ ? " " : "", PX(c->x[i]), PY(c->y[i]));
        }
        fputs("\"/>\n", f);
        if (n_ok <= 60)
            for (int i = 0; i < c->n; i++)
                if (isfinite(c->x[i]) && isfinite(c->y[i]))
                    fprintf(f, "<circle class=\"dot\" cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\"><title>step %.0f: %.6g</title></circle>\n",
                            PX(c->x[i]), PY(c->y[i]), c->x[i], c->y[i]);
    }
    if (isfinite(c->baseline)) {
        fprintf(f, "<line class=\"baseline\" x1=\"%d\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\"/>\n", ML, PY(c->baseline),
                ML + pw, PY(c->baseline));
        fprintf(f, "<text class=\"baselabel\" x=\"%.0f\" y=\"%.1f\">", ML + pw - 4, PY(c->baseline) - 5);
        s_esc(f, c->baseline_label);
        fputs("</text>\n", f);
    }
#undef PX
#undef PY
    fputs("</svg></figure>\n", f);
}

/* Collects (step, data[key]) from the events of one kind; for eval events the
 * value sits under data.metrics. Returns the count (arrays malloc'd). */
static int s_series(json_t *events, const char *kind, const char *key, double **xs, double **ys)
{
    size_t n = json_array_size(events), i;
    *xs = calloc(n + 1, sizeof **xs);
    *ys = calloc(n + 1, sizeof **ys);
    if (!*xs || !*ys) return 0;
    int k = 0;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        const char *kd = json_string_value(json_object_get(ev, "kind"));
        json_t *d = s_ev_data(ev);
        if (!kd || strcmp(kd, kind) || !d) continue;
        json_t *src = !strcmp(kind, "eval") ? json_object_get(d, "metrics") : d;
        json_t *step = json_object_get(d, "step"), *v = json_object_get(src, key);
        if (!json_is_number(step) || !json_is_number(v)) continue;
        (*xs)[k] = json_number_value(step);
        (*ys)[k] = json_number_value(v);
        k++;
    }
    return k;
}

static void s_series_chart(FILE *f, json_t *events, const char *id, const char *kind, const char *key,
                           const char *title, const char *ylabel, double baseline, const char *blabel)
{
    double *x = NULL, *y = NULL;
    int n = s_series(events, kind, key, &x, &y);
    chart_t c = {.id = id, .title = title, .xlabel = "step", .ylabel = ylabel, .x = x, .y = y, .n = n,
                 .baseline = baseline, .baseline_label = blabel};
    s_chart(f, &c);
    free(x);
    free(y);
}

/* The last eval event's data.metrics, or NULL. */
static json_t *s_last_eval(json_t *events)
{
    json_t *last = NULL, *ev;
    size_t i;
    json_array_foreach(events, i, ev)
    {
        const char *kd = json_string_value(json_object_get(ev, "kind"));
        json_t *d = s_ev_data(ev);
        if (kd && !strcmp(kd, "eval") && d && json_is_object(json_object_get(d, "metrics")))
            last = json_object_get(d, "metrics");
    }
    return last;
}

/* The per-step train loss of the result's metrics when it covers every
 * step (an array as long as "steps"), else NULL. */
static json_t *s_result_train_loss(json_t *events)
{
    json_t *found = NULL, *ev;
    size_t i;
    json_array_foreach(events, i, ev)
    {
        const char *kd = json_string_value(json_object_get(ev, "kind"));
        json_t *m = json_object_get(s_ev_data(ev), "metrics");
        if (!kd || strcmp(kd, "result") || !json_is_object(m)) continue;
        json_t *tl = json_object_get(m, "train_loss"), *steps = json_object_get(m, "steps");
        if (json_is_array(tl) && json_is_integer(steps) && json_array_size(tl) > 0 &&
            (json_int_t)json_array_size(tl) == json_integer_value(steps))
            found = tl;
    }
    return found;
}

static void s_num_cell(FILE *f, json_t *v)
{
    if (json_is_number(v)) fprintf(f, "<td class=\"num\">%.4f</td>", json_number_value(v));
    else fputs("<td class=\"num\">-</td>", f);
}

static void s_metrics_table(FILE *f, const report_data_t *d)
{
    static const char *const names[] = {"eval_loss", "perplexity", "accuracy", "exact_match"};
    json_t *last = s_last_eval(d->events), *base = json_object_get(last, "baseline");
    json_t *reg = json_object_get(d->state, "metrics");
    fputs("<table class=\"metrics\" id=\"metrics\">\n<tr><th>metric</th><th>baseline (untuned)</th><th>tuned</th>"
          "<th>change</th></tr>\n",
          f);
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        json_t *val = NULL, *bv = NULL, *m;
        size_t i;
        /* the registered metrics are what the state carries; the last eval
         * event stands in while the job has registered nothing */
        json_array_foreach(reg, i, m)
        {
            if (json_is_string(json_object_get(m, "name")) &&
                !strcmp(json_string_value(json_object_get(m, "name")), names[k])) {
                val = json_object_get(m, "value");
                bv = json_object_get(m, "baseline");
            }
        }
        if (!val) {
            val = json_object_get(last, names[k]);
            bv = json_object_get(base, names[k]);
        }
        fprintf(f, "<tr><td>%s</td>", names[k]);
        s_num_cell(f, bv);
        s_num_cell(f, val);
        if (json_is_number(val) && json_is_number(bv) && json_number_value(bv) != 0)
            fprintf(f, "<td class=\"num\">%+.1f%%</td>",
                    100.0 * (json_number_value(val) - json_number_value(bv)) / fabs(json_number_value(bv)));
        else if (json_is_number(val) && json_is_number(bv)) /* from zero: the absolute change */
            fprintf(f, "<td class=\"num\">%+.4f</td>", json_number_value(val) - json_number_value(bv));
        else fputs("<td class=\"num\">-</td>", f);
        fputs("</tr>\n", f);
    }
    fputs("</table>\n", f);
}

static void s_row(FILE *f, const char *key, json_t *v)
{
    fprintf(f, "<tr><th>%s</th><td>", key);
    s_esc_json(f, v);
    fputs("</td></tr>\n", f);
}

static void s_spec_table(FILE *f, const report_data_t *d)
{
    json_t *job = d->job, *spec = d->spec, *st = d->state;
    fputs("<table class=\"spec\" id=\"spec\">\n", f);
    fprintf(f, "<tr><th>job</th><td>%lld</td></tr>\n", (long long)d->id);
    s_row(f, "name", json_object_get(job, "name"));
    s_row(f, "status", json_object_get(job, "status"));
    if (json_is_string(json_object_get(job, "error")) && *json_string_value(json_object_get(job, "error")))
        s_row(f, "error", json_object_get(job, "error"));
    static const char *const times[] = {"created", "started", "finished"};
    for (size_t k = 0; k < 3; k++) {
        fprintf(f, "<tr><th>%s</th><td>", times[k]);
        s_time_cell(f, json_object_get(job, times[k]));
        fputs("</td></tr>\n", f);
    }
    s_row(f, "attempt", json_object_get(job, "attempt"));
    json_t *group = json_object_get(job, "worker_group");
    s_row(f, "worker group", group ? group : json_object_get(job, "group"));
    json_t *model_sha = json_object_get(st, "model_sha256");
    if (!model_sha) {
        size_t i;
        json_t *ev;
        json_array_foreach(d->events, i, ev) /* the result's metrics carry it too */
        {
            json_t *dd = s_ev_data(ev);
            json_t *m = json_object_get(json_object_get(dd, "metrics"), "model_sha256");
            if (json_is_string(m)) model_sha = m;
        }
    }
    s_row(f, "model sha256", model_sha);
    if (json_is_object(spec)) {
        static const char *const keys[] = {"model", "tokenizer", "train", "eval", "steps", "epochs", "ctx_len",
                                           "micro_batch", "global_batch", "lr_init", "lr_final", "warmup_steps",
                                           "eval_every", "seed", "backend", "precision", "gpus", "alias"};
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            json_t *v = json_object_get(spec, keys[k]);
            if (v) s_row(f, keys[k], v);
        }
        static const char *const objs[] = {"dbp", "observer", "kernel_state"};
        for (size_t k = 0; k < 3; k++) {
            json_t *v = json_object_get(spec, objs[k]);
            if (json_is_object(v)) s_row(f, objs[k], v);
        }
    } else {
        fputs("<tr><th>spec</th><td>not available from this source (the job registered no state; "
              "--db FILE shows it)</td></tr>\n",
              f);
    }
    if (st) {
        fputs("<tr><th>state</th><td>", f);
        s_esc_json(f, json_object_get(st, "name"));
        fprintf(f, "@%lld, blob sha256 ", (long long)json_integer_value(json_object_get(st, "version")));
        s_esc_json(f, json_object_get(st, "blob_sha256"));
        fputs("</td></tr>\n", f);
    }
    fputs("</table>\n", f);
}

static const char s_css[] =
    "body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fff}"
    "h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 8px;border-bottom:1px solid #ddd}"
    ".sub{color:#666;font-size:13px}"
    ".charts{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;border:1px solid #e3e3e3;border-radius:4px}"
    "svg{display:block;font-size:12px}svg .title{font-size:14px;font-weight:600;text-anchor:middle;fill:#222}"
    "svg .grid line{stroke:#e8e8e8;stroke-width:1}svg .ytick{text-anchor:end;fill:#555}"
    "svg .xtick{text-anchor:middle;fill:#555}svg .xlabel,svg .ylabel{text-anchor:middle;fill:#333}"
    "svg .frame{fill:none;stroke:#999}svg .series{fill:none;stroke:#1f6fb2;stroke-width:2}"
    "svg .dot{fill:#1f6fb2}svg .bar{fill:#4a9a5b}svg .baseline{stroke:#c0392b;stroke-width:1.5;"
    "stroke-dasharray:6 4}svg .baselabel{text-anchor:end;fill:#c0392b}svg .empty{text-anchor:middle;fill:#999}"
    "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}.spec th{background:#f6f6f6;font-weight:600}"
    ".metrics th{background:#f6f6f6}.note{color:#8a6d3b;background:#fcf8e3;padding:8px;border:1px solid #faebcc}"
    "td{word-break:break-all;max-width:760px}";

static int s_render(FILE *f, const report_data_t *d)
{
    json_t *last = s_last_eval(d->events);
    json_t *base = json_object_get(last, "baseline");
    double base_loss = json_is_number(json_object_get(base, "eval_loss"))
                           ? json_number_value(json_object_get(base, "eval_loss"))
                           : NAN;
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>statetune job ", f);
    fprintf(f, "%lld: ", (long long)d->id);
    s_esc_json(f, json_object_get(d->job, "name"));
    fprintf(f, "</title>\n<style>%s</style></head><body>\n<h1>Job %lld: ", s_css, (long long)d->id);
    s_esc_json(f, json_object_get(d->job, "name"));
    fputs("</h1>\n<div class=\"sub\">status <b>", f);
    s_esc_json(f, json_object_get(d->job, "status"));
    char now[40];
    client_format_time((double)time(NULL), now, sizeof now);
    fprintf(f, "</b> &middot; report written %s UTC by statetune</div>\n", now);

    fputs("<h2>Metrics (untuned baseline vs tuned state)</h2>\n", f);
    s_metrics_table(f, d);

    fputs("<h2>Training</h2>\n<div class=\"charts\">\n", f);
    /* The train loss of every step is in the result's metrics (metrics.json
     * keeps it across resumes); before a result, the progress events on
     * record (the coordinator keeps a few a second) have to do. */
    json_t *tl = s_result_train_loss(d->events);
    if (tl) {
        size_t n = json_array_size(tl);
        double *x = calloc(n + 1, sizeof *x), *y = calloc(n + 1, sizeof *y);
        if (!x || !y) {
            free(x);
            free(y);
            return ST_ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
            x[i] = (double)(i + 1);
            y[i] = json_is_number(json_array_get(tl, i)) ? json_number_value(json_array_get(tl, i)) : NAN;
        }
        chart_t c = {.id = "train-loss", .title = "Train loss (every step)", .xlabel = "step", .ylabel = "loss",
                     .x = x, .y = y, .n = (int)n, .baseline = NAN};
        s_chart(f, &c);
        free(x);
        free(y);
    } else {
        s_series_chart(f, d->events, "train-loss", "progress", "loss", "Train loss", "loss", NAN, NULL);
    }
    s_series_chart(f, d->events, "eval-loss", "eval", "eval_loss", "Eval loss", "loss", base_loss,
                   "untuned baseline");
    s_series_chart(f, d->events, "lr", "progress", "lr", "Learning rate (steps on record)", "lr", NAN, NULL);
    s_series_chart(f, d->events, "tokens-per-s", "progress", "tokens_per_s", "Tokens per second (steps on record)",
                   "tokens/s", NAN, NULL);
    fputs("</div>\n", f);

    fputs("<h2>Tuned state</h2>\n", f);
    if (d->data) {
        double *x = calloc((size_t)d->layers, sizeof *x), *y = calloc((size_t)d->layers, sizeof *y);
        if (!x || !y) {
            free(x);
            free(y);
            return ST_ENOMEM;
        }
        size_t per = (size_t)d->heads * d->head_size * d->head_size;
        for (int l = 0; l < d->layers; l++) {
            double s = 0;
            for (size_t i = 0; i < per; i++) s += (double)d->data[l * per + i] * d->data[l * per + i];
            x[l] = l;
            y[l] = sqrt(s);
        }
        fprintf(f, "<div class=\"sub\">[%d, %d, %d, %d] fp32; the Frobenius norm of each layer's state (all heads)</div>\n",
                d->layers, d->heads, d->head_size, d->head_size);
        fputs("<div class=\"charts\">\n", f);
        chart_t c = {.id = "state-norms", .title = "State norm per layer", .xlabel = "layer",
                     .ylabel = "Frobenius norm", .x = x, .y = y, .n = d->layers, .baseline = NAN, .bars = 1};
        s_chart(f, &c);
        fputs("</div>\n", f);
        free(x);
        free(y);
    } else {
        fputs("<p class=\"note\" id=\"no-state\">", f);
        s_esc(f, d->why_no_state);
        fputs("</p>\n", f);
    }
    fputs("<h2>Job and lineage</h2>\n", f);
    s_spec_table(f, d);
    fputs("</body></html>\n", f);
    return ferror(f) ? ST_EIO : ST_OK;
}

static int s_write(const char *out, const report_data_t *d)
{
    char err[ST_ERR_LEN];
    st_atomic_file_t *af = st_atomic_file_new(out, err);
    if (!af) return client_error("%s", err);
    if (s_render(st_atomic_file_stream(af), d)) {
        st_atomic_file_destroy(&af);
        return client_error("writing the report to '%s' failed", out);
    }
    if (st_atomic_file_commit(&af, err)) return client_error("%s", err);
    printf("wrote the report of job %lld to %s\n", (long long)d->id, out);
    return CLIENT_OK;
}

/* The sentence the report shows in place of the state norms. */
static void s_no_state(report_data_t *d)
{
    const char *status = json_string_value(json_object_get(d->job, "status"));
    snprintf(d->why_no_state, sizeof d->why_no_state,
             "This job has no registered state yet (status %s), so there are no per-layer state norms.",
             status ? status : "unknown");
}

/* ---- arguments ---------------------------------------------------------------- */

/* Takes JOB and -o FILE; connection options go to o when it is not NULL. */
static int s_args(int argc, char **argv, cmd_conn_opts_t *o, int64_t *id, const char **out)
{
    const char *job = NULL;
    *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (o) {
            int r = cmd_conn_option(o, argc, argv, &i);
            if (r < 0) return CLIENT_USAGE;
            if (r) continue;
        }
        if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--output")) {
            if (++i >= argc) return client_usage_error(s_usage_line, "'-o' needs a file name");
            *out = argv[i];
        } else if (argv[i][0] == '-' || job) {
            return client_usage_error(s_usage_line, "unexpected argument '%s'", argv[i]);
        } else {
            job = argv[i];
        }
    }
    if (!job) return client_usage_error(s_usage_line, "which job? give its id");
    if (!*out) return client_usage_error(s_usage_line, "where to? give -o FILE.html");
    char *end;
    long long v = strtoll(job, &end, 10);
    if (*end || v <= 0) return client_usage_error(s_usage_line, "'%s' is not a job id", job);
    *id = v;
    return CLIENT_OK;
}

/* ---- over the endpoint ---------------------------------------------------------- */

int cmd_report_remote(int argc, char **argv, const char *endpoint)
{
    cmd_conn_opts_t o = {0};
    report_data_t d = {0};
    const char *out;
    int rc = s_args(argc, argv, &o, &d.id, &out);
    if (rc) return rc;
    statetune_client_t *c = cmd_connect(endpoint, &o);
    if (!c) return CLIENT_FAIL;
    int status = CLIENT_FAIL;
    json_t *req = json_pack("{s:s, s:I}", "type", "status", "job", (json_int_t)d.id), *rep = NULL;
    rc = cmd_request(c, &o, req, &rep, NULL, NULL);
    json_decref(req);
    if (rc) goto done;
    d.job = json_incref(json_object_get(rep, "job"));
    json_decref(rep);
    if (!json_is_object(d.job)) {
        client_error("the coordinator's reply has no job record");
        goto done;
    }
    /* events come in pages: ask again from "next" until no more arrive */
    d.events = json_array();
    for (int64_t since = 0;;) {
        req = json_pack("{s:s, s:I, s:I}", "type", "events", "job", (json_int_t)d.id, "since", (json_int_t)since);
        rep = NULL;
        rc = cmd_request(c, &o, req, &rep, NULL, NULL);
        json_decref(req);
        if (rc) goto done;
        json_t *evs = json_object_get(rep, "events"), *next = json_object_get(rep, "next");
        size_t n = json_array_size(evs);
        json_array_extend(d.events, evs);
        int64_t nx = json_is_integer(next) ? json_integer_value(next) : since;
        json_decref(rep);
        if (n == 0 || nx <= since) break;
        since = nx;
    }
    char ref[REGISTRY_NAME_MAX + 24], err[ST_ERR_LEN];
    if (!s_result_ref(d.events, ref, sizeof ref)) {
        s_no_state(&d);
    } else {
        req = json_pack("{s:s, s:s}", "type", "states_show", "ref", ref);
        rep = NULL;
        rc = cmd_request(c, &o, req, &rep, NULL, NULL);
        json_decref(req);
        if (rc) goto done;
        d.state = json_incref(json_object_get(rep, "state"));
        json_decref(rep);
        d.spec = json_incref(json_object_get(json_object_get(d.state, "job"), "spec"));
        if (!json_is_object(d.spec)) json_decref(d.spec), d.spec = NULL;
        statetune_state_t st;
        if (statetune_client_get_state(c, ref, &st, err)) {
            client_error("%s", err);
            goto done;
        }
        d.data = st.data;
        st.data = NULL;
        d.layers = st.layers, d.heads = st.heads, d.head_size = st.head_size;
        statetune_state_free(&st);
    }
    status = s_write(out, &d);
done:
    statetune_client_destroy(&c);
    s_data_free(&d);
    return cmd_finish(status);
}

/* ---- from a registry file -------------------------------------------------------- */

int cmd_report_local(int argc, char **argv, const char *db)
{
    report_data_t d = {0};
    const char *out;
    int rc = s_args(argc, argv, NULL, &d.id, &out);
    if (rc) return rc;
    registry_t *r = client_registry_open(db);
    if (!r) return CLIENT_FAIL;
    char err[ST_ERR_LEN];
    int status = CLIENT_FAIL;
    if (registry_job_get(r, d.id, &d.job, err) || registry_job_events(r, d.id, 0, &d.events, err)) {
        client_error("%s", err);
        goto done;
    }
    if (json_is_array(d.job)) { /* a list query's shape: take the one record */
        json_t *one = json_incref(json_array_get(d.job, 0));
        json_decref(d.job);
        d.job = one;
    }
    if (!json_is_object(d.job)) {
        client_error("no job %lld in the registry", (long long)d.id);
        goto done;
    }
    d.spec = json_incref(json_object_get(d.job, "spec"));
    if (json_is_string(d.spec)) { /* stored as text */
        json_t *p = json_loads(json_string_value(d.spec), 0, NULL);
        json_decref(d.spec);
        d.spec = p;
    }
    if (!json_is_object(d.spec)) json_decref(d.spec), d.spec = NULL;
    registry_state_info_t info;
    rc = registry_state_of_job(r, d.id, &info, err);
    if (rc == ST_ENOTFOUND) {
        s_no_state(&d);
    } else if (rc) {
        client_error("%s", err);
        goto done;
    } else {
        char ref[REGISTRY_NAME_MAX + 24];
        snprintf(ref, sizeof ref, "%s@%d", info.name, info.version);
        if (registry_show_state(r, ref, &d.state, err) || registry_get_state(r, ref, &info, &d.data, err)) {
            client_error("%s", err);
            goto done;
        }
        d.layers = info.n_layer, d.heads = info.n_head, d.head_size = info.head_size;
    }
    registry_close(&r);
    status = s_write(out, &d);
done:
    registry_close(&r);
    s_data_free(&d);
    return status;
}
