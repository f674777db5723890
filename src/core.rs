//! A store's core and its lifecycle: the order in which the buffer, the
//! engine and the commits are used (flush, background commits, reads that
//! see the buffer, close, the fork hooks), and the fork-aware handle through
//! which the Python surface reaches the core. No `#[pyclass]` here.
//!
//! Locks and the GIL: the buffer mutex is held only for plain Rust work and
//! may be taken with the GIL held. The commit lock is held across a commit
//! that runs with the GIL released, so it is waited for only with the GIL
//! released too (spine rule 2, see docs/architecture.md). No Python code
//! (pickling, logging) runs under either.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::buffer::{Bytes, Lookup, Sorted, Value, WriteBuffer};
use engine::{Bounds, DbStat, Env, EnvInfo, EnvOptions, Table};
use parking_lot::{Mutex, MutexGuard};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::compress::Compression;
use crate::errors::{add_note, to_py, StoreError};
use crate::exit;
use crate::keys::KeyPolicy;
use crate::options::Settings;
use crate::values::{self, Serializer};

/// The `bytes` object `pickle.dumps` returned, held by the buffer as it is:
/// no copy, whatever the size. Commits read it with the GIL released, which
/// is sound because a `bytes` object never changes and this reference keeps
/// it alive.
#[derive(Debug)]
struct HeldPickle {
    /// Owns the memory `ptr` points into; never read, only kept.
    _obj: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: `ptr`/`len` point into an immutable bytes object kept alive by
// `obj`; reading them needs no lock, and `Py` itself is Send + Sync (its drop
// without the GIL is deferred by PyO3).
unsafe impl Send for HeldPickle {}
// SAFETY: as above: shared reads of immutable memory.
unsafe impl Sync for HeldPickle {}

impl AsRef<[u8]> for HeldPickle {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see the Send/Sync impls: valid for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

pub(crate) fn held(pickled: Bound<'_, PyBytes>) -> Bytes {
    let data = pickled.as_bytes();
    let (ptr, len) = (data.as_ptr(), data.len());
    Arc::new(HeldPickle {
        _obj: pickled.unbind(),
        ptr,
        len,
    })
}

/// The buffer and what belongs with it, under one mutex.
struct Buffered {
    buf: WriteBuffer,
    /// Why the last background commit failed; its batch is back in `buf`.
    /// The next write or flush reports it.
    failed: Option<StoreError>,
    /// A read already logged that it could not commit the buffer; cleared
    /// by the next commit that succeeds, so each failure is logged once.
    read_flush_logged: bool,
    /// A background commit is running and takes the batches queued behind
    /// it before it ends (see `Core::start_commit`).
    chain: bool,
}

impl Buffered {
    pub(crate) fn new(batch_size: usize) -> Self {
        Buffered {
            buf: WriteBuffer::with_capacity(batch_size.min(1 << 16)),
            failed: None,
            read_flush_logged: false,
            chain: false,
        }
    }
}

/// One open store in this process: its buffer, its environment, its
/// settings and where it is in its close.
pub struct Core {
    /// This core's own `Arc`, handed to background commits.
    me: std::sync::Weak<Core>,
    env: Arc<Env>,
    buffered: Mutex<Buffered>,
    /// One commit of this store's buffer at a time, in order. A background
    /// commit holds it from the write that starts it until it ends.
    commit_lock: Mutex<()>,
    /// Threads waiting for `commit_lock`: while there are any, full batches
    /// are not queued behind a running commit, so that its chain ends.
    commit_waiters: AtomicUsize,
    close: CloseState,
    pub(crate) keys: KeyPolicy,
    pub(crate) batch_size: usize,
    pub(crate) max_buffer_bytes: usize,
    pub(crate) autoflush_on_read: bool,
    pub(crate) max_map_size: Option<usize>,
    pub(crate) protocol: i32,
    pub(crate) serializer: Serializer,
    pub(crate) compression: Compression,
    pub(crate) readonly: bool,
    pub(crate) path: String,
    pub(crate) fs_path: PathBuf,
    options: EnvOptions,
    /// The constructor's keyword arguments, for pickling.
    pub(crate) init_kwargs: Py<PyDict>,
    /// Fork generation this core belongs to (see `engine::fork_generation`).
    generation: u64,
    /// The table this store reads and commits: the main one, or `table=`.
    table: Table,
}

/// Where a store is in its close, in one place.
#[derive(Default)]
struct CloseState {
    /// Set by `close()`, under the buffer mutex: a write checks it under
    /// that mutex and lands in the buffer atomically with the check, so the
    /// final commit sees every write that was let in. Read without a lock by
    /// every other call.
    started: AtomicBool,
    /// One closer at a time; true once the close is done.
    done: Mutex<bool>,
}

impl Core {
    /// Open the environment and build the core (its buffer empty).
    pub(crate) fn open(py: Python<'_>, s: Settings) -> PyResult<Arc<Core>> {
        let env = acquire_env(py, &s.fs_path, &s.options)?;
        let create = s.options.create && !s.options.readonly;
        let table = match open_table(py, &env, s.table.as_deref(), create) {
            Ok(t) => t,
            Err(e) => {
                // The open failed: this store never counts as one of the
                // environment's.
                let _ = py.detach(|| env.release());
                return Err(e);
            }
        };
        let core = Arc::new_cyclic(|me| Core {
            me: me.clone(),
            env,
            buffered: Mutex::new(Buffered::new(s.batch_size)),
            commit_lock: Mutex::new(()),
            commit_waiters: AtomicUsize::new(0),
            close: CloseState::default(),
            keys: s.keys,
            batch_size: s.batch_size,
            max_buffer_bytes: s.max_buffer_bytes,
            autoflush_on_read: s.autoflush_on_read,
            max_map_size: s.max_map_size,
            protocol: s.protocol,
            serializer: s.serializer,
            compression: s.compression,
            readonly: s.options.readonly,
            path: s.path,
            fs_path: s.fs_path,
            options: s.options,
            init_kwargs: s.init_kwargs,
            generation: engine::fork_generation(),
            table,
        });
        register_core(&core);
        Ok(core)
    }

    /// The settings this core was opened with, to open another like it.
    pub(crate) fn settings(&self, py: Python<'_>) -> Settings {
        Settings {
            fs_path: self.fs_path.clone(),
            path: self.path.clone(),
            batch_size: self.batch_size,
            max_buffer_bytes: self.max_buffer_bytes,
            autoflush_on_read: self.autoflush_on_read,
            max_map_size: self.max_map_size,
            protocol: self.protocol,
            serializer: self.serializer.clone_ref(py),
            compression: self.compression,
            keys: self.keys.clone(),
            options: self.options.clone(),
            init_kwargs: self.init_kwargs.clone_ref(py),
            table: self.table.name().map(str::to_owned),
        }
    }

    /// `close()` has begun (or is done): every new call raises
    /// `ClosedError`.
    pub(crate) fn is_closing(&self) -> bool {
        self.close.started.load(Ordering::Acquire)
    }
}

/// Automatic commits run in the background only for batches of at least
/// this many entries, on a store that syncs at commit. Below it, or without
/// the fsync, the commit is shorter than handing it to another thread and
/// waking that thread (measured on 2 cores: batch_size 100 was 15% slower in
/// the background, with sync or without; 300 without sync, 25% slower; 1000
/// with sync, 40% faster).
const BACKGROUND_MIN_BATCH: usize = 256;

/// Batches in flight at most (the one being committed and those queued
/// behind it) before a writer waits for the commit instead of queueing.
const MAX_QUEUED: usize = 16;

/// `get_into` copies at least this many bytes with the GIL released: below
/// it, handing the GIL over costs more than the copy.
const BIG_COPY: usize = 64 * 1024;

/// The table a store opens: `name`, or the main one (refused on a file that
/// has tables). Spine rule 1: a table is created in the engine, with the GIL
/// released.
fn open_table(py: Python<'_>, env: &Env, name: Option<&str>, create: bool) -> PyResult<Table> {
    match name {
        Some(name) => py.detach(|| env.open_table(name, create)).map_err(to_py),
        None => {
            py.detach(|| env.check_main()).map_err(to_py)?;
            Ok(Table::main())
        }
    }
}

/// `lmdb_object_store.tables(path)`: the table names of the file (see
/// `Env::tables_at`). Spine rule 2: the open and the read wait with the GIL
/// released.
pub fn list_tables(
    py: Python<'_>,
    path: &std::path::Path,
    options: &EnvOptions,
) -> PyResult<Vec<String>> {
    py.detach(|| Env::tables_at(path, options)).map_err(to_py)
}

/// Every open store's core, so that a fork can flush them all first.
static CORES: Mutex<Vec<std::sync::Weak<Core>>> = Mutex::new(Vec::new());

fn register_core(core: &Arc<Core>) {
    let mut cores = CORES.lock();
    cores.retain(|w| w.strong_count() > 0);
    cores.push(Arc::downgrade(core));
}

/// Commit every open store's buffer (`_flush_all()`; `before_fork` before a
/// fork): after any commit running in the background. A store being closed
/// is left to its close; a commit that fails is printed and its writes stay
/// buffered.
pub fn flush_all(py: Python<'_>) {
    let cores: Vec<Arc<Core>> = CORES.lock().iter().filter_map(|w| w.upgrade()).collect();
    for c in cores {
        if c.generation != engine::fork_generation() || c.readonly {
            continue;
        }
        if c.is_closing() {
            // Its close commits; only wait for a commit under way, so that
            // no commit thread is mid-way through anything at a fork.
            if let Ok(g) = c.lock_commit(py) {
                drop(g);
            }
            continue;
        }
        if let Err(e) = c.flush(py) {
            e.print(py);
        }
    }
}

/// Forks under way in this process (`before_fork` ran, the matching
/// `after_fork_in_parent` not yet). While it is not zero, writes wait before
/// they enter a buffer: the buffers committed before the fork stay empty
/// until `fork()` has copied the process, so a write acknowledged before the
/// fork is in the database the child reads, and none is left in a buffer
/// that only the parent will commit.
static FORKS_IN_PROGRESS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread runs the before-fork commit: a write it makes (a logging
    /// handler that writes to a store) must not wait for its own fork.
    static IN_FORK_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Before `fork()` (`os.register_at_fork(before=...)`): hold new writes at
/// the door, then commit every open store's buffer, after any commit
/// running in the background. A commit that fails is printed and its writes
/// stay buffered in the parent only (the child starts with empty buffers).
pub fn before_fork(py: Python<'_>) {
    // Writers check the count under their store's buffer mutex, and each
    // commit below takes that mutex after this increment: a write either
    // entered its buffer before the commit took the batch, or waits.
    FORKS_IN_PROGRESS.fetch_add(1, Ordering::SeqCst);
    IN_FORK_HOOK.with(|f| f.set(true));
    flush_all(py);
    IN_FORK_HOOK.with(|f| f.set(false));
}

/// In the parent after `fork()` (also when it failed): let writes in again.
pub fn after_fork_in_parent() {
    FORKS_IN_PROGRESS.fetch_sub(1, Ordering::SeqCst);
}

/// The exit hook (`atexit`): wait until no other thread is inside a store
/// call and keep them out from then on (see `exit`), then commit every open
/// store's buffer. A commit that fails is reported on stderr with the number
/// of writes lost, once: those writes are dropped, so that the store's
/// close during finalization does not report them again.
pub fn flush_at_exit(py: Python<'_>) {
    let stuck = exit::begin_exit(py);
    if stuck > 0 {
        report(
            py,
            &format!(
                "{stuck} thread(s) were still inside a store call {} s after interpreter exit \
                 began; committing the buffers anyway",
                exit::EXIT_WAIT.as_secs()
            ),
        );
    }
    let cores: Vec<Arc<Core>> = CORES.lock().iter().filter_map(|w| w.upgrade()).collect();
    for c in cores {
        // A store being closed is left to its close (or, if that close gave
        // up, to its drop): no thread is inside a call that could finish it
        // now unless it is stuck, and then waiting for it would hang.
        if c.generation != engine::fork_generation() || c.readonly || c.is_closing() {
            continue;
        }
        let flushed = if engine::txn::open_in_any_thread(&c.env)
            && !engine::txn::open_in_this_thread(&c.env)
            && c.buffered.lock().buf.pending() > 0
        {
            // A thread stuck inside a transaction block holds the writer:
            // the commit would wait for it forever.
            Err(StoreError::TransactionOpenAtExit.into_pyerr())
        } else {
            c.flush(py)
        };
        if let Err(error) = flushed {
            let lost = LostFlush {
                unsaved: c.buffered.lock().buf.pending(),
                error,
            };
            report(py, &lost.message(py, &c.path, "at interpreter exit"));
            c.buffered.lock().buf = WriteBuffer::with_capacity(0);
        }
    }
}

/// In the child after `fork()`: forget the parent's list (its lock may be
/// held by a thread that does not exist here).
pub fn after_fork_in_child() {
    // Only the forking thread lives on, and it is not inside another fork.
    FORKS_IN_PROGRESS.store(0, Ordering::SeqCst);
    IN_FORK_HOOK.with(|f| f.set(false));
    if CORES.is_locked() {
        // SAFETY: only the forking thread exists in the child; whoever held
        // the lock is gone.
        unsafe { CORES.force_unlock() };
    }
    std::mem::forget(std::mem::take(&mut *CORES.lock()));
    exit::after_fork_in_child();
    engine::after_fork_in_child();
}

impl Core {
    pub(crate) fn check_open(&self) -> PyResult<()> {
        if self.is_closing() {
            return Err(self.closed_error());
        }
        Ok(())
    }

    pub(crate) fn check_writable(&self, op: &'static str) -> PyResult<()> {
        self.check_open()?;
        if self.readonly {
            return Err(StoreError::Readonly(op).into_pyerr());
        }
        Ok(())
    }

    /// Wait for `m` with the GIL released. A thread inside a read (nested
    /// call from unpickling) gives up if growth is waiting for that read.
    /// Spine rule 2: a lock held across a commit is never waited for with
    /// the GIL held.
    pub(crate) fn lock_detached<'a, T: Send>(
        &self,
        py: Python<'_>,
        m: &'a Mutex<T>,
    ) -> PyResult<MutexGuard<'a, T>> {
        if let Some(g) = m.try_lock() {
            return Ok(g);
        }
        // Spine rule 2: the holder may be a commit waiting for this thread's
        // own transaction, which waits for this thread: refused, not waited.
        if engine::txn::open_in_this_thread(&self.env) {
            return Err(to_py(engine::Error::InTransaction));
        }
        let gate = &self.env.gate;
        let nested = gate.held_by_current_thread();
        py.detach(|| {
            if !nested {
                return Ok(m.lock());
            }
            loop {
                if let Some(g) = m.try_lock_for(Duration::from_millis(2)) {
                    return Ok(g);
                }
                if gate.exclusive_pending() {
                    return Err(engine::Error::WouldDeadlock("a flush"));
                }
            }
        })
        .map_err(to_py)
    }

    /// Wait for the commit lock (see `lock_detached`), counted in
    /// `commit_waiters` while waiting so that a chain of background commits
    /// ends for this thread (see `start_commit`).
    pub(crate) fn lock_commit(&self, py: Python<'_>) -> PyResult<MutexGuard<'_, ()>> {
        if let Some(g) = self.commit_lock.try_lock() {
            return Ok(g);
        }
        self.commit_waiters.fetch_add(1, Ordering::SeqCst);
        let got = self.lock_detached(py, &self.commit_lock);
        self.commit_waiters.fetch_sub(1, Ordering::SeqCst);
        got
    }

    /// Log every growth of the map since the last call, whether or not the
    /// write that needed it went on to commit.
    pub(crate) fn log_growth(&self, py: Python<'_>) {
        let grown = self.env.take_growths();
        if grown.is_empty() {
            return;
        }
        let logger = match package_logger(py) {
            Ok(logger) => logger,
            Err(e) => return after_logging(py, e),
        };
        for g in grown {
            let logged = logger.call_method1(
                "info",
                (
                    "growing the LMDB map of %s from %d to %d bytes",
                    self.path.as_str(),
                    g.from,
                    g.to,
                ),
            );
            if let Err(e) = logged {
                return after_logging(py, e);
            }
        }
    }

    /// Commit the buffer in one write transaction, after any background
    /// commit under way. On failure the batch goes back into the buffer
    /// (under any newer writes) and the error is raised.
    pub(crate) fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let result = self
            .lock_commit(py)
            .and_then(|_commit| self.commit_buffer_locked(py));
        self.log_growth(py);
        result
    }

    /// The body of `flush`, for callers that hold the commit lock. A failed
    /// background commit is not reported here: its batches are back in the
    /// buffer, and this commit writes them again.
    pub(crate) fn commit_buffer_locked(&self, py: Python<'_>) -> PyResult<()> {
        let batches = {
            let mut b = self.buffered.lock();
            b.failed = None;
            b.buf.begin_commit()
        };
        if batches.is_empty() {
            return Ok(());
        }
        // Spine rule 1: the write transaction runs in the engine, with the
        // GIL released; growth is logged after it.
        let result = py.detach(|| self.write_batches(&batches));
        drop(batches);
        let mut b = self.buffered.lock();
        let done = b.buf.end_commit(result.is_ok());
        b.read_flush_logged &= result.is_err();
        drop(b);
        // Freed with the buffer unlocked (see `WriteBuffer::end_commit`).
        drop(done);
        result.map_err(to_py)
    }

    /// Write `batches` (oldest first: a later one's write of a key wins) in
    /// one write transaction of this store's table. No Python here.
    fn write_batches(&self, batches: &[Arc<engine::buffer::Batch>]) -> engine::Result<()> {
        let env = &*self.env;
        let sorted: Vec<Sorted<'_>> = batches
            .iter()
            .map(|b| env.sorted(b))
            .collect::<engine::Result<_>>()?;
        let bytes = batches.iter().map(|b| b.bytes()).sum();
        env.commit_all_in(&self.table, &sorted, bytes, self.max_map_size)
    }

    /// The buffer is full: commit it on a background thread, so the
    /// commit's fsync overlaps the caller's next writes. Waits first for the
    /// commit before, if one is still running. Reads see the batches in
    /// flight until they are in the database.
    ///
    /// Group commit: while the thread commits, the batches that fill up are
    /// queued behind it instead of making their writers wait
    /// (`buffer_writes`), and the thread commits all of them in its next
    /// transaction, with one fsync, before it ends. It ends when nothing is
    /// queued; no batch is queued while a thread waits for the commit lock,
    /// so a `flush()` or `close()` waits for what is already queued only.
    pub(crate) fn start_commit(&self, py: Python<'_>) -> PyResult<()> {
        let commit = self.lock_commit(py)?;
        let batches = {
            let mut b = self.buffered.lock();
            // After a failed commit its batches are back in the buffer: the
            // next write reports it; no retry in a loop.
            let batches = match b.failed {
                Some(_) => Vec::new(),
                None => b.buf.begin_commit(),
            };
            b.chain = !batches.is_empty();
            batches
        };
        if batches.is_empty() {
            drop(commit);
            self.log_growth(py);
            return Ok(());
        }
        let core = self.me.upgrade().expect("a live core has a live Arc");
        // Spine rule 1: a plain Rust thread, which never takes the GIL, runs
        // the write transactions.
        let job = {
            let mut batches = batches.clone();
            move || {
                loop {
                    let commit = std::panic::AssertUnwindSafe(|| core.write_batches(&batches));
                    let result = match std::panic::catch_unwind(commit) {
                        Ok(result) => result.map_err(StoreError::from),
                        Err(_) => Err(StoreError::CommitPanicked {
                            path: core.path.clone(),
                        }),
                    };
                    drop(batches);
                    batches = core.end_background_commit(result);
                    if batches.is_empty() {
                        break;
                    }
                }
                // SAFETY: `start_commit` locked `commit_lock` and forgot the
                // guard, handing the lock to this thread; nothing else
                // unlocks it (parking_lot allows unlocking from another
                // thread: the `send_guard` feature).
                unsafe { core.commit_lock.force_unlock() };
            }
        };
        match std::thread::Builder::new()
            .name("lmdb_object_store commit".into())
            .spawn(job)
        {
            Ok(_) => {
                // The thread owns the lock now.
                std::mem::forget(commit);
                // The growths of the commit before, logged with no lock held:
                // a logging handler may call the store, or fork.
                self.log_growth(py);
                Ok(())
            }
            Err(_) => {
                // No thread to be had: commit here instead. The closure and
                // its copy of the batches are gone; the buffer still has them.
                drop(batches);
                {
                    let mut b = self.buffered.lock();
                    b.chain = false;
                    b.buf.commit_failed();
                }
                let result = self.commit_buffer_locked(py);
                drop(commit);
                self.log_growth(py);
                result
            }
        }
    }

    /// A background commit ended: forget what it wrote, or put every batch
    /// in flight back and keep the error for the next write. Then the
    /// batches queued meanwhile, for the next transaction; none: the chain
    /// ends. No Python here.
    pub(crate) fn end_background_commit(
        &self,
        result: Result<(), StoreError>,
    ) -> Vec<Arc<engine::buffer::Batch>> {
        let mut b = self.buffered.lock();
        let ok = result.is_ok();
        let done = b.buf.end_commit(ok);
        b.read_flush_logged &= !ok;
        if let Err(e) = result {
            b.failed = Some(e);
        }
        let queued = if ok { b.buf.take_queued() } else { Vec::new() };
        b.chain = !queued.is_empty();
        drop(b);
        // Freed with the buffer unlocked (see `WriteBuffer::end_commit`).
        drop(done);
        queued
    }

    /// Scans read the database alone: commit what is buffered first. On
    /// failure the caller merges the buffer into what it reads instead.
    pub(crate) fn flush_for_read(&self, py: Python<'_>) -> PyResult<()> {
        if self.readonly {
            return Ok(());
        }
        let b = self.buffered.lock();
        // A batch in flight is not in the database yet: wait for it too.
        if b.buf.active_len() == 0 && !b.buf.has_inflight() {
            return Ok(());
        }
        drop(b);
        self.commit_for_read(py)
    }

    /// `flush` for a read, which does not raise its failure: a failed
    /// background commit stays kept for the next write to raise, unless
    /// this commit writes its batch.
    pub(crate) fn commit_for_read(&self, py: Python<'_>) -> PyResult<()> {
        let result = self.lock_commit(py).and_then(|_commit| {
            let kept = self.buffered.lock().failed.take();
            let result = self.commit_buffer_locked(py);
            if let (Err(_), Some(kept)) = (&result, kept) {
                self.buffered.lock().failed.get_or_insert(kept);
            }
            result
        });
        self.log_growth(py);
        result
    }

    /// A read's commit of the buffer failed: the read goes on (the buffer
    /// overlays the database), and the failure belongs to `flush()`,
    /// `close()` and the write that caused it. Returns the error if this is
    /// the first read to meet it since the last commit that succeeded, for
    /// `log_read_flush_failure` once the read is done.
    pub(crate) fn read_flush_failed(&self, err: PyErr) -> Option<PyErr> {
        let mut b = self.buffered.lock();
        let first = !std::mem::replace(&mut b.read_flush_logged, true);
        first.then_some(err)
    }

    /// Log what `read_flush_failed` returned; after the read, since logging
    /// runs Python code.
    pub(crate) fn log_read_flush_failure(&self, py: Python<'_>, err: Option<PyErr>) {
        if let Some(err) = err {
            log(
                py,
                "warning",
                format!(
                    "could not commit the buffered writes of {} before a read: {}; reads \
                     answer from the buffer over the database until a commit succeeds, and \
                     flush() raises the error",
                    self.path,
                    err.value(py)
                ),
            );
        }
    }

    /// Commit the buffer before a read of the database if it holds writes;
    /// a failure is noted (see `read_flush_failed`), never raised.
    pub(crate) fn autoflush_for_read(&self, py: Python<'_>, dirty: bool) -> Option<PyErr> {
        if !dirty {
            return None;
        }
        self.commit_for_read(py)
            .err()
            .and_then(|e| self.read_flush_failed(e))
    }

    /// The buffered writes (values and deletions) whose keys are within
    /// `bounds`, in iteration order: what a scan merges into the database's
    /// keys when the buffer could not be committed first.
    pub(crate) fn buffered_in(
        &self,
        bounds: &Bounds,
        reverse: bool,
    ) -> PyResult<Vec<(Vec<u8>, Value)>> {
        let mut out =
            self.buffered_where(|k| bounds.contains(k), |k, v| (k.to_vec(), v.clone()))?;
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if reverse {
            out.reverse();
        }
        Ok(out)
    }

    /// `make` of the newest buffered write of each key that `keep` takes,
    /// copied out of the buffer (its lock is not held while they are used).
    /// The copies grow with the buffer: their room is asked for first and
    /// each takes the memory reserve back, so that a process at its limit
    /// gets `MemoryError`, not an abort.
    fn buffered_where<T>(
        &self,
        keep: impl Fn(&[u8]) -> bool,
        make: impl Fn(&[u8], &Value) -> T,
    ) -> PyResult<Vec<T>> {
        const WHAT: &str = "buffered writes read with the database";
        let b = self.buffered.lock();
        let mut out: Vec<T> = Vec::new();
        let mut seen = engine::buffer::FastMap::<&[u8], ()>::default();
        // Newest first: a key's first write seen is the one that wins.
        for batch in b.buf.newest_first() {
            if seen.try_reserve(batch.len()).is_err() {
                return Err(StoreError::NoMemoryFor {
                    what: format!("{} {WHAT}", batch.len()),
                }
                .into());
            }
            for (k, v) in batch.iter() {
                if keep(k) && seen.insert(k, ()).is_none() {
                    crate::codec::reserve_more(&mut out, 1, WHAT)?;
                    crate::codec::check_memory(&self.path)?;
                    out.push(make(k, v));
                }
            }
        }
        Ok(out)
    }

    /// Keep a read's LMDB memory readable for good: a buffer over it
    /// outlived the read (see `codec::loads_borrowed`).
    pub(crate) fn pin_txn(&self, txn: &engine::ReadTxn<'_>) {
        txn.pin(&self.env);
    }

    pub(crate) fn bound(
        &self,
        name: &str,
        v: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Vec<u8>>> {
        match v {
            None => Ok(None),
            Some(v) if v.is_none() => Ok(None),
            Some(v) => match self.keys.to_bytes(v) {
                Ok(b) => Ok(Some(b.into_owned())),
                Err(e) if e.is_instance_of::<PyTypeError>(v.py()) => Err(StoreError::BoundType {
                    name: name.to_string(),
                    why: e.value(v.py()).to_string(),
                }
                .into()),
                Err(e) => Err(e),
            },
        }
    }

    pub(crate) fn bounds(
        &self,
        prefix: Option<&Bound<'_, PyAny>>,
        start: Option<&Bound<'_, PyAny>>,
        stop: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bounds> {
        Ok(Bounds::new(
            self.bound("prefix", prefix)?,
            self.bound("start", start)?,
            self.bound("stop", stop)?,
        ))
    }

    pub(crate) fn buffered_lookup(&self, key: &[u8]) -> (Lookup, bool) {
        let b = self.buffered.lock();
        (b.buf.lookup(key), b.buf.active_len() > 0)
    }

    /// Run `f` inside a read transaction with the gate held shared.
    pub(crate) fn with_read<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&engine::ReadTxn<'_>) -> PyResult<T>,
    ) -> PyResult<T> {
        let env = &*self.env;
        if env.generation != engine::fork_generation() {
            // A core inherited across fork(): never touch the parent's
            // environment, not even its gate (callers re-fetch the core
            // after running Python code, so this is a safety net).
            return Err(to_py(engine::Error::Forked));
        }
        loop {
            let guard = shared_guard(py, env);
            match env.begin_read(guard) {
                Ok(Some(txn)) => {
                    txn.set_table(&self.table)
                        .map_err(|e| to_py(e.for_store(&self.path)))?;
                    return f(&txn);
                }
                Ok(None) => py
                    .detach(|| env.adopt_resize())
                    .map_err(|e| to_py(e.for_store(&self.path)))?,
                Err(e) => return Err(to_py(e.for_store(&self.path))),
            }
        }
    }

    pub(crate) fn closed_error(&self) -> PyErr {
        to_py(engine::Error::Closed {
            path: self.path.clone(),
        })
    }

    /// Unpickle a buffered value; `v` is never freed if pickle's buffer over
    /// it outlives the call.
    pub(crate) fn unpickle_buffered<'py>(
        &self,
        py: Python<'py>,
        key: &[u8],
        v: &Bytes,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = (**v).as_ref();
        self.decode(py, key, "buffered", data, || pin_bytes(v))
    }

    /// Decode the stored `data` of `key` (read from `source`) with this
    /// store's compression, serializer and key options; `pin` runs if Python
    /// code kept a buffer over `data`.
    pub(crate) fn decode<'py>(
        &self,
        py: Python<'py>,
        key: &[u8],
        source: &str,
        data: &[u8],
        pin: impl FnOnce(),
    ) -> PyResult<Bound<'py, PyAny>> {
        let (ser, comp, keys) = (&self.serializer, &self.compression, &self.keys);
        values::decode(py, ser, comp, keys, key, source, data, pin)
    }

    /// Decode a value read from the database in `txn`; `txn` is pinned if
    /// the bytes were lent to Python code that kept them.
    pub(crate) fn decode_db<'py>(
        &self,
        py: Python<'py>,
        key: &[u8],
        data: &[u8],
        txn: &engine::ReadTxn<'_>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.decode(py, key, "DB", data, || self.pin_txn(txn))
    }

    /// The value of `key` or `None`; buffer first, then (after the autoflush)
    /// the database. A failed autoflush does not fail the read: the buffer
    /// did not know the key, so the database has the answer.
    pub(crate) fn get_value<'py>(
        &self,
        py: Python<'py>,
        key: &[u8],
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let (found, dirty) = self.buffered_lookup(key);
        match found {
            Lookup::Value(v) => return self.unpickle_buffered(py, key, &v).map(Some),
            Lookup::Deleted => return Ok(None),
            Lookup::Unknown => {}
        }
        let failure = self.autoflush_for_read(py, dirty && self.autoflush_on_read);
        let result = self.with_read(py, |txn| match txn.get(key).map_err(to_py)? {
            None => Ok(None),
            Some(data) => self.decode_db(py, key, data, txn).map(Some),
        });
        self.log_read_flush_failure(py, failure);
        result
    }

    /// A snapshot of the database: the buffer is committed first (a
    /// failure is raised: the snapshot could not show this store's writes),
    /// then one read transaction is held until the snapshot is dropped.
    /// Spine rule 2: a wait for the gate (growth or close under way) happens
    /// with the GIL released.
    pub(crate) fn snapshot(&self, py: Python<'_>) -> PyResult<engine::Snapshot> {
        let env = &self.env;
        if env.generation != engine::fork_generation() {
            return Err(to_py(engine::Error::Forked));
        }
        self.flush_for_read(py)?;
        loop {
            let guard = match env.gate.try_long() {
                Some(g) => g,
                None => py.detach(|| env.gate.wait_long()),
            };
            match engine::Snapshot::begin(env, guard) {
                Ok(Some(snap)) => {
                    snap.set_table(&self.table)
                        .map_err(|e| to_py(e.for_store(&self.path)))?;
                    return Ok(snap);
                }
                Ok(None) => py
                    .detach(|| env.adopt_resize())
                    .map_err(|e| to_py(e.for_store(&self.path)))?,
                Err(e) => return Err(to_py(e.for_store(&self.path))),
            }
        }
    }

    /// Begin a transaction: commit the buffer first (so that the writes
    /// buffered before it are what it reads, and can never land after it),
    /// then begin the engine's write transaction.
    /// Spine rule 2: the commit lock, the writer lock and LMDB's writer
    /// mutex are waited for with the GIL released.
    pub(crate) fn begin_transaction(&self, py: Python<'_>) -> PyResult<engine::WriteTxn> {
        self.check_writable("transaction")?;
        let env = &self.env;
        if env.generation != engine::fork_generation() {
            return Err(to_py(engine::Error::Forked));
        }
        if engine::txn::open_in_this_thread(env) {
            return Err(to_py(engine::Error::InTransaction));
        }
        // The other stores of the file in this process (other tables, which
        // `t.table()` reaches, or other objects of this table) commit their
        // buffers first too, so that no write buffered before the block can
        // land after it.
        let others: Vec<Arc<Core>> = CORES
            .lock()
            .iter()
            .filter_map(|w| w.upgrade())
            .filter(|o| !std::ptr::eq(&**o, self) && Arc::ptr_eq(&o.env, &self.env))
            .collect();
        for o in others {
            if o.readonly || o.is_closing() || o.generation != engine::fork_generation() {
                continue;
            }
            o.flush(py)?;
        }
        let result = (|| {
            let _commit = self.lock_commit(py)?;
            self.commit_buffer_locked(py)?;
            let cap = self.max_map_size;
            py.detach(|| engine::WriteTxn::begin(env, cap))
                .map_err(|e| to_py(e.for_store(&self.path)))
        })();
        self.log_growth(py);
        result
    }

    /// The database a transaction on this store writes: its table's.
    pub(crate) fn txn_dbi(&self) -> PyResult<engine::txn::Dbi> {
        self.table_dbi(&self.table)
    }

    /// The count of table handles this process has given out (see
    /// `Env::tables_given`).
    pub(crate) fn tables_given(&self) -> u64 {
        self.env.tables_given()
    }

    /// The table `name` if this process had it open at `before`.
    pub(crate) fn open_table_before(&self, name: &str, before: u64) -> Option<engine::Table> {
        self.env.open_table_before(name, before)
    }

    /// The database a transaction uses for `table`, refused if it was dropped.
    pub(crate) fn table_dbi(&self, table: &engine::Table) -> PyResult<engine::txn::Dbi> {
        self.env.table_dbi(table).map_err(to_py)
    }

    /// Copy the stored (encoded) bytes of `key` into `out`: the buffered
    /// value if there is one, else the database's. `Ok(None)`: no such key;
    /// `Ok(Some(Err(n)))`: the value is `n` bytes and does not fit (nothing
    /// written). Large copies run with the GIL released.
    pub(crate) fn copy_encoded(
        &self,
        py: Python<'_>,
        key: &[u8],
        out: &mut [u8],
    ) -> PyResult<Option<Result<usize, usize>>> {
        let copy = |py: Python<'_>, src: &[u8], out: &mut [u8]| {
            if src.len() > out.len() {
                return Err(src.len());
            }
            let dst = &mut out[..src.len()];
            if src.len() >= BIG_COPY {
                py.detach(|| dst.copy_from_slice(src));
            } else {
                dst.copy_from_slice(src);
            }
            Ok(src.len())
        };
        let (found, dirty) = self.buffered_lookup(key);
        match found {
            Lookup::Value(v) => return Ok(Some(copy(py, (*v).as_ref(), out))),
            Lookup::Deleted => return Ok(None),
            Lookup::Unknown => {}
        }
        // As `get` does: a read that goes to the database commits the buffer
        // first with `autoflush_on_read`.
        let failure = self.autoflush_for_read(py, dirty && self.autoflush_on_read);
        let result = self.with_read(py, |txn| {
            Ok(txn.get(key).map_err(to_py)?.map(|src| copy(py, src, out)))
        });
        self.log_read_flush_failure(py, failure);
        result
    }

    pub(crate) fn contains(&self, py: Python<'_>, key: &[u8], flush: bool) -> PyResult<bool> {
        let (found, dirty) = self.buffered_lookup(key);
        match found {
            Lookup::Value(_) => return Ok(true),
            Lookup::Deleted => return Ok(false),
            Lookup::Unknown => {}
        }
        let failure = self.autoflush_for_read(py, flush && dirty);
        let result = self.with_read(py, |txn| Ok(txn.get(key).map_err(to_py)?.is_some()));
        self.log_read_flush_failure(py, failure);
        result
    }

    /// Buffer one write (value pickled already, or a tombstone) and flush if
    /// the buffer reached its bounds.
    pub(crate) fn buffer_write(&self, py: Python<'_>, key: &[u8], value: Value) -> PyResult<()> {
        self.buffer_writes(py, [(key, value)])
    }

    /// Buffer writes together (nobody sees half of them), then commit if the
    /// buffer is full: in the background when it reached `batch_size`
    /// entries, here when it went past `max_buffer_bytes` (see below). A
    /// background commit that failed since the last write is raised here,
    /// before anything is buffered.
    pub(crate) fn buffer_writes<K: AsRef<[u8]>>(
        &self,
        py: Python<'_>,
        writes: impl IntoIterator<Item = (K, Value)>,
    ) -> PyResult<()> {
        let writes = writes.into_iter();
        let (by_count, by_bytes) = loop {
            let mut b = self.buffered.lock();
            if self.is_closing() {
                return Err(self.closed_error());
            }
            if FORKS_IN_PROGRESS.load(Ordering::Relaxed) != 0 && !IN_FORK_HOOK.with(|f| f.get()) {
                // The buffer was committed for a fork that has not happened
                // yet: a write taken now would be in the parent's buffer
                // only. Wait, with the GIL released, until the fork is done.
                drop(b);
                self.wait_for_fork(py)?;
                continue;
            }
            if let Some(e) = b.failed.take() {
                drop(b);
                return Err(self.background_error(py, e));
            }
            // Room first (the buffer's table grows by doubling, which can
            // be more memory than anything else a write needs): with no
            // memory for it, MemoryError and nothing buffered.
            let more = writes.size_hint().0;
            if b.buf.try_reserve(more).is_err() {
                return Err(StoreError::NoMemoryFor {
                    what: format!("{more} more buffered writes of {}", self.path),
                }
                .into());
            }
            for (k, v) in writes {
                b.buf.insert(k.as_ref(), v);
            }
            let by_count = b.buf.active_len() >= self.batch_size;
            let by_bytes = b.buf.active_memory() > self.max_buffer_bytes;
            if by_count && !by_bytes && self.can_queue(&b) {
                // A background commit is running: it takes this batch next.
                b.buf.enqueue();
                return Ok(());
            }
            break (by_count, by_bytes);
        };
        if by_count && !by_bytes && self.commits_in_background() {
            self.start_commit(py)?;
        } else if by_count || by_bytes {
            // Big values: the commit is mostly copying them, with little to
            // overlap, and a background commit would let a second buffer's
            // worth of values pile up meanwhile. Small batches: handing one
            // to another thread costs more than its commit. Both commit here.
            self.flush(py)?;
        }
        Ok(())
    }

    /// Wait until no fork is under way. A thread inside a read (code run by
    /// unpickling) gives up if the fork's commit needs to grow a map whose
    /// gate it holds: that growth waits for this read, which waits for it.
    /// Spine rule 2: the wait happens with the GIL released.
    pub(crate) fn wait_for_fork(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            while FORKS_IN_PROGRESS.load(Ordering::SeqCst) != 0 {
                if engine::gate::held_gate_awaited() {
                    return Err(engine::Error::WouldDeadlock(
                        "a write while the process forks",
                    ));
                }
                // Polled rather than signalled: a fork takes milliseconds,
                // and a sleeping thread leaves no waiter state for fork() to
                // copy into the child half-way.
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(())
        })
        .map_err(to_py)
    }

    /// Whether a batch that reaches `batch_size` commits in the background
    /// (see `BACKGROUND_MIN_BATCH`).
    /// Whether a full batch can be queued behind the background commit
    /// under way instead of its writer waiting for that commit: not while
    /// a thread waits for the commit lock (the chain must end for it), and
    /// only up to `MAX_QUEUED` batches and `max_buffer_bytes` in all.
    fn can_queue(&self, b: &Buffered) -> bool {
        b.chain
            && self.commits_in_background()
            && self.commit_waiters.load(Ordering::SeqCst) == 0
            && b.buf.inflight().len() < MAX_QUEUED
            && b.buf.inflight_memory() + b.buf.active_memory() <= self.max_buffer_bytes
    }

    pub(crate) fn commits_in_background(&self) -> bool {
        self.batch_size >= BACKGROUND_MIN_BATCH && self.options.sync
    }

    /// The error of a failed background commit, saying so; its own type
    /// (MapFullError, ...) is kept.
    pub(crate) fn background_error(&self, py: Python<'_>, e: StoreError) -> PyErr {
        self.log_growth(py);
        let err = e.into_pyerr();
        let note = format!(
            "an earlier automatic commit of {} failed; its writes are still buffered \
             and the next flush() retries them",
            self.path
        );
        add_note(err.value(py), note);
        err
    }

    pub(crate) fn info(&self, py: Python<'_>) -> PyResult<EnvInfo> {
        let env = &*self.env;
        let g = shared_guard(py, env);
        env.info_shared(&g).map_err(|e| self.map_closed(e))
    }

    pub(crate) fn map_closed(&self, e: engine::Error) -> PyErr {
        to_py(e.for_store(&self.path))
    }

    /// Number of live keys, the buffer included: LMDB's entry count,
    /// corrected by the buffered writes (one lookup per buffered key).
    pub(crate) fn len(&self, py: Python<'_>) -> PyResult<usize> {
        let keys = self.buffered_where(|_| true, |k, v| (k.to_vec(), v.is_some()))?;
        self.with_read(py, |txn| {
            let mut n = txn.entries().map_err(to_py)? as isize;
            for (k, live) in &keys {
                let stored = txn.get(k).map_err(to_py)?.is_some();
                n += (*live as isize) - (stored as isize);
            }
            Ok(n.max(0) as usize)
        })
    }

    /// Commit the buffer, then `ops` (`bytes` of keys and values) in one
    /// more write transaction (all or nothing), so that older buffered
    /// writes cannot land after them. They never enter the buffer.
    pub(crate) fn put_many(&self, py: Python<'_>, ops: &Sorted<'_>, bytes: usize) -> PyResult<()> {
        if ops.is_empty() {
            return self.write_after_buffer(py, |_, _, _| Ok(()));
        }
        self.write_after_buffer(py, |env, table, cap| env.commit_in(table, ops, bytes, cap))
    }

    /// Commit the buffer, then write one value of `src` under `key` in one
    /// more write transaction (`Env::put_stream`), so that older buffered
    /// writes cannot land after it. The value never enters the buffer.
    pub(crate) fn put_stream(
        &self,
        py: Python<'_>,
        key: &[u8],
        src: &engine::Source<'_>,
    ) -> PyResult<()> {
        // The file is read inside the write transaction, by the engine.
        self.write_after_buffer(py, |env, table, cap| env.put_stream(table, key, src, cap))
    }

    /// Under the commit lock, commit the buffer, then run `write` (one
    /// engine write into this store's table) with the GIL released, so that
    /// no older buffered write can land after it; then log the growths.
    fn write_after_buffer(
        &self,
        py: Python<'_>,
        write: impl FnOnce(&Env, &Table, Option<usize>) -> engine::Result<()> + Send,
    ) -> PyResult<()> {
        let result = (|| -> PyResult<()> {
            // Spine rule 2: the commit lock is waited for with the GIL released.
            let _commit = self.lock_commit(py)?;
            if self.is_closing() {
                return Err(self.closed_error());
            }
            self.commit_buffer_locked(py)?;
            let (env, table, cap) = (&*self.env, &self.table, self.max_map_size);
            // Spine rule 1: the write transaction runs in the engine, with
            // the GIL released.
            py.detach(|| write(env, table, cap)).map_err(to_py)
        })();
        self.log_growth(py);
        result
    }

    /// fsync the data file, with the GIL released.
    pub(crate) fn sync(&self, py: Python<'_>, force: bool) -> PyResult<()> {
        let env = &*self.env;
        py.detach(|| env.sync(force))
            .map_err(|e| self.map_closed(e))
    }

    /// `mdb_stat` of the store's table (committed data only).
    pub(crate) fn stat(&self, py: Python<'_>) -> PyResult<DbStat> {
        let env = &*self.env;
        // Through a read of the store's table, which refuses a dropped table
        // and the main store of a file with tables.
        self.with_read(py, |txn| env.table_stat(txn).map_err(to_py))
    }

    /// Number of keys within `bounds`, the buffer included.
    pub(crate) fn count(&self, py: Python<'_>, bounds: &Bounds) -> PyResult<usize> {
        if bounds.is_unbounded() {
            return self.len(py);
        }
        match self.flush_for_read(py) {
            Ok(()) => self.count_committed(py, bounds, &[]),
            Err(e) => {
                // Count the database's keys corrected by the buffered ones.
                let failure = self.read_flush_failed(e);
                let n = self
                    .buffered_in(bounds, false)
                    .and_then(|overlay| self.count_committed(py, bounds, &overlay));
                self.log_read_flush_failure(py, failure);
                n
            }
        }
    }

    /// Delete everything, buffer included, in one write transaction.
    pub(crate) fn clear(&self, py: Python<'_>) -> PyResult<()> {
        let result = (|| -> PyResult<()> {
            // Spine rule 2: the commit lock is waited for with the GIL released.
            let _commit = self.lock_commit(py)?;
            // The buffered writes stay readable until the clear commits. A
            // failed background commit is moot: its writes are cleared too.
            let taken = {
                let mut b = self.buffered.lock();
                b.failed = None;
                !b.buf.begin_commit().is_empty()
            };
            let env = &*self.env;
            let cap = self.max_map_size;
            // Spine rule 1: the write transaction runs in the engine, with
            // the GIL released.
            let table = &self.table;
            let r = py.detach(|| env.clear_in(table, cap));
            let mut b = self.buffered.lock();
            if taken {
                b.buf.end_commit(r.is_ok());
            }
            b.read_flush_logged &= r.is_err();
            drop(b);
            r.map_err(to_py)
        })();
        self.log_growth(py);
        result
    }

    /// Buffered entries not yet committed, once a background commit under
    /// way has ended (so the count is settled).
    pub(crate) fn pending(&self, py: Python<'_>) -> PyResult<usize> {
        if self.buffered.lock().buf.has_inflight() {
            drop(self.lock_commit(py)?);
        }
        let pending = self.buffered.lock().buf.pending();
        Ok(pending)
    }

    /// Count the keys in `bounds`: the committed ones, corrected by `overlay`,
    /// buffered writes within `bounds` that could not be committed first (a
    /// value of a key not stored adds one, a deletion of a stored key takes one).
    fn count_committed(
        &self,
        py: Python<'_>,
        bounds: &Bounds,
        overlay: &[(Vec<u8>, Value)],
    ) -> PyResult<usize> {
        self.with_read(py, |txn| {
            let mut n = 0isize;
            bounds
                .walk(txn, false, None, |_, _| {
                    n += 1;
                    true
                })
                .map_err(to_py)?;
            for (k, v) in overlay {
                let stored = txn.get(k).map_err(to_py)?.is_some();
                n += v.is_some() as isize - stored as isize;
            }
            Ok(n.max(0) as usize)
        })
    }

    /// `copy()`: commit the buffer (as `flush`), so that every write this
    /// store acknowledged before the call is in the copy, then have the
    /// engine write a consistent copy of the committed database to `dest`.
    /// A `dest` that exists is refused first, with nothing committed.
    pub(crate) fn copy(
        &self,
        py: Python<'_>,
        dest: &std::path::Path,
        compact: bool,
    ) -> PyResult<()> {
        engine::copy::check_free(std::path::Path::new(&self.path), dest).map_err(to_py)?;
        if !self.readonly {
            self.flush(py)?;
        }
        let env = &*self.env;
        // Spine rule 2: the copy waits for the map gate (and LMDB for its
        // writer mutex) with the GIL released.
        py.detach(|| env.copy(dest, compact))
            .map_err(|e| self.map_closed(e))
    }

    /// The table's name (`table=`); `None` for the main one.
    pub(crate) fn table_name(&self) -> Option<&str> {
        self.table.name()
    }

    /// `close()`: see [`close_core`].
    pub(crate) fn close(&self, py: Python<'_>) -> PyResult<Option<LostFlush>> {
        close_core(py, self)
    }

    /// `drop_table()`: remove the store's table and everything in it in one
    /// write transaction, this store's buffered writes included, then close
    /// the store. Other stores of the table are told it was dropped.
    pub(crate) fn drop_table(&self, py: Python<'_>) -> PyResult<()> {
        let result = (|| -> PyResult<()> {
            // Spine rule 2: the commit lock is waited for with the GIL released.
            let _commit = self.lock_commit(py)?;
            if self.is_closing() {
                return Err(self.closed_error());
            }
            let taken = {
                let mut b = self.buffered.lock();
                b.failed = None;
                !b.buf.begin_commit().is_empty()
            };
            let env = &*self.env;
            let table = &self.table;
            let cap = self.max_map_size;
            // Spine rule 1: the write transaction runs in the engine, with
            // the GIL released.
            let r = py.detach(|| env.drop_table(table, cap));
            if taken {
                // Dropped: the buffered writes went with the table.
                self.buffered.lock().buf.end_commit(r.is_ok());
            }
            r.map_err(|e| to_py(e.for_store(&self.path)))
        })();
        self.log_growth(py);
        result?;
        close_core(py, self).map(drop)
    }
}

/// Never free `bytes`: pickle kept a buffer over them (see
/// `codec::loads_borrowed`).
pub(crate) fn pin_bytes(bytes: &Bytes) {
    std::mem::forget(bytes.clone());
}

/// Hold the map gate shared; a wait (growth or close under way) happens with
/// the GIL released (spine rule 2).
pub(crate) fn shared_guard<'a>(py: Python<'_>, env: &'a Env) -> engine::gate::SharedGuard<'a> {
    match env.gate.try_shared() {
        Some(g) => g,
        None => py.detach(|| env.gate.wait_shared()),
    }
}

/// The fork-aware handle on a store's core: the one place that owns the
/// raw pointer to it. Null until `__init__` publishes a core; the core is
/// freed when the handle drops (after a final close if the store was never
/// closed). After `fork()`, the first call in the child replaces the
/// inherited core with one of its own and leaks the old one: cleaning it up
/// would close or abort what the parent still uses.
pub struct CoreHandle {
    ptr: AtomicPtr<Core>,
}

impl Default for CoreHandle {
    fn default() -> Self {
        CoreHandle {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

impl Drop for CoreHandle {
    fn drop(&mut self) {
        let p = *self.ptr.get_mut();
        if !p.is_null() {
            // SAFETY: `p` came from Arc::into_raw and this handle owns that
            // strong count.
            let core = unsafe { Arc::from_raw(p) };
            if core.generation != engine::fork_generation() {
                // Inherited across fork(): the parent's; never clean it up.
                std::mem::forget(core);
                return;
            }
            if !*core.close.done.lock() {
                // Dropped without close(): close it, so buffered writes are
                // committed rather than lost.
                let _inside = exit::enter();
                Python::attach(|py| close_dropped(py, core));
            }
        }
    }
}

/// A store's core for the length of one call, with the call counted as
/// under way on this thread (see `exit`): every method goes through it.
pub(crate) struct CoreRef<'a> {
    core: &'a Core,
    _inside: exit::Inside,
}

impl std::ops::Deref for CoreRef<'_> {
    type Target = Core;

    fn deref(&self) -> &Core {
        self.core
    }
}

impl CoreHandle {
    /// Whether `__init__` published a core.
    pub(crate) fn is_set(&self) -> bool {
        !self.ptr.load(Ordering::Acquire).is_null()
    }

    /// Open a core with `settings` and publish it; refused if this handle
    /// already has one.
    pub(crate) fn open(&self, py: Python<'_>, settings: Settings) -> PyResult<()> {
        if self.is_set() {
            return Err(StoreError::AlreadyOpen.into());
        }
        let raw = Arc::into_raw(Core::open(py, settings)?).cast_mut();
        if self
            .ptr
            .compare_exchange(
                std::ptr::null_mut(),
                raw,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            // SAFETY: `raw` came from Arc::into_raw above and was never
            // published: this is its only owner.
            let core = unsafe { Arc::from_raw(raw) };
            let _ = py.detach(|| core.env.release());
            return Err(StoreError::AlreadyOpen.into());
        }
        Ok(())
    }

    /// The core, open or closed, for one call.
    pub(crate) fn get(&self) -> PyResult<CoreRef<'_>> {
        let inside = exit::enter();
        let p = self.ptr.load(Ordering::Acquire);
        if p.is_null() {
            return Err(StoreError::NotInitialised.into());
        }
        // SAFETY: a non-null pointer is a live Arc<Core> owned by `self`;
        // it is freed only in Drop, and a core replaced after fork is leaked,
        // never freed, so it outlives the borrow of `self`.
        let c = unsafe { &*p };
        crate::codec::check_memory(&c.path)?;
        let core = if c.generation == engine::fork_generation() || c.is_closing() {
            c
        } else {
            self.reopen_after_fork(c)?
        };
        Ok(CoreRef {
            core,
            _inside: inside,
        })
    }

    /// First use in a child after `fork()`: open a fresh environment with
    /// the same settings and an empty buffer (the parent flushed before the
    /// fork). The inherited core is leaked on purpose: cleaning it up would
    /// close or abort what the parent still uses.
    #[cold]
    pub(crate) fn reopen_after_fork(&self, old: &Core) -> PyResult<&Core> {
        Python::attach(|py| {
            let raw = Arc::into_raw(Core::open(py, old.settings(py))?).cast_mut();
            let old_ptr = std::ptr::from_ref(old).cast_mut();
            match self
                .ptr
                .compare_exchange(old_ptr, raw, Ordering::AcqRel, Ordering::Acquire)
            {
                // The old core stays allocated forever (leaked).
                Ok(_) => {}
                Err(_) => {
                    // Another thread of the child reopened first: use its.
                    // SAFETY: `raw` came from Arc::into_raw above and was
                    // never published: this is its only owner.
                    let mine = unsafe { Arc::from_raw(raw) };
                    let _ = py.detach(|| mine.env.release());
                }
            }
            // SAFETY: as in `get()`: the published pointer is a live core,
            // never freed while `self` is borrowed.
            Ok(unsafe { &*self.ptr.load(Ordering::Acquire) })
        })
    }

    /// The core, for a call that needs it open.
    pub(crate) fn open_core(&self) -> PyResult<CoreRef<'_>> {
        let c = self.get()?;
        c.check_open()?;
        Ok(c)
    }

    /// `c`, or this process's own core if Python code that ran since `c`
    /// was fetched (pickling, unpickling, a key codec) forked the process:
    /// a child reads and writes its own environment and buffer, never the
    /// parent's. One atomic load when nothing forked.
    pub(crate) fn current<'a>(&'a self, c: CoreRef<'a>) -> PyResult<CoreRef<'a>> {
        if c.generation == engine::fork_generation() {
            return Ok(c);
        }
        // The fresh core is counted as under way before `c` stops being, so
        // the call never looks finished to the exit hook in between.
        let fresh = self.open_core();
        drop(c);
        fresh
    }

    /// Remove the entry with the smallest key and return its key and value
    /// (`None` when the store is empty), with the core the call ends on.
    /// The entry is read, unpickled, then deleted in a write transaction of
    /// its own only if nobody changed it meanwhile; else the next one is
    /// tried.
    pub(crate) fn pop_first<'a, 'py>(
        &'a self,
        py: Python<'py>,
        mut c: CoreRef<'a>,
    ) -> PyResult<Option<Popped<'a, 'py>>> {
        loop {
            c = self.current(c)?;
            c.flush(py)?;
            let first = c.with_read(py, |txn| {
                let mut out = None;
                Bounds::default()
                    .walk(txn, false, None, |k, v| {
                        out = Some((k.to_vec(), v.to_vec()));
                        false
                    })
                    .map_err(to_py)?;
                Ok(out)
            })?;
            let Some((k, raw)) = first else {
                return Ok(None);
            };
            // Shared, so that a buffer over it that outlives `loads` can
            // keep it alive.
            let raw: Bytes = Arc::new(raw);
            let value = c.decode(py, &k, "DB", (*raw).as_ref(), || pin_bytes(&raw))?;
            let raw: &[u8] = (*raw).as_ref();
            // Unpickling ran Python code: a forked child deletes in its own
            // environment.
            c = self.current(c)?;
            let env = &*c.env;
            let cap = c.max_map_size;
            // Delete only if nobody changed the entry since we read it.
            // Spine rule 1: the write transaction runs in the engine, with
            // the GIL released.
            let table = &c.table;
            let result = py
                .detach(|| env.remove_if_in(table, &k, raw, cap))
                .map_err(to_py);
            c.log_growth(py);
            if result? {
                return Ok(Some(Popped {
                    core: c,
                    key: k,
                    value,
                }));
            }
        }
    }

    /// What the buffer and then the database hold for each of `keys`, read
    /// in one transaction (one per fork), with the core the call ends on.
    pub(crate) fn read_many<'a, 'py>(
        &'a self,
        py: Python<'py>,
        c: CoreRef<'a>,
        keys: &[Cow<'_, [u8]>],
    ) -> PyResult<(CoreRef<'a>, Many<'py>)> {
        let mut c = c;
        // Buffer first, in one lock.
        // The vectors below are as long as the caller's list of keys: their
        // memory is asked for with `try_reserve` (MemoryError, not an abort).
        const WHAT: &str = "keys of get_many";
        let mut from_buffer: Vec<Option<Lookup>> = crate::codec::try_vec(keys.len(), WHAT)?;
        let mut dirty = false;
        // Keys the buffer does not know: the database's to answer.
        let mut unknown = 0;
        {
            let b = c.buffered.lock();
            for k in keys {
                let l = b.buf.lookup(k);
                unknown += usize::from(matches!(l, Lookup::Unknown));
                from_buffer.push(Some(l));
            }
            dirty |= b.buf.active_len() > 0;
        }
        let need_db = unknown > 0;
        let failure = c.autoflush_for_read(py, need_db && dirty && c.autoflush_on_read);

        // Database reads in key order, through one cursor moving forward:
        // neighbouring keys share pages, so a sorted pass reads each page
        // once, and a key next to the last one needs no search at all. The
        // values are then decoded in the caller's order, the order they go
        // into the dict: objects made in the order the dict holds them are
        // freed in the order they were made, which walks memory forward
        // (made in key order and freed in the caller's, 100,000 values took
        // twice as long to free).
        let mut from_db: Vec<Option<Bound<'py, PyAny>>> = Vec::new();
        if need_db {
            // Each key's first 16 bytes as a number, read once: sorting
            // compares these and reads the keys themselves only on a tie.
            let entry = |i: usize| (engine::order::key_head(&keys[i]), &*keys[i], i);
            let mut order: Vec<(u128, &[u8], usize)> = crate::codec::try_vec(unknown, WHAT)?;
            order.extend(
                (0..keys.len())
                    .filter(|&i| matches!(from_buffer[i], Some(Lookup::Unknown)))
                    .map(entry),
            );
            engine::order::sort_by_key(&mut order);
            crate::codec::reserve_more(&mut from_db, keys.len(), WHAT)?;
            from_db.resize_with(keys.len(), || None);
            // A repeated key sits next to its twin: (repeat, first) pairs
            // share the first one's value. Their list grows as they are found.
            let mut twins: Vec<(usize, usize)> = Vec::new();
            let mut room = Ok(());
            order.dedup_by(|later, first| {
                let twin = later.0 == first.0 && later.1 == first.1;
                if twin && room.is_ok() {
                    room = crate::codec::reserve_more(&mut twins, 1, WHAT);
                    if room.is_ok() {
                        twins.push((later.2, first.2));
                    }
                }
                twin
            });
            room?;
            while !order.is_empty() {
                // Decoding runs Python code, which may fork: a child goes on
                // with the keys left, in a transaction of its own environment.
                c = self.current(c)?;
                let reader = &c;
                let generation = engine::fork_generation();
                reader.with_read(py, |txn| {
                    let mut lookups = txn.ascending().map_err(to_py)?;
                    let mut by_place: Vec<Option<&[u8]>> = crate::codec::try_vec(keys.len(), WHAT)?;
                    by_place.resize(keys.len(), None);
                    let mut hits = 0;
                    lookups
                        .get_each(order.iter().map(|&(_, k, _)| k), |j, found| {
                            by_place[order[j].2] = found;
                            hits += usize::from(found.is_some());
                        })
                        .map_err(to_py)?;
                    let mut stored: Vec<(usize, &[u8])> = crate::codec::try_vec(hits, WHAT)?;
                    stored.extend(
                        (by_place.into_iter().enumerate()).filter_map(|(i, data)| Some((i, data?))),
                    );
                    order.clear();
                    for (at, &(i, data)) in stored.iter().enumerate() {
                        if let Some(&(_, ahead)) = stored.get(at + PREFETCH_AHEAD) {
                            prefetch(ahead);
                        }
                        crate::codec::check_memory(&reader.path)?;
                        from_db[i] = Some(reader.decode_db(py, &keys[i], data, txn)?);
                        if engine::fork_generation() != generation {
                            // The rest again, from the child's environment.
                            order.extend(stored[at + 1..].iter().map(|&(j, _)| entry(j)));
                            engine::order::sort_by_key(&mut order);
                            break;
                        }
                    }
                    Ok(())
                })?;
            }
            for (repeat, first) in twins {
                from_db[repeat] = from_db[first].clone();
            }
        }

        Ok((
            c,
            Many {
                from_buffer,
                from_db,
                failure,
            },
        ))
    }
}

/// How many values ahead of the one being decoded `read_many` asks the CPU
/// to fetch: far enough that the fetch ends before the decoder gets there.
const PREFETCH_AHEAD: usize = 4;

/// Ask the CPU to bring the start of `data` into the cache: the values
/// `read_many` decodes in the caller's order lie anywhere in the map.
#[inline]
fn prefetch(data: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and changes no memory;
    // the pointer is that of a live slice. SSE is part of x86_64.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(data.as_ptr().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

impl Core {
    /// Run `f` over the stored bytes of each of `keys` (`None`: no value),
    /// buffer first, the rest from one read transaction: what `get_array`
    /// and `get_arrays` copy from. `f` must not run code of the caller's
    /// (it runs inside the read, which a fork would leave behind).
    /// Spine rule 3: the slices are lent to `f` only, which copies them
    /// before the read ends.
    pub(crate) fn with_raw_values<T>(
        &self,
        py: Python<'_>,
        keys: &[Cow<'_, [u8]>],
        f: impl FnOnce(&[Option<&[u8]>]) -> PyResult<T>,
    ) -> PyResult<T> {
        // Lists as long as `keys`, whose room is asked for first.
        const WHAT: &str = "keys of get_arrays";
        let mut lookups: Vec<Lookup> = crate::codec::try_vec(keys.len(), WHAT)?;
        let dirty = {
            let b = self.buffered.lock();
            lookups.extend(keys.iter().map(|k| b.buf.lookup(k)));
            b.buf.active_len() > 0
        };
        let need_db = lookups.iter().any(|l| matches!(l, Lookup::Unknown));
        let from_buffer = || -> PyResult<Vec<Option<&[u8]>>> {
            let mut values = crate::codec::try_vec(keys.len(), WHAT)?;
            values.extend(lookups.iter().map(|l| match l {
                Lookup::Value(v) => Some((**v).as_ref()),
                _ => None,
            }));
            Ok(values)
        };
        if !need_db {
            return f(&from_buffer()?);
        }
        let failure = self.autoflush_for_read(py, dirty && self.autoflush_on_read);
        let result = self.with_read(py, |txn| {
            let mut values = from_buffer()?;
            // One cursor moving forward over the keys in order, as `read_many`.
            let mut order: Vec<usize> = crate::codec::try_vec(keys.len(), WHAT)?;
            order.extend((0..keys.len()).filter(|&i| matches!(lookups[i], Lookup::Unknown)));
            order.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
            let mut lookup = txn.ascending().map_err(to_py)?;
            lookup
                .get_each(order.iter().map(|&i| &*keys[i]), |j, found| {
                    values[order[j]] = found;
                })
                .map_err(to_py)?;
            f(&values)
        });
        self.log_read_flush_failure(py, failure);
        result
    }
}

/// The entry `pop_first` removed, and the core the call ended on.
pub(crate) struct Popped<'a, 'py> {
    pub(crate) core: CoreRef<'a>,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Bound<'py, PyAny>,
}

/// What `read_many` found, for each key in the caller's order.
pub(crate) struct Many<'py> {
    /// The buffer's answer (`Unknown`: the database's answer is in
    /// `from_db`).
    pub(crate) from_buffer: Vec<Option<Lookup>>,
    /// The database's value of each key the buffer did not know.
    pub(crate) from_db: Vec<Option<Bound<'py, PyAny>>>,
    /// The commit before the read failed: log it once the call is done.
    pub(crate) failure: Option<PyErr>,
}

fn acquire_env(py: Python<'_>, path: &std::path::Path, options: &EnvOptions) -> PyResult<Arc<Env>> {
    py.detach(|| Env::acquire(path, options)).map_err(to_py)
}

/// A final commit that failed. Its writes are still in the buffer
/// (`pending` counts them), but the store is closed: they will not be saved.
pub(crate) struct LostFlush {
    pub(crate) error: PyErr,
    unsaved: usize,
}

impl LostFlush {
    /// "3 buffered writes to <path> were not saved".
    pub(crate) fn not_saved(&self, path: &str) -> String {
        let n = self.unsaved;
        let (writes, were) = if n == 1 {
            ("write", "was")
        } else {
            ("writes", "were")
        };
        format!("{n} buffered {writes} to {path} {were} not saved")
    }

    /// The above, and why: "...: the final commit <when> failed: <error>".
    pub(crate) fn message(&self, py: Python<'_>, path: &str, when: &str) -> String {
        let kind = self
            .error
            .get_type(py)
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "Error".into());
        format!(
            "{}: the final commit {when} failed: {kind}: {}",
            self.not_saved(path),
            self.error.value(py)
        )
    }
}

/// `close()`: mark closing (new calls fail), flush, wait for reads in
/// flight, sync, release the environment. Returns the final commit's
/// failure when this call did the closing and the commit failed: the
/// caller decides whether it is raised or reported.
pub(crate) fn close_core(py: Python<'_>, c: &Core) -> PyResult<Option<LostFlush>> {
    if c.env.gate.held_by_current_thread() {
        return Err(to_py(engine::Error::WouldDeadlock("close()")));
    }
    if engine::txn::open_in_this_thread(&c.env) {
        // The close would wait for this thread's own transaction: refused,
        // with the store left open. Another thread's close waits for it.
        return Err(to_py(engine::Error::InTransaction));
    }
    {
        // Under the buffer mutex: see `CloseState::started`.
        let _b = c.buffered.lock();
        c.close.started.store(true, Ordering::Release);
    }
    let mut done = c.lock_detached(py, &c.close.done)?;
    if *done {
        return Ok(None);
    }
    let mut lost = None;
    if !c.readonly {
        if let Err(e) = c.flush(py) {
            log(
                py,
                "error",
                format!(
                    "final flush failed while closing {}: {}",
                    c.path,
                    e.value(py)
                ),
            );
            lost = Some(LostFlush {
                unsaved: c.buffered.lock().buf.pending(),
                error: e,
            });
        }
    }
    let env = &c.env;
    let sync_result = py.detach(|| {
        let s = if env.options.readonly {
            Ok(())
        } else {
            env.sync(true)
        };
        let closed = env.release();
        (s, closed)
    });
    *done = true;
    if let Err(e) = sync_result.1 {
        return Err(to_py(e.for_store(&c.path)));
    }
    if let (Err(e), None) = (sync_result.0, &lost) {
        let e = to_py(e.for_store(&c.path));
        log(
            py,
            "warning",
            format!("sync failed while closing {}: {}", c.path, e.value(py)),
        );
    }
    Ok(lost)
}

/// Close a store whose Python object is gone. Inside a read of the same
/// environment (code run by `pickle.loads` dropped it, or the garbage
/// collector ran during the read) the close would wait for that very read:
/// it runs on this thread when the read ends instead. A failure is reported
/// on stderr: there is no caller to raise to.
fn close_dropped(py: Python<'_>, core: Arc<Core>) {
    if core.generation != engine::fork_generation() {
        // Put off across a fork(): the parent's now; never clean it up.
        std::mem::forget(core);
        return;
    }
    if core.env.gate.held_by_current_thread() {
        let gate_owner = Arc::clone(&core.env);
        gate_owner.gate.after_shared(Box::new(move || {
            let _inside = exit::enter();
            Python::attach(|py| close_dropped(py, core));
        }));
        return;
    }
    let when = "when the store was garbage-collected without close()";
    match close_core(py, &core) {
        Ok(None) => {}
        Ok(Some(lost)) => report(py, &lost.message(py, &core.path, when)),
        Err(e) => {
            let unsaved = core.buffered.lock().buf.pending();
            report(
                py,
                &format!(
                    "closing {} {when} failed ({unsaved} buffered writes not saved): {}",
                    core.path,
                    e.value(py)
                ),
            );
        }
    }
}

/// A message the user must see whatever logging is configured to do (the
/// package logger has only a `NullHandler` by default): written to
/// `sys.stderr`, or straight to the process's stderr when that is gone (at
/// interpreter shutdown).
pub(crate) fn report(py: Python<'_>, message: &str) {
    let line = format!("lmdb_object_store: {message}\n");
    // `None` when there is no `sys.stderr` to write to.
    let written = (|| -> PyResult<Option<()>> {
        let stderr = crate::codec::import_attr(py, c"sys", c"stderr")?;
        if stderr.is_none() {
            return Ok(None);
        }
        stderr.call_method1("write", (line.as_str(),))?;
        stderr.call_method0("flush")?;
        Ok(Some(()))
    })();
    if !matches!(written, Ok(Some(()))) {
        eprint!("{line}");
    }
}

/// Best effort: a message on the `lmdb_object_store` logger (at interpreter
/// shutdown logging may be gone; the message is dropped then).
fn log(py: Python<'_>, level: &str, message: String) {
    let logged = package_logger(py).and_then(|logger| logger.call_method1(level, ("%s", message)));
    if let Err(e) = logged {
        after_logging(py, e);
    }
}

/// `logging.getLogger("lmdb_object_store")`, through an import that raises
/// `MemoryError` instead of panicking when Python has no memory left.
fn package_logger(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    crate::codec::import_attr(py, c"logging", c"getLogger")?.call1(("lmdb_object_store",))
}

/// A failed logging call does not fail the store call that logged (its work
/// is done), so the error is dropped, except `KeyboardInterrupt` (a
/// handler interrupted by Ctrl-C): that is signalled again, so that the
/// program still stops, at its next line.
fn after_logging(py: Python<'_>, err: PyErr) {
    if err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) {
        // SAFETY: callable from any thread, with or without the GIL; it
        // only marks SIGINT as pending for the main thread.
        unsafe { pyo3::ffi::PyErr_SetInterrupt() };
    }
}
