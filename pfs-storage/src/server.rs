//! The client-facing request handler: maps each call of the chunk data service onto the
//! [`ChunkStore`] and answers it with its reply type. Writes pass the [`crate::fence`] first.

use crate::store::ChunkStore;
use pfs_common::pool::PooledBuf;
use pfs_common::rpc::{Handler, Peer, Reply};
use pfs_common::wire::storage::{self as st, ReadReply, StorageRequest, Written};
use std::sync::Arc;

/// Serves [`StorageRequest`]s from clients against one chunk store.
pub struct StorageHandler {
    store: Arc<ChunkStore>,
}

impl StorageHandler {
    /// A handler for `store`.
    pub fn new(store: Arc<ChunkStore>) -> Self {
        StorageHandler { store }
    }
}

impl Handler for StorageHandler {
    type Request = StorageRequest;

    async fn handle(self: Arc<Self>, _peer: Peer, req: StorageRequest, payload: PooledBuf) -> Reply {
        let store = &self.store;
        match req {
            StorageRequest::Write(c) => {
                let r = async {
                    let _admitted = store.fence.admit(c.session).await?;
                    store.write(c.file, c.chunk, c.offset, c.chunk_size, c.block_size, payload).await
                }
                .await;
                Reply::to::<st::WriteChunk, _>(r.map(|len| Written { len, boot: store.boot }))
            }
            StorageRequest::Read(c) => match store.read(c.file, c.chunk, c.offset, c.len).await {
                Ok((data, chunk_len)) => {
                    Reply::to::<st::ReadChunk, crate::StorageError>(Ok(ReadReply { chunk_len })).with_payload(data)
                }
                Err(e) => Reply::error(&e),
            },
            StorageRequest::Truncate(c) => {
                Reply::to::<st::TruncateFile, _>(store.truncate(c.file, c.size, c.chunk_size).await)
            }
            StorageRequest::Remove(c) => Reply::to::<st::RemoveFile, _>(store.remove(c.file).await),
            StorageRequest::Fsync(c) if c.boot != store.boot => {
                Reply::error(&crate::StorageError::Restarted { server: store.id(), file: c.file })
            }
            StorageRequest::Fsync(c) => Reply::to::<st::FsyncFile, _>(store.fsync(c.file).await),
            StorageRequest::Status(_) => Reply::to::<st::GetStatus, _>(store.status()),
            StorageRequest::List(c) => Reply::to::<st::ListChunks, _>(store.list(c.after, c.limit, c.verify).await),
            StorageRequest::RemoveChunk(c) => {
                Reply::to::<st::RemoveChunk, _>(store.remove_chunks(c.file, &[c.chunk]).await)
            }
        }
    }
}
