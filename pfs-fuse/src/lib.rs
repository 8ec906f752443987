//! `pfs mount`: a pfs cluster as a POSIX file system, through FUSE (the `fuser` crate).
//!
//! The mount is one pfs client (one session, its tokens and block cache); every FUSE request
//! becomes a call of that client, run on its tokio runtime from the FUSE worker threads.
//!
//! Coherence with other clients: `read` and `write` use direct I/O, so the kernel's page cache
//! never holds their bytes (the client's block cache, kept coherent by tokens, does). Files'
//! attributes and names have a zero timeout, so every `stat` and lookup of a file asks
//! pfs-meta: a size or name changed by another client is seen at once. Directories and
//! symbolic links may be kept for the `dir_ttl` given to [`PfsFs::new`], so path walks and
//! permission checks need not ask pfs-meta for every component.
//!
//! Memory maps: `mmap` of a file uses the kernel's page cache (FUSE_DIRECT_IO_ALLOW_MMAP)
//! while `read`/`write` stay direct. When another client's access revokes one of this
//! mount's tokens, the mount tells the kernel to drop (and first write back) its cached
//! pages of that range (module `invalidate`); this happens just after the revoke is acknowledged,
//! so for that moment a mapped page can still show the old bytes: maps are coherent across
//! nodes within milliseconds, not byte-exactly as `read` and `write` are.
//!
//! Permissions: modes, owners and groups live in pfs-meta; the mount asks the kernel to check
//! them (`default_permissions`) against the uid and gid of the process making each call, so
//! pfs trusts the client node about who its users are, as NFS does with AUTH_SYS. Mounted by
//! root, the mount is open to every user of the node (`allow_other`), as a shared file
//! system is.

mod fs;
mod invalidate;

pub use fs::PfsFs;

use std::io;
use std::path::Path;

/// Mounts `fs` at `mountpoint` with `threads` FUSE worker threads (each with its own
/// `/dev/fuse` descriptor) and returns the running session; dropping it unmounts.
///
/// Errors: the mount's (no such directory, no `/dev/fuse`, no permission, `fusermount3`
/// missing).
pub fn mount(fs: PfsFs, mountpoint: &Path, threads: usize) -> io::Result<fuser::BackgroundSession> {
    let client = fs.client().clone();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("pfs".into()),
        fuser::MountOption::Subtype("pfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(threads.max(1));
    config.clone_fd = threads > 1;
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    invalidate::on_revoke(&client, session.notifier());
    Ok(session)
}
