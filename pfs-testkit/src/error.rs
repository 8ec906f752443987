//! [`Error`]: why a local cluster or daemon could not be started.

use std::sync::Arc;

/// An error of the test kit.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A local file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Neither the daemon's executable nor `pfs` was found.
    #[error("cannot find {exe} or pfs in {dirs}; build them with `cargo build --release` or set PFS_BIN_DIR")]
    NoExecutable { exe: &'static str, dirs: String },
    /// A daemon exited while the cluster was starting.
    #[error("{daemon} exited ({status}) during start-up; its log says:\n{log}")]
    Exited { daemon: String, status: String, log: String },
    /// The cluster did not come up in time.
    #[error("cluster not ready within {secs} s: {last}")]
    NotReady { secs: u64, last: String },
    /// The cluster's configuration is invalid.
    #[error(transparent)]
    Config(#[from] pfs_common::Error),
    /// A client call failed.
    #[error(transparent)]
    Client(#[from] pfs_client::Error),
}

impl Error {
    pub(crate) fn io(what: impl std::fmt::Display, source: std::io::Error) -> Error {
        Error::Io { what: what.to_string(), source: Arc::new(source) }
    }
}

/// Result alias with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
