//! The value pipeline: which serializer a store uses (`serializer=`,
//! `allowed=`), and the one place where a value is encoded for a write and
//! decoded from a read, with the errors that name the key and the serializer.

use pyo3::exceptions::PyImportError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::codec;
use crate::compress::{self, Compression};
use crate::errors::{
    add_note, decode_error_type, unpickle_error_type, unsafe_value_error_type, StoreError,
};
use crate::keys::KeyPolicy;
use crate::pickle::safe::{self, AllowList};
use crate::serde_fast;

/// The serializer names `serializer=` takes, as the error for an unknown
/// one lists them.
const NAMES: &str = "'pickle', 'safe', 'raw', 'json', 'msgpack'";

/// How a store turns values into bytes and back.
pub enum Serializer {
    /// `pickle.dumps`/`loads` through the native codec: the default, and
    /// the fast path.
    Pickle,
    /// Pickle on disk; a read never imports or calls anything outside the
    /// plain types and the allow-list.
    Safe(AllowList),
    /// Bytes-like values stored as they are; reads return `bytes`.
    Raw,
    /// A compact, strict `json.JSONEncoder.encode` (UTF-8 on disk) and a
    /// `json.JSONDecoder.decode`.
    Json { codec: serde_fast::Json },
    /// `msgpack.packb` and `msgpack.unpackb` (any map key).
    Msgpack { codec: serde_fast::Msgpack },
    /// The caller's object, its `dumps` and `loads` looked up once.
    Custom {
        obj: Py<PyAny>,
        dumps: Py<PyAny>,
        loads: Py<PyAny>,
    },
}

impl Serializer {
    /// From `serializer=` and `allowed=`; a bad name, a missing package or
    /// an `allowed=` without the safe serializer raises, naming the option.
    pub fn parse(
        py: Python<'_>,
        serializer: Option<&Bound<'_, PyAny>>,
        allowed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let allowed = allowed.filter(|a| !a.is_none());
        let serializer = serializer.filter(|s| !s.is_none());
        let made = match serializer {
            None => Serializer::Pickle,
            Some(s) => match s.cast::<PyString>() {
                Ok(name) => match name.to_str()? {
                    "pickle" => Serializer::Pickle,
                    "safe" => Serializer::Safe(AllowList::from_py(allowed)?),
                    "raw" => Serializer::Raw,
                    "json" => json(py)?,
                    "msgpack" => msgpack(py)?,
                    other => {
                        return Err(StoreError::UnknownSerializer {
                            name: other.to_string(),
                            valid: NAMES,
                        }
                        .into())
                    }
                },
                Err(_) => custom(s)?,
            },
        };
        if allowed.is_some() && !matches!(made, Serializer::Safe(_)) {
            return Err(StoreError::AllowedWithoutSafe {
                serializer: made.shown(py),
            }
            .into());
        }
        Ok(made)
    }

    /// The name, as messages show it (a custom serializer by its type).
    pub fn name(&self, py: Python<'_>) -> String {
        match self {
            Serializer::Pickle => "pickle".into(),
            Serializer::Safe(_) => "safe".into(),
            Serializer::Raw => "raw".into(),
            Serializer::Json { .. } => "json".into(),
            Serializer::Msgpack { .. } => "msgpack".into(),
            Serializer::Custom { obj, .. } => crate::errors::type_name(obj.bind(py)),
        }
    }

    /// `serializer=...` as messages write it.
    fn shown(&self, py: Python<'_>) -> String {
        match self {
            Serializer::Custom { .. } => format!("<{} object>", self.name(py)),
            _ => format!("'{}'", self.name(py)),
        }
    }

    /// What `store.serializer` returns and the store is pickled with: the
    /// name, or the caller's object.
    pub fn to_object<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self {
            Serializer::Custom { obj, .. } => obj.bind(py).clone(),
            _ => PyString::new(py, &self.name(py)).into_any(),
        }
    }

    /// The constructor keywords that make this serializer again.
    pub fn add_kwargs(&self, py: Python<'_>, kwargs: &Bound<'_, PyDict>) -> PyResult<()> {
        kwargs.set_item("serializer", self.to_object(py))?;
        if let Serializer::Safe(allow) = self {
            if !allow.is_empty() {
                kwargs.set_item("allowed", allow.names())?;
            }
        }
        Ok(())
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Serializer::Pickle => Serializer::Pickle,
            Serializer::Safe(a) => Serializer::Safe(a.clone()),
            Serializer::Raw => Serializer::Raw,
            Serializer::Json { codec } => Serializer::Json {
                codec: codec.clone_ref(py),
            },
            Serializer::Msgpack { codec } => Serializer::Msgpack {
                codec: codec.clone_ref(py),
            },
            Serializer::Custom { obj, dumps, loads } => Serializer::Custom {
                obj: obj.clone_ref(py),
                dumps: dumps.clone_ref(py),
                loads: loads.clone_ref(py),
            },
        }
    }
}

fn json(py: Python<'_>) -> PyResult<Serializer> {
    Ok(Serializer::Json {
        codec: serde_fast::Json::new(py)?,
    })
}

fn msgpack(py: Python<'_>) -> PyResult<Serializer> {
    let msgpack = py.import("msgpack").map_err(|e| {
        if !e.is_instance_of::<PyImportError>(py) {
            return e;
        }
        let err = PyErr::from(StoreError::MsgpackMissing);
        err.set_cause(py, Some(e));
        err
    })?;
    Ok(Serializer::Msgpack {
        codec: serde_fast::Msgpack::new(&msgpack)?,
    })
}

fn custom(obj: &Bound<'_, PyAny>) -> PyResult<Serializer> {
    let method = |name: &str| -> PyResult<Py<PyAny>> {
        match obj.getattr(name) {
            Ok(m) if m.is_callable() => Ok(m.unbind()),
            _ => Err(StoreError::NotASerializer {
                valid: NAMES,
                shown: obj
                    .repr()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| "it".into()),
                method: name.to_string(),
            }
            .into()),
        }
    };
    Ok(Serializer::Custom {
        dumps: method("dumps")?,
        loads: method("loads")?,
        obj: obj.clone().unbind(),
    })
}

/// The bytes to store for `obj` under `key` (`key` as the caller gave it,
/// for the message), compressed as `comp` says. A failure is the
/// serializer's own exception with a note naming the key and the serializer
/// (`UnsafeValueError` also gets its `key`); nothing was buffered.
#[inline]
pub fn encode<'py>(
    py: Python<'py>,
    ser: &Serializer,
    comp: &Compression,
    obj: &Bound<'py, PyAny>,
    protocol: i32,
    key: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let out = match ser {
        // The default stays one call away from the native codec.
        Serializer::Pickle => codec::dumps(py, obj, protocol),
        _ => encode_other(py, ser, obj, protocol),
    };
    out.and_then(|b| comp.pack(py, b))
        .map_err(|e| encode_failed(py, ser, key, e))
}

fn encode_other<'py>(
    py: Python<'py>,
    ser: &Serializer,
    obj: &Bound<'py, PyAny>,
    protocol: i32,
) -> PyResult<Bound<'py, PyBytes>> {
    match ser {
        Serializer::Pickle => codec::dumps(py, obj, protocol),
        Serializer::Safe(allow) => safe::dumps(py, obj, protocol, allow),
        Serializer::Raw => bytes_like(obj, "a bytes-like value (bytes, bytearray, memoryview)"),
        Serializer::Json { codec } => codec.encode(py, obj),
        Serializer::Msgpack { codec } => {
            let out = codec.encode(py, obj)?;
            bytes_like(&out, "bytes from msgpack.packb")
        }
        Serializer::Custom { dumps, .. } => {
            let out = dumps.bind(py).call1((obj,))?;
            bytes_like(&out, "bytes from dumps()")
        }
    }
}

/// `obj` as a `bytes` object: itself, or a copy of its contiguous buffer
/// (a bytearray may change after the call; the copy does not).
fn bytes_like<'py>(obj: &Bound<'py, PyAny>, wanted: &str) -> PyResult<Bound<'py, PyBytes>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.clone());
    }
    let py = obj.py();
    let not_bytes = || {
        PyErr::from(StoreError::WrongValueType {
            wanted: wanted.to_string(),
            got: crate::errors::type_name(obj),
        })
    };
    // A buffer of bytes (this checks its format), copied by Python itself,
    // which raises MemoryError when the copy does not fit.
    drop(pyo3::buffer::PyBuffer::<u8>::get(obj).map_err(|_| not_bytes())?);
    // SAFETY: `obj` is alive; the result is a new reference or null with an
    // exception set.
    unsafe {
        Ok(
            Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyBytes_FromObject(obj.as_ptr()))?
                .cast_into_unchecked(),
        )
    }
}

fn encode_failed(py: Python<'_>, ser: &Serializer, key: &Bound<'_, PyAny>, err: PyErr) -> PyErr {
    if codec::passes_through(py, &err) {
        return err;
    }
    let shown = codec::display_key(key);
    let what = format!(
        "while encoding the value for key {shown} with serializer={}",
        ser.shown(py)
    );
    if is_unsafe(py, &err) {
        return keyed_unsafe(py, err, key, &format!("key {shown}"));
    }
    add_note(err.value(py), what);
    err
}

fn is_unsafe(py: Python<'_>, err: &PyErr) -> bool {
    unsafe_value_error_type(py)
        .map(|ty| err.is_instance(py, ty))
        .unwrap_or(false)
}

/// `UnsafeValueError` with `key` set and the key at the head of its message.
fn keyed_unsafe(py: Python<'_>, err: PyErr, key: &Bound<'_, PyAny>, shown: &str) -> PyErr {
    let exc = err.value(py);
    let _ = exc.setattr("key", key);
    if let Ok(Ok((message,))) = exc.getattr("args").map(|a| a.extract::<(String,)>()) {
        let _ = exc.setattr("args", (format!("{shown}: {message}"),));
    }
    err
}

/// The value stored as `data` under `key` (from `source`: "DB" or
/// "buffered"), decompressed first when the store reads frames (`comp`).
/// `pin` is called if the bytes were lent to Python code that kept them
/// (see [`codec::loads_borrowed`]). A failure raises the typed error naming
/// the key and the serializer: `UnpickleError` for the pickle serializers,
/// `UnsafeValueError` for a refused global, `DecodeError` for the others
/// and for a compressed value that does not decompress.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn decode<'py>(
    py: Python<'py>,
    ser: &Serializer,
    comp: &Compression,
    keys: &KeyPolicy,
    key: &[u8],
    source: &str,
    data: &[u8],
    pin: impl FnOnce(),
) -> PyResult<Bound<'py, PyAny>> {
    let plain = unpack(py, comp, source, key, data)?;
    match plain {
        std::borrow::Cow::Borrowed(plain) => decode_plain(py, ser, keys, key, source, plain, pin)
            .map_err(|e| compressed_without_compression(py, comp, key, source, data, e)),
        std::borrow::Cow::Owned(plain) => {
            let mut kept = false;
            let out = decode_plain(py, ser, keys, key, source, &plain, || kept = true);
            if kept {
                // Spine rule 3: pickle kept a buffer over these bytes, so
                // they stay where they are for the rest of the process.
                std::mem::forget(plain);
            }
            out
        }
    }
}

/// A value that fails to decode in a store without compression, and is a
/// compressed frame, gets an error that says so (the serializer's failure
/// as its `__cause__`).
#[cold]
fn compressed_without_compression(
    py: Python<'_>,
    comp: &Compression,
    key: &[u8],
    source: &str,
    data: &[u8],
    err: PyErr,
) -> PyErr {
    let method = match compress::frame_method(data) {
        Some(m) if comp.name().is_none() && !codec::passes_through(py, &err) => m,
        _ => return err,
    };
    let wrapped = PyErr::from(StoreError::CompressedValue {
        source: source.to_string(),
        key: codec::display_bytes(py, key),
        method: method.name(),
    });
    wrapped.set_cause(py, Some(err));
    wrapped
}

/// The plain bytes of the stored `data` of `key` (read from `source`): a
/// frame decompressed, anything else as it is; a frame that does not read
/// is the store's `DecodeError` naming the key.
pub fn unpack<'a>(
    py: Python<'_>,
    comp: &Compression,
    source: &str,
    key: &[u8],
    data: &'a [u8],
) -> PyResult<std::borrow::Cow<'a, [u8]>> {
    comp.unpack(py, data).map_err(|why| {
        PyErr::from(StoreError::BadFrame {
            source: source.to_string(),
            key: codec::display_bytes(py, key),
            why,
        })
    })
}

/// [`decode`] of bytes that are not a frame.
#[inline]
fn decode_plain<'py>(
    py: Python<'py>,
    ser: &Serializer,
    keys: &KeyPolicy,
    key: &[u8],
    source: &str,
    data: &[u8],
    pin: impl FnOnce(),
) -> PyResult<Bound<'py, PyAny>> {
    // An array stored by `put_array` comes back as an array, whatever the
    // serializer (no pickle starts with the `.npy` magic).
    match crate::npy::detect_and_load(py, data) {
        Ok(Some(array)) => return Ok(array),
        Ok(None) => {}
        Err(e) => return Err(codec::unpickle_error(py, key, source, e)),
    }
    match ser {
        // Spine rule 3: the lent memory stops being lent inside this call.
        Serializer::Pickle => codec::loads_borrowed(py, data, pin)
            .map_err(|e| codec::unpickle_error(py, key, source, e)),
        _ => decode_other(py, ser, data).map_err(|e| decode_failed(py, ser, keys, key, source, e)),
    }
}

/// The other serializers never lend LMDB's memory: Python code gets
/// `bytes` (a copy), or Rust reads the slice before the read ends.
fn decode_other<'py>(
    py: Python<'py>,
    ser: &Serializer,
    data: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    match ser {
        Serializer::Pickle => codec::loads_borrowed(py, data, || {}),
        Serializer::Safe(allow) => safe::loads(py, data, allow),
        Serializer::Raw => Ok(crate::codec::new_bytes(py, data)?.into_any()),
        Serializer::Json { codec } => {
            let text = std::str::from_utf8(data)
                .map_err(|e| PyErr::from(StoreError::NotUtf8 { why: e.to_string() }))?;
            codec.decode(py, text)
        }
        Serializer::Msgpack { codec } => codec.decode(py, data),
        Serializer::Custom { loads, .. } => {
            loads.bind(py).call1((crate::codec::new_bytes(py, data)?,))
        }
    }
}

fn decode_failed(
    py: Python<'_>,
    ser: &Serializer,
    keys: &KeyPolicy,
    key: &[u8],
    source: &str,
    err: PyErr,
) -> PyErr {
    if codec::passes_through(py, &err) {
        return err;
    }
    let shown = codec::display_bytes(py, key);
    if is_unsafe(py, &err) {
        let key_obj = keys
            .decode(py, key)
            .unwrap_or_else(|_| PyBytes::new(py, key).into_any());
        return keyed_unsafe(py, err, &key_obj, &format!("{source} key {shown}"));
    }
    let (ty, msg) = match ser {
        Serializer::Safe(_) => (
            unpickle_error_type(py).cloned(),
            format!(
                "Failed to unpickle {source} key {shown} (serializer='safe'): {}",
                err.value(py)
            ),
        ),
        _ => (
            decode_error_type(py),
            format!(
                "Failed to decode {source} key {shown} with serializer={}: {}",
                ser.shown(py),
                err.value(py)
            ),
        ),
    };
    match ty {
        Ok(ty) => {
            let wrapped = PyErr::from_type(ty, msg);
            wrapped.set_cause(py, Some(err));
            wrapped
        }
        Err(e) => e,
    }
}
