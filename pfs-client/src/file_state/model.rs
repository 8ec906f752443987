//! A model of one client's [`FileState`] (with the session's [`Releases`]) against a token
//! manager that serves the session's requests in any order, another client that takes bytes
//! away by revokes, and capabilities that expire; and a model of sync rounds against storage
//! servers that fail, restart and leave chains. Proptest explores the interleavings; after
//! every step the model checks:
//!
//! * **No capability without a token:** every chunk write the client sends (a write-back of
//!   its dirty bytes, under a revoke or not) covers bytes the token manager counts as the
//!   session's (held, or under a revoke not yet acknowledged), and every capability it asks
//!   pfs-meta for is granted (pfs-meta refuses one over bytes the session does not hold).
//! * **Never more than it holds:** every byte the client believes it holds in Write, the token
//!   manager counts as the session's.
//! * **Entitled writes never fail:** once the other client lets go and every message is
//!   delivered, every application write has completed, none refused.
//! * **fsync tells the truth:** a sync round that ends Ok leaves every write made before it
//!   durable on every server that took it, or that server has left the file's chains.
//!
//! Taking out the wait for unanswered releases (`need`'s `releasing`) breaks the second
//! property within a few hundred cases: the bug IOR's ior-hard found through the mount.

use super::*;
use crate::releases::{ReleaseTicket, Releases};
use pfs_common::ids::FileId;
use proptest::prelude::*;
use std::collections::BTreeSet;

const FILE: FileId = FileId(9);
/// Record length and count of the application's writes.
const RECORD: u64 = 100;
const RECORDS: u64 = 8;
/// Capability lifetime, ms.
const CAP_MS: u64 = 30_000;

fn record(k: u64) -> ByteRange {
    ByteRange::new(k * RECORD, (k + 1) * RECORD)
}

/// Client → token manager, delivered in any order (pfs-meta serves a session's requests
/// concurrently).
#[derive(Debug, Clone)]
enum ToMeta {
    Acquire { op: usize, required: ByteRange, desired: ByteRange },
    Release { ticket: u64, range: ByteRange },
    RevokeDone { revoke: u64 },
    GetCapability { wb: u64, range: ByteRange },
}

/// Token manager → client, also in any order (a revoke may overtake a grant).
#[derive(Debug, Clone)]
enum ToClient {
    Grant { op: usize, range: ByteRange, expires_ms: u64 },
    Revoke { revoke: u64, range: ByteRange },
    Released { ticket: u64 },
    Capability { wb: u64, granted: Option<Capability> },
}

/// One application write of a record.
#[derive(Debug)]
enum Op {
    Idle,
    /// Wants record `k`; `waiting`: an Acquire is in flight, or a release blocks it.
    Want {
        k: u64,
        ticket: Option<AcquireTicket>,
        releasing: bool,
    },
}

/// A chunk write waiting for a capability from pfs-meta (a write-back outside a revoke).
#[derive(Debug)]
struct PendingWriteBack {
    range: ByteRange,
}

struct Model {
    st: FileState,
    releases: Releases,
    tickets: BTreeMap<u64, ReleaseTicket>,
    next_ticket: u64,
    now_ms: u64,
    ops: Vec<Op>,
    done: BTreeSet<u64>,
    dirty: Vec<ByteRange>,
    wbs: BTreeMap<u64, PendingWriteBack>,
    next_wb: u64,
    to_meta: Vec<ToMeta>,
    to_client: Vec<ToClient>,
    // The token manager's view of our session.
    ours: RangeMap,
    /// Revokes sent to us and not acknowledged: still ours.
    revoking: BTreeMap<u64, ByteRange>,
    next_revoke: u64,
    /// Bytes the other client holds in Write.
    other: RangeMap,
    /// What the other client waits for (granted when our revokes are acknowledged).
    other_wants: Vec<(u64, ByteRange)>,
}

impl Model {
    fn new(writers: usize) -> Model {
        Model {
            st: FileState::new(0, true),
            releases: Releases::default(),
            tickets: BTreeMap::new(),
            next_ticket: 0,
            now_ms: 0,
            ops: (0..writers).map(|_| Op::Idle).collect(),
            done: BTreeSet::new(),
            dirty: Vec::new(),
            wbs: BTreeMap::new(),
            next_wb: 0,
            to_meta: Vec::new(),
            to_client: Vec::new(),
            ours: RangeMap::new(),
            revoking: BTreeMap::new(),
            next_revoke: 0,
            other: RangeMap::new(),
            other_wants: Vec::new(),
        }
    }

    /// Bytes the token manager counts as our session's.
    fn counted_ours(&self, range: ByteRange) -> bool {
        let mut pos = range.start;
        while pos < range.end {
            if let Some(s) = self.ours.span(pos, Mode::Write) {
                pos = s.end;
            } else if let Some(r) = self.revoking.values().find(|r| r.start <= pos && r.end > pos) {
                pos = r.end;
            } else {
                return false;
            }
        }
        true
    }

    fn check(&self) {
        for (r, m) in self.st.tokens() {
            assert!(m != Mode::Write || self.counted_ours(r), "the client believes it holds {r}, pfs-meta does not");
        }
    }

    /// The client sends a chunk write of `range`: the capability plan must allow it, and the
    /// bytes must be ours at pfs-meta.
    /// `awaited`: the caller waits for the write (a revoke's write-back, which must be over
    /// before the revoke is acknowledged or the release sent), so a capability it needs is
    /// asked for and answered now; otherwise the write waits for its answer among the other
    /// messages (an fsync's or an eviction's write-back, which revokes wait for).
    fn send_write(&mut self, range: ByteRange, awaited: bool) {
        match self.st.capabilities(&[range], Mode::Write, self.now_ms) {
            CapabilityPlan::Use { ask, .. } if ask.is_empty() => {}
            CapabilityPlan::Use { .. } if awaited => {
                let granted = self.counted_ours(range).then(|| cap(range, self.now_ms + CAP_MS));
                let c = granted.unwrap_or_else(|| panic!("pfs-meta refused a capability for {range} under a revoke"));
                self.st.keep_capability(c, self.now_ms);
            }
            CapabilityPlan::Use { .. } => {
                self.next_wb += 1;
                self.wbs.insert(self.next_wb, PendingWriteBack { range });
                self.to_meta.push(ToMeta::GetCapability { wb: self.next_wb, range });
                return;
            }
            other => panic!("writing back {range}: {other:?}"),
        }
        assert!(self.counted_ours(range), "a write of {range} under a capability the session no longer deserves");
    }

    /// Writes back our dirty bytes within `range` (see [`Model::send_write`] for `awaited`).
    fn write_back(&mut self, range: ByteRange, awaited: bool) {
        let (inside, rest): (Vec<_>, Vec<_>) = self.dirty.drain(..).partition(|d| d.overlaps(&range));
        self.dirty = rest;
        for d in inside {
            self.send_write(d, awaited);
        }
    }

    /// Carries out a revoke (or a give-back) of `range` as the executor does: stop believing,
    /// write back (awaited), done.
    fn revoke_locally(&mut self, range: ByteRange) {
        let t = self.st.revoke(range, Mode::Write);
        self.write_back(range, true);
        self.st.revoke_done(t);
    }

    /// Runs application write `i` as far as it goes.
    fn step_op(&mut self, i: usize) {
        let Op::Want { k, ticket: None, .. } = self.ops[i] else { return };
        let range = record(k);
        let releases = &self.releases;
        match self.st.need(Mode::Write, range, ByteRange::from(range.start), None, |s| releases.overlaps(FILE, s)) {
            Need::Held => {
                // Under the lock, holding the token: the bytes are cached dirty.
                self.dirty.push(range);
                self.done.insert(k);
                self.ops[i] = Op::Idle;
            }
            Need::AwaitRelease { .. } => self.ops[i] = Op::Want { k, ticket: None, releasing: true },
            Need::Acquire(t) => {
                self.to_meta.push(ToMeta::Acquire { op: i, required: range, desired: ByteRange::from(range.start) });
                self.ops[i] = Op::Want { k, ticket: Some(t), releasing: false };
            }
        }
    }

    /// The token manager serves `m`; false if it cannot yet (it waits).
    fn serve(&mut self, m: &ToMeta) -> bool {
        match *m {
            ToMeta::Acquire { op, required, desired } => {
                // Our own revoke over these bytes must be acknowledged first, and the other
                // client's tokens stand in the way.
                if self.revoking.values().any(|r| r.overlaps(&required)) {
                    return false;
                }
                if self.other.overlapping(required).next().is_some() {
                    return false;
                }
                // Expand to `desired` up to the first obstacle: the other client's tokens, and
                // our own bytes under a revoke (a grant over them would be undone by the ack).
                let others = self.other.iter().map(|(r, _)| r.start);
                let revoked = self.revoking.values().map(|r| r.start);
                let end = others.chain(revoked).filter(|s| *s >= required.end).min();
                let range = ByteRange::new(desired.start, end.unwrap_or(desired.end));
                self.ours.grant(range, Mode::Write);
                self.to_client.push(ToClient::Grant { op, range, expires_ms: self.now_ms + CAP_MS });
            }
            ToMeta::Release { ticket, range } => {
                self.ours.remove(range);
                self.to_client.push(ToClient::Released { ticket });
            }
            ToMeta::RevokeDone { revoke } => {
                if let Some(r) = self.revoking.remove(&revoke) {
                    self.ours.remove(r);
                    self.hand_to_other();
                }
            }
            ToMeta::GetCapability { wb, range } => {
                let granted = self.counted_ours(range).then(|| cap(range, self.now_ms + CAP_MS));
                self.to_client.push(ToClient::Capability { wb, granted });
            }
        }
        true
    }

    /// The other client's waiting requests that no longer conflict are granted.
    fn hand_to_other(&mut self) {
        let wants = std::mem::take(&mut self.other_wants);
        for (id, range) in wants {
            let busy =
                self.ours.overlapping(range).next().is_some() || self.revoking.values().any(|r| r.overlaps(&range));
            if busy {
                self.other_wants.push((id, range));
            } else {
                self.other.grant(range, Mode::Write);
            }
        }
    }

    /// The other client asks for `range`: our conflicting bytes are revoked.
    fn other_wants(&mut self, range: ByteRange) {
        self.next_revoke += 1;
        let id = self.next_revoke;
        if self.ours.overlapping(range).next().is_some() {
            self.revoking.insert(id, range);
            self.to_client.push(ToClient::Revoke { revoke: id, range });
        }
        self.other_wants.push((id, range));
        self.hand_to_other();
    }

    /// The client handles `m`; false if it cannot yet: a revoke takes the file's I/O lock
    /// exclusively, so it waits for write-backs in flight.
    fn receive(&mut self, m: &ToClient) -> bool {
        if matches!(m, ToClient::Revoke { .. }) && !self.wbs.is_empty() {
            return false;
        }
        match m.clone() {
            ToClient::Grant { op, range, expires_ms } => {
                let Op::Want { k, ticket, .. } = std::mem::replace(&mut self.ops[op], Op::Idle) else { panic!() };
                let grant = Grant {
                    mode: Mode::Write,
                    range,
                    records: Vec::new(),
                    size: 0,
                    capability: Some(cap(range, expires_ms)),
                };
                self.st.granted(ticket.expect("an acquire was in flight"), grant, self.now_ms);
                self.ops[op] = Op::Want { k, ticket: None, releasing: false };
            }
            ToClient::Revoke { revoke, range } => {
                self.revoke_locally(range);
                self.to_meta.push(ToMeta::RevokeDone { revoke });
            }
            ToClient::Released { ticket } => {
                let t = self.tickets.remove(&ticket).expect("a listed release");
                self.releases.end(t);
            }
            ToClient::Capability { wb, granted } => {
                let pending = self.wbs.remove(&wb).expect("a write-back waiting");
                let c = granted.unwrap_or_else(|| panic!("pfs-meta refused a capability for {}", pending.range));
                self.st.keep_capability(c, self.now_ms);
                // The write goes out now: the bytes must still be ours at pfs-meta.
                assert!(self.counted_ours(pending.range), "a write of {} after its token went", pending.range);
            }
        }
        true
    }

    /// Gives back what we hold from `from` on, as a writer that saw its stride does.
    fn give_back(&mut self, from: u64) {
        let range = ByteRange::from(from);
        // Under the file's I/O lock, exclusively: after the write-backs in flight.
        if !self.st.holds_any(range) || !self.wbs.is_empty() {
            return;
        }
        let t = self.releases.begin(FILE, range);
        self.next_ticket += 1;
        self.tickets.insert(self.next_ticket, t);
        self.revoke_locally(range);
        self.to_meta.push(ToMeta::Release { ticket: self.next_ticket, range });
    }

    /// One step chosen by `c`.
    fn step(&mut self, c: u16) {
        let pick = (c >> 4) as usize;
        if std::env::var_os("PFS_MODEL_TRACE").is_some() {
            eprintln!("step {} pick {pick}: tokens {:?} ours {:?} revoking {:?} other {:?} to_meta {:?} to_client {:?} dirty {:?} wbs {:?}", c % 9, self.st.tokens(), self.ours.to_vec(), self.revoking, self.other.to_vec(), self.to_meta, self.to_client, self.dirty, self.wbs);
        }
        match c % 9 {
            0 | 1 => {
                let i = pick % self.ops.len();
                if matches!(self.ops[i], Op::Idle) {
                    self.ops[i] =
                        Op::Want { k: (pick / self.ops.len()) as u64 % RECORDS, ticket: None, releasing: false };
                }
                self.step_op(i);
            }
            2 | 3 if !self.to_meta.is_empty() => {
                let i = pick % self.to_meta.len();
                let m = self.to_meta[i].clone();
                if self.serve(&m) {
                    self.to_meta.remove(i);
                }
            }
            4 | 5 if !self.to_client.is_empty() => {
                let i = pick % self.to_client.len();
                let m = self.to_client[i].clone();
                if self.receive(&m) {
                    self.to_client.remove(i);
                }
            }
            6 => self.other_wants(record(pick as u64 % RECORDS)),
            7 => self.give_back(record(pick as u64 % RECORDS).end),
            8 => {
                // Time passes (capabilities near expiry are renewed), or a write-back of
                // everything dirty (an fsync, a cache eviction).
                if pick.is_multiple_of(2) {
                    self.now_ms += 7_000;
                } else {
                    self.write_back(ByteRange::ALL, false);
                }
            }
            _ => {}
        }
        // Writes blocked by a release go on once it is answered.
        for i in 0..self.ops.len() {
            if matches!(self.ops[i], Op::Want { ticket: None, releasing: true, .. }) {
                if let Op::Want { k, .. } = self.ops[i] {
                    self.ops[i] = Op::Want { k, ticket: None, releasing: false };
                }
                self.step_op(i);
            }
        }
        self.check();
    }

    /// The other client lets go; everything is delivered until nothing moves.
    fn drain(&mut self) {
        for _ in 0..10_000 {
            self.other = RangeMap::new();
            self.other_wants.clear();
            let mut moved = false;
            let mut i = 0;
            while i < self.to_client.len() {
                let m = self.to_client[i].clone();
                if self.receive(&m) {
                    self.to_client.remove(i);
                    moved = true;
                } else {
                    i += 1;
                }
            }
            let mut i = 0;
            while i < self.to_meta.len() {
                let m = self.to_meta[i].clone();
                if self.serve(&m) {
                    self.to_meta.remove(i);
                    moved = true;
                } else {
                    i += 1;
                }
            }
            for i in 0..self.ops.len() {
                if matches!(self.ops[i], Op::Want { ticket: None, .. }) {
                    if let Op::Want { k, .. } = self.ops[i] {
                        self.ops[i] = Op::Want { k, ticket: None, releasing: false };
                    }
                    self.step_op(i);
                    moved = true;
                }
            }
            self.check();
            if !moved {
                break;
            }
        }
        assert!(self.ops.iter().all(|o| matches!(o, Op::Idle)), "writes left undone: {:?}", self.ops);
        assert!(self.to_meta.is_empty() && self.to_client.is_empty(), "messages left");
    }
}

fn cap(range: ByteRange, expires_ms: u64) -> Capability {
    Capability { file: FILE, range, mode: Mode::Write, session: 1, chunk_size: 1 << 20, expires_ms, tag: [0; 16] }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn tokens_writes_and_capabilities_stay_coherent(writers in 1usize..4, steps in prop::collection::vec(any::<u16>(), 0..200)) {
        let mut m = Model::new(writers);
        for c in steps {
            m.step(c);
        }
        m.drain();
    }
}

// --- sync rounds ----------------------------------------------------------------------

/// A storage server in the sync model.
#[derive(Clone, Debug)]
struct Server {
    boot: u64,
    /// Writes (by number) it holds, durable or not.
    volatile: BTreeSet<u64>,
    durable: BTreeSet<u64>,
    hung: bool,
    /// Out of the file's chains (its replicas resync from others).
    left: bool,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn an_fsync_that_says_ok_leaves_every_earlier_write_durable_or_its_server_out_of_the_chains(
        replicated in any::<bool>(),
        steps in prop::collection::vec((0u8..6, 0usize..3), 0..60),
    ) {
        let mut servers = vec![Server { boot: 1, volatile: BTreeSet::new(), durable: BTreeSet::new(), hung: false, left: false }; 3];
        let mut st = FileState::new(0, true);
        // Which servers took each write.
        let mut writes: Vec<Vec<usize>> = Vec::new();
        // (write, server) lost by a crash, and those an fsync has reported failed since
        // (Linux reports a failed write-back once; retrying cannot bring it back).
        let mut crash_lost: BTreeSet<(u64, usize)> = BTreeSet::new();
        let mut reported: BTreeSet<(u64, usize)> = BTreeSet::new();
        for (kind, s) in steps {
            match kind {
                // A chunk write answered by server `s` (and its successor when replicated).
                0 | 1 => {
                    let took: Vec<usize> = if replicated { vec![s, (s + 1) % 3] } else { vec![s] };
                    let n = writes.len() as u64;
                    let mut boots = Vec::new();
                    for &t in &took {
                        servers[t].volatile.insert(n);
                        boots.push((ServerId(t as u32), servers[t].boot));
                    }
                    st.written(&boots);
                    writes.push(took);
                }
                // A crash and restart: unsynced writes are gone, a new boot id.
                2 => {
                    let srv = &mut servers[s];
                    for n in srv.volatile.difference(&srv.durable) {
                        crash_lost.insert((*n, s));
                    }
                    srv.volatile = srv.durable.clone();
                    srv.boot += 1;
                }
                3 => servers[s].hung = !servers[s].hung,
                4 if replicated => servers[s].left = true,
                // An fsync round.
                _ => {
                    let before = writes.len() as u64;
                    let mut round = st.begin_sync(replicated).unwrap();
                    for (server, boot) in round.servers() {
                        let srv = &mut servers[server.0 as usize];
                        let answer = if srv.hung {
                            Err(Error::Unavailable(format!("{server} hangs")))
                        } else if boot != srv.boot {
                            Err(Error::Rpc(pfs_common::Error::Remote {
                                peer: server.to_string(),
                                code: ErrorCode::Restarted,
                                message: "restarted".into(),
                                chain: None,
                            }))
                        } else {
                            let v = srv.volatile.clone();
                            srv.durable.extend(v);
                            Ok(())
                        };
                        round.answered(server, answer);
                    }
                    for server in round.to_check() {
                        round.checked(server, servers[server.0 as usize].left);
                    }
                    if st.end_sync(round).is_err() {
                        reported.append(&mut crash_lost);
                        continue;
                    }
                    for (n, took) in writes.iter().enumerate().take(before as usize) {
                        for &t in took {
                            let srv = &servers[t];
                            prop_assert!(
                                srv.durable.contains(&(n as u64)) || srv.left || reported.contains(&(n as u64, t)),
                                "fsync said Ok, but write {n} is not durable on server {t}: {srv:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
