#!/usr/bin/env bash
# A real Slurm test cluster on this machine: its own munged, one slurmctld
# and NODES slurmd (`slurmd -N nX`), each node on its own loopback address
# (127.0.0.2, 127.0.0.3, ...). Everything it needs lives under one directory:
# configuration, munge key and socket, state, spools, logs and the per-node
# TmpFS that PMIx derives its directory from. It touches neither
# /etc/slurm nor the system's munged, so it never talks to another Slurm.
#
# Usage: slurm/cluster.sh start|stop|status|env|kill-node NAME|revive-node NAME [DIR]
#
#   start   write the configuration, start munged, slurmctld and the
#           slurmds, and wait until every node is idle
#   stop    stop every daemon of the cluster in DIR (and nothing else)
#   status  sinfo of the cluster
#   env     the line to eval so that sbatch, srun, sinfo, ... use it:
#               eval "$(slurm/cluster.sh env)"
#   kill-node NAME [DIR]
#           a power cut of node NAME: SIGKILL to its slurmd, its
#           slurmstepds (they hold its log open) and every task on it
#           (SLURMD_NODENAME=NAME)
#   revive-node NAME [DIR]
#           power back: start its slurmd again, resume it, wait until idle
#
# Environment:
#   PM_SLURM_DIR   the cluster's directory (default /tmp/pm-slurm); DIR wins
#   PM_SLURM_NODES how many slurmd (default 4: n1..n4)
#   PM_SLURM_PORT  slurmctld's port; node k listens on PORT+k (default 16817)
#   PM_SLURM_CPUS  CPUs each node declares (default 2)
#   PM_SLURM_PLUGIN a SPANK plugin (.so) for plugstack.conf (optional)
#   PM_SLURM_PLUGIN_ARGS its arguments there (e.g. pmrun=/path/to/pmrun)
set -euo pipefail

prog=${0##*/}
usage() {
    sed -n '9,30p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -ge 1 && $# -le 3 ]] || usage
cmd=$1
shift
victim=
if [[ $cmd == kill-node || $cmd == revive-node ]]; then
    [[ $# -ge 1 ]] || usage
    victim=$1
    shift
fi
[[ $# -le 1 ]] || usage
dir=${1:-${PM_SLURM_DIR:-/tmp/pm-slurm}}
nodes=${PM_SLURM_NODES:-4}
port=${PM_SLURM_PORT:-16817}
cpus=${PM_SLURM_CPUS:-2}
conf=$dir/etc/slurm.conf
socket=$dir/munge/munge.socket

die() {
    echo "$prog: $*" >&2
    exit 1
}

need() {
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 ||
            die "$c is not installed: apt-get install slurm-wlm munge (make test installs them)"
    done
}

slurm_env() {
    echo "export SLURM_CONF=$conf"
}

names() {
    local i
    for ((i = 1; i <= nodes; i++)); do echo "n$i"; done
}

write_config() {
    mkdir -p "$dir"/{etc,munge,state,log,run,spool}
    chmod 700 "$dir/munge"
    local i
    {
        echo "# Written by $prog: a test cluster of $nodes nodes on this machine."
        echo "ClusterName=pmtest"
        echo "SlurmctldHost=localhost(127.0.0.1)"
        echo "SlurmctldPort=$port"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        # Our own munged: its socket, not the system's.
        echo "AuthInfo=socket=$socket"
        echo "StateSaveLocation=$dir/state"
        echo "SlurmdSpoolDir=$dir/spool/%n"
        echo "SlurmctldPidFile=$dir/run/slurmctld.pid"
        echo "SlurmdPidFile=$dir/run/slurmd-%n.pid"
        echo "SlurmctldLogFile=$dir/log/slurmctld.log"
        echo "SlurmdLogFile=$dir/log/slurmd-%n.log"
        echo "SlurmctldDebug=info"
        echo "SlurmdDebug=info"
        # PMIx derives its per-node directory from TmpFS: one per slurmd.
        echo "TmpFS=$dir/tmp-%n"
        echo "PlugStackConfig=$dir/etc/plugstack.conf"
        # Every node runs on this one machine: no cgroups, no binding.
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "SwitchType=switch/none"
        echo "MpiDefault=none"
        echo "SchedulerType=sched/backfill"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core"
        echo "SlurmdParameters=config_overrides"
        echo "JobCompType=jobcomp/none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "ReturnToService=2"
        # Failures found quickly, jobs forgotten quickly.
        echo "SlurmdTimeout=10"
        echo "SlurmctldTimeout=10"
        echo "MessageTimeout=5"
        echo "KillWait=5"
        echo "MinJobAge=30"
        echo "InactiveLimit=0"
        echo "Waittime=0"
        for ((i = 1; i <= nodes; i++)); do
            echo "NodeName=n$i NodeAddr=127.0.0.$((i + 1)) Port=$((port + i)) CPUs=$cpus RealMemory=1024 State=UNKNOWN"
        done
        echo "PartitionName=pm Nodes=n[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4"
    } >"$conf"
    if [[ -n ${PM_SLURM_PLUGIN:-} ]]; then
        echo "required $PM_SLURM_PLUGIN${PM_SLURM_PLUGIN_ARGS:+ $PM_SLURM_PLUGIN_ARGS}" \
            >"$dir/etc/plugstack.conf"
    else
        : >"$dir/etc/plugstack.conf"
    fi
    for n in $(names); do
        mkdir -p "$dir/spool/$n" "$dir/tmp-$n"
    done
    if [[ ! -s $dir/munge/munge.key ]]; then
        # 1 KiB of randomness: munged's own key format.
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$dir/munge/munge.key"
    fi
}

pid_alive() {
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for ((i = 0; i < secs * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "$prog: $what did not happen within $secs s; logs in $dir/log:" >&2
    tail -n 20 "$dir"/log/*.log >&2 2>/dev/null || true
    return 1
}

all_idle() {
    local states
    states=$(SLURM_CONF=$conf sinfo -h -N -o '%T' 2>/dev/null) || return 1
    [[ $(grep -c '^idle' <<<"$states") == "$nodes" ]]
}

start() {
    need munged slurmctld slurmd sinfo
    if pid_alive "$dir/run/slurmctld.pid"; then
        die "a cluster already runs in $dir (stop it first: $prog stop $dir)"
    fi
    write_config
    munged --socket="$socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munge.seed" --force
    wait_for "munged's start" 10 test -S "$socket"
    # -i: a fresh start, forgetting jobs of an earlier cluster in DIR.
    SLURM_CONF=$conf slurmctld -i
    wait_for "slurmctld's start" 30 env SLURM_CONF="$conf" scontrol ping
    for n in $(names); do
        SLURM_CONF=$conf slurmd -N "$n"
    done
    wait_for "every node idle" 60 all_idle
    echo "$prog: $nodes nodes up in $dir ($(slurm_env))"
}

stop() {
    local f pid
    for f in "$dir"/run/slurmd-*.pid "$dir/run/slurmctld.pid" "$dir/run/munged.pid"; do
        [[ -s $f ]] || continue
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Wait for them, then make sure.
    for f in "$dir"/run/*.pid; do
        [[ -s $f ]] || continue
        pid=$(cat "$f")
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}

kill_node() {
    local n=$1 pids=() p log env ctld_port
    log=$dir/log/slurmd-$n.log
    [[ -f $log ]] || die "no node $n in the cluster in $dir"
    ctld_port=$(sed -n 's/^SlurmctldPort=//p' "$conf")
    [[ -s $dir/run/slurmd-$n.pid ]] && pids+=("$(cat "$dir/run/slurmd-$n.pid")")
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        # The node's slurmstepds: they keep its log open.
        if ls -l "/proc/$p/fd" 2>/dev/null | grep -q -- "-> $log\$"; then
            pids+=("$p")
        # Its tasks (of this cluster: another may have a node of that name).
        elif env=$({ tr '\0' '\n' <"/proc/$p/environ"; } 2>/dev/null) &&
            grep -qx "SLURMD_NODENAME=$n" <<<"$env" &&
            grep -q "^SLURM_WORKING_CLUSTER=pmtest:[^:]*:$ctld_port:" <<<"$env"; then
            pids+=("$p")
        fi
    done
    ((${#pids[@]})) || die "node $n has no process to kill"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    echo "$prog: killed node $n (${#pids[@]} processes)"
}

node_idle() {
    [[ $(SLURM_CONF=$conf sinfo -h -n "$1" -o '%T' 2>/dev/null) == idle ]]
}

revive_node() {
    local n=$1
    [[ -f $dir/log/slurmd-$n.log ]] || die "no node $n in the cluster in $dir"
    pid_alive "$dir/run/slurmd-$n.pid" || SLURM_CONF=$conf slurmd -N "$n"
    SLURM_CONF=$conf scontrol update nodename="$n" state=resume 2>/dev/null || true
    wait_for "node $n idle again" 60 node_idle "$n"
    echo "$prog: node $n is back"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) SLURM_CONF=$conf sinfo -N ;;
    env) slurm_env ;;
    kill-node) kill_node "$victim" ;;
    revive-node) revive_node "$victim" ;;
    *) usage ;;
esac
