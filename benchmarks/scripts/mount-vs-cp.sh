#!/bin/bash
# The FUSE mount against the native client, one build, one cluster: mount-vs-cp.sh BIN [ROUNDS]
# (BIN holds pfs, pfs-cp, pfs-meta, pfs-storage). A fresh `pfs up` cluster from
# config/local.toml with REPLICAS copies (default 1) on ports 71xx, mounted at a temporary
# directory; per round 256 MiB in with `pfs-cp` and with `dd bs=1M conv=fsync` through the
# mount, then out to /dev/null each way. MiB/s; quote medians.
source "$(dirname "$0")/common.sh"
make_src
B=$1; ROUNDS=${2:-3}
mount_cluster "$B"
for i in $(seq 1 "$ROUNDS"); do
  s=$(date +%s.%N); "$B/pfs-cp" "$SRC" "pfs:/cp$i"; e=$(date +%s.%N); cw=$(rate "$s" "$e")
  s=$(date +%s.%N); dd if="$SRC" of="$M/dd$i" bs=1M conv=fsync status=none; e=$(date +%s.%N); mw=$(rate "$s" "$e")
  s=$(date +%s.%N); "$B/pfs-cp" "pfs:/cp$i" /dev/null; e=$(date +%s.%N); cr=$(rate "$s" "$e")
  s=$(date +%s.%N); dd if="$M/dd$i" of=/dev/null bs=1M status=none; e=$(date +%s.%N); mr=$(rate "$s" "$e")
  cmp -s "$SRC" "$M/dd$i" || { echo "round $i: the bytes read through the mount differ" >&2; exit 1; }
  echo "write pfs-cp $cw mount $mw   read pfs-cp $cr mount $mr"
done
