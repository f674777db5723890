//! The constructor's arguments: checked, converted and kept as the
//! [`Settings`] a store's core is built from (the store options, the key
//! policy, and the LMDB options of the environment).

use std::path::PathBuf;

use engine::EnvOptions;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::codec;
use crate::compress::Compression;
use crate::errors::StoreError;
use crate::keys::KeyPolicy;
use crate::values::Serializer;

pub const DEFAULT_MAX_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// Everything a store is opened with, checked.
pub struct Settings {
    /// The path as opened, byte for byte.
    pub fs_path: PathBuf,
    /// The path as messages and `store.path` show it.
    pub path: String,
    pub batch_size: usize,
    pub max_buffer_bytes: usize,
    pub autoflush_on_read: bool,
    pub max_map_size: Option<usize>,
    pub protocol: i32,
    pub serializer: Serializer,
    pub compression: Compression,
    pub keys: KeyPolicy,
    pub options: EnvOptions,
    /// The constructor's keyword arguments, for pickling the store.
    pub init_kwargs: Py<PyDict>,
    /// `table=`: a named table of the file; `None`: the main one.
    pub table: Option<String>,
}

impl Settings {
    /// Check and convert `LmdbObjectStore.__init__`'s arguments; the first
    /// bad one raises, naming itself.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
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
        serializer: Option<&Bound<'_, PyAny>>,
        allowed: Option<&Bound<'_, PyAny>>,
        compression: Option<&Bound<'_, PyAny>>,
        compression_threshold: Option<&Bound<'_, PyAny>>,
        table: Option<&Bound<'_, PyAny>>,
        lmdb_options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
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
                StoreError::PathType {
                    got: type_name(db_path),
                }
                .into()
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
            return Err(out_of_range("batch_size", ">= 1", Some(batch_size.into())));
        }
        let batch_size = batch_size as usize;
        if max_buffer_bytes < 0 {
            return Err(out_of_range(
                "max_buffer_bytes",
                ">= 0",
                Some(max_buffer_bytes.into()),
            ));
        }
        let max_buffer_bytes = max_buffer_bytes as usize;
        let max_map_size = match max_map_size {
            None => None,
            Some(v) if v.is_none() => None,
            Some(v) => {
                let n = usize_opt("max_map_size", v)?;
                if n == 0 {
                    return Err(out_of_range("max_map_size", "> 0 or None", None));
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
            StoreError::BadProtocol {
                protocol,
                why: e.value(py).to_string(),
            }
            .into()
        })?;
        let serializer = Serializer::parse(py, serializer, allowed)?;
        let compression = Compression::parse(compression, threshold_opt(compression_threshold)?)?;
        let keys = KeyPolicy::new(py, key_encoding, key_errors, str_normalize)?;
        let table = table_name(table)?;
        let mut options = parse_lmdb_options(lmdb_options)?;
        options.max_map_size = max_map_size;
        let init_kwargs = PyDict::new(py);
        init_kwargs.set_item("batch_size", batch_size)?;
        init_kwargs.set_item("autoflush_on_read", autoflush_on_read)?;
        init_kwargs.set_item("key_encoding", keys.encoding.as_deref())?;
        init_kwargs.set_item("key_errors", keys.errors.as_str())?;
        init_kwargs.set_item("str_normalize", keys.normalize.map(|n| n.name()))?;
        init_kwargs.set_item("max_map_size", max_map_size)?;
        init_kwargs.set_item("max_buffer_bytes", max_buffer_bytes)?;
        init_kwargs.set_item("pickle_protocol", protocol)?;
        serializer.add_kwargs(py, &init_kwargs)?;
        compression.add_kwargs(&init_kwargs)?;
        if table.is_some() {
            init_kwargs.set_item("table", table.as_deref())?;
        }
        if let Some(extra) = lmdb_options {
            init_kwargs.update(extra.as_mapping())?;
        }
        Ok(Settings {
            path: path.display().to_string(),
            fs_path: path,
            batch_size,
            max_buffer_bytes,
            autoflush_on_read,
            max_map_size,
            protocol,
            serializer,
            compression,
            keys,
            options,
            init_kwargs: init_kwargs.unbind(),
            table,
        })
    }
}

/// `compression_threshold=`: None (not given) or a size in bytes; a bool
/// is refused, though Python counts it as an int.
fn threshold_opt(v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    match v {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) if v.is_instance_of::<pyo3::types::PyBool>() => Err(StoreError::NotAnInt {
            name: "compression_threshold".into(),
            got: "bool".into(),
        }
        .into()),
        Some(v) => usize_opt("compression_threshold", v).map(Some),
    }
}

/// `table=`: `None`, or a `str` that LMDB can take as a table name.
fn table_name(v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let Ok(name) = v.cast::<pyo3::types::PyString>() else {
        return Err(StoreError::TableType { got: type_name(v) }.into());
    };
    let name = name.to_str().map_err(|_| StoreError::BadTableName {
        shown: v.repr().map(|r| r.to_string()).unwrap_or_default(),
        why: "is not valid Unicode (it has surrogates)".into(),
    })?;
    match engine::tables::name_problem(name) {
        None => Ok(Some(name.to_owned())),
        Some(why) => Err(StoreError::BadTableName {
            shown: shorten(&v.repr()?.to_string()),
            why,
        }
        .into()),
    }
}

/// A value's repr cut to a length a message can carry.
fn shorten(repr: &str) -> String {
    const MAX: usize = 60;
    match repr.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &repr[..at]),
        None => repr.to_owned(),
    }
}

/// The options of `lmdb_object_store.tables(path, **options)`: those of an
/// open of the file (the engine makes it read-only).
pub fn listing_options(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<EnvOptions> {
    parse_lmdb_options(kwargs)
}

fn bool_opt(v: &Bound<'_, PyAny>) -> PyResult<bool> {
    v.is_truthy()
}

pub fn usize_opt(name: &str, v: &Bound<'_, PyAny>) -> PyResult<usize> {
    let n: i128 = v.extract().map_err(|e| {
        if codec::passes_through(v.py(), &e) {
            return e;
        }
        StoreError::NotAnInt {
            name: name.to_string(),
            got: type_name(v),
        }
        .into()
    })?;
    if n < 0 {
        return Err(out_of_range(name, ">= 0", Some(n)));
    }
    usize::try_from(n).map_err(|_| {
        StoreError::TooLarge {
            name: name.to_string(),
            got: Some(n),
        }
        .into()
    })
}

fn out_of_range(name: &str, rule: &str, got: Option<i128>) -> PyErr {
    StoreError::OutOfRange {
        name: name.to_string(),
        rule: rule.to_string(),
        got,
    }
    .into()
}

pub(crate) use crate::errors::type_name;

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
                    return Err(out_of_range("map_size", "> 0", None));
                }
            }
            "subdir" => o.subdir = bool_opt(&v)?,
            "readonly" => o.readonly = bool_opt(&v)?,
            "metasync" => o.metasync = bool_opt(&v)?,
            "sync" => o.sync = bool_opt(&v)?,
            "map_async" => o.map_async = bool_opt(&v)?,
            "mode" => {
                o.mode = u32::try_from(usize_opt("mode", &v)?).map_err(|_| {
                    PyErr::from(StoreError::TooLarge {
                        name: "mode".into(),
                        got: None,
                    })
                })?
            }
            "create" => o.create = bool_opt(&v)?,
            "readahead" => o.readahead = bool_opt(&v)?,
            "writemap" => o.writemap = bool_opt(&v)?,
            "meminit" => o.meminit = bool_opt(&v)?,
            "max_readers" => {
                let n = usize_opt("max_readers", &v)?;
                if n == 0 || n > u32::MAX as usize {
                    let rule = format!("between 1 and {}", u32::MAX);
                    return Err(out_of_range("max_readers", &rule, Some(n as i128)));
                }
                o.max_readers = n as u32;
            }
            "lock" => o.lock = bool_opt(&v)?,
            other => {
                return Err(StoreError::UnknownOption {
                    name: other.to_string(),
                }
                .into())
            }
        }
    }
    Ok(o)
}

/// A path argument other than the constructor's (`copy(dest)`): `str`,
/// `bytes` or `os.PathLike`, through `os.fsencode` as `db_path` is. Empty
/// or with a NUL byte is a `ValueError` naming `name`.
pub fn path_arg(py: Python<'_>, name: &str, v: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let os = py.import("os")?;
    let fspath = os.call_method1("fspath", (v,)).map_err(|e| {
        if codec::passes_through(py, &e) {
            return e;
        }
        StoreError::PathArgType {
            name: name.to_string(),
            got: type_name(v),
        }
        .into()
    })?;
    let raw: Vec<u8> = os.call_method1("fsencode", (&fspath,))?.extract()?;
    if raw.is_empty() {
        return Err(StoreError::BadPath {
            name: name.to_string(),
            why: "is an empty path".into(),
        }
        .into());
    }
    if raw.contains(&0) {
        return Err(StoreError::BadPath {
            name: name.to_string(),
            why: format!("contains a NUL byte: {}", fspath.repr()?),
        }
        .into());
    }
    Ok(PathBuf::from(std::ffi::OsString::from_vec(raw)))
}
