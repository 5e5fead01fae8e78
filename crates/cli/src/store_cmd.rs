//! `topoccl store`: a standalone rendezvous store, for jobs whose ranks should not host it
//! (so that it outlives any rank).

use std::process::ExitCode;

use clap::Args;

use crate::CliError;

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:29400")]
    listen: String,
}

pub fn run(args: StoreArgs) -> Result<ExitCode, CliError> {
    let server = topoccl::store::TcpStoreServer::start(&args.listen)
        .map_err(|e| CliError::failed(format!("cannot start the store: {e}")))?;
    // The address others use (TOPOCCL_STORE); tests read it from this line.
    println!("store listening on tcp://{}", server.local_addr());
    loop {
        std::thread::park();
    }
}
