//! NumPy arrays in NumPy's own `.npy` format: the header written and read
//! here, the copies into and out of arrays, and `detect_and_load`, by which a
//! `.npy` value read through any path comes back as an array.
//!
//! numpy is reached through its Python API (`numpy.empty`, `numpy.dtype`,
//! `numpy.lib.format`) and the array interface, never linked against: the
//! extension imports without numpy, and only these calls need it.

use std::borrow::Cow;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyModule, PyString, PyTuple};

use crate::errors::StoreError;

/// The first bytes of every `.npy` value. No pickle starts with them: 0x93
/// is STACK_GLOBAL, which needs two items on a stack that is empty at the
/// start, and every pickle of protocol 2 or later starts with PROTO (0x80).
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// The header (magic included) is padded to a multiple of this.
const ALIGN: usize = 64;
/// Spare spaces numpy leaves after the header's text, so that a file's
/// growing axis can be rewritten in place; written the same here.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;
/// Copies of at least this many bytes run with the GIL released.
const DETACH_BYTES: usize = 1 << 20;

static NUMPY: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static FORMAT: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static NDARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The `numpy` module, or the ImportError that says how to install it.
pub fn numpy(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    let m = NUMPY.get_or_try_init(py, || -> PyResult<_> {
        py.import("numpy").map(Bound::unbind).map_err(|cause| {
            let err = StoreError::NumpyMissing.into_pyerr();
            err.set_cause(py, Some(cause));
            err
        })
    })?;
    Ok(m.bind(py))
}

fn format_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    numpy(py)?;
    let m = FORMAT.get_or_try_init(py, || -> PyResult<_> {
        Ok(py.import("numpy.lib.format")?.unbind())
    })?;
    Ok(m.bind(py))
}

/// The start of numpy's `PyArrayObject`: the object header, then the
/// address of the data (the same in numpy 1.x and 2.x).
#[repr(C)]
struct ArrayHead {
    ob_base: pyo3::ffi::PyObject,
    data: *mut u8,
}

/// The address of an ndarray's first byte: read from the array object
/// itself when it is exactly a `numpy.ndarray` (the arrays made here), else
/// through `ndarray`'s own `__array_interface__`, so that a subclass cannot
/// answer for it. The first way costs nothing; the second a few
/// microseconds, more than the rest of a small array's read.
fn data_ptr(np: &Bound<'_, PyModule>, arr: &Bound<'_, PyAny>) -> PyResult<*mut u8> {
    let ndarray = NDARRAY.get_or_try_init(np.py(), || -> PyResult<_> {
        Ok(np.getattr("ndarray")?.unbind())
    })?;
    if arr.get_type().is(ndarray.bind(np.py())) {
        // SAFETY: an object whose type is exactly numpy.ndarray is a
        // PyArrayObject, whose layout starts as `ArrayHead`; `arr` is alive.
        return Ok(unsafe { (*arr.as_ptr().cast::<ArrayHead>()).data });
    }
    let addr: usize = nd_attr(np, arr, "__array_interface__")?
        .get_item("data")?
        .get_item(0)?
        .extract()?;
    Ok(addr as *mut u8)
}

/// `ndarray.<name>` of `arr`, by the base class's descriptor.
fn nd_attr<'py>(
    np: &Bound<'py, PyModule>,
    arr: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    np.getattr("ndarray")?
        .getattr(name)?
        .call_method1("__get__", (arr,))
}

fn shape_of(np: &Bound<'_, PyModule>, arr: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    nd_attr(np, arr, "shape")?.extract()
}

/// A shape as Python writes the tuple: `()`, `(3,)`, `(2, 3)`.
fn shape_repr(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// The `.npy` bytes of `obj` (anything `numpy.asarray` takes), header and
/// data in one `bytes`, as `numpy.save` writes them: the oldest version
/// that can hold the header, Fortran order kept when the array is Fortran-
/// and not C-contiguous, any other layout written in C order.
pub fn encode<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    shown_key: impl FnOnce() -> String,
) -> PyResult<Bound<'py, PyBytes>> {
    let np = numpy(py)?;
    let mut arr = np.call_method1("asarray", (obj,))?;
    let dtype = arr.getattr("dtype")?;
    if dtype.getattr("hasobject")?.is_truthy()? {
        return Err(StoreError::ArrayHoldsObjects {
            key: shown_key(),
            dtype: dtype.str()?.to_string(),
        }
        .into());
    }
    let flags = arr.getattr("flags")?;
    let c = flags.getattr("c_contiguous")?.is_truthy()?;
    let f = flags.getattr("f_contiguous")?.is_truthy()?;
    let fortran = f && !c;
    if !c && !f {
        arr = np.call_method1("ascontiguousarray", (&arr,))?;
    }
    let shape = shape_of(np, &arr)?;
    let descr = format_module(py)?.call_method1("dtype_to_descr", (&dtype,))?;
    let mut text = format!(
        "{{'descr': {}, 'fortran_order': {}, 'shape': {}, }}",
        descr.repr()?,
        if fortran { "True" } else { "False" },
        shape_repr(&shape)
    );
    let growing = if fortran { shape.last() } else { shape.first() };
    if let Some(n) = growing {
        let pad = GROWTH_AXIS_MAX_DIGITS.saturating_sub(n.to_string().len());
        text.extend(std::iter::repeat_n(' ', pad));
    }
    let header = wrap_header(&text);
    let nbytes: usize = arr.getattr("nbytes")?.extract()?;
    let src = data_ptr(np, &arr)?;
    crate::codec::new_bytes_with(py, header.len() + nbytes, |buf| {
        buf[..header.len()].copy_from_slice(&header);
        if nbytes > 0 {
            // SAFETY: `arr` is a contiguous array (checked above, or made
            // by ascontiguousarray) alive for this call, whose `nbytes`
            // bytes start at `src`; `buf` has room for them after the
            // header, and the two do not overlap (`buf` is new).
            unsafe { std::ptr::copy_nonoverlapping(src, buf[header.len()..].as_mut_ptr(), nbytes) };
        }
        Ok(())
    })
}

/// Magic, version, length and padding around the header's text, choosing
/// the version as numpy does: 1.0 (latin-1, 16-bit length) if it fits, else
/// 2.0 (32-bit length), and 3.0 (UTF-8) when the text is not latin-1.
fn wrap_header(text: &str) -> Vec<u8> {
    let latin1: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(c).ok()).collect();
    let (major, body) = match latin1 {
        Some(bytes) => (1u8, bytes),
        None => (3u8, text.as_bytes().to_vec()),
    };
    let total = |len_size: usize| {
        let hlen = body.len() + 1;
        let pad = ALIGN - (MAGIC.len() + 2 + len_size + hlen) % ALIGN;
        (hlen + pad, pad)
    };
    let (major, len_size) = match major {
        1 if total(2).0 <= u16::MAX as usize => (1u8, 2),
        1 => (2, 4),
        _ => (3, 4),
    };
    let (hlen, pad) = total(len_size);
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + len_size + hlen);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[major, 0]);
    if len_size == 2 {
        out.extend_from_slice(&(hlen as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(hlen as u32).to_le_bytes());
    }
    out.extend_from_slice(&body);
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
}

/// What a `.npy` header says.
pub struct Header<'py> {
    /// Bytes before the data (magic, version, length and text).
    pub data_start: usize,
    pub dtype: Bound<'py, PyAny>,
    pub shape: Vec<usize>,
    pub fortran: bool,
    pub itemsize: usize,
    /// Bytes of data the header promises.
    pub nbytes: usize,
}

fn bad(why: impl Into<String>) -> PyErr {
    crate::errors::StoreError::BadNpy { why: why.into() }.into()
}

/// Read the header of the `.npy` bytes `data` and check that exactly the
/// data it promises follows. A dtype that holds Python objects is refused:
/// its data would be pointers.
pub fn parse_header<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Header<'py>> {
    let np = numpy(py)?;
    if !data.starts_with(MAGIC) || data.len() < MAGIC.len() + 4 {
        return Err(bad("no .npy header"));
    }
    let major = data[MAGIC.len()];
    let at = MAGIC.len() + 2;
    let (hlen, text_start) = match major {
        1 => (
            u16::from_le_bytes([data[at], data[at + 1]]) as usize,
            at + 2,
        ),
        2 | 3 if data.len() >= at + 4 => (
            u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize,
            at + 4,
        ),
        _ => return Err(bad(format!("unknown version {major}"))),
    };
    let data_start = text_start
        .checked_add(hlen)
        .filter(|&end| end <= data.len())
        .ok_or_else(|| bad("the header is cut short"))?;
    let raw = &data[text_start..data_start];
    let text: String = if major == 3 {
        std::str::from_utf8(raw)
            .map_err(|_| bad("the header is not UTF-8"))?
            .to_owned()
    } else {
        raw.iter().map(|&b| char::from(b)).collect()
    };
    let (descr, fortran, shape) = match quick_header(&text) {
        Some((descr, fortran, shape)) => (PyString::new(py, descr).into_any(), fortran, shape),
        None => slow_header(py, &text)?,
    };
    let dtype = if descr.is_instance_of::<PyString>() {
        np.call_method1("dtype", (&descr,))?
    } else {
        format_module(py)?.call_method1("descr_to_dtype", (&descr,))?
    };
    if dtype.getattr("hasobject")?.is_truthy()? {
        return Err(bad(format!(
            "its dtype {} holds Python objects",
            dtype.str()?
        )));
    }
    let itemsize: usize = dtype.getattr("itemsize")?.extract()?;
    let nbytes = shape
        .iter()
        .try_fold(itemsize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad("its shape is too large"))?;
    if data.len() - data_start != nbytes {
        return Err(bad(format!(
            "{} bytes of data where its header says {nbytes}",
            data.len() - data_start
        )));
    }
    Ok(Header {
        data_start,
        dtype,
        shape,
        fortran,
        itemsize,
        nbytes,
    })
}

/// The header text as `numpy.save` and `encode` write it, read without
/// Python: a plain descr string, the order and a shape of integers.
fn quick_header(text: &str) -> Option<(&str, bool, Vec<usize>)> {
    let rest = text.strip_prefix("{'descr': '")?;
    let end = rest.find(['\'', '\\'])?;
    let (descr, rest) = rest.split_at(end);
    let rest = rest.strip_prefix("', 'fortran_order': ")?;
    let (fortran, rest) = if let Some(r) = rest.strip_prefix("True") {
        (true, r)
    } else {
        (false, rest.strip_prefix("False")?)
    };
    let rest = rest.strip_prefix(", 'shape': (")?;
    let end = rest.find(')')?;
    let (dims, rest) = rest.split_at(end);
    if !rest
        .strip_prefix("), }")?
        .trim_end_matches([' ', '\n'])
        .is_empty()
    {
        return None;
    }
    let mut shape = Vec::new();
    for d in dims.split(',').map(str::trim) {
        if d.is_empty() {
            continue;
        }
        shape.push(d.parse().ok()?);
    }
    // `(3)` is not a tuple; `(3,)` is.
    if shape.len() == 1 && !dims.contains(',') {
        return None;
    }
    Some((descr, fortran, shape))
}

/// Any other header, read as numpy reads it: a Python literal.
fn slow_header<'py>(
    py: Python<'py>,
    text: &str,
) -> PyResult<(Bound<'py, PyAny>, bool, Vec<usize>)> {
    let d = py
        .import("ast")?
        .call_method1("literal_eval", (text,))
        .map_err(|e| bad(format!("the header does not read: {e}")))?;
    let d = d
        .cast_into::<PyDict>()
        .map_err(|_| bad("the header is not a dict"))?;
    if d.len() != 3 {
        return Err(bad(
            "the header has keys other than descr, fortran_order, shape",
        ));
    }
    let get = |name: &str| -> PyResult<Bound<'py, PyAny>> {
        d.get_item(name)?
            .ok_or_else(|| bad(format!("the header has no {name}")))
    };
    let descr = get("descr")?;
    let fortran = get("fortran_order")?
        .extract::<bool>()
        .map_err(|_| bad("fortran_order is not a bool"))?;
    let shape_obj = get("shape")?;
    if !shape_obj.is_instance_of::<PyTuple>() {
        return Err(bad("shape is not a tuple"));
    }
    let shape: Vec<usize> = shape_obj
        .extract()
        .map_err(|_| bad("shape is not a tuple of integers >= 0"))?;
    Ok((descr, fortran, shape))
}

/// A new array (owning its memory, writable) of the header's dtype, shape
/// and order, and the address of its first byte.
fn new_array<'py>(
    np: &Bound<'py, PyModule>,
    dtype: &Bound<'py, PyAny>,
    shape: &[usize],
    fortran: bool,
) -> PyResult<(Bound<'py, PyAny>, *mut u8)> {
    let kwargs = PyDict::new(np.py());
    kwargs.set_item("dtype", dtype)?;
    kwargs.set_item("order", if fortran { "F" } else { "C" })?;
    let arr = np.call_method("empty", (PyTuple::new(np.py(), shape)?,), Some(&kwargs))?;
    let ptr = data_ptr(np, &arr)?;
    Ok((arr, ptr))
}

/// A destination address that may cross into a closure run without the GIL.
struct Dest(*mut u8);
// SAFETY: only ever written through by the one thread that made it, while
// the array it points into is kept alive by that thread's call.
unsafe impl Send for Dest {}

/// Copy, releasing the GIL when the copy is large.
fn copy_out(py: Python<'_>, total: usize, copy: impl FnOnce() + Send) {
    if total >= DETACH_BYTES {
        py.detach(copy);
    } else {
        copy();
    }
}

/// The array that the `.npy` bytes `data` hold, in a new array.
pub fn load<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let h = parse_header(py, data)?;
    let np = numpy(py)?;
    let (arr, ptr) = new_array(np, &h.dtype, &h.shape, h.fortran)?;
    let src = &data[h.data_start..];
    let dst = Dest(ptr);
    // Spine rule 3: the bytes are copied into the new array before the
    // caller's read ends; the array points nowhere into LMDB's memory.
    copy_out(py, h.nbytes, move || {
        let dst = dst;
        // SAFETY: the new array has exactly `nbytes` bytes in the header's
        // order from `dst.0` (made above, alive in `arr`, not yet seen by
        // any other code), and `src` holds `nbytes` bytes in that order
        // (checked by parse_header); making its fresh pages resident first
        // writes nothing.
        unsafe { engine::prefault::copy_to_fresh(src, dst.0) };
    });
    Ok(arr)
}

/// The hook of the value decoder: `Some(array)` when the value is in `.npy`
/// format (whatever the store's serializer), `None` otherwise.
pub fn detect_and_load<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Option<Bound<'py, PyAny>>> {
    if !data.starts_with(MAGIC) {
        return Ok(None);
    }
    load(py, data).map(Some)
}

/// The caller's `out` for `get_arrays`, checked before the read: an
/// ndarray, C-contiguous and writable; its dtype and shape are compared
/// with the values once they are read.
pub struct Out<'py> {
    pub arr: Bound<'py, PyAny>,
    dtype: Bound<'py, PyAny>,
    shape: Vec<usize>,
    ptr: *mut u8,
}

impl<'py> Out<'py> {
    pub fn check(py: Python<'py>, out: Bound<'py, PyAny>) -> PyResult<Self> {
        let np = numpy(py)?;
        let bad = |why: String, type_error: bool| StoreError::BadOut { why, type_error };
        if !out.is_instance(&np.getattr("ndarray")?)? {
            let t = out.get_type().name()?;
            return Err(bad(format!("must be a numpy.ndarray, not {t}"), true).into());
        }
        let flags = nd_attr(np, &out, "flags")?;
        if !flags.getattr("c_contiguous")?.is_truthy()? {
            return Err(bad("must be C-contiguous".into(), false).into());
        }
        if !flags.getattr("writeable")?.is_truthy()? {
            return Err(bad("must be writable".into(), false).into());
        }
        Ok(Out {
            dtype: nd_attr(np, &out, "dtype")?,
            shape: shape_of(np, &out)?,
            ptr: data_ptr(np, &out)?,
            arr: out,
        })
    }
}

/// `get_arrays`: the arrays of `values` (the stored bytes of `keys`, in
/// the caller's order) in one `(n, *shape)` array, `out` or a new one.
/// `missing(i)` is the error for key `i` when it has no value.
pub fn fill<'py>(
    py: Python<'py>,
    keys: &[Cow<'_, [u8]>],
    values: &[Option<&[u8]>],
    out: Option<Out<'py>>,
    missing: impl Fn(usize) -> PyErr,
) -> PyResult<Bound<'py, PyAny>> {
    let np = numpy(py)?;
    let mut data: Vec<&[u8]> = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => data.push(v),
            None => return Err(missing(i)),
        }
    }
    let shown = |i: usize| crate::errors::display_bytes(py, &keys[i]);
    let header = |i: usize| -> PyResult<Header<'py>> {
        if !data[i].starts_with(MAGIC) {
            return Err(StoreError::NotAnArray { key: shown(i) }.into());
        }
        parse_header(py, data[i]).map_err(|e| crate::errors::unpickle_error(py, &keys[i], "DB", e))
    };
    let Some(&first_data) = data.first() else {
        return match out {
            Some(out) => Ok(out.arr),
            None => Err(StoreError::BadOut {
                why: "is needed when no keys are given (it says the dtype and shape)".into(),
                type_error: false,
            }
            .into()),
        };
    };
    let first = header(0)?;
    let first_raw = &first_data[..first.data_start];
    // Where each value's data starts, and whether it is in Fortran order.
    let mut layout: Vec<(usize, bool)> = Vec::with_capacity(data.len());
    layout.push((first.data_start, first.fortran));
    for (i, v) in data.iter().enumerate().skip(1) {
        // The same header bytes say the same array: no need to read them.
        if v.len() == first_data.len() && v.starts_with(first_raw) {
            layout.push((first.data_start, first.fortran));
            continue;
        }
        let h = header(i)?;
        if h.shape != first.shape || !h.dtype.eq(&first.dtype)? {
            return Err(StoreError::ArrayMismatch {
                key: shown(i),
                why: format!(
                    "holds a {} array of shape {}, where key {} holds a {} array of shape {}",
                    h.dtype.str()?,
                    shape_repr(&h.shape),
                    shown(0),
                    first.dtype.str()?,
                    shape_repr(&first.shape)
                ),
            }
            .into());
        }
        layout.push((h.data_start, h.fortran));
    }
    let mut full = Vec::with_capacity(first.shape.len() + 1);
    full.push(data.len());
    full.extend_from_slice(&first.shape);
    let (arr, ptr) = match out {
        Some(out) => {
            if out.shape != full || !out.dtype.eq(&first.dtype)? {
                return Err(StoreError::BadOut {
                    why: format!(
                        "is a {} array of shape {}; these keys need a {} array of shape {}",
                        out.dtype.str()?,
                        shape_repr(&out.shape),
                        first.dtype.str()?,
                        shape_repr(&full)
                    ),
                    type_error: false,
                }
                .into());
            }
            (out.arr, out.ptr)
        }
        None => new_array(np, &first.dtype, &full, false)?,
    };
    let each = first.nbytes;
    let (shape, itemsize) = (first.shape, first.itemsize);
    let dst = Dest(ptr);
    // Spine rule 3: every value is copied out inside the read (the slices
    // never reach Python).
    copy_out(py, each * data.len(), move || {
        let dst = dst;
        // SAFETY: the `each * n` bytes from `dst.0` are the destination's
        // (see below), all of which the loop overwrites; making their fresh
        // pages resident first writes nothing.
        unsafe { engine::prefault::before_write(dst.0, each * data.len()) };
        for (i, (v, &(start, fortran))) in data.iter().zip(&layout).enumerate() {
            let src = &v[start..];
            // SAFETY: the destination is a C-contiguous array of shape
            // (n, *shape) of this dtype (made above, or `out` checked: its
            // shape, dtype, contiguity and writability), so its item `i`
            // is the `each` bytes at `i * each`; `arr` keeps it alive, and
            // an ndarray with references held cannot be resized.
            let item = unsafe { std::slice::from_raw_parts_mut(dst.0.add(i * each), each) };
            if fortran && shape.len() > 1 {
                fortran_to_c(src, item, &shape, itemsize);
            } else {
                item.copy_from_slice(src);
            }
        }
    });
    Ok(arr)
}

/// Copy an array stored in Fortran order into C order.
fn fortran_to_c(src: &[u8], dst: &mut [u8], shape: &[usize], itemsize: usize) {
    if dst.is_empty() || itemsize == 0 {
        return;
    }
    let nd = shape.len();
    // Byte strides of the source: the first axis varies fastest.
    let mut stride = vec![0usize; nd];
    let mut s = itemsize;
    for (k, &n) in shape.iter().enumerate() {
        stride[k] = s;
        s *= n;
    }
    let mut index = vec![0usize; nd];
    let mut at = 0usize;
    for chunk in dst.chunks_exact_mut(itemsize) {
        chunk.copy_from_slice(&src[at..at + itemsize]);
        // The next index in C order: the last axis varies fastest.
        for k in (0..nd).rev() {
            index[k] += 1;
            at += stride[k];
            if index[k] < shape[k] {
                break;
            }
            at -= stride[k] * shape[k];
            index[k] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_to_c_transposes_a_matrix() {
        // [[1, 2, 3], [4, 5, 6]] in Fortran order is 1 4 2 5 3 6.
        let src = [1u8, 4, 2, 5, 3, 6];
        let mut dst = [0u8; 6];
        fortran_to_c(&src, &mut dst, &[2, 3], 1);
        assert_eq!(dst, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn headers_pad_to_the_alignment() {
        let h = wrap_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }");
        assert_eq!(h.len() % ALIGN, 0);
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(*h.last().unwrap(), b'\n');
    }

    #[test]
    fn quick_header_reads_what_numpy_writes() {
        let text = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }       \n";
        assert_eq!(quick_header(text), Some(("<f4", true, vec![2, 3])));
        let zero_d = "{'descr': '|b1', 'fortran_order': False, 'shape': (), }\n";
        assert_eq!(quick_header(zero_d), Some(("|b1", false, vec![])));
        assert_eq!(quick_header("{'descr': [('a', '<i4')], }"), None);
    }
}
