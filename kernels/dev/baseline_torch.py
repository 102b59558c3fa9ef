#!/usr/bin/env python3
"""kernels/dev/baseline_torch.py - SPEC section 8's baseline, run beside our bench.

What a user runs today to state-tune RWKV-7: PyTorch eager with frozen bf16
weights, a trainable fp32 initial state per layer, and flash-linear-attention's
Triton `chunk_rwkv7` for the WKV7 recurrence (the RWKV-PEFT path). SPEC gives
that baseline's tokens/s as measured elsewhere; this script measures it on the
same card, in the same device call, as `statetune-worker bench`, so that the
ratios in docs/performance.md compare like with like.

flash-linear-attention is not part of this project: give its source tree with
--fla DIR (a checkout of fla-org/flash-linear-attention kept in an ignored
folder; it is pure Python + Triton, nothing is built). Without --fla the WKV
runs as a plain PyTorch recurrence (float64 capable), which is how
`--check FIXTURE` validates this model's math against the float64 fixtures of
shared/fixtures on a machine without a GPU: logits, loss and grad_state0 must
match the reference dump, so the timed model is a real RWKV-7 step.

Modes:
  --check MODEL.safetensors REF.safetensors   the math against a fixture (CPU)
  --step  --layers L --embd C (or --shapes LxC,...) [--vocab V --batch B --ctx T --steps S]
                                               a full tuning step: forward, CE,
                                               backward to every S0, Adam on S0
  --wkv   B,T,H [B,T,H ...]                   chunk_rwkv7 forward + backward
                                               with initial state and its grad
Prints one JSON line per measurement.
"""
import argparse
import json
import math
import struct
import sys
import time

import torch
import torch.nn.functional as F

N = 64  # head size


def lora_widths(C):
    """SPEC 2.1's bench widths (decay, a, v, gate)."""
    return (96, 96, 64, 256) if C >= 2048 else (64, 64, 32, 128)


def random_weights(L, C, V, dtype, device, seed=0):
    """Random weights of the official layout, scaled so activations stay sane."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    H = C // N
    dw, da, dv, dg = lora_widths(C)

    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    def const(shape, val):
        return torch.full(shape, val, dtype=dtype, device=device)

    w = {"emb.weight": rnd(V, C, scale=1e-2),
         "blocks.0.ln0.weight": const((C,), 1.0), "blocks.0.ln0.bias": const((C,), 0.0),
         "ln_out.weight": const((C,), 1.0), "ln_out.bias": const((C,), 0.0),
         "head.weight": rnd(V, C, scale=C ** -0.5)}
    for i in range(L):
        p = f"blocks.{i}."
        for n in ("ln1", "ln2"):
            w[p + n + ".weight"] = const((C,), 1.0)
            w[p + n + ".bias"] = const((C,), 0.0)
        for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            w[p + "att." + n] = rnd(1, 1, C, scale=0.3).abs()
        w[p + "att.w0"] = rnd(1, 1, C, scale=0.5)
        w[p + "att.w1"] = rnd(C, dw, scale=0.1)
        w[p + "att.w2"] = rnd(dw, C, scale=0.1)
        w[p + "att.a0"] = rnd(1, 1, C, scale=0.5)
        w[p + "att.a1"] = rnd(C, da, scale=0.1)
        w[p + "att.a2"] = rnd(da, C, scale=0.1)
        w[p + "att.v0"] = rnd(1, 1, C, scale=0.5)
        w[p + "att.v1"] = rnd(C, dv, scale=0.1)
        w[p + "att.v2"] = rnd(dv, C, scale=0.1)
        w[p + "att.g1"] = rnd(C, dg, scale=0.1)
        w[p + "att.g2"] = rnd(dg, C, scale=0.1)
        w[p + "att.k_k"] = const((1, 1, C), 0.85)
        w[p + "att.k_a"] = const((1, 1, C), 1.0)
        w[p + "att.r_k"] = rnd(H, N, scale=0.1)
        for n in ("receptance", "key", "value", "output"):
            w[p + "att." + n + ".weight"] = rnd(C, C, scale=C ** -0.5)
        w[p + "att.ln_x.weight"] = const((C,), 1.0)
        w[p + "att.ln_x.bias"] = const((C,), 0.0)
        w[p + "ffn.x_k"] = rnd(1, 1, C, scale=0.3).abs()
        w[p + "ffn.key.weight"] = rnd(4 * C, C, scale=C ** -0.5)
        w[p + "ffn.value.weight"] = rnd(C, 4 * C, scale=(4 * C) ** -0.5)
    return w


def wkv_torch(r, logw, k, v, a, b, s0):
    """The recurrence itself, token by token (reference; any dtype).
    Shapes (B,T,H,N); s0 (B or 1,H,N,N) in the official layout S[i_value][j_key].
    S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T, y_t = S_t r_t."""
    B, T, H, _ = r.shape
    r, logw, k, v, a, b = (t.to(s0.dtype) for t in (r, logw, k, v, a, b))
    S = s0.expand(B, H, N, N).clone()
    w = torch.exp(logw)
    ys = []
    for t in range(T):
        sa = torch.einsum("bhij,bhj->bhi", S, a[:, t])
        S = S * w[:, t, :, None, :] + sa[..., None] * b[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
        ys.append(torch.einsum("bhij,bhj->bhi", S, r[:, t]))
    return torch.stack(ys, 1), S


def wkv_fla(chunk_rwkv7, r, logw, k, v, a, b, s0):
    """fla's chunk_rwkv7: state layout [B, H, K, V], the transpose of ours."""
    B = r.shape[0]
    init = s0.expand(B, *s0.shape[1:]).transpose(-1, -2)
    y, sT = chunk_rwkv7(r, logw, k, v, a, b, scale=1.0, initial_state=init,
                        output_final_state=True, safe_gate=True, lower_bound=-0.6065306597126334)
    return y, sT.transpose(-1, -2)


def forward(w, L, C, tokens, state0, wkv):
    """The official RWKV-7 forward (RWKV-LM rwkv_v7_demo.py) with a trainable
    initial state per layer; returns logits and final states."""
    B, T = tokens.shape
    H = C // N
    x = F.embedding(tokens, w["emb.weight"])
    x = F.layer_norm(x, (C,), w["blocks.0.ln0.weight"], w["blocks.0.ln0.bias"], 1e-5)
    v_first = None
    finals = []
    for i in range(L):
        p = f"blocks.{i}."
        xa_ = F.layer_norm(x, (C,), w[p + "ln1.weight"], w[p + "ln1.bias"], 1e-5)
        xx = F.pad(xa_, (0, 0, 1, -1)) - xa_
        xr, xw, xk, xv, xa, xg = (xa_ + xx * w[p + "att." + n] for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
        r = xr @ w[p + "att.receptance.weight"].t()
        logw = -0.6065306597126334 * torch.sigmoid(w[p + "att.w0"] + torch.tanh(xw @ w[p + "att.w1"]) @ w[p + "att.w2"])
        k = xk @ w[p + "att.key.weight"].t()
        v = xv @ w[p + "att.value.weight"].t()
        if i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(w[p + "att.v0"] + (xv @ w[p + "att.v1"]) @ w[p + "att.v2"])
        a = torch.sigmoid(w[p + "att.a0"] + (xa @ w[p + "att.a1"]) @ w[p + "att.a2"])
        g = torch.sigmoid(xg @ w[p + "att.g1"]) @ w[p + "att.g2"]
        kk = F.normalize((k * w[p + "att.k_k"]).view(B, T, H, N), dim=-1, p=2.0, eps=1e-12).view(B, T, C)
        k = k * (1 + (a - 1) * w[p + "att.k_a"])
        hv = lambda t: t.view(B, T, H, N)
        # inputs in the activations' dtype (bf16 in the bench, as fla takes them), state fp32
        y, sT = wkv(*(hv(t) for t in (r, logw, k, v, -kk, kk * a)), state0[i:i + 1])
        finals.append(sT)
        y = y.to(x.dtype).reshape(B * T, C)
        y = F.group_norm(y, H, w[p + "att.ln_x.weight"], w[p + "att.ln_x.bias"], eps=64e-5).view(B, T, C)
        y = y + ((hv(r) * hv(k) * w[p + "att.r_k"]).sum(-1, keepdim=True) * hv(v)).view(B, T, C)
        x = x + (y * g) @ w[p + "att.output.weight"].t()
        xf = F.layer_norm(x, (C,), w[p + "ln2.weight"], w[p + "ln2.bias"], 1e-5)
        xx = F.pad(xf, (0, 0, 1, -1)) - xf
        kf = torch.relu((xf + xx * w[p + "ffn.x_k"]) @ w[p + "ffn.key.weight"].t()) ** 2
        x = x + kf @ w[p + "ffn.value.weight"].t()
    x = F.layer_norm(x, (C,), w["ln_out.weight"], w["ln_out.bias"], 1e-5)
    return x @ w["head.weight"].t(), torch.stack(finals, 1)


def read_safetensors(path, dtype):
    """Minimal reader (this is a dev script; the product uses model/tensorfile)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        blob = f.read()
    kinds = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
             "I64": torch.int64, "I32": torch.int32}
    out = {}
    for name, m in hdr.items():
        if name == "__metadata__":
            continue
        s, e = m["data_offsets"]
        t = torch.frombuffer(bytearray(blob[s:e]), dtype=kinds[m["dtype"]]).reshape(m["shape"])
        out[name] = t.to(dtype) if t.is_floating_point() else t
    return out


def check(model_path, ref_path):
    w = read_safetensors(model_path, torch.float64)
    ref = read_safetensors(ref_path, torch.float64)
    L = 1 + max(int(n.split(".")[1]) for n in w if n.startswith("blocks."))
    C = w["emb.weight"].shape[1]
    if "blocks.0.att.v0" not in w:  # layer 0 never uses them
        for n in ("v0", "v1", "v2"):
            w["blocks.0.att." + n] = w["blocks.1.att." + n]
    s0 = ref["state0"].clone().requires_grad_(True)
    logits, _ = forward(w, L, C, ref["tokens"], s0, wkv_torch)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ref["targets"].reshape(-1))
    loss.backward()
    rel = lambda a, b: float((a - b).norm() / b.norm())
    res = {"check": model_path, "logits_rel": rel(logits.detach(), ref["logits"]),
           "loss_abs": abs(float(loss) - float(ref["loss"])), "grad_state0_rel": rel(s0.grad, ref["grad_state0"])}
    res["pass"] = res["logits_rel"] < 1e-9 and res["loss_abs"] < 1e-9 and res["grad_state0_rel"] < 1e-8
    print(json.dumps(res))
    return 0 if res["pass"] else 1


def median_ms(fn, steps, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(steps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1))
    ts.sort()
    return ts[len(ts) // 2]


def step_bench(args, chunk_rwkv7):
    dev = "cuda"
    L, C, V, B, T = args.layers, args.embd, args.vocab, args.batch, args.ctx
    H = C // N
    w = random_weights(L, C, V, torch.bfloat16, dev)
    s0 = torch.zeros(L, H, N, N, device=dev, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([s0], lr=1e-2)
    g = torch.Generator(device="cpu").manual_seed(1)
    tokens = torch.randint(0, V, (B, T), generator=g).to(dev)
    targets = torch.randint(0, V, (B, T), generator=g).to(dev)
    wkv = lambda *t: wkv_fla(chunk_rwkv7, *t)

    def one():
        opt.zero_grad(set_to_none=True)
        logits, _ = forward(w, L, C, tokens, s0, wkv)
        loss = F.cross_entropy(logits.view(-1, V).float(), targets.view(-1))
        loss.backward()
        opt.step()

    ms = median_ms(one, args.steps)
    print(json.dumps({"baseline": "pytorch+fla", "torch": torch.__version__, "layers": L, "embd": C, "vocab": V,
                      "batch": B, "ctx": T, "step_ms": round(ms, 2), "tokens_per_s": round(B * T / ms * 1e3),
                      "peak_mem_bytes": torch.cuda.max_memory_allocated()}), flush=True)


def wkv_bench(shape, chunk_rwkv7, steps):
    B, T, H = shape
    dev = "cuda"
    g = torch.Generator(device="cpu").manual_seed(2)
    mk = lambda scale=1.0: (torch.randn(B, T, H, N, generator=g) * scale).to(dev)
    r, k, v = (mk().to(torch.bfloat16).requires_grad_(True) for _ in range(3))
    logw = (-0.6065306597126334 * torch.sigmoid(mk())).to(torch.bfloat16).requires_grad_(True)
    kk = F.normalize(mk(), dim=-1)
    aa = torch.sigmoid(mk())
    a = (-kk).to(torch.bfloat16).requires_grad_(True)
    b = (kk * aa).to(torch.bfloat16).requires_grad_(True)
    s0 = (torch.randn(B, H, N, N, generator=g) * 0.1).to(dev).requires_grad_(True)
    dy = mk().to(torch.bfloat16)
    fwd = lambda: wkv_fla(chunk_rwkv7, r, logw, k, v, a, b, s0)
    f_ms = median_ms(lambda: fwd(), steps)

    def both():
        y, _ = fwd()
        y.backward(dy)

    t_ms = median_ms(both, steps)
    print(json.dumps({"baseline": "fla chunk_rwkv7", "B": B, "T": T, "H": H, "fwd_ms": round(f_ms, 3),
                      "fwd_bwd_ms": round(t_ms, 3)}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", nargs=2, metavar=("MODEL", "REF"))
    ap.add_argument("--step", action="store_true")
    ap.add_argument("--wkv", nargs="*")
    ap.add_argument("--fla", help="flash-linear-attention source tree")
    ap.add_argument("--shapes", help="several LxC shapes for --step, e.g. 12x768,24x1024")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    if args.check:
        return check(*args.check)
    if not args.fla:
        print("baseline_torch.py: --step and --wkv need --fla DIR (flash-linear-attention's source)", file=sys.stderr)
        return 2
    # fla's own __init__ imports its model zoo (transformers); the kernels need
    # none of it, so register the package bare and import only fla.ops.rwkv7
    import importlib
    import types
    pkg = types.ModuleType("fla")
    pkg.__path__ = [args.fla.rstrip("/") + "/fla"]
    import re
    with open(pkg.__path__[0] + "/__init__.py") as f:  # fla.utils reads the package's version
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read())
    pkg.__version__ = m.group(1) if m else "0"
    sys.modules["fla"] = pkg
    chunk_rwkv7 = importlib.import_module("fla.ops.rwkv7").chunk_rwkv7
    if args.step:  # one process for every shape: Triton compiles and tunes once
        for shape in (args.shapes.split(",") if args.shapes else ["%dx%d" % (args.layers, args.embd)]):
            args.layers, args.embd = (int(x) for x in shape.split("x"))
            step_bench(args, chunk_rwkv7)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    for s in args.wkv or []:
        wkv_bench(tuple(int(x) for x in s.split(",")), chunk_rwkv7, 20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
