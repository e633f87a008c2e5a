//! Copies that bypass the cache for large destinations.
//!
//! A checkpoint copies each changed chunk once into the store and does not
//! read it back soon; ordinary stores would first pull every destination
//! cache line in (read-for-ownership), doubling the memory traffic of the
//! copy. Non-temporal stores write around the cache, as a large `memcpy`
//! does on its own.

/// Copies `src` into `dst` (same length) with non-temporal stores where the
/// CPU has them; the data is globally visible when this returns.
pub fn copy_nontemporal(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_nontemporal needs equal lengths");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        // Stream from the first 16-byte aligned destination byte on.
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let body = (dst.len() - head) / 64 * 64;
        let (d, s) = (dst[head..].as_mut_ptr(), src[head..].as_ptr());
        // SAFETY: SSE2 is part of x86_64; `d` is 16-byte aligned; every
        // access is within the first `body` bytes of both slices.
        unsafe {
            for off in (0..body).step_by(64) {
                for lane in (0..64).step_by(16) {
                    let v = _mm_loadu_si128(s.add(off + lane).cast::<__m128i>());
                    _mm_stream_si128(d.add(off + lane).cast::<__m128i>(), v);
                }
            }
            _mm_sfence();
        }
        dst[head + body..].copy_from_slice(&src[head + body..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Bytes hashed and then copied at a time: small enough to still be in
/// L1/L2 for the copy.
const HASHED_PIECE: usize = 64 << 10;

/// Copies `src` into `dst` as [`copy_nontemporal`] does and returns
/// [`chunk_hash`](crate::format::chunk_hash) of `src`, hashing each piece
/// just before copying it, so that `src` is read from memory once.
pub fn copy_hashed(dst: &mut [u8], src: &[u8]) -> u128 {
    assert_eq!(dst.len(), src.len(), "copy_hashed needs equal lengths");
    let mut hasher = crate::format::ChunkHasher::new();
    for (d, s) in dst.chunks_mut(HASHED_PIECE).zip(src.chunks(HASHED_PIECE)) {
        hasher.update(s);
        copy_nontemporal(d, s);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::{copy_hashed, copy_nontemporal};

    #[test]
    fn copy_hashed_copies_and_hashes_as_chunk_hash_does() {
        let src: Vec<u8> = (0..300_000u32).map(|i| (i * 131 + 7) as u8).collect();
        for len in [
            0,
            1,
            4096,
            super::HASHED_PIECE,
            super::HASHED_PIECE + 1,
            src.len(),
        ] {
            let mut dst = vec![0u8; len];
            let hash = copy_hashed(&mut dst, &src[..len]);
            assert_eq!(dst, &src[..len]);
            assert_eq!(hash, crate::format::chunk_hash(&src[..len]), "len {len}");
        }
    }

    #[test]
    fn copies_every_length_and_alignment() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 31 + 7) as u8).collect();
        for start in 0..20 {
            for len in [0, 1, 15, 16, 63, 64, 65, 200, 4096, 4999 - start] {
                let mut dst = vec![0u8; 5000];
                copy_nontemporal(&mut dst[start..start + len], &src[start..start + len]);
                assert_eq!(
                    &dst[start..start + len],
                    &src[start..start + len],
                    "start {start} len {len}"
                );
                assert!(
                    dst[..start].iter().all(|&b| b == 0)
                        && dst[start + len..].iter().all(|&b| b == 0)
                );
            }
        }
    }
}
