#!/usr/bin/env bash
# `make demo-slurm` (the Makefile builds the release binaries first).
#
# A real Slurm on this machine (slurm/cluster.sh: its own munged, slurmctld
# and 4 slurmd, n1..n4 on 127.0.0.2..5) runs heat under pmrun in batch jobs:
#   1. a node loses power: its ranks resume on the spare, same allocation;
#   2. an administrator drains a node: pmrun empties it;
#   3. the job is told its time is up (SIGUSR1): it stops at a checkpoint,
#      flushes it to a shared directory, and the same script in a new
#      allocation resumes it from there (the SPANK plugin's epilog removed
#      the node stores in between).
# Every job ends with the checksum of an undisturbed mpirun run.
#
# Needs bash, coreutils, grep, sed and awk besides the workspace's binaries,
# Open MPI and Slurm (make demo-slurm installs slurm-wlm and munge).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

bin=$root/target/release
for b in pmrun pmd heat libpm_slurm.so; do
    if [[ ! -x $bin/$b ]]; then
        echo "demo-slurm: $bin/$b is missing; run \`make demo-slurm\`, which builds it" >&2
        exit 1
    fi
done

heat=(--rows 96 --cols 64 --steps 400 --pause-ms 25)
cluster=$(mktemp -d /tmp/pm-demo-slurm.XXXXXX)
store=$(mktemp -d /dev/shm/pm-demo-slurm.XXXXXX)
flush=$(mktemp -d /tmp/pm-demo-flush.XXXXXX)
port=${PM_SLURM_PORT:-18817}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

cleanup() {
    [[ -n ${SLURM_CONF:-} ]] && scancel --quiet --user=root 2>/dev/null || true
    PM_SLURM_PORT=$port slurm/cluster.sh stop "$cluster" >/dev/null 2>&1 || true
    rm -rf "$cluster" "$store" "$flush"
}
trap cleanup EXIT
trap 'echo "demo-slurm FAILED: line $LINENO: $BASH_COMMAND" >&2' ERR

# shellcheck source=scripts/demo-lib.sh
. scripts/demo-lib.sh
fail() {
    say "demo-slurm FAILED: $*" >&2
    tail -n 20 "$cluster"/log/*.log >&2 || true
    exit 1
}

# The batch script of job $1: heat under pmrun, pmrun options $2.
batch() {
    cat <<EOF
#!/bin/bash
# Several slurmds on one machine: Open MPI over TCP on loopback.
export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo PM_HISTORY=none
exec $bin/pmrun -n 6 -v --store $store --job $1 --every 20 --heartbeat 0.5 --fail-after 2 $2 $bin/heat ${heat[*]}
EOF
}
submit() { # submit JOB "PMRUN OPTIONS" SBATCH-ARGS...
    local job=$1 opts=$2
    shift 2
    batch "$job" "$opts" >"$cluster/$job.sh"
    sbatch --parsable --output="$cluster/$job-%j.out" "$@" "$cluster/$job.sh"
}
output() { cat "$cluster/$1-$2.out" 2>/dev/null || true; }
state() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
exit_code() { scontrol show job -o "$1" 2>/dev/null | grep -o 'ExitCode=[0-9:]*' | cut -d= -f2; }
wait_end() { # wait_end JOBID SECONDS
    local end=$((SECONDS + $2)) s
    while :; do
        s=$(state "$1")
        case $s in PENDING | RUNNING | CONFIGURING | COMPLETING | "") ;; *) return 0 ;; esac
        ((SECONDS < end)) || fail "batch job $1 did not end within $2 s (state $s)"
        sleep 0.3
    done
}
wait_commit() { # wait_commit JOB
    local end=$((SECONDS + 120))
    until "$bin/pmrun" ctl --store "$store" --job "$1" status --json 2>/dev/null | grep -q '"committed":{'; do
        ((SECONDS < end)) || fail "job $1 committed no checkpoint within 2 minutes"
        sleep 0.2
    done
}
pmrun_lines() { grep -E "$2" "$1" | grep -v 'epoch .* committed' | indent; }
match() { # match OUTPUT-FILE WHAT
    local got
    got=$(checksum "$1")
    say "      undisturbed run (mpirun):  $reference"
    say "      $2 ${got:-none}"
    [[ -n $got && $got == "$reference" ]] || fail "MISMATCH"
    say "      MATCH"
}

say "pmrun demo under Slurm: a batch job that loses a node, is drained, and is stopped in time"
say "========================================================================================"
step "The cluster: slurm/cluster.sh start (munged, slurmctld, slurmd n1..n4 on 127.0.0.2..5),"
say "   with pmrun's SPANK plugin in plugstack.conf."
PM_SLURM_PORT=$port PM_SLURM_PLUGIN=$bin/libpm_slurm.so PM_SLURM_PLUGIN_ARGS=pmrun=$bin/pmrun \
    slurm/cluster.sh start "$cluster" | indent
eval "$(slurm/cluster.sh env "$cluster")"
sinfo -N | indent

step "The reference: mpirun -n 6 heat ${heat[*]} --no-pm, undisturbed."
reference=$(mpirun -n 6 "$bin/heat" "${heat[@]}" --no-pm 2>&1 | sed -n 's/^heat: checksum \([0-9a-f]*\).*/\1/p')
[[ -n $reference ]] || fail "the reference run printed no checksum"
say "      checksum $reference"

# ---------------------------------------------------------------------------
step "1. A node loses power. sbatch --no-kill -N4 -n6, pmrun --spare 1 (n4 is kept free):"
batch lost-node "--spare 1" | sed -n 4p | indent
id=$(submit lost-node "--spare 1" --no-kill -N4 -n6)
wait_commit lost-node
say "   A checkpoint is committed; slurm/cluster.sh kill-node n2 (slurmd, its steps, its ranks):"
slurm/cluster.sh kill-node n2 "$cluster" | indent
wait_end "$id" 240
out=$cluster/lost-node-$id.out
pmrun_lines "$out" 'declared dead|relaunching|launching|handled'
say "   Slurm marked n2 $(sinfo -h -n n2 -o %T); the job went on in its allocation ($(state "$id"))."
match "$out" "after losing n2 (pmrun):"

# ---------------------------------------------------------------------------
step "2. An administrator drains a node: scontrol update nodename=n3 state=drain reason=\"disk swap\"."
id=$(submit admin-drain "--spare 1 --slurm-poll 1" -N3 -n6 -x n2)
wait_commit admin-drain
scontrol update nodename=n3 state=drain reason="disk swap"
wait_end "$id" 240
out=$cluster/admin-drain-$id.out
pmrun_lines "$out" 'in Slurm|draining|drained:|launching'
match "$out" "after n3 was drained (pmrun):"
scontrol update nodename=n3 state=resume

# ---------------------------------------------------------------------------
step "3. Time is up: what sbatch --signal=B:USR1@SECONDS does, sent now with scancel --batch --signal=USR1."
say "   Submitted with sbatch --pm-flush=$flush --pm-store=$store (the plugin's options):"
id=$(submit time-limit "" -N3 -n6 -x n2 --pm-flush="$flush" --pm-store="$store")
wait_commit time-limit
scancel --batch --signal=USR1 "$id"
wait_end "$id" 240
out=$cluster/time-limit-$id.out
pmrun_lines "$out" 'SIGUSR1|job stopped|stopping at|flush'
say "   The batch job ended with exit code $(exit_code "$id") (75: stopped, kept)."
left=$(find "$store" -path "*/time-limit/*" -type f | wc -l)
say "   The epilog left $left file(s) of the job in the node stores; the flushed copy: $(ls "$flush/time-limit" | tr '\n' ' ')"
say "   The same script in a new allocation:"
id=$(submit time-limit "" -N3 -n6 -x n2 --pm-flush="$flush" --pm-store="$store")
wait_end "$id" 240
out=$cluster/time-limit-$id.out
pmrun_lines "$out" 'flushed one|resuming|launching|resumed|checksum'
match "$out" "stopped and resumed from the flushed copy (pmrun):"

say ""
say "   Done in $(now). Stopping the cluster."
