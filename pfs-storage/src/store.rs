//! The chunk store: chunk files in one data directory, an in-memory index of them, and the
//! operations of [`StorageRequest`](pfs_common::wire::storage::StorageRequest).
//!
//! Chunk `x` of file `F` is the file `chunk_file_name(F, x)`; paths are built from ids only.
//! The index (file -> chunks with their lengths, hashes and dirty state) is rebuilt at start
//! by listing the directory. All of it sits behind one mutex so that the index, the hash
//! state and the queues of reports to pfs-meta always agree.
//!
//! The store is the one owner of chunk state: the index, the running hashes, the lost chunks,
//! the report queues ([`crate::reports`]) and the chunk locks ([`crate::locks`]) are private
//! to it, and the background workers (hasher, pfs-meta session, resync, scrub) use its
//! methods. Hashing is in `store::hashing`, reporting to pfs-meta in `store::reporting`.

use crate::checksums::{self, Checksums, ChunkChecksums};
use crate::engine::{blocking, ChunkFiles, ChunkKey, Engine, Extent, Extents};
use crate::error::{Result, StorageError};
use crate::fence::Fence;
use crate::locks::{ChunkGuard, ChunkLocks, LockMode, Watch};
use crate::reports::{MetaConn, ReportQueue};
use parking_lot::Mutex;
use pfs_common::ids::Sha256Digest;
use pfs_common::layout::{Layout, MAX_CHUNK_SIZE, MAX_FILE_SIZE};
use pfs_common::pool::{self, PooledBuf};
use pfs_common::wire::registry::{ChunkState, LostChunk};
use pfs_common::wire::storage::{ListedState, StorageStatus};
use pfs_common::ErrorCode;
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
struct ChunkEntry {
    /// Chunk file length, bytes.
    len: u64,
    /// SHA-256 of the current contents; `None` while unknown or stale.
    sha256: Option<Sha256Digest>,
    /// Bumped by every change, so a hash computed across a change is discarded.
    version: u64,
    /// The `version` last made durable by an fdatasync (a state is committed to pfs-meta's
    /// chunk map only when it is durable).
    synced_version: u64,
    /// How many times a state of the chunk was committed here (kept with its checksums; see
    /// `checksums`): pfs-meta tells a stale copy by it.
    commit_version: u64,
}

/// The incremental SHA-256 of one chunk, fed by sequential appends from offset 0 as they
/// are written, so a client streaming a file does not make the store re-read its chunks.
enum Running {
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
struct State {
    index: HashMap<FileId, BTreeMap<ChunkIndex, ChunkEntry>>,
    /// Chunks changed since they were last hashed, with the time of the last change.
    dirty: BTreeMap<ChunkKey, Instant>,
    /// Chunks written since their last fdatasync.
    unsynced: HashSet<ChunkKey>,
    /// Chunk states not yet acknowledged by pfs-meta, per file (latest state per chunk wins).
    reports: ReportQueue,
    /// Running hashes. No entry: `Invalid` for a chunk in `index`; for a chunk not in it,
    /// nothing has been written yet (a write at offset 0 starts a fresh hash).
    running: HashMap<ChunkKey, Running>,
    /// Committed chunks pfs-meta says this server lost (from the answer to its last full
    /// listing): their reads and writes fail, naming the loss.
    lost: HashMap<ChunkKey, LostChunk>,
    /// The lost chunks are known: pfs-meta answered a full listing since this process
    /// started. Until then a missing chunk cannot be told from a hole, so reads are refused.
    reconciled: bool,
}

impl State {
    /// The error for a chunk pfs-meta named as lost here, if it is one.
    fn lost_error(&self, id: ServerId, key: ChunkKey) -> Option<StorageError> {
        let l = self.lost.get(&key)?;
        Some(StorageError::Lost { server: id, file: key.0, chunk: key.1, len: l.len, found: l.found.clone() })
    }

    /// The state of chunk `key` to report to pfs-meta, if it is hashed and not lost.
    fn report_state(&self, key: ChunkKey) -> Option<ChunkState> {
        let e = self.index.get(&key.0)?.get(&key.1)?;
        let state = self.chunk_state(key, e);
        (state.sha256.is_some() && !self.lost.contains_key(&key)).then_some(state)
    }

    /// Queues chunk `key`'s state for pfs-meta if it is hashed and not lost. Not before the
    /// server reconciled with pfs-meta's chunk map: the state of a chunk pfs-meta is about to
    /// name as lost must not be committed over the lost one (reconciling queues every hashed
    /// chunk).
    fn queue_report(&mut self, key: ChunkKey) {
        if self.reconciled {
            if let Some(state) = self.report_state(key) {
                self.reports.queue(state);
            }
        }
    }

    /// Chunk `key`'s state as listed to pfs-meta: its hash only while no change awaits hashing.
    fn chunk_state(&self, key: ChunkKey, e: &ChunkEntry) -> ChunkState {
        ChunkState {
            file: key.0,
            chunk: key.1,
            len: e.len,
            sha256: e.sha256.filter(|_| !self.dirty.contains_key(&key)),
            removed: false,
            durable: e.synced_version == e.version,
            version: e.commit_version,
        }
    }
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

/// One storage target's chunk store. Shared (`Arc`) by the request handler and the
/// background workers (hasher, pfs-meta session, resync, scrub).
pub struct ChunkStore {
    id: ServerId,
    engine: Arc<dyn Engine>,
    state: Mutex<State>,
    opts: StoreOptions,
    /// Chunk files were created or removed since the directory was last fsynced.
    dir_dirty: AtomicBool,
    /// Wakes the background hasher (a chunk changed, or reports are waiting).
    changed: Notify,
    /// Serialises hashing, so `Fsync` waits for a hash the background task has in progress.
    hash_lock: tokio::sync::Mutex<()>,
    /// Chunk hashes computed since start (for tests and logs), however computed.
    hashes_done: AtomicU64,
    /// Of those, the ones that had to re-read the chunk file (no running hash covered it).
    hash_rereads: AtomicU64,
    /// The registered session's connection to pfs-meta, while there is one.
    meta: MetaConn,
    /// Held shared by every batch of chunk reports in flight, exclusively by a full listing
    /// (which supersedes them).
    sending: tokio::sync::RwLock<()>,
    /// Notified whenever a batch of chunk reports was answered or failed.
    reports_settled: Notify,
    /// Which writes are admitted (lease, fenced sessions, stopped workers).
    fence: Fence,
    /// Block checksums of every chunk.
    checksums: Checksums,
    /// This process's boot id (random, never 0), answered with every write.
    boot: u64,
    /// One lock per chunk in use (see [`crate::locks`]).
    locks: ChunkLocks,
}

impl ChunkStore {
    /// Opens the store on the engine's directory and rebuilds the index by listing it. Every
    /// chunk found is queued for hashing.
    ///
    /// Errors: Io when the directory cannot be listed.
    pub async fn open(id: ServerId, engine: Arc<dyn Engine>, opts: StoreOptions) -> Result<Arc<ChunkStore>> {
        let listed = engine.list().await?;
        let checksums = Checksums::new(engine.files().clone());
        let mut state = State::default();
        let now = Instant::now();
        let mut rebuilt = 0;
        for (key, len) in &listed {
            let (entry, clean) = chunk_at_start(&checksums, engine.files(), *key, *len).map_err(|e| e.on(id))?;
            let hashed = entry.sha256.is_some();
            state.index.entry(key.0).or_default().insert(key.1, entry);
            if clean && !hashed {
                state.dirty.insert(*key, now); // durable, but its SHA-256 was not recorded
            }
            if !clean {
                // Not known to be durable (the process may have died before the kernel wrote
                // it back): synced, hashed and committed again.
                state.dirty.insert(*key, now);
                state.unsynced.insert(*key);
                rebuilt += 1;
            }
        }
        info!(
            "{id}: {} chunk files of {} files in {}",
            listed.len(),
            state.index.len(),
            engine.files().dir().display()
        );
        if rebuilt > 0 {
            info!("{id}: rebuilt the block checksums of {rebuilt} chunks changed since their last commit");
        }
        Ok(Arc::new(ChunkStore {
            id,
            engine,
            state: Mutex::new(state),
            opts,
            dir_dirty: AtomicBool::new(false),
            changed: Notify::new(),
            hash_lock: tokio::sync::Mutex::new(()),
            hashes_done: AtomicU64::new(0),
            hash_rereads: AtomicU64::new(0),
            meta: MetaConn::default(),
            sending: tokio::sync::RwLock::new(()),
            reports_settled: Notify::new(),
            fence: Fence::new(id),
            checksums,
            boot: new_boot_id(),
            locks: ChunkLocks::default(),
        }))
    }

    /// The checksums of an existing chunk; a chunk without them has lost them.
    fn checksums_of(&self, key: ChunkKey) -> Result<Arc<ChunkChecksums>> {
        self.checksums.get(key, None).map_err(|e| e.on(self.id))?.ok_or_else(|| StorageError::Corrupt {
            server: self.id,
            file: key.0,
            chunk: key.1,
            what: "its block checksums are missing".into(),
        })
    }

    /// The storage server's id.
    pub fn id(&self) -> ServerId {
        self.id
    }

    /// This process's boot id (random, never 0), answered with every write.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Which writes are admitted: the lease from pfs-meta, fenced sessions, stopped workers.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// The registered session's connection to pfs-meta (set by the pfs-meta session).
    pub fn meta(&self) -> &MetaConn {
        &self.meta
    }

    /// Chunk lock acquisitions since start (a chain write takes one).
    pub fn lock_acquisitions(&self) -> u64 {
        self.locks.acquisitions()
    }

    /// Wakes the background hasher (chunks changed, or reports wait to be sent).
    pub(crate) fn wake_hasher(&self) {
        self.changed.notify_one();
    }

    /// Waits until the hasher is woken, or `timeout` passes.
    pub(crate) async fn changed_or(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
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

    /// A chunk's length (bytes) and, when nothing was written since it was hashed, its
    /// SHA-256; `None` when the chunk does not exist.
    pub fn chunk_info(&self, file: FileId, chunk: ChunkIndex) -> Option<(u64, Option<Sha256Digest>)> {
        let st = self.state.lock();
        let e = st.index.get(&file)?.get(&chunk)?;
        Some((e.len, e.sha256.filter(|_| !st.dirty.contains_key(&(file, chunk)))))
    }

    /// The checksum block size (bytes) of an existing chunk. Errors: Corrupt when its
    /// checksums are missing; Io.
    pub fn checksum_block(&self, file: FileId, chunk: ChunkIndex) -> Result<u32> {
        Ok(self.checksums_of((file, chunk))?.block_size)
    }

    /// Stops refusing writes of a chunk pfs-meta named as lost here (a syncing replica takes
    /// new writes while its resync refills the chunk).
    pub fn forget_lost(&self, file: FileId, chunk: ChunkIndex) {
        self.state.lock().lost.remove(&(file, chunk));
    }

    /// Starts watching chunk `chunk` of `file` for chain writes, before a copy of it is
    /// fetched from another replica (the copy rule, see [`crate::locks`]).
    pub fn watch_writes(&self, file: FileId, chunk: ChunkIndex) -> Watch<'_> {
        self.locks.watch((file, chunk))
    }

    /// Replaces the chunk `watch` watches with `data`, a copy fetched from another replica
    /// since the watch began: the old chunk file goes, lost or not, and `data` is written as a
    /// new one (nothing for empty `data`). Not durable until synced, like any write. Returns
    /// false, installing nothing, when a chain write of the chunk finished here since the
    /// watch began (the copy may lack it: fetch again).
    ///
    /// Errors: as [`ChunkStore::write`] and [`ChunkStore::remove_chunks`].
    pub async fn install_copy(
        &self,
        watch: &Watch<'_>,
        chunk_size: u64,
        block_size: u32,
        data: PooledBuf,
    ) -> Result<bool> {
        let Some(lock) = self.locks.lock_unchanged(watch).await else { return Ok(false) };
        let (file, chunk) = lock.key();
        self.state.lock().lost.remove(&(file, chunk));
        if self.chunk_info(file, chunk).is_some() {
            self.remove_held(&lock).await?;
            self.forget(file, &[chunk]);
            self.sync_dir().await?;
        }
        if !data.is_empty() {
            let len = data.len() as u32;
            let extents = smallvec::smallvec![Extent { offset: 0, len }];
            self.write_held(&lock, extents, chunk_size, block_size, data).await?;
        }
        self.wake_hasher();
        Ok(true)
    }

    /// Chunks of `file` with their lengths in bytes, in chunk order.
    pub fn chunks_of(&self, file: FileId) -> Vec<(ChunkIndex, u64)> {
        let st = self.state.lock();
        st.index.get(&file).map(|m| m.iter().map(|(c, e)| (*c, e.len)).collect()).unwrap_or_default()
    }

    /// Writes `data` at `offset` bytes into a chunk, creating it if needed: a
    /// [`ChunkStore::write_extents`] of one extent. Returns the bytes written.
    pub async fn write(
        &self,
        file: FileId,
        chunk: ChunkIndex,
        offset: u64,
        chunk_size: u64,
        block_size: u32,
        data: PooledBuf,
    ) -> Result<u32> {
        let len = u32::try_from(data.len()).map_err(|_| StorageError::Invalid {
            server: self.id,
            what: format!(
                "a write of {} bytes to {} is larger than any chunk",
                data.len(),
                ChunkFiles::describe((file, chunk))
            ),
        })?;
        self.write_extents(file, chunk, smallvec::smallvec![Extent { offset, len }], chunk_size, block_size, data).await
    }

    /// Writes `data` into a chunk at `extents` (their bytes back to back in `data`, in
    /// ascending order without overlap), creating the chunk if needed, all under one hold of
    /// the chunk's lock and with one engine submission. Not durable until
    /// [`ChunkStore::fsync`]. Returns the bytes written.
    ///
    /// The chunk's block checksums (of `block_size`-byte blocks, fixed when the chunk is
    /// created) are updated with the data.
    ///
    /// Errors: Invalid when `chunk_size` exceeds 64 MiB or is 0, an extent ends past
    /// `chunk_size` or past [`MAX_FILE_SIZE`] in the file, the extents do not add up to
    /// `data`, or `block_size` is not a power of two within 512 bytes..=64 MiB; Lost; NoSpace
    /// when the target is full; Io.
    pub async fn write_extents(
        &self,
        file: FileId,
        chunk: ChunkIndex,
        extents: Extents,
        chunk_size: u64,
        block_size: u32,
        data: PooledBuf,
    ) -> Result<u32> {
        let mut lock = self.lock_write(file, chunk).await;
        self.write_locked(&mut lock, extents, chunk_size, block_size, data).await
    }

    /// Takes chunk `chunk` of `file`'s lock for a chain write: held from before the write
    /// here until its successor answered, so a copy of the chunk for another replica never
    /// runs across it (one lock acquisition per write; see [`crate::locks`]).
    pub async fn lock_write(&self, file: FileId, chunk: ChunkIndex) -> ChunkGuard<'_> {
        self.locks.lock((file, chunk), LockMode::Write).await
    }

    /// [`ChunkStore::write_extents`] to the chunk `lock` (from [`ChunkStore::lock_write`])
    /// holds. Gives back the lock's data part when it returns, so reads of the chunk go on
    /// while the write is forwarded; the rest of the lock goes when it is dropped.
    ///
    /// Errors: as [`ChunkStore::write_extents`].
    pub async fn write_locked(
        &self,
        lock: &mut ChunkGuard<'_>,
        extents: Extents,
        chunk_size: u64,
        block_size: u32,
        data: PooledBuf,
    ) -> Result<u32> {
        let written = self.write_held(lock, extents, chunk_size, block_size, data).await;
        lock.written();
        written
    }

    /// The write itself, under `lock`, which holds the chunk's data exclusively.
    async fn write_held(
        &self,
        lock: &ChunkGuard<'_>,
        extents: Extents,
        chunk_size: u64,
        block_size: u32,
        data: PooledBuf,
    ) -> Result<u32> {
        let key = lock.key();
        let (file, chunk) = key;
        debug_assert!(lock.holds_data_exclusively(), "a write of {key:?} without its data lock");
        let len = data.len() as u64;
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(StorageError::Invalid {
                server: self.id,
                what: format!("chunk size {chunk_size} bytes of file {file} is not within 1..={MAX_CHUNK_SIZE}"),
            });
        }
        let mut total = 0u64;
        for e in &extents {
            let (offset, elen) = (e.offset, u64::from(e.len));
            total += elen;
            if offset.checked_add(elen).is_none_or(|end| end > chunk_size) {
                return Err(StorageError::Invalid {
                    server: self.id,
                    what: format!(
                        "write of {elen} bytes at offset {offset} of {} exceeds the chunk size of {chunk_size} bytes",
                        ChunkFiles::describe(key)
                    ),
                });
            }
            if Layout::chunk_end(chunk, chunk_size, offset, elen).is_none() {
                return Err(StorageError::Invalid {
                    server: self.id,
                    what: format!(
                        "write of {elen} bytes at offset {offset} of {} (chunks of {chunk_size} bytes) ends past \
                         the largest file size, {MAX_FILE_SIZE} bytes",
                        ChunkFiles::describe(key)
                    ),
                });
            }
        }
        if total != len {
            return Err(StorageError::Invalid {
                server: self.id,
                what: format!("a write to {} of {len} bytes names extents of {total}", ChunkFiles::describe(key)),
            });
        }
        if block_size < 512 || !block_size.is_power_of_two() || block_size as u64 > MAX_CHUNK_SIZE {
            return Err(StorageError::Invalid {
                server: self.id,
                what: format!(
                    "block size {block_size} bytes of {} is not a power of two within 512..={MAX_CHUNK_SIZE}",
                    ChunkFiles::describe(key)
                ),
            });
        }
        // Created before the chunk's first byte, so a chunk never exists without checksums.
        let checksum_block = checksums::block_for(block_size, chunk_size);
        let sums = self.checksums.get(key, Some(checksum_block)).map_err(|e| e.on(self.id))?.expect("created");
        if sums.is_clean() {
            // Durably dirty before the data changes (see `checksums`).
            let s = sums.clone();
            blocking(move || s.set_dirty()).await.map_err(|e| e.on(self.id))?;
        }
        let first = extents.first().map_or(0, |e| e.offset);
        let (existed, running, old_len) = {
            let mut st = self.state.lock();
            if let Some(e) = st.lost_error(self.id, key) {
                return Err(e);
            }
            let old_len = st.index.get(&file).and_then(|m| m.get(&chunk)).map(|e| e.len);
            let existed = old_len.is_some();
            let running = match extents.len() {
                1 => st.start_write(key, existed, first),
                // Several extents leave gaps: the hash is computed over the file later.
                _ => {
                    st.running.insert(key, Running::Invalid);
                    None
                }
            };
            (existed, running, old_len.unwrap_or(0))
        };
        let data = match self.engine.write_extents(key, extents.clone(), data).await {
            Ok(data) => data,
            Err(e) => {
                if running.is_some() {
                    // Part of it may be on disk: only a re-read knows the contents now.
                    self.state.lock().running.insert(key, Running::Invalid);
                }
                return Err(e.on(self.id));
            }
        };
        // Each extent's blocks, in order: a gap between two extents is the later one's to sum.
        let (mut len_now, mut start) = (old_len, 0usize);
        for e in &extents {
            let part = &data[start..start + e.len as usize];
            if let Err(err) = self.update_checksums(key, &sums, len_now, e.offset, part) {
                if running.is_some() {
                    self.state.lock().running.insert(key, Running::Invalid);
                }
                return Err(err);
            }
            len_now = len_now.max(e.offset + u64::from(e.len));
            start += e.len as usize;
        }
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
                    *slot = Running::Ready { hasher, hashed_len: first + len };
                }
            }
            let entry = st.index.entry(file).or_default().entry(chunk).or_insert(ChunkEntry {
                len: 0,
                sha256: None,
                version: 0,
                synced_version: 0,
                commit_version: 0,
            });
            entry.len = entry.len.max(len_now);
            entry.version += 1;
            entry.sha256 = None;
            st.dirty.insert(key, Instant::now());
            st.unsynced.insert(key);
        }
        self.wake_hasher();
        Ok(len as u32)
    }

    /// Stores the checksums of the blocks a write of `data` at `offset` changed, in a chunk
    /// that was `old_len` bytes long: the blocks it covers, and those of a gap it left. Whole
    /// blocks are summed from `data`; partial ones are read back (page cache; short).
    fn update_checksums(
        &self,
        key: ChunkKey,
        sums: &ChunkChecksums,
        old_len: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let bs = sums.block_size as u64;
        let end = offset + data.len() as u64;
        let (first, last) = (offset.min(old_len) / bs, (end - 1) / bs);
        // The buffered file is opened only if a block must be read back (whole blocks come
        // from the payload, and an open is slow here).
        let read_back = || {
            self.engine.files().open(key, false)?.ok_or_else(|| {
                StorageError::io(
                    format!("reading back {}", ChunkFiles::describe(key)),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })
        };
        let crcs = checksums::block_crcs(read_back, sums.block_size, first, last, old_len.max(end), offset, data, key)
            .map_err(|e| e.on(self.id))?;
        sums.write(first, &crcs).map_err(|e| e.on(self.id))
    }

    /// Checks the blocks read (`data`, starting at block-aligned `start`) against the chunk's
    /// checksums. Errors: Corrupt naming the first bad block.
    fn verify(&self, key: ChunkKey, sums: &ChunkChecksums, start: u64, data: &[u8]) -> Result<()> {
        let bs = sums.block_size as usize;
        let first = start / bs as u64;
        let blocks = data.len().div_ceil(bs);
        let crcs = sums.read(first, blocks).map_err(|e| e.on(self.id))?;
        for (i, (bytes, want)) in data.chunks(bs).zip(crcs).enumerate() {
            let b = first + i as u64;
            let got = crc32c::crc32c(bytes);
            if want != Some(got) {
                let at = b * bs as u64;
                return Err(StorageError::Corrupt {
                    server: self.id,
                    file: key.0,
                    chunk: key.1,
                    what: match want {
                        Some(w) => format!(
                            "block {b} (bytes {at}..{} of the chunk) has crc32c {got:08x}, its checksum says {w:08x}",
                            at + bytes.len() as u64
                        ),
                        None => format!("block {b} (bytes {at}..) has no checksum"),
                    },
                });
            }
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `offset` inside a chunk. Returns the data (shorter when the
    /// chunk file ends earlier, empty for a chunk never written: a hole) and the chunk file's
    /// length.
    ///
    /// Errors: Invalid when `len` or `offset + len` exceed 64 MiB; NotReconciled before the
    /// lost chunks are known; Lost for a committed chunk this server lost; Io (also when a
    /// chunk file the index knows has disappeared).
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
        let lock = self.locks.lock(key, LockMode::Read).await;
        // Not here: a hole, unless pfs-meta's chunk map says otherwise (the request handler
        // asks it: `check_hole`).
        Ok(self.read_held(&lock, offset, len).await?.unwrap_or((PooledBuf::empty(), 0)))
    }

    /// Reads the whole chunk `chunk` of `file` for another replica, with no chain write of it
    /// in flight here (its writes in flight are on the next replicas first; see
    /// [`crate::locks`]). Returns its checksum block size (bytes) and its bytes; `None` when
    /// this server does not have it (ask [`ChunkStore::check_hole`] before calling it a hole).
    ///
    /// Errors: as [`ChunkStore::read`].
    pub async fn copy_out(&self, file: FileId, chunk: ChunkIndex) -> Result<Option<(u32, PooledBuf)>> {
        let lock = self.locks.lock((file, chunk), LockMode::CopyOut).await;
        let Some((len, _)) = self.chunk_info(file, chunk) else { return Ok(None) };
        let block_size = self.checksum_block(file, chunk)?;
        let len = u32::try_from(len).map_err(|_| StorageError::Invalid {
            server: self.id,
            what: format!("{} is {len} bytes, more than any chunk", ChunkFiles::describe((file, chunk))),
        })?;
        Ok(self.read_held(&lock, 0, len).await?.map(|(data, _)| (block_size, data)))
    }

    /// [`ChunkStore::read`] under `lock`, which holds the chunk's data; `None` for a chunk
    /// this server does not have.
    async fn read_held(&self, lock: &ChunkGuard<'_>, offset: u64, len: u32) -> Result<Option<(PooledBuf, u64)>> {
        let key = lock.key();
        let (file, chunk) = key;
        debug_assert!(lock.holds_data(), "a read of {key:?} without its data lock");
        let indexed = {
            let st = self.state.lock();
            if !st.reconciled {
                return Err(StorageError::NotReconciled { server: self.id });
            }
            if let Some(e) = st.lost_error(self.id, key) {
                return Err(e);
            }
            st.index.get(&file).and_then(|m| m.get(&chunk)).map(|e| e.len)
        };
        let sums = match indexed {
            Some(_) => Some(self.checksums_of(key)?),
            None => None,
        };
        // Whole checksum blocks are read and verified; the bytes asked for are cut out.
        let bs = sums.as_ref().map_or(1, |s| s.block_size as u64);
        let start = offset / bs * bs;
        let stop = (offset + len as u64).div_ceil(bs) * bs;
        let data = self.engine.read(key, start, pool::global().get((stop - start) as usize)).await;
        let data = data.map_err(|e| e.on(self.id))?;
        if let (Some(d), Some(have)) = (&data, indexed) {
            // Shorter than this process made it: cut behind our back. Zeros in its place
            // would be a silent loss.
            if (d.len() as u64) < have.min(stop) - start.min(have) {
                let found = format!("{} bytes in its file", start + d.len() as u64);
                return Err(StorageError::Lost { server: self.id, file, chunk, len: have, found });
            }
        }
        let data = match (data, &sums) {
            (Some(d), Some(s)) => {
                self.verify(key, s, start, &d)?;
                Some(cut(d, (offset - start) as usize, len as usize))
            }
            (d, _) => d,
        };
        match (data, indexed) {
            (Some(d), Some(have)) => Ok(Some((d, have))),
            (Some(d), None) => Ok(Some((d, 0))),
            (None, None) => Ok(None),
            // Deleted behind our back: a hole would be a silent loss.
            (None, Some(have)) => Err(StorageError::Lost {
                server: self.id,
                file,
                chunk,
                len: have,
                found: "its file disappeared from the data directory".into(),
            }),
        }
    }

    /// Errors (Lost) unless chunk `chunk` of `file`, which this server does not have, is a
    /// hole: pfs-meta's chunk map is asked whether a state of it was committed, since a chunk
    /// may have gone (a removal by mistake, a file deleted by hand) after this server compared
    /// its chunks with the map at registration. A chunk of a file that no longer exists is
    /// nothing lost. Costs one round trip to pfs-meta per read of a missing chunk.
    ///
    /// Errors: Lost; Unavailable (as NotReconciled) when pfs-meta cannot be asked: a hole
    /// cannot be told from a loss then, and zeros are never answered on a guess.
    pub async fn check_hole(&self, file: FileId, chunk: ChunkIndex) -> Result<()> {
        use pfs_common::wire::registry::GetChunks;
        let Some(meta) = self.meta.get() else { return Err(StorageError::NotReconciled { server: self.id }) };
        let infos = match meta.ask(GetChunks { file, first: chunk, count: 1 }).await {
            Ok(i) => i,
            Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::IsDir) => return Ok(()),
            Err(e) => {
                debug!("{}: asking pfs-meta whether chunk {chunk} of {file} is a hole: {e}", self.id);
                return Err(StorageError::NotReconciled { server: self.id });
            }
        };
        let committed = infos.into_iter().filter(|i| i.chunk == chunk).find_map(|i| i.committed);
        match committed {
            Some(c) if c.len > 0 => {
                warn!("{}: chunk {chunk} of file {file} is committed ({} bytes) but not here", self.id, c.len);
                Err(StorageError::Lost {
                    server: self.id,
                    file,
                    chunk,
                    len: c.len,
                    found: "no chunk file (it went while this server ran)".into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Cuts `file` to `size` bytes: removes chunks wholly past it and truncates the chunk it
    /// falls in; durable (fdatasync and directory fsync) when it returns.
    ///
    /// Errors: Invalid for a chunk size outside 1..=64 MiB or a size past [`MAX_FILE_SIZE`]; Io.
    pub async fn truncate(&self, file: FileId, size: u64, chunk_size: u64) -> Result<()> {
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(StorageError::Invalid {
                server: self.id,
                what: format!(
                    "truncate of file {file}: chunk size {chunk_size} bytes is not within 1..={MAX_CHUNK_SIZE}"
                ),
            });
        }
        if size > MAX_FILE_SIZE {
            return Err(StorageError::Invalid {
                server: self.id,
                what: format!(
                    "truncate of file {file} to {size} bytes: past the largest file size, {MAX_FILE_SIZE} bytes"
                ),
            });
        }
        let chunks = self.chunks_of(file);
        // Lost chunks wholly past the new end are gone now, lost or not.
        self.state.lock().lost.retain(|k, _| k.0 != file || k.1.saturating_mul(chunk_size) < size);
        let mut removed = Vec::new();
        for (chunk, len) in chunks {
            let start = chunk.saturating_mul(chunk_size);
            let key = (file, chunk);
            let lock = self.locks.lock(key, LockMode::Update).await;
            if start >= size {
                self.remove_held(&lock).await?;
                removed.push(chunk);
            } else if size - start < len {
                let new_len = size - start;
                let sums = self.checksums_of(key)?;
                let cut_checksums = {
                    let s = sums.clone();
                    let bs = s.block_size as u64;
                    let file = self.engine.files().open(key, false).map_err(|e| e.on(self.id))?;
                    move || {
                        // Dirty first (durably), then cut the data and sync it, then the
                        // checksums: a crash in between leaves them dirty, rebuilt at start.
                        s.set_dirty()?;
                        if let Some(f) = &file {
                            f.set_len(new_len).map_err(|e| {
                                StorageError::io(format!("truncating {}", ChunkFiles::describe(key)), e)
                            })?;
                            f.sync_data()
                                .map_err(|e| StorageError::io(format!("syncing {}", ChunkFiles::describe(key)), e))?;
                        }
                        s.truncate(new_len.div_ceil(bs))?;
                        if let (Some(f), true) = (&file, !new_len.is_multiple_of(bs)) {
                            let last = new_len / bs;
                            let crcs = checksums::block_crcs(
                                || Ok(f.clone()),
                                s.block_size,
                                last,
                                last,
                                new_len,
                                0,
                                &[],
                                key,
                            )?;
                            s.write(last, &crcs)?;
                        }
                        s.commit(None)
                    }
                };
                let commit_version = blocking(cut_checksums).await.map_err(|e| e.on(self.id))?;
                let mut st = self.state.lock();
                st.running.insert(key, Running::Invalid);
                if let Some(entry) = st.index.get_mut(&file).and_then(|m| m.get_mut(&chunk)) {
                    entry.len = new_len;
                    entry.commit_version = commit_version;
                    entry.version += 1;
                    entry.sha256 = None;
                    // The cut was synced above (writers of this range are excluded by the
                    // truncater's token).
                    if !st.unsynced.contains(&key) {
                        let e = st.index.get_mut(&file).and_then(|m| m.get_mut(&chunk)).expect("looked up above");
                        e.synced_version = e.version;
                    }
                }
                st.dirty.insert(key, Instant::now());
            }
        }
        if !removed.is_empty() {
            self.forget(file, &removed);
            self.sync_dir().await?;
        }
        self.wake_hasher();
        Ok(())
    }

    /// Removes every chunk of `file`; durable when it returns.
    ///
    /// Errors: Io.
    pub async fn remove(&self, file: FileId) -> Result<()> {
        self.state.lock().lost.retain(|k, _| k.0 != file);
        let chunks: Vec<ChunkIndex> = self.chunks_of(file).into_iter().map(|(c, _)| c).collect();
        self.remove_chunks(file, &chunks).await
    }

    /// Removes these chunks of `file` (those that exist); durable when it returns.
    ///
    /// Errors: Io.
    pub async fn remove_chunks(&self, file: FileId, chunks: &[ChunkIndex]) -> Result<()> {
        let chunks: Vec<ChunkIndex> = {
            let st = self.state.lock();
            chunks.iter().copied().filter(|c| st.index.get(&file).is_some_and(|m| m.contains_key(c))).collect()
        };
        if chunks.is_empty() {
            return Ok(());
        }
        for &chunk in &chunks {
            let key = (file, chunk);
            let lock = self.locks.lock(key, LockMode::Update).await;
            if let Err(e) = self.remove_held(&lock).await {
                // Keep the index true to the disk: forget what is gone, then fail.
                let done: Vec<_> = chunks.iter().copied().take_while(|c| *c != chunk).collect();
                self.forget(file, &done);
                return Err(e);
            }
        }
        self.forget(file, &chunks);
        self.sync_dir().await?;
        self.wake_hasher();
        Ok(())
    }

    /// Removes chunk `chunk` of `file` if it is still in the state `listed` names (this
    /// process, the same change count): checked and removed under the chunk's lock, so no
    /// write lands between. Durable when it returns. A chunk not here is gone already (Ok).
    ///
    /// Errors: Changed (nothing removed); Io.
    pub async fn remove_chunk_if(&self, file: FileId, chunk: ChunkIndex, listed: ListedState) -> Result<()> {
        let key = (file, chunk);
        {
            let lock = self.locks.lock(key, LockMode::Update).await;
            let change = {
                let st = self.state.lock();
                match st.index.get(&file).and_then(|m| m.get(&chunk)) {
                    None => return Ok(()),
                    Some(e) => e.version,
                }
            };
            if listed.boot != self.boot || listed.change != change {
                return Err(StorageError::Changed { server: self.id, file, chunk });
            }
            self.remove_held(&lock).await?;
            self.forget(file, &[chunk]);
        }
        self.sync_dir().await?;
        self.wake_hasher();
        Ok(())
    }

    /// Removes the chunk file (and its checksums) of the chunk `lock` holds exclusively; the
    /// caller then forgets it ([`ChunkStore::forget`]). Errors: Io naming the chunk.
    async fn remove_held(&self, lock: &ChunkGuard<'_>) -> Result<()> {
        let key = lock.key();
        debug_assert!(lock.holds_data_exclusively(), "a removal of {key:?} without its data lock");
        self.engine.remove(key).await.and_then(|()| self.checksums.remove(key)).map_err(|e| e.on(self.id))
    }

    /// Up to `limit` chunks (at most `LIST_MAX`, or `LIST_VERIFY_MAX` with `verify`) in
    /// (file, chunk) order after `after`. With `verify`, each is read whole through the
    /// checksum-verifying read path first, and a failure is listed as its damage.
    ///
    /// Errors: NotReconciled before the lost chunks are known.
    pub async fn list(
        &self,
        after: Option<ChunkKey>,
        limit: u32,
        verify: bool,
    ) -> Result<pfs_common::wire::storage::ChunkPage> {
        use pfs_common::wire::storage::{ChunkListing, ChunkPage, LIST_MAX, LIST_VERIFY_MAX};
        let limit = limit.clamp(1, if verify { LIST_VERIFY_MAX } else { LIST_MAX }) as usize;
        let (mut chunks, more) = {
            let st = self.state.lock();
            if !st.reconciled {
                return Err(StorageError::NotReconciled { server: self.id });
            }
            let mut keys: Vec<(ChunkKey, &ChunkEntry)> = st
                .index
                .iter()
                .flat_map(|(f, m)| m.iter().map(move |(c, e)| ((*f, *c), e)))
                .filter(|(k, _)| after.is_none_or(|a| *k > a))
                .collect();
            keys.sort_unstable_by_key(|k| k.0);
            let more = keys.len() > limit;
            keys.truncate(limit);
            let listed: Vec<ChunkListing> = keys
                .into_iter()
                .map(|((file, chunk), e)| ChunkListing {
                    file,
                    chunk,
                    len: e.len,
                    damage: None,
                    sha256: e.sha256.filter(|_| !st.dirty.contains_key(&(file, chunk))),
                    change: e.version,
                })
                .collect();
            (listed, more)
        };
        if verify {
            for c in &mut chunks {
                let mut at = 0;
                while at < c.len {
                    let n = (c.len - at).min(4 << 20) as u32;
                    match self.read(c.file, c.chunk, at, n).await {
                        Ok(_) => at += n as u64,
                        Err(e) => {
                            c.damage = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
        }
        Ok(ChunkPage { chunks, more, boot: self.boot })
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
            let removed = ChunkState { file, chunk, len: 0, sha256: None, removed: true, durable: false, version: 0 };
            st.reports.queue(removed);
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

    /// fdatasyncs chunks (up to [`SYNCS_AT_ONCE`] at once) and records the version each sync
    /// made durable. A chunk whose sync failed stays marked unsynced, so a retry syncs it.
    ///
    /// Errors: the first sync error (Io, NoSpace), naming the chunk.
    pub(crate) async fn sync_chunks(self: &Arc<Self>, keys: &[ChunkKey]) -> Result<()> {
        let versions: Vec<(ChunkKey, u64)> = {
            let mut st = self.state.lock();
            keys.iter()
                .map(|k| {
                    st.unsynced.remove(k);
                    (*k, st.index.get(&k.0).and_then(|m| m.get(&k.1)).map_or(0, |e| e.version))
                })
                .collect()
        };
        // Several fdatasyncs at once, so the file system can commit their metadata (block
        // allocations of O_DIRECT appends) in shared journal transactions rather than one
        // commit per chunk in turn.
        let mut syncing = tokio::task::JoinSet::new();
        let mut failed: Option<StorageError> = None;
        let mut next = versions.iter().copied();
        loop {
            while syncing.len() < SYNCS_AT_ONCE {
                let Some((key, version)) = next.next() else { break };
                let store = self.clone();
                // The engine's error names the chunk. The checksums are marked clean in the
                // same task, so their syncs run in parallel too.
                syncing.spawn(async move {
                    let r = store.engine.sync(key).await;
                    let r = match r {
                        Ok(()) => store.mark_clean(key, version).await,
                        Err(e) => Err(e),
                    };
                    (key, version, r)
                });
            }
            let Some(done) = syncing.join_next().await else { break };
            match done {
                Ok((key, version, Ok(()))) => {
                    let mut st = self.state.lock();
                    if let Some(e) = st.index.get_mut(&key.0).and_then(|m| m.get_mut(&key.1)) {
                        e.synced_version = e.synced_version.max(version);
                    }
                    // Durable now: its state (if hashed) goes to pfs-meta to be committed.
                    st.queue_report(key);
                }
                Ok((key, _, Err(e))) => {
                    self.state.lock().unsynced.insert(key);
                    failed.get_or_insert(e.on(self.id));
                }
                Err(e) => {
                    failed
                        .get_or_insert(StorageError::Stopped { what: format!("{}: a sync task failed: {e}", self.id) });
                }
            }
        }
        if let Some(e) = failed {
            // A panicked task's chunk is unknown: keep every chunk marked, to be safe.
            self.state.lock().unsynced.extend(keys.iter().copied());
            return Err(e);
        }
        Ok(())
    }

    /// The local half of [`ChunkStore::fsync`]: fdatasync of `file`'s changed chunks, fsync of
    /// the directory if chunk files were created, then its changed chunks hashed (their states
    /// queued for pfs-meta). Errors: Io (or NoSpace) from fdatasync.
    pub(crate) async fn make_durable(self: &Arc<Self>, file: FileId) -> Result<()> {
        // Hashed first, so the commit records the SHA-256 with the checksums.
        self.hash_file_now(file).await;
        let keys: Vec<ChunkKey> = self.state.lock().unsynced.iter().filter(|k| k.0 == file).copied().collect();
        self.sync_chunks(&keys).await?;
        self.sync_dir().await?;
        Ok(())
    }

    /// The chunk's data is durable at `version`: if nothing changed since, its checksums are
    /// marked clean and synced (see `checksums`). Errors: Io.
    async fn mark_clean(&self, key: ChunkKey, version: u64) -> Result<()> {
        let _lock = self.locks.lock(key, LockMode::Update).await;
        let sha = {
            let st = self.state.lock();
            let Some(e) = st.index.get(&key.0).and_then(|m| m.get(&key.1)) else { return Ok(()) };
            if e.version != version {
                return Ok(()); // written again since: still dirty
            }
            e.sha256.filter(|_| !st.dirty.contains_key(&key))
        };
        let Some(s) = self.checksums.get(key, None).map_err(|e| e.on(self.id))? else { return Ok(()) };
        if s.is_clean() {
            return Ok(());
        }
        let commit_version = blocking(move || s.commit(sha)).await.map_err(|e| e.on(self.id))?;
        if let Some(e) = self.state.lock().index.get_mut(&key.0).and_then(|m| m.get_mut(&key.1)) {
            e.commit_version = commit_version;
        }
        Ok(())
    }

    /// Makes every write to `file` durable (fdatasync of its changed chunks, fsync of the
    /// directory if chunk files were created), then hashes its changed chunks and commits
    /// them to pfs-meta's chunk map, waiting for the acknowledgement, before returning. Only
    /// this file's queued chunk reports are sent (other files' wait for the hasher).
    ///
    /// Errors: Io (or NoSpace) from fdatasync; Unavailable when pfs-meta cannot be told (the
    /// data is on disk, but a later loss of it could not be told from a hole, so this is no
    /// success: the writer retries its fsync).
    pub async fn fsync(self: &Arc<Self>, file: FileId) -> Result<()> {
        self.make_durable(file).await?;
        self.flush_reports(Some(file)).await.map_err(|e| {
            warn!("{}: chunks of file {file} are durable but not committed to pfs-meta: {e}", self.id);
            e
        })
    }

    /// Capacity and usage of the data directory's file system, and the chunk count.
    ///
    /// Errors: Io when statvfs fails.
    pub fn status(&self) -> Result<StorageStatus> {
        let (capacity_bytes, free_bytes) = disk_space(self.dir()).map_err(|e| e.on(self.id))?;
        let chunks = self.state.lock().index.values().map(|m| m.len() as u64).sum();
        Ok(StorageStatus { id: self.id, capacity_bytes, free_bytes, chunks, engine: self.engine.name().to_string() })
    }

    /// pfs-meta answered a full listing: `lost` are the committed chunks this server lacks.
    /// Reads are served from now on; the states of hashed chunks are queued for commit (none
    /// were queued before, so a lost chunk's leftover could not be committed in its place).
    pub(crate) fn reconciled(&self, lost: Vec<LostChunk>) {
        let mut st = self.state.lock();
        if !lost.is_empty() {
            warn!(
                "{}: pfs-meta's chunk map names {} chunks this server lost, e.g. chunk {} of file {} ({}); their \
                 reads fail",
                self.id,
                lost.len(),
                lost[0].chunk,
                lost[0].file,
                lost[0].found
            );
        }
        st.lost = lost.into_iter().map(|l| ((l.file, l.chunk), l)).collect();
        st.reconciled = true;
        let keys: Vec<ChunkKey> = st.index.iter().flat_map(|(f, m)| m.keys().map(move |c| (*f, *c))).collect();
        for key in keys {
            st.queue_report(key);
        }
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

mod hashing;
mod reporting;
#[cfg(test)]
mod tests;

/// The first `len` bytes of `buf` from `skip` on (no copy when `skip` is 0).
fn cut(mut buf: PooledBuf, skip: usize, len: usize) -> PooledBuf {
    if skip == 0 {
        buf.truncate(len.min(buf.len()));
        return buf;
    }
    let end = (skip + len).min(buf.len());
    let skip = skip.min(end);
    let mut out = pool::global().get(end - skip);
    out.copy_from_slice(&buf[skip..end]);
    out
}

/// A listed chunk's index entry at start, and whether its checksums are clean (its data was
/// committed with nothing written since: trusted as durable, with the SHA-256 recorded at the
/// commit). Dirty, missing or unreadable checksums are rebuilt from the data (blocking).
///
/// Errors: Io naming the chunk.
fn chunk_at_start(checksums: &Checksums, files: &ChunkFiles, key: ChunkKey, len: u64) -> Result<(ChunkEntry, bool)> {
    // Without checksums to say the file's block size, the cluster's default one.
    let fallback = checksums::block_for(64 << 10, len);
    let (block_size, commit_version) =
        match checksums.get(key, None).and_then(|s| Ok((s.clone(), s.map(|s| s.committed()).transpose()?))) {
            Ok((Some(_), Some(c))) if c.clean => {
                let entry =
                    ChunkEntry { len, sha256: c.sha256, version: 1, synced_version: 1, commit_version: c.version };
                return Ok((entry, true));
            }
            Ok((Some(s), Some(c))) => (s.block_size, c.version),
            Ok(_) => (fallback, 0),
            Err(e) => {
                warn!("{e}; rebuilding them from the chunk's data");
                (fallback, 0)
            }
        };
    if let Some(file) = files.open(key, false)? {
        checksums.rebuild(key, &file, block_size, commit_version)?;
    }
    Ok((ChunkEntry { len, sha256: None, version: 1, synced_version: 0, commit_version }, false))
}
/// A boot id unlikely to repeat across restarts: the clock's nanoseconds mixed with the pid,
/// never 0.
fn new_boot_id() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mixed = (nanos ^ ((std::process::id() as u64) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    mixed.max(1)
}
