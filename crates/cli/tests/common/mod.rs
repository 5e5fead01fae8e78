//! Shared by the CLI's integration tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;

/// A process killed when the test ends, however it ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `topoccl store` on a free loopback port with `env`; returns it and its
/// `tcp://` address (read from the line it prints).
pub fn start_store(env: &[(&str, &str)]) -> (Proc, String) {
    start_store_with(&[], env)
}

/// As [`start_store`], with more `args` for `topoccl store` (quotas, idle timeout).
pub fn start_store_with(args: &[&str], env: &[(&str, &str)]) -> (Proc, String) {
    let mut store = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["store", "--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the store");
    let mut line = String::new();
    BufReader::new(store.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the store's address");
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("an address")
        .to_string();
    (Proc(store), url)
}

/// Runs the `topoccl` binary with `args` and `env` on top of a clean selection
/// environment (no inherited TOPOCCL_ALGO / RULES / TOPO), echoing its output so a failing
/// test shows what the command said.
pub fn topoccl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(args)
        .env_remove("TOPOCCL_ALGO")
        .env_remove("TOPOCCL_RULES")
        .env_remove("TOPOCCL_TOPO")
        .envs(env.iter().copied())
        .output()
        .expect("run topoccl");
    eprintln!(
        "topoccl {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`topoccl_env`] with nothing added.
pub fn topoccl(args: &[&str]) -> Output {
    topoccl_env(args, &[])
}

/// Runs `scripts/NAME.sh` with the `topoccl` binary and a work directory under the test
/// target directory, on a clean selection environment plus `env`, echoing its output.
/// `None` when the script skipped (exit 77: network namespaces cannot be made here), after
/// saying SKIP; panics when it failed.
/// The value of `key` on a script's `RESULT k=v k=v …` line (the netns scripts print one).
pub fn result_field(stdout: &str, key: &str) -> f64 {
    let result = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in {stdout}"));
    result
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {result}"))
}

pub fn netns_script(name: &str, env: &[(&str, &str)]) -> Option<String> {
    let script = format!("{}/../../scripts/{name}.sh", env!("CARGO_MANIFEST_DIR"));
    let work = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let out = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_topoccl"))
        .arg(&work)
        .env_remove("TOPOCCL_ALGO")
        .env_remove("TOPOCCL_RULES")
        .env_remove("TOPOCCL_TOPO")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.code() == Some(77) {
        eprintln!("SKIP {name}: {}", stdout.trim());
        return None;
    }
    assert!(out.status.success(), "scripts/{name}.sh failed");
    Some(stdout)
}

/// Follows a rank started with piped output: each line of stdout starting `iteration`
/// (the internal loops' progress) sends `rank` to `progress`; the receiver returned gets
/// all of its stderr once it closes.
pub fn watch_rank(
    child: &mut Child,
    rank: u32,
    progress: mpsc::Sender<u32>,
) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("iteration") {
                let _ = progress.send(rank);
            }
        }
    });
    let err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let text: Vec<String> = BufReader::new(err).lines().map_while(Result::ok).collect();
        let _ = tx.send(text.join("\n"));
    });
    rx
}

/// A child stopped with SIGTERM when the test ends (a launcher forwards it to its ranks),
/// then killed if it is still there 10 s later.
pub struct Stopped(pub Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: a signal to a child this test started and has not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address with a port free a moment ago.
pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The path of `examples/topologies/NAME`.
pub fn example(name: &str) -> String {
    let path: std::path::PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "examples",
        "topologies",
        name,
    ]
    .iter()
    .collect();
    path.to_str().expect("a UTF-8 path").to_string()
}
