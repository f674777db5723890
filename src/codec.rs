//! The pickle bridge: `pickle.dumps` on the way in, and on the way out a
//! zero-copy hand-off of LMDB's own memory to `pickle.loads`.

use std::os::raw::c_char;

use pyo3::exceptions::PyBufferError;
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
    let out = pickle_fn(py, &DUMPS, "dumps")?.call1((obj, protocol))?;
    Ok(out.cast_into::<PyBytes>()?)
}

/// `pickle.loads` over `data` without copying it: the bytes are lent as a
/// read-only memoryview, released before this returns, so no Python object
/// can reach `data` afterwards (callers pass LMDB memory that is valid only
/// until their read transaction ends).
pub fn loads_borrowed<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let loads = pickle_fn(py, &LOADS, "loads")?;
    // SAFETY: PyMemoryView_FromMemory makes a read-only view (PyBUF_READ) of
    // `data`, which outlives this function; the view is released below before
    // we return, so it never outlives `data`.
    let view = unsafe {
        let p = ffi::PyMemoryView_FromMemory(
            data.as_ptr() as *mut c_char,
            data.len() as ffi::Py_ssize_t,
            ffi::PyBUF_READ,
        );
        Bound::from_owned_ptr_or_err(py, p)?
    };
    let result = loads.call1((&view,));
    // Nobody else holds the view (no reference, so no buffer export either):
    // dropping our reference frees it, and nothing can reach `data`. Else
    // release it explicitly, which makes every other reference unusable.
    // SAFETY: reading the reference count of a live object we hold.
    if unsafe { ffi::Py_REFCNT(view.as_ptr()) } > 1 {
        release_view(py, &view)?;
    }
    result
}

fn release_view(py: Python<'_>, view: &Bound<'_, PyAny>) -> PyResult<()> {
    match view.call_method0(pyo3::intern!(py, "release")) {
        Ok(_) => Ok(()),
        Err(e) if e.is_instance_of::<PyBufferError>(py) => Err(Error::new_err(
            "a value's unpickling code kept a buffer over the store's memory; \
             refusing to go on (never open a store you do not trust: pickle runs code)",
        )),
        Err(e) => Err(e),
    }
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
