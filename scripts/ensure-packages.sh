#!/usr/bin/env bash
# Make sure the Debian packages a Makefile target needs are installed.
#
# Usage: scripts/ensure-packages.sh <build|test|demo|demo-slurm|bench>
#
# Fast path: when every package is already installed this only runs
# dpkg-query and prints nothing. Otherwise, on Debian/Ubuntu as root, it
# installs the missing packages with apt-get; anywhere else it prints the
# command to run and exits 1.
#
# Environment:
#   CARGO              the cargo to look for on PATH (default: cargo; the
#                      Makefile passes its $(CARGO)).
#   PM_EXTRA_PACKAGES  space-separated extra Debian packages to require on top
#                      of the group's list (also handy for testing this script
#                      with a package that is not installed).
#   PM_SKIP_PACKAGES=1 skip the package check entirely (non-Debian hosts that
#                      provide the libraries some other way). cargo is still
#                      checked.
set -euo pipefail

# Package lists per target group. Extend the group that needs a package
# (e.g. slurm-wlm munge libfabric-dev for `test`), not the shared base.
#   openmpi-bin libopenmpi-dev  MPI runtime and headers (mpirun, mpicc, libmpi)
#   hwloc libhwloc-dev          topology discovery (lstopo, libhwloc)
#   libclang-dev clang          bindgen, used by the `mpi` (rsmpi) crate's build script
#   libudev-dev pkg-config      needed to build/link `hwlocality`; library discovery
#   gfortran                    the compiler behind Open MPI's mpif90 (`use pm`, heat_f, make install)
#   slurm-wlm munge              a real Slurm that the tests and demo-slurm start (slurm/cluster.sh)
#   libslurm-dev                 Slurm's spank.h, for the SPANK plugin (slurm/)
#   libfabric-dev libfabric-bin  libfabric 1.17 headers and fi_info, for transport-fabric/
BASE_PACKAGES="openmpi-bin libopenmpi-dev hwloc libhwloc-dev libclang-dev libudev-dev pkg-config clang"
SLURM_PACKAGES="slurm-wlm munge"
BUILD_PACKAGES="$BASE_PACKAGES gfortran libslurm-dev libfabric-dev"
TEST_PACKAGES="$BASE_PACKAGES gfortran $SLURM_PACKAGES libslurm-dev libfabric-dev libfabric-bin"
DEMO_PACKAGES="$BASE_PACKAGES gfortran"
BENCH_PACKAGES="$BASE_PACKAGES"

prog=${0##*/}

usage() {
    echo "usage: $prog <build|test|demo|demo-slurm|bench>" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
group=$1
case "$group" in
    build) packages=$BUILD_PACKAGES ;;
    test) packages=$TEST_PACKAGES ;;
    demo) packages=$DEMO_PACKAGES ;;
    demo-slurm) packages="$DEMO_PACKAGES $SLURM_PACKAGES libslurm-dev" ;;
    bench) packages=$BENCH_PACKAGES ;;
    *) echo "$prog: unknown target group '$group'" >&2; usage ;;
esac
packages="$packages ${PM_EXTRA_PACKAGES:-}"

cargo=${CARGO:-cargo}
if ! command -v "$cargo" >/dev/null 2>&1; then
    echo "ensure-packages: \`$cargo\` is not on PATH (or not executable)." >&2
    cat >&2 <<'MSG'
Install the Rust toolchain with rustup (https://rustup.rs), e.g.
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
then open a new shell (or `. "$HOME/.cargo/env"`) and re-run make.
MSG
    exit 1
fi

if [[ ${PM_SKIP_PACKAGES:-0} == 1 ]]; then
    exit 0
fi

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in $packages; do
        # Unknown packages make dpkg-query fail; removed-but-configured ones
        # report "deinstall ok config-files". Only this exact status counts.
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        if [[ $status != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
else
    # No dpkg: we cannot tell what is installed, so treat everything as missing
    # and let the message below say what is needed.
    read -r -a missing <<<"$packages"
fi

[[ ${#missing[@]} -eq 0 ]] && exit 0

debian_like=0
if [[ -r /etc/os-release ]]; then
    os_ids=$(. /etc/os-release && echo "${ID:-} ${ID_LIKE:-}")
    case " $os_ids " in
        *" debian "* | *" ubuntu "*) debian_like=1 ;;
    esac
fi

if [[ $debian_like == 1 && $(id -u) -eq 0 ]]; then
    echo "ensure-packages: installing ${missing[*]} (needed by 'make $group')" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    exit 0
fi

{
    echo "ensure-packages: 'make $group' needs packages that are not installed: ${missing[*]}"
    if [[ $debian_like == 1 ]]; then
        echo "Install them as root:"
    else
        echo "On Debian/Ubuntu, install them as root with:"
    fi
    echo "    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ $debian_like != 1 ]]; then
        echo "Other distributions need the equivalent packages (names differ);"
        echo "set PM_SKIP_PACKAGES=1 to skip this check once they are installed."
    fi
} >&2
exit 1
