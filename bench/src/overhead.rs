//! `pmbench overhead`: what the rank runtime costs a real MPI job.
//!
//! Runs `examples/heat` under `mpirun` in pairs with the same arguments:
//! once without pm (`--no-pm`) and once checkpointing every `--interval`
//! seconds into the store (the order alternating), and compares the time
//! of their step loops. Pairs run until the 95 % confidence interval of the
//! mean overhead is narrower than ±`--ci` (or `--max-pairs` is reached,
//! which the report says). It also reports the time each checkpoint blocks
//! the slowest rank (write plus commit agreement, or with `--async` the
//! copy) against the node's floor: every rank copying its state at once
//! (the ranks checkpoint at the same step and share the memory bandwidth),
//! timed just before and just after each pm run. It reports every
//! checkpoint, the first ones against the later ones, and the share of the
//! run they took.

use crate::util::{concurrent_memcpy_seconds, median, memcpy_seconds};
use anyhow::{Context, bail, ensure};
use clap::Args as ClapArgs;
use pm_core::RegionBuf;
use pm_core::store::default_root;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(ClapArgs)]
pub struct Args {
    /// MPI ranks.
    #[arg(long, default_value_t = 2)]
    ranks: u32,
    /// Plate rows (the state is rows × cols × 8 bytes in all).
    #[arg(long, default_value_t = 8192)]
    rows: u64,
    /// Plate columns.
    #[arg(long, default_value_t = 4096)]
    cols: u64,
    /// Time steps per run.
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Seconds between checkpoints in the pm run.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Store root [default: /dev/shm/pmrun-<uid>].
    #[arg(long)]
    store: Option<PathBuf>,
    /// Pairs of runs at least (without and with pm, in alternating order).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Pairs of runs at most, if the confidence interval is still wider than --ci.
    #[arg(long, default_value_t = 12)]
    max_pairs: usize,
    /// Half-width of the 95 % confidence interval of the overhead to reach (0.01 = ±1 %).
    #[arg(long, default_value_t = 0.01)]
    ci: f64,
    /// Asynchronous checkpoints (PM_ASYNC=1).
    #[arg(long = "async")]
    asynchronous: bool,
    /// The heat binary [default: next to pmbench].
    #[arg(long)]
    heat: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    ranks: u32,
    rows: u64,
    cols: u64,
    steps: u64,
    interval_s: f64,
    asynchronous: bool,
    state_bytes: u64,
    state_bytes_per_rank: u64,
    pairs: usize,
    plain_s: f64,
    pm_s: f64,
    /// Mean over the pairs of (pm loop time / plain loop time - 1).
    overhead: f64,
    /// Its 95 % confidence interval (Student's t over the pairs).
    overhead_ci95: [f64; 2],
    /// Whether the interval got narrower than the asked ±half-width.
    ci_reached: bool,
    overhead_each: Vec<f64>,
    checkpoints: u32,
    /// The node's floor for one checkpoint, per pm run: the slowest of one
    /// memcpy of a rank's state per rank, all at once (the faster of the
    /// timings before and after the run).
    memcpy_each_s: Vec<f64>,
    /// Their median.
    memcpy_s: f64,
    /// One memcpy of a rank's state with the rest of the node idle, for
    /// comparison: what a rank alone would take.
    memcpy_idle_s: f64,
    /// Every checkpoint of every pm run, in order: the time it blocked the
    /// slowest rank over that run's floor (`memcpy_each_s`).
    ckpt_blocked_each_over_memcpy: Vec<Vec<f64>>,
    /// The first checkpoint of each run (mean), and every later one (median).
    ckpt_first_over_memcpy: f64,
    ckpt_later_over_memcpy: f64,
    ckpt_max_over_memcpy: f64,
    /// Median time one checkpoint blocked the slowest rank.
    ckpt_blocked_s: f64,
    ckpt_blocked_over_memcpy: f64,
    /// The later checkpoints (median) over `memcpy_idle_s`.
    ckpt_later_over_idle_memcpy: f64,
    /// The later checkpoints' delay to the job (median over them of the
    /// least any rank was blocked, the rank that arrived last) over the floor.
    ckpt_later_job_delay_over_memcpy: f64,
    /// Share of the pm runs' loop time that checkpoints blocked the slowest
    /// rank (mean over the runs): the direct cost, less noisy than the
    /// difference of two runs.
    blocked_fraction: f64,
}

/// What one heat run printed with `--report`.
pub struct HeatReport {
    pub loop_s: f64,
    pub checksum: String,
    /// Per rank: (checkpoints, total blocked seconds, median blocked seconds, state bytes).
    pub ranks: Vec<(u32, f64, f64, u64)>,
    /// Per rank, in rank order of the lines: each checkpoint's blocked seconds.
    pub each: Vec<Vec<f64>>,
}

/// heat's `--report` lines in `out`.
pub fn parse_report(out: &str) -> anyhow::Result<HeatReport> {
    let mut loop_s = None;
    let mut checksum = None;
    let mut ranks = Vec::new();
    let mut each = Vec::new();
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            [
                "heat:",
                "rank",
                _,
                "checkpoints",
                "blocked",
                "s:",
                times @ ..,
            ] => each.push(
                times
                    .iter()
                    .map(|t| t.parse::<f64>())
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            ["heat:", "step", "loop", "took", s, "s"] => loop_s = Some(s.parse()?),
            ["heat:", "checksum", c, ..] => checksum = Some(c.to_string()),
            [
                "heat:",
                "rank",
                _,
                "took",
                n,
                "checkpoints",
                "blocking",
                t,
                "s",
                "in",
                "all",
                "(median",
                m,
                "s),",
                b,
                ..,
            ] => ranks.push((n.parse()?, t.parse()?, m.parse()?, b.parse()?)),
            _ => {}
        }
    }
    Ok(HeatReport {
        loop_s: loop_s.context("heat printed no loop time")?,
        checksum: checksum.context("heat printed no checksum")?,
        ranks,
        each,
    })
}

fn heat_run(
    args: &Args,
    heat: &Path,
    store: &Path,
    job: &str,
    with_pm: bool,
) -> anyhow::Result<HeatReport> {
    let mut cmd = Command::new("mpirun");
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .args(["-n", &args.ranks.to_string()])
        .arg(heat)
        .args([
            "--rows",
            &args.rows.to_string(),
            "--cols",
            &args.cols.to_string(),
        ])
        .args(["--steps", &args.steps.to_string(), "--report"])
        .env("PM_STORE", store)
        .env("PM_JOB", job)
        .env("PM_INTERVAL", args.interval.to_string())
        .env("PM_ASYNC", if args.asynchronous { "1" } else { "0" });
    if !with_pm {
        cmd.arg("--no-pm");
    }
    let out = cmd
        .output()
        .context("cannot run mpirun (is Open MPI installed?)")?;
    let text = crate::util::output_text(&out);
    if !out.status.success() {
        bail!("the heat run failed:\n{text}");
    }
    parse_report(&text)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.repeat > 0 && args.ranks > 0,
        "--repeat and --ranks must be positive"
    );
    let heat = match &args.heat {
        Some(h) => h.clone(),
        None => std::env::current_exe()?.with_file_name("heat"),
    };
    ensure!(
        heat.exists(),
        "{} not found: build it with `cargo build --release -p heat` (make bench does) or pass --heat",
        heat.display()
    );
    let store = args.store.clone().unwrap_or_else(default_root);
    let job = format!("pmbench-overhead-{}", std::process::id());
    let progress = crate::util::progress("overhead", args.json);

    // heat's largest row block with its two halo rows: one rank's state.
    let rank_bytes =
        usize::try_from((args.rows.div_ceil(u64::from(args.ranks)) + 2) * args.cols * 8)?;
    let mut node_copies = (0..args.ranks)
        .map(|_| Ok((RegionBuf::new(rank_bytes)?, RegionBuf::new(rank_bytes)?)))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("cannot allocate the memcpy baseline's buffers")?;
    let (mut plain, mut with_pm) = (Vec::new(), Vec::new());
    let (mut pm_runs, mut floors) = (Vec::new(), Vec::new());
    let mut i = 0;
    let ci_reached = loop {
        let overheads: Vec<f64> = plain
            .iter()
            .zip(&with_pm)
            .map(|(p, m)| m / p - 1.0)
            .collect();
        let half = ci_half_width(&overheads);
        if i >= args.repeat && half < args.ci {
            break true;
        }
        if i >= args.max_pairs.max(args.repeat) {
            break false;
        }
        // Alternate the order: the machine's state drifts (caches, frequency,
        // neighbours), and the first run of a pair should not always be the same.
        let order = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut pair = [None, None];
        for with in order {
            let what = if with {
                format!("with pm, checkpoint every {} s", args.interval)
            } else {
                "without pm".into()
            };
            let ci = if half.is_finite() {
                format!(", overhead ±{:.2}% so far", half * 100.0)
            } else {
                String::new()
            };
            progress(&format!("pair {} {what}{ci}", i + 1));
            if !with {
                pair[0] = Some(heat_run(args, &heat, &store, &job, false)?);
                continue;
            }
            let before = concurrent_memcpy_seconds(&mut node_copies, 5);
            pair[1] = Some(heat_run(args, &heat, &store, &job, true)?);
            floors.push(before.min(concurrent_memcpy_seconds(&mut node_copies, 5)));
        }
        let [Some(p), Some(m)] = pair else {
            unreachable!("both runs happened")
        };
        ensure!(
            p.checksum == m.checksum,
            "pm changed the result: {} vs {}",
            p.checksum,
            m.checksum
        );
        plain.push(p.loop_s);
        with_pm.push(m.loop_s);
        pm_runs.push(m);
        i += 1;
    };
    let m = pm_runs.last().expect("at least one run");
    let checkpoints = m.ranks.iter().map(|r| r.0).min().unwrap_or(0);
    let per_rank_bytes = m.ranks.iter().map(|r| r.3).max().unwrap_or(0);
    let blocked = m.ranks.iter().map(|r| r.2).fold(0.0, f64::max);
    let memcpy_s = median(floors.clone());
    let (src, dst) = &mut node_copies[0];
    let memcpy_idle_s = memcpy_seconds(src, dst, 5);

    // Per run, each checkpoint's time on the slowest rank, and on the rank
    // that blocked least: the one that arrived last, whose wait is what
    // the checkpoint added to the job's critical path (every rank leaves
    // the commit together; the others' surplus was waiting for it).
    let per_checkpoint = |r: &HeatReport, pick: fn(f64, f64) -> f64, start: f64| -> Vec<f64> {
        let n = r.each.iter().map(Vec::len).min().unwrap_or(0);
        (0..n)
            .map(|k| r.each.iter().map(|e| e[k]).fold(start, pick))
            .collect()
    };
    let seconds: Vec<Vec<f64>> = pm_runs
        .iter()
        .map(|r| per_checkpoint(r, f64::max, 0.0))
        .collect();
    let delays: Vec<f64> = pm_runs
        .iter()
        .zip(&floors)
        .flat_map(|(r, floor)| {
            per_checkpoint(r, f64::min, f64::INFINITY)
                .into_iter()
                .skip(1)
                .map(move |t| t / floor)
        })
        .collect();
    let later_s: Vec<f64> = seconds
        .iter()
        .flat_map(|e| e.iter().skip(1).copied())
        .collect();
    // The same over each run's floor.
    let each: Vec<Vec<f64>> = seconds
        .iter()
        .zip(&floors)
        .map(|(e, floor)| e.iter().map(|t| t / floor).collect())
        .collect();
    let firsts: Vec<f64> = each.iter().filter_map(|e| e.first().copied()).collect();
    let later: Vec<f64> = each
        .iter()
        .flat_map(|e| e.iter().skip(1).copied())
        .collect();
    let fraction = |r: &HeatReport| r.ranks.iter().map(|x| x.1).fold(0.0, f64::max) / r.loop_s;
    let overheads: Vec<f64> = plain
        .iter()
        .zip(&with_pm)
        .map(|(p, m)| m / p - 1.0)
        .collect();
    let overhead = mean(&overheads);
    let half = ci_half_width(&overheads);
    let (plain_s, pm_s) = (median(plain), median(with_pm));
    let report = Report {
        ranks: args.ranks,
        rows: args.rows,
        cols: args.cols,
        steps: args.steps,
        interval_s: args.interval,
        asynchronous: args.asynchronous,
        state_bytes: args.rows * args.cols * 8,
        state_bytes_per_rank: per_rank_bytes,
        pairs: overheads.len(),
        plain_s,
        pm_s,
        overhead,
        overhead_ci95: [overhead - half, overhead + half],
        ci_reached,
        overhead_each: overheads,
        checkpoints,
        memcpy_each_s: floors,
        memcpy_s,
        memcpy_idle_s,
        ckpt_first_over_memcpy: if firsts.is_empty() {
            0.0
        } else {
            mean(&firsts)
        },
        ckpt_later_over_memcpy: if later.is_empty() { 0.0 } else { median(later) },
        ckpt_max_over_memcpy: each.iter().flatten().copied().fold(0.0, f64::max),
        ckpt_blocked_each_over_memcpy: each,
        ckpt_blocked_s: blocked,
        ckpt_blocked_over_memcpy: blocked / memcpy_s,
        ckpt_later_job_delay_over_memcpy: if delays.is_empty() {
            0.0
        } else {
            median(delays)
        },
        ckpt_later_over_idle_memcpy: if later_s.is_empty() {
            0.0
        } else {
            median(later_s) / memcpy_idle_s
        },
        blocked_fraction: mean(&pm_runs.iter().map(fraction).collect::<Vec<_>>()),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "heat {}x{} on {} ranks, {} steps, {} MiB of state{}",
            args.rows,
            args.cols,
            args.ranks,
            args.steps,
            report.state_bytes >> 20,
            if args.asynchronous {
                ", asynchronous checkpoints"
            } else {
                ""
            }
        );
        println!(
            "without pm        {plain_s:8.3} s (median of {} runs)",
            report.pairs
        );
        println!(
            "with pm           {pm_s:8.3} s  overhead {:+.2}% (95% interval {:+.2}% .. {:+.2}%{}; {checkpoints} checkpoints, every {} s)",
            overhead * 100.0,
            report.overhead_ci95[0] * 100.0,
            report.overhead_ci95[1] * 100.0,
            if ci_reached {
                ""
            } else {
                ", wider than asked: more pairs needed"
            },
            args.interval
        );
        println!(
            "per checkpoint    first {:.2}x, later {:.2}x (median), worst {:.2}x the node's floor ({memcpy_s:.4} s: {} ranks' memcpys at once)",
            report.ckpt_first_over_memcpy,
            report.ckpt_later_over_memcpy,
            report.ckpt_max_over_memcpy,
            args.ranks
        );
        println!(
            "                  later {:.2}x one rank's memcpy on an idle node ({memcpy_idle_s:.4} s); the job delayed {:.2}x the floor per checkpoint",
            report.ckpt_later_over_idle_memcpy, report.ckpt_later_job_delay_over_memcpy
        );
        println!(
            "checkpoints blocked the slowest rank for {:.2}% of the pm runs",
            report.blocked_fraction * 100.0
        );
    }
    Ok(())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Half-width of the 95 % confidence interval of the mean of `v`
/// (Student's t); infinite for fewer than two values.
fn ci_half_width(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return f64::INFINITY;
    }
    let m = mean(v);
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    // t(0.975, df) for df = 1..=10; beyond, 2.2 (t at df = 11) errs wide.
    const T: [f64; 10] = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23];
    let t = T.get(v.len() - 2).copied().unwrap_or(2.2);
    t * (var / v.len() as f64).sqrt()
}
