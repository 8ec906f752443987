//! Starts the real `pfs-meta` binary on a loopback port, talks to it over RPC, SIGKILLs it,
//! restarts it on the same directory and checks what survived. Also feeds it bad frames.

use pfs_common::config::Config;
use pfs_common::layout::LayoutChoice;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::token::{ByteRange, Mode};
use pfs_common::wire::frame::{FrameHeader, FrameKind, HEADER_LEN};
use pfs_common::wire::namespace::{
    Close, Closed, Create, FileKind, Lookup, Mkdir, Open, Readdir, Rename, SetSize, Stat, Unlink,
};
use pfs_common::wire::registry::{ChunkReport, GetChains, GetChunks, Heartbeat, ListServers, Register};
use pfs_common::wire::tokens::{Acquire, ClientNotify, KeepAlive, OpenSession, Reclaim, ReclaimedFile, RevokeDone};
use pfs_common::wire::{MetaRequest, PeerRole};
use pfs_common::{ErrorCode, ServerId};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Meta {
    child: Child,
}

impl Drop for Meta {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn write_config(dir: &Path) -> (std::path::PathBuf, SocketAddr) {
    let mut config = Config::local(dir, free_port(), 4);
    // The fake storage servers register as these (pfs-meta takes only configured ids, at
    // their configured addresses); nothing listens there.
    for s in &mut config.storage {
        s.address = format!("127.0.0.1:{}", 10 + s.id.0).parse().unwrap();
    }
    // These tests are about the metadata log and speak the protocol by hand; authentication has its
    // own tests (pfs-cli/tests/auth.rs).
    config.auth = Some(pfs_common::config::AuthConfig::None);
    // Long enough that a slow test machine never sees the fake storage server go down.
    config.timeouts.server_down_ms = 600_000;
    config.timeouts.idle_ms = 1_200_000;
    let path = dir.join("pfs.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    (path, config.meta[0].address)
}

fn opts(role: PeerRole) -> ConnectOptions {
    ConnectOptions {
        role,
        name: "restart-test".into(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        auth: pfs_common::auth::Auth::none(),
    }
}

async fn start(config: &Path, addr: SocketAddr) -> (Meta, RpcClient<MetaRequest>) {
    let child = Command::new(env!("CARGO_BIN_EXE_pfs-meta"))
        .arg("--config")
        .arg(config)
        .env("PFS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut meta = Meta { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Client), None).await {
            Ok(c) => return (meta, c),
            Err(e) => {
                if let Some(status) = meta.child.try_wait().unwrap() {
                    panic!("pfs-meta exited with {status} before serving: {e}");
                }
                assert!(Instant::now() < deadline, "pfs-meta did not come up: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn create(path: &str) -> Create {
    Create {
        target: path.into(),
        layout: LayoutChoice::default(),
        exclusive: true,
        session: None,
        attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o644, uid: 0, gid: 0 },
        closed: vec![],
        request: None,
    }
}

/// Registers a fake storage server so files can get a layout; returns its connection.
async fn fake_storage(addr: SocketAddr) -> RpcClient<MetaRequest> {
    let s = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Storage), None).await.unwrap();
    let reg = Register {
        id: ServerId(1),
        address: "127.0.0.1:11".parse().unwrap(),
        capacity_bytes: 1 << 30,
        free_bytes: 1 << 29,
        boot: 1,
    };
    let r = s.ask(reg).await.unwrap();
    assert!(r.orphans.is_empty() && r.fenced.is_empty());
    // Below the oldest open session's epoch (the term that opened it): never above a term.
    assert!(pfs_common::token::session_epoch(r.fence_below) < 1000, "{:x}", r.fence_below);
    assert_eq!(r.lease_ms, 600_000, "the storage lease is timeouts.server_down_ms");
    // Its (empty) chunk listing: only then is it up for new files.
    let answer = s.ask(ChunkReport { id: ServerId(1), chunks: vec![], listing: true, full: true }).await.unwrap();
    assert_eq!(answer.lost, Some(vec![]));
    s
}

#[tokio::test]
async fn namespace_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = write_config(dir.path());
    let (meta, c) = start(&config, addr).await;
    let storage = fake_storage(addr).await;

    c.ask(Mkdir {
        target: "/a".into(),
        attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 },
        request: None,
    })
    .await
    .unwrap();
    c.ask(Mkdir {
        target: "/a/b".into(),
        attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 },
        request: None,
    })
    .await
    .unwrap();
    let mut files = Vec::new();
    for i in 0..5u64 {
        let f = c.ask(create(&format!("/a/b/f{i}"))).await.unwrap();
        let layout = f.layout.as_ref().unwrap();
        assert_eq!(layout.replicas, 1);
        let chains = c.ask(GetChains { ids: layout.chains.clone() }).await.unwrap();
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].writers().collect::<Vec<_>>(), vec![ServerId(1)]);
        c.ask(SetSize { file: f.id, size: 4096 * (i + 1) }).await.unwrap();
        let f = c.ask(Stat { file: f.id }).await.unwrap();
        assert_eq!(f.size, 4096 * (i + 1));
        files.push(f);
    }
    c.ask(Rename {
        from: "/a/b/f4".into(),
        to: "/a/moved".into(),
        expected_generation: None,
        no_replace: false,
        request: None,
    })
    .await
    .unwrap();
    c.ask(Unlink { target: "/a/b/f3".into(), expected_generation: None, request: None }).await.unwrap();
    let e = c
        .ask(Mkdir {
            target: "/a".into(),
            attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 },
            request: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Exists);
    let b_before = c.ask(Lookup { target: "/a/b".into() }).await.unwrap();
    let moved_before = c.ask(Lookup { target: "/a/moved".into() }).await.unwrap();
    let mut sizes_before = Vec::new();
    for f in &files[..3] {
        sizes_before.push(c.ask(Stat { file: f.id }).await.unwrap());
    }

    // Crash: every acknowledged change must come back.
    drop(storage);
    drop(c);
    drop(meta); // SIGKILL
    let (_meta, c) = start(&config, addr).await;
    for before in &sizes_before {
        assert_eq!(&c.ask(Stat { file: before.id }).await.unwrap(), before);
    }
    assert_eq!(c.ask(Lookup { target: "/a/b".into() }).await.unwrap(), b_before);
    assert_eq!(c.ask(Lookup { target: "/a/moved".into() }).await.unwrap(), moved_before);
    assert_eq!(moved_before.size, 4096 * 5);
    let e = c.ask(Lookup { target: "/a/b/f3".into() }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    let page = c.ask(Readdir { dir: "/a/b".into(), after: None, limit: 100 }).await.unwrap();
    assert!(!page.more);
    let names: Vec<_> = page.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["f0", "f1", "f2"]);
    assert!(page.entries.iter().all(|e| e.kind == FileKind::File));
    // After a restart the registry has the configured servers, none up until they register.
    assert!(c.ask(ListServers).await.unwrap().iter().all(|s| !s.up));
    // A client may not speak for a storage server.
    let e = c.ask(Heartbeat { id: ServerId(1), capacity_bytes: 0, free_bytes: 0 }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Denied);
}

/// Many clients create files at once, each create also opening its file for the client's
/// session (one step), while others stat and look up what was created: every create that was
/// acknowledged survives a SIGKILL, and a file created open stays (as an orphan) when another
/// client unlinks it, until its creator closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_sessions_survive_sigkill() {
    const CLIENTS: usize = 8;
    const FILES: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = write_config(dir.path());
    let (meta, c) = start(&config, addr).await;
    let storage = fake_storage(addr).await;
    let root = pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 };
    c.ask(Mkdir { target: "/m".into(), attrs: root, request: None }).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        tasks.push(tokio::spawn(async move {
            let c = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Client), None).await.unwrap();
            let session = c.ask(OpenSession).await.unwrap().session;
            c.ask(Mkdir { target: format!("/m/d{t}").as_str().into(), attrs: root, request: None }).await.unwrap();
            let mut made = Vec::new();
            for i in 0..FILES {
                let path = format!("/m/d{t}/f{i}");
                let f = c.ask(Create { session: Some(session), ..create(&path) }).await.unwrap();
                // Reads of what was acknowledged answer it (by id and by name).
                assert_eq!(c.ask(Stat { file: f.id }).await.unwrap().id, f.id);
                assert_eq!(c.ask(Lookup { target: path.as_str().into() }).await.unwrap().id, f.id);
                made.push((path, f.id));
            }
            (c, session, made)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // The first client's first file is open (by its create): another client's unlink keeps
    // it as an orphan until that client closes it.
    let (c0, session0, made0) = &clients[0];
    let (path, id) = made0[0].clone();
    c.ask(Unlink { target: path.as_str().into(), expected_generation: None, request: None }).await.unwrap();
    assert_eq!(c.ask(Stat { file: id }).await.unwrap().nlink, 0, "an open file unlinked is an orphan");
    c0.ask(Close { session: *session0, files: vec![Closed { file: id, opens: 1 }] }).await.unwrap();
    let e = c.ask(Stat { file: id }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "the orphan goes at its last close");
    // Opens count: the second file, opened once more, stays open through a close of one open;
    // a close carried by a create is served before it, and takes the last one.
    let (path1, id1) = made0[1].clone();
    c0.ask(Open { target: path1.as_str().into(), session: *session0, closed: vec![] }).await.unwrap();
    c0.ask(Close { session: *session0, files: vec![Closed { file: id1, opens: 1 }] }).await.unwrap();
    c.ask(Unlink { target: path1.as_str().into(), expected_generation: None, request: None }).await.unwrap();
    assert_eq!(c.ask(Stat { file: id1 }).await.unwrap().nlink, 0, "still open once");
    let carried = Create { session: Some(*session0), closed: vec![Closed { file: id1, opens: 1 }], ..create("/m/x") };
    c0.ask(carried).await.unwrap();
    let e = c.ask(Stat { file: id1 }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "the carried close was its last");
    let e = c.ask(Create { closed: vec![Closed { file: id1, opens: 1 }], ..create("/m/y") }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid, "closes need a session");

    drop(clients);
    drop(storage);
    drop(c);
    drop(meta); // SIGKILL
    let (_meta, c) = start(&config, addr).await;
    for t in 0..CLIENTS {
        let page = c.ask(Readdir { dir: format!("/m/d{t}").as_str().into(), after: None, limit: 100 }).await.unwrap();
        let expected = if t == 0 { FILES - 2 } else { FILES };
        assert_eq!(page.entries.len(), expected, "directory /m/d{t} after the restart");
    }
    let e = c.ask(Stat { file: id }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
}

#[tokio::test]
async fn bad_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = write_config(dir.path());
    let (_meta, good) = start(&config, addr).await;

    // Garbage bytes instead of a frame.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&[0xde; 64]).await.unwrap();
    let mut sink = Vec::new();
    // The server answers with an error or closes; either way the read ends.
    let _ = tokio::time::timeout(Duration::from_secs(30), raw.read_to_end(&mut sink)).await.expect("connection closed");

    // A header claiming a huge payload and body: refused before allocating.
    let header = FrameHeader { kind: FrameKind::Request, body_len: u32::MAX, payload_len: u32::MAX, request_id: 1 };
    let bytes: [u8; HEADER_LEN] = header.encode();
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&bytes).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), raw.read_to_end(&mut sink)).await.expect("connection closed");

    // The same after a valid handshake, on a connection made by hand.
    let hello = pfs_common::wire::Hello {
        version: pfs_common::wire::PROTOCOL_VERSION,
        role: PeerRole::Client,
        name: "x".into(),
        nonce: [1; 32],
        auth: false,
        protect_data: false,
    };
    let body = pfs_common::wire::encode(&hello);
    let h = FrameHeader { kind: FrameKind::Request, body_len: body.len() as u32, payload_len: 0, request_id: 0 };
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&h.encode()).await.unwrap();
    raw.write_all(&body).await.unwrap();
    let big = FrameHeader { kind: FrameKind::Request, body_len: 1 << 31, payload_len: u32::MAX, request_id: 2 };
    raw.write_all(&big.encode()).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), raw.read_to_end(&mut sink)).await.expect("connection closed");
    assert!(!sink.is_empty(), "the handshake was answered");

    // The well-behaved client is still served, and so is a new one.
    good.ask(Mkdir {
        target: "/still".into(),
        attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 },
        request: None,
    })
    .await
    .unwrap();
    let fresh: RpcClient<MetaRequest> =
        RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Client), None).await.unwrap();
    let a = fresh.ask(Lookup { target: "/still".into() }).await.unwrap();
    assert_eq!(a.kind, FileKind::Dir);
}

#[tokio::test]
async fn chunk_reports_orphans_and_remove_notifications() {
    use pfs_common::ids::Sha256Digest;
    use pfs_common::wire::registry::{ChunkState, LostChunk, ReportAnswer, StorageNotify, StoragePush};
    use pfs_common::FileId;

    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = write_config(dir.path());
    let (_meta, c) = start(&config, addr).await;
    let (ntx, mut nrx) = tokio::sync::mpsc::channel(16);
    let s: RpcClient<MetaRequest> =
        RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Storage), Some(ntx)).await.unwrap();
    let reg = Register {
        id: ServerId(3),
        address: "127.0.0.1:13".parse().unwrap(),
        capacity_bytes: 100,
        free_bytes: 60,
        boot: 7,
    };
    s.ask(reg.clone()).await.unwrap();
    // Up for new files only once its chunk listing is in.
    let e = c.ask(create("/f")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    s.ask(ChunkReport { id: ServerId(3), chunks: vec![], listing: true, full: true }).await.unwrap();
    let f = c.ask(create("/f")).await.unwrap();
    let chunk = |file: FileId, chunk: u64| ChunkState {
        file,
        chunk,
        len: 10,
        sha256: Some(Sha256Digest::of(b"0123456789")),
        removed: false,
        durable: true,
        version: 2,
    };
    let listing = |chunks| ChunkReport { id: ServerId(3), chunks, listing: true, full: true };
    let report = listing(vec![chunk(f.id, 0), chunk(FileId(9999), 0)]);
    let answer = s.ask(report).await.unwrap();
    assert!(answer.term >= 1, "answered in the name of a leadership term: {answer:?}");
    assert_eq!(answer, ReportAnswer { term: answer.term, orphans: vec![FileId(9999)], lost: Some(vec![]) });
    let chunks = c.ask(GetChunks { file: f.id, first: 0, count: 10 }).await.unwrap();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].holders[0].server, ServerId(3));
    assert_eq!(chunks[0].holders[0].len, 10);
    assert_eq!(chunks[0].committed, None, "a listing commits nothing");
    // A durable change within the file's size is committed: the chunk must exist from now on.
    c.ask(pfs_common::wire::namespace::SetSize { file: f.id, size: 10 }).await.unwrap();
    let change = ChunkReport { id: ServerId(3), chunks: vec![chunk(f.id, 0)], listing: false, full: false };
    assert_eq!(s.ask(change).await.unwrap(), ReportAnswer { term: answer.term, ..ReportAnswer::default() });
    let committed = c.ask(GetChunks { file: f.id, first: 0, count: 10 }).await.unwrap()[0].committed.clone().unwrap();
    assert_eq!((committed.len, committed.holders), (10, vec![(ServerId(3), 2)]));
    // The server comes back with an empty disk: its listing is answered with the loss.
    s.ask(reg.clone()).await.unwrap();
    let lost = LostChunk { file: f.id, chunk: 0, len: 10, found: "missing".into() };
    assert_eq!(s.ask(listing(vec![])).await.unwrap().lost, Some(vec![lost]));
    let short = ChunkState { len: 4, ..chunk(f.id, 0) };
    assert_eq!(s.ask(listing(vec![short])).await.unwrap().lost.unwrap()[0].found, "4 of 10 bytes");
    // An older copy of the same length (an old disk put back) is stale, whatever its bytes.
    let old = ChunkState { version: 1, ..chunk(f.id, 0) };
    let found = s.ask(listing(vec![old])).await.unwrap().lost.unwrap()[0].found.clone();
    assert_eq!(found, "commit version 1 of the chunk, but version 2 was committed");
    // The same version with other bytes is damage; a newer version is fine (its commit is on
    // its way).
    let other = ChunkState { sha256: Some(Sha256Digest::of(b"9876543210")), ..chunk(f.id, 0) };
    assert!(s.ask(listing(vec![other])).await.unwrap().lost.unwrap()[0].found.starts_with("other bytes"));
    let newer = ChunkState { version: 3, sha256: Some(Sha256Digest::of(b"9876543210")), ..chunk(f.id, 0) };
    assert_eq!(s.ask(listing(vec![newer])).await.unwrap().lost, Some(vec![]));
    s.ask(listing(vec![chunk(f.id, 0)])).await.unwrap();
    let list = c.ask(ListServers).await.unwrap();
    assert_eq!(list.len(), 4, "the configured servers");
    let me = list.iter().find(|s| s.id == ServerId(3)).unwrap();
    assert!(me.up);
    assert_eq!((me.chunks, me.free_bytes), (1, 60));
    s.ask(Heartbeat { id: ServerId(3), capacity_bytes: 100, free_bytes: 50 }).await.unwrap();
    // Unlink: the storage server is told to remove the file's chunks.
    c.ask(Unlink { target: "/f".into(), expected_generation: None, request: None }).await.unwrap();
    // (The chain created with /f was pushed to it before.)
    let note = loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), nrx.recv()).await.expect("notified").unwrap();
        let push = pfs_common::wire::decode::<StoragePush>(&frame.body).unwrap();
        assert_eq!(push.term, answer.term, "pushed in the name of the leader's term");
        match push.notify {
            StorageNotify::Chains(chains) => assert!(chains.iter().all(|c| c.head() == Some(ServerId(3)))),
            other => break other,
        }
    };
    assert_eq!(note, StorageNotify::RemoveFiles(vec![f.id]));
    let e = c.ask(GetChunks { file: f.id, first: 0, count: 10 }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    // A report from an id not registered on this connection is refused: register again.
    let e = s.ask(ChunkReport { id: ServerId(4), chunks: vec![], listing: false, full: false }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    // A storage server may not use the namespace service.
    let e = s
        .ask(Mkdir {
            target: "/x".into(),
            attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 },
            request: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Denied);
}

#[tokio::test]
async fn corrupt_log_stops_startup_with_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = write_config(dir.path());
    {
        let (_meta, c) = start(&config, addr).await;
        for d in ["/a", "/b", "/c"] {
            c.ask(Mkdir {
                target: d.into(),
                attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 },
                request: None,
            })
            .await
            .unwrap();
        }
    }
    let meta_dir = dir.path().join("meta");
    let seg = std::fs::read_dir(&meta_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("log-0"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[9] ^= 0x40; // first record's payload; valid records follow
    std::fs::write(&seg, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pfs-meta")).arg("--config").arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("pfs-meta: "), "{stderr}");
    assert!(last.contains(seg.to_str().unwrap()) && last.contains("offset 0"), "{stderr}");
}

/// Registers fake storage server `id` (process boot id `boot`) with its empty listing.
async fn register(addr: SocketAddr, id: u32, boot: u64) -> RpcClient<MetaRequest> {
    let s = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Storage), None).await.unwrap();
    let address = format!("127.0.0.1:{}", 10 + id).parse().unwrap();
    let reg = Register { id: ServerId(id), address, capacity_bytes: 1 << 30, free_bytes: 1 << 29, boot };
    s.ask(reg).await.unwrap();
    s.ask(ChunkReport { id: ServerId(id), chunks: vec![], listing: true, full: true }).await.unwrap();
    s
}

#[tokio::test]
async fn a_storage_server_restarted_while_pfs_meta_was_down_resyncs() {
    use pfs_common::chain::ReplicaState;
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = write_config(dir.path());
    let (meta, c) = start(&config, addr).await;
    let (s1, s2) = (register(addr, 1, 11).await, register(addr, 2, 21).await);
    let layout = LayoutChoice { replicas: Some(2), ..Default::default() };
    let f = c
        .ask(Create {
            target: "/f".into(),
            layout,
            exclusive: true,
            session: None,
            attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o644, uid: 0, gid: 0 },
            closed: vec![],
            request: None,
        })
        .await
        .unwrap();
    let ids = f.layout.unwrap().chains;
    let states = |chains: &[pfs_common::chain::Chain], s: u32| -> Vec<Option<ReplicaState>> {
        chains.iter().map(|ch| ch.state_of(ServerId(s))).collect()
    };
    let chains = c.ask(GetChains { ids: ids.clone() }).await.unwrap();
    assert!(states(&chains, 2).iter().all(|s| *s == Some(ReplicaState::Serving)));
    drop((s1, s2, c));

    // pfs-meta goes down; storage-2's process restarts meanwhile (a new boot id), storage-1's
    // does not.
    drop(meta);
    let (_meta, c) = start(&config, addr).await;
    let (_s1, _s2) = (register(addr, 1, 11).await, register(addr, 2, 22).await);
    let chains = c.ask(GetChains { ids }).await.unwrap();
    assert!(states(&chains, 1).iter().all(|s| *s == Some(ReplicaState::Serving)), "same boot: {chains:?}");
    assert!(
        states(&chains, 2).iter().all(|s| *s == Some(ReplicaState::Syncing)),
        "a restart is known from the log and resyncs: {chains:?}"
    );
}

/// Decodes the next client notification on a connection's notification channel.
async fn next_notify(rx: &mut tokio::sync::mpsc::Receiver<pfs_common::wire::frame::Frame>) -> ClientNotify {
    let frame = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("a notification").unwrap();
    pfs_common::wire::decode::<ClientNotify>(&frame.body).unwrap()
}

/// Sessions are in the log, tokens are not: after a SIGKILL of pfs-meta, a session takes
/// itself over to a new connection with its key and reclaims its open file and its Write
/// token; a wrong key (another client's session) is refused; a session that does not reclaim
/// is evicted at the end of the recovery window and storage servers learn to refuse it; a new
/// session's conflicting acquire waits for the window and then revokes the reclaimed token;
/// a file unlinked while open stays until its reclaimed open is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_restart_and_reclaims_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = write_config(dir.path());
    let (meta, c) = start(&config, addr).await;
    let storage = fake_storage(addr).await;
    let a = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Client), None).await.unwrap();
    let grant_a = a.ask(OpenSession).await.unwrap();
    let b = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Client), None).await.unwrap();
    let grant_b = b.ask(OpenSession).await.unwrap();
    assert_ne!(grant_a.key, grant_b.key);
    let f = a.ask(Create { session: Some(grant_a.session), ..create("/f") }).await.unwrap();
    let token = ByteRange { start: 0, end: 4096 };
    let file_id = f.id;
    let acquire = move |session| Acquire {
        session,
        file: file_id,
        mode: Mode::Write,
        required: token,
        desired: token,
        ahead: None,
    };
    a.ask(acquire(grant_a.session)).await.unwrap();
    c.ask(Unlink { target: "/f".into(), expected_generation: None, request: None }).await.unwrap();
    assert_eq!(c.ask(Stat { file: f.id }).await.unwrap().nlink, 0, "an orphan while open");
    drop(meta); // SIGKILL, with both sessions open
    drop((a, b, storage, c));

    let (_meta, c) = start(&config, addr).await;
    let (tx, mut notes) = tokio::sync::mpsc::channel(16);
    let a = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Client), Some(tx)).await.unwrap();
    let files = vec![ReclaimedFile { file: f.id, opens: 1, tokens: vec![(token, Mode::Write)] }];
    let reclaim = |session, key| Reclaim { session, key, files: files.clone(), done: true };
    // Another client's session with the wrong key: refused, whoever asks.
    let e = a.ask(reclaim(grant_b.session, grant_a.key)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Denied, "{e}");
    let e = a.ask(reclaim(grant_a.session, [0; 16])).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Denied, "{e}");
    a.ask(reclaim(grant_a.session, grant_a.key)).await.unwrap();
    // The reclaimed session renews its lease as any other.
    let session_a = grant_a.session;
    let keeper = a.clone();
    let renewals = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if keeper.ask(KeepAlive { session: session_a }).await.is_err() {
                return;
            }
        }
    });
    // A new session wants the same bytes: it waits for the window (b never reclaims), then
    // the reclaimed token is revoked from a.
    let n = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Client), None).await.unwrap();
    let grant_n = n.ask(OpenSession).await.unwrap();
    assert!(
        pfs_common::token::session_epoch(grant_n.session) >= pfs_common::token::session_epoch(grant_a.session),
        "session ids of a later term are not below earlier ones"
    );
    let wanted = tokio::spawn({
        let n = n.clone();
        let ask = acquire(grant_n.session);
        async move { n.ask(ask).await }
    });
    let ClientNotify::Revoke { revoke, file, range, wanted: mode } = next_notify(&mut notes).await else {
        panic!("a revoke was expected")
    };
    assert_eq!((file, range, mode), (f.id, token, Mode::Write));
    assert!(!wanted.is_finished(), "granted before the holder acknowledged the revoke");
    a.ask(RevokeDone { session: grant_a.session, revoke }).await.unwrap();
    let granted = wanted.await.unwrap().unwrap();
    assert_eq!(granted.range, token);
    // b did not reclaim: evicted, and a storage server registering now must refuse it.
    let s = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Storage), None).await.unwrap();
    let reg = Register {
        id: ServerId(1),
        address: "127.0.0.1:11".parse().unwrap(),
        capacity_bytes: 1 << 30,
        free_bytes: 1 << 29,
        boot: 2,
    };
    let r = s.ask(reg).await.unwrap();
    assert!(r.fenced.contains(&grant_b.session), "the session that did not reclaim is fenced: {:x?}", r.fenced);
    assert!(!r.fenced.contains(&grant_a.session) && r.fence_below <= grant_a.session);
    let e = b_reclaim_after(addr, grant_b.session, grant_b.key).await;
    assert_eq!(e.code(), ErrorCode::Evicted, "{e}");
    // The orphan is still there for a, which reclaimed its open, and goes at its close.
    assert_eq!(c.ask(Stat { file: f.id }).await.unwrap().nlink, 0);
    a.ask(Close { session: grant_a.session, files: vec![Closed { file: f.id, opens: 1 }] }).await.unwrap();
    let e = c.ask(Stat { file: f.id }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "the orphan goes at its last close");
    renewals.abort();
}

/// Session `session` tries to take itself over (with its own key) after the window closed.
async fn b_reclaim_after(addr: SocketAddr, session: u64, key: [u8; 16]) -> pfs_common::error::Error {
    let b = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Client), None).await.unwrap();
    b.ask(Reclaim { session, key, files: vec![], done: true }).await.unwrap_err()
}

/// A namespace change named by a request id is done once however often it is sent: its
/// repeat (a client whose answer was lost) is answered with what it did, also after a SIGKILL
/// of pfs-meta (the last request of each slot is in the log, like Lustre's last_rcvd table);
/// an overtaken copy is refused, and nobody can spend another session's slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_is_answered_not_done_twice_across_a_restart() {
    use pfs_common::wire::namespace::{RequestId, Rmdir};
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = write_config(dir.path());
    let (meta, c) = start(&config, addr).await;
    let storage = fake_storage(addr).await;
    let a = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Client), None).await.unwrap();
    let grant = a.ask(OpenSession).await.unwrap();
    let session = grant.session;
    let id = |slot, seq| Some(RequestId { session, slot, seq });
    let make = || Create { session: Some(session), request: id(0, 1), ..create("/x") };
    let attrs = pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 };
    let x = a.ask(make()).await.unwrap();
    assert_eq!(a.ask(make()).await.unwrap().id, x.id, "a repeated exclusive create answers the file it made");
    a.ask(Mkdir { target: "/d".into(), attrs, request: id(1, 1) }).await.unwrap();
    let rename = || Rename {
        from: "/d".into(),
        to: "/e".into(),
        expected_generation: None,
        no_replace: false,
        request: id(1, 2),
    };
    a.ask(rename()).await.unwrap();
    a.ask(rename()).await.expect("a repeated rename is done, not NotFound");
    // Another connection cannot use the session's slots.
    let b = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Client), None).await.unwrap();
    b.ask(OpenSession).await.unwrap();
    let e = b.ask(Rmdir { target: "/e".into(), expected_generation: None, request: id(2, 1) }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Denied, "{e}");
    drop(meta); // SIGKILL
    drop((a, b, storage, c));

    let (_meta, c) = start(&config, addr).await;
    let _storage = fake_storage(addr).await;
    let a = RpcClient::connect(addr, "pfs-meta", &opts(PeerRole::Client), None).await.unwrap();
    let files = vec![ReclaimedFile { file: x.id, opens: 1, tokens: vec![] }];
    a.ask(Reclaim { session, key: grant.key, files, done: true }).await.unwrap();
    assert_eq!(a.ask(make()).await.unwrap().id, x.id, "answered from the log after the restart");
    a.ask(rename()).await.expect("answered from the log after the restart");
    let e = a.ask(Mkdir { target: "/d".into(), attrs, request: id(1, 1) }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid, "an overtaken copy is refused, not done: {e}");
    let page = c.ask(Readdir { dir: "/".into(), after: None, limit: 100 }).await.unwrap();
    let mut names: Vec<String> = page.entries.into_iter().map(|e| e.name).collect();
    names.sort();
    assert_eq!(names, ["e", "x"], "each change done once");
    // A new request of a slot is done as usual.
    let e = a.ask(Create { session: Some(session), request: id(0, 2), ..create("/x") }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Exists, "{e}");
}
