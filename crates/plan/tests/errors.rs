//! Bad input yields a typed error whose message says what is wrong and what is allowed —
//! never a panic.

use topoccl_plan::{
    build, Algorithm, Collective, CollectiveSpec, CountMatrix, Hierarchy, PlanError, PlanParams,
};

fn err(spec: CollectiveSpec, algo: Algorithm, params: PlanParams) -> PlanError {
    build(spec, algo, params).expect_err("must be refused")
}

#[test]
fn world_size_zero() {
    let e = err(
        CollectiveSpec::new(Collective::AllReduce, 0, 8),
        Algorithm::Ring,
        PlanParams::default(),
    );
    assert_eq!(e, PlanError::EmptyWorld);
    assert!(e.to_string().contains("at least one rank"));
}

#[test]
fn root_out_of_range() {
    for c in [
        Collective::Broadcast,
        Collective::Reduce,
        Collective::Gather,
        Collective::Scatter,
    ] {
        let e = err(
            CollectiveSpec::new(c, 4, 8).with_root(9),
            Algorithm::Direct,
            PlanParams::default(),
        );
        assert_eq!(e, PlanError::RootOutOfRange { root: 9, world: 4 });
        assert!(e.to_string().contains("0..=3"), "{e}");
    }
}

#[test]
fn alltoallv_matrix_shape() {
    let e = CountMatrix::from_rows(&[vec![1, 2, 3], vec![1, 2]]).unwrap_err();
    assert!(matches!(
        e,
        PlanError::CountMatrixShape {
            rows: 2,
            bad_row: 0,
            row_len: 3
        }
    ));
    // A square matrix of the wrong size for the world.
    let mut spec =
        CollectiveSpec::all_to_all_v(CountMatrix::from_rows(&[vec![1, 2], vec![3, 4]]).unwrap());
    spec.world = 3;
    let e = err(spec, Algorithm::Pairwise, PlanParams::default());
    assert!(matches!(e, PlanError::CountMatrixShape { .. }), "{e}");
    let mut spec = CollectiveSpec::new(Collective::AllToAllV, 3, 4);
    spec.counts = None;
    assert_eq!(
        err(spec, Algorithm::Pairwise, PlanParams::default()),
        PlanError::MissingCountMatrix
    );
}

#[test]
fn counts_that_do_not_divide() {
    for c in [
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::Gather,
        Collective::Scatter,
        Collective::AllToAll,
    ] {
        let e = CollectiveSpec::from_total(c, 4, 10).unwrap_err();
        assert_eq!(
            e,
            PlanError::CountNotDivisible {
                collective: c,
                count: 10,
                world: 4
            }
        );
        assert!(e.to_string().contains("use a multiple of 4"), "{e}");
    }
}

#[test]
fn unknown_or_unsupported_algorithm() {
    let e = "warp-drive".parse::<Algorithm>().unwrap_err();
    assert!(matches!(
        e,
        PlanError::UnknownName {
            what: "algorithm",
            ..
        }
    ));
    assert!(
        e.to_string().contains("ring") && e.to_string().contains("bruck"),
        "{e}"
    );
    let e = err(
        CollectiveSpec::new(Collective::Barrier, 4, 0),
        Algorithm::Ring,
        PlanParams::default(),
    );
    match &e {
        PlanError::UnsupportedAlgorithm { available, .. } => {
            assert_eq!(available, &vec!["dissemination".to_string()])
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn bad_parameters_trees_and_groups() {
    let spec = || CollectiveSpec::new(Collective::AllReduce, 4, 8);
    let e = err(
        spec(),
        Algorithm::Ring,
        PlanParams::default().with_chunks(0),
    );
    assert!(matches!(
        e,
        PlanError::InvalidParam {
            param: "chunks",
            ..
        }
    ));
    let e = err(spec(), Algorithm::Bruck, PlanParams::default());
    assert!(matches!(e, PlanError::UnsupportedAlgorithm { .. }));
    let e = err(
        CollectiveSpec::new(Collective::AllGather, 4, 8),
        Algorithm::Bruck,
        PlanParams::default().with_channels(2),
    );
    assert!(e.to_string().contains("--channels 1"), "{e}");
    let e = err(
        spec(),
        Algorithm::ParentTree {
            parents: vec![None, Some(0), Some(3), Some(2)],
        },
        PlanParams::default(),
    );
    assert!(matches!(e, PlanError::InvalidTree(_)), "{e}");
    let e = err(
        CollectiveSpec::new(Collective::Broadcast, 4, 8).with_root(2),
        Algorithm::ParentTree {
            parents: vec![None, Some(0), Some(0), Some(0)],
        },
        PlanParams::default(),
    );
    assert!(e.to_string().contains("root the tree at 2"), "{e}");
    let e = err(
        spec(),
        Algorithm::Hierarchical(Box::new(Hierarchy {
            groups: vec![vec![0, 1, 2], vec![3]],
            intra: Algorithm::Ring,
            inter: Algorithm::Ring,
        })),
        PlanParams::default(),
    );
    assert!(matches!(e, PlanError::InvalidGroups(_)), "{e}");
    let e = err(
        spec(),
        Algorithm::Hierarchical(Box::new(Hierarchy {
            groups: vec![vec![0, 1], vec![2, 3]],
            intra: Algorithm::Ring,
            inter: Algorithm::Bruck,
        })),
        PlanParams::default(),
    );
    assert!(matches!(e, PlanError::UnsupportedAlgorithm { .. }), "{e}");
}

#[test]
fn chunk_size_sets_pieces() {
    let spec = CollectiveSpec::new(Collective::AllReduce, 4, 1 << 20);
    // A rank's share is 1 MiB of f32; 256 KiB pieces make 4 of them.
    let p = PlanParams::default().with_chunk_bytes(&spec, 256 << 10);
    assert_eq!(p.chunks, 4);
    assert_eq!(
        PlanParams::default()
            .with_chunk_bytes(&spec, 1 << 40)
            .chunks,
        1
    );
}
