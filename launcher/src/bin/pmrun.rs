//! `pmrun`: runs an MPI job whose ranks checkpoint with pm, and relaunches it
//! from its newest committed checkpoint when it fails.

use anyhow::{Context, bail};
use clap::Parser;
use pm_launcher::backend::{LaunchPlan, Mpirun};
use pm_launcher::hosts::{self, Host};
use pm_launcher::supervise::Supervisor;
use std::path::{Path, PathBuf};

/// Run an MPI job that resumes from its last checkpoint when it fails.
///
/// The application links pm (Rust crate or libpm.so); pmrun starts it with
/// mpirun, gives every rank its job id and checkpoint settings, and, when the
/// job dies after committing a checkpoint, starts it again so that it resumes
/// there. The exit status is the application's.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:\n  pmrun -n 4 ./heat --steps 1000\n  pmrun -np 64 --hostfile nodes --every 100 ./app input.dat\n  pmrun -n 8 -H n1:4,n2:4 -x OMP_NUM_THREADS=2 ./app"
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
    #[arg(long, value_name = "STEPS", conflicts_with = "interval", value_parser = clap::value_parser!(u64).range(1..))]
    every: Option<u64>,
    /// Checkpoint every this many seconds [default: 60].
    #[arg(long, value_name = "SECONDS")]
    interval: Option<f64>,
    /// Checkpoint store directory on every node [default: /dev/shm/pmrun-<uid>].
    #[arg(long, value_name = "DIR", env = "PM_STORE")]
    store: Option<PathBuf>,
    /// Job id: reuse one to resume a job whose pmrun was stopped [default: a new id].
    #[arg(long, value_name = "ID")]
    job: Option<String>,
    /// Relaunches after failures before giving up.
    #[arg(long, default_value_t = 3, value_name = "N")]
    max_restarts: u32,
    /// The mpirun to use.
    #[arg(long, default_value = "mpirun", value_name = "PATH")]
    mpirun: PathBuf,
    /// Say what is launched where.
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
    const TAKES_VALUE: [&str; 13] = [
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

fn nodes(cli: &Cli) -> anyhow::Result<Vec<Host>> {
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

fn job_id(cli: &Cli) -> anyhow::Result<String> {
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
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!(
                "{}-{secs}-{}",
                if stem.is_empty() { "job" } else { &stem },
                std::process::id()
            )
        }
    };
    pm_core::names::validate_job_id(&id)?;
    Ok(id)
}

fn environment(cli: &Cli, job: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = vec![("PM_JOB".to_string(), job.to_string())];
    if let Some(store) = &cli.store {
        env.push(("PM_STORE".into(), store.display().to_string()));
    }
    if let Some(every) = cli.every {
        env.push(("PM_EVERY".into(), every.to_string()));
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

fn main() {
    let cli = Cli::parse_from(normalise_args(std::env::args().collect()));
    match run(&cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("pmrun: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<i32> {
    let mut app = cli.app.clone();
    app[0] = find_app(&app[0])?.display().to_string();
    let hosts = nodes(cli)?;
    let job = job_id(cli)?;
    let env = environment(cli, &job)?;
    let store = cli
        .store
        .clone()
        .unwrap_or_else(pm_core::store::default_root);
    let plan = LaunchPlan {
        ranks: cli.ranks,
        hosts,
        app,
        env,
    };
    if cli.verbose {
        let where_: Vec<String> = plan
            .hosts
            .iter()
            .map(|h| format!("{}:{}", h.name, h.slots))
            .collect();
        eprintln!(
            "pmrun: job {job}: {} ranks on {}; checkpoints in {}",
            cli.ranks,
            where_.join(","),
            store.display()
        );
    }
    let backend = Mpirun {
        program: cli.mpirun.clone(),
    };
    Supervisor {
        backend: &backend,
        plan,
        job_record: store.join(&job).join("committed"),
        max_restarts: cli.max_restarts,
    }
    .run()
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
        assert!(
            Cli::try_parse_from([
                "pmrun",
                "-n",
                "2",
                "--every",
                "3",
                "--interval",
                "4",
                "./app"
            ])
            .is_err()
        );
    }
}
