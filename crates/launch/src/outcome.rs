//! How ranks and launches end, and the exit status and one-line summary a launcher
//! reports for them.

use std::fmt;
use std::time::Duration;

use crate::TIMEOUT_EXIT_CODE;

/// How one rank ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankStatus {
    Exited(i32),
    Signaled {
        signal: i32,
        core_dumped: bool,
    },
    /// The rank could not be waited for (only if something else reaped it).
    Lost,
}

impl RankStatus {
    pub fn success(self) -> bool {
        self == RankStatus::Exited(0)
    }

    /// What a shell would report: the exit code, or 128 + the signal.
    pub fn exit_code(self) -> u8 {
        match self {
            RankStatus::Exited(code) => u8::try_from(code).unwrap_or(1),
            RankStatus::Signaled { signal, .. } => signal_exit_code(signal),
            RankStatus::Lost => 1,
        }
    }
}

/// A shell's status for a process killed by `signal`: 128 + the signal.
pub fn signal_exit_code(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(255)
}

/// `SIGTERM`, or `signal 99` for a number without a name.
pub fn signal_name(signal: i32) -> String {
    signal_hook::low_level::signal_name(signal)
        .map(str::to_string)
        .unwrap_or_else(|| format!("signal {signal}"))
}

impl fmt::Display for RankStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RankStatus::Exited(code) => write!(f, "exited with status {code}"),
            RankStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by signal {signal}")?;
                if let Some(name) = signal_hook::low_level::signal_name(signal) {
                    write!(f, " ({name})")?;
                }
                if core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
            RankStatus::Lost => f.write_str("could not be waited for"),
        }
    }
}

/// Why a launch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every rank exited with status 0.
    Completed,
    /// This rank was the first to exit non-zero or die by a signal.
    RankFailed { rank: u32, status: RankStatus },
    /// The timeout passed with ranks still running.
    TimedOut { after: Duration },
    /// The launcher received this signal and forwarded it to the ranks.
    Interrupted { signal: i32 },
    /// This rank could not be started; the ranks started before it were killed.
    /// ([`crate::launch`] returns the reason as an error instead of this outcome.)
    NotStarted { rank: u32 },
}

/// The result of a launch; by the time it is returned every rank has been reaped, except
/// those in `unreaped`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchOutcome {
    pub ending: Ending,
    /// The ranks still running when the job was stopped, which the launcher terminated.
    pub stopped: Vec<u32>,
    /// Ranks that were suspended (stopped by a signal or held by a debugger) when the
    /// first failure came: the ones the others were most likely waiting for.
    pub suspended: Vec<u32>,
    /// Ranks still there [`crate::REAP_GRACE`] after SIGKILL (stuck in the kernel), which
    /// the launcher gave up waiting for. Empty unless something is badly wrong.
    pub unreaped: Vec<u32>,
}

impl LaunchOutcome {
    /// 0 if every rank succeeded; the failed rank's exit code (or 128 + its signal); 124 on
    /// timeout; 128 + the signal when the launcher was interrupted; 1 if a rank could not
    /// be started.
    pub fn exit_code(&self) -> u8 {
        match self.ending {
            Ending::Completed => 0,
            Ending::RankFailed { status, .. } => status.exit_code(),
            Ending::TimedOut { .. } => TIMEOUT_EXIT_CODE,
            Ending::Interrupted { signal } => signal_exit_code(signal),
            Ending::NotStarted { .. } => 1,
        }
    }

    /// One line saying why the job failed; `None` if it succeeded.
    pub fn summary(&self) -> Option<String> {
        let stopped = |s: &str| {
            if self.stopped.is_empty() {
                String::new()
            } else {
                format!("; {s} {}", describe_ranks(&self.stopped))
            }
        };
        let mut line = match &self.ending {
            // Nothing is ever unreaped then: SIGKILL only follows a stop.
            Ending::Completed => return None,
            Ending::RankFailed { rank, status } => {
                format!("rank {rank} failed first: {status}{}", stopped("stopped"))
            }
            Ending::TimedOut { after } => format!(
                "timed out after {} s; {} still running",
                after.as_secs_f64(),
                describe_ranks(&self.stopped)
            ),
            Ending::Interrupted { signal } => format!(
                "interrupted by {}{}",
                signal_name(*signal),
                stopped("stopped")
            ),
            Ending::NotStarted { rank } => {
                format!("rank {rank} could not be started{}", stopped("killed"))
            }
        };
        if !self.suspended.is_empty() {
            let who = describe_ranks(&self.suspended);
            let was = if self.suspended.len() == 1 {
                "was"
            } else {
                "were"
            };
            line = format!(
                "{who} {was} suspended (SIGSTOP or a debugger) and made no progress, so the \
                 others could not go on; {line}"
            );
        }
        if !self.unreaped.is_empty() {
            line.push_str(&format!(
                "; {} still there {} s after SIGKILL",
                describe_ranks(&self.unreaped),
                crate::REAP_GRACE.as_secs_f64()
            ));
        }
        Some(line)
    }
}

/// "rank 3", "ranks 0, 1, 3", "ranks 0-1023, 1025-4095": runs of three or more are
/// ranges so that a 4096-rank job still fits on a line.
pub fn describe_ranks(ranks: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        if j - i >= 2 {
            parts.push(format!("{}-{}", ranks[i], ranks[j]));
        } else {
            parts.extend(ranks[i..=j].iter().map(u32::to_string));
        }
        i = j + 1;
    }
    let noun = if ranks.len() == 1 { "rank" } else { "ranks" };
    format!("{noun} {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ending: Ending, stopped: &[u32]) -> LaunchOutcome {
        LaunchOutcome {
            ending,
            stopped: stopped.to_vec(),
            suspended: vec![],
            unreaped: vec![],
        }
    }

    #[test]
    fn rank_lists() {
        assert_eq!(describe_ranks(&[3]), "rank 3");
        assert_eq!(describe_ranks(&[0, 1, 3]), "ranks 0, 1, 3");
        assert_eq!(
            describe_ranks(&[0, 1, 2, 3, 5, 7, 8, 9]),
            "ranks 0-3, 5, 7-9"
        );
    }

    #[test]
    fn summaries_and_codes() {
        let failed = outcome(
            Ending::RankFailed {
                rank: 2,
                status: RankStatus::Signaled {
                    signal: 9,
                    core_dumped: false,
                },
            },
            &[0, 1, 3],
        );
        assert_eq!(
            failed.summary().unwrap(),
            "rank 2 failed first: killed by signal 9 (SIGKILL); stopped ranks 0, 1, 3"
        );
        assert_eq!(failed.exit_code(), 137);
        let timed_out = outcome(
            Ending::TimedOut {
                after: Duration::from_secs(90),
            },
            &[0, 3],
        );
        assert_eq!(
            timed_out.summary().unwrap(),
            "timed out after 90 s; ranks 0, 3 still running"
        );
        assert_eq!(timed_out.exit_code(), TIMEOUT_EXIT_CODE);
        let interrupted = outcome(Ending::Interrupted { signal: 2 }, &[0, 1]);
        assert_eq!(
            interrupted.summary().unwrap(),
            "interrupted by SIGINT; stopped ranks 0, 1"
        );
        assert_eq!(interrupted.exit_code(), 130);
        let not_started = outcome(Ending::NotStarted { rank: 2 }, &[0, 1]);
        assert_eq!(
            not_started.summary().unwrap(),
            "rank 2 could not be started; killed ranks 0, 1"
        );
        assert_eq!(not_started.exit_code(), 1);
        let mut blamed = failed.clone();
        blamed.suspended = vec![3];
        assert_eq!(
            blamed.summary().unwrap(),
            "rank 3 was suspended (SIGSTOP or a debugger) and made no progress, so the others \
             could not go on; rank 2 failed first: killed by signal 9 (SIGKILL); stopped ranks \
             0, 1, 3"
        );
        let done = outcome(Ending::Completed, &[]);
        assert_eq!((done.summary(), done.exit_code()), (None, 0));
    }

    #[test]
    fn unreaped_ranks_are_named() {
        let mut stuck = outcome(Ending::Interrupted { signal: 15 }, &[0, 1]);
        stuck.unreaped = vec![1];
        assert_eq!(
            stuck.summary().unwrap(),
            "interrupted by SIGTERM; stopped ranks 0, 1; rank 1 still there 5 s after SIGKILL"
        );
        assert_eq!(stuck.exit_code(), 143);
    }

    #[test]
    fn statuses() {
        assert_eq!(RankStatus::Exited(3).to_string(), "exited with status 3");
        assert_eq!(
            RankStatus::Signaled {
                signal: 6,
                core_dumped: true
            }
            .to_string(),
            "killed by signal 6 (SIGABRT), core dumped"
        );
        assert_eq!(RankStatus::Lost.to_string(), "could not be waited for");
        // Codes a shell would show; ones that do not fit a byte become 1.
        assert_eq!(RankStatus::Exited(3).exit_code(), 3);
        assert_eq!(RankStatus::Exited(-1).exit_code(), 1);
        assert_eq!(RankStatus::Exited(300).exit_code(), 1);
        assert_eq!(RankStatus::Lost.exit_code(), 1);
        assert_eq!(signal_exit_code(200), 255);
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(1000), "signal 1000");
        assert!(RankStatus::Exited(0).success() && !RankStatus::Exited(1).success());
    }
}
