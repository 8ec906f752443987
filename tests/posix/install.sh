#!/usr/bin/env bash
# Installs what tests/posix/{pjdfstest,fsx,fio-verify,ior-mdtest}.sh need, skipping
# what is already there (safe to run on every CI run):
#   - fio, from Debian (apt-get);
#   - user and group `tests` (and checks user `nobody`), which pjdfstest
#     switches to;
#   - pjdfstest and fsx, pinned versions from crates.io (cargo install --locked,
#     built in $SUITES_TARGET_DIR, default /tmp/suites-target; ~2.5 min on
#     2 cores), into $CARGO_HOME/bin;
#   - IOR and mdtest (hpc/ior at 5fcf0ba, the version IO500 pins) built with Open MPI
#     from the tarball $IOR_TARBALL (default: ../shared/vendor/ior-5fcf0ba.tar.gz
#     beside the repository, checked against its SHA-256) into $IOR_PREFIX (default
#     /opt/ior-5fcf0ba; ~20 s on 2 cores); Open MPI, autoconf, automake, libtool,
#     pkg-config, make and gcc from Debian if missing.
#
# Usage: tests/posix/install.sh   (as root, on Debian)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

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

# IOR and mdtest from the pinned tarball. The stamp file records the tarball's SHA-256, so
# a prefix built from anything else is rebuilt.
IOR_SHA256=668fc578539cbe1c3e43d1b393438832c284656f1a5c4c332c32354e833268ac
ior_tarball="${IOR_TARBALL:-$root/../shared/vendor/ior-5fcf0ba.tar.gz}"
ior_prefix="${IOR_PREFIX:-/opt/ior-5fcf0ba}"
ior_stamp="$ior_prefix/.built-from-sha256"
if [[ ! -x "$ior_prefix/bin/ior" || ! -x "$ior_prefix/bin/mdtest" \
    || "$(cat "$ior_stamp" 2>/dev/null || true)" != "$IOR_SHA256" ]]; then
    if [[ ! -f "$ior_tarball" ]]; then
        echo "install.sh: the IOR tarball $ior_tarball is missing (CI provides" \
            "../shared/vendor/ior-5fcf0ba.tar.gz beside the repository $root; IOR_TARBALL names another)" >&2
        exit 1
    fi
    sum="$(sha256sum "$ior_tarball" | cut -d' ' -f1)"
    if [[ "$sum" != "$IOR_SHA256" ]]; then
        echo "install.sh: $ior_tarball has SHA-256 $sum, expected $IOR_SHA256" >&2
        exit 1
    fi
    ior_debs=(libopenmpi-dev openmpi-bin autoconf automake libtool pkg-config make gcc)
    if ! dpkg -s "${ior_debs[@]}" >/dev/null 2>&1; then
        echo "install.sh: installing ${ior_debs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${ior_debs[@]}" >/dev/null
    fi
    echo "install.sh: building IOR and mdtest from $ior_tarball into $ior_prefix"
    build="$(mktemp -d /tmp/ior-build.XXXXXX)"
    log="$build.log"
    if ! (tar -xzf "$ior_tarball" -C "$build" --strip-components=1 && cd "$build" && ./bootstrap \
        && ./configure --prefix="$ior_prefix" CC=mpicc && make -j"$(nproc)" && make install) \
        >"$log" 2>&1; then
        echo "install.sh: building IOR failed; the last lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    echo "$IOR_SHA256" >"$ior_stamp"
    rm -rf "$build" "$log"
fi

echo "install.sh: $(fio --version), $(pjdfstest --version), $(fsx --version)," \
    "ior and mdtest in $ior_prefix/bin, user tests $(id -u tests):$(id -g tests)"
