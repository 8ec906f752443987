//! The chunk store: chunk files in one data directory, an in-memory index of them, and the
//! operations of [`StorageRequest`](pfs_common::wire::storage::StorageRequest).
//!
//! Chunk `x` of file `F` is the file `chunk_file_name(F, x)`; paths are built from ids only.
//! The index (file -> chunks with their lengths, hashes and dirty state) is rebuilt at start
//! by listing the directory. All of it sits behind one mutex so that the index, the hash
//! state and the queue of reports to pfs-meta always agree.

use crate::engine::{ChunkFiles, ChunkKey, Engine};
use crate::error::{Result, StorageError};
use crate::meta_link::Reporter;
use parking_lot::Mutex;
use pfs_common::ids::Sha256Digest;
use pfs_common::layout::MAX_CHUNK_SIZE;
use pfs_common::pool::{self, PooledBuf};
use pfs_common::wire::registry::ChunkState;
use pfs_common::wire::storage::StorageStatus;
use pfs_common::{ChunkIndex, FileId, ServerId};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// Most chunk fdatasyncs one `Fsync` has in flight at once.
pub const SYNCS_AT_ONCE: usize = 16;

/// Tunables of a [`ChunkStore`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// A changed chunk is hashed in the background once it has not been written for this
    /// long, so a burst of writes to one chunk costs one hash. `Fsync` hashes at once.
    pub hash_quiet: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { hash_quiet: Duration::from_millis(200) }
    }
}

/// What the store knows of one chunk.
#[derive(Clone, Debug)]
pub(crate) struct ChunkEntry {
    /// Chunk file length, bytes.
    pub len: u64,
    /// SHA-256 of the current contents; `None` while unknown or stale.
    pub sha256: Option<Sha256Digest>,
    /// Bumped by every change, so a hash computed across a change is discarded.
    pub version: u64,
}

/// The incremental SHA-256 of one chunk, fed by sequential appends from offset 0 as they
/// are written, so a client streaming a file does not make the store re-read its chunks.
pub(crate) enum Running {
    /// Covers bytes `0..hashed_len` of the chunk file, which is the whole file: every write
    /// so far was an append at `hashed_len` and has been fed in.
    Ready { hasher: Box<Sha256>, hashed_len: u64 },
    /// Taken out by an append that is being written and fed (outside the store's mutex).
    /// Another change meanwhile turns it into `Invalid`, and the append does not put it back.
    Busy,
    /// Some change was not a sequential append (overwrite, gap, concurrent writes, truncate,
    /// a failed write, or the chunk predates this process): hash by re-reading the file.
    Invalid,
}

/// The state behind the store's mutex.
#[derive(Default)]
pub(crate) struct State {
    pub index: HashMap<FileId, BTreeMap<ChunkIndex, ChunkEntry>>,
    /// Chunks changed since they were last hashed, with the time of the last change.
    pub dirty: BTreeMap<ChunkKey, Instant>,
    /// Chunks written since their last fdatasync.
    pub unsynced: HashSet<ChunkKey>,
    /// Chunk states not yet acknowledged by pfs-meta (latest state per chunk wins).
    pub outbox: BTreeMap<ChunkKey, ChunkState>,
    /// Running hashes. No entry: `Invalid` for a chunk in `index`; for a chunk not in it,
    /// nothing has been written yet (a write at offset 0 starts a fresh hash).
    pub running: HashMap<ChunkKey, Running>,
}

impl State {
    /// Called under the mutex as a write of `len` bytes at `offset` starts: takes the running
    /// hash out (leaving `Busy`) when the write is the next sequential append, otherwise marks
    /// the running hash invalid. Returns the hash to feed the written bytes into.
    fn start_write(&mut self, key: ChunkKey, existed: bool, offset: u64) -> Option<Box<Sha256>> {
        let slot = match self.running.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            // Nothing written yet (not in the index, no write in progress): a first write at
            // offset 0 starts a fresh hash.
            std::collections::hash_map::Entry::Vacant(v) if !existed && offset == 0 => {
                v.insert(Running::Busy);
                return Some(Box::new(Sha256::new()));
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Running::Invalid),
        };
        match slot {
            Running::Ready { hashed_len, .. } if *hashed_len == offset => {
                match std::mem::replace(slot, Running::Busy) {
                    Running::Ready { hasher, .. } => Some(hasher),
                    _ => unreachable!("matched Ready above"),
                }
            }
            // Out of order, a gap, an overwrite, or another write still in progress.
            other => {
                *other = Running::Invalid;
                None
            }
        }
    }
}

/// One storage target's chunk store. Shared (`Arc`) by the request handler, the hasher and
/// the pfs-meta session.
pub struct ChunkStore {
    pub(crate) id: ServerId,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) state: Mutex<State>,
    pub(crate) opts: StoreOptions,
    /// Chunk files were created or removed since the directory was last fsynced.
    dir_dirty: AtomicBool,
    /// Wakes the background hasher (a chunk changed, or reports are waiting).
    pub(crate) hasher_wake: Notify,
    /// Serialises hashing, so `Fsync` waits for a hash the background task has in progress.
    pub(crate) hash_lock: tokio::sync::Mutex<()>,
    /// Chunk hashes computed since start (for tests and logs), however computed.
    pub(crate) hashes_done: AtomicU64,
    /// Of those, the ones that had to re-read the chunk file (no running hash covered it).
    pub(crate) hash_rereads: AtomicU64,
    /// The pfs-meta session's report channel.
    pub(crate) reporter: Reporter,
    /// Sessions whose writes are refused.
    pub fence: crate::fence::Fence,
}

impl ChunkStore {
    /// Opens the store on the engine's directory and rebuilds the index by listing it. Every
    /// chunk found is queued for hashing.
    ///
    /// Errors: Io when the directory cannot be listed.
    pub async fn open(id: ServerId, engine: Arc<dyn Engine>, opts: StoreOptions) -> Result<Arc<ChunkStore>> {
        let listed = engine.list().await?;
        let mut state = State::default();
        let now = Instant::now();
        for (key, len) in &listed {
            state.index.entry(key.0).or_default().insert(key.1, ChunkEntry { len: *len, sha256: None, version: 0 });
            state.dirty.insert(*key, now);
        }
        info!(
            "{id}: {} chunk files of {} files in {}",
            listed.len(),
            state.index.len(),
            engine.files().dir().display()
        );
        Ok(Arc::new(ChunkStore {
            id,
            engine,
            state: Mutex::new(state),
            opts,
            dir_dirty: AtomicBool::new(false),
            hasher_wake: Notify::new(),
            hash_lock: tokio::sync::Mutex::new(()),
            hashes_done: AtomicU64::new(0),
            hash_rereads: AtomicU64::new(0),
            reporter: Reporter::new(id),
            fence: crate::fence::Fence::new(id),
        }))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.engine.files().dir()
    }

    /// The path of a chunk file.
    pub fn chunk_path(&self, file: FileId, chunk: ChunkIndex) -> PathBuf {
        self.engine.files().path((file, chunk))
    }

    /// The engine's name ("io_uring" or "pread").
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Chunk hashes computed since start.
    pub fn hashes_done(&self) -> u64 {
        self.hashes_done.load(Ordering::Relaxed)
    }

    /// Chunk hashes since start that re-read the chunk file (the others came from the running
    /// hash fed by sequential writes).
    pub fn hash_rereads(&self) -> u64 {
        self.hash_rereads.load(Ordering::Relaxed)
    }

    /// The current SHA-256 of a chunk, if it is hashed and unchanged since.
    pub fn chunk_hash(&self, file: FileId, chunk: ChunkIndex) -> Option<Sha256Digest> {
        let st = self.state.lock();
        if st.dirty.contains_key(&(file, chunk)) {
            return None;
        }
        st.index.get(&file)?.get(&chunk)?.sha256
    }

    /// Chunks of `file` with their lengths in bytes, in chunk order.
    pub fn chunks_of(&self, file: FileId) -> Vec<(ChunkIndex, u64)> {
        let st = self.state.lock();
        st.index.get(&file).map(|m| m.iter().map(|(c, e)| (*c, e.len)).collect()).unwrap_or_default()
    }

    /// Writes `data` at `offset` bytes into a chunk, creating it if needed. Not durable until
    /// [`ChunkStore::fsync`]. Returns the bytes written.
    ///
    /// Errors: Invalid when `chunk_size` exceeds 64 MiB or is 0, or `offset + len` exceeds
    /// `chunk_size`; NoSpace when the target is full; Io.
    pub async fn write(
        &self,
        file: FileId,
        chunk: ChunkIndex,
        offset: u64,
        chunk_size: u64,
        data: PooledBuf,
    ) -> Result<u32> {
        let key = (file, chunk);
        let len = data.len() as u64;
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(StorageError::Invalid {
                server: self.id,
                what: format!("chunk size {chunk_size} bytes of file {file} is not within 1..={MAX_CHUNK_SIZE}"),
            });
        }
        if offset.checked_add(len).is_none_or(|end| end > chunk_size) {
            return Err(StorageError::Invalid {
                server: self.id,
                what: format!(
                    "write of {len} bytes at offset {offset} of {} exceeds the chunk size of {chunk_size} bytes",
                    ChunkFiles::describe(key)
                ),
            });
        }
        let (existed, running) = {
            let mut st = self.state.lock();
            let existed = st.index.get(&file).is_some_and(|m| m.contains_key(&chunk));
            (existed, st.start_write(key, existed, offset))
        };
        let data = match self.engine.write(key, offset, data).await {
            Ok(data) => data,
            Err(e) => {
                if running.is_some() {
                    // Part of it may be on disk: only a re-read knows the contents now.
                    self.state.lock().running.insert(key, Running::Invalid);
                }
                return Err(e.on(self.id));
            }
        };
        // Feed the append into the running hash while its bytes are still in cache (SHA-NI:
        // about 0.5 ms per MiB, inline on this task), instead of re-reading the chunk later.
        let fed = running.map(|mut h| {
            h.update(&data[..]);
            h
        });
        drop(data);
        if !existed {
            self.dir_dirty.store(true, Ordering::Release);
        }
        {
            let mut st = self.state.lock();
            if let Some(hasher) = fed {
                // Still ours (no other change began meanwhile)? Then it covers the whole file.
                if let Some(slot @ Running::Busy) = st.running.get_mut(&key) {
                    *slot = Running::Ready { hasher, hashed_len: offset + len };
                }
            }
            let entry = st.index.entry(file).or_default().entry(chunk).or_insert(ChunkEntry {
                len: 0,
                sha256: None,
                version: 0,
            });
            entry.len = entry.len.max(offset + len);
            entry.version += 1;
            entry.sha256 = None;
            st.dirty.insert(key, Instant::now());
            st.unsynced.insert(key);
        }
        self.hasher_wake.notify_one();
        Ok(len as u32)
    }

    /// Reads up to `len` bytes at `offset` inside a chunk. Returns the data (shorter when the
    /// chunk file ends earlier, empty for a missing chunk) and the chunk file's length.
    ///
    /// Errors: Invalid when `len` or `offset + len` exceed 64 MiB; Io.
    pub async fn read(&self, file: FileId, chunk: ChunkIndex, offset: u64, len: u32) -> Result<(PooledBuf, u64)> {
        let key = (file, chunk);
        if offset.saturating_add(len as u64) > MAX_CHUNK_SIZE {
            return Err(StorageError::Invalid {
                server: self.id,
                what: format!(
                    "read of {len} bytes at offset {offset} of {} is beyond the largest chunk size",
                    ChunkFiles::describe(key)
                ),
            });
        }
        let data = self.engine.read(key, offset, pool::global().get(len as usize)).await.map_err(|e| e.on(self.id))?;
        let chunk_len = self.state.lock().index.get(&file).and_then(|m| m.get(&chunk)).map_or(0, |e| e.len);
        match data {
            Some(d) => Ok((d, chunk_len)),
            None => Ok((PooledBuf::empty(), 0)),
        }
    }

    /// Cuts `file` to `size` bytes: removes chunks wholly past it and truncates the chunk it
    /// falls in; durable (fdatasync and directory fsync) when it returns.
    ///
    /// Errors: Invalid for a chunk size outside 1..=64 MiB; Io.
    pub async fn truncate(&self, file: FileId, size: u64, chunk_size: u64) -> Result<()> {
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(StorageError::Invalid {
                server: self.id,
                what: format!(
                    "truncate of file {file}: chunk size {chunk_size} bytes is not within 1..={MAX_CHUNK_SIZE}"
                ),
            });
        }
        let chunks = self.chunks_of(file);
        let mut removed = Vec::new();
        for (chunk, len) in chunks {
            let start = chunk.saturating_mul(chunk_size);
            let key = (file, chunk);
            if start >= size {
                self.engine.remove(key).await.map_err(|e| e.on(self.id))?;
                removed.push(chunk);
            } else if size - start < len {
                let new_len = size - start;
                self.engine.truncate(key, new_len).await.map_err(|e| e.on(self.id))?;
                self.engine.sync(key).await.map_err(|e| e.on(self.id))?;
                let mut st = self.state.lock();
                st.running.insert(key, Running::Invalid);
                if let Some(entry) = st.index.get_mut(&file).and_then(|m| m.get_mut(&chunk)) {
                    entry.len = new_len;
                    entry.version += 1;
                    entry.sha256 = None;
                }
                st.dirty.insert(key, Instant::now());
            }
        }
        if !removed.is_empty() {
            self.forget(file, &removed);
            self.sync_dir().await?;
        }
        self.hasher_wake.notify_one();
        Ok(())
    }

    /// Removes every chunk of `file`; durable when it returns.
    ///
    /// Errors: Io.
    pub async fn remove(&self, file: FileId) -> Result<()> {
        let chunks: Vec<ChunkIndex> = self.chunks_of(file).into_iter().map(|(c, _)| c).collect();
        if chunks.is_empty() {
            return Ok(());
        }
        for &chunk in &chunks {
            let key = (file, chunk);
            if let Err(e) = self.engine.remove(key).await {
                // Keep the index true to the disk: forget what is gone, then fail.
                let done: Vec<_> = chunks.iter().copied().take_while(|c| *c != chunk).collect();
                self.forget(file, &done);
                return Err(e.on(self.id));
            }
        }
        self.forget(file, &chunks);
        self.sync_dir().await?;
        self.hasher_wake.notify_one();
        Ok(())
    }

    /// Drops removed chunks from the index and queues their removal reports.
    fn forget(&self, file: FileId, chunks: &[ChunkIndex]) {
        let mut st = self.state.lock();
        for &chunk in chunks {
            let key = (file, chunk);
            if let Some(m) = st.index.get_mut(&file) {
                m.remove(&chunk);
                if m.is_empty() {
                    st.index.remove(&file);
                }
            }
            st.dirty.remove(&key);
            st.unsynced.remove(&key);
            st.running.remove(&key);
            st.outbox.insert(key, ChunkState { file, chunk, len: 0, sha256: None, removed: true });
        }
        self.dir_dirty.store(true, Ordering::Release);
    }

    async fn sync_dir(&self) -> Result<()> {
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.engine.sync_dir().await {
                self.dir_dirty.store(true, Ordering::Release);
                return Err(e.on(self.id));
            }
        }
        Ok(())
    }

    /// Makes every write to `file` durable (fdatasync of its changed chunks, fsync of the
    /// directory if chunk files were created), then hashes its changed chunks and reports
    /// them to pfs-meta, waiting for the acknowledgement, before returning.
    ///
    /// When pfs-meta is unreachable the data is still made durable and `Ok` is returned; the
    /// hashes then reach pfs-meta with the full report sent on reconnection.
    ///
    /// Errors: Io (or NoSpace) from fdatasync.
    pub async fn fsync(self: &Arc<Self>, file: FileId) -> Result<()> {
        let keys: Vec<ChunkKey> = {
            let mut st = self.state.lock();
            let keys: Vec<_> = st.unsynced.iter().filter(|k| k.0 == file).copied().collect();
            for k in &keys {
                st.unsynced.remove(k);
            }
            keys
        };
        // Several fdatasyncs at once, so the file system can commit their metadata (block
        // allocations of O_DIRECT appends) in shared journal transactions rather than one
        // commit per chunk in turn.
        let mut syncing = tokio::task::JoinSet::new();
        let mut failed: Option<StorageError> = None;
        let mut next = keys.iter().copied();
        loop {
            while syncing.len() < SYNCS_AT_ONCE {
                let Some(key) = next.next() else { break };
                let engine = self.engine.clone();
                // The engine's error names the chunk.
                syncing.spawn(async move { engine.sync(key).await });
            }
            let Some(done) = syncing.join_next().await else { break };
            let err = match done {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.on(self.id),
                Err(e) => StorageError::Stopped { what: format!("{}: a sync task failed: {e}", self.id) },
            };
            failed.get_or_insert(err);
        }
        if let Some(e) = failed {
            // Not all synced: keep them all marked so a retry syncs them again.
            self.state.lock().unsynced.extend(keys.iter().copied());
            return Err(e);
        }
        self.sync_dir().await?;
        crate::hasher::hash_file_now(self, file).await;
        if !self.reporter.connected() {
            // Not an error for the client: the data is durable, and the full report sent on
            // reconnection carries the hashes.
            debug!("{}: pfs-meta unreachable; chunk hashes of file {file} reported later", self.id);
        } else if let Err(e) = self.reporter.flush(self).await {
            warn!("{}: chunk hashes of file {file} not reported yet: {e}", self.id);
        }
        Ok(())
    }

    /// Capacity and usage of the data directory's file system, and the chunk count.
    ///
    /// Errors: Io when statvfs fails.
    pub fn status(&self) -> Result<StorageStatus> {
        let (capacity_bytes, free_bytes) = disk_space(self.dir()).map_err(|e| e.on(self.id))?;
        let chunks = self.state.lock().index.values().map(|m| m.len() as u64).sum();
        Ok(StorageStatus { id: self.id, capacity_bytes, free_bytes, chunks, engine: self.engine.name().to_string() })
    }

    /// Every chunk with its length and (if current) hash, for a full report; empties the
    /// outbox in the same critical section, since the full listing supersedes it (a hash
    /// finished just after is queued afresh, never lost).
    pub(crate) fn snapshot_for_full_report(&self) -> Vec<ChunkState> {
        let mut st = self.state.lock();
        st.outbox.clear();
        let st = &*st;
        let mut out: Vec<ChunkState> = st
            .index
            .iter()
            .flat_map(|(file, m)| {
                m.iter().map(|(chunk, e)| ChunkState {
                    file: *file,
                    chunk: *chunk,
                    len: e.len,
                    sha256: if st.dirty.contains_key(&(*file, *chunk)) { None } else { e.sha256 },
                    removed: false,
                })
            })
            .collect();
        out.sort_by_key(|c| (c.file, c.chunk));
        out
    }
}

/// (capacity, free) bytes of the file system holding `dir`, from statvfs.
pub fn disk_space(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| StorageError::io(dir.display(), std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(StorageError::io(format!("statvfs {}", dir.display()), std::io::Error::last_os_error()));
    }
    let frsize = s.f_frsize as u64;
    Ok((s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize))
}

#[cfg(test)]
mod tests;
