//! Unit tests of [`FileState`]'s decisions, one input sequence each.

use super::*;
use pfs_common::ids::FileId;

fn r(start: u64, end: u64) -> ByteRange {
    ByteRange::new(start, end)
}

fn cap(range: ByteRange, mode: Mode, expires_ms: u64) -> Capability {
    Capability { file: FileId(5), range, mode, session: 1, chunk_size: 1 << 20, expires_ms, tag: [0; 16] }
}

fn grant(range: ByteRange, size: u64, capability: Option<Capability>) -> Grant {
    Grant { mode: Mode::Write, range, records: Vec::new(), size, capability }
}

/// Acquires Write over `range` in one step (nothing crossing).
fn hold(st: &mut FileState, range: ByteRange, now_ms: u64) {
    match st.need(Mode::Write, range, range, None, |_| false) {
        Need::Acquire(t) => {
            st.granted(t, grant(range, st.size(), Some(cap(range, Mode::Write, now_ms + 60_000))), now_ms)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_revoke_crossing_an_acquire_is_applied_to_its_grant() {
    let mut st = FileState::new(0, true);
    let Need::Acquire(t) = st.need(Mode::Write, r(0, 10), ByteRange::ALL, None, |_| false) else { panic!() };
    // The revoke of [5, ∞) overtakes the grant of [0, ∞).
    let rv = st.revoke(ByteRange::from(5), Mode::Write);
    st.revoke_done(rv);
    st.granted(t, grant(ByteRange::ALL, 0, None), 0);
    assert!(st.holds(r(0, 5), Mode::Write));
    assert!(!st.holds(r(0, 6), Mode::Write), "never more than pfs-meta holds for us");
    assert_eq!(st.need(Mode::Write, r(0, 5), r(0, 5), None, |_| false), Need::Held);
}

#[test]
fn a_revoke_applied_before_an_acquire_is_not_applied_to_its_grant() {
    let mut st = FileState::new(0, true);
    let rv = st.revoke(r(0, 100), Mode::Write);
    st.revoke_done(rv);
    let Need::Acquire(t) = st.need(Mode::Write, r(0, 10), r(0, 10), None, |_| false) else { panic!() };
    st.granted(t, grant(r(0, 10), 0, None), 0);
    assert!(st.holds(r(0, 10), Mode::Write), "the grant came after the revoke: it stands");
}

#[test]
fn an_acquire_overlapping_an_unanswered_release_waits_for_it() {
    let mut st = FileState::new(0, true);
    let span = ByteRange::from(7);
    assert_eq!(st.need(Mode::Write, r(7, 9), span, None, |s| s.overlaps(&r(8, 20))), Need::AwaitRelease { span });
    // The records ahead count: a release of one of them blocks too.
    let ahead = Some(Stride { start: 100, step: 100, len: 10, count: 3 });
    let need = st.need(Mode::Write, r(0, 10), r(0, 10), ahead, |s| s.overlaps(&r(300, 301)));
    assert!(matches!(need, Need::AwaitRelease { .. }), "{need:?}");
    assert!(!st.asked_tokens(), "nothing was sent");
}

#[test]
fn write_capabilities_only_for_bytes_held_or_under_a_revokes_write_back() {
    let mut st = FileState::new(0, true);
    hold(&mut st, r(0, 100), 1000);
    let plan = st.capabilities(&[r(10, 20)], Mode::Write, 1000);
    assert!(matches!(&plan, CapabilityPlan::Use { have, ask } if have.len() == 1 && ask.is_empty()), "{plan:?}");
    assert_eq!(st.capabilities(&[r(90, 110)], Mode::Write, 1000), CapabilityPlan::NotHeld { range: r(90, 110) });
    // Revoked: the write-back under it may still write, not after.
    let rv = st.revoke(r(0, 100), Mode::Write);
    assert!(matches!(st.capabilities(&[r(10, 20)], Mode::Write, 1000), CapabilityPlan::Use { .. }));
    st.revoke_done(rv);
    assert_eq!(st.capabilities(&[r(10, 20)], Mode::Write, 1000), CapabilityPlan::NotHeld { range: r(10, 20) });
    // Reads may touch any bytes of an open file (the Read capability is whole-file).
    assert!(matches!(st.capabilities(&[r(10, 20)], Mode::Read, 1000), CapabilityPlan::Use { .. }));
}

#[test]
fn a_capability_near_its_expiry_is_asked_for_again() {
    let mut st = FileState::new(0, true);
    hold(&mut st, r(0, 100), 0);
    let now = 60_000 - RENEW_MARGIN_MS + 1;
    assert_eq!(
        st.capabilities(&[r(0, 10)], Mode::Write, now),
        CapabilityPlan::Use { have: vec![], ask: vec![r(0, 10)] }
    );
    let mut plain = FileState::new(0, false);
    hold(&mut plain, r(0, 100), 0);
    assert_eq!(plain.capabilities(&[r(0, 10)], Mode::Write, now), CapabilityPlan::NotNeeded);
    assert_eq!(plain.capabilities(&[r(0, 200)], Mode::Write, now), CapabilityPlan::NotHeld { range: r(0, 200) });
}

#[test]
fn every_unreachable_server_of_a_failed_fsync_is_asked_again() {
    let mut st = FileState::new(0, true);
    let (a, b, c) = (ServerId(1), ServerId(2), ServerId(3));
    st.written(&[(a, 11), (b, 22), (c, 33)]);
    let mut round = st.begin_sync(false).unwrap();
    assert_eq!(round.servers(), vec![(a, 11), (b, 22), (c, 33)]);
    round.answered(a, Err(Error::Unavailable("a is down".into())));
    round.answered(b, Err(Error::Unavailable("b is down".into())));
    round.answered(c, Ok(()));
    assert!(round.to_check().is_empty(), "one replica: nothing to forgive");
    assert!(st.end_sync(round).is_err());
    // Both failed servers, not only the first, are still owed an fsync.
    let round = st.begin_sync(false).unwrap();
    assert_eq!(round.servers(), vec![(a, 11), (b, 22)]);
    drop(round);
    // A round cut short (never ended) leaves them owed too.
    let mut round = st.begin_sync(false).unwrap();
    assert_eq!(round.servers(), vec![(a, 11), (b, 22)]);
    round.answered(a, Ok(()));
    round.answered(b, Ok(()));
    st.end_sync(round).unwrap();
    assert!(st.begin_sync(false).unwrap().servers().is_empty());
}

#[test]
fn a_disk_error_or_restart_is_reported_once_and_a_forgiven_replica_is_dropped() {
    let mut st = FileState::new(0, true);
    let (a, b) = (ServerId(1), ServerId(2));
    st.written(&[(a, 1), (b, 2)]);
    let mut round = st.begin_sync(true).unwrap();
    let restarted = Error::Rpc(pfs_common::Error::Remote {
        peer: "storage-1".into(),
        code: ErrorCode::Restarted,
        message: "restarted".into(),
        chain: None,
    });
    round.answered(a, Err(restarted));
    round.answered(b, Err(Error::Unavailable("b is down".into())));
    assert_eq!(round.to_check(), vec![a, b]);
    round.checked(a, false);
    round.checked(b, true);
    assert_eq!(st.end_sync(round).unwrap_err().code(), ErrorCode::Restarted);
    assert!(st.begin_sync(true).unwrap().servers().is_empty(), "reported once; the forgiven one is gone");
}

#[test]
fn a_server_that_restarted_between_unsynced_writes_is_reported_once_and_synced_for_the_later_ones() {
    let mut st = FileState::new(0, true);
    st.written(&[(ServerId(1), 5)]);
    st.written(&[(ServerId(1), 6)]);
    let mut round = st.begin_sync(false).unwrap();
    assert_eq!(round.servers(), vec![(ServerId(1), 6)], "the process that took the latest writes is synced");
    round.answered(ServerId(1), Ok(()));
    let e = st.end_sync(round).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Restarted, "{e}");
    assert!(matches!(e, Error::Restarted { server: ServerId(1) }), "{e}");
    assert!(st.begin_sync(false).unwrap().servers().is_empty(), "reported once");
}

#[test]
fn a_write_answered_while_a_round_waits_stays_owed_to_the_next_round() {
    let mut st = FileState::new(0, true);
    let a = ServerId(1);
    st.written(&[(a, 5)]);
    let mut round = st.begin_sync(false).unwrap();
    // The round waits for its answers without the I/O lock: another write lands meanwhile,
    // perhaps after the server synced.
    st.written(&[(a, 5)]);
    round.answered(a, Ok(()));
    st.end_sync(round).unwrap();
    assert_eq!(st.begin_sync(false).unwrap().servers(), vec![(a, 5)], "the later write is still owed an fsync");
}

#[test]
fn a_write_back_failure_is_reported_by_the_next_fsync_only() {
    let mut st = FileState::new(0, true);
    st.writeback_failed(Error::Unavailable("first".into()));
    st.writeback_failed(Error::Unavailable("second".into()));
    assert_eq!(st.begin_sync(false).unwrap_err().to_string(), "first");
    assert!(st.begin_sync(false).is_ok());
}

#[test]
fn the_size_is_recorded_when_it_grew_and_again_after_a_failure() {
    let mut st = FileState::new(100, true);
    st.wrote(50);
    let rep = st.size_report(false);
    assert_eq!(rep, None, "an overwrite: the mtime waits for fsync or close");
    let rep = st.size_report(true).unwrap();
    assert_eq!(rep.size, 0, "an overwrite raises nothing");
    st.wrote(200);
    let rep = st.size_report(false).unwrap();
    assert_eq!(rep.size, 200);
    st.size_report_failed(rep);
    assert_eq!(st.size_report(true).map(|r| r.size), Some(200), "again after the failure, with the mtime");
    // A grant's size replaces ours unless our writes grew it further unrecorded.
    hold(&mut st, r(0, 10), 0);
    assert_eq!(st.size(), 200);
    st.wrote(300);
    let Need::Acquire(t) = st.need(Mode::Write, r(400, 410), r(400, 410), None, |_| false) else { panic!() };
    st.granted(t, grant(r(400, 410), 250, None), 0);
    assert_eq!(st.size(), 300, "our unrecorded growth wins");
    st.truncated(10);
    assert_eq!((st.size(), st.size_report(true)), (10, None));
}
