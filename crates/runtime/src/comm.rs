//! The communicator: a group of ranks that run collectives together.
//!
//! Creation meets the other ranks in the rendezvous store (shared secret, listening
//! addresses), then every call plans its collective (cached per call shape), executes the
//! plan for this rank over TCP with a deadline, and checks the buffers it was given.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use topoccl_plan::cost::UniformNetwork;
use topoccl_plan::exec::kernels::finish_avg;
use topoccl_plan::machine::RankMachine;
use topoccl_plan::{
    Buf, Collective, CollectiveSpec, CountMatrix, Op, OpKind, Placement, Plan, Rank, ReduceOp,
    Slice,
};

use crate::config::Config;
use crate::env::LaunchInfo;
use crate::error::{Error, Result};
use crate::exec::{self, Buffers, CallInfo, Departed, Dtype, OneOp, Storage};
use crate::select::Selector;
use crate::store::{Store, StoreAddr, StoreError, TcpStoreServer};
use crate::transport::{AbortHandle, Identity, Transport};
use crate::wire::{self, describe_call, Header, Kind, FNV_OFFSET};
use topoccl_topo::matrix::LinkMatrix;
use topoccl_topo::Topology;

/// World communicators created by this process so far: their rendezvous keys must differ.
static WORLDS: AtomicU64 = AtomicU64::new(0);

/// Plans kept per communicator (one per distinct call shape).
const PLAN_CACHE: usize = 512;

/// Network assumed before (or without) the probe.
pub const DEFAULT_NET: UniformNetwork = UniformNetwork {
    alpha_s: 20e-6,
    bandwidth_bytes_per_s: 2e9,
    gamma_s_per_byte: 1.0 / 4e9,
};

pub struct Communicator {
    rank: Rank,
    world: u32,
    cfg: Config,
    tr: Transport,
    departed: Departed,
    seq: u64,
    p2p_sent: HashMap<Rank, u64>,
    p2p_received: HashMap<Rank, u64>,
    store: Arc<dyn Store>,
    /// The store this process hosts (rank 0 of a world), shared with sub-communicators.
    server: Option<Arc<TcpStoreServer>>,
    namespace: String,
    /// Hash of the job id, carried in every handshake.
    job: u64,
    /// `split` calls so far: every rank makes them in the same order, so the count names
    /// the split in the store.
    splits: u64,
    /// The rank in the world communicator of each rank of this one.
    world_ranks: Vec<Rank>,
    selector: Selector,
    plans: HashMap<u64, (Plan, u64)>,
    broken: Option<String>,
    /// Measured at creation (world communicators; splits take their share).
    matrix: Option<Arc<LinkMatrix>>,
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// The user's buffers for one call.
enum UserBufs<'a, T> {
    OutOfPlace { input: &'a [T], output: &'a mut [T] },
    InPlace(&'a mut [T]),
}

fn fnv_u64s(values: &[u64]) -> u64 {
    values
        .iter()
        .fold(FNV_OFFSET, |h, v| wire::fnv1a(&v.to_le_bytes(), h))
}

/// A cheap key of everything a plan depends on besides the algorithm.
fn spec_key(spec: &CollectiveSpec) -> u64 {
    let mut h = fnv_u64s(&[
        spec.collective as u64,
        spec.world as u64,
        spec.root as u64,
        spec.count,
        spec.dtype as u64,
        spec.op as u64,
    ]);
    if let Some(m) = &spec.counts {
        for i in 0..m.world() {
            for j in 0..m.world() {
                h = wire::fnv1a(&m.get(i, j).to_le_bytes(), h);
            }
        }
    }
    h
}

/// What every rank of a call must agree on: spec, algorithm and parameters.
fn fingerprint(plan: &Plan) -> u64 {
    let algo = serde_json::to_vec(plan.algorithm()).expect("algorithms serialise");
    let params = plan.params();
    wire::fnv1a(
        &algo,
        fnv_u64s(&[
            spec_key(plan.spec()),
            params.chunks as u64,
            params.channels as u64,
        ]),
    )
}

fn secret_from(text: &str) -> [u8; 32] {
    let mut s = [0u8; 32];
    for (i, chunk) in s.chunks_mut(8).enumerate() {
        let h = wire::fnv1a(text.as_bytes(), wire::fnv1a(&[i as u8], FNV_OFFSET));
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    s
}

/// The address to listen on: the named interface, or the one that reaches the store.
fn listen_ip(cfg: &Config, store: &StoreAddr) -> Result<IpAddr> {
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
    match store {
        StoreAddr::Tcp(hostport) => {
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
        StoreAddr::File(_) => Ok(if_addrs::get_if_addrs()
            .ok()
            .and_then(|ifs| {
                ifs.into_iter()
                    .find(|i| !i.is_loopback() && i.ip().is_ipv4())
                    .map(|i| i.ip())
            })
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))),
    }
}

fn host_store(addr: &StoreAddr) -> Result<TcpStoreServer> {
    let StoreAddr::Tcp(hostport) = addr else {
        return Err(Error::Config(
            "only a TCP store can be hosted by rank 0".into(),
        ));
    };
    let port = hostport
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| Error::Config(format!("store address {hostport} has no port")))?;
    Ok(TcpStoreServer::start(&format!("0.0.0.0:{port}"))?)
}

impl Communicator {
    /// Creates the world communicator from the launcher's environment and `TOPOCCL_*`
    /// settings.
    pub fn from_env() -> Result<Communicator> {
        Self::init(LaunchInfo::from_env()?, Config::from_env()?)
    }

    /// Creates the world communicator.
    pub fn init(info: LaunchInfo, mut cfg: Config) -> Result<Communicator> {
        cfg.spin
            .get_or_insert(crate::config::default_spin(info.local_world));
        let deadline = Instant::now() + cfg.init_timeout;
        let server = if info.host_store {
            Some(Arc::new(host_store(&info.store)?))
        } else {
            None
        };
        let store = info.store.open(deadline)?;
        let generation = WORLDS.fetch_add(1, Ordering::SeqCst);
        let namespace = format!("topoccl/{}/world{generation}", info.job_id);
        let ip = listen_ip(&cfg, &info.store)?;
        let job = wire::fnv1a(info.job_id.as_bytes(), FNV_OFFSET);
        let mut comm = Self::rendezvous(
            store, server, namespace, info.rank, info.world, ip, job, cfg, deadline,
        )?;
        comm.tune()?;
        Ok(comm)
    }

    /// Creates a communicator that meets in `store` (any [`Store`]: one the caller hosts
    /// or shares). `name` separates communicators that share a store and job.
    pub fn with_store(
        store: Arc<dyn Store>,
        rank: Rank,
        world: u32,
        job_id: &str,
        name: &str,
        mut cfg: Config,
    ) -> Result<Communicator> {
        // Ranks sharing a store this way are usually threads or processes of one host.
        cfg.spin.get_or_insert(crate::config::default_spin(world));
        if world == 0 || rank >= world {
            return Err(Error::Config(format!(
                "rank {rank} is not in a world of {world} ranks"
            )));
        }
        let deadline = Instant::now() + cfg.init_timeout;
        let ip = match &cfg.ifname {
            Some(_) => listen_ip(&cfg, &StoreAddr::File(Default::default()))?,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let job = wire::fnv1a(job_id.as_bytes(), FNV_OFFSET);
        let namespace = format!("topoccl/{job_id}/{name}");
        let mut comm =
            Self::rendezvous(store, None, namespace, rank, world, ip, job, cfg, deadline)?;
        comm.tune()?;
        Ok(comm)
    }

    #[allow(clippy::too_many_arguments)]
    fn rendezvous(
        store: Arc<dyn Store>,
        server: Option<Arc<TcpStoreServer>>,
        namespace: String,
        rank: Rank,
        world: u32,
        ip: IpAddr,
        job: u64,
        cfg: Config,
        deadline: Instant,
    ) -> Result<Communicator> {
        let key = |k: &str| format!("{namespace}/{k}");
        let secret = match &cfg.secret {
            Some(s) => secret_from(s),
            None => {
                if store.add(&key("secret-claim"), 1)? == 1 {
                    let mut s = [0u8; 32];
                    getrandom::fill(&mut s)
                        .map_err(|e| Error::Io(format!("no randomness for the job secret: {e}")))?;
                    store.set(&key("secret"), &s)?;
                    s
                } else {
                    let v = store.get(&key("secret"), deadline).map_err(|e| {
                        Error::Rendezvous(format!("the job secret never appeared: {e}"))
                    })?;
                    v.try_into().map_err(|_| {
                        Error::Rendezvous("the job secret in the store is malformed".into())
                    })?
                }
            }
        };
        let id = Identity {
            rank,
            world,
            job,
            comm: wire::fnv1a(namespace.as_bytes(), FNV_OFFSET),
            secret,
        };
        let mut tr = Transport::bind(id, SocketAddr::new(ip, 0), cfg.streams)?;
        let addr = tr.local_addr()?;
        store.set(&key(&format!("addr/{rank}")), addr.to_string().as_bytes())?;
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
        let mut addrs = Vec::with_capacity(world as usize);
        for (r, k) in keys.iter().enumerate() {
            let v = store.get(k, deadline)?;
            let a: SocketAddr = String::from_utf8_lossy(&v).parse().map_err(|_| {
                Error::Rendezvous(format!("rank {r} published an unreadable address"))
            })?;
            addrs.push(a);
        }
        tr.set_addrs(addrs);
        let mut selector = Selector::new(DEFAULT_NET, cfg.streams);
        if let Some(a) = &cfg.algo {
            selector = selector.with_algo_env(a)?;
        }
        if let Some(path) = &cfg.rules {
            let json = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("TOPOCCL_RULES={path}: {e}")))?;
            selector = selector.with_rules_json(&json, path)?;
        }
        Ok(Communicator {
            rank,
            world,
            cfg,
            tr,
            departed: HashMap::new(),
            seq: 0,
            p2p_sent: HashMap::new(),
            p2p_received: HashMap::new(),
            store,
            server,
            namespace,
            job,
            splits: 0,
            world_ranks: (0..world).collect(),
            selector,
            plans: HashMap::new(),
            broken: None,
            matrix: None,
        })
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
        let overhead = self.matrix.as_ref().map_or(0.0, |m| m.min_latency());
        self.selector.set_topology(topology.map(Arc::new), overhead);
        self.plans.clear();
        Ok(())
    }

    /// The rank-to-rank latencies and bandwidths measured at creation, if they were.
    pub fn link_matrix(&self) -> Option<&LinkMatrix> {
        self.matrix.as_deref()
    }

    /// The topology the algorithm choice uses, if any (measured or from `TOPOCCL_TOPO`).
    pub fn topology(&self) -> Option<&Arc<Topology>> {
        self.selector.topology()
    }

    pub fn rank(&self) -> Rank {
        self.rank
    }

    pub fn world(&self) -> u32 {
        self.world
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The rank in the world communicator (the launcher's) of this communicator's `rank`:
    /// the identity to look for in logs when an error names a rank of a split.
    pub fn world_rank(&self, rank: Rank) -> Option<Rank> {
        self.world_ranks.get(rank as usize).copied()
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
            self.cfg.clone(),
            deadline,
        )?;
        child.selector.net = self.selector.net;
        let mine: Vec<Rank> = members.iter().map(|&(_, r)| r).collect();
        child.matrix = self.matrix.as_deref().map(|m| Arc::new(m.restrict(&mine)));
        let topology = self
            .selector
            .topology()
            .map(|t| t.restrict(&mine))
            .transpose();
        child.selector.set_topology(
            topology
                .map_err(|e| Error::Config(format!("topology of the split: {e}")))?
                .map(Arc::new),
            self.selector.overhead(),
        );
        child.world_ranks = members
            .iter()
            .map(|&(_, r)| self.world_ranks[r as usize])
            .collect();
        Ok(Some(child))
    }

    /// The network the algorithm choice assumes (measured at creation).
    pub fn network(&self) -> UniformNetwork {
        self.selector.net
    }

    /// Sets the deadline of later calls.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.cfg.timeout = timeout;
    }

    /// A handle another thread can use to abort this communicator, even during a call.
    pub fn abort_handle(&self) -> AbortHandle {
        self.tr.abort_handle()
    }

    /// Aborts: tells the peers and fails every later call.
    pub fn abort(&mut self, reason: &str) {
        self.tr.abort_handle().abort();
        self.tr.broadcast_abort(&wire::AbortNotice {
            origin: self.rank,
            culprit: None,
            reason: reason.to_string(),
        });
        self.broken = Some(format!("aborted by this rank: {reason}"));
    }

    /// The store this communicator met in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn usable(&self) -> Result<()> {
        if let Some(b) = &self.broken {
            return Err(Error::CommAborted(b.clone()));
        }
        self.tr.check_abort()
    }

    /// The plan for `spec` and the fingerprint peers must agree on.
    fn plan(&mut self, spec: &CollectiveSpec) -> Result<(Plan, u64)> {
        let key = spec_key(spec);
        if let Some(p) = self.plans.get(&key) {
            return Ok(p.clone());
        }
        let plan = self.selector.plan(spec)?;
        let fp = fingerprint(&plan);
        if self.plans.len() >= PLAN_CACHE {
            self.plans.clear();
        }
        self.plans.insert(key, (plan.clone(), fp));
        Ok((plan, fp))
    }

    /// The plan this communicator would use for `spec` (what a call with it runs).
    pub fn plan_for(&mut self, spec: &CollectiveSpec) -> Result<Plan> {
        Ok(self.plan(spec)?.0)
    }

    fn collective<T: Dtype>(
        &mut self,
        mut spec: CollectiveSpec,
        bufs: UserBufs<'_, T>,
    ) -> Result<()> {
        self.usable()?;
        spec.dtype = T::DTYPE;
        self.check_buffers(&spec, &bufs)?;
        let (plan, fingerprint) = self.plan(&spec)?;
        self.execute(&plan, fingerprint, bufs)
    }

    /// Runs a given plan (built by the caller, e.g. from a topology; every rank must pass
    /// the same plan) out of place. The plan's dtype must be `T`'s.
    pub fn run_plan<T: Dtype>(&mut self, plan: &Plan, input: &[T], output: &mut [T]) -> Result<()> {
        self.run_given(plan, UserBufs::OutOfPlace { input, output })
    }

    /// Runs a given plan in place.
    pub fn run_plan_in_place<T: Dtype>(&mut self, plan: &Plan, buf: &mut [T]) -> Result<()> {
        self.run_given(plan, UserBufs::InPlace(buf))
    }

    fn run_given<T: Dtype>(&mut self, plan: &Plan, bufs: UserBufs<'_, T>) -> Result<()> {
        self.usable()?;
        let spec = plan.spec();
        if spec.world != self.world || spec.dtype != T::DTYPE {
            return Err(Error::Config(format!(
                "the plan is for {} but this communicator has {} ranks and the buffers hold {}",
                spec.describe(),
                self.world,
                T::DTYPE
            )));
        }
        self.check_buffers(spec, &bufs)?;
        self.execute(plan, fingerprint(plan), bufs)
    }

    fn check_buffers<T>(&self, spec: &CollectiveSpec, bufs: &UserBufs<'_, T>) -> Result<()> {
        let r = self.rank;
        let (need_in, need_out) = (spec.input_len(r), spec.output_len(r));
        let size_err = |what, got: usize, needed, hint| Error::BufferSize {
            what,
            got,
            needed,
            hint,
        };
        let alias = spec.in_place_alias(r);
        match &bufs {
            UserBufs::OutOfPlace { input, output } => {
                if input.len() as u64 != need_in {
                    return Err(size_err(
                        "the input",
                        input.len(),
                        need_in,
                        "see the collective's buffer sizes",
                    ));
                }
                if output.len() as u64 != need_out {
                    return Err(size_err(
                        "the output",
                        output.len(),
                        need_out,
                        "see the collective's buffer sizes",
                    ));
                }
            }
            UserBufs::InPlace(buf) => {
                let need = match alias {
                    Some(a) => spec.buffer_len(r, a.outer, 0),
                    None => need_in.max(need_out),
                };
                if buf.len() as u64 != need {
                    return Err(size_err(
                        "the in-place buffer",
                        buf.len(),
                        need,
                        "in place, the buffer is the larger of input and output",
                    ));
                }
            }
        }
        Ok(())
    }

    fn execute<T: Dtype>(
        &mut self,
        plan: &Plan,
        fingerprint: u64,
        bufs: UserBufs<'_, T>,
    ) -> Result<()> {
        let spec = plan.spec().clone();
        let r = self.rank;
        let need_out = spec.output_len(r);
        let alias = spec.in_place_alias(r);
        self.seq += 1;
        let name = describe_call(
            spec.collective,
            self.seq,
            spec.dtype,
            spec.count,
            spec.op,
            spec.root,
        );
        let call = CallInfo {
            kind: Kind::Data,
            seq: self.seq,
            fingerprint,
            header: Header {
                kind: Kind::Data,
                collective: Some(spec.collective),
                dtype: spec.dtype,
                op: spec.op,
                channel: 0,
                link_seq: 0,
                seq: self.seq,
                count: spec.count,
                len: 0,
                fingerprint,
                root: spec.root,
            },
            name,
            op: spec.op,
            p2p_from: None,
        };
        let scratch = Storage::Own(vec![T::default(); plan.scratch_len(r) as usize]);
        let (placement, mut buffers) = match bufs {
            UserBufs::OutOfPlace { input, output } => (
                Placement::OutOfPlace,
                Buffers {
                    bufs: [Storage::Ro(input), Storage::Rw(output), scratch],
                },
            ),
            UserBufs::InPlace(buf) => {
                let mut b = [Storage::Missing, Storage::Missing, scratch];
                let outer = match alias {
                    Some(a) => a.outer,
                    None if need_out == 0 => Buf::Input,
                    None => Buf::Output,
                };
                b[outer.index()] = Storage::Rw(buf);
                (Placement::InPlace, Buffers { bufs: b })
            }
        };
        let mut machine = RankMachine::new(plan, r, placement, plan.params().in_flight);
        let deadline = Instant::now() + self.cfg.timeout;
        let result = exec::run(
            &mut self.tr,
            &mut self.departed,
            &call,
            &mut machine,
            &mut buffers,
            deadline,
            self.cfg.timeout,
            self.cfg.spin.unwrap_or_default(),
        );
        let result =
            result.map_err(|e| self.fail(self.diagnose(e, call.seq, &call.name), &call.name));
        result?;
        // `Avg` divides once, at the end, where the output is.
        if let Some(out) = match alias {
            Some(a) if placement == Placement::InPlace && a.outer == Buf::Input => {
                let [i, _, _] = &mut buffers.bufs;
                i.get_mut()
                    .map(|s| &mut s[a.offset as usize..(a.offset + need_out) as usize])
            }
            _ => {
                let [_, o, _] = &mut buffers.bufs;
                o.get_mut()
            }
        } {
            finish_avg(&spec, r, out);
        }
        Ok(())
    }

    /// Turns a timeout into a verdict: every rank that timed out in call `seq` records in
    /// the store whom it waits for; searching that wait-for graph from this rank finds the
    /// ranks that never reported — not in the call, stuck elsewhere, or dead. Other errors
    /// pass through.
    fn diagnose(&self, e: Error, seq: u64, name: &str) -> Error {
        let Error::Timeout {
            op,
            after,
            waiting,
            ranks,
        } = e
        else {
            return e;
        };
        let key = |r: Rank| format!("{}/stuck/{seq}/{r}", self.namespace);
        let record: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
        if ranks.is_empty()
            || self
                .store
                .set(&key(self.rank), record.join(",").as_bytes())
                .is_err()
        {
            return Error::Timeout {
                op,
                after,
                waiting,
                ranks,
            };
        }
        // Others time out at about the same moment; give them a moment to report.
        let grace = (after / 4).min(Duration::from_millis(1500));
        let until = Instant::now() + grace;
        let mut seen = vec![self.rank];
        let mut frontier = ranks.clone();
        let mut silent = Vec::new();
        while let Some(at) = frontier.pop() {
            if seen.contains(&at) {
                continue;
            }
            seen.push(at);
            let report = loop {
                match self.store.try_get(&key(at)) {
                    Ok(Some(v)) => break Some(v),
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => break None,
                }
            };
            match report {
                Some(v) => frontier.extend(
                    String::from_utf8_lossy(&v)
                        .split(',')
                        .filter_map(|s| s.parse::<Rank>().ok()),
                ),
                None => silent.push(at),
            }
        }
        silent.sort();
        if silent.is_empty() {
            return Error::Timeout {
                op,
                after,
                waiting: format!(
                    "{waiting} (every rank involved is waiting on another: a deadlock or \
                     mismatched calls)"
                ),
                ranks,
            };
        }
        let list: Vec<String> = silent.iter().map(|r| r.to_string()).collect();
        Error::Timeout {
            op,
            after,
            waiting: format!(
                "rank{} {} did not take part in {name} (never entered the call, stuck elsewhere \
                 or dead); this rank was waiting for: {waiting}",
                if silent.len() > 1 { "s" } else { "" },
                list.join(", ")
            ),
            ranks: silent,
        }
    }

    fn spec(&self, c: Collective, count: u64) -> CollectiveSpec {
        CollectiveSpec::new(c, self.world, count)
    }

    /// `output = ⊕ over ranks of input`.
    pub fn all_reduce<T: Dtype>(
        &mut self,
        input: &[T],
        output: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        let spec = self
            .spec(Collective::AllReduce, input.len() as u64)
            .with_op(op);
        self.collective(spec, UserBufs::OutOfPlace { input, output })
    }

    pub fn all_reduce_in_place<T: Dtype>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let spec = self
            .spec(Collective::AllReduce, buf.len() as u64)
            .with_op(op);
        self.collective(spec, UserBufs::InPlace(buf))
    }

    /// Root's `buf` to every rank's `buf`.
    pub fn broadcast<T: Dtype>(&mut self, buf: &mut [T], root: Rank) -> Result<()> {
        let spec = self
            .spec(Collective::Broadcast, buf.len() as u64)
            .with_root(root);
        self.collective(spec, UserBufs::InPlace(buf))
    }

    /// Root's `input` to every rank's `output` (`input` is ignored elsewhere: pass `&[]`).
    pub fn broadcast_into<T: Dtype>(
        &mut self,
        input: &[T],
        output: &mut [T],
        root: Rank,
    ) -> Result<()> {
        let spec = self
            .spec(Collective::Broadcast, output.len() as u64)
            .with_root(root);
        let input = if self.rank == root { input } else { &[] };
        self.collective(spec, UserBufs::OutOfPlace { input, output })
    }

    /// `output` at the root = ⊕ of every rank's `input` (`output` is `&mut []` elsewhere).
    pub fn reduce<T: Dtype>(
        &mut self,
        input: &[T],
        output: &mut [T],
        op: ReduceOp,
        root: Rank,
    ) -> Result<()> {
        let spec = self
            .spec(Collective::Reduce, input.len() as u64)
            .with_op(op)
            .with_root(root);
        self.collective(spec, UserBufs::OutOfPlace { input, output })
    }

    pub fn reduce_in_place<T: Dtype>(
        &mut self,
        buf: &mut [T],
        op: ReduceOp,
        root: Rank,
    ) -> Result<()> {
        let spec = self
            .spec(Collective::Reduce, buf.len() as u64)
            .with_op(op)
            .with_root(root);
        self.collective(spec, UserBufs::InPlace(buf))
    }

    /// Every rank's `input` (count elements) concatenated in rank order into `output`.
    pub fn all_gather<T: Dtype>(&mut self, input: &[T], output: &mut [T]) -> Result<()> {
        let spec = self.spec(Collective::AllGather, input.len() as u64);
        self.collective(spec, UserBufs::OutOfPlace { input, output })
    }

    /// In place: `buf` holds world × count elements; this rank's block is its input.
    pub fn all_gather_in_place<T: Dtype>(&mut self, buf: &mut [T]) -> Result<()> {
        let count = self.block_count(buf.len(), "all_gather_in_place")?;
        let spec = self.spec(Collective::AllGather, count);
        self.collective(spec, UserBufs::InPlace(buf))
    }

    /// Block r of the ⊕ of every rank's `input` (world × count) into rank r's `output`.
    pub fn reduce_scatter<T: Dtype>(
        &mut self,
        input: &[T],
        output: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        let spec = self
            .spec(Collective::ReduceScatter, output.len() as u64)
            .with_op(op);
        self.collective(spec, UserBufs::OutOfPlace { input, output })
    }

    /// In place: the result lands in this rank's block of `buf`.
    pub fn reduce_scatter_in_place<T: Dtype>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let count = self.block_count(buf.len(), "reduce_scatter_in_place")?;
        let spec = self.spec(Collective::ReduceScatter, count).with_op(op);
        self.collective(spec, UserBufs::InPlace(buf))
    }

    /// Every rank's `input` into the root's `output` in rank order.
    pub fn gather<T: Dtype>(&mut self, input: &[T], output: &mut [T], root: Rank) -> Result<()> {
        let spec = self
            .spec(Collective::Gather, input.len() as u64)
            .with_root(root);
        self.collective(spec, UserBufs::OutOfPlace { input, output })
    }

    /// Block r of the root's `input` into rank r's `output`.
    pub fn scatter<T: Dtype>(&mut self, input: &[T], output: &mut [T], root: Rank) -> Result<()> {
        let spec = self
            .spec(Collective::Scatter, output.len() as u64)
            .with_root(root);
        self.collective(spec, UserBufs::OutOfPlace { input, output })
    }

    /// Block j of rank i's `input` into block i of rank j's `output`.
    pub fn all_to_all<T: Dtype>(&mut self, input: &[T], output: &mut [T]) -> Result<()> {
        let count = self.block_count(input.len(), "all_to_all")?;
        let spec = self.spec(Collective::AllToAll, count);
        self.collective(spec, UserBufs::OutOfPlace { input, output })
    }

    /// All-to-all with per-pair counts (`matrix`, the same on every rank).
    pub fn all_to_all_v<T: Dtype>(
        &mut self,
        input: &[T],
        output: &mut [T],
        matrix: &CountMatrix,
    ) -> Result<()> {
        let spec = CollectiveSpec::all_to_all_v(matrix.clone());
        if spec.world != self.world {
            return Err(Error::Config(format!(
                "the all-to-all-v matrix is {}×{} but the communicator has {} ranks",
                spec.world, spec.world, self.world
            )));
        }
        self.collective(spec, UserBufs::OutOfPlace { input, output })
    }

    /// Returns once every rank has entered the barrier.
    pub fn barrier(&mut self) -> Result<()> {
        let spec = self.spec(Collective::Barrier, 0);
        self.collective::<u8>(
            spec,
            UserBufs::OutOfPlace {
                input: &[],
                output: &mut [],
            },
        )
    }

    /// Runs a collective given as a spec (count per rank, NCCL convention) out of place.
    pub fn run<T: Dtype>(
        &mut self,
        spec: CollectiveSpec,
        input: &[T],
        output: &mut [T],
    ) -> Result<()> {
        self.collective(spec, UserBufs::OutOfPlace { input, output })
    }

    /// Runs a collective given as a spec in place (the buffer is the larger of input and
    /// output, laid out as NCCL does).
    pub fn run_in_place<T: Dtype>(&mut self, spec: CollectiveSpec, buf: &mut [T]) -> Result<()> {
        self.collective(spec, UserBufs::InPlace(buf))
    }

    fn block_count(&self, len: usize, what: &str) -> Result<u64> {
        if len as u64 % self.world as u64 != 0 {
            return Err(Error::Config(format!(
                "{what}: a buffer of {len} elements does not split into {} equal blocks",
                self.world
            )));
        }
        Ok(len as u64 / self.world as u64)
    }

    fn p2p<T: Dtype>(
        &mut self,
        peer: Rank,
        send: Option<&[T]>,
        recv: Option<&mut [T]>,
    ) -> Result<()> {
        self.usable()?;
        if peer >= self.world || peer == self.rank {
            return Err(Error::Config(format!(
                "peer {peer} is not another rank of this communicator of {}",
                self.world
            )));
        }
        let len = send
            .map(|s| s.len())
            .or(recv.as_ref().map(|r| r.len()))
            .unwrap_or(0) as u64;
        let recv_from = send.is_none().then_some(peer);
        let (kind, counter) = match send {
            Some(_) => (
                OpKind::Send {
                    peer,
                    src: Slice::new(Buf::Input, 0, len),
                },
                self.p2p_sent.entry(peer).or_insert(0),
            ),
            None => (
                OpKind::Recv {
                    peer,
                    dst: Slice::new(Buf::Output, 0, len),
                },
                self.p2p_received.entry(peer).or_insert(0),
            ),
        };
        *counter += 1;
        let seq = *counter;
        let fingerprint = fnv_u64s(&[T::DTYPE as u64, len]);
        let name = format!(
            "{} #{seq} {}×{len} {} rank {peer}",
            if send.is_some() { "send" } else { "recv" },
            T::DTYPE,
            if send.is_some() { "to" } else { "from" }
        );
        let call = CallInfo {
            kind: Kind::P2p,
            seq,
            fingerprint,
            header: Header {
                kind: Kind::P2p,
                collective: None,
                dtype: T::DTYPE,
                op: ReduceOp::Sum,
                channel: 0,
                link_seq: 0,
                seq,
                count: len,
                len: 0,
                fingerprint,
                root: 0,
            },
            name,
            p2p_from: recv_from,
            op: ReduceOp::Sum,
        };
        let mut buffers = Buffers {
            bufs: [
                send.map(Storage::Ro).unwrap_or(Storage::Missing),
                recv.map(Storage::Rw).unwrap_or(Storage::Missing),
                Storage::Missing,
            ],
        };
        let mut prog = OneOp::new(Op {
            round: 0,
            channel: 0,
            kind,
        });
        let deadline = Instant::now() + self.cfg.timeout;
        let result = exec::run(
            &mut self.tr,
            &mut self.departed,
            &call,
            &mut prog,
            &mut buffers,
            deadline,
            self.cfg.timeout,
            self.cfg.spin.unwrap_or_default(),
        );
        result.map_err(|e| self.fail(e, &call.name))
    }

    /// A failed call breaks the communicator (its connections are mid-frame) and tells
    /// the other ranks, so they stop with the same verdict instead of timing out.
    fn fail(&mut self, e: Error, name: &str) -> Error {
        self.tr.broadcast_abort(&exec::abort_notice(self.rank, &e));
        self.broken = Some(format!("{name} failed: {e}"));
        e
    }

    /// Sends `buf` to `peer` (matched with the peer's `recv` in order).
    pub fn send<T: Dtype>(&mut self, buf: &[T], peer: Rank) -> Result<()> {
        self.p2p(peer, Some(buf), None)
    }

    /// Receives `buf.len()` elements from `peer`.
    pub fn recv<T: Dtype>(&mut self, buf: &mut [T], peer: Rank) -> Result<()> {
        self.p2p::<T>(peer, None, Some(buf))
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        if self.broken.is_none() {
            self.tr.say_goodbye();
        }
    }
}
