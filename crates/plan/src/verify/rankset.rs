//! Sets of ranks as sorted, disjoint, non-adjacent intervals: the contributors of a
//! symbolic value. Rings, trees and recursive algorithms combine contiguous ranges of
//! ranks, so these stay a handful of intervals even for large worlds.

use std::fmt;

use smallvec::SmallVec;

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct RankSet(SmallVec<[(u32, u32); 2]>);

impl RankSet {
    pub fn single(r: u32) -> Self {
        RankSet(smallvec::smallvec![(r, r + 1)])
    }

    pub fn range(lo: u32, hi: u32) -> Self {
        if lo >= hi {
            RankSet::default()
        } else {
            RankSet(smallvec::smallvec![(lo, hi)])
        }
    }

    pub fn len(&self) -> u64 {
        self.0.iter().map(|(a, b)| (b - a) as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, r: u32) -> bool {
        self.0.iter().any(|&(a, b)| a <= r && r < b)
    }

    /// The union of two disjoint sets; `Err(rank)` names a rank in both.
    pub fn union_disjoint(&self, other: &RankSet) -> Result<RankSet, u32> {
        let (a, b) = (&self.0, &other.0);
        let mut out: SmallVec<[(u32, u32); 2]> = SmallVec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let take_a = j == b.len() || (i < a.len() && a[i].0 < b[j].0);
            let iv = if take_a {
                i += 1;
                a[i - 1]
            } else {
                j += 1;
                b[j - 1]
            };
            match out.last_mut() {
                Some(last) if iv.0 < last.1 => return Err(iv.0.max(last.0)),
                Some(last) if iv.0 == last.1 => last.1 = iv.1,
                _ => out.push(iv),
            }
        }
        Ok(RankSet(out))
    }

    /// The union of two sets (overlap allowed).
    pub fn union(&self, other: &RankSet) -> RankSet {
        let mut all: Vec<(u32, u32)> = self.0.iter().chain(other.0.iter()).copied().collect();
        all.sort_unstable();
        let mut out: SmallVec<[(u32, u32); 2]> = SmallVec::new();
        for iv in all {
            match out.last_mut() {
                Some(last) if iv.0 <= last.1 => last.1 = last.1.max(iv.1),
                _ => out.push(iv),
            }
        }
        RankSet(out)
    }

    /// The smallest rank of `0..world` not in the set.
    pub fn first_missing(&self, world: u32) -> Option<u32> {
        let mut next = 0;
        for &(a, b) in &self.0 {
            if a > next {
                break;
            }
            next = next.max(b);
        }
        (next < world).then_some(next)
    }
}

impl fmt::Debug for RankSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for RankSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, &(a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if b == a + 1 {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{}", b - 1)?;
            }
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unions() {
        let a = RankSet::range(0, 3);
        let b = RankSet::single(3);
        let c = a.union_disjoint(&b).unwrap();
        assert_eq!(c, RankSet::range(0, 4));
        assert_eq!(c.union_disjoint(&RankSet::single(2)), Err(2));
        let d = RankSet::single(7)
            .union_disjoint(&RankSet::single(5))
            .unwrap();
        assert_eq!(d.to_string(), "{5,7}");
        assert_eq!(d.union(&RankSet::range(4, 7)), RankSet::range(4, 8));
        assert_eq!(RankSet::range(0, 4).first_missing(4), None);
        assert_eq!(d.first_missing(8), Some(0));
        assert_eq!(RankSet::range(0, 2).first_missing(4), Some(2));
        assert_eq!(
            RankSet::range(1, 3).union_disjoint(&RankSet::range(0, 2)),
            Err(1)
        );
    }
}
