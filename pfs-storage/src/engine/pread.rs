//! The fallback engine: pread/pwrite (`FileExt`) on tokio's blocking pool.

use super::{blocking, ChunkFiles, ChunkKey, Engine, IoFuture};
use pfs_common::pool::PooledBuf;
use pfs_common::{PfsError, Result};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// pread/pwrite engine; works wherever the file system does.
pub struct PreadEngine {
    files: Arc<ChunkFiles>,
}

impl PreadEngine {
    /// An engine on `files`' directory.
    pub fn new(files: Arc<ChunkFiles>) -> Self {
        PreadEngine { files }
    }
}

impl Engine for PreadEngine {
    fn name(&self) -> &'static str {
        "pread"
    }

    fn files(&self) -> &Arc<ChunkFiles> {
        &self.files
    }

    fn read(&self, key: ChunkKey, offset: u64, mut buf: PooledBuf) -> IoFuture<'_, Option<PooledBuf>> {
        let files = self.files.clone();
        Box::pin(blocking(move || {
            let Some(f) = files.open(key, false)? else { return Ok(None) };
            let mut done = 0;
            // Loop: pread may return less than asked before the end of file.
            while done < buf.len() {
                match f.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(PfsError::io(format!("reading {} at {offset}", ChunkFiles::describe(key)), e))
                    }
                }
            }
            buf.truncate(done);
            Ok(Some(buf))
        }))
    }

    fn write(&self, key: ChunkKey, offset: u64, buf: PooledBuf) -> IoFuture<'_, PooledBuf> {
        let files = self.files.clone();
        Box::pin(blocking(move || -> Result<PooledBuf> {
            let f = files.open(key, true)?.expect("open with create returns a file");
            f.write_all_at(&buf, offset)
                .map_err(|e| PfsError::io(format!("writing {} at {offset}", ChunkFiles::describe(key)), e))?;
            Ok(buf)
        }))
    }

    fn sync(&self, key: ChunkKey) -> IoFuture<'_, ()> {
        let files = self.files.clone();
        Box::pin(blocking(move || {
            let Some(f) = files.open(key, false)? else { return Ok(()) };
            f.sync_data().map_err(|e| PfsError::io(format!("syncing {}", ChunkFiles::describe(key)), e))
        }))
    }
}
