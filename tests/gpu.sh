#!/bin/bash
# tests/gpu.sh - the GPU checks, in two halves.
#
#   tests/gpu.sh pack   (here, on the build machine, which has nvcc but no GPU)
#       builds build-cuda with -Werror, copies the GPU test programs, the dev
#       benchmarks and statetune-worker into rt/bin, the fixtures that have a
#       reference dump into rt/fixtures, and packs the shared libraries the GPU
#       machine lacks into rt/runtime.tar.xz (../shared/device/pack-runtime.sh).
#       rt/ is git-ignored; the device tool carries it (carry: ["rt"]).
#   tests/gpu.sh run [tests|bench|perf|verify|sanitize|all][,...]   (on the GPU machine)
#       unpacks the runtime, runs every gpu-labelled test program (the same
#       tests ctest -L gpu runs), statetune-worker verify --backend cuda on
#       every fixture in fp32 and bf16, the WKV7 dev benchmark and
#       statetune-worker bench --backend cuda at SPEC section 8's shapes
#       (`perf` is the dev benchmarks alone: dev_wkv7_bench, and
#       dev_engine_bench at the three shapes, beside dev_engine_bench_baseline
#       when pack was given STATETUNE_GPU_BASELINE=<a build dir of the code
#       before a change>, so that before and after run on the same card);
#       several modes may be given comma-separated;
#       `sanitize` (not part of all: slow) runs the GPU tests under
#       compute-sanitizer's memcheck and racecheck.
#       Logs go to $OUT as one archive, logs.tgz (the device tool brings
#       back only a few files), beside summary.txt; the summary is printed
#       last. Exit status: nonzero when any check failed.
#
# Why not ctest on the GPU machine: the build tree's CTest files hold this
# machine's absolute paths and the whole tree is not carried; the test
# programs run all their tests when given no name, which is what ctest -L gpu
# would do one by one.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rt=${STATETUNE_RT:-$root/rt}  # STATETUNE_RT: another folder, so that several packs can coexist
mode=${1:-}

if [ "$mode" = pack ]; then
  set -e
  build=${STATETUNE_GPU_BUILD:-$root/build-cuda}
  cmake -S "$root" -B "$build" -DSTATETUNE_WERROR=ON -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
  # only what the GPU machine runs (other folders may be mid-edit); the
  # worker is optional until the CUDA engine exists
  cmake --build "$build" -j2 --target test_cuda_wkv test_cuda_engine test_cuda_methods test_cuda_graphs \
    test_cuda_gemm test_cuda_kernels test_cuda_bf16_logits dev_wkv7_bench dev_engine_bench
  cmake --build "$build" -j2 --target statetune-worker || echo "gpu.sh: statetune-worker did not build; packing without it" >&2
  rm -rf "$rt"; mkdir -p "$rt/bin" "$rt/fixtures/rwkv7"
  for f in "$build"/tests/test_cuda_* "$build"/kernels/dev_* "$build"/worker/statetune-worker; do
    if [ -x "$f" ]; then cp "$f" "$rt/bin/"; fi
  done
  # optional baseline engine bench (a build with another default, e.g.
  # -DWKV7_FWD_BF16_DEFAULT=0) so that before and after run on the same card
  if [ -n "${STATETUNE_GPU_BASELINE:-}" ] && [ -x "$STATETUNE_GPU_BASELINE/kernels/dev_engine_bench" ]; then
    cp "$STATETUNE_GPU_BASELINE/kernels/dev_engine_bench" "$rt/bin/dev_engine_bench_baseline"
  fi
  fx=${STATETUNE_FIXTURES:-$root/../shared/fixtures}
  for ref in "$fx"/rwkv7/*.ref.safetensors; do
    [ -f "$ref" ] || continue
    m=${ref%.ref.safetensors}
    cp "$ref" "$rt/fixtures/rwkv7/"
    [ -f "$m.safetensors" ] && cp "$m.safetensors" "$rt/fixtures/rwkv7/"
    [ -f "$m.json" ] && cp "$m.json" "$rt/fixtures/rwkv7/"
  done
  cp "$fx/README.md" "$rt/fixtures/" 2>/dev/null || true
  # the trained 5M model: test_cuda_bf16_logits compares on real text with it
  [ -f "$fx/rwkv7/pysrc-rwkv7-5M.pth" ] && cp "$fx/rwkv7/pysrc-rwkv7-5M.pth" "$rt/fixtures/rwkv7/"
  # tests/gpu_methods_tune.sh: the 5M fixture and a tabs dataset (made here: Python sources)
  if [ -f "$fx/rwkv7/pysrc-rwkv7-5M.pth" ]; then
    mkdir -p "$rt/data"; cp "$fx/rwkv7/pysrc-rwkv7-5M.pth" "$rt/data/"
    /usr/bin/python3 "$root/tests/make_tabs_data.py" "$rt/data" --train 256 --eval 32 --bytes 200 >/dev/null ||
      echo "gpu.sh: no tabs dataset; gpu_methods_tune will skip" >&2
  fi
  bash "$root/../shared/device/pack-runtime.sh" "$rt/runtime.tar.xz" "$rt"/bin/*
  # the device tool carries at most 64 MiB: the programs travel compressed
  # (about a quarter of their size) and `run` unpacks them
  tar -cJf "$rt/bin.tar.xz" -C "$rt" bin && rm -rf "$rt/bin"
  du -sh "$rt"
  exit 0
fi

if [ "$mode" != run ]; then
  echo "usage: tests/gpu.sh pack | run [tests|bench|perf|verify|sanitize|all][,...]" >&2
  exit 2
fi
what=${2:-all}
OUT=${OUT:-/tmp/statetune-gpu}
mkdir -p "$OUT" /tmp/strt
export NCCL_NVLS_ENABLE=0
tar -xJf "$rt/runtime.tar.xz" -C /tmp/strt
if [ -f "$rt/bin.tar.xz" ] && [ ! -d "$rt/bin" ]; then tar -xJf "$rt/bin.tar.xz" -C "$rt"; fi
export LD_LIBRARY_PATH=/tmp/strt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export STATETUNE_FIXTURES=$rt/fixtures
summary=()
fail=0
step() { # name, command...: runs, logs to $OUT/name.log, records the outcome
  local name=$1; shift
  local t0=$(date +%s%N)
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  summary+=("$(printf '%-40s rc=%-3d %8d ms' "$name" "$rc" "$ms")")
  [ $rc -eq 0 ] || [ $rc -eq 77 ] || fail=1
  tail -n 25 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"

has() { case ",$what," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
if has tests || has all; then
  for t in "$rt"/bin/test_cuda_*; do
    [ -x "$t" ] && step "$(basename "$t")" "$t"
  done
  # the observer and the kernel-expanded state through tune --local --backend cuda
  step gpu_methods_tune bash "$root/tests/gpu_methods_tune.sh" "$rt" "$OUT"
fi
if has sanitize; then
  # small cases only: the sanitizers slow kernels down 10-100x
  step sanitize-memcheck-wkv compute-sanitizer --error-exitcode 1 "$rt/bin/test_cuda_wkv" fp32
  step sanitize-racecheck-wkv compute-sanitizer --tool racecheck --error-exitcode 1 "$rt/bin/test_cuda_wkv" bf16
  step sanitize-memcheck-engine compute-sanitizer --error-exitcode 1 "$rt/bin/test_cuda_engine" fp32_matches_cpu
  step sanitize-racecheck-dbp compute-sanitizer --tool racecheck --error-exitcode 1 "$rt/bin/test_cuda_engine" dbp_matches_cpu
fi
if has verify || has all; then
  w=$rt/bin/statetune-worker
  for ref in "$rt"/fixtures/rwkv7/*.ref.safetensors; do
    m=${ref%.ref.safetensors}.safetensors
    for p in fp32 bf16; do
      step "verify-$(basename "${ref%.ref.safetensors}")-$p" "$w" verify "$m" "$ref" --backend cuda --precision "$p"
    done
  done
fi
if has perf || has bench || has all; then
  [ -x "$rt/bin/dev_wkv7_bench" ] && step dev_wkv7_bench "$rt/bin/dev_wkv7_bench"
  for shape in ${GPU_ENGINE_SHAPES:-12x768 24x1024 24x2048}; do
    for eb in dev_engine_bench dev_engine_bench_baseline; do
      [ -x "$rt/bin/$eb" ] && step "$eb-$shape" "$rt/bin/$eb" --layers "${shape%x*}" --embd "${shape#*x}" --steps 5
    done
  done
fi
if has bench || has all; then
  w=$rt/bin/statetune-worker
  # SPEC section 8: batch 8 x ctx 1024, vocab 65536, bf16 (the baseline's precision); fp32 once
  for shape in "12 768 bf16" "24 1024 bf16" "24 2048 bf16" "12 768 fp32"; do
    set -- $shape
    step "bench-${1}x${2}-$3" "$w" bench --layers "$1" --embd "$2" --vocab 65536 --batch 8 --ctx 1024 \
      --backend cuda --precision "$3" --steps 5
  done
fi
echo "==== summary ($(date -u +%H:%M:%S) UTC) ===="
printf '%s\n' "${summary[@]}"
printf '%s\n' "${summary[@]}" > "$OUT/summary.txt"
# the device tool brings back only a few files from $OUT: every log travels
# in one archive (tar -xzf logs.tgz), beside the summary and device.txt
( cd "$OUT" && ls ./*.log >/dev/null 2>&1 && tar -czf logs.tgz ./*.log && rm -f ./*.log )
exit $fail
