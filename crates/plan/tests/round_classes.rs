//! Round classes are a promise to the cost model and the simulator: two rounds of one
//! class move the same transfers and reduce the same amounts on the same ranks, so pricing
//! one prices both. Checked for every generator × collective on small worlds.

mod common;

use std::collections::HashMap;

use topoccl_plan::{build, Collective, Plan, PlanParams};

/// What a round does, in a form that compares equal exactly when the promise holds:
/// sorted (source, destination, channel, length) transfers and elements reduced per rank.
type Footprint = (Vec<(u32, u32, u16, u64)>, Vec<u64>);

fn footprint(plan: &Plan, round: u32) -> Footprint {
    let mut transfers = Vec::new();
    plan.transfers(round, &mut transfers);
    let mut t: Vec<_> = transfers
        .iter()
        .map(|x| (x.src, x.dst, x.channel, x.len))
        .collect();
    t.sort_unstable();
    let mut ops = Vec::new();
    let reduced = (0..plan.world())
        .map(|r| {
            ops.clear();
            plan.emit(r, round, &mut ops);
            ops.iter().map(|o| o.reduced_len()).sum()
        })
        .collect();
    (t, reduced)
}

#[test]
fn rounds_of_one_class_do_the_same() {
    let mut checked = 0;
    for collective in Collective::ALL {
        for p in [1u32, 2, 3, 4, 5, 6, 8, 12, 16] {
            for algorithm in common::algorithms(collective, p, 0) {
                for (count, chunks) in [(4 * p as u64, 1), (4 * p as u64 + 3, 2)] {
                    let spec = common::spec(collective, p, count, 0);
                    let params = PlanParams::default().with_chunks(chunks);
                    let Ok(plan) = build(spec, algorithm.clone(), params) else {
                        continue;
                    };
                    let mut first: HashMap<u64, (u32, _)> = HashMap::new();
                    for round in 0..plan.rounds() {
                        let f = footprint(&plan, round);
                        match first.get(&plan.round_class(round)) {
                            Some((r0, f0)) => assert_eq!(
                                f0,
                                &f,
                                "{collective} p={p} {} chunks={chunks}: rounds {r0} and {round} \
                                 share a class but differ",
                                algorithm.name()
                            ),
                            None => {
                                first.insert(plan.round_class(round), (round, f));
                            }
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 500, "only {checked} plans checked");
}
