//! An authenticated cluster of real daemons, probed as an intruder would: without the key,
//! with a wrong one, replaying a handshake, altering and replaying frames, removing, writing,
//! truncating and reading chunks without (or with forged, expired, foreign) capabilities,
//! using another connection's session, registering as a live storage server. Each probe is
//! refused, and the cluster goes on serving its real clients, whose data stays intact.

use pfs_client::{Client, ClientOptions, CreateOptions};
use pfs_common::auth::{Auth, Credentials, Key};
use pfs_common::capability::{unix_ms, CapabilityError, RENEW_MARGIN_MS};
use pfs_common::config::{AuthConfig, AuthSettings, Config};
use pfs_common::rpc::RpcClient;
use pfs_common::token::{ByteRange, Mode, SessionId};
use pfs_common::wire::frame::{read_frame, write_frame, FrameKind, DEFAULT_LIMITS};
use pfs_common::wire::namespace::{Mkdir, Open};
use pfs_common::wire::registry::{Fenced, Heartbeat, ListServers, OrphanCopy, Register, RemoveOrphan, ServerStatus};
use pfs_common::wire::storage::{
    Extent, ListedState, ReadChunk, RemoveChunk, RemoveFile, StorageRequest, TruncateFile, WriteChunk,
};
use pfs_common::wire::tokens::{self as tok, SessionGrant};
use pfs_common::wire::{self, Call, MetaRequest, PeerRole, ResponseBody};
use pfs_common::{pool, ErrorCode, FileId, ServerId};
use pfs_testkit::raw::{self, RawConn};
use pfs_testkit::{ok, random_bytes, run_tool, sha256_hex, DaemonKind, LocalCluster};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const PFS: &str = env!("CARGO_BIN_EXE_pfs");
const PFS_CP: &str = env!("CARGO_BIN_EXE_pfs-cp");

/// Connects to `addr` as `role` with `auth`.
async fn connect<R: serde::Serialize>(
    addr: std::net::SocketAddr,
    role: PeerRole,
    auth: Auth,
) -> pfs_common::Result<RpcClient<R>> {
    RpcClient::connect(addr, "server", &raw::connect_options(role, "intruder", auth), None).await
}

/// A copy of the cluster's config with `change` applied, written next to it.
fn config_variant(cluster: &LocalCluster, name: &str, change: impl FnOnce(&mut Config)) -> PathBuf {
    let mut c = (**cluster.config()).clone();
    change(&mut c);
    let path = cluster.dir().join(name);
    std::fs::write(&path, c.to_toml()).unwrap();
    path
}

/// Copies `data` into the cluster as `name` with `pfs-cp`, and back, and checks the bytes.
fn round_trip(cfg: &Path, dir: &Path, name: &str, data: &[u8]) {
    let src = dir.join(format!("{name}.in"));
    std::fs::write(&src, data).unwrap();
    ok(run_tool(PFS_CP, cfg, &[src.to_str().unwrap(), &format!("pfs:/{name}")]));
    let back = dir.join(format!("{name}.out"));
    ok(run_tool(PFS_CP, cfg, &[&format!("pfs:/{name}"), back.to_str().unwrap()]));
    assert_eq!(sha256_hex(&std::fs::read(&back).unwrap()), sha256_hex(data), "{name} read back differs");
}

/// A tool run that must fail; returns its stderr.
fn fails(exe: &str, cfg: &Path, args: &[&str]) -> String {
    let out = run_tool(exe, cfg, args);
    assert!(!out.status.success(), "{args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn log_of(cluster: &LocalCluster, kind: DaemonKind) -> String {
    std::fs::read_to_string(cluster.log(kind)).unwrap_or_default()
}

/// The cluster still serves a real client: a file written and read back.
async fn still_serves(cluster: &LocalCluster, name: &str) {
    let client = cluster.client().await.unwrap();
    let data = random_bytes(3 << 20, 5);
    let f = client.create(name, &CreateOptions::default()).await.unwrap();
    f.write_at(0, &data).await.unwrap();
    f.close().await.unwrap();
    let f = client.open(name).await.unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(f.read_at(0, &mut back).await.unwrap(), data.len());
    assert!(back == data, "{name} read back differs");
    f.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_key_nothing_gets_in() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let meta = cluster.config().meta[0].address;
    let storage = cluster.config().storage[0].address;

    // No key at all, as a client or as a storage server: "authentication failed", no hang.
    for (addr, role) in [(meta, PeerRole::Client), (meta, PeerRole::Storage), (storage, PeerRole::Client)] {
        let e = connect::<MetaRequest>(addr, role, Auth::none()).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::AuthFailed, "{e}");
        assert!(e.to_string().contains("authentication failed"), "{e}");
    }
    // Another cluster's secret: the client finds the server cannot prove ours, and a
    // handshake done by hand with it is refused by the server.
    let e = connect::<MetaRequest>(meta, PeerRole::Client, Auth::cluster(Key::random())).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AuthFailed, "{e}");
    let e = raw::handshake(meta, PeerRole::Client, &Key::random()).await.map(drop);
    assert!(matches!(e, Err(raw::HandshakeError::BadProof { .. })), "{e:?}");
    // pfs-meta logged each refusal, with the peer's address.
    let log = log_of(&cluster, DaemonKind::Meta(1));
    let refusals: Vec<&str> =
        log.lines().filter(|l| l.contains("refused") && l.contains("authentication failed")).collect();
    assert!(refusals.len() >= 2 && refusals.iter().all(|l| l.contains("127.0.0.1:")), "{log}");

    // A connection that never completes its handshake is closed (after `timeouts.connect_ms`).
    let mut silent = tokio::net::TcpStream::connect(meta).await.unwrap();
    assert!(raw::next_frame(&mut silent).await.is_none(), "an unauthenticated connection was kept open");
    let mut half = tokio::net::TcpStream::connect(storage).await.unwrap();
    half.write_all(b"PF").await.unwrap();
    assert!(raw::next_frame(&mut half).await.is_none());

    // Tools refuse to start without a readable, private key file, naming it.
    let missing = config_variant(&cluster, "missing.toml", |c| {
        c.auth = Some(AuthConfig::Keys(AuthSettings {
            secret_file: Some("nope.key".into()),
            client_key_file: None,
            protect_data: false,
        }))
    });
    let e = fails(PFS, &missing, &["ls", "/"]);
    assert!(e.contains("nope.key") && e.contains("cannot open"), "{e}");
    let e = fails(PFS, &missing, &["serve", "meta"]);
    assert!(e.contains("nope.key"), "a daemon without its key: {e}");
    let public = cluster.dir().join("public.key");
    raw_key_file(&public, 0o644);
    let loose = config_variant(&cluster, "loose.toml", |c| {
        c.auth = Some(AuthConfig::Keys(AuthSettings {
            secret_file: Some(public.clone()),
            client_key_file: None,
            protect_data: false,
        }))
    });
    let e = fails(PFS, &loose, &["ls", "/"]);
    assert!(e.contains("chmod 400") && e.contains("public.key"), "{e}");
    let unset = config_variant(&cluster, "unset.toml", |c| c.auth = None);
    let e = fails(PFS, &unset, &["ls", "/"]);
    assert!(e.contains("auth = \"none\""), "{e}");

    still_serves(&cluster, "/after-outsiders").await;
}

/// Writes 32 bytes to `path` with `mode`.
fn raw_key_file(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, Key::random().bytes()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Sends `call` on a hand-made connection, MAC'd in sequence; `alter` may change the bytes
/// after the MAC was computed. Returns the frame's bytes as sent.
async fn send_raw<C: Call>(conn: &mut RawConn, id: u64, call: C, alter: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let body = wire::encode(&call.into_request());
    let mut bytes = Vec::new();
    write_frame(&mut bytes, FrameKind::Request, id, &body, &[], Some(&mut conn.send)).await.unwrap();
    alter(&mut bytes);
    conn.stream.write_all(&bytes).await.unwrap();
    bytes
}

/// Reads what the server sends until it closes the connection; true if anything it sent was a
/// successful answer. The deadline only turns a server that never closes into a failure.
async fn answered_ok_before_closing(conn: &mut RawConn) -> bool {
    let mut ok = false;
    loop {
        let next = read_frame(&mut conn.stream, &DEFAULT_LIMITS, pool::global(), Some(&mut conn.receive));
        match tokio::time::timeout(Duration::from_secs(60), next).await.expect("the server closes the connection") {
            Ok(Some(f)) => ok |= f.header.kind == FrameKind::Response && body_is_ok(&f.body),
            Ok(None) | Err(_) => return ok,
        }
    }
}

fn body_is_ok(body: &[u8]) -> bool {
    // Every answer is a `Result`; postcard encodes `Ok` as variant 0.
    body.first() == Some(&0)
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_handshakes_and_altered_or_replayed_frames_are_refused() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let meta = cluster.config().meta[0].address;
    let key = raw::role_key(cluster.config(), PeerRole::Client);

    // A handshake done by hand with the right key works, and its requests are answered.
    let mut conn = raw::handshake(meta, PeerRole::Client, &key).await.unwrap();
    send_raw(&mut conn, 1, ListServers, |_| {}).await;
    let f =
        read_frame(&mut conn.stream, &DEFAULT_LIMITS, pool::global(), Some(&mut conn.receive)).await.unwrap().unwrap();
    let servers: ResponseBody<Vec<ServerStatus>> = wire::decode(&f.body).unwrap();
    assert_eq!(servers.unwrap().len(), 2);

    // Its recorded hello and proof, replayed on a new connection: the server's nonce is new,
    // so the old proof is wrong.
    let mut replay = tokio::net::TcpStream::connect(meta).await.unwrap();
    replay.write_all(&conn.hello_frame).await.unwrap();
    assert!(raw::next_frame(&mut replay).await.is_some(), "the hello is answered with a challenge");
    replay.write_all(&conn.proof_frame).await.unwrap();
    let answer = raw::next_frame(&mut replay).await.expect("the proof is answered");
    let answer: ResponseBody<()> = wire::decode(&answer.body).unwrap();
    let e = answer.unwrap_err();
    assert_eq!(e.code, ErrorCode::AuthFailed, "{}", e.message);
    assert!(raw::next_frame(&mut replay).await.is_none(), "closed after the refusal");

    // A frame altered in flight (a byte of its body): refused unexecuted, connection closed.
    let mut altered = raw::handshake(meta, PeerRole::Client, &key).await.unwrap();
    send_raw(
        &mut altered,
        1,
        Mkdir {
            target: "/intruded".into(),
            attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 },
            request: None,
        },
        |b| b[25] ^= 1,
    )
    .await;
    assert!(!answered_ok_before_closing(&mut altered).await);
    // A frame sent twice (replayed): the second is out of sequence.
    let mut replayed = raw::handshake(meta, PeerRole::Client, &key).await.unwrap();
    let bytes = send_raw(&mut replayed, 1, tok::OpenSession, |_| {}).await;
    let f = read_frame(&mut replayed.stream, &DEFAULT_LIMITS, pool::global(), Some(&mut replayed.receive))
        .await
        .unwrap()
        .unwrap();
    assert!(body_is_ok(&f.body));
    replayed.stream.write_all(&bytes).await.unwrap();
    assert!(!answered_ok_before_closing(&mut replayed).await, "a replayed frame was answered");
    // Two frames sent in the wrong order: the first to arrive carries the later sequence number.
    let mut reordered = raw::handshake(meta, PeerRole::Client, &key).await.unwrap();
    let body = wire::encode(&ListServers.into_request());
    let (mut first, mut second) = (Vec::new(), Vec::new());
    write_frame(&mut first, FrameKind::Request, 1, &body, &[], Some(&mut reordered.send)).await.unwrap();
    write_frame(&mut second, FrameKind::Request, 2, &body, &[], Some(&mut reordered.send)).await.unwrap();
    reordered.stream.write_all(&second).await.unwrap();
    reordered.stream.write_all(&first).await.unwrap();
    assert!(!answered_ok_before_closing(&mut reordered).await, "a reordered frame was answered");

    let log = log_of(&cluster, DaemonKind::Meta(1));
    assert!(log.contains("integrity check"), "pfs-meta logs refused frames: {log}");
    let c = cluster.client().await.unwrap();
    assert!(c.stat("/intruded").await.is_err(), "the altered request ran");
    c.close().await.unwrap();
    still_serves(&cluster, "/after-frames").await;
}

/// The chunk of `path` at index 0, its head server's address and its chain.
async fn chunk_zero(
    cluster: &LocalCluster,
    client: &Client,
    path: &str,
) -> (FileId, u64, std::net::SocketAddr, pfs_common::chain::ChainRef, ServerId) {
    let attr = client.stat(path).await.unwrap();
    let layout = attr.layout.unwrap();
    let chain = client.chain(layout.chain(0)).await.unwrap();
    let head = chain.head().unwrap();
    (attr.id, layout.chunk_size(), cluster.config().storage(head).unwrap().address, chain.at(), head)
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_are_touched_only_with_capabilities_and_never_removed_by_clients() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let data = random_bytes(3 << 20, 11);
    round_trip(&cfg, cluster.dir(), "victim", &data);
    let client = cluster.client().await.unwrap();
    let (file, chunk_size, addr, chain, head) = chunk_zero(&cluster, &client, "/victim").await;
    let other = client.create("/other", &CreateOptions::default()).await.unwrap();
    let other_id = other.id();
    other.close().await.unwrap();

    // An authenticated client (the intruder holds a key) with a session of its own.
    let intruder: RpcClient<MetaRequest> =
        connect(cluster.config().meta[0].address, PeerRole::Client, cluster.config().auth(false).unwrap())
            .await
            .unwrap();
    let SessionGrant { session, .. } = intruder.ask(tok::OpenSession).await.unwrap();
    let s: RpcClient<StorageRequest> =
        connect(addr, PeerRole::Client, cluster.config().auth(false).unwrap()).await.unwrap();
    let denied = |r: pfs_common::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), ErrorCode::Denied, "{what}: {e}");
    };

    // Removing chunks is pfs-meta's alone, and pfs-meta removes only orphans.
    denied(s.ask(RemoveFile { file }).await, "client-sent Remove");
    denied(s.ask(RemoveChunk { file, chunk: 0, listed: None }).await, "client-sent RemoveChunk");
    // A client may not ask for orphan removal at all, live or not (only an administrator
    // may, and pfs-meta proves the orphan first: see tests/orphans.rs).
    let listed = ListedState { boot: 0, change: 0 };
    let chunk0 = OrphanCopy::Chunk { chunk: 0, listed };
    denied(intruder.ask(RemoveOrphan { server: head, file, copy: chunk0 }).await, "a client removing a live chunk");
    denied(intruder.ask(RemoveOrphan { server: head, file, copy: OrphanCopy::File }).await, "a client removing a file");
    let gone = OrphanCopy::File;
    let e = intruder.ask(RemoveOrphan { server: head, file: FileId(1 << 40), copy: gone }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Denied, "a client removing a file that does not exist: {e}");
    assert!(e.to_string().contains("administrator"), "{e}");

    // Writes: without a capability, forged, expired, for another file, another session, a
    // read capability, one not covering the bytes.
    let write = |caps: Vec<pfs_common::capability::Capability>| WriteChunk {
        file,
        chunk: 0,
        extents: vec![Extent { offset: 0, len: 4096 }],
        chunk_size,
        block_size: 65536,
        session,
        chain,
        capabilities: caps,
    };
    let real = |f: FileId, range: ByteRange, mode: Mode, sess: SessionId| {
        raw::mint_capability(cluster.config(), f, range, mode, sess, chunk_size).unwrap()
    };
    let genuine = real(file, ByteRange::ALL, Mode::Write, session);
    let forged = pfs_common::capability::sign(&Key::random(), genuine);
    let expired = raw::resign(cluster.config(), genuine, |c| c.expires_ms = unix_ms() - 1);
    let mut widened = real(file, ByteRange::new(0, 10), Mode::Write, session);
    widened.range.end = u64::MAX;
    let cases = [
        (vec![], "no capability"),
        (vec![forged], "a capability MAC'd with another key"),
        (vec![expired], "an expired capability"),
        (vec![widened], "a capability whose range was widened"),
        (vec![real(other_id, ByteRange::ALL, Mode::Write, session)], "another file's capability"),
        (vec![real(file, ByteRange::ALL, Mode::Write, session + 1)], "another session's capability"),
        (vec![real(file, ByteRange::ALL, Mode::Read, session)], "a read capability"),
        (vec![real(file, ByteRange::new(0, 100), Mode::Write, session)], "a capability not covering the bytes"),
    ];
    for (caps, what) in cases {
        let e = s.call(write(caps), &[0xEE; 4096]).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Denied, "{what}: {e}");
    }
    // A vectored write needs every extent covered: capabilities for the first extent and
    // the last do not let the one between them through.
    let parts =
        vec![Extent { offset: 0, len: 100 }, Extent { offset: 200, len: 100 }, Extent { offset: 400, len: 100 }];
    let ends = vec![
        real(file, ByteRange::new(0, 100), Mode::Write, session),
        real(file, ByteRange::new(400, 500), Mode::Write, session),
    ];
    let e = s.call(WriteChunk { extents: parts, ..write(ends) }, &[0xEE; 300]).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Denied, "{e}");
    let gap = CapabilityError::NotCovered { file, range: ByteRange::new(200, 300), uncovered: 200 };
    assert!(e.to_string().ends_with(&format!("denied: {gap}")), "{e}");
    // Truncate and read, without capabilities and with too narrow ones.
    let truncate = |caps| TruncateFile { file, size: 0, chunk_size, session, capabilities: caps };
    denied(s.ask(truncate(vec![])).await, "truncate without a capability");
    denied(s.ask(truncate(vec![real(file, ByteRange::new(0, 100), Mode::Write, session)])).await, "narrow truncate");
    let read =
        |caps| ReadChunk { file, chunk: 0, offset: 0, len: 4096, chain, chunk_size, session, capabilities: caps };
    assert_eq!(s.call(read(vec![]), &[]).await.unwrap_err().code(), ErrorCode::Denied);
    assert_eq!(s.call(read(vec![forged]), &[]).await.unwrap_err().code(), ErrorCode::Denied);
    // pfs-meta issues none for a file the session holds no Write token on or has not open.
    let ask = |mode| tok::GetCapability { session, file, mode, range: ByteRange::new(0, 4096) };
    assert_eq!(intruder.ask(ask(Mode::Write)).await.unwrap_err().code(), ErrorCode::Denied);
    assert_eq!(intruder.ask(ask(Mode::Read)).await.unwrap_err().code(), ErrorCode::Denied);

    // Nothing changed: the file reads back whole, every replica verifies, and the storage
    // server logged the refusals with the peer's address.
    let back = cluster.dir().join("victim.again");
    ok(run_tool(PFS_CP, &cfg, &["pfs:/victim", back.to_str().unwrap()]));
    assert_eq!(sha256_hex(&std::fs::read(&back).unwrap()), sha256_hex(&data));
    ok(run_tool(PFS, &cfg, &["getstripe", "--verify", "/victim"]));
    client.close().await.unwrap();
    still_serves(&cluster, "/after-capabilities").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_answers_only_to_the_connection_that_opened_it() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let victim = cluster.client().await.unwrap();
    let theirs = victim.session().unwrap();
    let f = victim.create("/mine", &CreateOptions::default()).await.unwrap();
    f.write_at(0, b"before").await.unwrap();
    f.fsync().await.unwrap();

    let intruder: RpcClient<MetaRequest> =
        connect(cluster.config().meta[0].address, PeerRole::Client, cluster.config().auth(false).unwrap())
            .await
            .unwrap();
    let SessionGrant { session: mine, .. } = intruder.ask(tok::OpenSession).await.unwrap();
    // Not a counter: the low 40 bits are random.
    assert!(mine.abs_diff(theirs) > 1_000, "{mine:x} next to {theirs:x}");
    let denied = |e: pfs_common::Error| assert_eq!(e.code(), ErrorCode::Denied, "{e}");
    denied(intruder.ask(tok::KeepAlive { session: theirs }).await.unwrap_err());
    denied(intruder.ask(tok::CloseSession { session: theirs }).await.unwrap_err());
    denied(intruder.ask(tok::RevokeDone { session: theirs, revoke: 1 }).await.unwrap_err());
    denied(intruder.ask(tok::Release { session: theirs, file: f.id(), range: ByteRange::ALL }).await.unwrap_err());
    let acquire = tok::Acquire {
        session: theirs,
        file: f.id(),
        mode: Mode::Write,
        required: ByteRange::new(0, 1),
        desired: ByteRange::ALL,
        ahead: None,
    };
    denied(intruder.ask(acquire).await.unwrap_err());
    let cap = tok::GetCapability { session: theirs, file: f.id(), mode: Mode::Write, range: ByteRange::new(0, 1) };
    denied(intruder.ask(cap).await.unwrap_err());
    denied(intruder.ask(Open { target: "/mine".into(), session: theirs, closed: vec![] }).await.unwrap_err());

    // The victim's session lives on, its token and cache intact: it writes and reads on.
    f.write_at(6, b" after").await.unwrap();
    f.fsync().await.unwrap();
    let mut back = [0u8; 12];
    assert_eq!(f.read_at(0, &mut back).await.unwrap(), 12);
    assert_eq!(&back, b"before after");
    assert_eq!(victim.session().unwrap(), theirs);
    f.close().await.unwrap();
    victim.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_configured_storage_servers_register() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let meta = cluster.config().meta[0].address;
    let real = cluster.config().storage[0].clone();
    let with_key = cluster.config().auth(true).unwrap();
    let fake: RpcClient<MetaRequest> = connect(meta, PeerRole::Storage, with_key.clone()).await.unwrap();
    let register = |id: u32, address: std::net::SocketAddr| Register {
        id: ServerId(id),
        address,
        capacity_bytes: 1 << 40,
        free_bytes: 1 << 40,
        boot: 99,
    };
    let denied = |e: pfs_common::Error, what: &str| assert_eq!(e.code(), ErrorCode::Denied, "{what}: {e}");
    denied(fake.ask(register(1, real.address)).await.unwrap_err(), "a live server's id");
    denied(fake.ask(register(9, "127.0.0.1:1".parse().unwrap())).await.unwrap_err(), "an id not in the config");
    denied(fake.ask(register(2, "127.0.0.1:1".parse().unwrap())).await.unwrap_err(), "another address");
    let e = fake.ask(Heartbeat { id: ServerId(1), capacity_bytes: 0, free_bytes: 0 }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "a heartbeat for a server registered on another connection: {e}");
    // Fence confirmations too: a storage-key holder cannot confirm fences in a live server's
    // name (pfs-meta would hand an evicted session's tokens on before that server fenced it).
    let e = fake.ask(Fenced { id: ServerId(1), sessions: vec![7] }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "fences confirmed for a server registered on another connection: {e}");
    assert!(e.to_string().contains("storage-1"), "{e}");
    // A client may not register or report at all, nor can a node holding only the client key
    // or no key connect as a storage server.
    let client: RpcClient<MetaRequest> = connect(meta, PeerRole::Client, with_key).await.unwrap();
    denied(client.ask(register(1, real.address)).await.unwrap_err(), "a client registering");
    denied(client.ask(Fenced { id: ServerId(1), sessions: vec![] }).await.unwrap_err(), "a client confirming fences");
    let client_key = raw::role_key(cluster.config(), PeerRole::Client);
    let only_client = Auth { credentials: Some(Credentials::Client(client_key.clone())), protect_data: false };
    let e = connect::<MetaRequest>(meta, PeerRole::Storage, only_client).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AuthFailed, "{e}");
    let e = raw::handshake(meta, PeerRole::Storage, &client_key).await.map(drop);
    assert!(matches!(e, Err(raw::HandshakeError::BadProof { .. })), "the client key proved the storage role: {e:?}");
    let e = connect::<MetaRequest>(meta, PeerRole::Storage, Auth::none()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AuthFailed, "{e}");

    // The registry is as it was: both servers up at their own addresses.
    let df = ok(run_tool(PFS, &cfg, &["df"]));
    for s in &cluster.config().storage {
        assert!(df.contains(&s.address.to_string()), "{df}");
    }
    assert!(!df.contains("DOWN"), "{df}");
    still_serves(&cluster, "/after-registrations").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_key_node_works_but_cannot_serve_or_forge() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let key = cluster.dir().join("client.key");
    ok(run_tool(PFS, &cfg, &["keygen", "--client-key", key.to_str().unwrap()]));
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (32, 0o400));
    }
    let e = fails(PFS, &cfg, &["keygen", key.to_str().unwrap()]);
    assert!(e.contains("never overwritten"), "{e}");
    let client_cfg = config_variant(&cluster, "client.toml", |c| {
        c.auth = Some(AuthConfig::Keys(AuthSettings {
            secret_file: None,
            client_key_file: Some(key.clone()),
            protect_data: false,
        }))
    });
    round_trip(&client_cfg, cluster.dir(), "from-client-node", &random_bytes(5 << 20, 3));
    let e = fails(PFS, &client_cfg, &["serve", "storage", "--id", "1"]);
    assert!(e.contains("needs the cluster secret"), "{e}");
    // It holds no capability key to forge with.
    let loaded = Config::load(&client_cfg).unwrap();
    assert_eq!(loaded.auth(false).unwrap().capability_key(), None);
    let opts = ClientOptions::from_config(&loaded).unwrap();
    let c = Client::connect(opts).await.unwrap();
    assert!(c.stat("/from-client-node").await.is_ok());
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn payload_macs_and_auth_none_both_round_trip() {
    let protected = LocalCluster::start_with(2, |c| {
        if let Some(AuthConfig::Keys(k)) = &mut c.auth {
            k.protect_data = true;
        }
    })
    .await
    .unwrap();
    round_trip(protected.config_path(), protected.dir(), "protected", &random_bytes(9 << 20, 4));
    drop(protected);

    let open = LocalCluster::start_with(2, |c| c.auth = Some(AuthConfig::None)).await.unwrap();
    round_trip(open.config_path(), open.dir(), "open", &random_bytes(2 << 20, 6));
    for kind in [DaemonKind::Meta(1), DaemonKind::Storage(ServerId(1))] {
        let log = log_of(&open, kind);
        assert!(log.contains("auth = \"none\"") && log.contains("not authenticated"), "{kind:?} warns: {log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_renew_capabilities_that_expire() {
    // Capabilities valid a hair over the renewal margin: a client finds every kept one too old
    // and asks pfs-meta for a fresh one before each read, write and truncate, and during the
    // write-back of a revoke.
    let cluster = LocalCluster::start_with(2, |c| c.tokens.capability_ms = RENEW_MARGIN_MS + 1).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    round_trip(&cfg, cluster.dir(), "renewed", &random_bytes(6 << 20, 8));
    let a = cluster.client().await.unwrap();
    let b = cluster.client().await.unwrap();
    let fa = a.create("/shared", &CreateOptions::default()).await.unwrap();
    fa.write_at(0, &[1u8; 100_000]).await.unwrap(); // dirty in a's cache under its Write token
    let fb = b.open("/shared").await.unwrap();
    let mut back = vec![0u8; 100_000];
    // b's read revokes a's token: a writes back with a fresh capability first.
    assert_eq!(fb.read_at(0, &mut back).await.unwrap(), 100_000);
    assert!(back.iter().all(|&x| x == 1));
    fb.truncate(10).await.unwrap();
    assert_eq!(fb.size(), 10);
    fa.close().await.unwrap();
    fb.close().await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
}
