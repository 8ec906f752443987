//! The open file's protocol where it used to have holes, on a real cluster: an fsync that
//! failed on several servers asks every one of them again next time; a truncate never runs
//! without its Write token, even when a revoke lands while it waits for I/O in flight; a
//! `File` dropped without `close` is closed in the background (size recorded, tokens given
//! back, the open ended on pfs-meta).

use pfs_client::{Client, ClientOptions, CreateOptions, File, CLOSE_DELAY};
use pfs_common::token::{ByteRange, Mode};
use pfs_common::{ErrorCode, ServerId};
use pfs_testkit::{random_bytes, DaemonKind, LocalCluster};
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};

/// 4 KiB blocks, 8 KiB chunks over `stripes` servers, one copy of each.
fn layout(stripes: u32) -> CreateOptions {
    CreateOptions {
        block_size: Some(4096),
        chunk_size: Some(8192),
        stripe_count: Some(stripes),
        replicas: Some(1),
        exclusive: true,
        attrs: None,
    }
}

/// A client without a block cache (every write goes to its storage server at once) and with
/// `request_ms` as its request deadline.
async fn uncached_client(cluster: &LocalCluster, request_ms: u64) -> Client {
    let mut o = ClientOptions::from_config(cluster.config()).unwrap();
    o.cache_blocks = 0;
    o.request_timeout_ms = request_ms;
    Client::connect(o).await.unwrap()
}

/// The server holding chunk `chunk` of `f` (one replica).
async fn holder(f: &File, chunk: u64) -> ServerId {
    let chain = f.chain(chunk).await.unwrap();
    let mut writers = chain.writers();
    let s = writers.next().unwrap();
    assert!(writers.next().is_none(), "one replica");
    s
}

/// Polls `f` once (it goes as far as it can without waiting).
async fn poll_once<F: Future>(mut f: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
}

/// Polls `f` until it is true, failing after `limit` (a condition polled for, not a sleep
/// standing in for one).
async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Hole 1: an fsync that could not reach two servers must ask both again. It used to put back
/// only the first failure it looked at, so the next fsync never asked the other one: a
/// restart of that server (its unsynced writes possibly gone) went unreported and fsync said
/// Ok. Which failure came first is a race, so each of the two servers is the restarted one
/// in turn; each time the second fsync must fail naming it.
#[tokio::test(flavor = "multi_thread")]
async fn an_fsync_failed_on_two_servers_asks_both_again() {
    let mut cluster = LocalCluster::start(2).await.unwrap();
    let client = uncached_client(&cluster, 1500).await;
    for round in 0..2usize {
        let path = format!("/f{round}");
        let f = client.create(path.as_str(), &layout(2)).await.unwrap();
        let (a, b) = (holder(&f, 0).await, holder(&f, 1).await);
        assert_ne!(a, b, "the two chunks are on two servers");
        // One write on each server, not yet durable.
        f.write_at(0, &random_bytes(16384, round as u64)).await.unwrap();
        cluster.suspend(DaemonKind::Storage(a));
        cluster.suspend(DaemonKind::Storage(b));
        let e = f.fsync().await.expect_err("fsync with both servers stopped");
        assert_eq!(e.code(), ErrorCode::TimedOut, "{e}");
        cluster.resume(DaemonKind::Storage(a));
        cluster.resume(DaemonKind::Storage(b));
        // One server restarts, the lower id first, then the other: what it had not synced may
        // be gone.
        let gone = if round == 0 { a.min(b) } else { a.max(b) };
        cluster.restart(DaemonKind::Storage(gone)).await.unwrap().close().await.unwrap();
        let e = f.fsync().await.expect_err("fsync after a server holding unsynced writes restarted");
        assert!(e.to_string().contains(&gone.to_string()), "the error names {gone}: {e}");
        assert!(e.to_string().contains(&path), "the error names the file: {e}");
        // Reported once, as Linux reports a failed write-back once; then synced.
        f.fsync().await.unwrap();
        f.close().await.unwrap();
    }
}

/// Hole 2: a truncate whose Write token is revoked while it waits for a write in flight must
/// get the token back before it cuts anything. The write is held up by a stopped storage
/// server; another client's write queues a revoke behind it; the truncate is queued behind
/// the revoke. It used to check its token only before waiting, and ran without one.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncate_revoked_while_it_waits_gets_its_token_back() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let a = uncached_client(&cluster, 30_000).await;
    let b = cluster.client().await.unwrap();
    let f = a.create("/t", &layout(1)).await.unwrap();
    let server = holder(&f, 0).await;
    let data = random_bytes(20_000, 7);
    f.write_at(0, &data).await.unwrap();
    assert!(
        f.tokens().iter().any(|(r, m)| *m == Mode::Write && r.contains(&ByteRange::from(4096))),
        "a holds a Write token past the truncate's size: {:?}",
        f.tokens()
    );

    cluster.suspend(DaemonKind::Storage(server));
    let mut in_flight = pin!(f.write_at(0, &data[..100]));
    assert!(poll_once(in_flight.as_mut()).await.is_pending(), "the write waits for the stopped server");
    // b's write revokes a's token; a's revoke waits for the write in flight.
    let g = b.open("/t").await.unwrap();
    let other = tokio::spawn(async move {
        g.write_at(15_000, b"written by b").await.unwrap();
        g.fsync().await.unwrap();
        g.close().await.unwrap();
    });
    eventually("a received the revoke", Duration::from_secs(20), async || a.stats().revokes_pending > 0).await;
    // The truncate finds its token held and queues behind the revoke.
    let mut truncate = pin!(f.truncate(4096));
    assert!(poll_once(truncate.as_mut()).await.is_pending(), "the truncate waits behind the revoke");

    cluster.resume(DaemonKind::Storage(server));
    let (w, t) = tokio::join!(in_flight, truncate);
    assert_eq!(w.unwrap(), 100);
    t.expect("a truncate the application was entitled to make");
    // b was granted its token when a's revoke was done, before a asked again (a session's
    // acquires follow its releases): the truncate could run only after revoking b.
    let seen = b.stats();
    assert!(seen.revokes + seen.revokes_pending >= 1, "the truncate ran without revoking b's token: {seen:?}");
    other.await.unwrap();
    // Either b's write came first (it got the token first) and the truncate cut it, or b's
    // grant crossed the truncate's re-acquire and b wrote again after the truncate. Anything
    // else (b's bytes reported but gone, old bytes past the cut) means the truncate and b's
    // write overlapped without one holding the token.
    let size = b.stat("/t").await.unwrap().size;
    let h = b.open("/t").await.unwrap();
    let mut buf = vec![0xAAu8; 20_000];
    let n = h.read_at(0, &mut buf).await.unwrap();
    assert_eq!(n as u64, size);
    assert!(buf[..4096] == data[..4096], "the bytes before the cut are kept");
    match size {
        4096 => {}
        15_012 => {
            assert!(buf[4096..15_000].iter().all(|&x| x == 0), "the cut bytes read as zeros");
            assert_eq!(&buf[15_000..15_012], b"written by b", "b's write after the truncate is kept");
        }
        other => panic!("size {other} after the truncate to 4096 and b's 12 bytes at 15000"),
    }
}

/// Hole 4: a `File` dropped without `close` used to keep its state, its tokens and its
/// client alive: the size of its writes was never recorded and its tokens were held until
/// another client revoked them. Now the drop closes it in the background.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_dropped_without_close_is_closed() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let a = cluster.client().await.unwrap();
    let b = cluster.client().await.unwrap();
    let f = a.create("/d", &layout(2)).await.unwrap();
    let id = f.id();
    let data = random_bytes(30_000, 3);
    f.write_at(0, &data).await.unwrap();
    drop(f);
    // The background close writes back, records the size and gives the tokens back.
    eventually("the dropped file closed", CLOSE_DELAY + Duration::from_secs(20), async || {
        let s = a.stats();
        s.open_files == 0 && s.releases_pending == 0
    })
    .await;
    assert_eq!(b.stat_id(id).await.unwrap().size, data.len() as u64, "the dropped file's size is recorded");
    let g = b.open("/d").await.unwrap();
    let mut buf = vec![0u8; data.len()];
    assert_eq!(g.read_at(0, &mut buf).await.unwrap(), data.len());
    assert!(buf == data, "the dropped file's writes read back");
    g.write_at(0, b"b writes without a revoke").await.unwrap();
    g.close().await.unwrap();
    assert_eq!(a.stats().revokes, 0, "a gave its tokens back when the file was dropped");
    // The open ended on pfs-meta: unlinked, the file goes at once (an open one would stay as
    // an orphan).
    b.unlink("/d").await.unwrap();
    eventually(
        "the unlinked file gone",
        CLOSE_DELAY + Duration::from_secs(20),
        async || matches!(b.stat_id(id).await, Err(e) if e.code() == ErrorCode::NotFound),
    )
    .await;
}
