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
use crate::namespace::{Commit, Inode, InodeKind, Namespace, Op, ServerView};
use crate::opens::OpenTable;
use crate::raft::network::Network;
use crate::registry::Registry;
use crate::store::{NamespaceStore, NodeOptions};
use crate::token_service::{SessionEnd, TokenService};
use crate::tokens::TokenConfig;
use parking_lot::Mutex;
use pfs_common::auth::Auth;
use pfs_common::capability::{Capability, CapabilityIssuer};
use pfs_common::chain::{Chain, ReplicaState};
use pfs_common::config::Config;
use pfs_common::layout::Layout;
use pfs_common::pool::PooledBuf;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::rpc::{Handler, Peer, Reply};
use pfs_common::token::SessionId;
use pfs_common::token::{ByteRange, Mode};
use pfs_common::wire::namespace::{
    self as ns, Attr, DirEntry, DirPage, FileKind, NamespaceRequest, NewAttrs, CLOSE_MAX,
};
use pfs_common::wire::raft::{AddMember, GetStatus, RaftRequest, RemoveMember};
use pfs_common::wire::registry::{
    self as reg, ChunkInfo, CommittedChunk, Health, LostChunk, OrphanCopy, Registered, RegistryRequest, Renewed,
    ReportAnswer, StorageNotify, CHUNK_REPORT_PAGE, FENCED_MAX, GET_CHUNKS_MAX,
};
use pfs_common::wire::storage::{RemoveChunk, RemoveFile, StorageRequest};
use pfs_common::wire::tokens::{self as tok, Granted, SessionGrant, TokenRequest};
use pfs_common::wire::{MetaRequest, PeerRole};
use pfs_common::{FileId, ServerId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// The registry side of pfs-meta, behind one lock. (The storage servers' connections, for
/// pushing [`StorageNotify`], are kept by the token service, which fences through them.)
struct Cluster {
    registry: Registry,
    holders: Holders,
}

/// Sessions that ended, waiting for the reaper (see [`MetaServer::run_reaper`]), with
/// whether they were evicted (the reaper logs that).
#[derive(Default)]
struct Ended {
    sessions: Mutex<Vec<SessionEnd>>,
    /// A leadership term began: once its recovery window is closed, the orphans nobody
    /// reclaimed an open of are removed.
    orphan_pass: std::sync::atomic::AtomicBool,
    wake: Notify,
}

/// The metadata service.
pub struct MetaServer {
    store: NamespaceStore,
    cluster: Arc<Mutex<Cluster>>,
    tokens: Arc<TokenService>,
    /// Files each session has open. Lock order: taken under the store's lock (by `is_open`
    /// during a change), so never held while calling into the store.
    opens: Mutex<OpenTable>,
    ended: Arc<Ended>,
    /// Wakes the chain keeper (a server came, went or restarted).
    keeper_wake: Notify,
    /// Woken when a storage server comes up (its chunk listing answered): placement waits
    /// for it early in a term ([`MetaServer::placement_ready`]).
    server_up: Notify,
    /// Held while a chain change is planned and logged (keeper passes, registrations of
    /// restarted servers, `SyncDone`), so they never plan on a state another is changing.
    chain_lock: tokio::sync::Mutex<()>,
    /// Storage servers' heartbeat period (the keeper's tick) and the re-replication delay, ms.
    heartbeat_ms: u64,
    rereplicate_after_ms: u64,
    /// MACs the capabilities clients show storage servers (`None` with `auth = "none"`).
    capabilities: Option<CapabilityIssuer>,
    /// How pfs-meta connects to a storage server itself (to remove orphaned chunks).
    storage_connect: ConnectOptions,
}

impl MetaServer {
    /// Opens (recovering) the namespace of metadata node `id` in its data directory
    /// (`config.meta_dir(id)`).
    ///
    /// Errors: Common (Config) when the config names no metadata node `id`; Corrupt naming the
    /// file and byte offset of a damaged log; Io.
    pub async fn open(config: &Config, id: u64, auth: &Auth) -> Result<MetaServer> {
        let node = config.pick_meta_node(Some(id))?;
        let dir = config.meta_dir(id)?;
        let storage_connect = ConnectOptions {
            role: PeerRole::Meta,
            name: format!("meta-{id}"),
            connect_timeout: std::time::Duration::from_millis(config.timeouts.connect_ms),
            request_timeout: std::time::Duration::from_millis(config.timeouts.request_ms),
            auth: auth.clone(),
        };
        let members = config.meta_nodes().iter().map(|n| (n.id, openraft::BasicNode::new(n.address))).collect();
        let opts = NodeOptions {
            id,
            dir: dir.clone(),
            members,
            snapshot_entries: node.checkpoint_records,
            root_policy: config.layout,
            probe: (config.meta_nodes().len() > 1).then(|| storage_connect.clone()),
        };
        let network = Network { me: id, connect: storage_connect.clone() };
        let store = NamespaceStore::open(opts, network).await?;
        let cluster = Arc::new(Mutex::new(Cluster { registry: Registry::new(config), holders: Holders::new() }));
        let t = &config.tokens;
        let registry = cluster.clone();
        let ended = Arc::new(Ended::default());
        let session_ended = ended.clone();
        let tokens = TokenService::open(
            TokenConfig {
                lease_ms: t.lease_ms,
                revoke_timeout_ms: t.revoke_timeout_ms,
                contention_window_ms: t.contention_window_ms,
                storage_lease_ms: config.timeouts.server_down_ms,
                fence_timeout_ms: t.fence_timeout_ms,
            },
            id,
            Box::new(move |server, reason| registry.lock().registry.declare_down(server, reason)),
            Box::new(move |ended| {
                if let Some(e) = ended {
                    session_ended.sessions.lock().push(e);
                }
                session_ended.wake.notify_one();
            }),
            store.lease_check(),
        );
        Ok(MetaServer {
            store,
            cluster,
            tokens: Arc::new(tokens),
            opens: Mutex::new(OpenTable::new()),
            ended,
            keeper_wake: Notify::new(),
            server_up: Notify::new(),
            chain_lock: tokio::sync::Mutex::new(()),
            heartbeat_ms: config.timeouts.heartbeat_ms,
            rereplicate_after_ms: config.timeouts.rereplicate_after_ms,
            capabilities: auth.capability_key().map(|k| CapabilityIssuer::new(k, config.tokens.capability_ms)),
            storage_connect,
        })
    }

    /// Keeps the replication chains in step with the storage servers, forever: on every
    /// change of the registry (and every heartbeat period, so time-based decisions are taken
    /// too) it plans the membership changes ([`crate::namespace::ChainTable::plan`]), logs them
    /// and pushes them to the storage servers. Errors: WalFailed / Io if the log fails.
    pub async fn run_chain_keeper(&self) -> Result<()> {
        let tick = std::time::Duration::from_millis(self.heartbeat_ms.max(10));
        loop {
            let woken = self.keeper_wake.notified();
            // Only the leader keeps chains; a follower's pass answers NotLeader.
            match self.keep_chains(&Default::default()).await {
                Err(MetaError::NotLeader { .. }) => {}
                r => r?,
            }
            let _ = tokio::time::timeout(tick, woken).await;
        }
    }

    /// One pass of the chain keeper; `restarted` servers are resynced.
    async fn keep_chains(&self, restarted: &std::collections::BTreeSet<ServerId>) -> Result<()> {
        // Only for a term the token service acts for: its registry is that term's (see
        // `Registry::begin_term`), so a server not yet registered with a new leader is not
        // taken for gone.
        self.tokens_ready().await?;
        let _one_change_at_a_time = self.chain_lock.lock().await;
        let now = Instant::now();
        let (view, plan) = {
            let cl = self.cluster.lock();
            let ids = cl.registry.ids();
            let view = ServerView {
                up: ids.iter().copied().filter(|s| cl.registry.up(*s, now)).collect(),
                gone: ids.iter().copied().filter(|s| cl.registry.gone(*s, now)).collect(),
                restarted: restarted.clone(),
                now_ms: (crate::store::now_ns() / 1_000_000) as u64,
                rereplicate_after_ms: self.rereplicate_after_ms,
            };
            let plan = self.store.read(|n| n.chains().plan(&view))?.0;
            (view, plan)
        };
        if !plan.is_empty() {
            for c in &plan {
                info!("chain change: {} (servers up: {:?})", c.describe(), view.up);
            }
            match self.mutate(Op::SetChains { chains: plan }).await {
                // Cannot happen under the chain lock (creates add chains, never change them);
                // if it did, the next pass plans again.
                Err(e @ MetaError::ChainUpdate(_)) => warn!("chain change not applied: {e}"),
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }

    /// Tells every storage server with a session about changed chains.
    fn push_chains(&self, chains: Vec<Chain>) {
        let ids = self.cluster.lock().registry.ids();
        let msg = StorageNotify::Chains(chains);
        for server in ids {
            if let Some(pusher) = self.tokens.storage_pusher(server) {
                let msg = msg.clone();
                tokio::spawn(async move {
                    // Versions only grow, so a late push is ignored; a server that missed one
                    // gets the whole table when it registers again.
                    if let Err(e) = pusher.push(msg).await {
                        debug!("pushing chains to {server}: {e}");
                    }
                });
            }
        }
    }

    /// Logs the evictions of sessions and removes the files that were unlinked while open
    /// and that nobody has open any more: those of sessions as they end, and, once the
    /// recovery window of a new leadership term is closed, every orphan of the log that no
    /// session reclaimed an open of. Errors: WalFailed / Io if the log fails.
    pub async fn run_reaper(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        loop {
            let notified = self.ended.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let ended = std::mem::take(&mut *self.ended.sessions.lock());
            for SessionEnd { session, evicted, logged } in ended {
                if evicted {
                    // The next leader must refuse it too (and not wait for it to reclaim).
                    match self.mutate(Op::EndSession { session, evicted: true }).await {
                        Ok(_) => {
                            if let Some(logged) = logged {
                                let _ = logged.send(());
                            }
                        }
                        Err(MetaError::NotLeader { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                let freed = self.opens.lock().end_session(session);
                for file in freed {
                    self.reap(file).await?;
                }
            }
            if !self.tokens.recovering() && self.ended.orphan_pass.swap(false, Ordering::AcqRel) {
                let orphans = match self.store.read(|n| n.orphans().iter().copied().collect::<Vec<_>>()) {
                    Ok((o, _)) => o,
                    Err(MetaError::NotLeader { .. }) => Vec::new(),
                    Err(e) => return Err(e),
                };
                let unopened: Vec<FileId> = orphans.into_iter().filter(|f| !self.opens.lock().is_open(*f)).collect();
                if !unopened.is_empty() {
                    info!("removing {} files unlinked while open that no session reclaimed", unopened.len());
                }
                for file in unopened {
                    self.reap(file).await?;
                }
            }
            if self.ended.sessions.lock().is_empty() {
                notified.await;
            }
        }
    }

    /// Follows this node's leadership: the token service acts for each term it leads (from
    /// the log's sessions, in recovery) and stops when the term ends. Runs for ever.
    pub async fn run_terms(&self) {
        let mut terms = self.store.terms();
        loop {
            let term = *terms.borrow_and_update();
            match term {
                Some(t) => {
                    let _ = self.begin_term(t);
                }
                None => {
                    if let Some(t) = self.tokens.term() {
                        self.tokens.end_term(t);
                    }
                }
            }
            if terms.changed().await.is_err() {
                return;
            }
        }
    }

    /// Starts the token service's term `term` if it has not started (from this term's
    /// namespace: its sessions reclaim). Errors: NotLeader.
    fn begin_term(&self, term: u64) -> Result<()> {
        if self.tokens.term() == Some(term) {
            return Ok(());
        }
        let ((open, evicted), _) = self.store.read(|n| {
            let t = n.sessions();
            (t.open_sessions().collect::<Vec<_>>(), t.evicted())
        })?;
        // Opens are reclaimed with the tokens; the old table is of another term.
        let opens = std::mem::take(&mut *self.opens.lock());
        if self.tokens.begin_term(term, open, evicted) {
            self.cluster.lock().registry.begin_term(Instant::now());
            self.ended.orphan_pass.store(true, std::sync::atomic::Ordering::Release);
            self.ended.wake.notify_one();
        } else {
            *self.opens.lock() = opens;
        }
        Ok(())
    }

    /// Waits until this node leads with its lease and the token service acts for its term;
    /// returns the term. Errors: NotLeader.
    async fn tokens_ready(&self) -> Result<u64> {
        self.store.ready().await?;
        let term = self.store.leading_term()?;
        self.begin_term(term)?;
        Ok(term)
    }

    /// Drops `file` if it is an orphan nobody has open (a no-op otherwise).
    async fn reap(&self, file: FileId) -> Result<()> {
        match self.mutate(Op::Reap { file }).await {
            // Not the leader (any more): the leader reaps its own orphans.
            Err(MetaError::NotLeader { .. }) => Ok(()),
            r => r.map(drop),
        }
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
    async fn namespace(&self, peer: &Peer, req: NamespaceRequest) -> Reply {
        // A change named by a request id is done once, in the name of a session of this
        // connection (another's would spend its slots).
        let request = req.request();
        if let Some(r) = request {
            if let Err(e) = self.own(peer, r.session) {
                return Reply::error(&e);
            }
        }
        let tag = move |op: Op| match request {
            Some(request) => Op::Request { request, op: Box::new(op) },
            None => op,
        };
        match req {
            NamespaceRequest::Mkdir(c) => Reply::to::<ns::Mkdir, _>(
                self.mutate_at(&c.target, |path| tag(Op::Mkdir { path, attrs: c.attrs }))
                    .await
                    .and_then(|i| answered(i, "mkdir")),
            ),
            NamespaceRequest::Create(c) => Reply::to::<ns::Create, _>(self.create(peer, c).await),
            NamespaceRequest::Mknod(c) => {
                let op = |path| tag(Op::MakeNode { path, kind: c.kind, rdev: c.rdev, symlink: None, attrs: c.attrs });
                Reply::to::<ns::Mknod, _>(self.mutate_at(&c.target, op).await.and_then(|i| answered(i, "mknod")))
            }
            NamespaceRequest::Symlink(c) => {
                let attrs = NewAttrs { mode: 0o777, uid: c.uid, gid: c.gid };
                let op =
                    |path| tag(Op::MakeNode { path, kind: FileKind::Symlink, rdev: 0, symlink: Some(c.link), attrs });
                Reply::to::<ns::Symlink, _>(self.mutate_at(&c.target, op).await.and_then(|i| answered(i, "symlink")))
            }
            NamespaceRequest::Link(c) => Reply::to::<ns::Link, _>(
                self.mutate_at(&c.target, |path| tag(Op::Link { file: c.file, path }))
                    .await
                    .and_then(|i| answered(i, "link")),
            ),
            NamespaceRequest::SetAttr(c) => {
                let op =
                    Op::SetAttr { file: c.file, mode: c.mode, uid: c.uid, gid: c.gid, atime: c.atime, mtime: c.mtime };
                Reply::to::<ns::SetAttr, _>(self.mutate(op).await.and_then(|i| answered(i, "setattr")))
            }
            NamespaceRequest::Open(c) => Reply::to::<ns::Open, _>(self.open_file(peer, c).await),
            NamespaceRequest::Close(c) => Reply::to::<ns::Close, _>(self.close_file(peer, c).await),
            NamespaceRequest::Lookup(c) => Reply::to::<ns::Lookup, _>(
                self.query_inodes(|n, read| n.lookup_traced(&c.target, read).map(attr)).await,
            ),
            NamespaceRequest::Stat(c) => Reply::to::<ns::Stat, _>(
                self.query_inodes(|n, read| n.lookup_traced(&ns::Target::Id(c.file), read).map(attr)).await,
            ),
            NamespaceRequest::Readdir(c) => Reply::to::<ns::Readdir, _>(
                self.query(|n| {
                    let path = match &c.dir {
                        ns::Target::Id(id) => n.dir_path(*id)?,
                        t => n.target_path(t)?,
                    };
                    let (entries, more) = n.readdir(&path, c.after.as_deref(), c.limit as usize)?;
                    let entries = entries
                        .into_iter()
                        .map(|(name, i)| DirEntry {
                            name: name.to_string(),
                            id: i.id,
                            kind: i.kind,
                            size: i.size,
                            generation: i.generation,
                        })
                        .collect();
                    Ok(DirPage { entries, more })
                })
                .await,
            ),
            NamespaceRequest::Rename(c) => Reply::to::<ns::Rename, _>(
                self.mutate_with(|n| {
                    Ok(tag(Op::Rename {
                        from: n.target_path(&c.from)?,
                        to: n.target_path(&c.to)?,
                        expected_generation: c.expected_generation,
                        no_replace: c.no_replace,
                    }))
                })
                .await
                .map(drop),
            ),
            NamespaceRequest::Unlink(c) => Reply::to::<ns::Unlink, _>(
                self.mutate_at(&c.target, |path| tag(Op::Unlink { path, expected_generation: c.expected_generation }))
                    .await
                    .map(drop),
            ),
            NamespaceRequest::Rmdir(c) => Reply::to::<ns::Rmdir, _>(
                self.mutate_at(&c.target, |path| tag(Op::Rmdir { path, expected_generation: c.expected_generation }))
                    .await
                    .map(drop),
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

    /// Creates a file; with a session, also opens it for that session, in the same step as
    /// the create (under the store's lock), so nobody can remove it in between and the
    /// answer waits for one commit only: the create's. A create named by a request id (whose
    /// session `namespace` checked) is done once.
    async fn create(&self, peer: &Peer, c: ns::Create) -> Result<Attr> {
        if let (Some(r), Some(s)) = (c.request, c.session) {
            if r.session != s {
                return Err(MetaError::Invalid(format!(
                    "a create for session {s:x} named by a request of session {:x}",
                    r.session
                )));
            }
        }
        if let Some(session) = c.session {
            self.tokens.check_owner(session, peer.conn_id, &peer.name)?;
            self.close_files(session, &c.closed).await?;
        } else if !c.closed.is_empty() {
            return Err(MetaError::Invalid("a create without a session carries closes".into()));
        }
        self.placement_ready().await;
        let what = c.target.to_string();
        let make = |n: &Namespace| {
            let path = n.target_path(&c.target)?;
            let op = Op::Create { path, layout: c.layout, exclusive: c.exclusive, attrs: c.attrs };
            Ok(match c.request {
                Some(request) => Op::Request { request, op: Box::new(op) },
                None => op,
            })
        };
        // A repeat opens the file only if the first one's open is not here (it was made on a
        // leader before a failover, and the client, without the answer, could not reclaim it).
        let open = |inode: Option<&Inode>, replayed: bool| {
            if let (Some(session), Some(inode)) = (c.session, inode) {
                let mut opens = self.opens.lock();
                if !(replayed && opens.has_open(session, inode.id)) {
                    opens.open(session, inode.id);
                }
            }
        };
        self.mutate_then(make, open).await.and_then(|i| answered(i, &what))
    }

    /// Resolves a target to a file and records that the session has it open.
    async fn open_file(&self, peer: &Peer, c: ns::Open) -> Result<Attr> {
        self.tokens.check_owner(c.session, peer.conn_id, &peer.name)?;
        self.close_files(c.session, &c.closed).await?;
        let (opened, lsn) = self
            .store
            .read_inodes_ready(|n, read| {
                let inode = n.lookup_traced(&c.target, read)?;
                if inode.kind != InodeKind::File {
                    return Err(MetaError::IsDir { path: c.target.to_string() });
                }
                if inode.nlink == 0 {
                    // An orphan by id: only those who had it open before its last name went.
                    return Err(MetaError::NoSuchFile { file: inode.id });
                }
                // Under the store's lock: no removal can slip between the lookup and this.
                self.opens.lock().open(c.session, inode.id);
                Ok(attr(inode))
            })
            .await?;
        self.store.wait_committed(lsn).await?;
        opened
    }
    /// The session closed the file: an orphan nobody has open any more goes.
    async fn close_file(&self, peer: &Peer, c: ns::Close) -> Result<()> {
        self.tokens.check_owner(c.session, peer.conn_id, &peer.name)?;
        self.close_files(c.session, &c.files).await
    }

    /// The session closed `files` (at most [`CLOSE_MAX`]): orphans nobody has open any more
    /// go. Errors: Invalid (too many), WalFailed / Io.
    async fn close_files(&self, session: SessionId, files: &[ns::Closed]) -> Result<()> {
        if files.len() > CLOSE_MAX {
            return Err(MetaError::Invalid(format!("{} closes in one request (at most {CLOSE_MAX})", files.len())));
        }
        for c in files {
            let freed = self.opens.lock().close(session, c.file, c.opens);
            // Only an orphan goes (checked first: a no-op change would still wait for the WAL).
            if freed && self.store.read(|n| n.orphans().contains(&c.file))?.0 {
                self.reap(c.file).await?;
            }
        }
        Ok(())
    }

    /// Runs a read-only namespace query; answers once the state it saw is durable (every
    /// change applied so far).
    async fn query<T>(&self, f: impl FnOnce(&crate::namespace::Namespace) -> Result<T>) -> Result<T> {
        let (r, seen) = self.store.read_ready(f).await?;
        self.store.wait_committed(seen).await?;
        r
    }

    /// Runs a read-only query of inodes (`f` names those it read, see
    /// [`NamespaceStore::read_inodes`]); answers once their last changes are durable, without
    /// waiting for changes of other inodes in flight.
    async fn query_inodes<T>(&self, f: impl FnOnce(&Namespace, &mut Vec<FileId>) -> Result<T>) -> Result<T> {
        let (r, seen) = self.store.read_inodes_ready(f).await?;
        self.store.wait_committed(seen).await?;
        r
    }

    /// Runs a namespace change (durable when it returns) and tells storage servers about
    /// files it removed. Returns the inode the change answers with, if any.
    async fn mutate(&self, op: Op) -> Result<Option<Inode>> {
        self.mutate_with(|_| Ok(op)).await
    }

    /// [`MetaServer::mutate`] of the operation `make` builds from `target`'s path now.
    async fn mutate_at(&self, target: &ns::Target, make: impl FnOnce(String) -> Op) -> Result<Option<Inode>> {
        self.mutate_with(|n| Ok(make(n.target_path(target)?))).await
    }

    /// [`MetaServer::mutate`] of the operation `make` builds under the store's lock.
    async fn mutate_with(&self, make: impl FnOnce(&Namespace) -> Result<Op>) -> Result<Option<Inode>> {
        self.mutate_then(make, |_, _| ()).await
    }

    /// [`MetaServer::mutate_with`], calling `then` with the inode answered under the store's
    /// lock (see [`NamespaceStore::execute_then`]).
    async fn mutate_then(
        &self,
        make: impl FnOnce(&Namespace) -> Result<Op>,
        then: impl FnOnce(Option<&Inode>, bool),
    ) -> Result<Option<Inode>> {
        let up = self.cluster.lock().registry.up_servers(Instant::now());
        // While sessions reclaim, any file may be open in one that has not yet: a file
        // removed then is kept as an orphan, and reaped after the window if nobody reclaimed
        // an open of it.
        let is_open = |f: FileId| self.tokens.recovering() || self.opens.lock().is_open(f);
        let applied = self.store.execute_then(make, &up, &is_open, then).await?;
        if !applied.removed_files.is_empty() {
            self.removed(applied.removed_files);
        }
        if !applied.chains.is_empty() {
            self.push_chains(applied.chains);
        }
        Ok(applied.inode)
    }

    /// Waits while storage servers that registered before have not come up with this leader
    /// yet, at most [`crate::registry::SETTLE_HEARTBEATS`] heartbeat periods from the start of
    /// its term ([`Registry::settling`]): a new file is placed on the servers that are up, and
    /// right after an election none or few have registered. Returns at once after that.
    async fn placement_ready(&self) {
        loop {
            let woken = self.server_up.notified();
            let known = |id| self.store.read(|n| n.boot_of(id).is_some()).is_ok_and(|(known, _)| known);
            let Some(left) = self.cluster.lock().registry.settling(Instant::now(), known) else { return };
            let _ = tokio::time::timeout(left, woken).await;
        }
    }

    /// Serves one request of the token service.
    async fn tokens(&self, peer: &Peer, req: TokenRequest) -> Reply {
        let t = &self.tokens;
        // Every call but OpenSession names a session, which must be one this connection opened.
        if let Some(session) = req.session() {
            if let Err(e) = self.own(peer, session) {
                return Reply::error(&e);
            }
        }
        // Tokens, sessions and their leases live on the leader, and only while its lease
        // holds: a deposed leader must not grant what the new one may grant too.
        let term = match self.tokens_ready().await {
            Ok(t) => t,
            Err(e) => return Reply::error(&e),
        };
        match req {
            TokenRequest::OpenSession(_) => Reply::to::<tok::OpenSession, _>(self.open_session(peer, term).await),
            TokenRequest::Reclaim(c) => Reply::to::<tok::Reclaim, _>(self.reclaim(peer, c).await),
            TokenRequest::KeepAlive(c) => Reply::to::<tok::KeepAlive, _>(t.keep_alive(c.session)),
            TokenRequest::Acquire(c) => Reply::to::<tok::Acquire, _>(self.acquire(c).await),
            TokenRequest::RevokeDone(c) => Reply::to::<tok::RevokeDone, _>(t.revoke_done(c.session, c.revoke)),
            TokenRequest::Release(c) => Reply::to::<tok::Release, _>(t.release(c.session, c.file, c.range)),
            TokenRequest::CloseSession(c) => Reply::to::<tok::CloseSession, _>(self.close_session(c.session).await),
            TokenRequest::GetCapability(c) => Reply::to::<tok::GetCapability, _>(self.capability(c).await),
        }
    }

    /// A new session on `peer`'s connection, logged (with its key's SHA-256) before it is
    /// answered, so the next leader knows it. Errors: NotLeader, WalFailed.
    async fn open_session(&self, peer: &Peer, term: u64) -> Result<SessionGrant> {
        let key: [u8; 16] = rand::random();
        let key_sha256 = key_digest(&key);
        let session = loop {
            let session = self.tokens.new_session_id(term)?;
            match self.mutate(Op::OpenSession { session, key_sha256 }).await {
                // Drawn twice in the life of the cluster: draw again.
                Err(MetaError::Exists { .. }) => continue,
                r => break r.map(|_| session)?,
            }
        };
        let lease_ms = self.tokens.open_session(term, session, peer.conn_id, peer.notifier.clone())?;
        Ok(SessionGrant { session, lease_ms, key })
    }

    /// A clean goodbye: the session's tokens go, and its end is logged.
    async fn close_session(&self, session: SessionId) -> Result<()> {
        self.tokens.close_session(session)?;
        self.mutate(Op::EndSession { session, evicted: false }).await.map(drop)
    }

    /// A session of the log takes itself over to `peer`'s connection after a failover and
    /// reclaims its opens and tokens (see [`tok::Reclaim`]).
    async fn reclaim(&self, peer: &Peer, c: tok::Reclaim) -> Result<tok::Reclaimed> {
        if c.files.len() > tok::RECLAIM_MAX_FILES {
            return Err(MetaError::Invalid(format!(
                "a reclaim of {} files (at most {})",
                c.files.len(),
                tok::RECLAIM_MAX_FILES
            )));
        }
        if let Some(f) = c.files.iter().find(|f| f.tokens.len() > tok::RECLAIM_MAX_TOKENS) {
            return Err(MetaError::Invalid(format!(
                "a reclaim of {} tokens of {} (at most {})",
                f.tokens.len(),
                f.file,
                tok::RECLAIM_MAX_TOKENS
            )));
        }
        let (record, _) = self.store.read(|n| n.sessions().get(c.session).cloned())?;
        let record =
            record.ok_or(MetaError::Evicted { session: c.session, state: crate::error::SessionState::Evicted })?;
        if key_digest(&c.key) != record.key_sha256 {
            warn!("{} ({}) tried to take over session {:x} with a wrong key", peer.name, peer.addr, c.session);
            return Err(MetaError::Forbidden {
                peer: peer.name.to_string(),
                role: "a client",
                what: format!("take over session {:x} (wrong key)", c.session),
            });
        }
        if !self.tokens.must_reclaim(c.session) {
            // Open here already (it moves to this connection), or gone.
            return Ok(tok::Reclaimed {
                lease_ms: self.tokens.reclaim(c.session, peer.conn_id, peer.notifier.clone(), Vec::new(), c.done)?,
            });
        }
        // Opens first: the window may close with this reclaim, and the orphan pass after it
        // must see them.
        {
            let mut opens = self.opens.lock();
            for f in &c.files {
                for _ in 0..f.opens.min(u16::MAX as u32) {
                    opens.open(c.session, f.file);
                }
            }
        }
        let files = c.files.into_iter().filter(|f| !f.tokens.is_empty()).map(|f| (f.file, f.tokens)).collect();
        let lease_ms = self.tokens.reclaim(c.session, peer.conn_id, peer.notifier.clone(), files, c.done)?;
        info!("session {:x} reclaimed from {}{}", c.session, peer.addr, if c.done { "" } else { " (more to come)" });
        Ok(tok::Reclaimed { lease_ms })
    }

    /// Errors (Denied, or Evicted when it is not open) unless `session` was opened on
    /// `peer`'s connection.
    fn own(&self, peer: &Peer, session: SessionId) -> Result<()> {
        self.tokens.check_owner(session, peer.conn_id, &peer.name)
    }

    /// A capability for what the session may do to the file's chunks: read all of a file it
    /// has open (or holds tokens on), write what its Write tokens cover.
    async fn capability(&self, c: tok::GetCapability) -> Result<Capability> {
        let Some(issuer) = &self.capabilities else {
            return Err(MetaError::Invalid("this cluster does not authenticate: no capabilities are needed".into()));
        };
        let (_, chunk_size) = self.file_geometry(c.file).await?;
        let held = self.tokens.tokens_of(c.session, c.file);
        let denied = |what: String| MetaError::Denied { what };
        if c.mode == Mode::Read {
            if held.is_empty() && !self.opens.lock().has_open(c.session, c.file) {
                return Err(denied(format!("reading {}: session {:x} has it not open", c.file, c.session)));
            }
            return Ok(issuer.issue(c.file, ByteRange::ALL, Mode::Read, c.session, chunk_size));
        }
        let mut writable: Vec<ByteRange> =
            held.into_iter().filter(|(_, m)| *m == Mode::Write).map(|(r, _)| r).collect();
        writable.sort_by_key(|r| r.start);
        let mut covered = c.range.start;
        for r in &writable {
            if r.start <= covered {
                covered = covered.max(r.end);
            }
        }
        if c.range.is_empty() || covered < c.range.end {
            return Err(denied(format!(
                "writing {} of {}: session {:x} holds no Write token there",
                c.range, c.file, c.session
            )));
        }
        Ok(issuer.issue(c.file, c.range, Mode::Write, c.session, chunk_size))
    }

    /// The capability that goes with a grant: Write over the granted range, or Read over the
    /// whole file (a client reads whole cache blocks, past what its Read token covers; it
    /// may read any file it opened).
    fn grant_capability(
        &self,
        c: &tok::Acquire,
        g_mode: Mode,
        range: ByteRange,
        chunk_size: u64,
    ) -> Option<Capability> {
        let issuer = self.capabilities.as_ref()?;
        let range = if g_mode == Mode::Read { ByteRange::ALL } else { range };
        Some(issuer.issue(c.file, range, g_mode, c.session, chunk_size))
    }

    /// Tokens exist for files only; the size answered is the one at the grant, after every
    /// conflicting holder wrote back and recorded its size.
    async fn acquire(&self, c: tok::Acquire) -> Result<Granted> {
        self.file_size(c.file).await?;
        let g = match self.tokens.acquire(c.session, c.file, c.mode, c.required, c.desired, c.ahead).await {
            // The term ended while it waited.
            Err(MetaError::NotLeader { .. }) => return Err(self.store.not_leader(false)),
            r => r?,
        };
        if !self.store.holds_lease() {
            // The wait outlived this node's leadership: the grant is not to be relied on.
            return Err(self.store.not_leader(false));
        }
        let (size, chunk_size) = self.file_geometry(c.file).await?;
        // One capability over the hull of the range and the records: storage servers check
        // capabilities, not tokens, and the tokens keep the writers apart.
        let hull = c.ahead.iter().flat_map(|a| a.records(g.ahead)).fold(g.range, |h, r| h.hull(&r));
        let capability = self.grant_capability(&c, g.mode, hull, chunk_size);
        Ok(Granted { mode: g.mode, range: g.range, ahead: g.ahead, size, capability })
    }

    /// Size in bytes of a regular file, from durable state. Errors: NoSuchFile, IsDir.
    async fn file_size(&self, file: FileId) -> Result<u64> {
        self.query_inodes(|n, read| {
            read.push(file);
            n.file(file).map(|i| i.size)
        })
        .await
    }

    /// Size and chunk size in bytes of a regular file, from durable state. Errors:
    /// NoSuchFile, IsDir.
    async fn file_geometry(&self, file: FileId) -> Result<(u64, u64)> {
        self.query_inodes(|n, read| {
            read.push(file);
            let i = n.file(file)?;
            Ok((i.size, i.layout.as_ref().map_or(0, |l| l.chunk_size())))
        })
        .await
    }

    /// Serves one request of the registry service.
    async fn registry(&self, peer: &Peer, req: RegistryRequest) -> Reply {
        let now = Instant::now();
        match req {
            RegistryRequest::Register(c) => Reply::to::<reg::Register, _>(self.register(peer, c).await),
            RegistryRequest::Heartbeat(c) => Reply::to::<reg::Heartbeat, _>(self.heartbeat(peer, c)),
            RegistryRequest::ChunkReport(c) => Reply::to::<reg::ChunkReport, _>(self.chunk_report(peer, c).await),
            RegistryRequest::Fenced(c) => Reply::to::<reg::Fenced, _>(self.fenced(peer, c)),
            RegistryRequest::ListServers(_) => {
                let syncing = self.store.read_ready(|n| {
                    let mut by_server: BTreeMap<ServerId, u32> = BTreeMap::new();
                    for c in n.chains().iter() {
                        for m in c.members.iter().filter(|m| m.state == ReplicaState::Syncing) {
                            *by_server.entry(m.server).or_default() += 1;
                        }
                    }
                    by_server
                });
                let syncing = match syncing.await {
                    Ok(s) => s,
                    Err(e) => return Reply::error(&e),
                };
                let c = self.cluster.lock();
                let list =
                    c.registry.list(now, |id| c.holders.count(id), |id| syncing.0.get(&id).copied().unwrap_or(0));
                Reply::to::<reg::ListServers, MetaError>(Ok(list))
            }
            RegistryRequest::GetChunks(c) => Reply::to::<reg::GetChunks, _>(self.get_chunks(c).await),
            RegistryRequest::GetChains(c) => Reply::to::<reg::GetChains, _>(self.get_chains(c).await),
            RegistryRequest::GetLayouts(c) => Reply::to::<reg::GetLayouts, _>(self.get_layouts(c).await),
            RegistryRequest::SyncDone(c) => Reply::to::<reg::SyncDone, _>(self.sync_done(peer, c).await),
            RegistryRequest::RemoveOrphan(c) => Reply::to::<reg::RemoveOrphan, _>(self.remove_orphan(peer, c).await),
            RegistryRequest::GetHealth(_) => Reply::to::<reg::GetHealth, _>(
                self.query(|n| {
                    let t = n.chains();
                    Ok(Health {
                        chains: t.len() as u32,
                        degraded_chains: t.iter().filter(|c| c.degraded()).count() as u32,
                        under_replicated_chunks: n.under_replicated(),
                    })
                })
                .await,
            ),
        }
    }

    async fn register(&self, peer: &Peer, c: reg::Register) -> Result<Registered> {
        speaks_for(peer, c.id)?;
        // The token service first: it may take the cluster lock to declare servers down, and
        // a new term begins with a fresh registry.
        let term = self.tokens_ready().await?;
        // Only under the configured id and address, and never over a live registration.
        self.cluster
            .lock()
            .registry
            .check_register(c.id, c.address, peer.conn_id, Instant::now())
            .inspect_err(|e| warn!("refused the registration of {} from {} ({}): {e}", c.id, peer.name, peer.addr))?;
        let (fenced, lease_ms) = self.tokens.storage_registered(term, c.id, peer.conn_id, peer.notifier.clone())?;
        {
            let mut cl = self.cluster.lock();
            let now = Instant::now();
            cl.registry.register(c.id, c.address, c.capacity_bytes, c.free_bytes, peer.conn_id, now)?;
            cl.holders.begin_listing(c.id);
        }
        // The boot id is in the WAL, so a restart is known across pfs-meta's restarts too.
        let known = self.store.read_ready(|n| n.boot_of(c.id)).await?.0;
        if known.is_some_and(|b| b != c.boot) {
            // Before it can serve a read: its replicas resync (unsynced writes may be lost).
            info!("{} restarted (a new boot id): its replicas resync from the others", c.id);
            self.keep_chains(&[c.id].into_iter().collect()).await?;
        }
        self.mutate(Op::Boot { server: c.id, boot: c.boot }).await?;
        let chains = self.query(|n| Ok(n.chains().iter().cloned().collect())).await?;
        let fence_below = self.query(|n| Ok(n.sessions().fence_below())).await?;
        Ok(Registered { term, fence_below, fenced, lease_ms, orphans: Vec::new(), chains })
    }

    /// Chains by id (every chain for an empty list).
    async fn get_chains(&self, c: reg::GetChains) -> Result<Vec<Chain>> {
        check_count("chain ids", c.ids.len())?;
        self.query(|n| {
            let t = n.chains();
            Ok(if c.ids.is_empty() {
                t.iter().cloned().collect()
            } else {
                c.ids.iter().filter_map(|id| t.get(*id).cloned()).collect()
            })
        })
        .await
    }

    /// Layouts of files (`None` for a missing file or a directory).
    async fn get_layouts(&self, c: reg::GetLayouts) -> Result<Vec<Option<Layout>>> {
        check_count("file ids", c.files.len())?;
        self.query_inodes(|n, read| {
            read.extend(&c.files);
            Ok(c.files.iter().map(|f| n.get(*f).and_then(|i| i.layout.clone())).collect())
        })
        .await
    }

    /// A storage server finished resyncing a chain: it serves reads from now on.
    async fn sync_done(&self, peer: &Peer, c: reg::SyncDone) -> Result<()> {
        speaks_for(peer, c.id)?;
        self.cluster.lock().registry.check_conn(c.id, peer.conn_id)?;
        let _one_change_at_a_time = self.chain_lock.lock().await;
        let next = self.store.read(|n| n.chains().sync_done(c.id, c.chain.id, c.chain.version))?.0;
        let next = next.ok_or(MetaError::NotSyncing { server: c.id, chain: c.chain.id, version: c.chain.version })?;
        info!("{} resynced {}: {}", c.id, c.chain.id, next.describe());
        self.mutate(Op::SetChains { chains: vec![next] }).await.map(drop)
    }

    /// A storage server confirms fences; at most [`FENCED_MAX`] sessions a call.
    fn fenced(&self, peer: &Peer, c: reg::Fenced) -> Result<()> {
        speaks_for(peer, c.id)?;
        if c.sessions.len() > FENCED_MAX {
            return Err(MetaError::Invalid(format!(
                "a fence confirmation of {} sessions from {} (at most {FENCED_MAX})",
                c.sessions.len(),
                c.id
            )));
        }
        // Only the registered connection of that server confirms its fences: any other could
        // let an evicted session's tokens go while the server still admits its writes.
        self.cluster.lock().registry.check_conn(c.id, peer.conn_id)?;
        self.tokens.fenced_by(c.id, c.sessions);
        Ok(())
    }

    fn heartbeat(&self, peer: &Peer, c: reg::Heartbeat) -> Result<Renewed> {
        speaks_for(peer, c.id)?;
        // Only a leader whose lease holds renews a storage server's lease.
        let term = self.tokens.term().ok_or_else(|| self.store.not_leader(false))?;
        if !self.store.holds_lease() {
            return Err(self.store.not_leader(false));
        }
        self.cluster.lock().registry.check_conn(c.id, peer.conn_id)?;
        self.tokens.storage_heartbeat(c.id)?;
        self.cluster.lock().registry.heartbeat(c.id, c.capacity_bytes, c.free_bytes, peer.conn_id, Instant::now())?;
        Ok(Renewed { term })
    }

    /// Live holders and committed state of chunks `first .. first + count` of a file, in
    /// chunk order; chunks neither reported nor committed are left out.
    async fn get_chunks(&self, c: reg::GetChunks) -> Result<Vec<ChunkInfo>> {
        let count = c.count.min(GET_CHUNKS_MAX) as u64;
        let last = c.first.saturating_add(count.saturating_sub(1));
        let committed = self
            .query(|n| {
                n.inode(c.file)?;
                Ok(n.chunks()
                    .range(c.file, c.first, last)
                    .map(|(chunk, r)| {
                        let c = CommittedChunk { len: r.len, sha256: r.sha256, holders: r.holders.clone() };
                        (chunk, c)
                    })
                    .collect::<BTreeMap<_, _>>())
            })
            .await?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut by_chunk: BTreeMap<_, _> =
            self.cluster.lock().holders.get(c.file, c.first, c.count).into_iter().map(|i| (i.chunk, i)).collect();
        for (chunk, rec) in committed {
            by_chunk.entry(chunk).or_insert(ChunkInfo { chunk, holders: Vec::new(), committed: None }).committed =
                Some(rec);
        }
        Ok(by_chunk.into_values().collect())
    }

    /// A storage server's chunk report: the holder map learns it; durable states of changes
    /// (not of a listing) are committed to the chunk map, durably, before the answer; the last
    /// page of a listing is answered with the committed chunks the server lost.
    async fn chunk_report(&self, peer: &Peer, c: reg::ChunkReport) -> Result<ReportAnswer> {
        speaks_for(peer, c.id)?;
        if c.chunks.len() > CHUNK_REPORT_PAGE {
            return Err(MetaError::Invalid(format!(
                "a chunk report of {} states from {} (at most {CHUNK_REPORT_PAGE})",
                c.chunks.len(),
                c.id
            )));
        }
        let (orphans, lost, lsn) = {
            let mut cl = self.cluster.lock();
            cl.registry.check_conn(c.id, peer.conn_id)?;
            // Existence is judged on the applied state; we answer only once that state is
            // durable, so a server never deletes a file a crash brings back.
            let cl = &mut *cl;
            let ((orphans, lost), lsn) = self.store.read(|n| {
                let orphans = cl.holders.report(c.id, &c.chunks, c.full, |f| n.exists(f));
                let lost = (c.listing && c.full).then(|| lost_chunks(n, &cl.holders, c.id));
                if lost.is_some() {
                    cl.registry.listed(c.id);
                    self.keeper_wake.notify_one();
                    self.server_up.notify_waiters();
                }
                (orphans, lost)
            })?;
            (orphans, lost, lsn)
        };
        self.store.wait_committed(lsn).await?;
        if !orphans.is_empty() {
            debug!("{} holds chunks of {} removed files", c.id, orphans.len());
        }
        if let Some(lost) = lost.as_ref().filter(|l| !l.is_empty()) {
            warn!(
                "{} lost {} committed chunks, e.g. chunk {} of file {} ({})",
                c.id,
                lost.len(),
                lost[0].chunk,
                lost[0].file,
                lost[0].found
            );
        }
        if !c.listing {
            let commits: Vec<(FileId, Commit)> = c
                .chunks
                .iter()
                .filter(|s| s.durable && !s.removed && !orphans.contains(&s.file))
                .filter_map(|s| {
                    Some((s.file, Commit { chunk: s.chunk, len: s.len, sha256: s.sha256?, version: s.version }))
                })
                .collect();
            if !commits.is_empty() {
                self.mutate(Op::CommitChunks { server: c.id, chunks: commits }).await?;
            }
        }
        Ok(ReportAnswer { term: lsn.term, orphans, lost })
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
            sends.extend(targets.into_iter().filter_map(|t| Some((t, file, self.tokens.storage_pusher(t)?))));
        }
        for (server, file, pusher) in sends {
            tokio::spawn(async move {
                if let Err(e) = pusher.push(StorageNotify::RemoveFiles(vec![file])).await {
                    // The server collects the chunks as orphans when it registers again.
                    warn!("telling {server} to remove file {file} failed: {e}");
                }
            });
        }
    }

    /// Has a storage server remove a chunk (or a file's chunks) `pfs fsck` found orphaned,
    /// once checked to be one: clients never remove chunks themselves.
    async fn remove_orphan(&self, peer: &Peer, c: reg::RemoveOrphan) -> Result<()> {
        if peer.role != PeerRole::Admin {
            return Err(MetaError::Forbidden {
                peer: format!("{} at {}", peer.name, peer.addr),
                role: role_name(peer.role),
                what: "ask for orphan removal (an administrator's tool, with the cluster secret, may)".into(),
            });
        }
        let why_not = self.why_not_an_orphan(&c).await?;
        if let Some(why) = why_not {
            return Err(MetaError::Denied { what: format!("not an orphan: {why}") });
        }
        // Removed (durably) when answered: pfs-meta asks the server itself, as the only role
        // a storage server takes removals from.
        let addr = self.cluster.lock().registry.address(c.server).ok_or_else(|| MetaError::NoServers {
            path: c.file.to_string(),
            why: format!("{} is not a known storage server", c.server),
        })?;
        let conn: RpcClient<StorageRequest> =
            RpcClient::connect(addr, &c.server.to_string(), &self.storage_connect, None).await?;
        match c.copy {
            OrphanCopy::Chunk { chunk, listed } => {
                conn.ask(RemoveChunk { file: c.file, chunk, listed: Some(listed) }).await?
            }
            OrphanCopy::File => conn.ask(RemoveFile { file: c.file }).await?,
        }
        info!("removed orphan {} {:?} on {} for {} ({})", c.file, c.copy, c.server, peer.name, peer.addr);
        Ok(())
    }

    /// Why the copy `c` names (a chunk, or every chunk of a file) on `c.server` is not an
    /// orphan, if it is not: it is proven one only when the namespace, the chunk map, the
    /// token manager and the open table all say nothing can need it. The storage server then
    /// removes a chunk only if it is still as `pfs fsck` listed it, so a write that arrived
    /// since (after these checks, under a token granted since) is never removed with it.
    ///
    /// * A file that exists is never removed whole.
    /// * A chunk is live while any session has the file open or holds (or waits for) a Write
    ///   token over the chunk's bytes: a writer may be putting bytes there that no size or
    ///   commit records yet.
    /// * A chunk within the file's size is live on every replica of its chain.
    /// * A committed chunk is live on a holder of its committed state unless another serving
    ///   replica of its chain holds that state too (so a replaced server's copy goes only
    ///   once the chain has the chunk without it).
    async fn why_not_an_orphan(&self, c: &reg::RemoveOrphan) -> Result<Option<String>> {
        let OrphanCopy::Chunk { chunk, .. } = c.copy else {
            let exists = self.query(|n| Ok(n.get(c.file).is_some())).await?;
            return Ok(exists.then(|| format!("{} exists", c.file)));
        };
        let facts = self
            .query(|n| {
                let Some(i) = n.get(c.file) else { return Ok(None) };
                let Some(l) = &i.layout else { return Ok(None) };
                let chain = n.chains().get(l.chain(chunk)).cloned();
                let record = n.chunks().get(c.file, chunk).cloned();
                let start = l.file_offset(chunk, 0);
                Ok(Some((i.size, start, l.chunk_size(), chain, record)))
            })
            .await?;
        // No such file (ids never repeat): nothing can need its chunks.
        let Some((size, start, chunk_size, chain, record)) = facts else { return Ok(None) };
        let what = format!("chunk {chunk} of {} on {}", c.file, c.server);
        if self.opens.lock().is_open(c.file) {
            return Ok(Some(format!("{what}: the file is open")));
        }
        let bytes = ByteRange::new(start, start.saturating_add(chunk_size));
        if self.tokens.writes_over(c.file, bytes) {
            return Ok(Some(format!("{what}: a session holds or wants a Write token over {bytes}")));
        }
        let on_chain = chain.as_ref().is_some_and(|ch| ch.state_of(c.server).is_some());
        if on_chain && start < size {
            return Ok(Some(format!("{what}: it is within the file's {size} bytes, on its chain")));
        }
        if let Some(r) = record.filter(|r| r.version_on(c.server).is_some()) {
            let elsewhere =
                chain.as_ref().is_some_and(|ch| ch.readers().any(|s| s != c.server && r.version_on(s).is_some()));
            if !elsewhere {
                return Ok(Some(format!(
                    "{what}: it holds the committed state ({} bytes), which no other serving replica holds",
                    r.len
                )));
            }
        }
        Ok(None)
    }

    /// A connection closed: a storage server on it is down; a client's sessions are evicted.
    pub async fn disconnected(&self, peer: &Peer) {
        let server = self.cluster.lock().registry.disconnected(peer.conn_id);
        if let Some(id) = server {
            self.tokens.storage_disconnected(id, peer.conn_id);
            self.keeper_wake.notify_one();
        }
        if peer.role == PeerRole::Client {
            self.tokens.connection_lost(peer.conn_id);
        }
    }
}

/// Errors (Invalid) for a list of ids longer than [`GET_CHUNKS_MAX`].
/// SHA-256 of a session key, as the log keeps it.
fn key_digest(key: &[u8; 16]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key).into()
}

/// Membership changes are for an operator's tool holding the cluster secret (role Admin).
fn admin_only(peer: &Peer) -> Result<()> {
    if peer.role == PeerRole::Admin {
        return Ok(());
    }
    Err(MetaError::Forbidden {
        peer: format!("{} at {}", peer.name, peer.addr),
        role: role_name(peer.role),
        what: "change the membership of the metadata group (an administrator's connection may)".into(),
    })
}

fn check_count(what: &str, n: usize) -> Result<()> {
    if n > GET_CHUNKS_MAX as usize {
        return Err(MetaError::Invalid(format!("{n} {what} in one request (at most {GET_CHUNKS_MAX})")));
    }
    Ok(())
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
        PeerRole::Admin => "an administrator's tool",
    }
}

/// The inode a change answers with. A change that answers an inode always has one; the
/// error names `what` if not.
fn answered(inode: Option<Inode>, what: &str) -> Result<Attr> {
    inode.map(|i| attr(&i)).ok_or_else(|| MetaError::Invalid(format!("{what}: the change answered no inode")))
}

/// An inode's attributes as sent on the wire.
fn attr(i: &Inode) -> Attr {
    Attr {
        id: i.id,
        kind: i.kind,
        size: i.size,
        mode: i.mode,
        uid: i.uid,
        gid: i.gid,
        nlink: i.nlink,
        rdev: i.rdev,
        atime_ns: i.atime_ns,
        mtime_ns: i.mtime_ns,
        ctime_ns: i.ctime_ns,
        generation: i.generation,
        layout: i.layout.clone(),
        entries: i.entries.len() as u64,
        symlink: i.symlink.clone(),
    }
}

impl Handler for MetaServer {
    type Request = MetaRequest;

    async fn handle(self: Arc<Self>, peer: Peer, req: MetaRequest, payload: PooledBuf) -> Reply {
        match req {
            MetaRequest::Namespace(r) if peer.role == PeerRole::Client => self.namespace(&peer, r).await,
            MetaRequest::Tokens(r) if peer.role == PeerRole::Client => self.tokens(&peer, r).await,
            MetaRequest::Registry(r) => self.registry(&peer, r).await,
            MetaRequest::Raft(RaftRequest::Message(m)) => {
                crate::raft::network::serve(&self.store, &peer, m, &payload).await
            }
            MetaRequest::Raft(RaftRequest::Status(_)) => Reply::to::<GetStatus, MetaError>(Ok(self.store.status())),
            MetaRequest::Raft(RaftRequest::AddMember(c)) => Reply::to::<AddMember, _>(match admin_only(&peer) {
                Ok(()) => self.store.add_member(c.id, c.address).await,
                Err(e) => Err(e),
            }),
            MetaRequest::Raft(RaftRequest::RemoveMember(c)) => Reply::to::<RemoveMember, _>(match admin_only(&peer) {
                Ok(()) => self.store.remove_member(c.id).await,
                Err(e) => Err(e),
            }),
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

/// The committed chunks `server` should hold that its complete listing (just received into
/// `holders`) lacks or has shorter than committed.
fn lost_chunks(n: &Namespace, holders: &Holders, server: ServerId) -> Vec<LostChunk> {
    n.chunks()
        .held_by(server)
        .filter_map(|((file, chunk), rec)| {
            let version = rec.version_on(server).unwrap_or(0);
            let found = match holders.held_on(server, file, chunk) {
                None => "missing".to_string(),
                Some(h) if h.len < rec.len => format!("{} of {} bytes", h.len, rec.len),
                // An older copy (an old disk put back): its own checksums may well be fine.
                Some(h) if h.version < version => {
                    format!("commit version {} of the chunk, but version {version} was committed", h.version)
                }
                Some(h) if h.version == version && h.sha256.zip(rec.sha256).is_some_and(|(a, b)| a != b) => {
                    format!(
                        "other bytes than committed at version {} (sha256 {})",
                        h.version,
                        h.sha256.map(|d| d.to_string()).unwrap_or_default()
                    )
                }
                Some(_) => return None,
            };
            Some(LostChunk { file, chunk, len: rec.len, found })
        })
        .collect()
}
