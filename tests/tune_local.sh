#!/usr/bin/env bash
# tune_local.sh MODE - drives the real `statetune-worker tune --local` binary
# on the 5M fixture model (pysrc-rwkv7-5M) with data made from this machine's
# Python sources (tests/make_tabs_data.py). Modes:
#
#   decrease  a short job lowers the held-out loss clearly, writes
#             state.safetensors + metrics.json, prints one progress line per
#             step on a non-terminal stderr
#   resume    a job stopped after 4 steps and rerun with the same --out ends
#             with a state bit-identical to an uninterrupted run (CPU, one
#             thread: the engine's multi-threaded reductions are not ordered);
#             so is one stopped by SIGINT and rerun
#   mpi       mpirun -np 2 gives the state of -np 1 for the same global batch
#             (relative difference <= 1e-5), with DBP off and on
#   kill      kill -9 of one rank under mpirun ends the group with an error
#             within 30 s and no state is written
#   hang      a rank that stops answering (SIGSTOP) makes the watchdog end
#             the group with a clear message within the timeout
#   validate  a bad job file or a bad JSONL line fails before any compute,
#             naming the key or the line; a runaway learning rate fails the
#             job ("diverged") without writing a state
#
# Exit 77 (skipped) when the fixtures, the Python sources or mpirun are absent.
set -u
mode=${1:?usage: tune_local.sh decrease|resume|mpi|kill|hang|validate}
. "$(dirname "$0")/lib/common.sh"
st_local_paths
st_local_tabs "$mode" 128 16 100

# job NAME STEPS GLOBAL MICRO [EXTRA_JSON]
job() {
    cat >"$tmp/$1.json" <<EOF
{"name": "$1", "model": "$model", "train": "train.jsonl", "eval": "eval.jsonl",
 "ctx_len": 64, "micro_batch": $4, "global_batch": $3, "steps": $2,
 "lr_init": 1.0, "lr_final": 0.05, "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 5${5:+, $5}}
EOF
}

metric() { "$py" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

# tune JOB OUT LOG [ARGS...]: JOB alone with one thread into $tmp/OUT, its
# stderr in $tmp/LOG; fail()s with that stderr when it does not succeed
tune() {
    local job=$1 out=$2 log=$3
    shift 3
    "$worker" tune "$tmp/$job.json" --local --out "$tmp/$out" --threads 1 "$@" >/dev/null 2>"$tmp/$log" ||
        fail "$(cat "$tmp/$log")"
}

# np2_agrees JOB WHAT: JOB with one process into $tmp/JOB-1 and with mpirun
# -np 2 into $tmp/JOB-2 (output in $tmp/JOB-2.out and .err): the states agree
# within 1e-5 relative
np2_agrees() {
    tune "$1" "$1-1" "$1-1.err"
    mpirun -np 2 --oversubscribe "$worker" tune "$tmp/$1.json" --local --out "$tmp/$1-2" >"$tmp/$1-2.out" 2>"$tmp/$1-2.err" ||
        fail "mpirun -np 2 ($2) failed: $(cat "$tmp/$1-2.err")"
    rel=$(state_rel "$tmp/$1-1/state.safetensors" "$tmp/$1-2/state.safetensors") || fail "could not compare states"
    echo "$2, np 2 vs np 1: relative difference $rel"
    "$py" -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 1e-5 else 1)" "$rel" || fail "$2 states differ by $rel"
}

# group_start JOB [VAR=VALUE...]: mpirun -np 2 of JOB in the background (with
# the VARs in its environment), its pid in mp, output in $tmp/o and $tmp/e;
# returns once the group steps, with the pid of one rank in victim
group_start() {
    local job=$1
    shift
    env "$@" mpirun -np 2 --oversubscribe "$worker" tune "$tmp/$job.json" --local --out "$tmp/out" >"$tmp/o" 2>"$tmp/e" &
    mp=$!
    for _ in $(seq 1 120); do
        grep -q '^step 2/' "$tmp/e" 2>/dev/null && break
        sleep 0.5
    done
    grep -q '^step 2/' "$tmp/e" || { kill -9 $mp; fail "the group never started stepping: $(cat "$tmp/e")"; }
    victim=$(pgrep -P $mp -f statetune-worker | tail -1)
    [ -n "$victim" ] || { kill -9 $mp; fail "no rank process found under mpirun $mp"; }
    t0=$(date +%s)
}

# group_end WHAT: waits up to 30 s for the group to end after WHAT happened
# to its victim (else kills it and fail()s); its exit status in rc
group_end() {
    for _ in $(seq 1 60); do
        kill -0 $mp 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 $mp 2>/dev/null; then
        kill -9 "$victim" $mp
        fail "the group was still running 30 s after $1"
    fi
    rc=0
    wait $mp || rc=$?
    t1=$(date +%s)
    kill -9 "$victim" 2>/dev/null
}

st_mpi_env

case $mode in
decrease)
    job dec 10 8 8
    "$worker" tune "$tmp/dec.json" --local --out "$tmp/out" --threads 1 >"$tmp/stdout" 2>"$tmp/stderr" ||
        fail "tune failed: $(cat "$tmp/stderr")"
    [ -s "$tmp/out/state.safetensors" ] || fail "no state.safetensors"
    [ -s "$tmp/out/metrics.json" ] || fail "no metrics.json"
    for k in eval_loss_before eval_loss_after train_loss_first train_loss_last steps tokens_per_s \
             perplexity_before perplexity_after accuracy_before accuracy_after exact_match_before exact_match_after; do
        metric "$tmp/out/metrics.json" $k >/dev/null || fail "metrics.json has no '$k'"
    done
    before=$(metric "$tmp/out/metrics.json" eval_loss_before)
    after=$(metric "$tmp/out/metrics.json" eval_loss_after)
    echo "eval loss $before -> $after"
    "$py" -c "import sys; b, a = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if a < 0.9 * b else 1)" "$before" "$after" ||
        fail "eval loss did not drop by 10%: $before -> $after"
    [ "$(metric "$tmp/out/metrics.json" steps)" = 10 ] || fail "steps is not 10"
    n=$(grep -c '^step [0-9]*/10 ' "$tmp/stderr")
    [ "$n" = 10 ] || fail "expected 10 progress lines on stderr, got $n: $(cat "$tmp/stderr")"
    grep -q 'tok/s' "$tmp/stderr" && grep -q 'ETA' "$tmp/stderr" || fail "progress lines lack tok/s or ETA"
    grep -q 'eval loss' "$tmp/stdout" || fail "no summary on stdout"
    ;;
resume)
    job res 10 8 8
    tune res full e1
    tune res part e2 --max-steps 4
    [ -f "$tmp/part/checkpoint.stck" ] || fail "no checkpoint after the interrupted run"
    [ ! -e "$tmp/part/state.safetensors" ] || fail "an interrupted run wrote a state"
    tune res part e3
    grep -q '^step 5/10 ' "$tmp/e3" || fail "the rerun did not continue at step 5: $(head -3 "$tmp/e3")"
    grep -q '^step 1/10 ' "$tmp/e3" && fail "the rerun started over"
    cmp "$tmp/full/state.safetensors" "$tmp/part/state.safetensors" ||
        fail "resumed state differs from the uninterrupted one (rel $(state_rel "$tmp/full/state.safetensors" "$tmp/part/state.safetensors"))"
    # Ctrl-C (SIGINT) stops at a step boundary with a checkpoint; the rerun
    # continues from it and still ends on the uninterrupted state
    "$worker" tune "$tmp/res.json" --local --out "$tmp/sig" --threads 1 >/dev/null 2>"$tmp/e5" &
    pid=$!
    for _ in $(seq 1 300); do
        grep -q '^step 2/10 ' "$tmp/e5" 2>/dev/null && break
        sleep 0.1
    done
    kill -INT $pid
    rc=0
    wait $pid || rc=$?
    if [ $rc = 0 ]; then
        echo "note: the job finished before SIGINT arrived; the Ctrl-C path was not exercised"
    else
        grep -q 'cancelled after step' "$tmp/e5" || fail "unclear message after SIGINT: $(tail -1 "$tmp/e5")"
        [ ! -e "$tmp/sig/state.safetensors" ] || fail "a cancelled run wrote a state"
        tune res sig e6
        grep -q '^step 1/10 ' "$tmp/e6" && fail "the rerun after SIGINT started over"
        cmp "$tmp/full/state.safetensors" "$tmp/sig/state.safetensors" || fail "state after SIGINT + rerun differs"
        echo "SIGINT at $(grep -o 'after step [0-9]*' "$tmp/e5"), rerun: bit-identical"
    fi
    # a checkpoint of another job is refused, not silently reused
    job other 10 8 8 '"seed": 2'
    "$worker" tune "$tmp/other.json" --local --out "$tmp/part" --threads 1 >/dev/null 2>"$tmp/e4" &&
        fail "a checkpoint of another job was accepted"
    grep -q 'different job' "$tmp/e4" || fail "unclear refusal: $(cat "$tmp/e4")"
    echo "resumed state is bit-identical"
    ;;
mpi)
    st_need_cmd mpirun
    job mpi 4 8 4
    np2_agrees mpi "plain"
    [ "$(grep -c '^tuned' "$tmp/mpi-2.out")" = 1 ] || fail "expected one summary (rank 0 only): $(cat "$tmp/mpi-2.out")"
    [ "$(grep -c '^step 4/4' "$tmp/mpi-2.err")" = 1 ] || fail "expected rank 0 alone to print progress"
    [ "$(metric "$tmp/mpi-2/metrics.json" ranks)" = 2 ] || fail "metrics.json does not say 2 ranks"
    # with DBP the correlation Q is all-reduced with dS0 and the sampled rows do
    # not depend on the split: the states agree too
    job mpidbp 4 8 4 '"dbp": {"enabled": true, "lr": 0.05, "sample_fraction": 0.5}'
    np2_agrees mpidbp "DBP"
    ;;
kill)
    st_need_cmd mpirun
    job kill 500 8 4
    group_start kill
    kill -9 "$victim"
    group_end "a rank was killed"
    echo "group ended $((t1 - t0)) s after kill -9 of rank pid $victim, exit $rc"
    [ $rc -ne 0 ] || fail "the group exited 0 after losing a rank"
    [ ! -e "$tmp/out/state.safetensors" ] || fail "a state was written by a broken group"
    ;;
hang)
    # a rank that stops answering (SIGSTOP: alive, but never reaches the next
    # all-reduce) is caught by dist.c's watchdog, which aborts the group
    st_need_cmd mpirun
    job hang 500 8 4
    group_start hang STATETUNE_DIST_TIMEOUT_S=5
    kill -STOP "$victim"
    group_end "a rank stopped answering"
    echo "group ended $((t1 - t0)) s after SIGSTOP of rank pid $victim, exit $rc"
    [ $rc -ne 0 ] || fail "the group exited 0 after a rank hung"
    grep -q 'took longer than 5 s' "$tmp/e" || fail "no watchdog message: $(cat "$tmp/e")"
    ;;
validate)
    echo '{"name": "v", "model": "'"$model"'", "train": "train.jsonl", "lr": 1.0}' >"$tmp/bad.json"
    "$worker" tune "$tmp/bad.json" --local --out "$tmp/o1" >/dev/null 2>"$tmp/e1" && fail "a job with an unknown key ran"
    grep -q "'lr'" "$tmp/e1" || fail "the error does not name the key: $(cat "$tmp/e1")"
    [ "$(wc -l <"$tmp/e1")" = 1 ] || fail "expected one sentence: $(cat "$tmp/e1")"
    [ ! -e "$tmp/o1" ] || fail "the out dir was created before validation passed"
    printf '{"text": "fine"}\n{"text": oops}\n' >"$tmp/badlines.jsonl"
    job vl 2 8 8
    sed -i 's/"train.jsonl"/"badlines.jsonl"/' "$tmp/vl.json"
    "$worker" tune "$tmp/vl.json" --local --out "$tmp/o2" >/dev/null 2>"$tmp/e2" && fail "a job with a bad line ran"
    grep -q 'line 2' "$tmp/e2" || fail "the error does not name line 2: $(cat "$tmp/e2")"
    "$worker" tune "$tmp/vl.json" --out "$tmp/o3" >/dev/null 2>&1
    [ $? = 2 ] || fail "missing --local is not a usage error"
    # a runaway learning rate gives finite but absurd states: refused, nothing stored
    job runaway 3 8 8
    sed -i 's/"lr_init": 1.0, "lr_final": 0.05/"lr_init": 1e30, "lr_final": 1e29/' "$tmp/runaway.json"
    "$worker" tune "$tmp/runaway.json" --local --out "$tmp/o4" --threads 1 >/dev/null 2>"$tmp/e4" &&
        fail "a job with lr_init 1e30 succeeded"
    grep -q 'diverged' "$tmp/e4" || fail "unclear error for a diverged state: $(tail -1 "$tmp/e4")"
    [ ! -e "$tmp/o4/state.safetensors" ] || fail "a diverged job wrote a state"
    ;;
*)
    fail "unknown mode '$mode'"
    ;;
esac
echo "tune_local $mode: OK"
