//! `Snapshot`: the read-only mapping `store.snapshot()` returns, over one
//! read transaction held until its `with` block ends, and the read-only
//! buffers `view(key)` lends over LMDB's memory.
//!
//! Spine rule 3 has one exception here (see docs/architecture.md): a view
//! points into the map after the call that made it returns. The memory stays
//! valid because every view keeps the transaction alive (`Held`, shared by
//! `Arc`): the transaction ends when the snapshot has ended and the last
//! buffer over its memory is gone. At the end of the block the snapshot
//! releases the memoryviews it handed out, so using one raises `ValueError`.

use std::os::raw::c_int;
use std::sync::Arc;
use std::thread::ThreadId;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use engine::ReadTxn;

use crate::codec;
use crate::core::{Core, CoreHandle};
use crate::errors::{to_py, StoreError};
use crate::iter::Kind;

/// The engine snapshot, shared by the `Snapshot` and the buffers over its
/// memory; the transaction ends when the last of them drops it.
struct Held(engine::Snapshot);

// SAFETY: the transaction is only used through `Snapshot`'s methods, which
// run on the thread that opened the snapshot (`Snapshot::held` checks), one
// call at a time; the buffers only keep it alive. Dropping it on another
// thread is allowed (see `engine::Snapshot`).
unsafe impl Sync for Held {}

/// What a snapshot holds while it lasts.
struct State {
    held: Option<Arc<Held>>,
    /// The memoryviews `view()` returned, released when the snapshot ends.
    views: Vec<Py<PyAny>>,
}

/// A read-only mapping over one consistent state of the store.
#[pyclass(module = "lmdb_object_store._native", name = "Snapshot", frozen)]
pub struct Snapshot {
    core: Arc<CoreHandle>,
    owner: ThreadId,
    /// Locked only for short stretches of plain Rust (never across Python
    /// code), so it is taken with the GIL held.
    state: Mutex<State>,
}

/// The object a view's memoryview is made from: it lends LMDB's bytes of
/// one value, read-only, and keeps the transaction alive meanwhile.
#[pyclass(module = "lmdb_object_store._native", name = "_SnapshotBytes", frozen)]
pub struct SnapshotBytes {
    _held: Arc<Held>,
    ptr: usize,
    len: usize,
}

#[pymethods]
impl SnapshotBytes {
    /// # Safety
    /// Called by Python's buffer protocol with a valid `view`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        // SAFETY: `ptr..ptr+len` is a value in the map of the transaction
        // `_held` keeps open; the map is not unmapped while it is (the gate
        // is held shared), and `view.obj` keeps `slf`, hence `_held`, alive
        // until the buffer is released. Read-only: a writable request fails
        // in PyBuffer_FillInfo with BufferError.
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                me.ptr as *mut std::ffi::c_void,
                me.len as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::take(slf.py()).unwrap_or_else(|| StoreError::ReadOnlyBuffer.into()));
        }
        Ok(())
    }
}

impl Snapshot {
    pub(crate) fn open(py: Python<'_>, core: Arc<CoreHandle>) -> PyResult<Snapshot> {
        let snap = {
            let c = core.open_core()?;
            c.snapshot(py)?
        };
        Ok(Snapshot {
            core,
            owner: std::thread::current().id(),
            state: Mutex::new(State {
                held: Some(Arc::new(Held(snap))),
                views: Vec::new(),
            }),
        })
    }

    /// The snapshot's transaction, for one call on the opening thread.
    fn held(&self) -> PyResult<Arc<Held>> {
        if std::thread::current().id() != self.owner {
            return Err(StoreError::SnapshotThread.into());
        }
        self.state
            .lock()
            .held
            .clone()
            .ok_or_else(|| StoreError::SnapshotEnded.into())
    }

    /// Run `f` with the transaction and the store's core (for its key
    /// policy). A child after `fork()` is refused before anything is read.
    fn with<T>(&self, f: impl FnOnce(&ReadTxn<'_>, &Core) -> PyResult<T>) -> PyResult<T> {
        let held = self.held()?;
        let txn = held.0.txn().map_err(to_py)?;
        let c = self.core.get()?;
        f(txn, &c)
    }

    fn decode_value<'py>(
        py: Python<'py>,
        c: &Core,
        txn: &ReadTxn<'_>,
        key: &[u8],
        data: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        c.decode_db(py, key, data, txn)
    }

    fn read<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.with(|txn, c| {
            let k = c.keys.to_bytes(key)?;
            match txn.get(&k).map_err(to_py)? {
                None => Ok(None),
                Some(data) => Self::decode_value(py, c, txn, &k, data).map(Some),
            }
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
        self.with(|txn, c| {
            let bounds = c.bounds(prefix, start, stop)?;
            // The walk only collects slices; Python code (key decoding,
            // unpickling) runs after it, outside LMDB's cursor.
            let mut found: Vec<(&[u8], &[u8])> = Vec::new();
            bounds
                .walk(txn, reverse, None, |k, v| {
                    found.push((k, v));
                    true
                })
                .map_err(to_py)?;
            let out = crate::codec::new_list(py)?;
            for (k, v) in found {
                let item = match kind {
                    Kind::Keys => c.keys.decode(py, k)?,
                    Kind::Values => Self::decode_value(py, c, txn, k, v)?,
                    Kind::Items => crate::codec::new_pair(
                        &c.keys.decode(py, k)?,
                        &Self::decode_value(py, c, txn, k, v)?,
                    )?
                    .into_any(),
                };
                out.append(item)?;
            }
            Ok(out)
        })
    }

    /// End the snapshot: release the views handed out, then drop this
    /// hold of the transaction. A view that something else still has a
    /// buffer from cannot be released; it keeps the transaction open until
    /// that buffer goes.
    fn end(&self, py: Python<'_>) {
        let (held, views) = {
            let mut s = self.state.lock();
            (s.held.take(), std::mem::take(&mut s.views))
        };
        for v in views {
            if v.call_method0(py, "release").is_err() {
                // BufferError: exported further (a slice, NumPy). The
                // exporter keeps the memory valid until those are gone.
            }
        }
        drop(held);
    }
}

#[pymethods]
impl Snapshot {
    /// The value stored under `key` in this snapshot, or `default`.
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
        self.read(py, key)?
            .ok_or_else(|| crate::codec::key_error(key))
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.with(|txn, c| {
            let k = match c.keys.to_bytes(key) {
                Ok(k) => k,
                Err(e) if codec::passes_through(key.py(), &e) => return Err(e),
                Err(_) => return Ok(false),
            };
            Ok(txn.get(&k).map_err(to_py)?.is_some())
        })
    }

    fn __len__(&self) -> PyResult<usize> {
        self.with(|txn, _| txn.entries().map_err(to_py))
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

    /// `(found, not_found)` for many keys, as `store.get_many` returns them.
    #[pyo3(signature = (keys, *, decode_keys=false, decode_not_found=None))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        decode_keys: bool,
        decode_not_found: Option<bool>,
    ) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
        let given: Vec<Bound<'py, PyAny>> = keys.try_iter()?.collect::<PyResult<_>>()?;
        self.with(|txn, c| {
            let (decode_keys, decode_not_found) =
                c.keys.many_options(decode_keys, decode_not_found)?;
            let found = PyDict::new(py);
            let not_found = PyList::empty(py);
            for k in given {
                let b = c.keys.to_bytes(&k)?;
                match txn.get(&b).map_err(to_py)? {
                    Some(data) => {
                        let v = Self::decode_value(py, c, txn, &b, data)?;
                        found.set_item(c.keys.found_key(py, &k, &b, decode_keys)?, v)?;
                    }
                    None => {
                        not_found.append(c.keys.not_found_key(py, &k, &b, decode_not_found)?)?
                    }
                }
            }
            Ok((found, not_found))
        })
    }

    /// A read-only memoryview of the stored (encoded) bytes of `key`, over
    /// LMDB's memory: no copy. Valid until the snapshot ends; after that it
    /// is released (using it raises `ValueError`).
    fn view<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let held = self.held()?;
        let (ptr, len) = self.with(|txn, c| {
            let k = c.keys.to_bytes(key)?;
            match txn.get(&k).map_err(to_py)? {
                Some(data) => Ok((data.as_ptr() as usize, data.len())),
                None => Err(crate::codec::key_error(key)),
            }
        })?;
        // Spine rule 3, its one exception: the buffer outlives this call,
        // and keeps the transaction (so the memory) alive as long as it is.
        let bytes = Bound::new(
            py,
            SnapshotBytes {
                _held: held,
                ptr,
                len,
            },
        )?;
        let mv = py
            .import("builtins")?
            .getattr("memoryview")?
            .call1((bytes,))?;
        self.state.lock().views.push(mv.clone().unbind());
        Ok(mv)
    }

    /// End the snapshot now (the `with` block does it on exit).
    fn close(&self, py: Python<'_>) {
        self.end(py);
    }

    /// Whether the snapshot has ended.
    #[getter]
    fn closed(&self) -> bool {
        self.state.lock().held.is_none()
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        if slf.get().state.lock().held.is_none() {
            return Err(StoreError::SnapshotEnded.into());
        }
        Ok(slf)
    }

    #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.end(py);
        false
    }
}

/// A caller's writable, C-contiguous buffer, held exported for one call
/// (`store.get_into`).
pub(crate) struct WritableBuffer {
    view: pyo3::ffi::Py_buffer,
}

impl WritableBuffer {
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<WritableBuffer> {
        let mut view = std::mem::MaybeUninit::<pyo3::ffi::Py_buffer>::zeroed();
        let flags = pyo3::ffi::PyBUF_WRITABLE | pyo3::ffi::PyBUF_C_CONTIGUOUS;
        // SAFETY: `view` is zeroed storage for PyObject_GetBuffer to fill;
        // on success it is released once, in `drop`.
        let rc = unsafe { pyo3::ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) };
        if rc != 0 {
            let cause = PyErr::take(obj.py());
            let err = PyErr::from(StoreError::NotAWritableBuffer {
                got: crate::options::type_name(obj),
            });
            err.set_cause(obj.py(), cause);
            return Err(err);
        }
        // SAFETY: filled by the successful call above.
        let view = unsafe { view.assume_init() };
        Ok(WritableBuffer { view })
    }

    /// # Safety
    /// The caller must not keep the slice past this value's life.
    pub(crate) unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.view.len == 0 {
            return &mut [];
        }
        // SAFETY: a writable, contiguous export of `len` bytes at `buf`,
        // held until `drop`.
        unsafe { std::slice::from_raw_parts_mut(self.view.buf as *mut u8, self.view.len as usize) }
    }
}

impl Drop for WritableBuffer {
    fn drop(&mut self) {
        // SAFETY: the view was filled by PyObject_GetBuffer and is released
        // once; buffers are released with the GIL held, which every caller
        // of `get` holds until this drops.
        unsafe { pyo3::ffi::PyBuffer_Release(&mut self.view) };
    }
}
