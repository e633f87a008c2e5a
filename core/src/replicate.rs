//! Copying one rank's snapshot between the stores of two nodes with a
//! [`Transport`].
//!
//! The source *exposes* a snapshot: it registers, read-only, each data file
//! the manifest references and sends the manifest and the keys to the
//! partner (`proto::ToPartner::SnapshotReady`). The partner *pulls*: it compares
//! the manifest with its own newest snapshot of the rank, and reads exactly
//! the chunks it lacks, one-sidedly, straight into its own data file
//! ([`Store::import_snapshot`]), which verifies them and publishes the
//! manifest atomically. Pulling (rather than pushing) lets the side that
//! knows what it holds decide what moves, and never writes into a
//! partner's store from outside.

use crate::StoreError;
use crate::format::Manifest;
use crate::proto::ToPartner;
use crate::store::{ChunkFetch, ImportReport, ImportTarget, Snapshot, Store};
use crate::transport::{
    Access, Completion, LocalSlice, Region, RegionKey, RemoteSlice, Transport, TransportError,
};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest single transfer when adjacent chunks are merged.
pub const MAX_TRANSFER: u64 = 16 << 20;
/// Transfers kept in flight at once.
pub const IN_FLIGHT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot map {path} for transfer: {source}")]
    Map {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the snapshot of epoch {epoch} references data file epoch {file_epoch}, for which the source sent no key"
    )]
    MissingKey { epoch: u64, file_epoch: u64 },
    #[error("the SnapshotReady announcement is inconsistent: {0}")]
    Announcement(String),
}

/// A snapshot registered for remote reads; deregister it once partners have
/// their copies (or keep it for a replacement partner).
#[derive(Debug)]
pub struct ExposedSnapshot {
    pub manifest: Manifest,
    /// The key of each data file (by its epoch) that the manifest references.
    pub data_keys: Vec<(u64, RegionKey)>,
}

impl ExposedSnapshot {
    /// The message that tells partners to pull this snapshot.
    pub fn announcement(&self) -> ToPartner {
        ToPartner::SnapshotReady {
            job: self.manifest.job.clone(),
            rank: self.manifest.rank,
            epoch: self.manifest.epoch,
            manifest_bytes: self.manifest.encode(),
            data_keys: self.data_keys.clone(),
            changed: changed_ranges(&self.manifest),
        }
    }

    /// The snapshot a `SnapshotReady` announces: its manifest (decoded and
    /// checked like a manifest file) must agree with the message's job, rank
    /// and epoch, and every data file it references must have a key.
    pub fn from_announcement(msg: &ToPartner) -> Result<Self, ReplicateError> {
        let ToPartner::SnapshotReady {
            job,
            rank,
            epoch,
            manifest_bytes,
            data_keys,
            ..
        } = msg
        else {
            return Err(ReplicateError::Announcement(
                "not a SnapshotReady message".into(),
            ));
        };
        let manifest = Manifest::decode(manifest_bytes, Path::new("<announced manifest>"))?;
        if manifest.job != *job || manifest.rank != *rank || manifest.epoch != *epoch {
            return Err(ReplicateError::Announcement(format!(
                "the message names job {job:?} rank {rank} epoch {epoch}, its manifest job {:?} rank {} epoch {}",
                manifest.job, manifest.rank, manifest.epoch
            )));
        }
        let exposed = Self {
            manifest,
            data_keys: data_keys.clone(),
        };
        exposed.check_keys()?;
        Ok(exposed)
    }

    fn check_keys(&self) -> Result<(), ReplicateError> {
        let keys: HashMap<u64, RegionKey> = self.data_keys.iter().copied().collect();
        check_keys(&self.manifest, &keys)
    }

    /// Withdraws every data file from remote access.
    pub fn withdraw<T: Transport>(self, transport: &T) -> Result<(), TransportError> {
        for (_, key) in self.data_keys {
            transport.deregister(key)?;
        }
        Ok(())
    }
}

/// Registers, read-only, the data files of `snapshot` (opened from `store`):
/// a one-off [`Exposer::expose`].
pub fn expose<T: Transport>(
    transport: &T,
    store: &Store,
    snapshot: &Snapshot,
) -> Result<ExposedSnapshot, ReplicateError> {
    Exposer::default().expose(transport, store, snapshot)
}

/// Exposes one rank's snapshots epoch after epoch, keeping the mappings of
/// their data files. The store recycles a data file no kept snapshot needs
/// (same inode, same size, new name), so after the first epochs every
/// file a snapshot references is one already mapped: exposing it is a
/// registration, not a new mapping of the whole state (mapping 1 GiB with
/// its page tables cost 0.05-0.15 s here, every epoch).
#[derive(Default)]
pub struct Exposer {
    maps: HashMap<u64, Mapped>,
    round: u64,
    mappings_made: u64,
}

/// A mapped data file, by inode.
struct Mapped {
    len: u64,
    region: Arc<Region>,
    /// The last round that exposed it.
    used: u64,
}

/// Rounds a mapping is kept without being exposed: files of the snapshots
/// partners may still be reading, and the store's spare.
const KEEP_MAPPED: u64 = 3;

impl Exposer {
    /// Registers, read-only, the data files of `snapshot`, mapping only
    /// those not mapped already.
    pub fn expose<T: Transport>(
        &mut self,
        transport: &T,
        store: &Store,
        snapshot: &Snapshot,
    ) -> Result<ExposedSnapshot, ReplicateError> {
        self.round += 1;
        let manifest = snapshot.manifest().clone();
        let mut epochs: Vec<u64> = manifest
            .regions
            .iter()
            .flat_map(|r| r.chunks.iter().map(|c| c.file_epoch))
            .collect();
        epochs.sort_unstable();
        epochs.dedup();
        let mut data_keys = Vec::with_capacity(epochs.len());
        for e in epochs {
            let region = self.region(&store.data_path(e))?;
            data_keys.push((e, transport.register(region)?));
        }
        // A mapping left unused this long belongs to a file pruned for good
        // (or to another inode now): let its pages go.
        let round = self.round;
        self.maps.retain(|_, m| round - m.used < KEEP_MAPPED);
        Ok(ExposedSnapshot {
            manifest,
            data_keys,
        })
    }

    /// How many data files this exposer has mapped so far.
    pub fn mappings_made(&self) -> u64 {
        self.mappings_made
    }

    /// Bytes of data files this exposer keeps mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.maps.values().map(|m| m.len).sum()
    }

    /// The mapping of the data file at `path`: the one kept for its inode
    /// if the file has the same size, else a new one.
    fn region(&mut self, path: &Path) -> Result<Arc<Region>, ReplicateError> {
        use std::os::unix::fs::MetadataExt;
        let map_err = |source| ReplicateError::Map {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(map_err)?;
        let meta = file.metadata().map_err(map_err)?;
        let round = self.round;
        if let Some(m) = self
            .maps
            .get_mut(&meta.ino())
            .filter(|m| m.len == meta.len())
        {
            m.used = round;
            return Ok(m.region.clone());
        }
        let len = usize::try_from(meta.len())
            .map_err(|_| map_err(std::io::ErrorKind::FileTooLarge.into()))?;
        let region = Arc::new(Region::map_file(&file, 0, len, Access::Read).map_err(map_err)?);
        self.mappings_made += 1;
        let mapped = Mapped {
            len: meta.len(),
            region: region.clone(),
            used: round,
        };
        self.maps.insert(meta.ino(), mapped);
        Ok(region)
    }
}

/// The (offset, length) ranges of the epoch's own data file that its
/// snapshot wrote (the changed chunks), merged where adjacent.
pub fn changed_ranges(manifest: &Manifest) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = manifest
        .regions
        .iter()
        .flat_map(|r| {
            r.chunks
                .iter()
                .enumerate()
                .filter(|(_, c)| c.file_epoch == manifest.epoch)
                .map(|(i, c)| (c.offset, r.chunk_len(i)))
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (off, len) in ranges {
        match merged.last_mut() {
            Some((o, l)) if *o + *l == off => *l += len,
            _ => merged.push((off, len)),
        }
    }
    merged
}

/// Pulls the snapshot described by `manifest` from `peer` (which exposed its
/// data files under `data_keys`) into `dest`, moving only the chunks `dest`
/// lacks. On any failure `dest`'s earlier snapshots are untouched. A one-off
/// [`Puller`]; keep a `Puller` to pull repeatedly.
pub fn pull<T: Transport>(
    transport: &T,
    peer: &T::Peer,
    manifest: &Manifest,
    data_keys: &[(u64, RegionKey)],
    dest: &mut Store,
) -> Result<ImportReport, ReplicateError> {
    Puller::new(transport).pull(peer, manifest, data_keys, dest)
}

/// Pulls snapshots into a store, keeping the store's data files mapped and
/// registered between pulls (the store recycles a few files, so the same
/// ones come back): mapping and registering a large file costs as much as
/// a good part of the transfer.
pub struct Puller<'t, T: Transport> {
    transport: &'t T,
    targets: Vec<Target>,
}

/// A destination data file registered for incoming transfers.
struct Target {
    file: File,
    dev: u64,
    ino: u64,
    len: u64,
    key: RegionKey,
}

/// Registered destination files kept per puller.
const KEEP_TARGETS: usize = 4;

impl<'t, T: Transport> Puller<'t, T> {
    pub fn new(transport: &'t T) -> Self {
        Self {
            transport,
            targets: Vec::new(),
        }
    }

    /// As [`pull`].
    pub fn pull(
        &mut self,
        peer: &T::Peer,
        manifest: &Manifest,
        data_keys: &[(u64, RegionKey)],
        dest: &mut Store,
    ) -> Result<ImportReport, ReplicateError> {
        self.pull_with_progress(peer, manifest, data_keys, dest, &mut |_, _| {})
    }

    /// As [`pull`], calling `progress(moved, total)` once the bytes to
    /// move are known (`moved` 0) and after every verified transfer, so a
    /// caller can tell a slow pull from a stuck one. Nothing is called when
    /// the store already holds every chunk.
    pub fn pull_with_progress(
        &mut self,
        peer: &T::Peer,
        manifest: &Manifest,
        data_keys: &[(u64, RegionKey)],
        dest: &mut Store,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ImportReport, ReplicateError> {
        let keys: HashMap<u64, RegionKey> = data_keys.iter().copied().collect();
        check_keys(manifest, &keys)?;
        let path = dest.data_path(manifest.epoch);
        let fetch = |target: &ImportTarget<'_>, chunks: &[ChunkFetch]| {
            let total = chunks.iter().map(|c| c.len).sum();
            progress(0, total);
            let local = self.target_key(target, &path)?;
            let mut moved = 0;
            let mut moved_by = |n: u64| {
                moved += n;
                progress(moved, total);
            };
            transfer_all(
                self.transport,
                peer,
                &keys,
                local,
                target,
                chunks,
                &mut moved_by,
            )
        };
        Ok(dest.import_snapshot(manifest, fetch)?)
    }

    /// The key of the registered mapping of the import's data file,
    /// registering it unless a live mapping of the same file is cached.
    fn target_key(
        &mut self,
        target: &ImportTarget<'_>,
        path: &Path,
    ) -> Result<RegionKey, ReplicateError> {
        let map_err = |source| ReplicateError::Map {
            path: path.to_owned(),
            source,
        };
        let meta = target.file().metadata().map_err(map_err)?;
        // Forget mappings of files that no longer exist.
        let transport = self.transport;
        self.targets.retain(|t| {
            let live = t.file.metadata().is_ok_and(|m| m.nlink() > 0);
            if !live {
                let _ = transport.deregister(t.key);
            }
            live
        });
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| t.dev == meta.dev() && t.ino == meta.ino() && t.len == target.len())
        {
            return Ok(t.key);
        }
        let len = usize::try_from(target.len())
            .map_err(|_| map_err(std::io::ErrorKind::FileTooLarge.into()))?;
        let region = Region::map_file(target.file(), 0, len, Access::ReadWrite).map_err(map_err)?;
        let key = self.transport.register(Arc::new(region))?;
        if self.targets.len() >= KEEP_TARGETS {
            let old = self.targets.remove(0);
            let _ = self.transport.deregister(old.key);
        }
        self.targets.push(Target {
            file: target.file().try_clone().map_err(map_err)?,
            dev: meta.dev(),
            ino: meta.ino(),
            len: target.len(),
            key,
        });
        Ok(key)
    }
}

impl<T: Transport> Drop for Puller<'_, T> {
    fn drop(&mut self) {
        for t in self.targets.drain(..) {
            let _ = self.transport.deregister(t.key);
        }
    }
}

/// Every data file the manifest references must have a key.
fn check_keys(manifest: &Manifest, keys: &HashMap<u64, RegionKey>) -> Result<(), ReplicateError> {
    match manifest
        .regions
        .iter()
        .flat_map(|r| &r.chunks)
        .find(|c| !keys.contains_key(&c.file_epoch))
    {
        Some(c) => Err(ReplicateError::MissingKey {
            epoch: manifest.epoch,
            file_epoch: c.file_epoch,
        }),
        None => Ok(()),
    }
}

/// Reads every chunk into the local region, merging neighbours and keeping
/// up to [`IN_FLIGHT`] transfers going; each transfer's chunks are verified
/// as soon as it completes, while later ones are still moving, and their
/// bytes are then passed to `moved`. Returns the first error after all
/// issued transfers have ended.
fn transfer_all<T: Transport>(
    transport: &T,
    peer: &T::Peer,
    keys: &HashMap<u64, RegionKey>,
    local: RegionKey,
    target: &ImportTarget<'_>,
    chunks: &[ChunkFetch],
    moved: &mut dyn FnMut(u64),
) -> Result<(), ReplicateError> {
    let mut pending: VecDeque<(Completion, &[ChunkFetch])> = VecDeque::new();
    let mut first_err: Option<ReplicateError> = None;
    let mut settle = |(c, part): (Completion, &[ChunkFetch]),
                      first_err: &mut Option<ReplicateError>| {
        let outcome = transport
            .wait(c)
            .map_err(ReplicateError::from)
            .and_then(|_| {
                part.iter()
                    .try_for_each(|f| target.verify(f))
                    .map_err(ReplicateError::from)
            });
        match outcome {
            Ok(()) => moved(part.iter().map(|f| f.len).sum()),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    };
    for (remote, dst, part) in merge(keys, local, chunks) {
        if pending.len() >= IN_FLIGHT {
            if let Some(p) = pending.pop_front() {
                settle(p, &mut first_err);
            }
        }
        if first_err.is_some() {
            break;
        }
        pending.push_back((transport.read(peer, remote, dst), part));
    }
    for p in pending {
        settle(p, &mut first_err);
    }
    first_err.map_or(Ok(()), Err)
}

/// Chunks that are contiguous both at the source and at the destination
/// become one transfer of at most [`MAX_TRANSFER`] bytes; each transfer
/// comes with the chunks it carries.
fn merge<'c>(
    keys: &HashMap<u64, RegionKey>,
    local: RegionKey,
    chunks: &'c [ChunkFetch],
) -> Vec<(RemoteSlice, LocalSlice, &'c [ChunkFetch])> {
    let mut out: Vec<(RemoteSlice, LocalSlice, &'c [ChunkFetch])> = Vec::new();
    let mut start = 0;
    for (i, f) in chunks.iter().enumerate() {
        let key = keys[&f.source.file_epoch];
        if let Some((r, l, _)) = out.last_mut() {
            if r.key == key
                && r.offset + l.len == f.source.offset
                && l.offset + l.len == f.dest_offset
                && l.len + f.len <= MAX_TRANSFER
            {
                l.len += f.len;
                if let Some(last) = out.last_mut() {
                    last.2 = &chunks[start..=i];
                }
                continue;
            }
        }
        start = i;
        out.push((
            RemoteSlice {
                key,
                offset: f.source.offset,
            },
            LocalSlice {
                key: local,
                offset: f.dest_offset,
                len: f.len,
            },
            &chunks[i..=i],
        ));
    }
    out
}
