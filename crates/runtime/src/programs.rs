//! What repeated calls reuse from the first: each call shape's compiled rank program with
//! its machine ([`topoccl_plan::compiled`]), and the call fingerprints of plans given to
//! `run_plan`.
//!
//! Both caches are looked up by a cheap key and then checked against a clone of the plan
//! they were made for (a `Plan` holds `Arc`s: identity first, values where identity
//! differs), so a key collision recompiles or recomputes instead of running the wrong
//! program or naming the wrong call. Both are bounded, and start over when full, like the
//! plan cache.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use topoccl_plan::compiled::{CompiledMachine, CompiledProgram, COMPILE_LIMIT_OPS};
use topoccl_plan::{Placement, Plan, Rank};

/// Compiled programs kept per communicator (one per call shape and placement).
pub(crate) const PROGRAM_CACHE: usize = 512;
/// Ops the kept programs may hold in all (with their machines' state, some 100 bytes each).
pub(crate) const PROGRAM_CACHE_OPS: usize = 4 * COMPILE_LIMIT_OPS;
/// Fingerprints of given plans kept per communicator.
pub(crate) const FINGERPRINT_CACHE: usize = 16;

/// Whether a program compiled for `a` is `b`'s: the same schedule (by identity, since a
/// plan read from a document carries its own ops, so equal specs, algorithms and
/// parameters do not make equal programs), spec, algorithm and parameters.
fn same_plan(a: &Plan, b: &Plan) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a.schedule()), Arc::as_ptr(b.schedule()))
        && a.params() == b.params()
        && (std::ptr::eq(a.spec(), b.spec()) || a.spec() == b.spec())
        && (std::ptr::eq(a.algorithm(), b.algorithm()) || a.algorithm() == b.algorithm())
}

struct Entry {
    /// The plan compiled, kept so that its `Arc`s stay alive and can be compared.
    plan: Plan,
    /// `None` when the program is too long to compile: calls run a `RankMachine`.
    machine: Option<CompiledMachine>,
}

impl Entry {
    fn ops(&self) -> usize {
        self.machine.as_ref().map_or(0, |m| m.program().len())
    }
}

#[derive(Default)]
pub(crate) struct Programs {
    entries: FxHashMap<(u64, Placement), Entry>,
    /// Ops of the programs in `entries`.
    ops: usize,
    fingerprints: Vec<(Plan, u64)>,
}

impl Programs {
    /// A machine running `rank`'s program of `plan` under `placement`, from its start:
    /// compiled on first use, restarted after. `None` when the program is too long to
    /// compile (run a `RankMachine`). `fingerprint` (the plan's call fingerprint) is the
    /// key, not the proof: the plan is compared too.
    pub(crate) fn machine(
        &mut self,
        plan: &Plan,
        fingerprint: u64,
        rank: Rank,
        placement: Placement,
    ) -> Option<&mut CompiledMachine> {
        let key = (fingerprint, placement);
        let hit = self.entries.get(&key).is_some_and(|e| {
            same_plan(&e.plan, plan) && e.machine.as_ref().is_none_or(|m| m.rank() == rank)
        });
        if !hit {
            if let Some(old) = self.entries.remove(&key) {
                self.ops -= old.ops();
            }
            let program = CompiledProgram::compile(plan, rank, placement);
            let ops = program.as_ref().map_or(0, CompiledProgram::len);
            if self.entries.len() >= PROGRAM_CACHE || self.ops + ops > PROGRAM_CACHE_OPS {
                self.entries.clear();
                self.ops = 0;
            }
            self.ops += ops;
            let machine =
                program.map(|p| CompiledMachine::new(Arc::new(p), plan.params().in_flight));
            self.entries.insert(
                key,
                Entry {
                    plan: plan.clone(),
                    machine,
                },
            );
            return self.entries.get_mut(&key)?.machine.as_mut();
        }
        let m = self.entries.get_mut(&key)?.machine.as_mut()?;
        m.restart();
        Some(m)
    }

    /// `plan`'s call fingerprint, computed by `compute` the first time: plans are matched
    /// by the identity of their spec and algorithm (kept alive here) and equal parameters,
    /// everything a fingerprint covers.
    pub(crate) fn fingerprint(&mut self, plan: &Plan, compute: impl FnOnce(&Plan) -> u64) -> u64 {
        if let Some((_, fp)) = self.fingerprints.iter().find(|(p, _)| {
            std::ptr::eq(p.spec(), plan.spec())
                && std::ptr::eq(p.algorithm(), plan.algorithm())
                && p.params() == plan.params()
        }) {
            return *fp;
        }
        let fp = compute(plan);
        if self.fingerprints.len() >= FINGERPRINT_CACHE {
            self.fingerprints.clear();
        }
        self.fingerprints.push((plan.clone(), fp));
        fp
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (self.entries.len(), self.ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topoccl_plan::{build, Algorithm, Collective, CollectiveSpec, PlanParams};

    fn plan(count: u64, algo: Algorithm) -> Plan {
        build(
            CollectiveSpec::new(Collective::AllReduce, 2, count),
            algo,
            PlanParams::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_colliding_key_never_runs_another_plan() {
        let mut c = Programs::default();
        let a = plan(8, Algorithm::RecursiveDoubling);
        let b = plan(64, Algorithm::Ring);
        let first = c.machine(&a, 7, 0, Placement::OutOfPlace).unwrap();
        let pa = first.program().clone();
        // The same key (a collision) with another plan compiles that plan.
        let m = c.machine(&b, 7, 0, Placement::OutOfPlace).unwrap();
        assert!(!Arc::ptr_eq(m.program(), &pa));
        assert_eq!(
            m.program().ops(),
            CompiledProgram::compile(&b, 0, Placement::OutOfPlace)
                .unwrap()
                .ops()
        );
        let pb = m.program().clone();
        // The same plan again reuses its program; a clone of it too.
        let again = c.machine(&b.clone(), 7, 0, Placement::OutOfPlace).unwrap();
        assert!(Arc::ptr_eq(again.program(), &pb));
        // A plan equal in spec, algorithm and parameters but rebuilt is compiled anew.
        let rebuilt = plan(64, Algorithm::Ring);
        let m = c.machine(&rebuilt, 7, 0, Placement::OutOfPlace).unwrap();
        assert!(!Arc::ptr_eq(m.program(), &pb));
        assert_eq!(c.len().0, 1);
    }

    #[test]
    fn a_document_plan_with_other_ops_is_not_taken_for_the_built_one() {
        let built = plan(8, Algorithm::Ring);
        let mut doc = built.materialize().unwrap();
        // Same spec, algorithm and parameters; rank 0's program without its last op.
        doc.ranks[0].ops.pop();
        let read = Plan::from_doc(doc).unwrap();
        assert_eq!(read.spec(), built.spec());
        assert_eq!(read.algorithm(), built.algorithm());
        let mut c = Programs::default();
        let n_built = c
            .machine(&built, 1, 0, Placement::OutOfPlace)
            .unwrap()
            .program()
            .len();
        let n_read = c
            .machine(&read, 1, 0, Placement::OutOfPlace)
            .unwrap()
            .program()
            .len();
        assert_eq!(n_read + 1, n_built);
    }

    #[test]
    fn the_caches_are_bounded() {
        let mut c = Programs::default();
        let plans: Vec<Plan> = (1..=PROGRAM_CACHE as u64 + 5)
            .map(|n| plan(n, Algorithm::RecursiveDoubling))
            .collect();
        for (k, p) in plans.iter().enumerate() {
            c.machine(p, k as u64, 0, Placement::InPlace).unwrap();
            assert!(c.len().0 <= PROGRAM_CACHE && c.len().1 <= PROGRAM_CACHE_OPS);
        }
        // Too long to compile: remembered as such, costs no ops.
        let long = build(
            CollectiveSpec::new(Collective::AllReduce, 2, 1 << 20),
            Algorithm::Ring,
            PlanParams::default().with_chunks(PlanParams::MAX_CHUNKS),
        )
        .unwrap();
        let before = c.len().1;
        assert!(c
            .machine(&long, 1 << 40, 0, Placement::OutOfPlace)
            .is_none());
        assert!(c
            .machine(&long, 1 << 40, 0, Placement::OutOfPlace)
            .is_none());
        assert_eq!(c.len().1, before);

        let mut computed = 0;
        for p in plans.iter().take(FINGERPRINT_CACHE * 2) {
            for _ in 0..2 {
                c.fingerprint(p, |_| {
                    computed += 1;
                    5
                });
            }
            assert!(c.fingerprints.len() <= FINGERPRINT_CACHE);
        }
        assert_eq!(computed, FINGERPRINT_CACHE * 2);
    }

    #[test]
    fn fingerprints_follow_the_plan_not_the_key() {
        let mut c = Programs::default();
        let a = plan(8, Algorithm::Ring);
        let b = plan(8, Algorithm::Ring);
        assert_eq!(c.fingerprint(&a, |_| 1), 1);
        assert_eq!(c.fingerprint(&a.clone(), |_| 2), 1);
        // Equal but not the same `Arc`s: computed again.
        assert_eq!(c.fingerprint(&b, |_| 3), 3);
    }
}
