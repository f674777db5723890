//! A damaged data file: an error instead of a signal, or of memory
//! overwritten.
//!
//! LMDB trusts its pages. A page whose header or nodes were overwritten (a
//! bad disk, a bad copy, another program writing the file) sends its code
//! outside the page (SIGSEGV, SIGBUS), into one of its own assertions
//! (which abort), or, when it changes the page, to copy it by bounds its
//! header invents over this process's memory. The engine calls LMDB through
//! `guard.c`: a fault or assertion inside a call returns [`Error::Damaged`]
//! (only C frames lie between the jump and its target); the page each key
//! and value is read from is checked before it is handed back; and before
//! a write transaction changes anything, `check_writes` checks the pages it
//! may change. A write that faults all the same is abandoned with its
//! transaction (see `Env::wreck`).

use std::ffi::{c_char, c_int, c_void, CStr};

use lmdb_sys as ffi;

use crate::error::{Error, Result};

/// Returned by a guarded call that met damage.
const FAULT: c_int = -30600;
/// `check_writes` found a page a write would change damaged: nothing was
/// changed yet, so the transaction can be aborted as usual.
const CHECK: c_int = -30601;

/// What a guarded call met (filled by `guard.c`): the signal, 0 for a length
/// that runs off the map, or -1 for an assertion of LMDB's, whose text is in
/// `msg`.
#[repr(C)]
pub(crate) struct Fault {
    sig: c_int,
    addr: *mut c_void,
    /// Written by `guard.c` only when `sig` is -1; left unset otherwise (a
    /// guarded call is on every read's path, and clearing 256 bytes each
    /// time was 2% of a `get_many`).
    msg: std::mem::MaybeUninit<[c_char; 256]>,
}

impl Fault {
    pub(crate) fn new() -> Self {
        Fault {
            sig: 0,
            addr: std::ptr::null_mut(),
            msg: std::mem::MaybeUninit::uninit(),
        }
    }

    fn describe(&self) -> String {
        match self.sig {
            0 => "a stored length or page number does not fit the file".to_owned(),
            -2 => "a page a write or a lookup would go through is not whole".to_owned(),
            -1 => {
                // SAFETY: with `sig` -1, `guard.c` wrote a NUL-terminated
                // string into `msg` (snprintf always terminates within the
                // buffer).
                let text =
                    unsafe { CStr::from_ptr(self.msg.as_ptr().cast::<c_char>()) }.to_string_lossy();
                format!("LMDB's check failed: {text}")
            }
            libc::SIGBUS => format!(
                "a page points past the end of the file (SIGBUS at {:p})",
                self.addr
            ),
            sig => format!(
                "a page points outside the map (signal {sig} at {:p})",
                self.addr
            ),
        }
    }
}

/// Where the map is, for `guard.c`'s checks: `base` is 0 until a read finds
/// it (from the page a value is in, checked against the meta pages), `size`
/// is the map's size, `psize` LMDB's page size, and `bits` a bit per page of
/// the map (`nbits` of them), set once the page was found whole, shared by
/// every thread (null: no page is checked). `outside` nonzero: the reads
/// of a write transaction, whose keys and values outside the map are in
/// LMDB's own copies of pages it changed, and are not checked.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Map {
    pub(crate) base: usize,
    pub(crate) size: usize,
    pub(crate) psize: usize,
    pub(crate) bits: *mut u64,
    pub(crate) nbits: usize,
    pub(crate) outside: usize,
}

/// The pages of a map found whole (see `guard.c`): a bit per page, set by
/// any thread, read by all. Replaced only when the map changes, which no
/// read or write overlaps (the gate).
pub(crate) struct Checked(Vec<std::sync::atomic::AtomicU64>);

impl Checked {
    /// Room for a map of `size` bytes in pages of `psize`; the pages found
    /// whole in `old` stay so (a page's content changes only by LMDB).
    pub(crate) fn new(size: usize, psize: usize, old: Option<&Checked>) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let pages = size.checked_div(psize).unwrap_or(0);
        let words = pages.div_ceil(64);
        let mut v: Vec<AtomicU64> = Vec::new();
        // Without room for it, nothing is remembered: every page is checked
        // each time instead.
        if v.try_reserve_exact(words).is_ok() {
            v.extend((0..words).map(|i| {
                AtomicU64::new(
                    old.and_then(|o| o.0.get(i))
                        .map_or(0, |w| w.load(Ordering::Relaxed)),
                )
            }));
        }
        Checked(v)
    }

    /// `map` with these bits.
    pub(crate) fn view(&self, base: usize, size: usize, psize: usize) -> Map {
        Map {
            base,
            size,
            psize,
            // `AtomicU64` has the size and alignment of `u64`; `guard.c`
            // reads and sets the bits with atomic operations only.
            bits: self.0.as_ptr() as *mut u64,
            nbits: self.0.len() * 64,
            outside: 0,
        }
    }
}

extern "C" {
    fn los_guard_env(env: *mut ffi::MDB_env) -> c_int;
    fn los_get(
        txn: *mut ffi::MDB_txn,
        dbi: ffi::MDB_dbi,
        table: *const c_char,
        tlen: usize,
        key: *mut ffi::MDB_val,
        data: *mut ffi::MDB_val,
        map: *mut Map,
        own_only: c_int,
        fault: *mut Fault,
    ) -> c_int;
    fn los_cursor_get(
        cursor: *mut ffi::MDB_cursor,
        key: *mut ffi::MDB_val,
        data: *mut ffi::MDB_val,
        op: c_int,
        table: *const c_char,
        tlen: usize,
        map: *mut Map,
        fault: *mut Fault,
    ) -> c_int;
    fn los_apply(
        cursor: *mut ffi::MDB_cursor,
        keys: *const ffi::MDB_val,
        vals: *const ffi::MDB_val,
        dels: *const u8,
        n: usize,
        split: usize,
        fault: *mut Fault,
    ) -> c_int;
    fn los_put(
        txn: *mut ffi::MDB_txn,
        dbi: ffi::MDB_dbi,
        key: *mut ffi::MDB_val,
        data: *mut ffi::MDB_val,
        flags: std::ffi::c_uint,
        fault: *mut Fault,
    ) -> c_int;
    fn los_del(
        txn: *mut ffi::MDB_txn,
        dbi: ffi::MDB_dbi,
        key: *mut ffi::MDB_val,
        data: *mut ffi::MDB_val,
        fault: *mut Fault,
    ) -> c_int;
    fn los_drop(txn: *mut ffi::MDB_txn, dbi: ffi::MDB_dbi, del: c_int, fault: *mut Fault) -> c_int;
    fn los_txn_commit(txn: *mut ffi::MDB_txn, fault: *mut Fault) -> c_int;
    fn los_check_key(map: *mut Map, key: *const c_char, klen: usize, fault: *mut Fault) -> c_int;
    fn los_check_drop(
        cursor: *mut ffi::MDB_cursor,
        map: *mut Map,
        table: *const c_char,
        tlen: usize,
        fault: *mut Fault,
    ) -> c_int;
    fn los_check_writes(
        cursor: *mut ffi::MDB_cursor,
        map: *mut Map,
        table: *const c_char,
        tlen: usize,
        keys: *const ffi::MDB_val,
        dels: *const u8,
        n: usize,
        fault: *mut Fault,
    ) -> c_int;
    fn los_seek(
        cursor: *mut ffi::MDB_cursor,
        table: *const c_char,
        tlen: usize,
        state: *mut Seek,
        keys: *const ffi::MDB_val,
        vals: *mut ffi::MDB_val,
        n: usize,
        maxkey: usize,
        map: *mut Map,
        fault: *mut Fault,
    ) -> c_int;
    fn los_cursor_run(
        cursor: *mut ffi::MDB_cursor,
        op: c_int,
        keys: *mut ffi::MDB_val,
        vals: *mut ffi::MDB_val,
        max: usize,
        got: *mut usize,
        map: *mut Map,
        fault: *mut Fault,
    ) -> c_int;
    fn los_stat(
        txn: *mut ffi::MDB_txn,
        dbi: ffi::MDB_dbi,
        stat: *mut ffi::MDB_stat,
        fault: *mut Fault,
    ) -> c_int;
}

/// Install the fault handlers (again, if another handler replaced them) and
/// `env`'s assertion hook.
///
/// # Safety
/// `env` is a live LMDB environment.
pub(crate) unsafe fn watch(env: *mut ffi::MDB_env) -> Result<()> {
    // SAFETY: per the contract; `los_guard_env` only installs handlers and
    // sets the environment's assertion callback.
    if unsafe { los_guard_env(env) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::lmdb(
            e.raw_os_error().unwrap_or(libc::EINVAL),
            "install the damaged-page guard",
        ));
    }
    Ok(())
}

/// The damage a guarded call met, as an error of `what`.
fn damaged(rc: c_int, fault: &Fault, what: impl FnOnce() -> String) -> Option<Error> {
    (rc == FAULT).then(|| Error::Damaged {
        what: what(),
        detail: fault.describe(),
    })
}

/// A table's name as `guard.c` takes it: null for the main table.
fn table_name(table: Option<&[u8]>) -> (*const c_char, usize) {
    table.map_or((std::ptr::null(), 0), |t| (t.as_ptr().cast(), t.len()))
}

/// `mdb_get` under the guard. `Err` is damage; `Ok` is LMDB's code.
///
/// `table` is the name `dbi` was opened by (`None` for the main table);
/// `map` is where the map of `txn` is (`None` in a write transaction, whose
/// own pages are outside it); a read may find its `base`.
///
/// # Safety
/// As `mdb_get`: a live transaction and database, which `table` names;
/// `key` points to readable memory; `map` describes the transaction's map.
pub(crate) unsafe fn get(
    txn: *mut ffi::MDB_txn,
    dbi: ffi::MDB_dbi,
    table: Option<&[u8]>,
    key: &mut ffi::MDB_val,
    data: &mut ffi::MDB_val,
    map: Option<&mut Map>,
    what: impl FnOnce() -> String,
) -> Result<c_int> {
    let mut fault = Fault::new();
    let map = map.map_or(std::ptr::null_mut(), |m| m as *mut Map);
    let (name, len) = table_name(table);
    // SAFETY: per the contract; `guard.c` calls mdb_get with these, and
    // reads `len` bytes at `name`, which `table` holds.
    let rc = unsafe { los_get(txn, dbi, name, len, key, data, map, 0, &mut fault) };
    damaged(rc, &fault, what).map_or(Ok(rc), Err)
}

/// `guard.c`'s answer where it does not ask LMDB (`los_get`'s `own_only`).
#[cfg(test)]
const OWN_LOOKUP_DECLINED: c_int = 1;

/// What `guard.c`'s own lookup answers where [`get`] uses it: `None` where
/// it leaves the lookup to `mdb_get`; else LMDB's code (for the tests, which
/// compare it with `mdb_get`'s answer).
///
/// # Safety
/// As [`get`].
#[cfg(test)]
pub(crate) unsafe fn own_get(
    txn: *mut ffi::MDB_txn,
    dbi: ffi::MDB_dbi,
    table: Option<&[u8]>,
    key: &mut ffi::MDB_val,
    data: &mut ffi::MDB_val,
    map: &mut Map,
) -> Result<Option<c_int>> {
    let mut fault = Fault::new();
    let (name, len) = table_name(table);
    // SAFETY: per the contract.
    let rc = unsafe { los_get(txn, dbi, name, len, key, data, map, 1, &mut fault) };
    match damaged(rc, &fault, || "own lookup".into()) {
        Some(e) => Err(e),
        None => Ok((rc != OWN_LOOKUP_DECLINED).then_some(rc)),
    }
}

/// `mdb_cursor_get` under the guard. `Err` is damage; `Ok` is LMDB's code.
///
/// `table` and `map` as for [`get`]: a search for a key (`MDB_SET*`) in a
/// read transaction checks the pages on its way first.
///
/// # Safety
/// As `mdb_cursor_get`: an open cursor of a live transaction, on the table
/// `table` names; `key` points to readable memory; `map` describes the
/// transaction's map.
pub(crate) unsafe fn cursor_get(
    cursor: *mut ffi::MDB_cursor,
    key: &mut ffi::MDB_val,
    data: &mut ffi::MDB_val,
    op: ffi::MDB_cursor_op,
    table: Option<&[u8]>,
    map: Option<&mut Map>,
    what: impl FnOnce() -> String,
) -> Result<c_int> {
    let mut fault = Fault::new();
    let map = map.map_or(std::ptr::null_mut(), |m| m as *mut Map);
    let (name, len) = table_name(table);
    // SAFETY: per the contract; `guard.c` calls mdb_cursor_get with these,
    // and reads `len` bytes at `name`, which `table` holds.
    let rc = unsafe { los_cursor_get(cursor, key, data, op as c_int, name, len, map, &mut fault) };
    damaged(rc, &fault, what).map_or(Ok(rc), Err)
}

/// Up to `keys.len()` steps of cursor operation `op` under one guard, each
/// entry checked as [`cursor_get`] checks it; returns how many were made
/// (fewer: the keys ran out) with LMDB's code. `Err` is damage.
///
/// # Safety
/// As `mdb_cursor_get`: an open cursor of a live read transaction, whose
/// map `map` describes; `vals` is as long as `keys`.
pub(crate) unsafe fn cursor_run(
    cursor: *mut ffi::MDB_cursor,
    op: ffi::MDB_cursor_op,
    keys: &mut [ffi::MDB_val],
    vals: &mut [ffi::MDB_val],
    map: &mut Map,
    what: impl FnOnce() -> String,
) -> Result<(usize, c_int)> {
    debug_assert_eq!(keys.len(), vals.len());
    let mut got = 0usize;
    let mut fault = Fault::new();
    // SAFETY: per the contract; `guard.c` fills at most `keys.len()`
    // entries of each array.
    let rc = unsafe {
        los_cursor_run(
            cursor,
            op as c_int,
            keys.as_mut_ptr(),
            vals.as_mut_ptr(),
            keys.len().min(vals.len()),
            &mut got,
            map,
            &mut fault,
        )
    };
    damaged(rc, &fault, what).map_or(Ok((got, rc)), Err)
}

/// Where the cursor of a forward lookup ([`seek`]) stands between calls
/// (`guard.c`'s `struct los_seek`): not placed yet, on an entry, or past the
/// last key.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Seek {
    key: ffi::MDB_val,
    val: ffi::MDB_val,
    at: c_int,
}

impl Seek {
    pub(crate) fn unset() -> Self {
        Seek {
            key: empty_val(),
            val: empty_val(),
            at: 0,
        }
    }
}

/// The values of `keys` (in ascending order) through `cursor`, which moves
/// only forward from where `state` says it stands, under one guard:
/// `vals[i]` is `keys[i]`'s value, checked as [`cursor_get`] checks it, or
/// empty with a null pointer when the key is not stored. Keys LMDB cannot
/// hold (empty, or longer than `MAX_KEY_SIZE`) are not stored. `Ok` is LMDB's code (of an operation
/// that failed, or 0); `Err` is damage.
///
/// # Safety
/// As `mdb_cursor_get`: an open cursor of a live read transaction, on the
/// table `table` names (`None`: the main table), whose map `map`
/// describes, placed where `state` says (a state only this cursor
/// has used); each key points to readable memory; `vals` is as long as
/// `keys`.
pub(crate) unsafe fn seek(
    cursor: *mut ffi::MDB_cursor,
    table: Option<&[u8]>,
    state: &mut Seek,
    keys: &[ffi::MDB_val],
    vals: &mut [ffi::MDB_val],
    map: &mut Map,
    what: impl FnOnce() -> String,
) -> Result<c_int> {
    debug_assert_eq!(keys.len(), vals.len());
    let mut fault = Fault::new();
    let (name, len) = table_name(table);
    // SAFETY: per the contract; `guard.c` reads `keys.len()` keys and fills
    // as many values, and `len` bytes at `name`, which `table` holds.
    let rc = unsafe {
        los_seek(
            cursor,
            name,
            len,
            state,
            keys.as_ptr(),
            vals.as_mut_ptr(),
            keys.len().min(vals.len()),
            crate::MAX_KEY_SIZE,
            map,
            &mut fault,
        )
    };
    damaged(rc, &fault, what).map_or(Ok(rc), Err)
}

/// `mdb_stat` under the guard. `Err` is damage; `Ok` is LMDB's code.
///
/// # Safety
/// As `mdb_stat`: a live transaction and database.
pub(crate) unsafe fn stat(
    txn: *mut ffi::MDB_txn,
    dbi: ffi::MDB_dbi,
    stat: *mut ffi::MDB_stat,
    what: impl FnOnce() -> String,
) -> Result<c_int> {
    let mut fault = Fault::new();
    // SAFETY: per the contract; `guard.c` calls mdb_stat with these.
    let rc = unsafe { los_stat(txn, dbi, stat, &mut fault) };
    damaged(rc, &fault, what).map_or(Ok(rc), Err)
}

/// `mdb_put` under the guard, for a transaction of `txn.rs`. `Err` is
/// damage; `Ok` is LMDB's code.
///
/// # Safety
/// As `mdb_put`: a live write transaction and database; `key` and `data`
/// point to readable memory.
pub(crate) unsafe fn put_raw(
    txn: *mut ffi::MDB_txn,
    dbi: ffi::MDB_dbi,
    key: &mut ffi::MDB_val,
    data: &mut ffi::MDB_val,
    what: impl FnOnce() -> String,
) -> Result<c_int> {
    let mut fault = Fault::new();
    // SAFETY: per the contract; `guard.c` calls mdb_put with these.
    let rc = unsafe { los_put(txn, dbi, key, data, 0, &mut fault) };
    damaged(rc, &fault, what).map_or(Ok(rc), Err)
}

/// `mdb_del` of `key` under the guard, for a transaction of `txn.rs`.
///
/// # Safety
/// As `mdb_del`: a live write transaction and database; `key` points to
/// readable memory.
pub(crate) unsafe fn del_raw(
    txn: *mut ffi::MDB_txn,
    dbi: ffi::MDB_dbi,
    key: &mut ffi::MDB_val,
    what: impl FnOnce() -> String,
) -> Result<c_int> {
    let mut fault = Fault::new();
    // SAFETY: per the contract; `guard.c` calls mdb_del with these.
    let rc = unsafe { los_del(txn, dbi, key, std::ptr::null_mut(), &mut fault) };
    damaged(rc, &fault, what).map_or(Ok(rc), Err)
}

/// `mdb_txn_commit` under the guard, for a transaction of `txn.rs`. On
/// damage the transaction is abandoned (see below).
///
/// # Safety
/// As `mdb_txn_commit`: a live write transaction, not used again.
pub(crate) unsafe fn commit_raw(
    txn: *mut ffi::MDB_txn,
    what: impl FnOnce() -> String,
) -> Result<c_int> {
    let mut fault = Fault::new();
    // SAFETY: per the contract.
    let rc = unsafe { los_txn_commit(txn, &mut fault) };
    damaged(rc, &fault, what).map_or(Ok(rc), Err)
}

// --- writes ----------------------------------------------------------------
//
// A write that faults leaves its transaction half done, and LMDB may still
// have temporary cursors of the jumped-over frames linked to it: aborting it
// would walk them. The transaction is abandoned instead (never committed,
// aborted or touched again), and so is the environment when it closes
// (`Env::wreck`): LMDB's writer lock stays with the thread that met the
// damage until that thread ends. The guarded calls below report damage as
// `lmdb::Error::Other(FAULT)` so that they fit the bodies of
// `Env::write_locked`, and leave what was met for `take_fault`.

thread_local! {
    /// What the last faulting write of this thread met.
    static LAST_FAULT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Whether `e` is damage met by a call of this section, which leaves its
/// transaction to be abandoned (see [`take_fault`]).
pub(crate) fn is_fault(e: &lmdb::Error) -> bool {
    matches!(e, lmdb::Error::Other(FAULT))
}

/// Whether `e` is damage that `check_writes` found before anything changed
/// (see [`take_fault`]).
pub(crate) fn is_check(e: &lmdb::Error) -> bool {
    matches!(e, lmdb::Error::Other(CHECK))
}

/// What the last faulting call of this section met, in this thread.
pub(crate) fn take_fault() -> String {
    LAST_FAULT
        .with(|f| f.borrow_mut().take())
        .unwrap_or_else(|| "a write met a damaged page".to_owned())
}

fn write_result(rc: c_int, fault: &Fault) -> lmdb::Result<()> {
    match rc {
        0 => Ok(()),
        FAULT => {
            let text = fault.describe();
            LAST_FAULT.with(|f| *f.borrow_mut() = Some(text));
            Err(lmdb::Error::Other(FAULT))
        }
        rc => Err(lmdb::Error::from_err_code(rc)),
    }
}

/// `bytes` as LMDB takes them (the one conversion of the engine).
pub(crate) fn val(bytes: &[u8]) -> ffi::MDB_val {
    ffi::MDB_val {
        mv_size: bytes.len(),
        mv_data: bytes.as_ptr() as *mut c_void,
    }
}

/// An empty value for LMDB to fill.
pub(crate) fn empty_val() -> ffi::MDB_val {
    ffi::MDB_val {
        mv_size: 0,
        mv_data: std::ptr::null_mut(),
    }
}

/// The bytes LMDB returned in `v`.
///
/// # Safety
/// `v` was filled by LMDB inside a transaction that outlives `'t`.
pub(crate) unsafe fn slice<'t>(v: &ffi::MDB_val) -> &'t [u8] {
    if v.mv_size == 0 {
        return &[];
    }
    // SAFETY: per the contract.
    unsafe { std::slice::from_raw_parts(v.mv_data as *const u8, v.mv_size) }
}

/// `mdb_cursor_get` on a cursor of the `lmdb` crate, under the guard; the
/// key and value found. `map`: where the map is, for a read transaction
/// (the entry's page is checked, and the map may be found); `None` for a
/// write transaction, whose own pages are outside the map.
pub(crate) fn cursor_op<'t>(
    cursor: &impl lmdb::Cursor<'t>,
    key: Option<&[u8]>,
    op: ffi::MDB_cursor_op,
    map: Option<&mut Map>,
) -> lmdb::Result<(&'t [u8], &'t [u8])> {
    let mut k = val(key.unwrap_or(&[]));
    let mut v = val(&[]);
    let mut fault = Fault::new();
    let map = map.map_or(std::ptr::null_mut(), |m| m as *mut Map);
    // SAFETY: an open cursor of a live transaction; `k` points to `key` (or
    // nothing), which LMDB only reads; `map` is null or describes the
    // transaction's map (the caller holds the gate).
    let rc = unsafe {
        los_cursor_get(
            cursor.cursor(),
            &mut k,
            &mut v,
            op as c_int,
            std::ptr::null(),
            0,
            map,
            &mut fault,
        )
    };
    write_result(rc, &fault)?;
    // SAFETY: filled by LMDB inside the transaction the cursor borrows.
    Ok(unsafe { (slice(&k), slice(&v)) })
}

/// Before a write transaction changes anything, check the pages of the file
/// it may copy or change (see `guard.c`): the free-page tree, the record of
/// `table` (`None`: the main tree), and the path to each key of `ops`, with
/// the pages beside it for a deletion. `cursor` is one of the transaction's
/// (for finding the map when `map.base` is not known yet). Damage is
/// `lmdb::Error::Other(FAULT)`, like a write's.
pub(crate) fn check_writes<'c, 'k>(
    cursor: Option<&impl lmdb::Cursor<'c>>,
    map: &mut Map,
    table: Option<&str>,
    ops: impl Iterator<Item = (&'k [u8], bool)>,
) -> lmdb::Result<()> {
    let mut keys: Vec<ffi::MDB_val> = Vec::new();
    let mut dels: Vec<u8> = Vec::new();
    for (k, del) in ops {
        push(&mut keys, val(k))?;
        push(&mut dels, u8::from(del))?;
    }
    let (tptr, tlen) = table_name(table.map(str::as_bytes));
    let raw = cursor.map_or(std::ptr::null_mut(), |c| c.cursor());
    let mut fault = Fault::new();
    // SAFETY: `raw` is null or an open cursor of a live write transaction
    // that has changed nothing yet; `map` describes its map, with `bits`
    // valid while the caller holds the gate; the key and flag arrays hold
    // `keys.len()` entries each, pointing to bytes that outlive the call.
    let rc = unsafe {
        los_check_writes(
            raw,
            map,
            tptr,
            tlen,
            keys.as_ptr(),
            dels.as_ptr(),
            keys.len(),
            &mut fault,
        )
    };
    check_result(rc, &mut fault)
}

/// The lists handed to LMDB grow with the write (a batch of a million keys
/// needs tens of MiB), so their memory is asked for first, and the memory
/// reserve taken back after (an allocation that only fit by taking it leaves
/// nothing for the next small one: see reserve.rs). With no memory to be
/// had, the write ends as LMDB ends it when its own allocation fails
/// (`ENOMEM`), its transaction aborted, rather than the process.
fn got(grown: std::result::Result<(), std::collections::TryReserveError>) -> lmdb::Result<()> {
    if grown.is_ok() && crate::reserve::ensure() {
        return Ok(());
    }
    Err(lmdb::Error::Other(libc::ENOMEM))
}

/// An empty vector with room for `n` items.
fn room<T>(n: usize) -> lmdb::Result<Vec<T>> {
    let mut v = Vec::new();
    got(v.try_reserve_exact(n))?;
    Ok(v)
}

/// `v.push(x)`, growing `v` as `push` does.
fn push<T>(v: &mut Vec<T>, x: T) -> lmdb::Result<()> {
    if v.len() == v.capacity() {
        got(v.try_reserve(1))?;
    }
    v.push(x);
    Ok(())
}

/// The result of a check made before anything changed: damage found is
/// `lmdb::Error::Other(CHECK)` (only the check's own reads were under way:
/// nothing to abandon), described as a page that is not whole when the
/// check gave no signal.
fn check_result(rc: c_int, fault: &mut Fault) -> lmdb::Result<()> {
    if rc == FAULT && fault.sig == 0 {
        fault.sig = -2;
    }
    match write_result(rc, fault) {
        Err(e) if is_fault(&e) => Err(lmdb::Error::Other(CHECK)),
        r => r,
    }
}

/// Before `mdb_drop` empties a table, check what any write checks (the
/// free-page tree, the record of `table`, `None` for the main tree) and the
/// pages `mdb_drop` reads: every branch page of the table, and its leaves
/// when it has values in overflow pages (see `guard.c`). `cursor` is one of
/// the transaction's on that table, before any change. Damage is
/// `lmdb::Error::Other(CHECK)` (see [`is_check`]).
pub(crate) fn check_drop<'c>(
    cursor: &impl lmdb::Cursor<'c>,
    map: &mut Map,
    table: Option<&str>,
) -> lmdb::Result<()> {
    let (tptr, tlen) = table_name(table.map(str::as_bytes));
    let mut fault = Fault::new();
    // SAFETY: an open cursor of a live write transaction that has changed
    // nothing yet; `map` describes its map, with `bits` valid while the
    // caller holds the gate; `tlen` bytes at `tptr` are `table`'s.
    let rc = unsafe { los_check_drop(cursor.cursor(), map, tptr, tlen, &mut fault) };
    check_result(rc, &mut fault)
}

/// Check the pages of the main tree on the way to `key` (a table's name,
/// before LMDB looks its record up to open it): see `guard.c`. Damage is
/// `lmdb::Error::Other(CHECK)` (see [`is_check`]). The caller holds the gate
/// while `map` is used.
pub(crate) fn check_key(map: &mut Map, key: &[u8]) -> lmdb::Result<()> {
    let mut fault = Fault::new();
    // SAFETY: `map` describes the environment's map, its `bits` valid while
    // the caller holds the gate; `key` is readable for `key.len()` bytes.
    let rc = unsafe { los_check_key(map, key.as_ptr() as *const c_char, key.len(), &mut fault) };
    check_result(rc, &mut fault)
}

/// The writes of `ops` (sorted, one per key; `None` deletes) through
/// `cursor`, under one guard; the keys from `split` on sort after every
/// stored key and are appended (`MDB_APPEND`).
pub(crate) fn apply(
    cursor: &mut lmdb::RwCursor<'_>,
    ops: &[(&[u8], Option<&[u8]>)],
    split: usize,
) -> lmdb::Result<()> {
    use lmdb::Cursor as _;
    let mut keys: Vec<ffi::MDB_val> = room(ops.len())?;
    let mut vals: Vec<ffi::MDB_val> = room(ops.len())?;
    let mut dels: Vec<u8> = room(ops.len())?;
    for (k, v) in ops {
        keys.push(val(k));
        vals.push(val(v.unwrap_or(&[])));
        dels.push(u8::from(v.is_none()));
    }
    let mut fault = Fault::new();
    // SAFETY: an open cursor of a live write transaction; the three arrays
    // hold `ops.len()` entries, pointing to bytes that LMDB copies.
    let rc = unsafe {
        los_apply(
            cursor.cursor(),
            keys.as_ptr(),
            vals.as_ptr(),
            dels.as_ptr(),
            ops.len(),
            split,
            &mut fault,
        )
    };
    write_result(rc, &fault)
}

/// `mdb_get` in a write transaction, under the guard.
pub(crate) fn rw_get<'t>(
    txn: &'t lmdb::RwTransaction<'_>,
    db: lmdb::Database,
    key: &[u8],
) -> lmdb::Result<&'t [u8]> {
    use lmdb::Transaction as _;
    let mut k = val(key);
    let mut v = val(&[]);
    let mut fault = Fault::new();
    // SAFETY: a live write transaction and one of its databases; `k`
    // points to `key`, which LMDB only reads.
    let rc = unsafe {
        los_get(
            txn.txn(),
            db.dbi(),
            std::ptr::null(),
            0,
            &mut k,
            &mut v,
            std::ptr::null_mut(),
            0,
            &mut fault,
        )
    };
    write_result(rc, &fault)?;
    // SAFETY: filled by LMDB inside `txn`, which the result borrows.
    Ok(unsafe { slice(&v) })
}

/// `mdb_del` of `key` under the guard.
pub(crate) fn del(
    txn: &mut lmdb::RwTransaction<'_>,
    db: lmdb::Database,
    key: &[u8],
) -> lmdb::Result<()> {
    use lmdb::Transaction as _;
    let mut k = val(key);
    let mut fault = Fault::new();
    // SAFETY: a live write transaction and one of its databases; `k`
    // points to `key`, which LMDB only reads.
    let rc = unsafe {
        los_del(
            txn.txn(),
            db.dbi(),
            &mut k,
            std::ptr::null_mut(),
            &mut fault,
        )
    };
    write_result(rc, &fault)
}

/// `mdb_put` of `data` under `key` under the guard.
pub(crate) fn put(
    txn: &mut lmdb::RwTransaction<'_>,
    db: lmdb::Database,
    key: &[u8],
    data: &[u8],
) -> lmdb::Result<()> {
    use lmdb::Transaction as _;
    let (mut k, mut v) = (val(key), val(data));
    let mut fault = Fault::new();
    // SAFETY: a live write transaction and one of its databases; `k` and
    // `v` point to `key` and `data`, which LMDB copies.
    let rc = unsafe { los_put(txn.txn(), db.dbi(), &mut k, &mut v, 0, &mut fault) };
    write_result(rc, &fault)
}

/// `mdb_put` with `MDB_RESERVE` under the guard: the space of a value of
/// `len` bytes under `key`, for the caller to fill.
pub(crate) fn reserve<'t>(
    txn: &'t mut lmdb::RwTransaction<'_>,
    db: lmdb::Database,
    key: &[u8],
    len: usize,
) -> lmdb::Result<&'t mut [u8]> {
    use lmdb::Transaction as _;
    let mut k = val(key);
    let mut v = ffi::MDB_val {
        mv_size: len,
        mv_data: std::ptr::null_mut(),
    };
    let mut fault = Fault::new();
    // SAFETY: a live write transaction and one of its databases; `k`
    // points to `key`, which LMDB copies; MDB_RESERVE fills `v`.
    let rc = unsafe {
        los_put(
            txn.txn(),
            db.dbi(),
            &mut k,
            &mut v,
            ffi::MDB_RESERVE,
            &mut fault,
        )
    };
    write_result(rc, &fault)?;
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: LMDB reserved `len` writable bytes at `v.mv_data` inside
    // `txn`, which the result borrows mutably.
    Ok(unsafe { std::slice::from_raw_parts_mut(v.mv_data as *mut u8, len) })
}

/// Empty `db` (`mdb_drop`, which walks every page of it) under the guard;
/// with `delete`, remove it from the file too.
///
/// # Safety
/// With `delete`, as `lmdb::RwTransaction::drop_db`: `db` is not used again.
pub(crate) unsafe fn drop_db(
    txn: &mut lmdb::RwTransaction<'_>,
    db: lmdb::Database,
    delete: bool,
) -> lmdb::Result<()> {
    use lmdb::Transaction as _;
    let mut fault = Fault::new();
    // SAFETY: a live write transaction and one of its databases; per the
    // contract for `delete`.
    let rc = unsafe { los_drop(txn.txn(), db.dbi(), c_int::from(delete), &mut fault) };
    write_result(rc, &fault)
}

/// Commit `txn` under the guard. On damage the transaction is abandoned
/// (see above).
pub(crate) fn commit(txn: lmdb::RwTransaction<'_>) -> lmdb::Result<()> {
    use lmdb::Transaction as _;
    let raw = txn.txn();
    // LMDB ends the transaction in every case but damage; it is never
    // touched again.
    std::mem::forget(txn);
    let mut fault = Fault::new();
    // SAFETY: a live write transaction, committed once.
    let rc = unsafe { los_txn_commit(raw, &mut fault) };
    write_result(rc, &fault)
}
