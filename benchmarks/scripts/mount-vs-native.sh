#!/bin/bash
# The FUSE mount against the native client on one cluster, in one run: mount-vs-native.sh BIN [ROUNDS]
# (BIN holds pfs, pfs-cp, pfs-ior, pfs-mdtest, pfs-meta, pfs-storage). A fresh `pfs up` cluster
# from config/local.toml with REPLICAS copies (default 1) on ports 71xx, mounted at a temporary
# directory. Per round, alternating native and mount:
#   - large sequential I/O, 1 GiB as 4 streams of 256 MiB: 4 `pfs-cp` at once in and out
#     (/dev/null) against fio through the mount (1 MiB blocks, 4 jobs, psync, fsync at end);
#   - ior-easy: `pfs-ior --np 4 -F -t 1m -b 256m -e` with -a PFS against -a POSIX on the mount;
#   - file creation: `pfs-mdtest --preset mdtest-easy --np 4 --size 2000` with -a PFS against
#     -a POSIX on the mount (durable creates).
# Prints MiB/s and creates/s per round; quote medians.
source "$(dirname "$0")/common.sh"
make_src
B=$1; ROUNDS=${2:-3}
mount_cluster "$B"
gib() { echo "1024 / ($2 - $1)" | bc -l | cut -c1-6; }
fio_bw() { # fio JSON on stdin -> MiB/s of the write or read side
  python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(round(j['$1']['bw_bytes']/2**20))"; }
fio_run() {
  fio --name=seq --directory="$M/fio" --rw="$1" --bs=1M --size=256M --numjobs=4 --ioengine=psync \
    --end_fsync=1 --group_reporting --output-format=json; }
ior_bw() { awk -v op="$1" '$1 == "Max" && $2 == op":" { print $3; exit }'; }
creates() { awk '/File creation/ { print $4; exit }'; }
"$B/pfs-cp" "$SRC.8m" pfs:/warm > /dev/null   # warm-up
for i in $(seq 1 "$ROUNDS"); do
  s=$(date +%s.%N)
  pids=(); for j in 1 2 3 4; do "$B/pfs-cp" "$SRC" "pfs:/cp$i.$j" > /dev/null & pids+=($!); done; wait "${pids[@]}"
  e=$(date +%s.%N); cw=$(gib "$s" "$e")
  mkdir -p "$M/fio"; mw=$(fio_run write | fio_bw write)
  s=$(date +%s.%N)
  pids=(); for j in 1 2 3 4; do "$B/pfs-cp" "pfs:/cp$i.$j" /dev/null > /dev/null & pids+=($!); done; wait "${pids[@]}"
  e=$(date +%s.%N); cr=$(gib "$s" "$e")
  mr=$(fio_run read | fio_bw read)
  rm -rf "$M/fio"; for j in 1 2 3 4; do "$B/pfs" rm "/cp$i.$j"; done
  out=$("$B/pfs-ior" --config "$PFS_CONFIG" -a PFS --np 4 -F -t 1m -b 256m -e -o "/ior$i")
  iw=$(ior_bw Write <<< "$out"); ir=$(ior_bw Read <<< "$out")
  out=$("$B/pfs-ior" --config "$PFS_CONFIG" -a POSIX --np 4 -F -t 1m -b 256m -e -o "$M/ior$i")
  pw=$(ior_bw Write <<< "$out"); pr=$(ior_bw Read <<< "$out")
  nc=$("$B/pfs-mdtest" --config "$PFS_CONFIG" -a PFS --preset mdtest-easy --np 4 --size 2000 -d "/md$i" | creates)
  mc=$("$B/pfs-mdtest" --config "$PFS_CONFIG" -a POSIX --preset mdtest-easy --np 4 --size 2000 -d "$M/md$i" | creates)
  echo "round $i: seq write pfs-cp $cw fio $mw | seq read pfs-cp $cr fio $mr | ior-easy write PFS $iw POSIX-mount $pw read PFS $ir POSIX-mount $pr | creates/s PFS $nc POSIX-mount $mc"
done
