#!/usr/bin/env bash
# demo.sh - statetune end to end on one machine, no GPU needed; one is used when present (issue #9).
#
#   ./scripts/demo.sh [MODEL [VOCAB]]
#
# On a fresh Debian 12 (as root, or with sudo) it installs the packages it
# needs, builds, starts a coordinator on loopback with a fresh registry and
# CURVE keys made for the occasion, starts a worker group of 2 CPU ranks with
# mpirun, tunes a state for MODEL on Python code re-indented with tabs,
# submits the job, watches it, prints the eval loss before and after (from the
# registry), fetches the tuned state with `states get`, and stops everything
# it started, whatever happens (trap).
#
# MODEL: an official RWKV-7 .pth (or safetensors / rwkv.cpp .bin). Default:
# pysrc-rwkv7-5M.pth from the fixtures (../shared/fixtures or
# $STATETUNE_FIXTURES), a small model trained on Python's standard library,
# which tuning moves a lot. With neither, a small random RWKV-7 is made: the
# pipeline runs the same, but a random model has little to steer. VOCAB: the
# World vocabulary file (rwkv_vocab_v20230424.txt) for a model with the
# 65536-token vocabulary; byte-level (vocab 256) models need none.
#
# Should the service path (coordinator + worker group) not come up (a build
# without it, a port it cannot have), the demo says so and runs the same job with
# `mpirun -np 2 statetune-worker tune --local` instead, so it always tunes.
#
# Environment: STATETUNE_BUILD (build dir, default ./build), STATETUNE_DEMO_DIR
# (work dir, default a new /tmp/statetune-demo.*; kept afterwards),
# STATETUNE_DEMO_STEPS (default 60), STATETUNE_DEMO_TRAIN and _EVAL (samples,
# default 1024 and 64), STATETUNE_DEMO_PORT (default: a free one),
# STATETUNE_DEMO_SKIP_DEPS=1 (do not run install-deps.sh),
# STATETUNE_DEMO_LOCAL=1 (go straight to the local path), STATETUNE_DEMO_CPU=1
# (stay on the CPU even with a GPU).
set -euo pipefail

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit 0
fi
here=$(cd "$(dirname "$0")/.." && pwd)
build=${STATETUNE_BUILD:-$here/build}
steps=${STATETUNE_DEMO_STEPS:-60}
n_train=${STATETUNE_DEMO_TRAIN:-1024}
n_eval=${STATETUNE_DEMO_EVAL:-64}
fixtures=${STATETUNE_FIXTURES:-$here/../shared/fixtures}
t_start=$SECONDS

if [ -t 1 ]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi
die() { echo "demo: $*" >&2; exit 1; }

# ---- 1. packages and build ---------------------------------------------------
if [ "${STATETUNE_DEMO_SKIP_DEPS:-0}" != 1 ]; then
    say "packages (scripts/install-deps.sh)"
    "$here/scripts/install-deps.sh"
fi
say "build ($build)"
# A build directory that exists keeps its own settings (CI's has -Werror).
if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTATETUNE_WERROR=OFF >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target statetune statetune-coordinator statetune-worker >/dev/null
st_client=$build/client/statetune
st_coord=$build/coordinator/statetune-coordinator
st_worker=$build/worker/statetune-worker

# With a GPU and a build that has the CUDA backend, the group runs on GPUs (one
# rank per GPU, at most 2); otherwise on 2 CPU ranks. STATETUNE_DEMO_CPU=1
# keeps it on the CPU.
backend=cpu ranks=2
if [ "${STATETUNE_DEMO_CPU:-0}" != 1 ] && grep -q '^CMAKE_CUDA_COMPILER:FILEPATH=/' "$build/CMakeCache.txt" 2>/dev/null &&
    command -v nvidia-smi >/dev/null; then
    ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if [ "${ngpu:-0}" -ge 1 ]; then
        backend=cuda
        ranks=$((ngpu >= 2 ? 2 : 1))
        say "GPU found: the worker group runs $ranks rank(s) with --backend cuda"
    fi
fi

# ---- 2. model and data -------------------------------------------------------
work=${STATETUNE_DEMO_DIR:-$(mktemp -d /tmp/statetune-demo.XXXXXX)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
model=${1:-}
vocab=${2:-}
if [ -n "$model" ]; then
    [ -r "$model" ] || die "cannot read model '$model'"
    model=$(cd "$(dirname "$model")" && pwd)/$(basename "$model")
elif [ -r "$fixtures/rwkv7/pysrc-rwkv7-5M.pth" ]; then
    model=$(cd "$fixtures/rwkv7" && pwd)/pysrc-rwkv7-5M.pth
else
    say "no model given and no fixture: making a small random RWKV-7"
    echo "Note: a random model knows nothing, so the numbers below only show the pipeline at work."
    echo "Real gains need a pretrained model: ./scripts/demo.sh path/to/rwkv7.pth"
    /usr/bin/python3 "$here/scripts/make_demo_data.py" random-model "$work/random-rwkv7.safetensors"
    model=$work/random-rwkv7.safetensors
fi
if [ -n "$vocab" ]; then
    [ -r "$vocab" ] || die "cannot read vocabulary '$vocab'"
    vocab=$(cd "$(dirname "$vocab")" && pwd)/$(basename "$vocab")
fi
say "data: Python standard-library code re-indented with tabs (train and eval from different files)"
/usr/bin/python3 "$here/tests/make_tabs_data.py" "$work/data" --task tabs --train "$n_train" --eval "$n_eval" --bytes 170

# Global batch 16 split over 2 ranks; the learning rate that works for state
# tuning (SPEC 2.2 defaults: 1.0 decaying to 0.01).
/usr/bin/python3 - "$work/job.json" "$model" "$vocab" "$steps" "$backend" "$ranks" <<'EOF'
import json, sys
path, model, vocab, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
backend, ranks = sys.argv[5], int(sys.argv[6])
job = {
    "name": "demo-tabs", "model": model,
    "train": "data/train.jsonl", "eval": "data/eval.jsonl",
    "ctx_len": 256, "micro_batch": 8, "global_batch": 16, "steps": steps,
    "lr_init": 1.0, "lr_final": 0.01, "warmup_steps": 5,
    "eval_every": steps, "checkpoint_every": 20, "seed": 1,
    "backend": backend, "alias": "demo",
}
if backend == "cuda":
    job["gpus"] = ranks
if vocab:  # else the default: bytes, right for vocab-256 models
    job["tokenizer"] = vocab
with open(path, "w") as f:
    json.dump(job, f, indent=2)
EOF
echo "model: $model"
echo "job:   $work/job.json"

# ---- 3. processes we start, and how they end -----------------------------------
# Two ranks on two cores: one BLAS/OpenMP thread each. mpirun refuses root
# unless told that it is meant.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun -np "$ranks" --oversubscribe --bind-to none -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS)
coord_pid="" group_pid="" fg_pid="" endpoint=""

# Long waits run in the background and are waited for: bash runs a trap only
# between commands, so a foreground `watch` would hold off Ctrl-C or SIGTERM
# (and the cleanup below) until the job ends; `wait` is interrupted at once.
run_fg() {
    local rc=0
    "$@" &
    fg_pid=$!
    wait "$fg_pid" || rc=$?
    fg_pid=""
    return "$rc"
}

stop() { # stop PID NAME: SIGTERM, then SIGKILL after 10 s
    local pid=$1 name=$2 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo: $name did not stop within 10 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop "$fg_pid" "the client"
    stop "$group_pid" "the worker group"
    stop "$coord_pid" "the coordinator"
    echo "demo: work files kept in $work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 4. the local path (fallback) ----------------------------------------------
run_local() {
    say "tuning with: mpirun -np $ranks statetune-worker tune job.json --local --backend $backend"
    run_fg "${mpi[@]}" "$st_worker" tune "$work/job.json" --local --out "$work/out" --backend "$backend" ||
        die "local tuning failed (see the message above)"
    [ -r "$work/out/metrics.json" ] || die "tuning wrote no metrics.json"
    say "baseline vs tuned ($work/out/metrics.json)"
    /usr/bin/python3 - "$work/out/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
b, a = m["eval_loss_before"], m["eval_loss_after"]
print("eval loss  %.4f -> %.4f  (%.1f%% lower)" % (b, a, 100 * (b - a) / b))
print("train loss %.4f -> %.4f over %d steps, %.0f tokens/s"
      % (m["train_loss_first"], m["train_loss_last"], m["steps"], m["tokens_per_s"]))
EOF
    echo "tuned state: $work/out/state.safetensors"
}

# ---- 5. the service path ---------------------------------------------------------
free_port() { # a port nothing listens on, from a random start (demos side by side)
    local p i start=$((25555 + RANDOM % 2000))
    for ((i = 0; i < 200; i++)); do
        p=$((start + i))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    echo "$start"
}

start_coordinator() { # start_coordinator KEYS: sets coord_pid and endpoint, or returns 1
    local keys=$1 port try i
    for ((try = 1; try <= 5; try++)); do
        port=${STATETUNE_DEMO_PORT:-$(free_port)}
        endpoint=tcp://127.0.0.1:$port
        say "coordinator on $endpoint, registry $work/registry.db"
        "$st_coord" --bind "$endpoint" --db "$work/registry.db" \
            --curve-secret "$keys/coordinator.key" --allow "$keys/allow" >"$work/coordinator.log" 2>&1 &
        coord_pid=$!
        # The client's keys go through the environment the client library reads.
        export STATETUNE_ENDPOINT=$endpoint STATETUNE_CURVE_SECRET=$keys/client.key \
            STATETUNE_CURVE_PUBLIC=$keys/client.pub STATETUNE_SERVER_KEY=$keys/coordinator.pub
        for ((i = 0; i < 50; i++)); do
            kill -0 "$coord_pid" 2>/dev/null || break
            if "$st_client" jobs --timeout-ms 1000 >/dev/null 2>&1; then return 0; fi
            sleep 0.2
        done
        cat "$work/coordinator.log" >&2
        if kill -0 "$coord_pid" 2>/dev/null; then # running but not answering
            echo "demo: the coordinator runs but does not answer" >&2
            return 1
        fi
        wait "$coord_pid" 2>/dev/null || true
        coord_pid=""
        # Another program may have taken the port between our look and the
        # bind: try another one, unless the port was given.
        [ -z "${STATETUNE_DEMO_PORT:-}" ] || return 1
        echo "demo: the coordinator did not start on port $port; trying another port" >&2
    done
    return 1
}

run_service() {
    local keys job
    keys=$work/keys
    say "CURVE keys ($keys): coordinator, a client and a worker group"
    # (set -e does not reach into a function called as a condition: every
    # step of the setup says `|| return 1` itself.)
    mkdir -p "$keys/allow" && chmod 700 "$keys" || return 1
    for k in coordinator client worker; do
        "$st_client" keys gen "$keys/$k" >/dev/null || return 1
    done
    cp "$keys/client.pub" "$keys/worker.pub" "$keys/allow/" || return 1

    start_coordinator "$keys" || return 1

    say "worker group: mpirun -np $ranks statetune-worker --coordinator $endpoint --backend $backend"
    env -u STATETUNE_CURVE_SECRET -u STATETUNE_CURVE_PUBLIC -u STATETUNE_SERVER_KEY \
        "${mpi[@]}" "$st_worker" --coordinator "$endpoint" --backend "$backend" \
        --curve-public "$keys/worker.pub" --curve-secret "$keys/worker.key" \
        --server-key "$keys/coordinator.pub" >"$work/group.log" 2>&1 &
    group_pid=$!

    say "statetune submit job.json"
    job=$("$st_client" submit "$work/job.json") || return 1
    echo "job $job"
    say "statetune watch $job"
    run_fg timeout 600 "$st_client" watch "$job" || true
    if ! run_fg "$st_client" wait "$job" --timeout 600; then
        "$st_client" status "$job" || true
        echo "--- worker group log ---" >&2
        tail -n 20 "$work/group.log" >&2
        die "job $job did not succeed"
    fi
    say "statetune states show demo-tabs@demo (tuned vs untuned baseline)"
    "$st_client" states show demo-tabs@demo
    "$st_client" states show demo-tabs@demo --json | /usr/bin/python3 -c '
import json, sys
m = {r["name"]: r for r in json.load(sys.stdin).get("metrics", [])}
e = m.get("eval_loss") or {}
if isinstance(e.get("value"), float) and isinstance(e.get("baseline"), float):
    b, a = e["baseline"], e["value"]
    print("\neval loss %.4f (untuned) -> %.4f (tuned): %.1f%% lower" % (b, a, 100 * (b - a) / b))
' || true
    say "statetune states get demo-tabs@demo -o demo-tabs.safetensors"
    "$st_client" states get demo-tabs@demo -o "$work/demo-tabs.safetensors"
    ls -l "$work/demo-tabs.safetensors"
    echo "(also: --format pth for RWKV-Runner and the rwkv pip package, --format st for Ai00 / web-rwkv)"
    echo
    echo "The registry stays in $work/registry.db; look around with"
    echo "  $st_client --db $work/registry.db states list"
    echo "  $st_client --db $work/registry.db states show demo-tabs@demo --json"
    return 0
}

if [ "${STATETUNE_DEMO_LOCAL:-0}" = 1 ]; then
    run_local
elif ! run_service; then
    # Only the setup of the service path may fail into here (a job that runs
    # and fails ends the demo above with its error).
    stop "$group_pid" "the worker group"; group_pid=""
    stop "$coord_pid" "the coordinator"; coord_pid=""
    echo
    echo "demo: the service path (coordinator + worker group) could not be set up (see above);"
    echo "demo: running the same job with 'statetune-worker tune --local' under mpirun instead."
    run_local
fi
say "done in $((SECONDS - t_start)) s"
