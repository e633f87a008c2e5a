//! The deterministic state written by the `store_writer` helper: any epoch's
//! exact content can be computed on its own, so a test can tell a complete
//! snapshot from a torn one after killing the writer.

/// Chunk size the writer uses: small, so each write has many chunks.
pub const CHUNK: usize = 16 << 10;
/// Epochs the writer keeps.
pub const KEEP: usize = 2;
/// Job id the writer uses.
pub const JOB: &str = "crash";

/// Region names and lengths (deliberately not multiples of the chunk size).
pub const REGIONS: [(&str, usize); 3] = [("grid", 300_000), ("halo", 70_001), ("meta", 100)];

/// The regions' content at `epoch`. Chunk `i` of region `r` changes every
/// `1 + (i + r) % 4` epochs, so writes mix changed and reused chunks.
pub fn state(epoch: u64) -> Vec<(&'static str, Vec<u8>)> {
    REGIONS
        .iter()
        .enumerate()
        .map(|(r, &(name, len))| {
            let mut bytes = Vec::with_capacity(len);
            for i in 0..len.div_ceil(CHUNK) {
                let period = 1 + ((i + r) % 4) as u64;
                let version = epoch - epoch % period;
                let seed = (r as u64) << 48 ^ (i as u64) << 32 ^ version;
                fill(&mut bytes, seed, CHUNK.min(len - i * CHUNK));
            }
            (name, bytes)
        })
        .collect()
}

fn fill(out: &mut Vec<u8>, seed: u64, n: usize) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_differ_in_some_chunks_and_share_others() {
        let (a, b) = (state(4), state(5));
        let chunks = |s: &[(&str, Vec<u8>)]| -> Vec<Vec<u8>> {
            s.iter()
                .flat_map(|(_, v)| v.chunks(CHUNK).map(<[u8]>::to_vec).collect::<Vec<_>>())
                .collect()
        };
        let (ca, cb) = (chunks(&a), chunks(&b));
        let same = ca.iter().zip(&cb).filter(|(x, y)| x == y).count();
        assert!(same > 0 && same < ca.len(), "{same} of {}", ca.len());
        assert_eq!(state(4), a, "deterministic");
    }
}
