//! `topoccl run`: start N local ranks of a program and supervise them.
//!
//! The launching itself (spawning, rank-prefixed output, stopping the job when a rank
//! fails, the timeout passes or the launcher is interrupted) is the `topoccl-launch`
//! library; this module parses the arguments, makes the job (a fresh id and secret),
//! hosts its rendezvous store (serving only clients that prove the secret) and gives every
//! rank the store's address, the id and the secret. With `--store URL` the ranks meet in
//! a store someone else runs instead (an etcd cluster, a `topoccl store`, a directory):
//! the launcher checks it answers before starting anyone, and removes the job's keys from
//! an etcd store when the ranks are gone. Other commands that start their own
//! ranks (a benchmark, say) reuse the pieces:
//!
//! ```ignore
//! let job = new_job()?;
//! let store = host_store(&job)?;                   // keep it alive while the ranks run
//! let env = job_env(Some(store.url()), &job);
//! let opts = LaunchOptions { timeout: Some(Duration::from_secs(600)), plain_stdout: Some(0), dump: Some(DUMP), restarts: None };
//! let outcome = launch(program, &args, ranks, &env, &opts)?;
//! if let Some(line) = outcome.summary() { eprintln!("{line}"); }
//! std::process::ExitCode::from(outcome.exit_code())
//! ```

use std::ffi::{OsStr, OsString};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use topoccl::store::{EtcdStore, StoreAddr, TcpStoreServer};
pub use topoccl_launch::LaunchOptions;
use topoccl_launch::{LaunchError, LaunchOutcome};

use crate::units::parse_duration;
use crate::CliError;

// The job-wide environment from `job_env`; `launch` adds each rank's own.
pub const ENV_STORE: &str = "TOPOCCL_STORE";
pub const ENV_JOB_ID: &str = "TOPOCCL_JOB_ID";
pub const ENV_SECRET: &str = "TOPOCCL_SECRET";

/// When a job fails or times out, its running ranks get SIGUSR1 and this long to write
/// their flight recorders (`topoccl doctor` reads them) before SIGTERM.
pub const DUMP: (i32, Duration) = (libc::SIGUSR1, Duration::from_secs(1));

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Number of ranks to start (1 to 4096).
    #[arg(short = 'n', long = "ranks", value_name = "N")]
    ranks: u32,
    /// Stop the job if it has not finished after this long (e.g. 90s, 10m, 1h); exit 124.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    #[command(flatten)]
    watch: crate::job_metrics::WatchArgs,
    /// Meet in this store instead of hosting one: etcd://HOST:PORT[,HOST:PORT...] (an
    /// etcd v3 cluster), tcp://HOST:PORT (`topoccl store`) or file:///DIR.
    #[arg(long, value_name = "URL", conflicts_with = "no_store")]
    store: Option<String>,
    /// Elastic job: a rank that fails leaves the others running (they shrink their
    /// communicator) instead of stopping the job; see --max-restarts.
    #[arg(long)]
    elastic: bool,
    /// With --elastic: restart failed ranks as replacements that join the running job
    /// (TOPOCCL_JOIN=1), at most N times in all (default 0).
    #[arg(long, value_name = "N", requires = "elastic")]
    max_restarts: Option<u32>,
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
    let job = new_job()?;
    let external = args.store.as_deref().map(ExternalStore::open).transpose()?;
    let store = if args.no_store || external.is_some() {
        None
    } else {
        Some(host_store(&job)?)
    };
    let url = match &external {
        Some(e) => Some(e.url.as_str()),
        None => store.as_ref().map(JobStore::url),
    };
    let mut env = job_env(url, &job);
    if args.elastic {
        // Ranks blocked on a hung peer learn of a revocation through the store.
        env.push(("TOPOCCL_ELASTIC".to_string(), "1".to_string()));
    }
    if args.watch.metrics.is_some() {
        let Some(store) = &store else {
            return Err(CliError::usage(
                "--metrics needs the store `topoccl run` hosts: leave out --no-store and                  --store"
                    .to_string(),
            ));
        };
        env.extend(args.watch.start(store.url(), &job, args.ranks)?);
    }
    let opts = LaunchOptions {
        timeout,
        plain_stdout: None,
        dump: Some(DUMP),
        restarts: args.elastic.then(|| args.max_restarts.unwrap_or(0)),
    };
    let outcome = launch(&args.program, &args.args, args.ranks, &env, &opts);
    drop(store);
    if let Some(e) = external {
        e.clean_up(&job);
    }
    let outcome = outcome?;
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

/// Hosts a rendezvous store for one job on `127.0.0.1` (local ranks only), serving only
/// clients that prove the job's secret.
pub fn host_store(job: &Job) -> Result<JobStore, CliError> {
    let key = topoccl::auth::JobKey::from_secret(job.secret.as_bytes());
    let server = TcpStoreServer::start_authenticated("127.0.0.1:0", key)
        .map_err(|e| CliError::failed(format!("cannot host the job's rendezvous store: {e}")))?;
    let url = format!("tcp://{}", server.local_addr());
    Ok(JobStore {
        _server: server,
        url,
    })
}

/// A store the user named (`--store`): checked before the ranks start; an etcd store is
/// kept open to remove the job's keys at the end.
struct ExternalStore {
    url: String,
    etcd: Option<EtcdStore>,
}

impl ExternalStore {
    /// Parses `url` and, for etcd, connects within `TOPOCCL_INIT_TIMEOUT` (an address that
    /// does not answer fails here, naming it, before any rank starts).
    fn open(url: &str) -> Result<ExternalStore, CliError> {
        let addr: StoreAddr = url
            .parse()
            .map_err(|e| CliError::usage(format!("--store: {e}")))?;
        let etcd = match &addr {
            StoreAddr::Etcd(members) => {
                let wait = topoccl::Config::from_env()
                    .map(|c| c.init_timeout)
                    .unwrap_or(topoccl::Config::default().init_timeout);
                let deadline = std::time::Instant::now() + wait;
                Some(
                    EtcdStore::connect(members, deadline)
                        .map_err(|e| CliError::failed(format!("--store {url}: {e}")))?,
                )
            }
            StoreAddr::Tcp(_) | StoreAddr::File(_) => None,
        };
        Ok(ExternalStore {
            url: addr.to_string(),
            etcd,
        })
    }

    /// Removes the job's keys (`topoccl/JOB/`) from an etcd store: safe once every rank
    /// has exited. Other stores keep theirs (a `topoccl store` ends with its job; a
    /// directory is the user's).
    fn clean_up(self, job: &Job) {
        if let Some(etcd) = self.etcd {
            let prefix = format!("topoccl/{}/", job.id);
            if let Err(e) = etcd.delete_prefix(&prefix) {
                eprintln!("topoccl run: could not remove the job's keys ({prefix}) from etcd: {e}");
            }
            // Its own lease holds no keys; end it rather than leave it to expire.
            let _ = etcd.revoke();
        }
    }
}

/// What identifies a job to its ranks, and them to each other.
pub struct Job {
    /// 16 hex digits from the OS's random source, so two jobs sharing a store or a file
    /// system cannot mistake each other's keys.
    pub id: String,
    /// `TOPOCCL_SECRET` when the user gave one (ranks started elsewhere may share it),
    /// else 32 random bytes in hex: it reaches the ranks in their environment only.
    pub secret: String,
}

/// A fresh job.
pub fn new_job() -> Result<Job, CliError> {
    let secret = match std::env::var(ENV_SECRET) {
        Ok(s) if !s.is_empty() => s,
        _ => hex(&random::<32>("the job's secret")?),
    };
    Ok(Job {
        id: hex(&random::<8>("a job id")?),
        secret,
    })
}

fn random<const N: usize>(what: &str) -> Result<[u8; N], CliError> {
    topoccl::auth::fresh(what).map_err(|e| CliError::failed(format!("cannot make {what}: {e}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The job-wide environment for [`launch`]: the store (if any), the job id and secret.
pub fn job_env(store_url: Option<&str>, job: &Job) -> Vec<(String, String)> {
    let mut env = Vec::with_capacity(3);
    if let Some(url) = store_url {
        env.push((ENV_STORE.to_string(), url.to_string()));
    }
    env.push((ENV_JOB_ID.to_string(), job.id.clone()));
    env.push((ENV_SECRET.to_string(), job.secret.clone()));
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
        let job = Job {
            id: "ab".into(),
            secret: "s".into(),
        };
        assert_eq!(
            job_env(Some("tcp://127.0.0.1:5"), &job),
            [
                (ENV_STORE.to_string(), "tcp://127.0.0.1:5".to_string()),
                (ENV_JOB_ID.to_string(), "ab".to_string()),
                (ENV_SECRET.to_string(), "s".to_string()),
            ]
        );
        assert_eq!(job_env(None, &job).len(), 2);
        let job = new_job().unwrap();
        assert!(job.id.len() == 16 && job.id.chars().all(|c| c.is_ascii_hexdigit()));
        if std::env::var(ENV_SECRET).is_err() {
            assert_eq!(job.secret.len(), 64);
            assert_ne!(job.secret, new_job().unwrap().secret);
        }
    }
}
