#!/usr/bin/env bash
# Installs the Debian 12 packages statetune builds and tests with, when missing.
# Needs root (or sudo) only when something is missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config git
      libopenmpi-dev openmpi-bin libzmq3-dev libsqlite3-dev sqlite3 libopenblas-dev
      libjansson-dev libzip-dev libsodium-dev
      python3 python3-numpy python3-torch iproute2 procps
      clang libclang-rt-14-dev)  # libFuzzer + sanitizers: tests/fuzz/run_all.sh
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
