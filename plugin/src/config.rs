//! Runtime configuration from the environment, so that a plain
//! `mpirun -n 4 ./app` works with no launcher; `pmrun` sets the same variables.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `PM_STORE` | store root directory | `/dev/shm/pmrun-<uid>` |
//! | `PM_JOB` | job id: which checkpoints a run resumes from | derived from the program, its arguments and the working directory |
//! | `PM_INTERVAL` | seconds between checkpoints | 60 |
//! | `PM_EVERY` | steps between checkpoints (instead of `PM_INTERVAL`) | |
//! | `PM_KEEP` | committed epochs kept per rank | 2 |
//! | `PM_SIGNALS` | `0` disables the SIGUSR1/SIGUSR2 handlers | `1` |
//! | `PM_LOAD_PERIOD` | under `pmrun`: seconds between a rank's load reports to its agent, at least | 1 |
//! | `PM_ASYNC` | `1`: asynchronous checkpoints (blocked only for the copy; hashed and published in the background) | `0` |
//! | `PM_FAULT_PAUSE_BEFORE_COMMIT` | test hook: rank 0 stops before committing this epoch | |
//! | `PM_FAULT_PAUSE_IN` | test hook, `PHASE:EPOCH`: rank 0 stops when writing EPOCH enters PHASE (a `WritePhase`, e.g. `HashChunks:3`) | |
//!
//! `pmrun` also sets the placement variables read by [`crate::agent`].

use crate::PmError;
use pm_core::WritePhase;
use pm_core::store::{DEFAULT_KEEP, default_root};
use std::hash::Hasher;
use std::path::PathBuf;
use std::time::Duration;

/// When checkpoints are taken.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Every this many steps.
    Every(u64),
    /// When at least this much time has passed since the last one.
    Interval(Duration),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub store: PathBuf,
    pub job: String,
    pub schedule: Schedule,
    pub keep: usize,
    pub signals: bool,
    /// Under `pmrun`, the least time between two load reports of a rank.
    pub load_period: Duration,
    pub pause_before_commit: Option<u64>,
    /// Checkpoints copy the state and are hashed and published in the background.
    pub asynchronous: bool,
    /// Test hook: rank 0 stops inside this phase of this epoch's write.
    pub pause_in: Option<(WritePhase, u64)>,
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_LOAD_PERIOD: Duration = Duration::from_secs(1);

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, PmError> {
        Self::from_vars(|name| std::env::var(name).ok(), default_job_id)
    }

    /// Reads the configuration through `var`; `default_job` names the job
    /// when `PM_JOB` is unset.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        default_job: impl FnOnce() -> String,
    ) -> Result<Self, PmError> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let bad = |name: &'static str, value: &str, expected: &'static str| PmError::Config {
            var: name,
            value: value.to_owned(),
            expected,
        };
        let positive = |name: &'static str| -> Result<Option<u64>, PmError> {
            get(name)
                .map(|v| match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(bad(name, &v, "a whole number greater than 0")),
                })
                .transpose()
        };
        let seconds = |name: &'static str| -> Result<Option<Duration>, PmError> {
            get(name)
                .map(|v| match v.trim().parse::<f64>() {
                    Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
                    _ => Err(bad(name, &v, "a number of seconds greater than 0")),
                })
                .transpose()
        };
        let schedule = match (get("PM_EVERY"), get("PM_INTERVAL")) {
            (Some(_), Some(_)) => {
                return Err(PmError::ConfigConflict(
                    "PM_EVERY and PM_INTERVAL are both set; set one",
                ));
            }
            (Some(_), None) => Schedule::Every(positive("PM_EVERY")?.unwrap()),
            (None, Some(_)) => Schedule::Interval(seconds("PM_INTERVAL")?.unwrap()),
            (None, None) => Schedule::Interval(DEFAULT_INTERVAL),
        };
        let flag = |name: &'static str| match get(name).as_deref().map(str::trim) {
            None => Ok(None),
            Some("1") => Ok(Some(true)),
            Some("0") => Ok(Some(false)),
            Some(v) => Err(bad(name, v, "0 or 1")),
        };
        let signals = flag("PM_SIGNALS")?.unwrap_or(true);
        let asynchronous = flag("PM_ASYNC")?.unwrap_or(false);
        let pause_in = match get("PM_FAULT_PAUSE_IN") {
            None => None,
            Some(v) => {
                let parsed = v.split_once(':').and_then(|(phase, epoch)| {
                    let phase = WritePhase::ASYNC
                        .into_iter()
                        .find(|p| format!("{p:?}") == phase)?;
                    Some((phase, epoch.parse::<u64>().ok()?))
                });
                Some(parsed.ok_or_else(|| {
                    bad("PM_FAULT_PAUSE_IN", &v, "PHASE:EPOCH, e.g. HashChunks:3")
                })?)
            }
        };
        let job = match get("PM_JOB") {
            Some(job) => {
                pm_core::names::validate_job_id(&job)?;
                job
            }
            None => default_job(),
        };
        Ok(Self {
            store: get("PM_STORE").map_or_else(default_root, PathBuf::from),
            job,
            schedule,
            keep: positive("PM_KEEP")?.map_or(DEFAULT_KEEP, |k| k as usize),
            signals,
            load_period: seconds("PM_LOAD_PERIOD")?.unwrap_or(DEFAULT_LOAD_PERIOD),
            pause_before_commit: positive("PM_FAULT_PAUSE_BEFORE_COMMIT")?,
            asynchronous,
            pause_in,
        })
    }
}

/// A job id that is the same for every rank of one command and for the same
/// command run again: the program's name and a hash of its path, its
/// arguments and the working directory. The rank count is left out on
/// purpose, so that rerunning with another count is detected, not ignored.
pub fn default_job_id() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut h = twox_hash::XxHash3_64::default();
    h.write(exe.as_os_str().as_encoded_bytes());
    for arg in std::env::args_os().skip(1) {
        h.write(b"\0");
        h.write(arg.as_encoded_bytes());
    }
    h.write(b"\0\0");
    h.write(
        std::env::current_dir()
            .unwrap_or_default()
            .as_os_str()
            .as_encoded_bytes(),
    );
    let stem: String = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{stem}-{:012x}", h.finish() >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, PmError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(|k| map.get(k).cloned(), || "derived".into())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.schedule, Schedule::Interval(DEFAULT_INTERVAL));
        assert_eq!(
            (c.keep, c.signals, c.job.as_str()),
            (DEFAULT_KEEP, true, "derived")
        );
        assert_eq!(c.store, default_root());
        assert_eq!(c.load_period, DEFAULT_LOAD_PERIOD);
        assert!(!c.asynchronous && c.pause_in.is_none());
    }

    #[test]
    fn reads_every_variable() {
        let c = parse(&[
            ("PM_STORE", "/tmp/s"),
            ("PM_JOB", "heat-1"),
            ("PM_EVERY", "25"),
            ("PM_KEEP", "3"),
            ("PM_SIGNALS", "0"),
            ("PM_LOAD_PERIOD", "2.5"),
            ("PM_ASYNC", "1"),
            ("PM_FAULT_PAUSE_IN", "HashChunks:3"),
        ])
        .unwrap();
        assert_eq!(c.load_period, Duration::from_millis(2500));
        assert!(c.asynchronous);
        assert_eq!(c.pause_in, Some((WritePhase::HashChunks, 3)));
        assert_eq!(c.store, PathBuf::from("/tmp/s"));
        assert_eq!(
            (c.job.as_str(), c.schedule, c.keep, c.signals),
            ("heat-1", Schedule::Every(25), 3, false)
        );
        assert_eq!(
            parse(&[("PM_INTERVAL", "0.5")]).unwrap().schedule,
            Schedule::Interval(Duration::from_millis(500))
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("PM_EVERY", "0"),
            ("PM_EVERY", "x"),
            ("PM_INTERVAL", "-1"),
            ("PM_KEEP", "0"),
            ("PM_SIGNALS", "yes"),
            ("PM_ASYNC", "on"),
            ("PM_FAULT_PAUSE_IN", "Nowhere:3"),
            ("PM_FAULT_PAUSE_IN", "HashChunks"),
            ("PM_LOAD_PERIOD", "0"),
            ("PM_LOAD_PERIOD", "-2"),
            ("PM_LOAD_PERIOD", "inf"),
            ("PM_LOAD_PERIOD", "soon"),
        ] {
            let err = parse(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(var) && err.contains(value), "{err}");
        }
        assert!(parse(&[("PM_EVERY", "5"), ("PM_INTERVAL", "5")]).is_err());
        assert!(
            parse(&[("PM_JOB", "../x")])
                .unwrap_err()
                .to_string()
                .contains("invalid job id")
        );
    }

    #[test]
    fn derived_job_id_is_stable_and_valid() {
        let a = default_job_id();
        assert_eq!(a, default_job_id());
        pm_core::names::validate_job_id(&a).unwrap();
    }
}
