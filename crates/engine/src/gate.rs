//! The map gate: reads share it; map growth and close take it alone.
//!
//! `mdb_env_set_mapsize` unmaps the memory that every live read transaction
//! (and every memoryview handed to `pickle.loads`) points into, so it may run
//! only when no read is in flight in this process. Reads hold the gate shared
//! for exactly as long as they touch LMDB memory; growth and close wait for
//! them and block new ones meanwhile (a waiting exclusive holder goes first,
//! so a stream of reads cannot starve growth).
//!
//! A thread that already holds the gate shared (code run by `pickle.loads`
//! calling the store again) is always let in again, and is refused, with
//! `WouldDeadlock`, the exclusive gate it could never get.
//!
//! A read whose lent buffer outlives it (code run by `pickle.loads` kept
//! pickle's view of the value) pins the gate for good as it leaves: the map
//! must never be unmapped after that, so the exclusive gate is refused
//! (`Pinned`) rather than waited for.
//!
//! A snapshot holds the gate shared across calls (a long hold, `try_long`):
//! it counts as held by the thread that took it, like a read in flight, but
//! may be released on any thread, so it is kept in the gate, not in that
//! thread's thread-local count.
//!
//! None of this touches Python: callers that hold the GIL try `try_shared`
//! first and do any blocking wait with the GIL released.
//!
//! Work that would have to wait for the calling thread's own read (closing a
//! store dropped by code run inside that read) can be put off with
//! `after_shared`: it runs on this thread as soon as its shared hold ends.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::ThreadId;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

#[derive(Default)]
struct State {
    shared: usize,
    exclusive: bool,
    exclusive_waiting: usize,
    /// Reads that ended while a buffer over their memory was still held.
    pinned: usize,
}

#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
    cond: Condvar,
    /// The thread that took each long hold (a snapshot's) still held. Kept
    /// here, not in the taker's thread-local count, because a long hold may
    /// be released on any thread. Locked after `state`, never before it.
    long: Mutex<Vec<ThreadId>>,
    /// `long.len()`, changed under its lock, read without it.
    long_count: AtomicUsize,
}

/// Work put off until this thread's shared hold of a gate ends.
type Deferred = Box<dyn FnOnce()>;

thread_local! {
    /// (gate address, depth) for each gate this thread holds shared.
    static HELD: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
    /// (gate address, work) to run when this thread's hold of that gate
    /// ends. A gate outlives every hold of it, so its address names it here.
    static AFTER_SHARED: RefCell<Vec<(usize, Deferred)>> = const { RefCell::new(Vec::new()) };
}

/// This thread's holds of `gate`: its reads, plus the long holds it took.
fn held_depth(gate: &Gate) -> usize {
    let id = gate as *const Gate as usize;
    let short = HELD.with(|h| {
        h.borrow()
            .iter()
            .find(|(g, _)| *g == id)
            .map_or(0, |(_, d)| *d)
    });
    short + long_held(gate)
}

/// This thread's long holds of `gate`. Reads check this on every hold, so
/// the common case, no long hold at all, costs one load: a hold this thread
/// took is counted before it returns, and one released elsewhere at worst
/// leaves a stale count, which only sends this thread to the list.
fn long_held(gate: &Gate) -> usize {
    if gate.long_count.load(Ordering::Acquire) == 0 {
        return 0;
    }
    let me = std::thread::current().id();
    gate.long.lock().iter().filter(|t| **t == me).count()
}

/// Change this thread's depth of `gate` by `delta`; returns the new depth.
fn note_held(gate: &Gate, delta: isize) -> usize {
    let id = gate as *const Gate as usize;
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        match h.iter().position(|(g, _)| *g == id) {
            Some(i) => {
                let d = (h[i].1 as isize + delta) as usize;
                if d == 0 {
                    h.swap_remove(i);
                } else {
                    h[i].1 = d;
                }
                d
            }
            None => {
                debug_assert!(delta > 0);
                h.push((id, delta as usize));
                delta as usize
            }
        }
    })
}

/// True when a gate this thread holds shared has an exclusive holder waiting
/// or in: that holder waits for this thread's read, so this thread must not
/// wait for anything that waits for that holder.
pub fn held_gate_awaited() -> bool {
    HELD.with(|h| {
        h.borrow().iter().any(|&(addr, _)| {
            // SAFETY: `addr` is a gate this thread holds shared through a
            // live `SharedGuard`, which borrows it, so it is alive.
            let gate = unsafe { &*(addr as *const Gate) };
            gate.exclusive_pending()
        })
    })
}

/// In the child after `fork()`: the reads this thread was inside belong to
/// the parent and are never ended here (see `ReadTxn`'s drop), so forget
/// them rather than consult gates whose state is a stale copy.
pub fn forget_held_after_fork() {
    HELD.with(|h| h.borrow_mut().clear());
}

/// Proof of a shared hold; releases it when dropped. A short hold must be
/// dropped on the thread that took it (the re-entrancy check counts per
/// thread); it is `Send` only so that a wait can run with the GIL released,
/// which happens on the same thread. A long hold may be dropped anywhere.
pub struct SharedGuard<'a> {
    gate: &'a Gate,
    /// For a long hold (`try_long`, `wait_long`): the thread that took it.
    /// Such a hold may be dropped on any thread.
    long: Option<ThreadId>,
}

/// Proof of the exclusive hold.
pub struct ExclusiveGuard<'a> {
    gate: &'a Gate,
}

impl Gate {
    /// True when this thread holds the gate shared (is inside a read).
    pub fn held_by_current_thread(&self) -> bool {
        held_depth(self) > 0
    }

    /// Run `work` on this thread once its shared hold of the gate ends: at
    /// once if it holds none. For work that would otherwise wait for this
    /// thread's own read.
    pub fn after_shared(&self, work: Deferred) {
        if held_depth(self) == 0 {
            work();
            return;
        }
        let id = self as *const Gate as usize;
        AFTER_SHARED.with(|a| a.borrow_mut().push((id, work)));
    }

    /// True when an exclusive holder is waiting or in.
    pub fn exclusive_pending(&self) -> bool {
        let s = self.state.lock();
        s.exclusive || s.exclusive_waiting > 0
    }

    fn grant_shared(&self, s: &mut State) -> SharedGuard<'_> {
        s.shared += 1;
        note_held(self, 1);
        SharedGuard {
            gate: self,
            long: None,
        }
    }

    fn grant_long(&self, s: &mut State) -> SharedGuard<'_> {
        s.shared += 1;
        let me = std::thread::current().id();
        let mut long = self.long.lock();
        long.push(me);
        self.long_count.store(long.len(), Ordering::Release);
        SharedGuard {
            gate: self,
            long: Some(me),
        }
    }

    /// `try_shared` for a hold that outlives the call (a snapshot): it
    /// counts as held by this thread (so this thread's own growth or close
    /// is refused with `WouldDeadlock` rather than waiting for it, and its
    /// reads are let in while growth waits), and it may be released on any
    /// thread.
    pub fn try_long(&self) -> Option<SharedGuard<'_>> {
        let mut s = self.state.lock();
        if (!s.exclusive && s.exclusive_waiting == 0) || held_depth(self) > 0 {
            Some(self.grant_long(&mut s))
        } else {
            None
        }
    }

    /// `wait_shared` for a long hold (see `try_long`). Call without the GIL.
    pub fn wait_long(&self) -> SharedGuard<'_> {
        let mut s = self.state.lock();
        if held_depth(self) == 0 {
            while s.exclusive || s.exclusive_waiting > 0 {
                self.cond.wait(&mut s);
            }
        }
        self.grant_long(&mut s)
    }

    /// Take the gate shared without blocking, if no growth is under way or
    /// waiting (or this thread already holds it).
    pub fn try_shared(&self) -> Option<SharedGuard<'_>> {
        let mut s = self.state.lock();
        if (!s.exclusive && s.exclusive_waiting == 0) || held_depth(self) > 0 {
            Some(self.grant_shared(&mut s))
        } else {
            None
        }
    }

    /// Wait for the gate shared. Call without the GIL.
    pub fn wait_shared(&self) -> SharedGuard<'_> {
        let mut s = self.state.lock();
        if held_depth(self) == 0 {
            while s.exclusive || s.exclusive_waiting > 0 {
                self.cond.wait(&mut s);
            }
        }
        self.grant_shared(&mut s)
    }

    /// Wait until no read is in flight, then hold the gate alone. Call
    /// without the GIL. `what` names the caller for the error. Refused once
    /// a read is pinned: a pin lasts for the rest of the process.
    pub fn exclusive(&self, what: &'static str) -> Result<ExclusiveGuard<'_>> {
        if held_depth(self) > 0 {
            return Err(Error::WouldDeadlock(what));
        }
        let mut s = self.state.lock();
        if s.pinned > 0 {
            return Err(Error::Pinned(what));
        }
        s.exclusive_waiting += 1;
        while s.exclusive || s.shared > 0 {
            self.cond.wait(&mut s);
            if s.pinned > 0 {
                // A read we waited for pinned its memory on the way out.
                s.exclusive_waiting -= 1;
                self.cond.notify_all();
                return Err(Error::Pinned(what));
            }
        }
        s.exclusive_waiting -= 1;
        s.exclusive = true;
        Ok(ExclusiveGuard { gate: self })
    }
}

impl SharedGuard<'_> {
    /// Leave a pin behind this hold: the map stays mapped for the rest of
    /// the process. Taken before the hold is released, so an exclusive
    /// waiter that wakes when it is sees the pin.
    pub fn pin(&self) {
        self.gate.state.lock().pinned += 1;
    }
}

impl Drop for SharedGuard<'_> {
    fn drop(&mut self) {
        // Whether this thread's last hold of the gate ended.
        let last = match self.long {
            None => note_held(self.gate, -1) == 0 && long_held(self.gate) == 0,
            Some(owner) => {
                {
                    let mut long = self.gate.long.lock();
                    if let Some(i) = long.iter().position(|t| *t == owner) {
                        long.swap_remove(i);
                    }
                    self.gate.long_count.store(long.len(), Ordering::Release);
                }
                owner == std::thread::current().id() && held_depth(self.gate) == 0
            }
        };
        {
            let mut s = self.gate.state.lock();
            s.shared -= 1;
            if s.shared == 0 && s.exclusive_waiting > 0 {
                self.gate.cond.notify_all();
            }
        }
        // Work put off by this thread runs when its last hold ends; a long
        // hold released elsewhere leaves it to the taker's next release.
        if last {
            run_deferred(self.gate);
        }
    }
}

/// Run the work put off until this thread's hold of `gate` ended. Taken out
/// of the list first: the work may put off more (for another gate).
fn run_deferred(gate: &Gate) {
    let id = gate as *const Gate as usize;
    let due: Vec<Deferred> = AFTER_SHARED.with(|a| {
        let mut a = a.borrow_mut();
        if a.is_empty() {
            return Vec::new();
        }
        let (due, rest): (Vec<_>, Vec<_>) = a.drain(..).partition(|(g, _)| *g == id);
        *a = rest;
        due.into_iter().map(|(_, work)| work).collect()
    });
    for work in due {
        work();
    }
}

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock();
        s.exclusive = false;
        self.gate.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn shared_is_reentrant_and_exclusive_refused_to_holder() {
        let g = Gate::default();
        let a = g.try_shared().expect("free gate");
        assert!(g.held_by_current_thread());
        let b = g.wait_shared();
        assert!(matches!(
            g.exclusive("grow"),
            Err(Error::WouldDeadlock("grow"))
        ));
        drop(a);
        drop(b);
        assert!(!g.held_by_current_thread());
        let x = g.exclusive("grow").expect("no readers");
        drop(x);
    }

    #[test]
    fn a_pin_refuses_the_exclusive_gate() {
        let g = Arc::new(Gate::default());
        let r = g.try_shared().unwrap();
        let waiter = {
            let g = g.clone();
            std::thread::spawn(move || g.exclusive("grow").map(drop))
        };
        while !g.exclusive_pending() {
            std::thread::sleep(Duration::from_millis(1));
        }
        r.pin();
        drop(r);
        assert!(matches!(waiter.join().unwrap(), Err(Error::Pinned("grow"))));
        assert!(!g.exclusive_pending(), "the refused waiter is gone");
        assert!(g.try_shared().is_some(), "reads go on while pinned");
        assert!(matches!(g.exclusive("close"), Err(Error::Pinned(_))));
    }

    #[test]
    fn work_put_off_runs_when_the_outermost_hold_ends() {
        use std::cell::Cell;
        use std::rc::Rc;
        let g = Gate::default();
        let other = Gate::default();
        let ran = Rc::new(Cell::new(0));
        let note = |n: i32| {
            let ran = ran.clone();
            Box::new(move || ran.set(ran.get() * 10 + n)) as Deferred
        };
        g.after_shared(note(1));
        assert_eq!(ran.get(), 1, "no hold: at once");
        let outer = g.try_shared().unwrap();
        let inner = g.wait_shared();
        let held_other = other.try_shared().unwrap();
        g.after_shared(note(2));
        drop(inner);
        drop(held_other);
        assert_eq!(ran.get(), 1, "still inside the outer read");
        drop(outer);
        assert_eq!(ran.get(), 12);
        assert!(g.exclusive("close").is_ok());
    }

    #[test]
    fn exclusive_waits_for_readers_and_blocks_new_ones() {
        let g = Arc::new(Gate::default());
        let r = g.try_shared().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let t = {
            let (g, done) = (g.clone(), done.clone());
            std::thread::spawn(move || {
                let _x = g.exclusive("grow").unwrap();
                done.store(true, Ordering::SeqCst);
            })
        };
        while !g.exclusive_pending() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // A waiting grower keeps new readers out (other threads) ...
        let g2 = g.clone();
        let blocked = std::thread::spawn(move || g2.try_shared().is_none())
            .join()
            .unwrap();
        assert!(blocked);
        // ... but lets this thread, which holds a read, in again.
        assert!(g.try_shared().is_some());
        assert!(!done.load(Ordering::SeqCst));
        drop(r);
        t.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        assert!(g.try_shared().is_some());
    }
}
