#!/usr/bin/env bash
# The one test command (README): installs the Debian packages that are missing,
# builds with warnings as errors and runs the whole CPU suite with CTest.
# GPU tests carry the ctest label `gpu` and run on a GPU machine with
# `ctest -L gpu`; they are excluded here, as CI has no GPU.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${STATETUNE_BUILD:-$here/build}
"$here/scripts/install-deps.sh"
cmake -S "$here" -B "$build" -DSTATETUNE_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$(nproc)"
cd "$build"
ctest --output-on-failure --timeout 600 -j "$(nproc)" -LE 'gpu|slow' "$@"
