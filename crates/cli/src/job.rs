//! Commands that run on every rank of a job (`selftest`, `bench`): inside a launcher they
//! run as one rank; started directly, they launch themselves on N local ranks.

use std::process::ExitCode;
use std::time::Duration;

use topoccl::LaunchInfo;

use crate::run_cmd::{host_store, job_env, launch, new_job, LaunchOptions};
use crate::CliError;

/// Whether this process is a rank of a job (a launcher set its environment).
pub fn in_job() -> bool {
    LaunchInfo::from_env().is_ok()
}

/// Starts `ranks` copies of this very command line as a local job and waits for them;
/// rank 0's stdout (the report) is copied without a rank prefix. With `watch`, the
/// job's metrics are served and its ranks watched (`--metrics`, [`crate::job_metrics`]).
pub fn relaunch(
    ranks: u32,
    timeout: Option<Duration>,
    watch: Option<&crate::job_metrics::WatchArgs>,
) -> Result<ExitCode, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot find this program's path: {e}")))?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let job = new_job()?;
    let store = host_store(&job)?;
    let mut env = job_env(Some(store.url()), &job);
    if let Some(w) = watch {
        env.extend(w.start(store.url(), &job, ranks)?);
    }
    let opts = LaunchOptions {
        timeout,
        plain_stdout: Some(0),
        dump: Some(crate::run_cmd::DUMP),
        restarts: None,
    };
    let outcome = launch(exe.as_os_str(), &args, ranks, &env, &opts)?;
    if let Some(line) = outcome.summary() {
        eprintln!("{line}");
    }
    Ok(ExitCode::from(outcome.exit_code()))
}

/// Creates this rank's communicator, with a clear error if the job cannot form.
pub fn communicator() -> Result<topoccl::Communicator, CliError> {
    topoccl::Communicator::from_env()
        .map_err(|e| CliError::failed(format!("cannot create the communicator: {e}")))
}
