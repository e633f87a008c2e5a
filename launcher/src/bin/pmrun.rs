//! `pmrun`: runs an MPI job whose ranks checkpoint with pm, with one `pmd`
//! agent per node that replicates the checkpoints to partner nodes; when a
//! node dies, its ranks restart on nodes that hold their replicas.
//! `pmrun ctl` reaches a running job (status, checkpoint, drain).

use anyhow::{Context, bail};
use clap::Parser;
use pm_core::history::AppSignature;
use pm_core::proto::NodeId;
use pm_core::proto::{CtlReply, CtlRequest};
use pm_launcher::backend::{LaunchBackend, Mpirun, Srun};
use pm_launcher::coord::agents::{AgentStarter, LocalAgents, NodeSpec, SrunAgents};
use pm_launcher::coord::job::{BalanceMode, BalanceSettings};
use pm_launcher::coord::{self, JobSpec, cgroup, control};
use pm_launcher::hosts::{self, Host};
use pm_launcher::options;
use pm_launcher::slurm::{self, Allocation};
use pm_launcher::transport::TransportChoice;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Run an MPI job that survives node failures and runs where it is fastest.
///
/// The application links pm (Rust crate or libpm.so). pmrun starts one pmd
/// agent per node, launches the ranks with mpirun, and commits a checkpoint
/// once every rank's snapshot is on its node and on --replicas partner
/// nodes. When a node stops answering, its ranks restart on nodes that hold
/// their replicas; `pmrun ctl drain NODE` moves every rank off a node; ranks
/// move off slow nodes when the gain over the remaining steps pays for the
/// move (--balance). Inside a Slurm allocation the nodes are the
/// allocation's and agents and ranks start with srun (submit with
/// --no-kill to survive a node's loss; --signal=B:USR1@SECONDS and
/// `exec pmrun` stop the job at a checkpoint before its time limit). The
/// exit status is the application's, or 75 when the job stopped at a
/// checkpoint and was kept (SIGUSR1 to pmrun or to mpirun, `pmrun ctl
/// stop`): run pmrun again with --job ID to resume.
#[derive(Parser, Debug)]
#[command(
    name = "pmrun",
    version,
    after_help = "Examples:\n  pmrun -n 8 --local-nodes 4 ./heat --steps 1000\n  pmrun -n 4 --every 100 --replicas 2 --local-nodes 4 ./app input.dat\n  pmrun -n 8 -x OMP_NUM_THREADS=2 ./app\n  #SBATCH --no-kill / exec pmrun -n 64 --spare 1 ./app   (inside sbatch)\n\nWhile it runs (from another shell):\n  pmrun ctl status            nodes, ranks, epochs, replicas\n  pmrun ctl checkpoint        checkpoint now\n  pmrun ctl drain node2       move every rank off node2\n  pmrun ctl balance           decide about balancing now\n  pmrun ctl stop              stop at a checkpoint and keep the job"
)]
struct Cli {
    /// Number of ranks (also -np).
    #[arg(short = 'n', long = "np", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    ranks: u32,
    /// Nodes from a hostfile: `host [slots=N]` per line.
    #[arg(long, value_name = "FILE", conflicts_with = "host")]
    hostfile: Option<PathBuf>,
    /// Nodes as a list: host[:slots],host[:slots],...
    #[arg(short = 'H', long = "host", value_name = "LIST")]
    host: Option<String>,
    /// Export VAR (with its value here, or VALUE) to every rank. Repeatable.
    #[arg(short = 'x', value_name = "VAR[=VALUE]")]
    export: Vec<String>,
    /// Checkpoint every this many steps.
    #[arg(long, value_name = "STEPS", env = "PM_EVERY", value_parser = clap::value_parser!(u64).range(1..))]
    every: Option<u64>,
    /// Checkpoint every this many seconds [default: 60].
    #[arg(long, value_name = "SECONDS", env = "PM_INTERVAL")]
    interval: Option<f64>,
    /// Asynchronous checkpoints: ranks are blocked only while their state is
    /// copied into the store; hashing and publishing run in the background
    /// (no memory beyond the store's own; at most one in flight per rank).
    #[arg(long = "async", env = "PM_ASYNC", value_parser = clap::builder::BoolishValueParser::new())]
    asynchronous: bool,
    /// Checkpoint store directory on every node [default: /dev/shm/pmrun-<uid>].
    #[arg(long, value_name = "DIR", env = "PM_STORE")]
    store: Option<PathBuf>,
    /// Run K virtual nodes on this machine (agents on 127.0.0.2, .3, ...,
    /// each with its own store directory).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=250))]
    local_nodes: Option<u32>,
    /// CPUs each virtual node may use: one value for all, or one per node
    /// (0.5,1,1,1); enforced with a cgroup v1 CPU quota (needs root).
    #[arg(long, value_name = "CPUS[,CPUS...]", requires = "local_nodes")]
    node_cpus: Option<String>,
    /// Partner nodes that hold a replica of every checkpoint.
    #[arg(long, default_value_t = 1, value_name = "R", env = "PM_REPLICAS")]
    replicas: usize,
    /// How the agents move replicas between nodes: tcp (authenticated TCP,
    /// everywhere), fabric (libfabric RMA with the best provider it
    /// offers: verbs, cxi, efa, ...) or fabric:PROVIDER (e.g.
    /// fabric:verbs;ofi_rxm; `fi_info -l` lists them).
    #[arg(
        long,
        default_value = "tcp",
        value_name = "tcp|fabric[:PROVIDER]",
        env = "PM_TRANSPORT"
    )]
    transport: TransportChoice,
    /// Nodes (the last ones) kept free of ranks: replica holders and
    /// places to recover to.
    #[arg(long, default_value_t = 0, value_name = "K", env = "PM_SPARE")]
    spare: u32,
    /// Copy committed checkpoints to this directory of a shared file system
    /// in the background, so they outlive the nodes' stores (and the
    /// allocation); `--job ID` resumes from the newest of the nodes' stores
    /// and this copy.
    #[arg(long, value_name = "DIR", env = "PM_FLUSH")]
    flush: Option<PathBuf>,
    /// Flush every this many commits (a flush still running when the next
    /// is due is left to finish; the one after it takes the newest epoch).
    /// Stops at a checkpoint and the end of a `--keep` job always flush.
    #[arg(long, default_value_t = 1, value_name = "N", env = "PM_FLUSH_EVERY", requires = "flush", value_parser = clap::value_parser!(u64).range(1..))]
    flush_every: u64,
    /// Seconds between agent heartbeats.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    heartbeat: f64,
    /// Seconds without heartbeats after which a node is declared dead.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    fail_after: f64,
    /// Keep the job's checkpoints when it ends.
    #[arg(long)]
    keep: bool,
    /// Job id: reuse one to resume a job whose pmrun was stopped [default: a new id].
    #[arg(long, value_name = "ID")]
    job: Option<String>,
    /// Relaunches after a rank fails on a live node before giving up (lost
    /// nodes do not count).
    #[arg(long, default_value_t = 3, value_name = "N")]
    max_restarts: u32,
    /// How ranks and agents start: `auto` (srun inside a Slurm allocation,
    /// mpirun otherwise), `mpirun` or `srun`.
    #[arg(long, default_value = "auto", value_name = "HOW", value_parser = ["auto", "mpirun", "srun"])]
    launch_with: String,
    /// The mpirun to use.
    #[arg(long, default_value = "mpirun", value_name = "PATH")]
    mpirun: PathBuf,
    /// The srun to use (inside a Slurm allocation).
    #[arg(long, default_value = "srun", value_name = "PATH")]
    srun: PathBuf,
    /// Inside a Slurm allocation: seconds between looks at its nodes'
    /// states; a node Slurm drains (or that fails or awaits a reboot) is
    /// drained as by `pmrun ctl drain`.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    slurm_poll: f64,
    /// Move ranks to where they run fastest: `auto` (when the gain over the
    /// remaining steps pays for the move), `dry-run` (log the plans, move
    /// nothing) or `off`.
    #[arg(long, default_value = "auto", value_name = "MODE", value_parser = ["auto", "dry-run", "off"])]
    balance: String,
    /// Seconds between balancing decisions.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    balance_every: f64,
    /// Each rank's expected compute seconds per step (W,W,... or a file of
    /// numbers), for a weighted first placement.
    #[arg(long, value_name = "LIST|FILE")]
    weights: Option<String>,
    /// The node of every rank (NODE,NODE,...) instead of placing by slots
    /// or weights.
    #[arg(long, value_name = "NODES")]
    placement: Option<String>,
    /// Steps the job has in all, if the application does not say
    /// (pm_set_total_steps): whether a move pays off depends on it.
    #[arg(long = "steps", value_name = "N")]
    total_steps: Option<u64>,
    /// At most this share of a node's ranks may be I/O-bound (0 to 1).
    #[arg(long, value_name = "SHARE")]
    io_mix: Option<f64>,
    /// The history of earlier runs of the same application (weights for the
    /// first placement, steps), or `none`
    /// [default: $XDG_STATE_HOME/pmrun/history, else ~/.local/state/pmrun/history].
    #[arg(long, value_name = "FILE", env = "PM_HISTORY")]
    history: Option<String>,
    /// Say what is launched where and when epochs commit.
    #[arg(short, long)]
    verbose: bool,
    /// The application and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "APP [ARGS]..."
    )]
    app: Vec<String>,
}

/// Open MPI spells `--np` as `-np`; accept that among pmrun's own options
/// (never in the application's arguments) before clap sees it.
fn normalise_args(mut args: Vec<String>) -> Vec<String> {
    const TAKES_VALUE: [&str; 29] = [
        "-n",
        "--np",
        "-np",
        "--hostfile",
        "-H",
        "--host",
        "-x",
        "--every",
        "--interval",
        "--store",
        "--job",
        "--max-restarts",
        "--mpirun",
        "--srun",
        "--launch-with",
        "--slurm-poll",
        "--local-nodes",
        "--node-cpus",
        "--replicas",
        "--spare",
        "--heartbeat",
        "--fail-after",
        "--balance",
        "--balance-every",
        "--weights",
        "--placement",
        "--steps",
        "--io-mix",
        "--history",
    ];
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].clone();
        if arg == "-np" {
            args[i] = "--np".into();
        } else if !arg.starts_with('-') || arg == "--" {
            break; // the application starts here
        }
        i += if TAKES_VALUE.contains(&arg.as_str()) {
            2
        } else {
            1
        };
    }
    args
}

fn find_app(app: &str) -> anyhow::Result<PathBuf> {
    let is_exe = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.is_file()
            && p.metadata()
                .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
    };
    if app.contains('/') {
        let path = PathBuf::from(app);
        if is_exe(&path) {
            return Ok(path);
        }
        bail!("application {app:?} not found or not executable");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(app))
        .find(|p| is_exe(p))
        .with_context(|| {
            format!("application {app:?} not found on PATH (give its path, e.g. ./{app})")
        })
}

fn hosts(cli: &Cli) -> anyhow::Result<Vec<Host>> {
    if let Some(file) = &cli.hostfile {
        return Ok(hosts::read_hostfile(file)?);
    }
    if let Some(list) = &cli.host {
        return Ok(hosts::parse_host_list(list)?);
    }
    if let Ok(list) = std::env::var("SLURM_JOB_NODELIST") {
        let names = hosts::expand_slurm_nodelist(&list)?;
        let per_node = cli.ranks.div_ceil(names.len() as u32).max(1);
        return Ok(names
            .into_iter()
            .map(|name| Host {
                name,
                slots: per_node,
            })
            .collect());
    }
    Ok(hosts::this_machine())
}

/// The address this machine's host name resolves to: where agents on the
/// allocation's nodes reach a pmrun that runs outside it (salloc).
fn this_host_address() -> anyhow::Result<IpAddr> {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    slurm::resolve(&name, &name).with_context(|| {
        format!(
            "pmrun runs outside the allocation's nodes, and its host name {name:?} gives no \
             address its agents could reach: run pmrun from the batch script (or srun it)"
        )
    })
}

/// The Slurm allocation to run in: inside one unless told otherwise
/// (`--launch-with mpirun`, `-H`, `--hostfile`, `--local-nodes`).
fn allocation(cli: &Cli) -> anyhow::Result<Option<Allocation>> {
    let chosen = cli.hostfile.is_some() || cli.host.is_some() || cli.local_nodes.is_some();
    let alloc = match cli.launch_with.as_str() {
        "mpirun" => None,
        _ if chosen => None,
        _ => Allocation::from_env()?,
    };
    if cli.launch_with == "srun" && alloc.is_none() {
        bail!(
            "--launch-with srun: not inside a Slurm allocation (no SLURM_JOB_ID and \
             SLURM_JOB_NODELIST), or -H/--hostfile/--local-nodes chose the nodes; \
             run pmrun from an sbatch script or salloc"
        );
    }
    Ok(alloc)
}

/// The nodes of a Slurm allocation: each with the tasks Slurm gave it (or
/// an even share of the ranks, if they are fewer), its store below
/// `store` and the address Slurm knows it by.
fn slurm_nodes(cli: &Cli, store: &Path, alloc: &Allocation) -> anyhow::Result<Vec<NodeSpec>> {
    let k = alloc.nodes.len() as u32;
    if cli.spare >= k {
        bail!(
            "--spare {} leaves none of the allocation's {k} node(s) to run ranks",
            cli.spare
        );
    }
    let workers = k - cli.spare;
    let names: Vec<String> = alloc.nodes.iter().map(|h| h.name.clone()).collect();
    let addrs = slurm::node_addresses(Path::new("scontrol"), &names)?;
    let allocated: u32 = alloc.nodes[..workers as usize]
        .iter()
        .map(|h| h.slots)
        .sum();
    let even = cli.ranks.div_ceil(workers);
    Ok(alloc
        .nodes
        .iter()
        .zip(addrs)
        .enumerate()
        .map(|(i, (host, addr))| NodeSpec {
            name: host.name.clone(),
            slots: if allocated >= cli.ranks {
                host.slots
            } else {
                host.slots.max(even)
            },
            addr,
            host: host.clone(),
            // Node-local on a cluster; distinct when test nodes share a machine.
            store: store.join(&host.name),
            spare: i as u32 >= workers,
            cgroup: None,
            cpus: f64::from(host.slots.max(1)),
            memory_bytes: options::mem_available(),
        })
        .collect())
}

/// The job's nodes: virtual nodes, or this machine.
fn nodes(cli: &Cli, store: &Path, job: &str) -> anyhow::Result<Vec<NodeSpec>> {
    let cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let this_machine = hosts::this_machine().remove(0);
    if let Some(k) = cli.local_nodes {
        if cli.spare >= k {
            bail!(
                "--spare {} leaves none of the {k} virtual nodes to run ranks",
                cli.spare
            );
        }
        let workers = k - cli.spare;
        let slots = cli.ranks.div_ceil(workers).max(1);
        let node_cpus = match &cli.node_cpus {
            Some(list) => Some(options::node_cpus(list, k as usize).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let enforced = match &node_cpus {
            Some(_) => match cgroup::available() {
                Ok(()) => true,
                Err(why) => {
                    eprintln!("pmrun: --node-cpus is not enforced: {why}");
                    false
                }
            },
            None => false,
        };
        let memory = options::mem_available() / u64::from(k);
        return (0..k)
            .map(|i| {
                let name = format!("node{}", i + 1);
                let node_cpu = node_cpus.as_ref().map(|c| c[i as usize]);
                let cgroup = match node_cpu {
                    Some(c) if enforced => Some(cgroup::create(job, &name, c)?),
                    _ => None,
                };
                Ok(NodeSpec {
                    // Every virtual node's ranks run on this machine: mpirun
                    // is offered its real cores, so that it oversubscribes
                    // (and waiting ranks yield) instead of spinning.
                    host: this_machine.clone(),
                    store: store.join(&name),
                    addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)),
                    slots,
                    spare: i >= workers,
                    cgroup,
                    cpus: node_cpu.unwrap_or(cpus),
                    memory_bytes: memory,
                    name,
                })
            })
            .collect();
    }
    let hosts = hosts(cli)?;
    if let Some(remote) = hosts.iter().find(|h| !hosts::is_this_machine(&h.name)) {
        bail!(
            "host {:?} is not this machine: this pmrun release starts its node agents on this \
             machine only (use --local-nodes K for virtual nodes here)",
            remote.name
        );
    }
    if cli.spare > 0 {
        bail!(
            "--spare {} needs more than one node (use --local-nodes K)",
            cli.spare
        );
    }
    let slots = hosts.iter().map(|h| h.slots).sum();
    Ok(vec![NodeSpec {
        name: "localhost".into(),
        host: this_machine,
        slots,
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        store: store.to_owned(),
        spare: false,
        cgroup: None,
        cpus,
        memory_bytes: options::mem_available(),
    }])
}

/// The balancing settings, with what the history remembers of this
/// application (and where to record this run).
fn balancing(
    cli: &Cli,
    app: &[String],
) -> anyhow::Result<(BalanceSettings, Option<(PathBuf, AppSignature)>)> {
    let mode = match cli.balance.as_str() {
        "off" => BalanceMode::Off,
        "dry-run" => BalanceMode::DryRun,
        _ => BalanceMode::Auto,
    };
    if let Some(mix) = cli.io_mix
        && !(0.0..=1.0).contains(&mix)
    {
        bail!("--io-mix {mix}: expected a share between 0 and 1");
    }
    let mut settings = BalanceSettings {
        mode,
        every: seconds("--balance-every", cli.balance_every)?,
        total_steps_hint: cli.total_steps,
        io_mix: cli.io_mix,
        ..BalanceSettings::default()
    };
    if let Some(w) = &cli.weights {
        let weights = options::weights(w, cli.ranks).map_err(anyhow::Error::msg)?;
        settings.initial = Some(
            weights
                .into_iter()
                .map(|w| pm_core::estimate::Estimate::from_history(w, 0.0, 5))
                .collect(),
        );
        settings.initial_source = "--weights".into();
    }
    let history = match options::history_path(cli.history.as_deref()) {
        Some(path) => match coord::history::signature(app, cli.ranks) {
            Ok(sig) => Some((path, sig)),
            Err(e) => {
                eprintln!("pmrun: no history: cannot read {}: {e}", app[0]);
                None
            }
        },
        None => None,
    };
    if let Some((path, sig)) = &history {
        let recalled = coord::history::recall(path, *sig, cli.ranks, |w| eprintln!("pmrun: {w}"));
        settings.total_steps_history = recalled.steps;
        if settings.initial.is_none()
            && let Some(estimates) = recalled.estimates
        {
            settings.initial = Some(estimates);
            settings.initial_source = format!("the history of earlier runs, {}", path.display());
        }
    }
    Ok((settings, history))
}

fn seconds(flag: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v > 0.0 && v.is_finite()) {
        bail!("{flag} {v}: expected a number of seconds greater than 0");
    }
    Ok(Duration::from_secs_f64(v))
}

/// The job id: `--job`, else one made of the application's name and, inside
/// a Slurm allocation, its job id (so that a job Slurm requeues finds its
/// checkpoints and resumes by itself), else the time and pmrun's pid.
fn job_id(cli: &Cli, alloc: Option<&Allocation>) -> anyhow::Result<String> {
    let id = match &cli.job {
        Some(id) => id.clone(),
        None => {
            let stem = Path::new(&cli.app[0])
                .file_stem()
                .map_or("job".into(), |s| s.to_string_lossy().into_owned());
            let stem: String = stem
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .take(32)
                .collect();
            let stem = if stem.is_empty() { "job" } else { &stem };
            match alloc {
                Some(a) => format!("{stem}-slurm{}", a.job_id),
                None => {
                    let secs = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    format!("{stem}-{secs}-{}", std::process::id())
                }
            }
        }
    };
    pm_core::names::validate_job_id(&id)?;
    Ok(id)
}

fn environment(cli: &Cli) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    if let Some(every) = cli.every {
        env.push(("PM_EVERY".into(), every.to_string()));
    }
    if cli.asynchronous {
        env.push(("PM_ASYNC".into(), "1".into()));
    }
    if let Some(interval) = cli.interval {
        if !(interval > 0.0 && interval.is_finite()) {
            bail!("--interval {interval}: expected a number of seconds greater than 0");
        }
        env.push(("PM_INTERVAL".into(), interval.to_string()));
    }
    for x in &cli.export {
        let (name, value) = match x.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (
                x.clone(),
                std::env::var(x).with_context(|| format!("-x {x}: {x} is not set here"))?,
            ),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("-x {x}: {name:?} is not a variable name");
        }
        env.push((name, value));
    }
    Ok(env)
}

/// Talk to a running pmrun job: its status, a checkpoint now, or a drain.
#[derive(Parser, Debug)]
#[command(
    name = "pmrun ctl",
    bin_name = "pmrun ctl",
    version,
    after_help = "Examples:\n  pmrun ctl status\n  pmrun ctl status --json --job heat-1700000000-4242\n  pmrun ctl checkpoint\n  pmrun ctl drain node2\n  pmrun ctl balance\n  pmrun ctl set-cpus node2 0.25\n  pmrun ctl stop"
)]
struct CtlCli {
    /// The job's store directory [default: /dev/shm/pmrun-<uid>].
    #[arg(long, value_name = "DIR", env = "PM_STORE", global = true)]
    store: Option<PathBuf>,
    /// The job, as pmrun printed it at its start [default: the only running one].
    #[arg(long, value_name = "ID", global = true)]
    job: Option<String>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CtlCommand {
    /// Nodes, ranks, committed epoch, replicas, recoveries.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take a checkpoint now; returns once it is committed.
    Checkpoint,
    /// Checkpoint, move every rank off NODE, and continue without it.
    Drain { node: String },
    /// Decide about balancing now: move ranks if it pays (and balancing is
    /// on), else say why not.
    Balance,
    /// Give NODE CPUS CPUs from now on (virtual nodes: their CPU quota), as
    /// if it slowed down or got faster.
    SetCpus {
        node: String,
        #[arg(value_parser = positive_cpus)]
        cpus: f64,
    },
    /// Stop the job at a checkpoint and keep it (as SIGUSR1 to pmrun does):
    /// `pmrun --job ID` with the same command resumes it.
    Stop,
}

fn positive_cpus(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(c) if c > 0.0 && c.is_finite() => Ok(c),
        _ => Err(format!("{s:?} is not a number of CPUs greater than 0")),
    }
}

fn ctl(args: Vec<String>) -> anyhow::Result<i32> {
    let cli = CtlCli::parse_from(args);
    let store = cli.store.unwrap_or_else(pm_core::store::default_root);
    let (req, json) = match cli.command {
        CtlCommand::Status { json } => (CtlRequest::Status, json),
        CtlCommand::Checkpoint => (CtlRequest::Checkpoint, false),
        CtlCommand::Drain { node } => (CtlRequest::Drain { node }, false),
        CtlCommand::Balance => (CtlRequest::Balance, false),
        CtlCommand::SetCpus { node, cpus } => (CtlRequest::SetCpus { node, cpus }, false),
        CtlCommand::Stop => (CtlRequest::Stop, false),
    };
    // The reply is typed; it becomes text (or JSON) only here.
    let (ok, text) = match control::request(&store, cli.job.as_deref(), req)? {
        CtlReply::Status(s) if json => (true, serde_json::to_string(&s)?),
        CtlReply::Status(s) => (true, coord::render::text(&s)),
        CtlReply::Committed { epoch, step } => {
            (true, format!("epoch {epoch} committed at step {step}"))
        }
        CtlReply::Drained(r) => (true, coord::render::drained(&r)),
        CtlReply::Refused { reason } => (false, reason),
        CtlReply::Balanced(d) => (true, coord::render::decision(&d)),
        CtlReply::CpusSet { node, cpus, how } => {
            (true, format!("node {node} now has {cpus} CPU(s) ({how})"))
        }
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = writeln!(std::io::stdout(), "{}", text.trim_end());
    Ok(if ok { 0 } else { 1 })
}

fn main() {
    // Before any handler of ours: libfabric's libraries install their own.
    pm_transport_fabric::reset_library_signal_handlers();
    let args: Vec<String> = std::env::args().collect();
    let result = if args.get(1).map(String::as_str) == Some("ctl") {
        ctl(args[1..].to_vec())
    } else {
        let cli = parse_cli(normalise_args(args));
        init_logging(cli.verbose);
        run(&cli)
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("pmrun: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The command line, with `--every` and `--interval` resolved: a flag wins
/// over the other's environment variable (`PM_EVERY`, `PM_INTERVAL`, set
/// by `#SBATCH --pm-every` for example); two flags, or two variables, are
/// an error.
fn parse_cli(args: Vec<String>) -> Cli {
    try_parse_cli(args).unwrap_or_else(|e| e.exit())
}

fn try_parse_cli<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let from_flag = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    if cli.every.is_some() && cli.interval.is_some() {
        match (from_flag("every"), from_flag("interval")) {
            (true, false) => cli.interval = None,
            (false, true) => cli.every = None,
            (both_flags, _) => {
                let what = if both_flags {
                    "--every and --interval"
                } else {
                    "PM_EVERY and PM_INTERVAL (in the environment)"
                };
                return Err(command.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("{what} both say when to checkpoint: give one"),
                ));
            }
        }
    }
    Ok(cli)
}

/// Structured logs on stderr, filtered by `PM_LOG` (errors, or warnings
/// with -v); coloured only on a terminal.
fn init_logging(verbose: bool) {
    let default = if verbose { "warn" } else { "error" };
    let filter = std::env::var("PM_LOG").unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Whether this machine can open the `--transport` asked for.
fn check_transport_here(choice: &TransportChoice) -> anyhow::Result<()> {
    let TransportChoice::Fabric { provider } = choice else {
        return Ok(());
    };
    pm_transport_fabric::choose_provider(provider.as_deref(), None)
        .with_context(|| format!("--transport {choice} (--transport tcp needs no libfabric)"))?;
    Ok(())
}

/// `--flush DIR`, made absolute (agents on other nodes get the same path)
/// and created if needed, private to the user.
fn flush_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = std::path::absolute(dir)
        .with_context(|| format!("--flush {}: not a usable path", dir.display()))?;
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .with_context(|| {
            format!(
                "--flush {}: cannot create the directory (it should be on a file system every node \
                 shares, writable by you)",
                dir.display()
            )
        })?;
    Ok(dir)
}

fn run(cli: &Cli) -> anyhow::Result<i32> {
    let mut app = cli.app.clone();
    app[0] = find_app(&app[0])?.display().to_string();
    let alloc = allocation(cli)?;
    let job = job_id(cli, alloc.as_ref())?;
    let env = environment(cli)?;
    let store = cli
        .store
        .clone()
        .unwrap_or_else(pm_core::store::default_root);
    let nodes = match &alloc {
        Some(a) => slurm_nodes(cli, &store, a)?,
        None => nodes(cli, &store, &job)?,
    };
    let (balance, history) = balancing(cli, &app)?;
    let placement = match &cli.placement {
        Some(list) => {
            let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
            let map = options::placement(list, &names, cli.ranks).map_err(anyhow::Error::msg)?;
            Some(map.into_iter().map(NodeId::from_index).collect())
        }
        None => None,
    };
    let spec = JobSpec {
        balance,
        placement,
        history,
        job,
        ranks: cli.ranks,
        app,
        env,
        nodes,
        replicas: cli.replicas,
        heartbeat: seconds("--heartbeat", cli.heartbeat)?,
        fail_after: seconds("--fail-after", cli.fail_after)?,
        keep: cli.keep,
        max_restarts: cli.max_restarts,
        store,
        verbose: cli.verbose,
        slurm_watch: match alloc {
            Some(_) => Some(seconds("--slurm-poll", cli.slurm_poll)?),
            None => None,
        },
        flush: match &cli.flush {
            Some(dir) => Some((flush_dir(dir)?, cli.flush_every)),
            None => None,
        },
        transport: cli.transport.clone(),
    };
    if alloc.is_none() {
        // The agents run here: a provider this machine lacks is said now,
        // with what it offers, rather than by every agent as it dies.
        // (Under Slurm the nodes say it themselves: this may be a login
        // node without the fabric.)
        check_transport_here(&spec.transport)?;
    }
    if spec.fail_after <= spec.heartbeat {
        bail!(
            "--fail-after {} must be longer than --heartbeat {}",
            cli.fail_after,
            cli.heartbeat
        );
    }
    let (backend, agents): (Box<dyn LaunchBackend>, Box<dyn AgentStarter>) = match &alloc {
        Some(a) => {
            // pmrun's own node (a batch script), else this machine (salloc
            // on a login node): the address every agent can reach it on.
            let node = a
                .this_node
                .as_deref()
                .and_then(|here| spec.nodes.iter().find(|n| n.name == here));
            let listen = match node {
                Some(n) => n.addr,
                None => this_host_address()?,
            };
            (
                Box::new(Srun {
                    program: cli.srun.clone(),
                    hostfile: control::run_dir(&spec.store, &spec.job).join("hostfile"),
                }),
                Box::new(SrunAgents::new(&cli.srun, &spec.job, listen)),
            )
        }
        None => (
            Box::new(Mpirun {
                program: cli.mpirun.clone(),
            }),
            Box::new(LocalAgents::new(&spec.job, &spec.store)),
        ),
    };
    coord::run(spec, backend, agents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalise_args(args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn dash_np_is_accepted_only_among_pmrun_options() {
        assert_eq!(
            norm(&["pmrun", "-np", "4", "app"]),
            ["pmrun", "--np", "4", "app"]
        );
        assert_eq!(
            norm(&["pmrun", "-v", "-np", "4", "app", "-np", "2"]),
            ["pmrun", "-v", "--np", "4", "app", "-np", "2"]
        );
        assert_eq!(
            norm(&["pmrun", "-n", "4", "app", "-np"]),
            ["pmrun", "-n", "4", "app", "-np"]
        );
    }

    #[test]
    fn a_job_in_a_slurm_allocation_is_named_after_it_so_a_requeued_one_resumes() {
        let cli = Cli::try_parse_from(["pmrun", "-n", "2", "/bin/heat"]).unwrap();
        let alloc = Allocation {
            job_id: "42".into(),
            nodes: vec![],
            this_node: None,
        };
        assert_eq!(job_id(&cli, Some(&alloc)).unwrap(), "heat-slurm42");
        assert!(job_id(&cli, None).unwrap().starts_with("heat-"));
        let named =
            Cli::try_parse_from(["pmrun", "-n", "2", "--job", "mine", "/bin/heat"]).unwrap();
        assert_eq!(job_id(&named, Some(&alloc)).unwrap(), "mine");
    }

    #[test]
    fn command_line_parses_like_mpirun() {
        let cli = Cli::try_parse_from([
            "pmrun", "-n", "8", "-H", "a:4,b:4", "-x", "A=1", "--every", "5", "./app", "--flag",
            "-x",
        ])
        .unwrap();
        assert_eq!((cli.ranks, cli.every), (8, Some(5)));
        let with_store =
            Cli::try_parse_from(["pmrun", "-n", "1", "--store", "/scratch/ckpt", "./app"]).unwrap();
        assert_eq!(with_store.store, Some(PathBuf::from("/scratch/ckpt")));
        assert_eq!(cli.app, ["./app", "--flag", "-x"]);
        assert!(Cli::try_parse_from(["pmrun", "-n", "0", "./app"]).is_err());
        assert!(Cli::try_parse_from(["pmrun", "-n", "2"]).is_err());
        let both = [
            "pmrun",
            "-n",
            "2",
            "--every",
            "3",
            "--interval",
            "4",
            "./app",
        ];
        let err = try_parse_cli(both).expect_err("--every with --interval");
        assert!(err.to_string().contains("--every and --interval"), "{err}");
    }
}
