//! Precreated chunk files: empty files made ahead of time, off the request path, and renamed
//! into place when a chunk is first written (Lustre's OSTs precreate objects for the same
//! reason: creating an inode is the slow part of a first write).
//!
//! On ext4 without a journal, as on the reference VM, allocating an inode skips every inode
//! deleted in the last minutes, so after heavy churn a create costs far more than the write
//! itself (about 40 % of a storage server's cycles in a profile of a 256 MiB copy). A
//! background thread keeps [`POOL_TARGET`] empty files in `<data dir>/.precreated/`; taking
//! one is a `renameat2(RENAME_NOREPLACE)`. The pool directory is fsynced together with the
//! data directory, so a renamed chunk cannot reappear under its pool name after a crash.
//! Files left in the pool by an earlier run are emptied if need be and reused.
//!
//! A removed chunk's file is recycled into the pool rather than unlinked while the pool has
//! room: renamed into it, its checksum attribute removed and truncated to nothing (which frees
//! its blocks as an unlink would). So a workload that writes and removes files, a benchmark
//! loop or a scratch directory, does not delete inodes at all, and creates none either. The
//! pool hands files out oldest first, so a recycled file is reused last.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use tracing::warn;

/// Empty files the pool keeps ready.
pub const POOL_TARGET: usize = 512;
/// Most files the pool holds with recycled ones (the rest of a mass removal is unlinked).
pub const POOL_MAX: usize = 2 * POOL_TARGET;
/// The pool's directory name inside the data directory (not a chunk name, so listings skip it).
pub const POOL_DIR: &str = ".precreated";

/// A pool of empty files in one data directory.
pub struct Precreated {
    dir: PathBuf,
    /// Empty files, oldest first.
    ready: Mutex<VecDeque<PathBuf>>,
    wake: Condvar,
    next: Mutex<u64>,
    /// Files were taken from the pool since its directory was last fsynced.
    dirty: AtomicBool,
}

impl Precreated {
    /// Opens (creating) `<data_dir>/.precreated`, adopts the files in it and starts the
    /// refill thread. `None` if the directory cannot be made (then chunks are created
    /// directly, as without a pool).
    pub fn start(data_dir: &Path) -> Option<Arc<Precreated>> {
        let dir = data_dir.join(POOL_DIR);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            warn!("{}: no precreated chunk files: {e}", dir.display());
            return None;
        }
        let mut ready = VecDeque::new();
        let mut next = 0u64;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
                    next = next.max(n + 1);
                    // A chunk being recycled when the process stopped may still hold data and
                    // its checksums: empty it, or leave it out.
                    if e.metadata().is_ok_and(|m| m.len() == 0) || empty(&e.path()).is_ok() {
                        ready.push_back(e.path());
                    }
                }
            }
        }
        let pool = Arc::new(Precreated {
            dir,
            ready: Mutex::new(ready),
            wake: Condvar::new(),
            next: Mutex::new(next),
            dirty: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&pool);
        std::thread::Builder::new().name("pfs-precreate".into()).spawn(move || refill(weak)).ok()?;
        Some(pool)
    }

    /// Renames a precreated file to `target`. Returns false when the pool is empty or the
    /// rename failed (the caller then creates the file itself); a `target` that already
    /// exists is left alone (RENAME_NOREPLACE).
    pub fn adopt(&self, target: &Path) -> bool {
        let Some(spare) = self.ready.lock().pop_front() else {
            self.wake.notify_one();
            return false;
        };
        self.wake.notify_one();
        if rename_noreplace(&spare, target) {
            self.dirty.store(true, Ordering::Release);
            true
        } else {
            // Target exists (a racing create) or rename unsupported: give the spare back.
            self.ready.lock().push_front(spare);
            false
        }
    }

    /// Takes a removed chunk's file at `path` into the pool, emptied (see the module docs),
    /// instead of its unlink. False when the pool holds [`POOL_MAX`] or the file cannot be moved (the
    /// caller unlinks it then; a missing file is also false). The caller must have stopped all
    /// I/O to the file (chunks are removed under their lock, which every write holds).
    pub fn recycle(&self, path: &Path) -> bool {
        if self.ready.lock().len() >= POOL_MAX {
            return false;
        }
        let spare = self.next_spare();
        if !rename_noreplace(path, &spare) {
            return false;
        }
        // Out of the data directory now: the chunk is gone whatever happens next.
        self.dirty.store(true, Ordering::Release);
        match empty(&spare) {
            Ok(()) => self.ready.lock().push_back(spare),
            Err(e) => {
                warn!("{}: emptying a recycled chunk file failed: {e}; removing it", spare.display());
                let _ = std::fs::remove_file(&spare);
            }
        }
        true
    }

    /// fsync of the pool directory if files left it since the last call.
    pub fn sync(&self) -> std::io::Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// A new name in the pool directory.
    fn next_spare(&self) -> PathBuf {
        let mut next = self.next.lock();
        *next += 1;
        self.dir.join((*next - 1).to_string())
    }

    /// Files ready now (for tests).
    pub fn ready(&self) -> usize {
        self.ready.lock().len()
    }
}

/// Renames `from` to `to` unless `to` exists (`renameat2(RENAME_NOREPLACE)`); false if not done.
fn rename_noreplace(from: &Path, to: &Path) -> bool {
    let (Ok(from), Ok(to)) = (CString::new(from.as_os_str().as_bytes()), CString::new(to.as_os_str().as_bytes()))
    else {
        return false;
    };
    // SAFETY: both paths are valid NUL-terminated strings; AT_FDCWD with absolute or
    // cwd-relative paths.
    unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) == 0 }
}

/// Empties the file at `path`: no checksum attribute, no bytes.
fn empty(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let attr = CString::new(crate::checksums::XATTR).map_err(std::io::Error::other)?;
    // SAFETY: valid NUL-terminated strings.
    if unsafe { libc::removexattr(c.as_ptr(), attr.as_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENODATA) {
            return Err(e);
        }
    }
    // SAFETY: a valid NUL-terminated string.
    if unsafe { libc::truncate(c.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn refill(pool: Weak<Precreated>) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        {
            let mut ready = p.ready.lock();
            while ready.len() >= POOL_TARGET {
                // Woken by `adopt`; the timeout lets the thread notice the pool was dropped.
                p.wake.wait_for(&mut ready, std::time::Duration::from_secs(1));
                if Arc::strong_count(&p) == 1 {
                    return;
                }
            }
        }
        let path = p.next_spare();
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => p.ready.lock().push_back(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                warn!("{}: precreating a chunk file failed: {e}; retrying in 1 s", p.dir.display());
                drop(p);
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_are_renamed_into_place_and_refilled() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Precreated::start(dir.path()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.ready() < 8 {
            assert!(std::time::Instant::now() < deadline, "pool never filled");
            std::thread::yield_now();
        }
        let target = dir.path().join("0000000000000001_chunk_0");
        assert!(pool.adopt(&target));
        assert!(target.is_file() && std::fs::metadata(&target).unwrap().len() == 0);
        // An existing target is never replaced.
        std::fs::write(dir.path().join("keep"), b"data").unwrap();
        assert!(!pool.adopt(&dir.path().join("keep")));
        assert_eq!(std::fs::read(dir.path().join("keep")).unwrap(), b"data");
        pool.sync().unwrap();
    }

    #[test]
    fn removed_chunks_are_recycled_empty_and_reused_last() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Precreated::start(dir.path()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.ready() < POOL_TARGET {
            assert!(std::time::Instant::now() < deadline, "pool never filled");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // With room, the chunk's name goes, and so do its bytes and checksums.
        let old = dir.path().join("0000000000000002_chunk_0");
        std::fs::write(&old, vec![7u8; 10_000]).unwrap();
        let c = CString::new(old.as_os_str().as_bytes()).unwrap();
        let attr = CString::new(crate::checksums::XATTR).unwrap();
        // SAFETY: valid strings and a 4-byte value.
        let set = unsafe { libc::setxattr(c.as_ptr(), attr.as_ptr(), b"PFSC".as_ptr().cast(), 4, 0) };
        let xattrs = set == 0; // some file systems (tmpfs without user xattrs) refuse them
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&old).unwrap().ino();
        assert!(pool.recycle(&old));
        assert!(!old.exists());
        assert!(!pool.recycle(&dir.path().join("missing")), "nothing to recycle");
        // Every spare made before goes first; the recycled one comes after them, empty and
        // without the old chunk's checksums.
        for i in 0..POOL_TARGET {
            assert!(pool.adopt(&dir.path().join(format!("{i}_other"))));
        }
        let again = dir.path().join("0000000000000004_chunk_0");
        assert!(pool.adopt(&again));
        let meta = std::fs::metadata(&again).unwrap();
        assert_eq!(meta.ino(), inode, "the recycled file came out of the pool last");
        assert_eq!(meta.len(), 0, "the recycled file holds the old chunk's bytes");
        if xattrs {
            let c = CString::new(again.as_os_str().as_bytes()).unwrap();
            // SAFETY: valid strings; size query only.
            let n = unsafe { libc::getxattr(c.as_ptr(), attr.as_ptr(), std::ptr::null_mut(), 0) };
            assert!(n < 0, "the recycled file kept the old chunk's checksums");
        }
        // A full pool takes nothing more: the caller unlinks.
        while pool.ready() < POOL_MAX {
            let f = dir.path().join("filler");
            std::fs::write(&f, b"x").unwrap();
            assert!(pool.recycle(&f));
        }
        std::fs::write(&old, b"x").unwrap();
        assert!(!pool.recycle(&old) && old.exists());
        // A file left with data in the pool (a crash mid-recycle) is emptied at start.
        drop(pool);
        std::fs::write(dir.path().join(POOL_DIR).join("99999"), b"old chunk bytes").unwrap();
        let pool = Precreated::start(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join(POOL_DIR).join("99999")).unwrap().len(), 0);
        drop(pool);
    }
}
