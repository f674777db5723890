//! One Rust error enum for the whole core, the Python exception tree, and the
//! single conversion between them.

use std::ffi::CStr;
use std::os::raw::c_int;

use pyo3::exceptions::{PyException, PyOSError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

pyo3::create_exception!(
    lmdb_object_store,
    Error,
    PyException,
    "Base class of every error raised by lmdb_object_store itself."
);
pyo3::create_exception!(
    lmdb_object_store,
    MapFullError,
    Error,
    "The map is full and may not grow: it is at max_map_size."
);
pyo3::create_exception!(
    lmdb_object_store,
    ReadonlyError,
    Error,
    "A write, flush or delete on a store opened with readonly=True."
);
pyo3::create_exception!(
    lmdb_object_store,
    ClosedError,
    Error,
    "The store is closed (or closing): open a new one to go on."
);

/// `UnpickleError` subclasses both `Error` and `RuntimeError` (0.1.0 raised a
/// plain `RuntimeError`), which `create_exception!` cannot express, so it is
/// made once with `type()`.
static UNPICKLE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

pub fn unpickle_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    let ty = UNPICKLE_ERROR.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(
            py,
            [py.get_type::<Error>(), py.get_type::<PyRuntimeError>()],
        )?;
        let ns = PyDict::new(py);
        ns.set_item("__module__", "lmdb_object_store")?;
        ns.set_item(
            "__doc__",
            "A stored or buffered value does not unpickle; the original error is __cause__.",
        )?;
        let ty = py
            .get_type::<PyType>()
            .call1(("UnpickleError", bases, ns))?
            .cast_into::<PyType>()?;
        Ok(ty.unbind())
    })?;
    Ok(ty.bind(py))
}

/// `UnsafeValueError` carries two attributes with class-level defaults, so
/// that every instance has them however it was made: `global_name` (the
/// global refused, or None when an opcode was) and `key` (set by the store
/// when it knows which value was read). `create_exception!` cannot declare
/// attributes, so it is made once with `type()`.
static UNSAFE_VALUE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

pub fn unsafe_value_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    let ty = UNSAFE_VALUE_ERROR.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(py, [py.get_type::<Error>()])?;
        let ns = PyDict::new(py);
        ns.set_item("__module__", "lmdb_object_store")?;
        ns.set_item(
            "__doc__",
            "A value needs a global or an opcode that the safe serializer does not allow; \
             `global_name` names the global (None for an opcode), `key` the key when known.",
        )?;
        ns.set_item("global_name", py.None())?;
        ns.set_item("key", py.None())?;
        let ty = py
            .get_type::<PyType>()
            .call1(("UnsafeValueError", bases, ns))?
            .cast_into::<PyType>()?;
        Ok(ty.unbind())
    })?;
    Ok(ty.bind(py))
}

/// `UnsafeValueError(msg)` with `global_name` set (None when what was
/// refused is an opcode or an argument, not a global).
pub fn unsafe_value_error(py: Python<'_>, global_name: Option<&str>, msg: String) -> PyErr {
    let made = unsafe_value_error_type(py).and_then(|ty| {
        let exc = ty.call1((msg,))?;
        exc.setattr("global_name", global_name)?;
        Ok(PyErr::from_value(exc))
    });
    made.unwrap_or_else(|e| e)
}

/// Every failure the core can report. The Python surface turns each into the
/// exception the contract names, through [`StoreError::into_pyerr`] only.
#[derive(Debug)]
pub enum StoreError {
    /// The store (or its environment) is closed or closing.
    Closed,
    /// A write on a read-only store; names the operation.
    Readonly(&'static str),
    /// The map reached its cap and the write did not fit.
    MapFull {
        map_size: usize,
        max_map_size: usize,
    },
    /// Every reader slot of the lock file is taken.
    ReadersFull { max_readers: u32 },
    /// The call would wait for a read that this same thread holds.
    WouldDeadlock(&'static str),
    /// The call would unmap memory that a buffer lent to unpickling code
    /// may still point into (see `engine::ReadTxn::pin`).
    Pinned(&'static str),
    /// The environment was opened by the parent process before `fork()`:
    /// this process must not use it.
    Forked,
    /// An error from LMDB (negative code) or the OS (errno) during `what`.
    Lmdb { code: c_int, what: String },
    /// The environment lost its map and could not get it back: every call
    /// is refused rather than touch memory that is gone. Says what happened.
    Unusable(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// LMDB's own text for an error code (also covers errno values).
pub fn strerror(code: c_int) -> String {
    // SAFETY: mdb_strerror returns a pointer to a static (or thread-local
    // strerror) NUL-terminated string for any code; we copy it at once.
    unsafe {
        let p = lmdb_sys::mdb_strerror(code);
        if p.is_null() {
            return format!("error {code}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

impl StoreError {
    pub fn lmdb(code: c_int, what: impl Into<String>) -> Self {
        StoreError::Lmdb {
            code,
            what: what.into(),
        }
    }

    pub fn from_lmdb(err: lmdb::Error, what: impl Into<String>) -> Self {
        StoreError::lmdb(err.to_err_code(), what)
    }

    pub fn into_pyerr(self) -> PyErr {
        match self {
            StoreError::Closed => ClosedError::new_err("the store is closed"),
            StoreError::Readonly(op) => ReadonlyError::new_err(format!(
                "cannot {op}: the store was opened with readonly=True"
            )),
            StoreError::MapFull {
                map_size,
                max_map_size,
            } => MapFullError::new_err(format!(
                "the write does not fit: the map is {map_size} bytes and max_map_size is \
                 {max_map_size}; raise max_map_size or delete entries (nothing was written)"
            )),
            StoreError::ReadersFull { max_readers } => Error::new_err(format!(
                "all {max_readers} LMDB reader slots are in use; open the store with a larger \
                 max_readers= (it must be set by the first process that opens the file)"
            )),
            StoreError::WouldDeadlock(what) => Error::new_err(format!(
                "{what} would wait for a read held by this same thread (called from code run \
                 while unpickling a value); do it after the read returns"
            )),
            StoreError::Pinned(what) => Error::new_err(format!(
                "{what} is refused: code run while unpickling a value kept pickle's view of \
                 the store's memory (its Unpickler, or a buffer taken in its place), so that \
                 memory stays mapped until this process exits; do that in another process"
            )),
            StoreError::Forked => Error::new_err(
                "this LMDB environment belongs to the process that opened it, before fork(); \
                 the store opens its own in this process on its next call",
            ),
            StoreError::Unusable(text) => Error::new_err(text),
            StoreError::Lmdb { code, what } => {
                let text = strerror(code);
                match write_failure_hint(code) {
                    Some(hint) => Error::new_err(format!("{what}: {text} (code {code}); {hint}")),
                    None => Error::new_err(format!("{what}: {text} (code {code})")),
                }
            }
        }
    }
}

/// What to do about an OS error that stopped LMDB writing its data file or
/// mapping it.
/// LMDB reports a short write as EIO, and a short write is what a file size
/// limit or a disk that fills up part-way produces, so EIO names those causes
/// too: the bare strerror text ("Input/output error") suggests a failing disk.
fn write_failure_hint(code: c_int) -> Option<&'static str> {
    match code {
        libc::ENOSPC | libc::EDQUOT => {
            Some("the disk or the quota is full: free space, then retry")
        }
        libc::EFBIG => Some(
            "the data file may not grow past the process's file size limit \
             (RLIMIT_FSIZE, `ulimit -f`): raise the limit, then retry",
        ),
        libc::ENOMEM => Some(
            "the process may not map or allocate more memory (RLIMIT_AS, `ulimit -v`, or the \
             machine's address space): raise the limit or lower max_map_size, then retry",
        ),
        libc::EIO => Some(
            "the data file could not be written in full: the disk may be full, the \
             process's file size limit (RLIMIT_FSIZE, `ulimit -f`) reached, or the device \
             failing; fix that, then retry",
        ),
        _ => None,
    }
}

/// An OS error while opening `path`, as Python's `OSError` subclass for that
/// errno (FileNotFoundError, PermissionError, ...), with the path attached.
pub fn os_error(errno: c_int, path: &str, what: &str) -> PyErr {
    let text = format!("{what}: {}", strerror(errno));
    PyOSError::new_err((errno, text, path.to_owned()))
}

pub fn type_error(msg: impl Into<String>) -> PyErr {
    PyTypeError::new_err(msg.into())
}
