//! Memory held back for the moment an allocation fails.
//!
//! Rust ends the process when an allocation fails (`handle_alloc_error`
//! aborts), and under a memory limit (`RLIMIT_AS`) any of the many small
//! allocations of a store call can be the one that fails. The binding
//! installs [`ReserveAlloc`] as its global allocator: it keeps
//! [`RESERVE_BYTES`] of address space mapped but never touched, and when an
//! allocation fails it gives that space back and tries once more, so the
//! call under way finishes. Every store call first checks that the reserve
//! is held again ([`ensure`]) and is refused with an error when it cannot be
//! (the process is at its limit): the store stops before an allocation it
//! could not survive, not in the middle of one. Allocations that grow with
//! the caller's input (the keys of a call, the write buffer) ask for their
//! memory with `try_reserve` and fail with an error instead; the reserve is
//! for everything else, which a call needs far less than this of.
//!
//! The reserve costs address space only: it is mapped `PROT_NONE` and
//! `MAP_NORESERVE`, so no page of it is ever backed by memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Address space kept in reserve.
pub const RESERVE_BYTES: usize = 32 << 20;

static HELD: AtomicPtr<libc::c_void> = AtomicPtr::new(ptr::null_mut());
/// How many times the reserve was given up for a failed allocation.
static RELEASES: AtomicU64 = AtomicU64::new(0);

/// The global allocator of the binding: the system allocator, retried once
/// with the reserve given back when it fails.
pub struct ReserveAlloc;

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are the ones given; the retry happens
// only after a null return, when nothing was allocated.
unsafe impl GlobalAlloc for ReserveAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() && release() {
            // SAFETY: as above; the first attempt allocated nothing.
            return unsafe { System.alloc(layout) };
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc_zeroed`'s contract for `layout`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() && release() {
            // SAFETY: as above; the first attempt allocated nothing.
            return unsafe { System.alloc_zeroed(layout) };
        }
        p
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `realloc`'s contract for `block`.
        let p = unsafe { System.realloc(block, layout, new_size) };
        if p.is_null() && release() {
            // SAFETY: a failed `realloc` leaves `block` allocated and
            // unchanged, so the same call is valid again.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        p
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract; `block` came from
        // `System` through this allocator.
        unsafe { System.dealloc(block, layout) }
    }
}

/// Give the reserve back, if held. Runs inside the allocator: it makes one
/// system call and allocates nothing.
#[cold]
fn release() -> bool {
    let p = HELD.swap(ptr::null_mut(), Ordering::AcqRel);
    if p.is_null() {
        return false;
    }
    // SAFETY: `p` is the start of a mapping of RESERVE_BYTES made by
    // `ensure`, which this swap took sole ownership of.
    unsafe { libc::munmap(p, RESERVE_BYTES) };
    RELEASES.fetch_add(1, Ordering::Relaxed);
    true
}

/// Hold the reserve: `true` if it is held (now or already), `false` if the
/// process has no room for it. One atomic load when it is held.
#[inline]
pub fn ensure() -> bool {
    !HELD.load(Ordering::Acquire).is_null() || take()
}

#[cold]
fn take() -> bool {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            RESERVE_BYTES,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    if HELD
        .compare_exchange(ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Another thread took it first.
        // SAFETY: `p` is the mapping made above, never published.
        unsafe { libc::munmap(p, RESERVE_BYTES) };
    }
    true
}

/// How many times an allocation has failed and the reserve was given back
/// for it, since the process started.
pub fn releases() -> u64 {
    RELEASES.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Taken, given back for a failed allocation, taken again; one mapping
    /// at a time however often `ensure` is called. (One test: the reserve is
    /// process-wide.)
    #[test]
    fn the_reserve_is_given_back_once_and_taken_again() {
        assert!(ensure());
        let first = HELD.load(Ordering::Acquire);
        assert!(!first.is_null());
        assert!(ensure());
        assert_eq!(HELD.load(Ordering::Acquire), first, "one mapping, kept");
        let before = releases();
        assert!(release());
        assert!(!release(), "nothing left to give back");
        assert_eq!(releases(), before + 1);
        assert!(HELD.load(Ordering::Acquire).is_null());
        assert!(ensure());
        assert!(!HELD.load(Ordering::Acquire).is_null());

        // An allocation the system refuses is retried once with the reserve
        // given back, and still refused when it is larger than what the
        // reserve frees: the caller sees null, never an abort.
        let before = releases();
        // More than any address space: the system allocator refuses it.
        // (Through `black_box`, so that the compiler cannot fold the
        // allocation away.)
        let size = std::hint::black_box(isize::MAX as usize - 4096);
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero size; a null result is checked, nothing freed.
        let p = std::hint::black_box(unsafe { ReserveAlloc.alloc(layout) });
        assert!(p.is_null());
        assert_eq!(releases(), before + 1);
        assert!(ensure(), "taken again");
        // A normal allocation goes through untouched.
        let small = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: non-zero size; freed with the same layout.
        unsafe {
            let q = ReserveAlloc.alloc_zeroed(small);
            assert!(!q.is_null());
            assert_eq!(*q, 0);
            let q = ReserveAlloc.realloc(q, small, 128);
            assert!(!q.is_null());
            ReserveAlloc.dealloc(q, Layout::from_size_align(128, 8).unwrap());
        }
    }
}
