//! The human-readable form of a plan: a header, then each rank's program, one op a line.

use std::fmt::Write as _;

use crate::schedule::Plan;

/// Renders `plan`; `ranks` limits the output to some ranks (all when `None`).
pub fn render(plan: &Plan, ranks: Option<&[u32]>) -> String {
    let mut s = String::new();
    let spec = plan.spec();
    let p = plan.params();
    writeln!(
        s,
        "# {}  algorithm={}  chunks={} channels={} rounds={}",
        spec.describe(),
        plan.algorithm().name(),
        p.chunks,
        plan.channels(),
        plan.rounds()
    )
    .expect("write to string");
    let all: Vec<u32> = (0..plan.world()).collect();
    for &rank in ranks.unwrap_or(&all) {
        let ops = plan.program(rank);
        writeln!(
            s,
            "rank {rank}: {} ops, input {} output {} scratch {}",
            ops.len(),
            spec.input_len(rank),
            spec.output_len(rank),
            plan.scratch_len(rank)
        )
        .expect("write to string");
        for (i, op) in ops.iter().enumerate() {
            writeln!(s, "  #{i:<4} {op}").expect("write to string");
        }
    }
    s
}
