//! The registry service of pfs-meta: storage servers register, heartbeat (renewing their
//! lease), report their chunks and confirm fences; anyone may ask for the registry and a
//! file's chunk holders.

use super::{service, MetaRequest};
use crate::chain::{Chain, ChainId, ChainRef};
use crate::ids::{ChunkIndex, FileId, ServerId, Sha256Digest};
use crate::layout::Layout;
use crate::token::SessionId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

service! {
    /// Requests of the registry service.
    pub enum RegistryRequest in MetaRequest::Registry {
        Register(Register) -> Registered,
        Heartbeat(Heartbeat) -> Renewed,
        ChunkReport(ChunkReport) -> ReportAnswer,
        Fenced(Fenced) -> (),
        ListServers(ListServers) -> Vec<ServerStatus>,
        GetChunks(GetChunks) -> Vec<ChunkInfo>,
        GetChains(GetChains) -> Vec<Chain>,
        GetLayouts(GetLayouts) -> Vec<Option<Layout>>,
        SyncDone(SyncDone) -> (),
        GetHealth(GetHealth) -> Health,
        RemoveOrphan(RemoveOrphan) -> (),
    }
}

/// Have storage server `server` remove its copy of an orphan `pfs fsck` found (role Admin
/// only: Forbidden for anyone else). pfs-meta proves it an orphan against the namespace, the
/// chunk map, the tokens and the opens (Denied, saying why, when it is not: see pfs-meta's
/// `why_not_an_orphan`), then asks the server itself (role Meta). Removed durably when
/// answered. Errors: Denied; Conflict when the chunk changed since it was listed; the
/// server's error, or Unavailable when it cannot be reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveOrphan {
    pub server: ServerId,
    pub file: FileId,
    pub copy: OrphanCopy,
}

/// What [`RemoveOrphan`] removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrphanCopy {
    /// Every chunk of a file that does not exist.
    File,
    /// One chunk, only if the server still has it in the state it listed.
    Chunk { chunk: ChunkIndex, listed: crate::wire::storage::ListedState },
}

/// The cluster's replication health (`pfs df`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetHealth;

/// The answer to [`GetHealth`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Replication chains.
    pub chains: u32,
    /// Chains with fewer serving replicas than they should have.
    pub degraded_chains: u32,
    /// Committed chunks on degraded chains: fewer copies than their file asks for.
    pub under_replicated_chunks: u64,
}

/// A storage server announces itself (first request on its connection). Storage servers
/// only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub id: ServerId,
    /// Where it serves clients.
    pub address: SocketAddr,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// Its process's boot id: a new one means unsynced writes may be lost, so its replicas
    /// are resynced before they serve again.
    pub boot: u64,
}

/// The answer to [`Register`]: the fencing state the server must enforce before it accepts
/// any write, its lease, and chunks to delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The leadership term the registration is in (see [`StoragePush`]).
    pub term: u64,
    /// Refuse writes of sessions below this id (sessions of older pfs-meta boots).
    pub fence_below: SessionId,
    /// Refuse writes of these (evicted) sessions.
    pub fenced: Vec<SessionId>,
    /// The server's lease, ms: it refuses every write once half of it has passed since it
    /// sent the last heartbeat pfs-meta accepted, until it registers again.
    pub lease_ms: u64,
    /// Files it may hold chunks of that no longer exist.
    pub orphans: Vec<FileId>,
    /// The chain table (later changes come as [`StorageNotify::Chains`]).
    pub chains: Vec<Chain>,
}

/// A storage server is alive; an accepted heartbeat renews its lease. Errors (register
/// again): NotFound when the server is not registered on this connection, Unavailable when
/// pfs-meta declared it down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: ServerId,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

/// The answer to [`Heartbeat`]: the lease is renewed, by the leader of `term` (see
/// [`StoragePush`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewed {
    pub term: u64,
}

/// Chunk changes on a storage server. `full` marks the last page of a complete listing sent
/// after (re-)registration: chunks of that server not listed since registration are then
/// dropped from the holder map, and the answer says which committed chunks the server lost.
/// Durable states (fdatasync'd) of chunks of existing files are committed to pfs-meta's chunk
/// map (in its WAL) before the report is answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkReport {
    pub id: ServerId,
    /// At most [`CHUNK_REPORT_PAGE`] states.
    pub chunks: Vec<ChunkState>,
    /// This page belongs to a full listing (nothing in it is committed).
    pub listing: bool,
    /// The last page of a full listing.
    pub full: bool,
}

/// The answer to [`ChunkReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// The leadership term of the answer (see [`StoragePush`]): orphans of an older term's
    /// answer are not removed.
    pub term: u64,
    /// File ids the server holds chunks of that no longer exist (unlinked while it was
    /// away); it should delete them.
    pub orphans: Vec<FileId>,
    /// Only in the answer to the last page of a full listing: the committed chunks this
    /// server should hold but does not (missing, or shorter than committed). The server
    /// refuses reads and writes of them, naming the loss, until they are truncated away or
    /// their file is removed. Replaces any earlier list.
    pub lost: Option<Vec<LostChunk>>,
}

/// A committed chunk a storage server should hold but lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostChunk {
    pub file: FileId,
    pub chunk: ChunkIndex,
    /// Committed length, bytes.
    pub len: u64,
    /// What the server reported instead ("missing", "12 of 4194304 bytes", "version 3, committed
    /// version 5").
    pub found: String,
}

/// A storage server confirms it now refuses writes of these sessions (after every write of
/// theirs it had admitted finished). Errors: Invalid for more than [`FENCED_MAX`] sessions
/// (a server confirms a longer list in several calls).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fenced {
    pub id: ServerId,
    /// At most [`FENCED_MAX`] sessions.
    pub sessions: Vec<SessionId>,
}

/// The storage-server registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListServers;

/// Holders, lengths and SHA-256 of chunks `first .. first + count` of a file (at most
/// [`GET_CHUNKS_MAX`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetChunks {
    pub file: FileId,
    pub first: ChunkIndex,
    pub count: u32,
}

/// What pfs-meta knows of one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    pub chunk: ChunkIndex,
    /// Storage servers reporting a copy now, with what each reported.
    pub holders: Vec<ChunkHolder>,
    /// The state last committed to the chunk map (by a writer's fsync or close, or by the
    /// storage server's background sync); `None` for a chunk never committed.
    pub committed: Option<CommittedChunk>,
}

/// Chains by id (all of them for an empty list), at their current versions; unknown ids are
/// left out. At most [`GET_CHUNKS_MAX`] ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetChains {
    pub ids: Vec<ChainId>,
}

/// The layouts of these files (`None`: no such file), in order; at most [`GET_CHUNKS_MAX`].
/// Storage servers resyncing a chain use it to tell which chunks are on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetLayouts {
    pub files: Vec<FileId>,
}

/// Storage server `id` copied every chunk of `chain` from a serving replica while it was
/// syncing at that version: pfs-meta marks it serving (a new version). Ignored (Stale) if the
/// chain moved on meanwhile; storage servers only, for themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncDone {
    pub id: ServerId,
    pub chain: ChainRef,
}

/// A chunk's committed state: it must exist with these contents on these servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedChunk {
    /// Chunk length, bytes.
    pub len: u64,
    /// SHA-256 of the chunk's bytes; `None` after a truncate cut the chunk, until the server
    /// reports its new hash.
    pub sha256: Option<Sha256Digest>,
    /// Servers that committed this state, each with its own commit version of it.
    pub holders: Vec<(ServerId, u64)>,
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
    /// These bytes are on disk (fdatasync'd since the chunk's last change), so pfs-meta may
    /// commit them to the chunk map.
    pub durable: bool,
    /// The chunk's commit version on this server: how many times a state of it was made
    /// durable here (kept with its checksums, so it survives restarts; 0: never). A copy with
    /// a lower version than the committed one is stale.
    pub version: u64,
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
    /// Chains in which it is being resynced (a syncing replica).
    pub syncing_chains: u32,
}

/// A one-way message of pfs-meta to a storage server, sent in the name of the Raft term
/// `term` of the leader that decided it. A storage server keeps the highest term it has seen
/// (in [`Registered`], [`Renewed`], [`ReportAnswer`] and these) and refuses whatever comes in
/// an older one: a deposed leader that does not know it yet (paused, or cut off) can neither
/// renew a lease, nor fence, nor remove a file, nor change a chain. Raft's terms used as
/// fencing tokens, as Chubby's sequencers and ZooKeeper's zxids are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoragePush {
    pub term: u64,
    pub notify: StorageNotify,
}

/// What pfs-meta pushes to a storage server (in a [`StoragePush`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageNotify {
    /// These files were unlinked: remove their chunks.
    RemoveFiles(Vec<FileId>),
    /// Refuse writes of these (evicted) sessions from now on, then answer with [`Fenced`].
    Fence(Vec<SessionId>),
    /// These chains changed (new versions): the server takes them as its view, resyncs the
    /// chains it is syncing in, and refuses requests at other versions.
    Chains(Vec<Chain>),
}

/// Most chunk states in one `ChunkReport` (keeps bodies far below the frame limit); a
/// longer report is refused (Invalid).
pub const CHUNK_REPORT_PAGE: usize = 4096;
/// Most sessions in one `Fenced`; a longer list is refused (Invalid).
pub const FENCED_MAX: usize = 4096;
/// Most chunks one `GetChunks` returns.
pub const GET_CHUNKS_MAX: u32 = 4096;
