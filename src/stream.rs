//! Streamed values on the Python side: `put_file` (a path or a file object
//! turned into a source the engine reads with the GIL released, with the
//! serializer's framing around it) and `ValueFile`, the read-only file object
//! `store.open(key)` returns over one value of a held snapshot.

use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::codec;
use crate::compress::Compression;
use crate::core::Core;
use crate::errors::{to_py, type_name, StoreError};
use crate::snapshot::WritableBuffer;
use crate::values::{self, Serializer};

/// Bytes asked of a file object per `read()` when it has to be spooled.
const SPOOL_CHUNK: usize = 1 << 20;

/// The largest payload of pickle's `BINBYTES` (a 4-byte length); larger
/// ones take `BINBYTES8`.
const BINBYTES_MAX: u64 = u32::MAX as u64;

/// The serializer's framing around a payload of `len` bytes, so the stored
/// value decodes as `bytes`: a protocol-4 pickle of one `bytes` object
/// (unframed: `pickle.loads` reads it), msgpack's `bin 32`, or nothing on a
/// raw store (inside a `Stored` frame on a store with compression, which
/// reads frames). JSON and custom serializers have no form for it.
fn framing(
    py: Python<'_>,
    ser: &Serializer,
    comp: &Compression,
    key: &Bound<'_, PyAny>,
    len: u64,
) -> PyResult<(Vec<u8>, Vec<u8>)> {
    match ser {
        Serializer::Pickle | Serializer::Safe(_) => {
            let mut head = vec![0x80, 4];
            if len <= BINBYTES_MAX {
                head.push(b'B');
                head.extend_from_slice(&(len as u32).to_le_bytes());
            } else {
                head.push(0x8e);
                head.extend_from_slice(&len.to_le_bytes());
            }
            Ok((head, vec![b'.']))
        }
        Serializer::Raw => Ok((comp.stored_header(len).unwrap_or_default(), Vec::new())),
        Serializer::Msgpack { .. } if len > u32::MAX as u64 => Err(StoreError::StreamTooLarge {
            key: codec::display_key(key),
            serializer: format!("'{}'", ser.name(py)),
            max: u32::MAX as u64,
        }
        .into()),
        Serializer::Msgpack { .. } => {
            let mut head = vec![0xc6];
            head.extend_from_slice(&(len as u32).to_be_bytes());
            Ok((head, Vec::new()))
        }
        Serializer::Json { .. } | Serializer::Custom { .. } => Err(stream_refused(py, ser, key)),
    }
}

fn stream_refused(py: Python<'_>, ser: &Serializer, key: &Bound<'_, PyAny>) -> PyErr {
    let serializer = match ser {
        Serializer::Custom { .. } => ser.name(py),
        _ => format!("'{}'", ser.name(py)),
    };
    StoreError::StreamSerializer {
        key: codec::display_key(key),
        serializer,
    }
    .into()
}

/// The payload of a stored value as `open()` gives it: the bytes of a
/// stored `bytes` object on a pickle, safe or msgpack store (however it was
/// written), and the stored bytes as they are otherwise.
pub(crate) fn payload<'a>(ser: &Serializer, v: &'a [u8]) -> &'a [u8] {
    let inner = match ser {
        Serializer::Pickle | Serializer::Safe(_) => pickled_bytes(v),
        Serializer::Msgpack { .. } => msgpack_bin(v),
        _ => None,
    };
    inner.unwrap_or(v)
}

fn split_len(rest: &[u8], n: usize) -> Option<(u64, &[u8])> {
    let (len, rest) = (rest.get(..n)?, rest.get(n..)?);
    let mut buf = [0u8; 8];
    buf[..n].copy_from_slice(len);
    Some((u64::from_le_bytes(buf), rest))
}

/// The payload of a pickle (protocol 3 to 5) that is one `bytes` object,
/// as `pickle.dumps` and `put_file` write it.
fn pickled_bytes(v: &[u8]) -> Option<&[u8]> {
    let rest = v.strip_prefix(&[0x80])?;
    let (&proto, mut rest) = rest.split_first()?;
    if !(3..=5).contains(&proto) {
        return None;
    }
    if rest.first() == Some(&0x95) {
        rest = rest.get(9..)?;
    }
    let (&op, rest) = rest.split_first()?;
    let (n, rest) = match op {
        b'C' => split_len(rest, 1)?,
        b'B' => split_len(rest, 4)?,
        0x8e => split_len(rest, 8)?,
        _ => return None,
    };
    let n = usize::try_from(n).ok()?;
    let data = rest.get(..n)?;
    match &rest[n..] {
        b"." | b"\x94." | b"q\x00." => Some(data),
        _ => None,
    }
}

/// The payload of a msgpack `bin 8/16/32` value.
fn msgpack_bin(v: &[u8]) -> Option<&[u8]> {
    let (&op, rest) = v.split_first()?;
    let width = match op {
        0xc4 => 1,
        0xc5 => 2,
        0xc6 => 4,
        _ => return None,
    };
    let mut buf = [0u8; 8];
    buf[8 - width..].copy_from_slice(rest.get(..width)?);
    let n = usize::try_from(u64::from_be_bytes(buf)).ok()?;
    let data = rest.get(width..)?;
    (data.len() == n).then_some(data)
}

/// Where a `put_file` reads from.
pub(crate) struct Prepared<'py> {
    file: File,
    offset: u64,
    len: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    name: String,
    /// A file object read through its descriptor, and where the value ends
    /// in it: it is moved there once the value is written, as a read would.
    object: Option<(Bound<'py, PyAny>, u64)>,
}

impl Prepared<'_> {
    pub(crate) fn source(&self) -> engine::Source<'_> {
        engine::Source {
            file: &self.file,
            offset: self.offset,
            len: self.len,
            head: &self.head,
            tail: &self.tail,
            name: &self.name,
        }
    }

    /// After the write: leave a file object where a read of the value
    /// would have left it.
    pub(crate) fn finish(self) {
        if let Some((obj, end)) = self.object {
            // The value is committed; a file object that cannot seek any
            // more only keeps its old position.
            let _ = obj.call_method1("seek", (end,));
        }
    }
}

/// `OSError` for an errno, `ValueError` for a failure without one.
fn os_error(code: Option<i32>, what: String) -> PyErr {
    to_py(engine::Error::Source {
        code: code.unwrap_or(0),
        what,
    })
}

/// `size=`: `None`, or an int >= 0.
fn parse_size(size: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    let Some(size) = size.filter(|s| !s.is_none()) else {
        return Ok(None);
    };
    let n: i128 = size.extract().map_err(|_| StoreError::NotAnInt {
        name: "size".into(),
        got: type_name(size),
    })?;
    u64::try_from(n).map(Some).map_err(|_| {
        StoreError::OutOfRange {
            name: "size".into(),
            rule: ">= 0".into(),
            got: Some(n),
        }
        .into()
    })
}

/// Check the store's serializer, then turn `source` into a file the engine
/// can read: a path is opened; a file object with a regular file behind
/// its `fileno()` is read through a duplicate of that descriptor from its
/// `tell()` (Python's own read-ahead buffer does not matter); any other
/// file object (`BytesIO`, a pipe, a socket) is spooled in 1 MiB reads to
/// an unnamed temporary file in `spool_dir`, the store's directory.
pub(crate) fn prepare<'py>(
    py: Python<'py>,
    ser: &Serializer,
    comp: &Compression,
    key: &Bound<'py, PyAny>,
    source: &Bound<'py, PyAny>,
    size: Option<&Bound<'py, PyAny>>,
    spool_dir: &Path,
) -> PyResult<Prepared<'py>> {
    if matches!(ser, Serializer::Json { .. } | Serializer::Custom { .. }) {
        return Err(stream_refused(py, ser, key));
    }
    let size = parse_size(size)?;
    let shown = codec::display_key(key);
    let is_path = source.is_instance_of::<PyString>()
        || source.is_instance(&py.import("os")?.getattr("PathLike")?)?;
    let (file, offset, found, name, object) = if is_path {
        let path: PathBuf = source.extract()?;
        let name = format!("the file '{}' for key {shown}", path.display());
        let file = py
            .detach(|| File::open(&path))
            .map_err(|e| os_error(e.raw_os_error(), format!("put_file: opening {name}")))?;
        let found = regular_len(&file, &name)?;
        (file, 0, Some(found), name, None)
    } else if source.hasattr("read")? {
        if source.is_instance(&py.import("io")?.getattr("TextIOBase")?)? {
            return Err(StoreError::PutFileText { key: shown }.into());
        }
        let name = format!("the file object for key {shown}");
        match descriptor_file(source, &name)? {
            Some((file, pos, len)) => {
                let found = len.saturating_sub(pos);
                let end = pos + size.unwrap_or(found);
                (file, pos, Some(found), name, Some((source.clone(), end)))
            }
            None => {
                let (file, found) = spool(py, source, size, spool_dir, &name, &shown)?;
                (file, 0, found, name, None)
            }
        }
    } else {
        return Err(StoreError::PutFileSource {
            got: type_name(source),
        }
        .into());
    };
    let len = match (size, found) {
        (Some(size), Some(found)) if size == found => size,
        (None, Some(found)) => found,
        (Some(size), found) => {
            return Err(StoreError::SizeMismatch {
                source: name,
                size,
                found,
            }
            .into())
        }
        (None, None) => unreachable!("a spool without size= reads to the end"),
    };
    let (head, tail) = framing(py, ser, comp, key, len)?;
    Ok(Prepared {
        file,
        offset,
        len,
        head,
        tail,
        name,
        object,
    })
}

/// The length of `file`, which must be a regular file.
fn regular_len(file: &File, name: &str) -> PyResult<u64> {
    let md = file
        .metadata()
        .map_err(|e| os_error(e.raw_os_error(), format!("put_file: reading {name}")))?;
    if !md.is_file() {
        return Err(StoreError::PutFileNotRegular {
            source: name.to_string(),
        }
        .into());
    }
    Ok(md.len())
}

/// A duplicate of the regular file behind `obj.fileno()`, with `obj`'s
/// position and the file's length; `None` when there is no such file.
fn descriptor_file(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<(File, u64, u64)>> {
    let Ok(fd) = obj
        .call_method0("fileno")
        .and_then(|f| f.extract::<c_int>())
    else {
        return Ok(None);
    };
    if fd < 0 {
        return Ok(None);
    }
    // SAFETY: `fileno()` just returned `fd`, the descriptor the file object
    // keeps open, and no Python code (which alone could close it) runs
    // while it is borrowed here, to be duplicated (F_DUPFD_CLOEXEC).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let Ok(owned) = borrowed.try_clone_to_owned() else {
        return Ok(None);
    };
    let file = File::from(owned);
    match file.metadata() {
        Ok(md) if md.is_file() => {}
        _ => return Ok(None),
    }
    let Ok(pos) = obj.call_method0("tell").and_then(|p| p.extract::<u64>()) else {
        return Ok(None);
    };
    let len = regular_len(&file, name)?;
    Ok(Some((file, pos, len)))
}

static SPOOLS: AtomicU64 = AtomicU64::new(0);

/// Copy what `obj.read()` returns, to its end or to `size` bytes, into an
/// unnamed temporary file in `dir`. Returns the file and its length, or
/// `None` for the length when the object holds more than `size` bytes.
fn spool(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    size: Option<u64>,
    dir: &Path,
    name: &str,
    shown: &str,
) -> PyResult<(File, Option<u64>)> {
    let tmp = dir.join(format!(
        ".put_file-{}-{}.tmp",
        std::process::id(),
        SPOOLS.fetch_add(1, Ordering::Relaxed)
    ));
    let failed = |e: std::io::Error| {
        os_error(
            e.raw_os_error(),
            format!(
                "put_file: spooling {name} to {} (a file object without a file descriptor is \
                 copied beside the store first)",
                tmp.display()
            ),
        )
    };
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(failed)?
    };
    // Unnamed from now on: the file goes when `file` is closed, whatever
    // happens.
    std::fs::remove_file(&tmp).map_err(failed)?;
    let mut written: u64 = 0;
    loop {
        let want = match size {
            // One byte more than `size` tells a longer source.
            Some(size) => (size + 1 - written.min(size + 1)).min(SPOOL_CHUNK as u64) as usize,
            None => SPOOL_CHUNK,
        };
        if want == 0 {
            return Ok((file, None));
        }
        let chunk = obj.call_method1("read", (want,))?;
        if chunk.is_none() {
            return Err(os_error(
                None,
                format!(
                    "put_file: reading {name}: read() returned None (a non-blocking stream \
                     with nothing to read); nothing was written"
                ),
            ));
        }
        if chunk.is_instance_of::<PyString>() {
            return Err(StoreError::PutFileText {
                key: shown.to_string(),
            }
            .into());
        }
        // A bytearray or memoryview chunk is copied once into bytes.
        let chunk = match chunk.cast_into::<PyBytes>() {
            Ok(b) => b,
            Err(e) => py
                .get_type::<PyBytes>()
                .call1((e.into_inner(),))?
                .cast_into::<PyBytes>()?,
        };
        let data = chunk.as_bytes();
        if data.is_empty() {
            break;
        }
        py.detach(|| file.write_all(data)).map_err(failed)?;
        written += data.len() as u64;
        if size.is_some_and(|s| written > s) {
            return Ok((file, None));
        }
    }
    Ok((file, Some(written)))
}

/// What an open `ValueFile` holds: the snapshot that keeps the value's
/// pages from being reused, and the value's place in the data file.
struct Held {
    /// Never used after `open`: only kept, then dropped (on any thread).
    _snap: engine::Snapshot,
    value: Body,
    generation: u64,
}

/// Where a `ValueFile` reads from: the value's place in the data file, or,
/// for a compressed value, its plain bytes decompressed once at `open`.
enum Body {
    InFile(engine::StoredValue),
    Decompressed {
        plain: Vec<u8>,
        start: usize,
        len: usize,
    },
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::InFile(v) => v.len(),
            Body::Decompressed { len, .. } => *len as u64,
        }
    }

    fn read_at(&self, pos: u64, out: &mut [u8]) -> engine::Result<usize> {
        match self {
            Body::InFile(v) => v.read_at(pos, out),
            Body::Decompressed { plain, start, len } => {
                let from = usize::try_from(pos).unwrap_or(usize::MAX).min(*len);
                let n = out.len().min(len - from);
                out[..n].copy_from_slice(&plain[start + from..start + from + n]);
                Ok(n)
            }
        }
    }
}

// SAFETY: `_snap` is only kept alive and dropped, which `engine::Snapshot`
// allows on any thread; no method of it is called through a shared
// reference. `StoredValue` is a `File` and two integers, read with `pread`,
// which is safe from any number of threads at once.
unsafe impl Sync for Held {}

struct FileState {
    held: Option<Arc<Held>>,
    pos: u64,
}

/// A read-only binary file over one stored value, as it was when
/// `store.open(key)` was called.
#[pyclass(module = "lmdb_object_store._native", name = "ValueFile", frozen)]
pub struct ValueFile {
    /// Locked only for short stretches of plain Rust, never across a read,
    /// so it is taken with the GIL held.
    state: Mutex<FileState>,
    len: u64,
}

impl ValueFile {
    /// Open the value of `key` (bytes `k`): the store's buffer is committed
    /// and a snapshot taken, as `store.snapshot()` does; a missing key is a
    /// `KeyError`.
    pub(crate) fn open(
        py: Python<'_>,
        c: &Core,
        key: &Bound<'_, PyAny>,
        k: &[u8],
    ) -> PyResult<ValueFile> {
        let snap = c.snapshot(py)?;
        let value = {
            let txn = snap.txn().map_err(to_py)?;
            match txn.get(k).map_err(to_py)? {
                None => return Err(codec::key_error(key)),
                Some(v) => {
                    match values::unpack(py, &c.compression, "DB", k, v)? {
                        // Not compressed (or a stored frame): read in place.
                        Cow::Borrowed(v) => Body::InFile(
                            engine::StoredValue::locate(txn, payload(&c.serializer, v))
                                .map_err(to_py)?,
                        ),
                        Cow::Owned(plain) => {
                            let inner = payload(&c.serializer, &plain);
                            let start = inner.as_ptr() as usize - plain.as_ptr() as usize;
                            let len = inner.len();
                            Body::Decompressed { plain, start, len }
                        }
                    }
                }
            }
        };
        let len = value.len();
        Ok(ValueFile {
            state: Mutex::new(FileState {
                held: Some(Arc::new(Held {
                    _snap: snap,
                    value,
                    generation: engine::fork_generation(),
                })),
                pos: 0,
            }),
            len,
        })
    }

    /// What a read needs: the held value and the position. Refused after
    /// `close()`, and in a child after `fork()` (the parent's read
    /// transaction, not the child's, keeps the pages from being reused).
    fn held(&self) -> PyResult<(Arc<Held>, u64)> {
        let s = self.state.lock();
        let held = s.held.clone().ok_or(StoreError::FileClosed)?;
        if held.generation != engine::fork_generation() {
            return Err(to_py(engine::Error::Forked));
        }
        Ok((held, s.pos))
    }

    /// Move to `pos` after a read that started at `from`, if no seek or
    /// close came in between.
    fn advance(&self, from: u64, n: usize) {
        let mut s = self.state.lock();
        if s.held.is_some() && s.pos == from {
            s.pos = from + n as u64;
        }
    }

    fn check_open(&self) -> PyResult<()> {
        self.held().map(|_| ())
    }
}

#[pymethods]
impl ValueFile {
    /// Read up to `size` bytes (all the rest when `size` is negative or
    /// None); `b""` at the end.
    #[pyo3(signature = (size=-1), text_signature = "(self, /, size=-1)")]
    fn read<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let (held, pos) = self.held()?;
        let remain = self.len.saturating_sub(pos);
        let n = match size {
            Some(s) if s >= 0 => (s as u64).min(remain),
            _ => remain,
        };
        let n = usize::try_from(n).map_err(|_| StoreError::OutOfMemory)?;
        let out = crate::codec::new_bytes_with(py, n, |buf| {
            py.detach(|| held.value.read_at(pos, buf))
                .map(|_| ())
                .map_err(to_py)
        })?;
        self.advance(pos, n);
        Ok(out)
    }

    /// Read up to and including the next newline (at most `size` bytes
    /// when `size` >= 0); `b""` at the end. For `pickle.load` and the like.
    #[pyo3(signature = (size=-1), text_signature = "(self, /, size=-1)")]
    fn readline<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let (held, pos) = self.held()?;
        let limit = match size {
            Some(s) if s >= 0 => s as u64,
            _ => u64::MAX,
        };
        let mut line = Vec::new();
        let mut piece = [0u8; 8192];
        while (line.len() as u64) < limit {
            let want = (limit - line.len() as u64).min(piece.len() as u64) as usize;
            let n = held
                .value
                .read_at(pos + line.len() as u64, &mut piece[..want])
                .map_err(to_py)?;
            if n == 0 {
                break;
            }
            match piece[..n].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    line.extend_from_slice(&piece[..=i]);
                    break;
                }
                None => line.extend_from_slice(&piece[..n]),
            }
        }
        self.advance(pos, line.len());
        Ok(PyBytes::new(py, &line))
    }

    /// Read the rest of the value.
    fn readall<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.read(py, None)
    }

    /// Read into `buffer` (a writable, contiguous bytes-like object);
    /// returns how many bytes were read, 0 at the end.
    fn readinto(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<usize> {
        let (held, pos) = self.held()?;
        let mut out = WritableBuffer::get(buffer)?;
        // SAFETY: `out` holds the buffer exported, writable and contiguous,
        // until it drops at the end of this call.
        let dst = unsafe { out.as_mut_slice() };
        let n = py.detach(|| held.value.read_at(pos, dst)).map_err(to_py)?;
        self.advance(pos, n);
        Ok(n)
    }

    /// Move to `offset` from the start (`whence` 0), the current position
    /// (1) or the end (2); returns the new position. Past the end is
    /// allowed: reads there return `b""`.
    #[pyo3(signature = (offset, whence=0))]
    fn seek(&self, offset: i64, whence: i32) -> PyResult<u64> {
        let mut s = self.state.lock();
        if s.held.is_none() {
            return Err(StoreError::FileClosed.into());
        }
        let base: i128 = match whence {
            0 => 0,
            1 => s.pos as i128,
            2 => self.len as i128,
            _ => {
                return Err(StoreError::BadSeek {
                    why: format!("invalid whence ({whence}, should be 0, 1 or 2)"),
                }
                .into())
            }
        };
        let to = base + offset as i128;
        let to = u64::try_from(to).map_err(|_| StoreError::BadSeek {
            why: format!("negative seek position {to}"),
        })?;
        s.pos = to;
        Ok(to)
    }

    fn tell(&self) -> PyResult<u64> {
        Ok(self.held()?.1)
    }

    fn readable(&self) -> PyResult<bool> {
        self.check_open().map(|_| true)
    }

    fn seekable(&self) -> PyResult<bool> {
        self.check_open().map(|_| true)
    }

    fn writable(&self) -> PyResult<bool> {
        self.check_open().map(|_| false)
    }

    fn isatty(&self) -> PyResult<bool> {
        self.check_open().map(|_| false)
    }

    /// Nothing to flush: the file is read-only.
    fn flush(&self) -> PyResult<()> {
        self.check_open()
    }

    /// The value's length in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.len
    }

    #[getter]
    fn closed(&self) -> bool {
        self.state.lock().held.is_none()
    }

    /// End the snapshot the file reads from (once no read is under way);
    /// every later call but `close()` raises `ValueError`.
    fn close(&self) {
        let held = self.state.lock().held.take();
        drop(held);
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().check_open()?;
        Ok(slf)
    }

    #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_pickled_bytes() {
        let mut v = vec![0x80, 4, b'B', 3, 0, 0, 0];
        v.extend_from_slice(b"abc.");
        assert_eq!(pickled_bytes(&v), Some(&b"abc"[..]));
        let framed = b"\x80\x05\x95\x0b\x00\x00\x00\x00\x00\x00\x00C\x07xxxxxxx\x94.";
        assert_eq!(pickled_bytes(framed), Some(&b"xxxxxxx"[..]));
        assert_eq!(pickled_bytes(b"\x80\x03C\x02xyq\x00."), Some(&b"xy"[..]));
        // A list, a truncated value, trailing opcodes: not one bytes object.
        assert_eq!(pickled_bytes(b"\x80\x04]\x94."), None);
        assert_eq!(pickled_bytes(b"\x80\x04B\x09\x00\x00\x00ab."), None);
        assert_eq!(pickled_bytes(b"\x80\x04C\x01a\x94\x94."), None);
    }

    #[test]
    fn recognises_msgpack_bin() {
        assert_eq!(msgpack_bin(b"\xc4\x02ab"), Some(&b"ab"[..]));
        assert_eq!(msgpack_bin(b"\xc6\x00\x00\x00\x01z"), Some(&b"z"[..]));
        assert_eq!(msgpack_bin(b"\xc4\x03ab"), None);
        assert_eq!(msgpack_bin(b"\xa2ab"), None);
    }
}
