//! `pmbench replicate`: replicating a rank's snapshot to a partner's store
//! over the TCP transport, against a raw TCP stream of the same bytes.
//!
//! Two "nodes" on this machine: stores under two roots, transport endpoints
//! on 127.0.0.2 and 127.0.0.3.
//!
//! * `raw_tcp_s`: one plain TCP connection moving the state's bytes from
//!   memory into a pre-faulted buffer (the baseline).
//! * `replicate_full_s`: pulling a snapshot in which every chunk changed into
//!   the partner's store (authenticated requests, one-sided reads into the
//!   mapped data file, hash check of every chunk, atomic publish), in steady
//!   state (the partner recycles the pages of its pruned epochs).
//! * `expose_s`: the source registering the snapshot's data files, paid
//!   once per epoch whatever the number of partners, in steady state: the
//!   source's `Exposer` keeps the mappings of the files the store recycles.
//!   `expose_fresh_s`: the same for the first epoch, which maps its file.
//! * `replicate_incr_1pct_s` and `incr_bytes_fetched`: the same after 1% of
//!   the chunks changed.
//! * `replicate_2_partners_s` and `r2_over_r1`: a full snapshot pulled by
//!   two partners (a third store, on 127.0.0.4) at once, as an agent asks
//!   its partners, over the time for one. On loopback both pulls share
//!   the machine's cores, not only a link.
//!
//! Each time is the median of `--repeat` runs.

use crate::size::parse_size;
use crate::util::{fill_pseudo_random, median, touch_chunks};
use anyhow::{Context, ensure};
use clap::Args as ClapArgs;
use pm_core::replicate;
use pm_core::store::{DEFAULT_CHUNK_SIZE, default_root};
use pm_core::transport::{TcpOptions, TcpTransport};
use pm_core::wire::JobSecret;
use pm_core::{RegionBuf, RegionRef, Store, StoreOptions};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Instant;

#[derive(ClapArgs)]
pub struct Args {
    /// State size per rank (bytes, or with KiB/MiB/GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Directory under which the two nodes' stores are made [default: /dev/shm/pmrun-<uid>].
    #[arg(long)]
    store: Option<PathBuf>,
    /// Chunk size (a multiple of 4096).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE as u64, value_parser = parse_size)]
    chunk_size: u64,
    /// Transport connections per peer.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
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
    connections: usize,
    raw_tcp_s: f64,
    raw_tcp_gbs: f64,
    replicate_full_s: f64,
    replicate_gbs: f64,
    replicate_over_raw: f64,
    expose_s: f64,
    expose_fresh_s: f64,
    full_bytes_fetched: u64,
    replicate_incr_1pct_s: f64,
    incr_bytes_fetched: u64,
    incr_bytes_over_full: f64,
    replicate_2_partners_s: f64,
    r2_over_r1: f64,
}

const PIECE: usize = 4 << 20;

/// Time to move `state` over one plain TCP connection into `sink`.
fn raw_tcp(state: &[u8], sink: &mut [u8]) -> anyhow::Result<f64> {
    let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0))?;
    let addr = listener.local_addr()?;
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            for piece in state.chunks(PIECE) {
                s.write_all(piece)?;
            }
            Ok(())
        });
        let started = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        for piece in sink.chunks_mut(PIECE) {
            s.read_exact(piece)?;
        }
        let t = started.elapsed().as_secs_f64();
        sender.join().expect("sender thread")?;
        Ok(t)
    })
}

struct Round {
    expose_s: f64,
    pull_s: f64,
    fetched: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let size = usize::try_from(args.size).context("--size does not fit in memory")?;
    ensure!(size > 0, "--size must be positive");
    ensure!(args.repeat > 0, "--repeat must be at least 1");
    let chunk = args.chunk_size as usize;
    let base = args.store.clone().unwrap_or_else(default_root);
    let pid = std::process::id();
    let job = format!("pmbench-repl-{pid}");
    let roots = [
        base.join(format!("pmbench-node-a-{pid}")),
        base.join(format!("pmbench-node-b-{pid}")),
        base.join(format!("pmbench-node-c-{pid}")),
    ];
    let opts = StoreOptions {
        chunk_size: chunk,
        ..StoreOptions::default()
    };
    let mut src = Store::open(&roots[0], &job, 0, opts.clone())?;
    let mut dst = Store::open(&roots[1], &job, 0, opts.clone())?;
    let mut dst2 = Store::open(&roots[2], &job, 0, opts)?;
    let secret = JobSecret::generate()?;
    let endpoint = |octet: u8, node: &str| {
        TcpTransport::bind(
            SocketAddr::from((Ipv4Addr::new(127, 0, 0, octet), 0)),
            secret.clone(),
            TcpOptions {
                node: node.into(),
                connections_per_peer: args.connections,
                ..TcpOptions::default()
            },
        )
    };
    let (a, b, c) = (endpoint(2, "a")?, endpoint(3, "b")?, endpoint(4, "c")?);
    let progress = crate::util::progress("replicate", args.json);

    progress("filling the state with pseudo-random bytes");
    let mut state = RegionBuf::new(size)?;
    let mut sink = RegionBuf::new(size)?;
    fill_pseudo_random(&mut state);

    progress("raw TCP baseline");
    let raw: Vec<f64> = (0..args.repeat)
        .map(|_| raw_tcp(&state, &mut sink))
        .collect::<Result<_, _>>()?;
    ensure!(
        sink[..] == state[..],
        "the raw stream delivered other bytes"
    );

    let mut epoch = 0u64;
    let mut puller = replicate::Puller::new(&b);
    let mut exposer = replicate::Exposer::default();
    let mut round = |src: &mut Store, dst: &mut Store, state: &[u8]| -> anyhow::Result<Round> {
        epoch += 1;
        src.write(epoch, epoch, &[RegionRef::new("state", state)])?;
        let snap = src.open_snapshot(epoch)?;
        let t = Instant::now();
        let exposed = exposer.expose(&a, src, &snap)?;
        let expose_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let report = puller.pull(&a.local_addr(), &exposed.manifest, &exposed.data_keys, dst)?;
        let pull_s = t.elapsed().as_secs_f64();
        exposed.withdraw(&a)?;
        Ok(Round {
            expose_s,
            pull_s,
            fetched: report.bytes_fetched,
        })
    };

    progress("warm-up: three full replicas fill both stores to steady state");
    // Keep (2) epochs and the spare: from the fourth on, pages are recycled.
    let mut expose_fresh_s = 0.0;
    for r in 0..3 {
        touch_chunks(&mut state, chunk, 1, r);
        let rd = round(&mut src, &mut dst, &state)?;
        if r == 0 {
            expose_fresh_s = rd.expose_s;
        }
    }
    progress("full replications (every chunk changed)");
    let mut full = Vec::new();
    let mut expose = Vec::new();
    let mut full_bytes = 0;
    for r in 0..args.repeat {
        touch_chunks(&mut state, chunk, 1, r as u8);
        let rd = round(&mut src, &mut dst, &state)?;
        ensure!(
            rd.fetched == args.size,
            "a full replica moved {} of {} bytes",
            rd.fetched,
            args.size
        );
        full.push(rd.pull_s);
        expose.push(rd.expose_s);
        full_bytes = rd.fetched;
    }
    progress("incremental replications (1% of chunks changed)");
    let chunks = size.div_ceil(chunk);
    let stride = (chunks / (chunks / 100).max(1)).max(1);
    let mut incr = Vec::new();
    let mut incr_bytes = 0;
    for r in 0..args.repeat {
        touch_chunks(&mut state, chunk, stride, r as u8);
        let rd = round(&mut src, &mut dst, &state)?;
        incr.push(rd.pull_s);
        incr_bytes = rd.fetched;
    }

    progress("two partners at once (every chunk changed)");
    let mut second = replicate::Puller::new(&c);
    let mut two = Vec::new();
    for r in 0..args.repeat + 3 {
        touch_chunks(&mut state, chunk, 1, r as u8);
        epoch += 1;
        src.write(epoch, epoch, &[RegionRef::new("state", &state)])?;
        let snap = src.open_snapshot(epoch)?;
        let exposed = exposer.expose(&a, &src, &snap)?;
        let from = a.local_addr();
        let t = Instant::now();
        let (one, other) = std::thread::scope(|s| {
            let b_pull =
                s.spawn(|| puller.pull(&from, &exposed.manifest, &exposed.data_keys, &mut dst));
            let c_pull = second.pull(&from, &exposed.manifest, &exposed.data_keys, &mut dst2);
            (b_pull.join().expect("pull thread"), c_pull)
        });
        let wall = t.elapsed().as_secs_f64();
        one?;
        other?;
        exposed.withdraw(&a)?;
        // The first three bring the third store to steady state.
        if r >= 3 {
            two.push(wall);
        }
    }

    progress("checking that the replica restores bit-exactly");
    let replica = dst.latest_valid()?.snapshot.context("no valid replica")?;
    sink.fill(0);
    replica.read_region("state", &mut sink)?;
    ensure!(
        sink[..] == state[..],
        "the replica differs from the source state"
    );

    drop(puller);
    drop(second);
    drop((a, b, c));
    src.destroy()?;
    dst.destroy()?;
    dst2.destroy()?;
    for r in &roots {
        let _ = std::fs::remove_dir_all(r);
    }

    let raw_tcp_s = median(raw);
    let replicate_full_s = median(full);
    let gbs = |s: f64| args.size as f64 / s / 1e9;
    let report = Report {
        bytes: args.size,
        chunk_size: args.chunk_size,
        store: base,
        connections: args.connections,
        raw_tcp_s,
        raw_tcp_gbs: gbs(raw_tcp_s),
        replicate_full_s,
        replicate_gbs: gbs(replicate_full_s),
        replicate_over_raw: raw_tcp_s / replicate_full_s,
        expose_s: median(expose),
        expose_fresh_s,
        full_bytes_fetched: full_bytes,
        replicate_incr_1pct_s: median(incr),
        incr_bytes_fetched: incr_bytes,
        incr_bytes_over_full: incr_bytes as f64 / full_bytes as f64,
        replicate_2_partners_s: median(two.clone()),
        r2_over_r1: median(two) / replicate_full_s,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "state            {} bytes in {}-byte chunks, stores under {}",
            report.bytes,
            report.chunk_size,
            report.store.display()
        );
        println!(
            "raw TCP          {:8.4} s  {:6.2} GB/s",
            raw_tcp_s, report.raw_tcp_gbs
        );
        println!(
            "full replica     {:8.4} s  {:6.2} GB/s  {:.2}x raw throughput",
            replicate_full_s, report.replicate_gbs, report.replicate_over_raw
        );
        println!(
            "expose (source)  {:8.4} s  (first epoch, mapping its file: {:.4} s)",
            report.expose_s, report.expose_fresh_s
        );
        println!(
            "1% replica       {:8.4} s  moved {:.4} of a full one",
            report.replicate_incr_1pct_s, report.incr_bytes_over_full
        );
        println!(
            "two partners     {:8.4} s  {:.2}x the time for one",
            report.replicate_2_partners_s, report.r2_over_r1
        );
    }
    Ok(())
}
