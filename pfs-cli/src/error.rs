//! [`Error`]: what a command-line tool reports (as one line, with exit status 1).

use std::sync::Arc;

/// An error of the pfs tools.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A pfs client call failed (it names the path, chunk and server).
    #[error(transparent)]
    Client(#[from] pfs_client::Error),
    /// The configuration file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] pfs_common::Error),
    /// Starting daemons or a local cluster failed.
    #[error(transparent)]
    Cluster(#[from] pfs_testkit::Error),
    /// `pfs serve meta` stopped.
    #[error(transparent)]
    Meta(#[from] pfs_meta::MetaError),
    /// `pfs serve storage` stopped.
    #[error(transparent)]
    Storage(#[from] pfs_storage::StorageError),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The command cannot do what was asked (a directory without `-r`, a name to copy under
    /// that does not exist, no daemon on this host).
    #[error("{0}")]
    Usage(String),
    /// A check failed: bytes read back differ, a chunk does not match its SHA-256.
    #[error("{0}")]
    Mismatch(String),
    /// A worker task of the tool failed (panicked or was cancelled).
    #[error("{0}")]
    Task(String),
    /// What the tool was doing when `source` failed.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// A local I/O error, `what` naming the file or operation.
    pub fn io(what: impl std::fmt::Display, source: std::io::Error) -> Error {
        Error::Io { what: what.to_string(), source: Arc::new(source) }
    }

    /// The error as the cause of `context`.
    pub fn context(self, context: impl std::fmt::Display) -> Error {
        Error::Context { context: context.to_string(), source: Box::new(self) }
    }
}

/// Result alias with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
