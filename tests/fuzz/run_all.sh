#!/bin/sh
# run_all.sh - builds every libFuzzer harness of SPEC section 9 (eight) with clang,
# ASan and UBSan in its own work folder (never the CMake build) and runs each
# for SECONDS (default 60) from its committed seeds:
#
#   tensorfile  .pth zip + pickle, safetensors and rwkv.cpp .bin containers
#   pickle      the safe pickle subset alone
#   safetensors model config + whole model load, state import (.safetensors, .st)
#   vocab       the World vocabulary file
#   jobspec     the job file
#   jsonl       JSONL datasets and the batcher
#   protocol    the coordinator's message handling (broker.c in-process)
#   protocol_client  the client library's handling of the coordinator's replies
#
#   tests/fuzz/run_all.sh [SECONDS] [WORKDIR]
#   FUZZ_ONLY="vocab jobspec jsonl" tests/fuzz/run_all.sh 60    (the data parsers)
#   FUZZ_ONLY="tensorfile pickle" tests/fuzz/run_all.sh 60      (the model files)
#
# Environment: FUZZ_JOBS (harnesses run at once, default 1), FUZZ_ONLY (a
# space-separated subset of the names above), FUZZ_NICE (nice level, default
# 10), STATETUNE_FIXTURES (fallback model of the protocol harness when
# numpy is missing to make its one-layer model).
#
# Prints one summary line per harness (runs, coverage, corpus, result). A
# crash, leak, timeout or sanitizer report leaves its input as
# WORKDIR/<name>-crash-* and makes the script exit 1. Exit 77 (skipped) when
# clang has no libFuzzer here.
set -eu
secs=${1:-60}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${2:-$(mktemp -d /tmp/statetune-fuzz-XXXXXX)}
jobs=${FUZZ_JOBS:-1}
only=${FUZZ_ONLY:-"tensorfile pickle safetensors vocab jobspec jsonl protocol protocol_client"}
nicelvl=${FUZZ_NICE:-10}
fixtures=${STATETUNE_FIXTURES:-$root/../shared/fixtures}
mkdir -p "$work/obj"
cd "$work"

cc=$(command -v clang || command -v clang-14 || true)
if [ -z "$cc" ]; then
    echo "skipped: clang is not installed (scripts/install-deps.sh installs it)"
    exit 77
fi
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }' > probe.c
if ! "$cc" -fsanitize=fuzzer,address,undefined -o probe probe.c 2>/dev/null; then
    echo "skipped: $cc cannot link -fsanitize=fuzzer (install libclang-rt-14-dev)"
    exit 77
fi

# The library sources are compiled once (instrumented, no fuzzer main), then
# each harness links what it needs from them.
cflags="-g -O1 -std=c11 -D_GNU_SOURCE -I$root -fno-sanitize-recover=undefined"
libs="$(pkg-config --libs libzmq jansson sqlite3 libzip libsodium) -lm -lpthread"
objs=""
for src in "$root"/common/*.c "$root"/model/*.c "$root"/data/*.c "$root"/store/*.c \
           "$root"/coordinator/sched.c "$root"/client/statetune_client.c; do
    o="obj/$(basename "$(dirname "$src")")_$(basename "$src" .c).o"
    objs="$objs $o"
    echo "$cc $cflags -fsanitize=fuzzer-no-link,address,undefined -c -o $o $src"
done > compile.cmds
echo "building the harnesses in $work"
# two compilers at once at most: the machine is shared
xargs -P 2 -I CMD sh -c CMD < compile.cmds
for t in $only; do
    case $t in
        tensorfile|pickle) src=$here/fuzz_model_$t.c ;;
        vocab|jobspec|jsonl) src=$here/fuzz_data_$t.c ;;
        safetensors|protocol|protocol_client) src=$here/fuzz_$t.c ;;
        *) echo "unknown harness '$t'" >&2; exit 2 ;;
    esac
    "$cc" $cflags -fsanitize=fuzzer,address,undefined -o "fuzz_$t" "$src" $objs $libs
done

# The protocol seeds' results are [1, 1, 64, 64]: the coordinator checks a
# result against the job's model, so their jobs name a one-layer, one-head
# random model (tiny.pth as a fallback reaches less: its results are refused).
protomodel="$fixtures/rwkv7/tiny.pth"
case " $only " in *" protocol "*)
    if /usr/bin/python3 "$root/scripts/make_demo_data.py" random-model "$work/proto-model.safetensors" \
        --layers 1 --embd 64 --vocab 256 >/dev/null 2>&1; then
        protomodel="$work/proto-model.safetensors"
    else
        echo "note: no numpy for the protocol harness's model; using $protomodel"
    fi ;;
esac

seeds_of() {
    case $1 in
        tensorfile|pickle) echo "$here/seeds/model_$1" ;;
        vocab|jobspec|jsonl) echo "$here/seeds/data_$1" ;;
        *) echo "$here/seeds/$1" ;;
    esac
}

run_one() {
    t=$1
    mkdir -p "corpus_$t"
    cp "$(seeds_of "$t")"/* "corpus_$t/"
    maxlen=8192
    case $t in tensorfile|safetensors|protocol|protocol_client) maxlen=65536 ;; esac
    STATETUNE_FUZZ_MODEL="$protomodel" \
    nice -n "$nicelvl" "./fuzz_$t" -max_total_time="$secs" -max_len=$maxlen -timeout=20 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$work/$t-" "corpus_$t" > "$t.log" 2>&1
    echo $? > "$t.rc"
}

# a simple pool of FUZZ_JOBS at a time
set +e
running=0
for t in $only; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait
        running=0
    fi
done
wait
set -e

status=0
printf '%-12s %10s %8s %8s %8s  %s\n' harness runs cov ft corpus result
for t in $only; do
    rc=$(cat "$t.rc" 2>/dev/null || echo 1)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$t.log" | tail -1)
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$t.log" | tail -1)
    cov=$(echo "$done_line" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$done_line" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(echo "$done_line" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
    if [ "$rc" = 0 ]; then
        res=clean
    else
        res="FAILED (rc $rc, see $work/$t.log and $work/$t-*)"
        status=1
    fi
    printf '%-12s %10s %8s %8s %8s  %s\n' "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$res"
done
exit $status
