//! The reference executor: runs a plan for all ranks on in-memory buffers, in one thread,
//! deterministically. It is the oracle the runtime is compared against.

use crate::exec::driver::{self, alias_for, Machine, VerifyError};
use crate::exec::kernels::{finish_avg, reduce_into, Element};
use crate::ir::{Buf, OpKind, Rank, Slice};
use crate::schedule::Plan;
use crate::spec::{Placement, ReduceOp};

struct Concrete<T> {
    op: ReduceOp,
    bufs: Vec<[Vec<T>; 3]>,
}

fn range(s: Slice) -> std::ops::Range<usize> {
    s.off as usize..s.end() as usize
}

impl<T: Element> Concrete<T> {
    fn get(&self, rank: Rank, s: Slice) -> &[T] {
        &self.bufs[rank as usize][s.buf.index()][range(s)]
    }

    fn get_mut(&mut self, rank: Rank, s: Slice) -> &mut [T] {
        &mut self.bufs[rank as usize][s.buf.index()][range(s)]
    }
}

impl<T: Element> Machine for Concrete<T> {
    type Msg = Vec<T>;

    fn read(&mut self, rank: Rank, src: Slice) -> Result<Vec<T>, String> {
        Ok(self.get(rank, src).to_vec())
    }

    fn deliver(&mut self, rank: Rank, kind: &OpKind, msg: Vec<T>) -> Result<(), String> {
        match *kind {
            OpKind::Recv { dst, .. } => self.get_mut(rank, dst).copy_from_slice(&msg),
            OpKind::RecvReduce { src, dst, .. } => {
                let mut acc = self.get(rank, src).to_vec();
                reduce_into(self.op, &mut acc, &msg);
                self.get_mut(rank, dst).copy_from_slice(&acc);
            }
            _ => unreachable!("deliver gets receives only"),
        }
        Ok(())
    }

    fn local(&mut self, rank: Rank, kind: &OpKind) -> Result<(), String> {
        match *kind {
            OpKind::Copy { src, dst } => {
                let v = self.get(rank, src).to_vec();
                self.get_mut(rank, dst).copy_from_slice(&v);
            }
            OpKind::Reduce { src, dst } => {
                let v = self.get(rank, src).to_vec();
                let op = self.op;
                reduce_into(op, self.get_mut(rank, dst), &v);
            }
            _ => unreachable!("local gets copies and reductions only"),
        }
        Ok(())
    }
}

/// Runs `plan` on `inputs` (one buffer per rank, each `input_len(rank)` long) and returns
/// every rank's output buffer. In place, the user buffer is the larger of the two and the
/// input is placed where the collective's in-place layout puts it.
pub fn execute<T: Element>(
    plan: &Plan,
    placement: Placement,
    inputs: &[Vec<T>],
) -> Result<Vec<Vec<T>>, VerifyError> {
    let spec = plan.spec();
    if T::DTYPE != spec.dtype {
        return Err(VerifyError::plan(format!(
            "the plan is for {} but the buffers hold {}",
            spec.dtype,
            T::DTYPE
        )));
    }
    if inputs.len() != spec.world as usize {
        return Err(VerifyError::plan(format!(
            "{} input buffers for a world of {} ranks",
            inputs.len(),
            spec.world
        )));
    }
    let mut bufs = Vec::with_capacity(inputs.len());
    for (r, input) in inputs.iter().enumerate() {
        let rank = r as Rank;
        let need = spec.input_len(rank);
        if input.len() as u64 != need {
            return Err(VerifyError::rank(
                rank,
                format!(
                    "input has {} elements; the collective needs {need}",
                    input.len()
                ),
            ));
        }
        let alias = alias_for(plan, placement, rank);
        let mut b: [Vec<T>; 3] = [
            Vec::new(),
            vec![T::POISON; spec.output_len(rank) as usize],
            vec![T::POISON; plan.scratch_len(rank) as usize],
        ];
        match alias {
            Some(a) if a.inner == Buf::Input => {
                let off = a.offset as usize;
                b[a.outer.index()][off..off + input.len()].copy_from_slice(input);
            }
            Some(a) => {
                b[Buf::Input.index()] = input.clone();
                b[a.inner.index()] = Vec::new();
            }
            None => b[Buf::Input.index()] = input.clone(),
        }
        bufs.push(b);
    }
    let mut machine = Concrete { op: spec.op, bufs };
    driver::run(plan, placement, false, &mut machine)?;
    let mut outputs = Vec::with_capacity(inputs.len());
    for (r, b) in machine.bufs.iter_mut().enumerate() {
        let rank = r as Rank;
        let len = spec.output_len(rank) as usize;
        let mut out = match alias_for(plan, placement, rank) {
            Some(a) if a.inner == Buf::Output => {
                let off = a.offset as usize;
                b[a.outer.index()][off..off + len].to_vec()
            }
            _ => std::mem::take(&mut b[Buf::Output.index()]),
        };
        finish_avg(spec, rank, &mut out);
        outputs.push(out);
    }
    Ok(outputs)
}
