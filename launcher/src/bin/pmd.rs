//! `pmd`: the node agent of one pmrun job. `pmrun` starts it, one per node;
//! it is not meant to be run by hand.

use anyhow::Context;
use clap::Parser;
use pm_launcher::agent::{self, AgentOptions};
use pm_launcher::transport::TransportChoice;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

/// Node agent of a pmrun job: replicates the node's checkpoints to partner
/// nodes, stores partners' replicas, and heartbeats to pmrun. Started by
/// pmrun; see `pmrun --help`.
#[derive(Parser, Debug)]
#[command(name = "pmd", version)]
struct Cli {
    /// This node's name in the job.
    #[arg(long)]
    node: String,
    /// This node's id in the job (its index in pmrun's node list).
    #[arg(long)]
    node_id: u32,
    /// Address to listen on for partner agents and transfers.
    #[arg(long)]
    addr: IpAddr,
    /// The node's checkpoint store root.
    #[arg(long)]
    store: PathBuf,
    /// The job id.
    #[arg(long)]
    job: String,
    /// pmrun's address.
    #[arg(long)]
    launcher: SocketAddr,
    /// File with the job's 32-byte secret. Without it the secret comes in
    /// PM_SECRET (64 hex digits: agents started by srun on other nodes),
    /// and pmd writes it, readable by the user only, next to --socket as
    /// `secret` for the node's ranks.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Unix socket for the node's ranks.
    #[arg(long)]
    socket: PathBuf,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 0.5)]
    heartbeat: f64,
    /// CPU cgroup directory to move the node's ranks into.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// The flush directory (a shared file system), where committed
    /// snapshots are copied to outlive the node's store.
    #[arg(long)]
    flush: Option<PathBuf>,
    /// The bulk transport: tcp, fabric or fabric:PROVIDER.
    #[arg(long, default_value = "tcp")]
    transport: TransportChoice,
    /// CPUs the node offers.
    #[arg(long, default_value_t = 1.0)]
    cpus: f64,
}

fn main() {
    // Before any handler of ours: libfabric's libraries install their own.
    pm_transport_fabric::reset_library_signal_handlers();
    let filter = std::env::var("PM_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    // Slurm's `--signal=USR1@T` reaches every task of the job's steps, pmd
    // among them: the ranks act on it, pmd must not die of it.
    for sig in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGUSR2] {
        // A flag nobody reads: the default action (terminate) becomes none.
        let _ = signal_hook::flag::register(sig, Default::default());
    }
    // A secret that came in the environment was written beside the rank
    // socket for the ranks: pmd removes it, and the directories it made
    // for it, when it ends.
    let written = cli.secret_file.is_none().then(|| cli.socket.clone());
    let slurm_mark = slurm_mark(&cli);
    let job_dir = cli.store.join(&cli.job);
    let result = run(cli);
    // The mark first: the secret's directories go up to the node's store,
    // which is removed once empty.
    if let Some(mark) = slurm_mark.filter(|_| !job_dir.exists()) {
        let _ = std::fs::remove_file(&mark);
        // `.slurm/<SLURM_JOB_ID>`, then `.slurm`, each once empty.
        for dir in mark.ancestors().skip(1).take(2) {
            let _ = std::fs::remove_dir(dir);
        }
    }
    if let Some(socket) = written {
        agent::remove_written_secret(&socket);
    }
    if let Err(e) = result {
        tracing::error!("{e:#}");
        eprintln!("pmd: {e:#}");
        std::process::exit(1);
    }
}

/// Inside a Slurm job, marks the node's store as holding this job:
/// `<store>/.slurm/<SLURM_JOB_ID>/<job>`, an empty file. The SPANK
/// plugin's job epilog removes what the marks name even when pmd could not
/// (it was killed); pmd removes its mark when it leaves no files.
fn slurm_mark(cli: &Cli) -> Option<PathBuf> {
    let id = std::env::var("SLURM_JOB_ID").ok()?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pm_core::names::validate_job_id(&cli.job).ok()?;
    let dir = cli.store.join(".slurm").join(id);
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|()| std::fs::write(dir.join(&cli.job), b""));
    match made {
        Ok(()) => Some(dir.join(&cli.job)),
        Err(e) => {
            tracing::warn!("cannot mark {} for Slurm's epilog: {e}", dir.display());
            None
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    pm_core::names::validate_job_id(&cli.job)?;
    if !(cli.heartbeat > 0.0 && cli.heartbeat.is_finite()) {
        anyhow::bail!(
            "--heartbeat {}: expected seconds greater than 0",
            cli.heartbeat
        );
    }
    let import_delay =
        match std::env::var("PMD_FAULT_IMPORT_DELAY_MS") {
            Ok(ms) => Duration::from_millis(ms.parse().with_context(|| {
                format!("PMD_FAULT_IMPORT_DELAY_MS={ms:?}: expected milliseconds")
            })?),
            Err(_) => Duration::ZERO,
        };
    // Test hook: `PMD_FAULT_REFUSE_IMPORTS=<node>` makes that node's agent
    // refuse every replica.
    let refuse_imports = std::env::var("PMD_FAULT_REFUSE_IMPORTS").is_ok_and(|n| n == cli.node);
    Ok(agent::run(AgentOptions {
        node: cli.node,
        node_id: pm_core::proto::NodeId(cli.node_id),
        addr: cli.addr,
        store: cli.store,
        job: cli.job,
        launcher: cli.launcher,
        secret: match &cli.secret_file {
            Some(file) => agent::read_secret(file)?,
            None => agent::secret_from_env(&cli.socket)?,
        },
        socket: cli.socket,
        heartbeat: Duration::from_secs_f64(cli.heartbeat),
        cgroup: cli.cgroup,
        cpus: cli.cpus,
        flush: cli.flush,
        transport: cli.transport,
        import_delay,
        refuse_imports,
    })?)
}
