//! The history file: `magic, format version, payload length, xxh3 of the
//! payload, postcard payload`. Saved by writing a temporary file in the same
//! directory, `fsync`, `rename` over the old file, `fsync` of the directory:
//! a crash at any moment leaves either the old or the new file, never a torn
//! one. The checksum catches damage after the fact. A save also deletes the
//! temporary files of killed writers.
//!
//! Concurrent writers do not corrupt the file (each has its own temporary
//! name) but the last rename wins: one run's record may be lost, which only
//! costs the next run a less informed first placement.

use super::History;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PMHIST\0\0";
/// Bumped on an incompatible change of the payload.
pub const FORMAT_VERSION: u32 = 2;
const HEADER: usize = 8 + 4 + 8 + 8;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not a pmrun history file")]
    NotHistory(PathBuf),
    #[error(
        "{path}: history format {found}, this pmrun reads {FORMAT_VERSION}; delete the file to start afresh"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "{0}: the history file is damaged (length or checksum mismatch); delete it to start afresh"
    )]
    Damaged(PathBuf),
    #[error("history does not encode: {0}")]
    Encode(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> HistoryError + 'a {
    move |source| HistoryError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Reads the history; a missing file is an empty history.
pub fn load(path: &Path) -> Result<History, HistoryError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(History::new()),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    decode(&bytes, path)
}

/// Parses and checks a history file's bytes; `path` is only used in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<History, HistoryError> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(HistoryError::NotHistory(path.to_owned()));
    }
    let word = |at: usize, n: usize| {
        bytes[at..at + n]
            .iter()
            .rev()
            .fold(0u64, |acc, &b| acc << 8 | u64::from(b))
    };
    let version = word(8, 4) as u32;
    if version != FORMAT_VERSION {
        return Err(HistoryError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    let (len, sum) = (word(12, 8), word(20, 8));
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len || twox_hash::XxHash3_64::oneshot(payload) != sum {
        return Err(HistoryError::Damaged(path.to_owned()));
    }
    postcard::from_bytes(payload).map_err(|_| HistoryError::Damaged(path.to_owned()))
}

/// The bytes of a history file holding `history`.
pub fn encode(history: &History) -> Result<Vec<u8>, HistoryError> {
    let payload =
        postcard::to_allocvec(history).map_err(|e| HistoryError::Encode(e.to_string()))?;
    Ok(frame(&payload))
}

/// Header and checksum around a postcard payload.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&twox_hash::XxHash3_64::oneshot(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Replaces the history file atomically and durably.
pub fn save(path: &Path, history: &History) -> Result<(), HistoryError> {
    let bytes = encode(history)?;

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| HistoryError::NotHistory(path.to_owned()))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .map_err(io_err("write", &tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("rename into", path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))?;
    remove_stale_temporaries(dir, &name.to_string_lossy());
    Ok(())
}

/// Best effort: deletes temporary files left by writers that were killed
/// (their process id no longer exists).
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp.");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AppSignature, HistoryLimits, RunRecord};
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history");
        assert_eq!(load(&path).unwrap(), History::new());
        let mut h = History::new();
        h.record(
            AppSignature(3),
            RunRecord {
                weights: vec![1.5, 2.5],
                state_bytes: vec![10, 20],
                steps: 100,
            },
            &HistoryLimits::default(),
        );
        save(&path, &h).unwrap();
        assert_eq!(load(&path).unwrap(), h);
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }

    #[test]
    fn damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history");
        let mut h = History::new();
        h.record(
            AppSignature(3),
            RunRecord {
                weights: vec![1.0; 64],
                state_bytes: vec![1; 64],
                steps: 100,
            },
            &HistoryLimits::default(),
        );
        save(&path, &h).unwrap();
        let good = fs::read(&path).unwrap();
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert!(matches!(load(&path), Err(HistoryError::Damaged(_))));
        fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(matches!(load(&path), Err(HistoryError::Damaged(_))));
        let mut other = good.clone();
        other[8] = 9;
        fs::write(&path, &other).unwrap();
        assert!(matches!(
            load(&path),
            Err(HistoryError::Version { found: 9, .. })
        ));
        fs::write(&path, b"hello").unwrap();
        assert!(matches!(load(&path), Err(HistoryError::NotHistory(_))));
    }
}
