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
//! Files left in the pool by an earlier run are empty and simply reused.

use parking_lot::{Condvar, Mutex};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use tracing::warn;

/// Empty files the pool keeps ready.
pub const POOL_TARGET: usize = 512;
/// The pool's directory name inside the data directory (not a chunk name, so listings skip it).
pub const POOL_DIR: &str = ".precreated";

/// A pool of empty files in one data directory.
pub struct Precreated {
    dir: PathBuf,
    ready: Mutex<Vec<PathBuf>>,
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
        let mut ready = Vec::new();
        let mut next = 0u64;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
                    next = next.max(n + 1);
                    ready.push(e.path());
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
        let Some(spare) = self.ready.lock().pop() else {
            self.wake.notify_one();
            return false;
        };
        self.wake.notify_one();
        let (Ok(from), Ok(to)) =
            (CString::new(spare.as_os_str().as_bytes()), CString::new(target.as_os_str().as_bytes()))
        else {
            return false;
        };
        // SAFETY: both paths are valid NUL-terminated strings; AT_FDCWD with absolute or
        // cwd-relative paths.
        let r = unsafe {
            libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE)
        };
        if r == 0 {
            self.dirty.store(true, Ordering::Release);
            true
        } else {
            // Target exists (a racing create) or rename unsupported: give the spare back.
            self.ready.lock().push(spare);
            false
        }
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

    /// Files ready now (for tests).
    pub fn ready(&self) -> usize {
        self.ready.lock().len()
    }
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
        let n = {
            let mut next = p.next.lock();
            *next += 1;
            *next - 1
        };
        let path = p.dir.join(n.to_string());
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => p.ready.lock().push(path),
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
}
