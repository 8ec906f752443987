//! Messages of the metadata service (pfs-meta): namespace operations, chunk holders, the
//! storage-server registry.

use crate::ids::{ChunkIndex, FileId, ServerId, Sha256Digest};
use crate::layout::Layout;
use crate::token::{ByteRange, Mode, RevokeId, SessionId};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Requests to pfs-meta. Paths are absolute, `/`-separated (`/dir/file`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRequest {
    /// Make a directory. Errors: Exists, NotFound (parent), NotDir.
    Mkdir { path: String },
    /// Create a regular file with a layout (unset fields inherit from the parent directory's
    /// policy). With `exclusive`, an existing file is an error (Exists); without, an existing
    /// file is opened and returned as it is.
    Create { path: String, layout: LayoutRequest, exclusive: bool },
    /// Resolve a path to its attributes. Errors: NotFound, NotDir.
    Lookup { path: String },
    /// Attributes of a file by id. Errors: NotFound.
    Stat { file: FileId },
    /// Up to `limit` entries of a directory in name order, starting after `after`.
    Readdir { path: String, after: Option<String>, limit: u32 },
    /// Move `from` to `to`, replacing a file at `to` (not a directory). With
    /// `expected_generation`, fails with Conflict if `from` has another generation.
    Rename { from: String, to: String, expected_generation: Option<u64> },
    /// Remove a file. Errors: NotFound, IsDir, Conflict.
    Unlink { path: String, expected_generation: Option<u64> },
    /// Remove an empty directory. Errors: NotFound, NotDir, NotEmpty, Conflict.
    Rmdir { path: String, expected_generation: Option<u64> },
    /// Set a file's size exactly (shrink or grow). The client truncates the chunks on the
    /// storage servers first. Errors: NotFound, IsDir, Conflict.
    Truncate { file: FileId, size: u64, expected_generation: Option<u64> },
    /// Raise a file's size to at least `size` and set its mtime (writers call this on fsync and
    /// close). Never shrinks, so concurrent writers can each report their end.
    SetSize { file: FileId, size: u64 },
    /// Holders, lengths and SHA-256 of chunks `first .. first + count` of a file.
    GetChunks { file: FileId, first: ChunkIndex, count: u32 },
    /// The storage-server registry.
    ListServers,
    /// A storage server announces itself (first request on its connection).
    Register { id: ServerId, address: SocketAddr, capacity_bytes: u64, free_bytes: u64 },
    /// A storage server is alive.
    Heartbeat { id: ServerId, capacity_bytes: u64, free_bytes: u64 },
    /// Open a client session (the holder of tokens). Answered with `Session`.
    OpenSession,
    /// Keep a session's lease alive; clients send it every third of the lease. Errors: Evicted.
    KeepAlive { session: SessionId },
    /// Ask for a token on `file`: `required` is what this call needs, `desired` (⊇ required)
    /// what the client would like (to end of file for sequential access). Answered with
    /// `Granted` once granted, which may wait for revokes of other holders. Errors: Evicted,
    /// Invalid (empty range, required ⊄ desired), NotFound (file).
    Acquire { session: SessionId, file: FileId, mode: Mode, required: ByteRange, desired: ByteRange },
    /// The holder wrote back (or dropped) what revoke `revoke` asked for.
    RevokeDone { session: SessionId, revoke: RevokeId },
    /// Give back tokens of `file` in `range` (dirty data already written back).
    Release { session: SessionId, file: FileId, range: ByteRange },
    /// End a session cleanly: its tokens are dropped.
    CloseSession { session: SessionId },
    /// A storage server confirms it now refuses writes of these sessions.
    Fenced { id: ServerId, sessions: Vec<SessionId> },
    /// Chunk changes on a storage server. `full` marks the last page of a complete listing
    /// sent after (re-)registration: chunks of that server not listed since registration are
    /// then dropped from the holder map.
    ChunkReport { id: ServerId, chunks: Vec<ChunkState>, full: bool },
}

/// Layout fields for a new file; `None` takes the parent directory's (or cluster's) default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutRequest {
    /// Block size in bytes (the cache unit): a power of two of at least 512.
    pub block_size: Option<u32>,
    /// Chunk size in bytes: a multiple of the block size (`block_size × stripe_blocks`).
    pub chunk_size: Option<u64>,
    /// Storage targets to span; clamped to the number of servers that are up.
    pub stripe_count: Option<u32>,
}

/// Answers from pfs-meta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Done,
    Attr(Attr),
    Entries {
        entries: Vec<DirEntry>,
        more: bool,
    },
    Chunks(Vec<ChunkInfo>),
    Servers(Vec<ServerStatus>),
    /// Answer to `OpenSession`: the session id and its lease, ms.
    Session {
        session: SessionId,
        lease_ms: u64,
    },
    /// Answer to `Acquire`: the token granted (its range contains the required range) and the
    /// file's size as pfs-meta knows it at the grant, bytes.
    Granted {
        mode: Mode,
        range: ByteRange,
        size: u64,
    },
    /// Answer to `Register`: chunks to delete, and the fencing state a storage server must
    /// enforce: refuse writes of sessions below `fence_below` (older pfs-meta boots) and of
    /// the `fenced` (evicted) sessions.
    Registered {
        orphans: Vec<FileId>,
        fence_below: SessionId,
        fenced: Vec<SessionId>,
    },
    /// Answer to `ChunkReport` and `Register`: file ids the server holds chunks of that no
    /// longer exist (unlinked while it was away); it should delete them.
    Orphans(Vec<FileId>),
}

/// File or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
}

/// Attributes of a file or directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub id: FileId,
    pub kind: FileKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last data or size change, ms since the Unix epoch.
    pub mtime_ms: u64,
    /// Last attribute change, ms since the Unix epoch.
    pub ctime_ms: u64,
    /// Bumped on every change of this inode (conditional operations compare it).
    pub generation: u64,
    /// The stripe layout (files only).
    pub layout: Option<Layout>,
    /// Number of entries (directories only).
    pub entries: u64,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub id: FileId,
    pub kind: FileKind,
    pub size: u64,
    pub generation: u64,
}

/// What pfs-meta knows of one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    pub chunk: ChunkIndex,
    /// Storage servers reporting a copy, with what each reported.
    pub holders: Vec<ChunkHolder>,
}

/// One holder of a chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHolder {
    pub server: ServerId,
    /// Chunk file length, bytes.
    pub len: u64,
    /// SHA-256 of the chunk file's bytes; `None` while the server has not hashed it yet.
    pub sha256: Option<Sha256Digest>,
}

/// A chunk's state as a storage server reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkState {
    pub file: FileId,
    pub chunk: ChunkIndex,
    /// Chunk file length, bytes.
    pub len: u64,
    pub sha256: Option<Sha256Digest>,
    /// The chunk file was removed.
    pub removed: bool,
}

/// A storage server as the registry sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub id: ServerId,
    pub address: SocketAddr,
    pub up: bool,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// Milliseconds since its last heartbeat (u64::MAX if never heard from).
    pub last_heartbeat_ms: u64,
    /// Chunks it reported holding.
    pub chunks: u64,
}

/// Most chunk states in one `ChunkReport` (keeps bodies far below the frame limit).
pub const CHUNK_REPORT_PAGE: usize = 4096;
/// Most entries one `Readdir` returns.
pub const READDIR_PAGE_MAX: u32 = 4096;
/// Most chunks one `GetChunks` returns.
pub const GET_CHUNKS_MAX: u32 = 4096;

/// One-way messages pfs-meta pushes to a client on its connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientNotify {
    /// Give up `range` of `file`: write back dirty bytes in it; with `wanted == Write` drop
    /// the cached bytes and the token there, with `wanted == Read` keep them but downgrade a
    /// write token to read. Then answer `RevokeDone { revoke }` within the revoke timeout.
    Revoke { revoke: RevokeId, file: FileId, range: ByteRange, wanted: Mode },
    /// The session was evicted (missed lease or revoke); its tokens are gone and storage
    /// servers refuse its writes.
    Evicted { session: SessionId, reason: String },
}
