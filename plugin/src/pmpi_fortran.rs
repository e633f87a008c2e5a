//! Time blocked in MPI by Fortran programs.
//!
//! Open MPI's Fortran bindings call the C library's `PMPI_` functions
//! directly, so the C wrappers of [`crate::pmpi`] never see a Fortran
//! program's MPI calls. This module defines the Fortran entry points that
//! gfortran calls for the same blocking operations:
//!
//! * `mpi_barrier_` for `use mpi` and `include 'mpif.h'` (`libmpi_mpifh.so`),
//! * `mpi_barrier_f08_` for `use mpi_f08` (`libmpi_usempif08.so`),
//!
//! and so on for each call. Each wrapper forwards to the library's profiling
//! entry with a `p` in front (`pmpi_barrier_`, `pmpi_barrier_f08_`) and adds
//! the elapsed time to the counter the C wrappers use. Open MPI's other
//! spellings (`mpi_barrier`, `mpi_barrier__`, `MPI_BARRIER`, for other
//! compilers' or flags' name mangling) are not interposed.
//!
//! The profiling entries are looked up at the first call with
//! `dlsym(RTLD_NEXT)` and cached, so `libpm.so` has no link-time dependency
//! on the Fortran MPI libraries, which C and Rust programs do not load. As
//! for C, the wrappers take effect only when `libpm.so` precedes the MPI
//! libraries on the link line, as `mpif90 app.f90 $(pkg-config --libs pm)`
//! arranges.
//!
//! Fortran passes every argument by reference, the trailing `ierror` too (a
//! null pointer when the optional `ierror` of `mpi_f08` is absent): each
//! wrapper takes as many pointers as the call has arguments and passes them
//! on untouched.

use std::ffi::{CStr, c_void};
use std::sync::atomic::{AtomicPtr, Ordering};

/// Every Fortran argument: a pointer to the actual argument.
type Arg = *mut c_void;

/// A profiling entry point of the Fortran MPI library, resolved at first use.
struct Target {
    /// The entry point's name, NUL-terminated.
    name: &'static str,
    addr: AtomicPtr<c_void>,
}

impl Target {
    const fn new(name: &'static str) -> Self {
        Self {
            name,
            addr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The entry point's address; aborts the process if there is none.
    fn get(&self) -> *mut c_void {
        let cached = self.addr.load(Ordering::Acquire);
        if !cached.is_null() {
            return cached;
        }
        // Two threads may both resolve it; they find the same address.
        let found = resolve(self.name);
        self.addr.store(found, Ordering::Release);
        found
    }
}

fn resolve(name: &'static str) -> *mut c_void {
    let cname = CStr::from_bytes_with_nul(name.as_bytes()).expect("a NUL-terminated name");
    // SAFETY: dlsym with a pseudo-handle and a NUL-terminated name has no
    // other preconditions.
    let addr = unsafe { libc::dlsym(libc::RTLD_NEXT, cname.as_ptr()) };
    if addr.is_null() {
        let name = cname.to_string_lossy();
        eprintln!(
            "pm: the Fortran MPI entry point {name} was not found: a Fortran MPI call reached \
             libpm.so, but no Open MPI Fortran library (libmpi_mpifh.so, libmpi_usempif08.so) \
             is loaded after it; link with `mpif90 app.f90 $(pkg-config --cflags --libs pm)`"
        );
        std::process::abort();
    }
    addr
}

macro_rules! interpose_fortran {
    ($( $name:ident / $f08:ident ( $($a:ident),* ); )*) => {
        /// Names of the interposed Fortran entry points.
        pub const INTERPOSED: &[&str] = &[$(stringify!($name), stringify!($f08)),*];
        $(
            interpose_fortran!(@one $name ($($a),*));
            interpose_fortran!(@one $f08 ($($a),*));
        )*
    };
    (@arg $a:ident) => { Arg };
    (@one $name:ident ($($a:ident),*)) => {
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        /// # Safety
        /// Called by a Fortran program with the call's arguments, by reference.
        pub unsafe extern "C" fn $name($($a: Arg),*) {
            static TARGET: Target = Target::new(concat!("p", stringify!($name), "\0"));
            let addr = TARGET.get();
            // SAFETY: `addr` is the MPI library's profiling version of this
            // subroutine, which takes the same arguments and returns nothing.
            let real = unsafe {
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn($(interpose_fortran!(@arg $a)),*)>(addr)
            };
            // SAFETY: forwarded unchanged; the caller upholds the MPI
            // standard's contract for this call.
            crate::pmpi::timed(|| unsafe { real($($a),*) });
        }
    };
}

interpose_fortran! {
    mpi_send_ / mpi_send_f08_ (buf, count, dt, dest, tag, comm, ierr);
    mpi_ssend_ / mpi_ssend_f08_ (buf, count, dt, dest, tag, comm, ierr);
    mpi_recv_ / mpi_recv_f08_ (buf, count, dt, src, tag, comm, st, ierr);
    mpi_sendrecv_ / mpi_sendrecv_f08_ (sbuf, scount, sdt, dest, stag,
        rbuf, rcount, rdt, src, rtag, comm, st, ierr);
    mpi_sendrecv_replace_ / mpi_sendrecv_replace_f08_ (buf, count, dt, dest, stag,
        src, rtag, comm, st, ierr);
    mpi_probe_ / mpi_probe_f08_ (src, tag, comm, st, ierr);
    mpi_wait_ / mpi_wait_f08_ (req, st, ierr);
    mpi_waitall_ / mpi_waitall_f08_ (n, reqs, sts, ierr);
    mpi_waitany_ / mpi_waitany_f08_ (n, reqs, idx, st, ierr);
    mpi_waitsome_ / mpi_waitsome_f08_ (n, reqs, outn, idx, sts, ierr);
    mpi_barrier_ / mpi_barrier_f08_ (comm, ierr);
    mpi_bcast_ / mpi_bcast_f08_ (buf, count, dt, root, comm, ierr);
    mpi_reduce_ / mpi_reduce_f08_ (sbuf, rbuf, count, dt, op, root, comm, ierr);
    mpi_allreduce_ / mpi_allreduce_f08_ (sbuf, rbuf, count, dt, op, comm, ierr);
    mpi_gather_ / mpi_gather_f08_ (sbuf, scount, sdt, rbuf, rcount, rdt, root, comm, ierr);
    mpi_allgather_ / mpi_allgather_f08_ (sbuf, scount, sdt, rbuf, rcount, rdt, comm, ierr);
    mpi_scatter_ / mpi_scatter_f08_ (sbuf, scount, sdt, rbuf, rcount, rdt, root, comm, ierr);
    mpi_alltoall_ / mpi_alltoall_f08_ (sbuf, scount, sdt, rbuf, rcount, rdt, comm, ierr);
}

#[cfg(test)]
mod tests {
    use super::INTERPOSED;

    #[test]
    fn every_c_wrapper_has_both_fortran_spellings() {
        assert_eq!(INTERPOSED.len(), 2 * crate::pmpi::INTERPOSED.len());
        for c in crate::pmpi::INTERPOSED {
            let lower = c.to_ascii_lowercase();
            for name in [format!("{lower}_"), format!("{lower}_f08_")] {
                assert!(INTERPOSED.contains(&name.as_str()), "{name} for {c}");
            }
        }
    }
}
