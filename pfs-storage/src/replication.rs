//! This server's part in chain replication (see [`pfs_common::chain`]): its view of the chain
//! table, the checks every chunk request passes against it, connections to the other storage
//! servers (to forward writes down a chain and to copy chunks). The locks that make a chunk
//! copied for a resync a state the chain went through are the store's ([`crate::locks`]).
//!
//! * The view holds the newest version of every chain pfs-meta told us about (at registration
//!   and by `StorageNotify::Chains` pushes; pushes may arrive out of order, versions only
//!   grow). A request naming another version is refused (Stale): the sender asks pfs-meta
//!   again. Before the first table arrives every chunk request is refused.
//! * Peers are connected through one [`PeerPool`]: one cached connection per peer and a
//!   connect gate per peer, so a successor that hangs in its handshake holds up only the
//!   callers for that successor.

use crate::error::{Result, StorageError};
use parking_lot::RwLock;
use pfs_common::auth::Auth;
use pfs_common::chain::{Chain, ChainId, ChainRef, ReplicaState};
use pfs_common::config::Config;
use pfs_common::peers::PeerPool;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::wire::storage::StorageRequest;
use pfs_common::wire::PeerRole;
use pfs_common::ServerId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Chain view and peer connections of one storage server.
pub struct Replication {
    me: ServerId,
    config: Arc<Config>,
    /// How this server authenticates its connections (to pfs-meta and to other replicas).
    auth: Auth,
    chains: RwLock<HashMap<ChainId, Chain>>,
    /// A chain table arrived since start.
    known: AtomicBool,
    /// Connections to the other storage servers, one connect at a time per server.
    peers: PeerPool<StorageRequest>,
    /// Counts changes of the view (resync and forwarding wait on it).
    updates: tokio::sync::watch::Sender<u64>,
}

impl Replication {
    /// An empty view for server `me` of `config` (peers' addresses come from the config).
    pub fn new(me: ServerId, config: Arc<Config>, auth: Auth) -> Replication {
        let peers = PeerPool::new(ConnectOptions {
            role: PeerRole::Storage,
            name: me.to_string(),
            connect_timeout: Duration::from_millis(config.timeouts.connect_ms),
            request_timeout: Duration::from_millis(config.timeouts.request_ms),
            auth: auth.clone(),
        });
        Replication {
            me,
            config,
            auth,
            chains: RwLock::new(HashMap::new()),
            known: AtomicBool::new(false),
            peers,
            updates: tokio::sync::watch::Sender::new(0),
        }
    }

    /// This server's id.
    pub fn me(&self) -> ServerId {
        self.me
    }

    /// Takes the newer of each chain's versions; with `whole`, this is the complete table.
    pub fn update(&self, chains: Vec<Chain>, whole: bool) {
        {
            let mut view = self.chains.write();
            for c in chains {
                match view.get(&c.id) {
                    Some(old) if old.version >= c.version => {}
                    _ => {
                        view.insert(c.id, c);
                    }
                }
            }
        }
        if whole {
            self.known.store(true, Ordering::Release);
        }
        self.updates.send_modify(|n| *n += 1);
    }

    /// A receiver that sees every later change of the view.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.updates.subscribe()
    }

    /// Returns once chain `at.id` is no longer at version `at.version` here.
    pub async fn moved(&self, at: ChainRef) {
        let mut changes = self.subscribe();
        while self.chain(at.id).map(|c| c.version) == Some(at.version) {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Chain `id` as this server knows it.
    pub fn chain(&self, id: ChainId) -> Option<Chain> {
        self.chains.read().get(&id).cloned()
    }

    /// Chains in which this server is syncing, at their current versions.
    pub fn syncing(&self) -> Vec<Chain> {
        self.chains.read().values().filter(|c| c.state_of(self.me) == Some(ReplicaState::Syncing)).cloned().collect()
    }

    /// Runs `f` on chain `at` if it is the current version here (without copying it).
    fn current<T>(&self, at: ChainRef, f: impl FnOnce(&Chain) -> Result<T>) -> Result<T> {
        if !self.known.load(Ordering::Acquire) {
            // Not registered yet: the chain table comes with the registration, just before
            // the chunks are checked against pfs-meta's chunk map.
            return Err(StorageError::NotReconciled { server: self.me });
        }
        let view = self.chains.read();
        match view.get(&at.id) {
            Some(c) if c.version == at.version => f(c),
            Some(c) => Err(StorageError::Stale {
                server: self.me,
                what: format!("{} is at version {} here, the request says {}", at.id, c.version, at.version),
                current: Some(Box::new(c.clone())),
            }),
            None => {
                Err(StorageError::Stale { server: self.me, what: format!("does not know {}", at.id), current: None })
            }
        }
    }

    /// Admits a write on chain `at`: this server must be in its write path. Returns the
    /// successor to forward to (`None` at the tail) and whether this replica is syncing.
    pub fn check_write(&self, at: ChainRef) -> Result<(Option<ServerId>, bool)> {
        self.current(at, |c| match c.state_of(self.me) {
            Some(state @ (ReplicaState::Serving | ReplicaState::Syncing)) => {
                Ok((c.successor(self.me), state == ReplicaState::Syncing))
            }
            _ => Err(StorageError::Stale {
                server: self.me,
                what: format!("is not in the write path of {}", c.describe()),
                current: Some(Box::new(c.clone())),
            }),
        })
    }

    /// Admits a read on chain `at`: this server must be a serving replica of it.
    pub fn check_read(&self, at: ChainRef) -> Result<()> {
        self.current(at, |c| match c.state_of(self.me) {
            Some(ReplicaState::Serving) => Ok(()),
            _ => Err(StorageError::Stale {
                server: self.me,
                what: format!("does not serve reads of {}", c.describe()),
                current: Some(Box::new(c.clone())),
            }),
        })
    }

    /// How this server authenticates.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The connection to storage server `id` (its address from the config), opened if
    /// needed. A connect to a server that hangs holds up only the callers for that server.
    ///
    /// Errors: Common (Config) when `id` is not in the config; the connect's error (refused,
    /// TimedOut after `timeouts.connect_ms`, ...) naming the server.
    pub async fn peer(&self, id: ServerId) -> Result<RpcClient<StorageRequest>> {
        self.peers
            .get(id, || async { Ok::<_, StorageError>(self.config.storage(id).map_err(StorageError::from)?.address) })
            .await
    }
}
