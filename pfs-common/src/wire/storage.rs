//! Messages of the storage service (pfs-storage): chunk reads and writes, truncate, remove,
//! fsync, and the notifications pfs-meta pushes to storage servers.

use crate::ids::{ChunkIndex, FileId, ServerId};
use crate::token::SessionId;
use serde::{Deserialize, Serialize};

/// Requests to a storage server. Data travels as the frame payload, never in the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageRequest {
    /// Write the payload at `offset` (bytes) inside chunk `chunk` of `file`, creating the
    /// chunk file if needed. `chunk_size` bounds `offset + len`. Not durable until `Fsync`.
    /// `session` is the writer's session; writes of a fenced (evicted) session are refused
    /// with Evicted, so a late write cannot land over newer data.
    Write { file: FileId, chunk: ChunkIndex, offset: u64, chunk_size: u64, session: SessionId },
    /// Read up to `len` bytes at `offset` inside a chunk. The payload of the answer is shorter
    /// when the chunk file ends earlier, and empty when it does not exist (a hole).
    Read { file: FileId, chunk: ChunkIndex, offset: u64, len: u32 },
    /// Cut `file` to `size` bytes: chunks wholly past it are removed, the one it falls in is
    /// truncated. `chunk_size` is the file's chunk size. Durable when answered.
    Truncate { file: FileId, size: u64, chunk_size: u64 },
    /// Remove every chunk of `file`. Durable when answered.
    Remove { file: FileId },
    /// Make every write to `file` durable, and report the new chunk hashes to pfs-meta,
    /// before answering.
    Fsync { file: FileId },
    /// Capacity and usage.
    Status,
}

/// Answers from a storage server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageResponse {
    Done,
    /// Bytes written.
    Written {
        len: u32,
    },
    /// Bytes read are the payload; `chunk_len` is the chunk file's length.
    Read {
        chunk_len: u64,
    },
    Status(StorageStatus),
}

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

/// One-way messages pfs-meta pushes to a storage server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageNotify {
    /// These files were unlinked: remove their chunks.
    RemoveFiles(Vec<FileId>),
    /// Refuse writes of these (evicted) sessions from now on, then answer with
    /// `MetaRequest::Fenced`.
    Fence(Vec<SessionId>),
}
