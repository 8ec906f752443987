//! [`Error`]: why a benchmark run failed (a rank prints it and exits non-zero).

use std::sync::Arc;

/// An error of the benchmarks.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A pfs client call failed.
    #[error(transparent)]
    Client(#[from] pfs_client::Error),
    /// Starting the embedded cluster failed.
    #[error(transparent)]
    Cluster(#[from] pfs_testkit::Error),
    /// The configuration file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] pfs_common::Error),
    /// The ranks' coordinator or MPI failed.
    #[error(transparent)]
    Comm(#[from] crate::comm::CommError),
    /// A local file operation (the POSIX back end, a JSON report) failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
    /// Data read back differs from what was written, or a worker task failed.
    #[error("{0}")]
    Check(String),
}

impl Error {
    /// A local I/O error, `what` naming the file or operation.
    pub fn io(what: impl std::fmt::Display, source: std::io::Error) -> Error {
        Error::Io { what: what.to_string(), source: Arc::new(source) }
    }

    /// The errno-like code of the cause (NotFound for a missing file on either back end).
    pub fn code(&self) -> pfs_common::ErrorCode {
        match self {
            Error::Client(e) => e.code(),
            Error::Cluster(_) | Error::Comm(_) | Error::Check(_) => pfs_common::ErrorCode::Io,
            Error::Config(e) => e.code(),
            Error::Io { source, .. } => pfs_common::ErrorCode::of_io(source),
            Error::Invalid(_) => pfs_common::ErrorCode::Invalid,
        }
    }
}

/// Result alias with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
