//! The launching process of `pfs-ior` / `pfs-mdtest`: starts the embedded cluster (when no
//! `--config` is given and the run uses pfs), makes the POSIX baseline's directory, starts the
//! rank processes ([`crate::comm::launch`]) and cleans up.

use crate::comm::{self, Comm, RankArgs};
use crate::mpirun;
use pfs_testkit::LocalCluster;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The options of `pfs-ior` and `pfs-mdtest` that say where and as what the process runs:
/// the launcher (`--np`, `--config`, `--posix-dir`) or one of its ranks (the hidden ones).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LaunchArgs {
    /// Rank processes to run on this host.
    #[arg(long)]
    pub np: Option<usize>,
    /// Cluster configuration file (default: an embedded cluster started for this run).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of relative POSIX test files (default: a new temporary directory, removed after).
    #[arg(long)]
    pub posix_dir: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub rank: Option<usize>,
    #[arg(long, hide = true)]
    pub ranks: Option<usize>,
    #[arg(long, hide = true)]
    pub coord: Option<SocketAddr>,
    #[arg(long, hide = true)]
    pub rank_config: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub rank_posix_dir: Option<PathBuf>,
}

/// Runs this process's part of a benchmark and returns its exit status: one rank of the `--np`
/// launcher, one rank of mpirun, or the launcher itself. `job` is a rank's work, given its
/// communicator, the cluster configuration (if it uses pfs) and the POSIX directory.
pub fn main(
    tool: &'static str,
    args: &LaunchArgs,
    uses_pfs: bool,
    uses_posix: bool,
    job: impl FnOnce(&mut Comm, Option<&Path>, &Path) -> i32,
) -> i32 {
    if let Some(rank) = args.rank {
        let mut comm = match args.coord {
            Some(addr) => match Comm::connect(rank, args.ranks.unwrap_or(1), addr) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{tool}: error: {e}");
                    return 1;
                }
            },
            None => Comm::solo(),
        };
        let posix_dir = args.rank_posix_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        return job(&mut comm, args.rank_config.as_deref(), &posix_dir);
    }
    let l = Launch {
        tool,
        np: args.np.unwrap_or(1),
        uses_pfs,
        uses_posix,
        config: args.config.clone(),
        posix_dir: args.posix_dir.clone(),
    };
    // Started by mpirun: this process is one MPI rank.
    if let Some(status) = mpirun::dispatch(l.clone(), args.np.is_some(), job) {
        return status;
    }
    run(l)
}

/// Storage servers of the embedded cluster.
pub const EMBEDDED_STORAGE: u32 = 4;

/// Longest wait for the embedded cluster's daemons to finish their start-up work.
pub const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the launcher needs to know.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    pub tool: &'a str,
    pub np: usize,
    pub uses_pfs: bool,
    pub uses_posix: bool,
    pub config: Option<PathBuf>,
    pub posix_dir: Option<PathBuf>,
}

/// Runs the job; returns the process exit status.
pub fn run(l: Launch) -> i32 {
    let tool = l.tool;
    if l.np == 0 {
        eprintln!("{tool}: error: --np must be at least 1");
        return 1;
    }
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{tool}: error: {e}");
            return 1;
        }
    };
    let mut cluster = None;
    let config = match (l.uses_pfs, l.config) {
        (true, None) => match rt.block_on(LocalCluster::start(EMBEDDED_STORAGE)) {
            Ok(c) => {
                eprintln!(
                    "{tool}: embedded cluster: 1 pfs-meta + {EMBEDDED_STORAGE} pfs-storage on loopback in {}",
                    c.dir().display()
                );
                // The daemons' start-up work (storage servers fill their pools of precreated
                // chunk files) would otherwise land in the first phase measured.
                if !rt.block_on(c.wait_settled(SETTLE_TIMEOUT)) {
                    eprintln!(
                        "{tool}: warning: the embedded cluster is still busy after {} s; measuring anyway",
                        SETTLE_TIMEOUT.as_secs()
                    );
                }
                let p = c.config_path().to_path_buf();
                cluster = Some(c);
                Some(p)
            }
            Err(e) => {
                eprintln!("{tool}: error: starting the embedded cluster: {e}");
                return 1;
            }
        },
        (_, c) => c,
    };
    // The POSIX baseline goes to the same file system as the embedded cluster's data (the
    // system temporary directory) unless --posix-dir says otherwise.
    let mut posix_tmp = None;
    let posix_dir = match (l.uses_posix, l.posix_dir) {
        (true, None) => match tempfile::Builder::new().prefix("pfs-bench-posix-").tempdir() {
            Ok(d) => {
                let p = d.path().to_path_buf();
                posix_tmp = Some(d);
                Some(p)
            }
            Err(e) => {
                eprintln!("{tool}: error: creating a directory for the POSIX baseline: {e}");
                return 1;
            }
        },
        (_, d) => d,
    };
    let status = match comm::launch(l.np, &RankArgs { config, posix_dir }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{tool}: error: starting rank processes: {e}");
            1
        }
    };
    drop(posix_tmp);
    if let Some(c) = cluster {
        c.stop();
    }
    status
}
