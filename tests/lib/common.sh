# tests/lib/common.sh - the helpers the service test scripts share: finding the
# build folder and fixtures (exit 77 with a sentence when something is absent),
# a fresh temp folder with an ipc:// endpoint, the mpirun-as-root environment,
# the PID list with its cleanup trap, fail() that dumps the logs, json() over
# /usr/bin/python3, starting a coordinator and worker groups, a job's status
# and checkpoints, and the small dataset makers; for the scripts that tune
# with `statetune-worker tune --local` alone, the paths and a tabs dataset.
# Sourced, never run: `. "$(dirname "$0")/lib/common.sh"`. Nothing here runs at
# source time; every script calls what it needs, in its own order.

# st_paths: B (build folder, required), FIX (fixtures folder), PY (the Python
# with PyTorch), ST (the client). STATETUNE_FIXTURES wins, then CTest's default,
# then ../shared/fixtures next to the source tree.
st_paths() {
    B=${STATETUNE_BUILD_DIR:?STATETUNE_BUILD_DIR must name the build folder}
    FIX=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-${STATETUNE_SOURCE_DIR:-.}/../shared/fixtures}}
    PY=/usr/bin/python3
    ST="$B/client/statetune"
}

# st_tiny_model: MODEL, the tiny.pth fixture the service scripts tune; skips
# when it or mpirun (every one of them starts a worker group) is absent
st_tiny_model() {
    MODEL=$FIX/rwkv7/tiny.pth
    st_need_fixture "$MODEL"
    st_need_cmd mpirun
}

# st_local_paths: for the scripts that drive `statetune-worker tune --local`
# alone (no service): here (the tests folder), build (STATETUNE_BUILD_DIR, or
# ../build), worker, fixtures, and py = PY = /usr/bin/python3 (the helpers
# below use PY)
st_local_paths() {
    here=$(cd "$(dirname "$0")" && pwd)
    build=${STATETUNE_BUILD_DIR:-$here/../build}
    worker=$build/worker/statetune-worker
    fixtures=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$here/../../shared/fixtures}}
    py=/usr/bin/python3
    PY=$py
}

# st_local_tabs NAME TRAIN EVAL BYTES: after st_local_paths, for the scripts
# that tune the 5M fixture model alone: model (pysrc-rwkv7-5M.pth), fail()
# that prints the sentence and exits 1 (there are no service logs to show),
# tmp (a fresh folder tune-NAME-XXXXXX, removed at exit) holding train.jsonl
# and eval.jsonl, TRAIN and EVAL samples of BYTES bytes of this machine's
# Python sources (tests/make_tabs_data.py). Fails without the worker binary;
# skips without the fixture, /usr/bin/python3 or the Python sources.
st_local_tabs() {
    model=$fixtures/rwkv7/pysrc-rwkv7-5M.pth
    fail() { echo "FAIL: $*" >&2; exit 1; }
    [ -x "$worker" ] || fail "no worker binary at $worker"
    st_need_fixture "$model"
    st_need_py
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/tune-$1-XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    "$py" "$here/make_tabs_data.py" "$tmp" --train "$2" --eval "$3" --bytes "$4" >/dev/null ||
        st_skip "could not make the dataset from Python sources"
}

# st_skip SENTENCE: the test cannot run here; CTest counts exit 77 as skipped
st_skip() { echo "skipped: $*"; exit 77; }

# st_need_fixture FILE: skip when a fixture file is absent
st_need_fixture() { [ -f "$1" ] || st_skip "fixture $1 not found"; }

# st_need_cmd COMMAND [SENTENCE]: skip when COMMAND is not on PATH
st_need_cmd() { command -v "$1" >/dev/null || st_skip "${2:-$1 not found}"; }

# st_need_py: skip when /usr/bin/python3 is absent
st_need_py() { [ -x "$PY" ] || st_skip "$PY not found"; }

# st_mpi_env: let mpirun run as root (containers) and start more ranks than cores
st_mpi_env() {
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export OMPI_MCA_rmaps_base_oversubscribe=1
}

# st_service_dir NAME: T, a fresh folder statetune-NAME-XXXXXX; EP, an ipc://
# endpoint in it, exported as STATETUNE_ENDPOINT for the client; the mpirun
# environment; PIDS, the empty list st_cleanup kills; the EXIT trap.
st_service_dir() {
    T=$(mktemp -d "${TMPDIR:-/tmp}/statetune-$1-XXXXXX")
    EP="ipc://$T/c.sock"
    export STATETUNE_ENDPOINT="$EP"
    st_mpi_env
    PIDS=()
    trap st_cleanup EXIT
}

# st_cleanup: SIGKILL everything in PIDS and its children (by pid, never by
# name), run st_cleanup_hook when the script defines one (an umount...), and
# remove T unless KEEP is set (fail sets it, so the logs stay).
st_cleanup() {
    for p in "${PIDS[@]}"; do
        kill -9 $(pgrep -P "$p" 2>/dev/null) "$p" 2>/dev/null
    done
    wait 2>/dev/null
    if declare -F st_cleanup_hook >/dev/null; then st_cleanup_hook; fi
    [ -n "${KEEP:-}" ] || rm -rf "$T"
}

# fail SENTENCE: print it (after FAIL_WHAT in parentheses when set), the last
# FAIL_TAIL (default 20) lines of every $T/*.log, keep T, exit 1
fail() {
    echo "FAIL${FAIL_WHAT:+ ($FAIL_WHAT)}: $*"
    for f in "$T"/*.log; do [ -f "$f" ] && { echo "---- $f"; tail -n "${FAIL_TAIL:-20}" "$f"; }; done
    KEEP=1
    exit 1
}

# json EXPR: evaluates a Python expression over the JSON document on stdin (as d)
json() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# st_start_coordinator ARGS...: a coordinator bound to EP with ARGS (--db,
# --insecure, --heartbeat-ms...) in the background, its output appended to
# $T/coordinator.log, its pid in COORD and PIDS; st_wait_coordinator next
st_start_coordinator() {
    "$B/coordinator/statetune-coordinator" --bind "$EP" "$@" >>"$T/coordinator.log" 2>&1 &
    COORD=$!
    PIDS+=("$COORD")
}

# st_coordinator_up ARGS...: st_start_coordinator ARGS, then fail()s unless
# it answers within 10 s
st_coordinator_up() {
    st_start_coordinator "$@"
    st_wait_coordinator 100 || fail "the coordinator did not come up"
}

# st_start_group LOG NP [ARGS...]: a worker group of NP ranks under mpirun,
# one thread each, on EP with more worker ARGS (--coordinator-timeout...),
# its output in $T/LOG; the launcher's pid in GROUP_PID and PIDS
st_start_group() {
    local log=$1 np=$2
    shift 2
    mpirun -np "$np" "$B/worker/statetune-worker" --coordinator "$EP" --threads 1 "$@" >"$T/$log" 2>&1 &
    GROUP_PID=$!
    PIDS+=("$GROUP_PID")
}

# st_wait_coordinator TRIES: polls `statetune jobs` every 0.1 s, TRIES times;
# returns 1 when the coordinator never answered (the caller decides)
st_wait_coordinator() {
    for _ in $(seq "$1"); do
        "$ST" jobs --timeout-ms 500 >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.2 s until it
# succeeds; fail()s after SECONDS
wait_for() {
    local what=$1 secs=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || fail "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
}

# st_registry_ok DB WHAT: stops the coordinator (SIGTERM) and fail()s unless
# SQLite's integrity_check of DB passes (WHAT says when, in the sentence)
st_registry_ok() {
    local ic
    kill -TERM "$COORD"
    wait "$COORD" 2>/dev/null
    ic=$(sqlite3 "file:$1?mode=ro" "PRAGMA integrity_check;" 2>&1)
    [ "$ic" = ok ] || fail "registry integrity_check$2: $ic"
}

# st_gone PID: whether the process PID has ended (for wait_for)
st_gone() { ! kill -0 "$1" 2>/dev/null; }

# st_client ARGS...: the client as the job helpers below run it; a script
# whose client runs on another host (tests/cluster_service.sh) redefines it
st_client() { "$ST" "$@"; }

# status_of JOB: prints the job's status
status_of() { st_client status "$1" --json | json 'd["status"]'; }

# is_status JOB STATUS: whether the job's status is STATUS (for wait_for)
is_status() { [ "$(status_of "$1")" = "$2" ]; }

# checkpoint_at_least JOB STEP: a checkpoint event at or past STEP exists
checkpoint_at_least() {
    st_client events "$1" --json | json "int(max([e['data']['step'] if isinstance(e['data'], dict) else json.loads(e['data'])['step'] for e in d if e['kind']=='checkpoint'] or [0]) >= $2 or exit(1))"
}

# st_resumed_from NAME STEP: the state NAME@latest, tuned by a second group
# after the first was lost, says it resumed from a checkpoint at or past STEP
st_resumed_from() {
    local from
    from=$(st_client states show "$1@latest" --json | json '[m["value"] for m in d["metrics"] if m["name"]=="resumed_from_step"][0]')
    echo "second group resumed from step $from"
    "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) >= $2 else 1)" "$from" ||
        fail "the second group did not resume from the checkpoint (from $from)"
}

# state_rel A B: prints the relative L2 difference of two state.safetensors
# files (F32 tensors, the same names in both), computed by $PY
state_rel() {
    "$PY" - "$1" "$2" <<'EOF'
import array, json, struct, sys
def load(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == '__metadata__':
            continue
        assert v['dtype'] == 'F32', v
        s, e = v['data_offsets']
        a = array.array('f')
        a.frombytes(b[8 + n + s:8 + n + e])
        out[k] = a
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
assert sorted(a) == sorted(b), (sorted(a), sorted(b))
num = sum((x - y) ** 2 for k in a for x, y in zip(a[k], b[k]))
den = sum(x * x for k in a for x in a[k])
print((num / den) ** 0.5 if den else num ** 0.5)
EOF
}

# st_words_data SEED LINES WORD...: $T/train.jsonl, LINES samples of 10 random
# WORDs joined by spaces (seeded, so every run gets the same file)
st_words_data() {
    "$PY" - "$T" "$@" <<'EOF'
import json, random, sys
random.seed(int(sys.argv[2]))
words = sys.argv[4:]
with open(f"{sys.argv[1]}/train.jsonl", "w") as f:
    for _ in range(int(sys.argv[3])):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(10))}) + "\n")
EOF
}

# st_tabs_data SEED TRAIN EVAL: $T/train.jsonl and $T/eval.jsonl, TRAIN and
# EVAL samples of 8 random words joined by tabs (seeded)
st_tabs_data() {
    "$PY" - "$T" "$@" <<'EOF'
import json, random, sys
random.seed(int(sys.argv[2]))
words = "the quick brown fox jumps over a lazy dog while seven tabs indent code".split()
for name, n in (("train", int(sys.argv[3])), ("eval", int(sys.argv[4]))):
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": "\t".join(random.choice(words) for _ in range(8))}) + "\n")
EOF
}
