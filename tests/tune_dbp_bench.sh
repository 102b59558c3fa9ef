#!/usr/bin/env bash
# tune_dbp_bench.sh [STEPS] [EVAL_EVERY] - the DBP benchmark of SPEC section 4
# (a script, not a test: it takes minutes). For two tasks made from this
# machine's Python sources (tests/make_tabs_data.py: code re-indented with
# tabs; a fixed licence header before code), it tunes the 5M fixture model
# with DBP off and on, same data, same seed, same optimizer, and reports for
# each run the steps needed to reach a target eval loss (cuts of 25% and 40%
# from the untuned loss; evaluated every EVAL_EVERY steps, so steps are
# rounded up to that grid), and the final eval loss. Prints a Markdown table
# (the one in docs/methods.md comes from here).
#
# Environment: STATETUNE_BUILD_DIR (default ./build), STATETUNE_FIXTURES,
# THREADS (default 1: runs are compared, so keep them alike), DBP_LR
# (default 1e-3, the SPEC default), KEEP=1 to keep the work folder.
set -eu
steps=${1:-60}
every=${2:-5}
here=$(cd "$(dirname "$0")" && pwd)
build=${STATETUNE_BUILD_DIR:-$here/../build}
worker=$build/worker/statetune-worker
fixtures=${STATETUNE_FIXTURES:-$here/../../shared/fixtures}
model=$fixtures/rwkv7/pysrc-rwkv7-5M.pth
threads=${THREADS:-1}
dbp_lr=${DBP_LR:-1e-3}
py=/usr/bin/python3
[ -x "$worker" ] || { echo "no worker binary at $worker (build first)" >&2; exit 1; }
[ -f "$model" ] || { echo "fixture model $model not found" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/dbp-bench-XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

for task in tabs licence; do
    "$py" "$here/make_tabs_data.py" "$work/$task" --task $task --train 960 --eval 64 --bytes 170 --seed 1 >/dev/null
    for dbp in off on; do
        enabled=false
        [ $dbp = on ] && enabled=true
        cat >"$work/$task/job-$dbp.json" <<EOF
{"name": "bench-$task-dbp-$dbp", "model": "$model", "train": "train.jsonl", "eval": "eval.jsonl",
 "ctx_len": 256, "micro_batch": 16, "global_batch": 16, "steps": $steps,
 "lr_init": 1.0, "lr_final": 0.01, "warmup_steps": 5, "eval_every": $every, "checkpoint_every": 0, "seed": 1,
 "dbp": {"enabled": $enabled, "lr": $dbp_lr, "kappa": 0.01, "sample_fraction": 0.25}}
EOF
        echo "running $task, DBP $dbp ($steps steps)..." >&2
        "$worker" tune "$work/$task/job-$dbp.json" --local --out "$work/$task/out-$dbp" --threads "$threads" \
            >/dev/null 2>"$work/$task/log-$dbp"
    done
done

"$py" - "$work" "$steps" <<'EOF'
import json, sys
work, steps = sys.argv[1], int(sys.argv[2])
print("| task | DBP | untuned eval loss | steps to -25% | steps to -40% | final eval loss | change | tokens/s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for task in ("tabs", "licence"):
    for dbp in ("off", "on"):
        m = json.load(open(f"{work}/{task}/out-{dbp}/metrics.json"))
        base = m["eval_loss_before"]
        def reach(cut):
            for e in m["evals"]:
                if e["step"] > 0 and e["eval_loss"] is not None and e["eval_loss"] <= (1 - cut) * base:
                    return str(e["step"])
            return f"> {steps}"
        after = m["eval_loss_after"]
        print(f"| {task} | {dbp} | {base:.4f} | {reach(0.25)} | {reach(0.40)} | {after:.4f} | "
              f"{100 * (after - base) / base:+.1f}% | {m['tokens_per_s']:.0f} |")
EOF
