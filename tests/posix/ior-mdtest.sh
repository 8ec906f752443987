#!/usr/bin/env bash
# The real IOR and mdtest (hpc/ior at 5fcf0ba, built by install.sh) in IO500's four shapes
# in DIR, normally a `pfs mount` mount point, under `mpirun -np IOR_NP`, in IO500's order:
#   ior-easy     one file per rank, 2 MiB transfers  (ior -F -t 2m -e)
#   ior-hard     one shared file, 47008-byte records interleaved by rank
#                                                    (ior -t 47008 -b 47008 -e)
#   mdtest-easy  empty files, a directory per rank   (mdtest -F -u -L -P -N 1)
#   mdtest-hard  3901-byte files in one directory    (mdtest -t -w 3901 -e 3901 -P -N 1 -F)
# Every write phase stops at a stonewall of IOR_STONEWALL seconds, after which each rank
# goes on until it has done as many as the busiest rank (stoneWallingWearOut); the count
# lands in a status file that the later phases of that shape read. The ior reads check
# every byte (-R) with the ranks shifted by one (-C -Q 1: each reads another rank's data);
# mdtest stats, reads (mdtest-hard: -X checks the bytes) and deletes every file created,
# shifted by one rank too (-N 1). The caches are dropped before each read and stat phase.
# Beside IOR's and mdtest's own checks, this script checks the file sizes and the file
# counts after each write phase and that every file is gone after each delete phase.
#
# Usage: tests/posix/ior-mdtest.sh DIR
#
# Environment (defaults in brackets):
#   IOR_BIN [$IOR_PREFIX/bin, IOR_PREFIX as in install.sh: /opt/ior-5fcf0ba]  where ior
#           and mdtest are
#   IOR_NP [4]  ranks        IOR_STONEWALL [15]  seconds of every write phase
#   IOR_EASY_BLOCK [2g]  ior-easy bytes per rank at most (before the stonewall)
#   IOR_HARD_SEGMENTS [20000]  ior-hard records per rank at most
#   MDTEST_FILES [100000]  mdtest files per rank at most
#   IOR_TIMEOUT [300]  seconds before a phase is killed
#   IOR_ARTIFACTS  directory for every phase's output and the status files (default: a new
#                  one under /tmp, removed on success)
# Exits non-zero at the first phase that fails (exit status, a data error or any warning
# IOR or mdtest prints that is not about the stonewall), naming the phase and its command;
# its files are kept in DIR. DIR must not hold ior-easy, ior-hard, mdtest-easy or
# mdtest-hard already.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    sed -n '2,34s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
fi
dir="$(cd "$1" && pwd)" || { echo "ior-mdtest.sh: $1 is not a directory" >&2; exit 2; }
bin="${IOR_BIN:-${IOR_PREFIX:-/opt/ior-5fcf0ba}/bin}"
ior="$bin/ior" mdtest="$bin/mdtest"
for b in "$ior" "$mdtest"; do
    [[ -x "$b" ]] || { echo "ior-mdtest.sh: no $b (run tests/posix/install.sh, or set IOR_BIN)" >&2; exit 2; }
done
for d in ior-easy ior-hard mdtest-easy mdtest-hard; do
    [[ ! -e "$dir/$d" ]] || { echo "ior-mdtest.sh: $dir/$d exists (left by a failed run?); remove it first" >&2; exit 2; }
done
command -v mpirun >/dev/null || { echo "ior-mdtest.sh: no mpirun (Debian package openmpi-bin)" >&2; exit 2; }
np="${IOR_NP:-4}" stonewall="${IOR_STONEWALL:-15}" timeout_s="${IOR_TIMEOUT:-300}"
easy_block="${IOR_EASY_BLOCK:-2g}" hard_segments="${IOR_HARD_SEGMENTS:-20000}"
md_files="${MDTEST_FILES:-100000}"
art="${IOR_ARTIFACTS:-$(mktemp -d -t ior-mdtest.XXXXXX)}"
mkdir -p "$art"

mpirun=(mpirun --oversubscribe -np "$np")
[[ $(id -u) -ne 0 ]] || mpirun+=(--allow-run-as-root)
# The data signature (ior -G) and buffer offset (mdtest -G) of this run: a file left by
# another run can never pass the checks.
sig=$(((RANDOM << 15 | RANDOM) % 1000000000 + 1))

# IO500's parameters of each shape (src/phase_ior_easy.c, phase_ior_hard.c,
# phase_mdtest_easy.c, phase_mdtest_hard.c in github.com/IO500/io500), but
# stoneWallingWearOut only for the writes: this IOR refuses it without -D.
ior_easy=("$ior" -a POSIX -C -Q 1 -g -G "$sig" -k -e -o "$dir/ior-easy/ior_file_easy"
    -O "stoneWallingStatusFile=$art/ior-easy.stonewall"
    -t 2m -b "$easy_block" -F)
ior_hard=("$ior" -a POSIX -C -Q 1 -g -G "$sig" -k -e -o "$dir/ior-hard/file"
    -O "stoneWallingStatusFile=$art/ior-hard.stonewall"
    -t 47008 -b 47008 -s "$hard_segments")
md_easy=("$mdtest" -a POSIX -n "$md_files" -u -L -F -P -G "$sig" -N 1
    -d "$dir/mdtest-easy" -x "$art/mdtest-easy.stonewall")
md_hard=("$mdtest" -a POSIX -n "$md_files" -t -w 3901 -e 3901 -P -G "$sig" -N 1 -F
    -d "$dir/mdtest-hard" -x "$art/mdtest-hard.stonewall")

# Warnings that IOR and mdtest print on every stonewalled run; any other WARNING or ERROR
# line fails the phase.
benign='^WARNING: (Expected aggregate file size|Stat\(\) of aggregate file size|Using actual aggregate bytes moved|Maybe caused by deadlineForStonewalling|Read bytes is 0, thus, a read test will actually just open/close)'
passed=0

fail() {  # fail PHASE MESSAGE [OUTPUT]
    echo "ior-mdtest.sh: $1: FAILED: $2"
    if [[ -n "${3:-}" && -f "$3" ]]; then
        { grep -E 'WARNING|ERROR|rror|ncorrect|ssert|abort|signal' "$3" | grep -vE "$benign" | head -n 20
          echo '...'; tail -n 15 "$3"; } | sed 's/^/    /'
        echo "ior-mdtest.sh: full output in $3"
    fi
    echo "ior-mdtest.sh: files kept in $dir, outputs and status files in $art"
    echo "ior-mdtest: $passed passed, 1 failed"
    exit 1
}

drop_caches() {
    sync
    if [[ -w /proc/sys/vm/drop_caches ]]; then
        echo 3 >/proc/sys/vm/drop_caches
    elif [[ -z "${warned_caches:-}" ]]; then
        warned_caches=1
        echo "ior-mdtest.sh: warning: cannot drop caches (not root?), reads may be served from the page cache"
    fi
}

# run PHASE CMD...: mpirun CMD; fails on a non-zero exit, an error or unexpected warning.
run() {
    local phase="$1" rc=0 start secs
    shift
    local out="$art/$phase.out"
    echo "${mpirun[*]} $*" >"$art/$phase.cmd"
    start=$(date +%s.%N)
    timeout --kill-after=30 "$timeout_s" "${mpirun[@]}" "$@" </dev/null >"$out" 2>&1 || rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    [[ $rc -ne 124 ]] || fail "$phase" "timed out after ${timeout_s} s: ${mpirun[*]} $*" "$out"
    [[ $rc -eq 0 ]] || fail "$phase" "exit $rc after $secs s: ${mpirun[*]} $*" "$out"
    if grep -E '^(WARNING|ERROR)|ERROR:|Incorrect data|errors found' "$out" | grep -qvE "$benign"; then
        fail "$phase" "errors or warnings in the output: ${mpirun[*]} $*" "$out"
    fi
    phase_secs=$secs
}

# count SHAPE: sets n to the count in SHAPE's stonewall status file (per rank: transfers
# or files).
count() {
    n="$(tr -d '[:space:]' <"$art/$1.stonewall" 2>/dev/null || true)"
    [[ "$n" =~ ^[0-9]+$ && "$n" -gt 0 ]] || fail "$1" "no count in the stonewall status file $art/$1.stonewall"
}

# IOR's result line: access bw(MiB/s) IOPS latency block xfer open wr/rd close total iter.
ior_summary() {  # ior_summary PHASE BYTES
    local line
    line="$(grep -E '^(write|read) +[0-9]' "$art/$1.out" | head -n 1)"
    awk -v p="$1" -v b="$2" -v s="$phase_secs" -v l="$line" 'BEGIN {
        split(l, f, / +/)
        printf "ior-mdtest.sh: %s: %.1f MiB/s, %.1f IOPS, %.0f MiB in %.1f s (%s s with mpirun)\n",
            p, f[2], f[3], b / 1048576, f[10], s }'
    grep -E '^stonewalling pairs accessed' "$art/$1.out" | sed "s/^/ior-mdtest.sh: $1: /" || true
}

# mdtest prints "File <op>" twice with -P: first the rate, then the time.
md_summary() {  # md_summary PHASE OPERATION FILES
    awk -v p="$1" -v op="File $2" -v n="$3" -v s="$phase_secs" '
        index($0, op) { v[++k] = $(NF - 3) }
        END { printf "ior-mdtest.sh: %s: %.1f ops/s, %d files in %.2f s (%s s with mpirun)\n",
            p, v[1], n, v[2], s }' "$art/$1.out"
}

files_in() { find "$1" -type f 2>/dev/null | wc -l || true; }

echo "ior-mdtest.sh: $ior and $mdtest in $dir: $np ranks, stonewall $stonewall s, signature $sig, outputs in $art"
mkdir "$dir/ior-easy" "$dir/ior-hard"

# 1. ior-easy write
run ior-easy-write "${ior_easy[@]}" -w -D "$stonewall" -O stoneWallingWearOut=1
count ior-easy
for r in $(seq 0 $((np - 1))); do
    f="$(printf '%s/ior-easy/ior_file_easy.%08d' "$dir" "$r")"
    size="$(stat -c %s "$f" 2>/dev/null || echo missing)"
    [[ "$size" == "$((n * 2097152))" ]] ||
        fail ior-easy-write "$f: size $size, expected $n x 2 MiB = $((n * 2097152)) (status file)"
done
ior_summary ior-easy-write $((np * n * 2097152)); passed=$((passed + 1))

# 2. mdtest-easy write
run mdtest-easy-write "${md_easy[@]}" -C -W "$stonewall"
count mdtest-easy
got=$(files_in "$dir/mdtest-easy")
[[ "$got" -eq $((np * n)) ]] || fail mdtest-easy-write "$got files in $dir/mdtest-easy, expected $np x $n"
md_summary mdtest-easy-write creation $((np * n)); passed=$((passed + 1))

# 3. ior-hard write
run ior-hard-write "${ior_hard[@]}" -w -D "$stonewall" -O stoneWallingWearOut=1
count ior-hard
size="$(stat -c %s "$dir/ior-hard/file" 2>/dev/null || echo missing)"
[[ "$size" == "$((np * n * 47008))" ]] ||
    fail ior-hard-write "$dir/ior-hard/file: size $size, expected $np x $n x 47008 = $((np * n * 47008))"
ior_summary ior-hard-write "$size"; passed=$((passed + 1))

# 4. mdtest-hard write
run mdtest-hard-write "${md_hard[@]}" -C -W "$stonewall"
count mdtest-hard
got=$(files_in "$dir/mdtest-hard")
[[ "$got" -eq $((np * n)) ]] || fail mdtest-hard-write "$got files in $dir/mdtest-hard, expected $np x $n"
wrong="$(find "$dir/mdtest-hard" -type f ! -size 3901c | head -n 5)"
[[ -z "$wrong" ]] || fail mdtest-hard-write "files not 3901 bytes long: $(echo $wrong)"
md_summary mdtest-hard-write creation $((np * n)); passed=$((passed + 1))

# 5. ior-easy read, every byte checked
drop_caches
run ior-easy-read "${ior_easy[@]}" -r -R
count ior-easy
ior_summary ior-easy-read $((np * n * 2097152)); passed=$((passed + 1))

# 6. mdtest-easy stat
drop_caches
run mdtest-easy-stat "${md_easy[@]}" -T
count mdtest-easy
md_summary mdtest-easy-stat stat $((np * n)); passed=$((passed + 1))

# 7. ior-hard read, every byte checked
drop_caches
run ior-hard-read "${ior_hard[@]}" -r -R
count ior-hard
ior_summary ior-hard-read $((np * n * 47008)); passed=$((passed + 1))

# 8. mdtest-hard stat
drop_caches
run mdtest-hard-stat "${md_hard[@]}" -T
count mdtest-hard
md_summary mdtest-hard-stat stat $((np * n)); passed=$((passed + 1))

# 9. mdtest-easy read (the files are empty: open and close; not an IO500 phase)
drop_caches
run mdtest-easy-read "${md_easy[@]}" -E
count mdtest-easy
md_summary mdtest-easy-read read $((np * n)); passed=$((passed + 1))

# 10. mdtest-easy delete
count mdtest-easy
run mdtest-easy-delete "${md_easy[@]}" -r
got=$(files_in "$dir/mdtest-easy")
[[ "$got" -eq 0 ]] || fail mdtest-easy-delete "$got files left in $dir/mdtest-easy"
md_summary mdtest-easy-delete removal $((np * n)); passed=$((passed + 1))

# 11. mdtest-hard read, every byte checked (-X)
drop_caches
run mdtest-hard-read "${md_hard[@]}" -E -X
count mdtest-hard
md_summary mdtest-hard-read read $((np * n)); passed=$((passed + 1))

# 12. mdtest-hard delete
count mdtest-hard
run mdtest-hard-delete "${md_hard[@]}" -r
got=$(files_in "$dir/mdtest-hard")
[[ "$got" -eq 0 ]] || fail mdtest-hard-delete "$got files left in $dir/mdtest-hard"
md_summary mdtest-hard-delete removal $((np * n)); passed=$((passed + 1))

rm -rf "$dir/ior-easy" "$dir/ior-hard" "$dir/mdtest-easy" "$dir/mdtest-hard"
[[ -n "${IOR_ARTIFACTS:-}" ]] || rm -rf "$art"
echo "ior-mdtest.sh: all phases in $SECONDS s"
echo "ior-mdtest: $passed passed, 0 failed"
