//! Who am I and where do we meet: the rank, world size and rendezvous store, read from the
//! environment of the launchers people use.
//!
//! | launcher | rank | world | local rank | store |
//! |---|---|---|---|---|
//! | `topoccl run` | `TOPOCCL_RANK` | `TOPOCCL_WORLD_SIZE` | `TOPOCCL_LOCAL_RANK` | `TOPOCCL_STORE` (hosted by the launcher) |
//! | torchrun | `RANK` | `WORLD_SIZE` | `LOCAL_RANK` | `MASTER_ADDR`:`MASTER_PORT`, hosted by rank 0 |
//! | Open MPI | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` | as torchrun |
//! | Slurm | `SLURM_PROCID` | `SLURM_NTASKS` | `SLURM_LOCALID` | as torchrun |
//!
//! `TOPOCCL_STORE` (`tcp://host:port`, `file:///dir` or `etcd://host:port[,host:port]`)
//! always wins, under every launcher: a store someone else hosts (`topoccl store`, the
//! launcher, an etcd cluster). Otherwise rank 0 hosts a TCP store at
//! `MASTER_ADDR:MASTER_PORT`.

use crate::error::{Error, Result};
use crate::store::StoreAddr;
use topoccl_plan::Rank;

/// What a process learns from its launcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchInfo {
    pub rank: Rank,
    pub world: u32,
    pub local_rank: u32,
    pub local_world: u32,
    pub store: StoreAddr,
    /// Whether this process must host the store (rank 0 under torchrun, MPI or Slurm).
    pub host_store: bool,
    pub job_id: String,
    /// Which launcher the values came from (for messages).
    pub source: &'static str,
}

struct Source {
    name: &'static str,
    rank: &'static str,
    world: &'static str,
    local_rank: &'static str,
    local_world: &'static str,
}

const SOURCES: [Source; 4] = [
    Source {
        name: "topoccl",
        rank: "TOPOCCL_RANK",
        world: "TOPOCCL_WORLD_SIZE",
        local_rank: "TOPOCCL_LOCAL_RANK",
        local_world: "TOPOCCL_LOCAL_WORLD_SIZE",
    },
    Source {
        name: "torchrun",
        rank: "RANK",
        world: "WORLD_SIZE",
        local_rank: "LOCAL_RANK",
        local_world: "LOCAL_WORLD_SIZE",
    },
    Source {
        name: "Open MPI",
        rank: "OMPI_COMM_WORLD_RANK",
        world: "OMPI_COMM_WORLD_SIZE",
        local_rank: "OMPI_COMM_WORLD_LOCAL_RANK",
        local_world: "OMPI_COMM_WORLD_LOCAL_SIZE",
    },
    Source {
        name: "Slurm",
        rank: "SLURM_PROCID",
        world: "SLURM_NTASKS",
        local_rank: "SLURM_LOCALID",
        local_world: "SLURM_NTASKS_PER_NODE",
    },
];

fn number(lookup: &dyn Fn(&str) -> Option<String>, key: &str) -> Result<Option<u32>> {
    match lookup(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map(Some)
            .map_err(|_| Error::Config(format!("{key}='{v}' is not a non-negative integer"))),
    }
}

impl LaunchInfo {
    /// Reads the process environment.
    pub fn from_env() -> Result<LaunchInfo> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// Reads launch settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<LaunchInfo> {
        let source = SOURCES
            .iter()
            .find(|s| lookup(s.rank).is_some() && lookup(s.world).is_some())
            .ok_or_else(|| {
                Error::Config(
                    "no launcher environment: set TOPOCCL_RANK and TOPOCCL_WORLD_SIZE (or run \
                     under `topoccl run`, torchrun, mpirun or srun)"
                        .into(),
                )
            })?;
        let rank = number(lookup, source.rank)?.expect("checked above");
        let world = number(lookup, source.world)?.expect("checked above");
        if world == 0 {
            return Err(Error::Config(format!(
                "{} is 0; a job needs at least one rank",
                source.world
            )));
        }
        if rank >= world {
            return Err(Error::Config(format!(
                "{}={rank} is not below {}={world}",
                source.rank, source.world
            )));
        }
        let local_rank = number(lookup, source.local_rank)?.unwrap_or(0);
        let local_world = number(lookup, source.local_world)?.unwrap_or(1).max(1);
        let (store, host_store) = match lookup("TOPOCCL_STORE") {
            Some(s) => (s.parse::<StoreAddr>()?, false),
            None => match (lookup("MASTER_ADDR"), lookup("MASTER_PORT")) {
                (Some(addr), Some(port)) => {
                    let port: u16 = port.trim().parse().map_err(|_| {
                        Error::Config(format!("MASTER_PORT='{port}' is not a port number"))
                    })?;
                    (StoreAddr::Tcp(format!("{addr}:{port}")), rank == 0)
                }
                _ => {
                    return Err(Error::Config(format!(
                        "no rendezvous store: set TOPOCCL_STORE=tcp://HOST:PORT (or file:///DIR, \
                         etcd://HOST:PORT), \
                         or MASTER_ADDR and MASTER_PORT for rank 0 to host one (launcher: {})",
                        source.name
                    )))
                }
            },
        };
        let job_id = [
            "TOPOCCL_JOB_ID",
            "TORCHELASTIC_RUN_ID",
            "SLURM_JOB_ID",
            "OMPI_MCA_ess_base_jobid",
        ]
        .iter()
        .find_map(|k| lookup(k))
        .unwrap_or_else(|| derived_job_id(&store));
        Ok(LaunchInfo {
            rank,
            world,
            local_rank,
            local_world,
            store,
            host_store,
            job_id,
            source: source.name,
        })
    }
}

/// The job id when no launcher gave one: named after the store the job meets in (which
/// every rank knows), so two jobs meeting in different stores never share keys, and two
/// in one store need ids of their own (`TOPOCCL_JOB_ID`).
fn derived_job_id(store: &StoreAddr) -> String {
    let text = store.to_string();
    format!(
        "store-{:016x}",
        crate::wire::fnv1a(text.as_bytes(), crate::wire::FNV_OFFSET)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn info(pairs: &[(&str, &str)]) -> Result<LaunchInfo> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LaunchInfo::from_lookup(&|k| m.get(k).cloned())
    }

    #[test]
    fn launchers() {
        let t = info(&[
            ("TOPOCCL_RANK", "2"),
            ("TOPOCCL_WORLD_SIZE", "4"),
            ("TOPOCCL_LOCAL_RANK", "2"),
            ("TOPOCCL_STORE", "tcp://127.0.0.1:7000"),
            ("TOPOCCL_JOB_ID", "abc"),
        ])
        .unwrap();
        assert_eq!(
            (t.rank, t.world, t.local_rank, t.source),
            (2, 4, 2, "topoccl")
        );
        assert!(!t.host_store);
        assert_eq!(t.job_id, "abc");
        let tr = info(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap();
        assert_eq!(tr.store, StoreAddr::Tcp("10.0.0.1:29500".into()));
        assert!(tr.host_store);
        // No job id given: one of the store's, the same on every rank, never "default".
        assert_eq!(tr.job_id, derived_job_id(&tr.store));
        assert!(
            tr.job_id.starts_with("store-") && tr.job_id.len() == 22,
            "{}",
            tr.job_id
        );
        let other = derived_job_id(&StoreAddr::Tcp("10.0.0.1:29501".into()));
        assert_ne!(tr.job_id, other);
        let mpi = info(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("TOPOCCL_STORE", "file:///tmp/x"),
        ])
        .unwrap();
        assert_eq!((mpi.rank, mpi.local_rank, mpi.source), (3, 1, "Open MPI"));
        let slurm = info(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ])
        .unwrap();
        assert_eq!((slurm.rank, slurm.world, slurm.source), (1, 2, "Slurm"));
        let etcd = info(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("TOPOCCL_STORE", "etcd://10.0.0.1:2379,10.0.0.2:2379"),
        ])
        .unwrap();
        assert_eq!(
            etcd.store,
            StoreAddr::Etcd(vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()])
        );
        assert!(!etcd.host_store);
        assert!(!slurm.host_store);
    }

    #[test]
    fn bad_environment() {
        let e = info(&[]).unwrap_err().to_string();
        assert!(e.contains("TOPOCCL_RANK"), "{e}");
        let e = info(&[("RANK", "4"), ("WORLD_SIZE", "4")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK=4 is not below WORLD_SIZE=4"), "{e}");
        let e = info(&[("RANK", "x"), ("WORLD_SIZE", "4")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK='x'"), "{e}");
        let e = info(&[("RANK", "0"), ("WORLD_SIZE", "4")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("TOPOCCL_STORE"), "{e}");
        let e = info(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "4"),
            ("TOPOCCL_STORE", "redis://x"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("tcp://"), "{e}");
    }
}
