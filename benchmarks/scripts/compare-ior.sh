#!/bin/bash
# Compares `pfs-ior --preset ior-easy` of two builds on this host: compare-ior.sh BASE_BIN NEW_BIN
# [ROUNDS]. Per round and build: a fresh `pfs up` cluster (config/local.toml, or BASE_CONFIG /
# NEW_CONFIG for a build that needs its own) on its own ports, 5 s for the precreated-file pools to
# fill (their refill competes for the two cores otherwise), then one IOR run against it. Prints
# write and read MiB/s; quote medians.
set -euo pipefail
shopt -s inherit_errexit
BASE=$1; NEW=$2; ROUNDS=${3:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
run() { # $1 bin dir, $2 port prefix (two digits), $3 config template
  local B=$1 D=/tmp/pfs-compare-ior-$2
  rm -rf "$D"; mkdir -p "$D"
  sed "s#/tmp/pfs-local#$D#; s#127.0.0.1:74#127.0.0.1:$2#" "$3" > "$D/cfg.toml"
  export PFS_CONFIG=$D/cfg.toml PFS_LOG=warn
  timeout 60 "$B/pfs" up > /dev/null; sleep 5
  local out
  out=$(timeout 300 "$B/pfs-ior" --config "$D/cfg.toml" --preset ior-easy)
  "$B/pfs" down > /dev/null; rm -rf "$D"
  echo "$out" | grep -E '^(write|read) ' | head -2 | awk '{printf "%s %s  ", $1, $2}'
}
for r in $(seq 1 "$ROUNDS"); do
  echo "base $(run "$BASE" 75 "${BASE_CONFIG:-$ROOT/config/local.toml}")"
  echo "new  $(run "$NEW" 76 "${NEW_CONFIG:-$ROOT/config/local.toml}")"
done
