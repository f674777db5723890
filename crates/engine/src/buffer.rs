//! The write buffer: pickled values and tombstones waiting for a commit,
//! and [`Sorted`], what one commit writes ("sorted, last write wins").
//!
//! It has two parts. `active` takes new writes. `inflight` is the batch a
//! commit is writing right now: it stays readable until the commit succeeds,
//! so a reader in another thread never misses an acknowledged write, and it is
//! merged back under `active` if the commit fails, so nothing is lost.

use std::collections::{HashMap, TryReserveError};
use std::sync::Arc;

/// Pickle bytes held by the buffer. The store keeps the `bytes` object that
/// `pickle.dumps` returned (no copy); tests use plain vectors.
pub trait Pickle: AsRef<[u8]> + Send + Sync + std::fmt::Debug {}
impl<T: AsRef<[u8]> + Send + Sync + std::fmt::Debug> Pickle for T {}

/// Shared pickle bytes.
pub type Bytes = Arc<dyn Pickle>;

/// A buffered value: the pickle bytes, or a tombstone.
pub type Value = Option<Bytes>;

/// One operation of a sorted batch: a key and its pickle, or `None` to delete.
pub type Op<'a> = (&'a [u8], Option<&'a [u8]>);

/// Writes in ascending key order, one per key, the last write of each key
/// winning: what one commit writes. Made only here, from a batch of the
/// buffer ([`Batch::sorted`]) or from writes in the order they were made
/// ([`Sorted::last_write_wins`], for `put_many`).
#[derive(Debug, PartialEq, Eq)]
pub struct Sorted<'a>(Vec<Op<'a>>);

fn strictly_ascending(ops: &[Op<'_>]) -> bool {
    ops.windows(2).all(|w| w[0].0 < w[1].0)
}

impl<'a> Sorted<'a> {
    /// From writes in the order they were made, where a key may come more
    /// than once: the last write of each key wins. Writes already in key
    /// order (the common case) are taken as they are.
    pub fn last_write_wins(mut ops: Vec<Op<'a>>) -> Self {
        if !strictly_ascending(&ops) {
            // Stable: equal keys keep the order they were written in, so the
            // last of each run is the newest, and it replaces the ones before.
            ops.sort_by(|a, b| a.0.cmp(b.0));
            ops.dedup_by(|newer, kept| {
                let same = newer.0 == kept.0;
                if same {
                    *kept = *newer;
                }
                same
            });
        }
        Sorted(ops)
    }

    /// From writes whose keys are all different, in any order.
    fn from_unique(mut ops: Vec<Op<'a>>) -> Self {
        if !strictly_ascending(&ops) {
            ops.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        Sorted(ops)
    }

    pub fn ops(&self) -> &[Op<'a>] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The buffer's hash: foldhash, seeded per process. Keys are chosen by the
/// program, and common key shapes (big-endian counters, long shared prefixes
/// or suffixes, keys that differ in one byte) must still spread over every
/// bucket: a multiplicative hash without a final mix leaves the low bits,
/// which pick the bucket, constant for big-endian counters, and inserts
/// degrade to a linear scan.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Bytes of a key kept inside its entry: keys up to this long (most keys)
/// cost no allocation of their own when a write is buffered, and none to
/// free when the batch is dropped, which happens on the committing thread.
const INLINE_KEY: usize = 30;

/// A buffered key, inside the entry when short, else in an allocation of
/// its own. Hashes and compares as its bytes, so the map is searched with a
/// plain `&[u8]`.
#[derive(Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl Key {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(b) => b,
        }
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes: `Borrow` requires the same hash.
        self.as_slice().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// One batch of writes, one entry per key (the last write wins). Each key
/// remembers when it first arrived, so a batch written in key order (the
/// common case) comes out sorted without a sort.
#[derive(Default, Debug)]
pub struct Batch {
    map: FastMap<Key, (u32, Value)>,
    next_seq: u32,
    /// Key and value bytes: what a commit writes.
    bytes: usize,
    /// What the batch holds in memory: `bytes` plus each entry's own cost.
    memory: usize,
}

/// Memory an entry costs beyond its key and value bytes: the key's own
/// allocation (when it is not inline), its slot in the hash table (whose load stays between half and
/// seven eighths), and for a value the shared handle to it and the header of
/// the Python `bytes` object that holds it. Small entries are mostly this:
/// counting payload alone let two million 20-byte entries hold over 400 MiB
/// while the buffer believed it held 40 MB.
const KEY_COST: usize = 16 + 2 * (std::mem::size_of::<(Key, (u32, Value))>() + 1);
const VALUE_COST: usize = 48 + 48;

fn entry_memory(key_len: usize, value: &Value) -> usize {
    key_len
        + KEY_COST
        + value
            .as_ref()
            .map_or(0, |v| (**v).as_ref().len() + VALUE_COST)
}

impl Batch {
    pub fn with_capacity(n: usize) -> Self {
        Batch {
            map: FastMap::with_capacity_and_hasher(n, Default::default()),
            next_seq: 0,
            bytes: 0,
            memory: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Key plus value bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Memory held, by the estimate of [`entry_memory`].
    pub fn memory(&self) -> usize {
        self.memory
    }

    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.map.get(key).map(|(_, v)| v)
    }

    pub fn insert(&mut self, key: &[u8], value: Value) {
        let add = value.as_ref().map_or(0, |v| (**v).as_ref().len());
        let add_memory = entry_memory(key.len(), &value);
        match self.map.get_mut(key) {
            Some((_, slot)) => {
                let old = slot.as_ref().map_or(0, |v| (**v).as_ref().len());
                let old_memory = entry_memory(key.len(), slot);
                *slot = value;
                self.bytes = self.bytes - old + add;
                self.memory = self.memory - old_memory + add_memory;
            }
            None => {
                self.bytes += key.len() + add;
                self.memory += add_memory;
                self.map.insert(Key::new(key), (self.next_seq, value));
                self.next_seq += 1;
            }
        }
    }

    /// Entries in ascending key order: the order LMDB writes fastest. Its
    /// lists grow with the batch, so their memory is asked for first: with
    /// none to be had, an error and nothing changed, never an abort.
    pub fn sorted(&self) -> Result<Sorted<'_>, TryReserveError> {
        // Arrival order first (sequence numbers are dense: no sort needed),
        // then a sort only if that is not already key order.
        let mut slots: Vec<Option<Op<'_>>> = Vec::new();
        slots.try_reserve_exact(self.next_seq as usize)?;
        slots.resize(self.next_seq as usize, None);
        for (k, (seq, v)) in &self.map {
            slots[*seq as usize] = Some((k.as_slice(), v.as_ref().map(|v| (**v).as_ref())));
        }
        let mut ops = Vec::new();
        ops.try_reserve_exact(self.map.len())?;
        ops.extend(slots.into_iter().flatten());
        Ok(Sorted::from_unique(ops))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Value)> {
        self.map.iter().map(|(k, (_, v))| (k.as_slice(), v))
    }

    /// Write `later`'s entries over this batch's, in their arrival order
    /// (sorted in `order`, which the caller empties first). The caller made
    /// room for them in both (see [`WriteBuffer::regroup`]): nothing here
    /// grows but the copy of a key too long to keep inline.
    fn merge_into_room<'b>(
        &mut self,
        later: &'b Batch,
        order: &mut Vec<(&'b Key, &'b Value, u32)>,
    ) {
        debug_assert!(order.is_empty() && order.capacity() >= later.len());
        order.extend(later.map.iter().map(|(k, (seq, v))| (k, v, *seq)));
        order.sort_unstable_by_key(|&(_, _, seq)| seq);
        for (k, v, _) in order.drain(..) {
            self.insert(k.as_slice(), v.clone());
        }
    }
}

/// What the buffer knows of one key.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Buffered value (pickle bytes).
    Value(Bytes),
    /// Buffered tombstone: the key is deleted.
    Deleted,
    /// The buffer does not know this key: ask the database.
    Unknown,
}

/// A store's buffered writes: `active` takes new writes; `inflight` holds
/// the batches handed to a commit, oldest first. Usually there is one; while
/// a background commit runs, full batches queue behind it, and the commit
/// takes them all in its next transaction (see `Core::start_commit`).
#[derive(Default, Debug)]
pub struct WriteBuffer {
    active: Batch,
    inflight: Vec<Arc<Batch>>,
    /// How many of the oldest `inflight` batches the commit under way writes.
    taken: usize,
    /// Entries a batch is expected to reach (the store's batch_size, capped).
    capacity: usize,
}

impl WriteBuffer {
    /// A buffer whose batches start with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        WriteBuffer {
            active: Batch::with_capacity(capacity),
            inflight: Vec::new(),
            taken: 0,
            capacity,
        }
    }

    pub fn lookup(&self, key: &[u8]) -> Lookup {
        let found = self
            .active
            .get(key)
            .or_else(|| self.inflight.iter().rev().find_map(|b| b.get(key)));
        match found {
            None => Lookup::Unknown,
            Some(None) => Lookup::Deleted,
            Some(Some(v)) => Lookup::Value(v.clone()),
        }
    }

    pub fn insert(&mut self, key: &[u8], value: Value) {
        self.active.insert(key, value);
    }

    /// Room for `more` new keys in `active` without growing it, or an error
    /// when there is no memory for it: inserting then cannot fail.
    pub fn try_reserve(&mut self, more: usize) -> Result<(), TryReserveError> {
        self.active.map.try_reserve(more)
    }

    /// Entries waiting in `active` (what the next commit will write).
    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    /// Memory the waiting entries hold (see [`Batch::memory`]).
    pub fn active_memory(&self) -> usize {
        self.active.memory()
    }

    /// Memory held by the batches handed to a commit.
    pub fn inflight_memory(&self) -> usize {
        self.inflight.iter().map(|b| b.memory()).sum()
    }

    /// Entries not yet committed: waiting plus being committed.
    pub fn pending(&self) -> usize {
        self.active.len() + self.inflight.iter().map(|b| b.len()).sum::<usize>()
    }

    pub fn has_inflight(&self) -> bool {
        !self.inflight.is_empty()
    }

    pub fn active(&self) -> &Batch {
        &self.active
    }

    /// Every batch, newest first: `active`, then those in flight. A key's
    /// first appearance in this order is its newest write.
    pub fn newest_first(&self) -> impl Iterator<Item = &Batch> {
        std::iter::once(&self.active).chain(self.inflight.iter().rev().map(|b| &**b))
    }

    /// The batches handed to a commit, oldest first (a later one's writes
    /// win over an earlier one's).
    pub fn inflight(&self) -> &[Arc<Batch>] {
        &self.inflight
    }

    /// Hand every buffered write to a commit: `active` goes behind the
    /// batches in flight, and the commit takes them all, oldest first
    /// (none: nothing to write). The caller holds the store's commit lock,
    /// so no other commit is under way: a batch still in flight is one that
    /// a failed commit had no memory to put back into `active` (see
    /// [`WriteBuffer::regroup`]), written again now with the rest.
    pub fn begin_commit(&mut self) -> Vec<Arc<Batch>> {
        self.regroup();
        self.enqueue();
        self.take_queued()
    }

    /// Queue `active` behind the batches in flight, for the commit under way
    /// to take next (see [`WriteBuffer::take_queued`]).
    pub fn enqueue(&mut self) {
        if !self.active.is_empty() {
            self.queue_active();
        }
    }

    fn queue_active(&mut self) -> Arc<Batch> {
        let fresh = Batch::with_capacity(self.capacity);
        let batch = Arc::new(std::mem::replace(&mut self.active, fresh));
        self.inflight.push(batch.clone());
        batch
    }

    /// Every batch in flight, taken by the next commit; empty when there
    /// is none. No commit is under way: the caller has just ended the one
    /// before (see [`WriteBuffer::end_commit`]), whose queued batches these
    /// are, or is [`WriteBuffer::begin_commit`].
    pub fn take_queued(&mut self) -> Vec<Arc<Batch>> {
        debug_assert_eq!(self.taken, 0, "the previous commit has ended");
        self.taken = self.inflight.len();
        self.inflight.clone()
    }

    /// The commit of the batches it took ended: forget them if they are in
    /// the database, else put every batch in flight back (see
    /// `commit_failed`). The batches forgotten are returned, so that the
    /// caller can free them after letting go of the lock it keeps this
    /// buffer under: freeing a batch's entries takes as long as many
    /// writes, which would wait for it.
    pub fn end_commit(&mut self, succeeded: bool) -> Vec<Arc<Batch>> {
        if succeeded {
            self.commit_succeeded()
        } else {
            self.commit_failed();
            Vec::new()
        }
    }

    /// The batches the commit took are in the database: forget them
    /// (returned, as in `end_commit`).
    pub fn commit_succeeded(&mut self) -> Vec<Arc<Batch>> {
        let n = std::mem::take(&mut self.taken).min(self.inflight.len());
        self.inflight.drain(..n).collect()
    }

    /// The commit did not write: put every batch in flight back under the
    /// writes that came after it, which are newer and win.
    pub fn commit_failed(&mut self) {
        self.taken = 0;
        self.regroup();
    }

    /// Make the batches in flight and `active` one batch again, in
    /// `active`, a later write of a key winning, so that reads and the
    /// next commit look in one table. The memory for that (a table of every
    /// key, the list that sorts one batch's entries) is asked for first:
    /// with none to be had, nothing changes and the batches stay in flight,
    /// where reads find the newest write of a key as they do while a commit
    /// runs, and the next commit takes them all ([`WriteBuffer::begin_commit`]).
    /// Never an abort for want of memory: a failed commit keeps every write.
    fn regroup(&mut self) {
        if self.inflight.is_empty() {
            return;
        }
        let total = self.active.len() + self.inflight.iter().map(|b| b.len()).sum::<usize>();
        let longest = (self.inflight.iter().map(|b| b.len()))
            .chain([self.active.len()])
            .max()
            .unwrap_or(0);
        // The oldest batch is the base: taken as it is when nothing else
        // holds it (the commit that failed has let go of it), else copied.
        let (mut merged, shared) = match Arc::try_unwrap(self.inflight.remove(0)) {
            Ok(batch) => (batch, None),
            Err(shared) => (Batch::with_capacity(0), Some(shared)),
        };
        let mut order = Vec::new();
        let room = order
            .try_reserve_exact(longest)
            .and_then(|()| merged.map.try_reserve(total - merged.len()));
        if room.is_err() {
            // As it was (the slot just emptied takes it back).
            let first = shared.unwrap_or_else(|| Arc::new(merged));
            self.inflight.insert(0, first);
            return;
        }
        let later = self.inflight.iter().map(|b| &**b).chain([&self.active]);
        for batch in shared.as_deref().into_iter().chain(later) {
            merged.merge_into_room(batch, &mut order);
        }
        drop(order);
        self.active = merged;
        self.inflight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> Value {
        Some(Arc::new(s.as_bytes().to_vec()))
    }

    /// The one batch a commit took.
    fn one(mut batches: Vec<Arc<Batch>>) -> Arc<Batch> {
        assert_eq!(batches.len(), 1);
        batches.pop().expect("one")
    }

    /// The newest buffered write of `key`: a value, a deletion (`Some(None)`),
    /// or none.
    fn newest(b: &WriteBuffer, key: &[u8]) -> Option<Option<Vec<u8>>> {
        match b.lookup(key) {
            Lookup::Value(v) => Some(Some((*v).as_ref().to_vec())),
            Lookup::Deleted => Some(None),
            Lookup::Unknown => None,
        }
    }

    fn found(b: &WriteBuffer, key: &[u8]) -> Option<Vec<u8>> {
        newest(b, key).flatten()
    }

    #[test]
    fn last_write_wins_and_bytes_track() {
        let mut b = WriteBuffer::default();
        b.insert(b"k", val("one"));
        b.insert(b"k", val("three"));
        assert_eq!(b.active_len(), 1);
        assert_eq!(b.active.bytes(), 1 + 5);
        assert_eq!(b.active_memory(), 1 + KEY_COST + 5 + VALUE_COST);
        b.insert(b"k", None);
        assert!(matches!(b.lookup(b"k"), Lookup::Deleted));
        assert_eq!(b.active.bytes(), 1);
        assert_eq!(b.active_memory(), 1 + KEY_COST);
        assert!(matches!(b.lookup(b"other"), Lookup::Unknown));
    }

    #[test]
    fn inflight_stays_readable_and_newer_wins() {
        let mut b = WriteBuffer::default();
        b.insert(b"a", val("1"));
        b.insert(b"b", val("2"));
        let batch = one(b.begin_commit());
        assert_eq!(batch.len(), 2);
        assert_eq!(b.active_len(), 0);
        assert_eq!(b.pending(), 2);
        assert_eq!(found(&b, b"a").as_deref(), Some(&b"1"[..]));
        b.insert(b"a", val("newer"));
        assert_eq!(found(&b, b"a").as_deref(), Some(&b"newer"[..]));
        drop(batch);
        b.commit_failed();
        assert!(!b.has_inflight());
        assert_eq!(b.active_len(), 2);
        assert_eq!(found(&b, b"a").as_deref(), Some(&b"newer"[..]));
        assert_eq!(found(&b, b"b").as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn queued_batches_are_read_newest_first_and_taken_together() {
        let mut b = WriteBuffer::default();
        b.insert(b"a", val("1"));
        b.insert(b"b", val("1"));
        let first = one(b.begin_commit());
        assert_eq!(first.len(), 2);
        b.insert(b"a", val("2"));
        b.insert(b"c", None);
        b.enqueue();
        b.insert(b"a", val("3"));
        b.enqueue();
        b.enqueue(); // nothing waiting: no empty batch queued
        assert_eq!(b.inflight().len(), 3);
        assert_eq!(b.active_len(), 0);
        // Counted per batch, as a key in two of them is written twice.
        assert_eq!(b.pending(), 5);
        assert_eq!(found(&b, b"a").as_deref(), Some(&b"3"[..]));
        assert_eq!(found(&b, b"b").as_deref(), Some(&b"1"[..]));
        assert!(matches!(b.lookup(b"c"), Lookup::Deleted));
        let newest: Vec<usize> = b.newest_first().map(|x| x.len()).collect();
        assert_eq!(newest, [0, 1, 2, 2]);
        // The first commit ends: only its batch is forgotten; the others
        // are taken for the next one, as one batch where the newest wins.
        assert_eq!(b.end_commit(true).len(), 1);
        let next = b.take_queued();
        assert!(next.len() == 2 && b.pending() == 3);
        assert_eq!(next[0].len(), 2);
        assert_eq!(b.end_commit(true).len(), 2);
        assert!(!b.has_inflight() && b.take_queued().is_empty());
    }

    #[test]
    fn a_failed_commit_puts_every_batch_back_under_newer_writes() {
        let mut b = WriteBuffer::default();
        b.insert(b"a", val("1"));
        b.insert(b"b", val("1"));
        b.insert(b"d", val("1"));
        let _first = one(b.begin_commit());
        b.insert(b"a", val("2"));
        b.insert(b"d", None);
        b.enqueue();
        b.insert(b"b", val("3"));
        b.insert(b"e", val("3"));
        assert!(b.end_commit(false).is_empty());
        assert!(!b.has_inflight());
        assert_eq!(b.active_len(), 4);
        assert_eq!(found(&b, b"a").as_deref(), Some(&b"2"[..]));
        assert_eq!(found(&b, b"b").as_deref(), Some(&b"3"[..]));
        assert!(matches!(b.lookup(b"d"), Lookup::Deleted));
        assert_eq!(found(&b, b"e").as_deref(), Some(&b"3"[..]));
        // The next commit starts from a clean slate.
        let again = one(b.begin_commit());
        assert_eq!(again.len(), 4);
        assert_eq!(b.end_commit(true).len(), 1);
        assert_eq!(b.pending(), 0);
    }

    /// Two batches in flight, the first being committed (returned) and the
    /// second queued behind it, with some of its keys, and newer writes
    /// waiting: 5,000 keys in each batch.
    fn two_batches_in_flight(b: &mut WriteBuffer) -> Arc<Batch> {
        for i in 0..5_000u32 {
            b.insert(&i.to_be_bytes(), val("first"));
        }
        let first = one(b.begin_commit());
        for i in 2_500..7_500u32 {
            b.insert(&i.to_be_bytes(), val("second"));
        }
        b.enqueue();
        for i in 7_000..7_010u32 {
            b.insert(&i.to_be_bytes(), None);
        }
        first
    }

    fn assert_newest_writes(b: &WriteBuffer) {
        for (i, want) in [
            (0, Some(Some(&b"first"[..]))),
            (2_499, Some(Some(b"first"))),
            (2_500, Some(Some(b"second"))),
            (6_999, Some(Some(b"second"))),
            (7_000, Some(None)),
            (7_009, Some(None)),
            (7_010, Some(Some(b"second"))),
            (7_500, None),
        ] {
            let got = newest(b, &u32::to_be_bytes(i));
            assert_eq!(got.as_ref().map(|v| v.as_deref()), want, "key {i}");
        }
    }

    #[test]
    fn a_failed_commit_with_no_memory_to_regroup_keeps_its_batches_for_the_next() {
        // The table of every key (7,500 of them) needs about 1 MiB, the
        // list that sorts a batch's entries 120 KiB: each limit refuses one.
        for limit in [64 << 10, 256 << 10] {
            let mut b = WriteBuffer::default();
            drop(two_batches_in_flight(&mut b));
            crate::test_alloc::failing_above(limit, || b.end_commit(false));
            // Nothing lost: the batches are still in flight, and reads find
            // the newest write of each key.
            assert_eq!(b.inflight().len(), 2, "limit {limit}");
            assert_newest_writes(&b);
            // The next commit, still short of memory, takes every batch,
            // oldest first, the newer writes last.
            b.insert(&9_000u32.to_be_bytes(), val("later"));
            let all = crate::test_alloc::failing_above(limit, || b.begin_commit());
            let lens: Vec<usize> = all.iter().map(|x| x.len()).collect();
            assert_eq!(lens, [5_000, 5_000, 11]);
            drop(all);
            // It fails too, with memory this time: one batch again.
            assert!(b.end_commit(false).is_empty());
            assert!(!b.has_inflight());
            assert_eq!(b.active_len(), 7_501);
            assert_newest_writes(&b);
            assert_eq!(one(b.begin_commit()).len(), 7_501);
            assert_eq!(b.end_commit(true).len(), 1);
            assert_eq!(b.pending(), 0);
        }
    }

    #[test]
    fn a_failed_commit_copies_a_batch_still_held_elsewhere() {
        let mut b = WriteBuffer::default();
        let taken = two_batches_in_flight(&mut b);
        // The first batch is still held (by `taken`): copied, not moved.
        assert!(b.end_commit(false).is_empty());
        assert!(!b.has_inflight());
        assert_eq!(b.active_len(), 7_500);
        assert_newest_writes(&b);
        assert_eq!(taken.len(), 5_000);
    }

    #[test]
    fn commit_success_forgets_batch() {
        let mut b = WriteBuffer::default();
        assert!(b.begin_commit().is_empty());
        b.insert(b"a", None);
        let _batch = one(b.begin_commit());
        b.commit_succeeded();
        assert_eq!(b.pending(), 0);
        assert!(matches!(b.lookup(b"a"), Lookup::Unknown));
    }

    #[test]
    fn sorted_keeps_last_write_in_any_arrival_order() {
        let mut b = Batch::with_capacity(4);
        b.insert(b"a", val("1"));
        b.insert(b"b", val("2"));
        b.insert(b"a", val("3"));
        let s = b.sorted().unwrap();
        assert_eq!(
            s.ops(),
            [(&b"a"[..], Some(&b"3"[..])), (&b"b"[..], Some(&b"2"[..]))]
        );
        b.insert(b"0", None);
        let keys: Vec<&[u8]> = b.sorted().unwrap().ops().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![&b"0"[..], b"a", b"b"]);
    }

    fn big_endian_u64(i: u64) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    fn big_endian_u32(i: u64) -> Vec<u8> {
        (i as u32).to_be_bytes().to_vec()
    }

    fn little_endian_u64(i: u64) -> Vec<u8> {
        i.to_le_bytes().to_vec()
    }

    fn long_common_prefix(i: u64) -> Vec<u8> {
        let mut k = vec![b'p'; 64];
        k.extend_from_slice(&i.to_be_bytes());
        k
    }

    fn long_common_suffix(i: u64) -> Vec<u8> {
        let mut k = i.to_be_bytes().to_vec();
        k.extend_from_slice(&[b's'; 64]);
        k
    }

    fn two_bytes_differ_in_the_middle(i: u64) -> Vec<u8> {
        let mut k = vec![0u8; 33];
        k[16] = i as u8;
        k[17] = (i >> 8) as u8;
        k
    }

    /// Key sets whose bytes vary only in a few positions must still spread
    /// over the table's buckets: probe lengths stay short, so inserts stay
    /// O(1). Counted through the hasher itself, not with a clock.
    #[test]
    fn hash_spreads_adversarial_key_shapes() {
        use std::hash::BuildHasher;
        let n: u64 = 1 << 14;
        let state = foldhash::fast::RandomState::default();
        for make in [
            big_endian_u64,
            big_endian_u32,
            little_endian_u64,
            long_common_prefix,
            long_common_suffix,
            two_bytes_differ_in_the_middle,
        ] {
            // The bucket index is the hash's low bits: count distinct ones.
            let mask = n - 1;
            let mut seen = std::collections::HashSet::new();
            for i in 0..n {
                seen.insert(state.hash_one(make(i).as_slice()) & mask);
            }
            // n random hashes into n buckets fill about 63% of them.
            assert!(
                seen.len() as u64 > n / 2,
                "{:?}...: {} of {n} buckets used",
                &make(1)[..8],
                seen.len()
            );
        }
    }

    /// Keys on both sides of the inline limit, and ones that differ only
    /// by trailing zero bytes, are found, replaced and sorted as bytes.
    #[test]
    fn short_and_long_keys_alike() {
        let mut b = Batch::default();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for len in [1, 2, INLINE_KEY - 1, INLINE_KEY, INLINE_KEY + 1, 200, 511] {
            keys.push(vec![b'k'; len]);
            let mut zeros = vec![b'k'; len];
            zeros.push(0);
            keys.push(zeros);
        }
        for (i, k) in keys.iter().enumerate() {
            b.insert(k, val(&format!("old{i}")));
        }
        for (i, k) in keys.iter().enumerate() {
            b.insert(k, val(&format!("v{i}")));
        }
        assert_eq!(b.len(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            let got = b.get(k).and_then(|v| v.as_ref()).map(|v| (**v).as_ref());
            assert_eq!(got, Some(format!("v{i}").as_bytes()));
        }
        assert!(b.get(&[b'k'; 3]).is_none());
        let sorted: Vec<&[u8]> = b.sorted().unwrap().ops().iter().map(|(k, _)| *k).collect();
        let mut want: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        want.sort();
        assert_eq!(sorted, want);
    }

    #[test]
    fn sorted_with_no_memory_for_its_lists_is_an_error() {
        let mut b = Batch::default();
        for i in 0..10_000u32 {
            b.insert(&i.to_be_bytes(), val("v"));
        }
        // Its lists hold 10,000 entries of 32 bytes.
        let failed =
            crate::test_alloc::failing_above(64 << 10, || b.sorted().map(|s| s.ops().len()));
        assert!(failed.is_err());
        assert_eq!(b.sorted().unwrap().ops().len(), 10_000);
    }

    #[test]
    fn sorted_is_ascending_bytes() {
        let mut b = Batch::default();
        for k in [&b"b"[..], b"a", b"\xff", b"ab", b"\x00"] {
            b.insert(k, None);
        }
        let keys: Vec<&[u8]> = b.sorted().unwrap().ops().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![&b"\x00"[..], b"a", b"ab", b"b", b"\xff"]);
    }

    #[test]
    fn writes_in_arrival_order_sort_with_the_last_write_winning() {
        let ops: Vec<Op<'_>> = vec![
            (b"b", Some(b"1")),
            (b"a", Some(b"2")),
            (b"b", None),
            (b"c", Some(b"3")),
            (b"b", Some(b"4")),
            (b"a", Some(b"5")),
        ];
        let sorted = Sorted::last_write_wins(ops);
        assert_eq!(
            sorted.ops(),
            [
                (&b"a"[..], Some(&b"5"[..])),
                (&b"b"[..], Some(&b"4"[..])),
                (&b"c"[..], Some(&b"3"[..])),
            ]
        );
        // In key order already: taken as it is.
        let ordered: Vec<Op<'_>> = vec![(b"a", None), (b"b", Some(b"1"))];
        assert_eq!(Sorted::last_write_wins(ordered.clone()).ops(), &ordered[..]);
        assert!(Sorted::last_write_wins(Vec::new()).is_empty());
    }
}
