//! Measurement programs for pfs: `pfs-ior` ([`ior`]) and `pfs-mdtest` ([`mdtest`]) take IOR's and
//! mdtest's command lines and print their output layouts, over pfs or over local files (the
//! POSIX baseline). `--np N` runs N rank processes on this host, joined by a small coordinator
//! ([`comm`]); without `--config` they run against an embedded cluster ([`launch`]). Built with
//! the cargo feature `mpi`, they also run as the ranks of `mpirun` ([`mpirun`]).

pub mod comm;
pub mod cpu;
pub mod error;
pub mod ior;
pub mod launch;
pub mod mdtest;
pub mod mpirun;
pub mod pattern;
pub mod store;

pub use error::{Error, Result};

use std::path::Path;

/// A multi-threaded runtime for a benchmark process or rank.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the tokio runtime", e))
}

/// A client of the cluster that configuration file `path` describes.
pub async fn connect(path: &Path) -> Result<pfs_client::Client> {
    let config = pfs_common::config::Config::load(path)?;
    Ok(pfs_client::Client::connect(pfs_client::ClientOptions::from_config(&config)?).await?)
}
