#!/usr/bin/env bash
# keys.sh - CURVE key management for a statetune deployment (SPEC section 6).
#
# Every deployment runs with CURVE on: the coordinator has a key pair, and it
# only talks to clients and worker groups whose public key sits in its
# allow-list directory. This script wraps `statetune keys gen` (which writes
# NAME.key, the secret, mode 0600, and NAME.pub) and keeps the layout below,
# so that the systemd units, launch-group.sh and the SLURM script all find the
# files where they expect them:
#
#   $ETC/keys/          0700  key pairs made on this host
#     coordinator.key   0600  the coordinator's secret key (never leaves this host)
#     coordinator.pub         the coordinator's public key: every client and worker needs it (--server-key)
#     NAME.key          0600  a client's or worker group's secret key: hand it to that party only
#     NAME.pub                its public key
#   $ETC/allow/         0755  public keys the coordinator accepts (--allow DIR); one NAME.pub per party
#
#   keys.sh init              make the directories and the coordinator's key pair
#   keys.sh add NAME          make a key pair for a client or worker group and allow it
#   keys.sh revoke NAME       take NAME's public key out of the allow-list
#   keys.sh rotate NAME       new pair for NAME; the old public key stays allowed until you revoke it
#   keys.sh list              the allowed public keys
#
# ETC is /etc/statetune unless STATETUNE_ETC says otherwise; the files are
# handed to STATETUNE_USER (default statetune) when that user exists, so the
# services can read them. The coordinator reads the allow-list at every
# CURVE handshake, so an added key works at once; a revoked key is refused
# from its next connection on, and a restart of the coordinator cuts the
# connections already open (docs/operations.md, key rotation).
set -euo pipefail

etc=${STATETUNE_ETC:-/etc/statetune}
statetune=${STATETUNE_BIN:-statetune}
owner=${STATETUNE_USER:-statetune}

die() { echo "keys.sh: $*" >&2; exit 1; }

usage() {
    sed -n '/^#   keys.sh/s/^#   //p' "$0"
    exit 2
}

# A name becomes a file name: keep it to what the registry accepts for names.
check_name() {
    [[ $1 =~ ^[A-Za-z0-9._-]{1,64}$ && $1 != .* ]] || die "'$1' is not a valid key name (letters, digits, '.', '_', '-'; not starting with '.')"
}

chown_if_user() {
    if id "$owner" >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
        chown "$owner:$owner" "$@"
    fi
}

gen_pair() { # gen_pair NAME: writes keys/NAME.key (0600) and keys/NAME.pub
    local name=$1
    [ -e "$etc/keys/$name.key" ] && die "'$etc/keys/$name.key' exists already; use 'rotate $name'"
    (umask 077 && "$statetune" keys gen "$etc/keys/$name" >/dev/null) || die "'statetune keys gen' failed for '$name'"
    if [ ! -s "$etc/keys/$name.key" ] || [ ! -s "$etc/keys/$name.pub" ]; then
        die "'statetune keys gen' did not write $name.key and $name.pub"
    fi
    chmod 0600 "$etc/keys/$name.key"
    chmod 0644 "$etc/keys/$name.pub"
    chown_if_user "$etc/keys/$name.key" "$etc/keys/$name.pub"
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
case $cmd in
init)
    install -d -m 0700 "$etc/keys"
    install -d -m 0755 "$etc/allow"
    chown_if_user "$etc/keys"
    if [ ! -e "$etc/keys/coordinator.key" ]; then
        gen_pair coordinator
    fi
    echo "coordinator public key: $etc/keys/coordinator.pub (give it to every client and worker group)"
    ;;
add)
    [ $# -eq 1 ] || usage
    check_name "$1"
    [ -d "$etc/allow" ] || die "run 'keys.sh init' first ('$etc/allow' is missing)"
    gen_pair "$1"
    install -m 0644 "$etc/keys/$1.pub" "$etc/allow/$1.pub"
    echo "allowed '$1'; give it $etc/keys/$1.key, $etc/keys/$1.pub and $etc/keys/coordinator.pub"
    ;;
revoke)
    [ $# -eq 1 ] || usage
    check_name "$1"
    [ -e "$etc/allow/$1.pub" ] || die "'$1' is not in the allow-list '$etc/allow'"
    rm -f "$etc/allow/$1.pub"
    echo "revoked '$1': refused from its next connection on; restart the coordinator to cut an open one"
    ;;
rotate)
    [ $# -eq 1 ] || usage
    check_name "$1"
    [ -e "$etc/keys/$1.key" ] || die "no key pair '$1' to rotate"
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    mv "$etc/keys/$1.key" "$etc/keys/$1.key.$stamp"
    mv "$etc/keys/$1.pub" "$etc/keys/$1.pub.$stamp"
    if [ -e "$etc/allow/$1.pub" ]; then mv "$etc/allow/$1.pub" "$etc/allow/$1.old-$stamp.pub"; fi
    gen_pair "$1"
    install -m 0644 "$etc/keys/$1.pub" "$etc/allow/$1.pub"
    echo "new key pair for '$1'; the old public key stays allowed as '$1.old-$stamp.pub' until 'keys.sh revoke $1.old-$stamp'"
    ;;
list)
    for f in "$etc/allow"/*.pub; do
        [ -e "$f" ] || continue
        printf '%-32s %s\n' "$(basename "$f" .pub)" "$(head -c 40 "$f")"
    done
    ;;
*)
    usage
    ;;
esac
