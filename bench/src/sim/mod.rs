//! `pmbench sim`: drives the very same pure state machines as the node agents
//! (`pm_core::gossip`, `pm_core::balance`) for clusters far larger than any
//! test machine, with baselines computed in the same run.

mod balance;
mod cluster;
mod gossip;
mod job;
mod plot;

use clap::Subcommand;
use std::time::Instant;

/// Wall time and this thread's CPU time: on a shared machine the CPU time is
/// what "on one core" means, whatever else runs.
pub struct Timer {
    wall: Instant,
    cpu: f64,
}

impl Timer {
    pub fn start() -> Self {
        Timer {
            wall: Instant::now(),
            cpu: thread_cpu_s(),
        }
    }

    /// `(wall_s, cpu_s)` since `start`.
    pub fn elapsed(&self) -> (f64, f64) {
        (self.wall.elapsed().as_secs_f64(), thread_cpu_s() - self.cpu)
    }
}

fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[derive(Subcommand)]
pub enum Sim {
    /// Rounds until a load change is known to 50% / 99% of nodes, per policy and cluster size.
    Gossip(gossip::Args),
    /// Placement and rebalancing on a skewed, heterogeneous cluster against baselines.
    Balance(balance::Args),
    /// pmrun's coordinator core driven by simulated agents: messages,
    /// decisions per second and recovery decisions at 10⁴ nodes.
    Job(job::Args),
    /// Renders PNG plots from the JSON of `sim gossip` and `sim balance`.
    Plot(plot::Args),
}

pub fn run(sim: &Sim) -> anyhow::Result<()> {
    match sim {
        Sim::Gossip(args) => gossip::run(args),
        Sim::Balance(args) => balance::run(args),
        Sim::Job(args) => job::run(args),
        Sim::Plot(args) => plot::run(args),
    }
}
