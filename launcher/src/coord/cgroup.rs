//! CPU capacity of virtual nodes: a cgroup v1 `cpu` group per node whose
//! CFS quota is the node's CPUs. The host enforces quotas (it does not
//! enforce affinity), so a virtual node with `--node-cpus 0.5` really gets
//! half a core. Needs root and a mounted v1 `cpu` controller.

use anyhow::Context;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup/cpu";
/// The CFS period: 10 ms, not the kernel's 100 ms. A bulk-synchronous job
/// waits for its slowest rank every step; with 100 ms periods a node at an
/// eighth of a core runs 12.5 ms and then stops for 87.5 ms, and its
/// neighbours wait out those windows step after step (a job ran 8× slower
/// than its node's share predicts). Short periods keep the quota close to
/// a steady share at the time scale of a step.
const PERIOD_US: u64 = 10_000;

/// Whether CPU cgroups can be made here, and if not, why.
pub fn available() -> Result<(), String> {
    if !is_root() {
        return Err("pmrun is not running as root".into());
    }
    if !Path::new(ROOT).join("cpu.cfs_quota_us").exists() {
        return Err(format!("no cgroup v1 cpu controller at {ROOT}"));
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Creates the group of `node` of `job` with a quota of `cpus` CPUs.
pub fn create(job: &str, node: &str, cpus: f64) -> anyhow::Result<PathBuf> {
    let dir = Path::new(ROOT).join("pmrun").join(job).join(node);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
    let quota = ((cpus * PERIOD_US as f64).round() as u64).max(1000);
    std::fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())?;
    std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())
        .with_context(|| format!("cannot set the CPU quota of {}", dir.display()))?;
    Ok(dir)
}

/// Removes the job's groups (they must be empty: their ranks have exited).
pub fn remove(job: &str) {
    let job_dir = Path::new(ROOT).join("pmrun").join(job);
    if let Ok(entries) = std::fs::read_dir(&job_dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
    let _ = std::fs::remove_dir(&job_dir);
    // Fails while another job has groups there.
    let _ = std::fs::remove_dir(Path::new(ROOT).join("pmrun"));
}
