#!/bin/bash
# ablation.sh - SPEC section 4's methods side by side on pysrc-rwkv7-5M (not
# in CI: minutes of CPU). For each task (tests/make_tabs_data.py) it tunes a
# teacher state on more data (plain, TEACHER_STEPS x 16, another seed), then
# runs plain, +DBP, +observer (that teacher, alpha 0.5, T 1), +kernel state
# (M features, k-means) and observer + kernel state, each with SEEDS seeds at
# the same steps, batch and schedule, and prints a markdown table of eval loss
# and accuracy (mean +- sample std over seeds) and wall time per run.
#
# usage: scripts/ablation.sh [WORK_DIR] ; knobs by environment:
#   STEPS (15) BATCH (8) CTX (192) SEEDS ("1 2 3") TASKS ("tabs licence")
#   FEATURES (16) GAMMA (1.0) TEACHER_STEPS (40) THREADS (1) BUILD (build-methods)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/statetune-ablation}
worker=$here/${BUILD:-build-methods}/worker/statetune-worker
model=${STATETUNE_FIXTURES:-$here/../shared/fixtures}/rwkv7/pysrc-rwkv7-5M.pth
py=/usr/bin/python3
steps=${STEPS:-15} batch=${BATCH:-8} ctx=${CTX:-192} seeds=${SEEDS:-"1 2 3"} tasks=${TASKS:-"tabs licence"}
feat=${FEATURES:-16} gamma=${GAMMA:-1.0} tsteps=${TEACHER_STEPS:-40} threads=${THREADS:-1}
[ -x "$worker" ] || { echo "ablation.sh: build statetune-worker first ($worker)" >&2; exit 1; }
[ -f "$model" ] || { echo "ablation.sh: fixture model $model is missing" >&2; exit 1; }
mkdir -p "$work"

job() { # name task seed extra-json
    cat <<J
{"name": "$1", "model": "$model", "train": "$work/data-$2/train.jsonl", "eval": "$work/data-$2/eval.jsonl",
 "ctx_len": $ctx, "micro_batch": $batch, "global_batch": $batch, "steps": $steps,
 "lr_init": 1.0, "lr_final": 0.01, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 0, "seed": $3$4}
J
}

for task in $tasks; do
    $py "$here/tests/make_tabs_data.py" "$work/data-$task" --task "$task" --train 400 --eval 32 --seed 1 >/dev/null
    tdir=$work/$task/teacher
    if [ ! -f "$tdir/state.safetensors" ]; then
        echo "teacher for $task: plain tuning, $tsteps steps x 16, seed 99" >&2
        mkdir -p "$tdir"
        cat >"$tdir/job.json" <<J
{"name": "teacher-$task", "model": "$model", "train": "$work/data-$task/train.jsonl", "eval": "$work/data-$task/eval.jsonl",
 "ctx_len": $ctx, "micro_batch": 16, "global_batch": 16, "steps": $tsteps,
 "lr_init": 1.0, "lr_final": 0.01, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 0, "seed": 99}
J
        "$worker" tune "$tdir/job.json" --local --out "$tdir" --threads "$threads" --fresh 2>"$tdir/log"
    fi
    obs=", \"observer\": {\"teacher\": \"$model\", \"teacher_state\": \"$tdir/state.safetensors\", \"alpha\": 0.5, \"temperature\": 1.0, \"top_k\": 0}"
    ks=", \"kernel_state\": {\"features\": $feat, \"gamma\": $gamma, \"support\": \"kmeans\"}"
    for seed in $seeds; do
        for method in plain dbp observer kstate observer+kstate; do
            out=$work/$task/$method-$seed
            [ -f "$out/metrics.json" ] && continue
            case $method in
                plain) extra="" ;;
                dbp) extra=", \"dbp\": {\"enabled\": true}" ;;
                observer) extra=$obs ;;
                kstate) extra=$ks ;;
                observer+kstate) extra=$obs$ks ;;
            esac
            mkdir -p "$out"
            job "abl-$task-${method//+/-}-$seed" "$task" "$seed" "$extra" >"$out/job.json"
            echo "$task $method seed $seed" >&2
            t0=$(date +%s.%N)
            "$worker" tune "$out/job.json" --local --out "$out" --threads "$threads" --fresh >"$out/log" 2>&1
            echo "$(date +%s.%N) - $t0" | bc >"$out/wall_s"
        done
    done
done

$py - "$work" "$tasks" "$seeds" <<'P'
import json, statistics, sys, os
work, tasks, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def ms(xs):
    xs = [x for x in xs if x is not None]
    if not xs: return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} +- {sd:.4f}"
print("| task | method | eval loss before | eval loss after | accuracy after | exact match after | wall s / run | tokens/s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for task in tasks:
    t = json.load(open(f"{work}/{task}/teacher/metrics.json"))
    em = t.get('exact_match_after')
    print(f"| {task} | teacher state (plain, more data) | {t['eval_loss_before']:.4f} | {t['eval_loss_after']:.4f} | "
          f"{t['accuracy_after']:.4f} | {'-' if em is None else f'{em:.4f}'} | - | - |")
    for method in ["plain", "dbp", "observer", "kstate", "observer+kstate"]:
        ms_ = [json.load(open(f"{work}/{task}/{method}-{s}/metrics.json")) for s in seeds]
        wall = [float(open(f"{work}/{task}/{method}-{s}/wall_s").read()) for s in seeds]
        print(f"| {task} | {method} | {ms_[0]['eval_loss_before']:.4f} | {ms([m['eval_loss_after'] for m in ms_])} | "
              f"{ms([m['accuracy_after'] for m in ms_])} | {ms([m.get('exact_match_after') for m in ms_])} | "
              f"{statistics.mean(wall):.1f} | "
              f"{statistics.mean(m['tokens_per_s'] for m in ms_):.0f} |")
P
