//! [`StorageError`]: every error a storage server answers or starts up with. Variants name
//! the server, the chunk and the operation; the [`ErrorCode`] a client sees is decided here,
//! from the variant and, for disk errors, from the `io::Error`'s kind (a full disk is
//! NoSpace).

use pfs_common::capability::CapabilityError;
use pfs_common::chain::Chain;
use pfs_common::token::SessionId;
use pfs_common::wire::storage::ExtentError;
use pfs_common::{ErrorCode, ServerId, WireCode};
use std::io;
use std::sync::Arc;

/// An error of pfs-storage.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StorageError {
    /// A file-system operation on a chunk file or the data directory failed. `what` names
    /// the operation and chunk ("writing chunk 2 of file 0000000000000007 at 1048576").
    #[error("{}{what}: {source}", on(server))]
    Io {
        server: Option<ServerId>,
        what: String,
        #[source]
        source: Arc<io::Error>,
    },
    /// A request's arguments are out of range (a chunk size over 64 MiB, a write past the
    /// chunk's end).
    #[error("{server}: {what}")]
    Invalid { server: ServerId, what: String },
    /// The peer may not do this: a client's read, write or truncate without capabilities
    /// that allow it, or a client asking to remove chunks.
    #[error("{server}: denied: {what}")]
    Denied { server: ServerId, what: String },
    /// A background worker that writes need (the hasher, the pfs-meta session) died: the
    /// server refuses every write until it is restarted; `why` names the worker and its end.
    #[error("{server}: writes are stopped: {why}; restart this storage server")]
    WritesStopped { server: ServerId, why: String },
    /// The writer's session was evicted: its writes are fenced.
    #[error("{server}: session {session:x} was evicted; its writes are fenced")]
    Evicted { server: ServerId, session: SessionId },
    /// The server holds no lease from pfs-meta (never registered, or half its lease passed
    /// without an accepted heartbeat): it refuses every write until it registers again.
    #[error("{server}: no lease from pfs-meta ({why}); writes are refused until it registers again")]
    NoLease { server: ServerId, why: String },
    /// A message of pfs-meta in the name of leadership term `term`, older than term `seen`,
    /// which this server has heard from already: the node that sent it was deposed (it was
    /// paused or cut off and does not know yet). Refused; the server looks for the leader.
    #[error("{server}: refused a message of pfs-meta in term {term}: term {seen} is newer (a deposed leader)")]
    StaleTerm { server: ServerId, term: u64, seen: u64 },
    /// pfs-meta's chunk map says this server holds a committed chunk it does not have (or has
    /// shorter): its data is lost here. Reads and writes of it fail until the file is
    /// truncated below it or removed.
    #[error(
        "{server}: chunk {chunk} of file {file} is lost: {len} committed bytes, found {found} (restore it from a \
         backup, or truncate or remove the file)"
    )]
    Lost { server: ServerId, file: pfs_common::FileId, chunk: pfs_common::ChunkIndex, len: u64, found: String },
    /// A block of a chunk does not match its checksum: the bytes on disk are damaged.
    #[error("{server}: chunk {chunk} of file {file} is corrupt: {what}")]
    Corrupt { server: ServerId, file: pfs_common::FileId, chunk: pfs_common::ChunkIndex, what: String },
    /// The server has not yet compared its chunks with pfs-meta's chunk map since it started,
    /// so it cannot tell a lost chunk from a hole: reads wait for that.
    #[error("{server}: not yet checked its chunks against pfs-meta's chunk map; try again when pfs-meta is reachable")]
    NotReconciled { server: ServerId },
    /// The server restarted after writes it is asked to make durable: they may be lost.
    #[error(
        "{server}: restarted since the unsynced writes to file {file} were made; they may be lost (write them again)"
    )]
    Restarted { server: ServerId, file: pfs_common::FileId },
    /// A request named a chain version this server does not have, or a chain whose read or
    /// write path this server is not in. `current` is the chain as this server has it (sent
    /// with the answer, so the sender can go on with it if it is newer than its own); `None`
    /// when the server does not know the chain, or the refusal is not about the request's.
    #[error("{server}: {what}")]
    Stale { server: ServerId, what: String, current: Option<Box<Chain>> },
    /// A client's capabilities do not allow its read, write or truncate.
    #[error("{server}: denied: {why}")]
    Capability { server: ServerId, why: CapabilityError },
    /// A write's extents are malformed (their shape against the payload).
    #[error("{server}: a write to chunk {chunk} of {file}: {why}")]
    Extents { server: ServerId, file: pfs_common::FileId, chunk: pfs_common::ChunkIndex, why: ExtentError },
    /// A removal conditioned on a listed state found the chunk changed since (or the server
    /// restarted): nothing was removed.
    #[error("{server}: chunk {chunk} of file {file} changed since it was listed; not removed")]
    Changed { server: ServerId, file: pfs_common::FileId, chunk: pfs_common::ChunkIndex },
    /// The next replica of a chain failed a forwarded write or copy.
    #[error("{server}: forwarding to {next}: {source}")]
    Forward { server: ServerId, next: ServerId, source: Box<StorageError> },
    /// An I/O thread or task of the server stopped.
    #[error("{what}")]
    Stopped { what: String },
    /// Connections to pfs-meta and configuration (pfs-common).
    #[error(transparent)]
    Common(#[from] pfs_common::Error),
}

fn on(server: &Option<ServerId>) -> String {
    server.map(|s| format!("{s}: ")).unwrap_or_default()
}

impl StorageError {
    /// A file-system error, `what` naming the operation and the chunk or directory.
    pub fn io(what: impl std::fmt::Display, source: io::Error) -> StorageError {
        StorageError::Io { server: None, what: what.to_string(), source: Arc::new(source) }
    }

    /// The same error, naming storage server `id` if it does not yet.
    pub fn on(self, id: ServerId) -> StorageError {
        match self {
            StorageError::Io { server: None, what, source } => StorageError::Io { server: Some(id), what, source },
            other => other,
        }
    }

    /// The code a client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            StorageError::Io { source, .. } => ErrorCode::of_io(source),
            StorageError::Invalid { .. } => ErrorCode::Invalid,
            StorageError::Denied { .. } => ErrorCode::Denied,
            StorageError::Evicted { .. } => ErrorCode::Evicted,
            StorageError::NoLease { .. } => ErrorCode::NoLease,
            StorageError::StaleTerm { .. } => ErrorCode::NotLeader,
            StorageError::WritesStopped { .. } => ErrorCode::Unavailable,
            StorageError::Stopped { .. } => ErrorCode::Io,
            StorageError::Lost { .. } => ErrorCode::Lost,
            StorageError::Corrupt { .. } => ErrorCode::Corrupt,
            StorageError::NotReconciled { .. } => ErrorCode::Unavailable,
            StorageError::Restarted { .. } => ErrorCode::Restarted,
            StorageError::Stale { .. } => ErrorCode::Stale,
            StorageError::Capability { .. } => ErrorCode::Denied,
            StorageError::Extents { .. } => ErrorCode::Invalid,
            StorageError::Changed { .. } => ErrorCode::Conflict,
            StorageError::Forward { source, .. } => source.code(),
            StorageError::Common(e) => e.code(),
        }
    }
}

impl WireCode for StorageError {
    fn code(&self) -> ErrorCode {
        StorageError::code(self)
    }

    fn current_chain(&self) -> Option<&Chain> {
        match self {
            StorageError::Stale { current, .. } => current.as_deref(),
            StorageError::Forward { source, .. } => source.current_chain(),
            StorageError::Common(e) => e.current_chain(),
            _ => None,
        }
    }
}

/// Result alias with [`StorageError`].
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
