//! The session with pfs-meta: register, a full chunk report, heartbeats, incremental chunk
//! reports, orphan removal and `RemoveFiles` notifications.
//!
//! Runs beside the client request path and never blocks it: when pfs-meta is unreachable or
//! the connection breaks, reads are still served, reports wait in the store's outbox, and the
//! session is retried with capped backoff; a reconnection re-registers and sends a full
//! report again. Writes are admitted only while the lease pfs-meta granted at registration
//! runs, renewed by each heartbeat it accepts (see [`crate::fence`]); a refused heartbeat
//! (pfs-meta declared this server down) ends the session, and the next one registers again.

use crate::error::{Result, StorageError};
use crate::replication::Replication;
use crate::store::{disk_space, ChunkStore};
use parking_lot::Mutex;
use pfs_common::config::Config;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::wire::registry::{
    ChunkReport, ChunkState, Fenced, Heartbeat, Register, StorageNotify, CHUNK_REPORT_PAGE, FENCED_MAX,
};
use pfs_common::wire::{self, MetaRequest, PeerRole};
use pfs_common::{FileId, ServerId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// First retry delay after pfs-meta is lost, ms (doubles up to [`BACKOFF_MAX_MS`]).
pub const BACKOFF_MIN_MS: u64 = 100;
/// Longest retry delay, ms.
pub const BACKOFF_MAX_MS: u64 = 5_000;

/// Sends chunk reports to pfs-meta over the current session, one report at a time (so an
/// older state of a chunk never overtakes a newer one).
pub struct Reporter {
    id: ServerId,
    client: Mutex<Option<RpcClient<MetaRequest>>>,
    lock: tokio::sync::Mutex<()>,
}

impl Reporter {
    pub(crate) fn new(id: ServerId) -> Self {
        Reporter { id, client: Mutex::new(None), lock: tokio::sync::Mutex::new(()) }
    }

    /// True while a registered session with pfs-meta is up.
    pub fn connected(&self) -> bool {
        self.client.lock().as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The registered session's connection to pfs-meta, if one is up.
    pub fn client(&self) -> Option<RpcClient<MetaRequest>> {
        self.client.lock().clone().filter(|c| !c.is_closed())
    }

    fn set_client(&self, client: Option<RpcClient<MetaRequest>>) {
        *self.client.lock() = client;
    }

    /// Sends every queued chunk state to pfs-meta and waits for the acknowledgements.
    /// States not acknowledged stay queued.
    ///
    /// Errors: Unavailable when no session is up; the RPC error when a report fails.
    pub async fn flush(&self, store: &Arc<ChunkStore>) -> Result<()> {
        let _g = self.lock.lock().await;
        let client =
            self.client.lock().clone().filter(|c| !c.is_closed()).ok_or_else(|| {
                StorageError::Common(pfs_common::Error::Closed { peer: "pfs-meta (no session)".into() })
            })?;
        loop {
            let page: Vec<ChunkState> = {
                let mut st = store.state.lock();
                let mut page = Vec::new();
                while page.len() < CHUNK_REPORT_PAGE {
                    match st.outbox.pop_first() {
                        Some((_, s)) => page.push(s),
                        None => break,
                    }
                }
                page
            };
            if page.is_empty() {
                return Ok(());
            }
            let req = ChunkReport { id: self.id, chunks: page.clone(), listing: false, full: false };
            match client.ask(req).await {
                Ok(answer) => remove_orphans(store, answer.orphans),
                Err(e) => {
                    // Put back what no newer state replaced meanwhile.
                    let mut st = store.state.lock();
                    for s in page {
                        st.outbox.entry((s.file, s.chunk)).or_insert(s);
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Sends the complete listing (paged; the last page has `full: true`). It supersedes
    /// everything queued.
    async fn full_report(&self, store: &Arc<ChunkStore>, client: &RpcClient<MetaRequest>) -> Result<()> {
        let _g = self.lock.lock().await;
        let all = store.snapshot_for_full_report();
        let pages: Vec<&[ChunkState]> =
            if all.is_empty() { vec![&[][..]] } else { all.chunks(CHUNK_REPORT_PAGE).collect() };
        let last = pages.len() - 1;
        for (i, page) in pages.into_iter().enumerate() {
            let req = ChunkReport { id: self.id, chunks: page.to_vec(), listing: true, full: i == last };
            let answer = client.ask(req).await?;
            remove_orphans(store, answer.orphans);
            if let Some(lost) = answer.lost {
                store.reconciled(lost);
            }
        }
        info!("{}: full chunk report sent to pfs-meta ({} chunks)", self.id, all.len());
        Ok(())
    }
}

/// Removes the chunks of files pfs-meta named as orphans (in the background).
fn remove_orphans(store: &Arc<ChunkStore>, ids: Vec<FileId>) {
    if !ids.is_empty() {
        info!("{}: pfs-meta named {} orphaned files; removing their chunks", store.id, ids.len());
        remove_files(store, ids);
    }
}

fn remove_files(store: &Arc<ChunkStore>, ids: Vec<FileId>) {
    let store = store.clone();
    tokio::spawn(async move {
        for id in ids {
            if let Err(e) = store.remove(id).await {
                warn!("{}: removing chunks of file {id}: {e}", store.id);
            }
        }
    });
}

/// Keeps a session with pfs-meta, forever: connect, register, full report, heartbeats;
/// on any failure wait (capped exponential backoff) and start over.
pub async fn run(config: Arc<Config>, id: ServerId, store: Arc<ChunkStore>, repl: Arc<Replication>) {
    let mut backoff_ms = BACKOFF_MIN_MS;
    let mut failures = 0u64;
    loop {
        let mut registered = false;
        let err = session(&config, id, &store, &repl, &mut registered).await;
        store.reporter.set_client(None);
        // Whatever pfs-meta decides without us (fences, declaring us down) we learn only by
        // registering again: admit no writes until then.
        store.fence.lost();
        if registered {
            backoff_ms = BACKOFF_MIN_MS;
            failures = 0;
        }
        // Log the first failure of a streak loudly, the repeats quietly.
        if failures == 0 {
            warn!("{id}: session with pfs-meta at {} lost: {err}; retrying", config.meta.address);
        } else {
            debug!("{id}: pfs-meta still unreachable: {err}");
        }
        failures += 1;
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
    }
}

/// One session; returns the error that ended it.
async fn session(
    config: &Config,
    id: ServerId,
    store: &Arc<ChunkStore>,
    repl: &Arc<Replication>,
    registered: &mut bool,
) -> StorageError {
    let result = async {
        let me = config.storage(id)?;
        let opts = ConnectOptions {
            role: PeerRole::Storage,
            name: id.to_string(),
            connect_timeout: Duration::from_millis(config.timeouts.connect_ms),
            request_timeout: Duration::from_millis(config.timeouts.request_ms),
            auth: repl.auth().clone(),
        };
        let (notify_tx, notify_rx) = mpsc::channel(64);
        let client: RpcClient<MetaRequest> =
            RpcClient::connect(config.meta.address, "pfs-meta", &opts, Some(notify_tx)).await?;
        tokio::spawn(drain_notifications(store.clone(), repl.clone(), notify_rx, client.clone()));
        let (capacity_bytes, free_bytes) = disk_space(store.dir())?;
        let sent = Instant::now();
        let register = Register { id, address: me.address, capacity_bytes, free_bytes, boot: store.boot };
        let reg = client.ask(register).await?;
        repl.update(reg.chains, true);
        store.fence.registered(reg.fence_below, &reg.fenced, reg.lease_ms, sent).await;
        remove_orphans(store, reg.orphans);
        info!("{id}: registered with pfs-meta at {} (lease {} ms)", config.meta.address, reg.lease_ms);
        *registered = true;
        store.reporter.full_report(store, &client).await?;
        store.reporter.set_client(Some(client.clone()));
        store.hasher_wake.notify_one();
        let mut tick = tokio::time::interval(Duration::from_millis(config.timeouts.heartbeat_ms));
        loop {
            tick.tick().await;
            let (capacity_bytes, free_bytes) = disk_space(store.dir())?;
            // The lease runs from when the heartbeat was sent: pfs-meta counts it from when it
            // arrives, which is later, so our view of the lease ends first.
            let sent = Instant::now();
            client.ask(Heartbeat { id, capacity_bytes, free_bytes }).await?;
            store.fence.renewed(sent);
        }
        #[allow(unreachable_code)]
        Ok::<(), StorageError>(())
    }
    .await;
    match result {
        Err(e) => e,
        Ok(()) => StorageError::Stopped { what: "the session with pfs-meta ended".into() },
    }
}

/// Handles pfs-meta's one-way frames until the connection ends.
async fn drain_notifications(
    store: Arc<ChunkStore>,
    repl: Arc<Replication>,
    mut rx: mpsc::Receiver<pfs_common::wire::frame::Frame>,
    meta: RpcClient<MetaRequest>,
) {
    while let Some(frame) = rx.recv().await {
        match wire::decode::<StorageNotify>(&frame.body) {
            Ok(StorageNotify::RemoveFiles(ids)) => {
                debug!("{}: pfs-meta asks to remove {} files", store.id, ids.len());
                remove_files(&store, ids);
            }
            Ok(StorageNotify::Fence(sessions)) => {
                store.fence.fence(&sessions).await;
                info!("{}: fenced sessions {sessions:x?}", store.id);
                // pfs-meta takes at most FENCED_MAX sessions per confirmation.
                for page in sessions.chunks(FENCED_MAX) {
                    if let Err(e) = meta.ask(Fenced { id: store.id, sessions: page.to_vec() }).await {
                        warn!("{}: confirming a fence to pfs-meta: {e}", store.id);
                    }
                }
            }
            Ok(StorageNotify::Chains(chains)) => {
                for c in &chains {
                    debug!("{}: {}", store.id, c.describe());
                }
                repl.update(chains, false);
            }
            Err(e) => warn!("{}: undecodable notification from pfs-meta: {e}", store.id),
        }
    }
}
