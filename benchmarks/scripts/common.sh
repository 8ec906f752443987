# Sourced by the comparison scripts: strict mode, the repository root ($ROOT), and helpers:
#   make_src          the 256 MiB source file $SRC (made if absent) and its first 8 MiB $SRC.8m
#   rate START END    MiB/s of 256 MiB moved between two `date +%s.%N` times
#   up_cluster BIN [PORTS]   a fresh `pfs up` cluster (below)
#   mount_cluster BIN        the same, mounted (below)
#   compare_cluster BIN D PORTS CONFIG   a comparison round's cluster, warmed up (below)
#   compare_rounds    $ROUNDS rounds of the caller's `run BIN PORTS CONFIG`, base then new (below)
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SRC=${SRC:-/tmp/pfs-compare-256m.bin}
make_src() {
  [ -f "$SRC" ] || head -c 256M /dev/urandom > "$SRC"
  head -c 8M "$SRC" > "$SRC.8m"
}
rate() { echo "256 / ($2 - $1)" | bc -l | cut -c1-6; }

# `up_cluster BIN [PORTS]`: a fresh `pfs up` cluster from config/local.toml with $REPLICAS
# copies (default 1) on ports PORTSxx (two digits, default 71) in a new temporary directory $D,
# its configuration in $D/cfg.toml (exported as PFS_CONFIG); stopped and removed when the
# script exits. Waits 4 s after `pfs up` for the precreated-file pools to fill (their refill
# competes for the cores otherwise).
up_cluster() {
  local bin=$1 ports=${2:-71}
  D=$(mktemp -d /tmp/pfs-bench-XXXXXX)
  sed "s#/tmp/pfs-local#$D#; s#127.0.0.1:74#127.0.0.1:$ports#; s#^replicas = 2 #replicas = ${REPLICAS:-1} #" \
    "$ROOT/config/local.toml" > "$D/cfg.toml"
  export PFS_CONFIG=$D/cfg.toml PFS_LOG=warn
  # shellcheck disable=SC2064 # expanded now: the paths are fixed
  trap "'$bin/pfs' down > /dev/null 2>&1 || true; rm -rf '$D'" EXIT
  timeout 60 "$bin/pfs" up > /dev/null; sleep 4
}

# `mount_cluster BIN`: up_cluster BIN on ports 71xx, mounted with `pfs mount` at $M (its log in
# $D/mount.log); unmounted, stopped and removed when the script exits.
mount_cluster() {
  local bin=$1
  up_cluster "$bin" 71
  M=$D/mnt; mkdir "$M"
  # shellcheck disable=SC2064 # expanded now: the paths are fixed
  trap "'$bin/pfs' umount '$M' 2> /dev/null || true; '$bin/pfs' down > /dev/null 2>&1 || true; rm -rf '$D'" EXIT
  "$bin/pfs" mount "$M" > "$D/mount.log" 2>&1 &
  for _ in $(seq 100); do grep -q " $M fuse" /proc/mounts && break; sleep 0.1; done
  grep -q " $M fuse" /proc/mounts || { echo "the mount did not appear:" >&2; cat "$D/mount.log" >&2; exit 1; }
}

# `compare_cluster BIN D PORTS CONFIG`: a fresh `pfs up` cluster of build BIN in directory D
# (emptied) on ports PORTSxx from the configuration template CONFIG (a build may need its own),
# exported as PFS_CONFIG; 4 s for the precreated-file pools to fill, then an 8 MiB copy in and
# out (the first touch of fresh memory is slow here). The caller stops it (`pfs down`).
compare_cluster() {
  local bin=$1 dir=$2 ports=$3 template=$4
  rm -rf "$dir"; mkdir -p "$dir"
  sed "s#/tmp/pfs-local#$dir#; s#127.0.0.1:74#127.0.0.1:$ports#" "$template" > "$dir/cfg.toml"
  export PFS_CONFIG=$dir/cfg.toml PFS_LOG=warn
  timeout 60 "$bin/pfs" up > /dev/null; sleep 4
  "$bin/pfs-cp" "$SRC.8m" pfs:/warm; "$bin/pfs-cp" pfs:/warm /dev/null
}

# `compare_rounds`: $ROUNDS rounds, each the caller's `run BIN PORTS CONFIG` for $BASE (ports
# 75xx, $BASE_CONFIG) then $NEW (ports 76xx, $NEW_CONFIG), printed as lines "base ..." and
# "new  ..."; both configurations default to this checkout's config/local.toml.
compare_rounds() {
  for _ in $(seq 1 "$ROUNDS"); do
    echo "base $(run "$BASE" 75 "${BASE_CONFIG:-$ROOT/config/local.toml}")"
    echo "new  $(run "$NEW" 76 "${NEW_CONFIG:-$ROOT/config/local.toml}")"
  done
}
