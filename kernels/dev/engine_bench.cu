/*
 * engine_bench.cu - where the time of one CUDA tuning step goes (dev program,
 * llm.c's dev/ style): builds a random model of a SPEC section 8 shape, runs
 * the CUDA engine's forward + loss + backward to every state with profiling
 * on (engine_cuda_set_profiling) and prints the median of each phase; then
 * the whole step by the host's clock, eager and through CUDA graphs; then the
 * fine profile: the median ms and the launches of each operation class
 * (gemm by role, token shift, LayerNorms, ...) per step, their sum (the GPU's
 * busy time) and the rest of the eager step (launch gaps and host work);
 * last the measured floor (floor.h): cuBLAS and bandwidth ceilings on the
 * same card, each class's FLOPs, bytes and floor, and three step floors
 * beside SPEC section 8's target (issue #4: why a target is out of reach).
 *
 *   dev_engine_bench [--layers L --embd C --vocab V --batch B --ctx T]
 *                    [--precision fp32|bf16] [--steps S] [--variants LIST]
 *
 * --variants LIST (e.g. 00,10,01,11,12) measures only the product variants
 * instead (docs/performance.md 2.4): for each pair of digits, an engine made
 * with STATETUNE_GEMM_BATCH and STATETUNE_GEMM_LT set to them on the same
 * model; per variant the eager step by the fine profile, the wall step
 * through graphs, and ms and TFLOP/s of each product role; after a variant
 * with LT 2, the cuBLASLt choices its engine made (engine_cuda_lt_choices:
 * each product shape, the candidate chosen, ms of the heuristic's first vs
 * the chosen one).
 *
 * Napkin math (SPEC section 8): a step costs about 4P FLOP per token for the
 * matrix products (P the frozen parameters) plus the WKV7 recurrence; at
 * 12 x 768, B 8 x T 1024 that is 0.56 GFLOP x 8192 = 4.6 TFLOP, 6 ms at the
 * measured 800 TFLOP/s bf16; the WKV7 part is latency-bound (see
 * wkv7_bench.cu) and does not shrink with the model.
 */
extern "C" {
#include "common/st_err.h"
#include "engine/engine_cuda.h"
#include "model/model.h"
}

#include <algorithm>
#include <chrono>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "kernels/dev/floor.h"

static float median(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

/* The cuBLASLt choices made since the process had `from` of them
 * (engine_cuda_lt_choices), one line each, then how many changed. */
static void print_lt_choices(int from)
{
    int n = engine_cuda_lt_choices(NULL, 0);
    std::vector<engine_cuda_lt_choice_t> c(n > 0 ? n : 1);
    n = engine_cuda_lt_choices(c.data(), n);
    int changed = 0, timed = 0;
    double first = 0, chosen = 0;
    printf("cuBLASLt choices (process-wide, first engine times; >= 3%% faster than the heuristic's first to replace it):\n");
    for (int i = from; i < n; i++) {
        const engine_cuda_lt_choice_t *x = &c[i];
        printf("  dev %d %c%c m %d n %d k %d batch %d %s%s: ", x->device, x->ta, x->tb, x->m, x->n, x->k, x->batch,
               x->types, x->accumulate ? " beta 1" : "");
        if (!x->timed) {
            printf("candidate 0 of %d, untimed (%s)\n", x->candidates, x->why ? x->why : "?");
            continue;
        }
        timed++;
        changed += x->chosen != 0;
        first += x->first_ms;
        chosen += x->chosen_ms;
        printf("candidate %d of %d, %.4f ms vs first %.4f ms (%+.1f%%)", x->chosen, x->candidates, x->chosen_ms,
               x->first_ms, 100.0 * (x->chosen_ms / x->first_ms - 1.0));
        if (x->fastest != x->chosen)
            printf("; fastest %d at %.4f ms kept out by the margin", x->fastest, x->fastest_ms);
        printf("\n");
    }
    printf("  %d products, %d timed, %d not the heuristic's first; one call of each: %.3f ms chosen vs %.3f ms first\n",
           n - from, timed, changed, chosen, first);
}

/* The product variants on one model (--variants): see the file comment. */
static int run_variants(rwkv_model_t *m, const engine_opts_t *opts, const char *list, int steps)
{
    const rwkv_config_t *c = &m->cfg;
    const int B = opts->max_batch, T = opts->max_ctx, L = c->n_layer, V = c->vocab;
    const double R = (double)B * T, C = c->n_embd, F = c->ffn_dim;
    const double Dwag = c->d_decay + c->d_aaa + c->d_gate, Dv = c->d_mv;
    /* FLOP per step of each product class, forward + backward (layer 0's
     * backward stops after its WKV: no r/k/v or LoRA dX there; layer 0 has
     * no v LoRA); the classes' order is engine_cuda.cu's prof_class */
    const double flop[6] = {2 * R * C * C * (3.0 * L + 3.0 * (L - 1)),
                            4 * R * C * (L * Dwag + (L - 1) * Dv + (L - 1) * (Dwag + Dv)),
                            2 * R * C * C * 2.0 * L,
                            2 * R * C * F * 2.0 * L,
                            2 * R * C * F * 2.0 * L,
                            2 * R * C * V * 2.0};
    size_t ns = (size_t)L * rwkv_state_layer_size(c);
    std::vector<int32_t> tok((size_t)R), tgt((size_t)R);
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < (size_t)R; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        tok[i] = (int32_t)(s % V);
        tgt[i] = (int32_t)((s >> 20) % V);
    }
    std::vector<float> s0(ns, 0.01f), ds0(ns, 0.f);
    char err[ST_ERR_LEN];
    for (const char *v = list; v[0] && v[1]; v += v[2] ? 3 : 2) {
        char b[2] = {v[0], 0}, l[2] = {v[1], 0};
        setenv("STATETUNE_GEMM_BATCH", b, 1);
        setenv("STATETUNE_GEMM_LT", l, 1);
        const int lt_from = engine_cuda_lt_choices(NULL, 0);
        engine_cuda_t *e = engine_cuda_new(m, opts, err);
        if (!e || engine_cuda_set_profiling(e, 2, err)) { fprintf(stderr, "%s\n", err); return 1; }
        auto step = [&]() -> int {
            engine_batch_t bt = {};
            bt.tokens = tok.data(); bt.targets = tgt.data(); bt.B = B; bt.T = T;
            bt.state0 = s0.data(); bt.dstate0 = ds0.data();
            return engine_cuda_run(e, &bt, err);
        };
        engine_cuda_set_graphs(e, 0);
        std::vector<std::vector<float>> cms(6);
        std::vector<float> ftot;
        float first_ms = 0; /* the warm-up step, cuBLASLt's timing included */
        for (int it = 0; it < steps + 1; it++) {
            auto t0 = std::chrono::steady_clock::now();
            if (step()) { fprintf(stderr, "%s\n", err); return 1; }
            engine_cuda_profile_t p;
            engine_cuda_last_profile(e, &p);
            if (it == 0) first_ms = std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - t0).count();
            if (it == 0) continue; /* warm-up: cuBLASLt choices are made here */
            for (int i = 0; i < 6; i++) cms[i].push_back(p.class_ms[0][i] + p.class_ms[1][i] + p.class_ms[2][i]);
            ftot.push_back(p.forward_ms + p.head_ms + p.backward_ms);
        }
        engine_cuda_set_profiling(e, 0, err);
        engine_cuda_set_graphs(e, 1);
        std::vector<float> ws;
        for (int it = 0; it < steps + 2; it++) {
            auto t0 = std::chrono::steady_clock::now();
            if (step()) { fprintf(stderr, "%s\n", err); return 1; }
            auto t1 = std::chrono::steady_clock::now();
            if (it >= 2) ws.push_back(std::chrono::duration<float, std::milli>(t1 - t0).count());
        }
        printf("variant batch %s lt %s, %dx%d: step %.2f ms (fine events, eager) | wall %.2f ms with graphs (%.0f "
               "tokens/s) |",
               b, l, L, c->n_embd, median(ftot), median(ws), R / (median(ws) * 1e-3));
        for (int i = 0; i < 6; i++) {
            float ms = median(cms[i]);
            printf(" %s %.2f ms %.0f TF/s%s", engine_cuda_profile_class(i), ms, flop[i] / (ms * 1e-3) / 1e12,
                   i < 5 ? ";" : "\n");
        }
        printf("  first step (warm-up, cuBLASLt's choices made here) %.1f ms\n", first_ms);
        if (l[0] == '2') print_lt_choices(lt_from);
        fflush(stdout);
        engine_cuda_destroy(&e);
    }
    return 0;
}

int main(int argc, char **argv)
{
    int L = 12, C = 768, V = 65536, B = 8, T = 1024, steps = 5;
    const char *variants = NULL;
    engine_precision_t prec = ENGINE_BF16;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--layers")) L = atoi(v);
        else if (!strcmp(a, "--embd")) C = atoi(v);
        else if (!strcmp(a, "--vocab")) V = atoi(v);
        else if (!strcmp(a, "--batch")) B = atoi(v);
        else if (!strcmp(a, "--ctx")) T = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--precision")) prec = strcmp(v, "fp32") ? ENGINE_BF16 : ENGINE_FP32;
        else if (!strcmp(a, "--variants")) variants = v;
        else { fprintf(stderr, "usage: %s [--layers L --embd C --vocab V --batch B --ctx T --precision P --steps S --variants LIST]\n", argv[0]); return 2; }
    }
    const bool wide = C >= 2048;
    rwkv_config_t cfg = {L, C, C / 64, 64, V, 4 * C, wide ? 96 : 64, wide ? 96 : 64, wide ? 64 : 32, wide ? 256 : 128};
    char err[ST_ERR_LEN];
    rwkv_model_t *m = rwkv_model_new_random(&cfg, 1, err);
    if (!m) { fprintf(stderr, "%s\n", err); return 1; }
    engine_opts_t opts = {ENGINE_CUDA, prec, B, T, 0, 0};
    if (variants) {
        int rc = run_variants(m, &opts, variants, steps);
        rwkv_model_destroy(&m);
        return rc;
    }
    engine_cuda_t *e = engine_cuda_new(m, &opts, err);
    if (!e || engine_cuda_set_profiling(e, 1, err)) { fprintf(stderr, "%s\n", err); return 1; }
    size_t R = (size_t)B * T, ns = (size_t)L * rwkv_state_layer_size(&cfg);
    std::vector<int32_t> tok(R), tgt(R);
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < R; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        tok[i] = (int32_t)(s % V);
        tgt[i] = (int32_t)((s >> 20) % V);
    }
    std::vector<float> s0(ns, 0.01f), ds0(ns, 0.f);
    auto step = [&]() -> int {
        engine_batch_t bt = {};
        bt.tokens = tok.data(); bt.targets = tgt.data(); bt.B = B; bt.T = T;
        bt.state0 = s0.data(); bt.dstate0 = ds0.data();
        return engine_cuda_run(e, &bt, err);
    };
    /* 1. the per-phase profile (events at the phase marks and around WKV), eager */
    std::vector<float> fw, wf, hd, bw, wb, tot;
    for (int it = 0; it < steps + 1; it++) {
        if (step()) { fprintf(stderr, "%s\n", err); return 1; }
        engine_cuda_profile_t p;
        engine_cuda_last_profile(e, &p);
        if (it == 0) continue; /* warm-up */
        fw.push_back(p.forward_ms); wf.push_back(p.wkv_forward_ms); hd.push_back(p.head_ms);
        bw.push_back(p.backward_ms); wb.push_back(p.wkv_backward_ms);
        tot.push_back(p.forward_ms + p.head_ms + p.backward_ms);
    }
    float t = median(tot);
    printf("engine %s %dx%d V %d, B %d x T %d: step %.2f ms (%.0f tokens/s) | forward %.2f (wkv %.2f) | head %.2f | "
           "backward %.2f (wkv %.2f) | peak %.2f GB%s\n",
           prec == ENGINE_BF16 ? "bf16" : "fp32", L, C, V, B, T, t, R / (t * 1e-3), median(fw), median(wf),
           median(hd), median(bw), median(wb), engine_cuda_peak_mem_bytes(e) / 1e9,
           engine_cuda_recomputes(e) ? " (recompute mode: forward included again in backward)" : "");
    /* 2. the whole engine_cuda_run by the host's clock (copies and the host's
     * loss sums included), no events: eager, then through CUDA graphs (the
     * first run of a shape is eager, the second captures) */
    float wall[2] = {0, 0};
    for (int g = 0; g < 2; g++) {
        engine_cuda_set_profiling(e, 0, err);
        engine_cuda_set_graphs(e, g);
        std::vector<float> ws;
        for (int it = 0; it < steps + 2; it++) {
            auto t0 = std::chrono::steady_clock::now();
            if (step()) { fprintf(stderr, "%s\n", err); return 1; }
            auto t1 = std::chrono::steady_clock::now();
            if (it >= 2) ws.push_back(std::chrono::duration<float, std::milli>(t1 - t0).count());
        }
        wall[g] = median(ws);
    }
    printf("wall step: eager %.2f ms (%.0f tokens/s) | graphs %.2f ms (%.0f tokens/s, %+.1f%%; %ld parts replayed)\n",
           wall[0], R / (wall[0] * 1e-3), wall[1], R / (wall[1] * 1e-3), 100.0 * (wall[0] / wall[1] - 1.0),
           engine_cuda_graph_replays(e));
    /* 2b. the head's chunk of rows, through graphs: smaller chunks keep a
     * chunk's fp32 logits (256 KB a row at V 65536) nearer L2's 50 MB */
    {
        const int def = engine_cuda_head_chunk(e);
        printf("head chunk (rows: wall ms with graphs):");
        for (int rows : {def, def / 2, def / 4, def / 8, 96}) {
            if (rows < 1 || engine_cuda_set_head_chunk(e, rows, err)) continue;
            std::vector<float> ws;
            for (int it = 0; it < steps + 2; it++) {
                auto t0 = std::chrono::steady_clock::now();
                if (step()) { fprintf(stderr, "%s\n", err); return 1; }
                auto t1 = std::chrono::steady_clock::now();
                if (it >= 2) ws.push_back(std::chrono::duration<float, std::milli>(t1 - t0).count());
            }
            printf(" %d: %.2f", rows, median(ws));
        }
        printf("\n");
        if (engine_cuda_set_head_chunk(e, def, err)) { fprintf(stderr, "%s\n", err); return 1; }
    }
    /* 3. the fine profile: a pair of events around each operation, summed by
     * class (medians per class over the steps); their total is the GPU's busy
     * time, the eager step minus it the launch gaps */
    if (engine_cuda_set_profiling(e, 2, err)) { fprintf(stderr, "%s\n", err); return 1; }
    engine_cuda_set_graphs(e, 0);
    const int NC = ENGINE_CUDA_PROF_CLASSES;
    std::vector<std::vector<float>> cms(3 * NC);
    engine_cuda_profile_t last = {};
    std::vector<float> ftot;
    for (int it = 0; it < steps + 1; it++) {
        if (step()) { fprintf(stderr, "%s\n", err); return 1; }
        engine_cuda_last_profile(e, &last);
        if (it == 0) continue;
        for (int ph = 0; ph < 3; ph++)
            for (int i = 0; i < NC; i++) cms[ph * NC + i].push_back(last.class_ms[ph][i]);
        ftot.push_back(last.forward_ms + last.head_ms + last.backward_ms);
    }
    printf("%-22s %9s %9s %9s %9s %8s %9s\n", "class", "fwd ms", "head ms", "bwd ms", "total", "share", "launches");
    float busy = 0;
    int nl_all = 0;
    std::vector<float> cls_ms(NC, 0.f); /* per class over the step, for the floor (4.) */
    std::vector<int> cls_nl(NC, 0);
    std::vector<const char *> cls_name(NC, (const char *)NULL);
    for (int i = 0; i < NC && engine_cuda_profile_class(i); i++) {
        float m3[3], sum = 0;
        int nl = 0;
        for (int ph = 0; ph < 3; ph++) {
            m3[ph] = median(cms[ph * NC + i]);
            sum += m3[ph];
            nl += last.class_launches[ph][i];
        }
        cls_ms[i] = sum;
        cls_nl[i] = nl;
        cls_name[i] = engine_cuda_profile_class(i);
        if (nl == 0) continue;
        busy += sum;
        nl_all += nl;
        printf("%-22s %9.2f %9.2f %9.2f %9.2f %7.1f%% %9d\n", engine_cuda_profile_class(i), m3[0], m3[1], m3[2], sum,
               100.0 * sum / wall[0], nl);
    }
    printf("busy (sum of classes) %.2f ms, %d launches per step; eager step %.2f ms (wall), %.2f ms with the fine "
           "events; gaps and host %.2f ms (%.1f%%)%s\n",
           busy, nl_all, wall[0], median(ftot), wall[0] - busy, 100.0 * (wall[0] - busy) / wall[0],
           last.fine_dropped ? " (some operations were not timed: event pool too small)" : "");
    const int head_chunk = engine_cuda_head_chunk(e), recompute = engine_cuda_recomputes(e);
    engine_cuda_destroy(&e); /* the floor's buffers need the memory */
    rwkv_model_destroy(&m);
    /* 4. the measured floor (floor.h): ceilings on this card, per class
     * FLOPs, bytes and floors, and the step floors beside SPEC's target */
    const char *gb = getenv("STATETUNE_GEMM_BATCH");
    fl_shape fs = {L, C, cfg.n_head, cfg.head_size, cfg.ffn_dim, V, B, T, cfg.d_decay, cfg.d_aaa, cfg.d_mv,
                   cfg.d_gate, head_chunk, prec == ENGINE_BF16 ? 2 : 4, !(gb && !strcmp(gb, "0"))};
    if (fl_report(&fs, cls_ms, cls_nl, cls_name.data(), busy, wall[0], recompute, err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    return 0;
}
