//! The `topoccl run` launcher: the ranks' environment, prefixed output, failure
//! propagation, timeouts, signals, and clear errors on bad input. The ranks are `sh -c`
//! scripts.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use topoccl::store::{Store, TcpStore};

/// `topoccl run ARGS...` with torchrun's variables cleared, so that seeing them unset in
/// a rank proves the launcher does not set them.
fn topoccl(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_topoccl"));
    cmd.arg("run").args(args);
    for var in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `topoccl run -n RANKS [OPTIONS] sh -c SCRIPT`, returning the output and how long
/// it took.
fn run_sh(ranks: u32, options: &[&str], script: &str) -> (Output, Duration) {
    let n = ranks.to_string();
    let mut args = vec!["-n", &n];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let start = Instant::now();
    let out = topoccl(&args).output().expect("run topoccl");
    (out, start.elapsed())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Splits `[ R] rest` into (R, rest).
fn split_prefix(line: &str) -> (u32, &str) {
    let close = line
        .find("] ")
        .unwrap_or_else(|| panic!("no rank prefix: {line:?}"));
    assert!(line.starts_with('['), "no rank prefix: {line:?}");
    let rank = line[1..close].trim_start().parse().expect("a rank number");
    (rank, &line[close + 2..])
}

/// A fresh empty directory for one test's scratch files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("topoccl-run-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// True once `pid` is gone: no such process, or a zombie waiting for init to reap it.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => !Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .expect("run kill")
            .success(),
    }
}

fn assert_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(3);
    for &pid in pids {
        while !gone(pid) {
            assert!(Instant::now() < deadline, "process {pid} is still running");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The pids a job's ranks printed as `pid N` lines.
/// `topoccl run -n 2 sh -c SCRIPT` started, the two pids its ranks print first, and its
/// stdout (held open: the launcher must not see its output pipe close).
type Started = (
    std::process::Child,
    Vec<u32>,
    BufReader<std::process::ChildStdout>,
);

fn start_two_ranks(script: &str) -> Started {
    let mut launcher = topoccl(&["-n", "2", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start topoccl");
    let mut stdout = BufReader::new(launcher.stdout.take().expect("piped"));
    let mut pids = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read a rank's pid");
        pids.extend(printed_pids(&line));
    }
    assert_eq!(pids.len(), 2);
    (launcher, pids, stdout)
}

fn printed_pids(stdout: &str) -> Vec<u32> {
    stdout
        .lines()
        .filter_map(|l| split_prefix(l).1.strip_prefix("pid "))
        .map(|p| p.trim().parse().expect("a pid"))
        .collect()
}

#[test]
fn every_rank_gets_the_job_environment() {
    let script = r#"echo "$TOPOCCL_RANK $TOPOCCL_WORLD_SIZE $TOPOCCL_LOCAL_RANK \
$TOPOCCL_LOCAL_WORLD_SIZE ${TOPOCCL_STORE-none} $TOPOCCL_JOB_ID \
${RANK-unset} ${WORLD_SIZE-unset} ${MASTER_ADDR-unset}""#;
    let mut job_ids = BTreeSet::new();
    for _ in 0..2 {
        let (out, _) = run_sh(4, &[], script);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let mut seen = BTreeMap::new();
        for line in stdout.lines() {
            let (rank, rest) = split_prefix(line);
            let f: Vec<&str> = rest.split(' ').collect();
            assert_eq!(f.len(), 9, "{line}");
            assert_eq!(f[0], rank.to_string(), "TOPOCCL_RANK in {line}");
            assert_eq!(f[1], "4", "TOPOCCL_WORLD_SIZE in {line}");
            assert_eq!(f[2], rank.to_string(), "TOPOCCL_LOCAL_RANK in {line}");
            assert_eq!(f[3], "4", "TOPOCCL_LOCAL_WORLD_SIZE in {line}");
            let port = f[4]
                .strip_prefix("tcp://127.0.0.1:")
                .unwrap_or_else(|| panic!("TOPOCCL_STORE in {line}"));
            assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "{line}");
            assert!(
                f[5].len() == 16 && f[5].chars().all(|c| c.is_ascii_hexdigit()),
                "TOPOCCL_JOB_ID in {line}"
            );
            assert_eq!(&f[6..], ["unset"; 3], "torchrun variables in {line}");
            assert!(
                seen.insert(rank, (f[4], f[5])).is_none(),
                "rank {rank} twice"
            );
        }
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
        let shared: BTreeSet<_> = seen.values().collect();
        assert_eq!(
            shared.len(),
            1,
            "store and job id differ between ranks: {seen:?}"
        );
        job_ids.insert(seen[&0].1.to_string());
    }
    assert_eq!(job_ids.len(), 2, "two launches share a job id");
}

#[test]
fn the_launcher_serves_the_store_while_the_ranks_run() {
    let dir = scratch("store");
    let release = dir.join("release");
    // Rank 0 announces the store and the job's secret, and waits (bounded) for the test
    // to be done with it.
    let script = format!(
        r#"echo "store $TOPOCCL_STORE $TOPOCCL_SECRET"
i=0
while [ ! -e "{}" ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done"#,
        release.display()
    );
    let mut launcher = topoccl(&["-n", "1", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start topoccl");
    let mut line = String::new();
    BufReader::new(launcher.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("read the store address");
    let url = split_prefix(line.trim_end())
        .1
        .strip_prefix("store ")
        .map(str::to_string);
    let used = url.as_deref().map(|both| {
        let (url, secret) = both.split_once(' ').expect("the store and the secret");
        let addr = url.strip_prefix("tcp://").expect("a tcp:// store");
        let soon = || Instant::now() + Duration::from_secs(5);
        // The launcher's store serves only clients that prove the job's secret.
        assert!(TcpStore::connect(addr, soon()).is_err());
        let key = topoccl::auth::JobKey::from_secret(secret.as_bytes());
        let store = TcpStore::connect_with(addr, Some(key), soon())?;
        store.set("greeting", b"hello")?;
        let value = store.get("greeting", Instant::now() + Duration::from_secs(5))?;
        Ok::<_, topoccl::store::StoreError>((value, store.add("arrivals", 1)?))
    });
    std::fs::write(&release, b"").expect("release rank 0");
    let status = launcher.wait().expect("wait for topoccl");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success());
    let used = used.unwrap_or_else(|| panic!("no store address in {line:?}"));
    assert_eq!(used.expect("use the store"), (b"hello".to_vec(), 1));
}

#[test]
fn no_store_leaves_the_store_unset() {
    let out = topoccl(&[
        "--no-store",
        "-n",
        "1",
        "sh",
        "-c",
        "echo ${TOPOCCL_STORE-none}",
    ])
    .output()
    .expect("run topoccl");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "[0] none\n");
}

#[test]
fn program_arguments_may_look_like_options() {
    let out = topoccl(&[
        "-n",
        "1",
        "--",
        "sh",
        "-c",
        "echo \"$@\"",
        "sh",
        "--foo",
        "-n",
    ])
    .output()
    .expect("run topoccl");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "[0] --foo -n\n");
}

#[test]
fn output_is_prefixed_and_whole_lines() {
    // 11 ranks, so prefixes are padded to two digits; long lines written in several
    // pieces by the shell would be torn apart if the launcher copied bytes, not lines.
    let script = r#"long=$(printf '%0900d' 0 | tr 0 x)
i=0
while [ $i -lt 100 ]; do echo "$TOPOCCL_RANK:$i:$long:$TOPOCCL_RANK"; i=$((i+1)); done
echo "err $TOPOCCL_RANK" >&2
printf 'end %s' "$TOPOCCL_RANK""#;
    let (out, _) = run_sh(11, &[], script);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut counts = BTreeMap::new();
    for line in stdout.lines() {
        let (rank, rest) = split_prefix(line);
        assert_eq!(&line[..5], format!("[{rank:>2}] "), "padding of {line:?}");
        if let Some(r) = rest.strip_prefix("end ") {
            assert_eq!(r, rank.to_string(), "{line:?}");
            *counts.entry(rank).or_insert(0) += 1000;
            continue;
        }
        let f: Vec<&str> = rest.split(':').collect();
        assert_eq!(f.len(), 4, "torn line {line:?}");
        assert_eq!(f[0], rank.to_string(), "{line:?}");
        assert!(f[1].parse::<u32>().is_ok(), "{line:?}");
        assert!(
            f[2].len() == 900 && f[2].bytes().all(|b| b == b'x'),
            "{line:?}"
        );
        assert_eq!(f[3], rank.to_string(), "torn line {line:?}");
        *counts.entry(rank).or_insert(0) += 1;
    }
    assert!(
        stdout.ends_with('\n'),
        "the final unterminated line gets a newline"
    );
    assert_eq!(counts.len(), 11);
    assert!(counts.values().all(|&c| c == 1100), "{counts:?}");
    let stderr = text(&out.stderr);
    let mut errs: Vec<&str> = stderr.lines().collect();
    errs.sort();
    let mut expected: Vec<String> = (0..11).map(|r| format!("[{r:>2}] err {r}")).collect();
    expected.sort();
    assert_eq!(errs, expected);
}

#[test]
fn the_first_failure_stops_the_job() {
    let dir = scratch("fail");
    // Rank 1 fails once the others are up and have printed their pids (the shell's and
    // that of a background sleep, which only dies if the whole process group is killed).
    let script = format!(
        r#"d={dir}
if [ "$TOPOCCL_RANK" = 1 ]; then
  while [ "$(ls "$d" | wc -l)" -lt 3 ]; do sleep 0.02; done
  exit 3
fi
sleep 30 &
echo "pid $$"
echo "pid $!"
touch "$d/$TOPOCCL_RANK"
wait"#,
        dir = dir.display()
    );
    let (out, took) = run_sh(4, &[], &script);
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(
        stderr.contains(
            "topoccl run: rank 1 failed first: exited with status 3; stopped ranks 0, 2, 3"
        ),
        "{stderr}"
    );
    let pids = printed_pids(&text(&out.stdout));
    assert_eq!(pids.len(), 6, "{}", text(&out.stdout));
    assert_gone(&pids);
}

#[test]
fn a_rank_killed_by_a_signal_is_reported() {
    let script = r#"if [ "$TOPOCCL_RANK" = 2 ]; then kill -9 $$; fi; exec sleep 30"#;
    let (out, took) = run_sh(4, &[], script);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 9), "{stderr}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(
        stderr.contains("rank 2 failed first: killed by signal 9 (SIGKILL); stopped ranks"),
        "{stderr}"
    );
}

#[test]
fn all_ranks_succeeding_exits_zero() {
    let (out, _) = run_sh(3, &[], "exit 0");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}

#[test]
fn the_timeout_stops_the_ranks_still_running() {
    let script = r#"echo "pid $$"; [ "$TOPOCCL_RANK" = 1 ] || exec sleep 30"#;
    let (out, took) = run_sh(3, &["--timeout", "300ms"], script);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(
        stderr.contains("topoccl run: timed out after 0.3 s; ranks 0, 2 still running"),
        "{stderr}"
    );
    assert_gone(&printed_pids(&text(&out.stdout)));
}

#[test]
fn sigterm_to_the_launcher_reaches_the_ranks() {
    let (launcher, pids, _stdout) = start_two_ranks("echo \"pid $$\"; exec sleep 30");
    let started = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &launcher.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let out = launcher.wait_with_output().expect("wait for topoccl");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(
        stderr.contains("topoccl run: interrupted by SIGTERM; stopped ranks 0, 1"),
        "{stderr}"
    );
    assert_gone(&pids);
}

#[test]
fn bad_input_is_a_usage_error() {
    let cases: [(&[&str], &str); 5] = [
        (&["-n", "0", "true"], "between 1 and 4096"),
        (&["-n", "4097", "true"], "between 1 and 4096"),
        (&["-n", "2"], "<PROGRAM>"),
        (
            &["-n", "2", "/nonexistent/topoccl-no-such-program"],
            "no such program",
        ),
        (&["-n", "2", "--timeout", "soon", "true"], "--timeout"),
    ];
    for (args, message) in cases {
        let out = topoccl(args).output().expect("run topoccl");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let dir = std::env::temp_dir();
    let out = topoccl(&["-n", "1", dir.to_str().expect("utf-8 temp dir")])
        .output()
        .expect("run topoccl");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("permission denied"));
}

#[test]
fn a_second_signal_skips_the_grace() {
    // The ranks ignore SIGTERM, so only the SIGKILL the second signal brings ends them.
    let (launcher, pids, _stdout) =
        start_two_ranks("trap '' TERM; echo \"pid $$\"; while :; do sleep 0.05; done");
    let started = Instant::now();
    for _ in 0..2 {
        let kill = Command::new("kill")
            .args(["-TERM", &launcher.id().to_string()])
            .status()
            .expect("run kill");
        assert!(kill.success());
        thread::sleep(Duration::from_millis(100));
    }
    let out = launcher.wait_with_output().expect("wait for topoccl");
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{stderr}");
    // Well inside the 3 s grace a single signal would have waited out.
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(
        stderr.contains("topoccl run: interrupted by SIGTERM; stopped ranks 0, 1"),
        "{stderr}"
    );
    assert_gone(&pids);
}

#[test]
fn a_pipe_held_open_after_the_ranks_exit_delays_the_end_boundedly() {
    // The rank exits at once; the sleep it leaves behind keeps its stdout open.
    let (out, took) = run_sh(1, &[], "sleep 30 & echo \"pid $!\"; exit 0");
    let pids = printed_pids(&text(&out.stdout));
    for pid in &pids {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(pids.len(), 1);
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "took {took:?}"
    );
}

#[test]
fn long_lines_are_split_at_64_kib() {
    let (out, _) = run_sh(
        1,
        &[],
        "head -c 100000 /dev/zero | tr '\\0' x; echo; echo end",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "{:?}",
        lines.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert_eq!(lines[0], format!("[0] {}", "x".repeat(64 * 1024)));
    assert_eq!(lines[1], format!("[0] {}", "x".repeat(100_000 - 64 * 1024)));
    assert_eq!(lines[2], "[0] end");
}

#[test]
fn the_summary_names_a_suspended_rank_not_the_survivor_that_failed_first() {
    // Rank 1 is stopped (SIGSTOP) in the middle of a loop of all-reduces; the others give
    // up on it after their 2 s deadline and exit first.
    let script = r#"if [ "$TOPOCCL_RANK" = 1 ]; then (sleep 0.5; kill -STOP $$) & fi
exec "$0" internal allreduce-loop --count 1024 --iters 100000000"#;
    let out = topoccl(&[
        "-n",
        "3",
        "--timeout",
        "60s",
        "sh",
        "-c",
        script,
        env!("CARGO_BIN_EXE_topoccl"),
    ])
    .env("TOPOCCL_TIMEOUT", "2s")
    .stdout(Stdio::null())
    .output()
    .expect("run topoccl");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let summary = err
        .lines()
        .find(|l| l.starts_with("topoccl run: "))
        .unwrap_or_else(|| panic!("no summary in {err}"));
    assert!(
        summary.starts_with("topoccl run: rank 1 was suspended (SIGSTOP or a debugger)"),
        "{summary}"
    );
    // The survivors' own errors name it too.
    assert!(err.contains("culprits: 1"), "{err}");
}
