//! `pfs mount` and `pfs umount`.

use pfs_cli::{tool, Error, Result};
use pfs_common::config::Config;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Mounts the cluster at `mountpoint` and serves it until SIGINT or SIGTERM (then unmounts) or
/// until someone unmounts it; the session then ends cleanly.
pub fn run(
    rt: tokio::runtime::Runtime,
    config: &Config,
    mountpoint: &Path,
    threads: usize,
    dir_ttl: Duration,
) -> Result<()> {
    let rt = Arc::new(rt);
    let client = rt.block_on(pfs_client::Client::connect(pfs_client::ClientOptions::from_config(config)?))?;
    let fs = pfs_fuse::PfsFs::new(rt.clone(), client.clone(), dir_ttl);
    let session = pfs_fuse::mount(fs, mountpoint, threads)
        .map_err(|e| Error::io(format!("mounting pfs at {}", mountpoint.display()), e))?;
    println!("pfs mounted at {} (Ctrl-C or `pfs umount {}` to unmount)", mountpoint.display(), mountpoint.display());
    let signalled = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::io("listening for SIGTERM", e))?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok::<bool, Error>(true),
                _ = term.recv() => return Ok(true),
                // Unmounted from outside (`pfs umount`, `fusermount3 -u`): the session ends.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if session.guard.is_finished() {
                        return Ok(false);
                    }
                }
            }
        }
    })?;
    let unmounted = if signalled { session.umount_and_join() } else { session.join() };
    rt.block_on(tool::close(&client));
    unmounted.map_err(|e| Error::io(format!("unmounting {}", mountpoint.display()), e))?;
    println!("pfs unmounted from {}", mountpoint.display());
    Ok(())
}

/// Unmounts a pfs mount with `fusermount3 -u`.
pub fn umount(mountpoint: &Path) -> Result<()> {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .status()
        .map_err(|e| Error::io("running fusermount3 (Debian package fuse3)", e))?;
    if !status.success() {
        return Err(Error::Usage(format!("fusermount3 -u {} failed ({status})", mountpoint.display())));
    }
    Ok(())
}
