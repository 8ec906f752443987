//! [`MetaError`]: every error pfs-meta answers or stops with. Each variant names the path,
//! file, session, server or WAL offset involved; its [`ErrorCode`] is decided here, once, for
//! the wire.

use crate::namespace::chains::ChainUpdateError;
use crate::namespace::Misfit;
use crate::tokens::AcquireError;
use pfs_common::chain::ChainId;
use pfs_common::token::SessionId;
use pfs_common::{ErrorCode, FileId, ServerId, WireCode};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// An error of pfs-meta.
#[derive(Clone, Debug, thiserror::Error)]
pub enum MetaError {
    /// A path (or one of its directories) does not exist (ENOENT).
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    /// No inode has this id (any more).
    #[error("file {file} does not exist")]
    NoSuchFile { file: FileId },
    /// The name is taken (EEXIST).
    #[error("{path} already exists")]
    Exists { path: String },
    /// A path component, or the target of a directory operation, is not a directory.
    #[error("{path} is not a directory")]
    NotDir { path: String },
    /// A file operation was asked of a directory.
    #[error("{path} is a directory")]
    IsDir { path: String },
    /// A directory to remove or replace still has entries.
    #[error("{path} is not empty ({entries} entries)")]
    NotEmpty { path: String, entries: u64 },
    /// A malformed path: relative, or with a NUL byte, or ending in `.`, `..` or `/` where a
    /// name is needed. `path` is shortened for display.
    #[error("path {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    /// A name over 255 bytes or a path over 4096 (ENAMETOOLONG); `what` says which and how
    /// long. `path` is shortened for display.
    #[error("{path}: file name too long ({what})")]
    NameTooLong { path: String, what: String },
    /// The entry cannot take part in this operation: `.`, `..` or the root renamed, the root
    /// removed (EBUSY, as Linux answers them).
    #[error("{path}: {reason}")]
    Busy { path: String, reason: String },
    /// A conditional operation found another generation than the one it expected.
    #[error("{what}: expected generation {expected}, found generation {found}")]
    Conflict { what: String, expected: u64, found: u64 },
    /// A new file needs storage servers (as many as its replicas) and not enough are up.
    #[error("{path}: {why}")]
    NoServers { path: String, why: String },
    /// A chain change that does not follow the current chain table (a chain unknown, or not
    /// at the version just below the change's).
    #[error("stale replication chain: {0}")]
    ChainUpdate(#[from] ChainUpdateError),
    /// A storage server reported a resync done of a chain it is not syncing in (at that
    /// version): the chain moved on meanwhile.
    #[error("stale replication chain: {server} is not syncing in {chain} at version {version}")]
    NotSyncing { server: ServerId, chain: ChainId, version: u64 },
    /// A WAL record (or a prepared change) that does not fit the namespace's state.
    #[error("{mutation} does not apply: {why}")]
    DoesNotApply { mutation: String, why: Misfit },
    /// An acquire with malformed ranges or stride.
    #[error("acquire {request} of session {session:x} on {file}: {why}")]
    BadAcquire { request: u64, session: SessionId, file: FileId, why: AcquireError },
    /// A request's arguments are out of range or contradictory; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// A session that is closed, was evicted or was never opened.
    #[error("session {session:x} {state}")]
    Evicted { session: SessionId, state: SessionState },
    /// A peer asked for something its role may not do (a client speaking for a storage
    /// server, a storage server opening sessions).
    #[error("{peer} ({role}) may not {what}")]
    Forbidden { peer: String, role: &'static str, what: String },
    /// An authenticated peer asked for something it may not have: a capability its tokens do
    /// not cover, a registration under an id or address the config does not give it, or
    /// one of an id already registered and alive.
    #[error("denied: {what}")]
    Denied { what: String },
    /// A storage server's request came from a connection it is not registered on.
    #[error("{server} is not registered on this connection; register again")]
    NotRegistered { server: ServerId },
    /// A storage server was declared down; it must register again before anything else.
    #[error("{server} was declared down ({reason}); register again")]
    DeclaredDown { server: ServerId, reason: String },
    /// The WAL or a checkpoint on disk is damaged where it cannot be a torn tail.
    #[error("{what} {file} is corrupt{at}: {reason}", at = at_offset(*offset))]
    Corrupt { what: &'static str, file: PathBuf, offset: Option<u64>, reason: String },
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: Arc<io::Error>,
    },
    /// The WAL writer failed earlier; memory may be ahead of disk, so nothing more is
    /// acknowledged.
    #[error("the WAL failed: {0}")]
    WalFailed(Box<MetaError>),
    /// This meta node is not the leader of the metadata group: `leader` is the one it knows
    /// (id and address), if any. `maybe_done` says the operation was proposed before the
    /// leadership was lost and may still be committed by the next leader.
    #[error("meta-{node} is not the metadata leader ({}){}", leader_hint(leader), if *maybe_done { "; it lost its leadership after proposing the operation, which may or may not have been committed" } else { "" })]
    NotLeader { node: u64, leader: Option<(u64, String)>, maybe_done: bool },
    /// Connections and configuration (pfs-common).
    #[error(transparent)]
    Common(#[from] pfs_common::Error),
}

/// Why a session is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Evicted (lease, revoke timeout, lost connection).
    Evicted,
    /// Closed by its client, or never opened.
    NotOpen,
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionState::Evicted => "was evicted; its tokens are gone and its writes fenced",
            SessionState::NotOpen => "is not open",
        })
    }
}

fn leader_hint(leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, address)) => format!("the leader is meta-{id} at {address}"),
        None => "no leader is known yet".into(),
    }
}

fn at_offset(offset: Option<u64>) -> String {
    offset.map(|o| format!(" at byte offset {o}")).unwrap_or_default()
}

impl MetaError {
    /// A file-system error, with `what` naming the file and operation.
    pub fn io(what: impl std::fmt::Display, source: io::Error) -> MetaError {
        MetaError::Io { what: what.to_string(), source: Arc::new(source) }
    }

    /// The code a client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            MetaError::NotFound { .. } | MetaError::NoSuchFile { .. } | MetaError::NotRegistered { .. } => {
                ErrorCode::NotFound
            }
            MetaError::Exists { .. } => ErrorCode::Exists,
            MetaError::NotDir { .. } => ErrorCode::NotDir,
            MetaError::IsDir { .. } => ErrorCode::IsDir,
            MetaError::NotEmpty { .. } => ErrorCode::NotEmpty,
            MetaError::BadPath { .. } | MetaError::Invalid(_) => ErrorCode::Invalid,
            MetaError::Forbidden { .. } | MetaError::Denied { .. } => ErrorCode::Denied,
            MetaError::NameTooLong { .. } => ErrorCode::NameTooLong,
            MetaError::Busy { .. } => ErrorCode::Busy,
            MetaError::Conflict { .. } => ErrorCode::Conflict,
            MetaError::ChainUpdate(_) | MetaError::NotSyncing { .. } => ErrorCode::Stale,
            MetaError::DoesNotApply { .. } | MetaError::BadAcquire { .. } => ErrorCode::Invalid,
            MetaError::NoServers { .. } | MetaError::DeclaredDown { .. } => ErrorCode::Unavailable,
            MetaError::Evicted { .. } => ErrorCode::Evicted,
            MetaError::Corrupt { .. } | MetaError::WalFailed(_) => ErrorCode::Io,
            MetaError::Io { source, .. } => ErrorCode::of_io(source),
            // Not done: the caller may send it to the leader. Perhaps done: not to be sent
            // again blindly.
            MetaError::NotLeader { maybe_done: false, .. } => ErrorCode::NotLeader,
            MetaError::NotLeader { maybe_done: true, .. } => ErrorCode::Indeterminate,
            MetaError::Common(e) => e.code(),
        }
    }
}

impl WireCode for MetaError {
    fn code(&self) -> ErrorCode {
        MetaError::code(self)
    }
}

/// A broken invariant of the namespace or the token manager (a bug, found by their
/// `check_invariants`): what is wrong, naming the files, sessions and ranges involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvariantBroken(pub String);

impl From<String> for InvariantBroken {
    fn from(what: String) -> InvariantBroken {
        InvariantBroken(what)
    }
}

/// Result alias with [`MetaError`].
pub type Result<T, E = MetaError> = std::result::Result<T, E>;
