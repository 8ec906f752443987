//! Identifiers: file ids, storage-server ids, chunk indexes, and the chunk file name.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The stable, never-reused identity of a file or directory (an inode number).
///
/// Allocated by pfs-meta from a 64-bit counter that is persisted in the WAL, so an id is
/// never handed out twice, not even across restarts. Chunk files are named after it, which
/// makes rename a metadata-only operation and keeps client-supplied names out of server paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId(pub u64);

impl FileId {
    /// The root directory's id.
    pub const ROOT: FileId = FileId(1);

    /// The file id as 16 lower-case hex digits, as used in chunk file names.
    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The id of a storage server (one storage target), as named in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServerId(pub u32);

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage-{}", self.0)
    }
}

/// Index of a chunk within a file: chunk `x` holds file bytes
/// `[x * chunk_size, (x + 1) * chunk_size)`.
pub type ChunkIndex = u64;

/// The name of chunk `chunk` of file `file` inside a storage target's data directory:
/// `<file id as 16 hex digits>_chunk_<chunk>`. Built only from ids, never from user input.
pub fn chunk_file_name(file: FileId, chunk: ChunkIndex) -> String {
    format!("{:016x}_chunk_{}", file.0, chunk)
}

/// Parses a chunk file name made by [`chunk_file_name`]; `None` for anything else
/// (temporary files, stray files an operator left in the directory).
pub fn parse_chunk_file_name(name: &str) -> Option<(FileId, ChunkIndex)> {
    let (hex_part, rest) = name.split_once("_chunk_")?;
    if hex_part.len() != 16 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    let id = u64::from_str_radix(hex_part, 16).ok()?;
    let chunk = rest.parse().ok()?;
    Some((FileId(id), chunk))
}

/// A SHA-256 digest of a chunk's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest;
        Sha256Digest(sha2::Sha256::digest(data).into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_round_trip() {
        let name = chunk_file_name(FileId(0xabc), 17);
        assert_eq!(name, "0000000000000abc_chunk_17");
        assert_eq!(parse_chunk_file_name(&name), Some((FileId(0xabc), 17)));
    }

    #[test]
    fn foreign_names_are_not_chunks() {
        for bad in [
            "x_chunk_1",
            "0000000000000abc_chunk_",
            "0000000000000abc_chunk_01",
            "0000000000000abc_chunk_1.tmp",
            "0000000000000abg_chunk_1",
        ] {
            assert_eq!(parse_chunk_file_name(bad), None, "{bad}");
        }
    }
}
