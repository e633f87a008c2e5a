#!/usr/bin/env bash
# `make demo` (the Makefile builds the release binaries first).
#
# Part 1: an 8-rank MPI job runs under pmrun on 4 virtual nodes on this
# machine. One node is killed outright, another is drained for maintenance,
# and the job still ends with exactly the result of an undisturbed run.
# Part 2: the checkpoint store survives a damaged snapshot.
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
pmrun_pid=
cleanup() {
    if [[ -n $pmrun_pid ]] && kill -0 "$pmrun_pid" 2>/dev/null; then
        kill -TERM "$pmrun_pid" 2>/dev/null || true # pmrun stops its job and agents
        wait "$pmrun_pid" 2>/dev/null || true
    fi
    rm -rf "$PM_STORE" "$log" "$ref_log"
}
trap cleanup EXIT
trap 'echo "demo FAILED: line $LINENO: $BASH_COMMAND" >&2' ERR

say() { printf '%s\n' "$*"; }
indent() { sed 's/^/      /'; }
checksum() { sed -n 's/^heat: checksum \([0-9a-f]*\).*/\1/p' "$1" | tail -1; }
t0=$(date +%s.%N)
now() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%5.1f s", b - a }'; }
step() { say ""; say "[$(now)] $*"; }

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
