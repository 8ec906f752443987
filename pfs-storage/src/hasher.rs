//! The background hasher, a supervised worker (see [`crate::supervisor`]): hashes chunks that
//! have been quiet for `StoreOptions::hash_quiet` and syncs them
//! (`ChunkStore::hash_quiet_chunks`, in `store::hashing`), then sends the queued chunk
//! reports of every file to pfs-meta; woken by every change, or when the next dirty chunk
//! becomes quiet.
//!
//! Its loss makes writes unsafe: a chunk written after it died would never be hashed,
//! committed to pfs-meta's chunk map or synced in the background, so the server stops
//! admitting writes when it dies (see `lib.rs`).

use crate::store::ChunkStore;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::debug;

/// Longest sleep between passes when nothing is dirty.
const IDLE: Duration = Duration::from_secs(1);

/// Hashes quiet dirty chunks and flushes chunk reports, forever.
pub async fn run(store: Arc<ChunkStore>) {
    loop {
        let hashed = store.hashes_done();
        let next = store.hash_quiet_chunks().await;
        if store.hashes_done() != hashed {
            crate::supervisor::fail_point("hasher");
        }
        if store.has_reports() {
            if let Err(e) = store.flush_reports(None).await {
                debug!("{}: chunk reports wait for pfs-meta: {e}", store.id());
            }
        }
        let wait = next.map_or(IDLE, |t| t.saturating_duration_since(Instant::now()));
        store.changed_or(wait.max(Duration::from_millis(1))).await;
    }
}
