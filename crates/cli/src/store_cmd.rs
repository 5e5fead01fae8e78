//! `topoccl store`: a standalone rendezvous store, for jobs whose ranks should not host it
//! (so that it outlives any rank).

use std::process::ExitCode;

use clap::Args;

use crate::CliError;

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Address to listen on: loopback by default, so only this machine can reach it; give
    /// the address of the interface other hosts reach (or 0.0.0.0:29400) to serve them.
    #[arg(long, default_value = "127.0.0.1:29400")]
    listen: String,
    /// Keys one job may hold in this store (jobs are told apart by their job id); the
    /// default fits the rendezvous of a 131,072-rank job with several communicators.
    #[arg(long, value_name = "KEYS", default_value_t = topoccl::store::JOB_MAX_KEYS)]
    job_max_keys: usize,
    /// Bytes of keys and values one job may hold in this store (default 512 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = topoccl::store::JOB_MAX_BYTES)]
    job_max_bytes: usize,
    /// Seconds a client may keep a connection open without a request before the store
    /// closes it; a rank waiting for keys is not idle, and clients reconnect on their next
    /// call.
    #[arg(long, value_name = "SECONDS", default_value_t = topoccl::store::IDLE_TIMEOUT.as_secs())]
    idle_timeout: u64,
}

impl StoreArgs {
    fn options(&self) -> topoccl::store::ServerOptions {
        topoccl::store::ServerOptions {
            job_max_keys: self.job_max_keys,
            job_max_bytes: self.job_max_bytes,
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout),
        }
    }
}

pub fn run(args: StoreArgs) -> Result<ExitCode, CliError> {
    use topoccl::store::TcpStoreServer;
    let key = match std::env::var("TOPOCCL_SECRET") {
        Ok(s) if !s.is_empty() => Some(topoccl::auth::JobKey::from_secret(s.as_bytes())),
        _ => {
            eprintln!(
                "topoccl store: no TOPOCCL_SECRET: serving any client that reaches {}; \
                 give the store and every rank the same TOPOCCL_SECRET to serve only them",
                args.listen
            );
            None
        }
    };
    let server = TcpStoreServer::start_with_options(&args.listen, key, args.options())
        .map_err(|e| CliError::failed(format!("cannot start the store: {e}")))?;
    // The address others use (TOPOCCL_STORE); tests read it from this line.
    println!("store listening on tcp://{}", server.local_addr());
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[test]
    fn listens_on_loopback_unless_told_otherwise() {
        let default = Cmd::try_parse_from(["store"]).unwrap();
        assert_eq!(default.store.listen, "127.0.0.1:29400");
        let wide = Cmd::try_parse_from(["store", "--listen", "0.0.0.0:29400"]).unwrap();
        assert_eq!(wide.store.listen, "0.0.0.0:29400");
    }

    #[test]
    fn quotas_and_idle_timeout_default_and_can_be_set() {
        let default = Cmd::try_parse_from(["store"]).unwrap();
        assert_eq!(
            default.store.options(),
            topoccl::store::ServerOptions::default()
        );
        let set = Cmd::try_parse_from([
            "store",
            "--job-max-keys",
            "10",
            "--job-max-bytes",
            "2000",
            "--idle-timeout",
            "5",
        ])
        .unwrap();
        let o = set.store.options();
        assert_eq!(
            (o.job_max_keys, o.job_max_bytes, o.idle_timeout.as_secs()),
            (10, 2000, 5)
        );
        assert!(Cmd::try_parse_from(["store", "--job-max-keys", "-1"]).is_err());
        let e =
            run(
                Cmd::try_parse_from(["store", "--idle-timeout", "0", "--listen", "127.0.0.1:0"])
                    .unwrap()
                    .store,
            )
            .unwrap_err();
        assert!(format!("{e}").contains("--idle-timeout"), "{e}");
    }
}
