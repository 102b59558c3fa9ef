#!/bin/bash
# topk_bench.sh - the observer with the teacher on the fly (top_k 0) against
# its top-k computed ahead of time (docs/methods.md, "Observer"), on
# pysrc-rwkv7-5M and the tabs task, with the ablation's setup
# (scripts/ablation.sh: 400 train / 32 eval samples, teacher = the same model
# with a state tuned plainly for 40 x 16 steps with seed 99, alpha 0.5, T 1,
# 15 steps x 8, ctx 192). A script, not a test (minutes of CPU).
#
# usage: tests/topk_bench.sh [WORK_DIR]; knobs: KS ("0 64 16") SEEDS ("1 2 3")
#   STEPS (15) BATCH (8) CTX (192) THREADS (1) BUILD (build)
# Prints a markdown table: eval loss after (mean +- sample std over seeds),
# training tokens/s, wall seconds per run, and for top-k the seconds the
# teacher pass took (statetune-worker teacher, timed separately) and the
# teacher probability mass its top-k keeps.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/statetune-topk-bench}
worker=$here/${BUILD:-build}/worker/statetune-worker
model=${STATETUNE_FIXTURES:-$here/../shared/fixtures}/rwkv7/pysrc-rwkv7-5M.pth
py=/usr/bin/python3
steps=${STEPS:-15} batch=${BATCH:-8} ctx=${CTX:-192} seeds=${SEEDS:-"1 2 3"} ks=${KS:-"0 64 16"} threads=${THREADS:-1}
[ -x "$worker" ] || { echo "topk_bench.sh: build statetune-worker first ($worker)" >&2; exit 1; }
[ -f "$model" ] || { echo "topk_bench.sh: fixture model $model is missing" >&2; exit 1; }
mkdir -p "$work"
$py "$here/tests/make_tabs_data.py" "$work/data" --task tabs --train 400 --eval 32 --seed 1 >/dev/null
tdir=$work/teacher
if [ ! -f "$tdir/state.safetensors" ]; then
    mkdir -p "$tdir"
    cat >"$tdir/job.json" <<J
{"name": "teacher", "model": "$model", "train": "$work/data/train.jsonl", "eval": "$work/data/eval.jsonl",
 "ctx_len": $ctx, "micro_batch": 16, "global_batch": 16, "steps": 40,
 "lr_init": 1.0, "lr_final": 0.01, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 0, "seed": 99}
J
    "$worker" tune "$tdir/job.json" --local --out "$tdir" --threads "$threads" --fresh 2>"$tdir/log"
fi
for seed in $seeds; do
    for k in $ks; do
        out=$work/k$k-$seed
        [ -f "$out/metrics.json" ] && continue
        mkdir -p "$out"
        cat >"$out/job.json" <<J
{"name": "topk-$k-$seed", "model": "$model", "train": "$work/data/train.jsonl", "eval": "$work/data/eval.jsonl",
 "ctx_len": $ctx, "micro_batch": $batch, "global_batch": $batch, "steps": $steps,
 "lr_init": 1.0, "lr_final": 0.01, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 0, "seed": $seed,
 "observer": {"teacher": "$model", "teacher_state": "$tdir/state.safetensors", "alpha": 0.5, "temperature": 1.0,
              "top_k": $k}}
J
        echo "k $k seed $seed" >&2
        if [ "$k" != 0 ]; then /usr/bin/time -f %e -o "$out/teacher_s" "$worker" teacher "$out/job.json" \
            --out "$out/teacher_topk.stk" --threads "$threads" >"$out/teacher.log"; fi
        t0=$(date +%s.%N)
        "$worker" tune "$out/job.json" --local --out "$out" --threads "$threads" >"$out/log" 2>&1
        echo "$(date +%s.%N) - $t0" | bc >"$out/wall_s"
    done
done
$py - "$work" "$ks" "$seeds" <<'P'
import json, os, re, statistics, sys
work, ks, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def ms(xs):
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} +- {sd:.4f}"
m0 = {s: json.load(open(f"{work}/k0-{s}/metrics.json"))["eval_loss_after"] for s in seeds}
print("| teacher | eval loss after (mean +- std) | minus on the fly, per seed | tokens/s | wall s / run | teacher pass s | mass kept |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for k in ks:
    m = [json.load(open(f"{work}/k{k}-{s}/metrics.json")) for s in seeds]
    wall = [float(open(f"{work}/k{k}-{s}/wall_s").read()) for s in seeds]
    diff = " / ".join(f"{m[i]['eval_loss_after'] - m0[s]:+.4f}" for i, s in enumerate(seeds))
    tp, mass = "-", "-"
    if k != "0":
        tp = f"{statistics.mean(float(open(f'{work}/k{k}-{s}/teacher_s').read()) for s in seeds):.1f}"
        mass = re.search(r"mass kept ([0-9.]+)", open(f"{work}/k{k}-{seeds[0]}/teacher.log").read()).group(1)
    name = "on the fly (top_k 0)" if k == "0" else f"top-{k} ahead of time"
    print(f"| {name} | {ms([x['eval_loss_after'] for x in m])} | {diff} | "
          f"{statistics.mean(x['tokens_per_s'] for x in m):.0f} | {statistics.mean(wall):.1f} | {tp} | {mass} |")
P
