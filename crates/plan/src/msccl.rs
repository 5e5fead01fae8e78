//! Export to MSCCL's XML algorithm format, so MSCCL, RCCL and ASTRA-sim custom collectives
//! can run our schedules.
//!
//! Each rank becomes a `<gpu>`. Its ops are spread over thread blocks: one per
//! (direction, peer, channel) — MSCCL lets a thread block own the sending or receiving side
//! of one connection — and one for local copies and reductions. A thread block runs its
//! steps in program order; an op that conflicts with an op of another thread block (same
//! hazard rules as everywhere else, see [`crate::hazard`]) depends on the latest such step
//! of that block, the first dependency in the step's `depid`/`deps` attributes and the
//! others in `nop` steps placed before it. Offsets and counts are in chunks: the greatest
//! common divisor of all offsets, lengths and buffer sizes, so the XML runs for any buffer
//! that is a multiple of `nchunksperloop` chunks.
//!
//! MSCCL's `rrc` reduces into its destination a local operand named by `srcbuf`/`srcoff`;
//! to keep that unambiguous the exporter always names the destination itself, copying the
//! real operand there first (`cpy`) when the plan reduces from elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::error::PlanError;
use crate::exec::driver::{alias_for, resolve};
use crate::hazard::{Access, HazardTracker};
use crate::ir::{Buf, Op, OpKind, Rank, Slice};
use crate::schedule::Plan;
use crate::spec::{Collective, Placement};

/// MSCCL's limit on steps per thread block (`MSCCL_MAX_NUM_STEPS`).
pub const MAX_STEPS_PER_TB: usize = 256;
/// MSCCL's bound on the chunks one step moves (`cnt < MSCCL_MAX_COUNT`).
pub const MAX_COUNT: u64 = 72;

/// Export options.
#[derive(Clone, Debug)]
pub struct MscclOptions {
    /// Written into the `name` attribute.
    pub name: String,
    /// Export for in-place execution (dependencies then account for the aliasing).
    pub placement: Placement,
    /// MSCCL protocol attribute: `Simple`, `LL` or `LL128`.
    pub protocol: String,
}

impl Default for MscclOptions {
    fn default() -> Self {
        MscclOptions {
            name: "topoccl".into(),
            placement: Placement::OutOfPlace,
            protocol: "Simple".into(),
        }
    }
}

fn coll_name(c: Collective) -> Option<&'static str> {
    Some(match c {
        Collective::AllReduce => "allreduce",
        Collective::AllGather => "allgather",
        Collective::ReduceScatter => "reducescatter",
        Collective::AllToAll => "alltoall",
        _ => return None,
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn buf_code(b: Buf) -> &'static str {
    match b {
        Buf::Input => "i",
        Buf::Output => "o",
        Buf::Scratch => "s",
    }
}

/// Which thread block an op belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum TbKey {
    /// Sorted first so that local work gets the lowest id; MSCCL does not care.
    Local,
    Send {
        peer: Rank,
        channel: u16,
    },
    Recv {
        peer: Rank,
        channel: u16,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepType {
    Send,
    Recv,
    RecvReduceCopy,
    Copy,
    Reduce,
}

impl StepType {
    fn code(self) -> &'static str {
        match self {
            StepType::Send => "s",
            StepType::Recv => "r",
            StepType::RecvReduceCopy => "rrc",
            StepType::Copy => "cpy",
            StepType::Reduce => "re",
        }
    }
}

/// A step before thread-block layout: what it does, where, and its hazards.
#[derive(Clone, Debug)]
struct Step {
    ty: StepType,
    tb: TbKey,
    src: Option<Slice>,
    dst: Option<Slice>,
    len: u64,
    /// Indices (in the rank's step list) of the steps this one conflicts with.
    deps: Vec<u64>,
}

/// Exports `plan` as MSCCL XML.
pub fn to_xml(plan: &Plan, opts: &MscclOptions) -> Result<String, PlanError> {
    let spec = plan.spec();
    let coll = coll_name(spec.collective).ok_or_else(|| {
        PlanError::Export(format!(
            "MSCCL's XML describes allreduce, allgather, reducescatter and alltoall; \
             {} is none of them",
            spec.collective
        ))
    })?;
    if opts.placement == Placement::InPlace && !spec.collective.has_in_place() {
        return Err(PlanError::Export(format!(
            "{} has no in-place form",
            spec.collective
        )));
    }
    let doc = plan.materialize()?;

    // The chunk: the largest unit every offset, length and buffer size is a multiple of.
    let mut unit = 0;
    for rp in &doc.ranks {
        let r = rp.rank;
        for len in [spec.input_len(r), spec.output_len(r), rp.scratch] {
            unit = gcd(unit, len);
        }
        for op in &rp.ops {
            let mut o = *op;
            o.map_slices(|s| {
                unit = gcd(gcd(unit, s.off), s.len);
                s
            });
        }
    }
    if unit == 0 {
        return Err(PlanError::Export(
            "the plan moves no data (count 0); export a plan with a positive count".into(),
        ));
    }

    let largest = doc
        .ranks
        .iter()
        .flat_map(|rp| rp.ops.iter())
        .map(|op| op.len() / unit)
        .max()
        .unwrap_or(0);
    if largest >= MAX_COUNT {
        return Err(PlanError::Export(format!(
            "one step would move {largest} chunks of {unit} elements; MSCCL allows fewer than \
             {MAX_COUNT}. Use a count that splits evenly over ranks, chunks and channels (e.g. \
             a multiple of {})",
            spec.world as u64 * plan.params().chunks as u64 * plan.params().channels as u64
        )));
    }

    // Matching of sends and receives, per link in order, for the informational remote
    // locations MSCCL steps carry.
    let mut sends: HashMap<(Rank, Rank, u16), Vec<Slice>> = HashMap::new();
    let mut recvs: HashMap<(Rank, Rank, u16), Vec<Slice>> = HashMap::new();
    for rp in &doc.ranks {
        for op in &rp.ops {
            match op.kind {
                OpKind::Send { peer, src } => sends
                    .entry((rp.rank, peer, op.channel))
                    .or_default()
                    .push(src),
                OpKind::Recv { peer, dst } | OpKind::RecvReduce { peer, dst, .. } => recvs
                    .entry((peer, rp.rank, op.channel))
                    .or_default()
                    .push(dst),
                _ => {}
            }
        }
    }

    let mut xml = String::new();
    let nchannels = plan.channels();
    let mut body = String::new();
    let mut nchunks = 0;
    for rp in &doc.ranks {
        let rank = rp.rank;
        let steps = rank_steps(plan, opts.placement, rank, &rp.ops, &sends, &recvs)?;
        let (i_chunks, o_chunks, s_chunks) = (
            spec.input_len(rank) / unit,
            spec.output_len(rank) / unit,
            rp.scratch / unit,
        );
        nchunks = nchunks.max(i_chunks).max(o_chunks);
        write_gpu(
            &mut body,
            rank,
            [i_chunks, o_chunks, s_chunks],
            &steps,
            unit,
        )?;
    }
    let inplace = opts.placement == Placement::InPlace;
    writeln!(
        xml,
        r#"<algo name="{}" proto="{}" nchannels="{nchannels}" nchunksperloop="{nchunks}" ngpus="{}" coll="{coll}" inplace="{}" outofplace="{}" minBytes="0" maxBytes="{}">"#,
        escape(&opts.name),
        escape(&opts.protocol),
        spec.world,
        u8::from(inplace),
        u8::from(!inplace),
        i64::MAX,
    )
    .expect("write to string");
    xml.push_str(&body);
    xml.push_str("</algo>\n");
    Ok(xml)
}

/// Converts one rank's ops to steps with their hazards.
fn rank_steps(
    plan: &Plan,
    placement: Placement,
    rank: Rank,
    ops: &[Op],
    sends: &HashMap<(Rank, Rank, u16), Vec<Slice>>,
    recvs: &HashMap<(Rank, Rank, u16), Vec<Slice>>,
) -> Result<Vec<(Step, Option<Slice>)>, PlanError> {
    let alias = alias_for(plan, placement, rank);
    let mut tracker = HazardTracker::new();
    let mut deps: Vec<Access> = Vec::new();
    let mut out: Vec<(Step, Option<Slice>)> = Vec::new();
    let mut link_pos: HashMap<(Rank, Rank, u16), usize> = HashMap::new();
    let mut push = |step: Step, remote: Option<Slice>, hazard_op: Op| {
        let mut resolved = hazard_op;
        resolved.map_slices(|s| resolve(alias, s));
        deps.clear();
        tracker.record(&resolved, &mut deps);
        let mut step = step;
        step.deps = deps.iter().map(|a| a.index as u64).collect();
        out.push((step, remote));
    };
    for op in ops {
        let ch = op.channel;
        match op.kind {
            OpKind::Send { peer, src } => {
                let key = (rank, peer, ch);
                let k = bump(&mut link_pos, key);
                let remote = recvs.get(&key).and_then(|v| v.get(k)).copied();
                push(
                    Step {
                        ty: StepType::Send,
                        tb: TbKey::Send { peer, channel: ch },
                        src: Some(src),
                        dst: None,
                        len: src.len,
                        deps: vec![],
                    },
                    remote,
                    *op,
                );
            }
            OpKind::Recv { peer, dst } | OpKind::RecvReduce { peer, dst, .. } => {
                let key = (peer, rank, ch);
                let k = bump(&mut link_pos, key);
                let remote = sends.get(&key).and_then(|v| v.get(k)).copied();
                let tb = TbKey::Recv { peer, channel: ch };
                let ty = match op.kind {
                    OpKind::RecvReduce { src, .. } => {
                        if src != dst {
                            push(
                                Step {
                                    ty: StepType::Copy,
                                    tb: TbKey::Local,
                                    src: Some(src),
                                    dst: Some(dst),
                                    len: dst.len,
                                    deps: vec![],
                                },
                                None,
                                Op {
                                    kind: OpKind::Copy { src, dst },
                                    ..*op
                                },
                            );
                        }
                        StepType::RecvReduceCopy
                    }
                    _ => StepType::Recv,
                };
                let hazard = if ty == StepType::RecvReduceCopy {
                    Op {
                        kind: OpKind::RecvReduce {
                            peer,
                            src: dst,
                            dst,
                        },
                        ..*op
                    }
                } else {
                    *op
                };
                push(
                    Step {
                        ty,
                        tb,
                        src: (ty == StepType::RecvReduceCopy).then_some(dst),
                        dst: Some(dst),
                        len: dst.len,
                        deps: vec![],
                    },
                    remote,
                    hazard,
                );
            }
            OpKind::Copy { src, dst } | OpKind::Reduce { src, dst } => {
                let ty = if matches!(op.kind, OpKind::Copy { .. }) {
                    StepType::Copy
                } else {
                    StepType::Reduce
                };
                push(
                    Step {
                        ty,
                        tb: TbKey::Local,
                        src: Some(src),
                        dst: Some(dst),
                        len: dst.len,
                        deps: vec![],
                    },
                    None,
                    *op,
                );
            }
        }
    }
    Ok(out)
}

fn bump(pos: &mut HashMap<(Rank, Rank, u16), usize>, key: (Rank, Rank, u16)) -> usize {
    let e = pos.entry(key).or_insert(0);
    *e += 1;
    *e - 1
}

/// Lays a rank's steps out in thread blocks and writes its `<gpu>` element.
fn write_gpu(
    xml: &mut String,
    rank: Rank,
    [i_chunks, o_chunks, s_chunks]: [u64; 3],
    steps: &[(Step, Option<Slice>)],
    unit: u64,
) -> Result<(), PlanError> {
    // Thread block ids in key order; the step lists per block, with nops for the
    // dependencies beyond the first.
    let mut tb_ids: BTreeMap<TbKey, usize> = BTreeMap::new();
    for (s, _) in steps {
        tb_ids.entry(s.tb).or_insert(0);
    }
    for (i, v) in tb_ids.values_mut().enumerate() {
        *v = i;
    }
    // Position (tb, step index) of every plan step once laid out.
    let mut placed: Vec<(usize, usize)> = Vec::with_capacity(steps.len());
    // Per block: (step, first dependency, extra dependencies) in order.
    type Laid = (Option<usize>, Vec<(usize, usize)>);
    let mut blocks: Vec<Vec<Laid>> = vec![Vec::new(); tb_ids.len()];
    for (idx, (s, _)) in steps.iter().enumerate() {
        let tb = tb_ids[&s.tb];
        // The latest conflicting step of each other thread block.
        let mut latest: BTreeMap<usize, usize> = BTreeMap::new();
        for &d in &s.deps {
            let (dtb, dstep) = placed[d as usize];
            if dtb != tb {
                let e = latest.entry(dtb).or_insert(dstep);
                *e = (*e).max(dstep);
            }
        }
        let mut deps: Vec<(usize, usize)> = latest.into_iter().collect();
        let block = &mut blocks[tb];
        // All but the last dependency ride on nops placed just before the step.
        let last = deps.pop();
        for d in deps {
            block.push((None, vec![d]));
        }
        placed.push((tb, block.len()));
        block.push((Some(idx), last.into_iter().collect()));
    }
    let mut has_dep = vec![Vec::new(); blocks.len()];
    for (tb, block) in blocks.iter().enumerate() {
        has_dep[tb] = vec![false; block.len()];
    }
    for block in &blocks {
        for (_, deps) in block {
            for &(dtb, dstep) in deps {
                has_dep[dtb][dstep] = true;
            }
        }
    }
    writeln!(
        xml,
        r#"  <gpu id="{rank}" i_chunks="{i_chunks}" o_chunks="{o_chunks}" s_chunks="{s_chunks}">"#
    )
    .expect("write");
    for (key, &tb) in &tb_ids {
        let (send, recv, chan) = match *key {
            TbKey::Local => (-1i64, -1i64, 0),
            TbKey::Send { peer, channel } => (peer as i64, -1, channel),
            TbKey::Recv { peer, channel } => (-1, peer as i64, channel),
        };
        let block = &blocks[tb];
        if block.len() > MAX_STEPS_PER_TB {
            return Err(PlanError::Export(format!(
                "rank {rank} needs {} steps in one thread block ({key:?}); MSCCL allows {}; \
                 use fewer chunks or channels",
                block.len(),
                MAX_STEPS_PER_TB
            )));
        }
        writeln!(
            xml,
            r#"    <tb id="{tb}" send="{send}" recv="{recv}" chan="{chan}">"#
        )
        .expect("write");
        for (k, (step, deps)) in block.iter().enumerate() {
            let (depid, depstep) = deps
                .first()
                .map(|&(t, s)| (t as i64, s as i64))
                .unwrap_or((-1, -1));
            let hasdep = u8::from(has_dep[tb][k]);
            let Some(idx) = step else {
                writeln!(
                    xml,
                    r#"      <step s="{k}" type="nop" srcbuf="i" srcoff="-1" dstbuf="o" dstoff="-1" cnt="0" depid="{depid}" deps="{depstep}" hasdep="{hasdep}"/>"#
                )
                .expect("write");
                continue;
            };
            let (s, remote) = &steps[*idx];
            // Sends name the receiver's destination, receives the sender's source.
            let (src, dst) = match s.ty {
                StepType::Send => (s.src, *remote),
                StepType::Recv => (*remote, s.dst),
                _ => (s.src, s.dst),
            };
            let loc = |x: Option<Slice>, default: &'static str| match x {
                Some(sl) => (buf_code(sl.buf), (sl.off / unit) as i64),
                None => (default, -1),
            };
            let (sb, so) = loc(src, "i");
            let (db, dof) = loc(dst, "o");
            writeln!(
                xml,
                r#"      <step s="{k}" type="{}" srcbuf="{sb}" srcoff="{so}" dstbuf="{db}" dstoff="{dof}" cnt="{}" depid="{depid}" deps="{depstep}" hasdep="{hasdep}"/>"#,
                s.ty.code(),
                s.len / unit,
            )
            .expect("write");
        }
        xml.push_str("    </tb>\n");
    }
    xml.push_str("  </gpu>\n");
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, Algorithm, CollectiveSpec, PlanParams};

    #[test]
    fn ring_allreduce_layout() {
        let spec = CollectiveSpec::new(Collective::AllReduce, 4, 8);
        let plan = build(spec, Algorithm::Ring, PlanParams::default()).unwrap();
        let xml = to_xml(&plan, &MscclOptions::default()).unwrap();
        assert!(xml.starts_with("<algo "), "{xml}");
        assert!(xml.contains(r#"nchunksperloop="4""#), "{xml}");
        assert!(xml.contains(r#"coll="allreduce""#));
        assert_eq!(xml.matches("<gpu ").count(), 4);
        // Each gpu: a local block (copies before rrc), a send block, a receive block.
        assert_eq!(xml.matches("<tb ").count(), 12);
        assert!(xml.contains(r#"type="rrc""#) && xml.contains(r#"type="cpy""#));
    }

    #[test]
    fn refuses_what_msccl_cannot_express() {
        let spec = CollectiveSpec::new(Collective::Broadcast, 4, 8);
        let plan = build(spec, Algorithm::Ring, PlanParams::default()).unwrap();
        let e = to_xml(&plan, &MscclOptions::default()).unwrap_err();
        assert!(e.to_string().contains("broadcast is none of them"), "{e}");
        let spec = CollectiveSpec::new(Collective::AllReduce, 4, 0);
        let plan = build(spec, Algorithm::Ring, PlanParams::default()).unwrap();
        let e = to_xml(&plan, &MscclOptions::default()).unwrap_err();
        assert!(e.to_string().contains("count 0"), "{e}");
    }
}
