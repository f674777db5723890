//! The Python exception tree, the one error enum of the binding (wrapping
//! the engine's), and the single conversion from it to Python exceptions.

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

pyo3::create_exception!(
    lmdb_object_store,
    DecodeError,
    Error,
    "A stored or buffered value does not decode with the store's serializer; the original \
     error is __cause__."
);

/// `DecodeError`, as the value pipeline raises it.
pub fn decode_error_type(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    Ok(py.get_type::<DecodeError>())
}

/// `UnpickleError` subclasses both `DecodeError` and `RuntimeError` (0.1.0 raised a
/// plain `RuntimeError`), which `create_exception!` cannot express, so it is
/// made once with `type()`.
static UNPICKLE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

pub fn unpickle_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    let ty = UNPICKLE_ERROR.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(
            py,
            [
                py.get_type::<DecodeError>(),
                py.get_type::<PyRuntimeError>(),
            ],
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

/// Every failure the Rust side reports, each with its message: the
/// engine's own ([`engine::Error`]) and those of the store itself. The one
/// conversion to a Python exception is [`StoreError::into_pyerr`] (also
/// `From<StoreError> for PyErr`).
#[derive(Debug)]
pub enum StoreError {
    /// A storage failure, worded by the engine.
    Engine(engine::Error),
    /// A write on a read-only store; names the operation.
    Readonly(&'static str),
    /// A method was called on a store whose `__init__` never ran.
    NotInitialised,
    /// `__init__` was called a second time.
    AlreadyOpen,
    /// A background commit of the store at `path` panicked (a bug): its
    /// batch is back in the buffer.
    CommitPanicked { path: String },
}

impl From<engine::Error> for StoreError {
    fn from(e: engine::Error) -> Self {
        StoreError::Engine(e)
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Engine(e) => e.fmt(f),
            StoreError::Readonly(op) => {
                write!(f, "cannot {op}: the store was opened with readonly=True")
            }
            StoreError::NotInitialised => f.write_str(
                "LmdbObjectStore.__init__ was not called (a subclass must call super().__init__)",
            ),
            StoreError::AlreadyOpen => f.write_str("this LmdbObjectStore is already open"),
            StoreError::CommitPanicked { path } => write!(
                f,
                "the background commit of {path} panicked; its writes are still buffered"
            ),
        }
    }
}

impl StoreError {
    /// The Python exception for this failure: the class says what kind of
    /// failure it is, the message is this error's `Display`.
    pub fn into_pyerr(self) -> PyErr {
        use engine::Error as E;
        let text = self.to_string();
        match self {
            StoreError::Engine(E::Closed { .. }) => ClosedError::new_err(text),
            StoreError::Engine(E::MapFull { .. }) => MapFullError::new_err(text),
            StoreError::Engine(E::Open { code, path, .. }) if code > 0 => {
                // Python's OSError subclass for the errno (FileNotFoundError,
                // PermissionError, ...), with the path attached.
                PyOSError::new_err((code, text, path))
            }
            StoreError::Readonly(_) => ReadonlyError::new_err(text),
            _ => Error::new_err(text),
        }
    }
}

impl From<StoreError> for PyErr {
    fn from(e: StoreError) -> Self {
        e.into_pyerr()
    }
}

/// An engine failure as a Python exception (through [`StoreError`]).
pub fn to_py(e: engine::Error) -> PyErr {
    StoreError::Engine(e).into_pyerr()
}

pub fn type_error(msg: impl Into<String>) -> PyErr {
    PyTypeError::new_err(msg.into())
}
