//! Supervised background workers, against the real `pfs-storage` binary with a pfs-meta run
//! in-process: a worker made to panic once (`PFS_STORAGE_FAIL_POINT`) is never lost silently.
//! The hasher's panic stops the server's writes, with a log line and a refusal naming it;
//! the pfs-meta session's panic is logged and the session restarted, and writes go on.

mod common;

use common::{connect, free_port, wait_until, Meta};
use pfs_common::chain::ChainRef;
use pfs_common::config::Config;
use pfs_common::layout::LayoutChoice;
use pfs_common::rpc::RpcClient;
use pfs_common::token::SessionId;
use pfs_common::wire::namespace::Create;
use pfs_common::wire::registry::GetChains;
use pfs_common::wire::storage::{Extent, ReadChunk, StorageRequest, WriteChunk};
use pfs_common::wire::tokens::OpenSession;
use pfs_common::wire::MetaRequest;
use pfs_common::{ErrorCode, FileId};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const CS: u64 = 1 << 20;

/// The server process and its log file; killed when the test ends, pass or fail.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A storage server with `PFS_STORAGE_FAIL_POINT=fail_point` and a pfs-meta; a client
/// session and a file on the server's chain.
struct Setup {
    server: Server,
    _meta: Meta,
    /// The session lives as long as this connection.
    _m: RpcClient<MetaRequest>,
    _dir: tempfile::TempDir,
    c: RpcClient<StorageRequest>,
    chain: ChainRef,
    session: SessionId,
    file: u64,
}

async fn start(fail_point: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::local(dir.path(), free_port(), 1);
    config.auth = Some(pfs_common::config::AuthConfig::None);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.storage[0].address = addr;
    config.timeouts.heartbeat_ms = 100;
    config.timeouts.server_down_ms = 2_000;
    let cfg_path = dir.path().join("pfs.toml");
    std::fs::write(&cfg_path, config.to_toml()).unwrap();
    let log = dir.path().join("storage.log");
    let child = Command::new(env!("CARGO_BIN_EXE_pfs-storage"))
        .args(["--config", cfg_path.to_str().unwrap(), "--id", "1"])
        .env(pfs_storage::supervisor::FAIL_POINT_VAR, fail_point)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let server = Server { child, log };
    let meta = Meta::start(config.clone());
    let m: RpcClient<MetaRequest> = connect(config.meta[0].address, "pfs-meta").await;
    let session = m.ask(OpenSession).await.unwrap().session;
    let create = Create {
        target: "/f".into(),
        layout: LayoutChoice::default(),
        exclusive: false,
        session: None,
        attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o644, uid: 0, gid: 0 },
        closed: vec![],
        request: None,
    };
    wait_until("a storage server is up for new files", || async { m.ask(create.clone()).await.is_ok() }).await;
    let created = m.ask(create).await.unwrap();
    let chains = m.ask(GetChains { ids: created.layout.unwrap().chains }).await.unwrap();
    let c = connect(addr, "storage-1").await;
    Setup { server, _meta: meta, _m: m, _dir: dir, c, chain: chains[0].at(), session, file: created.id.0 }
}

impl Setup {
    async fn write(&self, chunk: u64, data: &[u8]) -> pfs_common::Result<u64> {
        let req = WriteChunk {
            file: FileId(self.file),
            chunk,
            extents: vec![Extent { offset: 0, len: data.len() as u32 }],
            chunk_size: CS,
            block_size: 4096,
            session: self.session,
            chain: self.chain,
            capabilities: vec![],
        };
        let (w, _) = self.c.call(req, data).await?;
        Ok(w.boots[0].1)
    }

    async fn read(&self, chunk: u64) -> Vec<u8> {
        let req = ReadChunk {
            file: FileId(self.file),
            chunk,
            offset: 0,
            len: 100,
            chain: self.chain,
            chunk_size: CS,
            session: 0,
            capabilities: vec![],
        };
        self.c.call(req, &[]).await.unwrap().1.to_vec()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_hasher_stops_writes_naming_it() {
    let s = start("hasher").await;
    // The first write admitted is hashed in the background once quiet; the hasher panics
    // right after that hash.
    wait_until("a write is admitted", || async { s.write(0, b"hashed, then the hasher dies").await.is_ok() }).await;
    let refusal = parking_lot::Mutex::new(None);
    wait_until("writes are refused", || async {
        match s.write(1, b"after").await {
            Err(e) => {
                *refusal.lock() = Some(e);
                true
            }
            Ok(_) => false,
        }
    })
    .await;
    let e = refusal.into_inner().unwrap();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(e.to_string().contains("writes are stopped: background worker hasher panicked"), "{e}");
    let log = s.server.log();
    assert!(
        log.contains("background worker hasher panicked: fail point hasher")
            && log.contains("writes are refused until this storage server is restarted"),
        "{log}"
    );
    // It stays so (the hasher is not restarted), and reads are still served.
    let e = s.write(2, b"later").await.unwrap_err();
    assert!(e.to_string().contains("background worker hasher"), "{e}");
    assert_eq!(s.read(0).await, b"hashed, then the hasher dies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_meta_session_is_restarted_and_writes_go_on() {
    let s = start("meta-link").await;
    // The session panics once, right after its first registration; it is restarted and
    // registers again.
    wait_until("the pfs-meta session was restarted and registered again", || async {
        let log = s.server.log();
        log.contains("background worker meta-link restarted") && log.matches("registered with pfs-meta").count() >= 2
    })
    .await;
    let log = s.server.log();
    assert!(log.contains("background worker meta-link panicked: fail point meta-link"), "{log}");
    assert!(log.contains("restarting it in"), "{log}");
    wait_until("writes are admitted again", || async { s.write(0, b"written after the restart").await.is_ok() }).await;
    assert_eq!(s.read(0).await, b"written after the restart");
}
