//! `topoccl topo gen`: a standard fabric as a generator description — `name` and a
//! `[generate]` table, the serde form of [`Fabric`] — small even for 16,384 GPUs. The
//! fabric is built once to check it and to print its summary.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use topoccl_topo::gen::{generate, Fabric, HostSpec, ZoneFabric};

use super::{check_output_dir, emit, summary};
use crate::units::{parse_bandwidth, parse_duration};
use crate::CliError;

#[derive(Subcommand, Debug)]
pub enum GenCmd {
    /// A k-ary fat-tree of 2 or 3 tiers; NICs fill leaves in blocks of whole hosts.
    FatTree(FatTreeArgs),
    /// Rail-optimized: NIC i of every host on rail i's leaves, rails joined by spines.
    Rail(RailArgs),
    /// One switch with uniform links: the textbook network, or hosts with GPUs on it.
    ///
    /// Without host options each host is one rank on a plain host node; with any
    /// (--gpus-per-host, ...) hosts get GPUs, an NVSwitch and a NIC per GPU.
    Switch(SwitchArgs),
    /// Zones (sites) of hosts under gateways joined by slow long links.
    ///
    /// Each zone is a switch or a 2-tier fat-tree under its gateway.
    MultiZone(MultiZoneArgs),
}

#[derive(Args, Debug)]
pub struct FatTreeArgs {
    /// Hosts (machines), numbered h0, h1, ...
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    hosts: u32,
    /// 2 (leaf, spine) or 3 (pods of leaf and spine, under core switches).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=3))]
    tiers: u32,
    /// Down:up bandwidth ratio at the leaves (1 = non-blocking).
    #[arg(long, visible_alias = "oversub-leaf", default_value = "1", value_parser = ratio)]
    oversub: f64,
    /// Down:up bandwidth ratio at the spines (3 tiers).
    #[arg(long, visible_alias = "oversub-spine", default_value = "1", value_parser = ratio)]
    spine_oversub: f64,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    host: HostArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct RailArgs {
    /// Hosts (machines), numbered h0, h1, ...
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    hosts: u32,
    /// Down:up bandwidth ratio at the rail leaves.
    #[arg(long, default_value = "1", value_parser = ratio)]
    oversub: f64,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    host: HostArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct SwitchArgs {
    /// Hosts (machines), numbered h0, h1, ...
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    hosts: u32,
    /// Every link to the switch [default: --nic-bandwidth, 400Gbps].
    #[arg(long, value_parser = bandwidth)]
    bandwidth: Option<String>,
    /// Latency of each link to the switch.
    #[arg(long, default_value = "1us", value_parser = duration)]
    latency: String,
    /// The switch reduces in the network (SHARP-style).
    #[arg(long)]
    in_network_reduction: bool,
    #[command(flatten)]
    host: HostArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct MultiZoneArgs {
    /// Zones (sites), at least 2.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..))]
    zones: u32,
    /// Hosts in each zone.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    hosts_per_zone: u32,
    /// The network inside each zone.
    #[arg(long, value_enum, default_value = "switch")]
    zone_fabric: ZoneKind,
    /// Fat-tree zones: down:up bandwidth ratio at the leaves.
    #[arg(long, default_value = "1", value_parser = ratio)]
    oversub: f64,
    /// Gateway to gateway bandwidth.
    #[arg(long, default_value = "10Gbps", value_parser = bandwidth)]
    inter_bandwidth: String,
    /// Gateway to gateway latency.
    #[arg(long, default_value = "20ms", value_parser = duration)]
    inter_latency: String,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    host: HostArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ZoneKind {
    Switch,
    FatTree,
}

/// The switched network's options shared by fat-tree, rail and multi-zone.
#[derive(Args, Debug)]
struct NetArgs {
    /// Ports per switch (even) [default: the smallest power of two that fits].
    #[arg(long)]
    radix: Option<u32>,
    /// Network links, NICs' included [default: --nic-bandwidth, 400Gbps].
    #[arg(long, value_parser = bandwidth)]
    bandwidth: Option<String>,
    /// Latency of each network hop (switch and cable).
    #[arg(long, default_value = "1us", value_parser = duration)]
    latency: String,
    /// Every switch of the fabric reduces in the network (SHARP-style).
    #[arg(long)]
    in_network_reduction: bool,
}

/// The inside of each host; unset options keep the defaults of `HostSpec`.
#[derive(Args, Debug)]
struct HostArgs {
    /// GPUs per host, one NIC each [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    gpus_per_host: Option<u32>,
    /// CPU sockets per host [default: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: Option<u32>,
    /// Each GPU to the NVSwitch [default: 300GB/s].
    #[arg(long, value_parser = bandwidth)]
    nvlink_bandwidth: Option<String>,
    /// GPU to NIC and GPU to CPU [default: 32GB/s].
    #[arg(long, value_parser = bandwidth)]
    pcie_bandwidth: Option<String>,
    /// Each NIC's port [default: 400Gbps].
    #[arg(long, value_parser = bandwidth)]
    nic_bandwidth: Option<String>,
}

impl HostArgs {
    fn given(&self) -> bool {
        self.gpus_per_host.is_some()
            || self.cpus.is_some()
            || self.nvlink_bandwidth.is_some()
            || self.pcie_bandwidth.is_some()
            || self.nic_bandwidth.is_some()
    }

    fn spec(self) -> HostSpec {
        let d = HostSpec::default();
        HostSpec {
            gpus_per_host: self.gpus_per_host.unwrap_or(d.gpus_per_host),
            cpus: self.cpus.unwrap_or(d.cpus),
            nvlink_bandwidth: self.nvlink_bandwidth.unwrap_or(d.nvlink_bandwidth),
            pcie_bandwidth: self.pcie_bandwidth.unwrap_or(d.pcie_bandwidth),
            nic_bandwidth: self.nic_bandwidth.unwrap_or(d.nic_bandwidth),
            ..d
        }
    }
}

#[derive(Args, Debug)]
struct OutputArgs {
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// toml, or json (the same document).
    #[arg(long, value_enum, default_value = "toml")]
    format: Format,
    /// The topology's name [default: the output file's stem, else the fabric's kind].
    #[arg(long)]
    name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Toml,
    Json,
}

/// What `topo gen` writes: the lead's topology files embed the same `[generate]` table.
#[derive(Serialize)]
struct GenDoc<'a> {
    name: &'a str,
    generate: &'a Fabric,
}

fn ratio(text: &str) -> Result<f64, String> {
    let r: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if !(r.is_finite() && r >= 1.0) {
        return Err(format!(
            "{text} is below 1; an oversubscription is a down:up ratio of at least 1 \
             (1 = non-blocking, 4 = 4:1)"
        ));
    }
    Ok(r)
}

fn bandwidth(text: &str) -> Result<String, String> {
    parse_bandwidth(text).map(|_| text.to_string())
}

fn duration(text: &str) -> Result<String, String> {
    parse_duration(text).map(|_| text.to_string())
}

impl GenCmd {
    fn into_parts(self) -> (Fabric, OutputArgs) {
        match self {
            GenCmd::FatTree(a) => (
                Fabric::FatTree {
                    hosts: a.hosts,
                    tiers: a.tiers,
                    radix: a.net.radix,
                    oversub_leaf: a.oversub,
                    oversub_spine: a.spine_oversub,
                    bandwidth: a.net.bandwidth,
                    latency: a.net.latency,
                    host: a.host.spec(),
                    in_network_reduction: a.net.in_network_reduction,
                },
                a.out,
            ),
            GenCmd::Rail(a) => (
                Fabric::Rail {
                    hosts: a.hosts,
                    radix: a.net.radix,
                    oversub_leaf: a.oversub,
                    bandwidth: a.net.bandwidth,
                    latency: a.net.latency,
                    host: a.host.spec(),
                    in_network_reduction: a.net.in_network_reduction,
                },
                a.out,
            ),
            GenCmd::Switch(a) => (
                Fabric::Switch {
                    hosts: a.hosts,
                    bandwidth: a.bandwidth,
                    latency: a.latency,
                    host: a.host.given().then(|| a.host.spec()),
                    in_network_reduction: a.in_network_reduction,
                },
                a.out,
            ),
            GenCmd::MultiZone(a) => (
                Fabric::MultiZone {
                    zones: a.zones,
                    hosts_per_zone: a.hosts_per_zone,
                    zone_fabric: match a.zone_fabric {
                        ZoneKind::Switch => ZoneFabric::Switch,
                        ZoneKind::FatTree => ZoneFabric::FatTree,
                    },
                    radix: a.net.radix,
                    oversub_leaf: a.oversub,
                    bandwidth: a.net.bandwidth,
                    latency: a.net.latency,
                    inter_bandwidth: a.inter_bandwidth,
                    inter_latency: a.inter_latency,
                    host: a.host.spec(),
                    in_network_reduction: a.net.in_network_reduction,
                },
                a.out,
            ),
        }
    }
}

pub fn run(cmd: GenCmd) -> Result<(), CliError> {
    let (fabric, out) = cmd.into_parts();
    let path = out.output.as_deref();
    check_output_dir(path)?;
    let name = out
        .name
        .clone()
        .unwrap_or_else(|| default_name(path, &fabric));
    let mut builder = generate(&fabric).map_err(|e| CliError::usage(e.to_string()))?;
    builder.set_name(name.as_str());
    let topology = builder.build().map_err(|e| {
        CliError::failed(format!("the generated {} is invalid: {e}", fabric.kind()))
    })?;
    eprintln!("{}", summary(&topology));
    emit(path, &render(&name, &fabric, out.format)?)
}

fn default_name(path: Option<&Path>, fabric: &Fabric) -> String {
    path.and_then(Path::file_stem)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| fabric.kind().to_string())
}

fn render(name: &str, fabric: &Fabric, format: Format) -> Result<String, CliError> {
    let doc = GenDoc {
        name,
        generate: fabric,
    };
    match format {
        Format::Toml => toml::to_string(&doc)
            .map_err(|e| CliError::failed(format!("cannot write the description as TOML: {e}"))),
        Format::Json => serde_json::to_string_pretty(&doc)
            .map(|s| s + "\n")
            .map_err(|e| CliError::failed(format!("cannot write the description as JSON: {e}"))),
    }
}
