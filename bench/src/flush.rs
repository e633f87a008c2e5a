//! `pmbench flush`: copying committed checkpoints to a shared file system.
//!
//! Two parts. **Throughput**: a rank's snapshot of `--mb` MiB written in a
//! RAM store is flushed (copied, every chunk verified, made durable) into
//! `--dir`, against a plain sequential copy of the same data file into
//! the same directory (`read` + `write` + `fsync`), interleaved, medians
//! of `--repeat`; then one flush after a sixteenth of the chunks changed.
//! **Rank-side cost**: heat under `pmrun` on 4 virtual nodes with `--flush
//! --flush-every 1` and without, interleaved pairs: the checkpoint time
//! each rank was blocked per step, and the step loop's time.

use crate::overhead::{HeatReport, parse_report};
use crate::pmjob::{self, Bins};
use crate::util::{fill_pseudo_random, median, timed, touch_chunks};
use anyhow::{Context, ensure};
use clap::Args as ClapArgs;
use pm_core::store::flush::copy_snapshot;
use pm_core::{RegionRef, Store, StoreOptions};
use serde::Serialize;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(ClapArgs)]
pub struct Args {
    /// MiB of rank state flushed in the throughput part.
    #[arg(long, default_value_t = 1024)]
    mb: usize,
    /// The flush directory's parent: a file system like the shared one
    /// (default: a temporary directory under /var/tmp, on disk).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Interleaved repetitions of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// heat's plate in the rank-side part: rows (× cols × 8 bytes in all).
    #[arg(long, default_value_t = 2048)]
    rows: u64,
    #[arg(long, default_value_t = 2048)]
    cols: u64,
    /// heat's steps, and steps between checkpoints, in the rank-side part.
    #[arg(long, default_value_t = 600)]
    steps: u64,
    #[arg(long, default_value_t = 50)]
    every: u64,
    /// Skip the rank-side part (heat under pmrun).
    #[arg(long)]
    no_job: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    state_bytes: u64,
    dir: String,
    /// A full flush: seconds, and its throughput over the plain copy's.
    flush_s: f64,
    copy_s: f64,
    flush_over_copy: f64,
    flush_gb_s: f64,
    copy_gb_s: f64,
    /// A flush after 1/16 of the chunks changed: seconds and the share of
    /// the state written.
    incremental_flush_s: f64,
    incremental_bytes_fraction: f64,
    job: Option<JobReport>,
    load_average: Option<f64>,
}

#[derive(Serialize)]
struct JobReport {
    ranks: u32,
    state_bytes: u64,
    steps: u64,
    checkpoint_every: u64,
    /// Flushes pmrun reported in the flushed runs (median).
    flushes: usize,
    /// Checkpoint time the most blocked rank spent per step.
    blocked_per_step_s: f64,
    blocked_per_step_with_flush_s: f64,
    /// The step loop's time per step.
    step_s: f64,
    step_with_flush_s: f64,
    /// What a flush in progress adds to a rank's blocked time per step.
    flush_blocked_per_step_s: f64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.repeat > 0 && args.mb > 0,
        "--repeat and --mb must be positive"
    );
    let parent = args.dir.clone().unwrap_or_else(|| "/var/tmp".into());
    let flush = tempfile::Builder::new()
        .prefix("pmbench-flush-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
    let mut report = throughput(args, flush.path())?;
    if !args.no_job {
        report.job = Some(rank_side(args, flush.path())?);
    }
    report.load_average = pmjob::load_average();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn throughput(args: &Args, flush: &Path) -> anyhow::Result<Report> {
    let chunk = pm_core::store::DEFAULT_CHUNK_SIZE;
    let node = tempfile::tempdir_in("/dev/shm").context("no RAM store in /dev/shm")?;
    let opts = StoreOptions {
        auto_commit: false,
        ..StoreOptions::default()
    };
    let mut src = Store::open(node.path(), "bench", 0, opts.clone())?;
    let mut dst = Store::open(flush, "bench", 0, opts)?;
    let mut state = vec![0u8; args.mb << 20];
    fill_pseudo_random(&mut state);
    let state_bytes = state.len() as u64;
    let mut epoch = 0;
    let mut next = |src: &mut Store, state: &[u8]| -> anyhow::Result<u64> {
        epoch += 1;
        src.write(epoch, epoch, &[RegionRef::new("state", state)])?;
        src.commit(epoch, 1)?;
        Ok(epoch)
    };
    let (mut flush_s, mut copy_s) = (Vec::new(), Vec::new());
    for round in 0..args.repeat {
        // Every chunk changed: a full flush.
        touch_chunks(&mut state, chunk, 1, round as u8);
        let e = next(&mut src, &state)?;
        let written = &mut 0;
        settle();
        flush_s.push(timed(|| {
            *written = copy_snapshot(&src, e, &mut dst)?.bytes_fetched;
            Ok(())
        })?);
        ensure!(
            *written == state_bytes,
            "a full flush wrote {written} bytes"
        );
        settle();
        copy_s.push(plain_copy(&src.data_path(e), flush)?);
    }
    touch_chunks(&mut state, chunk, 16, 7);
    let e = next(&mut src, &state)?;
    settle();
    let t = Instant::now();
    let incremental = copy_snapshot(&src, e, &mut dst)?;
    let incremental_flush_s = t.elapsed().as_secs_f64();
    let (flush_s, copy_s) = (median(flush_s), median(copy_s));
    let gb_s = |s: f64| state_bytes as f64 / s / 1e9;
    Ok(Report {
        state_bytes,
        dir: flush.display().to_string(),
        flush_s,
        copy_s,
        flush_over_copy: copy_s / flush_s,
        flush_gb_s: gb_s(flush_s),
        copy_gb_s: gb_s(copy_s),
        incremental_flush_s,
        incremental_bytes_fraction: incremental.bytes_fetched as f64 / state_bytes as f64,
        job: None,
        load_average: None,
    })
}

/// Writes back whatever earlier measurements left dirty, so that it does
/// not land on the next one.
fn settle() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

/// Seconds to copy `file` into a new file in `dir` and make it durable.
fn plain_copy(file: &Path, dir: &Path) -> anyhow::Result<f64> {
    let to = dir.join("plain-copy");
    let s = timed(|| {
        let mut from = File::open(file)?;
        let mut out = File::create(&to)?;
        std::io::copy(&mut from, &mut out)?;
        out.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(())
    })?;
    std::fs::remove_file(&to)?;
    Ok(s)
}

fn rank_side(args: &Args, flush: &Path) -> anyhow::Result<JobReport> {
    let bins = Bins::find()?;
    let ranks = 4;
    let (mut plain, mut flushed, mut flushes) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.repeat {
        // Alternate which goes first: the machine's load drifts.
        for with_flush in [round % 2 == 0, round % 2 != 0] {
            let (run, said) = heat_under_pmrun(args, &bins, ranks, with_flush.then_some(flush))?;
            if with_flush {
                flushes.push(said);
                flushed.push(run);
            } else {
                plain.push(run);
            }
        }
    }
    let per_step = |runs: &[HeatReport], f: &dyn Fn(&HeatReport) -> f64| {
        median(runs.iter().map(f).collect()) / args.steps as f64
    };
    let blocked = |r: &HeatReport| r.ranks.iter().map(|x| x.1).fold(0.0, f64::max);
    let blocked_per_step_s = per_step(&plain, &blocked);
    let blocked_per_step_with_flush_s = per_step(&flushed, &blocked);
    flushes.sort_unstable();
    Ok(JobReport {
        ranks,
        state_bytes: args.rows * args.cols * 8,
        steps: args.steps,
        checkpoint_every: args.every,
        flushes: flushes[flushes.len() / 2],
        blocked_per_step_s,
        blocked_per_step_with_flush_s,
        step_s: per_step(&plain, &|r| r.loop_s),
        step_with_flush_s: per_step(&flushed, &|r| r.loop_s),
        flush_blocked_per_step_s: blocked_per_step_with_flush_s - blocked_per_step_s,
    })
}

/// One heat run under pmrun, flushing to `flush` if given; heat's report
/// and the flushes pmrun said it recorded.
fn heat_under_pmrun(
    args: &Args,
    bins: &Bins,
    ranks: u32,
    flush: Option<&Path>,
) -> anyhow::Result<(HeatReport, usize)> {
    let store = tempfile::tempdir_in("/dev/shm")?;
    let mut cmd = Command::new(&bins.pmrun);
    pmjob::mpi_env(&mut cmd)
        .args(["-n", &ranks.to_string(), "--local-nodes", "4", "-v"])
        .args(["--every", &args.every.to_string(), "--balance", "off"])
        .arg("--store")
        .arg(store.path());
    if let Some(dir) = flush {
        cmd.arg("--flush").arg(dir).args(["--flush-every", "1"]);
    }
    cmd.arg(&bins.heat)
        .args(pmjob::heat_args(args.rows, args.cols, args.steps, 0))
        .arg("--report");
    let mut job = pmjob::Job::spawn(&mut cmd)?;
    let (ok, out) = job.finish(Instant::now() + Duration::from_secs(600))?;
    ensure!(ok, "heat under pmrun failed:\n{out}");
    let flushes = out.lines().filter(|l| l.contains(") flushed to ")).count();
    Ok((parse_report(&out)?, flushes))
}

fn print_table(r: &Report) {
    println!(
        "flush of {} MiB into {}: {:.3} s ({:.2} GB/s), plain copy {:.3} s ({:.2} GB/s): \
         flush_over_copy {:.2}",
        r.state_bytes >> 20,
        r.dir,
        r.flush_s,
        r.flush_gb_s,
        r.copy_s,
        r.copy_gb_s,
        r.flush_over_copy
    );
    println!(
        "after 1/16 of the chunks changed: {:.3} s, {:.1} % of the state written",
        r.incremental_flush_s,
        r.incremental_bytes_fraction * 100.0
    );
    if let Some(j) = &r.job {
        println!(
            "heat, {} ranks, {} MiB, checkpoint every {} steps, {} flushes: blocked per step \
             {:.6} s with flush vs {:.6} s without ({:+.6} s); step {:.4} s vs {:.4} s",
            j.ranks,
            j.state_bytes >> 20,
            j.checkpoint_every,
            j.flushes,
            j.blocked_per_step_with_flush_s,
            j.blocked_per_step_s,
            j.flush_blocked_per_step_s,
            j.step_with_flush_s,
            j.step_s
        );
    }
}
