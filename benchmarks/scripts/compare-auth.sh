#!/bin/bash
# The cost of authentication, one build, one run: compare-auth.sh BIN [ROUNDS] (BIN a directory
# holding pfs, pfs-cp, pfs-meta, pfs-storage, pfs-tokenbench). Per round and mode, interleaved:
# a fresh `pfs up` cluster from config/local.toml (REPLICAS copies per chunk, default 1) with
#   none     auth = "none"
#   control  [auth] with a secret: handshake proofs and a MAC on every frame header and body
#   data     control plus protect_data = true: payload bytes MAC'd too
# a 4 s settle, an 8 MiB warm-up, three 256 MiB `pfs-cp` copies in and three out to /dev/null
# (MiB/s each), then pfs-tokenbench against the same cluster (uncontended acquire p50 in µs,
# grants/s with 4 clients on one shared file). Quote medians; compare ratios within one run.
# MODES="none control" compares only those.
source "$(dirname "$0")/common.sh"
make_src
B=$1; ROUNDS=${2:-3}; REPLICAS=${REPLICAS:-1}
config() { # $1 mode, $2 data dir
  local c
  c=$(sed "s#/tmp/pfs-local#$2#; s#127.0.0.1:74#127.0.0.1:77#; s#^replicas = 2 #replicas = $REPLICAS #" "$ROOT/config/local.toml")
  case $1 in
    none) echo "$c" | sed '/^\[auth\]/d; /^secret_file/d; /^protect_data/d; 0,/^data_dir = /s#^data_dir = .*#&\nauth = "none"#' ;;
    control) echo "$c" ;;
    data) echo "$c" | sed 's#^protect_data = false#protect_data = true#' ;;
  esac
}
run() { # $1 mode
  local D=/tmp/pfs-auth-$1 out s e
  rm -rf "$D"; mkdir -p "$D"
  config "$1" "$D" > "$D/cfg.toml"
  export PFS_CONFIG=$D/cfg.toml PFS_LOG=warn
  timeout 60 "$B/pfs" up > /dev/null; sleep 4
  "$B/pfs-cp" "$SRC.8m" pfs:/warm; "$B/pfs-cp" pfs:/warm /dev/null
  out="write"
  for i in 1 2 3; do s=$(date +%s.%N); "$B/pfs-cp" "$SRC" pfs:/big$i; e=$(date +%s.%N); out="$out $(echo "256 / ($e - $s)" | bc -l | cut -c1-5)"; done
  out="$out  read"
  for i in 1 2 3; do s=$(date +%s.%N); "$B/pfs-cp" pfs:/big$i /dev/null; e=$(date +%s.%N); out="$out $(echo "256 / ($e - $s)" | bc -l | cut -c1-5)"; done
  "$B/pfs-tokenbench" --config "$D/cfg.toml" --iterations 5000 --json "$D/tb.json" > /dev/null
  out="$out  tokens $(python3 -c "import json,sys; j=json.load(open('$D/tb.json')); print(j['uncontended_acquire']['p50_us'], j['grants_shared_file']['grants_per_s'])" 2>/dev/null || echo '?')"
  "$B/pfs" down > /dev/null; rm -rf "$D"
  echo "$out"
}
# MODES picks and orders the modes; each round starts one later in that list, so no mode
# always runs right after the same other one (a previous cluster's writeback lingers).
read -r -a modes <<< "${MODES:-none control data}"
for r in $(seq 0 $((ROUNDS - 1))); do
  for k in $(seq 0 $((${#modes[@]} - 1))); do
    m=${modes[$(((k + r) % ${#modes[@]}))]}
    printf '%-8s %s\n' "$m" "$(run "$m")"
  done
done
