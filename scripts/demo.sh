#!/usr/bin/env bash
# `make demo`: an MPI job killed mid-run resumes from its last committed
# checkpoint and ends with exactly the result of an undisturbed run; then the
# checkpoint store shows how it survives a damaged snapshot.
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
say "2. The same job, checkpointing every 25 steps (PM_EVERY=25), slowed to watch it."
export PM_JOB=demo PM_EVERY=25
mpirun -n 4 "$bin/heat" "${heat[@]}" --pause-ms 15 >"$log" 2>&1 &
mpirun_pid=$!
sleep 3
victim=$(pgrep -x heat | sed -n 3p)
say "   after 3 s, rank process $victim is killed with SIGKILL (as a node failure would)."
kill -9 "$victim"
wait "$mpirun_pid" || say "   mpirun stops the job: $(grep -m1 -o 'exited on signal 9 (Killed)' "$log" || echo 'a rank died')"
say ""
say "3. The same command is run again; pm restores the newest committed checkpoint."
mpirun -n 4 "$bin/heat" "${heat[@]}" --pause-ms 15 >"$log" 2>&1
sed -n 's/^heat: /   /p' "$log"
resumed=$(checksum "$log")
if [[ "$resumed" == "$reference" ]]; then
    say "   The checksum equals the undisturbed run's, bit for bit."
else
    say "   MISMATCH: $resumed differs from $reference" >&2
    exit 1
fi
say ""
"$bin/examples/store_demo" | sed 's/^pmrun demo: /pmrun demo, part 2: /'
