//! [`Client`]: connections to pfs-meta and the storage servers, and the namespace operations.

use crate::cache::CacheStats;
use crate::error::{Error, Result};
use crate::file::{File, OpenFile};
use crate::options::ClientOptions;
use pfs_common::chain::{Chain, ChainId};
use pfs_common::ids::{ChunkIndex, FileId, ServerId};
use pfs_common::layout::LayoutChoice;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::token::{ByteRange, Mode, SessionId};
use pfs_common::wire::namespace::{
    self as ns, Attr, DirEntry, FileKind, NewAttrs, Target, CLOSE_MAX, READDIR_PAGE_MAX,
};
use pfs_common::wire::registry::{
    ChunkInfo, GetChains, GetChunks, GetHealth, Health, ListServers, OrphanCopy, RemoveOrphan, ServerStatus,
    GET_CHUNKS_MAX,
};
use pfs_common::wire::storage::{
    ChunkPage, GetStatus, ListChunks, RepairChunk, Scrub, ScrubStatus, StorageRequest, StorageStatus,
};
use pfs_common::wire::tokens::{self as tok, ClientNotify};
use pfs_common::wire::{Call, MetaRequest, PeerRole};
use pfs_common::ErrorCode;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::sync::Semaphore;

/// Layout choices for a new file; `None` inherits the parent directory's (or cluster's) default.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateOptions {
    /// Storage targets to stripe over (clamped to the servers that are up).
    pub stripe_count: Option<u32>,
    /// Chunk size in bytes; must be a multiple of the block size (`block_size × stripe_blocks`).
    pub chunk_size: Option<u64>,
    /// Block size in bytes (power of two, at least 512).
    pub block_size: Option<u32>,
    /// Copies of every chunk, each on another storage server (1..=3; `pfs setstripe -r`).
    /// Fixed at create; as many storage servers must be up.
    pub replicas: Option<u8>,
    /// Fail with Exists if the file exists (otherwise it is opened and truncated to 0).
    pub exclusive: bool,
    /// Owner and mode of the new file; unset: [`NewAttrs::for_process`].
    pub attrs: Option<NewAttrs>,
}

/// A connection to a pfs cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) options: ClientOptions,
    opts: ConnectOptions,
    meta: tokio::sync::Mutex<Option<RpcClient<MetaRequest>>>,
    storage: parking_lot::Mutex<HashMap<ServerId, RpcClient<StorageRequest>>>,
    /// Serialises connection set-up per storage server so a burst of requests opens one socket.
    storage_connecting: parking_lot::Mutex<HashMap<ServerId, Arc<tokio::sync::Mutex<()>>>>,
    addresses: parking_lot::Mutex<HashMap<ServerId, SocketAddr>>,
    /// Replication chains as last heard from pfs-meta (refreshed when a server says Stale).
    chains: parking_lot::Mutex<HashMap<ChainId, Arc<Chain>>>,
    /// Payload bytes in flight to storage servers (DESIGN.md §7: bounded bytes in flight).
    pub(crate) inflight: Arc<Semaphore>,
    pub(crate) inflight_max: u32,
    session: SessionState,
    /// Open files by id: the revoke handler finds a file's state here.
    files: parking_lot::Mutex<HashMap<FileId, Arc<OpenFile>>>,
    /// Cache counters of files already closed.
    closed_stats: parking_lot::Mutex<CacheStats>,
    on_revoke: parking_lot::RwLock<Option<RevokeCallback>>,
    pub(crate) counters: Counters,
    /// Closes pfs-meta has not been told of yet (see [`Client::close_later`]).
    closes: parking_lot::Mutex<PendingCloses>,
    /// Token releases sent (or about to be) and not yet answered (see [`Client::begin_release`]).
    releases: parking_lot::Mutex<Releases>,
    /// Woken whenever a release is answered.
    released: tokio::sync::Notify,
}

/// Releases of this session's tokens that pfs-meta may not have applied yet, by file.
///
/// pfs-meta serves a session's requests concurrently, and a client gives tokens back in two
/// steps: first it stops believing it holds them (and writes back what they cover), then it
/// sends the `Release`. An `Acquire` of an overlapping range sent between the two, or while
/// the `Release` is on its way, could be answered from the tokens the `Release` then takes
/// away, and the client would believe it holds a token pfs-meta has given up (the writes
/// under it are refused, or worse, another client is granted the same bytes). So an acquire
/// that overlaps a release listed here waits until that release is answered: a session's
/// token requests over the same bytes reach pfs-meta in the order the client made them.
#[derive(Default)]
struct Releases {
    next: u64,
    pending: HashMap<FileId, Vec<(u64, ByteRange)>>,
}

/// A release listed in [`Releases`], to send with [`Client::finish_release`].
#[must_use = "a listed release blocks acquires of its range until finish_release sends it"]
pub(crate) struct ReleaseTicket {
    id: u64,
    file: FileId,
    range: ByteRange,
}

/// How long a close may wait for a `Create` or `Open` to carry it to pfs-meta before it is
/// sent on its own: the last close of a file that never asked for a token costs no round trip
/// of its own while the client goes on creating or opening files.
pub const CLOSE_DELAY: Duration = Duration::from_millis(5);

/// Closes not yet sent to pfs-meta.
#[derive(Default)]
struct PendingCloses {
    closed: Vec<ns::Closed>,
    /// A task sends `closed` after [`CLOSE_DELAY`] unless a request carried them first.
    armed: bool,
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

#[derive(Default)]
pub(crate) struct Counters {
    /// Acquire round trips to the token manager.
    pub(crate) acquires: AtomicU64,
    /// Revokes handled.
    pub(crate) revokes: AtomicU64,
    /// Connections opened to storage servers.
    pub(crate) storage_connects: AtomicU64,
    /// Reads another replica answered after one failed.
    pub(crate) failovers: AtomicU64,
}

/// Counters of one client: the block cache (like the seed's `pfs_execstat`) and token traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Block cache counters summed over every file this client opened (counts are blocks).
    pub cache: CacheStats,
    /// Acquire round trips to the token manager.
    pub token_acquires: u64,
    /// Revokes this client handled.
    pub revokes: u64,
    /// Connections opened to storage servers: one per server used, plus one each time a
    /// connection was found closed (a server closes idle ones, `timeouts.idle_ms`) and opened
    /// again.
    pub storage_connects: u64,
    /// Chunk reads another replica answered after one failed (down, corrupt, lost).
    pub failovers: u64,
}

struct SessionState {
    id: SessionId,
    lease_ms: u64,
    evicted: parking_lot::Mutex<Option<Error>>,
    renewed: parking_lot::Mutex<Instant>,
}

impl Client {
    /// Connects to pfs-meta at `options.meta_address` and opens a session. Storage servers
    /// are connected on first use, at the addresses they registered with pfs-meta.
    ///
    /// Errors: Unavailable or TimedOut naming pfs-meta's address.
    pub async fn connect(options: ClientOptions) -> Result<Client> {
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
        let (notify_tx, notify_rx) = mpsc::channel(256);
        let meta = RpcClient::connect(options.meta_address, "pfs-meta", &opts, Some(notify_tx)).await?;
        let tok::SessionGrant { session, lease_ms } = meta.ask(tok::OpenSession).await?;
        let client = Client {
            inner: Arc::new(Inner {
                opts,
                meta: tokio::sync::Mutex::new(Some(meta)),
                storage: parking_lot::Mutex::new(HashMap::new()),
                storage_connecting: parking_lot::Mutex::new(HashMap::new()),
                addresses: parking_lot::Mutex::new(HashMap::new()),
                chains: parking_lot::Mutex::new(HashMap::new()),
                inflight: Arc::new(Semaphore::new(inflight_max as usize)),
                inflight_max,
                options,
                session: SessionState {
                    id: session,
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
            }),
        };
        tokio::spawn(notifications(Arc::downgrade(&client.inner), notify_rx));
        tokio::spawn(keep_alive(Arc::downgrade(&client.inner)));
        Ok(client)
    }

    /// This client's session id (the holder of its tokens).
    ///
    /// Errors: Evicted, with the reason, once the session lost its lease or its connection.
    pub fn session(&self) -> Result<SessionId> {
        if let Some(e) = self.inner.session.evicted.lock().as_ref() {
            return Err(e.clone());
        }
        // Tokens are only as good as the lease: past it, pfs-meta may have handed them on.
        let renewed = *self.inner.session.renewed.lock();
        if renewed.elapsed() > Duration::from_millis(self.inner.session.lease_ms) {
            let e = Error::Evicted {
                session: self.inner.session.id,
                reason: format!("its lease of {} ms expired without renewal", self.inner.session.lease_ms),
            };
            self.mark_evicted(e.clone());
            return Err(e);
        }
        Ok(self.inner.session.id)
    }

    pub(crate) fn mark_evicted(&self, e: Error) {
        mark_evicted(&self.inner, e);
    }

    /// Registers `f` to be called for every revoke this client handles, after the revoked
    /// range was written back (Write held) and dropped or downgraded, before the revoke is
    /// acknowledged. It runs on a tokio worker thread; keep it short and do not block.
    pub fn on_revoke(&self, f: impl Fn(&RevokeEvent) + Send + Sync + 'static) {
        *self.inner.on_revoke.write() = Some(Arc::new(f));
    }

    /// Cache counters (all files, open and closed) and token traffic of this client.
    pub fn stats(&self) -> ClientStats {
        let mut cache = *self.inner.closed_stats.lock();
        for f in self.inner.files.lock().values() {
            add_stats(&mut cache, &f.cache_stats());
        }
        ClientStats {
            cache,
            token_acquires: self.inner.counters.acquires.load(Ordering::Relaxed),
            revokes: self.inner.counters.revokes.load(Ordering::Relaxed),
            storage_connects: self.inner.counters.storage_connects.load(Ordering::Relaxed),
            failovers: self.inner.counters.failovers.load(Ordering::Relaxed),
        }
    }

    /// Ends the session cleanly (tokens given back). Open files should be closed first: their
    /// dirty cached bytes are not written back here.
    pub async fn close(&self) -> Result<()> {
        let session = self.session()?;
        let r = self.meta(tok::CloseSession { session }).await;
        // Deliberate: recorded so later calls say why they fail, but not logged as a warning.
        self.inner
            .session
            .evicted
            .lock()
            .get_or_insert_with(|| Error::Evicted { session, reason: "closed by this client".into() });
        r
    }

    /// Asks the token manager for a token directly, outside any file handle: the raw protocol
    /// for benchmarks and diagnostics (file I/O acquires its tokens itself). Returns the range
    /// granted (⊇ `required`, ⊆ `desired`).
    ///
    /// Errors: Evicted, Invalid (empty range, required ⊄ desired), NotFound (file).
    pub async fn acquire_token(
        &self,
        file: FileId,
        mode: Mode,
        required: ByteRange,
        desired: ByteRange,
    ) -> Result<ByteRange> {
        let session = self.session()?;
        let granted = self.meta(tok::Acquire { session, file, mode, required, desired, ahead: None }).await?;
        self.inner.counters.acquires.fetch_add(1, Ordering::Relaxed);
        Ok(granted.range)
    }

    /// Gives back tokens taken with [`Client::acquire_token`].
    pub async fn release_token(&self, file: FileId, range: ByteRange) -> Result<()> {
        let session = self.session()?;
        self.meta(tok::Release { session, file, range }).await
    }

    /// Lists a release of our tokens on `file` within `range` before anything of it is
    /// done (see [`Releases`]): from now until [`Client::finish_release`] has it answered,
    /// acquires that overlap `range` wait ([`Client::wait_released`]).
    pub(crate) fn begin_release(&self, file: FileId, range: ByteRange) -> ReleaseTicket {
        let mut r = self.inner.releases.lock();
        r.next += 1;
        let id = r.next;
        r.pending.entry(file).or_default().push((id, range));
        ReleaseTicket { id, file, range }
    }

    /// Whether a release of our tokens on `file` overlapping `range` is not answered yet.
    pub(crate) fn releasing(&self, file: FileId, range: ByteRange) -> bool {
        let r = self.inner.releases.lock();
        r.pending.get(&file).is_some_and(|v| v.iter().any(|(_, p)| p.overlaps(&range)))
    }

    /// Waits until no release of our tokens on `file` overlapping `range` is unanswered.
    pub(crate) async fn wait_released(&self, file: FileId, range: ByteRange) {
        loop {
            let answered = self.inner.released.notified();
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
        let ReleaseTicket { id, file, range } = ticket;
        let mut backoff = Duration::from_millis(10);
        while let Ok(session) = self.session() {
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
        {
            let mut r = self.inner.releases.lock();
            if let Some(v) = r.pending.get_mut(&file) {
                v.retain(|(i, _)| *i != id);
                if v.is_empty() {
                    r.pending.remove(&file);
                }
            }
        }
        self.inner.released.notify_waiters();
    }

    /// Waits for a payload-bytes-in-flight permit for `len` bytes.
    pub(crate) async fn inflight(&self, len: usize) -> tokio::sync::SemaphorePermit<'_> {
        let n = (len as u64).clamp(1, self.inner.inflight_max as u64) as u32;
        self.inner.inflight.acquire_many(n).await.expect("the in-flight semaphore is never closed")
    }

    /// The shared state of file `attr`, made on first open in this client.
    fn file_state(&self, path: &str, attr: Attr) -> Result<Arc<OpenFile>> {
        let mut files = self.inner.files.lock();
        let state = match files.get(&attr.id) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(OpenFile::new(self.clone(), path.to_string(), attr)?);
                files.insert(s.id, s.clone());
                s
            }
        };
        state.handles.fetch_add(1, Ordering::AcqRel);
        // Every call here follows an Open or a Create that pfs-meta counted for the session.
        state.opens.fetch_add(1, Ordering::AcqRel);
        Ok(state)
    }

    /// The last handle of a file closed: forgets the file and returns how many opens of it
    /// pfs-meta counted, to close them, with the release of all its tokens listed (see
    /// [`Releases`]) if it ever asked for one; None if another handle opened it meanwhile
    /// (then that handle's close does it). Under the same lock as [`Client::file_state`], so
    /// the count and the decision agree, and a later open of the file finds the release
    /// listed and waits for it before acquiring.
    pub(crate) fn forget_file(&self, state: &OpenFile) -> Option<(u32, Option<ReleaseTicket>)> {
        let mut files = self.inner.files.lock();
        if state.handles.load(Ordering::Acquire) != 0 {
            return None;
        }
        files.remove(&state.id);
        add_stats(&mut self.inner.closed_stats.lock(), &state.cache_stats());
        let release = state.asked_tokens().then(|| self.begin_release(state.id, ByteRange::ALL));
        Some((state.opens.swap(0, Ordering::AcqRel), release))
    }

    /// Tells pfs-meta, soon, that this session closed a file: the next `Create` or `Open`
    /// carries the close, or, if none comes within [`CLOSE_DELAY`], a `Close` of its own
    /// (with every other close pending; at once when [`CLOSE_MAX`] are pending). A close
    /// makes nothing durable on pfs-meta (it counts opens, so an unlinked file's data goes
    /// at its last close), so it need not cost a round trip: a file created and closed costs
    /// one request. Until it arrives the file only counts as open a little longer. Failures
    /// are logged only: the session's end closes everything it had open.
    pub(crate) async fn close_later(&self, closed: ns::Closed) {
        let (full, arm) = {
            let mut p = self.inner.closes.lock();
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
            let inner = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                tokio::time::sleep(CLOSE_DELAY).await;
                let Some(inner) = inner.upgrade() else { return };
                let client = Client { inner };
                let closed = {
                    let mut p = client.inner.closes.lock();
                    p.armed = false;
                    std::mem::take(&mut p.closed)
                };
                client.send_closes(closed).await;
            });
        }
    }

    /// The closes pending, for a request to carry: pfs-meta serves them first, whatever the
    /// request's outcome (lost only with the connection, and so with the session).
    fn carry_closes(&self) -> Vec<ns::Closed> {
        std::mem::take(&mut self.inner.closes.lock().closed)
    }

    /// Sends `closed` (with the closes pending, if any) in a `Close` of their own; failures
    /// are logged only.
    pub(crate) async fn send_closes(&self, mut closed: Vec<ns::Closed>) {
        if closed.len() < CLOSE_MAX {
            let mut p = self.inner.closes.lock();
            let room = (CLOSE_MAX - closed.len()).min(p.closed.len());
            closed.extend(p.closed.drain(..room));
        }
        if closed.is_empty() {
            return;
        }
        let Ok(session) = self.session() else { return };
        if let Err(e) = self.meta(ns::Close { session, files: closed }).await {
            tracing::debug!("telling pfs-meta of closed files: {e}");
        }
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    async fn meta_conn(&self) -> Result<RpcClient<MetaRequest>> {
        let mut slot = self.inner.meta.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = RpcClient::connect(self.inner.options.meta_address, "pfs-meta", &self.inner.opts, None).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Sends one call to pfs-meta and returns its answer.
    pub(crate) async fn meta<C: Call<Request = MetaRequest>>(&self, call: C) -> Result<C::Reply> {
        let conn = self.meta_conn().await?;
        Ok(conn.ask(call).await?)
    }

    /// The connection to storage server `id`, opened if needed.
    pub(crate) async fn storage_conn(&self, id: ServerId) -> Result<RpcClient<StorageRequest>> {
        if let Some(c) = self.inner.storage.lock().get(&id).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        // One connection attempt per server at a time; a server that hangs holds up only its own.
        let gate = self.inner.storage_connecting.lock().entry(id).or_default().clone();
        let _one_at_a_time = gate.lock().await;
        if let Some(c) = self.inner.storage.lock().get(&id).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let known = self.inner.addresses.lock().get(&id).copied();
        let addr = match known {
            Some(a) => a,
            None => {
                self.refresh_addresses().await?;
                self.inner.addresses.lock().get(&id).copied().ok_or_else(|| Error::Protocol {
                    peer: "pfs-meta".into(),
                    message: format!("a layout names {id}, which its registry does not list"),
                })?
            }
        };
        let c = RpcClient::connect(addr, &id.to_string(), &self.inner.opts, None).await?;
        self.inner.counters.storage_connects.fetch_add(1, Ordering::Relaxed);
        self.inner.storage.lock().insert(id, c.clone());
        Ok(c)
    }

    async fn refresh_addresses(&self) -> Result<()> {
        let servers = self.servers().await?;
        let mut a = self.inner.addresses.lock();
        for s in servers {
            a.insert(s.id, s.address);
        }
        Ok(())
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

    // --- namespace --------------------------------------------------------------------

    /// Makes a directory (owned by this process's user, mode `0o755`).
    /// Errors: Exists, NotFound (parent), NotDir.
    pub async fn mkdir(&self, target: impl Into<Target>) -> Result<()> {
        self.mkdir_with(target, NewAttrs::for_process(FileKind::Dir)).await.map(drop)
    }

    /// Makes a directory with this owner and mode (a set-group-ID parent's group wins, as on
    /// Linux). Errors: Exists, NotFound (parent), NotDir, Invalid (mode bits past `0o7777`).
    pub async fn mkdir_with(&self, target: impl Into<Target>, attrs: NewAttrs) -> Result<Attr> {
        self.meta(ns::Mkdir { target: target.into(), attrs }).await
    }

    /// Makes a directory and any missing parents; an existing directory is fine.
    pub async fn mkdir_all(&self, path: &str) -> Result<()> {
        let norm = crate::path::normalize(path);
        let mut cur = String::new();
        for part in norm.split('/').filter(|p| !p.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            match self.mkdir(&cur).await {
                Ok(()) => {}
                Err(e) if e.code() == ErrorCode::Exists => {
                    if self.stat(&cur).await?.kind != FileKind::Dir {
                        return Err(Error::NotDir { path: cur });
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates a file (or, unless `exclusive`, opens an existing one and truncates it to 0)
    /// and returns it open for reading and writing.
    ///
    /// Errors: Exists (exclusive, or something not a file is there), NotFound (parent),
    /// IsDir, Invalid (layout, a replica count outside 1..=3), Unavailable (fewer storage
    /// servers up than replicas).
    pub async fn create(&self, target: impl Into<Target>, opts: &CreateOptions) -> Result<File> {
        self.create_with_attr(target, opts).await.map(|(f, _)| f)
    }

    /// [`Client::create`], also answering the file's attributes as created (one round trip
    /// fewer than a `stat` after it).
    pub async fn create_with_attr(&self, target: impl Into<Target>, opts: &CreateOptions) -> Result<(File, Attr)> {
        let layout = LayoutChoice {
            block_size: opts.block_size,
            chunk_size: opts.chunk_size,
            stripe_count: opts.stripe_count,
            replicas: opts.replicas,
        };
        let session = Some(self.session()?);
        let attrs = opts.attrs.unwrap_or_else(|| NewAttrs::for_process(FileKind::File));
        let target = target.into();
        let name = target.to_string();
        let closed = self.carry_closes();
        let attr = self.meta(ns::Create { target, layout, exclusive: opts.exclusive, session, attrs, closed }).await?;
        let file = File::new(self.file_state(&name, attr.clone())?);
        if file.size() > 0 {
            file.truncate(0).await?;
            return Ok((file.clone(), file.stat().await?));
        }
        Ok((file, attr))
    }

    /// Opens an existing file, by path, directory entry or id (an id only while the file has
    /// a name). Until it is closed (or the session ends), the file's data stays readable and
    /// writable through it even if another client removes or replaces the file, as POSIX
    /// keeps an unlinked open file. Errors: NotFound, NoSuchFile, IsDir (not a regular
    /// file), Evicted.
    pub async fn open(&self, target: impl Into<Target>) -> Result<File> {
        let session = self.session()?;
        let target = target.into();
        let name = target.to_string();
        let attr = self.meta(ns::Open { target, session, closed: self.carry_closes() }).await?;
        Ok(File::new(self.file_state(&name, attr)?))
    }

    /// Attributes of what `target` names. Errors: NotFound, NoSuchFile, NotDir.
    pub async fn stat(&self, target: impl Into<Target>) -> Result<Attr> {
        self.meta(ns::Lookup { target: target.into() }).await
    }

    /// Attributes of a file by id. Errors: NotFound.
    pub async fn stat_id(&self, file: FileId) -> Result<Attr> {
        self.meta(ns::Stat { file }).await
    }

    /// Every entry of a directory (by path, entry or id), in name order (fetched in pages).
    pub async fn readdir(&self, dir: impl Into<Target>) -> Result<Vec<DirEntry>> {
        let dir = dir.into();
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let req = ns::Readdir { dir: dir.clone(), after: after.clone(), limit: READDIR_PAGE_MAX };
            let page = self.meta(req).await?;
            after = page.entries.last().map(|e| e.name.clone());
            all.extend(page.entries);
            if !page.more || after.is_none() {
                return Ok(all);
            }
        }
    }

    /// Renames `from` to `to`, replacing what `to` names as rename(2) does. Metadata only:
    /// chunk files are named by file id, so no data moves.
    pub async fn rename(&self, from: impl Into<Target>, to: impl Into<Target>) -> Result<()> {
        self.rename_with(from, to, false).await
    }

    /// [`Client::rename`]; with `no_replace`, an existing `to` is Exists (RENAME_NOREPLACE).
    pub async fn rename_with(&self, from: impl Into<Target>, to: impl Into<Target>, no_replace: bool) -> Result<()> {
        let (from, to) = (from.into(), to.into());
        self.meta(ns::Rename { from, to, expected_generation: None, no_replace }).await
    }

    /// Removes a name of anything but a directory; with the last name of a file, pfs-meta
    /// tells its storage servers to delete the chunks (at the last close if it is open).
    pub async fn unlink(&self, target: impl Into<Target>) -> Result<()> {
        self.meta(ns::Unlink { target: target.into(), expected_generation: None }).await
    }

    /// Removes an empty directory. Errors: NotEmpty, NotDir, NotFound.
    pub async fn rmdir(&self, target: impl Into<Target>) -> Result<()> {
        self.meta(ns::Rmdir { target: target.into(), expected_generation: None }).await
    }

    /// Makes a named pipe, socket or device node (metadata only).
    /// Errors: Exists, NotFound, NotDir, Invalid (another kind).
    pub async fn mknod(&self, target: impl Into<Target>, kind: FileKind, rdev: u64, attrs: NewAttrs) -> Result<Attr> {
        self.meta(ns::Mknod { target: target.into(), kind, rdev, attrs }).await
    }

    /// Makes a symbolic link to `link` (1 to 4096 bytes, not checked to exist).
    /// Errors: Exists, NotFound, NotDir, Invalid.
    pub async fn symlink(&self, target: impl Into<Target>, link: &str, uid: u32, gid: u32) -> Result<Attr> {
        self.meta(ns::Symlink { target: target.into(), link: link.to_string(), uid, gid }).await
    }

    /// Gives `file` (not a directory) a further name. Errors: Exists, IsDir, NoSuchFile,
    /// Invalid (too many links).
    pub async fn link(&self, file: FileId, target: impl Into<Target>) -> Result<Attr> {
        self.meta(ns::Link { file, target: target.into() }).await
    }

    /// Changes mode, owner, group or times (`None` fields stay); returns the new attributes.
    /// pfs-meta checks no permission (a mount's kernel does). Errors: NoSuchFile, Invalid.
    pub async fn set_attr(&self, change: ns::SetAttr) -> Result<Attr> {
        self.meta(change).await
    }

    /// Holders, lengths and SHA-256 of every chunk of `file` that pfs-meta knows of, for
    /// chunk indexes `0 .. chunk_count`.
    pub async fn chunks(&self, file: FileId, chunk_count: u64) -> Result<Vec<ChunkInfo>> {
        let mut out = Vec::new();
        let mut first: ChunkIndex = 0;
        while first < chunk_count {
            let count = (chunk_count - first).min(GET_CHUNKS_MAX as u64) as u32;
            out.extend(self.meta(GetChunks { file, first, count }).await?);
            first += count as u64;
        }
        Ok(out)
    }

    /// Chain `id`, as this client last heard of it (asking pfs-meta the first time).
    ///
    /// Errors: Protocol when pfs-meta does not know the chain; Unavailable, TimedOut.
    pub async fn chain(&self, id: ChainId) -> Result<Arc<Chain>> {
        if let Some(c) = self.inner.chains.lock().get(&id) {
            return Ok(c.clone());
        }
        self.refresh_chain(id).await
    }

    /// Chain `id` fresh from pfs-meta (after a storage server answered Stale).
    ///
    /// Errors: Protocol when pfs-meta does not know the chain; Unavailable, TimedOut.
    pub async fn refresh_chain(&self, id: ChainId) -> Result<Arc<Chain>> {
        let chains = self.meta(GetChains { ids: vec![id] }).await?;
        let c = chains.into_iter().find(|c| c.id == id).ok_or_else(|| Error::Protocol {
            peer: "pfs-meta".into(),
            message: format!("a layout names {id}, which pfs-meta does not know"),
        })?;
        let c = Arc::new(c);
        self.inner.chains.lock().insert(id, c.clone());
        Ok(c)
    }

    /// Every chain, fresh from pfs-meta.
    pub async fn all_chains(&self) -> Result<Vec<Chain>> {
        let chains = self.meta(GetChains { ids: Vec::new() }).await?;
        let mut cache = self.inner.chains.lock();
        for c in &chains {
            cache.insert(c.id, Arc::new(c.clone()));
        }
        Ok(chains)
    }

    /// The cluster's replication health: degraded chains and under-replicated chunks.
    pub async fn health(&self) -> Result<Health> {
        self.meta(GetHealth).await
    }

    /// The storage-server registry as pfs-meta sees it.
    pub async fn servers(&self) -> Result<Vec<ServerStatus>> {
        self.meta(ListServers).await
    }

    /// One page of storage server `id`'s own chunk listing, after `after`, for checks such as
    /// `pfs fsck`; with `verify` the server reads each chunk listed against its block
    /// checksums. Errors: Unavailable, TimedOut.
    pub async fn storage_chunks(
        &self,
        id: ServerId,
        after: Option<(FileId, ChunkIndex)>,
        limit: u32,
        verify: bool,
    ) -> Result<ChunkPage> {
        Ok(self.storage(id, ListChunks { after, limit, verify }, &[]).await?.0)
    }

    /// Has pfs-meta tell storage server `id` to remove its copy `copy` of `file` (`pfs fsck
    /// --repair`). This needs an administrator's connection: one is opened for the call with
    /// the cluster secret's admin role key. pfs-meta proves the copy an orphan first (Denied,
    /// saying why, otherwise), and the server removes a chunk only if it is still as listed
    /// (Conflict otherwise). Removed durably when it returns.
    ///
    /// Errors: Denied (no cluster secret here: a client key cannot act as an administrator;
    /// or not an orphan); Conflict; Unavailable.
    pub async fn remove_orphan(&self, id: ServerId, file: FileId, copy: OrphanCopy) -> Result<()> {
        let opts = ConnectOptions { role: PeerRole::Admin, ..self.inner.opts.clone() };
        let admin: RpcClient<MetaRequest> =
            RpcClient::connect(self.inner.options.meta_address, "pfs-meta", &opts, None).await?;
        Ok(admin.ask(RemoveOrphan { server: id, file, copy }).await?)
    }

    /// Storage server `id`'s scrub status; with `start`, a pass starts now (unless one runs).
    pub async fn scrub(&self, id: ServerId, start: bool) -> Result<ScrubStatus> {
        Ok(self.storage(id, Scrub { start }, &[]).await?.0)
    }

    /// Has storage server `id` replace its copy of a chunk by one from a serving replica of
    /// the chunk's chain (`pfs fsck --repair`). Errors: Stale when there is no other serving
    /// replica; the copy's error.
    pub async fn repair_chunk(&self, id: ServerId, file: FileId, chunk: ChunkIndex) -> Result<()> {
        self.storage(id, RepairChunk { file, chunk }, &[]).await?;
        Ok(())
    }

    /// Capacity and usage reported by storage server `id` itself.
    pub async fn storage_status(&self, id: ServerId) -> Result<StorageStatus> {
        Ok(self.storage(id, GetStatus, &[]).await?.0)
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

fn add_stats(into: &mut CacheStats, s: &CacheStats) {
    into.read_hits += s.read_hits;
    into.read_misses += s.read_misses;
    into.write_hits += s.write_hits;
    into.evictions += s.evictions;
    into.writebacks += s.writebacks;
    into.invalidations += s.invalidations;
    into.close_writebacks += s.close_writebacks;
    into.close_evictions += s.close_evictions;
}

fn mark_evicted(inner: &Inner, e: Error) {
    let mut ev = inner.session.evicted.lock();
    if ev.is_none() {
        tracing::warn!("{e}");
        *ev = Some(e);
    }
}

/// Renews the lease every third of it until the client is dropped or evicted.
async fn keep_alive(inner: Weak<Inner>) {
    loop {
        let lease_ms = match inner.upgrade() {
            Some(i) => i.session.lease_ms,
            None => return,
        };
        tokio::time::sleep(Duration::from_millis((lease_ms / 3).max(1))).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.session.evicted.lock().is_some() {
            return;
        }
        let client = Client { inner };
        let session = client.inner.session.id;
        // The lease runs from when pfs-meta hears us, which is after we send: counting from
        // the send keeps our view of the lease ending no later than pfs-meta's.
        let sent = Instant::now();
        match client.meta(tok::KeepAlive { session }).await {
            Ok(()) => *client.inner.session.renewed.lock() = sent,
            Err(e) if e.code() == ErrorCode::Evicted => client.mark_evicted(e),
            // Transient: the lease check in `session()` decides when it is too late.
            Err(e) => tracing::debug!("keep-alive of session {session:x} failed: {e}"),
        }
    }
}

/// Handles pfs-meta's pushes (revokes, eviction) until the connection ends; then the session
/// is gone (pfs-meta evicts the sessions of a closed connection).
async fn notifications(inner: Weak<Inner>, mut rx: mpsc::Receiver<pfs_common::wire::frame::Frame>) {
    while let Some(frame) = rx.recv().await {
        let Some(strong) = inner.upgrade() else { return };
        let client = Client { inner: strong };
        match pfs_common::wire::decode::<ClientNotify>(&frame.body) {
            Ok(ClientNotify::Revoke { revoke, file, range, wanted }) => {
                // Concurrently: one slow write-back must not hold up revokes of other files.
                tokio::spawn(handle_revoke(client, revoke, file, range, wanted));
            }
            Ok(ClientNotify::Evicted { session, reason }) => {
                client.mark_evicted(Error::Evicted { session, reason: format!("evicted by pfs-meta: {reason}") })
            }
            Err(e) => tracing::warn!("pfs-meta sent an undecodable notification: {e}"),
        }
    }
    if let Some(inner) = inner.upgrade() {
        let id = inner.session.id;
        mark_evicted(&inner, Error::Evicted { session: id, reason: "its connection to pfs-meta was lost".into() });
    }
}

async fn handle_revoke(client: Client, revoke: u64, file: FileId, range: ByteRange, wanted: Mode) {
    let state = client.inner.files.lock().get(&file).cloned();
    if let Some(state) = state {
        state.revoke(range, wanted).await;
    }
    client.inner.counters.revokes.fetch_add(1, Ordering::Relaxed);
    let callback = client.inner.on_revoke.read().clone();
    if let Some(cb) = callback {
        cb(&RevokeEvent { file, range, wanted });
    }
    let session = client.inner.session.id;
    if let Err(e) = client.meta(tok::RevokeDone { session, revoke }).await {
        tracing::warn!("acknowledging revoke {revoke} of file {file}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pfs_common::pool;
    use pfs_common::wire::frame::{read_frame, write_frame, FrameKind, DEFAULT_LIMITS};
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
                        (1, false) => {
                            Err(pfs_common::error::WireError { code: ErrorCode::Invalid, message: "refused".into() })
                        }
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
}
