#!/usr/bin/env bash
# fault_nan.sh - NaN or inf in a step fails the job with a clear error and
# registers nothing (SPEC section 9, issue #10), through the whole service: a
# coordinator, one CPU worker group, the statetune client.
#
#   lr      a job with lr_init 1e38: Adam's first step puts ~1e38 into the
#           state, the forward pass overflows; the job must end `failed` with
#           an error naming NaN/inf, no state and no alias registered, and
#           the group must serve the next (sane) job
#   huge    a job with lr_init 1e30: the state reaches ~2e30, finite in fp32
#           (GroupNorm hides the scale, so the loss even drops); either the
#           job fails, or every export of its state is finite: a .st (F16,
#           max 65504) full of inf must be refused, never written
#   weight  a model file with one NaN weight (a copy of the tiny fixture,
#           safetensors, one BF16 element set to NaN): refused at submit or
#           failed on the worker, either way with a sentence naming NaN/inf
#           and the tensor, and nothing registered
#
#   fault_nan.sh lr|weight|huge
set -u
scenario=${1:?usage: fault_nan.sh lr|weight|huge}
. "$(dirname "$0")/lib/common.sh"
st_paths
st_tiny_model
st_need_py

st_service_dir nan
FAIL_WHAT=$scenario
st_words_data 9 24 alpha beta gamma delta epsilon zeta eta theta

st_coordinator_up --db "$T/registry.db" --insecure --heartbeat-ms 300
st_start_group group.log 1

job() { # NAME MODEL LR
    cat >"$T/$1.json" <<EOF
{"name": "$1", "model": "$2", "train": "train.jsonl", "eval_fraction": 0.25, "ctx_len": 32,
 "micro_batch": 2, "global_batch": 2, "steps": 6, "lr_init": $3, "lr_final": 0.01, "warmup_steps": 0,
 "checkpoint_every": 0, "eval_every": 0, "alias": "latest"}
EOF
}

nothing_registered() {
    n=$("$ST" states list --json | json 'len(d)') || fail "states list failed"
    [ "$n" = 0 ] || fail "$n state(s) registered after a NaN: $("$ST" states list)"
    [ -z "$(ls "$T"/registry.db.jobs/*/state.* 2>/dev/null)" ] || echo "note: the worker left a state file in the job folder (not registered)"
}

case $scenario in
lr)
    job boom "$MODEL" 1e38
    J=$("$ST" submit "$T/boom.json" 2>"$T/submit.err") || fail "submit of an lr 1e38 job was refused: $(cat "$T/submit.err")"
    "$ST" wait "$J" --timeout 120 >/dev/null 2>&1 && fail "the lr 1e38 job succeeded"
    "$ST" status "$J" --json >"$T/status.json" || fail "status failed"
    st=$(json 'd["status"]' <"$T/status.json")
    [ "$st" = failed ] || fail "the lr 1e38 job ended '$st', not failed"
    e=$(json 'd.get("error") or ""' <"$T/status.json")
    echo "job $J failed: $e"
    echo "$e" | grep -qiE "nan|inf|non-finite|not finite" || fail "the error does not say NaN/inf: '$e'"
    nothing_registered
    # the group survived and serves the next job
    job sane "$MODEL" 1.0
    J2=$("$ST" submit "$T/sane.json") || fail "submit failed"
    "$ST" wait "$J2" --timeout 120 >/dev/null || fail "the group did not serve a sane job after the NaN one"
    n=$("$ST" states list --json | json 'len(d)')
    [ "$n" = 1 ] || fail "expected exactly the sane job's state, found $n"
    ;;
weight)
    "$PY" - "$FIX/rwkv7/tiny.safetensors" "$T/nan.safetensors" <<'EOF' || fail "could not write the NaN model"
import json, struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
t = h["blocks.1.att.key.weight"]
assert t["dtype"] == "BF16"
off = 8 + n + t["data_offsets"][0] + 2 * 777
b[off:off + 2] = struct.pack("<H", 0x7fc0)   # BF16 quiet NaN
open(sys.argv[2], "wb").write(b)
EOF
    job poisoned "$T/nan.safetensors" 1.0
    if J=$("$ST" submit "$T/poisoned.json" 2>"$T/submit.err"); then
        "$ST" wait "$J" --timeout 120 >/dev/null 2>&1 && fail "a job on a model with a NaN weight succeeded"
        e=$("$ST" status "$J" --json | json 'd.get("error") or ""')
        echo "job $J failed on the worker: $e"
    else
        e=$(cat "$T/submit.err")
        echo "refused at submit: $e"
    fi
    echo "$e" | grep -qiE "nan|inf" || fail "the error does not say NaN/inf: '$e'"
    echo "$e" | grep -q "blocks.1.att.key.weight" || echo "note: the error does not name the tensor"
    nothing_registered
    ;;
huge)
    job big "$MODEL" 1e30
    J=$("$ST" submit "$T/big.json") || fail "submit failed"
    if "$ST" wait "$J" --timeout 120 >/dev/null 2>&1; then
        for fmt in st safetensors pth; do
            if "$ST" states get big@1 -o "$T/big.$fmt" 2>"$T/get.err"; then
                "$PY" - "$T/big.$fmt" <<'EOF' || fail "states get wrote a .$fmt export with non-finite values (a ~1e30 state)"
import json, math, struct, sys, zipfile
p = sys.argv[1]
if p.endswith(".pth"):
    z = zipfile.ZipFile(p)
    raws = [(z.read(n), "f") for n in z.namelist() if "/data/" in n]
else:
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    raws = [(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], "e" if v["dtype"] == "F16" else "f")
            for k, v in h.items() if k != "__metadata__"]
for raw, t in raws:
    sz = 2 if t == "e" else 4
    x = struct.unpack("<%d%s" % (len(raw) // sz, t), raw)
    bad = sum(1 for v in x if not math.isfinite(v))
    assert bad == 0, "%d of %d values are not finite" % (bad, len(x))
EOF
                echo "export .$fmt: finite"
            else
                echo "export .$fmt refused: $(cat "$T/get.err")"
            fi
        done
    else
        echo "job $J failed: $("$ST" status "$J" --json | json 'd.get("error")')"
        nothing_registered
    fi
    ;;
*) echo "unknown scenario '$scenario'"; exit 2 ;;
esac
echo "ok: fault_nan $scenario"
