//! `pmd`, the node agent: one per node and job.
//!
//! It serves the ranks of its node over a Unix socket (they report each
//! published snapshot), replicates those snapshots to the partner agents
//! `pmrun` names ([`replicate`]), imports the snapshots partners send it,
//! heartbeats to `pmrun`, marks the epochs `pmrun` commits, and deletes the
//! job's files when the job ends. Every connection is authenticated with the
//! job's secret; a connection that fails authentication or breaks the
//! protocol is logged and closed, and never touches a snapshot.

mod ranks;
mod replicate;

use anyhow::{Context, bail};
use pm_core::proto::{FromAgent, Inventory, Load, NodeId, ToAgent};
use pm_core::store::commit::{CommitRecord, write_record};
use pm_core::transport::{TcpOptions, TcpTransport};
use pm_core::wire::{JobSecret, Limits, Role, Session, SessionSender};
use pm_core::{Store, StoreOptions};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How `pmrun` configured this agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node: String,
    /// The node's id in the job (its index in pmrun's node list).
    pub node_id: NodeId,
    /// Address the agent listens on (partners, transfers).
    pub addr: IpAddr,
    /// The node's store root.
    pub store: PathBuf,
    pub job: String,
    pub launcher: SocketAddr,
    pub secret: JobSecret,
    /// Unix socket the node's ranks connect to.
    pub socket: PathBuf,
    pub heartbeat: Duration,
    /// CPU cgroup the node's ranks are moved into (virtual nodes).
    pub cgroup: Option<PathBuf>,
    /// CPUs the node offers (reported in heartbeats).
    pub cpus: f64,
    /// Test hook: every replica import waits this long before it moves data.
    pub import_delay: Duration,
    /// Test hook: every replica import fails (a partner that stops storing).
    pub refuse_imports: bool,
}

/// How long a connecting peer may take to authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one replication request may take before the partner is
/// considered unresponsive.
const PARTNER_TIMEOUT: Duration = Duration::from_secs(120);

/// What the agent knows about the job, shared by its threads.
struct Shared {
    opts: AgentOptions,
    transport: TcpTransport,
    launcher: Mutex<(TcpStream, SessionSender)>,
    state: Mutex<State>,
    /// Per rank: the lock an import holds, and the store it imports into.
    imports: Mutex<HashMap<u32, Arc<Mutex<Option<Store>>>>>,
}

#[derive(Default)]
struct State {
    /// Ranks that run on this node.
    local: BTreeSet<u32>,
    /// Partner nodes of each local rank.
    partners: HashMap<u32, Vec<NodeId>>,
    /// Where each node's agent takes replication requests.
    peers: HashMap<NodeId, String>,
    /// Processes of the ranks connected to this agent.
    rank_pids: HashMap<u32, u32>,
    /// Newest epoch `pmrun` committed.
    committed: Option<u64>,
    /// Newest epoch each local rank published.
    published: HashMap<u32, u64>,
    /// Replication workers, by rank.
    workers: HashMap<u32, std::sync::mpsc::Sender<replicate::Work>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn tell_launcher(&self, msg: &FromAgent) {
        let mut guard = lock(&self.launcher);
        let (stream, session) = &mut *guard;
        if let Err(e) = session.send(stream, msg) {
            tracing::warn!(error = %e, "cannot reach pmrun");
        }
    }

    fn store_options() -> StoreOptions {
        StoreOptions {
            auto_commit: false,
            ..StoreOptions::default()
        }
    }

    fn job_dir(&self) -> PathBuf {
        self.opts.store.join(&self.opts.job)
    }

    /// Ranks with a directory in this node's store.
    fn ranks_on_disk(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.job_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("rank-")?.parse().ok())
            .collect()
    }
}

/// Runs the agent until `pmrun` ends the job or goes away.
pub fn run(opts: AgentOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.store)
        .with_context(|| format!("cannot create the store {}", opts.store.display()))?;
    let transport = TcpTransport::bind(
        SocketAddr::new(opts.addr, 0),
        opts.secret.clone(),
        TcpOptions {
            node: opts.node.clone(),
            ..TcpOptions::default()
        },
    )
    .with_context(|| format!("cannot listen on {} for transfers", opts.addr))?;
    let peers = TcpListener::bind(SocketAddr::new(opts.addr, 0))
        .with_context(|| format!("cannot listen on {} for partner agents", opts.addr))?;
    let control = peers.local_addr()?;
    let _ = std::fs::remove_file(&opts.socket);
    let rank_listener = std::os::unix::net::UnixListener::bind(&opts.socket)
        .with_context(|| format!("cannot create the rank socket {}", opts.socket.display()))?;

    let mut stream = TcpStream::connect(opts.launcher)
        .with_context(|| format!("cannot reach pmrun at {}", opts.launcher))?;
    stream.set_nodelay(true)?;
    let session = Session::connect(
        &mut stream,
        &opts.secret,
        &opts.launcher.to_string(),
        &opts.node,
        Role::Agent,
        Limits::default(),
    )
    .context("pmrun refused this agent")?;
    let (mut sender, mut receiver) = session.split();
    sender.send(
        &mut stream,
        &FromAgent::Ready {
            control: control.to_string(),
            transport: transport.local_addr().to_string(),
            pid: std::process::id(),
        },
    )?;
    let mut reader = stream.try_clone()?;
    let shared = Arc::new(Shared {
        opts,
        transport,
        launcher: Mutex::new((stream, sender)),
        state: Mutex::new(State::default()),
        imports: Mutex::new(HashMap::new()),
    });
    tracing::info!(node = %shared.opts.node, control = %control, "agent ready");

    spawn("pmd-ranks", {
        let shared = shared.clone();
        move || ranks::serve(shared, rank_listener)
    })?;
    spawn("pmd-partners", {
        let shared = shared.clone();
        move || replicate::serve_partners(shared, peers)
    })?;
    spawn("pmd-heartbeat", {
        let shared = shared.clone();
        move || heartbeat(&shared)
    })?;

    loop {
        let msg: ToAgent = match receiver.recv(&mut reader) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "lost pmrun; stopping and keeping the job's checkpoints");
                let _ = std::fs::remove_file(&shared.opts.socket);
                return Ok(());
            }
        };
        match msg {
            ToAgent::Commit { epoch, step, ranks } => commit(&shared, epoch, step, ranks),
            ToAgent::Placement {
                generation,
                local,
                partners,
                peers,
            } => {
                lock(&shared.state).peers =
                    peers.into_iter().map(|p| (p.node, p.control)).collect();
                place(&shared, local, partners);
                shared.tell_launcher(&FromAgent::PlacementApplied { generation });
            }
            ToAgent::KillRanks => {
                let ranks = kill_ranks(&shared);
                shared.tell_launcher(&FromAgent::RanksKilled { ranks });
            }
            ToAgent::Inventory => shared.tell_launcher(&FromAgent::Inventory(inventory(&shared))),
            ToAgent::DeleteJob => {
                let dir = shared.job_dir();
                if let Err(e) = std::fs::remove_dir_all(&dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot delete the job's checkpoints");
                }
                let _ = std::fs::remove_file(&shared.opts.socket);
                tracing::info!("job ended; its checkpoints on this node are deleted");
                return Ok(());
            }
            ToAgent::Exit => {
                let _ = std::fs::remove_file(&shared.opts.socket);
                tracing::info!("job stopped; its checkpoints on this node are kept");
                return Ok(());
            }
        }
    }
}

/// Serves every incoming connection on a thread of its own.
fn serve_each<S: Send + 'static>(
    incoming: impl Iterator<Item = std::io::Result<S>>,
    thread: &str,
    serve: impl Fn(S) + Clone + Send + 'static,
) {
    for stream in incoming.flatten() {
        let serve = serve.clone();
        let _ = std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || serve(stream));
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .with_context(|| format!("cannot start thread {name}"))
}

fn heartbeat(shared: &Shared) {
    for seq in 0.. {
        let ranks = lock(&shared.state).local.len() as u32;
        shared.tell_launcher(&FromAgent::Heartbeat {
            seq,
            load: Load {
                ranks,
                step_seconds: 0.0,
                cpus: shared.opts.cpus,
            },
            waiting: None,
        });
        std::thread::sleep(shared.opts.heartbeat);
    }
}

/// Records `epoch` as the job's committed epoch on this node, and as
/// committed in every rank directory that holds it (own ranks and replicas).
fn commit(shared: &Shared, epoch: u64, step: u64, ranks: u32) {
    lock(&shared.state).committed = Some(epoch);
    let job_dir = shared.job_dir();
    if std::fs::create_dir_all(&job_dir).is_ok() {
        let record = CommitRecord { epoch, step, ranks };
        // Durable: on a disk store, `pmrun --job` resumes from this record
        // after a reboot (on tmpfs the sync costs nothing).
        if let Err(e) = write_record(&job_dir.join("committed"), record, true) {
            tracing::error!(error = %e, "cannot write the job's commit record");
        }
    }
    for rank in shared.ranks_on_disk() {
        let marked = Store::open(
            &shared.opts.store,
            &shared.opts.job,
            rank,
            Shared::store_options(),
        )
        .and_then(|store| {
            if store.epochs()?.contains(&epoch) {
                store.mark_committed(epoch, ranks)
            } else {
                Ok(())
            }
        });
        if let Err(e) = marked {
            tracing::error!(rank, epoch, error = %e, "cannot mark the epoch committed");
        }
    }
    tracing::debug!(epoch, "epoch committed");
}

/// Applies a new placement: waits for imports into ranks that now run here
/// (their directories become the ranks' own), and fills partners that are
/// new for a local rank with its committed snapshot.
fn place(shared: &Arc<Shared>, local: Vec<u32>, partners: Vec<(u32, Vec<NodeId>)>) {
    let partners: HashMap<u32, Vec<NodeId>> = partners.into_iter().collect();
    let local: BTreeSet<u32> = local.into_iter().collect();
    for rank in &local {
        let slot = lock(&shared.imports).get(rank).cloned();
        if let Some(slot) = slot {
            // Waits for a running import, then forgets the importer's store.
            lock(&slot).take();
        }
    }
    let mut state = lock(&shared.state);
    let mut fills = Vec::new();
    for rank in &local {
        let before: &[NodeId] = if state.local.contains(rank) {
            state.partners.get(rank).map_or(&[], |v| v.as_slice())
        } else {
            &[]
        };
        let added: Vec<NodeId> = partners
            .get(rank)
            .into_iter()
            .flatten()
            .filter(|p| !before.contains(p))
            .copied()
            .collect();
        if added.is_empty() {
            continue;
        }
        // The committed epoch, and the one in flight if any: it could never
        // commit without the replaced partner. (Epoch numbers are never
        // reused, so a stale one cannot be mistaken for a newer snapshot.)
        if let Some(committed) = state.committed {
            fills.push((*rank, committed, added.clone()));
        }
        if let Some(&newest) = state.published.get(rank)
            && state.committed.is_none_or(|c| newest > c)
        {
            fills.push((*rank, newest, added));
        }
    }
    state.workers.retain(|rank, _| local.contains(rank));
    state.local = local;
    state.partners = partners;
    drop(state);
    for (rank, epoch, to) in fills {
        replicate::enqueue(shared, rank, replicate::Work::Fill { epoch, to });
    }
}

/// SIGKILLs the processes of the node's connected ranks; the ranks killed.
fn kill_ranks(shared: &Shared) -> Vec<u32> {
    let pids: Vec<(u32, u32)> = lock(&shared.state)
        .rank_pids
        .iter()
        .map(|(&r, &p)| (r, p))
        .collect();
    let mut killed = Vec::new();
    for (rank, pid) in pids {
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
            killed.push(rank);
        }
    }
    killed.sort_unstable();
    tracing::info!(?killed, "ranks killed");
    killed
}

/// What this node's store holds of the job.
fn inventory(shared: &Shared) -> Inventory {
    let record = pm_core::store::commit::read_record(&shared.job_dir().join("committed"))
        .ok()
        .flatten();
    let mut ranks: Vec<(u32, Vec<u64>)> = shared
        .ranks_on_disk()
        .into_iter()
        .filter_map(|rank| {
            let store = Store::open(
                &shared.opts.store,
                &shared.opts.job,
                rank,
                Shared::store_options(),
            )
            .ok()?;
            Some((rank, store.epochs().ok()?))
        })
        .collect();
    ranks.sort_unstable();
    Inventory {
        committed: record.map(|r| (r.epoch, r.step, r.ranks)),
        ranks,
    }
}

/// Reads the job's secret: a file of exactly 32 random bytes.
pub fn read_secret(path: &std::path::Path) -> anyhow::Result<JobSecret> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the job's secret {}", path.display()))?;
    let Ok(bytes) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        bail!(
            "the job's secret {} has {} bytes, not 32",
            path.display(),
            bytes.len()
        );
    };
    Ok(JobSecret::from_bytes(bytes))
}
