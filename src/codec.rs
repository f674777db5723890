//! The pickle bridge: `pickle.dumps` on the way in, and on the way out a
//! zero-copy hand-off of LMDB's own memory to `pickle.loads`.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};

use crate::errors::{unpickle_error_type, Error};

static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn pickle_fn<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    Ok(cell
        .get_or_try_init(py, || -> PyResult<_> {
            Ok(py.import("pickle")?.getattr(name)?.unbind())
        })?
        .bind(py))
}

/// `pickle.dumps(obj, protocol)`.
pub fn dumps<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    protocol: i32,
) -> PyResult<Bound<'py, PyBytes>> {
    if let Some(out) = crate::pickle::dumps(py, obj, protocol)? {
        return Ok(out);
    }
    let out = pickle_fn(py, &DUMPS, "dumps")?.call1((obj, protocol))?;
    Ok(out.cast_into::<PyBytes>()?)
}

/// A read-only buffer over memory that the store lends to one
/// `pickle.loads` call. Outside that call it lends nothing (a null pointer),
/// and asking it for a buffer then raises `ValueError`.
///
/// One spare is kept and reused, so a read allocates no wrapper object: a
/// `memoryview` would cost two garbage-collected objects per read.
#[pyclass(frozen, module = "lmdb_object_store._native", name = "_LentBuffer")]
pub struct LentBuffer {
    /// The lent bytes; null when nothing is lent.
    ptr: AtomicPtr<u8>,
    /// Their length, meaningful only while `ptr` is not null.
    len: AtomicUsize,
    /// Buffers handed out and not yet released.
    exports: AtomicUsize,
}

#[pymethods]
impl LentBuffer {
    /// # Safety
    /// Called by Python with a `view` to fill, as the buffer protocol says.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        let ptr = me.ptr.load(Ordering::Relaxed);
        if ptr.is_null() {
            return Err(PyValueError::new_err(
                "the store's memory is no longer lent: it was valid only inside pickle.loads",
            ));
        }
        let len = me.len.load(Ordering::Relaxed) as ffi::Py_ssize_t;
        // SAFETY: `view` is the caller's Py_buffer to fill; `ptr`/`len` are
        // the lent bytes, valid until `loads_borrowed` returns, which checks
        // `exports` before it lets them go. FillInfo takes a new reference to
        // `slf` in `view.obj`, released by PyBuffer_Release.
        let filled =
            unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr.cast(), len, 1, flags) };
        if filled != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        me.exports.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// # Safety
    /// Called by Python once for each view that `__getbuffer__` filled.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The spare `LentBuffer` (an owned reference), or null while one is in use.
static SPARE: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

fn take_lent(py: Python<'_>) -> PyResult<Bound<'_, LentBuffer>> {
    let spare = SPARE.swap(std::ptr::null_mut(), Ordering::Acquire);
    if spare.is_null() {
        return Bound::new(
            py,
            LentBuffer {
                ptr: AtomicPtr::new(std::ptr::null_mut()),
                len: AtomicUsize::new(0),
                exports: AtomicUsize::new(0),
            },
        );
    }
    // SAFETY: SPARE only ever holds an owned reference to a LentBuffer (see
    // `keep_lent`), which the swap above handed over to us.
    Ok(unsafe { Bound::from_owned_ptr(py, spare).cast_into_unchecked() })
}

/// Keep `lent` as the spare if there is none yet (a nested read may have
/// put one back first); else drop it.
fn keep_lent(lent: Bound<'_, LentBuffer>) {
    let p = lent.into_ptr();
    if SPARE
        .compare_exchange(
            std::ptr::null_mut(),
            p,
            Ordering::Release,
            Ordering::Relaxed,
        )
        .is_err()
    {
        // SAFETY: `p` is the owned reference `into_ptr` gave us and nobody
        // else took it; the GIL is held (we were handed a Bound).
        unsafe { ffi::Py_DECREF(p) };
    }
}

/// `pickle.loads` over `data` without copying it: the bytes are lent as a
/// read-only buffer that lends nothing once this returns, so no Python object
/// can reach `data` afterwards (callers pass LMDB memory that is valid only
/// until their read transaction ends).
pub fn loads_borrowed<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    if let Some(value) = crate::pickle::loads(py, data)? {
        return Ok(value);
    }
    let loads = pickle_fn(py, &LOADS, "loads")?;
    let lent = take_lent(py)?;
    let me = lent.get();
    me.ptr.store(data.as_ptr().cast_mut(), Ordering::Relaxed);
    me.len.store(data.len(), Ordering::Relaxed);
    let result = loads.call1((&lent,));
    me.ptr.store(std::ptr::null_mut(), Ordering::Relaxed);
    if me.exports.load(Ordering::Relaxed) != 0 {
        // A buffer over `data` is still out there and cannot be revoked.
        return Err(Error::new_err(
            "a value's unpickling code kept a buffer over the store's memory; \
             refusing to go on (never open a store you do not trust: pickle runs code)",
        ));
    }
    // Reuse it only when nobody else holds it; another holder keeps an
    // object that now lends nothing.
    // SAFETY: reading the reference count of a live object we hold.
    if unsafe { ffi::Py_REFCNT(lent.as_ptr()) } == 1 {
        keep_lent(lent);
    }
    result
}

/// Wrap an unpickling failure: `UnpickleError` (an `Error` and a
/// `RuntimeError`), with the original as `__cause__`.
pub fn unpickle_error(py: Python<'_>, key: &[u8], source: &str, cause: PyErr) -> PyErr {
    let shown = display_bytes(py, key);
    let msg = format!(
        "Failed to unpickle {source} key {shown}: {}",
        cause.value(py)
    );
    match unpickle_error_type(py) {
        Ok(ty) => {
            let err = PyErr::from_type(ty.clone(), msg);
            err.set_cause(py, Some(cause));
            err
        }
        Err(e) => e,
    }
}

fn is_printable(py: Python<'_>, s: &str) -> bool {
    PyString::new(py, s)
        .call_method0(pyo3::intern!(py, "isprintable"))
        .and_then(|r| r.is_truthy())
        .unwrap_or(false)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key as error messages show it: printable UTF-8 quoted, binary as
/// `0x…` hex, long keys cut.
pub fn display_bytes(py: Python<'_>, key: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(key) {
        if text.chars().count() <= 50 && is_printable(py, text) {
            return format!("'{text}'");
        }
    }
    if key.len() <= 16 {
        format!("0x{}", hex(key))
    } else {
        format!("0x{}...({} bytes)", hex(&key[..8]), key.len())
    }
}

/// The caller's key as error messages show it.
pub fn display_key(key: &Bound<'_, PyAny>) -> String {
    let py = key.py();
    if let Ok(b) = key.cast::<PyBytes>() {
        return display_bytes(py, b.as_bytes());
    }
    if let Ok(b) = key.cast::<PyByteArray>() {
        return display_bytes(py, &b.to_vec());
    }
    if key.cast::<PyMemoryView>().is_ok() {
        if let Ok(b) = key.call_method0("tobytes") {
            if let Ok(b) = b.cast::<PyBytes>() {
                return display_bytes(py, b.as_bytes());
            }
        }
    }
    let (text, quote) = match key.cast::<PyString>() {
        Ok(s) => (s.to_string_lossy().into_owned(), true),
        Err(_) => (
            key.repr()
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "<key>".into()),
            false,
        ),
    };
    let short = text.chars().count() <= 50;
    let body: String = if short {
        text
    } else {
        text.chars().take(47).collect::<String>() + "..."
    };
    if quote {
        format!("'{body}'")
    } else {
        body
    }
}

/// The cyclic garbage collector, paused while many values are unpickled at
/// once: everything they allocate stays reachable (it is returned), so the
/// collections that the allocations would trigger find nothing to free, yet
/// each one walks every young object, and the older generations' walk the
/// whole heap. Resumed on drop, only if it was running before (a nested pause,
/// or a program that turned the collector off, is left as it was).
pub struct GcPause {
    was_enabled: bool,
    /// Not Send: it must be dropped on the thread (holding the GIL) that
    /// made it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl GcPause {
    pub fn new(_py: Python<'_>) -> Self {
        // SAFETY: the GIL is held (the token proves it); PyGC_Disable only
        // flips the interpreter's flag and returns its previous value.
        let was_enabled = unsafe { ffi::PyGC_Disable() } != 0;
        GcPause {
            was_enabled,
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for GcPause {
    fn drop(&mut self) {
        if self.was_enabled {
            // SAFETY: a GcPause is made from a `Python` token inside a call
            // that holds the GIL, and cannot leave that thread (not Send).
            unsafe { ffi::PyGC_Enable() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hex;

    #[test]
    fn hex_is_lowercase_pairs() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
