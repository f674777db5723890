//! The json and msgpack serializers' calls into CPython's `json` module and
//! `msgpack`, made the cheapest way that writes the same bytes and raises the
//! same errors as `JSONEncoder.encode`, `JSONDecoder.decode` and `msgpack.packb`.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

/// The json serializer: compact, UTF-8 rather than `\u` escapes, no NaN.
pub struct Json {
    /// `json.encoder.c_make_encoder` with what `JSONEncoder.iterencode`
    /// passes it, or None where the C accelerator is missing.
    make: Option<Py<PyAny>>,
    default: Py<PyAny>,
    basestring: Py<PyAny>,
    /// `JSONEncoder.encode` and `JSONDecoder.decode`: the fallbacks, and
    /// the source of every error message.
    encode: Py<PyAny>,
    decode: Py<PyAny>,
    /// The decoder's scanner (`scan_once(text, index) -> (obj, end)`).
    scan: Py<PyAny>,
}

impl Json {
    pub fn new(py: Python<'_>) -> PyResult<Self> {
        let json = py.import("json")?;
        let kwargs = PyDict::new(py);
        // Compact, UTF-8 rather than \u escapes, and strict: NaN and the
        // infinities are not JSON, so other languages could not read them.
        kwargs.set_item("ensure_ascii", false)?;
        kwargs.set_item("allow_nan", false)?;
        kwargs.set_item("separators", (",", ":"))?;
        let encoder = json.getattr("JSONEncoder")?.call((), Some(&kwargs))?;
        let decoder = json.getattr("JSONDecoder")?.call0()?;
        let module = py.import("json.encoder")?;
        let make = module.getattr("c_make_encoder")?;
        Ok(Json {
            make: (!make.is_none()).then(|| make.unbind()),
            default: encoder.getattr("default")?.unbind(),
            // ensure_ascii=False: the escaping encode_basestring does.
            basestring: module.getattr("encode_basestring")?.unbind(),
            encode: encoder.getattr("encode")?.unbind(),
            decode: decoder.getattr("decode")?.unbind(),
            scan: decoder.getattr("scan_once")?.unbind(),
        })
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        Json {
            make: self.make.as_ref().map(|m| m.clone_ref(py)),
            default: self.default.clone_ref(py),
            basestring: self.basestring.clone_ref(py),
            encode: self.encode.clone_ref(py),
            decode: self.decode.clone_ref(py),
            scan: self.scan.clone_ref(py),
        }
    }

    /// `JSONEncoder.encode(obj)` as UTF-8, without its two Python frames:
    /// the C encoder it builds on every call, built here with the same
    /// arguments (a new markers dict per call, as it makes one: the
    /// circular-reference check stays, and no two calls share state).
    pub fn encode<'py>(
        &self,
        py: Python<'py>,
        obj: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        // Plain values are written in Rust, byte for byte what the lines
        // below write; any other value (or error) is the module's.
        if let Some(bytes) = crate::json_fast::encode(obj) {
            return Ok(bytes);
        }
        let text = match &self.make {
            Some(make) => {
                let args = (
                    PyDict::new(py),
                    self.default.bind(py),
                    self.basestring.bind(py),
                    py.None(),
                    ":",
                    ",",
                    false,
                    false,
                    false,
                );
                let chunks = make.bind(py).call1(args)?.call1((obj, 0))?;
                join(py, &chunks)?
            }
            None => self.encode.bind(py).call1((obj,))?,
        };
        let text = text.cast::<PyString>()?;
        // Lone surrogates have no UTF-8: an encode error, at the call.
        crate::codec::new_bytes(py, text.to_str()?.as_bytes())
    }

    /// `JSONDecoder.decode(text)`: the scanner alone when the text is one
    /// value and nothing else (what this store writes); anything else
    /// (white space around it, trailing data, an error) goes through
    /// `decode` itself, so its result and errors are the module's own.
    pub fn decode<'py>(&self, py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
        let text = crate::codec::new_str(py, text)?;
        if let Ok(found) = self.scan.bind(py).call1((&text, 0)) {
            if let Ok((obj, end)) = found.extract::<(Bound<'py, PyAny>, usize)>() {
                if end == text.len()? {
                    return Ok(obj);
                }
            }
        }
        self.decode.bind(py).call1((text,))
    }
}

/// `"".join(chunks)`, skipping the join when the encoder made one piece.
fn join<'py>(py: Python<'py>, chunks: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let single = if let Ok(t) = chunks.cast::<PyTuple>() {
        (t.len() == 1).then(|| t.get_item(0)).transpose()?
    } else if let Ok(l) = chunks.cast::<PyList>() {
        (l.len() == 1).then(|| l.get_item(0)).transpose()?
    } else {
        None
    };
    match single {
        Some(s) if s.is_exact_instance_of::<PyString>() => Ok(s),
        _ => PyString::new(py, "").call_method1("join", (chunks,)),
    }
}

/// Idle `Packer`s kept per store: one per thread that packs at once.
const IDLE_PACKERS: usize = 4;
/// A packer's buffer keeps the size of the largest value it packed: one
/// that packed more than this is dropped rather than kept idle.
const KEEP_BELOW: usize = 1 << 20;

/// The msgpack serializer: `msgpack.packb` and `unpackb` (any map key).
pub struct Msgpack {
    /// `msgpack.Packer`; `packb(obj)` is `Packer().pack(obj)`, and a new
    /// Packer allocates its buffer, so idle ones are kept for reuse.
    packer: Py<PyAny>,
    /// Bound `pack` methods of Packers no call is using. A Packer is not
    /// safe to share, so each call takes one out (or makes one) and puts
    /// it back: two threads, or a value whose `items()` writes to the
    /// store, never pack into one buffer.
    idle: Mutex<Vec<Py<PyAny>>>,
    unpack: Py<PyAny>,
}

impl Msgpack {
    pub fn new(msgpack: &Bound<'_, PyModule>) -> PyResult<Self> {
        let py = msgpack.py();
        let kwargs = PyDict::new(py);
        // A dict with int keys packs, so it must unpack too.
        kwargs.set_item("strict_map_key", false)?;
        kwargs.set_item("raw", false)?;
        let unpack = py
            .import("functools")?
            .getattr("partial")?
            .call((msgpack.getattr("unpackb")?,), Some(&kwargs))?;
        Ok(Msgpack {
            packer: msgpack.getattr("Packer")?.unbind(),
            idle: Mutex::new(Vec::new()),
            unpack: unpack.unbind(),
        })
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        Msgpack {
            packer: self.packer.clone_ref(py),
            idle: Mutex::new(Vec::new()),
            unpack: self.unpack.clone_ref(py),
        }
    }

    /// `msgpack.packb(obj)`: the same bytes and errors (a Packer empties
    /// its buffer when a pack fails, so it can be reused after one).
    pub fn encode<'py>(
        &self,
        py: Python<'py>,
        obj: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let pack = match taken {
            Some(pack) => pack,
            None => self.packer.bind(py).call0()?.getattr("pack")?.unbind(),
        };
        let out = pack.bind(py).call1((obj,));
        let small = out
            .as_ref()
            .map(|o| o.len().unwrap_or(0) < KEEP_BELOW)
            .unwrap_or(true);
        if small {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_PACKERS {
                idle.push(pack);
            }
        }
        out
    }

    pub fn decode<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        self.unpack
            .bind(py)
            .call1((crate::codec::new_bytes(py, data)?,))
    }
}
