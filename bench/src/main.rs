//! `pmbench`: measures pmrun against baselines taken in the same run.
//!
//! Every scenario prints one JSON object with `--json` (for scripts and the
//! closing notes of issues) or a short table otherwise. Absolute times on
//! shared machines are noisy; the ratios to a baseline measured seconds
//! earlier on the same machine are what to compare.

mod balance;
mod ckpt;
mod flush;
mod heap;
mod overhead;
mod pmjob;
mod recovery;
mod replicate;
mod sim;
mod size;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "pmrun benchmarks: each scenario reports figures and same-run baselines"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Checkpoint store: full, incremental and restore times against memcpy.
    Ckpt(ckpt::Args),
    /// Rank runtime: heat under mpirun with and without pm.
    Overhead(overhead::Args),
    /// Cluster simulator: gossip dissemination and balancing at up to 10^5 nodes.
    #[command(subcommand)]
    Sim(sim::Sim),
    /// Replication of a snapshot to a partner over loopback (TCP or libfabric) against a raw transfer.
    Replicate(replicate::Args),
    /// Live balancing: heat with one slow node, static vs. balanced vs. the ideal placement.
    Balance(balance::Args),
    /// Node failure under pmrun: detect, stop, place, resume against a plain mpirun start.
    Recovery(recovery::Args),
    /// Flush of committed checkpoints to a shared file system against a plain copy.
    Flush(flush::Args),
}

fn main() -> anyhow::Result<()> {
    // Before any handler of ours: libfabric's libraries install their own.
    pm_transport_fabric::reset_library_signal_handlers();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PM_LOG"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().scenario {
        Scenario::Ckpt(args) => ckpt::run(&args),
        Scenario::Overhead(args) => overhead::run(&args),
        Scenario::Sim(sim) => sim::run(&sim),
        Scenario::Replicate(args) => replicate::run(&args),
        Scenario::Recovery(args) => recovery::run(&args),
        Scenario::Balance(args) => balance::run(&args),
        Scenario::Flush(args) => flush::run(&args),
    }
}
