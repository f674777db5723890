//! The allocator of the engine's own tests: the system allocator, except
//! that a test can make every allocation above a size fail in its thread
//! ([`failing_above`]). Memory that grows with a call's input must be asked
//! for with `try_reserve`, so that a process at its memory limit gets an
//! error; an allocation that fails anywhere else aborts it, and with it the
//! test binary. Other tests' threads are not affected.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
}

pub struct TestAlloc;

fn refused(size: usize) -> bool {
    LIMIT.try_with(|l| size > l.get()).unwrap_or(false)
}

// SAFETY: every call forwards to `System` with the caller's arguments, or
// returns null (an allocation that failed) without allocating.
unsafe impl GlobalAlloc for TestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if refused(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if refused(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc_zeroed`'s contract for `layout`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if refused(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `realloc`'s contract for `block`.
        unsafe { System.realloc(block, layout, new_size) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract for `block`.
        unsafe { System.dealloc(block, layout) }
    }
}

/// Run `f` with every allocation of more than `bytes` failing in this thread.
pub fn failing_above<T>(bytes: usize, f: impl FnOnce() -> T) -> T {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            LIMIT.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LIMIT.with(|l| l.replace(bytes)));
    f()
}
