//! One machine from NCCL's topology XML (what `NCCL_TOPO_DUMP_FILE` writes): CPUs, PCIe
//! switches, GPUs, NICs and NVLinks. docs/topology-format.md lists the rates chosen.

use std::collections::{BTreeMap, HashMap};

use roxmltree::{Document, Node as XmlNode};

use super::{build_error, disconnected_rank, located};
use crate::error::TopoError;
use crate::model::{NodeId, NodeKind, Topology, TopologyBuilder};

/// PCIe: one hop through a switch or root port.
pub(crate) const PCIE_LATENCY: f64 = 1e-6;
/// NVLink: GPU to GPU or to an NVSwitch.
pub(crate) const NVLINK_LATENCY: f64 = 0.5e-6;
/// The link between two CPU sockets (UPI, xGMI, ...), bytes/s each way.
pub(crate) const SMP_BANDWIDTH: f64 = 40e9;
pub(crate) const SMP_LATENCY: f64 = 1e-6;

/// Bytes/s each way of one NVLink: 20 GB/s before compute capability 8.0 (NVLink 1/2),
/// 25 GB/s from 8.0 on (NVLink 3 and 4).
fn nvlink_rate(sm: u32) -> f64 {
    if sm >= 80 {
        25e9
    } else {
        20e9
    }
}

/// Effective bytes/s per lane after line coding, by transfer rate in GT/s.
const PCIE_LANE_RATES: [(f64, f64); 6] = [
    (2.5, 0.25e9),
    (5.0, 0.5e9),
    (8.0, 0.985e9),
    (16.0, 1.969e9),
    (32.0, 3.938e9),
    (64.0, 7.563e9),
];

/// What Linux reports when it cannot tell a link's rate; NCCL then assumes 8 GT/s.
const FALLBACK_GTS: f64 = 8.0;

/// Nesting deeper than this is no machine; refusing it keeps the recursion bounded.
const MAX_DEPTH: usize = 64;

/// Reads one machine, named `host_name`, from NCCL's topology XML and checks it. Its GPUs
/// carry the ranks, in the order of their `rank` attributes (renumbered from 0, since a
/// dump from the second host of a job says 8..15) or, if any GPU has none, of `dev`.
pub fn read_nccl_xml(text: &str, origin: &str, host_name: &str) -> Result<Topology, TopoError> {
    let doc = parse(text, origin)?;
    let (b, rank_lines) = Import::new(&doc, origin, host_name)?.run()?;
    b.build().map_err(|e| match disconnected_rank(&e) {
        Some(r) if r < rank_lines.len() => e.at(origin, rank_lines[r]),
        _ => build_error(origin, e),
    })
}

/// As [`read_nccl_xml`], but returns the unbuilt builder, to join machines into a cluster.
pub fn read_nccl_xml_builder(
    text: &str,
    origin: &str,
    host_name: &str,
) -> Result<TopologyBuilder, TopoError> {
    let doc = parse(text, origin)?;
    Ok(Import::new(&doc, origin, host_name)?.run()?.0)
}

fn parse<'i>(text: &'i str, origin: &str) -> Result<Document<'i>, TopoError> {
    Document::parse(text)
        .map_err(|e| located(origin, e.pos().row as usize, format!("malformed XML: {e}")))
}

struct Gpu<'a, 'i> {
    node: NodeId,
    cpu: NodeId,
    sm: u32,
    dev: u64,
    rank: Option<u64>,
    line: usize,
    xml: XmlNode<'a, 'i>,
}

/// The PCIe device element a GPU or NIC sits in.
#[derive(Clone, Copy)]
struct Slot<'a> {
    busid: &'a str,
    /// Bytes/s of its link to the parent.
    rate: f64,
}

/// Where an NVLink leads.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Gpu(usize),
    NvSwitch,
    Cpu,
}

struct Import<'a, 'i> {
    doc: &'a Document<'i>,
    origin: &'a str,
    host_name: &'a str,
    b: TopologyBuilder,
    host: NodeId,
    cpus: Vec<NodeId>,
    gpus: Vec<Gpu<'a, 'i>>,
    by_busid: HashMap<String, usize>,
}

impl<'a, 'i> Import<'a, 'i> {
    fn new(doc: &'a Document<'i>, origin: &'a str, host_name: &'a str) -> Result<Self, TopoError> {
        let mut b = TopologyBuilder::new(host_name);
        let host = b
            .node(host_name, NodeKind::Host)
            .map_err(|e| build_error(origin, e))?;
        Ok(Import {
            doc,
            origin,
            host_name,
            b,
            host,
            cpus: Vec::new(),
            gpus: Vec::new(),
            by_busid: HashMap::new(),
        })
    }

    fn line(&self, e: XmlNode) -> usize {
        self.doc.text_pos_at(e.range().start).row as usize
    }

    fn err(&self, e: XmlNode, message: impl Into<String>) -> TopoError {
        located(self.origin, self.line(e), message)
    }

    /// Locates a builder error at the element that caused it.
    fn at(&self, e: XmlNode) -> impl Fn(TopoError) -> TopoError + '_ {
        let line = self.line(e);
        move |err| err.at(self.origin, line)
    }

    fn attr(&self, e: XmlNode<'a, 'i>, name: &str) -> Result<&'a str, TopoError> {
        e.attribute(name).ok_or_else(|| {
            self.err(
                e,
                format!(
                    "<{}> has no `{name}` attribute, which NCCL always writes",
                    e.tag_name().name()
                ),
            )
        })
    }

    fn number<T: std::str::FromStr>(
        &self,
        e: XmlNode<'a, 'i>,
        name: &str,
        what: &str,
    ) -> Result<T, TopoError> {
        let text = self.attr(e, name)?;
        text.trim().parse().map_err(|_| {
            self.err(
                e,
                format!("<{}> {name}=\"{text}\" is not {what}", e.tag_name().name()),
            )
        })
    }

    fn name(&self, local: impl std::fmt::Display) -> String {
        format!("{}/{local}", self.host_name)
    }

    /// The builder and, for each rank, the line of its `<gpu>`.
    fn run(mut self) -> Result<(TopologyBuilder, Vec<usize>), TopoError> {
        let root = self.doc.root_element();
        if !root.has_tag_name("system") {
            return Err(self.err(
                root,
                format!(
                    "the root element is <{}>; NCCL's topology XML has <system>",
                    root.tag_name().name()
                ),
            ));
        }
        for cpu in root.children().filter(|c| c.has_tag_name("cpu")) {
            self.cpu(cpu)?;
        }
        self.connect_cpus()?;
        self.nvlinks()?;
        let lines = self.place_ranks()?;
        Ok((self.b, lines))
    }

    fn cpu(&mut self, e: XmlNode<'a, 'i>) -> Result<(), TopoError> {
        let numa: u32 = self.number(e, "numaid", "a NUMA node number")?;
        let cpu = self
            .b
            .device(
                self.name(format_args!("cpu{numa}")),
                NodeKind::Cpu,
                self.host,
            )
            .map_err(self.at(e))?;
        self.cpus.push(cpu);
        self.walk(e, cpu, cpu, None, 1)
    }

    fn connect_cpus(&mut self) -> Result<(), TopoError> {
        for i in 0..self.cpus.len() {
            for j in i + 1..self.cpus.len() {
                let (a, z) = (self.cpus[i], self.cpus[j]);
                self.b.connect(a, z, SMP_BANDWIDTH, SMP_LATENCY)?;
            }
        }
        Ok(())
    }

    /// The devices below `parent`, attached to `attach`; `slot` is the PCIe device they sit in.
    fn walk(
        &mut self,
        parent: XmlNode<'a, 'i>,
        attach: NodeId,
        cpu: NodeId,
        slot: Option<Slot<'a>>,
        depth: usize,
    ) -> Result<(), TopoError> {
        if depth > MAX_DEPTH {
            return Err(self.err(
                parent,
                format!("elements nest deeper than {MAX_DEPTH} levels"),
            ));
        }
        for child in parent.children().filter(XmlNode::is_element) {
            match child.tag_name().name() {
                "pci" => self.pci(child, attach, cpu, depth)?,
                "gpu" => self.gpu(child, attach, cpu, slot)?,
                "nic" => self.walk(child, attach, cpu, slot, depth + 1)?,
                "net" => self.net(child, attach, slot)?,
                // Elements of newer NCCL versions (c2c, ...) carry nothing this model uses.
                _ => {}
            }
        }
        Ok(())
    }

    fn pci(
        &mut self,
        e: XmlNode<'a, 'i>,
        attach: NodeId,
        cpu: NodeId,
        depth: usize,
    ) -> Result<(), TopoError> {
        let busid = self.attr(e, "busid")?;
        let class = self.attr(e, "class")?;
        let rate = self.pcie_rate(e)?;
        let holds = |tag: &str| e.children().any(|c| c.has_tag_name(tag));
        if holds("gpu") || holds("nic") {
            let slot = Slot { busid, rate };
            return self.walk(e, attach, cpu, Some(slot), depth + 1);
        }
        // Like NCCL, a device of another class that has devices below it is a switch too.
        if class.to_ascii_lowercase().starts_with("0x0604") || holds("pci") {
            let sw = self
                .b
                .device(
                    self.name(format_args!("pci{busid}")),
                    NodeKind::Switch,
                    self.host,
                )
                .map_err(self.at(e))?;
            self.b
                .connect(sw, attach, rate, PCIE_LATENCY)
                .map_err(self.at(e))?;
            return self.walk(e, sw, cpu, None, depth + 1);
        }
        // Anything else (NVMe, an NVSwitch's own PCIe function) carries no ranks or traffic.
        Ok(())
    }

    /// Bytes/s of a `<pci>` element's link to its parent.
    fn pcie_rate(&self, e: XmlNode<'a, 'i>) -> Result<f64, TopoError> {
        let speed = self.attr(e, "link_speed")?;
        let width: u32 = self.number(e, "link_width", "a lane count (1, 2, 4, 8, 16 or 32)")?;
        // Linux says 0 lanes when it cannot tell; NCCL then assumes 16.
        let width = if width == 0 { 16 } else { width };
        let gts = match speed.split_whitespace().next() {
            None | Some("Unknown") | Some("unknown") => FALLBACK_GTS,
            Some(rate) => rate.parse().unwrap_or(f64::NAN),
        };
        let lane = PCIE_LANE_RATES
            .iter()
            .find(|(g, _)| *g == gts)
            .map(|&(_, rate)| rate)
            .ok_or_else(|| {
                self.err(
                    e,
                    format!(
                        "<pci> link_speed=\"{speed}\" is not a PCIe rate; expected 2.5, 5, 8, 16, \
                         32 or 64 GT/s, as in \"16.0 GT/s PCIe\""
                    ),
                )
            })?;
        Ok(lane * f64::from(width))
    }

    fn gpu(
        &mut self,
        e: XmlNode<'a, 'i>,
        attach: NodeId,
        cpu: NodeId,
        slot: Option<Slot<'a>>,
    ) -> Result<(), TopoError> {
        let Some(slot) = slot else {
            return Err(self.err(
                e,
                "<gpu> must sit inside the <pci> element that gives its bus id and PCIe link",
            ));
        };
        let dev: u64 = self.number(e, "dev", "a device number")?;
        let sm: u32 = self.number(e, "sm", "a compute capability such as 80")?;
        let rank = match e.attribute("rank") {
            Some(_) => Some(self.number(e, "rank", "a rank number")?),
            None => None,
        };
        let node = self
            .b
            .device(
                self.name(format_args!("gpu{dev}")),
                NodeKind::Accelerator,
                self.host,
            )
            .map_err(self.at(e))?;
        self.b
            .connect(node, attach, slot.rate, PCIE_LATENCY)
            .map_err(self.at(e))?;
        let key = slot.busid.to_ascii_lowercase();
        if let Some(&other) = self.by_busid.get(&key) {
            let line = self.gpus[other].line;
            return Err(self.err(
                e,
                format!("bus id {} already holds the GPU of line {line}", slot.busid),
            ));
        }
        self.by_busid.insert(key, self.gpus.len());
        let line = self.line(e);
        self.gpus.push(Gpu {
            node,
            cpu,
            sm,
            dev,
            rank,
            line,
            xml: e,
        });
        Ok(())
    }

    fn net(
        &mut self,
        e: XmlNode<'a, 'i>,
        attach: NodeId,
        slot: Option<Slot<'a>>,
    ) -> Result<(), TopoError> {
        let name = self.attr(e, "name")?;
        let speed: u64 = self.number(e, "speed", "a speed in Mb/s")?;
        if speed == 0 {
            return Err(self.err(
                e,
                format!("<net name=\"{name}\"> has speed 0; speed is in Mb/s, e.g. 200000"),
            ));
        }
        // All the traffic through a NIC is capped by its port, so its link carries the lesser rate.
        let port = speed as f64 * 1e6 / 8.0;
        let rate = slot.map_or(port, |s| s.rate.min(port));
        let mut full = self.name(name);
        if let (Some(_), Some(p)) = (self.b.find(&full), e.attribute("port")) {
            full = format!("{full}:{p}");
        }
        let nic = self
            .b
            .device(full, NodeKind::Nic, self.host)
            .map_err(self.at(e))?;
        self.b
            .connect(nic, attach, rate, PCIE_LATENCY)
            .map_err(self.at(e))?;
        Ok(())
    }

    /// NVLinks, once every GPU's bus id is known. Links of one GPU to one peer add up.
    fn nvlinks(&mut self) -> Result<(), TopoError> {
        let mut counts: BTreeMap<(usize, Peer), (u64, XmlNode<'a, 'i>)> = BTreeMap::new();
        for g in 0..self.gpus.len() {
            let gpu_xml = self.gpus[g].xml;
            for e in gpu_xml.children().filter(|c| c.has_tag_name("nvlink")) {
                let peer = self.peer(e)?;
                let count: u64 = self.number(e, "count", "a number of links")?;
                if count == 0 {
                    return Err(self.err(
                        e,
                        "<nvlink> count=\"0\"; a bonded NVLink has 1 link or more",
                    ));
                }
                counts.entry((g, peer)).or_insert((0, e)).0 += count;
            }
        }
        let mut nvswitch = None;
        for ((g, peer), (count, e)) in counts {
            let gpu = &self.gpus[g];
            let (from, cpu) = (gpu.node, gpu.cpu);
            let bandwidth = count as f64 * nvlink_rate(gpu.sm);
            let done = match peer {
                Peer::Gpu(other) => {
                    let to = self.gpus[other].node;
                    self.b.link(from, to, bandwidth, NVLINK_LATENCY).map(|_| ())
                }
                Peer::Cpu => self
                    .b
                    .connect(from, cpu, bandwidth, NVLINK_LATENCY)
                    .map(|_| ()),
                Peer::NvSwitch => {
                    let sw = match nvswitch {
                        Some(sw) => sw,
                        None => {
                            let name = self.name("nvswitch");
                            let sw = self
                                .b
                                .device(name, NodeKind::Switch, self.host)
                                .map_err(self.at(e))?;
                            *nvswitch.insert(sw)
                        }
                    };
                    self.b
                        .connect(from, sw, bandwidth, NVLINK_LATENCY)
                        .map(|_| ())
                }
            };
            done.map_err(self.at(e))?;
        }
        Ok(())
    }

    fn peer(&self, e: XmlNode<'a, 'i>) -> Result<Peer, TopoError> {
        let target = self.attr(e, "target")?;
        if let Some(&g) = self.by_busid.get(&target.to_ascii_lowercase()) {
            return Ok(Peer::Gpu(g));
        }
        match e
            .attribute("tclass")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("0x068000") => Ok(Peer::NvSwitch),
            Some("0x068001") => Ok(Peer::Cpu),
            tclass => Err(self.err(
                e,
                format!(
                    "<nvlink> target \"{target}\" is the bus id of no GPU in this file, and its \
                     tclass {} is neither 0x068000 (NVSwitch) nor 0x068001 (CPU)",
                    tclass.map_or("(missing)".to_string(), |t| format!("\"{t}\""))
                ),
            )),
        }
    }

    /// Ranks in `rank` order if every GPU has one, else in `dev` order; lines of each.
    fn place_ranks(&mut self) -> Result<Vec<usize>, TopoError> {
        let mut order: Vec<usize> = (0..self.gpus.len()).collect();
        if self.gpus.iter().all(|g| g.rank.is_some()) {
            order.sort_by_key(|&g| self.gpus[g].rank);
            if let Some(w) = order
                .windows(2)
                .find(|w| self.gpus[w[0]].rank == self.gpus[w[1]].rank)
            {
                let (first, second) = (&self.gpus[w[0]], &self.gpus[w[1]]);
                return Err(located(
                    self.origin,
                    second.line.max(first.line),
                    format!(
                        "rank {} is on two GPUs: the <gpu> of line {} and of line {}",
                        second.rank.unwrap_or_default(),
                        first.line.min(second.line),
                        first.line.max(second.line)
                    ),
                ));
            }
        } else {
            order.sort_by_key(|&g| self.gpus[g].dev);
        }
        let nodes: Vec<NodeId> = order.iter().map(|&g| self.gpus[g].node).collect();
        self.b
            .place_all(nodes)
            .map_err(|e| build_error(self.origin, e))?;
        Ok(order.iter().map(|&g| self.gpus[g].line).collect())
    }
}
