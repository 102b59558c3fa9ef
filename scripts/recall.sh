#!/bin/bash
# recall.sh - an MQAR-style associative-recall measurement (not in CI): how
# many key -> value pairs a tuned state holds. For K pairs (random 4-letter
# keys, random 3-digit values; prompt "key abcd =", completion " 123\n") it
# tunes on all K pairs and measures exact match by greedy generation on the
# same K pairs (recall, not generalisation), plain state tuning against the
# kernel-expanded state at several M. Same steps, batch and schedule for all.
#
# usage: scripts/recall.sh [WORK_DIR] ; environment: KS ("16 64 256"),
#   MS ("16 64"), STEPS (40), BATCH (16), GAMMA (1.0), THREADS (1), BUILD
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/statetune-recall}
worker=$here/${BUILD:-build-methods}/worker/statetune-worker
model=${STATETUNE_FIXTURES:-$here/../shared/fixtures}/rwkv7/pysrc-rwkv7-5M.pth
py=/usr/bin/python3
ks=${KS:-"16 64 256"} ms=${MS:-"16 64"} steps=${STEPS:-40} batch=${BATCH:-16} gamma=${GAMMA:-1.0}
threads=${THREADS:-1}
[ -x "$worker" ] || { echo "recall.sh: build statetune-worker first ($worker)" >&2; exit 1; }
mkdir -p "$work"
for K in $ks; do
    $py - "$work/data-$K.jsonl" "$K" <<'P'
import json, random, sys
path, K = sys.argv[1], int(sys.argv[2])
rng = random.Random(1000 + K)
keys = set()
while len(keys) < K:
    keys.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4)))
with open(path, "w") as f:
    for k in sorted(keys):
        f.write(json.dumps({"prompt": f"key {k} =", "completion": f" {rng.randrange(1000):03d}\n"}) + "\n")
P
    for method in plain $(for m in $ms; do echo "kstate$m"; done); do
        out=$work/K$K-$method
        [ -f "$out/metrics.json" ] && continue
        extra=""
        case $method in kstate*) extra=", \"kernel_state\": {\"features\": ${method#kstate}, \"gamma\": $gamma, \"support\": \"kmeans\"}" ;; esac
        mkdir -p "$out"
        cat >"$out/job.json" <<J
{"name": "recall-$K-$method", "model": "$model", "train": "$work/data-$K.jsonl", "eval": "$work/data-$K.jsonl",
 "ctx_len": 32, "micro_batch": $batch, "global_batch": $batch, "steps": $steps,
 "lr_init": 1.0, "lr_final": 0.01, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 0, "seed": 1$extra}
J
        echo "K $K $method" >&2
        "$worker" tune "$out/job.json" --local --out "$out" --threads "$threads" --fresh >"$out/log" 2>&1
    done
done
$py - "$work" "$ks" "plain $(for m in $ms; do echo "kstate$m"; done)" <<'P'
import json, sys
work, ks, methods = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
print("| pairs K | " + " | ".join(methods) + " |")
print("| --- |" + " --- |" * len(methods))
for K in ks:
    row = []
    for m in methods:
        j = json.load(open(f"{work}/K{K}-{m}/metrics.json"))
        row.append(f"{j['exact_match_after'] * 100:.0f}% ({j['eval_loss_after']:.3f})")
    print(f"| {K} | " + " | ".join(row) + " |")
P
