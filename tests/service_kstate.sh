#!/usr/bin/env bash
# service_kstate.sh - a kernel-expanded state through the whole service (SPEC
# sections 4 and 5): a coordinator, a 2-rank CPU worker group under mpirun and
# the statetune client, on an ipc:// endpoint in a fresh folder. A job with
# kernel_state.features 8 lands in the registry with its U0:
#   - `states show` says it is kernel-expanded, with M and gamma;
#   - `states get` to a standard format refuses with one sentence;
#   - `states get --format statetune` (from the file and over the endpoint)
#     gives S0 and the U0/support tensors byte-identical to the job folder's
#     state.safetensors and kstate.safetensors.
# The tiny fixture model, a few steps: seconds. Exit 77 (skipped) when the
# fixtures or mpirun are absent.
set -u
. "$(dirname "$0")/lib/common.sh"
st_paths
st_tiny_model
st_need_py
st_service_dir kstate
FAIL_WHAT=service_kstate
FAIL_TAIL=25

st_tabs_data 3 40 8
st_coordinator_up --db "$T/registry.db" --insecure --heartbeat-ms 400
st_start_group group.log 2 --coordinator-timeout 30
cat >"$T/ks.json" <<J
{"name": "ks", "model": "$MODEL", "train": "train.jsonl", "eval": "eval.jsonl",
 "ctx_len": 32, "micro_batch": 2, "global_batch": 4, "steps": 4, "checkpoint_every": 0, "eval_every": 0,
 "warmup_steps": 1, "seed": 7, "kernel_state": {"features": 8, "gamma": 2.0, "support": "random"}}
J
J=$("$ST" submit "$T/ks.json") || fail "submit failed"
"$ST" wait "$J" --timeout 120 || fail "the kernel-state job did not succeed"
JOBDIR=$T/registry.db.jobs/$J
[ -s "$JOBDIR/kstate.safetensors" ] || fail "the job folder has no kstate.safetensors"

"$ST" --db "$T/registry.db" states show ks >"$T/show.txt" 2>&1 || fail "states show failed"
grep -q "kernel-expanded (M=8, gamma 2): U0 and support vectors stored" "$T/show.txt" ||
    fail "states show does not say the state is kernel-expanded: $(grep kernel "$T/show.txt")"
"$ST" states show ks --json | json 'int(d["kernel_features"] == 8 and d["kernel_gamma"] == 2.0 and len(d["kstate_sha256"]) == 64 or exit(1))' ||
    fail "states show --json over the endpoint lacks the kernel-expanded part"

"$ST" --db "$T/registry.db" states get ks -o "$T/std.safetensors" >"$T/refuse.txt" 2>&1 &&
    fail "a standard export of a kernel-expanded state was accepted"
grep -q "cannot export 'ks@1': it has a kernel-expanded part (U0 with M=8).*use --format statetune" "$T/refuse.txt" ||
    fail "the refusal is not the expected sentence: $(cat "$T/refuse.txt")"
"$ST" states get ks -o "$T/std2.pth" >"$T/refuse2.txt" 2>&1 && fail "a standard export over the endpoint was accepted"
grep -q "kernel-expanded part" "$T/refuse2.txt" || fail "the endpoint's refusal is not the expected sentence: $(cat "$T/refuse2.txt")"

"$ST" --db "$T/registry.db" states get ks -o "$T/db.safetensors" --format statetune >/dev/null ||
    fail "states get --format statetune (--db) failed"
"$ST" states get ks -o "$T/ep.safetensors" --format statetune 2>/dev/null || fail "states get --format statetune over the endpoint failed"
"$PY" - "$T/db.safetensors" "$T/ep.safetensors" "$JOBDIR/state.safetensors" "$JOBDIR/kstate.safetensors" <<'P' ||
import json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}, h["__metadata__"]
db, mdb = load(sys.argv[1])
ep, mep = load(sys.argv[2])
job = dict(load(sys.argv[3])[0])
job.update(load(sys.argv[4])[0])
assert db == ep == job, (sorted(db), sorted(job))
assert mdb["kernel_features"] == "8" and float(mdb["gamma"]) == 2.0, mdb
assert any(x != 0 for x in db["blocks.1.att.kstate_u0"]), "U0 is all zeros: the job did not train it"
print("registry copy == job folder:", sorted(db))
P
    fail "the registry's statetune export differs from the job folder's state and U0"
echo "service_kstate: ok"
