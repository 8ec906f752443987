//! Exhaustive model check (stateright) of small configurations: one file, ranges within
//! [0, 4) (desired may reach ∞), each session acquires up to twice (one request at a time) and
//! may release, acks arrive in any order, and one session may crash. The strided
//! configurations also ask for records ahead (multi-range grants) within [0, 6).
//!
//! The fencing configurations add two storage servers as pfs-storage behaves: each refuses
//! the writes of the sessions it fenced, and every write once half its lease has passed since
//! it sent its last accepted heartbeat. Storage server 0 confirms the fences it is asked for;
//! storage server 1 never does (a hung disk, a fake peer): it keeps heartbeating, or it stops
//! altogether. A session may lose its connection and be evicted while it is still alive and
//! writing. Checked: no grant conflicts with the tokens an evicted session held while any
//! storage server could still accept that session's writes.
//!
//! The failover configurations replace the manager, once, by one that takes over
//! ([`TokenManager::recovering`]) from the log's sessions, as a new metadata leader does: the
//! old one acts until then (the failover is the moment its leader lease ends: openraft elects
//! no other leader before), and what it granted stays in the clients' hands. Every session
//! reclaims what it held, but one may be cut off from the new leader while it still reaches
//! the storage servers (and writes); the storage servers register with the new manager.
//! Checked too: no reclaim is refused, and no grant of the new manager conflicts with
//! tokens a session held at the failover unless it reclaimed them (then the manager knows
//! them) or was evicted and no storage server can still accept its writes.

use super::storage_model::StorageModel;
use super::*;
use stateright::{Checker, Model, Property};

const F: FileId = FileId(1);
/// The storage server that never confirms a fence.
const SILENT: usize = 1;

/// An outstanding request: (id, required, desired, records ahead).
type Pending = (RequestId, ByteRange, ByteRange, Option<Stride>);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct St {
    m: TokenManager,
    now: u64,
    /// Per session slot: revokes received and not acked.
    inbox: Vec<BTreeSet<RevokeId>>,
    crashed: Option<usize>,
    /// A session evicted because its connection closed (it may still write).
    disconnected: Option<usize>,
    acquires_left: Vec<u8>,
    /// Per slot: the outstanding request (id, required, desired, records ahead).
    pending: Vec<Option<Pending>>,
    next_req: RequestId,
    servers: Vec<StorageModel>,
    /// Per evicted session, the tokens it held at its eviction (what it may still write).
    evicted: BTreeMap<SessionId, Vec<(ByteRange, Mode)>>,
    /// Set if an output broke the client's expectations.
    bad: bool,
    /// Set if a grant conflicted with an evicted session's tokens while a storage server could
    /// still accept that session's writes.
    unsafe_grant: bool,
    /// A grant conflicted with an evicted session's tokens (after its fence, safely).
    fenced_grant: bool,
    /// The manager declared a storage server down.
    declared_down: bool,
    /// The manager was replaced by a recovering one (a failover).
    failed_over: bool,
    /// The session cut off from the new manager (it still writes to storage servers).
    lost: Option<usize>,
    /// Per session, what it held from the old manager and has not reclaimed from the new one
    /// (nor been evicted with).
    unreclaimed: BTreeMap<SessionId, Vec<(ByteRange, Mode)>>,
    /// The sessions (slots) that reach the new manager and have not reclaimed yet.
    to_reclaim: BTreeSet<usize>,
    /// A grant conflicted with tokens a session held at the failover and has neither reclaimed
    /// nor been evicted with.
    cross_grant: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Act {
    Acquire(usize, Mode, ByteRange, ByteRange, Option<Stride>),
    Ack(usize, RevokeId),
    Release(usize),
    Crash(usize),
    /// Live clients heartbeat while a lease passes; the crashed one is evicted.
    Timeout,
    /// pfs-meta loses the session's connection and evicts it.
    Disconnect(usize),
    /// Storage server 0 applies and confirms a fence it was asked for.
    Confirm(SessionId),
    /// The silent storage server stops (SIGSTOP) for good.
    StopSilent,
    /// Live clients and running storage servers heartbeat, then time advances by a quantum.
    Tick,
    /// The old manager's leader lease ends and a new one takes over; the session given, if
    /// any, never reaches the new one.
    Failover(Option<usize>),
    /// A session reclaims, from the new manager, what it held from the old one.
    Reclaim(usize),
}

struct TokModel {
    sessions: usize,
    crash: bool,
    requireds: Vec<ByteRange>,
    /// Offer `desired` = ∞ as well as `desired` = `required`.
    expand: bool,
    /// Offer each of these records ahead with `desired` = `required`.
    strides: Vec<Stride>,
    /// Acquires per session.
    acquires: u8,
    /// Offer whole-file releases.
    release: bool,
    cfg: TokenConfig,
    /// Storage servers (0, or 2 for the fencing configurations).
    servers: usize,
    /// Offer evicting a session whose connection closed.
    disconnect: bool,
    /// Offer stopping the silent storage server.
    stop: bool,
    /// Offer a failover.
    failover: bool,
    /// Time advances by this much per Tick, ms, up to `horizon_ms`.
    tick_ms: u64,
    horizon_ms: u64,
}

fn sid(slot: usize) -> SessionId {
    slot as SessionId + 1
}

/// Whether `tokens` (a holder's, coalesced) cover `range` in `mode` or a stronger one.
fn covered(tokens: &[(ByteRange, Mode)], range: ByteRange, mode: Mode) -> bool {
    let mut at = range.start;
    let mut spans: Vec<ByteRange> =
        tokens.iter().filter(|(_, m)| mode == Mode::Read || *m == Mode::Write).map(|(r, _)| *r).collect();
    spans.sort_by_key(|r| r.start);
    for r in spans {
        if r.start <= at && r.end > at {
            at = r.end;
        }
    }
    at >= range.end
}

fn alive(st: &St, slot: usize) -> bool {
    st.m.sessions.contains_key(&sid(slot))
}

/// No message in flight that a live client would act on, no eviction due, no fence pending
/// and no recovery window open (acquires wait for it to close).
fn quiescent(st: &St) -> bool {
    let crashed_alive = st.crashed.is_some_and(|c| alive(st, c));
    !crashed_alive
        && st.m.stats().fencing == 0
        && !st.m.recovering_now()
        && (0..st.inbox.len()).all(|s| !alive(st, s) || st.inbox[s].is_empty())
}

impl TokModel {
    /// Feeds `input`; returns true if it was a storage heartbeat the manager refused.
    fn apply(&self, st: &mut St, input: Input) -> bool {
        let held: Vec<(SessionId, Vec<(ByteRange, Mode)>)> =
            (0..self.sessions).map(|s| (sid(s), st.m.tokens(sid(s), F))).collect();
        let mut refused_server = false;
        for o in st.m.handle(input) {
            match o {
                Output::Grant { session, request, mode, range, ahead, .. } => {
                    let s = (session - 1) as usize;
                    let mut granted = vec![range];
                    match st.pending[s].take() {
                        Some((q, req, des, stride)) if q == request && range.contains(&req) && des.contains(&range) => {
                            let count = stride.map_or(0, |a| a.count);
                            st.bad |= ahead >> count != 0;
                            granted.extend(stride.iter().flat_map(|a| a.records(ahead)));
                        }
                        _ => st.bad = true,
                    }
                    for (x, tokens) in &st.unreclaimed {
                        let conflicts =
                            tokens.iter().any(|(r, m)| granted.iter().any(|g| r.overlaps(g)) && m.conflicts_with(mode));
                        st.cross_grant |= *x != session && conflicts;
                    }
                    for (x, tokens) in &st.evicted {
                        let conflicts =
                            tokens.iter().any(|(r, m)| granted.iter().any(|g| r.overlaps(g)) && m.conflicts_with(mode));
                        if *x != session && conflicts {
                            if st.servers.iter().any(|v| v.accepts(*x, st.now)) {
                                st.unsafe_grant = true;
                            }
                            st.fenced_grant = true;
                        }
                    }
                }
                Output::Revoke { session, revoke, .. } => {
                    st.inbox[(session - 1) as usize].insert(revoke);
                }
                Output::Evict { session, .. } => {
                    let s = (session - 1) as usize;
                    st.inbox[s].clear();
                    st.pending[s] = None;
                    if st.crashed != Some(s) && st.disconnected != Some(s) && st.lost != Some(s) {
                        st.bad = true;
                    }
                    if self.servers > 0 {
                        // Only where a fence can hold it up (keeps the other state spaces small).
                        let mut tokens =
                            held.iter().find(|(x, _)| *x == session).map(|(_, t)| t.clone()).unwrap_or_default();
                        // After a failover, also what it held from the old manager.
                        tokens.extend(st.unreclaimed.remove(&session).unwrap_or_default());
                        st.evicted.insert(session, tokens);
                    }
                }
                Output::Fence { session, servers } => {
                    for v in servers {
                        st.servers[v.0 as usize].inbox.insert(session);
                    }
                }
                Output::ServerDown { .. } => st.declared_down = true,
                Output::RefuseServer { .. } => refused_server = true,
                Output::Refuse { .. } => st.bad = true,
            }
        }
        refused_server
    }

    /// Storage server `v` registers: it learns every evicted session, its lease starts.
    fn register(&self, st: &mut St, v: usize) {
        let evicted = st.m.evicted_sessions();
        let now_ms = st.now;
        st.servers[v].registered(evicted, now_ms, self.cfg.storage_lease_ms);
        self.apply(st, Input::StorageRegistered { server: ServerId(v as u32), now_ms });
    }

    /// Storage server `v` heartbeats, unless stopped; refused, it registers again.
    fn heartbeat(&self, st: &mut St, v: usize) {
        if st.servers[v].stopped {
            return;
        }
        let now_ms = st.now;
        if self.apply(st, Input::StorageHeartbeat { server: ServerId(v as u32), now_ms }) {
            self.register(st, v);
        } else {
            st.servers[v].renewed(now_ms, self.cfg.storage_lease_ms);
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
        let mut st = St {
            m,
            now: 0,
            inbox: vec![BTreeSet::new(); self.sessions],
            crashed: None,
            disconnected: None,
            acquires_left: vec![self.acquires; self.sessions],
            pending: vec![None; self.sessions],
            next_req: 1,
            servers: Vec::new(),
            evicted: BTreeMap::new(),
            bad: false,
            unsafe_grant: false,
            fenced_grant: false,
            declared_down: false,
            failed_over: false,
            lost: None,
            unreclaimed: BTreeMap::new(),
            to_reclaim: BTreeSet::new(),
            cross_grant: false,
        };
        for v in 0..self.servers {
            st.servers.push(StorageModel::default());
            self.register(&mut st, v);
        }
        vec![st]
    }

    fn actions(&self, st: &St, actions: &mut Vec<Act>) {
        for s in 0..self.sessions {
            if !alive(st, s) || st.crashed == Some(s) || st.lost == Some(s) {
                continue;
            }
            if st.to_reclaim.contains(&s) {
                // Taken over to the new manager: it reclaims before anything else.
                actions.push(Act::Reclaim(s));
                continue;
            }
            if st.pending[s].is_none() && st.acquires_left[s] > 0 {
                for mode in [Mode::Read, Mode::Write] {
                    for &req in &self.requireds {
                        actions.push(Act::Acquire(s, mode, req, req, None));
                        if self.expand {
                            actions.push(Act::Acquire(s, mode, req, ByteRange::new(req.start, u64::MAX), None));
                        }
                        for &a in &self.strides {
                            actions.push(Act::Acquire(s, mode, req, req, Some(a)));
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
            // Evicting a holder is what needs a fence; one such eviction per run.
            if self.disconnect && st.disconnected.is_none() && !st.m.tokens(sid(s), F).is_empty() {
                actions.push(Act::Disconnect(s));
            }
        }
        if let Some(c) = st.crashed {
            let acks_due = (0..self.sessions).any(|s| s != c && alive(st, s) && !st.inbox[s].is_empty());
            if alive(st, c) && !acks_due {
                actions.push(Act::Timeout);
            }
        }
        if self.servers > 0 {
            if !st.servers[0].stopped {
                for &x in &st.servers[0].inbox {
                    actions.push(Act::Confirm(x));
                }
            }
            if self.stop && !st.servers[SILENT].stopped {
                actions.push(Act::StopSilent);
            }
            // Time runs only while a fence or a recovery window waits for it (client leases and
            // revoke timeouts are beyond the horizon here; the configurations without storage
            // cover them).
            let waiting = st.m.stats().fencing > 0 || st.m.recovering_now();
            // Clients that reach the new manager reclaim within its window (the window is
            // a lease; they take over within a sixth of one).
            let reclaims_due = !st.to_reclaim.is_empty();
            if waiting && !reclaims_due && st.now + self.tick_ms <= self.horizon_ms {
                actions.push(Act::Tick);
            }
        }
        if self.failover && !st.failed_over {
            actions.push(Act::Failover(None));
            for s in 0..self.sessions {
                if alive(st, s) {
                    actions.push(Act::Failover(Some(s)));
                }
            }
        }
    }

    fn next_state(&self, st: &St, act: Act) -> Option<St> {
        let mut n = st.clone();
        let now_ms = n.now;
        match act {
            Act::Acquire(s, mode, required, desired, ahead) => {
                let request = n.next_req;
                n.next_req += 1;
                n.acquires_left[s] -= 1;
                n.pending[s] = Some((request, required, desired, ahead));
                let input =
                    Input::Acquire { session: sid(s), request, file: F, mode, required, desired, ahead, now_ms };
                self.apply(&mut n, input);
            }
            Act::Ack(s, revoke) => {
                n.inbox[s].remove(&revoke);
                self.apply(&mut n, Input::RevokeAck { session: sid(s), revoke, now_ms });
            }
            Act::Release(s) => {
                self.apply(&mut n, Input::Release { session: sid(s), file: F, range: ByteRange::ALL, now_ms });
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
                    for v in 0..self.servers {
                        self.heartbeat(&mut n, v);
                    }
                }
            }
            Act::Disconnect(s) => {
                n.disconnected = Some(s);
                let reason = "connection closed".to_string();
                self.apply(&mut n, Input::Evict { session: sid(s), reason, now_ms });
            }
            Act::Confirm(x) => {
                n.servers[0].fence(x);
                self.apply(&mut n, Input::FenceConfirmed { server: ServerId(0), sessions: vec![x], now_ms });
            }
            Act::StopSilent => n.servers[SILENT].stopped = true,
            Act::Tick => {
                for s in 0..self.sessions {
                    if Some(s) != n.crashed && Some(s) != n.lost && alive(&n, s) {
                        self.apply(&mut n, Input::Heartbeat { session: sid(s), now_ms });
                    }
                }
                for v in 0..self.servers {
                    self.heartbeat(&mut n, v);
                }
                n.now += self.tick_ms;
                let now_ms = n.now;
                self.apply(&mut n, Input::Tick { now_ms });
            }
            Act::Failover(lost) => {
                n.failed_over = true;
                n.lost = lost;
                // The clients' view: every token granted and not yet given back (a revoke in
                // the inbox is not acted on yet). Requests and revokes in flight are lost.
                for s in 0..self.sessions {
                    if alive(&n, s) && Some(s) != n.crashed {
                        n.unreclaimed.insert(sid(s), n.m.tokens(sid(s), F));
                        if Some(s) != lost {
                            n.to_reclaim.insert(s);
                        }
                    }
                    n.inbox[s].clear();
                    n.pending[s] = None;
                }
                // The log knows the sessions and the evictions (an eviction is logged before
                // its fence goes out); nothing of the tokens.
                let open: Vec<SessionId> = n.m.sessions.keys().copied().collect();
                n.m = TokenManager::recovering(self.cfg, open, n.m.evicted_sessions(), now_ms);
                for v in 0..self.servers {
                    if !n.servers[v].stopped {
                        self.register(&mut n, v);
                    }
                }
            }
            Act::Reclaim(s) => {
                n.to_reclaim.remove(&s);
                let tokens = n.unreclaimed.get(&sid(s)).cloned().unwrap_or_default();
                if !tokens.is_empty() {
                    self.apply(&mut n, Input::Reclaim { session: sid(s), file: F, tokens, now_ms });
                }
                self.apply(&mut n, Input::ReclaimDone { session: sid(s), now_ms });
                // What the new manager now holds for it is its own to protect (the invariants);
                // anything else the client still believes it holds stays unreclaimed.
                let known = n.m.tokens(sid(s), F);
                if let Some(left) = n.unreclaimed.get_mut(&sid(s)) {
                    left.retain(|(r, mode)| !covered(&known, *r, *mode));
                    if left.is_empty() {
                        n.unreclaimed.remove(&sid(s));
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
            Property::always("no grant while an evicted holder's writes could still land", |_, st: &St| {
                !st.unsafe_grant
            }),
            Property::always("quiescent: every live request granted", |_, st: &St| {
                !quiescent(st)
                    || (st.m.stats().waiters == 0
                        && (0..st.pending.len()).all(|s| !alive(st, s) || st.pending[s].is_none()))
            }),
            Property::always("no grant over tokens held at the failover and not reclaimed", |_, st: &St| {
                !st.cross_grant
            }),
            Property::sometimes(
                "a session cut off from the new manager was evicted, its bytes granted",
                |_, st: &St| st.lost.is_some() && st.fenced_grant,
            ),
            Property::sometimes("a revoke was acked and its request granted", |_, st: &St| {
                st.m.stats().revokes > 0 && st.m.stats().outstanding_revokes == 0 && st.m.stats().waiters == 0
            }),
            Property::sometimes("a crashed holder was evicted", |_, st: &St| {
                st.m.stats().evictions > 0 && st.m.stats().tokens > 0
            }),
            Property::sometimes("an evicted holder's bytes were granted after its fence", |_, st: &St| st.fenced_grant),
            Property::sometimes("the silent storage server was declared down", |_, st: &St| st.declared_down),
        ]
    }
}

fn check(model: TokModel, name: &str) {
    let (crash, fencing, failover) = (model.crash, model.servers > 0, model.failover);
    // A guard against a configuration too large for a test run. The checker stops once it has
    // generated this many states, so the checks below are exhaustive only if it stopped
    // before.
    let cap: usize = std::env::var("PFS_MODEL_STATES_MAX").ok().and_then(|v| v.parse().ok()).unwrap_or(12_000_000);
    let checker = model.checker().threads(2).target_state_count(cap).spawn_bfs().join();
    assert!(checker.state_count() < cap, "state space not exhausted: {} states generated", checker.state_count());
    println!(
        "stateright {name}: {} unique states ({} visited), max depth {}",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth()
    );
    checker.assert_no_discovery("never two conflicting tokens (invariants hold)");
    checker.assert_no_discovery("outputs as the clients expect");
    checker.assert_no_discovery("no grant while an evicted holder's writes could still land");
    checker.assert_no_discovery("quiescent: every live request granted");
    checker.assert_no_discovery("no grant over tokens held at the failover and not reclaimed");
    checker.assert_any_discovery("a revoke was acked and its request granted");
    if crash {
        checker.assert_any_discovery("a crashed holder was evicted");
    }
    if failover {
        checker.assert_any_discovery("a session cut off from the new manager was evicted, its bytes granted");
    } else if fencing {
        checker.assert_any_discovery("an evicted holder's bytes were granted after its fence");
        checker.assert_any_discovery("the silent storage server was declared down");
    }
}

const R3: [ByteRange; 3] = [ByteRange::new(0, 2), ByteRange::new(1, 3), ByteRange::new(2, 4)];

/// Timeouts of the configurations without storage servers.
const CFG: TokenConfig = TokenConfig {
    lease_ms: 100,
    revoke_timeout_ms: 100,
    contention_window_ms: 0,
    storage_lease_ms: 100,
    fence_timeout_ms: 100,
};

fn without_storage(sessions: usize, requireds: &[ByteRange], expand: bool, acquires: u8, release: bool) -> TokModel {
    TokModel {
        sessions,
        crash: true,
        requireds: requireds.to_vec(),
        expand,
        strides: Vec::new(),
        acquires,
        release,
        cfg: CFG,
        servers: 0,
        disconnect: false,
        stop: false,
        failover: false,
        tick_ms: 0,
        horizon_ms: 0,
    }
}

#[test]
fn two_sessions_with_expansion_and_crash() {
    check(without_storage(2, &R3, true, 2, true), "2 sessions, expansion on, crash");
}

#[test]
fn three_sessions_contended_with_crash() {
    // Two overlapping required ranges, no expansion, no release: with all of R3 and
    // expansion, 3 sessions × 2 acquires exceed 24 GB of checker memory.
    let mut model = without_storage(3, &R3[..2], false, 2, false);
    model.cfg.contention_window_ms = 10;
    check(model, "3 sessions, 2 acquires each, contention window, crash");
}

#[test]
fn three_sessions_one_acquire_each_with_expansion_release_and_crash() {
    check(without_storage(3, &R3, true, 1, true), "3 sessions, 1 acquire each, expansion, release, crash");
}

/// Records ahead, interleaved and overlapping: [2, 3) and [4, 5); [1, 2) and [3, 4).
const STRIDES: [Stride; 2] =
    [Stride { start: 2, step: 2, len: 1, count: 2 }, Stride { start: 1, step: 2, len: 1, count: 2 }];

#[test]
fn two_sessions_with_records_ahead_expansion_and_crash() {
    let mut model = without_storage(2, &R3[..2], true, 2, true);
    model.strides = STRIDES.to_vec();
    check(model, "2 sessions, records ahead, expansion, release, crash");
}

#[test]
fn three_sessions_with_records_ahead_contended_and_crash() {
    let mut model = without_storage(3, &R3[..2], false, 1, true);
    model.strides = STRIDES.to_vec();
    model.cfg.contention_window_ms = 10;
    check(model, "3 sessions, 1 acquire each, records ahead, contention window, release, crash");
}

#[test]
fn records_ahead_respect_an_unconfirmed_fence() {
    let mut model = fencing(2, &R3[..2], 2, false);
    model.strides = STRIDES[..1].to_vec();
    check(model, "fencing, 2 sessions × 2 acquires with records ahead, silent server heartbeating");
}

/// Two storage servers of which one never confirms a fence (it heartbeats, or stops for
/// good), a holder evicted while alive.
fn fencing(sessions: usize, requireds: &[ByteRange], acquires: u8, stop: bool) -> TokModel {
    TokModel {
        sessions,
        crash: false,
        requireds: requireds.to_vec(),
        expand: true,
        strides: Vec::new(),
        acquires,
        release: false,
        // Ticks finer than half a storage lease, so a server that was declared down, or stopped,
        // can still accept writes for a while: the window the fence must wait out.
        cfg: TokenConfig {
            lease_ms: 1000,
            revoke_timeout_ms: 1000,
            contention_window_ms: 0,
            storage_lease_ms: 200,
            fence_timeout_ms: 50,
        },
        servers: 2,
        disconnect: true,
        stop,
        failover: false,
        tick_ms: 50,
        horizon_ms: 400,
    }
}

#[test]
fn an_unconfirmed_fence_holds_grants_until_the_silent_server_is_declared_down() {
    check(fencing(2, &R3[..2], 2, false), "fencing, 2 sessions × 2 acquires, silent server heartbeating");
    check(fencing(3, &R3, 1, false), "fencing, 3 sessions × 1 acquire, silent server heartbeating");
}

#[test]
fn an_unconfirmed_fence_holds_grants_until_the_stopped_server_lost_its_lease() {
    check(fencing(2, &R3[..2], 2, true), "fencing, 2 sessions × 2 acquires, silent server heartbeating or stopped");
    check(fencing(3, &R3[..2], 1, true), "fencing, 3 sessions × 1 acquire, silent server heartbeating or stopped");
}

/// A failover (see the module documentation): two storage servers, the silent one
/// heartbeating; sessions acquire under the old manager, then reclaim under the new one, or
/// one of them is cut off from it and must be evicted and fenced before its bytes are granted.
fn failover(sessions: usize, requireds: &[ByteRange], acquires: u8) -> TokModel {
    let base = fencing(sessions, requireds, acquires, false);
    TokModel {
        // A recovery window (lease_ms) a few ticks long; fences wait for the silent server.
        cfg: TokenConfig { lease_ms: 100, ..base.cfg },
        disconnect: false,
        failover: true,
        horizon_ms: 500,
        ..base
    }
}

#[test]
fn a_failover_grants_nothing_over_tokens_not_reclaimed_or_not_yet_fenced() {
    check(failover(2, &R3[..2], 2), "failover, 2 sessions × 2 acquires, one may be cut off from the new manager");
    check(failover(3, &R3[..2], 1), "failover, 3 sessions × 1 acquire, one may be cut off from the new manager");
}
