//! Every constant of the GPU-cluster model ([`crate::nccl`]) in one place, per GPU, NIC and
//! CPU generation, each with the specification or source it comes from. Nothing here is
//! fitted to a validation case: the numbers are hardware line rates, protocol formats and
//! NCCL's own published tuning constants (`src/graph/tuning.cc` and `topo.h` of NCCL 2.20.3,
//! <https://github.com/NVIDIA/nccl/blob/b6475625fbcaa2c3c0e50eed2fa1255d7514d4a2/src/graph/tuning.cc>).
//!
//! Link *rates* come from the topology (a GPU's NVLink to its NVSwitch, a NIC's port);
//! what a generation adds is how much of a rate a protocol reaches and what each step
//! costs.

use crate::SimError;

/// A GPU's architecture: selects NCCL's per-architecture rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// sm80 (A100).
    Ampere,
    /// sm90 (H100, H200, H800, H20).
    Hopper,
}

/// What a GPU generation means to the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuGen {
    /// The `[hardware] gpu` name.
    pub name: &'static str,
    pub arch: Arch,
    /// The share of NVLink's line rate that loads and stores through NVLink reach: NCCL's
    /// effective bandwidth per link over the line rate per link (25 GB/s each way for
    /// NVLink 3 and 4). NVLink 3 (A100, `SM80_NVLINK_BW` 20.0): 0.8; NVLink 4 (Hopper,
    /// `SM90_NVLINK_BW` 20.6): 0.824 — 18 links × 20.6 = 370.8 GB/s, NVIDIA's "effective
    /// NVLink bandwidth of 370 GB/s" (nccl-tests #212).
    pub nvlink_efficiency: f64,
    /// NVSwitch reduce-and-multicast throughput (NVLink SHARP) as a share of the GPU's
    /// effective NVLink rate; `None` where the NVSwitch does not reduce (NVSwitch 2 of
    /// A100). NVSwitch 3: 5/6, the NVLS factor of NCCL's tuning model.
    pub nvls_efficiency: Option<f64>,
    /// How fast the GPU reduces two buffers into a third (bytes of result per second):
    /// its HBM bandwidth over 3 (two operands read, one result written). A100 80GB
    /// 2.04 TB/s, H100 SXM 3.35 TB/s, H200 4.8 TB/s, H800 3.35 TB/s, H20 4.0 TB/s
    /// (NVIDIA data sheets).
    pub reduce_bps: f64,
}

/// GPU generations the model knows.
pub const GPUS: [GpuGen; 5] = [
    GpuGen {
        name: "a100",
        arch: Arch::Ampere,
        nvlink_efficiency: 20.0 / 25.0,
        nvls_efficiency: None,
        reduce_bps: 2.04e12 / 3.0,
    },
    GpuGen {
        name: "h100",
        arch: Arch::Hopper,
        nvlink_efficiency: 20.6 / 25.0,
        nvls_efficiency: Some(5.0 / 6.0),
        reduce_bps: 3.35e12 / 3.0,
    },
    GpuGen {
        name: "h200",
        arch: Arch::Hopper,
        nvlink_efficiency: 20.6 / 25.0,
        nvls_efficiency: Some(5.0 / 6.0),
        reduce_bps: 4.8e12 / 3.0,
    },
    GpuGen {
        name: "h800",
        arch: Arch::Hopper,
        nvlink_efficiency: 20.6 / 25.0,
        nvls_efficiency: Some(5.0 / 6.0),
        reduce_bps: 3.35e12 / 3.0,
    },
    GpuGen {
        name: "h20",
        arch: Arch::Hopper,
        nvlink_efficiency: 20.6 / 25.0,
        nvls_efficiency: Some(5.0 / 6.0),
        reduce_bps: 4.0e12 / 3.0,
    },
];

/// What a NIC transport means to the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NicGen {
    /// The `[hardware] nic` name.
    pub name: &'static str,
    /// The share of the port's line rate RDMA reaches: NVIDIA's "CX-7 NICs at NDR rate
    /// (400 Gbps) should achieve up to 48-49 GB/s per NIC" (nccl-tests #267, #290) over
    /// 50 GB/s: 0.97, for InfiniBand and RoCE alike (the same ConnectX-7 and verbs).
    pub efficiency: f64,
}

/// NIC transports the model knows.
pub const NICS: [NicGen; 2] = [
    NicGen {
        name: "ib",
        efficiency: 0.97,
    },
    NicGen {
        name: "roce",
        efficiency: 0.97,
    },
];

/// What a CPU vendor means to the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuGen {
    pub name: &'static str,
    /// NCCL's network post overhead per step (`netOverhead`, seconds): the least an
    /// intra-host step costs once the network is involved.
    pub net_overhead_s: f64,
    /// Row of `llMaxBws` for several hosts.
    pub ll_max_row: usize,
}

/// CPU vendors the model knows (`[hardware] cpu`; default `intel`).
pub const CPUS: [CpuGen; 2] = [
    CpuGen {
        name: "intel",
        net_overhead_s: 1e-6,
        ll_max_row: 0,
    },
    CpuGen {
        name: "amd",
        net_overhead_s: 2e-6,
        ll_max_row: 1,
    },
];

/// Looks `name` up in `table` by `key`, or says which names there are and where to set one.
pub fn lookup<T: Copy>(
    table: &[T],
    key: impl Fn(&T) -> &'static str,
    name: &str,
    what: &str,
) -> Result<T, SimError> {
    table
        .iter()
        .find(|g| key(g) == name.to_ascii_lowercase())
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(&key).collect();
            SimError::Invalid(format!(
                "[hardware] {what} = '{name}' is not a generation the model knows; use one of {}",
                names.join(", ")
            ))
        })
}

/// NCCL's protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// 8-byte stores of 4 data bytes and a flag: lowest latency, a quarter of the rate.
    LL,
    /// 128-byte lines of 120 data bytes: near full rate, low latency, NVLink-class paths.
    LL128,
    /// Bulk copies with a flag per chunk: full rate, the highest latency.
    Simple,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::LL, Protocol::LL128, Protocol::Simple];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::LL => "LL",
            Protocol::LL128 => "LL128",
            Protocol::Simple => "Simple",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which kind of hop a step takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    NvLink,
    Net,
}

/// NCCL's algorithms, in the order of its tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NcclAlgo {
    Tree,
    Ring,
    CollNetDirect,
    CollNetChain,
    Nvls,
    NvlsTree,
}

impl NcclAlgo {
    fn index(self) -> usize {
        self as usize
    }
}

/// Latency added once per collective (`baseLat`, µs), [algorithm][protocol].
const BASE_LAT_US: [[f64; 3]; 6] = [
    [6.8, 14.0, 0.0],
    [6.6, 14.0, 8.4],
    [0.0; 3],
    [0.0; 3],
    [0.0; 3],
    [0.0; 3],
];

/// Latency per hop (`hwLat`, µs), [hop][algorithm][protocol]; PCIe rows are not used (GPUs
/// here talk over NVLink inside a host).
const HW_LAT_US: [[[f64; 3]; 6]; 2] = [
    [
        [0.6, 1.25, 28.0],
        [0.6, 1.9, 3.4],
        [0.0, 0.0, 3.7],
        [0.0, 0.0, 2.8],
        [0.0, 0.0, 23.0],
        [0.0, 0.0, 23.0],
    ],
    [
        [5.0, 8.5, 28.0],
        [2.7, 4.0, 14.0],
        [0.0, 0.0, 31.0],
        [0.0, 0.0, 30.0],
        [0.0, 0.0, 18.0],
        [0.0, 0.0, 14.0],
    ],
];

/// `baseLat` in seconds.
pub fn base_latency(a: NcclAlgo, p: Protocol) -> f64 {
    BASE_LAT_US[a.index()][p.index()] * 1e-6
}

/// `hwLat` in seconds.
pub fn hop_latency(h: Hop, a: NcclAlgo, p: Protocol) -> f64 {
    let row = match h {
        Hop::NvLink => 0,
        Hop::Net => 1,
    };
    HW_LAT_US[row][a.index()][p.index()] * 1e-6
}

/// Ring all-reduce across hosts with Simple: NCCL multiplies its latency by this (the
/// "plateau effect of ring", Ampere and later).
pub const RING_SIMPLE_PLATEAU: f64 = 1.4;

/// LL's top rate in bytes/s (`llMaxBws`): one host [Ampere/Hopper], then [CPU row][2 hosts,
/// ≥3 hosts].
pub const LL_MAX_ONE_HOST: f64 = 87.7e9;
pub const LL_MAX_HOSTS: [[f64; 2]; 2] = [[39.0e9, 20.4e9], [22.5e9, 19.0e9]];

/// LL carries 4 data bytes in 8; a ring forwards them once more on the way (NCCL: ×1/4
/// across hosts or for all-reduce, ×1/3 otherwise); a tree ×1/3.8.
pub const LL_RING_MULTI: f64 = 1.0 / 4.0;
pub const LL_RING_SINGLE: f64 = 1.0 / 3.0;
pub const LL_TREE: f64 = 1.0 / 3.8;
/// LL128 carries 120 data bytes per 128-byte line (ring with ≥ 2 GPUs per host, and
/// trees across hosts); 7/9 for a tree inside one host.
pub const LL128_RING: f64 = 120.0 / 128.0;
pub const LL128_TREE_ONE_HOST: f64 = 7.0 / 9.0;
/// Trees reach this share of their links (NCCL's `Tree: busBw *= .92`).
pub const TREE_EFFICIENCY: f64 = 0.92;

/// A rank's stores and loads of a collective are cut into chunks of this many bytes per
/// channel and pipelined through the algorithm's stages (NCCL's Simple step: the 4 MiB
/// `NCCL_BUFFSIZE` over `NCCL_STEPS` = 8): the first chunk crosses every stage before
/// the pipeline runs full.
pub const CHUNK_BYTES: f64 = 512.0 * 1024.0;
