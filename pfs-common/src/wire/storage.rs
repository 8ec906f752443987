//! The chunk data service of pfs-storage: chunk reads and writes, truncate, remove, fsync.
//! Data travels as the frame payload, never in the body.

use super::service;
use crate::capability::Capability;
use crate::chain::ChainRef;
use crate::ids::{ChunkIndex, FileId, ServerId, Sha256Digest};
use crate::token::SessionId;
use serde::{Deserialize, Serialize};

service! {
    /// Requests of the chunk data service.
    pub enum StorageRequest {
        Write(WriteChunk) -> Written,
        Read(ReadChunk) -> ReadReply,
        Truncate(TruncateFile) -> (),
        Remove(RemoveFile) -> (),
        Fsync(FsyncFile) -> (),
        Status(GetStatus) -> StorageStatus,
        List(ListChunks) -> ChunkPage,
        RemoveChunk(RemoveChunk) -> (),
        SyncRead(SyncRead) -> SyncData,
        Scrub(Scrub) -> ScrubStatus,
        Repair(RepairChunk) -> (),
    }
}

/// The server's scrub status; with `start`, a pass starts now unless one is running (`pfs
/// scrub`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scrub {
    pub start: bool,
}

/// The pass running now, or the last one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubStatus {
    pub running: bool,
    /// Passes finished since the server started.
    pub passes: u64,
    /// Chunks and bytes read and found good.
    pub chunks: u64,
    pub bytes: u64,
    /// Chunks found damaged (a block failing its crc32c, bytes not matching the SHA-256, a
    /// lost chunk), and of those the ones rewritten from a good replica.
    pub damaged: u64,
    pub repaired: u64,
    /// What could not be checked or repaired (at most 64).
    pub failures: Vec<String>,
}

/// Replace this server's copy of a chunk by a copy from a serving replica of its chain
/// (`pfs fsck --repair` for a lost or corrupt copy). Durable when answered. Errors: Stale
/// when no other serving replica exists; the source's error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairChunk {
    pub file: FileId,
    pub chunk: ChunkIndex,
}

/// Write the payload into chunk `chunk` of `file` at `extents`, creating the chunk file if
/// needed: the payload is the extents' bytes back to back, in their order. A client writing
/// back several dirty runs of one chunk (a strided writer's records) sends them in one request,
/// which the server writes with one submission and one pass under the chunk's lock. Each
/// extent must end within `chunk_size` and below [`crate::layout::MAX_FILE_SIZE`] in the file
/// (Invalid otherwise; see [`WriteChunk::check_extents`] for their shape). Not durable until
/// [`FsyncFile`].
/// `session` is the writer's session; writes of a fenced (evicted) session are refused with
/// Evicted, so a late write cannot land over newer data; every write is refused with
/// Unavailable while the server holds no lease from pfs-meta.
///
/// `chain` is the chunk's replication chain as the writer knows it: the server refuses the
/// write (Stale) unless that is the chain's current version and it is in the chain's write
/// path, writes locally and forwards the write to its successor at the same time, and answers
/// once both are done, so an answer means every replica in the write path has the bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteChunk {
    pub file: FileId,
    pub chunk: ChunkIndex,
    /// Where the payload's bytes go in the chunk (at most [`WRITE_EXTENTS_MAX`]).
    pub extents: Vec<Extent>,
    pub chunk_size: u64,
    /// The file's block size, bytes (a power of two, 512 bytes to 64 MiB): the granularity of
    /// the chunk's checksums (doubled for chunks that would need more than 512), fixed when the
    /// chunk is created.
    pub block_size: u32,
    pub session: SessionId,
    pub chain: ChainRef,
    /// Write capabilities of `session` covering every extent (at most
    /// [`crate::capability::MAX_CAPABILITIES`]); needed from clients when the cluster
    /// authenticates (Denied otherwise).
    pub capabilities: Vec<Capability>,
}

/// `len` bytes at `offset` bytes into a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub len: u32,
}

/// Most extents one [`WriteChunk`] carries (the io_uring engine submits them together).
pub const WRITE_EXTENTS_MAX: usize = 256;

/// What is wrong with a [`WriteChunk`]'s extents (answered as Invalid).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExtentError {
    /// Fewer than 1 or more than [`WRITE_EXTENTS_MAX`] extents.
    #[error("{count} extents in a write (1 to {WRITE_EXTENTS_MAX})")]
    Count { count: usize },
    /// Extent `index` has no bytes.
    #[error("extent {index} of the write is empty")]
    Empty { index: usize },
    /// Extent `index` starts at chunk offset `offset`, before the previous one ended.
    #[error("extent {index} at offset {offset} overlaps or precedes the one before it")]
    Unordered { index: usize, offset: u64 },
    /// The extents' lengths add up to `total` bytes, the payload is `payload` bytes.
    #[error("the write's extents add up to {total} bytes, its payload is {payload}")]
    Length { total: u64, payload: u64 },
}

impl WriteChunk {
    /// Checks the extents' shape against a payload of `payload_len` bytes: 1 to
    /// [`WRITE_EXTENTS_MAX`] of them, none empty, in ascending order without overlap, their
    /// lengths summing to the payload's. Errors with what is wrong, for an Invalid answer.
    pub fn check_extents(&self, payload_len: usize) -> Result<(), ExtentError> {
        let n = self.extents.len();
        if n == 0 || n > WRITE_EXTENTS_MAX {
            return Err(ExtentError::Count { count: n });
        }
        let mut total = 0u64;
        let mut end = 0u64;
        for (i, e) in self.extents.iter().enumerate() {
            if e.len == 0 {
                return Err(ExtentError::Empty { index: i });
            }
            if i > 0 && e.offset < end {
                return Err(ExtentError::Unordered { index: i, offset: e.offset });
            }
            end = e.offset.saturating_add(e.len.into());
            total += u64::from(e.len);
        }
        if total != payload_len as u64 {
            return Err(ExtentError::Length { total, payload: payload_len as u64 });
        }
        Ok(())
    }
}

/// The answer to [`WriteChunk`]: bytes written (the whole payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub len: u32,
    /// Every replica that wrote the bytes, with its process's boot id (random, never 0),
    /// head first: writes not yet synced die with the process, so [`FsyncFile`] names the
    /// boot the writes went to.
    pub boots: Vec<(ServerId, u64)>,
}

/// Read up to `len` bytes at `offset` inside a chunk, verified against the chunk's block
/// checksums. The payload of the answer is shorter when the chunk file ends earlier, and empty
/// when the chunk was never written (a hole). A block that fails its checksum, or a committed
/// chunk the server lost, is an Io error naming the chunk and the server. Refused (Stale)
/// unless `chain` is the chunk's chain at its current version and the server is a serving
/// replica of it (a replica being resynced never serves reads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadChunk {
    pub file: FileId,
    pub chunk: ChunkIndex,
    pub offset: u64,
    pub len: u32,
    pub chain: ChainRef,
    /// The file's chunk size, bytes (for the capability check).
    pub chunk_size: u64,
    pub session: SessionId,
    /// Read (or write) capabilities of `session` covering the bytes read; needed from
    /// clients when the cluster authenticates (Denied otherwise).
    pub capabilities: Vec<Capability>,
}

/// The answer to [`ReadChunk`]; the bytes read are the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReply {
    /// The chunk file's length, bytes (0 when it does not exist).
    pub chunk_len: u64,
}

/// Cut `file` to `size` bytes: chunks wholly past it are removed, the one it falls in is
/// truncated. `chunk_size` is the file's chunk size; `size` at most
/// [`crate::layout::MAX_FILE_SIZE`] (Invalid otherwise). Durable when answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruncateFile {
    pub file: FileId,
    pub size: u64,
    pub chunk_size: u64,
    pub session: SessionId,
    /// Write capabilities of `session` covering everything from `size` on; needed from
    /// clients when the cluster authenticates (Denied otherwise).
    pub capabilities: Vec<Capability>,
}

/// Remove every chunk of `file`. Durable when answered. From pfs-meta only (role Meta: `pfs
/// fsck --repair` through `RemoveOrphan`; unlinked files go as `StorageNotify::RemoveFiles`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveFile {
    pub file: FileId,
}

/// Make every write to `file` durable, and commit the new chunk states to pfs-meta's chunk
/// map, before answering. `boot` is the boot id the writer's unsynced writes were answered
/// with ([`Written::boots`], this server's entry); if the server restarted since, those writes may be lost and the
/// fsync fails (Io) rather than report them durable; 0 when the writer saw more than one boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsyncFile {
    pub file: FileId,
    pub boot: u64,
}

/// Capacity and usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetStatus;

/// A storage server's capacity and usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStatus {
    pub id: ServerId,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub chunks: u64,
    /// "io_uring" or "pread".
    pub engine: String,
}

/// Up to `limit` of the server's chunks in (file, chunk) order after `after` (for `pfs
/// fsck`). With `verify`, each chunk listed is read whole and checked against its block
/// checksums first (at most [`LIST_VERIFY_MAX`] per page then, [`LIST_MAX`] otherwise).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListChunks {
    pub after: Option<(FileId, ChunkIndex)>,
    pub limit: u32,
    pub verify: bool,
}

/// A page of [`ListChunks`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPage {
    pub chunks: Vec<ChunkListing>,
    /// More chunks follow the last one.
    pub more: bool,
    /// The listing server process's boot id (with each chunk's `change`, a [`ListedState`]).
    pub boot: u64,
}

/// One state of a chunk on one storage server process: its boot id and the chunk's change
/// count there (bumped by every write, truncate or copy). A removal conditioned on it
/// ([`RemoveChunk::listed`]) removes only a chunk nobody changed since it was listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedState {
    pub boot: u64,
    pub change: u64,
}

/// One chunk as a storage server lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkListing {
    pub file: FileId,
    pub chunk: ChunkIndex,
    /// Chunk file length, bytes.
    pub len: u64,
    /// Why it is unreadable (a block failing its checksum, a lost chunk), when verified.
    pub damage: Option<String>,
    /// SHA-256 of its bytes when known and nothing was written since it was computed.
    pub sha256: Option<Sha256Digest>,
    /// The chunk's change count in the listing process (see [`ListedState`]).
    pub change: u64,
}

/// A whole chunk, for another replica copying it (resync, re-replication, scrub repair):
/// storage servers only. The chunk's in-flight writes (and their forwarding down the chain)
/// finish before it is read, and new ones wait until it is, so the copy is a state the chain
/// went through. Verified against the block checksums like every read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRead {
    pub file: FileId,
    pub chunk: ChunkIndex,
}

/// The answer to [`SyncRead`]; the chunk's bytes are the payload (empty: no such chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncData {
    /// The chunk's checksum block size, bytes (0 when it does not exist).
    pub block_size: u32,
    /// The chunk exists.
    pub exists: bool,
}

/// Remove one chunk of a file. Durable when answered. From pfs-meta only (see [`RemoveFile`]).
/// With `listed`, only if the chunk is still in that state (Conflict otherwise, and nothing
/// is removed): pfs-meta removes an orphan `pfs fsck` listed, and a write that reached the
/// chunk since must not be lost with it. A chunk that is not there is removed already (Ok).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveChunk {
    pub file: FileId,
    pub chunk: ChunkIndex,
    pub listed: Option<ListedState>,
}

/// Most chunks one [`ListChunks`] page holds.
pub const LIST_MAX: u32 = 4096;
/// Most chunks one verifying [`ListChunks`] page reads.
pub const LIST_VERIFY_MAX: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    fn write(extents: &[(u64, u32)]) -> WriteChunk {
        WriteChunk {
            file: FileId(1),
            chunk: 0,
            extents: extents.iter().map(|&(offset, len)| Extent { offset, len }).collect(),
            chunk_size: 1 << 20,
            block_size: 4096,
            session: 1,
            chain: ChainRef { id: crate::chain::ChainId(1), version: 1 },
            capabilities: Vec::new(),
        }
    }

    #[test]
    fn extents_are_checked_against_the_payload() {
        assert_eq!(write(&[(0, 10), (20, 5)]).check_extents(15), Ok(()));
        assert_eq!(write(&[]).check_extents(0), Err(ExtentError::Count { count: 0 }));
        let many: Vec<(u64, u32)> = (0..=WRITE_EXTENTS_MAX as u64).map(|i| (i * 2, 1)).collect();
        assert_eq!(write(&many).check_extents(many.len()), Err(ExtentError::Count { count: WRITE_EXTENTS_MAX + 1 }));
        assert_eq!(write(&[(0, 10), (20, 0)]).check_extents(10), Err(ExtentError::Empty { index: 1 }));
        assert_eq!(write(&[(0, 10), (5, 5)]).check_extents(15), Err(ExtentError::Unordered { index: 1, offset: 5 }));
        assert_eq!(write(&[(0, 10)]).check_extents(11), Err(ExtentError::Length { total: 10, payload: 11 }));
    }
}
