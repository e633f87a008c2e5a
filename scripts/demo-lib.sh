# What scripts/demo.sh and scripts/demo-slurm.sh share: output helpers and
# the demo clock. Sourced, not run.

say() { printf '%s\n' "$*"; }
indent() { sed 's/^/      /'; }
# The checksum heat printed last in file $1.
checksum() { sed -n 's/^heat: checksum \([0-9a-f]*\).*/\1/p' "$1" | tail -1; }
t0=$(date +%s.%N)
now() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%5.1f s", b - a }'; }
step() { say ""; say "[$(now)] $*"; }
