//! The runtime's own communicator and the few collectives it needs.
//!
//! The runtime duplicates the application's communicator so that its
//! messages can never match the application's, and calls the `PMPI_` entry
//! points directly so that its own collectives are not counted as the
//! application's MPI time.

use crate::PmError;
use mpi::ffi::{self, MPI_Comm};
use std::os::raw::{c_int, c_void};

pub(crate) struct Comm {
    raw: MPI_Comm,
    pub rank: u32,
    pub size: u32,
}

fn check(rc: c_int, what: &'static str) -> Result<(), PmError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(PmError::Mpi {
            call: what,
            code: rc,
        })
    }
}

impl Comm {
    /// Duplicates `parent`.
    ///
    /// # Safety
    /// `parent` must be a valid communicator of an initialised MPI.
    pub unsafe fn dup(parent: MPI_Comm) -> Result<Self, PmError> {
        let (mut initialized, mut finalized) = (0, 0);
        // SAFETY: both may be called at any time; out-pointers are valid.
        unsafe {
            ffi::PMPI_Initialized(&mut initialized);
            ffi::PMPI_Finalized(&mut finalized);
        }
        if initialized == 0 || finalized != 0 {
            return Err(PmError::State(
                "MPI is not running: initialise pm after MPI_Init and before MPI_Finalize",
            ));
        }
        let mut raw = unsafe { ffi::RSMPI_COMM_NULL };
        let (mut rank, mut size) = (0, 0);
        // SAFETY: the caller guarantees `parent`; out-pointers are valid.
        unsafe {
            check(ffi::PMPI_Comm_dup(parent, &mut raw), "MPI_Comm_dup")?;
            check(ffi::PMPI_Comm_rank(raw, &mut rank), "MPI_Comm_rank")?;
            check(ffi::PMPI_Comm_size(raw, &mut size), "MPI_Comm_size")?;
        }
        Ok(Self {
            raw,
            rank: rank as u32,
            size: size as u32,
        })
    }

    /// Broadcasts `words` from rank 0.
    pub fn bcast(&self, words: &mut [u64]) -> Result<(), PmError> {
        // SAFETY: the buffer is valid for `len` u64 values on every rank.
        let rc = unsafe {
            ffi::PMPI_Bcast(
                words.as_mut_ptr().cast::<c_void>(),
                words.len() as c_int,
                ffi::RSMPI_UINT64_T,
                0,
                self.raw,
            )
        };
        check(rc, "MPI_Bcast")
    }

    /// True on every rank if `ok` is true on every rank.
    pub fn all(&self, ok: bool) -> Result<bool, PmError> {
        let mine = i32::from(ok);
        let mut all = 0i32;
        // SAFETY: both buffers hold one int32 each.
        let rc = unsafe {
            ffi::PMPI_Allreduce(
                (&mine as *const i32).cast::<c_void>(),
                (&mut all as *mut i32).cast::<c_void>(),
                1,
                ffi::RSMPI_INT32_T,
                ffi::RSMPI_MIN,
                self.raw,
            )
        };
        check(rc, "MPI_Allreduce")?;
        Ok(all == 1)
    }

    /// Runs a local step on every rank and agrees on its success: every rank
    /// returns its own error, and ranks that succeeded while another failed
    /// return `PmError::Peer` naming the stage.
    pub fn agree<T>(&self, stage: &'static str, local: Result<T, PmError>) -> Result<T, PmError> {
        let all_ok = self.all(local.is_ok())?;
        match local {
            Err(e) => Err(e),
            Ok(_) if !all_ok => Err(PmError::Peer { stage }),
            Ok(v) => Ok(v),
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        let mut finalized = 0;
        // SAFETY: MPI_Finalized may be called at any time; the communicator
        // is only freed while MPI is still running.
        unsafe {
            ffi::PMPI_Finalized(&mut finalized);
            if finalized == 0 {
                ffi::PMPI_Comm_free(&mut self.raw);
            }
        }
    }
}
