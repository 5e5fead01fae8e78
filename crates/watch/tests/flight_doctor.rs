//! `doctor` on simulated jobs: all agree; a rank that never arrived; ranks that entered
//! different calls; a rank stopped for 2 s once; a persistently slow rank; mixed,
//! duplicate and missing dumps; the example dumps in `flight_data/`.

use std::borrow::Cow;

use proptest::prelude::*;
use topoccl_watch::flight::doctor::{SlowPattern, Waiting};
use topoccl_watch::flight::{
    doctor, Call, ClockBasis, DoctorConfig, Dump, DumpMeta, DumpReason, Finding, FlightError,
    Peers, Report, Ring, State,
};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

/// The call every rank makes unless a scenario says otherwise: all_reduce of 64 MiB f32.
fn all_reduce(seq: u64) -> Call {
    Call {
        algorithm: Cow::Borrowed("ring"),
        timeout_ms: 30_000,
        ..Call::new(seq, "topoccl:all_reduce", "f32", 16 << 20, 64 << 20)
    }
}

/// A deterministic jitter of 0..1 ms per rank and call.
fn jitter(rank: u32, seq: u64) -> u64 {
    ((u64::from(rank) * 7_919 + seq * 104_729) % 1_000) * 1_000
}

/// A simulated job: `world` ranks run calls `seqs`; rank r enters call s
/// `late(r, s)` ns late (plus jitter). `call(r, s)` is what r enters (`None`: it never
/// arrives, and the others time out after 30.2 s). A call that ranks enter differently
/// hangs. Rank r's times are shifted by `offsets[r]` (its host clock).
struct Job {
    world: u32,
    seqs: std::ops::RangeInclusive<u64>,
    capacity: usize,
    hosts: Vec<String>,
    offsets: Vec<u64>,
    /// Ranks waiting for one that never arrives time out after 30.2 s if `None`, else
    /// are still inside the call when the dump is taken this long after (as on SIGUSR1).
    inside_ns: Option<u64>,
}

impl Job {
    fn new(world: u32, seqs: std::ops::RangeInclusive<u64>) -> Self {
        Job {
            world,
            seqs,
            capacity: 2_000,
            hosts: vec!["node-a".to_string(); world as usize],
            offsets: vec![0; world as usize],
            inside_ns: None,
        }
    }

    /// Each rank on its own host, clocks apart by 3.7 s each.
    fn on_hosts(mut self) -> Self {
        self.hosts = (0..self.world).map(|r| format!("node-{r}")).collect();
        self.offsets = (0..u64::from(self.world))
            .map(|r| r * 3_700 * MS + 11)
            .collect();
        self
    }

    fn run(
        &self,
        late: impl Fn(u32, u64) -> u64,
        call: impl Fn(u32, u64) -> Option<Call>,
    ) -> Vec<Dump> {
        let ranks = 0..self.world;
        let mut rings: Vec<Ring> = ranks
            .clone()
            .map(|_| Ring::new(self.capacity).unwrap_or_default())
            .collect();
        let off = |r: u32| self.offsets[r as usize];
        let mut t = 1_000 * S;
        for seq in self.seqs.clone() {
            let mut entered = Vec::new();
            let mut missing = false;
            for r in ranks.clone() {
                match call(r, seq) {
                    Some(mut c) => {
                        if c.peers == Peers::NONE {
                            let w = self.world;
                            c.peers = Peers::new(&[(r + w - 1) % w, (r + 1) % w]);
                        }
                        let enter = t + jitter(r, seq) + late(r, seq);
                        let sig = (c.profiling_name.clone(), c.count, c.root);
                        let id = rings[r as usize].record_start(c, enter + off(r));
                        rings[r as usize].mark_started(id, enter + off(r) + 1_000);
                        entered.push((r, id, enter, sig));
                    }
                    None => missing = true,
                }
            }
            let last = entered.iter().map(|e| e.2).max().unwrap_or(t);
            if missing {
                if let Some(inside) = self.inside_ns {
                    t += inside;
                    break;
                }
                for &(r, id, enter, _) in &entered {
                    let end = enter + 30_200 * MS + off(r);
                    rings[r as usize].mark_failed(id, end, "timeout after 30000 ms");
                }
                t = last + 31 * S;
                break;
            }
            if entered.iter().any(|e| e.3 != entered[0].3) {
                t = last + 5 * S;
                break;
            }
            for &(r, id, _, _) in &entered {
                let end = last + MS + jitter(r, seq) / 10 + off(r);
                rings[r as usize].mark_completed(id, end);
            }
            t = last + 2 * MS + 10 * MS;
        }
        ranks
            .map(|r| {
                rings[r as usize].dump(DumpMeta {
                    job_id: "job-42".to_string(),
                    process_group: "world".to_string(),
                    rank: r,
                    world_size: self.world,
                    host: self.hosts[r as usize].clone(),
                    dump_time_ns: t + off(r),
                    reason: DumpReason::Timeout,
                    detail: None,
                })
            })
            .collect()
    }
}

fn on_time(_: u32, _: u64) -> u64 {
    0
}

fn same_call(_: u32, seq: u64) -> Option<Call> {
    Some(all_reduce(seq))
}

fn check(dumps: &[Dump]) -> Report {
    match doctor(dumps) {
        Ok(r) => r,
        Err(e) => panic!("doctor refused: {e}"),
    }
}

fn slow(report: &Report) -> Vec<(u32, SlowPattern, u64, f64)> {
    report
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::Slow {
                rank,
                pattern,
                worst_call,
                worst_late_ns,
                ..
            } => Some((*rank, *pattern, worst_call.seq, *worst_late_ns)),
            _ => None,
        })
        .collect()
}

#[test]
fn all_agree() {
    for job in [Job::new(4, 1..=60), Job::new(4, 1..=60).on_hosts()] {
        let report = check(&job.run(on_time, same_call));
        assert!(report.all_agree(), "{report}");
        assert_eq!(report.seq_range, Some((1, 60)));
        assert_eq!(report.calls_compared, 60);
        assert!(
            report.to_string().ends_with("all ranks agree\n"),
            "{report}"
        );
    }
}

#[test]
fn rank_that_never_arrived_is_named_with_the_wait() {
    let job = Job {
        capacity: 16,
        ..Job::new(4, 1000..=1045)
    };
    let dumps = job.run(on_time, |r, s| (r != 2 || s < 1045).then(|| all_reduce(s)));
    assert_eq!(dumps[0].dropped, 30, "the rings wrapped");
    let report = check(&dumps);
    let Some(Finding::NeverArrived {
        seq,
        call,
        furthest_seq,
        absent,
        waiting,
    }) = report.findings.first()
    else {
        panic!("{report}")
    };
    assert_eq!((*seq, *furthest_seq), (1045, 1045));
    assert_eq!(
        call.as_ref().map(|c| c.to_string()).as_deref(),
        Some("all_reduce 64 MiB f32")
    );
    let absent: Vec<(u32, Option<u64>, Option<State>)> = absent
        .iter()
        .map(|a| (a.rank, a.last_seq, a.last_state))
        .collect();
    assert_eq!(absent, vec![(2, Some(1044), Some(State::Completed))]);
    assert_eq!(
        waiting.iter().map(|w| w.rank).collect::<Vec<_>>(),
        vec![0, 1, 3]
    );
    for Waiting {
        state,
        waited_ns,
        error,
        ..
    } in waiting
    {
        assert_eq!(*state, State::Failed);
        assert_eq!(*waited_ns, 30_200 * MS);
        assert_eq!(error.as_deref(), Some("timeout after 30000 ms"));
    }
    // The waiting ranks' timeouts are shown there, not again as failures; nothing slow.
    assert_eq!(report.findings.len(), 1, "{report}");
    let text = report.to_string();
    assert!(
        text.contains(
            "rank 2 never arrived at call #1045 (all_reduce 64 MiB f32); ranks 0,1,3 waited 30.2 s\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("  rank 2: last call #1044 (completed); others reached #1045\n"),
        "{text}"
    );
    assert!(
        text.contains("  ranks 0,1,3: failed after 30.2 s: timeout after 30000 ms\n"),
        "{text}"
    );
}

#[test]
fn ranks_still_waiting_at_the_dump_and_a_rank_with_no_calls() {
    let job = Job {
        inside_ns: Some(12 * S),
        ..Job::new(6, 1..=3)
    };
    let mut dumps = job.run(on_time, |r, s| (r != 4 || s < 3).then(|| all_reduce(s)));
    let text = check(&dumps).to_string();
    assert!(
        text.contains(
            "rank 4 never arrived at call #3 (all_reduce 64 MiB f32); ranks 0-3,5 waited 12.0 s\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("  ranks 0-3,5: still inside (started) after 12.0 s, at the dump\n"),
        "{text}"
    );

    dumps[5].entries.clear();
    let report = check(&dumps);
    match report.findings.first() {
        Some(Finding::NeverArrived { seq: 1, absent, .. }) => {
            let absent: Vec<_> = absent.iter().map(|a| (a.rank, a.last_seq)).collect();
            assert_eq!(absent, vec![(5, None)]);
        }
        other => panic!("{other:?}\n{report}"),
    }
    assert!(
        report.to_string().contains("  rank 5: recorded no calls\n"),
        "{report}"
    );
}

#[test]
fn dump_of_a_running_job_mid_call_is_not_a_missing_rank() {
    let job = Job {
        inside_ns: Some(5 * MS),
        ..Job::new(4, 1..=10)
    };
    let dumps = job.run(on_time, |r, s| (r != 3 || s < 10).then(|| all_reduce(s)));
    let report = check(&dumps);
    assert!(report.all_agree(), "{report}");
    // The same dumps with a stricter setting: rank 3 is named.
    let strict = DoctorConfig {
        min_wait_ns: MS,
        ..DoctorConfig::default()
    };
    let report = topoccl_watch::flight::doctor_with(&dumps, &strict);
    assert!(
        matches!(
            report.as_ref().map(|r| r.findings.first()),
            Ok(Some(Finding::NeverArrived { seq: 10, .. }))
        ),
        "{report:?}"
    );
}

#[test]
fn rank_that_entered_another_call_is_named_with_both_calls() {
    let dumps = Job::new(4, 1..=57).run(on_time, |r, s| {
        Some(if r == 1 && s == 57 {
            Call::new(57, "topoccl:all_gather", "f32", 16 << 20, 256 << 20)
        } else {
            all_reduce(s)
        })
    });
    let report = check(&dumps);
    let Some(Finding::Mismatch {
        seq,
        groups,
        differs,
        later,
    }) = report.findings.first()
    else {
        panic!("{report}")
    };
    assert_eq!((*seq, *later), (57, 0));
    assert_eq!(differs, &vec!["collective".to_string()]);
    let groups: Vec<(String, Vec<u32>)> = groups
        .iter()
        .map(|g| (g.call.collective.clone(), g.ranks.clone()))
        .collect();
    assert_eq!(
        groups,
        vec![
            ("all_gather".to_string(), vec![1]),
            ("all_reduce".to_string(), vec![0, 2, 3])
        ]
    );
    let text = report.to_string();
    assert!(
        text.contains("ranks entered different calls at #57 (collective differs)"),
        "{text}"
    );
    assert!(
        text.contains("rank 1 entered all_gather 256 MiB f32"),
        "{text}"
    );
    assert!(
        text.contains("ranks 0,2,3 entered all_reduce 64 MiB f32"),
        "{text}"
    );
}

#[test]
fn count_and_root_mismatches_are_told_apart() {
    let dumps = Job::new(3, 1..=9).run(on_time, |r, s| {
        let mut c = all_reduce(s);
        if s == 9 {
            c.root = Some(if r == 2 { 1 } else { 0 });
            c.count = if r == 0 { 7 } else { c.count };
        }
        Some(c)
    });
    let report = check(&dumps);
    match report.findings.first() {
        Some(Finding::Mismatch {
            seq: 9,
            differs,
            groups,
            ..
        }) => {
            assert_eq!(differs, &vec!["count".to_string(), "root".to_string()]);
            assert_eq!(groups.len(), 3);
        }
        other => panic!("{other:?}\n{report}"),
    }
}

#[test]
fn rank_stopped_two_seconds_is_named_a_straggler() {
    for job in [Job::new(4, 1..=60), Job::new(4, 1..=60).on_hosts()] {
        let dumps = job.run(|r, s| if r == 3 && s == 20 { 2 * S } else { 0 }, same_call);
        let report = check(&dumps);
        let found = slow(&report);
        assert_eq!(found.len(), 1, "{report}");
        let (rank, pattern, seq, worst) = found[0];
        assert_eq!((rank, pattern, seq), (3, SlowPattern::Episode, 20));
        assert!((worst - 2e9).abs() < 2e6, "worst {worst}");
        assert_eq!(report.findings.len(), 1, "{report}");
        let text = report.to_string();
        assert!(
            text.contains("rank 3 straggled: entered call #20 (all_reduce 64 MiB f32) 2.0 s late"),
            "{text}"
        );
        let hosts = matches!(report.clock, ClockBasis::Durations { hosts: 4 });
        assert_eq!(hosts, job.hosts[0] != job.hosts[1]);
    }
}

#[test]
fn persistently_slow_rank_is_named_with_its_figures() {
    for job in [
        Job::new(8, 1..=60),
        Job::new(8, 1..=60).on_hosts(),
        Job::new(2, 1..=60),
        Job::new(2, 1..=60).on_hosts(),
    ] {
        let dumps = job.run(
            |r, s| {
                if r == 1 {
                    50 * MS + jitter(r, s * 3)
                } else {
                    0
                }
            },
            same_call,
        );
        let report = check(&dumps);
        let found = slow(&report);
        assert_eq!(found.len(), 1, "{report}");
        assert_eq!(
            (found[0].0, found[0].1),
            (1, SlowPattern::Persistent),
            "{report}"
        );
        let Some(Finding::Slow {
            calls_late,
            calls_compared,
            median_late_ns,
            median_duration_ns,
            others_median_duration_ns,
            ..
        }) = report.findings.first()
        else {
            panic!("{report}")
        };
        assert_eq!((*calls_late, *calls_compared), (60, 60));
        assert!((median_late_ns - 50e6).abs() < 2e6, "{median_late_ns}");
        // The others waited for it: their calls took about 50 ms longer.
        let (own, others) = (
            median_duration_ns.unwrap_or(0.0),
            others_median_duration_ns.unwrap_or(0.0),
        );
        assert!(others - own > 45e6, "own {own}, others {others}");
        let text = report.to_string();
        assert!(
            text.contains("rank 1 is persistently slow: entered 60 of 60 calls late, median 5"),
            "{text}"
        );
    }
}

fn parsed(job_of: impl Fn(u32) -> &'static str) -> Vec<Dump> {
    Job::new(4, 1..=5)
        .run(on_time, same_call)
        .into_iter()
        .map(|mut d| {
            d.job_id = job_of(d.rank).to_string();
            Dump::parse(&d.to_json(), &format!("dumps/rank{}.json", d.rank))
        })
        .collect::<Result<_, _>>()
        .unwrap_or_default()
}

#[test]
fn dumps_of_different_jobs_are_refused_naming_both() {
    let dumps = parsed(|r| if r == 2 { "job-43" } else { "job-42" });
    let err = doctor(&dumps).err();
    assert_eq!(
        err,
        Some(FlightError::Mixed {
            field: "job_id",
            first_source: "dumps/rank0.json".to_string(),
            first_value: "job-42".to_string(),
            other_source: "dumps/rank2.json".to_string(),
            other_value: "job-43".to_string(),
        })
    );
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    for part in [
        "dumps/rank0.json",
        "\"job-42\"",
        "dumps/rank2.json",
        "\"job-43\"",
    ] {
        assert!(msg.contains(part), "{msg}");
    }
}

#[test]
fn duplicate_and_missing_ranks() {
    let mut dumps = parsed(|_| "job-42");
    let mut again = dumps[1].clone();
    again.source = "old/rank1.json".to_string();
    dumps.push(again);
    let err = doctor(&dumps)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("two dumps from rank 1: dumps/rank1.json and old/rank1.json"),
        "{err}"
    );

    dumps.truncate(4);
    dumps.remove(2);
    let report = check(&dumps);
    assert_eq!(report.missing_ranks, vec![2]);
    assert_eq!(report.ranks, vec![0, 1, 3]);
    assert!(!report.all_agree());
    let text = report.to_string();
    assert!(text.contains("no dump from rank 2\n"), "{text}");
    assert!(text.ends_with("all ranks with a dump agree\n"), "{text}");

    assert_eq!(doctor(&[]).err(), Some(FlightError::NoDumps));
    let bad = DoctorConfig {
        mad_k: f64::NAN,
        ..DoctorConfig::default()
    };
    let err = topoccl_watch::flight::doctor_with(&dumps, &bad).err();
    assert!(
        matches!(err, Some(FlightError::Config { field: "mad_k", .. })),
        "{err:?}"
    );
}

#[test]
fn report_serialises() -> Result<(), serde_json::Error> {
    let dumps = Job::new(4, 1..=30).run(|r, s| if r == 0 && s == 7 { S } else { 0 }, same_call);
    let report = check(&dumps);
    let json = serde_json::to_string(&report)?;
    assert!(json.contains("\"kind\":\"slow\""), "{json}");
    let back: Report = serde_json::from_str(&json)?;
    assert_eq!(back, report);
    Ok(())
}

/// The example in `flight_data/`: four ranks, rings of 4, rank 2 never entered #1045.
fn example_job() -> Vec<Dump> {
    Job {
        capacity: 4,
        ..Job::new(4, 1040..=1045)
    }
    .run(on_time, |r, s| (r != 2 || s < 1045).then(|| all_reduce(s)))
}

const EXAMPLE: [(&str, &str); 4] = [
    ("rank0.json", include_str!("flight_data/rank0.json")),
    ("rank1.json", include_str!("flight_data/rank1.json")),
    ("rank2.json", include_str!("flight_data/rank2.json")),
    ("rank3.json", include_str!("flight_data/rank3.json")),
];

#[test]
fn example_dumps_read_and_diagnose() -> Result<(), FlightError> {
    let dumps: Vec<Dump> = EXAMPLE
        .iter()
        .map(|(name, text)| Dump::parse(text, name))
        .collect::<Result<_, _>>()?;
    // The files are what this build writes for the scenario: the format is stable.
    for (file, fresh) in dumps.iter().zip(example_job()) {
        assert_eq!(
            Dump {
                source: String::new(),
                ..file.clone()
            },
            fresh
        );
    }
    let text = doctor(&dumps)?.to_string();
    assert!(
        text.contains(
            "rank 2 never arrived at call #1045 (all_reduce 64 MiB f32); ranks 0,1,3 waited 30.2 s"
        ),
        "{text}"
    );
    Ok(())
}

/// Rewrites `flight_data/` from [`example_job`] (run with `--ignored` after a format
/// change, and review the diff).
#[test]
#[ignore = "writes tests/flight_data; run by hand after a format change"]
fn regenerate_example_dumps() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flight_data");
    for d in example_job() {
        std::fs::write(dir.join(format!("rank{}.json", d.rank)), d.to_json() + "\n")?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the world, the stalled rank, call and stall (≥ 100 ms), the doctor names
    /// exactly that rank, at that call, and nothing else.
    #[test]
    fn any_single_stall_is_found(
        world in 2u32..9,
        who in 0u32..8,
        at in 1u64..40,
        stall_ms in 100u64..5_000,
        hosts in any::<bool>(),
    ) {
        let who = who % world;
        let job = if hosts { Job::new(world, 1..=40).on_hosts() } else { Job::new(world, 1..=40) };
        let dumps = job.run(|r, s| if r == who && s == at { stall_ms * MS } else { 0 }, same_call);
        let report = check(&dumps);
        let found = slow(&report);
        prop_assert_eq!(found.len(), 1, "{}", report);
        prop_assert_eq!((found[0].0, found[0].1, found[0].2), (who, SlowPattern::Episode, at));
        prop_assert!((found[0].3 - (stall_ms * MS) as f64).abs() < 2e6);
        prop_assert_eq!(report.findings.len(), 1);
    }
}

/// An arbitrary entry of call `seq`: any times, states and names.
fn arb_entry(seq: u64) -> impl Strategy<Value = topoccl_watch::flight::Entry> {
    (
        prop::sample::select(vec!["topoccl:all_reduce", "topoccl:broadcast", "odd"]),
        0u64..3,
        prop::option::of(0u32..3),
        any::<u64>(),
        prop::option::of(any::<u64>()),
        0u8..4,
    )
        .prop_map(move |(name, count, root, created, end, fate)| {
            let c = Call {
                root,
                ..Call::new(seq, name, "f32", count, count * 4)
            };
            let mut ring = Ring::new(1).unwrap_or_default();
            let id = ring.record_start(c, created);
            if fate >= 1 {
                ring.mark_started(id, created / 2);
            }
            match (fate, end) {
                (2, Some(t)) => ring.mark_completed(id, t),
                (3, Some(t)) => ring.mark_failed(id, t, "boom"),
                _ => false,
            };
            let entry = ring.entries().next().cloned();
            entry.unwrap_or_else(|| topoccl_watch::flight::Entry::new(0, all_reduce(seq), created))
        })
}

/// One rank's dump: increasing call numbers from `start` (near u64::MAX included).
fn arb_dump(rank: u32, world: u32) -> impl Strategy<Value = Dump> {
    (
        prop_oneof![0u64..20, Just(u64::MAX - 8)],
        prop::collection::vec(0u64..3, 0..8),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_flat_map(move |(start, gaps, other_host, dump_time)| {
            let mut seq = start;
            let seqs: Vec<u64> = gaps
                .iter()
                .map(|g| {
                    seq = seq.saturating_add(g + 1);
                    seq
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let entries: Vec<_> = seqs.iter().map(|&s| arb_entry(s)).collect();
            entries.prop_map(move |mut entries| {
                for (i, e) in entries.iter_mut().enumerate() {
                    e.record_id = i as u64;
                }
                let host = if other_host { "node-b" } else { "node-a" };
                Dump::new(
                    DumpMeta {
                        job_id: "j".to_string(),
                        process_group: "world".to_string(),
                        rank,
                        world_size: world,
                        host: host.to_string(),
                        dump_time_ns: dump_time,
                        reason: DumpReason::Signal,
                        detail: None,
                    },
                    16,
                    0,
                    entries,
                )
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the (valid) dumps hold, the doctor answers, never panics, and its report
    /// prints and serialises.
    #[test]
    fn doctor_never_panics(
        (ranks, dumps) in (1u32..6, prop::collection::vec(any::<bool>(), 6)).prop_flat_map(
            |(world, keep)| {
                let ranks: Vec<u32> = (0..world).filter(|&r| keep[r as usize] || r == 0).collect();
                let dumps: Vec<_> = ranks.iter().map(|&r| arb_dump(r, world)).collect();
                (Just(ranks), dumps)
            }
        )
    ) {
        let report = doctor(&dumps).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!report.to_string().is_empty());
        prop_assert_eq!(report.ranks.clone(), ranks);
        let json = serde_json::to_string(&report).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(json.contains("\"findings\""));
    }
}
