#!/usr/bin/env bash
# demo_deploy_live.sh - the deployment recipes run for real, on loopback:
# deploy/keys.sh makes the key layout with the real `statetune keys gen`; a
# coordinator starts with the options of statetune-coordinator.service (its
# secret key, the allow-list, a jobs dir); deploy/launch-group.sh starts a
# 2-rank CPU worker group with the group's keys; a client with its own keys
# submits a small job that succeeds and fetches the state. Then the key
# operations of docs/operations.md: an allowed client is served, a revoked
# one is refused (and the refusal logged), a rotated key works while the old
# one stays allowed until it is revoked. Last, the backup and restore of
# operations.md: an online backup, the registry replaced by it, and the
# restarted coordinator serving the same state.
set -euo pipefail
src=${STATETUNE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
build=${STATETUNE_BUILD_DIR:-$src/build}
fx=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$src/../shared/fixtures}}
model=$fx/rwkv7/pysrc-rwkv7-5M.pth
[ -r "$model" ] || { echo "skipped: fixture $model is absent"; exit 77; }
command -v mpirun >/dev/null || { echo "skipped: mpirun is not installed"; exit 77; }
st=$build/client/statetune
for b in "$st" "$build/coordinator/statetune-coordinator" "$build/worker/statetune-worker"; do
    [ -x "$b" ] || { echo "FAIL: $b is not built"; exit 1; }
done

tmp=$(mktemp -d /tmp/statetune-deploy-test.XXXXXX)
coord_pid="" group_pid=""
stop() {
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop "$group_pid"
    stop "$coord_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# ---- keys, as an operator makes them ----------------------------------------
etc=$tmp/etc
export STATETUNE_ETC=$etc STATETUNE_BIN=$st STATETUNE_USER=nosuchuser-statetune
"$src/deploy/keys.sh" init >/dev/null
for k in worker-a alice bob; do "$src/deploy/keys.sh" add "$k" >/dev/null; done
echo "ok: keys.sh made the layout with the real 'statetune keys gen'"

# ---- coordinator with the unit's options --------------------------------------
port=""
start=$((28000 + RANDOM % 2000))
for ((p = start; p < start + 200; p++)); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
endpoint=tcp://127.0.0.1:$port
# The command line is the unit's ExecStart, with this machine's paths put
# in for the installed ones: the real coordinator must accept every option
# the unit gives it.
unit=$src/deploy/systemd/statetune-coordinator.service
coord_cmd=()
for a in $(sed -n 's/^ExecStart=//p' "$unit"); do
    case $a in
    /usr/local/bin/statetune-coordinator) coord_cmd+=("$build/coordinator/statetune-coordinator") ;;
    '${STATETUNE_BIND}') coord_cmd+=("$endpoint") ;;
    '$STATETUNE_OPTS') ;; # empty by default
    /var/lib/statetune/registry.db) coord_cmd+=("$tmp/registry.db") ;;
    /srv/statetune/jobs) coord_cmd+=("$tmp/jobs") ;;
    %d/coordinator.key) coord_cmd+=("$etc/keys/coordinator.key") ;;
    /etc/statetune/allow) coord_cmd+=("$etc/allow") ;;
    /* | %* | '$'*) fail "the test does not know what to put in for the unit's '$a'" ;;
    *) coord_cmd+=("$a") ;;
    esac
done
"${coord_cmd[@]}" >"$tmp/coordinator.log" 2>&1 &
coord_pid=$!

as() { # as NAME statetune-args...: the client with NAME's keys
    local name=$1
    shift
    STATETUNE_ENDPOINT=$endpoint STATETUNE_CURVE_SECRET=$etc/keys/$name.key \
        STATETUNE_CURVE_PUBLIC=$etc/keys/$name.pub STATETUNE_SERVER_KEY=$etc/keys/coordinator.pub "$st" "$@"
}
up=0
for ((i = 0; i < 50; i++)); do
    if as alice jobs --timeout-ms 1000 >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$coord_pid" 2>/dev/null || break
    sleep 0.2
done
[ "$up" = 1 ] || { cat "$tmp/coordinator.log"; echo "FAIL: the coordinator did not come up"; exit 1; }

# ---- a worker group through launch-group.sh -------------------------------------
STATETUNE_COORDINATOR=$endpoint STATETUNE_NP=2 STATETUNE_RANKS_PER_NODE=2 STATETUNE_BACKEND=cpu \
    STATETUNE_KEYS=$etc/keys STATETUNE_KEY_NAME=worker-a STATETUNE_WORKER=$build/worker/statetune-worker \
    STATETUNE_MPIRUN_ARGS="--oversubscribe" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    "$src/deploy/launch-group.sh" >"$tmp/group.log" 2>&1 &
group_pid=$!

# ---- a small job from an allowed client ------------------------------------------
/usr/bin/python3 "$src/tests/make_tabs_data.py" "$tmp/data" --task tabs --train 32 --eval 8 --bytes 120 >/dev/null
cat >"$tmp/job.json" <<EOF
{"name": "deploy-check", "model": "$model", "train": "data/train.jsonl", "eval": "data/eval.jsonl",
 "ctx_len": 128, "micro_batch": 4, "global_batch": 8, "steps": 2, "warmup_steps": 1,
 "eval_every": 2, "checkpoint_every": 2, "backend": "cpu"}
EOF
if job=$(as alice submit "$tmp/job.json"); then
    if as alice wait "$job" --timeout 240 >/dev/null; then
        as alice states get deploy-check@latest -o "$tmp/s.safetensors" >/dev/null || fail "states get failed"
        [ -s "$tmp/s.safetensors" ] || fail "states get wrote nothing"
        grep -q "says hello" "$tmp/coordinator.log" || fail "the coordinator never logged the group's hello"
        echo "ok: job $job ran on the group that launch-group.sh started, with CURVE on every link"
    else
        fail "job $job did not succeed: $(as alice status "$job" 2>&1 | tr '\n' ' ')"
        tail -n 20 "$tmp/group.log"
    fi
else
    fail "submit was refused"
fi

# ---- key operations ----------------------------------------------------------------
as bob jobs --timeout-ms 3000 >/dev/null || fail "an allowed client (bob) was not served"
"$src/deploy/keys.sh" revoke bob >/dev/null
if as bob jobs --timeout-ms 2000 >/dev/null 2>&1; then
    fail "a revoked client (bob) was still served on a new connection"
else
    grep -q "refused" "$tmp/coordinator.log" || fail "the refusal of bob's key was not logged"
    echo "ok: revoked key refused on its next connection, and logged"
fi
old_pub=$(cat "$etc/keys/alice.pub")
"$src/deploy/keys.sh" rotate alice >/dev/null
as alice jobs --timeout-ms 3000 >/dev/null || fail "alice's new key was not served"
old=$(ls "$etc/keys"/alice.key.* | head -1)
STATETUNE_ENDPOINT=$endpoint STATETUNE_CURVE_SECRET=$old STATETUNE_SERVER_KEY=$etc/keys/coordinator.pub \
    "$st" jobs --timeout-ms 3000 >/dev/null || fail "alice's old key stopped working before it was revoked"
stamp=${old##*.key.}
"$src/deploy/keys.sh" revoke "alice.old-$stamp" >/dev/null
if STATETUNE_ENDPOINT=$endpoint STATETUNE_CURVE_SECRET=$old STATETUNE_SERVER_KEY=$etc/keys/coordinator.pub \
    "$st" jobs --timeout-ms 2000 >/dev/null 2>&1; then
    fail "alice's old key ($old_pub) still works after its revocation"
fi
echo "ok: rotate keeps the old key until it is revoked"

# ---- backup while running, restore (docs/operations.md) ---------------------------
if command -v sqlite3 >/dev/null; then
    # deploy/backup.sh, as statetune-backup.timer runs it, while the
    # coordinator is up; an old backup beyond the retention goes.
    mkdir -p "$tmp/backups"
    touch -d '10 days ago' "$tmp/backups/registry-20000101T000000Z.db"
    backup=$("$src/deploy/backup.sh" "$tmp/registry.db" "$tmp/backups" 7) || fail "deploy/backup.sh failed"
    [ -n "$backup" ] && [ -s "$backup" ] || fail "deploy/backup.sh wrote no backup"
    [ "$(stat -c %a "$backup" 2>/dev/null)" = 600 ] || fail "the backup is not 0600"
    [ -e "$tmp/backups/registry-20000101T000000Z.db" ] && fail "backup.sh kept a backup older than 7 days"
    [ "$(sqlite3 "$backup" "PRAGMA integrity_check")" = ok ] || fail "the backup is not intact"
    cp "$backup" "$tmp/backup.db"
    stop "$group_pid"
    group_pid=""
    stop "$coord_pid"
    coord_pid=""
    mkdir "$tmp/broken"
    mv "$tmp/registry.db" "$tmp/broken/"
    for f in "$tmp/registry.db-wal" "$tmp/registry.db-shm"; do
        if [ -e "$f" ]; then mv "$f" "$tmp/broken/"; fi
    done
    install -m 0600 "$tmp/backup.db" "$tmp/registry.db"
    "${coord_cmd[@]}" >>"$tmp/coordinator.log" 2>&1 &
    coord_pid=$!
    restored=0
    for ((i = 0; i < 50; i++)); do
        if as alice states get deploy-check@latest -o "$tmp/s2.safetensors" --timeout-ms 1000 >/dev/null 2>&1; then
            restored=1
            break
        fi
        kill -0 "$coord_pid" 2>/dev/null || break
        sleep 0.2
    done
    if [ "$restored" = 1 ] && cmp -s "$tmp/s.safetensors" "$tmp/s2.safetensors"; then
        echo "ok: backup.sh while running, restore, and the restored coordinator serves the same state"
    else
        fail "the coordinator restored from the backup does not serve deploy-check@latest as before"
    fi
else
    echo "skipped part: sqlite3 is not installed (backup and restore)"
fi

if [ "$fails" -ne 0 ]; then
    echo "--- coordinator log ---"
    tail -n 30 "$tmp/coordinator.log"
    exit 1
fi
echo "deploy recipes work on loopback"
