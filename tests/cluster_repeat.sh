#!/usr/bin/env bash
# cluster_repeat.sh [N] - every cluster test N times in a row (default 5),
# stopping at the first failure: the timing-dependent ones (partition, the
# coordinator's cut) must not be flaky. After each run, nothing of its
# cluster may be left (namespaces, hosts files). Prints each run's time.
# Labelled `slow` (about 2 minutes a round); exit 77 where clusters cannot be
# made here.
set -u
n=${1:-5}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/netns/cluster.sh"
netns_check || exit 77
tests=("cluster_tune.sh" "cluster_service.sh e2e" "cluster_service.sh partition"
       "cluster_service.sh partition_rank0" "cluster_service.sh coord_partition"
       "cluster_service.sh coord_lost" "cluster_service.sh client_partition" "cluster_service.sh launch")
for round in $(seq "$n"); do
    for t in "${tests[@]}"; do
        t0=$SECONDS
        # shellcheck disable=SC2086
        out=$(bash "$here"/$t 2>&1)
        rc=$?
        id=$(printf '%s\n' "$out" | sed -n 's/^cluster \(st[0-9a-f]*\) .*/\1/p' | head -1)
        if [ $rc -ne 0 ]; then
            printf '%s\n' "$out" | tail -n 60
            echo "FAIL: round $round: $t exited $rc"
            exit 1
        fi
        left=$(ls -d /run/netns/"$id"-* /etc/netns/"$id"-* 2>/dev/null)
        [ -n "$id" ] && [ -z "$left" ] || { echo "FAIL: round $round: $t left: $left (cluster '$id')"; exit 1; }
        echo "round $round: $t ok in $((SECONDS - t0)) s"
    done
done
echo "ok: $n rounds"
