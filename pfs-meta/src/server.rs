//! The request handler of pfs-meta: routes each [`MetaRequest`] to the durable namespace
//! ([`Store`]), the [`Registry`] or the [`Holders`] map, and pushes chunk removals to storage
//! servers.
//!
//! Lock order: `cluster` may be held while taking the store's lock (to check file existence
//! for chunk reports), never the other way round.

use crate::holders::Holders;
use crate::registry::Registry;
use crate::store::Store;
use crate::token_service::{StorageLinks, TokenService};
use crate::tokens::TokenConfig;
use parking_lot::Mutex;
use pfs_common::config::Config;
use pfs_common::pool::PooledBuf;
use pfs_common::rpc::{Handler, Notifier, Peer, Reply};
use pfs_common::wire::meta::{MetaRequest, MetaResponse};
use pfs_common::wire::storage::StorageNotify;
use pfs_common::wire::Role;
use pfs_common::{ErrorCode, FileId, PfsError, Result, ServerId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

struct Cluster {
    registry: Registry,
    holders: Holders,
    /// Connections of registered storage servers, for pushing [`StorageNotify`].
    notifiers: HashMap<ServerId, (u64, Notifier)>,
}

/// The metadata service.
pub struct MetaServer {
    store: Store,
    cluster: Mutex<Cluster>,
    tokens: Arc<TokenService>,
    /// Storage servers' connections, for fencing.
    links: StorageLinks,
}

impl MetaServer {
    /// Opens (recovering) the namespace in `config.meta_dir()`.
    ///
    /// Errors: Io naming the file and byte offset of a corrupt log.
    pub fn open(config: &Config) -> Result<MetaServer> {
        let store = Store::open(&config.meta_dir(), config.meta.checkpoint_records, config.layout)?;
        let t = &config.tokens;
        let tokens = TokenService::open(
            &config.meta_dir(),
            TokenConfig {
                lease_ms: t.lease_ms,
                revoke_timeout_ms: t.revoke_timeout_ms,
                contention_window_ms: t.contention_window_ms,
            },
        )?;
        Ok(MetaServer {
            store,
            tokens: Arc::new(tokens),
            links: StorageLinks::default(),
            cluster: Mutex::new(Cluster {
                registry: Registry::new(config),
                holders: Holders::new(),
                notifiers: HashMap::new(),
            }),
        })
    }

    /// The durable namespace.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs the token manager's timers (lease and revoke expiry) forever.
    pub async fn run_token_ticks(&self) {
        self.tokens.clone().run_ticks(self.links.clone()).await
    }

    /// Handles one request from `peer`.
    ///
    /// Errors: those of the namespace, registry and holder map, each naming the path, file or
    /// server; Invalid for storage-server requests from a non-storage connection.
    pub async fn dispatch(&self, peer: &Peer, req: MetaRequest) -> Result<MetaResponse> {
        let now = Instant::now();
        match req {
            MetaRequest::Register { id, address, capacity_bytes, free_bytes } => {
                require_storage(peer, id)?;
                let mut c = self.cluster.lock();
                c.registry.register(id, address, capacity_bytes, free_bytes, peer.conn_id, now);
                c.holders.begin_listing(id);
                c.notifiers.insert(id, (peer.conn_id, peer.notifier.clone()));
                self.links.set(id, peer.notifier.clone());
                Ok(MetaResponse::Registered {
                    orphans: Vec::new(),
                    fence_below: self.tokens.fence_below(),
                    fenced: self.tokens.fenced(),
                })
            }
            MetaRequest::Fenced { id, sessions } => {
                require_storage(peer, id)?;
                self.tokens.fenced_by(id, &sessions);
                Ok(MetaResponse::Done)
            }
            MetaRequest::OpenSession => {
                let (session, lease_ms) =
                    self.tokens.open_session(peer.conn_id, peer.notifier.clone(), &self.links).await;
                Ok(MetaResponse::Session { session, lease_ms })
            }
            MetaRequest::KeepAlive { session } => {
                self.tokens.keep_alive(session, &self.links).await.map(|()| MetaResponse::Done)
            }
            MetaRequest::Acquire { session, file, mode, required, desired } => {
                // Tokens exist for files only; the size answered is the one at the grant, after
                // every conflicting holder wrote back and recorded its size.
                self.file_size(file).await?;
                let g = self.tokens.acquire(session, file, mode, required, desired, &self.links).await?;
                let size = self.file_size(file).await?;
                Ok(MetaResponse::Granted { mode: g.mode, range: g.range, size })
            }
            MetaRequest::RevokeDone { session, revoke } => {
                self.tokens.revoke_done(session, revoke, &self.links).await.map(|()| MetaResponse::Done)
            }
            MetaRequest::Release { session, file, range } => {
                self.tokens.release(session, file, range, &self.links).await.map(|()| MetaResponse::Done)
            }
            MetaRequest::CloseSession { session } => {
                self.tokens.close_session(session, &self.links).await.map(|()| MetaResponse::Done)
            }
            MetaRequest::Heartbeat { id, capacity_bytes, free_bytes } => {
                require_storage(peer, id)?;
                self.cluster.lock().registry.heartbeat(id, capacity_bytes, free_bytes, peer.conn_id, now)?;
                Ok(MetaResponse::Done)
            }
            MetaRequest::ChunkReport { id, chunks, full } => {
                require_storage(peer, id)?;
                let (orphans, lsn) = {
                    let mut c = self.cluster.lock();
                    c.registry.check_conn(id, peer.conn_id)?;
                    // Existence is judged on the applied state; we answer only once that
                    // state is durable, so a server never deletes a file a crash brings back.
                    let (orphans, lsn) = self.store.read(|ns| c.holders.report(id, &chunks, full, |f| ns.exists(f)));
                    (orphans, lsn)
                };
                self.store.wait_durable(lsn).await?;
                if !orphans.is_empty() {
                    debug!("{id} holds chunks of {} removed files", orphans.len());
                }
                Ok(MetaResponse::Orphans(orphans))
            }
            MetaRequest::ListServers => {
                let c = self.cluster.lock();
                Ok(MetaResponse::Servers(c.registry.list(now, |id| c.holders.count(id))))
            }
            MetaRequest::GetChunks { file, first, count } => {
                let (exists, lsn) = self.store.read(|ns| ns.exists(file));
                if !exists {
                    return Err(PfsError::new(ErrorCode::NotFound, format!("file {file} does not exist")));
                }
                self.store.wait_durable(lsn).await?;
                Ok(MetaResponse::Chunks(self.cluster.lock().holders.get(file, first, count)))
            }
            req => {
                let up = self.cluster.lock().registry.up_servers(now);
                let applied = self.store.execute(&req, &up).await?;
                if !applied.removed_files.is_empty() {
                    self.removed(applied.removed_files);
                }
                Ok(applied.response)
            }
        }
    }

    /// Files left the namespace (durably): forget their chunks and tell their servers.
    fn removed(&self, files: Vec<(FileId, Vec<ServerId>)>) {
        let mut sends = Vec::new();
        {
            let mut c = self.cluster.lock();
            for (file, targets) in files {
                c.holders.remove_file(file);
                let mut targets = targets;
                targets.sort();
                targets.dedup();
                for server in targets {
                    if let Some((_, n)) = c.notifiers.get(&server) {
                        sends.push((server, file, n.clone()));
                    }
                }
            }
        }
        for (server, file, notifier) in sends {
            tokio::spawn(async move {
                if let Err(e) = notifier.notify(&StorageNotify::RemoveFiles(vec![file])).await {
                    // The server collects the chunks as orphans when it registers again.
                    warn!("telling {server} to remove file {file} failed: {e}");
                }
            });
        }
    }

    /// Size in bytes of a regular file, from durable state. Errors: NotFound, IsDir.
    async fn file_size(&self, file: FileId) -> Result<u64> {
        let (attr, lsn) = self.store.read(|ns| ns.get(file).map(|i| i.attr()));
        self.store.wait_durable(lsn).await?;
        match attr {
            None => Err(PfsError::new(ErrorCode::NotFound, format!("file {file} does not exist"))),
            Some(a) if a.kind == pfs_common::wire::meta::FileKind::Dir => {
                Err(PfsError::new(ErrorCode::IsDir, format!("{file} is a directory; tokens cover files")))
            }
            Some(a) => Ok(a.size),
        }
    }

    /// A connection closed: a storage server on it is down; a client's sessions are evicted.
    pub async fn disconnected(&self, peer: &Peer) {
        {
            let mut c = self.cluster.lock();
            if let Some(id) = c.registry.disconnected(peer.conn_id) {
                if c.notifiers.get(&id).is_some_and(|(conn, _)| *conn == peer.conn_id) {
                    c.notifiers.remove(&id);
                    self.links.remove(id);
                }
            }
        }
        if peer.role == Role::Client {
            self.tokens.connection_lost(peer.conn_id, &self.links).await;
        }
    }
}

fn require_storage(peer: &Peer, id: ServerId) -> Result<()> {
    if peer.role != Role::Storage {
        return Err(PfsError::new(
            ErrorCode::Invalid,
            format!("{} ({}) is not a storage server and cannot speak for {id}", peer.name, peer.addr),
        ));
    }
    Ok(())
}

impl Handler for MetaServer {
    type Request = MetaRequest;

    async fn handle(self: Arc<Self>, peer: Peer, req: MetaRequest, _payload: PooledBuf) -> Reply {
        Reply::from_result(self.dispatch(&peer, req).await)
    }

    async fn disconnected(self: Arc<Self>, peer: Peer) {
        MetaServer::disconnected(&self, &peer).await;
    }
}
