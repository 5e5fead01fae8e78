//! The re-planning drill on real (namespaced) hosts: 2 racks × 2 hosts, 1 Gbit/s cables, a
//! long all-reduce loop; mid-run the trunk drops to 50 Mbit/s (tbf change). Every rank must
//! re-plan after the same call, and the new plan must run at least 80% as fast as the model
//! predicts for it on the degraded network (the rule `netns_racks` holds the model to).
//! The timeline (alert and re-plan delays) is printed; docs/benchmarks.md records it. Needs
//! root and iproute2; says SKIP where network namespaces cannot be made.

mod common;

#[test]
fn every_rank_replans_at_one_call_when_the_trunk_slows() {
    let Some(stdout) = common::netns_script("netns-replan", &[]) else {
        return;
    };
    let field = |k: &str| common::result_field(&stdout, k);
    assert_eq!(
        field("same_call"),
        1.0,
        "every rank re-plans after one call"
    );
    assert!(
        field("replan_s").is_finite(),
        "a re-plan happened: {stdout}"
    );
    assert!(
        field("recovery") >= 0.8,
        "the new plan runs below 80% of its predicted speed: {stdout}"
    );
}
