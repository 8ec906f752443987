//! Orphans are proven before they are removed, and a committed chunk that a storage server no
//! longer has reads as Lost (naming file, chunk and server), never as zeros, however it went.
//!
//! Against real daemons: a raw connection asking pfs-meta to remove the chunks of a file that
//! is being copied in (with the client key, and as an administrator with the cluster secret);
//! a writer's chunks past the size pfs-meta recorded; chunk files cut or deleted behind a
//! running server's back; a chunk removed by a peer speaking as pfs-meta.

use pfs_client::{Client, CreateOptions, OrphanCopy};
use pfs_common::auth::{Auth, Credentials};
use pfs_common::ids::chunk_file_name;
use pfs_common::rpc::RpcClient;
use pfs_common::wire::registry::RemoveOrphan;
use pfs_common::wire::storage::{ListChunks, ListedState, RemoveChunk, StorageRequest};
use pfs_common::wire::{MetaRequest, PeerRole};
use pfs_common::{ErrorCode, FileId, ServerId};
use pfs_testkit::raw;
use pfs_testkit::{ok, random_bytes, run_tool, sha256_hex, LocalCluster};
use std::process::Command;
use std::time::{Duration, Instant};

const PFS: &str = env!("CARGO_BIN_EXE_pfs");
const PFS_CP: &str = env!("CARGO_BIN_EXE_pfs-cp");

async fn connect<R: serde::Serialize>(addr: std::net::SocketAddr, role: PeerRole, auth: Auth) -> RpcClient<R> {
    RpcClient::connect(addr, "server", &raw::connect_options(role, "intruder", auth), None).await.unwrap()
}

/// pfs-meta as a node holding only the client key sees it, and as an administrator.
async fn intruders(cluster: &LocalCluster) -> (RpcClient<MetaRequest>, RpcClient<MetaRequest>) {
    let meta = cluster.config().meta[0].address;
    let client_key = raw::role_key(cluster.config(), PeerRole::Client);
    let only_client = Auth { credentials: Some(Credentials::Client(client_key)), protect_data: false };
    let client = connect(meta, PeerRole::Client, only_client).await;
    let admin = connect(meta, PeerRole::Admin, cluster.config().auth(false).unwrap()).await;
    (client, admin)
}

/// Every chunk of `file` each storage server lists now, as (server, chunk, listed state).
async fn listed_chunks(cluster: &LocalCluster, file: FileId) -> Vec<(ServerId, u64, ListedState)> {
    let mut out = Vec::new();
    for s in &cluster.config().storage {
        let conn: RpcClient<StorageRequest> =
            connect(s.address, PeerRole::Storage, cluster.config().auth(true).unwrap()).await;
        let mut after = None;
        loop {
            let page = conn.ask(ListChunks { after, limit: 4096, verify: false }).await.unwrap();
            for c in page.chunks.iter().filter(|c| c.file == file) {
                out.push((s.id, c.chunk, ListedState { boot: page.boot, change: c.change }));
            }
            after = page.chunks.last().map(|c| (c.file, c.chunk));
            if !page.more {
                break;
            }
        }
    }
    out
}

/// Asks for the removal of every listed chunk of `file` through both intruders: the client
/// key is always Forbidden (Denied, naming the administrator), the administrator is Denied
/// (not an orphan). Returns how many removals were tried.
async fn try_removals(cluster: &LocalCluster, file: FileId, why: &str) -> usize {
    let (client, admin) = intruders(cluster).await;
    let chunks = listed_chunks(cluster, file).await;
    for &(server, chunk, listed) in &chunks {
        let copy = OrphanCopy::Chunk { chunk, listed };
        let e = client.ask(RemoveOrphan { server, file, copy }).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Denied, "chunk {chunk} on {server} with the client key: {e}");
        assert!(e.to_string().contains("administrator"), "{e}");
        let e = admin.ask(RemoveOrphan { server, file, copy }).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Denied, "chunk {chunk} on {server} as an administrator: {e}");
        assert!(e.to_string().contains("not an orphan") && e.to_string().contains(why), "{why}: {e}");
    }
    for server in cluster.config().storage.iter().map(|s| s.id) {
        let e = admin.ask(RemoveOrphan { server, file, copy: OrphanCopy::File }).await.unwrap_err();
        assert!(e.to_string().contains("exists"), "a live file as an orphan: {e}");
    }
    chunks.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn removals_during_a_copy_are_refused_and_the_copy_keeps_every_byte() {
    let cluster = LocalCluster::start(4).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let data = random_bytes(128 << 20, 41);
    let src = cluster.dir().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let mut copy = Command::new(PFS_CP)
        .args(["--config", cfg.to_str().unwrap(), src.to_str().unwrap(), "pfs:/big"])
        .spawn()
        .unwrap();
    // Once chunks of the destination are on the servers, the copy is stopped where it is and
    // every chunk listed is attacked; then it goes on.
    let client = cluster.client().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let file = loop {
        assert!(Instant::now() < deadline, "no chunk of /big appeared within 60 s");
        assert!(copy.try_wait().unwrap().is_none(), "pfs-cp finished before any chunk was seen");
        if let Ok(a) = client.stat("/big").await {
            if !listed_chunks(&cluster, a.id).await.is_empty() {
                break a.id;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    unsafe { libc::kill(copy.id() as i32, libc::SIGSTOP) };
    let stopped_mid_copy = copy.try_wait().unwrap().is_none();
    let tried = try_removals(&cluster, file, "open").await;
    unsafe { libc::kill(copy.id() as i32, libc::SIGCONT) };
    assert!(copy.wait().unwrap().success(), "pfs-cp failed");
    assert!(tried > 0 && stopped_mid_copy, "the removals were tried while the copy was under way ({tried} chunks)");

    // Closed now: the chunks are within its size on their chains, and committed.
    assert!(try_removals(&cluster, file, "within the file").await >= 128);
    let back = cluster.dir().join("back.bin");
    ok(run_tool(PFS_CP, &cfg, &["pfs:/big", back.to_str().unwrap()]));
    assert_eq!(sha256_hex(&std::fs::read(&back).unwrap()), sha256_hex(&data), "the copy back differs");
    ok(run_tool(PFS, &cfg, &["getstripe", "--verify", "/big"]));
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writers_chunks_past_the_recorded_size_are_not_orphans() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let client = cluster.client().await.unwrap();
    let f = client.create("/w", &CreateOptions { stripe_count: Some(2), ..Default::default() }).await.unwrap();
    // 4 MiB written straight to the servers (whole chunks bypass the cache); pfs-meta still
    // records size 0 until the fsync.
    let data = random_bytes(4 << 20, 42);
    f.write_at(0, &data).await.unwrap();
    assert_eq!(client.stat("/w").await.unwrap().size, 0, "the size is recorded only at fsync");
    // Open and holding a Write token: nothing of it is an orphan, whoever asks.
    assert!(try_removals(&cluster, f.id(), "open").await >= 4);
    f.fsync().await.unwrap();
    f.close().await.unwrap();
    let g = client.open("/w").await.unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(g.read_at(0, &mut back).await.unwrap(), data.len());
    assert!(back == data, "the writer's bytes");
    g.close().await.unwrap();

    // `pfs fsck --repair` on the quiet cluster finds nothing to remove.
    let out = ok(run_tool(PFS, cluster.config_path(), &["fsck", "--repair"]));
    assert!(out.contains("0 problems"), "{out}");
    client.close().await.unwrap();
}

/// Reads of `path` fail naming chunk `chunk` of it and `server`, through the library and
/// pfs-cp, and nothing reads as zeros.
async fn reads_fail_as_lost(cluster: &LocalCluster, client: &Client, path: &str, chunk: u64, server: ServerId) {
    let f = client.open(path).await.unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let r = f.read_at(chunk << 20, &mut buf).await;
    let zeros = buf.iter().filter(|b| **b == 0).count();
    let e =
        r.map(|n| format!("{n} bytes, {zeros} of them zeros")).expect_err(&format!("reading chunk {chunk} of {path}"));
    let msg = e.to_string();
    assert_eq!(e.code(), ErrorCode::Lost, "{msg}");
    assert!(matches!(e, pfs_client::Error::Chunk { chunk: c, .. } if c == chunk), "{msg}");
    assert!(msg.contains(&format!("chunk {chunk}")) && msg.contains(&server.to_string()), "{msg}");
    f.close().await.unwrap();
    let out = cluster.dir().join("out.bin");
    let copy = run_tool(PFS_CP, cluster.config_path(), &[&format!("pfs:{path}"), out.to_str().unwrap()]);
    assert!(!copy.status.success(), "a copy of {path} with a lost chunk succeeded");
    let err = String::from_utf8_lossy(&copy.stderr);
    assert!(err.contains("lost") && err.contains(&server.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_chunks_gone_from_a_running_server_read_as_lost() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let server = ServerId(1);
    let dir = cluster.config().storage_dir(&cluster.config().storage[0]);
    let data = random_bytes(4 << 20, 43);
    let src = cluster.dir().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    for name in ["cut", "deleted", "removed"] {
        ok(run_tool(PFS_CP, &cfg, &[src.to_str().unwrap(), &format!("pfs:/{name}")]));
    }
    let client = cluster.client().await.unwrap();
    let id = |name: &str| {
        let client = client.clone();
        let name = name.to_string();
        async move { client.stat(&name).await.unwrap().id }
    };

    // Chunk 1 of /cut shortened on disk while the server runs.
    let cut = dir.join(chunk_file_name(id("/cut").await, 1));
    std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(300_000).unwrap();
    reads_fail_as_lost(&cluster, &client, "/cut", 1, server).await;

    // Chunk 2 of /deleted unlinked from the data directory while the server runs.
    std::fs::remove_file(dir.join(chunk_file_name(id("/deleted").await, 2))).unwrap();
    reads_fail_as_lost(&cluster, &client, "/deleted", 2, server).await;

    // Chunk 3 of /removed removed by a peer speaking as pfs-meta (the server forgets it):
    // only pfs-meta's chunk map still says it must exist.
    let file = id("/removed").await;
    let meta_peer: RpcClient<StorageRequest> =
        connect(cluster.config().storage[0].address, PeerRole::Meta, cluster.config().auth(true).unwrap()).await;
    meta_peer.ask(RemoveChunk { file, chunk: 3, listed: None }).await.unwrap();
    assert!(!dir.join(chunk_file_name(file, 3)).exists());
    reads_fail_as_lost(&cluster, &client, "/removed", 3, server).await;

    // The other chunks read as written, and a hole (never written) still reads as zeros.
    let f = client.open("/removed").await.unwrap();
    let mut buf = vec![0u8; 1 << 20];
    assert_eq!(f.read_at(0, &mut buf).await.unwrap(), 1 << 20);
    assert!(buf[..] == data[..1 << 20]);
    f.close().await.unwrap();
    let h = client.create("/holes", &CreateOptions::default()).await.unwrap();
    h.truncate(3 << 20).await.unwrap();
    assert_eq!(h.read_at(2 << 20, &mut buf).await.unwrap(), 1 << 20);
    assert!(buf.iter().all(|b| *b == 0), "a hole reads as zeros");
    h.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_changed_since_it_was_listed_is_not_removed() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let client = cluster.client().await.unwrap();
    let f = client.create("/c", &CreateOptions::default()).await.unwrap();
    f.write_at(0, &random_bytes(1 << 20, 44)).await.unwrap();
    f.fsync().await.unwrap();
    let file = f.id();
    let &(_, chunk, state) = listed_chunks(&cluster, file).await.first().expect("the chunk is listed");
    // A write lands after the listing: its change count moves on.
    f.write_at(10, b"written after the listing").await.unwrap();
    f.fsync().await.unwrap();
    let meta_peer: RpcClient<StorageRequest> =
        connect(cluster.config().storage[0].address, PeerRole::Meta, cluster.config().auth(true).unwrap()).await;
    // A removal of the state listed (what pfs-meta sends for an orphan) is refused whole, as
    // is one naming another boot of the server.
    for stale in [state, ListedState { boot: state.boot ^ 1, change: state.change + 1 }] {
        let e = meta_peer.ask(RemoveChunk { file, chunk, listed: Some(stale) }).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Conflict, "{e}");
        assert!(e.to_string().contains("changed since it was listed"), "{e}");
    }
    let mut buf = vec![0u8; 25];
    assert_eq!(f.read_at(10, &mut buf).await.unwrap(), 25);
    assert_eq!(&buf, b"written after the listing", "the write after the listing is kept");
    // The state as it is now is removed.
    let &(_, _, now) = listed_chunks(&cluster, file).await.first().unwrap();
    assert_ne!(now, state);
    meta_peer.ask(RemoveChunk { file, chunk, listed: Some(now) }).await.unwrap();
    assert!(listed_chunks(&cluster, file).await.is_empty());
    f.close().await.unwrap();
    client.close().await.unwrap();
}
