//! Running under `mpirun`. Built with the cargo feature `mpi` (rsmpi on the system MPI), a
//! `pfs-ior` / `pfs-mdtest` process that finds an MPI launcher's environment
//! ([`LAUNCHER_VARS`]) is one rank of an MPI job: [`crate::comm::Comm`] is backed by
//! `MPI_COMM_WORLD` (native barriers, `MPI_Allreduce`, `MPI_Allgather`) instead of the
//! loopback coordinator of `--np`.
//!
//! Set-up, collectively ([`dispatch`]): MPI is initialised; the ranks count their hosts (a
//! hash of `MPI_Get_processor_name`); across hosts, every rank estimates the offset of its
//! clock to rank 0's so that the timing reductions compare one clock. Without `--config`, rank
//! 0 starts the embedded cluster (on loopback, so only for jobs on one host) and broadcasts the
//! path of its configuration file; with `--config`, every rank uses that cluster. Likewise
//! rank 0 makes the POSIX baseline's temporary directory and broadcasts its path unless
//! `--posix-dir` is given. A rank whose job fails aborts the MPI job (`MPI_Abort`), since the
//! others may be waiting for it in a collective; a failed data check is known to every rank
//! and ends the job normally with status 2 everywhere.
//!
//! Built without the feature, a process under an MPI launcher with more than one rank refuses
//! to run, rather than running N independent jobs.

use crate::comm::Comm;
use crate::launch::Launch;
use std::path::Path;

/// Environment variables that MPI launchers set in every process they start: Open MPI's
/// `mpirun`, PMIx launchers (Open MPI ≥ 4, `srun --mpi=pmix`), and PMI ones (MPICH's Hydra,
/// Intel MPI, `srun --mpi=pmi2`).
pub const LAUNCHER_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"];

/// Whether this process was started by an MPI launcher.
pub fn under_mpirun() -> bool {
    LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some())
}

/// The job size the launcher announces, when it does.
pub fn launcher_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Runs the job as one MPI rank when started by an MPI launcher; `None` when not (the caller
/// goes on with `--np` or a single rank). `body` is the rank's job: given its [`Comm`], the
/// cluster configuration file (when the job uses pfs) and the directory of relative POSIX
/// paths, it returns 0, 2 (a data check failed, on every rank) or another status (this rank
/// failed).
pub fn dispatch(l: Launch, np_given: bool, body: impl FnOnce(&mut Comm, Option<&Path>, &Path) -> i32) -> Option<i32> {
    if !under_mpirun() {
        return None;
    }
    #[cfg(feature = "mpi")]
    {
        Some(imp::run(l, np_given, body))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = (np_given, body);
        match launcher_size() {
            Some(1) => None,
            n => {
                let n = n.map(|n| n.to_string()).unwrap_or_else(|| "several".into());
                eprintln!(
                    "{}: error: started by mpirun ({n} ranks) but built without the `mpi` cargo feature; \
                     rebuild with `--features benchmarks/mpi`, or run without mpirun using --np N",
                    l.tool
                );
                Some(1)
            }
        }
    }
}

#[cfg(feature = "mpi")]
pub use imp::{MpiLink, Reduce};

#[cfg(feature = "mpi")]
mod imp {
    use super::*;
    use crate::comm::{now, set_clock_offset};
    use crate::launch::EMBEDDED_STORAGE;
    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use mpi::Threading;
    use pfs_testkit::LocalCluster;
    use std::path::PathBuf;

    /// The reductions [`Comm`] needs.
    #[derive(Clone, Copy, Debug)]
    pub enum Reduce {
        Min,
        Max,
        Sum,
    }

    /// `MPI_COMM_WORLD` of this process. Dropping it finalises MPI.
    pub struct MpiLink {
        // Dropped in this order: the communicator, then the universe (MPI_Finalize).
        world: SimpleCommunicator,
        _universe: Universe,
    }

    impl MpiLink {
        pub fn barrier(&self) {
            self.world.barrier();
        }

        /// Every rank's `values` (all of the same length), indexed by rank.
        pub fn allgather(&self, values: &[f64]) -> Vec<Vec<f64>> {
            let size = self.world.size() as usize;
            if values.is_empty() {
                self.world.barrier();
                return vec![Vec::new(); size];
            }
            let mut all = vec![0f64; values.len() * size];
            self.world.all_gather_into(values, &mut all[..]);
            all.chunks(values.len()).map(|c| c.to_vec()).collect()
        }

        pub fn reduce(&self, v: f64, op: Reduce) -> f64 {
            let mut out = 0f64;
            let op = match op {
                Reduce::Min => SystemOperation::min(),
                Reduce::Max => SystemOperation::max(),
                Reduce::Sum => SystemOperation::sum(),
            };
            self.world.all_reduce_into(&v, &mut out, op);
            out
        }

        /// Ends the whole MPI job with `code`.
        pub fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }

        /// Rank 0's `value` on every rank: `Ok` of a string, or `Err` when rank 0 had none.
        fn broadcast(&self, value: Option<&str>) -> Result<String, ()> {
            let root = self.world.process_at_rank(0);
            let mut len: i64 = value.map(|v| v.len() as i64).unwrap_or(-1);
            root.broadcast_into(&mut len);
            if len < 0 {
                return Err(());
            }
            let mut bytes = value.map(|v| v.as_bytes().to_vec()).unwrap_or_else(|| vec![0u8; len as usize]);
            if len > 0 {
                root.broadcast_into(&mut bytes[..]);
            }
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }

    /// FNV-1a of a host name, exact in an f64.
    fn host_hash(name: &str) -> f64 {
        let mut h: u32 = 0x811c_9dc5;
        for b in name.bytes() {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
        h as f64
    }

    /// Sets this rank's clock offset to rank 0's: rank 0 broadcasts its clock right after a
    /// barrier, several times; the receipt time lags by at least the broadcast's latency, so
    /// the largest (rank 0's time - local time) is the closest estimate.
    fn sync_clock(link: &MpiLink) {
        let root = link.world.process_at_rank(0);
        let mut best = f64::NEG_INFINITY;
        for _ in 0..16 {
            link.world.barrier();
            let mut t = if link.world.rank() == 0 { now() } else { 0.0 };
            root.broadcast_into(&mut t);
            best = best.max(t - now());
        }
        if link.world.rank() != 0 && best.is_finite() {
            set_clock_offset(best);
        }
    }

    pub fn run(l: Launch, np_given: bool, body: impl FnOnce(&mut Comm, Option<&Path>, &Path) -> i32) -> i32 {
        let tool = l.tool;
        // Only the thread that calls block_on makes MPI calls.
        let Some((universe, _level)) = mpi::initialize_with_threading(Threading::Funneled) else {
            eprintln!("{tool}: error: MPI was already initialised");
            return 1;
        };
        let link = MpiLink { world: universe.world(), _universe: universe };
        let (rank, size) = (link.world.rank() as usize, link.world.size() as usize);
        let lead = rank == 0;
        let name = mpi::environment::processor_name().unwrap_or_default();
        let mut hosts: Vec<u64> = link.allgather(&[host_hash(&name)]).iter().map(|v| v[0] as u64).collect();
        hosts.sort_unstable();
        hosts.dedup();
        let nodes = hosts.len();
        if nodes > 1 {
            sync_clock(&link);
        }
        // Checks every rank makes alike, so all return together and MPI finalises normally.
        let refuse = if np_given {
            Some("--np starts rank processes itself; under mpirun, mpirun's -np sets the ranks".to_string())
        } else if l.uses_pfs && l.config.is_none() && nodes > 1 {
            Some(format!(
                "the job spans {nodes} hosts: the embedded cluster listens on rank 0's loopback only; \
                 start a cluster and pass --config FILE (readable on every host)"
            ))
        } else {
            None
        };
        if let Some(why) = refuse {
            if lead {
                eprintln!("{tool}: error: {why}");
            }
            return 1;
        }

        let rt = match crate::runtime() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("{tool}: rank {rank}: error: {e}");
                link.abort(1);
            }
        };
        // Rank 0 starts the embedded cluster and tells the others where its configuration is.
        let mut cluster = None;
        let config: Option<PathBuf> = match (l.uses_pfs, l.config) {
            (true, None) => {
                let mine = if lead {
                    match rt.block_on(LocalCluster::start(EMBEDDED_STORAGE)) {
                        Ok(c) => {
                            eprintln!(
                                "{tool}: embedded cluster: 1 pfs-meta + {EMBEDDED_STORAGE} pfs-storage on loopback in {}",
                                c.dir().display()
                            );
                            let p = c.config_path().to_string_lossy().into_owned();
                            cluster = Some(c);
                            Some(p)
                        }
                        Err(e) => {
                            eprintln!("{tool}: error: starting the embedded cluster: {e}");
                            None
                        }
                    }
                } else {
                    None
                };
                match link.broadcast(mine.as_deref()) {
                    Ok(p) => Some(PathBuf::from(p)),
                    Err(()) => return 1,
                }
            }
            (_, c) => c,
        };
        // The same for the POSIX baseline's directory (same file system as the cluster's data).
        let mut posix_tmp = None;
        let mut posix_made = None;
        let posix_dir = match (l.uses_posix, l.posix_dir) {
            (true, None) => {
                let mine = if lead {
                    match tempfile::Builder::new().prefix("pfs-bench-posix-").tempdir() {
                        Ok(d) => {
                            let p = d.path().to_string_lossy().into_owned();
                            posix_tmp = Some(d);
                            Some(p)
                        }
                        Err(e) => {
                            eprintln!("{tool}: error: creating a directory for the POSIX baseline: {e}");
                            None
                        }
                    }
                } else {
                    None
                };
                match link.broadcast(mine.as_deref()) {
                    Ok(p) => {
                        let p = PathBuf::from(p);
                        // Another host: its own directory of that name (a file-per-process run
                        // then measures each host's local disk).
                        if !p.exists() {
                            if let Err(e) = std::fs::create_dir_all(&p) {
                                eprintln!("{tool}: rank {rank}: error: creating {}: {e}", p.display());
                                link.abort(1);
                            }
                            posix_made = Some(p.clone());
                        }
                        Some(p)
                    }
                    Err(()) => {
                        drop(cluster);
                        return 1;
                    }
                }
            }
            (_, d) => d,
        };
        let posix_dir = posix_dir.unwrap_or_else(|| PathBuf::from("."));

        let mut comm = Comm::mpi(rank, size, nodes, link);
        let status = body(&mut comm, config.as_deref(), &posix_dir);
        let link = comm.into_mpi().expect("an MPI comm");
        if status != 0 && status != 2 {
            // The other ranks may be inside a collective waiting for this one.
            if let Some(c) = cluster {
                c.stop();
            }
            drop(posix_tmp);
            eprintln!("{tool}: rank {rank}: aborting the MPI job");
            link.abort(status);
        }
        // Nobody uses the cluster or the directory any more once all are here.
        link.barrier();
        if let Some(p) = posix_made {
            let _ = std::fs::remove_dir_all(p);
        }
        drop(posix_tmp);
        if let Some(c) = cluster {
            c.stop();
        }
        drop(link);
        status
    }
}
