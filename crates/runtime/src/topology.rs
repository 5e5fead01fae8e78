//! The job's topology from a file (`TOPOCCL_TOPO`: a topology or a saved link matrix),
//! checked against the job and, when asked, refined by the measured link matrix.

use topoccl_topo::matrix::{merge, LinkMatrix};
use topoccl_topo::Topology;

use crate::error::{Error, Result};

/// A measured bandwidth below this share of the modelled one lowers the model.
const MERGE_TOLERANCE: f64 = 0.3;

/// Reads the topology file at `path` for a job of `world` ranks and merges `matrix` in.
pub fn from_file(path: &str, world: u32, matrix: Option<&LinkMatrix>) -> Result<Topology> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("TOPOCCL_TOPO={path}: cannot read it: {e}")))?;
    let t = topoccl_topo::format::read(&text, path)
        .map_err(|e| Error::Config(format!("TOPOCCL_TOPO: {e}")))?;
    if t.world() != world {
        return Err(Error::Config(format!(
            "TOPOCCL_TOPO={path} places {} ranks but this job has {world}; place exactly the \
             job's ranks in the file",
            t.world()
        )));
    }
    let Some(m) = matrix else {
        return Ok(t);
    };
    let (merged, changes) = merge(&t, m, MERGE_TOLERANCE)
        .map_err(|e| Error::Config(format!("TOPOCCL_TOPO={path} with the measured links: {e}")))?;
    for c in &changes {
        tracing::warn!(
            "link {} measured at {:.2} GB/s, modelled at {:.2} GB/s: using the measurement",
            c.link,
            c.measured / 1e9,
            c.modelled / 1e9
        );
    }
    Ok(merged)
}
