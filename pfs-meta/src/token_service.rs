//! The token service: the sans-IO [`TokenManager`] with sockets and clocks around it.
//!
//! * Sessions: `OpenSession` hands out a [`SessionId`] whose high 32 bits are this boot's
//!   epoch (persisted in `boot-epoch`, bumped at every start), so ids never repeat across
//!   restarts and storage servers can fence every session of an older boot at once.
//! * `Acquire` waits on a oneshot until the manager grants; revokes go to the holder's
//!   connection as [`ClientNotify::Revoke`]; `RevokeDone` feeds the ack back in.
//! * Evictions (missed lease, revoke not acknowledged in time, connection lost) are fenced
//!   before anything else happens: every connected storage server is told to refuse the
//!   session's writes and must confirm (`Fenced`) before the grants that the eviction freed
//!   are delivered. So a late write of a dead or partitioned client cannot land over the new
//!   holder's data.
//! * A tick task feeds `Tick` at the manager's next deadline.
//!
//! All manager inputs and the processing of their outputs happen under one async lock, in
//! order; revoke notifications are sent from spawned tasks (their order does not matter, and
//! a client with a full socket must not stall everyone).

use crate::tokens::{Input, Output, RequestId, TokenConfig, TokenManager};
use parking_lot::Mutex as SyncMutex;
use pfs_common::rpc::Notifier;
use pfs_common::token::{ByteRange, Mode, SessionId};
use pfs_common::wire::meta::ClientNotify;
use pfs_common::wire::storage::StorageNotify;
use pfs_common::{ErrorCode, FileId, PfsError, Result, ServerId};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Mutex, Notify};
use tracing::{info, warn};

/// A granted token as the service answers it.
pub struct Granted {
    /// The mode granted (the one requested).
    pub mode: Mode,
    /// The byte range granted: contains the request's required range, within its desired one.
    pub range: ByteRange,
}

struct State {
    manager: TokenManager,
    next_session: u32,
    next_request: RequestId,
    waiting: HashMap<RequestId, oneshot::Sender<Result<Granted>>>,
    /// The connection of each open session, for revokes and eviction notices.
    clients: HashMap<SessionId, (u64, Notifier)>,
}

/// Sessions fenced at the storage servers, and confirmations awaited from them.
#[derive(Default)]
struct Fencing {
    /// Evicted sessions of this boot (older boots are fenced wholesale by `fence_below`).
    fenced: BTreeSet<SessionId>,
    /// (server, session) → waiter for that server's `Fenced` confirmation.
    awaiting: HashMap<(ServerId, SessionId), oneshot::Sender<()>>,
}

/// The token service of pfs-meta.
pub struct TokenService {
    state: Mutex<State>,
    fencing: SyncMutex<Fencing>,
    epoch: u32,
    started: Instant,
    lease_ms: u64,
    fence_timeout: Duration,
    wake: Notify,
}

impl TokenService {
    /// Opens the service, bumping the boot epoch persisted in `dir/boot-epoch` (written to a
    /// temporary file, fsynced, renamed, directory fsynced).
    ///
    /// Errors: Io naming the file.
    pub fn open(dir: &Path, cfg: TokenConfig) -> Result<TokenService> {
        let epoch = bump_epoch(dir)?;
        info!(
            "token service: boot epoch {epoch}, lease {} ms, revoke timeout {} ms",
            cfg.lease_ms, cfg.revoke_timeout_ms
        );
        Ok(TokenService {
            state: Mutex::new(State {
                manager: TokenManager::new(cfg),
                next_session: 1,
                next_request: 1,
                waiting: HashMap::new(),
                clients: HashMap::new(),
            }),
            fencing: SyncMutex::new(Fencing::default()),
            epoch,
            started: Instant::now(),
            lease_ms: cfg.lease_ms,
            fence_timeout: Duration::from_millis(cfg.revoke_timeout_ms),
            wake: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Sessions below this id belong to older boots: storage servers refuse their writes.
    pub fn fence_below(&self) -> SessionId {
        (self.epoch as u64) << 32
    }

    /// Evicted sessions of this boot.
    pub fn fenced(&self) -> Vec<SessionId> {
        self.fencing.lock().fenced.iter().copied().collect()
    }

    /// A new session on connection `conn`, with its lease in ms.
    pub async fn open_session(&self, conn: u64, notifier: Notifier, storage: &StorageLinks) -> (SessionId, u64) {
        let mut st = self.state.lock().await;
        let session = ((self.epoch as u64) << 32) | st.next_session as u64;
        st.next_session = st.next_session.wrapping_add(1).max(1);
        st.clients.insert(session, (conn, notifier));
        let out = st.manager.handle(Input::OpenSession { session, now_ms: self.now_ms() });
        self.process(&mut st, out, storage).await;
        (session, self.lease_ms)
    }

    /// Renews a lease. Errors: Evicted.
    pub async fn keep_alive(&self, session: SessionId, storage: &StorageLinks) -> Result<()> {
        self.simple(Input::Heartbeat { session, now_ms: self.now_ms() }, session, storage).await
    }

    /// Waits for a token. Errors: Evicted, Invalid.
    pub async fn acquire(
        &self,
        session: SessionId,
        file: FileId,
        mode: Mode,
        required: ByteRange,
        desired: ByteRange,
        storage: &StorageLinks,
    ) -> Result<Granted> {
        let rx = {
            let mut st = self.state.lock().await;
            let request = st.next_request;
            st.next_request += 1;
            let (tx, rx) = oneshot::channel();
            st.waiting.insert(request, tx);
            let out = st.manager.handle(Input::Acquire {
                session,
                request,
                file,
                mode,
                required,
                desired,
                now_ms: self.now_ms(),
            });
            self.process(&mut st, out, storage).await;
            rx
        };
        self.wake.notify_one();
        rx.await.unwrap_or_else(|_| Err(PfsError::new(ErrorCode::Evicted, format!("session {session:x} was evicted"))))
    }

    /// A holder acknowledges a revoke.
    pub async fn revoke_done(&self, session: SessionId, revoke: u64, storage: &StorageLinks) -> Result<()> {
        self.simple(Input::RevokeAck { session, revoke, now_ms: self.now_ms() }, session, storage).await
    }

    /// A holder gives tokens back.
    pub async fn release(
        &self,
        session: SessionId,
        file: FileId,
        range: ByteRange,
        storage: &StorageLinks,
    ) -> Result<()> {
        self.simple(Input::Release { session, file, range, now_ms: self.now_ms() }, session, storage).await
    }

    /// A clean goodbye.
    pub async fn close_session(&self, session: SessionId, storage: &StorageLinks) -> Result<()> {
        let r = self.simple(Input::CloseSession { session, now_ms: self.now_ms() }, session, storage).await;
        self.state.lock().await.clients.remove(&session);
        r
    }

    /// Connection `conn` closed: its sessions are evicted and fenced (the client may still be
    /// alive behind a partition and able to reach storage servers).
    pub async fn connection_lost(&self, conn: u64, storage: &StorageLinks) {
        let mut st = self.state.lock().await;
        let gone: Vec<SessionId> = st.clients.iter().filter(|(_, (c, _))| *c == conn).map(|(s, _)| *s).collect();
        for session in gone {
            st.clients.remove(&session);
            // The manager only evicts through its own rules; a lost connection is a closed
            // session whose writes are fenced first.
            self.fence(&[session], storage).await;
            let out = st.manager.handle(Input::CloseSession { session, now_ms: self.now_ms() });
            self.process(&mut st, out, storage).await;
        }
    }

    /// A storage server confirms it fences `sessions`.
    pub fn fenced_by(&self, server: ServerId, sessions: &[SessionId]) {
        let mut f = self.fencing.lock();
        for s in sessions {
            if let Some(tx) = f.awaiting.remove(&(server, *s)) {
                let _ = tx.send(());
            }
        }
    }

    /// Feeds `Tick` at every deadline of the manager, forever.
    pub async fn run_ticks(self: Arc<Self>, storage: StorageLinks) {
        loop {
            let next = self.state.lock().await.manager.next_deadline();
            let wait = match next {
                Some(at) => Duration::from_millis(at.saturating_sub(self.now_ms())),
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
                _ = self.wake.notified() => continue,
            }
            let mut st = self.state.lock().await;
            let out = st.manager.handle(Input::Tick { now_ms: self.now_ms() });
            self.process(&mut st, out, &storage).await;
        }
    }

    async fn simple(&self, input: Input, session: SessionId, storage: &StorageLinks) -> Result<()> {
        let mut st = self.state.lock().await;
        let out = st.manager.handle(input);
        let refused = out.iter().find_map(|o| match o {
            Output::Refuse { session: s, request: None, error } if *s == session => Some(error.clone()),
            _ => None,
        });
        self.process(&mut st, out, storage).await;
        drop(st);
        self.wake.notify_one();
        refused.map_or(Ok(()), Err)
    }

    /// Carries out the manager's outputs in order. Evictions are fenced at the storage
    /// servers before any later output (a grant the eviction freed) is delivered.
    async fn process(&self, st: &mut State, outputs: Vec<Output>, storage: &StorageLinks) {
        for o in outputs {
            match o {
                Output::Grant { request, mode, range, .. } => {
                    if let Some(tx) = st.waiting.remove(&request) {
                        let _ = tx.send(Ok(Granted { mode, range }));
                    }
                }
                Output::Refuse { request: Some(request), error, .. } => {
                    if let Some(tx) = st.waiting.remove(&request) {
                        let _ = tx.send(Err(error));
                    }
                }
                Output::Refuse { request: None, .. } => {}
                Output::Revoke { session, revoke, file, range, wanted } => {
                    if let Some((_, n)) = st.clients.get(&session) {
                        let n = n.clone();
                        tokio::spawn(async move {
                            // A lost revoke ends in the holder's eviction at the revoke timeout.
                            let _ = n.notify(&ClientNotify::Revoke { revoke, file, range, wanted }).await;
                        });
                    }
                }
                Output::Evict { session, reason } => {
                    warn!("evicting session {session:x}: {reason}");
                    self.fence(&[session], storage).await;
                    if let Some((_, n)) = st.clients.remove(&session) {
                        tokio::spawn(async move {
                            let _ = n.notify(&ClientNotify::Evicted { session, reason }).await;
                        });
                    }
                }
            }
        }
    }

    /// Tells every connected storage server to refuse `sessions`' writes and waits (up to the
    /// revoke timeout) for each to confirm.
    async fn fence(&self, sessions: &[SessionId], storage: &StorageLinks) {
        let links = storage.snapshot();
        let mut waits = Vec::new();
        {
            let mut f = self.fencing.lock();
            f.fenced.extend(sessions.iter().copied());
            for (server, _) in &links {
                for s in sessions {
                    let (tx, rx) = oneshot::channel();
                    f.awaiting.insert((*server, *s), tx);
                    waits.push((*server, rx));
                }
            }
        }
        for (server, notifier) in &links {
            if let Err(e) = notifier.notify(&StorageNotify::Fence(sessions.to_vec())).await {
                warn!("fencing {sessions:x?} on {server} failed: {e}");
            }
        }
        for (server, rx) in waits {
            if tokio::time::timeout(self.fence_timeout, rx).await.is_err() {
                // It learns the fenced set when it registers again; meanwhile it may be slow.
                warn!("{server} did not confirm fencing {sessions:x?} within {} ms", self.fence_timeout.as_millis());
            }
        }
    }
}

/// The storage servers' connections, shared with the registry side of pfs-meta.
#[derive(Clone, Default)]
pub struct StorageLinks(Arc<SyncMutex<HashMap<ServerId, Notifier>>>);

impl StorageLinks {
    /// Records the connection of a (re-)registered storage server.
    pub fn set(&self, id: ServerId, n: Notifier) {
        self.0.lock().insert(id, n);
    }

    /// Forgets a storage server's connection.
    pub fn remove(&self, id: ServerId) {
        self.0.lock().remove(&id);
    }

    fn snapshot(&self) -> Vec<(ServerId, Notifier)> {
        self.0.lock().iter().map(|(k, v)| (*k, v.clone())).collect()
    }
}

fn bump_epoch(dir: &Path) -> Result<u32> {
    let path = dir.join("boot-epoch");
    let old = match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u32>()
            .map_err(|_| PfsError::new(ErrorCode::Io, format!("{}: not a number: {:?}", path.display(), s.trim())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(PfsError::io(path.display(), e)),
    };
    let epoch = old.checked_add(1).ok_or_else(|| PfsError::new(ErrorCode::Io, "boot epoch exhausted"))?;
    let tmp = dir.join("boot-epoch.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{epoch}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| PfsError::io(format!("writing {}", path.display()), e))?;
    Ok(epoch)
}
