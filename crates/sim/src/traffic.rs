//! All-to-all-v traffic: who sends how many bytes to whom. A matrix comes from a text file
//! (one row per sending rank) or is drawn with hot experts, as the token routing of a
//! mixture-of-experts layer skews it; either way it becomes the count matrix of a real
//! all-to-all-v spec, planned and simulated like any other collective.
//!
//! The text format: one line per sending rank, its p entries separated by commas and/or
//! whitespace; entry j of line i is the bytes rank i sends to rank j, a plain number or a
//! size with a unit (`4MiB`, `64K`). Blank lines and `#` comments are skipped.

use topoccl_plan::units::parse_bytes;
use topoccl_plan::{CollectiveSpec, CountMatrix, DType};
use topoccl_topo::{cut_bound, SplitMix, Topology};

use crate::SimError;

/// The most ranks a matrix is built for: the spec holds three p×p tables of u64 (the
/// counts and both displacement tables), 384 MiB at 4,096 ranks.
pub const MAX_RANKS: u32 = 4096;

/// The bytes a count matrix for `world` ranks takes in memory.
pub fn matrix_memory(world: u32) -> u64 {
    3 * 8 * world as u64 * world as u64
}

fn check_world(world: u32) -> Result<(), SimError> {
    if world > MAX_RANKS {
        return Err(SimError::Invalid(format!(
            "an all-to-all-v over {world} ranks needs a {world}×{world} matrix ({:.0} MiB); \
             at most {MAX_RANKS} ranks are supported",
            matrix_memory(world) as f64 / 1048576.0
        )));
    }
    Ok(())
}

/// The all-to-all-v spec whose matrix is in `text` (from `origin`, named in errors as
/// `origin:line:column`), for a world of `world` ranks and elements of `dtype`.
pub fn parse(
    text: &str,
    origin: &str,
    world: u32,
    dtype: DType,
) -> Result<CollectiveSpec, SimError> {
    check_world(world)?;
    let elem = dtype.size() as u64;
    let at = |line: usize, col: usize, msg: String| {
        SimError::Invalid(format!("{origin}:{line}:{col}: {msg}"))
    };
    let mut rows: Vec<Vec<u64>> = Vec::new();
    let mut last_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let data = raw.split('#').next().unwrap_or("");
        if data.trim().is_empty() {
            continue;
        }
        last_line = line;
        if rows.len() == world as usize {
            return Err(at(
                line,
                1,
                format!(
                    "more than {world} rows; the matrix needs one row per rank and the \
                     topology places {world} ranks"
                ),
            ));
        }
        let mut row = Vec::with_capacity(world as usize);
        for (col, token) in tokens(data) {
            let bytes = entry(token).map_err(|m| at(line, col, m))?;
            if bytes % elem != 0 {
                return Err(at(
                    line,
                    col,
                    format!(
                        "{bytes} bytes is not a whole number of {dtype} elements ({elem} bytes \
                         each)"
                    ),
                ));
            }
            row.push(bytes / elem);
        }
        if row.len() != world as usize {
            return Err(at(
                line,
                1,
                format!(
                    "row {} has {} entries; expected {world}, one per rank (the topology \
                     places {world} ranks)",
                    rows.len(),
                    row.len()
                ),
            ));
        }
        rows.push(row);
    }
    if rows.len() != world as usize {
        return Err(SimError::Invalid(format!(
            "{origin}:{}: {} rows; expected {world}, one per sending rank (the topology \
             places {world} ranks)",
            last_line.max(1),
            rows.len()
        )));
    }
    let matrix = CountMatrix::from_rows(&rows).map_err(|e| SimError::Invalid(e.to_string()))?;
    Ok(CollectiveSpec::all_to_all_v(matrix).with_dtype(dtype))
}

/// The entries of a line with their 1-based columns (in characters).
fn tokens(line: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut col = 0;
    line.split(|c: char| c == ',' || c.is_whitespace())
        .map(move |t| {
            let start = col + 1;
            col += t.chars().count() + 1;
            (start, t)
        })
        .filter(|(_, t)| !t.is_empty())
}

fn entry(token: &str) -> Result<u64, String> {
    if let Ok(n) = token.parse::<u64>() {
        return Ok(n);
    }
    parse_bytes(token).map_err(|e| format!("'{token}' is not a byte count: {e}"))
}

/// An all-to-all-v of `total_bytes` in all, every rank sending an equal share, routed to
/// one expert per rank with Zipf popularity: the k-th most popular expert draws weight
/// 1/k^`skew` (0 = uniform). Which rank holds which popularity is a seeded shuffle, so the
/// hot experts land on different ranks per seed. Totals are exact (largest remainders).
pub fn hot_experts(
    world: u32,
    total_bytes: u64,
    dtype: DType,
    skew: f64,
    seed: u64,
) -> Result<CollectiveSpec, SimError> {
    check_world(world)?;
    if !(skew.is_finite() && skew >= 0.0) {
        return Err(SimError::Invalid(format!(
            "skew {skew}: the Zipf exponent must be zero (uniform) or more (1 ≈ a few hot \
             experts)"
        )));
    }
    let p = world as usize;
    let elems = total_bytes / dtype.size() as u64;
    let mut holder: Vec<usize> = (0..p).collect();
    SplitMix::new(seed).shuffle(&mut holder);
    let mut weight = vec![0.0; p];
    for (k, &r) in holder.iter().enumerate() {
        weight[r] = 1.0 / ((k + 1) as f64).powf(skew);
    }
    let sum: f64 = weight.iter().sum();
    let rows: Vec<Vec<u64>> = (0..p)
        .map(|i| {
            let share = elems / p as u64 + u64::from((i as u64) < elems % p as u64);
            split(share, &weight, sum)
        })
        .collect();
    let matrix = CountMatrix::from_rows(&rows).map_err(|e| SimError::Invalid(e.to_string()))?;
    Ok(CollectiveSpec::all_to_all_v(matrix).with_dtype(dtype))
}

/// `total` split in proportion to `weight`, rounded so that the parts sum to `total`.
fn split(total: u64, weight: &[f64], sum: f64) -> Vec<u64> {
    let exact: Vec<f64> = weight.iter().map(|w| total as f64 * w / sum).collect();
    let mut parts: Vec<u64> = exact.iter().map(|x| x.floor() as u64).collect();
    let short = total.saturating_sub(parts.iter().sum());
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &j in order.iter().cycle().take(short as usize) {
        parts[j] += 1;
    }
    parts
}

/// How uneven a traffic matrix is, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Skew {
    pub total: u64,
    /// Bytes per rank on average (sent, which is also received).
    pub mean: f64,
    /// The rank receiving the most, and its bytes.
    pub busiest_receiver: (u32, u64),
    /// The rank sending the most, and its bytes.
    pub busiest_sender: (u32, u64),
}

impl Skew {
    pub fn of(spec: &CollectiveSpec) -> Skew {
        let m = spec.matrix();
        let elem = spec.dtype.size() as u64;
        let busiest = |total: &dyn Fn(u32) -> u64| {
            (0..m.world())
                .map(|r| (r, total(r) * elem))
                .fold((0, 0), |best, x| if x.1 > best.1 { x } else { best })
        };
        let total: u64 = (0..m.world()).map(|r| m.send_total(r) * elem).sum();
        Skew {
            total,
            mean: total as f64 / m.world().max(1) as f64,
            busiest_receiver: busiest(&|r| m.recv_total(r)),
            busiest_sender: busiest(&|r| m.send_total(r)),
        }
    }

    /// `bytes` over the mean (1 = even).
    pub fn ratio(&self, bytes: u64) -> f64 {
        if self.mean > 0.0 {
            bytes as f64 / self.mean
        } else {
            1.0
        }
    }

    /// The busiest rank, sending or receiving, over the mean (1 = even).
    pub fn factor(&self) -> f64 {
        self.ratio(self.busiest_receiver.1.max(self.busiest_sender.1))
    }
}

/// A lower bound on an all-to-all-v's time on `t`, from the cuts of
/// [`topoccl_topo::lower_bound`]: every rank moves what it sends to others and what
/// others send it through its own links, every host and zone what its ranks exchange
/// with the rest (whichever way is heavier). Own blocks never leave their rank.
pub fn lower_bound(t: &Topology, spec: &CollectiveSpec) -> f64 {
    let m = spec.matrix();
    let elem = spec.dtype.size() as f64;
    let through_rank = |r: u32| {
        let own = m.get(r, r);
        (m.send_total(r) - own).max(m.recv_total(r) - own) as f64 * elem
    };
    let across = |ranks: &[u32]| {
        let mut inside = vec![false; m.world() as usize];
        for &r in ranks {
            inside[r as usize] = true;
        }
        let (mut out, mut into) = (0u64, 0u64);
        for &r in ranks {
            for peer in (0..m.world()).filter(|&q| !inside[q as usize]) {
                out += m.get(r, peer);
                into += m.get(peer, r);
            }
        }
        out.max(into) as f64 * elem
    };
    cut_bound(t, through_rank, across)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_experts_keep_the_total_and_skew_with_the_exponent() {
        let uniform = hot_experts(8, 1 << 20, DType::F32, 0.0, 1).unwrap();
        let m = uniform.matrix();
        assert!((0..8).all(|i| (0..8).all(|j| m.get(i, j) == (1 << 18) / 64)));
        let mut last = 1.0;
        for s in [0.5, 1.0, 2.0] {
            let spec = hot_experts(8, (1 << 20) + 4, DType::F32, s, 7).unwrap();
            let skew = Skew::of(&spec);
            assert_eq!(skew.total, (1 << 20) + 4);
            assert!(skew.factor() > last, "{s}: {skew:?}");
            last = skew.factor();
        }
        let (a, b) = (
            hot_experts(8, 1 << 20, DType::F32, 1.0, 7).unwrap(),
            hot_experts(8, 1 << 20, DType::F32, 1.0, 8).unwrap(),
        );
        assert_eq!(a, hot_experts(8, 1 << 20, DType::F32, 1.0, 7).unwrap());
        assert_ne!(
            Skew::of(&a).busiest_receiver.0,
            Skew::of(&b).busiest_receiver.0
        );
        assert!(hot_experts(8, 1 << 20, DType::F32, -1.0, 7).is_err());
        assert!(hot_experts(MAX_RANKS + 1, 1 << 20, DType::F32, 1.0, 7).is_err());
    }

    #[test]
    fn files_parse_with_units_comments_and_commas() {
        let text = "# bytes from row to column\n0, 4KiB 8\n\n16,0,4 # hot\n4 4 4\n";
        let spec = parse(text, "t.csv", 3, DType::F32).unwrap();
        let m = spec.matrix();
        assert_eq!((m.get(0, 1), m.get(1, 0), m.get(2, 2)), (1024, 4, 1));
        assert_eq!(spec.world, 3);
    }

    #[test]
    fn file_errors_name_line_and_column() {
        for (text, want) in [
            (
                "0 4 4\n4 x 4\n4 4 0\n",
                "t.csv:2:3: 'x' is not a byte count",
            ),
            (
                "0 4 4\n4 0\n4 4 0\n",
                "t.csv:2:1: row 1 has 2 entries; expected 3",
            ),
            ("0 4 4\n4 0 4\n", "t.csv:2: 2 rows; expected 3"),
            (
                "0 4 4\n4 0 4\n4 4 0\n4 4 4\n",
                "t.csv:4:1: more than 3 rows",
            ),
            (
                "0 4 4\n4 0 6\n4 4 0\n",
                "t.csv:2:5: 6 bytes is not a whole number of f32",
            ),
            ("", "t.csv:1: 0 rows; expected 3"),
        ] {
            let e = parse(text, "t.csv", 3, DType::F32).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
