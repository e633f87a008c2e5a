//! The SPANK entry points, by the Slurm program that calls them:
//!
//! * srun (local) and sbatch/salloc (allocator): `slurm_spank_init`
//!   registers the options, the option callback checks each value,
//!   `slurm_spank_init_post_opt` checks them together and exports them as
//!   `PM_*` (the job and its steps inherit the environment), and hands
//!   `--pm-store` to the epilog; in srun, `slurm_spank_local_user_init`
//!   turns `srun --pm` into pmrun (`wrap`).
//! * slurmstepd (remote): the options are registered so that Slurm
//!   accepts them there; the environment already carries them.
//! * slurmd's prolog and epilog (job script, as root):
//!   `slurm_spank_job_prolog` prepares the node's store, and
//!   `slurm_spank_job_epilog` removes what the job's agents marked (`store`).
//!
//! No panic crosses into Slurm: every entry point catches one and fails
//! the call (the prolog and epilog log it and succeed: a failing one
//! drains the node).

use crate::options::{Opt, OptionError, SPECS, Settings};
use crate::store;
use crate::sys::{self, Context, Spank, spank_t};
use crate::wrap::{self, PluginArgs};
use std::ffi::{OsString, c_char, c_int};
use std::os::unix::process::CommandExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static plugin_name: [u8; 6] = *b"pmrun\0";
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static plugin_type: [u8; 6] = *b"spank\0";
/// Slurm loads only plugins built for its major.minor: the header's.
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static plugin_version: u32 = sys::SLURM_VERSION_NUMBER;
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static spank_plugin_version: u32 = 1;

/// The options of this process, set by Slurm's option callback (which has
/// no handle to keep them in).
static SETTINGS: Mutex<Settings> = Mutex::new(Settings::new());

fn settings() -> std::sync::MutexGuard<'static, Settings> {
    SETTINGS.lock().unwrap_or_else(|p| p.into_inner())
}

/// srun's environment when it started (local context, inside an
/// allocation), for `srun --pm` (see `wrap::pmrun_env`).
static START_ENV: Mutex<Option<Vec<(OsString, OsString)>>> = Mutex::new(None);

const FAIL: c_int = -1;

/// Runs an entry point, turning a panic into a logged failure.
fn guarded(name: &str, on_panic: c_int, f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        sys::error(&format!(
            "pmrun: internal error in {name} (a bug; please report it)"
        ));
        on_panic
    })
}

/// # Safety
/// Slurm's arguments to a `slurm_spank_*` call.
unsafe fn plugin_args(ac: c_int, av: *mut *mut c_char) -> Vec<String> {
    // SAFETY: Slurm passes argc valid C strings (the caller's contract).
    unsafe { sys::args(ac, av as *const *const c_char) }
}

extern "C" fn on_option(val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    guarded("the option callback", FAIL, || {
        let Some(opt) = Opt::from_val(val) else {
            return FAIL;
        };
        // SAFETY: Slurm passes NULL (a flag) or the option's argument.
        let value = unsafe { sys::c_string(optarg) }.unwrap_or_default();
        match settings().set(opt, &value) {
            Ok(()) => 0,
            // On the remote side the value was checked at submission.
            Err(_) if remote != 0 => 0,
            Err(e) => {
                sys::error(&format!("pmrun: {e}"));
                FAIL
            }
        }
    })
}

/// # Safety
/// Called by Slurm with a valid handle and plugstack.conf's arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_init(sp: spank_t, _ac: c_int, _av: *mut *mut c_char) -> c_int {
    guarded("slurm_spank_init", FAIL, || {
        if !matches!(
            sys::context(),
            Context::S_CTX_LOCAL | Context::S_CTX_ALLOCATOR | Context::S_CTX_REMOTE
        ) {
            return 0;
        }
        if sys::context() == Context::S_CTX_LOCAL {
            *START_ENV.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(std::env::vars_os().collect());
        }
        // SAFETY: the handle of this call, used only during it.
        let sp = unsafe { Spank::new(sp) };
        for s in &SPECS {
            if let Err(e) = sp.register(s.name, s.arginfo, s.usage, s.opt.val(), on_option) {
                sys::error(&format!(
                    "pmrun: cannot register --{}: {e}",
                    s.name.to_string_lossy()
                ));
                return FAIL;
            }
        }
        0
    })
}

/// # Safety
/// Called by Slurm with a valid handle and plugstack.conf's arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_init_post_opt(
    sp: spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    guarded("slurm_spank_init_post_opt", FAIL, || {
        let ctx = sys::context();
        if !matches!(ctx, Context::S_CTX_LOCAL | Context::S_CTX_ALLOCATOR) {
            return 0;
        }
        // SAFETY: the handle of this call, used only during it.
        let sp = unsafe { Spank::new(sp) };
        let s = settings();
        let checked = s.check_together().and_then(|()| match ctx {
            Context::S_CTX_ALLOCATOR if s.pm => Err(OptionError::PmOutsideSrun),
            _ => Ok(()),
        });
        if let Err(e) = checked {
            sys::error(&format!("pmrun: {e}"));
            return FAIL;
        }
        let (set, unset) = s.environment();
        // SAFETY: srun's/sbatch's own thread in a SPANK callback, where
        // Slurm sets its option variables too.
        unsafe { sys::set_process_env(&set, &unset) };
        // The epilog cleans this store as well as the default one: it sees
        // SPANK_PM_STORE (effective where this process makes the job:
        // sbatch, salloc, an srun outside an allocation).
        let store = s
            .get(Opt::Store)
            .map(str::to_owned)
            .or_else(|| std::env::var("PM_STORE").ok())
            .filter(|p| crate::options::plain_absolute(p.as_ref()));
        if let Some(store) = store
            && let Err(e) = sp.job_control_setenv("PM_STORE", &store)
        {
            sys::verbose(&format!("pmrun: the epilog will not know --pm-store: {e}"));
        }
        0
    })
}

/// srun, after it made the step and before it launches it: `srun --pm`
/// becomes pmrun here (the step's task count and command are known only
/// from now on in 22.05's local context).
///
/// # Safety
/// Called by Slurm with a valid handle and plugstack.conf's arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_local_user_init(
    sp: spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    guarded("slurm_spank_local_user_init", FAIL, || {
        if !settings().pm || sys::context() != Context::S_CTX_LOCAL {
            return 0;
        }
        if let Ok(job) = std::env::var(wrap::GUARD) {
            sys::info(&format!(
                "pmrun: --pm ignored: this srun already runs under pmrun (job {job}, {})",
                wrap::GUARD
            ));
            return 0;
        }
        // SAFETY: the handle of this call, used only during it, and
        // Slurm's own plugstack.conf arguments.
        let (sp, args) = unsafe { (Spank::new(sp), plugin_args(ac, av)) };
        match exec_pmrun(sp, &args) {
            Ok(never) => match never {},
            Err(e) => {
                sys::error(&format!("pmrun: {e}"));
                FAIL
            }
        }
    })
}

/// Replaces srun with `pmrun -n <tasks> -- <command>`; returns only on failure.
fn exec_pmrun(sp: Spank, args: &[String]) -> Result<std::convert::Infallible, String> {
    let args = PluginArgs::parse(args).map_err(|e| e.to_string())?;
    let pmrun =
        wrap::find_pmrun(&args, std::env::var_os("PATH").as_deref()).map_err(|e| e.to_string())?;
    let tasks = sp.total_tasks().map_err(|e| format!("srun --pm: {e}"))?;
    let argv = sp.argv().map_err(|e| format!("srun --pm: {e}"))?;
    let pmrun_args = wrap::pmrun_args(tasks, &argv).map_err(|e| e.to_string())?;
    let job = sp.job_id().map_err(|e| format!("srun --pm: {e}"))?;
    sys::verbose(&format!(
        "pmrun: srun --pm: running {} {}",
        pmrun.display(),
        pmrun_args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let (set, unset) = settings().environment();
    let at_start = START_ENV.lock().unwrap_or_else(|p| p.into_inner()).take();
    let env = wrap::pmrun_env(at_start, std::env::vars_os(), &set, &unset, job);
    // srun's sockets (to slurmctld, its step's I/O) are no business of
    // pmrun's; its pipes stay (one tells srun's shepherd, which ends the
    // unlaunched step, and an allocation srun made, when pmrun is done).
    sys::close_sockets_on_exec();
    sys::unblock_signals();
    let e = std::process::Command::new(&pmrun)
        .arg0("pmrun")
        .args(&pmrun_args)
        .env_clear()
        .envs(env)
        .exec();
    Err(format!("srun --pm: cannot run {}: {e}", pmrun.display()))
}

/// The job a prolog or epilog runs for.
struct ScriptJob {
    uid: u32,
    gid: u32,
    id: u32,
    node: String,
}

/// Runs `work` for every store root of the job, as the job's user, and
/// logs what it did or why it could not. Always succeeds: a failing
/// prolog or epilog drains the node.
fn each_root(
    sp: Spank,
    what: &str,
    work: impl Fn(&ScriptJob, &std::path::Path) -> Result<(), store::StoreError>,
) -> c_int {
    let job = (|| {
        Ok::<_, String>(ScriptJob {
            uid: sp.uid().map_err(|e| e.to_string())?,
            gid: sp.gid().map_err(|e| e.to_string())?,
            id: sp.job_id().map_err(|e| e.to_string())?,
            node: std::env::var("SLURMD_NODENAME")
                .map_err(|_| "SLURMD_NODENAME is not set".to_owned())?,
        })
    })();
    let job = match job {
        Ok(j) => j,
        Err(e) => {
            sys::error(&format!("pmrun: {what}: {e}"));
            return 0;
        }
    };
    let given = std::env::var("SPANK_PM_STORE").ok();
    for root in store::roots(job.uid, given.as_deref()) {
        let done = sys::AsUser::new(job.uid, job.gid)
            .map_err(|e| e.to_string())
            .and_then(|_user| work(&job, &root).map_err(|e| e.to_string()));
        if let Err(e) = done {
            sys::error(&format!(
                "pmrun: {what} of job {} on {}: {e}",
                job.id, job.node
            ));
        }
    }
    0
}

/// # Safety
/// Called by Slurm with a valid handle and plugstack.conf's arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_job_prolog(
    sp: spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    guarded("slurm_spank_job_prolog", 0, || {
        // SAFETY: the handle of this call, used only during it.
        let sp = unsafe { Spank::new(sp) };
        each_root(sp, "prolog", |job, root| {
            let dir = store::prepare(root, &job.node, job.uid)?;
            sys::verbose(&format!(
                "pmrun: job {}: store {} ready",
                job.id,
                dir.display()
            ));
            Ok(())
        })
    })
}

/// # Safety
/// Called by Slurm with a valid handle and plugstack.conf's arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn slurm_spank_job_epilog(
    sp: spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    guarded("slurm_spank_job_epilog", 0, || {
        // SAFETY: the handle of this call, used only during it.
        let sp = unsafe { Spank::new(sp) };
        each_root(sp, "epilog", |job, root| {
            let done = store::clean(root, &job.node, job.id, job.uid)?;
            let dir = root.join(&job.node);
            for j in &done.jobs {
                sys::info(&format!(
                    "pmrun: job {}: removed pmrun job {j}'s files from {}",
                    job.id,
                    dir.display()
                ));
            }
            for m in &done.bad_marks {
                sys::error(&format!(
                    "pmrun: job {}: mark {m:?} in {} names no valid job: removed, nothing else",
                    job.id,
                    dir.display()
                ));
            }
            Ok(())
        })
    })
}
