#!/bin/bash
# gpu_methods_tune.sh - the observer and the kernel-expanded state through the
# real `statetune-worker tune --local --backend cuda` (SPEC section 4), on the
# GPU machine, from a pack made by tests/gpu.sh (RT/bin/statetune-worker,
# RT/data/pysrc-rwkv7-5M.pth and a tabs dataset in RT/data):
#   - plain tuning, then the observer (alpha 0.5, temperature 2, the teacher =
#     the same model from the state just tuned, full rows on the fly: top_k 0)
#     and the kernel-expanded state (k-means and random support vectors, 8
#     features), in fp32 and bf16: each job succeeds, lowers the eval loss and
#     says so in metrics.json (observer true, kernel_features 8, the U0 file
#     beside the state);
#   - the observer with the teacher's top-k ahead of time (top_k 16: the
#     cache DIR/teacher_topk.stk is built at job start, metrics.json says
#     observer_top_k 16, the eval loss goes down), and with top_k = V (256),
#     which must train the state of the teacher on the fly (top_k 0) to
#     float rounding (relative L2: fp32 1e-4, bf16 3e-2).
# Prints every job's tokens/s (metrics.json) for docs/performance.md.
# usage: tests/gpu_methods_tune.sh RT [OUT_DIR]
set -u
rt=${1:?usage: gpu_methods_tune.sh RT [OUT_DIR]}
out=${2:-${OUT:-/tmp}}
w=$rt/bin/statetune-worker
model=$rt/data/pysrc-rwkv7-5M.pth
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3) # the GPU machine's own Python will do for comparing states
PY=$py   # state_rel (tests/lib/common.sh) runs $PY
. "$(dirname "$0")/lib/common.sh"  # before fail(): it defines another
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$w" ] || { echo "skipped: no worker in $rt/bin"; exit 77; }
nvidia-smi -L >/dev/null 2>&1 || { echo "skipped: no CUDA device"; exit 77; }
rt=$(cd "$rt" && pwd) # the job files name the model and data from a temp folder
w=$rt/bin/statetune-worker
model=$rt/data/pysrc-rwkv7-5M.pth
[ -f "$model" ] && [ -f "$rt/data/train.jsonl" ] || { echo "skipped: no model or data in $rt/data"; exit 77; }
backend=${GPU_METHODS_BACKEND:-cuda} # cpu: a dry run of this script on a machine without a GPU
tmp=$(mktemp -d /tmp/gpu-methods-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

job() { # name precision extra
    cat >"$tmp/$1.json" <<J
{"name": "g-$1", "model": "$model", "train": "$rt/data/train.jsonl", "eval": "$rt/data/eval.jsonl",
 "ctx_len": 128, "micro_batch": 8, "global_batch": 16, "steps": ${STEPS:-12}, "lr_init": 1.0, "lr_final": 0.01,
 "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 0, "seed": 5, "backend": "$backend", "precision": "$2"$3}
J
}
run() { "$w" tune "$tmp/$1.json" --local --out "$tmp/out-$1" --backend "$backend" >"$tmp/$1.log" 2>&1; }
metric() { # name key: a top-level number or boolean of metrics.json, printed as JSON writes it
    sed -n "s/.*\"$2\": *\([^,}]*\).*/\1/p" "$tmp/out-$1/metrics.json" | head -1
}
lowered() { awk -v a="$(metric "$1" eval_loss_after)" -v b="$(metric "$1" eval_loss_before)" 'BEGIN{exit !(a < b)}'; }
report() { printf '%-22s eval loss %s -> %s  tokens/s %s\n' "$1" "$(metric "$1" eval_loss_before)" \
    "$(metric "$1" eval_loss_after)" "$(metric "$1" tokens_per_s)" | tee -a "$out/gpu_methods_tune.txt"; }

precs="fp32 bf16"
[ "$backend" = cuda ] || precs=fp32 # the CPU engine is fp32 only
for prec in $precs; do
    job plain-$prec $prec ""
    run plain-$prec || fail "plain tuning ($prec) failed: $(tail -1 "$tmp/plain-$prec.log")"
    report plain-$prec
    teacher=$tmp/out-plain-$prec/state.safetensors
    job obs-$prec $prec ", \"observer\": {\"teacher\": \"$model\", \"teacher_state\": \"$teacher\", \"alpha\": 0.5, \"temperature\": 2.0, \"top_k\": 0}"
    run obs-$prec || fail "observer ($prec) failed: $(tail -1 "$tmp/obs-$prec.log")"
    [ "$(metric obs-$prec observer)" = true ] || fail "metrics.json does not say the observer was on ($prec)"
    lowered obs-$prec || fail "the observer ($prec) did not lower the eval loss"
    report obs-$prec
    # the teacher's top-k ahead of time: k = 16, and k = V, which is the teacher on the fly
    for k in 16 256; do
        n=topk$k-$prec
        job $n $prec ", \"observer\": {\"teacher\": \"$model\", \"teacher_state\": \"$teacher\", \"alpha\": 0.5, \"temperature\": 2.0, \"top_k\": $k}"
        run $n || fail "observer with top_k $k ($prec) failed: $(tail -1 "$tmp/$n.log")"
        [ "$(metric $n observer_top_k)" = $k ] || fail "metrics.json does not say observer_top_k $k ($n)"
        [ -s "$tmp/out-$n/teacher_topk.stk" ] || fail "no DIR/teacher_topk.stk after a top-k job ($n)"
        lowered $n || fail "the top-k observer (k $k, $prec) did not lower the eval loss"
        report $n
    done
    [ "$prec" = bf16 ] && tol=3e-2 || tol=1e-4
    rel=$(state_rel "$tmp/out-obs-$prec/state.safetensors" "$tmp/out-topk256-$prec/state.safetensors") ||
        fail "could not compare the top_k = V state with the on-the-fly state ($prec)"
    echo "top_k = V vs the teacher on the fly ($prec): state relative L2 $rel (tolerance $tol)" | tee -a "$out/gpu_methods_tune.txt"
    "$py" -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$rel" "$tol" ||
        fail "top_k = V trained another state than the teacher on the fly ($prec: relative L2 $rel over $tol)"
    cmp -s "$tmp/out-topk16-$prec/state.safetensors" "$tmp/out-plain-$prec/state.safetensors" &&
        fail "the top-k observer changed nothing ($prec)"
    for sup in kmeans random; do
        n=ks-$sup-$prec
        job $n $prec ", \"kernel_state\": {\"features\": 8, \"gamma\": 1.0, \"support\": \"$sup\"}"
        run $n || fail "kernel state ($sup, $prec) failed: $(tail -1 "$tmp/$n.log")"
        [ "$(metric $n kernel_features)" = 8 ] || fail "metrics.json does not give the kernel features ($n)"
        [ -s "$tmp/out-$n/kstate.safetensors" ] || fail "no kstate.safetensors beside the state ($n)"
        lowered $n || fail "the kernel state ($sup, $prec) did not lower the eval loss"
        report $n
    done
done

echo "gpu_methods_tune: all passed ($backend)"
