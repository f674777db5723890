//! Streamed values: one value written from a file straight into the space
//! LMDB reserves for it (`Env::put_stream`), and one stored value located in
//! the data file so that it can be read back with `pread` while a read
//! transaction holds it (`StoredValue`), without either touching more than a
//! few pages of the memory map at a time.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::raw::c_int;
use std::os::unix::fs::FileExt;

use crate::env::ReadTxn;
use crate::error::{Error, Result};

/// Bytes read from the source per step; with writemap also the stretch of
/// the map written before its pages are given back.
const CHUNK: usize = 4 << 20;

/// A value to write: `head`, then `len` bytes of `file` from `offset`, then
/// `tail` (`head` and `tail` are the serializer's framing, if any).
pub struct Source<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub len: u64,
    pub head: &'a [u8],
    pub tail: &'a [u8],
    /// How messages name the source: "the file '/x' for key b'k'".
    pub name: &'a str,
}

impl Source<'_> {
    /// The stored value's size.
    pub fn total(&self) -> Result<usize> {
        usize::try_from(self.len)
            .ok()
            .and_then(|n| n.checked_add(self.head.len() + self.tail.len()))
            .ok_or_else(|| Error::Source {
                code: libc::EFBIG,
                what: format!("{} is too large for this machine", self.name),
            })
    }

    fn failed(&self, e: &std::io::Error) -> Error {
        Error::Source {
            code: e.raw_os_error().unwrap_or(libc::EIO),
            what: format!("reading {}", self.name),
        }
    }

    /// Read exactly `out.len()` bytes at `at`, or fewer at the end of the file.
    fn read_at(&self, out: &mut [u8], at: u64) -> Result<usize> {
        let mut done = 0;
        while done < out.len() {
            match self.file.read_at(&mut out[done..], at + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failed(&e)),
            }
        }
        Ok(done)
    }

    /// Fill `out`, the value's whole reserved space (`total()` bytes). The
    /// source must hold exactly `len` bytes from `offset`: a file that ends
    /// early or goes on past them fails the write. `in_map`: `out` is in the
    /// writable memory map (writemap), whose pages are given back to the
    /// system as they are written.
    pub(crate) fn fill(&self, out: &mut [u8], in_map: bool) -> Result<()> {
        let (head, rest) = out.split_at_mut(self.head.len());
        head.copy_from_slice(self.head);
        let (body, tail) = rest.split_at_mut(self.len as usize);
        tail.copy_from_slice(self.tail);
        let mut given_back = body.as_ptr() as usize;
        let mut done = 0;
        while done < body.len() {
            let end = (done + CHUNK).min(body.len());
            let n = self.read_at(&mut body[done..end], self.offset + done as u64)?;
            if n < end - done {
                return Err(Error::Source {
                    code: 0,
                    what: format!(
                        "{} ended after {} of the {} bytes to write (it changed while it was \
                         read, or size= is wrong); nothing was written",
                        self.name,
                        done + n,
                        self.len
                    ),
                });
            }
            done = end;
            if in_map {
                given_back = give_back(given_back, body.as_ptr() as usize + done);
            }
        }
        let mut probe = [0u8; 1];
        if self.read_at(&mut probe, self.offset + self.len)? > 0 {
            return Err(Error::Source {
                code: 0,
                what: format!(
                    "{} holds more than the {} bytes to write (it changed while it was read, or \
                     size= is wrong); nothing was written",
                    self.name, self.len
                ),
            });
        }
        Ok(())
    }
}

/// The system's page size (4096 when it cannot be read).
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Drop the whole pages of `[from, to)` of the writable map from this
/// process; returns where the next call starts.
fn give_back(from: usize, to: usize) -> usize {
    let page = page_size();
    let start = from.next_multiple_of(page);
    let end = to - to % page;
    if end <= start {
        return from;
    }
    // SAFETY: `[start, end)` lies inside a value's reserved space in LMDB's
    // writable memory map, which LMDB maps MAP_SHARED from the data file.
    // For a shared file mapping MADV_DONTNEED only unmaps the pages from
    // this process: a dirty page's contents stay in the page cache (the
    // kernel marks the page dirty as it drops the mapping), the commit's
    // msync/fdatasync writes it like any other, and the next access faults
    // the same bytes back in. Nothing is lost, and nothing else in the
    // process holds a pointer into this reserved space. A failure only
    // leaves the pages resident, so its result is ignored.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
    }
    end
}

/// Where a stored value's bytes are read from.
enum Place {
    /// The data file, from `start`, with `pread` (the page cache, not the
    /// map: reading adds nothing to the process's memory).
    File { file: File, start: u64 },
    /// The map, at `addr`, where the file cannot be used (an environment
    /// whose pages are not the system's pages).
    Map { addr: usize },
}

/// A stored value's place, for reading it in pieces. Valid only while the
/// read transaction it was found in is held (a snapshot: LMDB never reuses
/// the value's pages meanwhile, and the map does not move, growth waiting
/// for the snapshot's hold of the gate).
pub struct StoredValue {
    place: Place,
    len: u64,
}

impl StoredValue {
    /// Locate `value`, a slice that `txn` returned (or part of one).
    pub fn locate(txn: &ReadTxn<'_>, value: &[u8]) -> Result<StoredValue> {
        let len = value.len() as u64;
        let (psize, map_size, fd) = txn.layout()?;
        let at = value.as_ptr() as usize;
        let Some(start) = file_offset(at, value.len(), psize, map_size) else {
            return Ok(StoredValue {
                place: Place::Map { addr: at },
                len,
            });
        };
        // Our own descriptor: the environment may close and reopen its own
        // (a failed growth) while the value is open.
        // SAFETY: `fd` is the environment's open data file descriptor, valid
        // while `txn` holds the gate; F_DUPFD_CLOEXEC only reads it.
        let dup: c_int = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::lmdb(
                e.raw_os_error().unwrap_or(libc::EIO),
                "open the data file for reading a value",
            ));
        }
        // SAFETY: `dup` is a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(dup) };
        Ok(StoredValue {
            place: Place::File { file, start },
            len,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy the value's bytes from `pos` into `out`, as many as fit and
    /// remain; returns how many.
    pub fn read_at(&self, pos: u64, out: &mut [u8]) -> Result<usize> {
        let want = (self.len.saturating_sub(pos)).min(out.len() as u64) as usize;
        let (file, start) = match &self.place {
            Place::File { file, start } => (file, *start),
            Place::Map { addr } => {
                // SAFETY: `addr..addr+len` is the value in the map of the
                // read transaction the caller holds (see the type's doc);
                // `pos + want <= len`.
                let src =
                    unsafe { std::slice::from_raw_parts((addr + pos as usize) as *const u8, want) };
                out[..want].copy_from_slice(src);
                return Ok(want);
            }
        };
        let mut done = 0;
        while done < want {
            match file.read_at(&mut out[done..want], start + pos + done as u64) {
                Ok(0) => return Err(Error::lmdb(libc::EIO, "read a value from the data file")),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::lmdb(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        "read a value from the data file",
                    ))
                }
            }
        }
        Ok(done)
    }
}

/// The offset in the data file of the `len` bytes at `at` in the map, when
/// LMDB's pages are the system's pages (the map then starts on a page
/// boundary, and so does each of LMDB's pages). The page holding the first
/// byte starts at `at` rounded down; its header starts with its page number
/// (`mp_pgno`, a size_t) and has its flags (`mp_flags`, a u16) at byte 10:
/// a leaf page (the value inside it) or the first of the value's
/// consecutive overflow pages.
fn file_offset(at: usize, len: usize, psize: usize, map_size: usize) -> Option<u64> {
    const P_LEAF: u16 = 0x02;
    const P_OVERFLOW: u16 = 0x04;
    if psize != page_size() || !psize.is_power_of_two() {
        return None;
    }
    let page = at & !(psize - 1);
    // SAFETY: `page` is the start of the system page, hence of the LMDB
    // page, that holds the value's first byte: mapped (the caller holds the
    // gate) and unchanging while the read transaction lasts. Both reads are
    // aligned.
    let (pgno, flags) = unsafe {
        (
            std::ptr::read(page as *const usize),
            std::ptr::read((page + 10) as *const u16),
        )
    };
    if flags & (P_LEAF | P_OVERFLOW) == 0 {
        return None;
    }
    let start = pgno.checked_mul(psize)?.checked_add(at - page)?;
    (start.checked_add(len)? <= map_size).then_some(start as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{Env, EnvOptions};
    use std::sync::Arc;

    fn tempdir(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "engine-stream-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn open(dir: &std::path::Path, writemap: bool) -> Arc<Env> {
        let options = EnvOptions {
            writemap,
            map_size: 1 << 20,
            ..EnvOptions::default()
        };
        Env::acquire(dir, &options).unwrap()
    }

    fn stored(env: &Env, key: &[u8]) -> Option<Vec<u8>> {
        let txn = env.begin_read(env.gate.wait_shared()).unwrap().unwrap();
        txn.get(key).unwrap().map(<[u8]>::to_vec)
    }

    fn source<'a>(file: &'a File, offset: u64, len: u64) -> Source<'a> {
        Source {
            file,
            offset,
            len,
            head: b"<",
            tail: b">",
            name: "the test file",
        }
    }

    #[test]
    fn writes_the_file_between_its_framing_and_reads_it_back_from_the_file() {
        for writemap in [false, true] {
            let dir = tempdir("round");
            let data: Vec<u8> = (0..(9 << 20) + 5).map(|i| (i % 251) as u8).collect();
            let path = dir.join("src");
            std::fs::write(&path, &data).unwrap();
            let file = File::open(&path).unwrap();
            let env = open(&dir, writemap);
            env.put_stream(
                &crate::Table::main(),
                b"k",
                &source(&file, 3, data.len() as u64 - 3),
                None,
            )
            .unwrap();
            let got = stored(&env, b"k").unwrap();
            assert_eq!(got.len(), data.len() - 3 + 2);
            assert!(got[0] == b'<' && got[got.len() - 1] == b'>');
            assert!(got[1..got.len() - 1] == data[3..], "writemap={writemap}");
            {
                let txn = env.begin_read(env.gate.wait_shared()).unwrap().unwrap();
                let v = txn.get(b"k").unwrap().unwrap();
                let value = StoredValue::locate(&txn, &v[1..v.len() - 1]).unwrap();
                assert!(matches!(value.place, Place::File { .. }));
                let mut out = vec![0u8; 1 << 20];
                let n = value.read_at(5 << 20, &mut out).unwrap();
                assert_eq!(out[..n], data[3 + (5 << 20)..3 + (6 << 20)]);
            }
            // A small value lives inside a leaf page: found there too.
            let small = dir.join("small");
            std::fs::write(&small, b"0123456789").unwrap();
            let small = File::open(&small).unwrap();
            env.put_stream(&crate::Table::main(), b"s", &source(&small, 2, 8), None)
                .unwrap();
            {
                let txn = env.begin_read(env.gate.wait_shared()).unwrap().unwrap();
                let v = txn.get(b"s").unwrap().unwrap();
                assert_eq!(v, b"<23456789>");
                let value = StoredValue::locate(&txn, &v[1..9]).unwrap();
                assert!(matches!(value.place, Place::File { .. }));
                let mut out = [0u8; 16];
                assert_eq!(value.read_at(1, &mut out).unwrap(), 7);
                assert_eq!(&out[..7], b"3456789");
            }
            env.release().unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_source_shorter_or_longer_than_announced_writes_nothing() {
        let dir = tempdir("short");
        let path = dir.join("src");
        std::fs::write(&path, vec![7u8; 100_000]).unwrap();
        let file = File::open(&path).unwrap();
        let env = open(&dir, false);
        let short = env
            .put_stream(
                &crate::Table::main(),
                b"k",
                &source(&file, 0, 100_001),
                None,
            )
            .unwrap_err();
        assert!(
            matches!(&short, Error::Source { code: 0, what } if what.contains("ended after 100000 of the 100001")),
            "{short}"
        );
        let long = env
            .put_stream(&crate::Table::main(), b"k", &source(&file, 0, 99_999), None)
            .unwrap_err();
        assert!(
            matches!(&long, Error::Source { code: 0, what } if what.contains("holds more than the 99999")),
            "{long}"
        );
        assert_eq!(stored(&env, b"k"), None);
        env.put_stream(&crate::Table::main(), b"k", &source(&file, 1, 99_999), None)
            .unwrap();
        assert_eq!(stored(&env, b"k").unwrap().len(), 100_001);
        env.release().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
