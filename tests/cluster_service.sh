#!/usr/bin/env bash
# cluster_service.sh - the service across hosts (issue #12, steps 3 and 4): a
# tests/netns/cluster.sh cluster with the coordinator on `coord` (bound to
# coord's address, CURVE on), a worker group spanning node1 and node2
# (mpirun on node1, endpoint tcp://coord:5555 resolved through the hosts'
# /etc/hosts) and the client on `client`.
#
#   cluster_service.sh e2e        submit, watch, wait, states get: the state
#                                 the group tuned, over CURVE, across hosts
#   cluster_service.sh partition  node2's link goes down mid-job: the group
#                                 ends with a clear error within a bound, the
#                                 coordinator marks it lost and requeues the
#                                 job; the link comes back, a new group
#                                 finishes the job from its checkpoint, and the
#                                 registry holds ONE version of the state
#   cluster_service.sh partition_rank0  the same with node1 cut off, the host
#                                 of rank 0 and of mpirun (the group falls
#                                 silent to the coordinator as well)
#   cluster_service.sh coord_partition  the coordinator's link goes down for
#                                 6 s mid-job: the coordinator calls the group
#                                 lost, the group (patient for 30 s) carries on;
#                                 when the link is back it says hello again and
#                                 takes its job back; one state version
#   cluster_service.sh coord_lost  the coordinator's link goes down for longer
#                                 than the group waits (5 s here): the group
#                                 ends with a clear error, the job is requeued;
#                                 a new group resumes it; one state version
#   cluster_service.sh client_partition  the client's link goes down while it
#                                 watches: a request fails with one sentence,
#                                 the watch rides it out and sees the success
#   cluster_service.sh launch     the partition test with groups started by
#                                 the deployment's deploy/launch-group.sh, with
#                                 its default keepalive and a 30 s watchdog
#
# Exit 77 (skipped) without root / network namespaces, mpirun or the fixtures.
set -u
scenario=${1:?usage: cluster_service.sh e2e|partition|partition_rank0|coord_partition|coord_lost|client_partition|launch}
. "$(cd "$(dirname "$0")" && pwd)/netns/common.sh"
cluster_prepare "service-$scenario"
make_data

PORT=5555
HB_MS=500                       # a group silent for 3 x 500 ms is lost
# a collective stuck this long ends the group: the backstop, kept well above
# mpirun's keepalive (KEEPALIVE_S), which must act first (see common.sh)
export STATETUNE_DIST_TIMEOUT_S=20
BOUND_S=30                      # the partitioned group must be gone within this
CUT_S=${CUT_S:-6}               # coord_partition: how long the coordinator is cut off

# ---- keys: the coordinator's, one client's, one group's (the last two allowed)
mkdir -p "$T/keys" "$T/allow"
for k in keys/coordinator allow/alice allow/group; do
    "$ST" keys gen "$T/$k" >/dev/null || fail "keys gen $k failed"
done

# stc ARGS...: the client on host `client`, over CURVE
stc() {
    netns_exec client env STATETUNE_ENDPOINT="tcp://coord:$PORT" \
        STATETUNE_CURVE_SECRET="$T/allow/alice.key" STATETUNE_SERVER_KEY="$T/keys/coordinator.pub" "$ST" "$@"
}

start_coordinator() {
    netns_exec coord "$COORDINATOR" --bind "tcp://$(netns_addr coord):$PORT" --db "$T/registry.db" \
        --curve-secret "$T/keys/coordinator.key" --allow "$T/allow" --heartbeat-ms $HB_MS \
        >>"$T/coordinator.log" 2>&1 &
    for _ in $(seq 100); do
        stc jobs --timeout-ms 500 >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    fail "the coordinator did not answer the client from another host"
}

# start_group NAME: a worker group on node1+node2; its mpirun's pid in GROUP_PID
start_group() {
    if [ "$scenario" = launch ]; then
        start_group_launch "$1"
        return
    fi
    group_mpirun --coordinator "tcp://coord:$PORT" --threads 1 --coordinator-timeout "${COORD_TIMEOUT_S:-30}" \
        --curve-secret "$T/allow/group.key" --curve-public "$T/allow/group.pub" \
        --server-key "$T/keys/coordinator.pub" >"$T/group-$1.log" 2>&1 &
    GROUP_PID=$!
}

# start_group_launch NAME: the same group through the deployment's launcher,
# deploy/launch-group.sh, configured as docs/multi-node.md says: a hostfile
# with node1 first, STATETUNE_IFACE naming the nodes' interface, the keys in
# one folder, and its own defaults for the rest: the OOB keepalive (5 + 2 x 5
# s) and, in this scenario, the ranks' 30 s watchdog. Only the rsh agent (our
# "ssh") and the CPU-only transport list come in through STATETUNE_MPIRUN_ARGS.
start_group_launch() {
    mkdir -p "$T/groupkeys"
    cp "$T/allow/group.key" "$T/groupkeys/worker.key"
    cp "$T/allow/group.pub" "$T/groupkeys/worker.pub"
    cp "$T/keys/coordinator.pub" "$T/groupkeys/coordinator.pub"
    printf 'node1 slots=1\nnode2 slots=1\n' >"$T/hostfile"
    netns_exec node1 env OMP_NUM_THREADS=1 STATETUNE_COORDINATOR="tcp://coord:$PORT" STATETUNE_NP=2 \
        STATETUNE_RANKS_PER_NODE=1 STATETUNE_HOSTFILE="$T/hostfile" STATETUNE_BACKEND=cpu STATETUNE_IFACE=eth0 \
        STATETUNE_KEYS="$T/groupkeys" STATETUNE_KEY_NAME=worker STATETUNE_WORKER="$WORKER" \
        STATETUNE_MPIRUN_ARGS="--mca plm_rsh_agent $NETNS_DIR/rsh-netns.sh -x NETNS_ID -x STATETUNE_DIST_TIMEOUT_S --mca btl tcp,self" \
        bash "$NETNS_DIR/../../deploy/launch-group.sh" >"$T/group-$1.log" 2>&1 &
    GROUP_PID=$!
}

# the job helpers of tests/lib/common.sh (status_of, is_status,
# checkpoint_at_least, st_resumed_from) ask through the client host
st_client() { stc "$@"; }

# job_past_checkpoint NAME STEPS AT: the coordinator, group a (its pid in A)
# and job NAME of STEPS steps (a checkpoint every 10), its id in J; returns
# once the job has a checkpoint at step AT or later
job_past_checkpoint() {
    start_coordinator
    start_group a
    A=$GROUP_PID
    make_job "$1" "$2" 10
    J=$(stc submit "$T/$1.json") || fail "submit failed"
    wait_for "a checkpoint of job $J at step $3" 90 checkpoint_at_least "$J" "$3"
}

# one_version NAME: the registry holds one state NAME, at version 1
one_version() {
    local n versions
    n=$(stc states list --json | json "len([s for s in d if s['name'] == '$1'])")
    versions=$(stc states show "$1@latest" --json | json 'd["version"]')
    [ "$n" = 1 ] && [ "$versions" = 1 ] ||
        fail "expected one registered version of '$1', found $n state(s), latest version $versions"
}

case $scenario in
e2e)
    start_coordinator
    start_group a
    make_job tabs 12 4
    J=$(stc submit "$T/tabs.json") || fail "submit from the client host failed"
    echo "submitted job $J from host client"
    stc watch "$J" >"$T/watch.log" 2>&1 || fail "watch did not end in success"
    grep -q "step 12/12" "$T/watch.log" || fail "watch showed no progress up to step 12"
    grep -q "registered tabs@1" "$T/watch.log" || fail "watch did not report the registered state"
    stc wait "$J" --timeout 60 >/dev/null || fail "wait did not exit 0 for a succeeded job"
    [ "$(status_of "$J")" = succeeded ] || fail "status is not succeeded"
    grep -q "says hello: 2 ranks" "$T/coordinator.log" || fail "the coordinator never saw a two-rank group"
    stc states get tabs@latest -o "$T/got.safetensors" || fail "states get from the client host failed"
    rel=$(state_rel "$T/got.safetensors" "$T/registry.db.jobs/$J/state.safetensors") || fail "could not compare the states"
    [ "$rel" = 0.0 ] || fail "the fetched state differs from the one the group wrote (rel $rel)"
    # and the group's state is the one a single rank computes for the job
    "$WORKER" tune "$T/tabs.json" --local --out "$T/one" --threads 1 >"$T/one.log" 2>&1 || fail "one-rank run failed"
    rel=$(state_rel "$T/one/state.safetensors" "$T/got.safetensors") || fail "could not compare the states"
    echo "registered state vs one rank: relative difference $rel"
    "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 1e-5 else 1)" "$rel" || fail "states differ by $rel"
    # a model registered from the client host stands for its file in a job
    stc models register tiny "$MODEL" >/dev/null || fail "models register from the client host failed"
    stc models list | grep -q "^tiny " || fail "models list lacks the registered model"
    sed 's|"model": "[^"]*"|"model": "tiny"|; s|"name": "tabs"|"name": "byname"|; s|"steps": 12|"steps": 3|' \
        "$T/tabs.json" >"$T/byname.json"
    J2=$(stc submit "$T/byname.json") || fail "submit with a registered model name failed"
    stc wait "$J2" --timeout 60 >/dev/null || fail "the job on a registered model did not succeed"
    # a client with a key the coordinator does not allow gets nothing
    "$ST" keys gen "$T/keys/mallory" >/dev/null || fail "keys gen failed"
    netns_exec client "$ST" --endpoint "tcp://coord:$PORT" jobs --timeout-ms 1500 --curve-secret "$T/keys/mallory.key" \
        --server-key "$T/keys/coordinator.pub" 2>"$T/mallory.txt" && fail "a client with a refused key was served"
    # the coordinator is bound to coord's address only: not to its loopback
    netns_exec coord "$ST" --endpoint "tcp://127.0.0.1:$PORT" jobs --timeout-ms 1000 \
        --curve-secret "$T/allow/alice.key" --server-key "$T/keys/coordinator.pub" >/dev/null 2>&1 &&
        fail "the coordinator answered on 127.0.0.1 although bound to $(netns_addr coord)"
    ;;

partition | partition_rank0 | launch)
    CUT=node2
    if [ "$scenario" = launch ]; then
        # the deployment's defaults: keepalive 15 s, watchdog 30 s
        export STATETUNE_DIST_TIMEOUT_S=30
        BOUND_S=45
    fi
    [ "$scenario" = partition_rank0 ] && CUT=node1
    job_past_checkpoint part 160 20
    grep -q "says hello: 2 ranks" "$T/coordinator.log" || fail "the coordinator never saw a two-rank group"
    [ "$(status_of "$J")" = running ] || fail "job $J was no longer running before the cut (make it longer)"
    netns_cut "$CUT"
    t0=$SECONDS
    echo "$CUT's link is down (job $J past its step-20 checkpoint)"
    # the group must end by itself within the bound
    wait_for "group a to end after $CUT was cut off" "$BOUND_S" st_gone "$A"
    wait "$A"
    rc=$?
    echo "group a ended $((SECONDS - t0)) s after the cut, exit $rc"
    [ $rc -ne 0 ] || fail "the partitioned group exited 0"
    # mpirun's keepalive (KEEPALIVE_S) normally fires before the ranks' watchdog
    if grep -q "lost communication with a remote daemon" "$T/group-a.log"; then
        echo "mpirun: lost communication with a remote daemon"
    elif grep -q "took longer than $STATETUNE_DIST_TIMEOUT_S s" "$T/group-a.log"; then
        echo "a rank's watchdog ended the group"
    else
        fail "the group's log does not say why it ended"
    fi
    # both sides clean up: mpirun ends its local rank, and node2's daemon,
    # having lost mpirun, ends the other
    for h in node1 node2; do
        wait_for "$h to have no rank left" 20 sh -c "! ip netns pids $NETNS_ID-$h | xargs -r ps -o args= -p | grep -q statetune-worker"
    done
    wait_for "job $J to go back to the queue" 15 is_status "$J" queued
    echo "job $J requeued $((SECONDS - t0)) s after the cut"
    grep -q "is lost" "$T/coordinator.log" || fail "the coordinator did not log the lost group"
    netns_heal "$CUT" || fail "$CUT did not come back"
    echo "$CUT's link is back"
    start_group b
    stc wait "$J" --timeout 120 >/dev/null || fail "job $J did not finish on the second group"
    stc events "$J" | grep -q "requeued" || fail "no requeue event"
    stc status "$J" --json | json 'int(d["attempt"] == 2 or exit(1))' >/dev/null || fail "the job did not run exactly twice"
    one_version part
    st_resumed_from part 20
    ;;
coord_partition)
    # the coordinator's host is cut off for longer than it takes to call the
    # group lost, but shorter than the group's own patience: both sides go
    # on, and must agree again when the link comes back
    job_past_checkpoint split 300 10
    netns_cut coord
    echo "coord's link is down (job $J past its step-10 checkpoint)"
    sleep "$CUT_S"
    netns_heal coord || fail "coord did not come back"
    echo "coord's link is back after $CUT_S s"
    grep -q "is lost" "$T/coordinator.log" || fail "the coordinator did not call the group lost during a $CUT_S s cut"
    stc wait "$J" --timeout 120 >/dev/null || fail "job $J did not finish after the coordinator's link came back"
    grep -q "carries on with job $J" "$T/coordinator.log" || fail "the group did not take its job back after the cut"
    one_version split
    kill -0 "$GROUP_PID" 2>/dev/null || fail "the group died although only the coordinator's link was down for $CUT_S s"
    ;;
coord_lost)
    # the coordinator's host is cut off for longer than the group's patience
    # (--coordinator-timeout 5): the group gives up with a clear error and
    # ends; when the link is back, a new group resumes the job from its
    # checkpoint and the registry holds one version
    COORD_TIMEOUT_S=5
    job_past_checkpoint gone 160 20
    [ "$(status_of "$J")" = running ] || fail "job $J was no longer running before the cut (make it longer)"
    netns_cut coord
    t0=$SECONDS
    echo "coord's link is down (job $J past its step-20 checkpoint)"
    wait_for "group a to end after losing its coordinator" "$BOUND_S" st_gone "$A"
    wait "$A" && fail "the group exited 0 without its coordinator"
    echo "group a ended $((SECONDS - t0)) s after the cut"
    grep -q "has not answered for $COORD_TIMEOUT_S s" "$T/group-a.log" || fail "the group's error is unclear: $(grep -v '^step' "$T/group-a.log" | tail -3)"
    netns_heal coord || fail "coord did not come back"
    echo "coord's link is back"
    [ "$(status_of "$J")" = queued ] || fail "job $J is '$(status_of "$J")' after its group was lost, not queued"
    start_group b
    stc wait "$J" --timeout 120 >/dev/null || fail "job $J did not finish on the second group"
    one_version gone
    st_resumed_from gone 20
    ;;
client_partition)
    # the client's host loses its link while it watches a job: a request
    # made meanwhile fails with one clear sentence, and the watch rides the
    # cut out and ends when the job succeeds
    start_coordinator
    start_group a
    make_job watched 150 10
    J=$(stc submit "$T/watched.json") || fail "submit failed"
    stc watch "$J" >"$T/watch.log" 2>&1 &
    W=$!
    wait_for "a checkpoint of job $J at step 10" 90 checkpoint_at_least "$J" 10
    netns_cut client
    echo "client's link is down"
    stc status "$J" --timeout-ms 2000 2>"$T/status.err" && fail "status succeeded without a link"
    echo "status without a link: $(cat "$T/status.err")"
    [ "$(wc -l <"$T/status.err")" = 1 ] && grep -q "did not answer" "$T/status.err" ||
        fail "status without a link did not fail with one clear sentence: $(cat "$T/status.err")"
    sleep 4
    kill -0 $W 2>/dev/null || fail "watch gave up during a 6 s cut: $(tail -3 "$T/watch.log")"
    netns_heal client || fail "client did not come back"
    echo "client's link is back"
    wait $W || fail "watch did not end in success after the cut: $(tail -3 "$T/watch.log")"
    grep -q "registered watched@1" "$T/watch.log" || fail "watch did not report the registered state"
    ;;
*)
    echo "unknown scenario '$scenario'"
    exit 2
    ;;
esac
echo "ok: cluster_service $scenario"
