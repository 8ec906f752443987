//! `pfs up` and `pfs down`: daemons of this host, with logs under `<data_dir>/logs` and pid
//! files under `<data_dir>/run`, both named after the daemon: `meta-<id>` for metadata node
//! `id` (`meta-1.log`, `meta-1.pid`), `storage-<id>` for a storage server.

use pfs_cli::{Error, Result};
use pfs_common::config::Config;
use pfs_testkit::{daemon, Daemon, DaemonKind};
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An address this host can listen on.
fn is_local(addr: SocketAddr) -> bool {
    addr.ip().is_loopback() || std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).is_ok()
}

fn local_roles(config: &Config) -> Vec<(DaemonKind, IpAddr)> {
    let mut roles = Vec::new();
    for m in config.meta_nodes() {
        if is_local(m.address) {
            roles.push((DaemonKind::Meta(m.id), m.address.ip()));
        }
    }
    for s in &config.storage {
        if is_local(s.address) {
            roles.push((DaemonKind::Storage(s.id), s.address.ip()));
        }
    }
    roles
}

fn pid_file(config: &Config, role: DaemonKind) -> PathBuf {
    config.data_dir.join("run").join(format!("{}.pid", role.name()))
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True if `pid` is alive and is a pfs process (guards against a recycled pid).
fn is_pfs_process(pid: i32) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive && String::from_utf8_lossy(&cmdline).contains("pfs")
}

pub async fn up(config: &std::sync::Arc<Config>, config_path: &Path) -> Result<()> {
    let config_path = fs::canonicalize(config_path).map_err(|e| Error::io(config_path.display(), e))?;
    let roles = local_roles(config);
    if roles.is_empty() {
        return Err(Error::Usage("the config names no daemon on this host".into()));
    }
    // A cluster on one host gets its secret made here. On several hosts each would make a
    // different one: there `pfs keygen` it once and copy it to each (README, "Security model").
    let single_host = roles.len() == config.meta_nodes().len() + config.storage.len();
    match config.secret_path() {
        Some(path) if !path.exists() && !single_host => {
            return Err(Error::Usage(format!(
                "no cluster secret at {}: this cluster spans several hosts, so make one with `pfs keygen {}` \
                 on one host and copy it (mode 0400) to the same path on every host",
                path.display(),
                path.display()
            )))
        }
        _ => {
            if let Some(path) = config.ensure_secret()? {
                println!("created the cluster secret {} (mode 0400)", path.display());
            }
        }
    }
    if let Some(w) = config.meta_count_warning() {
        println!("warning: {w}");
    }
    let (meta_roles, storage_roles): (Vec<DaemonKind>, Vec<DaemonKind>) =
        roles.iter().map(|(r, _)| *r).partition(|r| matches!(r, DaemonKind::Meta(_)));
    let mut started: Vec<Daemon> = Vec::new();
    if let Err(e) = spawn_all(config, &config_path, &meta_roles, &mut started) {
        return Err(stop_started(config, &mut started, e));
    }
    // Several metadata nodes listen before the storage servers look for them: they register
    // with the first that answers, in config order, as clients connect to it.
    if config.meta_nodes().len() > 1 {
        if let Err(e) = pfs_testkit::wait_meta_listening(config, &mut started, pfs_testkit::READY_TIMEOUT).await {
            return Err(stop_started(config, &mut started, e.into()));
        }
    }
    if let Err(e) = spawn_all(config, &config_path, &storage_roles, &mut started) {
        return Err(stop_started(config, &mut started, e));
    }
    if !meta_roles.is_empty() {
        match pfs_testkit::wait_ready(config, &mut started, pfs_testkit::READY_TIMEOUT).await {
            Ok(probe) => pfs_cli::tool::close(&probe).await,
            Err(e) => return Err(stop_started(config, &mut started, e.into())),
        }
    }
    let meta: Vec<String> = config.meta_nodes().iter().map(|m| format!("node {} at {}", m.id, m.address)).collect();
    println!(
        "pfs is up: pfs-meta {}; {} storage server(s); logs in {}",
        meta.join(", "),
        config.storage.len(),
        config.data_dir.join("logs").display()
    );
    Ok(())
}

/// Starts each of `roles` not already running (its pid file names a live pfs process), its
/// pid file written, and adds it to `started`.
fn spawn_all(config: &Config, config_path: &Path, roles: &[DaemonKind], started: &mut Vec<Daemon>) -> Result<()> {
    for role in roles {
        let pidf = pid_file(config, *role);
        if let Some(pid) = read_pid(&pidf).filter(|p| is_pfs_process(*p)) {
            println!("{} already running (pid {pid})", role.name());
            continue;
        }
        let log = config.data_dir.join("logs").join(format!("{}.log", role.name()));
        let d = daemon::spawn(*role, config_path, &log, true)?;
        fs::create_dir_all(pidf.parent().expect("pid file has a parent"))
            .and_then(|_| fs::write(&pidf, format!("{}\n", d.child.id())))
            .map_err(|e| Error::io(pidf.display(), e))?;
        started.push(d);
    }
    Ok(())
}

/// A cluster half up is worse than none: what this `pfs up` started is stopped (daemons found
/// running before are left alone), and `e` returned saying so.
fn stop_started(config: &Config, started: &mut [Daemon], e: Error) -> Error {
    for d in started {
        d.kill();
        let _ = fs::remove_file(pid_file(config, d.kind));
    }
    e.context("the daemons this `pfs up` started were stopped")
}

pub fn down(config: &Config) -> Result<()> {
    let mut stopped = 0;
    for (role, _) in local_roles(config) {
        let pidf = pid_file(config, role);
        let Some(pid) = read_pid(&pidf) else { continue };
        if stop(pid) {
            println!("stopped {} (pid {pid})", role.name());
            stopped += 1;
        }
        let _ = fs::remove_file(&pidf);
    }
    // Before metadata groups, the metadata server's pid file was `pfs-meta.pid`: one started
    // by an older `pfs up` is stopped too.
    let legacy = config.data_dir.join("run").join("pfs-meta.pid");
    if let Some(pid) = read_pid(&legacy) {
        if stop(pid) {
            println!("stopped pfs-meta (pid {pid})");
            stopped += 1;
        }
        let _ = fs::remove_file(&legacy);
    }
    if stopped == 0 {
        println!("no pfs daemon was running");
    }
    Ok(())
}

/// Stops `pid` if it is a pfs process: SIGTERM, and SIGKILL if it is still there 10 s later.
/// False if it was not running.
fn stop(pid: i32) -> bool {
    if !is_pfs_process(pid) {
        return false;
    }
    // SAFETY: plain signal delivery to a pid we started (checked above).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_pfs_process(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_pfs_process(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    true
}
