#!/usr/bin/env python3
"""store_torch.py - checks statetune's state files with real PyTorch.

1. The .pth that statetune writes from C opens with
   torch.load(path, weights_only=True) (the loader RWKV-Runner and careful
   users call) and holds blocks.{i}.att.time_state, float32 [H, 64, 64], with
   exactly the values we exported.
2. The .safetensors and the Ai00 .st hold the same values (the .st as fp16 with
   the last two dimensions transposed, as web-rwkv reads it).
3. A state saved by torch.save the way RWKV-PEFT saves one is imported by
   statetune's reader bit for bit.
Skips (exit 77) when /usr/bin/python3 has no torch.
Usage: store_torch.py BUILD_DIR
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

try:
    import torch
except ImportError:
    print("skipped: torch is not installed for this python")
    sys.exit(77)

build = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("STATETUNE_BUILD_DIR", "build")
exe = os.path.join(build, "tests", "test_store")
tmp = tempfile.mkdtemp(prefix="store_torch_")

out = subprocess.run([exe, "--write-exports", tmp], check=True, capture_output=True, text=True).stdout
L, H, N = map(int, out.split())
raw = open(os.path.join(tmp, "state.f32"), "rb").read()
want = torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(L, H, N, N)

# 1. .pth through torch's safe loader
sd = torch.load(os.path.join(tmp, "state.pth"), map_location="cpu", weights_only=True)
keys = [f"blocks.{i}.att.time_state" for i in range(L)]
assert list(sd.keys()) == keys, f"keys {list(sd.keys())}"
for i, k in enumerate(keys):
    t = sd[k]
    assert t.dtype == torch.float32, f"{k} dtype {t.dtype}"
    assert tuple(t.shape) == (H, N, N), f"{k} shape {tuple(t.shape)}"
    assert t.is_contiguous()
    assert torch.equal(t, want[i]), f"{k} values differ"
print(f"pth: torch.load(weights_only=True) gives {L} x float32 {[H, N, N]}, bit-exact")


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    hdr = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        dt = {"F32": torch.float32, "F16": torch.float16}[v["dtype"]]
        a, b = v["data_offsets"]
        out[k] = torch.frombuffer(bytearray(body[a:b]), dtype=dt).reshape(v["shape"])
    return hdr, out


# 2. safetensors (official layout) and .st (fp16, [H, key, value])
hdr, st = read_safetensors(os.path.join(tmp, "state.safetensors"))
assert sorted(st) == sorted(keys)
for i, k in enumerate(keys):
    assert hdr[k]["dtype"] == "F32" and torch.equal(st[k], want[i]), k
hdr, st = read_safetensors(os.path.join(tmp, "state.st"))
for i, k in enumerate(keys):
    assert hdr[k]["dtype"] == "F16", k
    assert torch.equal(st[k], want[i].half().transpose(-1, -2)), f"{k}: .st is not fp16 of the transpose"
print("safetensors: F32 bit-exact; st: F16 [H, key, value], equal to torch's .half() of the transpose")

# 3. a state written by torch.save as RWKV-PEFT does, imported by statetune
g = torch.Generator().manual_seed(7)
peft = {f"blocks.{i}.att.time_state": torch.randn(H, N, N, generator=g) for i in range(3)}
peft_path = os.path.join(tmp, "peft.pth")
torch.save(peft, peft_path)
raw_path = os.path.join(tmp, "peft.f32")
open(raw_path, "wb").write(torch.stack([peft[f"blocks.{i}.att.time_state"] for i in range(3)]).numpy().tobytes())
r = subprocess.run([exe, "--check-import", peft_path, raw_path, "3", str(H), str(N)], capture_output=True, text=True)
sys.stdout.write(r.stdout)
sys.stderr.write(r.stderr)
assert r.returncode == 0, "statetune could not import a torch.save'd state"
print("ok")
