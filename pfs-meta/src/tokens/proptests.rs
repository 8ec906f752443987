//! Random sequences of inputs over 4 session slots, 2 files and 2 storage servers against a
//! client model that keeps its own byte-by-byte copy of every session's tokens, and a storage
//! model that enforces its fences and its lease as pfs-storage does.
//!
//! Besides "no two conflicting tokens", every grant is checked against the tokens each
//! evicted session believed it held: while any storage server could still accept that
//! session's writes (it has not fenced it and its own lease still runs), nothing conflicting
//! may be granted. Storage server 1 never confirms a fence; either server may stop (SIGSTOP)
//! and continue.

use super::storage_model::StorageModel;
use super::*;
use pfs_common::ErrorCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const CFG: TokenConfig = TokenConfig {
    lease_ms: 100,
    revoke_timeout_ms: 50,
    contention_window_ms: 20,
    storage_lease_ms: 100,
    fence_timeout_ms: 50,
};
const SLOTS: usize = 4;
/// Storage servers; the last one never confirms a fence.
const SERVERS: usize = 2;
const SILENT: usize = SERVERS - 1;
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
        /// Records asked for ahead: (gap after `required`, step, length, count), kept only
        /// if all records end by byte 64.
        ahead: Option<(u64, u64, u64, u8)>,
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
    /// pfs-meta loses the client's connection and evicts it; the client itself may still be
    /// alive and writing (what fencing is for).
    Disconnect {
        s: usize,
    },
    /// Storage server `v` heartbeats (if it runs); refused, it registers again.
    ServerHeartbeat {
        v: usize,
    },
    /// Storage server `v` (not the silent one) fences one session it was asked to, and
    /// confirms.
    ServerConfirm {
        v: usize,
        pick: usize,
    },
    /// Storage server `v` stops (SIGSTOP) or continues.
    ServerStop {
        v: usize,
        stop: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let s = 0..SLOTS;
    prop_oneof![
        8 => (
            (s.clone(), 0..2usize, any::<bool>(), 0..64u64, 1..17u64, 0..32u64, 0..32u64, any::<bool>(), any::<bool>()),
            proptest::option::weighted(0.4, (0..8u64, 1..9u64, 1..5u64, 1..9u8)),
        )
            .prop_map(|((s, f, write, start, len, below, above, to_inf, exact), ahead)| Step::Acquire {
                s, f, write, start, len, below, above, to_inf, exact,
                ahead: ahead.map(|(gap, step, len, count)| (gap, step.max(len), len, count)),
            }),
        2 => (s.clone(), 0..2usize, 0..64u64, 1..65u64, any::<bool>())
            .prop_map(|(s, f, start, len, all)| Step::Release { s, f, start, len, all }),
        2 => s.clone().prop_map(|s| Step::Heartbeat { s }),
        4 => (0..45u64, any::<bool>(), any::<bool>()).prop_map(|(ms, ack_first, hb_first)| Step::Advance { ms, ack_first, hb_first }),
        6 => (s.clone(), any::<usize>()).prop_map(|(s, pick)| Step::Ack { s, pick }),
        1 => s.clone().prop_map(|s| Step::Close { s }),
        1 => s.clone().prop_map(|s| Step::Crash { s }),
        2 => s.clone().prop_map(|s| Step::Open { s }),
        1 => (s.clone(), any::<bool>()).prop_map(|(s, empty)| Step::Invalid { s, empty }),
        1 => s.prop_map(|s| Step::Disconnect { s }),
        3 => (0..SERVERS).prop_map(|v| Step::ServerHeartbeat { v }),
        3 => (0..SERVERS, any::<usize>()).prop_map(|(v, pick)| Step::ServerConfirm { v, pick }),
        1 => (0..SERVERS, any::<bool>()).prop_map(|(v, stop)| Step::ServerStop { v, stop }),
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
    /// Its connection to pfs-meta was lost (it is evicted with this as the cause).
    disconnected: bool,
    last_seen: u64,
    inbox: Vec<Received>,
    cells: [Cells; 2],
    pending: BTreeMap<RequestId, (usize, Mode, ByteRange, ByteRange, Option<Stride>)>,
}

impl Client {
    fn new(id: SessionId, now: u64) -> Client {
        Client {
            id,
            alive: true,
            crashed: false,
            disconnected: false,
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
static FENCES: AtomicU64 = AtomicU64::new(0);
static SERVERS_DOWN: AtomicU64 = AtomicU64::new(0);
static HELD_BACK: AtomicU64 = AtomicU64::new(0);
/// Records granted ahead of need, and records asked for but left alone (not free).
static AHEAD_GRANTED: AtomicU64 = AtomicU64::new(0);
static AHEAD_LEFT: AtomicU64 = AtomicU64::new(0);

struct World {
    m: TokenManager,
    now: u64,
    clients: Vec<Client>,
    servers: Vec<StorageModel>,
    /// Evicted sessions and the tokens they believed they held (what they may still write).
    evicted: Vec<(SessionId, [Cells; 2])>,
    next_sid: SessionId,
    next_req: RequestId,
}

impl World {
    fn new() -> World {
        let mut w = World {
            m: TokenManager::new(CFG),
            now: 0,
            clients: Vec::new(),
            servers: Vec::new(),
            evicted: Vec::new(),
            next_sid: 1,
            next_req: 1,
        };
        for _ in 0..SLOTS {
            let id = w.next_sid;
            w.next_sid += 1;
            assert!(w.m.handle(Input::OpenSession { session: id, now_ms: 0 }).is_empty());
            w.clients.push(Client::new(id, 0));
        }
        for v in 0..SERVERS {
            w.servers.push(StorageModel::default());
            w.register(v);
        }
        w
    }

    /// Storage server `v` registers: it learns every evicted session, its lease starts.
    fn register(&mut self, v: usize) {
        let now_ms = self.now;
        let evicted = self.m.evicted_sessions();
        self.servers[v].registered(evicted, now_ms, CFG.storage_lease_ms);
        let out = self.m.handle(Input::StorageRegistered { server: ServerId(v as u32), now_ms });
        assert!(self.absorb(&out).is_empty());
        self.check();
    }

    /// Storage server `v` heartbeats; accepted, its lease runs on; refused, it registers.
    fn server_heartbeat(&mut self, v: usize) {
        if self.servers[v].stopped {
            return;
        }
        let now_ms = self.now;
        let server = ServerId(v as u32);
        let out = self.m.handle(Input::StorageHeartbeat { server, now_ms });
        let refused = out.iter().any(|o| matches!(o, Output::RefuseServer { server: s, .. } if *s == server));
        assert!(self.absorb(&out).is_empty());
        if refused {
            // Refused only once the manager no longer counts on it: its own lease ran out,
            // or it was declared down for a fence it did not confirm.
            self.register(v);
        } else {
            self.servers[v].renewed(now_ms, CFG.storage_lease_ms);
            self.check();
        }
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
                Output::Grant { session, request, file, mode, range: hit, ahead: bits } => {
                    GRANTS.fetch_add(1, Relaxed);
                    let s = self.slot_of(*session);
                    let (f, m, req, des, stride) =
                        self.clients[s].pending.remove(request).expect("grant of a request not pending");
                    assert_eq!((FILES[f], m), (*file, *mode));
                    assert!(hit.contains(&req) && des.contains(hit), "grant {hit} for {req} in {des}");
                    let count = stride.map_or(0, |a| a.count);
                    assert_eq!(bits >> count, 0, "grant of records beyond the {count} asked for");
                    AHEAD_GRANTED.fetch_add(bits.count_ones() as u64, Relaxed);
                    AHEAD_LEFT.fetch_add(count as u64 - bits.count_ones() as u64, Relaxed);
                    // The range, and every record granted with it, is checked alike.
                    let granted: Vec<ByteRange> =
                        std::iter::once(*hit).chain(stride.iter().flat_map(|a| a.records(*bits))).collect();
                    for range in &granted {
                        // Nothing an evicted session may still write somewhere is granted.
                        for (x, cells) in &self.evicted {
                            let conflicts = span(*range).any(|i| cells[f][i].is_some_and(|h| h.conflicts_with(*mode)));
                            if conflicts {
                                for (v, srv) in self.servers.iter().enumerate() {
                                    assert!(
                                        !srv.accepts(*x, self.now),
                                        "grant of {range} {mode:?} to {session} at {} ms while storage-{v} still \
                                     accepts writes of evicted session {x}",
                                        self.now
                                    );
                                }
                                HELD_BACK.fetch_add(1, Relaxed);
                            }
                        }
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
                    assert!(
                        lease || revoke || c.disconnected,
                        "session {session} evicted at {} without cause",
                        self.now
                    );
                    self.evicted.push((*session, c.cells));
                    c.gone();
                }
                Output::Fence { session, servers } => {
                    FENCES.fetch_add(1, Relaxed);
                    for v in servers {
                        self.servers[v.0 as usize].inbox.insert(*session);
                    }
                }
                Output::ServerDown { server, .. } => {
                    SERVERS_DOWN.fetch_add(1, Relaxed);
                    // Declared down only when it holds up a fence or its lease ran out.
                    let v = server.0 as usize;
                    let holds_up = self.servers[v].inbox.iter().any(|x| self.m.evicted_sessions().contains(x));
                    assert!(
                        holds_up || self.now >= self.servers[v].writes_until,
                        "{server} declared down at {} ms without cause",
                        self.now
                    );
                }
                Output::RefuseServer { .. } => {}
                Output::Refuse { session, error, .. } => refusals.push((*session, error.code())),
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
                                assert!(!a.conflicts_with(b), "sessions {} and {} conflict at cell {x}", c.id, d.id);
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
            Step::Acquire { s, f, write, start, len, below, above, to_inf, exact, ahead } => {
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
                let ahead = ahead
                    .map(|(gap, step, len, count)| Stride { start: required.end + gap, step, len, count })
                    .filter(|a| a.record(a.count - 1).end <= 64);
                if self.clients[s].alive {
                    self.clients[s].pending.insert(request, (f, mode, required, desired, ahead));
                }
                let input = Input::Acquire { session, request, file: FILES[f], mode, required, desired, ahead, now_ms };
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
                if hb_first {
                    for v in 0..SERVERS {
                        self.server_heartbeat(v);
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
                    ahead: None,
                    now_ms,
                };
                self.send(Some(s), input, true);
            }
            Step::Disconnect { s } => {
                if self.clients[s].alive {
                    self.clients[s].disconnected = true;
                    let session = self.clients[s].id;
                    let reason = "connection closed".to_string();
                    let out = self.m.handle(Input::Evict { session, reason, now_ms });
                    // Refused only if its lease or a revoke ran out first (evicted just before).
                    let refusals = self.absorb(&out);
                    assert!(refusals.iter().all(|r| *r == (session, ErrorCode::Evicted)), "{refusals:?}");
                    self.check();
                }
            }
            Step::ServerHeartbeat { v } => self.server_heartbeat(v),
            Step::ServerConfirm { v, pick } => self.server_confirm(v, pick),
            Step::ServerStop { v, stop } => self.servers[v].stopped = stop,
        }
    }

    /// Storage server `v` applies one fence it was asked for and confirms it, unless it is
    /// the silent one or stopped.
    fn server_confirm(&mut self, v: usize, pick: usize) {
        let n = self.servers[v].inbox.len();
        if v == SILENT || self.servers[v].stopped || n == 0 {
            return;
        }
        let session = *self.servers[v].inbox.iter().nth(pick % n).expect("within the inbox");
        self.servers[v].fence(session);
        let input = Input::FenceConfirmed { server: ServerId(v as u32), sessions: vec![session], now_ms: self.now };
        let out = self.m.handle(input);
        assert!(self.absorb(&out).is_empty());
        self.check();
    }

    /// Live clients ack everything and heartbeat while time runs on; crashed ones get
    /// evicted; running storage servers heartbeat and confirm, stopped ones lose their lease.
    /// Then nothing may be left waiting or fencing.
    fn drain(&mut self) {
        for _ in 0..50 {
            for s in 0..SLOTS {
                self.ack_all(s);
                if self.clients[s].active() {
                    let session = self.clients[s].id;
                    self.send(Some(s), Input::Heartbeat { session, now_ms: self.now }, false);
                }
            }
            for v in 0..SERVERS {
                while !self.servers[v].inbox.is_empty() && v != SILENT && !self.servers[v].stopped {
                    self.server_confirm(v, 0);
                }
                self.server_heartbeat(v);
            }
            let quiet =
                self.clients.iter().all(|c| !c.alive || (!c.crashed && c.pending.is_empty() && c.inbox.is_empty()));
            if quiet && self.m.stats().fencing == 0 {
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
        assert_eq!(self.m.stats().fencing, 0);
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
            Ok(())
        })
        .unwrap();
    println!(
        "token proptest: {} cases, {} checked steps, {} grants ({} held back by a fence first), {} revokes, {} \
         evictions, {} fences, {} servers declared down, {} records granted ahead, {} left alone",
        CASES.load(Relaxed),
        STEPS.load(Relaxed),
        GRANTS.load(Relaxed),
        HELD_BACK.load(Relaxed),
        REVOKES.load(Relaxed),
        EVICTIONS.load(Relaxed),
        FENCES.load(Relaxed),
        SERVERS_DOWN.load(Relaxed),
        AHEAD_GRANTED.load(Relaxed),
        AHEAD_LEFT.load(Relaxed)
    );
    // The interesting paths were taken, not just the easy ones.
    assert!(FENCES.load(Relaxed) > 0 && SERVERS_DOWN.load(Relaxed) > 0 && HELD_BACK.load(Relaxed) > 0);
    assert!(AHEAD_GRANTED.load(Relaxed) > 0 && AHEAD_LEFT.load(Relaxed) > 0);
}
