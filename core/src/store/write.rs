//! Writing a snapshot atomically and incrementally, and pruning old epochs.

use super::commit::{self, CommitRecord};
use super::{CachedMap, Store};
use crate::StoreError;
use crate::copy::{copy_hashed, copy_nontemporal};
use crate::format::{ChunkRef, Manifest, RegionManifest, chunk_hash};
use crate::names::validate_region_name;
use crate::region::{RegionRef, page_align};
use memmap2::MmapOptions;
use rayon::prelude::*;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The phases of [`Store::write`], in order. A crash in any of them leaves
/// the previously published snapshots intact and the new one absent, except
/// in `Prune`, after which the new snapshot is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WritePhase {
    /// Validating input, discarding snapshots of this or later epochs left
    /// by an abandoned run, and obtaining the data file (a recycled spare).
    Prepare,
    /// Hashing every chunk and copying the changed ones into the data file
    /// (asynchronous checkpoints: copying every chunk, unhashed).
    CopyChunks,
    /// Asynchronous checkpoints only, in the background: hashing the copied
    /// chunks and deciding which ones changed.
    HashChunks,
    /// Forcing the data file to stable storage (skipped in RAM).
    SyncData,
    /// Writing the manifest under a temporary name.
    WriteManifest,
    /// Renaming the manifest into place: the snapshot becomes visible.
    Publish,
    /// Forcing the rename to stable storage (skipped in RAM).
    SyncDir,
    /// Removing epochs beyond the newest `keep` and recycling their data files.
    Prune,
}

impl WritePhase {
    /// The phases of [`Store::write`] (and of an import).
    pub const ALL: [WritePhase; 7] = [
        WritePhase::Prepare,
        WritePhase::CopyChunks,
        WritePhase::SyncData,
        WritePhase::WriteManifest,
        WritePhase::Publish,
        WritePhase::SyncDir,
        WritePhase::Prune,
    ];

    /// The phases of [`Store::write_async`]; from `HashChunks` to `SyncDir`
    /// they run in the background, `Prune` when the caller collects the result.
    pub const ASYNC: [WritePhase; 8] = [
        WritePhase::Prepare,
        WritePhase::CopyChunks,
        WritePhase::HashChunks,
        WritePhase::SyncData,
        WritePhase::WriteManifest,
        WritePhase::Publish,
        WritePhase::SyncDir,
        WritePhase::Prune,
    ];
}

/// What one [`Store::write`] did.
#[derive(Clone, Debug)]
pub struct WriteReport {
    pub epoch: u64,
    pub step: u64,
    /// Bytes of region data in the snapshot.
    pub state_bytes: u64,
    /// Bytes copied into this snapshot's data file (the chunks that changed).
    pub bytes_written: u64,
    pub chunks: usize,
    pub chunks_written: usize,
    /// Time until the snapshot was published (durable where the medium is).
    pub publish_time: Duration,
    /// Epochs removed by pruning.
    pub pruned: Vec<u64>,
}

/// Where each region lies in a data file (page-aligned, back to back) and
/// the file's length, for regions of the given lengths.
pub(super) fn layout(lens: impl IntoIterator<Item = u64>) -> (Vec<u64>, u64) {
    let mut bases = Vec::new();
    let mut end = 0u64;
    for len in lens {
        let base = page_align(end);
        bases.push(base);
        end = base + len;
    }
    (bases, page_align(end))
}

/// The length of the data file a full snapshot of regions of these lengths
/// needs: what [`Store::prefault`] is given.
pub fn data_file_len(lens: impl IntoIterator<Item = u64>) -> u64 {
    layout(lens).1
}

impl Store {
    /// Writes the snapshot of `regions` at `epoch` (taken at application step
    /// `step`) and publishes it atomically, then keeps only the newest
    /// `keep` epochs. Snapshots of `epoch` or later left by an abandoned run
    /// are discarded first: writing an epoch always starts a new timeline.
    pub fn write(
        &mut self,
        epoch: u64,
        step: u64,
        regions: &[RegionRef<'_>],
    ) -> Result<WriteReport, StoreError> {
        let WriteStart {
            started,
            prev,
            bases,
            mut data,
        } = self.begin_write(epoch, regions)?;
        let cs = self.opts.chunk_size;
        let mut items = Vec::new();
        {
            let map: &mut [u8] = data.as_mut().map(|d| &mut d.map[..]).unwrap_or(&mut []);
            let slots = chunk_slots(regions, &bases, cs, map);
            let mut slots = slots.into_iter();
            for r in regions {
                let prev_region = prev
                    .as_ref()
                    .and_then(|m| m.region(r.name))
                    .filter(|p| p.chunk_size == cs as u64);
                for (i, (src, dst, offset)) in
                    slots.by_ref().take(r.bytes.len().div_ceil(cs)).enumerate()
                {
                    let reusable = prev_region
                        .filter(|p| i < p.chunks.len() && p.chunk_len(i) == src.len() as u64)
                        .map(|p| p.chunks[i]);
                    items.push((src, dst, reusable, offset));
                }
            }
        }
        // A chunk that changed in the previous epoch is likely to change
        // again: it is hashed while it is copied (read from memory once);
        // if it did not change after all, the copy is simply not referenced.
        // Others are hashed first and copied only if they changed.
        let prev_epoch = prev.as_ref().map(|m| m.epoch);
        let refs: Vec<(ChunkRef, bool)> = items
            .into_par_iter()
            .map(|(src, dst, reusable, offset)| {
                let likely_changed = reusable.is_none_or(|old| Some(old.file_epoch) == prev_epoch);
                let (hash, copied) = match likely_changed {
                    true => (copy_hashed(dst, src), true),
                    false => (chunk_hash(src), false),
                };
                match reusable {
                    Some(old) if old.hash == hash => (old, false),
                    _ => {
                        if !copied {
                            copy_nontemporal(dst, src);
                        }
                        let fresh = ChunkRef {
                            hash,
                            file_epoch: epoch,
                            offset,
                        };
                        (fresh, true)
                    }
                }
            })
            .collect();

        let (region_manifests, bytes_written, chunks_written) = region_manifests(
            regions
                .iter()
                .map(|r| (r.name.to_owned(), r.bytes.len() as u64)),
            cs,
            &refs,
        );

        self.phase(WritePhase::SyncData);
        if let Some(d) = &data {
            if self.sync && chunks_written > 0 {
                d.map
                    .flush()
                    .map_err(|e| StoreError::io("sync data file", self.data_path(epoch), e))?;
            }
            let ino = d.file.metadata().map(|m| m.ino()).unwrap_or(0);
            self.maps.insert(ino, data.take().unwrap());
        }

        let manifest = Manifest {
            job: self.job.clone(),
            rank: self.rank,
            epoch,
            step,
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            regions: region_manifests,
        };
        self.publish_manifest(&manifest)?;
        let publish_time = started.elapsed();

        self.phase(WritePhase::Prune);
        let pruned = self.prune()?;
        tracing::debug!(
            epoch,
            step,
            bytes_written,
            chunks_written,
            elapsed_ms = publish_time.as_secs_f64() * 1e3,
            "snapshot published"
        );
        Ok(WriteReport {
            epoch,
            step,
            state_bytes: manifest.state_bytes(),
            bytes_written,
            chunks: refs.len(),
            chunks_written,
            publish_time,
            pruned,
        })
    }

    pub(super) fn publish_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        self.publisher().publish(manifest)
    }

    /// What publishing a manifest needs, detached from the store (an
    /// asynchronous checkpoint publishes from a background thread).
    pub(super) fn publisher(&self) -> Publisher {
        Publisher {
            dir: self.dir.clone(),
            sync: self.sync,
            hook: self.opts.phase_hook.clone(),
        }
    }

    /// Removes manifests of `epoch` and later: they belong to a run that was
    /// abandoned (the job restarted from an older epoch).
    pub(super) fn discard_from(&mut self, epoch: u64) -> Result<(), StoreError> {
        let stale: Vec<u64> = self
            .list()?
            .manifests
            .into_iter()
            .filter(|&e| e >= epoch)
            .collect();
        for &e in &stale {
            let path = self.manifest_path(e);
            fs::remove_file(&path)
                .map_err(|err| StoreError::io("remove stale manifest", &path, err))?;
        }
        if !stale.is_empty() {
            tracing::info!(?stale, "discarded snapshots of an abandoned run");
            self.sync_dir()?;
        }
        Ok(())
    }

    /// The newest manifest older than `epoch` that decodes; its chunks are
    /// the candidates for reuse. A damaged one is skipped (its chunks are
    /// then simply written again).
    pub(super) fn newest_valid_before(&self, epoch: u64) -> Option<Manifest> {
        let epochs = self.list().ok()?.manifests;
        epochs
            .into_iter()
            .rev()
            .filter(|&e| e < epoch)
            .find_map(|e| self.manifest(e).ok())
    }

    /// Renames a spare to `path`, preferring one whose pages are mapped
    /// here: a recycled spare this store wrote, else a pre-faulted new file,
    /// else any spare. Leaves `path` absent when there is none.
    fn take_spare(&mut self, path: &std::path::Path) -> Result<(), StoreError> {
        let (spares, mapped) = loop {
            let spares = self.list()?.spares;
            let mapped = spares
                .iter()
                .position(|p| fs::metadata(p).is_ok_and(|m| self.maps.contains_key(&m.ino())));
            // Rather than fault a file in here, wait for the pre-fault thread
            // to finish the one it is on: that costs less.
            if mapped.is_some() || !self.ready.is_empty() || !self.wait_for_prefault() {
                break (spares, mapped);
            }
        };
        if mapped.is_none() && self.take_ready(path)? {
            return Ok(());
        }
        if let Some(spare) = spares.get(mapped.unwrap_or(0)) {
            fs::rename(spare, path)
                .map_err(|e| StoreError::io("recycle spare data file", path, e))?;
        }
        Ok(())
    }

    /// Opens the data file for `epoch` with length `len` and its mapping,
    /// preferring a leftover file of this epoch or a spare, whose pages are
    /// already allocated. `None` when the snapshot has no bytes.
    pub(super) fn acquire_data_file(
        &mut self,
        epoch: u64,
        len: u64,
    ) -> Result<Option<CachedMap>, StoreError> {
        if len == 0 {
            return Ok(None);
        }
        let path = self.data_path(epoch);
        self.adopt_delivered();
        if !path.exists() {
            self.take_spare(&path)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io("open data file", &path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| StoreError::io("stat data file", &path, e))?;
        if meta.len() != len {
            file.set_len(len)
                .map_err(|e| StoreError::io("size data file", &path, e))?;
        }
        if let Some(cached) = self.maps.remove(&meta.ino()) {
            // Reuse only a live mapping of this very file at this size.
            let same_file = cached
                .file
                .metadata()
                .is_ok_and(|m| m.nlink() > 0 && m.ino() == meta.ino());
            if same_file && cached.map.len() as u64 == len {
                return Ok(Some(CachedMap {
                    file,
                    map: cached.map,
                }));
            }
        }
        // SAFETY: the data file is private to this store (directory mode 0700)
        // and only this writer changes it while it is mapped.
        let map = unsafe { MmapOptions::new().len(len as usize).map_mut(&file) }
            .map_err(|e| StoreError::io("map data file", &path, e))?;
        super::pool::advise_huge(&map);
        Ok(Some(CachedMap { file, map }))
    }

    /// Marks `epoch` (which must be published here) as committed by a job of
    /// `ranks` ranks, then prunes: from now on the newest `keep` epochs up to
    /// it are what pruning preserves.
    pub fn commit(&mut self, epoch: u64, ranks: u32) -> Result<Vec<u64>, StoreError> {
        self.mark_committed(epoch, ranks)?;
        self.prune()
    }

    /// Records `epoch` as committed without pruning. For a process that is
    /// not the store's writer (the node agent, marking the epochs `pmrun`
    /// committed): pruning could remove a data file the writer is filling.
    pub fn mark_committed(&self, epoch: u64, ranks: u32) -> Result<(), StoreError> {
        let step = self.manifest(epoch)?.step;
        let record = CommitRecord { epoch, step, ranks };
        commit::write_record(&self.commit_path(), record, self.sync)
    }

    /// The newest committed epoch of this rank: its commit record or, with
    /// `auto_commit`, the newest snapshot whose manifest decodes.
    pub fn committed(&self) -> Result<Option<CommitRecord>, StoreError> {
        if !self.opts.auto_commit {
            return commit::read_record(&self.commit_path());
        }
        let newest = self.newest_valid_before(u64::MAX);
        Ok(newest.map(|m| CommitRecord {
            epoch: m.epoch,
            step: m.step,
            ranks: 0,
        }))
    }

    /// Keeps the newest `keep` valid snapshots up to the committed epoch and
    /// the newest `keep` beyond it (not yet committed), removes the rest, and
    /// recycles data files no kept manifest references (one becomes the spare).
    pub fn prune(&mut self) -> Result<Vec<u64>, StoreError> {
        let committed = if self.opts.auto_commit {
            u64::MAX
        } else {
            commit::read_record(&self.commit_path())?.map_or(0, |r| r.epoch)
        };
        let listing = self.list()?;
        let mut valid = Vec::new();
        let mut damaged = Vec::new();
        for &e in &listing.manifests {
            match self.manifest(e) {
                Ok(m) => valid.push(m),
                Err(err) if err.is_damage() => damaged.push(e),
                Err(err) => return Err(err),
            }
        }
        let keep = self.opts.keep;
        let (mut older, mut newer): (Vec<Manifest>, Vec<Manifest>) =
            valid.into_iter().partition(|m| m.epoch <= committed);
        let mut kept = older.split_off(older.len().saturating_sub(keep));
        kept.extend(newer.split_off(newer.len().saturating_sub(keep)));
        let valid: Vec<Manifest> = older.into_iter().chain(newer).collect();
        let oldest_kept = kept.first().map_or(u64::MAX, |m| m.epoch);
        let mut pruned: Vec<u64> = valid.iter().map(|m| m.epoch).collect();
        pruned.extend(damaged.into_iter().filter(|&e| e < oldest_kept));
        pruned.sort_unstable();
        for &e in &pruned {
            let path = self.manifest_path(e);
            fs::remove_file(&path)
                .map_err(|err| StoreError::io("remove old manifest", &path, err))?;
        }
        for tmp in &listing.temporaries {
            let _ = fs::remove_file(tmp);
        }
        // Make the removals durable before any data file they referenced is reused.
        if !pruned.is_empty() {
            self.sync_dir()?;
        }

        let mut referenced: HashSet<u64> = kept
            .iter()
            .flat_map(|m| {
                m.regions
                    .iter()
                    .flat_map(|r| r.chunks.iter().map(|c| c.file_epoch))
            })
            .collect();
        // The data file an asynchronous checkpoint is publishing from.
        referenced.extend(self.staged_epoch());
        // The pool: `keep` + 1 data files in all (referenced, spare, or
        // pre-faulted), with room for one spare at least.
        let in_use = listing
            .data
            .iter()
            .filter(|e| referenced.contains(e))
            .count();
        let room = (keep + 1).saturating_sub(in_use).max(1);
        self.adopt_delivered();
        let mut spares = listing.spares;
        for &e in listing.data.iter().filter(|e| !referenced.contains(e)) {
            let path = self.data_path(e);
            if spares.len() + self.pool_in_waiting() < room {
                let spare = self.free_spare_path(&spares);
                fs::rename(&path, &spare)
                    .map_err(|err| StoreError::io("recycle data file", &path, err))?;
                spares.push(spare);
            } else {
                self.forget_and_remove(&path)?;
            }
        }
        // Beyond the pool (a checkpoint outran the pre-faulting, or a
        // layout shrank): pre-faulted files go first, then spares.
        self.trim_ready(room.saturating_sub(spares.len() + self.prefault_pending()));
        let keep_spares = room.saturating_sub(self.pool_in_waiting());
        for spare in spares.iter().skip(keep_spares) {
            self.forget_and_remove(spare)?;
        }
        let spares_left = spares.len().min(keep_spares);
        // Snapshots share older files (unchanged chunks), so none was
        // freed: the next checkpoint needs one more made ready. Where a
        // commit follows the write, it may free one: the writer tops up
        // once the checkpoint is over (`top_up_pool`), so that no file is
        // made only to be removed at the commit.
        self.top_up_wanted = spares_left == 0 && self.pool_in_waiting() == 0;
        if self.opts.auto_commit {
            self.top_up_pool();
        }
        Ok(pruned)
    }
}

/// Writes and publishes manifests in a store directory (phases
/// `WriteManifest` to `SyncDir` of the write protocol).
pub(super) struct Publisher {
    pub dir: std::path::PathBuf,
    pub sync: bool,
    pub hook: Option<super::PhaseHook>,
}

impl Publisher {
    pub(super) fn phase(&self, phase: WritePhase) {
        if let Some(hook) = &self.hook {
            hook(phase);
        }
    }

    pub(super) fn publish(&self, manifest: &Manifest) -> Result<(), StoreError> {
        self.phase(WritePhase::WriteManifest);
        let name = super::manifest_name(manifest.epoch);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = File::create(&tmp).map_err(|e| StoreError::io("create manifest", &tmp, e))?;
        f.write_all(&manifest.encode())
            .map_err(|e| StoreError::io("write manifest", &tmp, e))?;
        if self.sync {
            f.sync_all()
                .map_err(|e| StoreError::io("sync manifest", &tmp, e))?;
        }
        drop(f);
        self.phase(WritePhase::Publish);
        let path = self.dir.join(name);
        fs::rename(&tmp, &path).map_err(|e| StoreError::io("publish manifest", &path, e))?;
        self.phase(WritePhase::SyncDir);
        if self.sync {
            super::sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// A write past its Prepare phase, about to copy chunks.
pub(super) struct WriteStart {
    pub started: Instant,
    /// The newest older snapshot: its chunks may be reused.
    pub prev: Option<Manifest>,
    /// Each region's offset in the data file.
    pub bases: Vec<u64>,
    pub data: Option<CachedMap>,
}

/// The manifests of regions `(name, len)` cut in chunks of `cs` bytes, from
/// each chunk's reference and whether it was written now; with the bytes
/// and chunks written.
pub(super) fn region_manifests(
    regions: impl Iterator<Item = (String, u64)>,
    cs: usize,
    refs: &[(ChunkRef, bool)],
) -> (Vec<RegionManifest>, u64, usize) {
    let cs = cs as u64;
    let mut refs = refs.iter();
    let (mut bytes_written, mut chunks_written) = (0u64, 0usize);
    let manifests = regions
        .map(|(name, len)| {
            let chunks = refs
                .by_ref()
                .take(len.div_ceil(cs) as usize)
                .enumerate()
                .map(|(i, &(c, written))| {
                    if written {
                        chunks_written += 1;
                        bytes_written += cs.min(len - i as u64 * cs);
                    }
                    c
                })
                .collect();
            RegionManifest {
                name,
                len,
                chunk_size: cs,
                chunks,
            }
        })
        .collect();
    (manifests, bytes_written, chunks_written)
}

impl Store {
    /// The Prepare phase of a write (of [`Store::write`] and
    /// [`Store::write_async`]): waits for an asynchronous write in flight,
    /// checks the regions, discards abandoned epochs, and obtains the data
    /// file; then enters CopyChunks.
    pub(super) fn begin_write(
        &mut self,
        epoch: u64,
        regions: &[RegionRef<'_>],
    ) -> Result<WriteStart, StoreError> {
        self.finish_staged()?;
        let started = Instant::now();
        self.phase(WritePhase::Prepare);
        check_regions(regions)?;
        self.discard_from(epoch)?;
        let prev = self.newest_valid_before(epoch);
        let (bases, file_len) = layout(regions.iter().map(|r| r.bytes.len() as u64));
        let data = self.acquire_data_file(epoch, file_len)?;
        self.phase(WritePhase::CopyChunks);
        Ok(WriteStart {
            started,
            prev,
            bases,
            data,
        })
    }

    /// Removes a data file pruning freed, and its mapping, in the background.
    fn forget_and_remove(&mut self, path: &std::path::Path) -> Result<(), StoreError> {
        let map = fs::metadata(path)
            .ok()
            .and_then(|meta| self.maps.remove(&meta.ino()));
        self.reaper.remove(path, map)
    }
}

/// Each chunk of `regions` (in order) with its destination in the mapped
/// data file `map` of the given layout and its offset there.
pub(super) fn chunk_slots<'a, 'm>(
    regions: &[RegionRef<'a>],
    bases: &[u64],
    cs: usize,
    map: &'m mut [u8],
) -> Vec<(&'a [u8], &'m mut [u8], u64)> {
    let mut slots = Vec::new();
    let mut rest = map;
    let mut consumed = 0u64;
    for (r, &base) in regions.iter().zip(bases) {
        for (i, src) in r.bytes.chunks(cs).enumerate() {
            let offset = base + (i * cs) as u64;
            let (_, tail) = std::mem::take(&mut rest).split_at_mut((offset - consumed) as usize);
            let (dst, tail) = tail.split_at_mut(src.len());
            rest = tail;
            consumed = offset + src.len() as u64;
            slots.push((src, dst, offset));
        }
    }
    slots
}

pub(super) fn check_regions(regions: &[RegionRef<'_>]) -> Result<(), StoreError> {
    let mut names = HashSet::new();
    for r in regions {
        validate_region_name(r.name)?;
        if !names.insert(r.name) {
            return Err(StoreError::DuplicateRegion(r.name.to_owned()));
        }
    }
    Ok(())
}
