//! The pickle bridge: `pickle.dumps` on the way in, and on the way out a
//! zero-copy hand-off of LMDB's own memory to `pickle.loads` that no Python
//! object can outlive.

use std::ffi::CStr;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::errors::StoreError;

pub(crate) use crate::errors::{
    display_bytes, display_key, key_error, passes_through, unpickle_error,
};
pub(crate) use crate::pickle::{pickle_fn, DUMPS, LOADS};

/// New `bytes` holding `data`; `MemoryError` when Python has no memory for
/// it (PyO3's `PyBytes::new` panics then). A large copy has its fresh pages
/// made resident in one call first (`engine::prefault`).
pub(crate) fn new_bytes<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    // SAFETY: a null source asks for `len` uninitialised bytes (the length
    // fits a Py_ssize_t: a slice is never longer than isize::MAX); they are
    // all written before the object is returned, and nothing else can see it
    // meanwhile (for length 0 CPython returns its empty singleton, and
    // nothing is written).
    unsafe {
        let p = ffi::PyBytes_FromStringAndSize(std::ptr::null(), data.len() as ffi::Py_ssize_t);
        let bytes = Bound::from_owned_ptr_or_err(py, p)?;
        let dst = ffi::PyBytes_AS_STRING(bytes.as_ptr())
            .cast::<u8>()
            .cast_mut();
        engine::prefault::copy_to_fresh(data, dst);
        Ok(bytes.cast_into_unchecked())
    }
}

/// New `bytes` of `len` bytes that `fill` writes, as `PyBytes::new_with`
/// (zeroed first, so `fill` sees initialised memory; `MemoryError` when
/// Python has no memory for it), with a large one's fresh pages made
/// resident in one call before they are zeroed (`engine::prefault`).
pub(crate) fn new_bytes_with<'py>(
    py: Python<'py>,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> PyResult<()>,
) -> PyResult<Bound<'py, PyBytes>> {
    let size = ffi::Py_ssize_t::try_from(len).map_err(|_| StoreError::OutOfMemory)?;
    // SAFETY: a null source asks for `len` uninitialised bytes of a new
    // object nobody else can see yet; they are made resident (which writes
    // nothing) and zeroed before the slice over them is made, and the
    // object is dropped, never returned, if `fill` fails.
    unsafe {
        let bytes = Bound::from_owned_ptr_or_err(
            py,
            ffi::PyBytes_FromStringAndSize(std::ptr::null(), size),
        )?;
        let dst = ffi::PyBytes_AS_STRING(bytes.as_ptr())
            .cast::<u8>()
            .cast_mut();
        engine::prefault::before_write(dst, len);
        std::ptr::write_bytes(dst, 0, len);
        fill(std::slice::from_raw_parts_mut(dst, len))?;
        Ok(bytes.cast_into_unchecked())
    }
}

/// New `str` holding `text`; `MemoryError` instead of PyO3's panic.
pub(crate) fn new_str<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyString>> {
    // SAFETY: `text` is valid UTF-8 for its length; a new reference or null
    // with an exception set.
    unsafe {
        let p =
            ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), text.len() as ffi::Py_ssize_t);
        Ok(Bound::from_owned_ptr_or_err(py, p)?.cast_into_unchecked())
    }
}

/// `module.name`, through calls that raise `MemoryError` when Python has
/// no memory left (PyO3's `import` and `getattr` by `&str` panic then).
pub(crate) fn import_attr<'py>(
    py: Python<'py>,
    module: &CStr,
    name: &CStr,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: C strings that live through the calls; each result is a new
    // reference or null with an exception set.
    unsafe {
        let m = Bound::from_owned_ptr_or_err(py, ffi::PyImport_ImportModule(module.as_ptr()))?;
        Bound::from_owned_ptr_or_err(py, ffi::PyObject_GetAttrString(m.as_ptr(), name.as_ptr()))
    }
}

/// New `(a, b)`; `MemoryError` instead of PyO3's panic.
pub(crate) fn new_pair<'py>(
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    // SAFETY: two live objects (PyTuple_Pack takes its own references); a
    // new reference or null with an exception set.
    unsafe {
        let p = ffi::PyTuple_Pack(2, a.as_ptr(), b.as_ptr());
        Ok(Bound::from_owned_ptr_or_err(a.py(), p)?.cast_into_unchecked())
    }
}

/// New empty `dict`; `MemoryError` instead of PyO3's panic.
pub(crate) fn new_dict(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    // SAFETY: a new reference or null with an exception set.
    unsafe { Ok(Bound::from_owned_ptr_or_err(py, ffi::PyDict_New())?.cast_into_unchecked()) }
}

/// New empty `list`; `MemoryError` instead of PyO3's panic.
pub(crate) fn new_list(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    // SAFETY: a new reference or null with an exception set.
    unsafe { Ok(Bound::from_owned_ptr_or_err(py, ffi::PyList_New(0))?.cast_into_unchecked()) }
}

/// `MemoryError` if the memory held in reserve for a failed allocation was
/// used up and the process has no room to take it back (see
/// `engine::reserve`): loops that make an object per item call this per
/// item, so that a call stops at the limit instead of making more objects
/// until an allocation that cannot fail gracefully does.
#[inline]
pub(crate) fn check_memory(path: &str) -> PyResult<()> {
    if engine::reserve::ensure() {
        return Ok(());
    }
    Err(StoreError::NoReserve {
        path: path.to_string(),
    }
    .into())
}

/// The items of `iterable` in a vector whose memory is asked for with
/// `try_reserve`: `MemoryError` naming `what` when there is none, where
/// `collect` would end the process.
pub(crate) fn collect_items<'py>(
    iterable: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let mut out: Vec<Bound<'py, PyAny>> = Vec::new();
    let it = iterable.try_iter()?;
    let (hint, _) = it.size_hint();
    reserve_more(&mut out, hint, what)?;
    for item in it {
        let item = item?;
        reserve_more(&mut out, 1, what)?;
        out.push(item);
    }
    Ok(out)
}

/// Whether `n` items of `T` could be allocated now (they are, then freed):
/// `MemoryError` naming `what` before a step that needs that much and
/// cannot fail gracefully (a sort's scratch space).
pub(crate) fn room_for<T>(n: usize, what: &str) -> PyResult<()> {
    try_vec::<T>(n, what).map(drop)
}

/// An empty vector with room for `n` items, or `MemoryError` naming `what`.
pub(crate) fn try_vec<T>(n: usize, what: &str) -> PyResult<Vec<T>> {
    let mut v = Vec::new();
    reserve_more(&mut v, n, what)?;
    Ok(v)
}

/// Room for `more` items in `v` (amortised, as `push` grows), or
/// `MemoryError` naming `what`.
pub(crate) fn reserve_more<T>(v: &mut Vec<T>, more: usize, what: &str) -> PyResult<()> {
    v.try_reserve(more).map_err(|_| {
        StoreError::NoMemoryFor {
            what: format!("{} {what}", v.len() + more),
        }
        .into()
    })
}

/// `pickle.dumps(obj, protocol)`.
pub fn dumps<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    protocol: i32,
) -> PyResult<Bound<'py, PyBytes>> {
    if let Some(out) = crate::pickle::dumps(py, obj, protocol)? {
        return Ok(out);
    }
    let out = pickle_fn(py, &DUMPS, c"dumps")?.call1((obj, protocol))?;
    Ok(out.cast_into::<PyBytes>()?)
}

/// A read-only buffer over memory that the store lends to one
/// `pickle.loads` call. Outside that call it lends nothing (a null pointer),
/// and asking it for a buffer then raises `ValueError`.
///
/// During the call, the first buffer asked for is pickle's own (it asks as
/// it starts) and points at the lent memory itself. Any other buffer asked
/// for meanwhile (code run by pickle can reach this object) gets a private
/// copy, freed when that buffer is released, so it can never point at
/// memory that goes away. If pickle's own buffer is still held when `loads`
/// returns (its Unpickler was kept alive), the lent memory is pinned: kept
/// readable, where it is, for the rest of the process (see
/// [`loads_borrowed`]).
///
/// One spare is kept and reused, so a read allocates no wrapper object: a
/// `memoryview` would cost two garbage-collected objects per read.
#[pyclass(frozen, module = "lmdb_object_store._native", name = "_LentBuffer")]
pub struct LentBuffer {
    /// The lent bytes; null when nothing is lent.
    ptr: AtomicPtr<u8>,
    /// Their length, meaningful only while `ptr` is not null.
    len: AtomicUsize,
    /// This lend's direct buffer was handed out (to pickle).
    direct_taken: AtomicBool,
    /// The direct buffer is out (not yet released).
    direct_out: AtomicBool,
}

#[pymethods]
impl LentBuffer {
    /// # Safety
    /// Called by Python with a `view` to fill, as the buffer protocol says.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        let ptr = me.ptr.load(Ordering::Relaxed);
        if ptr.is_null() {
            return Err(StoreError::NoLongerLent.into());
        }
        let len = me.len.load(Ordering::Relaxed);
        let direct = !me.direct_taken.load(Ordering::Relaxed);
        // A copy is boxed twice so that `internal` (one pointer) can own it.
        let copy: Option<Box<Vec<u8>>> = (!direct).then(|| {
            // SAFETY: `ptr`/`len` are the lent bytes, valid while `ptr` is
            // not null (the lender clears it, holding the GIL as we do,
            // before the bytes go away).
            Box::new(unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec())
        });
        let buf = copy.as_ref().map_or(ptr, |c| c.as_ptr().cast_mut());
        // SAFETY: `view` is the caller's Py_buffer to fill; `buf` is the
        // lent bytes (direct: kept valid, or pinned, until this view is
        // released, see `loads_borrowed`) or our own copy, freed only in
        // `__releasebuffer__`. FillInfo takes a new reference to `slf` in
        // `view.obj`, released by PyBuffer_Release.
        let filled = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                buf.cast(),
                len as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if filled != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        match copy {
            // SAFETY: `view` was filled above; `internal` is ours to set.
            Some(copy) => unsafe { (*view).internal = Box::into_raw(copy).cast() },
            None => {
                me.direct_taken.store(true, Ordering::Relaxed);
                me.direct_out.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// # Safety
    /// Called by Python once for each view that `__getbuffer__` filled.
    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        // SAFETY: `view` is one that `__getbuffer__` filled.
        let internal = unsafe { (*view).internal };
        if !internal.is_null() {
            // SAFETY: set from Box::into_raw in `__getbuffer__`, freed once.
            drop(unsafe { Box::from_raw(internal.cast::<Vec<u8>>()) });
            return;
        }
        // A pin (see `loads_borrowed`) stays: this release does not prove
        // that the holder stopped reading.
        self.direct_out.store(false, Ordering::Relaxed);
    }
}

/// The spare `LentBuffer` (an owned reference), or null while one is in use.
static SPARE: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

fn take_lent(py: Python<'_>) -> PyResult<Bound<'_, LentBuffer>> {
    let spare = SPARE.swap(std::ptr::null_mut(), Ordering::Acquire);
    if spare.is_null() {
        return Bound::new(
            py,
            LentBuffer {
                ptr: AtomicPtr::new(std::ptr::null_mut()),
                len: AtomicUsize::new(0),
                direct_taken: AtomicBool::new(false),
                direct_out: AtomicBool::new(false),
            },
        );
    }
    // SAFETY: SPARE only ever holds an owned reference to a LentBuffer (see
    // `keep_lent`), which the swap above handed over to us.
    Ok(unsafe { Bound::from_owned_ptr(py, spare).cast_into_unchecked() })
}

/// Keep `lent` as the spare if there is none yet (a nested read may have
/// put one back first); else drop it.
fn keep_lent(lent: Bound<'_, LentBuffer>) {
    let p = lent.into_ptr();
    if SPARE
        .compare_exchange(
            std::ptr::null_mut(),
            p,
            Ordering::Release,
            Ordering::Relaxed,
        )
        .is_err()
    {
        // SAFETY: `p` is the owned reference `into_ptr` gave us and nobody
        // else took it; the GIL is held (we were handed a Bound).
        unsafe { ffi::Py_DECREF(p) };
    }
}

/// `pickle.loads` over `data` without copying it: the bytes are lent as a
/// read-only buffer that lends nothing once this returns, so no Python object
/// can reach `data` afterwards, except pickle's own buffer if code run by
/// pickle kept its Unpickler alive. Then `pin` is called, once, and must
/// keep `data` readable, at its address, for the rest of the process (its
/// read transaction open and its map mapped, or its bytes never freed):
/// pickle's Unpickler reads on through the pointer it kept even after it
/// releases the buffer (when it is initialised again), so no release can
/// end a pin.
///
/// Spine rule 3: this is where LMDB memory meets Python, and the lending
/// ends before the caller's read transaction does.
pub fn loads_borrowed<'py>(
    py: Python<'py>,
    data: &[u8],
    pin: impl FnOnce(),
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(value) = crate::pickle::loads(py, data)? {
        return Ok(value);
    }
    let loads = pickle_fn(py, &LOADS, c"loads")?;
    let lent = take_lent(py)?;
    let me = lent.get();
    me.ptr.store(data.as_ptr().cast_mut(), Ordering::Relaxed);
    me.len.store(data.len(), Ordering::Relaxed);
    me.direct_taken.store(false, Ordering::Relaxed);
    let result = loads.call1((&lent,));
    me.ptr.store(std::ptr::null_mut(), Ordering::Relaxed);
    if me.direct_out.load(Ordering::Relaxed) {
        // Pickle's buffer over `data` outlives the call and cannot be
        // revoked. (This object is not reused: that buffer holds a
        // reference to it.)
        pin();
        return result;
    }
    // Reuse it only when nobody else holds it; another holder keeps an
    // object that now lends nothing.
    // SAFETY: reading the reference count of a live object we hold.
    if unsafe { ffi::Py_REFCNT(lent.as_ptr()) } == 1 {
        keep_lent(lent);
    }
    result
}

/// The cyclic garbage collector, paused while many values are unpickled at
/// once: everything they allocate stays reachable (it is returned), so the
/// collections that the allocations would trigger find nothing to free, yet
/// each one walks every young object, and the older generations' walk the
/// whole heap. Resumed on drop, only if it was running before (a nested pause,
/// or a program that turned the collector off, is left as it was).
pub struct GcPause {
    was_enabled: bool,
    /// Not Send: it must be dropped on the thread (holding the GIL) that
    /// made it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl GcPause {
    pub fn new(_py: Python<'_>) -> Self {
        // SAFETY: the GIL is held (the token proves it); PyGC_Disable only
        // flips the interpreter's flag and returns its previous value.
        let was_enabled = unsafe { ffi::PyGC_Disable() } != 0;
        GcPause {
            was_enabled,
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for GcPause {
    fn drop(&mut self) {
        if self.was_enabled {
            // SAFETY: a GcPause is made from a `Python` token inside a call
            // that holds the GIL, and cannot leave that thread (not Send).
            unsafe { ffi::PyGC_Enable() };
        }
    }
}
