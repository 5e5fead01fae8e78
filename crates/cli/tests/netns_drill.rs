//! The link drills on namespaced hosts (scripts/netns-drill.sh): a host's cable set down
//! mid-run is named (rank 2, by at least one survivor) within the call deadline (1 s) plus
//! 1 s; a tbf rate drop leaves the job going, slower, with every result correct. Needs
//! root and iproute2; says SKIP where network namespaces cannot be made.

mod common;

#[test]
fn a_cable_down_is_named_in_time_and_a_rate_drop_only_slows_the_job() {
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
}
