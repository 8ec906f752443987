//! The client-facing request handler: decodes nothing itself (the RPC layer does), maps each
//! [`StorageRequest`] onto the [`Store`] and shapes the answer.

use crate::store::Store;
use pfs_common::pool::PooledBuf;
use pfs_common::rpc::{Handler, Peer, Reply};
use pfs_common::wire::storage::{StorageRequest, StorageResponse};
use std::sync::Arc;

/// Serves [`StorageRequest`]s from clients against one store.
pub struct StorageHandler {
    store: Arc<Store>,
}

impl StorageHandler {
    /// A handler for `store`.
    pub fn new(store: Arc<Store>) -> Self {
        StorageHandler { store }
    }
}

impl Handler for StorageHandler {
    type Request = StorageRequest;

    async fn handle(self: Arc<Self>, _peer: Peer, req: StorageRequest, payload: PooledBuf) -> Reply {
        let store = &self.store;
        match req {
            StorageRequest::Write { file, chunk, offset, chunk_size, session } => {
                let admitted = match store.fence.admit(session).await {
                    Ok(guard) => guard,
                    Err(e) => {
                        return Reply::error(e.context(format!("{}: write to chunk {chunk} of file {file}", store.id)))
                    }
                };
                let r = store.write(file, chunk, offset, chunk_size, payload).await;
                drop(admitted);
                Reply::from_result(r.map(|len| StorageResponse::Written { len }))
            }
            StorageRequest::Read { file, chunk, offset, len } => match store.read(file, chunk, offset, len).await {
                Ok((data, chunk_len)) => Reply::from_result(Ok(StorageResponse::Read { chunk_len })).with_payload(data),
                Err(e) => Reply::error(e),
            },
            StorageRequest::Truncate { file, size, chunk_size } => {
                Reply::from_result(store.truncate(file, size, chunk_size).await.map(|()| StorageResponse::Done))
            }
            StorageRequest::Remove { file } => {
                Reply::from_result(store.remove(file).await.map(|()| StorageResponse::Done))
            }
            StorageRequest::Fsync { file } => {
                Reply::from_result(store.fsync(file).await.map(|()| StorageResponse::Done))
            }
            StorageRequest::Status => Reply::from_result(store.status().map(StorageResponse::Status)),
        }
    }
}
