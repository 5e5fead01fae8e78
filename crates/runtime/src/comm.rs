//! The communicator: a group of ranks that run collectives together.
//!
//! Every call plans its collective (cached per call shape), executes the plan for this
//! rank over the transports with a deadline (its program compiled once per call shape and
//! placement, [`crate::programs`]), and checks the buffers it was given.
//! Creation (rendezvous, transports, probes) is `crate::create`'s.

use std::collections::HashMap;
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
use crate::deadlines::{Level, ProgressDeadlines};
use crate::error::{Error, Result};
use crate::exec::{self, Buffers, CallWatch, Deadline, Departed, Dtype, OneOp, Storage};
use crate::flight::Recorder;
use crate::health::{Monitor, PeerHealth};
use crate::live::Live;
use crate::matcher::{CallInfo, CallName, Matcher};
use crate::metrics::Meter;
use crate::programs::Programs;
use crate::select::Selector;
use crate::split::TimeSplit;
use crate::store::{Store, TcpStoreServer};
use crate::transport::{AbortHandle, TransportKind, Transports};
use crate::wire::{self, Header, Kind, FNV_OFFSET};
use topoccl_topo::matrix::LinkMatrix;
use topoccl_topo::Topology;

/// Plans kept per communicator (one per distinct call shape).
const PLAN_CACHE: usize = 512;

/// Network assumed before (or without) the probe.
pub const DEFAULT_NET: UniformNetwork = UniformNetwork {
    alpha_s: 20e-6,
    bandwidth_bytes_per_s: 2e9,
    gamma_s_per_byte: 1.0 / 4e9,
};

pub struct Communicator {
    pub(crate) rank: Rank,
    pub(crate) world: u32,
    pub(crate) cfg: Config,
    pub(crate) tr: Transports,
    pub(crate) departed: Departed,
    /// Frame matching state, kept between calls.
    pub(crate) matcher: Matcher,
    pub(crate) seq: u64,
    pub(crate) p2p_sent: HashMap<Rank, u64>,
    pub(crate) p2p_received: HashMap<Rank, u64>,
    pub(crate) store: Arc<dyn Store>,
    /// The store this process hosts (rank 0 of a world), shared with sub-communicators.
    pub(crate) server: Option<Arc<TcpStoreServer>>,
    pub(crate) namespace: String,
    /// Hash of the job id, carried in every handshake.
    pub(crate) job: u64,
    /// `split` calls so far: every rank makes them in the same order, so the count names
    /// the split in the store.
    pub(crate) splits: u64,
    /// The rank in the world communicator of each rank of this one.
    pub(crate) world_ranks: Vec<Rank>,
    pub(crate) selector: Selector,
    /// Plans by a hash of the spec asked for, with that spec (a hit must equal it).
    pub(crate) plans: HashMap<u64, CachedPlan>,
    /// Compiled programs per call shape and placement; fingerprints of given plans.
    pub(crate) programs: Programs,
    pub(crate) broken: Option<String>,
    /// While creating: the deadline of creation (`TOPOCCL_INIT_TIMEOUT`), which bounds the
    /// calls of the measurements too.
    pub(crate) creating: Option<Instant>,
    /// Measured at creation (world communicators; splits take their share).
    pub(crate) matrix: Option<Arc<LinkMatrix>>,
    /// Where calls' time goes, while measured ([`Communicator::measure_time_split`]).
    pub(crate) split: Option<TimeSplit>,
    /// Prometheus metrics, when on (`TOPOCCL_METRICS`).
    pub(crate) meter: Option<Meter>,
    /// The flight recorder, unless off (`TOPOCCL_FLIGHT_ENTRIES=0`).
    pub(crate) flight: Option<Recorder>,
    /// The live links (`crate::live`), while metrics are on; made after creation's
    /// measurements.
    pub(crate) live: Option<Live>,
    /// The model the first re-plan started from: every re-plan lowers it afresh, so
    /// lowerings never compound (`crate::replan`).
    pub(crate) replan_base: Option<Arc<topoccl_topo::Topology>>,
    /// The world's heartbeat monitor (`crate::health`), shared by splits; `None` while
    /// heartbeats are off or in a one-rank world.
    pub(crate) health: Option<Arc<Monitor>>,
    /// This communicator's id in beats (a hash of its name).
    pub(crate) comm_id: u32,
    /// With progress deadlines on: the level of the link to each rank
    /// (`crate::deadlines`).
    pub(crate) levels: Vec<Level>,
    /// Peers a failed call found gone (closed connection, goodbye, garbage): the evidence
    /// this rank brings to `shrink`'s agreement (`crate::elastic`). At most `world` ranks.
    pub(crate) lost: std::collections::BTreeSet<Rank>,
    /// With `TOPOCCL_ELASTIC=1`: the thread that aborts this communicator when another
    /// rank revokes it through the store (`crate::elastic`).
    pub(crate) revoke_watch: Option<crate::elastic::RevokeWatch>,
}

/// What a call passes the executor about the heartbeat monitor.
fn call_watch<'a>(
    health: &'a Option<Arc<Monitor>>,
    comm: u32,
    world_ranks: &'a [Rank],
    progress: Option<ProgressDeadlines>,
    levels: &'a [Level],
) -> Option<CallWatch<'a>> {
    let monitor = health.as_deref()?;
    Some(CallWatch {
        monitor,
        comm,
        world_ranks,
        deadlines: progress.map(|d| (d, levels)),
    })
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

/// An entry of the plan cache.
pub(crate) struct CachedPlan {
    asked: CollectiveSpec,
    plan: Plan,
    fingerprint: u64,
}

/// The user's buffers for one call.
pub(crate) enum UserBufs<'a, T> {
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

impl Communicator {
    /// This communicator's flight recorder as a dump (reason: request), or `None` when the
    /// recorder is off (`TOPOCCL_FLIGHT_ENTRIES=0`). [`crate::flight`] says where dumps
    /// are written on errors and `SIGUSR1`.
    pub fn flight_dump(&self) -> Option<topoccl_watch::flight::Dump> {
        self.flight.as_ref().map(|f| {
            f.dump(
                topoccl_watch::flight::DumpReason::Request,
                Some("requested".into()),
            )
        })
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

    /// The transport each rank of this communicator is reached by from this rank (its own
    /// entry says TCP); peers not connected yet show the planned one.
    pub fn transports(&self) -> Vec<TransportKind> {
        self.tr.summary()
    }

    /// The host key of `rank` (boot id and network namespace), as it published it.
    pub fn host_of(&self, rank: Rank) -> Option<&str> {
        self.tr.peer_host(rank)
    }

    /// Peers with which shared memory failed and TCP was used instead, and why.
    pub fn transport_fallbacks(&self) -> &[(Rank, String)] {
        &self.tr.fallbacks
    }

    /// The network the algorithm choice assumes (measured at creation).
    pub fn network(&self) -> UniformNetwork {
        self.selector.net
    }

    /// Starts (`true`) or stops measuring where this rank's time inside calls goes (copy,
    /// reduce, wait; [`TimeSplit`]). Measuring reads the clock around every part of a
    /// call, which small messages notice: time calls without it.
    pub fn measure_time_split(&mut self, on: bool) {
        self.split = on.then(|| self.split.unwrap_or_default());
    }

    /// The split of the calls since measuring started or since the last `take`; `None`
    /// when not measuring.
    pub fn take_time_split(&mut self) -> Option<TimeSplit> {
        self.split.as_mut().map(std::mem::take)
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

    /// What this rank's heartbeat monitor says of every rank of this communicator
    /// (itself included, as alive), in rank order: alive, left, dead (exited or
    /// unreachable) or hung (stopped, or stuck in a call), since when and who says so
    /// (`crate::health`). Empty while heartbeats are off (`TOPOCCL_HEARTBEAT=off`) or in a
    /// one-rank world.
    pub fn peer_health(&self) -> Vec<PeerHealth> {
        self.health
            .as_ref()
            .map_or_else(Vec::new, |m| m.peer_health(&self.world_ranks))
    }

    /// Links this communicator's plans avoid because a shrink found them dead while both
    /// ends lived on (world ranks, lower first; `crate::elastic`).
    pub fn dead_links(&self) -> Vec<(Rank, Rank)> {
        let w = |r: Rank| self.world_ranks[r as usize];
        self.selector.dead_links().map(w).iter().collect()
    }

    /// The ranks of this communicator believed dead or hung right now, in order (empty
    /// while heartbeats are off).
    pub fn failed_peers(&self) -> Vec<Rank> {
        self.health
            .as_ref()
            .map_or_else(Vec::new, |m| m.failed_of(&self.world_ranks))
    }

    pub(crate) fn usable(&self) -> Result<()> {
        if let Some(b) = &self.broken {
            return Err(Error::CommAborted(b.clone()));
        }
        self.tr.check_abort()
    }

    /// The plan for `spec` and the fingerprint peers must agree on.
    fn plan(&mut self, spec: &CollectiveSpec) -> Result<(Plan, u64)> {
        let key = spec_key(spec);
        // The key is a hash: the entry is used only for the very spec it was made for.
        if let Some(p) = self.plans.get(&key).filter(|p| p.asked == *spec) {
            return Ok((p.plan.clone(), p.fingerprint));
        }
        let plan = self.selector.plan(spec)?;
        let fp = fingerprint(&plan);
        if self.plans.len() >= PLAN_CACHE {
            self.plans.clear();
        }
        self.plans.insert(
            key,
            CachedPlan {
                asked: spec.clone(),
                plan: plan.clone(),
                fingerprint: fp,
            },
        );
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
        let fingerprint = self.programs.fingerprint(plan, fingerprint);
        self.execute(plan, fingerprint, bufs)
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
        let flags = self.replan_flags(&spec);
        self.seq += 1;
        let name = CallName::Collective {
            collective: spec.collective,
            seq: self.seq,
            dtype: spec.dtype,
            count: spec.count,
            op: spec.op,
            root: spec.root,
        };
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
                flags,
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
        let deadline = self.deadline();
        let began = self.meter.as_ref().map(Meter::enter);
        // The program compiled once per call shape; too long to compile: generated as it
        // runs.
        let mut generated: RankMachine;
        let compiled = self.programs.machine(plan, fingerprint, r, placement);
        let (seq, timeout) = (self.seq, self.cfg.timeout);
        let recorded = self.flight.as_mut().map(|f| {
            f.enter(seq, plan, fingerprint, timeout, || {
                compiled
                    .as_ref()
                    .map_or_else(Vec::new, |m| crate::flight::peers_of(m.program().ops()))
            })
        });
        let machine: &mut dyn exec::Program = match compiled {
            Some(m) => m,
            None => {
                generated = RankMachine::new(plan, r, placement, plan.params().in_flight);
                &mut generated
            }
        };
        let result = exec::run(
            &mut self.tr,
            &mut self.matcher,
            &mut self.departed,
            &call,
            machine,
            &mut buffers,
            deadline,
            self.split.as_mut(),
            self.live.as_mut(),
            call_watch(
                &self.health,
                self.comm_id,
                &self.world_ranks,
                self.cfg.progress,
                &self.levels,
            ),
        );
        let agreed = self.matcher.flags();
        if let (Some(m), Some(began)) = (&mut self.meter, began) {
            m.leave(plan, fingerprint, began, &result);
        }
        if let Some(live) = &mut self.live {
            live.after_call();
        }
        if let Err(e) = result {
            let name = call.name.to_string();
            let e = self.diagnose(e, call.seq, &name);
            if let (Some(f), Some(id)) = (&self.flight, recorded) {
                let failed = Err(e.clone());
                f.leave(id, &failed);
                match f.write_after(&e) {
                    Ok(p) => {
                        tracing::error!("{name} failed; flight recorder written to {}", p.display())
                    }
                    Err(w) => tracing::warn!(
                        "cannot write the flight recorder to {}: {w}",
                        f.path().display()
                    ),
                }
            }
            return Err(self.fail(e, &name));
        }
        if let (Some(f), Some(id)) = (&self.flight, recorded) {
            f.leave(id, &Ok(()));
        }
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
        self.replan_after(&spec, agreed)
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
        let name = CallName::P2p {
            send: send.is_some(),
            seq,
            dtype: T::DTYPE,
            len,
            peer,
        };
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
                flags: 0,
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
        let deadline = self.deadline();
        let result = exec::run(
            &mut self.tr,
            &mut self.matcher,
            &mut self.departed,
            &call,
            &mut prog,
            &mut buffers,
            deadline,
            self.split.as_mut(),
            self.live.as_mut(),
            call_watch(
                &self.health,
                self.comm_id,
                &self.world_ranks,
                self.cfg.progress,
                &self.levels,
            ),
        );
        result.map_err(|e| self.fail(e, &call.name.to_string()))
    }

    fn deadline(&self) -> Deadline {
        let own = Instant::now() + self.cfg.timeout;
        let (at, timeout, setting) = match self.creating {
            Some(end) if end < own => (end, self.cfg.init_timeout, "TOPOCCL_INIT_TIMEOUT"),
            _ => (own, self.cfg.timeout, "TOPOCCL_TIMEOUT"),
        };
        Deadline {
            at,
            timeout,
            setting,
            polling: crate::transport::Polling {
                spin: self.cfg.spin.unwrap_or_default(),
                yielding: self.cfg.yielding.unwrap_or_default(),
            },
        }
    }

    /// A failed call breaks the communicator (its connections are mid-frame) and tells
    /// the other ranks, so they stop with the same verdict instead of timing out.
    fn fail(&mut self, e: Error, name: &str) -> Error {
        if let Error::PeerFailed { rank, .. } = &e {
            self.lost.insert(*rank);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_cache_entry_serves_only_the_spec_it_was_made_for() {
        let cfg = Config {
            probe: false,
            ..Config::default()
        };
        let store: Arc<dyn Store> = Arc::new(crate::store::MemStore::new());
        let mut comm = Communicator::with_store(store, 0, 1, "cache", "world", cfg).unwrap();
        let a = CollectiveSpec::new(topoccl_plan::Collective::AllReduce, 1, 64);
        let b = CollectiveSpec::new(topoccl_plan::Collective::AllReduce, 1, 128);
        let (plan_b, fp_b) = comm.plan(&b).unwrap();
        // A colliding key: `a`'s slot holds `b`'s plan.
        comm.plans.insert(
            spec_key(&a),
            CachedPlan {
                asked: b.clone(),
                plan: plan_b,
                fingerprint: fp_b,
            },
        );
        let (plan_a, _) = comm.plan(&a).unwrap();
        assert_eq!(plan_a.spec(), &a);
        let mut buf = vec![1.0f32; 64];
        comm.all_reduce_in_place(&mut buf, ReduceOp::Sum).unwrap();
        assert_eq!(buf, vec![1.0f32; 64]);
    }
}
