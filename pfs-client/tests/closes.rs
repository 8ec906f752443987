//! Closes on pfs-meta: the close of a file never read or written travels with the client's
//! next create or open (or alone, after a short delay, when none comes), and closes count
//! opens, so a file stays open on pfs-meta as long as a handle of it is open.

use pfs_client::{CreateOptions, CLOSE_DELAY};
use pfs_common::ErrorCode;
use pfs_testkit::LocalCluster;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn closes_are_carried_counted_and_sent_alone_when_idle() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let a = cluster.client().await.unwrap();
    let b = cluster.client().await.unwrap();
    let f = a.create("/f", &CreateOptions::default()).await.unwrap();
    let id = f.id();
    f.close().await.unwrap();
    // Reopen churn: each close is still pending when the next open carries it, ahead of
    // that open; two handles at once share one state and one close.
    for _ in 0..20 {
        let h1 = a.open("/f").await.unwrap();
        let h2 = a.open("/f").await.unwrap();
        h1.close().await.unwrap();
        h2.close().await.unwrap();
    }
    let held = a.open("/f").await.unwrap();
    // Every earlier close took away only its own opens: `a` still has the file open, so
    // another client's unlink keeps it as an orphan.
    b.unlink("/f").await.unwrap();
    assert_eq!(b.stat_id(id).await.unwrap().nlink, 0, "an open file unlinked is an orphan");
    // Closed, then idle: the close goes alone after CLOSE_DELAY, and the orphan with it.
    held.close().await.unwrap();
    let deadline = Instant::now() + CLOSE_DELAY + Duration::from_secs(20);
    loop {
        match b.stat_id(id).await {
            Err(e) if e.code() == ErrorCode::NotFound => break,
            r => assert!(Instant::now() < deadline, "the orphan is still there: {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A file only read closes cleanly after its client's session ended (nothing of it can be
/// lost); a file with writes not yet made durable reports the ended session instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_file_closes_cleanly_after_its_session_ended() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let a = cluster.client().await.unwrap();
    let f = a.create("/r", &CreateOptions::default()).await.unwrap();
    f.write_at(0, b"some bytes").await.unwrap();
    f.close().await.unwrap();
    let reader = a.open("/r").await.unwrap();
    let mut buf = [0u8; 10];
    assert_eq!(reader.read_at(0, &mut buf).await.unwrap(), 10);
    let writer = a.create("/w", &CreateOptions::default()).await.unwrap();
    writer.write_at(0, b"not durable yet").await.unwrap();
    a.close().await.unwrap();
    reader.close().await.expect("closing a file only read after the session ended");
    let e = writer.close().await.expect_err("closing a file with unflushed writes after the session ended");
    assert_eq!(e.code(), ErrorCode::Evicted, "{e}");
}
