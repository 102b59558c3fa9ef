#!/usr/bin/env bash
# demo_run.sh STEPS MIN_DROP - runs scripts/demo.sh (the demo of issue #9) as a
# user would, on the fixture model, and checks what the user is promised:
# it exits 0; the tuned state's eval loss is below the untuned baseline's by
# at least MIN_DROP (a fraction: 0.4 means 40% lower); on the service path the
# state was registered and fetched with `states get`; and nothing it started
# is still running afterwards. With STATETUNE_DEMO_REQUIRE_SERVICE=1 a
# fallback to the local path is a failure.
set -euo pipefail
steps=${1:-8}
min_drop=${2:-0}
src=${STATETUNE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
build=${STATETUNE_BUILD_DIR:-$src/build}
fx=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$src/../shared/fixtures}}
[ -r "$fx/rwkv7/pysrc-rwkv7-5M.pth" ] || { echo "skipped: fixture pysrc-rwkv7-5M.pth is absent"; exit 77; }
command -v mpirun >/dev/null || { echo "skipped: mpirun is not installed"; exit 77; }
work=$(mktemp -d /tmp/statetune-demo-test.XXXXXX)
trap 'rm -rf "$work"' EXIT

t0=$SECONDS
rc=0
STATETUNE_FIXTURES=$fx STATETUNE_BUILD=$build STATETUNE_DEMO_SKIP_DEPS=1 STATETUNE_DEMO_DIR=$work \
    STATETUNE_DEMO_STEPS=$steps "$src/scripts/demo.sh" >"$work.log" 2>&1 || rc=$?
secs=$((SECONDS - t0))
mv "$work.log" "$work/demo.log"
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

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

def find(o, names):
    """The first number under one of names, searching nested objects and
    lists of {name, value, baseline} records (the registry's metrics)."""
    if isinstance(o, dict):
        for n in names:
            if isinstance(o.get(n), (int, float)):
                return o[n]
        if o.get("name") == "eval_loss" and isinstance(o.get("value"), (int, float)):
            return {"eval_loss": o["value"], "baseline": o.get("baseline")}
        for v in o.values():
            r = find(v, names)
            if r is not None:
                return r
    elif isinstance(o, list):
        for v in o:
            r = find(v, names)
            if r is not None:
                return r
    return None

after = find(m, ["eval_loss_after"])
before = find(m, ["eval_loss_before"])
if after is None:
    r = find(m, [])
    if isinstance(r, dict):
        after, before = r["eval_loss"], r["baseline"]
if not isinstance(after, (int, float)) or not isinstance(before, (int, float)):
    print("cannot find the eval loss before and after in", sys.argv[1])
    sys.exit(1)
drop = (before - after) / before
print("eval loss %.4f -> %.4f (%.1f%% lower; need >= %.0f%%)" % (before, after, 100 * drop, 100 * min_drop))
sys.exit(0 if after < before and drop >= min_drop else 1)
EOF
fi

# Nothing the demo started may outlive it: every process it starts names the
# work directory on its command line (--db, key files, the job file).
left=()
for c in /proc/[0-9]*/cmdline; do
    if tr '\0' ' ' <"$c" 2>/dev/null | grep -q -- "$work/"; then
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
