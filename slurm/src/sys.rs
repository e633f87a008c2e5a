//! All of the crate's `unsafe`: Slurm's SPANK C API behind safe wrappers,
//! and the thread's file-system ids for the prolog and epilog. Nothing
//! here panics; errors come back as values.

use std::ffi::{CStr, c_char};

/// Runs file-system work with this thread's file-system uid and gid set to
/// the job's, so that the root-run prolog and epilog can create or remove
/// nothing the job's user could not. Restored when dropped. Not root (the
/// unit tests, a user's own Slurm): nothing changes.
pub struct AsUser {
    previous: Option<(u32, u32)>,
}

impl AsUser {
    pub fn new(uid: u32, gid: u32) -> std::io::Result<AsUser> {
        if !rustix::process::geteuid().is_root() {
            return Ok(AsUser { previous: None });
        }
        // SAFETY: setfsgid/setfsuid take plain integers and change only the
        // calling thread's file-system ids (no memory is touched); an id of
        // -1 is invalid, so the call only reports the current one.
        let (old_gid, old_uid, now_gid, now_uid) = unsafe {
            let old_gid = libc::setfsgid(gid);
            let old_uid = libc::setfsuid(uid);
            (
                old_gid,
                old_uid,
                libc::setfsgid(u32::MAX),
                libc::setfsuid(u32::MAX),
            )
        };
        let guard = AsUser {
            previous: Some((old_uid as u32, old_gid as u32)),
        };
        if (now_uid as u32, now_gid as u32) != (uid, gid) {
            return Err(std::io::Error::other(format!(
                "cannot take uid {uid} and gid {gid} for file access (setfsuid/setfsgid refused)"
            )));
        }
        Ok(guard)
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        if let Some((uid, gid)) = self.previous {
            // SAFETY: as in `new`: integers in, this thread's ids changed.
            unsafe {
                libc::setfsuid(uid);
                libc::setfsgid(gid);
            }
        }
    }
}

/// Sets and removes variables in this process's environment (srun's or
/// sbatch's: what the job and its steps inherit).
///
/// # Safety
/// Only from a SPANK callback of srun/sbatch/salloc, on Slurm's own
/// thread: Slurm itself calls setenv(3) there (plugstack.c sets the option
/// variables in `spank_init_post_opt`), and the plugin runs no threads.
pub unsafe fn set_process_env(set: &[(&str, String)], unset: &[&str]) {
    for name in unset {
        // SAFETY: the caller's contract (no concurrent environment access).
        unsafe { std::env::remove_var(name) };
    }
    for (name, value) in set {
        // SAFETY: as above.
        unsafe { std::env::set_var(name, value) };
    }
}

/// Unblocks every signal: srun blocks the ones its signal thread waits
/// for, and a blocked mask survives exec (pmrun must get SIGTERM, SIGUSR1).
pub fn unblock_signals() {
    // SAFETY: sigemptyset fills the local set; pthread_sigmask reads it and
    // changes only this thread's mask (the one about to exec).
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Marks every socket this process holds close-on-exec (srun's, before it
/// becomes pmrun); pipes and files stay open.
pub fn close_sockets_on_exec() {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = fds
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for raw in fds {
        // SAFETY: `raw` was open a moment ago and the plugin runs no other
        // thread that could close it; fstat/fcntl on a closed descriptor
        // only fail with EBADF.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        let socket = rustix::fs::fstat(fd).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket
        });
        if socket && let Ok(flags) = rustix::io::fcntl_getfd(fd) {
            let _ = rustix::io::fcntl_setfd(fd, flags | rustix::io::FdFlags::CLOEXEC);
        }
    }
}

/// The text of a C string Slurm handed us, `None` for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged while this runs (what Slurm guarantees for a callback's
/// arguments).
pub unsafe fn c_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated, by the caller's contract.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// `argv[0..argc]` of a SPANK callback (the plugstack.conf arguments).
///
/// # Safety
/// `argv` is NULL or points to `argc` valid C strings (or NULLs), as Slurm
/// passes them to every `slurm_spank_*` function.
pub unsafe fn args(argc: i32, argv: *const *const c_char) -> Vec<String> {
    if argv.is_null() || argc <= 0 {
        return Vec::new();
    }
    (0..argc as usize)
        // SAFETY: i < argc entries, each NULL or a C string (caller's contract).
        .filter_map(|i| unsafe { c_string(*argv.add(i)) })
        .collect()
}

#[cfg(all(pm_spank, not(test)))]
pub use spank::*;

/// The SPANK API, present when the crate was built against `spank.h`
/// (left out of the unit tests: only Slurm's programs define these
/// functions).
#[cfg(all(pm_spank, not(test)))]
mod spank {
    use super::c_string;
    use std::ffi::{CString, c_char, c_int};

    #[allow(
        non_camel_case_types,
        non_upper_case_globals,
        non_snake_case,
        dead_code,
        unsafe_op_in_unsafe_fn,
        clippy::all
    )]
    mod ffi {
        include!(concat!(env!("OUT_DIR"), "/spank.rs"));
    }

    pub use ffi::SLURM_VERSION_NUMBER;
    pub use ffi::spank_context as Context;
    pub use ffi::spank_t;

    /// What Slurm says about a SPANK call that failed.
    #[derive(Debug)]
    pub struct SpankError {
        pub call: &'static str,
        pub code: u32,
    }

    impl std::fmt::Display for SpankError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // SAFETY: spank_strerror returns a static string for any code.
            let text = unsafe { c_string(ffi::spank_strerror(self.code)) };
            write!(
                f,
                "{}: {}",
                self.call,
                text.as_deref().unwrap_or("unknown error")
            )
        }
    }

    fn check(call: &'static str, rc: ffi::spank_err_t) -> Result<(), SpankError> {
        match rc {
            0 => Ok(()),
            code => Err(SpankError { call, code }),
        }
    }

    fn c(s: &str) -> CString {
        // Interior NULs cannot come from Slurm's or our strings; drop them.
        CString::new(s.replace('\0', "")).unwrap_or_default()
    }

    /// Which Slurm program runs the plugin.
    pub fn context() -> Context {
        // SAFETY: no arguments; valid in every callback.
        unsafe { ffi::spank_context() }
    }

    /// Slurm's log (the calling program's stderr or daemon log).
    pub fn info(msg: &str) {
        let msg = c(msg);
        // SAFETY: a constant "%s" format with one C string argument.
        unsafe { ffi::slurm_info(c"%s".as_ptr(), msg.as_ptr()) }
    }

    pub fn error(msg: &str) {
        let msg = c(msg);
        // SAFETY: as in `info`.
        unsafe { ffi::slurm_error(c"%s".as_ptr(), msg.as_ptr()) }
    }

    pub fn verbose(msg: &str) {
        let msg = c(msg);
        // SAFETY: as in `info`.
        unsafe { ffi::slurm_verbose(c"%s".as_ptr(), msg.as_ptr()) }
    }

    /// The option callback Slurm calls with `(val, optarg, remote)`.
    pub type OptionCallback = extern "C" fn(c_int, *const c_char, c_int) -> c_int;

    /// The handle of the running callback.
    #[derive(Clone, Copy)]
    pub struct Spank(ffi::spank_t);

    impl Spank {
        /// # Safety
        /// `raw` is the handle Slurm passed to the running `slurm_spank_*`
        /// call, and the `Spank` is used only during that call.
        pub unsafe fn new(raw: ffi::spank_t) -> Spank {
            Spank(raw)
        }

        /// Registers `--name[=arginfo]` with `usage` for `--help`.
        pub fn register(
            self,
            name: &'static std::ffi::CStr,
            arginfo: Option<&'static std::ffi::CStr>,
            usage: &'static std::ffi::CStr,
            val: i32,
            cb: OptionCallback,
        ) -> Result<(), SpankError> {
            // Slurm keeps a pointer to the option: it lives as long as the
            // process (one per option per process, from slurm_spank_init).
            let opt = Box::leak(Box::new(ffi::spank_option {
                name: name.as_ptr() as *mut c_char,
                arginfo: arginfo.map_or(std::ptr::null_mut(), |a| a.as_ptr() as *mut c_char),
                usage: usage.as_ptr() as *mut c_char,
                has_arg: c_int::from(arginfo.is_some()),
                val,
                cb: Some(cb),
            }));
            // SAFETY: a valid handle (see `new`) and an option whose strings
            // are 'static and which is never freed; Slurm only reads them.
            check("spank_option_register", unsafe {
                ffi::spank_option_register(self.0, opt)
            })
        }

        fn item_u32(self, item: ffi::spank_item, call: &'static str) -> Result<u32, SpankError> {
            let mut v: u32 = 0;
            // SAFETY: the items asked for here (S_JOB_UID, S_JOB_GID: uid_t
            // / gid_t, S_JOB_ID, S_JOB_TOTAL_TASK_COUNT: uint32_t) take one
            // pointer to a 32-bit unsigned integer, which outlives the call.
            check(call, unsafe {
                ffi::spank_get_item(self.0, item, &mut v as *mut u32)
            })?;
            Ok(v)
        }

        pub fn uid(self) -> Result<u32, SpankError> {
            self.item_u32(ffi::spank_item::S_JOB_UID, "spank_get_item(S_JOB_UID)")
        }

        pub fn gid(self) -> Result<u32, SpankError> {
            self.item_u32(ffi::spank_item::S_JOB_GID, "spank_get_item(S_JOB_GID)")
        }

        pub fn job_id(self) -> Result<u32, SpankError> {
            self.item_u32(ffi::spank_item::S_JOB_ID, "spank_get_item(S_JOB_ID)")
        }

        /// The step's task count (srun, from local_user_init on).
        pub fn total_tasks(self) -> Result<u32, SpankError> {
            self.item_u32(
                ffi::spank_item::S_JOB_TOTAL_TASK_COUNT,
                "spank_get_item(S_JOB_TOTAL_TASK_COUNT)",
            )
        }

        /// The step's command and arguments (srun: what follows its options).
        pub fn argv(self) -> Result<Vec<String>, SpankError> {
            let mut argc: c_int = 0;
            let mut argv: *mut *mut c_char = std::ptr::null_mut();
            // SAFETY: S_JOB_ARGV takes (int *, char ***): both pointers to
            // locals that outlive the call.
            check("spank_get_item(S_JOB_ARGV)", unsafe {
                ffi::spank_get_item(
                    self.0,
                    ffi::spank_item::S_JOB_ARGV,
                    &mut argc as *mut c_int,
                    &mut argv as *mut *mut *mut c_char,
                )
            })?;
            // SAFETY: Slurm returned argc entries of its own argv, valid
            // for the rest of this callback.
            Ok(unsafe { super::args(argc, argv as *const *const c_char) })
        }

        /// Sets `name=value` in the job's control environment: the prolog
        /// and epilog see it as `SPANK_<name>` (local and allocator
        /// contexts).
        pub fn job_control_setenv(self, name: &str, value: &str) -> Result<(), SpankError> {
            let (name, value) = (c(name), c(value));
            // SAFETY: a valid handle and two C strings Slurm copies.
            check("spank_job_control_setenv", unsafe {
                ffi::spank_job_control_setenv(self.0, name.as_ptr(), value.as_ptr(), 1)
            })
        }
    }
}
