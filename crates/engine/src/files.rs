//! The files of an LMDB environment on disk: where they are, whether the data
//! file holds what its header claims, disk space for the files LMDB writes
//! through a memory map, and the lock that keeps processes from resizing a
//! shared writable map at the same time. No PyO3, and no LMDB handle: only
//! the files.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The data file and the lock file of an environment.
#[derive(Clone, Debug)]
pub struct EnvPaths {
    pub data: PathBuf,
    pub lock: PathBuf,
}

impl EnvPaths {
    /// LMDB's names: `data.mdb` and `lock.mdb` in the directory, or the file
    /// itself and `<file>-lock` beside it with `subdir=False`.
    pub fn new(path: &Path, subdir: bool) -> Self {
        if subdir {
            EnvPaths {
                data: path.join("data.mdb"),
                lock: path.join("lock.mdb"),
            }
        } else {
            let mut lock = path.as_os_str().to_owned();
            lock.push("-lock");
            EnvPaths {
                data: path.to_path_buf(),
                lock: PathBuf::from(lock),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The data file's header (LMDB 0.9's on-disk format, native byte order)
// ---------------------------------------------------------------------------

const WORD: usize = std::mem::size_of::<usize>();
/// `MDB_page`'s header: pgno, pad, flags, lower, upper.
const PAGE_HEADER: usize = WORD + 8;
/// `MDB_db`: pad, flags, depth, then branch, leaf, overflow, entries, root.
const DB_RECORD: usize = 8 + 5 * WORD;
/// `MDB_meta` up to and including its txnid.
const META: usize = 8 + 2 * WORD + 2 * DB_RECORD + 2 * WORD;
const MAGIC: u32 = 0xBEEF_C0DE;
const DATA_VERSION: u32 = 1;
const P_BRANCH: u16 = 0x01;
const P_LEAF: u16 = 0x02;
const P_OVERFLOW: u16 = 0x04;
const P_META: u16 = 0x08;
const P_LEAF2: u16 = 0x20;
const F_BIGDATA: u16 = 0x01;
const P_INVALID: usize = !0;
/// `MDB_node`'s header: lo, hi, flags, ksize.
const NODE_HEADER: usize = 8;
/// Deeper than any B-tree LMDB can build over a 64-bit page space.
const MAX_DEPTH: usize = 64;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn word_at(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from_ne_bytes(b.get(at..at + WORD)?.try_into().ok()?))
}

/// One database record of a meta page.
#[derive(Clone, Copy, Debug)]
struct DbRecord {
    pad: u32,
    root: usize,
}

impl DbRecord {
    fn parse(b: &[u8]) -> Option<Self> {
        Some(DbRecord {
            pad: u32_at(b, 0)?,
            root: word_at(b, 8 + 4 * WORD)?,
        })
    }
}

/// What one meta page says.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub page_size: usize,
    pub map_size: usize,
    pub last_pgno: usize,
    pub txnid: usize,
    free_root: usize,
    main_root: usize,
}

enum MetaRead {
    /// The file ends before the page's header.
    Short(usize),
    /// Not a meta page of this LMDB version.
    Invalid,
    Valid(Meta),
}

fn read_meta(file: &File, offset: u64) -> io::Result<MetaRead> {
    let mut buf = [0u8; PAGE_HEADER + META];
    let got = read_up_to(file, &mut buf, offset)?;
    if got < buf.len() {
        return Ok(MetaRead::Short(got));
    }
    let flags = u16_at(&buf, WORD + 2).unwrap_or(0);
    let m = &buf[PAGE_HEADER..];
    if flags & P_META == 0 || u32_at(m, 0) != Some(MAGIC) || u32_at(m, 4) != Some(DATA_VERSION) {
        return Ok(MetaRead::Invalid);
    }
    let dbs = 8 + 2 * WORD;
    let (Some(free), Some(main)) = (
        DbRecord::parse(&m[dbs..]),
        DbRecord::parse(&m[dbs + DB_RECORD..]),
    ) else {
        return Ok(MetaRead::Invalid);
    };
    let after = dbs + 2 * DB_RECORD;
    Ok(MetaRead::Valid(Meta {
        // LMDB keeps the page size in the free database's pad field.
        page_size: free.pad as usize,
        map_size: word_at(m, 8 + WORD).unwrap_or(0),
        last_pgno: word_at(m, after).unwrap_or(0),
        txnid: word_at(m, after + WORD).unwrap_or(0),
        free_root: free.root,
        main_root: main.root,
    }))
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What the data file is, judged from its size and its two meta pages.
#[derive(Debug)]
pub enum DataFile {
    /// Zero bytes long.
    Empty,
    /// Its first page is not an LMDB meta page of this version: LMDB's own
    /// open reports that ("not an LMDB file", "version mismatch").
    Foreign,
    /// An LMDB data file that holds every page its header claims, or lacks
    /// only pages that are free (LMDB does not write a page that was
    /// allocated and freed in one transaction, so a sound file may end
    /// before its last page). `map_size` is the larger of the two meta
    /// pages' map sizes.
    Sound {
        newest: Meta,
        map_size: usize,
        len: u64,
    },
    /// Truncated or damaged: reading it would touch memory past the end of
    /// the file (SIGBUS). The text says what is wrong, as a predicate of
    /// "the data file <path> ...".
    Damaged(String),
}

/// Judge the data file open as `file`. Reads both meta pages and, only when
/// the file is shorter than its newest meta page claims, the free list.
///
/// Another process may commit meanwhile. The meta pages are read before the
/// file's length, and LMDB writes a transaction's pages before its meta
/// page, so a commit never makes a sound file look short. The free list is
/// read without a reader slot: its pages can be reused only two commits
/// later, so a verdict of damage is retried when two commits happened
/// during the walk.
pub fn inspect(file: &File) -> io::Result<DataFile> {
    let mut attempts = 0;
    loop {
        let (verdict, walked) = inspect_once(file)?;
        if let (DataFile::Damaged(_), Some(txnid)) = (&verdict, walked) {
            attempts += 1;
            let moved = match read_meta(file, 0)? {
                MetaRead::Valid(m) => newest_txnid(file, &m)? > txnid.saturating_add(1),
                _ => false,
            };
            if moved && attempts < 10 {
                continue;
            }
        }
        return Ok(verdict);
    }
}

fn newest_txnid(file: &File, first: &Meta) -> io::Result<usize> {
    Ok(match read_meta(file, first.page_size as u64)? {
        MetaRead::Valid(second) => second.txnid.max(first.txnid),
        _ => first.txnid,
    })
}

/// One look at the file; also the txnid whose free list was walked, if any.
fn inspect_once(file: &File) -> io::Result<(DataFile, Option<usize>)> {
    let first = match read_meta(file, 0)? {
        MetaRead::Valid(m) => m,
        MetaRead::Short(0) => {
            // Empty now; a process that is creating it may have written its
            // meta pages since the read: only a zero length says empty.
            if file.metadata()?.len() == 0 {
                return Ok((DataFile::Empty, None));
            }
            return Ok((DataFile::Foreign, None));
        }
        MetaRead::Short(_) | MetaRead::Invalid => return Ok((DataFile::Foreign, None)),
    };
    let psize = first.page_size;
    if !(psize.is_power_of_two() && (512..=65536).contains(&psize)) {
        let text = format!(
            "has a header that gives a page size of {psize} bytes, which LMDB never uses: \
             damaged (restore it from a copy)"
        );
        return Ok((DataFile::Damaged(text), None));
    }
    let second = match read_meta(file, psize as u64)? {
        MetaRead::Valid(m) => Some(m),
        // LMDB's own open reports a second meta page that is not one.
        MetaRead::Invalid => return Ok((DataFile::Foreign, None)),
        MetaRead::Short(_) => None,
    };
    let len = file.metadata()?.len();
    let Some(second) = second else {
        let claimed = claimed_bytes(&first).max(2 * psize as u128);
        return Ok((DataFile::Damaged(short_message(len, claimed)), None));
    };
    if second.page_size != psize {
        let text = format!(
            "has two meta pages that give different page sizes ({psize} and {}): damaged \
             (restore it from a copy)",
            second.page_size
        );
        return Ok((DataFile::Damaged(text), None));
    }
    let newest = if second.txnid > first.txnid {
        second
    } else {
        first
    };
    let map_size = second.map_size.max(first.map_size);
    if (len as u128) < claimed_bytes(&newest) {
        if let Err(problem) = missing_pages_are_free(file, &newest, len) {
            return Ok((DataFile::Damaged(problem), Some(newest.txnid)));
        }
    }
    Ok((
        DataFile::Sound {
            newest,
            map_size,
            len,
        },
        None,
    ))
}

fn claimed_bytes(meta: &Meta) -> u128 {
    (meta.last_pgno as u128 + 1) * meta.page_size as u128
}

fn short_message(len: u64, claimed: u128) -> String {
    format!(
        "is {len} bytes but its header says it holds {claimed}: truncated or damaged \
         (restore it from a copy)"
    )
}

/// Every page past the end of the file must be free: listed in the free
/// database, which is read with `pread` (never through a map). The error
/// says what is missing.
fn missing_pages_are_free(file: &File, meta: &Meta, len: u64) -> std::result::Result<(), String> {
    let psize = meta.page_size;
    let present = (len / psize as u64) as usize;
    let short = || short_message(len, claimed_bytes(meta));
    let Some(pages) = meta.last_pgno.checked_add(1) else {
        return Err(short());
    };
    // Pages that every read starts from.
    for root in [meta.main_root, meta.free_root] {
        if root != P_INVALID && root >= present {
            return Err(short());
        }
    }
    let mut free: Vec<usize> = Vec::new();
    let mut reader = PageReader {
        file,
        psize,
        present,
        pages_read: 0,
        last_pgno: meta.last_pgno,
    };
    if meta.free_root != P_INVALID {
        reader
            .collect_free(meta.free_root, 0, &mut free)
            .map_err(|e| match e {
                Walk::Missing => short(),
                Walk::Damaged(what) => format!(
                    "is {len} bytes, shorter than its header claims, and its free list is damaged \
                     ({what}): truncated or damaged (restore it from a copy)"
                ),
            })?;
    }
    free.retain(|&p| p >= present && p <= meta.last_pgno);
    free.sort_unstable();
    free.dedup();
    if free.len() == pages - present {
        Ok(())
    } else {
        Err(short())
    }
}

enum Walk {
    /// A page the walk needs lies past the end of the file.
    Missing,
    Damaged(&'static str),
}

struct PageReader<'f> {
    file: &'f File,
    psize: usize,
    /// Pages wholly inside the file.
    present: usize,
    pages_read: usize,
    last_pgno: usize,
}

impl PageReader<'_> {
    fn read(&mut self, pgno: usize, count: usize) -> std::result::Result<Vec<u8>, Walk> {
        // `last_pgno + 1` fits: checked by the caller.
        if pgno > self.last_pgno || count > self.last_pgno + 1 - pgno {
            return Err(Walk::Damaged("a page number past the last page"));
        }
        if pgno + count > self.present {
            return Err(Walk::Missing);
        }
        // A cycle in a damaged tree would read pages forever.
        self.pages_read += count;
        if self.pages_read > self.present {
            return Err(Walk::Damaged("pages reached more than once"));
        }
        let mut buf = vec![0u8; count * self.psize];
        match read_up_to(self.file, &mut buf, (pgno * self.psize) as u64) {
            Ok(n) if n == buf.len() => Ok(buf),
            Ok(_) => Err(Walk::Missing),
            Err(_) => Err(Walk::Damaged("a page that cannot be read")),
        }
    }

    /// Add the page numbers listed under the free-database page `pgno`.
    fn collect_free(
        &mut self,
        pgno: usize,
        depth: usize,
        out: &mut Vec<usize>,
    ) -> std::result::Result<(), Walk> {
        if depth > MAX_DEPTH {
            return Err(Walk::Damaged("a tree deeper than LMDB builds"));
        }
        let page = self.read(pgno, 1)?;
        let flags = u16_at(&page, WORD + 2).unwrap_or(0);
        let lower = u16_at(&page, WORD + 4).unwrap_or(0) as usize;
        if word_at(&page, 0) != Some(pgno) || lower < PAGE_HEADER || lower > self.psize {
            return Err(Walk::Damaged("a page that is not where it says"));
        }
        let keys = (lower - PAGE_HEADER) / 2;
        for i in 0..keys {
            let at = u16_at(&page, PAGE_HEADER + 2 * i).unwrap_or(0) as usize;
            let node = page
                .get(at..at + NODE_HEADER)
                .ok_or(Walk::Damaged("a node outside its page"))?;
            let (lo, hi) = if cfg!(target_endian = "little") {
                (u16_at(node, 0), u16_at(node, 2))
            } else {
                (u16_at(node, 2), u16_at(node, 0))
            };
            let (lo, hi) = (lo.unwrap_or(0) as usize, hi.unwrap_or(0) as usize);
            let node_flags = u16_at(node, 4).unwrap_or(0);
            let ksize = u16_at(node, 6).unwrap_or(0) as usize;
            if flags & P_BRANCH != 0 {
                let mut child = lo | (hi << 16);
                if WORD > 4 {
                    child |= (node_flags as usize) << 32;
                }
                self.collect_free(child, depth + 1, out)?;
            } else if flags & P_LEAF != 0 && flags & P_LEAF2 == 0 {
                let size = lo | (hi << 16);
                let data_at = at + NODE_HEADER + ksize;
                let ids = if node_flags & F_BIGDATA != 0 {
                    let first =
                        word_at(&page, data_at).ok_or(Walk::Damaged("a node outside its page"))?;
                    let count = (PAGE_HEADER + size).div_ceil(self.psize);
                    let run = self.read(first, count)?;
                    let head = u16_at(&run, WORD + 2).unwrap_or(0);
                    if head & P_OVERFLOW == 0 {
                        return Err(Walk::Damaged("a value page that is not one"));
                    }
                    run[PAGE_HEADER..PAGE_HEADER + size].to_vec()
                } else {
                    page.get(data_at..data_at + size)
                        .ok_or(Walk::Damaged("a node outside its page"))?
                        .to_vec()
                };
                // An ID list: its length, then that many page numbers.
                let n = word_at(&ids, 0).ok_or(Walk::Damaged("an empty free-list record"))?;
                if n > ids.len() / WORD - 1 {
                    return Err(Walk::Damaged("a free-list record longer than its value"));
                }
                out.extend((1..=n).filter_map(|k| word_at(&ids, k * WORD)));
            } else {
                return Err(Walk::Damaged("a page of an unknown kind"));
            }
        }
        Ok(())
    }
}

/// The largest map size either meta page of `file` records, 0 if none.
pub fn recorded_map_size(file: &File) -> io::Result<usize> {
    Ok(match inspect(file)? {
        DataFile::Sound { map_size, .. } => map_size,
        _ => 0,
    })
}

// ---------------------------------------------------------------------------
// Disk space
// ---------------------------------------------------------------------------

/// What `allocate` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    Done,
    /// The file system cannot allocate ahead (EOPNOTSUPP): nothing done.
    Unsupported,
}

/// Give `[offset, offset + len)` of `file` real disk blocks. With
/// `keep_size` the file's length never changes; without it the file grows to
/// `offset + len` if it is shorter.
#[cfg(target_os = "linux")]
pub fn allocate(file: &File, offset: u64, len: u64, keep_size: bool) -> io::Result<Allocation> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(Allocation::Done);
    }
    let mode = if keep_size {
        libc::FALLOC_FL_KEEP_SIZE
    } else {
        0
    };
    loop {
        // SAFETY: plain syscall on an open descriptor; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(Allocation::Done);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => return Ok(Allocation::Unsupported),
            _ => return Err(err),
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn allocate(_file: &File, _offset: u64, _len: u64, _keep_size: bool) -> io::Result<Allocation> {
    Ok(Allocation::Unsupported)
}

/// The size LMDB gives a new lock file for `max_readers` reader slots:
/// `(max_readers - 1) * sizeof(MDB_reader) + sizeof(MDB_txninfo)`, with
/// LMDB's layout on Linux (pthread mutexes, 64-byte cache lines).
#[cfg(target_os = "linux")]
pub fn lock_file_size(max_readers: u32) -> u64 {
    const CACHELINE: usize = 64;
    const fn lines(n: usize) -> usize {
        (n + CACHELINE - 1) & !(CACHELINE - 1)
    }
    #[repr(C)]
    struct TxBody {
        magic: u32,
        format: u32,
        rmutex: libc::pthread_mutex_t,
        txnid: usize,
        numreaders: std::os::raw::c_uint,
    }
    #[repr(C)]
    struct RxBody {
        txnid: usize,
        pid: libc::pid_t,
        tid: libc::pthread_t,
    }
    let reader = lines(std::mem::size_of::<RxBody>());
    let txninfo = lines(std::mem::size_of::<TxBody>())
        + lines(std::mem::size_of::<libc::pthread_mutex_t>())
        + reader;
    (max_readers.max(1) as u64 - 1) * reader as u64 + txninfo as u64
}

/// Before LMDB opens the environment: give the lock file real disk blocks
/// when no process has it open. LMDB makes it with `ftruncate` (a sparse
/// file) and then writes it through a memory map, which dies with SIGBUS on
/// a full disk instead of failing. Sized exactly as LMDB would size it
/// (LMDB reads `max_readers` back from an existing lock file's length).
/// Returns whether this call created the file. A file that cannot be opened
/// is left for LMDB to report.
pub fn prepare_lock_file(path: &Path, max_readers: u32, mode: u32) -> io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let existed = path.symlink_metadata().is_ok();
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(mode)
        .open(path)
    else {
        return Ok(false);
    };
    let created = !existed;
    #[cfg(target_os = "linux")]
    {
        // Held only by a process that has the environment open (LMDB keeps a
        // shared lock on this byte); while we hold it, nobody sizes the file.
        if let Some(_alone) = RangeLock::try_exclusive(&file, 0)? {
            let len = file.metadata()?.len();
            let wanted = lock_file_size(max_readers);
            let target = if len < wanted { wanted } else { len };
            if let Err(e) = allocate(&file, 0, target, false) {
                if created {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (max_readers, &file);
    Ok(created)
}

// ---------------------------------------------------------------------------
// Locks (open file description locks: owned by the descriptor, not the
// process, so closing another descriptor of the same file never drops them)
// ---------------------------------------------------------------------------

/// The byte of the data file that processes of this package lock
/// exclusively while they open it with `writemap` or resize such a map. LMDB
/// locks nothing in the data file.
pub const GROWTH_LOCK_BYTE: u64 = (i64::MAX - 1) as u64;

/// An exclusive lock on one byte of a file; released when dropped.
pub struct RangeLock<'f> {
    file: &'f File,
    at: u64,
}

#[cfg(target_os = "linux")]
fn ofd_lock(file: &File, kind: i32, at: u64, wait: bool) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero `flock` is valid; the fields that matter are set
    // below (l_pid must be 0 for open file description locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = at as libc::off_t;
    fl.l_len = 1;
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    loop {
        // SAFETY: `fl` is a valid flock for the duration of the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => return Ok(false),
            _ => return Err(err),
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn ofd_lock(_file: &File, _kind: i32, _at: u64, _wait: bool) -> io::Result<bool> {
    Ok(true)
}

impl<'f> RangeLock<'f> {
    /// Wait for the byte at `at` and hold it exclusively.
    pub fn exclusive(file: &'f File, at: u64) -> io::Result<Self> {
        ofd_lock(file, libc::F_WRLCK, at, true)?;
        Ok(RangeLock { file, at })
    }

    /// Hold the byte at `at` exclusively if nobody else holds it.
    pub fn try_exclusive(file: &'f File, at: u64) -> io::Result<Option<Self>> {
        Ok(ofd_lock(file, libc::F_WRLCK, at, false)?.then_some(RangeLock { file, at }))
    }
}

impl Drop for RangeLock<'_> {
    fn drop(&mut self) {
        let _ = ofd_lock(self.file, libc::F_UNLCK, self.at, false);
    }
}

/// After a failed open: remove the data and lock files that the open
/// created (`keep_data` / `keep_lock` say which existed before), but only
/// when no process has the environment open. Best effort.
pub fn remove_created(paths: &EnvPaths, keep_data: bool, keep_lock: bool) {
    if keep_data && keep_lock {
        return;
    }
    let lock_file = match File::options().read(true).write(true).open(&paths.lock) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        // There, but whether it is in use cannot be told: leave everything.
        Err(_) => return,
    };
    let _alone = match &lock_file {
        Some(f) => match RangeLock::try_exclusive(f, 0) {
            Ok(Some(held)) => Some(held),
            // In use by another process, or unknown: leave everything.
            _ => return,
        },
        None => None,
    };
    if !keep_data {
        let _ = std::fs::remove_file(&paths.data);
    }
    if !keep_lock && lock_file.is_some() {
        let _ = std::fs::remove_file(&paths.lock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sizes() {
        if WORD == 8 {
            assert_eq!(PAGE_HEADER, 16);
            assert_eq!(DB_RECORD, 48);
            assert_eq!(META, 136);
        }
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn lock_file_size_matches_lmdb_on_x86_64() {
        // Measured: LMDB makes a 65664-byte lock file for 1024 readers and
        // an 8192-byte one for 126.
        assert_eq!(lock_file_size(1024), 65664);
        assert_eq!(lock_file_size(126), 8192);
    }
}
