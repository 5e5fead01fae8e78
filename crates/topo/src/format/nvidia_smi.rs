//! What `nvidia-smi` prints, read in one place: the matrix of `nvidia-smi topo -m`
//! ([`parse_nvidia_smi_topo`], a typed [`SmiMatrix`] whose errors name the line) and the
//! GPU list of `nvidia-smi --query-gpu=index,name,pci.bus_id --format=csv,noheader`
//! ([`parse_nvidia_smi_gpus`]). Both the importer ([`read_nvidia_smi_topo`]) and discovery
//! ([`crate::discover`]) read the matrix through the same parser.
//!
//! The importer makes one machine of the matrix: GPUs and NICs, with a link for each
//! ordered pair whose rate follows the path type between them (NV#, PIX, PXB, PHB, NODE,
//! SYS). The matrix names paths, not wires, so each pair gets a link of its own and links
//! that share a PCIe switch or an NVSwitch are not modelled as sharing it; NCCL's topology
//! XML ([`super::read_nccl_xml`]) gives the wires when it is at hand.

use std::collections::HashMap;

use super::{build_error, located, unlocated};
use crate::error::TopoError;
use crate::model::{NodeId, NodeKind, Topology, TopologyBuilder};

/// Bytes/s each way of one NVLink of a bonded set (NVLink 3 and 4).
pub(crate) const NVLINK_RATE: f64 = 25e9;
pub(crate) const NVLINK_LATENCY: f64 = 0.5e-6;

/// More columns than this is no single machine; refusing keeps the pairwise links bounded.
pub const MAX_SMI_DEVICES: usize = 1024;

const ALLOWED: &str = "X, NV<links> (e.g. NV12), PIX, PXB, PHB, NODE or SYS";

/// A path between two devices, as the matrix names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmiPath {
    /// `X`: the device itself (only on the diagonal).
    Same,
    /// `NV#`: a bonded set of # NVLinks (# ≥ 1).
    NvLink(u32),
    /// `PIX`: through at most one PCIe bridge.
    Pix,
    /// `PXB`: through several PCIe bridges.
    Pxb,
    /// `PHB`: through a PCIe host bridge (the CPU).
    Phb,
    /// `NODE`: between host bridges of one NUMA node.
    Node,
    /// `SYS` (old drivers: `SOC`): across the SMP interconnect.
    Sys,
}

impl SmiPath {
    /// The path an entry names; `None` for anything else (`NVX`, `NV0`, `N/A`).
    pub fn parse(s: &str) -> Option<SmiPath> {
        Some(match s {
            "X" => SmiPath::Same,
            "PIX" => SmiPath::Pix,
            "PXB" => SmiPath::Pxb,
            "PHB" => SmiPath::Phb,
            "NODE" => SmiPath::Node,
            // Drivers before NODE existed said SOC for the same thing as SYS.
            "SYS" | "SOC" => SmiPath::Sys,
            _ => SmiPath::NvLink(s.strip_prefix("NV")?.parse().ok().filter(|&n| n > 0)?),
        })
    }

    /// The NVLinks of an `NV#` path; `None` for every other path.
    pub fn nvlinks(self) -> Option<u32> {
        match self {
            SmiPath::NvLink(n) => Some(n),
            _ => None,
        }
    }

    /// Bytes/s and seconds of a path of this type.
    pub(crate) fn rate(self) -> (f64, f64) {
        match self {
            SmiPath::NvLink(n) => (f64::from(n) * NVLINK_RATE, NVLINK_LATENCY),
            SmiPath::Pix => (24e9, 1e-6),
            SmiPath::Pxb => (20e9, 1.5e-6),
            SmiPath::Phb => (16e9, 2e-6),
            SmiPath::Node => (12e9, 3e-6),
            SmiPath::Sys | SmiPath::Same => (8e9, 5e-6),
        }
    }
}

/// One device of the matrix: a column of the header and the row of the same position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmiDevice {
    /// The column's label as printed: `GPU0`, `NIC0`, or an old driver's `mlx5_0`.
    pub label: String,
    /// `Some(n)` for a `GPU<n>` column; every other column is a NIC.
    pub gpu: Option<u32>,
    /// What to call the device: a NIC's name from the `NIC Legend:` block (`mlx5_0`), else
    /// the label in lower case (`gpu0`, `nic0`).
    pub name: String,
    /// The 1-based line of the device's row.
    pub line: usize,
}

/// The matrix of `nvidia-smi topo -m`, checked: square, rows in the header's order, `X`
/// exactly on the diagonal, every entry a known path.
#[derive(Clone, Debug, PartialEq)]
pub struct SmiMatrix {
    devices: Vec<SmiDevice>,
    /// `paths[i][j]`: from device i to device j.
    paths: Vec<Vec<SmiPath>>,
}

impl SmiMatrix {
    /// The devices in the header's order.
    pub fn devices(&self) -> &[SmiDevice] {
        &self.devices
    }

    /// The path from device `from` to device `to` (indices into [`Self::devices`]).
    pub fn path(&self, from: usize, to: usize) -> SmiPath {
        self.paths[from][to]
    }
}

/// Parses the output of `nvidia-smi topo -m`; `origin` names the text in errors, which say
/// `origin:line: what is wrong` (or `origin: empty …` for no text at all).
pub fn parse_nvidia_smi_topo(text: &str, origin: &str) -> Result<SmiMatrix, TopoError> {
    let lines: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, strip_ansi(l)))
        .collect();
    let mut rest = lines.iter().skip_while(|(_, l)| l.trim().is_empty());
    let Some((header_line, header)) = rest.next() else {
        return Err(unlocated(
            origin,
            "empty; expected the output of `nvidia-smi topo -m`",
        ));
    };
    let header_line = *header_line;
    let at_header = |message: String| located(origin, header_line, message);
    let labels = header_columns(header);
    if !labels.first().is_some_and(|c| is_gpu(c)) {
        return Err(at_header(
            "expected the header row of `nvidia-smi topo -m`, which starts with GPU0".into(),
        ));
    }
    if labels.len() > MAX_SMI_DEVICES {
        let n = labels.len();
        return Err(at_header(format!("{n} devices; at most {MAX_SMI_DEVICES}")));
    }
    if let Some(dup) = (1..labels.len()).find(|&j| labels[..j].contains(&labels[j])) {
        let name = &labels[dup];
        return Err(at_header(format!("device '{name}' heads two columns")));
    }
    let mut gpus: HashMap<u32, &str> = HashMap::new();
    let mut indices = Vec::with_capacity(labels.len());
    for label in &labels {
        let gpu = match is_gpu(label) {
            false => None,
            true => Some(label[3..].parse::<u32>().map_err(|_| {
                at_header(format!(
                    "column '{label}': GPU index out of range (at most {})",
                    u32::MAX
                ))
            })?),
        };
        if let Some(n) = gpu {
            if let Some(other) = gpus.insert(n, label) {
                return Err(at_header(format!(
                    "columns '{other}' and '{label}' both name GPU {n}"
                )));
            }
        }
        indices.push(gpu);
    }
    let mut rows = Rows {
        labels: &labels,
        paths: Vec::with_capacity(labels.len()),
        lines: Vec::with_capacity(labels.len()),
        origin,
    };
    for (line, text) in
        rest.take_while(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with("Legend"))
    {
        rows.row(*line, text)?;
    }
    let Rows {
        paths,
        lines: row_lines,
        ..
    } = rows;
    if paths.len() < labels.len() {
        return Err(at_header(format!(
            "the header lists {} devices but {} rows follow; the matrix must be square",
            labels.len(),
            paths.len()
        )));
    }
    let legend = nic_legend(&lines);
    let devices = labels
        .iter()
        .zip(indices)
        .zip(row_lines)
        .map(|((label, gpu), line)| SmiDevice {
            name: match gpu {
                Some(_) => None,
                None => legend.get(label.as_str()).cloned(),
            }
            .unwrap_or_else(|| label.to_ascii_lowercase()),
            label: label.clone(),
            gpu,
            line,
        })
        .collect();
    Ok(SmiMatrix { devices, paths })
}

/// The rows read so far, against the header's labels.
struct Rows<'a> {
    labels: &'a [String],
    paths: Vec<Vec<SmiPath>>,
    lines: Vec<usize>,
    origin: &'a str,
}

impl Rows<'_> {
    /// One row; `text` is not blank.
    fn row(&mut self, line: usize, text: &str) -> Result<(), TopoError> {
        let err = |message: String| located(self.origin, line, message);
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let Some((&label, entries)) = tokens.split_first() else {
            return Err(err("a blank row".into()));
        };
        let i = self.paths.len();
        let n = self.labels.len();
        let Some(column) = self.labels.get(i) else {
            return Err(err(format!(
                "row '{label}' has no column: the header lists {n} devices, this is row {}",
                i + 1
            )));
        };
        if label != column {
            return Err(err(format!(
                "row {} is '{label}' but column {} of the header is '{column}'; rows and columns \
                 list the devices in the same order",
                i + 1,
                i + 1
            )));
        }
        // Affinity columns follow the entries; none of their values looks like one.
        let count = entries.iter().take_while(|e| looks_like_entry(e)).count();
        if count != n {
            return Err(err(format!(
                "row '{label}' has {count} entries; the header lists {n} devices"
            )));
        }
        let mut paths = Vec::with_capacity(n);
        for (j, entry) in entries[..n].iter().enumerate() {
            let to = &self.labels[j];
            let path = SmiPath::parse(entry).ok_or_else(|| {
                err(format!(
                    "unknown entry '{entry}' from {label} to {to}; expected {ALLOWED}"
                ))
            })?;
            if (path == SmiPath::Same) != (i == j) {
                return Err(err(format!(
                    "entry '{entry}' from {label} to {to}: X marks a device's own column, and \
                     only there"
                )));
            }
            paths.push(path);
        }
        self.paths.push(paths);
        self.lines.push(line);
        Ok(())
    }
}

/// Reads one machine, named `host_name`, from `nvidia-smi topo -m` output and checks it.
/// Ranks go to the GPUs in column order.
pub fn read_nvidia_smi_topo(
    text: &str,
    origin: &str,
    host_name: &str,
) -> Result<Topology, TopoError> {
    read_nvidia_smi_topo_builder(text, origin, host_name)?
        .build()
        .map_err(|e| build_error(origin, e))
}

/// As [`read_nvidia_smi_topo`], but returns the unbuilt builder.
pub fn read_nvidia_smi_topo_builder(
    text: &str,
    origin: &str,
    host_name: &str,
) -> Result<TopologyBuilder, TopoError> {
    let matrix = parse_nvidia_smi_topo(text, origin)?;
    let mut b = TopologyBuilder::new(host_name);
    let host = b
        .node(host_name, NodeKind::Host)
        .map_err(|e| build_error(origin, e))?;
    let devices = matrix.devices();
    let mut ids: Vec<NodeId> = Vec::with_capacity(devices.len());
    let mut gpus = Vec::new();
    for device in devices {
        let kind = match device.gpu {
            Some(_) => NodeKind::Accelerator,
            None => NodeKind::Nic,
        };
        let id = b
            .device(format!("{host_name}/{}", device.name), kind, host)
            .map_err(|e| e.at(origin, device.line))?;
        ids.push(id);
        if device.gpu.is_some() {
            gpus.push(id);
        }
    }
    // Both directions of a pair next to each other, so that they write as one cable.
    for i in 0..ids.len() {
        for j in i + 1..ids.len() {
            for (from, to) in [(i, j), (j, i)] {
                let (bandwidth, latency) = matrix.path(from, to).rate();
                b.link(ids[from], ids[to], bandwidth, latency)
                    .map_err(|e| e.at(origin, devices[from].line))?;
            }
        }
    }
    b.place_all(gpus).map_err(|e| build_error(origin, e))?;
    Ok(b)
}

/// One GPU of `nvidia-smi --query-gpu=index,name,pci.bus_id --format=csv,noheader`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmiGpu {
    pub index: u32,
    /// The product name (it may hold commas).
    pub name: String,
    /// As nvidia-smi prints it: `00000000:19:00.0`.
    pub bus_id: String,
}

/// The GPUs of an `index, name, pci.bus_id` listing. Lines that are no such row (the
/// warnings nvidia-smi prints on standard output, such as a corrupted infoROM) are skipped.
pub fn parse_nvidia_smi_gpus(csv: &str) -> Vec<SmiGpu> {
    csv.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, name @ .., bus_id] = fields.as_slice() else {
                return None;
            };
            Some(SmiGpu {
                index: index.parse().ok()?,
                name: name.join(","),
                bus_id: bus_id.to_string(),
            })
        })
        .collect()
}

/// The device columns: the header's words before "CPU Affinity", "NUMA Affinity" and
/// "GPU NUMA ID" (device names are never exactly those words).
fn header_columns(header: &str) -> Vec<String> {
    header
        .split_whitespace()
        .take_while(|w| !matches!(*w, "CPU" | "NUMA" | "GPU"))
        .map(str::to_string)
        .collect()
}

/// `X`, `SYS`, `NV12`, or a mistyped one like `NVX`; never an affinity (`0-63`, `N/A`).
fn looks_like_entry(token: &str) -> bool {
    token.starts_with(|c: char| c.is_ascii_uppercase())
        && token.chars().all(|c| c.is_ascii_alphanumeric())
}

/// `GPU` and digits.
fn is_gpu(label: &str) -> bool {
    label
        .strip_prefix("GPU")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `NIC0: mlx5_0` lines after `NIC Legend:`, mapping a column to the NIC's name.
fn nic_legend(lines: &[(usize, String)]) -> HashMap<String, String> {
    let after = lines
        .iter()
        .skip_while(|(_, l)| l.trim() != "NIC Legend:")
        .skip(1);
    after
        .filter_map(|(_, l)| {
            let (column, name) = l.trim().split_once(':')?;
            let (column, name) = (column.trim(), name.trim());
            let plain = !name.is_empty() && !name.contains(char::is_whitespace);
            (column.starts_with("NIC") && plain).then(|| (column.to_string(), name.to_string()))
        })
        .collect()
}

/// The line without terminal escapes: nvidia-smi underlines its header even into files.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // ESC [ parameters final-byte; a lone ESC is dropped.
        if chars.clone().next() == Some('[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(SmiPath::parse("NV12"), Some(SmiPath::NvLink(12)));
        assert_eq!(SmiPath::parse("NV0"), None);
        assert_eq!(SmiPath::parse("NVX"), None);
        assert_eq!(SmiPath::parse("SOC"), Some(SmiPath::Sys));
        assert_eq!(SmiPath::NvLink(12).rate().0, 300e9);
        assert_eq!(SmiPath::NvLink(4).nvlinks(), Some(4));
        assert_eq!(SmiPath::Pix.nvlinks(), None);
    }

    #[test]
    fn escapes_and_headers() {
        assert_eq!(strip_ansi("\u{1b}[4mGPU0\tGPU1\u{1b}[0m x"), "GPU0\tGPU1 x");
        // A lone escape goes; letters after it stay (an escape is not `ESC` up to a letter).
        assert_eq!(strip_ansi("\u{1b}GPU0"), "GPU0");
        assert_eq!(
            header_columns("\tGPU0\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID"),
            ["GPU0", "NIC0"]
        );
        // Old drivers head NIC columns with the NIC's name.
        assert_eq!(
            header_columns("GPU0 GPU1 mlx5_0 CPU Affinity"),
            ["GPU0", "GPU1", "mlx5_0"]
        );
        assert!(is_gpu("GPU7") && !is_gpu("GPU") && !is_gpu("NIC0") && !is_gpu("GPU1a"));
    }
}
