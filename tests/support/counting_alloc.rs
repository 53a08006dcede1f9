//! A global allocator that counts the heap bytes currently allocated, shared by the
//! memory test and the SimFs bench (`#[path]`-included into each binary).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Wraps the system allocator and counts the bytes currently allocated.
pub struct Counting;

/// Live heap bytes: allocated and not yet freed.
pub static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's allocations so far (`alloc` and `realloc` calls) and the bytes it
    /// allocated minus those it freed: what a loop on one thread costs, whatever the test
    /// harness' own threads do meanwhile.
    static THREAD: Cell<(usize, isize)> = const { Cell::new((0, 0)) };
}

/// This thread's allocations so far and its net allocated bytes (see `THREAD`).
#[allow(dead_code)] // used by the memory test, not by the bench
pub fn thread_counts() -> (usize, isize) {
    THREAD.with(Cell::get)
}

fn count(allocations: usize, bytes: isize) {
    // `try_with`: an allocation while the thread-local is torn down is not counted.
    let _ = THREAD.try_with(|c| {
        let (n, b) = c.get();
        c.set((n + allocations, b + bytes));
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        count(1, layout.size() as isize);
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        count(0, -(layout.size() as isize));
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        count(1, new_size as isize - layout.size() as isize);
        if !new.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        new
    }
}
