# pmrun developer entry points. `make` (or `make help`) lists the targets.
#
# Every target first runs scripts/ensure-packages.sh for its group, which is
# silent when the Debian packages (Open MPI, hwloc, libclang, ...) are already
# installed and installs or names them otherwise.

CARGO ?= cargo
# Extra arguments for `make bench`, e.g. make bench BENCH_ARGS='ckpt --size 256MiB --json'
BENCH_ARGS ?= ckpt --json
# Seconds `make fuzz` (and `make test`) fuzzes each decoder for.
FUZZ_SECONDS ?= 60
# Where `make install` puts bin/, lib/ and include/ (DESTDIR=... stages them),
# and the cargo profile it builds (PROFILE=dev installs the target/debug build).
PREFIX ?= /usr/local
PROFILE ?= release
PROFILE_DIR = $(if $(filter dev,$(PROFILE)),debug,$(PROFILE))

ENSURE_SCRIPT := $(dir $(lastword $(MAKEFILE_LIST)))scripts/ensure-packages.sh
ENSURE_PACKAGES = CARGO='$(CARGO)' bash $(ENSURE_SCRIPT)

ifeq ($(origin CARGO_TERM_COLOR),undefined)
export CARGO_TERM_COLOR := always
endif

.DEFAULT_GOAL := help
.PHONY: help build lib install test fuzz demo demo-slurm bench clean

help:
	@echo 'pmrun targets:'
	@echo '  make help    show this list (default)'
	@echo '  make build   release build of the whole workspace'
	@echo '  make lib     release libpm.so and target/release/pkgconfig/pm.pc for C/C++/Fortran'
	@echo '  make install release build, then pmrun, pmd, libpm.so, pm.h, the Fortran module pm'
	@echo '               and pm.pc into PREFIX=$(PREFIX) (DESTDIR stages, PROFILE=dev: the debug build)'
	@echo '  make test    cargo fmt --check, clippy -D warnings, cargo test --workspace, make fuzz (what CI runs)'
	@echo '  make fuzz    cargo fuzz every decoder of untrusted input for FUZZ_SECONDS=$(FUZZ_SECONDS) s each'
	@echo '  make demo    an MPI job killed and resumed bit-exactly, then the store surviving damage'
	@echo '  make demo-slurm  the same under a real Slurm started on this machine: a node lost,'
	@echo '               a node drained by the administrator, a stop before the time limit and resume'
	@echo '  make bench   run pmbench $(BENCH_ARGS) (1 GiB in /dev/shm by default; override BENCH_ARGS)'
	@echo '  make clean   cargo clean'
	@echo 'Each target except help and clean first installs or names missing Debian packages.'

build:
	@$(ENSURE_PACKAGES) build
	$(CARGO) build --release --workspace

# libpm.so and a pm.pc pointing at it and at include/, for
#   PKG_CONFIG_PATH=target/release/pkgconfig mpicc app.c $$(pkg-config --cflags --libs pm)
lib:
	@$(ENSURE_PACKAGES) build
	$(CARGO) build --release -p pm
	@mkdir -p target/release/pkgconfig
	@sed -e "s|@LIBDIR@|$(CURDIR)/target/release|" -e "s|@INCLUDEDIR@|$(CURDIR)/include|" \
	     -e "s|@VERSION@|$$(sed -n 's/^version = \"\(.*\)\"/\1/p' Cargo.toml | head -1)|" \
	     plugin/pm.pc.in > target/release/pkgconfig/pm.pc
	@echo "wrote target/release/pkgconfig/pm.pc"

# scripts/install.sh lists what goes where.
install:
	@$(ENSURE_PACKAGES) build
	$(CARGO) build --profile $(PROFILE) -p pm -p pm-launcher
	DESTDIR='$(DESTDIR)' bash scripts/install.sh target/$(PROFILE_DIR) '$(PREFIX)'

test:
	@$(ENSURE_PACKAGES) test
	@echo '==> cargo fmt --check'
	$(CARGO) fmt --all -- --check
	@echo '==> cargo clippy (warnings are errors)'
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@echo '==> cargo build (the tests run the workspace binaries and libpm.so)'
	$(CARGO) build --workspace --all-targets
	@echo '==> cargo test'
	$(CARGO) test --workspace
	@echo '==> cargo fuzz (each decoder of untrusted input for $(FUZZ_SECONDS) s)'
	CARGO='$(CARGO)' bash scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz:
	@$(ENSURE_PACKAGES) build
	CARGO='$(CARGO)' bash scripts/fuzz.sh $(FUZZ_SECONDS)

demo:
	@$(ENSURE_PACKAGES) demo
	$(CARGO) build --release -q -p heat -p pm-launcher -p pm-core --examples --bins
	@bash scripts/demo.sh

demo-slurm:
	@$(ENSURE_PACKAGES) demo-slurm
	$(CARGO) build --release -q -p heat -p pm-launcher -p pm-slurm
	@bash scripts/demo-slurm.sh

bench:
	@$(ENSURE_PACKAGES) bench
	$(CARGO) build --release -q -p pm-bench -p heat -p pm-launcher
	./target/release/pmbench $(BENCH_ARGS)

clean:
	$(CARGO) clean
