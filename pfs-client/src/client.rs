//! [`Client`]: connections to pfs-meta and the storage servers, and the namespace operations.

use crate::file::File;
use pfs_common::config::Config;
use pfs_common::error::{ErrorCode, PfsError, Result};
use pfs_common::ids::{ChunkIndex, FileId, ServerId};
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::wire::meta::{
    Attr, ChunkInfo, DirEntry, LayoutRequest, MetaRequest, MetaResponse, ServerStatus, READDIR_PAGE_MAX,
};
use pfs_common::wire::storage::{StorageRequest, StorageResponse, StorageStatus};
use pfs_common::wire::Role;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Layout choices for a new file; `None` inherits the parent directory's (or cluster's) default.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateOptions {
    /// Storage targets to stripe over (clamped to the servers that are up).
    pub stripe_count: Option<u32>,
    /// Chunk size in bytes; must be a multiple of the block size (`block_size × stripe_blocks`).
    pub chunk_size: Option<u64>,
    /// Block size in bytes (power of two, at least 512).
    pub block_size: Option<u32>,
    /// Fail with Exists if the file exists (otherwise it is opened and truncated to 0).
    pub exclusive: bool,
}

/// A connection to a pfs cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Arc<Config>,
    opts: ConnectOptions,
    meta: tokio::sync::Mutex<Option<RpcClient>>,
    storage: parking_lot::Mutex<HashMap<ServerId, RpcClient>>,
    /// Serialises connection set-up per storage server so a burst of requests opens one socket.
    storage_connecting: tokio::sync::Mutex<()>,
    addresses: parking_lot::Mutex<HashMap<ServerId, SocketAddr>>,
    /// Payload bytes in flight to storage servers (DESIGN.md §7: bounded bytes in flight).
    pub(crate) inflight: Arc<Semaphore>,
    pub(crate) inflight_max: u32,
}

impl Client {
    /// Connects to the cluster's pfs-meta. Storage servers are connected on first use, at the
    /// addresses they registered with pfs-meta (falling back to the configuration).
    ///
    /// Errors: Unavailable or TimedOut naming pfs-meta's address.
    pub async fn connect(config: Arc<Config>) -> Result<Client> {
        let opts = ConnectOptions {
            role: Role::Client,
            name: format!("{} {}", process_name(), std::process::id()),
            connect_timeout: Duration::from_millis(config.timeouts.connect_ms),
            request_timeout: Duration::from_millis(config.timeouts.request_ms),
        };
        let addresses = config.storage.iter().map(|s| (s.id, s.address)).collect();
        let inflight_max = config.client.max_inflight_bytes.clamp(1 << 20, u32::MAX as u64 >> 1) as u32;
        let client = Client {
            inner: Arc::new(Inner {
                opts,
                meta: tokio::sync::Mutex::new(None),
                storage: parking_lot::Mutex::new(HashMap::new()),
                storage_connecting: tokio::sync::Mutex::new(()),
                addresses: parking_lot::Mutex::new(addresses),
                inflight: Arc::new(Semaphore::new(inflight_max as usize)),
                inflight_max,
                config,
            }),
        };
        client.meta_conn().await?;
        Ok(client)
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    async fn meta_conn(&self) -> Result<RpcClient> {
        let mut slot = self.inner.meta.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = RpcClient::connect(self.inner.config.meta.address, "pfs-meta", &self.inner.opts, None).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Sends one request to pfs-meta.
    pub(crate) async fn meta(&self, req: MetaRequest) -> Result<MetaResponse> {
        let conn = self.meta_conn().await?;
        Ok(conn.call::<_, MetaResponse>(&req, &[]).await?.0)
    }

    /// The connection to storage server `id`, opened if needed.
    pub(crate) async fn storage_conn(&self, id: ServerId) -> Result<RpcClient> {
        if let Some(c) = self.inner.storage.lock().get(&id).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let _one_at_a_time = self.inner.storage_connecting.lock().await;
        if let Some(c) = self.inner.storage.lock().get(&id).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let known = self.inner.addresses.lock().get(&id).copied();
        let addr = match known {
            Some(a) => a,
            None => {
                self.refresh_addresses().await?;
                self.inner.addresses.lock().get(&id).copied().ok_or_else(|| {
                    PfsError::new(ErrorCode::NotFound, format!("{id} is neither registered nor configured"))
                })?
            }
        };
        let c = RpcClient::connect(addr, &id.to_string(), &self.inner.opts, None).await?;
        self.inner.storage.lock().insert(id, c.clone());
        Ok(c)
    }

    async fn refresh_addresses(&self) -> Result<()> {
        let servers = self.servers().await?;
        let mut a = self.inner.addresses.lock();
        for s in servers {
            a.insert(s.id, s.address);
        }
        Ok(())
    }

    /// Sends one request (with payload) to storage server `id`.
    pub(crate) async fn storage(
        &self,
        id: ServerId,
        req: &StorageRequest,
        payload: &[u8],
    ) -> Result<(StorageResponse, pfs_common::pool::PooledBuf)> {
        let conn = self.storage_conn(id).await?;
        conn.call(req, payload).await
    }

    // --- namespace --------------------------------------------------------------------

    /// Makes a directory. Errors: Exists, NotFound (parent), NotDir.
    pub async fn mkdir(&self, path: &str) -> Result<()> {
        expect_done(self.meta(MetaRequest::Mkdir { path: path.to_string() }).await?)
    }

    /// Makes a directory and any missing parents; an existing directory is fine.
    pub async fn mkdir_all(&self, path: &str) -> Result<()> {
        let norm = crate::path::normalize(path);
        let mut cur = String::new();
        for part in norm.split('/').filter(|p| !p.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            match self.mkdir(&cur).await {
                Ok(()) => {}
                Err(e) if e.code == ErrorCode::Exists => {
                    let a = self.stat(&cur).await?;
                    if a.kind != pfs_common::wire::meta::FileKind::Dir {
                        return Err(PfsError::new(ErrorCode::NotDir, format!("{cur} exists and is not a directory")));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates a file (or, unless `exclusive`, opens an existing one and truncates it to 0)
    /// and returns it open for reading and writing.
    ///
    /// Errors: Exists (exclusive), NotFound (parent), IsDir, Invalid (layout), Unavailable
    /// (no storage server up).
    pub async fn create(&self, path: &str, opts: &CreateOptions) -> Result<File> {
        let layout = layout_request(opts, &self.inner.config)?;
        let attr = expect_attr(
            self.meta(MetaRequest::Create { path: path.to_string(), layout, exclusive: opts.exclusive }).await?,
        )?;
        let file = File::new(self.clone(), path.to_string(), attr)?;
        if file.size() > 0 {
            file.truncate(0).await?;
        }
        Ok(file)
    }

    /// Opens an existing file. Errors: NotFound, IsDir.
    pub async fn open(&self, path: &str) -> Result<File> {
        let attr = self.stat(path).await?;
        File::new(self.clone(), path.to_string(), attr)
    }

    /// Attributes of `path`. Errors: NotFound, NotDir.
    pub async fn stat(&self, path: &str) -> Result<Attr> {
        expect_attr(self.meta(MetaRequest::Lookup { path: path.to_string() }).await?)
    }

    /// Attributes of a file by id. Errors: NotFound.
    pub async fn stat_id(&self, file: FileId) -> Result<Attr> {
        expect_attr(self.meta(MetaRequest::Stat { file }).await?)
    }

    /// Every entry of directory `path`, in name order (fetched in pages).
    pub async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let req = MetaRequest::Readdir { path: path.to_string(), after: after.clone(), limit: READDIR_PAGE_MAX };
            match self.meta(req).await? {
                MetaResponse::Entries { entries, more } => {
                    after = entries.last().map(|e| e.name.clone());
                    all.extend(entries);
                    if !more || after.is_none() {
                        return Ok(all);
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Renames `from` to `to` (replacing a file at `to`). Metadata only: chunk files are
    /// named by file id, so no data moves.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        expect_done(
            self.meta(MetaRequest::Rename { from: from.to_string(), to: to.to_string(), expected_generation: None })
                .await?,
        )
    }

    /// Removes a file; pfs-meta tells its storage servers to delete the chunks.
    pub async fn unlink(&self, path: &str) -> Result<()> {
        expect_done(self.meta(MetaRequest::Unlink { path: path.to_string(), expected_generation: None }).await?)
    }

    /// Removes an empty directory. Errors: NotEmpty, NotDir, NotFound.
    pub async fn rmdir(&self, path: &str) -> Result<()> {
        expect_done(self.meta(MetaRequest::Rmdir { path: path.to_string(), expected_generation: None }).await?)
    }

    /// Holders, lengths and SHA-256 of every chunk of `file` that pfs-meta knows of, for
    /// chunk indexes `0 .. chunk_count`.
    pub async fn chunks(&self, file: FileId, chunk_count: u64) -> Result<Vec<ChunkInfo>> {
        let mut out = Vec::new();
        let mut first: ChunkIndex = 0;
        while first < chunk_count {
            let count = (chunk_count - first).min(pfs_common::wire::meta::GET_CHUNKS_MAX as u64) as u32;
            match self.meta(MetaRequest::GetChunks { file, first, count }).await? {
                MetaResponse::Chunks(c) => out.extend(c),
                other => return Err(unexpected(&other)),
            }
            first += count as u64;
        }
        Ok(out)
    }

    /// The storage-server registry as pfs-meta sees it.
    pub async fn servers(&self) -> Result<Vec<ServerStatus>> {
        match self.meta(MetaRequest::ListServers).await? {
            MetaResponse::Servers(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Capacity and usage reported by storage server `id` itself.
    pub async fn storage_status(&self, id: ServerId) -> Result<StorageStatus> {
        match self.storage(id, &StorageRequest::Status, &[]).await?.0 {
            StorageResponse::Status(s) => Ok(s),
            other => Err(PfsError::new(ErrorCode::Protocol, format!("{id} answered Status with {other:?}"))),
        }
    }
}

fn layout_request(opts: &CreateOptions, config: &Config) -> Result<LayoutRequest> {
    let block_size = opts.block_size;
    let stripe_blocks = match opts.chunk_size {
        None => None,
        Some(cs) => {
            let bs = block_size.unwrap_or(config.layout.block_size) as u64;
            if cs == 0 || cs % bs != 0 {
                return Err(PfsError::new(
                    ErrorCode::Invalid,
                    format!("chunk size {cs} is not a positive multiple of the block size {bs}"),
                ));
            }
            Some(u32::try_from(cs / bs).map_err(|_| PfsError::new(ErrorCode::Invalid, format!("chunk size {cs}")))?)
        }
    };
    Ok(LayoutRequest { block_size, stripe_blocks, stripe_count: opts.stripe_count })
}

fn process_name() -> String {
    std::env::args()
        .next()
        .as_deref()
        .map(crate::path::file_name)
        .map(str::to_string)
        .unwrap_or_else(|| "pfs-client".to_string())
}

pub(crate) fn unexpected(r: &MetaResponse) -> PfsError {
    PfsError::new(ErrorCode::Protocol, format!("pfs-meta sent an unexpected answer: {r:?}"))
}

pub(crate) fn expect_done(r: MetaResponse) -> Result<()> {
    match r {
        MetaResponse::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn expect_attr(r: MetaResponse) -> Result<Attr> {
    match r {
        MetaResponse::Attr(a) => Ok(a),
        other => Err(unexpected(&other)),
    }
}
