//! `Transaction`: the mapping `store.transaction()` returns, over one engine
//! write transaction held from its `with` block's start to its end, which
//! commits it (or, if the block raises, rolls it back).
//!
//! Spine rule 1 in its transaction form (see docs/architecture.md): Python
//! code runs between the calls of a transaction, never inside one. Keys and
//! values are encoded before an engine call and decoded after it, from
//! copies; each engine call only copies bytes in or out. The calls that may
//! wait (begin, growth on a write, commit) run with the GIL released.
//!
//! Only the thread that began a transaction may use it (LMDB's writer mutex
//! is that thread's). Other threads are refused before anything is locked,
//! so the state mutex is only ever taken by the owner.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use engine::txn::Dbi;
use engine::WriteTxn;

use crate::args::{self, Pair};
use crate::codec;
use crate::core::{Core, CoreHandle};
use crate::errors::{to_py, StoreError};
use crate::exit;
use crate::iter::Kind;
use crate::values;

/// Where a transaction is in its life.
enum State {
    /// Made by `store.transaction()`, not entered yet.
    New,
    Open(Box<WriteTxn>),
    /// A call failed: the engine transaction was rolled back.
    Failed,
    /// The block ended.
    Ended,
}

/// A read-write mapping over one write transaction of the store, or, made
/// by `t.table(name)`, over another table of the file in the same write
/// transaction.
#[pyclass(module = "lmdb_object_store._native", name = "Transaction", frozen)]
pub struct Transaction {
    core: Arc<CoreHandle>,
    /// `None`: the store's own table; else the table `t.table(name)` named.
    table: Option<engine::Table>,
    shared: Arc<Shared>,
}

/// What a transaction and the other tables reached through it share.
struct Shared {
    /// The thread that entered the block, and the fork generation it did
    /// so in; locked only briefly.
    owner: Mutex<Option<(ThreadId, u64)>>,
    /// Locked only by the owner thread, never across Python code.
    state: Mutex<State>,
    /// The block is counted as a store call (`exit::enter_block`) on the
    /// owner thread.
    counted: AtomicBool,
    /// The tables given out by this process up to the moment the write
    /// transaction began: LMDB lets a write transaction use only the
    /// handles that were open when it began.
    tables_before: AtomicU64,
}

impl Transaction {
    pub(crate) fn new(core: Arc<CoreHandle>) -> Transaction {
        Transaction {
            core,
            table: None,
            shared: Arc::new(Shared {
                owner: Mutex::new(None),
                state: Mutex::new(State::New),
                counted: AtomicBool::new(false),
                tables_before: AtomicU64::new(0),
            }),
        }
    }

    /// The database this mapping reads and writes.
    fn dbi(&self, c: &Core) -> PyResult<Dbi> {
        match &self.table {
            None => c.txn_dbi(),
            Some(t) => c.table_dbi(t),
        }
    }

    /// Refuse any thread but the owner, before the state is touched.
    fn check_owner(&self) -> PyResult<()> {
        match *self.shared.owner.lock() {
            None => Err(StoreError::TransactionNotStarted.into()),
            Some((_, g)) if g != engine::fork_generation() => Err(to_py(engine::Error::TxnForked)),
            Some((t, _)) if t == std::thread::current().id() => Ok(()),
            Some(_) => Err(to_py(engine::Error::TxnThread)),
        }
    }

    /// Run `f` on the open engine transaction; an engine failure ends the
    /// transaction (rolled back, nothing written). `detach`: with the GIL
    /// released (a write may grow the map, which waits for other threads'
    /// reads).
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        detach: bool,
        f: impl FnOnce(&mut WriteTxn) -> engine::Result<T> + Send,
    ) -> PyResult<T> {
        self.check_owner()?;
        let mut state = self.shared.state.lock();
        let txn = match &mut *state {
            State::Open(t) => t,
            State::New => return Err(StoreError::TransactionNotStarted.into()),
            State::Failed => return Err(StoreError::TransactionFailed.into()),
            State::Ended => return Err(StoreError::TransactionEnded.into()),
        };
        let result = if detach { py.detach(|| f(txn)) } else { f(txn) };
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                let forked = matches!(e, engine::Error::TxnForked);
                if !forked {
                    // Dropping it aborts what is left and frees the writer
                    // lock (the engine leaves a forked child's copy alone).
                    *state = State::Failed;
                }
                drop(state);
                Err(to_py(e))
            }
        }
    }

    /// The core, for the key policy and the serializer; after checking the
    /// transaction can be used at all (a child after fork() is refused by
    /// the engine before its core is reopened).
    fn with_core<T>(&self, py: Python<'_>, f: impl FnOnce(&Core) -> PyResult<T>) -> PyResult<T> {
        // Ownership, fork and liveness, before anything else.
        self.run(py, false, |t| t.check())?;
        let c = self.core.get()?;
        let out = f(&c);
        c.log_growth(py);
        out
    }

    fn decode<'py>(
        py: Python<'py>,
        c: &Core,
        key: &[u8],
        data: Vec<u8>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut keep = false;
        let out = c.decode(py, key, "DB", &data, || keep = true);
        if keep {
            // A buffer over these bytes outlived the call: they stay.
            std::mem::forget(data);
        }
        out
    }

    fn read_bytes(&self, py: Python<'_>, dbi: Dbi, key: &[u8]) -> PyResult<Option<Vec<u8>>> {
        self.run(py, false, |t| t.get(dbi, key))
    }

    fn read<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.with_core(py, |c| {
            let k = c.keys.to_bytes(key)?;
            match self.read_bytes(py, self.dbi(c)?, &k)? {
                Some(data) => Self::decode(py, c, &k, data).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Encode and store each pair: every key and value is checked and
    /// encoded before anything is written.
    fn write_all(&self, py: Python<'_>, c: &Core, pairs: &[Pair<'_>]) -> PyResult<()> {
        // Memory that grows with the input is asked for first, and every
        // item takes the reserve back (see `codec::check_memory`): at the
        // limit, MemoryError with nothing written.
        let what = "writes of a transaction";
        let mut staged: Vec<(Vec<u8>, Bound<'_, PyBytes>)> = codec::try_vec(pairs.len(), what)?;
        for (k, v) in pairs {
            codec::check_memory(&c.path)?;
            let kb = c.keys.to_write_bytes(k)?.into_owned();
            staged.push((
                kb,
                values::encode(py, &c.serializer, &c.compression, v, c.protocol, k)?,
            ));
        }
        let mut writes: Vec<(&[u8], &[u8])> = codec::try_vec(staged.len(), what)?;
        writes.extend(staged.iter().map(|(k, v)| (k.as_slice(), v.as_bytes())));
        let dbi = self.dbi(c)?;
        // Spine rule 1: the engine only copies these bytes into LMDB (and
        // grows the map if it must); the encoding ran before.
        self.run(py, true, |t| {
            for (k, v) in writes {
                t.put(dbi, k, v)?;
            }
            Ok(())
        })
    }

    fn list<'py>(
        &self,
        py: Python<'py>,
        kind: Kind,
        prefix: Option<&Bound<'py, PyAny>>,
        start: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, PyAny>>,
        reverse: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        self.with_core(py, |c| {
            let bounds = c.bounds(prefix, start, stop)?;
            let dbi = self.dbi(c)?;
            let found = self.run(py, false, |t| t.range(dbi, &bounds, reverse))?;
            let out = crate::codec::new_list(py)?;
            for (k, v) in found {
                codec::check_memory(&c.path)?;
                let item = match kind {
                    Kind::Keys => c.keys.decode(py, &k)?,
                    Kind::Values => Self::decode(py, c, &k, v)?,
                    Kind::Items => {
                        let key = c.keys.decode(py, &k)?;
                        crate::codec::new_pair(&key, &Self::decode(py, c, &k, v)?)?.into_any()
                    }
                };
                out.append(item)?;
            }
            Ok(out)
        })
    }
}

impl Drop for Shared {
    /// A block never exited (the object dropped instead): on the owner
    /// thread the engine transaction aborts as it drops, and the block's
    /// count ends. On another thread both are left as they are (see
    /// `engine::WriteTxn`).
    fn drop(&mut self) {
        let mine = self.owner.get_mut().is_some_and(|(t, g)| {
            t == std::thread::current().id() && g == engine::fork_generation()
        });
        if mine && *self.counted.get_mut() {
            exit::leave_block();
        }
    }
}

#[pymethods]
impl Transaction {
    /// The value of `key` (this transaction's own writes included), or
    /// `default`.
    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.read(py, key)? {
            Some(v) => v,
            None => default.unwrap_or_else(|| py.None().into_bound(py)),
        })
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.read(py, key)?.ok_or_else(|| codec::key_error(key))
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.with_core(py, |c| {
            let k = match c.keys.to_bytes(key) {
                Ok(k) => k,
                Err(e) if codec::passes_through(py, &e) => return Err(e),
                Err(_) => return Ok(false),
            };
            Ok(self.read_bytes(py, self.dbi(c)?, &k)?.is_some())
        })
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.with_core(py, |c| {
            self.write_all(py, c, &[(key.clone(), value.clone())])
        })
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        self.with_core(py, |c| {
            let k = c.keys.to_bytes(key)?;
            let dbi = self.dbi(c)?;
            match self.run(py, true, |t| t.delete(dbi, &k))? {
                true => Ok(()),
                false => Err(codec::key_error(key)),
            }
        })
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
            return Err(StoreError::PopArguments {
                given: default.len() + 1,
            }
            .into());
        }
        self.with_core(py, |c| {
            let k = c.keys.to_bytes(key)?;
            let dbi = self.dbi(c)?;
            match self.read_bytes(py, dbi, &k)? {
                Some(data) => {
                    let v = Self::decode(py, c, &k, data)?;
                    self.run(py, true, |t| t.delete(dbi, &k))?;
                    Ok(v)
                }
                None => default.get_item(0).map_err(|_| codec::key_error(key)),
            }
        })
    }

    /// The value of `key`; if missing, store `default` and return it.
    #[pyo3(signature = (key, default=None))]
    fn setdefault<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.with_core(py, |c| {
            let k = c.keys.to_write_bytes(key)?;
            if let Some(data) = self.read_bytes(py, self.dbi(c)?, &k)? {
                return Self::decode(py, c, &k, data);
            }
            let d = default.unwrap_or_else(|| py.None().into_bound(py));
            self.write_all(py, c, &[(key.clone(), d.clone())])?;
            Ok(d)
        })
    }

    /// Like `dict.update`: a mapping, pairs, and (with `key_encoding`)
    /// keywords. Everything is checked and encoded before anything is
    /// written.
    #[pyo3(signature = (other=None, /, **kwargs))]
    fn update(
        &self,
        py: Python<'_>,
        other: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        self.with_core(py, |c| {
            let mut pairs: Vec<Pair<'_>> = Vec::new();
            args::update_pairs(py, other, kwargs, c.keys.encoding.is_some(), &mut |k, v| {
                codec::reserve_more(&mut pairs, 1, "items of a transaction's update")?;
                pairs.push((k.clone(), v.clone()));
                Ok(())
            })?;
            self.write_all(py, c, &pairs)
        })
    }

    /// `(found, not_found)` for many keys, as `store.get_many` returns them.
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
        let given = codec::collect_items(keys, "keys of a transaction's get_many")?;
        self.with_core(py, |c| {
            let found = PyDict::new(py);
            let not_found = crate::codec::new_list(py)?;
            for k in given {
                codec::check_memory(&c.path)?;
                let b = c.keys.to_bytes(&k)?.into_owned();
                match self.read_bytes(py, self.dbi(c)?, &b)? {
                    Some(data) => {
                        let v = Self::decode(py, c, &b, data)?;
                        let dict_key = if k.is_exact_instance_of::<PyBytes>()
                            || k.is_exact_instance_of::<PyString>()
                        {
                            k
                        } else {
                            PyBytes::new(py, &b).into_any()
                        };
                        found.set_item(dict_key, v)?;
                    }
                    None => not_found.append(k)?,
                }
            }
            Ok((found, not_found))
        })
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.with_core(py, |c| {
            let dbi = self.dbi(c)?;
            self.run(py, false, |t| t.entries(dbi))
        })
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.list(py, Kind::Keys, None, None, None, false)?
            .into_any()
            .try_iter()
            .map(Bound::into_any)
    }

    /// The keys within the bounds, in key order (a list).
    #[pyo3(signature = (*, prefix=None, start=None, stop=None, reverse=false))]
    fn keys<'py>(
        &self,
        py: Python<'py>,
        prefix: Option<&Bound<'py, PyAny>>,
        start: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, PyAny>>,
        reverse: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        self.list(py, Kind::Keys, prefix, start, stop, reverse)
    }

    /// The values within the bounds, in key order (a list).
    #[pyo3(signature = (*, prefix=None, start=None, stop=None, reverse=false))]
    fn values<'py>(
        &self,
        py: Python<'py>,
        prefix: Option<&Bound<'py, PyAny>>,
        start: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, PyAny>>,
        reverse: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        self.list(py, Kind::Values, prefix, start, stop, reverse)
    }

    /// The `(key, value)` pairs within the bounds, in key order (a list).
    #[pyo3(signature = (*, prefix=None, start=None, stop=None, reverse=false))]
    fn items<'py>(
        &self,
        py: Python<'py>,
        prefix: Option<&Bound<'py, PyAny>>,
        start: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, PyAny>>,
        reverse: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        self.list(py, Kind::Items, prefix, start, stop, reverse)
    }

    /// Another table of the same file, in this same transaction: a mapping
    /// like this one over table `name`, whose keys and values use this
    /// store's key options and serializer. The table must have been open
    /// in this process (by any store of it) when the transaction began.
    fn table(&self, py: Python<'_>, name: &str) -> PyResult<Transaction> {
        self.with_core(py, |c| {
            let before = self.shared.tables_before.load(Ordering::Relaxed);
            let table = c
                .open_table_before(name, before)
                .ok_or_else(|| StoreError::TableNotInTransaction { name: name.into() })?;
            Ok(Transaction {
                core: Arc::clone(&self.core),
                table: Some(table),
                shared: Arc::clone(&self.shared),
            })
        })
    }

    /// Whether the transaction has ended (committed, rolled back or failed).
    #[getter]
    fn closed(&self) -> bool {
        matches!(*self.shared.state.lock(), State::Failed | State::Ended)
    }

    /// Begin: commit the store's buffer, then wait (GIL released) for the
    /// writer of every process to be free.
    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let py = slf.py();
        let me = slf.get();
        {
            let mut owner = me.shared.owner.lock();
            if owner.is_some() {
                return Err(StoreError::TransactionReentered.into());
            }
            *owner = Some((std::thread::current().id(), engine::fork_generation()));
        }
        let began = {
            let c = me.core.open_core()?;
            // Read before the write transaction begins: the tables open by
            // then are the ones it can use (`table()`).
            me.shared
                .tables_before
                .store(c.tables_given(), Ordering::Relaxed);
            c.begin_transaction(py)
        };
        match began {
            Ok(t) => {
                // The block counts as one store call for the exit hook: a
                // thread inside it holds the writer, so the hook waits for
                // the block (bounded) before it commits the buffers.
                exit::enter_block();
                me.shared.counted.store(true, Ordering::Relaxed);
                *me.shared.state.lock() = State::Open(Box::new(t));
            }
            Err(e) => {
                *me.shared.state.lock() = State::Failed;
                return Err(e);
            }
        }
        Ok(slf)
    }

    /// Commit if the block ended normally, roll back if it raised (the
    /// exception propagates).
    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.check_owner()?;
        let raised = exc_type.is_some_and(|t| !t.is_none());
        // Counted as inside a store call until the commit is done; the
        // block's own count ends here.
        let c = self.core.get();
        if self.shared.counted.swap(false, Ordering::Relaxed) {
            exit::leave_block();
        }
        let previous = std::mem::replace(&mut *self.shared.state.lock(), State::Ended);
        let failed = matches!(previous, State::Failed);
        let txn = match previous {
            State::Open(t) => t,
            State::New | State::Failed | State::Ended => {
                return match failed && !raised {
                    true => Err(StoreError::TransactionFailed.into()),
                    false => Ok(false),
                };
            }
        };
        if raised {
            drop(txn);
            return Ok(false);
        }
        // Spine rule 2: the commit (fsync, growth) runs with the GIL
        // released.
        let result = py.detach(|| txn.commit());
        if let Ok(c) = c {
            c.log_growth(py);
        }
        result.map(|()| false).map_err(to_py)
    }
}
