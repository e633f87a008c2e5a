//! Time blocked in MPI, measured through the PMPI profiling interface.
//!
//! Every blocking MPI entry point below is defined here under its `MPI_`
//! name; it takes a timestamp, calls the real `PMPI_` function of the MPI
//! library and adds the elapsed time to a counter — the way mpiP and IPM
//! measure MPI time. Linked into a Rust program (rlib) the executable's
//! definition takes precedence over libmpi's weak `MPI_` symbols; for C
//! programs `libpm.so` interposes when it is linked before `-lmpi` (as
//! `pkg-config --libs pm` on an `mpicc` line does).
//!
//! Fortran programs do not come through here: Open MPI's Fortran bindings
//! call `PMPI_` directly. [`crate::pmpi_fortran`] interposes their entry
//! points (`mpi_barrier_`, `mpi_barrier_f08_`, ...) for the same calls and
//! adds to the same counter, through [`timed`].
//!
//! A step's compute time is then its wall time minus the MPI time, so a rank
//! that waits for a slow neighbour is not counted as loaded.

use mpi::ffi::{self, MPI_Comm, MPI_Datatype, MPI_Op, MPI_Request, MPI_Status};
use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

static MPI_NS: AtomicU64 = AtomicU64::new(0);
static MPI_CALLS: AtomicU64 = AtomicU64::new(0);
static BASE: OnceLock<Instant> = OnceLock::new();

#[inline]
fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Total time spent inside the interposed MPI calls by this process.
pub fn mpi_time() -> Duration {
    Duration::from_nanos(MPI_NS.load(Relaxed))
}

/// Number of interposed MPI calls made by this process.
pub fn mpi_calls() -> u64 {
    MPI_CALLS.load(Relaxed)
}

/// Runs one blocking MPI call and counts it and its duration as MPI time.
#[inline]
pub(crate) fn timed<R>(call: impl FnOnce() -> R) -> R {
    let t0 = now_ns();
    let r = call();
    MPI_NS.fetch_add(now_ns() - t0, Relaxed);
    MPI_CALLS.fetch_add(1, Relaxed);
    r
}

macro_rules! interpose {
    ($( $name:ident => $pname:ident ( $($a:ident : $t:ty),* ); )*) => {
        /// Names of the interposed functions.
        pub const INTERPOSED: &[&str] = &[$(stringify!($name)),*];
        $(
            #[unsafe(no_mangle)]
            #[allow(non_snake_case, clippy::too_many_arguments)]
            /// # Safety
            /// The caller upholds the MPI standard's contract for this call.
            pub unsafe extern "C" fn $name($($a: $t),*) -> c_int {
                // The signature must match the MPI library's prototype.
                let _check: unsafe extern "C" fn($($t),*) -> c_int = ffi::$name;
                // SAFETY: forwarded unchanged to the real implementation.
                timed(|| unsafe { ffi::$pname($($a),*) })
            }
        )*
    };
}

interpose! {
    MPI_Send => PMPI_Send(buf: *const c_void, count: c_int, dt: MPI_Datatype, dest: c_int, tag: c_int, comm: MPI_Comm);
    MPI_Ssend => PMPI_Ssend(buf: *const c_void, count: c_int, dt: MPI_Datatype, dest: c_int, tag: c_int, comm: MPI_Comm);
    MPI_Recv => PMPI_Recv(buf: *mut c_void, count: c_int, dt: MPI_Datatype, src: c_int, tag: c_int, comm: MPI_Comm, st: *mut MPI_Status);
    MPI_Sendrecv => PMPI_Sendrecv(sbuf: *const c_void, scount: c_int, sdt: MPI_Datatype, dest: c_int, stag: c_int,
        rbuf: *mut c_void, rcount: c_int, rdt: MPI_Datatype, src: c_int, rtag: c_int, comm: MPI_Comm, st: *mut MPI_Status);
    MPI_Sendrecv_replace => PMPI_Sendrecv_replace(buf: *mut c_void, count: c_int, dt: MPI_Datatype, dest: c_int, stag: c_int,
        src: c_int, rtag: c_int, comm: MPI_Comm, st: *mut MPI_Status);
    MPI_Probe => PMPI_Probe(src: c_int, tag: c_int, comm: MPI_Comm, st: *mut MPI_Status);
    MPI_Wait => PMPI_Wait(req: *mut MPI_Request, st: *mut MPI_Status);
    MPI_Waitall => PMPI_Waitall(n: c_int, reqs: *mut MPI_Request, sts: *mut MPI_Status);
    MPI_Waitany => PMPI_Waitany(n: c_int, reqs: *mut MPI_Request, idx: *mut c_int, st: *mut MPI_Status);
    MPI_Waitsome => PMPI_Waitsome(n: c_int, reqs: *mut MPI_Request, outn: *mut c_int, idx: *mut c_int, sts: *mut MPI_Status);
    MPI_Barrier => PMPI_Barrier(comm: MPI_Comm);
    MPI_Bcast => PMPI_Bcast(buf: *mut c_void, count: c_int, dt: MPI_Datatype, root: c_int, comm: MPI_Comm);
    MPI_Reduce => PMPI_Reduce(sbuf: *const c_void, rbuf: *mut c_void, count: c_int, dt: MPI_Datatype, op: MPI_Op, root: c_int, comm: MPI_Comm);
    MPI_Allreduce => PMPI_Allreduce(sbuf: *const c_void, rbuf: *mut c_void, count: c_int, dt: MPI_Datatype, op: MPI_Op, comm: MPI_Comm);
    MPI_Gather => PMPI_Gather(sbuf: *const c_void, scount: c_int, sdt: MPI_Datatype, rbuf: *mut c_void, rcount: c_int, rdt: MPI_Datatype, root: c_int, comm: MPI_Comm);
    MPI_Allgather => PMPI_Allgather(sbuf: *const c_void, scount: c_int, sdt: MPI_Datatype, rbuf: *mut c_void, rcount: c_int, rdt: MPI_Datatype, comm: MPI_Comm);
    MPI_Scatter => PMPI_Scatter(sbuf: *const c_void, scount: c_int, sdt: MPI_Datatype, rbuf: *mut c_void, rcount: c_int, rdt: MPI_Datatype, root: c_int, comm: MPI_Comm);
    MPI_Alltoall => PMPI_Alltoall(sbuf: *const c_void, scount: c_int, sdt: MPI_Datatype, rbuf: *mut c_void, rcount: c_int, rdt: MPI_Datatype, comm: MPI_Comm);
}
