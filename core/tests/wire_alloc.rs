//! Receiving arbitrary bytes never allocates more than the frame bound: the
//! largest single allocation made while a session reads hostile input is
//! measured with a counting global allocator (per thread, so the test
//! harness's other threads do not interfere).

use pm_core::wire::{JobSecret, Limits, MAC_LEN, MAGIC, Role, Session, WIRE_VERSION};
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MAX_BODY: u32 = 1024;

fn server_session() -> Session {
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let secret = JobSecret::from_bytes([3; 32]);
    let s2 = secret.clone();
    let limits = Limits { max_body: MAX_BODY };
    let server =
        std::thread::spawn(move || Session::accept(&mut b, &s2, "c", "s", limits).unwrap());
    Session::connect(&mut a, &secret, "s", "c", Role::Agent, limits).unwrap();
    server.join().unwrap()
}

fn header(len: u32, seq: u64) -> Vec<u8> {
    let mut h = Vec::from(MAGIC);
    h.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&seq.to_le_bytes());
    h
}

fn largest_allocation_while(f: impl FnOnce()) -> usize {
    LARGEST.with(|m| m.set(0));
    f();
    LARGEST.with(|m| m.get())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn hostile_input_allocates_at_most_the_bound(
        claimed in any::<u32>(), seq in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        let mut s = server_session();
        let mut input = header(claimed, seq);
        input.extend_from_slice(&tail);
        let mut result = None;
        let largest = largest_allocation_while(|| {
            result = Some(s.recv_frame(&mut Cursor::new(&input)).is_err());
        });
        prop_assert_eq!(result, Some(true));
        prop_assert!(largest <= MAX_BODY as usize + MAC_LEN, "allocated {} bytes", largest);
    }
}
