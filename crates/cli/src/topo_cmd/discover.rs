//! `topoccl topo discover`: this machine's CPUs and NUMA nodes, NICs, InfiniBand ports and
//! GPUs, from sysfs, procfs and `nvidia-smi`, as a one-host topology. Anything missing
//! (a container without /sys/devices/system/node, a virtual NIC without a speed, no
//! `nvidia-smi`) is reported and replaced by a documented fallback, never fatal.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use topoccl_topo::gen::HostSpec;
use topoccl_topo::{NodeId, NodeKind, Tier, TopoError, Topology, TopologyBuilder};

use super::{check_output_dir, emit, summary};
use crate::units::{parse_bandwidth, parse_duration};
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

/// A NIC whose speed is unknown (virtual NICs report -1 or nothing): 10Gbps.
const DEFAULT_NIC_SPEED: &str = "10Gbps";
/// Each NVLink of `nvidia-smi topo -m`'s `NV<n>`, each way (NVLink 4: 25GB/s).
const NVLINK_PER_LINK: &str = "25GB/s";
/// How long `nvidia-smi` may take before it is given up on.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything found, and for each category where it came from or why it is empty.
#[derive(Debug, Default)]
struct Machine {
    hostname: String,
    numa: Vec<Numa>,
    cpu_source: String,
    nics: Vec<Nic>,
    nic_note: String,
    ib_ports: Vec<IbPort>,
    ib_note: String,
    gpus: Vec<Gpu>,
    gpu_note: String,
    /// GPU index pairs and their NVLink count, from `nvidia-smi topo -m`.
    nvlinks: Vec<(u32, u32, u32)>,
}

#[derive(Debug, PartialEq)]
struct Numa {
    id: u32,
    cpus: usize,
}

#[derive(Debug, Default)]
struct Nic {
    name: String,
    /// Mb/s from sysfs; `None` when -1, missing or unreadable.
    speed_mbps: Option<u64>,
    numa: Option<u32>,
    /// Backed by a device (PCI, virtio), not a purely virtual interface.
    has_device: bool,
    /// An IPoIB interface of this InfiniBand device (the port stands for it).
    ib_device: Option<String>,
}

#[derive(Debug)]
struct IbPort {
    device: String,
    port: String,
    rate: String,
    numa: Option<u32>,
}

#[derive(Debug, PartialEq)]
struct Gpu {
    index: u32,
    name: String,
    bus_id: String,
    numa: Option<u32>,
}

pub fn run(args: DiscoverArgs) -> Result<(), CliError> {
    check_output_dir(args.output.as_deref())?;
    let machine = discover(&args.root, &args.nvidia_smi);
    let topology = topology(&machine)
        .map_err(|e| CliError::failed(format!("cannot model what was found: {e}")))?;
    let report = report(&machine, &topology);
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
    let (gpus, nvlinks, gpu_note) = gpus(root, nvidia_smi);
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
        nvlinks,
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

/// CPUs in a cpulist such as `0-3,8-11` (`None` if malformed).
fn cpulist_len(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    Some(n)
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
    let processors = read(&cpuinfo).map_or(0, |t| {
        t.lines()
            .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
            .count()
    });
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
                speed_mbps: read(&at.join("speed"))
                    .and_then(|s| s.parse::<i64>().ok())
                    .filter(|&s| s > 0)
                    .map(|s| s as u64),
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

/// Bytes/s from an InfiniBand rate such as `200 Gb/sec (4X HDR)`.
fn ib_rate(rate: &str) -> Option<f64> {
    let mut words = rate.split_whitespace();
    let value: f64 = words.next()?.parse().ok()?;
    let unit = words
        .next()?
        .trim_end_matches("/sec")
        .trim_end_matches("/s");
    let scale = match unit {
        "Gb" => 1e9,
        "Mb" => 1e6,
        _ => return None,
    };
    (value > 0.0).then_some(value * scale / 8.0)
}

type GpuFindings = (Vec<Gpu>, Vec<(u32, u32, u32)>, String);

/// GPUs from `nvidia-smi` (none when it is absent or fails, with the reason).
fn gpus(root: &Path, nvidia_smi: &Path) -> GpuFindings {
    let query = ["--query-gpu=index,name,pci.bus_id", "--format=csv,noheader"];
    let csv = match run_tool(nvidia_smi, &query) {
        Ok(csv) => csv,
        Err(why) => return (Vec::new(), Vec::new(), why),
    };
    let mut gpus = parse_gpu_csv(&csv);
    for gpu in &mut gpus {
        let pci = sysfs_pci_address(&gpu.bus_id);
        gpu.numa = read_numa(&root.join("sys/bus/pci/devices").join(pci).join("numa_node"));
    }
    let (nvlinks, how) = match run_tool(nvidia_smi, &["topo", "-m"]) {
        Ok(matrix) => (
            parse_topo_matrix(&matrix),
            "and `nvidia-smi topo -m`".to_string(),
        ),
        Err(why) => (Vec::new(), format!("(`topo -m`: {why})")),
    };
    let note = format!("{} {how}", nvidia_smi.display());
    (gpus, nvlinks, note)
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

/// `index, name, pci.bus_id` lines; malformed lines are skipped.
fn parse_gpu_csv(csv: &str) -> Vec<Gpu> {
    csv.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, name @ .., bus_id] = fields.as_slice() else {
                return None;
            };
            Some(Gpu {
                index: index.parse().ok()?,
                name: name.join(","),
                bus_id: bus_id.to_string(),
                numa: None,
            })
        })
        .collect()
}

/// `00000000:19:00.0` (nvidia-smi) as sysfs names it: `0000:19:00.0`.
fn sysfs_pci_address(bus_id: &str) -> String {
    let lower = bus_id.to_ascii_lowercase();
    match lower.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => lower,
    }
}

/// NVLink counts between GPU pairs (`NV<n>` cells) from `nvidia-smi topo -m`; each pair
/// once, lower index first.
fn parse_topo_matrix(text: &str) -> Vec<(u32, u32, u32)> {
    let text = strip_ansi(text);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    // Columns are the GPUn/NICn headers; later ones ("CPU Affinity") hold no links.
    let columns: Vec<Option<u32>> = header
        .split_whitespace()
        .take_while(|h| h.starts_with("GPU") || h.starts_with("NIC"))
        .map(|h| h.strip_prefix("GPU").and_then(|i| i.parse().ok()))
        .collect();
    let mut links = BTreeMap::new();
    for line in lines {
        let mut cells = line.split_whitespace();
        let Some(row) = cells
            .next()
            .and_then(|r| r.strip_prefix("GPU")?.parse::<u32>().ok())
        else {
            continue;
        };
        for (column, cell) in columns.iter().zip(cells) {
            let n = cell.strip_prefix("NV").and_then(|n| n.parse::<u32>().ok());
            if let (Some(&col), Some(n)) = (column.as_ref(), n) {
                if col != row {
                    links.insert((row.min(col), row.max(col)), n);
                }
            }
        }
    }
    links.into_iter().map(|((a, b), n)| (a, b, n)).collect()
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequences end at their first letter (`ESC [ 4 m`).
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

/// GPUs linked to every other GPU with the same NVLink count sit on an NVSwitch (DGX/HGX):
/// that count per GPU, or `None` when the links are point to point.
fn nvswitch_links(gpus: usize, nvlinks: &[(u32, u32, u32)]) -> Option<u32> {
    let first = nvlinks.first()?.2;
    (gpus > 2 && nvlinks.len() == gpus * (gpus - 1) / 2 && nvlinks.iter().all(|l| l.2 == first))
        .then_some(first)
}

/// Link properties for what sysfs does not say: the generators' host defaults.
struct Defaults {
    pcie: (f64, f64),
    cpu_link: (f64, f64),
    nvlink_latency: f64,
    nvlink_per_link: f64,
    nic_speed: f64,
    network_latency: f64,
}

impl Defaults {
    fn new() -> Result<Defaults, String> {
        let host = HostSpec::default();
        let pcie_latency = parse_duration(&host.pcie_latency)?;
        Ok(Defaults {
            pcie: (parse_bandwidth(&host.pcie_bandwidth)?, pcie_latency),
            cpu_link: (parse_bandwidth(&host.cpu_link_bandwidth)?, pcie_latency),
            nvlink_latency: parse_duration(&host.nvlink_latency)?,
            nvlink_per_link: parse_bandwidth(NVLINK_PER_LINK)?,
            nic_speed: parse_bandwidth(DEFAULT_NIC_SPEED)?,
            network_latency: parse_duration("1us")?,
        })
    }
}

/// One host `h0`: a CPU per NUMA node (meshed), NICs and GPUs on the CPU of their NUMA node
/// (the first when unknown), NVLinks, and the NICs' ports on a placeholder switch `network`
/// that records their speed. Ranks on the GPUs, else one per NUMA node's CPU.
fn topology(m: &Machine) -> Result<Topology, TopoError> {
    let d = Defaults::new().map_err(TopoError::invalid)?;
    let mut b = TopologyBuilder::new(m.hostname.as_str());
    let host = b.node("h0", NodeKind::Host)?;
    let mut cpus = BTreeMap::new();
    for numa in &m.numa {
        let cpu = b.device(format!("h0/cpu{}", numa.id), NodeKind::Cpu, host)?;
        for &other in cpus.values() {
            b.connect(other, cpu, d.cpu_link.0, d.cpu_link.1)?;
        }
        cpus.insert(numa.id, cpu);
    }
    let first_cpu = *cpus
        .values()
        .next()
        .ok_or_else(|| TopoError::invalid("no CPU found"))?;
    let cpu_of = |numa: Option<u32>| {
        numa.and_then(|n| cpus.get(&n).copied())
            .unwrap_or(first_cpu)
    };
    let ports: Vec<(String, Option<u32>, f64)> = m
        .nics
        .iter()
        .filter(|n| n.ib_device.is_none())
        .map(|n| {
            let speed = n.speed_mbps.map_or(d.nic_speed, |s| s as f64 * 1e6 / 8.0);
            (format!("h0/{}", n.name), n.numa, speed)
        })
        .chain(m.ib_ports.iter().map(|p| {
            let speed = ib_rate(&p.rate).unwrap_or(d.nic_speed);
            (format!("h0/{}:{}", p.device, p.port), p.numa, speed)
        }))
        .collect();
    if !ports.is_empty() {
        let network = b.switch("network", Tier::Leaf)?;
        for (name, numa, speed) in ports {
            let nic = b.device(name, NodeKind::Nic, host)?;
            b.connect(nic, cpu_of(numa), d.pcie.0, d.pcie.1)?;
            b.connect(nic, network, speed, d.network_latency)?;
        }
    }
    let mut gpus = BTreeMap::new();
    for gpu in &m.gpus {
        let id = b.device(format!("h0/gpu{}", gpu.index), NodeKind::Accelerator, host)?;
        b.connect(id, cpu_of(gpu.numa), d.pcie.0, d.pcie.1)?;
        gpus.insert(gpu.index, id);
    }
    add_nvlinks(&mut b, host, &gpus, &m.nvlinks, &d)?;
    let ranks: Vec<NodeId> = if gpus.is_empty() {
        cpus.into_values().collect()
    } else {
        gpus.into_values().collect()
    };
    b.place_all(ranks)?;
    b.build()
}

fn add_nvlinks(
    b: &mut TopologyBuilder,
    host: NodeId,
    gpus: &BTreeMap<u32, NodeId>,
    nvlinks: &[(u32, u32, u32)],
    d: &Defaults,
) -> Result<(), TopoError> {
    let bandwidth = |links: u32| links as f64 * d.nvlink_per_link;
    if let Some(links) = nvswitch_links(gpus.len(), nvlinks) {
        let sw = b.device("h0/nvswitch", NodeKind::Switch, host)?;
        for &gpu in gpus.values() {
            b.connect(gpu, sw, bandwidth(links), d.nvlink_latency)?;
        }
        return Ok(());
    }
    for &(x, y, links) in nvlinks {
        if let (Some(&x), Some(&y)) = (gpus.get(&x), gpus.get(&y)) {
            b.connect(x, y, bandwidth(links), d.nvlink_latency)?;
        }
    }
    Ok(())
}

/// What was found and what was not, per category, then the topology's summary.
fn report(m: &Machine, t: &Topology) -> String {
    let mut r = format!("host: {}\n", m.hostname);
    let total: usize = m.numa.iter().map(|n| n.cpus).sum();
    r += &format!(
        "CPUs: {total} logical CPUs in {} NUMA node(s), from {}\n",
        m.numa.len(),
        m.cpu_source
    );
    for n in &m.numa {
        r += &format!("  numa{}: {} CPUs\n", n.id, n.cpus);
    }
    if m.nics.is_empty() {
        r += &format!("NICs: none found ({})\n", m.nic_note);
    } else {
        r += &format!("NICs: {} found in {}\n", m.nics.len(), m.nic_note);
    }
    for nic in &m.nics {
        r += &format!("  {}\n", describe_nic(nic));
    }
    if m.ib_ports.is_empty() {
        r += &format!("InfiniBand: no ports found ({})\n", m.ib_note);
    } else {
        r += &format!(
            "InfiniBand: {} port(s) in {}\n",
            m.ib_ports.len(),
            m.ib_note
        );
    }
    for p in &m.ib_ports {
        r += &format!(
            "  {} port {}: {}, {}\n",
            p.device,
            p.port,
            p.rate,
            numa_text(p.numa)
        );
    }
    if m.gpus.is_empty() {
        r += &format!("GPUs: no GPUs found ({})\n", m.gpu_note);
    } else {
        r += &format!("GPUs: {} found by {}\n", m.gpus.len(), m.gpu_note);
    }
    for g in &m.gpus {
        r += &format!(
            "  gpu{}: {}, {}, {}\n",
            g.index,
            g.name,
            g.bus_id,
            numa_text(g.numa)
        );
    }
    r += &nvlink_text(m);
    if t.find("network").is_some() {
        r += "NIC ports are modelled on a placeholder switch 'network', at their speed\n";
    }
    let on = if m.gpus.is_empty() {
        "NUMA nodes' CPUs"
    } else {
        "GPUs"
    };
    r += &format!("topology: {} (ranks on {on})\n", summary(t));
    r
}

fn describe_nic(nic: &Nic) -> String {
    let speed = match nic.speed_mbps {
        Some(mbps) if mbps % 1000 == 0 => format!("{}Gbps", mbps / 1000),
        Some(mbps) => format!("{mbps}Mbps"),
        None => format!("speed unknown, modelled as {DEFAULT_NIC_SPEED}"),
    };
    let kind = match (&nic.ib_device, nic.has_device) {
        (Some(ib), _) => format!(", IPoIB on {ib} (modelled as its port)"),
        (None, false) => ", virtual".to_string(),
        (None, true) => String::new(),
    };
    format!("{}: {speed}, {}{kind}", nic.name, numa_text(nic.numa))
}

fn numa_text(numa: Option<u32>) -> String {
    numa.map_or("NUMA node unknown".to_string(), |n| {
        format!("NUMA node {n}")
    })
}

fn nvlink_text(m: &Machine) -> String {
    if m.gpus.len() < 2 {
        return String::new();
    }
    match nvswitch_links(m.gpus.len(), &m.nvlinks) {
        _ if m.nvlinks.is_empty() => "  NVLink: none reported (GPUs talk over PCIe)\n".into(),
        Some(n) => format!(
            "  NVLink: every pair NV{n}, modelled as an NVSwitch ({n} × {NVLINK_PER_LINK} per GPU)\n"
        ),
        None => format!(
            "  NVLink: {} GPU pair(s) linked directly ({NVLINK_PER_LINK} per link)\n",
            m.nvlinks.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists_count_ranges() {
        assert_eq!(cpulist_len("0-3,8-11"), Some(8));
        assert_eq!(cpulist_len("5"), Some(1));
        assert_eq!(cpulist_len(""), Some(0));
        assert_eq!(cpulist_len("3-1"), None);
        assert_eq!(cpulist_len("a-b"), None);
    }

    #[test]
    fn infiniband_rates() {
        assert_eq!(ib_rate("200 Gb/sec (4X HDR)"), Some(25e9));
        assert_eq!(ib_rate("2.5 Gb/sec (1X SDR)"), Some(2.5e9 / 8.0));
        assert_eq!(ib_rate("unknown"), None);
        assert_eq!(ib_rate("0 Gb/sec"), None);
    }

    #[test]
    fn nvidia_smi_gpu_list() {
        let csv = "0, NVIDIA H100 80GB HBM3, 00000000:19:00.0\n\
                   1, Tesla V100-SXM2-32GB, 00000000:3B:00.0\n\
                   junk\n";
        let gpus = parse_gpu_csv(csv);
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].name, "Tesla V100-SXM2-32GB");
        assert_eq!(sysfs_pci_address(&gpus[1].bus_id), "0000:3b:00.0");
        assert_eq!(sysfs_pci_address("0000:3b:00.0"), "0000:3b:00.0");
    }

    #[test]
    fn nvidia_smi_topology_matrix() {
        let text = "\t\u{1b}[4mGPU0\tGPU1\tGPU2\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\u{1b}[0m\n\
                    GPU0\t X \tNV4\tSYS\tPXB\t0-23\t0\t\tN/A\n\
                    GPU1\tNV4\t X \tNV2\tSYS\t0-23\t0\t\tN/A\n\
                    GPU2\tSYS\tNV2\t X \tSYS\t24-47\t1\t\tN/A\n\
                    NIC0\tPXB\tSYS\tSYS\t X \n\
                    \n\
                    Legend:\n\n  X    = Self\n  NV#  = Connection traversing a bonded set of # NVLinks\n\n\
                    NIC Legend:\n\n  NIC0: mlx5_0\n";
        assert_eq!(parse_topo_matrix(text), vec![(0, 1, 4), (1, 2, 2)]);
        assert_eq!(nvswitch_links(3, &parse_topo_matrix(text)), None);
        let all = [(0, 1, 18), (0, 2, 18), (1, 2, 18)];
        assert_eq!(nvswitch_links(3, &all), Some(18));
        assert!(parse_topo_matrix("").is_empty());
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
        let t = topology(&m).unwrap();
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
