//! Starts the real `pfs-storage` binary on an ephemeral loopback port, without pfs-meta, and
//! talks to it as a client: chunk writes and reads, and hostile connections that must not
//! disturb well-behaved clients. Runs once per engine.

use pfs_common::config::{Config, EngineChoice};
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::wire::frame::{FrameHeader, FrameKind, HEADER_LEN};
use pfs_common::wire::storage::{StorageRequest, StorageResponse};
use pfs_common::wire::{self, Hello, Role, PROTOCOL_VERSION};
use pfs_common::{ErrorCode, FileId};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CS: u64 = 1 << 20;

/// Kills the server when the test ends, pass or fail.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        role: Role::Client,
        name: "storage-test".into(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(20),
    }
}

/// Connects, retrying until the server listens (deadline 20 s).
async fn connect(addr: SocketAddr) -> RpcClient {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match RpcClient::connect(addr, "storage-1", &opts(), None).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > end => panic!("server never came up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn write(c: &RpcClient, file: u64, chunk: u64, offset: u64, data: &[u8]) -> pfs_common::Result<()> {
    let req = StorageRequest::Write { file: FileId(file), chunk, offset, chunk_size: CS, session: 0 };
    let (resp, _) = c.call::<_, StorageResponse>(&req, data).await?;
    assert_eq!(resp, StorageResponse::Written { len: data.len() as u32 });
    Ok(())
}

async fn read(c: &RpcClient, file: u64, chunk: u64, offset: u64, len: u32) -> (Vec<u8>, u64) {
    let req = StorageRequest::Read { file: FileId(file), chunk, offset, len };
    let (resp, payload) = c.call::<_, StorageResponse>(&req, &[]).await.unwrap();
    let StorageResponse::Read { chunk_len } = resp else { panic!("unexpected answer {resp:?}") };
    (payload.to_vec(), chunk_len)
}

/// Reads until the server answers or closes; true if it sent an error frame or closed.
async fn rejected(mut s: TcpStream) -> bool {
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await;
    match r {
        // Closed (possibly after an error frame) or reset.
        Ok(Ok(_)) | Ok(Err(_)) => true,
        Err(_) => false,
    }
}

async fn hello_frame() -> Vec<u8> {
    let body = wire::encode(&Hello { version: PROTOCOL_VERSION, role: Role::Client, name: "hostile".into() });
    let h = FrameHeader { kind: FrameKind::Request, body_len: body.len() as u32, payload_len: 0, request_id: 0 };
    let mut out = h.encode().to_vec();
    out.extend_from_slice(&body);
    out
}

async fn scenario(engine: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::local(dir.path(), free_port(), 1);
    // pfs-meta's port is left unbound: the server must serve clients without it.
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.storage[0].address = addr;
    config.storage[0].engine = engine;
    let cfg_path = dir.path().join("pfs.toml");
    std::fs::write(&cfg_path, config.to_toml()).unwrap();
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_pfs-storage"))
            .args(["--config", cfg_path.to_str().unwrap(), "--id", "1"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = connect(addr).await;

    // Write and read chunks; the chunk file appears with the right name and bytes.
    write(&c, 0x42, 3, 100, b"hello storage").await.unwrap();
    let data: Vec<u8> = (0..CS as u32).map(|i| (i % 251) as u8).collect();
    write(&c, 0x42, 4, 0, &data).await.unwrap();
    assert_eq!(read(&c, 0x42, 3, 100, 1000).await, (b"hello storage".to_vec(), 113));
    assert_eq!(read(&c, 0x42, 4, 0, CS as u32).await.0, data);
    assert_eq!(read(&c, 0x42, 9, 0, 10).await, (vec![], 0), "a hole reads empty");
    let path = config.storage_dir(&config.storage[0]).join("0000000000000042_chunk_3");
    let mut want = vec![0u8; 100];
    want.extend_from_slice(b"hello storage");
    assert_eq!(std::fs::read(&path).unwrap(), want);
    let (resp, _) = c.call::<_, StorageResponse>(&StorageRequest::Fsync { file: FileId(0x42) }, &[]).await.unwrap();
    assert_eq!(resp, StorageResponse::Done);
    let (resp, _) = c.call::<_, StorageResponse>(&StorageRequest::Status, &[]).await.unwrap();
    let StorageResponse::Status(st) = resp else { panic!("{resp:?}") };
    assert_eq!(st.chunks, 2);
    if engine != EngineChoice::Auto {
        assert_eq!(st.engine, if engine == EngineChoice::Pread { "pread" } else { "io_uring" });
    }
    let e = write(&c, 0x42, 3, CS - 1, b"xx").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);

    // Garbage bytes instead of a handshake.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: pfs\r\n\r\n").await.unwrap();
    assert!(rejected(s).await, "garbage connection is answered or closed");

    // A frame header claiming a 4 GiB payload after a good handshake.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&hello_frame().await).await.unwrap();
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).await.unwrap(); // handshake reply header
    let reply = FrameHeader::decode(&h, &pfs_common::wire::frame::DEFAULT_LIMITS).unwrap();
    let mut body = vec![0u8; reply.body_len as usize];
    s.read_exact(&mut body).await.unwrap();
    let mut bomb = FrameHeader { kind: FrameKind::Request, body_len: 4, payload_len: 0, request_id: 9 }.encode();
    bomb[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    s.write_all(&bomb).await.unwrap();
    assert!(rejected(s).await, "payload bomb is answered or closed");

    // A huge body length, as the very first frame.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bomb = FrameHeader { kind: FrameKind::Request, body_len: 0, payload_len: 0, request_id: 0 }.encode();
    bomb[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    s.write_all(&bomb).await.unwrap();
    assert!(rejected(s).await, "body bomb is answered or closed");

    // The first client and a new, well-behaved one are still served.
    assert_eq!(read(&c, 0x42, 3, 106, 7).await.0, b"storage");
    let c2 = connect(addr).await;
    write(&c2, 0x43, 0, 0, b"still here").await.unwrap();
    assert_eq!(read(&c2, 0x43, 0, 0, 100).await.0, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_clients_without_meta_pread() {
    scenario(EngineChoice::Pread).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_clients_without_meta_io_uring() {
    if io_uring_available() {
        scenario(EngineChoice::IoUring).await;
    } else {
        eprintln!("SKIPPED: io_uring unavailable here; running with the auto engine instead");
        scenario(EngineChoice::Auto).await;
    }
}

fn io_uring_available() -> bool {
    let dir = tempfile::tempdir().unwrap();
    pfs_storage::engine::open(EngineChoice::IoUring, dir.path()).is_ok()
}
