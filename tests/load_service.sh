#!/usr/bin/env bash
# load_service.sh - load on a live coordinator while a job runs (SPEC section
# 9, issue #10): CLIENTS concurrent DEALER clients (tests/load_clients.c, one
# thread each) send REQUESTS mixed requests in all (status, listings, and
# states_get of a 10.5 MB state) while a CPU worker group tunes a long job.
# Passes when every request got an ok reply (zero errors), the job kept
# making progress during the load, and the coordinator is still up.
# Prints the latency summary (p50/p99 per kind) and the coordinator's RSS
# over time (sampled every 0.5 s; the series is in $T/rss.tsv with KEEP=1).
#
#   load_service.sh [CLIENTS REQUESTS]     (default 20 x 50 for CI; the slow
#                                           label runs 200 x 10000)
set -u
clients=${1:-20}
requests=${2:-50}
. "$(dirname "$0")/lib/common.sh"
st_paths
MODEL=$FIX/rwkv7/tiny.pth
LOAD=$B/tests/load_clients
st_need_fixture "$MODEL"
"$PY" -c "import numpy" 2>/dev/null || st_skip "numpy (for the 40-layer random model) is missing"
st_need_cmd mpirun
[ -x "$LOAD" ] || { echo "FAIL: $LOAD is not built"; exit 1; }

st_service_dir load
FAIL_TAIL=15
st_words_data 13 64 red green blue cyan magenta yellow black white

st_start_coordinator --db "$T/registry.db" --insecure
st_wait_coordinator 100

# a 10.5 MB state to fetch ([40, 4, 64, 64] fp32), registered through the
# protocol; the coordinator checks a result's shape against the job's model,
# so the job names a random model of that shape (40 x 256, 75 MB)
"$PY" "${STATETUNE_SOURCE_DIR:-$(dirname "$0")/..}/scripts/make_demo_data.py" random-model "$T/big-model.safetensors" \
    --layers 40 --embd 256 --vocab 256 >"$T/model.log" 2>&1 || fail "could not make the 40-layer model: $(cat "$T/model.log")"
cat >"$T/big.json" <<EOF
{"name": "bigstate", "model": "$T/big-model.safetensors", "tokenizer": "bytes", "train": "$T/train.jsonl", "steps": 1, "ctx_len": 32}
EOF
REF=$("$LOAD" setup "$EP" "$T/big.json" 40 4 2>"$T/setup.log") || fail "could not register the big state: $(cat "$T/setup.log")"
echo "registered $REF"

# a job that runs through the whole load
mpirun -np 1 "$B/worker/statetune-worker" --coordinator "$EP" --threads 1 >"$T/group.log" 2>&1 &
PIDS+=("$!")
cat >"$T/long.json" <<EOF
{"name": "busy", "model": "$MODEL", "train": "train.jsonl", "ctx_len": 32, "micro_batch": 2,
 "global_batch": 2, "steps": 1000000, "checkpoint_every": 0, "eval_every": 0}
EOF
J=$("$ST" submit "$T/long.json") || fail "submit failed"
step_of() { "$ST" status "$J" --json --timeout-ms 30000 | json 'd.get("step") or 0'; }
for _ in $(seq 300); do
    [ "$(step_of 2>/dev/null || echo 0)" -ge 1 ] && break
    sleep 0.2
done
s0=$(step_of) || fail "status failed"
[ "$s0" -ge 1 ] || fail "job $J did not start"

# the coordinator's memory over time
(
    t0=$(date +%s.%N)
    while kill -0 "$COORD" 2>/dev/null; do
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$COORD/status" 2>/dev/null)
        echo "$("$PY" -c "print(round($(date +%s.%N) - $t0, 1))")	${rss:-0}"
        sleep 0.5
    done
) >"$T/rss.tsv" &
SAMPLER=$!
PIDS+=("$SAMPLER")

"$LOAD" run "$EP" "$clients" "$requests" "$J" "$REF" >"$T/load.json" 2>"$T/load.log"
rc=$?
kill "$SAMPLER" 2>/dev/null
cat "$T/load.json"
[ $rc = 0 ] || fail "the load run had errors: $(cat "$T/load.log")"
kill -0 "$COORD" 2>/dev/null || fail "the coordinator died under load"
s1=$(step_of) || fail "status failed after the load"
echo "job $J: step $s0 before the load, $s1 after"
[ "$s1" -gt "$s0" ] || fail "the job made no progress during the load"
"$PY" - "$T/rss.tsv" <<'EOF'
import sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
if rows:
    r = [kb / 1024 for _, kb in rows]
    print("coordinator RSS MB: start %.1f, max %.1f, end %.1f over %.1f s (%d samples)" %
          (r[0], max(r), r[-1], rows[-1][0], len(rows)))
    step = max(1, len(rows) // 12)
    print("RSS series (s: MB): " + ", ".join("%.0f: %.0f" % (t, kb / 1024) for t, kb in rows[::step]))
EOF
"$ST" cancel "$J" >/dev/null
echo "ok: load_service $clients clients x $requests requests"
