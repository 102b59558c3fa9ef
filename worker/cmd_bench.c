/*
 * cmd_bench.c - statetune-worker bench --layers L --embd C --vocab V --batch B
 * --ctx T [--backend cpu|cuda] [--precision fp32|bf16] [--steps S]
 * [--threads N] [--dbp FRACTION] (SPEC sections 2.1 and 8).
 *
 * Builds a random model of that shape (rwkv_model_new_random), then times S
 * full tuning steps after two untimed warm-up steps: forward, loss, backward to
 * every layer's S0, gradient clipping and an Adam update of S0, through the
 * engine's resident parameters (engine.h's engine_params_*: on a GPU the
 * state, gradient and moments stay on the device, as in a tuning job), exactly
 * the work of one micro-batch of a tuning job. Prints one JSON line:
 * tokens_per_s, step_ms, tflops and peak_mem_bytes (the engine's plan +
 * state, gradient and Adam moments).
 *
 * LoRA widths (decay/a/v/gate) follow SPEC 2.1: 64/64/32/128 up to n_embd
 * 1024, 96/96/64/256 from 2048 on; for small models each is capped at C/4
 * (so a 256-wide model gets 64/64/32/64), and never below 1.
 *
 * FLOP count: 4P per token, P the parameter count - 2P for the forward
 * matrix products and 2P for the input-gradient products of the backward
 * pass (no weight gradients: the weights are frozen). It leaves out the WKV
 * recurrence, so it understates the work a little, as the SPEC 8 table does.
 *
 * Under mpirun every rank runs its own batch of B x T on the GPU of its
 * node-local rank and each step ends with the tuning loop's all-reduce of
 * dS0 and the loss sums (dist_allreduce_step_device: dS0 summed in place on
 * the GPU by NCCL beside the exact sums; CPU ranks stage everything through
 * dist_allreduce_step_f64 over MPI), so the numbers are those of a data-parallel
 * tuning step with per-rank batch B. Rank 0 prints the line, adding ranks,
 * tokens_per_s_per_gpu (per rank), allreduce_ms (wall time of the all-reduce
 * per step, staging copies included) and its split into allreduce_copy_ms and
 * allreduce_nccl_ms; tokens_per_s and tflops count every rank. A GPU group
 * then checks and times an all-reduce of dS0 kept on the device, in fp32
 * (device_allreduce_f32_ms; -1 when not run): the cost without staging.
 * engine_ms_per_rank lists each rank's engine_run time per step, so that a
 * slow GPU (the group's pace) shows; update_ms is the optimizer step
 * (engine_params_step) per step on rank 0; host_threads says how many
 * OpenMP and OpenBLAS threads each rank may start (ranks of a node share its
 * cores).
 *
 * --dbp FRACTION turns DBP on (SPEC section 4, engine/dbp_param.h) with that
 * sample fraction and the job defaults (eta 1e-3, kappa 0.01): each step then
 * also accumulates Q over the sampled rows (chosen as tune.c chooses them,
 * seed 1) in the engine, sums it with the gradient (in place on the GPUs)
 * and runs R's rule where the engine is (engine_params_update_R), as a
 * tuning step does. dbp_ms is the R rule per step (rank 0) and dbp_steps
 * how many timed steps sampled a row; --dbp 1 samples every row of every
 * step (the worst case).
 */
#include "worker/cmd.h"

#include "common/st_err.h"
#include "engine/dbp_param.h"
#include "engine/engine.h"
#include "model/model.h"
#include "worker/dist.h"

#include <cblas.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h> /* defines: omp_get_max_threads, omp_set_num_threads */
#endif

static const char *s_usage =
    "usage: statetune-worker bench --layers L --embd C --vocab V --batch B --ctx T "
    "[--backend cpu|cuda] [--precision fp32|bf16] [--steps S] [--threads N] [--dbp FRACTION]\n";

static double s_clock(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double s_now(void) { return s_clock(CLOCK_MONOTONIC); }

static int s_int_arg(const char *name, const char *v, long lo, long hi, int *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "statetune-worker bench: %s must be an integer from %ld to %ld, not '%s'\n",
                name, lo, hi, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int s_lora(int want, int C)
{
    int cap = C / 4;
    int w = want < cap ? want : cap;
    return w < 1 ? 1 : w;
}

int cmd_bench(int argc, char **argv)
{
    int L = 0, C = 0, V = 0, B = 0, T = 0, steps = 10, threads = 0;
    engine_backend_t backend = ENGINE_CPU;
    engine_precision_t precision = ENGINE_FP32;
    int prec_given = 0;
    double dbp_frac = 0; /* 0 = DBP off */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (cmd_help(a, s_usage)) return 0;
        if (!v) {
            fprintf(stderr, "statetune-worker bench: option '%s' is unknown or needs a value\n%s", a, s_usage);
            return 2;
        } else if (!strcmp(a, "--layers")) bad = s_int_arg(a, v, 1, 512, &L);
        else if (!strcmp(a, "--embd")) bad = s_int_arg(a, v, 64, 65536, &C);
        else if (!strcmp(a, "--vocab")) bad = s_int_arg(a, v, 2, 1 << 20, &V);
        else if (!strcmp(a, "--batch")) bad = s_int_arg(a, v, 1, 1 << 16, &B);
        else if (!strcmp(a, "--ctx")) bad = s_int_arg(a, v, 1, 1 << 20, &T);
        else if (!strcmp(a, "--steps")) bad = s_int_arg(a, v, 1, 1 << 20, &steps);
        else if (!strcmp(a, "--threads")) bad = s_int_arg(a, v, 0, 4096, &threads);
        else if (!strcmp(a, "--dbp")) {
            char *end;
            dbp_frac = strtod(v, &end);
            if (end == v || *end || !(dbp_frac > 0 && dbp_frac <= 1)) {
                fprintf(stderr, "statetune-worker bench: --dbp must be a sample fraction in (0, 1], not '%s'\n", v);
                return 2;
            }
        }
        else if (!strcmp(a, "--backend")) {
            bad = cmd_engine_backend("statetune-worker bench", v, &backend);
        } else if (!strcmp(a, "--precision")) {
            bad = cmd_engine_precision("statetune-worker bench", v, &precision);
            prec_given = 1;
        } else {
            fprintf(stderr, "statetune-worker bench: unknown option '%s'\n%s", a, s_usage);
            return 2;
        }
        if (bad) return 2;
        i++;
    }
    if (!L || !C || !V || !B || !T) {
        fprintf(stderr, "statetune-worker bench: --layers, --embd, --vocab, --batch and --ctx are required\n%s", s_usage);
        return 2;
    }
    if (C % 64) {
        fprintf(stderr, "statetune-worker bench: --embd must be a multiple of the head size 64, not %d\n", C);
        return 2;
    }
    /* the GPU's natural precision is bf16, the CPU's fp32 */
    if (!prec_given) precision = backend == ENGINE_CUDA ? ENGINE_BF16 : ENGINE_FP32;

    char err[ST_ERR_LEN] = "";
    int rc = 1;
    dist_t *dist = NULL;
    double *red = NULL, *eng_ms = NULL;
    rwkv_model_t *model = NULL;
    engine_t *eng = NULL;
    int32_t *tok = NULL, *tgt = NULL;
    float *hgrad = NULL;
    uint8_t *rows = NULL;

    int big = C >= 2048;
    rwkv_config_t cfg = {.n_layer = L, .n_embd = C, .vocab = V, .ffn_dim = 4 * C,
                         .d_decay = s_lora(big ? 96 : 64, C), .d_aaa = s_lora(big ? 96 : 64, C),
                         .d_mv = s_lora(big ? 64 : 32, C), .d_gate = s_lora(big ? 256 : 128, C)};
    dist = dist_new(NULL, NULL, err); /* under mpirun: one rank per GPU */
    if (!dist) goto done;
    if (backend == ENGINE_CUDA && dist_init_nccl(dist, err) != ST_OK) goto done;
    if (backend == ENGINE_CUDA) { /* as cmd_tune.c: a GPU rank's host threads */
        openblas_set_num_threads(1);
#ifdef _OPENMP
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        int share = ncpu > dist_local_size(dist) ? (int)(ncpu / dist_local_size(dist)) : 1;
        omp_set_num_threads(threads > 0 ? threads : share);
#endif
    }
    model = rwkv_model_new_random(&cfg, 1, err);
    if (!model) goto done;
    engine_opts_t opts = {.backend = backend, .precision = precision, .max_batch = B, .max_ctx = T,
                          .device = dist_local_rank(dist), .threads = threads};
    eng = engine_new(model, &opts, err);
    if (!eng) goto done;
    size_t ns = (size_t)L * rwkv_state_layer_size(&model->cfg), n = (size_t)B * T;
    int dbp = dbp_frac > 0;
    if (engine_params_init(eng, dbp, 0.9, 0.99, 1e-8, err) != ST_OK) goto done; /* S0 = 0, as before */
    tok = malloc(n * sizeof *tok);
    tgt = malloc(n * sizeof *tgt);
    hgrad = calloc(ns, sizeof *hgrad);
    /* [dS0 | Q (DBP) | loss_sum, n_targets, n_pairs], as in the tuning loop */
    size_t nq = dbp ? ns : 0, nred = ns + nq + 3;
    red = calloc(nred, sizeof *red);
    rows = calloc((size_t)B, 1);
    if (!tok || !tgt || !hgrad || !red || !rows) {
        st_fail(err, ST_ENOMEM, "out of memory for a batch of %d x %d", B, T);
        goto done;
    }
    /* as tune.c: a device gradient is summed where it is, else staged */
    int device_sum = engine_params_grad_on_device(eng) && (dist_size(dist) == 1 || dist_has_nccl(dist));
    uint64_t r = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        tok[i] = (int32_t)(r % (uint64_t)V);
    }
    for (size_t i = 0; i < n; i++) tgt[i] = (i + 1) % T ? tok[i + 1] : -1;

    double t0 = 0, c0 = 0, loss_first = 0, loss_last = 0, ar_s = 0, eng_s = 0, ar_copy_ms = 0, ar_nccl_ms = 0;
    double upd_s = 0, dbp_s = 0;
    int dbp_steps = 0;
    /* Two warm-up steps: the first warms caches, thread pools and NCCL's
     * channels; the CUDA engine captures its graphs on a shape's second run,
     * so the timed steps are all replays, as in a tuning job's steady state. */
    const int warmup = 2;
    for (int s = 0; s < steps + warmup; s++) {
        if (s == warmup) {
            if (dist_barrier(dist, err) != ST_OK) goto done;
            t0 = s_now();
            c0 = s_clock(CLOCK_PROCESS_CPUTIME_ID);
        }
        if (engine_params_zero_grad(eng, err) != ST_OK) goto done;
        double *sc = red + ns + nq; /* loss_sum, n_targets, n_pairs */
        memset(sc, 0, 3 * sizeof *sc); /* the rest is written whole before it is read (as tune.c) */
        int n_sampled = 0;
        for (int b = 0; b < B; b++) {
            /* as tune.c: a hash of (seed, step, index in the global batch) */
            rows[b] = dbp && dbp_row_sampled(1, s, (int64_t)dist_rank(dist) * B + b, dbp_frac);
            n_sampled += rows[b];
        }
        engine_batch_t bt = {.tokens = tok, .targets = tgt, .B = B, .T = T,
                             .dbp_rows = n_sampled ? rows : NULL}; /* Q: the engine's */
        double e0 = s_now();
        if (engine_params_run(eng, &bt, err) != ST_OK) goto done;
        if (s >= warmup) eng_s += s_now() - e0;
        sc[0] = bt.loss_sum;
        sc[1] = (double)bt.n_targets;
        sc[2] = (double)n_sampled * T;
        double a0 = s_now();
        if (device_sum) {
            if (dist_allreduce_step_device_q(dist, engine_params_grad(eng), ns, dbp ? engine_params_q(eng) : NULL, ns,
                                             sc, 3, 3, err) != ST_OK)
                goto done;
        } else {
            if (engine_params_get_grad(eng, hgrad, err) != ST_OK) goto done;
            for (size_t i = 0; i < ns; i++) red[i] = hgrad[i];
            if (dbp && engine_params_get_q(eng, red + ns, err) != ST_OK) goto done;
            if (dist_allreduce_step_f64(dist, red, nred, 3, err) != ST_OK) goto done;
            if (dbp && engine_params_set_q(eng, red + ns, err) != ST_OK) goto done;
        }
        if (s >= warmup) {
            double cm, nm;
            ar_s += s_now() - a0;
            dist_last_allreduce_ms(dist, &cm, &nm);
            ar_copy_ms += cm;
            ar_nccl_ms += nm;
        }
        double ntg = sc[1] > 0 ? sc[1] : 1, inv = 1.0 / ntg;
        if (!device_sum) {
            for (size_t i = 0; i < ns; i++) hgrad[i] = (float)(red[i] / ntg);
            if (engine_params_set_grad(eng, hgrad, err) != ST_OK) goto done;
        }
        engine_step_info_t info;
        double u0 = s_now();
        if (engine_params_step(eng, device_sum ? ntg : 1, 1.0, 0.01, &info, err) != ST_OK) goto done;
        if (s >= warmup) upd_s += s_now() - u0;
        if (dbp && sc[2] > 0) { /* DBP's R rule, where the engine is */
            double d0 = s_now();
            int finite = 1;
            if (engine_params_update_R(eng, sc[2], 1e-3, 0.01, &finite, err) != ST_OK) goto done;
            if (s >= warmup) {
                dbp_s += s_now() - d0;
                dbp_steps++;
            }
        }
        if (s == 0) loss_first = sc[0] * inv;
        loss_last = sc[0] * inv;
    }
    double dt = s_now() - t0;
    int world = dist_size(dist);
    /* what the all-reduce costs when the gradient stays on the GPU (no
     * staging): checked, then timed over 10 rounds */
    /* each rank's engine time per step (forward, backward and its copies):
     * a group steps at the pace of its slowest GPU */
    eng_ms = calloc((size_t)world, sizeof *eng_ms);
    if (!eng_ms) {
        st_fail(err, ST_ENOMEM, "out of memory for %d ranks' timings", world);
        goto done;
    }
    eng_ms[dist_rank(dist)] = eng_s * 1e3 / steps;
    if (dist_allreduce_sum_f64(dist, eng_ms, (size_t)world, err) != ST_OK) goto done;
    double dev_ms = -1;
    if (dist_has_nccl(dist) && dist_device_allreduce_check(dist, ns, 10, &dev_ms, err) != ST_OK) goto done;
    if (!dist_is_root(dist)) { /* rank 0 alone prints */
        rc = 0;
        goto done;
    }
    /* CPU seconds per step over all threads: on a shared machine the wall
     * clock measures the neighbours too, this does not (spin-waiting
     * threads count, though). */
    double cpu_per_step = (s_clock(CLOCK_PROCESS_CPUTIME_ID) - c0) / steps;
    double tps = (double)n * world * steps / dt;
    double P = (double)rwkv_model_param_count(model);
    size_t peak = engine_peak_mem_bytes(eng) + 4 * ns * sizeof(float); /* S0, grad, m, v */
    json_t *eng_json = json_array();
    for (int i = 0; i < world; i++) json_array_append_new(eng_json, json_real(eng_ms[i]));
    int omp_threads = 1;
#ifdef _OPENMP
    omp_threads = omp_get_max_threads();
#endif
    json_t *out = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:[i,i,i,i], s:I, s:f, s:f, s:f, s:I, s:f, s:f, s:f, s:s,"
                            " s:i, s:s, s:f, s:f, s:f, s:f, s:f, s:o, s:s, s:f, s:{s:i, s:i}, s:f, s:f, s:i}",
                            "backend", backend == ENGINE_CUDA ? "cuda" : "cpu",
                            "precision", precision == ENGINE_BF16 ? "bf16" : "fp32",
                            "layers", L, "embd", C, "vocab", V, "batch", B, "ctx", T, "steps", steps,
                            "lora", cfg.d_decay, cfg.d_aaa, cfg.d_mv, cfg.d_gate,
                            "params", (json_int_t)P, "tokens_per_s", tps,
                            "step_ms", dt * 1e3 / steps, "tflops", 4.0 * P * tps / 1e12,
                            "peak_mem_bytes", (json_int_t)peak, "loss_first", loss_first,
                            "loss_last", loss_last, "cpu_s_per_step", cpu_per_step,
                            /* which OpenBLAS kernels ran (OPENBLAS_CORETYPE overrides
                             * the detection; AVX-512 kernels such as SkylakeX run
                             * sgemm about twice as fast as Haswell's where the CPU
                             * has AVX-512) */
                            "blas_core", openblas_get_corename(),
                            "ranks", world,
                            "allreduce", world == 1 ? "none" : dist_has_nccl(dist) ? "nccl" : "mpi",
                            "tokens_per_s_per_gpu", tps / world,
                            "allreduce_ms", ar_s * 1e3 / steps,
                            "allreduce_copy_ms", ar_copy_ms / steps,
                            "allreduce_nccl_ms", ar_nccl_ms / steps,
                            "device_allreduce_f32_ms", dev_ms,
                            "engine_ms_per_rank", eng_json,
                            "gradient", device_sum ? "device" : "host",
                            "update_ms", upd_s * 1e3 / steps,
                            "host_threads", "omp", omp_threads, "blas", openblas_get_num_threads(),
                            "dbp_fraction", dbp_frac, "dbp_ms", dbp_s * 1e3 / steps, "dbp_steps", dbp_steps);
    char *line = out ? json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(out);
    if (!line) {
        st_fail(err, ST_ENUMERIC, "the benchmark produced a non-finite number (loss %g)", loss_last);
        goto done;
    }
    printf("%s\n", line);
    free(line);
    rc = fflush(stdout) == 0 ? 0 : 1;
    if (rc) st_fail(err, ST_EIO, "could not write the result to stdout");
done:
    if (rc && err[0]) {
        if (dist_size(dist) > 1) fprintf(stderr, "statetune-worker bench: rank %d: %s\n", dist_rank(dist), err);
        else fprintf(stderr, "statetune-worker bench: %s\n", err);
    }
    /* a rank that failed alone would leave the others waiting in the next
     * all-reduce: end the whole group */
    if (rc) dist_abort(dist, 1, NULL);
    engine_destroy(&eng);
    rwkv_model_destroy(&model);
    free(tok), free(tgt), free(hgrad), free(red), free(eng_ms), free(rows);
    dist_destroy(&dist);
    return rc;
}
