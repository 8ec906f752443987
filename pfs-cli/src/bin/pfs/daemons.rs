//! `pfs up` and `pfs down`: daemons of this host, with logs under `<data_dir>/logs` and pid
//! files under `<data_dir>/run`.

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
    if is_local(config.meta.address) {
        roles.push((DaemonKind::Meta, config.meta.address.ip()));
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
    let single_host = roles.len() == 1 + config.storage.len();
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
    let mut started: Vec<Daemon> = Vec::new();
    for (role, _) in &roles {
        let pidf = pid_file(config, *role);
        if let Some(pid) = read_pid(&pidf).filter(|p| is_pfs_process(*p)) {
            println!("{} already running (pid {pid})", role.name());
            continue;
        }
        let log = config.data_dir.join("logs").join(format!("{}.log", role.name()));
        let d = daemon::spawn(*role, &config_path, &log, true)?;
        fs::create_dir_all(pidf.parent().expect("pid file has a parent"))
            .and_then(|_| fs::write(&pidf, format!("{}\n", d.child.id())))
            .map_err(|e| Error::io(pidf.display(), e))?;
        started.push(d);
    }
    if roles.iter().any(|(r, _)| *r == DaemonKind::Meta) {
        match pfs_testkit::wait_ready(config, &mut started, pfs_testkit::READY_TIMEOUT).await {
            Ok(probe) => pfs_cli::tool::close(&probe).await,
            Err(e) => {
                // A cluster half up is worse than none: what this call started is stopped
                // (daemons found running before are left alone).
                for d in &mut started {
                    d.kill();
                    let _ = fs::remove_file(pid_file(config, d.kind));
                }
                return Err(Error::from(e).context("the daemons this `pfs up` started were stopped"));
            }
        }
    }
    println!(
        "pfs is up: pfs-meta at {}, {} storage server(s); logs in {}",
        config.meta.address,
        config.storage.len(),
        config.data_dir.join("logs").display()
    );
    Ok(())
}

pub fn down(config: &Config) -> Result<()> {
    let mut stopped = 0;
    for (role, _) in local_roles(config) {
        let pidf = pid_file(config, role);
        let Some(pid) = read_pid(&pidf) else { continue };
        if is_pfs_process(pid) {
            // SAFETY: plain signal delivery to a pid we started (checked above).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while is_pfs_process(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if is_pfs_process(pid) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            println!("stopped {} (pid {pid})", role.name());
            stopped += 1;
        }
        let _ = fs::remove_file(&pidf);
    }
    if stopped == 0 {
        println!("no pfs daemon was running");
    }
    Ok(())
}
