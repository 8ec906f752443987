//! Cluster configuration, read from TOML (see `config/local.toml`).
//!
//! One file describes the whole cluster: the metadata service (one node or a group of them),
//! every storage server (one per storage target), layout defaults, timeouts and client limits.
//! Every process reads the same file; a metadata node and a storage server pick their own
//! section by `--id`.

use crate::auth::{read_key, write_new_key, Auth, Credentials, Key};
use crate::error::{Error, Result};
use crate::ids::ServerId;
use crate::layout::{LayoutPolicy, MAX_CHUNK_SIZE};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole cluster as one TOML file describes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base directory for relative data directories, logs and pid files.
    pub data_dir: PathBuf,
    /// How processes authenticate: `auth = "none"` or an `[auth]` section naming the key
    /// file. Required: every daemon and client refuses to start without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// The metadata service's nodes, in config order: `[[meta]]` entries, or one `[meta]`
    /// table (the single-node form, node 1). Never empty once validated; see
    /// [`Config::meta_nodes`].
    #[serde(deserialize_with = "deserialize_meta")]
    pub meta: Vec<MetaNodeConfig>,
    #[serde(default)]
    pub storage: Vec<StorageConfig>,
    #[serde(default)]
    pub layout: LayoutPolicy,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub client: ClientConfig,
    #[serde(default)]
    pub tokens: TokenTimeouts,
}

/// `auth = "none"`, or the `[auth]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthConfig {
    /// `auth = "none"`: connections are neither authenticated nor MAC'd; anyone who can
    /// reach a port can do anything. Every daemon logs a warning at start.
    None,
    /// `[auth]`: the key files.
    Keys(AuthSettings),
}

/// The `[auth]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The cluster secret (32 random bytes, mode 0400, made by `pfs keygen`), relative to
    /// `data_dir`. pfs-meta and the storage servers need it; so do tools on trusted nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// A client key (`pfs keygen --client-key`), for client nodes that must not hold the
    /// cluster secret: it authenticates as a client only. Used when `secret_file` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// MAC chunk payloads too, not only frame headers and bodies (costs a SHA-256 pass over
    /// every byte on both ends). Either end of a connection asking for it turns it on.
    #[serde(default)]
    pub protect_data: bool,
}

impl Serialize for AuthConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            AuthConfig::None => s.serialize_str("none"),
            AuthConfig::Keys(k) => k.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for AuthConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<AuthConfig, D::Error> {
        use serde::de::{self, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AuthConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("auth = \"none\" or an [auth] section with secret_file")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<AuthConfig, E> {
                match v {
                    "none" => Ok(AuthConfig::None),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<AuthConfig, A::Error> {
                AuthSettings::deserialize(de::value::MapAccessDeserializer::new(map)).map(AuthConfig::Keys)
            }
        }
        d.deserialize_any(V)
    }
}

/// Token manager timing, all in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenTimeouts {
    /// A client session not heard from for this long is evicted and fenced.
    pub lease_ms: u64,
    /// A holder that does not acknowledge a revoke within this long is evicted and fenced.
    pub revoke_timeout_ms: u64,
    /// After a conflict on a file, grants on it are not expanded for this long.
    pub contention_window_ms: u64,
    /// A storage server that has not confirmed fencing an evicted session this long after it
    /// was asked is declared down (the session's tokens are handed on once its storage lease,
    /// `timeouts.server_down_ms`, has run out too).
    pub fence_timeout_ms: u64,
    /// Capabilities pfs-meta issues with tokens are valid this long (clocks of pfs-meta and
    /// the storage servers must agree to well within it). Default 10 minutes.
    pub capability_ms: u64,
}

impl Default for TokenTimeouts {
    fn default() -> Self {
        TokenTimeouts {
            lease_ms: 5_000,
            revoke_timeout_ms: 5_000,
            contention_window_ms: 1_000,
            fence_timeout_ms: 2_000,
            capability_ms: 600_000,
        }
    }
}

/// Most metadata nodes a config may name.
pub const MAX_META_NODES: usize = 7;

/// One node of the metadata service: a `[[meta]]` entry.
///
/// ```toml
/// [[meta]]
/// id = 1                      # 1 or more, unique
/// address = "10.0.0.10:7400"  # unique
/// data_dir = "meta-1"         # unique; relative paths are under the top-level data_dir
/// checkpoint_records = 100000 # optional
/// ```
///
/// A single `[meta]` table (the form before metadata groups, without `id`) is still read: it
/// is a group of one node, id 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaNodeConfig {
    /// The node's id in the group (at least 1, unique); `pfs-meta --id` names it.
    pub id: u64,
    /// Address it listens on and clients and storage servers connect to.
    pub address: SocketAddr,
    /// Directory for the WAL and checkpoints (relative paths are under `Config::data_dir`).
    pub data_dir: PathBuf,
    /// Take a checkpoint and start a new log segment after this many WAL records.
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_records: u64,
}

/// The single-node `[meta]` table: a [`MetaNodeConfig`] whose `id` may be left out (1).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaTable {
    #[serde(default = "first_meta_id")]
    id: u64,
    address: SocketAddr,
    data_dir: PathBuf,
    #[serde(default = "default_checkpoint_records")]
    checkpoint_records: u64,
}

fn first_meta_id() -> u64 {
    1
}

/// `meta`: `[[meta]]` entries (an array of tables) or one `[meta]` table.
fn deserialize_meta<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<MetaNodeConfig>, D::Error> {
    use serde::de::{self, MapAccess, SeqAccess, Visitor};
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<MetaNodeConfig>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("[[meta]] entries (id, address, data_dir) or one [meta] table (address, data_dir)")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Self::Value, A::Error> {
            Vec::<MetaNodeConfig>::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Self::Value, A::Error> {
            let t = MetaTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
            Ok(vec![MetaNodeConfig {
                id: t.id,
                address: t.address,
                data_dir: t.data_dir,
                checkpoint_records: t.checkpoint_records,
            }])
        }
    }
    d.deserialize_any(V)
}

fn default_checkpoint_records() -> u64 {
    100_000
}

/// One storage server (one storage target).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub id: ServerId,
    /// Address it listens on for clients.
    pub address: SocketAddr,
    /// Directory holding its chunk files (relative paths are under `Config::data_dir`).
    pub data_dir: PathBuf,
    /// Chunk I/O engine: `auto` (io_uring, falling back to pread/pwrite), `io_uring`, `pread`.
    #[serde(default)]
    pub engine: EngineChoice,
}

/// Which chunk I/O engine a storage server uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// io_uring when the kernel allows it, else pread/pwrite (logged at start).
    #[default]
    Auto,
    /// io_uring only; start-up fails if the kernel refuses it.
    IoUring,
    /// pread/pwrite on a thread pool.
    Pread,
}

/// Timeouts and heartbeat periods, all in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting to a server, including the handshake.
    pub connect_ms: u64,
    /// One request's round trip.
    pub request_ms: u64,
    /// How often storage servers heartbeat to pfs-meta.
    pub heartbeat_ms: u64,
    /// A storage server silent for this long is marked down. It is also the storage
    /// servers' lease: a server refuses writes once half of it has passed since it sent the
    /// last heartbeat pfs-meta accepted.
    pub server_down_ms: u64,
    /// A server closes a connection (after its handshake) that sent no frame for this long
    /// and has no request in flight. Clients reopen storage connections as needed. At least
    /// [`IDLE_MIN_FACTOR`] times `tokens.lease_ms` and `server_down_ms`: pfs-meta evicts the
    /// session of a client whose connection closes, and marks a storage server down, so the
    /// keep-alives (every third of the lease) and heartbeats must keep those connections busy
    /// with room to spare. Default 10 minutes.
    pub idle_ms: u64,
    /// A replica offline this long is replaced: its chunks are copied to another storage
    /// server until every chain has its replica count again. Long enough that a restart or a
    /// short outage resyncs instead (HDFS waits 10 minutes; copying a whole server costs more
    /// than waiting). Default 5 minutes.
    pub rereplicate_after_ms: u64,
    /// Bandwidth one storage server spends copying chunks for resync, re-replication and
    /// scrub repairs, bytes per second (0: unbounded). Default 256 MiB/s.
    pub resync_bytes_per_sec: u64,
    /// A storage server scrubs (re-reads and checks) all its chunks this often, ms (0: only
    /// when `pfs scrub` asks). Default one day.
    pub scrub_every_ms: u64,
    /// Bytes per second a scrub reads (0: unbounded). Default 128 MiB/s.
    pub scrub_bytes_per_sec: u64,
}

/// The cluster secret's file name (under `data_dir`) in [`Config::local`].
pub const LOCAL_SECRET: &str = "cluster.key";

/// `timeouts.idle_ms` must be at least this many times `tokens.lease_ms` and
/// `timeouts.server_down_ms` (see [`Timeouts::idle_ms`]).
pub const IDLE_MIN_FACTOR: u64 = 2;

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 2_000,
            request_ms: 30_000,
            heartbeat_ms: 500,
            server_down_ms: 3_000,
            idle_ms: 600_000,
            rereplicate_after_ms: 300_000,
            resync_bytes_per_sec: 256 << 20,
            scrub_every_ms: 86_400_000,
            scrub_bytes_per_sec: 128 << 20,
        }
    }
}

impl Timeouts {
    /// The idle timeout servers apply to their connections.
    pub fn idle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.idle_ms)
    }
}

/// Client-side limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Upper bound on payload bytes one client has in flight to storage servers.
    pub max_inflight_bytes: u64,
    /// Blocks (of each file's block size) the client cache holds (the seed's
    /// CLIENT_CACHE_BLOCKS); 0 disables caching.
    pub cache_blocks: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig { max_inflight_bytes: 64 << 20, cache_blocks: 1024 }
    }
}

impl Config {
    /// Reads and validates a configuration file. Errors name the file and what is wrong.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading config {}", path.display()), e))?;
        let mut cfg: Config = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("config {}: {}", path.display(), toml_error(&text, &e))))?;
        if cfg.data_dir.is_relative() {
            // A relative base directory is taken relative to the config file's directory.
            let base = path.parent().unwrap_or(Path::new("."));
            cfg.data_dir = base.join(&cfg.data_dir);
        }
        cfg.validate().map_err(|e| Error::Config(format!("config {}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Parses a configuration from TOML text; relative directories stay relative to `data_dir`.
    pub fn from_toml(text: &str) -> Result<Config> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| Error::Config(format!("config: {}", toml_error(text, &e))))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Checks ids are unique, addresses distinct and the layout within limits.
    ///
    /// The metadata nodes: at least one and at most [`MAX_META_NODES`], ids at least 1 and
    /// unique, addresses unique (among themselves and the storage servers), data directories
    /// unique once joined with `data_dir`. An even count passes (see
    /// [`Config::meta_count_warning`]).
    ///
    /// Errors: Config naming the entry or entries at fault, e.g. `[[meta]] entries 1 and 3
    /// (addresses 10.0.0.10:7400 and 10.0.0.12:7400) both have id 1`.
    pub fn validate(&self) -> Result<()> {
        self.validate_meta()?;
        let mut ids = HashSet::new();
        // Every address in use, and by whom.
        let mut addrs: HashMap<SocketAddr, String> =
            self.meta.iter().map(|m| (m.address, format!("meta node {}", m.id))).collect();
        for s in &self.storage {
            if !ids.insert(s.id) {
                return Err(Error::Config(format!("storage id {} appears twice", s.id.0)));
            }
            if let Some(user) = addrs.insert(s.address, s.id.to_string()) {
                return Err(Error::Config(format!("address {} is used twice: by {user} and by {}", s.address, s.id)));
            }
        }
        self.layout.validate().map_err(|e| Error::Config(format!("layout: {e}")))?;
        if self.layout.chunk_size() > MAX_CHUNK_SIZE {
            return Err(Error::Config("layout: chunk size above 64 MiB".into()));
        }
        let t = &self.tokens;
        if t.lease_ms < 3 || t.revoke_timeout_ms == 0 || t.revoke_timeout_ms >= self.timeouts.request_ms {
            return Err(Error::Config(
                "tokens: lease_ms must be at least 3 and revoke_timeout_ms between 1 and timeouts.request_ms".into(),
            ));
        }
        if t.capability_ms <= crate::capability::RENEW_MARGIN_MS {
            return Err(Error::Config(format!(
                "tokens: capability_ms = {} must exceed {} (clients renew capabilities that long before they expire)",
                t.capability_ms,
                crate::capability::RENEW_MARGIN_MS
            )));
        }
        if t.fence_timeout_ms == 0 {
            return Err(Error::Config("tokens: fence_timeout_ms must be at least 1".into()));
        }
        if self.timeouts.heartbeat_ms == 0 || self.timeouts.server_down_ms <= self.timeouts.heartbeat_ms {
            return Err(Error::Config("timeouts: server_down_ms must exceed heartbeat_ms > 0".into()));
        }
        // An idle close of a live client's or storage server's connection would evict the
        // client or mark the server down: their keep-alives and heartbeats must come well
        // within the idle timeout.
        let busiest = t.lease_ms.max(self.timeouts.server_down_ms);
        if self.timeouts.idle_ms < busiest.saturating_mul(IDLE_MIN_FACTOR) {
            return Err(Error::Config(format!(
                "timeouts: idle_ms = {} is too short: it must be at least {IDLE_MIN_FACTOR} x the larger of \
                 tokens.lease_ms ({}) and timeouts.server_down_ms ({}), that is {} ms, or live clients' and \
                 storage servers' connections would be closed (evicting the clients)",
                self.timeouts.idle_ms,
                t.lease_ms,
                self.timeouts.server_down_ms,
                busiest.saturating_mul(IDLE_MIN_FACTOR)
            )));
        }
        Ok(())
    }

    /// The metadata section's own rules (see [`Config::validate`]).
    fn validate_meta(&self) -> Result<()> {
        let nodes = &self.meta;
        if nodes.is_empty() {
            return Err(Error::Config(
                "no metadata node: the config needs one [meta] table or at least one [[meta]] entry".into(),
            ));
        }
        if nodes.len() > MAX_META_NODES {
            return Err(Error::Config(format!(
                "{} [[meta]] entries: at most {MAX_META_NODES} metadata nodes are allowed (3 or 5 are usual)",
                nodes.len()
            )));
        }
        let entry = |i: usize| format!("[[meta]] entry {} (address {})", i + 1, nodes[i].address);
        let pair = |i: usize, j: usize| {
            format!(
                "[[meta]] entries {} and {} (addresses {} and {})",
                i + 1,
                j + 1,
                nodes[i].address,
                nodes[j].address
            )
        };
        for (j, node) in nodes.iter().enumerate() {
            if node.id == 0 {
                return Err(Error::Config(format!("{}: id 0 is not allowed, meta ids start at 1", entry(j))));
            }
            for (i, earlier) in nodes[..j].iter().enumerate() {
                if earlier.id == node.id {
                    return Err(Error::Config(format!("{} both have id {}", pair(i, j), node.id)));
                }
                if earlier.address == node.address {
                    return Err(Error::Config(format!(
                        "[[meta]] entries {} and {} (ids {} and {}) both have address {}",
                        i + 1,
                        j + 1,
                        earlier.id,
                        node.id,
                        node.address
                    )));
                }
                let dir = self.data_dir.join(&node.data_dir);
                if self.data_dir.join(&earlier.data_dir) == dir {
                    return Err(Error::Config(format!(
                        "meta nodes {} and {} both have the data directory {} (each node needs its own)",
                        earlier.id,
                        node.id,
                        dir.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// A warning for whoever starts the metadata nodes when their count is even, `None` when
    /// it is odd. A group of `n` nodes keeps working while a majority is up: 3 nodes tolerate
    /// 1 failure and 5 tolerate 2, but an even count tolerates no more than one node fewer
    /// (2 tolerate none, 4 only 1), while one more node must agree on every change.
    pub fn meta_count_warning(&self) -> Option<String> {
        let n = self.meta.len();
        n.is_multiple_of(2).then(|| {
            format!(
                "the config names {n} metadata nodes: a group works while a majority is up, so {n} nodes tolerate \
                 {} failure(s), as {} would; an odd count is better (3 nodes tolerate 1 failure, 5 tolerate 2)",
                (n - 1) / 2,
                n - 1
            )
        })
    }

    /// The metadata nodes in config order (at least one in a validated config).
    pub fn meta_nodes(&self) -> &[MetaNodeConfig] {
        &self.meta
    }

    /// The metadata node with id `id`, if the config names one.
    pub fn meta_node(&self, id: u64) -> Option<&MetaNodeConfig> {
        self.meta.iter().find(|m| m.id == id)
    }

    /// Every metadata node's address, in config order: what clients and storage servers try.
    pub fn meta_addresses(&self) -> Vec<SocketAddr> {
        self.meta.iter().map(|m| m.address).collect()
    }

    /// Metadata node `id`'s data directory (WAL and checkpoints), resolved against `data_dir`.
    ///
    /// Errors: Config when the config names no metadata node `id` (the message lists the
    /// ids it does name).
    pub fn meta_dir(&self, id: u64) -> Result<PathBuf> {
        match self.meta_node(id) {
            Some(m) => Ok(self.data_dir.join(&m.data_dir)),
            None => Err(self.no_meta_node(id)),
        }
    }

    /// Which metadata node this process is: the one with id `given` (a `--id`), or, without
    /// one, the only node of a single-node config.
    ///
    /// Errors: Config when the config names no node `given`, or names several and `given`
    /// is `None` (the message lists their ids).
    pub fn pick_meta_node(&self, given: Option<u64>) -> Result<&MetaNodeConfig> {
        match (given, self.meta.as_slice()) {
            (Some(id), _) => self.meta_node(id).ok_or_else(|| self.no_meta_node(id)),
            (None, [only]) => Ok(only),
            (None, _) => Err(Error::Config(format!(
                "the config names {} metadata nodes (ids {}): say which one this is with --id",
                self.meta.len(),
                self.meta_ids()
            ))),
        }
    }

    fn meta_ids(&self) -> String {
        self.meta.iter().map(|m| m.id.to_string()).collect::<Vec<_>>().join(", ")
    }

    fn no_meta_node(&self, id: u64) -> Error {
        Error::Config(format!("no metadata node with id {id} in the config (its ids: {})", self.meta_ids()))
    }

    /// How this process authenticates, with its key read from the key file the config names.
    /// A daemon passes `daemon`: it needs the cluster secret, not a client key.
    ///
    /// Errors: Config when the config has no `auth` setting (it must say `auth = "none"`
    /// explicitly), names no key file, or the key file is missing, unreadable, of the wrong
    /// size or readable by others.
    pub fn auth(&self, daemon: bool) -> Result<Auth> {
        let settings = match &self.auth {
            None => {
                return Err(Error::Config(
                    "no [auth] section: name the cluster secret (`[auth] secret_file`, made by `pfs keygen`) \
                     or say `auth = \"none\"` to run without authentication"
                        .into(),
                ))
            }
            Some(AuthConfig::None) => return Ok(Auth::none()),
            Some(AuthConfig::Keys(k)) => k,
        };
        let credentials = match (&settings.secret_file, &settings.client_key_file) {
            (Some(secret), _) => Credentials::Cluster(read_key(&self.data_dir.join(secret))?),
            (None, Some(_)) if daemon => {
                return Err(Error::Config(
                    "[auth]: a daemon needs the cluster secret (secret_file), a client key is not enough".into(),
                ))
            }
            (None, Some(key)) => Credentials::Client(read_key(&self.data_dir.join(key))?),
            (None, None) => return Err(Error::Config("[auth] names neither secret_file nor client_key_file".into())),
        };
        Ok(Auth { credentials: Some(credentials), protect_data: settings.protect_data })
    }

    /// The cluster secret's path, if the config names one.
    pub fn secret_path(&self) -> Option<PathBuf> {
        match &self.auth {
            Some(AuthConfig::Keys(AuthSettings { secret_file: Some(p), .. })) => Some(self.data_dir.join(p)),
            _ => None,
        }
    }

    /// Creates the cluster secret the config names if it does not exist yet (for a cluster
    /// on one host: `pfs up`, `pfs demo`, tests). Returns its path if it created one.
    ///
    /// Errors: Io creating it.
    pub fn ensure_secret(&self) -> Result<Option<PathBuf>> {
        let Some(path) = self.secret_path() else { return Ok(None) };
        if path.exists() {
            return Ok(None);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        write_new_key(&path, &Key::random())?;
        Ok(Some(path))
    }

    /// The storage server `id`'s section.
    pub fn storage(&self, id: ServerId) -> Result<&StorageConfig> {
        self.storage
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Error::Config(format!("no storage server with id {} in the config", id.0)))
    }

    /// A storage server's data directory, resolved against `data_dir`.
    pub fn storage_dir(&self, s: &StorageConfig) -> PathBuf {
        self.data_dir.join(&s.data_dir)
    }

    /// A configuration for `storage_count` storage servers on 127.0.0.1 ports starting at
    /// `base_port` (pfs-meta on `base_port`, one node, id 1, in `meta`), everything under
    /// `data_dir`. Used by the embedded cluster of `pfs demo`, the benchmarks and the tests.
    pub fn local(data_dir: &Path, base_port: u16, storage_count: u32) -> Config {
        Config::local_group(data_dir, base_port, 1, storage_count)
    }

    /// [`Config::local`] with `meta_count` metadata nodes (ids 1 to `meta_count`) on ports
    /// from `base_port` and the storage servers on the ports after them. One node keeps its
    /// data in `meta`, as in [`Config::local`]; several in `meta-1`, `meta-2` and so on.
    pub fn local_group(data_dir: &Path, base_port: u16, meta_count: u16, storage_count: u32) -> Config {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Config {
            data_dir: data_dir.to_path_buf(),
            auth: Some(AuthConfig::Keys(AuthSettings {
                secret_file: Some(LOCAL_SECRET.into()),
                client_key_file: None,
                protect_data: false,
            })),
            meta: (1..=meta_count)
                .map(|i| MetaNodeConfig {
                    id: i.into(),
                    address: addr(base_port + i - 1),
                    data_dir: if meta_count == 1 { "meta".into() } else { format!("meta-{i}").into() },
                    checkpoint_records: default_checkpoint_records(),
                })
                .collect(),
            storage: (1..=storage_count)
                .map(|i| StorageConfig {
                    id: ServerId(i),
                    address: addr(base_port + meta_count.saturating_sub(1) + i as u16),
                    data_dir: format!("storage-{i}").into(),
                    engine: EngineChoice::Auto,
                })
                .collect(),
            layout: LayoutPolicy::default(),
            timeouts: Timeouts::default(),
            client: ClientConfig::default(),
            tokens: TokenTimeouts::default(),
        }
    }
}

/// A TOML error as one line: "line 3, column 1: missing field `address`".
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_config_round_trips_through_toml() {
        let cfg = Config::local(Path::new("/tmp/x"), 7400, 4);
        let back = Config::from_toml(&cfg.to_toml()).unwrap();
        assert_eq!(back.storage.len(), 4);
        assert_eq!(back.storage[3].address.port(), 7404);
        assert_eq!(back.layout.chunk_size(), 1 << 20);
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let mut cfg = Config::local(Path::new("/tmp/x"), 7400, 2);
        cfg.storage[1].id = ServerId(1);
        let err = Config::from_toml(&cfg.to_toml()).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }

    #[test]
    fn idle_timeout_must_exceed_lease_and_heartbeats() {
        let mut cfg = Config::local(Path::new("/tmp/x"), 7400, 1);
        assert_eq!(cfg.timeouts.idle_ms, 600_000, "10 minutes by default");
        cfg.validate().unwrap();
        cfg.tokens.lease_ms = 5_000;
        cfg.timeouts.idle_ms = 9_999;
        let shown = cfg.validate().unwrap_err().to_string();
        assert!(shown.contains("idle_ms = 9999") && shown.contains("lease_ms (5000)"), "{shown}");
        cfg.timeouts.idle_ms = 10_000;
        cfg.validate().unwrap();
        cfg.timeouts.server_down_ms = 6_000;
        let e = cfg.validate().unwrap_err();
        assert!(matches!(&e, Error::Config(m) if m.contains("server_down_ms (6000)")), "{e}");
        // Read from a file's [timeouts] section.
        let text = cfg.to_toml().replace("idle_ms = 10000", "idle_ms = 12000");
        assert_eq!(Config::from_toml(&text).unwrap().timeouts.idle_ms, 12_000);
    }

    #[test]
    fn auth_is_none_or_a_key_file_and_never_implicit() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::local(dir.path(), 7400, 1);
        let text = cfg.to_toml();
        assert!(text.contains("[auth]") && text.contains("secret_file = \"cluster.key\""), "{text}");
        let e = cfg.auth(true).unwrap_err().to_string();
        assert!(e.contains("cluster.key") && e.contains("cannot open"), "{e}");
        assert!(cfg.ensure_secret().unwrap().is_some());
        assert!(cfg.auth(true).unwrap().enabled());
        assert!(cfg.ensure_secret().unwrap().is_none(), "an existing secret is kept");
        cfg.auth = Some(AuthConfig::None);
        let text = cfg.to_toml();
        assert!(text.contains("auth = \"none\""), "{text}");
        assert!(!Config::from_toml(&text).unwrap().auth(true).unwrap().enabled());
        cfg.auth = None;
        let e = Config::from_toml(&cfg.to_toml()).unwrap().auth(false).unwrap_err().to_string();
        assert!(e.contains("auth = \"none\""), "{e}");
        let e = Config::from_toml(&text.replace("\"none\"", "\"off\"")).unwrap_err().to_string();
        assert!(e.contains("off"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            Config::from_toml("data_dir='/x'\nbogus=1\n[meta]\naddress='127.0.0.1:1'\ndata_dir='m'\n").unwrap_err();
        // What a user reads: the key and where it is, on one line.
        let shown = err.to_string();
        assert!(shown.contains("bogus") && shown.contains("line 2"), "{shown}");
        assert!(!shown.contains('\n'), "one line: {shown}");
    }

    /// The top of a config with `meta` as its metadata section and no storage server.
    fn with_meta(meta: &str) -> String {
        format!("data_dir = '/x'\nauth = 'none'\n{meta}")
    }

    fn config_error(text: &str) -> String {
        match Config::from_toml(text) {
            Err(Error::Config(m)) => m,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    const THREE: &str = "[[meta]]\nid = 1\naddress = '127.0.0.1:7400'\ndata_dir = 'meta-1'\n\
                         [[meta]]\nid = 2\naddress = '127.0.0.1:7410'\ndata_dir = 'meta-2'\ncheckpoint_records = 7\n\
                         [[meta]]\nid = 3\naddress = '127.0.0.1:7420'\ndata_dir = '/elsewhere/meta'\n";

    #[test]
    fn a_single_meta_table_is_node_one() {
        let cfg = Config::from_toml(&with_meta("[meta]\naddress = '127.0.0.1:7400'\ndata_dir = 'm'\n")).unwrap();
        let want = MetaNodeConfig {
            id: 1,
            address: "127.0.0.1:7400".parse().unwrap(),
            data_dir: "m".into(),
            checkpoint_records: 100_000,
        };
        assert_eq!(cfg.meta_nodes(), std::slice::from_ref(&want));
        assert_eq!(cfg.meta_node(1), Some(&want));
        assert_eq!(cfg.meta_node(2), None);
        assert_eq!(cfg.meta_addresses(), [want.address]);
        assert_eq!(cfg.meta_dir(1).unwrap(), Path::new("/x/m"));
        assert_eq!(cfg.pick_meta_node(None).unwrap(), &want, "no --id needed with one node");
        assert_eq!(cfg.pick_meta_node(Some(1)).unwrap(), &want);
        assert_eq!(cfg.meta_count_warning(), None);
        // The table form may name its id; unknown keys are still refused, naming the key.
        let cfg = Config::from_toml(&with_meta("[meta]\nid = 4\naddress = '127.0.0.1:1'\ndata_dir = 'm'\n")).unwrap();
        assert_eq!(cfg.pick_meta_node(None).unwrap().id, 4);
        let e = config_error(&with_meta("[meta]\naddress = '127.0.0.1:1'\ndata_dir = 'm'\nport = 3\n"));
        assert!(e.contains("unknown field `port`") && e.contains("line 6"), "{e}");
        // Written back, it is one [[meta]] entry.
        let text = cfg.to_toml();
        assert!(text.contains("[[meta]]") && !text.contains("[meta]\n"), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap().meta_nodes(), cfg.meta_nodes());
    }

    #[test]
    fn meta_entries_are_a_group_in_config_order() {
        let cfg = Config::from_toml(&with_meta(THREE)).unwrap();
        assert_eq!(cfg.meta_nodes().iter().map(|m| m.id).collect::<Vec<_>>(), [1, 2, 3]);
        let addrs: Vec<SocketAddr> =
            ["127.0.0.1:7400", "127.0.0.1:7410", "127.0.0.1:7420"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(cfg.meta_addresses(), addrs);
        assert_eq!(cfg.meta_node(2).unwrap().checkpoint_records, 7);
        assert_eq!(cfg.meta_node(3).unwrap().checkpoint_records, 100_000, "the default");
        assert_eq!(cfg.meta_dir(1).unwrap(), Path::new("/x/meta-1"));
        assert_eq!(cfg.meta_dir(3).unwrap(), Path::new("/elsewhere/meta"), "absolute stays");
        let e = cfg.meta_dir(4).unwrap_err().to_string();
        assert!(e.contains("id 4") && e.contains("1, 2, 3"), "{e}");
        assert_eq!(cfg.pick_meta_node(Some(2)).unwrap().address.port(), 7410);
        let e = cfg.pick_meta_node(None).unwrap_err().to_string();
        assert!(e.contains("3 metadata nodes") && e.contains("--id"), "{e}");
        let e = cfg.pick_meta_node(Some(9)).unwrap_err().to_string();
        assert!(e.contains("id 9"), "{e}");
        assert_eq!(cfg.meta_count_warning(), None, "3 is odd");
        assert_eq!(Config::from_toml(&cfg.to_toml()).unwrap().meta_nodes(), cfg.meta_nodes());
    }

    #[test]
    fn an_entry_without_an_id_is_refused() {
        let e = config_error(&with_meta("[[meta]]\naddress = '127.0.0.1:7400'\ndata_dir = 'm'\n"));
        assert!(e.contains("missing field `id`"), "{e}");
        let e = config_error("data_dir = '/x'\nauth = 'none'\n");
        assert!(e.contains("missing field `meta`"), "{e}");
    }

    #[test]
    fn every_meta_rule_names_the_entries_at_fault() {
        let node = |id: u64, port: u16, dir: &str| {
            format!("[[meta]]\nid = {id}\naddress = '127.0.0.1:{port}'\ndata_dir = '{dir}'\n")
        };
        // No node at all.
        let e = config_error(&with_meta("meta = []\n"));
        assert!(e.contains("no metadata node"), "{e}");
        // Id 0.
        let e = config_error(&with_meta(&(node(1, 1, "a") + &node(0, 2, "b"))));
        assert!(e.contains("entry 2 (address 127.0.0.1:2)") && e.contains("id 0"), "{e}");
        let e = config_error(&with_meta("[meta]\nid = 0\naddress = '127.0.0.1:1'\ndata_dir = 'm'\n"));
        assert!(e.contains("entry 1") && e.contains("id 0"), "{e}");
        // The same id twice.
        let e = config_error(&with_meta(&(node(1, 1, "a") + &node(2, 2, "b") + &node(1, 3, "c"))));
        assert!(e.contains("entries 1 and 3") && e.contains("both have id 1"), "{e}");
        // The same address twice.
        let e = config_error(&with_meta(&(node(1, 1, "a") + &node(2, 1, "b"))));
        assert!(e.contains("entries 1 and 2 (ids 1 and 2)") && e.contains("address 127.0.0.1:1"), "{e}");
        // A storage server on a metadata node's address.
        let storage = "[[storage]]\nid = 1\naddress = '127.0.0.1:2'\ndata_dir = 's'\n";
        let e = config_error(&with_meta(&(node(1, 1, "a") + &node(2, 2, "b") + storage)));
        assert!(e.contains("127.0.0.1:2") && e.contains("meta node 2") && e.contains("storage-1"), "{e}");
        // The same data directory twice, once joined with data_dir.
        let e = config_error(&with_meta(&(node(1, 1, "m") + &node(2, 2, "/x/m/"))));
        assert!(e.contains("meta nodes 1 and 2") && e.contains("/x/m"), "{e}");
        // More than 7.
        let eight: String = (1..=8).map(|i| node(i, i as u16, &format!("m{i}"))).collect();
        let e = config_error(&with_meta(&eight));
        assert!(e.contains("8 [[meta]] entries") && e.contains("at most 7"), "{e}");
        let seven: String = (1..=7).map(|i| node(i, i as u16, &format!("m{i}"))).collect();
        assert_eq!(Config::from_toml(&with_meta(&seven)).unwrap().meta_nodes().len(), 7);
    }

    #[test]
    fn an_even_count_is_valid_with_a_warning() {
        let two = "[[meta]]\nid = 5\naddress = '127.0.0.1:1'\ndata_dir = 'a'\n\
                   [[meta]]\nid = 9\naddress = '127.0.0.1:2'\ndata_dir = 'b'\n";
        let cfg = Config::from_toml(&with_meta(two)).unwrap();
        assert_eq!(cfg.meta_nodes().iter().map(|m| m.id).collect::<Vec<_>>(), [5, 9], "ids need not be dense");
        let w = cfg.meta_count_warning().expect("2 is even");
        assert!(w.contains("2 metadata nodes") && w.contains("3 nodes tolerate 1"), "{w}");
    }

    #[test]
    fn local_group_places_meta_nodes_before_the_storage_servers() {
        let one = Config::local(Path::new("/tmp/x"), 7400, 2);
        assert_eq!(one.meta_addresses(), ["127.0.0.1:7400".parse::<SocketAddr>().unwrap()]);
        assert_eq!(one.meta_dir(1).unwrap(), Path::new("/tmp/x/meta"));
        assert_eq!(one.storage[0].address.port(), 7401);
        let three = Config::local_group(Path::new("/tmp/x"), 7400, 3, 2);
        three.validate().unwrap();
        assert_eq!(three.meta_addresses().iter().map(|a| a.port()).collect::<Vec<_>>(), [7400, 7401, 7402]);
        assert_eq!(three.meta_dir(3).unwrap(), Path::new("/tmp/x/meta-3"));
        assert_eq!(three.storage.iter().map(|s| s.address.port()).collect::<Vec<_>>(), [7403, 7404]);
    }

    #[test]
    fn the_shipped_configs_are_valid() {
        let local = Config::from_toml(include_str!("../../config/local.toml")).unwrap();
        let ports: Vec<u16> = local.meta_addresses().iter().map(|a| a.port()).collect();
        assert_eq!(ports, [7400, 7410, 7420], "config/local.toml runs a group of three");
        assert_eq!(local.meta_dir(1).unwrap(), Path::new("/tmp/pfs-local/meta-1"));
        assert_eq!(local.meta_dir(3).unwrap(), Path::new("/tmp/pfs-local/meta-3"));
        let example = Config::from_toml(include_str!("../../config/cluster.example.toml")).unwrap();
        assert_eq!(example.meta_nodes().len(), 1);
    }
}
