//! The verifier must refuse broken plans, and say what is wrong and where. Each case takes
//! a correct plan, breaks one thing, and checks the message.

use topoccl_plan::{
    build, verify, Algorithm, Buf, Collective, CollectiveSpec, Op, OpKind, Plan, PlanDoc,
    PlanParams, Slice,
};

fn ring(collective: Collective, p: u32, count: u64) -> PlanDoc {
    let spec = CollectiveSpec::new(collective, p, count);
    build(spec, Algorithm::Ring, PlanParams::default())
        .unwrap()
        .materialize()
        .unwrap()
}

fn verdict(doc: PlanDoc) -> String {
    let plan = Plan::from_doc(doc).expect("document is well-formed");
    match verify(&plan) {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    }
}

fn expect(doc: PlanDoc, needles: &[&str]) {
    let v = verdict(doc);
    for n in needles {
        assert!(v.contains(n), "expected {n:?} in: {v}");
    }
}

fn find(doc: &PlanDoc, rank: usize, pred: impl Fn(&Op) -> bool) -> usize {
    doc.ranks[rank]
        .ops
        .iter()
        .position(pred)
        .expect("op present")
}

#[test]
fn intact_plans_pass() {
    assert_eq!(verdict(ring(Collective::AllReduce, 4, 8)), "ok");
}

#[test]
fn missing_receive() {
    let mut doc = ring(Collective::AllReduce, 4, 8);
    // The last receive: nothing later depends on it, so only the leftover message shows.
    let i = doc.ranks[2].ops.len() - 1;
    assert!(matches!(doc.ranks[2].ops[i].kind, OpKind::Recv { .. }));
    doc.ranks[2].ops.remove(i);
    expect(doc, &["rank 1", "never receives", "rank 2"]);
}

#[test]
fn reading_unwritten_memory() {
    let mut doc = ring(Collective::AllReduce, 4, 8);
    let i = find(&doc, 1, |op| matches!(op.kind, OpKind::RecvReduce { .. }));
    if let OpKind::RecvReduce { src, .. } = &mut doc.ranks[1].ops[i].kind {
        src.buf = Buf::Output;
    }
    expect(doc, &["rank 1", "no op has written"]);
}

#[test]
fn double_counting() {
    let mut doc = ring(Collective::AllReduce, 4, 8);
    // The second all-gather receive lands on a block rank 3 already holds a partial sum
    // of; reducing instead of overwriting counts those ranks twice.
    let recvs: Vec<usize> = (0..doc.ranks[3].ops.len())
        .filter(|&i| matches!(doc.ranks[3].ops[i].kind, OpKind::Recv { .. }))
        .collect();
    let i = recvs[1];
    if let OpKind::Recv { peer, dst } = doc.ranks[3].ops[i].kind {
        doc.ranks[3].ops[i].kind = OpKind::RecvReduce {
            peer,
            src: dst,
            dst,
        };
    }
    expect(doc, &["rank 3", "counted twice"]);
}

#[test]
fn wrong_destination_is_caught_at_the_output() {
    let mut doc = ring(Collective::AllGather, 4, 2);
    // Rank 0's last receive (block 1) goes to block 3 instead.
    let i = doc.ranks[0].ops.len() - 1;
    if let OpKind::Recv { dst, .. } = &mut doc.ranks[0].ops[i].kind {
        assert_eq!(dst.off, 2);
        dst.off = 6;
    }
    expect(doc, &["rank 0", "output element", "must hold"]);
}

#[test]
fn transfer_ends_in_different_rounds() {
    let mut doc = ring(Collective::AllGather, 3, 2);
    // Move rank 1's last receive into a later round of its own.
    doc.rounds += 1;
    let last = doc.ranks[1].ops.len() - 1;
    doc.ranks[1].ops[last].round = doc.rounds - 1;
    expect(doc, &["rank 1", "share a round"]);
}

#[test]
fn length_mismatch() {
    let mut doc = ring(Collective::AllGather, 3, 4);
    let i = find(&doc, 2, |op| matches!(op.kind, OpKind::Recv { .. }));
    if let OpKind::Recv { dst, .. } = &mut doc.ranks[2].ops[i].kind {
        dst.len -= 1;
    }
    expect(doc, &["rank 2", "receives 3 elements", "has 4"]);
}

#[test]
fn deadlock_with_receives_first() {
    let mut doc = ring(Collective::AllGather, 2, 2);
    // Both ranks receive before they send.
    for r in 0..2 {
        let ops = &mut doc.ranks[r].ops;
        let s = ops
            .iter()
            .position(|op| matches!(op.kind, OpKind::Send { .. }))
            .unwrap();
        let op = ops.remove(s);
        ops.push(op);
    }
    expect(doc, &["deadlock", "rank 0 waits", "rank 1 waits"]);
}

#[test]
fn receive_overwriting_a_same_round_send() {
    // Two ranks exchange whole buffers in place: each receive overwrites what that rank
    // sends in the same round, which deadlocks when sends are not buffered.
    let spec = CollectiveSpec::new(Collective::AllGather, 2, 2);
    let mut doc = build(spec, Algorithm::Ring, PlanParams::default())
        .unwrap()
        .materialize()
        .unwrap();
    for r in 0..2 {
        let own = Slice::new(Buf::Output, r as u64 * 2, 2);
        for op in &mut doc.ranks[r].ops {
            match &mut op.kind {
                OpKind::Send { src, .. } => *src = own,
                OpKind::Recv { dst, .. } => *dst = own,
                _ => {}
            }
        }
    }
    expect(doc, &["overwrites data that op", "same round"]);
}

#[test]
fn out_of_bounds() {
    let mut doc = ring(Collective::AllReduce, 2, 4);
    doc.ranks[0].ops.push(Op {
        round: doc.rounds - 1,
        channel: 0,
        kind: OpKind::Copy {
            src: Slice::new(Buf::Input, 0, 4),
            dst: Slice::new(Buf::Scratch, 0, 4),
        },
    });
    expect(doc, &["rank 0", "out of bounds", "scratch"]);
}

#[test]
fn incomplete_barrier() {
    let spec = CollectiveSpec::new(Collective::Barrier, 4, 0);
    let mut doc = build(spec, Algorithm::Dissemination, PlanParams::default())
        .unwrap()
        .materialize()
        .unwrap();
    // Keep only the first round.
    for rp in &mut doc.ranks {
        rp.ops.retain(|op| op.round == 0);
    }
    expect(doc, &["leaves the barrier", "heard"]);
}

#[test]
fn in_place_failures_are_labelled() {
    // All-reduce on two ranks: receive the peer's input into the output, send the own
    // input, then add the input in. Correct out of place; in place the receive overwrites
    // the input that is being sent in the same round.
    let mut doc = ring(Collective::AllReduce, 2, 2);
    doc.rounds = 2;
    for rp in &mut doc.ranks {
        let peer = 1 - rp.rank;
        let whole = |buf| Slice::new(buf, 0, 2);
        let op = |round, kind| Op {
            round,
            channel: 0,
            kind,
        };
        rp.scratch = 2;
        rp.ops = vec![
            op(
                0,
                OpKind::Send {
                    peer,
                    src: whole(Buf::Input),
                },
            ),
            op(
                0,
                OpKind::Recv {
                    peer,
                    dst: whole(Buf::Output),
                },
            ),
            op(
                1,
                OpKind::Copy {
                    src: whole(Buf::Input),
                    dst: whole(Buf::Scratch),
                },
            ),
            op(
                1,
                OpKind::Reduce {
                    src: whole(Buf::Scratch),
                    dst: whole(Buf::Output),
                },
            ),
        ];
    }
    expect(doc, &["(in place)", "overwrites data that op #0 sends"]);
}

#[test]
fn same_round_dependency_through_a_local_op() {
    // receive → copy → send, all in round 0: the send waits (through the copy) on a
    // receive of its own round, so the round's transfers cannot all be posted at once.
    let mut doc = ring(Collective::AllReduce, 2, 2);
    doc.rounds = 1;
    for rp in &mut doc.ranks {
        let peer = 1 - rp.rank;
        let scr = |off| Slice::new(Buf::Scratch, off, 2);
        let op = |kind| Op {
            round: 0,
            channel: 0,
            kind,
        };
        rp.scratch = 6;
        rp.ops = vec![
            op(OpKind::Send {
                peer,
                src: Slice::new(Buf::Input, 0, 2),
            }),
            op(OpKind::Recv { peer, dst: scr(0) }),
            op(OpKind::Copy {
                src: scr(0),
                dst: scr(2),
            }),
            op(OpKind::Send { peer, src: scr(2) }),
            op(OpKind::Recv { peer, dst: scr(4) }),
        ];
    }
    expect(
        doc,
        &["op #3", "depends on op #1, a receive of the same round 0"],
    );
}
