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
//! revokes left; the last [`LOST_MAX`] revokes per file are remembered for the detection.
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
//! [`TokenConfig::lease_ms`], or that has not acked a revoke [`TokenConfig::revoke_timeout_ms`]
//! after it was sent, is evicted: its tokens, queued requests and outstanding revokes are
//! dropped, [`Output::Evict`] is emitted (the caller fences the session at the storage servers)
//! and every later input from it is refused with `ErrorCode::Evicted`. Deadlines are inclusive:
//! at `now_ms >= last_heard + lease_ms` the session is gone. Every input first expires what is
//! due at its `now_ms`, so a late heartbeat cannot revive a session whose lease already ran
//! out. Time never goes backwards: an input with an older `now_ms` is treated as the latest
//! time seen. A session closed with [`Input::CloseSession`] is forgotten; later inputs from it
//! (like from a session never opened) are refused with `ErrorCode::Evicted` too, as the client
//! must open a new session either way.
//!
//! # Memory
//! Each holder's tokens in a file live in a `BTreeMap<u64, Extent>` (start → end, mode), with
//! adjacent or overlapping ranges of the same mode coalesced, so a session that holds a file
//! sequentially costs one entry however many grants it received. An entry is 24 bytes (8-byte
//! key + 16-byte [`Extent`]); with B-tree leaf nodes of 11 entries (~280 bytes, at least half
//! full) that is 25-56 bytes per token. Each (file, holder) adds about 80 bytes (the map
//! header plus its entry in the file's holder map), each queued request 56 bytes
//! ([`Waiter`]), each outstanding revoke 48 bytes plus its 16-byte id→file index entry
//! ([`PendingRevoke`]), and each evicted session id 8 bytes (kept to refuse it).
//! `tests::memory_per_token` checks these sizes.
//!
//! # Complexity
//! Simple before fast: evaluating a file's queue is O(waiters² + waiters × holders × tokens
//! in range), eviction scans every file. Fine for the dozens of sessions per file this is
//! meant for; an interval tree over all holders would be the next step.

use pfs_common::{ErrorCode, FileId, PfsError};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use pfs_common::token::{ByteRange, Mode, RevokeId, SessionId};
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
    /// `desired`, both non-empty.
    Acquire {
        session: SessionId,
        request: RequestId,
        file: FileId,
        mode: Mode,
        required: ByteRange,
        desired: ByteRange,
        now_ms: u64,
    },
    /// The session has written back / dropped the range of revoke `revoke`.
    RevokeAck { session: SessionId, revoke: RevokeId, now_ms: u64 },
    /// The session gives back its tokens over `range` of `file` (close: [`ByteRange::ALL`]).
    Release { session: SessionId, file: FileId, range: ByteRange, now_ms: u64 },
    /// Clean goodbye: tokens and queued requests dropped, no [`Output::Evict`].
    CloseSession { session: SessionId, now_ms: u64 },
    /// Expires leases and overdue revokes.
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
            | Input::Tick { now_ms } => now_ms,
        }
    }
}

/// What the caller must send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Session `session` now holds `mode` over `range` of `file` (`required` ⊆ `range` ⊆
    /// `desired` of request `request`).
    Grant { session: SessionId, request: RequestId, file: FileId, mode: Mode, range: ByteRange },
    /// Session `session` must write back (holds Write) or drop (holds Read) `range` of `file`
    /// and ack with `revoke`. `wanted` = Read: it keeps a Read token over its Write bytes there.
    Revoke { session: SessionId, revoke: RevokeId, file: FileId, range: ByteRange, wanted: Mode },
    /// The session lost its lease or failed to ack a revoke in time; fence it.
    Evict { session: SessionId, reason: String },
    /// The input was refused: Evicted (unknown, closed or evicted session) or Invalid (bad range).
    Refuse { session: SessionId, request: Option<RequestId>, error: PfsError },
}

/// Counts for monitoring: current sizes and totals since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenStats {
    /// Open sessions.
    pub sessions: usize,
    /// Token entries (coalesced ranges) over all files and holders.
    pub tokens: usize,
    /// Queued requests.
    pub waiters: usize,
    /// Revokes sent and not yet acked.
    pub outstanding_revokes: usize,
    /// Grants sent since start.
    pub grants: u64,
    /// Revokes sent since start.
    pub revokes: u64,
    /// Sessions evicted since start.
    pub evictions: u64,
}

/// The end and mode of one token entry; the start is the map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Extent {
    end: u64,
    mode: Mode,
}

/// One holder's tokens in one file: start → extent, disjoint, sorted, and coalesced (no two
/// entries that touch have the same mode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct RangeMap {
    map: BTreeMap<u64, Extent>,
}

impl RangeMap {
    fn iter(&self) -> impl Iterator<Item = (ByteRange, Mode)> + '_ {
        self.map.iter().map(|(&start, e)| (ByteRange { start, end: e.end }, e.mode))
    }

    /// The entries sharing a byte with `r` (not clipped), in order.
    fn overlapping(&self, r: ByteRange) -> Vec<(ByteRange, Mode)> {
        if r.is_empty() {
            return Vec::new();
        }
        // Entries are disjoint, so by descending start their ends descend too.
        let mut v: Vec<_> = self
            .map
            .range(..r.end)
            .rev()
            .take_while(|(_, e)| e.end > r.start)
            .map(|(&start, e)| (ByteRange { start, end: e.end }, e.mode))
            .collect();
        v.reverse();
        v
    }

    /// The Write bytes within `r`, clipped to it.
    fn writes_within(&self, r: ByteRange) -> Vec<ByteRange> {
        self.overlapping(r)
            .into_iter()
            .filter(|(_, m)| *m == Mode::Write)
            .filter_map(|(t, _)| t.intersect(&r))
            .collect()
    }

    /// Drops every byte of `r`, splitting entries that stick out.
    fn remove(&mut self, r: ByteRange) {
        for (t, mode) in self.overlapping(r) {
            self.map.remove(&t.start);
            if t.start < r.start {
                self.map.insert(t.start, Extent { end: r.start, mode });
            }
            if t.end > r.end {
                self.map.insert(r.end, Extent { end: t.end, mode });
            }
        }
    }

    /// Sets every byte of `r` to `mode`, coalescing with neighbours.
    fn set(&mut self, r: ByteRange, mode: Mode) {
        if r.is_empty() {
            return;
        }
        self.remove(r);
        let mut start = r.start;
        let mut end = r.end;
        if let Some((&ps, pe)) = self.map.range(..start).next_back() {
            if pe.end == start && pe.mode == mode {
                start = ps;
                self.map.remove(&ps);
            }
        }
        if let Some(ne) = self.map.get(&end).copied() {
            if ne.mode == mode {
                self.map.remove(&end);
                end = ne.end;
            }
        }
        self.map.insert(start, Extent { end, mode });
    }

    /// Read over `r`, except bytes already held Write stay Write.
    fn set_read_keep_write(&mut self, r: ByteRange) {
        let writes = self.writes_within(r);
        self.set(r, Mode::Read);
        for w in writes {
            self.set(w, Mode::Write);
        }
    }

    /// Write bytes within `r` become Read.
    fn downgrade(&mut self, r: ByteRange) {
        for w in self.writes_within(r) {
            self.set(w, Mode::Read);
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Checks disjoint, sorted, non-empty, coalesced.
    fn check(&self) -> Result<(), String> {
        let mut prev: Option<(ByteRange, Mode)> = None;
        for (r, m) in self.iter() {
            if r.is_empty() {
                return Err(format!("empty token {r}"));
            }
            if let Some((p, pm)) = prev {
                if p.end > r.start {
                    return Err(format!("tokens {p} and {r} overlap"));
                }
                if p.end == r.start && pm == m {
                    return Err(format!("tokens {p} and {r} of mode {m:?} are not coalesced"));
                }
            }
            prev = Some((r, m));
        }
        Ok(())
    }
}

/// A queued request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Waiter {
    session: SessionId,
    request: RequestId,
    mode: Mode,
    required: ByteRange,
    desired: ByteRange,
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
struct FileState {
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

impl FileState {
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
                .into_iter()
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
    /// obstacle: other sessions' incompatible tokens, other sessions' incompatible queued
    /// requests, and `w.session`'s own ranges under revoke. `w` is the waiter at `i`.
    fn expand(&self, w: &Waiter, i: usize) -> ByteRange {
        let mut obstacles: Vec<ByteRange> = Vec::new();
        for (&holder, map) in &self.holders {
            if holder != w.session {
                obstacles.extend(
                    map.overlapping(w.desired).into_iter().filter(|(_, m)| m.conflicts_with(w.mode)).map(|(t, _)| t),
                );
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
}

/// An open session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Session {
    /// Last input from it, ms.
    last_heard_ms: u64,
}

/// The token manager of all files. See the module documentation for the rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenManager {
    cfg: TokenConfig,
    /// The latest time seen, ms.
    now_ms: u64,
    sessions: BTreeMap<SessionId, Session>,
    /// Evicted sessions, refused forever.
    evicted: BTreeSet<SessionId>,
    /// Files with tokens, waiters or outstanding revokes.
    files: BTreeMap<FileId, FileState>,
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
            now_ms: 0,
            sessions: BTreeMap::new(),
            evicted: BTreeSet::new(),
            files: BTreeMap::new(),
            revoke_file: BTreeMap::new(),
            next_revoke: 1,
            grants: 0,
            revokes_sent: 0,
            evictions: 0,
        }
    }

    /// Applies one input and returns what to send, in order (evictions first).
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
            Input::Acquire { session, request, file, mode, required, desired, .. } => {
                if !self.touch(session) {
                    out.push(self.refusal(session, Some(request)));
                } else if let Err(error) = check_acquire(required, desired) {
                    let error = error.context(format!("acquire {request} of session {session} on {file}"));
                    out.push(Output::Refuse { session, request: Some(request), error });
                } else {
                    let w = Waiter { session, request, mode, required, desired };
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
                    let error = PfsError::new(
                        ErrorCode::Invalid,
                        format!("release by session {session} of {file}: empty range {range}"),
                    );
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
                    let files = self.drop_session(session);
                    for f in files {
                        self.process_file(f, &mut out);
                    }
                } else {
                    out.push(self.refusal(session, None));
                }
            }
            Input::Tick { .. } => {}
        }
        out
    }

    /// The earliest time at which a Tick would evict someone (a lease or revoke deadline), ms.
    pub fn next_deadline(&self) -> Option<u64> {
        let leases = self.sessions.values().map(|s| s.last_heard_ms.saturating_add(self.cfg.lease_ms));
        let revokes = self.files.values().flat_map(|f| f.revokes.values().map(|r| r.deadline_ms));
        leases.chain(revokes).min()
    }

    /// The tokens `session` holds in `file`, in byte order, coalesced.
    pub fn tokens(&self, session: SessionId, file: FileId) -> Vec<(ByteRange, Mode)> {
        self.files.get(&file).and_then(|f| f.holders.get(&session)).map(|m| m.iter().collect()).unwrap_or_default()
    }

    /// Current sizes and totals.
    pub fn stats(&self) -> TokenStats {
        TokenStats {
            sessions: self.sessions.len(),
            tokens: self.files.values().flat_map(|f| f.holders.values()).map(RangeMap::len).sum(),
            waiters: self.files.values().map(|f| f.waiters.len()).sum(),
            outstanding_revokes: self.revoke_file.len(),
            grants: self.grants,
            revokes: self.revokes_sent,
            evictions: self.evictions,
        }
    }

    /// Checks the invariants; the error names the first broken one.
    ///
    /// - No two sessions hold overlapping tokens of which one is Write; each holder's tokens
    ///   are disjoint and coalesced; only open sessions hold, wait or are revoked.
    /// - Every queued request is blocked (behind an earlier incompatible request, by its own
    ///   outstanding revoke, or by a conflicting holder), and a request not behind another has
    ///   each conflict covered by an outstanding revoke (so it will make progress).
    /// - No lease or revoke deadline has passed (expiry runs on every input).
    /// - The revoke index matches the files; no idle file state is kept.
    pub fn check_invariants(&self) -> Result<(), String> {
        let now = self.now_ms;
        for (id, s) in &self.sessions {
            if self.evicted.contains(id) {
                return Err(format!("session {id} is both open and evicted"));
            }
            if now >= s.last_heard_ms.saturating_add(self.cfg.lease_ms) {
                return Err(format!(
                    "session {id} outlived its lease (last heard {} ms, now {now} ms)",
                    s.last_heard_ms
                ));
            }
        }
        let mut indexed = 0;
        for (file, fs) in &self.files {
            if fs.is_idle() {
                return Err(format!("{file}: idle state kept"));
            }
            for (h, map) in &fs.holders {
                if !self.sessions.contains_key(h) {
                    return Err(format!("{file}: session {h} holds tokens but is not open"));
                }
                if map.is_empty() {
                    return Err(format!("{file}: empty token map of session {h}"));
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
                                ));
                            }
                        }
                    }
                }
            }
            for (id, r) in &fs.revokes {
                indexed += 1;
                if self.revoke_file.get(id) != Some(file) {
                    return Err(format!("{file}: revoke {id} missing from the index"));
                }
                if !self.sessions.contains_key(&r.session) {
                    return Err(format!("{file}: revoke {id} to session {} that is not open", r.session));
                }
                if r.range.is_empty() || now >= r.deadline_ms {
                    return Err(format!("{file}: revoke {id} has an empty range or is overdue"));
                }
            }
            for (i, w) in fs.waiters.iter().enumerate() {
                if !self.sessions.contains_key(&w.session) {
                    return Err(format!("{file}: request {} of session {} queued but not open", w.request, w.session));
                }
                if check_acquire(w.required, w.desired).is_err() {
                    return Err(format!("{file}: request {} queued with bad ranges", w.request));
                }
                if fs.behind_earlier(i) {
                    continue;
                }
                let conflicts = fs.conflicts(w.session, w.mode, w.required);
                if conflicts.is_empty() && !fs.own_revoke_pending(w.session, &w.required) {
                    return Err(format!(
                        "{file}: request {} of session {} could be granted but waits",
                        w.request, w.session
                    ));
                }
                for (holder, range) in conflicts {
                    if !fs.revokes.values().any(|r| r.session == holder && r.covers(&range, w.mode)) {
                        return Err(format!(
                            "{file}: request {} waits for session {holder} over {range} but no revoke is out",
                            w.request
                        ));
                    }
                }
            }
        }
        if indexed != self.revoke_file.len() {
            return Err(format!("revoke index has {} entries, files have {indexed} revokes", self.revoke_file.len()));
        }
        Ok(())
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
        let message = if self.evicted.contains(&session) {
            format!("session {session} was evicted")
        } else {
            format!("session {session} is not open")
        };
        Output::Refuse { session, request, error: PfsError::new(ErrorCode::Evicted, message) }
    }

    /// Evicts sessions whose lease or revoke deadline has come, then re-evaluates the files
    /// they were in.
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
        if doomed.is_empty() {
            return;
        }
        let mut affected = BTreeSet::new();
        for (session, reason) in doomed {
            affected.extend(self.drop_session(session));
            self.evicted.insert(session);
            self.evictions += 1;
            out.push(Output::Evict { session, reason });
        }
        for f in affected {
            self.process_file(f, out);
        }
    }

    /// Forgets an open session's tokens, requests and revokes; returns the files it was in.
    fn drop_session(&mut self, session: SessionId) -> Vec<FileId> {
        self.sessions.remove(&session);
        let mut affected = Vec::new();
        for (&file, fs) in self.files.iter_mut() {
            let mut touched = fs.holders.remove(&session).is_some();
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

    /// Serves the queue of `file` in FIFO order: grants what can be granted, sends revokes for
    /// the conflicts of requests not queued behind others, and drops the file's state if idle.
    fn process_file(&mut self, file: FileId, out: &mut Vec<Output>) {
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
                    if fs.revokes.values().any(|r| r.session == holder && r.covers(&range, w.mode)) {
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
            let map = fs.holders.entry(w.session).or_default();
            match w.mode {
                Mode::Write => map.set(range, Mode::Write),
                Mode::Read => map.set_read_keep_write(range),
            }
            fs.waiters.remove(i);
            self.grants += 1;
            out.push(Output::Grant { session: w.session, request: w.request, file, mode: w.mode, range });
        }
        if fs.is_idle() {
            self.files.remove(&file);
        }
    }
}

/// Errors with Invalid unless both ranges are non-empty and `required` ⊆ `desired`.
fn check_acquire(required: ByteRange, desired: ByteRange) -> Result<(), PfsError> {
    if required.is_empty() || desired.is_empty() {
        return Err(PfsError::new(ErrorCode::Invalid, format!("empty range (required {required}, desired {desired})")));
    }
    if !desired.contains(&required) {
        return Err(PfsError::new(ErrorCode::Invalid, format!("required {required} is not within desired {desired}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: TokenConfig = TokenConfig { lease_ms: 1000, revoke_timeout_ms: 500, contention_window_ms: 200 };
    const F: FileId = FileId(7);
    const INF: u64 = u64::MAX;
    const A: SessionId = 1;
    const B: SessionId = 2;
    const C: SessionId = 3;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end)
    }

    /// A manager plus a clock; checks the invariants after every input.
    struct H {
        m: TokenManager,
        now: u64,
        next_req: RequestId,
    }

    impl H {
        fn new(cfg: TokenConfig, sessions: &[SessionId]) -> H {
            let mut h = H { m: TokenManager::new(cfg), now: 0, next_req: 1 };
            for &s in sessions {
                assert!(h.input(Input::OpenSession { session: s, now_ms: 0 }).is_empty());
            }
            h
        }

        fn input(&mut self, input: Input) -> Vec<Output> {
            let out = self.m.handle(input);
            self.m.check_invariants().unwrap();
            out
        }

        /// Acquire; returns (request id, outputs).
        fn acq(
            &mut self,
            s: SessionId,
            mode: Mode,
            required: ByteRange,
            desired: ByteRange,
        ) -> (RequestId, Vec<Output>) {
            let request = self.next_req;
            self.next_req += 1;
            let now_ms = self.now;
            (request, self.input(Input::Acquire { session: s, request, file: F, mode, required, desired, now_ms }))
        }

        fn ack(&mut self, s: SessionId, revoke: RevokeId) -> Vec<Output> {
            self.input(Input::RevokeAck { session: s, revoke, now_ms: self.now })
        }

        fn tick(&mut self, now: u64) -> Vec<Output> {
            self.now = now;
            self.input(Input::Tick { now_ms: now })
        }

        fn hb(&mut self, s: SessionId) -> Vec<Output> {
            self.input(Input::Heartbeat { session: s, now_ms: self.now })
        }

        fn tokens(&self, s: SessionId) -> Vec<(ByteRange, Mode)> {
            self.m.tokens(s, F)
        }
    }

    fn grants(out: &[Output]) -> Vec<(SessionId, RequestId, Mode, ByteRange)> {
        out.iter()
            .filter_map(|o| match *o {
                Output::Grant { session, request, mode, range, .. } => Some((session, request, mode, range)),
                _ => None,
            })
            .collect()
    }

    fn revokes(out: &[Output]) -> Vec<(SessionId, RevokeId, ByteRange, Mode)> {
        out.iter()
            .filter_map(|o| match *o {
                Output::Revoke { session, revoke, range, wanted, .. } => Some((session, revoke, range, wanted)),
                _ => None,
            })
            .collect()
    }

    fn evicted(out: &[Output]) -> Vec<SessionId> {
        out.iter()
            .filter_map(|o| match o {
                Output::Evict { session, .. } => Some(*session),
                _ => None,
            })
            .collect()
    }

    fn refused(out: &[Output]) -> Vec<(SessionId, Option<RequestId>, ErrorCode)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Refuse { session, request, error } => Some((*session, *request, error.code)),
                _ => None,
            })
            .collect()
    }

    use Mode::{Read as R, Write as W};

    #[test]
    fn sequential_writer_gets_whole_file_once() {
        let mut h = H::new(CFG, &[A]);
        let (q, out) = h.acq(A, W, r(0, 10), ByteRange::ALL);
        assert_eq!(out, vec![Output::Grant { session: A, request: q, file: F, mode: W, range: ByteRange::ALL }]);
        let (q, out) = h.acq(A, W, r(10, 20), r(10, INF));
        assert_eq!(grants(&out), vec![(A, q, W, r(10, INF))]);
        assert_eq!(h.tokens(A), vec![(ByteRange::ALL, W)]);
        assert_eq!(h.m.stats().revokes, 0);
    }

    #[test]
    fn expansion_stops_at_other_holders_and_queued_requests() {
        let mut h = H::new(CFG, &[A, B]);
        h.acq(A, R, r(100, 200), r(100, 200));
        let (q, out) = h.acq(B, W, r(0, 10), ByteRange::ALL);
        assert_eq!(grants(&out), vec![(B, q, W, r(0, 100))]);
        // Reads expand over other reads but not over writes.
        let mut h = H::new(CFG, &[A, B]);
        h.acq(A, R, r(100, 200), r(100, 200));
        h.acq(A, W, r(300, 400), r(300, 400));
        let (q, out) = h.acq(B, R, r(0, 10), ByteRange::ALL);
        assert_eq!(grants(&out), vec![(B, q, R, r(0, 300))]);
    }

    #[test]
    fn revoke_splits_the_holders_token() {
        let mut h = H::new(CFG, &[A, B]);
        h.acq(A, W, r(0, 10), ByteRange::ALL);
        // Uncontended: the revoke takes the conflicting bytes of B's whole desired range, so a
        // writer of the next segment settles after one exchange.
        let (q, out) = h.acq(B, W, r(10, 20), r(10, INF));
        assert!(grants(&out).is_empty());
        let rv = revokes(&out);
        assert_eq!(rv.len(), 1);
        let (s, id, range, wanted) = rv[0];
        assert_eq!((s, range, wanted), (A, r(10, INF), W));
        assert_eq!(h.m.stats().waiters, 1);
        let out = h.ack(A, id);
        assert_eq!(grants(&out), vec![(B, q, W, r(10, INF))]);
        assert_eq!(h.tokens(A), vec![(r(0, 10), W)]);
        assert_eq!(h.tokens(B), vec![(r(10, INF), W)]);
        // A's own segment still needs no round trip; B's next record neither.
        let (_, out) = h.acq(A, W, r(5, 8), r(5, INF));
        assert!(!grants(&out).is_empty() && revokes(&out).is_empty());
    }

    #[test]
    fn read_conflict_downgrades_write_to_read() {
        let mut h = H::new(CFG, &[A, B]);
        h.acq(A, W, r(0, 10), ByteRange::ALL);
        let (q, out) = h.acq(B, R, r(10, 20), r(10, 20));
        let rv = revokes(&out);
        assert_eq!(rv.iter().map(|x| (x.0, x.2, x.3)).collect::<Vec<_>>(), vec![(A, r(10, 20), R)]);
        let out = h.ack(A, rv[0].1);
        assert_eq!(grants(&out), vec![(B, q, R, r(10, 20))]);
        assert_eq!(h.tokens(A), vec![(r(0, 10), W), (r(10, 20), R), (r(20, INF), W)]);
    }

    #[test]
    fn ping_pong_stops_expansion_then_expansion_again() {
        let mut h = H::new(CFG, &[A, B]);
        // Strided writers: A takes everything, B takes A's tail, A comes back for bytes that
        // were revoked from it: that is the ping-pong, and the file becomes contended.
        h.acq(A, W, r(0, 10), r(0, INF));
        let (qb, out) = h.acq(B, W, r(10, 20), r(10, INF));
        let rv = revokes(&out);
        assert_eq!(rv.iter().map(|x| (x.0, x.2)).collect::<Vec<_>>(), vec![(A, r(10, INF))]);
        h.now = 10;
        assert_eq!(grants(&h.ack(A, rv[0].1)), vec![(B, qb, W, r(10, INF))]);
        let (qa, out) = h.acq(A, W, r(20, 30), r(20, INF));
        let rv = revokes(&out);
        // Contended now: only the required bytes are revoked and granted.
        assert_eq!(rv.iter().map(|x| (x.0, x.2)).collect::<Vec<_>>(), vec![(B, r(20, 30))]);
        assert_eq!(grants(&h.ack(B, rv[0].1)), vec![(A, qa, W, r(20, 30))]);
        // Still within the window: only the required bytes, though more were desired.
        h.now = 150;
        let (q, out) = h.acq(A, W, r(1000, 1010), r(1000, 1100));
        let rv = revokes(&out);
        assert_eq!(rv.iter().map(|x| (x.0, x.2)).collect::<Vec<_>>(), vec![(B, r(1000, 1010))]);
        assert_eq!(grants(&h.ack(B, rv[0].1)), vec![(A, q, W, r(1000, 1010))]);
        // Window over (last blocked at 150 ms, window 200 ms): the desired range again.
        h.now = 500;
        let (q, out) = h.acq(A, W, r(2000, 2010), r(2000, INF));
        let rv = revokes(&out);
        assert_eq!(rv.iter().map(|x| (x.0, x.2)).collect::<Vec<_>>(), vec![(B, r(2000, INF))]);
        assert_eq!(grants(&h.ack(B, rv[0].1)), vec![(A, q, W, r(2000, INF))]);
    }

    #[test]
    fn writer_is_not_starved_by_later_readers() {
        let mut h = H::new(CFG, &[A, B, C]);
        h.acq(A, R, r(0, 10), r(0, 10));
        let (qb, out) = h.acq(B, W, r(0, 10), r(0, 10));
        let rv = revokes(&out);
        assert_eq!(rv.iter().map(|x| (x.0, x.3)).collect::<Vec<_>>(), vec![(A, W)]);
        // A later reader is compatible with the holder but must queue behind the writer,
        // and sends no revoke of its own yet.
        let (qc, out) = h.acq(C, R, r(5, 6), r(5, 6));
        assert!(out.is_empty(), "{out:?}");
        // Even a reader of the holder's own session queues behind the writer.
        let (qa, out) = h.acq(A, R, r(0, 1), r(0, 1));
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(h.m.stats().waiters, 3);
        let out = h.ack(A, rv[0].1);
        assert_eq!(grants(&out), vec![(B, qb, W, r(0, 10))]);
        // One revoke per blocked request (a downgrade each), in queue order.
        let rv = revokes(&out);
        assert_eq!(rv.iter().map(|x| (x.0, x.2, x.3)).collect::<Vec<_>>(), vec![(B, r(5, 6), R), (B, r(0, 1), R)]);
        assert_eq!(grants(&h.ack(B, rv[1].1)), vec![(A, qa, R, r(0, 1))]);
        assert_eq!(grants(&h.ack(B, rv[0].1)), vec![(C, qc, R, r(5, 6))]);
        assert_eq!(h.tokens(B), vec![(r(0, 1), R), (r(1, 5), W), (r(5, 6), R), (r(6, 10), W)]);
    }

    #[test]
    fn own_tokens_never_conflict() {
        let mut h = H::new(CFG, &[A]);
        h.acq(A, R, r(0, 10), r(0, 10));
        let (q, out) = h.acq(A, W, r(0, 10), r(0, 10));
        assert_eq!(grants(&out), vec![(A, q, W, r(0, 10))]);
        assert_eq!(h.tokens(A), vec![(r(0, 10), W)]);
        let (q, out) = h.acq(A, R, r(2, 3), r(0, 20));
        assert_eq!(grants(&out), vec![(A, q, R, r(0, 20))]);
        assert_eq!(h.tokens(A), vec![(r(0, 10), W), (r(10, 20), R)]);
    }

    #[test]
    fn upgrade_waits_for_own_ack_and_then_for_the_reader() {
        let mut h = H::new(CFG, &[A, B]);
        h.acq(A, W, r(0, 10), ByteRange::ALL);
        let (qb, out) = h.acq(B, R, r(10, 20), r(10, 20));
        let id = revokes(&out)[0].1;
        // A wants to write where it is being downgraded: waits behind B and for its own ack.
        let (qa, out) = h.acq(A, W, r(15, 16), r(15, 16));
        assert!(out.is_empty());
        let out = h.ack(A, id);
        assert_eq!(grants(&out), vec![(B, qb, R, r(10, 20))]);
        let rv = revokes(&out);
        assert_eq!(rv.iter().map(|x| (x.0, x.2, x.3)).collect::<Vec<_>>(), vec![(B, r(15, 16), W)]);
        let out = h.ack(B, rv[0].1);
        assert_eq!(grants(&out), vec![(A, qa, W, r(15, 16))]);
        assert_eq!(h.tokens(B), vec![(r(10, 15), R), (r(16, 20), R)]);
        assert_eq!(h.tokens(A), vec![(r(0, 10), W), (r(10, 15), R), (r(15, 16), W), (r(16, 20), R), (r(20, INF), W)]);
    }

    #[test]
    fn outstanding_revoke_is_not_sent_twice() {
        let mut h = H::new(CFG, &[A, B, C]);
        h.acq(A, W, r(0, 10), ByteRange::ALL);
        let (qb, out) = h.acq(B, R, r(10, 20), r(10, 20));
        assert_eq!(revokes(&out).len(), 1);
        let id = revokes(&out)[0].1;
        let (qc, out) = h.acq(C, R, r(12, 15), r(12, 15));
        assert!(out.is_empty(), "{out:?}");
        // A stronger revoke is needed for a writer.
        h.next_req = 100;
        let (_, out) = h.acq(C, W, r(30, 40), r(30, 40));
        assert_eq!(revokes(&out).iter().map(|x| (x.0, x.2, x.3)).collect::<Vec<_>>(), vec![(A, r(30, 40), W)]);
        let out = h.ack(A, id);
        assert_eq!(grants(&out), vec![(B, qb, R, r(10, 20)), (C, qc, R, r(12, 15))]);
        assert_eq!(h.m.stats().revokes, 2);
    }

    #[test]
    fn unknown_or_foreign_acks_are_ignored() {
        let mut h = H::new(CFG, &[A, B]);
        assert!(h.ack(A, 12345).is_empty());
        h.acq(A, W, r(0, 10), r(0, 10));
        let (_, out) = h.acq(B, W, r(0, 10), r(0, 10));
        let id = revokes(&out)[0].1;
        assert!(h.ack(B, id).is_empty());
        assert_eq!(h.tokens(A), vec![(r(0, 10), W)]);
        assert_eq!(grants(&h.ack(A, id)).len(), 1);
        assert!(h.ack(A, id).is_empty());
    }

    #[test]
    fn release_splits_and_frees_waiters() {
        let mut h = H::new(CFG, &[A, B]);
        h.acq(A, W, r(0, 100), r(0, 100));
        let (qb, out) = h.acq(B, W, r(40, 50), r(40, 50));
        let id = revokes(&out)[0].1;
        let out = h.input(Input::Release { session: A, file: F, range: r(40, 60), now_ms: 0 });
        assert_eq!(grants(&out), vec![(B, qb, W, r(40, 50))]);
        assert_eq!(h.tokens(A), vec![(r(0, 40), W), (r(60, 100), W)]);
        // A may not get bytes under its outstanding revoke before acking it (even once B's
        // downgrade is acked).
        let (qa, out) = h.acq(A, R, r(45, 46), r(45, 46));
        assert!(grants(&out).is_empty());
        assert_eq!(revokes(&out).iter().map(|x| (x.0, x.2, x.3)).collect::<Vec<_>>(), vec![(B, r(45, 46), R)]);
        assert!(h.ack(B, revokes(&out)[0].1).is_empty());
        assert_eq!(grants(&h.ack(A, id)), vec![(A, qa, R, r(45, 46))]);
        // Close releases everything of the file; the state goes away.
        h.input(Input::Release { session: A, file: F, range: ByteRange::ALL, now_ms: 0 });
        h.input(Input::Release { session: B, file: F, range: ByteRange::ALL, now_ms: 0 });
        assert_eq!(h.m.stats().tokens, 0);
        assert!(h.m.files.is_empty());
    }

    #[test]
    fn same_mode_ranges_coalesce() {
        let mut h = H::new(CFG, &[A]);
        h.acq(A, R, r(0, 10), r(0, 10));
        h.acq(A, R, r(10, 20), r(10, 20));
        h.acq(A, R, r(5, 30), r(5, 30));
        assert_eq!(h.tokens(A), vec![(r(0, 30), R)]);
        h.acq(A, W, r(30, 40), r(30, 40));
        h.acq(A, W, r(50, 60), r(50, 60));
        h.acq(A, W, r(40, 50), r(40, 50));
        assert_eq!(h.tokens(A), vec![(r(0, 30), R), (r(30, 60), W)]);
        h.acq(A, W, r(0, 30), r(0, 30));
        assert_eq!(h.tokens(A), vec![(r(0, 60), W)]);
        assert_eq!(h.m.stats().tokens, 1);
    }

    #[test]
    fn lease_expiry_evicts_and_frees_waiters() {
        let cfg = TokenConfig { lease_ms: 1000, revoke_timeout_ms: 5000, contention_window_ms: 200 };
        let mut h = H::new(cfg, &[A, B]);
        h.acq(A, W, r(0, 10), ByteRange::ALL);
        let (qb, out) = h.acq(B, W, r(0, 10), r(0, 10));
        assert_eq!(revokes(&out).len(), 1);
        assert_eq!(h.m.next_deadline(), Some(1000));
        h.now = 600;
        h.hb(B);
        assert_eq!(h.m.next_deadline(), Some(1000));
        assert!(h.tick(999).is_empty());
        let out = h.tick(1000);
        assert_eq!(evicted(&out), vec![A]);
        assert_eq!(grants(&out), vec![(B, qb, W, r(0, 10))]);
        assert!(h.tokens(A).is_empty());
        assert_eq!(h.m.next_deadline(), Some(1600));
        assert_eq!(h.m.stats().evictions, 1);
    }

    #[test]
    fn revoke_timeout_evicts_even_a_heartbeating_holder() {
        let mut h = H::new(CFG, &[A, B]);
        h.acq(A, W, r(0, 10), ByteRange::ALL);
        let (qb, out) = h.acq(B, R, r(0, 10), r(0, 10));
        assert_eq!(revokes(&out).len(), 1);
        h.now = 400;
        h.hb(A);
        h.hb(B);
        assert_eq!(h.m.next_deadline(), Some(500));
        let out = h.tick(500);
        assert_eq!(evicted(&out), vec![A]);
        assert!(matches!(&out[0], Output::Evict { reason, .. } if reason.contains("not acked")));
        assert_eq!(grants(&out), vec![(B, qb, R, r(0, 10))]);
    }

    #[test]
    fn evicted_and_unknown_sessions_are_refused() {
        let mut h = H::new(CFG, &[A, B]);
        h.acq(A, W, r(0, 10), r(0, 10));
        // A late heartbeat cannot revive a session whose lease ran out: evicted, then refused.
        h.now = 1000;
        let out = h.hb(A);
        assert_eq!(evicted(&out), vec![A, B]);
        assert_eq!(refused(&out), vec![(A, None, ErrorCode::Evicted)]);
        let (q, out) = h.acq(A, R, r(0, 1), r(0, 1));
        assert_eq!(out.len(), 1);
        assert_eq!(refused(&out), vec![(A, Some(q), ErrorCode::Evicted)]);
        assert_eq!(
            refused(&h.input(Input::OpenSession { session: A, now_ms: 1000 })),
            vec![(A, None, ErrorCode::Evicted)]
        );
        assert_eq!(refused(&h.ack(A, 1)), vec![(A, None, ErrorCode::Evicted)]);
        let (q, out) = h.acq(99, R, r(0, 1), r(0, 1));
        assert_eq!(refused(&out), vec![(99, Some(q), ErrorCode::Evicted)]);
        assert_eq!(h.m.stats().sessions, 0);
    }

    #[test]
    fn bad_ranges_are_invalid() {
        let mut h = H::new(CFG, &[A]);
        for (req, des) in [(r(5, 5), r(0, 10)), (r(6, 5), r(0, 10)), (r(0, 10), r(1, 10)), (r(0, 10), r(0, 9))] {
            let (q, out) = h.acq(A, R, req, des);
            assert_eq!(refused(&out), vec![(A, Some(q), ErrorCode::Invalid)], "{req} {des}");
        }
        let out = h.input(Input::Release { session: A, file: F, range: r(3, 3), now_ms: 0 });
        assert_eq!(refused(&out), vec![(A, None, ErrorCode::Invalid)]);
        assert_eq!(h.m.stats().waiters, 0);
    }

    #[test]
    fn close_session_is_a_clean_goodbye() {
        let mut h = H::new(CFG, &[A, B, C]);
        h.acq(A, W, r(0, 10), r(0, 10));
        let (qb, out) = h.acq(B, W, r(0, 10), r(0, 10));
        assert_eq!(revokes(&out).len(), 1);
        h.acq(C, W, r(20, 30), r(20, 30));
        let out = h.input(Input::CloseSession { session: A, now_ms: 0 });
        assert_eq!(out, vec![Output::Grant { session: B, request: qb, file: F, mode: W, range: r(0, 10) }]);
        // A closing session's queued requests go too.
        let (_, out) = h.acq(B, W, r(20, 30), r(20, 30));
        assert_eq!(revokes(&out).len(), 1);
        let id = revokes(&out)[0].1;
        assert!(h.input(Input::CloseSession { session: B, now_ms: 0 }).is_empty());
        assert_eq!(h.m.stats().waiters, 0);
        // The revoke to C stays out (C may be flushing already) and applies when acked.
        assert_eq!(h.m.stats().outstanding_revokes, 1);
        assert!(h.ack(C, id).is_empty());
        assert_eq!(h.m.stats().outstanding_revokes, 0);
        assert!(h.m.files.is_empty());
        assert_eq!(refused(&h.hb(B)), vec![(B, None, ErrorCode::Evicted)]);
    }

    #[test]
    fn stats_count() {
        let mut h = H::new(CFG, &[A, B]);
        h.acq(A, W, r(0, 10), r(0, 10));
        h.acq(A, R, r(20, 30), r(20, 30));
        h.acq(B, W, r(5, 25), r(5, 25));
        let s = h.m.stats();
        assert_eq!(
            s,
            TokenStats {
                sessions: 2,
                tokens: 2,
                waiters: 1,
                outstanding_revokes: 1,
                grants: 2,
                revokes: 1,
                evictions: 0
            }
        );
    }

    /// Prints and pins the sizes the module documentation quotes.
    #[test]
    fn memory_per_token() {
        use std::mem::size_of;
        let entry = size_of::<u64>() + size_of::<Extent>();
        println!(
            "token entry {entry} bytes (key 8 + Extent {}), RangeMap {}, Waiter {}, PendingRevoke {}, FileState {}, \
             Session {}",
            size_of::<Extent>(),
            size_of::<RangeMap>(),
            size_of::<Waiter>(),
            size_of::<PendingRevoke>(),
            size_of::<FileState>(),
            size_of::<Session>()
        );
        assert_eq!(size_of::<Extent>(), 16);
        assert_eq!(entry, 24);
        assert_eq!(size_of::<RangeMap>(), 24);
        assert_eq!(size_of::<Waiter>(), 56);
        assert_eq!(size_of::<PendingRevoke>(), 48);
    }
}

/// Random sequences of inputs over 4 session slots and 2 files against a client model that
/// keeps its own byte-by-byte copy of every session's tokens.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    const CFG: TokenConfig = TokenConfig { lease_ms: 100, revoke_timeout_ms: 50, contention_window_ms: 20 };
    const SLOTS: usize = 4;
    const FILES: [FileId; 2] = [FileId(10), FileId(11)];
    /// Cells 0..64 are bytes 0..64; cell 64 is [64, ∞). All ranges used start and end on
    /// 0..=64 or ∞, so this is an exact model.
    const CELLS: usize = 65;

    type Cells = [Option<Mode>; CELLS];

    #[derive(Clone, Debug)]
    enum Step {
        Acquire {
            s: usize,
            f: usize,
            write: bool,
            start: u64,
            len: u64,
            below: u64,
            above: u64,
            to_inf: bool,
            exact: bool,
        },
        Release {
            s: usize,
            f: usize,
            start: u64,
            len: u64,
            all: bool,
        },
        Heartbeat {
            s: usize,
        },
        /// Optionally every live client acks all it received and heartbeats; then time
        /// advances by `ms` and a Tick follows.
        Advance {
            ms: u64,
            ack_first: bool,
            hb_first: bool,
        },
        /// Client `s` acks one of the revokes it received (a random one: delays vary).
        Ack {
            s: usize,
            pick: usize,
        },
        Close {
            s: usize,
        },
        /// The client stops heartbeating and acking.
        Crash {
            s: usize,
        },
        /// A new session in the slot if its session is gone, else a repeated OpenSession.
        Open {
            s: usize,
        },
        Invalid {
            s: usize,
            empty: bool,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        let s = 0..SLOTS;
        prop_oneof![
            8 => (s.clone(), 0..2usize, any::<bool>(), 0..64u64, 1..17u64, 0..32u64, 0..32u64, any::<bool>(), any::<bool>())
                .prop_map(|(s, f, write, start, len, below, above, to_inf, exact)| Step::Acquire {
                    s, f, write, start, len, below, above, to_inf, exact
                }),
            2 => (s.clone(), 0..2usize, 0..64u64, 1..65u64, any::<bool>())
                .prop_map(|(s, f, start, len, all)| Step::Release { s, f, start, len, all }),
            2 => s.clone().prop_map(|s| Step::Heartbeat { s }),
            4 => (0..45u64, any::<bool>(), any::<bool>()).prop_map(|(ms, ack_first, hb_first)| Step::Advance { ms, ack_first, hb_first }),
            6 => (s.clone(), any::<usize>()).prop_map(|(s, pick)| Step::Ack { s, pick }),
            1 => s.clone().prop_map(|s| Step::Close { s }),
            1 => s.clone().prop_map(|s| Step::Crash { s }),
            2 => s.clone().prop_map(|s| Step::Open { s }),
            1 => (s, any::<bool>()).prop_map(|(s, empty)| Step::Invalid { s, empty }),
        ]
    }

    struct Received {
        id: RevokeId,
        f: usize,
        sent_ms: u64,
    }

    struct Client {
        id: SessionId,
        /// Open at the manager (possibly crashed).
        alive: bool,
        crashed: bool,
        last_seen: u64,
        inbox: Vec<Received>,
        cells: [Cells; 2],
        pending: BTreeMap<RequestId, (usize, Mode, ByteRange, ByteRange)>,
    }

    impl Client {
        fn new(id: SessionId, now: u64) -> Client {
            Client {
                id,
                alive: true,
                crashed: false,
                last_seen: now,
                inbox: Vec::new(),
                cells: [[None; CELLS]; 2],
                pending: BTreeMap::new(),
            }
        }

        fn active(&self) -> bool {
            self.alive && !self.crashed
        }

        fn gone(&mut self) {
            self.alive = false;
            self.inbox.clear();
            self.pending.clear();
            self.cells = [[None; CELLS]; 2];
        }
    }

    fn span(r: ByteRange) -> std::ops::Range<usize> {
        let end = if r.end == u64::MAX { CELLS } else { r.end as usize };
        assert!(r.start < 64 || (r.start == 64 && r.end == u64::MAX), "range {r} off the model's grid");
        assert!(r.end <= 64 || r.end == u64::MAX, "range {r} off the model's grid");
        r.start as usize..end
    }

    fn cells_of(tokens: &[(ByteRange, Mode)]) -> Cells {
        let mut c = [None; CELLS];
        for &(r, m) in tokens {
            for x in &mut c[span(r)] {
                *x = Some(m);
            }
        }
        c
    }

    static CASES: AtomicU64 = AtomicU64::new(0);
    static STEPS: AtomicU64 = AtomicU64::new(0);
    static GRANTS: AtomicU64 = AtomicU64::new(0);
    static REVOKES: AtomicU64 = AtomicU64::new(0);
    static EVICTIONS: AtomicU64 = AtomicU64::new(0);
    static FINAL_WAITERS: AtomicU64 = AtomicU64::new(0);

    struct World {
        m: TokenManager,
        now: u64,
        clients: Vec<Client>,
        next_sid: SessionId,
        next_req: RequestId,
    }

    impl World {
        fn new() -> World {
            let mut w = World { m: TokenManager::new(CFG), now: 0, clients: Vec::new(), next_sid: 1, next_req: 1 };
            for _ in 0..SLOTS {
                let id = w.next_sid;
                w.next_sid += 1;
                assert!(w.m.handle(Input::OpenSession { session: id, now_ms: 0 }).is_empty());
                w.clients.push(Client::new(id, 0));
            }
            w
        }

        fn slot_of(&self, session: SessionId) -> usize {
            self.clients
                .iter()
                .position(|c| c.id == session && c.alive)
                .unwrap_or_else(|| panic!("output for session {session}, which is not open in the model"))
        }

        /// Sends an input from the client in `slot` (or a Tick with `None`); checks refusals.
        fn send(&mut self, slot: Option<usize>, input: Input, invalid: bool) {
            let alive_before = slot.is_some_and(|s| self.clients[s].alive);
            let out = self.m.handle(input.clone());
            // A clean close: the session's tokens go before anything is granted to others.
            let closing = slot.is_some_and(|s| {
                let id = self.clients[s].id;
                alive_before
                    && matches!(input, Input::CloseSession { .. })
                    && !out.iter().any(|o| matches!(o, Output::Evict { session, .. } if *session == id))
            });
            if closing {
                self.clients[slot.unwrap()].gone();
            }
            let refusals = self.absorb(&out);
            if let Some(s) = slot {
                let c = &mut self.clients[s];
                let expect = if closing {
                    None
                } else if !c.alive {
                    Some(ErrorCode::Evicted)
                } else if invalid {
                    Some(ErrorCode::Invalid)
                } else {
                    None
                };
                let got: Vec<_> = refusals.iter().map(|(sid, code)| (*sid, *code)).collect();
                assert_eq!(got, expect.map(|e| (c.id, e)).into_iter().collect::<Vec<_>>(), "refusals for {input:?}");
                if c.alive {
                    c.last_seen = self.now;
                }
            } else {
                assert!(refusals.is_empty());
            }
            self.check();
        }

        /// Applies outputs to the model, checking each; returns the refusals.
        fn absorb(&mut self, out: &[Output]) -> Vec<(SessionId, ErrorCode)> {
            let mut refusals = Vec::new();
            for o in out {
                match o {
                    Output::Grant { session, request, file, mode, range } => {
                        GRANTS.fetch_add(1, Relaxed);
                        let s = self.slot_of(*session);
                        let (f, m, req, des) =
                            self.clients[s].pending.remove(request).expect("grant of a request not pending");
                        assert_eq!((FILES[f], m), (*file, *mode));
                        assert!(range.contains(&req) && des.contains(range), "grant {range} for {req} in {des}");
                        // Against what the manager and the clients believe the others hold.
                        for (o, c) in self.clients.iter().enumerate() {
                            if o != s && c.alive {
                                let theirs = cells_of(&self.m.tokens(c.id, *file));
                                for i in span(*range) {
                                    for held in [c.cells[f][i], theirs[i]].into_iter().flatten() {
                                        let id = c.id;
                                        assert!(
                                            !held.conflicts_with(*mode),
                                            "grant {range} {mode:?} vs {held:?} of {id}"
                                        );
                                    }
                                }
                            }
                        }
                        for x in &mut self.clients[s].cells[f][span(*range)] {
                            if *mode == Mode::Write || *x != Some(Mode::Write) {
                                *x = Some(*mode);
                            }
                        }
                    }
                    Output::Revoke { session, revoke, file, range, wanted } => {
                        REVOKES.fetch_add(1, Relaxed);
                        let s = self.slot_of(*session);
                        let f = FILES.iter().position(|x| x == file).unwrap();
                        // The client writes back or drops at once (the ack may come later),
                        // before it sees any later grant.
                        for x in &mut self.clients[s].cells[f][span(*range)] {
                            match wanted {
                                Mode::Write => *x = None,
                                Mode::Read => {
                                    if *x == Some(Mode::Write) {
                                        *x = Some(Mode::Read)
                                    }
                                }
                            }
                        }
                        let now = self.now;
                        self.clients[s].inbox.push(Received { id: *revoke, f, sent_ms: now });
                    }
                    Output::Evict { session, .. } => {
                        EVICTIONS.fetch_add(1, Relaxed);
                        let s = self.slot_of(*session);
                        let c = &mut self.clients[s];
                        let lease = self.now >= c.last_seen + CFG.lease_ms;
                        let revoke = c.inbox.iter().any(|r| self.now >= r.sent_ms + CFG.revoke_timeout_ms);
                        assert!(lease || revoke, "session {session} evicted at {} without cause", self.now);
                        c.gone();
                    }
                    Output::Refuse { session, error, .. } => refusals.push((*session, error.code)),
                }
            }
            refusals
        }

        fn check(&self) {
            STEPS.fetch_add(1, Relaxed);
            self.m.check_invariants().unwrap();
            let mut waiters = 0;
            for (i, c) in self.clients.iter().enumerate() {
                if !c.alive {
                    continue;
                }
                waiters += c.pending.len();
                for (f, file) in FILES.iter().enumerate() {
                    // The manager never believes a client holds less than the client does;
                    // it believes more only while a revoke is unacked.
                    let mgr = cells_of(&self.m.tokens(c.id, *file));
                    if c.inbox.iter().any(|r| r.f == f) {
                        for (x, (mine, theirs)) in c.cells[f].iter().zip(&mgr).enumerate() {
                            assert!(mine <= theirs, "session {} holds {:?} at {x} in {file}", c.id, c.cells[f]);
                        }
                    } else {
                        assert_eq!(mgr, c.cells[f], "tokens of {} in {file}", c.id);
                    }
                    for d in &self.clients[i + 1..] {
                        if d.alive {
                            for x in 0..CELLS {
                                if let (Some(a), Some(b)) = (c.cells[f][x], d.cells[f][x]) {
                                    assert!(
                                        !a.conflicts_with(b),
                                        "sessions {} and {} conflict at cell {x}",
                                        c.id,
                                        d.id
                                    );
                                }
                            }
                        }
                    }
                }
            }
            assert_eq!(waiters, self.m.stats().waiters, "queued requests");
        }

        /// Client `s` processes revoke `i` of its inbox and acks it.
        fn ack(&mut self, s: usize, i: usize) {
            let r = self.clients[s].inbox.remove(i);
            let session = self.clients[s].id;
            self.send(Some(s), Input::RevokeAck { session, revoke: r.id, now_ms: self.now }, false);
        }

        fn ack_all(&mut self, s: usize) {
            while self.clients[s].active() && !self.clients[s].inbox.is_empty() {
                self.ack(s, 0);
            }
        }

        fn step(&mut self, step: Step) {
            let now_ms = self.now;
            match step {
                Step::Acquire { s, f, write, start, len, below, above, to_inf, exact } => {
                    if self.clients[s].crashed {
                        return;
                    }
                    let required = ByteRange::new(start, (start + len).min(64));
                    let desired = if exact {
                        required
                    } else {
                        let end = if to_inf { u64::MAX } else { (required.end + above).min(64) };
                        ByteRange::new(start.saturating_sub(below), end)
                    };
                    let mode = if write { Mode::Write } else { Mode::Read };
                    let request = self.next_req;
                    self.next_req += 1;
                    let session = self.clients[s].id;
                    if self.clients[s].alive {
                        self.clients[s].pending.insert(request, (f, mode, required, desired));
                    }
                    let input = Input::Acquire { session, request, file: FILES[f], mode, required, desired, now_ms };
                    self.send(Some(s), input, false);
                    // Refused (evicted on the way): not pending.
                    if !self.clients[s].alive {
                        self.clients[s].pending.clear();
                    }
                }
                Step::Release { s, f, start, len, all } => {
                    if self.clients[s].crashed {
                        return;
                    }
                    let range = if all { ByteRange::ALL } else { ByteRange::new(start, (start + len).min(64)) };
                    let session = self.clients[s].id;
                    if self.clients[s].alive && self.now < self.clients[s].last_seen + CFG.lease_ms {
                        for x in &mut self.clients[s].cells[f][span(range)] {
                            *x = None;
                        }
                    }
                    self.send(Some(s), Input::Release { session, file: FILES[f], range, now_ms }, false);
                }
                Step::Heartbeat { s } => {
                    if !self.clients[s].crashed {
                        let session = self.clients[s].id;
                        self.send(Some(s), Input::Heartbeat { session, now_ms }, false);
                    }
                }
                Step::Advance { ms, ack_first, hb_first } => {
                    for s in 0..SLOTS {
                        if ack_first {
                            self.ack_all(s);
                        }
                        if hb_first && self.clients[s].active() {
                            let session = self.clients[s].id;
                            self.send(Some(s), Input::Heartbeat { session, now_ms }, false);
                        }
                    }
                    self.now += ms;
                    self.send(None, Input::Tick { now_ms: self.now }, false);
                }
                Step::Ack { s, pick } => {
                    let n = self.clients[s].inbox.len();
                    if self.clients[s].active() && n > 0 {
                        self.ack(s, pick % n);
                    }
                }
                Step::Close { s } => {
                    if !self.clients[s].crashed {
                        let session = self.clients[s].id;
                        self.send(Some(s), Input::CloseSession { session, now_ms }, false);
                    }
                }
                Step::Crash { s } => {
                    if self.clients[s].alive {
                        self.clients[s].crashed = true;
                    }
                }
                Step::Open { s } => {
                    if !self.clients[s].alive {
                        let id = self.next_sid;
                        self.next_sid += 1;
                        self.clients[s] = Client::new(id, self.now);
                    }
                    if !self.clients[s].crashed {
                        let session = self.clients[s].id;
                        self.send(Some(s), Input::OpenSession { session, now_ms }, false);
                    }
                }
                Step::Invalid { s, empty } => {
                    if self.clients[s].crashed {
                        return;
                    }
                    let (required, desired) = if empty {
                        (ByteRange::new(5, 5), ByteRange::ALL)
                    } else {
                        (ByteRange::new(0, 10), ByteRange::new(1, 10))
                    };
                    let request = self.next_req;
                    self.next_req += 1;
                    let session = self.clients[s].id;
                    let input = Input::Acquire {
                        session,
                        request,
                        file: FILES[0],
                        mode: Mode::Write,
                        required,
                        desired,
                        now_ms,
                    };
                    self.send(Some(s), input, true);
                }
            }
        }

        /// Live clients ack everything and heartbeat while time runs on; crashed ones get
        /// evicted. Then nothing may be left waiting.
        fn drain(&mut self) {
            for _ in 0..50 {
                for s in 0..SLOTS {
                    self.ack_all(s);
                    if self.clients[s].active() {
                        let session = self.clients[s].id;
                        self.send(Some(s), Input::Heartbeat { session, now_ms: self.now }, false);
                    }
                }
                let quiet =
                    self.clients.iter().all(|c| !c.alive || (!c.crashed && c.pending.is_empty() && c.inbox.is_empty()));
                if quiet {
                    break;
                }
                self.now += 40;
                self.send(None, Input::Tick { now_ms: self.now }, false);
            }
            for c in &self.clients {
                assert!(!c.alive || c.pending.is_empty(), "session {} still waits: {:?}", c.id, c.pending);
                assert!(!c.alive || !c.crashed, "crashed session {} never evicted", c.id);
            }
            assert_eq!(self.m.stats().waiters, 0);
            assert_eq!(self.m.stats().outstanding_revokes, 0);
        }
    }

    #[test]
    fn random_sessions_against_a_client_model() {
        let cases = std::env::var("PFS_TOKEN_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let strategy = proptest::collection::vec(step(), 1..60);
        runner
            .run(&strategy, |steps| {
                CASES.fetch_add(1, Relaxed);
                let mut w = World::new();
                for s in steps {
                    w.step(s);
                }
                w.drain();
                FINAL_WAITERS.fetch_add(0, Relaxed);
                Ok(())
            })
            .unwrap();
        println!(
            "token proptest: {} cases, {} checked steps, {} grants, {} revokes, {} evictions",
            CASES.load(Relaxed),
            STEPS.load(Relaxed),
            GRANTS.load(Relaxed),
            REVOKES.load(Relaxed),
            EVICTIONS.load(Relaxed)
        );
    }
}

/// Exhaustive model check (stateright) of small configurations: one file, ranges within
/// [0, 4) (desired may reach ∞), each session acquires up to twice (one request at a time) and
/// may release, acks arrive in any order, and one session may crash.
#[cfg(test)]
mod model_check {
    use super::*;
    use stateright::{Checker, Model, Property};

    const F: FileId = FileId(1);

    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct St {
        m: TokenManager,
        now: u64,
        /// Per session slot: revokes received and not acked.
        inbox: Vec<BTreeSet<RevokeId>>,
        crashed: Option<usize>,
        acquires_left: Vec<u8>,
        /// Per slot: the outstanding request (id, required, desired).
        pending: Vec<Option<(RequestId, ByteRange, ByteRange)>>,
        next_req: RequestId,
        /// Set if an output broke the client's expectations.
        bad: bool,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    enum Act {
        Acquire(usize, Mode, ByteRange, ByteRange),
        Ack(usize, RevokeId),
        Release(usize),
        Crash(usize),
        /// Live clients heartbeat while a lease passes; the crashed one is evicted.
        Timeout,
    }

    struct TokModel {
        sessions: usize,
        crash: bool,
        requireds: Vec<ByteRange>,
        /// Offer `desired` = ∞ as well as `desired` = `required`.
        expand: bool,
        /// Acquires per session.
        acquires: u8,
        /// Offer whole-file releases.
        release: bool,
        cfg: TokenConfig,
    }

    fn sid(slot: usize) -> SessionId {
        slot as SessionId + 1
    }

    fn alive(st: &St, slot: usize) -> bool {
        st.m.sessions.contains_key(&sid(slot))
    }

    /// No message in flight that a live client would act on, and no eviction due.
    fn quiescent(st: &St) -> bool {
        let crashed_alive = st.crashed.is_some_and(|c| alive(st, c));
        !crashed_alive && (0..st.inbox.len()).all(|s| !alive(st, s) || st.inbox[s].is_empty())
    }

    impl TokModel {
        fn apply(&self, st: &mut St, input: Input) {
            for o in st.m.handle(input) {
                match o {
                    Output::Grant { session, request, range, .. } => {
                        let s = (session - 1) as usize;
                        match st.pending[s].take() {
                            Some((q, req, des)) if q == request && range.contains(&req) && des.contains(&range) => {}
                            _ => st.bad = true,
                        }
                    }
                    Output::Revoke { session, revoke, .. } => {
                        st.inbox[(session - 1) as usize].insert(revoke);
                    }
                    Output::Evict { session, .. } => {
                        let s = (session - 1) as usize;
                        st.inbox[s].clear();
                        st.pending[s] = None;
                        if st.crashed != Some(s) {
                            st.bad = true;
                        }
                    }
                    Output::Refuse { .. } => st.bad = true,
                }
            }
        }
    }

    impl Model for TokModel {
        type State = St;
        type Action = Act;

        fn init_states(&self) -> Vec<St> {
            let mut m = TokenManager::new(self.cfg);
            for s in 0..self.sessions {
                m.handle(Input::OpenSession { session: sid(s), now_ms: 0 });
            }
            vec![St {
                m,
                now: 0,
                inbox: vec![BTreeSet::new(); self.sessions],
                crashed: None,
                acquires_left: vec![self.acquires; self.sessions],
                pending: vec![None; self.sessions],
                next_req: 1,
                bad: false,
            }]
        }

        fn actions(&self, st: &St, actions: &mut Vec<Act>) {
            for s in 0..self.sessions {
                if !alive(st, s) || st.crashed == Some(s) {
                    continue;
                }
                if st.pending[s].is_none() && st.acquires_left[s] > 0 {
                    for mode in [Mode::Read, Mode::Write] {
                        for &req in &self.requireds {
                            actions.push(Act::Acquire(s, mode, req, req));
                            if self.expand {
                                actions.push(Act::Acquire(s, mode, req, ByteRange::new(req.start, u64::MAX)));
                            }
                        }
                    }
                }
                for &id in &st.inbox[s] {
                    actions.push(Act::Ack(s, id));
                }
                if self.release && st.pending[s].is_none() && !st.m.tokens(sid(s), F).is_empty() {
                    actions.push(Act::Release(s));
                }
                if self.crash && st.crashed.is_none() {
                    actions.push(Act::Crash(s));
                }
            }
            if let Some(c) = st.crashed {
                let acks_due = (0..self.sessions).any(|s| s != c && alive(st, s) && !st.inbox[s].is_empty());
                if alive(st, c) && !acks_due {
                    actions.push(Act::Timeout);
                }
            }
        }

        fn next_state(&self, st: &St, act: Act) -> Option<St> {
            let mut n = st.clone();
            let now_ms = n.now;
            match act {
                Act::Acquire(s, mode, required, desired) => {
                    let request = n.next_req;
                    n.next_req += 1;
                    n.acquires_left[s] -= 1;
                    n.pending[s] = Some((request, required, desired));
                    let input = Input::Acquire { session: sid(s), request, file: F, mode, required, desired, now_ms };
                    self.apply(&mut n, input);
                }
                Act::Ack(s, revoke) => {
                    n.inbox[s].remove(&revoke);
                    self.apply(&mut n, Input::RevokeAck { session: sid(s), revoke, now_ms });
                }
                Act::Release(s) => {
                    self.apply(&mut n, Input::Release { session: sid(s), file: F, range: ByteRange::ALL, now_ms })
                }
                Act::Crash(s) => n.crashed = Some(s),
                Act::Timeout => {
                    for t in [n.now + self.cfg.lease_ms / 2, n.now + self.cfg.lease_ms] {
                        n.now = t;
                        for s in 0..self.sessions {
                            if Some(s) != n.crashed && alive(&n, s) {
                                self.apply(&mut n, Input::Heartbeat { session: sid(s), now_ms: t });
                            }
                        }
                    }
                }
            }
            Some(n)
        }

        fn properties(&self) -> Vec<Property<Self>> {
            vec![
                Property::always("never two conflicting tokens (invariants hold)", |_, st: &St| {
                    st.m.check_invariants().is_ok()
                }),
                Property::always("outputs as the clients expect", |_, st: &St| !st.bad),
                Property::always("quiescent: every live request granted", |_, st: &St| {
                    !quiescent(st)
                        || (st.m.stats().waiters == 0
                            && (0..st.pending.len()).all(|s| !alive(st, s) || st.pending[s].is_none()))
                }),
                Property::sometimes("a revoke was acked and its request granted", |_, st: &St| {
                    st.m.stats().revokes > 0 && st.m.stats().outstanding_revokes == 0 && st.m.stats().waiters == 0
                }),
                Property::sometimes("a crashed holder was evicted", |_, st: &St| {
                    st.m.stats().evictions > 0 && st.m.stats().tokens > 0
                }),
            ]
        }
    }

    fn check(model: TokModel, name: &str) {
        let crash = model.crash;
        // A guard against a configuration too large for a test run; the checks below are
        // exhaustive only if it was not reached.
        const CAP: usize = 3_000_000;
        let checker = model.checker().threads(2).target_state_count(CAP).spawn_bfs().join();
        assert!(checker.unique_state_count() < CAP, "state space not exhausted");
        println!(
            "stateright {name}: {} unique states ({} visited), max depth {}",
            checker.unique_state_count(),
            checker.state_count(),
            checker.max_depth()
        );
        checker.assert_no_discovery("never two conflicting tokens (invariants hold)");
        checker.assert_no_discovery("outputs as the clients expect");
        checker.assert_no_discovery("quiescent: every live request granted");
        checker.assert_any_discovery("a revoke was acked and its request granted");
        if crash {
            checker.assert_any_discovery("a crashed holder was evicted");
        }
    }

    const R3: [ByteRange; 3] = [ByteRange::new(0, 2), ByteRange::new(1, 3), ByteRange::new(2, 4)];

    #[test]
    fn two_sessions_with_expansion_and_crash() {
        let cfg = TokenConfig { lease_ms: 100, revoke_timeout_ms: 100, contention_window_ms: 0 };
        let model = TokModel {
            sessions: 2,
            crash: true,
            requireds: R3.to_vec(),
            expand: true,
            acquires: 2,
            release: true,
            cfg,
        };
        check(model, "2 sessions, expansion on, crash");
    }

    #[test]
    fn three_sessions_contended_with_crash() {
        let cfg = TokenConfig { lease_ms: 100, revoke_timeout_ms: 100, contention_window_ms: 10 };
        // Two overlapping required ranges, no expansion, no release: with all of R3 and
        // expansion, 3 sessions × 2 acquires exceed 24 GB of checker memory.
        let requireds = R3[..2].to_vec();
        let model = TokModel { sessions: 3, crash: true, requireds, expand: false, acquires: 2, release: false, cfg };
        check(model, "3 sessions, 2 acquires each, contention window, crash");
    }

    #[test]
    fn three_sessions_one_acquire_each_with_expansion_release_and_crash() {
        let cfg = TokenConfig { lease_ms: 100, revoke_timeout_ms: 100, contention_window_ms: 0 };
        let model = TokModel {
            sessions: 3,
            crash: true,
            requireds: R3.to_vec(),
            expand: true,
            acquires: 1,
            release: true,
            cfg,
        };
        check(model, "3 sessions, 1 acquire each, expansion, release, crash");
    }
}
