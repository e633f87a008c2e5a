//! The C ABI declared in `include/pm.h` (for C, C++ and, through
//! `ISO_C_BINDING`, Fortran). One runtime per process, used from the thread
//! that called `pm_init`. Every function returns a code from `pm.h`; the
//! detailed message of the last failure is `pm_last_error()`.

use crate::error::code;
use crate::{Action, PmError, Runtime};
use mpi::ffi::{self, MPI_Comm};
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_longlong, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    static RUNTIME: RefCell<Option<Runtime>> = const { RefCell::new(None) };
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Mirrors `pm_stats_t` in `pm.h`.
#[repr(C)]
pub struct PmStats {
    pub steps: u64,
    pub compute_mean_s: f64,
    pub compute_var_s2: f64,
    pub wall_mean_s: f64,
    pub mpi_s: f64,
    pub cpu_s: f64,
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, turning errors and panics into codes and a last-error message.
fn guarded(f: impl FnOnce() -> Result<c_int, PmError>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(&e.to_string());
            e.code()
        }
        Err(_) => {
            set_last_error(
                "internal error in pm (a panic); please report it with the program's output",
            );
            code::INTERNAL
        }
    }
}

fn with_runtime<T>(
    call: &'static str,
    f: impl FnOnce(&mut Runtime) -> Result<T, PmError>,
) -> Result<T, PmError> {
    RUNTIME.with(|rt| match rt.borrow_mut().as_mut() {
        Some(rt) => f(rt),
        None => Err(PmError::State(call)),
    })
}

/// # Safety
/// `comm` must be a valid communicator of an initialised MPI.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pm_init(comm: MPI_Comm) -> c_int {
    guarded(|| {
        if RUNTIME.with(|rt| rt.borrow().is_some()) {
            return Err(PmError::State(
                "pm_init was called twice; call pm_finalize first",
            ));
        }
        // SAFETY: guaranteed by the caller.
        let rt = unsafe { Runtime::init_raw(comm)? };
        RUNTIME.with(|slot| *slot.borrow_mut() = Some(rt));
        Ok(code::OK)
    })
}

/// Fortran: `comm` is a Fortran communicator handle (`MPI_COMM_WORLD` of `use mpi`).
///
/// # Safety
/// `comm` must point to a valid Fortran communicator handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pm_init_f(comm: *const c_int) -> c_int {
    if comm.is_null() {
        set_last_error("pm_init_f: null communicator");
        return code::ARGUMENT;
    }
    // SAFETY: guaranteed by the caller; MPI_Comm_f2c accepts any handle value.
    unsafe { pm_init(ffi::PMPI_Comm_f2c(*comm)) }
}

/// # Safety
/// `name` must be a NUL-terminated string; `ptr` must be valid for `bytes`
/// bytes until `pm_finalize`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pm_region(name: *const c_char, ptr: *mut c_void, bytes: usize) -> c_int {
    guarded(|| {
        if name.is_null() {
            return Err(PmError::InvalidArgument("pm_region: name is NULL".into()));
        }
        // SAFETY: guaranteed by the caller.
        let name = unsafe { CStr::from_ptr(name) }
            .to_str()
            .map_err(|_| PmError::InvalidArgument("pm_region: name is not UTF-8".into()))?;
        with_runtime("pm_region was called before pm_init", |rt| {
            // SAFETY: guaranteed by the caller.
            unsafe { rt.register_raw(name, ptr.cast(), bytes)? };
            Ok(code::OK)
        })
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn pm_restored_step() -> i64 {
    RUNTIME.with(|rt| {
        rt.borrow()
            .as_ref()
            .and_then(Runtime::restored_step)
            .map_or(-1, |s| s as i64)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn pm_step() -> c_int {
    guarded(|| {
        with_runtime("pm_step was called before pm_init", |rt| {
            Ok(match rt.step()? {
                Action::Continue => 0,
                Action::Exit => 1,
            })
        })
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn pm_set_total_steps(steps: c_longlong) -> c_int {
    guarded(|| {
        with_runtime("pm_set_total_steps was called before pm_init", |rt| {
            let steps = u64::try_from(steps).map_err(|_| {
                PmError::InvalidArgument(format!(
                    "pm_set_total_steps: {steps} steps; expected 0 or more"
                ))
            })?;
            rt.set_total_steps(steps);
            Ok(code::OK)
        })
    })
}

/// # Safety
/// `out` must be NULL or point to a writable `pm_stats_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pm_stats(out: *mut PmStats) -> c_int {
    guarded(|| {
        if out.is_null() {
            return Err(PmError::InvalidArgument("pm_stats: out is NULL".into()));
        }
        let s = with_runtime("pm_stats was called before pm_init", |rt| Ok(rt.stats()))?;
        let stats = PmStats {
            steps: s.steps,
            compute_mean_s: s.compute_mean,
            compute_var_s2: s.compute_var,
            wall_mean_s: s.wall_mean,
            mpi_s: s.mpi_time.as_secs_f64(),
            cpu_s: s.cpu_time.as_secs_f64(),
        };
        // SAFETY: checked non-null; the caller guarantees it is writable.
        unsafe { out.write(stats) };
        Ok(code::OK)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn pm_finalize() -> c_int {
    guarded(|| {
        let rt = RUNTIME.with(|rt| rt.borrow_mut().take());
        let rt = rt.ok_or(PmError::State("pm_finalize was called before pm_init"))?;
        rt.finalize()?;
        Ok(code::OK)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn pm_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        0 => c"success",
        1 => c"a checkpoint was taken and the job is asked to stop",
        code::STATE => c"pm functions called in the wrong order",
        code::ARGUMENT => c"invalid argument",
        code::CONFIG => c"invalid PM_* environment variable",
        code::STORE => c"checkpoint store error",
        code::MISMATCH => c"checkpoint does not match this run (ranks or regions)",
        code::CORRUPT => c"checkpoint is damaged",
        code::PEER => c"another rank failed",
        code::MPI => c"MPI error",
        code::INTERNAL => c"internal error",
        _ => c"unknown pm error code",
    };
    s.as_ptr()
}

#[unsafe(no_mangle)]
pub extern "C" fn pm_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}
