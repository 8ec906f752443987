//! pfs-meta, the metadata server of pfs: the namespace (a write-ahead-logged file tree), the
//! storage-server registry and the chunk-holder map.
//!
//! The namespace ([`namespace`]) and registry/holder maps are plain state machines; the WAL
//! ([`wal`]) and the RPC handler ([`server`]) put disks and sockets around them.

pub mod error;
pub mod holders;
pub mod namespace;
pub mod opens;
pub mod registry;
pub mod server;
pub mod store;
pub mod token_service;
pub mod tokens;
pub mod wal;

pub use error::{MetaError, Result};

use pfs_common::config::Config;
use pfs_common::rpc::{self, ServeOptions};
use pfs_common::wire::frame::DEFAULT_LIMITS;
use pfs_common::wire::PeerRole;
use server::MetaServer;
use std::sync::Arc;

/// Runs metadata node `id` of the config: recovers the WAL in its data directory
/// (`config.meta_dir(id)`), listens on its address and serves clients and storage servers
/// until the WAL fails. With several nodes in the config, each runs this same single-node
/// service on its own address and directory for now (the group is not replicated yet); an
/// even count is logged as a warning.
///
/// Errors: Common (Config) when the config names no metadata node `id`, or its `[auth]` key
/// file is missing or unsafe; Corrupt naming the file and byte offset of a damaged log; Io if
/// the address cannot be bound; WalFailed if a WAL write or fsync fails while serving.
pub async fn run(config: Arc<Config>, id: u64) -> Result<()> {
    let address = config.pick_meta_node(Some(id))?.address;
    let dir = config.meta_dir(id)?;
    if let Some(w) = config.meta_count_warning() {
        tracing::warn!("pfs-meta {id}: {w}");
    }
    let auth = config.auth(true)?;
    pfs_common::auth::warn_if_off("pfs-meta", &auth);
    tracing::info!("pfs-meta node {id} of {}: data in {}", config.meta_nodes().len(), dir.display());
    let server = Arc::new(MetaServer::open(&config, id, &auth)?);
    let listener = rpc::bind(address, "pfs-meta").await?;
    let mut durable = server.store().durable();
    let opts = ServeOptions {
        name: "pfs-meta".into(),
        roles: vec![PeerRole::Client, PeerRole::Storage, PeerRole::Admin],
        limits: DEFAULT_LIMITS,
        idle_timeout: Some(config.timeouts.idle()),
        handshake_timeout: std::time::Duration::from_millis(config.timeouts.connect_ms),
        auth,
    };
    tokio::select! {
        _ = rpc::serve(listener, server.clone(), opts) => Ok(()),
        _ = server.run_token_ticks() => Ok(()),
        reaped = server.run_reaper() => reaped,
        kept = server.run_chain_keeper() => kept,
        failed = durable.wait_for(|d| d.failed.is_some()) => {
            // The state in memory may be ahead of the disk: stop rather than serve it.
            let why = match failed {
                Ok(d) => d.failed.clone().expect("waited for a failure"),
                Err(_) => MetaError::io("the WAL writer", std::io::Error::other("stopped")),
            };
            Err(MetaError::WalFailed(Box::new(why)))
        }
    }
}
