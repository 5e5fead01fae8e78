//! Symbolic buffer contents: a buffer is a map from element ranges to symbolic values, and
//! a value says "element `position + delta` of the inputs of these ranks, reduced".
//! Adjacent equal values merge, so the cost of the verifier follows the number of distinct
//! partial results, not the element count.

use std::collections::BTreeMap;
use std::fmt;

use smallvec::SmallVec;

use super::rankset::RankSet;

/// The symbolic content of one element range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    /// Never written.
    Undef,
    /// The reduction over `ranks` of input element `position + delta`.
    Sym { delta: i64, ranks: RankSet },
}

impl Val {
    pub fn shifted(&self, by: i64) -> Val {
        match self {
            Val::Undef => Val::Undef,
            Val::Sym { delta, ranks } => Val::Sym {
                delta: delta + by,
                ranks: ranks.clone(),
            },
        }
    }

    /// Describes the value at relative position `at` for error messages.
    pub fn describe(&self, at: u64) -> String {
        match self {
            Val::Undef => "nothing (never written)".into(),
            Val::Sym { delta, ranks } if ranks.len() == 1 => {
                format!("input element {} of rank {ranks}", at as i64 + delta)
            }
            Val::Sym { delta, ranks } => {
                format!(
                    "the reduction of input element {} over ranks {ranks}",
                    at as i64 + delta
                )
            }
        }
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(0))
    }
}

/// Pieces of a slice, in order, each `(len, value)` with `delta` relative to the slice's
/// first element.
pub type Pieces = SmallVec<[(u64, Val); 2]>;

/// One buffer, fully covered by segments `start -> (end, value)`.
#[derive(Debug, Default)]
pub struct SegMap {
    segs: BTreeMap<u64, (u64, Val)>,
}

impl SegMap {
    pub fn new(len: u64, init: Val) -> Self {
        let mut segs = BTreeMap::new();
        if len > 0 {
            segs.insert(0, (len, init));
        }
        SegMap { segs }
    }

    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    /// Splits so that a segment starts at `at` (inside the covered range).
    fn split_at(&mut self, at: u64) {
        let found = self
            .segs
            .range(..at)
            .next_back()
            .map(|(s, (e, _))| (*s, *e));
        if let Some((start, end)) = found {
            if at < end {
                let seg = self.segs.get_mut(&start).expect("segment");
                seg.0 = at;
                let v = seg.1.clone();
                self.segs.insert(at, (end, v));
            }
        }
    }

    /// The contents of `[off, off + len)` relative to `off`.
    pub fn read(&self, off: u64, len: u64) -> Pieces {
        let end = off + len;
        let mut out = Pieces::new();
        if len == 0 {
            return out;
        }
        let first = self
            .segs
            .range(..=off)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(off);
        for (&s, (e, v)) in self.segs.range(first..end) {
            let a = s.max(off);
            let b = (*e).min(end);
            if a < b {
                out.push((b - a, v.shifted(off as i64)));
            }
        }
        out
    }

    /// Overwrites `[off, off + total)` with `pieces` (relative to `off`).
    pub fn write(&mut self, off: u64, pieces: &Pieces) {
        let total: u64 = pieces.iter().map(|(l, _)| *l).sum();
        if total == 0 {
            return;
        }
        let end = off + total;
        self.split_at(off);
        self.split_at(end);
        let doomed: Vec<u64> = self.segs.range(off..end).map(|(s, _)| *s).collect();
        for s in doomed {
            self.segs.remove(&s);
        }
        let mut pos = off;
        for (len, v) in pieces {
            if *len == 0 {
                continue;
            }
            self.segs.insert(pos, (pos + len, v.shifted(-(off as i64))));
            self.merge_left(pos);
            pos += len;
        }
        self.merge_left(end);
    }

    /// Merges the segment starting at `at` into its left neighbour when they hold the same
    /// value (same delta and ranks, or both undefined).
    fn merge_left(&mut self, at: u64) {
        let Some((right_end, right_v)) = self.segs.get(&at).cloned() else {
            return;
        };
        let left = self
            .segs
            .range(..at)
            .next_back()
            .map(|(s, (e, v))| (*s, *e, v.clone()));
        if let Some((ls, le, lv)) = left {
            if le == at && lv == right_v {
                self.segs.remove(&at);
                self.segs.insert(ls, (right_end, lv));
            }
        }
    }
}

/// Combines two piece lists element-wise (`a ⊕ b`): both must hold the same input element
/// at every position and come from disjoint ranks.
pub fn combine(a: &Pieces, b: &Pieces) -> Result<Pieces, String> {
    let mut out = Pieces::new();
    let (mut i, mut j) = (0, 0);
    let (mut used_a, mut used_b) = (0u64, 0u64);
    let mut pos = 0u64;
    while i < a.len() && j < b.len() {
        let (la, va) = (&a[i].0, &a[i].1);
        let (lb, vb) = (&b[j].0, &b[j].1);
        let step = (la - used_a).min(lb - used_b);
        let v = match (va, vb) {
            (
                Val::Sym {
                    delta: da,
                    ranks: ra,
                },
                Val::Sym {
                    delta: db,
                    ranks: rb,
                },
            ) => {
                if da != db {
                    return Err(format!(
                        "combines {} with {}: a reduction must combine the same element \
                         index",
                        va.describe(pos),
                        vb.describe(pos)
                    ));
                }
                let ranks = ra.union_disjoint(rb).map_err(|r| {
                    format!(
                        "combines {} with {}: rank {r}'s contribution would be counted twice",
                        va.describe(pos),
                        vb.describe(pos)
                    )
                })?;
                Val::Sym { delta: *da, ranks }
            }
            _ => {
                return Err(format!(
                    "combines {} with {}",
                    va.describe(pos),
                    vb.describe(pos)
                ))
            }
        };
        match out.last_mut() {
            Some((l, last)) if *last == v => *l += step,
            _ => out.push((step, v)),
        }
        pos += step;
        used_a += step;
        used_b += step;
        if used_a == *la {
            i += 1;
            used_a = 0;
        }
        if used_b == *lb {
            j += 1;
            used_b = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(delta: i64, r: u32) -> Val {
        Val::Sym {
            delta,
            ranks: RankSet::single(r),
        }
    }

    #[test]
    fn read_write_merge() {
        let mut m = SegMap::new(10, Val::Undef);
        // Element x of buffer holds input element x of rank 0 on [2, 6).
        let p: Pieces = smallvec::smallvec![(4, sym(2, 0))];
        m.write(2, &p);
        assert_eq!(m.segments(), 3);
        let r = m.read(3, 2);
        assert_eq!(r.as_slice(), &[(2, sym(3, 0))]);
        // Writing the continuation merges segments.
        let q: Pieces = smallvec::smallvec![(2, sym(6, 0))];
        m.write(6, &q);
        assert_eq!(m.segments(), 3);
        assert_eq!(m.read(0, 10).len(), 3);
        assert_eq!(m.read(2, 6).as_slice(), &[(6, sym(2, 0))]);
    }

    #[test]
    fn combine_checks() {
        let a: Pieces = smallvec::smallvec![(3, sym(0, 0)), (2, sym(0, 1))];
        let b: Pieces = smallvec::smallvec![(5, sym(0, 2))];
        let c = combine(&a, &b).unwrap();
        assert_eq!(c.len(), 2);
        let d = combine(&a, &a).unwrap_err();
        assert!(d.contains("counted twice"), "{d}");
        let e: Pieces = smallvec::smallvec![(5, sym(1, 3))];
        assert!(combine(&a, &e).unwrap_err().contains("same element"));
    }
}
