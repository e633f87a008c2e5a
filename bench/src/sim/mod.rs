//! `pmbench sim`: drives the very same pure state machines as the node agents
//! (`pm_core::gossip`, `pm_core::balance`) for clusters far larger than any
//! test machine, with baselines computed in the same run.

mod balance;
mod cluster;
mod gossip;
mod plot;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum Sim {
    /// Rounds until a load change is known to 50% / 99% of nodes, per policy and cluster size.
    Gossip(gossip::Args),
    /// Placement and rebalancing on a skewed, heterogeneous cluster against baselines.
    Balance(balance::Args),
    /// Renders PNG plots from the JSON of `sim gossip` and `sim balance`.
    Plot(plot::Args),
}

pub fn run(sim: &Sim) -> anyhow::Result<()> {
    match sim {
        Sim::Gossip(args) => gossip::run(args),
        Sim::Balance(args) => balance::run(args),
        Sim::Plot(args) => plot::run(args),
    }
}
