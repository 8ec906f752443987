//! The launching process of `pfs-ior` / `pfs-mdtest`: starts the embedded cluster (when no
//! `--config` is given and the run uses pfs), makes the POSIX baseline's directory, starts the
//! rank processes ([`crate::comm::launch`]) and cleans up.

use crate::comm::{self, RankArgs};
use pfs_client::cluster::LocalCluster;
use std::path::PathBuf;

/// Storage servers of the embedded cluster.
pub const EMBEDDED_STORAGE: u32 = 4;

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
    let rt = match pfs_client::tool::runtime() {
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
