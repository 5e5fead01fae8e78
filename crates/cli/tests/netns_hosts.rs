//! Two real (namespaced) hosts of two ranks each: the runtime takes shared memory within a
//! host and TCP between hosts, all-reduce and all-gather come out right, and
//! `TOPOCCL_TRANSPORT=shm` across hosts is an error on every rank naming the ranks it
//! cannot reach. Needs root and iproute2; says SKIP where network namespaces cannot be made.

mod common;

#[test]
fn shared_memory_within_a_host_and_tcp_between_hosts() {
    let Some(stdout) = common::netns_script("netns-hosts", &[]) else {
        return;
    };
    let checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHECK ")).collect();
    // 3 per bench job (transport, no fallback, correct) and one per rank for shm-only.
    assert_eq!(checks.len(), 10, "{checks:#?}");
    let failed: Vec<&&str> = checks.iter().filter(|l| !l.ends_with(" ok")).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(stdout.lines().any(|l| l == "RESULT ok"));
}
