#!/usr/bin/env bash
# demo_deploy_check.sh - checks the deployment recipes in deploy/ as far as a
# machine without Docker, SLURM or GPUs can: every script parses (bash -n) and
# passes shellcheck when it is installed; the systemd units pass
# `systemd-analyze verify` with no warning; keys.sh makes the documented
# layout with the documented modes and revokes and rotates; launch-group.sh
# refuses to start without a coordinator or keys and hands mpirun the NCCL,
# interface and CURVE settings; the Dockerfile installs every -dev package
# that scripts/install-deps.sh installs and copies only paths that exist.
set -euo pipefail
src=${STATETUNE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }

# ---- scripts parse, and pass shellcheck where it exists ---------------------
scripts=("$src"/deploy/*.sh "$src"/deploy/slurm/*.sbatch)
[ -e "$src/scripts/demo.sh" ] && scripts+=("$src/scripts/demo.sh")
for s in "${scripts[@]}"; do
    if bash -n "$s"; then ok "bash -n $(basename "$s")"; else fail "bash -n $s"; fi
done
if command -v shellcheck >/dev/null; then
    if shellcheck -S warning "${scripts[@]}"; then ok "shellcheck"; else fail "shellcheck"; fi
else
    echo "skipped: shellcheck is not installed"
fi

# ---- systemd units ----------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
    # verify insists that ExecStart exists and that EnvironmentFile is
    # readable: point them at stand-ins, change nothing else.
    for u in "$src"/deploy/systemd/*.service "$src"/deploy/systemd/*.timer; do
        b=$(basename "$u")
        [ "$b" = "statetune-worker@.service" ] && b="statetune-worker@check.service"
        sed -e 's#^ExecStart=[^ ]*#ExecStart=/bin/true#' -e 's#^EnvironmentFile=/#EnvironmentFile=-/#' "$u" >"$tmp/$b"
    done
    for b in "$tmp"/*.service "$tmp"/*.timer; do
        b=$(basename "$b")
        out=$(cd "$tmp" && systemd-analyze verify --man=no "./$b" 2>&1) || true
        if [ -z "$out" ]; then ok "systemd-analyze verify $b"; else fail "systemd-analyze verify $b: $out"; fi
    done
else
    echo "skipped: systemd-analyze is not installed"
fi
for u in "$src"/deploy/systemd/*.service; do
    # The long-running services come back by themselves; a oneshot does not.
    if ! grep -q '^Type=oneshot' "$u"; then
        grep -q '^Restart=on-failure' "$u" || fail "$(basename "$u") has no Restart=on-failure"
    fi
    grep -q '^NoNewPrivileges=yes' "$u" || fail "$(basename "$u") is not hardened (NoNewPrivileges)"
    # ProtectSystem=strict leaves /tmp read-only unless it is private (or
    # listed in ReadWritePaths); SQLite and Open MPI both write there.
    if grep -q '^ProtectSystem=strict' "$u" && ! grep -q '^PrivateTmp=yes' "$u" &&
        ! grep -q '^ReadWritePaths=.*/tmp' "$u"; then
        fail "$(basename "$u") makes /tmp read-only (ProtectSystem=strict without PrivateTmp)"
    fi
done
grep -q -- '--curve-secret' "$src/deploy/systemd/statetune-coordinator.service" || fail "the coordinator unit does not turn CURVE on"
grep -q -- '--insecure' "$src"/deploy/systemd/*.service "$src"/deploy/slurm/* "$src"/deploy/*.sh && fail "a recipe uses --insecure"

# ---- keys.sh ----------------------------------------------------------------
# The real `statetune keys gen` when the build has it, else a stand-in that
# writes what it is documented to write (NAME.key 0600, NAME.pub).
keygen="$tmp/statetune-stub"
cat >"$keygen" <<'EOF'
#!/bin/sh
[ "$1" = keys ] && [ "$2" = gen ] || exit 2
(umask 077; head -c 40 /dev/urandom | base64 | head -c 40 >"$3.key")
head -c 40 /dev/urandom | base64 | head -c 40 >"$3.pub"
EOF
chmod +x "$keygen"
real="${STATETUNE_BUILD_DIR:-}/client/statetune"
if [ -x "$real" ] && "$real" keys gen "$tmp/probe" >/dev/null 2>&1 && [ -s "$tmp/probe.key" ]; then
    keygen=$real
    echo "keys.sh runs the real 'statetune keys gen'"
else
    echo "keys.sh runs a stand-in: 'statetune keys gen' is not built yet"
fi
etc="$tmp/etc"
export STATETUNE_ETC=$etc STATETUNE_BIN=$keygen STATETUNE_USER=nosuchuser-statetune
mode() { stat -c %a "$1"; }
if "$src/deploy/keys.sh" init >/dev/null && "$src/deploy/keys.sh" add worker-a >/dev/null \
   && "$src/deploy/keys.sh" add alice >/dev/null; then
    [ "$(mode "$etc/keys")" = 700 ] || fail "keys/ is $(mode "$etc/keys"), not 0700"
    for k in coordinator worker-a alice; do
        [ "$(mode "$etc/keys/$k.key")" = 600 ] || fail "$k.key is $(mode "$etc/keys/$k.key"), not 0600"
        [ -s "$etc/keys/$k.pub" ] || fail "$k.pub missing"
    done
    [ -e "$etc/allow/coordinator.pub" ] && fail "the coordinator's own key is in the allow-list"
    cmp -s "$etc/keys/alice.pub" "$etc/allow/alice.pub" || fail "alice.pub is not in the allow-list"
    "$src/deploy/keys.sh" add alice >/dev/null 2>&1 && fail "keys.sh add overwrote an existing key"
    "$src/deploy/keys.sh" add ../evil >/dev/null 2>&1 && fail "keys.sh accepted the name '../evil'"
    old=$(cat "$etc/keys/alice.pub")
    "$src/deploy/keys.sh" rotate alice >/dev/null
    [ "$(cat "$etc/allow/alice.pub")" != "$old" ] || fail "rotate did not put a new key in the allow-list"
    ls "$etc/allow"/alice.old-*.pub >/dev/null 2>&1 || fail "rotate dropped the old key before it was revoked"
    "$src/deploy/keys.sh" revoke worker-a >/dev/null
    [ -e "$etc/allow/worker-a.pub" ] && fail "revoke left worker-a in the allow-list"
    [ "$("$src/deploy/keys.sh" list | wc -l)" -eq 2 ] || fail "list does not show the 2 allowed keys"
    ok "keys.sh layout, modes, rotate, revoke"
else
    fail "keys.sh init/add failed"
fi

# ---- launch-group.sh --------------------------------------------------------
mkdir -p "$tmp/bin"
printf '#!/bin/sh\nprintf "%%s\\n" "$@" >"%s/mpirun.args"\nenv >"%s/mpirun.env"\n' "$tmp" "$tmp" >"$tmp/bin/mpirun"
chmod +x "$tmp/bin/mpirun"
lg="$src/deploy/launch-group.sh"
if env -u STATETUNE_COORDINATOR PATH="$tmp/bin:$PATH" "$lg" 2>"$tmp/err"; then
    fail "launch-group.sh started without STATETUNE_COORDINATOR"
else
    grep -q STATETUNE_COORDINATOR "$tmp/err" || fail "launch-group.sh did not say what is missing"
fi
if STATETUNE_COORDINATOR=tcp://x:1 STATETUNE_KEYS="$tmp/none" PATH="$tmp/bin:$PATH" "$lg" 2>/dev/null; then
    fail "launch-group.sh started without CURVE keys"
fi
cp "$etc/keys/alice.key" "$etc/keys/worker.key"; cp "$etc/keys/alice.pub" "$etc/keys/worker.pub"
if STATETUNE_COORDINATOR=tcp://10.0.0.1:5555 STATETUNE_KEYS="$etc/keys" STATETUNE_NP=16 \
   STATETUNE_RANKS_PER_NODE=8 STATETUNE_IFACE=ib9 NCCL_IB_HCA=mlx5_0 PATH="$tmp/bin:$PATH" "$lg"; then
    a=$(tr '\n' ' ' <"$tmp/mpirun.args")
    for want in "-np 16 " "--map-by ppr:8:node" "btl_tcp_if_include ib9" "oob_tcp_if_include ib9" \
                "-x NCCL_NVLS_ENABLE" "-x NCCL_SOCKET_IFNAME" "-x NCCL_IB_HCA" "-x NCCL_DEBUG" \
                "oob_tcp_keepalive_time 5 " "oob_tcp_keepalive_intvl 2 " "oob_tcp_keepalive_probes 5 " \
                "--coordinator tcp://10.0.0.1:5555" "--curve-secret $etc/keys/worker.key" \
                "--server-key $etc/keys/coordinator.pub"; do
        [[ $a == *"$want"* ]] || fail "mpirun did not get '$want': $a"
    done
    grep -q '^NCCL_NVLS_ENABLE=0$' "$tmp/mpirun.env" || fail "NCCL_NVLS_ENABLE is not 0 by default"
    grep -q '^NCCL_SOCKET_IFNAME=ib9$' "$tmp/mpirun.env" || fail "NCCL_SOCKET_IFNAME is not the interface"
    ok "launch-group.sh mpirun command line"
    # The keepalive must fire before the ranks' watchdog (30 s by default).
    if STATETUNE_COORDINATOR=tcp://x:1 STATETUNE_KEYS="$etc/keys" STATETUNE_OOB_KEEPALIVE="5 2" \
        PATH="$tmp/bin:$PATH" "$lg" 2>/dev/null; then
        fail "launch-group.sh accepted a keepalive setting of two numbers"
    fi
    STATETUNE_COORDINATOR=tcp://x:1 STATETUNE_KEYS="$etc/keys" STATETUNE_OOB_KEEPALIVE=off PATH="$tmp/bin:$PATH" "$lg"
    grep -q keepalive "$tmp/mpirun.args" && fail "STATETUNE_OOB_KEEPALIVE=off still set a keepalive"
    # A keepalive given in STATETUNE_MPIRUN_ARGS replaces ours (mpirun
    # refuses a parameter listed twice).
    STATETUNE_COORDINATOR=tcp://x:1 STATETUNE_KEYS="$etc/keys" PATH="$tmp/bin:$PATH" \
        STATETUNE_MPIRUN_ARGS="--mca oob_tcp_keepalive_time 2" "$lg"
    [ "$(grep -c '^oob_tcp_keepalive_time$' "$tmp/mpirun.args")" -eq 1 ] ||
        fail "oob_tcp_keepalive_time is given to mpirun twice"
else
    fail "launch-group.sh did not run mpirun"
fi

# ---- SLURM script ---------------------------------------------------------------
# Run outside SLURM with the variables SLURM sets and a stand-in launcher:
# the group's size comes from the allocation, an exited group is started
# again, and SIGTERM (scancel, the time limit) reaches the running group and
# ends the script.
cat >"$tmp/fake-launch" <<EOF
#!/bin/bash
env | grep -E '^(STATETUNE_|OMP_NUM_THREADS=)' | sort >"$tmp/launch.env.\$\$"
echo \$\$ >>"$tmp/launch.pids"
trap 'echo term >"$tmp/launch.term"; kill \$! 2>/dev/null; exit 0' TERM
if [ ! -e "$tmp/launch.once" ]; then touch "$tmp/launch.once"; exit 3; fi # the first group fails
sleep 100 & wait
EOF
chmod +x "$tmp/fake-launch"
SLURM_NTASKS=16 SLURM_NTASKS_PER_NODE=8 SLURM_CPUS_PER_TASK=6 STATETUNE_LAUNCH="$tmp/fake-launch" STATETUNE_RESTART_DELAY_S=1 \
    STATETUNE_COORDINATOR=tcp://10.0.0.1:5555 bash "$src/deploy/slurm/statetune-group.sbatch" 2>"$tmp/sbatch.err" &
sb=$!
launches() { if [ -e "$tmp/launch.pids" ]; then wc -l <"$tmp/launch.pids"; else echo 0; fi; }
# The first launch exits 3; the script waits (1 s here) and starts it again.
for ((i = 0; i < 150; i++)); do
    [ "$(launches)" -ge 2 ] && break
    sleep 0.1
done
if [ "$(launches)" -ge 2 ]; then
    e=$(cat "$tmp"/launch.env.* | sort -u | tr '\n' ' ')
    for want in STATETUNE_NP=16 STATETUNE_RANKS_PER_NODE=8 STATETUNE_BACKEND=cuda OMP_NUM_THREADS=6 \
                STATETUNE_COORDINATOR=tcp://10.0.0.1:5555; do
        [[ " $e" == *" $want "* ]] || fail "the SLURM script did not give the group $want: $e"
    done
    grep -q "exited with status 3" "$tmp/sbatch.err" || fail "the SLURM script did not say the group exited"
    sleep 0.5
    kill -TERM "$sb"
    for ((i = 0; i < 100; i++)); do kill -0 "$sb" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$sb" 2>/dev/null; then
        fail "the SLURM script was still running 10 s after SIGTERM"
        kill -KILL "$sb" 2>/dev/null || true
    elif [ ! -e "$tmp/launch.term" ]; then
        fail "SIGTERM did not reach the running group"
    else
        ok "SLURM script: size from the allocation, restart after exit, SIGTERM ends group and script"
    fi
else
    fail "the SLURM script did not start the group again after it exited"
    kill -KILL "$sb" 2>/dev/null || true
fi
wait "$sb" 2>/dev/null || true
if [ -e "$tmp/launch.pids" ]; then
    while read -r p; do kill -KILL "$p" 2>/dev/null || true; done <"$tmp/launch.pids"
fi

# ---- Dockerfile ---------------------------------------------------------------
df="$src/deploy/docker/Dockerfile"
# Every library CMakeLists.txt requires must come from a package the build
# stage installs (Ubuntu names its -dev packages as Debian does).
declare -A dev_pkg=([jansson]=libjansson-dev [libzip]=libzip-dev [libsodium]=libsodium-dev
                    [libzmq]=libzmq3-dev [sqlite3]=libsqlite3-dev [openblas]=libopenblas-dev)
for m in $(sed -n 's/^pkg_check_modules([A-Z_]* REQUIRED IMPORTED_TARGET \([a-z0-9]*\)).*/\1/p' "$src/CMakeLists.txt"); do
    p=${dev_pkg[$m]:-}
    if [ -z "$p" ]; then
        fail "CMakeLists.txt needs pkg-config module '$m', which this check does not know: add it to dev_pkg and the Dockerfile"
    else
        grep -q "\b$p\b" "$df" || fail "Dockerfile does not install $p (CMakeLists.txt needs '$m')"
        grep -q "\b$p\b" "$src/scripts/install-deps.sh" || fail "scripts/install-deps.sh does not install $p"
    fi
done
if grep -q 'find_package(MPI REQUIRED' "$src/CMakeLists.txt"; then
    grep -q '\blibopenmpi-dev\b' "$df" || fail "Dockerfile does not install libopenmpi-dev (CMakeLists.txt needs MPI)"
fi
while read -r path; do
    [ -e "$src/$path" ] || fail "Dockerfile copies '$path', which is not in the repository"
done < <(grep -E '^COPY [^-]' "$df" | sed -E 's/^COPY //; s/ +[^ ]+$//' | tr ' ' '\n' | grep -v '^$')
grep -q '^FROM nvidia/cuda:.*-devel-ubuntu24.04 AS build' "$df" || fail "no CUDA devel build stage"
grep -q '^FROM nvidia/cuda:.*-runtime-ubuntu24.04 AS runtime' "$df" || fail "no CUDA runtime stage"
ok "Dockerfile packages and paths"

if [ "$fails" -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all deploy checks passed"
