//! [`FileState`]: the protocol state of one open file in one client, as a sans-IO state
//! machine (DESIGN.md §7, in the way pfs-meta's token manager is one and openraft's `Engine`
//! emits `Command`s).
//!
//! It holds what the client believes about the file: the tokens held and being acquired, the
//! ranges under a revoke's write-back, the capabilities pfs-meta issued, the size and whether
//! pfs-meta knows it, the storage servers written since the last fsync (with the boot id of the
//! process that took the writes), and a write-back error waiting for the next fsync. The
//! executor ([`crate::file`]) feeds it what happens (a write wants a token, a grant or revoke
//! arrives, a chunk write was answered, an fsync answered or failed) and carries out what it
//! answers (send an `Acquire`, wait for a release, ask for a capability, fsync these servers,
//! check whether a failed replica left its chains, record the size). No clocks (time is passed
//! in, ms), no sockets, no locks: the executor keeps it behind one mutex and never holds that
//! across an await.
//!
//! # What it guarantees (checked by the model in `model.rs`)
//! * **No capability without a token.** A write capability is handed out (kept or asked for)
//!   only for bytes the session holds a Write token over, or is writing back under a revoke
//!   (pfs-meta counts a revoked range as held until the revoke is acknowledged, which happens
//!   after the write-back). Anything else is [`CapabilityPlan::NotHeld`]: an honest error,
//!   never a write under a capability the session no longer deserves.
//! * **Never more than it holds.** Grants and revokes cross on the wire; a grant that arrives
//!   after revokes applied while it was in flight has them applied again (we may believe we
//!   hold less than pfs-meta does, costing a round trip, never more). An acquire overlapping a
//!   release the session has not had answered waits for it ([`crate::releases`]).
//! * **fsync tells the truth.** A sync round ([`SyncRound`]) asks every server written since
//!   the last one; a server that failed is forgiven only once it left every chain of the file
//!   (its replicas resync), and every server that failed and was not forgiven is asked again by
//!   the next round if it could not be reached (a disk error or a restart is reported once, as
//!   Linux reports a failed write-back once). So Ok means every write before the round is
//!   durable on every replica in its write path, or that replica has left the chains.

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

use crate::error::Error;
use pfs_common::capability::{Capability, MAX_CAPABILITIES, RENEW_MARGIN_MS};
use pfs_common::ids::ServerId;
use pfs_common::range_map::RangeMap;
use pfs_common::token::{ByteRange, Mode, Stride};
use pfs_common::ErrorCode;
use std::collections::BTreeMap;

/// Capabilities kept per open file (the newest; older ones are asked for again if needed).
pub(crate) const MAX_KEPT_CAPABILITIES: usize = 64;

/// The protocol state of one open file (see the module documentation).
#[derive(Debug)]
pub(crate) struct FileState {
    /// Storage servers check capabilities (the cluster authenticates).
    authenticated: bool,
    held: RangeMap,
    /// Revokes applied so far (a sequence number).
    revoke_seq: u64,
    /// Acquires in flight.
    acquiring: u32,
    /// Revokes applied while acquires were in flight: (seq, range, wanted).
    recent: Vec<(u64, ByteRange, Mode)>,
    /// An `Acquire` was sent: only then can pfs-meta hold tokens of ours that the last close
    /// must give back.
    asked_tokens: bool,
    /// Ranges whose revoke is being carried out (their dirty bytes written back): pfs-meta
    /// still counts them as ours until the revoke is acknowledged, by id.
    revoking: Vec<(u64, ByteRange)>,
    next_revoke: u64,
    capabilities: Vec<Capability>,
    /// Largest of: size from pfs-meta (open, grants), end of our writes, our truncates (bytes).
    size: u64,
    /// Our writes grew the size and pfs-meta does not know yet.
    size_dirty: bool,
    /// We wrote since pfs-meta last set the file's mtime for us.
    mtime_dirty: bool,
    /// Storage servers (every replica) written since the last sync round, with the boot id of
    /// the server process that took the latest writes.
    unsynced: BTreeMap<ServerId, Unsynced>,
    /// Chunk writes answered so far (numbers [`Unsynced::last_write`]).
    writes: u64,
    /// Bumped by every write, so a read does not cache bytes fetched across one of ours.
    write_seq: u64,
    /// A write-back that failed outside an fsync (a revoke's, an eviction from the cache);
    /// reported by the next fsync or close.
    writeback_error: Option<Error>,
}

/// What a read or write needs before it can go on ([`FileState::need`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// The session holds the token: go on.
    Held,
    /// A release of ours overlapping `span` is not answered yet: wait for it, then ask again.
    AwaitRelease { span: ByteRange },
    /// Send the `Acquire`; hand its answer to [`FileState::granted`] (or its failure to
    /// [`FileState::acquire_failed`]) with this ticket, then ask again.
    Acquire(AcquireTicket),
}

/// An `Acquire` in flight.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an acquire in flight must be answered with granted or acquire_failed"]
pub(crate) struct AcquireTicket {
    start_seq: u64,
}

/// pfs-meta's answer to an `Acquire`.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub mode: Mode,
    pub range: ByteRange,
    /// The records ahead granted with it (whole).
    pub records: Vec<ByteRange>,
    /// The file size at the grant, bytes.
    pub size: u64,
    pub capability: Option<Capability>,
}

/// A revoke being carried out ([`FileState::revoke`]).
#[derive(Debug)]
#[must_use = "a revoke must be finished with revoke_done once its write-back is over"]
pub(crate) struct RevokeTicket {
    id: u64,
}

/// Which capabilities a storage request over some ranges carries ([`FileState::capabilities`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CapabilityPlan {
    /// The cluster does not authenticate: none.
    NotNeeded,
    /// Use `have` (kept from grants, each once), and ask pfs-meta for one over each range of
    /// `ask` ([`FileState::keep_capability`] the answers) and add them.
    Use { have: Vec<Capability>, ask: Vec<ByteRange> },
    /// A write over `range`, which the session holds no Write token over and is not writing
    /// back under a revoke: the request must not be sent.
    NotHeld { range: ByteRange },
}

/// What a storage server owes us: an fdatasync of our writes to the process with boot id
/// `boot`; `restarted`: some went to an earlier process, which is gone with whatever of them
/// it had not synced (reported once, by the next round).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Unsynced {
    boot: u64,
    restarted: bool,
    /// The [`FileState::writes`] count at the server's latest write: a sync round settles the
    /// entry only if no write came after the round began (the round does not hold the I/O
    /// lock while it waits for answers).
    last_write: u64,
}

/// The size to record on pfs-meta ([`FileState::size_report`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SizeReport {
    /// The size to raise pfs-meta's to, bytes; 0 (raises nothing) when only the mtime moves:
    /// an overwrite must not re-grow a file another client has truncated since our last grant.
    pub size: u64,
    grew: bool,
    wrote: bool,
}

/// One fsync round over the servers written since the last one (see the module doc).
#[derive(Debug)]
#[must_use = "a sync round must be ended with FileState::end_sync"]
pub(crate) struct SyncRound {
    replicated: bool,
    /// Servers to fsync.
    servers: BTreeMap<ServerId, Unsynced>,
    /// Answers so far: None = ok.
    answers: BTreeMap<ServerId, Option<Error>>,
    /// Failed servers that left every chain of the file (forgiven).
    left: BTreeMap<ServerId, bool>,
}

impl FileState {
    /// The state of a file just opened at `size` bytes; `authenticated`: storage servers check
    /// capabilities.
    pub(crate) fn new(size: u64, authenticated: bool) -> FileState {
        FileState {
            authenticated,
            held: RangeMap::new(),
            revoke_seq: 0,
            acquiring: 0,
            recent: Vec::new(),
            asked_tokens: false,
            revoking: Vec::new(),
            next_revoke: 0,
            capabilities: Vec::new(),
            size,
            size_dirty: false,
            mtime_dirty: false,
            unsynced: BTreeMap::new(),
            writes: 0,
            write_seq: 0,
            writeback_error: None,
        }
    }

    // --- tokens -----------------------------------------------------------------------

    /// Whether the session holds `mode` over `range` (as far as we know: never more than it
    /// does).
    pub(crate) fn holds(&self, range: ByteRange, mode: Mode) -> bool {
        self.held.covers(range, mode)
    }

    /// The tokens we hold, in byte order.
    pub(crate) fn tokens(&self) -> Vec<(ByteRange, Mode)> {
        self.held.to_vec()
    }

    /// What to reclaim from a new pfs-meta leader: the tokens held, and the ranges being
    /// written back under a revoke as Write (pfs-meta counted them as ours until the
    /// acknowledgement, which the old leader may never have had), in byte order.
    pub(crate) fn reclaim_tokens(&self) -> Vec<(ByteRange, Mode)> {
        let mut all = self.held.clone();
        for (_, range) in &self.revoking {
            all.grant(*range, Mode::Write);
        }
        all.to_vec()
    }

    /// The largest range held in `mode` around byte `pos`.
    pub(crate) fn held_span(&self, pos: u64, mode: Mode) -> Option<ByteRange> {
        self.held.span(pos, mode)
    }

    /// Whether we hold anything overlapping `range`.
    pub(crate) fn holds_any(&self, range: ByteRange) -> bool {
        self.held.overlapping(range).next().is_some()
    }

    /// An `Acquire` was ever sent for this file.
    pub(crate) fn asked_tokens(&self) -> bool {
        self.asked_tokens
    }

    /// A read or write needs `mode` over `required` and would like `desired` (⊇ `required`)
    /// and the records of `ahead`. `releasing(span)` says whether a release of ours that
    /// overlaps `span` is unanswered (see [`crate::releases`]).
    pub(crate) fn need(
        &mut self,
        mode: Mode,
        required: ByteRange,
        desired: ByteRange,
        ahead: Option<Stride>,
        releasing: impl FnOnce(ByteRange) -> bool,
    ) -> Need {
        if self.held.covers(required, mode) {
            return Need::Held;
        }
        // Everything the grant may cover: the desired range and the records ahead.
        let span = ahead.iter().flat_map(|a| a.records(u64::MAX)).fold(desired, |h, r| h.hull(&r));
        if releasing(span) {
            return Need::AwaitRelease { span };
        }
        // Counted as acquiring in the same step: a release listed after this applies its
        // revoke while we are acquiring, so it is applied to our grant again (`recent`).
        self.acquiring += 1;
        self.asked_tokens = true;
        Need::Acquire(AcquireTicket { start_seq: self.revoke_seq })
    }

    /// The `Acquire` of `ticket` was granted: the tokens are ours, with the revokes applied
    /// while it was in flight taken off again, and the size at the grant is ours too.
    pub(crate) fn granted(&mut self, ticket: AcquireTicket, g: Grant, now_ms: u64) {
        self.acquiring -= 1;
        // The revokes applied while this acquire was in flight may have been about these
        // granted bytes (a revoke notification overtaking the answer): they are taken off the
        // grant again, and only off the grant. Bytes held already had them applied when they
        // came, and may have been granted anew since by a later acquire.
        let mut granted = RangeMap::new();
        for r in std::iter::once(&g.range).chain(&g.records) {
            granted.grant(*r, g.mode);
        }
        for (_, range, wanted) in self.recent.iter().filter(|(s, _, _)| *s > ticket.start_seq) {
            apply_revoke(&mut granted, *range, *wanted);
        }
        for (r, mode) in granted.iter() {
            self.held.grant(r, mode);
        }
        if let Some(cap) = g.capability {
            self.keep_capability(cap, now_ms);
        }
        // The size at the grant is pfs-meta's after every conflicting holder recorded its
        // own: it replaces ours, shrinks included (a truncate by another client), unless our
        // own writes grew the file further and pfs-meta does not know yet. A shrink needs
        // Write from the new end on, which revokes our Read there, so a read that reaches past
        // the new end always comes through a grant first (reads ask for a token over their
        // whole buffer before they clamp to the size).
        if self.size_dirty {
            self.size = self.size.max(g.size);
        } else {
            self.size = g.size;
        }
        self.forget_recent();
        debug_assert_eq!(self.held.check(), Ok(()), "held tokens");
    }

    /// The `Acquire` of `ticket` failed (nothing was granted).
    pub(crate) fn acquire_failed(&mut self, ticket: AcquireTicket) {
        let AcquireTicket { .. } = ticket;
        self.acquiring -= 1;
        self.forget_recent();
    }

    fn forget_recent(&mut self) {
        if self.acquiring == 0 {
            self.recent.clear();
        }
    }

    /// pfs-meta revokes `range` (`wanted` = Write: give it up; Read: keep it for reading), or
    /// we give it back ourselves: we stop believing we hold it now, and the executor writes
    /// back our dirty bytes in it (which may still use capabilities: pfs-meta counts the range
    /// as ours until the revoke is acknowledged), then calls [`FileState::revoke_done`].
    pub(crate) fn revoke(&mut self, range: ByteRange, wanted: Mode) -> RevokeTicket {
        self.revoke_seq += 1;
        if self.acquiring > 0 {
            self.recent.push((self.revoke_seq, range, wanted));
        }
        apply_revoke(&mut self.held, range, wanted);
        self.next_revoke += 1;
        let id = self.next_revoke;
        self.revoking.push((id, range));
        RevokeTicket { id }
    }

    /// The write-back of a revoke is over (the revoke is acknowledged next).
    pub(crate) fn revoke_done(&mut self, ticket: RevokeTicket) {
        self.revoking.retain(|(id, _)| *id != ticket.id);
    }

    // --- capabilities -----------------------------------------------------------------

    /// Keeps a capability, dropping those that expired or that it covers.
    pub(crate) fn keep_capability(&mut self, cap: Capability, now_ms: u64) {
        self.capabilities.retain(|c| {
            let subsumed = c.range.start >= cap.range.start && c.range.end <= cap.range.end && c.mode <= cap.mode;
            c.expires_ms > now_ms && !subsumed
        });
        if self.capabilities.len() >= MAX_KEPT_CAPABILITIES {
            self.capabilities.remove(0);
        }
        self.capabilities.push(cap);
    }

    /// The capabilities a storage request touching `ranges` in `mode` carries, at `now_ms`:
    /// kept ones that cover a range with [`RENEW_MARGIN_MS`] to spare, otherwise one asked for
    /// over that range. A write's ranges must each be held in Write or under a revoke's
    /// write-back (otherwise [`CapabilityPlan::NotHeld`]); a read may touch any bytes of a
    /// file we have open (a Read capability covers the whole file). May be more than one
    /// request may carry ([`MAX_CAPABILITIES`]); the executor splits then.
    pub(crate) fn capabilities(&self, ranges: &[ByteRange], mode: Mode, now_ms: u64) -> CapabilityPlan {
        if mode == Mode::Write {
            if let Some(&range) = ranges.iter().find(|r| !self.may_write(**r)) {
                return CapabilityPlan::NotHeld { range };
            }
        }
        if !self.authenticated {
            return CapabilityPlan::NotNeeded;
        }
        let fresh_after = now_ms + RENEW_MARGIN_MS;
        let mut usable: Vec<&Capability> =
            self.capabilities.iter().filter(|c| c.expires_ms > fresh_after && c.mode >= mode).collect();
        usable.sort_by_key(|c| c.range.start);
        let (mut have, mut ask): (Vec<Capability>, Vec<ByteRange>) = (Vec::new(), Vec::new());
        for &range in ranges {
            let (mut covered, mut chosen) = (range.start, Vec::new());
            for c in &usable {
                if chosen.len() == MAX_CAPABILITIES || covered >= range.end {
                    break;
                }
                if c.range.start <= covered && c.range.end > covered {
                    covered = c.range.end;
                    chosen.push(**c);
                }
            }
            if covered >= range.end {
                for c in chosen {
                    if !have.contains(&c) {
                        have.push(c);
                    }
                }
            } else {
                ask.push(range);
            }
        }
        CapabilityPlan::Use { have, ask }
    }

    /// Whether we may write (back) `range`: held in Write, or under a revoke's write-back.
    fn may_write(&self, range: ByteRange) -> bool {
        if self.held.covers(range, Mode::Write) {
            return true;
        }
        // The parts not held must be within revoked ranges being written back.
        let mut pos = range.start;
        while pos < range.end {
            if let Some(span) = self.held.span(pos, Mode::Write) {
                pos = span.end;
                continue;
            }
            match self.revoking.iter().map(|(_, r)| *r).find(|r| r.start <= pos && r.end > pos) {
                Some(r) => pos = r.end,
                None => return false,
            }
        }
        true
    }

    // --- writes and the size ----------------------------------------------------------

    /// Size in bytes as we know it.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Raises the size we read against (a fresh stat).
    pub(crate) fn raise_size(&mut self, size: u64) {
        self.size = self.size.max(size);
    }

    /// A counter bumped by every write of ours: a read compares it before and after fetching
    /// bytes, and caches them only if no write of ours came between.
    pub(crate) fn write_seq(&self) -> u64 {
        self.write_seq
    }

    /// A write of ours is about to change bytes (before its data moves).
    pub(crate) fn writing(&mut self) {
        self.write_seq += 1;
    }

    /// A write of ours ending at byte `end` completed: the size may have grown, the mtime moves.
    pub(crate) fn wrote(&mut self, end: u64) {
        if end > self.size {
            self.size = end;
            self.size_dirty = true;
        }
        self.mtime_dirty = true;
    }

    /// A chunk write was answered by these replicas (server, boot id of the process that took
    /// it): each must be fsynced by the next round. A second boot id for a server means it
    /// restarted between our unsynced writes: the earlier ones may be gone, which the next
    /// round must report, not hide, while it still makes the later ones durable.
    pub(crate) fn written(&mut self, boots: &[(ServerId, u64)]) {
        self.writes += 1;
        let last_write = self.writes;
        for &(server, boot) in boots {
            let u = self.unsynced.entry(server).or_insert(Unsynced { boot, restarted: false, last_write });
            if u.boot != boot {
                u.restarted = true;
                u.boot = boot;
            }
            u.last_write = last_write;
        }
    }

    /// What to record on pfs-meta now, if anything: the size our writes reached if it grew,
    /// and with `mtime` that we changed the data (fsync and close move the mtime; a revoke
    /// records only the size the next holder needs). Taken: hand a failure back with
    /// [`FileState::size_report_failed`].
    pub(crate) fn size_report(&mut self, mtime: bool) -> Option<SizeReport> {
        let grew = std::mem::take(&mut self.size_dirty);
        let wrote = mtime && std::mem::take(&mut self.mtime_dirty);
        (grew || wrote).then_some(SizeReport { size: if grew { self.size } else { 0 }, grew, wrote })
    }

    /// Recording `r` failed: it is to be recorded again.
    pub(crate) fn size_report_failed(&mut self, r: SizeReport) {
        self.size_dirty |= r.grew;
        self.mtime_dirty |= r.wrote;
    }

    /// We truncated the file to `size` bytes (recorded on pfs-meta with the truncate).
    pub(crate) fn truncated(&mut self, size: u64) {
        self.size = size;
        self.size_dirty = false;
        self.mtime_dirty = false;
    }

    /// A write-back outside an fsync failed: the next fsync reports it (the first one kept).
    pub(crate) fn writeback_failed(&mut self, e: Error) {
        self.writeback_error.get_or_insert(e);
    }

    // --- fsync --------------------------------------------------------------------------

    /// Nothing of ours to flush: no server holds writes not yet synced, no size or mtime is
    /// left to record and no write-back failure is left to report (dirty cached bytes are the
    /// block cache's to say).
    pub(crate) fn nothing_to_flush(&self) -> bool {
        self.unsynced.is_empty() && !self.size_dirty && !self.mtime_dirty && self.writeback_error.is_none()
    }

    /// Starts a sync round over every server written since the last one (after the executor
    /// wrote back every dirty byte). `replicated`: the file has more than one replica, so a
    /// failed server may be forgiven once it left its chains.
    ///
    /// Errors: a write-back that failed since the last round (reported once).
    ///
    /// The servers stay listed as unsynced until [`FileState::end_sync`] settles each: a round
    /// that is cut short (its future dropped) leaves them for the next one.
    pub(crate) fn begin_sync(&mut self, replicated: bool) -> Result<SyncRound, Error> {
        if let Some(e) = self.writeback_error.take() {
            return Err(e);
        }
        let servers = self.unsynced.clone();
        Ok(SyncRound { replicated, servers, answers: BTreeMap::new(), left: BTreeMap::new() })
    }

    /// Ends a sync round: Ok only if every server answered Ok or, having failed, left every
    /// chain of the file. Every failed server that was not forgiven and could not be reached
    /// (Unavailable, TimedOut), or was not answered at all, is asked again by the next round;
    /// one that failed otherwise (a disk error, a restart) is reported this once. The first
    /// error is returned.
    pub(crate) fn end_sync(&mut self, round: SyncRound) -> Result<(), Error> {
        let SyncRound { servers, mut answers, left, .. } = round;
        let mut first = None;
        for (server, owed) in servers {
            let settled = match answers.remove(&server) {
                _ if left.get(&server) == Some(&true) => true,
                Some(None) if owed.restarted => {
                    first.get_or_insert(Error::Restarted { server });
                    true
                }
                Some(None) => true,
                Some(Some(e)) => {
                    let again = matches!(e.code(), ErrorCode::Unavailable | ErrorCode::TimedOut);
                    first.get_or_insert(e);
                    !again
                }
                // Never answered: not synced.
                None => {
                    first.get_or_insert(Error::Unavailable(format!("{server}: not asked to fsync")));
                    false
                }
            };
            // Only the writes the round saw: the entry is another one if the boot moved on.
            if settled && self.unsynced.get(&server) == Some(&owed) {
                self.unsynced.remove(&server);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl SyncRound {
    /// The servers to fsync, with the boot id of the process that took our latest writes
    /// (a server that restarted since refuses the fsync as Restarted).
    pub(crate) fn servers(&self) -> Vec<(ServerId, u64)> {
        self.servers.iter().map(|(s, u)| (*s, u.boot)).collect()
    }

    /// `server` answered the fsync.
    pub(crate) fn answered(&mut self, server: ServerId, result: Result<(), Error>) {
        self.answers.insert(server, result.err());
    }

    /// The failed servers to check: has pfs-meta taken each out of every chain of the file,
    /// each of which still has a serving replica? (Only for a replicated file.)
    pub(crate) fn to_check(&self) -> Vec<ServerId> {
        if !self.replicated {
            return Vec::new();
        }
        self.answers.iter().filter(|(_, e)| e.is_some()).map(|(s, _)| *s).collect()
    }

    /// Whether `server` left every chain of the file (its writes are on the others).
    pub(crate) fn checked(&mut self, server: ServerId, left: bool) {
        self.left.insert(server, left);
    }

    /// Whether `server` was forgiven (for the log).
    pub(crate) fn forgiven(&self, server: ServerId) -> bool {
        self.left.get(&server) == Some(&true)
    }

    /// The error `server` answered, if any.
    pub(crate) fn error_of(&self, server: ServerId) -> Option<&Error> {
        self.answers.get(&server).and_then(|e| e.as_ref())
    }
}

fn apply_revoke(held: &mut RangeMap, range: ByteRange, wanted: Mode) {
    match wanted {
        Mode::Write => held.remove(range),
        Mode::Read => held.downgrade(range),
    }
}
