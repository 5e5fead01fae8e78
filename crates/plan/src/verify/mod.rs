//! The verifier: symbolic execution proving that a plan computes its collective.
//!
//! Each element holds a symbolic value — "input element `i` of ranks `S`, reduced" — and
//! the plan is run by the same driver as the reference executor. The verifier proves:
//!
//! * every output element is the reduction of exactly the right inputs, each exactly once
//!   (a reduction of overlapping rank sets or of different element indices is refused);
//! * no op reads memory that nothing wrote;
//! * every send has its matching receive, of the same length and round, and no message is
//!   left over;
//! * the plan does not deadlock with blocking receives in program order, and every round's
//!   transfers can be posted at once (the round rule of [`crate::ir`]);
//! * for a barrier, every rank hears (directly or through others) from every rank before
//!   it leaves.
//!
//! Plans are checked out of place and, where the collective has one, in place.

mod rankset;
mod segments;

use crate::exec::driver::{self, alias_for, Machine};
use crate::ir::{Buf, OpKind, Rank, Slice};
use crate::schedule::Plan;
use crate::spec::{Collective, CollectiveSpec, Placement};

pub use crate::exec::driver::{RunStats, VerifyError};
pub use rankset::RankSet;
use segments::{combine, Pieces, SegMap, Val};

/// What a successful verification saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub out_of_place: RunStats,
    pub in_place: Option<RunStats>,
    /// Symbolic segments alive at the end of the out-of-place run (a measure of memory).
    pub segments: usize,
}

/// Proves `plan` correct out of place and, where the collective has one, in place.
pub fn verify(plan: &Plan) -> Result<Report, VerifyError> {
    let (out_of_place, segments) = run(plan, Placement::OutOfPlace)?;
    let in_place = if plan.spec().collective.has_in_place() {
        Some(run(plan, Placement::InPlace).map_err(|mut e| {
            e.message = format!("(in place) {}", e.message);
            e
        })?)
        .map(|(s, _)| s)
    } else {
        None
    };
    Ok(Report {
        out_of_place,
        in_place,
        segments,
    })
}

/// Proves `plan` correct for one placement.
pub fn verify_placement(plan: &Plan, placement: Placement) -> Result<RunStats, VerifyError> {
    run(plan, placement).map(|(s, _)| s)
}

struct Symbolic {
    bufs: Vec<[SegMap; 3]>,
    /// Barriers only: which ranks each rank has heard from.
    heard: Option<Vec<RankSet>>,
}

struct Msg {
    pieces: Pieces,
    heard: Option<RankSet>,
}

impl Symbolic {
    fn read_defined(&self, rank: Rank, s: Slice, what: &str) -> Result<Pieces, String> {
        let pieces = self.bufs[rank as usize][s.buf.index()].read(s.off, s.len);
        let mut pos = 0;
        for (len, v) in &pieces {
            if *v == Val::Undef {
                return Err(format!(
                    "{what} {s}, whose element {} no op has written",
                    s.off + pos
                ));
            }
            pos += len;
        }
        Ok(pieces)
    }

    fn write(&mut self, rank: Rank, s: Slice, pieces: &Pieces) {
        self.bufs[rank as usize][s.buf.index()].write(s.off, pieces);
    }
}

impl Machine for Symbolic {
    type Msg = Msg;

    fn read(&mut self, rank: Rank, src: Slice) -> Result<Msg, String> {
        Ok(Msg {
            pieces: self.read_defined(rank, src, "sends")?,
            heard: self.heard.as_ref().map(|h| h[rank as usize].clone()),
        })
    }

    fn deliver(&mut self, rank: Rank, kind: &OpKind, msg: Msg) -> Result<(), String> {
        match *kind {
            OpKind::Recv { dst, .. } => self.write(rank, dst, &msg.pieces),
            OpKind::RecvReduce { src, dst, .. } => {
                let local = self.read_defined(rank, src, "reduces")?;
                let sum = combine(&local, &msg.pieces)?;
                self.write(rank, dst, &sum);
            }
            _ => unreachable!("deliver gets receives only"),
        }
        if let (Some(h), Some(m)) = (self.heard.as_mut(), msg.heard) {
            h[rank as usize] = h[rank as usize].union(&m);
        }
        Ok(())
    }

    fn local(&mut self, rank: Rank, kind: &OpKind) -> Result<(), String> {
        match *kind {
            OpKind::Copy { src, dst } => {
                let v = self.read_defined(rank, src, "copies")?;
                self.write(rank, dst, &v);
            }
            OpKind::Reduce { src, dst } => {
                let a = self.read_defined(rank, src, "reduces")?;
                let b = self.read_defined(rank, dst, "reduces into")?;
                let sum = combine(&b, &a)?;
                self.write(rank, dst, &sum);
            }
            _ => unreachable!("local gets copies and reductions only"),
        }
        Ok(())
    }
}

fn sym(delta: i64, ranks: RankSet) -> Val {
    Val::Sym { delta, ranks }
}

/// The initial symbolic buffers of a rank: its input is "input element `x` of this rank";
/// everything else is unwritten.
fn initial(spec: &CollectiveSpec, plan: &Plan, placement: Placement, rank: Rank) -> [SegMap; 3] {
    let own = || sym(0, RankSet::single(rank));
    let mut b = [
        SegMap::new(spec.input_len(rank), own()),
        SegMap::new(spec.output_len(rank), Val::Undef),
        SegMap::new(plan.scratch_len(rank), Val::Undef),
    ];
    if let Some(a) = alias_for(plan, placement, rank) {
        if a.inner == Buf::Input {
            let len = spec.input_len(rank);
            let p: Pieces = smallvec::smallvec![(len, own())];
            b[a.outer.index()].write(a.offset, &p);
        }
        b[a.inner.index()] = SegMap::default();
    }
    b
}

/// What `rank`'s output must hold, as (offset, length, value) with deltas relative to the
/// offset.
fn expected(spec: &CollectiveSpec, rank: Rank) -> Vec<(u64, u64, Val)> {
    let c = spec.count;
    let p = spec.world;
    let all = || RankSet::range(0, p);
    let per_source = |delta_of: &dyn Fn(Rank) -> i64| -> Vec<(u64, u64, Val)> {
        (0..p)
            .map(|s| (s as u64 * c, c, sym(delta_of(s), RankSet::single(s))))
            .collect()
    };
    let r = rank as i64;
    let ci = c as i64;
    match spec.collective {
        Collective::AllReduce => vec![(0, c, sym(0, all()))],
        Collective::Broadcast => vec![(0, c, sym(0, RankSet::single(spec.root)))],
        Collective::Reduce if rank == spec.root => vec![(0, c, sym(0, all()))],
        Collective::Gather if rank == spec.root => per_source(&|_| 0),
        Collective::Reduce | Collective::Gather | Collective::Barrier => vec![],
        Collective::AllGather => per_source(&|_| 0),
        Collective::ReduceScatter => vec![(0, c, sym(r * ci, all()))],
        Collective::Scatter => vec![(0, c, sym(r * ci, RankSet::single(spec.root)))],
        Collective::AllToAll => per_source(&|_| r * ci),
        Collective::AllToAllV => {
            let m = spec.matrix();
            (0..p)
                .map(|s| {
                    (
                        m.recv_offset(s, rank),
                        m.get(s, rank),
                        sym(m.send_offset(s, rank) as i64, RankSet::single(s)),
                    )
                })
                .collect()
        }
    }
}

fn run(plan: &Plan, placement: Placement) -> Result<(RunStats, usize), VerifyError> {
    let spec = plan.spec();
    let world = spec.world;
    let mut m = Symbolic {
        bufs: (0..world)
            .map(|r| initial(spec, plan, placement, r))
            .collect(),
        heard: (spec.collective == Collective::Barrier)
            .then(|| (0..world).map(RankSet::single).collect()),
    };
    let stats = driver::run(plan, placement, true, &mut m)?;
    for rank in 0..world {
        let alias = alias_for(plan, placement, rank);
        for (off, len, want) in expected(spec, rank) {
            let s = driver::resolve(alias, Slice::new(Buf::Output, off, len));
            let got = m.bufs[rank as usize][s.buf.index()].read(s.off, s.len);
            check_output(rank, off, len, &got, &want)?;
        }
        if let Some(heard) = &m.heard {
            if let Some(missing) = heard[rank as usize].first_missing(world) {
                return Err(VerifyError::rank(
                    rank,
                    format!(
                        "leaves the barrier without having heard, directly or through \
                         others, from rank {missing}"
                    ),
                ));
            }
        }
    }
    let segments = m
        .bufs
        .iter()
        .flat_map(|b| b.iter())
        .map(SegMap::segments)
        .sum();
    Ok((stats, segments))
}

fn check_output(
    rank: Rank,
    off: u64,
    len: u64,
    got: &Pieces,
    want: &Val,
) -> Result<(), VerifyError> {
    let mut pos = 0u64;
    for (l, v) in got {
        if v != want {
            return Err(VerifyError::rank(
                rank,
                format!(
                    "output element {} holds {}, but must hold {}",
                    off + pos,
                    v.describe(pos),
                    want.describe(pos)
                ),
            ));
        }
        pos += l;
    }
    debug_assert_eq!(pos, len);
    Ok(())
}
