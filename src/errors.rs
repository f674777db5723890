//! The Python exception tree, the one error enum of the binding (wrapping
//! the engine's), and the single conversion from it to Python exceptions.

use pyo3::exceptions::{
    PyBufferError, PyException, PyImportError, PyKeyError, PyMemoryError, PyOSError,
    PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyString, PyTuple, PyType};

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
    TransactionConflictError,
    Error,
    "A transaction was undone (the map had to grow) and another writer changed what it had \
     read meanwhile: nothing of it was written; run it again."
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

/// Whether `err` must reach the caller as it is: a `BaseException` that is
/// not an `Exception` (KeyboardInterrupt, SystemExit, GeneratorExit) means
/// "stop", not "this value is bad", so the store never wraps or swallows it.
/// Nor `MemoryError`: the process ran out of memory, the value is not at
/// fault, and wrapping the error would need memory too.
pub fn passes_through(py: Python<'_>, err: &PyErr) -> bool {
    !err.is_instance_of::<PyException>(py) || err.is_instance_of::<PyMemoryError>(py)
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
    /// `close(strict=True)` after a final commit that failed.
    FinalFlushFailed { path: String },

    // What the caller gave: each of these is a TypeError, ValueError or
    // KeyError, as Python code expects of a mapping and a constructor.
    /// `db_path` is neither `str` nor `os.PathLike`.
    PathType { got: String },
    /// An option that must be an integer.
    NotAnInt { name: String, got: String },
    /// An integer option outside its range: "`name` must be `rule`".
    OutOfRange {
        name: String,
        rule: String,
        got: Option<i128>,
    },
    /// An integer option too large for its type.
    TooLarge { name: String, got: Option<i128> },
    /// A keyword the constructor does not take.
    UnknownOption { name: String },
    /// `table=` that is neither `str` nor `None`.
    TableType { got: String },
    /// `table=` that LMDB cannot take as a name; `shown` is its repr.
    BadTableName { shown: String, why: String },
    /// A `pickle_protocol` that `pickle` refuses, with its reason.
    BadProtocol { protocol: i32, why: String },
    /// A `str_normalize` that is not a Unicode normal form.
    BadNormalForm { given: String },
    /// `None` as a key.
    NoneKey,
    /// A key that is not bytes-like (nor `str` when `or_str`).
    KeyType { got: String, or_str: bool },
    /// A memoryview key that is not C-contiguous.
    KeyNotContiguous,
    /// A `str` key on a store without `key_encoding`.
    StrKeyWithoutEncoding,
    /// `key_encoding`'s codec returned something other than bytes.
    EncodingNotBytes { encoding: String },
    /// A key to write outside LMDB's 1..=511 bytes; `shown` is the key as
    /// messages show keys.
    KeySize { shown: String, len: usize },
    /// A range bound (`prefix`, `start`, `stop`) that is not a key.
    BoundType { name: String, why: String },
    /// `store[key]`, `del store[key]`, `pop(key)` of a missing key.
    KeyNotFound { shown: String },
    /// `popitem()` on an empty store.
    EmptyStore,
    /// `pop()` with more than one default.
    PopArguments { given: usize },
    /// Decoding asked of `get_many` on a store without `key_encoding`.
    DecodeWithoutEncoding,
    /// An item of `put_many` that is not a `(key, value)` pair.
    PutManyItem { got: String, why: String },
    /// An element of `update()`'s iterable that is not a pair.
    UpdateElement { index: usize, why: String },
    /// `update()` keywords (str keys) on a store without `key_encoding`.
    UpdateKeywordsWithoutEncoding,
    /// The buffer lent to `pickle.loads` used after that call.
    NoLongerLent,
    /// `allowed=` given as one string instead of an iterable of them.
    AllowedIsOneString,
    /// An item of `allowed=` that is not a string (its repr).
    AllowedItemType { shown: String },
    /// An item of `allowed=` that is not a "module.qualname".
    AllowedItemName { name: String },
    /// The pickler could not allocate its output.
    OutOfMemory,
    /// The process has no room left for the memory a store call may need
    /// (see `engine::reserve`): refused before it starts.
    NoReserve { path: String },
    /// No memory for something a call's input asks for (`what`, e.g.
    /// "3000000 keys of get_many").
    NoMemoryFor { what: String },
    /// A buffer handed to the codec's test hooks that is not contiguous.
    NotContiguous,
    /// A `serializer=` name that is not one (`valid` lists the names).
    UnknownSerializer { name: String, valid: &'static str },
    /// A `serializer=` object without a callable `dumps`/`loads`.
    NotASerializer {
        valid: &'static str,
        shown: String,
        method: String,
    },
    /// `allowed=` given with a serializer other than "safe".
    AllowedWithoutSafe { serializer: String },
    /// `serializer='msgpack'` without the msgpack package.
    MsgpackMissing,
    /// A value of the wrong type for the serializer ("raw": bytes-like).
    WrongValueType { wanted: String, got: String },
    /// A stored JSON value that is not UTF-8 text.
    NotUtf8 { why: String },
    /// A stored `.npy` value that does not read (the cause of the
    /// `UnpickleError` naming its key).
    BadNpy { why: String },
    /// A path argument (`copy(dest)`) that is not a path.
    PathArgType { name: String, got: String },
    /// A path argument that is empty, or holds a NUL byte (`shown`).
    BadPath { name: String, why: String },
    /// A NumPy method was called and numpy does not import.
    NumpyMissing,
    /// `put_array` of an array whose dtype holds Python objects (shown key,
    /// dtype).
    ArrayHoldsObjects { key: String, dtype: String },
    /// `get_array`/`get_arrays` of a value that is not in `.npy` format
    /// (shown key).
    NotAnArray { key: String },
    /// `get_arrays`: a key's array differs from the first key's (shown key,
    /// what differs).
    ArrayMismatch { key: String, why: String },
    /// `get_arrays` was given an `out` it cannot fill (why).
    BadOut { why: String, type_error: bool },
    /// A writable buffer asked of a snapshot's read-only view.
    ReadOnlyBuffer,
    /// `get_into` was given something that is not a writable, contiguous buffer.
    NotAWritableBuffer { got: String },
    /// A snapshot used after its `with` block (or `close()`).
    SnapshotEnded,
    /// A snapshot used by a thread other than the one that opened it.
    SnapshotThread,
    /// A transaction used before its `with` block began it.
    TransactionNotStarted,
    /// A transaction used after its `with` block.
    TransactionEnded,
    /// A transaction used (or its block ending) after one of its calls
    /// failed, which ended it with nothing written.
    TransactionFailed,
    /// A transaction entered a second time.
    TransactionReentered,
    /// `t.table(name)` of a table this process did not have open when the
    /// transaction began.
    TableNotInTransaction { name: String },
    /// At interpreter exit, another thread's transaction block still held
    /// the writer, so the buffer could not be committed.
    TransactionOpenAtExit,
    /// A `compression=` that is not one (its repr; `valid` lists the names).
    UnknownCompression { shown: String, valid: &'static str },
    /// `compression_threshold=` given without `compression=`.
    ThresholdWithoutCompression,
    /// A compressed value whose frame does not read (source, shown key,
    /// why).
    BadFrame {
        source: String,
        key: String,
        why: String,
    },
    /// A compressed value read by a store opened without `compression=`
    /// (source, shown key, the frame's method).
    CompressedValue {
        source: String,
        key: String,
        method: &'static str,
    },
    /// `get_into` was given a buffer too small for the value (shown key).
    BufferTooSmall {
        key: String,
        needed: usize,
        given: usize,
    },
    /// `put_file` was given neither a path nor a binary file object.
    PutFileSource { got: String },
    /// `put_file` was given a text file (shown key).
    PutFileText { key: String },
    /// `put_file` of a source that is not a regular file (`source` names it).
    PutFileNotRegular { source: String },
    /// `put_file` with `size=` that is not what the source holds (`source`
    /// names it and the key; `found` what it holds from its position, or
    /// `None` when it holds more than `size`).
    SizeMismatch {
        source: String,
        size: u64,
        found: Option<u64>,
    },
    /// `put_file` on a store whose serializer cannot hold bytes (shown key).
    StreamSerializer { key: String, serializer: String },
    /// `put_file` of a value larger than the serializer's framing holds.
    StreamTooLarge {
        key: String,
        serializer: String,
        max: u64,
    },
    /// A value file (`store.open()`) used after `close()`.
    FileClosed,
    /// A bad `seek()` of a value file: what was wrong.
    BadSeek { why: String },
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
            StoreError::FinalFlushFailed { path } => {
                write!(f, "Final flush failed during close() of {path}")
            }
            StoreError::PathType { got } => {
                write!(f, "db_path must be str or os.PathLike, got {got}")
            }
            StoreError::NotAnInt { name, got } => write!(f, "{name} must be an int, got {got}"),
            StoreError::OutOfRange { name, rule, got } => match got {
                Some(got) => write!(f, "{name} must be {rule}, got {got}"),
                None => write!(f, "{name} must be {rule}"),
            },
            StoreError::TooLarge { name, got } => match got {
                Some(got) => write!(f, "{name} is too large: {got}"),
                None => write!(f, "{name} is too large"),
            },
            StoreError::TableType { got } => {
                write!(f, "table must be a str or None, got {got}")
            }
            StoreError::BadTableName { shown, why } => {
                write!(f, "table={shown} is not a usable table name: it {why}")
            }
            StoreError::UnknownOption { name } => write!(
                f,
                "LmdbObjectStore() got an unexpected keyword argument '{name}'"
            ),
            StoreError::BadProtocol { protocol, why } => {
                write!(f, "pickle_protocol={protocol}: {why}")
            }
            StoreError::BadNormalForm { given } => write!(
                f,
                "str_normalize={given:?}: must be one of 'NFC', 'NFD', 'NFKC', 'NFKD' or None"
            ),
            StoreError::NoneKey => f.write_str("Key cannot be None."),
            StoreError::KeyType { got, or_str } => {
                let or_str = if *or_str { " or str" } else { "" };
                write!(f, "Key must be bytes-like{or_str}; got {got}")
            }
            StoreError::KeyNotContiguous => {
                f.write_str("Key must be bytes-like: memoryview is not C-contiguous")
            }
            StoreError::StrKeyWithoutEncoding => {
                f.write_str("str keys are not allowed (set key_encoding='utf-8' etc. to enable).")
            }
            StoreError::EncodingNotBytes { encoding } => write!(
                f,
                "key_encoding={encoding:?} did not produce bytes from str.encode"
            ),
            StoreError::KeySize { shown, len } => write!(
                f,
                "key {shown} is {len} bytes: LMDB keys must be 1 to {} bytes",
                engine::MAX_KEY_SIZE
            ),
            StoreError::BoundType { name, why } => write!(f, "{name}: {why}"),
            StoreError::KeyNotFound { shown } => write!(f, "Key not found: {shown}"),
            StoreError::EmptyStore => f.write_str("popitem(): the store is empty"),
            StoreError::PopArguments { given } => {
                write!(f, "pop expected at most 2 arguments, got {given}")
            }
            StoreError::DecodeWithoutEncoding => {
                f.write_str("Decoding requested but key_encoding is not set.")
            }
            StoreError::PutManyItem { got, why } => write!(
                f,
                "put_many() wants a mapping or an iterable of (key, value) pairs; \
                 an item of type {got} {why}"
            ),
            StoreError::UpdateElement { index, why } => {
                write!(f, "update() sequence element #{index} {why}")
            }
            StoreError::UpdateKeywordsWithoutEncoding => f.write_str(
                "update() keyword arguments are str keys: open the store with \
                 key_encoding='utf-8' to use them",
            ),
            StoreError::PathArgType { name, got } => {
                write!(f, "{name} must be str, bytes or os.PathLike, got {got}")
            }
            StoreError::BadPath { name, why } => write!(f, "{name} {why}"),
            StoreError::BadNpy { why } => write!(f, "bad .npy value: {why}"),
            StoreError::UnknownSerializer { name, valid } => write!(
                f,
                "serializer='{name}' is not a serializer: use one of {valid}, \
                 or an object with dumps(obj) -> bytes and loads(buffer) -> obj"
            ),
            StoreError::NotASerializer {
                valid,
                shown,
                method,
            } => write!(
                f,
                "serializer= must be one of {valid}, or an object with dumps(obj) -> bytes \
                 and loads(buffer) -> obj; {shown} has no callable {method}"
            ),
            StoreError::AllowedWithoutSafe { serializer } => write!(
                f,
                "allowed= is only for serializer='safe', not serializer={serializer}"
            ),
            StoreError::AllowedIsOneString => f.write_str(
                "allowed= must be an iterable of \"module.qualname\" strings, not one string \
                 (write allowed={\"collections.OrderedDict\"})",
            ),
            StoreError::AllowedItemType { shown } => {
                write!(
                    f,
                    "allowed= holds {shown}, not a \"module.qualname\" string"
                )
            }
            StoreError::AllowedItemName { name } => write!(
                f,
                "allowed= holds {name:?}: a global is named \"module.qualname\", \
                 e.g. \"collections.OrderedDict\""
            ),
            StoreError::OutOfMemory => f.write_str("out of memory while pickling"),
            StoreError::NoReserve { path } => write!(
                f,
                "not enough memory left to use the store at {path}: it keeps {} MiB of \
                 address space free so that a failed allocation cannot end the process, \
                 and the process is at its memory limit; nothing was done (free memory \
                 and call again)",
                engine::reserve::RESERVE_BYTES >> 20
            ),
            StoreError::NoMemoryFor { what } => {
                write!(f, "not enough memory for {what}; nothing was done")
            }
            StoreError::NotContiguous => f.write_str("data must be a contiguous buffer"),
            StoreError::MsgpackMissing => f.write_str(
                "serializer='msgpack' needs the msgpack package: \
                 pip install 'lmdb-object-store[msgpack]'",
            ),
            StoreError::WrongValueType { wanted, got } => write!(f, "wanted {wanted}, got {got}"),
            StoreError::NotUtf8 { why } => write!(f, "not UTF-8 text: {why}"),
            StoreError::NoLongerLent => f.write_str(
                "the store's memory is no longer lent: it was valid only inside pickle.loads",
            ),
            StoreError::NumpyMissing => f.write_str(
                "NumPy arrays need numpy, which does not import: \
                 pip install lmdb-object-store[numpy]",
            ),
            StoreError::ArrayHoldsObjects { key, dtype } => write!(
                f,
                "cannot store the array of key {key}: its dtype {dtype} holds Python \
                 objects, which the .npy format keeps only as a pickle"
            ),
            StoreError::NotAnArray { key } => write!(
                f,
                "the value of key {key} is not an array stored by put_array (.npy format)"
            ),
            StoreError::ArrayMismatch { key, why } => write!(f, "get_arrays(): key {key} {why}"),
            StoreError::BadOut { why, .. } => write!(f, "get_arrays(): out {why}"),
            StoreError::SnapshotEnded => f.write_str(
                "this snapshot has ended (it lasts until the end of its with block or close())",
            ),
            StoreError::SnapshotThread => {
                f.write_str("a snapshot is used only by the thread that opened it")
            }
            StoreError::ReadOnlyBuffer => f.write_str("snapshot buffers are read-only"),
            StoreError::TransactionNotStarted => f.write_str(
                "this transaction has not begun: use it inside `with store.transaction() as t:`",
            ),
            StoreError::TransactionEnded => f.write_str(
                "this transaction has ended (it lasts until the end of its with block); begin a \
                 new one with store.transaction()",
            ),
            StoreError::TransactionFailed => f.write_str(
                "this transaction failed earlier (see the error it raised then) and was rolled \
                 back: nothing of it was written",
            ),
            StoreError::TransactionOpenAtExit => f.write_str(
                "another thread was still inside a transaction block, which holds the store's \
                 writer, when the interpreter exited",
            ),
            StoreError::TableNotInTransaction { name } => write!(
                f,
                "t.table('{name}'): no store of table '{name}' of this file was open in this \
                 process when the transaction began, and a write transaction can only reach the \
                 tables open by then; open it first (LmdbObjectStore(path, table='{name}'))"
            ),
            StoreError::TransactionReentered => {
                f.write_str("a transaction's with block can be entered only once")
            }
            StoreError::NotAWritableBuffer { got } => write!(
                f,
                "get_into: buffer must be a writable, contiguous bytes-like object, not {got}"
            ),
            StoreError::BufferTooSmall { key, needed, given } => write!(
                f,
                "get_into: the value of key {key} is {needed} bytes, the buffer holds {given}; \
                 nothing was written"
            ),
            StoreError::PutFileSource { got } => write!(
                f,
                "put_file: file_or_path must be a path (str or os.PathLike) or a binary file \
                 object with read(), not {got}"
            ),
            StoreError::PutFileText { key } => write!(
                f,
                "put_file: the file object for key {key} is a text file; open it in binary \
                 mode ('rb')"
            ),
            StoreError::PutFileNotRegular { source } => write!(
                f,
                "put_file: {source} is not a regular file; nothing was written"
            ),
            StoreError::SizeMismatch {
                source,
                size,
                found: Some(found),
            } => write!(
                f,
                "put_file: size={size} but {source} holds {found} bytes from its position; \
                 nothing was written"
            ),
            StoreError::SizeMismatch {
                source,
                size,
                found: None,
            } => write!(
                f,
                "put_file: size={size} but {source} holds more bytes; nothing was written"
            ),
            StoreError::StreamSerializer { key, serializer } => write!(
                f,
                "put_file: cannot store key {key} with serializer {serializer}: it has no form \
                 for a stream of bytes (put_file works with 'pickle', 'safe', 'raw' and \
                 'msgpack'); nothing was written"
            ),
            StoreError::StreamTooLarge {
                key,
                serializer,
                max,
            } => write!(
                f,
                "put_file: the value of key {key} is too large for serializer {serializer} \
                 (at most {max} bytes); nothing was written"
            ),
            StoreError::FileClosed => f.write_str("I/O operation on closed file."),
            StoreError::BadSeek { why } => f.write_str(why),
            StoreError::UnknownCompression { shown, valid } => {
                write!(f, "compression={shown}: must be one of {valid}")
            }
            StoreError::ThresholdWithoutCompression => f.write_str(
                "compression_threshold= is only for compression='zstd' or 'lz4', \
                 not compression=None",
            ),
            StoreError::BadFrame { source, key, why } => {
                write!(f, "Failed to decompress {source} key {key}: {why}")
            }
            StoreError::CompressedValue {
                source,
                key,
                method,
            } => write!(
                f,
                "{source} key {key} holds a value compressed with {method}, and this store \
                 was opened without compression=: open it with compression='zstd' or 'lz4' \
                 (either reads both)"
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
            StoreError::Engine(E::Conflict) => TransactionConflictError::new_err(text),
            StoreError::Engine(E::NoMemory { .. }) => PyMemoryError::new_err(text),
            StoreError::Engine(E::Open { code, path, .. }) if code > 0 => {
                // Python's OSError subclass for the errno (FileNotFoundError,
                // PermissionError, ...), with the path attached.
                PyOSError::new_err((code, text, path))
            }
            StoreError::Engine(E::Copy { code, path, .. }) if code > 0 => {
                // FileExistsError for a destination that exists, the errno's
                // own subclass otherwise; `filename` is the destination.
                PyOSError::new_err((code, text, path))
            }
            StoreError::Engine(E::Source { code, .. }) if code > 0 => {
                PyOSError::new_err((code, text))
            }
            StoreError::Engine(E::Source { .. }) => PyValueError::new_err(text),
            StoreError::Readonly(_) => ReadonlyError::new_err(text),
            StoreError::FinalFlushFailed { .. } => PyRuntimeError::new_err(text),
            StoreError::PathType { .. }
            | StoreError::NotAnInt { .. }
            | StoreError::UnknownOption { .. }
            | StoreError::TableType { .. }
            | StoreError::NoneKey
            | StoreError::KeyType { .. }
            | StoreError::KeyNotContiguous
            | StoreError::StrKeyWithoutEncoding
            | StoreError::EncodingNotBytes { .. }
            | StoreError::BoundType { .. }
            | StoreError::PopArguments { .. }
            | StoreError::PutManyItem { .. }
            | StoreError::UpdateElement { .. }
            | StoreError::UpdateKeywordsWithoutEncoding
            | StoreError::PathArgType { .. } => PyTypeError::new_err(text),
            StoreError::OutOfRange { .. }
            | StoreError::TooLarge { .. }
            | StoreError::BadProtocol { .. }
            | StoreError::BadNormalForm { .. }
            | StoreError::BadTableName { .. }
            | StoreError::Engine(E::BadTable { .. })
            | StoreError::KeySize { .. }
            | StoreError::DecodeWithoutEncoding
            | StoreError::NoLongerLent
            | StoreError::BadPath { .. }
            | StoreError::BadNpy { .. }
            | StoreError::UnknownSerializer { .. }
            | StoreError::AllowedWithoutSafe { .. }
            | StoreError::NotUtf8 { .. } => PyValueError::new_err(text),
            StoreError::NotASerializer { .. } | StoreError::WrongValueType { .. } => {
                PyTypeError::new_err(text)
            }
            StoreError::MsgpackMissing => PyImportError::new_err(text),
            StoreError::AllowedIsOneString | StoreError::AllowedItemType { .. } => {
                PyTypeError::new_err(text)
            }
            StoreError::AllowedItemName { .. } | StoreError::NotContiguous => {
                PyValueError::new_err(text)
            }
            StoreError::OutOfMemory
            | StoreError::NoReserve { .. }
            | StoreError::NoMemoryFor { .. } => PyMemoryError::new_err(text),
            StoreError::KeyNotFound { .. } | StoreError::EmptyStore => PyKeyError::new_err(text),
            StoreError::Engine(_)
            | StoreError::NotInitialised
            | StoreError::AlreadyOpen
            | StoreError::CommitPanicked { .. } => Error::new_err(text),
            StoreError::NumpyMissing => PyImportError::new_err(text),
            StoreError::ArrayHoldsObjects { .. }
            | StoreError::NotAnArray { .. }
            | StoreError::BadOut {
                type_error: true, ..
            } => PyTypeError::new_err(text),
            StoreError::ArrayMismatch { .. } | StoreError::BadOut { .. } => {
                PyValueError::new_err(text)
            }
            StoreError::BufferTooSmall { .. } => PyValueError::new_err(text),
            StoreError::ReadOnlyBuffer => PyBufferError::new_err(text),
            StoreError::NotAWritableBuffer { .. } => PyTypeError::new_err(text),
            StoreError::SnapshotEnded | StoreError::SnapshotThread => Error::new_err(text),
            StoreError::PutFileSource { .. }
            | StoreError::PutFileText { .. }
            | StoreError::StreamSerializer { .. } => PyTypeError::new_err(text),
            StoreError::PutFileNotRegular { .. }
            | StoreError::SizeMismatch { .. }
            | StoreError::StreamTooLarge { .. }
            | StoreError::FileClosed
            | StoreError::BadSeek { .. } => PyValueError::new_err(text),
            StoreError::TransactionNotStarted
            | StoreError::TransactionEnded
            | StoreError::TransactionFailed
            | StoreError::TransactionReentered
            | StoreError::TableNotInTransaction { .. }
            | StoreError::TransactionOpenAtExit => Error::new_err(text),
            StoreError::UnknownCompression { .. } | StoreError::ThresholdWithoutCompression => {
                PyValueError::new_err(text)
            }
            StoreError::BadFrame { .. } | StoreError::CompressedValue { .. } => {
                DecodeError::new_err(text)
            }
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

/// `KeyError` for a key that is not in the store, showing it as messages
/// show keys.
pub fn key_error(key: &Bound<'_, PyAny>) -> PyErr {
    StoreError::KeyNotFound {
        shown: display_key(key),
    }
    .into()
}

/// Wrap an unpickling failure: `UnpickleError` (an `Error` and a
/// `RuntimeError`), with the original as `__cause__`.
/// A `KeyboardInterrupt` or the like is returned as it is (see
/// [`passes_through`]).
pub fn unpickle_error(py: Python<'_>, key: &[u8], source: &str, cause: PyErr) -> PyErr {
    if passes_through(py, &cause) {
        return cause;
    }
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
    crate::codec::new_str(py, s)
        .and_then(|s| s.call_method0(pyo3::intern!(py, "isprintable")))
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

/// Add a note to an exception (PEP 678). Python 3.10 has no `add_note` and
/// does not print notes: there the note goes into `__notes__` and, so that
/// a traceback shows it, onto the end of the message.
pub fn add_note(exc: &Bound<'_, pyo3::exceptions::PyBaseException>, note: String) {
    let py = exc.py();
    if exc.hasattr(pyo3::intern!(py, "add_note")).unwrap_or(false) {
        let _ = exc.call_method1(pyo3::intern!(py, "add_note"), (note,));
        return;
    }
    let notes = match exc.getattr(pyo3::intern!(py, "__notes__")) {
        Ok(list) => list,
        Err(_) => pyo3::types::PyList::empty(py).into_any(),
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

/// The type of `v` by name, as messages show it.
pub fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::hex;

    #[test]
    fn hex_is_lowercase_pairs() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
