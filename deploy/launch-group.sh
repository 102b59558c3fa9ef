#!/usr/bin/env bash
# launch-group.sh - starts one statetune worker group: `mpirun` over the hosts
# of a hostfile (or of a SLURM allocation), one rank per GPU, every rank a
# `statetune-worker --coordinator ...` (SPEC sections 2 and 7).
#
# The systemd unit statetune-worker@.service and the SLURM script both call
# this file, so the network settings below live in one place. Everything is
# read from the environment (the unit's EnvironmentFile, see
# deploy/systemd/worker-example.env):
#
#   STATETUNE_COORDINATOR  endpoint of the coordinator, e.g. tcp://10.0.0.1:5555   (required)
#   STATETUNE_NP           number of ranks = GPUs in the group                      (default 1)
#   STATETUNE_RANKS_PER_NODE  ranks per node = GPUs per node                       (default 8)
#   STATETUNE_HOSTFILE     Open MPI hostfile, first line = the node rank 0 runs on (default: none;
#                          inside SLURM mpirun reads the allocation itself)
#   STATETUNE_BACKEND      cuda or cpu                                              (default cuda)
#   STATETUNE_IFACE        the network between the nodes, e.g. ib0, bond0, eth1: used for MPI's
#                          TCP traffic, its out-of-band channel and NCCL's bootstrap sockets
#   NCCL_IB_HCA            InfiniBand/RoCE adapters NCCL may use, e.g. mlx5_0,mlx5_1 (default: NCCL's choice)
#   NCCL_NVLS_ENABLE       NVLink SHARP / multicast; 0 (default here) where it is unwanted or the
#                          fabric manager does not provide it, which otherwise fails communicator setup
#   NCCL_DEBUG             WARN by default (INFO when debugging a hang)
#   STATETUNE_KEYS         directory with the group's CURVE keys (default /etc/statetune/keys)
#   STATETUNE_KEY_NAME     the group's key pair NAME.key/NAME.pub in it (default worker)
#   STATETUNE_WORKER       path of statetune-worker (default: from PATH)
#   STATETUNE_MPIRUN_ARGS  more mpirun options, split at spaces (e.g. "--mca pml ucx"); mpirun
#                          refuses an MCA parameter given twice, so do not repeat those set
#                          here (keepalive settings in it replace STATETUNE_OOB_KEEPALIVE's)
#   STATETUNE_OOB_KEEPALIVE  "TIME INTVL PROBES" in seconds for mpirun's out-of-band TCP
#                          keepalive (default "5 2 5"), or "off": how soon mpirun notices a
#                          node that went silent. Keep TIME + INTVL x PROBES below the
#                          ranks' watchdog (STATETUNE_DIST_TIMEOUT_S, 30 s): Open MPI's
#                          defaults (300 + 20 x 9 s) leave a cut-off group's mpirun running
#                          for minutes, so nothing restarts it (docs/multi-node.md).
#
# CURVE is always on: rank 0 (the only rank that talks to the coordinator)
# needs the group's secret key and the coordinator's public key, so put the
# node that holds them first in the hostfile. Each rank picks its GPU from its
# node-local rank (OMPI_COMM_WORLD_LOCAL_RANK), which is why ranks are mapped
# "ppr:N:node" (N consecutive ranks per node) and CUDA_VISIBLE_DEVICES is
# left alone.
set -euo pipefail

die() { echo "launch-group.sh: $*" >&2; exit 1; }

coordinator=${STATETUNE_COORDINATOR:-}
[ -n "$coordinator" ] || die "STATETUNE_COORDINATOR is not set (e.g. tcp://10.0.0.1:5555)"
np=${STATETUNE_NP:-1}
per_node=${STATETUNE_RANKS_PER_NODE:-8}
backend=${STATETUNE_BACKEND:-cuda}
keys=${STATETUNE_KEYS:-/etc/statetune/keys}
key_name=${STATETUNE_KEY_NAME:-worker}
worker=${STATETUNE_WORKER:-statetune-worker}
[[ $np =~ ^[1-9][0-9]*$ ]] || die "STATETUNE_NP must be a positive integer, got '$np'"
[[ $per_node =~ ^[1-9][0-9]*$ ]] || die "STATETUNE_RANKS_PER_NODE must be a positive integer, got '$per_node'"
case $backend in cuda|cpu) ;; *) die "STATETUNE_BACKEND must be cuda or cpu, got '$backend'" ;; esac
for f in "$keys/$key_name.key" "$keys/$key_name.pub" "$keys/coordinator.pub"; do
    [ -r "$f" ] || die "cannot read '$f' (make it with deploy/keys.sh; CURVE is on in every deployment)"
done

export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
args=(-np "$np" --map-by "ppr:$per_node:node" --bind-to numa)
if [ -n "${STATETUNE_HOSTFILE:-}" ]; then
    [ -r "$STATETUNE_HOSTFILE" ] || die "cannot read hostfile '$STATETUNE_HOSTFILE'"
    args+=(--hostfile "$STATETUNE_HOSTFILE")
fi
if [ -n "${STATETUNE_IFACE:-}" ]; then
    export NCCL_SOCKET_IFNAME=$STATETUNE_IFACE
    # Open MPI 4.x names; Open MPI 5 takes the second as --prtemca oob_tcp_if_include.
    args+=(--mca btl_tcp_if_include "$STATETUNE_IFACE" --mca oob_tcp_if_include "$STATETUNE_IFACE")
fi
keepalive=${STATETUNE_OOB_KEEPALIVE:-5 2 5}
# mpirun refuses a parameter given twice: settings in STATETUNE_MPIRUN_ARGS win.
if [[ ${STATETUNE_MPIRUN_ARGS:-} == *oob_tcp_keepalive* ]]; then keepalive=off; fi
if [ "$keepalive" != off ]; then
    read -r ka_time ka_intvl ka_probes extra_ka <<<"$keepalive"
    for v in "${ka_time:-}" "${ka_intvl:-}" "${ka_probes:-}"; do
        [[ $v =~ ^[1-9][0-9]*$ ]] || die "STATETUNE_OOB_KEEPALIVE must be 'TIME INTVL PROBES' (positive seconds) or 'off', got '$keepalive'"
    done
    [ -z "${extra_ka:-}" ] || die "STATETUNE_OOB_KEEPALIVE must be 'TIME INTVL PROBES' or 'off', got '$keepalive'"
    args+=(--mca oob_tcp_keepalive_time "$ka_time" --mca oob_tcp_keepalive_intvl "$ka_intvl"
           --mca oob_tcp_keepalive_probes "$ka_probes")
fi
# mpirun starts remote ranks with a bare environment: forward what matters.
for v in NCCL_DEBUG NCCL_NVLS_ENABLE NCCL_SOCKET_IFNAME NCCL_IB_HCA NCCL_IB_GID_INDEX \
         NCCL_NET_GDR_LEVEL OMP_NUM_THREADS; do
    if [ -n "${!v:-}" ]; then args+=(-x "$v"); fi
done
if [ "$(id -u)" -eq 0 ]; then args+=(--allow-run-as-root); fi
if [ -n "${STATETUNE_MPIRUN_ARGS:-}" ]; then
    read -r -a extra <<<"$STATETUNE_MPIRUN_ARGS"
    args+=("${extra[@]}")
fi

# exec: systemd and SLURM signal mpirun directly, and mpirun passes SIGTERM
# on to every rank, so a stop ends the whole group.
exec mpirun "${args[@]}" \
    "$worker" --coordinator "$coordinator" --backend "$backend" \
    --curve-public "$keys/$key_name.pub" --curve-secret "$keys/$key_name.key" \
    --server-key "$keys/coordinator.pub"
