//! The engine's error enum: every way a storage operation can fail, each
//! with the message the user reads (its `Display`). The binding picks the
//! Python exception class for each variant and adds nothing to the text.

use std::ffi::CStr;
use std::fmt;
use std::os::raw::c_int;

/// Every failure the engine reports.
#[derive(Debug)]
pub enum Error {
    /// The store (or its environment) is closed or closing.
    Closed { path: String },
    /// The map reached its cap and the write did not fit.
    MapFull {
        map_size: usize,
        max_map_size: usize,
    },
    /// Every reader slot of the lock file is taken.
    ReadersFull { max_readers: u32 },
    /// The call would wait for a read that this same thread holds.
    WouldDeadlock(&'static str),
    /// The call would unmap memory that a buffer lent to unpickling code
    /// may still point into (see `ReadTxn::pin`).
    Pinned(&'static str),
    /// The environment was opened by the parent process before `fork()`:
    /// this process must not use it.
    Forked,
    /// An error from LMDB (negative code) or the OS (errno) during `what`.
    Lmdb { code: c_int, what: String },
    /// The environment lost its map and could not get it back: every call
    /// is refused rather than touch memory that is gone. Says what happened.
    Unusable(String),
    /// Opening `path` failed: an OS error (`code` > 0, an errno), an LMDB
    /// error (`code` < 0), or a refusal of the engine's own (`code` 0: a
    /// damaged data file, settings that clash with an open environment).
    Open {
        code: c_int,
        what: String,
        path: String,
    },
    /// The call would wait for the writer lock that this thread's own open
    /// transaction holds.
    InTransaction,
    /// A transaction was undone to grow the map, and another writer changed
    /// what it had read before it could be redone.
    Conflict,
    /// A transaction used in a child after `fork()`: it is the parent's.
    TxnForked,
    /// A transaction used by a thread other than the one that began it.
    TxnThread,
    /// Writing a copy of the environment to `path` failed: an OS error
    /// (`code` > 0, an errno, `EEXIST` for a destination that exists) or an
    /// LMDB error (`code` < 0). `what` names the source and the destination.
    Copy {
        code: c_int,
        what: String,
        path: String,
    },
    /// Reading the source of a streamed value failed (`code` an errno), or
    /// the source did not hold the bytes announced (`code` 0). `what` names
    /// the source and the key.
    Source { code: c_int, what: String },
    /// A table name LMDB cannot take (`why` says how it is wrong).
    BadTable { name: String, why: String },
    /// The table does not exist and this open may not create it.
    NoTable { name: String, path: String },
    /// A table cannot be made: the main database holds a main store's
    /// entries, beside which LMDB would keep the table's record.
    MainHoldsEntries { name: String, path: String },
    /// Every database handle of the environment is taken.
    TooManyTables { name: String, path: String },
    /// The main store of a file whose main database holds table records.
    HasTables { path: String },
    /// The table this store uses was dropped.
    TableDropped { name: String, path: String },
    /// `drop_table()` of the main store.
    DropMain { path: String },
    /// A read met a damaged page of the data file (`what` names the read and
    /// the path, `detail` what was wrong): see `guard.rs`.
    Damaged { what: String, detail: String },
    /// No memory for `what`, asked for before anything changed.
    NoMemory { what: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A name as Python's `repr` of a `str` shows most names: in single quotes.
fn quoted(name: &str) -> String {
    format!("'{}'", name.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// LMDB's own text for an error code (also covers errno values).
pub fn strerror(code: c_int) -> String {
    // SAFETY: mdb_strerror returns a pointer to a static (or thread-local
    // strerror) NUL-terminated string for any code; we copy it at once.
    unsafe {
        let p = lmdb_sys::mdb_strerror(code);
        if p.is_null() {
            return format!("error {code}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

impl Error {
    pub fn lmdb(code: c_int, what: impl Into<String>) -> Self {
        Error::Lmdb {
            code,
            what: what.into(),
        }
    }

    pub(crate) fn from_lmdb(err: lmdb::Error, what: impl Into<String>) -> Self {
        if crate::guard::is_fault(&err) || crate::guard::is_check(&err) {
            return Error::Damaged {
                what: what.into(),
                detail: crate::guard::take_fault(),
            };
        }
        Error::lmdb(err.to_err_code(), what)
    }

    /// The same failure, naming `path` if it says the store is closed: a
    /// store reports its own path, not the one its shared environment was
    /// first opened with.
    pub fn for_store(self, path: &str) -> Self {
        match self {
            Error::Closed { .. } => Error::Closed { path: path.into() },
            e => e,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Closed { path } => write!(f, "the store at {path} is closed"),
            Error::MapFull {
                map_size,
                max_map_size,
            } => write!(
                f,
                "the write does not fit: the map is {map_size} bytes and max_map_size is \
                 {max_map_size}; raise max_map_size or delete entries (nothing was written)"
            ),
            Error::ReadersFull { max_readers } => write!(
                f,
                "all {max_readers} LMDB reader slots are in use; open the store with a larger \
                 max_readers= (it must be set by the first process that opens the file)"
            ),
            Error::WouldDeadlock(what) => write!(
                f,
                "{what} would wait for a read held by this same thread (an open snapshot, or \
                 code run while unpickling a value); do it after the snapshot or the read ends"
            ),
            Error::Pinned(what) => write!(
                f,
                "{what} is refused: code run while unpickling a value kept pickle's view of \
                 the store's memory (its Unpickler, or a buffer taken in its place), so that \
                 memory stays mapped until this process exits; do that in another process"
            ),
            Error::Forked => f.write_str(
                "this LMDB environment belongs to the process that opened it, before fork(); \
                 the store opens its own in this process on its next call",
            ),
            Error::Unusable(text) => f.write_str(text),
            Error::InTransaction => f.write_str(
                "this thread has a transaction open on this store's file, and this call would \
                 wait for it to end (it commits, flushes or grows the map); do it after the \
                 with block, or through the transaction",
            ),
            Error::NoMemory { what } => {
                write!(f, "not enough memory for {what}; nothing was done")
            }
            Error::Conflict => f.write_str(
                "transaction conflict: the map had to grow, which undoes and redoes the \
                 transaction, and another writer changed what it had read in between; nothing \
                 of it was written: run the transaction again",
            ),
            Error::TxnForked => f.write_str(
                "this transaction belongs to the process that began it, before fork(); the \
                 child cannot use it (begin a new one on the store)",
            ),
            Error::TxnThread => {
                f.write_str("a transaction is used only by the thread that began it")
            }
            Error::BadTable { name, why } => {
                write!(
                    f,
                    "table={q} is not a usable table name: it {why}",
                    q = quoted(name)
                )
            }
            Error::NoTable { name, path } => write!(
                f,
                "{path} has no table {q}, and an open with readonly=True or create=False \
                 does not create one (lmdb_object_store.tables(path) lists the tables it has)",
                q = quoted(name)
            ),
            Error::MainHoldsEntries { name, path } => write!(
                f,
                "cannot open table {q} of {path}: the file holds the entries of a store \
                 opened without table=, and LMDB keeps the records of named tables in that same \
                 main table, so one file holds either such entries or named tables; put the \
                 tables in another file, or move the entries into a table first",
                q = quoted(name)
            ),
            Error::TooManyTables { name, path } => write!(
                f,
                "cannot open table {q} of {path}: this process has opened {} tables of the \
                 file, the most it may have open at once; they stay open until every store \
                 of the file in this process is closed",
                crate::tables::MAX_TABLES,
                q = quoted(name)
            ),
            Error::HasTables { path } => write!(
                f,
                "{path} holds named tables, whose records LMDB keeps in the main table: a store \
                 opened without table= cannot use that file (its entries would mix with the \
                 records); open a table with table=NAME (lmdb_object_store.tables(path) lists \
                 them)"
            ),
            Error::TableDropped { name, path } => write!(
                f,
                "table {q} of {path} was dropped (drop_table()); this store cannot be \
                 used any more: open the table again to create it anew",
                q = quoted(name)
            ),
            Error::DropMain { path } => write!(
                f,
                "drop_table() drops a named table; this store of {path} was opened without \
                 table= (its main table cannot be dropped; clear() empties it)"
            ),
            Error::Damaged { what, detail } => write!(
                f,
                "{what}: the data file is damaged ({detail}); nothing was changed. Entries \
                 on other pages may still read: copy what reads into a new store, or restore \
                 the file from a copy"
            ),
            Error::Lmdb { code, what } => {
                let text = strerror(*code);
                match write_failure_hint(*code) {
                    Some(hint) => write!(f, "{what}: {text} (code {code}); {hint}"),
                    None => write!(f, "{what}: {text} (code {code})"),
                }
            }
            Error::Open { code: 0, what, .. } => f.write_str(what),
            Error::Open { code, what, .. } => write!(f, "{what}: {}", strerror(*code)),
            Error::Source { code: 0, what } => f.write_str(what),
            Error::Source { code, what } => {
                write!(f, "{what}: {}; nothing was written", strerror(*code))
            }
            Error::Copy { code, what, .. } => {
                let text = strerror(*code);
                match (*code, copy_failure_hint(*code)) {
                    (libc::EEXIST, _) => write!(
                        f,
                        "{what}: it already exists (a copy never replaces anything: name a new \
                         path)"
                    ),
                    (_, Some(hint)) => write!(f, "{what}: {text}; {hint}"),
                    (code, None) if code > 0 => write!(f, "{what}: {text}"),
                    (code, None) => write!(f, "{what}: {text} (code {code})"),
                }
            }
        }
    }
}

impl std::error::Error for Error {}

/// What to do about an OS error that stopped a copy being written.
fn copy_failure_hint(code: c_int) -> Option<&'static str> {
    match code {
        libc::EFBIG => Some(
            "the copy may not grow past the process's file size limit (RLIMIT_FSIZE, \
             `ulimit -f`): raise the limit, then retry",
        ),
        libc::EIO => Some(
            "the copy could not be written in full: the disk may be full or the device \
             failing; fix that, then retry",
        ),
        code => write_failure_hint(code),
    }
}

/// What to do about an OS error that stopped LMDB writing its data file or
/// mapping it.
/// LMDB reports a short write as EIO, and a short write is what a file size
/// limit or a disk that fills up part-way produces, so EIO names those causes
/// too: the bare strerror text ("Input/output error") suggests a failing disk.
fn write_failure_hint(code: c_int) -> Option<&'static str> {
    match code {
        libc::ENOSPC | libc::EDQUOT => {
            Some("the disk or the quota is full: free space, then retry")
        }
        libc::EFBIG => Some(
            "the data file may not grow past the process's file size limit \
             (RLIMIT_FSIZE, `ulimit -f`): raise the limit, then retry",
        ),
        libc::ENOMEM => Some(
            "the process may not map or allocate more memory (RLIMIT_AS, `ulimit -v`, or the \
             machine's address space): raise the limit or lower max_map_size, then retry",
        ),
        libc::EIO => Some(
            "the data file could not be written in full: the disk may be full, the \
             process's file size limit (RLIMIT_FSIZE, `ulimit -f`) reached, or the device \
             failing; fix that, then retry",
        ),
        lmdb_sys::MDB_PAGE_NOTFOUND | lmdb_sys::MDB_CORRUPTED => Some(
            "the data file is damaged: a page refers to a page that is not there, or is \
             not what it should be; copy what reads into a new store, or restore the file \
             from a copy",
        ),
        _ => None,
    }
}
