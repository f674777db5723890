//! Putting many keys in ascending byte order: the order in which
//! [`Ascending`](crate::Ascending) reads them fastest.
//!
//! Each key goes in with its first 16 bytes as a number (its head, see
//! [`key_head`]), so most comparisons are of two numbers. A comparison sort
//! still compares each key about log2(n) times; a radix sort over the bytes
//! of the heads touches each key once per byte, and only the bytes that are
//! not the same in every head (keys made by a program share most of theirs:
//! `key:00012345` and its neighbours differ in their last five bytes).

/// A key's first 16 bytes as a big-endian number, zero-padded: heads order
/// as the keys do, except that keys with equal heads (one is the other
/// padded with zero bytes, or both longer than 16 bytes with the same 16
/// first) need their bytes compared.
pub fn key_head(key: &[u8]) -> u128 {
    let mut head = [0u8; 16];
    let n = key.len().min(16);
    head[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(head)
}

/// Below this many keys a comparison sort is as fast and needs no second
/// vector.
const RADIX_MIN: usize = 256;

/// Sort `(head, key, tag)` entries by key bytes, ascending; `head` must be
/// [`key_head`]`(key)`. Entries with equal keys end up next to each other,
/// in no particular order.
pub fn sort_by_key<T: Copy>(items: &mut Vec<(u128, &[u8], T)>) {
    if items.len() < RADIX_MIN || !radix_sort_heads(items, |e| e.0) {
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        return;
    }
    // The heads are in order; a run of equal heads is ordered by the keys.
    let mut start = 0;
    while start < items.len() {
        let head = items[start].0;
        let mut end = start + 1;
        while end < items.len() && items[end].0 == head {
            end += 1;
        }
        if end - start > 1 {
            items[start..end].sort_unstable_by(|a, b| a.1.cmp(b.1));
        }
        start = end;
    }
}

/// Least-significant-byte-first radix sort on the heads, skipping the bytes
/// every head shares. Each pass is stable, so after the most significant
/// byte the heads are in order. False, with `items` as they were, when
/// there is no memory for the second vector the passes need (as large as
/// `items`): a comparison sort, which needs none, takes over.
fn radix_sort_heads<I: Copy>(items: &mut Vec<I>, head: impl Fn(&I) -> u128) -> bool {
    let first = head(&items[0]);
    let differ = items.iter().fold(0u128, |acc, it| acc | (head(it) ^ first));
    let shifts: Vec<u32> = (0..16u32)
        .map(|b| 8 * b)
        .filter(|s| (differ >> s) & 0xff != 0)
        .collect();
    if shifts.is_empty() {
        return true;
    }
    // Every pass's counts in one read of the heads.
    let mut counts = vec![[0usize; 256]; shifts.len()];
    for it in items.iter() {
        let h = head(it);
        for (c, s) in counts.iter_mut().zip(&shifts) {
            c[((h >> s) & 0xff) as usize] += 1;
        }
    }
    // Every slot of `dst` is written by each pass before it is read.
    let mut dst = Vec::new();
    if dst.try_reserve_exact(items.len()).is_err() {
        return false;
    }
    dst.extend_from_slice(items);
    let mut src = std::mem::take(items);
    for (c, s) in counts.iter_mut().zip(&shifts) {
        // Counts become the index where each byte value's entries start.
        let mut at = 0;
        for slot in c.iter_mut() {
            let n = *slot;
            *slot = at;
            at += n;
        }
        for it in &src {
            let b = ((head(it) >> s) & 0xff) as usize;
            dst[c[b]] = *it;
            c[b] += 1;
        }
        std::mem::swap(&mut src, &mut dst);
    }
    *items = src;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(keys: &[Vec<u8>]) {
        let mut items: Vec<(u128, &[u8], usize)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (key_head(k), &k[..], i))
            .collect();
        sort_by_key(&mut items);
        let got: Vec<&[u8]> = items.iter().map(|e| e.1).collect();
        let mut want: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        want.sort();
        assert_eq!(got, want);
        // Every entry is still there, once.
        let mut tags: Vec<usize> = items.iter().map(|e| e.2).collect();
        tags.sort_unstable();
        assert_eq!(tags, (0..keys.len()).collect::<Vec<_>>());
        for e in &items {
            assert_eq!(keys[e.2], e.1);
        }
    }

    /// A small deterministic generator, so the shapes below need no crate.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn counters_shuffled() {
        let mut seed = 7;
        let mut keys: Vec<Vec<u8>> = (0..5000)
            .map(|i| format!("key:{i:08}").into_bytes())
            .collect();
        for i in (1..keys.len()).rev() {
            keys.swap(i, lcg(&mut seed) as usize % (i + 1));
        }
        check(&keys);
    }

    #[test]
    fn long_shared_heads_zero_padding_and_repeats() {
        let mut seed = 3;
        let mut keys = Vec::new();
        for _ in 0..3000 {
            let r = lcg(&mut seed);
            let k = match r % 6 {
                // Longer than a head, differing after it.
                0 => format!("a-long-common-head/{}", r % 97).into_bytes(),
                // Shorter than a head, and the same padded with zeros.
                1 => vec![b'k'; (r % 5) as usize + 1],
                2 => {
                    let mut k = vec![b'k'; (r % 5) as usize + 1];
                    k.push(0);
                    k
                }
                3 => (r as u32).to_be_bytes().to_vec(),
                4 => vec![0xff; (r % 40) as usize + 1],
                _ => (r % 300).to_le_bytes().to_vec(),
            };
            keys.push(k);
        }
        check(&keys);
    }

    #[test]
    fn small_all_equal_and_empty() {
        check(&[]);
        check(&[b"b".to_vec(), b"a".to_vec(), b"a".to_vec()]);
        check(&vec![b"same".to_vec(); 1000]);
        let bytes: Vec<Vec<u8>> = (0..=255u8).rev().chain(0..=255).map(|b| vec![b]).collect();
        check(&bytes);
    }

    #[test]
    fn with_no_memory_for_a_second_vector_it_sorts_in_place() {
        let keys: Vec<Vec<u8>> = (0..20_000u32)
            .map(|i| {
                (i.wrapping_mul(2_654_435_761) % 50_000)
                    .to_be_bytes()
                    .to_vec()
            })
            .collect();
        let entries = || -> Vec<(u128, &[u8], usize)> {
            keys.iter()
                .enumerate()
                .map(|(i, k)| (key_head(k), &k[..], i))
                .collect()
        };
        let mut want = entries();
        sort_by_key(&mut want);
        let mut got = entries();
        // The radix passes' second vector is 640,000 bytes.
        crate::test_alloc::failing_above(64 << 10, || sort_by_key(&mut got));
        let order = |v: &[(u128, &[u8], usize)]| v.iter().map(|e| e.1.to_vec()).collect::<Vec<_>>();
        assert_eq!(order(&got), order(&want));
        assert!(got.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
