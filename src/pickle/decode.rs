//! Reading a pickle stream: the stack machine for the opcodes of the plain
//! data types, generic over what it builds (Python objects in the store,
//! plain values in its unit tests), with CPython's unpickler's rules for the
//! stack, the marks and the memo.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::{op, HIGHEST_PROTOCOL};

/// Tuples nested deeper than this are not hashed (as dict keys or set
/// items): hashing a tuple recurses through its items on the C stack with
/// no depth check, and a crafted stream can nest them by the million.
/// CPython's own pickler cannot write a tuple nested even a third as deep.
pub const MAX_HASHED_TUPLE_DEPTH: u32 = 3000;

/// What the reader knows about an object on its stack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Other,
    /// An exact dict: the str pushed next may be one of its keys.
    Dict,
    /// A tuple, and how deeply tuples nest in it (1 for a tuple of atoms).
    Tuple(u32),
}

pub struct Slot<O> {
    pub obj: O,
    pub kind: Kind,
}

/// Why reading stopped short of a value.
pub enum Stop {
    /// Not handled here: CPython's unpickler reads the whole stream.
    Fallback,
    /// Malformed where CPython would raise too. Becomes `Fallback` (so the
    /// error is CPython's own), unless handing the stream over would let
    /// CPython allocate what the stream merely claims.
    Malformed(&'static str),
    /// Refused: CPython would crash or allocate what the stream merely
    /// claims; raise `UnpicklingError` with this message instead.
    Refused(Cow<'static, str>),
    /// A GET met while reading without a memo: read again with one.
    NeedMemo,
}

/// How the reader makes objects. Every method that can fail returns
/// `Stop::Fallback` when the builder meets something it does not handle
/// (a target of the wrong type, an unhashable key, a failed allocation).
pub trait Builder {
    /// An owned object; dropping it releases it.
    type Obj;
    fn share(&mut self, obj: &Self::Obj) -> Self::Obj;
    fn none(&mut self) -> Result<Self::Obj, Stop>;
    fn boolean(&mut self, value: bool) -> Result<Self::Obj, Stop>;
    fn int(&mut self, value: i64) -> Result<Self::Obj, Stop>;
    /// From two's-complement little-endian bytes, more than 8 of them.
    fn big_int(&mut self, le: &[u8]) -> Result<Self::Obj, Stop>;
    fn float(&mut self, value: f64) -> Result<Self::Obj, Stop>;
    /// UTF-8 decoded with "surrogatepass"; `dict_key` when the reader
    /// expects it to become a dict key.
    fn str(&mut self, utf8: &[u8], dict_key: bool) -> Result<Self::Obj, Stop>;
    fn bytes(&mut self, data: &[u8]) -> Result<Self::Obj, Stop>;
    fn bytearray(&mut self, data: &[u8]) -> Result<Self::Obj, Stop>;
    fn tuple(&mut self, items: std::vec::Drain<'_, Slot<Self::Obj>>) -> Result<Self::Obj, Stop>;
    fn list(&mut self) -> Result<Self::Obj, Stop>;
    /// A new list of `items`.
    fn list_of(&mut self, items: std::vec::Drain<'_, Slot<Self::Obj>>) -> Result<Self::Obj, Stop>;
    /// Extend the exact list `stack[at - 1]` with the items from `at` on.
    /// A list that nothing but that slot refers to may be replaced by a new
    /// list of the same items (no one can tell the two apart).
    fn list_extend(&mut self, stack: &mut Vec<Slot<Self::Obj>>, at: usize) -> Result<(), Stop>;
    fn dict(&mut self) -> Result<Self::Obj, Stop>;
    /// Set key, value pairs (an even count) on an exact dict, in order.
    fn dict_update(
        &mut self,
        dict: &Self::Obj,
        items: std::vec::Drain<'_, Slot<Self::Obj>>,
    ) -> Result<(), Stop>;
    fn set(&mut self) -> Result<Self::Obj, Stop>;
    /// Add to an exact set.
    fn set_update(
        &mut self,
        set: &Self::Obj,
        items: std::vec::Drain<'_, Slot<Self::Obj>>,
    ) -> Result<(), Stop>;
    fn frozenset(&mut self, items: std::vec::Drain<'_, Slot<Self::Obj>>)
        -> Result<Self::Obj, Stop>;
}

/// The outcome for the caller.
pub enum Outcome<O> {
    Value(O),
    Fallback,
    Refused(Cow<'static, str>),
}

/// The reader's working vectors, kept from one read to the next (empty
/// between reads) so that a read allocates none of them.
pub struct Scratch<O> {
    pub stack: Vec<Slot<O>>,
    pub marks: Vec<usize>,
    pub memo: Vec<Option<Slot<O>>>,
    /// The last read needed its memo: start the next one with it.
    pub memo_wanted: bool,
}

impl<O> Default for Scratch<O> {
    fn default() -> Self {
        Scratch {
            stack: Vec::new(),
            marks: Vec::new(),
            memo: Vec::new(),
            memo_wanted: false,
        }
    }
}

/// Vectors grown past this many items by an unusually big value are let go
/// after the read rather than kept.
const SCRATCH_KEPT: usize = 1 << 14;

impl<O> Scratch<O> {
    fn clear(&mut self) {
        clear_keep(&mut self.stack);
        clear_keep(&mut self.marks);
        clear_keep(&mut self.memo);
    }
}

fn clear_keep<T>(v: &mut Vec<T>) {
    v.clear();
    if v.capacity() > SCRATCH_KEPT {
        *v = Vec::new();
    }
}

/// Read one pickle from `data` (what follows its STOP is ignored, as by
/// `pickle.loads`), with `scratch`'s vectors (left empty).
///
/// Most pickles never refer back to an object (no GET), so the memo is
/// skipped: the read runs without it, and reads again from the start with
/// it if a GET turns up. Building objects has no effect beyond them, so the
/// first attempt's are simply dropped. The last read's need decides how
/// the next one starts, which keeps a run of values of one shape from
/// reading twice.
pub fn decode<B: Builder>(
    builder: &mut B,
    data: &[u8],
    scratch: &mut Scratch<B::Obj>,
) -> Outcome<B::Obj> {
    let mut with_memo = scratch.memo_wanted;
    loop {
        let mut machine = Machine {
            input: data,
            rest: data,
            stack: std::mem::take(&mut scratch.stack),
            marks: std::mem::take(&mut scratch.marks),
            memo: Memo::new(std::mem::take(&mut scratch.memo), with_memo),
        };
        let result = machine.run(builder);
        let (claims_big, got) = (machine.memo.claims_big, machine.memo.got);
        scratch.stack = machine.stack;
        scratch.marks = machine.marks;
        scratch.memo = machine.memo.dense;
        drop(machine.memo.sparse);
        scratch.clear();
        scratch.memo_wanted = got;
        return match result {
            Ok(value) => Outcome::Value(value),
            Err(Stop::NeedMemo) => {
                debug_assert!(!with_memo);
                with_memo = true;
                continue;
            }
            Err(Stop::Fallback) => Outcome::Fallback,
            Err(Stop::Malformed(msg)) if claims_big => Outcome::Refused(msg.into()),
            Err(Stop::Malformed(_)) => Outcome::Fallback,
            Err(Stop::Refused(msg)) => Outcome::Refused(msg),
        };
    }
}

const TRUNCATED: &str = "pickle data was truncated";
const UNDERFLOW: &str = "unpickling stack underflow";
const NO_MARK: &str = "could not find MARK";

/// The unpickler's memo. Indices written in order (as every pickler
/// numbers them) live in a vector; others in a map, so a stream that names
/// index 4 billion costs one entry, not 4 billion.
struct Memo<O> {
    /// Off: nothing is stored, and a GET asks for the read to start again
    /// with the memo on.
    on: bool,
    /// A GET was read (with the memo on).
    got: bool,
    dense: Vec<Option<Slot<O>>>,
    /// A B-tree rather than a hash map: making an empty one costs nothing
    /// (a hash map seeds its hasher from thread-local state on every read).
    sparse: BTreeMap<u64, Slot<O>>,
    /// Entries set, the index MEMOIZE uses next (as CPython counts it).
    count: u64,
    /// An index was set far past the stream's size: CPython would size its
    /// memo array by it, so errors are raised here rather than handed over.
    claims_big: bool,
}

impl<O> Memo<O> {
    fn new(dense: Vec<Option<Slot<O>>>, on: bool) -> Self {
        Memo {
            on,
            got: false,
            dense,
            sparse: BTreeMap::new(),
            count: 0,
            claims_big: false,
        }
    }

    /// Whether setting `index` is a claim CPython would size its memo by.
    /// An index past the stream's size is past every index set in order
    /// (each takes an opcode), so with the memo off this alone decides.
    fn far(index: u64, input_len: usize) -> bool {
        index > (input_len as u64).max(1 << 16)
    }

    fn put(&mut self, index: u64, slot: Slot<O>, input_len: usize) {
        if !self.sparse.is_empty() {
            if let Some(old) = self.sparse.get_mut(&index) {
                *old = slot;
                return;
            }
        }
        let dense_len = self.dense.len() as u64;
        if index < dense_len {
            let entry = &mut self.dense[index as usize];
            if entry.is_none() {
                self.count += 1;
            }
            *entry = Some(slot);
        } else if index == dense_len {
            self.dense.push(Some(slot));
            self.count += 1;
        } else {
            if Self::far(index, input_len) {
                self.claims_big = true;
            }
            self.sparse.insert(index, slot);
            self.count += 1;
        }
    }

    fn get(&self, index: u64) -> Option<&Slot<O>> {
        if let Some(Some(slot)) = self.dense.get(index as usize) {
            return Some(slot);
        }
        self.sparse.get(&index)
    }
}

struct Machine<'d, O> {
    input: &'d [u8],
    /// What is left to read: a slice rather than a position, so that each
    /// read is one length check.
    rest: &'d [u8],
    stack: Vec<Slot<O>>,
    marks: Vec<usize>,
    memo: Memo<O>,
}

impl<'d, O> Machine<'d, O> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'d [u8], Stop> {
        if n > self.rest.len() {
            return Err(Stop::Malformed(TRUNCATED));
        }
        let (s, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(s)
    }

    /// A payload whose size CPython allocates before it reads it: a size
    /// past the end is refused here instead of handed over.
    fn take_claimed(&mut self, n: u64) -> Result<&'d [u8], Stop> {
        if n > self.rest.len() as u64 {
            if n > isize::MAX as u64 {
                // CPython raises OverflowError before allocating anything.
                return Err(Stop::Malformed(TRUNCATED));
            }
            return Err(Stop::Refused(TRUNCATED.into()));
        }
        self.take(n as usize)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Stop> {
        let Some((a, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(Stop::Malformed(TRUNCATED));
        };
        self.rest = rest;
        Ok(*a)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, Stop> {
        Ok(self.array::<1>()?[0])
    }

    /// Where the top mark is (CPython's "fence"): nothing below it may be
    /// popped.
    #[inline]
    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop_mark(&mut self) -> Result<usize, Stop> {
        self.marks.pop().ok_or(Stop::Malformed(NO_MARK))
    }

    #[inline]
    fn push(&mut self, obj: O, kind: Kind) {
        self.stack.push(Slot { obj, kind });
        // Picklers memoize right after most objects. With the memo off a
        // MEMOIZE does nothing but check that the stack has a top above the
        // fence, which it has right after a push: take it here rather than
        // through another turn of the loop.
        if !self.memo.on {
            if let Some((&op::MEMOIZE, rest)) = self.rest.split_first() {
                self.rest = rest;
            }
        }
    }

    /// The top of the stack, above the fence.
    fn top(&self) -> Result<&Slot<O>, Stop> {
        if self.stack.len() <= self.fence() {
            return Err(Stop::Malformed(UNDERFLOW));
        }
        Ok(&self.stack[self.stack.len() - 1])
    }

    /// Whether a str pushed now lands where a dict key goes: right after a
    /// dict (SETITEM), or at an even offset past a MARK set on a dict
    /// (SETITEMS). A guess that only decides which strings are cached.
    fn key_position(&self) -> bool {
        let len = self.stack.len();
        match self.marks.last() {
            Some(&m) if m >= 1 && self.stack[m - 1].kind == Kind::Dict => (len - m) % 2 == 0,
            Some(&m) => len > m && self.stack[len - 1].kind == Kind::Dict,
            None => len >= 1 && self.stack[len - 1].kind == Kind::Dict,
        }
    }

    /// Items from `from` on become dict keys or set items (every item when
    /// `step` is 1, every other from `from` when 2): refuse tuples too deep
    /// to hash.
    fn check_hashable(&self, from: usize, step: usize) -> Result<(), Stop> {
        for slot in self.stack[from..].iter().step_by(step) {
            if let Kind::Tuple(depth) = slot.kind {
                if depth > MAX_HASHED_TUPLE_DEPTH {
                    return Err(Stop::Refused(
                        format!(
                            "a tuple nested {depth} deep cannot be a dict key or set item \
                             (limit {MAX_HASHED_TUPLE_DEPTH})"
                        )
                        .into(),
                    ));
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn memo_put<B: Builder<Obj = O>>(&mut self, b: &mut B, index: u64) -> Result<(), Stop> {
        if !self.memo.on {
            self.top()?;
            if Memo::<O>::far(index, self.input.len()) {
                self.memo.claims_big = true;
            }
            return Ok(());
        }
        self.memo_store(b, index)
    }

    fn memo_store<B: Builder<Obj = O>>(&mut self, b: &mut B, index: u64) -> Result<(), Stop> {
        let top = self.top()?;
        let slot = Slot {
            obj: b.share(&top.obj),
            kind: top.kind,
        };
        self.memo.put(index, slot, self.input.len());
        Ok(())
    }

    fn memo_get<B: Builder<Obj = O>>(&mut self, b: &mut B, index: u64) -> Result<(), Stop> {
        if !self.memo.on {
            return Err(Stop::NeedMemo);
        }
        self.memo.got = true;
        let Some(slot) = self.memo.get(index) else {
            return Err(Stop::Malformed("Memo value not found"));
        };
        let (obj, kind) = (b.share(&slot.obj), slot.kind);
        self.push(obj, kind);
        Ok(())
    }

    /// A tuple of the items from `from` on.
    fn make_tuple<B: Builder<Obj = O>>(&mut self, b: &mut B, from: usize) -> Result<(), Stop> {
        let depth = 1 + self.stack[from..]
            .iter()
            .map(|slot| match slot.kind {
                Kind::Tuple(d) => d,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let tuple = b.tuple(self.stack.drain(from..))?;
        self.push(tuple, Kind::Tuple(depth));
        Ok(())
    }

    /// CPython's `do_append`: the items from `x` on go to the list below them.
    fn append<B: Builder<Obj = O>>(&mut self, b: &mut B, x: usize) -> Result<(), Stop> {
        let len = self.stack.len();
        if x > len || x <= self.fence() {
            return Err(Stop::Malformed(UNDERFLOW));
        }
        if len == x {
            return Ok(());
        }
        b.list_extend(&mut self.stack, x)
    }

    /// CPython's `do_setitems`: key, value pairs from `x` on go to the dict
    /// below them.
    fn setitems<B: Builder<Obj = O>>(&mut self, b: &mut B, x: usize) -> Result<(), Stop> {
        let len = self.stack.len();
        if x > len || x <= self.fence() {
            return Err(Stop::Malformed(UNDERFLOW));
        }
        if len == x {
            return Ok(());
        }
        if (len - x) % 2 != 0 {
            return Err(Stop::Malformed("odd number of items for SETITEMS"));
        }
        if self.stack[x - 1].kind != Kind::Dict {
            return Err(Stop::Fallback);
        }
        self.check_hashable(x, 2)?;
        let dict = b.share(&self.stack[x - 1].obj);
        b.dict_update(&dict, self.stack.drain(x..))
    }

    fn run<B: Builder<Obj = O>>(&mut self, b: &mut B) -> Result<O, Stop> {
        loop {
            let Some((&code, rest)) = self.rest.split_first() else {
                // CPython: EOFError("Ran out of input").
                return Err(Stop::Malformed("Ran out of input"));
            };
            self.rest = rest;
            match code {
                op::PROTO => {
                    if self.byte()? > HIGHEST_PROTOCOL {
                        return Err(Stop::Fallback);
                    }
                }
                op::FRAME => {
                    // Frames only group reads; in memory they change nothing
                    // but must not claim more than is there.
                    let n = u64::from_le_bytes(self.array()?);
                    if n > self.rest.len() as u64 {
                        return Err(Stop::Malformed(TRUNCATED));
                    }
                }
                op::STOP => {
                    if !self.marks.is_empty() {
                        return Err(Stop::Fallback);
                    }
                    return match self.stack.pop() {
                        Some(slot) => Ok(slot.obj),
                        None => Err(Stop::Malformed(UNDERFLOW)),
                    };
                }
                op::MARK => self.marks.push(self.stack.len()),
                op::POP => {
                    let len = self.stack.len();
                    if self.marks.last() == Some(&len) {
                        // CPython pops a MARK that sits on top.
                        self.marks.pop();
                    } else if len <= self.fence() {
                        return Err(Stop::Malformed(UNDERFLOW));
                    } else {
                        self.stack.pop();
                    }
                }
                op::POP_MARK => {
                    let m = self.pop_mark()?;
                    self.stack.truncate(m);
                }
                op::DUP => {
                    let top = self.top()?;
                    let (obj, kind) = (b.share(&top.obj), top.kind);
                    self.push(obj, kind);
                }
                op::NONE => {
                    let obj = b.none()?;
                    self.push(obj, Kind::Other);
                }
                op::NEWTRUE | op::NEWFALSE => {
                    let obj = b.boolean(code == op::NEWTRUE)?;
                    self.push(obj, Kind::Other);
                }
                op::BININT => {
                    let v = i32::from_le_bytes(self.array()?);
                    let obj = b.int(i64::from(v))?;
                    self.push(obj, Kind::Other);
                }
                op::BININT1 => {
                    let v = self.byte()?;
                    let obj = b.int(i64::from(v))?;
                    self.push(obj, Kind::Other);
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.array()?);
                    let obj = b.int(i64::from(v))?;
                    self.push(obj, Kind::Other);
                }
                op::LONG1 | op::LONG4 => {
                    let n = if code == op::LONG1 {
                        usize::from(self.byte()?)
                    } else {
                        let n = i32::from_le_bytes(self.array()?);
                        if n < 0 {
                            return Err(Stop::Malformed("LONG pickle has negative byte count"));
                        }
                        n as usize
                    };
                    let body = self.take(n)?;
                    let obj = if n <= 8 {
                        // Sign-extend into 64 bits.
                        let fill = if body.last().is_some_and(|&top| top & 0x80 != 0) {
                            0xff
                        } else {
                            0
                        };
                        let mut le = [fill; 8];
                        le[..n].copy_from_slice(body);
                        b.int(i64::from_le_bytes(le))?
                    } else {
                        b.big_int(body)?
                    };
                    self.push(obj, Kind::Other);
                }
                op::BINFLOAT => {
                    let bits = u64::from_be_bytes(self.array()?);
                    let obj = b.float(f64::from_bits(bits))?;
                    self.push(obj, Kind::Other);
                }
                op::SHORT_BINUNICODE | op::BINUNICODE | op::BINUNICODE8 => {
                    let n = match code {
                        op::SHORT_BINUNICODE => u64::from(self.byte()?),
                        op::BINUNICODE => u64::from(u32::from_le_bytes(self.array()?)),
                        _ => u64::from_le_bytes(self.array()?),
                    };
                    if n > self.rest.len() as u64 {
                        return Err(Stop::Malformed(TRUNCATED));
                    }
                    let utf8 = self.take(n as usize)?;
                    let key = self.key_position();
                    let obj = b.str(utf8, key)?;
                    self.push(obj, Kind::Other);
                }
                op::SHORT_BINBYTES => {
                    let n = usize::from(self.byte()?);
                    let data = self.take(n)?;
                    let obj = b.bytes(data)?;
                    self.push(obj, Kind::Other);
                }
                op::BINBYTES | op::BINBYTES8 | op::BYTEARRAY8 => {
                    let n = if code == op::BINBYTES {
                        u64::from(u32::from_le_bytes(self.array()?))
                    } else {
                        u64::from_le_bytes(self.array()?)
                    };
                    let data = self.take_claimed(n)?;
                    let obj = if code == op::BYTEARRAY8 {
                        b.bytearray(data)?
                    } else {
                        b.bytes(data)?
                    };
                    self.push(obj, Kind::Other);
                }
                op::EMPTY_TUPLE => {
                    let from = self.stack.len();
                    self.make_tuple(b, from)?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(code - op::TUPLE1 + 1);
                    let len = self.stack.len();
                    if len < n || len - n < self.fence() {
                        return Err(Stop::Malformed(UNDERFLOW));
                    }
                    self.make_tuple(b, len - n)?;
                }
                op::TUPLE => {
                    let m = self.pop_mark()?;
                    self.make_tuple(b, m)?;
                }
                op::EMPTY_LIST => {
                    let obj = b.list()?;
                    self.push(obj, Kind::Other);
                }
                op::LIST => {
                    let m = self.pop_mark()?;
                    let list = b.list_of(self.stack.drain(m..))?;
                    self.push(list, Kind::Other);
                }
                op::APPEND => {
                    let len = self.stack.len();
                    if len == 0 {
                        return Err(Stop::Malformed(UNDERFLOW));
                    }
                    self.append(b, len - 1)?;
                }
                op::APPENDS => {
                    let m = self.pop_mark()?;
                    self.append(b, m)?;
                }
                op::EMPTY_DICT => {
                    let obj = b.dict()?;
                    self.push(obj, Kind::Dict);
                }
                op::DICT => {
                    let m = self.pop_mark()?;
                    if (self.stack.len() - m) % 2 != 0 {
                        return Err(Stop::Malformed("odd number of items for DICT"));
                    }
                    self.check_hashable(m, 2)?;
                    let dict = b.dict()?;
                    b.dict_update(&dict, self.stack.drain(m..))?;
                    self.push(dict, Kind::Dict);
                }
                op::SETITEM => {
                    let len = self.stack.len();
                    if len < 2 {
                        return Err(Stop::Malformed(UNDERFLOW));
                    }
                    self.setitems(b, len - 2)?;
                }
                op::SETITEMS => {
                    let m = self.pop_mark()?;
                    self.setitems(b, m)?;
                }
                op::EMPTY_SET => {
                    let obj = b.set()?;
                    self.push(obj, Kind::Other);
                }
                op::ADDITEMS => {
                    let m = self.pop_mark()?;
                    let len = self.stack.len();
                    if m > len || m <= self.fence() {
                        return Err(Stop::Malformed(UNDERFLOW));
                    }
                    if len > m {
                        self.check_hashable(m, 1)?;
                        let set = b.share(&self.stack[m - 1].obj);
                        b.set_update(&set, self.stack.drain(m..))?;
                    }
                }
                op::FROZENSET => {
                    let m = self.pop_mark()?;
                    self.check_hashable(m, 1)?;
                    let obj = b.frozenset(self.stack.drain(m..))?;
                    self.push(obj, Kind::Other);
                }
                op::MEMOIZE => {
                    let index = self.memo.count;
                    self.memo_put(b, index)?;
                }
                op::BINPUT => {
                    let index = u64::from(self.byte()?);
                    self.memo_put(b, index)?;
                }
                op::LONG_BINPUT => {
                    let index = u64::from(u32::from_le_bytes(self.array()?));
                    self.memo_put(b, index)?;
                }
                op::BINGET => {
                    let index = u64::from(self.byte()?);
                    self.memo_get(b, index)?;
                }
                op::LONG_BINGET => {
                    let index = u64::from(u32::from_le_bytes(self.array()?));
                    self.memo_get(b, index)?;
                }
                // Globals, reduce, build, persistent ids, extensions,
                // out-of-band buffers, the text opcodes of protocols 0 and 1
                // and unknown bytes: CPython's unpickler.
                _ => return Err(Stop::Fallback),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reader with a builder of plain Rust values: fuzzed with random
    //! and mutated streams (no panic, no allocation beyond the input's
    //! size), and checked on the limits it enforces.

    use super::*;
    use crate::pickle::test_rng::Rng;
    use std::cell::RefCell;
    use std::rc::Rc;

    enum V {
        None,
        Bool(bool),
        Int(Vec<u8>),
        Float(u64),
        Str(Vec<u8>),
        Bytes(Vec<u8>),
        ByteArray(Vec<u8>),
        Tuple(Vec<Rc<V>>),
        List(RefCell<Vec<Rc<V>>>),
        Dict(RefCell<Vec<(Rc<V>, Rc<V>)>>),
        Set(RefCell<Vec<Rc<V>>>),
        FrozenSet(Vec<Rc<V>>),
    }

    /// A Python-like rendering, to compare what was read.
    fn show(v: &V) -> String {
        show_to(v, usize::MAX)
    }

    /// `show` down to `depth` levels ("..." below), for values that may
    /// contain themselves.
    fn show_to(v: &V, depth: usize) -> String {
        if depth == 0 {
            return "...".into();
        }
        let show = |v: &V| show_to(v, depth - 1);
        let list = |items: &[Rc<V>]| items.iter().map(|i| show(i)).collect::<Vec<_>>().join(", ");
        match v {
            V::None => "None".into(),
            V::Bool(b) => if *b { "True" } else { "False" }.into(),
            V::Int(le) => {
                let mut wide = [if le.last().is_some_and(|&b| b & 0x80 != 0) {
                    0xff
                } else {
                    0
                }; 16];
                wide[..le.len().min(16)].copy_from_slice(&le[..le.len().min(16)]);
                i128::from_le_bytes(wide).to_string()
            }
            V::Float(bits) => format!("{:?}", f64::from_bits(*bits)),
            V::Str(s) => format!("{:?}", String::from_utf8_lossy(s)),
            V::Bytes(b) => format!("b{:?}", String::from_utf8_lossy(b)),
            V::ByteArray(b) => format!("bytearray(b{:?})", String::from_utf8_lossy(b)),
            V::Tuple(items) => format!("({})", list(items)),
            V::List(items) => format!("[{}]", list(&items.borrow())),
            V::Dict(items) => {
                let pairs: Vec<_> = items
                    .borrow()
                    .iter()
                    .map(|(k, v)| format!("{}: {}", show(k), show(v)))
                    .collect();
                format!("{{{}}}", pairs.join(", "))
            }
            V::Set(items) => format!("{{{}}}", list(&items.borrow())),
            V::FrozenSet(items) => format!("frozenset({{{}}})", list(items)),
        }
    }

    fn unhashable(v: &V) -> bool {
        matches!(v, V::List(_) | V::Dict(_) | V::Set(_) | V::ByteArray(_))
    }

    /// Builds plain Rust values; keeps every mutable container it made, so
    /// that a test can break the reference cycles of self-containing values
    /// (see `read_and_drop`).
    #[derive(Default)]
    struct Plain {
        containers: Vec<Rc<V>>,
    }

    impl Builder for Plain {
        type Obj = Rc<V>;
        fn share(&mut self, obj: &Rc<V>) -> Rc<V> {
            obj.clone()
        }
        fn none(&mut self) -> Result<Rc<V>, Stop> {
            Ok(Rc::new(V::None))
        }
        fn boolean(&mut self, value: bool) -> Result<Rc<V>, Stop> {
            Ok(Rc::new(V::Bool(value)))
        }
        fn int(&mut self, value: i64) -> Result<Rc<V>, Stop> {
            Ok(Rc::new(V::Int(value.to_le_bytes().to_vec())))
        }
        fn big_int(&mut self, le: &[u8]) -> Result<Rc<V>, Stop> {
            Ok(Rc::new(V::Int(le.to_vec())))
        }
        fn float(&mut self, value: f64) -> Result<Rc<V>, Stop> {
            Ok(Rc::new(V::Float(value.to_bits())))
        }
        fn str(&mut self, utf8: &[u8], _dict_key: bool) -> Result<Rc<V>, Stop> {
            Ok(Rc::new(V::Str(utf8.to_vec())))
        }
        fn bytes(&mut self, data: &[u8]) -> Result<Rc<V>, Stop> {
            Ok(Rc::new(V::Bytes(data.to_vec())))
        }
        fn bytearray(&mut self, data: &[u8]) -> Result<Rc<V>, Stop> {
            Ok(Rc::new(V::ByteArray(data.to_vec())))
        }
        fn tuple(&mut self, items: std::vec::Drain<'_, Slot<Rc<V>>>) -> Result<Rc<V>, Stop> {
            Ok(Rc::new(V::Tuple(items.map(|s| s.obj).collect())))
        }
        fn list(&mut self) -> Result<Rc<V>, Stop> {
            let list = Rc::new(V::List(RefCell::new(Vec::new())));
            self.containers.push(list.clone());
            Ok(list)
        }
        fn list_of(&mut self, items: std::vec::Drain<'_, Slot<Rc<V>>>) -> Result<Rc<V>, Stop> {
            let list = Rc::new(V::List(RefCell::new(items.map(|s| s.obj).collect())));
            self.containers.push(list.clone());
            Ok(list)
        }
        fn list_extend(&mut self, stack: &mut Vec<Slot<Rc<V>>>, at: usize) -> Result<(), Stop> {
            let list = stack[at - 1].obj.clone();
            match &*list {
                V::List(l) => {
                    l.borrow_mut().extend(stack.drain(at..).map(|s| s.obj));
                    Ok(())
                }
                _ => Err(Stop::Fallback),
            }
        }
        fn dict(&mut self) -> Result<Rc<V>, Stop> {
            let dict = Rc::new(V::Dict(RefCell::new(Vec::new())));
            self.containers.push(dict.clone());
            Ok(dict)
        }
        fn dict_update(
            &mut self,
            dict: &Rc<V>,
            mut items: std::vec::Drain<'_, Slot<Rc<V>>>,
        ) -> Result<(), Stop> {
            let V::Dict(d) = &**dict else {
                return Err(Stop::Fallback);
            };
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                if unhashable(&k.obj) {
                    return Err(Stop::Fallback);
                }
                d.borrow_mut().push((k.obj, v.obj));
            }
            Ok(())
        }
        fn set(&mut self) -> Result<Rc<V>, Stop> {
            let set = Rc::new(V::Set(RefCell::new(Vec::new())));
            self.containers.push(set.clone());
            Ok(set)
        }
        fn set_update(
            &mut self,
            set: &Rc<V>,
            items: std::vec::Drain<'_, Slot<Rc<V>>>,
        ) -> Result<(), Stop> {
            let V::Set(s) = &**set else {
                return Err(Stop::Fallback);
            };
            for item in items {
                if unhashable(&item.obj) {
                    return Err(Stop::Fallback);
                }
                s.borrow_mut().push(item.obj);
            }
            Ok(())
        }
        fn frozenset(&mut self, items: std::vec::Drain<'_, Slot<Rc<V>>>) -> Result<Rc<V>, Stop> {
            let items: Vec<_> = items.map(|s| s.obj).collect();
            if items.iter().any(|v| unhashable(v)) {
                return Err(Stop::Fallback);
            }
            Ok(Rc::new(V::FrozenSet(items)))
        }
    }

    fn read(data: &[u8]) -> Outcome<Rc<V>> {
        decode(&mut Plain::default(), data, &mut Scratch::default())
    }

    /// Read `data` and drop the outcome, breaking the cycles a stream that
    /// puts a container into itself makes (which `Rc` alone would leak).
    fn read_and_drop(data: &[u8], scratch: &mut Scratch<Rc<V>>) -> String {
        let mut plain = Plain::default();
        let shown = match decode(&mut plain, data, scratch) {
            Outcome::Value(v) => show_to(&v, 6),
            Outcome::Fallback => "fallback".into(),
            Outcome::Refused(msg) => format!("refused: {msg}"),
        };
        assert!(scratch.stack.is_empty() && scratch.marks.is_empty() && scratch.memo.is_empty());
        for container in &plain.containers {
            match &**container {
                V::List(items) | V::Set(items) => items.borrow_mut().clear(),
                V::Dict(items) => items.borrow_mut().clear(),
                _ => {}
            }
        }
        shown
    }

    /// pickle.dumps({"a": [1, 2.5, None, True], "b": (b"xy", "é"),
    /// "c": {3}, "d": frozenset({4}), "e": bytearray(b"z"), "f": -2**70}, 5)
    const SAMPLE: &[u8] = b"\x80\x05\x95[\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88e\x8c\x01b\x94C\x02xy\x94\x8c\x02\xc3\xa9\x94\x86\x94\x8c\x01c\x94\x8f\x94(K\x03\x90\x8c\x01d\x94(K\x04\x91\x94\x8c\x01e\x94\x96\x01\x00\x00\x00\x00\x00\x00\x00z\x94\x8c\x01f\x94\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\xc0u.";

    #[test]
    fn reads_a_plain_pickle() {
        let Outcome::Value(v) = read(SAMPLE) else {
            panic!("sample not read");
        };
        assert_eq!(
            show(&v),
            "{\"a\": [1, 2.5, None, True], \"b\": (b\"xy\", \"é\"), \"c\": {3}, \
             \"d\": frozenset({4}), \"e\": bytearray(b\"z\"), \"f\": -1180591620717411303424}"
        );
    }

    /// pickle.dumps([s, s], 4) and pickle.dumps([s, [s]], 2) with s = "x":
    /// the second item is a GET of the first.
    const SHARED_4: &[u8] =
        b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00]\x94(\x8c\x01x\x94h\x01e.";
    const SHARED_2: &[u8] = b"\x80\x02]q\x00(X\x01\x00\x00\x00xq\x01]q\x02h\x01ae.";

    #[test]
    fn a_get_reads_again_with_the_memo_and_keeps_the_sharing() {
        let mut scratch = Scratch::default();
        for (data, nested) in [(SHARED_4, false), (SHARED_2, true), (SAMPLE, false)] {
            // Each read with the memo first off, then first on.
            for wanted in [false, true] {
                scratch.memo_wanted = wanted;
                let Outcome::Value(v) = decode(&mut Plain::default(), data, &mut scratch) else {
                    panic!("not read");
                };
                assert!(scratch.stack.is_empty() && scratch.memo.is_empty());
                let V::List(items) = &*v else {
                    assert!(data == SAMPLE, "not a list");
                    // Read once without a GET: the next read starts without the memo.
                    assert!(!scratch.memo_wanted);
                    continue;
                };
                let items = items.borrow();
                let second = if nested {
                    let V::List(inner) = &*items[1] else {
                        panic!("not nested")
                    };
                    let x = inner.borrow()[0].clone();
                    x
                } else {
                    items[1].clone()
                };
                // One object, as pickle.loads makes it, not two equal ones.
                assert!(Rc::ptr_eq(&items[0], &second));
                assert!(scratch.memo_wanted);
            }
        }
    }

    #[test]
    fn every_truncation_is_malformed_not_a_panic() {
        for cut in 0..SAMPLE.len() - 1 {
            assert!(
                !matches!(read(&SAMPLE[..cut]), Outcome::Value(_)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn huge_declared_bytes_are_refused_without_allocating() {
        for code in [op::BINBYTES8, op::BYTEARRAY8] {
            let mut data = vec![op::PROTO, 5, code];
            data.extend_from_slice(&(1u64 << 40).to_le_bytes());
            data.push(op::STOP);
            assert!(matches!(read(&data), Outcome::Refused(_)));
        }
        let data = [op::PROTO, 3, op::BINBYTES, 0xff, 0xff, 0xff, 0xff, op::STOP];
        assert!(matches!(read(&data), Outcome::Refused(_)));
    }

    #[test]
    fn far_memo_indexes_cost_one_entry_and_errors_after_them_are_refused() {
        let mut data = vec![
            op::PROTO,
            2,
            op::NONE,
            op::LONG_BINPUT,
            0xff,
            0xff,
            0xff,
            0xff,
        ];
        data.extend_from_slice(&[
            op::LONG_BINGET,
            0xff,
            0xff,
            0xff,
            0xff,
            op::TUPLE2,
            op::STOP,
        ]);
        assert!(matches!(read(&data), Outcome::Value(_)));
        // The same with a GET of an index never set: CPython would size its
        // memo by 2**32 first, so the error is raised here.
        let len = data.len();
        data[len - 6] = 0xfe;
        assert!(matches!(read(&data), Outcome::Refused(_)));
    }

    #[test]
    fn deep_tuple_keys_are_refused() {
        let depth = MAX_HASHED_TUPLE_DEPTH as usize + 1;
        let mut data = vec![op::PROTO, 4, op::EMPTY_DICT, op::EMPTY_TUPLE];
        data.extend(std::iter::repeat_n(op::TUPLE1, depth - 1));
        data.extend_from_slice(&[op::NONE, op::SETITEM, op::STOP]);
        assert!(matches!(read(&data), Outcome::Refused(_)));
        // One level less is a key like any other.
        data.remove(4);
        assert!(matches!(read(&data), Outcome::Value(_)));
    }

    #[test]
    fn other_opcodes_fall_back() {
        let global =
            b"\x80\x04\x95\x14\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x03len\x93.";
        assert!(matches!(read(global), Outcome::Fallback));
        assert!(matches!(read(b"I1\n."), Outcome::Fallback));
    }

    /// Opcodes this reader handles, to make random streams that get far.
    const CODES: &[u8] = &[
        op::MARK,
        op::STOP,
        op::POP,
        op::POP_MARK,
        op::DUP,
        op::BININT,
        op::BININT1,
        op::BININT2,
        op::NONE,
        op::BINUNICODE,
        op::APPEND,
        op::DICT,
        op::EMPTY_DICT,
        op::APPENDS,
        op::BINGET,
        op::LONG_BINGET,
        op::LIST,
        op::EMPTY_LIST,
        op::BINPUT,
        op::LONG_BINPUT,
        op::SETITEM,
        op::TUPLE,
        op::EMPTY_TUPLE,
        op::SETITEMS,
        op::BINFLOAT,
        op::PROTO,
        op::TUPLE1,
        op::TUPLE2,
        op::TUPLE3,
        op::NEWTRUE,
        op::NEWFALSE,
        op::LONG1,
        op::LONG4,
        op::BINBYTES,
        op::SHORT_BINBYTES,
        op::SHORT_BINUNICODE,
        op::BINUNICODE8,
        op::BINBYTES8,
        op::EMPTY_SET,
        op::ADDITEMS,
        op::FROZENSET,
        op::MEMOIZE,
        op::FRAME,
        op::BYTEARRAY8,
    ];

    #[test]
    fn fuzz_random_and_mutated_streams() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // One scratch for all, as the store keeps one: what a read leaves
        // behind (its vectors' room, whether it needed a memo) must not
        // change the next one.
        let mut scratch = Scratch::default();
        for case in 0..100_000 {
            let data: Vec<u8> = if case % 2 == 0 {
                let mut d = SAMPLE.to_vec();
                for _ in 0..1 + rng.below(4) {
                    match rng.below(4) {
                        0 => {
                            let i = rng.below(d.len());
                            d[i] = rng.next() as u8;
                        }
                        1 => {
                            let i = rng.below(d.len());
                            d.remove(i);
                        }
                        2 => {
                            let i = rng.below(d.len());
                            d.insert(i, CODES[rng.below(CODES.len())]);
                        }
                        _ => {
                            let i = rng.below(d.len());
                            let j = rng.below(d.len());
                            d.swap(i, j);
                        }
                    }
                }
                d
            } else {
                let len = rng.below(64);
                (0..len)
                    .map(|_| {
                        if rng.below(3) == 0 {
                            rng.next() as u8
                        } else {
                            CODES[rng.below(CODES.len())]
                        }
                    })
                    .collect()
            };
            // Whatever the outcome, it comes back (no panic, no hang), and
            // nothing read exceeds the input.
            let shown = read_and_drop(&data, &mut scratch);
            // Read with the memo from the start, the outcome is the same:
            // skipping it until a GET turns up changes nothing.
            let mut with_memo = Scratch {
                memo_wanted: true,
                ..Scratch::default()
            };
            assert_eq!(read_and_drop(&data, &mut with_memo), shown, "{data:?}");
        }
    }
}
