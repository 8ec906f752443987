//! [`File`]: reads and writes of one striped file.

use crate::client::{expect_attr, expect_done, Client};
use futures_util::stream::{FuturesUnordered, StreamExt};
use pfs_common::error::{ErrorCode, PfsError, Result};
use pfs_common::ids::{FileId, ServerId};
use pfs_common::layout::{Layout, Piece};
use pfs_common::wire::meta::{Attr, FileKind, MetaRequest};
use pfs_common::wire::storage::{StorageRequest, StorageResponse};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// An open pfs file. Cheap to clone; clones share state (size, what is unsynced).
///
/// Writes go straight to the storage servers (no client cache yet) but are durable only after
/// [`File::fsync`] or [`File::close`], which also make the new size durable on pfs-meta.
#[derive(Clone)]
pub struct File {
    inner: Arc<FileInner>,
}

struct FileInner {
    client: Client,
    path: String,
    id: FileId,
    layout: Layout,
    /// Largest of: size at open, end of our writes, size we truncated to (bytes).
    size: AtomicU64,
    /// Our writes or truncates changed the size and pfs-meta does not know yet.
    size_dirty: AtomicBool,
    /// Storage targets written since the last fsync.
    unsynced: parking_lot::Mutex<BTreeSet<ServerId>>,
}

impl File {
    pub(crate) fn new(client: Client, path: String, attr: Attr) -> Result<File> {
        if attr.kind == FileKind::Dir {
            return Err(PfsError::new(ErrorCode::IsDir, format!("{path} is a directory")));
        }
        let layout = attr
            .layout
            .ok_or_else(|| PfsError::new(ErrorCode::Protocol, format!("pfs-meta sent no layout for {path}")))?;
        layout.validate().map_err(|e| e.context(format!("layout of {path}")))?;
        Ok(File {
            inner: Arc::new(FileInner {
                client,
                path,
                id: attr.id,
                layout,
                size: AtomicU64::new(attr.size),
                size_dirty: AtomicBool::new(false),
                unsynced: parking_lot::Mutex::new(BTreeSet::new()),
            }),
        })
    }

    /// The file's id.
    pub fn id(&self) -> FileId {
        self.inner.id
    }

    /// The path it was opened by.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// Its stripe layout.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// Size in bytes as this handle knows it: the size at open, grown by our writes.
    pub fn size(&self) -> u64 {
        self.inner.size.load(Ordering::Acquire)
    }

    /// Writes `buf` at byte `offset`. The pieces go to their storage targets in parallel.
    /// Returns `buf.len()`: a write either completes whole or fails.
    ///
    /// Errors: the first failing piece's error, naming the path, chunk and storage server
    /// (Unavailable, TimedOut, NoSpace, Io).
    pub async fn write_at(&self, offset: u64, buf: &[u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| PfsError::new(ErrorCode::Invalid, format!("{}: write past 2^64 bytes", self.inner.path)))?;
        let mut pending: FuturesUnordered<_> =
            self.inner.layout.pieces(offset, buf.len()).map(|p| self.write_piece(p, buf)).collect();
        while let Some(r) = pending.next().await {
            r?;
        }
        if self.inner.size.fetch_max(end, Ordering::AcqRel) < end {
            self.inner.size_dirty.store(true, Ordering::Release);
        }
        Ok(buf.len())
    }

    async fn write_piece(&self, p: Piece, buf: &[u8]) -> Result<()> {
        let data = &buf[p.buf_offset..p.buf_offset + p.len];
        let target = self.inner.layout.target(p.chunk);
        let _permit = self.inflight(p.len).await;
        self.inner.unsynced.lock().insert(target);
        let req = StorageRequest::Write {
            file: self.inner.id,
            chunk: p.chunk,
            offset: p.chunk_offset,
            chunk_size: self.inner.layout.chunk_size(),
            session: 0,
        };
        let what = || format!("writing {} chunk {} on {target}", self.inner.path, p.chunk);
        match self.inner.client.storage(target, &req, data).await.map_err(|e| e.context(what()))?.0 {
            StorageResponse::Written { len } if len as usize == p.len => Ok(()),
            other => Err(PfsError::new(ErrorCode::Io, format!("{}: short or odd answer {other:?}", what()))),
        }
    }

    async fn inflight(&self, len: usize) -> tokio::sync::SemaphorePermit<'_> {
        let n = (len as u64).clamp(1, self.inner.client.inner.inflight_max as u64) as u32;
        self.inner.client.inner.inflight.acquire_many(n).await.expect("the in-flight semaphore is never closed")
    }

    /// Reads into `buf` from byte `offset`. Returns the bytes read: fewer than `buf.len()` only
    /// at end of file (0 at or past it). Holes (never written ranges) read as zeros.
    ///
    /// Errors: the first failing piece's error, naming the path, chunk and storage server.
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = self.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = ((size - offset).min(buf.len() as u64)) as usize;
        let buf = &mut buf[..len];
        // Each piece borrows its own disjoint slice of `buf`.
        let mut pending = FuturesUnordered::new();
        let mut rest: &mut [u8] = buf;
        for p in self.inner.layout.pieces(offset, len) {
            let (mine, tail) = rest.split_at_mut(p.len);
            rest = tail;
            pending.push(self.read_piece(p, mine));
        }
        while let Some(r) = pending.next().await {
            r?;
        }
        Ok(len)
    }

    async fn read_piece(&self, p: Piece, out: &mut [u8]) -> Result<()> {
        let target = self.inner.layout.target(p.chunk);
        let _permit = self.inflight(p.len).await;
        let req =
            StorageRequest::Read { file: self.inner.id, chunk: p.chunk, offset: p.chunk_offset, len: p.len as u32 };
        let what = || format!("reading {} chunk {} from {target}", self.inner.path, p.chunk);
        let (answer, data) = self.inner.client.storage(target, &req, &[]).await.map_err(|e| e.context(what()))?;
        match answer {
            StorageResponse::Read { .. } if data.len() <= out.len() => {
                out[..data.len()].copy_from_slice(&data);
                // Past the chunk file's end, below the file size: a hole, which reads as zeros.
                out[data.len()..].fill(0);
                Ok(())
            }
            other => Err(PfsError::new(ErrorCode::Io, format!("{}: odd answer {other:?}", what()))),
        }
    }

    /// Makes every completed write durable on the storage servers, then the size durable on
    /// pfs-meta. Errors name the storage server that failed.
    pub async fn fsync(&self) -> Result<()> {
        let targets: Vec<ServerId> = std::mem::take(&mut *self.inner.unsynced.lock()).into_iter().collect();
        let mut pending: FuturesUnordered<_> = targets
            .iter()
            .map(|&t| async move {
                let req = StorageRequest::Fsync { file: self.inner.id };
                self.inner
                    .client
                    .storage(t, &req, &[])
                    .await
                    .map_err(|e| e.context(format!("fsync of {} on {t}", self.inner.path)))
            })
            .collect();
        let mut failed = None;
        while let Some(r) = pending.next().await {
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            // Keep them marked: a later fsync retries.
            self.inner.unsynced.lock().extend(targets);
            return Err(e);
        }
        if self.inner.size_dirty.swap(false, Ordering::AcqRel) {
            let size = self.size();
            let r =
                self.inner.client.meta(MetaRequest::SetSize { file: self.inner.id, size }).await.and_then(expect_done);
            if let Err(e) = r {
                self.inner.size_dirty.store(true, Ordering::Release);
                return Err(e.context(format!("recording the size of {}", self.inner.path)));
            }
        }
        Ok(())
    }

    /// Sets the file size to `size` bytes: chunks past it are cut on every storage target
    /// (durably), then the size is recorded on pfs-meta. Growing leaves a hole (zeros).
    pub async fn truncate(&self, size: u64) -> Result<()> {
        let chunk_size = self.inner.layout.chunk_size();
        let mut pending: FuturesUnordered<_> = self
            .inner
            .layout
            .targets
            .iter()
            .map(|&t| async move {
                let req = StorageRequest::Truncate { file: self.inner.id, size, chunk_size };
                self.inner
                    .client
                    .storage(t, &req, &[])
                    .await
                    .map_err(|e| e.context(format!("truncating {} on {t}", self.inner.path)))
            })
            .collect();
        while let Some(r) = pending.next().await {
            r?;
        }
        let req = MetaRequest::Truncate { file: self.inner.id, size, expected_generation: None };
        expect_attr_or_done(self.inner.client.meta(req).await?)?;
        self.inner.size.store(size, Ordering::Release);
        self.inner.size_dirty.store(false, Ordering::Release);
        Ok(())
    }

    /// Fresh attributes from pfs-meta; also refreshes the size this handle reads against
    /// (never below the end of our own unsynced writes).
    pub async fn stat(&self) -> Result<Attr> {
        let attr = expect_attr(self.inner.client.meta(MetaRequest::Stat { file: self.inner.id }).await?)?;
        self.inner.size.fetch_max(attr.size, Ordering::AcqRel);
        Ok(attr)
    }

    /// [`File::fsync`], then the handle is gone. Errors as fsync; on error nothing is lost
    /// that was not already lost, but the caller must not assume the data is durable.
    pub async fn close(self) -> Result<()> {
        self.fsync().await
    }
}

fn expect_attr_or_done(r: pfs_common::wire::meta::MetaResponse) -> Result<()> {
    match r {
        pfs_common::wire::meta::MetaResponse::Attr(_) => Ok(()),
        other => expect_done(other),
    }
}

#[allow(dead_code)]
fn _assert_send(f: &File) {
    fn is_send<T: Send>(_: T) {}
    is_send(f.write_at(0, &[]));
    is_send(f.fsync());
}
