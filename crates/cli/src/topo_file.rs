//! Reading topology files for the commands that take `--topo`.

use std::path::Path;

use topoccl_topo::Topology;

use crate::CliError;

/// Reads and checks a topology file (TOML or JSON, or a generator description).
pub fn load(path: &Path) -> Result<Topology, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read topology {}: {e}", path.display())))?;
    topoccl_topo::format::read(&text, &path.display().to_string())
        .map_err(|e| CliError::usage(e.to_string()))
}
