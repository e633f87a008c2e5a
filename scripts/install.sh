#!/usr/bin/env bash
# Install pmrun and the rank runtime under a prefix; `make install` runs this
# after its cargo build.
#
# Usage: scripts/install.sh <build-dir> <prefix>
#   <build-dir>  cargo's output directory holding pmrun, pmd and libpm.so
#                (target/release; target/debug for a dev build)
#   <prefix>     an absolute path, e.g. /usr/local
#
# Installs
#   <prefix>/bin/pmrun, pmd           pmrun starts the pmd next to it
#   <prefix>/lib/libpm.so             the rank runtime
#   <prefix>/lib/libpm_fortran.a      the compiled code of the Fortran module `pm`
#   <prefix>/include/pm.h             the C ABI
#   <prefix>/include/pm.f90, pm.mod   the Fortran module `pm` and its module file
#   <prefix>/lib/pkgconfig/pm.pc      the flags that build against these files
#
# Environment:
#   DESTDIR  stage the files under $DESTDIR<prefix> (packaging); pm.pc and
#            the rpath it gives programs still name <prefix>.
#   FC       the Fortran compiler for pm.mod and libpm_fortran.a (default
#            mpif90). A .mod file only works with the compiler that wrote
#            it; other compilers compile <prefix>/include/pm.f90 themselves.
set -euo pipefail

prog=${0##*/}
if [[ $# -ne 2 ]]; then
    echo "usage: $prog <build-dir> <prefix>" >&2
    exit 2
fi
build=$1
prefix=${2%/}
if [[ $2 != /* ]]; then
    echo "$prog: the prefix must be an absolute path, not '$2'" >&2
    exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for f in pmrun pmd libpm.so; do
    if [[ ! -f $build/$f ]]; then
        echo "$prog: $build/$f is missing: build it first with" >&2
        echo "    cargo build --release -p pm -p pm-launcher   (make install does)" >&2
        exit 1
    fi
done
fc=${FC:-mpif90}
if ! command -v "$fc" >/dev/null 2>&1; then
    echo "$prog: the Fortran compiler '$fc' is not on PATH; it makes pm.mod." >&2
    echo "Install gfortran and Open MPI's development files (scripts/ensure-packages.sh build)." >&2
    exit 1
fi

dest=${DESTDIR:-}$prefix
install -d "$dest/bin" "$dest/lib/pkgconfig" "$dest/include"
install -m 755 "$build/pmrun" "$build/pmd" "$dest/bin/"
install -m 755 "$build/libpm.so" "$dest/lib/"
install -m 644 "$repo/include/pm.h" "$repo/include/pm.f90" "$dest/include/"

# The Fortran module, compiled in a directory of its own (compilers write
# the .mod file into the current directory).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && "$fc" -O2 -fPIC -c "$repo/include/pm.f90" -o pm.o)
rm -f "$dest/lib/libpm_fortran.a"
ar rcs "$dest/lib/libpm_fortran.a" "$work/pm.o"
install -m 644 "$work/pm.mod" "$dest/include/"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
sed -e "s|@LIBDIR@|$prefix/lib|" -e "s|@INCLUDEDIR@|$prefix/include|" -e "s|@VERSION@|$version|" \
    -e "s|^fortranlibs=.*|fortranlibs=-lpm_fortran|" \
    "$repo/plugin/pm.pc.in" >"$dest/lib/pkgconfig/pm.pc"
chmod 644 "$dest/lib/pkgconfig/pm.pc"

echo "installed pmrun, pmd, libpm.so, pm.h, the Fortran module pm and pm.pc under ${dest:-/}"
