#!/bin/bash
# The FUSE mount against the native client, one build, one cluster: mount-vs-cp.sh BIN [ROUNDS]
# (BIN holds pfs, pfs-cp, pfs-meta, pfs-storage). A fresh `pfs up` cluster from
# config/local.toml with REPLICAS copies (default 1) on ports 71xx, mounted at a temporary
# directory; per round 256 MiB in with `pfs-cp` and with `dd bs=1M conv=fsync` through the
# mount, then out to /dev/null each way. MiB/s; quote medians.
source "$(dirname "$0")/common.sh"
B=$1; ROUNDS=${2:-3}; REPLICAS=${REPLICAS:-1}
D=$(mktemp -d /tmp/pfs-mount-bench-XXXXXX); M=$D/mnt; mkdir "$M"
sed "s#/tmp/pfs-local#$D#; s#127.0.0.1:74#127.0.0.1:71#; s#^replicas = 2 #replicas = $REPLICAS #" "$ROOT/config/local.toml" > "$D/cfg.toml"
export PFS_CONFIG=$D/cfg.toml PFS_LOG=warn
trap '"$B/pfs" umount "$M" 2> /dev/null || true; "$B/pfs" down > /dev/null 2>&1 || true; rm -rf "$D"' EXIT
timeout 60 "$B/pfs" up > /dev/null; sleep 4
"$B/pfs" mount "$M" > "$D/mount.log" 2>&1 &
for _ in $(seq 100); do grep -q " $M " /proc/mounts && break; sleep 0.1; done
for i in $(seq 1 "$ROUNDS"); do
  s=$(date +%s.%N); "$B/pfs-cp" "$SRC" "pfs:/cp$i"; e=$(date +%s.%N); cw=$(rate "$s" "$e")
  s=$(date +%s.%N); dd if="$SRC" of="$M/dd$i" bs=1M conv=fsync status=none; e=$(date +%s.%N); mw=$(rate "$s" "$e")
  s=$(date +%s.%N); "$B/pfs-cp" "pfs:/cp$i" /dev/null; e=$(date +%s.%N); cr=$(rate "$s" "$e")
  s=$(date +%s.%N); dd if="$M/dd$i" of=/dev/null bs=1M status=none; e=$(date +%s.%N); mr=$(rate "$s" "$e")
  cmp -s "$SRC" "$M/dd$i" || { echo "round $i: the bytes read through the mount differ" >&2; exit 1; }
  echo "write pfs-cp $cw mount $mw   read pfs-cp $cr mount $mr"
done
