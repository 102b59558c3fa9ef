#!/bin/sh
# run_data_fuzz.sh - builds the fuzzers of the job input parsers (World
# vocabulary, job file, JSONL dataset and batcher) with clang's libFuzzer,
# ASan and UBSan, and runs each for SECONDS (default 60) from the seeds in
# tests/fuzz/seeds/data_*. Crashes are left as crash-* files in the work dir.
#   tests/fuzz/run_data_fuzz.sh [SECONDS] [WORKDIR]
set -eu
secs=${1:-60}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${2:-$(mktemp -d /tmp/statetune-fuzz-XXXXXX)}
mkdir -p "$work"
flags="-g -O1 -std=c11 -D_GNU_SOURCE -I$root -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
libs="$(pkg-config --libs libzip jansson libsodium) -lm"
srcs="$root/data/tokenizer.c $root/data/jobspec.c $root/data/dataset.c $root/data/batcher.c
      $root/model/tensorfile.c $root/model/safetensors.c $root/model/pth.c $root/model/pickle.c
      $root/model/ggmf.c $root/model/model.c $root/common/st_err.c $root/common/st_fs.c"
for t in vocab jobspec jsonl; do
    clang $flags -o "$work/fuzz_$t" "$here/fuzz_data_$t.c" $srcs $libs
    mkdir -p "$work/corpus_$t"
    cp "$here/seeds/data_$t/"* "$work/corpus_$t/"
    echo "fuzzing $t for ${secs}s in $work"
    (cd "$work" && "./fuzz_$t" -max_total_time="$secs" -max_len=8192 -rss_limit_mb=2048 \
        -print_final_stats=1 "corpus_$t")
done
