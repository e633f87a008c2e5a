//! `pm-launcher`: the `pmrun` launcher, which is also the job's
//! coordinator, and the `pmd` node agent.

pub mod agent;
pub mod backend;
pub mod coord;
pub mod hosts;
pub mod options;
pub mod slurm;
pub mod transport;
