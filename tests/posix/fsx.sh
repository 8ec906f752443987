#!/usr/bin/env bash
# Runs fsx (File System eXerciser, crate fsx, see install.sh) once per SEED on
# a file in DIR, normally a `pfs mount` mount point: OPS pseudorandom
# reads/writes/mmap reads and writes/truncates, checking every read against
# an in-memory copy. A seed replays exactly the same operation sequence.
#
# Usage: tests/posix/fsx.sh DIR OPS SEED...
#   e.g. tests/posix/fsx.sh /mnt/pfs 100000 1 2 3
#
# Environment:
#   FSX_CONFIG     fsx.toml with operation weights etc. (default: fsx defaults)
#   FSX_ARTIFACTS  directory for fsx's .fsxlog/.fsxgood files of a failed run
#                  (default: a new directory under /tmp)
#   FSX_TIMEOUT    seconds before one seed's run is killed (default 3600)
#
# Prints the time per seed. Runs every seed, then exits non-zero if any run
# failed (data or size mismatch, failing syscall, crash or timeout).
set -euo pipefail

if [[ $# -lt 3 ]]; then
    sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
fi
dir="$1" ops="$2"
shift 2
seeds=("$@")
timeout_s="${FSX_TIMEOUT:-3600}"

[[ -d "$dir" ]] || { echo "fsx.sh: $dir is not a directory" >&2; exit 2; }
[[ "$ops" =~ ^[0-9]+$ ]] || { echo "fsx.sh: OPS must be a number, got $ops" >&2; exit 2; }
for seed in "${seeds[@]}"; do
    [[ "$seed" =~ ^[0-9]+$ ]] || { echo "fsx.sh: SEED must be a number, got $seed" >&2; exit 2; }
done
fsx="$(command -v fsx || echo "${CARGO_HOME:-$HOME/.cargo}/bin/fsx")"
[[ -x "$fsx" ]] || { echo "fsx.sh: fsx not installed (run tests/posix/install.sh)" >&2; exit 2; }
config_args=()
if [[ -n "${FSX_CONFIG:-}" ]]; then
    [[ -f "$FSX_CONFIG" ]] || { echo "fsx.sh: no config file $FSX_CONFIG" >&2; exit 2; }
    config_args=(-f "$FSX_CONFIG")
fi
artifacts="${FSX_ARTIFACTS:-$(mktemp -d -t fsx-artifacts.XXXXXX)}"
mkdir -p "$artifacts"

echo "fsx.sh: $("$fsx" --version) in $dir, $ops operations, seeds ${seeds[*]}${FSX_CONFIG:+, config $FSX_CONFIG}"
passed=0 failed=0
for seed in "${seeds[@]}"; do
    file="$dir/fsx.$seed.$$"
    out="$artifacts/fsx.$seed.out"
    start=$(date +%s.%N)
    set +e
    timeout --kill-after=30 "$timeout_s" "$fsx" "${config_args[@]}" -N "$ops" -S "$seed" -P "$artifacts" "$file" >"$out" 2>&1
    rc=$?
    set -e
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [[ $rc -eq 0 ]] && grep -q 'All operations completed A-OK' "$out"; then
        printf 'fsx.sh: seed %s: ok, %s ops in %s s\n' "$seed" "$ops" "$secs"
        passed=$((passed + 1))
        rm -f "$file"
    else
        [[ $rc -eq 124 || $rc -eq 137 ]] && echo "fsx.sh: seed $seed: timed out after ${timeout_s}s"
        printf 'fsx.sh: seed %s: FAILED (exit %s) after %s s; output in %s:\n' "$seed" "$rc" "$secs" "$out"
        # fsx prints the error first, then a dump of the last operations.
        { sed -n '1,/LOG DUMP/p' "$out" | head -n 30; echo '...'; tail -n 20 "$out"; } | sed 's/^/    /'
        echo "fsx.sh: seed $seed: test file $file and fsx artifacts in $artifacts kept"
        failed=$((failed + 1))
    fi
done
[[ $failed -gt 0 || -n "${FSX_ARTIFACTS:-}" ]] || rm -rf "$artifacts"
echo "fsx: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
