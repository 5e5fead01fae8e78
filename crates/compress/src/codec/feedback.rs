//! Error feedback: one residual vector per key (tensor or bucket id) that carries what a
//! lossy codec dropped into the next step.
//!
//! # Formulas
//! compensated = g + decay · residual; the codec encodes `compensated`; after decoding
//! (locally, or after the collective for PowerSGD) residual = compensated − decoded.
//! With decay 1 the decoded outputs telescope: Σ_t decoded_t = Σ_t g_t − residual_T, so
//! their time average converges to the average gradient whenever the residual stays
//! bounded (1-bit, top-k). A decay below 1 (default 0.8) damps stale residuals at the cost
//! of a small bias.
//!
//! Do not use it with the n/k-scaled random-k estimator: its decoded values are n/k times
//! the input at the kept indices, so the residual grows instead of shrinking.
//!
//! # Limits
//! At most `max_keys` residuals (default [`DEFAULT_MAX_KEYS`]); a new key beyond the cap
//! is an error (call [`ErrorFeedback::remove`] for tensors no longer compressed). A key's
//! length is fixed by its first use; a different length is an error until the key is
//! removed. Residuals are never touched by a failed step. Scratch: one spare vector as
//! long as the largest key, and two block-sized (or, for [`ErrorFeedback::step`],
//! gradient-sized) buffers, all reused.

use std::collections::BTreeMap;

use super::{check_len, CodecError, Result};

/// Default decay of the residual.
pub const DEFAULT_DECAY: f32 = 0.8;
/// Default cap on the number of keys.
pub const DEFAULT_MAX_KEYS: usize = 4096;

/// Residuals per key with a bounded key count, plus reusable scratch buffers.
#[derive(Debug, Clone, Default)]
pub struct ErrorFeedback {
    decay: f32,
    max_keys: usize,
    residuals: BTreeMap<u64, Vec<f32>>,
    compensated: Vec<f32>,
    decoded: Vec<f32>,
    spare: Vec<f32>,
}

impl ErrorFeedback {
    /// Memory passes over n elements that error feedback adds to a codec's encode:
    /// reading the residual and writing the new one (the compensated and decoded blocks
    /// stay in cache with [`ErrorFeedback::step_blocks`]; [`ErrorFeedback::step`] touches
    /// two more gradient-sized buffers).
    pub const MEMORY_PASSES: f64 = 2.0;

    /// Error feedback with the given decay (in [0, 1]) and key cap (≥ 1).
    pub fn new(decay: f32, max_keys: usize) -> Result<ErrorFeedback> {
        if !(0.0..=1.0).contains(&decay) {
            return Err(CodecError::BadParam {
                codec: "error-feedback",
                param: "decay",
                value: decay.to_string(),
                expected: "the residual decay must lie in [0, 1], e.g. 0.8",
            });
        }
        if max_keys == 0 {
            return Err(CodecError::BadParam {
                codec: "error-feedback",
                param: "max_keys",
                value: "0".to_string(),
                expected: "the key cap must be ≥ 1, e.g. 4096",
            });
        }
        Ok(ErrorFeedback {
            decay,
            max_keys,
            ..ErrorFeedback::default()
        })
    }

    /// Decay [`DEFAULT_DECAY`], cap [`DEFAULT_MAX_KEYS`].
    pub fn with_defaults() -> ErrorFeedback {
        ErrorFeedback {
            decay: DEFAULT_DECAY,
            max_keys: DEFAULT_MAX_KEYS,
            ..Default::default()
        }
    }

    /// The decay factor.
    pub fn decay(&self) -> f32 {
        self.decay
    }

    /// Number of keys holding a residual.
    pub fn len(&self) -> usize {
        self.residuals.len()
    }

    /// Whether no key holds a residual.
    pub fn is_empty(&self) -> bool {
        self.residuals.is_empty()
    }

    /// The residual of `key`, if any.
    pub fn residual(&self, key: u64) -> Option<&[f32]> {
        self.residuals.get(&key).map(|r| r.as_slice())
    }

    /// Drops the residual of `key` (a tensor no longer compressed, or resized).
    pub fn remove(&mut self, key: u64) -> Option<Vec<f32>> {
        self.residuals.remove(&key)
    }

    /// Drops every residual.
    pub fn clear(&mut self) {
        self.residuals.clear();
    }

    /// The residual of `key` with `n` elements, created (zero) within the cap.
    fn slot(&mut self, key: u64, n: usize) -> Result<&mut Vec<f32>> {
        let count = self.residuals.len();
        let max = self.max_keys;
        if !self.residuals.contains_key(&key) && count >= max {
            return Err(CodecError::Feedback(format!(
                "residuals are held for {count} keys, the cap (max_keys = {max}); key {key} \
                 would exceed it: raise max_keys or remove() keys no longer compressed"
            )));
        }
        let r = self.residuals.entry(key).or_insert_with(|| vec![0.0; n]);
        if r.len() != n {
            return Err(CodecError::Feedback(format!(
                "key {key} holds a residual of {} elements but the gradient has {n}; \
                 remove(key) when a tensor or bucket changes size",
                r.len()
            )));
        }
        Ok(r)
    }

    /// Writes compensated = g + decay·residual(key) into `compensated` (same length as
    /// `grad`). The residual is not changed until [`ErrorFeedback::update`].
    pub fn compensate(&mut self, key: u64, grad: &[f32], compensated: &mut [f32]) -> Result<()> {
        check_len(
            "error-feedback",
            "compensated",
            compensated.len(),
            grad.len(),
        )?;
        let decay = self.decay;
        let r = self.slot(key, grad.len())?;
        for ((c, &g), &e) in compensated.iter_mut().zip(grad).zip(r.iter()) {
            *c = g + decay * e;
        }
        Ok(())
    }

    /// Sets residual(key) = compensated − decoded.
    pub fn update(&mut self, key: u64, compensated: &[f32], decoded: &[f32]) -> Result<()> {
        self.update_scaled(key, compensated, decoded, 1.0)
    }

    /// Sets residual(key) = compensated − scale·decoded: for a decoding known only as a
    /// multiple, e.g. this rank's share (1/world) of an all-reduced sum, without a copy.
    pub fn update_scaled(
        &mut self,
        key: u64,
        compensated: &[f32],
        decoded: &[f32],
        scale: f32,
    ) -> Result<()> {
        check_len(
            "error-feedback",
            "decoded",
            decoded.len(),
            compensated.len(),
        )?;
        let r = self.slot(key, compensated.len())?;
        for ((e, &c), &d) in r.iter_mut().zip(compensated).zip(decoded) {
            *e = c - scale * d;
        }
        Ok(())
    }

    /// One step with a codec that can decode locally: compensates `grad`, calls
    /// `codec(compensated, decoded)` (which encodes and writes its local decoding into
    /// `decoded`), then updates the residual. A failing `codec` leaves the residual as it
    /// was.
    pub fn step(
        &mut self,
        key: u64,
        grad: &[f32],
        codec: impl FnOnce(&[f32], &mut [f32]) -> Result<()>,
    ) -> Result<()> {
        if grad.is_empty() {
            self.slot(key, 0)?;
            return codec(&[], &mut []);
        }
        let mut codec = Some(codec);
        self.step_blocks(key, grad, grad.len().max(1), |_, c, d| match codec.take() {
            Some(f) => f(c, d),
            None => Ok(()),
        })
    }

    /// [`ErrorFeedback::step`] for codecs that work block by block: for each block `b`
    /// of `block` elements (the last may be shorter), `codec(b, compensated, decoded)`
    /// gets that block only, so compensation, encoding and the residual update stay in
    /// cache (one pass over the gradient and the residual). The new residual is written to
    /// a spare buffer and swapped in only if every block succeeds.
    pub fn step_blocks(
        &mut self,
        key: u64,
        grad: &[f32],
        block: usize,
        mut codec: impl FnMut(usize, &[f32], &mut [f32]) -> Result<()>,
    ) -> Result<()> {
        let (n, block, decay) = (grad.len(), block.max(1), self.decay);
        self.slot(key, n)?;
        let mut next = std::mem::take(&mut self.spare);
        let mut c = std::mem::take(&mut self.compensated);
        let mut d = std::mem::take(&mut self.decoded);
        next.resize(n, 0.0);
        c.resize(block.min(n), 0.0);
        d.resize(block.min(n), 0.0);
        let residual = self
            .residuals
            .get(&key)
            .map(|r| r.as_slice())
            .unwrap_or(&[]);
        let mut run = || -> Result<()> {
            let blocks = grad
                .chunks(block)
                .zip(residual.chunks(block))
                .zip(next.chunks_mut(block));
            for (b, ((gb, rb), nb)) in blocks.enumerate() {
                let (cb, db) = (&mut c[..gb.len()], &mut d[..gb.len()]);
                for ((o, &g), &e) in cb.iter_mut().zip(gb).zip(rb) {
                    *o = g + decay * e;
                }
                codec(b, cb, db)?;
                for ((o, &cv), &dv) in nb.iter_mut().zip(cb.iter()).zip(db.iter()) {
                    *o = cv - dv;
                }
            }
            Ok(())
        };
        let result = run();
        if result.is_ok() {
            if let Some(r) = self.residuals.get_mut(&key) {
                std::mem::swap(r, &mut next);
            }
        }
        self.spare = next;
        self.compensated = c;
        self.decoded = d;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_is_compensated_minus_decoded() {
        let mut ef = ErrorFeedback::new(0.5, 4).unwrap();
        ef.step(7, &[1.0, 2.0], |c, d| {
            d.copy_from_slice(&[c[0], 0.0]);
            Ok(())
        })
        .unwrap();
        assert_eq!(ef.residual(7).unwrap(), &[0.0, 2.0]);
        ef.step(7, &[1.0, 2.0], |c, d| {
            assert_eq!(c, &[1.0, 3.0]);
            d.copy_from_slice(&[0.0, 3.0]);
            Ok(())
        })
        .unwrap();
        assert_eq!(ef.residual(7).unwrap(), &[1.0, 0.0]);
    }

    #[test]
    fn cap_size_and_failure_are_reported_and_state_kept() {
        let mut ef = ErrorFeedback::new(1.0, 1).unwrap();
        let id = |c: &[f32], d: &mut [f32]| {
            d.fill(0.0);
            d[0] = c[0];
            Ok(())
        };
        ef.step(1, &[1.0, 1.0], id).unwrap();
        let e = ef.step(2, &[1.0, 1.0], id).unwrap_err().to_string();
        assert!(e.contains("max_keys = 1") && e.contains("key 2"), "{e}");
        let e = ef.step(1, &[1.0], id).unwrap_err().to_string();
        assert!(e.contains("2 elements") && e.contains("has 1"), "{e}");
        let before = ef.residual(1).unwrap().to_vec();
        let r = ef.step(1, &[5.0, 5.0], |_, _| Err(CodecError::Corrupt("x".into())));
        assert!(r.is_err());
        assert_eq!(ef.residual(1).unwrap(), before.as_slice());
        assert!(ErrorFeedback::new(1.5, 1).is_err());
        assert!(ErrorFeedback::new(0.5, 0).is_err());
    }

    #[test]
    fn step_blocks_matches_step_and_is_atomic() {
        let g: Vec<f32> = (0..21).map(|i| i as f32 * 0.37 - 3.0).collect();
        let halve = |c: &[f32], d: &mut [f32]| {
            for (o, v) in d.iter_mut().zip(c) {
                *o = (v * 0.5).round();
            }
        };
        let mut a = ErrorFeedback::new(0.8, 2).unwrap();
        let mut b = ErrorFeedback::new(0.8, 2).unwrap();
        for _ in 0..3 {
            a.step(1, &g, |c, d| {
                halve(c, d);
                Ok(())
            })
            .unwrap();
            b.step_blocks(1, &g, 8, |_, c, d| {
                halve(c, d);
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(a.residual(1), b.residual(1));
        let before = b.residual(1).unwrap().to_vec();
        let r = b.step_blocks(1, &g, 8, |blk, c, d| {
            halve(c, d);
            if blk == 2 {
                Err(CodecError::Corrupt("late".into()))
            } else {
                Ok(())
            }
        });
        assert!(r.is_err());
        assert_eq!(b.residual(1).unwrap(), before.as_slice());
    }
}
