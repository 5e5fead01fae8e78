//! One machine as `topoccl topo discover` finds it, modelled: the facts gathered from sysfs,
//! procfs and `nvidia-smi` (CPUs per NUMA node, NICs, InfiniBand ports, GPUs and their
//! `nvidia-smi topo -m` matrix, the host name) become a one-host [`Topology`] and a report
//! of what was and was not found.
//!
//! Pure: the CLI reads the files and runs the tools, and hands over what they said (and,
//! for each category, where it came from or why it is empty). Anything missing has a
//! documented fallback here, so discovery never fails for lack of information.

use std::collections::BTreeMap;

use topoccl_plan::units::{parse_bandwidth, parse_duration};

use crate::error::TopoError;
use crate::format::{SmiMatrix, SmiPath};
use crate::gen::HostSpec;
use crate::model::{NodeId, NodeKind, Tier, Topology, TopologyBuilder};

/// A NIC whose speed is unknown (virtual NICs report -1 or nothing) is modelled at this.
pub const DEFAULT_NIC_SPEED: &str = "10Gbps";
/// Each NVLink of `nvidia-smi topo -m`'s `NV<n>`, each way, as people write it (the rate
/// the matrix's importer uses too).
const NVLINK_PER_LINK: &str = "25GB/s";
/// NIC ports to the placeholder switch `network`.
const NETWORK_LATENCY: &str = "1us";

/// Everything found, and for each category where it came from or why it is empty (the
/// notes are the CLI's words, printed as given).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Machine {
    pub hostname: String,
    /// NUMA nodes with their CPUs; at least one for a topology to be made.
    pub numa: Vec<Numa>,
    pub cpu_source: String,
    pub nics: Vec<Nic>,
    pub nic_note: String,
    pub ib_ports: Vec<IbPort>,
    pub ib_note: String,
    pub gpus: Vec<Gpu>,
    pub gpu_note: String,
    /// `nvidia-smi topo -m`, parsed; `None` when it could not be had (the note says why).
    pub gpu_matrix: Option<SmiMatrix>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Numa {
    pub id: u32,
    /// Logical CPUs.
    pub cpus: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nic {
    /// The interface (`eth0`).
    pub name: String,
    /// Mb/s; `None` when unknown (see [`nic_speed_mbps`]).
    pub speed_mbps: Option<u64>,
    pub numa: Option<u32>,
    /// Backed by a device (PCI, virtio), not a purely virtual interface.
    pub has_device: bool,
    /// An IPoIB interface of this InfiniBand device (the port stands for it).
    pub ib_device: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IbPort {
    /// The device (`mlx5_0`).
    pub device: String,
    /// The port's number as sysfs names it (`1`).
    pub port: String,
    /// As sysfs says it: `200 Gb/sec (4X HDR)`, or `unknown`.
    pub rate: String,
    pub numa: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// nvidia-smi's index: `GPU<index>` in the matrix.
    pub index: u32,
    pub name: String,
    pub bus_id: String,
    pub numa: Option<u32>,
}

/// CPUs in a sysfs cpulist such as `0-3,8-11` (`None` if malformed).
pub fn cpulist_len(list: &str) -> Option<usize> {
    let mut n: usize = 0;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let cpus = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)?.checked_add(1)?
            }
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
        n = n.checked_add(cpus)?;
    }
    Some(n)
}

/// Processors listed in a `/proc/cpuinfo`.
pub fn cpuinfo_processors(cpuinfo: &str) -> usize {
    cpuinfo
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
        .count()
}

/// Mb/s from a sysfs `speed` file; `None` for -1 (unknown), 0 or anything unreadable.
pub fn nic_speed_mbps(speed: &str) -> Option<u64> {
    speed
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|s| u64::try_from(s).ok())
        .filter(|&s| s > 0)
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
    (value.is_finite() && value > 0.0).then_some(value * scale / 8.0)
}

/// NVLink counts between GPU pairs of the matrix, each pair once, lower index first, in
/// order. A pair counts the links both of its directions report (the lesser count; an
/// `NV#` one way only is no link), since a cable carries both.
pub fn nvlinks(matrix: &SmiMatrix) -> Vec<(u32, u32, u32)> {
    let devices = matrix.devices();
    let mut links = BTreeMap::new();
    for (i, a) in devices.iter().enumerate() {
        for (j, b) in devices.iter().enumerate().skip(i + 1) {
            let (Some(x), Some(y)) = (a.gpu, b.gpu) else {
                continue;
            };
            let there = matrix.path(i, j).nvlinks();
            let back = matrix.path(j, i).nvlinks();
            if let (Some(there), Some(back)) = (there, back) {
                links.insert((x.min(y), x.max(y)), there.min(back));
            }
        }
    }
    links.into_iter().map(|((a, b), n)| (a, b, n)).collect()
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
    nic_speed: f64,
    network_latency: f64,
}

impl Defaults {
    fn new() -> Result<Defaults, TopoError> {
        let host = HostSpec::default();
        let bandwidth = |s: &str| parse_bandwidth(s).map_err(TopoError::invalid);
        let duration = |s: &str| parse_duration(s).map_err(TopoError::invalid);
        let pcie_latency = duration(&host.pcie_latency)?;
        Ok(Defaults {
            pcie: (bandwidth(&host.pcie_bandwidth)?, pcie_latency),
            cpu_link: (bandwidth(&host.cpu_link_bandwidth)?, pcie_latency),
            nic_speed: bandwidth(DEFAULT_NIC_SPEED)?,
            network_latency: duration(NETWORK_LATENCY)?,
        })
    }
}

/// A NIC port to model: its node name, NUMA node and bytes/s.
struct Port {
    name: String,
    numa: Option<u32>,
    speed: f64,
}

impl Machine {
    /// The network ports: NICs but IPoIB interfaces (their InfiniBand port stands for
    /// them), then InfiniBand ports; unknown speeds at [`DEFAULT_NIC_SPEED`].
    fn ports(&self, nic_speed: f64) -> Vec<Port> {
        let nics = self
            .nics
            .iter()
            .filter(|n| n.ib_device.is_none())
            .map(|n| Port {
                name: format!("h0/{}", n.name),
                numa: n.numa,
                speed: n.speed_mbps.map_or(nic_speed, |s| s as f64 * 1e6 / 8.0),
            });
        let ib = self.ib_ports.iter().map(|p| Port {
            name: format!("h0/{}:{}", p.device, p.port),
            numa: p.numa,
            speed: ib_rate(&p.rate).unwrap_or(nic_speed),
        });
        nics.chain(ib).collect()
    }

    /// NVLinks between GPU pairs (see [`nvlinks`]); none without a matrix.
    fn nvlinks(&self) -> Vec<(u32, u32, u32)> {
        self.gpu_matrix.as_ref().map(nvlinks).unwrap_or_default()
    }

    /// One host `h0`: a CPU per NUMA node (meshed), NICs and GPUs on the CPU of their NUMA
    /// node (the first when unknown), NVLinks (an NVSwitch `h0/nvswitch` when every pair of
    /// three or more GPUs has the same count), and the NIC ports on a placeholder switch
    /// `network` that records their speed. Ranks on the GPUs, else one per NUMA node's CPU.
    /// The topology is named after the host.
    pub fn topology(&self) -> Result<Topology, TopoError> {
        let d = Defaults::new()?;
        let mut b = TopologyBuilder::new(self.hostname.as_str());
        let host = b.node("h0", NodeKind::Host)?;
        let mut cpus = BTreeMap::new();
        for numa in &self.numa {
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
        let ports = self.ports(d.nic_speed);
        if !ports.is_empty() {
            let network = b.switch("network", Tier::Leaf)?;
            for port in ports {
                let nic = b.device(port.name, NodeKind::Nic, host)?;
                b.connect(nic, cpu_of(port.numa), d.pcie.0, d.pcie.1)?;
                b.connect(nic, network, port.speed, d.network_latency)?;
            }
        }
        let mut gpus = BTreeMap::new();
        for gpu in &self.gpus {
            let id = b.device(format!("h0/gpu{}", gpu.index), NodeKind::Accelerator, host)?;
            b.connect(id, cpu_of(gpu.numa), d.pcie.0, d.pcie.1)?;
            gpus.insert(gpu.index, id);
        }
        add_nvlinks(&mut b, host, &gpus, &self.nvlinks())?;
        let ranks: Vec<NodeId> = if gpus.is_empty() {
            cpus.into_values().collect()
        } else {
            gpus.into_values().collect()
        };
        b.place_all(ranks)?;
        b.build()
    }

    /// What was found and what was not, per category, then `topology_summary` (a line
    /// describing [`Self::topology`]'s result).
    pub fn report(&self, topology_summary: &str) -> String {
        let mut r = format!("host: {}\n", self.hostname);
        let total: usize = self.numa.iter().map(|n| n.cpus).sum();
        r += &format!(
            "CPUs: {total} logical CPUs in {} NUMA node(s), from {}\n",
            self.numa.len(),
            self.cpu_source
        );
        for n in &self.numa {
            r += &format!("  numa{}: {} CPUs\n", n.id, n.cpus);
        }
        if self.nics.is_empty() {
            r += &format!("NICs: none found ({})\n", self.nic_note);
        } else {
            r += &format!("NICs: {} found in {}\n", self.nics.len(), self.nic_note);
        }
        for nic in &self.nics {
            r += &format!("  {}\n", describe_nic(nic));
        }
        if self.ib_ports.is_empty() {
            r += &format!("InfiniBand: no ports found ({})\n", self.ib_note);
        } else {
            r += &format!(
                "InfiniBand: {} port(s) in {}\n",
                self.ib_ports.len(),
                self.ib_note
            );
        }
        for p in &self.ib_ports {
            r += &format!(
                "  {} port {}: {}, {}\n",
                p.device,
                p.port,
                p.rate,
                numa_text(p.numa)
            );
        }
        if self.gpus.is_empty() {
            r += &format!("GPUs: no GPUs found ({})\n", self.gpu_note);
        } else {
            r += &format!("GPUs: {} found by {}\n", self.gpus.len(), self.gpu_note);
        }
        for g in &self.gpus {
            r += &format!(
                "  gpu{}: {}, {}, {}\n",
                g.index,
                g.name,
                g.bus_id,
                numa_text(g.numa)
            );
        }
        r += &self.nvlink_text();
        if !self.ports(0.0).is_empty() {
            r += "NIC ports are modelled on a placeholder switch 'network', at their speed\n";
        }
        let on = if self.gpus.is_empty() {
            "NUMA nodes' CPUs"
        } else {
            "GPUs"
        };
        r += &format!("topology: {topology_summary} (ranks on {on})\n");
        r
    }

    fn nvlink_text(&self) -> String {
        if self.gpus.len() < 2 {
            return String::new();
        }
        let nvlinks = self.nvlinks();
        match nvswitch_links(self.gpus.len(), &nvlinks) {
            _ if nvlinks.is_empty() => "  NVLink: none reported (GPUs talk over PCIe)\n".into(),
            Some(n) => format!(
                "  NVLink: every pair NV{n}, modelled as an NVSwitch ({n} × {NVLINK_PER_LINK} per \
                 GPU)\n"
            ),
            None => format!(
                "  NVLink: {} GPU pair(s) linked directly ({NVLINK_PER_LINK} per link)\n",
                nvlinks.len()
            ),
        }
    }
}

/// NVLinks at the importer's rate per link: one NVSwitch when [`nvswitch_links`] says so,
/// else a cable per linked pair of GPUs that were found.
fn add_nvlinks(
    b: &mut TopologyBuilder,
    host: NodeId,
    gpus: &BTreeMap<u32, NodeId>,
    nvlinks: &[(u32, u32, u32)],
) -> Result<(), TopoError> {
    if let Some(links) = nvswitch_links(gpus.len(), nvlinks) {
        let (bandwidth, latency) = SmiPath::NvLink(links).rate();
        let sw = b.device("h0/nvswitch", NodeKind::Switch, host)?;
        for &gpu in gpus.values() {
            b.connect(gpu, sw, bandwidth, latency)?;
        }
        return Ok(());
    }
    for &(x, y, links) in nvlinks {
        if let (Some(&x), Some(&y)) = (gpus.get(&x), gpus.get(&y)) {
            let (bandwidth, latency) = SmiPath::NvLink(links).rate();
            b.connect(x, y, bandwidth, latency)?;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::parse_nvidia_smi_topo;

    #[test]
    fn cpulists_count_ranges() {
        assert_eq!(cpulist_len("0-3,8-11"), Some(8));
        assert_eq!(cpulist_len("5"), Some(1));
        assert_eq!(cpulist_len(""), Some(0));
        assert_eq!(cpulist_len("3-1"), None);
        assert_eq!(cpulist_len("a-b"), None);
        assert_eq!(cpulist_len(&format!("0-{}", usize::MAX)), None);
    }

    #[test]
    fn cpuinfo_and_speeds() {
        let cpuinfo = "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\n\nprocessor\t: 2\n";
        assert_eq!(cpuinfo_processors(cpuinfo), 3);
        assert_eq!(cpuinfo_processors(""), 0);
        assert_eq!(nic_speed_mbps("100000\n"), Some(100_000));
        assert_eq!(nic_speed_mbps("-1"), None);
        assert_eq!(nic_speed_mbps("0"), None);
        assert_eq!(nic_speed_mbps("fast"), None);
    }

    #[test]
    fn infiniband_rates() {
        assert_eq!(ib_rate("200 Gb/sec (4X HDR)"), Some(25e9));
        assert_eq!(ib_rate("2.5 Gb/sec (1X SDR)"), Some(2.5e9 / 8.0));
        assert_eq!(ib_rate("unknown"), None);
        assert_eq!(ib_rate("0 Gb/sec"), None);
        assert_eq!(ib_rate("inf Gb/sec"), None);
    }

    #[test]
    fn the_report_says_the_importers_nvlink_rate() {
        assert_eq!(
            parse_bandwidth(NVLINK_PER_LINK),
            Ok(SmiPath::NvLink(1).rate().0)
        );
    }

    const THREE_GPUS: &str =
        "\t\u{1b}[4mGPU0\tGPU1\tGPU2\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\u{1b}[0m\n\
        GPU0\t X \tNV4\tSYS\tPXB\t0-23\t0\t\tN/A\n\
        GPU1\tNV4\t X \tNV2\tSYS\t0-23\t0\t\tN/A\n\
        GPU2\tSYS\tNV2\t X \tSYS\t24-47\t1\t\tN/A\n\
        NIC0\tPXB\tSYS\tSYS\t X \n\
        \n\
        Legend:\n\n  X    = Self\n  NV#  = Connection traversing a bonded set of # NVLinks\n\n\
        NIC Legend:\n\n  NIC0: mlx5_0\n";

    fn matrix(text: &str) -> SmiMatrix {
        parse_nvidia_smi_topo(text, "topo -m").unwrap()
    }

    /// `n` GPUs, every pair `NV<links>`.
    fn all_pairs(n: usize, links: u32) -> String {
        let header: Vec<String> = (0..n).map(|i| format!("GPU{i}")).collect();
        let mut text = format!("\t{}\tCPU Affinity\n", header.join("\t"));
        for i in 0..n {
            let row: Vec<String> = (0..n)
                .map(|j| {
                    if i == j {
                        "X".into()
                    } else {
                        format!("NV{links}")
                    }
                })
                .collect();
            text += &format!("GPU{i}\t{}\t0-7\n", row.join("\t"));
        }
        text
    }

    #[test]
    fn nvlinks_of_a_matrix() {
        assert_eq!(nvlinks(&matrix(THREE_GPUS)), [(0, 1, 4), (1, 2, 2)]);
        assert_eq!(nvswitch_links(3, &nvlinks(&matrix(THREE_GPUS))), None);
        let all = nvlinks(&matrix(&all_pairs(3, 18)));
        assert_eq!(all, [(0, 1, 18), (0, 2, 18), (1, 2, 18)]);
        assert_eq!(nvswitch_links(3, &all), Some(18));
        assert_eq!(nvswitch_links(2, &all[..1]), None, "two GPUs: a cable");
        assert_eq!(nvswitch_links(4, &all), None, "a GPU without NVLink");
    }

    #[test]
    fn a_one_sided_nvlink_counts_the_lesser_direction() {
        let text = "GPU0 GPU1 GPU2\nGPU0 X NV4 NV2\nGPU1 NV2 X SYS\nGPU2 SYS SYS X\n";
        assert_eq!(nvlinks(&matrix(text)), [(0, 1, 2)]);
    }

    #[test]
    fn gpu_indices_come_from_the_labels_not_the_positions() {
        let text = "GPU3 GPU1\nGPU3 X NV6\nGPU1 NV6 X\n";
        assert_eq!(nvlinks(&matrix(text)), [(1, 3, 6)]);
    }

    fn gpu(index: u32, numa: Option<u32>) -> Gpu {
        Gpu {
            index,
            name: "NVIDIA H100 80GB HBM3".into(),
            bus_id: format!("00000000:{index:02X}:00.0"),
            numa,
        }
    }

    fn two_sockets() -> Machine {
        Machine {
            hostname: "box".into(),
            numa: vec![Numa { id: 0, cpus: 4 }, Numa { id: 1, cpus: 4 }],
            cpu_source: "sysfs".into(),
            nic_note: "net".into(),
            ib_note: "ib".into(),
            gpu_note: "smi".into(),
            ..Machine::default()
        }
    }

    fn bandwidth(t: &Topology, from: &str, to: &str) -> f64 {
        let (from, to) = (t.find(from).unwrap(), t.find(to).unwrap());
        t.links()
            .iter()
            .find(|l| l.from == from && l.to == to)
            .unwrap_or_else(|| panic!("no link {from:?} -> {to:?}"))
            .bandwidth
    }

    #[test]
    fn no_cpu_is_an_error_not_a_panic() {
        let e = Machine::default().topology().unwrap_err();
        assert_eq!(e.to_string(), "no CPU found");
    }

    #[test]
    fn without_gpus_ranks_sit_on_the_cpus() {
        let m = two_sockets();
        let t = m.topology().unwrap();
        assert_eq!(t.name(), "box");
        assert_eq!(t.world(), 2);
        assert_eq!(t.node(t.rank_node(1)).name, "h0/cpu1");
        assert_eq!(bandwidth(&t, "h0/cpu0", "h0/cpu1"), 64e9);
        assert!(t.find("network").is_none());
        let r = m.report("S");
        assert!(
            r.contains("CPUs: 8 logical CPUs in 2 NUMA node(s), from sysfs"),
            "{r}"
        );
        assert!(r.contains("NICs: none found (net)"), "{r}");
        assert!(r.contains("GPUs: no GPUs found (smi)"), "{r}");
        assert!(
            r.ends_with("topology: S (ranks on NUMA nodes' CPUs)\n"),
            "{r}"
        );
        assert!(!r.contains("placeholder"), "{r}");
    }

    #[test]
    fn nics_and_ports_hang_off_their_numa_nodes() {
        let mut m = two_sockets();
        m.nics = vec![
            Nic {
                name: "eth0".into(),
                speed_mbps: Some(100_000),
                numa: Some(1),
                has_device: true,
                ib_device: None,
            },
            Nic {
                name: "veth0".into(),
                ..Nic::default()
            },
            Nic {
                name: "ib0".into(),
                numa: Some(1),
                has_device: true,
                ib_device: Some("mlx5_0".into()),
                ..Nic::default()
            },
        ];
        m.ib_ports = vec![IbPort {
            device: "mlx5_0".into(),
            port: "1".into(),
            rate: "200 Gb/sec (4X HDR)".into(),
            numa: Some(7),
        }];
        let t = m.topology().unwrap();
        assert_eq!(bandwidth(&t, "h0/eth0", "network"), 12.5e9);
        assert_eq!(bandwidth(&t, "h0/veth0", "network"), 1.25e9);
        assert_eq!(bandwidth(&t, "h0/mlx5_0:1", "network"), 25e9);
        bandwidth(&t, "h0/eth0", "h0/cpu1");
        bandwidth(&t, "h0/veth0", "h0/cpu0");
        // NUMA node 7 has no CPU here: the first CPU takes the port.
        bandwidth(&t, "h0/mlx5_0:1", "h0/cpu0");
        assert!(t.find("h0/ib0").is_none());
        let r = m.report("S");
        for want in [
            "NICs: 3 found in net",
            "eth0: 100Gbps, NUMA node 1",
            "veth0: speed unknown, modelled as 10Gbps, NUMA node unknown, virtual",
            "ib0: speed unknown, modelled as 10Gbps, NUMA node 1, IPoIB on mlx5_0",
            "InfiniBand: 1 port(s) in ib",
            "mlx5_0 port 1: 200 Gb/sec (4X HDR), NUMA node 7",
            "placeholder switch 'network'",
        ] {
            assert!(r.contains(want), "'{want}' missing in:\n{r}");
        }
    }

    #[test]
    fn every_pair_alike_is_an_nvswitch() {
        let mut m = two_sockets();
        m.gpus = (0..4).map(|i| gpu(i, Some(i / 2))).collect();
        m.gpu_matrix = Some(matrix(&all_pairs(4, 18)));
        let t = m.topology().unwrap();
        assert_eq!(t.world(), 4);
        assert_eq!(t.node(t.rank_node(3)).name, "h0/gpu3");
        assert_eq!(bandwidth(&t, "h0/gpu3", "h0/nvswitch"), 450e9);
        bandwidth(&t, "h0/gpu2", "h0/cpu1");
        let r = m.report("S");
        for want in [
            "GPUs: 4 found by smi",
            "gpu3: NVIDIA H100 80GB HBM3, 00000000:03:00.0, NUMA node 1",
            "every pair NV18, modelled as an NVSwitch (18 × 25GB/s per GPU)",
            "(ranks on GPUs)",
        ] {
            assert!(r.contains(want), "'{want}' missing in:\n{r}");
        }
    }

    #[test]
    fn point_to_point_nvlinks_join_the_gpus_found() {
        let mut m = two_sockets();
        // GPU2 is in the matrix but not in nvidia-smi's list: its links are left out.
        m.gpus = vec![gpu(0, None), gpu(1, None)];
        m.gpu_matrix = Some(matrix(THREE_GPUS));
        let t = m.topology().unwrap();
        assert_eq!(bandwidth(&t, "h0/gpu0", "h0/gpu1"), 100e9);
        assert_eq!(bandwidth(&t, "h0/gpu1", "h0/gpu0"), 100e9);
        assert!(t.find("h0/gpu2").is_none() && t.find("h0/nvswitch").is_none());
        let r = m.report("S");
        assert!(
            r.contains("NVLink: 2 GPU pair(s) linked directly (25GB/s per link)"),
            "{r}"
        );

        m.gpu_matrix = None;
        let t = m.topology().unwrap();
        assert_eq!(
            t.links().len(),
            2 + 2 * 2,
            "CPU mesh and the GPUs' PCIe, both ways"
        );
        assert!(m.report("S").contains("NVLink: none reported"));
    }
}
