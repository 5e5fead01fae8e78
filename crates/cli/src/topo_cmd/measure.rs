//! `topoccl topo measure`: the live link matrix of a job — latency and bandwidth between
//! every pair of ranks, measured in parallel rounds of disjoint pairs — printed and saved
//! as JSON (which `TOPOCCL_TOPO` accepts as a topology).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use topoccl::{Communicator, Config, LaunchInfo};

use crate::job;
use crate::run_cmd::parse_timeout;
use crate::CliError;

#[derive(Args, Debug)]
pub struct MeasureArgs {
    /// Ranks to launch (ignored under a launcher).
    #[arg(short = 'n', long, default_value_t = 4)]
    ranks: u32,
    /// Write the matrix as JSON here (rank 0).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Stop the whole job after this long.
    #[arg(long, default_value = "5m")]
    timeout: String,
}

pub fn run(args: MeasureArgs) -> Result<ExitCode, CliError> {
    super::check_output_dir(args.output.as_deref())?;
    if !job::in_job() {
        let limit = parse_timeout(&args.timeout).map_err(CliError::usage)?;
        return job::relaunch(args.ranks, Some(limit), None);
    }
    let info = LaunchInfo::from_env().map_err(|e| CliError::failed(e.to_string()))?;
    let mut cfg = Config::from_env().map_err(|e| CliError::usage(e.to_string()))?;
    cfg.matrix = Some(true);
    let comm = Communicator::init(info, cfg)
        .map_err(|e| CliError::failed(format!("cannot create the communicator: {e}")))?;
    if comm.rank() != 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let Some(m) = comm.link_matrix() else {
        println!("one rank: nothing to measure");
        return Ok(ExitCode::SUCCESS);
    };
    print!("{}", table(m));
    if let Some(path) = &args.output {
        let json = serde_json::to_string_pretty(m).expect("a matrix serializes") + "\n";
        std::fs::write(path, json)
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn table(m: &topoccl_topo::matrix::LinkMatrix) -> String {
    let p = m.hosts.len();
    let mut s = String::from("# one-way latency (us), row = sender\n");
    let grid = |s: &mut String, f: &dyn Fn(usize, usize) -> String| {
        s.push_str(&format!("{:>6}", ""));
        for j in 0..p {
            s.push_str(&format!("{:>9}", format!("r{j}")));
        }
        s.push('\n');
        for i in 0..p {
            s.push_str(&format!("{:>6}", format!("r{i}")));
            for j in 0..p {
                s.push_str(&format!("{:>9}", if i == j { "-".into() } else { f(i, j) }));
            }
            s.push('\n');
        }
    };
    grid(&mut s, &|i, j| format!("{:.1}", m.latency[i][j] * 1e6));
    s.push_str("# bandwidth (GB/s), row = sender\n");
    grid(&mut s, &|i, j| format!("{:.2}", m.bandwidth[i][j] / 1e9));
    s.push_str("# hosts: ");
    s.push_str(&m.hosts.join(", "));
    s.push('\n');
    s
}
