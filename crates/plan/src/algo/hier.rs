//! Hierarchical all-reduce composed from groups: a reduce-scatter inside each group, an
//! all-reduce across groups on each shard (1/g of the data), an all-gather inside each
//! group. The levels are ordinary plans: the intra-group level is the reduce-scatter and
//! all-gather halves of a ring or direct all-reduce, the inter-group level any all-reduce
//! (a hierarchy again, for host → rack → zone). Their ops are relocated: peers through the
//! group table, the inter-group plan onto the shard it reduces, in place in the output.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::PlanError;
use crate::ir::{Buf, Op, OpKind, Rank, Slice};
use crate::schedule::{PlanParams, Schedule};
use crate::spec::{Collective, CollectiveSpec};

use super::direct::DirectAllReduce;
use super::ring::RingAllReduce;
use super::{build_schedule, Algorithm};

/// The groups of a hierarchical plan and the algorithm of each level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchy {
    /// A partition of the ranks into groups of equal size (e.g. the ranks of each host).
    /// Rank `groups[j][i]` is member `i` of group `j`; members with the same `i` form the
    /// inter-group communicator of shard `i`.
    pub groups: Vec<Vec<Rank>>,
    /// Inside groups: `ring` or `direct`.
    pub intra: Algorithm,
    /// Across groups: any all-reduce algorithm; a `hier` here has groups over `0..groups.len()`.
    pub inter: Algorithm,
}

impl Hierarchy {
    /// Groups of `size` consecutive ranks.
    pub fn contiguous(
        world: u32,
        size: u32,
        intra: Algorithm,
        inter: Algorithm,
    ) -> Result<Hierarchy, PlanError> {
        if size == 0 || world % size != 0 {
            return Err(PlanError::InvalidGroups(format!(
                "a group size of {size} does not divide the world of {world} ranks; use a \
                 divisor of {world}"
            )));
        }
        Ok(Hierarchy {
            groups: (0..world / size)
                .map(|j| (j * size..(j + 1) * size).collect())
                .collect(),
            intra,
            inter,
        })
    }

    /// Checks that the groups partition `0..world` into groups of one size and that the
    /// intra-group algorithm can be split into halves.
    pub fn validate(&self, world: u32) -> Result<(), PlanError> {
        let Some(first) = self.groups.first() else {
            return Err(PlanError::InvalidGroups("there are no groups".into()));
        };
        let g = first.len();
        if g == 0 {
            return Err(PlanError::InvalidGroups("group 0 is empty".into()));
        }
        let mut seen = vec![None; world as usize];
        for (j, group) in self.groups.iter().enumerate() {
            if group.len() != g {
                return Err(PlanError::InvalidGroups(format!(
                    "group {j} has {} ranks but group 0 has {g}; all groups must have the \
                     same size, because shard i of every group is reduced across groups",
                    group.len()
                )));
            }
            for &r in group {
                let slot = seen.get_mut(r as usize).ok_or_else(|| {
                    PlanError::InvalidGroups(format!(
                        "group {j} lists rank {r}, outside the world of {world} ranks"
                    ))
                })?;
                if let Some(prev) = slot.replace(j) {
                    return Err(PlanError::InvalidGroups(format!(
                        "rank {r} is in group {prev} and group {j}; each rank belongs to \
                         exactly one group"
                    )));
                }
            }
        }
        if let Some(r) = seen.iter().position(Option::is_none) {
            return Err(PlanError::InvalidGroups(format!(
                "rank {r} is in no group; the groups must cover all {world} ranks"
            )));
        }
        if !matches!(self.intra, Algorithm::Ring | Algorithm::Direct) {
            return Err(PlanError::InvalidGroups(format!(
                "the intra-group algorithm is '{}'; it must split into a reduce-scatter and an \
                 all-gather: ring or direct",
                self.intra.name()
            )));
        }
        Ok(())
    }
}

/// The intra-group all-reduce, used as its two halves.
#[derive(Debug)]
enum Intra {
    Ring(RingAllReduce),
    Direct(DirectAllReduce),
}

impl Intra {
    fn schedule(&self) -> &dyn Schedule {
        match self {
            Intra::Ring(s) => s,
            Intra::Direct(s) => s,
        }
    }

    fn half_rounds(&self) -> u32 {
        match self {
            Intra::Ring(s) => s.half_rounds(),
            Intra::Direct(s) => s.half_rounds(),
        }
    }

    /// The shard `member` holds, fully reduced within its group, after the first half.
    fn shard(&self, member: u32) -> (u64, u64) {
        match self {
            Intra::Ring(s) => s.block_range(s.owned_block(member)),
            Intra::Direct(s) => s.block_range(s.owned_block(member)),
        }
    }
}

#[derive(Debug)]
struct Hierarchical {
    groups: Vec<Vec<Rank>>,
    /// (group, member) of each rank.
    place: Vec<(u32, u32)>,
    intra: Intra,
    /// Inter-group plans by shard length (shards differ by at most one element).
    inter: BTreeMap<u64, Arc<dyn Schedule>>,
    intra_half: u32,
    inter_rounds: u32,
}

pub fn hierarchical(
    spec: &Arc<CollectiveSpec>,
    params: &PlanParams,
    h: &Hierarchy,
) -> Result<Arc<dyn Schedule>, PlanError> {
    h.validate(spec.world)?;
    let groups = h.groups.clone();
    let g = groups[0].len() as u32;
    let n_groups = groups.len() as u32;
    let mut place = vec![(0, 0); spec.world as usize];
    for (j, group) in groups.iter().enumerate() {
        for (i, &r) in group.iter().enumerate() {
            place[r as usize] = (j as u32, i as u32);
        }
    }
    let intra = match h.intra {
        Algorithm::Direct => Intra::Direct(DirectAllReduce::over(g, spec.count, params.chunks)),
        _ => Intra::Ring(RingAllReduce::over(g, spec.count, params.chunks)),
    };
    let mut inter = BTreeMap::new();
    for member in 0..g {
        let (_, len) = intra.shard(member);
        if let std::collections::btree_map::Entry::Vacant(e) = inter.entry(len) {
            let sub = Arc::new(CollectiveSpec {
                collective: Collective::AllReduce,
                world: n_groups,
                count: len,
                ..(**spec).clone()
            });
            e.insert(build_schedule(&sub, &h.inter, params)?);
        }
    }
    let inter_rounds = inter.values().map(|s| s.rounds()).max().unwrap_or(0);
    Ok(Arc::new(Hierarchical {
        groups,
        place,
        intra_half: intra.half_rounds(),
        intra,
        inter,
        inter_rounds,
    }))
}

impl Hierarchical {
    fn group_size(&self) -> u32 {
        self.groups[0].len() as u32
    }

    fn emit_intra(&self, group: u32, member: u32, level_round: u32, out: &mut Vec<Op>) {
        let first = out.len();
        self.intra.schedule().emit(member, level_round, out);
        let members = &self.groups[group as usize];
        for op in &mut out[first..] {
            op.map_peer(|i| members[i as usize]);
        }
    }

    fn emit_inter(&self, group: u32, member: u32, level_round: u32, out: &mut Vec<Op>) {
        let (off, len) = self.intra.shard(member);
        let plan = &self.inter[&len];
        if level_round >= plan.rounds() {
            return;
        }
        let first = out.len();
        plan.emit(group, level_round, out);
        // With one member per group there is no intra level: the inter-group plan works on
        // the user buffers directly. Otherwise it reduces the shard in place in the output.
        let in_place = self.group_size() > 1;
        for op in &mut out[first..] {
            op.map_peer(|j| self.groups[j as usize][member as usize]);
            op.map_slices(|s| match s.buf {
                Buf::Scratch => s,
                _ if in_place => Slice::new(Buf::Output, s.off + off, s.len),
                _ => Slice::new(s.buf, s.off + off, s.len),
            });
        }
        // A copy from input to output of the shard is a copy onto itself once relocated.
        let mut i = first;
        while i < out.len() {
            match out[i].kind {
                OpKind::Copy { src, dst } if src == dst => {
                    out.remove(i);
                }
                _ => i += 1,
            }
        }
    }
}

impl Schedule for Hierarchical {
    fn rounds(&self) -> u32 {
        2 * self.intra_half + self.inter_rounds
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let (group, member) = self.place[rank as usize];
        let first = out.len();
        if round < self.intra_half {
            self.emit_intra(group, member, round, out);
        } else if round < self.intra_half + self.inter_rounds {
            self.emit_inter(group, member, round - self.intra_half, out);
        } else {
            self.emit_intra(group, member, round - self.inter_rounds, out);
        }
        for op in &mut out[first..] {
            op.round = round;
        }
    }

    fn round_class(&self, round: u32) -> u64 {
        // Every group runs the same level round at once, so a round is as alike as the
        // level rounds it is made of. The phase keeps the two intra halves apart.
        let (phase, level) = if round < self.intra_half {
            (0, vec![self.intra.schedule().round_class(round)])
        } else if round < self.intra_half + self.inter_rounds {
            let r = round - self.intra_half;
            let classes = self
                .inter
                .values()
                .map(|s| {
                    if r < s.rounds() {
                        s.round_class(r)
                    } else {
                        u64::MAX
                    }
                })
                .collect();
            (1, classes)
        } else {
            let r = round - self.inter_rounds;
            (2, vec![self.intra.schedule().round_class(r)])
        };
        level.into_iter().fold(mix(phase), |acc, c| mix(acc ^ c))
    }

    fn scratch_len(&self, rank: Rank) -> u64 {
        let (group, member) = self.place[rank as usize];
        let (_, len) = self.intra.shard(member);
        self.intra
            .schedule()
            .scratch_len(member)
            .max(self.inter[&len].scratch_len(group))
    }

    fn channels(&self) -> u16 {
        self.intra
            .schedule()
            .channels()
            .max(self.inter.values().map(|s| s.channels()).max().unwrap_or(1))
    }
}

/// A 64-bit mixer (splitmix64's finaliser), so combined classes rarely collide.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(groups: Vec<Vec<Rank>>) -> Hierarchy {
        Hierarchy {
            groups,
            intra: Algorithm::Ring,
            inter: Algorithm::Ring,
        }
    }

    #[test]
    fn group_errors() {
        let e = h(vec![vec![0, 1], vec![2]]).validate(3).unwrap_err();
        assert!(e.to_string().contains("same size"), "{e}");
        let e = h(vec![vec![0, 1], vec![1, 2]]).validate(4).unwrap_err();
        assert!(
            e.to_string().contains("rank 1 is in group 0 and group 1"),
            "{e}"
        );
        let e = h(vec![vec![0, 1]]).validate(3).unwrap_err();
        assert!(e.to_string().contains("rank 2 is in no group"), "{e}");
        let e = h(vec![vec![0, 5]]).validate(2).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let mut bad = h(vec![vec![0, 1]]);
        bad.intra = Algorithm::DoubleBinaryTree;
        assert!(bad
            .validate(2)
            .unwrap_err()
            .to_string()
            .contains("ring or direct"));
        let e = Hierarchy::contiguous(10, 4, Algorithm::Ring, Algorithm::Ring).unwrap_err();
        assert!(e.to_string().contains("divisor"), "{e}");
    }

    #[test]
    fn round_structure() {
        let spec = CollectiveSpec::new(Collective::AllReduce, 16, 64);
        let hier = Hierarchy::contiguous(16, 4, Algorithm::Ring, Algorithm::Rabenseifner).unwrap();
        let plan = crate::algo::build(
            spec,
            Algorithm::Hierarchical(Box::new(hier)),
            PlanParams::default(),
        )
        .unwrap();
        // 3 + 2·lg 4 + 3 rounds: ring halves inside groups of 4, rhd across 4 groups.
        assert_eq!(plan.rounds(), 3 + 4 + 3);
        crate::verify(&plan).unwrap();
    }
}
