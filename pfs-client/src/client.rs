//! [`Client`]: a session with a pfs cluster and the namespace operations. Files are opened
//! here ([`Client::open`], [`Client::create`]) and read and written through [`File`].

use crate::cache::CacheStats;
use crate::error::{Error, Result};
use crate::file::{File, OpenFile};
use crate::options::ClientOptions;
use crate::session::{RevokeEvent, Session};
use pfs_common::chain::{Chain, ChainId};
use pfs_common::ids::{ChunkIndex, FileId, ServerId};
use pfs_common::layout::LayoutChoice;
use pfs_common::rpc::ConnectOptions;
use pfs_common::token::{ByteRange, Mode, SessionId};
use pfs_common::wire::namespace::{self as ns, Attr, DirEntry, FileKind, NewAttrs, Target, READDIR_PAGE_MAX};
use pfs_common::wire::registry::{
    ChunkInfo, GetChunks, GetHealth, Health, OrphanCopy, RemoveOrphan, ServerStatus, GET_CHUNKS_MAX,
};
use pfs_common::wire::storage::{ChunkPage, GetStatus, ListChunks, RepairChunk, Scrub, ScrubStatus, StorageStatus};
use pfs_common::wire::tokens as tok;
use pfs_common::wire::PeerRole;
use pfs_common::ErrorCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Layout choices for a new file; `None` inherits the parent directory's (or cluster's) default.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateOptions {
    /// Storage targets to stripe over (clamped to the servers that are up).
    pub stripe_count: Option<u32>,
    /// Chunk size in bytes; must be a multiple of the block size (`block_size × stripe_blocks`).
    pub chunk_size: Option<u64>,
    /// Block size in bytes (power of two, at least 512).
    pub block_size: Option<u32>,
    /// Copies of every chunk, each on another storage server (1..=3; `pfs setstripe -r`).
    /// Fixed at create; as many storage servers must be up.
    pub replicas: Option<u8>,
    /// Fail with Exists if the file exists (otherwise it is opened and truncated to 0).
    pub exclusive: bool,
    /// Owner and mode of the new file; unset: [`NewAttrs::for_process`].
    pub attrs: Option<NewAttrs>,
}

/// A connection to a pfs cluster. Cheap to clone; clones share connections. The session ends
/// when the last clone, and the last [`File`] opened through it, is dropped (or at
/// [`Client::close`]).
#[derive(Clone)]
pub struct Client {
    session: Arc<Session>,
}

/// Counters of one client: the block cache (like the seed's `pfs_execstat`) and token traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Block cache counters summed over every file this client opened (counts are blocks).
    pub cache: CacheStats,
    /// Acquire round trips to the token manager.
    pub token_acquires: u64,
    /// Revokes this client handled.
    pub revokes: u64,
    /// Revokes received and not handled yet (their write-back under way or waiting for I/O
    /// in flight on the file).
    pub revokes_pending: u64,
    /// Connections opened to storage servers: one per server used, plus one each time a
    /// connection was found closed (a server closes idle ones, `timeouts.idle_ms`) and opened
    /// again.
    pub storage_connects: u64,
    /// Chunk reads another replica answered after one failed (down, corrupt, lost).
    pub failovers: u64,
    /// Files this client has open: a handle open, or its last close still flushing.
    pub open_files: u64,
    /// Releases of tokens sent to pfs-meta and not answered yet (a last close or a give-back
    /// of a file; acquires over their bytes wait for them).
    pub releases_pending: u64,
    /// Chains fetched from pfs-meta (the first use of each, and after a Stale answer that
    /// carried no newer chain, or a replica failed).
    pub chain_fetches: u64,
    /// Requests sent again on the newer chain a storage server's Stale answer carried,
    /// without asking pfs-meta.
    pub chains_told: u64,
}

impl Client {
    /// Connects to pfs-meta (the first of `options.meta_addresses` that answers) and opens a
    /// session. Storage servers are connected on first use, at the addresses they registered
    /// with pfs-meta.
    ///
    /// Errors: Unavailable or TimedOut naming every pfs-meta address tried.
    pub async fn connect(options: ClientOptions) -> Result<Client> {
        Ok(Client { session: Session::open(options).await? })
    }

    /// This client's session id (the holder of its tokens).
    ///
    /// Errors: Evicted, with the reason, once the session lost its lease or its connection.
    pub fn session(&self) -> Result<SessionId> {
        self.session.id()
    }

    /// Registers `f` to be called for every revoke this client handles, after the revoked
    /// range was written back (Write held) and dropped or downgraded, before the revoke is
    /// acknowledged. It runs on a tokio worker thread; keep it short and do not block.
    pub fn on_revoke(&self, f: impl Fn(&RevokeEvent) + Send + Sync + 'static) {
        self.session.set_on_revoke(Arc::new(f));
    }

    /// Cache counters (all files, open and closed) and token traffic of this client.
    pub fn stats(&self) -> ClientStats {
        let c = &self.session.counters;
        let received = c.revokes_received.load(Ordering::Relaxed);
        let revokes = c.revokes.load(Ordering::Relaxed);
        ClientStats {
            cache: self.session.cache_stats(),
            token_acquires: c.acquires.load(Ordering::Relaxed),
            revokes,
            revokes_pending: received.saturating_sub(revokes),
            storage_connects: self.session.storage_connects(),
            failovers: c.failovers.load(Ordering::Relaxed),
            open_files: self.session.open_files() as u64,
            releases_pending: self.session.releases_pending() as u64,
            chain_fetches: c.chain_fetches.load(Ordering::Relaxed),
            chains_told: c.chains_told.load(Ordering::Relaxed),
        }
    }

    /// Ends the session cleanly (tokens given back). Open files should be closed first: their
    /// dirty cached bytes are not written back here.
    pub async fn close(&self) -> Result<()> {
        let session = self.session()?;
        let r = self.session.meta(tok::CloseSession { session }).await;
        // Deliberate: recorded so later calls say why they fail, but not logged as a warning.
        self.session.end("closed by this client");
        r
    }

    /// Asks the token manager for a token directly, outside any file handle: the raw protocol
    /// for benchmarks and diagnostics (file I/O acquires its tokens itself). Returns the range
    /// granted (⊇ `required`, ⊆ `desired`).
    ///
    /// Errors: Evicted, Invalid (empty range, required ⊄ desired), NotFound (file).
    pub async fn acquire_token(
        &self,
        file: FileId,
        mode: Mode,
        required: ByteRange,
        desired: ByteRange,
    ) -> Result<ByteRange> {
        let session = self.session()?;
        let granted = self.session.meta(tok::Acquire { session, file, mode, required, desired, ahead: None }).await?;
        self.session.counters.acquires.fetch_add(1, Ordering::Relaxed);
        Ok(granted.range)
    }

    /// Gives back tokens taken with [`Client::acquire_token`].
    pub async fn release_token(&self, file: FileId, range: ByteRange) -> Result<()> {
        let session = self.session()?;
        self.session.meta(tok::Release { session, file, range }).await
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.session.options
    }

    /// A handle of file `attr` (opened or created as `name`), sharing the file's state with
    /// this client's other handles of it.
    fn file(&self, name: &str, attr: Attr) -> Result<File> {
        let session = self.session.clone();
        let id = attr.id;
        let state = self.session.open_file(id, || OpenFile::new(session, name.to_string(), attr))?;
        Ok(File::new(state))
    }

    // --- namespace --------------------------------------------------------------------

    /// Makes a directory (owned by this process's user, mode `0o755`).
    /// Errors: Exists, NotFound (parent), NotDir.
    pub async fn mkdir(&self, target: impl Into<Target>) -> Result<()> {
        self.mkdir_with(target, NewAttrs::for_process(FileKind::Dir)).await.map(drop)
    }

    /// Makes a directory with this owner and mode (a set-group-ID parent's group wins, as on
    /// Linux). Errors: Exists, NotFound (parent), NotDir, Invalid (mode bits past `0o7777`).
    pub async fn mkdir_with(&self, target: impl Into<Target>, attrs: NewAttrs) -> Result<Attr> {
        let target = target.into();
        self.session.meta_once(|request| ns::Mkdir { target, attrs, request: Some(request) }).await
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
                Err(e) if e.code() == ErrorCode::Exists => {
                    if self.stat(&cur).await?.kind != FileKind::Dir {
                        return Err(Error::NotDir { path: cur });
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
    /// Errors: Exists (exclusive, or something not a file is there), NotFound (parent),
    /// IsDir, Invalid (layout, a replica count outside 1..=3), Unavailable (fewer storage
    /// servers up than replicas).
    pub async fn create(&self, target: impl Into<Target>, opts: &CreateOptions) -> Result<File> {
        self.create_with_attr(target, opts).await.map(|(f, _)| f)
    }

    /// [`Client::create`], also answering the file's attributes as created (one round trip
    /// fewer than a `stat` after it).
    pub async fn create_with_attr(&self, target: impl Into<Target>, opts: &CreateOptions) -> Result<(File, Attr)> {
        let layout = LayoutChoice {
            block_size: opts.block_size,
            chunk_size: opts.chunk_size,
            stripe_count: opts.stripe_count,
            replicas: opts.replicas,
        };
        let session = Some(self.session()?);
        let attrs = opts.attrs.unwrap_or_else(|| NewAttrs::for_process(FileKind::File));
        let target = target.into();
        let name = target.to_string();
        let closed = self.session.carry_closes();
        let attr = self
            .session
            .meta_once(|request| {
                let request = Some(request);
                ns::Create { target, layout, exclusive: opts.exclusive, session, attrs, closed, request }
            })
            .await?;
        let file = self.file(&name, attr.clone())?;
        if file.size() > 0 {
            file.truncate(0).await?;
            return Ok((file.clone(), file.stat().await?));
        }
        Ok((file, attr))
    }

    /// Opens an existing file, by path, directory entry or id (an id only while the file has
    /// a name). Until it is closed (or the session ends), the file's data stays readable and
    /// writable through it even if another client removes or replaces the file, as POSIX
    /// keeps an unlinked open file. Errors: NotFound, NoSuchFile, IsDir (not a regular
    /// file), Evicted.
    pub async fn open(&self, target: impl Into<Target>) -> Result<File> {
        let session = self.session()?;
        let target = target.into();
        let name = target.to_string();
        let attr = self.session.meta(ns::Open { target, session, closed: self.session.carry_closes() }).await?;
        self.file(&name, attr)
    }

    /// Attributes of what `target` names. Errors: NotFound, NoSuchFile, NotDir.
    pub async fn stat(&self, target: impl Into<Target>) -> Result<Attr> {
        self.session.meta(ns::Lookup { target: target.into() }).await
    }

    /// Attributes of a file by id. Errors: NotFound.
    pub async fn stat_id(&self, file: FileId) -> Result<Attr> {
        self.session.meta(ns::Stat { file }).await
    }

    /// Every entry of a directory (by path, entry or id), in name order (fetched in pages).
    pub async fn readdir(&self, dir: impl Into<Target>) -> Result<Vec<DirEntry>> {
        let dir = dir.into();
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let req = ns::Readdir { dir: dir.clone(), after: after.clone(), limit: READDIR_PAGE_MAX };
            let page = self.session.meta(req).await?;
            after = page.entries.last().map(|e| e.name.clone());
            all.extend(page.entries);
            if !page.more || after.is_none() {
                return Ok(all);
            }
        }
    }

    /// Renames `from` to `to`, replacing what `to` names as rename(2) does. Metadata only:
    /// chunk files are named by file id, so no data moves.
    pub async fn rename(&self, from: impl Into<Target>, to: impl Into<Target>) -> Result<()> {
        self.rename_with(from, to, false).await
    }

    /// [`Client::rename`]; with `no_replace`, an existing `to` is Exists (RENAME_NOREPLACE).
    pub async fn rename_with(&self, from: impl Into<Target>, to: impl Into<Target>, no_replace: bool) -> Result<()> {
        let (from, to) = (from.into(), to.into());
        self.session
            .meta_once(|request| ns::Rename { from, to, expected_generation: None, no_replace, request: Some(request) })
            .await
    }

    /// Removes a name of anything but a directory; with the last name of a file, pfs-meta
    /// tells its storage servers to delete the chunks (at the last close if it is open).
    pub async fn unlink(&self, target: impl Into<Target>) -> Result<()> {
        let target = target.into();
        self.session.meta_once(|request| ns::Unlink { target, expected_generation: None, request: Some(request) }).await
    }

    /// Removes an empty directory. Errors: NotEmpty, NotDir, NotFound.
    pub async fn rmdir(&self, target: impl Into<Target>) -> Result<()> {
        let target = target.into();
        self.session.meta_once(|request| ns::Rmdir { target, expected_generation: None, request: Some(request) }).await
    }

    /// Makes a named pipe, socket or device node (metadata only).
    /// Errors: Exists, NotFound, NotDir, Invalid (another kind).
    pub async fn mknod(&self, target: impl Into<Target>, kind: FileKind, rdev: u64, attrs: NewAttrs) -> Result<Attr> {
        let target = target.into();
        self.session.meta_once(|request| ns::Mknod { target, kind, rdev, attrs, request: Some(request) }).await
    }

    /// Makes a symbolic link to `link` (1 to 4096 bytes, not checked to exist).
    /// Errors: Exists, NotFound, NotDir, Invalid.
    pub async fn symlink(&self, target: impl Into<Target>, link: &str, uid: u32, gid: u32) -> Result<Attr> {
        let (target, link) = (target.into(), link.to_string());
        self.session.meta_once(|request| ns::Symlink { target, link, uid, gid, request: Some(request) }).await
    }

    /// Gives `file` (not a directory) a further name. Errors: Exists, IsDir, NoSuchFile,
    /// Invalid (too many links).
    pub async fn link(&self, file: FileId, target: impl Into<Target>) -> Result<Attr> {
        let target = target.into();
        self.session.meta_once(|request| ns::Link { file, target, request: Some(request) }).await
    }

    /// Changes mode, owner, group or times (`None` fields stay); returns the new attributes.
    /// pfs-meta checks no permission (a mount's kernel does). Errors: NoSuchFile, Invalid.
    pub async fn set_attr(&self, change: ns::SetAttr) -> Result<Attr> {
        self.session.meta(change).await
    }

    /// Holders, lengths and SHA-256 of every chunk of `file` that pfs-meta knows of, for
    /// chunk indexes `0 .. chunk_count`.
    pub async fn chunks(&self, file: FileId, chunk_count: u64) -> Result<Vec<ChunkInfo>> {
        let mut out = Vec::new();
        let mut first: ChunkIndex = 0;
        while first < chunk_count {
            let count = (chunk_count - first).min(GET_CHUNKS_MAX as u64) as u32;
            out.extend(self.session.meta(GetChunks { file, first, count }).await?);
            first += count as u64;
        }
        Ok(out)
    }

    /// Chain `id`, as this client last heard of it (asking pfs-meta the first time).
    ///
    /// Errors: Protocol when pfs-meta does not know the chain; Unavailable, TimedOut.
    pub async fn chain(&self, id: ChainId) -> Result<Arc<Chain>> {
        self.session.chain(id).await
    }

    /// Chain `id` fresh from pfs-meta (after a storage server answered Stale).
    ///
    /// Errors: Protocol when pfs-meta does not know the chain; Unavailable, TimedOut.
    pub async fn refresh_chain(&self, id: ChainId) -> Result<Arc<Chain>> {
        self.session.refresh_chain(id).await
    }

    /// Every chain, fresh from pfs-meta.
    pub async fn all_chains(&self) -> Result<Vec<Chain>> {
        self.session.all_chains().await
    }

    /// The cluster's replication health: degraded chains and under-replicated chunks.
    pub async fn health(&self) -> Result<Health> {
        self.session.meta(GetHealth).await
    }

    /// The storage-server registry as pfs-meta sees it.
    pub async fn servers(&self) -> Result<Vec<ServerStatus>> {
        self.session.servers().await
    }

    /// One page of storage server `id`'s own chunk listing, after `after`, for checks such as
    /// `pfs fsck`; with `verify` the server reads each chunk listed against its block
    /// checksums. Errors: Unavailable, TimedOut.
    pub async fn storage_chunks(
        &self,
        id: ServerId,
        after: Option<(FileId, ChunkIndex)>,
        limit: u32,
        verify: bool,
    ) -> Result<ChunkPage> {
        Ok(self.session.storage(id, ListChunks { after, limit, verify }, &[]).await?.0)
    }

    /// Has pfs-meta tell storage server `id` to remove its copy `copy` of `file` (`pfs fsck
    /// --repair`). This needs an administrator's connection: one is opened for the call with
    /// the cluster secret's admin role key. pfs-meta proves the copy an orphan first (Denied,
    /// saying why, otherwise), and the server removes a chunk only if it is still as listed
    /// (Conflict otherwise). Removed durably when it returns.
    ///
    /// Errors: Denied (no cluster secret here: a client key cannot act as an administrator;
    /// or not an orphan); Conflict; Unavailable.
    pub async fn remove_orphan(&self, id: ServerId, file: FileId, copy: OrphanCopy) -> Result<()> {
        let opts = ConnectOptions { role: PeerRole::Admin, ..self.session.opts.clone() };
        let admin = self.session.connect_meta(&opts).await?;
        Ok(admin.ask(RemoveOrphan { server: id, file, copy }).await?)
    }

    /// Storage server `id`'s scrub status; with `start`, a pass starts now (unless one runs).
    pub async fn scrub(&self, id: ServerId, start: bool) -> Result<ScrubStatus> {
        Ok(self.session.storage(id, Scrub { start }, &[]).await?.0)
    }

    /// Has storage server `id` replace its copy of a chunk by one from a serving replica of
    /// the chunk's chain (`pfs fsck --repair`). Errors: Stale when there is no other serving
    /// replica; the copy's error.
    pub async fn repair_chunk(&self, id: ServerId, file: FileId, chunk: ChunkIndex) -> Result<()> {
        self.session.storage(id, RepairChunk { file, chunk }, &[]).await?;
        Ok(())
    }

    /// Capacity and usage reported by storage server `id` itself.
    pub async fn storage_status(&self, id: ServerId) -> Result<StorageStatus> {
        Ok(self.session.storage(id, GetStatus, &[]).await?.0)
    }
}
