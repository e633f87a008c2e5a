#!/usr/bin/env bash
# `make demo`: an MPI job under pmrun loses a rank mid-run, is relaunched from
# its last committed checkpoint and ends with exactly the result of an
# undisturbed run; then the checkpoint store shows how it survives a damaged
# snapshot.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=target/release
heat=(--rows 512 --cols 512 --steps 400)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export PM_STORE=${PM_STORE:-/dev/shm/pmrun-demo-$$}
log=$(mktemp)
trap 'rm -rf "$PM_STORE" "$log"' EXIT

say() { printf '%s\n' "$*"; }
checksum() { sed -n 's/^heat: checksum \([0-9a-f]*\).*/\1/p' "$1"; }

say "pmrun demo, part 1: a 4-rank MPI job survives SIGKILL"
say ""
say "1. The undisturbed run: mpirun -n 4 heat ${heat[*]}"
PM_JOB=demo-reference mpirun -n 4 "$bin/heat" "${heat[@]}" >"$log" 2>&1
reference=$(checksum "$log")
say "   final checksum $reference"
say ""
say "2. The same job under pmrun, checkpointing every 25 steps, slowed to watch it:"
say "   pmrun -n 4 --every 25 heat ${heat[*]} --pause-ms 15"
"$bin/pmrun" -n 4 --every 25 --job demo "$bin/heat" "${heat[@]}" --pause-ms 15 >"$log" 2>&1 &
pmrun_pid=$!
sleep 3
victim=$(pgrep -x heat | sed -n 3p)
say "   After 3 s, rank process $victim is killed with SIGKILL, as a crash would."
kill -9 "$victim"
wait "$pmrun_pid"
say "   pmrun noticed, and relaunched the job from its last committed checkpoint:"
grep -o 'relaunching from its committed checkpoint.*' "$log" | sed 's/^/   pmrun: /'
sed -n 's/^heat: /   heat: /p' "$log"
resumed=$(checksum "$log")
if [[ "$resumed" == "$reference" ]]; then
    say "   The checksum equals the undisturbed run's, bit for bit."
else
    say "   MISMATCH: $resumed differs from $reference" >&2
    exit 1
fi
say ""
"$bin/examples/store_demo" | sed 's/^pmrun demo: /pmrun demo, part 2: /'
