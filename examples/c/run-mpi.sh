#!/bin/bash
# Builds examples/c/shared_file.c with mpicc against libpfs and runs it under `mpirun -np 4` on
# a fresh cluster of this host (3 pfs-meta + 4 pfs-storage, config/local.toml on ports 72xx).
# Usage: examples/c/run-mpi.sh [BIN_DIR]   (default target/release: pfs, pfs-meta, pfs-storage,
# libpfs.so). Needs Open MPI (libopenmpi-dev, openmpi-bin).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${1:-$ROOT/target/release}" && pwd)
D=$(mktemp -d /tmp/pfs-c-example-XXXXXX)
sed "s#/tmp/pfs-local#$D#; s#127.0.0.1:74#127.0.0.1:72#" "$ROOT/config/local.toml" > "$D/cfg.toml"
mpicc -O2 -Wall -Wextra -Werror -I "$ROOT/libpfs/include" "$ROOT/examples/c/shared_file.c" \
  -L "$BIN" -lpfs -Wl,-rpath,"$BIN" -o "$D/shared_file"
trap '"$BIN/pfs" --config "$D/cfg.toml" down > /dev/null 2>&1 || true; rm -rf "$D"' EXIT
PFS_LOG=warn "$BIN/pfs" --config "$D/cfg.toml" up
mpirun --allow-run-as-root --oversubscribe -np 4 "$D/shared_file" "$D/cfg.toml"
