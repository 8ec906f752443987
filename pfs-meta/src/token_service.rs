//! The token service: the sans-IO [`TokenManager`] with sockets and clocks around it.
//!
//! * Terms: the service acts only while this node leads. Each leadership term starts a new
//!   [`TokenManager`] in recovery ([`TokenManager::recovering`]) from the sessions of the log,
//!   which reclaim what they hold; when the term ends everything of it is dropped (waiters are
//!   answered NotLeader) and nothing more is sent to anyone.
//! * Sessions: ids carry the term that opened them in their high 24 bits (see
//!   [`crate::namespace::sessions`]); the caller logs a session before it opens it here.
//! * `Acquire` waits on a oneshot until the manager grants; revokes go to the holder's
//!   connection as [`ClientNotify::Revoke`]; `RevokeDone` feeds the ack back in.
//! * Storage servers: registration, heartbeats (their lease) and fence confirmations are
//!   manager inputs too; [`Output::Fence`] goes to their connections as
//!   [`StorageNotify::Fence`], and [`Output::ServerDown`] to the registry.
//! * A tick task feeds `Tick` at the manager's next deadline.
//!
//! Every input is handled under one synchronous lock that is never held across an await: the
//! outputs are turned into effects under it and carried out after it is released (grants and
//! registry updates at once, in output order; notifications from spawned tasks, whose order
//! does not matter and which must not let a client or storage server with a full socket stall
//! anyone). So a storage server that never confirms a fence delays only the grants that fence
//! holds back, never an unrelated acquire, keep-alive or namespace operation.

use crate::error::{MetaError, Result};
use crate::tokens::{Input, Output, RequestId, TokenConfig, TokenManager};
use futures_util::FutureExt;
use parking_lot::Mutex;
use pfs_common::rpc::Notifier;
use pfs_common::token::{first_session_of, ByteRange, Mode, SessionId, Stride, SESSION_RANDOM_BITS};
use pfs_common::wire::registry::{StorageNotify, StoragePush};
use pfs_common::wire::tokens::ClientNotify;
use pfs_common::{FileId, ServerId};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};
use tracing::{info, warn};

/// A granted token as the service answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    /// The mode granted (the one requested).
    pub mode: Mode,
    /// The byte range granted: contains the request's required range, within its desired one.
    pub range: ByteRange,
    /// The records of the request's stride granted too: bit `k` for record `k`.
    pub ahead: u64,
}

/// Called (outside the service's lock) when the manager declares a storage server down.
pub type ServerDownHook = Box<dyn Fn(ServerId, &str) + Send + Sync>;
/// Called (outside the service's lock) when a session ends, and with `None` when a
/// recovery window closes.
pub type SessionEndHook = Box<dyn Fn(Option<SessionEnd>) + Send + Sync>;

/// A session ended: closed, or evicted.
pub struct SessionEnd {
    /// The session that ended.
    pub session: SessionId,
    /// Evicted (true; the log must record it) or closed by its client (false).
    pub evicted: bool,
    /// For an eviction: to be sent once it is committed to the log. Its fences wait for it,
    /// so that no storage server refuses a session that a next leader would still take for
    /// open and let reclaim; dropped unsent (this node no longer leads), they are not sent.
    pub logged: Option<oneshot::Sender<()>>,
}

/// Whether this node's leader lease of a term holds (no other node can lead in it now).
pub type LeaseCheck = Box<dyn Fn(u64) -> bool + Send + Sync>;

/// A registered storage server's connection, for pushes in the name of the term it
/// registered in (storage servers refuse pushes of an older term than they have seen:
/// [`pfs_common::wire::registry::StoragePush`]).
#[derive(Clone)]
pub struct StoragePusher {
    notifier: Notifier,
    term: u64,
}

impl StoragePusher {
    /// Sends `notify`. Errors: the connection's (Closed, Socket).
    pub async fn push(&self, notify: StorageNotify) -> pfs_common::Result<()> {
        self.notifier.notify(&StoragePush { term: self.term, notify }).await
    }
}

struct State {
    /// The leadership term this state belongs to (`None`: this node does not lead).
    term: Option<u64>,
    manager: TokenManager,
    next_request: RequestId,
    waiting: HashMap<RequestId, oneshot::Sender<Result<Granted>>>,
    /// The connection of each open session, for revokes and eviction notices.
    clients: HashMap<SessionId, (u64, Notifier)>,
    /// The connection of each registered storage server, for fences.
    storage: HashMap<ServerId, (u64, Notifier)>,
}

/// What the outputs of one input ask for, to be done once the lock is released.
#[derive(Default)]
struct Effects {
    /// Grants and refusals of queued acquires, in output order.
    answers: Vec<(oneshot::Sender<Result<Granted>>, Result<Granted>)>,
    servers_down: Vec<(ServerId, String)>,
    to_clients: Vec<(Notifier, ClientNotify)>,
    /// Sessions to fence, per storage server connection.
    fences: BTreeMap<ServerId, (StoragePusher, Vec<SessionId>)>,
    /// A refusal addressed to the caller of the input itself.
    refused: Option<MetaError>,
    /// Sessions that ended, and whether evicted.
    ended: Vec<(SessionId, bool)>,
    /// The recovery window closed.
    recovered: bool,
    /// The input made a deadline the ticker may not know of (a revoke, a fence, a new lease).
    new_deadline: bool,
}

/// The token service of pfs-meta.
pub struct TokenService {
    state: Mutex<State>,
    /// This meta node's id, for NotLeader answers.
    me: u64,
    /// The manager's recovery window is open (read under the namespace's lock, so not
    /// behind `state`'s).
    recovering: AtomicBool,
    started: Instant,
    cfg: TokenConfig,
    wake: Notify,
    server_down: ServerDownHook,
    session_end: SessionEndHook,
    leader_lease: LeaseCheck,
}

impl TokenService {
    /// The service of meta node `me`, idle until [`TokenService::begin_term`]. `server_down`
    /// is told of every storage server the manager declares down, `session_end` of every
    /// session that ends and of the end of each recovery window; `leader_lease` says whether
    /// the node's leader lease of a term holds: without it, no deadline is acted on and no
    /// fence sent (another node may lead already).
    pub fn open(
        cfg: TokenConfig,
        me: u64,
        server_down: ServerDownHook,
        session_end: SessionEndHook,
        leader_lease: LeaseCheck,
    ) -> TokenService {
        info!(
            "token service: lease {} ms, revoke timeout {} ms, storage lease {} ms, fence timeout {} ms",
            cfg.lease_ms, cfg.revoke_timeout_ms, cfg.storage_lease_ms, cfg.fence_timeout_ms
        );
        TokenService {
            state: Mutex::new(State {
                term: None,
                manager: TokenManager::new(cfg),
                next_request: 1,
                waiting: HashMap::new(),
                clients: HashMap::new(),
                storage: HashMap::new(),
            }),
            me,
            recovering: AtomicBool::new(false),
            started: Instant::now(),
            cfg,
            wake: Notify::new(),
            server_down,
            session_end,
            leader_lease,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn not_leader(&self) -> MetaError {
        MetaError::NotLeader { node: self.me, leader: None, maybe_done: false }
    }

    /// The leadership term the service acts for, if any.
    pub fn term(&self) -> Option<u64> {
        self.state.lock().term
    }

    /// This node leads `term` (newer than any it acted for): a new manager takes over in
    /// recovery, with the log's `open` sessions to reclaim and its `evicted` ones refused.
    /// Returns false (and changes nothing) if the service already acts for `term` or a newer
    /// one.
    pub fn begin_term(&self, term: u64, open: Vec<SessionId>, evicted: Vec<SessionId>) -> bool {
        let mut st = self.state.lock();
        if st.term.is_some_and(|t| t >= term) {
            return false;
        }
        let now = self.now_ms();
        let (sessions, refused) = (open.len(), evicted.len());
        let manager = TokenManager::recovering(self.cfg, open, evicted, now);
        self.recovering.store(manager.recovering_now(), Ordering::Release);
        self.reset(&mut st, Some(term), manager);
        drop(st);
        info!(
            "token service: term {term}: {sessions} sessions of the log to reclaim within {} ms, {refused} evicted",
            self.cfg.lease_ms
        );
        self.wake.notify_one();
        true
    }

    /// This node's leadership of `term` (or an older one) ended: the service stops acting.
    pub fn end_term(&self, term: u64) {
        let mut st = self.state.lock();
        if st.term.is_some_and(|t| t <= term) {
            self.recovering.store(false, Ordering::Release);
            self.reset(&mut st, None, TokenManager::new(self.cfg));
            info!("token service: term {term} over; tokens and sessions dropped until this node leads again");
        }
    }

    /// Replaces the state of a term: its waiters are answered NotLeader, its connections
    /// forgotten (nothing more is sent on them).
    fn reset(&self, st: &mut State, term: Option<u64>, manager: TokenManager) {
        for (_, tx) in st.waiting.drain() {
            let _ = tx.send(Err(self.not_leader()));
        }
        st.clients.clear();
        st.storage.clear();
        st.manager = manager;
        st.term = term;
    }

    /// True while the recovery window of this term is open: nothing is granted, and every
    /// file counts as open (a session that has not reclaimed may hold any).
    pub fn recovering(&self) -> bool {
        self.recovering.load(Ordering::Acquire)
    }

    /// A fresh session id of `term` (its epoch: see [`crate::namespace::sessions`]).
    ///
    /// Errors: Invalid once terms outgrow the epoch's 24 bits.
    pub fn new_session_id(&self, term: u64) -> Result<SessionId> {
        let epoch = u32::try_from(term).ok().filter(|e| *e < 1 << (64 - SESSION_RANDOM_BITS));
        let epoch = epoch.ok_or_else(|| MetaError::Invalid(format!("term {term} is past the session ids' epochs")))?;
        loop {
            let low = rand::random::<u64>() & ((1 << SESSION_RANDOM_BITS) - 1);
            if low != 0 {
                return Ok(first_session_of(epoch) | low);
            }
        }
    }

    /// The tokens `session` holds on `file` (those being revoked included, until
    /// acknowledged).
    pub fn tokens_of(&self, session: SessionId, file: FileId) -> Vec<(ByteRange, Mode)> {
        self.state.lock().manager.tokens(session, file)
    }

    /// See [`crate::tokens::TokenManager::writes_over`].
    pub fn writes_over(&self, file: FileId, range: ByteRange) -> bool {
        self.state.lock().manager.writes_over(file, range)
    }

    /// Session `session` (logged in `term`) opens on connection `conn`; returns its lease,
    /// ms. Errors: NotLeader if the service no longer acts for `term`; Exists if the id is
    /// known already.
    pub fn open_session(&self, term: u64, session: SessionId, conn: u64, notifier: Notifier) -> Result<u64> {
        let (ok, refused) = self.step(|st, now_ms| {
            let ok = if st.term != Some(term) {
                Err(self.not_leader())
            } else if st.clients.contains_key(&session) || st.manager.knows_session(session) {
                Err(MetaError::Exists { path: format!("session {session:x}") })
            } else {
                st.clients.insert(session, (conn, notifier));
                Ok(())
            };
            // An input that changes nothing when refused above (a heartbeat of an unknown
            // session would be refused, so it is only fed for a session being opened).
            let input = match ok {
                Ok(()) => Input::OpenSession { session, now_ms },
                Err(_) => Input::Tick { now_ms },
            };
            (input, ok)
        })?;
        ok?;
        match refused {
            Some(e) => Err(e),
            None => Ok(self.cfg.lease_ms),
        }
    }

    /// True if `session` is one of the log's sessions that must still reclaim.
    pub fn must_reclaim(&self, session: SessionId) -> bool {
        self.state.lock().manager.must_reclaim(session)
    }

    /// Session `session` (its key checked by the caller) takes its tokens back on connection
    /// `conn` during the recovery window: `files` with their tokens; `done` on its last
    /// reclaim. Returns its lease, ms. A reclaim that conflicts with another session's
    /// evicts the session: what it cached cannot be trusted.
    ///
    /// A session open in this term already just moves to `conn`.
    ///
    /// Errors: Evicted (neither open nor one that must reclaim: the window is over, or it
    /// was evicted); Invalid (a conflict).
    pub fn reclaim(
        &self,
        session: SessionId,
        conn: u64,
        notifier: Notifier,
        files: Vec<(FileId, Vec<(ByteRange, Mode)>)>,
        done: bool,
    ) -> Result<u64> {
        {
            let mut st = self.state.lock();
            if !st.manager.must_reclaim(session) {
                // Open in this term already (it left a connection to this node that it took
                // for a follower's): it moves to the new connection, its tokens as they are.
                if let Some(bound) = st.clients.get_mut(&session) {
                    *bound = (conn, notifier);
                    drop(st);
                    self.keep_alive(session)?;
                    return Ok(self.cfg.lease_ms);
                }
                return Err(MetaError::Evicted { session, state: crate::error::SessionState::Evicted });
            }
            st.clients.insert(session, (conn, notifier));
        }
        for (file, tokens) in files {
            if let Err(e) = self.simple(|now_ms| Input::Reclaim { session, file, tokens, now_ms }) {
                if matches!(e, MetaError::Invalid(_)) {
                    let reason = format!("its reclaim was refused: {e}");
                    let _ = self.simple(|now_ms| Input::Evict { session, reason, now_ms });
                }
                return Err(e);
            }
        }
        if done {
            self.simple(|now_ms| Input::ReclaimDone { session, now_ms })?;
        }
        Ok(self.cfg.lease_ms)
    }

    /// Renews a lease. Errors: Evicted.
    pub fn keep_alive(&self, session: SessionId) -> Result<()> {
        self.simple(|now_ms| Input::Heartbeat { session, now_ms })
    }

    /// Waits for a token. Errors: Evicted, Invalid.
    pub async fn acquire(
        &self,
        session: SessionId,
        file: FileId,
        mode: Mode,
        required: ByteRange,
        desired: ByteRange,
        ahead: Option<Stride>,
    ) -> Result<Granted> {
        let (rx, refused) = self.step(|st, now_ms| {
            let request = st.next_request;
            st.next_request += 1;
            let (tx, rx) = oneshot::channel();
            st.waiting.insert(request, tx);
            (Input::Acquire { session, request, file, mode, required, desired, ahead, now_ms }, rx)
        })?;
        if let Some(e) = refused {
            return Err(e);
        }
        rx.await.unwrap_or(Err(MetaError::Evicted { session, state: crate::error::SessionState::Evicted }))
    }

    /// A holder acknowledges a revoke.
    pub fn revoke_done(&self, session: SessionId, revoke: u64) -> Result<()> {
        self.simple(|now_ms| Input::RevokeAck { session, revoke, now_ms })
    }

    /// A holder gives tokens back.
    pub fn release(&self, session: SessionId, file: FileId, range: ByteRange) -> Result<()> {
        self.simple(|now_ms| Input::Release { session, file, range, now_ms })
    }

    /// A clean goodbye.
    pub fn close_session(&self, session: SessionId) -> Result<()> {
        let r = self.simple(|now_ms| Input::CloseSession { session, now_ms });
        if self.state.lock().clients.remove(&session).is_some() {
            (self.session_end)(Some(SessionEnd { session, evicted: false, logged: None }));
        }
        r
    }

    /// Checks that `session` is open and was opened on connection `conn` (a client may speak
    /// only for its own session). Errors: NotLeader when this node does not lead (sessions
    /// live on the leader), Evicted when it is not open, Forbidden when it belongs to another
    /// connection.
    pub fn check_owner(&self, session: SessionId, conn: u64, peer: &str) -> Result<()> {
        let st = self.state.lock();
        if st.term.is_none() {
            // Not leading (any more): the session lives on the leader, not evicted here.
            return Err(self.not_leader());
        }
        match st.clients.get(&session) {
            Some((c, _)) if *c == conn => Ok(()),
            Some(_) => Err(MetaError::Forbidden {
                peer: peer.to_string(),
                role: "a client",
                what: format!("use session {session:x}, which belongs to another connection"),
            }),
            None => Err(MetaError::Evicted { session, state: crate::error::SessionState::Evicted }),
        }
    }

    /// Connection `conn` closed: its sessions are evicted and fenced (the client may still be
    /// alive behind a partition and able to reach storage servers).
    pub fn connection_lost(&self, conn: u64) {
        let gone: Vec<SessionId> =
            self.state.lock().clients.iter().filter(|(_, (c, _))| *c == conn).map(|(s, _)| *s).collect();
        for session in gone {
            let reason = "its connection to pfs-meta closed".to_string();
            let _ = self.simple(|now_ms| Input::Evict { session, reason, now_ms });
        }
    }

    /// Storage server `server` registered on connection `conn` in `term`: its lease starts.
    /// Returns what it must enforce before accepting any write (the evicted sessions; the
    /// caller adds the log's fence) and its lease in ms. Errors: NotLeader if the service no
    /// longer acts for `term`.
    pub fn storage_registered(
        &self,
        term: u64,
        server: ServerId,
        conn: u64,
        notifier: Notifier,
    ) -> Result<(Vec<SessionId>, u64)> {
        if self.term() != Some(term) {
            return Err(self.not_leader());
        }
        let (fenced, _) = self.step(|st, now_ms| {
            st.storage.insert(server, (conn, notifier));
            // Read under the same lock as the input: a fence decided later is sent to the
            // connection just recorded, one decided earlier is in this list.
            (Input::StorageRegistered { server, now_ms }, st.manager.evicted_sessions())
        })?;
        Ok((fenced, self.cfg.storage_lease_ms))
    }

    /// A storage server's heartbeat: renews its lease. Errors: NotRegistered, DeclaredDown
    /// (it must register again).
    pub fn storage_heartbeat(&self, server: ServerId) -> Result<()> {
        self.simple(|now_ms| Input::StorageHeartbeat { server, now_ms })
    }

    /// A storage server confirms it fences `sessions`.
    pub fn fenced_by(&self, server: ServerId, sessions: Vec<SessionId>) {
        let _ = self.simple(|now_ms| Input::FenceConfirmed { server, sessions, now_ms });
    }

    /// The connection of registered storage server `server`, for pushing notifications in
    /// the name of this term; None if it has none, or this node does not lead.
    pub fn storage_pusher(&self, server: ServerId) -> Option<StoragePusher> {
        let st = self.state.lock();
        let term = st.term?;
        st.storage.get(&server).map(|(_, n)| StoragePusher { notifier: n.clone(), term })
    }

    /// Storage server `server`'s connection `conn` closed: fences are no longer sent there (its
    /// lease decides when it stops counting).
    pub fn storage_disconnected(&self, server: ServerId, conn: u64) {
        let mut st = self.state.lock();
        if st.storage.get(&server).is_some_and(|(c, _)| *c == conn) {
            st.storage.remove(&server);
        }
    }

    /// Feeds `Tick` at every deadline of the manager, forever.
    pub async fn run_ticks(self: Arc<Self>) {
        loop {
            let next = self.state.lock().manager.next_deadline();
            let wait = match next {
                Some(at) => Duration::from_millis(at.saturating_sub(self.now_ms())),
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
                _ = self.wake.notified() => continue,
            }
            // Deadlines are acted on (leases counted out, sessions evicted and fenced) only
            // while no other node can lead: a paused or cut-off leader must not evict a session
            // the new one has let reclaim.
            let _ = self.simple(|now_ms| Input::Tick { now_ms });
        }
    }

    /// Feeds the input `f` makes; returns the refusal addressed to its sender, if any.
    fn simple(&self, f: impl FnOnce(u64) -> Input) -> Result<()> {
        match self.step(|_, now| (f(now), ()))?.1 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs `f` under the lock to make the input (and a value for the caller), feeds it to the
    /// manager, and carries out the outputs once the lock is released. Returns `f`'s value and
    /// the refusal addressed to the input's sender, if any.
    ///
    /// Errors: NotLeader, feeding nothing, unless this node leads a term and its leader lease
    /// holds: a leader that was paused or cut off must not act on what it finds when it goes
    /// on (every lease run out, every session evicted) before it learns it was deposed.
    fn step<T>(&self, f: impl FnOnce(&mut State, u64) -> (Input, T)) -> Result<(T, Option<MetaError>)> {
        let (value, effects) = {
            let mut st = self.state.lock();
            if !st.term.is_some_and(|t| (self.leader_lease)(t)) {
                return Err(self.not_leader());
            }
            let (input, value) = f(&mut st, self.now_ms());
            let new_lease = matches!(input, Input::OpenSession { .. } | Input::StorageRegistered { .. });
            let outputs = st.manager.handle(input);
            let mut fx = Self::effects(&mut st, outputs);
            fx.new_deadline |= new_lease;
            if !st.manager.recovering_now() && self.recovering.swap(false, Ordering::AcqRel) {
                info!("token service: the recovery window of term {:?} is closed", st.term);
                fx.recovered = true;
            }
            (value, fx)
        };
        // Only a new deadline can be earlier than the one the ticker sleeps to: acquires,
        // acks and heartbeats that make none do not wake it (they are the hot path).
        if effects.new_deadline {
            self.wake.notify_one();
        }
        let refused = effects.refused.clone();
        self.carry_out(effects);
        Ok((value, refused))
    }

    /// Turns outputs into effects, under the lock (it owns the waiters and connections).
    fn effects(st: &mut State, outputs: Vec<Output>) -> Effects {
        let mut fx = Effects::default();
        for o in outputs {
            match o {
                Output::Grant { request, mode, range, ahead, .. } => {
                    if let Some(tx) = st.waiting.remove(&request) {
                        fx.answers.push((tx, Ok(Granted { mode, range, ahead })));
                    }
                }
                Output::Refuse { request: Some(request), error, .. } => {
                    if let Some(tx) = st.waiting.remove(&request) {
                        fx.answers.push((tx, Err(error)));
                    }
                }
                Output::Refuse { request: None, error, .. } | Output::RefuseServer { error, .. } => {
                    fx.refused = Some(error);
                }
                Output::Revoke { session, revoke, file, range, wanted } => {
                    fx.new_deadline = true;
                    // A lost revoke ends in the holder's eviction at the revoke timeout.
                    if let Some((_, n)) = st.clients.get(&session) {
                        fx.to_clients.push((n.clone(), ClientNotify::Revoke { revoke, file, range, wanted }));
                    }
                }
                Output::Evict { session, reason } => {
                    warn!("evicting session {session:x}: {reason}");
                    // Logged as evicted, whether or not it has a connection here (a session of
                    // the log that never reclaimed has none).
                    if let Some((_, n)) = st.clients.remove(&session) {
                        fx.to_clients.push((n, ClientNotify::Evicted { session, reason }));
                    }
                    fx.ended.push((session, true));
                }
                Output::Fence { session, servers } => {
                    fx.new_deadline = true;
                    for server in servers {
                        // A server without a connection cannot confirm: its lease decides.
                        if let (Some((_, n)), Some(term)) = (st.storage.get(&server), st.term) {
                            let pusher = || (StoragePusher { notifier: n.clone(), term }, Vec::new());
                            fx.fences.entry(server).or_insert_with(pusher).1.push(session);
                        }
                    }
                }
                Output::ServerDown { server, reason } => {
                    st.storage.remove(&server);
                    fx.servers_down.push((server, reason));
                }
            }
        }
        fx
    }

    /// Carries out effects outside the lock: the registry learns of servers declared down
    /// before the grants this frees are delivered; notifications go out from spawned tasks.
    fn carry_out(&self, fx: Effects) {
        for (server, reason) in fx.servers_down {
            (self.server_down)(server, &reason);
        }
        let mut logged = HashMap::new();
        for (session, evicted) in fx.ended {
            let tx = evicted.then(|| {
                let (tx, rx) = oneshot::channel();
                logged.insert(session, rx.shared());
                tx
            });
            (self.session_end)(Some(SessionEnd { session, evicted, logged: tx }));
        }
        if fx.recovered {
            (self.session_end)(None);
        }
        for (tx, answer) in fx.answers {
            let _ = tx.send(answer);
        }
        for (n, msg) in fx.to_clients {
            tokio::spawn(async move {
                let _ = n.notify(&msg).await;
            });
        }
        for (server, (pusher, sessions)) in fx.fences {
            if !(self.leader_lease)(pusher.term) {
                // Unconfirmed, the manager declares the server down at the fence timeout (if
                // this node still leads then); its lease stops its writes meanwhile.
                warn!(
                    "not fencing sessions {sessions:x?} on {server}: the leader lease of term {} lapsed",
                    pusher.term
                );
                continue;
            }
            let evictions: Vec<_> = sessions.iter().filter_map(|s| logged.get(s).cloned()).collect();
            tokio::spawn(async move {
                // The evictions in the log first (a commit, milliseconds; the fence timeout is
                // seconds).
                for logged in evictions {
                    if logged.await.is_err() {
                        warn!("not fencing sessions {sessions:x?} on {server}: their eviction is not in the log");
                        return;
                    }
                }
                // Unconfirmed, the manager declares the server down at the fence timeout.
                if let Err(e) = pusher.push(StorageNotify::Fence(sessions.clone())).await {
                    warn!("asking {server} to fence sessions {sessions:x?}: {e}");
                }
            });
        }
    }
}
