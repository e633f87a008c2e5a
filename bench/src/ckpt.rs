//! `pmbench ckpt`: the node-local store against a plain memcpy of the same bytes.
//!
//! * `memcpy_s`: copying the state into a pre-faulted buffer (the baseline).
//! * `ckpt_first_s`: the first checkpoint into an empty store (pays for
//!   allocating the store's pages).
//! * `ckpt_full_s`: a checkpoint in which every chunk changed, in steady
//!   state (the store recycles the pages of pruned epochs).
//! * `ckpt_incr_1pct_s`: a checkpoint in which 1% of the chunks changed.
//! * `restore_s`: reading the newest snapshot back into a pre-faulted buffer,
//!   verifying every chunk.
//!
//! Checkpoint times run until the snapshot is published, which on a
//! persistent medium includes the `fsync`s (time to durability). Each figure
//! is the median of `--repeat` runs.

use crate::size::parse_size;
use crate::util::{fill_pseudo_random, median, memcpy_seconds, timed, touch_chunks};
use anyhow::{Context, ensure};
use clap::Args as ClapArgs;
use pm_core::store::{DEFAULT_CHUNK_SIZE, default_root};
use pm_core::{RegionBuf, RegionRef, Store, StoreOptions};
use serde::Serialize;
use std::path::PathBuf;

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
    ckpt_first_s: f64,
    ckpt_full_s: f64,
    ckpt_incr_1pct_s: f64,
    restore_s: f64,
    incr_bytes: u64,
    ckpt_full_over_memcpy: f64,
    restore_over_memcpy: f64,
    incr_bytes_over_full: f64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let size = usize::try_from(args.size).context("--size does not fit in memory")?;
    ensure!(size > 0, "--size must be positive");
    ensure!(args.repeat > 0, "--repeat must be at least 1");
    let chunk = args.chunk_size as usize;
    let root = args.store.clone().unwrap_or_else(default_root);
    let job = format!("pmbench-{}", std::process::id());
    let mut store = Store::open(
        &root,
        &job,
        0,
        StoreOptions {
            chunk_size: chunk,
            ..StoreOptions::default()
        },
    )?;
    let progress = crate::util::progress("ckpt", args.json);

    progress("filling the state with pseudo-random bytes");
    let mut state = RegionBuf::new(size)?;
    let mut copy = RegionBuf::new(size)?;
    fill_pseudo_random(&mut state);

    progress("memcpy baseline");
    let memcpy_s = memcpy_seconds(&state, &mut copy, args.repeat);

    let mut epoch = 0u64;
    let mut write = |store: &mut Store, state: &[u8]| -> anyhow::Result<(f64, u64)> {
        epoch += 1;
        let report = store.write(epoch, epoch, &[RegionRef::new("state", state)])?;
        Ok((report.publish_time.as_secs_f64(), report.bytes_written))
    };

    progress("first checkpoint into an empty store");
    let (ckpt_first, _) = write(&mut store, &state)?;
    // Two more full checkpoints fill the store up to `keep` + spare, so the
    // measured ones run in steady state.
    for round in 0..2 {
        touch_chunks(&mut state, chunk, 1, round);
        write(&mut store, &state)?;
    }
    progress("full checkpoints (every chunk changed)");
    let mut full = Vec::new();
    for round in 0..args.repeat {
        touch_chunks(&mut state, chunk, 1, round as u8);
        let (t, written) = write(&mut store, &state)?;
        ensure!(
            written == args.size,
            "a full checkpoint wrote {written} of {} bytes",
            args.size
        );
        full.push(t);
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

    progress("restores (every chunk verified)");
    let mut restore = Vec::new();
    for _ in 0..args.repeat {
        copy.fill(0);
        let snapshot = store.open_snapshot(epoch)?;
        restore.push(timed(|| Ok(snapshot.read_region("state", &mut copy)?))?);
        ensure!(
            copy[..] == state[..],
            "the restored state differs from the checkpointed one"
        );
    }

    let durable = store.is_durable();
    store.destroy()?;
    let ckpt_full_s = median(full);
    let restore_s = median(restore);
    let report = Report {
        bytes: args.size,
        chunk_size: args.chunk_size,
        store: root,
        durable,
        threads: rayon::current_num_threads(),
        memcpy_s,
        ckpt_first_s: ckpt_first,
        ckpt_full_s,
        ckpt_incr_1pct_s: median(incr),
        restore_s,
        incr_bytes,
        ckpt_full_over_memcpy: ckpt_full_s / memcpy_s,
        restore_over_memcpy: restore_s / memcpy_s,
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
            memcpy_s,
            gbs(memcpy_s)
        );
        println!(
            "first checkpoint {:8.4} s  {:6.2} GB/s",
            ckpt_first,
            gbs(ckpt_first)
        );
        println!(
            "full checkpoint  {:8.4} s  {:6.2} GB/s  {:.2}x memcpy",
            ckpt_full_s,
            gbs(ckpt_full_s),
            report.ckpt_full_over_memcpy
        );
        println!(
            "1% incremental   {:8.4} s  wrote {:.4} of the state",
            report.ckpt_incr_1pct_s, report.incr_bytes_over_full
        );
        println!(
            "restore+verify   {:8.4} s  {:6.2} GB/s  {:.2}x memcpy",
            restore_s,
            gbs(restore_s),
            report.restore_over_memcpy
        );
    }
    Ok(())
}
