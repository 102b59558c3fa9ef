#!/usr/bin/env bash
# demo_interrupt.sh - stopping scripts/demo.sh in the middle of its job
# (SIGTERM, as `timeout` or a closed session sends) ends it within seconds,
# and stops the coordinator, the worker group and the client it started:
# the promise of its trap.
set -euo pipefail
src=${STATETUNE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
build=${STATETUNE_BUILD_DIR:-$src/build}
fx=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$src/../shared/fixtures}}
[ -r "$fx/rwkv7/pysrc-rwkv7-5M.pth" ] || { echo "skipped: fixture pysrc-rwkv7-5M.pth is absent"; exit 77; }
command -v mpirun >/dev/null || { echo "skipped: mpirun is not installed"; exit 77; }
work=$(mktemp -d /tmp/statetune-demo-int.XXXXXX)
log=$work.log
demo_pid=""
left_over() { # pids whose command line names the work directory
    local c p
    for c in /proc/[0-9]*/cmdline; do
        if { tr '\0' ' ' <"$c"; } 2>/dev/null | grep -q -- "$work/"; then
            p=${c#/proc/}
            echo "${p%/cmdline}"
        fi
    done
}
cleanup() {
    local p
    [ -n "$demo_pid" ] && kill -KILL "$demo_pid" 2>/dev/null
    for p in $(left_over); do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$work" "$log"
}
trap cleanup EXIT

STATETUNE_FIXTURES=$fx STATETUNE_BUILD=$build STATETUNE_DEMO_SKIP_DEPS=1 STATETUNE_DEMO_DIR=$work \
    STATETUNE_DEMO_STEPS=500 STATETUNE_DEMO_TRAIN=64 STATETUNE_DEMO_EVAL=8 \
    "$src/scripts/demo.sh" >"$log" 2>&1 &
demo_pid=$!
running=0
for ((i = 0; i < 120; i++)); do
    if grep -q '^step [0-9]' "$log"; then running=1; break; fi
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.5
done
if [ "$running" != 1 ]; then
    echo "FAIL: the demo's job never started running"
    tail -n 30 "$log"
    exit 1
fi
grep -q "running the same job with 'statetune-worker tune --local'" "$log" && echo "(the demo is on its local path)"

t0=$SECONDS
kill -TERM "$demo_pid"
for ((i = 0; i < 300; i++)); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.1; done
secs=$((SECONDS - t0))
if kill -0 "$demo_pid" 2>/dev/null; then
    echo "FAIL: the demo was still running 30 s after SIGTERM"
    exit 1
fi
demo_pid=""
sleep 0.5
left=$(left_over | tr '\n' ' ')
if [ -n "$left" ]; then
    echo "FAIL: processes left running after the demo was stopped: $left"
    exit 1
fi
echo "ok: the demo stopped ${secs} s after SIGTERM and left nothing running"
