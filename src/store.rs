//! The Python surface: `LmdbObjectStore`, argument conversion and the order
//! of operations. LMDB itself is reached only through `engine`.
//!
//! Locks and the GIL: the buffer mutex is held only for plain Rust work and
//! may be taken with the GIL held. The commit lock is held across a commit
//! that runs with the GIL released, so it is waited for only with the GIL
//! released too. No Python code (pickling, logging) runs under either.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::buffer::{Batch, Bytes, Lookup, Payload, Value, WriteBuffer};
use engine::{Bounds, Env, EnvInfo, EnvOptions};
use parking_lot::{Mutex, MutexGuard};
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::codec;
use crate::errors::{to_py, StoreError};
use crate::exit;
use crate::iter::{Kind, StoreIterator};
use crate::keys::KeyPolicy;

const DEFAULT_MAX_BUFFER_BYTES: usize = 64 * 1024 * 1024;
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

impl Payload for HeldPickle {
    fn payload(&self) -> &[u8] {
        self.as_ref()
    }
}

impl HeldPickle {
    fn new(pickled: Bound<'_, PyBytes>) -> Self {
        let data = pickled.as_bytes();
        let (ptr, len) = (data.as_ptr(), data.len());
        HeldPickle {
            _obj: pickled.unbind(),
            ptr,
            len,
        }
    }
}

fn held(pickled: Bound<'_, PyBytes>) -> Bytes {
    Arc::new(HeldPickle::new(pickled))
}

/// The buffer and the closing flag, under one mutex: a write checks the flag
/// and lands in the buffer atomically, so close's final flush sees every
/// write that was let in.
struct Buffered {
    buf: WriteBuffer,
    closing: bool,
    /// Why the last background commit failed; its batch is back in `buf`.
    /// The next write or flush reports it.
    failed: Option<StoreError>,
    /// A read already logged that it could not commit the buffer; cleared
    /// by the next commit that succeeds, so each failure is logged once.
    read_flush_logged: bool,
}

impl Buffered {
    fn new(batch_size: usize) -> Self {
        Buffered {
            buf: WriteBuffer::with_capacity(batch_size.min(1 << 16)),
            closing: false,
            failed: None,
            read_flush_logged: false,
        }
    }
}

pub struct Core {
    /// This core's own `Arc`, handed to background commits.
    me: std::sync::Weak<Core>,
    env: Arc<Env>,
    buffered: Mutex<Buffered>,
    /// One commit of this store's buffer at a time, in order. A background
    /// commit holds it from the write that starts it until it ends.
    commit_lock: Mutex<()>,
    /// Mirror of `closing` for lock-free checks on the read path.
    closing: AtomicBool,
    closed: AtomicBool,
    close_lock: Mutex<()>,
    pub(crate) keys: KeyPolicy,
    batch_size: usize,
    max_buffer_bytes: usize,
    autoflush_on_read: bool,
    max_map_size: Option<usize>,
    protocol: i32,
    readonly: bool,
    path: String,
    fs_path: PathBuf,
    options: EnvOptions,
    /// The constructor's keyword arguments, for pickling.
    init_kwargs: Py<PyDict>,
    /// Fork generation this core belongs to (see `engine::fork_generation`).
    generation: u64,
}

/// Automatic commits run in the background only for batches of at least
/// this many entries, on a store that syncs at commit. Below it, or without
/// the fsync, the commit is shorter than handing it to another thread and
/// waking that thread (measured on 2 cores: batch_size 100 was 15% slower in
/// the background, with sync or without; 300 without sync, 25% slower; 1000
/// with sync, 40% faster).
const BACKGROUND_MIN_BATCH: usize = 256;

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
        if c.closing.load(Ordering::Acquire) {
            // Its close commits; only wait for a commit under way, so that
            // no commit thread is mid-way through anything at a fork.
            if let Ok(g) = c.lock_detached(py, &c.commit_lock) {
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
        if c.generation != engine::fork_generation()
            || c.readonly
            || c.closing.load(Ordering::Acquire)
        {
            continue;
        }
        if let Err(error) = c.flush(py) {
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
    fn check_open(&self) -> PyResult<()> {
        if self.closing.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        Ok(())
    }

    fn check_writable(&self, op: &'static str) -> PyResult<()> {
        self.check_open()?;
        if self.readonly {
            return Err(StoreError::Readonly(op).into_pyerr());
        }
        Ok(())
    }

    /// Wait for `m` with the GIL released. A thread inside a read (nested
    /// call from unpickling) gives up if growth is waiting for that read.
    fn lock_detached<'a>(&self, py: Python<'_>, m: &'a Mutex<()>) -> PyResult<MutexGuard<'a, ()>> {
        if let Some(g) = m.try_lock() {
            return Ok(g);
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

    /// Log every growth of the map since the last call, whether or not the
    /// write that needed it went on to commit.
    fn log_growth(&self, py: Python<'_>) {
        let grown = self.env.take_growths();
        if grown.is_empty() {
            return;
        }
        let Ok(logger) = py
            .import("logging")
            .and_then(|m| m.call_method1("getLogger", ("lmdb_object_store",)))
        else {
            return;
        };
        for g in grown {
            let _ = logger.call_method1(
                "info",
                (
                    "growing the LMDB map of %s from %d to %d bytes",
                    self.path.as_str(),
                    g.from,
                    g.to,
                ),
            );
        }
    }

    /// Commit the buffer in one write transaction, after any background
    /// commit under way. On failure the batch goes back into the buffer
    /// (under any newer writes) and the error is raised.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let result = self
            .lock_detached(py, &self.commit_lock)
            .and_then(|_commit| self.commit_buffer_locked(py));
        self.log_growth(py);
        result
    }

    /// The body of `flush`, for callers that hold the commit lock. A failed
    /// background commit is not reported here: its batch is back in the
    /// buffer, and this commit writes it again.
    fn commit_buffer_locked(&self, py: Python<'_>) -> PyResult<()> {
        let batch = {
            let mut b = self.buffered.lock();
            b.failed = None;
            match b.buf.begin_commit() {
                Some(batch) => batch,
                None => return Ok(()),
            }
        };
        let env = &*self.env;
        let cap = self.max_map_size;
        let result = py.detach(|| env.commit(&batch, cap));
        drop(batch);
        let mut b = self.buffered.lock();
        b.buf.end_commit(result.is_ok());
        b.read_flush_logged &= result.is_err();
        drop(b);
        result.map_err(to_py)
    }

    /// The buffer is full: commit it on a background thread, so the
    /// commit's fsync overlaps the caller's next writes. Waits first for the
    /// commit before (one batch in flight at a time, in order). Reads see the
    /// batch in flight until it is in the database.
    fn start_commit(&self, py: Python<'_>) -> PyResult<()> {
        let commit = self.lock_detached(py, &self.commit_lock)?;
        let batch = {
            let mut b = self.buffered.lock();
            // After a failed commit its batch is back in the buffer: the next
            // write reports it; no retry in a loop.
            match b.failed {
                Some(_) => None,
                None => b.buf.begin_commit(),
            }
        };
        let Some(batch) = batch else {
            drop(commit);
            self.log_growth(py);
            return Ok(());
        };
        let core = self.me.upgrade().expect("a live core has a live Arc");
        let job = {
            let batch = batch.clone();
            move || {
                let commit =
                    std::panic::AssertUnwindSafe(|| core.env.commit(&batch, core.max_map_size));
                let result = match std::panic::catch_unwind(commit) {
                    Ok(result) => result.map_err(StoreError::from),
                    Err(_) => Err(StoreError::CommitPanicked {
                        path: core.path.clone(),
                    }),
                };
                drop(batch);
                core.end_background_commit(result);
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
                // its copy of the batch are gone; the buffer still has it.
                drop(batch);
                self.buffered.lock().buf.commit_failed();
                let result = self.commit_buffer_locked(py);
                drop(commit);
                self.log_growth(py);
                result
            }
        }
    }

    /// A background commit ended: forget its batch, or put it back and keep
    /// the error for the next write. No Python here.
    fn end_background_commit(&self, result: Result<(), StoreError>) {
        let mut b = self.buffered.lock();
        b.buf.end_commit(result.is_ok());
        b.read_flush_logged &= result.is_err();
        if let Err(e) = result {
            b.failed = Some(e);
        }
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
    fn commit_for_read(&self, py: Python<'_>) -> PyResult<()> {
        let result = self
            .lock_detached(py, &self.commit_lock)
            .and_then(|_commit| {
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
    fn autoflush_for_read(&self, py: Python<'_>, dirty: bool) -> Option<PyErr> {
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
    pub(crate) fn buffered_in(&self, bounds: &Bounds, reverse: bool) -> Vec<(Vec<u8>, Value)> {
        let b = self.buffered.lock();
        let active = b.buf.active();
        let mut out: Vec<(Vec<u8>, Value)> = active
            .iter()
            .filter(|(k, _)| bounds.contains(k))
            .map(|(k, v)| (k.to_vec(), v.clone()))
            .collect();
        if let Some(inflight) = b.buf.inflight() {
            // Under the newer writes, which win.
            out.extend(
                inflight
                    .iter()
                    .filter(|(k, _)| bounds.contains(k) && active.get(k).is_none())
                    .map(|(k, v)| (k.to_vec(), v.clone())),
            );
        }
        drop(b);
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if reverse {
            out.reverse();
        }
        out
    }

    /// Keep a read's LMDB memory readable for good: a buffer over it
    /// outlived the read (see `codec::loads_borrowed`).
    pub(crate) fn pin_txn(&self, txn: &engine::ReadTxn<'_>) {
        txn.pin(&self.env);
    }

    fn bound(&self, name: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<u8>>> {
        match v {
            None => Ok(None),
            Some(v) if v.is_none() => Ok(None),
            Some(v) => match self.keys.to_bytes(v) {
                Ok(b) => Ok(Some(b.into_owned())),
                Err(e) if e.is_instance_of::<PyTypeError>(v.py()) => {
                    Err(PyTypeError::new_err(format!("{name}: {}", e.value(v.py()))))
                }
                Err(e) => Err(e),
            },
        }
    }

    fn bounds(
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

    fn buffered_lookup(&self, key: &[u8]) -> (Lookup, bool) {
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
                Ok(Some(txn)) => return f(&txn),
                Ok(None) => py
                    .detach(|| env.adopt_resize())
                    .map_err(|e| to_py(e.for_store(&self.path)))?,
                Err(e) => return Err(to_py(e.for_store(&self.path))),
            }
        }
    }

    fn closed_error(&self) -> PyErr {
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
        codec::loads_borrowed(py, (**v).as_ref(), || pin_bytes(v))
            .map_err(|e| codec::unpickle_error(py, key, "buffered", e))
    }

    /// The value of `key` or `None`; buffer first, then (after the autoflush)
    /// the database. A failed autoflush does not fail the read: the buffer
    /// did not know the key, so the database has the answer.
    fn get_value<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Option<Bound<'py, PyAny>>> {
        let (found, dirty) = self.buffered_lookup(key);
        match found {
            Lookup::Value(v) => return self.unpickle_buffered(py, key, &v).map(Some),
            Lookup::Deleted => return Ok(None),
            Lookup::Unknown => {}
        }
        let failure = self.autoflush_for_read(py, dirty && self.autoflush_on_read);
        let result = self.with_read(py, |txn| match txn.get(key).map_err(to_py)? {
            None => Ok(None),
            Some(data) => codec::loads_borrowed(py, data, || self.pin_txn(txn))
                .map(Some)
                .map_err(|e| codec::unpickle_error(py, key, "DB", e)),
        });
        self.log_read_flush_failure(py, failure);
        result
    }

    fn contains(&self, py: Python<'_>, key: &[u8], flush: bool) -> PyResult<bool> {
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
    fn buffer_write(&self, py: Python<'_>, key: &[u8], value: Value) -> PyResult<()> {
        self.buffer_writes(py, [(key, value)])
    }

    /// Buffer writes together (nobody sees half of them), then commit if the
    /// buffer is full: in the background when it reached `batch_size`
    /// entries, here when it went past `max_buffer_bytes` (see below). A
    /// background commit that failed since the last write is raised here,
    /// before anything is buffered.
    fn buffer_writes<K: AsRef<[u8]>>(
        &self,
        py: Python<'_>,
        writes: impl IntoIterator<Item = (K, Value)>,
    ) -> PyResult<()> {
        let (by_count, by_bytes) = loop {
            let mut b = self.buffered.lock();
            if b.closing {
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
            for (k, v) in writes {
                b.buf.insert(k.as_ref(), v);
            }
            break (
                b.buf.active_len() >= self.batch_size,
                b.buf.active_memory() > self.max_buffer_bytes,
            );
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
    fn wait_for_fork(&self, py: Python<'_>) -> PyResult<()> {
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
    fn commits_in_background(&self) -> bool {
        self.batch_size >= BACKGROUND_MIN_BATCH && self.options.sync
    }

    /// The error of a failed background commit, saying so; its own type
    /// (MapFullError, ...) is kept.
    fn background_error(&self, py: Python<'_>, e: StoreError) -> PyErr {
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

    fn info(&self, py: Python<'_>) -> PyResult<EnvInfo> {
        let env = &*self.env;
        let g = shared_guard(py, env);
        env.info_shared(&g).map_err(|e| self.map_closed(e))
    }

    fn map_closed(&self, e: engine::Error) -> PyErr {
        to_py(e.for_store(&self.path))
    }

    /// Number of live keys, the buffer included: LMDB's entry count,
    /// corrected by the buffered writes (one lookup per buffered key).
    fn len(&self, py: Python<'_>) -> PyResult<usize> {
        let b = self.buffered.lock();
        let mut keys: Vec<(Vec<u8>, bool)> = Vec::new();
        let mut seen = engine::buffer::FastMap::<&[u8], ()>::default();
        let inflight = b.buf.inflight().cloned();
        for batch in [Some(b.buf.active()), inflight.as_deref()]
            .into_iter()
            .flatten()
        {
            for (k, v) in batch.iter() {
                if seen.insert(k, ()).is_none() {
                    keys.push((k.to_vec(), v.is_some()));
                }
            }
        }
        drop(seen);
        drop(b);
        self.with_read(py, |txn| {
            let mut n = txn.entries().map_err(to_py)? as isize;
            for (k, live) in &keys {
                let stored = txn.get(k).map_err(to_py)?.is_some();
                n += (*live as isize) - (stored as isize);
            }
            Ok(n.max(0) as usize)
        })
    }
}

/// Never free `bytes`: pickle kept a buffer over them (see
/// `codec::loads_borrowed`).
fn pin_bytes(bytes: &Bytes) {
    std::mem::forget(bytes.clone());
}

/// Hold the map gate shared; a wait (growth or close under way) happens with
/// the GIL released.
fn shared_guard<'a>(py: Python<'_>, env: &'a Env) -> engine::gate::SharedGuard<'a> {
    match env.gate.try_shared() {
        Some(g) => g,
        None => py.detach(|| env.gate.wait_shared()),
    }
}

/// A persistent, thread-safe, dict-like store of Python objects on LMDB.
///
/// >>> with LmdbObjectStore("/tmp/db") as store:
/// ...     store[b"k"] = {"v": 1}
#[pyclass(
    module = "lmdb_object_store",
    name = "LmdbObjectStore",
    subclass,
    frozen,
    weakref
)]
pub struct LmdbObjectStore {
    core: AtomicPtr<Core>,
}

impl Drop for LmdbObjectStore {
    fn drop(&mut self) {
        let p = *self.core.get_mut();
        if !p.is_null() {
            // SAFETY: `p` came from Arc::into_raw and this object owns that
            // strong count.
            let core = unsafe { Arc::from_raw(p) };
            if core.generation != engine::fork_generation() {
                // Inherited across fork(): the parent's; never clean it up.
                std::mem::forget(core);
                return;
            }
            if !core.closed.load(Ordering::Acquire) {
                // Dropped without close(): close it, so buffered writes are
                // committed rather than lost.
                let _inside = exit::enter();
                Python::attach(|py| close_dropped(py, core));
            }
        }
    }
}

fn bool_opt(v: &Bound<'_, PyAny>) -> PyResult<bool> {
    v.is_truthy()
}

fn usize_opt(name: &str, v: &Bound<'_, PyAny>) -> PyResult<usize> {
    let n: i128 = v.extract().map_err(|e| {
        if codec::passes_through(v.py(), &e) {
            return e;
        }
        PyTypeError::new_err(format!("{name} must be an int, got {}", type_name(v)))
    })?;
    if n < 0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be >= 0, got {n}"
        )));
    }
    usize::try_from(n).map_err(|_| PyValueError::new_err(format!("{name} is too large: {n}")))
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn parse_lmdb_options(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<EnvOptions> {
    let mut o = EnvOptions::default();
    let Some(kwargs) = kwargs else {
        return Ok(o);
    };
    for (k, v) in kwargs.iter() {
        let name: String = k.extract()?;
        match name.as_str() {
            "map_size" => {
                o.map_size = usize_opt("map_size", &v)?;
                if o.map_size == 0 {
                    return Err(PyValueError::new_err("map_size must be > 0"));
                }
            }
            "subdir" => o.subdir = bool_opt(&v)?,
            "readonly" => o.readonly = bool_opt(&v)?,
            "metasync" => o.metasync = bool_opt(&v)?,
            "sync" => o.sync = bool_opt(&v)?,
            "map_async" => o.map_async = bool_opt(&v)?,
            "mode" => {
                o.mode = u32::try_from(usize_opt("mode", &v)?)
                    .map_err(|_| PyValueError::new_err("mode is too large"))?
            }
            "create" => o.create = bool_opt(&v)?,
            "readahead" => o.readahead = bool_opt(&v)?,
            "writemap" => o.writemap = bool_opt(&v)?,
            "meminit" => o.meminit = bool_opt(&v)?,
            "max_readers" => {
                let n = usize_opt("max_readers", &v)?;
                if n == 0 || n > u32::MAX as usize {
                    return Err(PyValueError::new_err(format!(
                        "max_readers must be between 1 and {}, got {n}",
                        u32::MAX
                    )));
                }
                o.max_readers = n as u32;
            }
            "lock" => o.lock = bool_opt(&v)?,
            other => {
                return Err(PyTypeError::new_err(format!(
                    "LmdbObjectStore() got an unexpected keyword argument '{other}'"
                )))
            }
        }
    }
    Ok(o)
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

impl LmdbObjectStore {
    fn core(&self) -> PyResult<CoreRef<'_>> {
        let inside = exit::enter();
        let p = self.core.load(Ordering::Acquire);
        if p.is_null() {
            return Err(StoreError::NotInitialised.into());
        }
        // SAFETY: a non-null pointer is a live Arc<Core> owned by `self`;
        // it is freed only in Drop, and a core replaced after fork is leaked,
        // never freed, so it outlives the borrow of `self`.
        let c = unsafe { &*p };
        let core = if c.generation == engine::fork_generation() || c.closing.load(Ordering::Acquire)
        {
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
    fn reopen_after_fork(&self, old: &Core) -> PyResult<&Core> {
        Python::attach(|py| {
            let env = acquire_env(py, &old.fs_path, &old.options)?;
            let core = Arc::new_cyclic(|me| Core {
                me: me.clone(),
                env,
                buffered: Mutex::new(Buffered::new(old.batch_size)),
                commit_lock: Mutex::new(()),
                closing: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                close_lock: Mutex::new(()),
                keys: old.keys.clone(),
                batch_size: old.batch_size,
                max_buffer_bytes: old.max_buffer_bytes,
                autoflush_on_read: old.autoflush_on_read,
                max_map_size: old.max_map_size,
                protocol: old.protocol,
                readonly: old.readonly,
                path: old.path.clone(),
                fs_path: old.fs_path.clone(),
                options: old.options.clone(),
                init_kwargs: old.init_kwargs.clone_ref(py),
                generation: engine::fork_generation(),
            });
            register_core(&core);
            let raw = Arc::into_raw(core) as *mut Core;
            let old_ptr = old as *const Core as *mut Core;
            match self
                .core
                .compare_exchange(old_ptr, raw, Ordering::AcqRel, Ordering::Acquire)
            {
                // The old core stays allocated forever (leaked).
                Ok(_) => {}
                Err(_) => {
                    // Another thread of the child reopened first: use its.
                    // SAFETY: `raw` was never published.
                    let mine = unsafe { Arc::from_raw(raw) };
                    let _ = py.detach(|| mine.env.release());
                }
            }
            // SAFETY: as in `core()`: the published pointer is a live core.
            Ok(unsafe { &*self.core.load(Ordering::Acquire) })
        })
    }

    pub(crate) fn open_core(&self) -> PyResult<CoreRef<'_>> {
        let c = self.core()?;
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
}

#[pymethods]
impl LmdbObjectStore {
    /// `__new__` takes everything `__init__` takes (a subclass may add its
    /// own); the text signature is `__init__`'s, so that `help()` and
    /// `inspect.signature()` show the real constructor.
    #[new]
    #[pyo3(
        signature = (*_args, **_kwargs),
        text_signature = "(db_path, batch_size=1000, *, autoflush_on_read=True, \
                          key_encoding=None, key_errors='strict', str_normalize=None, \
                          max_map_size=None, max_buffer_bytes=67108864, \
                          pickle_protocol=None, **lmdb_options)"
    )]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        LmdbObjectStore {
            core: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    #[pyo3(signature = (
        db_path, batch_size=1000, *, autoflush_on_read=None, key_encoding=None,
        key_errors="strict".to_string(), str_normalize=None, max_map_size=None,
        max_buffer_bytes=DEFAULT_MAX_BUFFER_BYTES as i64, pickle_protocol=None, **lmdb_options
    ))]
    #[allow(clippy::too_many_arguments)]
    fn __init__(
        &self,
        py: Python<'_>,
        db_path: &Bound<'_, PyAny>,
        batch_size: i64,
        autoflush_on_read: Option<&Bound<'_, PyAny>>,
        key_encoding: Option<String>,
        key_errors: String,
        str_normalize: Option<String>,
        max_map_size: Option<&Bound<'_, PyAny>>,
        max_buffer_bytes: i64,
        pickle_protocol: Option<i32>,
        lmdb_options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let _inside = exit::enter();
        if !self.core.load(Ordering::Acquire).is_null() {
            return Err(StoreError::AlreadyOpen.into());
        }
        // Any truthy value, as 0.1.0 took it; None (not given) means True.
        let autoflush_on_read = match autoflush_on_read {
            None => true,
            Some(v) => v.is_truthy()?,
        };
        let fspath = py
            .import("os")?
            .call_method1("fspath", (db_path,))
            .map_err(|e| {
                if codec::passes_through(py, &e) {
                    return e;
                }
                PyTypeError::new_err(format!(
                    "db_path must be str or os.PathLike, got {}",
                    type_name(db_path)
                ))
            })?;
        // Through os.fsencode, so a str path with surrogate escapes (a
        // non-UTF-8 name) opens the same file as its bytes spelling.
        let raw = py.import("os")?.call_method1("fsencode", (&fspath,))?;
        let path: PathBuf = {
            use std::os::unix::ffi::OsStringExt;
            let b: Vec<u8> = raw.extract()?;
            PathBuf::from(std::ffi::OsString::from_vec(b))
        };
        if batch_size < 1 {
            return Err(PyValueError::new_err(format!(
                "batch_size must be >= 1, got {batch_size}"
            )));
        }
        let batch_size = batch_size as usize;
        if max_buffer_bytes < 0 {
            return Err(PyValueError::new_err(format!(
                "max_buffer_bytes must be >= 0, got {max_buffer_bytes}"
            )));
        }
        let max_buffer_bytes = max_buffer_bytes as usize;
        let max_map_size = match max_map_size {
            None => None,
            Some(v) if v.is_none() => None,
            Some(v) => {
                let n = usize_opt("max_map_size", v)?;
                if n == 0 {
                    return Err(PyValueError::new_err("max_map_size must be > 0 or None"));
                }
                Some(n)
            }
        };
        let protocol = match pickle_protocol {
            Some(p) if p >= 0 => p,
            // Negative means the highest, as pickle reads it.
            _ => py
                .import("pickle")?
                .getattr("HIGHEST_PROTOCOL")?
                .extract()?,
        };
        // An unknown protocol fails here, not at the first put.
        codec::dumps(py, &py.None().into_bound(py), protocol).map_err(|e| {
            if codec::passes_through(py, &e) {
                return e;
            }
            PyValueError::new_err(format!("pickle_protocol={protocol}: {}", e.value(py)))
        })?;
        let keys = KeyPolicy::new(py, key_encoding, key_errors, str_normalize)?;
        let options = parse_lmdb_options(lmdb_options)?;
        let shown = path.display().to_string();
        let env = acquire_env(py, &path, &options)?;
        let init_kwargs = PyDict::new(py);
        init_kwargs.set_item("batch_size", batch_size)?;
        init_kwargs.set_item("autoflush_on_read", autoflush_on_read)?;
        init_kwargs.set_item("key_encoding", keys.encoding.as_deref())?;
        init_kwargs.set_item("key_errors", keys.errors.as_str())?;
        init_kwargs.set_item("str_normalize", keys.normalize.map(|n| n.name()))?;
        init_kwargs.set_item("max_map_size", max_map_size)?;
        init_kwargs.set_item("max_buffer_bytes", max_buffer_bytes)?;
        init_kwargs.set_item("pickle_protocol", protocol)?;
        if let Some(extra) = lmdb_options {
            init_kwargs.update(extra.as_mapping())?;
        }
        let core = Arc::new_cyclic(|me| Core {
            me: me.clone(),
            env,
            buffered: Mutex::new(Buffered::new(batch_size)),
            commit_lock: Mutex::new(()),
            closing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            close_lock: Mutex::new(()),
            keys,
            batch_size,
            max_buffer_bytes,
            autoflush_on_read,
            max_map_size,
            protocol,
            readonly: options.readonly,
            path: shown,
            fs_path: path,
            options,
            init_kwargs: init_kwargs.unbind(),
            generation: engine::fork_generation(),
        });
        register_core(&core);
        let raw = Arc::into_raw(core) as *mut Core;
        if self
            .core
            .compare_exchange(
                std::ptr::null_mut(),
                raw,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            // SAFETY: `raw` was never published; reclaim it.
            let core = unsafe { Arc::from_raw(raw) };
            let _ = py.detach(|| core.env.release());
            return Err(StoreError::AlreadyOpen.into());
        }
        Ok(())
    }

    /// Store `obj` (pickled now) under `key`; buffered until the next flush.
    fn put(&self, py: Python<'_>, key: &Bound<'_, PyAny>, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("put")?;
        let k = c.keys.to_write_bytes(key)?;
        let pickled = codec::dumps(py, obj, c.protocol)?;
        self.current(c)?.buffer_write(py, &k, Some(held(pickled)))
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        obj: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.put(py, key, obj)
    }

    /// Buffer a deletion of `key` (no check that it exists).
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("delete")?;
        let k = c.keys.to_write_bytes(key)?;
        self.current(c)?.buffer_write(py, &k, None)
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("delete")?;
        let k = c.keys.to_bytes(key)?;
        let c = self.current(c)?;
        if !engine::key_len_ok(k.len()) || !c.contains(py, &k, false)? {
            return Err(key_error(key));
        }
        c.buffer_write(py, &k, None)
    }

    /// The value stored under `key`, or `default`.
    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.open_core()?;
        let k = c.keys.to_bytes(key)?;
        Ok(match self.current(c)?.get_value(py, &k)? {
            Some(v) => v,
            None => default.unwrap_or_else(|| py.None().into_bound(py)),
        })
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.open_core()?;
        let k = c.keys.to_bytes(key)?;
        self.current(c)?
            .get_value(py, &k)?
            .ok_or_else(|| key_error(key))
    }

    /// Whether `key` has a value; `flush=None` follows `autoflush_on_read`.
    #[pyo3(signature = (key, *, flush=None))]
    fn exists(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        flush: Option<bool>,
    ) -> PyResult<bool> {
        let c = self.open_core()?;
        let k = c.keys.to_bytes(key)?;
        let c = self.current(c)?;
        c.contains(py, &k, flush.unwrap_or(c.autoflush_on_read))
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let c = self.open_core()?;
        let k = c.keys.to_bytes(key)?;
        self.current(c)?.contains(py, &k, false)
    }

    /// `(found, not_found)` for many keys, read in one transaction.
    #[pyo3(signature = (keys, *, decode_keys=false, decode_not_found=None))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        decode_keys: bool,
        decode_not_found: Option<bool>,
    ) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
        let c = self.open_core()?;
        if (decode_keys || decode_not_found == Some(true)) && c.keys.encoding.is_none() {
            return Err(PyValueError::new_err(
                "Decoding requested but key_encoding is not set.",
            ));
        }
        let decode_not_found = decode_not_found.unwrap_or(decode_keys);
        let given: Vec<Bound<'py, PyAny>> = keys.try_iter()?.collect::<PyResult<_>>()?;
        let normalised: Vec<Cow<'_, [u8]>> = given
            .iter()
            .map(|k| c.keys.to_bytes(k))
            .collect::<PyResult<_>>()?;
        let mut c = self.current(c)?;

        // Buffer first, in one lock.
        let mut from_buffer: Vec<Option<Lookup>> = Vec::with_capacity(normalised.len());
        let mut dirty = false;
        {
            let b = c.buffered.lock();
            for k in &normalised {
                from_buffer.push(Some(b.buf.lookup(k)));
            }
            dirty |= b.buf.active_len() > 0;
        }
        let need_db = from_buffer
            .iter()
            .any(|l| matches!(l, Some(Lookup::Unknown)));
        let failure = c.autoflush_for_read(py, need_db && dirty && c.autoflush_on_read);

        // Database reads in key order, through one cursor moving forward:
        // neighbouring keys share pages, so a sorted pass reads each page
        // once, and a key next to the last one needs no search at all. The
        // values go into the dict in the caller's order after.
        let mut from_db: Vec<Option<Bound<'py, PyAny>>> = Vec::new();
        let _gc = (given.len() > 1).then(|| codec::GcPause::new(py));
        if need_db {
            // Each key's first 16 bytes as a number, read once: sorting
            // compares these and reads the keys themselves only on a tie.
            let mut order: Vec<(u128, &[u8], usize)> = (0..normalised.len())
                .filter(|&i| matches!(from_buffer[i], Some(Lookup::Unknown)))
                .map(|i| (key_head(&normalised[i]), &*normalised[i], i))
                .collect();
            order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            from_db.resize_with(normalised.len(), || None);
            let mut next = 0;
            let mut prev: Option<(u128, &[u8], usize)> = None;
            while next < order.len() {
                // Unpickling runs Python code, which may fork: a child goes
                // on in a transaction of its own environment.
                c = self.current(c)?;
                let reader = &c;
                let generation = engine::fork_generation();
                reader.with_read(py, |txn| {
                    let mut lookups = txn.ascending().map_err(to_py)?;
                    while let Some(&(head, k, i)) = order.get(next) {
                        next += 1;
                        // A repeated key sits next to its twin: reuse its value.
                        if let Some((_, _, p)) = prev.filter(|&(h, pk, _)| h == head && pk == k) {
                            from_db[i] = from_db[p].clone();
                            continue;
                        }
                        prev = Some((head, k, i));
                        if let Some(data) = lookups.get(k).map_err(to_py)? {
                            let obj = codec::loads_borrowed(py, data, || reader.pin_txn(txn))
                                .map_err(|e| codec::unpickle_error(py, k, "DB", e))?;
                            from_db[i] = Some(obj);
                            if engine::fork_generation() != generation {
                                break;
                            }
                        }
                    }
                    Ok(())
                })?;
            }
        }

        let found = PyDict::new(py);
        let mut hit = vec![false; normalised.len()];
        // The dict key: the caller's own object when it already is the
        // normalised bytes (its hash is cached), else a new one.
        let key_obj = |i: usize, k: &[u8]| -> PyResult<Bound<'py, PyAny>> {
            if decode_keys {
                c.keys.decode(py, k)
            } else if given[i].is_exact_instance_of::<PyBytes>() {
                Ok(given[i].clone())
            } else {
                Ok(PyBytes::new(py, k).into_any())
            }
        };
        for (i, (k, l)) in normalised.iter().zip(&from_buffer).enumerate() {
            let obj = match l {
                Some(Lookup::Value(v)) => c.unpickle_buffered(py, k, v)?,
                Some(Lookup::Unknown) => match from_db.get_mut(i).and_then(Option::take) {
                    Some(obj) => obj,
                    None => continue,
                },
                _ => continue,
            };
            found.set_item(key_obj(i, k)?, obj)?;
            hit[i] = true;
        }
        let not_found = PyList::empty(py);
        for (i, k) in given.iter().enumerate() {
            if hit[i] {
                continue;
            }
            if decode_not_found && k.cast::<PyString>().is_err() {
                not_found.append(c.keys.decode(py, &normalised[i])?)?;
            } else {
                not_found.append(k)?;
            }
        }
        c.log_read_flush_failure(py, failure);
        Ok((found, not_found))
    }

    /// Write every `(key, value)` of `items` in one transaction, after
    /// flushing the buffer: all or nothing.
    fn put_many(&self, py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("put_many")?;
        let pairs = if items.hasattr("items")? && items.hasattr("keys")? {
            items.call_method0("items")?
        } else {
            items.clone()
        };
        // Normalise and pickle everything before touching the buffer. The
        // pickles are not copied: the commit reads them in place (bytes
        // objects are immutable and the batch keeps them alive). The batch
        // keeps the last write of each key, and commits in key order.
        let mut batch: Batch<HeldPickle> = Batch::default();
        for pair in pairs.try_iter()? {
            let pair = pair?;
            let (k, v) = key_value_pair(&pair)?.map_err(|why| {
                PyTypeError::new_err(format!(
                    "put_many() wants a mapping or an iterable of (key, value) pairs; \
                     an item of type {} {why}",
                    type_name(&pair)
                ))
            })?;
            let kb = c.keys.to_write_bytes(&k)?;
            let pickled = codec::dumps(py, &v, c.protocol)?;
            batch.insert(&kb, Some(HeldPickle::new(pickled)));
        }
        let c = self.current(c)?;
        let result = (|| -> PyResult<()> {
            let _commit = c.lock_detached(py, &c.commit_lock)?;
            if c.buffered.lock().closing {
                return Err(c.closed_error());
            }
            // The buffer goes first, so older buffered writes cannot land
            // after these.
            c.commit_buffer_locked(py)?;
            let env = &*c.env;
            let cap = c.max_map_size;
            if !batch.is_empty() {
                py.detach(|| env.commit(&batch, cap)).map_err(to_py)?;
            }
            Ok(())
        })();
        c.log_growth(py);
        result
    }

    /// Write the buffer to LMDB in one transaction.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("flush")?;
        c.flush(py)
    }

    /// Flush, wait for reads in flight, sync and close. Idempotent.
    #[pyo3(signature = (*, strict=false))]
    fn close(&self, py: Python<'_>, strict: bool) -> PyResult<()> {
        if self.core.load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        let c = self.core()?;
        match close_core(py, &c)? {
            None => Ok(()),
            Some(lost) if strict => {
                let err = PyRuntimeError::new_err(format!(
                    "Final flush failed during close() of {}",
                    c.path
                ));
                err.set_cause(py, Some(lost.error));
                Err(err)
            }
            Some(lost) => {
                report(py, &lost.message(py, &c.path, "in close()"));
                Ok(())
            }
        }
    }

    /// Flush the OS buffers of the data file to disk.
    #[pyo3(signature = (force=true))]
    fn sync(&self, py: Python<'_>, force: bool) -> PyResult<()> {
        let c = self.open_core()?;
        let env = &*c.env;
        py.detach(|| env.sync(force)).map_err(|e| c.map_closed(e))
    }

    /// `map_addr`, `map_size`, `last_pgno`, `last_txnid`, `max_readers`,
    /// `num_readers`, as py-lmdb's `Environment.info()`.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.open_core()?;
        let i = c.info(py)?;
        let d = PyDict::new(py);
        d.set_item("map_addr", i.map_addr)?;
        d.set_item("map_size", i.map_size)?;
        d.set_item("last_pgno", i.last_pgno)?;
        d.set_item("last_txnid", i.last_txnid)?;
        d.set_item("max_readers", i.max_readers)?;
        d.set_item("num_readers", i.num_readers)?;
        Ok(d)
    }

    /// `psize`, `depth`, `branch_pages`, `leaf_pages`, `overflow_pages`,
    /// `entries`, as py-lmdb's `Environment.stat()` (committed data only).
    fn stat<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.open_core()?;
        let env = &*c.env;
        let g = shared_guard(py, env);
        let s = env.stat_shared(&g).map_err(|e| c.map_closed(e))?;
        drop(g);
        let d = PyDict::new(py);
        d.set_item("psize", s.psize)?;
        d.set_item("depth", s.depth)?;
        d.set_item("branch_pages", s.branch_pages)?;
        d.set_item("leaf_pages", s.leaf_pages)?;
        d.set_item("overflow_pages", s.overflow_pages)?;
        d.set_item("entries", s.entries)?;
        Ok(d)
    }

    fn __iter__(slf: &Bound<'_, Self>) -> PyResult<StoreIterator> {
        slf.get().open_core()?;
        Ok(StoreIterator::new(
            slf.clone().unbind(),
            Kind::Keys,
            Bounds::default(),
            false,
        ))
    }

    /// The keys in descending order, as `reversed(dict)` gives them.
    fn __reversed__(slf: &Bound<'_, Self>) -> PyResult<StoreIterator> {
        slf.get().open_core()?;
        Ok(StoreIterator::new(
            slf.clone().unbind(),
            Kind::Keys,
            Bounds::default(),
            true,
        ))
    }

    /// Iterator for the views: `kind` is "keys", "values" or "items".
    #[pyo3(signature = (kind, prefix=None, start=None, stop=None, reverse=false))]
    fn _iter(
        slf: &Bound<'_, Self>,
        kind: &str,
        prefix: Option<&Bound<'_, PyAny>>,
        start: Option<&Bound<'_, PyAny>>,
        stop: Option<&Bound<'_, PyAny>>,
        reverse: bool,
    ) -> PyResult<StoreIterator> {
        let c = slf.get().open_core()?;
        let bounds = c.bounds(prefix, start, stop)?;
        Ok(StoreIterator::new(
            slf.clone().unbind(),
            Kind::parse(kind)?,
            bounds,
            reverse,
        ))
    }

    /// `(key, value)` pairs in key order, within the bounds.
    ///
    /// >>> for key, value in store.scan(prefix=b"user:"): ...
    #[pyo3(signature = (*, prefix=None, start=None, stop=None, reverse=false))]
    fn scan(
        slf: &Bound<'_, Self>,
        prefix: Option<&Bound<'_, PyAny>>,
        start: Option<&Bound<'_, PyAny>>,
        stop: Option<&Bound<'_, PyAny>>,
        reverse: bool,
    ) -> PyResult<StoreIterator> {
        Self::_iter(slf, "items", prefix, start, stop, reverse)
    }

    /// Number of keys within the bounds.
    #[pyo3(signature = (prefix=None, start=None, stop=None))]
    fn _count(
        &self,
        py: Python<'_>,
        prefix: Option<&Bound<'_, PyAny>>,
        start: Option<&Bound<'_, PyAny>>,
        stop: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let c = self.open_core()?;
        let bounds = c.bounds(prefix, start, stop)?;
        let c = self.current(c)?;
        if bounds.is_unbounded() {
            return c.len(py);
        }
        match c.flush_for_read(py) {
            Ok(()) => crate::iter::count(py, &c, &bounds, &[]),
            Err(e) => {
                // Count the database's keys corrected by the buffered ones.
                let failure = c.read_flush_failed(e);
                let overlay = c.buffered_in(&bounds, false);
                let n = crate::iter::count(py, &c, &bounds, &overlay);
                c.log_read_flush_failure(py, failure);
                n
            }
        }
    }

    /// Whether `key` is within the bounds and in the store.
    #[pyo3(signature = (key, prefix=None, start=None, stop=None))]
    fn _contains_in(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        prefix: Option<&Bound<'_, PyAny>>,
        start: Option<&Bound<'_, PyAny>>,
        stop: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let c = self.open_core()?;
        let bounds = c.bounds(prefix, start, stop)?;
        let k = match c.keys.to_bytes(key) {
            Ok(k) => k,
            // A key the store cannot hold is not in it, but Ctrl-C from a
            // key codec is not an answer.
            Err(e) if codec::passes_through(py, &e) => return Err(e),
            Err(_) => return Ok(false),
        };
        Ok(bounds.contains(&k) && self.current(c)?.contains(py, &k, false)?)
    }

    /// A live view of the keys, in key order, within optional bounds.
    #[pyo3(signature = (*, prefix=None, start=None, stop=None, reverse=false))]
    fn keys<'py>(
        slf: &Bound<'py, Self>,
        prefix: Option<&Bound<'py, PyAny>>,
        start: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, PyAny>>,
        reverse: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        make_view(
            slf,
            pyo3::intern!(slf.py(), "KeysView"),
            prefix,
            start,
            stop,
            reverse,
        )
    }

    /// A live view of the values, in key order, within optional bounds.
    #[pyo3(signature = (*, prefix=None, start=None, stop=None, reverse=false))]
    fn values<'py>(
        slf: &Bound<'py, Self>,
        prefix: Option<&Bound<'py, PyAny>>,
        start: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, PyAny>>,
        reverse: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        make_view(
            slf,
            pyo3::intern!(slf.py(), "ValuesView"),
            prefix,
            start,
            stop,
            reverse,
        )
    }

    /// A live view of the `(key, value)` pairs, in key order.
    #[pyo3(signature = (*, prefix=None, start=None, stop=None, reverse=false))]
    fn items<'py>(
        slf: &Bound<'py, Self>,
        prefix: Option<&Bound<'py, PyAny>>,
        start: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, PyAny>>,
        reverse: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        make_view(
            slf,
            pyo3::intern!(slf.py(), "ItemsView"),
            prefix,
            start,
            stop,
            reverse,
        )
    }

    /// Remove `key` and return its value (or `default`, else KeyError).
    #[pyo3(signature = (key, *default))]
    fn pop<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if default.len() > 1 {
            return Err(PyTypeError::new_err(format!(
                "pop expected at most 2 arguments, got {}",
                default.len() + 1
            )));
        }
        let c = self.core()?;
        c.check_writable("pop")?;
        let k = c.keys.to_bytes(key)?;
        let c = self.current(c)?;
        let found = if engine::key_len_ok(k.len()) {
            c.get_value(py, &k)?
        } else {
            None
        };
        match found {
            Some(v) => {
                self.current(c)?.buffer_write(py, &k, None)?;
                Ok(v)
            }
            None => match default.get_item(0) {
                Ok(d) => Ok(d),
                Err(_) => Err(key_error(key)),
            },
        }
    }

    /// Remove and return the `(key, value)` pair with the smallest key, in
    /// one write transaction.
    fn popitem<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let mut c = self.core()?;
        c.check_writable("popitem")?;
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
                return Err(PyKeyError::new_err("popitem(): the store is empty"));
            };
            // Shared, so that a buffer over it that outlives `loads` can
            // keep it alive.
            let raw: Bytes = Arc::new(raw);
            let value = codec::loads_borrowed(py, (*raw).as_ref(), || pin_bytes(&raw))
                .map_err(|e| codec::unpickle_error(py, &k, "DB", e))?;
            let raw: &[u8] = (*raw).as_ref();
            // Unpickling ran Python code: a forked child deletes in its own
            // environment.
            c = self.current(c)?;
            let env = &*c.env;
            let cap = c.max_map_size;
            // Delete only if nobody changed the entry since we read it.
            let result = py.detach(|| env.remove_if(&k, raw, cap)).map_err(to_py);
            c.log_growth(py);
            let deleted = result?;
            if deleted {
                return Ok((c.keys.decode(py, &k)?, value));
            }
        }
    }

    /// The value of `key`; if missing, store `default` and return it.
    #[pyo3(signature = (key, default=None))]
    fn setdefault<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.core()?;
        c.check_writable("setdefault")?;
        let k = c.keys.to_write_bytes(key)?;
        let c = self.current(c)?;
        if let Some(v) = c.get_value(py, &k)? {
            return Ok(v);
        }
        let d = default.unwrap_or_else(|| py.None().into_bound(py));
        let pickled = codec::dumps(py, &d, c.protocol)?;
        self.current(c)?.buffer_write(py, &k, Some(held(pickled)))?;
        Ok(d)
    }

    /// Like `dict.update`: a mapping, pairs, and (with `key_encoding`)
    /// keywords. Everything is checked and pickled before anything is
    /// buffered.
    #[pyo3(signature = (other=None, /, **kwargs))]
    fn update(
        &self,
        py: Python<'_>,
        other: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("update")?;
        let mut staged: Vec<(Vec<u8>, Bytes)> = Vec::new();
        let mut stage = |k: &Bound<'_, PyAny>, v: &Bound<'_, PyAny>| -> PyResult<()> {
            let kb = c.keys.to_write_bytes(k)?.into_owned();
            let pickled = codec::dumps(py, v, c.protocol)?;
            staged.push((kb, held(pickled)));
            Ok(())
        };
        if let Some(o) = other {
            if o.hasattr(pyo3::intern!(py, "keys"))? {
                for k in o.call_method0("keys")?.try_iter()? {
                    let k = k?;
                    let v = o.get_item(&k)?;
                    stage(&k, &v)?;
                }
            } else {
                for (i, pair) in o.try_iter()?.enumerate() {
                    let pair = pair?;
                    let (k, v) = key_value_pair(&pair)?.map_err(|why| {
                        PyTypeError::new_err(format!("update() sequence element #{i} {why}"))
                    })?;
                    stage(&k, &v)?;
                }
            }
        }
        if let Some(kw) = kwargs {
            if !kw.is_empty() && c.keys.encoding.is_none() {
                return Err(PyTypeError::new_err(
                    "update() keyword arguments are str keys: open the store with \
                     key_encoding='utf-8' to use them",
                ));
            }
            for (k, v) in kw.iter() {
                stage(&k, &v)?;
            }
        }
        self.current(c)?
            .buffer_writes(py, staged.into_iter().map(|(k, v)| (k, Some(v))))
    }

    /// Delete everything, buffer included, in one write transaction (LMDB
    /// empties the database in place).
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("clear")?;
        let result = (|| -> PyResult<()> {
            let _commit = c.lock_detached(py, &c.commit_lock)?;
            // The buffered writes stay readable until the clear commits. A
            // failed background commit is moot: its writes are cleared too.
            let batch = {
                let mut b = c.buffered.lock();
                b.failed = None;
                b.buf.begin_commit()
            };
            let env = &*c.env;
            let cap = c.max_map_size;
            let r = py.detach(|| env.clear(cap));
            let mut b = c.buffered.lock();
            if batch.is_some() {
                b.buf.end_commit(r.is_ok());
            }
            b.read_flush_logged &= r.is_err();
            drop(b);
            r.map_err(to_py)
        })();
        c.log_growth(py);
        result
    }

    /// A store pickles as its path and options, never its contents, and
    /// reopens when unpickled (for spawn and forkserver workers).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let c = slf.get().core()?;
        let reopen = py.import("lmdb_object_store")?.getattr("_reopen")?;
        // The path exactly as opened, even if it is not valid UTF-8.
        use std::os::unix::ffi::OsStrExt;
        let raw = PyBytes::new(py, c.fs_path.as_os_str().as_bytes());
        let path = py.import("os")?.call_method1("fsdecode", (raw,))?;
        let args = PyTuple::new(
            py,
            [
                slf.get_type().into_any(),
                path,
                c.init_kwargs.bind(py).copy()?.into_any(),
            ],
        )?;
        PyTuple::new(py, [reopen, args.into_any()])
    }

    fn __eq__<'py>(
        slf: &Bound<'py, Self>,
        other: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        views(slf.py())?
            .getattr(pyo3::intern!(slf.py(), "mapping_eq"))?
            .call1((slf, other))
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.open_core()?.len(py)
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().open_core()?;
        Ok(slf)
    }

    /// Close. If the final commit fails, its error is raised (a note says
    /// what was not saved), unless an exception is already propagating: that
    /// one wins, and the failure is reported on stderr.
    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if self.core.load(Ordering::Acquire).is_null() {
            return Ok(false);
        }
        let c = self.core()?;
        let Some(lost) = close_core(py, &c)? else {
            return Ok(false);
        };
        let when = "when leaving the with block";
        if exc_type.is_some_and(|t| !t.is_none()) {
            report(py, &lost.message(py, &c.path, when));
            return Ok(false);
        }
        let note = format!(
            "{} (the final commit {when}); the store is closed, and `pending` still \
             counts them",
            lost.not_saved(&c.path)
        );
        add_note(lost.error.value(py), note);
        Err(lost.error)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let name = "LmdbObjectStore";
        let Ok(c) = self.core() else {
            return format!("<{name} (not initialised)>");
        };
        if c.closing.load(Ordering::Acquire) {
            return format!("<{name} path={:?} closed>", c.path);
        }
        let state = if c.readonly { "open, readonly" } else { "open" };
        match c.len(py) {
            Ok(n) => format!("<{name} path={:?} entries={n} {state}>", c.path),
            Err(_) => format!("<{name} path={:?} {state}>", c.path),
        }
    }

    /// Buffered entries not yet committed.
    #[getter]
    fn pending(&self, py: Python<'_>) -> PyResult<usize> {
        let c = self.core()?;
        // A background commit under way ends first, so the count is settled.
        if c.buffered.lock().buf.has_inflight() {
            drop(c.lock_detached(py, &c.commit_lock)?);
        }
        let pending = c.buffered.lock().buf.pending();
        Ok(pending)
    }

    #[getter]
    fn path(&self) -> PyResult<String> {
        Ok(self.core()?.path.clone())
    }

    #[getter]
    fn readonly(&self) -> PyResult<bool> {
        Ok(self.core()?.readonly)
    }

    #[getter]
    fn closed(&self) -> PyResult<bool> {
        Ok(self.core()?.closing.load(Ordering::Acquire))
    }

    #[getter]
    fn batch_size(&self) -> PyResult<usize> {
        Ok(self.core()?.batch_size)
    }

    #[getter]
    fn autoflush_on_read(&self) -> PyResult<bool> {
        Ok(self.core()?.autoflush_on_read)
    }

    #[getter]
    fn max_map_size(&self) -> PyResult<Option<usize>> {
        Ok(self.core()?.max_map_size)
    }

    #[getter]
    fn max_buffer_bytes(&self) -> PyResult<usize> {
        Ok(self.core()?.max_buffer_bytes)
    }

    #[getter]
    fn pickle_protocol(&self) -> PyResult<i32> {
        Ok(self.core()?.protocol)
    }

    #[getter]
    fn key_encoding(&self) -> PyResult<Option<String>> {
        Ok(self.core()?.keys.encoding.clone())
    }
}

fn acquire_env(py: Python<'_>, path: &std::path::Path, options: &EnvOptions) -> PyResult<Arc<Env>> {
    py.detach(|| Env::acquire(path, options)).map_err(to_py)
}

/// A final commit that failed. Its writes are still in the buffer
/// (`pending` counts them), but the store is closed: they will not be saved.
struct LostFlush {
    error: PyErr,
    unsaved: usize,
}

impl LostFlush {
    /// "3 buffered writes to <path> were not saved".
    fn not_saved(&self, path: &str) -> String {
        let n = self.unsaved;
        let (writes, were) = if n == 1 {
            ("write", "was")
        } else {
            ("writes", "were")
        };
        format!("{n} buffered {writes} to {path} {were} not saved")
    }

    /// The above, and why: "...: the final commit <when> failed: <error>".
    fn message(&self, py: Python<'_>, path: &str, when: &str) -> String {
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
fn close_core(py: Python<'_>, c: &Core) -> PyResult<Option<LostFlush>> {
    if c.env.gate.held_by_current_thread() {
        return Err(to_py(engine::Error::WouldDeadlock("close()")));
    }
    {
        let mut b = c.buffered.lock();
        b.closing = true;
        c.closing.store(true, Ordering::Release);
    }
    let _one_closer = c.lock_detached(py, &c.close_lock)?;
    if c.closed.load(Ordering::Acquire) {
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
    c.closed.store(true, Ordering::Release);
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
fn report(py: Python<'_>, message: &str) {
    let line = format!("lmdb_object_store: {message}\n");
    let written = (|| -> PyResult<()> {
        let stderr = py.import("sys")?.getattr("stderr")?;
        if stderr.is_none() {
            return Err(PyRuntimeError::new_err("no sys.stderr"));
        }
        stderr.call_method1("write", (line.as_str(),))?;
        stderr.call_method0("flush")?;
        Ok(())
    })();
    if written.is_err() {
        eprint!("{line}");
    }
}

/// Best effort: a message on the `lmdb_object_store` logger (at interpreter
/// shutdown logging may be gone; the message is dropped then).
fn log(py: Python<'_>, level: &str, message: String) {
    let logger = py
        .import("logging")
        .and_then(|m| m.call_method1("getLogger", ("lmdb_object_store",)));
    if let Ok(logger) = logger {
        let _ = logger.call_method1(level, ("%s", message));
    }
}

static VIEWS: pyo3::sync::PyOnceLock<Py<PyModule>> = pyo3::sync::PyOnceLock::new();

fn views(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    Ok(VIEWS
        .get_or_try_init(py, || -> PyResult<_> {
            Ok(py.import("lmdb_object_store._views")?.unbind())
        })?
        .bind(py))
}

fn make_view<'py>(
    store: &Bound<'py, LmdbObjectStore>,
    // Interned: a fresh name string per call would be kept alive by the
    // interpreter's attribute cache.
    class: &Bound<'py, PyString>,
    prefix: Option<&Bound<'py, PyAny>>,
    start: Option<&Bound<'py, PyAny>>,
    stop: Option<&Bound<'py, PyAny>>,
    reverse: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let c = store.get().open_core()?;
    // Check the bounds now, so a bad one fails at the call.
    c.bounds(prefix, start, stop)?;
    let py = store.py();
    let kw = PyDict::new(py);
    kw.set_item("prefix", prefix)?;
    kw.set_item("start", start)?;
    kw.set_item("stop", stop)?;
    kw.set_item("reverse", reverse)?;
    views(py)?.getattr(class)?.call((store,), Some(&kw))
}

/// A `(key, value)` item as `dict.update` takes it: any iterable of exactly
/// two items (a tuple, a list, ...). `Ok(Err(why))` says what is wrong with
/// its shape; an exception raised while iterating it is passed on as it is.
type Pair<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

fn key_value_pair<'py>(item: &Bound<'py, PyAny>) -> PyResult<Result<Pair<'py>, String>> {
    if let Ok(t) = item.cast::<PyTuple>() {
        if t.len() == 2 {
            return Ok(Ok((t.get_item(0)?, t.get_item(1)?)));
        }
        return Ok(Err(format!("has length {}; 2 is required", t.len())));
    }
    let it = match item.try_iter() {
        Ok(it) => it,
        // `__iter__` is user code: Ctrl-C in it is not a bad item.
        Err(e) if codec::passes_through(item.py(), &e) => return Err(e),
        Err(_) => return Ok(Err("is not a (key, value) pair".into())),
    };
    let mut two = Vec::with_capacity(2);
    for x in it {
        let x = x?;
        if two.len() == 2 {
            return Ok(Err("has more than 2 items; 2 are required".into()));
        }
        two.push(x);
    }
    let n = two.len();
    let mut two = two.into_iter();
    Ok(match (two.next(), two.next()) {
        (Some(k), Some(v)) => Ok((k, v)),
        _ => Err(format!("has length {n}; 2 is required")),
    })
}

/// A key's first 16 bytes, zero-padded, as a big-endian number: ordering
/// these orders the keys, except that keys equal here may still differ
/// (beyond byte 16, or by trailing zero bytes) and need a full comparison.
fn key_head(key: &[u8]) -> u128 {
    let mut head = [0u8; 16];
    let n = key.len().min(16);
    head[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(head)
}

fn key_error(key: &Bound<'_, PyAny>) -> PyErr {
    PyKeyError::new_err(format!("Key not found: {}", codec::display_key(key)))
}

/// Add a note to an exception (PEP 678). Python 3.10 has no `add_note` and
/// does not print notes: there the note goes into `__notes__` and, so that
/// a traceback shows it, onto the end of the message.
fn add_note(exc: &Bound<'_, pyo3::exceptions::PyBaseException>, note: String) {
    let py = exc.py();
    if exc.hasattr(pyo3::intern!(py, "add_note")).unwrap_or(false) {
        let _ = exc.call_method1(pyo3::intern!(py, "add_note"), (note,));
        return;
    }
    let notes = match exc.getattr(pyo3::intern!(py, "__notes__")) {
        Ok(list) => list,
        Err(_) => PyList::empty(py).into_any(),
    };
    if notes
        .call_method1(pyo3::intern!(py, "append"), (&note,))
        .is_ok()
    {
        let _ = exc.setattr(pyo3::intern!(py, "__notes__"), notes);
    }
    let args = exc.getattr(pyo3::intern!(py, "args"));
    if let Ok(Ok((message,))) = args.map(|a| a.extract::<(String,)>()) {
        let _ = exc.setattr(pyo3::intern!(py, "args"), (format!("{message}\n{note}"),));
    }
}
