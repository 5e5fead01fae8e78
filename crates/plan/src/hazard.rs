//! Dependencies derived from program order: an op depends on every earlier op of its rank
//! that touches overlapping elements when at least one of the two writes them (read after
//! write, write after read, write after write). Every executor — the verifier, the reference
//! executor, the runtime — derives the same dependency graph from the same program.
//!
//! The tracker keeps, per buffer, a map of element ranges to the last writer and the readers
//! since; its size is bounded by the number of distinct slice boundaries in the program.

use std::collections::BTreeMap;

use smallvec::SmallVec;

use crate::ir::{Op, Transfer};

/// One access recorded by the tracker: which op (by program index), in which round,
/// whether it was a send, a receive or a local op, and the latest send and receive it
/// waits for, directly or through other ops (itself included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub index: u32,
    pub round: u32,
    pub transfer: Transfer,
    pub send_reach: Option<Reach>,
    pub recv_reach: Option<Reach>,
}

/// A transfer op some op transitively depends on: its round and program index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reach {
    pub round: u32,
    pub index: u32,
}

#[derive(Clone, Debug)]
struct Seg {
    end: u64,
    writer: Option<Access>,
    readers: SmallVec<[Access; 2]>,
}

#[derive(Default, Debug)]
struct BufHazards {
    segs: BTreeMap<u64, Seg>,
}

impl BufHazards {
    /// Splits the segment containing `at` (if any) so that a segment starts at `at`.
    fn split_at(&mut self, at: u64) {
        let found = self
            .segs
            .range(..at)
            .next_back()
            .map(|(start, seg)| (*start, seg.end));
        if let Some((start, end)) = found {
            if start < at && at < end {
                let seg = self.segs.get_mut(&start).expect("segment exists");
                let mut tail = seg.clone();
                seg.end = at;
                tail.end = end;
                self.segs.insert(at, tail);
            }
        }
    }

    /// Makes `[a, b)` covered by segments (filling gaps with fresh ones) whose boundaries
    /// include `a` and `b`.
    fn cover(&mut self, a: u64, b: u64) {
        self.split_at(a);
        self.split_at(b);
        let mut gaps = Vec::new();
        let mut pos = a;
        for (start, seg) in self.segs.range(a..b) {
            if *start > pos {
                gaps.push((pos, *start));
            }
            pos = seg.end;
        }
        if pos < b {
            gaps.push((pos, b));
        }
        for (s, e) in gaps {
            self.segs.insert(
                s,
                Seg {
                    end: e,
                    writer: None,
                    readers: SmallVec::new(),
                },
            );
        }
    }

    /// The accesses an op touching `[a, b)` conflicts with: the writers, and when the op
    /// writes, the readers too.
    fn conflicts(&self, a: u64, b: u64, writes: bool, deps: &mut Vec<Access>) {
        if a == b {
            return;
        }
        let first = match self.segs.range(..=a).next_back() {
            Some((s, seg)) if seg.end > a => *s,
            _ => a,
        };
        for (_, seg) in self.segs.range(first..b) {
            deps.extend(seg.writer);
            if writes {
                deps.extend(seg.readers.iter().copied());
            }
        }
    }

    fn add_reader(&mut self, a: u64, b: u64, who: Access) {
        if a == b {
            return;
        }
        self.cover(a, b);
        for (_, seg) in self.segs.range_mut(a..b) {
            if seg.readers.last().map(|r| r.index) != Some(who.index) {
                seg.readers.push(who);
            }
        }
    }

    fn set_writer(&mut self, a: u64, b: u64, who: Access) {
        if a == b {
            return;
        }
        self.cover(a, b);
        let starts: Vec<u64> = self.segs.range(a..b).map(|(s, _)| *s).collect();
        // The whole range now has one writer and no readers: keep it as one segment.
        for s in &starts {
            self.segs.remove(s);
        }
        self.segs.insert(
            a,
            Seg {
                end: b,
                writer: Some(who),
                readers: SmallVec::new(),
            },
        );
    }

    fn len(&self) -> usize {
        self.segs.len()
    }
}

/// Derives the dependencies of one rank's program, op by op, in program order.
#[derive(Default, Debug)]
pub struct HazardTracker {
    bufs: [BufHazards; 3],
    next_index: u32,
}

impl HazardTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the next op of the program (at most 2^32 ops per rank) (its slices already resolved to physical buffers,
    /// see [`crate::spec::CollectiveSpec::in_place_alias`]), appends to `deps` the earlier
    /// accesses it conflicts with, and returns its own access.
    pub fn record(&mut self, op: &Op, deps: &mut Vec<Access>) -> Access {
        let start = deps.len();
        for r in op.reads() {
            self.bufs[r.buf.index()].conflicts(r.off, r.end(), false, deps);
        }
        if let Some(w) = op.writes() {
            self.bufs[w.buf.index()].conflicts(w.off, w.end(), true, deps);
        }
        let index = self.next_index;
        self.next_index += 1;
        let own = Reach {
            round: op.round,
            index,
        };
        let transfer = op.transfer();
        let found = &deps[start..];
        let who = Access {
            index,
            round: op.round,
            transfer,
            send_reach: found
                .iter()
                .filter_map(|d| d.send_reach)
                .chain((transfer == Transfer::Send).then_some(own))
                .max(),
            recv_reach: found
                .iter()
                .filter_map(|d| d.recv_reach)
                .chain((transfer == Transfer::Recv).then_some(own))
                .max(),
        };
        for r in op.reads() {
            self.bufs[r.buf.index()].add_reader(r.off, r.end(), who);
        }
        if let Some(w) = op.writes() {
            self.bufs[w.buf.index()].set_writer(w.off, w.end(), who);
        }
        who
    }

    /// Segments currently tracked (a measure of the tracker's memory).
    pub fn segments(&self) -> usize {
        self.bufs.iter().map(BufHazards::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Buf, OpKind, Slice};

    fn op(round: u32, kind: OpKind) -> Op {
        Op {
            round,
            channel: 0,
            kind,
        }
    }

    fn s(buf: Buf, off: u64, len: u64) -> Slice {
        Slice::new(buf, off, len)
    }

    fn deps_of(t: &mut HazardTracker, o: Op) -> Vec<u64> {
        let mut d = Vec::new();
        let who = t.record(&o, &mut d);
        let mut v: Vec<u64> = d
            .into_iter()
            .map(|a| a.index as u64)
            .filter(|&i| i != who.index as u64)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn raw_war_waw() {
        let mut t = HazardTracker::new();
        // 0: recv into out[0..4]
        assert!(deps_of(
            &mut t,
            op(
                0,
                OpKind::Recv {
                    peer: 1,
                    dst: s(Buf::Output, 0, 4)
                }
            )
        )
        .is_empty());
        // 1: send out[2..6] — reads what 0 wrote (RAW)
        assert_eq!(
            deps_of(
                &mut t,
                op(
                    1,
                    OpKind::Send {
                        peer: 1,
                        src: s(Buf::Output, 2, 4)
                    }
                )
            ),
            vec![0]
        );
        // 2: send in[0..4] — independent
        assert!(deps_of(
            &mut t,
            op(
                1,
                OpKind::Send {
                    peer: 2,
                    src: s(Buf::Input, 0, 4)
                }
            )
        )
        .is_empty());
        // 3: recv into out[5..8] — WAR on 1 (reads 2..6)
        assert_eq!(
            deps_of(
                &mut t,
                op(
                    2,
                    OpKind::Recv {
                        peer: 1,
                        dst: s(Buf::Output, 5, 3)
                    }
                )
            ),
            vec![1]
        );
        // 4: copy out[0..8] -> scr[0..8]: reads 0..8: RAW on 0 and 3
        assert_eq!(
            deps_of(
                &mut t,
                op(
                    2,
                    OpKind::Copy {
                        src: s(Buf::Output, 0, 8),
                        dst: s(Buf::Scratch, 0, 8)
                    }
                )
            ),
            vec![0, 3]
        );
        // 5: reduce scr[0..8] into out[0..8]: RAW on 4 (scratch), WAW on 0,3, WAR on 1,4
        assert_eq!(
            deps_of(
                &mut t,
                op(
                    3,
                    OpKind::Reduce {
                        src: s(Buf::Scratch, 0, 8),
                        dst: s(Buf::Output, 0, 8)
                    }
                )
            ),
            vec![0, 1, 3, 4]
        );
    }

    #[test]
    fn writes_coalesce_segments() {
        let mut t = HazardTracker::new();
        let mut d = Vec::new();
        for i in 0..10 {
            t.record(
                &op(
                    0,
                    OpKind::Recv {
                        peer: 1,
                        dst: s(Buf::Output, i * 4, 4),
                    },
                ),
                &mut d,
            );
        }
        assert_eq!(t.segments(), 10);
        t.record(
            &op(
                1,
                OpKind::Copy {
                    src: s(Buf::Input, 0, 40),
                    dst: s(Buf::Output, 0, 40),
                },
            ),
            &mut d,
        );
        // out is one segment again, in is one segment
        assert_eq!(t.segments(), 2);
    }
}
