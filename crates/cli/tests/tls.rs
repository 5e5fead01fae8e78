//! `TOPOCCL_TLS`: real processes, real sockets. Ranks over TLS (the store's connections
//! and every TCP connection between ranks) all-reduce correctly, under `topoccl run` and
//! with a standalone `topoccl store`; TLS on one side only fails fast with the reason, at
//! the store and between ranks; a certificate of another CA is refused with the reason;
//! a bad certificate file stops a rank at once naming the variable and the file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::start_store_with;

const SECRET: &str = "tls test secret, the same for every party";

/// How long a rank may take before the test kills it and fails.
const LIMIT: Duration = Duration::from_secs(60);

struct Ended {
    ok: bool,
    stderr: String,
    took: Duration,
}

/// Runs one `topoccl internal allreduce-loop` per entry of `ranks` (its extra
/// environment), all at once, as ranks of one job on `store`; waits for all of them.
fn run_ranks(store: &str, count: usize, iters: u32, ranks: &[Vec<(&str, String)>]) -> Vec<Ended> {
    let world = ranks.len().to_string();
    // A job id of its own: a store keeps an earlier job's endpoints.
    static JOBS: AtomicU32 = AtomicU32::new(0);
    let job = format!("tls-test-{}", JOBS.fetch_add(1, Ordering::Relaxed));
    let start = Instant::now();
    let mut children: Vec<Child> = ranks
        .iter()
        .enumerate()
        .map(|(r, env)| {
            Command::new(env!("CARGO_BIN_EXE_topoccl"))
                .args(["internal", "allreduce-loop", "--count"])
                .arg(count.to_string())
                .args(["--iters", &iters.to_string()])
                .env("TOPOCCL_RANK", r.to_string())
                .env("TOPOCCL_WORLD_SIZE", &world)
                .env("TOPOCCL_STORE", store)
                .env("TOPOCCL_JOB_ID", &job)
                .env("TOPOCCL_SECRET", SECRET)
                .env("TOPOCCL_TRANSPORT", "tcp")
                .env("TOPOCCL_TIMEOUT", "20s")
                .env("TOPOCCL_INIT_TIMEOUT", "20s")
                .env_remove("TOPOCCL_TLS")
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a rank")
        })
        .collect();
    let mut ended: Vec<Option<Ended>> = children.iter().map(|_| None).collect();
    while ended.iter().any(Option::is_none) {
        for (c, e) in children.iter_mut().zip(ended.iter_mut()) {
            if e.is_some() {
                continue;
            }
            if let Some(status) = c.try_wait().expect("wait for a rank") {
                let mut stderr = String::new();
                if let Some(mut s) = c.stderr.take() {
                    use std::io::Read;
                    let _ = s.read_to_string(&mut stderr);
                }
                *e = Some(Ended {
                    ok: status.success(),
                    stderr,
                    took: start.elapsed(),
                });
            } else if start.elapsed() > LIMIT {
                let _ = c.kill();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ended.into_iter().flatten().collect()
}

fn on() -> Vec<(&'static str, String)> {
    vec![("TOPOCCL_TLS", "1".to_string())]
}

fn off() -> Vec<(&'static str, String)> {
    vec![]
}

fn assert_all_ok(ended: &[Ended]) {
    for (r, e) in ended.iter().enumerate() {
        assert!(e.ok, "rank {r} failed after {:?}: {}", e.took, e.stderr);
    }
}

#[test]
fn ranks_over_tls_all_reduce_correctly_with_a_standalone_store() {
    let (_store, url) = start_store_with(&[], &[("TOPOCCL_TLS", "1"), ("TOPOCCL_SECRET", SECRET)]);
    // 3 ranks, 1 Mi floats: frames larger than a TLS record and than the socket buffers,
    // so records wait in the sessions for the sockets to drain.
    let ended = run_ranks(&url, 1 << 20, 5, &[on(), on(), on()]);
    assert_all_ok(&ended);
    // Small messages, many of them.
    let ended = run_ranks(&url, 7, 300, &[on(), on()]);
    assert_all_ok(&ended);
}

#[test]
fn a_job_launched_with_tls_runs_over_tls_end_to_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["run", "-n", "2", "--"])
        .arg(env!("CARGO_BIN_EXE_topoccl"))
        .args([
            "internal",
            "allreduce-loop",
            "--count",
            "100000",
            "--iters",
            "20",
        ])
        .env("TOPOCCL_TLS", "1")
        .env("TOPOCCL_TRANSPORT", "tcp")
        .env("RUST_LOG", "topoccl=debug")
        .output()
        .expect("run topoccl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn tls_at_the_store_on_one_side_only_fails_that_side_at_once_saying_why() {
    let (_tls_store, tls_url) =
        start_store_with(&[], &[("TOPOCCL_TLS", "1"), ("TOPOCCL_SECRET", SECRET)]);
    let ended = run_ranks(&tls_url, 16, 1, &[off()]);
    assert!(!ended[0].ok);
    assert!(
        ended[0].took < Duration::from_secs(10),
        "{:?}",
        ended[0].took
    );
    assert!(
        ended[0].stderr.contains("speaks TLS") && ended[0].stderr.contains("TOPOCCL_TLS=1"),
        "{}",
        ended[0].stderr
    );
    let (_plain_store, plain_url) = start_store_with(&[], &[("TOPOCCL_SECRET", SECRET)]);
    let ended = run_ranks(&plain_url, 16, 1, &[on()]);
    assert!(!ended[0].ok);
    assert!(
        ended[0].took < Duration::from_secs(10),
        "{:?}",
        ended[0].took
    );
    assert!(
        ended[0].stderr.contains("does not use TLS"),
        "{}",
        ended[0].stderr
    );
}

/// Ranks that meet in a file store (no TLS of its own) but disagree about TLS both fail
/// at once, each naming the other, before any connection is tried.
#[test]
fn ranks_that_disagree_about_tls_both_fail_at_once_naming_each_other() {
    let dir = scratch("mixed");
    let url = format!("file://{}", dir.display());
    let ended = run_ranks(&url, 16, 1, &[on(), off()]);
    for (r, e) in ended.iter().enumerate() {
        assert!(!e.ok, "rank {r} succeeded");
        assert!(
            e.took < Duration::from_secs(10),
            "rank {r} took {:?}",
            e.took
        );
        assert!(
            e.stderr.contains("give every rank the same TOPOCCL_TLS"),
            "{}",
            e.stderr
        );
    }
    assert!(
        ended[0]
            .stderr
            .contains("on for rank 0 but off for rank(s) 1"),
        "{}",
        ended[0].stderr
    );
    assert!(
        ended[1]
            .stderr
            .contains("off for rank 1 but on for rank(s) 0"),
        "{}",
        ended[1].stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("topoccl-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch directory");
    d
}

/// Runs `openssl ARGS` in `dir`; false if openssl is not installed.
fn openssl(dir: &Path, args: &[&str]) -> bool {
    match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
        Err(_) => false,
    }
}

/// A CA `NAME-ca.pem` (key `NAME-ca.key`) in `dir`; false without openssl.
fn make_ca(dir: &Path, name: &str) -> bool {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} CA"),
        ],
    )
}

/// A certificate `LEAF.pem` (key `LEAF.key`) signed by CA `CA`.
fn make_leaf(dir: &Path, ca: &str, leaf: &str) {
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:topoccl\n",
    )
    .expect("extensions");
    assert!(openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{leaf}.key"),
            "-out",
            &format!("{leaf}.csr"),
            "-subj",
            &format!("/CN={leaf}"),
        ],
    ));
    assert!(openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-out",
            &format!("{leaf}.pem"),
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    ));
}

fn files(dir: &Path, leaf: &str, ca: &str) -> Vec<(&'static str, String)> {
    let p = |f: String| dir.join(f).display().to_string();
    vec![
        ("TOPOCCL_TLS", "1".to_string()),
        ("TOPOCCL_TLS_CERT", p(format!("{leaf}.pem"))),
        ("TOPOCCL_TLS_KEY", p(format!("{leaf}.key"))),
        ("TOPOCCL_TLS_CA", p(format!("{ca}-ca.pem"))),
    ]
}

#[test]
fn certificate_files_admit_the_cas_ranks_and_refuse_another_cas() {
    let dir = scratch("ca");
    if !make_ca(&dir, "job") {
        eprintln!("SKIP: openssl is not installed");
        return;
    }
    assert!(make_ca(&dir, "other"));
    for (ca, leaf) in [
        ("job", "store"),
        ("job", "r0"),
        ("job", "r1"),
        ("other", "intruder"),
    ] {
        make_leaf(&dir, ca, leaf);
    }
    let store_env = files(&dir, "store", "job");
    let mut env: Vec<(&str, &str)> = store_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("TOPOCCL_SECRET", SECRET));
    let (_store, url) = start_store_with(&[], &env);
    let ended = run_ranks(
        &url,
        1 << 18,
        5,
        &[files(&dir, "r0", "job"), files(&dir, "r1", "job")],
    );
    assert_all_ok(&ended);

    // Another CA's certificate at the store: refused at once, naming the setting.
    let ended = run_ranks(&url, 16, 1, &[files(&dir, "intruder", "other")]);
    assert!(!ended[0].ok);
    assert!(
        ended[0].took < Duration::from_secs(10),
        "{:?}",
        ended[0].took
    );
    assert!(
        ended[0].stderr.contains("TOPOCCL_TLS_CA"),
        "{}",
        ended[0].stderr
    );

    // Between ranks (a file store): rank 0 refuses rank 1's certificate at once and says
    // why; rank 1, refused, fails by its deadline rather than hanging.
    let fstore = scratch("ca-files");
    let furl = format!("file://{}", fstore.display());
    let mut r1 = files(&dir, "intruder", "other");
    r1.push(("TOPOCCL_TIMEOUT", "5s".to_string()));
    r1.push(("TOPOCCL_INIT_TIMEOUT", "5s".to_string()));
    let ended = run_ranks(&furl, 16, 1, &[files(&dir, "r0", "job"), r1]);
    assert!(!ended[0].ok && !ended[1].ok);
    assert!(
        ended[0].took < Duration::from_secs(10),
        "{:?}",
        ended[0].took
    );
    assert!(
        ended[0].stderr.contains("TLS handshake with rank 1 failed")
            && ended[0].stderr.contains("TOPOCCL_TLS_CA"),
        "{}",
        ended[0].stderr
    );
    assert!(
        ended[1].took < Duration::from_secs(30),
        "{:?}",
        ended[1].took
    );
    let _ = std::fs::remove_dir_all(&fstore);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_certificate_file_stops_a_rank_at_once_naming_it() {
    let dir = scratch("badfile");
    let url = format!("file://{}", dir.display());
    let missing = dir.join("missing.pem").display().to_string();
    let env = vec![
        ("TOPOCCL_TLS", "1".to_string()),
        ("TOPOCCL_TLS_CERT", missing.clone()),
        ("TOPOCCL_TLS_KEY", missing.clone()),
        ("TOPOCCL_TLS_CA", missing.clone()),
    ];
    let ended = run_ranks(&url, 16, 1, &[env]);
    assert!(!ended[0].ok);
    assert!(ended[0].took < Duration::from_secs(10));
    assert!(
        ended[0]
            .stderr
            .contains(&format!("TOPOCCL_TLS_CERT={missing}: cannot read it")),
        "{}",
        ended[0].stderr
    );
    let ended = run_ranks(&url, 16, 1, &[vec![("TOPOCCL_TLS", "maybe".to_string())]]);
    assert!(!ended[0].ok);
    assert!(
        ended[0].stderr.contains("TOPOCCL_TLS='maybe'"),
        "{}",
        ended[0].stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}
