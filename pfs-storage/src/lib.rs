//! pfs-storage: the storage server. One process serves one storage target (a data
//! directory of chunk files): chunk reads and writes through io_uring (or pread/pwrite),
//! truncate, remove and fsync on request, SHA-256 of every changed chunk computed off the
//! request path, and a session with pfs-meta (register, heartbeats, chunk reports).

pub mod checksums;
pub mod engine;
pub mod error;
pub mod fence;
pub mod hasher;
pub mod locks;
pub mod meta_link;
pub mod precreate;
pub mod replication;
pub mod reports;
pub mod resync;
pub mod scrub;
pub mod server;
pub mod store;
pub mod supervisor;

pub use error::{Result, StorageError};

use pfs_common::config::Config;
use pfs_common::rpc::{self, ServeOptions};
use pfs_common::wire::frame::DEFAULT_LIMITS;
use pfs_common::wire::PeerRole;
use pfs_common::ServerId;
use std::sync::Arc;
use std::time::Duration;
use store::{ChunkStore, StoreOptions};

/// Runs storage server `id` of `config` until the process ends: opens (creating if missing)
/// its data directory, picks the chunk I/O engine, rebuilds the chunk index, listens on its
/// address for clients and keeps a session with pfs-meta in the background.
///
/// Errors (start-up only): Common (Config) when `id` is not in the config or the config's
/// `[auth]` key file is missing or unsafe; Io when the
/// directory cannot be created or listed, the address cannot be bound, or io_uring was
/// required but is unavailable.
pub async fn run(config: Arc<Config>, id: ServerId) -> Result<()> {
    let me = config.storage(id)?;
    let auth = config.auth(true)?;
    pfs_common::auth::warn_if_off(&id.to_string(), &auth);
    let dir = config.storage_dir(me);
    std::fs::create_dir_all(&dir).map_err(|e| StorageError::io(format!("creating {}", dir.display()), e).on(id))?;
    let engine = engine::open(me.engine, &dir).map_err(|e| e.on(id))?;
    let store = ChunkStore::open(id, engine, StoreOptions::default()).await?;
    let listener = rpc::bind(me.address, &id.to_string()).await?;
    let repl = Arc::new(replication::Replication::new(id, config.clone(), auth.clone()));
    let scrubber = Arc::new(scrub::Scrubber::default());
    spawn_workers(&store, &repl, &scrubber, &config);
    let opts = ServeOptions {
        name: id.to_string(),
        // Other storage servers forward writes down chains and copy chunks; pfs-meta removes
        // orphaned chunks.
        roles: vec![PeerRole::Client, PeerRole::Storage, PeerRole::Meta],
        limits: DEFAULT_LIMITS,
        idle_timeout: Some(config.timeouts.idle()),
        handshake_timeout: Duration::from_millis(config.timeouts.connect_ms),
        auth,
    };
    rpc::serve(listener, Arc::new(server::StorageHandler::new(store, repl, scrubber)), opts).await;
    Ok(())
}

/// Starts the background workers, each supervised (see [`supervisor`]): the hasher's loss
/// stops the server's writes (chunks written after it would never be hashed or committed, and
/// one it was hashing may have lost its mark); the pfs-meta session, resync and scrub are
/// restarted, since each starts from scratch anyway.
fn spawn_workers(
    store: &Arc<ChunkStore>,
    repl: &Arc<replication::Replication>,
    scrubber: &Arc<scrub::Scrubber>,
    config: &Arc<Config>,
) {
    use supervisor::OnEnd;
    let s = store.clone();
    supervisor::spawn(store, "hasher", OnEnd::StopWrites, move || hasher::run(s.clone()));
    let (s, r, c) = (store.clone(), repl.clone(), config.clone());
    supervisor::spawn(store, "meta-link", OnEnd::Restart, move || {
        meta_link::run(c.clone(), s.id(), s.clone(), r.clone())
    });
    let (s, r, c) = (store.clone(), repl.clone(), config.clone());
    supervisor::spawn(store, "resync", OnEnd::Restart, move || resync::run(s.clone(), r.clone(), c.clone()));
    let (s, r, c, sc) = (store.clone(), repl.clone(), config.clone(), scrubber.clone());
    supervisor::spawn(store, "scrub", OnEnd::Restart, move || scrub::run(s.clone(), r.clone(), sc.clone(), c.clone()));
}
