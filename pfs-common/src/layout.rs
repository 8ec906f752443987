//! Stripe layout math: which chunk and which storage target hold a byte of a file.
//!
//! A file is cut into chunks of `chunk_size = block_size × stripe_blocks` bytes; chunk `x`
//! holds file bytes `[x·chunk_size, (x+1)·chunk_size)` and lives on every replica of the
//! replication chain `chains[x mod stripe_count]` (see [`crate::chain`]), the round-robin
//! placement of RAID-0, Lustre and BeeGFS. `chains` is stored already rotated to the file's
//! first chain, so the DESIGN's `targets[(first + x) mod stripe_count]` is
//! `chains[x mod stripe_count]` here.

use crate::chain::{ChainId, MAX_REPLICAS};
use crate::error::{Error, Result};
use crate::ids::ChunkIndex;
use serde::{Deserialize, Serialize};

/// Largest chunk size accepted (bytes).
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
/// Smallest block size accepted (bytes).
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest file size, bytes: 2^63 − 1, as Linux's `off_t` (a signed 64-bit offset) allows.
/// No write may end past it and no file may be truncated or sized beyond it (Invalid), so
/// every file offset, and `chunk index × chunk size` of every chunk of a file, fits in an
/// `i64` and never overflows a `u64`.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Defaults for new files: block size (bytes), blocks per chunk, how many storage targets a
/// file spans (0 = all that are up) and how many copies of each chunk it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LayoutPolicy {
    /// Cache unit, bytes (the seed's PFS_BLOCK_SIZE). Default 64 KiB.
    pub block_size: u32,
    /// Blocks per chunk (the seed's STRIPE_BLOCKS). Default 16, so chunks are 1 MiB.
    pub stripe_blocks: u32,
    /// Storage targets per file; 0 means every target that is up.
    pub stripe_count: u32,
    /// Copies of every chunk, each on another storage server (1..=3). Default 1.
    pub replicas: u8,
}

impl Default for LayoutPolicy {
    fn default() -> Self {
        LayoutPolicy { block_size: 64 << 10, stripe_blocks: 16, stripe_count: 0, replicas: 1 }
    }
}

impl LayoutPolicy {
    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u64 {
        self.block_size as u64 * self.stripe_blocks as u64
    }

    /// Checks the block size, chunk size and replica count are within limits.
    pub fn validate(&self) -> Result<()> {
        check_sizes(self.block_size, self.stripe_blocks)?;
        check_replicas(self.replicas)
    }
}

/// Errors (Layout) unless `replicas` is within 1..=[`MAX_REPLICAS`].
pub fn check_replicas(replicas: u8) -> Result<()> {
    if replicas == 0 || replicas > MAX_REPLICAS {
        return Err(Error::Layout(format!(
            "{replicas} replicas: a file keeps 1 to {MAX_REPLICAS} copies of each chunk"
        )));
    }
    Ok(())
}

fn check_sizes(block_size: u32, stripe_blocks: u32) -> Result<()> {
    if block_size < MIN_BLOCK_SIZE || !block_size.is_power_of_two() {
        return Err(Error::Layout(format!(
            "block size {block_size} must be a power of two of at least {MIN_BLOCK_SIZE} bytes"
        )));
    }
    let chunk = block_size as u64 * stripe_blocks as u64;
    if stripe_blocks == 0 || chunk > MAX_CHUNK_SIZE {
        return Err(Error::Layout(format!(
            "chunk size {block_size} x {stripe_blocks} must be between 1 block and {MAX_CHUNK_SIZE} bytes"
        )));
    }
    Ok(())
}

/// What the creator of a file asks of its layout; `None` takes the parent directory's (or
/// the cluster's) default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutChoice {
    /// Block size in bytes (the cache unit): a power of two of at least 512.
    pub block_size: Option<u32>,
    /// Chunk size in bytes: a multiple of the block size (`block_size × stripe_blocks`).
    pub chunk_size: Option<u64>,
    /// Storage targets to span; clamped to the number of servers that are up.
    pub stripe_count: Option<u32>,
    /// Copies of every chunk (1..=3); there must be that many storage servers up.
    pub replicas: Option<u8>,
}

/// A file's layout, fixed when the file is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Block size in bytes (cache unit).
    pub block_size: u32,
    /// Blocks per chunk.
    pub stripe_blocks: u32,
    /// Copies of every chunk (1..=3).
    pub replicas: u8,
    /// The replication chains, in placement order: chunk `x` is on every replica of
    /// `chains[x % chains.len()]`.
    pub chains: Vec<ChainId>,
}

/// One piece of an I/O request that falls inside a single chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The chunk it falls in.
    pub chunk: ChunkIndex,
    /// Offset of the piece inside the chunk, bytes.
    pub chunk_offset: u64,
    /// Offset of the piece inside the caller's buffer, bytes.
    pub buf_offset: usize,
    /// Length, bytes (never 0).
    pub len: usize,
}

impl Layout {
    /// A layout over `chains` of `replicas` copies; errors if sizes or the replica count are
    /// out of range or there is no chain.
    pub fn new(block_size: u32, stripe_blocks: u32, replicas: u8, chains: Vec<ChainId>) -> Result<Layout> {
        let layout = Layout { block_size, stripe_blocks, replicas, chains };
        layout.validate()?;
        Ok(layout)
    }

    /// Checks a layout, for instance one that came from the network or from disk.
    pub fn validate(&self) -> Result<()> {
        check_sizes(self.block_size, self.stripe_blocks)?;
        check_replicas(self.replicas)?;
        if self.chains.is_empty() {
            return Err(Error::Layout("a layout needs at least one chain of storage targets".into()));
        }
        Ok(())
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u64 {
        self.block_size as u64 * self.stripe_blocks as u64
    }

    /// Number of chains (stripe positions) the file is striped over.
    pub fn stripe_count(&self) -> usize {
        self.chains.len()
    }

    /// The chunk holding file byte `offset`, and the byte's offset inside that chunk.
    pub fn locate(&self, offset: u64) -> (ChunkIndex, u64) {
        let cs = self.chunk_size();
        (offset / cs, offset % cs)
    }

    /// The file offset of byte `chunk_offset` of chunk `chunk` (inverse of [`Layout::locate`]).
    /// For chunks of a file (offsets below [`MAX_FILE_SIZE`]); a chunk index from the network
    /// is checked with [`Layout::chunk_end`] first.
    pub fn file_offset(&self, chunk: ChunkIndex, chunk_offset: u64) -> u64 {
        chunk * self.chunk_size() + chunk_offset
    }

    /// The file offset just past byte `chunk_offset + len` of chunk `chunk`, if it is at most
    /// [`MAX_FILE_SIZE`]; `None` for a range (say, a chunk index sent by a peer) that ends past
    /// the largest file or overflows.
    pub fn chunk_end(chunk: ChunkIndex, chunk_size: u64, chunk_offset: u64, len: u64) -> Option<u64> {
        chunk.checked_mul(chunk_size)?.checked_add(chunk_offset)?.checked_add(len).filter(|end| *end <= MAX_FILE_SIZE)
    }

    /// The chain holding chunk `chunk`.
    pub fn chain(&self, chunk: ChunkIndex) -> ChainId {
        self.chains[(chunk % self.chains.len() as u64) as usize]
    }

    /// Number of chunks a file of `size` bytes has (the last one possibly partial).
    pub fn chunk_count(&self, size: u64) -> u64 {
        size.div_ceil(self.chunk_size())
    }

    /// How many bytes of chunk `chunk` lie below file size `size`.
    pub fn chunk_len(&self, chunk: ChunkIndex, size: u64) -> u64 {
        let start = chunk.saturating_mul(self.chunk_size());
        size.saturating_sub(start).min(self.chunk_size())
    }

    /// Cuts the byte range `[offset, offset + len)` into per-chunk pieces, in file order.
    pub fn pieces(&self, offset: u64, len: usize) -> Pieces {
        Pieces { chunk_size: self.chunk_size(), offset, done: 0, len }
    }
}

/// Iterator over the per-chunk [`Piece`]s of a byte range; see [`Layout::pieces`].
#[derive(Clone, Debug)]
pub struct Pieces {
    chunk_size: u64,
    offset: u64,
    done: usize,
    len: usize,
}

impl Iterator for Pieces {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        if self.done >= self.len {
            return None;
        }
        let pos = self.offset + self.done as u64;
        let chunk = pos / self.chunk_size;
        let chunk_offset = pos % self.chunk_size;
        let room = (self.chunk_size - chunk_offset) as usize;
        let len = room.min(self.len - self.done);
        let piece = Piece { chunk, chunk_offset, buf_offset: self.done, len };
        self.done += len;
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(block_pow: u32, blocks: u32, targets: u32) -> Layout {
        Layout::new(1 << block_pow, blocks, 1, (1..=targets).map(ChainId).collect()).unwrap()
    }

    proptest! {
        #[test]
        fn every_offset_maps_to_one_chunk_and_back(
            block_pow in 9u32..17, blocks in 1u32..32, targets in 1u32..9, offset in 0u64..(1u64 << 50)
        ) {
            let l = layout(block_pow, blocks, targets);
            let (chunk, within) = l.locate(offset);
            prop_assert!(within < l.chunk_size());
            prop_assert_eq!(l.file_offset(chunk, within), offset);
            // The chunk's range contains the offset, so no other chunk's range can.
            prop_assert!(chunk * l.chunk_size() <= offset && offset < (chunk + 1) * l.chunk_size());
            prop_assert_eq!(l.chain(chunk), l.chains[(chunk % targets as u64) as usize]);
        }

        #[test]
        fn pieces_tile_the_range_exactly(
            block_pow in 9u32..14, blocks in 1u32..8, offset in 0u64..(1u64 << 40), len in 0usize..200_000
        ) {
            let l = layout(block_pow, blocks, 4);
            let mut expect_buf = 0usize;
            for p in l.pieces(offset, len) {
                prop_assert_eq!(p.buf_offset, expect_buf);
                prop_assert!(p.len > 0);
                prop_assert!(p.chunk_offset + p.len as u64 <= l.chunk_size());
                prop_assert_eq!(l.locate(offset + p.buf_offset as u64), (p.chunk, p.chunk_offset));
                expect_buf += p.len;
            }
            prop_assert_eq!(expect_buf, len);
        }

        #[test]
        fn chunk_lengths_sum_to_size(block_pow in 9u32..14, blocks in 1u32..8, size in 0u64..10_000_000) {
            let l = layout(block_pow, blocks, 3);
            let total: u64 = (0..l.chunk_count(size)).map(|c| l.chunk_len(c, size)).sum();
            prop_assert_eq!(total, size);
            prop_assert_eq!(l.chunk_len(l.chunk_count(size), size), 0);
        }
    }

    #[test]
    fn chunk_ends_past_the_largest_file_are_refused() {
        assert_eq!(Layout::chunk_end(2, 1 << 20, 10, 5), Some((2 << 20) + 15));
        let last = MAX_FILE_SIZE / (1 << 20);
        assert_eq!(Layout::chunk_end(last, 1 << 20, 0, MAX_FILE_SIZE % (1 << 20)), Some(MAX_FILE_SIZE));
        assert_eq!(Layout::chunk_end(last, 1 << 20, 0, MAX_FILE_SIZE % (1 << 20) + 1), None);
        assert_eq!(Layout::chunk_end(u64::MAX, 1 << 20, 0, 1), None, "overflow");
        assert_eq!(Layout::chunk_end(1, u64::MAX, 1, 0), None, "overflow");
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(Layout::new(1000, 4, 1, vec![ChainId(1)]).is_err());
        assert!(Layout::new(4096, 0, 1, vec![ChainId(1)]).is_err());
        assert!(Layout::new(1 << 20, 128, 1, vec![ChainId(1)]).is_err());
        assert!(Layout::new(4096, 4, 1, vec![]).is_err());
        assert!(Layout::new(4096, 4, 0, vec![ChainId(1)]).is_err());
        assert!(Layout::new(4096, 4, 4, vec![ChainId(1)]).is_err());
    }
}
