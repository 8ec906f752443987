#!/bin/bash
# File creation rate against ranks, one cluster: mdtest-scaling.sh BIN [ROUNDS] [SIZE] (BIN holds
# pfs, pfs-mdtest, pfs-meta, pfs-storage). One fresh `pfs up` cluster from config/local.toml with
# REPLICAS copies (default 1) on ports 72xx, a small warm-up run, then per round
#   pfs-mdtest --config CFG --np N --preset mdtest-easy --size SIZE
# (SIZE empty files per rank, each rank in a directory of its own; default 1000, so --np 16
# creates 16000: a round takes about 10 s on 2 cores) for N in 1 4 8 16, in reverse order every
# other round (no N always runs first).
# Prints each run's File creation ops/s, then per N the median and the median per rank.
source "$(dirname "$0")/common.sh"
B=$1; ROUNDS=${2:-3}; SIZE=${3:-1000}
NPS=(1 4 8 16)
up_cluster "$B" 72
# The Max column of mdtest's `File creation` summary row (one iteration: the rate). No early
# exit: pfs-mdtest would get SIGPIPE on its last line.
creates() { awk '$1 == "File" && $2 == "creation" && !found { print $4; found = 1 }'; }
"$B/pfs-mdtest" --config "$PFS_CONFIG" --np 4 --preset mdtest-easy --size 100 > /dev/null
declare -A runs
for r in $(seq 1 "$ROUNDS"); do
  order=("${NPS[@]}")
  if ((r % 2 == 0)); then order=(16 8 4 1); fi
  for n in "${order[@]}"; do
    c=$("$B/pfs-mdtest" --config "$PFS_CONFIG" --np "$n" --preset mdtest-easy --size "$SIZE" | creates)
    [ -n "$c" ] || { echo "round $r, --np $n: no File creation rate in pfs-mdtest's output" >&2; exit 1; }
    echo "round $r: --np $n  $c creates/s"
    runs[$n]="${runs[$n]:-} $c"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "File creation, mdtest-easy, $SIZE files per rank, median of $ROUNDS:"
printf '%-4s %12s %12s   %s\n' np creates/s "per rank" "runs"
for n in "${NPS[@]}"; do
  m=$(median <<< "${runs[$n]}")
  printf '%-4s %12.0f %12.0f   %s\n' "$n" "$m" "$(echo "$m / $n" | bc -l)" "${runs[$n]# }"
done
