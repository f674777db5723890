//! Compression of stored values (`compression=`, `compression_threshold=`):
//! the frame that marks a compressed value on disk, and zstd and LZ4 on
//! either side of it.
//!
//! A frame is `MAGIC` (4 bytes), a method byte, the plain value's length
//! (u64, little-endian), then the payload. The first magic byte, 0xC1, can
//! start no value that pickle (any protocol), `.npy`, UTF-8 JSON or
//! MessagePack (0xC1 is its one reserved byte) writes, so for those
//! serializers a frame is unambiguous by construction. A raw or custom value
//! can start with anything: a store with compression writes such a value,
//! when it starts with `MAGIC` and is not compressed, inside a `Stored`
//! frame, so that every value it wrote reads back as written.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Read;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::errors::StoreError;

/// The first bytes of every frame.
pub const MAGIC: [u8; 4] = [0xC1, b'L', b'O', b'S'];
/// `MAGIC`, the method byte and the plain length.
pub const HEADER: usize = MAGIC.len() + 1 + 8;
/// Values this large or larger are compressed unless told otherwise:
/// below it a value gains little (a pickled record of a few fields shrinks
/// by a few bytes at best) and pays the call on every read.
pub const DEFAULT_THRESHOLD: usize = 1024;
/// Values at least this large are compressed or decompressed with the GIL
/// released: below it, handing the GIL over costs more than the work.
const DETACH_AT: usize = 64 * 1024;
/// LZ4 compresses in independent blocks of this many plain bytes, so that
/// a read allocates only as much as the blocks it has checked produce (its
/// window is 64 KiB: the blocks cost no ratio).
const LZ4_BLOCK: usize = 1 << 20;
/// The most a read reserves ahead of what decompression has produced.
const RESERVE_AHEAD: usize = 64 << 20;
/// The compression levels used: zstd's default, LZ4 has one.
const ZSTD_LEVEL: i32 = 3;

/// The names `compression=` takes, as the error for an unknown one lists
/// them.
const NAMES: &str = "None, 'zstd', 'lz4'";

/// How the payload of a frame is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// As it is: a raw value that starts with `MAGIC`, escaped.
    Stored = 0,
    Zstd = 1,
    Lz4 = 2,
}

impl Method {
    fn from_byte(b: u8) -> Option<Method> {
        match b {
            0 => Some(Method::Stored),
            1 => Some(Method::Zstd),
            2 => Some(Method::Lz4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Stored => "none (stored)",
            Method::Zstd => "zstd",
            Method::Lz4 => "lz4",
        }
    }

    /// The most plain bytes `payload` bytes of this method can produce: a
    /// frame declaring more is corrupt, and a read never reserves for it.
    /// zstd: every block of at most 128 KiB costs at least 4 bytes (a
    /// 3-byte header and an RLE byte); LZ4: a byte of match length codes at
    /// most 255 bytes, and each block adds a 4-byte length.
    fn max_plain(self, payload: usize) -> u64 {
        let p = payload as u64;
        match self {
            Method::Stored => p,
            Method::Zstd => p.saturating_mul(32 * 1024),
            Method::Lz4 => p.saturating_mul(255),
        }
    }
}

/// A store's `compression=` and `compression_threshold=`, checked.
#[derive(Clone, Copy, Debug)]
pub struct Compression {
    /// `None`: values are written as they are and frames are not read.
    method: Option<Method>,
    threshold: usize,
}

impl Compression {
    /// No compression: the default, and what 0.1.0 wrote.
    pub const OFF: Compression = Compression {
        method: None,
        threshold: DEFAULT_THRESHOLD,
    };

    /// From `compression=` and the already checked `compression_threshold=`
    /// (None: not given); a bad one raises, naming itself.
    pub fn parse(
        compression: Option<&Bound<'_, PyAny>>,
        threshold: Option<usize>,
    ) -> PyResult<Self> {
        let method = match compression.filter(|c| !c.is_none()) {
            None => None,
            Some(c) => match c.cast::<PyString>().ok().map(|s| s.to_str()).transpose()? {
                Some("zstd") => Some(Method::Zstd),
                Some("lz4") => Some(Method::Lz4),
                _ => {
                    return Err(StoreError::UnknownCompression {
                        shown: c
                            .repr()
                            .map(|r| r.to_string())
                            .unwrap_or_else(|_| "?".into()),
                        valid: NAMES,
                    }
                    .into())
                }
            },
        };
        if threshold.is_some() && method.is_none() {
            return Err(StoreError::ThresholdWithoutCompression.into());
        }
        Ok(Compression {
            method,
            threshold: threshold.unwrap_or(DEFAULT_THRESHOLD),
        })
    }

    /// What `store.compression` returns: the name or None.
    pub fn name(&self) -> Option<&'static str> {
        self.method.map(Method::name)
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The header of a `Stored` frame of `len` bytes, on a store that reads
    /// frames: what `put_file` writes before a raw value, which it streams
    /// without looking at it first (the value might start with `MAGIC`).
    pub fn stored_header(&self, len: u64) -> Option<Vec<u8>> {
        self.method?;
        let mut head = Vec::with_capacity(HEADER);
        head.extend_from_slice(&MAGIC);
        head.push(Method::Stored as u8);
        head.extend_from_slice(&len.to_le_bytes());
        Some(head)
    }

    /// The constructor keywords that make this setting again.
    pub fn add_kwargs(&self, kwargs: &Bound<'_, PyDict>) -> PyResult<()> {
        if self.method.is_some() {
            kwargs.set_item("compression", self.name())?;
            kwargs.set_item("compression_threshold", self.threshold)?;
        }
        Ok(())
    }

    /// The bytes to store for the encoded value `encoded`: itself, or a
    /// frame (compressed when that is smaller, `Stored` when the value would
    /// otherwise look like a frame). Without compression, always itself.
    #[inline]
    pub fn pack<'py>(
        &self,
        py: Python<'py>,
        encoded: Bound<'py, PyBytes>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let Some(method) = self.method else {
            return Ok(encoded);
        };
        let data = encoded.as_bytes();
        let copies = data.len() >= self.threshold || data.starts_with(&MAGIC);
        if copies && data.len() >= ROOM_CHECKED_FROM {
            // Compressing holds the output and its frame at once (each at
            // most about the value's size), in allocations that cannot fail
            // gracefully: with no room for them, MemoryError now.
            let room = data.len().saturating_mul(2).saturating_add(1 << 16);
            crate::codec::room_for::<u8>(room, "bytes to compress or frame a value")?;
        }
        if data.len() >= self.threshold {
            let framed = if data.len() >= DETACH_AT {
                py.detach(|| compress(method, data))
            } else {
                compress(method, data)
            };
            if let Some(framed) = framed {
                return crate::codec::new_bytes(py, &framed);
            }
        }
        if data.starts_with(&MAGIC) {
            return crate::codec::new_bytes(py, &frame(Method::Stored, data, data.len()));
        }
        Ok(encoded)
    }

    /// The plain bytes of the stored `data`: `data` itself when it is not a
    /// frame (or the store reads no frames), the frame's payload decoded
    /// otherwise. `Err` says why a frame does not read.
    #[inline]
    pub fn unpack<'a>(&self, py: Python<'_>, data: &'a [u8]) -> Result<Cow<'a, [u8]>, String> {
        if self.method.is_none() || !data.starts_with(&MAGIC) {
            return Ok(Cow::Borrowed(data));
        }
        if data.len() >= DETACH_AT {
            py.detach(|| unframe(data))
        } else {
            unframe(data)
        }
    }
}

/// The method of a frame whose header reads, for the message of a store
/// without compression that meets one.
pub fn frame_method(data: &[u8]) -> Option<Method> {
    if data.len() < HEADER || !data.starts_with(&MAGIC) {
        return None;
    }
    Method::from_byte(data[MAGIC.len()])
}

/// `data` compressed with `method`, framed; `None` if that is not smaller.
pub fn compress(method: Method, data: &[u8]) -> Option<Vec<u8>> {
    let payload = match method {
        Method::Stored => return None,
        Method::Zstd => zstd_compress(data)?,
        Method::Lz4 => lz4_blocks(data),
    };
    // A frame that a read would refuse as impossible is never written.
    if HEADER + payload.len() >= data.len() || (data.len() as u64) > method.max_plain(payload.len())
    {
        return None;
    }
    Some(frame(method, &payload, data.len()))
}

/// Values from this size on are compressed only after checking that there
/// is room for it (smaller ones fit in the allocator's reserve, see
/// `engine::reserve`).
const ROOM_CHECKED_FROM: usize = 1 << 20;

thread_local! {
    // A zstd context costs more to make than a small value costs to
    // compress: each thread keeps one of each kind.
    static ZSTD_COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    static ZSTD_DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn zstd_compress(data: &[u8]) -> Option<Vec<u8>> {
    ZSTD_COMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?);
        }
        slot.as_mut()?.compress(data).ok()
    })
}

fn frame(method: Method, payload: &[u8], plain_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(method as u8);
    out.extend_from_slice(&(plain_len as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Each block of `LZ4_BLOCK` plain bytes as its compressed length (u32,
/// little-endian) and the block.
fn lz4_blocks(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lz4_flex::block::get_maximum_output_size(data.len()) + 64);
    for block in data.chunks(LZ4_BLOCK) {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        out.resize(
            at + 4 + lz4_flex::block::get_maximum_output_size(block.len()),
            0,
        );
        let n = lz4_flex::block::compress_into(block, &mut out[at + 4..])
            .expect("the output was sized by get_maximum_output_size");
        out.truncate(at + 4 + n);
        out[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
    }
    out
}

/// The plain bytes of the frame `data` (which starts with `MAGIC`).
pub fn unframe(data: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if data.len() < HEADER {
        return Err(format!(
            "a compressed frame of {} bytes is shorter than its {HEADER}-byte header",
            data.len()
        ));
    }
    let method = Method::from_byte(data[MAGIC.len()]).ok_or_else(|| {
        format!(
            "a compressed frame names method {}, which this version does not know",
            data[MAGIC.len()]
        )
    })?;
    let declared = u64::from_le_bytes(data[MAGIC.len() + 1..HEADER].try_into().unwrap());
    let payload = &data[HEADER..];
    if declared > method.max_plain(payload.len()) {
        return Err(format!(
            "a {} frame of {} bytes declares {declared} plain bytes, more than it can hold",
            method.name(),
            payload.len()
        ));
    }
    // Below the cap, so it fits in memory's address space on 64-bit; the
    // conversion only fails on 32-bit.
    let declared = usize::try_from(declared)
        .map_err(|_| format!("a compressed frame declares {declared} bytes"))?;
    let plain = match method {
        Method::Stored if declared == payload.len() => return Ok(Cow::Borrowed(payload)),
        Method::Stored => {
            return Err(format!(
                "a stored frame declares {declared} bytes and holds {}",
                payload.len()
            ))
        }
        Method::Zstd => unzstd(payload, declared)?,
        Method::Lz4 => unlz4(payload, declared)?,
    };
    Ok(Cow::Owned(plain))
}

/// A buffer for `declared` bytes, reserved only up to `RESERVE_AHEAD`, and
/// without aborting the process when even that cannot be had.
fn reserve(declared: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    out.try_reserve_exact(declared.min(RESERVE_AHEAD))
        .map_err(|_| format!("cannot allocate memory for {declared} bytes"))?;
    Ok(out)
}

fn unzstd(payload: &[u8], declared: usize) -> Result<Vec<u8>, String> {
    let mut out = reserve(declared)?;
    if declared <= RESERVE_AHEAD {
        // All of it reserved: one call, into the buffer, with this thread's
        // context; more output than `declared` is an error, not a growth.
        let done = ZSTD_DECOMPRESSOR.with(|cell| -> Option<Result<usize, String>> {
            let mut slot = cell.try_borrow_mut().ok()?;
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new().ok()?);
            }
            Some(
                slot.as_mut()?
                    .decompress_to_buffer(payload, &mut out)
                    .map_err(|e| format!("zstd: {e}")),
            )
        });
        if let Some(done) = done {
            let got = done?;
            if got != declared {
                return Err(format!(
                    "zstd: the frame declares {declared} plain bytes and holds {got}"
                ));
            }
            return Ok(out);
        }
    }
    let decoder = zstd::stream::read::Decoder::with_buffer(payload)
        .map_err(|e| format!("zstd: {e}"))?
        .single_frame();
    // One byte past the declared size is enough to know it is wrong; the
    // buffer grows only with what the decoder really produced.
    decoder
        .take(declared as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    if out.len() != declared {
        return Err(format!(
            "zstd: the frame declares {declared} plain bytes and holds {}{}",
            if out.len() > declared {
                "more than "
            } else {
                ""
            },
            out.len().min(declared)
        ));
    }
    Ok(out)
}

fn unlz4(payload: &[u8], declared: usize) -> Result<Vec<u8>, String> {
    let mut out = reserve(declared)?;
    let mut rest = payload;
    while out.len() < declared {
        let want = (declared - out.len()).min(LZ4_BLOCK);
        if rest.len() < 4 {
            return Err(format!(
                "lz4: the frame ends after {} of its {declared} plain bytes",
                out.len()
            ));
        }
        let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        rest = &rest[4..];
        if n > rest.len() {
            return Err(format!(
                "lz4: a block of {n} bytes where {} are left",
                rest.len()
            ));
        }
        let at = out.len();
        out.try_reserve(want)
            .map_err(|_| format!("cannot allocate memory for {declared} bytes"))?;
        out.resize(at + want, 0);
        let got = lz4_flex::block::decompress_into(&rest[..n], &mut out[at..])
            .map_err(|e| format!("lz4: {e}"))?;
        if got != want {
            return Err(format!(
                "lz4: a block of {got} plain bytes where {want} were due"
            ));
        }
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        return Err(format!(
            "lz4: {} bytes follow the frame's {declared} plain bytes",
            rest.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 7) % 13) as u8 + b'a').collect()
    }

    #[test]
    fn round_trips_each_method_across_lz4_blocks() {
        for method in [Method::Zstd, Method::Lz4] {
            for n in [
                0,
                1,
                100,
                LZ4_BLOCK - 1,
                LZ4_BLOCK,
                LZ4_BLOCK + 1,
                3 * LZ4_BLOCK,
            ] {
                let data = sample(n);
                match compress(method, &data) {
                    Some(framed) => {
                        assert!(framed.len() < data.len());
                        assert_eq!(unframe(&framed).unwrap().as_ref(), &data[..]);
                    }
                    None => assert!(n < 64, "{method:?} did not shrink {n} bytes"),
                }
            }
        }
    }

    #[test]
    fn a_stored_frame_is_its_payload() {
        let framed = frame(Method::Stored, b"\xc1LOSabc", 7);
        assert_eq!(unframe(&framed).unwrap().as_ref(), b"\xc1LOSabc");
    }

    #[test]
    fn huge_declared_sizes_are_refused_before_any_allocation() {
        for method in [Method::Stored, Method::Zstd, Method::Lz4] {
            let mut framed = frame(method, b"tiny", 4);
            framed[5..13].copy_from_slice(&u64::MAX.to_le_bytes());
            let err = unframe(&framed).unwrap_err();
            assert!(err.contains("more than it can hold"), "{err}");
        }
    }

    #[test]
    fn truncated_and_unknown_frames_are_errors() {
        assert!(unframe(&MAGIC).is_err());
        let mut framed = compress(Method::Zstd, &sample(10_000)).unwrap();
        framed[4] = 9;
        assert!(unframe(&framed).unwrap_err().contains("method 9"));
        for method in [Method::Zstd, Method::Lz4] {
            let framed = compress(method, &sample(10_000)).unwrap();
            for cut in [HEADER, HEADER + 1, framed.len() / 2, framed.len() - 1] {
                assert!(unframe(&framed[..cut]).is_err(), "{method:?} cut at {cut}");
            }
        }
    }
}
