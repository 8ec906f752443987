//! The request handler: maps each call of the chunk data service onto the [`ChunkStore`] and
//! answers it with its reply type. Writes pass the chain check and the [`crate::fence`] first,
//! then are written here and forwarded to the chain's next replica at the same time; reads
//! pass the chain check (serving replicas only).

use crate::replication::Replication;
use crate::scrub::Scrubber;
use crate::store::ChunkStore;
use crate::{Result, StorageError};
use pfs_common::pool::{self, PooledBuf};
use pfs_common::rpc::{Handler, Peer, Reply};
use pfs_common::wire::storage::{self as st, ReadReply, StorageRequest, SyncData, Written};
use pfs_common::wire::PeerRole;
use std::sync::Arc;

/// Serves [`StorageRequest`]s from clients and other storage servers against one chunk store.
pub struct StorageHandler {
    store: Arc<ChunkStore>,
    repl: Arc<Replication>,
    scrubber: Arc<Scrubber>,
}

impl StorageHandler {
    /// A handler for `store`, in the chains `repl` knows, with its scrubber.
    pub fn new(store: Arc<ChunkStore>, repl: Arc<Replication>, scrubber: Arc<Scrubber>) -> Self {
        StorageHandler { store, repl, scrubber }
    }

    /// Writes here and at the chain's next replica (if any) at once; answers when both did.
    async fn write(&self, c: st::WriteChunk, payload: PooledBuf) -> Result<Written> {
        let store = &self.store;
        let (next, syncing) = self.repl.check_write(c.chain)?;
        let _admitted = store.fence.admit(c.session).await?;
        if syncing {
            // A chunk this replica lost is being refilled by its resync: new writes land on it
            // meanwhile (it serves no reads until the resync copied every differing chunk).
            store.forget_lost(c.file, c.chunk);
        }
        let _forwarding = self.repl.write_guard(c.file, c.chunk).await;
        let Some(next) = next else {
            // The tail (or a chain of one): no copy of the payload.
            let written = store.write(c.file, c.chunk, c.offset, c.chunk_size, c.block_size, payload).await?;
            return Ok(Written { len: written, boots: vec![(store.id(), store.boot)] });
        };
        let forward = async {
            let fail =
                |source: StorageError| StorageError::Forward { server: store.id(), next, source: Box::new(source) };
            let peer = self.repl.peer(next).await.map_err(fail)?;
            let (w, _) = peer.call(c.clone(), &payload).await.map_err(|e| fail(e.into()))?;
            Ok::<_, StorageError>(w.boots)
        };
        let local = async {
            // The payload stays with the forward while the engine owns the copy it writes.
            let mut data = pool::global().get(payload.len());
            data.copy_from_slice(&payload);
            store.write(c.file, c.chunk, c.offset, c.chunk_size, c.block_size, data).await
        };
        let (written, forwarded) = tokio::join!(local, forward);
        let written = written?;
        let mut boots = vec![(store.id(), store.boot)];
        boots.extend(forwarded?);
        Ok(Written { len: written, boots })
    }

    /// A whole chunk for another replica, with no write of it in flight.
    async fn sync_read(&self, peer: &Peer, c: st::SyncRead) -> Result<(SyncData, PooledBuf)> {
        let store = &self.store;
        if peer.role != PeerRole::Storage {
            return Err(StorageError::Invalid {
                server: store.id(),
                what: format!("{} at {} is not a storage server and may not copy chunks", peer.name, peer.addr),
            });
        }
        let _no_writes = self.repl.copy_guard(c.file, c.chunk).await;
        let Some((len, _)) = store.chunk_info(c.file, c.chunk) else {
            return Ok((SyncData { block_size: 0, exists: false }, PooledBuf::empty()));
        };
        let block_size = store.checksum_block(c.file, c.chunk)?;
        let (data, _) = store.read(c.file, c.chunk, 0, len as u32).await?;
        Ok((SyncData { block_size, exists: true }, data))
    }
}

impl Handler for StorageHandler {
    type Request = StorageRequest;

    async fn handle(self: Arc<Self>, peer: Peer, req: StorageRequest, payload: PooledBuf) -> Reply {
        let store = &self.store;
        match req {
            StorageRequest::Write(c) => Reply::to::<st::WriteChunk, _>(self.write(c, payload).await),
            StorageRequest::Read(c) => {
                let read = async {
                    self.repl.check_read(c.chain)?;
                    store.read(c.file, c.chunk, c.offset, c.len).await
                };
                match read.await {
                    Ok((data, chunk_len)) => {
                        Reply::to::<st::ReadChunk, StorageError>(Ok(ReadReply { chunk_len })).with_payload(data)
                    }
                    Err(e) => Reply::error(&e),
                }
            }
            StorageRequest::Truncate(c) => {
                Reply::to::<st::TruncateFile, _>(store.truncate(c.file, c.size, c.chunk_size).await)
            }
            StorageRequest::Remove(c) => Reply::to::<st::RemoveFile, _>(store.remove(c.file).await),
            StorageRequest::Fsync(c) if c.boot != store.boot => {
                Reply::error(&StorageError::Restarted { server: store.id(), file: c.file })
            }
            StorageRequest::Fsync(c) => Reply::to::<st::FsyncFile, _>(store.fsync(c.file).await),
            StorageRequest::Status(_) => Reply::to::<st::GetStatus, _>(store.status()),
            StorageRequest::List(c) => Reply::to::<st::ListChunks, _>(store.list(c.after, c.limit, c.verify).await),
            StorageRequest::RemoveChunk(c) => {
                Reply::to::<st::RemoveChunk, _>(store.remove_chunks(c.file, &[c.chunk]).await)
            }
            StorageRequest::Scrub(c) => {
                let status = if c.start { self.scrubber.start() } else { self.scrubber.status() };
                Reply::to::<st::Scrub, StorageError>(Ok(status))
            }
            StorageRequest::Repair(c) => Reply::to::<st::RepairChunk, _>(
                crate::resync::repair(store, &self.repl, c.file, c.chunk).await.map(drop),
            ),
            StorageRequest::SyncRead(c) => match self.sync_read(&peer, c).await {
                Ok((answer, data)) => Reply::to::<st::SyncRead, StorageError>(Ok(answer)).with_payload(data),
                Err(e) => Reply::error(&e),
            },
        }
    }
}
