//! The pool of pre-faulted data files.
//!
//! Writing into fresh tmpfs pages costs 15-35 × a memcpy on these machines
//! (page allocation and one fault per 4 KiB page), and even an allocated
//! file that this process has not mapped yet costs about 3 × (one fault per
//! page to map it). So the data files a rank will write — the K kept epochs
//! and the spare, K + 1 files of the snapshot's layout — are made ready by a
//! background thread as soon as the layout is known: each is created (or,
//! for a spare already in the store, opened), mapped, offered huge pages
//! (`MADV_HUGEPAGE`, which takes effect where the file system allows them:
//! tmpfs mounted with `huge=advise`; `huge=always` needs no advice), and
//! faulted in writable (`MADV_POPULATE_WRITE`: every page allocated and
//! mapped, no byte changed). The store adopts the mappings at its next
//! write, so writing into them costs a memcpy.
//!
//! New files are made under `prefault-<n>.tmp`, a name no reader looks at,
//! and take a data file's name only when the writer renames them, so a
//! crash mid-way leaves nothing a snapshot refers to.

use super::{CachedMap, Store};
use crate::StoreError;
use memmap2::{MmapMut, MmapOptions};
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread::JoinHandle;

/// Pages populated per call, so that a cancel is seen within a few milliseconds.
const POPULATE_STEP: usize = 64 << 20;

/// A data file made ready in the background.
pub(super) struct Prepared {
    /// Where the file is: a `prefault-<n>.tmp` of its own, or the spare it was made from.
    pub path: PathBuf,
    /// True for a new file under a temporary name, false for an existing spare.
    pub fresh: bool,
    pub ino: u64,
    pub map: CachedMap,
}

/// The background thread and what it has delivered so far.
pub(super) struct Prefault {
    rx: Receiver<Prepared>,
    handle: Option<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    /// New files planned but not delivered yet.
    pending: Arc<AtomicUsize>,
}

/// What the thread is asked to make ready.
pub(super) struct Plan {
    /// Spares already in the store, to map and populate.
    pub spares: Vec<PathBuf>,
    /// Paths of the new files to create.
    pub fresh: Vec<PathBuf>,
    pub len: u64,
}

impl Prefault {
    pub fn start(plan: Plan) -> Self {
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicUsize::new(plan.fresh.len()));
        let handle = {
            let (cancel, pending) = (cancel.clone(), pending.clone());
            std::thread::Builder::new()
                .name("pm-prefault".into())
                .spawn(move || {
                    let jobs = plan
                        .spares
                        .into_iter()
                        .map(|p| (p, false))
                        .chain(plan.fresh.into_iter().map(|p| (p, true)));
                    for (path, fresh) in jobs {
                        if cancel.load(Ordering::Relaxed) {
                            break;
                        }
                        let prepared = prepare(&path, fresh, plan.len, &cancel);
                        match prepared {
                            Ok(Some(p)) => {
                                if tx.send(p).is_err() {
                                    break;
                                }
                            }
                            Ok(None) => {}
                            Err(error) => {
                                if fresh {
                                    let _ = std::fs::remove_file(&path);
                                }
                                tracing::warn!(%error, "cannot pre-fault a data file; the next checkpoints fault their pages in themselves");
                                pending.store(0, Ordering::Relaxed);
                                break;
                            }
                        }
                        if fresh {
                            // Delivered (or given up): no longer planned.
                            let _ = pending
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                    n.checked_sub(1)
                                });
                        }
                    }
                    pending.store(0, Ordering::Relaxed);
                })
                .expect("a thread can be spawned")
        };
        Self {
            rx,
            handle: Some(handle),
            cancel,
            pending,
        }
    }

    /// Files delivered since the last call, without waiting.
    pub fn take_delivered(&mut self) -> Vec<Prepared> {
        let mut out = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(p) => out.push(p),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// Waits for the next delivery; `None` once the thread has ended.
    pub fn wait_one(&mut self) -> Option<Prepared> {
        self.rx.recv().ok()
    }

    /// Waits until the thread has made everything ready; returns what it delivered.
    pub fn finish(&mut self) -> Vec<Prepared> {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.take_delivered()
    }

    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// New files planned but not delivered yet (they count towards the pool).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Stops the thread and waits for it; returns what it had delivered.
    pub fn cancel(&mut self) -> Vec<Prepared> {
        self.cancel.store(true, Ordering::Relaxed);
        self.finish()
    }
}

impl Drop for Prefault {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Store {
    /// Starts making ready, in the background, the data files this rank's
    /// checkpoints of a `len`-byte layout (see [`super::data_file_len`])
    /// will write: the pool of `keep` + 1 files, less those the store holds
    /// already; its spares are mapped and faulted in too. Returns at once;
    /// a checkpoint taken before the work ends is as correct, only slower.
    /// Does nothing if pre-faulting already ran for this layout.
    pub fn prefault(&mut self, len: u64) -> Result<(), StoreError> {
        if len == 0 || self.prefault_len == Some(len) {
            return Ok(());
        }
        self.abandon_background_prefault();
        let listing = self.list()?;
        for leftover in &listing.prefault_leftovers {
            let _ = std::fs::remove_file(leftover);
        }
        let held = listing.data.len() + listing.spares.len();
        let fresh = (0..(self.opts.keep + 1).saturating_sub(held))
            .map(|n| self.dir.join(format!("prefault-{n}.tmp")))
            .collect();
        self.prefault_len = Some(len);
        self.prefault = Some(Prefault::start(Plan {
            spares: listing.spares,
            fresh,
            len,
        }));
        Ok(())
    }

    /// After a checkpoint (its commit included): starts pre-faulting one
    /// new file if the last pruning found the pool empty, pre-faulting was
    /// asked for, and its thread is done.
    pub fn top_up_pool(&mut self) {
        if std::mem::take(&mut self.top_up_wanted) {
            self.prefault_one_more();
        }
    }

    /// Starts pre-faulting one new file if pre-faulting was asked for and
    /// its thread is done (the pool has no spare left).
    fn prefault_one_more(&mut self) {
        let Some(len) = self.prefault_len else {
            return;
        };
        if self.prefault.as_ref().is_some_and(|p| !p.is_finished()) {
            return;
        }
        let delivered = self
            .prefault
            .take()
            .map(|mut p| p.finish())
            .unwrap_or_default();
        self.adopt(delivered);
        let Some(fresh) = (0..)
            .map(|n| self.dir.join(format!("prefault-{n}.tmp")))
            .find(|p| !p.exists())
        else {
            return;
        };
        self.prefault = Some(Prefault::start(Plan {
            spares: Vec::new(),
            fresh: vec![fresh],
            len,
        }));
    }

    /// Waits until the background pre-faulting (if any) has ended.
    pub fn prefault_wait(&mut self) {
        if let Some(p) = &mut self.prefault {
            let delivered = p.finish();
            self.adopt(delivered);
        }
    }

    /// Takes over what the pre-fault thread has delivered so far.
    pub(super) fn adopt_delivered(&mut self) {
        if let Some(p) = &mut self.prefault {
            let delivered = p.take_delivered();
            self.adopt(delivered);
        }
    }

    fn adopt(&mut self, delivered: Vec<Prepared>) {
        for p in delivered {
            if p.fresh {
                self.ready.push(p);
            } else if p.map.file.metadata().is_ok_and(|m| m.nlink() > 0) {
                // An existing spare: its mapping, unless the writer made its own.
                self.maps.entry(p.ino).or_insert(p.map);
            }
        }
    }

    /// Waits until the pre-fault thread delivers one more file; false when
    /// it has nothing more to deliver.
    pub(super) fn wait_for_prefault(&mut self) -> bool {
        let Some(p) = &mut self.prefault else {
            return false;
        };
        match p.wait_one() {
            Some(prepared) => {
                self.adopt(vec![prepared]);
                true
            }
            None => false,
        }
    }

    /// New files the pre-fault thread has yet to deliver.
    pub(super) fn prefault_pending(&self) -> usize {
        self.prefault.as_ref().map_or(0, Prefault::pending)
    }

    /// Files planned or made ready but not yet named as data files.
    pub(super) fn pool_in_waiting(&self) -> usize {
        self.ready.len() + self.prefault_pending()
    }

    /// A pre-faulted new file renamed to `path`, its mapping cached; false if none is ready.
    pub(super) fn take_ready(&mut self, path: &Path) -> Result<bool, StoreError> {
        let Some(p) = self.ready.pop() else {
            return Ok(false);
        };
        std::fs::rename(&p.path, path)
            .map_err(|e| StoreError::io("take a pre-faulted data file", path, e))?;
        self.maps.insert(p.ino, p.map);
        Ok(true)
    }

    /// Drops ready files beyond `keep`, removing them in the background.
    pub(super) fn trim_ready(&mut self, keep: usize) {
        while self.ready.len() > keep {
            if let Some(p) = self.ready.pop() {
                let _ = self.reaper.remove(&p.path, Some(p.map));
            }
        }
    }

    /// Stops the pre-fault thread and removes the files it made and no
    /// checkpoint took.
    pub(super) fn abandon_background_prefault(&mut self) {
        if let Some(mut p) = self.prefault.take() {
            let delivered = p.cancel();
            self.adopt(delivered);
        }
        self.trim_ready(0);
        self.prefault_len = None;
    }
}

/// Maps `path` (a new file, or an existing spare) at `len` bytes and faults
/// every page in. `None` when an existing spare vanished or changed size
/// under us (the writer took it) or the work was cancelled.
fn prepare(
    path: &Path,
    fresh: bool,
    len: u64,
    cancel: &AtomicBool,
) -> Result<Option<Prepared>, StoreError> {
    let file = if fresh {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| StoreError::io("create data file", path, e))?;
        f.set_len(len)
            .map_err(|e| StoreError::io("size data file", path, e))?;
        f
    } else {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(_) => return Ok(None),
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| StoreError::io("stat data file", path, e))?;
    if meta.len() != len {
        // A spare of another layout: the writer resizes it when it takes it.
        return Ok(None);
    }
    // SAFETY: the file is in this rank's private store directory, and
    // populating changes no byte: a concurrent writer (which may take an
    // existing spare while it is being populated) sees only its own writes.
    let map = unsafe { MmapOptions::new().len(len as usize).map_mut(&file) }
        .map_err(|e| StoreError::io("map data file", path, e))?;
    advise_huge(&map);
    if !populate_write(&map, cancel) {
        if fresh {
            let _ = std::fs::remove_file(path);
        }
        return Ok(None);
    }
    Ok(Some(Prepared {
        path: path.to_owned(),
        fresh,
        ino: meta.ino(),
        map: CachedMap { file, map },
    }))
}

/// Asks for huge pages; a no-op where the file system does not offer them.
pub(super) fn advise_huge(map: &MmapMut) {
    // SAFETY: advice on a range this mapping owns; it changes no contents.
    unsafe {
        libc::madvise(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            libc::MADV_HUGEPAGE,
        );
    }
}

/// Faults every page of `map` in writable without changing a byte. False
/// when cancelled, when the file shrank under the mapping (`EFAULT`: the
/// writer resized a spare it took), or when the kernel lacks
/// `MADV_POPULATE_WRITE` (before Linux 5.14; the writer then faults the
/// pages in itself).
fn populate_write(map: &MmapMut, cancel: &AtomicBool) -> bool {
    let base = map.as_ptr() as usize;
    let mut off = 0;
    while off < map.len() {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        let n = POPULATE_STEP.min(map.len() - off);
        // SAFETY: the range lies within this mapping; populating never
        // raises a signal (failures are returned as errors).
        let rc = unsafe {
            libc::madvise(
                (base + off) as *mut libc::c_void,
                n,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            return false;
        }
        off += n;
    }
    true
}
