#!/usr/bin/env bash
# Data-integrity run with fio in DIR, normally a `pfs mount` mount point:
#   1. write: FIO_JOBS jobs each write a FIO_SIZE file sequentially in FIO_BS
#      blocks, every block carrying a crc32c checksum header (verify=crc32c),
#      fsync at the end (end_fsync=1), then read it all back and verify
#      (do_verify=1);
#   2. read: drop the page cache (as root; on a FUSE mount this makes the
#      reads go through the file system again), then verify every block once
#      more without writing (verify_only=1).
# A bad checksum, short read or I/O error stops fio (verify_fatal=1) and the
# script exits non-zero. Prints the write and read throughput of each phase.
#
# Usage: tests/posix/fio-verify.sh DIR
#
# Environment (defaults in brackets):
#   FIO_JOBS [4]  FIO_BS [1M]  FIO_SIZE [64M] per job
#   FIO_DIRECT [0]  1 for O_DIRECT I/O, bypassing the page cache
#   FIO_TIMEOUT [1800]  seconds before a phase is killed
# The files (DIR/pfsverify.N.0) are removed on success and kept on failure.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    sed -n '2,19s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
fi
dir="$1"
[[ -d "$dir" ]] || { echo "fio-verify.sh: $dir is not a directory" >&2; exit 2; }
command -v fio >/dev/null || { echo "fio-verify.sh: fio not installed (run tests/posix/install.sh)" >&2; exit 2; }
timeout_s="${FIO_TIMEOUT:-1800}"

# Both phases must describe the same jobs, so that verify_only reads back the
# files and blocks that the write phase wrote.
common=(
    --name=pfsverify --directory="$dir"
    --rw=write --bs="${FIO_BS:-1M}" --size="${FIO_SIZE:-64M}" --numjobs="${FIO_JOBS:-4}"
    --ioengine=psync --direct="${FIO_DIRECT:-0}" --fallocate=none
    --verify=crc32c --verify_fatal=1 --verify_state_save=0 --group_reporting
)
out="$(mktemp -t fio-verify.XXXXXX.log)"

# run PHASE ARGS...: runs fio, prints its throughput lines; fails on any error.
run() {
    local phase="$1" rc=0
    shift
    echo "== fio-verify.sh: $phase" >>"$out"
    timeout --kill-after=30 "$timeout_s" fio "${common[@]}" "$@" >"$out.phase" 2>&1 || rc=$?
    cat "$out.phase" >>"$out"
    if [[ $rc -ne 0 ]] || grep -qE 'verify failed|err= *[1-9]' "$out.phase"; then
        echo "fio-verify.sh: $phase: FAILED (fio exit $rc):"
        grep -E 'verify failed|Expected|Received|err=|fio:|error' "$out.phase" | head -n 20 | sed 's/^/    /'
        echo "fio-verify.sh: full output in $out; files kept in $dir"
        rm -f "$out.phase"
        echo "fio-verify: 0 passed, 1 failed"
        exit 1
    fi
    grep -E '^ *(READ|WRITE): bw=' "$out.phase" | sed -E "s/^ *(READ|WRITE): bw=([^ ]+) .*io=([^ ]+) .*run=([0-9]+)-.*/fio-verify.sh: $phase: \\1 \\2 (\\3 in \\4 ms)/"
    rm -f "$out.phase"
}

echo "fio-verify.sh: $(fio --version) in $dir: ${FIO_JOBS:-4} jobs x ${FIO_SIZE:-64M}, bs ${FIO_BS:-1M}, direct=${FIO_DIRECT:-0}, verify=crc32c"
run "write+verify" --do_verify=1 --end_fsync=1
sync
if [[ -w /proc/sys/vm/drop_caches ]]; then
    echo 3 >/proc/sys/vm/drop_caches
else
    echo "fio-verify.sh: warning: cannot drop caches (not root?), read phase may be served from the page cache"
fi
run "read+verify" --verify_only=1
rm -f "$dir"/pfsverify.*.0 "$out"
echo "fio-verify: 1 passed, 0 failed"
