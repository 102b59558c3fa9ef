#!/usr/bin/python3
"""make_safetensors_seeds.py - writes the seeds of fuzz_safetensors.c into
tests/fuzz/seeds/safetensors/: a complete RWKV-7 model of one layer (n_embd
64, one head, vocab 8, LoRA widths 4, ffn 64; BF16 zeros except the norms),
the smallest file whose every tensor statetune checks, and state files in
the RWKV-PEFT (.safetensors, F32 [H, N, N]) and Ai00 (.st, F16, transposed)
layouts. Written by hand (header length, JSON header, raw data) so that no
safetensors package is needed."""
import json
import os
import struct

C, V, D, F, H = 64, 8, 4, 64, 1


def write(path, tensors, meta=None):
    header, blobs, off = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def bf16(shape, value=0.0):
    n = 1
    for s in shape:
        n *= s
    one = struct.pack("<f", value)[2:]
    return ("BF16", shape, one * n)


model = {
    "emb.weight": bf16([V, C], 0.01), "head.weight": bf16([V, C], 0.01),
    "ln_out.weight": bf16([C], 1.0), "ln_out.bias": bf16([C]),
    "blocks.0.ln0.weight": bf16([C], 1.0), "blocks.0.ln0.bias": bf16([C]),
    "blocks.0.ln1.weight": bf16([C], 1.0), "blocks.0.ln1.bias": bf16([C]),
    "blocks.0.ln2.weight": bf16([C], 1.0), "blocks.0.ln2.bias": bf16([C]),
    "blocks.0.ffn.key.weight": bf16([F, C]), "blocks.0.ffn.value.weight": bf16([C, F]),
    "blocks.0.ffn.x_k": bf16([1, 1, C]),
    "blocks.0.att.r_k": bf16([H, 64]),
    "blocks.0.att.ln_x.weight": bf16([C], 1.0), "blocks.0.att.ln_x.bias": bf16([C]),
}
for w in ("receptance", "key", "value", "output"):
    model["blocks.0.att.%s.weight" % w] = bf16([C, C])
for x in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "k_k", "k_a", "a0", "w0", "v0"):
    model["blocks.0.att." + x] = bf16([1, 1, C])
for l in ("w", "a", "v", "g"):
    model["blocks.0.att.%s1" % l] = bf16([C, D])
    model["blocks.0.att.%s2" % l] = bf16([D, C])

N = 8
state = {}
st = {}
for i in range(2):
    vals = [((i * 64 + j) % 17) / 16.0 - 0.5 for j in range(H * N * N)]
    state["blocks.%d.att.time_state" % i] = ("F32", [H, N, N], struct.pack("<%df" % len(vals), *vals))
    st["blocks.%d.att.time_state" % i] = ("F16", [H, N, N], struct.pack("<%de" % len(vals), *vals))

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "safetensors")
os.makedirs(out, exist_ok=True)
write(os.path.join(out, "model.safetensors"), dict(sorted(model.items())), {"format": "pt"})
write(os.path.join(out, "state.safetensors"), state)
write(os.path.join(out, "state.st"), st)
