#!/bin/bash
# Compares pfs-cp throughput of two builds on this host: compare-cp.sh BASE_BIN NEW_BIN [ROUNDS]
# (each a directory holding pfs, pfs-cp, pfs-meta, pfs-storage). Per round and build: a fresh
# `pfs up` cluster from config/local.toml on its own ports, a 4 s settle (the precreated-file
# pools fill), an 8 MiB warm-up, then three 256 MiB copies in (new files) and three out to
# /dev/null. Prints MiB/s per copy; quote medians. Needs a 256 MiB file at $SRC (made if absent).
# BASE_CONFIG / NEW_CONFIG: the cluster configuration each build understands (default: this
# checkout's config/local.toml; give an older build its own).
source "$(dirname "$0")/common.sh"
make_src
BASE=$1; NEW=$2; ROUNDS=${3:-3}
run() { # $1 bin dir, $2 port prefix (two digits), $3 config template
  local B=$1 D=/tmp/pfs-compare-$2
  compare_cluster "$B" "$D" "$2" "$3"
  local out="write" s e
  for i in 1 2 3; do s=$(date +%s.%N); "$B/pfs-cp" "$SRC" pfs:/big$i; e=$(date +%s.%N); out="$out $(rate "$s" "$e")"; done
  out="$out  read"
  for i in 1 2 3; do s=$(date +%s.%N); "$B/pfs-cp" pfs:/big$i /dev/null; e=$(date +%s.%N); out="$out $(rate "$s" "$e")"; done
  "$B/pfs" down > /dev/null; rm -rf "$D"
  echo "$out"
}
compare_rounds
