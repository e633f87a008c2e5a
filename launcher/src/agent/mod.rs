//! `pmd`, the node agent: one per node and job.
//!
//! It serves the ranks of its node over a Unix socket (they report each
//! published snapshot), replicates those snapshots to the partner agents
//! `pmrun` names, imports the snapshots partners send it, heartbeats to
//! `pmrun`, marks the epochs `pmrun` commits, and deletes the job's files
//! when the job ends. Every connection is authenticated with the job's
//! secret; a connection that fails authentication or breaks the protocol is
//! logged ("rejected") and closed, and never touches a snapshot.
//!
//! Every rule is in [`core`], which does no I/O; [`event_loop`] is the one
//! thread that feeds it events and carries out its actions. Whatever may
//! block runs on threads of its own that report back as events: the
//! launcher link ([`launcher`]), rank connections ([`ranks`]), partners'
//! requests and the imports they lead to ([`partners`]), outgoing
//! replication ([`replicate`]), file work ([`files`]), outgoing gossip
//! ([`gossip_sender`]) and the measurement of what the node's CPUs leave its
//! ranks ([`availability`]).

mod availability;
pub mod core;
mod event_loop;
mod files;
mod flush;
mod gossip_sender;
mod launcher;
mod partners;
mod ranks;
mod replicate;

use crate::transport::{NodeTransport, OpenError, TransportChoice};
use pm_core::Store;
use pm_core::proto::NodeId;
use pm_core::wire::{JobSecret, WireError};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
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
    /// CPUs the node offers (its cgroup quota or the machine's cores).
    pub cpus: f64,
    /// The bulk transport replicas move over (`pmrun --transport`).
    pub transport: TransportChoice,
    /// The flush directory (`pmrun --flush`), where committed snapshots
    /// are copied to outlive the node's store.
    pub flush: Option<PathBuf>,
    /// Test hook: every replica import waits this long before it moves data.
    pub import_delay: Duration,
    /// Test hook: every replica import fails (a partner that stops storing).
    pub refuse_imports: bool,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Transport(#[from] OpenError),
    #[error("pmrun refused this agent: {0}")]
    Launcher(#[from] WireError),
    #[error("the job's secret {path} has {len} bytes, not 32")]
    SecretLength { path: PathBuf, len: usize },
    #[error(
        "no --secret-file and no job secret in PM_SECRET (64 hex digits): pmd is started by pmrun"
    )]
    NoSecret,
}

/// Why a connection to one of the agent's sockets was rejected or ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a {role:?} connected to the {socket}")]
    Role {
        role: pm_core::wire::Role,
        socket: &'static str,
    },
    #[error("the partner did not say where its transport listens")]
    NoHello,
    #[error("the partner's transport address: {0}")]
    Address(#[from] crate::transport::BadPeer),
}

/// `map_err` for I/O errors: says what the agent was doing.
fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// How long a connecting peer may take to authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one replication request may take before the partner is
/// considered unresponsive.
const PARTNER_TIMEOUT: Duration = Duration::from_secs(120);

/// What the agent's threads share: fixed configuration and handles, no
/// agent state (that is the core's).
struct Resources {
    opts: AgentOptions,
    transport: NodeTransport,
    /// Stores opened to import replicas, by rank, kept between imports
    /// (their data files stay mapped). The core runs one import per rank at
    /// a time, so a store is only ever taken out by one import.
    import_stores: Mutex<HashMap<u32, Store>>,
}

impl Resources {
    fn store_options() -> pm_core::StoreOptions {
        pm_core::StoreOptions {
            auto_commit: false,
            ..pm_core::StoreOptions::default()
        }
    }

    fn open_store(&self, rank: u32) -> Result<Store, pm_core::StoreError> {
        Store::open(
            &self.opts.store,
            &self.opts.job,
            rank,
            Self::store_options(),
        )
    }

    fn job_dir(&self) -> PathBuf {
        self.opts.store.join(&self.opts.job)
    }
}

/// An error and its sources, as one line (for logs and for the reasons
/// sent to pmrun and partners).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        // `transparent` and `{0}` variants already show their source.
        if !text.ends_with(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the agent until `pmrun` ends the job or goes away.
pub fn run(opts: AgentOptions) -> Result<(), AgentError> {
    std::fs::create_dir_all(&opts.store)
        .map_err(io_err(format!("create the store {}", opts.store.display())))?;
    let transport =
        NodeTransport::open(&opts.transport, opts.addr, &opts.node, opts.secret.clone())?;
    let partner_listener = TcpListener::bind(SocketAddr::new(opts.addr, 0)).map_err(io_err(
        format!("listen on {} for partner agents", opts.addr),
    ))?;
    let control = partner_listener
        .local_addr()
        .map_err(io_err("read the partner port"))?;
    let _ = std::fs::remove_file(&opts.socket);
    let rank_listener = std::os::unix::net::UnixListener::bind(&opts.socket).map_err(io_err(
        format!("create the rank socket {}", opts.socket.display()),
    ))?;
    let link = launcher::connect(&opts, control, &transport)?;
    tracing::info!(
        node = %opts.node, control = %control, transport = %transport.describe(),
        address = %transport.address(), "agent ready"
    );

    let res = std::sync::Arc::new(Resources {
        opts,
        transport,
        import_stores: Mutex::new(HashMap::new()),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = link.start(&tx).map_err(io_err("start the launcher link"))?;
    ranks::listen(rank_listener, res.clone(), tx.clone()).map_err(io_err("start serving ranks"))?;
    partners::listen(partner_listener, res.clone(), tx.clone())
        .map_err(io_err("start serving partners"))?;
    let workers = event_loop::Workers {
        files: files::start(res.clone(), tx.clone()).map_err(io_err("start the file worker"))?,
        flush: flush::start(res.clone(), tx.clone()).map_err(io_err("start the flush worker"))?,
        gossip: gossip_sender::start(res.clone()).map_err(io_err("start the gossip sender"))?,
        availability: availability::start(tx.clone())
            .map_err(io_err("start the availability worker"))?,
    };
    let core = core::AgentCore::new(
        core::Config {
            job: res.opts.job.clone(),
            node: res.opts.node_id,
            heartbeat: res.opts.heartbeat,
            cpus: res.opts.cpus,
            cgroup: res.opts.cgroup.is_some(),
        },
        std::time::Instant::now(),
    );
    event_loop::EventLoop::new(core, res.clone(), tx, writer, workers).run(rx);
    let _ = std::fs::remove_file(&res.opts.socket);
    Ok(())
}

/// Accepts connections on a thread named `name`, and serves each on a
/// thread of its own with a connection number that is never reused.
fn serve_each<S: Send + 'static>(
    name: &str,
    incoming: impl Iterator<Item = std::io::Result<S>> + Send + 'static,
    serve: impl Fn(core::ConnId, S) + Clone + Send + 'static,
) -> std::io::Result<()> {
    static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
    let thread = format!("{name}-conn");
    spawn(name, move || {
        for stream in incoming.flatten() {
            let serve = serve.clone();
            let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
            let _ = std::thread::Builder::new()
                .name(thread.clone())
                .spawn(move || serve(conn, stream));
        }
    })
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
}

/// Reads the job's secret: a file of exactly 32 random bytes.
pub fn read_secret(path: &Path) -> Result<JobSecret, AgentError> {
    let bytes =
        std::fs::read(path).map_err(io_err(format!("read the job's secret {}", path.display())))?;
    let Ok(bytes) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        return Err(AgentError::SecretLength {
            path: path.to_owned(),
            len: bytes.len(),
        });
    };
    Ok(JobSecret::from_bytes(bytes))
}

/// The variable that carries the job's secret to agents on other nodes.
pub const SECRET_VAR: &str = "PM_SECRET";

/// The job's secret from [`SECRET_VAR`] (64 hex digits), also written,
/// readable by the user only, as `secret` in the directory of the rank
/// socket `socket` (created if missing), where the node's ranks read it.
pub fn secret_from_env(socket: &Path) -> Result<JobSecret, AgentError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let text = std::env::var(SECRET_VAR).unwrap_or_default();
    let secret = parse_hex_secret(&text).ok_or(AgentError::NoSecret)?;
    let dir = socket.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!(
            "create the run directory {}",
            dir.display()
        )))?;
    let path = dir.join("secret");
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(secret.as_bytes()))
        .map_err(io_err(format!("write the job's secret {}", path.display())))?;
    Ok(secret)
}

/// Undoes [`secret_from_env`]: the secret file beside `socket`, then the
/// run directory and its parents up to the store root, as far as they are
/// empty.
pub fn remove_written_secret(socket: &Path) {
    let Some(dir) = socket.parent() else { return };
    let _ = std::fs::remove_file(dir.join("secret"));
    // <root>/.pmrun/<job>: the job's run directory, `.pmrun`, the root.
    for d in dir.ancestors().take(3) {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
    }
}

/// 64 hex digits as a secret.
pub fn parse_hex_secret(text: &str) -> Option<JobSecret> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (b, pair) in bytes.iter_mut().zip(text.chunks(2)) {
        *b = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(JobSecret::from_bytes(bytes))
}

/// The hex form [`parse_hex_secret`] reads.
pub fn hex_secret(secret: &JobSecret) -> String {
    secret
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
