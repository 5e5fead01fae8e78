//! The pure core of topoccl: collectives as data.
//!
//! A generator turns a [`CollectiveSpec`] and an [`Algorithm`] into a [`Plan`]: for every
//! rank, an ordered program of send / receive / reduce / copy steps over slices of its
//! input, output and scratch buffers, grouped into rounds. The same plan is proved correct
//! by [`verify`], run on real numbers by [`exec::execute`], priced by [`cost`], exported to
//! MSCCL's XML by [`msccl`], and executed on sockets by the runtime.
//!
//! This crate does no I/O, reads no clock and holds no randomness.

#![forbid(unsafe_code)]

pub mod algo;
pub mod avoid;
pub mod compiled;
pub mod cost;
pub mod error;
pub mod exec;
pub mod hazard;
pub mod ir;
pub mod machine;
pub mod msccl;
pub mod schedule;
pub mod spec;
pub mod text;
pub mod units;
pub mod verify;

pub use algo::{available, build, AlgoKind, Algorithm, Hierarchy, Tree};
pub use error::PlanError;
pub use ir::{Buf, Op, OpKind, Rank, Slice};
pub use schedule::{Plan, PlanDoc, PlanParams, Schedule, TransferInfo};
pub use spec::{Bandwidth, Collective, CollectiveSpec, CountMatrix, DType, Placement, ReduceOp};
pub use verify::{verify, Report, VerifyError};
