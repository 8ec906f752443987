//! Resync: filling this server's replica of a chain from a serving replica, after pfs-meta
//! made it a syncing member (it came back after a failure, restarted, or replaces a server
//! gone for good). A syncing replica is at the tail of the chain's write path, so it receives
//! every new write while it copies; it serves no reads until pfs-meta, told `SyncDone`, marks
//! it serving.
//!
//! For each syncing chain (at its current version) the task pages through the source's chunk
//! listing, keeps the chunks that lie on the chain (by the files' layouts, from pfs-meta),
//! and copies whole each one whose length or SHA-256 differs from ours. Then it removes ours
//! that the source does not have (a file truncated or removed while we were away), syncs
//! everything it copied and reports `SyncDone`. A chain that changes version meanwhile is
//! started again from the beginning at its new version.
//!
//! A copy never loses a write that reaches us while it is fetched: the source reads the chunk
//! with no write of it in flight (its in-flight writes, forwarded to us, finish first); we
//! watch the chunk's writes from before fetching and install the copy under the chunk's
//! exclusive lock only if none finished since, and fetch again otherwise (the copy rule of
//! [`crate::locks`]).
//! Copies are paced to `timeouts.resync_bytes_per_sec`.

use crate::error::{Result, StorageError};
use crate::replication::Replication;
use crate::store::ChunkStore;
use pfs_common::chain::{Chain, ChainId};
use pfs_common::config::Config;
use pfs_common::layout::Layout;
use pfs_common::pool::PooledBuf;
use pfs_common::rpc::RpcClient;
use pfs_common::wire::registry::{GetLayouts, SyncDone, GET_CHUNKS_MAX};
use pfs_common::wire::storage::{ListChunks, StorageRequest, SyncRead, LIST_MAX};
use pfs_common::wire::MetaRequest;
use pfs_common::{ChunkIndex, FileId, ServerId};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Tries to install one chunk copy before giving up on this pass (writes kept arriving).
const COPY_ATTEMPTS: usize = 8;

/// Resyncs the chains this server is syncing in, forever (woken by chain changes; retried
/// every second after a failure).
pub async fn run(store: Arc<ChunkStore>, repl: Arc<Replication>, config: Arc<Config>) {
    let mut done: HashMap<ChainId, u64> = HashMap::new();
    let mut changes = repl.subscribe();
    loop {
        changes.mark_unchanged();
        for chain in repl.syncing() {
            if done.get(&chain.id) == Some(&chain.version) {
                continue;
            }
            // Paced per chain from its start: idle time earns no burst.
            let pace = Pace::new(config.timeouts.resync_bytes_per_sec);
            match sync_chain(&store, &repl, &chain, &pace).await {
                Ok(copied) => {
                    info!("{}: resynced {} ({} chunks copied)", store.id(), chain.describe(), copied);
                    done.insert(chain.id, chain.version);
                }
                Err(e) => warn!("{}: resync of {} stopped: {e}; trying again", store.id(), chain.describe()),
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
    }
}

/// Spends at most `bytes_per_sec` (0: unbounded), averaged from the pacer's creation: make
/// one per pass, so time spent idle earns no burst.
pub(crate) struct Pace {
    bytes_per_sec: u64,
    start: Instant,
    bytes: parking_lot::Mutex<u64>,
}

impl Pace {
    pub(crate) fn new(bytes_per_sec: u64) -> Pace {
        Pace { bytes_per_sec, start: Instant::now(), bytes: parking_lot::Mutex::new(0) }
    }

    pub(crate) async fn spend(&self, n: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let total = {
            let mut b = self.bytes.lock();
            *b += n;
            *b
        };
        let due = Duration::from_secs_f64(total as f64 / self.bytes_per_sec as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

fn meta(store: &ChunkStore) -> Result<RpcClient<MetaRequest>> {
    store.meta().get().ok_or_else(|| StorageError::Stopped { what: "no session with pfs-meta".into() })
}

/// Layouts of files, fetched from pfs-meta as they are first needed.
struct Layouts(HashMap<FileId, Option<Layout>>);

impl Layouts {
    async fn fetch(&mut self, meta: &RpcClient<MetaRequest>, files: impl Iterator<Item = FileId>) -> Result<()> {
        let need: Vec<FileId> =
            files.filter(|f| !self.0.contains_key(f)).collect::<BTreeSet<_>>().into_iter().collect();
        for batch in need.chunks(GET_CHUNKS_MAX as usize) {
            let layouts = meta.ask(GetLayouts { files: batch.to_vec() }).await?;
            for (f, l) in batch.iter().zip(layouts) {
                self.0.insert(*f, l);
            }
        }
        Ok(())
    }

    /// The layout of `file` if chunk `chunk` of it lies on `chain`.
    fn on_chain(&self, file: FileId, chunk: ChunkIndex, chain: ChainId) -> Option<&Layout> {
        self.0.get(&file)?.as_ref().filter(|l| l.chain(chunk) == chain)
    }
}

/// Copies every chunk of `chain` this server lacks from a serving replica; returns how many.
async fn sync_chain(store: &Arc<ChunkStore>, repl: &Replication, chain: &Chain, pace: &Pace) -> Result<u64> {
    let me = store.id();
    let source = chain.readers().find(|s| *s != me).ok_or_else(|| StorageError::Stale {
        current: None,
        server: me,
        what: format!("{} has no serving replica to copy from", chain.describe()),
    })?;
    let still_current = || {
        if repl.chain(chain.id).map(|c| c.version) != Some(chain.version) {
            return Err(StorageError::Stale {
                current: None,
                server: me,
                what: format!("{} changed during its resync", chain.id),
            });
        }
        Ok(())
    };
    let peer = repl.peer(source).await?;
    let meta = meta(store)?;
    let mut layouts = Layouts(HashMap::new());
    let mut present: HashSet<(FileId, ChunkIndex)> = HashSet::new();
    let mut touched: BTreeSet<FileId> = BTreeSet::new();
    let mut copied = 0;
    let mut after = None;
    loop {
        let page = peer.ask(ListChunks { after, limit: LIST_MAX, verify: false }).await?;
        layouts.fetch(&meta, page.chunks.iter().map(|l| l.file)).await?;
        for l in &page.chunks {
            let Some(layout) = layouts.on_chain(l.file, l.chunk, chain.id) else { continue };
            present.insert((l.file, l.chunk));
            let ours = store.chunk_info(l.file, l.chunk);
            if let (Some((len, Some(sha))), Some(theirs)) = (ours, l.sha256) {
                if len == l.len && sha == theirs {
                    continue;
                }
            }
            still_current()?;
            let n = copy_chunk(store, &peer, source, l.file, l.chunk, layout.chunk_size()).await?;
            pace.spend(n).await;
            touched.insert(l.file);
            copied += 1;
        }
        after = page.chunks.last().map(|l| (l.file, l.chunk));
        if !page.more {
            break;
        }
    }
    // Ours that the source did not list: cut or removed while we were away, or written since
    // the listing. Asking the source again under the copy rule settles which.
    let mut after = None;
    loop {
        let page = store.list(after, LIST_MAX, false).await?;
        layouts.fetch(&meta, page.chunks.iter().map(|l| l.file)).await?;
        for l in &page.chunks {
            let Some(layout) = layouts.on_chain(l.file, l.chunk, chain.id) else { continue };
            if !present.contains(&(l.file, l.chunk)) {
                still_current()?;
                copy_chunk(store, &peer, source, l.file, l.chunk, layout.chunk_size()).await?;
                touched.insert(l.file);
            }
        }
        after = page.chunks.last().map(|l| (l.file, l.chunk));
        if !page.more {
            break;
        }
    }
    for file in &touched {
        store.make_durable(*file).await?;
    }
    for file in &touched {
        store.flush_reports(Some(*file)).await?;
    }
    still_current()?;
    meta.ask(SyncDone { id: me, chain: chain.at() }).await?;
    Ok(copied)
}

/// Replaces this server's copy of chunk `chunk` of `file` (damaged or lost) by a copy from a
/// serving replica of its chain, trying each; durable and reported to pfs-meta when it
/// returns the bytes copied.
///
/// Errors: Stale when the file is gone or no other replica serves; the last source's error.
pub(crate) async fn repair(
    store: &Arc<ChunkStore>,
    repl: &Replication,
    file: FileId,
    chunk: ChunkIndex,
) -> Result<u64> {
    let me = store.id();
    let meta = meta(store)?;
    let layout = meta.ask(GetLayouts { files: vec![file] }).await?.pop().flatten().ok_or_else(|| {
        StorageError::Stale { current: None, server: me, what: format!("file {file} no longer exists") }
    })?;
    let chain = repl.chain(layout.chain(chunk)).ok_or_else(|| StorageError::Stale {
        current: None,
        server: me,
        what: format!("does not know {}", layout.chain(chunk)),
    })?;
    let mut last = StorageError::Stale {
        current: None,
        server: me,
        what: format!("{} has no other serving replica to copy chunk {chunk} of file {file} from", chain.describe()),
    };
    for source in chain.readers().filter(|s| *s != me) {
        let copied = async {
            let peer = repl.peer(source).await?;
            copy_chunk(store, &peer, source, file, chunk, layout.chunk_size()).await
        };
        match copied.await {
            Ok(n) => {
                store.make_durable(file).await?;
                store.flush_reports(Some(file)).await?;
                return Ok(n);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Copies chunk `chunk` of `file` from `source`; returns the bytes copied.
async fn copy_chunk(
    store: &ChunkStore,
    peer: &RpcClient<StorageRequest>,
    source: ServerId,
    file: FileId,
    chunk: ChunkIndex,
    chunk_size: u64,
) -> Result<u64> {
    for _ in 0..COPY_ATTEMPTS {
        // Watched from before the fetch: a write that reaches us meanwhile is seen.
        let watch = store.watch_writes(file, chunk);
        let (info, data): (_, PooledBuf) = peer.call(SyncRead { file, chunk }, &[]).await?;
        let n = data.len() as u64;
        let block_size = if info.exists { info.block_size } else { 512 };
        if store.install_copy(&watch, chunk_size, block_size, data).await? {
            return Ok(n);
        }
        // A write reached us meanwhile: the copy may predate it.
    }
    Err(StorageError::Stale {
        current: None,
        server: store.id(),
        what: format!("chunk {chunk} of file {file} kept changing while copied from {source}"),
    })
}
