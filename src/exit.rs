//! Interpreter exit: which threads are inside a store call, and the exit
//! hook's wait for them to leave before the interpreter finalizes.
//!
//! Why: once CPython (before 3.14) starts finalizing, a daemon thread that
//! takes the GIL again ends with `pthread_exit`, a forced unwind. If that
//! thread is inside a store call (waking from a wait with the GIL released,
//! or running a reducer inside `pickle.loads`), the unwind crosses our Rust
//! frames: PyO3's `catch_unwind` aborts the process on it ("FATAL: exception
//! not rethrown"), and destructors on the way drop Python references without
//! the GIL. `atexit` callbacks run before finalization starts, so the exit
//! hook can make sure no thread is inside a store call by then:
//!
//! 1. It sets `EXITING` and waits, with the GIL released, until no other
//!    thread is inside a store call (at most [`EXIT_WAIT`]).
//! 2. From then on, a thread other than the exiting one that enters a store
//!    call from outside any (depth 0) releases the GIL and parks for good. It
//!    holds no lock of ours, and the process is about to end. A nested call
//!    (depth > 0: code run by `pickle.loads` calling a store) goes on, so
//!    that the outer call can finish.
//!
//! Background commit threads are plain Rust threads that never take the GIL;
//! the hook waits for their commits through each store's commit lock.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How long the exit hook waits for other threads to leave their store
/// calls before it commits the buffers anyway.
pub const EXIT_WAIT: Duration = Duration::from_secs(10);

thread_local! {
    /// Store calls this thread is inside, nested ones included.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// This thread runs the exit hook: it may go on using stores.
    static EXITER: Cell<bool> = const { Cell::new(false) };
}

/// Threads whose `DEPTH` is above 0.
static INSIDE: AtomicUsize = AtomicUsize::new(0);
/// The exit hook has begun.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Proof that this thread is inside a store call; leaving it when dropped.
/// Not `Send`: the count is per thread.
pub struct Inside {
    _same_thread: PhantomData<*const ()>,
}

/// Enter a store call. Call with the GIL held. After the exit hook began, a
/// thread other than the exiting one that is not inside a store call already
/// never returns from here.
pub fn enter() -> Inside {
    let depth = DEPTH.with(Cell::get);
    if depth == 0 {
        // SeqCst on both sides (here and in `wait_for_others`): either the
        // hook sees this thread counted, or this thread sees EXITING.
        INSIDE.fetch_add(1, Ordering::SeqCst);
        if EXITING.load(Ordering::SeqCst) && !EXITER.with(Cell::get) {
            INSIDE.fetch_sub(1, Ordering::SeqCst);
            park_forever();
        }
    }
    DEPTH.with(|d| d.set(depth + 1));
    Inside {
        _same_thread: PhantomData,
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let depth = DEPTH.with(|d| {
            let depth = d.get() - 1;
            d.set(depth);
            depth
        });
        if depth == 0 {
            INSIDE.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Enter a store call that lasts for a whole `with` block (a transaction,
/// which holds the writer between its calls): `enter()`, with the proof
/// kept by the block. Pair with `leave_block` on the same thread.
pub fn enter_block() {
    std::mem::forget(enter());
}

/// The end of a block `enter_block` began, on the thread that began it.
pub fn leave_block() {
    drop(Inside {
        _same_thread: PhantomData,
    });
}

/// A daemon thread of a process that is exiting: release the GIL and never
/// come back, so that no finalization-time unwind can cross our frames.
#[cold]
fn park_forever() -> ! {
    Python::attach(|py| {
        py.detach(|| loop {
            std::thread::park();
        })
    })
}

/// True once the exit hook has begun.
pub fn exiting() -> bool {
    EXITING.load(Ordering::SeqCst)
}

/// The first step of the exit hook: mark this thread as the exiting one,
/// keep every other thread out of new store calls, and wait (GIL released)
/// for those inside one to leave. Returns how many are still inside after
/// [`EXIT_WAIT`] (0 normally).
pub fn begin_exit(py: Python<'_>) -> usize {
    EXITER.with(|e| e.set(true));
    EXITING.store(true, Ordering::SeqCst);
    // The exit hook itself may run inside a store call (atexit callbacks run
    // by hand from code a store called): that one is this thread's own.
    let own = usize::from(DEPTH.with(Cell::get) > 0);
    py.detach(|| {
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            let others = INSIDE.load(Ordering::SeqCst).saturating_sub(own);
            if others == 0 || Instant::now() >= deadline {
                return others;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// In the child after `fork()`: only the forking thread exists, so it is
/// the only one that can be inside a store call.
pub fn after_fork_in_child() {
    let own = usize::from(DEPTH.with(Cell::get) > 0);
    INSIDE.store(own, Ordering::SeqCst);
}
