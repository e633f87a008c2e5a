//! Commit records: a tiny, checksummed file that names a committed epoch.
//!
//! A snapshot can be published on one rank's node before the whole job has
//! agreed that its epoch is complete everywhere. The rank runtime marks the
//! epoch committed only after that agreement: rank 0 writes the job's record
//! (`<root>/<job>/committed`), then every rank writes its own
//! (`<root>/<job>/rank-<r>/committed`), which pruning respects. Records are
//! replaced atomically (temporary file, fsync, rename, fsync directory).

use crate::StoreError;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use twox_hash::XxHash3_64;

const MAGIC: [u8; 8] = *b"PMCOMMIT";
const VERSION: u32 = 1;
const LEN: usize = 8 + 4 + 8 + 8 + 4 + 8;
const BODY: usize = LEN - 8;

/// A committed epoch, the application step it was taken at, and the number
/// of ranks of the job that committed it (0 where unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    pub epoch: u64,
    pub step: u64,
    pub ranks: u32,
}

impl CommitRecord {
    pub(crate) fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..20].copy_from_slice(&self.epoch.to_le_bytes());
        out[20..28].copy_from_slice(&self.step.to_le_bytes());
        out[28..32].copy_from_slice(&self.ranks.to_le_bytes());
        let sum = XxHash3_64::oneshot(&out[..BODY]);
        out[BODY..].copy_from_slice(&sum.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::CommitRecordInvalid {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if bytes.len() != LEN {
            return Err(invalid(&format!("{} bytes instead of {LEN}", bytes.len())));
        }
        if bytes[..8] != MAGIC {
            return Err(invalid("bad magic bytes"));
        }
        let word = |r: std::ops::Range<usize>| u64::from_le_bytes(bytes[r].try_into().unwrap());
        if XxHash3_64::oneshot(&bytes[..BODY]) != word(BODY..LEN) {
            return Err(invalid("checksum mismatch"));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if version != VERSION {
            return Err(invalid(&format!("unsupported version {version}")));
        }
        Ok(Self {
            epoch: word(12..20),
            step: word(20..28),
            ranks: u32::from_le_bytes(bytes[28..32].try_into().unwrap()),
        })
    }
}

/// Reads the record at `path`; `None` if there is none.
pub fn read_record(path: &Path) -> Result<Option<CommitRecord>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => CommitRecord::decode(&bytes, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read commit record", path, e)),
    }
}

/// Atomically replaces the record at `path`; with `durable`, it survives a
/// power loss once this returns.
pub fn write_record(path: &Path, record: CommitRecord, durable: bool) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| StoreError::io("create commit record", &tmp, e))?;
    f.write_all(&record.encode())
        .map_err(|e| StoreError::io("write commit record", &tmp, e))?;
    if durable {
        f.sync_all()
            .map_err(|e| StoreError::io("sync commit record", &tmp, e))?;
    }
    drop(f);
    fs::rename(&tmp, path).map_err(|e| StoreError::io("publish commit record", path, e))?;
    if durable {
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io("sync directory", dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("committed");
        assert_eq!(read_record(&path).unwrap(), None);
        let rec = CommitRecord {
            epoch: 7,
            step: 700,
            ranks: 4,
        };
        write_record(&path, rec, true).unwrap();
        assert_eq!(read_record(&path).unwrap(), Some(rec));
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 1;
            fs::write(&path, &bad).unwrap();
            assert!(read_record(&path).is_err(), "flip at {i}");
        }
        fs::write(&path, &good[..10]).unwrap();
        let err = read_record(&path).unwrap_err().to_string();
        assert!(
            err.contains("committed") && err.contains("10 bytes"),
            "{err}"
        );
    }
}
