//! The state an application registers: typed regions it computes in, buffers
//! it already owns, and small serde values (scalars, RNG state).

use bytemuck::Pod;
use pm_core::RegionBuf;
use std::cell::{Ref, RefCell, RefMut, UnsafeCell};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;

/// Memory shared between a [`Region`] and the runtime, which reads it while
/// taking a checkpoint inside `Runtime::step` (never concurrently with the
/// application, which is blocked in that call).
pub(crate) struct Slot(UnsafeCell<RegionBuf>);

impl Slot {
    pub fn new(buf: RegionBuf) -> Rc<Self> {
        Rc::new(Self(UnsafeCell::new(buf)))
    }

    /// # Safety
    /// No mutable reference to the region may be in use at the same time.
    pub unsafe fn bytes(&self) -> &[u8] {
        unsafe { &*self.0.get() }
    }
}

/// A page-aligned array of `T` whose content is checkpointed and restored.
///
/// It dereferences to `[T]`; the runtime reads it only inside
/// [`Runtime::step`](crate::Runtime::step).
pub struct Region<T: Pod> {
    slot: Rc<Slot>,
    _t: PhantomData<T>,
}

impl<T: Pod> Region<T> {
    pub(crate) fn new(slot: Rc<Slot>) -> Self {
        Self {
            slot,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> Deref for Region<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the runtime only reads the slot inside `step`, which needs
        // `&mut Runtime` and is never running while this borrow is used.
        bytemuck::cast_slice(unsafe { &*self.slot.0.get() })
    }
}

impl<T: Pod> DerefMut for Region<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as above; `&mut self` makes this the only borrow through
        // this handle, and handles are not cloneable.
        bytemuck::cast_slice_mut(unsafe { &mut *self.slot.0.get() })
    }
}

/// A small serde value kept in every checkpoint (encoded with postcard).
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

/// Where a registered region's bytes come from at checkpoint time.
pub(crate) enum Source {
    Owned(Rc<Slot>),
    /// Memory owned by the application (C ABI, `register_raw`).
    Raw {
        ptr: *const u8,
        len: usize,
    },
    /// A serde value, encoded when the checkpoint is taken.
    Value(Box<dyn Fn() -> Result<Vec<u8>, String>>),
}

pub(crate) struct Entry {
    pub name: String,
    pub source: Source,
}
