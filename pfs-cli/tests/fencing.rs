//! Fencing with a storage server that never confirms: a `pfs-storage` process stopped with
//! SIGSTOP (alive, silent: a hung disk or a stalled VM) while an evicted client's token waits
//! to be handed on. Nothing unrelated waits for it, the token moves only once that server is
//! declared down (and can no longer accept the evicted client's writes), and its late writes
//! are refused when the server continues.

use pfs_client::{ByteRange, Client, CreateOptions, Mode};
use pfs_common::chain::ChainRef;
use pfs_common::ids::ServerId;
use pfs_common::rpc::RpcClient;
use pfs_common::token::SessionId;
use pfs_common::wire::storage::{ReadChunk, StorageRequest};
use pfs_common::wire::PeerRole;
use pfs_common::{ErrorCode, FileId};
use pfs_testkit::{ok, raw, run_tool, DaemonKind, LocalCluster, Probe};
use std::time::{Duration, Instant};

const PFS: &str = env!("CARGO_BIN_EXE_pfs");
const PROBE: &str = env!("CARGO_BIN_EXE_pfs-probe");
const STOPPED: ServerId = ServerId(2);

/// A client process that holds a Write token over all of `path` (with dirty cached bytes),
/// then is SIGKILLed: pfs-meta evicts it when its connection closes. Returns its session.
fn evicted_holder(cluster: &LocalCluster, path: &str) -> SessionId {
    let mut holder = Probe::start(PROBE, cluster.config_path());
    holder.ok(&format!("open {path}"));
    holder.ok("write 0 4096 7"); // a Write token over [0, ∞), the bytes only in its cache
    let session = u64::from_str_radix(&holder.ok("session"), 16).unwrap();
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    session
}

/// A chunk of `file` that lives on `server`, with its chain.
async fn chunk_on(client: &Client, path: &str, server: ServerId) -> (FileId, u64, u64, ChainRef) {
    let attr = client.stat(path).await.unwrap();
    let layout = attr.layout.unwrap();
    for c in 0..layout.stripe_count() as u64 {
        let chain = client.chain(layout.chain(c)).await.unwrap();
        if chain.head() == Some(server) {
            return (attr.id, c, layout.chunk_size(), chain.at());
        }
    }
    panic!("no chunk of {path} on {server}");
}

/// A raw chunk write carrying `session`, straight to storage server `server`.
async fn raw_write(
    cluster: &LocalCluster,
    server: ServerId,
    session: SessionId,
    at: (FileId, u64, u64, ChainRef),
) -> ErrorCode {
    let opts = raw::cluster_options(cluster.config(), PeerRole::Client, "late writer");
    let addr = cluster.config().storage(server).unwrap().address;
    let conn: RpcClient<StorageRequest> = RpcClient::connect(addr, "storage", &opts, None).await.unwrap();
    // A capability as valid as the one the holder had: the fence must refuse the write anyway.
    let write = raw::block_write(cluster.config(), session, at);
    match conn.call(write, &[9u8; 4096]).await {
        Ok(_) => panic!("the evicted session's write to {server} was accepted"),
        Err(e) => e.code(),
    }
}

/// Whether `server` is up in pfs-meta's registry.
async fn up(client: &Client, server: ServerId) -> bool {
    client.servers().await.unwrap().iter().any(|s| s.id == server && s.up)
}

/// Polls `f` every 20 ms until it is true; panics naming `what` after 60 s.
async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let end = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < end, "not within 60 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_fence_stalls_nothing_unrelated() {
    // Fence timeout and storage lease far longer than the test: while storage-2 is stopped,
    // the evicted holder's token can move only once storage-2 confirms.
    let cluster = LocalCluster::start_with(4, |c| {
        c.tokens.fence_timeout_ms = 600_000;
        c.timeouts.server_down_ms = 600_000;
        c.timeouts.idle_ms = 1_200_000;
    })
    .await
    .unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let admin = cluster.client().await.unwrap();
    admin.create("/touching", &CreateOptions::default()).await.unwrap().close().await.unwrap();
    let file = admin.stat("/touching").await.unwrap().id;

    cluster.suspend(DaemonKind::Storage(STOPPED));
    let dead = evicted_holder(&cluster, "/touching");
    // Another client wants the evicted holder's bytes: held back until storage-2 confirms.
    let contender = cluster.client().await.unwrap();
    let held_back = tokio::spawn(async move {
        contender.acquire_token(file, Mode::Write, ByteRange::new(0, 10), ByteRange::new(0, 10)).await
    });

    // Meanwhile everything that does not need storage-2 goes on.
    assert!(ok(run_tool(PFS, &cfg, &["ls", "/"])).contains("touching"));
    assert!(ok(run_tool(PFS, &cfg, &["stat", "/touching"])).contains("size"));
    ok(run_tool(PFS, &cfg, &["mkdir", "-p", "/elsewhere/deeper"]));
    let other = admin.create("/other", &CreateOptions::default()).await.unwrap();
    let r = admin.acquire_token(other.id(), Mode::Write, ByteRange::new(0, 100), ByteRange::from(0)).await.unwrap();
    assert!(r.contains(&ByteRange::new(0, 100)));
    // Data on a file striped elsewhere is written, made durable and read back.
    let data = pfs_testkit::random_bytes(300_000, 5);
    let single = CreateOptions { stripe_count: Some(1), ..Default::default() };
    let mut n = 0;
    let f = loop {
        let f = admin.create(&format!("/away{n}"), &single).await.unwrap();
        if f.chain(0).await.unwrap().head() != Some(STOPPED) {
            break f;
        }
        n += 1;
    };
    f.write_at(0, &data).await.unwrap();
    f.fsync().await.unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(f.read_at(0, &mut back).await.unwrap(), data.len());
    assert!(back == data);
    assert!(admin.session().is_ok(), "keep-alives went on");

    // All of that returned while the fence is still pending on the stopped server.
    assert!(!held_back.is_finished(), "the evicted holder's token moved before storage-2 fenced it");
    cluster.resume(DaemonKind::Storage(STOPPED));
    // Continued, storage-2 fences the session and confirms; the token moves.
    let granted = tokio::time::timeout(Duration::from_secs(60), held_back).await.expect("granted").unwrap().unwrap();
    assert!(granted.contains(&ByteRange::new(0, 10)));
    let at = chunk_on(&admin, "/touching", STOPPED).await;
    assert_eq!(raw_write(&cluster, STOPPED, dead, at).await, ErrorCode::Evicted);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_storage_server_is_declared_down_before_the_token_moves() {
    let cluster = LocalCluster::start_with(4, |c| {
        c.tokens.fence_timeout_ms = 1_000;
        c.timeouts.heartbeat_ms = 200;
        c.timeouts.server_down_ms = 2_000;
    })
    .await
    .unwrap();
    let admin = cluster.client().await.unwrap();
    admin.create("/t", &CreateOptions::default()).await.unwrap().close().await.unwrap();
    let file = admin.stat("/t").await.unwrap().id;
    let at = chunk_on(&admin, "/t", STOPPED).await;

    cluster.suspend(DaemonKind::Storage(STOPPED));
    let dead = evicted_holder(&cluster, "/t");
    let contender = cluster.client().await.unwrap();
    let granted = tokio::time::timeout(
        Duration::from_secs(60),
        contender.acquire_token(file, Mode::Write, ByteRange::new(0, 10), ByteRange::new(0, 10)),
    )
    .await
    .expect("granted once storage-2 is declared down")
    .unwrap();
    assert!(granted.contains(&ByteRange::new(0, 10)));
    // Granted only once the stopped server was declared down (it is still stopped, so it
    // cannot have registered again since).
    assert!(!up(&admin, STOPPED).await, "the token moved while storage-2 was still counted up");

    // Continued, the stopped server refuses the evicted session's late write: it has no lease
    // until it registers again, and registering teaches it the fence.
    cluster.resume(DaemonKind::Storage(STOPPED));
    let refused = raw_write(&cluster, STOPPED, dead, at).await;
    assert!(matches!(refused, ErrorCode::NoLease | ErrorCode::Evicted), "{refused:?}");
    wait_until("storage-2 registers again", || up(&admin, STOPPED)).await;
    assert_eq!(raw_write(&cluster, STOPPED, dead, at).await, ErrorCode::Evicted);
    // Nothing of the evicted holder landed: its bytes were only in its cache.
    let addr = cluster.config().storage(STOPPED).unwrap().address;
    let opts = raw::cluster_options(cluster.config(), PeerRole::Client, "reader");
    let conn: RpcClient<StorageRequest> = RpcClient::connect(addr, "storage", &opts, None).await.unwrap();
    let session = admin.session().unwrap();
    let cap = raw::mint_capability(cluster.config(), at.0, ByteRange::ALL, Mode::Read, session, at.2);
    let capabilities = cap.into_iter().collect();
    let read = ReadChunk {
        file: at.0,
        chunk: at.1,
        offset: 0,
        len: 4096,
        chain: at.3,
        chunk_size: at.2,
        session,
        capabilities,
    };
    let (_, data) = conn.call(read, &[]).await.unwrap();
    assert!(data.is_empty(), "a write of the evicted session landed on {STOPPED}");
}
