#!/usr/bin/env bash
# common.sh - what the cluster tests (tests/cluster_*.sh) share: where the
# binaries and fixtures are, the skip/fail conventions, a small dataset and
# job, and the mpirun line of a worker group spanning node1 and node2 of a
# tests/netns/cluster.sh cluster. Sourced, never run.
#
# The group's mpirun runs on node1 (like a real group's launcher on its first
# node) and starts node2's daemon through rsh-netns.sh. MPI and its
# out-of-band channel are told to use the cluster's subnet only, exactly as a
# deployment sets STATETUNE_IFACE; remote ranks get a bare environment, so
# everything they need is forwarded with -x.

NETNS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$NETNS_DIR/cluster.sh"
# json, wait_for, state_rel; fail and skip below replace lib's own
. "$NETNS_DIR/../lib/common.sh"

B=${STATETUNE_BUILD_DIR:?STATETUNE_BUILD_DIR must name the build folder}
FIX=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$NETNS_DIR/../../../shared/fixtures}}
MODEL=$FIX/rwkv7/tiny.pth
PY=/usr/bin/python3
WORKER=$B/worker/statetune-worker
COORDINATOR=$B/coordinator/statetune-coordinator
ST=$B/client/statetune

skip() { echo "skipped: $*"; exit 77; }

# fail MESSAGE: prints it and the tail of every log, exits 1 (the cluster
# goes away in the EXIT trap)
fail() {
    echo "FAIL: $*"
    local f
    for f in "$T"/*.log; do
        [ -f "$f" ] || continue
        echo "---- $f"
        tail -n 30 "$f"
    done
    exit 1
}

# cluster_prepare NAME: the checks every cluster test makes, then a cluster
# (NETNS_ID) and a fresh folder T, both removed at exit
cluster_prepare() {
    [ -x "$WORKER" ] || { echo "FAIL: no worker binary at $WORKER"; exit 1; }
    [ -f "$MODEL" ] || skip "fixture $MODEL not found"
    [ -x "$PY" ] || skip "$PY not found"
    command -v mpirun >/dev/null || skip "mpirun not found"
    netns_check || exit 77
    netns_gc >/dev/null
    T=$(mktemp -d "${TMPDIR:-/tmp}/statetune-$1-XXXXXX")
    NETNS_ON_EXIT='[ -n "${KEEP:-}" ] && echo "kept folder $T" || rm -rf "$T"'
    netns_up || fail "could not make the cluster"
    echo "cluster $NETNS_ID (coord $(netns_addr coord), node1 $(netns_addr node1), node2 $(netns_addr node2), client $(netns_addr client))"
}

# make_data: 40 short tab-separated lines to train on, 8 to evaluate, in $T
make_data() {
    "$PY" - "$T" <<'EOF'
import json, random, sys
random.seed(3)
words = "the quick brown fox jumps over a lazy dog while seven tabs indent code".split()
for name, n in (("train", 40), ("eval", 8)):
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": "\t".join(random.choice(words) for _ in range(8))}) + "\n")
EOF
}

# make_job NAME STEPS CHECKPOINT_EVERY -> $T/NAME.json (global batch 4: two
# samples per rank of a two-rank group)
make_job() {
    cat >"$T/$1.json" <<EOF
{"name": "$1", "model": "$MODEL", "train": "train.jsonl", "eval": "eval.jsonl",
 "ctx_len": 32, "micro_batch": 2, "global_batch": 4, "steps": $2,
 "checkpoint_every": $3, "eval_every": 0, "warmup_steps": 2, "seed": 7}
EOF
}

KEEPALIVE_ARGS="--mca oob_tcp_keepalive_time 2 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3"
KEEPALIVE_S=5

# group_mpirun ARGS...: the worker group's mpirun on node1, ranks on node1 and
# node2 (one each), ARGS being statetune-worker's arguments. Runs in the
# foreground; callers add & and >log.
#
# The oob_tcp_keepalive settings make mpirun and its daemons notice a node
# that has gone silent within KEEPALIVE_S (2 + 1 x 3 s idle probes: the
# daemons' channel is idle while the ranks compute). Open MPI 4.1's defaults
# (300 + 20 x 9 s) leave mpirun waiting 8 minutes; and once a rank's watchdog
# has called MPI_Abort, mpirun's kill order to the lost daemon sits in TCP
# retransmission, where keepalives no longer apply, and mpirun hangs for many
# minutes more. So the keepalive must end the group before the watchdog does
# (docs/multi-node.md, /work/notes/findings.md).
group_mpirun() {
    netns_exec node1 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        STATETUNE_DIST_TIMEOUT_S="${STATETUNE_DIST_TIMEOUT_S:-30}" \
        mpirun -np 2 --host node1,node2 \
        --mca plm_rsh_agent "$NETNS_DIR/rsh-netns.sh" \
        --mca btl tcp,self --mca btl_tcp_if_include "$NETNS_SUBNET" \
        --mca oob_tcp_if_include "$NETNS_SUBNET" \
        $KEEPALIVE_ARGS \
        -x NETNS_ID -x STATETUNE_DIST_TIMEOUT_S -x OMP_NUM_THREADS=1 \
        "$WORKER" "$@"
}

# link_bytes HOST: bytes received + sent on HOST's eth0 so far
link_bytes() {
    ip -n "$NETNS_ID-$1" -s -j link show eth0 |
        "$PY" -c 'import json,sys; s=json.load(sys.stdin)[0]["stats64"]; print(s["rx"]["bytes"] + s["tx"]["bytes"])'
}

