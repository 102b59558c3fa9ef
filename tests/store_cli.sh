#!/bin/sh
# store_cli.sh - `statetune --db FILE states|models ...` as a user runs it:
# tables and --json documents, exports that read back bit for bit, the exit
# codes (0 ok, 1 failure, 2 usage) and one clear sentence for each error.
# Usage: store_cli.sh BUILD_DIR
set -u
B=${1:-${STATETUNE_BUILD_DIR:-build}}
ST="$B/client/statetune"
TS="$B/tests/test_store"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# expect CODE PATTERN CMD...: runs CMD, checks the exit code and that stdout+stderr match PATTERN
expect() {
    code=$1; pat=$2; shift 2
    "$@" >"$T/out" 2>&1
    got=$?
    [ "$got" -eq "$code" ] || fail "'$*' exited $got, expected $code: $(cat "$T/out")"
    grep -Eq -- "$pat" "$T/out" || fail "'$*' output does not match /$pat/: $(cat "$T/out")"
}

"$TS" --make-db "$T/r.db" || { echo "FAIL: could not build the test registry"; exit 1; }
DB="--db $T/r.db"

# list: aligned table and JSON
expect 0 '^NAME +VERSION +ALIASES' $ST $DB states list
[ "$(grep -c '^style ' "$T/out")" -eq 3 ] || fail "states list shows $(grep -c '^style ' "$T/out") versions of style, expected 3"
grep -Eq '^style +3 +latest ' "$T/out" || fail "style@3 is not shown with alias latest"
$ST $DB states list --json >"$T/list.json" || fail "states list --json failed"
$PY -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d)==6 and d[0]["shape"]==[2,2,64,64], d' "$T/list.json" \
    || fail "states list --json is not the expected JSON document"

# show: resolve forms, metrics beside baseline, history
expect 0 'state: +style@2 \(latest version 3\)' $ST $DB states show style@prod
grep -Eq 'eval_loss +1\.5000 +2\.5000 +-40\.0%' "$T/out" || fail "show does not put the metric beside its baseline"
grep -Eq 'prod +1 +2' "$T/out" || fail "show does not list the alias move prod 1 -> 2"
expect 0 'state: +style@3' $ST $DB states show style
expect 0 'state: +style@1' $ST $DB states show style@1
$ST $DB states show style@latest --json >"$T/show.json" || fail "show --json failed"
$PY -c '
import json,sys
d=json.load(open(sys.argv[1]))
assert d["version"]==3 and d["job"]["id"]==1 and d["model"]["name"]=="tiny", d
m={x["name"]:x for x in d["metrics"]}
assert m["eval_loss"]["baseline"]==2.5 and abs(m["eval_loss"]["value"]-1.25)<1e-12, m
assert len(d["alias_history"])==5
' "$T/show.json" || fail "show --json is not the expected document"

# get: every format, read back through the project's readers
expect 0 'wrote style@2' $ST $DB states get style@prod -o "$T/s.safetensors"
expect 0 'as pth' $ST $DB states get style@2 -o "$T/s.pth"
expect 0 'as st' $ST $DB states get style@2 -o "$T/s.bin" --format st
"$TS" --check-import "$T/s.safetensors" "$T/r.db.style2.f32" 2 2 64 >/dev/null || fail "exported safetensors does not read back bit-exact"
"$TS" --check-import "$T/s.pth" "$T/r.db.style2.f32" 2 2 64 >/dev/null || fail "exported pth does not read back bit-exact"
[ -s "$T/s.bin" ] || fail "--format st wrote nothing"
[ "$(stat -c %a "$T/r.db")" = 600 ] || fail "registry file mode is $(stat -c %a "$T/r.db"), expected 600"

# errors: one sentence, right exit code
expect 1 "no state named 'ghost'" $ST $DB states show ghost
expect 1 "has no version 9" $ST $DB states get style@9 -o "$T/x.pth"
expect 1 "has no alias 'beta'" $ST $DB states show style@beta
expect 1 'U0' $ST $DB states get kernel -o "$T/k.safetensors"
[ -e "$T/k.safetensors" ] && fail "a refused export left a file behind"
# a kernel-expanded state with its U0 stored: shown, refused by standard formats, carried by statetune's own
expect 0 'kernel-expanded \(M=16, gamma 2\): U0 and support vectors stored' $ST $DB states show kstate
expect 1 "cannot export 'kstate@1': it has a kernel-expanded part \(U0 with M=16\).*use --format statetune" \
    $ST $DB states get kstate -o "$T/ks.pth"
[ -e "$T/ks.pth" ] && fail "a refused export left a file behind"
expect 0 'wrote kstate@1.*as statetune' $ST $DB states get kstate -o "$T/ks.safetensors" --format statetune
$PY - "$T/ks.safetensors" <<'P' || fail "--format statetune did not write S0 and the kernel-expanded part"
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
h = json.loads(b[8:8 + struct.unpack('<Q', b[:8])[0]])
assert h['__metadata__']['format'] == 'statetune' and h['__metadata__']['kernel_features'] == '16', h['__metadata__']
assert h['blocks.1.att.kstate_u0']['shape'] == [2, 64, 16] and h['blocks.1.att.kstate_support']['shape'] == [2, 16, 64]
assert h['blocks.0.att.time_state']['shape'] == [2, 64, 64]
P
expect 1 'never stored its U0' $ST $DB states get kernel -o "$T/k0.safetensors" --format statetune
expect 2 'give -o FILE' $ST $DB states get style
expect 2 "unknown state format 'gguf'" $ST $DB states get style -o "$T/x" --format gguf
expect 2 'from its extension' $ST $DB states get style -o "$T/x.bin"
expect 2 'is not a statetune command' $ST $DB frobnicate
expect 2 "'states frob' is not a command" $ST $DB states frob
expect 2 'unknown option' $ST --bogus states list
expect 1 'does not exist' $ST --db "$T/none.db" states list
expect 1 'only the coordinator' $ST $DB states alias style@prod 3
expect 2 'not both' $ST --endpoint tcp://127.0.0.1:1 $DB states list
expect 2 'needs the coordinator' $ST $DB submit job.json
expect 0 '^usage: statetune' $ST states get --help
expect 0 'commands:' $ST --help
expect 0 '^NAME +SHA256 +LAYERS' $ST $DB models list
$ST $DB models list --json | $PY -c 'import json,sys; d=json.load(sys.stdin); assert d[0]["name"]=="tiny"' || fail "models list --json"

# a write error on stdout is a failure, not a silent exit 0
if [ -w /dev/full ]; then
    $ST $DB states list >/dev/full 2>"$T/err"
    [ $? -eq 1 ] || fail "writing to a full device exited 0"
fi

[ $fails -eq 0 ] && echo "store_cli: all checks passed"
[ $fails -eq 0 ]
