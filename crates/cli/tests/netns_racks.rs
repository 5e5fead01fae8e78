//! Measured on real (namespaced) hosts: 2 racks × 2 hosts joined by tbf-shaped veth
//! cables, a slow inter-rack cable, one rank per host placed the worst way for a ring.
//! The all-reduce the runtime picks with the topology file must beat the flat ring by at
//! least 80% of the factor the cost model predicts. Needs root and iproute2; says SKIP
//! where network namespaces cannot be made.

mod common;

#[test]
fn topology_aware_allreduce_beats_the_worst_ring_as_predicted() {
    let Some(stdout) = common::netns_script("netns-racks", &[]) else {
        return;
    };
    let field = |k: &str| common::result_field(&stdout, k);
    let (predicted, measured) = (field("predicted"), field("measured"));
    assert!(
        predicted > 1.5,
        "the model sees little to gain ({predicted:.2}×): the setup is wrong"
    );
    assert!(
        measured >= 0.8 * predicted,
        "measured speedup {measured:.2}× is below 80% of the predicted {predicted:.2}×"
    );
}
