#!/bin/bash
# 3 meta nodes (a Raft group, config/local.toml) against 1 on the same host:
#   meta-group-vs-one.sh BIN [ROUNDS]      (BIN holds pfs, pfs-cp, pfs-ior, pfs-mdtest, the daemons)
# Per round, first with 1 meta node (config/local.toml without meta-2 and meta-3) then with 3,
# each on a fresh `pfs up` cluster, warmed up: `pfs-mdtest --np 8 --preset mdtest-easy --size
# 1000` (durable creates) and `pfs-ior --preset ior-easy` / `--preset ior-hard`. Prints per
# round and configuration the File creation rate and the write and read MiB/s; quote medians
# and the ratios 3 / 1 of each.
source "$(dirname "$0")/common.sh"
B=$1; ROUNDS=${2:-3}
make_src
ONE=$(mktemp /tmp/pfs-one-meta-XXXXXX.toml)
trap 'rm -f "$ONE"' EXIT
# Drop every [[meta]] table but the first (meta-1).
awk '/^\[\[meta\]\]/ { n++ } /^\[/ && !/^\[\[meta\]\]/ { n = 0 } n <= 1 { print }' "$ROOT/config/local.toml" > "$ONE"
[ "$(grep -c '^\[\[meta\]\]' "$ONE")" = 1 ] || { echo "could not make a one-node config" >&2; exit 1; }
ior() { "$B/pfs-ior" --config "$PFS_CONFIG" --preset "$1" | grep -E '^(write|read) ' | head -2 | awk '{printf "%s %s  ", $1, $2}'; }
run() { # $1 bin, $2 port prefix, $3 config template
  compare_cluster "$1" "/tmp/pfs-meta-group-$2" "$2" "$3"
  local creates
  creates=$("$1/pfs-mdtest" --config "$PFS_CONFIG" --np 8 --preset mdtest-easy --size 1000 |
    awk '$1 == "File" && $2 == "creation" && !found { print $4; found = 1 }')
  echo "creates/s $creates  ior-easy $(ior ior-easy) ior-hard $(ior ior-hard)"
  "$1/pfs" down > /dev/null; rm -rf "/tmp/pfs-meta-group-$2"
}
BASE=$B NEW=$B BASE_CONFIG=$ONE NEW_CONFIG=$ROOT/config/local.toml
echo "base: 1 meta node; new: 3 meta nodes"
compare_rounds
