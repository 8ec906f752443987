//! Errors: the errno-like [`ErrorCode`] that travels on the wire, the [`WireCode`] trait every
//! crate's error type implements to cross that boundary, and [`Error`], the errors of this
//! crate (connections, frames, configuration, layouts).
//!
//! Each pfs crate has its own typed error enum; the code is derived from the variant when an
//! error is sent as an answer ([`WireError`]) and read back into a variant on the other side
//! ([`Error::Remote`]). Decisions are made on variants and codes, never on message text.

use crate::chain::Chain;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::sync::Arc;

/// errno-like code of a failed operation; travels on the wire inside [`WireError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The path, file or chunk does not exist (ENOENT).
    NotFound,
    /// The name is already taken (EEXIST).
    Exists,
    /// A path component is not a directory (ENOTDIR).
    NotDir,
    /// A file operation was asked of a directory (EISDIR).
    IsDir,
    /// A directory to remove still has entries (ENOTEMPTY).
    NotEmpty,
    /// The request is malformed or its arguments are out of range (EINVAL).
    Invalid,
    /// A conditional operation found another generation than the one it expected.
    Conflict,
    /// A disk or operating-system error on the server (EIO).
    Io,
    /// A server could not be reached, or is down, or the connection broke.
    Unavailable,
    /// A frame, body, payload or name exceeds a limit (E2BIG).
    TooLarge,
    /// The client session was evicted; its tokens and writes are fenced.
    Evicted,
    /// The storage target has no room left (ENOSPC).
    NoSpace,
    /// The operation did not finish within its deadline.
    TimedOut,
    /// The peer spoke another protocol version or role, or sent something malformed.
    Protocol,
    /// A name is longer than 255 bytes, or a path longer than 4096 (ENAMETOOLONG).
    NameTooLong,
    /// The operation cannot be done to this entry: renaming `.`, `..` or the root, removing
    /// the root (EBUSY, as Linux answers them).
    Busy,
    /// The request named a replication chain at another version than the server's, or a
    /// server not (or no longer) in the chain's read or write path: ask pfs-meta for the
    /// chain again and retry.
    Stale,
    /// The peer could not prove it holds the cluster's key, or sent a frame that failed its
    /// integrity check.
    AuthFailed,
    /// The authenticated peer may not do this: its role does not allow it, the session is
    /// another connection's, or it holds no valid capability (EACCES).
    Denied,
    /// A committed chunk is missing (or shorter than committed) on the server asked: its data
    /// is lost there; another replica may still have it (EIO).
    Lost,
    /// A block of a chunk does not match its checksum on the server asked: the bytes on its
    /// disk are damaged; another replica may still have them (EIO).
    Corrupt,
    /// The server restarted between writes it had not made durable and the fsync asking for
    /// them: they may be lost, and should be written again (EIO).
    Restarted,
    /// The meta node asked is not the leader of the metadata group (or lost its leadership
    /// before the operation was proposed): nothing was done; the message names the leader if
    /// it knows one. Safe to send again, to the leader.
    NotLeader,
    /// The meta node lost its leadership after it proposed the operation: it may or may not
    /// have been committed (the next leader decides). Sending it again is safe only for what
    /// cannot be done twice ([`crate::wire::MetaRequest::is_retry_safe`]); EIO for the others.
    Indeterminate,
    /// The storage server holds no lease from pfs-meta right now (it is registering again, as
    /// after a failover of the metadata leader): it takes no write until it does. Retry.
    NoLease,
}

impl ErrorCode {
    /// A short lower-case name, as used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not found",
            ErrorCode::Exists => "already exists",
            ErrorCode::NotDir => "not a directory",
            ErrorCode::IsDir => "is a directory",
            ErrorCode::NotEmpty => "directory not empty",
            ErrorCode::Invalid => "invalid argument",
            ErrorCode::Conflict => "generation conflict",
            ErrorCode::Io => "I/O error",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TooLarge => "too large",
            ErrorCode::Evicted => "session evicted",
            ErrorCode::NoSpace => "no space left",
            ErrorCode::TimedOut => "timed out",
            ErrorCode::Protocol => "protocol error",
            ErrorCode::NameTooLong => "file name too long",
            ErrorCode::Busy => "device or resource busy",
            ErrorCode::Stale => "stale replication chain",
            ErrorCode::AuthFailed => "authentication failed",
            ErrorCode::Denied => "permission denied",
            ErrorCode::Lost => "chunk lost",
            ErrorCode::Corrupt => "chunk corrupt",
            ErrorCode::Restarted => "server restarted before its writes were durable",
            ErrorCode::NotLeader => "not the metadata leader",
            ErrorCode::Indeterminate => "may or may not have been done (the metadata leader changed)",
            ErrorCode::NoLease => "the storage server has no lease from pfs-meta yet",
        }
    }

    /// The errno a POSIX interface (the mount, the C library) returns for this code: a dead or
    /// unreachable server is EIO, a deadline ETIMEDOUT, an evicted session ESTALE, refused
    /// authentication or authorization EACCES; a lost or corrupt chunk and a restarted server
    /// are EIO.
    pub fn errno(self) -> i32 {
        match self {
            ErrorCode::NotFound => libc::ENOENT,
            ErrorCode::Exists => libc::EEXIST,
            ErrorCode::NotDir => libc::ENOTDIR,
            ErrorCode::IsDir => libc::EISDIR,
            ErrorCode::NotEmpty => libc::ENOTEMPTY,
            ErrorCode::Invalid => libc::EINVAL,
            ErrorCode::Conflict | ErrorCode::Evicted => libc::ESTALE,
            ErrorCode::Io
            | ErrorCode::Unavailable
            | ErrorCode::Lost
            | ErrorCode::Corrupt
            | ErrorCode::Restarted
            | ErrorCode::Indeterminate => libc::EIO,
            ErrorCode::TooLarge => libc::EFBIG,
            ErrorCode::NoSpace => libc::ENOSPC,
            ErrorCode::TimedOut => libc::ETIMEDOUT,
            ErrorCode::Protocol => libc::EPROTO,
            ErrorCode::NameTooLong => libc::ENAMETOOLONG,
            ErrorCode::Busy => libc::EBUSY,
            ErrorCode::Stale | ErrorCode::NotLeader | ErrorCode::NoLease => libc::EAGAIN,
            ErrorCode::AuthFailed | ErrorCode::Denied => libc::EACCES,
        }
    }

    /// The code of a local I/O error, by its kind: a full disk is NoSpace, a refused or
    /// broken connection Unavailable, and so on.
    pub fn of_io(e: &io::Error) -> ErrorCode {
        match e.kind() {
            io::ErrorKind::NotFound => ErrorCode::NotFound,
            io::ErrorKind::TimedOut => ErrorCode::TimedOut,
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorCode::NoSpace,
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => ErrorCode::Unavailable,
            _ => ErrorCode::Io,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it travels on the wire: a code and a message naming the path, server or
/// offset involved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    /// With [`ErrorCode::Stale`] from a storage server: the chain the request named, as that
    /// server has it now (id, version, members), so the sender can go on with it without
    /// asking pfs-meta, when it is newer than the sender's. `None` when the server does not
    /// know the chain, and for every other error. Decoded from a body the frame header
    /// already bounded; a receiver checks [`Chain::well_formed`] before it uses one.
    pub chain: Option<Chain>,
}

/// An error that can be answered on the wire: its code, and its `Display` as the message.
pub trait WireCode: std::error::Error {
    /// The errno-like code the peer will see.
    fn code(&self) -> ErrorCode;

    /// For a Stale error: the chain as the answering server has it now.
    fn current_chain(&self) -> Option<&Chain> {
        None
    }

    /// The error as sent on the wire.
    fn to_wire(&self) -> WireError {
        WireError { code: self.code(), message: self.to_string(), chain: self.current_chain().cloned() }
    }
}

/// An `io::Error` that can be cloned (errors are shared by every waiter of a failed
/// connection, and kept to be reported again).
pub type SharedIo = Arc<io::Error>;

/// Errors of pfs-common: connections and frames (naming the peer), configuration files and
/// layouts.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A TCP connection to `peer` could not be made.
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        peer: String,
        #[source]
        source: SharedIo,
    },
    /// `peer` did not answer (or accept the connection) within `ms`.
    #[error("{peer}: no {what} within {ms} ms")]
    TimedOut { peer: String, what: &'static str, ms: u64 },
    /// The connection to `peer` ended (closed by either side).
    #[error("{peer}: connection closed")]
    Closed { peer: String },
    /// A socket error on the connection to `peer`.
    #[error("{peer}: {source}")]
    Socket {
        peer: String,
        #[source]
        source: SharedIo,
    },
    /// A frame from `peer` broke the protocol (bad header, undecodable body, a version or
    /// role refused).
    #[error("{peer}: {message}")]
    Protocol { peer: String, message: String },
    /// The handshake with `peer` failed: it could not prove it holds the cluster's key, or
    /// it does not authenticate while we do.
    #[error("{peer}: authentication failed: {message}")]
    Auth { peer: String, message: String },
    /// A frame's length exceeds a limit; checked before anything is allocated.
    #[error("{peer}: {what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { peer: String, what: &'static str, len: u64, limit: u64 },
    /// `peer` answered the request with an error. With Stale, `chain` is the chain the
    /// request named as `peer` has it now, when it sent one ([`WireError::chain`]).
    #[error("{message}")]
    Remote { peer: String, code: ErrorCode, message: String, chain: Option<Box<Chain>> },
    /// A configuration file (or text) is invalid; the message names the file, line and
    /// column or setting.
    #[error("{0}")]
    Config(String),
    /// A layout (block size, chunk size, targets) is out of range.
    #[error("{0}")]
    Layout(String),
    /// A local I/O operation (not a connection) failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: SharedIo,
    },
}

impl Error {
    /// A local I/O error, with `what` naming the file or operation.
    pub fn io(what: impl fmt::Display, source: io::Error) -> Error {
        Error::Io { what: what.to_string(), source: Arc::new(source) }
    }

    /// The code of an error [`Error::Remote`] carries, or the code this side gives it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Connect { source, .. } => match ErrorCode::of_io(source) {
                ErrorCode::TimedOut => ErrorCode::TimedOut,
                _ => ErrorCode::Unavailable,
            },
            Error::TimedOut { .. } => ErrorCode::TimedOut,
            Error::Closed { .. } => ErrorCode::Unavailable,
            Error::Socket { source, .. } => match ErrorCode::of_io(source) {
                ErrorCode::TimedOut => ErrorCode::TimedOut,
                _ => ErrorCode::Unavailable,
            },
            Error::Protocol { .. } => ErrorCode::Protocol,
            Error::Auth { .. } => ErrorCode::AuthFailed,
            Error::TooLarge { .. } => ErrorCode::TooLarge,
            Error::Remote { code, .. } => *code,
            Error::Config(_) | Error::Layout(_) => ErrorCode::Invalid,
            Error::Io { source, .. } => ErrorCode::of_io(source),
        }
    }

    /// The chain a Stale answer carried: the request's chain as the answering server has it
    /// now ([`WireError::chain`]).
    pub fn current_chain(&self) -> Option<&Chain> {
        match self {
            Error::Remote { chain, .. } => chain.as_deref(),
            _ => None,
        }
    }

    /// True if the connection this error came from is gone (not an answer to one request).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::Closed { .. } | Error::Socket { .. } | Error::TimedOut { .. })
    }

    /// True if a call failed because its established connection ended (closed by the peer, a
    /// reset, a broken pipe) before any answer came: the request may never have reached the
    /// server, and a fresh connection may well succeed (a server closes idle connections).
    /// Not for a timeout (the peer may be alive but stuck) or a failed connect.
    pub fn is_closed_before_answer(&self) -> bool {
        matches!(self, Error::Closed { .. } | Error::Socket { .. })
    }
}

impl WireCode for Error {
    fn code(&self) -> ErrorCode {
        Error::code(self)
    }

    fn current_chain(&self) -> Option<&Chain> {
        Error::current_chain(self)
    }
}

/// Result alias with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds_map_to_codes() {
        assert_eq!(ErrorCode::of_io(&io::Error::from(io::ErrorKind::StorageFull)), ErrorCode::NoSpace);
        assert_eq!(ErrorCode::of_io(&io::Error::from_raw_os_error(libc_enospc())), ErrorCode::NoSpace);
        assert_eq!(ErrorCode::of_io(&io::Error::from(io::ErrorKind::ConnectionReset)), ErrorCode::Unavailable);
        assert_eq!(ErrorCode::of_io(&io::Error::from(io::ErrorKind::PermissionDenied)), ErrorCode::Io);
        let message = "/a already exists".to_string();
        let e =
            Error::Remote { peer: "pfs-meta".into(), code: ErrorCode::Exists, message: message.clone(), chain: None };
        assert_eq!(e.code(), ErrorCode::Exists);
        assert_eq!(e.to_wire(), WireError { code: ErrorCode::Exists, message, chain: None });
    }

    /// ENOSPC on Linux, without a libc dependency here.
    fn libc_enospc() -> i32 {
        28
    }
}
