//! The json serializer's own encoder: for a value made only of exact `dict`
//! (with `str` keys), `list`, `tuple`, `str`, `int`, `float`, `bool` and
//! `None`, the bytes `json`'s C encoder writes with the store's settings
//! (compact, UTF-8, strict), written without a call into the module.
//!
//! Anything else anywhere in the value, and anything the module would refuse
//! (NaN and the infinities, a lone surrogate, an `int` too long to print,
//! nesting that reaches the recursion limit, and so a cycle), makes
//! [`encode`] give up and leave the whole value to the module: its bytes and
//! its errors stay the module's own, because the module does all of it.
//!
//! The walk runs no Python code: it reads exact built-in types only, whose
//! reads call nothing, and it creates no object the garbage collector
//! tracks before it gives up (an error it meets ends the walk at once). So,
//! with the GIL held, nothing can change the value while it is read.

use std::cell::RefCell;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Containers nested deeper than this are left to the module, so the walk's
/// own stack stays small whatever the interpreter's recursion limit is.
const MAX_DEPTH: usize = 200;

/// The scratch buffer keeps the size of the largest value it held; one
/// that grew past this is freed after the value instead of kept.
const KEEP_BELOW: usize = 1 << 20;

/// What `JSONEncoder` says when it reaches the recursion limit, so the
/// interpreter's count is taken under the same name.
const WHERE: &CStr = c" while encoding a JSON object";

thread_local! {
    /// One buffer per thread, reused: a put does not allocate its output.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The walk stopped: the module encodes the value instead (and writes the
/// same bytes, or raises its own error).
struct Defer;

type Step = Result<(), Defer>;

/// The bytes the json serializer stores for `obj`, or None when the value
/// is to go through the `json` module (see the module's comment).
pub fn encode<'py>(obj: &Bound<'py, PyAny>) -> Option<Bound<'py, PyBytes>> {
    let py = obj.py();
    SCRATCH
        .try_with(|cell| {
            // Taken already only if this thread is inside a walk, which
            // calls no Python code that could come back here; the module
            // then encodes the value.
            let mut out = cell.try_borrow_mut().ok()?;
            out.clear();
            // SAFETY: `obj` is alive for 'py and the GIL is held; the walk
            // reads it as the invariant of `Obj` requires (no Python code
            // runs while it reads; see the module's comment).
            let root = unsafe { Obj::new(obj.as_ptr()) };
            let done = top(&mut out, root);
            // No memory for the bytes: None, and the C encoder, which
            // raises MemoryError, has the value.
            let bytes = done
                .ok()
                .and_then(|()| crate::codec::new_bytes(py, &out).ok());
            if out.capacity() > KEEP_BELOW {
                *out = Vec::new();
            }
            bytes
        })
        .ok()
        .flatten()
}

/// The whole value. The module is reached through a call that counts one
/// level of the interpreter's recursion limit (a C type's `tp_call`), then
/// one per list or dict: the walk counts the same levels, so a value too
/// deep for the module at this depth of the caller's stack is too deep here.
fn top(out: &mut Vec<u8>, obj: Obj<'_>) -> Step {
    let _level = Level::enter()?;
    value(out, obj, 0)
}

/// A borrowed object of the value being walked.
///
/// Made only by [`Obj::new`], whose caller promises the object and all it
/// reaches stay alive and unchanged for `'a` (GIL held, no Python code run).
#[derive(Clone, Copy)]
struct Obj<'a>(
    *mut ffi::PyObject,
    std::marker::PhantomData<&'a ffi::PyObject>,
);

impl Obj<'_> {
    /// # Safety
    /// `ptr` is a live object, the GIL is held for `'a`, and neither it nor
    /// anything reachable from it is freed or changed during `'a`.
    unsafe fn new(ptr: *mut ffi::PyObject) -> Self {
        Obj(ptr, std::marker::PhantomData)
    }
}

/// One level of the interpreter's recursion count, given back on drop.
struct Level;

impl Level {
    fn enter() -> Result<Level, Defer> {
        // SAFETY: the GIL is held (Obj's invariant, for every caller). On
        // failure CPython sets RecursionError and undoes its own count, so
        // no matching leave is owed; the error is dropped and the module
        // raises its own.
        unsafe {
            if ffi::Py_EnterRecursiveCall(WHERE.as_ptr()) != 0 {
                ffi::PyErr_Clear();
                return Err(Defer);
            }
        }
        Ok(Level)
    }
}

impl Drop for Level {
    fn drop(&mut self) {
        // SAFETY: pairs the successful enter that made this guard, on the
        // same thread, with the GIL held.
        unsafe { ffi::Py_LeaveRecursiveCall() }
    }
}

/// Drop the error a failed C-API call set, and give up: the module meets
/// the same case and raises its own error.
fn defer_error() -> Defer {
    // SAFETY: the GIL is held (Obj's invariant).
    unsafe { ffi::PyErr_Clear() };
    Defer
}

fn value(out: &mut Vec<u8>, obj: Obj<'_>, depth: usize) -> Step {
    let p = obj.0;
    // SAFETY: `p` is live and the GIL is held (Obj's invariant). Singletons
    // and types are compared by address, so a subclass never matches.
    unsafe {
        if p == ffi::Py_None() {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        if p == ffi::Py_True() {
            out.extend_from_slice(b"true");
            return Ok(());
        }
        if p == ffi::Py_False() {
            out.extend_from_slice(b"false");
            return Ok(());
        }
        let ty = ffi::Py_TYPE(p);
        if ty == &raw mut ffi::PyUnicode_Type {
            string(out, obj)
        } else if ty == &raw mut ffi::PyLong_Type {
            int(out, obj)
        } else if ty == &raw mut ffi::PyFloat_Type {
            float(out, ffi::PyFloat_AS_DOUBLE(p))
        } else if ty == &raw mut ffi::PyList_Type || ty == &raw mut ffi::PyTuple_Type {
            sequence(out, obj, depth)
        } else if ty == &raw mut ffi::PyDict_Type {
            dict(out, obj, depth)
        } else {
            Err(Defer)
        }
    }
}

/// A list or a tuple, as a JSON array.
fn sequence(out: &mut Vec<u8>, obj: Obj<'_>, depth: usize) -> Step {
    if depth >= MAX_DEPTH {
        return Err(Defer);
    }
    let _level = Level::enter()?;
    let p = obj.0;
    // SAFETY: `p` is an exact list or tuple (the caller checked), GIL held;
    // its size and items are read in place and nothing changes them while
    // the walk runs (Obj's invariant). Items are borrowed, non-null.
    unsafe {
        let list = ffi::PyList_CheckExact(p) != 0;
        let len = ffi::Py_SIZE(p);
        out.push(b'[');
        for i in 0..len {
            if i > 0 {
                out.push(b',');
            }
            let item = if list {
                ffi::PyList_GET_ITEM(p, i)
            } else {
                ffi::PyTuple_GET_ITEM(p, i)
            };
            value(out, Obj::new(item), depth + 1)?;
        }
    }
    out.push(b']');
    Ok(())
}

fn dict(out: &mut Vec<u8>, obj: Obj<'_>, depth: usize) -> Step {
    if depth >= MAX_DEPTH {
        return Err(Defer);
    }
    let _level = Level::enter()?;
    let p = obj.0;
    out.push(b'{');
    let mut pos: ffi::Py_ssize_t = 0;
    let mut key = std::ptr::null_mut();
    let mut item = std::ptr::null_mut();
    let mut first = true;
    // SAFETY: `p` is an exact dict (the caller checked), GIL held;
    // PyDict_Next hands out borrowed, non-null references that stay valid
    // while the dict is unchanged (Obj's invariant), in insertion order, the
    // order of `items()` the module walks.
    unsafe {
        while ffi::PyDict_Next(p, &mut pos, &mut key, &mut item) != 0 {
            if !first {
                out.push(b',');
            }
            first = false;
            // Other keys (int, float, bool, None, subclasses of str) are
            // turned into strings by the module's own rules: left to it.
            if ffi::Py_TYPE(key) != &raw mut ffi::PyUnicode_Type {
                return Err(Defer);
            }
            string(out, Obj::new(key))?;
            out.push(b':');
            value(out, Obj::new(item), depth + 1)?;
        }
    }
    out.push(b'}');
    Ok(())
}

/// `int.__repr__`: in Rust when it fits 64 bits, else by `int` itself.
fn int(out: &mut Vec<u8>, obj: Obj<'_>) -> Step {
    let p = obj.0;
    let mut overflow: c_int = 0;
    // SAFETY: `p` is an exact int (the caller checked), GIL held; for an
    // exact int this reports overflow rather than raising.
    let small = unsafe { ffi::PyLong_AsLongLongAndOverflow(p, &mut overflow) };
    if overflow == 0 {
        if small == -1 {
            // SAFETY: GIL held; checked in case a future CPython raises here.
            if unsafe { !ffi::PyErr_Occurred().is_null() } {
                return Err(defer_error());
            }
        }
        decimal(out, small);
        return Ok(());
    }
    // SAFETY: `p` is an exact int, GIL held. Its repr is the C function
    // the module calls (`int.__repr__`); it creates a `str` (not tracked by
    // the collector) or raises, for more digits than the interpreter's limit
    // (then the module raises that error). The `str` is ASCII, so its UTF-8
    // is its own data, read before the one reference is dropped.
    unsafe {
        let text = ffi::PyObject_Repr(p);
        if text.is_null() {
            return Err(defer_error());
        }
        let mut size: ffi::Py_ssize_t = 0;
        let data = ffi::PyUnicode_AsUTF8AndSize(text, &mut size);
        let done = if data.is_null() {
            Err(defer_error())
        } else {
            out.extend_from_slice(std::slice::from_raw_parts(data as *const u8, size as usize));
            Ok(())
        };
        ffi::Py_DECREF(text);
        done
    }
}

/// A 64-bit integer in decimal, as `int.__repr__` writes it.
fn decimal(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// `float.__repr__`, by the CPython function it calls: the same digits,
/// exponent style and `.0` by construction. NaN and the infinities are
/// refused by the module (allow_nan=False), with its message.
fn float(out: &mut Vec<u8>, x: f64) -> Step {
    if !x.is_finite() {
        return Err(Defer);
    }
    // SAFETY: GIL held. With these arguments (`float_repr`'s own) it returns
    // a NUL-terminated buffer from PyMem_Malloc, which is read, then freed
    // with PyMem_Free; or NULL with MemoryError set.
    unsafe {
        let text = ffi::PyOS_double_to_string(
            x,
            b'r' as c_char,
            0,
            ffi::Py_DTSF_ADD_DOT_0,
            std::ptr::null_mut(),
        );
        if text.is_null() {
            return Err(defer_error());
        }
        out.extend_from_slice(CStr::from_ptr(text).to_bytes());
        ffi::PyMem_Free(text.cast());
    }
    Ok(())
}

/// A `str` as a JSON string: `encode_basestring` (ensure_ascii=False)
/// escaping, then UTF-8. A lone surrogate has no UTF-8: the module's path
/// raises UnicodeEncodeError for it, so it is left to the module.
fn string(out: &mut Vec<u8>, obj: Obj<'_>) -> Step {
    let p = obj.0;
    // SAFETY: `p` is an exact str (the caller checked), GIL held.
    // PyUnicode_READY readies a legacy string before 3.12 (a no-op since);
    // then its code units are read in place, as its kind says, and the
    // string does not change while the walk runs (Obj's invariant).
    unsafe {
        if ffi::PyUnicode_READY(p) != 0 {
            return Err(defer_error());
        }
        let len = ffi::PyUnicode_GET_LENGTH(p) as usize;
        out.reserve(len + 2);
        out.push(b'"');
        match ffi::PyUnicode_KIND(p) {
            ffi::PyUnicode_1BYTE_KIND => latin1(
                out,
                std::slice::from_raw_parts(ffi::PyUnicode_1BYTE_DATA(p), len),
            ),
            ffi::PyUnicode_2BYTE_KIND => {
                let units = std::slice::from_raw_parts(ffi::PyUnicode_2BYTE_DATA(p), len);
                wide(out, units.iter().map(|&u| u32::from(u)))?
            }
            _ => wide(
                out,
                std::slice::from_raw_parts(ffi::PyUnicode_4BYTE_DATA(p), len)
                    .iter()
                    .copied(),
            )?,
        }
        out.push(b'"');
    }
    Ok(())
}

/// Written as they are: everything from a space up, but `"` and `\`.
#[inline]
fn plain(c: u32) -> bool {
    c >= 0x20 && c != u32::from(b'"') && c != u32::from(b'\\')
}

/// A one-byte-kind string (code points below 256): runs of plain ASCII are
/// copied whole.
fn latin1(out: &mut Vec<u8>, units: &[u8]) {
    let mut start = 0;
    for (i, &b) in units.iter().enumerate() {
        if b < 0x80 && plain(u32::from(b)) {
            continue;
        }
        out.extend_from_slice(&units[start..i]);
        start = i + 1;
        if b >= 0x80 {
            out.extend_from_slice(&[0xC0 | (b >> 6), 0x80 | (b & 0x3F)]);
        } else {
            escape(out, b);
        }
    }
    out.extend_from_slice(&units[start..]);
}

/// A two- or four-byte-kind string, code point by code point.
fn wide(out: &mut Vec<u8>, units: impl Iterator<Item = u32>) -> Step {
    for c in units {
        if c < 0x80 {
            if plain(c) {
                out.push(c as u8);
            } else {
                escape(out, c as u8);
            }
        } else {
            // A lone surrogate is no `char`: the module's UTF-8 step refuses it.
            let Some(ch) = char::from_u32(c) else {
                return Err(Defer);
            };
            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
        }
    }
    Ok(())
}

/// The escape `encode_basestring` writes for `"`, `\` or a control
/// character: the short forms where JSON has one, else `\u00xx` (lower case).
fn escape(out: &mut Vec<u8>, c: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match c {
        b'"' => b'"',
        b'\\' => b'\\',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x08 => b'b',
        0x0C => b'f',
        _ => {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xF)],
            ]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}
