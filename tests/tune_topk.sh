#!/usr/bin/env bash
# tune_topk.sh - the observer's teacher logits ahead of time (top-k, SPEC
# section 4; engine/teacher_cache.h) through the real `statetune-worker`, on
# the 5M fixture model (vocab 256) with a few steps of tabs data:
#   - top_k = V (256) trains the same state as the teacher on the fly
#     (top_k 0) to float rounding, and says observer_top_k in metrics.json;
#   - the default top_k (64) computes DIR/teacher_topk.stk at job start;
#   - `statetune-worker teacher JOB --out DIR/teacher_topk.stk` made
#     beforehand is used as it is (same inode after the run) and gives the
#     same state as the automatic one;
#   - a cache made for other data or another teacher, and a truncated one,
#     are refused with one sentence; --fresh rebuilds instead;
#   - mpirun -np 2 (the ranks run the teacher on alternate micro-batches and
#     gather the rows; each then reads the rows of its samples) builds the
#     same cache and gives the state of -np 1.
# Exit 77 (skipped) when the fixtures or the Python sources are absent.
set -u
. "$(dirname "$0")/lib/common.sh"
st_local_paths
st_local_tabs topk 48 8 80
head -n 40 "$tmp/train.jsonl" >"$tmp/train2.jsonl"

job() { # name train extra
    cat >"$tmp/$1.json" <<J
{"name": "k-$1", "model": "$model", "train": "$2", "eval": "eval.jsonl", "ctx_len": 96,
 "micro_batch": 4, "global_batch": 8, "steps": 3, "lr_init": 1.0, "lr_final": 0.01, "warmup_steps": 1,
 "eval_every": 0, "checkpoint_every": 0, "seed": 3$3}
J
}
run() { local n=$1 out=$2; shift 2; "$worker" tune "$tmp/$n.json" --local --out "$tmp/$out" --threads 1 "$@" >"$tmp/$out.log" 2>&1; }
metric() { "$py" -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]))" "$tmp/$1/metrics.json" "$2"; }
obs() { echo ", \"observer\": {\"teacher\": \"$model\", \"teacher_state\": \"$1\", \"alpha\": 0.5, \"temperature\": 2.0$2}"; }

job plain train.jsonl ""
run plain plain || fail "plain tuning failed: $(tail -1 "$tmp/plain.log")"
teacher=$tmp/plain/state.safetensors

job fly train.jsonl "$(obs "$teacher" ', "top_k": 0')"
run fly fly || fail "observer on the fly failed: $(tail -1 "$tmp/fly.log")"
[ -e "$tmp/fly/teacher_topk.stk" ] && fail "top_k 0 wrote a teacher cache"
job kv train.jsonl "$(obs "$teacher" ', "top_k": 256')"
run kv kv || fail "observer with top_k = V failed: $(tail -1 "$tmp/kv.log")"
[ "$(metric kv observer_top_k)" = 256 ] || fail "metrics.json does not give observer_top_k 256"
rel=$(state_rel "$tmp/fly/state.safetensors" "$tmp/kv/state.safetensors")
echo "top_k = V vs on the fly: state relative difference $rel"
"$py" -c "import sys; sys.exit(0 if float(sys.argv[1]) < 1e-5 else 1)" "$rel" ||
    fail "top_k = V trained another state than the teacher on the fly (relative difference $rel)"

job k64 train.jsonl "$(obs "$teacher" '')"
run k64 k64 || fail "observer with the default top_k failed: $(tail -1 "$tmp/k64.log")"
[ "$(metric k64 observer_top_k)" = 64 ] || fail "the default top_k is not 64"
[ -s "$tmp/k64/teacher_topk.stk" ] || fail "no DIR/teacher_topk.stk after a top-k job"
cmp -s "$tmp/k64/state.safetensors" "$tmp/plain/state.safetensors" && fail "the top-k observer changed nothing"
rel=$(state_rel "$tmp/fly/state.safetensors" "$tmp/k64/state.safetensors")
echo "top_k 64 vs on the fly: state relative difference $rel"

# made beforehand with the command: used as it is
mkdir -p "$tmp/pre"
"$worker" teacher "$tmp/k64.json" --out "$tmp/pre/teacher_topk.stk" --threads 1 >"$tmp/teacher.log" 2>&1 ||
    fail "statetune-worker teacher failed: $(tail -1 "$tmp/teacher.log")"
cat "$tmp/teacher.log"
cmp -s "$tmp/pre/teacher_topk.stk" "$tmp/k64/teacher_topk.stk" || fail "the command's cache differs from the job's"
ino=$(stat -c %i "$tmp/pre/teacher_topk.stk")
run k64 pre || fail "tuning with a cache made beforehand failed: $(tail -1 "$tmp/pre.log")"
[ "$(stat -c %i "$tmp/pre/teacher_topk.stk")" = "$ino" ] || fail "the cache made beforehand was rebuilt, not used"
cmp -s "$tmp/k64/state.safetensors" "$tmp/pre/state.safetensors" || fail "the cache made beforehand gave another state"

# stale and damaged caches are refused; --fresh rebuilds
job other train2.jsonl "$(obs "$teacher" '')"
mkdir -p "$tmp/stale" && cp "$tmp/k64/teacher_topk.stk" "$tmp/stale/"
run other stale && fail "a cache made for other data was accepted"
grep -q "other training data" "$tmp/stale.log" || fail "the refusal does not say the data changed: $(tail -1 "$tmp/stale.log")"
run other stale --fresh || fail "--fresh did not rebuild the stale cache: $(tail -1 "$tmp/stale.log")"
job nost train.jsonl "$(obs "$tmp/plain/checkpoint.stck.missing" '' | sed 's/"teacher_state": "[^"]*", //')"
mkdir -p "$tmp/nost" && cp "$tmp/k64/teacher_topk.stk" "$tmp/nost/"
run nost nost && fail "a cache made with another teacher state was accepted"
grep -q "another teacher" "$tmp/nost.log" || fail "the refusal does not say the teacher changed: $(tail -1 "$tmp/nost.log")"
mkdir -p "$tmp/trunc" && head -c 5000 "$tmp/k64/teacher_topk.stk" >"$tmp/trunc/teacher_topk.stk"
run k64 trunc && fail "a truncated cache was accepted"
grep -q "truncated" "$tmp/trunc.log" || fail "the refusal does not say the cache is truncated: $(tail -1 "$tmp/trunc.log")"

if command -v mpirun >/dev/null; then
    st_mpi_env
    mpirun -np 2 --oversubscribe "$worker" tune "$tmp/k64.json" --local --out "$tmp/np2" --threads 1 >"$tmp/np2.log" 2>&1 ||
        fail "mpirun -np 2 with top-k failed: $(tail -3 "$tmp/np2.log")"
    # the two ranks ran the teacher on alternate micro-batches and gathered the rows:
    # the same rows as one process (all but the mean-mass field and the checksum)
    "$py" - "$tmp/k64/teacher_topk.stk" "$tmp/np2/teacher_topk.stk" <<'P' || fail "np 2 built another teacher cache than np 1"
import sys
a, b = open(sys.argv[1], 'rb').read(), open(sys.argv[2], 'rb').read()
assert len(a) == len(b) and a[:40] == b[:40] and a[48:-32] == b[48:-32], (len(a), len(b))
P
    # a group agrees on a stale cache: every rank refuses it, the group fails with the sentence
    mkdir -p "$tmp/np2-stale" && cp "$tmp/k64/teacher_topk.stk" "$tmp/np2-stale/"
    mpirun -np 2 --oversubscribe "$worker" tune "$tmp/other.json" --local --out "$tmp/np2-stale" --threads 1 \
        >"$tmp/np2-stale.log" 2>&1 && fail "a group accepted a cache made for other data"
    grep -q "other training data" "$tmp/np2-stale.log" || fail "the group's refusal does not say the data changed: $(tail -2 "$tmp/np2-stale.log")"
    rel=$(state_rel "$tmp/k64/state.safetensors" "$tmp/np2/state.safetensors")
    echo "top_k 64, np 2 vs np 1: state relative difference $rel"
    "$py" -c "import sys; sys.exit(0 if float(sys.argv[1]) < 1e-5 else 1)" "$rel" ||
        fail "np 2 with top-k differs from np 1 (relative difference $rel)"
else
    echo "mpirun not found: the np 2 check did not run"
fi
echo "tune_topk: ok"
