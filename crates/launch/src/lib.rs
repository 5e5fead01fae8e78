//! Starting N local ranks of a program and supervising them: the library behind
//! `topoccl run` and the commands that relaunch themselves on N ranks.
//!
//! Three layers, each testable on its own:
//!
//! - [`supervisor`]: what a launcher decides, as a state machine without I/O or clock. It is
//!   told that ranks were spawned, printed a line, closed a stream, exited, that a signal
//!   arrived, and what time it is; it answers with [`Action`]s — print this line, send this
//!   signal to these ranks, finish with this [`LaunchOutcome`]. Who is blamed for a failed
//!   job, when the grace before SIGKILL ends and what the exit status is are decided there
//!   and nowhere else.
//! - [`lines`]: a rank's output cut into lines of bounded length.
//! - [`driver`]: [`launch`], the thin shell that spawns the processes, reads their pipes on
//!   threads, receives SIGINT/SIGTERM through `signal-hook`'s pipe, feeds all of it to the
//!   supervisor and carries out its actions.
//!
//! ```ignore
//! let env = vec![("TOPOCCL_STORE".to_string(), url)];
//! let opts = LaunchOptions { timeout: Some(Duration::from_secs(600)), plain_stdout: Some(0), dump: None, restarts: None };
//! let outcome = topoccl_launch::launch(program, &args, ranks, &env, &opts)?;
//! if let Some(line) = outcome.summary() { eprintln!("{line}"); }
//! std::process::ExitCode::from(outcome.exit_code())
//! ```
//!
//! The crate knows nothing of rendezvous stores or collectives: the caller hosts the store
//! and passes its address in the environment.

pub mod driver;
pub mod lines;
pub mod outcome;
mod signals;
pub mod supervisor;

use std::time::Duration;

pub use driver::{launch, LaunchOptions, ENV_JOIN};
pub use outcome::{Ending, LaunchOutcome, RankStatus};
pub use supervisor::{Action, Config, Stream, Supervisor};

/// Most ranks one launch starts: beyond this a local launch is a mistake, not a job.
pub const MAX_RANKS: u32 = 4096;
/// Longest line printed in one piece; longer ones are split, so a rank writing binary
/// without newlines costs bounded memory.
pub const MAX_LINE: usize = 64 * 1024;
/// How long ranks get between SIGTERM (or a forwarded signal) and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// After the last rank is gone, how long to wait for its output to drain. Bounded because
/// a stray grandchild (`cmd &`) can hold a rank's pipe open long after the rank exits.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// After SIGKILL, how long to wait for the ranks to be gone before giving up on them (a
/// process stuck in the kernel cannot be killed; the launch still ends).
pub const REAP_GRACE: Duration = Duration::from_secs(5);
/// Exit status of a launch stopped by its timeout, as with coreutils' `timeout`.
pub const TIMEOUT_EXIT_CODE: u8 = 124;

// The environment every rank gets from `launch`, besides what the caller passes.
pub const ENV_RANK: &str = "TOPOCCL_RANK";
pub const ENV_WORLD_SIZE: &str = "TOPOCCL_WORLD_SIZE";
pub const ENV_LOCAL_RANK: &str = "TOPOCCL_LOCAL_RANK";
pub const ENV_LOCAL_WORLD_SIZE: &str = "TOPOCCL_LOCAL_WORLD_SIZE";

/// Why a launch could not run.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("the number of ranks must be between 1 and {MAX_RANKS}, not {0}")]
    BadRankCount(u32),
    /// The program could not be started for this rank; ranks started before it were
    /// killed and reaped.
    #[error("{}", spawn_message(*rank, program, source))]
    Spawn {
        rank: u32,
        program: String,
        source: std::io::Error,
    },
    #[error("cannot start an output reader for rank {rank}: {source}")]
    Reader { rank: u32, source: std::io::Error },
    /// SIGINT and SIGTERM could not be watched (nothing was started).
    #[error("cannot watch SIGINT and SIGTERM: {0}")]
    Signals(String),
}

impl LaunchError {
    /// Whether the caller asked for something impossible (a bad rank count, a program that
    /// does not exist or is not executable) rather than the system failing.
    pub fn is_usage(&self) -> bool {
        match self {
            LaunchError::BadRankCount(_) => true,
            LaunchError::Spawn { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            LaunchError::Reader { .. } | LaunchError::Signals { .. } => false,
        }
    }
}

fn spawn_message(rank: u32, program: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => format!("cannot start '{program}': no such program"),
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot start '{program}': permission denied (is it an executable file?)")
        }
        _ => format!("cannot start rank {rank} ('{program}'): {e}"),
    }
}

/// Refuses rank counts outside 1..=[`MAX_RANKS`].
pub fn check_ranks(ranks: u32) -> Result<(), LaunchError> {
    if ranks == 0 || ranks > MAX_RANKS {
        return Err(LaunchError::BadRankCount(ranks));
    }
    Ok(())
}

/// `[R] ` with R right-aligned to the width of the largest rank, so columns line up.
pub fn rank_prefix(rank: u32, ranks: u32) -> String {
    let width = ranks.saturating_sub(1).to_string().len();
    format!("[{rank:>width$}] ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_align() {
        assert_eq!(rank_prefix(0, 1), "[0] ");
        assert_eq!(rank_prefix(3, 10), "[3] ");
        assert_eq!(rank_prefix(3, 11), "[ 3] ");
        assert_eq!(rank_prefix(10, 11), "[10] ");
        assert_eq!(rank_prefix(7, 4096), "[   7] ");
    }

    #[test]
    fn rank_counts() {
        assert!(check_ranks(1).is_ok() && check_ranks(MAX_RANKS).is_ok());
        for bad in [0, MAX_RANKS + 1] {
            let e = check_ranks(bad).unwrap_err();
            assert!(e.is_usage());
            assert_eq!(
                e.to_string(),
                format!("the number of ranks must be between 1 and 4096, not {bad}")
            );
        }
    }

    #[test]
    fn spawn_errors_say_what_went_wrong() {
        let spawn = |kind| LaunchError::Spawn {
            rank: 2,
            program: "prog".into(),
            source: std::io::Error::from(kind),
        };
        let missing = spawn(std::io::ErrorKind::NotFound);
        assert!(missing.is_usage());
        assert_eq!(missing.to_string(), "cannot start 'prog': no such program");
        let denied = spawn(std::io::ErrorKind::PermissionDenied);
        assert!(denied.is_usage());
        assert!(denied.to_string().contains("permission denied"));
        let other = spawn(std::io::ErrorKind::OutOfMemory);
        assert!(!other.is_usage());
        assert!(other
            .to_string()
            .starts_with("cannot start rank 2 ('prog'): "));
    }
}
