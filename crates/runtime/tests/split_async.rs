//! `split` into sub-communicators and the nonblocking forms (start → `Work` → test/wait),
//! with ranks as threads over real loopback sockets.

mod common;

use std::time::{Duration, Instant};

use topoccl::{Config, Error, ReduceOp};

fn quick() -> Config {
    Config {
        timeout: Duration::from_secs(20),
        probe: false,
        ..Config::default()
    }
}

#[test]
fn split_by_parity_with_reversed_keys() {
    // Six ranks: evens and odds form two communicators ordered by descending rank;
    // rank 5 joins none.
    let out = common::run_world(6, quick(), |c| {
        let r = c.rank();
        let color = (r != 5).then_some(r % 2);
        let sub = c.split(color, 100 - r).unwrap();
        let Some(mut sub) = sub else {
            let mut all = [0i32];
            c.all_reduce(&[1i32], &mut all, ReduceOp::Sum).unwrap();
            assert_eq!(all[0], 6);
            return None;
        };
        let mut sum = [0i64];
        sub.all_reduce(&[i64::from(r)], &mut sum, ReduceOp::Sum)
            .unwrap_or_else(|e| panic!("rank {r}: {e}"));
        // The world still works after (and alongside) its split.
        let mut all = [0i32];
        let sub_rank = sub.rank();
        let world_rank = sub.world_rank(sub_rank);
        Some((sub_rank, sub.world(), sum[0], world_rank, {
            drop(sub);
            c.all_reduce(&[1i32], &mut all, ReduceOp::Sum).unwrap();
            all[0]
        }))
    });
    // Evens {0,2,4} reversed: 4 → 0, 2 → 1, 0 → 2; odds {1,3} reversed: 3 → 0, 1 → 1.
    let want = [
        Some((2, 3, 6, Some(0), 6)),
        Some((1, 2, 4, Some(1), 6)),
        Some((1, 3, 6, Some(2), 6)),
        Some((0, 2, 4, Some(3), 6)),
        Some((0, 3, 6, Some(4), 6)),
        None,
    ];
    for (r, (got, want)) in out.iter().zip(want).enumerate() {
        assert_eq!(*got, want, "rank {r}");
    }
}

#[test]
fn split_twice_keeps_the_splits_apart() {
    let out = common::run_world(4, quick(), |c| {
        let r = c.rank();
        let mut halves = c.split(Some(r / 2), r).unwrap().unwrap();
        let mut pairs = c.split(Some(r % 2), r).unwrap().unwrap();
        let mut a = [0i32];
        let mut b = [0i32];
        halves
            .all_reduce(&[r as i32], &mut a, ReduceOp::Sum)
            .unwrap();
        pairs
            .all_reduce(&[r as i32], &mut b, ReduceOp::Sum)
            .unwrap();
        // A split of a split.
        let mut single = halves.split(Some(halves.rank()), 0).unwrap().unwrap();
        let mut s = [0i32];
        single.all_reduce(&[7], &mut s, ReduceOp::Sum).unwrap();
        (a[0], b[0], single.world(), s[0])
    });
    assert_eq!(
        out,
        [(1, 2, 1, 7), (1, 4, 1, 7), (5, 2, 1, 7), (5, 4, 1, 7)]
    );
}

#[test]
fn nonblocking_operations_overlap_and_finish_in_order() {
    let out = common::run_world(3, quick(), |c| {
        let r = c.rank();
        let comm = std::mem::replace(c, placeholder());
        let mut ac = comm.into_async(8).unwrap();
        let sizes = [0usize, 1, 7, (1 << 20) + 3];
        let mut works: Vec<_> = sizes
            .iter()
            .map(|&n| {
                let buf: Vec<f32> = (0..n).map(|i| (r as usize + i) as f32).collect();
                ac.all_reduce(buf, ReduceOp::Sum).unwrap()
            })
            .collect();
        let gathered = ac.all_gather(vec![r as i64; 2]).unwrap();
        let rs = ac.reduce_scatter(vec![1u8; 3 * 5], ReduceOp::Sum).unwrap();
        let bcast = ac.broadcast(vec![r as f64; 3], 2).unwrap();
        let barrier = ac.barrier().unwrap();
        // Compute while the bytes move; poll without blocking.
        let mut spins = 0u64;
        while !works.iter_mut().all(|w| w.test()) {
            spins += 1;
            std::hint::black_box((0..1000).sum::<u64>());
        }
        let results: Vec<Vec<f32>> = works.into_iter().map(|w| w.wait().unwrap()).collect();
        let g = gathered.wait().unwrap();
        let s = rs.wait().unwrap();
        let b = bcast.wait().unwrap();
        barrier.wait().unwrap();
        assert_eq!(ac.pending(), 0);
        // The communicator comes back and still works blockingly.
        let mut back = ac.into_inner().unwrap();
        let mut one = [0i32];
        back.all_reduce(&[1i32], &mut one, ReduceOp::Sum).unwrap();
        (results, g, s, b, one[0], spins)
    });
    for (rank, (results, g, s, b, one, _spins)) in out.iter().enumerate() {
        for v in results {
            for (i, x) in v.iter().enumerate() {
                assert_eq!(*x, 3.0 * i as f32 + 3.0, "rank {rank} element {i}");
            }
        }
        assert_eq!(results[3].len(), (1 << 20) + 3);
        assert_eq!(g, &[0, 0, 1, 1, 2, 2]);
        assert_eq!(s, &[3u8; 5]);
        assert_eq!(b, &[2.0; 3]);
        assert_eq!(*one, 3);
    }
}

/// A communicator of one rank, to stand in for one moved out of a `&mut`.
fn placeholder() -> topoccl::Communicator {
    topoccl::Communicator::with_store(common::mem_store(), 0, 1, "placeholder", "p", quick())
        .unwrap()
}

#[test]
fn full_queue_is_refused_and_abort_ends_waiting_work_promptly() {
    let out = common::run_world(2, quick(), |c| {
        let r = c.rank();
        let comm = std::mem::replace(c, placeholder());
        if r == 1 {
            // Rank 1 never calls; it keeps its communicator alive until rank 0 is done.
            std::thread::sleep(Duration::from_secs(3));
            drop(comm);
            return None;
        }
        let mut ac = comm.into_async(2).unwrap();
        let a = ac.all_reduce(vec![1.0f32; 1024], ReduceOp::Sum).unwrap();
        let b = ac.barrier().unwrap();
        let refused = ac.barrier().map(|_| ()).unwrap_err();
        let abort = ac.abort_handle();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            abort.abort();
        });
        let t = Instant::now();
        let ea = a.wait().unwrap_err();
        let eb = b.wait().unwrap_err();
        let took = t.elapsed();
        drop(ac);
        Some((refused, ea, eb, took))
    });
    let (refused, ea, eb, took) = out[0].clone().unwrap();
    assert!(matches!(refused, Error::Busy(_)), "{refused}");
    assert!(refused
        .to_string()
        .contains("2 operations are already pending"));
    assert!(
        matches!(ea, Error::CommAborted(_)),
        "the running all-reduce: {ea}"
    );
    assert!(
        matches!(eb, Error::CommAborted(_)),
        "the queued barrier: {eb}"
    );
    assert!(took < Duration::from_secs(3), "abort took {took:?}");
}

#[test]
fn zero_depth_and_bad_reduce_scatter_input_are_errors() {
    let out = common::run_world(2, quick(), |c| {
        let comm = std::mem::replace(c, placeholder());
        let e = match comm.into_async(0) {
            Err(e) => e,
            Ok(_) => panic!("depth 0 accepted"),
        };
        e.to_string()
    });
    assert!(out[0].contains("depth of at least 1"));
    let out = common::run_world(2, quick(), |c| {
        let comm = std::mem::replace(c, placeholder());
        let mut ac = comm.into_async(4).unwrap();
        ac.reduce_scatter(vec![0f32; 5], ReduceOp::Sum)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    });
    assert!(out[0].contains("multiple of the world size"), "{}", out[0]);
}
