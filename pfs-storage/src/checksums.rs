//! Block checksums: a crc32c of every block of a chunk, kept in an extended attribute of the
//! chunk file (`user.pfs.crc32c`), so the chunk file holds exactly the chunk's bytes and no
//! second inode is needed. Every read is verified against them, so a flipped bit on disk is an
//! error naming the block, never data (as 3FS and ZFS keep per-block checksums; crc32c runs at
//! tens of GiB/s with SSE 4.2).
//!
//! Value layout: magic `PFSC`, the checksum block size (`u32` LE, bytes), a flags word
//! (`u32` LE), the chunk's commit version (`u64` LE), the SHA-256 of the committed bytes (32
//! bytes; zeros when unknown), then one `u32` LE crc32c per block; the last block covers only
//! the bytes up to the chunk's end.
//!
//! The commit version counts the chunk's commits on this server (1 for the first): pfs-meta's
//! chunk map records it with each committed state, so a copy from before the last commit (an old
//! disk put back, a chunk file restored from a backup) is told from the current one even when
//! its length is the same. The checksum block is the file's block size, or larger for chunks that
//! would need more than [`MAX_BLOCKS`] checksums (so the value fits one file-system block).
//!
//! Crash consistency. Data and checksums reach the disk separately; after a crash either may
//! hold writes the other lacks. The `CLEAN` flag says both were synced with nothing written
//! since:
//! - a commit (the chunk's fdatasync) sets it after the data is durable, then fsyncs;
//! - the first write after that clears it durably (fsync) *before* writing data.
//!
//! So checksums found clean at start-up match their data unless the disk damaged one of them,
//! and a mismatch is corruption. Dirty (or missing) ones belong to a chunk changed since its
//! last commit: they are rebuilt from the data, which is whatever survived of the writes no one
//! had fsynced (POSIX allows any of them to be lost).

use crate::engine::{ChunkFiles, ChunkKey};
use crate::error::{Result, StorageError};
use parking_lot::Mutex;
use pfs_common::ids::Sha256Digest;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The extended attribute holding a chunk's checksums.
pub const XATTR: &str = "user.pfs.crc32c";
const XATTR_C: &[u8] = b"user.pfs.crc32c\0";
const MAGIC: [u8; 4] = *b"PFSC";
const HEADER: usize = 52;
/// Flag: data and checksums were synced together and nothing changed since.
const CLEAN: u32 = 1;
/// Flag: the SHA-256 field holds the committed bytes' hash.
const HAS_SHA: u32 = 2;
/// Most checksums per chunk (2 KiB of value): larger chunks get larger checksum blocks.
pub const MAX_BLOCKS: u64 = 512;
/// Open chunk checksum handles kept at most.
const OPEN_MAX: usize = 1024;

/// The checksum block for a chunk of a file with `block_size`-byte blocks and
/// `chunk_size`-byte chunks: the block size, doubled until a chunk needs at most
/// [`MAX_BLOCKS`] checksums.
pub fn block_for(block_size: u32, chunk_size: u64) -> u32 {
    let mut b = block_size.max(512) as u64;
    while chunk_size.div_ceil(b) > MAX_BLOCKS {
        b *= 2;
    }
    b.min(u32::MAX as u64 / 2 + 1) as u32
}

/// The checksums of one chunk, through its open chunk file.
pub struct ChunkChecksums {
    file: Arc<File>,
    /// Checksum block size, bytes (a power of two, at least 512).
    pub block_size: u32,
    clean: AtomicBool,
    what: String,
}

/// What a chunk's checksums record of its last commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Commits of the chunk on this server so far (0: never committed).
    pub version: u64,
    /// Data and checksums were synced together with nothing written since.
    pub clean: bool,
    /// The SHA-256 of the committed bytes, when clean and known.
    pub sha256: Option<Sha256Digest>,
}

/// The chunk checksums of one data directory.
pub struct Checksums {
    files: Arc<ChunkFiles>,
    open: Mutex<HashMap<ChunkKey, Arc<ChunkChecksums>>>,
}

fn bad(what: &str, why: impl std::fmt::Display) -> StorageError {
    StorageError::io(format!("the checksums of {what}"), std::io::Error::other(why.to_string()))
}

/// The attribute's value, or `None` when the file has none.
fn get_value(f: &File, what: &str) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; HEADER + 4 * MAX_BLOCKS as usize + 64];
    // SAFETY: the buffer is ours and its length is passed; the name is NUL-terminated.
    let n = unsafe { libc::fgetxattr(f.as_raw_fd(), XATTR_C.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(None);
        }
        return Err(StorageError::io(format!("reading the checksums of {what}"), e));
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

fn set_value(f: &File, value: &[u8], what: &str) -> Result<()> {
    // SAFETY: value and name are valid for the call; the name is NUL-terminated.
    let r = unsafe { libc::fsetxattr(f.as_raw_fd(), XATTR_C.as_ptr().cast(), value.as_ptr().cast(), value.len(), 0) };
    if r != 0 {
        return Err(StorageError::io(format!("writing the checksums of {what}"), std::io::Error::last_os_error()));
    }
    Ok(())
}

fn header(block_size: u32, flags: u32, version: u64, sha256: Option<Sha256Digest>) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&block_size.to_le_bytes());
    let flags = if sha256.is_some() { flags | HAS_SHA } else { flags & !HAS_SHA };
    h[8..12].copy_from_slice(&flags.to_le_bytes());
    h[12..20].copy_from_slice(&version.to_le_bytes());
    h[20..52].copy_from_slice(&sha256.map_or([0; 32], |d| d.0));
    h
}

/// The commit record in a value (checked to hold a header).
fn committed_of(v: &[u8]) -> Committed {
    let flags = u32::from_le_bytes(v[8..12].try_into().expect("4 bytes"));
    let version = u64::from_le_bytes(v[12..20].try_into().expect("8 bytes"));
    let clean = flags & CLEAN != 0;
    let sha256 = (clean && flags & HAS_SHA != 0).then(|| Sha256Digest(v[20..52].try_into().expect("32 bytes")));
    Committed { version, clean, sha256 }
}

impl Checksums {
    /// Checksums of the chunk files of `files`.
    pub fn new(files: Arc<ChunkFiles>) -> Checksums {
        Checksums { files, open: Mutex::new(HashMap::new()) }
    }

    /// The checksums of chunk `key` (blocking, short). With `create` (a checksum block size,
    /// before a chunk's first write), a chunk file without them gets an empty dirty set, the
    /// chunk file being created if needed. `None` when there are none and `create` is `None`
    /// (or the chunk file does not exist).
    ///
    /// Errors: Io naming the chunk, also for a damaged value.
    pub fn get(&self, key: ChunkKey, create: Option<u32>) -> Result<Option<Arc<ChunkChecksums>>> {
        if let Some(s) = self.open.lock().get(&key) {
            return Ok(Some(s.clone()));
        }
        let what = ChunkFiles::describe(key);
        // The O_DIRECT file where there is one: the engine's aligned writes use it, so no second
        // descriptor is opened per chunk (an open costs about 0.5 ms on this VM); attributes
        // and fsync work through either.
        let Some(file) = self.files.open_as(key, create.is_some(), true)?.map(|fd| fd.file) else { return Ok(None) };
        let (block_size, flags) = match get_value(&file, &what)? {
            Some(v) => {
                if v.len() < HEADER || v[..4] != MAGIC || !(v.len() - HEADER).is_multiple_of(4) {
                    return Err(bad(&what, format!("a damaged value of {} bytes", v.len())));
                }
                let block_size = u32::from_le_bytes(v[4..8].try_into().expect("4 bytes"));
                if block_size < 512 || !block_size.is_power_of_two() {
                    return Err(bad(&what, format!("block size {block_size} is not a power of two of at least 512")));
                }
                (block_size, u32::from_le_bytes(v[8..12].try_into().expect("4 bytes")))
            }
            None => match create {
                None => return Ok(None),
                Some(block_size) => {
                    set_value(&file, &header(block_size, 0, 0, None), &what)?;
                    (block_size, 0)
                }
            },
        };
        let s = Arc::new(ChunkChecksums { file, block_size, clean: AtomicBool::new(flags & CLEAN != 0), what });
        let mut open = self.open.lock();
        if open.len() >= OPEN_MAX {
            open.clear();
        }
        Ok(Some(open.entry(key).or_insert(s).clone()))
    }

    /// Forgets the open handle of `key` (its chunk file was removed; the checksums went with it).
    pub fn remove(&self, key: ChunkKey) -> Result<()> {
        self.open.lock().remove(&key);
        Ok(())
    }

    /// Writes fresh dirty checksums of every block of `chunk` (read in full), with
    /// `block_size`, keeping commit version `version` (blocking). Used at start-up for chunks
    /// whose checksums are dirty or missing.
    ///
    /// Errors: Io naming the chunk.
    pub fn rebuild(&self, key: ChunkKey, chunk: &File, block_size: u32, version: u64) -> Result<()> {
        self.open.lock().remove(&key);
        let what = ChunkFiles::describe(key);
        let mut value = header(block_size, 0, version, None).to_vec();
        let mut buf = vec![0u8; block_size as usize];
        let mut off = 0u64;
        loop {
            let n = read_full(chunk, &mut buf, off)
                .map_err(|e| StorageError::io(format!("reading {what} to rebuild its checksums"), e))?;
            if n == 0 {
                break;
            }
            value.extend_from_slice(&crc32c::crc32c(&buf[..n]).to_le_bytes());
            off += n as u64;
            if n < buf.len() {
                break;
            }
        }
        set_value(chunk, &value, &what)
    }
}

/// Reads up to `buf.len()` bytes at `off`, fewer only at end of file.
fn read_full(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl ChunkChecksums {
    /// The current value (header and checksums).
    fn value(&self) -> Result<Vec<u8>> {
        get_value(&self.file, &self.what)?.ok_or_else(|| bad(&self.what, "they disappeared"))
    }

    /// Whether data and checksums were synced together with nothing written since.
    pub fn is_clean(&self) -> bool {
        self.clean.load(Ordering::Acquire)
    }

    /// The commit version, clean flag and committed SHA-256 on disk.
    ///
    /// Errors: Io.
    pub fn committed(&self) -> Result<Committed> {
        Ok(committed_of(&self.value()?))
    }

    /// Records a commit (the data is durable): the commit version goes up by one and the
    /// checksums are clean, with `sha256` if known; fsyncs the chunk file (blocking: an extended
    /// attribute is metadata, which fdatasync need not write). Returns the new version.
    ///
    /// Errors: Io.
    pub fn commit(&self, sha256: Option<Sha256Digest>) -> Result<u64> {
        let mut v = self.value()?;
        let version = committed_of(&v).version + 1;
        v[..HEADER].copy_from_slice(&header(self.block_size, CLEAN, version, sha256));
        self.store_synced(&v, true)?;
        Ok(version)
    }

    /// Clears the clean flag (a write is about to change the data) and fsyncs (blocking).
    ///
    /// Errors: Io.
    pub fn set_dirty(&self) -> Result<()> {
        let mut v = self.value()?;
        let c = committed_of(&v);
        v[..HEADER].copy_from_slice(&header(self.block_size, 0, c.version, None));
        self.store_synced(&v, false)
    }

    fn store_synced(&self, v: &[u8], clean: bool) -> Result<()> {
        set_value(&self.file, v, &self.what)?;
        self.file.sync_all().map_err(|e| StorageError::io(format!("syncing the checksums of {}", self.what), e))?;
        self.clean.store(clean, Ordering::Release);
        Ok(())
    }

    /// The checksums of blocks `first .. first + count`; a block past the end reads as `None`
    /// (a block never written).
    ///
    /// Errors: Io.
    pub fn read(&self, first: u64, count: usize) -> Result<Vec<Option<u32>>> {
        let v = self.value()?;
        let crcs = &v[HEADER..];
        Ok((0..count as u64)
            .map(|i| {
                let at = ((first + i) * 4) as usize;
                crcs.get(at..at + 4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            })
            .collect())
    }

    /// Stores the checksums of blocks `first ..` in order.
    ///
    /// Errors: Invalid past [`MAX_BLOCKS`] (cannot happen for blocks chosen by [`block_for`]);
    /// Io.
    pub fn write(&self, first: u64, crcs: &[u32]) -> Result<()> {
        if first + crcs.len() as u64 > MAX_BLOCKS {
            return Err(bad(&self.what, format!("block {} is past the most a chunk has", first + crcs.len() as u64)));
        }
        let mut v = self.value()?;
        let end = HEADER + (first as usize + crcs.len()) * 4;
        if v.len() < end {
            v.resize(end, 0);
        }
        for (i, c) in crcs.iter().enumerate() {
            let at = HEADER + (first as usize + i) * 4;
            v[at..at + 4].copy_from_slice(&c.to_le_bytes());
        }
        set_value(&self.file, &v, &self.what)
    }

    /// Keeps the checksums of the first `blocks` blocks only (the chunk was cut).
    ///
    /// Errors: Io.
    pub fn truncate(&self, blocks: u64) -> Result<()> {
        let mut v = self.value()?;
        v.truncate(HEADER + blocks as usize * 4);
        set_value(&self.file, &v, &self.what)
    }
}

/// Checksums of the blocks `first ..= last` of a chunk that is `chunk_len` bytes long after a
/// write of `data` at `offset`: blocks the write covers whole come from `data`, the others
/// (partly written, or in a gap the write left) are read back from the chunk file, which
/// `open` opens on first need (blocking).
///
/// Errors: Io naming the chunk.
#[allow(clippy::too_many_arguments)]
pub fn block_crcs(
    open: impl FnOnce() -> Result<Arc<File>>,
    block_size: u32,
    first: u64,
    last: u64,
    chunk_len: u64,
    offset: u64,
    data: &[u8],
    key: ChunkKey,
) -> Result<Vec<u32>> {
    let bs = block_size as u64;
    let end = offset + data.len() as u64;
    let mut buf = Vec::new();
    let mut open = Some(open);
    let mut chunk: Option<Arc<File>> = None;
    (first..=last)
        .map(|b| {
            let (start, stop) = (b * bs, ((b + 1) * bs).min(chunk_len));
            if start >= offset && stop <= end {
                return Ok(crc32c::crc32c(&data[(start - offset) as usize..(stop - offset) as usize]));
            }
            buf.resize((stop - start) as usize, 0);
            if chunk.is_none() {
                chunk = Some(open.take().expect("opened at most once")()?);
            }
            let n = read_full(chunk.as_ref().expect("opened above"), &mut buf, start)
                .map_err(|e| StorageError::io(format!("reading back block {b} of {}", ChunkFiles::describe(key)), e))?;
            // A block the file does not reach yet reads as zeros (a hole).
            buf[n..].fill(0);
            Ok(crc32c::crc32c(&buf))
        })
        .collect()
}
