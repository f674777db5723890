//! Write transactions held across calls (`store.transaction()`): one LMDB
//! write transaction with the writer lock of its environment, and the log of
//! its writes and reads that lets it be undone and redone when the map must
//! grow.
//!
//! Spine rule 1 in its transaction form (docs/architecture.md): the caller
//! runs code between the calls of a transaction, but every call copies bytes
//! in or out and returns; none hands LMDB memory out, and none waits for
//! anything except map growth, which the binding calls without the GIL.
//!
//! Growth: LMDB resizes a map only with no transaction of the environment
//! active in the process, so on MDB_MAP_FULL the transaction is aborted, the
//! map grown, a new write transaction begun and the logged writes replayed.
//! With the transaction aborted, another process may commit in between. The
//! new transaction's id (`mdb_txn_id`, the last committed id plus one) says
//! whether one did: if not, the database is the state the transaction began
//! from and the replay is exact. If one did, every value the transaction read
//! from the database (before writing the key itself) is read again and
//! compared by bytes; a difference, or any range read or count (which cannot
//! be checked key by key), is a conflict: the transaction is abandoned with
//! nothing written ([`Error::Conflict`]). Otherwise the transaction's reads
//! are all still true of the new state, so it is serialised after that
//! commit as if it had begun there.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::os::raw::c_int;
use std::ptr;
use std::sync::Arc;
use std::thread::ThreadId;

use lmdb_sys as ffi;

use crate::bounds::Bounds;
use crate::env::{fork_generation, Env};
use crate::error::{Error, Result};
use crate::guard;

/// A database of the environment, by LMDB's number: the main one
/// (`Env::main_dbi`) or a named table.
pub type Dbi = ffi::MDB_dbi;

thread_local! {
    /// The environments (address, fork generation) on which this thread has
    /// a transaction open: `Env::lock_writer` refuses them.
    static OPEN: RefCell<Vec<(usize, u64)>> = const { RefCell::new(Vec::new()) };
}

/// The environments on which any thread has a transaction open.
static OPEN_ANYWHERE: parking_lot::Mutex<Vec<(usize, u64)>> = parking_lot::Mutex::new(Vec::new());

/// Whether any thread of this process has a transaction open on `env`.
pub fn open_in_any_thread(env: &Env) -> bool {
    OPEN_ANYWHERE.lock().contains(&mark(env))
}

fn mark(env: &Env) -> (usize, u64) {
    (std::ptr::from_ref(env) as usize, env.generation)
}

/// Whether this thread has a transaction open on `env`.
pub fn open_in_this_thread(env: &Env) -> bool {
    let me = mark(env);
    OPEN.with(|o| o.borrow().contains(&me))
}

/// A key of one database, for the read and write sets.
type Key = (Dbi, Vec<u8>);

/// One logged write: a value, or `None` for a deletion.
type Write = (Dbi, Vec<u8>, Option<Vec<u8>>);

/// A write transaction that lasts until it is committed or dropped (which
/// aborts it). Used only by the thread that began it.
pub struct WriteTxn {
    env: Arc<Env>,
    /// Null once ended (committed, aborted, or between an abort and a redo).
    raw: *mut ffi::MDB_txn,
    /// `mdb_txn_id` of `raw`.
    id: usize,
    cap: Option<usize>,
    owner: ThreadId,
    /// Every write, in order, for the redo.
    log: Vec<Write>,
    written: HashSet<Key>,
    /// What each key read from the database held, for keys read before this
    /// transaction wrote them.
    reads: HashMap<Key, Option<Vec<u8>>>,
    /// A range read or a count was made: those cannot be checked again.
    scanned: bool,
    /// The writer lock is held (and this thread marked in `OPEN`).
    held: bool,
}

// SAFETY: every method checks that it runs on the thread that began the
// transaction (LMDB's rule for write transactions, whose writer mutex
// belongs to that thread) before it touches `raw`, and `Drop` leaves the
// transaction alone on any other thread. The value itself may move between
// threads, as a Python object's contents do.
unsafe impl Send for WriteTxn {}

/// A copy of the bytes LMDB returned.
///
/// # Safety
/// `v` was filled by LMDB inside a transaction that is still active.
unsafe fn copied(v: &ffi::MDB_val) -> Vec<u8> {
    // SAFETY: per the function contract.
    unsafe { guard::slice(v) }.to_vec()
}

impl WriteTxn {
    /// Begin a write transaction on `env`: waits for the writer lock (this
    /// process) and for LMDB's writer mutex (every process). Call without
    /// the GIL. Refused if this thread already has one open on `env`.
    pub fn begin(env: &Arc<Env>, cap: Option<usize>) -> Result<WriteTxn> {
        let writer = env.lock_writer()?;
        // Held until the transaction ends, across calls: released in `Drop`.
        std::mem::forget(writer);
        OPEN.with(|o| o.borrow_mut().push(mark(env)));
        OPEN_ANYWHERE.lock().push(mark(env));
        let mut txn = WriteTxn {
            env: Arc::clone(env),
            raw: ptr::null_mut(),
            id: 0,
            cap,
            owner: std::thread::current().id(),
            log: Vec::new(),
            written: HashSet::new(),
            reads: HashMap::new(),
            scanned: false,
            held: true,
        };
        // Before anything is written, so that the map can be found from the
        // pages it reads (see `Env::check_write_of`).
        txn.env.find_map();
        txn.raw = txn.begin_raw()?;
        // SAFETY: `raw` is the live transaction just begun.
        txn.id = unsafe { ffi::mdb_txn_id(txn.raw) };
        Ok(txn)
    }

    /// A new LMDB write transaction, adopting another process's growth
    /// first if it meets one. The writer lock is held.
    fn begin_raw(&self) -> Result<*mut ffi::MDB_txn> {
        loop {
            self.env.allocate_map()?;
            // SAFETY: this transaction holds the writer lock.
            let env = unsafe { self.env.raw_env_writer()? };
            let mut t: *mut ffi::MDB_txn = ptr::null_mut();
            // SAFETY: `env` is open and stays so while the writer lock is
            // held; no write transaction of it is active (the lock is ours
            // and `raw` is null), and this thread has none of another env
            // open through this path.
            let rc = unsafe { ffi::mdb_txn_begin(env, ptr::null_mut(), 0, &mut t) };
            match rc {
                0 => return Ok(t),
                ffi::MDB_MAP_RESIZED => self.env.adopt_locked()?,
                rc => return Err(Error::lmdb(rc, self.env.what("begin a transaction"))),
            }
        }
    }

    /// Refuse a child after fork(), any thread but the owner, and an ended
    /// transaction.
    pub fn check(&self) -> Result<()> {
        if self.env.generation != fork_generation() {
            return Err(Error::TxnForked);
        }
        if std::thread::current().id() != self.owner {
            return Err(Error::TxnThread);
        }
        if self.raw.is_null() {
            return Err(Error::lmdb(
                libc::EINVAL,
                self.env.what("use an ended transaction"),
            ));
        }
        Ok(())
    }

    /// End the LMDB transaction after a failure; the writer lock goes when
    /// the value drops. Returns `e`.
    fn fail(&mut self, e: Error) -> Error {
        if matches!(e, Error::Damaged { .. }) {
            // Abandoned, never aborted (see guard.rs): LMDB may still have
            // temporary cursors of the jumped-over frames linked to it.
            self.raw = ptr::null_mut();
            self.env.abandon_write(&e);
        } else {
            self.abort_raw();
        }
        e
    }

    fn abort_raw(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: a live write transaction of this thread, ended once.
            unsafe { ffi::mdb_txn_abort(self.raw) };
            self.raw = ptr::null_mut();
        }
    }

    /// The stored bytes of `key` in `db`, as this transaction sees them (its
    /// own writes included), copied.
    fn raw_get(&self, db: Dbi, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if !crate::key_len_ok(key.len()) {
            return Ok(None);
        }
        let mut k = guard::val(key);
        let mut v = guard::empty_val();
        // SAFETY: live transaction of this thread; `k` points to `key`.
        let rc = unsafe {
            guard::get(self.raw, db, None, &mut k, &mut v, None, || {
                self.env.what("read")
            })
        }?;
        match rc {
            // SAFETY: filled by mdb_get inside the live transaction.
            0 => Ok(Some(unsafe { copied(&v) })),
            ffi::MDB_NOTFOUND => Ok(None),
            rc => Err(Error::lmdb(rc, self.env.what("read"))),
        }
    }

    /// The value of `key` in `db` (a copy), or `None`.
    pub fn get(&mut self, db: Dbi, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check()?;
        // LMDB's search must not meet a page that is not whole.
        self.checked(db, key, false)?;
        // Spine rule 3: a copy; no LMDB memory leaves this call.
        let found = self.raw_get(db, key).map_err(|e| self.fail(e))?;
        let k = (db, key.to_vec());
        if !self.written.contains(&k) {
            // What it read is kept (to redo the transaction after a growth),
            // in a table that grows with the reads.
            let grown = self.reads.try_reserve(1).is_ok();
            self.grown(grown, "one more read of a transaction")?;
            self.reads.entry(k).or_insert_with(|| found.clone());
        }
        Ok(found)
    }

    /// Store `value` under `key` in `db`. The key must be one LMDB can hold
    /// (the caller checks its length).
    pub fn put(&mut self, db: Dbi, key: &[u8], value: &[u8]) -> Result<()> {
        self.check()?;
        self.room_to_log()?;
        self.checked(db, key, false)?;
        self.log.push((db, key.to_vec(), Some(value.to_vec())));
        self.written.insert((db, key.to_vec()));
        let rc = self.raw_put(db, key, value).map_err(|e| self.fail(e))?;
        self.after_write(rc)
    }

    /// Delete `key` from `db`; whether it was there.
    pub fn delete(&mut self, db: Dbi, key: &[u8]) -> Result<bool> {
        if self.get(db, key)?.is_none() {
            return Ok(false);
        }
        self.room_to_log()?;
        self.checked(db, key, true)?;
        self.log.push((db, key.to_vec(), None));
        self.written.insert((db, key.to_vec()));
        let rc = self.raw_del(db, key).map_err(|e| self.fail(e))?;
        self.after_write(rc)?;
        Ok(true)
    }

    /// Room for one more write in the log and the set of written keys,
    /// which grow with the transaction (each doubles, tens of MiB at a
    /// million writes): with no memory for it, the write is refused before
    /// anything changed, and the transaction goes on.
    fn room_to_log(&mut self) -> Result<()> {
        let grown = self.log.try_reserve(1).is_ok() && self.written.try_reserve(1).is_ok();
        self.grown(grown, "one more write of a transaction")
    }

    /// After a list of the transaction asked for room (`grown`: it got it),
    /// the memory reserve again: a growth that only fit by taking it leaves
    /// nothing for the next small allocation (see reserve.rs). Without
    /// either, `NoMemory` for `what`, found before anything changed: the
    /// transaction goes on.
    fn grown(&self, grown: bool, what: &str) -> Result<()> {
        if grown && crate::reserve::ensure() {
            return Ok(());
        }
        Err(Error::NoMemory {
            what: self.env.what(what),
        })
    }

    /// Check the pages a write of `key` may change before it changes any
    /// (see `Env::check_write_of`); damage ends the transaction as a failure
    /// does (nothing of it is written).
    fn checked(&mut self, db: Dbi, key: &[u8], del: bool) -> Result<()> {
        match self.env.check_write_of(db, key, del) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.abort_raw();
                Err(e)
            }
        }
    }

    fn raw_put(&self, db: Dbi, key: &[u8], value: &[u8]) -> Result<c_int> {
        let mut k = guard::val(key);
        let mut v = guard::val(value);
        // SAFETY: live write transaction of this thread; LMDB copies both.
        unsafe { guard::put_raw(self.raw, db, &mut k, &mut v, || self.env.what("write")) }
    }

    fn raw_del(&self, db: Dbi, key: &[u8]) -> Result<c_int> {
        let mut k = guard::val(key);
        // SAFETY: live write transaction of this thread.
        match unsafe { guard::del_raw(self.raw, db, &mut k, || self.env.what("delete")) }? {
            ffi::MDB_NOTFOUND => Ok(0),
            rc => Ok(rc),
        }
    }

    fn after_write(&mut self, rc: c_int) -> Result<()> {
        match rc {
            0 => Ok(()),
            ffi::MDB_MAP_FULL => self.grow_and_redo(),
            rc => Err(self.fail(Error::lmdb(rc, self.env.what("write")))),
        }
    }

    /// MDB_MAP_FULL: abort, grow the map, begin again, check that what was
    /// read still holds (see the module's notes) and replay the writes.
    /// Call without the GIL: growth waits for other threads' reads.
    fn grow_and_redo(&mut self) -> Result<()> {
        loop {
            self.abort_raw();
            #[cfg(test)]
            tests::BETWEEN.with(|h| {
                if let Some(f) = h.borrow_mut().as_mut() {
                    f(&self.env);
                }
            });
            self.env.grow_locked(self.cap)?;
            self.raw = self.begin_raw()?;
            // SAFETY: `raw` is the live transaction just begun.
            let id = unsafe { ffi::mdb_txn_id(self.raw) };
            if id != self.id {
                self.validate().map_err(|e| self.fail(e))?;
                self.id = id;
            }
            match self.replay().map_err(|e| self.fail(e))? {
                0 => return Ok(()),
                ffi::MDB_MAP_FULL => continue,
                rc => return Err(self.fail(Error::lmdb(rc, self.env.what("write")))),
            }
        }
    }

    /// Another writer committed while this transaction was undone: what it
    /// read must read the same now.
    fn validate(&self) -> Result<()> {
        if self.scanned {
            return Err(Error::Conflict);
        }
        for ((db, key), was) in &self.reads {
            self.env.check_write_of(*db, key, false)?;
            if self.raw_get(*db, key)? != *was {
                return Err(Error::Conflict);
            }
        }
        Ok(())
    }

    fn replay(&self) -> Result<c_int> {
        for (db, key, value) in &self.log {
            let rc = match value {
                Some(v) => self.raw_put(*db, key, v)?,
                None => self.raw_del(*db, key)?,
            };
            if rc != 0 {
                return Ok(rc);
            }
        }
        Ok(0)
    }

    /// The number of entries of `db`, this transaction's writes included.
    pub fn entries(&mut self, db: Dbi) -> Result<usize> {
        self.check()?;
        self.scanned = true;
        let mut st = std::mem::MaybeUninit::<ffi::MDB_stat>::zeroed();
        // SAFETY: live transaction and dbi; mdb_stat fills the struct.
        let rc = unsafe {
            guard::stat(self.raw, db, st.as_mut_ptr(), || {
                self.env.what("count the entries")
            })
        }
        .map_err(|e| self.fail(e))?;
        if rc != 0 {
            return Err(self.fail(Error::lmdb(rc, self.env.what("stat"))));
        }
        // SAFETY: filled above.
        Ok(unsafe { st.assume_init() }.ms_entries)
    }

    /// The entries of `db` within `bounds`, in key order (reversed if
    /// `reverse`), copied.
    pub fn range(
        &mut self,
        db: Dbi,
        bounds: &Bounds,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check()?;
        self.scanned = true;
        // The key a walk begins with is searched for: the pages on its way
        // are checked first, as for `get`.
        let from = if reverse {
            &bounds.upper
        } else {
            &bounds.lower
        };
        if let Some(key) = from.as_deref().filter(|k| crate::key_len_ok(k.len())) {
            self.checked(db, key, false)?;
        }
        match self.walk(db, bounds, reverse) {
            Err(e @ Error::NoMemory { .. }) => Err(e),
            out => out.map_err(|e| self.fail(e)),
        }
    }

    fn walk(&self, db: Dbi, bounds: &Bounds, reverse: bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        if bounds.is_empty() {
            return Ok(out);
        }
        let mut cursor: *mut ffi::MDB_cursor = ptr::null_mut();
        // SAFETY: live transaction and dbi; the cursor is closed below,
        // before this function returns.
        let rc = unsafe { ffi::mdb_cursor_open(self.raw, db, &mut cursor) };
        if rc != 0 {
            return Err(Error::lmdb(rc, self.env.what("open a cursor")));
        }
        // The entries a walk steps to are in pages no search checked: those
        // in the map are checked as a read transaction's are (LMDB's own
        // copies of the pages this transaction changed are not). The writer
        // lock, held, keeps the map where it is.
        let mut map = self.env.map_view();
        map.outside = 1;
        let mut step = |key: &[u8], op: ffi::MDB_cursor_op| -> Result<Option<(Vec<u8>, Vec<u8>)>> {
            let mut k = guard::val(key);
            let mut v = guard::empty_val();
            // SAFETY: open cursor of the live transaction; `k` points to
            // `key`, which LMDB reads before replacing `k`; `map` describes
            // the transaction's map (see above).
            let rc = unsafe {
                guard::cursor_get(cursor, &mut k, &mut v, op, None, Some(&mut map), || {
                    self.env.what("scan")
                })
            }?;
            match rc {
                // SAFETY: filled inside the live transaction; copied now.
                0 => Ok(Some(unsafe { (copied(&k), copied(&v)) })),
                ffi::MDB_NOTFOUND => Ok(None),
                rc => Err(Error::lmdb(rc, self.env.what("scan"))),
            }
        };
        // The copies grow with the table: each entry asks for its room
        // first, so that the limit ends the scan with an error.
        let room = |out: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<()> {
            self.grown(out.try_reserve(1).is_ok(), "a transaction's scan")
        };
        let result = (|| {
            if !reverse {
                let mut at = match &bounds.lower {
                    Some(lo) => step(lo, ffi::MDB_SET_RANGE)?,
                    None => step(&[], ffi::MDB_FIRST)?,
                };
                while let Some((k, v)) = at {
                    if bounds.upper.as_deref().is_some_and(|u| k.as_slice() >= u) {
                        break;
                    }
                    room(&mut out)?;
                    out.push((k, v));
                    at = step(&[], ffi::MDB_NEXT)?;
                }
            } else {
                let mut at = match &bounds.upper {
                    Some(up) => match step(up, ffi::MDB_SET_RANGE)? {
                        Some(_) => step(&[], ffi::MDB_PREV)?,
                        None => step(&[], ffi::MDB_LAST)?,
                    },
                    None => step(&[], ffi::MDB_LAST)?,
                };
                while let Some((k, v)) = at {
                    if bounds.lower.as_deref().is_some_and(|lo| k.as_slice() < lo) {
                        break;
                    }
                    room(&mut out)?;
                    out.push((k, v));
                    at = step(&[], ffi::MDB_PREV)?;
                }
            }
            Ok(())
        })();
        if !matches!(result, Err(Error::Damaged { .. })) {
            // SAFETY: opened above, closed once, while the transaction
            // lives (a damaged one is abandoned with the transaction).
            unsafe { ffi::mdb_cursor_close(cursor) };
        }
        result.map(|()| out)
    }

    /// Commit every write, growing the map if the commit needs it. Call
    /// without the GIL.
    pub fn commit(mut self) -> Result<()> {
        self.check()?;
        loop {
            // SAFETY: live write transaction of this thread; LMDB frees it
            // whatever the outcome but damage, when it is abandoned.
            let rc = unsafe { guard::commit_raw(self.raw, || self.env.what("commit")) };
            self.raw = ptr::null_mut();
            let rc = rc.inspect_err(|e| self.env.abandon_write(e))?;
            match rc {
                0 => return Ok(()),
                ffi::MDB_MAP_FULL => self.grow_and_redo()?,
                rc => return Err(Error::lmdb(rc, self.env.what("commit"))),
            }
        }
    }

    /// Map growths made meanwhile are in `Env::take_growths`.
    pub fn env(&self) -> &Arc<Env> {
        &self.env
    }
}

impl Drop for WriteTxn {
    /// Abort what is open and release the writer lock. In a child after
    /// fork() nothing is touched (the transaction and its locks are the
    /// parent's), nor on a thread other than the owner (LMDB's writer mutex
    /// belongs to the owner thread): both are left as they are.
    fn drop(&mut self) {
        if self.env.generation != fork_generation() || std::thread::current().id() != self.owner {
            return;
        }
        self.abort_raw();
        if self.held {
            self.held = false;
            let me = mark(&self.env);
            OPEN.with(|o| {
                let mut o = o.borrow_mut();
                if let Some(i) = o.iter().position(|m| *m == me) {
                    o.swap_remove(i);
                }
            });
            let mut anywhere = OPEN_ANYWHERE.lock();
            if let Some(i) = anywhere.iter().position(|m| *m == me) {
                anywhere.swap_remove(i);
            }
            drop(anywhere);
            // SAFETY: `begin` locked the writer mutex through `lock_writer`
            // and forgot the guard; this is the one unlock.
            unsafe { self.env.unlock_writer() };
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::buffer::Sorted;
    use crate::env::EnvOptions;

    type Hook = Box<dyn FnMut(&Env)>;

    thread_local! {
        /// Runs between the abort and the redo of a growth, on the
        /// transaction's thread: stands in for another process's commit.
        pub(crate) static BETWEEN: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("los-txn-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    fn small(name: &str) -> (Arc<Env>, std::path::PathBuf) {
        let p = tmp(name);
        let opts = EnvOptions {
            map_size: 1 << 20,
            ..EnvOptions::default()
        };
        (Env::acquire(&p, &opts).unwrap(), p)
    }

    fn put(env: &Env, k: &[u8], v: &[u8]) {
        env.commit(&Sorted::last_write_wins(vec![(k, Some(v))]), 0, None)
            .unwrap();
    }

    fn read(env: &Env, key: &[u8]) -> Option<Vec<u8>> {
        let g = env.gate.try_shared().unwrap();
        let txn = env.begin_read(g).unwrap().unwrap();
        txn.get(key).unwrap().map(|v| v.to_vec())
    }

    /// A commit made as another process would make it: straight through
    /// LMDB, while the transaction is undone (the writer lock is ours).
    fn foreign_commit(key: &'static [u8], value: &'static [u8]) -> Hook {
        let mut done = false;
        Box::new(move |env: &Env| {
            if done {
                return;
            }
            done = true;
            // SAFETY: the hook runs on the transaction's thread, which holds
            // the writer lock, with no transaction active.
            unsafe {
                let raw = env.raw_env_writer().unwrap();
                let mut t = ptr::null_mut();
                assert_eq!(ffi::mdb_txn_begin(raw, ptr::null_mut(), 0, &mut t), 0);
                let (mut k, mut v) = (guard::val(key), guard::val(value));
                assert_eq!(ffi::mdb_put(t, env.main_dbi(), &mut k, &mut v, 0), 0);
                assert_eq!(ffi::mdb_txn_commit(t), 0);
            }
        })
    }

    fn fill(t: &mut WriteTxn, db: Dbi) -> Result<()> {
        for i in 0..400u32 {
            t.put(db, format!("big{i:04}").as_bytes(), &[9u8; 8000])?;
        }
        Ok(())
    }

    #[test]
    fn reads_its_writes_commits_all_or_nothing() {
        let (env, p) = small("basic");
        put(&env, b"a", b"1");
        let db = env.main_dbi();
        let mut t = WriteTxn::begin(&env, None).unwrap();
        assert_eq!(t.get(db, b"a").unwrap(), Some(b"1".to_vec()));
        t.put(db, b"b", b"2").unwrap();
        assert!(t.delete(db, b"a").unwrap());
        assert!(!t.delete(db, b"zz").unwrap());
        assert_eq!(t.get(db, b"a").unwrap(), None);
        assert_eq!(t.entries(db).unwrap(), 1);
        assert!(open_in_this_thread(&env));
        assert!(matches!(
            WriteTxn::begin(&env, None),
            Err(Error::InTransaction)
        ));
        drop(t);
        assert!(!open_in_this_thread(&env));
        assert_eq!(read(&env, b"a"), Some(b"1".to_vec()), "dropped: aborted");
        let mut t = WriteTxn::begin(&env, None).unwrap();
        t.put(db, b"b", b"2").unwrap();
        t.commit().unwrap();
        assert_eq!(read(&env, b"b"), Some(b"2".to_vec()));
        env.release().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    /// Under `failing_above(limit)`, call `f` with 0, 1, 2, ... until it
    /// fails; how many calls succeeded and the error.
    fn until_no_memory(limit: usize, mut f: impl FnMut(u32) -> Result<()>) -> (u32, Error) {
        crate::test_alloc::failing_above(limit, || {
            for i in 0..1_000_000 {
                if let Err(e) = f(i) {
                    return (i, e);
                }
            }
            panic!("never refused");
        })
    }

    #[test]
    fn no_memory_for_its_log_refuses_one_write_and_the_transaction_goes_on() {
        let (env, p) = small("no-memory-write");
        let db = env.main_dbi();
        let mut t = WriteTxn::begin(&env, None).unwrap();
        let key = |i: u32| format!("k{i:06}").into_bytes();
        // The log of writes doubles past 64 KiB after about a thousand.
        let (done, e) = until_no_memory(64 << 10, |i| t.put(db, &key(i), b"v"));
        assert!(matches!(e, Error::NoMemory { .. }), "{e:?}");
        assert!(done > 100, "{done}");
        assert_eq!(t.get(db, &key(done)).unwrap(), None, "the refused write");
        t.put(db, b"after", b"1").unwrap();
        t.commit().unwrap();
        assert_eq!(read(&env, &key(done - 1)), Some(b"v".to_vec()));
        assert_eq!(read(&env, &key(done)), None);
        assert_eq!(read(&env, b"after"), Some(b"1".to_vec()));
        env.release().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn no_memory_for_its_reads_and_scans_is_an_error_and_the_transaction_goes_on() {
        let (env, p) = small("no-memory-read");
        let db = env.main_dbi();
        let key = |i: u32| format!("k{i:06}").into_bytes();
        let items: Vec<(Vec<u8>, Vec<u8>)> = (0..5_000).map(|i| (key(i), b"v".to_vec())).collect();
        env.commit(
            &Sorted::last_write_wins(items.iter().map(|(k, v)| (&k[..], Some(&v[..]))).collect()),
            0,
            None,
        )
        .unwrap();
        let mut t = WriteTxn::begin(&env, None).unwrap();
        // A scan copies every entry into one list of 5,000.
        let scan = crate::test_alloc::failing_above(64 << 10, || {
            t.range(db, &Bounds::new(None, None, None), false)
        });
        assert!(matches!(scan, Err(Error::NoMemory { .. })), "{scan:?}");
        // What each read saw is kept in a table that grows with the reads.
        let (done, e) = until_no_memory(64 << 10, |i| t.get(db, &key(i)).map(drop));
        assert!(matches!(e, Error::NoMemory { .. }), "{e:?}");
        assert!(done > 100, "{done}");
        assert_eq!(
            t.range(db, &Bounds::new(None, None, None), false)
                .unwrap()
                .len(),
            5_000
        );
        t.put(db, b"after", b"1").unwrap();
        t.commit().unwrap();
        assert_eq!(read(&env, b"after"), Some(b"1".to_vec()));
        env.release().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn ranges_in_both_directions() {
        let (env, p) = small("range");
        let db = env.main_dbi();
        let mut t = WriteTxn::begin(&env, None).unwrap();
        for k in [b"a1", b"a2", b"b1", b"b2", b"c1"] {
            t.put(db, k, k).unwrap();
        }
        let keys = |t: &mut WriteTxn, b: Bounds, rev| -> Vec<Vec<u8>> {
            t.range(db, &b, rev)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        let pre = |p: &[u8]| Bounds::new(Some(p.to_vec()), None, None);
        assert_eq!(keys(&mut t, pre(b"b"), false), [b"b1", b"b2"]);
        assert_eq!(keys(&mut t, pre(b"b"), true), [b"b2", b"b1"]);
        assert_eq!(keys(&mut t, Bounds::default(), true)[0], b"c1");
        assert_eq!(keys(&mut t, pre(b"c"), true), [b"c1"]);
        assert!(keys(&mut t, pre(b"d"), false).is_empty());
        drop(t);
        env.release().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn grows_and_redoes_its_writes() {
        let (env, p) = small("grow");
        put(&env, b"n", b"0");
        let db = env.main_dbi();
        let mut t = WriteTxn::begin(&env, None).unwrap();
        assert_eq!(t.get(db, b"n").unwrap(), Some(b"0".to_vec()));
        t.put(db, b"n", b"1").unwrap();
        fill(&mut t, db).unwrap();
        t.commit().unwrap();
        assert!(!env.take_growths().is_empty());
        assert_eq!(read(&env, b"n"), Some(b"1".to_vec()));
        assert_eq!(read(&env, b"big0399"), Some(vec![9u8; 8000]));
        env.release().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn a_commit_elsewhere_during_growth_to_a_key_read_is_a_conflict() {
        let (env, p) = small("conflict");
        put(&env, b"n", b"0");
        let db = env.main_dbi();
        let mut t = WriteTxn::begin(&env, None).unwrap();
        t.get(db, b"n").unwrap();
        t.put(db, b"n", b"1").unwrap();
        BETWEEN.with(|h| *h.borrow_mut() = Some(foreign_commit(b"n", b"5")));
        let err = fill(&mut t, db).unwrap_err();
        BETWEEN.with(|h| *h.borrow_mut() = None);
        assert!(matches!(err, Error::Conflict), "{err:?}");
        drop(t);
        assert_eq!(read(&env, b"n"), Some(b"5".to_vec()), "the other commit");
        assert_eq!(read(&env, b"big0000"), None, "nothing of the transaction");
        env.release().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn a_commit_elsewhere_to_other_keys_is_serialised_before_it() {
        let (env, p) = small("no-conflict");
        put(&env, b"n", b"0");
        let db = env.main_dbi();
        let mut t = WriteTxn::begin(&env, None).unwrap();
        t.get(db, b"n").unwrap();
        t.put(db, b"n", b"1").unwrap();
        // Read after its own write: no dependency on the database.
        t.put(db, b"own", b"x").unwrap();
        t.get(db, b"own").unwrap();
        BETWEEN.with(|h| *h.borrow_mut() = Some(foreign_commit(b"other", b"7")));
        fill(&mut t, db).unwrap();
        BETWEEN.with(|h| *h.borrow_mut() = None);
        t.commit().unwrap();
        assert_eq!(read(&env, b"n"), Some(b"1".to_vec()));
        assert_eq!(read(&env, b"other"), Some(b"7".to_vec()));
        assert_eq!(read(&env, b"big0399"), Some(vec![9u8; 8000]));
        env.release().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn a_range_read_and_a_commit_elsewhere_is_a_conflict() {
        let (env, p) = small("scan-conflict");
        let db = env.main_dbi();
        let mut t = WriteTxn::begin(&env, None).unwrap();
        t.range(db, &Bounds::default(), false).unwrap();
        BETWEEN.with(|h| *h.borrow_mut() = Some(foreign_commit(b"other", b"7")));
        let err = fill(&mut t, db).unwrap_err();
        BETWEEN.with(|h| *h.borrow_mut() = None);
        assert!(matches!(err, Error::Conflict), "{err:?}");
        drop(t);
        env.release().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn refused_on_another_thread() {
        let (env, p) = small("thread");
        let db = env.main_dbi();
        let t = WriteTxn::begin(&env, None).unwrap();
        let mut t = std::thread::spawn(move || {
            let mut t = t;
            assert!(matches!(t.get(db, b"k"), Err(Error::TxnThread)));
            t
        })
        .join()
        .unwrap();
        t.put(db, b"k", b"v").unwrap();
        t.commit().unwrap();
        assert_eq!(read(&env, b"k"), Some(b"v".to_vec()));
        env.release().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }
}
