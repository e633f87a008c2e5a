//! Memory that a transport may read and write on behalf of remote peers.
//!
//! A region owns its memory (a shared file mapping or a [`RegionBuf`]) and
//! exposes it only as a raw pointer and a length. Remote transfers move
//! bytes between a socket and that memory with `send`/`recv` system calls,
//! so no Rust reference to memory that a peer may write concurrently is ever
//! formed. As with RDMA, concurrent transfers to overlapping ranges leave
//! those bytes unspecified; keeping them apart is the caller's job.

use crate::region::RegionBuf;
use memmap2::{Mmap, MmapMut, MmapOptions};
use std::fs::File;
use std::io;

/// What remote peers may do with a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Peers may read it (a published snapshot's data file).
    Read,
    /// Peers may read and write it (a destination being filled).
    ReadWrite,
}

enum Backing {
    Empty,
    FileRo(#[allow(dead_code)] Mmap),
    FileRw(#[allow(dead_code)] MmapMut),
    Buf(#[allow(dead_code)] RegionBuf),
}

/// A registered (or registrable) range of memory.
pub struct Region {
    ptr: *mut u8,
    len: usize,
    access: Access,
    _backing: Backing,
}

// SAFETY: the pointer stays valid for the region's lifetime (it owns the
// mapping or buffer), and all access through it goes through system calls
// or the bounds-checked copies below; see the module docs on concurrency.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("len", &self.len)
            .field("access", &self.access)
            .finish()
    }
}

impl Region {
    /// Maps `len` bytes of `file` from `offset` (shared: writes reach the
    /// file). The pages are populated now, so transfers do not stall on
    /// first-touch faults. The file must stay at least `offset + len` long
    /// while mapped; a peer's transfer against a truncated file fails with
    /// an I/O error (the kernel copy faults), it does not crash the agent.
    pub fn map_file(file: &File, offset: u64, len: usize, access: Access) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self::empty(access));
        }
        let mut opts = MmapOptions::new();
        opts.offset(offset).len(len).populate();
        // SAFETY: see above; the store's files are private to the user, and
        // the bytes are only reached through system calls and bounds checks.
        let (ptr, backing) = match access {
            Access::Read => {
                let m = unsafe { opts.map(file)? };
                (m.as_ptr() as *mut u8, Backing::FileRo(m))
            }
            Access::ReadWrite => {
                let mut m = unsafe { opts.map_mut(file)? };
                (m.as_mut_ptr(), Backing::FileRw(m))
            }
        };
        Ok(Self {
            ptr,
            len,
            access,
            _backing: backing,
        })
    }

    /// Wraps a page-aligned buffer.
    pub fn from_buf(mut buf: RegionBuf, access: Access) -> Self {
        if buf.is_empty() {
            return Self::empty(access);
        }
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        Self {
            ptr,
            len,
            access,
            _backing: Backing::Buf(buf),
        }
    }

    /// A new zeroed, pre-faulted buffer of `len` bytes.
    pub fn buffer(len: usize, access: Access) -> io::Result<Self> {
        Ok(Self::from_buf(RegionBuf::new(len)?, access))
    }

    fn empty(access: Access) -> Self {
        Self {
            ptr: std::ptr::NonNull::dangling().as_ptr(),
            len: 0,
            access,
            _backing: Backing::Empty,
        }
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn access(&self) -> Access {
        self.access
    }

    /// The start of `offset..offset + len`, if that range lies inside. For
    /// backends: the memory behind it may be written by peers at any time,
    /// so it must only be handed to system calls or to a fabric.
    pub fn range_ptr(&self, offset: u64, len: u64) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: offset <= len, inside the mapping.
        Some(unsafe { self.ptr.add(offset as usize) })
    }

    /// Copies bytes out of the region (local use, e.g. checking what a peer
    /// wrote). Must not overlap a transfer in flight. `None` when out of bounds.
    pub fn copy_out(&self, offset: u64, dst: &mut [u8]) -> Option<()> {
        let src = self.range_ptr(offset, dst.len() as u64)?;
        // SAFETY: in bounds (checked), and `dst` is a distinct allocation.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Some(())
    }

    /// Copies bytes into the region (local use, e.g. filling a buffer before
    /// a write). Must not overlap a transfer in flight. `None` when out of
    /// bounds or the region is read-only.
    pub fn copy_in(&self, offset: u64, src: &[u8]) -> Option<()> {
        if self.access != Access::ReadWrite {
            return None;
        }
        let dst = self.range_ptr(offset, src.len() as u64)?;
        // SAFETY: in bounds, writable mapping or buffer, distinct from `src`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Some(())
    }
}
