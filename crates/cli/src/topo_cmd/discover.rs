//! `topoccl topo discover`: this machine's CPUs and NUMA nodes, NICs, InfiniBand ports and
//! GPUs, from sysfs, procfs and `nvidia-smi`, as a one-host topology. Anything missing
//! (a container without /sys/devices/system/node, a virtual NIC without a speed, no
//! `nvidia-smi`) is reported and replaced by a documented fallback, never fatal.
//!
//! Only the I/O lives here: reading sysfs and procfs, running `nvidia-smi`, writing files.
//! The text is read by `topoccl_topo::format` (nvidia-smi's output, the parser the
//! importer uses) and `topoccl_topo::discover`, which models what was found.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use topoccl_topo::discover::{
    cpuinfo_processors, cpulist_len, nic_speed_mbps, Gpu, IbPort, Machine, Nic, Numa,
};
use topoccl_topo::format::{parse_nvidia_smi_gpus, parse_nvidia_smi_topo, SmiMatrix};

use super::{check_output_dir, emit, summary};
use crate::CliError;

#[derive(Args, Debug)]
pub struct DiscoverArgs {
    /// Write the topology as JSON to this file.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print the topology as JSON on standard output (the report goes to standard error).
    #[arg(long)]
    json: bool,
    /// Read /sys and /proc under this directory instead of / (a copied tree, tests).
    #[arg(long, hide = true, default_value = "/")]
    root: PathBuf,
    /// The `nvidia-smi` program to ask about GPUs.
    #[arg(long, hide = true, default_value = "nvidia-smi")]
    nvidia_smi: PathBuf,
}

/// How long `nvidia-smi` may take before it is given up on.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

pub fn run(args: DiscoverArgs) -> Result<(), CliError> {
    check_output_dir(args.output.as_deref())?;
    let machine = discover(&args.root, &args.nvidia_smi);
    let topology = machine
        .topology()
        .map_err(|e| CliError::failed(format!("cannot model what was found: {e}")))?;
    let report = machine.report(&summary(&topology));
    let json = topoccl_topo::format::to_json(&topology);
    if args.json {
        eprint!("{report}");
        print!("{json}");
    } else {
        print!("{report}");
    }
    if let Some(path) = &args.output {
        emit(Some(path), &json)?;
    }
    Ok(())
}

fn discover(root: &Path, nvidia_smi: &Path) -> Machine {
    let (numa, cpu_source) = numa_nodes(root);
    let (mut nics, nic_note) = nics(root);
    let (ib_ports, ib_note) = ib_ports(root, &mut nics);
    let (gpus, gpu_matrix, gpu_note) = gpus(root, nvidia_smi);
    Machine {
        hostname: read(&root.join("proc/sys/kernel/hostname"))
            .or_else(|| read(&root.join("etc/hostname")))
            .unwrap_or_else(|| "localhost".into()),
        numa,
        cpu_source,
        nics,
        nic_note,
        ib_ports,
        ib_note,
        gpus,
        gpu_note,
        gpu_matrix,
    }
}

/// A sysfs or procfs file, trimmed; `None` when missing, unreadable or empty.
fn read(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// A sysfs `numa_node` file: -1 (no affinity) and anything unreadable are `None`.
fn read_numa(path: &Path) -> Option<u32> {
    read(path)?.parse().ok()
}

/// The entries of a directory, sorted by name; empty when it cannot be read.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| natural_key(n));
    names
}

/// Sorts `node10` after `node9`.
fn natural_key(name: &str) -> (String, u64) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (stem, num) = name.split_at(name.len() - digits);
    (stem.to_string(), num.parse().unwrap_or(0))
}

/// NUMA nodes with CPUs from sysfs; else one node with /proc/cpuinfo's processors; else
/// one node with the CPUs the scheduler grants this process.
fn numa_nodes(root: &Path) -> (Vec<Numa>, String) {
    let dir = root.join("sys/devices/system/node");
    let nodes: Vec<Numa> = entries(&dir)
        .iter()
        .filter_map(|name| {
            let id = name.strip_prefix("node")?.parse().ok()?;
            let cpus = cpulist_len(&read(&dir.join(name).join("cpulist"))?)?;
            Some(Numa { id, cpus })
        })
        .filter(|n| n.cpus > 0)
        .collect();
    if !nodes.is_empty() {
        return (nodes, dir.display().to_string());
    }
    let cpuinfo = root.join("proc/cpuinfo");
    let processors = read(&cpuinfo).map_or(0, |t| cpuinfo_processors(&t));
    if processors > 0 {
        let why = format!(
            "{} (no NUMA information in {})",
            cpuinfo.display(),
            dir.display()
        );
        return (
            vec![Numa {
                id: 0,
                cpus: processors,
            }],
            why,
        );
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let why = format!(
        "the scheduler's CPU count ({} and {} unreadable)",
        dir.display(),
        cpuinfo.display()
    );
    (vec![Numa { id: 0, cpus }], why)
}

/// Network interfaces but `lo`.
fn nics(root: &Path) -> (Vec<Nic>, String) {
    let dir = root.join("sys/class/net");
    if !dir.is_dir() {
        return (Vec::new(), format!("{} is missing", dir.display()));
    }
    let nics = entries(&dir)
        .into_iter()
        .filter(|name| name != "lo")
        .map(|name| {
            let at = dir.join(&name);
            Nic {
                speed_mbps: read(&at.join("speed")).and_then(|s| nic_speed_mbps(&s)),
                numa: read_numa(&at.join("device/numa_node")),
                has_device: at.join("device").exists(),
                ib_device: None,
                name,
            }
        })
        .collect();
    (nics, format!("{}, lo skipped", dir.display()))
}

/// InfiniBand ports and their rates; marks the NICs that are IPoIB on them.
fn ib_ports(root: &Path, nics: &mut [Nic]) -> (Vec<IbPort>, String) {
    let dir = root.join("sys/class/infiniband");
    if !dir.is_dir() {
        return (Vec::new(), format!("{} is missing", dir.display()));
    }
    let mut ports = Vec::new();
    for device in entries(&dir) {
        let at = dir.join(&device);
        let backing = fs::canonicalize(at.join("device")).ok();
        for nic in nics.iter_mut() {
            let net_dev =
                fs::canonicalize(root.join("sys/class/net").join(&nic.name).join("device"));
            if backing.is_some() && net_dev.ok() == backing {
                nic.ib_device = Some(device.clone());
            }
        }
        for port in entries(&at.join("ports")) {
            ports.push(IbPort {
                rate: read(&at.join("ports").join(&port).join("rate"))
                    .unwrap_or_else(|| "unknown".into()),
                numa: read_numa(&at.join("device/numa_node")),
                device: device.clone(),
                port,
            });
        }
    }
    (ports, dir.display().to_string())
}

type GpuFindings = (Vec<Gpu>, Option<SmiMatrix>, String);

/// GPUs from `nvidia-smi` (none when it is absent or fails, with the reason), and its
/// `topo -m` matrix (none when that fails or cannot be read, with the reason).
fn gpus(root: &Path, nvidia_smi: &Path) -> GpuFindings {
    let query = ["--query-gpu=index,name,pci.bus_id", "--format=csv,noheader"];
    let csv = match run_tool(nvidia_smi, &query) {
        Ok(csv) => csv,
        Err(why) => return (Vec::new(), None, why),
    };
    let gpus = parse_nvidia_smi_gpus(&csv)
        .into_iter()
        .map(|gpu| {
            let pci = sysfs_pci_address(&gpu.bus_id);
            let numa = read_numa(&root.join("sys/bus/pci/devices").join(pci).join("numa_node"));
            Gpu {
                index: gpu.index,
                name: gpu.name,
                bus_id: gpu.bus_id,
                numa,
            }
        })
        .collect();
    let (matrix, how) = match run_tool(nvidia_smi, &["topo", "-m"])
        .and_then(|text| parse_nvidia_smi_topo(&text, "topo -m").map_err(|e| e.to_string()))
    {
        Ok(matrix) => (Some(matrix), "and `nvidia-smi topo -m`".to_string()),
        Err(why) => (None, format!("(`topo -m`: {why})")),
    };
    let note = format!("{} {how}", nvidia_smi.display());
    (gpus, matrix, note)
}

/// Runs a tool with a deadline; its standard output, or why there is none.
fn run_tool(program: &Path, args: &[&str]) -> Result<String, String> {
    let name = program.display();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("{name} not found"),
            _ => format!("cannot run {name}: {e}"),
        })?;
    // Read on another thread: a full pipe would otherwise stall the tool past the deadline,
    // and a child of the tool holding the pipe open must not stall us.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (sender, output) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = sender.send(stdout.read_to_string(&mut out).map(|_| out));
    });
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(match outcome {
                    Err(e) => format!("waiting for {name}: {e}"),
                    _ => format!("{name} did not answer within {}s", TOOL_TIMEOUT.as_secs()),
                });
            }
        }
    };
    let out = output
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|_| {
            format!(
                "{name}'s output did not end within {}s",
                TOOL_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("reading {name}'s output: {e}"))?;
    if !status.success() {
        return Err(format!("{name} {} failed ({status})", args.join(" ")));
    }
    Ok(out)
}

/// `00000000:19:00.0` (nvidia-smi) as sysfs names it: `0000:19:00.0`.
fn sysfs_pci_address(bus_id: &str) -> String {
    let lower = bus_id.to_ascii_lowercase();
    match lower.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => match domain.get(domain.len() - 4..) {
            Some(short) => format!("{short}:{rest}"),
            None => lower.clone(),
        },
        _ => lower.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_as_sysfs_names_them() {
        assert_eq!(sysfs_pci_address("00000000:3B:00.0"), "0000:3b:00.0");
        assert_eq!(sysfs_pci_address("0000:3b:00.0"), "0000:3b:00.0");
        // A cut inside a character would panic: such text is left as it is.
        assert_eq!(sysfs_pci_address("0ü000:3b"), "0ü000:3b");
    }

    #[test]
    fn directories_sort_naturally() {
        let mut names = vec!["node10", "node2", "eth1", "node1"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["eth1", "node1", "node2", "node10"]);
    }

    #[test]
    fn an_empty_root_still_gives_a_topology() {
        let root = std::env::temp_dir().join(format!("topoccl-empty-root-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let m = discover(&root, Path::new("/nonexistent/nvidia-smi"));
        assert_eq!(m.numa.len(), 1);
        assert!(m.cpu_source.contains("scheduler"), "{}", m.cpu_source);
        assert!(m.nics.is_empty() && m.gpus.is_empty());
        assert!(m.gpu_note.contains("not found"), "{}", m.gpu_note);
        let t = m.topology().unwrap();
        assert_eq!(t.world(), 1);
        assert_eq!(t.node(t.rank_node(0)).name, "h0/cpu0");
        fs::create_dir_all(root.join("proc")).unwrap();
        let cpuinfo = "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\n\nprocessor\t: 2\n";
        fs::write(root.join("proc/cpuinfo"), cpuinfo).unwrap();
        let (numa, source) = numa_nodes(&root);
        assert_eq!(numa, [Numa { id: 0, cpus: 3 }]);
        assert!(source.contains("cpuinfo (no NUMA information"), "{source}");
        fs::remove_dir_all(&root).unwrap();
    }
}
