#!/usr/bin/python3
"""make_protocol_seeds.py - writes the seed conversations of fuzz_protocol.c
(the record format is described at the top of that file) into
tests/fuzz/seeds/protocol/. Run it again after changing the protocol; the
seeds are committed so the fuzzer starts from messages that reach every
handler: a job's whole life (submit, hello, job_request, progress, eval,
checkpoint, result with a state payload, then the client's queries of the
registered state), cancel and failure, and the malformed cases.

The coordinator checks a result's shape against the job's model: the seeds'
results are [1, 1, 64, 64], for the one-layer, one-head model run_all.sh
makes (scripts/make_demo_data.py random-model --layers 1 --embd 64)."""
import json
import os
import struct
import sys

D = "/tmp/statetune-fuzz-proto"
SEP = b"\xff\xff"
G1, G2, ANON, GHOST = 0, 1, 2, 3
PAYLOAD, EXTRA, TIME, EMPTYJSON, OVERSIZE = 4, 8, 16, 32, 64


def rec(ctl, msg, payload=None, payload_bit=PAYLOAD):
    """One record: the control byte, the message (JSON unless bytes), and
    the payload after \xfe\xfe with payload_bit set in the control byte."""
    body = msg if isinstance(msg, bytes) else json.dumps(msg, separators=(",", ":")).encode()
    if payload is not None:
        ctl |= payload_bit
        body += b"\xfe\xfe" + payload
    return bytes([ctl]) + body


def write_seeds(folder, seeds):
    """Each conversation as seeds/FOLDER/NAME.bin, its records joined by SEP."""
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", folder)
    os.makedirs(out, exist_ok=True)
    for name, recs in seeds.items():
        with open(os.path.join(out, name + ".bin"), "wb") as f:
            f.write(SEP.join(recs))
    return out


def m(type_, rid=None, **kw):
    d = {"v": 1, "type": type_}
    if rid is not None:
        d["rid"] = rid
    d.update(kw)
    return d


SPEC = {"name": "fz", "model": D + "/model.pth", "train": D + "/train.jsonl", "eval": D + "/train.jsonl",
        "steps": 2, "ctx_len": 32, "micro_batch": 1, "global_batch": 1, "backend": "cpu", "alias": "latest"}
STATE = struct.pack("<4096f", *[((i * 37) % 101) / 100.0 - 0.5 for i in range(4096)])  # [1, 1, 64, 64]
SHA = "ab" * 32
METRICS = {"eval_loss_before": 5.5, "eval_loss_after": 4.0, "train_loss_first": 5.6, "train_loss_last": 4.1,
           "steps": 2, "tokens_per_s": 1000.0}

seeds = {
    "ping": [rec(G2, m("ping", 1))],
    "client_queries": [rec(G2, m(t, i + 1, **kw)) for i, (t, kw) in enumerate([
        ("jobs", {}), ("status", {"job": 1}), ("cancel", {"job": 1}), ("events", {"job": 1, "since": 0}),
        ("watch", {"job": 1, "since": 0}), ("states_list", {}), ("states_show", {"ref": "fz@latest"}),
        ("states_get", {"ref": "fz@1"}), ("alias", {"name": "fz", "alias": "prod", "version": 1}),
        ("models_list", {}),
        ("models_register", {"name": "tiny", "path": D + "/model.pth", "sha256": SHA})])],
    "job_life": [
        rec(G2, m("submit", 1, spec=SPEC)),
        rec(G1, m("hello", 2, group="fuzz-g1", ranks=1, gpus=1, backend="cpu", job=None, heartbeat_ms=1000)),
        rec(G1, m("job_request", 3, group="fuzz-g1")),
        rec(G1, m("progress", group="fuzz-g1", job=1, step=1, steps=2, loss=5.0, tokens_per_s=900.0, eta_s=1.0,
                  lr=1.0)),
        rec(G1, m("eval", group="fuzz-g1", job=1, step=1, metrics={"eval_loss": 4.5})),
        rec(G1, m("checkpoint", group="fuzz-g1", job=1, step=1, path=D + "/ckpt")),
        rec(G1, m("heartbeat", group="fuzz-g1")),
        rec(G1, m("result", 4, group="fuzz-g1", job=1, metrics=METRICS, layers=1, heads=1, head_size=64,
                  model_sha256=SHA), STATE),
        rec(G1, m("result", 5, group="fuzz-g1", job=1, metrics=METRICS, layers=1, heads=1, head_size=64,
                  model_sha256=SHA), STATE),
        rec(G2, m("states_list", 6)),
        rec(G2, m("states_get", 7, ref="fz@latest")),
        rec(G2, m("states_show", 8, ref="fz")),
        rec(G2, m("alias", 9, name="fz", alias="prod", version=1)),
        rec(G2, m("events", 10, job=1, since=0)),
    ],
    "cancel_fail": [
        rec(G2, m("submit", 1, spec=SPEC)),
        rec(G2, m("submit", 2, spec=dict(SPEC, priority=5))),
        rec(G2, m("cancel", 3, job=1)),
        rec(G1, m("hello", 4, group="fuzz-g1", ranks=2, gpus=2, backend="cpu", job=None, heartbeat_ms=1000)),
        rec(G1, m("job_request", 5, group="fuzz-g1")),
        rec(G2, m("cancel", 6, job=2)),
        rec(G1, m("failed", 7, group="fuzz-g1", job=2, error="cancelled by the user", cancelled=True)),
        rec(G2, m("jobs", 8)),
    ],
    "group_lost": [
        rec(G2, m("submit", 1, spec=SPEC)),
        rec(G1, m("hello", 2, group="fuzz-g1", ranks=1, gpus=1, backend="cpu", job=None, heartbeat_ms=1000)),
        rec(G1, m("job_request", 3, group="fuzz-g1")),
        rec(G2 | TIME, m("status", 4, job=1)),
        rec(G1, m("heartbeat", group="fuzz-g1")),
        rec(G1, m("hello", 5, group="fuzz-g1", ranks=1, gpus=1, backend="cpu", job=1, heartbeat_ms=1000)),
        rec(G1, m("failed", 6, group="fuzz-g1", job=1, error="NaN in step 3")),
    ],
    "malformed": [
        rec(G2, b"not json"),
        rec(G2, b"[1,2,3]"),
        rec(G2, b'{"v":1,"type":"ping","rid":1,"rid":2}'),
        rec(G2, m("ping", 1, v=2)),
        rec(G2, m("ping")),
        rec(G2, {"v": 1, "rid": 3}),
        rec(G2 | EXTRA, m("ping", 4)),
        rec(G2 | EMPTYJSON, m("ping", 5)),
        rec(ANON, m("status", 6, job=-1)),
        rec(ANON, m("status", 7, job="1")),
        rec(GHOST, m("ping", 8)),
        rec(G1, m("job_request", 9, group="fuzz-g2")),
        rec(G1, m("result", 10, group="fuzz-g1", job=1, layers=2, heads=2, head_size=64), b"\x00" * 10),
        rec(G2, m("nosuchtype", 11)),
        rec(G2 | OVERSIZE, m("ping", 12)),
        rec(G1 | OVERSIZE, m("hello", 13, group="fuzz-g1", ranks=1, gpus=1, backend="cpu", job=None)),
    ],
}

out = write_seeds("protocol", seeds)
print("wrote %d seeds to %s" % (len(seeds), out), file=sys.stderr)

# ---- seeds of fuzz_protocol_client.c: replies a client may get -------------
CP, CX = 1, 2  # payload, extra frames


def reply(ctl, msg, payload=None):
    return rec(ctl, msg, payload, CP)


SMALL = struct.pack("<64f", *[i / 64.0 for i in range(64)])  # [1, 1, 8, 8]
ok_get = {"v": 1, "type": "ok", "rid": 1, "name": "fuzz", "version": 1, "layers": 1, "heads": 1, "head_size": 8,
          "dtype": "f32", "sha256": "ab" * 32}
client_seeds = {
    "state": [reply(0, ok_get, SMALL)],
    "stale_then_state": [reply(0, {"v": 1, "type": "heartbeat"}), reply(0, dict(ok_get, rid=7), SMALL),
                         reply(0, b"not json"), reply(CX, ok_get, SMALL)],
    "bad_shape": [reply(0, dict(ok_get, layers=0), SMALL), reply(0, dict(ok_get, head_size=4096), SMALL),
                  reply(0, ok_get, SMALL[:-4])],
    "errors": [reply(0, {"v": 1, "type": "error", "rid": 1, "code": "not_found", "error": "no state 'fuzz'"}),
               reply(0, {"v": 1, "type": "error", "rid": 1, "code": 17})],
}
out = write_seeds("protocol_client", client_seeds)
print("wrote %d client seeds to %s" % (len(client_seeds), out), file=sys.stderr)
