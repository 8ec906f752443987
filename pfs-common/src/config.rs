//! Cluster configuration, read from TOML (see `config/local.toml`).
//!
//! One file describes the whole cluster: the metadata server, every storage server (one per
//! storage target), layout defaults, timeouts and client limits. Every process reads the same
//! file; a storage server picks its own section by `--id`.

use crate::auth::{read_key, write_new_key, Auth, Credentials, Key};
use crate::error::{Error, Result};
use crate::ids::ServerId;
use crate::layout::{LayoutPolicy, MAX_CHUNK_SIZE};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
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
    pub meta: MetaConfig,
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

/// The metadata server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    /// Address it listens on and clients and storage servers connect to.
    pub address: SocketAddr,
    /// Directory for the WAL and checkpoints (relative paths are under `Config::data_dir`).
    pub data_dir: PathBuf,
    /// Take a checkpoint and start a new log segment after this many WAL records.
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_records: u64,
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
    pub fn validate(&self) -> Result<()> {
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        addrs.insert(self.meta.address);
        for s in &self.storage {
            if !ids.insert(s.id) {
                return Err(Error::Config(format!("storage id {} appears twice", s.id.0)));
            }
            if !addrs.insert(s.address) {
                return Err(Error::Config(format!("address {} is used twice", s.address)));
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

    /// The metadata server's data directory, resolved against `data_dir`.
    pub fn meta_dir(&self) -> PathBuf {
        self.data_dir.join(&self.meta.data_dir)
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
    /// `base_port` (pfs-meta on `base_port`), everything under `data_dir`. Used by the
    /// embedded cluster of `pfs demo`, the benchmarks and the tests.
    pub fn local(data_dir: &Path, base_port: u16, storage_count: u32) -> Config {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Config {
            data_dir: data_dir.to_path_buf(),
            auth: Some(AuthConfig::Keys(AuthSettings {
                secret_file: Some(LOCAL_SECRET.into()),
                client_key_file: None,
                protect_data: false,
            })),
            meta: MetaConfig {
                address: addr(base_port),
                data_dir: "meta".into(),
                checkpoint_records: default_checkpoint_records(),
            },
            storage: (1..=storage_count)
                .map(|i| StorageConfig {
                    id: ServerId(i),
                    address: addr(base_port + i as u16),
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
}
