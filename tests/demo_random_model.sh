#!/usr/bin/env bash
# demo_random_model.sh - the random model scripts/demo.sh falls back on must be
# a well-formed RWKV-7 in the official layout: same tensor names, shapes and
# dtype as the random fixture model of the same size (tiny: 2 x 128, vocab
# 256), except what released checkpoints differ in (no blocks.0.att.v0/v1/v2,
# ln0 only in block 0), LoRA widths aside, and every value finite.
set -euo pipefail
src=${STATETUNE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
fx=${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$src/../shared/fixtures}}/rwkv7/tiny.safetensors
[ -r "$fx" ] || { echo "skipped: fixture $fx is absent"; exit 77; }
/usr/bin/python3 -c 'import numpy' 2>/dev/null || { echo "skipped: numpy is missing"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 "$src/scripts/make_demo_data.py" random-model "$tmp/r.safetensors" --layers 2 --embd 128 --vocab 256
/usr/bin/python3 "$src/scripts/make_demo_data.py" random-model "$tmp/r2.safetensors" --layers 2 --embd 128 --vocab 256
cmp -s "$tmp/r.safetensors" "$tmp/r2.safetensors" || { echo "FAIL: the random model is not deterministic"; exit 1; }
/usr/bin/python3 - "$tmp/r.safetensors" "$fx" <<'PY'
import json, struct, sys
import numpy as np

def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    h.pop("__metadata__", None)
    return h, data

got, data = load(sys.argv[1])
ref, _ = load(sys.argv[2])
def released(k):
    """Whether a released checkpoint has tensor k: ln0 lives in block 0 only,
    and block 0 has no v0/v1/v2 (its v is v_first)."""
    parts = k.split(".")
    if parts[0] == "blocks" and parts[2] == "ln0" and parts[1] != "0":
        return False
    return not (k.startswith("blocks.0.att.") and parts[-1] in ("v0", "v1", "v2"))

expected = {k: v for k, v in ref.items() if released(k)}
fails = []
if set(got) != set(expected):
    fails.append("names differ: missing %s, extra %s" % (sorted(set(expected) - set(got)), sorted(set(got) - set(expected))))
lora = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
end = 0
for k in sorted(set(got) & set(expected)):
    g, r = got[k], expected[k]
    if g["dtype"] != "BF16":
        fails.append("%s is %s, not BF16" % (k, g["dtype"]))
    if k.split(".")[-1] not in lora and g["shape"] != r["shape"]:
        fails.append("%s has shape %s, the fixture %s" % (k, g["shape"], r["shape"]))
    a, b = g["data_offsets"]
    end = max(end, b)
    raw = np.frombuffer(data[a:b], dtype="<u2").astype(np.uint32) << 16
    if not np.isfinite(raw.view(np.float32)).all():
        fails.append("%s has non-finite values" % k)
if end != len(data):
    fails.append("data section is %d bytes, offsets end at %d" % (len(data), end))
for f in fails:
    print("FAIL:", f)
if fails:
    sys.exit(1)
print("ok: %d tensors in the official layout" % len(got))
PY
