//! What pfs-storage's integration tests share: a pfs-meta run in-process, free ports,
//! connecting while a server comes up, and polling for a condition.

#![allow(dead_code)]

use pfs_common::config::Config;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::wire::PeerRole;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// pfs-meta of `config`, in this process on its own runtime and thread; dropping it stops
/// the runtime, which closes every connection.
pub struct Meta {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Meta {
    pub fn start(config: Config) -> Meta {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                tokio::select! {
                    r = pfs_meta::run(Arc::new(config), 1) => panic!("pfs-meta stopped: {r:?}"),
                    _ = stopped => {}
                }
            });
        });
        Meta { stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Meta {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Options of an unauthenticated client connection named `name`.
pub fn opts(name: &str) -> ConnectOptions {
    ConnectOptions {
        role: PeerRole::Client,
        name: name.into(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(20),
        auth: pfs_common::auth::Auth::none(),
    }
}

/// Connects to `peer` at `addr`, retrying until it listens (deadline 20 s).
pub async fn connect<R: serde::Serialize>(addr: SocketAddr, peer: &str) -> RpcClient<R> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match RpcClient::connect(addr, peer, &opts("storage-test"), None).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > end => panic!("{peer} never came up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Polls `f` every 20 ms until it is true; panics naming `what` after 30 s.
pub async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let end = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < end, "not within 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
