//! `topoccl console`: the web console over a topology file, a running job, or both. Thin:
//! reads the files, settles the address and token, and hands them to `topoccl-console`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use topoccl_console::server::{assets_built, run_blocking, Config};

use crate::CliError;

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// Topology file to draw (TOML or JSON, a [generate] description, or a saved link
    /// matrix); its errors are shown on the page and here, with the file's line.
    #[arg(long)]
    topo: Option<PathBuf>,
    /// The running job: the launcher's metrics address (`topoccl run|bench --metrics
    /// ADDR`), or its ranks' own exporters (TOPOCCL_METRICS) comma-separated in rank
    /// order; polled for the live link matrix, alerts and the ranks' flight recorders.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',', num_args = 1..)]
    job: Vec<SocketAddr>,
    /// Where to listen (port 0 picks a free one). Anything but loopback requires a token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Require this token on every request (generated and printed when --listen is not
    /// loopback and none is given).
    #[arg(long)]
    token: Option<String>,
    /// Allow what-if simulations (POST /api/sim): the simulator runs on this machine.
    #[arg(long)]
    allow_what_if: bool,
    /// A simulator trace (`topoccl sim --trace FILE`) to show as the timeline when no job
    /// is given.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// How often the job is polled, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    poll_ms: u64,
}

pub fn run(args: ConsoleArgs) -> Result<ExitCode, CliError> {
    if args.topo.is_none() && args.job.is_empty() {
        return Err(CliError::usage(
            "console: give --topo FILE, --job ADDR or both",
        ));
    }
    let token = match (&args.token, args.listen.ip().is_loopback()) {
        (Some(t), _) if t.len() < 8 || !t.bytes().all(|b| b.is_ascii_graphic() && b != b';') => {
            return Err(CliError::usage(
                "--token: at least 8 printable characters, no spaces or ';'",
            ))
        }
        (Some(t), _) => Some(t.clone()),
        (None, true) => None,
        (None, false) => {
            let bytes: [u8; 16] =
                topoccl::auth::fresh("the console's token").map_err(CliError::failed)?;
            Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
        }
    };
    let topology = args
        .topo
        .as_deref()
        .map(|p| match crate::topo_file::load(p) {
            Ok(t) => Ok(Arc::new(t)),
            Err(e) => {
                eprintln!("error: {e} (the console shows this too)");
                Err(e.to_string())
            }
        });
    let trace = match &args.trace {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                CliError::usage(format!("cannot read --trace {}: {e}", p.display()))
            })?;
            Some(
                topoccl_console::calls::from_trace(&text, &p.display().to_string())
                    .map_err(|e| CliError::usage(e.to_string()))?,
            )
        }
    };
    if !assets_built() {
        eprintln!(
            "note: this binary carries no console page; build it with scripts/build-console.sh, \
             then rebuild (the JSON API works without it)"
        );
    }
    let config = Config {
        topology,
        job: args.job,
        token: token.clone(),
        allow_what_if: args.allow_what_if,
        trace,
        poll_every: Duration::from_millis(args.poll_ms),
    };
    run_blocking(args.listen, config, |addr| {
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        let host = if addr.is_ipv6() {
            format!("[{host}]")
        } else {
            host
        };
        match &token {
            Some(t) => println!("console: http://{host}:{}/?token={t}", addr.port()),
            None => println!("console: http://{host}:{}/", addr.port()),
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    })
    .map_err(|e| CliError::failed(format!("console on {}: {e}", args.listen)))?;
    Ok(ExitCode::SUCCESS)
}
