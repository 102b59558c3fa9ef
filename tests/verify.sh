#!/bin/sh
# verify.sh WORKER MODEL REF [verify options...] - runs `statetune-worker verify`
# on a model and reference dump of the fixtures folder (STATETUNE_FIXTURES, else
# ../shared/fixtures beside the source tree). Exits 77 (CTest's skip) when the
# fixtures are absent, else with verify's own status: 0 only when it passes.
worker="$1"; model="$2"; ref="$3"
shift 3
dir="${STATETUNE_FIXTURES:-${STATETUNE_FIXTURES_DEFAULT:-$STATETUNE_SOURCE_DIR/../shared/fixtures}}"
if [ ! -f "$dir/$model" ] || [ ! -f "$dir/$ref" ]; then
    echo "skipped: fixture '$dir/$model' or '$dir/$ref' not found (set STATETUNE_FIXTURES)"
    exit 77
fi
exec "$worker" verify "$dir/$model" "$dir/$ref" "$@"
