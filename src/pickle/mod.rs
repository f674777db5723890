//! The native pickle codec: writes and reads the pickle format itself for the
//! plain data types, byte for byte as CPython's pickler does, and says when a
//! value must go to CPython's `pickle` instead.
//!
//! [`dumps`] and [`loads`] are what the store calls; `Ok(None)` from either
//! means "not handled here, use CPython's pickle for this value".

mod build;
mod decode;
mod encode;
mod pyapi;
pub mod safe;

use std::ffi::CStr;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyTuple};

pub(crate) static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
pub(crate) static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// CPython's `pickle.<name>`, looked up once into `cell`: the fallback for
/// what the native codec does not handle.
pub(crate) fn pickle_fn<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &CStr,
) -> PyResult<&'py Bound<'py, PyAny>> {
    Ok(cell
        .get_or_try_init(py, || pickle_attr(py, name).map(Bound::unbind))?
        .bind(py))
}

/// `pickle.<name>`, looked up at first use (so that a program may replace
/// `pickle.loads` before it reads).
fn pickle_attr<'py>(py: Python<'py>, name: &CStr) -> PyResult<Bound<'py, PyAny>> {
    crate::codec::import_attr(py, c"pickle", name)
}

/// The opcodes this codec writes or reads (names as in `pickletools`).
pub(crate) mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
    // Read only by the safe decoder's opcode walk; the native decoder
    // hands streams holding them to CPython.
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const LONG: u8 = b'L';
    pub const PERSID: u8 = b'P';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const GET: u8 = b'g';
    pub const INST: u8 = b'i';
    pub const OBJ: u8 = b'o';
    pub const PUT: u8 = b'p';
    pub const NEWOBJ: u8 = 0x81;
    pub const EXT1: u8 = 0x82;
    pub const EXT2: u8 = 0x83;
    pub const EXT4: u8 = 0x84;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
}

/// The highest protocol this codec (and CPython's pickle) writes and reads.
pub(crate) const HIGHEST_PROTOCOL: u8 = 5;

/// `pickle.dumps(obj, protocol)` written natively: `Ok(None)` when the value
/// (or the protocol) is one this codec leaves to CPython's pickler.
pub fn dumps<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    protocol: i32,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    encode::dumps(py, obj, protocol)
}

/// `pickle.loads(data)` read natively: `Ok(None)` when the stream holds
/// anything this codec leaves to CPython's unpickler. A stream that is
/// malformed in a way on which CPython would crash or allocate what the
/// stream merely claims raises `pickle.UnpicklingError` here instead.
pub fn loads<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Option<Bound<'py, PyAny>>> {
    build::loads(py, data)
}

static UNPICKLING_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `pickle.UnpicklingError(msg)`, the error CPython's unpickler raises on a
/// malformed stream.
pub(crate) fn unpickling_error(py: Python<'_>, msg: &str) -> PyErr {
    let ty = UNPICKLING_ERROR.get_or_try_init(py, || {
        pickle_attr(py, c"UnpicklingError").map(Bound::unbind)
    });
    match ty.and_then(|ty| ty.bind(py).call1((msg,))) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// `_native._codec_dumps(obj, protocol)`: the native encoder alone, `None`
/// when it would hand the value to CPython's pickler (for tests and the
/// benchmark).
#[pyfunction]
fn _codec_dumps<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    protocol: i32,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    dumps(py, obj, protocol)
}

/// `_native._codec_loads(data)`: the native decoder alone, `(True, value)`,
/// or `(False, None)` when it would hand the stream to CPython's unpickler
/// (for tests and the benchmark).
#[pyfunction]
fn _codec_loads<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    let buffer = pyo3::buffer::PyBuffer::<u8>::get(data)?;
    if !buffer.is_c_contiguous() {
        return Err(crate::errors::StoreError::NotContiguous.into());
    }
    // SAFETY: the buffer is C-contiguous, of `len_bytes()` bytes, and stays
    // exported (so alive and unmoved) until `buffer` drops at the end of this
    // function; nothing here writes to it.
    let bytes =
        unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) };
    let out = match loads(py, bytes)? {
        Some(value) => PyTuple::new(py, [true.into_pyobject(py)?.to_owned().into_any(), value])?,
        None => PyTuple::new(
            py,
            [
                false.into_pyobject(py)?.to_owned().into_any(),
                py.None().into_bound(py),
            ],
        )?,
    };
    Ok(out)
}

/// `_native._dumps(obj, protocol)`: what the store writes for a value, the
/// native encoder or else `pickle.dumps` (for the benchmark's codec rows).
#[pyfunction]
fn _dumps<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    protocol: i32,
) -> PyResult<Bound<'py, PyAny>> {
    match dumps(py, obj, protocol)? {
        Some(out) => Ok(out.into_any()),
        None => pickle_fn(py, &DUMPS, c"dumps")?.call1((obj, protocol)),
    }
}

/// `_native._loads(data)`: what the store reads from a pickle, the native
/// decoder or else `pickle.loads` (for the benchmark's codec rows).
#[pyfunction]
fn _loads<'py>(py: Python<'py>, data: &Bound<'py, PyBytes>) -> PyResult<Bound<'py, PyAny>> {
    match loads(py, data.as_bytes())? {
        Some(value) => Ok(value),
        None => pickle_fn(py, &LOADS, c"loads")?.call1((data,)),
    }
}

/// Add the codec's private hooks (tests, benchmark) to the native module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    pyapi::init(m.py())?;
    m.add_function(wrap_pyfunction!(_codec_dumps, m)?)?;
    m.add_function(wrap_pyfunction!(_codec_loads, m)?)?;
    m.add_function(wrap_pyfunction!(_dumps, m)?)?;
    m.add_function(wrap_pyfunction!(_loads, m)?)?;
    safe::register(m)?;
    Ok(())
}

/// xorshift64*: a fixed-seed generator for the codec's fuzz tests.
#[cfg(test)]
pub(crate) mod test_rng {
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }
}
