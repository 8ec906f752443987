//! The fallback engine: pread/pwrite (`FileExt`) on tokio's blocking pool.
//!
//! Aligned transfers go through the chunk's `O_DIRECT` file (see [`super`]'s "Direct I/O").

use super::{blocking, check_extents, direct_eligible, ChunkFiles, ChunkKey, Engine, Extents, IoFuture, DIRECT_ALIGN};
use crate::error::{Result, StorageError};
use pfs_common::pool::PooledBuf;
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
            let direct = direct_eligible(buf.as_ptr(), offset, buf.len());
            let Some(fd) = files.open_as(key, false, direct)? else { return Ok(None) };
            if buf.is_empty() {
                return Ok(Some(buf));
            }
            files.count_op(&fd);
            let mut done = 0;
            // Loop: pread may return less than asked before the end of file. A direct read
            // that stops at an unaligned length has hit the end of file (and continuing at an
            // unaligned offset would fail with EINVAL).
            while done < buf.len() && (!fd.direct || done.is_multiple_of(DIRECT_ALIGN)) {
                match fd.file.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(StorageError::io(format!("reading {} at {offset}", ChunkFiles::describe(key)), e))
                    }
                }
            }
            buf.truncate(done);
            Ok(Some(buf))
        }))
    }

    fn write_extents(&self, key: ChunkKey, extents: Extents, buf: PooledBuf) -> IoFuture<'_, PooledBuf> {
        let files = self.files.clone();
        Box::pin(blocking(move || -> Result<PooledBuf> {
            check_extents(key, &extents, buf.len())?;
            let mut start = 0;
            for e in &extents {
                let (offset, part) = (e.offset, &buf[start..start + e.len as usize]);
                start += e.len as usize;
                let direct = direct_eligible(part.as_ptr(), offset, part.len());
                let fd = files.open_as(key, true, direct)?.expect("open with create returns a file");
                if part.is_empty() {
                    continue;
                }
                files.count_op(&fd);
                fd.file
                    .write_all_at(part, offset)
                    .map_err(|e| StorageError::io(format!("writing {} at {offset}", ChunkFiles::describe(key)), e))?;
            }
            Ok(buf)
        }))
    }

    fn sync(&self, key: ChunkKey) -> IoFuture<'_, ()> {
        let files = self.files.clone();
        Box::pin(blocking(move || {
            // Either kind of file: fdatasync flushes the inode's data written through both.
            let Some(f) = files.open_for_sync(key)? else { return Ok(()) };
            f.sync_data().map_err(|e| StorageError::io(format!("syncing {}", ChunkFiles::describe(key)), e))
        }))
    }
}
