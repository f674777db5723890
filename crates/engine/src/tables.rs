//! Named tables of an environment: their names, their LMDB database handles,
//! and how table records and a main store's entries are kept apart in the
//! main database, where LMDB keeps the records of the named ones.
//!
//! A file holds either a main store's entries or named tables, never both:
//! a table is not created while the main database holds entries that are
//! not table records, and the main store of a file with tables is refused
//! (its reads would show table records as entries, and its `clear()` would
//! wipe them). The check looks at the first key of the main database: under
//! that rule it says which of the two the file is.
//!
//! LMDB allows one `mdb_dbi_open` at a time in a process, and a handle opened
//! in a transaction is published when that transaction commits; every open
//! happens with the registry's lock held until its transaction has ended.
//! Dropping a table closes its handle, and LMDB reuses the number for the
//! next table opened, so each handle given out carries the sequence number
//! of its slot: a handle of a dropped table never reaches another table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lmdb::{Database, RoTransaction, RwTransaction, Transaction};
use parking_lot::Mutex;

/// Named databases the environment may have open at once
/// (`mdb_env_set_maxdbs`); each table open in this process takes one.
/// LMDB sizes some arrays of every transaction by it (about 64 bytes per
/// table), so it stays modest.
pub const MAX_TABLES: u32 = 128;

/// The longest table name, in bytes of UTF-8: a name is a key of the main
/// database, and LMDB's keys are at most 511 bytes.
pub const MAX_NAME_BYTES: usize = crate::MAX_KEY_SIZE;

/// Size of LMDB's `MDB_db` record (private to mdb.c: a `u32`, two `u16`
/// and five `size_t`), the value of every table record.
const RECORD_SIZE: usize = 4 + 2 + 2 + 5 * std::mem::size_of::<usize>();

/// Why a table name is refused, or `None` if it is a good one.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Some(format!(
            "is {} bytes of UTF-8 and a table name is at most {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if name.contains('\0') {
        return Some("contains a NUL character".into());
    }
    None
}

/// What a store reads and commits through: the main database or one named
/// table, as opened in one environment.
#[derive(Clone, Debug)]
pub struct Table {
    /// `None`: the main database.
    pub(crate) named: Option<Named>,
}

#[derive(Clone, Debug)]
pub(crate) struct Named {
    pub(crate) name: Arc<str>,
    pub(crate) db: Database,
    /// The slot's sequence number when this handle was given out.
    pub(crate) seq: u64,
}

impl Table {
    /// The main (unnamed) database: what a store without `table=` uses.
    pub fn main() -> Table {
        Table { named: None }
    }

    /// The table's name; `None` for the main database.
    pub fn name(&self) -> Option<&str> {
        self.named.as_ref().map(|n| &*n.name)
    }
}

/// The handles this process opened on one environment.
#[derive(Default)]
pub(crate) struct Registry {
    /// Held across every `mdb_dbi_open` until its transaction has ended, and
    /// across a drop. Taken after the writer lock and before the gate, and
    /// never by a thread that holds the gate (a growth waiting for the gate
    /// may hold it).
    pub(crate) open_lock: Mutex<()>,
    /// Which table each slot holds; held only briefly, with nothing else
    /// awaited meanwhile.
    slots: Mutex<Slots>,
    /// This process opened a table of the file, or saw that it has some.
    present: AtomicBool,
}

#[derive(Default)]
struct Slots {
    /// `live[dbi]`: the table in that slot, with the sequence number it was
    /// given out under; `None` once its handle is closed.
    live: Vec<Option<Named>>,
    /// The last sequence number given out.
    next: u64,
}

impl Registry {
    /// Record a table handle just opened (or found open) in slot `db`.
    pub(crate) fn give(&self, name: &str, db: Database) -> Table {
        let mut s = self.slots.lock();
        let i = db.dbi() as usize;
        if s.live.len() <= i {
            s.live.resize(i + 1, None);
        }
        if s.live[i].is_none() {
            s.next += 1;
            let seq = s.next;
            s.live[i] = Some(Named {
                name: name.into(),
                db,
                seq,
            });
        }
        self.present.store(true, Ordering::Release);
        Table {
            named: s.live[i].clone(),
        }
    }

    /// Whether `named` still designates the table it was given out for.
    pub(crate) fn is_live(&self, named: &Named) -> bool {
        let s = self.slots.lock();
        matches!(s.live.get(named.db.dbi() as usize), Some(Some(n)) if n.seq == named.seq)
    }

    /// The handle in slot `dbi` was closed: the handles given out for it are
    /// dead.
    pub(crate) fn retire(&self, dbi: u32) {
        if let Some(slot) = self.slots.lock().live.get_mut(dbi as usize) {
            *slot = None;
        }
    }

    /// The name of the table whose handle is `dbi`, if it is live.
    pub(crate) fn name_of(&self, dbi: u32) -> Option<Arc<str>> {
        let s = self.slots.lock();
        s.live.get(dbi as usize)?.as_ref().map(|n| n.name.clone())
    }

    /// The live handle of the table `name`, if this process has one, given
    /// out at or before sequence number `before` (see `given`).
    pub(crate) fn find(&self, name: &str, before: u64) -> Option<Table> {
        let s = self.slots.lock();
        let found = s
            .live
            .iter()
            .flatten()
            .find(|n| &*n.name == name && n.seq <= before);
        found.map(|n| Table {
            named: Some(n.clone()),
        })
    }

    /// The sequence number of the last handle given out: a handle given out
    /// later has a larger one.
    pub(crate) fn given(&self) -> u64 {
        self.slots.lock().next
    }

    /// Whether any table handle given out is still live.
    pub(crate) fn any_live(&self) -> bool {
        self.slots.lock().live.iter().any(Option::is_some)
    }

    pub(crate) fn mark_present(&self, present: bool) {
        self.present.store(present, Ordering::Release);
    }

    pub(crate) fn has_tables(&self) -> bool {
        self.present.load(Ordering::Acquire)
    }
}

/// What the main database holds, judged by its first key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MainKind {
    Empty,
    /// Table records.
    Tables,
    /// Entries of a main store.
    Entries,
}

/// A key of the main database that could be a table record's (a valid name
/// and a record-sized value), as the name to try.
pub(crate) fn candidate(key: &[u8], value_len: usize) -> Option<&str> {
    if value_len != RECORD_SIZE {
        return None;
    }
    let name = std::str::from_utf8(key).ok()?;
    name_problem(name).is_none().then_some(name)
}

/// The first key of the main database and its value, the value only when it
/// is record-sized (a main store's first value can be large, and every
/// commit of the main store looks at it).
fn first_entry<T: Transaction>(
    txn: &T,
    main: Database,
    map: Option<&mut crate::guard::Map>,
) -> lmdb::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let cursor = txn.open_ro_cursor(main)?;
    match crate::guard::cursor_op(&cursor, None, lmdb_sys::MDB_FIRST, map) {
        Ok((k, v)) if v.len() == RECORD_SIZE => Ok(Some((k.to_vec(), v.to_vec()))),
        Ok((k, _)) => Ok(Some((k.to_vec(), Vec::new()))),
        Err(lmdb::Error::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Judge the main database by its first key, inside a write transaction:
/// writing a table record's value back as plain data is refused by LMDB
/// (MDB_INCOMPATIBLE), and rewriting an entry with its own bytes changes
/// nothing, so no handle is opened.
pub(crate) fn main_kind_rw(txn: &mut RwTransaction<'_>, main: Database) -> lmdb::Result<MainKind> {
    let Some((key, value)) = first_entry(txn, main, None)? else {
        return Ok(MainKind::Empty);
    };
    if candidate(&key, value.len()).is_none() {
        return Ok(MainKind::Entries);
    }
    match crate::guard::put(txn, main, &key, &value) {
        Ok(()) => Ok(MainKind::Entries),
        Err(lmdb::Error::Incompatible) => Ok(MainKind::Tables),
        Err(e) => Err(e),
    }
}

/// Judge the main database by its first key, inside a read transaction that
/// the caller aborts (which closes a handle this opened).
///
/// # Safety
/// The caller holds `Registry::open_lock` until `txn` has ended.
pub(crate) unsafe fn main_kind_ro(
    txn: &RoTransaction<'_>,
    main: Database,
    map: &mut crate::guard::Map,
) -> lmdb::Result<MainKind> {
    let Some((key, value)) = first_entry(txn, main, Some(&mut *map))? else {
        return Ok(MainKind::Empty);
    };
    let Some(name) = candidate(&key, value.len()) else {
        return Ok(MainKind::Entries);
    };
    // The pages LMDB's lookup of the record goes through (see guard.rs).
    crate::guard::check_key(map, name.as_bytes())?;
    // SAFETY: per the function contract, no other `mdb_dbi_open` runs in
    // this process until `txn` ends.
    match unsafe { txn.open_db(Some(name)) } {
        Ok(_) => Ok(MainKind::Tables),
        Err(lmdb::Error::Incompatible) => Ok(MainKind::Entries),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name_problem("users").is_none());
        assert!(name_problem("").is_some());
        assert!(name_problem("a\0b").is_some());
        assert!(name_problem(&"x".repeat(MAX_NAME_BYTES)).is_none());
        assert!(name_problem(&"x".repeat(MAX_NAME_BYTES + 1)).is_some());
        // Bytes, not characters, count.
        assert!(name_problem(&"é".repeat(MAX_NAME_BYTES / 2 + 1)).is_some());
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("los-tables-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    fn put(env: &crate::Env, table: &Table, key: &[u8], value: &[u8]) -> crate::Result<()> {
        let ops = crate::buffer::Sorted::last_write_wins(vec![(key, Some(value))]);
        env.commit_in(table, &ops, 0, None)
    }

    fn get(env: &crate::Env, table: &Table, key: &[u8]) -> crate::Result<Option<Vec<u8>>> {
        let txn = env.begin_read(env.gate.try_shared().unwrap())?.unwrap();
        txn.set_table(table)?;
        Ok(txn.get(key)?.map(<[u8]>::to_vec))
    }

    #[test]
    fn tables_hold_keys_apart_and_dropped_handles_stay_dead() {
        let p = tmp("apart");
        let env = crate::Env::open(&p, &crate::EnvOptions::default()).unwrap();
        let a = env.open_table("a", true).unwrap();
        let b = env.open_table("b", true).unwrap();
        put(&env, &a, b"k", b"in a").unwrap();
        put(&env, &b, b"k", b"in b").unwrap();
        assert_eq!(get(&env, &a, b"k").unwrap().unwrap(), b"in a");
        assert_eq!(get(&env, &b, b"k").unwrap().unwrap(), b"in b");
        assert_eq!(env.list_tables().unwrap(), ["a", "b"]);
        // The main table holds the records: its store is refused.
        assert!(matches!(
            env.check_main(),
            Err(crate::Error::HasTables { .. })
        ));
        assert!(matches!(
            put(&env, &Table::main(), b"x", b"y"),
            Err(crate::Error::HasTables { .. })
        ));
        let stale = a.clone();
        env.drop_table(&a, None).unwrap();
        // LMDB hands the freed slot to the next table: the stale handle
        // must not reach it.
        let c = env.open_table("c", true).unwrap();
        put(&env, &c, b"k", b"in c").unwrap();
        assert!(matches!(
            get(&env, &stale, b"k"),
            Err(crate::Error::TableDropped { .. })
        ));
        assert!(matches!(
            put(&env, &stale, b"k", b"v"),
            Err(crate::Error::TableDropped { .. })
        ));
        assert_eq!(env.list_tables().unwrap(), ["b", "c"]);
        assert!(matches!(
            env.open_table("", true),
            Err(crate::Error::BadTable { .. })
        ));
        drop(env);
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn a_table_is_refused_beside_main_entries() {
        let p = tmp("beside");
        let env = crate::Env::open(&p, &crate::EnvOptions::default()).unwrap();
        put(&env, &Table::main(), b"entry", b"value").unwrap();
        assert!(matches!(
            env.open_table("t", true),
            Err(crate::Error::MainHoldsEntries { .. })
        ));
        assert!(env.list_tables().unwrap().is_empty());
        env.check_main().unwrap();
        drop(env);
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn record_size_is_lmdbs() {
        assert_eq!(RECORD_SIZE, 48);
    }
}
