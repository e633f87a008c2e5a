//! The file worker: commit records, inventory scans, the job's deletion
//! and the node's cgroup quota, one job after the other (so that a later commit record never
//! loses to an earlier one, and a deletion comes after every write), each
//! reported back to the core when done.

use super::core::{Commit, Event, FileDone, FileJob};
use super::event_loop::Input;
use super::{Resources, error_chain};
use pm_core::proto::Inventory;
use pm_core::store::commit::{CommitRecord, read_record, write_record};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};

pub(super) fn start(res: Arc<Resources>, tx: Sender<Input>) -> std::io::Result<Sender<FileJob>> {
    let (jobs, rx) = channel::<FileJob>();
    super::spawn("pmd-files", move || {
        for job in rx {
            let done = run(&res, job);
            if tx.send(Event::Files(done).into()).is_err() {
                return;
            }
        }
    })?;
    Ok(jobs)
}

fn run(res: &Resources, job: FileJob) -> FileDone {
    match job {
        FileJob::Commit(c) => {
            commit(res, c);
            FileDone::Written
        }
        FileJob::MarkCommitted { rank, commit } => {
            mark(res, rank, commit);
            FileDone::Written
        }
        FileJob::Inventory => FileDone::Inventory(inventory(res)),
        FileJob::DeleteJob => {
            let dir = res.job_dir();
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::error!(dir = %dir.display(), error = %e, "cannot delete the job's checkpoints");
            }
            FileDone::Deleted
        }
        FileJob::SetQuota { cpus } => FileDone::Quota(set_quota(res.opts.cgroup.as_deref(), cpus)),
    }
}

/// The kernel's least CFS quota, µs (as pmrun sets it: coord/cgroup.rs).
const MIN_QUOTA_US: u64 = 1000;

/// Sets the CFS quota of the node's cgroup (the group pmrun made for it,
/// whose period pmrun set) to `cpus` × its period; how it is enforced now,
/// or why not. Only the group's own quota file is written.
fn set_quota(cgroup: Option<&Path>, cpus: f64) -> Result<String, String> {
    let dir = cgroup.ok_or("this node has no CPU cgroup")?;
    let period_file = dir.join("cpu.cfs_period_us");
    let text = std::fs::read_to_string(&period_file)
        .map_err(|e| format!("cannot read {}: {e}", period_file.display()))?;
    let period: u64 = text.trim().parse().map_err(|_| {
        format!(
            "{} holds {:?}, not a period in µs",
            period_file.display(),
            text.trim()
        )
    })?;
    let quota = ((cpus * period as f64).round() as u64).max(MIN_QUOTA_US);
    let quota_file = dir.join("cpu.cfs_quota_us");
    std::fs::write(&quota_file, quota.to_string())
        .map_err(|e| format!("cannot write {}: {e}", quota_file.display()))?;
    Ok(format!(
        "cgroup quota {quota} µs of every {period} µs in {}",
        dir.display()
    ))
}

/// Records the epoch as the job's committed epoch on this node, and as
/// committed in every rank directory that holds it (own ranks and
/// replicas) via `Store::mark_committed`, which does not prune: the rank
/// process is the only writer that prunes its directory.
fn commit(res: &Resources, c: Commit) {
    let job_dir = res.job_dir();
    if std::fs::create_dir_all(&job_dir).is_ok() {
        let record = CommitRecord {
            epoch: c.epoch,
            step: c.step,
            ranks: c.ranks,
        };
        // Durable: on a disk store, `pmrun --job` resumes from this record
        // after a reboot (on tmpfs the sync costs nothing).
        if let Err(e) = write_record(&job_dir.join("committed"), record, true) {
            tracing::error!(error = %e, "cannot write the job's commit record");
        }
    }
    for rank in ranks_on_disk(res) {
        mark(res, rank, c);
    }
}

/// Marks `c` committed in `rank`'s directory if it holds the epoch.
fn mark(res: &Resources, rank: u32, c: Commit) {
    let marked = res.open_store(rank).and_then(|store| {
        if store.epochs()?.contains(&c.epoch) {
            store.mark_committed(c.epoch, c.ranks)
        } else {
            Ok(())
        }
    });
    if let Err(e) = marked {
        tracing::error!(rank, epoch = c.epoch, error = %error_chain(&e), "cannot mark the epoch committed");
    }
}

/// Ranks with a directory in this node's store.
fn ranks_on_disk(res: &Resources) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(res.job_dir()) else {
        return Vec::new();
    };
    let mut ranks: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("rank-")?.parse().ok())
        .collect();
    ranks.sort_unstable();
    ranks
}

/// What this node's store holds of the job.
fn inventory(res: &Resources) -> Inventory {
    let record = read_record(&res.job_dir().join("committed")).ok().flatten();
    let ranks = ranks_on_disk(res)
        .into_iter()
        .filter_map(|rank| Some((rank, res.open_store(rank).ok()?.epochs().ok()?)))
        .collect();
    Inventory {
        committed: record.map(|r| (r.epoch, r.step, r.ranks)),
        ranks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_is_the_cpus_times_the_groups_period() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.cfs_period_us"), "50000\n").unwrap();
        let how = set_quota(Some(dir.path()), 1.5).unwrap();
        let quota = std::fs::read_to_string(dir.path().join("cpu.cfs_quota_us")).unwrap();
        assert_eq!(quota, "75000");
        assert!(
            how.contains("cgroup quota 75000 µs of every 50000 µs"),
            "{how}"
        );
        // Never below the kernel's least quota.
        set_quota(Some(dir.path()), 0.001).unwrap();
        let quota = std::fs::read_to_string(dir.path().join("cpu.cfs_quota_us")).unwrap();
        assert_eq!(quota, "1000");
        assert!(set_quota(None, 1.0).is_err());
        let missing = dir.path().join("gone");
        let err = set_quota(Some(&missing), 1.0).unwrap_err();
        assert!(err.contains("cpu.cfs_period_us"), "{err}");
    }
}
