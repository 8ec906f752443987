//! SHA-256 of chunks, computed after they change, coalesced and off the request path.
//!
//! Writes mark a chunk dirty (a map keyed by chunk, so ten writes to one chunk cause one
//! hash). Sequential appends from offset 0 also feed the chunk's running hash (see
//! `store::Running`); when it covers the whole chunk file, hashing the chunk only finalizes a
//! copy of it. Otherwise the chunk file is re-read, with `O_DIRECT` where possible so that the
//! read does not fill (slow, on the reference VM) fresh page cache. The background task [`run`] hashes chunks that have been quiet for
//! `StoreOptions::hash_quiet`, and sends the resulting chunk states to pfs-meta. `Fsync`
//! calls [`hash_file_now`] to hash its file's chunks at once.
//!
//! A chunk's `version` is read before hashing and compared after: a hash computed across a
//! concurrent change is discarded (the change marked the chunk dirty again).

use crate::engine::{blocking, ChunkFiles, ChunkKey, DIRECT_ALIGN};
use crate::error::{Result, StorageError};
use crate::store::{ChunkStore, Running};
use pfs_common::ids::Sha256Digest;
use pfs_common::pool;
use pfs_common::FileId;
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Bytes read per step while hashing a chunk file (one reused pooled buffer). A multiple of
/// [`DIRECT_ALIGN`], so every piece starts at an offset `O_DIRECT` accepts.
pub const HASH_PIECE: usize = 1 << 20;
const _: () = assert!(HASH_PIECE.is_multiple_of(DIRECT_ALIGN));

/// SHA-256 and length (bytes) of a chunk file, read in pieces of [`HASH_PIECE`] bytes into
/// one pooled (4096-aligned) buffer, through the chunk's `O_DIRECT` file where the file system
/// supports it (a direct read of the range first writes back dirty cached pages, e.g. of an
/// unaligned tail written buffered, so it sees every completed write). `None` if the file
/// does not exist. Blocking. Errors: Io naming the chunk.
pub fn hash_chunk_file(files: &ChunkFiles, key: ChunkKey) -> Result<Option<(Sha256Digest, u64)>> {
    let what = || format!("hashing {}", ChunkFiles::describe(key));
    let Some(fd) = files.open_as(key, false, true)? else { return Ok(None) };
    let mut buf = pool::global().get(HASH_PIECE);
    let mut h = Sha256::new();
    let mut len = 0u64;
    loop {
        match fd.file.read_at(&mut buf, len) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                len += n as u64;
                // A direct read ending unaligned has reached the end of file; reading on at an
                // unaligned offset would fail with EINVAL.
                if fd.direct && !n.is_multiple_of(DIRECT_ALIGN) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StorageError::io(what(), e)),
        }
    }
    Ok(Some((Sha256Digest(h.finalize().into()), len)))
}

/// Hashes one dirty chunk and queues its state for pfs-meta. The caller holds `hash_lock`.
async fn hash_one(store: &Arc<ChunkStore>, key: ChunkKey) {
    let version = {
        let mut st = store.state.lock();
        let Some(entry) = st.index.get(&key.0).and_then(|m| m.get(&key.1)) else {
            st.dirty.remove(&key);
            return;
        };
        let (v, len) = (entry.version, entry.len);
        st.dirty.remove(&key);
        // The running hash covers the whole chunk file: finalize a copy (two compressions at
        // most), keep the original for further appends.
        if let Some(Running::Ready { hasher, hashed_len }) = st.running.get(&key) {
            if *hashed_len == len {
                let digest = Sha256Digest((**hasher).clone().finalize().into());
                if let Some(entry) = st.index.get_mut(&key.0).and_then(|m| m.get_mut(&key.1)) {
                    entry.sha256 = Some(digest);
                }
                queue_report(&mut st, key);
                store.hashes_done.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        v
    };
    let files = store.engine.files().clone();
    let result = blocking(move || hash_chunk_file(&files, key)).await;
    store.hashes_done.fetch_add(1, Ordering::Relaxed);
    store.hash_rereads.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(Some((digest, len))) => {
            let mut st = store.state.lock();
            let Some(entry) = st.index.get_mut(&key.0).and_then(|m| m.get_mut(&key.1)) else { return };
            if entry.version != version {
                return; // changed while hashing: dirty again, hashed again later
            }
            if len < entry.len {
                // Shorter than our writes made it, with no truncate of ours: cut behind our
                // back. That state is never committed; the chunk is lost here.
                let had = entry.len;
                warn!(
                    "{}: {} is {len} bytes, {had} were written; it is lost here",
                    store.id,
                    ChunkFiles::describe(key)
                );
                let found = format!("{len} bytes in its file");
                let lost = pfs_common::wire::registry::LostChunk { file: key.0, chunk: key.1, len: had, found };
                st.lost.insert(key, lost);
                return;
            }
            entry.sha256 = Some(digest);
            entry.len = len;
            queue_report(&mut st, key);
        }
        Ok(None) => {} // removed meanwhile; the removal is reported
        Err(e) => warn!("{}: {e}", store.id),
    }
}

/// Queues a freshly hashed chunk's state for pfs-meta. Not before the server reconciled with
/// pfs-meta's chunk map: the state of a chunk pfs-meta is about to name as lost must not be
/// committed over the lost one (reconciling queues every hashed chunk).
fn queue_report(st: &mut crate::store::State, key: ChunkKey) {
    if st.reconciled {
        if let Some(state) = st.report_state(key) {
            st.outbox.insert(key, state);
        }
    }
}

/// Hashes every dirty chunk of `file` now (waiting for a hash in progress elsewhere).
pub async fn hash_file_now(store: &Arc<ChunkStore>, file: FileId) {
    let _g = store.hash_lock.lock().await;
    let keys: Vec<ChunkKey> = store.state.lock().dirty.range((file, 0)..=(file, u64::MAX)).map(|(k, _)| *k).collect();
    for key in keys {
        hash_one(store, key).await;
    }
}

/// The background hasher: hashes quiet dirty chunks and flushes chunk reports, forever.
pub async fn run(store: Arc<ChunkStore>) {
    let quiet = store.opts.hash_quiet;
    loop {
        let now = Instant::now();
        let (due, next): (Vec<ChunkKey>, Option<Instant>) = {
            let st = store.state.lock();
            let due = st.dirty.iter().filter(|(_, t)| **t + quiet <= now).map(|(k, _)| *k).collect();
            let next = st.dirty.values().filter(|t| **t + quiet > now).min().map(|t| *t + quiet);
            (due, next)
        };
        for key in &due {
            let _g = store.hash_lock.lock().await;
            // Still dirty and still quiet? (Fsync may have hashed it; a write may have touched it.)
            let still_due = store.state.lock().dirty.get(key).is_some_and(|t| *t + quiet <= Instant::now());
            if still_due {
                hash_one(&store, *key).await;
            }
        }
        // Then sync them (recording each SHA-256 with the commit), so the state reported is
        // durable and pfs-meta commits it: the chunk map trails the writes by about
        // `hash_quiet`, not by the next fsync.
        let unsynced: Vec<ChunkKey> = {
            let st = store.state.lock();
            due.iter().filter(|k| st.unsynced.contains(k)).copied().collect()
        };
        if !unsynced.is_empty() {
            if let Err(e) = store.sync_chunks(&unsynced).await {
                warn!("{}: background sync: {e}", store.id);
            }
        }
        if !store.state.lock().outbox.is_empty() {
            if let Err(e) = store.reporter.flush(&store).await {
                debug!("{}: chunk reports wait for pfs-meta: {e}", store.id);
            }
        }
        let wait = next.map_or(Duration::from_secs(1), |t| t.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = store.hasher_wake.notified() => {}
            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
        }
    }
}

/// Waits until `cond` holds or `deadline` passes (for tests); true if it holds.
#[doc(hidden)]
pub async fn wait_for(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while !cond() {
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}
