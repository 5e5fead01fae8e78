//! Every `TOPOCCL_FAULTS` effect, over both transports, with the error (or slowdown) it
//! produces: the rank or link at fault is named, the deadline holds. Ranks are threads of
//! this process; the faults act at the transport boundary exactly as they do between
//! processes.

mod common;

use std::time::{Duration, Instant};

use topoccl::transport::faults;
use topoccl::{Communicator, Error, ReduceOp};

/// 1 MiB of f32: the ring's two messages each way are 512 KiB.
const COUNT: usize = 1 << 18;

/// One rank's outcome: the call's result and how long it took.
type Outcome = (topoccl::Result<()>, Duration);

/// Runs one 1 MiB all-reduce on 2 ranks with `spec` injected and `timeout`, over each
/// transport; returns per transport each rank's result and how long the call took.
fn run(spec: &str, timeout_ms: u64) -> Vec<(String, Vec<Outcome>)> {
    let rules = faults::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
    common::each_transport()
        .into_iter()
        .map(|(mode, mut cfg)| {
            cfg.faults = rules.clone();
            cfg.timeout = Duration::from_millis(timeout_ms);
            cfg.init_timeout = Duration::from_secs(10);
            cfg.probe = false;
            let out = common::run_world(2, cfg, |c: &mut Communicator| {
                let input = vec![1.0f32; COUNT];
                let mut output = vec![0.0f32; COUNT];
                let t = Instant::now();
                let r = c.all_reduce(&input, &mut output, ReduceOp::Sum);
                if r.is_ok() {
                    assert!(output.iter().all(|x| *x == 2.0), "wrong sum");
                }
                (r, t.elapsed())
            });
            (format!("{mode:?}"), out)
        })
        .collect()
}

fn err(r: &(topoccl::Result<()>, Duration), what: &str) -> Error {
    match &r.0 {
        Ok(()) => panic!("{what}: the call succeeded"),
        Err(e) => e.clone(),
    }
}

#[test]
fn a_short_delay_slows_the_call_and_nothing_fails() {
    for (mode, out) in run("delay=300ms@rank0->rank1:once", 10_000) {
        for (rank, (r, took)) in out.iter().enumerate() {
            assert!(r.is_ok(), "{mode} rank {rank}: {r:?}");
            // Rank 1 waits for rank 0's delayed frame; rank 0 for rank 1's reply to it.
            assert!(
                *took >= Duration::from_millis(290),
                "{mode} rank {rank}: {took:?}"
            );
        }
    }
}

#[test]
fn a_delay_past_the_deadline_is_named_on_both_sides() {
    for (mode, out) in run("delay=5s@rank0->rank1", 600) {
        let e1 = err(&out[1], &mode);
        assert!(matches!(e1, Error::Timeout { .. }), "{mode}: {e1}");
        assert_eq!(e1.culprits(), vec![0], "{mode}: {e1}");
        let e0 = err(&out[0], &mode);
        assert!(
            e0.to_string().contains(
                "TOPOCCL_FAULTS rule 'delay=5s@rank0->rank1' held the link from rank 0 to rank 1"
            ),
            "{mode}: {e0}"
        );
        for (rank, (_, took)) in out.iter().enumerate() {
            assert!(
                *took < Duration::from_millis(1600),
                "{mode} rank {rank}: {took:?}"
            );
        }
    }
}

#[test]
fn a_rate_limit_slows_the_link_to_its_rate() {
    // Rank 0 sends 512 KiB to rank 1 at 2 MB/s: at least ~0.26 s.
    for (mode, out) in run("rate=2MB/s@rank0->rank1", 10_000) {
        for (rank, (r, took)) in out.iter().enumerate() {
            assert!(r.is_ok(), "{mode} rank {rank}: {r:?}");
            assert!(
                *took >= Duration::from_millis(240),
                "{mode} rank {rank}: {took:?}"
            );
        }
    }
    // Too slow for the deadline: the rule is named by the sender, rank 0 by the receiver.
    for (mode, out) in run("rate=100KB/s@rank0->rank1", 500) {
        let e0 = err(&out[0], &mode);
        assert!(
            e0.to_string()
                .contains("rule 'rate=100KB/s@rank0->rank1' held the link"),
            "{mode}: {e0}"
        );
        assert_eq!(err(&out[1], &mode).culprits(), vec![0], "{mode}");
    }
}

#[test]
fn a_dropped_link_fails_both_ends_at_once_naming_each_other() {
    for (mode, out) in run("drop@rank0->rank1:after=100KB", 10_000) {
        let e0 = err(&out[0], &mode);
        assert!(
            e0.to_string()
                .contains("TOPOCCL_FAULTS rule 'drop@rank0->rank1:after=100KB' cut the link from rank 0 to rank 1"),
            "{mode}: {e0}"
        );
        assert_eq!(e0.culprits(), vec![1], "{mode}: {e0}");
        // Rank 1 sees the link close (naming rank 0) or hears rank 0's verdict (naming the
        // link), whichever comes first.
        let e1 = err(&out[1], &mode);
        assert!(
            e1.culprits() == vec![0]
                || e1
                    .to_string()
                    .contains("cut the link from rank 0 to rank 1"),
            "{mode}: {e1}"
        );
        for (rank, (_, took)) in out.iter().enumerate() {
            // Not a timeout: the cut is seen as soon as it happens.
            assert!(
                *took < Duration::from_secs(3),
                "{mode} rank {rank}: {took:?}"
            );
        }
    }
}

#[test]
fn a_corrupted_frame_is_refused_naming_its_sender() {
    for (mode, out) in run("corrupt@rank0->rank1:once", 10_000) {
        let e1 = err(&out[1], &mode);
        assert_eq!(e1.culprits(), vec![0], "{mode}: {e1}");
        assert!(e1.to_string().contains("rank 0"), "{mode}: {e1}");
        // Rank 0 hears of it (the refusal or the link going), not a timeout.
        let e0 = err(&out[0], &mode);
        assert!(!matches!(e0, Error::Timeout { .. }), "{mode}: {e0}");
        for (rank, (_, took)) in out.iter().enumerate() {
            assert!(
                *took < Duration::from_secs(3),
                "{mode} rank {rank}: {took:?}"
            );
        }
    }
}

#[test]
fn a_stalled_link_times_out_naming_the_stalled_sender() {
    for (mode, out) in run("stall@rank1:after=64KB", 700) {
        let e0 = err(&out[0], &mode);
        assert!(matches!(e0, Error::Timeout { .. }), "{mode}: {e0}");
        assert_eq!(e0.culprits(), vec![1], "{mode}: {e0}");
        let e1 = err(&out[1], &mode);
        assert!(
            e1.to_string().contains(
                "TOPOCCL_FAULTS rule 'stall@rank1:after=64KB' held the link from rank 1 to rank 0"
            ),
            "{mode}: {e1}"
        );
        for (rank, (_, took)) in out.iter().enumerate() {
            assert!(
                *took < Duration::from_millis(1700),
                "{mode} rank {rank}: {took:?}"
            );
        }
    }
}

#[test]
fn faults_on_other_links_leave_this_one_alone() {
    for (mode, out) in run("stall@rank5;drop@rank3->rank0", 5_000) {
        for (rank, (r, _)) in out.iter().enumerate() {
            assert!(r.is_ok(), "{mode} rank {rank}: {r:?}");
        }
    }
}
