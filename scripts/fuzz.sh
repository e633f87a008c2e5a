#!/usr/bin/env bash
# Fuzz every decoder of input that crosses a trust boundary (fuzz/, the
# checks in core/src/fuzz.rs) for a bounded time each, starting from the
# seed corpus in fuzz/corpus/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default: 60 s, every target)
#
# Installs cargo-fuzz with cargo if it is missing. cargo-fuzz's sanitizer
# flags are nightly-only; RUSTC_BOOTSTRAP=1 lets the stable toolchain take
# them. New corpus entries go to a scratch directory, so the tree stays as it
# was. A finding fails the run and names the input to keep: copy it into
# fuzz/regressions/<target>/, where `make test` replays it from then on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO=${CARGO:-cargo}
seconds=${1:-60}
shift || true

if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    "$CARGO" install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1

cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <("$CARGO" fuzz list)
    echo "==> cargo fuzz build (every target)"
    "$CARGO" fuzz build -O
else
    for t in "${targets[@]}"; do
        echo "==> cargo fuzz build $t"
        "$CARGO" fuzz build -O "$t"
    done
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# Two cores run several fuzzers at once well enough: each still gets its
# wall-clock minute, and the run takes two of them instead of seven.
parallel=$(( $(nproc) * 2 ))
echo "==> fuzzing each of ${#targets[@]} targets for ${seconds} s, ${parallel} at a time"
run() {
    local t=$1
    mkdir -p "$scratch/$t" "artifacts/$t"
    if "$CARGO" fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$scratch/$t.log" 2>&1; then
        echo "$t: no finding in ${seconds} s ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$t.log" | grep -o '[0-9]*$' || echo '?') inputs)"
    else
        tail -n 40 "$scratch/$t.log"
        echo "$t: FINDING in fuzz/artifacts/$t/: fix it, then copy the input into fuzz/regressions/$t/" >&2
        return 1
    fi
}
failed=0
pids=()
for t in "${targets[@]}"; do
    run "$t" &
    pids+=($!)
    if [ ${#pids[@]} -ge "$parallel" ]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do
    wait "$p" || failed=1
done
exit $failed
