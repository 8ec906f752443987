//! SHA-256 of chunks, computed after they change, coalesced and off the request path.
//!
//! Writes mark a chunk dirty (a map keyed by chunk, so ten writes to one chunk cause one
//! hash). Sequential appends from offset 0 also feed the chunk's running hash (see
//! `Running`); when it covers the whole chunk file, hashing the chunk only finalizes a copy of
//! it. Otherwise the chunk file is re-read, with `O_DIRECT` where possible so that the read
//! does not fill (slow, on the reference VM) fresh page cache. The background hasher
//! ([`crate::hasher`]) runs [`ChunkStore::hash_quiet_chunks`] for chunks that have been quiet
//! for `StoreOptions::hash_quiet`; `Fsync` hashes its file's chunks at once.
//!
//! A chunk's `version` is read before hashing and compared after: a hash computed across a
//! concurrent change is discarded (the change marked the chunk dirty again).

use super::{ChunkStore, Running};
use crate::engine::{blocking, ChunkFiles, ChunkKey, DIRECT_ALIGN};
use crate::error::{Result, StorageError};
use pfs_common::ids::Sha256Digest;
use pfs_common::pool;
use pfs_common::FileId;
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tracing::warn;

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

impl ChunkStore {
    /// Hashes one dirty chunk and queues its state for pfs-meta. The caller holds `hash_lock`.
    async fn hash_one(&self, key: ChunkKey) {
        let version = {
            let mut st = self.state.lock();
            let Some(entry) = st.index.get(&key.0).and_then(|m| m.get(&key.1)) else {
                st.dirty.remove(&key);
                return;
            };
            let (v, len) = (entry.version, entry.len);
            st.dirty.remove(&key);
            // The running hash covers the whole chunk file: finalize a copy (two compressions
            // at most), keep the original for further appends.
            if let Some(Running::Ready { hasher, hashed_len }) = st.running.get(&key) {
                if *hashed_len == len {
                    let digest = Sha256Digest((**hasher).clone().finalize().into());
                    if let Some(entry) = st.index.get_mut(&key.0).and_then(|m| m.get_mut(&key.1)) {
                        entry.sha256 = Some(digest);
                    }
                    st.queue_report(key);
                    self.hashes_done.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            v
        };
        let files = self.engine.files().clone();
        let result = blocking(move || hash_chunk_file(&files, key)).await;
        self.hashes_done.fetch_add(1, Ordering::Relaxed);
        self.hash_rereads.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(Some((digest, len))) => {
                let mut st = self.state.lock();
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
                        self.id,
                        ChunkFiles::describe(key)
                    );
                    let found = format!("{len} bytes in its file");
                    let lost = pfs_common::wire::registry::LostChunk { file: key.0, chunk: key.1, len: had, found };
                    st.lost.insert(key, lost);
                    return;
                }
                entry.sha256 = Some(digest);
                entry.len = len;
                st.queue_report(key);
            }
            Ok(None) => {} // removed meanwhile; the removal is reported
            Err(e) => warn!("{}: {e}", self.id),
        }
    }

    /// Hashes every dirty chunk of `file` now (waiting for a hash in progress elsewhere).
    pub(crate) async fn hash_file_now(&self, file: FileId) {
        let _g = self.hash_lock.lock().await;
        let keys: Vec<ChunkKey> =
            self.state.lock().dirty.range((file, 0)..=(file, u64::MAX)).map(|(k, _)| *k).collect();
        for key in keys {
            self.hash_one(key).await;
        }
    }

    /// One pass of the background hasher: hashes the chunks quiet for `hash_quiet` (their
    /// states queued for pfs-meta), then fdatasyncs those not yet synced, so the states
    /// reported are durable and pfs-meta commits them (the chunk map trails the writes by
    /// about `hash_quiet`, not by the next fsync). Returns when the next dirty chunk will be
    /// quiet, if any is dirty.
    pub(crate) async fn hash_quiet_chunks(self: &Arc<Self>) -> Option<Instant> {
        let quiet = self.opts.hash_quiet;
        let now = Instant::now();
        let (due, next): (Vec<ChunkKey>, Option<Instant>) = {
            let st = self.state.lock();
            let due = st.dirty.iter().filter(|(_, t)| **t + quiet <= now).map(|(k, _)| *k).collect();
            let next = st.dirty.values().filter(|t| **t + quiet > now).min().map(|t| *t + quiet);
            (due, next)
        };
        for key in &due {
            let _g = self.hash_lock.lock().await;
            // Still dirty and still quiet? (Fsync may have hashed it; a write may have touched it.)
            let still_due = self.state.lock().dirty.get(key).is_some_and(|t| *t + quiet <= Instant::now());
            if still_due {
                self.hash_one(*key).await;
            }
        }
        let unsynced: Vec<ChunkKey> = {
            let st = self.state.lock();
            due.iter().filter(|k| st.unsynced.contains(k)).copied().collect()
        };
        if !unsynced.is_empty() {
            if let Err(e) = self.sync_chunks(&unsynced).await {
                warn!("{}: background sync: {e}", self.id);
            }
        }
        next
    }
}
