#!/usr/bin/env bash
# cluster.sh - a statetune cluster on one machine, for tests (issue #12):
# four network namespaces `coord`, `node1`, `node2` and `client`, each with
# its own address on a private bridge, its own host name and its own
# /etc/hosts, so the coordinator, a worker group spanning two "hosts" and a
# client talk over real TCP links that a test can cut.
#
#   cluster.sh up               make a cluster; prints its id (remember it)
#   cluster.sh exec ID HOST CMD...  run CMD on HOST (coord|node1|node2|client)
#   cluster.sh cut ID HOST      take HOST's link down (a partition)
#   cluster.sh heal ID HOST     bring it back
#   cluster.sh down ID          kill what runs in the cluster and remove it
#   cluster.sh gc               remove clusters whose owner process is gone
#   cluster.sh check            exit 0 if this machine can make clusters, else
#                               print why and exit 77 (the tests' "skipped")
#
# Tests source this file instead (`. tests/netns/cluster.sh`) and call
# netns_up / netns_exec / netns_cut / netns_heal / netns_down; netns_up sets a
# trap so the cluster goes away however the test ends.
#
# Layout, per cluster (ID = "st" + 6 random hex digits, so parallel runs and
# CI jobs never collide):
#   ID-br      a namespace holding only the bridge `br0`; every host's veth
#              peer is plugged into it. Keeping the bridge out of the root
#              namespace means nothing here touches the machine's own
#              network, and two clusters are two separate L2 segments (so
#              they can use the same addresses).
#   ID-coord   eth0 10.231.7.1/24    host name coord
#   ID-node1   eth0 10.231.7.11/24   host name node1
#   ID-node2   eth0 10.231.7.12/24   host name node2
#   ID-client  eth0 10.231.7.21/24   host name client
# Every namespace has `lo` up. /etc/netns/ID-HOST/hosts maps the four names
# to those addresses: `ip netns exec` bind-mounts it over /etc/hosts for the
# command only, so the real /etc/hosts is never touched. Commands run in a
# private UTS namespace whose host name is the host's, so Open MPI sees four
# machines, not one. The filesystem is shared, like the shared filesystem a
# real cluster mounts for the jobs directory.
#
# Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), iproute2 and util-linux's
# unshare.

NETNS_SUBNET=10.231.7.0/24
NETNS_HOSTS="coord node1 node2 client"
NETNS_STATE=${NETNS_STATE:-/run/statetune-netns}

netns_addr() {
    case $1 in
    coord) echo 10.231.7.1 ;;
    node1) echo 10.231.7.11 ;;
    node2) echo 10.231.7.12 ;;
    client) echo 10.231.7.21 ;;
    *) return 1 ;;
    esac
}

# netns_host ADDR_OR_NAME: the host name for an address or a name (the
# rsh agent gets whichever mpirun was given)
netns_host() {
    local h
    for h in $NETNS_HOSTS; do
        if [ "$1" = "$h" ] || [ "$1" = "$(netns_addr "$h")" ]; then
            echo "$h"
            return 0
        fi
    done
    return 1
}

# netns_check: 0 if clusters can be made here, else prints why and returns 77
netns_check() {
    local why=""
    if [ "$(id -u)" != 0 ]; then
        why="not root (network namespaces need CAP_SYS_ADMIN)"
    elif ! command -v ip >/dev/null; then
        why="iproute2's ip is not installed"
    elif ! command -v unshare >/dev/null; then
        why="util-linux's unshare is not installed"
    else
        local probe="stprobe$$"
        if ! ip netns add "$probe" 2>/dev/null; then
            why="'ip netns add' fails here (no CAP_SYS_ADMIN, or a container without network namespaces)"
        else
            if ! ip netns exec "$probe" unshare --uts true 2>/dev/null; then
                why="'unshare --uts' fails inside a network namespace"
            elif ! ip -n "$probe" link add stprobe0 type veth peer name stprobe1 2>/dev/null; then
                why="veth pairs cannot be made (no veth module?)"
            elif ! ip -n "$probe" link add stprobebr type bridge 2>/dev/null; then
                why="bridges cannot be made (no bridge module?)"
            fi
            ip netns del "$probe" 2>/dev/null
        fi
    fi
    [ -z "$why" ] && return 0
    echo "skipped: $why"
    return 77
}

# netns_up: makes a cluster, sets NETNS_ID and an EXIT trap that removes it
# (plus whatever the caller put in NETNS_ON_EXIT, run first)
netns_up() {
    local id h ns tries=0
    mkdir -p "$NETNS_STATE" || return 1
    # claim a fresh id with an atomic mkdir, so that a failing setup below
    # can never tear down another run's cluster of the same name
    while :; do
        id=st$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')
        [ ! -e "/run/netns/$id-br" ] && mkdir "$NETNS_STATE/$id" 2>/dev/null && break
        tries=$((tries + 1))
        [ $tries -lt 20 ] || { echo "netns_up: cannot claim a cluster id in $NETNS_STATE" >&2; return 1; }
    done
    NETNS_ID=$id
    export NETNS_ID
    echo $$ >"$NETNS_STATE/$id/owner"
    # a signal ends the script through the EXIT trap (SIGPIPE too: a test
    # whose reader went away must still clean up). Bash runs these traps when
    # the foreground command returns; a SIGKILLed test is left to netns_gc.
    trap 'netns_on_exit' EXIT
    trap 'exit 129' HUP
    trap 'exit 130' INT
    trap 'exit 141' PIPE
    trap 'exit 143' TERM
    ip netns add "$id-br" || { netns_down "$id"; return 1; }
    ip -n "$id-br" link set lo up
    ip -n "$id-br" link add br0 type bridge || { netns_down "$id"; return 1; }
    ip -n "$id-br" link set br0 up
    for h in $NETNS_HOSTS; do
        ns=$id-$h
        # (twice: another cluster's teardown may rmdir an empty /etc/netns in between)
        mkdir -p "/etc/netns/$ns" 2>/dev/null || mkdir -p "/etc/netns/$ns" || { netns_down "$id"; return 1; }
        {
            echo "127.0.0.1 localhost"
            echo "$(netns_addr "$h") $h"
            for o in $NETNS_HOSTS; do [ "$o" = "$h" ] || echo "$(netns_addr "$o") $o"; done
        } >"/etc/netns/$ns/hosts"
        ip netns add "$ns" || { netns_down "$id"; return 1; }
        ip -n "$ns" link set lo up
        # the host end is made inside the host's namespace, the bridge end
        # (named after the host) inside the bridge's, so no name ever
        # exists in the root namespace
        ip -n "$id-br" link add "$h" type veth peer name eth0 netns "$ns" || { netns_down "$id"; return 1; }
        ip -n "$id-br" link set "$h" master br0 up
        ip -n "$ns" addr add "$(netns_addr "$h")/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
    # wait until the hosts reach each other: a connection to a closed port
    # that is refused (not timed out) went there and back (no ping needed)
    local i
    for i in $(seq 50); do
        if netns_reaches "$id-node1" "$(netns_addr node2)" && netns_reaches "$id-client" "$(netns_addr coord)"; then
            return 0
        fi
        sleep 0.1
    done
    echo "cluster $id: the hosts cannot reach each other" >&2
    return 1
}

# netns_reaches NS ADDR: ADDR answers from namespace NS (a TCP connection to
# port 9 is refused rather than left unanswered)
netns_reaches() {
    ip netns exec "$1" timeout 1 bash -c "exec 3<>/dev/tcp/$2/9" 2>&1 | grep -q 'refused'
}

netns_on_exit() {
    local rc=$?
    trap '' HUP INT PIPE TERM   # nothing may interrupt the cleanup
    if [ -n "${NETNS_ON_EXIT:-}" ]; then eval "$NETNS_ON_EXIT"; fi
    [ -n "${NETNS_ID:-}" ] && netns_down "$NETNS_ID"
    exit $rc
}

# netns_exec HOST CMD...: runs CMD on HOST of cluster $NETNS_ID, with the
# host's name as its host name
netns_exec() {
    local h=$1
    shift
    netns_addr "$h" >/dev/null || { echo "netns_exec: unknown host '$h'" >&2; return 2; }
    ip netns exec "$NETNS_ID-$h" unshare --uts -- /bin/sh -c 'hostname "$0" && exec "$@"' "$h" "$@"
}

# netns_cut HOST / netns_heal HOST: the host's cable, pulled at the bridge
# (the host itself sees its link go down too: a veth's carrier follows its
# peer's state)
netns_cut() { ip -n "$NETNS_ID-br" link set "$1" down; }

# netns_heal returns once HOST and another host reach each other again: the
# carrier takes a moment to come back, and a connection tried in between
# fails at once ("no route"), which made a group started right after the
# heal fail to launch its remote daemon
netns_heal() {
    local h=$1 o=node1 i
    [ "$h" = node1 ] && o=node2
    ip -n "$NETNS_ID-br" link set "$h" up || return 1
    for i in $(seq 100); do
        if netns_reaches "$NETNS_ID-$h" "$(netns_addr "$o")" && netns_reaches "$NETNS_ID-$o" "$(netns_addr "$h")"; then
            return 0
        fi
        sleep 0.1
    done
    echo "netns_heal: $h and $o do not reach each other 10 s after the link came back" >&2
    return 1
}

# netns_down ID: SIGKILL every process left in the cluster's namespaces (by
# pid, from `ip netns pids`), then remove the namespaces and hosts files
netns_down() {
    local id=$1 h ns pids
    case $id in st[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;; *) echo "netns_down: bad id '$id'" >&2; return 2 ;; esac
    for h in $NETNS_HOSTS br; do
        ns=$id-$h
        if [ -e "/run/netns/$ns" ]; then
            pids=$(ip netns pids "$ns" 2>/dev/null)
            # shellcheck disable=SC2086
            [ -n "$pids" ] && kill -9 $pids 2>/dev/null
        fi
    done
    for h in $NETNS_HOSTS br; do
        ns=$id-$h
        [ -e "/run/netns/$ns" ] && ip netns del "$ns" 2>/dev/null
        [ -d "/etc/netns/$ns" ] && rm -rf "/etc/netns/$ns"
    done
    rmdir /etc/netns 2>/dev/null
    rm -rf "${NETNS_STATE:?}/$id"
    return 0
}

# netns_gc: removes clusters whose owner process has gone (a SIGKILLed test)
netns_gc() {
    local d id pid
    for d in "$NETNS_STATE"/st*; do
        [ -d "$d" ] || continue
        id=${d##*/}
        pid=$(cat "$d/owner" 2>/dev/null)
        [ "$pid" = manual ] && continue
        if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
            echo "removing cluster $id (owner ${pid:-unknown} is gone)"
            netns_down "$id"
        fi
    done
}

# ---- command line (when run, not sourced) ----------------------------------
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -u
    cmd=${1:-}
    case $cmd in
    check) netns_check; exit $? ;;
    up)
        netns_check || exit $?
        netns_up || exit 1
        # a command-line cluster outlives this process: no trap, and the
        # owner is recorded as "manual" so gc leaves it alone
        trap - EXIT INT TERM
        echo manual >"$NETNS_STATE/$NETNS_ID/owner"
        echo "$NETNS_ID"
        ;;
    exec)
        [ $# -ge 4 ] || { echo "usage: cluster.sh exec ID HOST CMD..." >&2; exit 2; }
        NETNS_ID=$2 netns_exec "${@:3}"
        ;;
    cut | heal)
        [ $# -eq 3 ] || { echo "usage: cluster.sh $cmd ID HOST" >&2; exit 2; }
        NETNS_ID=$2 "netns_$cmd" "$3"
        ;;
    down)
        [ $# -eq 2 ] || { echo "usage: cluster.sh down ID" >&2; exit 2; }
        netns_down "$2"
        ;;
    gc) netns_gc ;;
    *)
        sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
        exit 2
        ;;
    esac
fi
