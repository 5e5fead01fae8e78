//! Creating communicators: the rendezvous (job secret, every rank's endpoints), the
//! transports, and the measurements taken once at creation (`crate::probe`).
//!
//! This module sits above `comm` (the calls) and `probe` (which measures through those
//! calls): neither of them knows how a communicator comes to be.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use topoccl_plan::Rank;

use crate::auth::{fresh, JobKey, NONCE_LEN};
use crate::comm::{Communicator, DEFAULT_NET};
use crate::config::Config;
use crate::env::LaunchInfo;
use crate::error::{Error, Result};
use crate::live::{Live, PeerFacts};
use crate::metrics::Meter;
use crate::select::Selector;
use crate::store::{Store, StoreAddr, StoreError, TcpStoreServer};
use crate::transport::{Endpoint, Identity, Setup, Transports};
use crate::wire::{self, FNV_OFFSET};

/// World communicators created by this process so far: their rendezvous keys must differ.
static WORLDS: AtomicU64 = AtomicU64::new(0);

/// The address to listen on: the named interface, or the one that reaches the store.
pub(crate) fn listen_ip(cfg: &Config, store: &StoreAddr) -> Result<IpAddr> {
    if let Some(name) = &cfg.ifname {
        let ifs = if_addrs::get_if_addrs()
            .map_err(|e| Error::Config(format!("cannot list interfaces: {e}")))?;
        let mut found: Vec<&if_addrs::Interface> = ifs.iter().filter(|i| &i.name == name).collect();
        found.sort_by_key(|i| !i.ip().is_ipv4());
        return found.first().map(|i| i.ip()).ok_or_else(|| {
            let mut names: Vec<&str> = ifs.iter().map(|i| i.name.as_str()).collect();
            names.sort();
            names.dedup();
            Error::Config(format!(
                "TOPOCCL_SOCKET_IFNAME={name}: no such interface with an address; available: {}",
                names.join(", ")
            ))
        });
    }
    // A network store: the address that reaches it (an etcd cluster's first member).
    let hostport = match store {
        StoreAddr::Tcp(hostport) => Some(hostport.as_str()),
        StoreAddr::Etcd(members) => members.first().map(String::as_str),
        StoreAddr::File(_) => None,
    };
    match hostport {
        Some(hostport) => {
            let target = hostport
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| Error::Config(format!("cannot resolve store address {hostport}")))?;
            if target.ip().is_loopback() || target.ip().is_unspecified() {
                return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
            // The address the kernel would use to reach the store (no packet is sent).
            let probe = UdpSocket::bind(if target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })
            .and_then(|u| u.connect(target).map(|_| u))
            .and_then(|u| u.local_addr())
            .map_err(|e| Error::Config(format!("no route to the store at {hostport}: {e}")))?;
            Ok(probe.ip())
        }
        None => Ok(if_addrs::get_if_addrs()
            .ok()
            .and_then(|ifs| {
                ifs.into_iter()
                    .find(|i| !i.is_loopback() && i.ip().is_ipv4())
                    .map(|i| i.ip())
            })
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))),
    }
}

/// Hosts the job's store where the job meets; with the job's key, it serves only the
/// clients that prove it.
fn host_store(addr: &StoreAddr, key: Option<JobKey>) -> Result<TcpStoreServer> {
    let start = |a: &str| match &key {
        Some(k) => TcpStoreServer::start_authenticated(a, k.clone()),
        None => TcpStoreServer::start(a),
    };
    let StoreAddr::Tcp(hostport) = addr else {
        return Err(Error::Config(
            "only a TCP store can be hosted by rank 0".into(),
        ));
    };
    let port = hostport
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| Error::Config(format!("store address {hostport} has no port")))?;
    // Listen where the job meets, not on every interface: the store's own address when
    // this machine has it (loopback for a local job), every interface only when the
    // address is not one of this machine's (a name other hosts resolve differently).
    let ip = hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip())
        .ok_or_else(|| Error::Config(format!("cannot resolve store address {hostport}")))?;
    match start(&SocketAddr::new(ip, port).to_string()) {
        Ok(server) => Ok(server),
        Err(e) if ip.is_loopback() || ip.is_unspecified() => Err(e.into()),
        Err(e) => {
            tracing::warn!(
                "hosting the store on {hostport} failed ({e}); listening on every interface \
                 instead"
            );
            Ok(start(&format!("0.0.0.0:{port}"))?)
        }
    }
}

/// A rank's published endpoint: topoccl's JSON, or a bare `IP:PORT` (TCP only).
pub(crate) fn parse_endpoint(v: &[u8]) -> Option<Endpoint> {
    let text = String::from_utf8_lossy(v);
    if let Ok(tcp) = text.trim().parse() {
        return Some(Endpoint {
            tcp,
            shm: None,
            host: String::new(),
            nonce: [0; NONCE_LEN],
            tls: false,
        });
    }
    serde_json::from_slice(v).ok()
}

impl Communicator {
    /// Creates the world communicator from the launcher's environment and `TOPOCCL_*`
    /// settings.
    /// With `TOPOCCL_JOIN=1`, joins a running job as a replacement instead
    /// ([`Communicator::join`]).
    pub fn from_env() -> Result<Communicator> {
        let info = LaunchInfo::from_env()?;
        let cfg = Config::from_env()?;
        if crate::elastic::join_requested(&|k| std::env::var(k).ok())? {
            return Self::join(info, cfg);
        }
        Self::init(info, cfg)
    }

    /// Creates the world communicator.
    pub fn init(info: LaunchInfo, mut cfg: Config) -> Result<Communicator> {
        cfg.fill_polling(info.local_world);
        let deadline = Instant::now() + cfg.init_timeout;
        let key = cfg.job_key();
        let server = if info.host_store {
            Some(Arc::new(host_store(&info.store, key.clone())?))
        } else {
            None
        };
        let store = info.store.open(key, deadline)?;
        let generation = WORLDS.fetch_add(1, Ordering::SeqCst);
        let namespace = format!("topoccl/{}/world{generation}", info.job_id);
        let ip = listen_ip(&cfg, &info.store)?;
        let job = wire::fnv1a(info.job_id.as_bytes(), FNV_OFFSET);
        let world_ranks = (0..info.world).collect();
        let mut comm = Self::rendezvous(
            store,
            server,
            namespace,
            info.rank,
            info.world,
            ip,
            job,
            world_ranks,
            cfg,
            deadline,
        )?;
        comm.start_heartbeat(deadline)?;
        comm.tune_within(deadline)?;
        comm.publish_metrics(&info.job_id)?;
        Ok(comm)
    }

    /// With metrics on: the endpoint's address into the store, where `topoccl run
    /// --metrics` looks for it (the measured links reach the metrics through the live
    /// view, `crate::live`).
    fn publish_metrics(&mut self, job_id: &str) -> Result<()> {
        if self.meter.is_none() {
            return Ok(());
        }
        if let Some(cfg) = &self.cfg.metrics {
            let exporter = crate::metrics::exporter(cfg, crate::metrics::ENV_METRICS)?;
            self.store.set(
                &crate::metrics::store_key(job_id, self.rank),
                exporter.addr.to_string().as_bytes(),
            )?;
        }
        Ok(())
    }

    /// Creates a communicator that meets in `store` (any [`Store`]: one the caller hosts
    /// or shares), for ranks of one host: it listens on loopback unless
    /// `TOPOCCL_SOCKET_IFNAME` names an interface. `name` separates communicators that
    /// share a store and job.
    pub fn with_store(
        store: Arc<dyn Store>,
        rank: Rank,
        world: u32,
        job_id: &str,
        name: &str,
        cfg: Config,
    ) -> Result<Communicator> {
        Self::meet_in(store, rank, world, job_id, name, cfg, None)
    }

    /// As [`Communicator::with_store`], for ranks on several hosts: each listens on the
    /// address that reaches `reach` (where the store lives, e.g. torch's `MASTER_ADDR`), or
    /// on the interface `TOPOCCL_SOCKET_IFNAME` names.
    pub fn with_store_reaching(
        store: Arc<dyn Store>,
        rank: Rank,
        world: u32,
        job_id: &str,
        name: &str,
        cfg: Config,
        reach: &StoreAddr,
    ) -> Result<Communicator> {
        Self::meet_in(store, rank, world, job_id, name, cfg, Some(reach))
    }

    fn meet_in(
        store: Arc<dyn Store>,
        rank: Rank,
        world: u32,
        job_id: &str,
        name: &str,
        mut cfg: Config,
        reach: Option<&StoreAddr>,
    ) -> Result<Communicator> {
        // Without a word on the host's ranks, assume all of them share this host.
        cfg.fill_polling(world);
        if world == 0 || rank >= world {
            return Err(Error::Config(format!(
                "rank {rank} is not in a world of {world} ranks"
            )));
        }
        let deadline = Instant::now() + cfg.init_timeout;
        let ip = match (reach, &cfg.ifname) {
            (Some(reach), _) => listen_ip(&cfg, reach)?,
            (None, Some(_)) => listen_ip(&cfg, &StoreAddr::File(Default::default()))?,
            (None, None) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let job = wire::fnv1a(job_id.as_bytes(), FNV_OFFSET);
        let namespace = format!("topoccl/{job_id}/{name}");
        let world_ranks = (0..world).collect();
        let mut comm = Self::rendezvous(
            store,
            None,
            namespace,
            rank,
            world,
            ip,
            job,
            world_ranks,
            cfg,
            deadline,
        )?;
        comm.start_heartbeat(deadline)?;
        comm.tune_within(deadline)?;
        Ok(comm)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rendezvous(
        store: Arc<dyn Store>,
        server: Option<Arc<TcpStoreServer>>,
        namespace: String,
        rank: Rank,
        world: u32,
        ip: IpAddr,
        job: u64,
        world_ranks: Vec<Rank>,
        cfg: Config,
        deadline: Instant,
    ) -> Result<Communicator> {
        let key = |k: &str| format!("{namespace}/{k}");
        let job_key = match cfg.job_key() {
            Some(k) => k,
            None => {
                // The fallback: the secret rests in the store, so whoever can read the
                // store can join (docs/security.md).
                let s: [u8; 32] = if store.add(&key("secret-claim"), 1)? == 1 {
                    tracing::warn!(
                        "no TOPOCCL_SECRET: this job's secret is kept in its rendezvous store, \
                         where anyone who can reach the store can read it and join the job; \
                         launch with `topoccl run` or give every rank TOPOCCL_SECRET"
                    );
                    let s = fresh("the job secret").map_err(Error::Io)?;
                    store.set(&key("secret"), &s)?;
                    s
                } else {
                    let v = store.get(&key("secret"), deadline).map_err(|e| {
                        Error::Rendezvous(format!("the job secret never appeared: {e}"))
                    })?;
                    v.try_into().map_err(|_| {
                        Error::Rendezvous("the job secret in the store is malformed".into())
                    })?
                };
                JobKey::from_secret(&s)
            }
        };
        let id_comm = wire::fnv1a(namespace.as_bytes(), FNV_OFFSET);
        let id = Identity {
            rank,
            world,
            job,
            comm: id_comm,
            key: job_key,
            nonce: fresh("the handshake nonce").map_err(Error::Io)?,
        };
        let mut tr = Transports::new(
            id,
            Setup {
                bind: std::net::SocketAddr::new(ip, 0),
                streams: cfg.streams,
                mode: cfg.transport,
                ring_bytes: cfg.shm_ring,
                faults: cfg.faults.clone(),
                world_ranks: world_ranks.clone(),
            },
        )?;
        let mine = serde_json::to_vec(&tr.endpoint()?).expect("endpoints serialise");
        store.set(&key(&format!("addr/{rank}")), &mine)?;
        let keys: Vec<String> = (0..world).map(|r| key(&format!("addr/{r}"))).collect();
        store.wait(&keys, deadline).map_err(|e| match e {
            StoreError::Timeout { missing } => {
                let ranks: Vec<String> = missing
                    .iter()
                    .filter_map(|k| k.rsplit('/').next())
                    .map(String::from)
                    .collect();
                Error::Rendezvous(format!(
                    "ranks {} never arrived within {:.0} s; check that all {world} ranks were \
                     started with the same store and job id",
                    ranks.join(", "),
                    cfg.init_timeout.as_secs_f64()
                ))
            }
            other => other.into(),
        })?;
        let mut endpoints = Vec::with_capacity(world as usize);
        for (r, k) in keys.iter().enumerate() {
            let v = store.get(k, deadline)?;
            endpoints.push(parse_endpoint(&v).ok_or_else(|| {
                Error::Rendezvous(format!("rank {r} published an unreadable address"))
            })?);
        }
        tr.set_endpoints(endpoints)?;
        // Namespaces are `topoccl/JOB/...`.
        let job_id = namespace.split('/').nth(1).unwrap_or("unknown");
        let flight = crate::flight::Recorder::new(&cfg.flight, job_id, &namespace, rank, world)?;
        let meter = match &cfg.metrics {
            Some(addr) => {
                let exporter = crate::metrics::exporter(addr, crate::metrics::ENV_METRICS)?;
                Some(Meter::new(
                    exporter.metrics.clone(),
                    world_ranks[rank as usize],
                ))
            }
            None => None,
        };
        let mut selector = Selector::new(DEFAULT_NET, cfg.streams);
        if let Some(a) = &cfg.algo {
            selector = selector.with_algo_env(a)?;
        }
        if let Some(rules) = &cfg.rules {
            selector = if cfg.rules_inline() {
                selector.with_rules_json(rules, "TOPOCCL_RULES")?
            } else {
                let json = std::fs::read_to_string(rules)
                    .map_err(|e| Error::Config(format!("TOPOCCL_RULES={rules}: {e}")))?;
                selector.with_rules_json(&json, rules)?
            };
        }
        Ok(Communicator {
            rank,
            world,
            cfg,
            tr,
            departed: Default::default(),
            matcher: Default::default(),
            seq: 0,
            p2p_sent: HashMap::new(),
            p2p_received: HashMap::new(),
            store,
            server,
            namespace,
            job,
            splits: 0,
            world_ranks,
            selector,
            plans: HashMap::new(),
            programs: Default::default(),
            broken: None,
            creating: None,
            matrix: None,
            split: None,
            meter,
            flight,
            live: None,
            replan_base: None,
            health: None,
            comm_id: id_comm as u32,
            levels: Vec::new(),
            lost: Default::default(),
            revoke_watch: None,
        }
        .with_revoke_watch())
    }

    /// A world communicator's heartbeat monitor (`crate::health`), unless heartbeats are
    /// off or the world has one rank; its peers' addresses are awaited within `deadline`.
    fn start_heartbeat(&mut self, deadline: Instant) -> Result<()> {
        let Some(period) = self.cfg.heartbeat.filter(|_| self.world > 1) else {
            return Ok(());
        };
        let hosts = (0..self.world)
            .map(|r| self.tr.peer_host(r).unwrap_or_default().to_string())
            .collect();
        let monitor = crate::health::Monitor::start(crate::health::Start {
            period,
            store: &self.store,
            namespace: &self.namespace,
            me: self.rank,
            world: self.world,
            hosts,
            key: self.tr.job_key().clone(),
            ip: self.tr.local_addr()?.ip(),
            deadline,
        })?;
        self.health = Some(monitor);
        Ok(())
    }

    /// With progress deadlines on: the level of each link, from the topology or the hosts.
    fn set_levels(&mut self) {
        if self.cfg.progress.is_none() {
            return;
        }
        let hosts: Vec<Option<&str>> = (0..self.world).map(|r| self.tr.peer_host(r)).collect();
        self.levels =
            crate::deadlines::levels(self.rank, self.selector.topology().map(|t| &**t), &hosts);
    }

    /// [`Self::tune`] with every call of it bounded by creation's deadline
    /// (`TOPOCCL_INIT_TIMEOUT`) as well as its own.
    fn tune_within(&mut self, deadline: Instant) -> Result<()> {
        self.creating = Some(deadline);
        let tuned = self.tune();
        self.creating = None;
        self.watch_links();
        self.set_levels();
        tuned
    }

    /// With metrics on: starts watching the links (`crate::live`), their baselines the
    /// links measured at creation.
    pub(crate) fn watch_links(&mut self) {
        if let Some(meter) = &self.meter {
            // Capacities only where a topology file states them: a measured figure is what
            // one probe achieved, not what the link can carry.
            let stated = self.cfg.topo.is_some();
            let mut router = self
                .selector
                .topology()
                .filter(|t| stated && t.world() == self.world)
                .map(|t| topoccl_topo::route::Router::new(t));
            let mut capacity = |r: Rank| {
                let route = router.as_mut()?.route(self.rank, r).ok()?;
                Some(route.bottleneck)
            };
            let facts: Vec<PeerFacts> = (0..self.world)
                .map(|r| PeerFacts {
                    host: self.tr.peer_host(r).map(str::to_string),
                    capacity_bps: if r == self.rank { None } else { capacity(r) },
                })
                .collect();
            self.live = Live::new(
                self.namespace.clone(),
                self.rank,
                self.world_ranks.clone(),
                facts,
                self.matrix.as_deref(),
                meter.metrics().clone(),
                &self.cfg,
            );
        }
    }

    /// Measures the network and agrees on it (see [`crate::probe`]).
    fn tune(&mut self) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        if self.cfg.probe {
            let net = crate::probe::measure(self)?;
            self.selector.net = net;
        }
        // A topology file is the refined model: measure on top of it only when asked.
        let measure = self.cfg.matrix.unwrap_or(
            self.cfg.probe
                && self.cfg.topo.is_none()
                && self.world <= crate::config::MATRIX_MAX_RANKS,
        );
        if measure {
            let hosts = (0..self.world)
                .map(|r| {
                    self.tr
                        .peer_addr(r)
                        .map_or_else(String::new, |a| a.ip().to_string())
                })
                .collect();
            self.matrix = Some(Arc::new(crate::probe::measure_matrix(self, hosts)?));
        }
        let topology = match (&self.cfg.topo, &self.matrix) {
            (Some(path), m) => Some(crate::topology::from_file(path, self.world, m.as_deref())?),
            (None, Some(m)) => Some(
                m.to_topology()
                    .map_err(|e| Error::Config(format!("the measured link matrix: {e}")))?,
            ),
            (None, None) => None,
        };
        let overhead = self.matrix.as_ref().map_or(0.0, |m| m.peer_overhead());
        self.selector.set_topology(topology.map(Arc::new), overhead);
        self.plans.clear();
        Ok(())
    }

    /// Splits the ranks into disjoint communicators, as `MPI_Comm_split` does: every rank
    /// of this communicator must call it (in the same order as its other calls); ranks
    /// passing the same `color` form one new communicator, ordered by `key` and then by
    /// their rank here. `None` (MPI's `MPI_UNDEFINED`) takes part but joins none.
    ///
    /// The new communicators meet in this one's store, inherit its settings and measured
    /// network (no second probe), and have their own connections and deadlines.
    pub fn split(&mut self, color: Option<u32>, key: u32) -> Result<Option<Communicator>> {
        self.usable()?;
        let mine = [color.map_or(-1, i64::from), i64::from(key)];
        let mut all = vec![0i64; 2 * self.world as usize];
        self.all_gather(&mine, &mut all)?;
        self.splits += 1;
        let Some(color) = color else {
            return Ok(None);
        };
        let mut members: Vec<(i64, Rank)> = (0..self.world)
            .filter(|&r| all[2 * r as usize] == i64::from(color))
            .map(|r| (all[2 * r as usize + 1], r))
            .collect();
        members.sort_unstable();
        let rank = members
            .iter()
            .position(|&(_, r)| r == self.rank)
            .expect("this rank passed its own color") as Rank;
        let namespace = format!("{}/split{}/color{color}", self.namespace, self.splits);
        let mine: Vec<Rank> = members.iter().map(|&(_, r)| r).collect();
        let child = self.successor(namespace, rank, &mine)?;
        Ok(Some(child))
    }

    /// A communicator of `members` (ranks of this one, in their new order; this rank is
    /// `rank` there) meeting under `namespace` in this one's store: it inherits the
    /// settings, the measured network, and the link matrix and topology restricted to
    /// the members (no second probe). What `split` and `shrink` make.
    pub(crate) fn successor(
        &self,
        namespace: String,
        rank: Rank,
        members: &[Rank],
    ) -> Result<Communicator> {
        let deadline = Instant::now() + self.cfg.init_timeout;
        let ip = self.tr.local_addr()?.ip();
        let mut child = Self::rendezvous(
            self.store.clone(),
            self.server.clone(),
            namespace,
            rank,
            members.len() as u32,
            ip,
            self.job,
            members
                .iter()
                .map(|&r| self.world_ranks[r as usize])
                .collect(),
            self.cfg.clone(),
            deadline,
        )?;
        child.selector.net = self.selector.net;
        child.matrix = self
            .matrix
            .as_deref()
            .map(|m| Arc::new(m.restrict(members)));
        child.watch_links();
        let topology = self
            .selector
            .topology()
            .map(|t| t.restrict(members))
            .transpose();
        child.selector.set_topology(
            topology
                .map_err(|e| Error::Config(format!("topology of the new communicator: {e}")))?
                .map(Arc::new),
            self.selector.overhead(),
        );
        child
            .selector
            .set_dead_links(self.selector.dead_links().restrict(members));
        child.health = self.health.clone();
        child.set_levels();
        Ok(child)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_0_hosts_the_store_where_the_job_meets() {
        let local = host_store(&StoreAddr::Tcp("127.0.0.1:0".into()), None).unwrap();
        assert!(
            local.local_addr().ip().is_loopback(),
            "{}",
            local.local_addr()
        );
        let named = host_store(&StoreAddr::Tcp("localhost:0".into()), None).unwrap();
        assert!(
            named.local_addr().ip().is_loopback(),
            "{}",
            named.local_addr()
        );
        let e = match host_store(&StoreAddr::Tcp("127.0.0.1".into()), None) {
            Ok(_) => panic!("an address without a port was hosted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("has no port"), "{e}");
    }
}
