#!/usr/bin/env bash
# Installs what tests/posix/{pjdfstest,fsx,fio-verify}.sh need, skipping what
# is already there (safe to run on every CI run):
#   - fio, from Debian (apt-get);
#   - user and group `tests` (and checks user `nobody`), which pjdfstest
#     switches to;
#   - pjdfstest and fsx, pinned versions from crates.io (cargo install --locked,
#     built in $SUITES_TARGET_DIR, default /tmp/suites-target; ~2.5 min on
#     2 cores), into $CARGO_HOME/bin.
#
# Usage: tests/posix/install.sh   (as root, on Debian)
set -euo pipefail

PJDFSTEST_VERSION=0.2.2
FSX_VERSION=0.3.2

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$cargo_bin:$PATH"

if ! command -v fio >/dev/null; then
    echo "install.sh: installing fio"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
fi

if ! getent group tests >/dev/null; then
    echo "install.sh: adding group tests"
    groupadd tests
fi
if ! getent passwd tests >/dev/null; then
    echo "install.sh: adding user tests"
    useradd -M -g tests -s /usr/sbin/nologin tests
fi
getent passwd nobody >/dev/null || { echo "install.sh: user nobody is missing" >&2; exit 1; }

# cargo_install CRATE VERSION: installs CRATE unless `CRATE --version` says VERSION.
cargo_install() {
    local crate="$1" version="$2"
    if [[ "$("$crate" --version 2>/dev/null || true)" == "$crate $version" ]]; then
        return
    fi
    echo "install.sh: cargo install $crate $version"
    CARGO_TARGET_DIR="${SUITES_TARGET_DIR:-/tmp/suites-target}" \
        cargo install --locked --quiet --version "$version" "$crate"
}
cargo_install pjdfstest "$PJDFSTEST_VERSION"
cargo_install fsx "$FSX_VERSION"

echo "install.sh: $(fio --version), $(pjdfstest --version), $(fsx --version)," \
    "user tests $(id -u tests):$(id -g tests)"
