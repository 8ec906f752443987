//! [`Error`]: what a pfs client call can fail with. Data-path errors name the file, the chunk
//! and the storage server ([`Error::Chunk`]); everything carries the errno-like
//! [`ErrorCode`] of its cause ([`Error::code`]), which is what programs should decide on.

use pfs_common::token::SessionId;
use pfs_common::{ChunkIndex, ErrorCode, ServerId};
use std::io;
use std::sync::Arc;

/// An error of the pfs client library.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A server refused the request (its answer names what was wrong), could not be reached,
    /// or the connection broke; the message names the server.
    #[error(transparent)]
    Rpc(#[from] pfs_common::Error),
    /// This client's session is over: evicted by pfs-meta (a missed lease or revoke, a lost
    /// connection), fenced by a storage server, or closed. Open a new client.
    #[error("session {session:x}: {reason}")]
    Evicted { session: SessionId, reason: String },
    /// A bad argument from the caller (a write or size past the largest file size,
    /// [`pfs_common::layout::MAX_FILE_SIZE`]; a chunk size that is not a multiple of the block
    /// size; a relative path).
    #[error("{0}")]
    Invalid(String),
    /// A file was expected and `path` is a directory.
    #[error("{path} is a directory")]
    IsDir { path: String },
    /// A directory was expected and `path` is not one.
    #[error("{path} exists and is not a directory")]
    NotDir { path: String },
    /// Reading or writing one chunk failed.
    #[error("{op} {path} chunk {chunk} on {server}: {source}")]
    Chunk {
        op: &'static str,
        path: String,
        chunk: ChunkIndex,
        server: ServerId,
        #[source]
        source: Box<Error>,
    },
    /// An operation on a file failed (`op` says which: "fsync of", "token for write [0, 10) of").
    #[error("{op} {path}: {source}")]
    File {
        op: String,
        path: String,
        #[source]
        source: Box<Error>,
    },
    /// A server answered with something it must not (a short write, a read longer than
    /// asked, a file without a layout).
    #[error("{peer}: {message}")]
    Protocol { peer: String, message: String },
    /// A write (back) over bytes of `path` this client holds no Write token over and is not
    /// writing back under a revoke: it is not sent (the bytes may be another client's now).
    #[error("{path}: this client holds no Write token over {range}; the write is not sent")]
    NotHeld { path: String, range: pfs_common::token::ByteRange },
    /// `server` restarted between writes of ours it had not made durable: the earlier ones
    /// may be lost (the later ones were synced). Reported once, by the next fsync.
    #[error("{server} restarted between writes not yet made durable; some of them may be lost (write them again)")]
    Restarted { server: ServerId },
    /// No replica of a chunk's chain can take the request (every one down or resyncing).
    #[error("{0}")]
    Unavailable(String),
    /// A local I/O error (starting a runtime).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: Arc<io::Error>,
    },
}

impl Error {
    /// The errno-like code of the error's cause.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Rpc(e) => e.code(),
            Error::Evicted { .. } => ErrorCode::Evicted,
            Error::Invalid(_) => ErrorCode::Invalid,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::IsDir { .. } => ErrorCode::IsDir,
            Error::NotDir { .. } => ErrorCode::NotDir,
            Error::Chunk { source, .. } | Error::File { source, .. } => source.code(),
            Error::Protocol { .. } => ErrorCode::Protocol,
            Error::NotHeld { .. } => ErrorCode::Denied,
            Error::Restarted { .. } => ErrorCode::Restarted,
            Error::Io { source, .. } => ErrorCode::of_io(source),
        }
    }

    /// Wraps the error as the cause of `op` on file `path`.
    pub fn on_file(self, op: impl Into<String>, path: &str) -> Error {
        Error::File { op: op.into(), path: path.to_string(), source: Box::new(self) }
    }

    /// The innermost error: what [`Error::Chunk`] and [`Error::File`] wrap.
    pub fn root(&self) -> &Error {
        match self {
            Error::Chunk { source, .. } | Error::File { source, .. } => source.root(),
            other => other,
        }
    }

    /// The chain a Stale answer carried: the request's chain as the answering storage server
    /// has it now ([`pfs_common::error::WireError::chain`]), through [`Error::Chunk`] and
    /// [`Error::File`].
    pub fn current_chain(&self) -> Option<&pfs_common::chain::Chain> {
        match self {
            Error::Rpc(e) => e.current_chain(),
            Error::Chunk { source, .. } | Error::File { source, .. } => source.current_chain(),
            _ => None,
        }
    }

    /// The storage server a data-path error is about, if any.
    pub fn server(&self) -> Option<ServerId> {
        match self {
            Error::Chunk { server, .. } => Some(*server),
            Error::File { source, .. } => source.server(),
            _ => None,
        }
    }
}

/// Result alias with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
