//! `pmbench ckpt`: the node-local store against a plain memcpy of the same bytes.
//!
//! * `memcpy_s`: copying the state into a pre-faulted buffer (the baseline).
//! * `prefault_s`: the background work that makes the store's data files
//!   ready once the layout is known (the application computes meanwhile).
//! * `ckpt_first_cold_s`: the first checkpoint into a store that was not
//!   pre-faulted (what every first checkpoint cost before).
//! * `ckpt_first_s`: the first checkpoint after pre-faulting.
//! * `ckpt_full_s`: a checkpoint in which every chunk changed, in steady
//!   state (the store recycles the pages of pruned epochs).
//! * `ckpt_incr_1pct_s`: a checkpoint in which 1% of the chunks changed.
//! * `ckpt_async_blocked_s`: the time an asynchronous checkpoint blocks (the
//!   copy), and `ckpt_async_publish_s` the background hashing and publishing.
//! * `restore_s`: what a restarted rank waits for: opening the store and the
//!   newest snapshot afresh and reading it into a pre-faulted buffer,
//!   verifying every chunk.
//!
//! Checkpoint times run until the snapshot is published, which on a
//! persistent medium includes the `fsync`s (time to durability). Each figure
//! is the median of `--repeat` runs; each `*_over_memcpy` is the median of
//! every run's time over the faster of two memcpys timed just before and
//! just after it (`memcpy_s` is the median of all), so that the machine (a
//! shared one) speeding up or slowing down between figures moves the times
//! but not the ratios, and a memcpy slowed by chance cannot flatter one.

use crate::size::parse_size;
use crate::util::{fill_pseudo_random, median, memcpy_seconds, timed, touch_chunks};
use anyhow::{Context, ensure};
use clap::Args as ClapArgs;
use pm_core::store::{DEFAULT_CHUNK_SIZE, data_file_len, default_root};
use pm_core::{RegionBuf, RegionRef, Store, StoreOptions};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(ClapArgs)]
pub struct Args {
    /// State size per rank (bytes, or with KiB/MiB/GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Store root directory [default: /dev/shm/pmrun-<uid>].
    #[arg(long)]
    store: Option<PathBuf>,
    /// Chunk size (a multiple of 4096).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE as u64, value_parser = parse_size)]
    chunk_size: u64,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    bytes: u64,
    chunk_size: u64,
    store: PathBuf,
    durable: bool,
    threads: usize,
    memcpy_s: f64,
    prefault_s: f64,
    ckpt_first_cold_s: f64,
    ckpt_first_s: f64,
    ckpt_full_s: f64,
    ckpt_incr_1pct_s: f64,
    ckpt_async_blocked_s: f64,
    ckpt_async_publish_s: f64,
    restore_s: f64,
    restore_cold_s: f64,
    incr_bytes: u64,
    ckpt_first_cold_over_memcpy: f64,
    ckpt_first_over_memcpy: f64,
    ckpt_full_over_memcpy: f64,
    ckpt_async_blocked_over_memcpy: f64,
    restore_over_memcpy: f64,
    restore_cold_over_memcpy: f64,
    incr_bytes_over_full: f64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let size = usize::try_from(args.size).context("--size does not fit in memory")?;
    ensure!(size > 0, "--size must be positive");
    ensure!(args.repeat > 0, "--repeat must be at least 1");
    let chunk = args.chunk_size as usize;
    let root = args.store.clone().unwrap_or_else(default_root);
    let job = format!("pmbench-{}", std::process::id());
    let opts = StoreOptions {
        chunk_size: chunk,
        ..StoreOptions::default()
    };
    let progress = crate::util::progress("ckpt", args.json);

    progress("filling the state with pseudo-random bytes");
    let mut state = RegionBuf::new(size)?;
    let mut copy = RegionBuf::new(size)?;
    fill_pseudo_random(&mut state);

    progress("memcpy baseline");
    // Warms the copy up; the figures' own memcpys are timed beside them.
    memcpy_seconds(&state, &mut copy, 2);
    let mut memcpys = Vec::new();
    let mut memcpy = |state: &[u8], copy: &mut [u8]| {
        let t = memcpy_seconds(state, copy, 1);
        memcpys.push(t);
        t
    };

    let mut epoch = 0u64;
    let mut write = |store: &mut Store, state: &[u8]| -> anyhow::Result<(f64, u64)> {
        epoch += 1;
        let report = store.write(epoch, epoch, &[RegionRef::new("state", state)])?;
        Ok((report.publish_time.as_secs_f64(), report.bytes_written))
    };

    // A first checkpoint is one sample per store: each run opens fresh ones.
    let (mut first_cold, mut first, mut prefault) =
        (Paired::default(), Paired::default(), Vec::new());
    let mut store = None;
    for run in 1..=args.repeat {
        progress(&format!(
            "first checkpoints, {run} of {}: into a store that was not pre-faulted, then into a pre-faulted one",
            args.repeat
        ));
        let mut cold = Store::open(&root, &format!("{job}-cold"), 0, opts.clone())?;
        let m = memcpy(&state, &mut copy);
        let t = write(&mut cold, &state)?.0;
        first_cold.push(t, m.min(memcpy(&state, &mut copy)));
        cold.destroy()?;
        let mut s = Store::open(&root, &job, 0, opts.clone())?;
        prefault.push(timed(|| {
            s.prefault(data_file_len([args.size]))?;
            s.prefault_wait();
            Ok(())
        })?);
        let m = memcpy(&state, &mut copy);
        let t = write(&mut s, &state)?.0;
        first.push(t, m.min(memcpy(&state, &mut copy)));
        match run < args.repeat {
            true => s.destroy()?,
            false => store = Some(s),
        }
    }
    let mut store = store.context("--repeat is at least 1")?;
    let prefault_s = median(prefault);
    // Two more full checkpoints fill the store up to `keep` + spare, so the
    // measured ones run in steady state.
    for round in 0..2 {
        touch_chunks(&mut state, chunk, 1, round);
        write(&mut store, &state)?;
    }
    progress("full checkpoints (every chunk changed)");
    let mut full = Paired::default();
    for round in 0..args.repeat {
        touch_chunks(&mut state, chunk, 1, round as u8);
        let m = memcpy(&state, &mut copy);
        let (t, written) = write(&mut store, &state)?;
        ensure!(
            written == args.size,
            "a full checkpoint wrote {written} of {} bytes",
            args.size
        );
        full.push(t, m.min(memcpy(&state, &mut copy)));
    }
    progress("incremental checkpoints (1% of chunks changed)");
    let chunks = size.div_ceil(chunk);
    let stride = (chunks / (chunks / 100).max(1)).max(1);
    let mut incr = Vec::new();
    let mut incr_bytes = 0;
    for round in 0..args.repeat {
        touch_chunks(&mut state, chunk, stride, round as u8);
        let (t, written) = write(&mut store, &state)?;
        incr.push(t);
        incr_bytes = written;
    }

    progress("asynchronous checkpoints (every chunk changed)");
    let (mut async_blocked, mut async_publish) = (Paired::default(), Vec::new());
    for round in 0..args.repeat {
        touch_chunks(&mut state, chunk, 1, round as u8);
        epoch += 1;
        let m = memcpy(&state, &mut copy);
        let staged = store.write_async(epoch, epoch, &[RegionRef::new("state", &state)])?;
        let report = store
            .finish_staged()?
            .context("the asynchronous checkpoint was not in flight")?;
        ensure!(
            report.bytes_written == args.size,
            "an asynchronous full checkpoint wrote {} of {} bytes",
            report.bytes_written,
            args.size
        );
        let m = m.min(memcpy(&state, &mut copy));
        async_blocked.push(staged.blocked.as_secs_f64(), m);
        async_publish.push(report.publish_time.as_secs_f64() - staged.blocked.as_secs_f64());
    }

    progress("restores by a restarted rank (every chunk verified)");
    // A restarted rank opens its store and snapshot, allocates its regions
    // (the application's own cost, here a buffer as large as the state:
    // the snapshot's pages are mapped meanwhile), then reads each region.
    let (mut restore, mut restore_cold) = (Paired::default(), Paired::default());
    for _ in 0..args.repeat {
        let m = memcpy(&state, &mut copy);
        let t = Instant::now();
        let restarted = Store::open(&root, &job, 0, opts.clone())?;
        let snapshot = restarted.open_snapshot(epoch)?;
        let opened = t.elapsed().as_secs_f64();
        let mut dst = RegionBuf::new(size)?;
        let t = opened + timed(|| Ok(snapshot.read_region("state", &mut dst)?))?;
        restore.push(t, m.min(memcpy(&state, &mut copy)));
        ensure!(
            dst[..] == state[..],
            "the restored state differs from the checkpointed one"
        );
        // The same with nothing to overlap the mapping with.
        drop(snapshot);
        let m = memcpy(&state, &mut copy);
        let t = timed(|| {
            let snapshot = restarted.open_snapshot(epoch)?;
            Ok(snapshot.read_region("state", &mut dst)?)
        })?;
        restore_cold.push(t, m.min(memcpy(&state, &mut copy)));
    }

    let durable = store.is_durable();
    store.destroy()?;
    let report = Report {
        bytes: args.size,
        chunk_size: args.chunk_size,
        store: root,
        durable,
        threads: rayon::current_num_threads(),
        memcpy_s: median(memcpys),
        prefault_s,
        ckpt_first_cold_s: first_cold.time(),
        ckpt_first_s: first.time(),
        ckpt_full_s: full.time(),
        ckpt_incr_1pct_s: median(incr),
        ckpt_async_blocked_s: async_blocked.time(),
        ckpt_async_publish_s: median(async_publish),
        restore_s: restore.time(),
        restore_cold_s: restore_cold.time(),
        incr_bytes,
        ckpt_first_cold_over_memcpy: first_cold.ratio(),
        ckpt_first_over_memcpy: first.ratio(),
        ckpt_full_over_memcpy: full.ratio(),
        ckpt_async_blocked_over_memcpy: async_blocked.ratio(),
        restore_over_memcpy: restore.ratio(),
        restore_cold_over_memcpy: restore_cold.ratio(),
        incr_bytes_over_full: incr_bytes as f64 / args.size as f64,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let gbs = |s: f64| args.size as f64 / s / 1e9;
        println!(
            "state            {} bytes in {}-byte chunks, store {} ({})",
            report.bytes,
            report.chunk_size,
            report.store.display(),
            if durable { "fsync" } else { "RAM" }
        );
        println!(
            "memcpy           {:8.4} s  {:6.2} GB/s",
            report.memcpy_s,
            gbs(report.memcpy_s)
        );
        println!(
            "pre-faulting     {:8.4} s  in the background, before the first checkpoint",
            report.prefault_s
        );
        println!(
            "first, cold      {:8.4} s  {:6.2} GB/s  {:.2}x memcpy (no pre-faulting)",
            report.ckpt_first_cold_s,
            gbs(report.ckpt_first_cold_s),
            report.ckpt_first_cold_over_memcpy
        );
        println!(
            "first checkpoint {:8.4} s  {:6.2} GB/s  {:.2}x memcpy",
            report.ckpt_first_s,
            gbs(report.ckpt_first_s),
            report.ckpt_first_over_memcpy
        );
        println!(
            "full checkpoint  {:8.4} s  {:6.2} GB/s  {:.2}x memcpy",
            report.ckpt_full_s,
            gbs(report.ckpt_full_s),
            report.ckpt_full_over_memcpy
        );
        println!(
            "1% incremental   {:8.4} s  wrote {:.4} of the state",
            report.ckpt_incr_1pct_s, report.incr_bytes_over_full
        );
        println!(
            "async, blocked   {:8.4} s  {:6.2} GB/s  {:.2}x memcpy (then {:.4} s in the background)",
            report.ckpt_async_blocked_s,
            gbs(report.ckpt_async_blocked_s),
            report.ckpt_async_blocked_over_memcpy,
            report.ckpt_async_publish_s
        );
        println!(
            "restore+verify   {:8.4} s  {:6.2} GB/s  {:.2}x memcpy",
            report.restore_s,
            gbs(report.restore_s),
            report.restore_over_memcpy
        );
        println!(
            "  nothing overlap {:8.4} s  {:6.2} GB/s  {:.2}x memcpy (the mapping not overlapped with allocation)",
            report.restore_cold_s,
            gbs(report.restore_cold_s),
            report.restore_cold_over_memcpy
        );
    }
    Ok(())
}

/// A figure's times, each with the faster of the memcpys of the same bytes
/// timed just before and after it.
#[derive(Default)]
struct Paired {
    times: Vec<f64>,
    ratios: Vec<f64>,
}

impl Paired {
    fn push(&mut self, seconds: f64, memcpy_s: f64) {
        self.times.push(seconds);
        self.ratios.push(seconds / memcpy_s);
    }

    fn time(&self) -> f64 {
        median(self.times.clone())
    }

    fn ratio(&self) -> f64 {
        median(self.ratios.clone())
    }
}
