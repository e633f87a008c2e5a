//! `pmrun`: launches an MPI job that survives node failures (not built yet).

use clap::Parser;

/// Run an MPI job that survives node failures, drains and load imbalance.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Number of ranks.
    #[arg(short = 'n', long = "np")]
    ranks: Option<u32>,
    /// The application and its arguments.
    #[arg(trailing_var_arg = true)]
    app: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(pm_launcher::NOT_YET)
}
