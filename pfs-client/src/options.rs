//! [`ClientOptions`]: what a client needs to know to reach a cluster, nothing more.

use pfs_common::auth::Auth;
use pfs_common::config::{ClientConfig, Config, Timeouts};
use std::net::SocketAddr;

/// Settings of [`crate::Client::connect`]: pfs-meta's addresses and the client's own limits.
/// Storage servers are found through pfs-meta (the addresses they registered with), so a
/// client needs no list of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Where the metadata nodes listen, in config order (at least one). The client tries them
    /// in turn, starting with the one that last answered, and moves on to the next when a
    /// connection cannot be made.
    pub meta_addresses: Vec<SocketAddr>,
    /// Name of this client in the servers' logs ("pfs-cp 1234"); defaults to the process
    /// name and pid.
    pub name: String,
    /// Deadline for connecting to a server, handshake included, ms.
    pub connect_timeout_ms: u64,
    /// Deadline for one request's answer, ms.
    pub request_timeout_ms: u64,
    /// Upper bound on payload bytes in flight to storage servers.
    pub max_inflight_bytes: u64,
    /// Blocks (of each file's block size) the block cache holds per open file; 0 disables it.
    pub cache_blocks: usize,
    /// How long a read or write of a replicated chunk keeps going to other replicas, and
    /// waiting for pfs-meta to take a failed server out of the chain, before it fails, ms.
    /// Three times `timeouts.server_down_ms` (the time pfs-meta needs to see a server gone,
    /// with room to spare).
    pub failover_ms: u64,
    /// The key this client authenticates with (the cluster secret or a client key), or
    /// `auth = "none"`; with `protect_data`, chunk payloads are MAC'd too.
    pub auth: Auth,
}

impl ClientOptions {
    /// Defaults (those of an empty `[timeouts]` and `[client]` section) for pfs-meta at
    /// `meta_address`, without authentication (set [`ClientOptions::auth`] for a cluster
    /// that requires it).
    pub fn new(meta_address: SocketAddr) -> ClientOptions {
        ClientOptions::with_addresses(vec![meta_address])
    }

    /// [`ClientOptions::new`] for a metadata service of several nodes at `meta_addresses`
    /// (tried in this order). An empty list makes every connect fail with Unavailable.
    pub fn with_addresses(meta_addresses: Vec<SocketAddr>) -> ClientOptions {
        let (t, c) = (Timeouts::default(), ClientConfig::default());
        ClientOptions {
            meta_addresses,
            name: default_name(),
            connect_timeout_ms: t.connect_ms,
            request_timeout_ms: t.request_ms,
            max_inflight_bytes: c.max_inflight_bytes,
            cache_blocks: c.cache_blocks,
            failover_ms: 3 * t.server_down_ms,
            auth: Auth::none(),
        }
    }

    /// The client settings of a cluster configuration file: every metadata node's address,
    /// `[timeouts]`, `[client]` and the key `[auth]` names (read now).
    ///
    /// Errors: Common (Config) when the config has no `auth` setting or its key file is
    /// missing, unreadable or readable by others.
    pub fn from_config(config: &Config) -> crate::Result<ClientOptions> {
        Ok(ClientOptions {
            meta_addresses: config.meta_addresses(),
            name: default_name(),
            connect_timeout_ms: config.timeouts.connect_ms,
            request_timeout_ms: config.timeouts.request_ms,
            max_inflight_bytes: config.client.max_inflight_bytes,
            cache_blocks: config.client.cache_blocks,
            failover_ms: 3 * config.timeouts.server_down_ms,
            auth: config.auth(false)?,
        })
    }
}

fn default_name() -> String {
    let exe = std::env::args().next().unwrap_or_default();
    let name = crate::path::file_name(&exe);
    format!("{} {}", if name.is_empty() { "pfs-client" } else { name }, std::process::id())
}
