#!/usr/bin/env bash
# cluster_harness.sh - the namespace cluster itself (tests/netns/cluster.sh)
# leaves nothing behind, whatever happens to the test that made it:
#
#   - `cluster.sh up` / `exec` / `down` from the command line: four hosts with
#     their own names, addresses and /etc/hosts that reach each other by name,
#     and the machine's own /etc/hosts untouched;
#   - `cut` makes a host unreachable and `heal` brings it back;
#   - a test stopped by SIGTERM mid-run removes its namespaces, its hosts
#     files and the processes it started in them;
#   - a test killed by SIGKILL (no trap runs) is cleaned by `cluster.sh gc`.
#
# Exit 77 (skipped) without root / network namespaces.
set -u
here=$(cd "$(dirname "$0")" && pwd)
CL=$here/netns/cluster.sh
. "$CL"
netns_check || exit 77

fail() { echo "FAIL: $*"; exit 1; }
IDS=()
cleanup() { for i in "${IDS[@]}"; do bash "$CL" down "$i"; done; }
trap cleanup EXIT

# leftovers ID: prints what of cluster ID is still there
leftovers() {
    ls -d /run/netns/"$1"-* /etc/netns/"$1"-* "$NETNS_STATE/$1" 2>/dev/null
}

# ---- command line ------------------------------------------------------------
hosts_before=$(sha256sum /etc/hosts)
id=$(bash "$CL" up) || fail "cluster.sh up failed"
IDS+=("$id")
echo "cluster $id"
for h in coord node1 node2 client; do
    [ "$(bash "$CL" exec "$id" "$h" hostname)" = "$h" ] || fail "host $h does not have its own host name"
    a=$(bash "$CL" exec "$id" "$h" ip -4 -br addr show eth0 | awk '{print $3}')
    [ "$a" = "$(netns_addr "$h")/24" ] || fail "host $h has address '$a'"
    bash "$CL" exec "$id" "$h" ip -br link show lo | grep -q UP || fail "loopback is down on $h"
done
[ "$(bash "$CL" exec "$id" client getent hosts node2 | awk '{print $1}')" = "$(netns_addr node2)" ] ||
    fail "node2 does not resolve on client"
[ "$(sha256sum /etc/hosts)" = "$hosts_before" ] || fail "the machine's /etc/hosts changed"
getent hosts node2 >/dev/null 2>&1 && [ "$(getent hosts node2 | awk '{print $1}')" = "$(netns_addr node2)" ] &&
    fail "node2 resolves outside the cluster"
# a TCP connection from client to a listener on coord, by name
bash "$CL" exec "$id" coord /usr/bin/python3 -c '
import socket
s = socket.socket(); s.bind(("10.231.7.1", 7000)); s.listen(1)
c, a = s.accept(); c.sendall(a[0].encode()); c.close()' &
lis=$!
ok=""
for _ in $(seq 50); do
    got=$(bash "$CL" exec "$id" client timeout 2 bash -c 'exec 3<>/dev/tcp/coord/7000; cat <&3' 2>/dev/null) && { ok=1; break; }
    sleep 0.1
done
wait $lis
[ -n "$ok" ] && [ "$got" = "$(netns_addr client)" ] || fail "client could not talk to coord by name (got '$got')"
# the machine's own namespace cannot see the cluster's addresses
ip -4 -br addr | grep -q "10\.231\.7\." && fail "a cluster address leaked into the root namespace"
# cut and heal
NETNS_ID=$id
netns_reaches "$id-node1" "$(netns_addr node2)" || fail "node1 cannot reach node2"
bash "$CL" cut "$id" node2
netns_reaches "$id-node1" "$(netns_addr node2)" && fail "node2 still answers after cut"
bash "$CL" heal "$id" node2
ok=""
for _ in $(seq 50); do
    netns_reaches "$id-node1" "$(netns_addr node2)" && { ok=1; break; }
    sleep 0.1
done
[ -n "$ok" ] || fail "node2 does not answer after heal"
# down kills what runs inside
bash "$CL" exec "$id" node2 sleep 600 &
sl=$!
sleep 0.5
bash "$CL" down "$id"
sleep 0.2
kill -0 $sl 2>/dev/null && fail "a process in the cluster survived cluster.sh down"
[ -z "$(leftovers "$id")" ] || fail "cluster.sh down left: $(leftovers "$id")"
echo "up/exec/cut/heal/down: ok"

# ---- SIGTERM and SIGKILL of a test that owns a cluster ------------------------
# owner SIGNAL: a shell owning a cluster with a process in it, killed by SIGNAL
owner() {
    local log
    log=$(mktemp)
    bash -c ". '$CL'; netns_up || exit 1; echo \"id \$NETNS_ID\"; netns_exec node1 sleep 600 & wait" >"$log" 2>&1 &
    local p=$!
    for _ in $(seq 50); do grep -q '^id ' "$log" && break; sleep 0.1; done
    local cid
    cid=$(awk '/^id /{print $2}' "$log")
    rm -f "$log"
    [ -n "$cid" ] || fail "the owner did not make a cluster"
    IDS+=("$cid")
    sleep 0.5
    kill "-$1" $p
    wait $p 2>/dev/null
    echo "$cid"
}
cid=$(owner TERM)
sleep 0.5
[ -z "$(leftovers "$cid")" ] || fail "a SIGTERMed test left: $(leftovers "$cid")"
echo "SIGTERM: the cluster went with its owner"
cid=$(owner KILL)
[ -n "$(leftovers "$cid")" ] || fail "expected a SIGKILLed owner to leave its cluster for gc"
bash "$CL" gc | grep -q "removing cluster $cid" || fail "gc did not remove the cluster of a dead owner"
[ -z "$(leftovers "$cid")" ] || fail "gc left: $(leftovers "$cid")"
echo "SIGKILL: gc removed the cluster"
echo "ok: cluster_harness"
