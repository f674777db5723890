//! Building Python objects for the pickle reader: the reader's `Builder` over
//! the C API, and what it keeps from one read to the next (a small cache of
//! dict-key strings, the reader's working vectors).

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use pyo3::prelude::*;

use super::decode::{decode, Builder, Outcome, Scratch, Slot, Stop};
use super::pyapi::Owned;

/// Read `data` natively: `Ok(None)` hands it to CPython's unpickler.
pub fn loads<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Option<Bound<'py, PyAny>>> {
    let mut lease = PoolLease::take();
    let (keys, mut scratch) = match lease.0.as_deref_mut() {
        Some(pool) => (Some(&mut pool.keys), retype_scratch(&mut pool.scratch)),
        None => (None, Scratch::default()),
    };
    let mut builder = PyBuilder { py, keys };
    let outcome = decode(&mut builder, data, &mut scratch);
    if let Some(pool) = lease.0.as_deref_mut() {
        pool.scratch = retype_scratch(&mut scratch);
    }
    match outcome {
        Outcome::Value(obj) => Ok(Some(obj.into_bound())),
        Outcome::Fallback => Ok(None),
        Outcome::Refused(msg) => Err(super::unpickling_error(py, &msg)),
    }
}

/// Move the (empty) vectors of a scratch into a scratch of another object
/// type of the same layout: the pool keeps them as `Owned<'static>` between
/// reads, a read uses them as `Owned<'py>`.
#[inline]
fn retype_scratch<A, B>(from: &mut Scratch<A>) -> Scratch<B> {
    Scratch {
        stack: retype(std::mem::take(&mut from.stack)),
        marks: std::mem::take(&mut from.marks),
        memo: retype(std::mem::take(&mut from.memo)),
        memo_wanted: from.memo_wanted,
    }
}

/// An empty vector as an empty vector of another element type of the same
/// size and alignment, keeping its allocation.
fn retype<A, B>(v: Vec<A>) -> Vec<B> {
    assert!(
        v.is_empty()
            && std::mem::size_of::<A>() == std::mem::size_of::<B>()
            && std::mem::align_of::<A>() == std::mem::align_of::<B>()
    );
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: the allocation was made for `capacity` elements of A's size
    // and alignment, which are B's (asserted), so it is a valid allocation
    // for `capacity` B's; the length is 0, so no element is reinterpreted.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<B>(), 0, v.capacity()) }
}

struct PyBuilder<'py, 'k> {
    py: Python<'py>,
    keys: Option<&'k mut KeyCache>,
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

impl<'py> Builder for PyBuilder<'py, '_> {
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
            if let Some(cache) = self.keys.as_deref_mut() {
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

    fn list_of(
        &mut self,
        items: std::vec::Drain<'_, Slot<Owned<'py>>>,
    ) -> Result<Owned<'py>, Stop> {
        made(Owned::list_of(self.py, items.map(|slot| slot.obj)))
    }

    fn list_extend(&mut self, stack: &mut Vec<Slot<Owned<'py>>>, at: usize) -> Result<(), Stop> {
        let target = &stack[at - 1].obj;
        if !target.is_list() {
            // A bytearray, say, has `extend`: CPython's unpickler calls it.
            return Err(Stop::Fallback);
        }
        if target.is_lone_empty_list() {
            // Only the stack refers to it (the memo does not hold it): a
            // list made at its final size takes its place, rather than
            // one grown item by item.
            let list = made(Owned::list_of(self.py, stack.drain(at..).map(|s| s.obj)))?;
            stack[at - 1].obj = list;
            return Ok(());
        }
        let list = target.share();
        if stack.len() - at >= SPLICE_FROM {
            // Grown once, as CPython's unpickler does.
            let items = made(Owned::list_of(self.py, stack.drain(at..).map(|s| s.obj)))?;
            return done(list.list_splice_end(&items));
        }
        for slot in stack.drain(at..) {
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
    /// The key's UTF-8 as [`words`] reads it.
    words: [u64; 4],
    /// An owned reference, or null for an empty slot.
    obj: *mut pyo3::ffi::PyObject,
}

impl KeyCache {
    fn new() -> Self {
        let slots = (0..KEY_SLOTS)
            .map(|_| KeySlot {
                len: 0,
                words: [0; 4],
                obj: std::ptr::null_mut(),
            })
            .collect();
        KeyCache { slots }
    }

    fn key<'py>(&mut self, py: Python<'py>, utf8: &[u8]) -> Option<Owned<'py>> {
        let words = words(utf8);
        let slot = &mut self.slots[hash(&words) & (KEY_SLOTS - 1)];
        if !slot.obj.is_null() && usize::from(slot.len) == utf8.len() && slot.words == words {
            // SAFETY: the slot owns a reference to this live str; we take a
            // new one for the caller (GIL held: we have the token).
            return Some(unsafe { Owned::from_borrowed(py, slot.obj) });
        }
        let obj = Owned::str(py, utf8)?;
        let old = std::mem::replace(&mut slot.obj, obj.share().into_ptr());
        slot.len = utf8.len() as u8;
        slot.words = words;
        if !old.is_null() {
            // SAFETY: the slot owned this reference; GIL held.
            unsafe { pyo3::ffi::Py_DECREF(old) };
        }
        Some(obj)
    }
}

/// Up to 32 bytes read as four words that between them hold every byte
/// (reads overlap when the length is not a multiple of the word), so two
/// strings of one length are equal exactly when their words are. Whole-word
/// loads, rather than a byte copy into a word, which stalled every read.
#[inline]
fn words(b: &[u8]) -> [u64; 4] {
    debug_assert!(b.len() <= KEY_MAX_LEN);
    let n = b.len();
    let at8 = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let at4 = |i: usize| u64::from(u32::from_le_bytes(b[i..i + 4].try_into().unwrap()));
    if n >= 16 {
        [at8(0), at8(8), at8(n - 16), at8(n - 8)]
    } else if n >= 8 {
        [at8(0), at8(n - 8), 0, 0]
    } else if n >= 4 {
        [at4(0) | at4(n - 4) << 32, 0, 0, 0]
    } else if n > 0 {
        let w = u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16;
        [w, 0, 0, 0]
    } else {
        [0; 4]
    }
}

/// FxHash-style mixing of the four words.
#[inline]
fn hash(words: &[u64; 4]) -> usize {
    let mut h = 0u64;
    for &w in words {
        h = (h.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    (h >> 20) as usize
}

/// Batches at least this long extend a list that others see in one step.
const SPLICE_FROM: usize = 16;

/// What one read keeps for the next: the key cache and the reader's vectors.
struct Pool {
    keys: KeyCache,
    scratch: Scratch<Owned<'static>>,
}

/// The one pool, lent to one read at a time: a read that starts while
/// another holds it (a `__del__` run by the collector during a read that
/// reads again, or another thread where there is no GIL) goes without.
static POOL: AtomicPtr<Pool> = AtomicPtr::new(std::ptr::null_mut());
static POOL_MADE: AtomicBool = AtomicBool::new(false);

struct PoolLease(Option<Box<Pool>>);

impl PoolLease {
    fn take() -> Self {
        let p = POOL.swap(std::ptr::null_mut(), Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: POOL only ever holds a pointer from Box::into_raw (see
            // Drop), and the swap made it ours alone.
            return PoolLease(Some(unsafe { Box::from_raw(p) }));
        }
        if !POOL_MADE.swap(true, Ordering::Relaxed) {
            return PoolLease(Some(Box::new(Pool {
                keys: KeyCache::new(),
                scratch: Scratch::default(),
            })));
        }
        PoolLease(None)
    }
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        let Some(pool) = self.0.take() else {
            return;
        };
        let p = Box::into_raw(pool);
        if POOL
            .compare_exchange(
                std::ptr::null_mut(),
                p,
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_err()
        {
            // Cannot happen (only one lease holds the pool), but if it did
            // this one is surplus: release its strings.
            // SAFETY: `p` came from Box::into_raw just above; the lease is
            // dropped inside a read, with the GIL held.
            let pool = unsafe { Box::from_raw(p) };
            for slot in pool.keys.slots.iter().filter(|s| !s.obj.is_null()) {
                // SAFETY: each slot owns a reference; GIL held.
                unsafe { pyo3::ffi::Py_DECREF(slot.obj) };
            }
        }
    }
}
