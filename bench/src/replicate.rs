//! `pmbench replicate`: replicating a rank's snapshot to a partner's store
//! over a transport backend, against a raw transfer of the same bytes.
//!
//! Two "nodes" on this machine (three for two partners): stores under
//! separate roots, one transport endpoint each.
//!
//! `--transport tcp` (the default): endpoints on 127.0.0.2, .3 and .4.
//!
//! * `raw_tcp_s`: one plain TCP connection moving the state's bytes from
//!   memory into a pre-faulted buffer (the baseline).
//! * `replicate_full_s`: pulling a snapshot in which every chunk changed into
//!   the partner's store (authenticated requests, one-sided reads into the
//!   mapped data file, hash check of every chunk, atomic publish), in steady
//!   state (the partner recycles the pages of its pruned epochs);
//!   `replicate_over_raw` is the throughput ratio to the baseline.
//! * `expose_s`: the source registering the snapshot's data files, paid
//!   once per epoch whatever the number of partners, in steady state: the
//!   source's `Exposer` keeps the mappings of the files the store recycles.
//!   `expose_fresh_s`: the same for the first epoch, which maps its file
//!   (registration per epoch before and after "map once").
//! * `replicate_incr_1pct_s` and `incr_bytes_fetched`: the same after 1% of
//!   the chunks changed.
//! * `replicate_2_partners_s` and `r2_over_r1`: a full snapshot pulled by
//!   two partners (a third store) at once, as an agent asks its partners,
//!   over the time for one. On loopback both pulls share the machine's
//!   cores, not only a link.
//!
//! `--transport fabric[:PROVIDER]`: the same figures over the libfabric
//! backend (`pm-transport-fabric`) with `PROVIDER` (`tcp;ofi_rxm`, `shm`,
//! …; `fabric` alone: the first RMA provider `fi_getinfo` offers), its
//! endpoints on 127.0.0.2, .3, .4 for socket-based providers and without a
//! source address otherwise. The report adds `transport` and `provider`,
//! and instead of the raw TCP stream:
//!
//! * `raw_fabric_s`/`raw_fabric_gbs`: a plain `fi_read` loop over the same
//!   provider in the same run (`pm_transport_fabric::raw_read`: two
//!   endpoints, a pre-faulted registered source and sink, reads of
//!   `raw_fabric_chunk` bytes with `raw_fabric_window` in flight, by
//!   default the replicator's own transfer size and window), the baseline
//!   of `replicate_over_raw`. One pass runs just before each full
//!   replication (on a shared host CPU steal comes and goes within
//!   seconds, so the pairs see the same machine); the backend's two idle
//!   endpoints exist meanwhile. Passes swing between a fast and a slow
//!   mode here (2 vCPUs, spinning progress threads), so the fastest raw
//!   pass and full replication and their ratio are reported too
//!   (`raw_fabric_best_s`, `replicate_full_best_s`,
//!   `replicate_over_raw_best`);
//! * `tcp_replicate_full_s`/`tcp_replicate_gbs`: the TCP backend's full
//!   replication measured in the same run, and `fabric_over_tcp`, the
//!   fabric backend's throughput over TCP's.
//!
//! CPU figures: every endpoint of the measurement lives in this process, so
//! its CPU time over a transfer is the work the transfer cost all "nodes"
//! together (`replicate_full_cpu_s`, `replicate_2_partners_cpu_s`,
//! medians like the times). On a real
//! cluster each partner has its own cores; here they share `cores`, and
//! two partners cannot take less than `r2_floor_here` = max(1, two-partner
//! CPU seconds / `cores` / one-partner time) times one partner's time
//! however parallel the serving is: `r2_over_floor` is `r2_over_r1` over
//! that floor (1.0: the partners were served fully in parallel).
//!
//! Each time is the median of `--repeat` runs.

use crate::size::parse_size;
use crate::util::{fill_pseudo_random, median, process_cpu_s, touch_chunks};
use anyhow::{Context, ensure};
use clap::Args as ClapArgs;
use pm_core::replicate;
use pm_core::store::{DEFAULT_CHUNK_SIZE, default_root};
use pm_core::transport::{Access, Region, TcpOptions, TcpTransport, Transport};
use pm_core::wire::JobSecret;
use pm_core::{RegionBuf, RegionRef, Store, StoreOptions};
use pm_transport_fabric::{FabricOptions, FabricTransport, RawReadOptions, providers, raw_read};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Which backend to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportChoice {
    Tcp,
    /// libfabric with this provider, or the first one offered.
    Fabric(Option<String>),
}

fn parse_transport(s: &str) -> Result<TransportChoice, String> {
    match s.split_once(':') {
        None if s == "tcp" => Ok(TransportChoice::Tcp),
        None if s == "fabric" => Ok(TransportChoice::Fabric(None)),
        Some(("fabric", p)) if !p.is_empty() => Ok(TransportChoice::Fabric(Some(p.to_owned()))),
        _ => Err(format!(
            "{s:?}: expected tcp, fabric or fabric:PROVIDER (e.g. fabric:'tcp;ofi_rxm', fabric:shm)"
        )),
    }
}

#[derive(ClapArgs)]
pub struct Args {
    /// State size per rank (bytes, or with KiB/MiB/GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Directory under which the nodes' stores are made [default: /dev/shm/pmrun-<uid>].
    #[arg(long)]
    store: Option<PathBuf>,
    /// Chunk size (a multiple of 4096).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE as u64, value_parser = parse_size)]
    chunk_size: u64,
    /// The backend: tcp, or fabric[:PROVIDER] (libfabric; without a
    /// provider, the first one fi_getinfo offers with RMA). With fabric,
    /// TCP's full replication is measured too, for comparison.
    #[arg(long, default_value = "tcp", value_parser = parse_transport)]
    transport: TransportChoice,
    /// TCP transport connections per peer.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Bytes per fi_read of the raw fabric baseline [default: the
    /// replicator's largest transfer].
    #[arg(long, default_value_t = replicate::MAX_TRANSFER, value_parser = parse_size)]
    raw_chunk: u64,
    /// fi_reads in flight in the raw fabric baseline [default: the
    /// replicator's window].
    #[arg(long, default_value_t = replicate::IN_FLIGHT)]
    raw_window: usize,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    transport: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    bytes: u64,
    chunk_size: u64,
    store: PathBuf,
    connections: usize,
    /// Runs per figure (each figure is their median).
    repeat: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_tcp_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_tcp_gbs: Option<f64>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    raw_fabric: Option<RawFabric>,
    replicate_full_s: f64,
    replicate_gbs: f64,
    replicate_over_raw: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    tcp: Option<TcpComparison>,
    expose_s: f64,
    expose_fresh_s: f64,
    full_bytes_fetched: u64,
    replicate_incr_1pct_s: f64,
    incr_bytes_fetched: u64,
    incr_bytes_over_full: f64,
    replicate_2_partners_s: f64,
    r2_over_r1: f64,
    cores: usize,
    replicate_full_cpu_s: f64,
    replicate_2_partners_cpu_s: f64,
    r2_floor_here: f64,
    r2_over_floor: f64,
}

/// The raw `fi_read` loop over the measured provider.
#[derive(Serialize)]
struct RawFabric {
    raw_fabric_s: f64,
    raw_fabric_gbs: f64,
    raw_fabric_chunk: u64,
    raw_fabric_window: usize,
    /// The fastest raw pass and the fastest full replication, and their
    /// ratio: on a shared host both swing between a fast and a slow mode
    /// from pass to pass, and the best of each is the steadier comparison.
    raw_fabric_best_s: f64,
    replicate_full_best_s: f64,
    replicate_over_raw_best: f64,
}

/// The TCP backend's full replication, in a fabric run.
#[derive(Serialize)]
struct TcpComparison {
    tcp_replicate_full_s: f64,
    tcp_replicate_gbs: f64,
    fabric_over_tcp: f64,
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

/// The raw `fi_read` baseline: a pre-faulted copy of the state and a
/// pre-faulted sink, read with [`raw_read`] one pass at a time.
struct RawFabricLoop {
    provider: String,
    opts: RawReadOptions,
    src: Arc<Region>,
    sink: Arc<Region>,
    checked: bool,
}

impl RawFabricLoop {
    fn new(provider: &str, state: &[u8], args: &Args) -> anyhow::Result<Self> {
        let mut src = RegionBuf::new(state.len())?;
        src.copy_from_slice(state);
        Ok(Self {
            provider: provider.to_owned(),
            opts: RawReadOptions {
                source: fabric_source(provider, 2),
                chunk: args.raw_chunk,
                window: args.raw_window,
                runs: 1,
                ..RawReadOptions::default()
            },
            src: Arc::new(Region::from_buf(src, Access::Read)),
            sink: Arc::new(Region::buffer(state.len(), Access::ReadWrite)?),
            checked: false,
        })
    }

    /// Seconds of one pass over the whole source (its endpoints opened
    /// and closed around it, untimed); the first pass's bytes are checked.
    fn pass(&mut self) -> anyhow::Result<f64> {
        let report = raw_read(Some(&self.provider), &self.src, &self.sink, &self.opts)
            .with_context(|| format!("the raw fi_read baseline over {}", self.provider))?;
        if !self.checked {
            let piece = PIECE as u64;
            let (mut want, mut got) = (vec![0u8; PIECE], vec![0u8; PIECE]);
            for at in (0..self.src.len()).step_by(PIECE) {
                let n = piece.min(self.src.len() - at) as usize;
                self.src
                    .copy_out(at, &mut want[..n])
                    .context("source range")?;
                self.sink
                    .copy_out(at, &mut got[..n])
                    .context("sink range")?;
                ensure!(
                    want[..n] == got[..n],
                    "the raw fi_read loop delivered other bytes at offset {at}"
                );
            }
            self.checked = true;
        }
        report
            .runs
            .first()
            .map(|d| d.as_secs_f64())
            .context("raw_read timed no pass")
    }
}

/// What one backend measured; the incremental and two-partner figures
/// only when asked for.
struct Measured {
    /// The median of the baseline passes run before each full replication.
    baseline_s: Option<f64>,
    baseline_best_s: Option<f64>,
    replicate_full_s: f64,
    replicate_full_cpu_s: f64,
    replicate_full_best_s: f64,
    expose_s: f64,
    expose_fresh_s: f64,
    full_bytes_fetched: u64,
    incr: Option<(f64, u64)>,
    /// Wall and CPU seconds.
    two_partners: Option<(f64, f64)>,
}

struct Round {
    expose_s: f64,
    pull_s: f64,
    pull_cpu_s: f64,
    fetched: u64,
}

/// The three stores of one backend's measurement, removed on drop.
struct Stores {
    roots: [PathBuf; 3],
    stores: Option<[Store; 3]>,
}

impl Stores {
    fn open(base: &Path, tag: &str, chunk: usize) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let job = format!("pmbench-repl-{pid}");
        let roots = ["a", "b", "c"].map(|n| base.join(format!("pmbench-{tag}-node-{n}-{pid}")));
        let opts = StoreOptions {
            chunk_size: chunk,
            ..StoreOptions::default()
        };
        let mut this = Self {
            roots: roots.clone(),
            stores: None,
        };
        let open = |r: &PathBuf| Store::open(r, &job, 0, opts.clone());
        this.stores = Some([open(&roots[0])?, open(&roots[1])?, open(&roots[2])?]);
        Ok(this)
    }

    fn destroy(mut self) -> anyhow::Result<()> {
        if let Some(stores) = self.stores.take() {
            for s in stores {
                s.destroy()?;
            }
        }
        Ok(())
    }
}

impl Drop for Stores {
    fn drop(&mut self) {
        for r in &self.roots {
            let _ = std::fs::remove_dir_all(r);
        }
    }
}

/// Replicates `state` from `a` (reached at `from`) to `b`'s store, and
/// with `everything` also incrementally and to `b` and a third endpoint
/// (`third()`, opened only then, so that the single-partner figures see
/// no idle endpoint of a node that is not there) at once; the last
/// replica is checked against `state`. A `baseline` pass runs just before
/// each full replication, so that both see the same machine (on a shared
/// host, CPU steal comes and goes within seconds).
#[allow(clippy::too_many_arguments)]
fn measure<T: Transport>(
    args: &Args,
    tag: &str,
    (a, b): (&T, &T),
    third: impl FnOnce() -> anyhow::Result<T>,
    from: &T::Peer,
    state: &mut RegionBuf,
    sink: &mut RegionBuf,
    everything: bool,
    mut baseline: Option<&mut dyn FnMut() -> anyhow::Result<f64>>,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Measured> {
    let chunk = args.chunk_size as usize;
    let base = args.store.clone().unwrap_or_else(default_root);
    let mut stores = Stores::open(&base, tag, chunk)?;
    let [src, dst, dst2] = stores.stores.as_mut().context("stores")?;

    let mut epoch = 0u64;
    let mut puller = replicate::Puller::new(b);
    let mut exposer = replicate::Exposer::default();
    let mut round = |src: &mut Store, dst: &mut Store, state: &[u8]| -> anyhow::Result<Round> {
        epoch += 1;
        src.write(epoch, epoch, &[RegionRef::new("state", state)])?;
        let snap = src.open_snapshot(epoch)?;
        let t = Instant::now();
        let exposed = exposer.expose(a, src, &snap)?;
        let expose_s = t.elapsed().as_secs_f64();
        let (t, cpu) = (Instant::now(), process_cpu_s());
        let report = puller.pull(from, &exposed.manifest, &exposed.data_keys, dst)?;
        let pull_s = t.elapsed().as_secs_f64();
        let pull_cpu_s = process_cpu_s() - cpu;
        exposed.withdraw(a)?;
        Ok(Round {
            expose_s,
            pull_s,
            pull_cpu_s,
            fetched: report.bytes_fetched,
        })
    };

    progress(&format!(
        "{tag}: warm-up: three full replicas fill both stores to steady state"
    ));
    // Keep (2) epochs and the spare: from the fourth on, pages are recycled.
    let mut expose_fresh_s = 0.0;
    for r in 0..3 {
        touch_chunks(state, chunk, 1, r);
        let rd = round(src, dst, state)?;
        if r == 0 {
            expose_fresh_s = rd.expose_s;
        }
    }
    progress(&format!(
        "{tag}: full replications (every chunk changed){}",
        if baseline.is_some() {
            ", each after a baseline pass"
        } else {
            ""
        }
    ));
    let mut full = Vec::new();
    let mut full_cpu = Vec::new();
    let mut expose = Vec::new();
    let mut base_runs = Vec::new();
    let mut full_bytes = 0;
    for r in 0..args.repeat {
        if let Some(f) = baseline.as_mut() {
            base_runs.push(f()?);
        }
        touch_chunks(state, chunk, 1, r as u8);
        let rd = round(src, dst, state)?;
        ensure!(
            rd.fetched == args.size,
            "a full replica moved {} of {} bytes",
            rd.fetched,
            args.size
        );
        full.push(rd.pull_s);
        full_cpu.push(rd.pull_cpu_s);
        expose.push(rd.expose_s);
        full_bytes = rd.fetched;
    }
    let mut incr_figures = None;
    let mut two_partners = None;
    if everything {
        progress(&format!(
            "{tag}: incremental replications (1% of chunks changed)"
        ));
        let chunks = state.len().div_ceil(chunk);
        let stride = (chunks / (chunks / 100).max(1)).max(1);
        let mut incr = Vec::new();
        let mut incr_bytes = 0;
        for r in 0..args.repeat {
            touch_chunks(state, chunk, stride, r as u8);
            let rd = round(src, dst, state)?;
            incr.push(rd.pull_s);
            incr_bytes = rd.fetched;
        }
        incr_figures = Some((median(incr), incr_bytes));

        progress(&format!(
            "{tag}: two partners at once (every chunk changed)"
        ));
        let c = third()?;
        let mut second = replicate::Puller::new(&c);
        let mut two = Vec::new();
        let mut two_cpu = Vec::new();
        for r in 0..args.repeat + 3 {
            touch_chunks(state, chunk, 1, r as u8);
            epoch += 1;
            src.write(epoch, epoch, &[RegionRef::new("state", state)])?;
            let snap = src.open_snapshot(epoch)?;
            let exposed = exposer.expose(a, src, &snap)?;
            let (t, cpu) = (Instant::now(), process_cpu_s());
            let (one, other) = std::thread::scope(|s| {
                let b_pull =
                    s.spawn(|| puller.pull(from, &exposed.manifest, &exposed.data_keys, dst));
                let c_pull = second.pull(from, &exposed.manifest, &exposed.data_keys, dst2);
                (b_pull.join().expect("pull thread"), c_pull)
            });
            let wall = t.elapsed().as_secs_f64();
            let used = process_cpu_s() - cpu;
            one?;
            other?;
            exposed.withdraw(a)?;
            // The first three bring the third store to steady state.
            if r >= 3 {
                two.push(wall);
                two_cpu.push(used);
            }
        }
        two_partners = Some((median(two), median(two_cpu)));
        drop(second);
    }

    progress(&format!(
        "{tag}: checking that the replica restores bit-exactly"
    ));
    let replica = dst.latest_valid()?.snapshot.context("no valid replica")?;
    sink.fill(0);
    replica.read_region("state", sink)?;
    ensure!(
        sink[..] == state[..],
        "the replica differs from the source state"
    );
    drop(puller);
    drop(exposer);
    stores.destroy()?;
    Ok(Measured {
        baseline_best_s: base_runs.iter().copied().reduce(f64::min),
        baseline_s: (!base_runs.is_empty()).then(|| median(base_runs)),
        replicate_full_best_s: full.iter().copied().fold(f64::INFINITY, f64::min),
        replicate_full_s: median(full),
        replicate_full_cpu_s: median(full_cpu),
        expose_s: median(expose),
        expose_fresh_s,
        full_bytes_fetched: full_bytes,
        incr: incr_figures,
        two_partners,
    })
}

/// The TCP endpoint of node `node` on 127.0.0.`octet`.
fn tcp_endpoint(
    args: &Args,
    secret: &JobSecret,
    octet: u8,
    node: &str,
) -> anyhow::Result<TcpTransport> {
    Ok(TcpTransport::bind(
        SocketAddr::from((Ipv4Addr::new(127, 0, 0, octet), 0)),
        secret.clone(),
        TcpOptions {
            node: node.into(),
            connections_per_peer: args.connections,
            ..TcpOptions::default()
        },
    )?)
}

/// Measures the TCP backend: nodes on 127.0.0.2, .3 and .4.
fn measure_tcp(
    args: &Args,
    state: &mut RegionBuf,
    sink: &mut RegionBuf,
    everything: bool,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Measured> {
    let secret = JobSecret::generate()?;
    let a = tcp_endpoint(args, &secret, 2, "a")?;
    let b = tcp_endpoint(args, &secret, 3, "b")?;
    let from = a.local_addr();
    let third = || tcp_endpoint(args, &secret, 4, "c");
    measure(
        args,
        "tcp",
        (&a, &b),
        third,
        &from,
        state,
        sink,
        everything,
        None,
        progress,
    )
}

/// The loopback source address for endpoint `octet` of a provider that
/// runs over IP sockets (`tcp;ofi_rxm`, `net`, `sockets`, `udp;ofi_rxd`);
/// none for the others (`shm` has no IP address, and a NIC's provider
/// picks its own).
fn fabric_source(provider: &str, octet: u8) -> Option<String> {
    ["tcp", "net", "sockets", "udp"]
        .iter()
        .any(|p| provider.split(';').any(|part| part == *p))
        .then(|| format!("127.0.0.{octet}"))
}

/// What `fi_getinfo` offers, for error messages.
fn offered() -> String {
    match providers(None) {
        Ok(p) if p.is_empty() => "none".into(),
        Ok(p) => p.join(", "),
        Err(e) => format!("(cannot list them: {e})"),
    }
}

/// The provider `--transport fabric[:PROVIDER]` names: that one, or the
/// first one `fi_getinfo` offers with RMA.
fn fabric_provider(provider: Option<&str>) -> anyhow::Result<String> {
    match provider {
        Some(p) => Ok(p.to_owned()),
        None => providers(None)
            .context("--transport fabric: listing libfabric's providers")?
            .into_iter()
            .next()
            .context("--transport fabric: libfabric offers no provider with RMA here"),
    }
}

/// The endpoint of node `node` over `provider`, on 127.0.0.`octet` where
/// the provider has IP addresses.
fn fabric_endpoint(provider: &str, octet: u8, node: &str) -> anyhow::Result<FabricTransport> {
    FabricTransport::open(
        Some(provider),
        FabricOptions {
            node: node.into(),
            source: fabric_source(provider, octet),
            ..FabricOptions::default()
        },
    )
    .with_context(|| {
        format!(
            "--transport fabric:{provider}: cannot open libfabric provider {provider:?}; fi_getinfo offers here: {}",
            offered()
        )
    })
}

/// Measures the fabric backend over `provider`, with a raw `fi_read`
/// pass before each full replication: nodes on 127.0.0.2, .3 and .4 where
/// the provider has IP addresses.
fn measure_fabric(
    args: &Args,
    provider: &str,
    state: &mut RegionBuf,
    sink: &mut RegionBuf,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Measured> {
    let a = fabric_endpoint(provider, 2, "a")?;
    let b = fabric_endpoint(provider, 3, "b")?;
    let from = a.address();
    let third = || fabric_endpoint(provider, 4, "c");
    progress(&format!(
        "raw fi_read baseline over {provider}: {} B reads, {} in flight",
        args.raw_chunk, args.raw_window
    ));
    let mut raw = RawFabricLoop::new(provider, state, args)?;
    let mut raw_pass = || raw.pass();
    measure(
        args,
        "fabric",
        (&a, &b),
        third,
        &from,
        state,
        sink,
        true,
        Some(&mut raw_pass),
        progress,
    )
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let size = usize::try_from(args.size).context("--size does not fit in memory")?;
    ensure!(size > 0, "--size must be positive");
    ensure!(args.repeat > 0, "--repeat must be at least 1");
    let base = args.store.clone().unwrap_or_else(default_root);
    let progress = crate::util::progress("replicate", args.json);
    let gbs = |s: f64| args.size as f64 / s / 1e9;

    let provider = match &args.transport {
        TransportChoice::Tcp => None,
        TransportChoice::Fabric(p) => {
            let name = fabric_provider(p.as_deref())?;
            // Before a gigabyte is filled: a provider that cannot be
            // opened is said at once.
            let _probe = fabric_endpoint(&name, 2, "probe")?;
            Some(name)
        }
    };

    progress("filling the state with pseudo-random bytes");
    let mut state = RegionBuf::new(size)?;
    let mut sink = RegionBuf::new(size)?;
    fill_pseudo_random(&mut state);

    let (measured, transport, provider, raw_s, raw_tcp, raw_fabric, tcp) = match provider {
        None => {
            progress("raw TCP baseline");
            let raw: Vec<f64> = (0..args.repeat)
                .map(|_| raw_tcp(&state, &mut sink))
                .collect::<Result<_, _>>()?;
            ensure!(
                sink[..] == state[..],
                "the raw stream delivered other bytes"
            );
            let raw_tcp_s = median(raw);
            let m = measure_tcp(args, &mut state, &mut sink, true, &progress)?;
            (m, "tcp", None, raw_tcp_s, Some(raw_tcp_s), None, None)
        }
        Some(name) => {
            let m = measure_fabric(args, &name, &mut state, &mut sink, &progress)?;
            let raw_fabric_s = m.baseline_s.context("no raw fi_read passes")?;
            let raw_fabric_best_s = m.baseline_best_s.context("no raw fi_read passes")?;
            let t = measure_tcp(args, &mut state, &mut sink, false, &progress)?;
            let tcp = TcpComparison {
                tcp_replicate_full_s: t.replicate_full_s,
                tcp_replicate_gbs: gbs(t.replicate_full_s),
                fabric_over_tcp: t.replicate_full_s / m.replicate_full_s,
            };
            let raw = RawFabric {
                raw_fabric_s,
                raw_fabric_gbs: gbs(raw_fabric_s),
                raw_fabric_chunk: args.raw_chunk,
                raw_fabric_window: args.raw_window,
                raw_fabric_best_s,
                replicate_full_best_s: m.replicate_full_best_s,
                replicate_over_raw_best: raw_fabric_best_s / m.replicate_full_best_s,
            };
            (
                m,
                "fabric",
                Some(name),
                raw_fabric_s,
                None,
                Some(raw),
                Some(tcp),
            )
        }
    };

    let (incr_s, incr_bytes) = measured.incr.context("no incremental figures")?;
    let (two, two_cpu) = measured.two_partners.context("no two-partner figures")?;
    let full_s = measured.replicate_full_s;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let r2_floor_here = (two_cpu / cores as f64 / full_s).max(1.0);
    let report = Report {
        transport,
        provider,
        bytes: args.size,
        chunk_size: args.chunk_size,
        store: base,
        connections: args.connections,
        repeat: args.repeat,
        raw_tcp_s: raw_tcp,
        raw_tcp_gbs: raw_tcp.map(gbs),
        raw_fabric,
        replicate_full_s: full_s,
        replicate_gbs: gbs(full_s),
        replicate_over_raw: raw_s / full_s,
        tcp,
        expose_s: measured.expose_s,
        expose_fresh_s: measured.expose_fresh_s,
        full_bytes_fetched: measured.full_bytes_fetched,
        replicate_incr_1pct_s: incr_s,
        incr_bytes_fetched: incr_bytes,
        incr_bytes_over_full: incr_bytes as f64 / measured.full_bytes_fetched as f64,
        replicate_2_partners_s: two,
        r2_over_r1: two / full_s,
        cores,
        replicate_full_cpu_s: measured.replicate_full_cpu_s,
        replicate_2_partners_cpu_s: two_cpu,
        r2_floor_here,
        r2_over_floor: two / full_s / r2_floor_here,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "state            {} bytes in {}-byte chunks, stores under {}",
        report.bytes,
        report.chunk_size,
        report.store.display()
    );
    let baseline = match (&report.provider, &report.raw_fabric) {
        (Some(p), Some(r)) => {
            println!("transport        libfabric, provider {p}");
            println!(
                "raw fi_read      {:8.4} s  {:6.2} GB/s  ({} B reads, {} in flight)",
                r.raw_fabric_s, r.raw_fabric_gbs, r.raw_fabric_chunk, r.raw_fabric_window
            );
            "raw fi_read"
        }
        _ => {
            println!("raw TCP          {:8.4} s  {:6.2} GB/s", raw_s, gbs(raw_s));
            "raw TCP"
        }
    };
    println!(
        "full replica     {:8.4} s  {:6.2} GB/s  {:.2}x {baseline} throughput",
        full_s, report.replicate_gbs, report.replicate_over_raw
    );
    if let Some(r) = &report.raw_fabric {
        println!(
            "  best of each   {:8.4} s  against {:.4} s raw: {:.2}x",
            r.replicate_full_best_s, r.raw_fabric_best_s, r.replicate_over_raw_best
        );
    }
    if let Some(t) = &report.tcp {
        println!(
            "  over TCP       {:8.4} s  {:6.2} GB/s  (fabric: {:.2}x TCP's throughput)",
            t.tcp_replicate_full_s, t.tcp_replicate_gbs, t.fabric_over_tcp
        );
    }
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
    println!(
        "CPU              one partner {:.2} s, two {:.2} s on {} cores: \
         two partners take at least {:.2}x one here ({:.2}x that floor)",
        report.replicate_full_cpu_s,
        report.replicate_2_partners_cpu_s,
        report.cores,
        report.r2_floor_here,
        report.r2_over_floor
    );
    Ok(())
}
