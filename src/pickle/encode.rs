//! Writing a pickle stream for the plain data types, byte for byte as
//! CPython's `_pickle.c` writes it for protocols 2 to 5: the same opcodes,
//! memo, batches and frames.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::op;
use super::pyapi::{IntValue, Obj, OutBytes, View};
use crate::errors::StoreError;

/// CPython's pickler commits a frame once it holds this much.
const FRAME_SIZE_TARGET: usize = 64 * 1024;
/// Frames smaller than this are dropped (their contents stay, unframed).
const FRAME_SIZE_MIN: usize = 4;
const FRAME_HEADER_SIZE: usize = 9;
/// Items per APPENDS / SETITEMS / ADDITEMS.
const BATCHSIZE: usize = 1000;
/// Containers nested deeper than this go to CPython's pickler, which applies
/// its own recursion limit (and raises its own `RecursionError`).
const MAX_DEPTH: u32 = 200;

/// Why the native walk stopped.
enum Abort {
    /// Something this encoder does not write: CPython's pickler takes the
    /// whole value.
    Fallback,
    /// Out of memory for the output.
    NoMemory,
}

type Step = Result<(), Abort>;

pub fn dumps<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    protocol: i32,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    if !(2..=i32::from(super::HIGHEST_PROTOCOL)).contains(&protocol) {
        return Ok(None);
    }
    let Some(out) = OutBytes::new(py) else {
        return Err(StoreError::OutOfMemory.into());
    };
    let mut enc = Encoder {
        out,
        proto: protocol as u8,
        framing: false,
        frame_start: None,
        memo: Memo::default(),
        in_shared_tuples: 0,
        depth: 0,
        scratch: Vec::new(),
    };
    // SAFETY: `obj` is alive for this call (the caller's Bound), the GIL is
    // held, and the walk below runs no Python code and makes no object the
    // collector tracks, so nothing can free or change the graph meanwhile.
    let root = unsafe { Obj::new(obj.as_ptr()) };
    match enc.dump(root) {
        Ok(()) => Ok(Some(enc.out.finish(py)?)),
        Err(Abort::Fallback) => Ok(None),
        Err(Abort::NoMemory) => {
            Err(PyErr::take(py).unwrap_or_else(|| StoreError::OutOfMemory.into()))
        }
    }
}

struct Encoder<'a> {
    out: OutBytes,
    proto: u8,
    /// Protocol 4+ wraps the stream in frames.
    framing: bool,
    /// Where the open frame's header is, if a frame is open.
    frame_start: Option<usize>,
    memo: Memo<'a>,
    /// How many shared tuples are being written around the current object.
    /// A tuple is memoized only after its items, so a tuple that contains
    /// itself has its items written twice, objects referenced once included:
    /// inside one, every object goes through the memo.
    in_shared_tuples: u32,
    depth: u32,
    /// UTF-8 of strings that do not cache their own.
    scratch: Vec<u8>,
}

impl<'a> Encoder<'a> {
    fn dump(&mut self, root: Obj<'a>) -> Step {
        // The PROTO header precedes the first frame.
        self.write(&[op::PROTO, self.proto])?;
        self.framing = self.proto >= 4;
        self.save(root)?;
        self.write(&[op::STOP])?;
        self.commit_frame();
        Ok(())
    }

    /// Append `data`, opening a frame first if framing and none is open.
    #[inline]
    fn write(&mut self, data: &[u8]) -> Step {
        if self.framing && self.frame_start.is_none() {
            if !self.out.reserve(FRAME_HEADER_SIZE + data.len()) {
                return Err(Abort::NoMemory);
            }
            self.frame_start = Some(self.out.len());
            // The header is filled in when the frame is committed.
            self.out.skip(FRAME_HEADER_SIZE);
        } else if !self.out.reserve(data.len()) {
            return Err(Abort::NoMemory);
        }
        self.out.push(data);
        Ok(())
    }

    /// Close the open frame: write its header, or remove the header if the
    /// frame is too small to be worth one.
    fn commit_frame(&mut self) {
        let Some(start) = self.frame_start.take() else {
            return;
        };
        let frame_len = self.out.len() - start - FRAME_HEADER_SIZE;
        if frame_len >= FRAME_SIZE_MIN {
            let mut header = [op::FRAME; FRAME_HEADER_SIZE];
            header[1..].copy_from_slice(&(frame_len as u64).to_le_bytes());
            self.out.write_at(start, &header);
        } else {
            self.out.close_gap(start, start + FRAME_HEADER_SIZE);
        }
    }

    /// Before every object: commit a frame that has reached the target size.
    #[inline]
    fn opcode_boundary(&mut self) {
        if let Some(start) = self.frame_start {
            if self.out.len() - start - FRAME_HEADER_SIZE >= FRAME_SIZE_TARGET {
                self.commit_frame();
            }
        }
    }

    /// A counted payload: large ones go outside any frame, as CPython's
    /// `_Pickler_write_bytes` does.
    #[inline(always)]
    fn write_payload<const H: usize>(&mut self, header: &[u8; H], data: &[u8]) -> Step {
        if data.len() >= FRAME_SIZE_TARGET {
            return self.write_big_payload(header, data);
        }
        // Header and data in one reservation (and in the same frame).
        let n = H + data.len();
        if self.framing && self.frame_start.is_none() {
            if !self.out.reserve(FRAME_HEADER_SIZE + n) {
                return Err(Abort::NoMemory);
            }
            self.frame_start = Some(self.out.len());
            self.out.skip(FRAME_HEADER_SIZE);
        } else if !self.out.reserve(n) {
            return Err(Abort::NoMemory);
        }
        self.out.push(header);
        self.out.push_var(data);
        Ok(())
    }

    /// A payload of a frame's size or more is written outside any frame.
    #[cold]
    fn write_big_payload(&mut self, header: &[u8], data: &[u8]) -> Step {
        self.commit_frame();
        let framing = std::mem::replace(&mut self.framing, false);
        self.write(header)?;
        self.write(data)?;
        self.framing = framing;
        Ok(())
    }

    fn save(&mut self, obj: Obj<'a>) -> Step {
        self.opcode_boundary();
        match obj.view() {
            // Atoms are never memoized.
            View::None => self.write(&[op::NONE]),
            View::Bool(true) => self.write(&[op::NEWTRUE]),
            View::Bool(false) => self.write(&[op::NEWFALSE]),
            View::Int(int) => self.save_int(int),
            View::Float(value) => {
                let mut b = [op::BINFLOAT; 9];
                b[1..].copy_from_slice(&value.to_bits().to_be_bytes());
                self.write(&b)
            }
            view => {
                if let Some(index) = self.memo_get(obj) {
                    return self.write_get(index);
                }
                match view {
                    View::Str(s) => self.save_str(s),
                    View::Bytes(data) => self.save_bytes(obj, data),
                    _ => {
                        if self.depth >= MAX_DEPTH {
                            return Err(Abort::Fallback);
                        }
                        self.depth += 1;
                        let done = self.save_container(obj, view);
                        self.depth -= 1;
                        done
                    }
                }
            }
        }
    }

    fn save_container(&mut self, obj: Obj<'a>, view: View<'a>) -> Step {
        match view {
            View::Dict(dict) => self.save_dict(dict),
            View::List(items) => self.save_list(obj, items),
            View::Tuple(items) => self.save_tuple(obj, items),
            View::Set(set) if self.proto >= 4 => self.save_set(set),
            View::FrozenSet(set) if self.proto >= 4 => self.save_frozenset(set),
            View::ByteArray(data) if self.proto >= 5 => {
                let mut header = [op::BYTEARRAY8; 9];
                header[1..].copy_from_slice(&(data.len() as u64).to_le_bytes());
                self.write_payload(&header, data)?;
                self.memo_put(obj)
            }
            // Sets before protocol 4 and bytearray before 5 are written
            // through a reduce (a global and its arguments), subclasses and
            // every other type through their own reduce: CPython's pickler.
            _ => Err(Abort::Fallback),
        }
    }

    fn save_int(&mut self, int: Obj<'a>) -> Step {
        match int.int_value() {
            Some(IntValue::Small(v)) if i64::from(v as i32) == v => {
                let b = (v as i32).to_le_bytes();
                if b[2] != 0 || b[3] != 0 {
                    self.write(&[op::BININT, b[0], b[1], b[2], b[3]])
                } else if b[1] != 0 {
                    self.write(&[op::BININT2, b[0], b[1]])
                } else {
                    self.write(&[op::BININT1, b[0]])
                }
            }
            Some(IntValue::Small(v)) => self.write_long(&v.to_le_bytes()),
            Some(IntValue::Big(bytes)) => self.write_long(&bytes),
            None => Err(Abort::Fallback),
        }
    }

    /// LONG1 / LONG4 with the shortest two's-complement form, which is what
    /// CPython's byte count (bits / 8 + 1, less a redundant 0xff) comes to.
    fn write_long(&mut self, le: &[u8]) -> Step {
        let mut n = le.len();
        while n > 1 {
            let sign_clear = le[n - 2] & 0x80 == 0;
            if (le[n - 1] == 0 && sign_clear) || (le[n - 1] == 0xff && !sign_clear) {
                n -= 1;
            } else {
                break;
            }
        }
        let body = &le[..n];
        if n < 256 {
            self.write(&[op::LONG1, n as u8])?;
        } else if n <= 0x7fff_ffff {
            let size = (n as u32).to_le_bytes();
            self.write(&[op::LONG4, size[0], size[1], size[2], size[3]])?;
        } else {
            return Err(Abort::Fallback);
        }
        // Unlike bytes, an int's body stays inside the frame.
        self.write(body)
    }

    fn save_str(&mut self, s: Obj<'a>) -> Step {
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = match s.str_utf8(&mut scratch) {
            Some(utf8) => {
                let n = utf8.len();
                if n <= 0xff && self.proto >= 4 {
                    self.write_payload(&[op::SHORT_BINUNICODE, n as u8], utf8)
                } else if n <= u32::MAX as usize {
                    let mut header = [op::BINUNICODE; 5];
                    header[1..].copy_from_slice(&(n as u32).to_le_bytes());
                    self.write_payload(&header, utf8)
                } else if self.proto >= 4 {
                    let mut header = [op::BINUNICODE8; 9];
                    header[1..].copy_from_slice(&(n as u64).to_le_bytes());
                    self.write_payload(&header, utf8)
                } else {
                    Err(Abort::Fallback)
                }
            }
            None => Err(Abort::Fallback),
        };
        self.scratch = scratch;
        result?;
        self.memo_put(s)
    }

    fn save_bytes(&mut self, obj: Obj<'a>, data: &[u8]) -> Step {
        let n = data.len();
        if self.proto < 3 {
            // Protocol 2 writes bytes as a call to `_codecs.encode`.
            return Err(Abort::Fallback);
        }
        if n <= 0xff {
            self.write_payload(&[op::SHORT_BINBYTES, n as u8], data)?;
        } else if n <= u32::MAX as usize {
            let mut header = [op::BINBYTES; 5];
            header[1..].copy_from_slice(&(n as u32).to_le_bytes());
            self.write_payload(&header, data)?;
        } else if self.proto >= 4 {
            let mut header = [op::BINBYTES8; 9];
            header[1..].copy_from_slice(&(n as u64).to_le_bytes());
            self.write_payload(&header, data)?;
        } else {
            return Err(Abort::Fallback);
        }
        self.memo_put(obj)
    }

    fn save_tuple(&mut self, obj: Obj<'a>, items: &'a [Obj<'a>]) -> Step {
        let n = items.len();
        if n == 0 {
            // The empty tuple is a singleton and never memoized.
            return self.write(&[op::EMPTY_TUPLE]);
        }
        if n > 3 {
            self.write(&[op::MARK])?;
        }
        // Only a shared tuple can be met again while its items are written.
        let shared = obj.shared();
        self.in_shared_tuples += u32::from(shared);
        for &item in items {
            self.save(item)?;
        }
        self.in_shared_tuples -= u32::from(shared);
        // Memoized while its items were written: the tuple contains itself
        // (through a list, say). Drop what was pushed and fetch it.
        if let Some(index) = self.memo_get(obj) {
            if n > 3 {
                self.write(&[op::POP_MARK])?;
            } else {
                for _ in 0..n {
                    self.write(&[op::POP])?;
                }
            }
            return self.write_get(index);
        }
        let code = match n {
            1 => op::TUPLE1,
            2 => op::TUPLE2,
            3 => op::TUPLE3,
            _ => op::TUPLE,
        };
        self.write(&[code])?;
        self.memo_put(obj)
    }

    fn save_list(&mut self, obj: Obj<'a>, items: &'a [Obj<'a>]) -> Step {
        self.write(&[op::EMPTY_LIST])?;
        self.memo_put(obj)?;
        match items.len() {
            0 => Ok(()),
            1 => {
                self.save(items[0])?;
                self.write(&[op::APPEND])
            }
            // Lists end with their last full batch (no empty one after).
            _ => {
                for batch in items.chunks(BATCHSIZE) {
                    self.write(&[op::MARK])?;
                    for &item in batch {
                        self.save(item)?;
                    }
                    self.write(&[op::APPENDS])?;
                }
                Ok(())
            }
        }
    }

    fn save_dict(&mut self, dict: Obj<'a>) -> Step {
        self.write(&[op::EMPTY_DICT])?;
        self.memo_put(dict)?;
        let len = dict.container_len();
        if len == 0 {
            return Ok(());
        }
        if len == 1 {
            for (key, value) in dict.dict_items() {
                self.save(key)?;
                self.save(value)?;
            }
            return self.write(&[op::SETITEM]);
        }
        // Batches until one comes out short: a dict of exactly k * 1000
        // items ends with an empty MARK SETITEMS, as in CPython.
        let mut items = dict.dict_items();
        loop {
            self.write(&[op::MARK])?;
            let mut in_batch = 0;
            for (key, value) in items.by_ref() {
                self.save(key)?;
                self.save(value)?;
                in_batch += 1;
                if in_batch == BATCHSIZE {
                    break;
                }
            }
            self.write(&[op::SETITEMS])?;
            if in_batch < BATCHSIZE {
                return Ok(());
            }
        }
    }

    fn save_set(&mut self, set: Obj<'a>) -> Step {
        self.write(&[op::EMPTY_SET])?;
        self.memo_put(set)?;
        if set.container_len() == 0 {
            return Ok(());
        }
        // As for dicts, but even one item goes in a batch.
        let mut items = set.set_items();
        loop {
            self.write(&[op::MARK])?;
            let mut in_batch = 0;
            for item in items.by_ref() {
                self.save(item)?;
                in_batch += 1;
                if in_batch == BATCHSIZE {
                    break;
                }
            }
            self.write(&[op::ADDITEMS])?;
            if in_batch < BATCHSIZE {
                return Ok(());
            }
        }
    }

    fn save_frozenset(&mut self, set: Obj<'a>) -> Step {
        self.write(&[op::MARK])?;
        for item in set.set_items() {
            self.save(item)?;
        }
        if let Some(index) = self.memo_get(set) {
            self.write(&[op::POP_MARK])?;
            return self.write_get(index);
        }
        self.write(&[op::FROZENSET])?;
        self.memo_put(set)
    }

    /// The object's memo index, if memoized. An object referenced from one
    /// place only can be met again only inside a shared tuple.
    #[inline]
    fn memo_get(&self, obj: Obj<'a>) -> Option<u32> {
        if self.memo.is_empty() || (self.in_shared_tuples == 0 && !obj.shared()) {
            return None;
        }
        self.memo.get(obj)
    }

    fn memo_put(&mut self, obj: Obj<'a>) -> Step {
        let keep = self.in_shared_tuples > 0 || obj.shared();
        let index = self.memo.put(obj, keep).ok_or(Abort::Fallback)?;
        if self.proto >= 4 {
            self.write(&[op::MEMOIZE])
        } else if index < 256 {
            self.write(&[op::BINPUT, index as u8])
        } else {
            let b = index.to_le_bytes();
            self.write(&[op::LONG_BINPUT, b[0], b[1], b[2], b[3]])
        }
    }

    fn write_get(&mut self, index: u32) -> Step {
        if index < 256 {
            self.write(&[op::BINGET, index as u8])
        } else {
            let b = index.to_le_bytes();
            self.write(&[op::LONG_BINGET, b[0], b[1], b[2], b[3]])
        }
    }
}

/// Objects the memo holds inline, before it needs a table.
const FEW: usize = 16;

/// The pickler's memo: object identity -> memo index. Objects the encoder
/// cannot meet twice are not stored, though they still take an index.
/// The first few live in two small arrays searched in order, so that a
/// value with few shared objects (most) allocates no table.
#[derive(Default)]
struct Memo<'a> {
    few: [usize; FEW],
    few_index: [u32; FEW],
    few_len: usize,
    /// The rest: open addressing by address; 0 marks a free slot.
    slots: Vec<(usize, u32)>,
    used: usize,
    next: u32,
    _graph: std::marker::PhantomData<Obj<'a>>,
}

impl<'a> Memo<'a> {
    #[inline]
    fn slot_of(&self, addr: usize) -> usize {
        // Objects are at least 16-byte aligned: drop the zero bits, mix.
        let mixed = (addr >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 32) & (self.slots.len() - 1)
    }

    fn is_empty(&self) -> bool {
        self.few_len == 0
    }

    #[inline]
    fn get(&self, obj: Obj<'a>) -> Option<u32> {
        let addr = obj.ptr() as usize;
        if let Some(i) = self.few[..self.few_len].iter().position(|&a| a == addr) {
            return Some(self.few_index[i]);
        }
        if self.used == 0 {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.slot_of(addr);
        loop {
            let (key, index) = self.slots[i];
            if key == addr {
                return Some(index);
            }
            if key == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// The object's memo index; `None` past the 2**32 indices the
    /// opcodes can name.
    fn put(&mut self, obj: Obj<'a>, keep: bool) -> Option<u32> {
        let index = self.next;
        self.next = index.checked_add(1)?;
        if keep && self.few_len < FEW {
            self.few[self.few_len] = obj.ptr() as usize;
            self.few_index[self.few_len] = index;
            self.few_len += 1;
        } else if keep {
            if (self.used + 1) * 2 > self.slots.len() {
                self.grow();
            }
            let addr = obj.ptr() as usize;
            let mask = self.slots.len() - 1;
            let mut i = self.slot_of(addr);
            while self.slots[i].0 != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = (addr, index);
            self.used += 1;
        }
        Some(index)
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        self.slots = vec![(0, 0); (old.len() * 2).max(16)];
        let mask = self.slots.len() - 1;
        for (addr, index) in old.into_iter().filter(|&(addr, _)| addr != 0) {
            let mut i = self.slot_of(addr);
            while self.slots[i].0 != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = (addr, index);
        }
    }
}
