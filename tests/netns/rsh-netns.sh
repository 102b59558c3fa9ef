#!/usr/bin/env bash
# rsh-netns.sh - Open MPI's "ssh" for a cluster of tests/netns/cluster.sh:
#
#   mpirun --mca plm_rsh_agent tests/netns/rsh-netns.sh --host node1,node2 ...
#
# mpirun calls its rsh agent as `AGENT [OPTIONS] HOST COMMAND...` to start its
# daemon (orted) on HOST, the way ssh would. This agent enters HOST's network
# namespace of cluster $NETNS_ID (mpirun's environment carries it here)
# instead, sets the host name, and runs the command through /bin/sh as sshd
# would (the words joined by spaces: mpirun quotes for a remote shell).
# HOST may be a name (node1) or its address (10.231.7.11).
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/cluster.sh"

while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done   # ssh options (-x ...): meaningless here
[ $# -ge 2 ] || { echo "rsh-netns.sh: usage: rsh-netns.sh HOST COMMAND..." >&2; exit 255; }
[ -n "${NETNS_ID:-}" ] || { echo "rsh-netns.sh: NETNS_ID is not set (which cluster?)" >&2; exit 255; }
host=$(netns_host "$1") || { echo "rsh-netns.sh: '$1' is not a host of cluster $NETNS_ID" >&2; exit 255; }
shift
[ -e "/run/netns/$NETNS_ID-$host" ] || { echo "rsh-netns.sh: cluster $NETNS_ID has no host '$host' (torn down?)" >&2; exit 255; }
exec ip netns exec "$NETNS_ID-$host" unshare --uts -- /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "$host" "$*"
