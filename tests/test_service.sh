#!/usr/bin/env bash
# test_service.sh - the service end to end with the real binaries (issue #7;
# SPEC sections 2.1, 6, 7 and 9): a coordinator, CPU worker groups under
# mpirun, and the statetune client, on an ipc:// endpoint in a fresh folder.
#
#   test_service.sh e2e               submit, watch, wait, states get/show: the tuned state and its metrics
#   test_service.sh priority          5 jobs on 2 groups start in priority order and all succeed
#   test_service.sh cancel            a running job stops within 5 s and the group serves on
#   test_service.sh kill_group        SIGKILL a group mid-job; another group finishes it from its checkpoint
#   test_service.sh kill_rank         SIGKILL one non-root rank: the group ends, another finishes the job
#   test_service.sh kill_coordinator  SIGKILL the coordinator mid-job and restart it: queue, running job
#                                     and registry intact, the job finishes on the group that had it
#   test_service.sh curve             CURVE on: a refused key gets nothing (logged), allowed keys work
#   test_service.sh coordinator_gone  a group without a coordinator exits with a clear error
#
# Jobs use the tiny fixture model and a few dozen short samples, so each takes
# seconds; exit 77 (skipped) when the fixtures or mpirun are absent.
set -u

scenario=${1:?usage: test_service.sh e2e|priority|cancel|kill_group|kill_rank|kill_coordinator|curve|coordinator_gone}
. "$(dirname "$0")/lib/common.sh"
st_paths
st_tiny_model
st_need_py

st_service_dir service
FAIL_WHAT=$scenario
FAIL_TAIL=25
HB_MS=400          # heartbeat: a group silent for 3 x 400 ms is lost

[ -n "${KEEP:-}" ] && echo "folder: $T"

start_coordinator() { st_coordinator_up --db "$T/registry.db" --insecure --heartbeat-ms $HB_MS; }

# start_group NAME RANKS: one worker group under mpirun; its pid in GROUP_PID
start_group() { st_start_group "group-$1.log" "$2" --coordinator-timeout 30; }

# kill_group PID: SIGKILL the ranks and their launcher
kill_group() {
    local ranks
    ranks=$(pgrep -P "$1")
    kill -9 $ranks "$1" 2>/dev/null
}

# make_job NAME STEPS PRIORITY CHECKPOINT_EVERY -> $T/NAME.json (relative data paths:
# the client resolves them against the job file's folder)
make_job() {
    cat >"$T/$1.json" <<EOF
{"name": "$1", "model": "$MODEL", "train": "train.jsonl", "eval": "eval.jsonl",
 "ctx_len": 32, "micro_batch": 2, "global_batch": 4, "steps": $2, "priority": $3,
 "checkpoint_every": $4, "eval_every": 0, "warmup_steps": 2, "seed": 7}
EOF
}

# job_past_checkpoint NAME: the coordinator, group a (2 ranks; its pid in
# A) and job NAME (1500 steps, a checkpoint every 10), its id in J; returns
# once the job has a checkpoint at step 20 or later
job_past_checkpoint() {
    start_coordinator
    start_group a 2
    A=$GROUP_PID
    make_job "$1" 1500 0 10
    J=$("$ST" submit "$T/$1.json") || fail "submit failed"
    wait_for "a checkpoint of job $J" 60 checkpoint_at_least "$J" 20
}

running_with_progress() {
    "$ST" status "$1" --json | json "int(d['status']=='running' and d.get('step',0) >= 1 or exit(1))"
}

# ---- data: 40 short tab-separated lines, 8 for eval --------------------------
st_tabs_data 3 40 8

case "$scenario" in
e2e)
    start_coordinator
    start_group a 2
    make_job tabs 12 0 4
    J=$("$ST" submit "$T/tabs.json") || fail "submit failed"
    echo "submitted job $J"
    "$ST" watch "$J" >"$T/watch.log" 2>&1 || fail "watch did not end in success"
    grep -q "step 12/12" "$T/watch.log" || fail "watch showed no progress up to step 12"
    grep -q "registered tabs@1" "$T/watch.log" || fail "watch did not report the registered state"
    "$ST" wait "$J" --timeout 60 || fail "wait did not exit 0 for a succeeded job"
    [ "$(status_of "$J")" = succeeded ] || fail "status is not succeeded"
    # the registry's state is the worker's output, bit for bit
    "$ST" states get tabs@latest -o "$T/got.safetensors" || fail "states get failed"
    "$PY" - "$T/got.safetensors" "$T/registry.db.jobs/$J/state.safetensors" <<'EOF' || fail "fetched state differs from the tuned one"
import json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}
a, b = load(sys.argv[1]), load(sys.argv[2])
assert sorted(a) == ["blocks.0.att.time_state", "blocks.1.att.time_state"], sorted(a)
assert a == b
assert any(x != 0 for x in a["blocks.0.att.time_state"]), "the tuned state is all zeros"
print("state matches:", sorted(a))
EOF
    # metrics beside the untuned baseline, and the tuning helped
    "$ST" states show tabs@latest --json | json 'int(not [m for m in d["metrics"] if m["name"]=="eval_loss" and m["baseline"] is not None and m["value"] < m["baseline"]] and exit(1))' \
        || fail "states show has no eval_loss below its baseline"
    "$ST" states show tabs@latest | grep -q "eval_loss" || fail "human states show lacks the metrics table"
    "$ST" states list | grep -q "^tabs " || fail "states list lacks tabs"
    "$ST" jobs | grep -q "succeeded" || fail "jobs lacks the job"
    # a registered model stands for its file in a job
    "$ST" models register tiny "$MODEL" >/dev/null || fail "models register failed"
    "$ST" models list | grep -q "^tiny " || fail "models list lacks the registered model"
    sed 's|"model": "[^"]*"|"model": "tiny"|; s|"name": "tabs"|"name": "byname"|; s|"steps": 12|"steps": 3|' \
        "$T/tabs.json" >"$T/byname.json"
    J2=$("$ST" submit "$T/byname.json") || fail "submit with a registered model name failed"
    "$ST" wait "$J2" --timeout 60 || fail "the job on a registered model did not succeed"
    sha=$(sha256sum "$MODEL" | cut -d' ' -f1)
    "$ST" states show byname@latest --json | json "int(d['model_sha256'] == '$sha' or exit(1))" \
        || fail "the state's model_sha256 is not the model file's"
    # a job that fails on the group (its data vanished after validation):
    # failed, with the group's reason, and wait exits 1
    cp "$T/train.jsonl" "$T/gone.jsonl"
    sed 's|"train": "train.jsonl"|"train": "gone.jsonl"|; s|"name": "tabs"|"name": "gone"|' "$T/tabs.json" >"$T/gone.json"
    kill_group "$GROUP_PID"           # no group while the data goes away
    J3=$("$ST" submit "$T/gone.json") || fail "submit failed"
    rm "$T/gone.jsonl"
    start_group c 2
    "$ST" wait "$J3" --timeout 60 2>"$T/gone.txt" && fail "wait exited 0 for a failed job"
    grep -q "failed: .*gone.jsonl" "$T/gone.txt" || fail "the failure does not name the missing file: $(cat "$T/gone.txt")"
    sleep 1
    kill -0 "$GROUP_PID" 2>/dev/null || fail "a job whose inputs are missing ended its group"
    # an unknown job is one clear sentence and exit 1
    "$ST" status 999 2>"$T/err.txt" && fail "status of an unknown job succeeded"
    grep -q "999" "$T/err.txt" || fail "unknown job error does not name it: $(cat "$T/err.txt")"
    ;;

priority)
    start_coordinator
    prios=(1 5 2 9 0)
    for i in 0 1 2 3 4; do
        make_job "p$i" 6 "${prios[$i]}" 0
        "$ST" submit "$T/p$i.json" >/dev/null || fail "submit p$i failed"
    done
    start_group a 1
    start_group b 1
    for j in 1 2 3 4 5; do
        "$ST" wait "$j" --timeout 120 || fail "job $j did not succeed"
    done
    "$ST" jobs --json | json '
(lambda jobs: [print(j["id"], j["priority"], j["started"], j["worker_group"]) for j in sorted(jobs, key=lambda j: j["started"])]
 and (all(a["started"] <= b["started"] for a in jobs for b in jobs if a["priority"] > b["priority"]) or exit(1)))(d)' \
        || fail "jobs did not start in priority order"
    ;;

cancel)
    start_coordinator
    start_group a 2
    make_job long 1000000 0 0
    J=$("$ST" submit "$T/long.json") || fail "submit failed"
    wait_for "job $J to run" 60 running_with_progress "$J"
    t0=$(date +%s.%N)
    "$ST" cancel "$J" || fail "cancel failed"
    wait_for "job $J to be cancelled" 10 is_status "$J" cancelled
    t1=$(date +%s.%N)
    dt=$("$PY" -c "print(round($t1 - $t0, 2))")
    echo "cancelled within $dt s"
    "$PY" -c "exit(0 if $t1 - $t0 <= 5 else 1)" || fail "cancel took $dt s (over 5 s)"
    "$ST" wait "$J" && fail "wait exited 0 for a cancelled job"
    # the group is free again and serves the next job
    make_job short 4 0 0
    J2=$("$ST" submit "$T/short.json") || fail "submit failed"
    "$ST" wait "$J2" --timeout 60 || fail "the group did not serve a job after the cancel"
    ;;

kill_group)
    job_past_checkpoint resume
    kill_group "$A"
    echo "killed group a (pid $A) with SIGKILL"
    wait_for "job $J to go back to the queue" 15 is_status "$J" queued
    start_group b 2
    "$ST" wait "$J" --timeout 120 || fail "job $J did not finish on the second group"
    "$ST" events "$J" | grep -q "requeued" || fail "no requeue event"
    "$ST" status "$J" --json | json 'int(d["attempt"] == 2 or exit(1))' || fail "the job did not run twice"
    st_resumed_from resume 20
    ;;

kill_rank)
    # SIGKILL one rank that is not rank 0: the group must end (MPI sees the
    # dead rank) and the job finish on another group from its checkpoint
    job_past_checkpoint rank
    root=$(sed -n 's/.*statetune-worker [^ ]*-\([0-9]*\)-[0-9a-f]*: .*/\1/p' "$T/group-a.log" | head -1)
    victim=$(pgrep -P "$A" | grep -v "^$root\$" | head -1)
    [ -n "$victim" ] || fail "no rank other than rank 0 ($root) found under mpirun $A"
    kill -9 "$victim"
    echo "killed rank pid $victim (rank 0 is $root)"
    wait_for "the group to end after losing a rank" 40 st_gone "$A"
    wait_for "job $J to go back to the queue" 15 is_status "$J" queued
    start_group b 2
    "$ST" wait "$J" --timeout 120 || fail "job $J did not finish on the second group"
    n=$("$ST" states list --json | json 'len(d)')
    [ "$n" = 1 ] || fail "expected 1 registered state, found $n"
    ;;

kill_coordinator)
    start_coordinator
    start_group a 2
    make_job first 1500 5 10
    make_job second 4 0 0
    J1=$("$ST" submit "$T/first.json") || fail "submit failed"
    wait_for "job $J1 to run" 60 running_with_progress "$J1"
    J2=$("$ST" submit "$T/second.json") || fail "submit failed"
    wait_for "a checkpoint of job $J1" 60 checkpoint_at_least "$J1" 20
    # a client already waiting rides out the restart
    "$ST" wait "$J1" --timeout 120 >"$T/waiter.log" 2>&1 &
    WAITER=$!
    PIDS+=("$WAITER")
    sleep 0.5
    # the scenario is only what it claims while job 1 is still running
    [ "$(status_of "$J1")" = running ] || fail "job $J1 ended before the coordinator was killed (the job is too short)"
    kill -9 "$COORD"
    wait "$COORD" 2>/dev/null
    echo "killed the coordinator (pid $COORD) with SIGKILL"
    sleep 1
    start_coordinator
    # the queue survived: the second job is still queued or done
    st2=$(status_of "$J2")
    case "$st2" in queued|running|succeeded) ;; *) fail "job $J2 is '$st2' after the restart" ;; esac
    "$ST" wait "$J1" --timeout 120 || fail "job $J1 did not finish after the restart"
    wait "$WAITER" || fail "the client waiting across the restart did not see the job succeed: $(cat "$T/waiter.log")"
    "$ST" wait "$J2" --timeout 60 || fail "job $J2 did not finish after the restart"
    "$ST" events "$J1" | grep -q "coordinator restarted" || fail "no restart event on job $J1"
    n=$("$ST" states list --json | json 'len(d)')
    [ "$n" = 2 ] || fail "expected 2 registered states, found $n"
    grep -q "carries on with job $J1" "$T/coordinator.log" || echo "note: job $J1 was not reclaimed by its group (another took it)"
    ;;

curve)
    # keys for the coordinator, one client and one group; only the latter two are allowed
    mkdir -p "$T/allow"
    "$ST" keys gen "$T/keys/server" >/dev/null || fail "keys gen failed"
    "$ST" keys gen "$T/allow/alice" >/dev/null || fail "keys gen failed"
    "$ST" keys gen "$T/allow/group" >/dev/null || fail "keys gen failed"
    "$ST" keys gen "$T/keys/mallory" >/dev/null || fail "keys gen failed"
    [ "$(stat -c %a "$T/allow/alice.key")" = 600 ] || fail "a secret key file is not 0600"
    st_start_coordinator --db "$T/registry.db" --curve-secret "$T/keys/server.key" \
        --allow "$T/allow" --heartbeat-ms $HB_MS
    st_start_group group-a.log 2 --curve-secret "$T/allow/group.key" --curve-public "$T/allow/group.pub" \
        --server-key "$T/keys/server.pub"
    # a client with a key that is not allowed gets nothing, and is told so
    "$ST" jobs --timeout-ms 1500 --curve-secret "$T/keys/mallory.key" --server-key "$T/keys/server.pub" \
        2>"$T/mallory.txt" && fail "a client with a refused key was served"
    grep -q "did not answer" "$T/mallory.txt" || fail "the refused client's error is unclear: $(cat "$T/mallory.txt")"
    grep -q "refused" "$T/coordinator.log" || fail "the refusal is not logged"
    # with an allowed key (from the environment) everything works
    export STATETUNE_CURVE_SECRET="$T/allow/alice.key" STATETUNE_SERVER_KEY="$T/keys/server.pub"
    make_job secret 4 0 0
    J=$("$ST" submit "$T/secret.json") || fail "submit with an allowed key failed"
    "$ST" wait "$J" --timeout 60 || fail "the job did not succeed over CURVE"
    "$ST" states get secret@latest -o "$T/s.st" || fail "states get over CURVE failed"
    ;;

coordinator_gone)
    # a group whose coordinator never answers gives up with a clear error
    st_start_group group-a.log 2 --coordinator-timeout 2
    G=$GROUP_PID
    wait_for "the group to give up" 30 st_gone "$G"
    wait "$G" && fail "the group exited 0 without a coordinator"
    grep -q "has not answered for 2 s" "$T/group-a.log" || fail "the group's error is unclear: $(tail -3 "$T/group-a.log")"
    ;;

*)
    echo "unknown scenario '$scenario'"
    exit 2
    ;;
esac
echo "ok: $scenario"
exit 0
