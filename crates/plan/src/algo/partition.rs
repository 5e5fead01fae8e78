//! Arithmetic the generators share: even splits of element ranges (blocks per rank,
//! pieces per pipeline chunk, shares per channel; parts differ by at most one element,
//! larger ones first) and rank arithmetic modulo the world size.

use crate::ir::Rank;

/// Offset and length of part `i` of `n` elements split into `parts` parts.
pub fn split(n: u64, parts: u64, i: u64) -> (u64, u64) {
    debug_assert!(parts > 0 && i < parts);
    let base = n / parts;
    let extra = n % parts;
    let off = i * base + i.min(extra);
    let len = base + u64::from(i < extra);
    (off, len)
}

/// The pieces of the range `[off, off + len)` cut into `k` parts, as (offset, length).
pub fn pieces(off: u64, len: u64, k: u32) -> impl Iterator<Item = (u64, u64)> {
    let k = k.max(1) as u64;
    (0..k).map(move |j| {
        let (o, l) = split(len, k, j);
        (off + o, l)
    })
}

/// `⌈lg p⌉`, the rounds of the log-round algorithms (0 for `p ≤ 1`).
pub(crate) fn ceil_log2(p: u32) -> u32 {
    if p <= 1 {
        0
    } else {
        32 - (p - 1).leading_zeros()
    }
}

/// `(rank + k) mod p` without overflow for any world size.
pub(crate) fn fwd(rank: Rank, k: u64, p: u32) -> Rank {
    ((rank as u64 + k) % p as u64) as Rank
}

/// `(rank − k) mod p` without overflow for any world size.
pub(crate) fn back(rank: Rank, k: u64, p: u32) -> Rank {
    let p = p as u64;
    ((rank as u64 + p - k % p) % p) as Rank
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_exactly() {
        for n in 0..50u64 {
            for parts in 1..9u64 {
                let mut next = 0;
                for i in 0..parts {
                    let (o, l) = split(n, parts, i);
                    assert_eq!(o, next);
                    assert!(l == n / parts || l == n / parts + 1);
                    next = o + l;
                }
                assert_eq!(next, n);
            }
        }
        let v: Vec<_> = pieces(10, 7, 3).collect();
        assert_eq!(v, vec![(10, 3), (13, 2), (15, 2)]);
    }
}
