#!/usr/bin/env bash
# `make demo` (the Makefile builds the release binaries first).
#
# Part 1: an 8-rank MPI job runs under pmrun on 4 virtual nodes on this
# machine. One node is killed outright, another is drained for maintenance,
# and the job still ends with exactly the result of an undisturbed run.
# Part 2: the checkpoint store survives a damaged snapshot.
# Part 3: the same job on 4 virtual nodes, one of them given an eighth of a
# core (enforced by a cgroup v1 CPU quota; skipped where that cannot be):
# pmrun measures it, decides that moving ranks away pays, moves them, and
# the job steps faster, with the checksum of an undisturbed run.
#
# It only needs bash, coreutils, grep, sed and awk besides the workspace's own
# binaries and Open MPI (no jq or python).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=target/release
for b in pmrun pmd heat examples/store_demo; do
    if [[ ! -x $bin/$b ]]; then
        echo "demo: $bin/$b is missing; run \`make demo\`, which builds it" >&2
        exit 1
    fi
done

heat=(--rows 128 --cols 128 --steps 500)
pause=(--pause-ms 30)
victim=node2  # killed
drained=node3 # drained afterwards

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export PM_STORE=${PM_STORE:-/dev/shm/pmrun-demo-$$}
job=demo-$$
log=$(mktemp)
ref_log=$(mktemp)
log3=$(mktemp)
ref3_log=$(mktemp)
pmrun_pid=
cleanup() {
    if [[ -n $pmrun_pid ]] && kill -0 "$pmrun_pid" 2>/dev/null; then
        kill -TERM "$pmrun_pid" 2>/dev/null || true # pmrun stops its job and agents
        wait "$pmrun_pid" 2>/dev/null || true
    fi
    rm -rf "$PM_STORE" "$log" "$ref_log" "$log3" "$ref3_log"
}
trap cleanup EXIT
trap 'echo "demo FAILED: line $LINENO: $BASH_COMMAND" >&2' ERR

# shellcheck source=scripts/demo-lib.sh
. scripts/demo-lib.sh

ctl() { "$bin/pmrun" ctl --store "$PM_STORE" --job "$job" "$@"; }
status_json() { ctl status --json 2>/dev/null || true; }
# One node's object from the status JSON (node objects hold no braces).
node_json() { grep -o '{[^{}]*"name":"'"$2"'"[^{}]*}' <<<"$1" | head -1; }

fail() {
    say "demo FAILED: $*" >&2
    say "--- pmrun's output so far ---" >&2
    cat "$log" >&2
    exit 1
}
# wait_until SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.1 s.
wait_until() {
    local limit=$1 what=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@"; do
        if ! kill -0 "$pmrun_pid" 2>/dev/null; then
            fail "pmrun ended while waiting for $what"
        fi
        if ((SECONDS > end)); then
            fail "no $what within $limit s"
        fi
        sleep 0.1
    done
}
committed() { grep -q '"committed":{' <<<"$(status_json)"; }
committed_epoch() {
    grep -o '"committed":{[^}]*}' <<<"$(status_json)" | sed -n 's/.*"epoch":\([0-9]*\).*/\1/p'
}
epoch_at_least() { (($(committed_epoch || true) + 0 >= $1)); }
running_again() { grep -q '"running":true' <<<"$(status_json)"; }
recovered() { grep -q "node failure of $victim handled" "$log"; }

say "pmrun demo, part 1: an MPI job that survives losing a node"
say "============================================================"

step "1. The reference: the job undisturbed, under plain mpirun without pmrun."
say "      mpirun -n 8 heat ${heat[*]} --no-pm"
mpirun -n 8 "$bin/heat" "${heat[@]}" --no-pm >"$ref_log" 2>&1 || {
    cat "$ref_log" >&2
    exit 1
}
reference=$(checksum "$ref_log")
[[ -n $reference ]] || fail "the reference run printed no checksum"
say "   heat is a 2-D heat diffusion; its final checksum depends on every bit of the plate:"
say "      reference checksum $reference"

step "2. The same job under pmrun, on 4 virtual nodes on this machine."
say "   Each virtual node is a pmd agent (on 127.0.0.2 .. 127.0.0.5, each with its own"
say "   store directory under $PM_STORE) and the 2 ranks placed on it."
say "   Every 10 steps the ranks take a checkpoint; each node's agent copies it to a"
say "   partner node, and pmrun commits it once every rank's copy is in place. Agents"
say "   send a heartbeat every 0.2 s; a node silent for 1 s is declared dead."
say "   ${pause[*]} only slows heat down so that there is time to watch."
say "      pmrun -n 8 --local-nodes 4 --every 10 --heartbeat 0.2 --fail-after 1 heat ${heat[*]} ${pause[*]}"
"$bin/pmrun" -n 8 --local-nodes 4 --store "$PM_STORE" --job "$job" --every 10 \
    --heartbeat 0.2 --fail-after 1 "$bin/heat" "${heat[@]}" "${pause[@]}" >"$log" 2>&1 &
pmrun_pid=$!
wait_until 60 "committed checkpoint" committed
say "   A first checkpoint is committed. pmrun ctl status:"
ctl status | indent

step "3. Kill $victim, as if it lost power."
node=$(node_json "$(status_json)" "$victim")
agent=$(sed -n 's/.*"agent_pid":\([0-9]*\).*/\1/p' <<<"$node")
ranks=$(sed -n 's/.*"ranks":\[\([0-9,]*\)\].*/\1/p' <<<"$node")
rank_pids=$(sed -n 's/.*"rank_pids":\[\([0-9,]*\)\].*/\1/p' <<<"$node" | tr ',' ' ')
[[ -n $agent && -n $rank_pids ]] || fail "no pids of $victim in the status"
say "   The pids come from \`pmrun ctl status --json\`: $victim's agent is pmd $agent,"
say "   its ranks $ranks are processes $rank_pids. SIGKILL to all of them at once: no"
say "   goodbye, no last checkpoint, no more heartbeats."
# shellcheck disable=SC2086 # a list of pids
kill -KILL "$agent" $rank_pids
wait_until 60 "recovery of $victim" recovered
say "   pmrun saw $victim's agent go (its connection closed; a node that only falls"
say "   silent is declared dead after 1 s without heartbeats), had the other agents stop"
say "   the job, restarted $victim's ranks on a node that holds their replicas, and"
say "   relaunched from the committed checkpoint:"
grep -E "^pmrun: (node $victim|relaunching|node failure)" "$log" | indent
resumed() { grep -q '^heat: resumed' "$log"; }
wait_until 10 "resumed heat" resumed
grep '^heat: resumed' "$log" | indent
say "   pmrun ctl status:"
ctl status | indent

step "4. Drain $drained, as before maintenance: pmrun ctl drain $drained"
say "   pmrun checkpoints, moves $drained's ranks to nodes holding their replicas and"
say "   continues without it; the command returns once the job runs again:"
ctl drain "$drained" | indent || fail "the drain of $drained failed"
wait_until 30 "relaunch after the drain" running_again
epoch=$(committed_epoch)
wait_until 30 "two checkpoints after the drain" epoch_at_least $((epoch + 2))
say "   Two checkpoints later, pmrun ctl status:"
ctl status | indent

step "5. Let the job finish."
rc=0
wait "$pmrun_pid" || rc=$?
pmrun_pid=
[[ $rc == 0 ]] || fail "pmrun exited with status $rc"
grep '^heat: ' "$log" | indent
result=$(checksum "$log")
say ""
say "   undisturbed run (mpirun):            $reference"
say "   killed node + drained node (pmrun):  ${result:-none}"
if [[ -n $result && $result == "$reference" ]]; then
    say "   MATCH: the job lost a node and moved off another, and its result is bit for bit"
    say "   that of the undisturbed run."
else
    say "   MISMATCH: the results differ." >&2
    exit 1
fi
say "   Part 1 took $(now)."

say ""
"$bin/examples/store_demo" | sed 's/^pmrun demo: /pmrun demo, part 2: /'

# ---------------------------------------------------------------------------
# Part 3: a slow node's ranks move away.
slow_cpus=0.125,0.5,0.5,0.5
heat3=(--rows 2048 --cols 2048 --steps 500)
every3=25

# A node's CPUs, capacity and ranks from the status JSON, one line per node.
node_table() {
    local s n node cpus cap ranks
    s=$(status_json)
    for n in node1 node2 node3 node4; do
        node=$(node_json "$s" "$n")
        cpus=$(sed -n 's/.*"cpus":\([0-9.]*\).*/\1/p' <<<"$node")
        cap=$(sed -n 's/.*"capacity":\([0-9.]*\).*/\1/p' <<<"$node")
        ranks=$(sed -n 's/.*"ranks":\[\([0-9,]*\)\].*/\1/p' <<<"$node")
        printf '      %-6s %5s CPUs (capacity %5s)  ranks [%s]\n' "$n" "${cpus:-?}" "${cap:-?}" "$ranks"
    done
}
# Mean seconds per step of a list of steps/s figures (one per commit interval).
mean_step() { awk 'NF && $1 > 0 { s += 1 / $1; n++ } END { if (n) printf "%.1f", 1000 * s / n; else printf "-" }'; }
moved() { grep -q '^pmrun: rebalancing:' "$log3"; }

part3() {
    job=demo-$$-balance
    log=$log3 # what fail() shows
    t0=$(date +%s.%N)

    step "1. The reference: heat ${heat3[*]} undisturbed, under plain mpirun."
    mpirun -n 8 "$bin/heat" "${heat3[@]}" --no-pm >"$ref3_log" 2>&1 || {
        cat "$ref3_log" >&2
        exit 1
    }
    reference=$(checksum "$ref3_log")
    [[ -n $reference ]] || fail "the reference run printed no checksum"
    say "      reference checksum $reference"

    step "2. Under pmrun on 4 virtual nodes; node1 gets an eighth of a core, the others half"
    say "   a core each (cgroup CPU quotas, 1:4:4:4). heat declares its 500 steps, so pmrun"
    say "   can weigh the time a move saves over the steps left against the freeze it costs."
    say "   Every 3 s pmrun decides from the ranks' measured work and the nodes' gossiped"
    say "   capacities; ranks start in blocks of 2 per node."
    say "      pmrun -n 8 --local-nodes 4 --node-cpus $slow_cpus --every $every3 --balance-every 3 heat ${heat3[*]}"
    "$bin/pmrun" -n 8 --local-nodes 4 --node-cpus "$slow_cpus" --store "$PM_STORE" --job "$job" \
        --every "$every3" --balance-every 3 "$bin/heat" "${heat3[@]}" >"$log3" 2>&1 &
    pmrun_pid=$!
    wait_until 60 "committed checkpoint" committed
    say "   Running. Per node, from \`pmrun ctl status --json\`:"
    node_table

    # Follow the commits: each new one's steps/s covers the $every3 steps since the
    # previous one (pmrun's own clock), before and after the move.
    local before=() after=() prev_epoch=0 prev_step=0 s epoch cstep rate shown=
    while kill -0 "$pmrun_pid" 2>/dev/null; do
        s=$(status_json)
        epoch=$(grep -o '"committed":{[^}]*}' <<<"$s" | sed -n 's/.*"epoch":\([0-9]*\).*/\1/p' || true)
        cstep=$(grep -o '"committed":{[^}]*}' <<<"$s" | sed -n 's/.*"step":\([0-9]*\).*/\1/p' || true)
        rate=$(sed -n 's/.*"steps_per_s":\([0-9.e+-]*\).*/\1/p' <<<"$s" || true)
        if [[ -n $epoch && $epoch != "$prev_epoch" ]]; then
            if ((epoch == prev_epoch + 1 && cstep - prev_step == every3)) && [[ -n $rate ]]; then
                if moved; then after+=("$rate"); else before+=("$rate"); fi
            fi
            prev_epoch=$epoch prev_step=$cstep
        fi
        if [[ -z $shown ]] && moved && grep -q '"kind":"rebalance"' <<<"$s" && grep -q '"running":true' <<<"$s"; then
            shown=1
            step "3. pmrun's decision, and the move (stop at a checkpoint, place, resume):"
            grep -E '^pmrun: (balance at step .*: moving|rebalanc)' "$log3" | indent
            say "   Per node now:"
            node_table
            say "   Now letting the job finish."
        fi
        sleep 0.2
    done
    rc=0
    wait "$pmrun_pid" || rc=$?
    pmrun_pid=
    [[ $rc == 0 ]] || fail "pmrun exited with status $rc"
    if ! moved; then
        grep '^pmrun: balance' "$log3" | indent
        fail "pmrun moved no rank off the slow node (the machine may be too busy to show it)"
    fi
    [[ -n $shown ]] || {
        step "3. pmrun's decision, and the move:"
        grep -E '^pmrun: (balance at step .*: moving|rebalanc)' "$log3" | indent
    }

    step "4. The job finished."
    grep '^heat: ' "$log3" | indent
    local b a
    b=$(printf '%s\n' "${before[@]}" | mean_step)
    a=$(printf '%s\n' "${after[@]}" | mean_step)
    if [[ $b != - ]]; then
        say "   step time with node1's ranks on it:  $b ms  (${#before[@]} commit interval(s) of $every3 steps)"
    else
        # The move came before a second commit: take the step time pmrun
        # measured when it decided.
        b=$(grep -m1 -o 'moving; step [0-9.]* s now' "$log3" | awk '{ printf "%.1f", 1000 * $3 }')
        say "   step time with node1's ranks on it:  ${b:--} ms  (pmrun's measure when it decided)"
    fi
    say "   step time after the move:            $a ms  (${#after[@]} commit interval(s) of $every3 steps)"
    if [[ $b != - && $a != - ]]; then
        say "   $(awk -v b="$b" -v a="$a" 'BEGIN { printf "%.2fx as fast", b / a }') once the slow node's ranks had moved away."
    fi
    result=$(checksum "$log3")
    say ""
    say "   undisturbed run (mpirun):   $reference"
    say "   balanced run (pmrun):       ${result:-none}"
    if [[ -n $result && $result == "$reference" ]]; then
        say "   MATCH: ranks moved between nodes mid-run, and the result is bit for bit that of"
        say "   the undisturbed run."
    else
        say "   MISMATCH: the results differ." >&2
        exit 1
    fi
    say "   Part 3 took $(now)."
}

say ""
say "pmrun demo, part 3: a slow node's ranks move away"
say "================================================="
if [[ ! -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
    say "   SKIPPED: this machine has no cgroup v1 cpu controller (/sys/fs/cgroup/cpu/cpu.cfs_quota_us),"
    say "   so pmrun cannot enforce a virtual node's CPU quota and every node is as fast as the others."
elif [[ $(id -u) != 0 ]]; then
    say "   SKIPPED: enforcing a virtual node's CPU quota (a cgroup v1 cpu group) needs root;"
    say "   as $(id -un) every node would be as fast as the others. Run \`make demo\` as root to see it."
else
    part3
fi
