//! The session with pfs-meta: register, a full chunk report, heartbeats, incremental chunk
//! reports, orphan removal and `RemoveFiles` notifications.
//!
//! Runs beside the client request path and never blocks it: when pfs-meta is unreachable or
//! the connection breaks, reads are still served, reports wait in the store's queues, and the
//! session is retried with capped backoff; a reconnection re-registers and sends a full
//! report again. Writes are admitted only while the lease pfs-meta granted at registration
//! runs, renewed by each heartbeat it accepts (see [`crate::fence`]); a refused heartbeat
//! (pfs-meta declared this server down) ends the session, and the next one registers again.

use crate::error::StorageError;
use crate::replication::Replication;
use crate::store::{disk_space, ChunkStore};
use pfs_common::config::Config;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::wire::frame::Frame;
use pfs_common::wire::registry::{Fenced, Heartbeat, Register, StorageNotify, StoragePush, FENCED_MAX};
use pfs_common::wire::{self, MetaRequest, PeerRole};
use pfs_common::ServerId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// First retry delay after pfs-meta is lost, ms (doubles up to [`BACKOFF_MAX_MS`]).
pub const BACKOFF_MIN_MS: u64 = 100;
/// Longest retry delay, ms.
pub const BACKOFF_MAX_MS: u64 = 5_000;

/// Keeps a session with pfs-meta, forever: connect, register, full report, heartbeats;
/// on any failure wait (capped exponential backoff) and start over. Each connection tries
/// the metadata nodes' addresses in turn from the one that last took a connection
/// ([`connect_meta`]).
pub async fn run(config: Arc<Config>, id: ServerId, store: Arc<ChunkStore>, repl: Arc<Replication>) {
    let mut backoff_ms = BACKOFF_MIN_MS;
    let mut failures = 0u64;
    let addresses = config.meta_addresses();
    let mut current = 0;
    loop {
        let mut registered = false;
        let ended = SessionEnded(&store);
        let err = session(&config, &addresses, &mut current, id, &store, &repl, &mut registered).await;
        drop(ended);
        if registered {
            backoff_ms = BACKOFF_MIN_MS;
            failures = 0;
        }
        if err.code() == pfs_common::ErrorCode::NotLeader {
            // A follower answered: the leader is another node; ask the next one soon.
            debug!("{id}: {err}; trying the next metadata node");
            current = (current + 1) % addresses.len().max(1);
            tokio::time::sleep(Duration::from_millis(BACKOFF_MIN_MS)).await;
            continue;
        }
        // Log the first failure of a streak loudly, the repeats quietly.
        if failures == 0 {
            warn!("{id}: session with pfs-meta at {} lost: {err}; retrying", addresses[current]);
        } else {
            debug!("{id}: pfs-meta still unreachable: {err}");
        }
        failures += 1;
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
    }
}

/// Ends a session however it ends, a panic included (the supervisor restarts the worker):
/// its connection is no longer used for reports, and since whatever pfs-meta decides without
/// us (fences, declaring us down) we learn only by registering again, no write is admitted
/// until then.
struct SessionEnded<'a>(&'a ChunkStore);

impl Drop for SessionEnded<'_> {
    fn drop(&mut self) {
        self.0.meta().set(None);
        self.0.fence().lost();
    }
}

/// Connects to pfs-meta: the one place a storage server picks a metadata node's address.
/// Tries `addresses` in turn, starting with the one at index `*current` (the one that last
/// took a connection), moving on to the next when a connection cannot be made, and leaves
/// `*current` at the one that answered.
///
/// Errors: Common (Connect, TimedOut, ...) of the last address tried, naming every address
/// tried.
pub async fn connect_meta(
    addresses: &[SocketAddr],
    current: &mut usize,
    opts: &ConnectOptions,
    notify: Option<mpsc::Sender<Frame>>,
) -> Result<RpcClient<MetaRequest>, StorageError> {
    let (at, client) = RpcClient::connect_any(addresses, *current, "pfs-meta", opts, notify).await?;
    *current = at;
    Ok(client)
}

/// One session; returns the error that ended it.
async fn session(
    config: &Config,
    addresses: &[SocketAddr],
    current: &mut usize,
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
        let client = connect_meta(addresses, current, &opts, Some(notify_tx)).await?;
        let mut drain = tokio::spawn(drain_notifications(store.clone(), repl.clone(), notify_rx, client.clone()));
        let (capacity_bytes, free_bytes) = disk_space(store.dir())?;
        let sent = Instant::now();
        let register = Register { id, address: me.address, capacity_bytes, free_bytes, boot: store.boot() };
        let reg = client.ask(register).await?;
        store.fence().check_term(reg.term)?;
        repl.update(reg.chains, true);
        store.fence().registered(reg.fence_below, &reg.fenced, reg.lease_ms, sent).await;
        store.remove_orphans(reg.orphans);
        info!("{id}: registered with pfs-meta at {} (lease {} ms)", addresses[*current], reg.lease_ms);
        *registered = true;
        let listed = store.full_report(&client).await?;
        info!("{id}: full chunk report sent to pfs-meta ({listed} chunks)");
        store.meta().set(Some(client.clone()));
        store.wake_hasher();
        crate::supervisor::fail_point("meta-link");
        let heartbeats = async {
            let mut tick = tokio::time::interval(Duration::from_millis(config.timeouts.heartbeat_ms));
            loop {
                tick.tick().await;
                let (capacity_bytes, free_bytes) = disk_space(store.dir())?;
                // The lease runs from when the heartbeat was sent: pfs-meta counts it from when
                // it arrives, which is later, so our view of the lease ends first.
                let sent = Instant::now();
                let renewed = client.ask(Heartbeat { id, capacity_bytes, free_bytes }).await?;
                store.fence().check_term(renewed.term)?;
                store.fence().renewed(sent);
            }
            #[allow(unreachable_code)]
            Ok::<(), StorageError>(())
        };
        tokio::select! {
            ended = heartbeats => ended,
            // Fences and removals arrive there: if it panicked, so does the session (the
            // supervisor restarts it, and registering again teaches the fences).
            drained = &mut drain => match drained {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => Err(StorageError::Stopped { what: "pfs-meta's notifications ended".into() }),
            },
        }
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
    mut rx: mpsc::Receiver<Frame>,
    meta: RpcClient<MetaRequest>,
) {
    while let Some(frame) = rx.recv().await {
        let push = match wire::decode::<StoragePush>(&frame.body) {
            Ok(push) => push,
            Err(e) => {
                warn!("{}: undecodable notification from pfs-meta: {e}", store.id());
                continue;
            }
        };
        if let Err(e) = store.fence().check_term(push.term) {
            // Its node was deposed: nothing it sends counts, and the session ends (the next
            // one finds the leader).
            warn!("{e}: {:?} not done", push.notify);
            return;
        }
        match push.notify {
            StorageNotify::RemoveFiles(ids) => {
                debug!("{}: pfs-meta asks to remove {} files", store.id(), ids.len());
                store.remove_orphans(ids);
            }
            StorageNotify::Fence(sessions) => {
                store.fence().fence(&sessions).await;
                info!("{}: fenced sessions {sessions:x?}", store.id());
                // pfs-meta takes at most FENCED_MAX sessions per confirmation.
                for page in sessions.chunks(FENCED_MAX) {
                    if let Err(e) = meta.ask(Fenced { id: store.id(), sessions: page.to_vec() }).await {
                        warn!("{}: confirming a fence to pfs-meta: {e}", store.id());
                    }
                }
            }
            StorageNotify::Chains(chains) => {
                for c in &chains {
                    debug!("{}: {}", store.id(), c.describe());
                }
                repl.update(chains, false);
            }
        }
    }
}
