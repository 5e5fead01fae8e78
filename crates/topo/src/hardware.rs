//! The hardware generations of a topology file's hosts: the `[hardware]` table (GPU, NIC
//! transport, CPU vendor, NVLink SHARP). The graph holds link rates only; models that need
//! protocol facts of a generation (the simulator's NCCL model) read them from here.
//!
//! This module only carries the names; what a generation means (efficiencies, latencies)
//! is stated once, in `topoccl_sim::hw`, which also checks the names.

use serde::{Deserialize, Serialize};
use toml::de::DeTable;

use crate::error::TopoError;

/// The `[hardware]` table of a topology file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    /// The GPU generation of every host (`a100`, `h100`, `h200`, `h800`, `h20`).
    pub gpu: Option<String>,
    /// The NICs' transport (`ib`, `roce`).
    pub nic: Option<String>,
    /// The CPU vendor (`intel`, `amd`): it sets the network post overhead; default `intel`.
    pub cpu: Option<String>,
    /// Whether the hosts' NVSwitches reduce (NVLink SHARP, NVLS): the switch's reduction
    /// rate comes from the GPU generation's NVSwitch. Default `false`.
    #[serde(default)]
    pub nvls: bool,
}

/// The `[hardware]` table of topology file `text` (TOML), if it has one; `origin` names
/// the file in errors. A file in another format (JSON, XML) has none: `Ok(None)`.
pub fn read_hardware(text: &str, origin: &str) -> Result<Option<Hardware>, TopoError> {
    /// The file with everything but `[hardware]` ignored.
    #[derive(Deserialize)]
    struct Only {
        hardware: Option<Hardware>,
    }
    if DeTable::parse(text).is_err() {
        return Ok(None);
    }
    toml::from_str::<Only>(text)
        .map(|o| o.hardware)
        .map_err(|e| {
            let at = e.span().map_or(0, |s| s.start.min(text.len()));
            let line = 1 + text[..at].bytes().filter(|b| *b == b'\n').count();
            TopoError::invalid(format!(
                "[hardware]: {}; the keys are gpu, nic, cpu and nvls",
                e.message()
            ))
            .at(origin, line)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_table_and_refuses_unknown_keys() {
        let text = "name = \"x\"\n\n[hardware]\ngpu = \"h100\"\nnvls = true\n";
        let hw = read_hardware(text, "x.toml").unwrap().unwrap();
        assert_eq!(hw.gpu.as_deref(), Some("h100"));
        assert!(hw.nvls);
        assert_eq!(hw.nic, None);
        assert_eq!(read_hardware("name = \"x\"\n", "x.toml").unwrap(), None);
        let err = read_hardware("[hardware]\ngpus = \"h100\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.toml:2:"), "{err}");
        assert!(
            err.contains("gpus") && err.contains("gpu, nic, cpu and nvls"),
            "{err}"
        );
    }

    #[test]
    fn a_topology_with_the_table_still_reads() {
        let text = "name = \"x\"\nranks = [\"h0/gpu0\"]\n[hardware]\ngpu = \"a100\"\n\
                    [[node]]\nname = \"h0\"\nkind = \"host\"\n[[node]]\nname = \"h0/gpu0\"\n\
                    kind = \"gpu\"\nhost = \"h0\"\n";
        let t = crate::format::read_toml(text, "x.toml").unwrap();
        assert_eq!(t.world(), 1);
    }
}
