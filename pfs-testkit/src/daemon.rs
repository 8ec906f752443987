//! Daemon processes: finding the `pfs-meta` / `pfs-storage` executables, starting one with its
//! output in a log file, reading a log's tail when it dies.
//!
//! The executables are found, in order, in `$PFS_BIN_DIR`, next to the running executable, and
//! one directory up (where cargo puts binaries relative to test executables). Where
//! `pfs-meta` / `pfs-storage` are not built (`cargo run --bin pfs` builds only `pfs`), the
//! `pfs` executable serves instead through its `pfs serve meta|storage` subcommand, which runs
//! the same server code.

use crate::error::{Error, Result};
use pfs_common::ids::ServerId;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Which daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaemonKind {
    /// The metadata node with this `[[meta]]` id.
    Meta(u64),
    Storage(ServerId),
}

impl DaemonKind {
    /// "meta-N" or "storage-N": used for log and pid file names.
    pub fn name(&self) -> String {
        match self {
            DaemonKind::Meta(id) => format!("meta-{id}"),
            DaemonKind::Storage(id) => id.to_string(),
        }
    }
}

/// A daemon process started by us.
pub struct Daemon {
    pub kind: DaemonKind,
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

/// The command that runs daemon `kind` with configuration file `config_path`.
///
/// Errors: NotFound when neither the daemon's own executable nor `pfs` can be found.
pub fn daemon_command(kind: DaemonKind, config_path: &Path) -> Result<Command> {
    let own = match kind {
        DaemonKind::Meta(_) => "pfs-meta",
        DaemonKind::Storage(_) => "pfs-storage",
    };
    let dirs = candidate_dirs();
    let mut cmd = if let Some(exe) = dirs.iter().map(|d| d.join(own)).find(|p| p.is_file()) {
        Command::new(exe)
    } else if let Some(pfs) = dirs.iter().map(|d| d.join("pfs")).find(|p| p.is_file()) {
        let mut c = Command::new(pfs);
        c.arg("serve").arg(match kind {
            DaemonKind::Meta(_) => "meta",
            DaemonKind::Storage(_) => "storage",
        });
        c
    } else {
        return Err(Error::NoExecutable { exe: own, dirs: format!("{dirs:?}") });
    };
    cmd.arg("--config").arg(config_path);
    match kind {
        DaemonKind::Meta(id) => cmd.arg("--id").arg(id.to_string()),
        DaemonKind::Storage(id) => cmd.arg("--id").arg(id.0.to_string()),
    };
    Ok(cmd)
}

/// Starts daemon `kind`, its output appended to `log`. With `detach`, it gets its own process
/// group so that it outlives the terminal session of `pfs up`.
pub fn spawn(kind: DaemonKind, config_path: &Path, log: &Path, detach: bool) -> Result<Daemon> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("opening log {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| Error::io("duplicating a log handle", e))?;
    let mut cmd = daemon_command(kind, config_path)?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    if detach {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| Error::io(format!("starting {}", kind.name()), e))?;
    Ok(Daemon { kind, child, log: log.to_path_buf() })
}

/// The last `n` lines of a log file (for errors about a daemon that died).
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
