#!/usr/bin/env bash
# The external POSIX suites against a real `pfs mount`: a fresh `pfs up` cluster from
# config/local.toml (ports 76xx, data in a temporary directory), mounted by root, then
# pjdfstest (with the exclude file), fsx with each SEED, fio with crc32c verification and
# IOR and mdtest in IO500's four shapes with data checks, one after the other on the mount.
#
# Usage: tests/posix/run-on-mount.sh BIN FSX_OPS SEED...   (BIN holds pfs, pfs-meta, pfs-storage)
#   e.g. tests/posix/run-on-mount.sh target/release 20000 1 2
# Needs the suites (tests/posix/install.sh) and fusermount3. POSIX_SUITES picks some of
# them (default "pjdfstest fsx fio ior-mdtest"). Exits non-zero if any suite fails; the
# mount's log is printed then.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
[[ $# -ge 3 ]] || { sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2; }
B="$(cd "$1" && pwd)"; ops="$2"; shift 2
suites=" ${POSIX_SUITES:-pjdfstest fsx fio ior-mdtest} "
for s in $suites; do
    [[ " pjdfstest fsx fio ior-mdtest " == *" $s "* ]] || { echo "run-on-mount.sh: no suite $s in POSIX_SUITES" >&2; exit 2; }
done
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

D=$(mktemp -d /tmp/pfs-posix-XXXXXX)
chmod 755 "$D"  # the suites switch to users nobody and tests
M=$D/mnt; mkdir "$M" "$D/secondary"
sed "s#/tmp/pfs-local#$D#; s#127.0.0.1:74#127.0.0.1:76#" "$root/config/local.toml" >"$D/cfg.toml"
export PFS_CONFIG=$D/cfg.toml PFS_LOG=warn
cleanup() {
    "$B/pfs" umount "$M" 2>/dev/null || true
    "$B/pfs" down >/dev/null 2>&1 || true
    rm -rf "$D"
}
trap cleanup EXIT
timeout 60 "$B/pfs" up
"$B/pfs" mount "$M" >"$D/mount.log" 2>&1 &
for _ in $(seq 100); do grep -q " $M fuse" /proc/mounts && break; sleep 0.1; done
grep -q " $M fuse" /proc/mounts || { echo "run-on-mount.sh: the mount did not appear" >&2; cat "$D/mount.log" >&2; exit 1; }

status=0
if [[ $suites == *" pjdfstest "* ]]; then
    mkdir "$M/pjdfstest" && chmod 755 "$M/pjdfstest"
    PJDFSTEST_SECONDARY_FS=$D/secondary "$here/pjdfstest.sh" "$M/pjdfstest" || status=1
fi
if [[ $suites == *" fsx "* ]]; then
    mkdir "$M/fsx"
    FSX_ARTIFACTS=$D/fsx-artifacts "$here/fsx.sh" "$M/fsx" "$ops" "$@" || status=1
fi
if [[ $suites == *" fio "* ]]; then
    mkdir "$M/fio"
    "$here/fio-verify.sh" "$M/fio" || status=1
fi
if [[ $suites == *" ior-mdtest "* ]]; then
    mkdir "$M/ior-mdtest"
    "$here/ior-mdtest.sh" "$M/ior-mdtest" || status=1
fi
if [[ $status -ne 0 ]]; then
    echo "run-on-mount.sh: a suite failed; the mount's log:" >&2
    cat "$D/mount.log" >&2
fi
exit $status
