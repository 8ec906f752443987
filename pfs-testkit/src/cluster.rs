//! A whole cluster of real daemon processes on loopback in a temporary directory
//! ([`LocalCluster`]), for `pfs demo`, the benchmarks and the tests; and [`wait_ready`], which
//! `pfs up` shares.

use crate::daemon::{log_tail, spawn, Daemon, DaemonKind};
use crate::error::{Error, Result};
use pfs_client::{Client, ClientOptions};
use pfs_common::config::Config;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::wire::raft::{GetStatus, NodeStatus};
use pfs_common::wire::{MetaRequest, PeerRole};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What each meta node of `config` says of itself (`pfs meta status`), by id; `None` for a
/// node that does not answer within a second or two.
pub async fn meta_statuses(config: &Config) -> Vec<(u64, Option<NodeStatus>)> {
    let opts = ConnectOptions {
        role: PeerRole::Client,
        name: "pfs-testkit meta status".into(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        auth: config.auth(false).expect("the cluster's auth config"),
    };
    let mut all = Vec::new();
    for n in config.meta_nodes() {
        let st = async {
            let c: RpcClient<MetaRequest> = RpcClient::connect(n.address, "meta", &opts, None).await.ok()?;
            c.ask(GetStatus).await.ok()
        };
        all.push((n.id, st.await));
    }
    all
}

/// The node the statuses call the leader, if one does.
pub fn meta_leader_of(statuses: &[(u64, Option<NodeStatus>)]) -> Option<u64> {
    statuses.iter().find(|(_, s)| s.as_ref().is_some_and(|s| s.state == "leader")).map(|(id, _)| *id)
}

/// Polls the meta nodes of `config` until a node other than `not` leads; returns it.
///
/// Errors: TimedOut after `timeout`, with the statuses last seen.
pub async fn wait_meta_leader(config: &Config, not: Option<u64>, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let st = meta_statuses(config).await;
        if let Some(l) = meta_leader_of(&st).filter(|l| Some(*l) != not) {
            return Ok(l);
        }
        if Instant::now() >= deadline {
            let last = format!("no meta leader (other than {not:?}): {st:?}");
            return Err(Error::NotReady { secs: timeout.as_secs(), last });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long [`wait_ready`] waits for every daemon to serve, by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until every metadata node among `daemons` takes connections (a handshake), polling
/// with a deadline. Started before the storage servers, so that they and the clients find the
/// nodes in config order (each connects to the first address that answers). If one of
/// `daemons` exits first, fails with the tail of its log.
pub async fn wait_meta_listening(config: &Config, daemons: &mut [Daemon], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut waiting: Vec<(u64, SocketAddr)> = config
        .meta_nodes()
        .iter()
        .filter(|m| daemons.iter().any(|d| d.kind == DaemonKind::Meta(m.id)))
        .map(|m| (m.id, m.address))
        .collect();
    let probe = ConnectOptions {
        role: PeerRole::Client,
        name: "pfs readiness probe".into(),
        connect_timeout: Duration::from_millis(config.timeouts.connect_ms),
        request_timeout: Duration::from_millis(config.timeouts.request_ms),
        auth: config.auth(false)?,
    };
    let mut last_err = String::new();
    loop {
        check_running(daemons)?;
        let mut still = Vec::new();
        for (id, addr) in waiting {
            if let Err(e) = RpcClient::<MetaRequest>::connect(addr, "pfs-meta", &probe, None).await {
                last_err = format!("waiting for metadata node {id}: {e}");
                still.push((id, addr));
            }
        }
        waiting = still;
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady { secs: timeout.as_secs(), last: last_err });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails with the tail of its log if one of `daemons` has exited.
fn check_running(daemons: &mut [Daemon]) -> Result<()> {
    for d in daemons.iter_mut() {
        if let Ok(Some(status)) = d.child.try_wait() {
            return Err(Error::Exited { daemon: d.kind.name(), status: status.to_string(), log: log_tail(&d.log, 8) });
        }
    }
    Ok(())
}

/// Waits until every metadata node among `daemons` takes connections
/// ([`wait_meta_listening`]), and pfs-meta answers and reports every storage server in
/// `config` up, polling with a deadline. If one of `daemons` exits first, fails with the
/// tail of its log.
pub async fn wait_ready(config: &Arc<Config>, daemons: &mut [Daemon], timeout: Duration) -> Result<Client> {
    let deadline = Instant::now() + timeout;
    wait_meta_listening(config, daemons, timeout).await?;
    let mut last_err = String::new();
    // One client for all polls (a new session per poll would be evicted as each is dropped).
    let mut client: Option<Client> = None;
    loop {
        check_running(daemons)?;
        if client.is_none() {
            match Client::connect(ClientOptions::from_config(config)?).await {
                Ok(c) => client = Some(c),
                Err(e) => last_err = e.to_string(),
            }
        }
        if let Some(c) = &client {
            match c.servers().await {
                Ok(servers) => {
                    let down: Vec<String> = config
                        .storage
                        .iter()
                        .filter(|s| !servers.iter().any(|r| r.id == s.id && r.up))
                        .map(|s| s.id.to_string())
                        .collect();
                    if down.is_empty() {
                        return Ok(client.take().expect("checked"));
                    }
                    last_err = format!("waiting for {}", down.join(", "));
                }
                Err(e) => {
                    // pfs-meta went away (restarting): connect again next time.
                    last_err = e.to_string();
                    client = None;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady { secs: timeout.as_secs(), last: last_err });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Loopback ports that were free a moment ago, one per entry.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io("finding a free port", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| Error::io("finding a free port", e)))
        .collect()
}

/// A whole cluster (pfs-meta, one node by default, + N pfs-storage) on loopback in a temporary
/// directory, for the demo, benchmarks and tests. Everything is killed and removed on drop.
pub struct LocalCluster {
    dir: tempfile::TempDir,
    config: Arc<Config>,
    config_path: PathBuf,
    daemons: Vec<Daemon>,
}

impl LocalCluster {
    /// Starts pfs-meta and `storage_count` storage servers on free loopback ports and waits
    /// until all serve. `tweak` may adjust the configuration first (layout, timeouts).
    pub async fn start_with(storage_count: u32, tweak: impl FnOnce(&mut Config)) -> Result<LocalCluster> {
        Self::start_group(1, storage_count, tweak).await
    }

    /// [`LocalCluster::start_with`] with `meta_count` metadata nodes (`[[meta]]` ids 1 to
    /// `meta_count`, data in `meta-1`, `meta-2` and so on when there are several), each its
    /// own process. Clients and storage servers get every node's address and use the first
    /// that answers; until the nodes form a replicated group, each serves on its own.
    pub async fn start_group(
        meta_count: u16,
        storage_count: u32,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<LocalCluster> {
        let dir = tempfile::Builder::new()
            .prefix("pfs-cluster-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary directory", e))?;
        let ports = free_ports(meta_count as usize + storage_count as usize)?;
        let mut config = Config::local_group(dir.path(), 0, meta_count, storage_count);
        let (meta_ports, storage_ports) = ports.split_at(meta_count as usize);
        for (m, port) in config.meta.iter_mut().zip(meta_ports) {
            m.address.set_port(*port);
        }
        for (s, port) in config.storage.iter_mut().zip(storage_ports) {
            s.address.set_port(*port);
        }
        tweak(&mut config);
        config.validate()?;
        // A fresh cluster secret (the config names it, unless a tweak said `auth = "none"`).
        config.ensure_secret()?;
        let config_path = dir.path().join("pfs.toml");
        fs::write(&config_path, config.to_toml())
            .map_err(|e| Error::io(format!("writing {}", config_path.display()), e))?;
        let mut cluster = LocalCluster { config: Arc::new(config), config_path, daemons: Vec::new(), dir };
        // The metadata nodes first, listening before the storage servers look for them (they
        // register with the first that answers, in config order, as clients connect to it).
        for m in cluster.config.meta_nodes() {
            let kind = DaemonKind::Meta(m.id);
            cluster.daemons.push(spawn(kind, &cluster.config_path, &cluster.log(kind), false)?);
        }
        if cluster.config.meta_nodes().len() > 1 {
            wait_meta_listening(&cluster.config, &mut cluster.daemons, READY_TIMEOUT).await?;
        }
        for s in cluster.config.storage.clone() {
            let kind = DaemonKind::Storage(s.id);
            cluster.daemons.push(spawn(kind, &cluster.config_path, &cluster.log(kind), false)?);
        }
        // The readiness probe's session ends cleanly (a dropped one would be evicted).
        wait_ready(&cluster.config, &mut cluster.daemons, READY_TIMEOUT).await?.close().await?;
        Ok(cluster)
    }

    /// [`LocalCluster::start_with`] with the default configuration.
    pub async fn start(storage_count: u32) -> Result<LocalCluster> {
        Self::start_with(storage_count, |_| {}).await
    }

    /// Waits until the daemons are idle: their CPU time together grows by less than a tenth
    /// of a core over 200 ms. A fresh storage server fills its pool of precreated chunk files
    /// right after it starts (about a core-second for four servers on ext4 without a
    /// journal, on the reference VM), and a benchmark started at once measures that work
    /// too. False if they are still busy after `timeout` (or their CPU time is unreadable).
    pub async fn wait_settled(&self, timeout: Duration) -> bool {
        // SAFETY: sysconf has no preconditions.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let window = Duration::from_millis(200);
        let cpu_ticks = || -> Option<u64> {
            self.daemons
                .iter()
                .map(|d| {
                    let stat = fs::read_to_string(format!("/proc/{}/stat", d.child.id())).ok()?;
                    // Fields after the command name (which may hold spaces) end with `)`.
                    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                    // utime and stime: fields 14 and 15, so 11 and 12 after the state field.
                    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
                })
                .sum()
        };
        let deadline = Instant::now() + timeout;
        let Some(mut before) = cpu_ticks() else { return false };
        while Instant::now() < deadline {
            tokio::time::sleep(window).await;
            let Some(now) = cpu_ticks() else { return false };
            // Less than 10 % of a core over the window.
            if (now - before) * 1000 / ticks_per_s < window.as_millis() as u64 / 10 {
                return true;
            }
            before = now;
        }
        false
    }

    /// The cluster's configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Path of the configuration file the daemons read.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temporary directory everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Log file of daemon `kind`.
    pub fn log(&self, kind: DaemonKind) -> PathBuf {
        self.dir.path().join("logs").join(format!("{}.log", kind.name()))
    }

    /// SIGKILLs daemon `kind` (crash tests). No effect if it is not running.
    pub fn kill(&mut self, kind: DaemonKind) {
        if let Some(i) = self.daemons.iter().position(|d| d.kind == kind) {
            let mut d = self.daemons.remove(i);
            d.kill();
        }
    }

    /// The process id of daemon `kind`, if it runs.
    pub fn pid(&self, kind: DaemonKind) -> Option<u32> {
        self.daemons.iter().find(|d| d.kind == kind).map(|d| d.child.id())
    }

    /// Stops daemon `kind` with SIGSTOP: alive but silent, as a hung disk or a stalled VM looks.
    /// [`LocalCluster::resume`] continues it; dropping the cluster kills it either way.
    pub fn suspend(&self, kind: DaemonKind) {
        self.signal(kind, libc::SIGSTOP);
    }

    /// Continues daemon `kind` after [`LocalCluster::suspend`] (SIGCONT).
    pub fn resume(&self, kind: DaemonKind) {
        self.signal(kind, libc::SIGCONT);
    }

    fn signal(&self, kind: DaemonKind, sig: i32) {
        let pid = self.pid(kind).unwrap_or_else(|| panic!("{} is not running", kind.name()));
        // SAFETY: plain signal delivery to a child process we started and have not reaped.
        let r = unsafe { libc::kill(pid as i32, sig) };
        assert_eq!(r, 0, "signal {sig} to {}: {}", kind.name(), std::io::Error::last_os_error());
    }

    /// Starts daemon `kind` again (after [`LocalCluster::kill`]) and waits until the cluster
    /// is ready.
    pub async fn restart(&mut self, kind: DaemonKind) -> Result<Client> {
        self.kill(kind);
        let d = spawn(kind, &self.config_path, &self.log(kind), false)?;
        self.daemons.push(d);
        wait_ready(&self.config, &mut self.daemons, READY_TIMEOUT).await
    }

    /// A new client connected to the cluster.
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::connect(ClientOptions::from_config(&self.config)?).await?)
    }

    /// Stops every daemon (SIGKILL: the servers' on-disk state is crash-safe by design) and
    /// removes the directory.
    pub fn stop(mut self) {
        self.kill_all();
    }

    fn kill_all(&mut self) {
        for d in &mut self.daemons {
            d.kill();
        }
        self.daemons.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
        // A failing test's daemon logs and data are what explains it: with `PFS_KEEP_FAILED`
        // set, a cluster dropped by a panic leaves its directory behind and says where.
        if std::thread::panicking() && std::env::var_os("PFS_KEEP_FAILED").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("the cluster's directory is kept: {}", self.dir.path().display());
        }
    }
}
