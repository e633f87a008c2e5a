//! `pmbench balance`: what live balancing gains on a job with one slow node,
//! against the static placement it started from and the best placement for
//! the true capacities.
//!
//! `heat` runs under `pmrun --local-nodes K --node-cpus ...` (virtual nodes
//! on this machine whose CPU quotas are enforced with cgroup v1; default
//! 0.125,0.5,0.5,0.5, the ratio 1:4:4:4, which fits in 2 cores), started in
//! contiguous blocks by slots (2 ranks a node), in four runs:
//!
//! * **static**: `--balance off`: the slow node keeps its ranks;
//! * **balanced**: `--balance auto`: pmrun measures, decides and moves;
//! * **ideal**: the best placement for the true capacities, launched
//!   directly with `--placement ... --balance off`. It is found by trying
//!   every placement under the model "step time = max over nodes of
//!   ranks on the node × w / cpus" (equal work w per rank: the model sees
//!   only how many ranks each node gets, so every count vector is tried;
//!   ties go to the one that fills earlier nodes first, ranks in blocks);
//! * **equal**: equal capacities (`--equal-cpus`, 0.5 each) and balancing
//!   on: a balanced job, which must make no move (`balanced_moves`).
//!
//! Step times come from the runs themselves: `pmrun ctl status --json` is
//! polled every 0.2 s; each time the committed epoch advances by one, its
//! `steps_per_s` (the coordinator's steps between the last two commits over
//! the time between them, on its own clock) gives that interval's seconds.
//! A run's step time is Σ seconds / Σ steps over the intervals in the second
//! half of the steps, after the last move (a relaunch restarts the
//! coordinator's commit timing, so no interval spans a move). Commit
//! intervals include the checkpoints themselves, in every run alike.
//!
//! Also reported: the continuous lower bound Σw/Σcpus with w the per-rank
//! weights pmrun measured (compute seconds per step × share, from the
//! balanced run's last status) and with the weights calibrated so that the
//! model predicts the ideal run's measured step; the moves (rebalance
//! recovery records), the bytes each move carried (the moved ranks' share of
//! the committed state: heat's ranks hold equal blocks) against the job's
//! state, and the freeze of each move (`total_s`: stop, place, resume)
//! against a plain `mpirun` start of the same job (median of `--starts`,
//! timed right before the balanced run, as `pmbench recovery` does).
//!
//! Every run must end with the checksum of an undisturbed `mpirun ... heat
//! --no-pm` of the same grid and steps, measured first; otherwise the
//! scenario fails. Targets (reported, not enforced): speedup over static
//! ≥ 1.25, step after balancing / ideal step ≤ 1.05, no move when balanced.

use crate::pmjob::{self, Bins, Job, checksum, load_average, mpi_env, plain_heat, status};
use crate::util::{median, timed};
use anyhow::{Context, bail, ensure};
use clap::Args as ClapArgs;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(ClapArgs)]
pub struct Args {
    /// MPI ranks.
    #[arg(short = 'n', long, default_value_t = 8)]
    ranks: u32,
    /// CPUs of every virtual node (one per node; their count is the node count).
    #[arg(long, value_delimiter = ',', default_value = "0.125,0.5,0.5,0.5")]
    cpus: Vec<f64>,
    /// CPUs of every node in the run with equal capacities (balanced_moves).
    #[arg(long, default_value_t = 0.5)]
    equal_cpus: f64,
    /// Plate rows.
    #[arg(long, default_value_t = 2048)]
    rows: u64,
    /// Plate columns.
    #[arg(long, default_value_t = 2048)]
    cols: u64,
    /// Time steps per run.
    #[arg(long, default_value_t = 600)]
    steps: u64,
    /// Checkpoint every this many steps (pmrun --every).
    #[arg(long, default_value_t = 50)]
    every: u64,
    /// Seconds between balancing decisions (pmrun --balance-every).
    #[arg(long, default_value_t = 3.0)]
    balance_every: f64,
    /// Plain mpirun starts timed before the balanced run (the freeze baseline).
    #[arg(long, default_value_t = 5)]
    starts: usize,
    /// Store directory of the runs [default: /dev/shm/pmbench-balance-<pid>].
    #[arg(long)]
    store: Option<PathBuf>,
    /// Seconds a run may take before it is stopped and the scenario fails.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// One pmrun run, as measured.
#[derive(Serialize, Clone)]
struct Run {
    job: String,
    balance: &'static str,
    node_cpus: Vec<f64>,
    /// The placement it started with (`null`: by slots) and ended with.
    start_placement: Option<Vec<String>>,
    final_placement: Vec<String>,
    /// Wall time of the whole pmrun, start to exit.
    wall_s: f64,
    /// Seconds per step over the second half, after the last move.
    step_s: f64,
    /// The commit intervals that went into `step_s`: [from step, to step, seconds].
    step_intervals: Vec<(u64, u64, f64)>,
    /// Rebalance recovery records from `ctl status`.
    moves: Vec<Value>,
    /// Per move, how many moved ranks went to a node that already held
    /// their committed replica (before the decision pinned new partners).
    moved_to_replica_holders: Vec<Option<usize>>,
    /// pmrun's balancing lines (`balance at step ...`, `rebalancing: ...`).
    said: Vec<String>,
    last_decision: Value,
    /// `committed_bytes` of the last status seen.
    committed_bytes: Value,
    /// Per-rank weights (compute seconds per step × share) of the last status.
    weights: Vec<f64>,
    load_1m: Option<f64>,
    checksum: String,
}

#[derive(Serialize)]
struct Target {
    value: f64,
    target: String,
    met: bool,
}

#[derive(Serialize)]
struct Targets {
    speedup_over_static: Target,
    step_after_over_ideal: Target,
    balanced_moves: Target,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    ranks: u32,
    nodes: usize,
    node_cpus: Vec<f64>,
    equal_cpus: f64,
    rows: u64,
    cols: u64,
    steps: u64,
    every: u64,
    balance_every_s: f64,
    reference_checksum: String,
    checksums_match: bool,
    /// The best placement under the model, and the model's step times in
    /// units of one rank's work w: static start, ideal, balanced run's end.
    ideal_placement: Vec<String>,
    model_static_w: f64,
    model_ideal_w: f64,
    model_balanced_end_w: f64,
    static_wall_s: f64,
    balanced_wall_s: f64,
    ideal_wall_s: f64,
    speedup_over_static: f64,
    step_measured_from: &'static str,
    static_step_s: f64,
    step_after_s: f64,
    ideal_step_s: f64,
    step_after_over_ideal: f64,
    /// Σw/Σcpus, w as pmrun measured it (raw), and w calibrated so that the
    /// model predicts the ideal run's measured step.
    lower_bound_s: f64,
    lower_bound_calibrated_s: f64,
    step_after_over_lower_bound_calibrated: f64,
    ideal_over_lower_bound_calibrated: f64,
    moves: usize,
    ranks_moved: usize,
    /// The job's committed state (all ranks), and per move the state of
    /// the ranks it moved (each new node restores the stop's checkpoint,
    /// which heat rewrites whole every step).
    state_bytes: u64,
    bytes_moved_per_move: Vec<u64>,
    bytes_moved_per_move_over_state: Vec<f64>,
    moved_to_replica_holders: Vec<Option<usize>>,
    freeze_per_move_s: Vec<f64>,
    plain_start_s: f64,
    plain_start_runs_s: Vec<f64>,
    freeze_over_plain_start: f64,
    balanced_moves: usize,
    targets: Targets,
    runs: Vec<Run>,
}

fn heat_args(args: &Args, steps: u64) -> Vec<String> {
    pmjob::heat_args(args.rows, args.cols, steps, 0)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// How one run is launched.
struct Launch<'a> {
    name: &'static str,
    balance: &'static str,
    cpus: &'a [f64],
    placement: Option<&'a [String]>,
}

/// One pmrun of heat, followed through `ctl status` until it ends.
fn pmrun_run(
    args: &Args,
    bins: &Bins,
    store: &Path,
    launch: &Launch,
    reference: &str,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Run> {
    let job = format!("pmbench-balance-{}-{}", std::process::id(), launch.name);
    let cpus = launch
        .cpus
        .iter()
        .map(f64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new(&bins.pmrun);
    mpi_env(&mut cmd)
        .args(["-n", &args.ranks.to_string()])
        .args(["--local-nodes", &launch.cpus.len().to_string()])
        .args(["--node-cpus", &cpus])
        .arg("--store")
        .arg(store)
        .args(["--job", &job])
        .args(["--every", &args.every.to_string()])
        .args(["--balance", launch.balance])
        .args(["--balance-every", &args.balance_every.to_string()]);
    if let Some(p) = launch.placement {
        cmd.args(["--placement", &p.join(",")]);
    }
    cmd.arg(&bins.heat).args(heat_args(args, args.steps));
    progress(&format!(
        "{}: pmrun -n {} --local-nodes {} --node-cpus {cpus} --every {} --balance {} --balance-every {}{} heat {}",
        launch.name,
        args.ranks,
        launch.cpus.len(),
        args.every,
        launch.balance,
        args.balance_every,
        launch
            .placement
            .map_or(String::new(), |p| format!(" --placement {}", p.join(","))),
        heat_args(args, args.steps).join(" ")
    ));
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let started = Instant::now();
    let mut run = Job::spawn(&mut cmd)?;

    // Commit intervals: (from step, to step, seconds) from the coordinator's
    // steps_per_s each time the committed epoch advanced by exactly one.
    let mut intervals: Vec<(u64, u64, f64)> = Vec::new();
    let mut last: Option<Value> = None;
    // Each move's committed holders as they were before its decision (the
    // last status of a running job whose last decision was no move).
    let mut settled = Value::Null;
    let mut holders_at_move: Vec<Value> = Vec::new();
    let mut prev: Option<(u64, u64)> = None; // (epoch, step) committed
    let mut load_1m = None;
    let exit = loop {
        if let Some(s) = run.child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            run.stop();
            let text = run.output();
            bail!(
                "{}: pmrun did not finish within --timeout; stopped it:\n{text}",
                launch.name
            );
        }
        if let Some(s) = status(&bins.pmrun, store, &job) {
            let c = &s["committed"];
            if let (Some(epoch), Some(step)) = (c["epoch"].as_u64(), c["step"].as_u64()) {
                if prev.is_some_and(|(e, _)| e + 1 == epoch)
                    && let Some(rate) = s["steps_per_s"].as_f64()
                    && rate > 0.0
                {
                    let from = prev.map_or(0, |(_, st)| st);
                    if step > from {
                        intervals.push((from, step, (step - from) as f64 / rate));
                    }
                }
                if prev.is_none_or(|(e, _)| e != epoch) {
                    prev = Some((epoch, step));
                    if step >= args.steps / 2 && load_1m.is_none() {
                        load_1m = load_average();
                    }
                }
            }
            let rebalances = s["recoveries"].as_array().map_or(0, |rs| {
                rs.iter().filter(|r| r["kind"] == "rebalance").count()
            });
            while holders_at_move.len() < rebalances {
                holders_at_move.push(settled.clone());
            }
            if s["phase"] == "running"
                && !s["last_decision"]["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("moving"))
            {
                settled = s["committed_holders"].clone();
            }
            last = Some(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let wall_s = started.elapsed().as_secs_f64();
    let text = run.output();
    ensure!(
        exit.success(),
        "{}: pmrun failed ({exit}):\n{text}",
        launch.name
    );
    let last = last.with_context(|| format!("{}: never got a status:\n{text}", launch.name))?;
    let sum = checksum(&text)
        .with_context(|| format!("{}: heat printed no checksum:\n{text}", launch.name))?;
    if sum != reference {
        bail!(
            "CHECKSUM MISMATCH in run {} (job {job}): it ended with {sum}, the undisturbed run \
             with {reference}\n{text}",
            launch.name
        );
    }
    let moves: Vec<Value> = last["recoveries"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter(|r| r["kind"] == "rebalance")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let said: Vec<String> = text
        .lines()
        .filter(|l| l.contains("balance at step") || l.contains("rebalancing:"))
        .map(String::from)
        .collect();
    let said_moves = said.iter().filter(|l| l.contains("rebalancing:")).count();
    ensure!(
        said_moves == moves.len(),
        "{}: pmrun said {said_moves} rebalancing(s) but its last status lists {} (was a move after the last poll?):\n{text}",
        launch.name,
        moves.len()
    );
    // The second half, after the last move's resume.
    let after = moves
        .iter()
        .filter_map(|m| m["step"].as_u64())
        .max()
        .unwrap_or(0)
        .max(args.steps / 2);
    let used: Vec<(u64, u64, f64)> = intervals
        .iter()
        .copied()
        .filter(|&(from, _, _)| from >= after)
        .collect();
    ensure!(
        !used.is_empty(),
        "{}: no commit interval after step {after} (commits every {} of {} steps): more --steps?",
        launch.name,
        args.every,
        args.steps
    );
    let steps: u64 = used.iter().map(|&(a, b, _)| b - a).sum();
    let secs: f64 = used.iter().map(|&(_, _, s)| s).sum();
    let step_s = secs / steps as f64;
    let weights: Vec<f64> = last["estimates"]
        .as_array()
        .map(|e| e.iter().filter_map(|p| p[0].as_f64()).collect())
        .unwrap_or_default();
    // Per move, the moved ranks whose new node already held their committed
    // replica (null: not seen before the move).
    let to_holders: Vec<Option<usize>> = moves
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let holders = holders_at_move.get(i).filter(|h| h.is_array())?;
            Some(m["moved"].as_array().map_or(0, |mv| {
                mv.iter()
                    .filter(|x| {
                        let (Some(rank), Some(to)) = (x[0].as_u64(), x[2].as_str()) else {
                            return false;
                        };
                        holders[rank as usize]
                            .as_array()
                            .is_some_and(|h| h.iter().any(|n| n == to))
                    })
                    .count()
            }))
        })
        .collect();
    for l in &said {
        progress(&format!("  {l}"));
    }
    progress(&format!(
        "  {wall_s:.2} s, {:.2} ms per step after step {after}, {} move(s); checksum {sum} matches",
        step_s * 1e3,
        moves.len()
    ));
    Ok(Run {
        job,
        balance: launch.balance,
        node_cpus: launch.cpus.to_vec(),
        start_placement: launch.placement.map(<[String]>::to_vec),
        final_placement: strings(&last["placement"]),
        wall_s,
        step_s,
        step_intervals: used,
        moves,
        moved_to_replica_holders: to_holders,
        said,
        last_decision: last["last_decision"].clone(),
        committed_bytes: last["committed_bytes"].clone(),
        weights,
        load_1m,
        checksum: sum,
    })
}

fn node_name(i: usize) -> String {
    format!("node{}", i + 1)
}

/// Ranks per node of a placement.
fn counts(placement: &[String], nodes: usize) -> Vec<u32> {
    let mut c = vec![0; nodes];
    for p in placement {
        if let Some(i) = p
            .strip_prefix("node")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| (1..=nodes).contains(&i))
        {
            c[i - 1] += 1;
        }
    }
    c
}

/// The model's step time in units of w: max over nodes of ranks × w / cpus.
fn model_step(counts: &[u32], cpus: &[f64]) -> f64 {
    counts
        .iter()
        .zip(cpus)
        .filter(|(n, _)| **n > 0)
        .map(|(&n, &c)| n as f64 / c)
        .fold(0.0, f64::max)
}

/// Every placement of `ranks` equal ranks over the nodes (every count
/// vector: that is all the model sees); the fastest, ties to the one that
/// fills earlier nodes first. Returns the counts.
fn ideal_counts(ranks: u32, cpus: &[f64]) -> Vec<u32> {
    fn walk(
        i: usize,
        left: u32,
        cur: &mut Vec<u32>,
        cpus: &[f64],
        best: &mut Option<(f64, Vec<u32>)>,
    ) {
        if i + 1 == cpus.len() {
            cur.push(left);
            let t = model_step(cur, cpus);
            // Descending enumeration: the first of equal times fills earlier nodes.
            if best.as_ref().is_none_or(|(b, _)| t < b * (1.0 - 1e-9)) {
                *best = Some((t, cur.clone()));
            }
            cur.pop();
            return;
        }
        for n in (0..=left).rev() {
            cur.push(n);
            walk(i + 1, left - n, cur, cpus, best);
            cur.pop();
        }
    }
    let mut best = None;
    walk(0, ranks, &mut Vec::new(), cpus, &mut best);
    best.map(|(_, c)| c).unwrap_or_default()
}

/// Ranks in blocks: counts[0] ranks on node1, then node2, ...
fn blocks(counts: &[u32]) -> Vec<String> {
    counts
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| std::iter::repeat_n(node_name(i), n as usize))
        .collect()
}

/// The placement by slots pmrun starts with: contiguous blocks, as even as the rank count allows.
fn by_slots(ranks: u32, nodes: usize) -> Vec<u32> {
    (0..nodes)
        .map(|i| {
            let first = |i: usize| (ranks as usize * i).div_ceil(nodes);
            (first(i + 1) - first(i)) as u32
        })
        .collect()
}

/// Whether pmrun can enforce --node-cpus here: cgroup v1 cpu controller and root.
fn quotas_enforceable() -> bool {
    Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() && unsafe { libc::geteuid() } == 0
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(args.cpus.len() >= 2, "--cpus needs at least two nodes");
    ensure!(
        args.cpus.iter().all(|&c| c > 0.0) && args.equal_cpus > 0.0,
        "CPUs must be positive"
    );
    ensure!(args.starts > 0, "--starts must be at least 1");
    ensure!(
        args.ranks as usize >= args.cpus.len() && args.rows >= args.ranks as u64,
        "need at least one rank per node and one row per rank"
    );
    ensure!(
        quotas_enforceable(),
        "pmbench balance needs enforced CPU quotas: root and a cgroup v1 cpu controller \
         (/sys/fs/cgroup/cpu/cpu.cfs_quota_us); without them the virtual nodes are equally fast"
    );
    let bins = Bins::find()?;
    let store = args.store.clone().unwrap_or_else(|| {
        PathBuf::from(format!("/dev/shm/pmbench-balance-{}", std::process::id()))
    });
    // Shown even with --json: the scenario runs for a few minutes.
    let progress = crate::util::progress("balance", false);
    let nodes = args.cpus.len();

    let ideal = ideal_counts(args.ranks, &args.cpus);
    let ideal_placement = blocks(&ideal);
    let start = by_slots(args.ranks, nodes);
    progress(&format!(
        "the model (step = max over nodes of ranks × w / cpus): by slots {start:?} = {:.2} w, \
         the best of every placement {ideal:?} = {:.2} w, Σ cpus {:.3}",
        model_step(&start, &args.cpus),
        model_step(&ideal, &args.cpus),
        args.cpus.iter().sum::<f64>()
    ));

    progress(&format!(
        "undisturbed reference: mpirun -n {} heat {} --no-pm",
        args.ranks,
        heat_args(args, args.steps).join(" ")
    ));
    let reference = checksum(&plain_heat(
        args.ranks,
        &bins.heat,
        &heat_args(args, args.steps),
    )?)
    .context("the reference run printed no checksum")?;
    progress(&format!("  checksum {reference}"));

    let equal = vec![args.equal_cpus; nodes];
    let mut starts = Vec::new();
    let result = (|| {
        let stat = pmrun_run(
            args,
            &bins,
            &store,
            &Launch {
                name: "static",
                balance: "off",
                cpus: &args.cpus,
                placement: None,
            },
            &reference,
            &progress,
        )?;
        progress(&format!(
            "freeze baseline: {} plain starts of mpirun -n {} heat --steps 0 --no-pm",
            args.starts, args.ranks
        ));
        for _ in 0..args.starts {
            starts.push(timed(|| {
                plain_heat(args.ranks, &bins.heat, &heat_args(args, 0)).map(drop)
            })?);
        }
        progress(&format!("  median {:.3} s", median(starts.clone())));
        let balanced = pmrun_run(
            args,
            &bins,
            &store,
            &Launch {
                name: "balanced",
                balance: "auto",
                cpus: &args.cpus,
                placement: None,
            },
            &reference,
            &progress,
        )?;
        let ideal_run = pmrun_run(
            args,
            &bins,
            &store,
            &Launch {
                name: "ideal",
                balance: "off",
                cpus: &args.cpus,
                placement: Some(&ideal_placement),
            },
            &reference,
            &progress,
        )?;
        let equal_run = pmrun_run(
            args,
            &bins,
            &store,
            &Launch {
                name: "equal",
                balance: "auto",
                cpus: &equal,
                placement: None,
            },
            &reference,
            &progress,
        )?;
        anyhow::Ok((stat, balanced, ideal_run, equal_run))
    })();
    let _ = std::fs::remove_dir_all(&store);
    let (stat, balanced, ideal_run, equal_run) = result?;

    let plain_start_s = median(starts.clone());
    let speedup = stat.wall_s / balanced.wall_s;
    let step_ratio = balanced.step_s / ideal_run.step_s;
    // The continuous lower bound from the weights pmrun measured.
    let sum_w: f64 = balanced.weights.iter().sum();
    let sum_c: f64 = args.cpus.iter().sum();
    let lower_bound_s = sum_w / sum_c;
    // Weights calibrated so that the model predicts the ideal run's step:
    // with equal work, w = ideal step / model_ideal_w.
    let model_ideal_w = model_step(&ideal, &args.cpus);
    let w_cal = ideal_run.step_s / model_ideal_w;
    let lower_bound_calibrated_s = args.ranks as f64 * w_cal / sum_c;
    let state_bytes = balanced.committed_bytes["state"].as_u64().unwrap_or(0);
    let per_rank = state_bytes / args.ranks as u64;
    let moved = |m: &Value| m["moved"].as_array().map_or(0, Vec::len);
    let bytes_moved: Vec<u64> = balanced
        .moves
        .iter()
        .map(|m| moved(m) as u64 * per_rank)
        .collect();
    let freeze: Vec<f64> = balanced
        .moves
        .iter()
        .filter_map(|m| m["total_s"].as_f64())
        .collect();
    let freeze_over_plain = if freeze.is_empty() {
        0.0
    } else {
        median(freeze.clone()) / plain_start_s
    };
    let balanced_moves = equal_run.moves.len();
    let report = Report {
        scenario: "balance",
        ranks: args.ranks,
        nodes,
        node_cpus: args.cpus.clone(),
        equal_cpus: args.equal_cpus,
        rows: args.rows,
        cols: args.cols,
        steps: args.steps,
        every: args.every,
        balance_every_s: args.balance_every,
        reference_checksum: reference,
        checksums_match: true,
        ideal_placement,
        model_static_w: model_step(&start, &args.cpus),
        model_ideal_w,
        model_balanced_end_w: model_step(&counts(&balanced.final_placement, nodes), &args.cpus),
        static_wall_s: stat.wall_s,
        balanced_wall_s: balanced.wall_s,
        ideal_wall_s: ideal_run.wall_s,
        speedup_over_static: speedup,
        step_measured_from: "coordinator commit intervals: ctl status steps_per_s at each new \
                             commit, second half of the steps, after the last move",
        static_step_s: stat.step_s,
        step_after_s: balanced.step_s,
        ideal_step_s: ideal_run.step_s,
        step_after_over_ideal: step_ratio,
        lower_bound_s,
        lower_bound_calibrated_s,
        step_after_over_lower_bound_calibrated: balanced.step_s / lower_bound_calibrated_s,
        ideal_over_lower_bound_calibrated: ideal_run.step_s / lower_bound_calibrated_s,
        moves: balanced.moves.len(),
        ranks_moved: balanced.moves.iter().map(moved).sum(),
        state_bytes,
        bytes_moved_per_move_over_state: bytes_moved
            .iter()
            .map(|&b| b as f64 / state_bytes.max(1) as f64)
            .collect(),
        bytes_moved_per_move: bytes_moved,
        moved_to_replica_holders: balanced.moved_to_replica_holders.clone(),
        freeze_per_move_s: freeze,
        plain_start_s,
        plain_start_runs_s: starts,
        freeze_over_plain_start: freeze_over_plain,
        balanced_moves,
        targets: Targets {
            speedup_over_static: Target {
                value: speedup,
                target: ">= 1.25".into(),
                met: speedup >= 1.25,
            },
            step_after_over_ideal: Target {
                value: step_ratio,
                target: "<= 1.05".into(),
                met: step_ratio <= 1.05,
            },
            balanced_moves: Target {
                value: balanced_moves as f64,
                target: "0".into(),
                met: balanced_moves == 0,
            },
        },
        runs: vec![stat, balanced, ideal_run, equal_run],
    };
    for (what, t) in [
        ("speedup over static", &report.targets.speedup_over_static),
        (
            "step after balancing / ideal",
            &report.targets.step_after_over_ideal,
        ),
        (
            "moves with equal capacities",
            &report.targets.balanced_moves,
        ),
    ] {
        if !t.met {
            progress(&format!(
                "TARGET MISSED: {what} is {:.3}, the target {}",
                t.value, t.target
            ));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "heat {}x{}, {} steps on {} ranks over {} virtual nodes with CPUs {:?}",
            args.rows, args.cols, args.steps, args.ranks, nodes, args.cpus
        );
        println!(
            "static    {:8.2} s  {:6.2} ms/step",
            report.static_wall_s,
            report.static_step_s * 1e3
        );
        println!(
            "balanced  {:8.2} s  {:6.2} ms/step after {} move(s)  speedup over static {:.2}",
            report.balanced_wall_s,
            report.step_after_s * 1e3,
            report.moves,
            report.speedup_over_static
        );
        println!(
            "ideal     {:8.2} s  {:6.2} ms/step  ({})  step after balancing / ideal {:.3}",
            report.ideal_wall_s,
            report.ideal_step_s * 1e3,
            report.ideal_placement.join(","),
            report.step_after_over_ideal
        );
        println!(
            "lower bound Σw/Σcpus {:.2} ms (measured w), {:.2} ms (w calibrated to the ideal run)",
            report.lower_bound_s * 1e3,
            report.lower_bound_calibrated_s * 1e3
        );
        println!(
            "freeze per move {:?} s against a plain mpirun start of {:.3} s ({:.2}x)",
            report.freeze_per_move_s, report.plain_start_s, report.freeze_over_plain_start
        );
        println!(
            "bytes per move {:?} of {} bytes of state",
            report.bytes_moved_per_move, report.state_bytes
        );
        println!(
            "equal capacities {:?}: {} move(s)",
            equal, report.balanced_moves
        );
        println!(
            "every run ended with the undisturbed checksum {}",
            report.reference_checksum
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ideal_empties_the_slow_node() {
        let cpus = [0.125, 0.5, 0.5, 0.5];
        assert_eq!(ideal_counts(8, &cpus), vec![0, 3, 3, 2]);
        assert_eq!(model_step(&[0, 3, 3, 2], &cpus), 6.0);
        assert_eq!(by_slots(8, 4), vec![2, 2, 2, 2]);
        assert_eq!(model_step(&by_slots(8, 4), &cpus), 16.0);
        assert_eq!(ideal_counts(8, &[0.5; 4]), vec![2, 2, 2, 2]);
        assert_eq!(
            counts(&blocks(&[0, 3, 3, 2]), 4),
            vec![0, 3, 3, 2],
            "blocks and counts agree"
        );
    }
}
