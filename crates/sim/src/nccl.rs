//! The GPU-cluster model: what NCCL's algorithms take on a cluster of GPU hosts, and which
//! one NCCL's tuning would pick — `topoccl sim --algo nccl | nccl-ring | nccl-tree | nvls |
//! collnet`.
//!
//! A cluster is read from a topology and its `[hardware]` table ([`Cluster::of`]): hosts
//! and GPUs per host; each GPU's NVLink rate (its links to the host's NVSwitch, or to the
//! other GPUs); each host's NICs (each tied to a GPU) and their port rates; whether the
//! NVSwitch reduces (NVLS) and whether fabric switches do (SHARP). Rates are then taken at
//! the share a protocol reaches ([`crate::hw`]: the only place constants live).
//!
//! Each algorithm × protocol costs `latency + fill + volume / rate`:
//!
//! - **latency**: NCCL's `baseLat` plus `hwLat` per NVLink and per network step (ring:
//!   2(N−1) steps for all-reduce, N−1 otherwise, 2·hosts of them over the network; tree:
//!   up and down the chain of P GPUs and ⌈log2 H⌉ levels across hosts); across hosts an
//!   NVLink step costs at least the CPU's network post overhead.
//! - **rate** (the busiest GPU's or host's bytes per second, reduction overlapped with the
//!   transfer as NCCL's kernels reduce while data streams):
//!   - ring: one ring per NIC, entering and leaving each host through different GPUs and
//!     NICs, so busbw = min(NVLink, all NICs of a host);
//!   - tree: double binary tree across hosts, a chain inside each: every GPU of the chain
//!     forwards the data up and down (NVLink/2), a host sends and receives the data once
//!     with two hosts (the NICs' rate) and twice with more (interior in one tree, leaf in
//!     the other: NICs/2); ×0.92;
//!   - NVLS (one host): each GPU moves S·(N+1)/N over NVLink through the switch, which
//!     reduces and multicasts at its own rate: algbw = NVLS rate × N/(N+1);
//!   - NVLS tree (several hosts): NVLS reduce-scatter, a tree across hosts of each GPU's
//!     share through its own NIC, NVLS all-gather, pipelined: the least of the NVLS rate and
//!     the tree's network rate;
//!   - CollNet chain (SHARP): combine inside the host along a chain (NVLink/2), then the
//!     switches reduce at line rate: the least of those and the host's NICs;
//!   - protocols scale the rate: LL ×1/4 (×1/3 inside one host for all-gather and
//!     reduce-scatter) up to NCCL's LL ceiling, LL128 ×120/128, Simple ×1; NVLS and CollNet
//!     run Simple only.
//! - **fill** (Simple only): the first chunk ([`hw::CHUNK_BYTES`], or the whole message
//!   when smaller) must cross every stage of a tree or hierarchy before the pipeline runs
//!   full: (stages − 1) × chunk / rate.
//!
//! `--algo nccl` takes the cheapest available pair, as NCCL's tuner does with its own
//! model. Limits: all-reduce, all-gather and reduce-scatter only; one GPU generation and
//! NIC transport per cluster; hosts alike (the slowest host's NICs count); no per-channel
//! caps or channel counts below the NIC count.

use topoccl_plan::{Collective, CollectiveSpec};
use topoccl_topo::hardware::Hardware;
use topoccl_topo::{lower_bound, LinkId, NodeId, NodeKind, Tier, Topology};

use crate::hw::{self, CpuGen, GpuGen, Hop, NcclAlgo, NicGen, Protocol};
use crate::{SimError, SimReport};

/// What `--algo` asks of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// What NCCL's tuning would pick.
    Auto,
    Ring,
    Tree,
    /// NVLS on one host, NVLS tree on several.
    Nvls,
    /// CollNet chain (SHARP).
    CollNet,
}

impl Choice {
    /// The `--algo` names, in order.
    pub const NAMES: [&'static str; 5] = ["nccl", "nccl-ring", "nccl-tree", "nvls", "collnet"];

    /// The choice `--algo name` makes, if it names one.
    pub fn parse(name: &str) -> Option<Choice> {
        Some(match name {
            "nccl" => Choice::Auto,
            "nccl-ring" => Choice::Ring,
            "nccl-tree" => Choice::Tree,
            "nvls" => Choice::Nvls,
            "collnet" => Choice::CollNet,
            _ => return None,
        })
    }
}

/// A GPU cluster as the model sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub hosts: u32,
    pub per_host: u32,
    pub gpu: GpuGen,
    pub cpu: CpuGen,
    /// Each GPU's effective NVLink rate each way (bytes/s); 0 with one GPU per host.
    pub nvlink_bps: f64,
    /// A host's NICs together, effective, each way (bytes/s); 0 on one host.
    pub net_bps: f64,
    /// NICs per host (the fewest of any host).
    pub nics_per_host: u32,
    /// The NVSwitch's reduce-and-multicast rate per GPU port, where it reduces.
    pub nvls_bps: Option<f64>,
    /// Whether fabric switches reduce (SHARP).
    pub sharp: bool,
}

/// What the model predicts for one algorithm and protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub algo: NcclAlgo,
    pub protocol: Protocol,
    pub latency_s: f64,
    pub fill_s: f64,
    pub transfer_s: f64,
    /// The rate the volume moves at (bytes/s), after the protocol's share.
    pub rate_bps: f64,
}

impl Prediction {
    pub fn total_s(&self) -> f64 {
        self.latency_s + self.fill_s + self.transfer_s
    }

    /// NCCL's name for it: `Ring/Simple`, `NVLSTree/Simple`.
    pub fn label(&self) -> String {
        let a = match self.algo {
            NcclAlgo::Tree => "Tree",
            NcclAlgo::Ring => "Ring",
            NcclAlgo::CollNetDirect => "CollNetDirect",
            NcclAlgo::CollNetChain => "CollNetChain",
            NcclAlgo::Nvls => "NVLS",
            NcclAlgo::NvlsTree => "NVLSTree",
        };
        format!("{a}/{}", self.protocol.name())
    }
}

/// Whether `l` leaves a host: its far end is in no host and is not a host.
fn leaves_host(t: &Topology, l: LinkId) -> bool {
    let to = t.node(t.link(l).to);
    to.host.is_none() && to.kind != NodeKind::Host
}

/// The GPU (or host-tier switch above GPUs) a NIC is tied to, and that link's rate.
fn nic_tie(t: &Topology, nic: NodeId) -> Option<f64> {
    t.out_links(nic)
        .iter()
        .filter(|&&l| {
            let to = t.node(t.link(l).to);
            to.kind == NodeKind::Accelerator
                || (to.kind == NodeKind::Switch && to.tier == Some(Tier::Host))
        })
        .map(|&l| t.link(l).bandwidth)
        .reduce(f64::max)
}

impl Cluster {
    /// The cluster `t` describes with `hw` (its file's `[hardware]` table), or what is
    /// missing and the key that supplies it.
    pub fn of(t: &Topology, hw: Option<&Hardware>) -> Result<Cluster, SimError> {
        let name = t.name();
        let gpus = (0..t.world())
            .filter(|&r| t.node(t.rank_node(r)).kind == NodeKind::Accelerator)
            .count() as u32;
        if gpus == 0 {
            return Err(SimError::Invalid(format!(
                "'{name}' places no rank on a GPU (kind = \"gpu\"): NCCL runs on NVIDIA GPUs, \
                 so its algorithms cannot run here; pick a topoccl plan with --algo (auto, \
                 ring, …)"
            )));
        }
        if gpus < t.world() {
            return Err(SimError::Invalid(format!(
                "'{name}' places {} of its {} ranks on something other than a GPU; NCCL runs \
                 one rank per GPU",
                t.world() - gpus,
                t.world()
            )));
        }
        let missing = |key: &str, what: &str| {
            SimError::Invalid(format!(
                "'{name}' does not say {what}: add a [hardware] table with {key} to the \
                 topology file (docs/topology-format.md)"
            ))
        };
        let hw = hw.ok_or_else(|| {
            missing(
                "gpu = \"h100\" (or a100, h200, h800, h20)",
                "which GPUs it has",
            )
        })?;
        let gpu_name = hw.gpu.as_deref().ok_or_else(|| {
            missing(
                "gpu = \"h100\" (or a100, h200, h800, h20)",
                "which GPUs it has",
            )
        })?;
        let gpu = hw::lookup(&hw::GPUS, |g| g.name, gpu_name, "gpu")?;
        let cpu = hw::lookup(
            &hw::CPUS,
            |c| c.name,
            hw.cpu.as_deref().unwrap_or("intel"),
            "cpu",
        )?;
        // Ranks per host, in host order.
        let mut hosts: Vec<(NodeId, u32)> = Vec::new();
        for r in 0..t.world() {
            let h = t.rank_host(r);
            match hosts.iter_mut().find(|(id, _)| *id == h) {
                Some(e) => e.1 += 1,
                None => hosts.push((h, 1)),
            }
        }
        let per_host = hosts[0].1;
        if let Some((h, n)) = hosts.iter().find(|(_, n)| *n != per_host) {
            return Err(SimError::Invalid(format!(
                "'{name}': host {} runs {n} ranks and host {} runs {per_host}; the GPU model \
                 needs the same number of GPUs on every host",
                t.node(*h).name,
                t.node(hosts[0].0).name
            )));
        }
        // NVLink: each GPU's links to its host's switches and GPUs; the slowest GPU counts.
        let mut nvlink = f64::INFINITY;
        if per_host > 1 {
            for r in 0..t.world() {
                let g = t.rank_node(r);
                let host = t.node(g).host;
                let bw: f64 = t
                    .out_links(g)
                    .iter()
                    .filter(|&&l| {
                        let to = t.node(t.link(l).to);
                        to.host == host
                            && (to.kind == NodeKind::Accelerator
                                || (to.kind == NodeKind::Switch && to.tier == Some(Tier::Host)))
                    })
                    .map(|&l| t.link(l).bandwidth)
                    .sum();
                if bw <= 0.0 {
                    return Err(SimError::Invalid(format!(
                        "'{name}': GPU {} has no NVLink (no link to a host switch or another \
                         GPU of its host); add a [[link]] to its NVSwitch (a switch with tier = \
                         \"host\") or set nvlink_bandwidth in [generate.host]",
                        t.node(g).name
                    )));
                }
                nvlink = nvlink.min(bw);
            }
        }
        let nvlink_bps = if per_host > 1 {
            nvlink * gpu.nvlink_efficiency
        } else {
            0.0
        };
        // NICs: each tied to a GPU, at the lesser of its port and its tie.
        let (mut net_bps, mut nics_per_host) = (0.0, 0);
        if hosts.len() > 1 {
            let nic_name = hw
                .nic
                .as_deref()
                .ok_or_else(|| missing("nic = \"ib\" (or roce)", "what its NICs are"))?;
            let nic: NicGen = hw::lookup(&hw::NICS, |n| n.name, nic_name, "nic")?;
            let (mut least, mut fewest) = (f64::INFINITY, u32::MAX);
            for &(h, _) in &hosts {
                let (mut sum, mut count) = (0.0, 0u32);
                for (id, node) in t.nodes().iter().enumerate() {
                    if node.kind != NodeKind::Nic || node.host != Some(h) {
                        continue;
                    }
                    let id = id as NodeId;
                    let port = t
                        .out_links(id)
                        .iter()
                        .filter(|&&l| leaves_host(t, l))
                        .map(|&l| t.link(l).bandwidth)
                        .reduce(f64::max);
                    let Some(port) = port else { continue };
                    let tie = nic_tie(t, id).ok_or_else(|| {
                        SimError::Invalid(format!(
                            "'{name}': NIC {} of host {} is tied to no GPU; add a [[link]] \
                             between it and the GPU (or the PCIe switch, tier = \"host\") it \
                             serves",
                            node.name,
                            t.node(h).name
                        ))
                    })?;
                    sum += port.min(tie) * nic.efficiency;
                    count += 1;
                }
                if count == 0 {
                    return Err(SimError::Invalid(format!(
                        "'{name}': host {} has no NIC (kind = \"nic\", host = \"{}\") cabled to \
                         the fabric; the GPU model sends between hosts through NICs",
                        t.node(h).name,
                        t.node(h).name
                    )));
                }
                least = least.min(sum);
                fewest = fewest.min(count);
            }
            net_bps = least;
            nics_per_host = fewest;
        }
        let nvls_bps = match (hw.nvls, gpu.nvls_efficiency) {
            (false, _) => None,
            (true, Some(e)) if per_host > 1 => Some(nvlink_bps * e),
            (true, Some(_)) => None,
            (true, None) => {
                return Err(SimError::Invalid(format!(
                    "'{name}': [hardware] nvls = true, but the NVSwitch of {} GPUs has no \
                     reduction (NVLink SHARP came with NVSwitch 3: h100, h200, h800, h20); \
                     remove nvls or fix gpu",
                    gpu.name
                )))
            }
        };
        let sharp = t
            .nodes()
            .iter()
            .any(|n| n.in_network_reduction && n.host.is_none());
        Ok(Cluster {
            name: name.to_string(),
            hosts: hosts.len() as u32,
            per_host,
            gpu,
            cpu,
            nvlink_bps,
            net_bps,
            nics_per_host,
            nvls_bps,
            sharp,
        })
    }

    fn ranks(&self) -> u32 {
        self.hosts * self.per_host
    }

    /// The least of the rates that apply (∞ where none does).
    fn intra(&self) -> f64 {
        if self.per_host > 1 {
            self.nvlink_bps
        } else {
            f64::INFINITY
        }
    }

    fn net(&self) -> f64 {
        if self.hosts > 1 {
            self.net_bps
        } else {
            f64::INFINITY
        }
    }

    /// Levels of a binary tree over the hosts.
    fn levels(&self) -> f64 {
        (self.hosts as f64).log2().ceil()
    }

    fn ll_max(&self) -> f64 {
        let row = &hw::LL_MAX_HOSTS[self.cpu.ll_max_row];
        match self.hosts {
            1 => hw::LL_MAX_ONE_HOST,
            2 => row[0],
            _ => row[1],
        }
    }

    /// An NVLink step's latency; across hosts at least the network post overhead.
    fn nvlink_step(&self, a: NcclAlgo, p: Protocol) -> f64 {
        let lat = hw::hop_latency(Hop::NvLink, a, p);
        if self.hosts > 1 {
            let times = if p == Protocol::Simple { 3.0 } else { 1.0 };
            lat.max(self.cpu.net_overhead_s * times)
        } else {
            lat
        }
    }

    /// The algorithms `choice` allows for `coll` here, or why there are none.
    fn algorithms(&self, coll: Collective, choice: Choice) -> Result<Vec<NcclAlgo>, SimError> {
        let name = &self.name;
        if !matches!(
            coll,
            Collective::AllReduce | Collective::AllGather | Collective::ReduceScatter
        ) {
            return Err(SimError::Invalid(format!(
                "the NCCL model covers allreduce, allgather and reducescatter, not {coll}; \
                 pick a topoccl plan with --algo"
            )));
        }
        let all_reduce = coll == Collective::AllReduce;
        let nvls = self.nvls_bps.is_some() && all_reduce;
        let collnet = self.sharp && self.hosts > 1 && all_reduce;
        let tree = all_reduce && self.hosts > 1;
        let nvls_algo = if self.hosts > 1 {
            NcclAlgo::NvlsTree
        } else {
            NcclAlgo::Nvls
        };
        Ok(match choice {
            Choice::Auto => {
                let mut v = vec![NcclAlgo::Ring];
                if tree {
                    v.push(NcclAlgo::Tree);
                }
                if nvls {
                    v.push(nvls_algo);
                }
                if collnet {
                    v.push(NcclAlgo::CollNetChain);
                }
                v
            }
            Choice::Ring => vec![NcclAlgo::Ring],
            Choice::Tree if tree => vec![NcclAlgo::Tree],
            Choice::Tree => {
                return Err(SimError::Invalid(format!(
                    "NCCL's tree runs all-reduce across hosts; '{name}' has \
                     {} host(s) and this is {coll}; use nccl-ring or nccl",
                    self.hosts
                )))
            }
            Choice::Nvls if nvls => vec![nvls_algo],
            Choice::Nvls if !all_reduce => {
                return Err(SimError::Invalid(format!(
                    "the model runs NVLS for all-reduce only, not {coll}"
                )))
            }
            Choice::Nvls => {
                return Err(SimError::Invalid(format!(
                    "the NVSwitch of '{name}' has no reduction rate for NVLS; set \
                     [hardware] nvls = true with a GPU whose NVSwitch reduces (h100, h200, \
                     h800, h20; this file has {}{})",
                    self.gpu.name,
                    if self.per_host < 2 {
                        ", and one GPU per host: no NVSwitch at all"
                    } else {
                        ""
                    }
                )))
            }
            Choice::CollNet if collnet => vec![NcclAlgo::CollNetChain],
            Choice::CollNet => {
                return Err(SimError::Invalid(format!(
                    "'{name}' has no fabric switch that reduces (or one host, or \
                     not all-reduce: {coll}); set in_network_reduction = true on its switches \
                     (in [generate]: in_network_reduction = true)"
                )))
            }
        })
    }

    /// The protocols `a` runs.
    fn protocols(a: NcclAlgo) -> &'static [Protocol] {
        match a {
            NcclAlgo::Ring | NcclAlgo::Tree => &Protocol::ALL,
            _ => &[Protocol::Simple],
        }
    }

    /// The cost of `a` with `p` for `coll` over `bytes` (nccl-tests' size).
    pub fn cost(&self, coll: Collective, bytes: u64, a: NcclAlgo, p: Protocol) -> Prediction {
        let n = self.ranks() as f64;
        let h = self.hosts;
        let s = bytes as f64;
        let all_reduce = coll == Collective::AllReduce;
        let ll = |rate: f64, share: f64| (rate * share).min(self.ll_max());
        // (latency, stages a chunk crosses, volume per rank or host, rate after protocol)
        let (latency, stages, volume, rate) = match a {
            NcclAlgo::Ring => {
                let steps = if all_reduce { 2.0 * (n - 1.0) } else { n - 1.0 };
                let inter = match (h > 1, all_reduce) {
                    (false, _) => 0.0,
                    (true, true) => 2.0 * h as f64,
                    (true, false) => (h - 1) as f64,
                };
                let mut lat = hw::base_latency(a, p)
                    + (steps - inter).max(0.0) * self.nvlink_step(a, p)
                    + inter * hw::hop_latency(Hop::Net, a, p);
                if all_reduce && h > 1 && p == Protocol::Simple {
                    lat *= hw::RING_SIMPLE_PLATEAU;
                }
                let raw = self.intra().min(self.net());
                let rate = match p {
                    Protocol::LL if h > 1 || all_reduce => ll(raw, hw::LL_RING_MULTI),
                    Protocol::LL => ll(raw, hw::LL_RING_SINGLE),
                    Protocol::LL128 => raw * hw::LL128_RING,
                    Protocol::Simple => raw,
                };
                // Ring steps are its volume: no fill beyond them.
                (lat, 1.0, s * coll.bus_factor(self.ranks()), rate)
            }
            NcclAlgo::Tree => {
                let levels = self.levels();
                let chain = (self.per_host - 1) as f64;
                let lat = hw::base_latency(a, p)
                    + 2.0
                        * (chain * self.nvlink_step(a, p)
                            + levels * hw::hop_latency(Hop::Net, a, p));
                let net = match h {
                    1 => f64::INFINITY,
                    2 => self.net_bps,
                    _ => self.net_bps / 2.0,
                };
                let raw = (self.intra() / 2.0).min(net) * hw::TREE_EFFICIENCY;
                let rate = match p {
                    Protocol::LL => ll(raw, hw::LL_TREE),
                    Protocol::LL128 if h == 1 => raw * hw::LL128_TREE_ONE_HOST,
                    Protocol::LL128 => raw * hw::LL128_RING,
                    Protocol::Simple => raw,
                };
                (lat, 2.0 * (chain + levels), s, rate)
            }
            NcclAlgo::Nvls => {
                let nvls = self.nvls_bps.unwrap_or(0.0);
                let lat = hw::hop_latency(Hop::NvLink, a, p);
                (lat, 2.0, s, nvls * n / (n + 1.0))
            }
            NcclAlgo::NvlsTree => {
                let nvls = self.nvls_bps.unwrap_or(0.0);
                let p_host = self.per_host as f64;
                let levels = self.levels();
                let lat = hw::hop_latency(Hop::NvLink, a, p)
                    + 2.0 * levels * hw::hop_latency(Hop::Net, a, p);
                let net = if h <= 2 {
                    self.net_bps
                } else {
                    self.net_bps / 2.0
                };
                (
                    lat,
                    2.0 + 2.0 * levels,
                    s,
                    (nvls * p_host / (p_host + 1.0)).min(net),
                )
            }
            NcclAlgo::CollNetChain | NcclAlgo::CollNetDirect => {
                let chain = (self.per_host - 1) as f64;
                let lat = 2.0 * chain * self.nvlink_step(a, p) + hw::hop_latency(Hop::Net, a, p);
                (
                    lat,
                    2.0 * chain + 2.0,
                    s,
                    (self.intra() / 2.0).min(self.net_bps),
                )
            }
        };
        let fill = if p == Protocol::Simple && stages > 1.0 && rate > 0.0 {
            (stages - 1.0) * hw::CHUNK_BYTES.min(s) / rate
        } else {
            0.0
        };
        Prediction {
            algo: a,
            protocol: p,
            latency_s: latency,
            fill_s: fill,
            transfer_s: if rate > 0.0 {
                volume / rate
            } else {
                f64::INFINITY
            },
            rate_bps: rate,
        }
    }

    /// The cheapest algorithm and protocol `choice` allows for `coll` over `bytes`.
    pub fn predict(
        &self,
        coll: Collective,
        bytes: u64,
        choice: Choice,
    ) -> Result<Prediction, SimError> {
        let mut best: Option<Prediction> = None;
        for a in self.algorithms(coll, choice)? {
            for &p in Cluster::protocols(a) {
                let c = self.cost(coll, bytes, a, p);
                if best.as_ref().is_none_or(|b| c.total_s() < b.total_s()) {
                    best = Some(c);
                }
            }
        }
        best.ok_or_else(|| SimError::Invalid("no NCCL algorithm applies".into()))
    }
}

/// `spec` on `t` (with its file's `[hardware]` table `hw`) as NCCL would run it under
/// `choice`, as a report like the flow level's (no rounds or links: the model is
/// analytical).
pub fn simulate(
    spec: &CollectiveSpec,
    t: &Topology,
    hw: Option<&Hardware>,
    choice: Choice,
) -> Result<SimReport, SimError> {
    let cluster = Cluster::of(t, hw)?;
    let bytes = spec.size_bytes();
    let p = cluster.predict(spec.collective, bytes, choice)?;
    let total = p.total_s();
    let bound = lower_bound(t, spec.collective, bytes as f64);
    Ok(SimReport {
        topology: t.name().to_string(),
        ranks: t.world(),
        collective: spec.collective.to_string(),
        algorithm: format!("nccl {}", p.label()),
        level: "GPU model (NCCL's algorithms, crates/sim/src/hw.rs constants)".to_string(),
        bytes,
        total_s: total,
        transfer_s: p.transfer_s + p.fill_s,
        latency_s: p.latency_s,
        reduction_s: 0.0,
        pipelined_s: None,
        start_delay_s: 0.0,
        busbw_gbps: spec.bandwidth(total).busbw_gbps,
        lower_bound_s: bound,
        gap: if bound > 0.0 { total / bound } else { 1.0 },
        rounds: Vec::new(),
        hottest: Vec::new(),
        faults: Vec::new(),
    })
}

/// `t` with the rates protocols reach on this hardware, for topoccl's own plans to run at
/// the same effective rates as NCCL's: every NVLink (a GPU's link to its host's switch or
/// to another GPU of its host, both ways) at the GPU generation's NVLink efficiency, every
/// NIC port (a NIC's link out of its host, both ways) at the NIC transport's. Nothing
/// else changes: names, ids, placement.
pub fn effective_topology(t: &Topology, hw: Option<&Hardware>) -> Result<Topology, SimError> {
    let cluster = Cluster::of(t, hw)?;
    let nic = match hw.and_then(|h| h.nic.as_deref()) {
        Some(n) if cluster.hosts > 1 => Some(hw::lookup(&hw::NICS, |g| g.name, n, "nic")?),
        _ => None,
    };
    let nvlink_end = |n: NodeId, other: NodeId| {
        let (a, b) = (t.node(n), t.node(other));
        a.kind == NodeKind::Accelerator
            && a.host.is_some()
            && b.host == a.host
            && (b.kind == NodeKind::Accelerator
                || (b.kind == NodeKind::Switch && b.tier == Some(Tier::Host)))
    };
    let nic_port = |n: NodeId, other: NodeId| {
        let (a, b) = (t.node(n), t.node(other));
        a.kind == NodeKind::Nic && b.host.is_none() && b.kind != NodeKind::Host
    };
    let mut b = t.to_builder();
    for l in b.links_mut() {
        let (x, y) = (l.from, l.to);
        if nvlink_end(x, y) || nvlink_end(y, x) {
            l.bandwidth *= cluster.gpu.nvlink_efficiency;
        } else if let Some(nic) = nic.filter(|_| nic_port(x, y) || nic_port(y, x)) {
            l.bandwidth *= nic.efficiency;
        }
    }
    Ok(b.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use topoccl_topo::format::read_toml;
    use topoccl_topo::hardware::read_hardware;

    /// A generated cluster with a `[hardware]` table.
    fn cluster(
        hardware: &str,
        kind: &str,
        hosts: u32,
        gpus: u32,
        extra: &str,
    ) -> (Topology, Option<Hardware>) {
        let text = format!(
            "name = \"t\"\n[hardware]\n{hardware}\n[generate]\nkind = \"{kind}\"\nhosts = {hosts}\n\
             latency = \"1us\"\n{extra}\n[generate.host]\ngpus_per_host = {gpus}\n\
             nvlink_bandwidth = \"450GB/s\"\npcie_bandwidth = \"64GB/s\"\nnic_bandwidth = \"400Gbps\"\n"
        );
        (
            read_toml(&text, "t.toml").unwrap(),
            read_hardware(&text, "t.toml").unwrap(),
        )
    }

    fn h100(hosts: u32, gpus: u32) -> Cluster {
        let kind = if hosts == 1 { "switch" } else { "rail" };
        let (t, hw) = cluster(
            "gpu = \"h100\"\nnic = \"ib\"\nnvls = true",
            kind,
            hosts,
            gpus,
            "",
        );
        Cluster::of(&t, hw.as_ref()).unwrap()
    }

    fn busbw(c: &Cluster, coll: Collective, bytes: u64, choice: Choice) -> f64 {
        let p = c.predict(coll, bytes, choice).unwrap();
        bytes as f64 / p.total_s() / 1e9 * coll.bus_factor(c.ranks())
    }

    #[test]
    fn reads_rates_from_the_topology_and_efficiencies_from_the_generation() {
        let c = h100(2, 8);
        assert_eq!((c.hosts, c.per_host, c.nics_per_host), (2, 8, 8));
        assert!((c.nvlink_bps - 450e9 * 20.6 / 25.0).abs() < 1.0);
        assert!((c.net_bps - 8.0 * 50e9 * 0.97).abs() < 1.0);
        assert!((c.nvls_bps.unwrap() - c.nvlink_bps * 5.0 / 6.0).abs() < 1.0);
        assert!(!c.sharp);
    }

    #[test]
    fn nvls_busbw_follows_the_switch_traffic_pattern() {
        // algbw = NVLS rate × n/(n+1): 2 GPUs gain nothing over NVLink, 8 GPUs ~480 GB/s.
        for (n, want) in [(2u32, 206.0), (4, 370.8), (6, 441.4), (8, 480.7)] {
            let c = h100(1, n);
            let got = busbw(&c, Collective::AllReduce, 1 << 36, Choice::Nvls);
            assert!(
                (got - want).abs() / want < 0.005,
                "{n} GPUs: {got} vs {want}"
            );
        }
    }

    #[test]
    fn small_messages_take_a_low_latency_protocol_and_large_ones_simple() {
        let c = h100(1, 4);
        let small = c
            .predict(Collective::AllGather, 4096, Choice::Ring)
            .unwrap();
        assert_eq!(small.protocol, Protocol::LL);
        let large = c
            .predict(Collective::AllGather, 1 << 33, Choice::Ring)
            .unwrap();
        assert_eq!(large.protocol, Protocol::Simple);
        // A ring's busbw is the lesser of NVLink and the host's NICs.
        let two = h100(2, 8);
        let ring = busbw(&two, Collective::AllReduce, 1 << 36, Choice::Ring);
        assert!((ring - 370.8).abs() < 2.0, "{ring}");
    }

    #[test]
    fn two_hosts_favour_the_nvls_tree_and_more_hosts_the_ring() {
        let two = h100(2, 8)
            .predict(Collective::AllReduce, 1 << 34, Choice::Auto)
            .unwrap();
        assert_eq!(two.algo, NcclAlgo::NvlsTree);
        let eight = h100(8, 8);
        let auto = busbw(&eight, Collective::AllReduce, 1 << 34, Choice::Auto);
        let ring = busbw(&eight, Collective::AllReduce, 1 << 34, Choice::Ring);
        assert!(auto >= ring * 0.999);
        assert!(auto < 400.0, "{auto}");
    }

    #[test]
    fn refusals_name_what_is_missing_and_the_key() {
        // No GPUs at all: bare hosts on a switch.
        let t = read_toml(
            "name = \"bare\"\n[generate]\nkind = \"switch\"\nhosts = 4\nlatency = \"1us\"\n",
            "b.toml",
        )
        .unwrap();
        let e = Cluster::of(&t, None).unwrap_err().to_string();
        assert!(e.contains("no rank on a GPU") && e.contains("NCCL"), "{e}");
        // GPUs, but no [hardware].
        let (t, _) = cluster("", "switch", 1, 8, "");
        let e = Cluster::of(&t, None).unwrap_err().to_string();
        assert!(e.contains("[hardware]") && e.contains("gpu = "), "{e}");
        // An A100's NVSwitch does not reduce.
        let (t, hw) = cluster("gpu = \"a100\"", "switch", 1, 8, "");
        let c = Cluster::of(&t, hw.as_ref()).unwrap();
        let e = c
            .predict(Collective::AllReduce, 1 << 20, Choice::Nvls)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no reduction rate for NVLS") && e.contains("nvls = true"),
            "{e}"
        );
        let (t, hw) = cluster("gpu = \"a100\"\nnvls = true", "switch", 1, 8, "");
        let e = Cluster::of(&t, hw.as_ref()).unwrap_err().to_string();
        assert!(e.contains("no reduction"), "{e}");
        // Several hosts and no NIC transport.
        let (t, hw) = cluster("gpu = \"h100\"", "rail", 2, 8, "");
        let e = Cluster::of(&t, hw.as_ref()).unwrap_err().to_string();
        assert!(e.contains("nic = \"ib\""), "{e}");
        // An unknown generation lists the known ones.
        let (t, hw) = cluster("gpu = \"v100\"", "switch", 1, 8, "");
        let e = Cluster::of(&t, hw.as_ref()).unwrap_err().to_string();
        assert!(e.contains("v100") && e.contains("a100, h100, h200"), "{e}");
        // No SHARP switches for collnet.
        let e = h100(2, 8)
            .predict(Collective::AllReduce, 1 << 20, Choice::CollNet)
            .unwrap_err()
            .to_string();
        assert!(e.contains("in_network_reduction = true"), "{e}");
    }

    #[test]
    fn a_nic_tied_to_no_gpu_is_refused() {
        let mut text = String::from(
            "name = \"loose\"\nranks = [\"h0/gpu0\", \"h1/gpu0\"]\n[hardware]\ngpu = \"h100\"\n\
             nic = \"ib\"\n[[node]]\nname = \"leaf\"\nkind = \"switch\"\ntier = \"leaf\"\n",
        );
        for h in 0..2 {
            text.push_str(&format!(
                "[[node]]\nname = \"h{h}\"\nkind = \"host\"\n[[node]]\nname = \"h{h}/gpu0\"\n\
                 kind = \"gpu\"\nhost = \"h{h}\"\n[[node]]\nname = \"h{h}/nic0\"\nkind = \"nic\"\n\
                 host = \"h{h}\"\n[[link]]\na = \"h{h}/nic0\"\nb = \"leaf\"\nbandwidth = \"400Gbps\"\n\
                 latency = \"1us\"\n[[link]]\na = \"h{h}/gpu0\"\nb = \"h{h}\"\n\
                 bandwidth = \"64GB/s\"\nlatency = \"1us\"\n[[link]]\na = \"h{h}\"\nb = \"leaf\"\n\
                 bandwidth = \"1GB/s\"\nlatency = \"1us\"\n"
            ));
        }
        let t = read_toml(&text, "loose.toml").unwrap();
        let hw = read_hardware(&text, "loose.toml").unwrap();
        let e = Cluster::of(&t, hw.as_ref()).unwrap_err().to_string();
        assert!(
            e.contains("h0/nic0") && e.contains("tied to no GPU") && e.contains("[[link]]"),
            "{e}"
        );
    }

    #[test]
    fn the_effective_topology_scales_nvlink_and_nic_ports_only() {
        let (t, hw) = cluster("gpu = \"h100\"\nnic = \"ib\"", "rail", 2, 8, "");
        let e = effective_topology(&t, hw.as_ref()).unwrap();
        assert_eq!(e.links().len(), t.links().len());
        assert_eq!(e.rank_nodes(), t.rank_nodes());
        let rate = |t: &Topology, a: &str, b: &str| {
            let (a, b) = (t.find(a).unwrap(), t.find(b).unwrap());
            let l = t.out_links(a).iter().find(|&&l| t.link(l).to == b).unwrap();
            t.link(*l).bandwidth
        };
        let nvl = rate(&e, "h0/gpu3", "h0/nvswitch") / rate(&t, "h0/gpu3", "h0/nvswitch");
        assert!((nvl - 0.824).abs() < 1e-9, "{nvl}");
        let back = rate(&e, "h0/nvswitch", "h0/gpu3") / rate(&t, "h0/nvswitch", "h0/gpu3");
        assert!((back - 0.824).abs() < 1e-9, "{back}");
        let pcie = rate(&e, "h0/gpu3", "h0/nic3") / rate(&t, "h0/gpu3", "h0/nic3");
        assert_eq!(pcie, 1.0);
        let nic = e
            .out_links(e.find("h0/nic3").unwrap())
            .iter()
            .find(|&&l| e.node(e.link(l).to).host.is_none());
        let nic = e.link(*nic.unwrap()).bandwidth;
        assert!((nic - 50e9 * 0.97).abs() < 1.0, "{nic}");
    }

    proptest! {
        #[test]
        fn time_grows_with_size_and_nccl_takes_the_cheapest(
            hosts in 1u32..6, gpus in prop::sample::select(vec![2u32, 4, 8]),
            log_bytes in 3u32..36, coll in prop::sample::select(vec![
                Collective::AllReduce, Collective::AllGather, Collective::ReduceScatter]),
        ) {
            let c = h100(hosts, gpus);
            let bytes = 1u64 << log_bytes;
            let auto = c.predict(coll, bytes, Choice::Auto).unwrap();
            let bigger = c.predict(coll, bytes * 2, Choice::Auto).unwrap();
            prop_assert!(bigger.total_s() >= auto.total_s());
            prop_assert!(auto.total_s() > 0.0 && auto.total_s().is_finite());
            for choice in [Choice::Ring, Choice::Tree, Choice::Nvls] {
                if let Ok(p) = c.predict(coll, bytes, choice) {
                    prop_assert!(auto.total_s() <= p.total_s() * (1.0 + 1e-12));
                }
            }
            // busbw never beats the wire: NVLS's at most (n+1)/n·... of the NVLS rate.
            let bus = bytes as f64 / auto.total_s() * coll.bus_factor(c.ranks());
            prop_assert!(bus <= 2.0 * c.nvlink_bps.max(c.net_bps) + 1.0);
        }
    }
}
