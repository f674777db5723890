//! The write buffer: pickled values and tombstones waiting for a commit.
//!
//! It has two parts. `active` takes new writes. `inflight` is the batch a
//! commit is writing right now: it stays readable until the commit succeeds,
//! so a reader in another thread never misses an acknowledged write, and it is
//! merged back under `active` if the commit fails, so nothing is lost.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
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

/// FxHash-style hasher: keys are short byte strings chosen by the program
/// (not by an attacker trying to collide them), so a fast multiplicative
/// hash beats SipHash here.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            h = (h.rotate_left(5) ^ w).wrapping_mul(SEED);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut tail = [0u8; 8];
            tail[..rest.len()].copy_from_slice(rest);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(SEED);
        }
        self.0 = h;
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(SEED);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// One batch of writes, one entry per key (the last write wins). Each key
/// remembers when it first arrived, so a batch written in key order (the
/// common case) comes out sorted without a sort.
#[derive(Default, Debug)]
pub struct Batch {
    map: FastMap<Box<[u8]>, (u32, Value)>,
    next_seq: u32,
    bytes: usize,
}

impl Batch {
    pub fn with_capacity(n: usize) -> Self {
        Batch {
            map: FastMap::with_capacity_and_hasher(n, Default::default()),
            next_seq: 0,
            bytes: 0,
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

    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.map.get(key).map(|(_, v)| v)
    }

    pub fn insert(&mut self, key: &[u8], value: Value) {
        let add = value.as_ref().map_or(0, |v| (**v).as_ref().len());
        match self.map.get_mut(key) {
            Some((_, slot)) => {
                let old = slot.as_ref().map_or(0, |v| (**v).as_ref().len());
                *slot = value;
                self.bytes = self.bytes - old + add;
            }
            None => {
                self.bytes += key.len() + add;
                self.map.insert(key.into(), (self.next_seq, value));
                self.next_seq += 1;
            }
        }
    }

    /// Entries in ascending key order: the order LMDB writes fastest.
    pub fn sorted(&self) -> Vec<Op<'_>> {
        // Arrival order first (sequence numbers are dense: no sort needed),
        // then a sort only if that is not already key order.
        let mut slots: Vec<Option<Op<'_>>> = vec![None; self.next_seq as usize];
        for (k, (seq, v)) in &self.map {
            slots[*seq as usize] = Some((&k[..], v.as_ref().map(|v| (**v).as_ref())));
        }
        let mut v: Vec<Op<'_>> = slots.into_iter().flatten().collect();
        if !v.windows(2).all(|w| w[0].0 < w[1].0) {
            v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        v
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Value)> {
        self.map.iter().map(|(k, (_, v))| (&k[..], v))
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

#[derive(Default, Debug)]
pub struct WriteBuffer {
    active: Batch,
    inflight: Option<Arc<Batch>>,
    /// Entries a batch is expected to reach (the store's batch_size, capped).
    capacity: usize,
}

impl WriteBuffer {
    /// A buffer whose batches start with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        WriteBuffer {
            active: Batch::with_capacity(capacity),
            inflight: None,
            capacity,
        }
    }

    pub fn lookup(&self, key: &[u8]) -> Lookup {
        let found = self
            .active
            .get(key)
            .or_else(|| self.inflight.as_ref().and_then(|b| b.get(key)));
        match found {
            None => Lookup::Unknown,
            Some(None) => Lookup::Deleted,
            Some(Some(v)) => Lookup::Value(v.clone()),
        }
    }

    pub fn insert(&mut self, key: &[u8], value: Value) {
        self.active.insert(key, value);
    }

    /// Entries waiting in `active` (what the next commit will write).
    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    pub fn active_bytes(&self) -> usize {
        self.active.bytes()
    }

    /// Entries not yet committed: waiting plus being committed.
    pub fn pending(&self) -> usize {
        self.active.len() + self.inflight.as_ref().map_or(0, |b| b.len())
    }

    pub fn has_inflight(&self) -> bool {
        self.inflight.is_some()
    }

    pub fn active(&self) -> &Batch {
        &self.active
    }

    pub fn inflight(&self) -> Option<&Arc<Batch>> {
        self.inflight.as_ref()
    }

    /// Move `active` into the in-flight slot for a commit. The caller holds
    /// the store's commit lock, so no other batch is in flight.
    pub fn begin_commit(&mut self) -> Option<Arc<Batch>> {
        debug_assert!(self.inflight.is_none(), "one batch in flight at a time");
        if self.active.is_empty() {
            return None;
        }
        let fresh = Batch::with_capacity(self.capacity);
        let batch = Arc::new(std::mem::replace(&mut self.active, fresh));
        self.inflight = Some(batch.clone());
        Some(batch)
    }

    /// The commit of the in-flight batch ended: forget the batch if it is in
    /// the database, else put it back (see `commit_failed`).
    pub fn end_commit(&mut self, succeeded: bool) {
        if succeeded {
            self.commit_succeeded();
        } else {
            self.commit_failed();
        }
    }

    /// The in-flight batch is in the database: forget it.
    pub fn commit_succeeded(&mut self) {
        self.inflight = None;
    }

    /// The in-flight batch was not written: put it back under the writes that
    /// came after it, which are newer and win.
    pub fn commit_failed(&mut self) {
        let Some(batch) = self.inflight.take() else {
            return;
        };
        let newer = std::mem::replace(
            &mut self.active,
            Arc::try_unwrap(batch).unwrap_or_else(|shared| {
                let mut copy = Batch::default();
                for (k, v) in shared.iter() {
                    copy.insert(k, v.clone());
                }
                copy
            }),
        );
        for (k, v) in newer.iter() {
            self.active.insert(k, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> Value {
        Some(Arc::new(s.as_bytes().to_vec()))
    }

    fn found(b: &WriteBuffer, key: &[u8]) -> Option<Vec<u8>> {
        match b.lookup(key) {
            Lookup::Value(v) => Some((*v).as_ref().to_vec()),
            _ => None,
        }
    }

    #[test]
    fn last_write_wins_and_bytes_track() {
        let mut b = WriteBuffer::default();
        b.insert(b"k", val("one"));
        b.insert(b"k", val("three"));
        assert_eq!(b.active_len(), 1);
        assert_eq!(b.active_bytes(), 1 + 5);
        b.insert(b"k", None);
        assert!(matches!(b.lookup(b"k"), Lookup::Deleted));
        assert_eq!(b.active_bytes(), 1);
        assert!(matches!(b.lookup(b"other"), Lookup::Unknown));
    }

    #[test]
    fn inflight_stays_readable_and_newer_wins() {
        let mut b = WriteBuffer::default();
        b.insert(b"a", val("1"));
        b.insert(b"b", val("2"));
        let batch = b.begin_commit().expect("a batch");
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
    fn commit_success_forgets_batch() {
        let mut b = WriteBuffer::default();
        assert!(b.begin_commit().is_none());
        b.insert(b"a", None);
        let _batch = b.begin_commit().expect("a batch");
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
        let s = b.sorted();
        assert_eq!(
            s,
            vec![(&b"a"[..], Some(&b"3"[..])), (&b"b"[..], Some(&b"2"[..]))]
        );
        b.insert(b"0", None);
        let keys: Vec<&[u8]> = b.sorted().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![&b"0"[..], b"a", b"b"]);
    }

    #[test]
    fn sorted_is_ascending_bytes() {
        let mut b = Batch::default();
        for k in [&b"b"[..], b"a", b"\xff", b"ab", b"\x00"] {
            b.insert(k, None);
        }
        let keys: Vec<&[u8]> = b.sorted().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![&b"\x00"[..], b"a", b"ab", b"b", b"\xff"]);
    }
}
