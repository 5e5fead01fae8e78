//! What this machine's memory allows: single-threaded `memcpy` bandwidth between two
//! buffers of SIZE bytes (default 16 MiB), the median of ROUNDS copies (default 50), in
//! the units `topoccl bench` uses (GB/s = 10^9 bytes per second, bytes copied / time).
//!
//! `cargo run --release -p topoccl --example memcpy -- [SIZE] [ROUNDS]`

use std::hint::black_box;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let parse = |a: Option<String>, default: usize, what: &str| -> usize {
        match a {
            None => default,
            Some(s) => s.parse().unwrap_or_else(|_| {
                eprintln!("error: {what} must be a whole number, not '{s}'");
                std::process::exit(2)
            }),
        }
    };
    let size = parse(args.next(), 16 << 20, "SIZE (bytes)");
    let rounds = parse(args.next(), 50, "ROUNDS").max(1);
    let src: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut dst = vec![0u8; size];
    // Touch both once so page faults are not timed.
    dst.copy_from_slice(&src);
    let mut secs: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    println!(
        "memcpy {size} B: {:.2} GB/s (median of {rounds}; {:.1} us per copy)",
        size as f64 / median / 1e9,
        median * 1e6
    );
}
