//! The "safe" serializer's codec: plain values through the native codec, and
//! every other stream through CPython's unpickler restricted to an allow-list
//! of globals (its helpers wrapped in argument checks), once a scan of the
//! stream has refused what no allowed value needs.
//!
//! Why a scan as well as `find_class`: the unpickler resolves extension codes
//! through a process-wide cache that skips `find_class`, asks a persistent-id
//! hook or out-of-band buffers for objects, lets `BUILD` set attributes on a
//! class it was handed (changing that class for the whole process), and
//! hashes tuples with no depth limit on the C stack. The scan walks every
//! opcode the unpickler would run, before it runs any, and refuses those.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString, PyTuple, PyType};

use super::decode::MAX_HASHED_TUPLE_DEPTH;
use super::{op, HIGHEST_PROTOCOL};
use crate::errors::{unsafe_value_error, unsafe_value_error_type, StoreError};

/// A `BUILD` state (what `__setstate__` gets) nested deeper than this is
/// refused. The object it lands in may already sit inside tuples that were
/// measured before it got the state, so its hash can recurse through this
/// many more levels per Python-level `__hash__` call; Python's recursion
/// limit bounds the number of such calls, this bounds the C stack between
/// two of them. A UUID's state is one level; a widened class's rarely more.
const BUILD_STATE_LIMIT: u32 = 16;

/// The globals named by `allowed=`, on top of the fixed set. Cheap to clone.
#[derive(Clone, Default)]
pub struct AllowList {
    extra: Arc<HashSet<String>>,
}

impl AllowList {
    /// From `allowed=`: None, or an iterable of `"module.qualname"` strings.
    pub fn from_py(allowed: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let Some(allowed) = allowed.filter(|a| !a.is_none()) else {
            return Ok(Self::default());
        };
        if allowed.is_instance_of::<PyString>() {
            return Err(StoreError::AllowedIsOneString.into());
        }
        let mut extra = HashSet::new();
        for item in allowed.try_iter()? {
            let item = item?;
            let Ok(name) = item.cast::<PyString>() else {
                return Err(StoreError::AllowedItemType {
                    shown: item.repr()?.to_string(),
                }
                .into());
            };
            let name = name.to_str()?;
            if name.split('.').count() < 2 || name.split('.').any(str::is_empty) {
                return Err(StoreError::AllowedItemName {
                    name: name.to_string(),
                }
                .into());
            }
            extra.insert(name.to_owned());
        }
        Ok(AllowList {
            extra: Arc::new(extra),
        })
    }

    /// No global beyond the fixed set.
    pub fn is_empty(&self) -> bool {
        self.extra.is_empty()
    }

    /// The globals named by `allowed=`, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.extra.iter().cloned().collect();
        names.sort();
        names
    }
}

/// Read a pickle as the safe serializer does: the native decoder for the
/// plain types, else the restricted unpickler. A global or opcode outside
/// the allowed set raises `UnsafeValueError`; a malformed stream raises the
/// unpickler's error (`pickle.UnpicklingError`, or what CPython raises).
pub fn loads<'py>(py: Python<'py>, data: &[u8], allow: &AllowList) -> PyResult<Bound<'py, PyAny>> {
    if let Some(value) = super::loads(py, data)? {
        return Ok(value);
    }
    let scanned = Scanner::scan(data).map_err(|refusal| refusal.into_pyerr(py))?;
    restricted_load(py, data, &scanned, allow)
}

/// Write a pickle as the safe serializer does: the native encoder; a value
/// it leaves to `pickle.dumps` is read back with [`loads`] under the same
/// allow-list, so that a value that would not read back is refused now,
/// with `UnsafeValueError`.
pub fn dumps<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    protocol: i32,
    allow: &AllowList,
) -> PyResult<Bound<'py, PyBytes>> {
    if let Some(out) = super::dumps(py, obj, protocol)? {
        return Ok(out);
    }
    let out = super::pickle_fn(py, &super::DUMPS, c"dumps")?
        .call1((obj, protocol))?
        .cast_into::<PyBytes>()?;
    match loads(py, out.as_bytes(), allow) {
        Ok(_) => Ok(out),
        Err(err) if err.is_instance(py, unsafe_value_error_type(py)?) => Err(err),
        Err(err) if crate::errors::passes_through(py, &err) => Err(err),
        Err(err) => {
            let refused = unsafe_value_error(
                py,
                None,
                format!(
                    "the safe serializer would not read this value back: {}",
                    err.value(py)
                ),
            );
            refused.set_cause(py, Some(err));
            Err(refused)
        }
    }
}

// ---------------------------------------------------------------------------
// The scan

/// Why the scan refused a stream.
enum Refusal {
    /// An opcode no allowed value needs: `UnsafeValueError`.
    Unsafe(String),
    /// Malformed, or a claim CPython would act on before it noticed (a
    /// length or memo index past the stream, a tuple too deep to hash):
    /// `pickle.UnpicklingError`.
    Malformed(Cow<'static, str>),
}

impl Refusal {
    fn into_pyerr(self, py: Python<'_>) -> PyErr {
        match self {
            Refusal::Unsafe(msg) => unsafe_value_error(py, None, msg),
            Refusal::Malformed(msg) => super::unpickling_error(py, &msg),
        }
    }
}

const TRUNCATED: &str = "pickle data was truncated";
const UNDERFLOW: &str = "unpickling stack underflow";
const NO_MARK: &str = "could not find MARK";

/// What the scan learned that the restricted unpickler needs.
struct Scanned {
    /// A global was looked up while the protocol was below 3: its module
    /// and name may be Python 2's, which CPython maps to Python 3's.
    py2_names: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    /// Every atom is node 0; nothing is ever added to it.
    Atom,
    /// What GLOBAL / STACK_GLOBAL pushed: a class or function.
    Global,
    Tuple,
    /// A container, or what a call made.
    Other,
}

/// An object the unpickler would make, as far as the scan follows it.
struct Node {
    kind: NodeKind,
    /// How deeply tuples and call results nest in it (a tuple of atoms is
    /// 1); for a container, the deepest item ever put into it.
    depth: u32,
    /// A tuple's items, as a range of `Scanner::tuple_items`.
    items: (usize, usize),
}

/// A stack machine that follows the unpickler's stack, marks and memo
/// without making any object: each slot holds a node id.
struct Scanner<'d> {
    input: &'d [u8],
    pos: usize,
    nodes: Vec<Node>,
    tuple_items: Vec<u32>,
    stack: Vec<u32>,
    marks: Vec<usize>,
    memo: HashMap<u64, u32>,
    proto: u8,
    py2_names: bool,
}

impl<'d> Scanner<'d> {
    fn scan(input: &'d [u8]) -> Result<Scanned, Refusal> {
        let mut scanner = Scanner {
            input,
            pos: 0,
            nodes: vec![Node {
                kind: NodeKind::Atom,
                depth: 0,
                items: (0, 0),
            }],
            tuple_items: Vec::new(),
            stack: Vec::with_capacity(32),
            marks: Vec::with_capacity(8),
            memo: HashMap::new(),
            proto: 0,
            py2_names: false,
        };
        scanner.run()?;
        Ok(Scanned {
            py2_names: scanner.py2_names,
        })
    }

    fn take(&mut self, n: u64) -> Result<&'d [u8], Refusal> {
        if n > (self.input.len() - self.pos) as u64 {
            return Err(Refusal::Malformed(TRUNCATED.into()));
        }
        let s = &self.input[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Refusal> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    /// The argument of a text opcode: up to its newline.
    fn line(&mut self) -> Result<&'d [u8], Refusal> {
        let rest = &self.input[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(Refusal::Malformed(TRUNCATED.into()));
        };
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    /// A payload counted by a signed 4-byte length.
    fn signed_counted(&mut self, what: &'static str) -> Result<(), Refusal> {
        let n = i32::from_le_bytes(self.array()?);
        if n < 0 {
            return Err(Refusal::Malformed(
                format!("{what} pickle has negative byte count").into(),
            ));
        }
        self.take(n as u64)?;
        Ok(())
    }

    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<u32, Refusal> {
        if self.stack.len() <= self.fence() {
            return Err(Refusal::Malformed(UNDERFLOW.into()));
        }
        Ok(self.stack.pop().unwrap_or(0))
    }

    fn top(&self) -> Result<u32, Refusal> {
        if self.stack.len() <= self.fence() {
            return Err(Refusal::Malformed(UNDERFLOW.into()));
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    fn pop_mark(&mut self) -> Result<usize, Refusal> {
        self.marks.pop().ok_or(Refusal::Malformed(NO_MARK.into()))
    }

    fn new_node(&mut self, kind: NodeKind, depth: u32) -> Result<u32, Refusal> {
        if depth > MAX_HASHED_TUPLE_DEPTH {
            return Err(Refusal::Malformed(
                format!(
                    "a tuple or object nested {depth} deep is refused by the safe serializer \
                     (limit {MAX_HASHED_TUPLE_DEPTH})"
                )
                .into(),
            ));
        }
        let id = u32::try_from(self.nodes.len())
            .map_err(|_| Refusal::Malformed("too many objects in one pickle".into()))?;
        self.nodes.push(Node {
            kind,
            depth,
            items: (0, 0),
        });
        Ok(id)
    }

    fn depth_of(&self, id: u32) -> u32 {
        self.nodes[id as usize].depth
    }

    /// The deepest of the items from `from` on.
    fn max_depth(&self, from: usize) -> u32 {
        self.stack[from..]
            .iter()
            .map(|&id| self.depth_of(id))
            .max()
            .unwrap_or(0)
    }

    /// The depth of `id` now: a tuple's items may be containers that grew
    /// since the tuple was made.
    fn current_depth(&self, id: u32) -> u32 {
        let node = &self.nodes[id as usize];
        if node.kind != NodeKind::Tuple {
            return node.depth;
        }
        let (start, end) = node.items;
        1 + self.tuple_items[start..end]
            .iter()
            .map(|&item| self.depth_of(item))
            .max()
            .unwrap_or(0)
    }

    /// A tuple of the items from `from` on.
    fn make_tuple(&mut self, from: usize) -> Result<(), Refusal> {
        let depth = 1 + self.max_depth(from);
        let id = self.new_node(NodeKind::Tuple, depth)?;
        let start = self.tuple_items.len();
        self.tuple_items.extend(self.stack.drain(from..));
        self.nodes[id as usize].items = (start, self.tuple_items.len());
        self.stack.push(id);
        Ok(())
    }

    /// What a call (REDUCE, NEWOBJ, INST, OBJ) makes: it may hold its
    /// arguments, and hash through them.
    fn push_call_result(&mut self, args_depth: u32) -> Result<(), Refusal> {
        let id = self.new_node(NodeKind::Other, args_depth.saturating_add(1))?;
        self.stack.push(id);
        Ok(())
    }

    /// Items from `x` on go into the object below them (APPEND(S),
    /// SETITEM(S), ADDITEMS), with CPython's stack checks.
    fn add_items(&mut self, x: usize) -> Result<(), Refusal> {
        let len = self.stack.len();
        if x > len || x <= self.fence() {
            return Err(Refusal::Malformed(UNDERFLOW.into()));
        }
        let depth = self.max_depth(x);
        let target = self.stack[x - 1] as usize;
        if matches!(self.nodes[target].kind, NodeKind::Other | NodeKind::Global) {
            let node = &mut self.nodes[target];
            node.depth = node.depth.max(depth);
        }
        self.stack.truncate(x);
        Ok(())
    }

    fn memo_index(&self, index: u64) -> Result<u64, Refusal> {
        // Picklers number the memo from 0, one entry per PUT, so a real
        // index is below the stream's length. CPython would size its memo
        // array by a larger one.
        if index > self.input.len() as u64 {
            return Err(Refusal::Malformed(
                format!(
                    "memo index {index} is beyond what a pickle of {} bytes can hold",
                    self.input.len()
                )
                .into(),
            ));
        }
        Ok(index)
    }

    fn memo_put(&mut self, index: u64) -> Result<(), Refusal> {
        let index = self.memo_index(index)?;
        let top = self.top()?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn memo_get(&mut self, index: u64) -> Result<(), Refusal> {
        match self.memo.get(&index) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => Err(Refusal::Malformed(
                format!("Memo value not found at index {index}").into(),
            )),
        }
    }

    fn text_index(line: &[u8]) -> Result<u64, Refusal> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or(Refusal::Malformed(
                "invalid memo index in a text PUT or GET".into(),
            ))
    }

    fn global_looked_up(&mut self) -> Result<(), Refusal> {
        if self.proto < 3 {
            self.py2_names = true;
        }
        let id = self.new_node(NodeKind::Global, 0)?;
        self.stack.push(id);
        Ok(())
    }

    fn run(&mut self) -> Result<(), Refusal> {
        loop {
            let Ok(&[code]) = self.take(1) else {
                return Err(Refusal::Malformed("Ran out of input".into()));
            };
            match code {
                op::PROTO => {
                    let [proto] = self.array()?;
                    if proto > HIGHEST_PROTOCOL {
                        return Err(Refusal::Malformed(
                            format!("unsupported pickle protocol: {proto}").into(),
                        ));
                    }
                    self.proto = proto;
                }
                op::FRAME => {
                    let n = u64::from_le_bytes(self.array()?);
                    if n > (self.input.len() - self.pos) as u64 {
                        return Err(Refusal::Malformed(TRUNCATED.into()));
                    }
                }
                // What follows STOP is never read.
                op::STOP => return Ok(()),
                op::MARK => self.marks.push(self.stack.len()),
                op::POP => {
                    let len = self.stack.len();
                    if self.marks.last() == Some(&len) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                op::POP_MARK => {
                    let m = self.pop_mark()?;
                    self.stack.truncate(m);
                }
                op::DUP => {
                    let top = self.top()?;
                    self.stack.push(top);
                }

                // Atoms.
                op::NONE | op::NEWTRUE | op::NEWFALSE => self.stack.push(0),
                op::BININT => self.push_atom(4)?,
                op::BININT1 => self.push_atom(1)?,
                op::BININT2 => self.push_atom(2)?,
                op::BINFLOAT => self.push_atom(8)?,
                op::INT | op::LONG | op::FLOAT | op::STRING | op::UNICODE => {
                    self.line()?;
                    self.stack.push(0);
                }
                op::LONG1 | op::SHORT_BINBYTES | op::SHORT_BINUNICODE | op::SHORT_BINSTRING => {
                    let [n] = self.array()?;
                    self.take(u64::from(n))?;
                    self.stack.push(0);
                }
                op::LONG4 => {
                    self.signed_counted("LONG")?;
                    self.stack.push(0);
                }
                op::BINSTRING => {
                    self.signed_counted("BINSTRING")?;
                    self.stack.push(0);
                }
                op::BINUNICODE | op::BINBYTES => {
                    let n = u32::from_le_bytes(self.array()?);
                    self.take(u64::from(n))?;
                    self.stack.push(0);
                }
                op::BINUNICODE8 | op::BINBYTES8 | op::BYTEARRAY8 => {
                    let n = u64::from_le_bytes(self.array()?);
                    self.take(n)?;
                    self.stack.push(0);
                }

                // Tuples.
                op::EMPTY_TUPLE => self.make_tuple(self.stack.len())?,
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(code - op::TUPLE1 + 1);
                    let len = self.stack.len();
                    if len < n || len - n < self.fence() {
                        return Err(Refusal::Malformed(UNDERFLOW.into()));
                    }
                    self.make_tuple(len - n)?;
                }
                op::TUPLE => {
                    let m = self.pop_mark()?;
                    self.make_tuple(m)?;
                }

                // Containers.
                op::EMPTY_LIST | op::EMPTY_DICT | op::EMPTY_SET => {
                    let id = self.new_node(NodeKind::Other, 0)?;
                    self.stack.push(id);
                }
                op::LIST | op::DICT | op::FROZENSET => {
                    let m = self.pop_mark()?;
                    let depth = self.max_depth(m);
                    self.stack.truncate(m);
                    let id = self.new_node(NodeKind::Other, depth)?;
                    self.stack.push(id);
                }
                op::APPEND => {
                    let len = self.stack.len();
                    if len == 0 {
                        return Err(Refusal::Malformed(UNDERFLOW.into()));
                    }
                    self.add_items(len - 1)?;
                }
                op::SETITEM => {
                    let len = self.stack.len();
                    if len < 2 {
                        return Err(Refusal::Malformed(UNDERFLOW.into()));
                    }
                    self.add_items(len - 2)?;
                }
                op::APPENDS | op::SETITEMS | op::ADDITEMS => {
                    let m = self.pop_mark()?;
                    self.add_items(m)?;
                }

                // The memo.
                op::MEMOIZE => {
                    let index = self.memo.len() as u64;
                    self.memo_put(index)?;
                }
                op::BINPUT => {
                    let [index] = self.array()?;
                    self.memo_put(u64::from(index))?;
                }
                op::LONG_BINPUT => {
                    let index = u32::from_le_bytes(self.array()?);
                    self.memo_put(u64::from(index))?;
                }
                op::PUT => {
                    let index = Self::text_index(self.line()?)?;
                    self.memo_put(index)?;
                }
                op::BINGET => {
                    let [index] = self.array()?;
                    self.memo_get(u64::from(index))?;
                }
                op::LONG_BINGET => {
                    let index = u32::from_le_bytes(self.array()?);
                    self.memo_get(u64::from(index))?;
                }
                op::GET => {
                    let index = Self::text_index(self.line()?)?;
                    self.memo_get(index)?;
                }

                // Globals and calls: the restricted unpickler checks each
                // global by name and each helper's arguments.
                op::GLOBAL => {
                    self.line()?;
                    self.line()?;
                    self.global_looked_up()?;
                }
                op::STACK_GLOBAL => {
                    self.pop()?;
                    self.pop()?;
                    self.global_looked_up()?;
                }
                op::REDUCE | op::NEWOBJ => {
                    let args = self.pop()?;
                    self.pop()?;
                    let depth = self.current_depth(args);
                    self.push_call_result(depth)?;
                }
                op::NEWOBJ_EX => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    self.pop()?;
                    let depth = self.current_depth(args).max(self.current_depth(kwargs));
                    self.push_call_result(depth)?;
                }
                op::INST => {
                    let m = self.pop_mark()?;
                    self.line()?;
                    self.line()?;
                    if self.proto < 3 {
                        self.py2_names = true;
                    }
                    let depth = self.max_depth(m);
                    self.stack.truncate(m);
                    self.push_call_result(depth)?;
                }
                op::OBJ => {
                    let m = self.pop_mark()?;
                    if self.stack.len() <= m {
                        return Err(Refusal::Malformed(UNDERFLOW.into()));
                    }
                    let depth = self.max_depth(m + 1);
                    self.stack.truncate(m);
                    self.push_call_result(depth)?;
                }
                op::BUILD => {
                    let state = self.pop()?;
                    let target = self.top()? as usize;
                    match self.nodes[target].kind {
                        NodeKind::Global => {
                            return Err(Refusal::Unsafe(
                                "BUILD on a class or function is not allowed by the safe \
                                 serializer: it would change that global for the whole process"
                                    .into(),
                            ));
                        }
                        NodeKind::Other => {
                            let depth = self.current_depth(state);
                            if depth > BUILD_STATE_LIMIT {
                                return Err(Refusal::Malformed(
                                    format!(
                                        "an object's state nested {depth} deep is refused by \
                                         the safe serializer (limit {BUILD_STATE_LIMIT})"
                                    )
                                    .into(),
                                ));
                            }
                            let node = &mut self.nodes[target];
                            node.depth = node.depth.max(depth + 1);
                        }
                        // CPython fails: atoms and tuples take no state.
                        NodeKind::Atom | NodeKind::Tuple => {}
                    }
                }

                // Never needed by an allowed value.
                op::PERSID | op::BINPERSID => {
                    return Err(Refusal::Unsafe(
                        "a persistent id (PERSID / BINPERSID) is not allowed by the safe \
                         serializer"
                            .into(),
                    ));
                }
                op::EXT1 | op::EXT2 | op::EXT4 => {
                    let code = match code {
                        op::EXT1 => u32::from(self.array::<1>()?[0]),
                        op::EXT2 => u32::from(u16::from_le_bytes(self.array()?)),
                        _ => u32::from_le_bytes(self.array()?),
                    };
                    return Err(Refusal::Unsafe(format!(
                        "extension code {code} (EXT1 / EXT2 / EXT4) is not allowed by the safe \
                         serializer"
                    )));
                }
                op::NEXT_BUFFER | op::READONLY_BUFFER => {
                    return Err(Refusal::Unsafe(
                        "out-of-band buffers (NEXT_BUFFER / READONLY_BUFFER) are not allowed by \
                         the safe serializer"
                            .into(),
                    ));
                }
                _ => {
                    return Err(Refusal::Malformed(
                        format!("invalid load key, '\\x{code:02x}'.").into(),
                    ));
                }
            }
        }
    }

    fn push_atom(&mut self, size: u64) -> Result<(), Refusal> {
        self.take(size)?;
        self.stack.push(0);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The restricted unpickler

/// What an allowed name of the fixed set resolves to.
#[derive(Clone, Copy)]
enum Fixed {
    /// The global itself: constructing it from any arguments is harmless.
    Real,
    /// `_codecs.encode`, for `bytes` at protocols 0-2: latin-1 only.
    CodecsEncode,
    /// `bytes`, for empty bytes at protocols 0-2: no argument, or bytes.
    Bytes,
    /// `bytearray`: no argument, bytes, or a str and latin-1.
    ByteArray,
    /// `object`, as `copyreg._reconstructor`'s base argument only.
    ObjectBase,
    /// `copyreg._reconstructor`, for objects at protocols 0-1.
    Reconstructor,
}

/// The plain types' globals and the helpers their pickles use, at every
/// protocol (Python 2 names are mapped first, as CPython maps them).
const FIXED: [(&str, &str, Fixed); 15] = [
    ("builtins", "set", Fixed::Real),
    ("builtins", "frozenset", Fixed::Real),
    ("builtins", "complex", Fixed::Real),
    ("builtins", "bytes", Fixed::Bytes),
    ("builtins", "bytearray", Fixed::ByteArray),
    ("builtins", "object", Fixed::ObjectBase),
    ("datetime", "datetime", Fixed::Real),
    ("datetime", "date", Fixed::Real),
    ("datetime", "time", Fixed::Real),
    ("datetime", "timedelta", Fixed::Real),
    ("datetime", "timezone", Fixed::Real),
    ("decimal", "Decimal", Fixed::Real),
    ("uuid", "UUID", Fixed::Real),
    ("_codecs", "encode", Fixed::CodecsEncode),
    ("copyreg", "_reconstructor", Fixed::Reconstructor),
];

/// The fixed set's objects, made on first use (so that reading a value
/// that holds no UUID never imports `uuid`). The reconstructor is made per
/// read (it checks against that read's classes) and is never stored here.
static FIXED_OBJECTS: [PyOnceLock<Py<PyAny>>; FIXED.len()] =
    [const { PyOnceLock::new() }; FIXED.len()];

fn fixed_object<'py>(slf: &Bound<'py, SafeFinder>, index: usize) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let (module, name, kind) = FIXED[index];
    if let Fixed::Reconstructor = kind {
        return Ok(Bound::new(
            py,
            Reconstructor {
                finder: slf.clone().unbind(),
            },
        )?
        .into_any());
    }
    let obj = FIXED_OBJECTS[index].get_or_try_init(py, || -> PyResult<_> {
        let obj = match kind {
            Fixed::Real => py.import(module)?.getattr(name)?,
            Fixed::CodecsEncode => wrap_pyfunction!(_safe_codecs_encode, py)?.into_any(),
            Fixed::Bytes => wrap_pyfunction!(_safe_bytes, py)?.into_any(),
            Fixed::ByteArray => wrap_pyfunction!(_safe_bytearray, py)?.into_any(),
            Fixed::ObjectBase | Fixed::Reconstructor => Bound::new(py, ObjectBase)?.into_any(),
        };
        Ok(obj.unbind())
    })?;
    Ok(obj.bind(py).clone())
}

/// `_compat_pickle`'s maps from Python 2's names to Python 3's.
static PY2_NAMES: PyOnceLock<(Py<PyDict>, Py<PyDict>)> = PyOnceLock::new();

/// CPython's mapping of a Python 2 global (module, name) to Python 3's:
/// by string only, nothing is imported.
fn py3_name(py: Python<'_>, module: &str, name: &str) -> PyResult<(String, String)> {
    let (names, imports) = PY2_NAMES.get_or_try_init(py, || -> PyResult<_> {
        let compat = py.import("_compat_pickle")?;
        Ok((
            compat
                .getattr("NAME_MAPPING")?
                .cast_into::<PyDict>()?
                .unbind(),
            compat
                .getattr("IMPORT_MAPPING")?
                .cast_into::<PyDict>()?
                .unbind(),
        ))
    })?;
    if let Some(mapped) = names.bind(py).get_item((module, name))? {
        return mapped.extract();
    }
    if let Some(mapped) = imports.bind(py).get_item(module)? {
        return Ok((mapped.extract()?, name.to_owned()));
    }
    Ok((module.to_owned(), name.to_owned()))
}

/// The restricted unpickler's `find_class`: a global is looked up only when
/// its `"module.qualname"` is allowed, compared as a string; nothing the
/// stream names is imported to check it.
#[pyclass(frozen, module = "lmdb_object_store._native", name = "_SafeFindClass")]
struct SafeFinder {
    allow: AllowList,
    py2_names: bool,
    /// The classes handed out in this read: the only ones
    /// `copyreg._reconstructor` makes objects of.
    classes: Mutex<Vec<Py<PyAny>>>,
}

impl SafeFinder {
    fn handed_out(&self, cls: &Bound<'_, PyAny>) -> bool {
        let classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        classes.iter().any(|c| c.bind(cls.py()).is(cls))
    }
}

#[pymethods]
impl SafeFinder {
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        module: &str,
        name: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let me = slf.get();
        let (module, name) = if me.py2_names {
            py3_name(py, module, name)?
        } else {
            (module.to_owned(), name.to_owned())
        };
        let full = format!("{module}.{name}");
        let obj = if me.allow.extra.contains(&full) {
            // Named on purpose by allowed=: the global itself.
            let mut obj = py.import(module.as_str())?.into_any();
            for part in name.split('.') {
                obj = obj.getattr(part)?;
            }
            obj
        } else if let Some(index) = FIXED
            .iter()
            .position(|(m, n, _)| *m == module && *n == name)
        {
            fixed_object(slf, index)?
        } else {
            return Err(unsafe_value_error(
                py,
                Some(&full),
                format!(
                    "the global '{full}' is not allowed by the safe serializer, which reads only \
                     None, bool, int, float, complex, str, bytes, bytearray, tuple, list, dict, \
                     set, frozenset, datetime, date, time, timedelta, timezone, Decimal and \
                     UUID; name the globals you trust in allowed="
                ),
            ));
        };
        if obj.is_instance_of::<PyType>() && !me.handed_out(&obj) {
            let mut classes = me.classes.lock().unwrap_or_else(|e| e.into_inner());
            classes.push(obj.clone().unbind());
        }
        Ok(obj)
    }
}

/// Describe a refused call's arguments by type (their values may be huge).
fn arg_types(args: &Bound<'_, PyTuple>) -> String {
    let names: Vec<String> = args
        .iter()
        .map(|a| {
            a.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into())
        })
        .collect();
    format!("({})", names.join(", "))
}

fn is_latin1_name(encoding: &Bound<'_, PyAny>) -> bool {
    encoding.is_exact_instance_of::<PyString>()
        && encoding
            .cast::<PyString>()
            .ok()
            .and_then(|s| s.to_str().ok().map(|s| s == "latin1" || s == "latin-1"))
            .unwrap_or(false)
}

/// `str.encode(text, "latin-1")` of an exact str.
fn latin1<'py>(text: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = text.py();
    text.call_method1(pyo3::intern!(py, "encode"), (pyo3::intern!(py, "latin-1"),))
}

/// `_codecs.encode` as the safe serializer allows it: a str to latin-1 (how
/// protocols 0-2 write bytes), which no other codec, and so no import of a
/// codec module, can take part in.
#[pyfunction]
#[pyo3(signature = (*args))]
fn _safe_codecs_encode<'py>(args: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
    if args.len() == 2 {
        let text = args.get_item(0)?;
        if text.is_exact_instance_of::<PyString>() && is_latin1_name(&args.get_item(1)?) {
            return latin1(&text);
        }
    }
    let encoding = args
        .get_item(1)
        .ok()
        .filter(|e| e.is_exact_instance_of::<PyString>() && e.len().is_ok_and(|n| n <= 40))
        .map(|e| {
            format!(
                " to {}",
                e.repr().map(|r| r.to_string()).unwrap_or_default()
            )
        })
        .unwrap_or_default();
    Err(unsafe_value_error(
        args.py(),
        Some("_codecs.encode"),
        format!(
            "the safe serializer allows '_codecs.encode' only to encode a str as 'latin1'; \
             refused a call with arguments {}{encoding}",
            arg_types(args)
        ),
    ))
}

/// `bytes` as the safe serializer allows it: `bytes()` (how protocols 0-2
/// write empty bytes) or a copy of bytes, never `bytes(n)`.
#[pyfunction]
#[pyo3(signature = (*args))]
fn _safe_bytes<'py>(args: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
    let py = args.py();
    match args.len() {
        0 => return Ok(PyBytes::new(py, b"").into_any()),
        1 if args.get_item(0)?.is_exact_instance_of::<PyBytes>() => return args.get_item(0),
        _ => {}
    }
    Err(unsafe_value_error(
        py,
        Some("builtins.bytes"),
        format!(
            "the safe serializer allows 'builtins.bytes' only with no argument or one bytes; \
             refused a call with arguments {}",
            arg_types(args)
        ),
    ))
}

/// `bytearray` as the safe serializer allows it: empty, from bytes, or from a
/// str and latin-1, never `bytearray(n)`.
#[pyfunction]
#[pyo3(signature = (*args))]
fn _safe_bytearray<'py>(args: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
    let py = args.py();
    match args.len() {
        0 => return Ok(PyByteArray::new(py, b"").into_any()),
        1 => {
            if let Ok(data) = args.get_item(0)?.cast_exact::<PyBytes>() {
                return Ok(PyByteArray::new(py, data.as_bytes()).into_any());
            }
        }
        2 => {
            let text = args.get_item(0)?;
            if text.is_exact_instance_of::<PyString>() && is_latin1_name(&args.get_item(1)?) {
                let data = latin1(&text)?;
                let data = data.cast::<PyBytes>()?;
                return Ok(PyByteArray::new(py, data.as_bytes()).into_any());
            }
        }
        _ => {}
    }
    Err(unsafe_value_error(
        py,
        Some("builtins.bytearray"),
        format!(
            "the safe serializer allows 'builtins.bytearray' only with no argument, one bytes, \
             or a str and 'latin-1'; refused a call with arguments {}",
            arg_types(args)
        ),
    ))
}

/// What the restricted unpickler returns for `builtins.object`: usable only
/// as `copyreg._reconstructor`'s base, so that no plain `object()` (a value
/// outside the allowed types) can be made.
#[pyclass(frozen, module = "lmdb_object_store._native", name = "_ObjectBase")]
struct ObjectBase;

#[pymethods]
impl ObjectBase {
    #[pyo3(signature = (*_args, **_kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        Err(unsafe_value_error(
            py,
            Some("builtins.object"),
            "the safe serializer allows 'builtins.object' only as the base class argument of \
             'copyreg._reconstructor'"
                .into(),
        ))
    }
}

/// `copyreg._reconstructor` as the safe serializer allows it: an object of a
/// class handed out in this read, with base `object` and no state (how
/// protocols 0-1 write such an object; its state follows in BUILD).
#[pyclass(
    frozen,
    module = "lmdb_object_store._native",
    name = "_SafeReconstructor"
)]
struct Reconstructor {
    finder: Py<SafeFinder>,
}

#[pymethods]
impl Reconstructor {
    #[pyo3(signature = (*args))]
    fn __call__<'py>(&self, args: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
        let py = args.py();
        if args.len() == 3 {
            let (cls, base, state) = (args.get_item(0)?, args.get_item(1)?, args.get_item(2)?);
            let object = py.get_type::<PyAny>();
            let base_is_object = base.is_instance_of::<ObjectBase>() || base.is(&object);
            if cls.is_instance_of::<PyType>()
                && self.finder.get().handed_out(&cls)
                && base_is_object
                && state.is_none()
            {
                return object.call_method1(pyo3::intern!(py, "__new__"), (cls,));
            }
        }
        Err(unsafe_value_error(
            py,
            Some("copyreg._reconstructor"),
            format!(
                "the safe serializer allows 'copyreg._reconstructor' only for an allowed class \
                 with base 'object' and no state; refused a call with arguments {}",
                arg_types(args)
            ),
        ))
    }
}

/// The restricted unpickler's `persistent_load`: the scan refuses persistent
/// ids before any is read; this keeps a stream it missed from reaching one.
#[pyfunction]
fn _safe_persistent_load(py: Python<'_>, _pid: &Bound<'_, PyAny>) -> PyResult<()> {
    Err(unsafe_value_error(
        py,
        None,
        "a persistent id is not allowed by the safe serializer".into(),
    ))
}

static SAFE_UNPICKLER: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();

/// `(_SafeUnpickler, io.BytesIO)`: a subclass of `pickle.Unpickler` whose
/// instances take their `find_class` per read.
fn unpickler_class(py: Python<'_>) -> PyResult<(&Bound<'_, PyAny>, &Bound<'_, PyAny>)> {
    let (cls, bytes_io) = SAFE_UNPICKLER.get_or_try_init(py, || -> PyResult<_> {
        let base = py.import("pickle")?.getattr("Unpickler")?;
        let ns = PyDict::new(py);
        ns.set_item("__module__", "lmdb_object_store._native")?;
        ns.set_item(
            "__doc__",
            "pickle.Unpickler for the safe serializer: globals only from its allow-list.",
        )?;
        ns.set_item(
            "persistent_load",
            wrap_pyfunction!(_safe_persistent_load, py)?,
        )?;
        let cls = py
            .get_type::<PyType>()
            .call1(("_SafeUnpickler", (base,), ns))?;
        let bytes_io = py.import("io")?.getattr("BytesIO")?;
        Ok((cls.unbind(), bytes_io.unbind()))
    })?;
    Ok((cls.bind(py), bytes_io.bind(py)))
}

/// CPython's unpickler over a scanned stream, with `find_class` restricted.
fn restricted_load<'py>(
    py: Python<'py>,
    data: &[u8],
    scanned: &Scanned,
    allow: &AllowList,
) -> PyResult<Bound<'py, PyAny>> {
    let (cls, bytes_io) = unpickler_class(py)?;
    let unpickler = cls.call1((bytes_io.call1((PyBytes::new(py, data),))?,))?;
    let finder = SafeFinder {
        allow: allow.clone(),
        py2_names: scanned.py2_names,
        classes: Mutex::new(Vec::new()),
    };
    // An instance attribute: the unpickler looks `find_class` up on itself
    // for every global it reads.
    unpickler.setattr(pyo3::intern!(py, "find_class"), Bound::new(py, finder)?)?;
    unpickler.call_method0(pyo3::intern!(py, "load"))
}

// ---------------------------------------------------------------------------
// Private hooks (tests)

/// `_native._codec_loads_safe(data, allowed=None)`: what the safe serializer
/// reads from a pickle.
#[pyfunction]
#[pyo3(signature = (data, allowed=None))]
fn _codec_loads_safe<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    allowed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let allow = AllowList::from_py(allowed)?;
    let bytes = pyo3::buffer::PyBuffer::<u8>::get(data)?.to_vec(py)?;
    loads(py, &bytes, &allow)
}

/// `_native._codec_dumps_safe(obj, protocol=5, allowed=None)`: what the safe
/// serializer writes for a value.
#[pyfunction]
#[pyo3(signature = (obj, protocol=5, allowed=None))]
fn _codec_dumps_safe<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    protocol: i32,
    allowed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let allow = AllowList::from_py(allowed)?;
    dumps(py, obj, protocol, &allow)
}

/// Add the safe codec's private hooks to the native module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_codec_loads_safe, m)?)?;
    m.add_function(wrap_pyfunction!(_codec_dumps_safe, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The scan alone, on streams written by hand: what it refuses, what it
    //! lets through, and that no input makes it panic.

    use super::*;
    use crate::pickle::test_rng::Rng;

    fn unsafe_refusal(data: &[u8]) -> bool {
        matches!(Scanner::scan(data), Err(Refusal::Unsafe(_)))
    }

    fn malformed(data: &[u8]) -> bool {
        matches!(Scanner::scan(data), Err(Refusal::Malformed(_)))
    }

    /// pickle.dumps(datetime.date(2020, 1, 2), 2), then the same at 0.
    const DATE_P2: &[u8] =
        b"\x80\x02cdatetime\ndate\nq\x00c_codecs\nencode\nq\x01X\x05\x00\x00\x00\x07\xc3\xa4\x01\x02q\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05\x85q\x06Rq\x07.";
    const UUID_P0: &[u8] = b"ccopy_reg\n_reconstructor\np0\n(cuuid\nUUID\np1\nc__builtin__\nobject\np2\nNtp3\nRp4\n(dp5\nVint\np6\nI1\nsb.";

    #[test]
    fn pickles_of_allowed_values_pass() {
        assert!(Scanner::scan(DATE_P2).is_ok_and(|s| s.py2_names));
        assert!(Scanner::scan(UUID_P0).is_ok());
        let p4 = b"\x80\x04\x95\x20\x00\x00\x00\x00\x00\x00\x00\x8c\x08datetime\x94\x8c\x04date\x94\x93\x94C\x04\x07\xe4\x01\x02\x94\x85\x94R\x94.";
        assert!(Scanner::scan(p4).is_ok_and(|s| !s.py2_names));
    }

    #[test]
    fn opcodes_no_allowed_value_needs_are_unsafe() {
        assert!(unsafe_refusal(b"Pid\n."));
        assert!(unsafe_refusal(b"\x80\x02X\x01\x00\x00\x00xQ."));
        assert!(unsafe_refusal(b"\x80\x02\x82\xf0)R."));
        assert!(unsafe_refusal(b"\x80\x02\x83\xf0\x00)R."));
        assert!(unsafe_refusal(b"\x80\x02\x84\xf0\x00\x00\x00)R."));
        assert!(unsafe_refusal(b"\x80\x05\x97."));
        assert!(unsafe_refusal(b"\x80\x05C\x01x\x98."));
        // BUILD on a global, also when it comes back from the memo.
        assert!(unsafe_refusal(
            b"\x80\x04\x8c\x04uuid\x8c\x04UUID\x93N}\x86b."
        ));
        assert!(unsafe_refusal(
            b"\x80\x04\x8c\x04uuid\x8c\x04UUID\x93\x940h\x00N}\x86b."
        ));
        // Nothing after STOP is read.
        assert!(Scanner::scan(b"N.\x82\xf0").is_ok());
    }

    #[test]
    fn claims_beyond_the_stream_are_refused() {
        assert!(malformed(b"\x80\x04\x8e\xff\xff\xff\xff\xff\x00\x00\x00."));
        assert!(malformed(b"\x80\x04\x95\xff\xff\xff\x00\x00\x00\x00\x00N."));
        assert!(malformed(b"\x80\x02Nr\xff\xff\xff\x7f."));
        assert!(malformed(b"Np99999\n."));
        assert!(malformed(b"\x80\x02h\x05."));
        assert!(malformed(b"\x80\x02T\xff\xff\xff\xff."));
    }

    #[test]
    fn deep_nesting_is_refused_where_hashing_could_follow() {
        let limit = MAX_HASHED_TUPLE_DEPTH as usize;
        let tuples = |n: usize| {
            let mut data = b"\x80\x04)".to_vec();
            data.extend(std::iter::repeat_n(op::TUPLE1, n - 1));
            data.push(op::STOP);
            data
        };
        assert!(Scanner::scan(&tuples(limit)).is_ok());
        assert!(malformed(&tuples(limit + 1)));
        // Calls count as a level: they may hold (and hash) their arguments.
        // [f, f, ..., f, None], then f((...f((None,))...,)) from the inside.
        let mut calls = b"\x80\x04\x8c\x01m\x8c\x01f\x93".to_vec();
        calls.extend(std::iter::repeat_n(op::DUP, limit / 2 + 1));
        calls.push(op::NONE);
        for _ in 0..limit / 2 + 1 {
            calls.extend_from_slice(b"\x85R");
        }
        calls.push(op::STOP);
        assert!(malformed(&calls));
        // A container grown after a tuple took it still counts, through
        // the tuple, when a call gets that tuple as its arguments.
        let mut grown = b"\x80\x04\x8c\x01m\x8c\x01f\x93]\x94\x85h\x00)".to_vec();
        grown.extend(std::iter::repeat_n(op::TUPLE1, limit - 1));
        grown.extend_from_slice(b"a0R.");
        assert!(malformed(&grown));
        // A state deeper than the limit for BUILD.
        let mut state = b"\x80\x04\x8c\x04uuid\x8c\x04UUID\x93)\x81}\x8c\x03intN".to_vec();
        state.extend(std::iter::repeat_n(
            op::TUPLE1,
            BUILD_STATE_LIMIT as usize + 1,
        ));
        state.extend_from_slice(b"sb.");
        assert!(malformed(&state));
        let short = [&state[..state.len() - 4], b"sb.".as_slice()].concat();
        assert!(Scanner::scan(&short).is_ok());
    }

    #[test]
    fn every_truncation_is_refused_not_a_panic() {
        for sample in [DATE_P2, UUID_P0] {
            for cut in 0..sample.len() - 1 {
                assert!(malformed(&sample[..cut]), "cut at {cut}");
            }
        }
    }

    #[test]
    fn fuzz_random_and_mutated_streams() {
        let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
        for case in 0..50_000 {
            let mut data = if case % 2 == 0 {
                DATE_P2.to_vec()
            } else {
                UUID_P0.to_vec()
            };
            if case % 5 == 0 {
                data = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            } else {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(data.len());
                    match rng.below(3) {
                        0 => data[i] = rng.next() as u8,
                        1 => {
                            data.remove(i);
                        }
                        _ => data.insert(i, rng.next() as u8),
                    }
                    if data.is_empty() {
                        break;
                    }
                }
            }
            let _ = Scanner::scan(&data);
        }
    }
}
