#!/usr/bin/env bash
# tune_methods.sh - the observer and the kernel-expanded state through the
# real `statetune-worker tune --local` (SPEC section 4), on the 5M fixture
# model with a few steps of tabs data:
#   - observer with alpha = 1 writes a state byte-identical to plain tuning
#     (one thread), so the teacher changes nothing unless alpha < 1;
#   - observer (alpha 0.5, the teacher = the same model from a state tuned
#     first) and kernel state (k-means and random support vectors) run,
#     lower the eval loss, and say so in metrics.json; the kernel state's U0
#     lands in kstate.safetensors beside state.safetensors;
#   - a kernel-state job stopped after 2 steps and rerun resumes U0 and its
#     Adam moments (DIR/kstate.STEP.ckpt) and ends byte-identical to an
#     uninterrupted run (one thread); a damaged U0 checkpoint is refused;
#   - a missing teacher state fails with a sentence naming the key.
# Exit 77 (skipped) when the fixtures or the Python sources are absent.
set -u
. "$(dirname "$0")/lib/common.sh"
st_local_paths
st_local_tabs methods 64 8 80

job() { # out extra
    cat >"$tmp/$1.json" <<J
{"name": "m-$1", "model": "$model", "train": "train.jsonl", "eval": "eval.jsonl", "ctx_len": 96,
 "micro_batch": 4, "global_batch": 4, "steps": ${STEPS:-4}, "lr_init": 1.0, "lr_final": 0.01, "warmup_steps": 1,
 "eval_every": 0, "checkpoint_every": 2, "seed": 3$2}
J
}
run() { "$worker" tune "$tmp/$1.json" --local --out "$tmp/out-$1" --threads 1 >"$tmp/$1.log" 2>&1; }
metric() { "$py" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$tmp/out-$1/metrics.json" "$2"; }

job plain ""
run plain || fail "plain tuning failed: $(tail -1 "$tmp/plain.log")"
teacher=$tmp/out-plain/state.safetensors
obs() { echo ", \"observer\": {\"teacher\": \"$model\", \"teacher_state\": \"$1\", \"alpha\": $2, \"temperature\": 2.0}"; }

job alpha1 "$(obs "$teacher" 1.0)"
run alpha1 || fail "observer alpha 1 failed: $(tail -1 "$tmp/alpha1.log")"
cmp -s "$tmp/out-plain/state.safetensors" "$tmp/out-alpha1/state.safetensors" ||
    fail "observer with alpha = 1 gave a state different from plain tuning"

job obs "$(obs "$teacher" 0.5)"
run obs || fail "observer failed: $(tail -1 "$tmp/obs.log")"
[ "$(metric obs observer)" = True ] || fail "metrics.json does not say the observer was on"
cmp -s "$tmp/out-plain/state.safetensors" "$tmp/out-obs/state.safetensors" && fail "alpha 0.5 changed nothing"

for sup in kmeans random; do
    job ks-$sup ", \"kernel_state\": {\"features\": 8, \"gamma\": 1.0, \"support\": \"$sup\"}"
    run ks-$sup || fail "kernel state ($sup) failed: $(tail -1 "$tmp/ks-$sup.log")"
    [ "$(metric ks-$sup kernel_features)" = 8 ] || fail "metrics.json does not give the kernel features"
    [ -s "$tmp/out-ks-$sup/kstate.safetensors" ] || fail "no kstate.safetensors beside the state"
    "$py" - "$tmp/out-ks-$sup/metrics.json" <<'P' || fail "kernel state ($sup) did not lower the eval loss"
import json, sys
m = json.load(open(sys.argv[1]))
sys.exit(0 if m["eval_loss_after"] < m["eval_loss_before"] else 1)
P
done

# stop after 2 steps, rerun: the same bytes as the uninterrupted ks-kmeans run
job ksr ", \"kernel_state\": {\"features\": 8, \"gamma\": 1.0, \"support\": \"kmeans\"}"
sed -i 's/"m-ksr"/"m-ks-kmeans"/' "$tmp/ksr.json"
"$worker" tune "$tmp/ksr.json" --local --out "$tmp/out-ksr" --threads 1 --max-steps 2 >/dev/null 2>&1 ||
    fail "the interrupted kernel-state run failed"
[ -f "$tmp/out-ksr/kstate.2.ckpt" ] || fail "no kstate.2.ckpt beside the checkpoint"
cp -r "$tmp/out-ksr" "$tmp/out-ksr-bad"
run ksr || fail "resuming a kernel-state job failed: $(tail -1 "$tmp/ksr.log")"
[ "$(metric ksr resumed_from_step)" = 2 ] || fail "the rerun did not resume from step 2"
for f in state.safetensors kstate.safetensors; do
    cmp -s "$tmp/out-ks-kmeans/$f" "$tmp/out-ksr/$f" || fail "resumed kernel-state run differs from the uninterrupted one in $f"
done
printf 'garbage' | dd of="$tmp/out-ksr-bad/kstate.2.ckpt" bs=1 seek=100 conv=notrunc 2>/dev/null
"$worker" tune "$tmp/ksr.json" --local --out "$tmp/out-ksr-bad" --threads 1 >"$tmp/ksr-bad.log" 2>&1 &&
    fail "a damaged kernel-state checkpoint was accepted"
grep -q "damaged" "$tmp/ksr-bad.log" || fail "the refusal does not say the U0 checkpoint is damaged: $(tail -1 "$tmp/ksr-bad.log")"

job nostate "$(obs "$tmp/missing.safetensors" 0.5)"
run nostate && fail "a missing teacher state was accepted"
grep -q "teacher_state" "$tmp/nostate.log" || fail "the error does not name observer.teacher_state: $(tail -1 "$tmp/nostate.log")"
echo "tune_methods: ok"
