//! Compressed all-reduce of f32 gradients (`topoccl-compress`'s codecs around ordinary,
//! verified plans).
//!
//! | codec | on the wire | collective(s) |
//! |---|---|---|
//! | `fp16`, `bf16` | the gradient cast (pre-scaled by 1/world, so sums stay finite) | all-reduce of f16/bf16 |
//! | `randk:R`, `rp:R` | `R·n` f32 (indices / sketch from a seed shared by all ranks and the step) | all-reduce of f32 |
//! | `powersgd:K` | P (`rows·K`) then Q (`cols·K`) f32 | two all-reduces of f32 |
//! | `int8`, `int4`, `1bit`, `topk:R` | one self-describing frame per rank | all-gather of bytes, each frame decoded and summed in f32 |
//!
//! The result is the **sum** over ranks (as `all_reduce` with `Sum`): divide by the
//! world for a mean. With error feedback, random projection decodes `(m/n)·Φᵀy` (a
//! contraction, so the residual shrinks) instead of the unbiased `Φᵀy`. Codecs that need error feedback (1-bit, and every biased one when
//! `feedback` is on) keep a residual per `key` in the [`Compressor`]. Every rank must
//! use the same codec: the first call checks it (an all-gather of each rank's spec), and
//! a disagreement is an error naming the ranks and both specs, never garbage.

use half::{bf16, f16};
use topoccl_compress::codec::{
    cast_decode, cast_encode, cast_prescale, check_supported, CodecKind, CodecSpec, CountSketch,
    ElemType, ErrorFeedback, FrameCodec, PowerSgd, RandomK, ReduceOp as CodecOp,
};
use topoccl_plan::ReduceOp;

use crate::error::{Error, Result};
use crate::Communicator;

/// What one compressed call moved.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CompressedCall {
    /// Bytes this rank contributed to the wire (its encoding of the gradient: a frame, or
    /// the compressed vectors it all-reduced), as a plain all-reduce would count `4·n`.
    pub wire_bytes: u64,
}

/// A codec's state across calls: error feedback, PowerSGD's warm start, the step number
/// that seeds shared randomness, scratch buffers.
pub struct Compressor {
    spec: CodecSpec,
    feedback: Option<ErrorFeedback>,
    step: u64,
    agreed: bool,
    frames: Option<FrameCodec>,
    /// Random-k or the count sketch, made once (random-k keeps its index buffer).
    projector: Option<Projector>,
    powersgd: Option<(usize, PowerSgd)>,
    /// Reused between calls: the compensated gradient, the compressed vector (or
    /// PowerSGD's P), the cast gradient, this rank's frame and all ranks' frames.
    scratch: Vec<f32>,
    y: Vec<f32>,
    halves: Vec<u16>,
    bytes: Vec<u8>,
    gathered: Vec<u8>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("spec", &self.spec.to_string())
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

/// The codecs that project onto a shared-seed subspace.
enum Projector {
    RandomK(RandomK),
    Sketch(CountSketch),
}

fn codec_error(e: impl std::fmt::Display) -> Error {
    Error::Config(format!("compression: {e}"))
}

impl Compressor {
    /// A compressor for `spec` (`"int8"`, `"rp:0.02"`, …); `feedback` keeps error feedback
    /// (decay 0.8) for codecs that take it (1-bit always has it).
    pub fn new(spec: &str, feedback: bool) -> Result<Compressor> {
        let spec: CodecSpec = spec.parse().map_err(codec_error)?;
        check_supported(&spec, CodecOp::Sum, ElemType::F32).map_err(codec_error)?;
        let feedback = (feedback || spec.needs_error_feedback())
            // Random-k rescales by n/k: a residual of it grows, never shrinks.
            && spec.kind != CodecKind::RandomK;
        let frames = (!spec.is_linear())
            .then(|| FrameCodec::new(&spec))
            .transpose()
            .map_err(codec_error)?;
        let projector = match spec.kind {
            CodecKind::RandomK => Some(Projector::RandomK(
                RandomK::new(&spec).map_err(codec_error)?,
            )),
            CodecKind::RandomProjection => Some(Projector::Sketch(
                CountSketch::new(&spec).map_err(codec_error)?,
            )),
            _ => None,
        };
        Ok(Compressor {
            feedback: feedback.then(ErrorFeedback::with_defaults),
            projector,
            spec,
            step: 0,
            agreed: false,
            frames,
            powersgd: None,
            scratch: Vec::new(),
            y: Vec::new(),
            halves: Vec::new(),
            bytes: Vec::new(),
            gathered: Vec::new(),
        })
    }

    /// Sets error feedback's decay (the share of the residual carried to the next step:
    /// 0.8 by default, as the seed uses; 1 carries all of it, so the results' running sum
    /// differs from the gradients' by the last residual only). Drops the residuals kept.
    pub fn set_decay(&mut self, decay: f32) -> Result<()> {
        if self.feedback.is_some() {
            self.feedback = Some(
                ErrorFeedback::new(decay, topoccl_compress::codec::DEFAULT_MAX_KEYS)
                    .map_err(codec_error)?,
            );
        }
        Ok(())
    }

    /// The codec.
    pub fn spec(&self) -> &CodecSpec {
        &self.spec
    }

    /// Bytes on the wire for `n` elements, as [`CompressedCall::wire_bytes`] counts them.
    pub fn wire_bytes(&self, n: usize) -> u64 {
        match self.spec.kind {
            CodecKind::PowerSgd => {
                let (rows, cols, k) = topoccl_compress::codec::powersgd::view(n, self.spec.rank);
                4 * ((rows + cols) * k) as u64
            }
            _ => self.spec.wire_bytes(n) as u64,
        }
    }
}

impl Communicator {
    /// `output = Σ over ranks of grad`, compressed by `c` (see [`crate::compressed`]);
    /// `key` names the tensor or bucket for error feedback.
    pub fn all_reduce_compressed(
        &mut self,
        c: &mut Compressor,
        grad: &[f32],
        output: &mut [f32],
        key: u64,
    ) -> Result<CompressedCall> {
        if grad.len() != output.len() {
            return Err(Error::BufferSize {
                what: "the output",
                got: output.len(),
                needed: grad.len() as u64,
                hint: "a compressed all-reduce's output is as long as its input",
            });
        }
        if !c.agreed {
            self.agree_on(&c.spec)?;
            c.agreed = true;
        }
        let n = grad.len();
        let stream = c.step;
        c.step += 1;
        let wire_bytes = c.wire_bytes(n);
        match c.spec.kind {
            CodecKind::None => self.all_reduce(grad, output, ReduceOp::Sum)?,
            CodecKind::F16 => self.cast_all_reduce::<f16>(c, grad, output, key)?,
            CodecKind::Bf16 => self.cast_all_reduce::<bf16>(c, grad, output, key)?,
            CodecKind::RandomK | CodecKind::RandomProjection => {
                self.projected_all_reduce(c, grad, output, key, stream)?
            }
            CodecKind::PowerSgd => self.powersgd_all_reduce(c, grad, output, key)?,
            _ => self.framed_all_reduce(c, grad, output, key, stream)?,
        }
        Ok(CompressedCall { wire_bytes })
    }

    /// Every rank's codec, compared once: the ranks that differ from rank 0 are named.
    fn agree_on(&mut self, spec: &CodecSpec) -> Result<()> {
        let text = spec.to_string();
        let mut mine = [0u8; 64];
        let b = text.as_bytes();
        mine[..b.len().min(64)].copy_from_slice(&b[..b.len().min(64)]);
        let mut all = vec![0u8; 64 * self.world() as usize];
        self.all_gather(&mine, &mut all)?;
        let name = |r: usize| {
            let s = &all[64 * r..64 * (r + 1)];
            String::from_utf8_lossy(&s[..s.iter().position(|&x| x == 0).unwrap_or(64)]).to_string()
        };
        let first = name(0);
        if let Some(r) = (1..self.world() as usize).find(|&r| name(r) != first) {
            let (me, peer) = if r as u32 == self.rank() {
                (r as u32, 0)
            } else {
                (self.rank(), r as u32)
            };
            return Err(Error::Mismatch {
                rank: me,
                peer,
                detail: format!(
                    "compresses with {} but rank {} with {} (every rank must use the same codec)",
                    name(me as usize),
                    peer,
                    name(peer as usize)
                ),
            });
        }
        Ok(())
    }

    /// Error feedback around a linear codec: `grad` compensated into `c.scratch` (or
    /// copied), then, after `run` wrote the decoded result to `output`, the residual
    /// updated with this rank's share (the mean) of it.
    fn compensated(
        &mut self,
        c: &mut Compressor,
        grad: &[f32],
        output: &mut [f32],
        key: u64,
        run: impl FnOnce(&mut Communicator, &mut Compressor, &[f32], &mut [f32]) -> Result<()>,
    ) -> Result<()> {
        let mut comp = std::mem::take(&mut c.scratch);
        comp.clear();
        comp.resize(grad.len(), 0.0);
        match &mut c.feedback {
            Some(ef) => ef.compensate(key, grad, &mut comp).map_err(codec_error)?,
            None => comp.copy_from_slice(grad),
        }
        let result = run(self, c, &comp, output);
        if result.is_ok() {
            if let Some(ef) = &mut c.feedback {
                // What this rank's own contribution came back as: the mean of the sum.
                let share = 1.0 / self.world() as f32;
                ef.update_scaled(key, &comp, output, share)
                    .map_err(codec_error)?;
            }
        }
        c.scratch = comp;
        result
    }

    fn cast_all_reduce<H>(
        &mut self,
        c: &mut Compressor,
        grad: &[f32],
        output: &mut [f32],
        key: u64,
    ) -> Result<()>
    where
        H: topoccl_compress::codec::HalfFloat + crate::Dtype + bytemuck::Pod,
    {
        let scale = cast_prescale::<H>(self.world() as usize, None).map_err(codec_error)?;
        self.compensated(c, grad, output, key, |comm, c, comp, out| {
            c.halves.resize(comp.len(), 0);
            let y: &mut [H] = bytemuck::cast_slice_mut(&mut c.halves[..]);
            cast_encode(comp, scale, y).map_err(codec_error)?;
            comm.all_reduce_in_place(y, ReduceOp::Sum)?;
            cast_decode(y, scale, out).map_err(codec_error)
        })
    }

    fn projected_all_reduce(
        &mut self,
        c: &mut Compressor,
        grad: &[f32],
        output: &mut [f32],
        key: u64,
        stream: u64,
    ) -> Result<()> {
        let contract = c.feedback.is_some();
        self.compensated(c, grad, output, key, |comm, c, comp, out| {
            let (y, projector) = (&mut c.y, c.projector.as_mut());
            match projector.expect("projecting codecs have a projector") {
                Projector::RandomK(rk) => {
                    y.resize(rk.k(comp.len()), 0.0);
                    rk.project(comp, stream, y).map_err(codec_error)?;
                    comm.all_reduce_in_place(y, ReduceOp::Sum)?;
                    rk.unproject(y, stream, out).map_err(codec_error)
                }
                Projector::Sketch(cs) => {
                    y.resize(cs.out_len(comp.len()), 0.0);
                    cs.project(comp, stream, y).map_err(codec_error)?;
                    comm.all_reduce_in_place(y, ReduceOp::Sum)?;
                    cs.unproject(y, stream, out).map_err(codec_error)?;
                    if contract {
                        // Φᵀy is unbiased but its variance exceeds the signal at small ratios,
                        // so a residual of it would grow step after step. Scaled by m/n it is
                        // a contraction (E‖x − (m/n)ΦᵀΦx‖² ≈ (1 − m/n)‖x‖²): what it leaves
                        // out, error feedback carries to the next steps.
                        let shrink = y.len() as f32 / comp.len().max(1) as f32;
                        out.iter_mut().for_each(|x| *x *= shrink);
                    }
                    Ok(())
                }
            }
        })
    }

    fn powersgd_all_reduce(
        &mut self,
        c: &mut Compressor,
        grad: &[f32],
        output: &mut [f32],
        key: u64,
    ) -> Result<()> {
        let n = grad.len();
        if c.powersgd.as_ref().is_none_or(|(len, _)| *len != n) {
            c.powersgd = Some((n, PowerSgd::new(n, &c.spec).map_err(codec_error)?));
        }
        let world = self.world() as f32;
        self.compensated(c, grad, output, key, |comm, c, comp, out| {
            let (_, psgd) = c.powersgd.as_mut().expect("made above");
            // The codec pads the gradient to its rows × cols view itself.
            let p = &mut c.y;
            p.resize(psgd.p_len(), 0.0);
            psgd.compute_p(comp, p).map_err(codec_error)?;
            comm.all_reduce_in_place(p, ReduceOp::Sum)?;
            psgd.orthonormalize(p).map_err(codec_error)?;
            psgd.compute_q(comp, p).map_err(codec_error)?;
            comm.all_reduce_in_place(psgd.q_mut(), ReduceOp::Sum)?;
            // Q summed over ranks: P·Qᵀ is then the sum's approximation.
            psgd.approximate(p, out).map_err(codec_error)?;
            // The warm start keeps the mean's Q (PyTorch's hook divides likewise).
            psgd.q_mut().iter_mut().for_each(|q| *q /= world);
            Ok(())
        })
    }

    fn framed_all_reduce(
        &mut self,
        c: &mut Compressor,
        grad: &[f32],
        output: &mut [f32],
        key: u64,
        stream: u64,
    ) -> Result<()> {
        let codec = c
            .frames
            .as_mut()
            .expect("non-linear codecs have a frame codec");
        let mut frame = std::mem::take(&mut c.bytes);
        frame.clear();
        // Stochastic rounding draws per rank.
        let stream = stream
            .wrapping_mul(0x9e37_79b9)
            .wrapping_add(u64::from(self.rank()));
        codec
            .encode(
                grad,
                stream,
                c.feedback.as_mut().map(|ef| (ef, key)),
                &mut frame,
            )
            .map_err(codec_error)?;
        let len = frame.len();
        let mut all = std::mem::take(&mut c.gathered);
        all.resize(len * self.world() as usize, 0);
        let gathered = self.all_gather(&frame, &mut all);
        c.bytes = frame;
        if let Err(e) = gathered {
            c.gathered = all;
            return Err(e);
        }
        output.fill(0.0);
        for (r, f) in all.chunks(len.max(1)).enumerate() {
            codec.decode_add(f, output).map_err(|e| Error::PeerFailed {
                op: "compressed all-reduce".into(),
                rank: r as u32,
                reason: format!("its frame does not decode here: {e}"),
            })?;
        }
        c.gathered = all;
        Ok(())
    }
}
