#!/bin/bash
# tests/baseline_check.sh - the PyTorch baseline of docs/performance.md
# (kernels/dev/baseline_torch.py) computes the real RWKV-7 step: its model,
# with the WKV as a plain recurrence in float64, must reproduce the fixtures'
# logits, loss and grad_state0 to float64 rounding. The GPU timing then swaps
# in flash-linear-attention's kernel for that recurrence only.
set -uo pipefail
src=${STATETUNE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
fx=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$src/../shared/fixtures}}
py=/usr/bin/python3
if ! "$py" -c 'import torch' 2>/dev/null; then echo "skipped: no PyTorch at $py"; exit 77; fi
ran=0
for m in tiny small tiny-rwkv7-834K; do
  [ -f "$fx/rwkv7/$m.ref.safetensors" ] || continue
  "$py" "$src/kernels/dev/baseline_torch.py" --check "$fx/rwkv7/$m.safetensors" "$fx/rwkv7/$m.ref.safetensors" || exit 1
  ran=$((ran + 1))
done
[ "$ran" -gt 0 ] || { echo "skipped: no fixtures under $fx"; exit 77; }
