//! `topoccl sim failures`: fail-stop interruptions of a long run, drawn from a failure
//! rate per device-hour; with a topology, each names the rank, device and host it stops.

use std::path::PathBuf;

use clap::Args;
use topoccl_sim::failures::{draw, FailureDraw};
use topoccl_topo::Topology;

use crate::CliError;

#[derive(Args, Debug)]
pub struct FailuresArgs {
    /// Devices in the fleet [default with --topo: its ranks].
    #[arg(long)]
    devices: Option<u64>,
    /// Fail-stop failures per device-hour (e.g. 1e-5).
    #[arg(long, allow_negative_numbers = true)]
    rate: f64,
    /// Length of the run in hours (720 = 30 days).
    #[arg(long, allow_negative_numbers = true)]
    hours: f64,
    /// Seed of the draw (printed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Topology file whose ranks are the devices; events name their devices and hosts.
    #[arg(long)]
    topo: Option<PathBuf>,
    /// Events listed.
    #[arg(long, default_value_t = 10)]
    show: usize,
    /// Also write the draw (every event) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: FailuresArgs) -> Result<(), CliError> {
    let t = args
        .topo
        .as_deref()
        .map(crate::topo_file::load)
        .transpose()?;
    let devices = match (&t, args.devices) {
        (Some(t), Some(d)) if d != t.world() as u64 => {
            return Err(CliError::usage(format!(
                "--devices {d} but the topology places {} ranks; give one or the other",
                t.world()
            )))
        }
        (Some(t), _) => t.world() as u64,
        (None, Some(d)) => d,
        (None, None) => {
            return Err(CliError::usage(
                "give the fleet: --devices N, or --topo FILE (its ranks)",
            ))
        }
    };
    let d = draw(devices, args.rate, args.hours, args.seed)
        .map_err(|e| CliError::usage(e.to_string()))?;
    print!("{}", table(&d, t.as_ref(), args.show));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&d).expect("a draw serializes") + "\n";
        std::fs::write(path, json)
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

fn table(d: &FailureDraw, t: Option<&Topology>, show: usize) -> String {
    let mut s = format!(
        "# seed: {}\n# {} devices, {} fail-stop failures per device-hour, a {} h run\n\
         expected interruptions {:.2} (one every {:.3} h)\n",
        d.seed, d.devices, d.rate_per_device_hour, d.hours, d.expected, d.expected_mtbi_hours
    );
    match d.drawn_mtbi_hours() {
        Some(m) => s.push_str(&format!(
            "drawn interruptions {} (one every {m:.3} h)\n",
            d.events.len()
        )),
        None => s.push_str("drawn interruptions 0\n"),
    }
    if d.events.is_empty() || show == 0 {
        return s;
    }
    s.push_str(&format!(
        "first {} (hours into the run, the device that stopped the job):\n",
        show.min(d.events.len())
    ));
    for e in d.events.iter().take(show) {
        let at = format!("  {:>10.3} h  ", e.hours);
        s.push_str(&match t {
            Some(t) => {
                let r = e.device as u32;
                format!(
                    "{at}rank {r} on {} (host {})\n",
                    t.node(t.rank_node(r)).name,
                    t.node(t.rank_host(r)).name
                )
            }
            None => format!("{at}device {}\n", e.device),
        });
    }
    s
}
