//! Communicators whose ranks are threads of this process, over real loopback sockets:
//! quick checks of the runtime against the reference executor.

mod common;

use topoccl::ReduceOp;

#[test]
fn all_reduce_small_and_large() {
    for (mode, cfg) in common::each_transport() {
        for world in [1u32, 2, 3, 4] {
            let out = common::run_world(world, cfg.clone(), move |c| {
                let r = c.rank() as f32;
                let mut res = Vec::new();
                for n in [0usize, 1, 7, (1 << 18) + 3] {
                    let input: Vec<f32> = (0..n).map(|i| r + i as f32).collect();
                    let mut output = vec![0.0f32; n];
                    c.all_reduce(&input, &mut output, ReduceOp::Sum).unwrap();
                    res.push(output);
                }
                res
            });
            let p = world as f32;
            for (rank, res) in out.iter().enumerate() {
                for v in res {
                    for (i, x) in v.iter().enumerate() {
                        let want = p * i as f32 + p * (p - 1.0) / 2.0;
                        assert_eq!(*x, want, "{mode:?} world {world} rank {rank} element {i}");
                    }
                }
            }
        }
    }
}

#[test]
fn conformance_matrix_small_sizes() {
    for (mode, cfg) in common::each_transport() {
        for world in [1u32, 2, 3, 4, 5] {
            let outcomes = common::run_world(world, cfg.clone(), move |c| {
                let cases = topoccl::selftest::cases(c.world(), Some(&[0, 1, 7, 1027]));
                let o = topoccl::selftest::run_all(c, &cases, 42);
                (cases.len(), o)
            });
            for (rank, (n, o)) in outcomes.iter().enumerate() {
                assert!(
                    o.failed.is_empty(),
                    "{mode:?} world {world} rank {rank}: {} of {n} failed:\n{}",
                    o.failed.len(),
                    o.failed
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                assert_eq!(o.passed, *n);
            }
        }
    }
}

#[test]
fn conformance_matrix_large_size() {
    for (mode, cfg) in common::each_transport() {
        for world in [2u32, 3] {
            let outcomes = common::run_world(world, cfg.clone(), move |c| {
                let cases: Vec<_> = topoccl::selftest::cases(c.world(), None)
                    .into_iter()
                    .filter(|k| k.spec.count > 1024)
                    .collect();
                let o = topoccl::selftest::run_all(c, &cases, 7);
                (cases.len(), o)
            });
            for (rank, (n, o)) in outcomes.iter().enumerate() {
                assert!(
                    o.failed.is_empty(),
                    "{mode:?} world {world} rank {rank}: {} of {n} failed:\n{}",
                    o.failed.len(),
                    o.failed
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                println!(
                    "{mode:?} world {world} rank {rank}: {n} large cases in {:?}",
                    o.elapsed
                );
            }
        }
    }
}
