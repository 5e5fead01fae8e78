//! Elastic membership: revoke, shrink, grow and join.
//!
//! After a failure the survivors of a communicator agree on who failed and continue on a
//! new communicator without them ([`Communicator::shrink`]); at a step boundary the
//! members admit replacements that asked to join ([`Communicator::grow`],
//! [`Communicator::join`]). This module owns the agreement through the job's store and
//! the join queue; making the new communicator is `crate::create`'s (`successor`, the
//! code `split` uses too).
//!
//! ## Shrink, step by step
//!
//! 1. **Revoke.** The rank entering `shrink` aborts the old communicator unless a failed
//!    call already did: its peers blocked in a call get [`Error::Aborted`] at once (the
//!    abort notice travels ahead of any close on the same control connection, so a
//!    revoking peer is never taken for a dead one) and enter `shrink` too.
//! 2. **Register.** Each survivor writes `SHRINK/reg/RANK` with the peers its failed call
//!    found gone (`Communicator::lost`: closed connection, goodbye, garbage).
//! 3. **Decide.** The lowest registered rank decides once every rank has registered or is
//!    known failed ([`known_failed`]: the registered evidence; the one place the
//!    heartbeat monitor's verdicts plug in), or when `TOPOCCL_SHRINK_WAIT` has passed
//!    since it entered (a hung or very late rank is then left out). The failed set is
//!    every rank that did not register, plus the deciders of earlier rounds.
//! 4. **Publish once.** The decider wins `add(SHRINK/fence, 1) == 1` before it writes
//!    `SHRINK/decision`: whatever races, exactly one decision per attempt is ever
//!    published, and every survivor reads that one.
//! 5. **Fail over.** A survivor that sees no decision within two waits of its own entry
//!    starts the next round without that round's decider (at most [`MAX_ROUNDS`]).
//! 6. **Continue.** Survivors renumber in their old order and meet under a new namespace
//!    (`ROOT/elastic/EPOCH-ATTEMPT`); a rank that finds itself in the failed set gets
//!    [`Error::Evicted`].
//! 7. **Around dead links.** A survivor registered as gone by another survivor is alive:
//!    the link between them is dead ([`dead_between_survivors`]); so is one registered as
//!    silent (its beats stopped reaching the registering rank) while a third survivor
//!    still heard it. The decision carries
//!    those links; the new communicator's plans avoid them and every link found dead
//!    before (`crate::select`, `topoccl_plan::avoid`); nobody is left out for them.
//!
//! Limits: the store must outlive the failure (a launcher-hosted or standalone store; a
//! store hosted by a rank dies with it). A decider that dies between its fence and its
//! publish (two store calls back to back) leaves the attempt undecided: every survivor
//! gets [`Error::Timeout`] naming it and may call `shrink` again (a new attempt). Every
//! wait has a deadline: at most `(MAX_ROUNDS + 1) × 2 × TOPOCCL_SHRINK_WAIT` for the
//! agreement, then `TOPOCCL_INIT_TIMEOUT` for the new rendezvous.
//!
//! ## Grow and join
//!
//! A replacement calls [`Communicator::join`] (or `from_env` with `TOPOCCL_JOIN=1`): it
//! takes a ticket `n = add(topoccl/join/count, 1)` and writes `topoccl/join/n` = its job
//! id, launch rank, a nonce and the MAC of the three under the job's key; then waits for
//! its verdict. [`Communicator::grow`] is collective over the members: rank 0 reads the
//! tickets after the job's cursor (at most [`MAX_JOINERS`] per call), refuses and logs
//! those with a bad MAC (a wrong secret), logs and skips those of another job id (they may
//! belong to another job sharing the store), and broadcasts the admitted ones; all
//! members and the admitted replacements then meet under the next epoch's namespace.
//! The grown communicator keeps the measured network (every rank must pick the same
//! plans) but no link matrix or topology: those covered the old ranks only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use topoccl_plan::avoid::DeadLinks;
use topoccl_plan::cost::UniformNetwork;
use topoccl_plan::Rank;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::{fresh, JobKey, Use, MAC_LEN, NONCE_LEN};
use crate::comm::Communicator;
use crate::config::Config;
use crate::env::LaunchInfo;
use crate::error::{Error, Result};
use crate::store::{Store, StoreError};
use crate::transport::AbortHandle;
use crate::wire::{self, FNV_OFFSET};

/// Rounds of deciding before `shrink` gives up (each round's decider may have died).
pub const MAX_ROUNDS: u32 = 3;

/// Replacements admitted by one `grow` (later tickets wait for the next call).
pub const MAX_JOINERS: usize = 64;

/// How often waits look at the store.
const POLL: Duration = Duration::from_millis(5);

/// How long one look of the revocation watch waits in the store.
const WATCH_WAIT: Duration = Duration::from_secs(1);

/// The thread that aborts a communicator when another rank revokes it (`TOPOCCL_ELASTIC`):
/// a rank blocked on a hung peer has no connection that would tell it, the store does.
/// Dropping it stops the thread within [`WATCH_WAIT`].
#[derive(Debug)]
pub(crate) struct RevokeWatch {
    stop: Arc<AtomicBool>,
}

impl Drop for RevokeWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn revoked_key(namespace: &str) -> String {
    format!("{namespace}/revoked")
}

/// Waits for `key` in `store`, a second at a time, until it appears (then aborts through
/// `handle`) or `stop` is set.
fn watch(store: Arc<dyn Store>, key: String, handle: AbortHandle, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match store.wait(std::slice::from_ref(&key), Instant::now() + WATCH_WAIT) {
            Ok(()) => {
                if !stop.load(Ordering::SeqCst) {
                    handle.abort();
                }
                return;
            }
            Err(StoreError::Timeout { .. }) => {}
            // The store is gone or refuses: look again later, as long as the communicator is.
            Err(_) => std::thread::sleep(WATCH_WAIT),
        }
    }
}

/// The store keys of the join queue, shared by every job in a store (a process with
/// another job id must be seen to be refused).
const JOIN_COUNT: &str = "topoccl/join/count";

/// What `shrink` returns: the survivors' communicator, the ranks left out (as world
/// ranks, the launcher's numbering) and the membership epoch (changes since the world
/// communicator).
#[derive(Debug)]
pub struct Shrunk {
    pub comm: Communicator,
    pub failed: Vec<Rank>,
    /// Links between survivors found dead in this shrink (world ranks, lower first): the
    /// new communicator's plans avoid them, and those found earlier.
    pub dead_links: Vec<(Rank, Rank)>,
    pub epoch: u64,
}

/// A survivor's registration for a shrink: the peers it found gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Registration {
    lost: Vec<Rank>,
    /// Watched peers whose beats stopped reaching this rank (its own heartbeat view).
    #[serde(default)]
    silent: Vec<Rank>,
}

/// The one published answer of a shrink attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Decision {
    /// Ranks of the old communicator left out, ascending.
    failed: Vec<Rank>,
    /// Links between survivors that a survivor found gone (ranks of the old
    /// communicator, lower first): both ends live on, the plans avoid the link.
    #[serde(default)]
    dead_links: Vec<(Rank, Rank)>,
    decider: Rank,
    round: u32,
}

/// A replacement's request to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JoinRequest {
    job_id: String,
    /// The rank the launcher gave the replacement (its world rank in the new communicator).
    launch_rank: Rank,
    nonce: String,
    mac: String,
}

/// The answer to a join request.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Verdict {
    Admitted {
        namespace: String,
        rank: Rank,
        world: u32,
        world_ranks: Vec<Rank>,
        /// The members' measured network, as `f64::to_bits` (α, bandwidth, γ) and the
        /// per-peer overhead: every rank must pick the same plans.
        net: [u64; 3],
        overhead: u64,
        /// Links the members' plans avoid (ranks of the grown communicator).
        #[serde(default)]
        dead_links: Vec<(Rank, Rank)>,
    },
    Refused {
        reason: String,
    },
}

/// Whether `TOPOCCL_JOIN` asks this process to join a running job.
pub fn join_requested(lookup: &dyn Fn(&str) -> Option<String>) -> Result<bool> {
    match lookup("TOPOCCL_JOIN").as_deref().map(str::trim) {
        None | Some("") | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(v) => Err(Error::Config(format!(
            "TOPOCCL_JOIN={v}: use 1 (join a running job as a replacement) or 0"
        ))),
    }
}

/// The lineage of a namespace: the namespace the first communicator of it had, and the
/// membership epoch (`ROOT/elastic/EPOCH-ATTEMPT`; any other namespace is epoch 0).
pub(crate) fn lineage(namespace: &str) -> (&str, u64) {
    if let Some((root, tail)) = namespace.rsplit_once("/elastic/") {
        if let Some(epoch) = tail
            .split_once('-')
            .and_then(|(e, _)| e.parse::<u64>().ok())
        {
            return (root, epoch);
        }
    }
    (namespace, 0)
}

/// The namespace of a lineage's communicator of `epoch`, made by attempt `attempt`.
fn epoch_namespace(root: &str, epoch: u64, attempt: u64) -> String {
    format!("{root}/elastic/{epoch}-{attempt}")
}

/// The failure evidence the agreement may act on before its wait is over. This is the one
/// function where the heartbeat monitor's verdicts (`Communicator::failed_peers`) join the
/// evidence.
///
/// With heartbeats on, only the monitor's verdicts count, and from them only `dead` and
/// `hung (stopped)`: a rank seen stuck inside a call may be waiting on a straggler and
/// register in a moment, and a peer a survivor lost may be alive behind a dead link (it
/// must get the time to register, or the link's end would be left out). With heartbeats
/// off, the peers the registered survivors found gone count instead. Evidence only ends
/// the wait early: a rank that registers survives whatever is said about it.
fn known_failed(comm: &Communicator, regs: &BTreeMap<Rank, Registration>) -> BTreeSet<Rank> {
    if comm.health.is_none() {
        return regs.values().flat_map(|r| r.lost.iter().copied()).collect();
    }
    comm.peer_health()
        .into_iter()
        .filter(|h| h.state.is_dead() || h.state == crate::PeerState::HungStopped)
        .map(|h| h.rank)
        .collect()
}

/// The decision, if the decider may make it now: once every rank of `world` registered
/// or is known failed, or once `waited_out`. Registered ranks survive unless they decided
/// an earlier round (`passed`); everyone else is failed. Pure, so every rank's rule is
/// the same.
fn decide(
    world: u32,
    registered: &BTreeSet<Rank>,
    known: &BTreeSet<Rank>,
    passed: &BTreeSet<Rank>,
    waited_out: bool,
) -> Option<Vec<Rank>> {
    let accounted = (0..world).all(|r| registered.contains(&r) || known.contains(&r));
    if !accounted && !waited_out {
        return None;
    }
    Some(
        (0..world)
            .filter(|r| !registered.contains(r) || passed.contains(r))
            .collect(),
    )
}

/// The links a decision keeps dead, between survivors (both registered): where one
/// registered the other as lost (its connection was cut, closed or refused), and where one
/// registered the other as silent (its beats stopped) while some other survivor did not
/// (a paused process falls silent to every watcher at once; a dead link to one). Pure.
fn dead_between_survivors(
    regs: &BTreeMap<Rank, Registration>,
    failed: &[Rank],
) -> Vec<(Rank, Rank)> {
    let survives = |r: &Rank| regs.contains_key(r) && !failed.contains(r);
    let heard_by_another = |w: Rank, x: Rank| {
        regs.iter()
            .any(|(&o, reg)| o != w && o != x && survives(&o) && !reg.silent.contains(&x))
    };
    let mut dead = DeadLinks::new();
    for (&r, reg) in regs.iter().filter(|(r, _)| survives(r)) {
        for &p in reg.lost.iter().filter(|p| survives(p)) {
            dead.insert(r, p);
        }
        for &p in reg.silent.iter().filter(|p| survives(p)) {
            if heard_by_another(r, p) {
                dead.insert(r, p);
            }
        }
    }
    dead.iter().collect()
}

/// The decider of a round: the lowest registered rank that did not decide an earlier one.
fn decider(registered: &BTreeSet<Rank>, passed: &BTreeSet<Rank>) -> Option<Rank> {
    registered.iter().copied().find(|r| !passed.contains(r))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The MAC a replacement proves the job's key with.
fn join_mac(key: &JobKey, job_id: &str, launch_rank: Rank, nonce: &[u8]) -> [u8; MAC_LEN] {
    key.mac(
        Use::Join,
        &[job_id.as_bytes(), &launch_rank.to_le_bytes(), nonce],
    )
}

/// Why a join request is refused, if it is (`None`: admit it).
fn check_request(key: &JobKey, job_id: &str, req: &JoinRequest) -> Option<String> {
    let (Some(nonce), Some(mac)) = (unhex(&req.nonce), unhex(&req.mac)) else {
        return Some("its request is malformed".into());
    };
    if nonce.len() != NONCE_LEN {
        return Some("its nonce is malformed".into());
    }
    if !key.verify(
        Use::Join,
        &[
            req.job_id.as_bytes(),
            &req.launch_rank.to_le_bytes(),
            &nonce,
        ],
        &mac,
    ) {
        return Some(format!(
            "it does not prove job {job_id}'s key (a wrong TOPOCCL_SECRET)"
        ));
    }
    None
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("elastic records serialise")
}

fn timed_out(op: &str, after: Duration, waiting: String, ranks: Vec<Rank>) -> Error {
    Error::Timeout {
        op: op.into(),
        after,
        waiting,
        ranks,
    }
}

impl Communicator {
    /// With `TOPOCCL_ELASTIC=1`, starts watching the store for a revocation of this
    /// communicator; otherwise as it is.
    pub(crate) fn with_revoke_watch(mut self) -> Communicator {
        if self.cfg.elastic && self.world > 1 {
            let stop = Arc::new(AtomicBool::new(false));
            let (store, key, handle) = (
                self.store.clone(),
                revoked_key(&self.namespace),
                self.abort_handle(),
            );
            let flag = stop.clone();
            let started = std::thread::Builder::new()
                .name("topoccl-revoke-watch".into())
                .stack_size(128 * 1024)
                .spawn(move || watch(store, key, handle, flag));
            match started {
                Ok(_) => self.revoke_watch = Some(RevokeWatch { stop }),
                Err(e) => tracing::warn!(
                    "cannot start the revocation watch ({e}): ranks blocked on a hung peer \
                     will wait for their deadline before shrinking"
                ),
            }
        }
        self
    }

    /// Revokes this communicator: tells the connected peers (unless a failed call already
    /// did) and, through the store, every rank watching for it (`TOPOCCL_ELASTIC`), so
    /// peers blocked in a call see the abort at once and enter `shrink` too.
    fn revoke(&mut self) -> Result<()> {
        const WHY: &str = "revoked: a rank is shrinking the communicator after a failure";
        if self.broken.is_none() {
            self.abort(WHY);
        }
        // This rank's own watch must not abort what follows.
        self.revoke_watch = None;
        self.store
            .set(&revoked_key(&self.namespace), WHY.as_bytes())?;
        Ok(())
    }

    /// Agrees with the other survivors on the failed ranks and returns a communicator of
    /// the survivors, renumbered in their old order; see the module doc for the protocol.
    /// Every survivor must call it (after any error of a call, or to give up on a
    /// hung peer). Results on the new communicator equal those of a fresh communicator of
    /// the same ranks: it inherits settings, measured network, link matrix and topology
    /// restricted to the survivors, as [`Communicator::split`] does.
    ///
    /// The call that failed may have completed on some ranks and not on others: before
    /// going on, the survivors must agree on where they are (for example an all-reduce
    /// of their step with [`crate::ReduceOp::Min`] on the new communicator), or they would
    /// combine different steps' data.
    ///
    /// Errors: [`Error::Evicted`] when the others decided without this rank;
    /// [`Error::Timeout`] when no decision came within the rounds' deadlines.
    pub fn shrink(&mut self) -> Result<Shrunk> {
        self.revoke()?;
        self.splits += 1;
        let attempt = self.splits;
        let base = format!("{}/shrink{attempt}", self.namespace);
        let entered = Instant::now();
        let mine = Registration {
            lost: self.lost.iter().copied().collect(),
            silent: self
                .health
                .as_ref()
                .map_or_else(Vec::new, |m| m.silent_of(&self.world_ranks)),
        };
        self.store
            .set(&format!("{base}/reg/{}", self.rank), &json(&mine))?;
        let decision = self.agree(&base, entered)?;
        let (root, epoch) = lineage(&self.namespace);
        let (root, epoch) = (root.to_string(), epoch + 1);
        let failed_world: Vec<Rank> = decision
            .failed
            .iter()
            .map(|&r| self.world_ranks[r as usize])
            .collect();
        if decision.failed.contains(&self.rank) {
            return Err(Error::Evicted {
                rank: self.world_ranks[self.rank as usize],
                epoch,
                reason: format!(
                    "rank {} decided in round {} that ranks {:?} failed",
                    decision.decider, decision.round, failed_world
                ),
            });
        }
        let survivors: Vec<Rank> = (0..self.world)
            .filter(|r| !decision.failed.contains(r))
            .collect();
        let dead_world: Vec<(Rank, Rank)> = decision
            .dead_links
            .iter()
            .map(|&(a, b)| (self.world_ranks[a as usize], self.world_ranks[b as usize]))
            .collect();
        if !dead_world.is_empty() {
            tracing::warn!(
                "shrink: the links {} are dead (both ends live on); the plans avoid them",
                dead_world
                    .iter()
                    .map(|(a, b)| format!("{a}<->{b}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for &(a, b) in &decision.dead_links {
            self.selector.avoid_link(a, b);
        }
        let rank = survivors
            .iter()
            .position(|&r| r == self.rank)
            .expect("this rank survived") as Rank;
        tracing::info!(
            "shrink: ranks {failed_world:?} failed (decided by rank {} in round {}); this \
             rank continues as rank {rank} of {} (epoch {epoch})",
            decision.decider,
            decision.round,
            survivors.len()
        );
        let comm = self.successor(epoch_namespace(&root, epoch, attempt), rank, &survivors)?;
        Ok(Shrunk {
            comm,
            failed: failed_world,
            dead_links: dead_world,
            epoch,
        })
    }

    /// Reads registrations and the decision until one is published (see the module doc).
    fn agree(&self, base: &str, entered: Instant) -> Result<Decision> {
        let wait = self.cfg.shrink_wait;
        let decision_key = format!("{base}/decision");
        let mut regs: BTreeMap<Rank, Registration> = BTreeMap::new();
        let mut passed: BTreeSet<Rank> = BTreeSet::new();
        for round in 0..MAX_ROUNDS {
            // The decider decides within one wait of its entry; a follower gives it two.
            let decide_by = entered + wait * (round + 1);
            let give_up = entered + wait * 2 * (round + 1);
            let mut tried = false;
            loop {
                if let Some(v) = self.store.try_get(&decision_key)? {
                    return serde_json::from_slice(&v).map_err(|e| {
                        Error::Rendezvous(format!("the shrink decision is unreadable: {e}"))
                    });
                }
                for r in 0..self.world {
                    if regs.contains_key(&r) {
                        continue;
                    }
                    if let Some(v) = self.store.try_get(&format!("{base}/reg/{r}"))? {
                        // An unreadable registration still proves the rank alive.
                        regs.insert(r, serde_json::from_slice(&v).unwrap_or_default());
                    }
                }
                let registered: BTreeSet<Rank> = regs.keys().copied().collect();
                let now = Instant::now();
                if !tried && decider(&registered, &passed) == Some(self.rank) {
                    let known = known_failed(self, &regs);
                    if let Some(failed) =
                        decide(self.world, &registered, &known, &passed, now >= decide_by)
                    {
                        tried = true;
                        // Exactly one decision per attempt: the fence's first add wins.
                        if self.store.add(&format!("{base}/fence"), 1)? == 1 {
                            let d = Decision {
                                dead_links: dead_between_survivors(&regs, &failed),
                                failed,
                                decider: self.rank,
                                round,
                            };
                            self.store.set(&decision_key, &json(&d))?;
                            return Ok(d);
                        }
                    }
                }
                if now >= give_up {
                    break;
                }
                std::thread::sleep(POLL);
            }
            let registered: BTreeSet<Rank> = regs.keys().copied().collect();
            if let Some(d) = decider(&registered, &passed) {
                tracing::warn!(
                    "shrink: no decision from rank {d} in round {round}; deciding without it"
                );
                passed.insert(d);
            }
        }
        let waited = entered.elapsed();
        Err(timed_out(
            "shrink",
            waited,
            format!(
                "no decision on the failed ranks was published (deciders {passed:?} gave \
                 none); call shrink again, or raise TOPOCCL_SHRINK_WAIT"
            ),
            passed.into_iter().collect(),
        ))
    }

    /// Admits the replacements waiting to join (see the module doc): collective over this
    /// communicator's ranks, called at a step boundary. Returns the grown communicator
    /// (this rank keeps its number; replacements follow in ticket order), or `None` when
    /// nobody waits (this communicator stays usable).
    pub fn grow(&mut self) -> Result<Option<Communicator>> {
        self.usable()?;
        self.splits += 1;
        let attempt = self.splits;
        let (root, epoch) = lineage(&self.namespace);
        let (root, epoch) = (root.to_string(), epoch + 1);
        let namespace = epoch_namespace(&root, epoch, attempt);
        // [count, then per admitted replacement: ticket, launch rank].
        let mut msg = vec![0i64; 1 + 2 * MAX_JOINERS];
        if self.rank == 0 {
            let admitted = self.admissions(&root)?;
            msg[0] = admitted.len() as i64;
            for (i, (ticket, launch)) in admitted.iter().enumerate() {
                msg[1 + 2 * i] = *ticket as i64;
                msg[2 + 2 * i] = i64::from(*launch);
            }
        }
        self.broadcast(&mut msg, 0)?;
        let joiners = (msg[0].max(0) as usize).min(MAX_JOINERS);
        if joiners == 0 {
            return Ok(None);
        }
        let old = self.world;
        let world = old + joiners as u32;
        let mut world_ranks = self.world_ranks.clone();
        world_ranks.extend((0..joiners).map(|i| msg[2 + 2 * i] as Rank));
        if self.rank == 0 {
            let net = self.selector.net;
            for i in 0..joiners {
                let v = Verdict::Admitted {
                    namespace: namespace.clone(),
                    rank: old + i as u32,
                    world,
                    world_ranks: world_ranks.clone(),
                    net: [
                        net.alpha_s.to_bits(),
                        net.bandwidth_bytes_per_s.to_bits(),
                        net.gamma_s_per_byte.to_bits(),
                    ],
                    overhead: self.selector.overhead().to_bits(),
                    dead_links: self.selector.dead_links().iter().collect(),
                };
                self.store.set(
                    &format!("topoccl/join/{}/verdict", msg[1 + 2 * i]),
                    &json(&v),
                )?;
            }
        }
        let deadline = Instant::now() + self.cfg.init_timeout;
        let ip = self.tr.local_addr()?.ip();
        let mut child = Self::rendezvous(
            self.store.clone(),
            self.server.clone(),
            namespace,
            self.rank,
            world,
            ip,
            self.job,
            world_ranks,
            self.cfg.clone(),
            deadline,
        )?;
        child.selector.net = self.selector.net;
        child.selector.set_topology(None, self.selector.overhead());
        // Members keep their numbers: their dead links stay as they are.
        child
            .selector
            .set_dead_links(self.selector.dead_links().clone());
        child.watch_links();
        tracing::info!("grow: {joiners} replacement(s) admitted; {world} ranks from epoch {epoch}");
        Ok(Some(child))
    }

    /// Rank 0 of `grow`: the tickets after the job's cursor, checked; refusals written
    /// and logged; the cursor moved past what was read.
    fn admissions(&self, root: &str) -> Result<Vec<(u64, Rank)>> {
        let job_id = root.split('/').nth(1).unwrap_or("unknown").to_string();
        let cursor_key = format!("{root}/elastic/join-cursor");
        let count = self.store.add(JOIN_COUNT, 0)?.max(0) as u64;
        let cursor = self.store.add(&cursor_key, 0)?.max(0) as u64;
        let key = self.tr.id.key.clone();
        let mut admitted = Vec::new();
        let mut next = cursor;
        while next < count && admitted.len() < MAX_JOINERS {
            next += 1;
            let req_key = format!("topoccl/join/{next}");
            // A ticket taken but not written yet: look again at the next grow.
            let Some(v) = self.store.try_get(&req_key)? else {
                next -= 1;
                break;
            };
            let refuse = |reason: String| -> Result<()> {
                tracing::warn!("join request {next} refused: {reason}");
                self.store.set(
                    &format!("{req_key}/verdict"),
                    &json(&Verdict::Refused { reason }),
                )?;
                Ok(())
            };
            let req: JoinRequest = match serde_json::from_slice(&v) {
                Ok(r) => r,
                Err(e) => {
                    refuse(format!("its request is unreadable: {e}"))?;
                    continue;
                }
            };
            if req.job_id != job_id {
                tracing::warn!(
                    "join request {next} ignored: it names job '{}', not this job '{job_id}' \
                     (check TOPOCCL_JOB_ID)",
                    req.job_id
                );
                continue;
            }
            if let Some(reason) = check_request(&key, &job_id, &req) {
                refuse(reason)?;
                continue;
            }
            admitted.push((next, req.launch_rank));
        }
        self.store
            .add(&cursor_key, (next - cursor) as i64)
            .map_err(Error::from)?;
        Ok(admitted)
    }

    /// Joins a running job as a replacement: asks to join through the job's store (proving
    /// the job's key) and waits, up to `TOPOCCL_INIT_TIMEOUT`, until the members admit it
    /// at their next [`Communicator::grow`]. The job's world communicator must be the
    /// first one its processes made (namespace `topoccl/JOB/world0`).
    ///
    /// Errors: refused (wrong secret: [`Error::Handshake`]), or not admitted in time
    /// ([`Error::Timeout`], which also follows from a wrong job id).
    pub fn join(info: LaunchInfo, mut cfg: Config) -> Result<Communicator> {
        cfg.fill_polling(info.local_world);
        let deadline = Instant::now() + cfg.init_timeout;
        let store = info.store.open(cfg.job_key(), deadline)?;
        let ip = crate::create::listen_ip(&cfg, &info.store)?;
        let root = format!("topoccl/{}/world0", info.job_id);
        Self::join_in(store, info.rank, &info.job_id, &root, cfg, ip)
    }

    /// As [`Communicator::join`], for a job of [`Communicator::with_store`]
    /// communicators named `name` on this host (it listens on loopback).
    pub fn join_store(
        store: Arc<dyn Store>,
        launch_rank: Rank,
        job_id: &str,
        name: &str,
        mut cfg: Config,
    ) -> Result<Communicator> {
        cfg.fill_polling(1);
        let root = format!("topoccl/{job_id}/{name}");
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Self::join_in(store, launch_rank, job_id, &root, cfg, ip)
    }

    fn join_in(
        store: Arc<dyn Store>,
        launch_rank: Rank,
        job_id: &str,
        root: &str,
        cfg: Config,
        ip: IpAddr,
    ) -> Result<Communicator> {
        let deadline = Instant::now() + cfg.init_timeout;
        let key = match cfg.job_key() {
            Some(k) => k,
            // The fallback of a job without TOPOCCL_SECRET: the secret rests in the store.
            None => {
                let s = store
                    .get(&format!("{root}/secret"), deadline)
                    .map_err(|e| {
                        Error::Rendezvous(format!("the job secret never appeared: {e}"))
                    })?;
                JobKey::from_secret(&s)
            }
        };
        let nonce: [u8; NONCE_LEN] = fresh("the join nonce").map_err(Error::Io)?;
        let req = JoinRequest {
            job_id: job_id.to_string(),
            launch_rank,
            nonce: hex(&nonce),
            mac: hex(&join_mac(&key, job_id, launch_rank, &nonce)),
        };
        let ticket = store.add(JOIN_COUNT, 1)?;
        let req_key = format!("topoccl/join/{ticket}");
        store.set(&req_key, &json(&req))?;
        tracing::info!("join: request {ticket} written; waiting for the job to admit it");
        let v = store
            .get(&format!("{req_key}/verdict"), deadline)
            .map_err(|e| match e {
                StoreError::Timeout { .. } => timed_out(
                    "join",
                    cfg.init_timeout,
                    format!(
                        "no member of job '{job_id}' admitted request {ticket}: check that the \
                         job runs, calls grow() at its step boundaries, and that \
                         TOPOCCL_JOB_ID is its id"
                    ),
                    vec![],
                ),
                other => other.into(),
            })?;
        let verdict: Verdict = serde_json::from_slice(&v)
            .map_err(|e| Error::Rendezvous(format!("the join verdict is unreadable: {e}")))?;
        let (namespace, rank, world, world_ranks, net, overhead, dead_links) = match verdict {
            Verdict::Refused { reason } => {
                return Err(Error::Handshake {
                    rank: launch_rank,
                    reason: format!("the job refused this replacement: {reason}"),
                })
            }
            Verdict::Admitted {
                namespace,
                rank,
                world,
                world_ranks,
                net,
                overhead,
                dead_links,
            } => (
                namespace,
                rank,
                world,
                world_ranks,
                net,
                overhead,
                dead_links,
            ),
        };
        let job = wire::fnv1a(job_id.as_bytes(), FNV_OFFSET);
        let deadline = Instant::now() + cfg.init_timeout;
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
        comm.selector.net = UniformNetwork {
            alpha_s: f64::from_bits(net[0]),
            bandwidth_bytes_per_s: f64::from_bits(net[1]),
            gamma_s_per_byte: f64::from_bits(net[2]),
        };
        comm.selector.set_topology(None, f64::from_bits(overhead));
        comm.selector
            .set_dead_links(dead_links.into_iter().collect());
        comm.watch_links();
        Ok(comm)
    }

    /// The membership epoch: how many shrinks and grows led to this communicator.
    pub fn epoch(&self) -> u64 {
        lineage(&self.namespace).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::transport::faults;
    use proptest::prelude::*;
    use topoccl_plan::ReduceOp;

    fn set(v: &[Rank]) -> BTreeSet<Rank> {
        v.iter().copied().collect()
    }

    fn cfg(wait_ms: u64) -> Config {
        Config {
            probe: false,
            secret: Some("elastic test".into()),
            timeout: Duration::from_secs(10),
            init_timeout: Duration::from_secs(10),
            shrink_wait: Duration::from_millis(wait_ms),
            elastic: true,
            ..Config::default()
        }
    }

    #[test]
    fn the_decider_waits_for_every_rank_to_register_or_be_known_failed() {
        let none = BTreeSet::new();
        assert_eq!(decide(4, &set(&[0, 1, 3]), &none, &none, false), None);
        assert_eq!(
            decide(4, &set(&[0, 1, 3]), &set(&[2]), &none, false),
            Some(vec![2])
        );
        assert_eq!(
            decide(4, &set(&[0, 3]), &set(&[2]), &none, true),
            Some(vec![1, 2])
        );
        // A registered rank survives even when someone suspected it; an earlier round's
        // decider does not.
        assert_eq!(
            decide(4, &set(&[0, 1, 2, 3]), &set(&[2]), &set(&[0]), false),
            Some(vec![0])
        );
        assert_eq!(decider(&set(&[0, 1, 3]), &set(&[0])), Some(1));
        assert_eq!(decider(&set(&[0]), &set(&[0])), None);
    }

    proptest! {
        #[test]
        fn a_decision_is_exactly_the_unregistered_and_passed_ranks(
            world in 1u32..12,
            reg in proptest::collection::btree_set(0u32..12, 0..12),
            known in proptest::collection::btree_set(0u32..12, 0..12),
            passed in proptest::collection::btree_set(0u32..12, 0..3),
        ) {
            let reg: BTreeSet<Rank> = reg.into_iter().filter(|&r| r < world).collect();
            let d = decide(world, &reg, &known, &passed, true).unwrap();
            for r in 0..world {
                prop_assert_eq!(d.contains(&r), !reg.contains(&r) || passed.contains(&r));
            }
            prop_assert!(d.windows(2).all(|w| w[0] < w[1]));
            let early = decide(world, &reg, &known, &passed, false);
            let accounted = (0..world).all(|r| reg.contains(&r) || known.contains(&r));
            prop_assert_eq!(early.is_some(), accounted);
        }

        #[test]
        fn hex_round_trips(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(unhex(&hex(&b)), Some(b));
        }
    }

    #[test]
    fn lineages_and_join_settings_parse() {
        assert_eq!(lineage("topoccl/j/world0"), ("topoccl/j/world0", 0));
        assert_eq!(
            lineage("topoccl/j/world0/elastic/3-7"),
            ("topoccl/j/world0", 3)
        );
        assert_eq!(
            lineage("topoccl/j/w/elastic/x"),
            ("topoccl/j/w/elastic/x", 0)
        );
        assert!(!join_requested(&|_| None).unwrap());
        assert!(join_requested(&|_| Some("1".into())).unwrap());
        let e = join_requested(&|_| Some("yes".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TOPOCCL_JOIN=yes") && e.contains("use 1"), "{e}");
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    /// Inputs whose sum depends on the order of additions.
    fn inputs(world_rank: Rank) -> Vec<f32> {
        (0..1000)
            .map(|i| {
                let x = (i as f32 + 1.0) * 1e-3 + world_rank as f32;
                if (i + world_rank as usize) % 3 == 0 {
                    x * 1e7
                } else {
                    x / 7.0
                }
            })
            .collect()
    }

    /// What one thread-rank does after the failure.
    #[derive(Clone, Copy, PartialEq)]
    enum Role {
        Survivor,
        /// Closes its connections without a word (a crash).
        Crash,
        /// Stays connected but stops calling for a while, then tries to shrink.
        Hang(u64),
    }

    /// After a shrink: failed ranks, epoch, new rank, new world, the all-reduce's result.
    type AfterShrink = (Vec<Rank>, u64, Rank, u32, Vec<f32>);

    struct Outcome {
        world_rank: Rank,
        result: std::result::Result<AfterShrink, Error>,
    }

    /// `roles.len()` ranks in one process: one all-reduce together, then each plays its
    /// role; survivors call, shrink and all-reduce `inputs` on the shrunk communicator.
    fn run_failure(job: &str, roles: &[Role], wait_ms: u64) -> Vec<Outcome> {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let world = roles.len() as u32;
        let handles: Vec<_> = roles
            .iter()
            .enumerate()
            .map(|(r, &role)| {
                let store = store.clone();
                let job = job.to_string();
                std::thread::spawn(move || {
                    let mut comm =
                        Communicator::with_store(store, r as Rank, world, &job, "w", cfg(wait_ms))
                            .unwrap();
                    let mut buf = vec![1.0f32; 64];
                    comm.all_reduce_in_place(&mut buf, ReduceOp::Sum).unwrap();
                    match role {
                        Role::Crash => {
                            comm.broken = Some("simulated crash".into());
                            drop(comm);
                            return Outcome {
                                world_rank: r as Rank,
                                result: Err(Error::Io("crashed".into())),
                            };
                        }
                        Role::Hang(ms) => std::thread::sleep(Duration::from_millis(ms)),
                        Role::Survivor => {
                            let e = comm.all_reduce_in_place(&mut buf, ReduceOp::Sum);
                            assert!(e.is_err(), "a call with a dead rank succeeded");
                        }
                    }
                    let result = comm.shrink().and_then(|s| {
                        // Crashes and hangs kill no link between survivors.
                        assert!(s.dead_links.is_empty(), "{:?}", s.dead_links);
                        let mut c = s.comm;
                        let mut data = inputs(r as Rank);
                        c.all_reduce_in_place(&mut data, ReduceOp::Sum)?;
                        Ok((s.failed, s.epoch, c.rank(), c.world(), data))
                    });
                    Outcome {
                        world_rank: r as Rank,
                        result,
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// The all-reduce of `inputs` on a fresh communicator of `members` (world ranks).
    fn fresh_result(job: &str, members: &[Rank]) -> Vec<f32> {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let n = members.len() as u32;
        let handles: Vec<_> = members
            .iter()
            .enumerate()
            .map(|(i, &wr)| {
                let store = store.clone();
                let job = job.to_string();
                std::thread::spawn(move || {
                    let mut c =
                        Communicator::with_store(store, i as Rank, n, &job, "fresh", cfg(500))
                            .unwrap();
                    let mut data = inputs(wr);
                    c.all_reduce_in_place(&mut data, ReduceOp::Sum).unwrap();
                    data
                })
            })
            .collect();
        let all: Vec<Vec<f32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(all.windows(2).all(|w| w[0] == w[1]));
        all[0].clone()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn survivors_of_a_crash_shrink_and_match_a_fresh_communicator_bit_for_bit() {
        use Role::*;
        let out = run_failure("shrink1", &[Survivor, Survivor, Crash, Survivor], 5000);
        let fresh = fresh_result("shrink1f", &[0, 1, 3]);
        // The inputs do make the order of additions matter.
        let mut naive = inputs(0);
        for r in [1, 3] {
            for (a, b) in naive.iter_mut().zip(inputs(r)) {
                *a += b;
            }
        }
        let mut reordered = inputs(3);
        for r in [1, 0] {
            for (a, b) in reordered.iter_mut().zip(inputs(r)) {
                *a += b;
            }
        }
        assert_ne!(bits(&naive), bits(&reordered), "inputs too tame");
        for o in out.iter().filter(|o| o.world_rank != 2) {
            let (failed, epoch, rank, world, data) = o.result.clone().unwrap();
            assert_eq!(failed, vec![2]);
            assert_eq!(epoch, 1);
            assert_eq!(world, 3);
            assert_eq!(
                rank,
                [0, 1, 3].iter().position(|&w| w == o.world_rank).unwrap() as Rank
            );
            assert_eq!(bits(&data), bits(&fresh), "rank {}", o.world_rank);
        }
    }

    #[test]
    fn dead_links_need_both_ends_alive_and_a_silence_heard_by_others() {
        let reg = |lost: &[Rank], silent: &[Rank]| Registration {
            lost: lost.to_vec(),
            silent: silent.to_vec(),
        };
        // Rank 1 lost rank 2; rank 3 lost rank 4, which did not register (failed).
        let regs: BTreeMap<Rank, Registration> = [
            (0, reg(&[], &[])),
            (1, reg(&[2], &[])),
            (2, reg(&[], &[])),
            (3, reg(&[4], &[])),
        ]
        .into_iter()
        .collect();
        assert_eq!(dead_between_survivors(&regs, &[4]), vec![(1, 2)]);
        // A decider's earlier-round failure: no link to a rank left out.
        assert_eq!(dead_between_survivors(&regs, &[2, 4]), vec![]);
        // Ranks 0 and 3 stopped hearing each other; ranks 1 and 2 still hear both.
        let regs: BTreeMap<Rank, Registration> = [
            (0, reg(&[], &[3])),
            (1, reg(&[], &[])),
            (2, reg(&[], &[])),
            (3, reg(&[], &[0])),
        ]
        .into_iter()
        .collect();
        assert_eq!(dead_between_survivors(&regs, &[]), vec![(0, 3)]);
        // Everyone stopped hearing rank 2 (it was paused, then registered): no dead link.
        let regs: BTreeMap<Rank, Registration> = [
            (0, reg(&[], &[2])),
            (1, reg(&[], &[2])),
            (2, reg(&[], &[])),
            (3, reg(&[], &[2])),
        ]
        .into_iter()
        .collect();
        assert_eq!(dead_between_survivors(&regs, &[]), vec![]);
    }

    #[test]
    fn a_cut_link_keeps_every_rank_and_the_plans_go_around_it() {
        use topoccl_plan::avoid::first_used;
        use topoccl_plan::{Collective, CollectiveSpec};
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let handles: Vec<_> = (0..4u32)
            .map(|r| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut c = cfg(2000);
                    // Rank 0 cuts its link to rank 1 once 64 KiB have left on it.
                    c.algo = Some("ring".into());
                    if r == 0 {
                        c.faults = faults::parse("drop@0->1:after=64KB").unwrap();
                    }
                    let mut comm = Communicator::with_store(store, r, 4, "cut1", "w", c).unwrap();
                    let mut buf = vec![1.0f32; 64 << 10];
                    let mut failed = false;
                    for _ in 0..4 {
                        if comm.all_reduce_in_place(&mut buf, ReduceOp::Sum).is_err() {
                            failed = true;
                            break;
                        }
                    }
                    assert!(failed, "rank {r}: the cut never failed a call");
                    let s = comm.shrink().unwrap();
                    let mut c = s.comm;
                    let mut data = inputs(r);
                    c.all_reduce_in_place(&mut data, ReduceOp::Sum).unwrap();
                    let mut big = vec![r as f32; 1 << 20];
                    c.all_reduce_in_place(&mut big, ReduceOp::Sum).unwrap();
                    assert!(big.iter().all(|&x| x == 6.0), "rank {r}");
                    assert_eq!(c.dead_links(), vec![(0, 1)], "rank {r}");
                    let spec = CollectiveSpec::new(Collective::AllReduce, 4, 1 << 20);
                    let plan = c.plan_for(&spec).unwrap();
                    (
                        s.failed,
                        s.dead_links,
                        c.world(),
                        data,
                        plan,
                        c.tr.connected(1),
                    )
                })
            })
            .collect();
        let out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut dead = topoccl_plan::avoid::DeadLinks::new();
        dead.insert(0, 1);
        let exact: Vec<f64> = (0..1000)
            .map(|i| (0..4).map(|r| f64::from(inputs(r)[i])).sum())
            .collect();
        for (r, (failed, dead_links, world, data, plan, connected_to_1)) in out.iter().enumerate() {
            assert!(failed.is_empty(), "rank {r}: {failed:?}");
            assert_eq!(dead_links, &vec![(0, 1)], "rank {r}");
            assert_eq!(*world, 4);
            assert_eq!(
                first_used(plan, &dead),
                None,
                "rank {r}: {}",
                plan.algorithm().label()
            );
            // Every rank holds the same bits, and the sum is right.
            assert_eq!(bits(data), bits(&out[0].3), "rank {r}");
            for (x, e) in data.iter().zip(&exact) {
                assert!(
                    (f64::from(*x) - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "{x} vs {e}"
                );
            }
            if r == 0 {
                assert!(
                    !connected_to_1,
                    "rank 0 connected to rank 1 over the dead link"
                );
            }
        }
    }

    #[test]
    fn racing_crashes_and_a_hung_rank_get_one_answer() {
        use Role::*;
        // Ranks 1 and 4 crash together; rank 3 hangs past the wait and is left out.
        let out = run_failure(
            "shrink2",
            &[Survivor, Crash, Survivor, Hang(2500), Crash, Survivor],
            600,
        );
        for o in &out {
            match o.world_rank {
                0 | 2 | 5 => {
                    let (failed, _, _, world, _) = o.result.clone().unwrap();
                    assert_eq!(failed, vec![1, 3, 4], "rank {}", o.world_rank);
                    assert_eq!(world, 3);
                }
                3 => match &o.result {
                    Err(Error::Evicted { rank: 3, .. }) => {}
                    other => panic!("the hung rank got {:?}", other.as_ref().err()),
                },
                _ => {}
            }
        }
    }

    #[test]
    fn grow_admits_a_replacement_and_refuses_a_wrong_secret() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let job = "grow1";
        let (ready, members_ready) = std::sync::mpsc::channel();
        let members: Vec<_> = (0..3u32)
            .map(|r| {
                let store = store.clone();
                let ready = ready.clone();
                std::thread::spawn(move || {
                    let mut comm =
                        Communicator::with_store(store.clone(), r, 3, job, "w", cfg(500)).unwrap();
                    // Nobody waits yet.
                    assert!(comm.grow().unwrap().is_none());
                    ready.send(()).unwrap();
                    // The replacement and the impostor ask; the members then grow.
                    while store.add(JOIN_COUNT, 0).unwrap() < 2 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    let mut grown = comm.grow().unwrap().expect("a replacement waits");
                    assert_eq!(grown.world(), 4);
                    assert_eq!(grown.epoch(), 1);
                    let mut buf = vec![1.0f32; 16];
                    grown.all_reduce_in_place(&mut buf, ReduceOp::Sum).unwrap();
                    buf[0]
                })
            })
            .collect();
        for _ in 0..3 {
            members_ready.recv().unwrap();
        }
        let impostor = {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut c = cfg(500);
                c.secret = Some("wrong".into());
                Communicator::join_store(store, 9, job, "w", c).unwrap_err()
            })
        };
        // The impostor asks first.
        while store.add(JOIN_COUNT, 0).unwrap() < 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let joiner = {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut comm = Communicator::join_store(store, 7, job, "w", cfg(500)).unwrap();
                assert_eq!(comm.rank(), 3);
                assert_eq!(comm.world_rank(3), Some(7));
                let mut buf = vec![1.0f32; 16];
                comm.all_reduce_in_place(&mut buf, ReduceOp::Sum).unwrap();
                buf[0]
            })
        };
        for m in members {
            assert_eq!(m.join().unwrap(), 4.0);
        }
        assert_eq!(joiner.join().unwrap(), 4.0);
        let e = impostor.join().unwrap();
        assert!(
            matches!(&e, Error::Handshake { rank: 9, .. })
                && e.to_string().contains("TOPOCCL_SECRET"),
            "{e}"
        );
    }
}
