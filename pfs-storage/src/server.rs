//! The request handler: maps each call of the chunk data service onto the [`ChunkStore`] and
//! answers it with its reply type. Writes pass the chain check and the [`crate::fence`] first,
//! then are written here and forwarded to the chain's next replica at the same time; reads
//! pass the chain check (serving replicas only).

use crate::engine::Extents;
use crate::replication::Replication;
use crate::scrub::Scrubber;
use crate::store::ChunkStore;
use crate::{Result, StorageError};
use pfs_common::auth::Key;
use pfs_common::capability::{self, unix_ms, Access, Capability};
use pfs_common::pool::{self, PooledBuf};
use pfs_common::rpc::{Handler, Peer, Reply};
use pfs_common::token::{ByteRange, Mode, SessionId};
use pfs_common::wire::storage::{self as st, ReadReply, StorageRequest, SyncData, Written};
use pfs_common::wire::PeerRole;
use pfs_common::FileId;
use std::sync::Arc;
use tracing::warn;

/// Serves [`StorageRequest`]s from clients and other storage servers against one chunk store.
pub struct StorageHandler {
    store: Arc<ChunkStore>,
    repl: Arc<Replication>,
    scrubber: Arc<Scrubber>,
    /// Checks clients' capabilities (`None` with `auth = "none"`: nothing is checked).
    capability_key: Option<Key>,
}

impl StorageHandler {
    /// A handler for `store`, in the chains `repl` knows, with its scrubber.
    pub fn new(store: Arc<ChunkStore>, repl: Arc<Replication>, scrubber: Arc<Scrubber>) -> Self {
        let capability_key = repl.auth().capability_key();
        StorageHandler { store, repl, scrubber, capability_key }
    }

    /// Errors (Denied) unless a client's `caps` allow `access`. Storage servers (forwarding
    /// writes down a chain) need none: they authenticated with the storage role key.
    fn authorize(&self, peer: &Peer, caps: &[Capability], access: Access) -> Result<()> {
        self.authorize_each(peer, caps, access, [access.range])
    }

    /// [`StorageHandler::authorize`] for a request touching `ranges` of the file.
    fn authorize_each(
        &self,
        peer: &Peer,
        caps: &[Capability],
        access: Access,
        ranges: impl IntoIterator<Item = ByteRange>,
    ) -> Result<()> {
        let Some(key) = &self.capability_key else { return Ok(()) };
        if peer.role == PeerRole::Storage {
            return Ok(());
        }
        capability::check_each(key, caps, &access, ranges, unix_ms()).map_err(|why| {
            warn!(
                "{}: refused a {:?} of {} from {} ({}): {why}",
                self.store.id(),
                access.mode,
                access.file,
                peer.name,
                peer.addr
            );
            StorageError::Capability { server: self.store.id(), why }
        })
    }

    /// The file bytes a chunk request touches (`len` bytes at `offset` in chunk `chunk`), as
    /// an [`Access`] of `session` in `mode`.
    fn chunk_access(
        &self,
        (file, chunk, chunk_size): (FileId, u64, u64),
        (offset, len): (u64, u64),
        session: SessionId,
        mode: Mode,
    ) -> Result<Access> {
        let range = Access::chunk_bytes(chunk, chunk_size, offset, len).ok_or_else(|| StorageError::Invalid {
            server: self.store.id(),
            what: format!(
                "chunk {chunk} of {file} at offset {offset}: chunk size {chunk_size} places it past any file"
            ),
        })?;
        Ok(Access { file, session, chunk_size, range, mode })
    }

    /// Writes here and at the chain's next replica (if any) at once; answers when both did.
    async fn write(&self, peer: &Peer, c: st::WriteChunk, payload: PooledBuf) -> Result<Written> {
        let store = &self.store;
        c.check_extents(payload.len()).map_err(|why| StorageError::Extents {
            server: store.id(),
            file: c.file,
            chunk: c.chunk,
            why,
        })?;
        self.authorize_extents(peer, &c)?;
        let (next, syncing) = self.repl.check_write(c.chain)?;
        let _admitted = store.fence().admit(c.session).await?;
        if syncing {
            // A chunk this replica lost is being refilled by its resync: new writes land on it
            // meanwhile (it serves no reads until the resync copied every differing chunk).
            store.forget_lost(c.file, c.chunk);
        }
        // One lock for the whole chain write: its data part while it is written here, its
        // chain part until the successor answered too (a copy for another replica waits).
        let mut lock = store.lock_write(c.file, c.chunk).await;
        let extents: Extents = c.extents.iter().copied().collect();
        let Some(next) = next else {
            // The tail (or a chain of one): no copy of the payload.
            let written = store.write_locked(&mut lock, extents, c.chunk_size, c.block_size, payload).await?;
            return Ok(Written { len: written, boots: vec![(store.id(), store.boot())] });
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
            store.write_locked(&mut lock, extents, c.chunk_size, c.block_size, data).await
        };
        let (written, forwarded) = tokio::join!(local, forward);
        drop(lock);
        let written = written?;
        let mut boots = vec![(store.id(), store.boot())];
        boots.extend(forwarded?);
        Ok(Written { len: written, boots })
    }

    /// Errors (Denied) unless the write's capabilities allow every one of its extents.
    fn authorize_extents(&self, peer: &Peer, c: &st::WriteChunk) -> Result<()> {
        if self.capability_key.is_none() || peer.role == PeerRole::Storage {
            return Ok(());
        }
        let mut ranges = Vec::with_capacity(c.extents.len());
        let mut access = None;
        for e in &c.extents {
            let a =
                self.chunk_access((c.file, c.chunk, c.chunk_size), (e.offset, e.len.into()), c.session, Mode::Write)?;
            ranges.push(a.range);
            access.get_or_insert(a);
        }
        let Some(access) = access else { return Ok(()) };
        self.authorize_each(peer, &c.capabilities, access, ranges)
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
        match store.copy_out(c.file, c.chunk).await? {
            Some((block_size, data)) => Ok((SyncData { block_size, exists: true }, data)),
            None => {
                // The copier removes its own copy of a chunk we do not have: only if it is a
                // hole, never one we lost. (No lock is held across the round trip to pfs-meta.)
                store.check_hole(c.file, c.chunk).await?;
                Ok((SyncData { block_size: 0, exists: false }, PooledBuf::empty()))
            }
        }
    }
}

impl Handler for StorageHandler {
    type Request = StorageRequest;

    async fn handle(self: Arc<Self>, peer: Peer, req: StorageRequest, payload: PooledBuf) -> Reply {
        let store = &self.store;
        match req {
            StorageRequest::Write(c) => Reply::to::<st::WriteChunk, _>(self.write(&peer, c, payload).await),
            StorageRequest::Read(c) => {
                let read = async {
                    let piece = (c.offset, c.len.into());
                    let access = self.chunk_access((c.file, c.chunk, c.chunk_size), piece, c.session, Mode::Read)?;
                    self.authorize(&peer, &c.capabilities, access)?;
                    self.repl.check_read(c.chain)?;
                    let read = store.read(c.file, c.chunk, c.offset, c.len).await?;
                    if read.0.is_empty() && store.chunk_info(c.file, c.chunk).is_none() {
                        // A chunk this server does not have reads as a hole only if it is one.
                        store.check_hole(c.file, c.chunk).await?;
                    }
                    Ok::<_, StorageError>(read)
                };
                match read.await {
                    Ok((data, chunk_len)) => {
                        Reply::to::<st::ReadChunk, StorageError>(Ok(ReadReply { chunk_len })).with_payload(data)
                    }
                    Err(e) => Reply::error(&e),
                }
            }
            StorageRequest::Truncate(c) => {
                let access = Access {
                    file: c.file,
                    session: c.session,
                    chunk_size: c.chunk_size,
                    range: Access::from_size(c.size),
                    mode: Mode::Write,
                };
                let truncate = async {
                    self.authorize(&peer, &c.capabilities, access)?;
                    store.truncate(c.file, c.size, c.chunk_size).await
                };
                Reply::to::<st::TruncateFile, _>(truncate.await)
            }
            // Chunks are removed on pfs-meta's word only; no client removes them, whatever it
            // holds.
            StorageRequest::Remove(_) | StorageRequest::RemoveChunk(_) if peer.role != PeerRole::Meta => {
                Reply::error(&StorageError::Denied {
                    server: store.id(),
                    what: format!("{} at {} is not pfs-meta; only pfs-meta removes chunks", peer.name, peer.addr),
                })
            }
            StorageRequest::Remove(c) => Reply::to::<st::RemoveFile, _>(store.remove(c.file).await),
            StorageRequest::Fsync(c) if c.boot != store.boot() => {
                Reply::error(&StorageError::Restarted { server: store.id(), file: c.file })
            }
            StorageRequest::Fsync(c) => Reply::to::<st::FsyncFile, _>(store.fsync(c.file).await),
            StorageRequest::Status(_) => Reply::to::<st::GetStatus, _>(store.status()),
            StorageRequest::List(c) => Reply::to::<st::ListChunks, _>(store.list(c.after, c.limit, c.verify).await),
            StorageRequest::RemoveChunk(c) => Reply::to::<st::RemoveChunk, _>(match c.listed {
                Some(listed) => store.remove_chunk_if(c.file, c.chunk, listed).await,
                None => store.remove_chunks(c.file, &[c.chunk]).await,
            }),
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
