//! The codec's raw C-API access, behind small typed wrappers: borrowed views
//! of the exact plain types for the encoder, owned new objects for the
//! decoder, each `unsafe` reason stated where the pointer is touched.

use std::marker::PhantomData;
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple};

extern "C" {
    // Public in every CPython the package supports (3.10 on), though
    // underscored: the documented way to grow a brand-new bytes object.
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> c_int;
}

/// A borrowed reference to an object of the graph the encoder walks.
///
/// Made only by [`Obj::new`], whose caller promises that the object and
/// everything reached through it stay alive and unchanged for `'a`: the
/// encoder runs no Python code and allocates no object the collector
/// tracks (so no `__del__` can run) while it walks.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Obj<'a>(NonNull<ffi::PyObject>, PhantomData<&'a ffi::PyObject>);

/// What an object is, by exact type (subclasses are `Other`), with the
/// parts the encoder reads.
pub enum View<'a> {
    None,
    Bool(bool),
    Int(Obj<'a>),
    Float(f64),
    Bytes(&'a [u8]),
    Str(Obj<'a>),
    Tuple(&'a [Obj<'a>]),
    List(&'a [Obj<'a>]),
    Dict(Obj<'a>),
    Set(Obj<'a>),
    FrozenSet(Obj<'a>),
    ByteArray(&'a [u8]),
    Other,
}

/// An `int`'s value: in 64 bits, or its two's-complement bytes (little
/// endian, possibly with redundant sign bytes).
pub enum IntValue {
    Small(i64),
    Big(Vec<u8>),
}

impl<'a> Obj<'a> {
    /// # Safety
    /// `ptr` is a live object, the GIL is held for `'a`, and neither the
    /// object nor anything reachable from it is freed or changed during `'a`.
    pub unsafe fn new(ptr: *mut ffi::PyObject) -> Self {
        // SAFETY: a live object's address is never null.
        Obj(unsafe { NonNull::new_unchecked(ptr) }, PhantomData)
    }

    pub fn ptr(self) -> *mut ffi::PyObject {
        self.0.as_ptr()
    }

    /// Referenced from more than one place: only such an object can be met
    /// twice in one graph, so only such objects need a memo lookup.
    pub fn shared(self) -> bool {
        // SAFETY: reading the count of a live object under the GIL.
        unsafe { ffi::Py_REFCNT(self.ptr()) > 1 }
    }

    /// The object's exact type and contents.
    pub fn view(self) -> View<'a> {
        let p = self.ptr();
        // SAFETY: `p` is live and the GIL is held (Obj's invariant). Each
        // arm reads the object as the type it was just checked to be,
        // exactly; the slices borrow storage that stays put for 'a because
        // nothing changes the graph during 'a (Obj's invariant). A tuple's
        // or list's item array holds non-null `*mut PyObject`s, and `Obj`
        // is a transparent non-null pointer, so the array reads as `[Obj]`.
        unsafe {
            if p == ffi::Py_None() {
                return View::None;
            }
            if p == ffi::Py_True() {
                return View::Bool(true);
            }
            if p == ffi::Py_False() {
                return View::Bool(false);
            }
            let ty = ffi::Py_TYPE(p);
            if ty == &raw mut ffi::PyLong_Type {
                View::Int(self)
            } else if ty == &raw mut ffi::PyFloat_Type {
                View::Float(ffi::PyFloat_AS_DOUBLE(p))
            } else if ty == &raw mut ffi::PyUnicode_Type {
                View::Str(self)
            } else if ty == &raw mut ffi::PyBytes_Type {
                let data = ffi::PyBytes_AS_STRING(p) as *const u8;
                View::Bytes(std::slice::from_raw_parts(data, ffi::Py_SIZE(p) as usize))
            } else if ty == &raw mut ffi::PyDict_Type {
                View::Dict(self)
            } else if ty == &raw mut ffi::PyList_Type {
                let list = p.cast::<ffi::PyListObject>();
                let len = ffi::Py_SIZE(p) as usize;
                if len == 0 {
                    View::List(&[])
                } else {
                    let items = (*list).ob_item as *const Obj<'a>;
                    View::List(std::slice::from_raw_parts(items, len))
                }
            } else if ty == &raw mut ffi::PyTuple_Type {
                let tuple = p.cast::<ffi::PyTupleObject>();
                let items = (*tuple).ob_item.as_ptr() as *const Obj<'a>;
                View::Tuple(std::slice::from_raw_parts(items, ffi::Py_SIZE(p) as usize))
            } else if ty == &raw mut ffi::PySet_Type {
                View::Set(self)
            } else if ty == &raw mut ffi::PyFrozenSet_Type {
                View::FrozenSet(self)
            } else if ty == &raw mut ffi::PyByteArray_Type {
                let len = ffi::PyByteArray_GET_SIZE(p) as usize;
                let data = ffi::PyByteArray_AS_STRING(p) as *const u8;
                View::ByteArray(if len == 0 {
                    &[]
                } else {
                    std::slice::from_raw_parts(data, len)
                })
            } else {
                View::Other
            }
        }
    }

    /// A `str`'s UTF-8 with lone surrogates passed through (as
    /// `encode("utf-8", "surrogatepass")`), borrowed from the string when it
    /// caches its UTF-8 form, else written into `scratch`. Allocates no
    /// Python object and raises nothing the collector could see.
    pub fn str_utf8<'s>(self, scratch: &'s mut Vec<u8>) -> Option<&'s [u8]>
    where
        'a: 's,
    {
        let p = self.ptr();
        // SAFETY: `p` is a live exact `str` (the caller got it from
        // `View::Str`) and the GIL is held. PyUnicode_READY is a no-op on
        // 3.12+ and readies a legacy string before its kind is read.
        // A one-byte-kind string has no surrogates, so AsUTF8AndSize cannot
        // fail on it except for memory (which then leaves an error we
        // clear; the caller falls back to CPython's pickle). Its UTF-8 lives
        // as long as the string. Wider kinds are read as their code units.
        unsafe {
            if ffi::PyUnicode_READY(p) != 0 {
                ffi::PyErr_Clear();
                return None;
            }
            let len = ffi::PyUnicode_GET_LENGTH(p) as usize;
            match ffi::PyUnicode_KIND(p) {
                ffi::PyUnicode_1BYTE_KIND => {
                    let mut size: ffi::Py_ssize_t = 0;
                    let data = ffi::PyUnicode_AsUTF8AndSize(p, &mut size);
                    if data.is_null() {
                        ffi::PyErr_Clear();
                        return None;
                    }
                    Some(std::slice::from_raw_parts(data as *const u8, size as usize))
                }
                ffi::PyUnicode_2BYTE_KIND => {
                    let units = std::slice::from_raw_parts(ffi::PyUnicode_2BYTE_DATA(p), len);
                    scratch.clear();
                    encode_code_points(units.iter().map(|&u| u as u32), scratch);
                    Some(scratch.as_slice())
                }
                _ => {
                    let units = std::slice::from_raw_parts(ffi::PyUnicode_4BYTE_DATA(p), len);
                    scratch.clear();
                    encode_code_points(units.iter().copied(), scratch);
                    Some(scratch.as_slice())
                }
            }
        }
    }

    /// An exact `int`'s value.
    pub fn int_value(self) -> Option<IntValue> {
        let p = self.ptr();
        let mut overflow: c_int = 0;
        // SAFETY: `p` is a live exact `int` (from `View::Int`), GIL held; for
        // an exact int this never raises, and it reports overflow instead.
        let small = unsafe { ffi::PyLong_AsLongLongAndOverflow(p, &mut overflow) };
        if overflow == 0 {
            return Some(IntValue::Small(small));
        }
        big_int_bytes(self).map(IntValue::Big)
    }

    /// `len()` of a dict, set or frozenset.
    pub fn container_len(self) -> usize {
        // SAFETY: `p` is a live dict, set or frozenset (from `View`), GIL held.
        unsafe {
            let p = self.ptr();
            if ffi::PyDict_CheckExact(p) != 0 {
                ffi::PyDict_Size(p) as usize
            } else {
                ffi::PySet_Size(p) as usize
            }
        }
    }

    /// A dict's items in iteration order.
    pub fn dict_items(self) -> DictItems<'a> {
        DictItems { dict: self, pos: 0 }
    }

    /// A set's or frozenset's items in iteration order (the order of its
    /// hash table, as `iter()` gives them).
    pub fn set_items(self) -> SetItems<'a> {
        SetItems { set: self, pos: 0 }
    }
}

/// UTF-8 of code points, surrogates included (the "surrogatepass" form).
fn encode_code_points(points: impl Iterator<Item = u32>, out: &mut Vec<u8>) {
    for c in points {
        if c < 0x80 {
            out.push(c as u8);
        } else if c < 0x800 {
            out.extend_from_slice(&[0xC0 | (c >> 6) as u8, 0x80 | (c & 0x3F) as u8]);
        } else if c < 0x10000 {
            out.extend_from_slice(&[
                0xE0 | (c >> 12) as u8,
                0x80 | ((c >> 6) & 0x3F) as u8,
                0x80 | (c & 0x3F) as u8,
            ]);
        } else {
            out.extend_from_slice(&[
                0xF0 | (c >> 18) as u8,
                0x80 | ((c >> 12) & 0x3F) as u8,
                0x80 | ((c >> 6) & 0x3F) as u8,
                0x80 | (c & 0x3F) as u8,
            ]);
        }
    }
}

pub struct DictItems<'a> {
    dict: Obj<'a>,
    pos: ffi::Py_ssize_t,
}

impl<'a> Iterator for DictItems<'a> {
    type Item = (Obj<'a>, Obj<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        let mut key = std::ptr::null_mut();
        let mut value = std::ptr::null_mut();
        // SAFETY: `dict` is a live exact dict, GIL held; PyDict_Next hands
        // out borrowed, non-null references that live as long as the dict
        // is unchanged, which Obj's invariant guarantees for 'a.
        unsafe {
            if ffi::PyDict_Next(self.dict.ptr(), &mut self.pos, &mut key, &mut value) == 0 {
                return None;
            }
            Some((Obj::new(key), Obj::new(value)))
        }
    }
}

pub struct SetItems<'a> {
    set: Obj<'a>,
    pos: usize,
}

impl<'a> Iterator for SetItems<'a> {
    type Item = Obj<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        // SAFETY: `set` is a live exact set or frozenset, GIL held, and its
        // table is unchanged for 'a (Obj's invariant). The table has
        // `mask + 1` entries; a free slot has a null key and a deleted one
        // has hash -1 (no live key hashes to -1), which is how the set's own
        // iterator skips them, so the order is the one `iter()` gives.
        unsafe {
            let set = self.set.ptr().cast::<ffi::PySetObject>();
            let mask = (*set).mask as usize;
            let table = (*set).table;
            while self.pos <= mask {
                let entry = &*table.add(self.pos);
                self.pos += 1;
                if !entry.key.is_null() && entry.hash != -1 {
                    return Some(Obj::new(entry.key));
                }
            }
            None
        }
    }
}

/// Names the encoder and decoder call methods by, made before any walk (a
/// tuple is an object the collector tracks, so it must not be made during
/// one).
struct Names {
    bit_length: Py<PyString>,
    to_bytes: Py<PyString>,
    from_bytes: Py<PyString>,
    little: Py<PyString>,
    signed_kw: Py<PyTuple>,
}

static NAMES: PyOnceLock<Names> = PyOnceLock::new();

/// Make the cached names; called when the module is set up.
pub fn init(py: Python<'_>) -> PyResult<()> {
    NAMES.get_or_try_init(py, || -> PyResult<_> {
        Ok(Names {
            bit_length: PyString::intern(py, "bit_length").unbind(),
            to_bytes: PyString::intern(py, "to_bytes").unbind(),
            from_bytes: PyString::intern(py, "from_bytes").unbind(),
            little: PyString::intern(py, "little").unbind(),
            signed_kw: PyTuple::new(py, [PyString::intern(py, "signed")])?.unbind(),
        })
    })?;
    Ok(())
}

fn names() -> Option<&'static Names> {
    // SAFETY: only reads the cell (the GIL is held by every caller, which
    // hold an `Obj` or a `Python` token).
    let py = unsafe { Python::assume_attached() };
    NAMES.get(py)
}

/// `int.to_bytes(n, "little", signed=True)` with `n` from `bit_length()`,
/// through vectorcall: C methods of an exact int, no object the collector
/// tracks is made.
fn big_int_bytes(obj: Obj<'_>) -> Option<Vec<u8>> {
    let names = names()?;
    // SAFETY: `obj` is a live exact int, GIL held. Each call gets a borrowed
    // argument array whose first slot is the receiver (nargsf = count of
    // positional arguments including it); results are new references that
    // are checked for null and released here.
    unsafe {
        let mut args = [obj.ptr()];
        let bits = ffi::PyObject_VectorcallMethod(
            names.bit_length.as_ptr(),
            args.as_mut_ptr(),
            1,
            std::ptr::null_mut(),
        );
        if bits.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        let nbits = ffi::PyLong_AsSsize_t(bits);
        ffi::Py_DECREF(bits);
        if nbits < 0 {
            ffi::PyErr_Clear();
            return None;
        }
        let nbytes = ffi::PyLong_FromSsize_t(nbits / 8 + 1);
        if nbytes.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        let mut args = [obj.ptr(), nbytes, names.little.as_ptr(), ffi::Py_True()];
        let bytes = ffi::PyObject_VectorcallMethod(
            names.to_bytes.as_ptr(),
            args.as_mut_ptr(),
            3,
            names.signed_kw.as_ptr(),
        );
        ffi::Py_DECREF(nbytes);
        if bytes.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        let data = ffi::PyBytes_AS_STRING(bytes) as *const u8;
        let out = std::slice::from_raw_parts(data, ffi::Py_SIZE(bytes) as usize).to_vec();
        ffi::Py_DECREF(bytes);
        Some(out)
    }
}

/// A strong reference the decoder owns; released on drop. The `'py`
/// lifetime ties it to a held GIL.
#[repr(transparent)]
pub struct Owned<'py>(NonNull<ffi::PyObject>, PhantomData<Python<'py>>);

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        // SAFETY: we own one reference, and the GIL is held for 'py.
        unsafe { ffi::Py_DECREF(self.0.as_ptr()) }
    }
}

impl<'py> Owned<'py> {
    /// Take a new reference from a C-API call; `None` (with the error
    /// cleared) when the call failed.
    fn from_result(_py: Python<'py>, ptr: *mut ffi::PyObject) -> Option<Self> {
        match NonNull::new(ptr) {
            Some(p) => Some(Owned(p, PhantomData)),
            None => {
                // SAFETY: GIL held (the token); a failed call left an error.
                unsafe { ffi::PyErr_Clear() };
                None
            }
        }
    }

    /// A new reference to a borrowed object.
    ///
    /// # Safety
    /// `ptr` is a live object.
    pub unsafe fn from_borrowed(_py: Python<'py>, ptr: *mut ffi::PyObject) -> Self {
        // SAFETY: live (the caller's promise), GIL held (the token).
        unsafe {
            ffi::Py_INCREF(ptr);
            Owned(NonNull::new_unchecked(ptr), PhantomData)
        }
    }

    pub fn ptr(&self) -> *mut ffi::PyObject {
        self.0.as_ptr()
    }

    /// Give up ownership (the reference now belongs to the caller).
    pub fn into_ptr(self) -> *mut ffi::PyObject {
        let p = self.ptr();
        std::mem::forget(self);
        p
    }

    pub fn share(&self) -> Self {
        // SAFETY: the object is live (we own a reference); GIL held for 'py.
        unsafe { ffi::Py_INCREF(self.ptr()) };
        Owned(self.0, PhantomData)
    }

    pub fn into_bound(self) -> Bound<'py, PyAny> {
        // SAFETY: we hand our owned reference to the Bound, GIL held.
        unsafe { Bound::from_owned_ptr(Python::assume_attached(), self.into_ptr()) }
    }

    fn has_type(&self, ty: *mut ffi::PyTypeObject) -> bool {
        // SAFETY: reading the type of a live object.
        unsafe { ffi::Py_TYPE(self.ptr()) == ty }
    }

    pub fn is_list(&self) -> bool {
        self.has_type(&raw mut ffi::PyList_Type)
    }

    pub fn is_dict(&self) -> bool {
        self.has_type(&raw mut ffi::PyDict_Type)
    }

    pub fn is_set(&self) -> bool {
        self.has_type(&raw mut ffi::PySet_Type)
    }

    // The constructors below wrap one C-API call each: GIL held (the token),
    // arguments are valid for the call, the result is a new reference or
    // null with an error set (which `from_result` clears).

    pub fn none(py: Python<'py>) -> Self {
        // SAFETY: None is always live.
        unsafe { Self::from_borrowed(py, ffi::Py_None()) }
    }

    pub fn boolean(py: Python<'py>, value: bool) -> Self {
        // SAFETY: True and False are always live.
        unsafe {
            Self::from_borrowed(
                py,
                if value {
                    ffi::Py_True()
                } else {
                    ffi::Py_False()
                },
            )
        }
    }

    pub fn int(py: Python<'py>, value: i64) -> Option<Self> {
        // SAFETY: see the note above the constructors.
        Self::from_result(py, unsafe { ffi::PyLong_FromLongLong(value) })
    }

    /// `int.from_bytes(le, "little", signed=True)`.
    pub fn big_int(py: Python<'py>, le: &[u8]) -> Option<Self> {
        let names = NAMES.get(py)?;
        let data = Self::bytes(py, le)?;
        let mut args = [
            (&raw mut ffi::PyLong_Type).cast::<ffi::PyObject>(),
            data.ptr(),
            names.little.as_ptr(),
            // SAFETY: the True singleton is always live.
            unsafe { ffi::Py_True() },
        ];
        // SAFETY: see the note above the constructors; the first slot is the
        // receiver (the `int` type, for the class method).
        let out = unsafe {
            ffi::PyObject_VectorcallMethod(
                names.from_bytes.as_ptr(),
                args.as_mut_ptr(),
                3,
                names.signed_kw.as_ptr(),
            )
        };
        Self::from_result(py, out)
    }

    pub fn float(py: Python<'py>, value: f64) -> Option<Self> {
        // SAFETY: see the note above the constructors.
        Self::from_result(py, unsafe { ffi::PyFloat_FromDouble(value) })
    }

    /// UTF-8 decoded with "surrogatepass", as the unpickler decodes it.
    pub fn str(py: Python<'py>, utf8: &[u8]) -> Option<Self> {
        let n = utf8.len();
        if n >= 2 && utf8.is_ascii() {
            // The object the decoder makes for ASCII, made directly: a new
            // compact ASCII string, filled in. (Below 2 characters the
            // decoder hands out shared singletons: it is left to do so.)
            // SAFETY: see the note above the constructors; a brand-new
            // string of `n` characters of at most 127 has `n` one-byte
            // slots (and its terminator already written), which we fill
            // before anyone else sees it; a long one has its fresh pages
            // made resident in one call first, which writes nothing.
            unsafe {
                let s = Self::from_result(py, ffi::PyUnicode_New(n as ffi::Py_ssize_t, 127))?;
                engine::prefault::copy_to_fresh(utf8, ffi::PyUnicode_1BYTE_DATA(s.ptr()));
                return Some(s);
            }
        }
        // SAFETY: see the note above the constructors; the slice is valid
        // for its length.
        Self::from_result(py, unsafe {
            ffi::PyUnicode_DecodeUTF8(
                utf8.as_ptr() as *const c_char,
                utf8.len() as ffi::Py_ssize_t,
                c"surrogatepass".as_ptr(),
            )
        })
    }

    /// A new bytes object, as the unpickler makes it: allocated, then
    /// filled, so a 1-byte value is a new object rather than the shared
    /// 1-byte singleton (which keeps the graph's sharing exactly CPython's).
    pub fn bytes(py: Python<'py>, data: &[u8]) -> Option<Self> {
        // SAFETY: see the note above the constructors. A null source asks
        // for `len` uninitialised bytes, which we fill before anyone else
        // sees the object (for len 0 CPython returns its empty singleton,
        // and nothing is written); a large copy has its fresh pages made
        // resident in one call first, which writes nothing.
        unsafe {
            let bytes = Self::from_result(
                py,
                ffi::PyBytes_FromStringAndSize(std::ptr::null(), data.len() as _),
            )?;
            if !data.is_empty() {
                let dst = ffi::PyBytes_AS_STRING(bytes.ptr()) as *mut u8;
                engine::prefault::copy_to_fresh(data, dst);
            }
            Some(bytes)
        }
    }

    pub fn bytearray(py: Python<'py>, data: &[u8]) -> Option<Self> {
        // SAFETY: see the note above the constructors. A null source asks
        // for `len` uninitialised bytes, all of which we fill before anyone
        // else sees the object (an empty one points at a shared empty
        // buffer, to which nothing is written); making their fresh pages
        // resident first writes nothing.
        unsafe {
            let b = Self::from_result(
                py,
                ffi::PyByteArray_FromStringAndSize(std::ptr::null(), data.len() as _),
            )?;
            engine::prefault::copy_to_fresh(data, ffi::PyByteArray_AS_STRING(b.ptr()).cast());
            Some(b)
        }
    }

    /// A tuple of `items`, which it takes over.
    pub fn tuple(py: Python<'py>, items: impl ExactSizeIterator<Item = Self>) -> Option<Self> {
        let len = items.len();
        // SAFETY: see the note above the constructors. The new tuple's slots
        // are all filled before anything else runs (no allocation between),
        // each with a reference we own and hand over; should the iterator
        // yield fewer than promised, the tuple is released with null slots,
        // which tuple deallocation allows.
        unsafe {
            let tuple = Self::from_result(py, ffi::PyTuple_New(len as ffi::Py_ssize_t))?;
            for (i, item) in items.enumerate().take(len) {
                ffi::PyTuple_SET_ITEM(tuple.ptr(), i as ffi::Py_ssize_t, item.into_ptr());
            }
            Some(tuple)
        }
    }

    pub fn list(py: Python<'py>) -> Option<Self> {
        // SAFETY: see the note above the constructors.
        Self::from_result(py, unsafe { ffi::PyList_New(0) })
    }

    /// A list of `items`, which it takes over.
    pub fn list_of(py: Python<'py>, items: impl ExactSizeIterator<Item = Self>) -> Option<Self> {
        let len = items.len();
        // SAFETY: as in `tuple`: the slots are filled with references we
        // hand over before anything else runs, and a slot left null (an
        // iterator shorter than promised) is allowed by list deallocation.
        unsafe {
            let list = Self::from_result(py, ffi::PyList_New(len as ffi::Py_ssize_t))?;
            for (i, item) in items.enumerate().take(len) {
                ffi::PyList_SET_ITEM(list.ptr(), i as ffi::Py_ssize_t, item.into_ptr());
            }
            Some(list)
        }
    }

    /// An exact list that is empty and referred to by this reference alone.
    pub fn is_lone_empty_list(&self) -> bool {
        // SAFETY: reading the type, count and size of a live object we own.
        unsafe {
            self.is_list() && ffi::Py_REFCNT(self.ptr()) == 1 && ffi::Py_SIZE(self.ptr()) == 0
        }
    }

    /// `list[len:] = items` on an exact list; false on failure.
    pub fn list_splice_end(&self, items: &Self) -> bool {
        debug_assert!(self.is_list());
        // SAFETY: both are live lists; the call takes its own references to
        // the items.
        let rc = unsafe {
            let end = ffi::PyList_GET_SIZE(self.ptr());
            ffi::PyList_SetSlice(self.ptr(), end, end, items.ptr())
        };
        self.ok(rc)
    }

    /// Append to an exact list; false (error cleared) on failure.
    pub fn list_append(&self, item: Self) -> bool {
        debug_assert!(self.is_list());
        // SAFETY: `self` is a live list, `item` live; PyList_Append takes its
        // own reference, ours is released when `item` drops.
        let rc = unsafe { ffi::PyList_Append(self.ptr(), item.ptr()) };
        self.ok(rc)
    }

    pub fn dict(py: Python<'py>) -> Option<Self> {
        // SAFETY: see the note above the constructors.
        Self::from_result(py, unsafe { ffi::PyDict_New() })
    }

    /// `dict[key] = value` on an exact dict; false on failure (unhashable key).
    pub fn dict_set(&self, key: Self, value: Self) -> bool {
        debug_assert!(self.is_dict());
        // SAFETY: all three are live; PyDict_SetItem takes its own references.
        let rc = unsafe { ffi::PyDict_SetItem(self.ptr(), key.ptr(), value.ptr()) };
        self.ok(rc)
    }

    pub fn set(py: Python<'py>) -> Option<Self> {
        // SAFETY: see the note above the constructors.
        Self::from_result(py, unsafe { ffi::PySet_New(std::ptr::null_mut()) })
    }

    pub fn frozenset(py: Python<'py>) -> Option<Self> {
        // SAFETY: see the note above the constructors.
        Self::from_result(py, unsafe { ffi::PyFrozenSet_New(std::ptr::null_mut()) })
    }

    /// Add to an exact set, or to a frozenset not yet seen by anyone else
    /// (the C-API allows filling a brand-new frozenset); false on failure.
    pub fn set_add(&self, item: Self) -> bool {
        // SAFETY: both are live; PySet_Add takes its own reference.
        let rc = unsafe { ffi::PySet_Add(self.ptr(), item.ptr()) };
        self.ok(rc)
    }

    fn ok(&self, rc: c_int) -> bool {
        if rc != 0 {
            // SAFETY: GIL held for 'py; the failed call left an error.
            unsafe { ffi::PyErr_Clear() };
        }
        rc == 0
    }
}

/// Where the encoder writes: a buffer kept from one call to the next (warm,
/// already big enough), copied into a new bytes object at the end; or, once
/// the pickle outgrows that buffer, a bytes object written in place and
/// grown as needed, so that a big payload is copied once, not twice.
pub struct OutBytes {
    /// Where the contents start: the kept buffer's storage, or the bytes
    /// object's once `bytes` is set.
    base: *mut u8,
    len: usize,
    cap: usize,
    /// An owned, brand-new bytes object nobody else has seen, or null while
    /// the kept buffer is used (and after a failed resize, which freed it).
    bytes: *mut ffi::PyObject,
    /// The kept buffer (always there until drop). Its length stays 0: its
    /// storage is written through `base` only, and read only up to `len`.
    scratch: Option<Box<Kept>>,
}

/// The kept buffer, boxed so that one pointer (in [`OUT_SCRATCH`]) holds it.
#[derive(Default)]
struct Kept(Vec<u8>);

/// Pickles longer than this are written into a bytes object in place.
const SCRATCH_MAX: usize = 256 * 1024;
const SCRATCH_MIN: usize = 256;

/// The kept buffer, lent to one encoder at a time (another, on another
/// thread where there is no GIL, makes its own).
static OUT_SCRATCH: AtomicPtr<Kept> = AtomicPtr::new(std::ptr::null_mut());

impl OutBytes {
    pub fn new(_py: Python<'_>) -> Option<Self> {
        let p = OUT_SCRATCH.swap(std::ptr::null_mut(), Ordering::Acquire);
        let mut scratch = if p.is_null() {
            Box::default()
        } else {
            // SAFETY: OUT_SCRATCH only ever holds a pointer from
            // Box::into_raw (see Drop), and the swap made it ours alone.
            unsafe { Box::from_raw(p) }
        };
        if scratch.0.capacity() < SCRATCH_MIN && scratch.0.try_reserve_exact(SCRATCH_MIN).is_err() {
            return None;
        }
        Some(OutBytes {
            base: scratch.0.as_mut_ptr(),
            len: 0,
            cap: scratch.0.capacity(),
            bytes: std::ptr::null_mut(),
            scratch: Some(scratch),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Room for `extra` more bytes; false on memory exhaustion.
    #[inline]
    pub fn reserve(&mut self, extra: usize) -> bool {
        if self.cap - self.len >= extra {
            return true;
        }
        self.grow(extra)
    }

    #[cold]
    fn grow(&mut self, extra: usize) -> bool {
        let Some(need) = self.len.checked_add(extra) else {
            return false;
        };
        // Doubling, or a quarter more than needed when one write is larger
        // (a big payload), so that what follows it fits without a resize.
        let cap = (need + need / 4 + 64).max(self.cap.saturating_mul(2));
        if cap > isize::MAX as usize {
            return false;
        }
        if let (true, Some(scratch)) = (
            self.bytes.is_null() && cap <= SCRATCH_MAX,
            &mut self.scratch,
        ) {
            let mut bigger: Vec<u8> = Vec::new();
            if bigger.try_reserve_exact(cap).is_err() {
                return false;
            }
            // SAFETY: `len` bytes are written at `base` (the old buffer,
            // still alive) and the new one has room for `cap` >= `len`.
            unsafe { std::ptr::copy_nonoverlapping(self.base, bigger.as_mut_ptr(), self.len) };
            scratch.0 = bigger;
            self.base = scratch.0.as_mut_ptr();
            self.cap = scratch.0.capacity();
            return true;
        }
        if self.bytes.is_null() {
            // SAFETY: GIL held (an encoder runs inside a call holding it);
            // a null data pointer asks for uninitialised contents, which we
            // write before anyone reads them.
            let bytes = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), cap as _) };
            if bytes.is_null() {
                return false;
            }
            // SAFETY: the new object has room for `cap` >= `len` bytes, and
            // `len` bytes are written at `base`; the two cannot overlap.
            unsafe {
                let to = ffi::PyBytes_AS_STRING(bytes) as *mut u8;
                std::ptr::copy_nonoverlapping(self.base, to, self.len);
            }
            self.bytes = bytes;
        } else {
            // SAFETY: `bytes` is our brand-new bytes object (reference count
            // 1, never shared), which is what _PyBytes_Resize requires; on
            // failure it frees the object and nulls our pointer.
            if unsafe { _PyBytes_Resize(&mut self.bytes, cap as ffi::Py_ssize_t) } != 0 {
                return false;
            }
        }
        // SAFETY: `bytes` is live (just made or resized).
        self.base = unsafe { ffi::PyBytes_AS_STRING(self.bytes) as *mut u8 };
        self.cap = cap;
        true
    }

    /// Append; the caller has reserved the room.
    #[inline]
    pub fn push(&mut self, data: &[u8]) {
        assert!(data.len() <= self.cap - self.len);
        // SAFETY: the room is reserved (checked above) in storage only we can
        // reach (ours, or brand new and unshared), and `data` cannot overlap it.
        // A big payload's fresh pages are made resident in one call first,
        // which writes nothing.
        unsafe { engine::prefault::copy_to_fresh(data, self.base.add(self.len)) };
        self.len += data.len();
    }

    /// `push` for data of any length that was not just written (a string's
    /// or bytes' contents): a short one (most) is copied inline, with two
    /// overlapping loads and stores, rather than through a call to memcpy.
    /// (Loads that straddle bytes just stored would stall: opcodes and
    /// headers go through `push`.)
    #[inline]
    pub fn push_var(&mut self, data: &[u8]) {
        let n = data.len();
        if n > 16 {
            return self.push(data);
        }
        assert!(n <= self.cap - self.len);
        let (src, dst) = (data.as_ptr(), self.base.wrapping_add(self.len));
        // SAFETY: the room is reserved (checked above) in storage only we can
        // reach, and `data` cannot overlap it. Every read is within `data`
        // (offsets 0 and n - 8 for 8 <= n <= 16, and so on) and every write
        // within the `n` reserved bytes.
        unsafe {
            if n >= 8 {
                let a = src.cast::<u64>().read_unaligned();
                let b = src.add(n - 8).cast::<u64>().read_unaligned();
                dst.cast::<u64>().write_unaligned(a);
                dst.add(n - 8).cast::<u64>().write_unaligned(b);
            } else if n >= 4 {
                let a = src.cast::<u32>().read_unaligned();
                let b = src.add(n - 4).cast::<u32>().read_unaligned();
                dst.cast::<u32>().write_unaligned(a);
                dst.add(n - 4).cast::<u32>().write_unaligned(b);
            } else if n > 0 {
                let (a, b, c) = (*src, *src.add(n / 2), *src.add(n - 1));
                *dst = a;
                *dst.add(n / 2) = b;
                *dst.add(n - 1) = c;
            }
        }
        self.len += n;
    }

    /// Overwrite bytes already written, at `at`.
    pub fn write_at(&mut self, at: usize, data: &[u8]) {
        assert!(at + data.len() <= self.len);
        // SAFETY: within the written part of our own storage; no overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(at), data.len()) };
    }

    /// Move the written bytes from `from` on back to `to` (to < from) and
    /// shorten the contents by the difference.
    pub fn close_gap(&mut self, to: usize, from: usize) {
        assert!(to <= from && from <= self.len);
        // SAFETY: both ranges lie within the written part of our own
        // storage; `copy` allows them to overlap.
        unsafe { std::ptr::copy(self.base.add(from), self.base.add(to), self.len - from) };
        self.len -= from - to;
    }

    /// Skip `n` reserved bytes, to be filled in later with `write_at`.
    pub fn skip(&mut self, n: usize) {
        assert!(n <= self.cap - self.len);
        self.len += n;
    }

    /// The finished pickle.
    pub fn finish<'py>(mut self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        if self.bytes.is_null() {
            // SAFETY: GIL held (the token); `len` bytes are written at `base`.
            let p = unsafe { ffi::PyBytes_FromStringAndSize(self.base.cast(), self.len as _) };
            if p.is_null() {
                return Err(PyErr::fetch(py));
            }
            // SAFETY: a new reference to a bytes object, handed over.
            return Ok(unsafe { Bound::from_owned_ptr(py, p).cast_into_unchecked() });
        }
        if self.len != self.cap {
            // SAFETY: as in `grow`; shrinking to the written length.
            if unsafe { _PyBytes_Resize(&mut self.bytes, self.len as ffi::Py_ssize_t) } != 0 {
                return Err(PyErr::fetch(py));
            }
            self.cap = self.len;
        }
        let p = std::mem::replace(&mut self.bytes, std::ptr::null_mut());
        // SAFETY: we hand over our owned reference to a bytes object.
        Ok(unsafe { Bound::from_owned_ptr(py, p).cast_into_unchecked() })
    }
}

impl Drop for OutBytes {
    fn drop(&mut self) {
        // SAFETY: an OutBytes lives inside one encoder call, GIL held; the
        // pointer is ours or null.
        unsafe { ffi::Py_XDECREF(self.bytes) }
        let Some(scratch) = self.scratch.take() else {
            return;
        };
        let p = Box::into_raw(scratch);
        if OUT_SCRATCH
            .compare_exchange(
                std::ptr::null_mut(),
                p,
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_err()
        {
            // Another encoder put its buffer back first: this one goes.
            // SAFETY: `p` came from Box::into_raw just above.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}
