//! One machine from the matrix `nvidia-smi topo -m` prints: GPUs and NICs, with a link
//! for each ordered pair whose rate follows the path type between them (NV#, PIX, PXB, PHB,
//! NODE, SYS). The matrix names paths, not wires, so each pair gets a link of its own and
//! links that share a PCIe switch or an NVSwitch are not modelled as sharing it; NCCL's
//! topology XML ([`super::read_nccl_xml`]) gives the wires when it is at hand.

use std::collections::HashMap;

use super::{build_error, located, unlocated};
use crate::error::TopoError;
use crate::model::{NodeId, NodeKind, Topology, TopologyBuilder};

/// Bytes/s each way of one NVLink of a bonded set.
pub(crate) const NVLINK_RATE: f64 = 25e9;
pub(crate) const NVLINK_LATENCY: f64 = 0.5e-6;

/// More columns than this is no single machine; refusing keeps the pairwise links bounded.
const MAX_DEVICES: usize = 1024;

const ALLOWED: &str = "X, NV<links> (e.g. NV12), PIX, PXB, PHB, NODE or SYS";

/// A path between two devices, as the matrix names it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Same,
    NvLink(u32),
    Pix,
    Pxb,
    Phb,
    Node,
    Sys,
}

impl Path {
    fn parse(s: &str) -> Option<Path> {
        Some(match s {
            "X" => Path::Same,
            "PIX" => Path::Pix,
            "PXB" => Path::Pxb,
            "PHB" => Path::Phb,
            "NODE" => Path::Node,
            // Drivers before NODE existed said SOC for the same thing as SYS.
            "SYS" | "SOC" => Path::Sys,
            _ => Path::NvLink(s.strip_prefix("NV")?.parse().ok().filter(|&n| n > 0)?),
        })
    }

    /// Bytes/s and seconds of a path of this type.
    fn rate(self) -> (f64, f64) {
        match self {
            Path::NvLink(n) => (f64::from(n) * NVLINK_RATE, NVLINK_LATENCY),
            Path::Pix => (24e9, 1e-6),
            Path::Pxb => (20e9, 1.5e-6),
            Path::Phb => (16e9, 2e-6),
            Path::Node => (12e9, 3e-6),
            Path::Sys | Path::Same => (8e9, 5e-6),
        }
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
    let lines: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, strip_ansi(l)))
        .collect();
    let matrix = Matrix::parse(&lines, origin)?;
    let legend = nic_legend(&lines);
    matrix.build(origin, host_name, &legend)
}

struct Matrix {
    columns: Vec<String>,
    /// `paths[i][j]`: from device i to device j.
    paths: Vec<Vec<Path>>,
    /// Line of each row.
    lines: Vec<usize>,
}

impl Matrix {
    fn parse(lines: &[(usize, String)], origin: &str) -> Result<Matrix, TopoError> {
        let mut rest = lines.iter().skip_while(|(_, l)| l.trim().is_empty());
        let Some((header_line, header)) = rest.next() else {
            return Err(unlocated(
                origin,
                "empty; expected the output of `nvidia-smi topo -m`",
            ));
        };
        let columns = header_columns(header);
        if !columns.first().is_some_and(|c| is_gpu(c)) {
            return Err(located(
                origin,
                *header_line,
                "expected the header row of `nvidia-smi topo -m`, which starts with GPU0",
            ));
        }
        if columns.len() > MAX_DEVICES {
            let n = columns.len();
            return Err(located(
                origin,
                *header_line,
                format!("{n} devices; at most {MAX_DEVICES}"),
            ));
        }
        if let Some(dup) = (1..columns.len()).find(|&j| columns[..j].contains(&columns[j])) {
            let name = &columns[dup];
            return Err(located(
                origin,
                *header_line,
                format!("device '{name}' heads two columns"),
            ));
        }
        let mut m = Matrix {
            columns,
            paths: Vec::new(),
            lines: Vec::new(),
        };
        for (line, text) in
            rest.take_while(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with("Legend"))
        {
            m.row(*line, text, origin)?;
        }
        if m.paths.len() < m.columns.len() {
            return Err(located(
                origin,
                *header_line,
                format!(
                    "the header lists {} devices but {} rows follow; the matrix must be square",
                    m.columns.len(),
                    m.paths.len()
                ),
            ));
        }
        Ok(m)
    }

    fn row(&mut self, line: usize, text: &str, origin: &str) -> Result<(), TopoError> {
        let err = |message: String| located(origin, line, message);
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let (label, entries) = (tokens[0], &tokens[1..]);
        let i = self.paths.len();
        let n = self.columns.len();
        let Some(column) = self.columns.get(i) else {
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
            let to = &self.columns[j];
            let path = Path::parse(entry).ok_or_else(|| {
                err(format!(
                    "unknown entry '{entry}' from {label} to {to}; expected {ALLOWED}"
                ))
            })?;
            if (path == Path::Same) != (i == j) {
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

    fn build(
        &self,
        origin: &str,
        host_name: &str,
        legend: &HashMap<String, String>,
    ) -> Result<TopologyBuilder, TopoError> {
        let mut b = TopologyBuilder::new(host_name);
        let host = b
            .node(host_name, NodeKind::Host)
            .map_err(|e| build_error(origin, e))?;
        let mut ids: Vec<NodeId> = Vec::with_capacity(self.columns.len());
        let mut gpus = Vec::new();
        for (i, label) in self.columns.iter().enumerate() {
            let gpu = is_gpu(label);
            let local = legend
                .get(label)
                .cloned()
                .unwrap_or_else(|| label.to_ascii_lowercase());
            let kind = if gpu {
                NodeKind::Accelerator
            } else {
                NodeKind::Nic
            };
            let id = b
                .device(format!("{host_name}/{local}"), kind, host)
                .map_err(|e| e.at(origin, self.lines[i]))?;
            ids.push(id);
            if gpu {
                gpus.push(id);
            }
        }
        // Both directions of a pair next to each other, so that they write as one cable.
        for i in 0..ids.len() {
            for j in i + 1..ids.len() {
                for (from, to) in [(i, j), (j, i)] {
                    let (bandwidth, latency) = self.paths[from][to].rate();
                    b.link(ids[from], ids[to], bandwidth, latency)
                        .map_err(|e| e.at(origin, self.lines[from]))?;
                }
            }
        }
        b.place_all(gpus).map_err(|e| build_error(origin, e))?;
        Ok(b)
    }
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
        assert_eq!(Path::parse("NV12"), Some(Path::NvLink(12)));
        assert_eq!(Path::parse("NV0"), None);
        assert_eq!(Path::parse("NVX"), None);
        assert_eq!(Path::parse("SOC"), Some(Path::Sys));
        assert_eq!(Path::NvLink(12).rate().0, 300e9);
    }

    #[test]
    fn escapes_and_headers() {
        assert_eq!(strip_ansi("\u{1b}[4mGPU0\tGPU1\u{1b}[0m x"), "GPU0\tGPU1 x");
        assert_eq!(
            header_columns("\tGPU0\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID"),
            ["GPU0", "NIC0"]
        );
        assert!(is_gpu("GPU7") && !is_gpu("GPU") && !is_gpu("NIC0"));
    }
}
