//! Shared by the integration tests: every algorithm of the catalogue, constructed for a
//! given collective and world (trees and hierarchies need arguments).

#![allow(dead_code)]

use topoccl_plan::{
    algo, AlgoKind, Algorithm, Collective, CollectiveSpec, CountMatrix, Hierarchy, Rank,
};

/// Parent arrays of several shapes, rooted at `root`: a star, a binary heap, a chain and a
/// scrambled tree.
pub fn trees(p: u32, root: Rank) -> Vec<Vec<Option<Rank>>> {
    let abs = |rel: u32| (rel + root) % p;
    let shapes: [&dyn Fn(u32) -> u32; 4] = [&|_| 0, &|v| (v - 1) / 2, &|v| v - 1, &|v| {
        (v.wrapping_mul(2654435761) >> 7) % v
    }];
    shapes
        .iter()
        .map(|f| {
            let mut parents = vec![None; p as usize];
            for rel in 1..p {
                parents[abs(rel) as usize] = Some(abs(f(rel)));
            }
            parents
        })
        .collect()
}

/// Hierarchies over contiguous and strided groups, with several inner algorithms.
pub fn hierarchies(p: u32) -> Vec<Algorithm> {
    let mut out = Vec::new();
    for g in [2u32, 3, 4, 8] {
        if p % g != 0 || g == p {
            continue;
        }
        let n = p / g;
        let contiguous: Vec<Vec<Rank>> = (0..n).map(|j| (j * g..(j + 1) * g).collect()).collect();
        let strided: Vec<Vec<Rank>> = (0..n)
            .map(|j| (0..g).map(|i| i * n + j).collect())
            .collect();
        for (groups, intra, inter) in [
            (contiguous.clone(), Algorithm::Ring, Algorithm::Ring),
            (contiguous, Algorithm::Direct, Algorithm::Rabenseifner),
            (strided, Algorithm::Ring, Algorithm::DoubleBinaryTree),
        ] {
            out.push(Algorithm::Hierarchical(Box::new(Hierarchy {
                groups,
                intra,
                inter,
            })));
        }
    }
    out
}

/// Every algorithm that serves `collective` on `p` ranks.
pub fn algorithms(collective: Collective, p: u32, root: Rank) -> Vec<Algorithm> {
    let mut out = Vec::new();
    for kind in algo::available(collective) {
        match kind {
            AlgoKind::ParentTree => out.extend(
                trees(p, root)
                    .into_iter()
                    .map(|parents| Algorithm::ParentTree { parents }),
            ),
            AlgoKind::Hierarchical => out.extend(hierarchies(p)),
            AlgoKind::Rings => out.push(Algorithm::Rings {
                // Rank order, reversed, and every other rank first.
                orders: vec![
                    (0..p).collect(),
                    (0..p).rev().collect(),
                    (0..p).step_by(2).chain((1..p).step_by(2)).collect(),
                ],
            }),
            k => out.push(k.algorithm().expect("simple algorithm")),
        }
    }
    out
}

/// A spec of `collective` on `p` ranks with `count` elements per rank; all-to-all-v gets
/// an uneven matrix derived from `count`.
pub fn spec(collective: Collective, p: u32, count: u64, root: Rank) -> CollectiveSpec {
    if collective == Collective::AllToAllV {
        let rows: Vec<Vec<u64>> = (0..p as u64)
            .map(|i| {
                (0..p as u64)
                    .map(|j| (i * 7 + j * 3 + count) % (count + 2))
                    .collect()
            })
            .collect();
        return CollectiveSpec::all_to_all_v(CountMatrix::from_rows(&rows).unwrap());
    }
    let count = if collective == Collective::Barrier {
        0
    } else {
        count
    };
    CollectiveSpec::new(collective, p, count).with_root(root)
}
