//! The byte-range token manager (DESIGN.md §5) as a sans-IO state machine: the caller feeds
//! [`Input`]s (with the current time in ms) to [`TokenManager::handle`] and sends the returned
//! [`Output`]s over sockets. No clocks, no timers: the caller calls `handle(Input::Tick)` at
//! [`TokenManager::next_deadline`].
//!
//! # Tokens
//! A token is (file, byte range `[start, end)`, [`Mode`], session). Read tokens of different
//! sessions may overlap; a Write token overlaps no token of another session. Ranges are
//! byte-exact: unlike GPFS, which rounds tokens to whole blocks (so small strided writers of a
//! shared file falsely conflict), nothing here is rounded. A session's own tokens never
//! conflict with its own requests: a Write grant over its own Read upgrades it, a Read grant
//! inside its own Write leaves the Write as it is.
//!
//! # Required and desired ranges, expansion (GPFS)
//! An [`Input::Acquire`] names the range the call needs (`required`) and the range the client
//! would like (`desired` ⊇ `required`, e.g. to end of file, `u64::MAX`, for a sequential
//! stream). As in the GPFS token manager, the grant is the largest part of `desired` that
//! contains `required` and is free of conflicts, so one sequential reader or writer talks to
//! the manager once per file. "Free of conflicts" excludes other sessions' incompatible
//! tokens, other sessions' incompatible queued requests (their `required` ranges) and the
//! requester's own ranges under an outstanding revoke.
//!
//! # Contention: no expansion (Lustre's lesson)
//! Lustre found that expanded extent locks make strided shared-file writers ping-pong (each
//! writer's expanded lock is revoked by the next writer); it added lockahead and a
//! no-expansion mode. Policy here: a file becomes *contended* for
//! [`TokenConfig::contention_window_ms`] when a session asks again, within the window, for
//! bytes that were revoked from it (the ping-pong itself), or when a request has to queue
//! behind another one. While a file is contended, grants are exactly `required` and revokes
//! take only the conflicting bytes within `required`. While it is not, a revoke takes the
//! holder's conflicting bytes within the whole `desired` range, so writers of disjoint
//! segments (each its own contiguous part, each asking to the end of file) settle after one
//! exchange each: the first writer's token `[0, ∞)` is cut at the second writer's start, and
//! so on. The state is per file and is forgotten when a file has no tokens, requests or
//! revokes left; the last `LOST_MAX` (32) revokes per file are remembered for the detection.
//!
//! # Strided records (lockahead without asking the application)
//! Writers of interleaved records (IOR's segmented shared file: rank `r` of `n` writes record
//! `s × n + r`) make the file contended, so every record would cost an acquire, and a revoke
//! too when the tail holder still has its early token to end of file. An acquire may
//! therefore name the next records of its pattern as a [`Stride`] (`ahead`, at most
//! [`pfs_common::token::STRIDE_RECORDS_MAX`] records). When the request is granted, each
//! record that overlaps no obstacle of the expansion (other sessions' incompatible tokens and
//! queued requests, the requester's ranges under revoke) is granted whole with it, and the
//! grant says which ([`Output::Grant`]'s `ahead` bits). A record that is not free is left
//! alone: it never causes a revoke or a wait, contended or not, so asking ahead cannot make a
//! writer ping-pong or slow anyone down. Records are ordinary tokens once granted: a later
//! conflicting request revokes them like any other. The clients detect a constant stride of
//! their own I/O (and take `File::advise`), ask for exactly the record they need plus the
//! records ahead, and give back a token that reaches beyond their pattern when they first see
//! it, so that the others' records come free. With interleaved writers this is one acquire
//! per writer per 64 records and no revokes once the pattern is known, where Lustre's
//! lockahead needs the application to ask and GPFS rounds to blocks.
//!
//! # Conflicts and revokes
//! A request that overlaps an incompatible token of another session makes the manager send
//! [`Output::Revoke`] to that holder, for the hull of the conflicting bytes (within `desired`
//! or, contended, `required`), with `wanted` = the requested mode. The holder writes back dirty
//! bytes (Write token) or drops cached bytes (Read token) in that range, keeps the rest of its
//! tokens (the token is split) and acks with [`Input::RevokeAck`]. On the ack the holder's
//! tokens in the range are removed (`wanted` = Write) or its Write tokens there become Read
//! (`wanted` = Read: a downgrade, the holder keeps its cache for reading). A revoke already
//! outstanding to the same holder that covers the range at least as strongly is not sent again.
//!
//! While a revoke to a session is outstanding, that session is granted nothing that overlaps
//! the revoked range (its request waits for its own ack). Otherwise a grant sent after the
//! Revoke but before the ack arrives would be undone by the ack.
//! A revoke stays outstanding (and its deadline stands) even if the request that caused it
//! goes away (closed or evicted): the holder may already be flushing.
//!
//! # Fairness
//! Waiters are served in FIFO order per file: a request waits not only for conflicting
//! holders but also behind any earlier queued request of another session whose `required`
//! range overlaps with incompatible modes (at least one Write). So a stream of readers cannot
//! starve a writer. A request blocked only by earlier waiters sends no revokes yet. Every input
//! that frees something (ack, release, close, eviction) re-evaluates the queue of each affected
//! file in order.
//!
//! # Sessions, leases, eviction
//! A session is opened with [`Input::OpenSession`] and renews its lease with any input it sends
//! (heartbeats, acquires, acks, releases). A session not heard from for
//! [`TokenConfig::lease_ms`], that has not acked a revoke [`TokenConfig::revoke_timeout_ms`]
//! after it was sent, or that the caller evicts ([`Input::Evict`], its connection closed) is
//! evicted: its queued requests and outstanding revokes are dropped, [`Output::Evict`] is
//! emitted, its tokens are fenced (below), and every later input from it is refused with
//! `ErrorCode::Evicted`. Deadlines are inclusive:
//! at `now_ms >= last_heard + lease_ms` the session is gone. Every input first expires what is
//! due at its `now_ms`, so a late heartbeat cannot revive a session whose lease already ran
//! out. Time never goes backwards: an input with an older `now_ms` is treated as the latest
//! time seen. A session closed with [`Input::CloseSession`] is forgotten; later inputs from it
//! (like from a session never opened) are refused with `ErrorCode::Evicted` too, as the client
//! must open a new session either way.
//!
//! # Fencing (an evicted holder's writes must not land after its tokens are handed on)
//! An evicted session may still be alive behind a partition, with writes on their way to
//! storage servers. Its tokens therefore stay in place, blocking every conflicting request
//! (no revoke is sent to it), until no storage server can still accept its writes:
//! [`Output::Fence`] names the session and every storage server that holds a lease, and the
//! tokens go once each of those servers has confirmed ([`Input::FenceConfirmed`]: it refuses
//! the session's writes and its admitted ones are done) or has lost its lease.
//!
//! Storage servers hold a lease from the manager ([`TokenConfig::storage_lease_ms`]): it
//! starts at registration ([`Input::StorageRegistered`], whose answer carries every evicted
//! session, see [`TokenManager::evicted_sessions`]) and is renewed by each heartbeat the
//! manager accepts ([`Input::StorageHeartbeat`]). A server refuses all writes once half its
//! lease has passed since it sent the last accepted heartbeat, so when the manager's full
//! lease has run out the server cannot accept anything until it registers again, which
//! teaches it every fence (the factor of two absorbs clock-rate differences; 3FS services stop
//! serving when they lose their manager in the same way). A server that has not confirmed a
//! fence within [`TokenConfig::fence_timeout_ms`] is declared down ([`Output::ServerDown`]):
//! its heartbeats are refused from then on, so its lease runs out and the fence completes
//! without it. The grants an eviction freed are thus delayed by at most the fence timeout
//! plus a storage lease, never delivered while an unconfirmed server could still accept the
//! evicted session's writes, and nothing else waits meanwhile (the manager has no locks and no
//! I/O; its caller holds no lock across network waits).
//!
//! # Recovery (a new manager after a failover; Lustre's lock replay, the NFSv4 grace period)
//! Tokens are not logged: a manager that takes over from another ([`TokenManager::recovering`])
//! knows the open sessions (they are in pfs-meta's log) but not what they hold. It opens a
//! recovery window: every such session gets a fresh lease and reclaims its tokens
//! ([`Input::Reclaim`]: granted as they were, refused if they conflict with what another
//! session reclaimed) and says when it is done ([`Input::ReclaimDone`]). Until the window
//! closes nothing is granted and no revoke is sent: acquires queue. It closes when every
//! session of the log is done, closed or evicted, or at `lease_ms` after it opened, when the
//! sessions not done are evicted; and then only once their fences are complete, since their
//! tokens are unknown and any grant could conflict with them.
//!
//! # Memory
//! Each holder's tokens in a file live in a `BTreeMap<u64, Extent>` (start → end, mode), with
//! adjacent or overlapping ranges of the same mode coalesced, so a session that holds a file
//! sequentially costs one entry however many grants it received. An entry is 24 bytes (8-byte
//! key + 16-byte [`pfs_common::range_map::Extent`]); with B-tree leaf nodes of 11 entries (~280 bytes, at least half
//! full) that is 25-56 bytes per token. Each (file, holder) adds about 80 bytes (the map
//! header plus its entry in the file's holder map), each queued request 96 bytes (`Waiter`,
//! a third of it the optional stride), each outstanding revoke 48 bytes plus its 16-byte id→file index entry
//! (`PendingRevoke`), and each evicted session id 8 bytes (kept to refuse it).
//! `tests::memory_per_token` checks these sizes.
//!
//! # Complexity
//! Simple before fast: evaluating a file's queue is O(waiters² + waiters × holders × tokens
//! in range), eviction scans every file. Fine for the dozens of sessions per file this is
//! meant for; an interval tree over all holders would be the next step.

use crate::error::{InvariantBroken, MetaError, SessionState};
use pfs_common::range_map::RangeMap;
use pfs_common::{FileId, ServerId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use pfs_common::token::{ByteRange, Mode, RevokeId, SessionId, Stride};
/// The caller's id of an [`Input::Acquire`], echoed in [`Output::Grant`].
pub type RequestId = u64;

/// Timeouts of the token manager, all in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenConfig {
    /// A session not heard from for this long is evicted, ms.
    pub lease_ms: u64,
    /// A session that has not acked a revoke this long after it was sent is evicted, ms.
    pub revoke_timeout_ms: u64,
    /// A file stays contended (grants not expanded) this long after a request on it had to
    /// wait, ms.
    pub contention_window_ms: u64,
    /// A storage server's lease, ms: it counts as unable to accept writes once this long has
    /// passed since its last accepted heartbeat (it stops itself after half of it).
    pub storage_lease_ms: u64,
    /// A storage server that has not confirmed a fence this long after it was asked is
    /// declared down, ms.
    pub fence_timeout_ms: u64,
}

/// What the caller feeds in. Every input carries the current time, ms (any epoch, but the
/// same for all inputs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A new client session (or, for an open one, a heartbeat).
    OpenSession { session: SessionId, now_ms: u64 },
    /// Renews the session's lease.
    Heartbeat { session: SessionId, now_ms: u64 },
    /// Asks for a token over `required` (at least) and `desired` (at most), `required` ⊆
    /// `desired`, both non-empty, and for the records of `ahead` where they are free (see
    /// the module documentation, "Strided records").
    Acquire {
        session: SessionId,
        request: RequestId,
        file: FileId,
        mode: Mode,
        required: ByteRange,
        desired: ByteRange,
        ahead: Option<Stride>,
        now_ms: u64,
    },
    /// The session has written back / dropped the range of revoke `revoke`.
    RevokeAck { session: SessionId, revoke: RevokeId, now_ms: u64 },
    /// The session gives back its tokens over `range` of `file` (close: [`ByteRange::ALL`]).
    Release { session: SessionId, file: FileId, range: ByteRange, now_ms: u64 },
    /// Clean goodbye: tokens and queued requests dropped, no [`Output::Evict`], no fence.
    CloseSession { session: SessionId, now_ms: u64 },
    /// Evict the session now (its connection closed: it may still be alive and writing).
    Evict { session: SessionId, reason: String, now_ms: u64 },
    /// Storage server `server` registered: it received [`TokenManager::evicted_sessions`]
    /// and its lease starts.
    StorageRegistered { server: ServerId, now_ms: u64 },
    /// Storage server `server` heartbeats: its lease is renewed, or, if it is not up,
    /// [`Output::RefuseServer`] tells the caller to refuse the heartbeat.
    StorageHeartbeat { server: ServerId, now_ms: u64 },
    /// Storage server `server` refuses the writes of `sessions` and finished their admitted
    /// ones.
    FenceConfirmed { server: ServerId, sessions: Vec<SessionId>, now_ms: u64 },
    /// During recovery: session `session` (one of the log's) held `tokens` of `file` under
    /// the previous manager and keeps them. Refused (Invalid) if one conflicts with a token
    /// another session holds (reclaimed, or granted since), or outside recovery (Evicted).
    Reclaim { session: SessionId, file: FileId, tokens: Vec<(ByteRange, Mode)>, now_ms: u64 },
    /// During recovery: session `session` reclaimed everything it holds.
    ReclaimDone { session: SessionId, now_ms: u64 },
    /// Expires leases, overdue revokes and fences.
    Tick { now_ms: u64 },
}

impl Input {
    /// The time the input carries, ms.
    pub fn now_ms(&self) -> u64 {
        match *self {
            Input::OpenSession { now_ms, .. }
            | Input::Heartbeat { now_ms, .. }
            | Input::Acquire { now_ms, .. }
            | Input::RevokeAck { now_ms, .. }
            | Input::Release { now_ms, .. }
            | Input::CloseSession { now_ms, .. }
            | Input::Evict { now_ms, .. }
            | Input::StorageRegistered { now_ms, .. }
            | Input::StorageHeartbeat { now_ms, .. }
            | Input::FenceConfirmed { now_ms, .. }
            | Input::Reclaim { now_ms, .. }
            | Input::ReclaimDone { now_ms, .. }
            | Input::Tick { now_ms } => now_ms,
        }
    }
}

/// What the caller must do, in order.
#[derive(Clone, Debug)]
pub enum Output {
    /// Session `session` now holds `mode` over `range` of `file` (`required` ⊆ `range` ⊆
    /// `desired` of request `request`) and over record `k` of the request's `ahead` stride for
    /// every bit `k` set in `ahead`.
    Grant { session: SessionId, request: RequestId, file: FileId, mode: Mode, range: ByteRange, ahead: u64 },
    /// Session `session` must write back (holds Write) or drop (holds Read) `range` of `file`
    /// and ack with `revoke`. `wanted` = Read: it keeps a Read token over its Write bytes there.
    Revoke { session: SessionId, revoke: RevokeId, file: FileId, range: ByteRange, wanted: Mode },
    /// The session lost its lease, failed to ack a revoke in time or was evicted by the
    /// caller; tell it, if it can still hear.
    Evict { session: SessionId, reason: String },
    /// Tell each of `servers` to refuse `session`'s writes and confirm with
    /// [`Input::FenceConfirmed`].
    Fence { session: SessionId, servers: Vec<ServerId> },
    /// Storage server `server` is down (its lease ran out, or it did not confirm a fence in
    /// time): no new I/O for it, and its heartbeats are refused until it registers again.
    ServerDown { server: ServerId, reason: String },
    /// The input was refused: Evicted (unknown, closed or evicted session) or Invalid (bad
    /// range).
    Refuse { session: SessionId, request: Option<RequestId>, error: MetaError },
    /// A storage server's heartbeat is refused (NotRegistered, DeclaredDown): it must
    /// register again.
    RefuseServer { server: ServerId, error: MetaError },
}

/// Counts for monitoring: current sizes and totals since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenStats {
    /// Open sessions.
    pub sessions: usize,
    /// Token entries (coalesced ranges) over all files and holders, fenced ones included.
    pub tokens: usize,
    /// Queued requests.
    pub waiters: usize,
    /// Revokes sent and not yet acked.
    pub outstanding_revokes: usize,
    /// Evicted sessions whose fence is not complete yet.
    pub fencing: usize,
    /// Grants sent since start.
    pub grants: u64,
    /// Revokes sent since start.
    pub revokes: u64,
    /// Sessions evicted since start.
    pub evictions: u64,
}

/// A queued request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Waiter {
    session: SessionId,
    request: RequestId,
    mode: Mode,
    required: ByteRange,
    desired: ByteRange,
    ahead: Option<Stride>,
}

impl Waiter {
    /// True if `self`, queued earlier, must be served before `later`.
    fn blocks(&self, later: &Waiter) -> bool {
        self.session != later.session && self.mode.conflicts_with(later.mode) && self.required.overlaps(&later.required)
    }
}

/// A revoke sent and not yet acked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PendingRevoke {
    session: SessionId,
    range: ByteRange,
    wanted: Mode,
    /// Sent at, ms.
    sent_ms: u64,
    /// The holder is evicted at this time if it has not acked, ms.
    deadline_ms: u64,
}

impl PendingRevoke {
    /// True if acking `self` removes at least what a revoke of `range` with `wanted` would.
    fn covers(&self, range: &ByteRange, wanted: Mode) -> bool {
        self.range.contains(range) && (self.wanted == Mode::Write || wanted == Mode::Read)
    }
}

/// Token state of one file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct FileTokens {
    /// Open sessions' tokens, and evicted sessions' tokens until their fence completes.
    holders: BTreeMap<SessionId, RangeMap>,
    /// FIFO.
    waiters: VecDeque<Waiter>,
    revokes: BTreeMap<RevokeId, PendingRevoke>,
    /// Grants are not expanded before this time, ms.
    contended_until_ms: u64,
    /// Recent revokes: (holder, range taken, time sent ms), at most [`LOST_MAX`], for
    /// ping-pong detection.
    lost: VecDeque<(SessionId, ByteRange, u64)>,
}

/// Recent revokes remembered per file for ping-pong detection.
const LOST_MAX: usize = 32;

impl FileTokens {
    fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty() && self.revokes.is_empty()
    }

    /// Per other session holding tokens incompatible with `mode` over `range`: the hull of the
    /// conflicting bytes within `range`.
    fn conflicts(&self, session: SessionId, mode: Mode, range: ByteRange) -> Vec<(SessionId, ByteRange)> {
        let mut out = Vec::new();
        for (&holder, map) in &self.holders {
            if holder == session {
                continue;
            }
            let hull = map
                .overlapping(range)
                .filter(|(_, m)| m.conflicts_with(mode))
                .filter_map(|(t, _)| t.intersect(&range))
                .reduce(|a, b| a.hull(&b));
            if let Some(h) = hull {
                out.push((holder, h));
            }
        }
        out
    }

    /// True if `session` asks again, within the contention window, for bytes that were just
    /// revoked from it: the signature of writers ping-ponging a token.
    fn ping_pong(&self, session: SessionId, range: &ByteRange, now: u64, window_ms: u64) -> bool {
        self.lost.iter().any(|(s, r, t)| *s == session && r.overlaps(range) && now < t.saturating_add(window_ms))
    }

    /// True if a revoke to `session` overlapping `range` is outstanding.
    fn own_revoke_pending(&self, session: SessionId, range: &ByteRange) -> bool {
        self.revokes.values().any(|r| r.session == session && r.range.overlaps(range))
    }

    /// True if the waiter at `i` must wait behind an earlier one.
    fn behind_earlier(&self, i: usize) -> bool {
        let w = &self.waiters[i];
        self.waiters.iter().take(i).any(|e| e.blocks(w))
    }

    /// The largest range within `w.desired` containing `w.required` that overlaps no
    /// obstacle: other sessions' incompatible tokens (fenced ones included), other sessions'
    /// incompatible queued requests, and `w.session`'s own ranges under revoke. `w` is the
    /// waiter at `i`.
    fn expand(&self, w: &Waiter, i: usize) -> ByteRange {
        let mut obstacles: Vec<ByteRange> = Vec::new();
        for (&holder, map) in &self.holders {
            if holder != w.session {
                obstacles.extend(map.overlapping(w.desired).filter(|(_, m)| m.conflicts_with(w.mode)).map(|(t, _)| t));
            }
        }
        for (j, o) in self.waiters.iter().enumerate() {
            if j != i && o.session != w.session && o.mode.conflicts_with(w.mode) {
                obstacles.push(o.required);
            }
        }
        obstacles.extend(self.revokes.values().filter(|r| r.session == w.session).map(|r| r.range));
        let (req, mut lo, mut hi) = (w.required, w.desired.start, w.desired.end);
        for o in obstacles {
            // Only the parts of an obstacle outside `required` limit the expansion (the
            // caller made sure the parts inside are not in the way of the grant).
            if o.start < req.start {
                lo = lo.max(o.end.min(req.start));
            }
            if o.end > req.end {
                hi = hi.min(o.start.max(req.end));
            }
        }
        ByteRange { start: lo, end: hi }
    }

    /// The records of `ahead` (a bit per record) that overlap no obstacle of the waiter `w` at
    /// `i` (the obstacles of [`FileTokens::expand`]): free records are granted, the others
    /// are left alone, never revoked for.
    fn free_records(&self, w: &Waiter, i: usize, ahead: &Stride) -> u64 {
        let hull = ahead.record(0).hull(&ahead.record(ahead.count - 1));
        let mut obstacles: Vec<ByteRange> = Vec::new();
        for (&holder, map) in &self.holders {
            if holder != w.session {
                obstacles.extend(map.overlapping(hull).filter(|(_, m)| m.conflicts_with(w.mode)).map(|(t, _)| t));
            }
        }
        for (j, o) in self.waiters.iter().enumerate() {
            if j != i && o.session != w.session && o.mode.conflicts_with(w.mode) && o.required.overlaps(&hull) {
                obstacles.push(o.required);
            }
        }
        obstacles.extend(self.revokes.values().filter(|r| r.session == w.session).map(|r| r.range));
        let mut free = 0u64;
        for k in 0..ahead.count {
            let record = ahead.record(k);
            if !obstacles.iter().any(|o| o.overlaps(&record)) {
                free |= 1 << k;
            }
        }
        free
    }
}

/// An open session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Session {
    /// Last input from it, ms.
    last_heard_ms: u64,
}

/// A storage server as the manager sees it: its lease and whether it is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Member {
    /// It may accept writes until this time (its last accepted heartbeat plus the storage
    /// lease), ms.
    lease_until_ms: u64,
    state: MemberState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum MemberState {
    /// Registered, heartbeating.
    Up,
    /// Declared down while its lease still runs: heartbeats refused, fences wait for the
    /// lease to run out.
    Expelled,
    /// Its lease ran out: it accepts no write until it registers again.
    Down,
}

impl Member {
    /// True while the server may still accept writes of sessions it has not fenced.
    fn may_accept_writes(&self, now: u64) -> bool {
        self.state != MemberState::Down && now < self.lease_until_ms
    }
}

/// An evicted session whose tokens wait for storage servers to fence it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PendingFence {
    /// Servers that may still accept its writes and have not confirmed.
    waiting: BTreeSet<ServerId>,
    /// Servers still waiting at this time are declared down, ms.
    deadline_ms: u64,
}

/// The recovery window of a manager that took over (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Recovery {
    /// Sessions of the log that have not said they are done reclaiming.
    pending: BTreeSet<SessionId>,
    /// Sessions of the log evicted before they were done: the window stays closed to grants
    /// until their fences complete.
    unreclaimed: BTreeSet<SessionId>,
    /// Sessions still pending at this time are evicted, ms.
    until_ms: u64,
}

/// The token manager of all files. See the module documentation for the rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenManager {
    cfg: TokenConfig,
    /// The recovery window, while it is open.
    recovery: Option<Recovery>,
    /// The latest time seen, ms.
    now_ms: u64,
    sessions: BTreeMap<SessionId, Session>,
    /// Evicted sessions, refused forever; storage servers learn them at registration.
    evicted: BTreeSet<SessionId>,
    /// Evicted sessions whose tokens still block conflicting requests.
    fencing: BTreeMap<SessionId, PendingFence>,
    /// Storage servers that ever registered.
    servers: BTreeMap<ServerId, Member>,
    /// Files with tokens, waiters or outstanding revokes.
    files: BTreeMap<FileId, FileTokens>,
    /// Which file each outstanding revoke is about.
    revoke_file: BTreeMap<RevokeId, FileId>,
    next_revoke: RevokeId,
    grants: u64,
    revokes_sent: u64,
    evictions: u64,
}

impl TokenManager {
    /// An empty manager.
    pub fn new(cfg: TokenConfig) -> Self {
        TokenManager {
            cfg,
            recovery: None,
            now_ms: 0,
            sessions: BTreeMap::new(),
            evicted: BTreeSet::new(),
            fencing: BTreeMap::new(),
            servers: BTreeMap::new(),
            files: BTreeMap::new(),
            revoke_file: BTreeMap::new(),
            next_revoke: 1,
            grants: 0,
            revokes_sent: 0,
            evictions: 0,
        }
    }

    /// A manager taking over from another at `now_ms`: the sessions `open` of the log get a
    /// lease from now and must reclaim what they hold within it; `evicted` are refused. The
    /// recovery window is open if any session is.
    pub fn recovering(
        cfg: TokenConfig,
        open: impl IntoIterator<Item = SessionId>,
        evicted: impl IntoIterator<Item = SessionId>,
        now_ms: u64,
    ) -> Self {
        let mut m = TokenManager::new(cfg);
        m.now_ms = now_ms;
        m.evicted.extend(evicted);
        let pending: BTreeSet<SessionId> = open.into_iter().filter(|s| !m.evicted.contains(s)).collect();
        for s in &pending {
            m.sessions.insert(*s, Session { last_heard_ms: now_ms });
        }
        if !pending.is_empty() {
            let until_ms = now_ms.saturating_add(cfg.lease_ms);
            m.recovery = Some(Recovery { pending, unreclaimed: BTreeSet::new(), until_ms });
        }
        m
    }

    /// True while the recovery window is open: nothing is granted.
    pub fn recovering_now(&self) -> bool {
        self.recovery.is_some()
    }

    /// True if `session` is one of the log's sessions that has not finished reclaiming.
    pub fn must_reclaim(&self, session: SessionId) -> bool {
        self.recovery.as_ref().is_some_and(|r| r.pending.contains(&session))
    }

    /// Applies one input and returns what to do, in order (evictions, fences and servers
    /// declared down before the grants they free).
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        self.now_ms = self.now_ms.max(input.now_ms());
        self.expire(&mut out);
        match input {
            Input::OpenSession { session, .. } => {
                if self.evicted.contains(&session) {
                    out.push(self.refusal(session, None));
                } else {
                    self.sessions.insert(session, Session { last_heard_ms: self.now_ms });
                }
            }
            Input::Heartbeat { session, .. } => {
                if !self.touch(session) {
                    out.push(self.refusal(session, None));
                }
            }
            Input::Acquire { session, request, file, mode, required, desired, ahead, .. } => {
                if !self.touch(session) {
                    out.push(self.refusal(session, Some(request)));
                } else if let Err(why) = check_acquire(required, desired, ahead) {
                    let error = MetaError::BadAcquire { request, session, file, why };
                    out.push(Output::Refuse { session, request: Some(request), error });
                } else {
                    let w = Waiter { session, request, mode, required, desired, ahead };
                    self.files.entry(file).or_default().waiters.push_back(w);
                    self.process_file(file, &mut out);
                }
            }
            Input::RevokeAck { session, revoke, .. } => {
                if !self.touch(session) {
                    out.push(self.refusal(session, None));
                } else if let Some(&file) = self.revoke_file.get(&revoke) {
                    let fs = self.files.get_mut(&file).expect("revoke index names a live file");
                    // An ack from another session than the revoked one is ignored.
                    if fs.revokes.get(&revoke).is_some_and(|r| r.session == session) {
                        let r = fs.revokes.remove(&revoke).expect("checked");
                        self.revoke_file.remove(&revoke);
                        if let Some(map) = fs.holders.get_mut(&session) {
                            match r.wanted {
                                Mode::Write => map.remove(r.range),
                                Mode::Read => map.downgrade(r.range),
                            }
                        }
                        self.process_file(file, &mut out);
                    }
                }
            }
            Input::Release { session, file, range, .. } => {
                if !self.touch(session) {
                    out.push(self.refusal(session, None));
                } else if range.is_empty() {
                    let error =
                        MetaError::Invalid(format!("release by session {session:x} of {file}: empty range {range}"));
                    out.push(Output::Refuse { session, request: None, error });
                } else if let Some(fs) = self.files.get_mut(&file) {
                    if let Some(map) = fs.holders.get_mut(&session) {
                        map.remove(range);
                    }
                    self.process_file(file, &mut out);
                }
            }
            Input::CloseSession { session, .. } => {
                if self.sessions.contains_key(&session) {
                    let files = self.drop_session(session, false);
                    self.process_files(files, &mut out);
                } else {
                    out.push(self.refusal(session, None));
                }
            }
            Input::Evict { session, reason, .. } => {
                if self.sessions.contains_key(&session) {
                    let mut affected = BTreeSet::new();
                    self.evict(session, reason, &mut affected, &mut out);
                    self.process_files(affected, &mut out);
                } else {
                    out.push(self.refusal(session, None));
                }
            }
            Input::StorageRegistered { server, .. } => {
                let lease_until_ms = self.now_ms.saturating_add(self.cfg.storage_lease_ms);
                self.servers.insert(server, Member { lease_until_ms, state: MemberState::Up });
                // It learned every evicted session at registration.
                let done = self.confirm(server, None);
                self.complete_fences(done, &mut out);
            }
            Input::StorageHeartbeat { server, .. } => match self.servers.get_mut(&server) {
                Some(m) if m.state == MemberState::Up => {
                    m.lease_until_ms = self.now_ms.saturating_add(self.cfg.storage_lease_ms);
                }
                Some(m) => {
                    let reason = match m.state {
                        MemberState::Expelled => "it did not confirm a fence in time",
                        _ => "its lease ran out",
                    };
                    let error = MetaError::DeclaredDown { server, reason: reason.into() };
                    out.push(Output::RefuseServer { server, error });
                }
                None => out.push(Output::RefuseServer { server, error: MetaError::NotRegistered { server } }),
            },
            Input::FenceConfirmed { server, sessions, .. } => {
                let done = self.confirm(server, Some(&sessions));
                self.complete_fences(done, &mut out);
            }
            Input::Reclaim { session, file, tokens, .. } => {
                if !self.must_reclaim(session) || !self.touch(session) {
                    out.push(self.refusal(session, None));
                } else if let Err(error) = self.reclaim(session, file, &tokens) {
                    out.push(Output::Refuse { session, request: None, error });
                }
            }
            Input::ReclaimDone { session, .. } => {
                if !self.must_reclaim(session) || !self.touch(session) {
                    out.push(self.refusal(session, None));
                } else if let Some(r) = self.recovery.as_mut() {
                    r.pending.remove(&session);
                }
            }
            Input::Tick { .. } => {}
        }
        self.end_recovery(&mut out);
        if cfg!(debug_assertions) {
            if let Err(e) = self.check_invariants() {
                panic!("token manager invariant broken after an input: {e}");
            }
        }
        out
    }

    /// The earliest time at which a Tick would change something (a lease, revoke or fence
    /// deadline), ms.
    pub fn next_deadline(&self) -> Option<u64> {
        let leases = self.sessions.values().map(|s| s.last_heard_ms.saturating_add(self.cfg.lease_ms));
        let revokes = self.files.values().flat_map(|f| f.revokes.values().map(|r| r.deadline_ms));
        let servers = self.servers.values().filter(|m| m.state != MemberState::Down).map(|m| m.lease_until_ms);
        let fences = self.fencing.values().map(|f| f.deadline_ms);
        let recovery = self.recovery.iter().map(|r| r.until_ms);
        leases.chain(revokes).chain(servers).chain(fences).chain(recovery).min()
    }

    /// The tokens `session` holds in `file`, in byte order, coalesced.
    pub fn tokens(&self, session: SessionId, file: FileId) -> Vec<(ByteRange, Mode)> {
        self.files.get(&file).and_then(|f| f.holders.get(&session)).map(RangeMap::to_vec).unwrap_or_default()
    }

    /// True if any session (evicted ones whose fence is pending included) holds, or waits
    /// for, a Write token overlapping `range` of `file`: those bytes may be changing, so
    /// nothing of them is an orphan.
    pub fn writes_over(&self, file: FileId, range: ByteRange) -> bool {
        let Some(f) = self.files.get(&file) else { return false };
        f.holders.values().any(|m| m.overlapping(range).any(|(_, mode)| mode == Mode::Write))
            || f.waiters.iter().any(|w| w.mode == Mode::Write && w.required.overlaps(&range))
    }

    /// True if `session` is or was a session of this manager (open or evicted).
    pub fn knows_session(&self, session: SessionId) -> bool {
        self.sessions.contains_key(&session)
    }

    /// Every evicted session: what a registering storage server must refuse.
    pub fn evicted_sessions(&self) -> Vec<SessionId> {
        self.evicted.iter().copied().collect()
    }

    /// True if storage server `server` is registered and its lease runs.
    pub fn server_up(&self, server: ServerId) -> bool {
        self.servers.get(&server).is_some_and(|m| m.state == MemberState::Up && self.now_ms < m.lease_until_ms)
    }

    /// Current sizes and totals.
    pub fn stats(&self) -> TokenStats {
        TokenStats {
            sessions: self.sessions.len(),
            tokens: self.files.values().flat_map(|f| f.holders.values()).map(RangeMap::len).sum(),
            waiters: self.files.values().map(|f| f.waiters.len()).sum(),
            outstanding_revokes: self.revoke_file.len(),
            fencing: self.fencing.len(),
            grants: self.grants,
            revokes: self.revokes_sent,
            evictions: self.evictions,
        }
    }

    /// Checks the invariants; the error names the first broken one.
    ///
    /// - No two sessions hold overlapping tokens of which one is Write; each holder's tokens
    ///   are disjoint and coalesced; only open sessions wait or are revoked, and only open or
    ///   fencing sessions hold.
    /// - Every queued request is blocked (behind an earlier incompatible request, by its own
    ///   outstanding revoke, or by a conflicting holder), and a request not behind another has
    ///   each conflict covered by an outstanding revoke or a fence in progress (so it will
    ///   make progress).
    /// - No lease, revoke or fence deadline has passed (expiry runs on every input); a fence
    ///   waits only for servers that may still accept writes.
    /// - The revoke index matches the files; no idle file state is kept.
    pub fn check_invariants(&self) -> Result<(), InvariantBroken> {
        let now = self.now_ms;
        if let Some(r) = &self.recovery {
            if let Some(s) = r.pending.iter().find(|s| !self.sessions.contains_key(s)) {
                return Err(format!("session {s} must reclaim but is not open").into());
            }
            if !r.pending.is_empty() && now >= r.until_ms {
                return Err(format!("the recovery window outlived its end ({} ms)", r.until_ms).into());
            }
            if r.pending.is_empty() && !r.unreclaimed.iter().any(|s| self.fencing.contains_key(s)) {
                return Err("the recovery window is over but still open".to_string().into());
            }
        }
        for (id, s) in &self.sessions {
            if self.evicted.contains(id) {
                return Err(format!("session {id} is both open and evicted").into());
            }
            if now >= s.last_heard_ms.saturating_add(self.cfg.lease_ms) {
                return Err(format!(
                    "session {id} outlived its lease (last heard {} ms, now {now} ms)",
                    s.last_heard_ms
                )
                .into());
            }
        }
        for (id, f) in &self.fencing {
            if !self.evicted.contains(id) {
                return Err(format!("session {id} is fenced but not evicted").into());
            }
            if f.waiting.is_empty() {
                return Err(format!("the fence of session {id} is complete but kept").into());
            }
            for server in &f.waiting {
                if !self.servers.get(server).is_some_and(|m| m.may_accept_writes(now)) {
                    return Err(format!("the fence of session {id} waits for {server}, which accepts no writes").into());
                }
                if now >= f.deadline_ms && self.servers[server].state == MemberState::Up {
                    return Err(format!("{server} is overdue with the fence of session {id} but still up").into());
                }
            }
        }
        for (server, m) in &self.servers {
            if m.state != MemberState::Down && now >= m.lease_until_ms {
                return Err(format!("{server} outlived its lease").into());
            }
        }
        let mut indexed = 0;
        for (file, fs) in &self.files {
            if fs.is_idle() {
                return Err(format!("{file}: idle state kept").into());
            }
            for (h, map) in &fs.holders {
                if !self.sessions.contains_key(h) && !self.fencing.contains_key(h) {
                    return Err(format!("{file}: session {h} holds tokens but is neither open nor fencing").into());
                }
                if map.is_empty() {
                    return Err(format!("{file}: empty token map of session {h}").into());
                }
                map.check().map_err(|e| format!("{file}, session {h}: {e}"))?;
            }
            let holders: Vec<_> = fs.holders.iter().collect();
            for (i, (a, amap)) in holders.iter().enumerate() {
                for (b, bmap) in &holders[i + 1..] {
                    for (r, m) in amap.iter() {
                        for (r2, m2) in bmap.overlapping(r) {
                            if m.conflicts_with(m2) {
                                return Err(format!(
                                    "{file}: session {a} holds {m:?} {r}, session {b} holds {m2:?} {r2}"
                                )
                                .into());
                            }
                        }
                    }
                }
            }
            for (id, r) in &fs.revokes {
                indexed += 1;
                if self.revoke_file.get(id) != Some(file) {
                    return Err(format!("{file}: revoke {id} missing from the index").into());
                }
                if !self.sessions.contains_key(&r.session) {
                    return Err(format!("{file}: revoke {id} to session {} that is not open", r.session).into());
                }
                if r.range.is_empty() || now >= r.deadline_ms {
                    return Err(format!("{file}: revoke {id} has an empty range or is overdue").into());
                }
            }
            for (i, w) in fs.waiters.iter().enumerate() {
                if !self.sessions.contains_key(&w.session) {
                    return Err(
                        format!("{file}: request {} of session {} queued but not open", w.request, w.session).into()
                    );
                }
                if check_acquire(w.required, w.desired, w.ahead).is_err() {
                    return Err(format!("{file}: request {} queued with bad ranges", w.request).into());
                }
                if fs.behind_earlier(i) || self.recovery.is_some() {
                    continue;
                }
                let conflicts = fs.conflicts(w.session, w.mode, w.required);
                if conflicts.is_empty() && !fs.own_revoke_pending(w.session, &w.required) {
                    return Err(format!(
                        "{file}: request {} of session {} could be granted but waits",
                        w.request, w.session
                    )
                    .into());
                }
                for (holder, range) in conflicts {
                    let revoked = fs.revokes.values().any(|r| r.session == holder && r.covers(&range, w.mode));
                    if !revoked && !self.fencing.contains_key(&holder) {
                        return Err(format!(
                            "{file}: request {} waits for session {holder} over {range} but no revoke or fence is out",
                            w.request
                        )
                        .into());
                    }
                }
            }
        }
        if indexed != self.revoke_file.len() {
            return Err(
                format!("revoke index has {} entries, files have {indexed} revokes", self.revoke_file.len()).into()
            );
        }
        Ok(())
    }

    /// Gives `session` back `tokens` of `file`, unless one conflicts with another holder's
    /// (then nothing of the reclaim is kept). Errors: Invalid naming the conflict.
    fn reclaim(&mut self, session: SessionId, file: FileId, tokens: &[(ByteRange, Mode)]) -> Result<(), MetaError> {
        let fs = self.files.entry(file).or_default();
        for (range, mode) in tokens {
            if range.is_empty() {
                return Err(MetaError::Invalid(format!("session {session:x} reclaims {file} {range}: empty range")));
            }
            if let Some((holder, at)) = fs.conflicts(session, *mode, *range).first() {
                let why = format!(
                    "session {session:x} reclaims {mode:?} {range} of {file}, which conflicts with what session \
                     {holder:x} holds at {at}"
                );
                if fs.is_idle() {
                    self.files.remove(&file);
                }
                return Err(MetaError::Invalid(why));
            }
        }
        let map = fs.holders.entry(session).or_default();
        for (range, mode) in tokens {
            map.grant(*range, *mode);
        }
        if fs.is_idle() || fs.holders.get(&session).is_some_and(RangeMap::is_empty) {
            fs.holders.retain(|_, m| !m.is_empty());
            if fs.is_idle() {
                self.files.remove(&file);
            }
        }
        Ok(())
    }

    /// Closes the recovery window once every session of the log is done (or gone) and the
    /// fences of those evicted unreclaimed are complete; then serves every queue.
    fn end_recovery(&mut self, out: &mut Vec<Output>) {
        let Some(r) = &self.recovery else { return };
        if !r.pending.is_empty() || r.unreclaimed.iter().any(|s| self.fencing.contains_key(s)) {
            return;
        }
        self.recovery = None;
        let files: Vec<FileId> = self.files.keys().copied().collect();
        self.process_files(files, out);
    }

    /// Records that `session` was heard from; false if it is not open.
    fn touch(&mut self, session: SessionId) -> bool {
        match self.sessions.get_mut(&session) {
            Some(s) => {
                s.last_heard_ms = self.now_ms;
                true
            }
            None => false,
        }
    }

    fn refusal(&self, session: SessionId, request: Option<RequestId>) -> Output {
        let state = if self.evicted.contains(&session) { SessionState::Evicted } else { SessionState::NotOpen };
        Output::Refuse { session, request, error: MetaError::Evicted { session, state } }
    }

    /// Evicts sessions whose lease or revoke deadline has come, declares down storage servers
    /// overdue with a fence, lets storage leases run out, completes the fences they were
    /// holding up, then re-evaluates the files affected.
    fn expire(&mut self, out: &mut Vec<Output>) {
        let now = self.now_ms;
        let mut doomed: BTreeMap<SessionId, String> = BTreeMap::new();
        for (&id, s) in &self.sessions {
            if now >= s.last_heard_ms.saturating_add(self.cfg.lease_ms) {
                let reason = format!(
                    "lease expired: not heard from for {} ms (lease {} ms)",
                    now - s.last_heard_ms,
                    self.cfg.lease_ms
                );
                doomed.insert(id, reason);
            }
        }
        for (file, fs) in &self.files {
            for (id, r) in &fs.revokes {
                if now >= r.deadline_ms {
                    let reason = format!(
                        "revoke {id} of {file} {} not acked within {} ms",
                        r.range,
                        now.saturating_sub(r.sent_ms)
                    );
                    doomed.entry(r.session).or_insert(reason);
                }
            }
        }
        if let Some(r) = self.recovery.as_ref().filter(|r| now >= r.until_ms) {
            for &session in &r.pending {
                let reason =
                    format!("it did not reclaim its tokens within the recovery window of {} ms", self.cfg.lease_ms);
                doomed.entry(session).or_insert(reason);
            }
        }
        let mut affected = BTreeSet::new();
        for (session, reason) in doomed {
            self.evict(session, reason, &mut affected, out);
        }
        // Servers overdue with a fence are declared down (their lease then runs out).
        let mut overdue: BTreeMap<ServerId, SessionId> = BTreeMap::new();
        for (&session, f) in &self.fencing {
            if now >= f.deadline_ms {
                for &server in &f.waiting {
                    overdue.entry(server).or_insert(session);
                }
            }
        }
        for (server, session) in overdue {
            let m = self.servers.get_mut(&server).expect("a fence waits only for known servers");
            if m.state == MemberState::Up {
                m.state = MemberState::Expelled;
                let reason =
                    format!("did not confirm fencing session {session:x} within {} ms", self.cfg.fence_timeout_ms);
                out.push(Output::ServerDown { server, reason });
            }
        }
        // Leases that ran out.
        for (&server, m) in self.servers.iter_mut() {
            if m.state != MemberState::Down && now >= m.lease_until_ms {
                if m.state == MemberState::Up {
                    let reason = format!("no heartbeat for {} ms (its lease)", self.cfg.storage_lease_ms);
                    out.push(Output::ServerDown { server, reason });
                }
                m.state = MemberState::Down;
            }
        }
        let servers = &self.servers;
        let mut done = Vec::new();
        for (&session, f) in self.fencing.iter_mut() {
            f.waiting.retain(|s| servers.get(s).is_some_and(|m| m.may_accept_writes(now)));
            if f.waiting.is_empty() {
                done.push(session);
            }
        }
        affected.extend(self.finish_fences(done));
        self.process_files(affected, out);
    }

    /// Evicts an open session: drops its requests and revokes, keeps its tokens until its
    /// fence completes. The files it waited or was revoked in go into `affected`.
    fn evict(&mut self, session: SessionId, reason: String, affected: &mut BTreeSet<FileId>, out: &mut Vec<Output>) {
        if let Some(r) = self.recovery.as_mut() {
            if r.pending.remove(&session) {
                r.unreclaimed.insert(session);
            }
        }
        affected.extend(self.drop_session(session, true));
        self.evicted.insert(session);
        self.evictions += 1;
        out.push(Output::Evict { session, reason });
        let now = self.now_ms;
        let waiting: BTreeSet<ServerId> =
            self.servers.iter().filter(|(_, m)| m.may_accept_writes(now)).map(|(s, _)| *s).collect();
        if waiting.is_empty() {
            affected.extend(self.drop_tokens(session));
        } else {
            out.push(Output::Fence { session, servers: waiting.iter().copied().collect() });
            let deadline_ms = now.saturating_add(self.cfg.fence_timeout_ms);
            self.fencing.insert(session, PendingFence { waiting, deadline_ms });
        }
    }

    /// `server` confirmed fencing `sessions` (all evicted ones: `None`); returns the
    /// sessions whose fence is now complete.
    fn confirm(&mut self, server: ServerId, sessions: Option<&[SessionId]>) -> Vec<SessionId> {
        let mut done = Vec::new();
        for (&session, f) in self.fencing.iter_mut() {
            if sessions.is_none_or(|s| s.contains(&session)) && f.waiting.remove(&server) && f.waiting.is_empty() {
                done.push(session);
            }
        }
        done
    }

    fn complete_fences(&mut self, done: Vec<SessionId>, out: &mut Vec<Output>) {
        let affected = self.finish_fences(done);
        self.process_files(affected, out);
    }

    /// Drops the tokens of sessions whose fence completed; returns the files they were in.
    fn finish_fences(&mut self, done: Vec<SessionId>) -> BTreeSet<FileId> {
        let mut affected = BTreeSet::new();
        for session in done {
            self.fencing.remove(&session);
            affected.extend(self.drop_tokens(session));
        }
        affected
    }

    fn drop_tokens(&mut self, session: SessionId) -> Vec<FileId> {
        let mut affected = Vec::new();
        for (&file, fs) in self.files.iter_mut() {
            if fs.holders.remove(&session).is_some() {
                affected.push(file);
            }
        }
        affected
    }

    /// Forgets an open session's requests and revokes, and unless `keep_tokens` its tokens;
    /// returns the files it was in.
    fn drop_session(&mut self, session: SessionId, keep_tokens: bool) -> Vec<FileId> {
        self.sessions.remove(&session);
        if let Some(r) = self.recovery.as_mut() {
            // A clean close: the session wrote back what it had; nothing of it to wait for.
            r.pending.remove(&session);
        }
        let mut affected = Vec::new();
        for (&file, fs) in self.files.iter_mut() {
            let mut touched = !keep_tokens && fs.holders.remove(&session).is_some();
            let n = fs.waiters.len();
            fs.waiters.retain(|w| w.session != session);
            touched |= fs.waiters.len() != n;
            let gone: Vec<RevokeId> =
                fs.revokes.iter().filter(|(_, r)| r.session == session).map(|(&id, _)| id).collect();
            for id in &gone {
                fs.revokes.remove(id);
                self.revoke_file.remove(id);
            }
            if touched || !gone.is_empty() {
                affected.push(file);
            }
        }
        affected
    }

    fn process_files(&mut self, files: impl IntoIterator<Item = FileId>, out: &mut Vec<Output>) {
        for f in files {
            self.process_file(f, out);
        }
    }

    /// Serves the queue of `file` in FIFO order: grants what can be granted, sends revokes for
    /// the conflicts of requests not queued behind others (none to fenced holders: they wait
    /// for the fence), and drops the file's state if idle.
    fn process_file(&mut self, file: FileId, out: &mut Vec<Output>) {
        if self.recovery.is_some() {
            // Nothing is granted or revoked while tokens are being reclaimed.
            return;
        }
        let Some(fs) = self.files.get_mut(&file) else { return };
        let now = self.now_ms;
        fs.holders.retain(|_, m| !m.is_empty());
        let mut i = 0;
        while i < fs.waiters.len() {
            let w = fs.waiters[i];
            let window = self.cfg.contention_window_ms;
            if fs.behind_earlier(i) {
                fs.contended_until_ms = now.saturating_add(window);
                i += 1;
                continue;
            }
            if fs.ping_pong(w.session, &w.required, now, window) {
                fs.contended_until_ms = now.saturating_add(window);
            }
            let blocked = !fs.conflicts(w.session, w.mode, w.required).is_empty()
                || fs.own_revoke_pending(w.session, &w.required);
            if blocked {
                // Uncontended, take the conflicting bytes of the whole desired range from each
                // holder, so segmented writers settle after one exchange each; contended, only
                // what this request needs.
                let contended = now < fs.contended_until_ms;
                let wanted_range = if contended { w.required } else { w.desired };
                let conflicts = fs.conflicts(w.session, w.mode, wanted_range);
                for (holder, range) in conflicts {
                    if self.fencing.contains_key(&holder)
                        || fs.revokes.values().any(|r| r.session == holder && r.covers(&range, w.mode))
                    {
                        continue;
                    }
                    let id = self.next_revoke;
                    self.next_revoke += 1;
                    self.revokes_sent += 1;
                    let deadline_ms = now.saturating_add(self.cfg.revoke_timeout_ms);
                    fs.revokes.insert(
                        id,
                        PendingRevoke { session: holder, range, wanted: w.mode, sent_ms: now, deadline_ms },
                    );
                    self.revoke_file.insert(id, file);
                    if fs.lost.len() == LOST_MAX {
                        fs.lost.pop_front();
                    }
                    fs.lost.push_back((holder, range, now));
                    out.push(Output::Revoke { session: holder, revoke: id, file, range, wanted: w.mode });
                }
                i += 1;
                continue;
            }
            let range = if now < fs.contended_until_ms { w.required } else { fs.expand(&w, i) };
            let ahead = w.ahead.map_or(0, |a| fs.free_records(&w, i, &a));
            let map = fs.holders.entry(w.session).or_default();
            map.grant(range, w.mode);
            for record in w.ahead.iter().flat_map(|a| a.records(ahead)) {
                map.grant(record, w.mode);
            }
            fs.waiters.remove(i);
            self.grants += 1;
            out.push(Output::Grant { session: w.session, request: w.request, file, mode: w.mode, range, ahead });
        }
        if fs.is_idle() {
            self.files.remove(&file);
        }
    }
}

/// Why an acquire is refused (as [`MetaError::BadAcquire`], code Invalid).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// `required` or `desired` holds no bytes.
    #[error("empty range (required {required}, desired {desired})")]
    Empty { required: ByteRange, desired: ByteRange },
    /// `required` is not within `desired`.
    #[error("required {required} is not within desired {desired}")]
    NotWithin { required: ByteRange, desired: ByteRange },
    /// The records ahead are malformed.
    #[error(transparent)]
    Stride(#[from] pfs_common::token::StrideError),
}

/// Why an acquire's ranges are refused: unless both are non-empty, `required` ⊆ `desired`
/// and the stride, if any, is well formed ([`Stride::check`]).
fn check_acquire(required: ByteRange, desired: ByteRange, ahead: Option<Stride>) -> Result<(), AcquireError> {
    if required.is_empty() || desired.is_empty() {
        return Err(AcquireError::Empty { required, desired });
    }
    if !desired.contains(&required) {
        return Err(AcquireError::NotWithin { required, desired });
    }
    Ok(ahead.as_ref().map_or(Ok(()), Stride::check)?)
}

#[cfg(test)]
mod model_check;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod storage_model;
#[cfg(test)]
mod tests;
