//! Error codes carried on the wire and the error type every pfs crate builds on.

use serde::{Deserialize, Serialize};
use std::fmt;

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
    /// The peer spoke another protocol version or role.
    Protocol,
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
}

/// The error type of pfs operations: a code plus a human-readable message that names what
/// was involved (a path, a server, an offset).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PfsError {
    pub code: ErrorCode,
    pub message: String,
}

/// Result alias for pfs operations.
pub type Result<T, E = PfsError> = std::result::Result<T, E>;

impl PfsError {
    /// An error with `code` and `message`. The message should name the path, server or offset.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        PfsError { code, message: message.into() }
    }

    /// Prefixes the message with `context` ("reading chunk 3 from storage-2: ...").
    pub fn context(self, context: impl fmt::Display) -> Self {
        PfsError { code: self.code, message: format!("{context}: {}", self.message) }
    }

    /// An I/O error, with `what` naming the file or operation.
    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        let code = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorCode::NotFound,
            std::io::ErrorKind::TimedOut => ErrorCode::TimedOut,
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof => ErrorCode::Unavailable,
            _ if err.raw_os_error() == Some(28) => ErrorCode::NoSpace,
            _ => ErrorCode::Io,
        };
        PfsError { code, message: format!("{what}: {err}") }
    }

    /// The error as sent on the wire.
    pub fn to_wire(&self) -> WireError {
        WireError { code: self.code, message: self.message.clone() }
    }
}

impl From<WireError> for PfsError {
    fn from(e: WireError) -> Self {
        PfsError { code: e.code, message: e.message }
    }
}

/// Shorthand: `Err(PfsError::new(code, message))`.
pub fn fail<T>(code: ErrorCode, message: impl Into<String>) -> Result<T> {
    Err(PfsError::new(code, message))
}
