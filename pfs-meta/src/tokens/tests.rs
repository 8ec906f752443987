use super::*;
use pfs_common::token::StrideError;
use pfs_common::ErrorCode;

const CFG: TokenConfig = TokenConfig {
    lease_ms: 1000,
    revoke_timeout_ms: 500,
    contention_window_ms: 200,
    storage_lease_ms: 1000,
    fence_timeout_ms: 400,
};
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
    fn acq(&mut self, s: SessionId, mode: Mode, required: ByteRange, desired: ByteRange) -> (RequestId, Vec<Output>) {
        let request = self.next_req;
        self.next_req += 1;
        let now_ms = self.now;
        let ahead = None;
        (request, self.input(Input::Acquire { session: s, request, file: F, mode, required, desired, ahead, now_ms }))
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
            Output::Refuse { session, request, error } => Some((*session, *request, error.code())),
            _ => None,
        })
        .collect()
}

use Mode::{Read as R, Write as W};

#[test]
fn sequential_writer_gets_whole_file_once() {
    let mut h = H::new(CFG, &[A]);
    let (q, out) = h.acq(A, W, r(0, 10), ByteRange::ALL);
    assert_eq!(out.len(), 1);
    assert_eq!(grants(&out), vec![(A, q, W, ByteRange::ALL)]);
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
    let cfg = TokenConfig {
        lease_ms: 1000,
        revoke_timeout_ms: 5000,
        contention_window_ms: 200,
        storage_lease_ms: 1000,
        fence_timeout_ms: 400,
    };
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
    assert_eq!(refused(&h.input(Input::OpenSession { session: A, now_ms: 1000 })), vec![(A, None, ErrorCode::Evicted)]);
    assert_eq!(refused(&h.ack(A, 1)), vec![(A, None, ErrorCode::Evicted)]);
    let (q, out) = h.acq(99, R, r(0, 1), r(0, 1));
    assert_eq!(refused(&out), vec![(99, Some(q), ErrorCode::Evicted)]);
    assert_eq!(h.m.stats().sessions, 0);
}

#[test]
fn bad_ranges_are_invalid() {
    let mut h = H::new(CFG, &[A]);
    let empty = |required, desired| AcquireError::Empty { required, desired };
    let outside = |required, desired| AcquireError::NotWithin { required, desired };
    for (req, des, why) in [
        (r(5, 5), r(0, 10), empty(r(5, 5), r(0, 10))),
        (r(6, 5), r(0, 10), empty(r(6, 5), r(0, 10))),
        (r(0, 10), r(1, 10), outside(r(0, 10), r(1, 10))),
        (r(0, 10), r(0, 9), outside(r(0, 10), r(0, 9))),
    ] {
        let (q, out) = h.acq(A, R, req, des);
        assert_eq!(refused(&out), vec![(A, Some(q), ErrorCode::Invalid)], "{req} {des}");
        assert!(
            matches!(&out[..], [Output::Refuse { error: MetaError::BadAcquire { why: w, request, .. }, .. }] if *w == why && *request == q),
            "{req} {des}: {out:?}"
        );
    }
    // A malformed stride of records ahead: refused with the stride's own reason.
    let ahead = Some(Stride { start: 0, step: 5, len: 10, count: 2 });
    let out = h.input(Input::Acquire {
        session: A,
        request: 99,
        file: F,
        mode: W,
        required: r(0, 10),
        desired: r(0, 10),
        ahead,
        now_ms: h.now,
    });
    let bad_stride = AcquireError::Stride(StrideError::Overlap { len: 10, step: 5 });
    assert!(
        matches!(&out[..], [Output::Refuse { error: MetaError::BadAcquire { why, .. }, .. }] if *why == bad_stride),
        "{out:?}"
    );
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
    assert_eq!(out.len(), 1);
    assert_eq!(grants(&out), vec![(B, qb, W, r(0, 10))]);
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
            fencing: 0,
            evictions: 0
        }
    );
}

/// Prints and pins the sizes the module documentation quotes.
#[test]
fn memory_per_token() {
    use pfs_common::range_map::Extent;
    use std::mem::size_of;
    let entry = size_of::<u64>() + size_of::<Extent>();
    println!(
        "token entry {entry} bytes (key 8 + Extent {}), RangeMap {}, Waiter {}, PendingRevoke {}, FileTokens {}, \
         Session {}",
        size_of::<Extent>(),
        size_of::<RangeMap>(),
        size_of::<Waiter>(),
        size_of::<PendingRevoke>(),
        size_of::<FileTokens>(),
        size_of::<Session>()
    );
    assert_eq!(size_of::<Extent>(), 16);
    assert_eq!(entry, 24);
    assert_eq!(size_of::<RangeMap>(), 24);
    assert_eq!(size_of::<Waiter>(), 96);
    assert_eq!(size_of::<PendingRevoke>(), 48);
}

/// A manager that took over at `now` with `open` sessions of the log to reclaim.
fn recovering(open: &[SessionId], now: u64) -> H {
    let m = TokenManager::recovering(CFG, open.iter().copied(), [], now);
    m.check_invariants().unwrap();
    H { m, now, next_req: 1 }
}

#[test]
fn reclaimed_tokens_come_back_and_nothing_is_granted_until_every_session_is_done() {
    let mut h = recovering(&[A, B], 100);
    assert!(h.m.recovering_now() && h.m.must_reclaim(A) && h.m.must_reclaim(B));
    let out = h.input(Input::Reclaim { session: A, file: F, tokens: vec![(r(0, 100), W)], now_ms: 100 });
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(h.tokens(A), vec![(r(0, 100), W)]);
    // B's reclaim over A's Write conflicts: refused, nothing of it kept.
    let out = h.input(Input::Reclaim { session: B, file: F, tokens: vec![(r(50, 60), R)], now_ms: 100 });
    assert_eq!(refused(&out), vec![(B, None, ErrorCode::Invalid)]);
    assert!(h.tokens(B).is_empty());
    // A new session's acquire waits for the window, even over free bytes.
    assert!(h.input(Input::OpenSession { session: C, now_ms: 100 }).is_empty());
    let (q, out) = h.acq(C, W, r(200, 300), r(200, 300));
    assert!(grants(&out).is_empty() && revokes(&out).is_empty(), "{out:?}");
    let (q2, out) = h.acq(C, W, r(0, 10), r(0, 10));
    assert!(out.is_empty());
    assert!(h.input(Input::ReclaimDone { session: A, now_ms: 100 }).is_empty());
    // The last session done closes the window: the queue is served, the conflict revoked.
    let out = h.input(Input::ReclaimDone { session: B, now_ms: 100 });
    assert!(!h.m.recovering_now());
    assert_eq!(grants(&out), vec![(C, q, W, r(200, 300))]);
    assert_eq!(revokes(&out).len(), 1);
    assert_eq!(revokes(&out)[0].0, A);
    let out = h.ack(A, revokes(&out)[0].1);
    assert_eq!(grants(&out), vec![(C, q2, W, r(0, 10))]);
    // Outside recovery, a reclaim is refused (the session must be one of the log's).
    let out = h.input(Input::Reclaim { session: A, file: F, tokens: vec![(r(500, 600), W)], now_ms: 100 });
    assert_eq!(refused(&out), vec![(A, None, ErrorCode::Evicted)]);
}

#[test]
fn a_session_that_does_not_reclaim_is_evicted_and_fenced_before_anything_is_granted() {
    let mut h = recovering(&[A, B], 0);
    h.input(Input::StorageRegistered { server: ServerId(1), now_ms: 0 });
    h.input(Input::Reclaim { session: A, file: F, tokens: vec![(r(0, 10), W)], now_ms: 0 });
    h.input(Input::ReclaimDone { session: A, now_ms: 0 });
    let (q, out) = h.acq(A, W, r(10, 20), r(10, 20));
    assert!(out.is_empty());
    h.now = 600;
    h.input(Input::StorageHeartbeat { server: ServerId(1), now_ms: 600 });
    h.hb(A);
    // The window ends at the lease: B is evicted, the storage server asked to fence it, and
    // still nothing is granted (B's tokens are unknown).
    let out = h.tick(CFG.lease_ms);
    assert_eq!(evicted(&out), vec![B]);
    assert!(out.iter().any(|o| matches!(o, Output::Fence { session, .. } if *session == B)), "{out:?}");
    assert!(grants(&out).is_empty() && h.m.recovering_now());
    let out = h.input(Input::FenceConfirmed { server: ServerId(1), sessions: vec![B], now_ms: CFG.lease_ms });
    assert_eq!(grants(&out), vec![(A, q, W, r(10, 20))]);
    assert!(!h.m.recovering_now());
    assert!(h.m.evicted_sessions().contains(&B));
}

#[test]
fn a_new_manager_without_sessions_has_no_window_and_refuses_the_evicted() {
    let m = TokenManager::recovering(CFG, [], [B], 5);
    assert!(!m.recovering_now());
    let mut h = H { m, now: 5, next_req: 1 };
    let out = h.input(Input::OpenSession { session: B, now_ms: 5 });
    assert_eq!(refused(&out), vec![(B, None, ErrorCode::Evicted)]);
    // A clean close during the window counts as done.
    let mut h = recovering(&[A, B], 0);
    h.input(Input::ReclaimDone { session: A, now_ms: 0 });
    assert!(h.input(Input::CloseSession { session: B, now_ms: 0 }).is_empty());
    assert!(!h.m.recovering_now());
}
