#!/usr/bin/env bash
# backup.sh - an online backup of the registry, as docs/operations.md
# describes it: SQLite's backup API (a consistent snapshot while the
# coordinator keeps writing; the registry is in WAL mode, so a plain copy of
# the file could miss committed transactions), checked with PRAGMA
# integrity_check, renamed into place only when intact, and backups older
# than KEEP_DAYS removed. Prints the new backup's path.
#
#   backup.sh [DB [DIR [KEEP_DAYS]]]
#
# Defaults: STATETUNE_DB or /var/lib/statetune/registry.db,
# STATETUNE_BACKUP_DIR or /var/lib/statetune-backups, STATETUNE_BACKUP_KEEP_DAYS
# or 7. Run hourly by statetune-backup.timer; copy DIR off the machine too.
set -euo pipefail

db=${1:-${STATETUNE_DB:-/var/lib/statetune/registry.db}}
dir=${2:-${STATETUNE_BACKUP_DIR:-/var/lib/statetune-backups}}
keep=${3:-${STATETUNE_BACKUP_KEEP_DAYS:-7}}

die() { echo "backup.sh: $*" >&2; exit 1; }

[ -r "$db" ] || die "cannot read the registry '$db'"
[[ $keep =~ ^[0-9]+$ ]] || die "KEEP_DAYS must be a whole number of days, got '$keep'"
# The path goes inside a quoted sqlite3 dot-command.
[[ $dir != *"'"* ]] || die "the backup directory '$dir' contains a quote"
command -v sqlite3 >/dev/null || die "sqlite3 is not installed (Debian package sqlite3)"

umask 077 # a backup holds every job spec and state, like the registry itself
mkdir -p "$dir"
out=$dir/registry-$(date -u +%Y%m%dT%H%M%SZ).db
tmp=$out.partial
trap 'rm -f "$tmp"' EXIT
# .timeout waits out the moments SQLite itself holds the file (a WAL
# checkpoint) instead of failing with "database is locked".
sqlite3 -cmd ".timeout 10000" "$db" ".backup '$tmp'" || die "sqlite3 .backup of '$db' failed"
check=$(sqlite3 "$tmp" "PRAGMA integrity_check" 2>&1) || true
[ "$check" = ok ] || die "the backup of '$db' failed integrity_check: $check"
mv "$tmp" "$out"
find "$dir" -maxdepth 1 -name 'registry-*.db' -mtime +"$keep" -delete
echo "$out"
