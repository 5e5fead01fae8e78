//! PowerSGD of rank r, the pure steps, on a rows×cols row-major matrix view M of the
//! gradient (elements past n read as zero, and are never written).
//!
//! One step (caller's collectives in brackets):
//! 1. `compute_p`: P = M·Q (rows×r) — [all-reduce P]
//! 2. `orthonormalize`: modified Gram–Schmidt on P's columns (f64 accumulation, two
//!    projection sweeps; a column left with under 1e-4 of its norm, or below 1e-20, is
//!    rounding noise of a lower-rank P and is set to zero)
//! 3. `compute_q`: Q = Mᵀ·P (cols×r, kept in the codec: warm start) — [all-reduce Q]
//! 4. `approximate`: M̂ = P·Qᵀ; with error feedback the residual is M − M̂
//!    ([`crate::codec::ErrorFeedback::compensate`] / `update`).
//!
//! P's scale does not matter (it is orthonormalised). If Q is all-reduced as a sum, M̂
//! approximates the summed gradient; divide Q by world first (as PyTorch's PowerSGD hook
//! does) and M̂ approximates the mean, which is what the residual M − M̂ of each rank
//! should subtract.
//!
//! Q starts uniform on [-1, 1) from the spec's seed (the same on every rank) and is kept
//! between steps. Layouts: P row-major rows×r (`p[i·r + j]`); Q stored transposed,
//! r×cols (`q[j·cols + c]`), so every step streams M once by rows with contiguous inner
//! loops. Both are linear in M for a fixed Q (resp. P), hence plain all-reduces.
//! Wire: 4·r·(rows + cols) bytes per step. Biased; use error feedback.
//!
//! The default view ([`view`]): rows = ceil(√n), cols = ceil(n/rows), effective rank
//! min(rank, rows, cols).

use rand_xoshiro::rand_core::RngCore;

use super::spec::check_rank;
use super::{check_len, expect_kind, rng_for, CodecError, CodecKind, CodecSpec, Result};

/// The default matrix view of `n` elements and the effective rank: (rows, cols, rank).
pub fn view(n: usize, rank: usize) -> (usize, usize, usize) {
    if n == 0 {
        return (0, 0, 0);
    }
    let mut rows = (n as f64).sqrt().ceil() as usize;
    // Correct the float square root so that rows = ceil(√n) exactly.
    while rows > 1 && (rows - 1) * (rows - 1) >= n {
        rows -= 1;
    }
    while rows * rows < n {
        rows += 1;
    }
    let cols = n.div_ceil(rows);
    // No row wholly past n: (rows − 1)·cols < n.
    let rows = n.div_ceil(cols);
    (rows, cols, rank.min(rows).min(cols))
}

/// A column keeping less than this fraction of its norm after projection is rounding
/// noise (the matrix has lower rank than r) and is set to zero.
const DROP_RELATIVE: f64 = 1e-4;

/// PowerSGD state for one tensor: its view and the warm-started Q.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerSgd {
    n: usize,
    rows: usize,
    cols: usize,
    rank: usize,
    q: Vec<f32>,
}

impl PowerSgd {
    /// PowerSGD for `n` elements with the default [`view`] and the spec's rank and seed.
    pub fn new(n: usize, spec: &CodecSpec) -> Result<PowerSgd> {
        expect_kind(
            spec,
            &[CodecKind::PowerSgd],
            "PowerSgd serves powersgd only",
        )?;
        let (rows, cols, _) = view(n, 1);
        PowerSgd::with_view(n, rows, cols, spec.rank, spec.seed)
    }

    /// PowerSGD for `n` elements viewed as `rows`×`cols` (rows·cols ≥ n > (rows − 1)·cols,
    /// so only the last row is partial), rank capped at min(rows, cols).
    pub fn with_view(n: usize, rows: usize, cols: usize, rank: usize, seed: u64) -> Result<Self> {
        check_rank("powersgd", rank)?;
        // Every element fits, and no row or column lies wholly past n.
        let fits = rows.checked_mul(cols).is_some_and(|rc| rc >= n);
        let tight = rows <= n.max(1) && cols <= n.max(1) && (n == 0 || (rows - 1) * cols < n);
        if !(fits && tight) {
            return Err(CodecError::BadParam {
                codec: "powersgd",
                param: "rows×cols",
                value: format!("{rows}×{cols} for n = {n}"),
                expected: "the view must hold all n elements without an empty row: \
                           rows·cols ≥ n > (rows − 1)·cols, rows and cols ≤ n",
            });
        }
        let rank = rank.min(rows).min(cols);
        let mut rng = rng_for(seed, 0);
        let q = (0..rank * cols)
            .map(|_| (rng.next_u32() >> 8) as f32 * (2.0 / 16_777_216.0) - 1.0)
            .collect();
        Ok(PowerSgd {
            n,
            rows,
            cols,
            rank,
            q,
        })
    }

    /// (rows, cols, effective rank).
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.rows, self.cols, self.rank)
    }

    /// Length of P (rows·r).
    pub fn p_len(&self) -> usize {
        self.rows * self.rank
    }

    /// Q, r×cols (transposed), as the all-reduce must see it.
    pub fn q(&self) -> &[f32] {
        &self.q
    }

    /// Q for the in-place all-reduce after [`PowerSgd::compute_q`].
    pub fn q_mut(&mut self) -> &mut [f32] {
        &mut self.q
    }

    /// Row `i` of M (shorter, or empty, past n).
    fn row<'a>(&self, m: &'a [f32], i: usize) -> &'a [f32] {
        let start = (i * self.cols).min(m.len());
        &m[start..((i + 1) * self.cols).min(m.len())]
    }

    fn q_col(&self, j: usize) -> &[f32] {
        &self.q[j * self.cols..(j + 1) * self.cols]
    }

    /// Step 1: `p = M·Q` (`m.len()` = n, `p.len()` = rows·r).
    pub fn compute_p(&self, m: &[f32], p: &mut [f32]) -> Result<()> {
        check_len("powersgd", "m", m.len(), self.n)?;
        check_len("powersgd", "p", p.len(), self.p_len())?;
        for (i, pi) in p.chunks_exact_mut(self.rank.max(1)).enumerate() {
            let row = self.row(m, i);
            for (j, o) in pi.iter_mut().enumerate() {
                *o = dot(row, self.q_col(j));
            }
        }
        Ok(())
    }

    /// Step 2: orthonormalises the columns of `p` (after its all-reduce).
    pub fn orthonormalize(&self, p: &mut [f32]) -> Result<()> {
        check_len("powersgd", "p", p.len(), self.p_len())?;
        let r = self.rank;
        let col_norm = |p: &[f32], j: usize| {
            p.chunks_exact(r)
                .map(|row| (row[j] as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        for j in 0..r {
            let before = col_norm(p, j);
            // Two projection sweeps ("twice is enough") keep f32 columns orthogonal.
            for _ in 0..2 {
                for k in 0..j {
                    let d: f64 = p
                        .chunks_exact(r)
                        .map(|row| row[j] as f64 * row[k] as f64)
                        .sum();
                    for row in p.chunks_exact_mut(r) {
                        row[j] -= (d * row[k] as f64) as f32;
                    }
                }
            }
            let norm = col_norm(p, j);
            let inv = if norm > DROP_RELATIVE * before && norm > 1e-20 {
                (1.0 / norm) as f32
            } else {
                0.0
            };
            for row in p.chunks_exact_mut(r) {
                row[j] *= inv;
            }
        }
        Ok(())
    }

    /// Step 3: `Q = Mᵀ·p`, stored in the codec (then all-reduce [`PowerSgd::q_mut`]).
    pub fn compute_q(&mut self, m: &[f32], p: &[f32]) -> Result<()> {
        check_len("powersgd", "m", m.len(), self.n)?;
        check_len("powersgd", "p", p.len(), self.p_len())?;
        let mut q = std::mem::take(&mut self.q);
        q.fill(0.0);
        for (i, pi) in p.chunks_exact(self.rank.max(1)).enumerate() {
            let row = self.row(m, i);
            for (qj, &pij) in q.chunks_exact_mut(self.cols).zip(pi) {
                axpy(&mut qj[..row.len()], pij, row);
            }
        }
        self.q = q;
        Ok(())
    }

    /// Step 4: `out = P·Qᵀ` restricted to the n elements (`out.len()` = n).
    pub fn approximate(&self, p: &[f32], out: &mut [f32]) -> Result<()> {
        check_len("powersgd", "out", out.len(), self.n)?;
        check_len("powersgd", "p", p.len(), self.p_len())?;
        for (i, o) in out.chunks_mut(self.cols.max(1)).enumerate() {
            o.fill(0.0);
            let pi = &p[i * self.rank..(i + 1) * self.rank];
            for (j, &pij) in pi.iter().enumerate() {
                axpy(o, pij, &self.q_col(j)[..o.len()]);
            }
        }
        Ok(())
    }
}

/// Σ a_i·b_i over the shorter length, with 8 lanes so that it vectorises.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// y += a·x over the shorter length.
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_view_is_always_accepted() {
        for n in (1..5000).chain([1 << 20, (1 << 24) + 1, 999_983]) {
            let (rows, cols, rank) = view(n, 4);
            let ps = PowerSgd::with_view(n, rows, cols, 4, 0).unwrap();
            assert_eq!(ps.shape(), (rows, cols, rank), "n = {n}");
        }
        assert!(PowerSgd::with_view(10, 1, 1 << 40, 4, 0).is_err());
        assert!(PowerSgd::with_view(10, 4, 4, 4, 0).is_err());
        assert!(PowerSgd::with_view(10, 3, 3, 4, 0).is_err());
    }

    #[test]
    fn view_is_ceil_sqrt() {
        assert_eq!(view(16, 4), (4, 4, 4));
        assert_eq!(view(17, 4), (5, 4, 4));
        assert_eq!(view(2, 4), (2, 1, 1));
        assert_eq!(view(1 << 20, 4), (1024, 1024, 4));
        assert_eq!(view(0, 4), (0, 0, 0));
    }

    #[test]
    fn rank_one_matrix_is_recovered_in_one_step() {
        let (rows, cols) = (6, 5);
        let u: Vec<f32> = (0..rows).map(|i| i as f32 - 2.5).collect();
        let v: Vec<f32> = (0..cols).map(|c| 1.0 + c as f32 * 0.5).collect();
        let m: Vec<f32> = (0..rows * cols)
            .map(|k| u[k / cols] * v[k % cols])
            .collect();
        let mut ps = PowerSgd::with_view(rows * cols, rows, cols, 1, 9).unwrap();
        let mut p = vec![0.0; ps.p_len()];
        ps.compute_p(&m, &mut p).unwrap();
        ps.orthonormalize(&mut p).unwrap();
        ps.compute_q(&m, &p).unwrap();
        let mut out = vec![0.0; m.len()];
        ps.approximate(&p, &mut out).unwrap();
        for (a, b) in m.iter().zip(&out) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
