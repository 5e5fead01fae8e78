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
}

pub fn run(args: StoreArgs) -> Result<ExitCode, CliError> {
    use topoccl::store::TcpStoreServer;
    let server = match std::env::var("TOPOCCL_SECRET") {
        Ok(s) if !s.is_empty() => TcpStoreServer::start_authenticated(
            &args.listen,
            topoccl::auth::JobKey::from_secret(s.as_bytes()),
        ),
        _ => {
            eprintln!(
                "topoccl store: no TOPOCCL_SECRET: serving any client that reaches {}; \
                 give the store and every rank the same TOPOCCL_SECRET to serve only them",
                args.listen
            );
            TcpStoreServer::start(&args.listen)
        }
    }
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
}
