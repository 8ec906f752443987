//! Input bounds on a real cluster: bad inputs get a clear error and the servers go on serving
//! everyone else; idle connections are closed and clients reconnect; paths resolve as Linux
//! does; `pfs-cp` into a directory as `cp` does.

use pfs_client::{CreateOptions, ErrorCode};
use pfs_common::layout::{LayoutChoice, MAX_FILE_SIZE};
use pfs_common::rpc::RpcClient;
use pfs_common::wire::frame::{read_frame, write_frame, FrameKind, DEFAULT_LIMITS};
use pfs_common::wire::namespace::{
    Create, FileKind, Link, Lookup, Mkdir, Mknod, NewAttrs, Readdir, SetAttr, SetSize, Stat, Symlink, Target, Truncate,
};
use pfs_common::wire::registry::{ChunkReport, ChunkState, Fenced, CHUNK_REPORT_PAGE, FENCED_MAX};
use pfs_common::wire::storage::StorageRequest;
use pfs_common::wire::{self, Hello, HelloReply, MetaRequest, PeerRole, ResponseBody, PROTOCOL_VERSION};
use pfs_common::{pool, FileId, ServerId};
use pfs_testkit::{ok, random_bytes, raw, run_tool, LocalCluster};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use tokio::net::TcpStream;

const PFS: &str = env!("CARGO_BIN_EXE_pfs");
const PFS_CP: &str = env!("CARGO_BIN_EXE_pfs-cp");

async fn meta(cluster: &LocalCluster, role: PeerRole) -> RpcClient<MetaRequest> {
    let opts = raw::cluster_options(cluster.config(), role, "bounds-test");
    RpcClient::connect(cluster.config().meta[0].address, "pfs-meta", &opts, None).await.unwrap()
}

/// A raw connection to `addr` that sent `name` in its handshake; returns the stream and the
/// handshake's answer.
async fn raw_hello(addr: SocketAddr, name: String) -> (TcpStream, ResponseBody<HelloReply>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        role: PeerRole::Client,
        name,
        nonce: [3; 32],
        auth: true,
        protect_data: false,
    };
    write_frame(&mut s, FrameKind::Request, 0, &wire::encode(&hello), &[], None).await.unwrap();
    let f =
        read_frame(&mut s, &DEFAULT_LIMITS, pool::global(), None).await.unwrap().expect("the handshake is answered");
    let answer = wire::decode(&f.body).unwrap();
    (s, answer)
}

/// An authenticated connection to `addr` that sends nothing after its handshake.
async fn silent<R: serde::Serialize>(cluster: &LocalCluster, addr: SocketAddr) -> RpcClient<R> {
    let opts = raw::cluster_options(cluster.config(), PeerRole::Client, "idle");
    RpcClient::connect(addr, "server", &opts, None).await.unwrap()
}

/// Waits until the server closed `c` (polled every 20 ms). The deadline only turns a server
/// that never closes into a failure instead of a hang; nothing is timed.
async fn closed_by_server<R: serde::Serialize>(c: &RpcClient<R>, what: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while !c.is_closed() {
        assert!(std::time::Instant::now() < end, "{what}: the server never closed the idle connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a tool that must fail; returns its error line.
fn fails(exe: &str, cfg: &Path, args: &[&str]) -> String {
    let out = run_tool(exe, cfg, args);
    assert!(!out.status.success(), "{args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{args:?}: one error line: {err}");
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors_and_the_servers_serve_on() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let c = meta(&cluster, PeerRole::Client).await;
    let f = c
        .ask(Create {
            target: "/f".into(),
            layout: LayoutChoice::default(),
            exclusive: true,
            session: None,
            attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o644, uid: 0, gid: 0 },
            closed: vec![],
            request: None,
        })
        .await
        .unwrap();

    // A size past 2^63 - 1: refused, naming the file and the limit; nothing changes.
    for size in [u64::MAX, MAX_FILE_SIZE + 1] {
        let e = c.ask(SetSize { file: f.id, size }).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
        let shown = e.to_string();
        assert!(shown.contains(&f.id.to_string()) && shown.contains("9223372036854775807"), "{shown}");
    }
    let e = c.ask(Truncate { file: f.id, size: MAX_FILE_SIZE + 1, expected_generation: None }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
    assert!(e.to_string().contains("9223372036854775807"), "{e}");
    assert_eq!(c.ask(Stat { file: f.id }).await.unwrap().size, 0);

    // A readdir position longer than any name (1 MiB): refused before it is compared.
    let after = Some("x".repeat(1 << 20));
    let e = c.ask(Readdir { dir: "/".into(), after, limit: 10 }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NameTooLong, "{e}");
    assert!(e.to_string().contains("after") && e.to_string().contains("1048576 bytes"), "{e}");

    // A 256-byte name is too long, a 255-byte one is fine.
    let e = c
        .ask(Mkdir {
            target: format!("/{}", "n".repeat(256)).into(),
            attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 },
            request: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NameTooLong, "{e}");
    assert!(e.to_string().contains("file name too long") && e.to_string().contains("256 bytes"), "{e}");
    c.ask(Mkdir {
        target: format!("/{}", "n".repeat(255)).into(),
        attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 },
        request: None,
    })
    .await
    .unwrap();

    // POSIX requests that lie: entry names that are paths or dots, directory ids that are
    // files or missing, mode bits past 0o7777, empty or huge link contents, a hard link to a
    // directory, a node kind Mknod does not make. Each refused with a clear error.
    let attrs = NewAttrs { mode: 0o644, uid: 0, gid: 0 };
    for name in ["a/b", "..", ".", "", "x\0y"] {
        let e = c
            .ask(Mkdir { target: Target::Entry { dir: FileId::ROOT, name: name.into() }, attrs, request: None })
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid, "{name:?}: {e}");
        assert!(e.to_string().contains("one component"), "{e}");
    }
    for dir in [f.id, FileId(1 << 40)] {
        let e =
            c.ask(Mkdir { target: Target::Entry { dir, name: "x".into() }, attrs, request: None }).await.unwrap_err();
        assert!(matches!(e.code(), ErrorCode::NotDir | ErrorCode::NotFound), "{dir}: {e}");
    }
    let e = c.ask(Mkdir { target: Target::Id(f.id), attrs, request: None }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
    let e = c
        .ask(Mkdir { target: "/m".into(), attrs: NewAttrs { mode: 0o170777, ..attrs }, request: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
    let set = SetAttr { file: f.id, mode: Some(0o10000), uid: None, gid: None, atime: None, mtime: None };
    assert_eq!(c.ask(set).await.unwrap_err().code(), ErrorCode::Invalid);
    for link in [String::new(), "l".repeat(4097)] {
        let e = c.ask(Symlink { target: "/s".into(), link, uid: 0, gid: 0, request: None }).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
    }
    let e = c.ask(Link { file: FileId::ROOT, target: "/root-link".into(), request: None }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::IsDir, "{e}");
    let e = c.ask(Mknod { target: "/n".into(), kind: FileKind::Dir, rdev: 0, attrs, request: None }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
    assert_eq!(c.ask(Stat { file: FileId::ROOT }).await.unwrap().nlink, 3, "only the 255-byte directory was made");

    // A handshake with a 1 MiB name is refused, naming the limit.
    let (_, answer) = raw_hello(cluster.config().meta[0].address, "h".repeat(1 << 20)).await;
    let e = answer.unwrap_err();
    assert_eq!(e.code, ErrorCode::Protocol);
    assert!(e.message.contains("1048576 bytes") && e.message.contains("256"), "{}", e.message);

    // Lists from a storage server longer than their documented maximum.
    let s = meta(&cluster, PeerRole::Storage).await;
    let e = s.ask(Fenced { id: ServerId(9), sessions: vec![1; FENCED_MAX + 1] }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
    assert!(e.to_string().contains(&format!("at most {FENCED_MAX}")), "{e}");
    let state =
        ChunkState { file: FileId(1), chunk: 0, len: 0, sha256: None, removed: false, durable: false, version: 0 };
    let report =
        ChunkReport { id: ServerId(9), chunks: vec![state; CHUNK_REPORT_PAGE + 1], listing: false, full: false };
    let e = s.ask(report).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid, "{e}");

    // The client library refuses a write ending, or a truncate, past the largest file before
    // it asks anyone for anything.
    let client = cluster.client().await.unwrap();
    let file = client.open("/f").await.unwrap();
    let before = client.stats();
    let e = file.write_at(MAX_FILE_SIZE - 1, b"xy").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
    assert!(e.to_string().contains("/f") && e.to_string().contains("9223372036854775807"), "{e}");
    let e = file.truncate(MAX_FILE_SIZE + 1).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
    assert!(e.to_string().contains("/f"), "{e}");
    let after = client.stats();
    assert_eq!((after.token_acquires, after.storage_connects), (before.token_acquires, before.storage_connects));
    // One byte at the very end is allowed (a sparse file of the largest size).
    file.write_at(MAX_FILE_SIZE - 1, b"z").await.unwrap();
    file.close().await.unwrap();
    assert_eq!(client.stat("/f").await.unwrap().size, MAX_FILE_SIZE);

    // Everyone is still served: the same connections, and new clients.
    assert_eq!(c.ask(Lookup { target: "/f".into() }).await.unwrap().id, f.id);
    let other = cluster.client().await.unwrap();
    other.create("/after", &CreateOptions::default()).await.unwrap().close().await.unwrap();
    assert_eq!(other.stat("/after").await.unwrap().size, 0);
    other.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_and_clients_reconnect() {
    // The shortest idle timeout the configuration accepts with a 3 s lease and down time
    // (shorter leases risk evicting a client that a loaded test machine holds up).
    let cluster = LocalCluster::start_with(2, |c| {
        c.tokens.lease_ms = 3_000;
        c.timeouts.heartbeat_ms = 300;
        c.timeouts.server_down_ms = 3_000;
        c.timeouts.idle_ms = 6_000;
    })
    .await
    .unwrap();
    let client = cluster.client().await.unwrap();
    let chunk = 1 << 20;
    let data = random_bytes(2 * chunk, 7);
    let f = client.create("/f", &CreateOptions::default()).await.unwrap();
    f.write_at(0, &data).await.unwrap();
    f.fsync().await.unwrap();
    let connects = client.stats().storage_connects;
    assert_eq!(connects, 2, "one connection per storage server");

    // A connection that completed its handshake and then says nothing is closed, by pfs-meta
    // and by a storage server. The storage server's raw connection is made once pfs-meta's
    // closed, an idle timeout after the client's last storage call: by then the server has
    // closed the client's connections too.
    let to_meta: RpcClient<MetaRequest> = silent(&cluster, cluster.config().meta[0].address).await;
    closed_by_server(&to_meta, "pfs-meta").await;
    let to_storage: RpcClient<StorageRequest> = silent(&cluster, cluster.config().storage[0].address).await;
    closed_by_server(&to_storage, "storage-1").await;

    // The client kept its session (keep-alives keep its pfs-meta connection busy), and its
    // next reads and writes (a chunk or more: they bypass the cache and go to the servers)
    // work over new storage connections.
    let mut back = vec![0u8; data.len()];
    assert_eq!(f.read_at(0, &mut back).await.unwrap(), data.len());
    assert!(back == data, "read back bytes differ");
    let more = random_bytes(chunk, 8);
    f.write_at(data.len() as u64, &more).await.unwrap();
    f.close().await.unwrap();
    assert!(client.stats().storage_connects > connects, "the closed storage connections were opened again");
    let g = client.open("/f").await.unwrap();
    let mut tail = vec![0u8; chunk];
    assert_eq!(g.read_at(data.len() as u64, &mut tail).await.unwrap(), chunk);
    assert!(tail == more);
    g.close().await.unwrap();

    // And the servers serve new clients.
    let other = cluster.client().await.unwrap();
    assert_eq!(other.stat("/f").await.unwrap().size, (data.len() + chunk) as u64);
    other.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_resolve_as_linux_does() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let x = cluster.dir().join("x");
    std::fs::write(&x, b"bytes of x\n").unwrap();
    let x = x.to_str().unwrap();
    ok(run_tool(PFS, &cfg, &["mkdir", "/a"]));
    ok(run_tool(PFS_CP, &cfg, &[x, "pfs:/file"]));

    // A trailing slash on a file: not a directory, for stat and for rm -r (which removes
    // nothing).
    for args in [&["stat", "/file/"][..], &["rm", "-r", "/file/"], &["rm", "/file/"], &["ls", "/file/"]] {
        let err = fails(PFS, &cfg, args);
        assert!(err.contains("/file/") && err.contains("not a directory"), "{args:?}: {err}");
    }
    assert!(ok(run_tool(PFS, &cfg, &["stat", "/file"])).contains("size        11 bytes"));
    ok(run_tool(PFS, &cfg, &["stat", "/a/"]));

    // `..` walks to the parent through an existing directory.
    ok(run_tool(PFS_CP, &cfg, &[x, "pfs:/a/../y"]));
    assert!(ok(run_tool(PFS, &cfg, &["stat", "/y"])).contains("size        11 bytes"));
    let y = ok(run_tool(PFS, &cfg, &["stat", "/a/./../y"]));
    assert!(y.contains("size        11 bytes"), "{y}");
    let err = fails(PFS, &cfg, &["stat", "/nonexistent/../y"]);
    assert!(err.contains("/nonexistent/../y") && err.contains("no such file or directory"), "{err}");
    let err = fails(PFS, &cfg, &["stat", "/file/../y"]);
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(ok(run_tool(PFS, &cfg, &["ls", "/a/.."])), ok(run_tool(PFS, &cfg, &["ls", "/"])));

    // A 256-byte name: too long (ENAMETOOLONG); 255 bytes is the limit.
    let long = format!("/{}", "n".repeat(256));
    let err = fails(PFS, &cfg, &["mkdir", &long]);
    assert!(err.contains("file name too long"), "{err}");
    let client = cluster.client().await.unwrap();
    assert_eq!(client.stat(&long).await.unwrap_err().code(), ErrorCode::NameTooLong);
    ok(run_tool(PFS, &cfg, &["mkdir", &long[..256]]));

    // `.` and `..` as the last component fail as on Linux.
    let err = fails(PFS, &cfg, &["mkdir", "/a/.."]);
    assert!(err.contains("already exists"), "{err}");
    let err = fails(PFS, &cfg, &["rmdir", "/a/."]);
    assert!(err.contains("`.` cannot be removed"), "{err}");
    assert_eq!(client.rename("/a/..", "/b").await.unwrap_err().code(), ErrorCode::Busy);
    assert_eq!(client.unlink("/a/.").await.unwrap_err().code(), ErrorCode::IsDir);
    // A directory renamed with trailing slashes; a file is not.
    ok(run_tool(PFS, &cfg, &["mv", "/a/", "/b/"]));
    let err = fails(PFS, &cfg, &["mv", "/file/", "/file2"]);
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(client.stat("/b").await.unwrap().kind, pfs_client::FileKind::Dir);
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn pfs_cp_copies_into_a_directory_as_cp_does() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let cfg = cluster.config_path().to_path_buf();
    let x = cluster.dir().join("x");
    std::fs::write(&x, b"the bytes of x").unwrap();
    let x = x.to_str().unwrap();
    ok(run_tool(PFS, &cfg, &["mkdir", "/dir"]));
    ok(run_tool(PFS_CP, &cfg, &[x, "pfs:/file"]));
    let root_before = ok(run_tool(PFS, &cfg, &["ls", "/"]));

    // Into an existing directory, with or without the slash.
    ok(run_tool(PFS_CP, &cfg, &[x, "pfs:/dir/"]));
    assert_eq!(ok(run_tool(PFS, &cfg, &["cat", "/dir/x"])), "the bytes of x");
    ok(run_tool(PFS, &cfg, &["rm", "/dir/x"]));
    ok(run_tool(PFS_CP, &cfg, &[x, "pfs:/dir"]));
    assert_eq!(ok(run_tool(PFS, &cfg, &["cat", "/dir/x"])), "the bytes of x");
    assert_eq!(ok(run_tool(PFS, &cfg, &["ls", "/dir"])), "x\n");

    // A trailing slash on something that is not a directory: an error, nothing created or
    // overwritten.
    let err = fails(PFS_CP, &cfg, &[x, "pfs:/missing/"]);
    assert!(err.contains("pfs:/missing/") && err.contains("not a directory"), "{err}");
    let err = fails(PFS_CP, &cfg, &[x, "pfs:/file/"]);
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(ok(run_tool(PFS, &cfg, &["ls", "/"])), root_before);
    assert_eq!(ok(run_tool(PFS, &cfg, &["cat", "/file"])), "the bytes of x");

    // The same rules for a local destination.
    let out = cluster.dir().join("out");
    std::fs::create_dir(&out).unwrap();
    let out_slash = format!("{}/", out.display());
    ok(run_tool(PFS_CP, &cfg, &["pfs:/dir/x", &out_slash]));
    assert_eq!(std::fs::read(out.join("x")).unwrap(), b"the bytes of x");
    ok(run_tool(PFS_CP, &cfg, &["pfs:/file", out.to_str().unwrap()]));
    assert_eq!(std::fs::read(out.join("file")).unwrap(), b"the bytes of x");
    let missing = out.join("missing");
    let err = fails(PFS_CP, &cfg, &["pfs:/file", &format!("{}/", missing.display())]);
    assert!(err.contains("not a directory"), "{err}");
    assert!(!missing.exists());

    // Recursive copies as before: into an existing directory under the source's name, or
    // as a new directory (a trailing slash is fine there).
    let tree = cluster.dir().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/leaf"), b"leaf").unwrap();
    ok(run_tool(PFS_CP, &cfg, &["-r", tree.to_str().unwrap(), "pfs:/dir"]));
    assert_eq!(ok(run_tool(PFS, &cfg, &["cat", "/dir/tree/sub/leaf"])), "leaf");
    ok(run_tool(PFS_CP, &cfg, &["-r", tree.to_str().unwrap(), "pfs:/newtree/"]));
    assert_eq!(ok(run_tool(PFS, &cfg, &["cat", "/newtree/sub/leaf"])), "leaf");
}
