//! `pfs mount`: a pfs cluster as a POSIX file system, through FUSE (the `fuser` crate).
//!
//! The mount is one pfs client (one session, its tokens and block cache); every FUSE request
//! becomes a call of that client, run on its tokio runtime from the FUSE worker threads.
//!
//! Coherence with other clients: file data is opened with direct I/O, so the kernel's page
//! cache never holds pfs bytes (the client's block cache, kept coherent by tokens, does), and
//! attributes and directory entries are given a zero timeout, so every `stat` and lookup asks
//! pfs-meta: a size or name changed by another client is seen at once.
//!
//! What is missing (issue 11 goes on): modes, owners and times are not stored (files show
//! 0644 and directories 0755, owned by the mounting user; chmod, chown and utimens fail with
//! ENOSYS), no symbolic or hard links, no `O_APPEND` beyond what the kernel does with the size
//! it last saw.

mod fs;
pub mod paths;

pub use fs::PfsFs;

use std::io;
use std::path::Path;

/// Mounts `fs` at `mountpoint` with `threads` FUSE worker threads (each with its own
/// `/dev/fuse` descriptor) and returns the running session; dropping it unmounts.
///
/// Errors: the mount's (no such directory, no `/dev/fuse`, no permission, `fusermount3`
/// missing).
pub fn mount(fs: PfsFs, mountpoint: &Path, threads: usize) -> io::Result<fuser::BackgroundSession> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("pfs".into()),
        fuser::MountOption::Subtype("pfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.n_threads = Some(threads.max(1));
    config.clone_fd = threads > 1;
    fuser::spawn_mount(fs, mountpoint, &config)
}
