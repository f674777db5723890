//! Snapshots: one read transaction held open across calls, for a consistent
//! view of the database that outlives a single read.
//!
//! A snapshot holds the map gate shared through a long hold
//! (`Gate::try_long`), so map growth and close in this process wait for it,
//! and the thread that opened it is refused (`WouldDeadlock`) any growth or
//! close that would wait for it. It holds a reader slot and pins the pages of
//! its state: LMDB cannot reuse them until it ends, so writes meanwhile take
//! new pages and the file grows. It may be dropped on any thread.

use std::mem::ManuallyDrop;
use std::sync::Arc;

use crate::env::{fork_generation, Env, ReadTxn};
use crate::error::{Error, Result};
use crate::gate::SharedGuard;

/// A read transaction that lives until this value is dropped.
pub struct Snapshot {
    /// Dropped by hand before `env`, which it borrows.
    txn: ManuallyDrop<ReadTxn<'static>>,
    env: Arc<Env>,
}

// SAFETY: the environment is opened with MDB_NOTLS, so its read
// transactions are not tied to the thread that began them, and the long gate
// hold may be released on any thread (see `Gate::try_long`). `Snapshot` is
// not `Sync`: one thread at a time uses the transaction.
unsafe impl Send for Snapshot {}

impl Snapshot {
    /// Begin a snapshot under `guard`, a long hold of `env.gate`.
    /// `Ok(None)` means another process grew the map: drop nothing more,
    /// `adopt_resize`, and retry, as for `Env::begin_read`.
    pub fn begin(env: &Arc<Env>, guard: SharedGuard<'_>) -> Result<Option<Snapshot>> {
        let Some(txn) = env.begin_read(guard)? else {
            return Ok(None);
        };
        // SAFETY: `txn` borrows `**env` (and the guard, its gate). The
        // snapshot keeps its own `Arc` of that environment, so the borrow
        // stays valid at the same address, and `drop` ends the transaction
        // before that `Arc` goes.
        let txn: ReadTxn<'static> = unsafe { std::mem::transmute(txn) };
        Ok(Some(Snapshot {
            txn: ManuallyDrop::new(txn),
            env: Arc::clone(env),
        }))
    }

    /// Address `table` with this snapshot's reads (see `ReadTxn::set_table`).
    pub fn set_table(&self, table: &crate::Table) -> Result<()> {
        self.txn.set_table(table)
    }

    /// The transaction, for reads. Refused in a child after `fork()`: the
    /// transaction is the parent's there.
    pub fn txn(&self) -> Result<&ReadTxn<'_>> {
        if self.env.generation != fork_generation() {
            return Err(Error::Forked);
        }
        Ok(&self.txn)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // SAFETY: dropped once, here, while `self.env` still keeps the
        // environment it borrows alive. `ReadTxn`'s own drop leaves the
        // transaction alone in a child after fork().
        unsafe { ManuallyDrop::drop(&mut self.txn) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Sorted;
    use crate::env::EnvOptions;

    fn put(env: &Env, k: &[u8], v: &[u8]) {
        env.commit(&Sorted::last_write_wins(vec![(k, Some(v))]), 0, None)
            .unwrap();
    }

    #[test]
    fn sees_one_state_and_blocks_own_growth() {
        let dir = tempdir();
        let env = Env::acquire(&dir, &EnvOptions::default()).unwrap();
        put(&env, b"k", b"one");
        let snap = Snapshot::begin(&env, env.gate.try_long().unwrap())
            .unwrap()
            .unwrap();
        put(&env, b"k", b"two");
        assert_eq!(snap.txn().unwrap().get(b"k").unwrap(), Some(&b"one"[..]));
        assert!(env.gate.held_by_current_thread());
        assert!(matches!(
            env.gate.exclusive("grow"),
            Err(Error::WouldDeadlock(_))
        ));
        // Released on another thread: the hold goes with it.
        std::thread::spawn(move || drop(snap)).join().unwrap();
        assert!(!env.gate.held_by_current_thread());
        drop(env.gate.exclusive("grow").unwrap());
        env.release().unwrap();
    }

    fn tempdir() -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "engine-snapshot-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}
