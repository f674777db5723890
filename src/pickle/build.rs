//! Building Python objects for the pickle reader: the reader's `Builder` over
//! the C API, and the small cache of dict-key strings it reuses across reads.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use pyo3::prelude::*;

use super::decode::{decode, Builder, Outcome, Slot, Stop};
use super::pyapi::Owned;

/// Read `data` natively: `Ok(None)` hands it to CPython's unpickler.
pub fn loads<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Option<Bound<'py, PyAny>>> {
    let mut builder = PyBuilder {
        py,
        keys: KeyCacheLease::take(),
    };
    match decode(&mut builder, data) {
        Outcome::Value(obj) => Ok(Some(obj.into_bound())),
        Outcome::Fallback => Ok(None),
        Outcome::Refused(msg) => Err(super::unpickling_error(py, &msg)),
    }
}

struct PyBuilder<'py> {
    py: Python<'py>,
    keys: KeyCacheLease,
}

/// A failed C-API call (its error already cleared): CPython's unpickler
/// will meet the same failure and raise its own error.
fn made<T>(value: Option<T>) -> Result<T, Stop> {
    value.ok_or(Stop::Fallback)
}

fn done(ok: bool) -> Result<(), Stop> {
    if ok {
        Ok(())
    } else {
        Err(Stop::Fallback)
    }
}

impl<'py> Builder for PyBuilder<'py> {
    type Obj = Owned<'py>;

    fn share(&mut self, obj: &Owned<'py>) -> Owned<'py> {
        obj.share()
    }

    fn none(&mut self) -> Result<Owned<'py>, Stop> {
        Ok(Owned::none(self.py))
    }

    fn boolean(&mut self, value: bool) -> Result<Owned<'py>, Stop> {
        Ok(Owned::boolean(self.py, value))
    }

    fn int(&mut self, value: i64) -> Result<Owned<'py>, Stop> {
        made(Owned::int(self.py, value))
    }

    fn big_int(&mut self, le: &[u8]) -> Result<Owned<'py>, Stop> {
        made(Owned::big_int(self.py, le))
    }

    fn float(&mut self, value: f64) -> Result<Owned<'py>, Stop> {
        made(Owned::float(self.py, value))
    }

    fn str(&mut self, utf8: &[u8], dict_key: bool) -> Result<Owned<'py>, Stop> {
        if dict_key && utf8.len() <= KEY_MAX_LEN {
            if let Some(cache) = self.keys.get() {
                return made(cache.key(self.py, utf8));
            }
        }
        made(Owned::str(self.py, utf8))
    }

    fn bytes(&mut self, data: &[u8]) -> Result<Owned<'py>, Stop> {
        made(Owned::bytes(self.py, data))
    }

    fn bytearray(&mut self, data: &[u8]) -> Result<Owned<'py>, Stop> {
        made(Owned::bytearray(self.py, data))
    }

    fn tuple(&mut self, items: std::vec::Drain<'_, Slot<Owned<'py>>>) -> Result<Owned<'py>, Stop> {
        made(Owned::tuple(self.py, items.map(|slot| slot.obj)))
    }

    fn list(&mut self) -> Result<Owned<'py>, Stop> {
        made(Owned::list(self.py))
    }

    fn list_extend(
        &mut self,
        list: &Owned<'py>,
        items: std::vec::Drain<'_, Slot<Owned<'py>>>,
    ) -> Result<(), Stop> {
        if !list.is_list() {
            // A bytearray, say, has `extend`: CPython's unpickler calls it.
            return Err(Stop::Fallback);
        }
        for slot in items {
            done(list.list_append(slot.obj))?;
        }
        Ok(())
    }

    fn dict(&mut self) -> Result<Owned<'py>, Stop> {
        made(Owned::dict(self.py))
    }

    fn dict_update(
        &mut self,
        dict: &Owned<'py>,
        mut items: std::vec::Drain<'_, Slot<Owned<'py>>>,
    ) -> Result<(), Stop> {
        if !dict.is_dict() {
            return Err(Stop::Fallback);
        }
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            done(dict.dict_set(key.obj, value.obj))?;
        }
        Ok(())
    }

    fn set(&mut self) -> Result<Owned<'py>, Stop> {
        made(Owned::set(self.py))
    }

    fn set_update(
        &mut self,
        set: &Owned<'py>,
        items: std::vec::Drain<'_, Slot<Owned<'py>>>,
    ) -> Result<(), Stop> {
        if !set.is_set() {
            return Err(Stop::Fallback);
        }
        for slot in items {
            done(set.set_add(slot.obj))?;
        }
        Ok(())
    }

    fn frozenset(
        &mut self,
        items: std::vec::Drain<'_, Slot<Owned<'py>>>,
    ) -> Result<Owned<'py>, Stop> {
        let set = made(Owned::frozenset(self.py))?;
        for slot in items {
            // Filled before anyone else can see it.
            done(set.set_add(slot.obj))?;
        }
        Ok(set)
    }
}

/// Keys longer than this (in UTF-8) are not cached.
const KEY_MAX_LEN: usize = 32;
const KEY_SLOTS: usize = 1024;

/// Recently read dict keys: a dict-key string read again comes back as the
/// same `str` object (its hash already computed), not a new one. Direct
/// mapped by a hash of the UTF-8; a clash replaces the slot.
struct KeyCache {
    slots: Vec<KeySlot>,
}

struct KeySlot {
    len: u8,
    utf8: [u8; KEY_MAX_LEN],
    /// An owned reference, or null for an empty slot.
    obj: *mut pyo3::ffi::PyObject,
}

impl KeyCache {
    fn new() -> Box<Self> {
        let slots = (0..KEY_SLOTS)
            .map(|_| KeySlot {
                len: 0,
                utf8: [0; KEY_MAX_LEN],
                obj: std::ptr::null_mut(),
            })
            .collect();
        Box::new(KeyCache { slots })
    }

    fn key<'py>(&mut self, py: Python<'py>, utf8: &[u8]) -> Option<Owned<'py>> {
        let slot = &mut self.slots[hash(utf8) & (KEY_SLOTS - 1)];
        if !slot.obj.is_null()
            && usize::from(slot.len) == utf8.len()
            && slot.utf8[..utf8.len()] == *utf8
        {
            // SAFETY: the slot owns a reference to this live str; we take a
            // new one for the caller (GIL held: we have the token).
            return Some(unsafe { Owned::from_borrowed(py, slot.obj) });
        }
        let obj = Owned::str(py, utf8)?;
        let old = std::mem::replace(&mut slot.obj, obj.share().into_ptr());
        slot.len = utf8.len() as u8;
        slot.utf8[..utf8.len()].copy_from_slice(utf8);
        if !old.is_null() {
            // SAFETY: the slot owned this reference; GIL held.
            unsafe { pyo3::ffi::Py_DECREF(old) };
        }
        Some(obj)
    }
}

/// FxHash-style mixing of up to 32 bytes, eight at a time.
fn hash(bytes: &[u8]) -> usize {
    let mut h = bytes.len() as u64;
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    (h >> 20) as usize
}

/// The one key cache, lent to one read at a time: a read that starts while
/// another holds it (a `__del__` run by the collector during a read that
/// reads again, or another thread where there is no GIL) goes without.
static KEY_CACHE: AtomicPtr<KeyCache> = AtomicPtr::new(std::ptr::null_mut());
static KEY_CACHE_MADE: AtomicBool = AtomicBool::new(false);

struct KeyCacheLease(Option<Box<KeyCache>>);

impl KeyCacheLease {
    fn take() -> Self {
        let p = KEY_CACHE.swap(std::ptr::null_mut(), Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: KEY_CACHE only ever holds a pointer from Box::into_raw
            // (see Drop), and the swap made it ours alone.
            return KeyCacheLease(Some(unsafe { Box::from_raw(p) }));
        }
        if !KEY_CACHE_MADE.swap(true, Ordering::Relaxed) {
            return KeyCacheLease(Some(KeyCache::new()));
        }
        KeyCacheLease(None)
    }

    fn get(&mut self) -> Option<&mut KeyCache> {
        self.0.as_deref_mut()
    }
}

impl Drop for KeyCacheLease {
    fn drop(&mut self) {
        let Some(cache) = self.0.take() else {
            return;
        };
        let p = Box::into_raw(cache);
        if KEY_CACHE
            .compare_exchange(
                std::ptr::null_mut(),
                p,
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_err()
        {
            // Cannot happen (only one lease holds the cache), but if it did
            // this one is surplus: release its strings.
            // SAFETY: `p` came from Box::into_raw just above; the lease is
            // dropped inside a read, with the GIL held.
            let cache = unsafe { Box::from_raw(p) };
            for slot in cache.slots.iter().filter(|s| !s.obj.is_null()) {
                // SAFETY: each slot owns a reference; GIL held.
                unsafe { pyo3::ffi::Py_DECREF(slot.obj) };
            }
        }
    }
}
