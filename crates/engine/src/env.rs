//! LMDB environments and their transactions: opening (one environment per
//! data file per process), reads, the write operations the binding needs
//! (commit a sorted batch, clear, remove an unchanged entry), map growth
//! and closing. Everything that runs inside a write transaction is in this
//! file, and a write transaction never outlives the call that began it.
//!
//! Pooled read transactions are the exception to "nothing stays open
//! across calls": they are reset (inactive), holding a reader slot but no
//! snapshot. Pinned reads (`ReadTxn::pin`) stay open for the rest of the
//! process, for a buffer over their pages that unpickling code kept. After
//! `fork()`, the child never touches what the parent opened: no transaction
//! of it begins, ends or returns to a pool there (its reader slots live in
//! the lock file both processes share).

use std::cell::{Cell, RefCell, UnsafeCell};
use std::mem::ManuallyDrop;
use std::os::raw::{c_int, c_uint};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use lmdb::{Database, Environment, EnvironmentFlags, RwTransaction, Transaction};
use lmdb_sys as ffi;
use parking_lot::{Mutex, MutexGuard};

use crate::buffer::{Batch, Op, Sorted};
use crate::error::{Error, Result};
use crate::files::{self, EnvPaths};
use crate::gate::{ExclusiveGuard, Gate, SharedGuard};
use crate::guard;
use crate::stream::Source;
use crate::tables::{self, MainKind, Table};

/// Growth step floor: `max(2 × current, current + 64 MiB)`.
pub const GROWTH_STEP: usize = 64 * 1024 * 1024;
/// Reset read transactions kept for reuse.
const POOL_MAX: usize = 64;

/// The `lmdb.open()` options that make sense for one unnamed database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvOptions {
    pub map_size: usize,
    pub subdir: bool,
    pub readonly: bool,
    pub metasync: bool,
    pub sync: bool,
    pub map_async: bool,
    pub mode: u32,
    pub create: bool,
    pub readahead: bool,
    pub writemap: bool,
    pub meminit: bool,
    pub max_readers: u32,
    pub lock: bool,
    /// The cap on growth (`max_map_size`): file-wide, so checked to agree
    /// between the stores of a file in one process; `None`: no cap.
    pub max_map_size: Option<usize>,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            map_size: 10 * 1024 * 1024,
            subdir: true,
            readonly: false,
            metasync: true,
            sync: true,
            map_async: false,
            mode: 0o755,
            create: true,
            readahead: true,
            writemap: false,
            meminit: true,
            max_readers: 1024,
            lock: true,
            max_map_size: None,
        }
    }
}

impl EnvOptions {
    fn flags(&self) -> EnvironmentFlags {
        // NO_TLS: read transactions are not tied to threads, so one thread
        // may hold two (a nested read from pickle.loads) and a pooled one
        // may be renewed by any thread.
        let mut f = EnvironmentFlags::NO_TLS;
        let pairs = [
            (!self.subdir, EnvironmentFlags::NO_SUB_DIR),
            (self.readonly, EnvironmentFlags::READ_ONLY),
            (!self.metasync, EnvironmentFlags::NO_META_SYNC),
            (!self.sync, EnvironmentFlags::NO_SYNC),
            (self.map_async, EnvironmentFlags::MAP_ASYNC),
            (!self.readahead, EnvironmentFlags::NO_READAHEAD),
            (self.writemap, EnvironmentFlags::WRITE_MAP),
            (!self.meminit, EnvironmentFlags::NO_MEM_INIT),
            (!self.lock, EnvironmentFlags::NO_LOCK),
        ];
        for (on, flag) in pairs {
            if on {
                f |= flag;
            }
        }
        f
    }
}

/// `mdb_env_info` and friends, as py-lmdb's `Environment.info()` names them.
#[derive(Clone, Copy, Debug, Default)]
pub struct EnvInfo {
    pub map_addr: usize,
    pub map_size: usize,
    pub last_pgno: usize,
    pub last_txnid: usize,
    pub max_readers: u32,
    pub num_readers: u32,
}

/// `mdb_stat`, as py-lmdb's `Environment.stat()` names it.
#[derive(Clone, Copy, Debug, Default)]
pub struct DbStat {
    pub psize: u32,
    pub depth: u32,
    pub branch_pages: usize,
    pub leaf_pages: usize,
    pub overflow_pages: usize,
    pub entries: usize,
}

/// A map growth that happened, for the caller to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Growth {
    pub from: usize,
    pub to: usize,
}

/// The next map size after MDB_MAP_FULL, or `None` at the cap.
pub fn next_map_size(current: usize, cap: Option<usize>) -> Option<usize> {
    let wanted = current
        .saturating_mul(2)
        .max(current.saturating_add(GROWTH_STEP));
    match cap {
        Some(cap) if current >= cap => None,
        Some(cap) => Some(wanted.min(cap)),
        None => Some(wanted),
    }
}

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Environments open in this process, to share one per data file.
static REGISTRY: Mutex<Vec<Weak<Env>>> = Mutex::new(Vec::new());

/// Bumped in the child after `fork()`: everything opened before belongs to
/// the parent.
pub fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Acquire)
}

/// In the child after `fork()`, with only the forking thread alive. The
/// registry (and anything the parent's other threads held locked) is
/// abandoned, not cleaned up: closing the parent's environments here would
/// release the parent's reader slots and locks in the shared lock file.
pub fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::AcqRel);
    if REGISTRY.is_locked() {
        // SAFETY: the thread that held it does not exist in this process;
        // nothing else can be using the lock here.
        unsafe { REGISTRY.force_unlock() };
    }
    let old = std::mem::take(&mut *REGISTRY.lock());
    std::mem::forget(old);
    crate::gate::forget_held_after_fork();
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// (device, inode) of the environment's data file.
fn data_file_id(path: &Path, subdir: bool) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let file = if subdir {
        path.join("data.mdb")
    } else {
        path.to_path_buf()
    };
    let md = std::fs::metadata(file)?;
    Ok((md.dev(), md.ino()))
}

struct RawTxn(*mut ffi::MDB_txn);
// SAFETY: the environment is opened with MDB_NOTLS, so a read transaction is
// not tied to the thread that began it; pooled ones are reset (inactive) and
// handed to one thread at a time through the pool's mutex.
unsafe impl Send for RawTxn {}

/// One LMDB environment, shared by every store on the same file.
pub struct Env {
    /// `None` once closed. Read under the gate (shared or exclusive); taken
    /// only with the write lock and the exclusive gate held.
    lmdb: UnsafeCell<Option<Environment>>,
    /// The main (unnamed) database, opened with the environment; its
    /// number stays valid for the environment's life.
    db: Database,
    pub gate: Gate,
    /// One write transaction at a time, and none during growth.
    write_lock: Mutex<()>,
    pool: Mutex<Vec<RawTxn>>,
    pub options: EnvOptions,
    pub path: PathBuf,
    /// Stores open on this environment; the last to close closes it.
    handles: Mutex<usize>,
    /// Growths not yet logged (the logging happens in Python, later).
    growths: Mutex<Vec<Growth>>,
    /// The fork generation this environment was opened in.
    pub generation: u64,
    /// (device, inode) of the data file.
    file_id: (u64, u64),
    /// With writemap: the data file, for the growth lock and for allocating
    /// the map's disk space.
    data_file: Option<std::fs::File>,
    /// The map's size, as of the last open or resize (they happen with the
    /// write lock and the exclusive gate held).
    map_size: AtomicUsize,
    /// Where the map begins, once a read found it (0 until then; reset when
    /// the map moves): see `guard.rs`.
    map_base: AtomicUsize,
    /// LMDB's page size for the file.
    page_size: usize,
    /// The pages found whole (see `guard.rs`). Read under the gate (shared
    /// or exclusive); replaced only with the exclusive gate held, when the
    /// map changes.
    checked: UnsafeCell<guard::Checked>,
    /// With writemap: bytes of the data file from its start known to have
    /// disk blocks; `usize::MAX` where the file system cannot allocate ahead.
    allocated: AtomicUsize,
    /// Set when the map was lost for good: what to tell every caller.
    lost: OnceLock<String>,
    /// Set when a read or a write met a damaged page: what to tell every
    /// writer (see `wreck`, `note_damage`).
    wrecked: OnceLock<String>,
    /// A write transaction was abandoned (see `wreck`): never close.
    abandoned: std::sync::atomic::AtomicBool,
    /// The named tables this process opened on the environment.
    tables: tables::Registry,
}

// SAFETY: every access to `lmdb` follows the gate protocol above, the raw
// transactions are guarded by the pool mutex, and LMDB's environment handle is
// itself thread-safe for these uses (MDB_NOTLS; one writer via write_lock).
unsafe impl Sync for Env {}
// SAFETY: as above; nothing in Env is tied to the creating thread.
unsafe impl Send for Env {}

/// An open of `path` that failed: see [`Error::Open`].
fn open_err(path: &Path, code: c_int, what: impl Into<String>) -> Error {
    Error::Open {
        code,
        what: what.into(),
        path: path.display().to_string(),
    }
}

fn io_code(e: &std::io::Error) -> c_int {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// How a failed `mdb_env_set_mapsize` left the environment. LMDB unmaps the
/// old map before it maps the new one, and does not map the old one back
/// when that fails.
#[derive(Debug)]
enum Remap {
    /// Nothing was changed (a step of our own before LMDB's call failed).
    Kept(c_int),
    /// LMDB's mmap failed: its map pointer is NULL, so closing the
    /// environment unmaps nothing and is safe.
    Unmapped(c_int),
    /// The failure may be LMDB's `ftruncate` (writemap), after which its map
    /// pointer still holds the address of the unmapped region, and closing
    /// (or resizing) the environment would unmap whatever lives there now.
    /// Such an environment is never touched again.
    Dangling(c_int),
}

/// Errors of `mmap` that `ftruncate` never gives: after one of these LMDB's
/// map pointer is NULL.
fn mmap_only_errno(rc: c_int) -> bool {
    matches!(
        rc,
        libc::ENOMEM | libc::EAGAIN | libc::ENFILE | libc::ENODEV | libc::EOVERFLOW | libc::EACCES
    )
}

/// Resize the map of `env` to `size` bytes (`None`: the size recorded in
/// the file). With writemap (`data_file` given), the map never becomes
/// smaller than the data file or than either meta page records, because
/// LMDB truncates the file to the map's size and another process may have
/// it mapped and written further; and the file is extended here first, so
/// that LMDB's own `ftruncate` has nothing to do and cannot fail.
///
/// # Safety
/// No transaction of `env` may be active in this process, and none may
/// begin until this returns (LMDB: "the caller is responsible for making
/// sure there are no active txns"; the map is replaced). With writemap the
/// caller holds the data file's growth lock.
unsafe fn remap(
    env: *mut ffi::MDB_env,
    size: Option<usize>,
    data_file: Option<&std::fs::File>,
) -> std::result::Result<(), Remap> {
    let Some(file) = data_file else {
        // SAFETY: per the function contract.
        return match unsafe { ffi::mdb_env_set_mapsize(env, size.unwrap_or(0)) } {
            0 => Ok(()),
            rc => Err(Remap::Unmapped(rc)),
        };
    };
    let kept = |e: std::io::Error| Remap::Kept(io_code(&e));
    let len = file.metadata().map_err(kept)?.len() as usize;
    let target = match size {
        Some(n) => n.max(len),
        None => files::recorded_map_size(file).map_err(kept)?.max(len),
    };
    let extended = len < target;
    if extended {
        file.set_len(target as u64).map_err(kept)?;
    }
    // SAFETY: per the function contract.
    match unsafe { ffi::mdb_env_set_mapsize(env, target) } {
        0 => Ok(()),
        rc => {
            if !mmap_only_errno(rc) {
                return Err(Remap::Dangling(rc));
            }
            if extended {
                // Under the growth lock nobody has mapped past `len` yet.
                let _ = file.set_len(len as u64);
            }
            Err(Remap::Unmapped(rc))
        }
    }
}

/// The map size of an open environment (`mdb_env_info`).
fn current_map_size(env: &Environment) -> usize {
    env.info().map(|i| i.map_size()).unwrap_or(0)
}

/// An LMDB environment that was just opened and what belongs to it.
struct Opened {
    lmdb: Environment,
    db: Database,
}

/// Open LMDB's environment at `path` with a map of `map_size` bytes, and its
/// main database. With writemap, `data_file` is the data file, whose growth
/// lock the caller holds. A transaction that meets another process's growth
/// (MDB_MAP_RESIZED) adopts it and retries.
fn open_lmdb(
    path: &Path,
    options: &EnvOptions,
    map_size: usize,
    data_file: Option<&std::fs::File>,
) -> Result<Opened> {
    let shown = path.display();
    let mut builder = Environment::new();
    builder
        .set_flags(options.flags())
        .set_max_readers(options.max_readers as c_uint)
        .set_max_dbs(tables::MAX_TABLES)
        .set_map_size(map_size);
    let env = builder
        .open_with_permissions(path, options.mode)
        .map_err(|e| {
            open_err(
                path,
                e.to_err_code(),
                format!("cannot open LMDB environment at {shown}"),
            )
        })?;
    // SAFETY: env.env() is a live, open environment handle.
    unsafe { guard::watch(env.env()) }.map_err(|e| {
        open_err(
            path,
            libc::EINVAL,
            format!("cannot open LMDB environment at {shown}: {e}"),
        )
    })?;
    // Free the reader slots of processes that died holding them.
    let mut dead: c_int = 0;
    // SAFETY: env.env() is a live, open environment handle.
    unsafe { ffi::mdb_reader_check(env.env(), &mut dead) };
    let main_db = |code: c_int| {
        open_err(
            path,
            code,
            format!("cannot open the main database of {shown}"),
        )
    };
    // Each MDB_MAP_RESIZED means another process committed a larger map
    // meanwhile; the bound only stops a loop that something else broke.
    for _ in 0..1000 {
        match env.open_db(None) {
            Ok(db) => return Ok(Opened { db, lmdb: env }),
            Err(lmdb::Error::MapResized) => {}
            Err(e) => return Err(main_db(e.to_err_code())),
        }
        // SAFETY: this environment was opened by this call and is not
        // shared yet: no transaction of it is active (open_db's ended);
        // the caller holds the growth lock with writemap.
        match unsafe { remap(env.env(), None, data_file) } {
            Ok(()) => {}
            Err(Remap::Kept(rc) | Remap::Unmapped(rc)) => return Err(main_db(rc)),
            Err(Remap::Dangling(rc)) => {
                // Closing it would unmap an address LMDB no longer owns.
                std::mem::forget(env);
                return Err(main_db(rc));
            }
        }
    }
    Err(main_db(ffi::MDB_MAP_RESIZED))
}

/// The lock file another store keeps for the data file this open would use,
/// when opening it this way would give that data file a second lock file,
/// with the message to refuse it with. LMDB names the lock file after how the
/// store is opened (`lock.mdb` in the directory, or `<file>-lock` beside a
/// single file), so one data file opened both ways has two lock tables, and
/// the writers of one never see the readers of the other: they could reuse
/// pages still being read. A lock file of this open's own spelling already
/// there means both spellings were used before; that is left alone.
fn second_lock_file(path: &Path, options: &EnvOptions) -> Option<String> {
    if !options.lock {
        return None;
    }
    let own_lock = EnvPaths::new(path, options.subdir).lock;
    if own_lock.exists() {
        return None;
    }
    let shown = path.display();
    if options.subdir {
        let data = path.join("data.mdb");
        let other = EnvPaths::new(&data, false).lock;
        return other.exists().then(|| {
            format!(
                "cannot open {shown} as a directory store (subdir=True): its data file \
                 {data} is a single-file store whose lock file is {other}; open {data} with \
                 subdir=False instead",
                data = data.display(),
                other = other.display(),
            )
        });
    }
    if path.file_name()? != "data.mdb" {
        return None;
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let other = dir.join("lock.mdb");
    other.exists().then(|| {
        format!(
            "cannot open {shown} with subdir=False: it is the data file of the store in \
             {dir}, whose lock file is {other}; open {dir} (subdir=True) instead",
            dir = dir.display(),
            other = other.display(),
        )
    })
}

impl Env {
    pub fn open(path: &Path, options: &EnvOptions) -> Result<Env> {
        let shown = path.display();
        let mut created_dir = false;
        match std::fs::metadata(path) {
            Ok(md) => {
                if options.subdir && !md.is_dir() {
                    return Err(open_err(
 path,                         libc::ENOTDIR,
                        format!("cannot open {shown}: not a directory (subdir=True wants a directory; pass subdir=False for a single file)"),
                    ));
                }
                if !options.subdir && md.is_dir() {
                    return Err(open_err(
                        path,
                        libc::EISDIR,
                        format!(
                            "cannot open {shown}: it is a directory and subdir=False wants a file"
                        ),
                    ));
                }
                if let Some(message) = second_lock_file(path, options) {
                    return Err(open_err(path, 0, message));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !options.create || options.readonly {
                    return Err(open_err(
 path,                         libc::ENOENT,
                        format!("cannot open {shown}: it does not exist (create=False or readonly=True)"),
                    ));
                }
                if options.subdir {
                    use std::os::unix::fs::DirBuilderExt;
                    let mut dir = std::fs::DirBuilder::new();
                    dir.mode(options.mode | 0o700);
                    if let Err(e) = dir.create(path) {
                        return Err(open_err(
                            path,
                            io_code(&e),
                            format!("cannot create directory {shown}"),
                        ));
                    }
                    created_dir = true;
                }
            }
            Err(e) => return Err(open_err(path, io_code(&e), format!("cannot open {shown}"))),
        }
        let paths = EnvPaths::new(path, options.subdir);
        let data_existed = paths.data.symlink_metadata().is_ok();
        let lock_existed = paths.lock.symlink_metadata().is_ok();
        let opened = Env::open_files(path, &paths, options);
        if opened.is_err() {
            // Leave nothing behind that this open made: a lock file beside
            // a file that is not LMDB's, a data file, a directory.
            files::remove_created(&paths, data_existed, lock_existed);
            if created_dir {
                let _ = std::fs::remove_dir(path);
            }
        }
        opened
    }

    fn open_files(path: &Path, paths: &EnvPaths, options: &EnvOptions) -> Result<Env> {
        use std::os::unix::fs::OpenOptionsExt;
        let shown = path.display();
        let writemap = options.writemap && !options.readonly;
        // With writemap the data file stays open here, for the growth lock
        // and to allocate its space; LMDB would create it with this mode.
        let data_file = if writemap {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(options.mode)
                .open(&paths.data)
                .map_err(|e| {
                    open_err(
                        path,
                        io_code(&e),
                        format!("cannot open the data file {}", paths.data.display()),
                    )
                })?;
            Some(file)
        } else {
            None
        };
        let growth = match &data_file {
            Some(file) => Some(
                files::RangeLock::exclusive(file, files::GROWTH_LOCK_BYTE).map_err(|e| {
                    open_err(
                        path,
                        io_code(&e),
                        format!("cannot lock the data file {}", paths.data.display()),
                    )
                })?,
            ),
            None => None,
        };
        let mut map_size = options.map_size;
        match Env::inspect_data_file(path, paths, data_file.as_ref())? {
            Some(files::DataFile::Damaged(problem)) => {
                return Err(open_err(
                    path,
                    0,
                    format!(
                        "cannot open {shown}: the data file {} {problem}",
                        paths.data.display()
                    ),
                ))
            }
            Some(files::DataFile::Empty) if options.readonly => {
                return Err(open_err(
                    path,
                    0,
                    format!(
                        "cannot open {shown} read-only: its data file {} is empty (0 bytes), \
                         not an LMDB environment; a writable open makes it a new, empty store",
                        paths.data.display()
                    ),
                ))
            }
            Some(files::DataFile::Sound {
                map_size: recorded,
                len,
                ..
            }) if writemap => {
                // LMDB truncates the data file to the map's size: never
                // below what the file holds, which another process may have
                // mapped and be writing.
                map_size = map_size.max(recorded).max(len as usize);
            }
            _ => {}
        }
        if options.lock {
            files::prepare_lock_file(&paths.lock, options.max_readers, options.mode).map_err(
                |e| {
                    open_err(
                        path,
                        io_code(&e),
                        format!(
                            "cannot open {shown}: cannot allocate its lock file {}",
                            paths.lock.display()
                        ),
                    )
                },
            )?;
        }
        let opened = open_lmdb(path, options, map_size, data_file.as_ref())?;
        drop(growth);
        let file_id = data_file_id(path, options.subdir).map_err(|e| {
            open_err(
                path,
                io_code(&e),
                format!("cannot stat the data file of {shown}"),
            )
        })?;
        let map_size = current_map_size(&opened.lmdb);
        let page_size = opened
            .lmdb
            .stat()
            .map(|s| s.page_size() as usize)
            .unwrap_or(0);
        Ok(Env {
            db: opened.db,
            lmdb: UnsafeCell::new(Some(opened.lmdb)),
            gate: Gate::default(),
            write_lock: Mutex::new(()),
            pool: Mutex::new(Vec::new()),
            options: options.clone(),
            path: path.to_path_buf(),
            handles: Mutex::new(0),
            growths: Mutex::new(Vec::new()),
            generation: fork_generation(),
            file_id,
            data_file,
            map_size: AtomicUsize::new(map_size),
            map_base: AtomicUsize::new(0),
            page_size,
            checked: UnsafeCell::new(guard::Checked::new(map_size, page_size, None)),
            allocated: AtomicUsize::new(0),
            lost: OnceLock::new(),
            wrecked: OnceLock::new(),
            abandoned: std::sync::atomic::AtomicBool::new(false),
            tables: tables::Registry::default(),
        })
    }

    /// Judge the data file before LMDB maps it (a map over pages the file
    /// does not have dies with SIGBUS at the first read). `None`: there is
    /// no regular data file yet.
    fn inspect_data_file(
        path: &Path,
        paths: &EnvPaths,
        data_file: Option<&std::fs::File>,
    ) -> Result<Option<files::DataFile>> {
        let failed = |e: std::io::Error| {
            open_err(
                path,
                io_code(&e),
                format!(
                    "cannot open {}: cannot read its data file {}",
                    path.display(),
                    paths.data.display()
                ),
            )
        };
        let owned;
        let file = match data_file {
            Some(f) => f,
            None => {
                match std::fs::metadata(&paths.data) {
                    Ok(md) if md.is_file() => {}
                    // Missing, or not a file: LMDB's open says what it thinks.
                    _ => return Ok(None),
                }
                owned = match std::fs::File::open(&paths.data) {
                    Ok(f) => f,
                    // Unreadable: LMDB's open reports it the same way.
                    Err(_) => return Ok(None),
                };
                &owned
            }
        };
        files::inspect(file).map(Some).map_err(failed)
    }

    /// Open `path`, or share the environment this process already has open
    /// on the same data file (LMDB forbids opening one file twice in a
    /// process). Reference-counted: pair with `release`. Call without the GIL.
    ///
    /// An environment stays registered until it is closed, so one whose last
    /// store was released but whose close waits for reads is taken up again
    /// here (its count goes from 0 to 1) rather than opened a second time.
    pub fn acquire(path: &Path, options: &EnvOptions) -> Result<Arc<Env>> {
        let mut registry = REGISTRY.lock();
        let generation = fork_generation();
        registry.retain(|w| w.strong_count() > 0);
        if let Ok(id) = data_file_id(path, options.subdir) {
            let found = registry
                .iter()
                .filter_map(Weak::upgrade)
                .find(|e| e.file_id == id && e.generation == generation);
            if let Some(env) = found {
                env.check_compatible(path, options)?;
                *env.handles.lock() += 1;
                return Ok(env);
            }
        }
        let env = Arc::new(Env::open(path, options)?);
        *env.handles.lock() = 1;
        registry.push(Arc::downgrade(&env));
        Ok(env)
    }

    /// The table names of the file at `path` (see `list_tables`): through
    /// the environment this process has open on it, whatever its settings,
    /// or else through a read-only open (`options`, made read-only) that
    /// creates nothing and is closed again. Call without the GIL.
    pub fn tables_at(path: &Path, options: &EnvOptions) -> Result<Vec<String>> {
        let options = EnvOptions {
            readonly: true,
            create: false,
            ..options.clone()
        };
        let open = {
            let registry = REGISTRY.lock();
            let generation = fork_generation();
            data_file_id(path, options.subdir).ok().and_then(|id| {
                registry
                    .iter()
                    .filter_map(Weak::upgrade)
                    .find(|e| e.file_id == id && e.generation == generation)
            })
        };
        let env = match open {
            Some(env) => {
                let mut handles = env.handles.lock();
                if *handles == 0 {
                    // Closing: open it anew below, read-only.
                    None
                } else {
                    *handles += 1;
                    drop(handles);
                    Some(env)
                }
            }
            None => None,
        };
        let env = match env {
            Some(env) => env,
            None => Env::acquire(path, &options)?,
        };
        let names = env.list_tables();
        let released = env.release();
        let names = names?;
        released?;
        Ok(names)
    }

    fn check_compatible(&self, path: &Path, o: &EnvOptions) -> Result<()> {
        let mine = &self.options;
        let clash = |what: String| {
            open_err(
                path,
                0,
                format!(
                    "cannot open {} with {what}: the same LMDB file is already open in this \
                     process as {} with other settings, and one process can have it open \
                     only once",
                    path.display(),
                    self.path.display()
                ),
            )
        };
        if mine.subdir != o.subdir {
            return Err(clash(format!(
                "subdir={} (open as {} with subdir={})",
                py_bool(o.subdir),
                self.path.display(),
                py_bool(mine.subdir)
            )));
        }
        if mine.readonly && !o.readonly {
            return Err(clash(
                "readonly=False (it is open with readonly=True)".into(),
            ));
        }
        if mine.lock != o.lock {
            return Err(clash(format!("lock={}", py_bool(o.lock))));
        }
        if mine.writemap != o.writemap {
            return Err(clash(format!("writemap={}", py_bool(o.writemap))));
        }
        // The settings of writers: a read-only open never writes, so they
        // mean nothing to it.
        if !mine.readonly && !o.readonly {
            let flags = [
                ("sync", mine.sync, o.sync),
                ("metasync", mine.metasync, o.metasync),
                ("map_async", mine.map_async, o.map_async),
            ];
            for (name, theirs, asked) in flags {
                if theirs != asked {
                    return Err(clash(format!(
                        "{name}={} (it is open with {name}={})",
                        py_bool(asked),
                        py_bool(theirs)
                    )));
                }
            }
            if mine.max_map_size != o.max_map_size {
                let shown = |v: Option<usize>| v.map_or("None".to_string(), |n| n.to_string());
                return Err(clash(format!(
                    "max_map_size={} (it is open with max_map_size={})",
                    shown(o.max_map_size),
                    shown(mine.max_map_size)
                )));
            }
            if mine.max_readers != o.max_readers {
                return Err(clash(format!(
                    "max_readers={} (it is open with max_readers={})",
                    o.max_readers, mine.max_readers
                )));
            }
        }
        Ok(())
    }

    /// One store is done with this environment; the last one closes it,
    /// after the reads in flight. Call without the GIL.
    ///
    /// Lock order: the close waits for the writer and the exclusive gate
    /// first, and only then takes the registry lock, so an `acquire` from
    /// code run inside a read (which holds the gate shared) never waits for
    /// a close that waits for that read. When this thread is itself inside
    /// a read of this environment, the close runs when that read ends.
    pub fn release(self: &Arc<Env>) -> Result<()> {
        {
            let mut handles = self.handles.lock();
            match *handles {
                0 => return Ok(()),
                1 => *handles = 0,
                _ => {
                    *handles -= 1;
                    return Ok(());
                }
            }
        }
        if self.gate.held_by_current_thread() {
            let env = Arc::clone(self);
            self.gate.after_shared(Box::new(move || {
                // A fork() in between makes it the parent's: leave it be.
                if env.generation == fork_generation() {
                    // This thread's read has ended: the close cannot refuse.
                    let _ = env.close_if_unused();
                }
            }));
            return Ok(());
        }
        let closed = self.close_if_unused();
        if closed.is_err() {
            // The close was refused (a pinned map, a read of this thread's):
            // the environment stays open, and keeps this handle, so that a
            // later store on the file shares it and its own close does not
            // try, and fail, again.
            let mut handles = self.handles.lock();
            if *handles == 0 {
                *handles = 1;
            }
        }
        closed
    }

    /// Close the environment unless an `acquire` took it up again meanwhile.
    /// The registry lock is held from that check until the close is done, so
    /// no second environment opens on the file while this one is open.
    fn close_if_unused(&self) -> Result<()> {
        let _writer = self.lock_writer()?;
        let x = self.gate.exclusive("closing the store")?;
        let mut registry = REGISTRY.lock();
        if *self.handles.lock() > 0 {
            return Ok(());
        }
        registry.retain(|w| !std::ptr::eq(w.as_ptr(), self));
        self.close_exclusive(x);
        Ok(())
    }

    /// The environment, if open. The gate guard proves no close or resize
    /// can run meanwhile.
    fn lmdb_shared<'a>(&'a self, _g: &SharedGuard<'a>) -> Result<&'a Environment> {
        // SAFETY: `lmdb` is only replaced with the exclusive gate held, which
        // cannot be taken while this shared guard lives.
        unsafe { (*self.lmdb.get()).as_ref() }.ok_or_else(|| self.gone())
    }

    fn lmdb_exclusive<'a>(&'a self, _g: &ExclusiveGuard<'a>) -> Result<&'a Environment> {
        // SAFETY: the exclusive guard excludes every other access.
        unsafe { (*self.lmdb.get()).as_ref() }.ok_or_else(|| self.gone())
    }

    /// Why there is no environment: closed, or its map was lost.
    fn gone(&self) -> Error {
        match self.lost.get() {
            Some(text) => Error::Unusable(text.clone()),
            None => Error::Closed {
                path: self.path.display().to_string(),
            },
        }
    }

    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        match self.gate.try_shared() {
            Some(g) => self.lmdb_shared(&g).is_err(),
            None => false,
        }
    }

    /// The main database's number, for write transactions that address
    /// databases by number (`WriteTxn`).
    pub fn main_dbi(&self) -> ffi::MDB_dbi {
        self.db.dbi()
    }

    /// Find where the map is, if no read found it yet, through a read of
    /// the main tree's first and last keys (see `guard.rs`). Best effort: a
    /// read that fails leaves it unknown.
    pub(crate) fn find_map(&self) {
        if self.map_base.load(Ordering::Relaxed) != 0 {
            return;
        }
        let guard = self.gate.wait_shared();
        if let Ok(Some(txn)) = self.begin_read(guard) {
            let _ = txn.scan(Seek::First, &[], false, |_, _| false);
            let _ = txn.scan(Seek::Last, &[], false, |_, _| false);
        }
    }

    /// Check, before a write of `key` in `db` (deleted: `del`) changes
    /// anything, the pages it may copy or change (see `check_writes`), for a
    /// transaction of `txn.rs`, which holds the writer lock. Damage found
    /// refuses writes from now on.
    pub(crate) fn check_write_of(&self, db: ffi::MDB_dbi, key: &[u8], del: bool) -> Result<()> {
        let table = match db == self.db.dbi() {
            true => None,
            false => match self.tables.name_of(db) {
                Some(name) => Some(name),
                // Not a table this process knows by name: its pages cannot
                // be found from the main tree.
                None => return Ok(()),
            },
        };
        let mut map = self.map_view();
        let none: Option<&lmdb::RoCursor<'_>> = None;
        guard::check_writes(none, &mut map, table.as_deref(), [(key, del)].into_iter()).map_err(
            |e| {
                let err = Error::from_lmdb(e, self.what("write"));
                self.note_damage(&err);
                err
            },
        )
    }

    /// LMDB's environment handle, for a caller that holds the writer lock:
    /// the handle is only replaced (close, a failed resize) with that lock
    /// held, so it stays valid while the caller keeps it.
    ///
    /// # Safety
    /// The caller holds the writer lock (`lock_writer`) for as long as it
    /// uses the handle.
    pub(crate) unsafe fn raw_env_writer(&self) -> Result<*mut ffi::MDB_env> {
        self.check_unwrecked()?;
        // SAFETY: per the function contract, nothing replaces `lmdb` now.
        unsafe { (*self.lmdb.get()).as_ref() }
            .map(|e| e.env())
            .ok_or_else(|| self.gone())
    }

    /// Unlock the writer mutex that a `lock_writer` guard, forgotten, left
    /// locked (a write transaction held across calls).
    ///
    /// # Safety
    /// The caller locked it through `lock_writer` and forgot the guard, and
    /// unlocks it once.
    pub(crate) unsafe fn unlock_writer(&self) {
        // SAFETY: per the function contract; parking_lot allows the unlock
        // from any thread (the `send_guard` feature).
        unsafe { self.write_lock.force_unlock() }
    }

    /// Lock the writer mutex. When this thread is inside a read (a nested
    /// call from unpickling), a writer that waits for the gate exclusively
    /// would wait for us forever: give up with `WouldDeadlock` then.
    pub(crate) fn lock_writer(&self) -> Result<MutexGuard<'_, ()>> {
        if self.generation != fork_generation() {
            // LMDB's rule: no write transaction of an environment opened
            // before fork() begins in the child.
            return Err(Error::Forked);
        }
        // Spine rule 1 (transactions): this thread's transaction holds the
        // writer lock between its calls; waiting for it would wait forever.
        if crate::txn::open_in_this_thread(self) {
            return Err(Error::InTransaction);
        }
        if !self.gate.held_by_current_thread() {
            return Ok(self.write_lock.lock());
        }
        loop {
            if let Some(g) = self.write_lock.try_lock_for(Duration::from_millis(2)) {
                return Ok(g);
            }
            if self.gate.exclusive_pending() {
                return Err(Error::WouldDeadlock("a write"));
            }
        }
    }

    /// Commit `ops` in one write transaction: all of them, or none. The map
    /// grows first if `bytes` more do not fit (see `reserve_locked`), and
    /// again on MDB_MAP_FULL, up to `cap`; growths are recorded for
    /// `take_growths`. Call without the GIL.
    pub fn commit(&self, ops: &Sorted<'_>, bytes: usize, cap: Option<usize>) -> Result<()> {
        let _writer = self.lock_writer()?;
        self.reserve_locked(bytes, cap)?;
        self.write_locked(cap, &mut |txn, db| {
            let keys = ops.ops().iter().map(|(k, v)| (*k, v.is_none()));
            self.check_writes(txn, db, None, keys)?;
            apply_sorted(txn, db, ops.ops())
        })
    }

    /// `batch` in key order ([`Batch::sorted`]), or, with no memory for
    /// that, the error of a write that could not allocate (`ENOMEM`, as
    /// `guard::got` gives inside the write).
    pub fn sorted<'b>(&self, batch: &'b Batch) -> Result<Sorted<'b>> {
        match batch.sorted() {
            // The reserve again after, as `guard::got` takes it.
            Ok(sorted) if crate::reserve::ensure() => Ok(sorted),
            _ => Err(Error::lmdb(libc::ENOMEM, self.what("write"))),
        }
    }

    /// Check, before a write transaction changes anything, the pages of the
    /// file it may copy or change in `db` (`table` its name, `None` for the
    /// main tree) for `keys` (each with whether it is deleted): see
    /// `guard::check_writes`. Called inside `write_locked`, which holds the
    /// gate.
    fn check_writes<'k>(
        &self,
        txn: &mut RwTransaction<'_>,
        db: Database,
        table: Option<&str>,
        keys: impl Iterator<Item = (&'k [u8], bool)>,
    ) -> lmdb::Result<()> {
        self.check_unchanged(txn, db, |cursor, map| {
            guard::check_writes(Some(cursor), map, table, keys)
        })
    }

    /// Run `check` with a cursor of `txn` on `db` and the map, before `txn`
    /// changes anything; keep the map if it found it.
    fn check_unchanged(
        &self,
        txn: &mut RwTransaction<'_>,
        db: Database,
        check: impl FnOnce(&lmdb::RoCursor<'_>, &mut guard::Map) -> lmdb::Result<()>,
    ) -> lmdb::Result<()> {
        let mut map = self.map_view();
        let cursor = txn.open_ro_cursor(db)?;
        let checked = check(&cursor, &mut map);
        drop(cursor);
        self.found_map(map);
        checked
    }

    /// Check, before `mdb_drop` empties `db` (`table` its name, `None` for
    /// the main tree), the pages it reads and those any write changes: see
    /// `guard::check_drop`. Called inside `write_locked`, which holds the
    /// gate.
    fn check_drop(
        &self,
        txn: &mut RwTransaction<'_>,
        db: Database,
        table: Option<&str>,
    ) -> lmdb::Result<()> {
        self.check_unchanged(txn, db, |cursor, map| guard::check_drop(cursor, map, table))
    }

    /// Delete every entry, in one write transaction (LMDB empties the
    /// database in place). Call without the GIL.
    pub fn clear(&self, cap: Option<usize>) -> Result<()> {
        let _writer = self.lock_writer()?;
        self.write_locked(cap, &mut |txn, db| {
            self.check_drop(txn, db, None)?;
            // SAFETY: `delete` false: the database stays.
            unsafe { guard::drop_db(txn, db, false) }
        })
    }

    /// Delete `key` if its stored value is still `expected`, in one write
    /// transaction; `Ok(false)` when it changed or is gone. Call without the
    /// GIL.
    pub fn remove_if(&self, key: &[u8], expected: &[u8], cap: Option<usize>) -> Result<bool> {
        let _writer = self.lock_writer()?;
        self.write_locked(cap, &mut |txn, db| {
            self.remove_if_body(txn, db, None, key, expected)
        })
    }

    /// The body of `remove_if` and `remove_if_in`: delete `key` from `db`
    /// (`table` its name) if its value is `expected`.
    fn remove_if_body(
        &self,
        txn: &mut RwTransaction<'_>,
        db: Database,
        table: Option<&str>,
        key: &[u8],
        expected: &[u8],
    ) -> lmdb::Result<bool> {
        self.check_writes(txn, db, table, [(key, true)].into_iter())?;
        match guard::rw_get(txn, db, key) {
            Ok(current) if current == expected => {
                guard::del(txn, db, key)?;
                Ok(true)
            }
            Ok(_) | Err(lmdb::Error::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Write one value under `key` from `src` in one write transaction:
    /// LMDB reserves the value's space (`MDB_RESERVE`) and the source is
    /// read straight into it, so no other copy of the value exists (with
    /// writemap the space is the map itself, given back as it is written).
    /// The map grows first so that the value fits. A source that fails or
    /// does not hold `src.len` bytes aborts the transaction: nothing is
    /// written. Call without the GIL.
    pub fn put_stream(
        &self,
        table: &Table,
        key: &[u8],
        src: &Source<'_>,
        cap: Option<usize>,
    ) -> Result<()> {
        let total = src.total()?;
        let _writer = self.lock_writer()?;
        // A drop takes the writer lock too: the table stays while it is held.
        if let Some(e) = self.table_unusable(table) {
            return Err(e);
        }
        self.reserve_locked(total + key.len(), cap)?;
        let in_map = self.options.writemap;
        let named = table.named.as_ref().map(|n| n.db);
        let mut failed: Option<Error> = None;
        // Spine rule 1: the body reads a file with plain Rust I/O; it is
        // replayed from the start if the map has to grow.
        let name = table.named.as_ref().map(|n| n.name.clone());
        let result = self.write_locked(cap, &mut |txn, main| {
            let keys = [(key, false), (&[][..], false)];
            let keys = &keys[..if named.is_some() { 1 } else { 2 }];
            self.check_writes(
                txn,
                named.unwrap_or(main),
                name.as_deref(),
                keys.iter().copied(),
            )?;
            let db = match named {
                Some(db) => db,
                None => {
                    if tables::main_kind_rw(txn, main)? == MainKind::Tables {
                        return Err(lmdb::Error::Incompatible);
                    }
                    main
                }
            };
            let space = guard::reserve(txn, db, key, total)?;
            src.fill(space, in_map).map_err(|e| {
                failed = Some(e);
                lmdb::Error::Other(libc::ECANCELED)
            })
        });
        match (result, failed) {
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) if named.is_none() => Err(self.main_write_error(e)),
            (result, _) => result,
        }
    }

    /// The table `name` as this process has it open, if it was opened (by
    /// any store of the file) at or before `before`, a `tables_given()`
    /// figure: what `t.table(name)` may reach in a write transaction that
    /// began after that figure was read.
    pub fn open_table_before(&self, name: &str, before: u64) -> Option<Table> {
        self.tables.find(name, before)
    }

    /// The count of table handles given out in this process so far.
    pub fn tables_given(&self) -> u64 {
        self.tables.given()
    }

    /// The database number a write transaction (`WriteTxn`) uses for
    /// `table`; refused when the table was dropped, or for the main table of
    /// a file that has tables.
    pub fn table_dbi(&self, table: &Table) -> Result<ffi::MDB_dbi> {
        if let Some(e) = self.table_unusable(table) {
            return Err(e);
        }
        Ok(match &table.named {
            Some(n) => n.db.dbi(),
            None => self.main_dbi(),
        })
    }

    /// Run `body` in one write transaction and commit it, growing the map on
    /// MDB_MAP_FULL (up to `cap`) and adopting another process's growth on
    /// MDB_MAP_RESIZED, replaying `body` from the start each time. Growths
    /// are recorded for `take_growths`. The caller holds `lock_writer()`.
    ///
    /// Spine rule 1: private, and in a crate without PyO3, so `body` is
    /// plain Rust over bytes: no transaction, and no closure over one,
    /// leaves this file, and Python cannot run while one is open.
    fn write_locked<T>(
        &self,
        cap: Option<usize>,
        body: &mut dyn FnMut(&mut RwTransaction<'_>, Database) -> lmdb::Result<T>,
    ) -> Result<T> {
        loop {
            self.check_unwrecked()?;
            self.allocate_map()?;
            enum Next {
                Grow,
                Adopt,
            }
            let next = {
                let g = self.gate.wait_shared();
                let env = self.lmdb_shared(&g)?;
                let mut txn = match env.begin_rw_txn() {
                    Ok(t) => t,
                    Err(lmdb::Error::MapResized) => {
                        drop(g);
                        self.adopt_locked()?;
                        continue;
                    }
                    Err(e) => return Err(Error::from_lmdb(e, self.what("begin a write"))),
                };
                let (outcome, op) = match body(&mut txn, self.db) {
                    Ok(value) => (guard::commit(txn).map(|()| value), "commit"),
                    Err(e) if guard::is_fault(&e) => {
                        // Abandoned, never aborted (see guard.rs).
                        std::mem::forget(txn);
                        (Err(e), "write")
                    }
                    Err(e) if guard::is_check(&e) => {
                        // Nothing changed yet: aborted as usual.
                        drop(txn);
                        (Err(e), "write")
                    }
                    // Aborted here, before the gate guard goes.
                    Err(e) => (Err(e), "write"),
                };
                match outcome {
                    Ok(value) => return Ok(value),
                    Err(e) if guard::is_fault(&e) => {
                        drop(g);
                        return Err(self.wreck(op));
                    }
                    Err(e) if guard::is_check(&e) => {
                        let err = Error::Damaged {
                            what: self.what(op),
                            detail: guard::take_fault(),
                        };
                        self.note_damage(&err);
                        return Err(err);
                    }
                    Err(lmdb::Error::MapFull) => Next::Grow,
                    Err(lmdb::Error::MapResized) => Next::Adopt,
                    Err(e) => return Err(Error::from_lmdb(e, self.what(op))),
                }
            };
            match next {
                Next::Grow => self.grow_locked(cap)?,
                Next::Adopt => self.adopt_locked()?,
            }
        }
    }

    /// The map was remapped (and may have moved and grown): it is looked for
    /// again, and the record of pages found whole grows with it.
    fn map_moved(&self, _x: &ExclusiveGuard<'_>) {
        self.map_base.store(0, Ordering::Relaxed);
        let size = self.map_size.load(Ordering::Relaxed);
        // SAFETY: the exclusive gate (which `_x` proves) excludes every
        // other access to `checked`.
        let checked = unsafe { &mut *self.checked.get() };
        *checked = guard::Checked::new(size, self.page_size, Some(checked));
    }

    /// Where the map is, for the checks of `guard.rs`. The caller holds the
    /// gate (shared or exclusive) while it uses the result.
    pub(crate) fn map_view(&self) -> guard::Map {
        // SAFETY: `checked` is replaced only with the exclusive gate held,
        // which cannot be taken while the caller holds the gate.
        let checked = unsafe { &*self.checked.get() };
        checked.view(
            self.map_base.load(Ordering::Relaxed),
            self.map_size.load(Ordering::Relaxed),
            self.page_size,
        )
    }

    /// A write met a damaged page (see guard.rs): its transaction is
    /// abandoned, never committed or aborted (LMDB may still have temporary
    /// cursors of the jumped-over frames linked to it). From now on this
    /// environment begins no write transaction (LMDB would reuse the
    /// abandoned one, and its writer lock stays with the thread that met the
    /// damage until that thread ends) and is never closed (closing would
    /// unmap that lock: see `close_exclusive`). Reads go on.
    fn wreck(&self, op: &str) -> Error {
        let err = Error::Damaged {
            what: self.what(op),
            detail: guard::take_fault(),
        };
        self.abandon_write(&err);
        err
    }

    /// Record that a write transaction was abandoned after `err` (see
    /// `wreck`).
    pub(crate) fn abandon_write(&self, err: &Error) {
        self.abandoned.store(true, Ordering::Release);
        self.refuse_writes(format!(
            "{err}; this process writes no more to this file: the write that met the damage \
             was abandoned, and LMDB's writer lock stays with the thread that met it until \
             that thread ends"
        ));
    }

    /// A read met a damaged page (`err`): refuse writes from now on, since a
    /// write through a damaged page could make the damage worse.
    pub(crate) fn note_damage(&self, err: &Error) {
        self.refuse_writes(format!(
            "{err}; this process writes no more to this file, since a write through a \
             damaged page could make the damage worse"
        ));
    }

    fn refuse_writes(&self, text: String) {
        let _ = self.wrecked.set(text);
    }

    /// Refuse a write once a read or a write met a damaged page.
    pub(crate) fn check_unwrecked(&self) -> Result<()> {
        match self.wrecked.get() {
            Some(text) => Err(Error::Unusable(text.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn what(&self, op: &str) -> String {
        format!("{op} in {}", self.path.display())
    }

    /// With writemap, give the whole map disk blocks before a write
    /// transaction may touch it: LMDB writes its pages through the map, and
    /// a page of a sparse file that cannot get a block on a full disk kills
    /// the process with SIGBUS instead of failing. One comparison, except
    /// after the map grew. Caller holds the write lock.
    pub(crate) fn allocate_map(&self) -> Result<()> {
        let Some(file) = &self.data_file else {
            return Ok(());
        };
        let want = self.map_size.load(Ordering::Relaxed);
        let have = self.allocated.load(Ordering::Relaxed);
        if have >= want {
            return Ok(());
        }
        let done = match files::allocate(file, have as u64, (want - have) as u64, true) {
            Ok(files::Allocation::Done) => want,
            Ok(files::Allocation::Unsupported) => usize::MAX,
            Err(e) => {
                return Err(Error::lmdb(
                    io_code(&e),
                    format!(
                        "commit in {} (writemap=True needs disk space for the whole map, \
                         {want} bytes)",
                        self.path.display()
                    ),
                ))
            }
        };
        self.allocated.store(done, Ordering::Relaxed);
        Ok(())
    }

    /// Grow the map one step and record it. Caller holds the write lock.
    pub(crate) fn grow_locked(&self, cap: Option<usize>) -> Result<()> {
        let x = self.gate.exclusive("growing the map")?;
        let from = current_map_size(self.lmdb_exclusive(&x)?);
        let to = next_map_size(from, cap).ok_or(Error::MapFull {
            map_size: from,
            max_map_size: cap.unwrap_or(from),
        })?;
        self.resize_locked(&x, Some(to), "grow the map")?;
        let to = self.map_size.load(Ordering::Relaxed);
        self.growths.lock().push(Growth { from, to });
        Ok(())
    }

    /// Grow the map so that `extra` more bytes fit, before a big write whose
    /// size is known up front (saves failed attempts). Caller holds the
    /// write lock.
    fn reserve_locked(&self, extra: usize, cap: Option<usize>) -> Result<()> {
        loop {
            let (map_size, used) = {
                let g = self.gate.wait_shared();
                let info = self.info_shared(&g)?;
                let psize = self.stat_shared(&g)?.psize as usize;
                (info.map_size, (info.last_pgno + 1) * psize)
            };
            // Room for copy-on-write of the branch pages plus the data.
            let needed = used + extra + extra / 2 + 64 * 4096;
            if needed <= map_size || next_map_size(map_size, cap).is_none() {
                return Ok(());
            }
            self.grow_locked(cap)?;
        }
    }

    /// Another process grew the map: take the size it wrote. Caller holds the
    /// write lock.
    pub(crate) fn adopt_locked(&self) -> Result<()> {
        let x = self.gate.exclusive("adopting a map resize")?;
        self.resize_locked(&x, None, "adopt the map size")
    }

    /// Every resize of the map goes through here (`size` `None`: the size
    /// recorded in the file). If LMDB fails, it has already unmapped the old
    /// map; the environment is then closed and opened again at the old size
    /// and the failure reported, with the store usable. If even that fails,
    /// the environment is given up, and every later call says so.
    fn resize_locked(&self, x: &ExclusiveGuard<'_>, size: Option<usize>, op: &str) -> Result<()> {
        // LMDB refuses to resize while a write transaction is open, and an
        // abandoned one always is (see `wreck`).
        if self.abandoned.load(Ordering::Acquire) {
            self.check_unwrecked()?;
        }
        let env = self.lmdb_exclusive(x)?.env();
        let old = self.map_size.load(Ordering::Relaxed);
        let io_failure = |e: std::io::Error| Error::lmdb(io_code(&e), self.what(op));
        // Other processes of this package take this lock before they open
        // the file with writemap or resize such a map: nobody maps a size
        // read before the file changes under it.
        let _growth = match &self.data_file {
            Some(file) => Some(
                files::RangeLock::exclusive(file, files::GROWTH_LOCK_BYTE).map_err(io_failure)?,
            ),
            None => None,
        };
        // SAFETY: the caller holds the write lock (no write transaction) and
        // the exclusive gate (no read transaction in flight; pooled ones are
        // reset, which LMDB allows across a resize), so no transaction of
        // this environment is active in this process, as LMDB requires; the
        // growth lock is held for writemap.
        match unsafe { remap(env, size, self.data_file.as_ref()) } {
            Ok(()) => {
                let now = current_map_size(self.lmdb_exclusive(x)?);
                self.map_size.store(now, Ordering::Relaxed);
                self.map_moved(x);
                Ok(())
            }
            Err(Remap::Kept(rc)) => Err(Error::lmdb(rc, self.what(op))),
            Err(Remap::Unmapped(rc)) => self.reopen_locked(x, old, rc, op),
            Err(Remap::Dangling(rc)) => Err(self.give_up_locked(x, rc, op, true)),
        }
    }

    /// The map is gone (LMDB's pointer to it is NULL): close the
    /// environment and open it again with a map of `map_size` bytes. Then
    /// report the failure `rc` of `op`, with the store usable. Caller holds
    /// the write lock, the exclusive gate `x`, and with writemap the growth
    /// lock.
    fn reopen_locked(
        &self,
        x: &ExclusiveGuard<'_>,
        map_size: usize,
        rc: c_int,
        op: &str,
    ) -> Result<()> {
        self.abort_pool();
        // SAFETY: write lock + exclusive gate: nobody else touches `lmdb`.
        let slot = unsafe { &mut *self.lmdb.get() };
        // Closing unmaps nothing: LMDB set its map pointer to NULL when the
        // new map failed. It releases this process's locks and reader slots.
        drop(slot.take());
        #[cfg(test)]
        if tests::FAIL_REOPEN.with(|f| f.get()) {
            return Err(self.give_up_locked(x, rc, op, false));
        }
        match open_lmdb(&self.path, &self.options, map_size, self.data_file.as_ref()) {
            // Named tables' handles closed with the environment, and the
            // stores holding them cannot be told new ones: give up then.
            Ok(opened) if opened.db.dbi() == self.db.dbi() && !self.tables.any_live() => {
                self.map_size
                    .store(current_map_size(&opened.lmdb), Ordering::Relaxed);
                self.map_moved(x);
                *slot = Some(opened.lmdb);
                Err(Error::lmdb(rc, self.what(op)))
            }
            _ => Err(self.give_up_locked(x, rc, op, false)),
        }
    }

    /// The environment cannot be used again: forget it (`leak`: without
    /// closing it, because LMDB's map pointer may point at memory that is no
    /// longer its own) and refuse every later call.
    fn give_up_locked(&self, _x: &ExclusiveGuard<'_>, rc: c_int, op: &str, leak: bool) -> Error {
        self.abort_pool();
        // SAFETY: write lock + exclusive gate: nobody else touches `lmdb`.
        let slot = unsafe { &mut *self.lmdb.get() };
        match slot.take() {
            Some(env) if leak => std::mem::forget(env),
            env => drop(env),
        }
        let text = format!(
            "the LMDB environment of {} is unusable: {} failed ({}, code {rc}) and its memory map \
             could not be restored; nothing was written; close every store on this path and \
             open it again",
            self.path.display(),
            op,
            crate::error::strerror(rc)
        );
        let text = self.lost.get_or_init(|| text).clone();
        Error::Unusable(text)
    }

    /// Abort the pooled (reset) read transactions. With the exclusive gate
    /// held, or when the environment is being dropped.
    fn abort_pool(&self) {
        for RawTxn(t) in self.pool.lock().drain(..) {
            // SAFETY: pooled txns are reset read txns of this environment;
            // aborting one frees it and its reader slot in the lock file and
            // never touches the map.
            unsafe { ffi::mdb_txn_abort(t) };
        }
    }

    /// Growths since the last call, for the caller to log.
    pub fn take_growths(&self) -> Vec<Growth> {
        std::mem::take(&mut *self.growths.lock())
    }

    /// For readers that met MDB_MAP_RESIZED. Call without the GIL.
    pub fn adopt_resize(&self) -> Result<()> {
        let _writer = self.lock_writer()?;
        self.adopt_locked()
    }

    /// Begin a read transaction under a shared gate hold. `Ok(None)` means
    /// another process grew the map: drop the guard, `adopt_resize`, retry.
    pub fn begin_read<'a>(&'a self, guard: SharedGuard<'a>) -> Result<Option<ReadTxn<'a>>> {
        if self.generation != fork_generation() {
            // LMDB's rule: an environment is used only in the process that
            // opened it, never after fork(). Its pool and reader slots are
            // the parent's: begin nothing, renew nothing here.
            return Err(Error::Forked);
        }
        // Spine rule 3: the transaction keeps `guard`, and every slice it
        // hands out borrows the transaction, so no LMDB memory outlives it.
        let env = self.lmdb_shared(&guard)?;
        let pooled = self.pool.lock().pop();
        let mut txn = None;
        if let Some(RawTxn(t)) = pooled {
            // SAFETY: `t` is a reset read txn of this environment, ours now.
            let rc = unsafe { ffi::mdb_txn_renew(t) };
            if rc == 0 {
                txn = Some(t);
            } else {
                // SAFETY: a failed renew leaves the txn finished; abort frees
                // it and its reader slot.
                unsafe { ffi::mdb_txn_abort(t) };
                if rc == ffi::MDB_MAP_RESIZED {
                    return Ok(None);
                }
            }
        }
        let txn = match txn {
            Some(t) => t,
            None => match self.begin_fresh(env)? {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        Ok(Some(ReadTxn {
            env: self,
            txn,
            guard: ManuallyDrop::new(guard),
            pinned: Cell::new(false),
            dbi: Cell::new(self.db.dbi()),
            table: RefCell::new(None),
            damaged: Cell::new(false),
            map: Cell::new(self.map_view()),
        }))
    }

    fn begin_fresh(&self, env: &Environment) -> Result<Option<*mut ffi::MDB_txn>> {
        for attempt in 0..2 {
            let mut t: *mut ffi::MDB_txn = ptr::null_mut();
            // SAFETY: env is open (the caller holds the gate); on success `t`
            // is a new read transaction that we own.
            let rc =
                unsafe { ffi::mdb_txn_begin(env.env(), ptr::null_mut(), ffi::MDB_RDONLY, &mut t) };
            match rc {
                0 => return Ok(Some(t)),
                ffi::MDB_MAP_RESIZED => return Ok(None),
                ffi::MDB_READERS_FULL if attempt == 0 => {
                    let mut dead: c_int = 0;
                    // SAFETY: env is open; this only clears the slots of
                    // processes that no longer exist.
                    unsafe { ffi::mdb_reader_check(env.env(), &mut dead) };
                }
                ffi::MDB_READERS_FULL => {
                    return Err(Error::ReadersFull {
                        max_readers: self.options.max_readers,
                    })
                }
                rc => return Err(Error::lmdb(rc, self.what("begin a read"))),
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    pub fn info_shared(&self, g: &SharedGuard<'_>) -> Result<EnvInfo> {
        let env = self.lmdb_shared(g)?;
        let mut raw = std::mem::MaybeUninit::<ffi::MDB_envinfo>::zeroed();
        // SAFETY: env is open; mdb_env_info fills the struct.
        let rc = unsafe { ffi::mdb_env_info(env.env(), raw.as_mut_ptr()) };
        if rc != 0 {
            return Err(Error::lmdb(rc, self.what("read env info")));
        }
        // SAFETY: initialised by mdb_env_info above (and zeroed before).
        let raw = unsafe { raw.assume_init() };
        Ok(EnvInfo {
            map_addr: raw.me_mapaddr as usize,
            map_size: raw.me_mapsize,
            last_pgno: raw.me_last_pgno,
            last_txnid: raw.me_last_txnid,
            max_readers: raw.me_maxreaders,
            num_readers: raw.me_numreaders,
        })
    }

    pub fn stat_shared(&self, g: &SharedGuard<'_>) -> Result<DbStat> {
        let env = self.lmdb_shared(g)?;
        let s = env
            .stat()
            .map_err(|e| Error::from_lmdb(e, self.what("read env stat")))?;
        Ok(DbStat {
            psize: s.page_size(),
            depth: s.depth(),
            branch_pages: s.branch_pages(),
            leaf_pages: s.leaf_pages(),
            overflow_pages: s.overflow_pages(),
            entries: s.entries(),
        })
    }

    /// fsync the data file. Call without the GIL.
    pub fn sync(&self, force: bool) -> Result<()> {
        let g = self.gate.wait_shared();
        let env = self.lmdb_shared(&g)?;
        if self.options.readonly {
            return Ok(());
        }
        env.sync(force)
            .map_err(|e| Error::from_lmdb(e, self.what("sync")))
    }

    /// Write a consistent copy of the committed database to `file`, from its
    /// start (LMDB's `mdb_env_copyfd2`; `compact` leaves out the free pages
    /// and renumbers the others). LMDB reads one snapshot through a read
    /// transaction of its own, so writers go on meanwhile; the gate is held
    /// shared throughout, so a growth of the map in this process waits for
    /// the copy to end. Call without the GIL (see `copy.rs` for the file's
    /// placement).
    pub(crate) fn copy_into(&self, file: &std::fs::File, compact: bool) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::io::AsRawFd;
        if self.generation != fork_generation() {
            // LMDB's rule: no transaction of an environment opened before
            // fork() begins in the child, and the copy begins one.
            return Err(Error::Forked);
        }
        let flags = if compact { ffi::MDB_CP_COMPACT } else { 0 };
        if !compact && self.abandoned.load(Ordering::Acquire) {
            // A plain copy takes LMDB's writer lock, which the abandoned
            // write holds (see `wreck`); a compacting copy does not.
            return Err(Error::Unusable(format!(
                "{}; a plain copy needs LMDB's writer lock: copy with compact=True",
                self.wrecked.get().map_or("", String::as_str)
            )));
        }
        if compact {
            self.check_readable()?;
        }
        let what = || format!("copy {}", self.path.display());
        loop {
            let rc = {
                // A plain copy takes its snapshot of the meta pages under
                // LMDB's writer mutex, which lives in the lock file: without
                // one (lock=False) this process's writer lock stands in for
                // it, for the whole copy (other processes must not write such
                // a file at all).
                let _writer = match !self.options.lock && !compact {
                    true => Some(self.lock_writer()?),
                    false => None,
                };
                let g = self.gate.wait_shared();
                let env = self.lmdb_shared(&g)?;
                // SAFETY: `env` is open and stays mapped while the gate is
                // held shared (no resize or close can run); LMDB begins and
                // ends its own read transaction inside the call, and only
                // writes to `file`, a descriptor we own and keep open.
                unsafe { ffi::mdb_env_copyfd2(env.env(), file.as_raw_fd(), flags) }
            };
            match rc {
                0 => return Ok(()),
                ffi::MDB_MAP_RESIZED => {
                    // Another process grew the map: adopt its size and start
                    // the copy again, over what was written so far.
                    let rewind = file.set_len(0).and_then(|()| {
                        let mut f = file;
                        f.seek(SeekFrom::Start(0)).map(drop)
                    });
                    rewind.map_err(|e| Error::lmdb(io_code(&e), what()))?;
                    self.adopt_resize()?;
                }
                ffi::MDB_READERS_FULL => {
                    return Err(Error::ReadersFull {
                        max_readers: self.options.max_readers,
                    })
                }
                rc => return Err(Error::lmdb(rc, what())),
            }
        }
    }

    /// Close the environment: waits for every read in flight and for the
    /// writer. Idempotent. Call without the GIL. Stores close through
    /// `release`, which also keeps the registry right.
    pub fn close(&self) -> Result<()> {
        let _writer = self.lock_writer()?;
        let x = self.gate.exclusive("closing the store")?;
        self.close_exclusive(x);
        Ok(())
    }

    /// The close itself, for a caller that holds the writer lock and the
    /// exclusive gate (which `x` proves).
    fn close_exclusive(&self, x: ExclusiveGuard<'_>) {
        // SAFETY: write lock + exclusive gate: nobody else touches `lmdb`.
        let slot = unsafe { &mut *self.lmdb.get() };
        if slot.is_none() {
            return;
        }
        for RawTxn(t) in self.pool.lock().drain(..) {
            // SAFETY: pooled txns are reset read txns of this open env.
            unsafe { ffi::mdb_txn_abort(t) };
        }
        let env = slot.take();
        drop(x);
        if self.abandoned.load(Ordering::Acquire) {
            // An abandoned write transaction holds LMDB's writer lock, in the
            // lock file's map: unmapping it would keep it locked for good for
            // every process. Left mapped, it is released when its thread ends.
            std::mem::forget(env);
        } else {
            drop(env);
        }
    }
}

/// Named tables (see `tables.rs`): every write transaction they need is
/// here, in `write_locked`, like the others.
impl Env {
    /// Open the table `name`, creating it if `create` (and the environment
    /// is writable). Refused while the main database holds a main store's
    /// entries. Call without the GIL.
    pub fn open_table(&self, name: &str, create: bool) -> Result<Table> {
        if let Some(why) = tables::name_problem(name) {
            return Err(Error::BadTable {
                name: name.into(),
                why,
            });
        }
        // An existing table opens in a read: opening writes nothing (a fork
        // child reopening its tables, a reader process).
        let found = match self.open_table_existing(name) {
            Err(Error::Lmdb { code, .. })
                if code == ffi::MDB_NOTFOUND && create && !self.options.readonly =>
            {
                self.open_table_writable(name, create)
            }
            found => found,
        };
        found.map_err(|e| self.table_error(e, name))
    }

    fn open_table_writable(&self, name: &str, create: bool) -> Result<Table> {
        let _writer = self.lock_writer()?;
        let _open = self.lock_open()?;
        let refused = Cell::new(false);
        let db = self.write_locked(self.options.max_map_size, &mut |txn, main| {
            // The record's path (made by a create) and the first key's
            // (rewritten by main_kind_rw).
            let keys = [(name.as_bytes(), false), (&[][..], false)];
            self.check_writes(txn, main, None, keys.into_iter())?;
            if tables::main_kind_rw(txn, main)? == MainKind::Entries {
                refused.set(true);
                return Err(lmdb::Error::Incompatible);
            }
            // SAFETY: `open_lock` is held until this transaction has ended,
            // so no other `mdb_dbi_open` runs in this process meanwhile.
            unsafe {
                if create {
                    txn.create_db(Some(name), lmdb::DatabaseFlags::empty())
                } else {
                    txn.open_db(Some(name))
                }
            }
        });
        match db {
            Ok(db) => Ok(self.tables.give(name, db)),
            Err(_) if refused.get() => Err(Error::MainHoldsEntries {
                name: name.into(),
                path: self.path.display().to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Open an existing table in a read transaction, committed so that its
    /// handle stays open.
    fn open_table_existing(&self, name: &str) -> Result<Table> {
        self.find_map();
        let db = self.in_open_read(&mut |txn| {
            self.check_lookup(name)?;
            // SAFETY: `open_lock` is held until `txn` has ended.
            match unsafe { txn.open_db(Some(name)) } {
                Ok(db) => {
                    txn.commit()
                        .map_err(|e| Error::from_lmdb(e, self.what("open a table")))?;
                    Ok(db)
                }
                Err(e) => Err(Error::from_lmdb(e, self.what("open a table"))),
            }
        })?;
        Ok(self.tables.give(name, db))
    }

    /// Run `f` with a read transaction begun while `open_lock` is held, so
    /// that an `mdb_dbi_open` in it is the only one in this process; `f`
    /// commits or drops the transaction, and the lock is let go after it.
    /// Another process's growth is adopted first when LMDB asks for it.
    fn in_open_read<T>(
        &self,
        f: &mut dyn FnMut(lmdb::RoTransaction<'_>) -> Result<T>,
    ) -> Result<T> {
        loop {
            let _open = self.lock_open()?;
            let g = self.gate.wait_shared();
            let env = self.lmdb_shared(&g)?;
            let txn = match env.begin_ro_txn() {
                Ok(t) => t,
                Err(lmdb::Error::MapResized) => {
                    drop(g);
                    drop(_open);
                    self.adopt_resize()?;
                    continue;
                }
                Err(e) => return Err(Error::from_lmdb(e, self.what("begin a read"))),
            };
            return f(txn);
        }
    }

    /// The words for a failed table open.
    fn table_error(&self, e: Error, name: &str) -> Error {
        let path = self.path.display().to_string();
        match e {
            Error::Lmdb { code, .. } if code == ffi::MDB_NOTFOUND => Error::NoTable {
                name: name.into(),
                path,
            },
            Error::Lmdb { code, .. } if code == ffi::MDB_INCOMPATIBLE => Error::MainHoldsEntries {
                name: name.into(),
                path,
            },
            Error::Lmdb { code, .. } if code == ffi::MDB_DBS_FULL => Error::TooManyTables {
                name: name.into(),
                path,
            },
            e => e,
        }
    }

    /// Refuse the main store of a file whose main database holds table
    /// records (its reads would show them as entries). Call without the GIL.
    pub fn check_main(&self) -> Result<()> {
        let kind = self.in_open_read(&mut |txn| {
            let mut map = self.map_view();
            // SAFETY: `open_lock` is held until `txn` ends (dropped here,
            // which aborts it and closes a handle the check opened).
            let kind = unsafe { tables::main_kind_ro(&txn, self.db, &mut map) }
                .map_err(|e| Error::from_lmdb(e, self.what("read")));
            self.found_map(map);
            kind
        })?;
        if kind == MainKind::Tables {
            self.tables.mark_present(true);
            return Err(self.has_tables());
        }
        Ok(())
    }

    /// Lock `open_lock` (see `tables::Registry`). Its holder may wait for
    /// the gate, or grow the map and so wait for every read: a thread inside
    /// a read (a snapshot, code run while unpickling) gives up with
    /// `WouldDeadlock` rather than wait for it while growth is under way.
    fn lock_open(&self) -> Result<MutexGuard<'_, ()>> {
        if !self.gate.held_by_current_thread() {
            return Ok(self.tables.open_lock.lock());
        }
        loop {
            if let Some(g) = self.tables.open_lock.try_lock_for(Duration::from_millis(2)) {
                return Ok(g);
            }
            if self.gate.exclusive_pending() {
                return Err(Error::WouldDeadlock("opening a table"));
            }
        }
    }

    fn has_tables(&self) -> Error {
        Error::HasTables {
            path: self.path.display().to_string(),
        }
    }

    /// A main-database write refused by LMDB because a key is a table
    /// record's, in the words of `HasTables`.
    fn main_write_error(&self, e: Error) -> Error {
        match e {
            Error::Lmdb { code, .. } if code == ffi::MDB_INCOMPATIBLE => {
                self.tables.mark_present(true);
                self.has_tables()
            }
            e => e,
        }
    }

    /// Why `table` cannot be used now: the main store of a file with
    /// tables, or a table that was dropped.
    fn table_unusable(&self, table: &Table) -> Option<Error> {
        match &table.named {
            None if self.tables.has_tables() => Some(self.has_tables()),
            None => None,
            Some(n) if self.tables.is_live(n) => None,
            Some(n) => Some(Error::TableDropped {
                name: n.name.to_string(),
                path: self.path.display().to_string(),
            }),
        }
    }

    /// `commit` into `table`. A write to the main database whose first key
    /// is a table record's, or that would overwrite one, is refused
    /// (`HasTables`), so table records and entries never mix.
    pub fn commit_in(
        &self,
        table: &Table,
        ops: &Sorted<'_>,
        bytes: usize,
        cap: Option<usize>,
    ) -> Result<()> {
        self.commit_all_in(table, std::slice::from_ref(ops), bytes, cap)
    }

    /// `commit_in` of several batches in one write transaction, oldest
    /// first: a key in a later batch ends with that batch's write.
    pub fn commit_all_in(
        &self,
        table: &Table,
        batches: &[Sorted<'_>],
        bytes: usize,
        cap: Option<usize>,
    ) -> Result<()> {
        let name = table.named.as_ref().map(|n| &*n.name);
        // Before anything changes: the pages the batches would change, and
        // in the main tree its first key's, which `main_kind_rw` rewrites.
        let check_all = |txn: &mut RwTransaction<'_>, db: Database| {
            let first = name.is_none().then_some((&[][..], false));
            let keys = batches
                .iter()
                .flat_map(|ops| ops.ops().iter().map(|(k, v)| (*k, v.is_none())))
                .chain(first);
            self.check_writes(txn, db, name, keys)
        };
        let apply_all = |txn: &mut RwTransaction<'_>, db: Database| {
            batches
                .iter()
                .try_for_each(|ops| apply_sorted(txn, db, ops.ops()))
        };
        let Some(named) = &table.named else {
            if let Some(e) = self.table_unusable(table) {
                return Err(e);
            }
            let _writer = self.lock_writer()?;
            self.reserve_locked(bytes, cap)?;
            return self
                .write_locked(cap, &mut |txn, db| {
                    check_all(txn, db)?;
                    if tables::main_kind_rw(txn, db)? == MainKind::Tables {
                        return Err(lmdb::Error::Incompatible);
                    }
                    apply_all(txn, db)
                })
                .map_err(|e| self.main_write_error(e));
        };
        let _writer = self.lock_writer()?;
        // A drop takes the writer lock too: the table stays while it is held.
        if let Some(e) = self.table_unusable(table) {
            return Err(e);
        }
        self.reserve_locked(bytes, cap)?;
        self.write_locked(cap, &mut |txn, _| {
            check_all(txn, named.db)?;
            apply_all(txn, named.db)
        })
        .map_err(|e| match e {
            // Another process dropped the table: LMDB no longer finds
            // its record.
            Error::Lmdb { code, .. } if code == ffi::MDB_NOTFOUND => Error::TableDropped {
                name: named.name.to_string(),
                path: self.path.display().to_string(),
            },
            e => e,
        })
    }

    /// `clear` of `table`; for the main database, refused when it holds
    /// table records (emptying it would lose every table).
    pub fn clear_in(&self, table: &Table, cap: Option<usize>) -> Result<()> {
        let _writer = self.lock_writer()?;
        if let Some(e) = self.table_unusable(table) {
            return Err(e);
        }
        match &table.named {
            None => self
                .write_locked(cap, &mut |txn, db| {
                    if tables::main_kind_rw(txn, db)? == MainKind::Tables {
                        return Err(lmdb::Error::Incompatible);
                    }
                    self.check_drop(txn, db, None)?;
                    // SAFETY: `delete` false: the database stays.
                    unsafe { guard::drop_db(txn, db, false) }
                })
                .map_err(|e| self.main_write_error(e)),
            Some(n) => self.write_locked(cap, &mut |txn, _| {
                self.check_drop(txn, n.db, Some(&n.name))?;
                // SAFETY: as above.
                unsafe { guard::drop_db(txn, n.db, false) }
            }),
        }
    }

    /// `remove_if` in `table`.
    pub fn remove_if_in(
        &self,
        table: &Table,
        key: &[u8],
        expected: &[u8],
        cap: Option<usize>,
    ) -> Result<bool> {
        let _writer = self.lock_writer()?;
        if let Some(e) = self.table_unusable(table) {
            return Err(e);
        }
        let db = table.named.as_ref().map_or(self.db, |n| n.db);
        let name = table.named.as_ref().map(|n| n.name.clone());
        self.write_locked(cap, &mut |txn, _| {
            self.remove_if_body(txn, db, name.as_deref(), key, expected)
        })
        .map_err(|e| self.main_write_error(e))
    }

    /// Remove `table` and everything in it, in one write transaction. Every
    /// handle of it in this process is dead afterwards: a store using one
    /// is told the table was dropped. Call without the GIL.
    pub fn drop_table(&self, table: &Table, cap: Option<usize>) -> Result<()> {
        let Some(named) = &table.named else {
            return Err(Error::DropMain {
                path: self.path.display().to_string(),
            });
        };
        let _writer = self.lock_writer()?;
        let _open = self.lock_open()?;
        if let Some(e) = self.table_unusable(table) {
            return Err(e);
        }
        let closed = Cell::new(None);
        let result = self.write_locked(cap, &mut |txn, main| {
            // By name: an attempt that failed closed the handle (LMDB
            // closes it at the drop, before the commit).
            // Its record is deleted from the main tree.
            self.check_writes(txn, main, None, [(named.name.as_bytes(), true)].into_iter())?;
            // SAFETY: `open_lock` is held until this transaction ends.
            let db = unsafe { txn.open_db(Some(&named.name)) }?;
            closed.set(Some(db.dbi()));
            self.check_drop(txn, db, Some(&named.name))?;
            // SAFETY: as above; no cursor of this handle is open here, and
            // the handle is never used again once dropped (retired below).
            unsafe { guard::drop_db(txn, db, true) }?;
            let cursor = txn.open_ro_cursor(main)?;
            match guard::cursor_op(&cursor, None, ffi::MDB_FIRST, None) {
                Ok(_) => Ok(false),
                Err(e) if guard::is_fault(&e) => {
                    // Abandoned with the transaction (see apply_sorted).
                    std::mem::forget(cursor);
                    Err(e)
                }
                Err(_) => Ok(true),
            }
        });
        // The old handle and whichever one a drop closed are dead, failed
        // commit or not.
        self.tables.retire(named.db.dbi());
        if let Some(dbi) = closed.get() {
            self.tables.retire(dbi);
        }
        let main_empty = result?;
        if main_empty {
            self.tables.mark_present(false);
        }
        Ok(())
    }

    /// The names of the tables in the file, in sorted order. Reads only.
    /// Call without the GIL.
    pub fn list_tables(&self) -> Result<Vec<String>> {
        self.read_ro(&mut |env, scan| {
            let read = |e| Error::from_lmdb(e, self.what("read the table names"));
            let mut map = self.map_view();
            let mut names = Vec::new();
            let cursor = scan.open_ro_cursor(self.db).map_err(read)?;
            let mut op = ffi::MDB_FIRST;
            loop {
                let (key, value) = match guard::cursor_op(&cursor, None, op, Some(&mut map)) {
                    Ok(entry) => entry,
                    Err(lmdb::Error::NotFound) => break,
                    Err(e) => return Err(read(e)),
                };
                op = ffi::MDB_NEXT;
                let Some(name) = tables::candidate(key, value.len()) else {
                    continue;
                };
                // One short read per name: its abort closes the handle it
                // opened, so listing many tables takes no slots.
                let Some(probe) = self.begin_ro(env)? else {
                    return Ok(None);
                };
                self.check_lookup(name)?;
                // SAFETY: `open_lock` is held until `probe` has ended.
                match unsafe { probe.open_db(Some(name)) } {
                    Ok(_) => names.push(name.to_string()),
                    Err(lmdb::Error::Incompatible) => {}
                    Err(e) => return Err(read(e)),
                }
            }
            self.found_map(map);
            Ok(Some(names))
        })
    }

    /// Read every key and value of the file, its tables' included, under the
    /// guard (guard.rs). A compacting copy walks every page with LMDB's own
    /// code, outside the guard (it hands pages to a thread of its own, which
    /// a jump out of the walk would leave waiting): damage is found here
    /// first, and the copy refused. Call without the GIL.
    fn check_readable(&self) -> Result<()> {
        let names = self.list_tables()?;
        self.read_ro(&mut |_, txn| {
            let read = |e| Error::from_lmdb(e, self.what("read before a compacting copy"));
            let mut map = self.map_view();
            let mut dbs = vec![self.db];
            for name in &names {
                self.check_lookup(name)?;
                // SAFETY: `open_lock` is held until `txn` has ended.
                match unsafe { txn.open_db(Some(name)) } {
                    Ok(db) => dbs.push(db),
                    Err(lmdb::Error::NotFound) => {}
                    Err(e) => return Err(read(e)),
                }
            }
            for db in &dbs {
                let cursor = txn.open_ro_cursor(*db).map_err(read)?;
                let mut op = ffi::MDB_FIRST;
                loop {
                    match guard::cursor_op(&cursor, None, op, Some(&mut map)) {
                        Ok(_) => op = ffi::MDB_NEXT,
                        Err(lmdb::Error::NotFound) => break,
                        Err(e) => {
                            let e = read(e);
                            self.note_damage(&e);
                            return Err(e);
                        }
                    }
                }
            }
            // LMDB's copy also reads the free-page tree (it counts the
            // pages it leaves out): the check every write makes of it.
            let cursor = txn.open_ro_cursor(self.db).map_err(read)?;
            let free = guard::check_writes(Some(&cursor), &mut map, None, std::iter::empty());
            drop(cursor);
            if let Err(e) = free {
                let e = read(e);
                self.note_damage(&e);
                return Err(e);
            }
            self.found_map(map);
            Ok(Some(()))
        })
    }

    /// Keep where a read of the lmdb crate's found the map (see `guard.rs`).
    /// The caller holds the gate.
    fn found_map(&self, map: guard::Map) {
        if map.base != 0 {
            self.map_base.store(map.base, Ordering::Relaxed);
        }
    }

    /// Check the pages LMDB goes through to look up the record of table
    /// `name` (to open it), before it does: see `guard::check_key`. The
    /// caller holds the gate.
    fn check_lookup(&self, name: &str) -> Result<()> {
        let mut map = self.map_view();
        guard::check_key(&mut map, name.as_bytes()).map_err(|e| {
            let err = Error::from_lmdb(e, self.what("open a table"));
            self.note_damage(&err);
            err
        })
    }

    /// Run `body` in a read transaction of the lmdb crate, with the open
    /// lock (for table handles) and the gate held; `Ok(None)` from it, or a
    /// transaction that meets another process's growth, adopts the growth
    /// and runs it again.
    fn read_ro<T>(
        &self,
        body: &mut dyn FnMut(&Environment, &lmdb::RoTransaction<'_>) -> Result<Option<T>>,
    ) -> Result<T> {
        loop {
            let open = self.lock_open()?;
            let g = self.gate.wait_shared();
            let env = self.lmdb_shared(&g)?;
            if let Some(txn) = self.begin_ro(env)? {
                if let Some(value) = body(env, &txn)? {
                    return Ok(value);
                }
            }
            drop(g);
            drop(open);
            self.adopt_resize()?;
        }
    }

    /// A read transaction of the lmdb crate; `None`: another process grew
    /// the map (adopt it and retry).
    fn begin_ro<'e>(&self, env: &'e Environment) -> Result<Option<lmdb::RoTransaction<'e>>> {
        match env.begin_ro_txn() {
            Ok(t) => Ok(Some(t)),
            Err(lmdb::Error::MapResized) => Ok(None),
            Err(e) => Err(Error::from_lmdb(e, self.what("begin a read"))),
        }
    }

    /// `stat` of the database `table` addresses, in the transaction `txn`.
    pub fn table_stat(&self, txn: &ReadTxn<'_>) -> Result<DbStat> {
        let mut st = std::mem::MaybeUninit::<ffi::MDB_stat>::zeroed();
        // SAFETY: live txn and dbi; mdb_stat fills the struct.
        let rc = unsafe {
            guard::stat(txn.txn, txn.dbi.get(), st.as_mut_ptr(), || {
                self.what("stat")
            })
        }
        .inspect_err(|e| txn.met(e))?;
        if rc != 0 {
            return Err(Error::lmdb(rc, self.what("stat")));
        }
        // SAFETY: filled above.
        let s = unsafe { st.assume_init() };
        Ok(DbStat {
            psize: s.ms_psize,
            depth: s.ms_depth,
            branch_pages: s.ms_branch_pages,
            leaf_pages: s.ms_leaf_pages,
            overflow_pages: s.ms_overflow_pages,
            entries: s.ms_entries,
        })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for RawTxn(t) in self.pool.get_mut().drain(..) {
            // SAFETY: pooled txns are reset read txns of this env, which is
            // still open here (it closes when `lmdb` drops below).
            unsafe { ffi::mdb_txn_abort(t) };
        }
        if *self.abandoned.get_mut() {
            // Never closed: see `close_exclusive`.
            std::mem::forget(self.lmdb.get_mut().take());
        }
    }
}

/// Apply sorted, unique operations (a value, or `None` to delete). Keys past
/// the database's last key are appended (MDB_APPEND: no tree search, full
/// pages), which is what sequential keys make common. All go through one
/// cursor: LMDB starts each write from the page the cursor stands on, so a
/// key next to the last one written needs no search from the root.
fn apply_sorted(txn: &mut RwTransaction<'_>, db: Database, ops: &[Op<'_>]) -> lmdb::Result<()> {
    // A cursor that met damage is abandoned with its transaction (closing
    // it would walk the transaction's cursors: see guard.rs).
    let mut cursor = ManuallyDrop::new(txn.open_rw_cursor(db)?);
    let result = apply_with(&mut cursor, ops);
    if !matches!(&result, Err(e) if guard::is_fault(e)) {
        // SAFETY: dropped once, here.
        unsafe { ManuallyDrop::drop(&mut cursor) };
    }
    result
}

fn apply_with(cursor: &mut lmdb::RwCursor<'_>, ops: &[Op<'_>]) -> lmdb::Result<()> {
    let last: Option<Vec<u8>> = match guard::cursor_op(cursor, None, ffi::MDB_LAST, None) {
        Ok((k, _)) => Some(k.to_vec()),
        Err(lmdb::Error::NotFound) => None,
        Err(e) => return Err(e),
    };
    let split = match &last {
        Some(last) => ops.partition_point(|(k, _)| *k <= &last[..]),
        None => 0,
    };
    guard::apply(cursor, ops, split)
}

/// A read transaction with the gate held shared. Returned to the pool
/// (reset) when dropped; the gate is released after that. A pinned one
/// stays open instead (see [`ReadTxn::pin`]).
pub struct ReadTxn<'a> {
    env: &'a Env,
    txn: *mut ffi::MDB_txn,
    /// Released by hand in `drop`, after the transaction ends, and never in
    /// a child after fork() (the gate's state there is a stale copy).
    guard: ManuallyDrop<SharedGuard<'a>>,
    /// A buffer over this transaction's pages outlives the read.
    pinned: Cell<bool>,
    /// The database its reads address: the main one unless `set_table`.
    dbi: Cell<ffi::MDB_dbi>,
    /// The name `dbi` was opened by (`None`: the main table), for the
    /// lookups of `guard.c`, which find a named table's root by it.
    table: RefCell<Option<Arc<str>>>,
    /// A read met a damaged page: the transaction is ended, not pooled.
    damaged: Cell<bool>,
    /// Where the map is, for the checks of `guard.rs`: stable while the
    /// transaction holds the gate (a resize takes it exclusively).
    map: Cell<guard::Map>,
}

/// Cursor positioning for chunked scans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seek {
    First,
    Last,
    /// First key >= this.
    AtOrAfter,
}

impl<'a> ReadTxn<'a> {
    /// Address `table` with the reads of this transaction: refused for a
    /// dropped table, and for the main store of a file with tables.
    pub fn set_table(&self, table: &Table) -> Result<()> {
        if let Some(e) = self.env.table_unusable(table) {
            return Err(e);
        }
        self.dbi.set(
            table
                .named
                .as_ref()
                .map_or(self.env.db.dbi(), |n| n.db.dbi()),
        );
        *self.table.borrow_mut() = table.named.as_ref().map(|n| n.name.clone());
        Ok(())
    }

    /// Keep this transaction's pages readable, where they are, for the rest
    /// of the process: a buffer over them outlives the read and cannot be
    /// revoked. The transaction is never reset (so LMDB never reuses its
    /// pages, in any process), the gate stays pinned (so growth and close
    /// never unmap them), and `env`, this transaction's environment, is
    /// never freed. Permanent because the holder's release does not prove it
    /// is done: pickle's Unpickler releases its input buffer when
    /// re-initialised, and reads on through the pointer it kept.
    ///
    /// Spine rule 3 still holds: the memory stays valid for as long as the
    /// buffer over it can be reached, since it is never released.
    pub fn pin(&self, env: &Arc<Env>) {
        debug_assert!(std::ptr::eq(Arc::as_ptr(env), self.env));
        if !self.pinned.replace(true) {
            std::mem::forget(env.clone());
        }
    }

    /// The page size, the map's size and the data file's descriptor, for
    /// locating a value of this transaction in the file (`StoredValue`).
    pub(crate) fn layout(&self) -> Result<(usize, usize, c_int)> {
        let env = self.env.lmdb_shared(&self.guard)?.env();
        let mut info = std::mem::MaybeUninit::<ffi::MDB_envinfo>::zeroed();
        let mut stat = std::mem::MaybeUninit::<ffi::MDB_stat>::zeroed();
        let mut fd: ffi::mdb_filehandle_t = -1;
        // SAFETY: the environment is open while this transaction holds the
        // gate; the calls only fill the out-parameters given.
        let rc = unsafe {
            match ffi::mdb_env_info(env, info.as_mut_ptr()) {
                0 => match ffi::mdb_env_stat(env, stat.as_mut_ptr()) {
                    0 => ffi::mdb_env_get_fd(env, &mut fd),
                    rc => rc,
                },
                rc => rc,
            }
        };
        if rc != 0 {
            return Err(Error::lmdb(rc, self.env.what("locate a value")));
        }
        // SAFETY: filled by the successful calls above.
        let (info, stat) = unsafe { (info.assume_init(), stat.assume_init()) };
        Ok((stat.ms_psize as usize, info.me_mapsize, fd))
    }

    /// The stored bytes of `key`; the slice points into the map and lives as
    /// long as this transaction.
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        if !crate::key_len_ok(key.len()) {
            return Ok(None);
        }
        let mut k = guard::val(key);
        let mut v = ffi::MDB_val {
            mv_size: 0,
            mv_data: ptr::null_mut(),
        };
        let mut map = self.map.get();
        let table = self.table.borrow();
        // SAFETY: live read txn and dbi of this env, which `table` names
        // (set together by `set_table`), whose map `map` describes; k points
        // to `key`.
        let rc = unsafe {
            guard::get(
                self.txn,
                self.dbi.get(),
                table.as_deref().map(str::as_bytes),
                &mut k,
                &mut v,
                Some(&mut map),
                || self.env.what("read"),
            )
        };
        // Kept even after damage: the map was found from its meta pages.
        self.found_map(map);
        let rc = rc.inspect_err(|e| self.met(e))?;
        match rc {
            0 => {
                // SAFETY: `v` was filled by mdb_get inside `self`.
                Ok(Some(unsafe { guard::slice(&v) }))
            }
            ffi::MDB_NOTFOUND => Ok(None),
            rc => Err(self.failed(rc, "read")),
        }
    }

    /// Number of entries in this snapshot.
    pub fn entries(&self) -> Result<usize> {
        let mut st = std::mem::MaybeUninit::<ffi::MDB_stat>::zeroed();
        // SAFETY: live txn and dbi; mdb_stat fills the struct.
        let rc = unsafe {
            guard::stat(self.txn, self.dbi.get(), st.as_mut_ptr(), || {
                self.env.what("count the entries")
            })
        }
        .inspect_err(|e| self.met(e))?;
        if rc != 0 {
            return Err(self.failed(rc, "stat"));
        }
        // SAFETY: filled above.
        Ok(unsafe { st.assume_init() }.ms_entries)
    }

    /// A read met damage: end this transaction when dropped, and refuse
    /// writes to the file from now on.
    fn met(&self, e: &Error) {
        self.damaged.set(true);
        self.env.note_damage(e);
    }

    /// Keep where a read found the map, for this transaction and the
    /// environment's later ones.
    #[inline]
    fn found_map(&self, map: guard::Map) {
        if map.base != self.map.get().base {
            self.map.set(map);
            self.env.map_base.store(map.base, Ordering::Relaxed);
        }
    }

    /// The error of a read that LMDB failed with `rc`; LMDB's own signs of
    /// a damaged file (a page that is not there, or not what it should be)
    /// count as damage met.
    fn failed(&self, rc: c_int, what: &str) -> Error {
        let e = Error::lmdb(rc, self.env.what(what));
        if matches!(rc, ffi::MDB_PAGE_NOTFOUND | ffi::MDB_CORRUPTED) {
            self.met(&e);
        }
        e
    }

    /// A cursor on this transaction, closed when dropped.
    fn cursor(&self) -> Result<Cursor<'_>> {
        let mut raw: *mut ffi::MDB_cursor = ptr::null_mut();
        // SAFETY: live txn and dbi; `Cursor` closes it before the txn ends
        // (it borrows `self`).
        let rc = unsafe { ffi::mdb_cursor_open(self.txn, self.dbi.get(), &mut raw) };
        if rc != 0 {
            return Err(Error::lmdb(rc, self.env.what("open a cursor")));
        }
        Ok(Cursor {
            raw,
            env: self.env,
            txn: self,
        })
    }

    /// Lookups of keys given in ascending order, through one cursor that
    /// moves forward: see [`Ascending`].
    pub fn ascending(&self) -> Result<Ascending<'_>> {
        Ok(Ascending {
            cursor: self.cursor()?,
            state: guard::Seek::unset(),
        })
    }

    /// Walk keys from a position, calling `f(key, value)` until it returns
    /// false or the keys run out. Slices live as long as this transaction.
    pub(crate) fn scan<'t>(
        &'t self,
        seek: Seek,
        from: &[u8],
        reverse: bool,
        mut f: impl FnMut(&'t [u8], &'t [u8]) -> bool,
    ) -> Result<()> {
        let cursor = self.cursor()?;
        let first_op = match seek {
            Seek::First => ffi::MDB_FIRST,
            Seek::Last => ffi::MDB_LAST,
            Seek::AtOrAfter => ffi::MDB_SET_RANGE,
        };
        let step = if reverse || seek == Seek::Last {
            ffi::MDB_PREV
        } else {
            ffi::MDB_NEXT
        };
        let mut at = cursor.op(from, first_op, "scan")?;
        if seek == Seek::AtOrAfter && reverse {
            // Reverse from `from` (exclusive upper bound handled by caller):
            // SET_RANGE lands on the first key >= from; step back once.
            let back = if at.is_some() {
                ffi::MDB_PREV
            } else {
                ffi::MDB_LAST
            };
            at = cursor.op(&[], back, "scan")?;
        }
        let Some((key, val)) = at else {
            return Ok(());
        };
        if !f(key, val) {
            return Ok(());
        }
        // The steps after the first, a run at a time under one guard.
        const RUN: usize = 64;
        let mut keys = [guard::empty_val(); RUN];
        let mut vals = [guard::empty_val(); RUN];
        loop {
            let got = cursor.run(step, &mut keys, &mut vals, "scan")?;
            for (k, v) in keys[..got].iter().zip(&vals[..got]) {
                // SAFETY: filled by mdb_cursor_get inside the transaction.
                if !f(unsafe { guard::slice(k) }, unsafe { guard::slice(v) }) {
                    return Ok(());
                }
            }
            if got < RUN {
                return Ok(());
            }
        }
    }
}

/// An open cursor of a read transaction; closed on drop, which the borrow
/// of the transaction puts before the transaction ends.
struct Cursor<'t> {
    raw: *mut ffi::MDB_cursor,
    env: &'t Env,
    /// The transaction, told of damage (see `guard.rs`).
    txn: &'t ReadTxn<'t>,
}

/// A key and its value, both inside the map.
type Entry<'t> = (&'t [u8], &'t [u8]);

impl<'t> Cursor<'t> {
    /// Up to `keys.len()` steps of `op`; how many were made (fewer: the
    /// keys ran out).
    fn run(
        &self,
        op: ffi::MDB_cursor_op,
        keys: &mut [ffi::MDB_val],
        vals: &mut [ffi::MDB_val],
        what: &str,
    ) -> Result<usize> {
        let mut map = self.txn.map.get();
        // SAFETY: the cursor is open on a live read txn, whose map `map`
        // describes; the arrays are of one length.
        let found = unsafe {
            guard::cursor_run(self.raw, op, keys, vals, &mut map, || self.env.what(what))
        };
        self.txn.found_map(map);
        let (got, rc) = found.inspect_err(|e| self.txn.met(e))?;
        match rc {
            0 => Ok(got),
            rc => Err(self.txn.failed(rc, what)),
        }
    }

    /// Lookups of keys in ascending order from where `state` stands (see
    /// [`Ascending`]); `found[i]` is `keys[i]`'s value or has a null
    /// pointer. After an error the state is reset (the cursor is searched
    /// again from scratch).
    fn seek(
        &self,
        state: &mut guard::Seek,
        keys: &[ffi::MDB_val],
        found: &mut [ffi::MDB_val],
        what: &str,
    ) -> Result<()> {
        let mut map = self.txn.map.get();
        let table = self.txn.table.borrow();
        // SAFETY: the cursor is open on a live read txn, on the table
        // `table` names, whose map `map` describes; only this cursor moves
        // by `state` (both belong to one `Ascending`); the keys point to the
        // caller's live slices; the arrays are of one length.
        let result = unsafe {
            guard::seek(
                self.raw,
                table.as_deref().map(str::as_bytes),
                state,
                keys,
                found,
                &mut map,
                || self.env.what(what),
            )
        };
        match result {
            Ok(0) => {
                self.txn.found_map(map);
                Ok(())
            }
            Ok(rc) => {
                *state = guard::Seek::unset();
                self.txn.found_map(map);
                Err(self.txn.failed(rc, what))
            }
            Err(e) => {
                *state = guard::Seek::unset();
                self.txn.found_map(map);
                self.txn.met(&e);
                Err(e)
            }
        }
    }

    /// One cursor operation; `Ok(None)` when LMDB finds nothing.
    fn op(&self, key: &[u8], op: ffi::MDB_cursor_op, what: &str) -> Result<Option<Entry<'t>>> {
        let mut k = guard::val(key);
        let mut v = ffi::MDB_val {
            mv_size: 0,
            mv_data: ptr::null_mut(),
        };
        let mut map = self.txn.map.get();
        let table = self.txn.table.borrow();
        // SAFETY: the cursor is open on a live txn, on the table `table`
        // names, whose map `map` describes; `k` points to `key`, which LMDB
        // only reads before replacing `k` by the key it found.
        let rc = unsafe {
            guard::cursor_get(
                self.raw,
                &mut k,
                &mut v,
                op,
                table.as_deref().map(str::as_bytes),
                Some(&mut map),
                || self.env.what(what),
            )
        };
        self.txn.found_map(map);
        let rc = rc.inspect_err(|e| self.txn.met(e))?;
        match rc {
            // SAFETY: filled by mdb_cursor_get inside the transaction.
            0 => Ok(Some(unsafe { (guard::slice(&k), guard::slice(&v)) })),
            ffi::MDB_NOTFOUND => Ok(None),
            rc => Err(self.txn.failed(rc, what)),
        }
    }
}

impl Drop for Cursor<'_> {
    fn drop(&mut self) {
        // SAFETY: opened by `ReadTxn::cursor` and closed once; the borrow of
        // the transaction keeps the transaction alive until now.
        unsafe { ffi::mdb_cursor_close(self.raw) }
    }
}

/// Point lookups of keys in ascending order through one cursor.
///
/// The cursor stands on the first stored key at or after the last key asked
/// for. The next key is then often settled without a search: it is the key
/// the cursor stands on, or the one right after it, or, sorting between
/// those two, it is not stored. Only a key further on costs a search, which
/// LMDB starts from the page the cursor is on. Sorted keys that share pages
/// read each page once. The walk itself is `guard.c`'s (`los_seek`), a
/// chunk of keys per guarded call.
pub struct Ascending<'t> {
    cursor: Cursor<'t>,
    state: guard::Seek,
}

/// Keys looked up per guarded call by [`Ascending::get_each`].
const SEEK_CHUNK: usize = 128;

impl<'t> Ascending<'t> {
    /// The stored bytes of `key`, which must not sort before the key of the
    /// previous call. The slice lives as long as the transaction.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<&'t [u8]>> {
        let mut found = None;
        self.get_each([key], |_, value| found = value)?;
        Ok(found)
    }

    /// The stored bytes of each of `keys`, given in ascending order (none
    /// before the key of the previous call): `f(i, value)` for the `i`th
    /// key, in order. The slices live as long as the transaction.
    pub fn get_each<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k [u8]>,
        mut f: impl FnMut(usize, Option<&'t [u8]>),
    ) -> Result<()> {
        let mut want = [guard::empty_val(); SEEK_CHUNK];
        let mut found = [guard::empty_val(); SEEK_CHUNK];
        let mut keys = keys.into_iter();
        let mut done = 0;
        loop {
            let mut n = 0;
            for key in keys.by_ref().take(SEEK_CHUNK) {
                want[n] = guard::val(key);
                n += 1;
            }
            if n == 0 {
                return Ok(());
            }
            self.cursor
                .seek(&mut self.state, &want[..n], &mut found[..n], "read")?;
            for (i, v) in found[..n].iter().enumerate() {
                // SAFETY: a value `los_seek` found lies in the map of this
                // live transaction (checked); a key not stored has a null
                // pointer.
                f(
                    done + i,
                    (!v.mv_data.is_null()).then(|| unsafe { guard::slice(v) }),
                );
            }
            done += n;
            if n < SEEK_CHUNK {
                return Ok(());
            }
        }
    }
}

impl Drop for ReadTxn<'_> {
    fn drop(&mut self) {
        if self.env.generation != fork_generation() {
            // In a child that fork() made while this read was under way.
            // LMDB's rule: a transaction is never used after fork(), and
            // resetting or aborting it here would clear the parent's reader
            // slot in the shared lock file, letting writers reuse the pages
            // the parent is reading. Leak it, and the gate hold (the gate's
            // state is a copy nobody here uses again).
            return;
        }
        if self.pinned.get() {
            // Leave the transaction open, and pin the gate before the shared
            // hold goes, so an exclusive waiter that wakes sees the pin.
            self.guard.pin();
            // SAFETY: dropped once, here; `guard` is not used after.
            unsafe { ManuallyDrop::drop(&mut self.guard) };
            return;
        }
        if self.damaged.get() {
            // A read met a damaged page and jumped out of LMDB (guard.rs):
            // end the transaction rather than renew it later.
            // SAFETY: a live read txn we own; a read transaction holds no
            // lock, and the jump left only LMDB's stack cursor behind.
            unsafe { ffi::mdb_txn_abort(self.txn) };
            // SAFETY: dropped once, here, after the transaction ended.
            unsafe { ManuallyDrop::drop(&mut self.guard) };
            return;
        }
        // SAFETY: `txn` is a live read txn we own, in the process that
        // began it (a forked child returned above, as LMDB's no-fork rule
        // requires); reset ends its snapshot and keeps its reader slot for
        // reuse; abort frees both.
        unsafe { ffi::mdb_txn_reset(self.txn) };
        let mut pool = self.env.pool.lock();
        if pool.len() < POOL_MAX {
            pool.push(RawTxn(self.txn));
            // Before the gate goes: its release may run work put off until
            // now (a close), which takes the pool lock.
            drop(pool);
        } else {
            drop(pool);
            // SAFETY: reset txn of an open env (the gate is still held).
            unsafe { ffi::mdb_txn_abort(self.txn) };
        }
        // SAFETY: dropped once, here, after the transaction ended.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
    }
}

/// LMDB's version, as (major, minor, patch).
pub fn lmdb_version() -> (i32, i32, i32) {
    let (mut a, mut b, mut c) = (0, 0, 0);
    // SAFETY: mdb_version only writes the three ints.
    unsafe { ffi::mdb_version(&mut a, &mut b, &mut c) };
    (a, b, c)
}

/// The longest key this LMDB build accepts.
pub fn max_key_size() -> usize {
    let mut env: *mut ffi::MDB_env = ptr::null_mut();
    // SAFETY: create/inspect/close an unopened env handle.
    unsafe {
        if ffi::mdb_env_create(&mut env) != 0 {
            return crate::MAX_KEY_SIZE;
        }
        let n = ffi::mdb_env_get_maxkeysize(env);
        ffi::mdb_env_close(env);
        n as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Makes the reopen after a failed resize fail, on this thread.
        pub static FAIL_REOPEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("los-engine-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    fn put_all(env: &Env, items: &[(Vec<u8>, Vec<u8>)], cap: Option<usize>) -> Result<()> {
        let _writer = env.lock_writer()?;
        env.write_locked(cap, &mut |txn, db| {
            for (k, v) in items {
                txn.put(db, k, v, lmdb::WriteFlags::empty())?;
            }
            Ok(())
        })
    }

    fn read(env: &Env, key: &[u8]) -> Option<Vec<u8>> {
        let g = env.gate.try_shared().unwrap();
        let txn = env.begin_read(g).unwrap().unwrap();
        txn.get(key).unwrap().map(|v| v.to_vec())
    }

    #[test]
    fn a_commit_with_no_memory_for_its_lists_fails_and_changes_nothing() {
        let p = tmp("commit-no-memory");
        let env = Env::acquire(&p, &EnvOptions::default()).unwrap();
        put_all(&env, &[(b"old".to_vec(), b"1".to_vec())], None).unwrap();
        let items: Vec<(Vec<u8>, Vec<u8>)> = (0..50_000u32)
            .map(|i| (format!("k{i:06}").into_bytes(), i.to_le_bytes().to_vec()))
            .collect();
        let mut batch = Batch::default();
        for (k, v) in &items {
            batch.insert(k, Some(Arc::new(v.clone())));
        }
        let ops =
            Sorted::last_write_wins(items.iter().map(|(k, v)| (&k[..], Some(&v[..]))).collect());
        // Each list a commit of 50,000 keys makes is over 64 KiB: the
        // batch's sorted list, the keys it checks, the arrays LMDB reads.
        let limit = 64 << 10;
        let sorted = crate::test_alloc::failing_above(limit, || env.sorted(&batch).map(drop));
        assert!(
            matches!(
                sorted,
                Err(Error::Lmdb {
                    code: libc::ENOMEM,
                    ..
                })
            ),
            "{sorted:?}"
        );
        let commit = crate::test_alloc::failing_above(limit, || env.commit(&ops, 0, None));
        assert!(
            matches!(
                commit,
                Err(Error::Lmdb {
                    code: libc::ENOMEM,
                    ..
                })
            ),
            "{commit:?}"
        );
        assert_eq!(read(&env, b"k000000"), None);
        assert_eq!(read(&env, b"old"), Some(b"1".to_vec()));
        // The same commit with the memory to make it.
        env.commit(&env.sorted(&batch).unwrap(), 0, None).unwrap();
        assert_eq!(
            read(&env, b"k049999"),
            Some(49_999u32.to_le_bytes().to_vec())
        );
        env.release().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn version_and_key_size() {
        assert_eq!(lmdb_version(), (0, 9, 24));
        assert_eq!(max_key_size(), crate::MAX_KEY_SIZE);
    }

    #[test]
    fn growth_steps() {
        assert_eq!(next_map_size(1 << 20, None), Some((1 << 20) + GROWTH_STEP));
        assert_eq!(next_map_size(1 << 30, None), Some(2 << 30));
        assert_eq!(next_map_size(1 << 20, Some(2 << 20)), Some(2 << 20));
        assert_eq!(next_map_size(2 << 20, Some(2 << 20)), None);
    }

    #[test]
    fn grows_from_one_mib_and_stops_at_cap() {
        let p = tmp("grow");
        let opts = EnvOptions {
            map_size: 1 << 20,
            ..EnvOptions::default()
        };
        let env = Env::open(&p, &opts).unwrap();
        let items: Vec<_> = (0..2000u32)
            .map(|i| (format!("k{i:06}").into_bytes(), vec![7u8; 1000]))
            .collect();
        put_all(&env, &items, None).unwrap();
        let grown = env.take_growths();
        assert!(!grown.is_empty());
        assert_eq!(grown[0].from, 1 << 20);
        assert!(env.take_growths().is_empty(), "taken once");
        assert_eq!(read(&env, b"k001999").unwrap(), vec![7u8; 1000]);

        let big: Vec<_> = (0..100u32)
            .map(|i| (format!("big{i}").into_bytes(), vec![1u8; 1 << 20]))
            .collect();
        let info = env.info_shared(&env.gate.try_shared().unwrap()).unwrap();
        let err = put_all(&env, &big, Some(info.map_size)).unwrap_err();
        assert!(matches!(err, Error::MapFull { .. }));
        assert_eq!(read(&env, b"big0"), None, "a failed write leaves nothing");
        env.close().unwrap();
        assert!(env.is_closed());
        let _ = std::fs::remove_dir_all(&p);
    }

    fn resize(env: &Env, size: usize) -> Result<()> {
        let _writer = env.lock_writer()?;
        let x = env.gate.exclusive("test")?;
        env.resize_locked(&x, Some(size), "grow the map")
    }

    fn some_items(prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..500u32)
            .map(|i| (format!("{prefix}{i:06}").into_bytes(), vec![3u8; 500]))
            .collect()
    }

    #[test]
    fn a_map_that_cannot_be_had_is_reopened_at_the_old_size() {
        let p = tmp("resize-fails");
        let opts = EnvOptions {
            map_size: 1 << 20,
            ..EnvOptions::default()
        };
        let env = Env::open(&p, &opts).unwrap();
        put_all(&env, &some_items("a"), None).unwrap();
        let before = env.map_size.load(Ordering::Relaxed);
        // No process can map 4 EiB: LMDB unmaps the old map, then fails
        // (ENOMEM from the kernel; EINVAL under valgrind).
        let err = resize(&env, 1 << 62).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Lmdb {
                    code: libc::ENOMEM | libc::EINVAL,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(env.map_size.load(Ordering::Relaxed), before);
        assert_eq!(read(&env, b"a000499"), Some(vec![3u8; 500]));
        put_all(&env, &some_items("b"), None).unwrap();
        assert_eq!(read(&env, b"b000499"), Some(vec![3u8; 500]));
        env.close().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn a_writemap_file_that_cannot_grow_leaves_the_map_alone() {
        let p = tmp("resize-kept");
        let opts = EnvOptions {
            map_size: 1 << 20,
            writemap: true,
            ..EnvOptions::default()
        };
        let env = Env::open(&p, &opts).unwrap();
        put_all(&env, &some_items("a"), None).unwrap();
        let len = std::fs::metadata(p.join("data.mdb")).unwrap().len();
        // No file system holds a 4 EiB file: the extension fails before
        // LMDB is asked for anything.
        let err = resize(&env, 1 << 62).unwrap_err();
        assert!(matches!(err, Error::Lmdb { .. }), "{err:?}");
        assert_eq!(std::fs::metadata(p.join("data.mdb")).unwrap().len(), len);
        assert_eq!(env.map_size.load(Ordering::Relaxed), 1 << 20);
        assert_eq!(read(&env, b"a000499"), Some(vec![3u8; 500]));
        put_all(&env, &some_items("b"), None).unwrap();
        env.close().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn a_map_that_cannot_be_restored_refuses_every_call() {
        let p = tmp("resize-lost");
        let env = Env::open(&p, &EnvOptions::default()).unwrap();
        put_all(&env, &some_items("a"), None).unwrap();
        FAIL_REOPEN.with(|f| f.set(true));
        let err = resize(&env, 1 << 62).unwrap_err();
        FAIL_REOPEN.with(|f| f.set(false));
        let Error::Unusable(text) = err else {
            panic!("{err:?}")
        };
        assert!(text.contains(&p.display().to_string()), "{text}");
        assert!(text.contains("open it again"), "{text}");
        let g = env.gate.try_shared().unwrap();
        assert!(matches!(env.begin_read(g), Err(Error::Unusable(_))));
        assert!(matches!(
            put_all(&env, &some_items("b"), None),
            Err(Error::Unusable(_))
        ));
        assert!(matches!(resize(&env, 1 << 30), Err(Error::Unusable(_))));
        env.close().unwrap();
        // The file is intact: a new environment reads it.
        let again = Env::open(&p, &EnvOptions::default()).unwrap();
        assert_eq!(read(&again, b"a000499"), Some(vec![3u8; 500]));
        again.close().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn a_closing_environment_is_taken_up_again_not_opened_twice() {
        let p = tmp("revive");
        let opts = EnvOptions::default();
        let env = Env::acquire(&p, &opts).unwrap();
        let read = env.gate.try_shared().unwrap();
        // The last release inside a read of the environment puts the close off.
        env.release().unwrap();
        assert!(!env.is_closed());
        let again = Env::acquire(&p, &opts).unwrap();
        assert!(Arc::ptr_eq(&env, &again), "one environment per file");
        drop(read);
        assert!(
            !env.is_closed(),
            "taken up again: the put-off close leaves it open"
        );
        again.release().unwrap();
        assert!(env.is_closed());
        let fresh = Env::acquire(&p, &opts).unwrap();
        assert!(
            !Arc::ptr_eq(&fresh, &env),
            "closed and gone from the registry"
        );
        fresh.release().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    fn commit<'a>(env: &Env, ops: &[(&'a [u8], Option<&'a [u8]>)]) -> Result<()> {
        env.commit(&Sorted::last_write_wins(ops.to_vec()), 0, None)
    }

    #[test]
    fn batches_committed_together_end_with_the_newest_write() {
        let p = tmp("batches");
        let env = Env::open(&p, &EnvOptions::default()).unwrap();
        commit(&env, &[(b"m", Some(b"0")), (b"q", Some(b"0"))]).unwrap();
        let older = Sorted::last_write_wins(vec![
            (&b"a"[..], Some(&b"1"[..])),
            (b"m", None),
            (b"q", Some(b"1")),
            (b"z", Some(b"1")),
        ]);
        let newer = Sorted::last_write_wins(vec![
            (&b"a"[..], None),
            (b"m", Some(b"2")),
            (b"r", Some(b"2")),
            (b"z", Some(b"2")),
        ]);
        env.commit_all_in(&crate::Table::main(), &[older, newer], 0, None)
            .unwrap();
        assert_eq!(read(&env, b"a"), None);
        assert_eq!(read(&env, b"m"), Some(b"2".to_vec()));
        assert_eq!(read(&env, b"q"), Some(b"1".to_vec()));
        assert_eq!(read(&env, b"r"), Some(b"2".to_vec()));
        assert_eq!(read(&env, b"z"), Some(b"2".to_vec()));
        env.close().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn commit_clear_and_remove_if() {
        let p = tmp("ops");
        let env = Env::open(&p, &EnvOptions::default()).unwrap();
        commit(&env, &[(b"b", Some(b"1")), (b"d", Some(b"2"))]).unwrap();
        // Before the last key, past it (appended), a deletion past it, and
        // a key written twice: the last write wins.
        commit(
            &env,
            &[
                (b"z", Some(b"old")),
                (b"a", Some(b"3")),
                (b"b", None),
                (b"y", None),
                (b"z", Some(b"new")),
            ],
        )
        .unwrap();
        assert_eq!(read(&env, b"a"), Some(b"3".to_vec()));
        assert_eq!(read(&env, b"b"), None);
        assert_eq!(read(&env, b"d"), Some(b"2".to_vec()));
        assert_eq!(read(&env, b"z"), Some(b"new".to_vec()));
        assert!(!env.remove_if(b"d", b"other", None).unwrap());
        assert!(!env.remove_if(b"missing", b"2", None).unwrap());
        assert!(env.remove_if(b"d", b"2", None).unwrap());
        assert_eq!(read(&env, b"d"), None);
        env.clear(None).unwrap();
        assert_eq!(read(&env, b"a"), None);
        env.close().unwrap();
        let _ = std::fs::remove_dir_all(&p);
    }

    /// The page number of the last leaf of the main tree in `file` (LMDB's
    /// layout: see guard.c): from the newest meta page's root, down the last
    /// child of each branch page.
    fn last_leaf(file: &[u8], psize: usize) -> usize {
        let u16_at = |at: usize| u16::from_le_bytes([file[at], file[at + 1]]) as usize;
        let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().unwrap()) as usize;
        let meta = if u64_at(144) >= u64_at(psize + 144) {
            0
        } else {
            psize
        };
        let mut pgno = u64_at(meta + 128);
        loop {
            let page = pgno * psize;
            if u16_at(page + 10) & 0x02 != 0 {
                return pgno;
            }
            let last = (u16_at(page + 12) - 16) / 2 - 1;
            let node = page + u16_at(page + 16 + 2 * last);
            pgno = u16_at(node) | u16_at(node + 2) << 16 | u16_at(node + 4) << 32;
        }
    }

    /// A store at `tmp(name)` of 3,000 keys `k00000`.. whose last leaf page
    /// was damaged after it was written: the bounds of its free space, by
    /// which LMDB copies a page it changes, point past the page. Returns
    /// the store's path, its data file's path and the damaged file's bytes.
    fn damaged_store(name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        // The free space's bounds, swapped.
        damaged_last_leaf(name, 12, &[0xF0, 0xFF, 0x10, 0x00])
    }

    /// A store of 3,000 keys whose last leaf has `bytes` at `at`.
    fn damaged_last_leaf(name: &str, at: usize, bytes: &[u8]) -> (PathBuf, PathBuf, Vec<u8>) {
        let p = tmp(name);
        let items: Vec<_> = (0..3000u32)
            .map(|i| (format!("k{i:05}").into_bytes(), vec![b'v'; 40]))
            .collect();
        let env = Env::open(&p, &EnvOptions::default()).unwrap();
        put_all(&env, &items, None).unwrap();
        let psize = env.page_size;
        env.close().unwrap();
        let data = p.join("data.mdb");
        let mut file = std::fs::read(&data).unwrap();
        let leaf = last_leaf(&file, psize) * psize;
        file[leaf + at..leaf + at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(&data, &file).unwrap();
        (p, data, file)
    }

    #[test]
    fn a_damaged_leaf_is_an_error_and_refuses_writes() {
        let (p, data, file) = damaged_store("damaged-leaf");
        let env = Env::open(&p, &EnvOptions::default()).unwrap();
        // A key on another page reads; the last one meets the damage.
        assert_eq!(read(&env, b"k00000"), Some(vec![b'v'; 40]));
        let g = env.gate.try_shared().unwrap();
        let txn = env.begin_read(g).unwrap().unwrap();
        let err = txn.get(b"k02999").unwrap_err();
        assert!(matches!(err, Error::Damaged { .. }), "{err}");
        drop(txn);
        // Writes are refused from then on, and the file is left as it was.
        let err = put_all(&env, &[(b"k00001".to_vec(), b"new".to_vec())], None).unwrap_err();
        assert!(err.to_string().contains("writes no more"), "{err}");
        env.close().unwrap();
        assert_eq!(std::fs::read(&data).unwrap(), file);
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn a_search_never_enters_a_page_that_is_not_whole() {
        // Every kind of page at once, and a lower bound inside the header:
        // LMDB's binary search over the 2^31 nodes that gives goes round
        // forever. Each read below is the first of its environment (the map
        // is found before any page is read).
        let (p, _, _) = damaged_last_leaf("damaged-search", 10, &[0x76, 0x77, 0x08, 0x00]);
        for read in 0..3 {
            let env = Env::open(&p, &EnvOptions::default()).unwrap();
            let g = env.gate.try_shared().unwrap();
            let txn = env.begin_read(g).unwrap().unwrap();
            let err = match read {
                0 => txn.get(b"k02999").map(drop),
                1 => txn.ascending().and_then(|mut a| a.get(b"k02999").map(drop)),
                _ => txn.scan(Seek::AtOrAfter, b"k02999", false, |_, _| false),
            }
            .unwrap_err();
            assert!(matches!(err, Error::Damaged { .. }), "{read}: {err}");
            drop(txn);
            env.close().unwrap();
        }
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn a_write_checks_the_pages_it_would_change() {
        let (p, data, file) = damaged_store("damaged-write");
        // No read of the page first: the commit finds it before LMDB copies
        // it, and nothing is written.
        let env = Env::open(&p, &EnvOptions::default()).unwrap();
        let ops: Vec<Op<'_>> = vec![(b"k02999", Some(b"new"))];
        let err = env
            .commit(&Sorted::last_write_wins(ops), 64, None)
            .unwrap_err();
        assert!(matches!(err, Error::Damaged { .. }), "{err}");
        env.close().unwrap();
        assert_eq!(std::fs::read(&data).unwrap(), file);
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn scan_orders() {
        let p = tmp("scan");
        let env = Env::open(&p, &EnvOptions::default()).unwrap();
        let items: Vec<_> = [b"a", b"b", b"c", b"d"]
            .iter()
            .map(|k| (k.to_vec(), k.to_vec()))
            .collect();
        put_all(&env, &items, None).unwrap();
        let collect = |seek, from: &[u8], reverse| {
            let g = env.gate.try_shared().unwrap();
            let txn = env.begin_read(g).unwrap().unwrap();
            let mut out = Vec::new();
            txn.scan(seek, from, reverse, |k, _| {
                out.push(k.to_vec());
                true
            })
            .unwrap();
            out
        };
        assert_eq!(collect(Seek::First, b"", false).len(), 4);
        assert_eq!(
            collect(Seek::AtOrAfter, b"bb", false),
            vec![b"c".to_vec(), b"d".to_vec()]
        );
        assert_eq!(
            collect(Seek::AtOrAfter, b"c", true),
            vec![b"b".to_vec(), b"a".to_vec()]
        );
        assert_eq!(collect(Seek::Last, b"", true)[0], b"d".to_vec());
        let _ = std::fs::remove_dir_all(&p);
    }

    /// `guard.c` looks keys up itself (not through `mdb_get`) in a read
    /// transaction: its answers are LMDB's, for keys stored and not, in a
    /// tree three levels deep, with empty values and values in overflow
    /// pages, in the main table and in a named one (whose root it finds by
    /// the table's record); it is what answers every key LMDB can hold once
    /// the map is found, and leaves the rest to LMDB.
    #[test]
    fn own_lookups_match_lmdb() {
        let items: Vec<(Vec<u8>, Vec<u8>)> = (0..30_000u32)
            .map(|i| {
                let mut key = format!("{:08}", 2 * i).into_bytes();
                key.extend(std::iter::repeat_n(b'x', i as usize % 40));
                let len = match i % 97 {
                    0 => 5000,
                    1 => 0,
                    _ => i as usize % 50,
                };
                (key, vec![i as u8; len])
            })
            .collect();
        let mut longest = b"99999999".to_vec();
        longest.resize(511, b'y');
        let mut items = items;
        items.push((longest.clone(), b"longest".to_vec()));
        let mut probes: Vec<Vec<u8>> = items.iter().map(|(k, _)| k.clone()).collect();
        for (k, _) in items.iter().step_by(7) {
            probes.push(k[..8].to_vec()); // a prefix (stored when nothing follows)
            let mut longer = k.clone();
            longer.push(0);
            probes.push(longer);
        }
        for i in (1..60_000u32).step_by(13) {
            probes.push(format!("{i:08}").into_bytes()); // odd ones are not stored
        }
        probes.extend([&b"0"[..], b"\0", b"\xff\xff", b"99999999", b"tables"].map(Vec::from));
        let mut past = longest.clone();
        *past.last_mut().unwrap() = b'z';
        probes.push(past);

        let p = tmp("own-lookup");
        let env = Env::open(&p, &EnvOptions::default()).unwrap();
        put_all(&env, &items, None).unwrap();
        own_lookups_agree(&env, &Table::main(), &items, &probes);
        drop(env);
        let _ = std::fs::remove_dir_all(&p);

        // Named tables: the records sit in the main tree beside each other,
        // and the same keys in another table hold other values.
        let p = tmp("own-lookup-tables");
        let env = Env::open(&p, &EnvOptions::default()).unwrap();
        let other = env.open_table("tables", true).unwrap();
        let table = env.open_table("tables2", true).unwrap();
        let ops = Sorted::last_write_wins(
            items
                .iter()
                .step_by(3)
                .map(|(k, _)| (&k[..], Some(&b"other"[..])))
                .collect(),
        );
        env.commit_in(&other, &ops, 0, None).unwrap();
        let ops =
            Sorted::last_write_wins(items.iter().map(|(k, v)| (&k[..], Some(&v[..]))).collect());
        env.commit_in(&table, &ops, 0, None).unwrap();
        own_lookups_agree(&env, &table, &items, &probes);
        drop(env);
        let _ = std::fs::remove_dir_all(&p);
    }

    fn own_lookups_agree(
        env: &Env,
        table: &Table,
        items: &[(Vec<u8>, Vec<u8>)],
        probes: &[Vec<u8>],
    ) {
        env.find_map();
        let g = env.gate.try_shared().unwrap();
        let txn = env.begin_read(g).unwrap().unwrap();
        txn.set_table(table).unwrap();
        let mut map = txn.map.get();
        assert_ne!(map.base, 0, "the map was found");
        let dbi = txn.dbi.get();
        let name = table.named.as_ref().map(|n| n.name.as_bytes());
        let mut found = 0;
        for key in probes {
            let mut k = guard::val(key);
            let mut v = guard::empty_val();
            // SAFETY: a live read txn and one of its tables, and a healthy
            // file.
            let rc = unsafe { ffi::mdb_get(txn.txn, dbi, &mut k, &mut v) };
            let lmdb = (rc == 0).then(|| {
                // SAFETY: LMDB's answer, valid while the txn lives.
                unsafe { std::slice::from_raw_parts(v.mv_data as *const u8, v.mv_size) }
            });
            assert!(rc == 0 || rc == ffi::MDB_NOTFOUND, "rc {rc}");
            let mut k = guard::val(key);
            let mut v = guard::empty_val();
            // SAFETY: as above; `map` is this transaction's, `name` the
            // table's.
            let mine =
                unsafe { guard::own_get(txn.txn, dbi, name, &mut k, &mut v, &mut map) }.unwrap();
            assert_eq!(mine, Some(rc), "key {:?}", String::from_utf8_lossy(key));
            if rc == 0 {
                // SAFETY: as above.
                let got = unsafe { std::slice::from_raw_parts(v.mv_data as *const u8, v.mv_size) };
                assert_eq!(Some(got), lmdb);
                found += 1;
            }
            assert_eq!(txn.get(key).unwrap(), lmdb);
        }
        let stored: std::collections::HashSet<&[u8]> = items.iter().map(|(k, _)| &k[..]).collect();
        assert_eq!(
            found,
            probes.iter().filter(|k| stored.contains(&k[..])).count()
        );
        assert!(found > items.len() && found < probes.len());
        // Keys LMDB cannot hold, a table named wrongly or not at all: LMDB's
        // to answer.
        let mut ask = |key: &[u8], dbi, name: Option<&[u8]>| {
            let mut k = guard::val(key);
            let mut v = guard::empty_val();
            // SAFETY: as above; the lookup leaves these to LMDB before any
            // use of the table number.
            unsafe { guard::own_get(txn.txn, dbi, name, &mut k, &mut v, &mut map) }.unwrap()
        };
        assert_eq!(ask(b"", dbi, name), None);
        assert_eq!(ask(&[b'9'; 512], dbi, name), None);
        let wrong = if name.is_some() {
            None
        } else {
            Some(&b"tables"[..])
        };
        assert_eq!(ask(b"00000000", dbi, wrong), None);
        if name.is_some() {
            // A name that is no table's record.
            assert_eq!(ask(b"00000000", dbi, Some(b"00000000")), None);
        }
    }

    #[test]
    fn ascending_lookups_match_exact_ones() {
        let p = tmp("ascending");
        let env = Env::open(&p, &EnvOptions::default()).unwrap();
        // Every third key of 0..3000, over many pages; some values overflow.
        let items: Vec<_> = (0..3000u32)
            .step_by(3)
            .map(|i| {
                (
                    format!("{i:05}").into_bytes(),
                    vec![i as u8; (i as usize % 7) * 700],
                )
            })
            .collect();
        put_all(&env, &items, None).unwrap();
        let mut wanted: Vec<Vec<u8>> = (0..3100u32)
            .step_by(2)
            .map(|i| format!("{i:05}").into_bytes())
            .collect();
        // Prefixes, extensions, repeats and keys LMDB cannot hold.
        wanted.extend([&b""[..], b"0", b"00300", b"003000", b"00300\0", b"99999"].map(Vec::from));
        wanted.push(vec![b'9'; 600]);
        wanted.sort();
        let g = env.gate.try_shared().unwrap();
        let txn = env.begin_read(g).unwrap().unwrap();
        let mut walk = txn.ascending().unwrap();
        let mut hits = 0;
        for k in &wanted {
            let got = walk.get(k).unwrap();
            assert_eq!(
                got,
                txn.get(k).unwrap(),
                "key {:?}",
                String::from_utf8_lossy(k)
            );
            hits += usize::from(got.is_some());
        }
        assert_eq!(hits, 500 + 1, "multiples of 6, and 00300 twice");
        drop(walk);
        // In chunks, all at once and sparse (searches rather than steps).
        for step in [1, 37] {
            let some: Vec<&[u8]> = wanted.iter().step_by(step).map(|k| &k[..]).collect();
            let mut walk = txn.ascending().unwrap();
            let mut seen = 0;
            walk.get_each(some.iter().copied(), |i, got| {
                assert_eq!(i, seen);
                seen += 1;
                assert_eq!(got, txn.get(some[i]).unwrap(), "key {i} of every {step}");
            })
            .unwrap();
            assert_eq!(seen, some.len());
        }
        drop(txn);
        let _ = std::fs::remove_dir_all(&p);
    }
}
