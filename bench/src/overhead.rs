//! `pmbench overhead`: what the rank runtime costs a real MPI job.
//!
//! Runs `examples/heat` under `mpirun` twice with the same arguments: once
//! without pm (`--no-pm`) and once checkpointing every `--interval` seconds
//! into the store, and compares the time of their step loops. It also
//! reports the time a checkpoint blocks a rank (write plus commit
//! agreement) against a memcpy of one rank's state measured in this run.

use crate::util::{median, memcpy_seconds};
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
    /// Pairs of runs (without and with pm, in alternating order); medians are reported.
    #[arg(long, default_value_t = 2)]
    repeat: usize,
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
    state_bytes: u64,
    state_bytes_per_rank: u64,
    plain_s: f64,
    pm_s: f64,
    overhead: f64,
    checkpoints: u32,
    /// Median time one checkpoint blocked the slowest rank.
    ckpt_blocked_s: f64,
    /// Mean of the same, including the first checkpoints, which allocate the store's pages.
    ckpt_blocked_mean_s: f64,
    memcpy_s: f64,
    ckpt_blocked_over_memcpy: f64,
    /// Share of the pm run's loop time that checkpoints blocked the slowest
    /// rank: the direct cost, less noisy than the difference of two runs.
    blocked_fraction: f64,
}

/// What one heat run printed with `--report`.
pub struct HeatReport {
    pub loop_s: f64,
    pub checksum: String,
    /// Per rank: (checkpoints, total blocked seconds, median blocked seconds, state bytes).
    pub ranks: Vec<(u32, f64, f64, u64)>,
}

/// heat's `--report` lines in `out`.
pub fn parse_report(out: &str) -> anyhow::Result<HeatReport> {
    let mut loop_s = None;
    let mut checksum = None;
    let mut ranks = Vec::new();
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
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
        .env("PM_INTERVAL", args.interval.to_string());
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

    let (mut plain, mut with_pm) = (Vec::new(), Vec::new());
    let mut last_pm = None;
    for i in 0..args.repeat {
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
            progress(&format!("run {}/{} {what}", i + 1, args.repeat));
            pair[usize::from(with)] = Some(heat_run(args, &heat, &store, &job, with)?);
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
        last_pm = Some(m);
    }
    let m = last_pm.expect("at least one run");
    let checkpoints = m.ranks.iter().map(|r| r.0).min().unwrap_or(0);
    let per_rank_bytes = m.ranks.iter().map(|r| r.3).max().unwrap_or(0);
    // The slowest rank's figures: a checkpoint blocks everyone that long.
    let blocked_mean = m
        .ranks
        .iter()
        .filter(|r| r.0 > 0)
        .map(|r| r.1 / f64::from(r.0))
        .fold(0.0, f64::max);
    let blocked = m.ranks.iter().map(|r| r.2).fold(0.0, f64::max);
    let blocked_total = m.ranks.iter().map(|r| r.1).fold(0.0, f64::max);
    let pm_loop_s = m.loop_s;

    progress(&format!("memcpy of {per_rank_bytes} bytes"));
    let size = usize::try_from(per_rank_bytes)?;
    let src = RegionBuf::new(size)?;
    let mut dst = RegionBuf::new(size)?;
    let memcpy_s = memcpy_seconds(&src, &mut dst, 5);

    let (plain_s, pm_s) = (median(plain), median(with_pm));
    let report = Report {
        ranks: args.ranks,
        rows: args.rows,
        cols: args.cols,
        steps: args.steps,
        interval_s: args.interval,
        state_bytes: args.rows * args.cols * 8,
        state_bytes_per_rank: per_rank_bytes,
        plain_s,
        pm_s,
        overhead: pm_s / plain_s - 1.0,
        checkpoints,
        ckpt_blocked_s: blocked,
        ckpt_blocked_mean_s: blocked_mean,
        memcpy_s,
        ckpt_blocked_over_memcpy: blocked / memcpy_s,
        blocked_fraction: blocked_total / pm_loop_s,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "heat {}x{} on {} ranks, {} steps, {} MiB of state",
            args.rows,
            args.cols,
            args.ranks,
            args.steps,
            report.state_bytes >> 20
        );
        println!("without pm        {plain_s:8.3} s");
        println!(
            "with pm           {pm_s:8.3} s  overhead {:+.2}% ({checkpoints} checkpoints, every {} s)",
            report.overhead * 100.0,
            args.interval
        );
        println!(
            "per checkpoint    {blocked:8.4} s blocked (median; mean {blocked_mean:.4} s) = {:.2}x a memcpy of one rank's state ({memcpy_s:.4} s)",
            report.ckpt_blocked_over_memcpy
        );
        println!(
            "checkpoints blocked the slowest rank for {:.2}% of the pm run",
            report.blocked_fraction * 100.0
        );
    }
    Ok(())
}
