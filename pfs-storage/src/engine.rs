//! Chunk I/O engines: the small [`Engine`] trait (read, write, fdatasync, truncate, remove,
//! list) and its two implementations, [`uring::UringEngine`] (io_uring on a dedicated thread)
//! and [`pread::PreadEngine`] (pread/pwrite on tokio's blocking pool).
//!
//! Both share [`ChunkFiles`]: the data directory and a bounded cache of open chunk files, so a
//! stream of writes to one chunk does not reopen it for every request.
//!
//! # Direct I/O
//!
//! Each chunk may have two open files: a buffered one and an `O_DIRECT` one. An operation
//! whose buffer address, chunk offset and length are all multiples of [`DIRECT_ALIGN`] (4096
//! bytes, what `O_DIRECT` requires) goes through the `O_DIRECT` file; anything else (the
//! partial tail chunk of a file, small unaligned writes) through the buffered one. Direct I/O
//! matters on the reference VM: fresh memory, fresh page-cache pages included, is slow on
//! first touch (~0.4 GiB/s), so buffered writes followed by fdatasync reach about 0.6 GB/s
//! where `O_DIRECT` writes reach 2.3 GB/s (reads: 3.0 GB/s).
//!
//! Linux keeps the two coherent on one inode: a direct read first writes back dirty cached
//! pages of its range, and a direct write invalidates cached pages of its range. fdatasync
//! through either file flushes the inode's data (and the metadata needed to read it, such as
//! block allocations of direct appends), so syncing one of them is enough.
//!
//! When the file system refuses `O_DIRECT` (EINVAL at open, e.g. some tmpfs), [`ChunkFiles`]
//! remembers it and uses buffered I/O for the rest of its life.

pub mod pread;
pub mod uring;

use crate::error::{Result, StorageError};
use parking_lot::Mutex;
use pfs_common::config::EngineChoice;
use pfs_common::ids::{chunk_file_name, parse_chunk_file_name};
use pfs_common::pool::PooledBuf;
use pfs_common::{ChunkIndex, FileId};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tracing::{info, warn};

/// One chunk: chunk `.1` of file `.0`.
pub type ChunkKey = (FileId, ChunkIndex);

/// A boxed future of an engine operation (object-safe async).
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Where a write's buffer goes in the chunk: `(offset, len)` extents, their bytes back to back
/// in the buffer (one for an ordinary write; a vectored write's, at most
/// [`pfs_common::wire::storage::WRITE_EXTENTS_MAX`]).
pub type Extents = smallvec::SmallVec<[Extent; 1]>;
pub use pfs_common::wire::storage::Extent;

/// Most chunk files kept open at once by [`ChunkFiles`] (buffered and direct ones together).
pub const FD_CACHE_MAX: usize = 1024;

/// Alignment, in bytes, that `O_DIRECT` requires of the buffer address, the file offset and
/// the length (the logical block size of ordinary disks and the page size; pooled buffers are
/// aligned to it).
pub const DIRECT_ALIGN: usize = pfs_common::pool::ALIGN;

/// Whether an I/O of `len` bytes at `offset` from/to memory at `ptr` may use `O_DIRECT`: all
/// three are multiples of [`DIRECT_ALIGN`] and `len` is not 0.
pub fn direct_eligible(ptr: *const u8, offset: u64, len: usize) -> bool {
    let a = DIRECT_ALIGN;
    len > 0 && (ptr as usize).is_multiple_of(a) && offset.is_multiple_of(a as u64) && len.is_multiple_of(a)
}

/// An open chunk file and whether it was opened with `O_DIRECT`.
#[derive(Clone, Debug)]
pub struct ChunkFd {
    pub file: Arc<File>,
    /// Opened with `O_DIRECT`: every transfer must be [`DIRECT_ALIGN`]-aligned.
    pub direct: bool,
}

/// Chunk I/O on one data directory. Every error names the chunk file involved.
pub trait Engine: Send + Sync + 'static {
    /// "io_uring" or "pread", as reported in `Status`.
    fn name(&self) -> &'static str;

    /// Reads into `buf` (its length is the most to read) at `offset` bytes into the chunk.
    /// Returns the buffer cut to the bytes read (shorter at the end of the chunk file), or
    /// `None` when the chunk file does not exist (a hole).
    fn read(&self, key: ChunkKey, offset: u64, buf: PooledBuf) -> IoFuture<'_, Option<PooledBuf>>;

    /// Writes all of `buf` at `offset` bytes into the chunk, creating the chunk file if
    /// needed. Returns the buffer (for reuse). Errors: NoSpace on ENOSPC, Io otherwise.
    fn write(&self, key: ChunkKey, offset: u64, buf: PooledBuf) -> IoFuture<'_, PooledBuf> {
        let len = u32::try_from(buf.len()).expect("chunk writes are at most 64 MiB");
        self.write_extents(key, smallvec::smallvec![Extent { offset, len }], buf)
    }

    /// Writes `buf` into the chunk at `extents` (their lengths sum to `buf.len()`; at most
    /// [`pfs_common::wire::storage::WRITE_EXTENTS_MAX`]), creating the chunk file if needed,
    /// all extents at once. Returns the buffer (for reuse) once every extent is written.
    /// Errors: NoSpace on ENOSPC, Io otherwise (the first failing extent; the others may or
    /// may not be written).
    fn write_extents(&self, key: ChunkKey, extents: Extents, buf: PooledBuf) -> IoFuture<'_, PooledBuf>;

    /// fdatasync of the chunk file; a missing chunk file is not an error (nothing to sync).
    fn sync(&self, key: ChunkKey) -> IoFuture<'_, ()>;

    /// Sets the chunk file's length in bytes (a missing chunk file is left missing).
    fn truncate(&self, key: ChunkKey, len: u64) -> IoFuture<'_, ()> {
        let files = self.files().clone();
        Box::pin(async move { blocking(move || files.truncate(key, len)).await })
    }

    /// Removes the chunk file; a missing one is not an error.
    fn remove(&self, key: ChunkKey) -> IoFuture<'_, ()> {
        let files = self.files().clone();
        Box::pin(async move { blocking(move || files.remove(key)).await })
    }

    /// Every chunk file in the directory with its length in bytes; other files are ignored.
    fn list(&self) -> IoFuture<'_, Vec<(ChunkKey, u64)>> {
        let files = self.files().clone();
        Box::pin(async move { blocking(move || files.list()).await })
    }

    /// fsync of the data directory itself (makes creations and removals durable).
    fn sync_dir(&self) -> IoFuture<'_, ()> {
        let files = self.files().clone();
        Box::pin(async move { blocking(move || files.sync_dir()).await })
    }

    /// The directory and fd cache this engine works on.
    fn files(&self) -> &Arc<ChunkFiles>;
}

/// Errors (Io, InvalidInput) unless `extents`' lengths add up to `len`, the buffer's: an
/// engine must never write from outside its buffer, whatever its caller got wrong.
pub(crate) fn check_extents(key: ChunkKey, extents: &[Extent], len: usize) -> Result<()> {
    let total: u64 = extents.iter().map(|e| u64::from(e.len)).sum();
    if total != len as u64 {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("extents of {total} bytes for a buffer of {len}"),
        );
        return Err(StorageError::io(format!("writing {}", ChunkFiles::describe(key)), e));
    }
    Ok(())
}

/// Runs blocking file-system work on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StorageError::Stopped { what: format!("a blocking file task failed: {e}") }))
}

/// The data directory plus a bounded cache of open chunk files (buffered and `O_DIRECT`).
pub struct ChunkFiles {
    dir: PathBuf,
    cache: Mutex<FdCache>,
    /// Empty files made ahead of time, renamed into place at a chunk's first write.
    precreated: Option<Arc<crate::precreate::Precreated>>,
    /// The file system refused `O_DIRECT` once: buffered I/O only from then on.
    no_direct: AtomicBool,
    /// Reads and writes done through `O_DIRECT` files (for tests and measurements).
    direct_ops: AtomicU64,
    /// Reads and writes done through buffered files.
    buffered_ops: AtomicU64,
}

#[derive(Default)]
struct FdCache {
    /// Keyed by chunk and "opened with `O_DIRECT`".
    open: HashMap<(ChunkKey, bool), (Arc<File>, u64)>,
    /// Use clock: the entry with the smallest stamp is evicted first (LRU-ish).
    clock: u64,
    /// Bumped by every removal, so an open that raced with a removal is not cached.
    removals: u64,
}

impl ChunkFiles {
    /// Chunk files of `dir` (which must exist).
    pub fn new(dir: &Path) -> Arc<ChunkFiles> {
        Arc::new(ChunkFiles {
            dir: dir.to_path_buf(),
            cache: Mutex::new(FdCache::default()),
            precreated: crate::precreate::Precreated::start(dir),
            no_direct: AtomicBool::new(false),
            direct_ops: AtomicU64::new(0),
            buffered_ops: AtomicU64::new(0),
        })
    }

    /// Whether `O_DIRECT` is (still believed to be) supported on the directory.
    pub fn direct_supported(&self) -> bool {
        !self.no_direct.load(Ordering::Relaxed)
    }

    /// Reads and writes done so far through `O_DIRECT` files.
    pub fn direct_ops(&self) -> u64 {
        self.direct_ops.load(Ordering::Relaxed)
    }

    /// Reads and writes done so far through buffered files.
    pub fn buffered_ops(&self) -> u64 {
        self.buffered_ops.load(Ordering::Relaxed)
    }

    /// Behaves as if the file system had refused `O_DIRECT` (tests of the fallback).
    #[cfg(test)]
    pub(crate) fn forbid_direct(&self) {
        self.no_direct.store(true, Ordering::Relaxed);
    }

    /// Counts one read or write through `fd` (engines call this).
    pub(crate) fn count_op(&self, fd: &ChunkFd) {
        let c = if fd.direct { &self.direct_ops } else { &self.buffered_ops };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a chunk file; built from ids only.
    pub fn path(&self, key: ChunkKey) -> PathBuf {
        self.dir.join(chunk_file_name(key.0, key.1))
    }

    /// Names a chunk in errors: "chunk 3 of file 00000000000000a1".
    pub fn describe(key: ChunkKey) -> String {
        format!("chunk {} of file {}", key.1, key.0)
    }

    /// The open buffered chunk file, from the cache or opened now (blocking: call from a
    /// blocking context or accept a short open). `None` when it does not exist and `create` is
    /// false. Errors: Io naming the chunk.
    pub fn open(&self, key: ChunkKey, create: bool) -> Result<Option<Arc<File>>> {
        Ok(self.open_as(key, create, false)?.map(|fd| fd.file))
    }

    /// The open chunk file of the wanted kind (`direct`: with `O_DIRECT`), from the cache or
    /// opened now (blocking). A direct file is only returned while the file system supports
    /// `O_DIRECT`; otherwise (and after the first EINVAL at open, logged once) the buffered
    /// file is returned, so check [`ChunkFd::direct`]. `None` when the chunk file does not
    /// exist and `create` is false. Errors: Io naming the chunk.
    pub fn open_as(&self, key: ChunkKey, create: bool, direct: bool) -> Result<Option<ChunkFd>> {
        let direct = direct && self.direct_supported();
        if let Some(fd) = self.cached_as(key, direct) {
            return Ok(Some(fd));
        }
        let removals = self.cache.lock().removals;
        let mut create = create;
        if create {
            if let Some(pool) = &self.precreated {
                // A first write: take a precreated file (a rename) rather than allocating an
                // inode now. If the chunk exists already, the rename refuses and we open it.
                if pool.adopt(&self.path(key)) {
                    create = false;
                }
            }
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(create);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = match opts.open(self.path(key)) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if direct && e.kind() == std::io::ErrorKind::InvalidInput => {
                if !self.no_direct.swap(true, Ordering::Relaxed) {
                    info!("{}: the file system does not support O_DIRECT; using buffered I/O", self.dir.display());
                }
                return self.open_as(key, create, false);
            }
            Err(e) => return Err(StorageError::io(format!("opening {}", Self::describe(key)), e)),
        };
        let mut c = self.cache.lock();
        if c.removals == removals {
            if c.open.len() >= FD_CACHE_MAX {
                if let Some(oldest) = c.open.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| *k) {
                    c.open.remove(&oldest);
                }
            }
            let stamp = c.clock;
            let entry = c.open.entry((key, direct)).or_insert((file, stamp));
            return Ok(Some(ChunkFd { file: entry.0.clone(), direct }));
        }
        Ok(Some(ChunkFd { file, direct }))
    }

    /// The buffered chunk file if it is in the cache (never blocks on the file system).
    pub fn cached_file(&self, key: ChunkKey) -> Option<Arc<File>> {
        self.cached_as(key, false).map(|fd| fd.file)
    }

    /// The chunk file of the wanted kind if it is in the cache (never blocks on the file
    /// system). Asking for a direct file once `O_DIRECT` is known unsupported looks up the
    /// buffered one.
    ///
    /// A cached file whose name went behind our back (a chunk file deleted by hand) would go
    /// on answering reads from the unlinked inode, and take writes into it, until it left the
    /// cache, hiding the loss: one fstat per hit tells, and such a file is dropped from the
    /// cache (`None`). Our own removals drop the cache entries first.
    pub fn cached_as(&self, key: ChunkKey, direct: bool) -> Option<ChunkFd> {
        use std::os::unix::fs::MetadataExt;
        let direct = direct && self.direct_supported();
        let fd = {
            let mut c = self.cache.lock();
            c.clock += 1;
            let now = c.clock;
            c.open.get_mut(&(key, direct)).map(|(f, stamp)| {
                *stamp = now;
                ChunkFd { file: f.clone(), direct }
            })?
        };
        if fd.file.metadata().is_ok_and(|m| m.nlink() == 0) {
            let mut c = self.cache.lock();
            c.open.remove(&(key, false));
            c.open.remove(&(key, true));
            return None;
        }
        Some(fd)
    }

    /// A file to fdatasync the chunk through: either cached kind (both are the same inode,
    /// so fdatasync on one flushes the data written through both), else the buffered file
    /// opened now. `None` when the chunk file does not exist. Blocking on a cache miss.
    pub fn open_for_sync(&self, key: ChunkKey) -> Result<Option<Arc<File>>> {
        if let Some(fd) = self.cached_any(key) {
            return Ok(Some(fd));
        }
        self.open(key, false)
    }

    /// Either cached file of the chunk (direct preferred), without blocking.
    pub fn cached_any(&self, key: ChunkKey) -> Option<Arc<File>> {
        self.cached_as(key, true).or_else(|| self.cached_as(key, false)).map(|fd| fd.file)
    }

    /// Open chunk files in the cache (for tests and status).
    pub fn cached(&self) -> usize {
        self.cache.lock().open.len()
    }

    fn truncate(&self, key: ChunkKey, len: u64) -> Result<()> {
        // set_len acts on the inode, so the cached files of both kinds stay valid.
        match self.open(key, false)? {
            Some(f) => f.set_len(len).map_err(|e| StorageError::io(format!("truncating {}", Self::describe(key)), e)),
            None => Ok(()),
        }
    }

    fn remove(&self, key: ChunkKey) -> Result<()> {
        {
            let mut c = self.cache.lock();
            c.removals += 1;
            // Both kinds: a later create must not write into the unlinked inode.
            c.open.remove(&(key, false));
            c.open.remove(&(key, true));
        }
        let path = self.path(key);
        // Into the pool of empty files rather than unlinked (see `precreate`): chunks are
        // removed under their lock, so nothing writes to the file any more.
        if self.precreated.as_ref().is_some_and(|pool| pool.recycle(&path)) {
            return Ok(());
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(format!("removing {}", Self::describe(key)), e)),
        }
    }

    fn list(&self) -> Result<Vec<(ChunkKey, u64)>> {
        let what = || format!("listing {}", self.dir.display());
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| StorageError::io(what(), e))? {
            let entry = entry.map_err(|e| StorageError::io(what(), e))?;
            let Some(key) = entry.file_name().to_str().and_then(parse_chunk_file_name) else { continue };
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Removed between readdir and stat.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io(what(), e)),
            };
            if meta.is_file() {
                out.push((key, meta.len()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn sync_dir(&self) -> Result<()> {
        let what = || format!("syncing directory {}", self.dir.display());
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::io(what(), e))?;
        // Chunks renamed out of the pool must not reappear there after a crash.
        if let Some(pool) = &self.precreated {
            pool.sync().map_err(|e| StorageError::io(format!("syncing {}", crate::precreate::POOL_DIR), e))?;
        }
        Ok(())
    }
}

/// Opens the engine `choice` on `dir`, logging which one runs.
///
/// Errors: with `IoUring`, Io when the kernel refuses io_uring (the message says why).
pub fn open(choice: EngineChoice, dir: &Path) -> Result<Arc<dyn Engine>> {
    let files = ChunkFiles::new(dir);
    let engine: Arc<dyn Engine> = match choice {
        EngineChoice::Pread => Arc::new(pread::PreadEngine::new(files)),
        EngineChoice::IoUring => Arc::new(
            uring::UringEngine::new(files)
                .map_err(|e| StorageError::io("io_uring engine requested but unavailable", e))?,
        ),
        EngineChoice::Auto => match uring::UringEngine::new(files.clone()) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                warn!("io_uring is unavailable ({e}); falling back to pread/pwrite");
                Arc::new(pread::PreadEngine::new(files))
            }
        },
    };
    info!("chunk I/O engine: {} on {}", engine.name(), dir.display());
    Ok(engine)
}

#[cfg(test)]
mod tests;
