//! Page-cache invalidation on revoke: the kernel keeps pages of memory-mapped files, and a
//! token this mount loses must take those pages with it.
//!
//! The client's revoke callback must not block (it runs on the client's runtime, and the
//! kernel may answer an invalidation by writing dirty pages back through this very mount,
//! which needs that runtime). So the callback only records the range in a map of pending
//! ranges per file, coalescing repeats (bounded by the number of files), and one thread
//! sends the invalidations to the kernel.

use fuser::{INodeNo, Notifier};
use parking_lot::{Condvar, Mutex};
use pfs_client::Client;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::debug;

#[derive(Default)]
struct Pending {
    /// Per inode: the smallest start and largest end of the revoked ranges, bytes.
    ranges: Mutex<HashMap<u64, (u64, u64)>>,
    wake: Condvar,
}

/// Makes every revoke of `client`'s tokens invalidate the kernel's cached pages of that
/// range, through `notifier`. The thread ends when the mount is gone.
pub fn on_revoke(client: &Client, notifier: Notifier) {
    let pending = Arc::new(Pending::default());
    let recorder = pending.clone();
    client.on_revoke(move |ev| {
        let mut ranges = recorder.ranges.lock();
        let r = ranges.entry(ev.file.0).or_insert((ev.range.start, ev.range.end));
        *r = (r.0.min(ev.range.start), r.1.max(ev.range.end));
        recorder.wake.notify_one();
    });
    let spawned = std::thread::Builder::new().name("pfs-invalidate".into()).spawn(move || loop {
        let batch: Vec<(u64, (u64, u64))> = {
            let mut ranges = pending.ranges.lock();
            while ranges.is_empty() {
                pending.wake.wait(&mut ranges);
            }
            ranges.drain().collect()
        };
        for (ino, (start, end)) in batch {
            // Offsets past i64 (a token to the end of the file) mean "to the end": len 0.
            let offset = i64::try_from(start).unwrap_or(i64::MAX);
            let len = i64::try_from(end - start).unwrap_or(0);
            match notifier.inval_inode(INodeNo(ino), offset, len) {
                Ok(()) => {}
                // ENOENT: the kernel holds no such inode (nothing cached): fine.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => {
                    // The mount is gone (ENOTCONN, EBADF): nothing left to keep coherent.
                    debug!("page-cache invalidation stopped: {e}");
                    return;
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the page-cache invalidation thread ({e}); memory maps may show stale pages");
    }
}
