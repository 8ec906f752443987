//! [`PeerPool`]: one cached [`RpcClient`] per server, with a connect gate per server.
//!
//! A process that talks to many servers of one kind (a storage server forwarding writes down
//! its chains, a client striping over every storage server) keeps one multiplexed connection
//! per server and opens it when first needed. Two rules make that safe when a server hangs:
//!
//! * **One connect at a time per server, never one for all.** A server whose kernel completes
//!   TCP accepts while the process never answers the handshake (SIGSTOPped, a stalled VM)
//!   holds a connect for the whole `connect_timeout`. Only callers for *that* server wait for
//!   it; a connect to any other server starts at once.
//! * **Callers that waited for a failed connect share its failure.** Ten writes queued behind
//!   a connect to a hung server fail together when it times out, instead of trying again one
//!   after the other (ten times `connect_timeout`). A caller that arrives after the failure
//!   tries again.
//!
//! A connection found closed (the peer went away, its idle timeout closed it, a request
//! timed out mid-write) is replaced by a new one on the next [`PeerPool::get`]. The pool never
//! retries a call: a call that failed on a connection closed under it is the caller's to
//! repeat if it may.

use crate::error::{Error, Result};
use crate::ids::ServerId;
use crate::rpc::{ConnectOptions, RpcClient};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Connections to servers whose requests are `R` (e.g. `RpcClient<StorageRequest>` for
/// storage servers), one per [`ServerId`], opened on demand with one set of
/// [`ConnectOptions`] (role, name, key, connect and request timeouts).
///
/// Cheap to share behind an `Arc`; every method takes `&self`. No lock is held across an
/// await except the connecting server's own gate.
///
/// ```no_run
/// # async fn example(pool: &pfs_common::peers::PeerPool<pfs_common::wire::storage::StorageRequest>,
/// #                  addr: std::net::SocketAddr) -> pfs_common::Result<()> {
/// use pfs_common::ServerId;
/// // The address is looked up only if a connection must be made (it may ask pfs-meta).
/// let conn = pool.get(ServerId(2), || async { Ok::<_, pfs_common::Error>(addr) }).await?;
/// # Ok(()) }
/// ```
pub struct PeerPool<R> {
    opts: ConnectOptions,
    slots: Mutex<HashMap<ServerId, Arc<Slot<R>>>>,
    connects: AtomicU64,
}

/// One server's connection and connect gate.
struct Slot<R> {
    conn: Mutex<Option<RpcClient<R>>>,
    /// Held by the one caller connecting to this server.
    gate: tokio::sync::Mutex<()>,
    /// Connect attempts finished, and the error of the last one if it failed.
    outcome: Mutex<(u64, Option<Error>)>,
}

impl<R: Serialize> Slot<R> {
    fn live(&self) -> Option<RpcClient<R>> {
        self.conn.lock().as_ref().filter(|c| !c.is_closed()).cloned()
    }

    /// Forgets the connection and closes it (outside the slot's lock).
    fn close(&self) {
        let conn = self.conn.lock().take();
        if let Some(c) = conn {
            c.close();
        }
    }
}

impl<R: Serialize> PeerPool<R> {
    /// An empty pool; every connection it opens uses `opts`.
    pub fn new(opts: ConnectOptions) -> PeerPool<R> {
        PeerPool { opts, slots: Mutex::new(HashMap::new()), connects: AtomicU64::new(0) }
    }

    /// The options every connection is opened with.
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    fn slot(&self, id: ServerId) -> Arc<Slot<R>> {
        self.slots
            .lock()
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Slot {
                    conn: Mutex::new(None),
                    gate: tokio::sync::Mutex::new(()),
                    outcome: Mutex::new((0, None)),
                })
            })
            .clone()
    }

    /// The open connection to server `id`, if there is one (no connect).
    pub fn cached(&self, id: ServerId) -> Option<RpcClient<R>> {
        let slot = self.slots.lock().get(&id).cloned()?;
        slot.live()
    }

    /// The connection to server `id`: the cached one while it is open, else a new one to the
    /// address `address()` resolves (called only when a connect is needed, with this server's
    /// gate held, so it may await, e.g. to refresh addresses from pfs-meta). The server is
    /// named `storage-<n>`-style (`id`'s `Display`) in connection errors.
    ///
    /// Waits for a connect to `id` already in progress and takes its connection; if that
    /// connect failed meanwhile, fails with its error without trying again. Connects to other
    /// servers never wait for it.
    ///
    /// Errors: whatever `address()` fails with; [`RpcClient::connect`]'s errors (Connect,
    /// TimedOut after `connect_timeout`, Closed, Remote, Protocol, AuthFailed), each naming
    /// the server and its address, converted into `E`.
    pub async fn get<E, F, Fut>(&self, id: ServerId, address: F) -> std::result::Result<RpcClient<R>, E>
    where
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<SocketAddr, E>>,
    {
        let slot = self.slot(id);
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        let attempts_before = slot.outcome.lock().0;
        let _one_at_a_time = slot.gate.lock().await;
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        {
            let outcome = slot.outcome.lock();
            if let (true, Some(e)) = (outcome.0 > attempts_before, &outcome.1) {
                return Err(e.clone().into()); // the connect we waited for failed
            }
        }
        let addr = address().await?;
        let result = self.connect(id, addr).await;
        let mut outcome = slot.outcome.lock();
        outcome.0 += 1;
        match result {
            Ok(c) => {
                outcome.1 = None;
                *slot.conn.lock() = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                outcome.1 = Some(e.clone());
                Err(e.into())
            }
        }
    }

    async fn connect(&self, id: ServerId, addr: SocketAddr) -> Result<RpcClient<R>> {
        let c = RpcClient::connect(addr, &id.to_string(), &self.opts, None).await?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        Ok(c)
    }

    /// Connections opened since the pool was made (successful connects only).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Closes and forgets the connection to server `id` (its address changed, it left the
    /// cluster); calls in flight on it fail with Closed. The next [`PeerPool::get`] connects
    /// again.
    pub fn close(&self, id: ServerId) {
        if let Some(slot) = self.slots.lock().get(&id).cloned() {
            slot.close();
        }
    }

    /// Closes every connection ([`PeerPool::close`] for each server).
    pub fn close_all(&self) {
        let slots: Vec<Arc<Slot<R>>> = self.slots.lock().values().cloned().collect();
        for s in slots {
            s.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Auth;
    use crate::pool::PooledBuf;
    use crate::rpc::{serve, Handler, Peer, Reply, ServeOptions};
    use crate::wire::frame::DEFAULT_LIMITS;
    use crate::wire::storage::{GetStatus, StorageRequest, StorageStatus};
    use crate::wire::PeerRole;
    use std::time::Duration;
    use tokio::net::TcpListener;

    struct Status;

    impl Handler for Status {
        type Request = StorageRequest;

        async fn handle(self: Arc<Self>, _peer: Peer, _req: StorageRequest, _payload: PooledBuf) -> Reply {
            let s = StorageStatus { id: ServerId(1), capacity_bytes: 0, free_bytes: 0, chunks: 0, engine: "-".into() };
            Reply::to::<GetStatus, Error>(Ok(s))
        }
    }

    /// A server that answers every call.
    async fn answering() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = ServeOptions {
            name: "answering".into(),
            roles: vec![PeerRole::Storage],
            limits: DEFAULT_LIMITS,
            idle_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            auth: Auth::none(),
        };
        tokio::spawn(serve(listener, Arc::new(Status), opts));
        addr
    }

    /// A server that accepts connections and never says a word (a stopped process whose
    /// kernel still completes the TCP handshake); returns its address and the connections it
    /// accepted so far.
    async fn mute() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        (addr, accepted)
    }

    fn pool(connect_timeout: Duration) -> Arc<PeerPool<StorageRequest>> {
        Arc::new(PeerPool::new(ConnectOptions {
            role: PeerRole::Storage,
            name: "test".into(),
            connect_timeout,
            request_timeout: Duration::from_secs(30),
            auth: Auth::none(),
        }))
    }

    async fn status(c: &RpcClient<StorageRequest>) -> u32 {
        c.ask(GetStatus).await.unwrap().id.0
    }

    #[tokio::test]
    async fn a_hung_server_holds_up_only_its_own_connects() {
        let (hung, accepted) = mute().await;
        let live = answering().await;
        let p = pool(Duration::from_secs(600));
        let p2 = p.clone();
        let stuck = tokio::spawn(async move { p2.get(ServerId(2), || async { Ok::<_, Error>(hung) }).await });
        // The connect to the hung server is under way (accepted, no handshake answer)...
        while accepted.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // ...and one to another server goes through meanwhile.
        let c = p.get(ServerId(3), || async { Ok::<_, Error>(live) }).await.unwrap();
        assert_eq!(status(&c).await, 1);
        assert!(!stuck.is_finished());
        assert_eq!(p.connects(), 1);
        stuck.abort();
    }

    #[tokio::test]
    async fn callers_waiting_for_a_failed_connect_share_its_failure() {
        let (hung, accepted) = mute().await;
        let p = pool(Duration::from_millis(300));
        let attempts: Vec<_> = (0..5)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.get(ServerId(2), || async { Ok::<_, Error>(hung) }).await })
            })
            .collect();
        for a in attempts {
            let e = a.await.unwrap().unwrap_err();
            assert!(matches!(&e, Error::TimedOut { peer, .. } if peer.contains("storage-2")), "{e}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connect for all five callers");
        // A caller after the failure tries again.
        assert!(p.get(ServerId(2), || async { Ok::<_, Error>(hung) }).await.is_err());
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(p.connects(), 0);
    }

    #[tokio::test]
    async fn a_connection_is_reused_and_a_closed_one_replaced() {
        let live = answering().await;
        let p = pool(Duration::from_secs(5));
        let lookups = &AtomicU64::new(0);
        let address = move || async move {
            lookups.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(live)
        };
        let a = p.get(ServerId(4), address).await.unwrap();
        let b = p.get(ServerId(4), address).await.unwrap();
        assert_eq!((p.connects(), lookups.load(Ordering::SeqCst)), (1, 1), "cached: no lookup, no connect");
        assert_eq!(status(&b).await, 1);
        assert!(p.cached(ServerId(4)).is_some());
        a.close();
        assert!(b.is_closed() && p.cached(ServerId(4)).is_none());
        let c = p.get(ServerId(4), address).await.unwrap();
        assert_eq!(status(&c).await, 1);
        assert_eq!(p.connects(), 2);
        p.close(ServerId(4));
        assert!(c.is_closed());
        // An address lookup's own error is the caller's.
        let e = p
            .get(ServerId(5), || async { Err::<SocketAddr, _>(Error::Closed { peer: "no address".into() }) })
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Closed { .. }));
    }
}
