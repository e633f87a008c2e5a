//! `srun --pm ./app`: which pmrun runs the step, and with what arguments.
//!
//! srun, in its local context after it made the step, re-executes itself
//! as `pmrun -n <tasks> -- ./app ...` (see `hooks::local_user_init` and
//! docs/architecture.md for why). pmrun then starts its own `srun` steps
//! for its agents and the ranks; those load this plugin too, and must not
//! be wrapped again: the re-executed process carries [`GUARD`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Set (to the Slurm job id) in pmrun's environment by the re-exec; an
/// `srun --pm` that finds it runs its step as it is.
pub const GUARD: &str = "PM_SLURM_WRAPPED";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WrapError {
    #[error(
        "srun --pm: no pmrun in PATH; install pmrun, or name it in plugstack.conf \
         (required /path/libpm_slurm.so pmrun=/path/to/pmrun)"
    )]
    NotInPath,
    #[error("srun --pm: {0} (from plugstack.conf's pmrun=) is not an executable file")]
    NotExecutable(PathBuf),
    #[error("srun --pm: the step has no command to run under pmrun")]
    NoCommand,
    #[error(
        "plugstack.conf: unknown argument {0:?} for the pmrun plugin (it takes pmrun=/path/to/pmrun)"
    )]
    UnknownArgument(String),
}

/// The plugin's arguments in plugstack.conf.
#[derive(Debug, Default, PartialEq)]
pub struct PluginArgs {
    pub pmrun: Option<PathBuf>,
}

impl PluginArgs {
    pub fn parse(args: &[String]) -> Result<PluginArgs, WrapError> {
        let mut parsed = PluginArgs::default();
        for a in args {
            match a.split_once('=') {
                Some(("pmrun", path)) if !path.is_empty() => parsed.pmrun = Some(path.into()),
                _ => return Err(WrapError::UnknownArgument(a.clone())),
            }
        }
        Ok(parsed)
    }
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The pmrun to run: plugstack.conf's `pmrun=` (the administrator's
/// choice, for every user), else the first `pmrun` in `path` (srun's PATH).
pub fn find_pmrun(args: &PluginArgs, path: Option<&std::ffi::OsStr>) -> Result<PathBuf, WrapError> {
    if let Some(p) = &args.pmrun {
        return match executable(p) {
            true => Ok(p.clone()),
            false => Err(WrapError::NotExecutable(p.clone())),
        };
    }
    path.into_iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("pmrun"))
        .find(|p| p.is_absolute() && executable(p))
        .ok_or(WrapError::NotInPath)
}

/// Variables srun sets for the step it made (see [`pmrun_env`]).
const STEP_ONLY: [&str; 3] = ["SLURM_MPI_TYPE", "SLURM_STEP_ID", "SLURM_STEPID"];

/// pmrun's environment. Before the re-exec srun has rewritten its own
/// environment for the step it made (`SLURM_TASKS_PER_NODE` of the step's
/// nodes, `SLURM_NTASKS`, ...), which no longer matches the allocation's
/// `SLURM_JOB_NODELIST` pmrun plans over; so inside an existing allocation
/// pmrun gets the environment srun started with (`at_start`), and when
/// srun made the allocation itself, the current one (its step is the
/// whole allocation). Then the options' `PM_*` and the [`GUARD`].
pub fn pmrun_env(
    at_start: Option<Vec<(OsString, OsString)>>,
    current: impl Iterator<Item = (OsString, OsString)>,
    set: &[(&str, String)],
    unset: &[&str],
    job: u32,
) -> Vec<(OsString, OsString)> {
    let has = |env: &Vec<(OsString, OsString)>, name: &str| env.iter().any(|(k, _)| k == name);
    let at_start = at_start.unwrap_or_default();
    let mut env = if has(&at_start, "SLURM_JOB_ID") {
        at_start
    } else {
        // What srun set for its own, never launched step is not pmrun's:
        // SLURM_MPI_TYPE=none (MpiDefault) would keep pmrun's rank steps
        // from using PMIx.
        let mut env: Vec<_> = current.collect();
        env.retain(|(k, _)| {
            !STEP_ONLY.iter().any(|s| k == s) || at_start.iter().any(|(a, _)| a == k)
        });
        env
    };
    // An allocation srun made has no SLURM_JOB_NODELIST in srun's
    // environment yet (22.05 sets only SLURM_NODELIST there); pmrun reads
    // the former, as sbatch and salloc export it.
    let var = |env: &Vec<(OsString, OsString)>, name: &str| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    if var(&env, "SLURM_JOB_NODELIST").is_none()
        && let Some(list) = var(&env, "SLURM_NODELIST")
    {
        env.push(("SLURM_JOB_NODELIST".into(), list));
    }
    env.retain(|(k, _)| {
        !unset.iter().any(|u| k == u) && !set.iter().any(|(s, _)| k == s) && k != GUARD
    });
    env.extend(set.iter().map(|(k, v)| (k.into(), v.into())));
    env.push((GUARD.into(), job.to_string().into()));
    env
}

/// pmrun's arguments for a step of `tasks` tasks running `argv`: `--`
/// keeps the application's own options the application's.
pub fn pmrun_args(tasks: u32, argv: &[String]) -> Result<Vec<OsString>, WrapError> {
    if argv.is_empty() {
        return Err(WrapError::NoCommand);
    }
    let mut args: Vec<OsString> = vec!["-n".into(), tasks.to_string().into(), "--".into()];
    args.extend(argv.iter().map(OsString::from));
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_application_s_arguments_follow_a_double_dash() {
        let argv = ["./heat".to_owned(), "--steps".into(), "-n".into()];
        assert_eq!(
            pmrun_args(6, &argv).unwrap(),
            ["-n", "6", "--", "./heat", "--steps", "-n"].map(OsString::from)
        );
        assert_eq!(pmrun_args(6, &[]), Err(WrapError::NoCommand));
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn inside_an_allocation_pmrun_sees_srun_s_starting_environment() {
        let start = vars(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURM_TASKS_PER_NODE", "2(x3)"),
            ("PM_INTERVAL", "30"),
        ]);
        let now = vars(&[("SLURM_JOB_ID", "7"), ("SLURM_TASKS_PER_NODE", "2,1")]);
        let set = [("PM_EVERY", "5".to_owned())];
        let env = pmrun_env(
            Some(start),
            now.clone().into_iter(),
            &set,
            &["PM_INTERVAL"],
            7,
        );
        assert_eq!(
            env,
            vars(&[
                ("SLURM_JOB_ID", "7"),
                ("SLURM_TASKS_PER_NODE", "2(x3)"),
                ("PM_EVERY", "5"),
                (GUARD, "7"),
            ])
        );
        // srun made the allocation: its current environment, with the
        // node list under the name pmrun reads.
        let outside = vars(&[("PATH", "/bin")]);
        let mut now = now;
        now.push(("SLURM_NODELIST".into(), "n[1-3]".into()));
        now.push(("SLURM_MPI_TYPE".into(), "none".into()));
        now.push(("SLURM_STEP_ID".into(), "0".into()));
        let env = pmrun_env(Some(outside), now.into_iter(), &[], &[], 8);
        assert_eq!(
            env,
            vars(&[
                ("SLURM_JOB_ID", "7"),
                ("SLURM_TASKS_PER_NODE", "2,1"),
                ("SLURM_NODELIST", "n[1-3]"),
                ("SLURM_JOB_NODELIST", "n[1-3]"),
                (GUARD, "8"),
            ])
        );
    }

    #[test]
    fn pmrun_comes_from_plugstack_conf_or_path() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let pmrun = bin.join("pmrun");
        std::fs::write(&pmrun, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&pmrun, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["/nonexistent".as_ref(), bin.as_path()]).unwrap();
        let none = PluginArgs::default();
        assert_eq!(find_pmrun(&none, Some(&path)).unwrap(), pmrun);
        assert_eq!(find_pmrun(&none, None), Err(WrapError::NotInPath));
        let given = PluginArgs::parse(&[format!("pmrun={}", pmrun.display())]).unwrap();
        assert_eq!(find_pmrun(&given, None).unwrap(), pmrun);
        std::fs::set_permissions(&pmrun, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            find_pmrun(&given, Some(&path)),
            Err(WrapError::NotExecutable(pmrun))
        );
    }

    #[test]
    fn unknown_plugin_arguments_are_named() {
        let e = PluginArgs::parse(&["pmrn=/x".into()]).unwrap_err();
        assert!(e.to_string().contains("\"pmrn=/x\""), "{e}");
        assert_eq!(PluginArgs::parse(&[]).unwrap(), PluginArgs::default());
    }
}
