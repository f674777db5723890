//! `lmdb_object_store._native`: the module registers the class, the
//! exceptions and the version; the rooms of the crate are below.

pub mod args;
pub mod codec;
pub mod compress;
pub mod core;
pub mod errors;
pub mod exit;
pub mod iter;
mod json_fast;
pub mod keys;
pub mod npy;
pub mod options;
mod pickle;
mod serde_fast;
pub mod snapshot;
pub mod store;
pub mod stream;
pub mod transaction;
pub mod values;
pub mod views;

use pyo3::prelude::*;

/// A failed allocation gives back the memory held in reserve and is tried
/// again, instead of ending the process (see `engine::reserve`).
#[global_allocator]
static ALLOCATOR: engine::reserve::ReserveAlloc = engine::reserve::ReserveAlloc;

/// The bundled LMDB's version as `(major, minor, patch)`.
#[pyfunction]
fn lmdb_version() -> (i32, i32, i32) {
    engine::lmdb_version()
}

/// Commit every open store's buffer. Registered with `atexit` as
/// `_flush_all(exiting=True)`, which first waits for every other thread to
/// leave its store calls and keeps them out from then on.
#[pyfunction]
#[pyo3(signature = (*, exiting=false))]
fn _flush_all(py: Python<'_>, exiting: bool) {
    if exiting {
        core::flush_at_exit(py);
    } else {
        core::flush_all(py);
    }
}

/// Called by `os.register_at_fork(before=...)`: hold writes back and commit
/// every open store's buffer, so the child gets every acknowledged write.
#[pyfunction]
fn _before_fork(py: Python<'_>) {
    core::before_fork(py);
}

/// Called by `os.register_at_fork(after_in_parent=...)`: let writes in again.
#[pyfunction]
fn _after_fork_parent() {
    core::after_fork_in_parent();
}

/// Called by `os.register_at_fork(after_in_child=...)`.
#[pyfunction]
fn _after_fork_child() {
    core::after_fork_in_child();
}

/// The module relies on the GIL (see docs/free-threading.md): a free-threaded
/// interpreter turns the GIL on when it imports it.
/// The names of the named tables of the store at `path`, sorted; the main
/// table is not among them. Opens nothing for writing and creates nothing.
///
/// >>> lmdb_object_store.tables("/data/db")
#[pyfunction]
#[pyo3(signature = (path, **options))]
fn tables(
    py: Python<'_>,
    path: &Bound<'_, PyAny>,
    options: Option<&Bound<'_, pyo3::types::PyDict>>,
) -> PyResult<Vec<String>> {
    let path = options::path_arg(py, "path", path)?;
    let options = options::listing_options(options)?;
    core::list_tables(py, &path, &options)
}

#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    assert_eq!(
        engine::max_key_size(),
        engine::MAX_KEY_SIZE,
        "the bundled LMDB must have 511-byte keys"
    );
    // Taken now, so that a store call normally finds it held.
    engine::reserve::ensure();
    m.add_class::<store::LmdbObjectStore>()?;
    m.add_class::<iter::StoreIterator>()?;
    m.add_class::<views::KeysView>()?;
    m.add_class::<views::ValuesView>()?;
    m.add_class::<views::ItemsView>()?;
    m.add_class::<snapshot::Snapshot>()?;
    m.add_class::<stream::ValueFile>()?;
    m.add_class::<transaction::Transaction>()?;
    m.add("Error", py.get_type::<errors::Error>())?;
    m.add("MapFullError", py.get_type::<errors::MapFullError>())?;
    m.add("ReadonlyError", py.get_type::<errors::ReadonlyError>())?;
    m.add("ClosedError", py.get_type::<errors::ClosedError>())?;
    m.add("DecodeError", py.get_type::<errors::DecodeError>())?;
    m.add(
        "TransactionConflictError",
        py.get_type::<errors::TransactionConflictError>(),
    )?;
    m.add("UnpickleError", errors::unpickle_error_type(py)?)?;
    m.add("UnsafeValueError", errors::unsafe_value_error_type(py)?)?;
    m.add_function(wrap_pyfunction!(lmdb_version, m)?)?;
    m.add_function(wrap_pyfunction!(tables, m)?)?;
    m.add_function(wrap_pyfunction!(_flush_all, m)?)?;
    m.add_function(wrap_pyfunction!(_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_parent, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_child, m)?)?;
    pickle::register(m)?;
    // Makes the interned name that error messages use: made at first use
    // instead, it could be made with no memory to spare (PyO3 panics then).
    errors::display_bytes(py, b"key");
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
