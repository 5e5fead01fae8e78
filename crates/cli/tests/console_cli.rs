//! `topoccl console`: the real server, started as a user starts it, asked over HTTP: the
//! API's answers, the token, what-if's guard and its 400s, a topology file with an error,
//! a job that does not answer, and a job's figures turning a link red.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, Proc};

/// A started console: the process, its URL's address, its token, its stderr so far.
struct Console {
    _proc: Proc,
    addr: SocketAddr,
    token: Option<String>,
}

fn start(args: &[&str]) -> Console {
    let mut child = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .arg("console")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the console");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the console's URL");
    let proc = Proc(child);
    let url = line
        .trim()
        .strip_prefix("console: http://")
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    let (hostport, rest) = url.split_once('/').expect("a path");
    let token = rest.strip_prefix("?token=").map(str::to_string);
    Console {
        _proc: proc,
        addr: hostport.parse().expect("an address"),
        token,
    }
}

/// One HTTP/1.1 request (`Connection: close`): status, headers, body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    // Chunked bodies: good enough to search and parse when the server sends one chunk.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = b.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        b = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn get(c: &Console, path: &str) -> (u16, String, String) {
    let auth = c.token.as_ref().map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    request(c.addr, "GET", path, &headers, "")
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn serves_the_layout_and_guards_with_its_token() {
    let c = start(&[
        "--topo",
        &example("fat-tree-1k.toml"),
        "--token",
        "s3cret-token",
    ]);
    assert_eq!(c.token.as_deref(), Some("s3cret-token"));
    for path in [
        "/",
        "/api/topology",
        "/api/links",
        "/api/alerts",
        "/api/calls",
    ] {
        let (status, _, body) = request(c.addr, "GET", path, &[], "");
        assert_eq!(status, 401, "{path} without the token: {body}");
        let (status, _, _) = request(
            c.addr,
            "GET",
            path,
            &[("Authorization", "Bearer wrong-token!")],
            "",
        );
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    let (status, _, body) = get(&c, "/api/topology");
    assert_eq!(status, 200, "{body}");
    let t = json(&body);
    assert_eq!(t["world"], 1024);
    assert!(t["layout"]["nodes"].as_array().expect("nodes").len() > 1024);
    assert_eq!(t["what_if"], false);
    assert!(
        t["thresholds"]["utilisation_max"]
            .as_f64()
            .expect("a threshold")
            > 0.0
    );
    // ?token= sets the cookie the page's own requests carry.
    let (status, head, _) = request(c.addr, "GET", "/?token=s3cret-token", &[], "");
    assert_eq!(status, 200);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie")
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    assert!(cookie.contains("s3cret-token") && head.contains("HttpOnly"));
    let (status, _, _) = request(c.addr, "GET", "/api/links", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200);
    // What-if is off unless asked for.
    let (status, _, body) = request(
        c.addr,
        "POST",
        "/api/sim",
        &[("Authorization", "Bearer s3cret-token")],
        r#"{"target":"leaf0","action":"cut"}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--allow-what-if"));
}

#[test]
fn a_non_loopback_address_gets_a_generated_token() {
    let c = start(&["--topo", &example("dgx-pair.toml"), "--listen", "0.0.0.0:0"]);
    let token = c.token.clone().expect("a token printed with the URL");
    assert_eq!(token.len(), 32);
    let addr: SocketAddr = format!("127.0.0.1:{}", c.addr.port())
        .parse()
        .expect("addr");
    assert_eq!(request(addr, "GET", "/api/topology", &[], "").0, 401);
    let auth = format!("Bearer {token}");
    assert_eq!(
        request(
            addr,
            "GET",
            "/api/topology",
            &[("Authorization", &auth)],
            ""
        )
        .0,
        200
    );
}

#[test]
fn what_if_answers_both_plans_and_refuses_unknown_links() {
    let c = start(&["--topo", &example("dgx-pair.toml"), "--allow-what-if"]);
    let t = json(&get(&c, "/api/topology").2);
    let link = t["layout"]["edges"][0]["name"]
        .as_str()
        .expect("a link name")
        .to_string();
    for (body, needle) in [
        (r#"{"target":"nosuch->leaf0","action":"cut"}"#, "nosuch"),
        (r#"{"target":"4000000","action":"cut"}"#, "4000000"),
        (r#"{"target":"leaf0","action":"melt"}"#, "cut or degrade"),
        ("not json", "JSON"),
    ] {
        let (status, _, answer) = request(c.addr, "POST", "/api/sim", &[], body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(needle), "{body}: {answer}");
    }
    let body = format!(r#"{{"target":"{link}","action":"degrade","factor":0.01,"size":"64M"}}"#);
    let (status, _, answer) = request(c.addr, "POST", "/api/sim", &[], &body);
    assert_eq!(status, 200, "{answer}");
    let a = json(&answer);
    assert_eq!(a["flat_ring"]["label"], "ring");
    let ring_slow = a["flat_ring"]["slowdown"].as_f64().expect("slowdown");
    assert!(ring_slow >= 1.0, "{answer}");
    assert!(a["topology_aware"]["label"].is_string(), "{answer}");
}

#[test]
fn a_topology_with_an_error_is_shown_with_its_line() {
    let dir = std::env::temp_dir().join(format!("console-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "name = \"x\"\n\n[generate]\nkind = \"fat-tree\"\nhosts = -3\n",
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["console", "--topo"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("a URL");
    let mut err_line = String::new();
    BufReader::new(child.stderr.take().expect("piped"))
        .read_line(&mut err_line)
        .expect("the error");
    let _p = Proc(child);
    assert!(err_line.contains("bad.toml:5:"), "{err_line}");
    let addr: SocketAddr = line
        .trim()
        .trim_start_matches("console: http://")
        .trim_end_matches('/')
        .parse()
        .expect("an address");
    let (status, _, body) = request(addr, "GET", "/api/topology", &[], "");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("bad.toml:5:"), "{body}");
}

/// A stand-in for the launcher's metrics endpoint: answers every request with `metrics`
/// (and `[]` at /flight) until the test ends.
fn fake_job(metrics: String) -> SocketAddr {
    fake_job_with_matrix(metrics, None)
}

/// [`fake_job`], answering `/matrix` with `matrix` when given.
fn fake_job_with_matrix(metrics: String, matrix: Option<String>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let body = if req.starts_with("GET /flight") {
                "[]".to_string()
            } else if let (true, Some(m)) = (req.starts_with("GET /matrix"), &matrix) {
                m.clone()
            } else {
                metrics.clone()
            };
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

fn wait_for(
    c: &Console,
    path: &str,
    until: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let v = json(&get(c, path).2);
        if until(&v) {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{path} never became ready: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_jobs_congested_pair_turns_its_links_red_and_raises_an_alert() {
    let metrics = "topoccl_rank_up{rank=\"0\"} 1\ntopoccl_rank_up{rank=\"9\"} 1\n\
                   topoccl_link_throughput_bytes_per_second{rank=\"0\",peer=\"9\"} 1e6\n\
                   topoccl_link_latency_seconds{rank=\"0\",peer=\"9\"} 0.000005\n\
                   topoccl_link_congested{rank=\"0\",peer=\"9\"} 1\n\
                   topoccl_straggler{rank=\"9\"} 0\n"
        .to_string();
    let job = fake_job(metrics).to_string();
    let c = start(&[
        "--topo",
        &example("fat-tree-1k.toml"),
        "--job",
        &job,
        "--poll-ms",
        "200",
    ]);
    let links = wait_for(&c, "/api/links", |v| v["job"]["up"] == true);
    let edges = links["edges"].as_array().expect("edges");
    assert!(!edges.is_empty(), "{links}");
    assert!(edges.iter().all(|e| e["level"] == "red"), "{links}");
    assert_eq!(links["job"]["ranks_up"], 2);
    let alerts = wait_for(&c, "/api/alerts", |v| {
        v["alerts"].as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(alerts["alerts"][0]["kind"], "congestion");
    assert!(alerts["alerts"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("rank 0") && r.contains("rank 9")));
}

/// One published link of a rank's live view, as the runtime writes it.
fn link_row(direction: &str, peer: u32, congested: bool, rate: f64) -> String {
    format!(
        r#"{{"direction":"{direction}","peer":"{peer}","congested":{congested},"stats":{{
        "members":1,"bytes_total":4000000,"transfers_total":40,"throughput_bps":2e7,
        "throughput_samples":40,"last_throughput_ns":1,"latency_s":0.0002,"latency_min_s":0.0001,
        "last_latency_ns":1,"window":{{"start_ns":0,"end_ns":1000000000,"bytes":1,"transfers":1,
        "rate_bps":{rate},"throughput_bps":2e7}},"baseline":{{"throughput_bps":1e8,"latency_s":0.0001}},
        "capacity_bps":null,"last_update_ns":1}}}}"#
    )
}

#[test]
fn the_jobs_live_matrix_colours_the_links_it_crosses() {
    let t = example("fat-tree-1k.toml");
    // Ranks 0 and 8 are on hosts 0 and 1 (eight GPUs each), 1000 and 1008 on hosts 125
    // and 126, under another leaf: their routes share no cable.
    let matrix = format!(
        r#"[{{"communicator":"w","rank":0,"links":[{}]}},{{"communicator":"w","rank":8,"links":[{}]}},
            {{"communicator":"w","rank":1000,"links":[{}]}}]"#,
        link_row("out", 8, false, 1e6),
        link_row("in", 0, true, 1e6),
        link_row("out", 1008, false, 1e3),
    );
    let job = fake_job_with_matrix("topoccl_rank_up{rank=\"0\"} 1\n".into(), Some(matrix));
    let c = start(&["--topo", &t, "--job", &job.to_string(), "--poll-ms", "200"]);
    let links = wait_for(&c, "/api/links", |v| {
        v["edges"].as_array().is_some_and(|e| !e.is_empty())
    });
    let pairs = links["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 2, "{links}");
    let crossing = pairs.iter().find(|p| p["rank"] == 0).expect("0 → 8");
    assert_eq!(crossing["peer"], 8);
    assert_eq!(crossing["congested"], true);
    assert_eq!(crossing["bytes"], 4_000_000);
    assert_eq!(crossing["throughput_ratio"], 0.2);
    let edges = links["edges"].as_array().expect("edges");
    let red = edges.iter().filter(|e| e["level"] == "red").count();
    let green = edges.iter().filter(|e| e["level"] == "green").count();
    assert!(red >= 1, "the congested path is red: {links}");
    assert!(green >= 1, "the quiet pair 1000 → 1008 is not: {links}");
    assert!(edges
        .iter()
        .all(|e| e["bytes"].as_u64().is_some() && e["pairs"].as_u64().is_some()));
}

#[test]
fn a_job_that_does_not_answer_is_reported_and_retried() {
    let dead = common::free_port().to_string();
    let c = start(&[
        "--topo",
        &example("dgx-pair.toml"),
        "--job",
        &dead,
        "--poll-ms",
        "200",
    ]);
    let v = wait_for(&c, "/api/links", |v| {
        v["job"]["failed_polls"].as_u64().is_some_and(|n| n >= 2)
    });
    assert_eq!(v["job"]["up"], false);
    let why = v["job"]["error"].as_str().expect("a reason");
    assert!(why.contains(&dead) && why.contains("retrying"), "{why}");
    // The layout is still there.
    assert_eq!(get(&c, "/api/topology").0, 200);
}

#[test]
fn needs_something_to_show() {
    let out = common::topoccl(&["console"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--topo"));
}

#[test]
fn a_real_jobs_pairs_and_flight_recorders_reach_the_api() {
    let metrics = common::free_port().to_string();
    let bench = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args([
            "bench",
            "allreduce",
            "-N",
            "2",
            "-b",
            "64K",
            "-e",
            "64K",
            "-n",
            "200000",
        ])
        .args(["--metrics", &metrics])
        .env("TOPOCCL_SECRET", "console-test-job-secret-4f2a")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a job");
    let _bench = Proc(bench);
    // Two hosts of one GPU each: the two ranks' traffic crosses drawn cables.
    let topo = std::env::temp_dir().join(format!("console-pair-{}.toml", std::process::id()));
    std::fs::write(
        &topo,
        "name = \"pair\"\n[generate]\nkind = \"switch\"\nhosts = 2\nlatency = \"1us\"\n\
         [generate.host]\ngpus_per_host = 1\n",
    )
    .expect("write the topology");
    let c = start(&[
        "--topo",
        topo.to_str().expect("a UTF-8 path"),
        "--job",
        &metrics,
        "--poll-ms",
        "200",
    ]);
    let links = wait_for(&c, "/api/links", |v| {
        v["job"]["up"] == true && v["pairs"].as_array().is_some_and(|p| p.len() >= 2)
    });
    assert_eq!(links["job"]["ranks_up"], 2, "{links}");
    // The launcher's /matrix: the pairs carry the ranks' bytes, and the links are drawn.
    let links = wait_for(&c, "/api/links", |v| {
        v["pairs"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["bytes"].as_u64().is_some_and(|b| b > 0)))
            && v["edges"].as_array().is_some_and(|e| !e.is_empty())
    });
    assert!(links["edges"][0]["level"].is_string(), "{links}");
    let calls = wait_for(&c, "/api/calls", |v| {
        v["timeline"]["tracks"]
            .as_array()
            .is_some_and(|t| t.len() >= 2)
    });
    assert_eq!(calls["timeline"]["source"], "flight");
    let spans = calls["timeline"]["tracks"][0]["spans"]
        .as_array()
        .expect("spans");
    assert!(
        spans.iter().any(|s| s["name"] == "topoccl:all_reduce"),
        "{calls}"
    );
    // Nothing of the job's secret: the page sees figures and call records only.
    let all = format!("{links}{calls}{}", get(&c, "/api/alerts").2);
    assert!(!all.contains("console-test-job-secret-4f2a"), "{all}");
    let _ = std::fs::remove_file(&topo);
}
