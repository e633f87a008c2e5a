//! `pmd`: the per-node agent of a pmrun job (not built yet).

use clap::Parser;

/// pmrun node agent: holds and replicates the checkpoints of the ranks on its node.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(pm_launcher::PMD_NOT_YET)
}
