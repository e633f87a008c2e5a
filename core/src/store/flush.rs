//! Copying committed snapshots between two stores of the same job: out to a
//! flush directory on a shared file system (so that checkpoints outlive the
//! nodes' RAM stores and the allocation), and back into a node's store when
//! a job resumes from the flushed copy.
//!
//! A flush directory is a store root like any other (`<dir>/<job>/rank-<r>/`
//! with the same manifests and data files, and the job's own commit record
//! `<dir>/<job>/committed`), so the copy is an import ([`Store::import_snapshot`]):
//! only the chunks the destination's newest older snapshot lacks are
//! written, every one is verified against the manifest before the
//! snapshot is published, and an interrupted copy publishes nothing.

use super::commit::{self, CommitRecord};
use super::{ImportReport, Store};
use crate::StoreError;
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Copies `src`'s published snapshot of `epoch` into `dst` (a store of the
/// same job and rank), writing only the chunks `dst` does not hold already.
pub fn copy_snapshot(src: &Store, epoch: u64, dst: &mut Store) -> Result<ImportReport, StoreError> {
    let manifest = src.manifest(epoch)?;
    let mut files = HashMap::new();
    for c in manifest.regions.iter().flat_map(|r| &r.chunks) {
        if let std::collections::hash_map::Entry::Vacant(slot) = files.entry(c.file_epoch) {
            let path = src.data_path(c.file_epoch);
            let file = File::open(&path).map_err(|e| StoreError::io("open data file", &path, e))?;
            slot.insert((path, file));
        }
    }
    let dest = dst.data_path(epoch);
    dst.import_snapshot(&manifest, |target, fetches| {
        fetches.par_iter().try_for_each_init(Vec::new, |buf, f| {
            let (path, file) = &files[&f.source.file_epoch];
            buf.resize(f.len as usize, 0);
            file.read_exact_at(buf, f.source.offset)
                .map_err(|e| StoreError::io("read data file", path, e))?;
            // Checked while in cache, before it is written.
            target.verify_bytes(f, buf)?;
            target
                .file()
                .write_all_at(buf, f.dest_offset)
                .map_err(|e| StoreError::io("write data file", &dest, e))
        })
    })
}

/// The commit record of `job` in the store root `root` (a flush directory):
/// the newest epoch every rank's copy of which is complete there.
pub fn read_job_record(root: &Path, job: &str) -> Result<Option<CommitRecord>, StoreError> {
    crate::names::validate_job_id(job)?;
    commit::read_record(&root.join(job).join("committed"))
}

/// Records `record` as committed in `root` for `job`: the job's record,
/// made durable, then each rank's (which lets later copies prune the
/// rank's older epochs). Every rank's copy of the epoch must be published.
pub fn record_job_commit(
    root: &Path,
    job: &str,
    record: CommitRecord,
    ranks: u32,
) -> Result<(), StoreError> {
    crate::names::validate_job_id(job)?;
    let dir = root.join(job);
    commit::write_record(&dir.join("committed"), record, true)?;
    (0..ranks).into_par_iter().try_for_each(|r| {
        let path = dir.join(format!("rank-{r}")).join("committed");
        commit::write_record(&path, record, true)
    })
}
