#!/usr/bin/env bash
# cluster_tune.sh - `statetune-worker tune --local` as a worker group spanning
# two hosts (issue #12, step 2): `mpirun -np 2 --host node1,node2` on node1 of
# a tests/netns/cluster.sh cluster, node2's rank started through the
# rsh-netns.sh agent, MPI over TCP on the cluster's subnet only. Checks:
#
#   - the group ends with one state.safetensors and metrics.json saying 2
#     ranks;
#   - its state equals a one-rank run of the same job (relative difference
#     <= 1e-5): the gradient all-reduce really crossed the link;
#   - node2's link carried the traffic (its byte counters grew);
#   - the job's loss went down.
#
# Exit 77 (skipped) without root / network namespaces, mpirun or the fixtures.
set -u
. "$(cd "$(dirname "$0")" && pwd)/netns/common.sh"
cluster_prepare tune
make_data
make_job span 6 0

# one rank, no cluster: the reference
"$WORKER" tune "$T/span.json" --local --out "$T/one" --threads 1 >"$T/one.log" 2>&1 || fail "one-rank run failed"

before=$(link_bytes node2)
t0=$SECONDS
# the job file and the output folder are on the filesystem every host shares
group_mpirun tune "$T/span.json" --local --out "$T/two" --threads 1 >"$T/group.log" 2>&1 ||
    fail "the two-host group failed"
echo "two-host group took $((SECONDS - t0)) s"
after=$(link_bytes node2)

[ -s "$T/two/state.safetensors" ] || fail "no state.safetensors from the group"
ranks=$(json 'd["ranks"]' <"$T/two/metrics.json") || fail "metrics.json unreadable"
[ "$ranks" = 2 ] || fail "metrics.json says $ranks ranks, not 2"
rel=$(state_rel "$T/one/state.safetensors" "$T/two/state.safetensors") || fail "could not compare the states"
echo "two hosts vs one rank: relative difference $rel"
"$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 1e-5 else 1)" "$rel" || fail "states differ by $rel"
echo "node2's link carried $((after - before)) bytes"
[ $((after - before)) -gt 10000 ] || fail "node2's link carried only $((after - before)) bytes: the ranks did not talk over it"
first=$(json 'd["train_loss_first"]' <"$T/two/metrics.json")
last=$(json 'd["train_loss_last"]' <"$T/two/metrics.json")
echo "train loss $first -> $last"
"$PY" -c "import sys; sys.exit(0 if float(sys.argv[2]) < float(sys.argv[1]) else 1)" "$first" "$last" ||
    fail "the train loss did not go down: $first -> $last"
echo "ok: cluster_tune"
