#!/bin/sh
# verify_errors.sh WORKER - what a user sees when verify is misused: usage
# errors exit 2, a dump that does not fit the model or a missing file exits 1
# with one sentence on stderr naming the problem, and no JSON on stdout.
w="$1"
dir="${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$STATETUNE_SOURCE_DIR/../shared/fixtures}}/rwkv7"
[ -f "$dir/tiny.safetensors" ] && [ -f "$dir/small.ref.safetensors" ] || { echo "skipped: fixtures not found"; exit 77; }
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail=0
expect() { # expect RC PATTERN ARGS... : exit status and a stderr line matching PATTERN
    rc_want=$1; pat=$2; shift 2
    "$w" verify "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?
    if [ "$rc" != "$rc_want" ] || ! grep -q "$pat" "$tmp/err" || [ -s "$tmp/out" ] || [ "$(wc -l <"$tmp/err")" -gt 2 ]; then
        echo "FAIL: verify $* -> rc $rc (want $rc_want), stderr:"; cat "$tmp/err"; fail=1
    else
        echo "ok: verify $* -> $rc: $(head -1 "$tmp/err")"
    fi
}
expect 2 "usage" 
expect 2 "must be cpu or cuda" "$dir/tiny.safetensors" "$dir/tiny.ref.safetensors" --backend gpu
expect 2 "four non-negative" "$dir/tiny.safetensors" "$dir/tiny.ref.safetensors" --tolerances 1,2
expect 1 "state0.*shape" "$dir/tiny.safetensors" "$dir/small.ref.safetensors"
expect 1 "no tensor 'tokens'" "$dir/tiny.safetensors" "$dir/tiny.safetensors"
expect 1 "nonexistent" "$dir/tiny.safetensors" "$tmp/nonexistent.safetensors"
expect 1 "fp32 only" "$dir/tiny.safetensors" "$dir/tiny.ref.safetensors" --backend cpu --precision bf16
exit $fail
