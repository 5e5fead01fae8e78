//! `topoccl doctor DIR`: reads the ranks' flight-recorder dumps (written on an error, a
//! timeout, `SIGUSR1`, or fetched from `/flight`) and says who never arrived, who entered
//! a different call, who failed and who is slow, with the evidence. Dumps of several
//! communicators of one job (a world and its splits) are examined per communicator;
//! dumps of different jobs are refused.
//!
//! Exit status: 0 when every rank agrees, 1 when something was found, 2 when the dumps
//! cannot be read or do not belong together.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use topoccl_watch::flight::{doctor, Dump};

use crate::CliError;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// A directory of dumps (`*.json`), e.g. $TMPDIR/topoccl-flight/JOB
    /// (TOPOCCL_FLIGHT_DIR/JOB when set).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Print the findings as JSON (one report per communicator) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: DoctorArgs) -> Result<ExitCode, CliError> {
    let dumps = topoccl::flight::read_dir(&args.dir).map_err(CliError::usage)?;
    if dumps.is_empty() {
        return Err(CliError::usage(format!(
            "{} holds no dumps (*.json); ranks write them to TOPOCCL_FLIGHT_DIR/JOB \
             ($TMPDIR/topoccl-flight/JOB by default) on an error, a timeout or SIGUSR1",
            args.dir.display()
        )));
    }
    // One job only: the doctor's own check names the two files that disagree.
    if dumps.iter().any(|d| d.job_id != dumps[0].job_id) {
        return Err(CliError::usage(doctor(&dumps).err().map_or_else(
            || "dumps of different jobs".to_string(),
            |e| e.to_string(),
        )));
    }
    let mut groups: BTreeMap<String, Vec<Dump>> = BTreeMap::new();
    for d in dumps {
        groups.entry(d.process_group.clone()).or_default().push(d);
    }
    let mut reports = Vec::with_capacity(groups.len());
    for group in groups.values() {
        reports.push(doctor(group).map_err(|e| CliError::usage(e.to_string()))?);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("reports serialise")
        );
    } else {
        for (i, r) in reports.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{r}");
        }
    }
    Ok(if reports.iter().all(|r| r.all_agree()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
