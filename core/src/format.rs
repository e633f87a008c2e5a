//! The snapshot manifest: what a snapshot holds and where its bytes lie.
//!
//! A manifest file is a fixed 16-byte header (magic, format version, body
//! length), a postcard-encoded [`Manifest`] body and an xxh3-64 checksum of
//! everything before it. The header never changes across format versions, so
//! a reader can always tell "damaged" from "written by a newer pmrun".
//! `docs/format.md` is the normative description.

use crate::StoreError;
use crate::names::validate_region_name;
use crate::region::PAGE_SIZE;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;
use twox_hash::{XxHash3_64, XxHash3_128};

fn xxh3_64(bytes: &[u8]) -> u64 {
    XxHash3_64::oneshot(bytes)
}

/// First bytes of every manifest file.
pub const MAGIC: [u8; 8] = *b"PMSNAP\r\n";
/// The manifest format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const TRAILER_LEN: usize = 8;

/// Content hash of one chunk.
pub fn chunk_hash(bytes: &[u8]) -> u128 {
    XxHash3_128::oneshot(bytes)
}

/// [`chunk_hash`] computed piece by piece, so that a reader can hash each
/// piece while it is still in cache.
pub struct ChunkHasher(XxHash3_128);

impl ChunkHasher {
    pub fn new() -> Self {
        Self(XxHash3_128::new())
    }

    pub fn update(&mut self, piece: &[u8]) {
        self.0.write(piece);
    }

    pub fn finish(&self) -> u128 {
        self.0.finish_128()
    }
}

impl Default for ChunkHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Where one chunk's bytes are stored and what they hash to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// xxh3-128 of the chunk's bytes.
    pub hash: u128,
    /// Epoch whose data file holds the bytes (this snapshot's own epoch for a
    /// chunk that changed, an earlier one for a chunk that was reused).
    pub file_epoch: u64,
    /// Page-aligned byte offset of the chunk in that data file.
    pub offset: u64,
}

/// One region of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionManifest {
    pub name: String,
    /// Length in bytes.
    pub len: u64,
    /// Chunk size in bytes (a multiple of the page size); the last chunk may be shorter.
    pub chunk_size: u64,
    pub chunks: Vec<ChunkRef>,
}

impl RegionManifest {
    /// Byte length of chunk `i`.
    pub fn chunk_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.chunk_size;
        self.chunk_size.min(self.len - start)
    }
}

/// Everything a reader needs to restore one rank at one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub job: String,
    pub rank: u32,
    pub epoch: u64,
    /// The application's time step at which the snapshot was taken.
    pub step: u64,
    /// Wall-clock creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    pub regions: Vec<RegionManifest>,
}

/// Header and checksum around a postcard body: a manifest file's bytes.
pub(crate) fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

impl Manifest {
    /// Total bytes of region data.
    pub fn state_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }

    pub fn region(&self, name: &str) -> Option<&RegionManifest> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Serialises the manifest into its file form.
    pub fn encode(&self) -> Vec<u8> {
        framed(&postcard::to_stdvec(self).expect("manifest encoding cannot fail"))
    }

    /// Parses and checks a manifest file's bytes; `path` is only used in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, StoreError> {
        let truncated = |expected: usize| StoreError::ManifestTruncated {
            path: path.to_owned(),
            len: bytes.len() as u64,
            expected: expected as u64,
        };
        if bytes.len() < HEADER_LEN {
            return Err(truncated(HEADER_LEN + TRAILER_LEN));
        }
        if bytes[..8] != MAGIC {
            return Err(StoreError::BadMagic {
                path: path.to_owned(),
            });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(StoreError::UnsupportedVersion {
                path: path.to_owned(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let body_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let total = HEADER_LEN + body_len + TRAILER_LEN;
        if bytes.len() < total {
            return Err(truncated(total));
        }
        if bytes.len() > total {
            return Err(StoreError::ManifestInvalid {
                path: path.to_owned(),
                reason: format!(
                    "{} unexpected bytes after the checksum",
                    bytes.len() - total
                ),
            });
        }
        let stored = u64::from_le_bytes(bytes[total - TRAILER_LEN..].try_into().unwrap());
        let computed = xxh3_64(&bytes[..total - TRAILER_LEN]);
        if stored != computed {
            return Err(StoreError::ManifestChecksum {
                path: path.to_owned(),
                stored,
                computed,
            });
        }
        let manifest: Manifest = postcard::from_bytes(&bytes[HEADER_LEN..HEADER_LEN + body_len])
            .map_err(|e| StoreError::ManifestInvalid {
                path: path.to_owned(),
                reason: format!("body does not decode: {e}"),
            })?;
        manifest
            .check_consistency()
            .map_err(|reason| StoreError::ManifestInvalid {
                path: path.to_owned(),
                reason,
            })?;
        Ok(manifest)
    }

    /// Structural invariants a well-formed manifest holds.
    pub(crate) fn check_consistency(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        for r in &self.regions {
            validate_region_name(&r.name).map_err(|e| e.to_string())?;
            if !names.insert(r.name.as_str()) {
                return Err(format!("region {:?} appears twice", r.name));
            }
            if r.chunk_size == 0 || r.chunk_size % PAGE_SIZE as u64 != 0 {
                return Err(format!(
                    "region {:?} has chunk size {}",
                    r.name, r.chunk_size
                ));
            }
            if r.chunks.len() as u64 != r.len.div_ceil(r.chunk_size) {
                return Err(format!(
                    "region {:?} of {} bytes lists {} chunks of {} bytes",
                    r.name,
                    r.len,
                    r.chunks.len(),
                    r.chunk_size
                ));
            }
            for (i, c) in r.chunks.iter().enumerate() {
                if c.offset % PAGE_SIZE as u64 != 0 || c.file_epoch > self.epoch {
                    return Err(format!(
                        "region {:?} chunk {i} points to epoch {} offset {}",
                        r.name, c.file_epoch, c.offset
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            job: "j".into(),
            rank: 3,
            epoch: 7,
            step: 70,
            created_unix_ms: 1,
            regions: vec![RegionManifest {
                name: "grid".into(),
                len: 5000,
                chunk_size: 4096,
                chunks: vec![
                    ChunkRef {
                        hash: 1,
                        file_epoch: 7,
                        offset: 0,
                    },
                    ChunkRef {
                        hash: 2,
                        file_epoch: 5,
                        offset: 4096,
                    },
                ],
            }],
        }
    }

    #[test]
    fn hashing_piece_by_piece_equals_hashing_at_once() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 1000) as u8).collect();
        for piece in [1, 63, 64, 4096, 65_536, 300_000] {
            let mut h = ChunkHasher::new();
            bytes.chunks(piece).for_each(|p| h.update(p));
            assert_eq!(h.finish(), chunk_hash(&bytes), "pieces of {piece}");
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode(), Path::new("m")).unwrap(), m);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Manifest::decode(&b, Path::new("m")).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            let err = Manifest::decode(&bytes[..n], Path::new("m")).unwrap_err();
            assert!(
                matches!(err, StoreError::ManifestTruncated { .. }),
                "len {n}: {err}"
            );
        }
    }

    #[test]
    fn inconsistent_chunk_count_is_rejected() {
        let mut m = sample();
        m.regions[0].chunks.pop();
        let err = Manifest::decode(&m.encode(), Path::new("m")).unwrap_err();
        assert!(matches!(err, StoreError::ManifestInvalid { .. }), "{err}");
    }
}
