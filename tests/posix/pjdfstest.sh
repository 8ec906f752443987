#!/usr/bin/env bash
# Runs the pjdfstest POSIX conformance suite (crate pjdfstest, see install.sh)
# in DIR, normally a `pfs mount` mount point, as root.
#
# Usage: tests/posix/pjdfstest.sh DIR [EXCLUDE_FILE [PATTERN...]]
#   EXCLUDE_FILE  tests expected to fail, one name per line then ` # reason`
#                 (default: tests/posix/pjdfstest-exclude.txt; `#` comments
#                 and blank lines allowed)
#   PATTERN...    run only tests whose name contains one of these
#
# Environment:
#   PJDFSTEST_CONFIG       config file (default: tests/posix/pjdfstest.toml)
#   PJDFSTEST_SECONDARY_FS a directory on another file system (enables the 2
#                          exdev tests; e.g. a local dir when DIR is a mount)
#   PJDFSTEST_TIMEOUT      seconds before the whole run is killed (default 1800)
#   PJDFSTEST_LOG          keep pjdfstest's full output in this file
#
# Prints every test result, then passed/failed/skipped/excluded counts.
# Exits non-zero if a test that is not excluded fails, or if pjdfstest dies or
# times out before printing its summary. Excluded tests that now pass are
# reported but do not fail the run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ $# -lt 1 ]]; then
    sed -n '2,21s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
fi
dir="$1"
exclude_file="${2:-$here/pjdfstest-exclude.txt}"
shift $(($# >= 2 ? 2 : 1))
patterns=("$@")
config="${PJDFSTEST_CONFIG:-$here/pjdfstest.toml}"
timeout_s="${PJDFSTEST_TIMEOUT:-1800}"

[[ -d "$dir" ]] || { echo "pjdfstest.sh: $dir is not a directory" >&2; exit 2; }
[[ -f "$config" ]] || { echo "pjdfstest.sh: no config file $config" >&2; exit 2; }
[[ -f "$exclude_file" ]] || { echo "pjdfstest.sh: no exclude file $exclude_file" >&2; exit 2; }
pjdfstest="$(command -v pjdfstest || echo "${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest")"
[[ -x "$pjdfstest" ]] || { echo "pjdfstest.sh: pjdfstest not installed (run tests/posix/install.sh)" >&2; exit 2; }
[[ $EUID -eq 0 ]] || echo "pjdfstest.sh: warning: not root, tests needing root are skipped" >&2

# Exclude list: first word of each line, comments and blank lines dropped.
declare -A excluded=()
while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line%%#*}"
    read -r name _ <<<"$line" || true
    [[ -n "${name:-}" ]] && excluded["$name"]=1
done <"$exclude_file"

log="${PJDFSTEST_LOG:-$(mktemp -t pjdfstest.XXXXXX.log)}"
args=(-c "$config" -p "$dir")
[[ -n "${PJDFSTEST_SECONDARY_FS:-}" ]] && args+=(-s "$PJDFSTEST_SECONDARY_FS")
[[ ${#patterns[@]} -gt 0 ]] && args+=(-- "${patterns[@]}")

echo "pjdfstest.sh: $("$pjdfstest" --version) in $dir, config $config, exclude file $exclude_file (${#excluded[@]} tests)"
start=$SECONDS
set +e
NO_COLOR=1 timeout --kill-after=30 "$timeout_s" "$pjdfstest" "${args[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
elapsed=$((SECONDS - start))

# Result lines: NAME (padding) STATUS, STATUS one of ok, FAILED, skipped, and,
# when the config has expected_failures, `PASSED UNEXPECTEDLY` and
# `failed as expected`. Details of a failure or skip follow on tab-indented lines.
pass=0 fail=0 skip=0 excl_fail=0 excl_pass=0
failed=() now_pass=()
declare -A seen=()
re='^([^[:space:]]+)[[:space:]]+(ok|FAILED|skipped|PASSED UNEXPECTEDLY|failed as expected)$'
while IFS= read -r line; do
    [[ "$line" =~ $re ]] || continue
    name="${BASH_REMATCH[1]}" status="${BASH_REMATCH[2]}"
    seen["$name"]=1
    case "$status" in
        skipped) skip=$((skip + 1)) ;;
        ok | "PASSED UNEXPECTEDLY")
            if [[ -n "${excluded[$name]:-}" || "$status" != ok ]]; then
                excl_pass=$((excl_pass + 1)); now_pass+=("$name")
            else
                pass=$((pass + 1))
            fi ;;
        FAILED | "failed as expected")
            if [[ -n "${excluded[$name]:-}" || "$status" != FAILED ]]; then
                excl_fail=$((excl_fail + 1))
            else
                fail=$((fail + 1)); failed+=("$name")
            fi ;;
    esac
done <"$log"

summary="$(grep -E '^Summary: ' "$log" | tail -n 1 || true)"
status=0
echo
echo "pjdfstest.sh: log $log, ${elapsed}s"
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "pjdfstest.sh: ERROR: pjdfstest timed out after ${timeout_s}s" >&2
    status=1
elif [[ -z "$summary" ]]; then
    echo "pjdfstest.sh: ERROR: pjdfstest exited with $rc without a summary (crash?)" >&2
    status=1
else
    total=$(sed -E 's/.* ([0-9]+) total.*/\1/' <<<"$summary")
    if [[ "$total" != $((pass + fail + skip + excl_fail + excl_pass)) ]]; then
        echo "pjdfstest.sh: ERROR: parsed $((pass + fail + skip + excl_fail + excl_pass)) results, pjdfstest says: $summary" >&2
        status=1
    fi
fi
if [[ ${#patterns[@]} -eq 0 ]]; then
    for name in "${!excluded[@]}"; do
        [[ -n "${seen[$name]:-}" ]] || echo "pjdfstest.sh: warning: excluded test $name did not run (misspelt or removed?)"
    done
fi
for name in "${now_pass[@]}"; do
    echo "pjdfstest.sh: note: excluded test now passes, remove it from the exclude file: $name"
done
for name in "${failed[@]}"; do
    echo "pjdfstest.sh: FAILED: $name"
done
[[ $fail -eq 0 ]] || status=1
echo "pjdfstest: excluded: $((excl_fail + excl_pass)) ($excl_fail failed, $excl_pass now pass)"
echo "pjdfstest: $pass passed, $fail failed, $skip skipped"
exit $status
