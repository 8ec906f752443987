//! Block checksums: a crc32c of every block of a chunk, kept in a sidecar file beside the
//! chunk file (`<chunk file name>.crc`), so the chunk file holds exactly the chunk's bytes.
//! Every read is verified against them, so a flipped bit on disk is an error naming the block,
//! never data (as 3FS and ZFS keep per-block checksums; crc32c runs at tens of GiB/s with
//! SSE 4.2).
//!
//! Sidecar layout: a 16-byte header — magic `PFSCRC01`, the block size (`u32` LE, bytes), a
//! flags word (`u32` LE) — then one `u32` LE crc32c per block, block `i` at `16 + 4 i`. The
//! last block covers only the bytes up to the chunk's end.
//!
//! Crash consistency. Data and checksums are two files; after a crash either may hold writes
//! the other lacks. The `CLEAN` flag says both were synced with nothing written since:
//! - a commit (the chunk's fdatasync) sets it after the data is durable, then syncs the sidecar;
//! - the first write after that clears it durably (sidecar fdatasync) *before* writing data.
//!
//! So a sidecar found clean at start-up matches its data unless the disk damaged one of them,
//! and a mismatch is corruption. One found dirty (or missing) belongs to a chunk changed since
//! its last commit: its checksums are rebuilt from the data, which is whatever survived of the
//! writes no one had fsynced (POSIX allows any of them to be lost).

use crate::engine::{ChunkFiles, ChunkKey};
use crate::error::{Result, StorageError};
use parking_lot::Mutex;
use pfs_common::ids::chunk_file_name;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const MAGIC: [u8; 8] = *b"PFSCRC01";
const HEADER: u64 = 16;
/// Flag: data and checksums were synced together and nothing changed since.
const CLEAN: u32 = 1;
/// Checksum block size for chunks whose sidecar is rebuilt without knowing the file's block
/// size (a sidecar lost or never written), bytes.
pub const DEFAULT_BLOCK: u32 = 64 << 10;
/// Open sidecars kept at most.
const OPEN_MAX: usize = 1024;
/// Suffix of sidecar file names.
pub const SUFFIX: &str = ".crc";

/// The sidecar of one chunk, open.
pub struct Sidecar {
    file: File,
    /// Checksum block size, bytes (a power of two, at least 512).
    pub block_size: u32,
    clean: AtomicBool,
    path: PathBuf,
}

/// The sidecars of one data directory.
pub struct Sidecars {
    files: Arc<ChunkFiles>,
    open: Mutex<HashMap<ChunkKey, Arc<Sidecar>>>,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> StorageError {
    StorageError::io(format!("checksum file {}", path.display()), std::io::Error::other(why.to_string()))
}

impl Sidecars {
    /// Sidecars beside the chunk files of `files` (new ones taken from its pool of
    /// precreated files when it has one: creating an inode is the slow part here too).
    pub fn new(files: Arc<ChunkFiles>) -> Sidecars {
        Sidecars { files, open: Mutex::new(HashMap::new()) }
    }

    /// The sidecar path of chunk `key`.
    pub fn path(&self, key: ChunkKey) -> PathBuf {
        self.files.dir().join(format!("{}{SUFFIX}", chunk_file_name(key.0, key.1)))
    }

    /// The sidecar of `key`, opened (blocking, short) if not open. With `create`, a missing
    /// one is created dirty with block size `create` (before the chunk's first write).
    /// `None` when it does not exist and `create` is `None`.
    ///
    /// Errors: Io naming the sidecar, also for a damaged header.
    pub fn get(&self, key: ChunkKey, create: Option<u32>) -> Result<Option<Arc<Sidecar>>> {
        if let Some(s) = self.open.lock().get(&key) {
            return Ok(Some(s.clone()));
        }
        let path = self.path(key);
        let io = |what: &str, e| StorageError::io(format!("{what} checksum file {}", path.display()), e);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create {
                None => return Ok(None),
                Some(block_size) => {
                    let adopted = self.files.adopt_precreated(&path);
                    let f = OpenOptions::new().read(true).write(true).create(!adopted).truncate(true).open(&path);
                    let f = f.map_err(|e| io("creating", e))?;
                    f.write_all_at(&header(block_size, 0), 0).map_err(|e| io("writing", e))?;
                    f
                }
            },
            Err(e) => return Err(io("opening", e)),
        };
        let mut h = [0u8; HEADER as usize];
        file.read_exact_at(&mut h, 0).map_err(|e| io("reading the header of", e))?;
        if h[..8] != MAGIC {
            return Err(bad(&path, "not a pfs checksum file (bad magic)"));
        }
        let block_size = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if block_size < 512 || !block_size.is_power_of_two() {
            return Err(bad(&path, format!("block size {block_size} is not a power of two of at least 512")));
        }
        let flags = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
        let s = Arc::new(Sidecar { file, block_size, clean: AtomicBool::new(flags & CLEAN != 0), path });
        let mut open = self.open.lock();
        if open.len() >= OPEN_MAX {
            open.clear();
        }
        Ok(Some(open.entry(key).or_insert(s).clone()))
    }

    /// Removes the sidecar of `key` (its chunk was removed). A missing one is fine.
    ///
    /// Errors: Io.
    pub fn remove(&self, key: ChunkKey) -> Result<()> {
        self.open.lock().remove(&key);
        match std::fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(format!("removing {}", self.path(key).display()), e)),
        }
    }

    /// Writes the checksums of every block of `chunk` (the chunk file, read in full) into a
    /// fresh dirty sidecar with `block_size` (blocking). Used at start-up for chunks whose
    /// sidecar is dirty or missing.
    ///
    /// Errors: Io naming the chunk or sidecar.
    pub fn rebuild(&self, key: ChunkKey, chunk: &File, block_size: u32) -> Result<()> {
        self.open.lock().remove(&key);
        let path = self.path(key);
        let tmp = path.with_extension("crc.tmp");
        let io = |what: &str, e| StorageError::io(format!("{what} {}", tmp.display()), e);
        let out = File::create(&tmp).map_err(|e| io("creating", e))?;
        let mut bytes = header(block_size, 0).to_vec();
        let mut buf = vec![0u8; block_size as usize];
        let mut off = 0u64;
        loop {
            let n = read_full(chunk, &mut buf, off).map_err(|e| io("reading the chunk for", e))?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&crc32c::crc32c(&buf[..n]).to_le_bytes());
            off += n as u64;
            if n < buf.len() {
                break;
            }
        }
        out.write_all_at(&bytes, 0).map_err(|e| io("writing", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
        Ok(())
    }
}

fn header(block_size: u32, flags: u32) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&block_size.to_le_bytes());
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    h
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

impl Sidecar {
    fn io(&self, what: &str, e: std::io::Error) -> StorageError {
        StorageError::io(format!("{what} checksum file {}", self.path.display()), e)
    }

    /// Whether data and checksums were synced together with nothing written since.
    pub fn is_clean(&self) -> bool {
        self.clean.load(Ordering::Acquire)
    }

    /// Sets or clears the clean flag and fdatasyncs the sidecar (blocking).
    ///
    /// Errors: Io.
    pub fn set_clean(&self, clean: bool) -> Result<()> {
        let flags = if clean { CLEAN } else { 0 };
        self.file.write_all_at(&flags.to_le_bytes(), 12).map_err(|e| self.io("writing", e))?;
        self.file.sync_data().map_err(|e| self.io("syncing", e))?;
        self.clean.store(clean, Ordering::Release);
        Ok(())
    }

    /// The checksums of blocks `first .. first + count`; a block past the sidecar's end reads
    /// as `None` (a block never written).
    ///
    /// Errors: Io.
    pub fn read(&self, first: u64, count: usize) -> Result<Vec<Option<u32>>> {
        let mut raw = vec![0u8; count * 4];
        let n = read_full(&self.file, &mut raw, HEADER + first * 4).map_err(|e| self.io("reading", e))?;
        Ok(raw
            .chunks_exact(4)
            .enumerate()
            .map(|(i, c)| (i * 4 + 4 <= n).then(|| u32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect())
    }

    /// Stores the checksums of blocks `first ..` in order.
    ///
    /// Errors: Io.
    pub fn write(&self, first: u64, crcs: &[u32]) -> Result<()> {
        let bytes: Vec<u8> = crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
        self.file.write_all_at(&bytes, HEADER + first * 4).map_err(|e| self.io("writing", e))
    }

    /// Keeps the checksums of the first `blocks` blocks only (the chunk was cut).
    ///
    /// Errors: Io.
    pub fn truncate(&self, blocks: u64) -> Result<()> {
        self.file.set_len(HEADER + blocks * 4).map_err(|e| self.io("truncating", e))
    }
}

/// Checksums of the blocks `first ..= last` of a chunk that is `chunk_len` bytes long after a
/// write of `data` at `offset`: blocks the write covers whole come from `data`, the others
/// (partly written, or in a gap the write left) are read back from `chunk` (blocking).
///
/// Errors: Io naming the chunk.
#[allow(clippy::too_many_arguments)]
pub fn block_crcs(
    chunk: &File,
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
    (first..=last)
        .map(|b| {
            let (start, stop) = (b * bs, ((b + 1) * bs).min(chunk_len));
            if start >= offset && stop <= end {
                return Ok(crc32c::crc32c(&data[(start - offset) as usize..(stop - offset) as usize]));
            }
            buf.resize((stop - start) as usize, 0);
            let n = read_full(chunk, &mut buf, start).map_err(|e| {
                StorageError::io(format!("reading back block {b} of {}", crate::engine::ChunkFiles::describe(key)), e)
            })?;
            // A block the file does not reach yet reads as zeros (a hole).
            buf[n..].fill(0);
            Ok(crc32c::crc32c(&buf))
        })
        .collect()
}
