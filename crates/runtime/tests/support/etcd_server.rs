//! Test support: a real etcd server (Debian's `etcd-server` binary, or the one
//! `TOPOCCL_ETCD_BIN` names) on free loopback ports and a temporary data directory,
//! stopped and removed when dropped. Tests that need one say SKIP when the binary is
//! missing.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One single-member etcd cluster.
pub struct EtcdServer {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:PORT` of its client URL.
    pub client: String,
}

fn binary() -> String {
    std::env::var("TOPOCCL_ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Whether the member at `client` says it is healthy.
fn healthy(client: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(client) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {client}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.contains("\"health\":\"true\"")
}

impl EtcdServer {
    /// Starts a server for the test `name`; `None` (after printing SKIP and why) when no
    /// etcd binary is installed.
    pub fn start(name: &str) -> Option<EtcdServer> {
        let bin = binary();
        if Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            eprintln!(
                "SKIP {name}: no etcd binary ('{bin}'); install Debian's etcd-server or set \
                 TOPOCCL_ETCD_BIN"
            );
            return None;
        }
        // A port taken between choosing it and etcd binding it: try again on others.
        let mut last = String::new();
        for attempt in 0..3 {
            let dir = std::env::temp_dir().join(format!(
                "topoccl-etcd-{name}-{}-{attempt}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the etcd data directory");
            let (c, p) = (free_port(), free_port());
            let client = format!("127.0.0.1:{c}");
            let peer = format!("http://127.0.0.1:{p}");
            let log = std::fs::File::create(dir.join("etcd.log")).expect("create the etcd log");
            let child = Command::new(&bin)
                .args(["--name", "test", "--data-dir"])
                .arg(dir.join("data"))
                .args(["--listen-client-urls", &format!("http://{client}")])
                .args(["--advertise-client-urls", &format!("http://{client}")])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("test={peer}")])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log handle"))
                .stderr(log)
                .spawn()
                .expect("start etcd");
            let mut server = EtcdServer { child, dir, client };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if healthy(&server.client) {
                    return Some(server);
                }
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last = std::fs::read_to_string(server.dir.join("etcd.log")).unwrap_or_default();
        }
        panic!("etcd did not become healthy in three tries; its log:\n{last}");
    }

    /// `etcd://127.0.0.1:PORT`, the value of `TOPOCCL_STORE`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.client)
    }

    /// Stops the server at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
