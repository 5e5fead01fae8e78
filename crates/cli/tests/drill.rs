//! `topoccl drill`: a short run of every kind (one drill each on 4 ranks) must name the
//! right culprit, return no wrong result and never hang; bad input is refused before
//! anything starts. With `--elastic`, the survivors of a kill or a stop finish the run, and
//! a cut link is routed around with every rank kept.

mod common;
use common::topoccl;

#[test]
fn every_kind_once_names_the_culprit_without_wrong_data_or_hangs() {
    let out = topoccl(&["drill", "--times", "1", "--seed", "3", "--json"]);
    assert_eq!(out.status.code(), Some(0), "every drill passes");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let drills = v["drills"].as_array().expect("drills");
    let kinds: Vec<&str> = drills.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["kill", "stop", "cut", "latency", "loss", "slow"]);
    for d in drills {
        assert_eq!(d["hang"], false, "{d}");
        assert_eq!(d["data_lost"], false, "{d}");
        assert_eq!(d["culprit_ok"], true, "{d}");
        assert_eq!(d["recovered"], true, "{d}");
        let target = d["target"].as_str().unwrap();
        let culprits: Vec<u64> = d["culprits"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c.as_u64())
            .collect();
        if d["fatal"] == true {
            // Named, and inside the target: the rank, or an end of the link.
            assert!(!culprits.is_empty(), "{d}");
            let ends: Vec<u64> = target
                .trim_start_matches("rank ")
                .trim_start_matches("link ")
                .split("->")
                .filter_map(|x| x.parse().ok())
                .collect();
            assert!(culprits.iter().all(|c| ends.contains(c)), "{d}");
            // Within the call deadline (1 s) + 1 s.
            let det = d["detection_s"].as_f64().expect("detected");
            assert!(det < 2.0, "{d}");
        } else {
            assert!(culprits.is_empty(), "no one blamed: {d}");
        }
    }
    assert_eq!(v["summary"]["drills"], 6);
    assert_eq!(v["summary"]["failures"], 0);
}

#[test]
fn bad_kinds_ranks_and_links_are_refused_before_anything_starts() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["drill", "--kinds", "kill,flood"],
            "unknown kind 'flood'; use kill, stop",
        ),
        (
            &["drill", "--rank", "4"],
            "rank 4 is not in the job; use 0 to 3",
        ),
        (
            &["drill", "--link", "0->2"],
            "'0->2' is not a link of the drill's ring",
        ),
        (&["drill", "--ranks", "1"], "use 2 to 64"),
    ];
    for (args, want) in cases {
        let out = topoccl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// Elastic: after a kill or a stop the survivors shrink and finish every iteration with
/// correct results; the culprit is still the one named.
#[test]
fn elastic_survivors_of_a_kill_and_a_stop_finish_the_run_and_a_cut_link_is_routed_around() {
    let out = topoccl(&[
        "drill",
        "--kinds",
        "kill,stop,cut",
        "--times",
        "2",
        "--seed",
        "5",
        "--elastic",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let drills = v["drills"].as_array().expect("drills");
    assert_eq!(drills.len(), 6);
    for d in drills {
        assert_eq!(d["hang"], false, "{d}");
        assert_eq!(d["data_lost"], false, "{d}");
        assert_eq!(d["culprit_ok"], true, "{d}");
        assert_eq!(d["recovered"], true, "the survivors finished: {d}");
        if d["kind"] == "cut" {
            // Both ends live on: all four ranks go on, around the cut link.
            assert_eq!(d["continued_with"], 4, "{d}");
            let link = d["target"].as_str().unwrap().trim_start_matches("link ");
            let (a, b) = link.split_once("->").unwrap();
            let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
            let around = format!("{}-{}", a.min(b), a.max(b));
            assert_eq!(d["routed_around"], serde_json::json!([around]), "{d}");
        } else {
            assert_eq!(d["continued_with"], 3, "{d}");
        }
    }
    assert_eq!(out.status.code(), Some(0));
}
