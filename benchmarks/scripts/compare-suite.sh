#!/bin/bash
# The headline benchmarks of two builds, alternating on this host: compare-suite.sh BASE_BIN
# NEW_BIN [ROUNDS] (each a directory holding pfs, pfs-cp, pfs-ior, pfs-mdtest, pfs-meta,
# pfs-storage). Per round and build: a fresh `pfs up` cluster from config/local.toml (its
# replicas, 2) on its own ports, settled, an 8 MiB warm-up copy, then
#   pfs-cp 256 MiB in and out to /dev/null, pfs-ior --preset ior-easy, pfs-ior --preset ior-hard,
#   pfs-mdtest --np 4 --preset mdtest-easy --size 1000
# and one line of MiB/s (copies, IOR write and read) and ops/s (mdtest creation and stat).
# Quote medians per column. BASE_CONFIG / NEW_CONFIG: a configuration an older build understands.
source "$(dirname "$0")/common.sh"
make_src
BASE=$1; NEW=$2; ROUNDS=${3:-3}
# IOR's summary rows: `write MAX MIN MEAN ...`; the first of each (MiB/s).
ior_rates() { awk '($1 == "write" || $1 == "read") && !seen[$1]++ { printf "%s %s ", $1, $2 }'; }
# mdtest's summary rows: `File creation MAX ...` and `File stat MAX ...` (ops/s).
md_rates() { awk '$1 == "File" && ($2 == "creation" || $2 == "stat") && !seen[$2]++ { printf "%s %s ", $2, $4 }'; }
run() { # $1 bin dir, $2 port prefix (two digits), $3 config template
  local B=$1 D=/tmp/pfs-compare-suite-$2 out s e
  compare_cluster "$B" "$D" "$2" "$3"
  s=$(date +%s.%N); "$B/pfs-cp" "$SRC" pfs:/big; e=$(date +%s.%N); out="cp-in $(rate "$s" "$e") "
  s=$(date +%s.%N); "$B/pfs-cp" pfs:/big /dev/null; e=$(date +%s.%N); out="$out cp-out $(rate "$s" "$e")  "
  out="$out easy: $(timeout 300 "$B/pfs-ior" --config "$D/cfg.toml" --preset ior-easy | ior_rates) "
  out="$out hard: $(timeout 300 "$B/pfs-ior" --config "$D/cfg.toml" --preset ior-hard | ior_rates) "
  out="$out mdtest: $(timeout 300 "$B/pfs-mdtest" --config "$D/cfg.toml" --np 4 --preset mdtest-easy --size 1000 | md_rates)"
  "$B/pfs" down > /dev/null; rm -rf "$D"
  echo "$out"
}
compare_rounds
