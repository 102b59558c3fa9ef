#!/usr/bin/env bash
# demo_run.sh STEPS MIN_DROP [TRAIN EVAL] - runs scripts/demo.sh (the demo of
# issue #9) as a user would, on the fixture model, and checks what the user
# is promised: it exits 0; the tuned state's eval loss is below the untuned
# baseline's by at least MIN_DROP (a fraction: 0.4 means 40% lower); on the
# service path the state was registered and fetched with `states get`; and
# nothing it started is still running afterwards. With
# STATETUNE_DEMO_REQUIRE_SERVICE=1 a fallback to the local path is a failure;
# with STATETUNE_DEMO_RANDOM=1 the demo runs as on a machine without the
# fixtures, on the random model it makes itself.
#
# It also follows docs/operations.md's backup procedure while the demo runs:
# every 2 s an online `sqlite3 .backup` of the live registry, each of which
# must pass PRAGMA integrity_check without disturbing the coordinator, and a
# last backup that `statetune --db` must read the tuned state from.
set -euo pipefail
steps=${1:-8}
min_drop=${2:-0}
n_train=${3:-1024}
n_eval=${4:-64}
src=${STATETUNE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
build=${STATETUNE_BUILD_DIR:-$src/build}
fx=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$src/../shared/fixtures}}
if [ "${STATETUNE_DEMO_RANDOM:-0}" = 1 ]; then
    fx=/nonexistent # the demo's own fallback: a random model it makes
    /usr/bin/python3 -c 'import numpy' 2>/dev/null || { echo "skipped: numpy is missing"; exit 77; }
else
    [ -r "$fx/rwkv7/pysrc-rwkv7-5M.pth" ] || { echo "skipped: fixture pysrc-rwkv7-5M.pth is absent"; exit 77; }
fi
command -v mpirun >/dev/null || { echo "skipped: mpirun is not installed"; exit 77; }
work=$(mktemp -d /tmp/statetune-demo-test.XXXXXX)
trap 'rm -rf "$work"' EXIT

fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
have_sqlite=0
command -v sqlite3 >/dev/null && have_sqlite=1

# Online backups of the live registry, as docs/operations.md says to take them.
backup_loop() {
    local n=0 r
    while [ ! -e "$work/.stop-backups" ]; do
        if [ -e "$work/registry.db" ]; then
            n=$((n + 1))
            if (umask 077 && sqlite3 -cmd ".timeout 10000" "$work/registry.db" ".backup '$work/.backup-$n.db'"); then
                r=$(sqlite3 "$work/.backup-$n.db" "PRAGMA integrity_check" 2>&1)
                [ "$r" = ok ] || echo "backup $n: integrity_check says: $r" >>"$work/.backup-errors"
            else
                echo "backup $n: sqlite3 .backup failed" >>"$work/.backup-errors"
            fi
            echo "$n" >"$work/.backups-done"
        fi
        sleep 2
    done
}
backup_pid=""
if [ "$have_sqlite" = 1 ]; then
    backup_loop &
    backup_pid=$!
fi

t0=$SECONDS
rc=0
STATETUNE_FIXTURES=$fx STATETUNE_BUILD=$build STATETUNE_DEMO_SKIP_DEPS=1 STATETUNE_DEMO_DIR=$work \
    STATETUNE_DEMO_STEPS=$steps STATETUNE_DEMO_TRAIN=$n_train STATETUNE_DEMO_EVAL=$n_eval \
    "$src/scripts/demo.sh" >"$work.log" 2>&1 || rc=$?
secs=$((SECONDS - t0))
mv "$work.log" "$work/demo.log"
if [ -n "$backup_pid" ]; then
    touch "$work/.stop-backups"
    wait "$backup_pid" || true
fi

[ "$rc" -eq 0 ] || fail "demo.sh exited $rc"
if grep -q "running the same job with 'statetune-worker tune --local'" "$work/demo.log"; then
    path=local
    [ "${STATETUNE_DEMO_REQUIRE_SERVICE:-0}" = 1 ] && fail "the demo fell back to the local path"
elif [ "${STATETUNE_DEMO_LOCAL:-0}" = 1 ]; then
    path=local
else
    path=service
fi
echo "demo took ${secs} s on the $path path"

# The numbers the demo showed: from the registry (service) or metrics.json (local).
metrics=$work/metrics-seen.json
if [ "$path" = service ]; then
    [ -s "$work/demo-tabs.safetensors" ] || fail "states get wrote no demo-tabs.safetensors"
    "$build/client/statetune" --db "$work/registry.db" states show demo-tabs@demo --json >"$metrics" ||
        fail "the registry has no demo-tabs@demo"
else
    cp "$work/out/metrics.json" "$metrics" 2>/dev/null || fail "the local path wrote no metrics.json"
fi
if [ -s "$metrics" ]; then
    /usr/bin/python3 - "$metrics" "$min_drop" <<'EOF' || fail "eval loss did not fall enough"
import json, sys
m = json.load(open(sys.argv[1]))
min_drop = float(sys.argv[2])

def walk(o):
    """Every dict in o, depth first."""
    if isinstance(o, dict):
        yield o
        for v in o.values():
            yield from walk(v)
    elif isinstance(o, list):
        for v in o:
            yield from walk(v)

num = (int, float)
before = after = None
for d in walk(m):
    if isinstance(d.get("eval_loss_after"), num) and isinstance(d.get("eval_loss_before"), num):
        before, after = d["eval_loss_before"], d["eval_loss_after"]  # metrics.json
        break
    if d.get("name") == "eval_loss" and isinstance(d.get("value"), num) and isinstance(d.get("baseline"), num):
        before, after = d["baseline"], d["value"]  # the registry's metric record
        break
if before is None:
    print("cannot find the eval loss before and after in", sys.argv[1])
    sys.exit(1)
drop = (before - after) / before
print("eval loss %.4f -> %.4f (%.1f%% lower; need >= %.0f%%)" % (before, after, 100 * drop, 100 * min_drop))
sys.exit(0 if after < before and drop >= min_drop else 1)
EOF
fi

# The backups taken while it ran, and one of the final registry.
if [ "$path" = service ] && [ "$have_sqlite" = 1 ]; then
    [ -e "$work/.backup-errors" ] && fail "$(cat "$work/.backup-errors")"
    echo "$(cat "$work/.backups-done" 2>/dev/null || echo 0) online backups taken while the demo ran"
    sqlite3 "$work/registry.db" ".backup '$work/final-backup.db'" || fail "backup of the final registry failed"
    "$build/client/statetune" --db "$work/final-backup.db" states list | grep -q demo-tabs ||
        fail "statetune --db on the backup does not list demo-tabs"
fi

# Nothing the demo started may outlive it: every process it starts names the
# work directory on its command line (--db, key files, the job file).
left=()
for c in /proc/[0-9]*/cmdline; do
    if { tr '\0' ' ' <"$c"; } 2>/dev/null | grep -q -- "$work/"; then
        p=${c#/proc/}
        left+=("${p%/cmdline}")
    fi
done
[ ${#left[@]} -eq 0 ] || fail "processes still running after the demo: ${left[*]}"

if [ "$fails" -ne 0 ]; then
    echo "--- last lines of the demo ---"
    tail -n 40 "$work/demo.log"
    exit 1
fi
echo "demo ok"
