//! `topoccl sim --algo nccl | nccl-ring | nccl-tree | nvls | collnet`: NCCL's algorithms in
//! the GPU model on the validation topologies, and the refusals that name what is missing.

mod common;

use common::{example, topoccl};

fn validation(name: &str) -> String {
    example(&format!("validation/{name}"))
}

fn busbw(stdout: &[u8]) -> f64 {
    String::from_utf8_lossy(stdout)
        .lines()
        .find_map(|l| l.strip_prefix("busbw "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a busbw line")
}

fn sim(topo: &str, algo: &str, size: &str) -> std::process::Output {
    topoccl(&["sim", "--topo", topo, "--algo", algo, "--size", size])
}

#[test]
fn nccl_picks_nvls_on_one_h100_host_and_the_forced_ring_is_slower() {
    let topo = validation("h100-1n.toml");
    let auto = sim(&topo, "nccl", "8G");
    assert!(
        auto.status.success(),
        "{}",
        String::from_utf8_lossy(&auto.stderr)
    );
    let out = String::from_utf8_lossy(&auto.stdout);
    assert!(out.contains("plan nccl NVLS/Simple"), "{out}");
    let bw = busbw(&auto.stdout);
    // NVIDIA's DGX H100 figure: 480.16 GB/s (docs/validation.md).
    assert!((bw - 480.16).abs() / 480.16 < 0.15, "{bw}");
    let ring = sim(&topo, "nccl-ring", "8G");
    assert!(ring.status.success());
    assert!(busbw(&ring.stdout) < bw);
    assert!(String::from_utf8_lossy(&ring.stdout).contains("Ring/Simple"));
}

#[test]
fn collnet_runs_where_switches_reduce_and_is_refused_elsewhere() {
    let ok = sim(&validation("h100-ndr-sharp-12n.toml"), "collnet", "8G");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("CollNetChain"));
    let no = sim(&validation("h100-ndr-2n.toml"), "collnet", "8G");
    assert_eq!(no.status.code(), Some(2));
    let err = String::from_utf8_lossy(&no.stderr);
    assert!(err.contains("in_network_reduction = true"), "{err}");
}

#[test]
fn missing_hardware_facts_are_named_with_their_keys() {
    // An A100 NVSwitch has no reduction rate for NVLS.
    let out = sim(&validation("a100-1n.toml"), "nvls", "1G");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no reduction rate for NVLS") && err.contains("nvls = true"),
        "{err}"
    );
    // No [hardware] table.
    let out = sim(&example("dgx-pair.toml"), "nccl", "1G");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[hardware]") && err.contains("gpu = "),
        "{err}"
    );
    // The tree needs several hosts.
    let out = sim(&validation("h100-1n.toml"), "nccl-tree", "1G");
    assert_eq!(out.status.code(), Some(2));
    // No GPUs at all.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let bare = dir.join("bare-hosts.toml");
    std::fs::write(
        &bare,
        "name = \"bare\"\n[generate]\nkind = \"switch\"\nhosts = 4\nlatency = \"1us\"\n",
    )
    .unwrap();
    let out = sim(bare.to_str().unwrap(), "nccl", "1G");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no rank on a GPU") && err.contains("NCCL"),
        "{err}"
    );
}

#[test]
fn plans_run_at_the_hardware_rates_where_the_file_says_them() {
    let out = sim(&validation("h100-ndr-2n.toml"), "ring", "1G");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# rates: NVLink and NIC ports at the protocol efficiency of h100 / ib"),
        "{text}"
    );
    assert!(text.contains("# reduction: 1117 GB/s"), "{text}");
}
