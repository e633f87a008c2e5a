//! The state an application registers: typed regions it computes in, buffers
//! it already owns, and small serde values (scalars, RNG state).
//!
//! Region memory is shared between the application's [`Region`] handle and
//! the runtime, which reads it inside [`Runtime::step`](crate::Runtime::step)
//! to checkpoint it. The application reaches that memory only inside a
//! closure ([`Region::with`], [`Region::with_mut`]), so no borrow of it can
//! outlive the closure and still be in use when `step` runs; a closure that
//! calls `step` itself is caught at run time by the slot's borrow state.

use crate::PmError;
use bytemuck::Pod;
use pm_core::RegionBuf;
use serde::Serialize;
use std::cell::{Ref, RefCell, RefMut};
use std::marker::PhantomData;
use std::rc::Rc;

/// Memory shared between a [`Region`] and the runtime. The `RefCell` is the
/// borrow state: `with_mut` holds it mutably for the length of its closure,
/// and the runtime only reads a slot it can borrow (`try_borrow`), so a
/// checkpoint never aliases a live `&mut [T]`.
pub(crate) type Slot = Rc<RefCell<RegionBuf>>;

/// A page-aligned array of `T` whose content is checkpointed and restored.
///
/// Its memory is reached through closures, so that no borrow of it can still
/// be in use while [`Runtime::step`](crate::Runtime::step) reads it for a
/// checkpoint:
///
/// ```
/// # fn main() -> Result<(), pm::PmError> {
/// # let universe = mpi::initialize().unwrap();
/// # let mut rt = pm::Runtime::init(&universe.world())?;
/// let mut grid: pm::Region<f64> = rt.region("grid", 1024)?;
/// if rt.restored_step().is_none() {
///     grid.copy_from_slice(&vec![1.0; grid.len()]);
/// }
/// for _ in rt.restored_step().unwrap_or(0)..10 {
///     // One closure around the step's whole compute.
///     grid.with_mut(|g| {
///         for i in 1..g.len() {
///             g[i] = 0.5 * (g[i] + g[i - 1]);
///         }
///     });
///     if rt.step()? == pm::Action::Exit {
///         return rt.finalize(); // checkpointed and asked to stop
///     }
/// }
/// let total: f64 = grid.with(|g| g.iter().sum());
/// assert_eq!(total, 1024.0);
/// rt.finalize()
/// # }
/// ```
///
/// A borrow of the memory cannot be kept across `step()`: `Region` does not
/// dereference to a slice, and the slice a closure gets cannot leave it.
///
/// ```compile_fail
/// # fn f(rt: &mut pm::Runtime, mut grid: pm::Region<f64>) -> Result<(), pm::PmError> {
/// let g = &mut *grid; // no Deref: a Region is not a slice
/// rt.step()?;
/// g[0] = 1.0;
/// # Ok(())
/// # }
/// ```
///
/// ```compile_fail
/// # fn f(rt: &mut pm::Runtime, mut grid: pm::Region<f64>) -> Result<(), pm::PmError> {
/// let g = grid.with_mut(|g| g); // the slice cannot escape the closure
/// rt.step()?;
/// g[0] = 1.0;
/// # Ok(())
/// # }
/// ```
///
/// A closure that calls `step()` inside [`with_mut`](Region::with_mut)
/// compiles, but `step()` then returns an error naming the region and takes
/// no checkpoint. Inside [`with`](Region::with) it may: both only read.
pub struct Region<T: Pod> {
    slot: Slot,
    _t: PhantomData<T>,
}

impl<T: Pod> Region<T> {
    pub(crate) fn new(slot: Slot) -> Self {
        Self {
            slot,
            _t: PhantomData,
        }
    }

    /// Calls `f` with the region's elements to read.
    pub fn with<R>(&self, f: impl FnOnce(&[T]) -> R) -> R {
        let bytes = self.slot.borrow();
        // An empty buffer's dangling pointer need not be aligned for `T`.
        f(if bytes.is_empty() {
            &[]
        } else {
            bytemuck::cast_slice(&bytes)
        })
    }

    /// Calls `f` with the region's elements to change. While `f` runs,
    /// [`Runtime::step`](crate::Runtime::step) refuses to run (the borrow
    /// ends when `f` returns or panics).
    pub fn with_mut<R>(&mut self, f: impl FnOnce(&mut [T]) -> R) -> R {
        let mut bytes = self.slot.borrow_mut();
        f(if bytes.is_empty() {
            &mut []
        } else {
            bytemuck::cast_slice_mut(&mut bytes)
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.slot.borrow().len() / std::mem::size_of::<T>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Overwrites every element with `src`, which must have [`len`](Self::len)
    /// elements (it panics otherwise, like `<[T]>::copy_from_slice`).
    pub fn copy_from_slice(&mut self, src: &[T]) {
        self.with_mut(|g| g.copy_from_slice(src));
    }

    /// A copy of the elements.
    pub fn to_vec(&self) -> Vec<T> {
        self.with(<[T]>::to_vec)
    }
}

/// A small serde value kept in every checkpoint (encoded with postcard).
///
/// A [`borrow_mut`](Value::borrow_mut) still held when
/// [`Runtime::step`](crate::Runtime::step) is called makes `step()` return
/// an error naming the value.
pub struct Value<T> {
    cell: Rc<RefCell<T>>,
}

impl<T> Value<T> {
    pub(crate) fn new(cell: Rc<RefCell<T>>) -> Self {
        Self { cell }
    }

    pub fn borrow(&self) -> Ref<'_, T> {
        self.cell.borrow()
    }

    pub fn borrow_mut(&self) -> RefMut<'_, T> {
        self.cell.borrow_mut()
    }

    pub fn set(&self, value: T) {
        *self.cell.borrow_mut() = value;
    }
}

impl<T: Clone> Value<T> {
    pub fn get(&self) -> T {
        self.cell.borrow().clone()
    }
}

/// A registered serde value, as the runtime sees it.
pub(crate) trait Encode {
    /// The value encoded with postcard; `None` while the application
    /// borrows it mutably.
    fn encode(&self) -> Option<Result<Vec<u8>, postcard::Error>>;

    /// Whether the application holds a `borrow_mut()` of it.
    fn borrowed_mut(&self) -> bool;
}

impl<T: Serialize> Encode for RefCell<T> {
    fn encode(&self) -> Option<Result<Vec<u8>, postcard::Error>> {
        let value = self.try_borrow().ok()?;
        Some(postcard::to_stdvec(&*value))
    }

    fn borrowed_mut(&self) -> bool {
        self.try_borrow().is_err()
    }
}

/// Where a registered region's bytes come from at checkpoint time.
pub(crate) enum Source {
    Owned(Slot),
    /// Memory owned by the application (C ABI, `register_raw`).
    Raw {
        ptr: *const u8,
        len: usize,
    },
    /// A serde value, encoded when the checkpoint is taken.
    Value(Rc<dyn Encode>),
}

pub(crate) struct Entry {
    pub name: String,
    pub source: Source,
}

impl Entry {
    /// The name the application gave a value (entries are `value.<name>`).
    pub fn value_name(&self) -> &str {
        self.name.trim_start_matches("value.")
    }

    /// An error if the application still borrows this entry mutably, so that
    /// `step()` may not read it: a region inside `with_mut`, a value behind
    /// a live `borrow_mut()`. Raw buffers are the caller's promise.
    pub fn check_unborrowed(&self) -> Result<(), PmError> {
        match &self.source {
            Source::Owned(slot) if slot.try_borrow().is_err() => {
                Err(PmError::RegionBorrowed(self.name.clone()))
            }
            Source::Value(value) if value.borrowed_mut() => {
                Err(PmError::ValueBorrowed(self.value_name().to_owned()))
            }
            _ => Ok(()),
        }
    }

    /// Bytes this entry puts into a snapshot (a value: its encoding now;
    /// 0 while it is borrowed mutably or does not encode).
    pub fn bytes(&self) -> u64 {
        let len = match &self.source {
            Source::Owned(slot) => slot.try_borrow().map_or(0, |b| b.len()),
            Source::Raw { len, .. } => *len,
            Source::Value(value) => value.encode().and_then(Result::ok).map_or(0, |v| v.len()),
        };
        len as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(len: usize) -> (Region<f64>, Entry) {
        let slot: Slot = Rc::new(RefCell::new(RegionBuf::new(len * 8).unwrap()));
        let entry = Entry {
            name: "u".into(),
            source: Source::Owned(slot.clone()),
        };
        (Region::new(slot), entry)
    }

    #[test]
    fn with_mut_writes_what_with_reads() {
        let (mut r, _) = region(5);
        assert_eq!((r.len(), r.is_empty()), (5, false));
        r.with_mut(|g| g[2] = 2.5);
        assert_eq!(r.with(|g| g[2]), 2.5);
        r.copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(r.to_vec(), [1.0, 2.0, 3.0, 4.0, 5.0]);
        let mut empty = region(0).0;
        assert!(empty.is_empty());
        assert_eq!(empty.with_mut(|g| g.len()), 0);
        assert_eq!(empty.to_vec(), []);
    }

    #[test]
    fn a_region_inside_with_mut_cannot_be_checkpointed() {
        let (mut r, e) = region(4);
        let inside = r.with_mut(|_| e.check_unborrowed());
        let err = inside.unwrap_err();
        assert!(matches!(err, PmError::RegionBorrowed(ref n) if n == "u"));
        assert_eq!(
            err.to_string(),
            "region \"u\" is borrowed while step() runs: finish with_mut before calling step"
        );
        assert_eq!(err.code(), crate::code::STATE);
        // Reading is no conflict, and the borrow ends with the closure.
        r.with(|_| e.check_unborrowed()).unwrap();
        e.check_unborrowed().unwrap();
    }

    #[test]
    fn a_panic_inside_with_mut_ends_the_borrow() {
        let (mut r, e) = region(4);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.with_mut(|g| {
                g[0] = 1.0;
                panic!("in the closure");
            })
        }));
        assert!(caught.is_err());
        e.check_unborrowed().unwrap();
        assert_eq!(r.with(|g| g[0]), 1.0);
    }

    #[test]
    fn a_value_borrowed_mutably_is_an_error_not_a_panic() {
        let cell = Rc::new(RefCell::new(7u64));
        let e = Entry {
            name: "value.seed".into(),
            source: Source::Value(cell.clone()),
        };
        let v = Value::new(cell.clone());
        {
            let _held = v.borrow_mut();
            let err = e.check_unborrowed().unwrap_err();
            assert!(
                matches!(err, PmError::ValueBorrowed(ref n) if n == "seed"),
                "{err}"
            );
            assert!(cell.encode().is_none());
        }
        let _shared = v.borrow();
        e.check_unborrowed().unwrap();
        assert_eq!(
            cell.encode().unwrap().unwrap(),
            postcard::to_stdvec(&7u64).unwrap()
        );
    }
}
