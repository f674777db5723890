//! Fresh memory made resident in one call before a large copy fills it.
//!
//! A value of a megabyte read into a new object is copied into memory the
//! allocator has just taken from the system: every 4 KiB page of it is
//! then faulted in by the copy itself, one trap at a time. Asking the
//! kernel to populate the whole range at once (`MADV_POPULATE_WRITE`,
//! Linux 5.14 on) does the same work without the traps. Memory already
//! resident gains nothing and would pay a walk of its pages, so the range
//! is populated only when its first whole page is not resident
//! (`mincore`), which is how memory fresh from the system looks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Copies shorter than this are left to fault their pages in as they go.
pub const MIN_BYTES: usize = 256 << 10;

/// Linux's `MADV_POPULATE_WRITE` (not in every libc the crate builds on).
#[cfg(target_os = "linux")]
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// The last few ranges (by their first whole page) found resident.
static RESIDENT: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Cleared the first time the kernel refuses the advice (an older kernel):
/// then nothing is asked again.
static SUPPORTED: AtomicBool = AtomicBool::new(true);

/// Copy `src` to `dst`, memory just allocated for it (a new object's
/// contents), asking first for its fresh pages in one call when the copy is
/// large (see [`before_write`]).
///
/// # Safety
///
/// `dst` is valid for writes of `src.len()` bytes, owned by the caller,
/// and does not overlap `src`.
#[inline]
pub unsafe fn copy_to_fresh(src: &[u8], dst: *mut u8) {
    // SAFETY: the caller's promise: `dst` is theirs and the copy below
    // overwrites all of it.
    unsafe {
        before_write(dst, src.len());
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
    }
}

/// Make the pages wholly inside `len` bytes at `start` resident and
/// writable, if they are not yet, before the caller writes all of them.
/// Below [`MIN_BYTES`] this is a comparison and nothing else.
///
/// # Safety
///
/// `start..start + len` must be memory the caller owns and is about to
/// overwrite entirely (as a copy into a new object does): populating
/// leaves its contents as they are, but makes each page resident.
#[inline]
pub unsafe fn before_write(start: *mut u8, len: usize) {
    if len >= MIN_BYTES {
        // SAFETY: the caller's promise, passed on.
        unsafe { populate(start, len) }
    }
}

/// [`before_write`] for a large range.
///
/// # Safety
///
/// As [`before_write`].
#[cold]
unsafe fn populate(start: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        if !SUPPORTED.load(Ordering::Relaxed) {
            return;
        }
        let page = crate::stream::page_size();
        let first = (start as usize).div_ceil(page) * page;
        let end = (start as usize + len) / page * page;
        if end <= first {
            return;
        }
        if RESIDENT.iter().any(|a| a.load(Ordering::Relaxed) == first) {
            return;
        }
        let mut resident = 0u8;
        // SAFETY: `first` is page-aligned and its page lies inside the
        // caller's range; mincore writes one byte per page, into `resident`.
        let rc = unsafe { libc::mincore(first as *mut libc::c_void, page, &mut resident) };
        if rc != 0 {
            return;
        }
        if resident & 1 != 0 {
            // Found resident: a copy into memory that is used again and
            // again (a value read, dropped, read again) skips the call next
            // time. Should that memory go back to the system meanwhile, the
            // next copy there merely faults its pages in as it goes.
            let slot = NEXT.fetch_add(1, Ordering::Relaxed) % RESIDENT.len();
            RESIDENT[slot].store(first, Ordering::Relaxed);
            return;
        }
        // SAFETY: the range is page-aligned and inside memory the caller
        // owns and is about to overwrite (this function's contract);
        // populating changes no byte of it.
        let rc =
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, MADV_POPULATE_WRITE) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            SUPPORTED.store(false, Ordering::Relaxed);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, len);
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::stream::page_size;

    /// A fresh private anonymous mapping of `pages` pages, none resident.
    struct Fresh {
        at: *mut u8,
        len: usize,
    }

    impl Fresh {
        fn new(pages: usize) -> Self {
            let len = pages * page_size();
            // SAFETY: a new anonymous mapping; no existing memory is touched.
            let at = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(at, libc::MAP_FAILED);
            Fresh { at: at.cast(), len }
        }

        /// Which pages are resident.
        fn resident(&self) -> Vec<bool> {
            let mut v = vec![0u8; self.len / page_size()];
            // SAFETY: the mapping is ours and page-aligned; one byte per page.
            let rc = unsafe { libc::mincore(self.at.cast(), self.len, v.as_mut_ptr()) };
            assert_eq!(rc, 0);
            v.iter().map(|b| b & 1 != 0).collect()
        }

        fn bytes(&self) -> &[u8] {
            // SAFETY: the whole mapping is readable (untouched pages read 0).
            unsafe { std::slice::from_raw_parts(self.at, self.len) }
        }
    }

    impl Drop for Fresh {
        fn drop(&mut self) {
            // SAFETY: our own mapping, unmapped once.
            unsafe { libc::munmap(self.at.cast(), self.len) };
        }
    }

    /// The tests share the cache of resident ranges, and a range unmapped
    /// by one may be mapped again at the same place by the next: each test
    /// runs alone, with the cache emptied.
    fn alone() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for slot in &RESIDENT {
            slot.store(0, Ordering::Relaxed);
        }
        guard
    }

    /// Whether this kernel knows `MADV_POPULATE_WRITE` (5.14 on).
    fn kernel_has_populate() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (5, 14)
    }

    #[test]
    fn a_fresh_range_becomes_resident_and_stays_zero() {
        let _alone = alone();
        let m = Fresh::new(2 * MIN_BYTES / page_size());
        assert!(m.resident().iter().all(|r| !r));
        // Starting mid-page: the whole pages inside the range are populated.
        // SAFETY: inside our own mapping, which nothing else uses.
        unsafe { before_write(m.at.add(100), m.len - 100) };
        let resident = m.resident();
        if kernel_has_populate() {
            assert!(SUPPORTED.load(Ordering::Relaxed));
            assert!(resident[1..].iter().all(|&r| r), "{resident:?}");
        }
        assert!(m.bytes().iter().all(|&b| b == 0));
    }

    #[test]
    fn bytes_already_written_are_kept() {
        let _alone = alone();
        let m = Fresh::new(2 * MIN_BYTES / page_size());
        let page = page_size();
        // Pages 10..20 written (resident), the first and the rest untouched.
        for (i, b) in (10 * page..20 * page).enumerate() {
            // SAFETY: inside our own mapping.
            unsafe { *m.at.add(b) = (i % 251) as u8 };
        }
        // SAFETY: as above.
        unsafe { before_write(m.at, m.len) };
        if kernel_has_populate() {
            assert!(m.resident().iter().all(|&r| r));
        }
        for (i, b) in (10 * page..20 * page).enumerate() {
            assert_eq!(m.bytes()[b], (i % 251) as u8);
        }
        assert!(m.bytes()[..10 * page].iter().all(|&b| b == 0));
        assert!(m.bytes()[20 * page..].iter().all(|&b| b == 0));
    }

    #[test]
    fn short_ranges_and_resident_starts_are_left_to_fault_as_they_go() {
        let _alone = alone();
        let short = Fresh::new(MIN_BYTES / page_size());
        // SAFETY: inside our own mapping.
        unsafe { before_write(short.at, short.len - 1) };
        assert!(short.resident().iter().all(|r| !r));

        // The first page resident: taken for memory in use, nothing asked.
        let m = Fresh::new(2 * MIN_BYTES / page_size());
        // SAFETY: inside our own mapping.
        unsafe { *m.at = 1 };
        // SAFETY: as above.
        unsafe { before_write(m.at, m.len) };
        let resident = m.resident();
        assert!(
            resident[0] && resident[1..].iter().all(|r| !r),
            "{resident:?}"
        );
    }
}
