//! Storage servers' connections to each other (chain forwarding) against real daemons: a
//! successor that hangs in the handshake (SIGSTOPped: the kernel completes its TCP accepts,
//! the process never answers) holds up only the connects to itself, not those to the other
//! peers of the same server.

use pfs_client::{Client, CreateOptions};
use pfs_common::chain::ChainRef;
use pfs_common::config::Config;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::token::SessionId;
use pfs_common::wire::storage::{StorageRequest, Written};
use pfs_common::wire::PeerRole;
use pfs_common::{FileId, ServerId};
use pfs_testkit::{raw, DaemonKind, LocalCluster};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HEAD: ServerId = ServerId(1);
const STOPPED: ServerId = ServerId(2);
const OTHER: ServerId = ServerId(3);

/// Polls `f` every 20 ms until it is true; panics naming `what` after 60 s.
async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let end = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < end, "not within 60 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn up(client: &Client, server: ServerId) -> bool {
    client.servers().await.unwrap().iter().any(|s| s.id == server && s.up)
}

/// The chunk of `path` whose chain `HEAD` heads, with its chain and the successor of `HEAD`.
async fn chunk_headed_by_head(client: &Client, path: &str) -> (FileId, u64, u64, ChainRef, ServerId) {
    let attr = client.stat(path).await.unwrap();
    let layout = attr.layout.unwrap();
    for c in 0..layout.stripe_count() as u64 {
        let chain = client.chain(layout.chain(c)).await.unwrap();
        if chain.head() == Some(HEAD) {
            let next = chain.successor(HEAD).unwrap_or_else(|| panic!("{HEAD} has no successor in {chain:?}"));
            return (attr.id, c, layout.chunk_size(), chain.at(), next);
        }
    }
    panic!("no chunk of {path} on a chain headed by {HEAD}");
}

/// A 4 KiB chunk write of `session` sent straight to `HEAD` (which forwards it down its chain).
async fn write_at_head(
    conn: RpcClient<StorageRequest>,
    config: Arc<Config>,
    session: SessionId,
    at: (FileId, u64, u64, ChainRef),
) -> pfs_common::Result<Written> {
    conn.call(raw::block_write(&config, session, at), &[7u8; 4096]).await.map(|(w, _)| w)
}

/// True when process `pid` holds an established TCP connection to `to` (from its open
/// sockets in `/proc/<pid>/fd` and the kernel's table in `/proc/net/tcp`).
fn connected(pid: u32, to: SocketAddr) -> bool {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let SocketAddr::V4(to) = to else { panic!("loopback IPv4 expected, not {to}") };
    // /proc/net/tcp: "sl local rem st ... inode"; addresses as little-endian hex, ports hex.
    let remote = format!("{:08X}:{:04X}", u32::from_le_bytes(to.ip().octets()), to.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 9 && f[2] == remote && f[3] == "01" && inodes.iter().any(|i| i == f[9])
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successor_hung_in_the_handshake_stalls_no_connect_to_another_peer() {
    let mut cluster = LocalCluster::start_with(3, |c| {
        // A connect to the stopped server hangs in its handshake for the whole test.
        c.timeouts.connect_ms = 600_000;
        // The stopped server stays in its chains (it is never declared down meanwhile).
        c.timeouts.server_down_ms = 600_000;
        c.timeouts.idle_ms = 1_200_000;
    })
    .await
    .unwrap();
    let admin = cluster.client().await.unwrap();

    // Chains always continue in server-id order among the servers up when they are made, so
    // for storage-1 to forward to two different peers, one chain is made while storage-2 is
    // away: /two (2 replicas) gets storage-1 -> storage-3, then /three (3 replicas, storage-2
    // back) gets storage-1 -> storage-2 -> storage-3.
    cluster.kill(DaemonKind::Storage(STOPPED));
    wait_until("pfs-meta counts storage-2 down", || async { !up(&admin, STOPPED).await }).await;
    let two = CreateOptions { replicas: Some(2), ..Default::default() };
    admin.create("/two", &two).await.unwrap().close().await.unwrap();
    cluster.restart(DaemonKind::Storage(STOPPED)).await.unwrap().close().await.unwrap();
    let three = CreateOptions { replicas: Some(3), ..Default::default() };
    admin.create("/three", &three).await.unwrap().close().await.unwrap();
    let (f2, c2, cs2, chain2, next2) = chunk_headed_by_head(&admin, "/two").await;
    let (f3, c3, cs3, chain3, next3) = chunk_headed_by_head(&admin, "/three").await;
    assert_eq!((next2, next3), (OTHER, STOPPED), "storage-1 forwards /two to storage-3 and /three to storage-2");

    // storage-2 stops before storage-1 ever connected to it (or to storage-3: no write yet).
    let session = admin.session().unwrap();
    let head_addr = cluster.config().storage(HEAD).unwrap().address;
    let opts = raw::cluster_options(cluster.config(), PeerRole::Client, "writer");
    // The write to the stopped server's chain waits as long as storage-1's connect does.
    let patient = ConnectOptions { request_timeout: Duration::from_secs(1_200), ..opts.clone() };
    let to_stopped: RpcClient<StorageRequest> =
        RpcClient::connect(head_addr, "storage-1", &patient, None).await.unwrap();
    let to_head: RpcClient<StorageRequest> = RpcClient::connect(head_addr, "storage-1", &opts, None).await.unwrap();
    cluster.suspend(DaemonKind::Storage(STOPPED));

    let stuck = tokio::spawn(write_at_head(to_stopped, cluster.config().clone(), session, (f3, c3, cs3, chain3)));
    // storage-1 is in the handshake with storage-2: the kernel accepted its connection, the
    // stopped process never answers.
    let head_pid = cluster.pid(DaemonKind::Storage(HEAD)).unwrap();
    let stopped_addr = cluster.config().storage(STOPPED).unwrap().address;
    wait_until("storage-1 connects to the stopped storage-2", || async { connected(head_pid, stopped_addr) }).await;

    // A write whose successor is storage-3 completes meanwhile, on both replicas.
    let written = write_at_head(to_head, cluster.config().clone(), session, (f2, c2, cs2, chain2))
        .await
        .expect("a write forwarded to storage-3 waited behind storage-1's connect to the stopped storage-2");
    let servers: Vec<ServerId> = written.boots.iter().map(|(s, _)| *s).collect();
    assert_eq!(servers, [HEAD, OTHER]);
    assert!(!stuck.is_finished(), "the write forwarded to the stopped storage-2 cannot have finished");

    // Continued, storage-2 answers the handshake and the held-up write completes too.
    cluster.resume(DaemonKind::Storage(STOPPED));
    let written = tokio::time::timeout(Duration::from_secs(60), stuck).await.expect("answered").unwrap().unwrap();
    let servers: Vec<ServerId> = written.boots.iter().map(|(s, _)| *s).collect();
    assert_eq!(servers, [HEAD, STOPPED, OTHER]);
}
