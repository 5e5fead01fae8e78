//! `topoccl run`: start N local ranks of a program and supervise them.
//!
//! The launching itself (spawning, rank-prefixed output, stopping the job when a rank
//! fails, the timeout passes or the launcher is interrupted) is the `topoccl-launch`
//! library; this module parses the arguments, hosts the job's rendezvous store and gives
//! every rank the store's address and a fresh job id. Other commands that start their own
//! ranks (a benchmark, say) reuse the pieces:
//!
//! ```ignore
//! let store = host_store()?;                       // keep it alive while the ranks run
//! let env = job_env(Some(store.url()), &new_job_id()?);
//! let opts = LaunchOptions { timeout: Some(Duration::from_secs(600)), plain_stdout: Some(0) };
//! let outcome = launch(program, &args, ranks, &env, &opts)?;
//! if let Some(line) = outcome.summary() { eprintln!("{line}"); }
//! std::process::ExitCode::from(outcome.exit_code())
//! ```

use std::ffi::{OsStr, OsString};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use topoccl::store::TcpStoreServer;
pub use topoccl_launch::LaunchOptions;
use topoccl_launch::{LaunchError, LaunchOutcome};

use crate::units::parse_duration;
use crate::CliError;

// The job-wide environment from `job_env`; `launch` adds each rank's own.
pub const ENV_STORE: &str = "TOPOCCL_STORE";
pub const ENV_JOB_ID: &str = "TOPOCCL_JOB_ID";

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Number of ranks to start (1 to 4096).
    #[arg(short = 'n', long = "ranks", value_name = "N")]
    ranks: u32,
    /// Stop the job if it has not finished after this long (e.g. 90s, 10m, 1h); exit 124.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Do not host a rendezvous store (TOPOCCL_STORE is then not set).
    #[arg(long, hide = true)]
    no_store: bool,
    /// The program every rank runs.
    #[arg(value_name = "PROGRAM")]
    program: OsString,
    /// Arguments for the program (put `--` before PROGRAM if they look like options).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

/// `topoccl run`: hosts the store, launches, prints why the job failed (if it did) and
/// returns the launch's exit status.
pub fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    topoccl_launch::check_ranks(args.ranks).map_err(cli_error)?;
    let timeout = args
        .timeout
        .as_deref()
        .map(parse_timeout)
        .transpose()
        .map_err(|e| CliError::usage(format!("--timeout: {e}")))?;
    let store = if args.no_store {
        None
    } else {
        Some(host_store()?)
    };
    let env = job_env(store.as_ref().map(JobStore::url), &new_job_id()?);
    let opts = LaunchOptions {
        timeout,
        plain_stdout: None,
    };
    let outcome = launch(&args.program, &args.args, args.ranks, &env, &opts)?;
    drop(store);
    if let Some(line) = outcome.summary() {
        eprintln!("topoccl run: {line}");
    }
    Ok(ExitCode::from(outcome.exit_code()))
}

/// A duration for `--timeout`: positive, in the units of [`parse_duration`].
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs = parse_duration(s)?;
    if secs <= 0.0 {
        return Err(format!("'{s}' must be longer than zero"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is too long"))
}

/// The job's rendezvous store, served from this process on a free loopback port until
/// dropped. Keep it alive until the ranks are gone.
pub struct JobStore {
    _server: TcpStoreServer,
    url: String,
}

impl JobStore {
    /// `tcp://127.0.0.1:PORT`, the value of `TOPOCCL_STORE`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Hosts a rendezvous store for one job on `127.0.0.1` (local ranks only).
pub fn host_store() -> Result<JobStore, CliError> {
    let server = TcpStoreServer::start("127.0.0.1:0")
        .map_err(|e| CliError::failed(format!("cannot host the job's rendezvous store: {e}")))?;
    let url = format!("tcp://{}", server.local_addr());
    Ok(JobStore {
        _server: server,
        url,
    })
}

/// A fresh job id: 16 hex digits from the OS's random source, so two jobs sharing a store
/// or a file system cannot mistake each other's keys.
pub fn new_job_id() -> Result<String, CliError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| CliError::failed(format!("cannot make a job id: {e}")))?;
    Ok(format!("{:016x}", u64::from_be_bytes(bytes)))
}

/// The job-wide environment for [`launch`]: the store (if any) and the job id.
pub fn job_env(store_url: Option<&str>, job_id: &str) -> Vec<(String, String)> {
    let mut env = Vec::with_capacity(2);
    if let Some(url) = store_url {
        env.push((ENV_STORE.to_string(), url.to_string()));
    }
    env.push((ENV_JOB_ID.to_string(), job_id.to_string()));
    env
}

/// [`topoccl_launch::launch`], its errors as the CLI reports them (usage errors exit 2).
pub fn launch(
    program: &OsStr,
    args: &[OsString],
    ranks: u32,
    extra_env: &[(String, String)],
    opts: &LaunchOptions,
) -> Result<LaunchOutcome, CliError> {
    topoccl_launch::launch(program, args, ranks, extra_env, opts).map_err(cli_error)
}

fn cli_error(e: LaunchError) -> CliError {
    if e.is_usage() {
        CliError::usage(e.to_string())
    } else {
        CliError::failed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timeout("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_timeout("2min").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_timeout("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_timeout("5").unwrap(), Duration::from_secs(5));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("1e300h").is_err());
    }

    #[test]
    fn job_environment() {
        assert_eq!(
            job_env(Some("tcp://127.0.0.1:5"), "ab"),
            [
                (ENV_STORE.to_string(), "tcp://127.0.0.1:5".to_string()),
                (ENV_JOB_ID.to_string(), "ab".to_string())
            ]
        );
        assert_eq!(job_env(None, "ab").len(), 1);
        let id = new_job_id().unwrap();
        assert!(id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
