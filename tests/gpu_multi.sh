#!/bin/bash
# tests/gpu_multi.sh - GPU worker groups: NCCL all-reduce correctness and the
# 1/2/4-GPU scaling run (SPEC sections 7 and 8; docs/performance.md, scaling).
#
#   tests/gpu_multi.sh pack            (here: nvcc, no GPU)
#       builds statetune-worker with CUDA and NCCL in build-nccl (-Werror,
#       sm_90), copies it, the pysrc-rwkv7-5M fixture and a tabs dataset made
#       by tests/make_tabs_data.py into rt/nccl/, and packs the shared
#       libraries the GPU machine lacks into rt/nccl/runtime.tar.xz. rt/ is
#       git-ignored; the device tool carries it (carry: ["rt/nccl"]).
#       STATETUNE_GPU_WORKER=BINARY packs that worker instead of building one;
#       STATETUNE_GPU_BASELINE_WORKER=BINARY adds a second (the code before a
#       change) as bin/statetune-worker-base.
#   tests/gpu_multi.sh run [correct|scale|all]   (on a machine with >= 2 GPUs)
#       correct: `mpirun -np N statetune-worker tune JOB --local --backend cuda`
#                for N = 1, 2, 4 (as many as there are GPUs) with the same
#                global batch, in bf16 and fp32; the states must match the
#                1-GPU state within the fixtures' tolerance for that precision
#                (also bf16 with DBP on, whose Q is summed with the gradient)
#                (relative L2: bf16 3e-2, fp32 1e-4) and each group must say it
#                summed through NCCL (NCCL_DEBUG=VERSION prints NCCL's banner
#                when a communicator is made). GPU_MULTI_BACKEND=cpu runs
#                the same check on CPU ranks over MPI (a smoke test of this
#                script on a machine without a GPU).
#                Then the methods of SPEC section 4 in a group (correct_methods,
#                bf16 on CUDA, fp32 on CPU): the observer with the teacher on
#                the device (top_k 0), with its top-k ahead of time (top_k 16)
#                and the kernel-expanded state (8 features, k-means), each at
#                N = 1, 2, 4 with the same global batch: state (and U0) of N
#                ranks within the tolerance of 1 rank. A few seconds per job.
#       scale:   `mpirun -np N statetune-worker bench --backend cuda` at
#                24 x 1024 and 24 x 2048, vocab 65536, batch 8 per GPU, ctx
#                1024: tokens/s per GPU against 1 GPU, all-reduce ms per step.
#                A statetune-worker-base in the pack (see pack) runs the same
#                scale first, so that before and after share the machine
#                (scaling-base.txt beside scaling.txt).
#       Logs and a summary go to $OUT (the device tool brings it back).
#   tests/gpu_multi.sh ctest           (CTest, label gpu)
#       `correct` from the build tree and ../shared/fixtures; skipped (77)
#       without 2 GPUs, mpirun, the fixture or Python sources.
#   tests/gpu_multi.sh methods-cpu     (CTest, CI)
#       correct_methods on CPU ranks (mpirun -np 1 and 2, --backend cpu) from
#       the build tree: the group logic of the methods the GPU run checks.
#   tests/gpu_multi.sh nogpu           (CTest, CI: a machine without a GPU)
#       a CUDA group that cannot get its GPUs (bench and tune under
#       mpirun -np 2 --backend cuda) fails within seconds with one sentence
#       per rank saying why, instead of hanging in NCCL; writes no state.
#       Skipped where a GPU is visible.
#
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0): on shared hosts it can put
# every GPU of the host out of service.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rt=${STATETUNE_RT:-$root/rt/nccl}  # STATETUNE_RT: another folder, so that several packs can coexist
mode=${1:-}
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3) # the GPU machine's own Python will do for comparing states
PY=$py   # state_rel (tests/lib/common.sh) runs $PY
. "$root/tests/lib/common.sh"

export NCCL_NVLS_ENABLE=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# ranks build a 1.5B random model before their first collective: allow
# them more than the default 30 s to arrive (the watchdog, worker/dist.h)
export STATETUNE_DIST_TIMEOUT_S=${STATETUNE_DIST_TIMEOUT_S:-90}
# one rank per GPU, threads free to use the node's cores; no CMA (containers
# often forbid the ptrace it needs); no group may take more than 4 minutes
# (device time is counted)
MPIRUN=(timeout "${GPU_MULTI_GROUP_TIMEOUT:-240}" mpirun --bind-to none --mca btl_vader_single_copy_mechanism none -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH
        -x STATETUNE_DIST_TIMEOUT_S)

skip() { echo "skipped: $*"; exit 77; }

if [ "$mode" = pack ]; then
  set -e
  build=${STATETUNE_GPU_BUILD:-$root/build-nccl}
  fx=${STATETUNE_FIXTURES:-$root/../shared/fixtures}
  worker=${STATETUNE_GPU_WORKER:-}
  if [ -z "$worker" ]; then
    cmake -S "$root" -B "$build" -DSTATETUNE_WERROR=ON -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
    cmake --build "$build" -j2 --target statetune-worker
    worker=$build/worker/statetune-worker
  fi
  rm -rf "$rt"; mkdir -p "$rt/bin" "$rt/data"
  cp "$worker" "$rt/bin/statetune-worker"
  [ -n "${STATETUNE_GPU_BASELINE_WORKER:-}" ] && cp "$STATETUNE_GPU_BASELINE_WORKER" "$rt/bin/statetune-worker-base"
  cp "$fx/rwkv7/pysrc-rwkv7-5M.pth" "$rt/data/"
  "$py" "$root/tests/make_tabs_data.py" "$rt/data" --train 256 --eval 32 --bytes 200 >/dev/null
  bash "$root/../shared/device/pack-runtime.sh" "$rt/runtime.tar.xz" "$rt"/bin/statetune-worker*
  du -sh "$rt"
  exit 0
fi

metric() { "$py" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

fail=0
summary=()
note() { summary+=("$*"); echo "$*"; }

# correct WORKER MODEL DATA_DIR OUT_DIR NP...
correct() {
  local w=$1 model=$2 data=$3 out=$4; shift 4
  local prec tol np ref rel dbp backend=${GPU_MULTI_BACKEND:-cuda}
  # bf16, fp32, and bf16 with DBP (its Q is summed in the same NCCL group)
  local precs="bf16 fp32 bf16-dbp"
  [ "$backend" = cuda ] || precs="fp32 fp32-dbp" # the CPU engine is fp32 only
  for prec in $precs; do
    dbp=false
    case $prec in *-dbp) dbp=true ;; esac
    case $prec in bf16*) tol=3e-2 ;; *) tol=1e-4 ;; esac
    cat >"$out/job-$prec.json" <<EOF
{"name": "nccl-$prec", "model": "$model", "train": "$data/train.jsonl", "eval": "$data/eval.jsonl",
 "ctx_len": 128, "micro_batch": 4, "global_batch": 16, "steps": 8, "lr_init": 1.0, "lr_final": 0.05,
 "warmup_steps": 2, "eval_every": 0, "checkpoint_every": 0, "precision": "${prec%-dbp}", "backend": "$backend",
 "dbp": {"enabled": $dbp, "sample_fraction": 0.5}}
EOF
    for np in "$@"; do
      local dir=$out/tune-$prec-np$np
      rm -rf "$dir"
      local t0=$(date +%s)
      if ! NCCL_DEBUG=VERSION "${MPIRUN[@]}" -x NCCL_DEBUG -np "$np" "$w" tune "$out/job-$prec.json" --local \
          --out "$dir" --backend "$backend" --fresh >"$out/tune-$prec-np$np.log" 2>&1; then
        note "FAIL tune $prec np $np: $(head -2 "$out/tune-$prec-np$np.log" | tr '\n' ' ')"
        fail=1; continue
      fi
      if [ "$backend" = cuda ] && [ "$np" -gt 1 ] && ! grep -q 'NCCL version' "$out/tune-$prec-np$np.log"; then
        note "FAIL tune $prec np $np made no NCCL communicator"; fail=1
      fi
      note "tune $prec np $np: $(($(date +%s) - t0)) s, ranks $(metric "$dir/metrics.json" ranks)," \
           "eval loss $(metric "$dir/metrics.json" eval_loss_before) -> $(metric "$dir/metrics.json" eval_loss_after)," \
           "$(metric "$dir/metrics.json" tokens_per_s) tok/s"
    done
    ref=$out/tune-$prec-np$1/state.safetensors
    for np in "${@:2}"; do
      [ -f "$ref" ] && [ -f "$out/tune-$prec-np$np/state.safetensors" ] || continue
      rel=$(state_rel "$ref" "$out/tune-$prec-np$np/state.safetensors") || { note "FAIL compare $prec np $np"; fail=1; continue; }
      if "$py" -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$rel" "$tol"; then
        note "OK   $prec state np $np vs np $1: relative L2 $rel (tolerance $tol)"
      else
        note "FAIL $prec state np $np vs np $1: relative L2 $rel (tolerance $tol)"; fail=1
      fi
    done
  done
}

# correct_methods WORKER MODEL DATA_DIR OUT_DIR NP...: the observer (teacher on
# the fly, i.e. on the device on CUDA; and top-k ahead of time) and the
# kernel-expanded state in groups of NP ranks, each state (and U0) against
# NP[0]'s. The teacher is the same model holding a state tuned here first.
correct_methods() {
  local w=$1 model=$2 data=$3 out=$4; shift 4
  local backend=${GPU_MULTI_BACKEND:-cuda} prec=bf16 tol=3e-2 m np rel f extra=()
  [ "$backend" = cuda ] || { prec=fp32; tol=1e-4; extra=(--threads 1); }
  mjob() { # name methods-json
    cat >"$out/mjob-$1.json" <<EOF
{"name": "m-$1", "model": "$model", "train": "$data/train.jsonl", "eval": "$data/eval.jsonl",
 "ctx_len": 64, "micro_batch": 2, "global_batch": 8, "steps": ${METHODS_STEPS:-4}, "lr_init": 1.0, "lr_final": 0.05,
 "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0, "seed": 7, "precision": "$prec", "backend": "$backend"$2}
EOF
  }
  mrun() { # name np
    local dir=$out/mtune-$1-np$2
    rm -rf "$dir"
    "${MPIRUN[@]}" -np "$2" "$w" tune "$out/mjob-$1.json" --local --out "$dir" --backend "$backend" --fresh \
      ${extra[@]+"${extra[@]}"} >"$dir.log" 2>&1
  }
  mjob teacher ""
  mrun teacher 1 || { note "FAIL methods: the teacher's state did not tune: $(tail -2 "$out/mtune-teacher-np1.log" | tr '\n' ' ')"; fail=1; return; }
  local ts=$out/mtune-teacher-np1/state.safetensors
  local obs="\"observer\": {\"teacher\": \"$model\", \"teacher_state\": \"$ts\", \"alpha\": 0.5, \"temperature\": 2.0"
  mjob observer ", $obs, \"top_k\": 0}"
  mjob topk ", $obs, \"top_k\": 16}"
  mjob kstate ", \"kernel_state\": {\"features\": 8, \"gamma\": 1.0, \"support\": \"kmeans\"}"
  for m in observer topk kstate; do
    for np in "$@"; do
      local t0=$(date +%s)
      if ! mrun $m "$np"; then
        note "FAIL methods $m $prec np $np: $(tail -2 "$out/mtune-$m-np$np.log" | tr '\n' ' ')"; fail=1; continue
      fi
      note "methods $m $prec np $np: $(($(date +%s) - t0)) s, ranks $(metric "$out/mtune-$m-np$np/metrics.json" ranks)," \
           "eval loss $(metric "$out/mtune-$m-np$np/metrics.json" eval_loss_before) -> $(metric "$out/mtune-$m-np$np/metrics.json" eval_loss_after)"
    done
    for np in "${@:2}"; do
      for f in state.safetensors kstate.safetensors; do
        [ "$f" = state.safetensors ] || [ "$m" = kstate ] || continue
        [ -f "$out/mtune-$m-np$1/$f" ] && [ -f "$out/mtune-$m-np$np/$f" ] ||
          { note "FAIL methods $m np $np: no $f to compare"; fail=1; continue; }
        rel=$(state_rel "$out/mtune-$m-np$1/$f" "$out/mtune-$m-np$np/$f") || { note "FAIL compare methods $m $f np $np"; fail=1; continue; }
        if "$py" -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$rel" "$tol"; then
          note "OK   methods $m $prec $f np $np vs np $1: relative L2 $rel (tolerance $tol)"
        else
          note "FAIL methods $m $prec $f np $np vs np $1: relative L2 $rel (tolerance $tol)"; fail=1
        fi
      done
    done
  done
}

# scale WORKER OUT_DIR NAME NP...: NAME.jsonl and NAME.txt in OUT_DIR
scale() {
  local w=$1 out=$2 name=$3; shift 3
  local shape np backend=${GPU_MULTI_BACKEND:-cuda} prec=bf16
  [ "$backend" = cuda ] || prec=fp32
  : >"$out/$name.jsonl"
  # SCALE_SHAPES / SCALE_DIMS override the shapes for a smoke test
  for shape in ${SCALE_SHAPES:-24x1024 24x2048}; do
    for np in "$@"; do
      local log=$out/$name-$shape-np$np.log
      if "${MPIRUN[@]}" -np "$np" "$w" bench --layers "${shape%x*}" --embd "${shape#*x}" \
          ${SCALE_DIMS:---vocab 65536 --batch 8 --ctx 1024} --backend "$backend" --precision "$prec" \
          --steps "${SCALE_STEPS:-10}" >"$log" 2>&1; then
        grep '^{' "$log" | tail -1 >>"$out/$name.jsonl"
      else
        note "FAIL $name bench $shape np $np: $(grep -m2 -i 'error\|fail\|statetune' "$log" | tr '\n' ' ')"; fail=1
      fi
    done
  done
  "$py" - "$out/$name.jsonl" <<'EOF' | tee "$out/$name.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
base = {}
print("%-9s %3s %12s %12s %7s %9s %13s %9s %9s %11s %9s %8s  %s" % ("shape", "np", "tok/s", "tok/s/gpu", "eff",
      "step_ms", "allreduce_ms", "copy_ms", "nccl_ms", "dev_f32_ms", "update_ms", "grad", "engine_ms per rank"))
for r in rows:
    shape = "%dx%d" % (r["layers"], r["embd"])
    if r["ranks"] == 1:
        base[shape] = r["tokens_per_s_per_gpu"]
    eff = r["tokens_per_s_per_gpu"] / base[shape] if shape in base else float("nan")
    print("%-9s %3d %12.0f %12.0f %6.1f%% %9.2f %13.3f %9.3f %9.3f %11.3f %9.3f %8s  %s" % (shape, r["ranks"],
          r["tokens_per_s"], r["tokens_per_s_per_gpu"], 100 * eff, r["step_ms"], r["allreduce_ms"],
          r["allreduce_copy_ms"], r["allreduce_nccl_ms"], r.get("device_allreduce_f32_ms", -1),
          r.get("update_ms", float("nan")), r.get("gradient", "host"),
          " ".join("%.1f" % x for x in r.get("engine_ms_per_rank", []))))
    if "host_threads" in r:
        print("          host threads per rank: %s" % r["host_threads"])
EOF
}

case $mode in
run)
  what=${2:-all}
  OUT=${OUT:-/tmp/statetune-gpu-multi}
  # the device tool brings back at most 8 files: logs and states go to
  # $OUT/work, packed into $OUT/work.tar.gz at the end
  work=$OUT/work
  mkdir -p "$work" /tmp/strt
  tar -xJf "$rt/runtime.tar.xz" -C /tmp/strt
  export LD_LIBRARY_PATH=/tmp/strt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # NCCL is not packed (it is the machine's own); where the loader does not
  # find it, use the copy that comes with PyTorch
  if ldd "$rt/bin/statetune-worker" | grep -q 'libnccl.so.2 => not found'; then
    nccl=$(find /usr /opt -name libnccl.so.2 2>/dev/null | head -1)
    [ -n "$nccl" ] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(dirname "$nccl")
  fi
  ldd "$rt/bin/statetune-worker" | grep -E 'nccl|mpi|cudart|not found' >"$OUT/ldd.txt"
  if [ "${GPU_MULTI_BACKEND:-cuda}" = cuda ]; then
    { nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader; nvidia-smi topo -m;
      date -u; mpirun --version | head -1; } 2>&1 | tee "$OUT/device.txt"
    ngpu=$(nvidia-smi -L | wc -l)
  else
    ngpu=${GPU_MULTI_NP:-2}
    MPIRUN+=(--oversubscribe)
  fi
  nps=(1)
  [ "$ngpu" -ge 2 ] && nps+=(2)
  [ "$ngpu" -ge 4 ] && nps+=(4)
  w=$rt/bin/statetune-worker
  case ,$what, in *,correct,*|*,all,*) correct "$w" "$rt/data/pysrc-rwkv7-5M.pth" "$rt/data" "$work" "${nps[@]}"
    correct_methods "$w" "$rt/data/pysrc-rwkv7-5M.pth" "$rt/data" "$work" "${nps[@]}" ;; esac
  case ,$what, in *,scale,*|*,all,*)
    if [ -x "$rt/bin/statetune-worker-base" ] && [ "${SCALE_BASELINE:-1}" = 1 ]; then
      scale "$rt/bin/statetune-worker-base" "$work" scaling-base "${nps[@]}"
      cp "$work/scaling-base.txt" "$OUT/"
    fi
    scale "$w" "$work" scaling "${nps[@]}"
    cp "$work/scaling.jsonl" "$work/scaling.txt" "$OUT/" ;;
  esac
  printf '%s\n' "${summary[@]}" >"$OUT/summary.txt"
  tar -czf "$OUT/work.tar.gz" -C "$OUT" work && rm -rf "$work"
  ;;
ctest)
  build=${STATETUNE_BUILD_DIR:-$root/build}
  fx=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$root/../shared/fixtures}}
  w=$build/worker/statetune-worker
  [ -x "$w" ] || { echo "FAIL: no worker binary at $w"; exit 1; }
  command -v nvidia-smi >/dev/null || skip "no nvidia-smi"
  command -v mpirun >/dev/null || skip "no mpirun"
  ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
  [ "$ngpu" -ge 2 ] || skip "$ngpu GPU(s): a group needs 2"
  [ -f "$fx/rwkv7/pysrc-rwkv7-5M.pth" ] || skip "fixture pysrc-rwkv7-5M.pth not found"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu-multi-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  "$py" "$root/tests/make_tabs_data.py" "$tmp" --train 256 --eval 32 --bytes 200 >/dev/null ||
    skip "could not make the dataset from Python sources"
  nps=(1 2)
  [ "$ngpu" -ge 4 ] && nps+=(4)
  correct "$w" "$fx/rwkv7/pysrc-rwkv7-5M.pth" "$tmp" "$tmp" "${nps[@]}"
  correct_methods "$w" "$fx/rwkv7/pysrc-rwkv7-5M.pth" "$tmp" "$tmp" "${nps[@]}"
  ;;
methods-cpu)
  build=${STATETUNE_BUILD_DIR:-$root/build}
  fx=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$root/../shared/fixtures}}
  w=$build/worker/statetune-worker
  [ -x "$w" ] || { echo "FAIL: no worker binary at $w"; exit 1; }
  command -v mpirun >/dev/null || skip "no mpirun"
  [ -f "$fx/rwkv7/pysrc-rwkv7-5M.pth" ] || skip "fixture pysrc-rwkv7-5M.pth not found"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu-multi-methods-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  "$py" "$root/tests/make_tabs_data.py" "$tmp" --train 48 --eval 8 --bytes 120 >/dev/null ||
    skip "could not make the dataset from Python sources"
  MPIRUN+=(--oversubscribe)
  GPU_MULTI_BACKEND=cpu correct_methods "$w" "$fx/rwkv7/pysrc-rwkv7-5M.pth" "$tmp" "$tmp" 1 2
  ;;
nogpu)
  build=${STATETUNE_BUILD_DIR:-$root/build}
  fx=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$root/../shared/fixtures}}
  w=$build/worker/statetune-worker
  [ -x "$w" ] || { echo "FAIL: no worker binary at $w"; exit 1; }
  command -v mpirun >/dev/null || skip "no mpirun"
  if command -v nvidia-smi >/dev/null && [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -gt 0 ]; then
    skip "a GPU is visible: this checks the failure without one"
  fi
  [ -f "$fx/rwkv7/pysrc-rwkv7-5M.pth" ] || skip "fixture pysrc-rwkv7-5M.pth not found"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu-nogpu-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  for i in 1 2 3 4 5 6 7 8; do echo '{"text": "def f(x):\n\treturn x + '$i'\n"}'; done >"$tmp/train.jsonl"
  cp "$tmp/train.jsonl" "$tmp/eval.jsonl"
  cat >"$tmp/job.json" <<EOF
{"name": "nogpu", "model": "$fx/rwkv7/pysrc-rwkv7-5M.pth", "train": "train.jsonl", "eval": "eval.jsonl",
 "ctx_len": 32, "micro_batch": 2, "global_batch": 4, "steps": 2, "precision": "bf16", "backend": "cuda"}
EOF
  # why a CUDA group cannot start: no usable device (CUDA build) or no CUDA
  # backend at all (CPU-only build)
  why='CUDA device\|CUDA backend\|CUDA driver'
  for cmd in "bench --layers 2 --embd 128 --vocab 256 --batch 2 --ctx 16 --backend cuda" \
             "tune $tmp/job.json --local --out $tmp/out --backend cuda"; do
    t0=$(date +%s)
    timeout 60 "${MPIRUN[@]}" --oversubscribe -np 2 $w $cmd >"$tmp/o" 2>"$tmp/e"
    rc=$?
    dt=$(($(date +%s) - t0))
    [ $rc -ne 0 ] || { note "FAIL: '${cmd%% *}' of a group without GPUs exited 0"; fail=1; continue; }
    [ $rc -ne 124 ] || { note "FAIL: '${cmd%% *}' of a group without GPUs hung (killed after 60 s)"; fail=1; continue; }
    if grep -q "$why" "$tmp/e"; then note "OK   ${cmd%% *}: the group failed in $dt s: $(grep -m1 "$why" "$tmp/e")"
    else note "FAIL: '${cmd%% *}' failed without saying why: $(head -3 "$tmp/e" | tr '\n' ' ')"; fail=1; fi
  done
  [ ! -e "$tmp/out/state.safetensors" ] || { note "FAIL: a group without GPUs wrote a state"; fail=1; }
  ;;
*)
  echo "usage: tests/gpu_multi.sh pack | run [correct|scale|all] | ctest | methods-cpu | nogpu" >&2
  exit 2
  ;;
esac
echo "==== summary ($(date -u +%H:%M:%S) UTC) ===="
printf '%s\n' "${summary[@]}"
exit $fail
