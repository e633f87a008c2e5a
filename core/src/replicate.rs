//! Copying one rank's snapshot between the stores of two nodes with a
//! [`Transport`].
//!
//! The source *exposes* a snapshot: it registers, read-only, each data file
//! the manifest references and sends the manifest and the keys to the
//! partner (`wire::Message::SnapshotReady`). The partner *pulls*: it compares
//! the manifest with its own newest snapshot of the rank, and reads exactly
//! the chunks it lacks, one-sidedly, straight into its own data file
//! ([`Store::import_snapshot`]), which verifies them and publishes the
//! manifest atomically. Pulling (rather than pushing) lets the side that
//! knows what it holds decide what moves, and never writes into a
//! partner's store from outside.

use crate::StoreError;
use crate::format::Manifest;
use crate::store::{ChunkFetch, ImportReport, Snapshot, Store};
use crate::transport::{
    Access, Completion, LocalSlice, Region, RegionKey, RemoteSlice, Transport, TransportError,
};
use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
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
    /// Withdraws every data file from remote access.
    pub fn withdraw<T: Transport>(self, transport: &T) -> Result<(), TransportError> {
        for (_, key) in self.data_keys {
            transport.deregister(key)?;
        }
        Ok(())
    }
}

/// Registers, read-only, the data files of `snapshot` (opened from `store`).
pub fn expose<T: Transport>(
    transport: &T,
    store: &Store,
    snapshot: &Snapshot,
) -> Result<ExposedSnapshot, ReplicateError> {
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
        let path = store.data_path(e);
        let map_err = |source| ReplicateError::Map {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(map_err)?;
        let len = file.metadata().map_err(map_err)?.len();
        let len =
            usize::try_from(len).map_err(|_| map_err(std::io::ErrorKind::FileTooLarge.into()))?;
        let region = Region::map_file(&file, 0, len, Access::Read).map_err(map_err)?;
        data_keys.push((e, transport.register(Arc::new(region))?));
    }
    Ok(ExposedSnapshot {
        manifest,
        data_keys,
    })
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
/// lacks. On any failure `dest`'s earlier snapshots are untouched.
pub fn pull<T: Transport>(
    transport: &T,
    peer: &T::Peer,
    manifest: &Manifest,
    data_keys: &[(u64, RegionKey)],
    dest: &mut Store,
) -> Result<ImportReport, ReplicateError> {
    let keys: HashMap<u64, RegionKey> = data_keys.iter().copied().collect();
    for c in manifest.regions.iter().flat_map(|r| &r.chunks) {
        if !keys.contains_key(&c.file_epoch) {
            return Err(ReplicateError::MissingKey {
                epoch: manifest.epoch,
                file_epoch: c.file_epoch,
            });
        }
    }
    let fetch = |file: &File, len: u64, chunks: &[ChunkFetch]| -> Result<(), ReplicateError> {
        let path = || PathBuf::from(format!("data file of epoch {}", manifest.epoch));
        let size = usize::try_from(len).map_err(|_| ReplicateError::Map {
            path: path(),
            source: std::io::ErrorKind::FileTooLarge.into(),
        })?;
        let region = Region::map_file(file, 0, size, Access::ReadWrite).map_err(|source| {
            ReplicateError::Map {
                path: path(),
                source,
            }
        })?;
        let local = transport.register(Arc::new(region))?;
        let outcome = transfer_all(transport, peer, &keys, local, chunks);
        transport.deregister(local)?;
        outcome
    };
    Ok(dest.import_snapshot(manifest, fetch)?)
}

/// Reads every chunk into the local region, merging neighbours and keeping
/// up to [`IN_FLIGHT`] transfers going; returns the first error after all
/// issued transfers have ended.
fn transfer_all<T: Transport>(
    transport: &T,
    peer: &T::Peer,
    keys: &HashMap<u64, RegionKey>,
    local: RegionKey,
    chunks: &[ChunkFetch],
) -> Result<(), ReplicateError> {
    let mut pending: std::collections::VecDeque<Completion> = Default::default();
    let mut first_err = None;
    for (remote, dst) in merge(keys, local, chunks) {
        if pending.len() >= IN_FLIGHT {
            if let Some(Err(e)) = pending.pop_front().map(|c| transport.wait(c)) {
                first_err.get_or_insert(e);
            }
        }
        if first_err.is_some() {
            break;
        }
        pending.push_back(transport.read(peer, remote, dst));
    }
    for c in pending {
        if let Err(e) = transport.wait(c) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), |e| Err(e.into()))
}

/// Chunks that are contiguous both at the source and at the destination
/// become one transfer of at most [`MAX_TRANSFER`] bytes.
fn merge(
    keys: &HashMap<u64, RegionKey>,
    local: RegionKey,
    chunks: &[ChunkFetch],
) -> Vec<(RemoteSlice, LocalSlice)> {
    let mut out: Vec<(RemoteSlice, LocalSlice)> = Vec::new();
    for f in chunks {
        let key = keys[&f.source.file_epoch];
        if let Some((r, l)) = out.last_mut() {
            if r.key == key
                && r.offset + l.len == f.source.offset
                && l.offset + l.len == f.dest_offset
                && l.len + f.len <= MAX_TRANSFER
            {
                l.len += f.len;
                continue;
            }
        }
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
        ));
    }
    out
}
