#!/usr/bin/python3
"""make_demo_data.py - the model of scripts/demo.sh when no pretrained one is
at hand. (The demo's dataset comes from tests/make_tabs_data.py, the maker
the tuning tests use, so the demo reproduces what they measure.)

  make_demo_data.py random-model OUT.safetensors [--layers L] [--embd C] [--vocab V] [--seed S]
      A random RWKV-7 with the official tensor names and shapes (head size
      64, LoRA widths as `statetune-worker bench` picks them, bf16 like
      released checkpoints, no blocks.0.att.v0/v1/v2). Tuning it runs the
      whole pipeline, but a random model has little to steer: real gains
      need a pretrained model.

Needs only the Python standard library and numpy (python3-numpy, installed
by scripts/install-deps.sh). Output is deterministic for given arguments.
"""
import argparse
import json
import os
import struct
import sys

HEAD_SIZE = 64


def bf16_bytes(a):
    """float32 array -> bf16 bytes, rounded to nearest even."""
    import numpy as np
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype("<u2").tobytes()


def model_tensors(L, C, V, rng):
    """The official RWKV-7 names and shapes; LoRA widths as `statetune-worker
    bench` picks them (SPEC 2.1), values in the ranges of the official init."""
    import numpy as np
    H = C // HEAD_SIZE
    Dw, Da, Dv, Dg = (64, 64, 32, 128) if C <= 1024 else (96, 96, 64, 256)

    def u(shape, lo, hi):
        return rng.uniform(lo, hi, size=shape).astype(np.float32)

    def n(shape, std):
        return (rng.standard_normal(size=shape) * std).astype(np.float32)

    t = {"emb.weight": u((V, C), -1e-4, 1e-4)}
    for i in range(L):
        p = "blocks.%d." % i
        if i == 0:
            t[p + "ln0.weight"], t[p + "ln0.bias"] = np.ones(C, np.float32), np.zeros(C, np.float32)
        for ln in ("ln1", "ln2", "att.ln_x"):
            t[p + ln + ".weight"], t[p + ln + ".bias"] = np.ones(C, np.float32), np.zeros(C, np.float32)
        ratio = 1.0 - i / max(L, 1)
        for x in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            t[p + "att." + x] = u((1, 1, C), 0.0, ratio)
        t[p + "att.w0"] = u((1, 1, C), -7.0, -1.0)
        t[p + "att.w1"], t[p + "att.w2"] = np.zeros((C, Dw), np.float32), n((Dw, C), 0.1)
        t[p + "att.a0"] = np.zeros((1, 1, C), np.float32)
        t[p + "att.a1"], t[p + "att.a2"] = np.zeros((C, Da), np.float32), n((Da, C), 0.1)
        if i > 0:  # layer 0's v is v_first: released checkpoints omit its v0/v1/v2
            t[p + "att.v0"] = np.ones((1, 1, C), np.float32)
            t[p + "att.v1"], t[p + "att.v2"] = np.zeros((C, Dv), np.float32), n((Dv, C), 0.1)
        t[p + "att.g1"], t[p + "att.g2"] = np.zeros((C, Dg), np.float32), n((Dg, C), 0.1)
        t[p + "att.k_k"] = np.full((1, 1, C), 0.85, np.float32)
        t[p + "att.k_a"] = np.ones((1, 1, C), np.float32)
        t[p + "att.r_k"] = n((H, HEAD_SIZE), 0.1)
        for w in ("receptance", "key", "value", "output"):
            t[p + "att." + w + ".weight"] = n((C, C), C ** -0.5)
        t[p + "ffn.x_k"] = u((1, 1, C), 0.0, ratio)
        t[p + "ffn.key.weight"] = n((4 * C, C), C ** -0.5)
        t[p + "ffn.value.weight"] = n((C, 4 * C), (4 * C) ** -0.5)
    t["ln_out.weight"], t["ln_out.bias"] = np.ones(C, np.float32), np.zeros(C, np.float32)
    t["head.weight"] = n((V, C), C ** -0.5)
    return t


def make_model(args):
    import numpy as np
    if args.embd % HEAD_SIZE:
        sys.exit("make_demo_data.py: --embd must be a multiple of %d" % HEAD_SIZE)
    rng = np.random.default_rng(args.seed)
    tensors = model_tensors(args.layers, args.embd, args.vocab, rng)
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        b = bf16_bytes(tensors[name])
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt", "note": "random RWKV-7 made by scripts/make_demo_data.py"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, args.out)
    nparam = sum(v.size for v in tensors.values())
    print("wrote a random RWKV-7 (%d layers x %d, vocab %d, %.1fM parameters) to %s"
          % (args.layers, args.embd, args.vocab, nparam / 1e6, args.out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("random-model", help="a random RWKV-7 as safetensors")
    m.add_argument("out")
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--embd", type=int, default=128)
    m.add_argument("--vocab", type=int, default=256)
    m.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    make_model(args)


if __name__ == "__main__":
    main()
