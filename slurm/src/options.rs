//! The plugin's options (`--pm`, `--pm-replicas=R`, ...): their table for
//! `srun --help` / `sbatch --help`, the check of each value, and the
//! `PM_*` variables pmrun reads them from (a pmrun flag still wins).

use std::ffi::CStr;
use std::path::Path;

/// One option as Slurm shows and parses it.
pub struct Spec {
    pub opt: Opt,
    /// Without the leading `--`.
    pub name: &'static CStr,
    /// The argument's one-word name, `None` for a flag.
    pub arginfo: Option<&'static CStr>,
    pub usage: &'static CStr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opt {
    Pm,
    Replicas,
    Every,
    Interval,
    Store,
    Flush,
    Spare,
    Transport,
    Async,
}

pub const SPECS: [Spec; 9] = [
    Spec {
        opt: Opt::Pm,
        name: c"pm",
        arginfo: None,
        usage: c"Run this step under pmrun: checkpointed, replicated, restarted on the allocation's other nodes when one fails (srun only)",
    },
    Spec {
        opt: Opt::Replicas,
        name: c"pm-replicas",
        arginfo: Some(c"R"),
        usage: c"pmrun: partner nodes holding a copy of every checkpoint (default 1; PM_REPLICAS)",
    },
    Spec {
        opt: Opt::Every,
        name: c"pm-every",
        arginfo: Some(c"N"),
        usage: c"pmrun: checkpoint every N steps (PM_EVERY)",
    },
    Spec {
        opt: Opt::Interval,
        name: c"pm-interval",
        arginfo: Some(c"S"),
        usage: c"pmrun: checkpoint every S seconds (default 60; PM_INTERVAL)",
    },
    Spec {
        opt: Opt::Store,
        name: c"pm-store",
        arginfo: Some(c"DIR"),
        usage: c"pmrun: node-local checkpoint store, <DIR>/<node> on each node (default /dev/shm/pmrun-<uid>; PM_STORE)",
    },
    Spec {
        opt: Opt::Flush,
        name: c"pm-flush",
        arginfo: Some(c"DIR"),
        usage: c"pmrun: copy committed checkpoints to DIR on a shared file system, to outlive the allocation (PM_FLUSH)",
    },
    Spec {
        opt: Opt::Spare,
        name: c"pm-spare",
        arginfo: Some(c"K"),
        usage: c"pmrun: keep the allocation's last K nodes free of ranks, to recover onto (default 0; PM_SPARE)",
    },
    Spec {
        opt: Opt::Transport,
        name: c"pm-transport",
        arginfo: Some(c"T"),
        usage: c"pmrun: how replicas move: tcp, fabric (libfabric RMA, its first provider) or fabric:PROVIDER (default tcp; PM_TRANSPORT)",
    },
    Spec {
        opt: Opt::Async,
        name: c"pm-async",
        arginfo: None,
        usage: c"pmrun: asynchronous checkpoints, ranks blocked only while their state is copied (PM_ASYNC=1)",
    },
];

impl Opt {
    /// The `val` Slurm hands back to the option callback.
    pub fn val(self) -> i32 {
        self as i32
    }

    pub fn from_val(val: i32) -> Option<Opt> {
        SPECS.iter().map(|s| s.opt).find(|o| o.val() == val)
    }

    pub fn spec(self) -> &'static Spec {
        &SPECS[self as usize]
    }

    /// `--pm-replicas`, for messages.
    pub fn flag(self) -> String {
        format!("--{}", self.spec().name.to_string_lossy())
    }

    /// The variable pmrun reads this option from; `None` for `--pm`.
    pub fn var(self) -> Option<&'static str> {
        Some(match self {
            Opt::Pm => return None,
            Opt::Replicas => "PM_REPLICAS",
            Opt::Every => "PM_EVERY",
            Opt::Interval => "PM_INTERVAL",
            Opt::Store => "PM_STORE",
            Opt::Flush => "PM_FLUSH",
            Opt::Spare => "PM_SPARE",
            Opt::Transport => "PM_TRANSPORT",
            Opt::Async => "PM_ASYNC",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OptionError {
    #[error("{flag}={value}: expected {expected}")]
    Invalid {
        flag: String,
        value: String,
        expected: &'static str,
    },
    #[error("--pm-every and --pm-interval both say when to checkpoint: give one")]
    EveryAndInterval,
    #[error(
        "--pm runs one step under pmrun: give it to srun in the batch script (srun --pm ./app), \
         or run pmrun there; #SBATCH lines take --pm-replicas, --pm-every, --pm-interval, \
         --pm-store, --pm-flush, --pm-spare, --pm-transport and --pm-async"
    )]
    PmOutsideSrun,
}

/// Checks the value of `opt` and returns it as pmrun expects it.
pub fn check(opt: Opt, value: &str) -> Result<String, OptionError> {
    let invalid = |expected| OptionError::Invalid {
        flag: opt.flag(),
        value: value.to_owned(),
        expected,
    };
    let value = value.trim();
    let ok = match opt {
        // Flags: Slurm hands them no value.
        Opt::Pm => true,
        Opt::Async => return Ok("1".to_owned()),
        Opt::Replicas => value.parse::<u32>().is_ok(),
        Opt::Spare => value.parse::<u32>().is_ok(),
        Opt::Every => value.parse::<u64>().is_ok_and(|n| n >= 1),
        Opt::Interval => value.parse::<f64>().is_ok_and(|s| s > 0.0 && s.is_finite()),
        Opt::Store | Opt::Flush => plain_absolute(Path::new(value)),
        // pmrun's --transport syntax; the provider is checked on the nodes.
        Opt::Transport => match value.split_once(':') {
            None => value == "tcp" || value == "fabric",
            Some((kind, provider)) => kind == "fabric" && !provider.is_empty(),
        },
    };
    if ok {
        Ok(value.to_owned())
    } else {
        Err(invalid(match opt {
            Opt::Pm | Opt::Async => unreachable!("flags take no value"),
            Opt::Replicas => "a whole number of partner nodes (0, 1, 2, ...)",
            Opt::Spare => "a whole number of nodes (0, 1, 2, ...)",
            Opt::Every => "a whole number of steps, at least 1",
            Opt::Interval => "a number of seconds greater than 0 (e.g. 30 or 2.5)",
            Opt::Store => {
                "an absolute directory without `..`, the same path on every node (e.g. /dev/shm/ckpt)"
            }
            Opt::Flush => {
                "an absolute directory without `..` on a file system every node shares (e.g. /scratch/ckpt)"
            }
            Opt::Transport => "tcp, fabric or fabric:PROVIDER (e.g. fabric:verbs;ofi_rxm)",
        }))
    }
}

/// An absolute path of plain components: no `..`, `.` or empty parts, so
/// that the root-run prolog and epilog can walk it one name at a time.
pub fn plain_absolute(path: &Path) -> bool {
    // On the text: `Path::components` would quietly drop `.` and `//`.
    let Some(rest) = path.to_str().and_then(|s| s.strip_prefix('/')) else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    !rest.is_empty()
        && rest
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

/// The options one process was given, checked.
#[derive(Default, Debug)]
pub struct Settings {
    pub pm: bool,
    values: Vec<(Opt, String)>,
}

impl Settings {
    pub const fn new() -> Settings {
        Settings {
            pm: false,
            values: Vec::new(),
        }
    }

    /// Records `--name=value` (a later one of the same option wins).
    pub fn set(&mut self, opt: Opt, value: &str) -> Result<(), OptionError> {
        if opt == Opt::Pm {
            self.pm = true;
            return Ok(());
        }
        let value = check(opt, value)?;
        self.values.retain(|(o, _)| *o != opt);
        self.values.push((opt, value));
        Ok(())
    }

    pub fn get(&self, opt: Opt) -> Option<&str> {
        self.values
            .iter()
            .find(|(o, _)| *o == opt)
            .map(|(_, v)| v.as_str())
    }

    /// Checks of options together, once all are parsed.
    pub fn check_together(&self) -> Result<(), OptionError> {
        if self.get(Opt::Every).is_some() && self.get(Opt::Interval).is_some() {
            return Err(OptionError::EveryAndInterval);
        }
        Ok(())
    }

    /// The variables to set, and those to remove: `--pm-every` removes an
    /// inherited `PM_INTERVAL` (and the other way round), since pmrun
    /// refuses both variables at once.
    pub fn environment(&self) -> (Vec<(&'static str, String)>, Vec<&'static str>) {
        let set: Vec<_> = self
            .values
            .iter()
            .filter_map(|(o, v)| Some((o.var()?, v.clone())))
            .collect();
        let mut unset = Vec::new();
        if self.get(Opt::Every).is_some() {
            unset.push("PM_INTERVAL");
        }
        if self.get(Opt::Interval).is_some() {
            unset.push("PM_EVERY");
        }
        (set, unset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_fits_slurm_s_table() {
        for (i, s) in SPECS.iter().enumerate() {
            assert_eq!(s.opt as usize, i);
            assert_eq!(Opt::from_val(s.opt.val()), Some(s.opt));
            // SPANK_OPTION_MAXLEN in spank.h.
            assert!(s.name.to_bytes().len() <= 75);
            assert!(s.name.to_bytes().starts_with(b"pm"));
        }
        assert_eq!(Opt::from_val(99), None);
    }

    #[test]
    fn a_bad_value_names_the_option_and_what_it_expects() {
        let e = check(Opt::Replicas, "x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--pm-replicas=x: expected a whole number of partner nodes (0, 1, 2, ...)"
        );
        for (opt, bad) in [
            (Opt::Replicas, "-1"),
            (Opt::Spare, "two"),
            (Opt::Every, "0"),
            (Opt::Every, "1.5"),
            (Opt::Interval, "0"),
            (Opt::Interval, "inf"),
            (Opt::Interval, "NaN"),
            (Opt::Store, "relative/dir"),
            (Opt::Store, "/a/../etc"),
            (Opt::Store, "/a/./b"),
            (Opt::Store, ""),
            (Opt::Flush, "scratch"),
            (Opt::Transport, "rdma"),
            (Opt::Transport, "fabric:"),
            (Opt::Transport, "tcp:x"),
        ] {
            let e = check(opt, bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{}={bad}: expected ", opt.flag())),
                "{e}"
            );
        }
    }

    #[test]
    fn good_values_become_pmrun_s_variables() {
        let mut s = Settings::default();
        s.set(Opt::Replicas, "2").unwrap();
        s.set(Opt::Every, "10").unwrap();
        s.set(Opt::Store, "/dev/shm/ckpt").unwrap();
        s.set(Opt::Flush, "/scratch/ckpt/").unwrap();
        s.set(Opt::Spare, "1").unwrap();
        s.set(Opt::Transport, "fabric:verbs;ofi_rxm").unwrap();
        s.set(Opt::Replicas, "3").unwrap();
        s.set(Opt::Async, "").unwrap();
        s.set(Opt::Pm, "").unwrap();
        assert!(s.pm);
        s.check_together().unwrap();
        let (set, unset) = s.environment();
        assert_eq!(
            set,
            [
                ("PM_EVERY", "10".to_owned()),
                ("PM_STORE", "/dev/shm/ckpt".to_owned()),
                ("PM_FLUSH", "/scratch/ckpt/".to_owned()),
                ("PM_SPARE", "1".to_owned()),
                ("PM_TRANSPORT", "fabric:verbs;ofi_rxm".to_owned()),
                ("PM_REPLICAS", "3".to_owned()),
                ("PM_ASYNC", "1".to_owned()),
            ]
        );
        assert_eq!(unset, ["PM_INTERVAL"]);
    }

    #[test]
    fn every_and_interval_together_are_refused() {
        let mut s = Settings::default();
        s.set(Opt::Every, "10").unwrap();
        s.set(Opt::Interval, "2.5").unwrap();
        assert_eq!(s.check_together(), Err(OptionError::EveryAndInterval));
    }
}
