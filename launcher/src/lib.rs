//! `pm-launcher`: the `pmrun` launcher (which also supervises a running job)
//! and the `pmd` node agent.
//!
//! Built so far: mpirun-style node lists (hostfiles, `-H`, Slurm node
//! lists, this machine), the launch backend trait with `mpirun`, and the
//! supervisor that relaunches a failed job from its committed checkpoint.
//! Not yet: `pmd` agents, replication to partner nodes, failure detection by
//! heartbeats, and placing a dead node's ranks elsewhere.

pub mod backend;
pub mod hosts;
pub mod supervise;

/// What `pmd` prints until the node agent exists.
pub const PMD_NOT_YET: &str = "the pmd node agent is not built yet in this pmrun release: \
pmrun supervises jobs without it (see README.md, 'State of the capabilities')";
