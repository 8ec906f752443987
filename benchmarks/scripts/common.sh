# Sourced by the comparison scripts: strict mode, the repository root ($ROOT), the 256 MiB
# source file ($SRC, made if absent) and its first 8 MiB ($SRC.8m, for warm-ups), and
# `rate START END`: MiB/s of 256 MiB moved between two `date +%s.%N` times.
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SRC=${SRC:-/tmp/pfs-compare-256m.bin}
[ -f "$SRC" ] || head -c 256M /dev/urandom > "$SRC"
head -c 8M "$SRC" > "$SRC.8m"
rate() { echo "256 / ($2 - $1)" | bc -l | cut -c1-6; }
