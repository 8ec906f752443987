//! The connection machinery against itself: idle closes, authentication.

use super::*;
use crate::auth::{self, Auth};
use crate::ids::ServerId;
use crate::pool::{self, PooledBuf};
use crate::wire::frame::{read_frame, Frame, FrameKind, DEFAULT_LIMITS};
use crate::wire::storage::{GetStatus, StorageRequest, StorageStatus};
use crate::wire::{Call, Hello, HelloReply, PeerRole, ResponseBody, PROTOCOL_VERSION};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Answers every call after `delay`.
struct Slow {
    delay: Duration,
}

impl Handler for Slow {
    type Request = StorageRequest;

    async fn handle(self: Arc<Self>, _peer: Peer, _req: StorageRequest, _payload: PooledBuf) -> Reply {
        tokio::time::sleep(self.delay).await;
        let status =
            StorageStatus { id: ServerId(1), capacity_bytes: 0, free_bytes: 0, chunks: 0, engine: "slow".into() };
        Reply::to::<GetStatus, Error>(Ok(status))
    }
}

/// A server closing connections idle for `idle`, whose answers take `delay`.
async fn slow_server(idle: Duration, delay: Duration, auth: Auth) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = ServeOptions {
        name: "slow".into(),
        roles: vec![PeerRole::Client],
        limits: DEFAULT_LIMITS,
        idle_timeout: Some(idle),
        handshake_timeout: Duration::from_secs(10),
        auth,
    };
    tokio::spawn(serve(listener, Arc::new(Slow { delay }), opts));
    addr
}

/// A raw connection to `addr` that completed its handshake.
async fn handshaken(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        role: PeerRole::Client,
        name: "raw".into(),
        nonce: [0; 32],
        auth: false,
        protect_data: false,
    };
    write_frame(&mut s, FrameKind::Request, 0, &wire::encode(&hello), &[], None).await.unwrap();
    let f = read_frame(&mut s, &DEFAULT_LIMITS, pool::global(), None).await.unwrap().unwrap();
    wire::decode::<ResponseBody<HelloReply>>(&f.body).unwrap().unwrap();
    s
}

/// The next frame, or `None` once the server closed (or reset) the connection. The
/// deadline only turns a server that never closes into a failure instead of a hang.
async fn next_frame(s: &mut TcpStream) -> Option<Frame> {
    tokio::time::timeout(Duration::from_secs(60), read_frame(s, &DEFAULT_LIMITS, pool::global(), None))
        .await
        .expect("the server closes idle connections")
        .unwrap_or(None)
}

#[tokio::test]
async fn idle_connections_are_closed_busy_ones_are_not() {
    let idle = Duration::from_millis(100);
    let addr = slow_server(idle, idle * 5, Auth::none()).await;

    // Silent after its handshake: closed.
    let mut silent = handshaken(addr).await;
    assert!(next_frame(&mut silent).await.is_none());

    // Half a frame and then nothing: closed too (a stalled sender holds no connection).
    let mut stalled = handshaken(addr).await;
    let header =
        crate::wire::frame::FrameHeader { kind: FrameKind::Request, body_len: 10, payload_len: 0, request_id: 1 };
    stalled.write_all(&header.encode()[..7]).await.unwrap();
    assert!(next_frame(&mut stalled).await.is_none());

    // A request whose answer takes five idle timeouts: the connection waits for it, and
    // is closed only once it is idle after the answer.
    let mut busy = handshaken(addr).await;
    let body = wire::encode(&GetStatus.into_request());
    write_frame(&mut busy, FrameKind::Request, 7, &body, &[], None).await.unwrap();
    let answer = next_frame(&mut busy).await.expect("answered on the same connection");
    assert_eq!((answer.header.kind, answer.header.request_id), (FrameKind::Response, 7));
    let status: ResponseBody<StorageStatus> = wire::decode(&answer.body).unwrap();
    assert_eq!(status.unwrap().engine, "slow");
    assert!(next_frame(&mut busy).await.is_none());

    // The server goes on serving new connections.
    let opts = ConnectOptions {
        role: PeerRole::Client,
        name: "after".into(),
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(60),
        auth: Auth::none(),
    };
    let c: RpcClient<StorageRequest> = RpcClient::connect(addr, "slow", &opts, None).await.unwrap();
    assert_eq!(c.ask(GetStatus).await.unwrap().engine, "slow");
}

fn client_opts(auth: Auth) -> ConnectOptions {
    ConnectOptions {
        role: PeerRole::Client,
        name: "test".into(),
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(60),
        auth,
    }
}

#[tokio::test]
async fn only_holders_of_the_cluster_key_connect_and_both_sides_must_authenticate() {
    let secret = auth::Key::random();
    let addr = slow_server(Duration::from_secs(60), Duration::ZERO, Auth::cluster(secret.clone())).await;
    let connect =
        |a: Auth| async move { RpcClient::<StorageRequest>::connect(addr, "slow", &client_opts(a), None).await };
    // The right key, and the client key derived from it: connected, requests answered.
    let c = connect(Auth::cluster(secret.clone())).await.unwrap();
    assert_eq!(c.ask(GetStatus).await.unwrap().engine, "slow");
    let client_key = auth::Credentials::Cluster(secret.clone()).role_key(PeerRole::Client).unwrap();
    let only_client = Auth { credentials: Some(auth::Credentials::Client(client_key)), protect_data: true };
    let c = connect(only_client).await.unwrap();
    assert_eq!(c.ask(GetStatus).await.unwrap().engine, "slow", "with payload MACs too");
    // Another cluster's key: the client finds the server cannot prove ours.
    let e = connect(Auth::cluster(auth::Key::random())).await.unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::AuthFailed, "{e}");
    // No key at all: the server refuses, saying why.
    let e = connect(Auth::none()).await.unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::AuthFailed, "{e}");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    // A server without authentication is refused by a client that requires it.
    let open = slow_server(Duration::from_secs(60), Duration::ZERO, Auth::none()).await;
    let e = RpcClient::<StorageRequest>::connect(open, "slow", &client_opts(Auth::cluster(secret)), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), crate::ErrorCode::AuthFailed, "{e}");
}

/// A loopback address nothing listens on (connections to it are refused).
fn refused_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn connect_any_moves_on_to_the_next_address_and_names_all_when_none_answers() {
    let live = slow_server(Duration::from_secs(60), Duration::ZERO, Auth::none()).await;
    let (dead1, dead2) = (refused_address(), refused_address());
    let opts = client_opts(Auth::none());
    let connect = |addrs: Vec<SocketAddr>, start: usize| {
        let opts = opts.clone();
        async move { RpcClient::<StorageRequest>::connect_any(&addrs, start, "slow", &opts, None).await }
    };
    // The dead addresses are skipped, in turn from `start`, wrapping around.
    let (at, c) = connect(vec![dead1, dead2, live], 0).await.unwrap();
    assert_eq!(at, 2);
    assert_eq!(c.ask(GetStatus).await.unwrap().engine, "slow");
    let (at, _) = connect(vec![live, dead1, dead2], 1).await.unwrap();
    assert_eq!(at, 0, "wrapped around to the start of the list");
    // Starting at a live address tries it first (a dead one after it is never tried).
    let (at, _) = connect(vec![dead1, live, dead2], 1).await.unwrap();
    assert_eq!(at, 1);
    // One address: its own error, unchanged.
    let e = connect(vec![dead1], 0).await.unwrap_err();
    assert!(matches!(&e, Error::Connect { .. }), "{e:?}");
    assert_eq!(e.to_string().matches("cannot connect").count(), 1, "{e}");
    // None answers: the last one's error, naming every address tried.
    let e = connect(vec![dead1, dead2], 1).await.unwrap_err();
    assert!(matches!(&e, Error::Connect { .. }) && e.code() == crate::ErrorCode::Unavailable, "{e:?}");
    let shown = e.to_string();
    assert!(shown.contains(&dead1.to_string()) && shown.contains(&dead2.to_string()), "{shown}");
    assert!(shown.contains("the last of 2 addresses tried"), "{shown}");
    // The last tried is dead1 (from index 1: dead2, then dead1).
    assert!(shown.starts_with(&format!("cannot connect to slow at {dead1} (")), "{shown}");
    // No address at all.
    let e = connect(Vec::new(), 0).await.unwrap_err();
    assert!(e.to_string().contains("no address"), "{e}");
}
