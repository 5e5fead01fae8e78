//! Shared by the detector tests (included with `#[path]`): seeded noise, and the
//! documented scenario behind `data/congestion_drop.json`. Compiled alone, it checks the
//! noise generator against splitmix64's published first outputs.

#![allow(dead_code)]

use serde::{Deserialize, Serialize};

/// Deterministic noise: splitmix64 (Steele, Lea, Flood 2014).
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-1, 1).
    pub fn symmetric(&mut self) -> f64 {
        self.unit() * 2.0 - 1.0
    }
}

pub const MS: u64 = 1_000_000;
pub const S: u64 = 1_000_000_000;

/// A recorded trace of one rank's completed transfers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// How the trace was made.
    pub scenario: String,
    pub rank: usize,
    pub world: usize,
    /// The probe's figures, the same for every peer.
    pub baseline_throughput_bps: f64,
    pub baseline_latency_s: f64,
    /// How often the runtime evaluates the detectors, ns.
    pub evaluate_every_ns: u64,
    /// When the trace ends, ns.
    pub end_ns: u64,
    /// `[peer, bytes, start_ns, end_ns]`, sorted by end.
    pub transfers: Vec<[u64; 4]>,
}

pub const DROP_SCENARIO: &str = "Rank 0 of 4; probe baseline 118 MB/s and 50 us to every \
peer. Peer 3: 4 MiB transfers back to back (each starts 1 ms after the previous ends) \
at 118 MB/s until t = 10 s, at 5% of it (5.9 MB/s) for transfers starting from 10 s to \
18 s, then 118 MB/s again, to t = 30 s. Peers 1 and 2: a 1 MiB transfer every 100 ms at \
118 MB/s. Every peer: a 4 KiB control message every 100 ms taking 60 us. Every duration \
is scaled by 1 + 0.1 u, u uniform in [-1, 1) from splitmix64 seeded 2026, drawn in \
generation order. Evaluated every 100 ms. Expected: one congestion alert on link 0->3, \
raised within 3 s of the drop and resolved within 4 s of the recovery; nothing else.";

/// Generates the trace `DROP_SCENARIO` describes.
pub fn drop_trace() -> Trace {
    let mut noise = SplitMix(2026);
    let base = 118e6;
    let end_ns = 30 * S;
    let mut transfers = Vec::new();
    let mut jitter = |nominal_s: f64| -> u64 {
        let scaled = nominal_s * (1.0 + 0.1 * noise.symmetric());
        (scaled * 1e9).round() as u64
    };
    let big = 4u64 << 20;
    let mut t = 0u64;
    while t < end_ns {
        let rate = if (10 * S..18 * S).contains(&t) {
            base * 0.05
        } else {
            base
        };
        let end = t + jitter(big as f64 / rate);
        transfers.push([3, big, t, end]);
        t = end + MS;
    }
    for tick in (0..end_ns).step_by(100 * MS as usize) {
        for peer in [1u64, 2] {
            let mib = 1u64 << 20;
            transfers.push([peer, mib, tick, tick + jitter(mib as f64 / base)]);
        }
        for peer in 1u64..=3 {
            let start = tick + 50 * MS;
            transfers.push([peer, 4096, start, start + jitter(60e-6)]);
        }
    }
    transfers.sort_by_key(|t| (t[3], t[0]));
    Trace {
        scenario: DROP_SCENARIO.to_string(),
        rank: 0,
        world: 4,
        baseline_throughput_bps: base,
        baseline_latency_s: 50e-6,
        evaluate_every_ns: 100 * MS,
        end_ns,
        transfers,
    }
}

#[test]
fn splitmix_matches_the_reference_outputs() {
    // First outputs of splitmix64 seeded 0 (as in the reference C implementation).
    let mut g = SplitMix(0);
    assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    let mut g = SplitMix(7);
    for _ in 0..1000 {
        let u = g.symmetric();
        assert!((-1.0..1.0).contains(&u));
    }
}
