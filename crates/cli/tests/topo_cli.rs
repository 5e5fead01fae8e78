//! `topoccl topo`: every `gen` form writes a generator description that parses back and
//! builds; bad arguments exit 2 naming the argument; `discover` works on this machine, on
//! an empty root, and on a fake sysfs tree with a fake `nvidia-smi`.

mod common;

use common::topoccl;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde::Deserialize;
use topoccl_topo::gen::{generate, Fabric};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("topo-cli-{test}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenDoc {
    name: String,
    generate: Fabric,
}

/// Runs `topo gen ARGS -o DIR/FILE`; the file's `[generate]` kind, its name, and the
/// topology it generates (ranks, hosts).
fn gen(dir: &Path, file: &str, args: &[&str]) -> (GenDoc, toml::Table, String) {
    let path = dir.join(file);
    let mut all = vec!["topo", "gen"];
    all.extend(args);
    all.extend(["-o", path.to_str().unwrap()]);
    let out = topoccl(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = fs::read_to_string(&path).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let doc: GenDoc = toml::from_str(&text).unwrap();
    (doc, table, stderr(&out))
}

fn world(f: &Fabric) -> u32 {
    generate(f).unwrap().build().unwrap().world()
}

#[test]
fn every_gen_form_writes_a_description_that_builds() {
    let dir = scratch("gen");
    let cases: [(&str, &[&str], &str, u32); 6] = [
        (
            "ft2.toml",
            &[
                "fat-tree",
                "--hosts",
                "16",
                "--gpus-per-host",
                "4",
                "--oversub",
                "3",
            ],
            "fat-tree",
            64,
        ),
        (
            "ft3.toml",
            &[
                "fat-tree",
                "--hosts",
                "32",
                "--gpus-per-host",
                "2",
                "--tiers",
                "3",
                "--oversub",
                "1",
                "--spine-oversub",
                "4",
                "--radix",
                "8",
                "--bandwidth",
                "200Gbps",
                "--latency",
                "2us",
            ],
            "fat-tree",
            64,
        ),
        (
            "rail.toml",
            &["rail", "--hosts", "6", "--gpus-per-host", "4"],
            "rail",
            24,
        ),
        (
            "switch.toml",
            &[
                "switch",
                "--hosts",
                "5",
                "--bandwidth",
                "100Gbps",
                "--latency",
                "5us",
            ],
            "switch",
            5,
        ),
        (
            "dgx.toml",
            &["switch", "--hosts", "2", "--gpus-per-host", "8"],
            "switch",
            16,
        ),
        (
            "zones.toml",
            &[
                "multi-zone",
                "--zones",
                "3",
                "--hosts-per-zone",
                "2",
                "--gpus-per-host",
                "2",
                "--zone-fabric",
                "fat-tree",
                "--inter-bandwidth",
                "10Gbps",
                "--inter-latency",
                "20ms",
            ],
            "multi-zone",
            12,
        ),
    ];
    for (file, args, kind, ranks) in cases {
        let (doc, table, summary) = gen(&dir, file, args);
        assert_eq!(table["generate"]["kind"].as_str(), Some(kind), "{file}");
        assert_eq!(doc.name, file.trim_end_matches(".toml"));
        assert_eq!(world(&doc.generate), ranks, "{file}");
        assert!(
            summary.contains(&format!("{ranks} ranks")) && summary.contains("links"),
            "{file}: {summary}"
        );
    }
    let (doc, table, _) = gen(&dir, "ft3b.toml", cases[1].1);
    assert_eq!(table["generate"]["oversub_spine"].as_float(), Some(4.0));
    assert_eq!(table["generate"]["bandwidth"].as_str(), Some("200Gbps"));
    assert!(matches!(doc.generate, Fabric::FatTree { tiers: 3, .. }));
    let (_, table, _) = gen(&dir, "plain.toml", cases[3].1);
    assert!(
        table["generate"].get("host").is_none(),
        "a plain switch has no host table"
    );
}

#[test]
fn json_and_stdout() {
    let dir = scratch("json");
    let path = dir.join("zones.json");
    let out = topoccl(&[
        "topo",
        "gen",
        "multi-zone",
        "--hosts-per-zone",
        "4",
        "--format",
        "json",
        "-o",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["name"], "zones");
    assert_eq!(doc["generate"]["kind"], "multi-zone");
    assert_eq!(doc["generate"]["inter_latency"], "20ms");
    let fabric: Fabric = serde_json::from_value(doc["generate"].clone()).unwrap();
    assert_eq!(world(&fabric), 2 * 4 * 8);

    let out = topoccl(&["topo", "gen", "switch", "--hosts", "3", "--name", "tiny"]);
    assert!(out.status.success());
    let doc: GenDoc = toml::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc.name, "tiny");
    assert!(
        stderr(&out).contains("tiny: 3 hosts, 3 ranks"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_arguments_exit_2_naming_the_argument() {
    let dir = scratch("bad");
    let missing = dir.join("no/such/dir/x.toml");
    let cases: [(&[&str], &str); 9] = [
        (&["fat-tree", "--hosts", "0"], "--hosts"),
        (&["fat-tree", "--hosts", "4", "--tiers", "4"], "--tiers"),
        (
            &["fat-tree", "--hosts", "4", "--oversub", "0.5"],
            "--oversub",
        ),
        (
            &["fat-tree", "--hosts", "4", "--spine-oversub", "x"],
            "--spine-oversub",
        ),
        (
            &["fat-tree", "--hosts", "4", "--radix", "63"],
            "radix is 63",
        ),
        (
            &["fat-tree", "--hosts", "5000", "--radix", "64"],
            "at most 256 hosts",
        ),
        (
            &["rail", "--hosts", "4", "--bandwidth", "fast"],
            "--bandwidth",
        ),
        (
            &["multi-zone", "--zones", "1", "--hosts-per-zone", "2"],
            "--zones",
        ),
        (
            &["switch", "--hosts", "2", "-o", missing.to_str().unwrap()],
            "does not exist",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["topo", "gen"];
        all.extend(args);
        let out = topoccl(&all);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: '{err}' lacks '{want}'");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!missing.exists());
}

#[test]
fn discover_this_machine() {
    let dir = scratch("discover");
    let path = dir.join("here.json");
    let out = topoccl(&["topo", "discover", "-o", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    for word in ["CPUs:", "NICs:", "InfiniBand:", "GPUs:", "topology:"] {
        assert!(report.contains(word), "{word} missing in:\n{report}");
    }
    let doc: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert!(!doc["ranks"].as_array().unwrap().is_empty());
    assert!(doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["kind"] == "cpu"));

    let out = topoccl(&["topo", "discover", "--json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(doc["links"].is_array());
    assert!(stderr(&out).contains("CPUs:"));
}

#[test]
fn discover_in_an_empty_container() {
    let root = scratch("empty-root");
    let out = topoccl(&[
        "topo",
        "discover",
        "--root",
        root.to_str().unwrap(),
        "--nvidia-smi",
        "/nonexistent/nvidia-smi",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(report.contains("NICs: none found"), "{report}");
    assert!(
        report.contains("no GPUs found (/nonexistent/nvidia-smi not found)"),
        "{report}"
    );
    assert!(
        report.contains("1 NUMA node(s), from the scheduler's CPU count"),
        "{report}"
    );
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// Two NUMA nodes, a 100G NIC, a virtual NIC, an HDR InfiniBand port with its IPoIB
/// interface, and four NVSwitch-connected GPUs reported by a fake `nvidia-smi`.
fn fake_machine(root: &Path) -> PathBuf {
    let sys = root.join("sys");
    write(&sys.join("devices/system/node/node0/cpulist"), "0-3\n");
    write(&sys.join("devices/system/node/node1/cpulist"), "4-7\n");
    write(&sys.join("class/net/eth0/speed"), "100000\n");
    write(&sys.join("class/net/eth0/device/numa_node"), "1\n");
    write(&sys.join("class/net/veth0/speed"), "-1\n");
    let hca = sys.join("devices/pci0000:00/0000:3b:00.0");
    write(&hca.join("numa_node"), "1\n");
    fs::create_dir_all(sys.join("class/net/ib0")).unwrap();
    std::os::unix::fs::symlink(&hca, sys.join("class/net/ib0/device")).unwrap();
    write(
        &sys.join("class/infiniband/mlx5_0/ports/1/rate"),
        "200 Gb/sec (4X HDR)\n",
    );
    std::os::unix::fs::symlink(&hca, sys.join("class/infiniband/mlx5_0/device")).unwrap();
    for (gpu, numa) in [("19", 0), ("3b", 0), ("86", 1), ("af", 1)] {
        let dev = sys.join(format!("bus/pci/devices/0000:{gpu}:00.0/numa_node"));
        write(&dev, &format!("{numa}\n"));
    }
    let smi = root.join("nvidia-smi");
    write(
        &smi,
        "#!/bin/sh\n\
         if [ \"$1\" = topo ]; then\n\
         printf '\\tGPU0\\tGPU1\\tGPU2\\tGPU3\\tCPU Affinity\\tNUMA Affinity\\n'\n\
         printf 'GPU0\\t X \\tNV18\\tNV18\\tNV18\\t0-3\\t0\\n'\n\
         printf 'GPU1\\tNV18\\t X \\tNV18\\tNV18\\t0-3\\t0\\n'\n\
         printf 'GPU2\\tNV18\\tNV18\\t X \\tNV18\\t4-7\\t1\\n'\n\
         printf 'GPU3\\tNV18\\tNV18\\tNV18\\t X \\t4-7\\t1\\n'\n\
         exit 0\n\
         fi\n\
         echo '0, NVIDIA H100 80GB HBM3, 00000000:19:00.0'\n\
         echo '1, NVIDIA H100 80GB HBM3, 00000000:3B:00.0'\n\
         echo '2, NVIDIA H100 80GB HBM3, 00000000:86:00.0'\n\
         echo '3, NVIDIA H100 80GB HBM3, 00000000:AF:00.0'\n",
    );
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&smi, fs::Permissions::from_mode(0o755)).unwrap();
    smi
}

/// Runs `topoccl ARGS`, again while a script just written is still busy (another test's
/// fork can hold it open for a moment).
fn discover_with_fresh_script(args: &[&str]) -> Output {
    let mut out = topoccl(args);
    for _ in 0..5 {
        if !stdout(&out).contains("busy") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        out = topoccl(args);
    }
    out
}

#[test]
fn discover_a_gpu_machine() {
    let root = scratch("gpu-root");
    let smi = fake_machine(&root);
    let json = root.join("machine.json");
    let args = [
        "topo",
        "discover",
        "--root",
        root.to_str().unwrap(),
        "--nvidia-smi",
        smi.to_str().unwrap(),
        "-o",
        json.to_str().unwrap(),
    ];
    let out = discover_with_fresh_script(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    for want in [
        "8 logical CPUs in 2 NUMA node(s)",
        "eth0: 100Gbps, NUMA node 1",
        "veth0: speed unknown, modelled as 10Gbps, NUMA node unknown, virtual",
        "ib0: speed unknown, modelled as 10Gbps, NUMA node 1, IPoIB on mlx5_0",
        "mlx5_0 port 1: 200 Gb/sec (4X HDR), NUMA node 1",
        "GPUs: 4 found",
        "gpu3: NVIDIA H100 80GB HBM3, 00000000:AF:00.0, NUMA node 1",
        "every pair NV18, modelled as an NVSwitch",
        "ranks on GPUs",
    ] {
        assert!(report.contains(want), "'{want}' missing in:\n{report}");
    }
    let doc: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    let ranks: Vec<&str> = doc["ranks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(ranks, ["h0/gpu0", "h0/gpu1", "h0/gpu2", "h0/gpu3"]);
    let link = |from: &str, to: &str| {
        doc["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["from"] == from && l["to"] == to)
            .unwrap_or_else(|| panic!("no link {from} -> {to}"))
            .clone()
    };
    assert_eq!(link("h0/mlx5_0:1", "network")["bandwidth"], 25e9);
    assert_eq!(link("h0/eth0", "network")["bandwidth"], 12.5e9);
    assert_eq!(link("h0/gpu3", "h0/nvswitch")["bandwidth"], 450e9);
    link("h0/gpu2", "h0/cpu1");
    link("h0/mlx5_0:1", "h0/cpu1");
    assert!(!doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == "h0/ib0"));
}

/// `nvidia-smi topo -m` output that cannot be read costs the NVLinks, not the discovery:
/// the report names the line and what is wrong with it.
#[test]
fn discover_reports_an_unreadable_gpu_matrix() {
    let root = scratch("bad-matrix-root");
    let smi = root.join("nvidia-smi");
    write(
        &smi,
        "#!/bin/sh\n\
         if [ \"$1\" = topo ]; then\n\
         printf '\\tGPU0\\tGPU1\\tCPU Affinity\\n'\n\
         printf 'GPU0\\t X \\tNVX\\t0-3\\n'\n\
         printf 'GPU1\\tNV4\\t X \\t0-3\\n'\n\
         exit 0\n\
         fi\n\
         echo '0, NVIDIA H100 80GB HBM3, 00000000:19:00.0'\n\
         echo '1, NVIDIA H100 80GB HBM3, 00000000:3B:00.0'\n",
    );
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&smi, fs::Permissions::from_mode(0o755)).unwrap();
    let args = [
        "topo",
        "discover",
        "--root",
        root.to_str().unwrap(),
        "--nvidia-smi",
        smi.to_str().unwrap(),
    ];
    let out = discover_with_fresh_script(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    for want in [
        "GPUs: 2 found by",
        "(`topo -m`: topo -m:2: unknown entry 'NVX' from GPU0 to GPU1",
        "NVLink: none reported",
        "ranks on GPUs",
    ] {
        assert!(report.contains(want), "'{want}' missing in:\n{report}");
    }
}
