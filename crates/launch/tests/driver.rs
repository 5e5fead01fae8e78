//! `launch` on real processes (`sh -c` scripts that print nothing, so the test output stays
//! clean). The command line's tests (`crates/cli/tests/run_cli.rs`) cover output, signals
//! and the environment end to end. These tests run concurrently, so they also show that
//! launches in one process do not wait for each other.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use topoccl_launch::{launch, Ending, LaunchError, LaunchOptions, RankStatus};

fn sh(
    ranks: u32,
    script: &str,
    opts: &LaunchOptions,
) -> Result<topoccl_launch::LaunchOutcome, LaunchError> {
    let args: Vec<OsString> = ["-c", script].map(OsString::from).to_vec();
    launch("sh".as_ref(), &args, ranks, &[], opts)
}

#[test]
fn every_rank_succeeding_completes() {
    let outcome = sh(3, "exit 0", &LaunchOptions::default()).unwrap();
    assert_eq!(outcome.ending, Ending::Completed);
    assert_eq!((outcome.exit_code(), outcome.summary()), (0, None));
}

#[test]
fn the_first_failure_stops_the_others() {
    let started = Instant::now();
    let script = r#"[ "$TOPOCCL_RANK" = 1 ] && exit 4; exec sleep 30"#;
    let outcome = sh(3, script, &LaunchOptions::default()).unwrap();
    assert_eq!(
        outcome.ending,
        Ending::RankFailed {
            rank: 1,
            status: RankStatus::Exited(4)
        }
    );
    assert_eq!(outcome.stopped, [0, 2]);
    assert!(outcome.unreaped.is_empty());
    assert_eq!(outcome.exit_code(), 4);
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[test]
fn ranks_ignoring_sigterm_are_killed_after_the_grace() {
    let started = Instant::now();
    let opts = LaunchOptions {
        timeout: Some(Duration::from_millis(200)),
        plain_stdout: None,
        dump: None,
        restarts: None,
    };
    // The shell ignores SIGTERM; only SIGKILL ends it.
    let outcome = sh(2, "trap '' TERM; while :; do sleep 0.05; done", &opts).unwrap();
    let took = started.elapsed();
    assert_eq!(
        outcome.ending,
        Ending::TimedOut {
            after: Duration::from_millis(200)
        }
    );
    assert_eq!(outcome.stopped, [0, 1]);
    assert!(outcome.unreaped.is_empty());
    assert_eq!(outcome.exit_code(), 124);
    let least = Duration::from_millis(200) + topoccl_launch::KILL_GRACE;
    assert!(
        took >= least && took < least + Duration::from_secs(3),
        "took {took:?}"
    );
}

#[test]
fn a_program_that_does_not_exist_is_a_usage_error() {
    let e = launch(
        "/nonexistent/topoccl-no-such-program".as_ref(),
        &[],
        2,
        &[],
        &LaunchOptions::default(),
    )
    .unwrap_err();
    assert!(e.is_usage());
    assert!(e.to_string().contains("no such program"), "{e}");
    let e = sh(0, "true", &LaunchOptions::default()).unwrap_err();
    assert!(matches!(e, LaunchError::BadRankCount(0)));
}
