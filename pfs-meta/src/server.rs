//! The request handler of pfs-meta: the namespace service (the durable namespace,
//! [`NamespaceStore`]), the token service ([`TokenService`]) and the registry service
//! ([`Registry`] and the [`Holders`] map), each answering its calls with their reply types.
//!
//! Roles are enforced per service: the namespace and token services serve clients; storage
//! servers register, heartbeat, report and confirm fences, and may speak only for the server
//! they registered as; the registry's queries (servers, chunk holders) serve anyone.
//!
//! Lock order: `cluster` may be held while taking the namespace store's lock, never the other
//! way round. The token service's lock is never held while taking another (it tells the
//! registry of servers declared down after releasing it).

use crate::error::{MetaError, Result};
use crate::holders::Holders;
use crate::namespace::{Inode, InodeKind, Op};
use crate::registry::Registry;
use crate::store::NamespaceStore;
use crate::token_service::TokenService;
use crate::tokens::TokenConfig;
use parking_lot::Mutex;
use pfs_common::config::Config;
use pfs_common::pool::PooledBuf;
use pfs_common::rpc::{Handler, Peer, Reply};
use pfs_common::wire::namespace::{self as ns, Attr, DirEntry, DirPage, FileKind, NamespaceRequest};
use pfs_common::wire::registry::{self as reg, Orphans, Registered, RegistryRequest, StorageNotify};
use pfs_common::wire::tokens::{self as tok, Granted, SessionGrant, TokenRequest};
use pfs_common::wire::{MetaRequest, PeerRole};
use pfs_common::{FileId, ServerId};
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

/// The registry side of pfs-meta, behind one lock. (The storage servers' connections, for
/// pushing [`StorageNotify`], are kept by the token service, which fences through them.)
struct Cluster {
    registry: Registry,
    holders: Holders,
}

/// The metadata service.
pub struct MetaServer {
    store: NamespaceStore,
    cluster: Arc<Mutex<Cluster>>,
    tokens: Arc<TokenService>,
}

impl MetaServer {
    /// Opens (recovering) the namespace in `config.meta_dir()`.
    ///
    /// Errors: Corrupt naming the file and byte offset of a damaged log; Io.
    pub fn open(config: &Config) -> Result<MetaServer> {
        let store = NamespaceStore::open(&config.meta_dir(), config.meta.checkpoint_records, config.layout)?;
        let cluster = Arc::new(Mutex::new(Cluster { registry: Registry::new(config), holders: Holders::new() }));
        let t = &config.tokens;
        let registry = cluster.clone();
        let tokens = TokenService::open(
            &config.meta_dir(),
            TokenConfig {
                lease_ms: t.lease_ms,
                revoke_timeout_ms: t.revoke_timeout_ms,
                contention_window_ms: t.contention_window_ms,
                storage_lease_ms: config.timeouts.server_down_ms,
                fence_timeout_ms: t.fence_timeout_ms,
            },
            Box::new(move |server, reason| registry.lock().registry.declare_down(server, reason)),
        )?;
        Ok(MetaServer { store, cluster, tokens: Arc::new(tokens) })
    }

    /// The durable namespace.
    pub fn store(&self) -> &NamespaceStore {
        &self.store
    }

    /// Runs the token manager's timers (lease, revoke and fence expiry) forever.
    pub async fn run_token_ticks(&self) {
        self.tokens.clone().run_ticks().await
    }

    /// Serves one request of the namespace service.
    async fn namespace(&self, req: NamespaceRequest) -> Reply {
        match req {
            NamespaceRequest::Mkdir(c) => {
                Reply::to::<ns::Mkdir, _>(self.mutate(Op::Mkdir { path: c.path }).await.map(drop))
            }
            NamespaceRequest::Create(c) => {
                let op = Op::Create { path: c.path.clone(), layout: c.layout, exclusive: c.exclusive };
                Reply::to::<ns::Create, _>(self.mutate(op).await.and_then(|i| answered(i, &c.path)))
            }
            NamespaceRequest::Lookup(c) => {
                Reply::to::<ns::Lookup, _>(self.query(|n| n.resolve(&c.path).map(attr)).await)
            }
            NamespaceRequest::Stat(c) => Reply::to::<ns::Stat, _>(self.query(|n| n.inode(c.file).map(attr)).await),
            NamespaceRequest::Readdir(c) => Reply::to::<ns::Readdir, _>(
                self.query(|n| {
                    let (entries, more) = n.readdir(&c.path, c.after.as_deref(), c.limit as usize)?;
                    let entries = entries
                        .into_iter()
                        .map(|(name, i)| DirEntry {
                            name: name.to_string(),
                            id: i.id,
                            kind: kind(i.kind),
                            size: i.size,
                            generation: i.generation,
                        })
                        .collect();
                    Ok(DirPage { entries, more })
                })
                .await,
            ),
            NamespaceRequest::Rename(c) => Reply::to::<ns::Rename, _>(
                self.mutate(Op::Rename { from: c.from, to: c.to, expected_generation: c.expected_generation })
                    .await
                    .map(drop),
            ),
            NamespaceRequest::Unlink(c) => Reply::to::<ns::Unlink, _>(
                self.mutate(Op::Unlink { path: c.path, expected_generation: c.expected_generation }).await.map(drop),
            ),
            NamespaceRequest::Rmdir(c) => Reply::to::<ns::Rmdir, _>(
                self.mutate(Op::Rmdir { path: c.path, expected_generation: c.expected_generation }).await.map(drop),
            ),
            NamespaceRequest::Truncate(c) => {
                let what = format!("file {}", c.file);
                let op = Op::Truncate { file: c.file, size: c.size, expected_generation: c.expected_generation };
                Reply::to::<ns::Truncate, _>(self.mutate(op).await.and_then(|i| answered(i, &what)))
            }
            NamespaceRequest::SetSize(c) => {
                Reply::to::<ns::SetSize, _>(self.mutate(Op::SetSize { file: c.file, size: c.size }).await.map(drop))
            }
        }
    }

    /// Runs a read-only namespace query; answers once the state it saw is durable.
    async fn query<T>(&self, f: impl FnOnce(&crate::namespace::Namespace) -> Result<T>) -> Result<T> {
        let (r, lsn) = self.store.read(f);
        self.store.wait_durable(lsn).await?;
        r
    }

    /// Runs a namespace change (durable when it returns) and tells storage servers about
    /// files it removed. Returns the inode the change answers with, if any.
    async fn mutate(&self, op: Op) -> Result<Option<Inode>> {
        let up = self.cluster.lock().registry.up_servers(Instant::now());
        let applied = self.store.execute(&op, &up).await?;
        if !applied.removed_files.is_empty() {
            self.removed(applied.removed_files);
        }
        Ok(applied.inode)
    }

    /// Serves one request of the token service.
    async fn tokens(&self, peer: &Peer, req: TokenRequest) -> Reply {
        let t = &self.tokens;
        match req {
            TokenRequest::OpenSession(_) => {
                let (session, lease_ms) = t.open_session(peer.conn_id, peer.notifier.clone());
                Reply::to::<tok::OpenSession, MetaError>(Ok(SessionGrant { session, lease_ms }))
            }
            TokenRequest::KeepAlive(c) => Reply::to::<tok::KeepAlive, _>(t.keep_alive(c.session)),
            TokenRequest::Acquire(c) => Reply::to::<tok::Acquire, _>(self.acquire(c).await),
            TokenRequest::RevokeDone(c) => Reply::to::<tok::RevokeDone, _>(t.revoke_done(c.session, c.revoke)),
            TokenRequest::Release(c) => Reply::to::<tok::Release, _>(t.release(c.session, c.file, c.range)),
            TokenRequest::CloseSession(c) => Reply::to::<tok::CloseSession, _>(t.close_session(c.session)),
        }
    }

    /// Tokens exist for files only; the size answered is the one at the grant, after every
    /// conflicting holder wrote back and recorded its size.
    async fn acquire(&self, c: tok::Acquire) -> Result<Granted> {
        self.file_size(c.file).await?;
        let g = self.tokens.acquire(c.session, c.file, c.mode, c.required, c.desired).await?;
        let size = self.file_size(c.file).await?;
        Ok(Granted { mode: g.mode, range: g.range, size })
    }

    /// Size in bytes of a regular file, from durable state. Errors: NoSuchFile, IsDir.
    async fn file_size(&self, file: FileId) -> Result<u64> {
        self.query(|n| n.file(file).map(|i| i.size)).await
    }

    /// Serves one request of the registry service.
    async fn registry(&self, peer: &Peer, req: RegistryRequest) -> Reply {
        let now = Instant::now();
        match req {
            RegistryRequest::Register(c) => Reply::to::<reg::Register, _>(self.register(peer, c)),
            RegistryRequest::Heartbeat(c) => Reply::to::<reg::Heartbeat, _>(self.heartbeat(peer, c)),
            RegistryRequest::ChunkReport(c) => Reply::to::<reg::ChunkReport, _>(self.chunk_report(peer, c).await),
            RegistryRequest::Fenced(c) => Reply::to::<reg::Fenced, _>(speaks_for(peer, c.id).map(|()| {
                self.tokens.fenced_by(c.id, c.sessions);
            })),
            RegistryRequest::ListServers(_) => {
                let c = self.cluster.lock();
                Reply::to::<reg::ListServers, MetaError>(Ok(c.registry.list(now, |id| c.holders.count(id))))
            }
            RegistryRequest::GetChunks(c) => Reply::to::<reg::GetChunks, _>(
                async {
                    self.query(|n| n.inode(c.file).map(drop)).await?;
                    Ok::<_, MetaError>(self.cluster.lock().holders.get(c.file, c.first, c.count))
                }
                .await,
            ),
        }
    }

    fn register(&self, peer: &Peer, c: reg::Register) -> Result<Registered> {
        speaks_for(peer, c.id)?;
        // The token service first (it may take the cluster lock to declare servers down).
        let (fenced, lease_ms) = self.tokens.storage_registered(c.id, peer.conn_id, peer.notifier.clone());
        let mut cl = self.cluster.lock();
        cl.registry.register(c.id, c.address, c.capacity_bytes, c.free_bytes, peer.conn_id, Instant::now());
        cl.holders.begin_listing(c.id);
        Ok(Registered { fence_below: self.tokens.fence_below(), fenced, lease_ms, orphans: Vec::new() })
    }

    fn heartbeat(&self, peer: &Peer, c: reg::Heartbeat) -> Result<()> {
        speaks_for(peer, c.id)?;
        self.cluster.lock().registry.check_conn(c.id, peer.conn_id)?;
        self.tokens.storage_heartbeat(c.id)?;
        self.cluster.lock().registry.heartbeat(c.id, c.capacity_bytes, c.free_bytes, peer.conn_id, Instant::now())
    }

    async fn chunk_report(&self, peer: &Peer, c: reg::ChunkReport) -> Result<Orphans> {
        speaks_for(peer, c.id)?;
        let (orphans, lsn) = {
            let mut cl = self.cluster.lock();
            cl.registry.check_conn(c.id, peer.conn_id)?;
            // Existence is judged on the applied state; we answer only once that state is
            // durable, so a server never deletes a file a crash brings back.
            let cl = &mut *cl;
            self.store.read(|n| cl.holders.report(c.id, &c.chunks, c.full, |f| n.exists(f)))
        };
        self.store.wait_durable(lsn).await?;
        if !orphans.is_empty() {
            debug!("{} holds chunks of {} removed files", c.id, orphans.len());
        }
        Ok(Orphans(orphans))
    }

    /// Files left the namespace (durably): forget their chunks and tell their servers.
    fn removed(&self, files: Vec<(FileId, Vec<ServerId>)>) {
        let mut sends = Vec::new();
        {
            let mut c = self.cluster.lock();
            for (file, _) in &files {
                c.holders.remove_file(*file);
            }
        }
        for (file, mut targets) in files {
            targets.sort();
            targets.dedup();
            sends.extend(targets.into_iter().filter_map(|t| Some((t, file, self.tokens.storage_notifier(t)?))));
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

    /// A connection closed: a storage server on it is down; a client's sessions are evicted.
    pub async fn disconnected(&self, peer: &Peer) {
        let server = self.cluster.lock().registry.disconnected(peer.conn_id);
        if let Some(id) = server {
            self.tokens.storage_disconnected(id, peer.conn_id);
        }
        if peer.role == PeerRole::Client {
            self.tokens.connection_lost(peer.conn_id);
        }
    }
}

/// Errors with Forbidden unless `peer` is a storage server (which speaks for `server`; the
/// registry checks it registered on this connection).
fn speaks_for(peer: &Peer, server: ServerId) -> Result<()> {
    if peer.role != PeerRole::Storage {
        return Err(MetaError::Forbidden {
            peer: format!("{} at {}", peer.name, peer.addr),
            role: role_name(peer.role),
            what: format!("speak for {server}"),
        });
    }
    Ok(())
}

fn role_name(role: PeerRole) -> &'static str {
    match role {
        PeerRole::Client => "a client",
        PeerRole::Storage => "a storage server",
        PeerRole::Meta => "a metadata server",
    }
}

/// The inode a change answers with. A change that answers an inode always has one; the
/// error names `what` if not.
fn answered(inode: Option<Inode>, what: &str) -> Result<Attr> {
    inode.map(|i| attr(&i)).ok_or_else(|| MetaError::Invalid(format!("{what}: the change answered no inode")))
}

fn kind(k: InodeKind) -> FileKind {
    match k {
        InodeKind::File => FileKind::File,
        InodeKind::Dir => FileKind::Dir,
    }
}

/// An inode's attributes as sent on the wire.
fn attr(i: &Inode) -> Attr {
    Attr {
        id: i.id,
        kind: kind(i.kind),
        size: i.size,
        mtime_ms: i.mtime_ms,
        ctime_ms: i.ctime_ms,
        generation: i.generation,
        layout: i.layout.clone(),
        entries: i.entries.len() as u64,
    }
}

impl Handler for MetaServer {
    type Request = MetaRequest;

    async fn handle(self: Arc<Self>, peer: Peer, req: MetaRequest, _payload: PooledBuf) -> Reply {
        match req {
            MetaRequest::Namespace(r) if peer.role == PeerRole::Client => self.namespace(r).await,
            MetaRequest::Tokens(r) if peer.role == PeerRole::Client => self.tokens(&peer, r).await,
            MetaRequest::Registry(r) => self.registry(&peer, r).await,
            MetaRequest::Namespace(_) | MetaRequest::Tokens(_) => Reply::error(&MetaError::Forbidden {
                peer: format!("{} at {}", peer.name, peer.addr),
                role: role_name(peer.role),
                what: "use the namespace or token service".into(),
            }),
        }
    }

    async fn disconnected(self: Arc<Self>, peer: Peer) {
        MetaServer::disconnected(&self, &peer).await;
    }
}
