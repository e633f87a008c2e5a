//! `pm`: the rank runtime an MPI application links.
//!
//! The application keeps its state in registered regions and calls
//! [`Runtime::step`] once per time step. The runtime takes coordinated
//! checkpoints of those regions into the node-local store (rank 0 decides,
//! one broadcast tells every rank), commits an epoch only when every rank's
//! snapshot is durable, and on a restart restores the newest committed epoch.
//!
//! ```no_run
//! # fn main() -> Result<(), pm::PmError> {
//! let universe = mpi::initialize().unwrap();
//! let mut rt = pm::Runtime::init(&universe.world())?;
//! let mut grid: pm::Region<f64> = rt.region("grid", 1024)?;
//! let start = rt.restored_step().unwrap_or(0);
//! for _step in start..100 {
//!     grid.with_mut(|g| g[0] += 1.0); // compute, exchange halos over MPI, ...
//!     if rt.step()? == pm::Action::Exit {
//!         return Ok(());
//!     }
//! }
//! rt.finalize()
//! # }
//! ```
//!
//! A region's memory is reached only inside [`Region::with`] and
//! [`Region::with_mut`], so no borrow of it is alive while `step()` reads it
//! for a checkpoint; `step()` called from inside `with_mut` is an error.
//!
//! Under `pmrun`, each rank also reports its snapshots to its node's agent,
//! which replicates them to partner nodes; `pmrun` then commits ([`agent`]).
//! About once a second (`PM_LOAD_PERIOD`) each rank also reports its load:
//! its steps' compute time, CPU time and I/O delay since the last report,
//! its state's size and, once the application declared it with
//! [`Runtime::set_total_steps`], the job's length, from which `pmrun` judges
//! whether moving ranks pays off before the job ends.
//!
//! Blocking MPI calls are timed through the PMPI interface ([`pmpi`]; for
//! Fortran programs [`pmpi_fortran`]) so that a step's compute time excludes
//! time spent waiting on other ranks. The C ABI (`include/pm.h`,
//! `libpm.so`) is in [`capi`]. Configuration comes from the environment
//! ([`config`]).

pub mod agent;
mod capi;
mod comm;
pub mod config;
mod error;
mod load;
pub mod pmpi;
pub mod pmpi_fortran;
mod region;
mod runtime;
mod timing;

pub use error::{PmError, code};
pub use pm_core::region::{PAGE_SIZE, RegionBuf};
pub use region::{Region, Value};
pub use runtime::{Action, CheckpointReport, Runtime};
pub use timing::StepStats;
