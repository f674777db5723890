//! Key ranges: the half-open `[lower, upper)` range a scan walks, built
//! from a prefix and start/stop bounds, and the ordered walk of a range in
//! one read transaction, resumed after the last key of the walk before.

use crate::env::{ReadTxn, Seek};
use crate::MAX_KEY_SIZE;

/// A half-open key range `[lower, upper)`; `None` is unbounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    pub lower: Option<Vec<u8>>,
    pub upper: Option<Vec<u8>>,
}

/// The smallest key greater than every key with this prefix, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Stored keys are at most 511 bytes, and LMDB cannot seek with a longer
/// one. For a longer bound `b` with `t = b[..511]`, a stored key `k` is
/// `< b` exactly when `k <= t`, that is when `k < prefix_end(t)`.
fn clamp_upper(b: Vec<u8>) -> Option<Vec<u8>> {
    if b.len() <= MAX_KEY_SIZE {
        return Some(b);
    }
    prefix_end(&b[..MAX_KEY_SIZE])
}

/// `k >= b` exactly when `k > t`, that is when `k >= prefix_end(t)`; with
/// no such key the range is empty (an empty upper bound says so).
fn clamp_lower(b: Vec<u8>) -> Vec<u8> {
    if b.len() <= MAX_KEY_SIZE {
        return b;
    }
    prefix_end(&b[..MAX_KEY_SIZE]).unwrap_or_else(|| vec![0xff; MAX_KEY_SIZE + 1])
}

impl Bounds {
    pub fn new(prefix: Option<Vec<u8>>, start: Option<Vec<u8>>, stop: Option<Vec<u8>>) -> Self {
        let mut lower = start.filter(|s| !s.is_empty()).map(clamp_lower);
        // `Some(None)` from clamp_upper: no stored key reaches the bound.
        let mut upper = stop.and_then(clamp_upper);
        if let Some(p) = prefix.filter(|p| !p.is_empty()) {
            if lower.as_ref().is_none_or(|l| *l < p) {
                lower = Some(p.clone());
            }
            if let Some(end) = prefix_end(&p) {
                if upper.as_ref().is_none_or(|u| *u > end) {
                    upper = Some(end);
                }
            }
        }
        Bounds { lower, upper }
    }

    pub fn is_unbounded(&self) -> bool {
        self.lower.is_none() && self.upper.is_none()
    }

    pub fn is_empty(&self) -> bool {
        match (&self.lower, &self.upper) {
            (_, Some(u)) if u.is_empty() => true,
            (Some(l), _) if l.len() > MAX_KEY_SIZE => true,
            (Some(l), Some(u)) => l >= u,
            _ => false,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.lower.as_deref().is_none_or(|l| key >= l)
            && self.upper.as_deref().is_none_or(|u| key < u)
    }

    /// Walk the range in `txn` from after `last` (or from the start),
    /// calling `f` on each entry until it returns false.
    pub fn walk<'t>(
        &self,
        txn: &'t ReadTxn<'_>,
        reverse: bool,
        last: Option<&[u8]>,
        mut f: impl FnMut(&'t [u8], &'t [u8]) -> bool,
    ) -> crate::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        if !reverse {
            let (seek, from): (Seek, &[u8]) = match (last, &self.lower) {
                (Some(l), _) => (Seek::AtOrAfter, l),
                (None, Some(lo)) => (Seek::AtOrAfter, lo),
                (None, None) => (Seek::First, b""),
            };
            txn.scan(seek, from, false, |k, v| {
                if last == Some(k) {
                    return true;
                }
                if self.lower.as_deref().is_some_and(|lo| k < lo) {
                    return true;
                }
                if self.upper.as_deref().is_some_and(|u| k >= u) {
                    return false;
                }
                f(k, v)
            })
        } else {
            let (seek, from): (Seek, &[u8]) = match (last, &self.upper) {
                (Some(l), _) => (Seek::AtOrAfter, l),
                (None, Some(up)) => (Seek::AtOrAfter, up),
                (None, None) => (Seek::Last, b""),
            };
            txn.scan(seek, from, true, |k, v| {
                if self.lower.as_deref().is_some_and(|lo| k < lo) {
                    return false;
                }
                f(k, v)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn long_bounds_clamp_to_stored_key_space() {
        let long = vec![b'a'; 600];
        let b = Bounds::new(None, None, Some(long.clone()));
        assert!(b.contains(&long[..511]));
        assert!(!b.contains(b"b"));
        let b = Bounds::new(None, Some(long.clone()), None);
        assert!(!b.contains(&long[..511]));
        assert!(b.contains(b"b"));
        let ff = vec![0xffu8; 600];
        assert!(Bounds::new(None, Some(ff.clone()), None).is_empty());
        assert!(Bounds::new(None, None, Some(ff)).is_unbounded());
    }

    #[test]
    fn bounds_intersect_prefix() {
        let b = Bounds::new(
            Some(b"k".to_vec()),
            Some(b"a".to_vec()),
            Some(b"z".to_vec()),
        );
        assert_eq!(b.lower.as_deref(), Some(&b"k"[..]));
        assert_eq!(b.upper.as_deref(), Some(&b"l"[..]));
        assert!(b.contains(b"k1"));
        assert!(!b.contains(b"l"));
        let e = Bounds::new(None, Some(b"b".to_vec()), Some(b"a".to_vec()));
        assert!(e.is_empty());
        assert!(Bounds::new(Some(Vec::new()), None, None).is_unbounded());
    }
}
