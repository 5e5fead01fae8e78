//! Rough timings, run by hand: `cargo test -p topoccl-watch --test flight_perf --
//! --ignored --nocapture` (the test profile builds with opt-level 2).

use std::borrow::Cow;
use std::time::Instant;

use topoccl_watch::flight::{doctor, Call, Dump, DumpMeta, DumpReason, Entry, Ring};

fn call(seq: u64) -> Call {
    Call {
        algorithm: Cow::Borrowed("ring"),
        ..Call::new(seq, "topoccl:all_reduce", "f32", 1 << 20, 4 << 20)
    }
}

#[test]
#[ignore = "timing, run by hand"]
fn timings() {
    println!(
        "size_of::<Entry>() = {} bytes",
        std::mem::size_of::<Entry>()
    );
    let mut ring = Ring::default();
    let n = 10_000_000u64;
    let t0 = Instant::now();
    for seq in 0..n {
        let id = ring.record_start(call(seq), seq);
        ring.mark_started(id, seq + 1);
        ring.mark_completed(id, seq + 2);
    }
    let per = t0.elapsed().as_nanos() as f64 / n as f64;
    println!("record_start + mark_started + mark_completed: {per:.1} ns per call");

    for world in [64u32, 1024] {
        let dumps: Vec<Dump> = (0..world)
            .map(|r| {
                let mut ring = Ring::default();
                for seq in 0..2_000u64 {
                    let t = seq * 10_000_000 + u64::from(r) * 1_000;
                    let id = ring.record_start(call(seq), t);
                    ring.mark_started(id, t + 10);
                    ring.mark_completed(id, seq * 10_000_000 + 5_000_000);
                }
                ring.dump(DumpMeta {
                    job_id: "j".to_string(),
                    process_group: "world".to_string(),
                    rank: r,
                    world_size: world,
                    host: "h".to_string(),
                    dump_time_ns: 1 << 40,
                    reason: DumpReason::Request,
                    detail: None,
                })
            })
            .collect();
        let t0 = Instant::now();
        let json: Vec<String> = dumps.iter().map(Dump::to_json).collect();
        let t_write = t0.elapsed();
        let t0 = Instant::now();
        let parsed: Vec<Dump> = json
            .iter()
            .filter_map(|j| Dump::parse(j, "x").ok())
            .collect();
        let t_parse = t0.elapsed();
        let t0 = Instant::now();
        let report = doctor(&parsed).map(|r| r.all_agree());
        println!(
            "{world} ranks x 2000 entries: to_json {t_write:.2?} ({} KB/dump), parse {t_parse:.2?}, \
             doctor {:.2?} (all agree: {report:?})",
            json[0].len() / 1024,
            t0.elapsed()
        );
    }
}
