//! The link drills on namespaced hosts (scripts/netns-drill.sh): a host's cable set down
//! mid-run is named (rank 2, by at least one survivor) within the call deadline (1 s) plus
//! 1 s; a tbf rate drop leaves the job going, slower, with every result correct; in an
//! elastic job, an unreachable route between two hosts (both alive, both reaching the
//! others) is routed around: all four ranks go on with that link dead and finish correct.
//! Needs root and iproute2; says SKIP where network namespaces cannot be made.

mod common;

#[test]
fn a_cable_down_is_named_in_time_a_rate_drop_only_slows_the_job_and_a_dead_route_is_avoided() {
    let Some(stdout) = common::netns_script("netns-drill", &[]) else {
        return;
    };
    let field = |k: &str| common::result_field(&stdout, k);
    let detect = field("detect_ms");
    assert!(
        (0.0..=2000.0).contains(&detect),
        "cable down seen after {detect} ms"
    );
    assert_eq!(field("named_any"), 1.0, "no survivor named rank 2");
    assert_eq!(field("rate_ok"), 1.0, "the slowed job failed or lost data");
    assert!(
        field("slowdown") > 1.2,
        "the rate drop did not slow the job"
    );
    assert_eq!(
        field("around_dead"),
        1.0,
        "the shrink did not keep 4 ranks with the link 1-2 dead"
    );
    assert_eq!(
        field("around_ok"),
        1.0,
        "the elastic job did not finish around the link"
    );
}
