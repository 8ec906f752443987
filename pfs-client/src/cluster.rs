//! Starting and stopping pfs daemons on this host: the embedded cluster of `pfs demo`, the
//! benchmarks and the tests ([`LocalCluster`]), and the daemons of `pfs up` / `pfs down`.
//!
//! Daemons are real processes talking real TCP. The executables are found, in order, in
//! `$PFS_BIN_DIR`, next to the running executable, and one directory up (where cargo puts
//! binaries relative to test executables). Where `pfs-meta` / `pfs-storage` are not built
//! (`cargo run --bin pfs` builds only `pfs`), the `pfs` executable serves instead through its
//! `pfs serve meta|storage` subcommand, which runs the same server code.

use crate::Client;
use pfs_common::config::Config;
use pfs_common::error::{ErrorCode, PfsError, Result};
use pfs_common::ids::ServerId;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long [`wait_ready`] waits for every daemon to serve, by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Meta,
    Storage(ServerId),
}

impl Role {
    /// "pfs-meta" or "storage-N": used for log and pid file names.
    pub fn name(&self) -> String {
        match self {
            Role::Meta => "pfs-meta".to_string(),
            Role::Storage(id) => id.to_string(),
        }
    }
}

/// A daemon process started by us.
pub struct Daemon {
    pub role: Role,
    pub child: Child,
    /// Its stderr/stdout log.
    pub log: PathBuf,
}

impl Daemon {
    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("PFS_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if let Some(up) = d.parent() {
                dirs.push(up.to_path_buf());
            }
        }
    }
    dirs
}

/// The command that runs daemon `role` with configuration file `config_path`.
///
/// Errors: NotFound when neither the daemon's own executable nor `pfs` can be found.
pub fn daemon_command(role: Role, config_path: &Path) -> Result<Command> {
    let own = match role {
        Role::Meta => "pfs-meta",
        Role::Storage(_) => "pfs-storage",
    };
    let dirs = candidate_dirs();
    let mut cmd = if let Some(exe) = dirs.iter().map(|d| d.join(own)).find(|p| p.is_file()) {
        Command::new(exe)
    } else if let Some(pfs) = dirs.iter().map(|d| d.join("pfs")).find(|p| p.is_file()) {
        let mut c = Command::new(pfs);
        c.arg("serve").arg(match role {
            Role::Meta => "meta",
            Role::Storage(_) => "storage",
        });
        c
    } else {
        return Err(PfsError::new(
            ErrorCode::NotFound,
            format!("cannot find {own} or pfs in {dirs:?}; build them with `cargo build --release` or set PFS_BIN_DIR"),
        ));
    };
    cmd.arg("--config").arg(config_path);
    if let Role::Storage(id) = role {
        cmd.arg("--id").arg(id.0.to_string());
    }
    Ok(cmd)
}

/// Starts daemon `role`, its output appended to `log`. With `detach`, it gets its own process
/// group so that it outlives the terminal session of `pfs up`.
pub fn spawn(role: Role, config_path: &Path, log: &Path, detach: bool) -> Result<Daemon> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).map_err(|e| PfsError::io(format!("creating {}", dir.display()), e))?;
    }
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| PfsError::io(format!("opening log {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| PfsError::io("duplicating a log handle", e))?;
    let mut cmd = daemon_command(role, config_path)?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    if detach {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| PfsError::io(format!("starting {}", role.name()), e))?;
    Ok(Daemon { role, child, log: log.to_path_buf() })
}

/// The last `n` lines of a log file (for errors about a daemon that died).
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until pfs-meta answers and reports every storage server in `config` up, polling
/// with a deadline. If one of `daemons` exits first, fails with the tail of its log.
pub async fn wait_ready(config: &Arc<Config>, daemons: &mut [Daemon], timeout: Duration) -> Result<Client> {
    let deadline = Instant::now() + timeout;
    let mut last_err;
    loop {
        for d in daemons.iter_mut() {
            if let Ok(Some(status)) = d.child.try_wait() {
                return Err(PfsError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "{} exited ({status}) during start-up; its log says:\n{}",
                        d.role.name(),
                        log_tail(&d.log, 8)
                    ),
                ));
            }
        }
        match Client::connect(config.clone()).await {
            Ok(client) => match client.servers().await {
                Ok(servers) => {
                    let down: Vec<String> = config
                        .storage
                        .iter()
                        .filter(|s| !servers.iter().any(|r| r.id == s.id && r.up))
                        .map(|s| s.id.to_string())
                        .collect();
                    if down.is_empty() {
                        return Ok(client);
                    }
                    last_err = format!("waiting for {}", down.join(", "));
                }
                Err(e) => last_err = e.to_string(),
            },
            Err(e) => last_err = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(PfsError::new(
                ErrorCode::TimedOut,
                format!("cluster not ready within {} s: {last_err}", timeout.as_secs()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Loopback ports that were free a moment ago, one per entry.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(|e| PfsError::io("finding a free port", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| PfsError::io("finding a free port", e)))
        .collect()
}

/// A whole cluster (1 pfs-meta + N pfs-storage) on loopback in a temporary directory, for
/// the demo, benchmarks and tests. Everything is killed and removed on drop.
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
        let dir = tempfile::Builder::new()
            .prefix("pfs-cluster-")
            .tempdir()
            .map_err(|e| PfsError::io("creating a temporary directory", e))?;
        let ports = free_ports(storage_count as usize + 1)?;
        let mut config = Config::local(dir.path(), 0, storage_count);
        config.meta.address.set_port(ports[0]);
        for (s, port) in config.storage.iter_mut().zip(&ports[1..]) {
            s.address.set_port(*port);
        }
        tweak(&mut config);
        config.validate()?;
        let config_path = dir.path().join("pfs.toml");
        fs::write(&config_path, config.to_toml())
            .map_err(|e| PfsError::io(format!("writing {}", config_path.display()), e))?;
        let mut cluster = LocalCluster { config: Arc::new(config), config_path, daemons: Vec::new(), dir };
        cluster.daemons.push(spawn(Role::Meta, &cluster.config_path, &cluster.log(Role::Meta), false)?);
        for s in cluster.config.storage.clone() {
            let role = Role::Storage(s.id);
            cluster.daemons.push(spawn(role, &cluster.config_path, &cluster.log(role), false)?);
        }
        wait_ready(&cluster.config, &mut cluster.daemons, READY_TIMEOUT).await?;
        Ok(cluster)
    }

    /// [`LocalCluster::start_with`] with the default configuration.
    pub async fn start(storage_count: u32) -> Result<LocalCluster> {
        Self::start_with(storage_count, |_| {}).await
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

    /// Log file of daemon `role`.
    pub fn log(&self, role: Role) -> PathBuf {
        self.dir.path().join("logs").join(format!("{}.log", role.name()))
    }

    /// SIGKILLs daemon `role` (crash tests). No effect if it is not running.
    pub fn kill(&mut self, role: Role) {
        if let Some(i) = self.daemons.iter().position(|d| d.role == role) {
            let mut d = self.daemons.remove(i);
            d.kill();
        }
    }

    /// Starts daemon `role` again (after [`LocalCluster::kill`]) and waits until the cluster
    /// is ready.
    pub async fn restart(&mut self, role: Role) -> Result<Client> {
        self.kill(role);
        let d = spawn(role, &self.config_path, &self.log(role), false)?;
        self.daemons.push(d);
        wait_ready(&self.config, &mut self.daemons, READY_TIMEOUT).await
    }

    /// A new client connected to the cluster.
    pub async fn client(&self) -> Result<Client> {
        Client::connect(self.config.clone()).await
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
    }
}
