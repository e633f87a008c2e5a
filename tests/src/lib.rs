//! `pm-tests`: integration tests that start pmrun's real binaries and real
//! processes and kill them with SIGKILL. The helper programs the tests drive
//! live in `src/bin/`; what they share with the tests lives here.

pub mod bounded;
pub mod fabric;
pub mod header;
pub mod job;
pub mod mpi;
pub mod slurm;
pub mod store_workload;

pub use bounded::Bounded;
