//! Scrub: a background pass that re-reads every chunk of this storage target, checks every
//! block against its crc32c and the whole chunk against its recorded SHA-256, and rewrites a
//! damaged copy from a serving replica of its chain (the way ZFS scrubs a pool and HDFS's
//! block scanner feeds re-replication). A pass runs every `timeouts.scrub_every_ms` and when
//! asked (`pfs scrub`), reading at most `timeouts.scrub_bytes_per_sec`.
//!
//! A chunk without another replica (one replica, or every other one down) cannot be repaired:
//! the pass reports it, and reads of it keep failing with the error naming the damage.

use crate::error::StorageError;
use crate::replication::Replication;
use crate::resync::{self, Pace};
use crate::store::ChunkStore;
use parking_lot::Mutex;
use pfs_common::config::Config;
use pfs_common::ids::Sha256Digest;
use pfs_common::wire::storage::{ScrubStatus, LIST_MAX};
use pfs_common::{ChunkIndex, FileId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};

/// Most failures a status keeps (the newest are dropped beyond it).
pub const FAILURES_KEPT: usize = 64;

/// The scrubber of one storage server: its status and what wakes it.
#[derive(Default)]
pub struct Scrubber {
    status: Mutex<ScrubStatus>,
    wake: Notify,
}

impl Scrubber {
    /// The status: the pass running now, or the last one.
    pub fn status(&self) -> ScrubStatus {
        self.status.lock().clone()
    }

    /// Starts a pass now (unless one runs); returns the status at the call.
    pub fn start(&self) -> ScrubStatus {
        let s = self.status();
        if !s.running {
            self.wake.notify_one();
        }
        s
    }
}

/// Runs passes forever: every `scrub_every_ms` (0: only when asked) and when started.
pub async fn run(store: Arc<ChunkStore>, repl: Arc<Replication>, scrubber: Arc<Scrubber>, config: Arc<Config>) {
    let every = config.timeouts.scrub_every_ms;
    loop {
        let woken = scrubber.wake.notified();
        if every == 0 {
            woken.await;
        } else {
            let _ = tokio::time::timeout(Duration::from_millis(every), woken).await;
        }
        pass(&store, &repl, &scrubber, config.timeouts.scrub_bytes_per_sec, config.timeouts.resync_bytes_per_sec).await;
    }
}

async fn pass(store: &Arc<ChunkStore>, repl: &Replication, scrubber: &Scrubber, read_rate: u64, copy_rate: u64) {
    {
        let mut s = scrubber.status.lock();
        *s = ScrubStatus { running: true, passes: s.passes, ..Default::default() };
    }
    let reads = Pace::new(read_rate);
    let copies = Pace::new(copy_rate);
    let mut after = None;
    loop {
        let page = match store.list(after, LIST_MAX, false).await {
            Ok(p) => p,
            Err(e) => {
                fail(scrubber, format!("listing the chunks: {e}"));
                break;
            }
        };
        for l in &page.chunks {
            match check(store, l.file, l.chunk).await {
                Ok(bytes) => {
                    {
                        let mut s = scrubber.status.lock();
                        s.chunks += 1;
                        s.bytes += bytes;
                    }
                    reads.spend(bytes).await;
                }
                Err(damage) => {
                    warn!("{}: scrub: {damage}", store.id());
                    scrubber.status.lock().damaged += 1;
                    match resync::repair(store, repl, l.file, l.chunk).await {
                        Ok(n) => {
                            info!("{}: scrub repaired chunk {} of file {} from a replica", store.id(), l.chunk, l.file);
                            scrubber.status.lock().repaired += 1;
                            copies.spend(n).await;
                        }
                        Err(e) => fail(scrubber, format!("{damage}; not repaired: {e}")),
                    }
                }
            }
        }
        after = page.chunks.last().map(|l| (l.file, l.chunk));
        if !page.more {
            break;
        }
    }
    let mut s = scrubber.status.lock();
    s.running = false;
    s.passes += 1;
    info!(
        "{}: scrub pass {} done: {} chunks ({} bytes) read, {} damaged, {} repaired",
        store.id(),
        s.passes,
        s.chunks,
        s.bytes,
        s.damaged,
        s.repaired
    );
}

fn fail(scrubber: &Scrubber, what: String) {
    let mut s = scrubber.status.lock();
    if s.failures.len() < FAILURES_KEPT {
        s.failures.push(what);
    }
}

/// Reads a chunk whole (every block checked against its crc32c) and compares it with the
/// SHA-256 recorded for it when nothing was written meanwhile. Returns the bytes read, or
/// what is wrong.
async fn check(store: &ChunkStore, file: FileId, chunk: ChunkIndex) -> std::result::Result<u64, StorageError> {
    let Some(before) = store.chunk_info(file, chunk) else { return Ok(0) };
    // A block failing its checksum, a lost chunk or a disk error: repaired from a replica.
    let (data, _) = store.read(file, chunk, 0, before.0 as u32).await?;
    if let (Some(sha), Some(after)) = (before.1, store.chunk_info(file, chunk)) {
        if after == before && data.len() as u64 == before.0 && Sha256Digest::of(&data) != sha {
            return Err(StorageError::Corrupt {
                server: store.id(),
                file,
                chunk,
                what: format!("its bytes do not match its recorded SHA-256 {sha}"),
            });
        }
    }
    Ok(data.len() as u64)
}
