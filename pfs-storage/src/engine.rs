//! Chunk I/O engines: the small [`Engine`] trait (read, write, fdatasync, truncate, remove,
//! list) and its two implementations, [`uring::UringEngine`] (io_uring on a dedicated thread)
//! and [`pread::PreadEngine`] (pread/pwrite on tokio's blocking pool).
//!
//! Both share [`ChunkFiles`]: the data directory and a bounded cache of open chunk files, so a
//! stream of writes to one chunk does not reopen it for every request.

pub mod pread;
pub mod uring;

use parking_lot::Mutex;
use pfs_common::config::EngineChoice;
use pfs_common::ids::{chunk_file_name, parse_chunk_file_name};
use pfs_common::pool::PooledBuf;
use pfs_common::{ChunkIndex, ErrorCode, FileId, PfsError, Result};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tracing::{info, warn};

/// One chunk: chunk `.1` of file `.0`.
pub type ChunkKey = (FileId, ChunkIndex);

/// A boxed future of an engine operation (object-safe async).
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Most chunk files kept open at once by [`ChunkFiles`].
pub const FD_CACHE_MAX: usize = 1024;

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
    fn write(&self, key: ChunkKey, offset: u64, buf: PooledBuf) -> IoFuture<'_, PooledBuf>;

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

/// Runs blocking file-system work on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(PfsError::new(ErrorCode::Io, format!("blocking file task failed: {e}"))))
}

/// The data directory plus a bounded cache of open chunk files.
pub struct ChunkFiles {
    dir: PathBuf,
    cache: Mutex<FdCache>,
}

#[derive(Default)]
struct FdCache {
    open: HashMap<ChunkKey, (Arc<File>, u64)>,
    /// Use clock: the entry with the smallest stamp is evicted first (LRU-ish).
    clock: u64,
    /// Bumped by every removal, so an open that raced with a removal is not cached.
    removals: u64,
}

impl ChunkFiles {
    /// Chunk files of `dir` (which must exist).
    pub fn new(dir: &Path) -> Arc<ChunkFiles> {
        Arc::new(ChunkFiles { dir: dir.to_path_buf(), cache: Mutex::new(FdCache::default()) })
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

    /// The open chunk file, from the cache or opened now (blocking: call from a blocking
    /// context or accept a short open). `None` when it does not exist and `create` is false.
    pub fn open(&self, key: ChunkKey, create: bool) -> Result<Option<Arc<File>>> {
        let removals = {
            let mut c = self.cache.lock();
            c.clock += 1;
            let now = c.clock;
            if let Some((f, stamp)) = c.open.get_mut(&key) {
                *stamp = now;
                return Ok(Some(f.clone()));
            }
            c.removals
        };
        let file = match OpenOptions::new().read(true).write(true).create(create).open(self.path(key)) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) => return Err(PfsError::io(format!("opening {}", Self::describe(key)), e)),
        };
        let mut c = self.cache.lock();
        if c.removals == removals {
            if c.open.len() >= FD_CACHE_MAX {
                if let Some(oldest) = c.open.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| *k) {
                    c.open.remove(&oldest);
                }
            }
            let stamp = c.clock;
            let entry = c.open.entry(key).or_insert((file, stamp));
            return Ok(Some(entry.0.clone()));
        }
        Ok(Some(file))
    }

    /// The chunk file if it is in the cache (never blocks on the file system).
    pub fn cached_file(&self, key: ChunkKey) -> Option<Arc<File>> {
        let mut c = self.cache.lock();
        c.clock += 1;
        let now = c.clock;
        c.open.get_mut(&key).map(|(f, stamp)| {
            *stamp = now;
            f.clone()
        })
    }

    /// Open chunk files in the cache (for tests and status).
    pub fn cached(&self) -> usize {
        self.cache.lock().open.len()
    }

    fn truncate(&self, key: ChunkKey, len: u64) -> Result<()> {
        match self.open(key, false)? {
            Some(f) => f.set_len(len).map_err(|e| PfsError::io(format!("truncating {}", Self::describe(key)), e)),
            None => Ok(()),
        }
    }

    fn remove(&self, key: ChunkKey) -> Result<()> {
        {
            let mut c = self.cache.lock();
            c.removals += 1;
            c.open.remove(&key);
        }
        match std::fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PfsError::io(format!("removing {}", Self::describe(key)), e)),
        }
    }

    fn list(&self) -> Result<Vec<(ChunkKey, u64)>> {
        let what = || format!("listing {}", self.dir.display());
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| PfsError::io(what(), e))? {
            let entry = entry.map_err(|e| PfsError::io(what(), e))?;
            let Some(key) = entry.file_name().to_str().and_then(parse_chunk_file_name) else { continue };
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Removed between readdir and stat.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(PfsError::io(what(), e)),
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
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| PfsError::io(what(), e))
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
            uring::UringEngine::new(files).map_err(|e| PfsError::io("io_uring engine requested but unavailable", e))?,
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
