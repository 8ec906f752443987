//! A real `pfs mount` for tests: started as a process, waited for in `/proc/mounts`, and
//! killed and unmounted (`fusermount3 -u`) when dropped, so a failing test leaves no mount.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a file system is mounted at `at` (per `/proc/mounts`).
pub fn mounted(at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().any(|l| l.split(' ').nth(1) == at.to_str())
}

/// Polls `f` every 20 ms until true; panics naming `what` after 30 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < end, "not within 30 s: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `pfs mount`, unmounted (SIGKILL and `fusermount3 -u`) when dropped.
pub struct Mount {
    pub child: Child,
    at: PathBuf,
}

impl Mount {
    /// Starts `pfs --config CONFIG mount AT` (`pfs` is the executable's path), its log at
    /// `warn` to `log` (or discarded), and waits until the mount appears. Panics if it exits
    /// first or does not appear within 30 s.
    pub fn start(pfs: &str, config: &Path, at: &Path, log: Option<&Path>) -> Mount {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("creating the mount's log")),
            None => Stdio::inherit(),
        };
        let child = Command::new(pfs)
            .args(["--config", config.to_str().unwrap(), "mount", at.to_str().unwrap()])
            .env("PFS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting pfs mount");
        let mut m = Mount { child, at: at.to_path_buf() };
        wait_until("the mount appears", || {
            assert!(m.child.try_wait().unwrap().is_none(), "pfs mount exited");
            mounted(at)
        });
        m
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.at
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if mounted(&self.at) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.at).status();
        }
    }
}
