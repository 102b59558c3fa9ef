#!/usr/bin/env bash
# fault_disk.sh - a full disk under the registry (SPEC section 9, issue #10):
# the coordinator's registry and job folders live on a small tmpfs, which is
# filled up while the service runs. Then:
#   - the coordinator stays up and keeps answering (reads: jobs, states list,
#     states get of a state registered before the disk filled);
#   - whatever cannot be written fails with a clear sentence (submit refused
#     or the job failed, naming the disk/space/full condition), never a
#     crash, never a half-written state;
#   - a job running when the disk fills ends once space is back (succeeded,
#     or failed with a sentence naming the condition; nothing registered
#     when it failed);
#   - once space is freed, new jobs succeed, and the registry passes
#     PRAGMA integrity_check with exactly the states that were registered.
# Needs root to mount the tmpfs: exit 77 (skipped) with the reason when the
# mount fails (no root, or a container without CAP_SYS_ADMIN).
#
#   fault_disk.sh
set -u
. "$(dirname "$0")/lib/common.sh"
st_paths
st_tiny_model
st_need_py
st_need_cmd sqlite3 "the sqlite3 shell is not installed"

st_service_dir disk
D=$T/disk
mkdir -p "$D"
if ! mount -t tmpfs -o size=3m tmpfs "$D" 2>"$T/mount.err"; then
    echo "skipped: cannot mount a 3 MB tmpfs for the full-disk test ($(cat "$T/mount.err")); needs root"
    exit 77   # st_cleanup removes T
fi
# st_cleanup_hook: called by st_cleanup after the processes are gone
st_cleanup_hook() { umount "$D" 2>/dev/null; }

st_words_data 11 24 one two three four five six seven eight nine ten
job() { # NAME
    cat >"$T/$1.json" <<EOF
{"name": "$1", "model": "$MODEL", "train": "train.jsonl", "eval_fraction": 0.25, "ctx_len": 32,
 "micro_batch": 2, "global_batch": 2, "steps": 8, "checkpoint_every": 2, "eval_every": 0, "alias": "latest"}
EOF
}

st_coordinator_up --db "$D/registry.db" --jobs-dir "$D/jobs" --insecure --heartbeat-ms 300
st_start_group group.log 1

# before: one state on a disk with room
job before
J=$("$ST" submit "$T/before.json") || fail "submit failed with room on the disk"
"$ST" wait "$J" --timeout 120 >/dev/null || fail "job $J failed with room on the disk"

# fill the disk to the last byte
dd if=/dev/zero of="$D/filler" bs=4k 2>/dev/null
echo "disk full: $(df -k "$D" | awk 'NR==2 {print $3 " KB used, " $4 " KB free"}')"

job during
full_ok=0
if J2=$("$ST" submit "$T/during.json" --timeout-ms 5000 2>"$T/submit.err"); then
    echo "submit accepted on a full disk (job $J2); waiting for its end"
    if "$ST" wait "$J2" --timeout 120 >/dev/null 2>"$T/wait.err"; then
        echo "note: job $J2 succeeded on a full disk (SQLite had room in its WAL)"
        full_ok=1
    else
        e=$("$ST" status "$J2" --json 2>/dev/null | json 'd.get("error") or d["status"]')
        echo "job $J2 did not succeed: $e"
        echo "$e" | grep -qiE "full|space|disk|write|I/O|ENOSPC" || fail "job $J2's error does not say the disk is full: '$e'"
    fi
else
    e=$(cat "$T/submit.err")
    echo "submit refused: $e"
    echo "$e" | grep -qiE "full|space|disk|write|I/O" || fail "the submit error does not say the disk is full: '$e'"
fi
kill -0 "$COORD" 2>/dev/null || fail "the coordinator died on a full disk"
"$ST" jobs --timeout-ms 5000 >/dev/null 2>"$T/jobs.err" || fail "jobs failed on a full disk: $(cat "$T/jobs.err")"
"$ST" states list --timeout-ms 5000 >/dev/null 2>"$T/list.err" || fail "states list failed on a full disk: $(cat "$T/list.err")"
"$ST" states get before@latest -o "$T/before.safetensors" 2>"$T/get.err" ||
    fail "states get of an old state failed on a full disk: $(cat "$T/get.err")"

# room again: the service carries on
rm -f "$D/filler"
job after
J3=$("$ST" submit "$T/after.json") || fail "submit failed after space was freed"
"$ST" wait "$J3" --timeout 120 >/dev/null || fail "job $J3 failed after space was freed: $("$ST" status "$J3" 2>&1)"

# the disk fills while a job runs (its checkpoints and the registry's writes):
# the job ends, succeeded or failed with a clear sentence, and the service lives
job mid
sed -i 's/"steps": 8, "checkpoint_every": 2/"steps": 400, "checkpoint_every": 2/' "$T/mid.json"
J4=$("$ST" submit "$T/mid.json") || fail "submit failed"
for _ in $(seq 300); do
    "$ST" status "$J4" --json 2>/dev/null | json 'int(d["status"] == "running" and (d.get("step") or 0) >= 4 or exit(1))' \
        >/dev/null 2>&1 && break
    sleep 0.2
done
dd if=/dev/zero of="$D/filler" bs=4k 2>/dev/null
echo "disk full again while job $J4 runs"
# while the disk is full, the job cannot record its end (its checkpoint write
# fails, and so does the registry write of its failure); give it 20 s, check
# the service still answers, then free the space: the job must then end
"$ST" wait "$J4" --timeout 20 >/dev/null 2>&1
st_full=$("$ST" status "$J4" --json --timeout-ms 5000 | json 'd["status"]') || fail "status of job $J4 failed on a full disk"
echo "job $J4 after 20 s on a full disk: $st_full"
kill -0 "$COORD" 2>/dev/null || fail "the coordinator died when the disk filled mid-job"
"$ST" jobs --timeout-ms 5000 >/dev/null 2>&1 || fail "jobs failed while the disk is full"
rm -f "$D/filler"
"$ST" wait "$J4" --timeout 120 >/dev/null 2>&1
st4=$("$ST" status "$J4" --json --timeout-ms 5000 | json 'd["status"]') || fail "status of job $J4 failed"
e4=$("$ST" status "$J4" --json --timeout-ms 5000 | json 'd.get("error") or ""')
echo "job $J4 once space was freed: $st4 $e4"
case $st4 in
    succeeded) ;;
    failed) echo "$e4" | grep -qiE "full|space|disk|write|I/O" || fail "job $J4's error does not say the disk was full: '$e4'" ;;
    *) fail "job $J4 is still '$st4' 120 s after space was freed: a job whose failure could not be recorded is never resolved" ;;
esac
"$ST" states list --json >"$T/states.json" || fail "states list failed"
names=$(json '" ".join(sorted(s["name"] + "@" + str(s["version"]) for s in d))' <"$T/states.json")
echo "registered: $names"
case " $names " in *" before@1 "*) ;; *) fail "state before@1 is missing" ;; esac
case " $names " in *" after@1 "*) ;; *) fail "state after@1 is missing" ;; esac
if [ "$st4" = failed ]; then
    case " $names " in *" mid@"*) fail "job $J4 failed yet a mid state is registered" ;; esac
fi
for s in $names; do
    "$ST" states get "$s" -o "$T/check.safetensors" 2>>"$T/get.err" || fail "state $s does not read back: $(tail -1 "$T/get.err")"
done
st_registry_ok "$D/registry.db" " after the full disk"
echo "ok: fault_disk"
