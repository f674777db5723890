//! Chunked iterators over key ranges.
//!
//! Each chunk is read in its own short read transaction (values unpickled
//! inside it, zero copy), then the transaction ends before the first item
//! reaches Python. The next chunk resumes after the last key seen, so no
//! transaction stays open between items: iteration never blocks growth or
//! close, never pins old pages, and never yields a key twice. When the
//! buffer cannot be committed as iteration begins, its writes are merged
//! into the walk, in key order.

use std::collections::VecDeque;
use std::sync::Arc;

use pyo3::prelude::*;

use engine::buffer::{Bytes, Value};
use engine::{fork_generation, Bounds, ReadTxn};

use crate::codec;
use crate::core::{Core, CoreHandle};
use crate::errors::to_py;

const FIRST_CHUNK: usize = 64;
const MAX_CHUNK: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Keys,
    Values,
    Items,
}

/// Iterator over a store's keys, values or items, in key order.
#[pyclass(module = "lmdb_object_store._native")]
pub struct StoreIterator {
    /// The fork-aware handle on the store's core, shared with the store.
    core: Arc<CoreHandle>,
    walk: Walk,
}

/// Where an iteration stands, and the items read ahead.
struct Walk {
    kind: Kind,
    bounds: Bounds,
    reverse: bool,
    last: Option<Vec<u8>>,
    ready: VecDeque<Py<PyAny>>,
    chunk: usize,
    exhausted: bool,
    started: bool,
    /// An error met while reading a chunk, raised after the items before it.
    failed: Option<PyErr>,
    /// The buffered writes not yet yielded, in iteration order, when the
    /// buffer could not be committed as the iteration began: merged into the
    /// database's keys (a value replaces or adds its key, a deletion hides
    /// it). `None` in the usual case, where the database holds them.
    overlay: Option<VecDeque<(Vec<u8>, Value)>>,
}

/// Where an item's value comes from.
enum Source<'a> {
    /// LMDB memory, inside the chunk's read transaction.
    Db(&'a [u8], &'a ReadTxn<'a>),
    Buffered(&'a Bytes),
}

impl StoreIterator {
    pub fn new(core: Arc<CoreHandle>, kind: Kind, bounds: Bounds, reverse: bool) -> Self {
        StoreIterator {
            core,
            walk: Walk::new(kind, bounds, reverse),
        }
    }
}

impl Walk {
    fn new(kind: Kind, bounds: Bounds, reverse: bool) -> Self {
        Walk {
            kind,
            bounds,
            reverse,
            last: None,
            ready: VecDeque::new(),
            chunk: FIRST_CHUNK,
            exhausted: false,
            started: false,
            failed: None,
            overlay: None,
        }
    }

    fn fill(&mut self, py: Python<'_>, core: &Core) -> PyResult<()> {
        let mut flush_failure = None;
        if !self.started {
            if let Err(e) = core.flush_for_read(py) {
                flush_failure = core.read_flush_failed(e);
                match core.buffered_in(&self.bounds, self.reverse) {
                    Ok(overlay) => self.overlay = Some(overlay.into()),
                    Err(e) => {
                        // Not started: the next call begins again.
                        core.log_read_flush_failure(py, flush_failure);
                        return Err(e);
                    }
                }
            }
            self.started = true;
        }
        let result = self.read_chunk(py, core);
        core.log_read_flush_failure(py, flush_failure);
        result
    }

    fn read_chunk(&mut self, py: Python<'_>, core: &Core) -> PyResult<()> {
        let want = self.chunk;
        self.chunk = (self.chunk * 2).min(MAX_CHUNK);
        let kind = self.kind;
        let bounds = &self.bounds;
        let reverse = self.reverse;
        let last = self.last.take();
        let ready = &mut self.ready;
        let overlay = &mut self.overlay;
        let generation = fork_generation();
        // The key after which the next chunk starts, once this one is full
        // (or a fork happened: the child reads on in its own environment).
        let mut new_last: Option<Vec<u8>> = None;
        let mut count = 0usize;
        let mut failure: Option<PyErr> = None;
        // One key done: its item (if any) queued. False stops the chunk.
        let mut take = |key: &[u8], value: Option<Source<'_>>| -> bool {
            if let Some(value) = value {
                match make_item(py, core, kind, key, value) {
                    Ok(obj) => {
                        ready.push_back(obj);
                        count += 1;
                    }
                    Err(e) => {
                        failure = Some(e);
                        return false;
                    }
                }
            }
            if count >= want || fork_generation() != generation {
                new_last = Some(key.to_vec());
                return false;
            }
            true
        };
        // Whether `a` comes before `b` in this iteration's order.
        let before = |a: &[u8], b: &[u8]| if reverse { a > b } else { a < b };
        let mut walked_to_end = false;
        core.with_read(py, |txn| {
            let mut going = true;
            bounds
                .walk(txn, reverse, last.as_deref(), |k, v| {
                    if let Some(overlay) = overlay.as_mut() {
                        while let Some((bk, _)) = overlay.front() {
                            if !before(bk, k) {
                                break;
                            }
                            let (bk, bv) = overlay.pop_front().expect("a front entry");
                            if !take(&bk, bv.as_ref().map(Source::Buffered)) {
                                going = false;
                                return false;
                            }
                        }
                        if overlay.front().is_some_and(|(bk, _)| bk[..] == *k) {
                            // The buffered write of this key wins.
                            let (bk, bv) = overlay.pop_front().expect("a front entry");
                            going = take(&bk, bv.as_ref().map(Source::Buffered));
                            return going;
                        }
                    }
                    going = take(k, Some(Source::Db(v, txn)));
                    going
                })
                .map_err(to_py)?;
            walked_to_end = going;
            Ok(())
        })?;
        if walked_to_end {
            // The database has no more keys in range: the buffered ones
            // after the last of them come next.
            if let Some(overlay) = overlay.as_mut() {
                while let Some((bk, bv)) = overlay.pop_front() {
                    if !take(&bk, bv.as_ref().map(Source::Buffered)) {
                        break;
                    }
                }
            }
        }
        if let Some(e) = failure {
            self.exhausted = true;
            if codec::passes_through(py, &e) {
                // Ctrl-C is raised now, not after the items before it.
                self.ready.clear();
                return Err(e);
            }
            self.failed = Some(e);
            return Ok(());
        }
        match new_last {
            Some(l) => self.last = Some(l),
            None => self.exhausted = true,
        }
        Ok(())
    }
}

/// The item for `key`: the key, the value, or both, as `kind` says.
fn make_item(
    py: Python<'_>,
    core: &Core,
    kind: Kind,
    key: &[u8],
    value: Source<'_>,
) -> PyResult<Py<PyAny>> {
    crate::codec::check_memory(&core.path)?;
    let decoded = || core.keys.decode(py, key);
    let loaded = || match value {
        Source::Db(data, txn) => core.decode_db(py, key, data, txn),
        Source::Buffered(bytes) => core.unpickle_buffered(py, key, bytes),
    };
    Ok(match kind {
        Kind::Keys => decoded()?.unbind(),
        Kind::Values => loaded()?.unbind(),
        Kind::Items => crate::codec::new_pair(&decoded()?, &loaded()?)?
            .into_any()
            .unbind(),
    })
}

#[pymethods]
impl StoreIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let core = self.core.open_core()?;
        let walk = &mut self.walk;
        if walk.ready.is_empty() && !walk.exhausted {
            walk.fill(py, &core)?;
        }
        match walk.ready.pop_front() {
            Some(item) => Ok(Some(item)),
            None => match walk.failed.take() {
                Some(e) => Err(e),
                None => Ok(None),
            },
        }
    }
}
