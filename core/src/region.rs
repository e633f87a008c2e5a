//! Page-aligned, pre-faulted buffers that applications compute in.
//!
//! Regions are anonymous memory mappings: page-aligned (so a chunk of a region
//! can be handed to a one-sided transfer without copying) and populated when
//! created, because first-touch page faults are costly on the machines pmrun
//! runs on and would otherwise land inside the first time step or checkpoint.

use memmap2::{MmapMut, MmapOptions};
use std::io;
use std::ops::{Deref, DerefMut};

/// The page size every region and chunk is aligned to.
pub const PAGE_SIZE: usize = 4096;

/// Rounds `n` up to the next multiple of [`PAGE_SIZE`].
pub const fn page_align(n: u64) -> u64 {
    n.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64
}

/// A page-aligned, zero-initialised, pre-faulted byte buffer.
pub struct RegionBuf {
    map: Option<MmapMut>,
}

impl RegionBuf {
    /// Maps `len` zeroed bytes and faults every page in.
    pub fn new(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self { map: None });
        }
        let map = MmapOptions::new().len(len).populate().map_anon()?;
        Ok(Self { map: Some(map) })
    }
}

impl Deref for RegionBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl DerefMut for RegionBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.map.as_deref_mut().unwrap_or(&mut [])
    }
}

/// A named, read-only view of a region, as handed to [`crate::Store::write`].
#[derive(Clone, Copy, Debug)]
pub struct RegionRef<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
}

impl<'a> RegionRef<'a> {
    pub fn new(name: &'a str, bytes: &'a [u8]) -> Self {
        Self { name, bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_and_zeroed() {
        let mut b = RegionBuf::new(3 * PAGE_SIZE + 5).unwrap();
        assert_eq!(b.as_ptr() as usize % PAGE_SIZE, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[7] = 9;
        assert_eq!(b[7], 9);
        assert!(RegionBuf::new(0).unwrap().is_empty());
    }

    #[test]
    fn page_align_rounds_up() {
        assert_eq!(page_align(0), 0);
        assert_eq!(page_align(1), 4096);
        assert_eq!(page_align(4096), 4096);
        assert_eq!(page_align(4097), 8192);
    }
}
