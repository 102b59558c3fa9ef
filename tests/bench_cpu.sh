#!/bin/sh
# bench_cpu.sh WORKER - `statetune-worker bench` on a small shape prints one
# JSON line with positive tokens_per_s, step_ms, tflops and peak_mem_bytes, and
# its tuning steps lower the loss; a bad shape is a usage error (exit 2).
w="$1"
out=$("$w" bench --layers 2 --embd 128 --vocab 64 --batch 2 --ctx 32 --steps 3) || { echo "bench failed"; exit 1; }
echo "$out"
printf '%s\n' "$out" | /usr/bin/python3 -c '
import json, sys
lines = sys.stdin.read().strip().split("\n")
assert len(lines) == 1, "bench printed %d lines" % len(lines)
d = json.loads(lines[0])
for k in ("tokens_per_s", "step_ms", "tflops", "peak_mem_bytes"):
    assert d[k] > 0, k
assert d["loss_last"] < d["loss_first"], "the Adam steps on S0 did not lower the loss"
' || exit 1
"$w" bench --layers 2 --embd 100 --vocab 64 --batch 2 --ctx 8 2>/dev/null
[ $? -eq 2 ] || { echo "an embedding size that is not a multiple of 64 must be a usage error"; exit 1; }
exit 0
