//! [`Session`]: what every part of a client shares. Its connections (one to pfs-meta, which
//! carries the session, one per storage server used), the session's lease and eviction, the
//! replication chains as last heard, the bound on payload bytes in flight, the releases not yet
//! answered ([`crate::releases`]), the closes not yet sent, the counters, and the open files
//! (so that a revoke pfs-meta pushes reaches the file it is about).
//!
//! It knows nothing of files beyond the [`OpenTarget`] trait: [`crate::file`] and
//! [`crate::failover`] build on it, [`crate::client`] on all three, and nothing imports back.

use crate::cache::CacheStats;
use crate::error::{Error, Result};
use crate::options::ClientOptions;
use crate::releases::{ReleaseTicket, Releases};
use futures_util::future::BoxFuture;
use pfs_common::chain::{Chain, ChainId};
use pfs_common::ids::{FileId, ServerId};
use pfs_common::peers::PeerPool;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::token::{ByteRange, Mode, SessionId};
use pfs_common::wire::namespace::{self as ns, CLOSE_MAX};
use pfs_common::wire::registry::{GetChains, ListServers, ServerStatus};
use pfs_common::wire::storage::StorageRequest;
use pfs_common::wire::tokens::{self as tok, ClientNotify};
use pfs_common::wire::{Call, MetaRequest, PeerRole};
use pfs_common::ErrorCode;
use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

/// How long a close may wait for a `Create` or `Open` to carry it to pfs-meta before it is
/// sent on its own: the last close of a file that never asked for a token costs no round trip
/// of its own while the client goes on creating or opening files.
pub const CLOSE_DELAY: Duration = Duration::from_millis(5);

/// Connects to pfs-meta: the one place a client picks a metadata node's address. Tries
/// `addresses` in turn, starting with the one at index `current` (the one that last took a
/// connection), moving on to the next when a connection cannot be made, and leaves `current`
/// at the one that answered.
///
/// Errors: Unavailable or TimedOut (of the last address tried) naming every address tried.
pub(crate) async fn connect_meta(
    addresses: &[SocketAddr],
    current: &AtomicUsize,
    opts: &ConnectOptions,
    notify: Option<mpsc::Sender<pfs_common::wire::frame::Frame>>,
) -> Result<RpcClient<MetaRequest>> {
    let start = current.load(Ordering::Relaxed);
    let (at, client) = RpcClient::connect_any(addresses, start, "pfs-meta", opts, notify).await?;
    current.store(at, Ordering::Relaxed);
    Ok(client)
}

/// How a call answered NotLeader moves on through the meta nodes: to the next address each
/// time, pausing 50 ms, doubling to 800 ms, once a round of them has been tried (an election
/// takes one or two election timeouts), for at most four rounds.
struct Redirect {
    nodes: usize,
    tries: usize,
}

impl Redirect {
    fn new(nodes: usize) -> Redirect {
        Redirect { nodes: nodes.max(1), tries: 0 }
    }

    /// Points `current` at the next node and waits if a round is over; false when the calls
    /// should stop (four rounds).
    async fn again(&mut self, current: &AtomicUsize) -> bool {
        self.tries += 1;
        if self.tries >= 4 * self.nodes {
            return false;
        }
        let next = (current.load(Ordering::Relaxed) + 1) % self.nodes;
        current.store(next, Ordering::Relaxed);
        let round = self.tries / self.nodes;
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(50 << (round.min(4) as u32))).await;
        }
        true
    }
}

/// Called after the library has written back or dropped a revoked range and before it
/// acknowledges the revoke; runs on a tokio worker thread of the client's runtime.
pub type RevokeCallback = Arc<dyn Fn(&RevokeEvent) + Send + Sync>;

/// What a revoke asked of this client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokeEvent {
    pub file: FileId,
    /// The byte range given up (Write wanted) or downgraded to read (Read wanted).
    pub range: ByteRange,
    pub wanted: Mode,
}

/// An open file as the session sees it: where revokes go, and its cache counters.
pub(crate) trait OpenTarget: Any + Send + Sync {
    /// Carries out a revoke of `range` (`wanted`: the mode the other client asked for).
    fn revoke(self: Arc<Self>, range: ByteRange, wanted: Mode) -> BoxFuture<'static, ()>;
    /// Its cache counters.
    fn cache_stats(&self) -> CacheStats;
    /// The tokens to reclaim from a new pfs-meta leader: those held, and those being written
    /// back under a revoke (as Write: pfs-meta counted them ours until the acknowledgement).
    fn reclaim_tokens(&self) -> Vec<(ByteRange, Mode)>;
}

/// An open file's entry: its state (alive while a handle is), handles open, and the opens
/// pfs-meta counted for the session (one per `Open` or `Create`, all closed at the last close).
struct OpenEntry {
    target: Weak<dyn OpenTarget>,
    handles: usize,
    opens: u32,
}

#[derive(Default)]
pub(crate) struct Counters {
    /// Acquire round trips to the token manager.
    pub(crate) acquires: AtomicU64,
    /// Revokes received from pfs-meta.
    pub(crate) revokes_received: AtomicU64,
    /// Revokes handled.
    pub(crate) revokes: AtomicU64,
    /// Reads another replica answered after one failed.
    pub(crate) failovers: AtomicU64,
    /// Chains asked of pfs-meta.
    pub(crate) chain_fetches: AtomicU64,
    /// Chains taken from Stale answers.
    pub(crate) chains_told: AtomicU64,
}

/// Closes not yet sent to pfs-meta.
#[derive(Default)]
struct PendingCloses {
    closed: Vec<ns::Closed>,
    /// A task sends `closed` after [`CLOSE_DELAY`] unless a request carried them first.
    armed: bool,
}

struct Lease {
    id: SessionId,
    /// The session's secret, shown to take the session over after a failover.
    key: [u8; 16],
    lease_ms: u64,
    evicted: parking_lot::Mutex<Option<Error>>,
    renewed: parking_lot::Mutex<Instant>,
}

/// A call sent again in the form `request` (see [`Session::meta`]), answered as `C` is.
struct Resend<C> {
    request: MetaRequest,
    call: std::marker::PhantomData<fn() -> C>,
}

impl<C> Resend<C> {
    fn new(request: MetaRequest) -> Resend<C> {
        Resend { request, call: std::marker::PhantomData }
    }
}

impl<C: Call<Request = MetaRequest>> Call for Resend<C> {
    type Request = MetaRequest;
    type Reply = C::Reply;
    fn into_request(self) -> MetaRequest {
        self.request
    }
}

/// The shared core of one client (see the module documentation).
pub(crate) struct Session {
    pub(crate) options: ClientOptions,
    pub(crate) opts: ConnectOptions,
    /// Itself, for the tasks a new connection to pfs-meta starts.
    this: Weak<Session>,
    /// The connection the session lives on, and whether it must be replaced (it reached a
    /// node that no longer leads): the next call takes the session over to a new one (see
    /// [`Session::meta_conn`]).
    meta: tokio::sync::Mutex<(Option<RpcClient<MetaRequest>>, bool)>,
    /// Index in `options.meta_addresses` of the metadata node that last took a connection
    /// (see [`connect_meta`]).
    meta_at: AtomicUsize,
    /// Connections to storage servers: one per server, a connect gate per server (a server
    /// that hangs in its handshake holds up only the callers for it), as storage servers
    /// connect to each other.
    storage: PeerPool<StorageRequest>,
    addresses: parking_lot::Mutex<HashMap<ServerId, SocketAddr>>,
    /// Replication chains as last heard from pfs-meta (refreshed when a server says Stale).
    chains: parking_lot::Mutex<HashMap<ChainId, Arc<Chain>>>,
    /// Payload bytes in flight to storage servers (DESIGN.md §7: bounded bytes in flight).
    inflight: Semaphore,
    inflight_max: u32,
    lease: Lease,
    files: parking_lot::Mutex<HashMap<FileId, OpenEntry>>,
    /// Cache counters of files already closed.
    closed_stats: parking_lot::Mutex<CacheStats>,
    on_revoke: parking_lot::RwLock<Option<RevokeCallback>>,
    pub(crate) counters: Counters,
    closes: parking_lot::Mutex<PendingCloses>,
    releases: parking_lot::Mutex<Releases>,
    /// Woken whenever a release is answered.
    released: tokio::sync::Notify,
    /// Slots for the request ids of namespace changes ([`Session::meta_once`]).
    slots: crate::request_slots::RequestSlots,
    /// How many times the session was taken over to a new connection: the notifications of
    /// older connections may not evict it (their node may have been deposed meanwhile).
    taken_over: AtomicU64,
}

impl Session {
    /// Connects to pfs-meta (the first of `options.meta_addresses` that answers) and opens a
    /// session; the revoke and keep-alive tasks run until the session is dropped or evicted.
    ///
    /// Errors: Unavailable or TimedOut naming every pfs-meta address tried.
    pub(crate) async fn open(options: ClientOptions) -> Result<Arc<Session>> {
        let opts = ConnectOptions {
            role: PeerRole::Client,
            name: options.name.clone(),
            connect_timeout: Duration::from_millis(options.connect_timeout_ms),
            request_timeout: Duration::from_millis(options.request_timeout_ms),
            auth: options.auth.clone(),
        };
        let inflight_max = options.max_inflight_bytes.clamp(1 << 20, u32::MAX as u64 >> 1) as u32;
        // The session lives on this connection: pfs-meta pushes revokes on it, and evicts the
        // session when it closes.
        let meta_at = AtomicUsize::new(0);
        let mut redirect = Redirect::new(options.meta_addresses.len());
        let (meta, notify_rx, session, lease_ms, key) = loop {
            let (notify_tx, notify_rx) = mpsc::channel(256);
            let meta = connect_meta(&options.meta_addresses, &meta_at, &opts, Some(notify_tx)).await?;
            match meta.ask(tok::OpenSession).await {
                Ok(tok::SessionGrant { session, lease_ms, key }) => break (meta, notify_rx, session, lease_ms, key),
                Err(e) if e.code() == ErrorCode::NotLeader && redirect.again(&meta_at).await => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let opts_for_storage = opts.clone();
        let s = Arc::new_cyclic(|this| Session {
            opts,
            this: this.clone(),
            meta: tokio::sync::Mutex::new((Some(meta), false)),
            meta_at,
            storage: PeerPool::new(opts_for_storage),
            addresses: parking_lot::Mutex::new(HashMap::new()),
            chains: parking_lot::Mutex::new(HashMap::new()),
            inflight: Semaphore::new(inflight_max as usize),
            inflight_max,
            options,
            lease: Lease {
                id: session,
                key,
                lease_ms,
                evicted: parking_lot::Mutex::new(None),
                renewed: parking_lot::Mutex::new(Instant::now()),
            },
            files: parking_lot::Mutex::new(HashMap::new()),
            closed_stats: parking_lot::Mutex::new(CacheStats::default()),
            on_revoke: parking_lot::RwLock::new(None),
            counters: Counters::default(),
            closes: parking_lot::Mutex::new(PendingCloses::default()),
            releases: parking_lot::Mutex::new(Releases::default()),
            released: tokio::sync::Notify::new(),
            slots: crate::request_slots::RequestSlots::new(),
            taken_over: AtomicU64::new(0),
        });
        tokio::spawn(notifications(Arc::downgrade(&s), notify_rx, 0));
        tokio::spawn(keep_alive(Arc::downgrade(&s)));
        Ok(s)
    }

    /// The session id (the holder of our tokens).
    ///
    /// Errors: Evicted, with the reason, once the session lost its lease or its connection.
    pub(crate) fn id(&self) -> Result<SessionId> {
        if let Some(e) = self.lease.evicted.lock().as_ref() {
            return Err(e.clone());
        }
        // Tokens are only as good as the lease: past it, pfs-meta may have handed them on.
        let renewed = *self.lease.renewed.lock();
        if renewed.elapsed() > Duration::from_millis(self.lease.lease_ms) {
            let e = Error::Evicted {
                session: self.lease.id,
                reason: format!("its lease of {} ms expired without renewal", self.lease.lease_ms),
            };
            self.mark_evicted(e.clone());
            return Err(e);
        }
        Ok(self.lease.id)
    }

    /// Records why the session is gone (the first reason wins, logged once).
    pub(crate) fn mark_evicted(&self, e: Error) {
        let mut ev = self.lease.evicted.lock();
        if ev.is_none() {
            tracing::warn!("{e}");
            *ev = Some(e);
        }
    }

    /// Ends the session: later calls fail naming `reason` (not logged as a warning).
    pub(crate) fn end(&self, reason: &str) {
        let session = self.lease.id;
        self.lease.evicted.lock().get_or_insert_with(|| Error::Evicted { session, reason: reason.into() });
    }

    pub(crate) fn set_on_revoke(&self, f: RevokeCallback) {
        *self.on_revoke.write() = Some(f);
    }

    /// Waits for a payload-bytes-in-flight permit for `len` bytes.
    pub(crate) async fn inflight(&self, len: usize) -> tokio::sync::SemaphorePermit<'_> {
        let n = (len as u64).clamp(1, self.inflight_max as u64) as u32;
        self.inflight.acquire_many(n).await.expect("the in-flight semaphore is never closed")
    }

    // --- open files ---------------------------------------------------------------------

    /// The open state of `file`, made by `make` if no handle has it open; counts one more
    /// handle and one more open of it (every call follows an `Open` or `Create` that pfs-meta
    /// counted for the session).
    ///
    /// Errors: those of `make`.
    pub(crate) fn open_file<T: OpenTarget>(&self, file: FileId, make: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        let mut files = self.files.lock();
        let existing = files.get(&file).and_then(|e| e.target.upgrade()).and_then(|t| {
            let any: Arc<dyn Any + Send + Sync> = t;
            any.downcast::<T>().ok()
        });
        let state = match existing {
            Some(s) => s,
            None => {
                let s = Arc::new(make()?);
                let weak: Weak<dyn OpenTarget> = Arc::downgrade(&s) as Weak<dyn OpenTarget>;
                files.insert(file, OpenEntry { target: weak, handles: 0, opens: 0 });
                s
            }
        };
        let e = files.get_mut(&file).expect("inserted above");
        e.handles += 1;
        e.opens += 1;
        Ok(state)
    }

    /// A handle of `file` closes: one fewer. True if it was the last (then the closer
    /// flushes and calls [`Session::forget_file`]).
    pub(crate) fn close_handle(&self, file: FileId) -> bool {
        let mut files = self.files.lock();
        let Some(e) = files.get_mut(&file) else { return false };
        e.handles = e.handles.saturating_sub(1);
        e.handles == 0
    }

    /// Handles of `file` open now.
    pub(crate) fn handles_of(&self, file: FileId) -> usize {
        self.files.lock().get(&file).map_or(0, |e| e.handles)
    }

    /// The last handle of `file` closed and flushed: forgets the file and returns how many
    /// opens of it pfs-meta counted, to close them, with the release of all its tokens listed
    /// (see [`crate::releases`]) if `asked_tokens`; None if another handle opened it meanwhile
    /// (that handle's close does it). Until now the file stayed registered, so revokes that
    /// came during the flush reached it. Under the same lock as [`Session::open_file`], so a
    /// later open of the file finds the release listed and waits for it before acquiring.
    pub(crate) fn forget_file(
        &self,
        file: FileId,
        asked_tokens: bool,
        stats: CacheStats,
    ) -> Option<(u32, Option<ReleaseTicket>)> {
        let mut files = self.files.lock();
        if files.get(&file).is_none_or(|e| e.handles > 0) {
            return None;
        }
        let opens = files.remove(&file).map_or(0, |e| e.opens);
        add_stats(&mut self.closed_stats.lock(), &stats);
        let release = asked_tokens.then(|| self.releases.lock().begin(file, ByteRange::ALL));
        Some((opens, release))
    }

    /// Files with a handle open or a last close under way.
    pub(crate) fn open_files(&self) -> usize {
        self.files.lock().len()
    }

    /// Releases not answered yet.
    pub(crate) fn releases_pending(&self) -> usize {
        self.releases.lock().len()
    }

    /// Cache counters of every file, open and closed.
    pub(crate) fn cache_stats(&self) -> CacheStats {
        let mut cache = *self.closed_stats.lock();
        let open: Vec<Arc<dyn OpenTarget>> = self.files.lock().values().filter_map(|e| e.target.upgrade()).collect();
        for f in open {
            add_stats(&mut cache, &f.cache_stats());
        }
        cache
    }

    // --- releases -------------------------------------------------------------------------

    /// Lists a release of our tokens on `file` within `range` before anything of it is done:
    /// from now until [`Session::finish_release`] has it answered, acquires that overlap
    /// `range` wait ([`Session::wait_released`]).
    pub(crate) fn begin_release(&self, file: FileId, range: ByteRange) -> ReleaseTicket {
        self.releases.lock().begin(file, range)
    }

    /// Whether a release of our tokens on `file` overlapping `range` is not answered yet.
    pub(crate) fn releasing(&self, file: FileId, range: ByteRange) -> bool {
        self.releases.lock().overlaps(file, range)
    }

    /// Waits until no release of our tokens on `file` overlapping `range` is unanswered.
    pub(crate) async fn wait_released(&self, file: FileId, range: ByteRange) {
        loop {
            let answered = self.released.notified();
            tokio::pin!(answered);
            // Registered before the check, so an answer between the two is not missed.
            answered.as_mut().enable();
            if !self.releasing(file, range) {
                return;
            }
            answered.await;
        }
    }

    /// Sends the release `ticket` names and unlists it once pfs-meta answered. A release is
    /// idempotent and nothing overlapping it is acquired meanwhile, so one whose fate is
    /// unknown (timed out, pfs-meta unreachable) is sent again, backing off, until it is
    /// answered or the session is gone (its tokens go with it). A refusal is logged only: the
    /// session holds less than pfs-meta thinks, never more.
    pub(crate) async fn finish_release(&self, ticket: ReleaseTicket) {
        let (file, range) = (ticket.file, ticket.range);
        let mut backoff = Duration::from_millis(10);
        while let Ok(session) = self.id() {
            match self.meta(tok::Release { session, file, range }).await {
                Ok(()) => break,
                Err(e) if matches!(e.code(), ErrorCode::TimedOut | ErrorCode::Unavailable) => {
                    tracing::debug!("giving back {range} of {file}: {e}; sending it again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(crate::failover::BACKOFF_MAX_MS));
                }
                Err(e) => {
                    tracing::debug!("giving back {range} of {file}: {e}");
                    break;
                }
            }
        }
        self.releases.lock().end(ticket);
        self.released.notify_waiters();
    }

    // --- closes ---------------------------------------------------------------------------

    /// Tells pfs-meta, soon, that this session closed a file: the next `Create` or `Open`
    /// carries the close, or, if none comes within [`CLOSE_DELAY`], a `Close` of its own
    /// (with every other close pending; at once when [`CLOSE_MAX`] are pending). A close
    /// makes nothing durable on pfs-meta (it counts opens, so an unlinked file's data goes
    /// at its last close), so it need not cost a round trip: a file created and closed costs
    /// one request. Until it arrives the file only counts as open a little longer. Failures
    /// are logged only: the session's end closes everything it had open.
    pub(crate) async fn close_later(self: &Arc<Self>, closed: ns::Closed) {
        let (full, arm) = {
            let mut p = self.closes.lock();
            p.closed.push(closed);
            if p.closed.len() >= CLOSE_MAX {
                (std::mem::take(&mut p.closed), false)
            } else {
                (Vec::new(), !std::mem::replace(&mut p.armed, true))
            }
        };
        if !full.is_empty() {
            self.send_closes(full).await;
        }
        if arm {
            let session = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(CLOSE_DELAY).await;
                let Some(s) = session.upgrade() else { return };
                let closed = {
                    let mut p = s.closes.lock();
                    p.armed = false;
                    std::mem::take(&mut p.closed)
                };
                s.send_closes(closed).await;
            });
        }
    }

    /// The closes pending, for a request to carry: pfs-meta serves them first, whatever the
    /// request's outcome (lost only with the connection, and so with the session).
    pub(crate) fn carry_closes(&self) -> Vec<ns::Closed> {
        std::mem::take(&mut self.closes.lock().closed)
    }

    /// Sends `closed` (with the closes pending, if any) in a `Close` of their own; failures
    /// are logged only.
    pub(crate) async fn send_closes(&self, mut closed: Vec<ns::Closed>) {
        if closed.len() < CLOSE_MAX {
            let mut p = self.closes.lock();
            let room = (CLOSE_MAX - closed.len()).min(p.closed.len());
            closed.extend(p.closed.drain(..room));
        }
        if closed.is_empty() {
            return;
        }
        let Ok(session) = self.id() else { return };
        if let Err(e) = self.meta(ns::Close { session, files: closed }).await {
            tracing::debug!("telling pfs-meta of closed files: {e}");
        }
    }

    // --- connections ------------------------------------------------------------------

    /// The connection the session lives on. One that closed, or that reached a node which
    /// no longer leads, is replaced: the session is taken over to a new connection to the
    /// leader ([`Session::take_over`]), the old one kept open until then (its node evicts
    /// the session when it closes, if it still leads).
    async fn meta_conn(&self) -> Result<RpcClient<MetaRequest>> {
        let mut slot = self.meta.lock().await;
        match &*slot {
            (Some(c), false) if !c.is_closed() => return Ok(c.clone()),
            _ => {}
        }
        let c = self.take_over().await?;
        *slot = (Some(c.clone()), false);
        Ok(c)
    }

    /// The session's connection `conn` reached a node that does not lead: the next call
    /// moves the session, unless it has moved since (many calls in flight fail together, and
    /// one take-over answers them all).
    async fn meta_stale(&self, conn: &RpcClient<MetaRequest>) {
        let mut slot = self.meta.lock().await;
        if slot.0.as_ref().is_some_and(|c| c.same_connection(conn)) {
            slot.1 = true;
        }
    }

    /// Takes the session over to a new connection to the leader: reclaims every open file
    /// with its opens and tokens ([`tok::Reclaim`], in batches), so that the write-back cache
    /// survives a failover, then listens for revokes on it. Moves on through the meta nodes
    /// on NotLeader (see [`Redirect`]).
    ///
    /// Errors: Evicted when the leader refuses the session (evicted, or its recovery window
    /// is over: the session is marked evicted); Unavailable or TimedOut when no leader
    /// answers.
    ///
    /// Boxed: the revoke handler it starts calls pfs-meta, which may take the session over.
    fn take_over(&self) -> BoxFuture<'_, Result<RpcClient<MetaRequest>>> {
        Box::pin(self.take_over_now())
    }

    async fn take_over_now(&self) -> Result<RpcClient<MetaRequest>> {
        let session = self.id()?;
        let mut redirect = Redirect::new(self.options.meta_addresses.len());
        loop {
            let (notify_tx, notify_rx) = mpsc::channel(256);
            let conn = connect_meta(&self.options.meta_addresses, &self.meta_at, &self.opts, Some(notify_tx)).await?;
            let sent = Instant::now();
            match self.send_reclaims(&conn, session).await {
                Ok(lease_ms) => {
                    *self.lease.renewed.lock() = sent;
                    tracing::info!(
                        "session {session:x} taken over to pfs-meta at {} (lease {lease_ms} ms)",
                        self.options.meta_addresses[self.meta_at.load(Ordering::Relaxed)]
                    );
                    let generation = self.taken_over.fetch_add(1, Ordering::AcqRel) + 1;
                    tokio::spawn(notifications(self.this.clone(), notify_rx, generation));
                    return Ok(conn);
                }
                Err(e) if e.code() == ErrorCode::NotLeader && redirect.again(&self.meta_at).await => continue,
                Err(e) if matches!(e.code(), ErrorCode::Evicted | ErrorCode::Denied | ErrorCode::Invalid) => {
                    let e = Error::Evicted {
                        session,
                        reason: format!("pfs-meta refused to take it over after its leader changed: {e}"),
                    };
                    self.mark_evicted(e.clone());
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends the reclaims of every open file on `conn`; returns the lease, ms.
    async fn send_reclaims(&self, conn: &RpcClient<MetaRequest>, session: SessionId) -> Result<u64> {
        let files: Vec<tok::ReclaimedFile> = {
            type Opened = (FileId, u32, Option<Arc<dyn OpenTarget>>);
            let open: Vec<Opened> = self.files.lock().iter().map(|(f, e)| (*f, e.opens, e.target.upgrade())).collect();
            open.into_iter()
                .map(|(file, opens, target)| tok::ReclaimedFile {
                    file,
                    opens,
                    tokens: target.map(|t| t.reclaim_tokens()).unwrap_or_default(),
                })
                .collect()
        };
        let mut batches: Vec<Vec<tok::ReclaimedFile>> =
            files.chunks(tok::RECLAIM_MAX_FILES).map(|c| c.to_vec()).collect();
        if batches.is_empty() {
            batches.push(Vec::new());
        }
        let last = batches.len() - 1;
        let mut lease_ms = self.lease.lease_ms;
        for (i, files) in batches.into_iter().enumerate() {
            let r = conn.ask(tok::Reclaim { session, key: self.lease.key, files, done: i == last }).await?;
            lease_ms = r.lease_ms;
        }
        Ok(lease_ms)
    }

    /// A new connection to pfs-meta with `opts` (an administrator's for `remove_orphan`), by
    /// [`connect_meta`].
    pub(crate) async fn connect_meta(&self, opts: &ConnectOptions) -> Result<RpcClient<MetaRequest>> {
        connect_meta(&self.options.meta_addresses, &self.meta_at, opts, None).await
    }

    /// Sends one call to pfs-meta and returns its answer. A meta node that is not the leader
    /// answers NotLeader without doing anything: the call goes to the next node then (see
    /// [`Redirect`]). A call whose fate is unknown (its connection broke before the answer, no
    /// answer came in time, or the leader changed after proposing it: Indeterminate) is sent
    /// again the same way if that
    /// is safe ([`MetaRequest::is_retry_safe`]), and otherwise fails with that error.
    ///
    /// A call sent again goes without the closes it carries ([`MetaRequest::without_closes`]):
    /// pfs-meta may have served them.
    pub(crate) async fn meta<C: Call<Request = MetaRequest> + Clone>(&self, call: C) -> Result<C::Reply> {
        let mut redirect = Redirect::new(self.options.meta_addresses.len());
        let retry_safe = call.clone().into_request().is_retry_safe();
        let mut again: Option<MetaRequest> = None;
        loop {
            let conn = self.meta_conn().await?;
            let answer = match &again {
                None => conn.ask(call.clone()).await,
                Some(request) => conn.ask(Resend::<C>::new(request.clone())).await,
            };
            match answer {
                Err(e)
                    if retry_safe
                        && (e.is_closed_before_answer()
                            || matches!(e.code(), ErrorCode::Indeterminate | ErrorCode::TimedOut)) =>
                {
                    tracing::debug!("a call to pfs-meta of unknown fate ({e}); sending it again");
                    again.get_or_insert_with(|| call.clone().into_request().without_closes());
                    self.meta_stale(&conn).await;
                    if !redirect.again(&self.meta_at).await {
                        return Err(e.into());
                    }
                }
                Err(e) if e.code() == ErrorCode::NotLeader => {
                    // This connection is to a follower: the next call moves the session.
                    self.meta_stale(&conn).await;
                    if !redirect.again(&self.meta_at).await {
                        return Err(e.into());
                    }
                }
                r => return Ok(r?),
            }
        }
    }

    /// [`Session::meta`] of the namespace change `make` builds with a request id of this
    /// session: sending it again after a lost answer or a leader change is safe (pfs-meta
    /// answers a repeat from its log, see [`crate::request_slots`]). Errors: as `meta`;
    /// Evicted when the session is gone.
    pub(crate) async fn meta_once<C: Call<Request = MetaRequest> + Clone>(
        &self,
        make: impl FnOnce(ns::RequestId) -> C,
    ) -> Result<C::Reply> {
        let slot = self.slots.take(self.id()?).await;
        self.meta(make(slot.id())).await
    }

    /// The connection to storage server `id`, opened if needed (its address from pfs-meta's
    /// registry when not known yet).
    pub(crate) async fn storage_conn(&self, id: ServerId) -> Result<RpcClient<StorageRequest>> {
        self.storage
            .get(id, || async {
                if let Some(a) = self.addresses.lock().get(&id).copied() {
                    return Ok(a);
                }
                self.refresh_addresses().await?;
                self.addresses.lock().get(&id).copied().ok_or_else(|| Error::Protocol {
                    peer: "pfs-meta".into(),
                    message: format!("a layout names {id}, which its registry does not list"),
                })
            })
            .await
    }

    /// Connections opened to storage servers since the session began.
    pub(crate) fn storage_connects(&self) -> u64 {
        self.storage.connects()
    }

    async fn refresh_addresses(&self) -> Result<()> {
        let servers = self.servers().await?;
        let mut a = self.addresses.lock();
        for s in servers {
            a.insert(s.id, s.address);
        }
        Ok(())
    }

    /// The storage-server registry as pfs-meta sees it.
    pub(crate) async fn servers(&self) -> Result<Vec<ServerStatus>> {
        self.meta(ListServers).await
    }

    /// Sends one call (with a payload in parts, sent back to back) to storage server `id`;
    /// returns its answer and payload. A call whose connection turns out closed before any
    /// answer came is sent once more on a new connection (see [`once_more_if_closed`]).
    pub(crate) async fn storage<C: Call<Request = StorageRequest> + Clone>(
        &self,
        id: ServerId,
        call: C,
        payload: &[&[u8]],
    ) -> Result<(C::Reply, pfs_common::pool::PooledBuf)> {
        once_more_if_closed(|| self.storage_conn(id), call, payload).await
    }

    /// Chain `id`, as last heard of it (asking pfs-meta the first time).
    ///
    /// Errors: Protocol when pfs-meta does not know the chain; Unavailable, TimedOut.
    pub(crate) async fn chain(&self, id: ChainId) -> Result<Arc<Chain>> {
        if let Some(c) = self.chains.lock().get(&id) {
            return Ok(c.clone());
        }
        self.refresh_chain(id).await
    }

    /// Chain `id` fresh from pfs-meta (after a storage server answered Stale).
    ///
    /// Errors: Protocol when pfs-meta does not know the chain; Unavailable, TimedOut.
    pub(crate) async fn refresh_chain(&self, id: ChainId) -> Result<Arc<Chain>> {
        self.counters.chain_fetches.fetch_add(1, Ordering::Relaxed);
        let chains = self.meta(GetChains { ids: vec![id] }).await?;
        let c = chains.into_iter().find(|c| c.id == id).ok_or_else(|| Error::Protocol {
            peer: "pfs-meta".into(),
            message: format!("a layout names {id}, which pfs-meta does not know"),
        })?;
        Ok(self.learn_chain(c))
    }

    /// Remembers `chain` (from pfs-meta, or from a storage server's Stale answer) unless a
    /// version at least as new is known already, so an answer that was overtaken never
    /// replaces a newer chain; returns the newest known.
    pub(crate) fn learn_chain(&self, chain: Chain) -> Arc<Chain> {
        let mut cache = self.chains.lock();
        match cache.get(&chain.id) {
            Some(known) if known.version >= chain.version => known.clone(),
            _ => {
                let c = Arc::new(chain);
                cache.insert(c.id, c.clone());
                c
            }
        }
    }

    /// Every chain, fresh from pfs-meta.
    pub(crate) async fn all_chains(&self) -> Result<Vec<Chain>> {
        let chains = self.meta(GetChains { ids: Vec::new() }).await?;
        let mut cache = self.chains.lock();
        for c in &chains {
            cache.insert(c.id, Arc::new(c.clone()));
        }
        Ok(chains)
    }
}

/// Sends `call` on the connection `conn` gives and, if that connection turns out closed before
/// any answer came, once more on the next connection `conn` gives (which replaces a closed
/// one). A server closes connections idle past `timeouts.idle_ms`, and a request sent just
/// then meets the close; the application should not see that. Sending twice is safe for every
/// storage call under the tokens this client holds: a write puts the same bytes at the same
/// place, which no other client may write meanwhile, and a read, truncate, fsync or remove
/// repeated does what it did. An answer (an error included) or a timeout is never resent.
async fn once_more_if_closed<C, F, Fut>(
    mut conn: F,
    call: C,
    payload: &[&[u8]],
) -> Result<(C::Reply, pfs_common::pool::PooledBuf)>
where
    C: Call<Request = StorageRequest> + Clone,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<RpcClient<StorageRequest>>>,
{
    match conn().await?.call_parts(call.clone(), payload).await {
        Err(e) if e.is_closed_before_answer() => {
            tracing::debug!("{e} before answering; sending once more on a new connection");
            Ok(conn().await?.call_parts(call, payload).await?)
        }
        r => Ok(r?),
    }
}

pub(crate) fn add_stats(into: &mut CacheStats, s: &CacheStats) {
    into.read_hits += s.read_hits;
    into.read_misses += s.read_misses;
    into.write_hits += s.write_hits;
    into.evictions += s.evictions;
    into.writebacks += s.writebacks;
    into.invalidations += s.invalidations;
    into.close_writebacks += s.close_writebacks;
    into.close_evictions += s.close_evictions;
}

/// Renews the lease every third of it until the session is dropped or evicted. A renewal
/// that takes more than a sixth of the lease (the leader hangs, or is cut off) moves the
/// session to another connection, so a failover is noticed well within the lease.
async fn keep_alive(session: Weak<Session>) {
    loop {
        let lease_ms = match session.upgrade() {
            Some(s) => s.lease.lease_ms,
            None => return,
        };
        tokio::time::sleep(Duration::from_millis((lease_ms / 3).max(1))).await;
        let Some(s) = session.upgrade() else { return };
        if s.lease.evicted.lock().is_some() {
            return;
        }
        let id = s.lease.id;
        // The lease runs from when pfs-meta hears us, which is after we send: counting from
        // the send keeps our view of the lease ending no later than pfs-meta's.
        let sent = Instant::now();
        let patience = Duration::from_millis((lease_ms / 6).max(1));
        // The connection this renewal goes out on (none while a take-over is under way: it
        // is being replaced already).
        let on = s.meta.try_lock().ok().and_then(|slot| slot.0.clone());
        match tokio::time::timeout(patience, s.meta(tok::KeepAlive { session: id })).await {
            Ok(Ok(())) => *s.lease.renewed.lock() = sent,
            Ok(Err(e)) if e.code() == ErrorCode::Evicted => s.mark_evicted(e),
            // Transient: the lease check in `id()` decides when it is too late.
            Ok(Err(e)) => tracing::debug!("keep-alive of session {id:x} failed: {e}"),
            Err(_) => {
                tracing::info!(
                    "keep-alive of session {id:x} unanswered after {patience:?}; trying the other meta nodes"
                );
                if let Some(conn) = &on {
                    s.meta_stale(conn).await;
                }
                // At once: a take-over waits for no renewal period.
                if let Err(e) = s.meta_conn().await {
                    tracing::debug!("moving session {id:x}: {e}");
                }
            }
        }
    }
}

/// Handles pfs-meta's pushes (revokes, eviction) until the connection ends; then the session
/// is taken over to a new connection at once (a new leader reclaims it; the one it was on, if
/// it still leads, evicted it when the connection closed and refuses the take-over).
/// Handles the notifications of the session's connection number `generation` (0 the first,
/// one more at each take-over) until it closes, then takes the session over if it has not been
/// yet. An eviction is believed only from the current connection: an older one may be of a
/// leader that was deposed while it was paused, and that evicts every session it finds
/// expired when it goes on (its revokes are still served: until the take-over they are the
/// leader's).
async fn notifications(
    session: Weak<Session>,
    mut rx: mpsc::Receiver<pfs_common::wire::frame::Frame>,
    generation: u64,
) {
    while let Some(frame) = rx.recv().await {
        let Some(s) = session.upgrade() else { return };
        match pfs_common::wire::decode::<ClientNotify>(&frame.body) {
            Ok(ClientNotify::Revoke { revoke, file, range, wanted }) => {
                s.counters.revokes_received.fetch_add(1, Ordering::Relaxed);
                // Concurrently: one slow write-back must not hold up revokes of other files.
                tokio::spawn(handle_revoke(s, revoke, file, range, wanted));
            }
            Ok(ClientNotify::Evicted { session, reason }) => {
                if s.taken_over.load(Ordering::Acquire) != generation {
                    tracing::warn!(
                        "session {session:x}: ignoring an eviction ({reason}) from a connection it was taken over from"
                    );
                    continue;
                }
                s.mark_evicted(Error::Evicted { session, reason: format!("evicted by pfs-meta: {reason}") })
            }
            Err(e) => tracing::warn!("pfs-meta sent an undecodable notification: {e}"),
        }
    }
    let Some(s) = session.upgrade() else { return };
    if s.lease.evicted.lock().is_some() {
        return;
    }
    let id = s.lease.id;
    tracing::info!("session {id:x}: its connection to pfs-meta closed; taking it over to the leader");
    if let Err(e) = s.meta_conn().await {
        tracing::warn!("session {id:x}: its connection to pfs-meta was lost and no leader took it over yet: {e}");
    }
}

async fn handle_revoke(s: Arc<Session>, revoke: u64, file: FileId, range: ByteRange, wanted: Mode) {
    let target = s.files.lock().get(&file).and_then(|e| e.target.upgrade());
    if let Some(t) = target {
        t.revoke(range, wanted).await;
    }
    s.counters.revokes.fetch_add(1, Ordering::Relaxed);
    let callback = s.on_revoke.read().clone();
    if let Some(cb) = callback {
        cb(&RevokeEvent { file, range, wanted });
    }
    let session = s.lease.id;
    if let Err(e) = s.meta(tok::RevokeDone { session, revoke }).await {
        tracing::warn!("acknowledging revoke {revoke} of file {file}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pfs_common::pool;
    use pfs_common::wire::frame::{read_frame, write_frame, FrameKind, DEFAULT_LIMITS};
    use pfs_common::wire::storage::{GetStatus, StorageStatus};
    use pfs_common::wire::{self, HelloReply, ResponseBody, PROTOCOL_VERSION};
    use std::sync::atomic::AtomicUsize;
    use tokio::net::{TcpListener, TcpStream};

    /// A fake storage server: answers the handshake of every connection, then its very first
    /// request either not at all, closing the connection (`close_first`), or with an error;
    /// every later request with a status. Counts the connections it accepted.
    async fn fake_server(close_first: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            let mut requests = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                read(&mut s).await;
                let hello: ResponseBody<HelloReply> = Ok(HelloReply {
                    version: PROTOCOL_VERSION,
                    server: "fake".into(),
                    nonce: [0; 32],
                    auth: false,
                    protect_data: false,
                    proof: None,
                });
                write_frame(&mut s, FrameKind::Response, 0, &wire::encode(&hello), &[], None).await.unwrap();
                loop {
                    let req = read(&mut s).await;
                    requests += 1;
                    let answer: ResponseBody<StorageStatus> = match (requests, close_first) {
                        (1, true) => break, // closed unanswered, as an idle close crossing it
                        (1, false) => Err(pfs_common::error::WireError {
                            code: ErrorCode::Invalid,
                            message: "refused".into(),
                            chain: None,
                        }),
                        _ => Ok(StorageStatus {
                            id: ServerId(1),
                            capacity_bytes: 1,
                            free_bytes: 1,
                            chunks: 0,
                            engine: "fake".into(),
                        }),
                    };
                    let body = wire::encode(&answer);
                    write_frame(&mut s, FrameKind::Response, req.header.request_id, &body, &[], None).await.unwrap();
                }
            }
        });
        (addr, conns)
    }

    async fn read(s: &mut TcpStream) -> pfs_common::wire::frame::Frame {
        read_frame(s, &DEFAULT_LIMITS, pool::global(), None).await.unwrap().unwrap()
    }

    fn connect(addr: SocketAddr) -> impl std::future::Future<Output = Result<RpcClient<StorageRequest>>> {
        let opts = ConnectOptions {
            role: PeerRole::Client,
            name: "retry-test".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            auth: pfs_common::auth::Auth::none(),
        };
        async move { Ok(RpcClient::connect(addr, "storage-1", &opts, None).await?) }
    }

    #[tokio::test]
    async fn a_call_closed_before_its_answer_is_sent_once_more() {
        let (addr, conns) = fake_server(true).await;
        let (status, _) = once_more_if_closed(|| connect(addr), GetStatus, &[]).await.unwrap();
        assert_eq!(status.engine, "fake");
        assert_eq!(conns.load(Ordering::SeqCst), 2, "a second connection carried the call");
    }

    #[tokio::test]
    async fn an_answered_error_is_not_sent_again() {
        let (addr, conns) = fake_server(false).await;
        let e = once_more_if_closed(|| connect(addr), GetStatus, &[]).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    /// A server that accepts connections and closes them at once (a handshake never
    /// completes), counting them.
    async fn hanging_up_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        (addr, conns)
    }

    /// A server that completes the handshake of every connection and then only waits for
    /// it to close, counting connections.
    async fn handshaking_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    read(&mut s).await;
                    let hello: ResponseBody<HelloReply> = Ok(HelloReply {
                        version: PROTOCOL_VERSION,
                        server: "fake pfs-meta".into(),
                        nonce: [0; 32],
                        auth: false,
                        protect_data: false,
                        proof: None,
                    });
                    write_frame(&mut s, FrameKind::Response, 0, &wire::encode(&hello), &[], None).await.unwrap();
                    while let Ok(Some(_)) = read_frame(&mut s, &DEFAULT_LIMITS, pool::global(), None).await {}
                });
            }
        });
        (addr, conns)
    }

    #[tokio::test]
    async fn pfs_meta_is_tried_at_each_address_from_the_one_that_last_answered() {
        let (bad, bad_conns) = hanging_up_server().await;
        let (good, good_conns) = handshaking_server().await;
        let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let opts = ConnectOptions {
            role: PeerRole::Client,
            name: "meta-test".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            auth: pfs_common::auth::Auth::none(),
        };
        let addresses = [refused, bad, good];
        let current = AtomicUsize::new(0);
        connect_meta(&addresses, &current, &opts, None).await.unwrap();
        assert_eq!(current.load(Ordering::SeqCst), 2, "the third address answered");
        assert_eq!((bad_conns.load(Ordering::SeqCst), good_conns.load(Ordering::SeqCst)), (1, 1));
        // The next connection starts with the one that answered: the others are not tried.
        connect_meta(&addresses, &current, &opts, None).await.unwrap();
        assert_eq!(current.load(Ordering::SeqCst), 2);
        assert_eq!((bad_conns.load(Ordering::SeqCst), good_conns.load(Ordering::SeqCst)), (1, 2));
        // None answers: Unavailable, naming every address; `current` stays where it was.
        let current = AtomicUsize::new(1);
        let e = connect_meta(&[refused, bad], &current, &opts, None).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
        let shown = e.to_string();
        assert!(shown.contains(&refused.to_string()) && shown.contains(&bad.to_string()), "{shown}");
        assert_eq!(current.load(Ordering::SeqCst), 1);
        assert_eq!(bad_conns.load(Ordering::SeqCst), 2);
    }
}
