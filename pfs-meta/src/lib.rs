//! pfs-meta, the metadata server of pfs: the namespace (a file tree replicated through a Raft
//! log), the client sessions, the byte-range tokens, the storage-server registry and the
//! chunk-holder map.
//!
//! The namespace ([`namespace`]), the token manager ([`tokens`]) and the registry/holder maps
//! are plain state machines; the Raft log ([`raft`], [`store`]), the token service
//! ([`token_service`]) and the RPC handler ([`server`]) put disks and sockets around them.

pub mod error;
pub mod holders;
pub mod namespace;
pub mod opens;
pub mod raft;
pub mod registry;
pub mod server;
pub mod store;
pub mod token_service;
pub mod tokens;

pub use error::{MetaError, Result};

use pfs_common::config::Config;
use pfs_common::rpc::{self, ServeOptions};
use pfs_common::wire::frame::DEFAULT_LIMITS;
use pfs_common::wire::PeerRole;
use server::MetaServer;
use std::sync::Arc;

/// Runs metadata node `id` of the config: recovers its Raft log and snapshot in its data
/// directory (`config.meta_dir(id)`), joins the group of every `[[meta]]` node, listens on its
/// address and serves clients, storage servers and the other meta nodes until its log fails.
/// An even count of nodes is logged as a warning.
///
/// Errors: Common (Config) when the config names no metadata node `id`, or its `[auth]` key
/// file is missing or unsafe; Corrupt naming the file and byte offset of a damaged log; Io if
/// the address cannot be bound; WalFailed if a log write or fsync fails while serving.
pub async fn run(config: Arc<Config>, id: u64) -> Result<()> {
    let address = config.pick_meta_node(Some(id))?.address;
    let dir = config.meta_dir(id)?;
    if let Some(w) = config.meta_count_warning() {
        tracing::warn!("pfs-meta {id}: {w}");
    }
    let auth = config.auth(true)?;
    pfs_common::auth::warn_if_off("pfs-meta", &auth);
    tracing::info!("pfs-meta node {id} of {}: data in {}", config.meta_nodes().len(), dir.display());
    let server = Arc::new(MetaServer::open(&config, id, &auth).await?);
    let listener = rpc::bind(address, "pfs-meta").await?;
    let opts = ServeOptions {
        name: "pfs-meta".into(),
        roles: vec![PeerRole::Client, PeerRole::Storage, PeerRole::Admin, PeerRole::Meta],
        limits: DEFAULT_LIMITS,
        idle_timeout: Some(config.timeouts.idle()),
        handshake_timeout: std::time::Duration::from_millis(config.timeouts.connect_ms),
        auth,
    };
    tokio::select! {
        _ = rpc::serve(listener, server.clone(), opts) => Ok(()),
        _ = server.run_token_ticks() => Ok(()),
        _ = server.run_terms() => Ok(()),
        reaped = server.run_reaper() => reaped,
        kept = server.run_chain_keeper() => kept,
        // The Raft node stopped (a log write or fsync failed): the state in memory may be
        // ahead of the disk, so stop rather than serve it.
        stopped = server.store().run_leadership() => Err(MetaError::WalFailed(Box::new(match stopped {
            Err(e) => e,
            Ok(()) => MetaError::io("the Raft node", std::io::Error::other("stopped")),
        }))),
    }
}
