//! What a data-parallel training step does with topoccl: average the gradients across
//! ranks, overlapping the communication of one bucket with the "backward pass" of the next,
//! and use a sub-communicator per pair of ranks.
//!
//! ```sh
//! cargo build --release -p topoccl --example train_step
//! topoccl run -n 4 target/release/examples/train_step
//! ```
//! It also runs under torchrun, `mpirun` or `srun` (see the README).

use topoccl::{Communicator, ReduceOp};

fn main() {
    if let Err(e) = run() {
        eprintln!("train_step: {e}");
        std::process::exit(1);
    }
}

fn run() -> topoccl::Result<()> {
    let mut world = Communicator::from_env()?;
    let (rank, n) = (world.rank(), world.world());

    // Pairs {0,1}, {2,3}, …: e.g. the ranks that share a host.
    let pair = world
        .split(Some(rank / 2), rank)?
        .expect("every rank has a color");

    // Blocking: every rank contributes rank + 1; the sum is n(n+1)/2 everywhere.
    let mut x = vec![(rank + 1) as f32; 1 << 16];
    world.all_reduce_in_place(&mut x, ReduceOp::Sum)?;
    let expect = (n * (n + 1) / 2) as f32;
    assert!(x.iter().all(|&v| v == expect), "rank {rank}: wrong sum");

    // Nonblocking: start each bucket's average as soon as it is "computed".
    let mut world = world.into_async(8)?;
    let mut pending = Vec::new();
    for bucket in 0..4 {
        let grads: Vec<f32> = (0..(1 << 18))
            .map(|i| (rank as f32) + (bucket * i) as f32 * 1e-6)
            .collect();
        pending.push(world.all_reduce(grads, ReduceOp::Avg)?);
    }
    for (bucket, work) in pending.into_iter().enumerate() {
        let avg = work.wait()?;
        let mean_rank = (n - 1) as f32 / 2.0;
        assert!((avg[0] - mean_rank).abs() < 1e-5, "bucket {bucket}");
    }
    let _world = world.into_inner()?;

    let mut token = vec![rank as i64];
    let mut pair = pair;
    pair.all_reduce_in_place(&mut token, ReduceOp::Max)?;
    println!(
        "rank {rank}/{n}: gradients averaged in 4 overlapped buckets; pair {} max rank {}",
        rank / 2,
        token[0]
    );
    Ok(())
}
