//! LMDB environments, transactions, growth and the map gate. No PyO3 here.
//!
//! The rules this file enforces (the project's spine):
//! - No Python code runs while a write transaction is open: `Env::write`
//!   takes a closure of plain Rust over byte slices.
//! - LMDB memory is reachable only while the map gate is held shared; growth
//!   and close take it exclusively, so `mdb_env_set_mapsize` never unmaps
//!   memory that a read is using.
//! - Transactions begin and end inside one call; nothing keeps one open
//!   across calls except reset (inactive) read transactions in a pool, which
//!   hold a reader slot but no snapshot.

use std::cell::UnsafeCell;
use std::os::raw::{c_int, c_uint};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use lmdb::{Database, Environment, EnvironmentFlags, RwTransaction, Transaction};
use lmdb_sys as ffi;
use parking_lot::{Mutex, MutexGuard};

use crate::errors::{Result, StoreError};
use crate::gate::{ExclusiveGuard, Gate, SharedGuard};

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
    dbi: ffi::MDB_dbi,
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
}

// SAFETY: every access to `lmdb` follows the gate protocol above, the raw
// transactions are guarded by the pool mutex, and LMDB's environment handle is
// itself thread-safe for these uses (MDB_NOTLS; one writer via write_lock).
unsafe impl Sync for Env {}
// SAFETY: as above; nothing in Env is tied to the creating thread.
unsafe impl Send for Env {}

/// What failed while opening, with the errno (> 0), LMDB code (< 0), or 0
/// for a refusal of our own.
#[derive(Debug)]
pub struct OpenError {
    pub code: c_int,
    pub what: String,
}

fn open_err(code: c_int, what: impl Into<String>) -> OpenError {
    OpenError {
        code,
        what: what.into(),
    }
}

fn io_code(e: &std::io::Error) -> c_int {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Env {
    pub fn open(path: &Path, options: &EnvOptions) -> std::result::Result<Env, OpenError> {
        let shown = path.display();
        match std::fs::metadata(path) {
            Ok(md) => {
                if options.subdir && !md.is_dir() {
                    return Err(open_err(
                        libc::ENOTDIR,
                        format!("cannot open {shown}: not a directory (subdir=True wants a directory; pass subdir=False for a single file)"),
                    ));
                }
                if !options.subdir && md.is_dir() {
                    return Err(open_err(
                        libc::EISDIR,
                        format!(
                            "cannot open {shown}: it is a directory and subdir=False wants a file"
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !options.create || options.readonly {
                    return Err(open_err(
                        libc::ENOENT,
                        format!("cannot open {shown}: it does not exist (create=False or readonly=True)"),
                    ));
                }
                if options.subdir {
                    use std::os::unix::fs::DirBuilderExt;
                    let mut dir = std::fs::DirBuilder::new();
                    dir.mode(options.mode | 0o700);
                    if let Err(e) = dir.create(path) {
                        return Err(open_err(
                            io_code(&e),
                            format!("cannot create directory {shown}"),
                        ));
                    }
                }
            }
            Err(e) => return Err(open_err(io_code(&e), format!("cannot open {shown}"))),
        }
        let mut builder = Environment::new();
        builder
            .set_flags(options.flags())
            .set_max_readers(options.max_readers as c_uint)
            .set_map_size(options.map_size);
        let env = builder
            .open_with_permissions(path, options.mode)
            .map_err(|e| {
                open_err(
                    e.to_err_code(),
                    format!("cannot open LMDB environment at {shown}"),
                )
            })?;
        // Free the reader slots of processes that died holding them.
        let mut dead: c_int = 0;
        // SAFETY: env.env() is a live, open environment handle.
        unsafe { ffi::mdb_reader_check(env.env(), &mut dead) };
        let db = env.open_db(None).map_err(|e| {
            open_err(
                e.to_err_code(),
                format!("cannot open the main database of {shown}"),
            )
        })?;
        let file_id = data_file_id(path, options.subdir)
            .map_err(|e| open_err(io_code(&e), format!("cannot stat the data file of {shown}")))?;
        Ok(Env {
            dbi: db.dbi(),
            lmdb: UnsafeCell::new(Some(env)),
            gate: Gate::default(),
            write_lock: Mutex::new(()),
            pool: Mutex::new(Vec::new()),
            options: options.clone(),
            path: path.to_path_buf(),
            handles: Mutex::new(0),
            growths: Mutex::new(Vec::new()),
            generation: fork_generation(),
            file_id,
        })
    }

    /// Open `path`, or share the environment this process already has open
    /// on the same data file (LMDB forbids opening one file twice in a
    /// process). Reference-counted: pair with `release`. Call without the GIL.
    ///
    /// An environment stays registered until it is closed, so one whose last
    /// store was released but whose close waits for reads is taken up again
    /// here (its count goes from 0 to 1) rather than opened a second time.
    pub fn acquire(path: &Path, options: &EnvOptions) -> std::result::Result<Arc<Env>, OpenError> {
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

    fn check_compatible(&self, path: &Path, o: &EnvOptions) -> std::result::Result<(), OpenError> {
        let mine = &self.options;
        let clash = |what: String| {
            open_err(
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
        self.close_if_unused()
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
        unsafe { (*self.lmdb.get()).as_ref() }.ok_or(StoreError::Closed)
    }

    fn lmdb_exclusive<'a>(&'a self, _g: &ExclusiveGuard<'a>) -> Result<&'a Environment> {
        // SAFETY: the exclusive guard excludes every other access.
        unsafe { (*self.lmdb.get()).as_ref() }.ok_or(StoreError::Closed)
    }

    fn database(&self) -> Database {
        // SAFETY: `Database` is a plain dbi number; this one was opened at
        // `Env::open` and stays valid for the environment's life.
        unsafe { std::mem::transmute::<ffi::MDB_dbi, Database>(self.dbi) }
    }

    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        match self.gate.try_shared() {
            Some(g) => self.lmdb_shared(&g).is_err(),
            None => false,
        }
    }

    /// Lock the writer mutex. When this thread is inside a read (a nested
    /// call from unpickling), a writer that waits for the gate exclusively
    /// would wait for us forever: give up with `WouldDeadlock` then.
    pub fn lock_writer(&self) -> Result<MutexGuard<'_, ()>> {
        if !self.gate.held_by_current_thread() {
            return Ok(self.write_lock.lock());
        }
        loop {
            if let Some(g) = self.write_lock.try_lock_for(Duration::from_millis(2)) {
                return Ok(g);
            }
            if self.gate.exclusive_pending() {
                return Err(StoreError::WouldDeadlock("a write"));
            }
        }
    }

    /// Run `body` in one write transaction and commit it, growing the map on
    /// MDB_MAP_FULL (up to `cap`) and adopting another process's growth on
    /// MDB_MAP_RESIZED, replaying `body` from the start each time. Growths
    /// are recorded for `take_growths`. Call without the GIL: `body` must not
    /// touch Python.
    pub fn write<T>(
        &self,
        cap: Option<usize>,
        mut body: impl FnMut(&mut RwTransaction<'_>, Database) -> lmdb::Result<T>,
    ) -> Result<T> {
        let _writer = self.lock_writer()?;
        self.write_locked(cap, &mut body)
    }

    /// `write` for a caller that already holds `lock_writer()`.
    pub fn write_locked<T>(
        &self,
        cap: Option<usize>,
        body: &mut dyn FnMut(&mut RwTransaction<'_>, Database) -> lmdb::Result<T>,
    ) -> Result<T> {
        loop {
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
                    Err(e) => return Err(StoreError::from_lmdb(e, self.what("begin a write"))),
                };
                match body(&mut txn, self.database()) {
                    Ok(value) => match txn.commit() {
                        Ok(()) => return Ok(value),
                        Err(lmdb::Error::MapFull) => Next::Grow,
                        Err(lmdb::Error::MapResized) => Next::Adopt,
                        Err(e) => return Err(StoreError::from_lmdb(e, self.what("commit"))),
                    },
                    Err(lmdb::Error::MapFull) => Next::Grow,
                    Err(lmdb::Error::MapResized) => Next::Adopt,
                    Err(e) => return Err(StoreError::from_lmdb(e, self.what("write"))),
                }
                // `txn` is dropped (aborted) here, before the gate guard.
            };
            match next {
                Next::Grow => self.grow_locked(cap)?,
                Next::Adopt => self.adopt_locked()?,
            }
        }
    }

    fn what(&self, op: &str) -> String {
        format!("{op} in {}", self.path.display())
    }

    /// Grow the map one step and record it. Caller holds the write lock.
    fn grow_locked(&self, cap: Option<usize>) -> Result<()> {
        let x = self.gate.exclusive("growing the map")?;
        let env = self.lmdb_exclusive(&x)?;
        let from = env
            .info()
            .map_err(|e| StoreError::from_lmdb(e, self.what("read the map size")))?
            .map_size();
        let to = next_map_size(from, cap).ok_or(StoreError::MapFull {
            map_size: from,
            max_map_size: cap.unwrap_or(from),
        })?;
        env.set_map_size(to)
            .map_err(|e| StoreError::from_lmdb(e, self.what("grow the map")))?;
        self.growths.lock().push(Growth { from, to });
        Ok(())
    }

    /// Grow the map so that `extra` more bytes fit, before a big write whose
    /// size is known up front (saves failed attempts). Caller holds the
    /// write lock.
    pub fn reserve_locked(&self, extra: usize, cap: Option<usize>) -> Result<()> {
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
    fn adopt_locked(&self) -> Result<()> {
        let x = self.gate.exclusive("adopting a map resize")?;
        let env = self.lmdb_exclusive(&x)?;
        // SAFETY: size 0 means "the size recorded in the file"; no
        // transaction is active in this process (write lock + exclusive gate).
        let rc = unsafe { ffi::mdb_env_set_mapsize(env.env(), 0) };
        if rc != 0 {
            return Err(StoreError::lmdb(rc, self.what("adopt the map size")));
        }
        Ok(())
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
            _guard: guard,
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
                    return Err(StoreError::ReadersFull {
                        max_readers: self.options.max_readers,
                    })
                }
                rc => return Err(StoreError::lmdb(rc, self.what("begin a read"))),
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
            return Err(StoreError::lmdb(rc, self.what("read env info")));
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
            .map_err(|e| StoreError::from_lmdb(e, self.what("read env stat")))?;
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
            .map_err(|e| StoreError::from_lmdb(e, self.what("sync")))
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
        drop(env);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for RawTxn(t) in self.pool.get_mut().drain(..) {
            // SAFETY: pooled txns are reset read txns of this env, which is
            // still open here (it closes when `lmdb` drops below).
            unsafe { ffi::mdb_txn_abort(t) };
        }
    }
}

/// A read transaction with the gate held shared. Returned to the pool
/// (reset) when dropped; the gate is released after that.
pub struct ReadTxn<'a> {
    env: &'a Env,
    txn: *mut ffi::MDB_txn,
    _guard: SharedGuard<'a>,
}

fn to_val(bytes: &[u8]) -> ffi::MDB_val {
    ffi::MDB_val {
        mv_size: bytes.len(),
        mv_data: bytes.as_ptr() as *mut _,
    }
}

/// # Safety
/// `v` must come from LMDB inside a live transaction that outlives `'t`.
unsafe fn from_val<'t>(v: &ffi::MDB_val) -> &'t [u8] {
    if v.mv_size == 0 {
        return &[];
    }
    // SAFETY: per the function contract.
    unsafe { std::slice::from_raw_parts(v.mv_data as *const u8, v.mv_size) }
}

/// Cursor positioning for chunked scans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    First,
    Last,
    /// First key >= this.
    AtOrAfter,
}

impl<'a> ReadTxn<'a> {
    /// The stored bytes of `key`; the slice points into the map and lives as
    /// long as this transaction.
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        if !crate::keys::key_len_ok(key.len()) {
            return Ok(None);
        }
        let mut k = to_val(key);
        let mut v = ffi::MDB_val {
            mv_size: 0,
            mv_data: ptr::null_mut(),
        };
        // SAFETY: live read txn and dbi of this env; k points to `key`.
        let rc = unsafe { ffi::mdb_get(self.txn, self.env.dbi, &mut k, &mut v) };
        match rc {
            0 => {
                // SAFETY: `v` was filled by mdb_get inside `self`.
                Ok(Some(unsafe { from_val(&v) }))
            }
            ffi::MDB_NOTFOUND => Ok(None),
            rc => Err(StoreError::lmdb(rc, self.env.what("read"))),
        }
    }

    /// Number of entries in this snapshot.
    pub fn entries(&self) -> Result<usize> {
        let mut st = std::mem::MaybeUninit::<ffi::MDB_stat>::zeroed();
        // SAFETY: live txn and dbi; mdb_stat fills the struct.
        let rc = unsafe { ffi::mdb_stat(self.txn, self.env.dbi, st.as_mut_ptr()) };
        if rc != 0 {
            return Err(StoreError::lmdb(rc, self.env.what("stat")));
        }
        // SAFETY: filled above.
        Ok(unsafe { st.assume_init() }.ms_entries)
    }

    /// A cursor on this transaction, closed when dropped.
    fn cursor(&self) -> Result<Cursor<'_>> {
        let mut raw: *mut ffi::MDB_cursor = ptr::null_mut();
        // SAFETY: live txn and dbi; `Cursor` closes it before the txn ends
        // (it borrows `self`).
        let rc = unsafe { ffi::mdb_cursor_open(self.txn, self.env.dbi, &mut raw) };
        if rc != 0 {
            return Err(StoreError::lmdb(rc, self.env.what("open a cursor")));
        }
        Ok(Cursor {
            raw,
            env: self.env,
            _txn: std::marker::PhantomData,
        })
    }

    /// Lookups of keys given in ascending order, through one cursor that
    /// moves forward: see [`Ascending`].
    pub fn ascending(&self) -> Result<Ascending<'_>> {
        Ok(Ascending {
            cursor: self.cursor()?,
            at: Position::Unset,
        })
    }

    /// Walk keys from a position, calling `f(key, value)` until it returns
    /// false or the keys run out. Slices live as long as this transaction.
    pub fn scan<'t>(
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
        while let Some((key, val)) = at {
            if !f(key, val) {
                break;
            }
            at = cursor.op(&[], step, "scan")?;
        }
        Ok(())
    }
}

/// An open cursor of a read transaction; closed on drop, which the borrow
/// of the transaction puts before the transaction ends.
struct Cursor<'t> {
    raw: *mut ffi::MDB_cursor,
    env: &'t Env,
    _txn: std::marker::PhantomData<&'t ReadTxn<'t>>,
}

/// A key and its value, both inside the map.
type Entry<'t> = (&'t [u8], &'t [u8]);

impl<'t> Cursor<'t> {
    /// One cursor operation; `Ok(None)` when LMDB finds nothing.
    fn op(&self, key: &[u8], op: ffi::MDB_cursor_op, what: &str) -> Result<Option<Entry<'t>>> {
        let mut k = to_val(key);
        let mut v = ffi::MDB_val {
            mv_size: 0,
            mv_data: ptr::null_mut(),
        };
        // SAFETY: the cursor is open on a live txn; `k` points to `key`,
        // which LMDB only reads before replacing `k` by the key it found.
        match unsafe { ffi::mdb_cursor_get(self.raw, &mut k, &mut v, op) } {
            // SAFETY: filled by mdb_cursor_get inside the transaction.
            0 => Ok(Some(unsafe { (from_val(&k), from_val(&v)) })),
            ffi::MDB_NOTFOUND => Ok(None),
            rc => Err(StoreError::lmdb(rc, self.env.what(what))),
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

/// Where an [`Ascending`] cursor stands.
#[derive(Clone, Copy)]
enum Position<'t> {
    /// Not placed yet.
    Unset,
    /// On this entry: the first stored key at or after the last key asked for.
    At(Entry<'t>),
    /// Past the end: nothing is stored at or after the last key asked for.
    End,
}

impl<'t> From<Option<Entry<'t>>> for Position<'t> {
    fn from(found: Option<Entry<'t>>) -> Self {
        found.map_or(Position::End, Position::At)
    }
}

/// Point lookups of keys in ascending order through one cursor.
///
/// The cursor stands on the first stored key at or after the last key asked
/// for. The next key is then often settled without a search: it is the key
/// the cursor stands on, or the one right after it, or, sorting between
/// those two, it is not stored. Only a key further on costs a search, which
/// LMDB starts from the page the cursor is on. Sorted keys that share pages
/// read each page once.
pub struct Ascending<'t> {
    cursor: Cursor<'t>,
    at: Position<'t>,
}

impl<'t> Ascending<'t> {
    /// The stored bytes of `key`, which must not sort before the key of the
    /// previous call. The slice lives as long as the transaction.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<&'t [u8]>> {
        if !crate::keys::key_len_ok(key.len()) {
            return Ok(None);
        }
        let mut stepped = false;
        let mut searched = false;
        loop {
            match self.at {
                Position::End => return Ok(None),
                Position::At((k, v)) => match k.cmp(key) {
                    std::cmp::Ordering::Equal => return Ok(Some(v)),
                    std::cmp::Ordering::Greater => return Ok(None),
                    std::cmp::Ordering::Less => {}
                },
                Position::Unset => {}
            }
            if searched {
                // A search landed before `key`, which only a database that
                // does not sort keys bytewise could do (LMDB's default order
                // is bytewise, and the main database keeps it). Rather than
                // loop, look the key up exactly and start over.
                self.at = Position::Unset;
                return Ok(self
                    .cursor
                    .op(key, ffi::MDB_SET_KEY, "read")?
                    .map(|(_, v)| v));
            }
            if !stepped && matches!(self.at, Position::At(_)) {
                // Try the next key before searching.
                stepped = true;
                self.at = self.cursor.op(&[], ffi::MDB_NEXT, "read")?.into();
            } else {
                searched = true;
                self.at = self.cursor.op(key, ffi::MDB_SET_RANGE, "read")?.into();
            }
        }
    }
}

impl Drop for ReadTxn<'_> {
    fn drop(&mut self) {
        // SAFETY: `txn` is a live read txn we own; reset ends its snapshot
        // and keeps its reader slot for reuse; abort frees both.
        unsafe { ffi::mdb_txn_reset(self.txn) };
        let mut pool = self.env.pool.lock();
        if pool.len() < POOL_MAX {
            pool.push(RawTxn(self.txn));
        } else {
            drop(pool);
            // SAFETY: reset txn of an open env (the gate is still held).
            unsafe { ffi::mdb_txn_abort(self.txn) };
        }
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
            return crate::keys::MAX_KEY_SIZE;
        }
        let n = ffi::mdb_env_get_maxkeysize(env);
        ffi::mdb_env_close(env);
        n as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("los-engine-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    fn put_all(env: &Env, items: &[(Vec<u8>, Vec<u8>)], cap: Option<usize>) -> Result<()> {
        env.write(cap, |txn, db| {
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
    fn version_and_key_size() {
        assert_eq!(lmdb_version(), (0, 9, 24));
        assert_eq!(max_key_size(), crate::keys::MAX_KEY_SIZE);
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
        assert!(matches!(err, StoreError::MapFull { .. }));
        assert_eq!(read(&env, b"big0"), None, "a failed write leaves nothing");
        env.close().unwrap();
        assert!(env.is_closed());
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
        drop(txn);
        let _ = std::fs::remove_dir_all(&p);
    }
}
